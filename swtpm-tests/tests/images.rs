//! The appliance overlay's default agent configuration must load with the agent's own
//! parser (a typo there would brick every device built from it).

#![allow(
    clippy::unwrap_used,
    reason = "test code: a failed unwrap is a failed test"
)]

#[test]
fn image_default_agent_config_parses() {
    let path = tessera_swtpm_tests::repo_root().join("images/rootfs/etc/tessera/agent.toml");
    let cfg = tessera_agent::config::AgentConfig::load(&path, &[]).unwrap();
    assert_eq!(
        cfg.socket_path,
        std::path::PathBuf::from(tessera_agent::config::DEFAULT_SOCKET)
    );
    assert_eq!(
        cfg.servers(),
        vec!["tessera-server.example.org:8081".to_string()]
    );
}
