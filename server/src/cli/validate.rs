//! `tessera-server validate -c FILE`: checks a configuration file as `run` would read
//! it (with `--set` flags and `TESSERA_SERVER_*` variables), without starting
//! anything: the syntax and every rule, the files the node attestors, a disk
//! upstream authority and the federation relationships read, a
//! `connection_string_file`, and the audit file's directory. The datastore, key manager and HSM are not opened. Errors name the file
//! and, where the file sets the value at fault, its line.

use std::path::{Path, PathBuf};

use clap::Args;

use super::CliError;
use crate::config::{InvalidConfig, ServerConfig, UpstreamAuthorityConfig};

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// The configuration file.
    #[arg(long, short, default_value = crate::config::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Overrides a configuration value (repeatable), as `run --set` does.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// Checks the file; returns what to print when it is valid.
pub fn execute(args: &ValidateArgs) -> Result<String, CliError> {
    let cfg = ServerConfig::load(&args.config, &args.set)?;
    let path = args.config.display().to_string();
    let text = std::fs::read_to_string(&args.config).unwrap_or_default();
    let at = |key: &'static str, message: String| {
        CliError::Config(InvalidConfig::Setting { key, message }.in_file(&path, &text))
    };
    cfg.datastore_target()
        .map_err(|e| CliError::Config(e.in_file(&path, &text)))?;
    if let Some(c) = &cfg.node_attestors.tpm_devid {
        crate::attestor::tpm_devid::TpmDevId::new(c)
            .map_err(|e| at("node_attestors.tpm_devid", e.to_string()))?;
    }
    if let Some(c) = &cfg.node_attestors.tpm_ek {
        crate::attestor::tpm_ek::TpmEk::new(c)
            .map_err(|e| at("node_attestors.tpm_ek", e.to_string()))?;
    }
    if matches!(
        cfg.upstream_authority,
        Some(UpstreamAuthorityConfig::Disk { .. })
    ) {
        crate::upstream::load(&cfg, std::time::SystemTime::now())
            .map_err(|e| at("upstream_authority", e.to_string()))?;
    }
    crate::federation::check_files(&cfg.federation).map_err(|(key, message)| at(key, message))?;
    if let Some(audit) = &cfg.audit.path {
        let dir = audit
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        if !dir.is_dir() {
            return Err(at(
                "audit.path",
                format!(
                    "[audit] path {}: the directory {} does not exist",
                    audit.display(),
                    dir.display()
                ),
            ));
        }
    }
    Ok(format!("Configuration file {path} is valid.\n"))
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "test code: a failed unwrap is a failed test"
    )]

    use super::*;

    fn check(text: &str) -> Result<String, CliError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.toml");
        std::fs::write(&path, text).unwrap();
        execute(&ValidateArgs {
            config: path,
            set: vec![],
        })
        .map_err(|e| {
            // Name the file as the reader sees it, without the temporary directory.
            let msg = e
                .to_string()
                .replace(&dir.path().display().to_string(), "DIR");
            CliError::Reply(msg)
        })
    }

    fn err(text: &str) -> String {
        match check(text) {
            Err(CliError::Reply(m)) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_valid_file_is_said_so() {
        let out = check("trust_domain = \"example.org\"\n").unwrap();
        assert!(out.ends_with("server.toml is valid.\n"), "{out}");
    }

    #[test]
    fn an_unreadable_federation_ca_bundle_is_named() {
        let e = err(
            "trust_domain = \"example.org\"\n[[federation.federates_with]]\n\
             trust_domain = \"partner.test\"\nbundle_endpoint_url = \"https://partner.test\"\n\
             bundle_endpoint_profile = \"https_web\"\nca_bundle = \"/nonexistent/roots.pem\"\n",
        );
        assert!(
            e.contains("partner.test") && e.contains("/nonexistent/roots.pem"),
            "{e}"
        );
    }

    #[test]
    fn syntax_and_rule_errors_name_file_and_line() {
        assert_eq!(
            err("trust_domain = \"example.org\"\n\n[limits]\nhandshake_timeout = \"0s\"\n"),
            "DIR/server.toml:4:1: invalid configuration: [limits] handshake_timeout must be \
             positive"
        );
        let e = err("trust_domain = \"example.org\"\nca_ttl = \"1s\"\n");
        assert!(e.starts_with("DIR/server.toml:2:1: "), "{e}");
        let e = err("trust_domain = \"example.org\"\nbind_adress = \"x\"\n");
        assert!(e.starts_with("DIR/server.toml:2:"), "{e}");
        assert!(e.contains("bind_adress"), "{e}");
        let e = err("trust_domain = \"example.org\"\nadmin_ids = [\"spiffe://other.org/x\"]\n");
        assert!(e.starts_with("DIR/server.toml:2:1: "), "{e}");
        assert!(e.contains("not in the trust domain example.org"), "{e}");
        let e = err(
            "trust_domain = \"example.org\"\nadmin_ids = [\"spiffe://example.org/spire/agent/x\"]\n",
        );
        assert!(e.contains("reserved"), "{e}");
    }

    #[test]
    fn files_the_configuration_names_are_read() {
        let e = err(
            "trust_domain = \"example.org\"\n[node_attestors.tpm_devid]\n\
             devid_ca_bundle = [\"/nonexistent/devid.pem\"]\nek_ca_bundle = []\n",
        );
        assert!(e.starts_with("DIR/server.toml:2:"), "{e}");
        assert!(e.contains("/nonexistent/devid.pem"), "{e}");
        let e = err("trust_domain = \"example.org\"\n[audit]\npath = \"/nonexistent/audit.log\"\n");
        assert!(e.starts_with("DIR/server.toml:3:1: "), "{e}");
        assert!(e.contains("/nonexistent does not exist"), "{e}");
        let e = err(
            "trust_domain = \"example.org\"\n[datastore]\ntype = \"postgres\"\n\
             connection_string_file = \"/nonexistent/pg\"\n",
        );
        assert!(e.starts_with("DIR/server.toml:4:1: "), "{e}");
        assert!(e.contains("/nonexistent/pg"), "{e}");
        let e = err(
            "trust_domain = \"example.org\"\n[upstream_authority]\ntype = \"disk\"\n\
             cert_file = \"/nonexistent/root.pem\"\nkey_file = \"/nonexistent/root.key\"\n",
        );
        assert!(e.starts_with("DIR/server.toml:2:"), "{e}");
        assert!(e.contains("/nonexistent/root"), "{e}");
    }
}
