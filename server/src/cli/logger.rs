//! `tessera-server logger`: the running server's log filter, as `spire-server logger`
//! (`get`, `set --level`, `reset` to the filter it started with).

use clap::Subcommand;
use tessera_proto::admin as pb;
use tessera_proto::admin::admin_client::AdminClient;
use tonic::transport::Channel;

use super::{CliError, Output, json_text};

#[derive(Debug, Subcommand)]
pub enum LoggerCommand {
    /// Shows the log filter in force and the one the server started with.
    Get {
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Sets the log filter until the server stops (or `reset`).
    Set {
        /// A level (trace, debug, info, warn, error, off), or filter directives such as
        /// `info,tessera_server::api=debug`.
        #[arg(long)]
        level: String,
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
    /// Goes back to the filter the server started with.
    Reset {
        #[arg(long, value_enum, default_value_t)]
        output: Output,
    },
}

/// Runs one `logger` command; returns what to print.
pub(super) async fn execute(
    c: &mut AdminClient<Channel>,
    command: LoggerCommand,
) -> Result<String, CliError> {
    let (level, output) = match command {
        LoggerCommand::Get { output } => (
            c.get_log_level(pb::GetLogLevelRequest {})
                .await?
                .into_inner(),
            output,
        ),
        LoggerCommand::Set { level, output } => {
            if level.trim().is_empty() {
                return Err(CliError::Invalid {
                    flag: "--level",
                    reason: "empty (use `logger reset` to go back to the start filter)".into(),
                });
            }
            (
                c.set_log_level(pb::SetLogLevelRequest { filter: level })
                    .await?
                    .into_inner(),
                output,
            )
        }
        LoggerCommand::Reset { output } => (
            c.set_log_level(pb::SetLogLevelRequest {
                filter: String::new(),
            })
            .await?
            .into_inner(),
            output,
        ),
    };
    level_text(&level, output)
}

/// The filters, as spire-server prints its levels.
pub fn level_text(l: &pb::LogLevel, output: Output) -> Result<String, CliError> {
    match output {
        Output::Pretty => Ok(format!(
            "Logger Level        : {}\nLogger Launch Level : {}\n",
            l.current, l.launch
        )),
        Output::Json => json_text(&serde_json::json!({
            "current_level": l.current,
            "launch_level": l.launch,
        })),
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
    fn levels_print_as_spire_server_does() {
        let l = pb::LogLevel {
            current: "debug".into(),
            launch: "info".into(),
        };
        assert_eq!(
            level_text(&l, Output::Pretty).unwrap(),
            "Logger Level        : debug\nLogger Launch Level : info\n"
        );
        let v: serde_json::Value =
            serde_json::from_str(&level_text(&l, Output::Json).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"current_level": "debug", "launch_level": "info"})
        );
    }
}
