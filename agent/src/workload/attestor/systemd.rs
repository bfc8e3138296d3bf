//! The `systemd` workload attestor: the systemd unit the caller runs in, as systemd's
//! manager knows it, asked over the system D-Bus (a pure-Rust client). Two services of
//! the same user get different selectors, which `unix:uid` cannot give them.
//!
//! Selectors: `systemd:id:<unit>` (`web.service`) and, for units with a unit file,
//! `systemd:fragment_path:<path>` (`/etc/systemd/system/web.service`). A caller that
//! systemd places in no unit contributes no selectors.
//!
//! The manager is asked by PID (`GetUnitByPID`); the caller's process was pinned when
//! it connected and is checked again after the attestors are done, so a PID reused in
//! between is refused there.

use std::time::Duration;

use async_trait::async_trait;
use tessera_core::Selector;
use tokio::sync::Mutex;

use super::{Peer, WorkloadAttestError, WorkloadAttestor};
use crate::config::SystemdAttestorConfig;

/// The attestor's name and its selectors' type.
pub const NAME: &str = "systemd";

const MANAGER: &str = "org.freedesktop.systemd1";
const MANAGER_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER_INTERFACE: &str = "org.freedesktop.systemd1.Manager";
const UNIT_INTERFACE: &str = "org.freedesktop.systemd1.Unit";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
/// What the manager answers for a process in no unit.
const NO_UNIT: &str = "org.freedesktop.systemd1.NoUnitForPID";

/// How long connecting to the bus may take before the attempt counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the caller's unit could not be learnt.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("cannot connect to the D-Bus {bus}: {source}")]
    Connect {
        bus: String,
        #[source]
        source: zbus::Error,
    },
    #[error("connecting to the D-Bus {0} took longer than {CONNECT_TIMEOUT:?}")]
    ConnectTimeout(String),
    #[error("systemd did not answer {what} for process {pid}: {source}")]
    Call {
        what: &'static str,
        pid: i32,
        #[source]
        source: zbus::Error,
    },
    #[error("systemd's unit {unit} has an unusable {property}: {reason}")]
    Property {
        unit: String,
        property: &'static str,
        reason: String,
    },
}

/// The `systemd` attestor (see the module documentation).
#[derive(Debug)]
pub struct Systemd {
    cfg: SystemdAttestorConfig,
    /// The bus connection, made at the first caller and made again after a failure.
    conn: Mutex<Option<zbus::Connection>>,
}

impl Systemd {
    /// The attestor as `[workload_attestors.systemd]` configures it.
    pub fn new(cfg: SystemdAttestorConfig) -> Self {
        Self {
            cfg,
            conn: Mutex::new(None),
        }
    }

    fn bus_name(&self) -> String {
        self.cfg
            .bus_address
            .clone()
            .unwrap_or_else(|| "system bus".into())
    }

    async fn connection(&self) -> Result<zbus::Connection, SystemdError> {
        let mut held = self.conn.lock().await;
        if let Some(c) = held.as_ref() {
            return Ok(c.clone());
        }
        let builder = match &self.cfg.bus_address {
            Some(a) => zbus::connection::Builder::address(a.as_str()),
            None => zbus::connection::Builder::system(),
        };
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, builder.build())
            .await
            .map_err(|_| SystemdError::ConnectTimeout(self.bus_name()))?
            .map_err(|source| SystemdError::Connect {
                bus: self.bus_name(),
                source,
            })?;
        *held = Some(conn.clone());
        Ok(conn)
    }

    async fn attest_pid(&self, pid: i32) -> Result<Vec<Selector>, SystemdError> {
        let conn = self.connection().await?;
        let result = unit_selectors(&conn, pid).await;
        if let Err(SystemdError::Call { source, .. }) = &result
            && !matches!(source, zbus::Error::MethodError(..))
        {
            // The connection itself broke (the bus restarted): make a new one next time.
            *self.conn.lock().await = None;
        }
        result
    }
}

/// The selectors of the unit `pid` runs in, asked of systemd over `conn`.
async fn unit_selectors(conn: &zbus::Connection, pid: i32) -> Result<Vec<Selector>, SystemdError> {
    let call = |what| move |source| SystemdError::Call { what, pid, source };
    let reply = match conn
        .call_method(
            Some(MANAGER),
            MANAGER_PATH,
            Some(MANAGER_INTERFACE),
            "GetUnitByPID",
            &(pid as u32),
        )
        .await
    {
        Ok(r) => r,
        Err(zbus::Error::MethodError(name, _, _)) if name.as_str() == NO_UNIT => {
            return Ok(Vec::new());
        }
        Err(e) => return Err(call("GetUnitByPID")(e)),
    };
    let path: zbus::OwnedObjectPath = reply.body().deserialize().map_err(call("GetUnitByPID"))?;
    let property = |name: &'static str| {
        let path = path.clone();
        async move {
            let reply = conn
                .call_method(
                    Some(MANAGER),
                    path.as_str(),
                    Some(PROPERTIES),
                    "Get",
                    &(UNIT_INTERFACE, name),
                )
                .await
                .map_err(call("a unit property"))?;
            let body = reply.body();
            let value: zbus::Variant<'_> = body.deserialize().map_err(call("a unit property"))?;
            String::try_from(&value).map_err(|e| SystemdError::Property {
                unit: path.to_string(),
                property: name,
                reason: e.to_string(),
            })
        }
    };
    let id = property("Id").await?;
    let fragment = property("FragmentPath").await?;
    let selector = |property: &'static str, value: String| {
        Selector::new(NAME, &value).map_err(|e| SystemdError::Property {
            unit: id.clone(),
            property,
            reason: e.to_string(),
        })
    };
    let mut out = vec![selector("Id", format!("id:{id}"))?];
    if !fragment.is_empty() {
        out.push(selector(
            "FragmentPath",
            format!("fragment_path:{fragment}"),
        )?);
    }
    Ok(out)
}

#[async_trait]
impl WorkloadAttestor for Systemd {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn attest(&self, peer: &Peer<'_>) -> Result<Vec<Selector>, WorkloadAttestError> {
        self.attest_pid(peer.cred().pid)
            .await
            .map_err(WorkloadAttestError::new)
    }
}

#[cfg(test)]
mod tests;
