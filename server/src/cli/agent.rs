//! `tessera-server agent`: list, show, count, evict and ban attested agents.

use clap::Subcommand;
use tessera_proto::admin as pb;
use tessera_proto::admin::admin_client::AdminClient;
use tonic::transport::Channel;

use super::{CliError, Output, json_text};

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Lists attested agents.
    List {
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Shows one attested agent.
    Show {
        #[arg(long)]
        spiffe_id: String,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Counts attested agents.
    Count {
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Deletes an agent's record: it must attest again.
    Evict {
        #[arg(long)]
        spiffe_id: String,
    },
    /// Bans an agent: it can neither call the server nor attest again.
    Ban {
        #[arg(long)]
        spiffe_id: String,
    },
}

/// Runs one `agent` command; returns what to print.
pub(super) async fn execute(
    c: &mut AdminClient<Channel>,
    command: AgentCommand,
) -> Result<String, CliError> {
    match command {
        AgentCommand::List { output } => {
            let agents = c
                .list_agents(pb::ListAgentsRequest {})
                .await?
                .into_inner()
                .agents;
            match output {
                Output::Pretty => Ok(agents_text(&agents)),
                Output::Json => agents_json(&agents),
            }
        }
        AgentCommand::Show { spiffe_id, output } => {
            let a = c
                .get_agent(pb::AgentRequest { spiffe_id })
                .await?
                .into_inner();
            match output {
                Output::Pretty => Ok(agent_text(&a)),
                Output::Json => {
                    let one = agents_json(std::slice::from_ref(&a))?;
                    let v: serde_json::Value = serde_json::from_str(&one)?;
                    json_text(&v[0])
                }
            }
        }
        AgentCommand::Count { output } => {
            let n = c
                .count_agents(pb::CountAgentsRequest {})
                .await?
                .into_inner()
                .count;
            super::entry::count_text(n, "attested agent", "attested agents", output)
        }
        AgentCommand::Evict { spiffe_id } => {
            c.evict_agent(pb::AgentRequest { spiffe_id }).await?;
            Ok("Agent evicted successfully\n".to_owned())
        }
        AgentCommand::Ban { spiffe_id } => {
            c.ban_agent(pb::AgentRequest { spiffe_id }).await?;
            Ok("Agent banned successfully\n".to_owned())
        }
    }
}

/// `agent list`: a count, then each agent as spire-server prints it.
pub fn agents_text(agents: &[pb::Agent]) -> String {
    let mut out = if agents.is_empty() {
        "No attested agents found\n".to_owned()
    } else {
        let noun = if agents.len() == 1 { "agent" } else { "agents" };
        format!("Found {} attested {noun}:\n\n", agents.len())
    };
    out.extend(agents.iter().map(agent_text));
    out
}

/// One agent as spire-server prints it, followed by a blank line.
pub fn agent_text(a: &pb::Agent) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: &dyn std::fmt::Display| {
        out.push_str(&format!("{label:<18}: {value}\n"));
    };
    line("SPIFFE ID", &a.spiffe_id);
    line("Attestation type", &a.attestation_type);
    line("Expiration time", &a.x509_svid_expires_at);
    line("Serial number", &a.x509_svid_serial);
    line("Can re-attest", &a.can_reattest);
    line("Banned", &a.banned);
    match a.key_proof.as_str() {
        "" => {}
        "tpm" => line("Agent key", &"in TPM (certified by the attested AK)"),
        "unproven" => line("Agent key", &"NOT proven to be in the TPM"),
        other => line("Agent key", &other),
    }
    if !a.measured_boot.is_empty() {
        line("Measured boot", &a.measured_boot);
    }
    for s in &a.selectors {
        line("Selector", s);
    }
    out.push('\n');
    out
}

/// `agent list --output json`: an array of agents.
pub fn agents_json(agents: &[pb::Agent]) -> Result<String, CliError> {
    let v: Vec<serde_json::Value> = agents
        .iter()
        .map(|a| {
            serde_json::json!({
                "spiffe_id": a.spiffe_id,
                "attestation_type": a.attestation_type,
                "x509_svid_serial": a.x509_svid_serial,
                "x509_svid_expires_at": a.x509_svid_expires_at,
                "selectors": a.selectors,
                "banned": a.banned,
                "can_reattest": a.can_reattest,
                "key_proof": a.key_proof,
                "measured_boot": a.measured_boot,
            })
        })
        .collect();
    json_text(&serde_json::Value::Array(v))
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "test code: a failed unwrap is a failed test"
    )]

    use super::*;

    fn agent() -> pb::Agent {
        pb::Agent {
            spiffe_id: "spiffe://example.org/spire/agent/tpm_ek/ab".into(),
            attestation_type: "tpm_ek".into(),
            x509_svid_serial: "0a1b".into(),
            x509_svid_expires_at: 1_900_000_000,
            selectors: vec!["tpm_ek:pub_hash:ab".into()],
            banned: false,
            can_reattest: true,
            created_at: 1_800_000_000,
            key_proof: "tpm".into(),
            measured_boot: String::new(),
        }
    }

    #[test]
    fn agents_print_as_spire_server_does() {
        assert_eq!(agents_text(&[]), "No attested agents found\n");
        assert_eq!(
            agents_text(&[agent()]),
            "Found 1 attested agent:\n\n\
             SPIFFE ID         : spiffe://example.org/spire/agent/tpm_ek/ab\n\
             Attestation type  : tpm_ek\n\
             Expiration time   : 1900000000\n\
             Serial number     : 0a1b\n\
             Can re-attest     : true\n\
             Banned            : false\n\
             Agent key         : in TPM (certified by the attested AK)\n\
             Selector          : tpm_ek:pub_hash:ab\n\n"
        );
        let unproven = pb::Agent {
            key_proof: "unproven".into(),
            ..agent()
        };
        assert!(
            agents_text(&[unproven]).contains("Agent key         : NOT proven to be in the TPM\n")
        );
        let join = pb::Agent {
            key_proof: String::new(),
            ..agent()
        };
        assert!(!agents_text(&[join]).contains("Agent key"));
        let refused = pb::Agent {
            measured_boot: "refused: PCR 7 is 00".into(),
            ..agent()
        };
        assert!(agents_text(&[refused]).contains("Measured boot     : refused: PCR 7 is 00\n"));
        assert!(agents_text(&[agent(), agent()]).starts_with("Found 2 attested agents:\n\n"));
    }

    #[test]
    fn agents_as_json_carry_every_field_scripts_use() {
        assert_eq!(agents_json(&[]).unwrap(), "[]\n");
        let v: serde_json::Value = serde_json::from_str(&agents_json(&[agent()]).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!([{
                "spiffe_id": "spiffe://example.org/spire/agent/tpm_ek/ab",
                "attestation_type": "tpm_ek",
                "x509_svid_serial": "0a1b",
                "x509_svid_expires_at": 1_900_000_000,
                "selectors": ["tpm_ek:pub_hash:ab"],
                "banned": false,
                "can_reattest": true,
                "key_proof": "tpm",
                "measured_boot": "",
            }])
        );
    }
}
