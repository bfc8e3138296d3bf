//! Where the TPM is: the TCTI setting from configuration, parsed here so that both
//! backends (and the server, which has none) read the same strings:
//!
//! - `device:/dev/tpmrm0` (the kernel resource manager; `device` alone means that)
//! - `swtpm:host=127.0.0.1,port=2321` (swtpm's TCP socket; the control channel is port+1)
//! - `mssim:host=127.0.0.1,port=2321` (the Microsoft/IBM simulator protocol)
//! - `tabrmd` or `tabrmd:bus_name=com.intel.tss2.Tabrmd,bus_type=system`
//!
//! These are the forms tpm2-tools accepts, so one value serves both.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// The default device: the kernel's resource manager, which lets several processes
/// share the TPM and flushes what a crashed process left loaded.
pub const DEFAULT_DEVICE: &str = "/dev/tpmrm0";
/// The default simulator port (swtpm and mssim).
pub const DEFAULT_PORT: u16 = 2321;

/// A parsed TCTI setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tcti {
    /// A character device.
    Device {
        /// The device node, e.g. `/dev/tpmrm0`.
        path: PathBuf,
    },
    /// swtpm over TCP.
    Swtpm {
        /// The simulator's host.
        host: String,
        /// Its command port.
        port: u16,
    },
    /// The Microsoft/IBM simulator protocol over TCP.
    Mssim {
        /// The simulator's host.
        host: String,
        /// Its command port.
        port: u16,
    },
    /// The tpm2-abrmd resource manager over D-Bus.
    Tabrmd {
        /// The D-Bus name of the resource manager, when not the default.
        bus_name: Option<String>,
        /// `system` or `session`, when not the default.
        bus_type: Option<String>,
    },
}

/// Why a TCTI setting was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad TPM TCTI setting {input:?}: {reason} (expected device:/dev/tpmrm0, swtpm:host=H,port=P, mssim:host=H,port=P or tabrmd)"
)]
pub struct TctiError {
    /// The setting as given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl Tcti {
    /// The default: the kernel resource manager.
    pub fn default_device() -> Self {
        Tcti::Device {
            path: PathBuf::from(DEFAULT_DEVICE),
        }
    }
}

fn network(input: &str, conf: &str) -> Result<(String, u16), TctiError> {
    let err = |reason| TctiError {
        input: input.to_owned(),
        reason,
    };
    let mut host = "localhost".to_owned();
    let mut port = DEFAULT_PORT;
    for item in conf.split(',').filter(|s| !s.is_empty()) {
        let (k, v) = item
            .split_once('=')
            .ok_or_else(|| err("expected key=value"))?;
        match k {
            "host" => {
                if v.is_empty()
                    || !v
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'))
                {
                    return Err(err("host must be a name or an IP address"));
                }
                host = v.to_owned();
            }
            "port" => {
                port = v
                    .parse()
                    .map_err(|_| err("port must be a number 1-65535"))?
            }
            _ => return Err(err("unknown option (only host and port are allowed)")),
        }
    }
    if port == 0 {
        return Err(err("port must be a number 1-65535"));
    }
    Ok((host, port))
}

impl FromStr for Tcti {
    type Err = TctiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, conf) = s.split_once(':').unwrap_or((s, ""));
        let err = |reason| TctiError {
            input: s.to_owned(),
            reason,
        };
        match name {
            "device" => Ok(Tcti::Device {
                path: PathBuf::from(if conf.is_empty() {
                    DEFAULT_DEVICE
                } else {
                    conf
                }),
            }),
            "swtpm" => network(s, conf).map(|(host, port)| Tcti::Swtpm { host, port }),
            "mssim" => network(s, conf).map(|(host, port)| Tcti::Mssim { host, port }),
            "tabrmd" => {
                let mut bus_name = None;
                let mut bus_type = None;
                for item in conf.split(',').filter(|s| !s.is_empty()) {
                    match item.split_once('=') {
                        Some(("bus_name", v)) if !v.is_empty() => bus_name = Some(v.to_owned()),
                        Some(("bus_type", v @ ("system" | "session"))) => {
                            bus_type = Some(v.to_owned())
                        }
                        _ => {
                            return Err(err(
                                "tabrmd takes bus_name=NAME and bus_type=system|session",
                            ));
                        }
                    }
                }
                Ok(Tcti::Tabrmd { bus_name, bus_type })
            }
            _ => Err(err("unknown TCTI")),
        }
    }
}

impl fmt::Display for Tcti {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tcti::Device { path } => write!(f, "device:{}", path.display()),
            Tcti::Swtpm { host, port } => write!(f, "swtpm:host={host},port={port}"),
            Tcti::Mssim { host, port } => write!(f, "mssim:host={host},port={port}"),
            Tcti::Tabrmd { bus_name, bus_type } => {
                f.write_str("tabrmd")?;
                let mut parts = Vec::new();
                if let Some(n) = bus_name {
                    parts.push(format!("bus_name={n}"));
                }
                if let Some(t) = bus_type {
                    parts.push(format!("bus_type={t}"));
                }
                if !parts.is_empty() {
                    write!(f, ":{}", parts.join(","))?;
                }
                Ok(())
            }
        }
    }
}

impl serde::Serialize for Tcti {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Tcti {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        assert_eq!("device".parse::<Tcti>().unwrap(), Tcti::default_device());
        assert_eq!(
            "device:/dev/tpm0".parse::<Tcti>().unwrap(),
            Tcti::Device {
                path: "/dev/tpm0".into()
            }
        );
        assert_eq!(
            "swtpm:host=127.0.0.1,port=2400".parse::<Tcti>().unwrap(),
            Tcti::Swtpm {
                host: "127.0.0.1".into(),
                port: 2400
            }
        );
        assert_eq!(
            "swtpm:port=2400".parse::<Tcti>().unwrap().to_string(),
            "swtpm:host=localhost,port=2400"
        );
        assert_eq!(
            "mssim".parse::<Tcti>().unwrap(),
            Tcti::Mssim {
                host: "localhost".into(),
                port: 2321
            }
        );
        assert_eq!(
            "tabrmd:bus_type=session"
                .parse::<Tcti>()
                .unwrap()
                .to_string(),
            "tabrmd:bus_type=session"
        );
        for s in [
            "device:/dev/tpmrm0",
            "swtpm:host=::1,port=1",
            "tabrmd",
            "tabrmd:bus_name=a.b,bus_type=system",
        ] {
            assert_eq!(s.parse::<Tcti>().unwrap().to_string(), s);
        }
    }

    #[test]
    fn refuses_nonsense() {
        for s in [
            "",
            "tpm",
            "swtpm:port=0",
            "swtpm:port=99999",
            "swtpm:host=a b",
            "swtpm:foo=1",
            "swtpm:host",
            "tabrmd:bus_type=x",
        ] {
            let err = s.parse::<Tcti>().unwrap_err();
            assert!(err.to_string().contains("bad TPM TCTI setting"), "{s}");
        }
    }
}
