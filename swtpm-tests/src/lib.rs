//! The end-to-end harness: starts the real `tessera-server` and `tessera-agent`
//! binaries as processes in a private directory, talks to them through their CLIs and
//! sockets, and runs third-party SPIFFE clients against them (py-spiffe here;
//! go-spiffe and java-spiffe in [`spiffe_libs`]); [`spire`] runs SPIRE beside it.
//!
//! The binaries must be built first (`cargo build --bins`, which the project's test
//! script does); the harness says so clearly when they are missing.

#![allow(
    clippy::expect_used,
    reason = "test code: a step that cannot be taken ends the test with its message"
)]

pub mod admin;
pub mod attack_h2;
pub mod attack_net;
pub mod cloud;
pub mod faults;
pub mod faults_agent;
pub mod pebble;
pub mod spiffe_libs;
pub mod spire;
pub mod tpm_agent;
pub mod writers;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub mod attack;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Where cargo put the binaries: `$TESSERA_BIN_DIR`, or the directory of the running
/// executable (the profile directory for a test executable in `deps/`).
pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("TESSERA_BIN_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current executable");
    let dir = exe.parent().expect("executable directory");
    // Test executables live in target/<profile>/deps, binaries in target/<profile>.
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().expect("profile directory").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// The JWT key IDs of a JWK Set (its keys whose `use` is `jwt-svid`), in order.
pub fn jwt_kids(jwks: &serde_json::Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .filter(|k| k["use"] == "jwt-svid")
                .filter_map(|k| k["kid"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// The path of a project binary; panics with the command to run when it is missing.
///
/// `$TESSERA_TEST_AGENT_BIN` and `$TESSERA_TEST_SERVER_BIN` name another build of the agent or
/// the server (the static ones of `scripts/static.sh`, say) for the tests to run
/// instead of the one in [`bin_dir`]. (Not `TESSERA_AGENT_*` or `TESSERA_SERVER_*`:
/// the binaries read those as configuration overrides.)
pub fn bin(name: &str) -> PathBuf {
    let over = match name {
        "tessera-agent" => "TESSERA_TEST_AGENT_BIN",
        "tessera-server" => "TESSERA_TEST_SERVER_BIN",
        _ => "",
    };
    if let Some(p) = std::env::var_os(over).filter(|_| !over.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "{over}={} is not a file: build it (scripts/static.sh) or unset {over}",
            p.display()
        );
        return p;
    }
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the binaries first (cargo build --bins), or set TESSERA_BIN_DIR",
        p.display()
    );
    p
}

/// Where `scripts/static.sh` puts the static binaries for a target triple:
/// `$TESSERA_STATIC_DIR/<triple>` (default `<repo>/target/static/<triple>`).
pub fn static_dir(triple: &str) -> PathBuf {
    std::env::var_os("TESSERA_STATIC_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/static"))
        .join(triple)
}

/// A static binary of `scripts/static.sh`; panics with the command to run when it
/// is missing.
pub fn static_bin(triple: &str, name: &str) -> PathBuf {
    let p = static_dir(triple).join(name);
    assert!(
        p.is_file(),
        "{} is missing: build the static binaries first (scripts/static.sh {triple})",
        p.display()
    );
    p
}

/// A TCP port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Polls `f` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a command and returns its output, panicking with everything it said on failure.
pub fn run_ok(cmd: &mut Command) -> String {
    let o = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

pub(crate) fn spawn_logged(cmd: &mut Command, log: &Path) -> Child {
    let f = std::fs::File::create(log).expect("log file");
    let f2 = f.try_clone().expect("log file");
    cmd.stdout(Stdio::from(f)).stderr(Stdio::from(f2));
    // TESSERA_TEST_LOG overrides every process's filter; without it the
    // configuration's `log_level` decides (info unless a test sets it), never a
    // TESSERA_LOG left in the caller's environment.
    match std::env::var("TESSERA_TEST_LOG") {
        Ok(spec) => cmd.env("TESSERA_LOG", spec),
        Err(_) => cmd.env_remove("TESSERA_LOG"),
    };
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

pub(crate) fn stop_child(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A running `tessera-server`.
#[derive(Debug)]
pub struct Server {
    pub dir: PathBuf,
    pub port: u16,
    pub admin: PathBuf,
    pub config: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    starts: u32,
    /// Extra environment for the server process and its CLI (e.g. SOFTHSM2_CONF).
    env: Vec<(String, String)>,
}

impl Server {
    /// Like [`Self::start`], with extra environment variables for the process and CLI.
    pub fn start_with_env(dir: &Path, extra: &str, env: &[(String, String)]) -> Self {
        Self::start_inner(dir, extra, env.to_vec())
    }

    /// Writes a configuration (trust domain `example.org`, everything under `dir`,
    /// plus `extra` TOML lines) and starts the server.
    pub fn start(dir: &Path, extra: &str) -> Self {
        Self::start_inner(dir, extra, Vec::new())
    }

    /// Like [`Self::start`], for trust domain `td` instead of `example.org`.
    pub fn start_in(dir: &Path, td: &str, extra: &str) -> Self {
        let mut s = Self::configure_in(dir, td, extra, Vec::new());
        s.launch();
        s
    }

    /// Writes the configuration like [`Self::start`] without starting anything (see
    /// [`Self::try_start`] for a server expected to refuse).
    pub fn configure(dir: &Path, extra: &str) -> Self {
        Self::configure_inner(dir, extra, Vec::new())
    }

    fn start_inner(dir: &Path, extra: &str, env: Vec<(String, String)>) -> Self {
        let mut s = Self::configure_inner(dir, extra, env);
        s.launch();
        s
    }

    fn configure_inner(dir: &Path, extra: &str, env: Vec<(String, String)>) -> Self {
        Self::configure_in(dir, "example.org", extra, env)
    }

    fn configure_in(dir: &Path, td: &str, extra: &str, env: Vec<(String, String)>) -> Self {
        std::fs::create_dir_all(dir).expect("server dir");
        let port = free_port();
        let admin = dir.join("admin.sock");
        let config = dir.join("server.toml");
        let text = format!(
            "trust_domain = \"{td}\"\nbind_address = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\nadmin_socket = \"{}\"\n{extra}\n",
            dir.join("data").display(),
            admin.display()
        );
        std::fs::write(&config, text).expect("server config");
        Self {
            dir: dir.to_owned(),
            port,
            admin,
            config,
            child: None,
            log: dir.join("server.log"),
            starts: 0,
            env,
        }
    }

    fn run_command(&self) -> Command {
        let mut cmd = Command::new(bin("tessera-server"));
        cmd.arg("run")
            .arg("--config")
            .arg(&self.config)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn launch(&mut self) {
        self.starts += 1;
        let log = self.dir.join(format!("server.{}.log", self.starts));
        self.log = log.clone();
        let child = spawn_logged(&mut self.run_command(), &log);
        self.child = Some(child);
        let ok = wait_until(Duration::from_secs(30), || {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("server exited at start ({status}):\n{}", self.log());
            }
            self.cli(&["healthcheck"]).status.success()
        });
        assert!(ok, "server did not become healthy:\n{}", self.log());
    }

    /// Starts the server again after [`Self::stop`].
    pub fn start_again(&mut self) {
        self.launch();
    }

    /// Starts the server process without waiting for it to be healthy; returns its
    /// exit status if it ended within `wait`.
    pub fn try_start(&mut self, wait: Duration) -> Option<ExitStatus> {
        self.starts += 1;
        let log = self.dir.join(format!("server.{}.log", self.starts));
        self.log = log.clone();
        let mut child = spawn_logged(&mut self.run_command(), &log);
        let mut status = None;
        wait_until(wait, || {
            status = child.try_wait().ok().flatten();
            status.is_some()
        });
        self.child = Some(child);
        status
    }

    /// Stops and starts the server on the same state.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c);
        }
    }

    /// Runs `tessera-server --socket-path <admin> <args>`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("tessera-server"))
            .arg("--socket-path")
            .arg(&self.admin)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .expect("tessera-server CLI")
    }

    /// Like [`Self::cli`], panicking on failure; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "tessera-server {args:?} failed:\n{}{}",
            stdout(&o),
            stderr(&o)
        );
        stdout(&o)
    }

    /// A fresh join token (optionally with an alias SPIFFE ID and a TTL like `1s`).
    pub fn token(&self, spiffe_id: Option<&str>, ttl: Option<&str>) -> String {
        let mut args = vec!["token", "generate"];
        if let Some(id) = spiffe_id {
            args.extend(["--spiffe-id", id]);
        }
        if let Some(t) = ttl {
            args.extend(["--ttl", t]);
        }
        let out = self.cli_ok(&args);
        out.trim()
            .strip_prefix("Token: ")
            .expect("Token: line")
            .to_owned()
    }

    /// Creates an entry and returns its ID.
    pub fn entry(
        &self,
        spiffe_id: &str,
        parent_id: &str,
        selectors: &[&str],
        extra: &[&str],
    ) -> String {
        let mut args = vec![
            "entry",
            "create",
            "--spiffe-id",
            spiffe_id,
            "--parent-id",
            parent_id,
            "--output",
            "json",
        ];
        for s in selectors {
            args.extend(["--selector", s]);
        }
        args.extend(extra);
        let out = self.cli_ok(&args);
        let v: serde_json::Value = serde_json::from_str(&out).expect("entry JSON");
        v["id"].as_str().expect("entry id").to_owned()
    }

    /// The federated bundle of `td` (a JWK Set) as `bundle list --format jwks` prints
    /// it, if the server holds one.
    pub fn federated_jwks(&self, td: &str) -> Option<serde_json::Value> {
        let list = self.cli_ok(&["bundle", "list", "--format", "jwks"]);
        // Each bundle under a `* <td>` header between rules of asterisks.
        let rule = "*".repeat(40);
        let header = format!("{rule}\n* {td}\n{rule}\n");
        let rest = &list[list.find(&header)? + header.len()..];
        let end = rest.find(&rule).unwrap_or(rest.len());
        serde_json::from_str(rest[..end].trim()).ok()
    }

    /// Writes the server's bundle as PEM to `<dir>/bundle.pem` and returns the path.
    pub fn bundle_pem(&self) -> PathBuf {
        let p = self.dir.join("bundle.pem");
        std::fs::write(&p, self.cli_ok(&["bundle", "show"])).expect("bundle file");
        p
    }

    /// The server process's PID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits up to `timeout` for the server process to end; its exit status if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            status.is_some()
        });
        status
    }

    /// What the current server process logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A SoftHSM2 token under a private configuration, made by `scripts/softhsm.sh`.
#[derive(Debug, Clone)]
pub struct SoftHsm {
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub module: PathBuf,
    pub label: String,
    pub pin_file: PathBuf,
}

impl SoftHsm {
    /// Creates token `label` (user PIN `pin`) in `dir`.
    pub fn init(dir: &Path, label: &str, pin: &str) -> Self {
        let script = repo_root().join("scripts").join("softhsm.sh");
        let out = run_ok(
            Command::new("bash")
                .arg(&script)
                .arg("init")
                .arg(dir)
                .arg(label)
                .arg(pin),
        );
        let var = |name: &str| -> String {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .map(|v| v.trim_matches(|c| c == '\'' || c == '"').to_owned())
                .unwrap_or_else(|| panic!("softhsm.sh printed no {name}:\n{out}"))
        };
        Self {
            dir: dir.to_owned(),
            conf: PathBuf::from(var("SOFTHSM2_CONF")),
            module: PathBuf::from(var("PKCS11_MODULE")),
            label: label.to_owned(),
            pin_file: PathBuf::from(var("PKCS11_PIN_FILE")),
        }
    }

    /// The environment a process needs to see this token.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![("SOFTHSM2_CONF".into(), self.conf.display().to_string())]
    }

    /// A `[key_manager]`-style PKCS#11 section body for this token.
    pub fn section(&self) -> String {
        format!(
            "module = \"{}\"\ntoken_label = \"{}\"\npin_file = \"{}\"\n",
            self.module.display(),
            self.label,
            self.pin_file.display()
        )
    }

    /// Runs pkcs11-tool against this token (logged in) and returns its stdout.
    pub fn pkcs11_tool(&self, args: &[&str]) -> Output {
        let pin = std::fs::read_to_string(&self.pin_file).expect("pin file");
        Command::new("pkcs11-tool")
            .arg("--module")
            .arg(&self.module)
            .args(["--token-label", &self.label, "--login", "--pin", pin.trim()])
            .args(args)
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .expect("pkcs11-tool")
    }

    /// The token directory SoftHSM keeps this token's objects in.
    pub fn tokens_dir(&self) -> PathBuf {
        self.dir.join("tokens")
    }
}

/// A `tessera-agent` process.
#[derive(Debug)]
pub struct Agent {
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    starts: u32,
}

impl Agent {
    /// Writes a configuration pointing at `server` (bootstrap bundle from it, state in
    /// `dir`, `extra` TOML lines) without starting anything.
    pub fn configure(dir: &Path, server: &Server, extra: &str) -> Self {
        std::fs::create_dir_all(dir).expect("agent dir");
        let bundle = server.bundle_pem();
        let socket = dir.join("api.sock");
        let config = dir.join("agent.toml");
        let text = format!(
            "trust_domain = \"example.org\"\nserver_address = \"{}\"\ndata_dir = \"{}\"\nsocket_path = \"{}\"\ntrust_bundle_path = \"{}\"\n{}{extra}\n",
            server.address(),
            dir.join("data").display(),
            socket.display(),
            bundle.display(),
            if extra.contains("sync_interval") {
                ""
            } else {
                "sync_interval = \"500ms\"\n"
            }
        );
        std::fs::write(&config, text).expect("agent config");
        Self {
            dir: dir.to_owned(),
            socket,
            config,
            child: None,
            log: dir.join("agent.log"),
            starts: 0,
        }
    }

    /// Starts the agent process (with a join token when given) without waiting.
    pub fn spawn(&mut self, token: Option<&str>) {
        self.spawn_in(token, &[]);
    }

    /// Like [`Self::spawn`], run through `wrapper` (a command that execs the rest,
    /// such as `ip netns exec <name>`, so the agent keeps its PID).
    pub fn spawn_in(&mut self, token: Option<&str>, wrapper: &[String]) {
        self.starts += 1;
        self.log = self.dir.join(format!("agent.{}.log", self.starts));
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin("tessera-agent"));
                c
            }
            None => Command::new(bin("tessera-agent")),
        };
        cmd.arg("run").arg("--config").arg(&self.config);
        // The token goes in the environment, as the README advises: on the command
        // line every local user could read it.
        cmd.env_remove("TESSERA_AGENT_JOIN_TOKEN");
        if let Some(t) = token {
            cmd.env("TESSERA_AGENT_JOIN_TOKEN", t);
        }
        self.child = Some(spawn_logged(&mut cmd, &self.log));
    }

    /// Starts the agent and waits until it is healthy.
    pub fn start(dir: &Path, server: &Server, token: Option<&str>, extra: &str) -> Self {
        let mut a = Self::configure(dir, server, extra);
        a.spawn(token);
        a.wait_healthy();
        a
    }

    /// The agent process's PID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits until `tessera-agent healthcheck` passes.
    pub fn wait_healthy(&mut self) {
        let ok = wait_until(Duration::from_secs(30), || {
            if let Some(status) = self.exited() {
                panic!("agent exited ({status}):\n{}", self.log());
            }
            self.cli(&["healthcheck"]).status.success()
        });
        assert!(ok, "agent did not become healthy:\n{}", self.log());
    }

    /// The exit status if the process has ended.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits for the process to end.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.exited();
            status.is_some()
        });
        status
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            stop_child(&mut c);
        }
    }

    /// Runs `tessera-agent <args> --socket-path <socket>` for the subcommands that take it.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin("tessera-agent"))
            .args(args)
            .arg("--socket-path")
            .arg(&self.socket)
            .output()
            .expect("tessera-agent CLI")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `unix:///...`, as SPIFFE_ENDPOINT_SOCKET wants it.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The agent's SPIFFE ID, from its state directory.
    pub fn spiffe_id(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.join("data").join("agent.json")).expect("agent.json");
        let v: serde_json::Value = serde_json::from_str(&text).expect("agent.json is JSON");
        v["spiffe_id"].as_str().expect("spiffe_id").to_owned()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `scripts/<script>` (which prepares a client environment once) and returns
/// the last line it prints: the path or class path to run the client with.
pub(crate) fn env_script_output(script: &str) -> String {
    let path = repo_root().join("scripts").join(script);
    let out = run_ok(Command::new("bash").arg(&path));
    let last = out.lines().last().unwrap_or_default().trim().to_owned();
    assert!(
        !last.is_empty(),
        "{} printed nothing:\n{out}",
        path.display()
    );
    last
}

/// The virtualenv's python with py-spiffe installed (made once per test process by
/// `scripts/python-env.sh`).
pub fn python() -> PathBuf {
    static PY: OnceLock<PathBuf> = OnceLock::new();
    PY.get_or_init(|| {
        let path = PathBuf::from(env_script_output("python-env.sh"));
        assert!(
            path.exists(),
            "python-env.sh printed {}, which does not exist",
            path.display()
        );
        path
    })
    .clone()
}

/// Runs a workload client command against an agent (its socket in
/// `SPIFFE_ENDPOINT_SOCKET`).
fn workload(agent: &Agent, mut cmd: Command) -> Output {
    cmd.env("SPIFFE_ENDPOINT_SOCKET", agent.endpoint())
        .output()
        .expect("workload client")
}

/// Like [`workload`], panicking on failure; returns stdout.
fn workload_ok(agent: &Agent, what: &str, cmd: Command) -> String {
    let o = workload(agent, cmd);
    assert!(
        o.status.success(),
        "{what} failed:\nstdout:\n{}\nstderr:\n{}\nagent log:\n{}",
        stdout(&o),
        stderr(&o),
        agent.log()
    );
    stdout(&o)
}

fn py_command(script: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg(repo_root().join("swtpm-tests").join("py").join(script))
        .args(args);
    cmd
}

/// Runs `swtpm-tests/py/<script>` with the venv python against an agent.
pub fn py(agent: &Agent, script: &str, args: &[&str]) -> Output {
    workload(agent, py_command(script, args))
}

/// Like [`py`], panicking on failure; returns stdout.
pub fn py_ok(agent: &Agent, script: &str, args: &[&str]) -> String {
    workload_ok(
        agent,
        &format!("python {script} {args:?}"),
        py_command(script, args),
    )
}

/// A private temporary directory for one test; kept (and its path printed) when
/// `TESSERA_KEEP_TEST_DIRS` is set, for post-mortems.
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
    _guard: Option<tempfile::TempDir>,
}

impl TestDir {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

pub fn test_dir(name: &str) -> TestDir {
    let d = tempfile::Builder::new()
        .prefix(&format!("tessera-{name}-"))
        .tempdir()
        .expect("temp dir");
    if std::env::var_os("TESSERA_KEEP_TEST_DIRS").is_some() {
        let path = d.keep();
        eprintln!("test directory kept: {}", path.display());
        return TestDir { path, _guard: None };
    }
    TestDir {
        path: d.path().to_owned(),
        _guard: Some(d),
    }
}

/// The effective UID of this test process (the workload in most tests).
pub fn my_uid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|s| s.parse().ok())
        .expect("Uid line")
}

/// Runs `openssl verify` of `cert` (PEM file, leaf first) against `ca` (PEM file).
pub fn openssl_verify(ca: &Path, cert: &Path) -> Output {
    Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(ca)
        .arg(cert)
        .output()
        .expect("openssl")
}

/// One FetchX509SVID stream message, as a workload received it.
#[derive(Debug, Clone)]
pub struct X509Update {
    pub at: std::time::SystemTime,
    /// The default SVID's chain, leaf first.
    pub chain: Vec<Vec<u8>>,
    /// The bundle sent with it.
    pub bundle: tessera_core::Bundle,
    pub serial: String,
    pub not_after: i64,
    pub issuer: String,
}

/// Holds a FetchX509SVID stream open for `duration` (waiting first for the caller to
/// have an identity) and returns every message.
pub fn watch_x509(agent: &Agent, duration: Duration) -> Vec<X509Update> {
    let end = Instant::now() + duration;
    watch_x509_while(agent, || Instant::now() < end)
}

/// Like [`watch_x509`], for as long as `go_on` says (asked at least every second).
/// The stream breaking ends the test with its error.
pub fn watch_x509_while(agent: &Agent, go_on: impl Fn() -> bool) -> Vec<X509Update> {
    use tessera_proto::workload::spiffe_workload_api_client::SpiffeWorkloadApiClient;
    let td = tessera_core::TrustDomain::new("example.org").expect("trust domain");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let ch = tessera_proto::unix_channel(&agent.socket)
            .await
            .expect("agent socket");
        let mut client =
            SpiffeWorkloadApiClient::with_interceptor(ch, |mut r: tonic::Request<()>| {
                r.metadata_mut().insert(
                    "workload.spiffe.io",
                    tonic::metadata::MetadataValue::from_static("true"),
                );
                Ok(r)
            });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut stream = loop {
            match client
                .fetch_x509svid(tessera_proto::workload::X509svidRequest {})
                .await
            {
                Ok(s) => break s.into_inner(),
                Err(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                Err(e) => panic!("no SVID: {e}\n{}", agent.log()),
            }
        };
        let mut out = Vec::new();
        while go_on() {
            let msg = match tokio::time::timeout(Duration::from_secs(1), stream.message()).await {
                Err(_) => continue,
                Ok(Ok(Some(msg))) => msg,
                Ok(Ok(None)) => break,
                Ok(Err(e)) => panic!("stream error: {e}\n{}", agent.log()),
            };
            let at = std::time::SystemTime::now();
            let svid = &msg.svids[0];
            let chain =
                tessera_core::x509::split_concatenated(&svid.x509_svid).expect("SVID chain");
            let roots = tessera_core::x509::split_concatenated(&svid.bundle).expect("bundle");
            let info = tessera_core::x509::cert_info(&chain[0]).expect("leaf");
            out.push(X509Update {
                at,
                chain,
                bundle: tessera_core::Bundle::with_x509(td.clone(), roots),
                serial: info.serial_hex,
                not_after: info.not_after,
                issuer: info.issuer,
            });
        }
        out
    })
}

/// Checks what a workload saw: every SVID valid against the bundle it came with; each
/// new SVID arriving before the previous one expired; the SVID held before every
/// update still valid against the new bundle.
pub fn assert_continuous(updates: &[X509Update]) {
    for (i, r) in updates.iter().enumerate() {
        tessera_core::x509::verify_svid_chain(&r.chain, &r.bundle, r.at).unwrap_or_else(|e| {
            panic!("update {i}: SVID does not verify against its own bundle: {e}")
        });
        if i == 0 {
            continue;
        }
        let prev = &updates[i - 1];
        let new_svid = prev.serial != r.serial;
        let new_bundle = prev.bundle.x509_authorities() != r.bundle.x509_authorities();
        assert!(new_svid || new_bundle, "update {i} changes nothing");
        let at = tessera_core::x509::unix_seconds(r.at);
        assert!(
            !new_svid || at < prev.not_after,
            "update {i} arrived at {at}, after the previous SVID expired at {}",
            prev.not_after
        );
        tessera_core::x509::verify_svid_chain(&prev.chain, &r.bundle, r.at).unwrap_or_else(|e| {
            panic!(
                "update {i}: the SVID held before no longer verifies against the new bundle: {e}"
            )
        });
    }
}

/// A swtpm simulator owned by `scripts/swtpm.sh`: provisioned with EK certificates
/// from its own local CA (the stand-in for a TPM manufacturer), stopped on drop.
#[derive(Debug)]
pub struct Swtpm {
    pub dir: PathBuf,
    /// Tessera's TCTI setting for it.
    pub tcti: String,
    /// The local CA's root and intermediate (PEM files).
    pub ek_ca_root: PathBuf,
    pub ek_ca_intermediate: PathBuf,
}

impl Swtpm {
    /// Provisions (on first use of `dir`) and starts a simulator.
    pub fn start(dir: &Path) -> Self {
        let script = repo_root().join("scripts").join("swtpm.sh");
        run_ok(Command::new("bash").arg(&script).arg("start").arg(dir));
        let env = std::fs::read_to_string(dir.join("env")).expect("swtpm env file");
        let var = |name: &str| -> String {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .map(|v| v.trim_matches(|c| c == '\'' || c == '"').to_owned())
                .unwrap_or_else(|| panic!("swtpm.sh wrote no {name}:\n{env}"))
        };
        Self {
            dir: dir.to_owned(),
            tcti: var("TPM_TCTI"),
            ek_ca_root: PathBuf::from(var("TPM_EK_CA_ROOT")),
            ek_ca_intermediate: PathBuf::from(var("TPM_EK_CA_INTERMEDIATE")),
        }
    }

    /// `tessera-agent tpm provision-devid` with `ca`, into `out`.
    pub fn provision_devid(&self, ca: &TestCa, out: &Path, cn: &str) {
        run_ok(
            Command::new(bin("tessera-agent"))
                .args([
                    "tpm",
                    "provision-devid",
                    "--tcti",
                    &self.tcti,
                    "--common-name",
                    cn,
                ])
                .arg("--vendor-ca-cert")
                .arg(&ca.cert)
                .arg("--vendor-ca-key")
                .arg(&ca.key)
                .arg("--out")
                .arg(out),
        );
    }

    /// `tessera-agent tpm info --output json`.
    pub fn info(&self, devid: Option<&Path>) -> serde_json::Value {
        let mut cmd = Command::new(bin("tessera-agent"));
        cmd.args(["tpm", "info", "--output", "json", "--tcti", &self.tcti]);
        if let Some(d) = devid {
            cmd.arg("--devid-dir").arg(d);
        }
        serde_json::from_str(&run_ok(&mut cmd)).expect("tpm info JSON")
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo_root().join("scripts").join("swtpm.sh"))
            .arg("stop")
            .arg(&self.dir)
            .output();
    }
}

/// A throw-away CA made with OpenSSL (a DevID vendor CA in the TPM tests).
#[derive(Debug, Clone)]
pub struct TestCa {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    pub fn new(dir: &Path, name: &str) -> Self {
        std::fs::create_dir_all(dir).expect("CA dir");
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        run_ok(
            Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:P-256",
                    "-nodes",
                    "-days",
                    "2",
                ])
                .args(["-subj", &format!("/CN={name}")])
                .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert),
        );
        Self { cert, key }
    }
}
