//! A network namespace for one test, joined to the host by a veth pair: the agent
//! runs inside it (`ip netns exec`), where 169.254.169.254 is a local address and
//! the namespace's own hosts file (`/etc/netns/<name>/hosts`, which `ip netns exec`
//! mounts over `/etc/hosts`) names `metadata.google.internal`; the server listens on
//! the host end of the pair. Everything is removed on drop.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The address the clouds' metadata services answer on.
pub const METADATA_IP: &str = "169.254.169.254";

/// One namespace and its link to the host.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
    /// The host end of the veth pair.
    pub host_if: String,
    /// The host's address on the link (where the server can listen).
    pub host_ip: String,
    /// The namespace's address on the link.
    pub ns_ip: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) {
    if let Err(e) = ip(args) {
        panic!("{e} (the cloud tests need root and iproute2)");
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Netns {
    /// Creates the namespace, the link, and 169.254.169.254 inside.
    pub fn new() -> Self {
        let pid = std::process::id();
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}{}", pid % 100_000, n);
        let name = format!("tsr-{tag}");
        let host_if = format!("tsh{tag}");
        let ns_if = format!("tsn{tag}");
        must(&["netns", "add", &name]);
        let mut me = Self {
            name,
            host_if,
            host_ip: String::new(),
            ns_ip: String::new(),
        };
        must(&[
            "link",
            "add",
            &me.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns_if,
        ]);
        must(&["link", "set", &ns_if, "netns", &me.name]);
        // A /30 in 10.213.0.0/16 that no other interface on this host holds: tests of
        // several processes (and other users of the machine) run side by side.
        let start = (pid.wrapping_mul(31).wrapping_add(n * 7)) % 16_384;
        let mut chosen = None;
        for i in 0..16_384u32 {
            let idx = (start + i) % 16_384;
            let (a, b) = (idx / 64, (idx % 64) * 4);
            let host = format!("10.213.{a}.{}", b + 1);
            if ip(&["addr", "add", &format!("{host}/30"), "dev", &me.host_if]).is_ok() {
                chosen = Some((host, format!("10.213.{a}.{}", b + 2)));
                break;
            }
        }
        let (host, ns) = chosen.expect("a free /30 in 10.213.0.0/16");
        me.host_ip = host;
        me.ns_ip = ns;
        must(&["link", "set", &me.host_if, "up"]);
        me.exec_ok(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", me.ns_ip),
            "dev",
            &ns_if,
        ]);
        me.exec_ok(&["ip", "link", "set", &ns_if, "up"]);
        me.exec_ok(&["ip", "link", "set", "lo", "up"]);
        me.exec_ok(&[
            "ip",
            "addr",
            "add",
            &format!("{METADATA_IP}/32"),
            "dev",
            "lo",
        ]);
        me
    }

    /// `ip netns exec <name>`, to put in front of a command.
    pub fn wrapper(&self) -> Vec<String> {
        vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            self.name.clone(),
        ]
    }

    /// Runs a command inside the namespace; panics when it fails.
    pub fn exec_ok(&self, args: &[&str]) {
        let mut full: Vec<&str> = vec!["netns", "exec", &self.name];
        full.extend(args);
        must(&full);
    }

    fn etc_dir(&self) -> PathBuf {
        PathBuf::from("/etc/netns").join(&self.name)
    }

    /// Writes the namespace's own `/etc/hosts`.
    pub fn set_hosts(&self, lines: &str) {
        std::fs::create_dir_all(self.etc_dir()).expect("/etc/netns/<name>");
        std::fs::write(
            self.etc_dir().join("hosts"),
            format!("127.0.0.1 localhost\n{lines}\n"),
        )
        .expect("namespace hosts file");
    }

    /// A listening socket inside the namespace (bound by a thread that joins it; the
    /// socket stays in the namespace it was made in).
    pub fn listen(&self, addr: SocketAddr) -> TcpListener {
        let path = PathBuf::from("/run/netns").join(&self.name);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).expect("namespace file");
            rustix::thread::move_into_link_name_space(
                ns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("setns");
            TcpListener::bind(addr)
        })
        .join()
        .expect("the binding thread")
        .unwrap_or_else(|e| panic!("cannot listen on {addr} in the namespace: {e}"))
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace removes its end of the pair, and with it the host end.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = std::fs::remove_dir_all(self.etc_dir());
    }
}
