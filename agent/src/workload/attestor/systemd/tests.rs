//! The attestor against a real D-Bus daemon (Debian's `dbus-daemon`, started here on a
//! private address) on which this test serves systemd's manager interface: the names,
//! paths, method, properties and error systemd uses, with units the test chooses.
//! systemd itself is not running on the hosts the suite runs on; the booted Debian
//! guest of `images/systemd-guest.sh` checks the attestor against the real one.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use super::*;
use crate::workload::attestor::WorkloadAttestors;

/// A dbus-daemon on a socket in a temporary directory, killed when dropped.
struct Bus {
    child: Child,
    address: String,
    _dir: tempfile::TempDir,
}

impl Bus {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir)
    }

    fn start_in(dir: tempfile::TempDir) -> Self {
        let socket = dir.path().join("bus");
        let address = format!("unix:path={}", socket.display());
        let child = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--nopidfile"])
            .arg(format!("--address={address}"))
            .stdout(Stdio::null())
            // It would say that it cannot start systemd when the test has no stand-in.
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon (Debian's dbus-daemon package) must be installed");
        for _ in 0..200 {
            if socket.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(socket.exists(), "dbus-daemon did not create {socket:?}");
        Self {
            child,
            address,
            _dir: dir,
        }
    }

    fn stop(mut self) -> tempfile::TempDir {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().unwrap());
        let _ = std::fs::remove_file(dir.path().join("bus"));
        dir
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.freedesktop.systemd1")]
enum ManagerError {
    #[zbus(error)]
    ZBus(zbus::Error),
    #[allow(clippy::upper_case_acronyms, reason = "systemd's own error name")]
    NoUnitForPID(String),
}

/// systemd's manager object, knowing the units of the PIDs it is given.
struct Manager {
    units: HashMap<u32, String>,
}

#[zbus::interface(name = "org.freedesktop.systemd1.Manager")]
impl Manager {
    #[zbus(name = "GetUnitByPID")]
    fn get_unit_by_pid(&self, pid: u32) -> Result<zbus::OwnedObjectPath, ManagerError> {
        match self.units.get(&pid) {
            Some(id) => Ok(zbus::OwnedObjectPath::try_from(unit_path(id)).unwrap()),
            None => Err(ManagerError::NoUnitForPID(format!(
                "PID {pid} does not belong to any loaded unit."
            ))),
        }
    }
}

/// One unit object.
struct Unit {
    id: String,
    fragment_path: String,
}

#[zbus::interface(name = "org.freedesktop.systemd1.Unit")]
impl Unit {
    #[zbus(property)]
    fn id(&self) -> String {
        self.id.clone()
    }
    #[zbus(property)]
    fn fragment_path(&self) -> String {
        self.fragment_path.clone()
    }
}

/// systemd's object path for a unit: its name with every byte that is not an ASCII
/// letter or digit written `_xx`.
fn unit_path(id: &str) -> String {
    let mut out = String::from("/org/freedesktop/systemd1/unit/");
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02x}"));
        }
    }
    out
}

/// Serves the manager on `bus` with `units` (PID, unit ID, fragment path).
async fn serve_systemd(bus: &Bus, units: &[(u32, &str, &str)]) -> zbus::Connection {
    let mut b = zbus::connection::Builder::address(bus.address.as_str())
        .name(MANAGER)
        .serve_at(
            MANAGER_PATH,
            Manager {
                units: units
                    .iter()
                    .map(|(pid, id, _)| (*pid, id.to_string()))
                    .collect(),
            },
        );
    for (_, id, fragment) in units {
        b = b.serve_at(
            unit_path(id),
            Unit {
                id: id.to_string(),
                fragment_path: fragment.to_string(),
            },
        );
    }
    b.build().await.unwrap()
}

fn attestor(bus: &Bus) -> Systemd {
    Systemd::new(SystemdAttestorConfig {
        bus_address: Some(bus.address.clone()),
    })
}

fn strings(sels: &[Selector]) -> Vec<String> {
    sels.iter().map(ToString::to_string).collect()
}

#[tokio::test]
async fn a_service_gets_its_unit_and_unit_file_and_a_scope_its_unit_only() {
    let bus = Bus::start();
    let _systemd = serve_systemd(
        &bus,
        &[
            (4100, "web.service", "/etc/systemd/system/web.service"),
            (4200, "session-3.scope", ""),
            (
                4300,
                "getty@tty1.service",
                "/usr/lib/systemd/system/getty@.service",
            ),
        ],
    )
    .await;
    let a = attestor(&bus);
    assert_eq!(
        strings(&a.attest_pid(4100).await.unwrap()),
        [
            "systemd:id:web.service",
            "systemd:fragment_path:/etc/systemd/system/web.service"
        ]
    );
    assert_eq!(
        strings(&a.attest_pid(4200).await.unwrap()),
        ["systemd:id:session-3.scope"]
    );
    assert_eq!(
        strings(&a.attest_pid(4300).await.unwrap()),
        [
            "systemd:id:getty@tty1.service",
            "systemd:fragment_path:/usr/lib/systemd/system/getty@.service"
        ]
    );
    // A process in no unit: nothing to say, and not a failure.
    assert!(a.attest_pid(4999).await.unwrap().is_empty());
}

#[tokio::test]
async fn no_bus_and_no_systemd_on_the_bus_are_errors_that_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("unix:path={}", dir.path().join("nothing").display());
    let a = Systemd::new(SystemdAttestorConfig {
        bus_address: Some(missing.clone()),
    });
    let e = a.attest_pid(1).await.unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("cannot connect to the D-Bus {missing}")),
        "{e}"
    );

    let bus = Bus::start();
    let e = attestor(&bus).attest_pid(1).await.unwrap_err().to_string();
    assert!(
        e.contains("systemd did not answer GetUnitByPID for process 1")
            && e.contains("org.freedesktop.systemd1"),
        "{e}"
    );
}

#[tokio::test]
async fn a_restarted_bus_is_reconnected_to() {
    let bus = Bus::start();
    let pid = std::process::id();
    let systemd = serve_systemd(&bus, &[(pid, "a.service", "/etc/a.service")]).await;
    let a = attestor(&bus);
    assert_eq!(a.attest_pid(pid as i32).await.unwrap().len(), 2);
    drop(systemd);
    let dir = bus.stop();
    // The held connection is dead: the call fails and the next one connects anew.
    assert!(a.attest_pid(pid as i32).await.is_err());
    let bus = Bus::start_in(dir);
    let _systemd = serve_systemd(&bus, &[(pid, "b.service", "/etc/b.service")]).await;
    assert_eq!(
        strings(&a.attest_pid(pid as i32).await.unwrap()),
        [
            "systemd:id:b.service",
            "systemd:fragment_path:/etc/b.service"
        ]
    );
}

#[tokio::test]
async fn through_the_seam_a_caller_is_asked_about_by_its_pid() {
    let bus = Bus::start();
    let pid = std::process::id();
    let _systemd = serve_systemd(&bus, &[(pid, "tests.service", "")]).await;
    let (pinned, _sock) = crate::workload::peer::tests::pin_self();
    let dir = pinned.check().unwrap();
    let peer = Peer::new(&pinned, std::os::fd::AsFd::as_fd(&dir));
    let attestors = WorkloadAttestors::new(vec![
        Arc::new(crate::workload::attestor::unix::Unix::default()),
        Arc::new(attestor(&bus)),
    ]);
    let sels = strings(&attestors.attest(&peer).await.unwrap());
    assert!(
        sels.contains(&"systemd:id:tests.service".to_string()),
        "{sels:?}"
    );
    let uid = nix::unistd::getuid();
    assert!(sels.contains(&format!("unix:uid:{uid}")), "{sels:?}");
}
