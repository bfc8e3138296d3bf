//! `config`: the server's and the agent's TOML configuration
//! (`tessera_server::config`, `tessera_agent::config`, and the loader and
//! duration syntax they share in `tessera_core`), from any text. A line `%%`
//! separates the file from `--set` flags, one per line.
//!
//! Checked: a configuration that loads, from the file alone or with flags,
//! obeys every rule the loaders state (lifetimes, limits, server addresses,
//! attestors), so no flag slips past validation; with no flags, loading the
//! file and parsing its text agree; an error in the file points at a line and
//! column inside it; the agent's server list gives `host:port` entries with a
//! port; every duration that parses prints (the way logs show it) back to the
//! same duration.

use std::cell::RefCell;
use std::time::Duration;

use tessera_agent::config::AgentConfig;
use tessera_core::duration::{format_duration, parse_duration};
use tessera_process::config::ConfigError;
use tessera_server::config::{InvalidConfig, ServerConfig};

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (file, flags) = match text.split_once("\n%%\n") {
        Some((file, flags)) => (file, flags.lines().map(str::to_owned).collect()),
        None => (text, Vec::new()),
    };
    server(file, &flags);
    agent(file, &flags);
    for line in text.lines() {
        durations(line);
        if let Some((_, value)) = line.split_once('=') {
            durations(value.trim().trim_matches('"'));
        }
    }
}

/// Writes `text` to this thread's scratch file and returns its path.
fn scratch(text: &str) -> std::path::PathBuf {
    thread_local! {
        static DIR: RefCell<Option<tempfile::TempDir>> = const { RefCell::new(None) };
    }
    DIR.with(|dir| {
        let mut dir = dir.borrow_mut();
        let dir = dir.get_or_insert_with(|| tempfile::tempdir().expect("a temporary directory"));
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).expect("writing the scratch file");
        path
    })
}

fn check_position(text: &str, e: &ConfigError) {
    if let ConfigError::File { line, column, .. } = e {
        let lines: Vec<&str> = text.split('\n').collect();
        assert!(
            (1..=lines.len()).contains(line),
            "an error on line {line} of a {}-line file",
            lines.len()
        );
        assert!(
            *column >= 1 && *column <= lines[line - 1].len() + 1,
            "an error at column {column} of a {}-byte line",
            lines[line - 1].len()
        );
    }
}

fn server(file: &str, flags: &[String]) {
    let parsed = ServerConfig::parse(file);
    if let Err(InvalidConfig::Load(e)) = &parsed {
        check_position(file, e);
    }
    let loaded = ServerConfig::load(&scratch(file), flags);
    if flags.is_empty() {
        assert_eq!(parsed.is_ok(), loaded.is_ok(), "load and parse disagree");
    }
    for cfg in [parsed, loaded].into_iter().flatten() {
        assert!(
            cfg.ca_ttl >= Duration::from_secs(10),
            "ca_ttl {:?}",
            cfg.ca_ttl
        );
        assert!(!cfg.x509_svid_ttl.is_zero() && !cfg.jwt_svid_ttl.is_zero());
        let l = &cfg.limits;
        assert_ne!(l.max_connections, Some(0));
        assert_ne!(l.max_connections_per_ip, Some(0));
        assert!(!l.handshake_timeout.is_zero());
        assert!(l.attestation_rate.is_finite() && l.attestation_rate >= 0.0);
        assert!(l.attestation_rate == 0.0 || l.attestation_burst >= 1);
        assert!(cfg.agent_svid_ttl() > Duration::ZERO);
    }
}

fn agent(file: &str, flags: &[String]) {
    let parsed = AgentConfig::parse(file);
    if let Err(tessera_agent::config::InvalidConfig::Load(e)) = &parsed {
        check_position(file, e);
    }
    let loaded = AgentConfig::load(&scratch(file), flags);
    if flags.is_empty() {
        assert_eq!(parsed.is_ok(), loaded.is_ok(), "load and parse disagree");
    }
    for cfg in [parsed, loaded].into_iter().flatten() {
        let servers = cfg.servers();
        assert!(!servers.is_empty(), "no server to connect to");
        for s in &servers {
            let port = s.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
            assert!(
                matches!(port, Some(Ok(_))),
                "server entry {s:?} has no port"
            );
        }
        assert!(cfg.trust_bundle_path.is_some() || cfg.insecure_bootstrap);
        assert!(cfg.sync_interval >= Duration::from_millis(100));
        assert!(cfg.socket_path.is_absolute());
        assert!(cfg.node_attestor.tpm_devid.is_none() || cfg.node_attestor.tpm_ek.is_none());
        assert_ne!(cfg.limits.max_connections, Some(0));
        assert_ne!(cfg.limits.max_connections_per_uid, Some(0));
    }
}

fn durations(text: &str) {
    let Ok(d) = parse_duration(text) else {
        return;
    };
    let printed = format_duration(d);
    assert_eq!(
        parse_duration(&printed),
        Ok(d),
        "{text:?} is {d:?}, printed as {printed:?}"
    );
}
