//! SPIRE as a peer on this machine: starts SPIRE's real `spire-server` and
//! `spire-agent` (built at a pinned release by `scripts/spire.sh`) as processes in
//! a private directory, on loopback, with join-token attestation, the `unix`
//! workload attestor and a short configuration written here from SPIRE's
//! documented keys; registers entries through SPIRE's CLI; and gives the agent's
//! Workload API socket to any client (go-spiffe, py-spiffe, the `spiffe` crate).
//! Tests that compare or federate Tessera with SPIRE build on this.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use crate::{env_script_output, free_port, spawn_logged, stop_child, wait_until};

/// The directory holding `spire-server` and `spire-agent` (built once per test
/// process by `scripts/spire.sh`, which skips the build when they are there).
pub fn spire_bin_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| PathBuf::from(env_script_output("spire.sh")))
        .clone()
}

/// The path of `spire-server` or `spire-agent`.
pub fn spire_bin(name: &str) -> PathBuf {
    let p = spire_bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing although scripts/spire.sh finished",
        p.display()
    );
    p
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Where a SPIRE server keeps its CA keys: SPIRE's `disk` key manager (the keys
/// in a JSON file, as a production server without an HSM), or `memory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpireKeyManager {
    Disk,
    Memory,
}

/// What a SPIRE server is started with; [`Default`] gives trust domain
/// `spire.test`, the disk key manager and SPIRE's default lifetimes.
#[derive(Debug, Clone)]
pub struct SpireServerOptions {
    pub trust_domain: String,
    pub key_manager: SpireKeyManager,
    /// HCL lines added inside the `server` block (`default_x509_svid_ttl`,
    /// `ca_ttl`, `federation { ... }`, ...).
    pub server_extra: String,
    /// HCL lines added inside the `plugins` block.
    pub plugins_extra: String,
    /// `log_level` (DEBUG by default, for the tests' logs; benchmarks use INFO).
    pub log_level: String,
}

impl Default for SpireServerOptions {
    fn default() -> Self {
        Self {
            trust_domain: "spire.test".into(),
            key_manager: SpireKeyManager::Disk,
            server_extra: String::new(),
            plugins_extra: String::new(),
            log_level: "DEBUG".into(),
        }
    }
}

/// A running `spire-server`, stopped on drop.
#[derive(Debug)]
pub struct SpireServer {
    pub dir: PathBuf,
    pub trust_domain: String,
    /// The agent API's loopback port.
    pub port: u16,
    /// The server API socket (`-socketPath` of SPIRE's CLI).
    pub socket: PathBuf,
    pub config: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl SpireServer {
    /// Starts a server for `options` in `dir` and waits until it is healthy.
    pub fn start(dir: &Path, options: &SpireServerOptions) -> Self {
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("SPIRE server dir");
        let port = free_port();
        let socket = dir.join("private").join("api.sock");
        let key_manager = match options.key_manager {
            SpireKeyManager::Disk => format!(
                "KeyManager \"disk\" {{\n    plugin_data {{\n      keys_path = \"{}\"\n    }}\n  }}",
                data.join("keys.json").display()
            ),
            SpireKeyManager::Memory => "KeyManager \"memory\" {\n    plugin_data {}\n  }".into(),
        };
        let text = format!(
            r#"server {{
  bind_address = "127.0.0.1"
  bind_port = "{port}"
  socket_path = "{socket}"
  trust_domain = "{td}"
  data_dir = "{data}"
  log_level = "{log_level}"
  {server_extra}
}}

plugins {{
  DataStore "sql" {{
    plugin_data {{
      database_type = "sqlite3"
      connection_string = "{db}"
    }}
  }}
  NodeAttestor "join_token" {{
    plugin_data {{}}
  }}
  {key_manager}
  {plugins_extra}
}}
"#,
            socket = socket.display(),
            td = options.trust_domain,
            data = data.display(),
            db = data.join("datastore.sqlite3").display(),
            server_extra = options.server_extra,
            plugins_extra = options.plugins_extra,
            log_level = options.log_level,
        );
        let config = dir.join("server.conf");
        std::fs::write(&config, text).expect("SPIRE server config");
        let mut server = Self {
            dir: dir.to_owned(),
            trust_domain: options.trust_domain.clone(),
            port,
            socket,
            config,
            child: None,
            log: dir.join("spire-server.log"),
        };
        server.launch();
        server
    }

    fn launch(&mut self) {
        let mut cmd = Command::new(spire_bin("spire-server"));
        cmd.arg("run").arg("-config").arg(&self.config);
        self.child = Some(spawn_logged(&mut cmd, &self.log));
        let ok = wait_until(Duration::from_secs(60), || {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("spire-server exited at start ({status}):\n{}", self.log());
            }
            self.cli(&["healthcheck"], &[]).status.success()
        });
        assert!(ok, "spire-server did not become healthy:\n{}", self.log());
    }

    /// Runs `spire-server <command...> -socketPath <socket> <flags...>` (SPIRE's
    /// CLI wants its flags after the command words).
    pub fn cli(&self, command: &[&str], flags: &[&str]) -> Output {
        Command::new(spire_bin("spire-server"))
            .args(command)
            .arg("-socketPath")
            .arg(&self.socket)
            .args(flags)
            .output()
            .expect("spire-server CLI")
    }

    /// Like [`Self::cli`], panicking on failure; returns stdout.
    pub fn cli_ok(&self, command: &[&str], flags: &[&str]) -> String {
        let o = self.cli(command, flags);
        assert!(
            o.status.success(),
            "spire-server {command:?} {flags:?} failed ({}):\n{}{}",
            o.status,
            text(&o.stdout),
            text(&o.stderr)
        );
        text(&o.stdout)
    }

    /// `spiffe://<trust domain><path>`.
    pub fn id(&self, path: &str) -> String {
        format!("spiffe://{}{path}", self.trust_domain)
    }

    /// A fresh join token, with `alias` as the extra SPIFFE ID SPIRE gives the
    /// node that uses it.
    pub fn token(&self, alias: Option<&str>) -> String {
        let mut flags = vec!["-output", "json"];
        if let Some(a) = alias {
            flags.extend(["-spiffeID", a]);
        }
        let out = self.cli_ok(&["token", "generate"], &flags);
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("token generate printed no JSON ({e}):\n{out}"));
        v["value"]
            .as_str()
            .unwrap_or_else(|| panic!("no token value in {out}"))
            .to_owned()
    }

    /// Creates a workload entry (`-selector` for each of `selectors`, then
    /// `extra` flags such as `-x509SVIDTTL 60`); returns its ID.
    pub fn entry(
        &self,
        spiffe_id: &str,
        parent_id: &str,
        selectors: &[&str],
        extra: &[&str],
    ) -> String {
        let mut flags = vec![
            "-spiffeID",
            spiffe_id,
            "-parentID",
            parent_id,
            "-output",
            "json",
        ];
        for s in selectors {
            flags.extend(["-selector", s]);
        }
        flags.extend(extra);
        let out = self.cli_ok(&["entry", "create"], &flags);
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("entry create printed no JSON ({e}):\n{out}"));
        let result = &v["results"][0];
        assert_eq!(result["status"]["code"], 0, "entry create: {out}");
        result["entry"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no entry id in {out}"))
            .to_owned()
    }

    /// Creates many workload entries in one CLI call (`entry create -data`), each
    /// `(SPIFFE ID, parent ID, selectors)`; returns how many were created.
    pub fn entries(&self, list: &[(String, String, Vec<String>)]) -> usize {
        let entries: Vec<serde_json::Value> = list
            .iter()
            .map(|(id, parent, selectors)| {
                let selectors: Vec<serde_json::Value> = selectors
                    .iter()
                    .map(|s| {
                        let (kind, value) = s.split_once(':').unwrap_or((s.as_str(), ""));
                        serde_json::json!({ "type": kind, "value": value })
                    })
                    .collect();
                serde_json::json!({ "spiffe_id": id, "parent_id": parent, "selectors": selectors })
            })
            .collect();
        let file = self.dir.join("entries.json");
        std::fs::write(&file, serde_json::json!({ "entries": entries }).to_string())
            .expect("entries file");
        let file = file.display().to_string();
        let out = self.cli_ok(&["entry", "create"], &["-data", &file, "-output", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("entry create printed no JSON ({e}):\n{out}"));
        let results = v["results"].as_array().cloned().unwrap_or_default();
        for r in &results {
            assert_eq!(r["status"]["code"], 0, "entry create: {r}");
        }
        results.len()
    }

    /// The attested agents, from `agent list`: each one's SPIFFE ID and
    /// attestation type.
    pub fn agents(&self) -> Vec<(String, String)> {
        let out = self.cli_ok(&["agent", "list"], &["-output", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("agent list printed no JSON ({e}):\n{out}"));
        v["agents"]
            .as_array()
            .map(|agents| {
                agents
                    .iter()
                    .map(|a| {
                        let id = format!(
                            "spiffe://{}{}",
                            a["id"]["trust_domain"].as_str().unwrap_or_default(),
                            a["id"]["path"].as_str().unwrap_or_default()
                        );
                        let kind = a["attestation_type"].as_str().unwrap_or_default();
                        (id, kind.to_owned())
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Writes the server's X.509 bundle as PEM to `<dir>/bundle.pem`; returns the path.
    pub fn bundle_pem(&self) -> PathBuf {
        let p = self.dir.join("bundle.pem");
        std::fs::write(&p, self.cli_ok(&["bundle", "show"], &["-format", "pem"]))
            .expect("bundle file");
        p
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c);
        }
    }
}

impl Drop for SpireServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running `spire-agent`, stopped on drop.
#[derive(Debug)]
pub struct SpireAgent {
    pub dir: PathBuf,
    /// The Workload API socket.
    pub socket: PathBuf,
    /// SPIRE's admin API socket (`admin_socket_path`).
    pub admin_socket: PathBuf,
    pub config: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl SpireAgent {
    /// Starts an agent attesting to `server` with join `token` (bootstrapped with
    /// the server's bundle, syncing every second so new entries show up quickly;
    /// `extra` HCL lines go inside the `agent` block) and waits until it is healthy.
    pub fn start(dir: &Path, server: &SpireServer, token: &str, extra: &str) -> Self {
        let mut agent = Self::configure(dir, server, token, extra);
        agent.spawn();
        agent.wait_healthy();
        agent
    }

    /// Writes the configuration of [`Self::start`] without starting the agent
    /// (see [`Self::spawn`]). The agent also serves SPIRE's admin API (its debug
    /// service) on [`Self::admin_socket`].
    pub fn configure(dir: &Path, server: &SpireServer, token: &str, extra: &str) -> Self {
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("SPIRE agent dir");
        let socket = dir.join("public").join("api.sock");
        // SPIRE wants the admin socket outside the Workload API socket's directory.
        let admin_socket = dir.join("admin").join("admin.sock");
        std::fs::create_dir_all(dir.join("admin")).expect("SPIRE agent admin dir");
        let bootstrap = dir.join("bootstrap.pem");
        std::fs::copy(server.bundle_pem(), &bootstrap).expect("bootstrap bundle");
        let log_level = if extra.contains("log_level") {
            ""
        } else {
            "log_level = \"DEBUG\""
        };
        let experimental = if extra.contains("experimental") {
            String::new()
        } else {
            "experimental {\n    sync_interval = \"1s\"\n  }".into()
        };
        // The token goes in the configuration (private to this directory) rather
        // than on the command line, where every local user could read it.
        let text = format!(
            r#"agent {{
  data_dir = "{data}"
  {log_level}
  server_address = "127.0.0.1"
  server_port = "{port}"
  socket_path = "{socket}"
  admin_socket_path = "{admin}"
  trust_bundle_path = "{bootstrap}"
  trust_domain = "{td}"
  join_token = "{token}"
  {experimental}
  {extra}
}}

plugins {{
  NodeAttestor "join_token" {{
    plugin_data {{}}
  }}
  KeyManager "disk" {{
    plugin_data {{
      directory = "{data}"
    }}
  }}
  WorkloadAttestor "unix" {{
    plugin_data {{}}
  }}
}}
"#,
            data = data.display(),
            port = server.port,
            socket = socket.display(),
            admin = admin_socket.display(),
            bootstrap = bootstrap.display(),
            td = server.trust_domain,
        );
        let config = dir.join("agent.conf");
        write_private(&config, &text);
        Self {
            dir: dir.to_owned(),
            socket,
            admin_socket,
            config,
            child: None,
            log: dir.join("spire-agent.log"),
        }
    }

    /// Starts the configured agent process without waiting for it.
    pub fn spawn(&mut self) {
        let mut cmd = Command::new(spire_bin("spire-agent"));
        cmd.arg("run").arg("-config").arg(&self.config);
        self.child = Some(spawn_logged(&mut cmd, &self.log));
    }

    /// Waits until the agent answers its health check.
    pub fn wait_healthy(&mut self) {
        let ok = wait_until(Duration::from_secs(60), || {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("spire-agent exited at start ({status}):\n{}", self.log());
            }
            self.healthcheck().status.success()
        });
        assert!(ok, "spire-agent did not become healthy:\n{}", self.log());
    }

    /// `spire-agent healthcheck` against this agent's socket.
    pub fn healthcheck(&self) -> Output {
        Command::new(spire_bin("spire-agent"))
            .arg("healthcheck")
            .arg("-socketPath")
            .arg(&self.socket)
            .output()
            .expect("spire-agent CLI")
    }

    /// `unix:///...`, as SPIFFE_ENDPOINT_SOCKET wants it.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c);
        }
    }
}

impl Drop for SpireAgent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes `text` to a new file only its owner can read.
fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    f.write_all(text.as_bytes())
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}
