//! `tessera-server healthcheck`: whether the server is up and can sign.

use tessera_proto::admin as pb;
use tessera_proto::admin::admin_client::AdminClient;
use tonic::transport::Channel;

use super::CliError;

/// Runs `healthcheck`; returns what to print.
pub(super) async fn execute(
    c: &mut AdminClient<Channel>,
    verbose: bool,
) -> Result<String, CliError> {
    let h = c.health(pb::HealthRequest {}).await?.into_inner();
    health_text(h, verbose)
}

/// The verdict (with each component's state when `verbose`); an unhealthy server is
/// an error carrying the details, and what `verbose` shows of them on standard
/// output.
pub fn health_text(h: pb::HealthResponse, verbose: bool) -> Result<String, CliError> {
    let mut out = String::new();
    if verbose {
        for d in &h.details {
            out.push_str(d);
            out.push('\n');
        }
    }
    if !h.ready {
        return Err(CliError::Unhealthy {
            details: h.details,
            shown: out,
        });
    }
    out.push_str("Server is healthy.\n");
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "test code: a failed unwrap is a failed test"
    )]

    use super::*;

    fn health(ready: bool) -> pb::HealthResponse {
        pb::HealthResponse {
            ready,
            details: vec!["datastore: ok".into(), "CA: ok".into()],
        }
    }

    #[test]
    fn a_healthy_server_says_so_and_details_on_request() {
        assert_eq!(
            health_text(health(true), false).unwrap(),
            "Server is healthy.\n"
        );
        assert_eq!(
            health_text(health(true), true).unwrap(),
            "datastore: ok\nCA: ok\nServer is healthy.\n"
        );
    }

    #[test]
    fn an_unhealthy_server_is_an_error_with_every_detail() {
        let err = health_text(health(false), false).unwrap_err();
        assert_eq!(
            err.to_string(),
            "server is unhealthy: datastore: ok; CA: ok"
        );
        assert!(matches!(err, CliError::Unhealthy { shown, .. } if shown.is_empty()));
        let err = health_text(health(false), true).unwrap_err();
        assert!(
            matches!(&err, CliError::Unhealthy { shown, .. } if shown == "datastore: ok\nCA: ok\n"),
            "{err:?}"
        );
    }
}
