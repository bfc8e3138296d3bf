//! `tessera-server entry`: create (one, or many from a file: [`super::entry_file`]),
//! show, count, update and delete registration entries.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use tessera_core::duration::parse_duration;
use tessera_core::{RegistrationEntry, SpiffeId, WorkloadKey};
use tessera_proto::admin as pb;
use tessera_proto::admin::admin_client::AdminClient;
use tessera_proto::types as tpb;
use tonic::transport::Channel;

use super::{CliError, Output, json_text, secs};

#[derive(Debug, Args)]
pub struct EntryFields {
    /// The SPIFFE ID the entry grants.
    #[arg(long)]
    spiffe_id: Option<String>,
    /// The parent: an agent ID, or another entry's SPIFFE ID.
    #[arg(long, conflicts_with = "node")]
    parent_id: Option<String>,
    /// Makes a node alias: the parent is the server, selectors are node selectors.
    #[arg(long)]
    node: bool,
    /// A selector type:value (repeatable).
    #[arg(long = "selector")]
    selectors: Vec<String>,
    /// X509-SVID lifetime (e.g. 1h; default: the server's).
    #[arg(long, value_parser = parse_duration)]
    x509_svid_ttl: Option<Duration>,
    /// JWT-SVID lifetime (e.g. 5m; default: the server's).
    #[arg(long, value_parser = parse_duration)]
    jwt_svid_ttl: Option<Duration>,
    /// A DNS name for the X509-SVID (repeatable).
    #[arg(long = "dns-name")]
    dns_names: Vec<String>,
    /// A trust domain whose bundle workloads also get (repeatable).
    #[arg(long = "federates-with")]
    federates_with: Vec<String>,
    #[arg(long)]
    admin: Option<bool>,
    #[arg(long)]
    downstream: Option<bool>,
    /// A hint for workloads holding several SVIDs.
    #[arg(long)]
    hint: Option<String>,
    /// Unix time after which the entry no longer applies.
    #[arg(long)]
    entry_expiry: Option<i64>,
    /// Where the X509-SVID key is born: software (default) or tpm (in the agent's
    /// TPM, served by the tessera.local.v1.TpmWorkloadKeys service only).
    #[arg(long, value_name = "software|tpm", value_parser = parse_workload_key)]
    workload_key: Option<WorkloadKey>,
}

fn parse_workload_key(s: &str) -> Result<WorkloadKey, String> {
    s.parse()
        .map_err(|e: tessera_core::workload_key::BadWorkloadKey| e.to_string())
}

#[derive(Debug, Subcommand)]
pub enum EntryCommand {
    /// Creates an entry, or the entries of a file (--data).
    Create {
        #[command(flatten)]
        fields: EntryFields,
        /// Choose the entry ID instead of letting the server pick one.
        #[arg(long)]
        entry_id: Option<String>,
        /// Creates the entries of a JSON file (`-`: standard input) in the format of
        /// `spire-server entry create -data`, instead of one from the flags.
        #[arg(long, value_name = "FILE", conflicts_with = "entry_id")]
        data: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Counts entries (all, or those matching the filters).
    Count {
        #[arg(long)]
        spiffe_id: Option<String>,
        #[arg(long)]
        parent_id: Option<String>,
        /// Entries holding this selector (repeatable: all must be held).
        #[arg(long = "selector")]
        selectors: Vec<String>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Shows entries (all, or those matching the filters).
    Show {
        #[arg(long)]
        entry_id: Option<String>,
        #[arg(long)]
        spiffe_id: Option<String>,
        #[arg(long)]
        parent_id: Option<String>,
        /// Entries holding this selector (repeatable: all must be held).
        #[arg(long = "selector")]
        selectors: Vec<String>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Updates an entry: the given fields replace the stored ones.
    Update {
        #[arg(long)]
        entry_id: String,
        #[command(flatten)]
        fields: EntryFields,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Deletes an entry.
    Delete {
        #[arg(long)]
        entry_id: String,
    },
}

impl EntryFields {
    fn apply(
        self,
        e: &mut tpb::Entry,
        creating: bool,
        td_server: Option<String>,
    ) -> Result<(), CliError> {
        if let Some(s) = self.spiffe_id {
            e.spiffe_id = s;
        } else if creating {
            return Err(CliError::Missing("--spiffe-id"));
        }
        if self.node {
            e.parent_id = td_server.ok_or(CliError::NodeNeedsSpiffeId)?;
        } else if let Some(p) = self.parent_id {
            e.parent_id = p;
        } else if creating {
            return Err(CliError::Missing("--parent-id (or --node)"));
        }
        if !self.selectors.is_empty() {
            e.selectors = self.selectors;
        } else if creating {
            return Err(CliError::Missing("at least one --selector"));
        }
        if self.x509_svid_ttl.is_some() {
            e.x509_svid_ttl = secs("--x509-svid-ttl", self.x509_svid_ttl)?;
        }
        if self.jwt_svid_ttl.is_some() {
            e.jwt_svid_ttl = secs("--jwt-svid-ttl", self.jwt_svid_ttl)?;
        }
        if !self.dns_names.is_empty() {
            e.dns_names = self.dns_names;
        }
        if !self.federates_with.is_empty() {
            e.federates_with = self.federates_with;
        }
        if let Some(a) = self.admin {
            e.admin = a;
        }
        if let Some(d) = self.downstream {
            e.downstream = d;
        }
        if let Some(h) = self.hint {
            e.hint = h;
        }
        if let Some(x) = self.entry_expiry {
            e.expires_at = x;
        }
        if let Some(k) = self.workload_key {
            e.workload_key = if k.is_software() {
                String::new()
            } else {
                k.to_string()
            };
        }
        Ok(())
    }

    /// Whether no field flag was given.
    fn is_empty(&self) -> bool {
        self.spiffe_id.is_none()
            && self.parent_id.is_none()
            && !self.node
            && self.selectors.is_empty()
            && self.x509_svid_ttl.is_none()
            && self.jwt_svid_ttl.is_none()
            && self.dns_names.is_empty()
            && self.federates_with.is_empty()
            && self.admin.is_none()
            && self.downstream.is_none()
            && self.hint.is_none()
            && self.entry_expiry.is_none()
            && self.workload_key.is_none()
    }

    /// `spiffe://<td>/spire/server` for `--node`, from the entry's own trust domain.
    fn server_parent(&self) -> Option<String> {
        server_of(self.spiffe_id.as_deref()?)
    }
}

/// The server's ID in the trust domain of `spiffe_id`.
fn server_of(spiffe_id: &str) -> Option<String> {
    let id = SpiffeId::new(spiffe_id).ok()?;
    Some(crate::api::server_id(id.trust_domain()).to_string())
}

/// Runs one `entry` command; returns what to print.
pub(super) async fn execute(
    c: &mut AdminClient<Channel>,
    command: EntryCommand,
) -> Result<String, CliError> {
    match command {
        EntryCommand::Create {
            fields,
            data: Some(path),
            output,
            ..
        } => {
            if !fields.is_empty() {
                return Err(CliError::Invalid {
                    flag: "--data",
                    reason: "the file holds the entries; give it or the entry flags, not both"
                        .into(),
                });
            }
            super::entry_file::create(c, &path, output).await
        }
        EntryCommand::Create {
            fields,
            entry_id,
            data: None,
            output,
        } => {
            let parent = fields.server_parent();
            let mut e = tpb::Entry {
                id: entry_id.unwrap_or_default(),
                ..Default::default()
            };
            fields.apply(&mut e, true, parent)?;
            let created = c
                .create_entry(pb::CreateEntryRequest { entry: Some(e) })
                .await?
                .into_inner();
            one_entry(&created, output)
        }
        EntryCommand::Show {
            entry_id,
            spiffe_id,
            parent_id,
            selectors,
            output,
        } => {
            let entries = if let Some(id) = entry_id {
                vec![c.get_entry(pb::GetEntryRequest { id }).await?.into_inner()]
            } else {
                let mut all = Vec::new();
                let mut token = String::new();
                loop {
                    let resp = c
                        .list_entries(pb::ListEntriesRequest {
                            by_spiffe_id: spiffe_id.clone().unwrap_or_default(),
                            by_parent_id: parent_id.clone().unwrap_or_default(),
                            by_selectors: selectors.clone(),
                            page_size: 1000,
                            page_token: token,
                        })
                        .await?
                        .into_inner();
                    all.extend(resp.entries);
                    if resp.next_page_token.is_empty() {
                        break;
                    }
                    token = resp.next_page_token;
                }
                all
            };
            match output {
                Output::Pretty => Ok(entries_text(&entries)),
                Output::Json => entries_json(&entries),
            }
        }
        EntryCommand::Count {
            spiffe_id,
            parent_id,
            selectors,
            output,
        } => {
            let n = c
                .count_entries(pb::CountEntriesRequest {
                    by_spiffe_id: spiffe_id.unwrap_or_default(),
                    by_parent_id: parent_id.unwrap_or_default(),
                    by_selectors: selectors,
                })
                .await?
                .into_inner()
                .count;
            count_text(n, "registration entry", "registration entries", output)
        }
        EntryCommand::Update {
            entry_id,
            fields,
            output,
        } => {
            let mut e = c
                .get_entry(pb::GetEntryRequest { id: entry_id })
                .await?
                .into_inner();
            let parent = fields.server_parent().or_else(|| server_of(&e.spiffe_id));
            fields.apply(&mut e, false, parent)?;
            let updated = c
                .update_entry(pb::UpdateEntryRequest { entry: Some(e) })
                .await?
                .into_inner();
            one_entry(&updated, output)
        }
        EntryCommand::Delete { entry_id } => {
            c.delete_entry(pb::DeleteEntryRequest {
                id: entry_id.clone(),
            })
            .await?;
            Ok(format!("Deleted entry with ID: {entry_id}\n"))
        }
    }
}

/// A count as spire-server prints it (`3 registration entries`), or `{"count": 3}`.
pub fn count_text(n: u64, one: &str, many: &str, output: Output) -> Result<String, CliError> {
    match output {
        Output::Pretty => Ok(format!("{n} {}\n", if n == 1 { one } else { many })),
        Output::Json => json_text(&serde_json::json!({ "count": n })),
    }
}

fn one_entry(e: &tpb::Entry, output: Output) -> Result<String, CliError> {
    match output {
        Output::Pretty => Ok(entry_text(e)),
        Output::Json => json_text(&entry_json(e)?),
    }
}

fn ttl_text(s: u32) -> String {
    if s == 0 {
        "default".into()
    } else {
        s.to_string()
    }
}

/// One entry as spire-server prints it, followed by a blank line.
pub fn entry_text(e: &tpb::Entry) -> String {
    let mut out = String::new();
    let mut line = |label: &str, value: &dyn std::fmt::Display| {
        out.push_str(&format!("{label:<17}: {value}\n"));
    };
    line("Entry ID", &e.id);
    line("SPIFFE ID", &e.spiffe_id);
    line("Parent ID", &e.parent_id);
    line("Revision", &e.revision_number);
    line("X509-SVID TTL", &ttl_text(e.x509_svid_ttl));
    line("JWT-SVID TTL", &ttl_text(e.jwt_svid_ttl));
    if e.expires_at != 0 {
        line("Expiration time", &e.expires_at);
    }
    for s in &e.selectors {
        line("Selector", s);
    }
    for d in &e.dns_names {
        line("DNS name", d);
    }
    for f in &e.federates_with {
        line("FederatesWith", f);
    }
    if e.admin {
        line("Admin", &true);
    }
    if e.downstream {
        line("Downstream", &true);
    }
    if !e.hint.is_empty() {
        line("Hint", &e.hint);
    }
    if !e.workload_key.is_empty() {
        line("Workload key", &e.workload_key);
    }
    out.push('\n');
    out
}

/// `entry show`: a count, then each entry.
pub fn entries_text(entries: &[tpb::Entry]) -> String {
    let noun = if entries.len() == 1 {
        "entry"
    } else {
        "entries"
    };
    let mut out = format!("Found {} {noun}\n\n", entries.len());
    out.extend(entries.iter().map(entry_text));
    out
}

/// One entry as JSON: the registration entry's own serialisation.
pub fn entry_json(e: &tpb::Entry) -> Result<serde_json::Value, CliError> {
    let core: RegistrationEntry =
        tessera_proto::convert::entry_from_proto(e.clone()).map_err(CliError::Reply)?;
    Ok(serde_json::to_value(core)?)
}

/// `entry show --output json`: an array of entries.
pub fn entries_json(entries: &[tpb::Entry]) -> Result<String, CliError> {
    let v: Result<Vec<_>, _> = entries.iter().map(entry_json).collect();
    json_text(&serde_json::Value::Array(v?))
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "test code: a failed unwrap is a failed test"
    )]

    use super::*;

    fn entry() -> tpb::Entry {
        tpb::Entry {
            id: "e1".into(),
            spiffe_id: "spiffe://example.org/web".into(),
            parent_id: "spiffe://example.org/spire/agent/join_token/t".into(),
            selectors: vec!["unix:uid:1000".into(), "unix:gid:50".into()],
            x509_svid_ttl: 3600,
            revision_number: 2,
            dns_names: vec!["web.example.org".into()],
            hint: "front".into(),
            expires_at: 1_900_000_000,
            ..Default::default()
        }
    }

    #[test]
    fn an_entry_prints_as_spire_server_does() {
        assert_eq!(
            entry_text(&entry()),
            "Entry ID         : e1\n\
             SPIFFE ID        : spiffe://example.org/web\n\
             Parent ID        : spiffe://example.org/spire/agent/join_token/t\n\
             Revision         : 2\n\
             X509-SVID TTL    : 3600\n\
             JWT-SVID TTL     : default\n\
             Expiration time  : 1900000000\n\
             Selector         : unix:uid:1000\n\
             Selector         : unix:gid:50\n\
             DNS name         : web.example.org\n\
             Hint             : front\n\n"
        );
    }

    #[test]
    fn entry_show_counts_what_it_found() {
        assert_eq!(entries_text(&[]), "Found 0 entries\n\n");
        let one = entries_text(&[entry()]);
        assert!(
            one.starts_with("Found 1 entry\n\nEntry ID         : e1\n"),
            "{one}"
        );
        let two = entries_text(&[entry(), entry()]);
        assert!(two.starts_with("Found 2 entries\n\n"), "{two}");
        assert_eq!(two.matches("Entry ID").count(), 2);
    }

    #[test]
    fn entries_as_json_are_registration_entries() {
        let text = entries_json(&[entry()]).unwrap();
        assert!(text.ends_with("]\n"), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let e = &v[0];
        assert_eq!(e["id"], "e1");
        assert_eq!(e["spiffe_id"], "spiffe://example.org/web");
        assert_eq!(e["x509_svid_ttl"], 3600);
        assert_eq!(e["expires_at"], 1_900_000_000);
        assert_eq!(e["dns_names"][0], "web.example.org");
        let back: RegistrationEntry = serde_json::from_value(e.clone()).unwrap();
        assert_eq!(back.selectors.len(), 2);
        // An answer that is no entry is an error, not empty output.
        let mut bad = entry();
        bad.spiffe_id = "not an id".into();
        assert!(matches!(entries_json(&[bad]), Err(CliError::Reply(_))));
    }

    #[test]
    fn counts_print_as_spire_server_does() {
        let c = |n| {
            count_text(
                n,
                "registration entry",
                "registration entries",
                Output::Pretty,
            )
        };
        assert_eq!(c(0).unwrap(), "0 registration entries\n");
        assert_eq!(c(1).unwrap(), "1 registration entry\n");
        assert_eq!(c(2).unwrap(), "2 registration entries\n");
        let v: serde_json::Value =
            serde_json::from_str(&count_text(7, "a", "b", Output::Json).unwrap()).unwrap();
        assert_eq!(v, serde_json::json!({"count": 7}));
    }

    #[test]
    fn creating_an_entry_needs_its_identity_parent_and_selectors() {
        let fields = |args: &[&str]| {
            #[derive(Debug, clap::Parser)]
            struct P {
                #[command(flatten)]
                f: EntryFields,
            }
            <P as clap::Parser>::try_parse_from(std::iter::once("p").chain(args.iter().copied()))
                .unwrap()
                .f
        };
        let mut e = tpb::Entry::default();
        let err = fields(&[]).apply(&mut e, true, None).unwrap_err();
        assert_eq!(err.to_string(), "--spiffe-id is required");
        let f = fields(&["--spiffe-id", "spiffe://td/w"]);
        let err = f.apply(&mut e, true, None).unwrap_err();
        assert_eq!(err.to_string(), "--parent-id (or --node) is required");
        let f = fields(&["--spiffe-id", "spiffe://td/w", "--node"]);
        assert!(matches!(
            f.apply(&mut e, true, None),
            Err(CliError::NodeNeedsSpiffeId)
        ));
        let f = fields(&[
            "--spiffe-id",
            "spiffe://td/w",
            "--parent-id",
            "spiffe://td/p",
        ]);
        let err = f.apply(&mut e, true, None).unwrap_err();
        assert_eq!(err.to_string(), "at least one --selector is required");

        let f = fields(&[
            "--spiffe-id",
            "spiffe://td/n",
            "--node",
            "--selector",
            "tpm:x:y",
        ]);
        let parent = f.server_parent();
        f.apply(&mut e, true, parent).unwrap();
        assert_eq!(e.parent_id, "spiffe://td/spire/server");
        assert_eq!(e.selectors, vec!["tpm:x:y".to_owned()]);
        // An update changes only what is given.
        let f = fields(&["--hint", "h", "--x509-svid-ttl", "1h"]);
        f.apply(&mut e, false, None).unwrap();
        assert_eq!(e.spiffe_id, "spiffe://td/n");
        assert_eq!((e.hint.as_str(), e.x509_svid_ttl), ("h", 3600));
        assert_eq!(e.workload_key, "");
    }

    #[test]
    fn workload_key_is_set_shown_and_checked() {
        let mut e = entry();
        let parse = |args: &[&str]| {
            #[derive(clap::Parser)]
            struct P {
                #[command(flatten)]
                f: EntryFields,
            }
            let mut argv = vec!["x"];
            argv.extend_from_slice(args);
            <P as clap::Parser>::try_parse_from(argv).map(|p| p.f)
        };
        parse(&["--workload-key", "tpm"])
            .unwrap()
            .apply(&mut e, false, None)
            .unwrap();
        assert_eq!(e.workload_key, "tpm");
        assert!(entry_text(&e).contains("Workload key     : tpm\n"));
        let json = entry_json(&e).unwrap();
        assert_eq!(json["workload_key"], "tpm");
        // Back to software: the wire's empty default, and not shown.
        parse(&["--workload-key", "software"])
            .unwrap()
            .apply(&mut e, false, None)
            .unwrap();
        assert_eq!(e.workload_key, "");
        assert!(!entry_text(&e).contains("Workload key"));
        let err = parse(&["--workload-key", "hsm"]).unwrap_err().to_string();
        assert!(
            err.contains("\"hsm\" is not one of: software, tpm"),
            "{err}"
        );
    }
}
