//! The real SPIFFE libraries as workloads: the go-spiffe program
//! (`swtpm-tests/go-spiffe`, built by `scripts/go-spiffe-env.sh`) and the
//! java-spiffe program (`swtpm-tests/java-spiffe`, built by
//! `scripts/java-spiffe-env.sh`), run as processes against any Workload API socket
//! (Tessera's agent or SPIRE's). Both take the same commands and print the same
//! `key=value` lines, so a test drives either through [`Lib`].

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::{env_script_output, wait_until};

/// Which library's program to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lib {
    /// go-spiffe v2 (`workloadapi`, `jwtsvid`, `spiffetls`).
    Go,
    /// java-spiffe (`DefaultX509Source`, `JwtSvid`, `SpiffeSslContextFactory`).
    Java,
}

/// The go-spiffe program (built once per test process).
pub fn go_spiffe_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| PathBuf::from(env_script_output("go-spiffe-env.sh")))
        .clone()
}

/// The java-spiffe program's class path (compiled once per test process).
pub fn java_spiffe_classpath() -> String {
    static CP: OnceLock<String> = OnceLock::new();
    CP.get_or_init(|| env_script_output("java-spiffe-env.sh"))
        .clone()
}

impl Lib {
    pub fn name(self) -> &'static str {
        match self {
            Lib::Go => "go-spiffe",
            Lib::Java => "java-spiffe",
        }
    }

    /// The program's command line for `endpoint` (`unix:///...`, given to the
    /// library in SPIFFE_ENDPOINT_SOCKET), acting as `as_id` when given.
    pub fn command(self, endpoint: &str, as_id: Option<&str>, args: &[&str]) -> Command {
        let mut cmd = match self {
            Lib::Go => Command::new(go_spiffe_bin()),
            Lib::Java => {
                let mut c = Command::new("java");
                // Quicker start for these short runs: the C1 compiler only and
                // the serial collector.
                c.args(["-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-cp"])
                    .arg(java_spiffe_classpath())
                    .arg("tessera.test.SpiffeWorkload");
                c
            }
        };
        if let Some(id) = as_id {
            cmd.args(["--as", id]);
        }
        cmd.args(args).env("SPIFFE_ENDPOINT_SOCKET", endpoint);
        cmd
    }

    /// Runs one command to its end.
    pub fn run(self, endpoint: &str, as_id: Option<&str>, args: &[&str]) -> Output {
        self.command(endpoint, as_id, args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run the {} workload: {e}", self.name()))
    }

    /// Like [`Self::run`], panicking with everything it said unless it succeeded.
    pub fn run_ok(self, endpoint: &str, as_id: Option<&str>, args: &[&str]) -> Facts {
        let o = self.run(endpoint, as_id, args);
        assert!(
            o.status.success(),
            "{} {args:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
            self.name(),
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        Facts::from(&o)
    }

    /// Starts `serve PEER_ID`: an mTLS listener built with the library's own TLS
    /// helpers that accepts only `peer_id`; returns once it listens.
    pub fn serve(self, endpoint: &str, as_id: Option<&str>, peer_id: &str) -> Serving {
        let mut child = self
            .command(endpoint, as_id, &["serve", peer_id])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the {} server: {e}", self.name()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Ok(mut l) = lines.lock() {
                        l.push(line);
                    }
                }
            });
        }
        let stdin = child.stdin.take();
        let mut serving = Serving {
            lib: self,
            child,
            stdin,
            lines,
            addr: String::new(),
            self_id: String::new(),
        };
        let ok = wait_until(Duration::from_secs(60), || {
            serving.line_value("listening").is_some() && serving.line_value("self").is_some()
                || serving.child.try_wait().ok().flatten().is_some()
        });
        let (Some(addr), Some(self_id)) =
            (serving.line_value("listening"), serving.line_value("self"))
        else {
            panic!(
                "the {} server did not start listening (ok={ok}):\n{}",
                self.name(),
                serving.output()
            );
        };
        serving.addr = addr;
        serving.self_id = self_id;
        serving
    }
}

/// What a command printed: `key=value` lines, and record lines (`WORD k=v k=v`).
#[derive(Debug, Clone)]
pub struct Facts {
    pub stdout: String,
    pub stderr: String,
}

impl From<&Output> for Facts {
    fn from(o: &Output) -> Self {
        Self {
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Facts {
    /// The value of the first `key=value` line.
    pub fn get(&self, key: &str) -> Option<&str> {
        value_of(self.stdout.lines(), key)
    }

    /// Like [`Self::get`], panicking with the output when the key is missing.
    pub fn value(&self, key: &str) -> &str {
        self.get(key)
            .unwrap_or_else(|| panic!("no {key}= in:\n{}\nstderr:\n{}", self.stdout, self.stderr))
    }

    /// Every record line starting with `word`, as its key/value pairs.
    pub fn records(&self, word: &str) -> Vec<Vec<(String, String)>> {
        self.stdout
            .lines()
            .filter_map(|l| l.strip_prefix(word)?.strip_prefix(' '))
            .map(|rest| {
                rest.split(' ')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect()
            })
            .collect()
    }
}

/// The value of a field of a record from [`Facts::records`].
pub fn field<'a>(record: &'a [(String, String)], key: &str) -> &'a str {
    record
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {key} in {record:?}"))
}

fn value_of<'a>(mut lines: impl Iterator<Item = &'a str>, key: &str) -> Option<&'a str> {
    lines.find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// A running `serve` command; ended (standard input closed, then killed if need
/// be) on drop.
#[derive(Debug)]
pub struct Serving {
    pub lib: Lib,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Arc<Mutex<Vec<String>>>,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The SPIFFE ID it serves as.
    pub self_id: String,
}

impl Serving {
    fn line_value(&self, key: &str) -> Option<String> {
        let lines = self.lines.lock().ok()?;
        value_of(lines.iter().map(String::as_str), key).map(str::to_owned)
    }

    /// Everything it printed so far (standard output and error, interleaved).
    pub fn output(&self) -> String {
        self.lines.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// The values of the `key=` lines printed so far.
    pub fn values(&self, key: &str) -> Vec<String> {
        let prefix = format!("{key}=");
        self.lines
            .lock()
            .map(|l| {
                l.iter()
                    .filter_map(|s| s.strip_prefix(&prefix).map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until `n` `key=` lines have been printed; returns them.
    pub fn wait_values(&self, key: &str, n: usize) -> Vec<String> {
        wait_until(Duration::from_secs(30), || self.values(key).len() >= n);
        let v = self.values(key);
        assert!(
            v.len() >= n,
            "the {} server printed {} {key}= lines, not {n}:\n{}",
            self.lib.name(),
            v.len(),
            self.output()
        );
        v
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        // Closing standard input is the program's signal to exit.
        drop(self.stdin.take());
        let exited = wait_until(Duration::from_secs(5), || {
            self.child.try_wait().ok().flatten().is_some()
        });
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
