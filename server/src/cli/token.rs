//! `tessera-server token`: one-time join tokens.

use std::time::Duration;

use clap::Subcommand;
use tessera_core::duration::parse_duration;
use tessera_proto::admin as pb;
use tessera_proto::admin::admin_client::AdminClient;
use tonic::transport::Channel;

use super::{CliError, Output, json_text, secs};

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Generates a one-time join token.
    Generate {
        /// Also create an entry with this SPIFFE ID for the agent that uses the token.
        #[arg(long)]
        spiffe_id: Option<String>,
        /// Token lifetime (default: the server's, 10m).
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

/// Runs one `token` command; returns what to print.
pub(super) async fn execute(
    c: &mut AdminClient<Channel>,
    command: TokenCommand,
) -> Result<String, CliError> {
    match command {
        TokenCommand::Generate {
            spiffe_id,
            ttl,
            output,
        } => {
            let t = c
                .create_join_token(pb::CreateJoinTokenRequest {
                    ttl_seconds: secs("--ttl", ttl)?,
                    spiffe_id: spiffe_id.unwrap_or_default(),
                    token: String::new(),
                })
                .await?
                .into_inner();
            token_text(&t, output)
        }
    }
}

/// A new join token: `Token: <value>`, or JSON with its expiry.
pub fn token_text(t: &pb::JoinToken, output: Output) -> Result<String, CliError> {
    match output {
        Output::Pretty => Ok(format!("Token: {}\n", t.token)),
        Output::Json => {
            json_text(&serde_json::json!({"value": t.token, "expires_at": t.expires_at}))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "test code: a failed unwrap is a failed test"
    )]

    use super::*;

    #[test]
    fn a_token_prints_for_people_and_for_scripts() {
        let t = pb::JoinToken {
            token: "3f2a".into(),
            expires_at: 1_900_000_000,
        };
        assert_eq!(token_text(&t, Output::Pretty).unwrap(), "Token: 3f2a\n");
        let v: serde_json::Value =
            serde_json::from_str(&token_text(&t, Output::Json).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"value": "3f2a", "expires_at": 1_900_000_000})
        );
    }
}
