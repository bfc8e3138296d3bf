//! `tessera-server ca init`: makes the upstream root (offline: it needs the
//! configuration, not a running server).

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use tessera_core::duration::parse_duration;

use super::CliError;
use crate::ca::upstream::InitReport;

#[derive(Debug, Subcommand)]
pub enum CaCommand {
    /// Creates the upstream root key (in the token for `pkcs11`) and its self-signed
    /// certificate, for the server's `[upstream_authority]`.
    Init {
        #[arg(long, short, default_value = crate::config::DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Lifetime of the root certificate.
        #[arg(long, value_parser = parse_duration, default_value = "3650d")]
        ttl: Duration,
        #[arg(long, default_value = "ec-p384")]
        key_type: tessera_core::key::KeyType,
        /// Replace an existing root (every agent then needs the new bundle).
        #[arg(long)]
        force: bool,
    },
}

/// Runs one `ca` command; returns what to print.
pub fn execute(command: CaCommand) -> Result<String, CliError> {
    match command {
        CaCommand::Init {
            config,
            set,
            ttl,
            key_type,
            force,
        } => {
            let cfg = crate::config::ServerConfig::load(&config, &set)?;
            let r = crate::ca::upstream::init_root(&cfg, ttl, key_type, force)?;
            Ok(init_text(&r))
        }
    }
}

/// What `ca init` made.
pub fn init_text(r: &InitReport) -> String {
    format!(
        "Root CA certificate written to {}\n\
         Subject          : {}\n\
         Valid until      : {}\n\
         SHA-256          : {}\n",
        r.cert_path.display(),
        r.subject,
        r.not_after,
        r.sha256
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_init_says_where_the_root_is_and_what_it_is() {
        let r = InitReport {
            cert_path: "/etc/tessera/root.pem".into(),
            subject: "CN=Tessera root CA example.org".into(),
            not_after: 2_000_000_000,
            sha256: "ab12".into(),
        };
        assert_eq!(
            init_text(&r),
            "Root CA certificate written to /etc/tessera/root.pem\n\
             Subject          : CN=Tessera root CA example.org\n\
             Valid until      : 2000000000\n\
             SHA-256          : ab12\n"
        );
    }
}
