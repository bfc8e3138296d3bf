//! A Workload API caller that plays identity games, for the attack tests (started as
//! an unprivileged user with `setpriv`):
//!
//! - `attack-caller handoff AGENT_SOCKET TEST_SOCKET [N]`: connects to the agent (N
//!   times, default once), hands the connected sockets to the test over TEST_SOCKET
//!   (SCM_RIGHTS), then obeys lines on stdin: `exit`, or `exec PROGRAM [ARGS...]`
//!   (the program keeps stdin).
//! - `attack-caller race AGENT_SOCKET TEST_SOCKET PROGRAM [ARGS...]`: connects, sends
//!   the headers of a FetchX509SVID request, starts a child that inherits the socket
//!   (as its stdin), and executes PROGRAM (a setuid-root one that waits on stdin, in
//!   the attack) while the child finishes the request on the inherited socket and
//!   hands the socket to the test, which reads the answer. PROGRAM `-` executes
//!   nothing: the connecting process just waits (the control case).
//! - `attack-caller finish PARENT_PID PROGRAM TEST_SOCKET`: the child of `race`.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use tessera_swtpm_tests::attack;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let result = match args.get(1).map(String::as_str) {
        Some("handoff") if args.len() == 4 => handoff(&args[2], &args[3], "1"),
        Some("handoff") if args.len() == 5 => handoff(&args[2], &args[3], &args[4]),
        Some("race") if args.len() >= 5 => race(&args[2], &args[3], &args[4..]),
        Some("finish") if args.len() == 5 => finish(&args[2], &args[3], &args[4]),
        _ => Err("usage: attack-caller handoff AGENT_SOCKET TEST_SOCKET | race AGENT_SOCKET TEST_SOCKET PROGRAM [ARGS...]".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("attack-caller: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, String>;

fn connect(path: &str) -> Result<UnixStream> {
    UnixStream::connect(path).map_err(|e| format!("cannot connect to {path}: {e}"))
}

fn handoff(agent: &str, test: &str, count: &str) -> Result<()> {
    let count: usize = count.parse().map_err(|_| format!("bad count {count:?}"))?;
    let to = connect(test)?;
    for _ in 0..count {
        let sock = connect(agent)?;
        attack::send_fd(&to, sock.as_fd())?;
    }
    // One command, then done: `exit` or `exec`; end of input is `exit`.
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [] | ["exit"] => Ok(()),
        ["exec", program, args @ ..] => {
            let e = Command::new(program).args(args).exec();
            Err(format!("cannot execute {program}: {e}"))
        }
        _ => Err(format!("unknown command {line:?}")),
    }
}

fn race(agent: &str, test: &str, program: &[String]) -> Result<()> {
    let mut sock = connect(agent)?;
    sock.write_all(&attack::grpc_request_head(attack::FETCH_X509_SVID))
        .map_err(|e| format!("cannot send the request headers: {e}"))?;
    // The agent pins the caller when it accepts the connection and only then starts
    // HTTP/2, whose first frame is its SETTINGS: once that has arrived, whatever
    // this process does next happens after the pinning. (A program executed between
    // connect() and accept() is taken as the caller's, as docs/SECURITY.md says; the
    // race this command plays is the one after accept.)
    read_frame(&mut sock)?;
    // The child inherits the connected socket, as a forked child would.
    let inherited = sock.try_clone().map_err(|e| e.to_string())?;
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    Command::new(me)
        .arg("finish")
        .arg(std::process::id().to_string())
        .arg(&program[0])
        .arg(test)
        .stdin(Stdio::from(std::os::fd::OwnedFd::from(inherited)))
        .spawn()
        .map_err(|e| format!("cannot start the child: {e}"))?;
    if program[0] == "-" {
        // The control case: the connecting process stays as it was.
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
        return Ok(());
    }
    let e = Command::new(&program[0]).args(&program[1..]).exec();
    Err(format!("cannot execute {}: {e}", program[0]))
}

/// Reads one HTTP/2 frame (9-byte header, then its payload) and drops it.
fn read_frame(sock: &mut UnixStream) -> Result<()> {
    sock.set_read_timeout(Some(Duration::from_secs(15)))
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 9];
    sock.read_exact(&mut head)
        .map_err(|e| format!("no HTTP/2 frame from the agent: {e}"))?;
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let mut payload = vec![0u8; len];
    sock.read_exact(&mut payload)
        .map_err(|e| format!("the agent's first frame was cut short: {e}"))?;
    sock.set_read_timeout(None).map_err(|e| e.to_string())
}

/// The command name the kernel shows for a process.
fn comm(pid: &str) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    Some(stat[open + 1..close].to_owned())
}

fn finish(parent: &str, program: &str, test: &str) -> Result<()> {
    if program != "-" {
        // Wait until the connecting process runs PROGRAM.
        let name: String = std::path::Path::new(program)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
            .chars()
            .take(15)
            .collect();
        let end = Instant::now() + Duration::from_secs(10);
        while comm(parent).as_deref() != Some(name.as_str()) {
            if Instant::now() > end {
                return Err(format!("process {parent} did not execute {program}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let fd = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| e.to_string())?;
    let mut sock = UnixStream::from(fd);
    sock.write_all(&attack::grpc_request_end())
        .map_err(|e| format!("cannot finish the request: {e}"))?;
    attack::send_fd(&connect(test)?, sock.as_fd())
}
