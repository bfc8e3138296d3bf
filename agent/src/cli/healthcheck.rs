//! `tessera-agent healthcheck`: asks the agent's health service (beside the Workload
//! API on its socket) whether it has its identity and can serve workloads.

use tessera_proto::local::agent_health_client::AgentHealthClient;
use tessera_proto::local::{HealthCheckRequest, HealthCheckResponse};

use super::api::channel;
use super::{CliError, SocketArg};

/// `healthcheck`'s arguments.
#[derive(Debug, clap::Args)]
pub struct HealthcheckArgs {
    #[command(flatten)]
    pub socket: SocketArg,
    /// Prints what the agent reports about itself.
    #[arg(long)]
    pub verbose: bool,
}

/// Runs the check: healthy prints so; unhealthy is an error saying why.
pub async fn execute(args: HealthcheckArgs) -> Result<(), CliError> {
    let path = args.socket.resolve()?;
    let mut c = AgentHealthClient::new(channel(&path).await?);
    let h = c.check(HealthCheckRequest {}).await?.into_inner();
    tessera_process::output::print(&report(&h, args.verbose));
    if !h.ready {
        return Err(CliError::Unhealthy(h.details.join("; ")));
    }
    Ok(())
}

/// What the check prints for `h` (an unhealthy agent is also an error, which names
/// every detail).
pub fn report(h: &HealthCheckResponse, verbose: bool) -> String {
    let mut out = String::new();
    if verbose {
        for d in &h.details {
            out.push_str(d);
            out.push('\n');
        }
    }
    if h.ready {
        out.push_str("Agent is healthy.\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(ready: bool) -> HealthCheckResponse {
        HealthCheckResponse {
            ready,
            spiffe_id: "spiffe://example.org/spire/agent/join_token/t".into(),
            cached_svids: 2,
            details: vec![
                "agent SVID: spiffe://example.org/spire/agent/join_token/t".into(),
                "last sync: ok at 1800000000".into(),
            ],
        }
    }

    #[test]
    fn healthy_prints_so_and_the_details_when_asked() {
        assert_eq!(report(&response(true), false), "Agent is healthy.\n");
        assert_eq!(
            report(&response(true), true),
            "agent SVID: spiffe://example.org/spire/agent/join_token/t\n\
             last sync: ok at 1800000000\n\
             Agent is healthy.\n"
        );
    }

    #[test]
    fn unhealthy_prints_only_the_details_asked_for() {
        assert_eq!(report(&response(false), false), "");
        assert_eq!(
            report(&response(false), true),
            "agent SVID: spiffe://example.org/spire/agent/join_token/t\nlast sync: ok at 1800000000\n"
        );
    }
}
