//! `tessera-agent validate -c FILE`: checks a configuration file as `run` would read
//! it (with `--set` flags and `TESSERA_AGENT_*` variables) without starting anything:
//! the syntax, every rule, the trust bundle (PEM certificates) and the presence of a
//! join-token file and of the DevID directory. The TPM and the server are not
//! contacted, and no secret is read. Errors name the file and, where the file sets
//! the value at fault, its line.

use std::path::{Path, PathBuf};

use super::CliError;
use crate::config::{AgentConfig, InvalidConfig};

/// `validate`'s arguments.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    #[arg(long, short, default_value = crate::config::DEFAULT_CONFIG)]
    pub config: PathBuf,
    /// Overrides a configuration value (repeatable), as `run --set` does.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// Checks the file; returns what to print when it is valid.
pub fn execute(args: &ValidateArgs) -> Result<String, CliError> {
    let cfg = AgentConfig::load(&args.config, &args.set)?;
    let path = args.config.display().to_string();
    let text = std::fs::read_to_string(&args.config).unwrap_or_default();
    let at = |key: &'static str, message: String| {
        CliError::Config(InvalidConfig::Setting { key, message }.in_file(&path, &text))
    };
    if let Some(bundle) = &cfg.trust_bundle_path {
        let pem = std::fs::read(bundle).map_err(|e| {
            at(
                "trust_bundle_path",
                format!("trust_bundle_path {}: {e}", bundle.display()),
            )
        })?;
        tessera_core::x509::pem_certs(&pem).map_err(|e| {
            at(
                "trust_bundle_path",
                format!("trust_bundle_path {}: {e}", bundle.display()),
            )
        })?;
    }
    let present = |key: &'static str, what: &str, p: &Path, dir: bool| {
        let ok = if dir { p.is_dir() } else { p.is_file() };
        if ok {
            Ok(())
        } else {
            Err(at(key, format!("{what} {} does not exist", p.display())))
        }
    };
    if let Some(f) = cfg
        .node_attestor
        .join_token
        .as_ref()
        .and_then(|j| j.token_file.as_ref())
    {
        present(
            "node_attestor.join_token.token_file",
            "token_file",
            f,
            false,
        )?;
    }
    if let Some(d) = cfg
        .node_attestor
        .tpm_devid
        .as_ref()
        .and_then(|d| d.devid_dir.as_ref())
    {
        present("node_attestor.tpm_devid.devid_dir", "devid_dir", d, true)?;
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

    fn check(text: &str) -> Result<String, String> {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle.pem");
        std::fs::write(&bundle, "not a certificate").unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, text.replace("BUNDLE", &bundle.display().to_string())).unwrap();
        execute(&ValidateArgs {
            config: path,
            set: vec![],
        })
        .map_err(|e| {
            e.to_string()
                .replace(&dir.path().display().to_string(), "DIR")
        })
    }

    const BASE: &str = "trust_domain = \"example.org\"\nserver_address = \"10.0.0.1\"\n";

    #[test]
    fn a_valid_file_is_said_so_and_mistakes_name_file_and_line() {
        let ok = check(&format!("{BASE}insecure_bootstrap = true\n")).unwrap();
        assert!(ok.ends_with("agent.toml is valid.\n"), "{ok}");
        assert_eq!(
            check(&format!(
                "{BASE}insecure_bootstrap = true\nsync_interval = \"1ms\"\n"
            ))
            .unwrap_err(),
            "DIR/agent.toml:4:1: invalid configuration: sync_interval must be at least 100ms"
        );
        let e = check(&format!(
            "{BASE}insecure_bootstrap = true\nsocket_path = \"rel.sock\"\n"
        ))
        .unwrap_err();
        assert!(e.starts_with("DIR/agent.toml:4:1: "), "{e}");
        // A missing key: the file is named, there is no line to name.
        let e = check("trust_domain = \"example.org\"\ninsecure_bootstrap = true\n").unwrap_err();
        assert!(
            e.starts_with("DIR/agent.toml: invalid configuration: server_address is required"),
            "{e}"
        );
        let e = check(&format!("{BASE}sync_intervall = \"5s\"\n")).unwrap_err();
        assert!(e.starts_with("DIR/agent.toml:3:"), "{e}");
    }

    #[test]
    fn the_files_it_names_are_checked() {
        let e = check(&format!("{BASE}trust_bundle_path = \"BUNDLE\"\n")).unwrap_err();
        assert!(e.starts_with("DIR/agent.toml:3:1: "), "{e}");
        assert!(e.contains("no PEM CERTIFICATE block"), "{e}");
        let e = check(&format!(
            "{BASE}insecure_bootstrap = true\n[node_attestor.join_token]\n\
             token_file = \"/nonexistent/token\"\n"
        ))
        .unwrap_err();
        assert!(e.starts_with("DIR/agent.toml:5:1: "), "{e}");
        assert!(e.contains("/nonexistent/token does not exist"), "{e}");
    }
}
