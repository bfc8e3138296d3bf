//! Connections to PostgreSQL: connection strings (checked, and described for
//! messages without the password) and the pool that hands out connections.

use std::str::FromStr;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::sync::OwnedSemaphorePermit;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::{Client, Config, NoTls};

use super::error::{connect_error, describe};
use super::{Inner, POOL_SIZE, PostgresDatastore};
use crate::datastore::{DatastoreError, Failure, Result};

/// How long a new connection may take when the connection string sets no
/// `connect_timeout`.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request waits for a free connection before giving up with
/// `Unavailable`.
const POOL_WAIT: Duration = Duration::from_secs(30);

/// A connection checked out of the pool; it goes back when dropped, unless closed.
pub(super) struct PooledClient {
    client: Option<Client>,
    inner: Arc<Inner>,
    _permit: OwnedSemaphorePermit,
}

impl PooledClient {
    pub(super) fn get(&mut self) -> Result<&mut Client> {
        self.client.as_mut().ok_or_else(|| {
            DatastoreError::Backend(Failure::new("postgres connection already released"))
        })
    }
}

impl Drop for PooledClient {
    fn drop(&mut self) {
        if let Some(client) = self.client.take()
            && !client.is_closed()
        {
            self.inner
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(client);
        }
    }
}

impl PostgresDatastore {
    /// A connection from the pool, opening one when none is idle.
    pub(super) async fn conn(&self) -> Result<PooledClient> {
        let permit = tokio::time::timeout(POOL_WAIT, self.inner.slots.clone().acquire_owned())
            .await
            .map_err(|_| {
                DatastoreError::Unavailable(Failure::new(format!(
                    "{}: all {POOL_SIZE} connections stayed busy for {}s",
                    self.inner.target,
                    POOL_WAIT.as_secs()
                )))
            })?
            .map_err(|_| DatastoreError::Unavailable(Failure::new("the datastore is closed")))?;
        let idle = loop {
            let next = self
                .inner
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            match next {
                Some(c) if c.is_closed() => continue,
                other => break other,
            }
        };
        let client = match idle {
            Some(c) => c,
            None => self.open_connection().await?,
        };
        Ok(PooledClient {
            client: Some(client),
            inner: self.inner.clone(),
            _permit: permit,
        })
    }

    async fn open_connection(&self) -> Result<Client> {
        let target = &self.inner.target;
        let (client, connection) = self
            .inner
            .config
            .connect(NoTls)
            .await
            .map_err(|e| connect_error(target, e))?;
        let target = target.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::warn!(target = %target, error = %describe(&e), "postgres: connection lost");
            }
        });
        Ok(client)
    }
}

// ---- connection strings ----

/// Parses and checks a connection string, and describes where it leads (for
/// messages). Errors never quote it (it may hold a password).
pub(super) fn parse_config(connection_string: &str) -> Result<(Config, String)> {
    let config = check_config(connection_string)?;
    let target = describe_target(&config);
    Ok((config, target))
}

fn check_config(connection_string: &str) -> Result<Config> {
    if let Some(mode) = requested_sslmode(connection_string) {
        let mode = mode.to_ascii_lowercase();
        if matches!(mode.as_str(), "require" | "verify-ca" | "verify-full") {
            return Err(tls_unsupported(&mode));
        }
    }
    // The parser's error names the option it refuses, never a value: it may be kept.
    let mut config = Config::from_str(connection_string.trim()).map_err(|e| {
        DatastoreError::Invalid(Failure::caused_by(
            format!("invalid PostgreSQL connection string: {}", describe(&e)),
            e,
        ))
    })?;
    match config.get_ssl_mode() {
        SslMode::Require => return Err(tls_unsupported("require")),
        // libpq's default: TLS if the server offers it. Without TLS support that is
        // a plain connection; say so explicitly.
        SslMode::Prefer => {
            config.ssl_mode(SslMode::Disable);
        }
        _ => {}
    }
    if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
        return Err(DatastoreError::Invalid(
            "the PostgreSQL connection string names no host (host=NAME, host=/socket/dir \
             or postgres://NAME/DATABASE)"
                .into(),
        ));
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("tessera-server");
    }
    Ok(config)
}

fn tls_unsupported(mode: &str) -> DatastoreError {
    DatastoreError::Invalid(
        format!(
            "the PostgreSQL connection string asks for sslmode={mode}, but TLS to PostgreSQL \
             is not supported yet; connect over a Unix socket (host=/path/to/socket/dir) or \
             a trusted network with sslmode=disable"
        )
        .into(),
    )
}

/// The `sslmode` a connection string asks for, if any (the last one wins, as in
/// libpq).
fn requested_sslmode(s: &str) -> Option<String> {
    let s = s.trim();
    if let Some(rest) = s
        .strip_prefix("postgres://")
        .or_else(|| s.strip_prefix("postgresql://"))
    {
        let (_, query) = rest.split_once('?')?;
        return query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .filter(|(k, _)| *k == "sslmode")
            .map(|(_, v)| v.to_owned())
            .next_back();
    }
    key_values(s)
        .into_iter()
        .filter(|(k, _)| k == "sslmode")
        .map(|(_, v)| v)
        .next_back()
}

/// The `key=value` pairs of a libpq connection string (values may be single-quoted,
/// with backslash escapes). Stops at the first thing that is not a pair; the real
/// parser reports it.
fn key_values(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        if key.is_empty() {
            break;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next_if_eq(&'=').is_none() {
            break;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.extend(chars.next());
                } else {
                    value.push(c);
                }
            }
        }
        out.push((key, value));
    }
    out
}

/// "postgres database D as user U at H:P": everything but the password.
fn describe_target(config: &Config) -> String {
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match h {
                Host::Tcp(name) => format!("{name}:{port}"),
                Host::Unix(dir) => format!("{} (port {port})", dir.display()),
            }
        })
        .collect();
    let hosts = if hosts.is_empty() {
        config
            .get_hostaddrs()
            .iter()
            .map(|a| format!("{a}:{}", ports.first().copied().unwrap_or(5432)))
            .collect()
    } else {
        hosts
    };
    format!(
        "postgres database {} as user {} at {}",
        config
            .get_dbname()
            .or(config.get_user())
            .unwrap_or("(default)"),
        config.get_user().unwrap_or("(none)"),
        hosts.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datastore::Datastore;
    use crate::datastore::postgres::tests::{TestDb, cluster, sample_entry};

    #[tokio::test]
    async fn unix_socket_connection() {
        let db = TestDb::new().await;
        let ds = PostgresDatastore::connect(&db.unix())
            .await
            .expect("connect over the Unix socket");
        ds.ping().await.expect("ping");
        let e = ds.create_entry(sample_entry("web")).await.expect("create");
        assert_eq!(ds.get_entry(&e.id).await.expect("get"), Some(e));
        assert!(
            ds.target().contains(&cluster().socket_dir),
            "{}",
            ds.target()
        );
        drop(ds);
        db.finish().await;
    }

    #[tokio::test]
    async fn url_connection_string() {
        let db = TestDb::new().await;
        let url = format!(
            "postgres://tessera:not-a-secret@127.0.0.1:{}/{}?sslmode=prefer",
            cluster().port,
            db.name
        );
        let ds = PostgresDatastore::connect(&url)
            .await
            .expect("connect by URL");
        ds.ping().await.expect("ping");
        assert!(!format!("{ds:?}").contains("not-a-secret"), "{ds:?}");
        drop(ds);
        db.finish().await;
    }

    #[tokio::test]
    async fn refused_connection_is_unavailable() {
        // A port nothing listens on: bound, then released.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let err = PostgresDatastore::connect(&format!(
            "host=127.0.0.1 port={port} user=tessera password=hunter2 dbname=tessera"
        ))
        .await
        .expect_err("nothing listens there");
        assert!(matches!(err, DatastoreError::Unavailable(_)), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
        assert!(msg.to_lowercase().contains("refused"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
        // The driver's error is kept; neither it nor the message holds the password.
        let cause = std::error::Error::source(&err)
            .and_then(std::error::Error::source)
            .expect("the driver's error is the cause");
        assert!(cause.is::<tokio_postgres::Error>(), "{cause:?}");
        assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
    }

    #[tokio::test]
    async fn tls_is_refused_clearly() {
        for s in [
            "host=127.0.0.1 user=tessera password=hunter2 sslmode=require",
            "host=127.0.0.1 user=tessera sslmode = 'verify-full'",
            "host=127.0.0.1 sslmode=disable sslmode=verify-ca",
            "postgres://tessera:hunter2@127.0.0.1/tessera?sslmode=require",
            "postgresql://127.0.0.1/tessera?connect_timeout=5&sslmode=verify-full",
        ] {
            let err = PostgresDatastore::connect(s).await.expect_err(s);
            assert!(matches!(err, DatastoreError::Invalid(_)), "{s}: {err:?}");
            let msg = err.to_string();
            assert!(
                msg.contains("TLS to PostgreSQL is not supported yet"),
                "{s}: {msg}"
            );
            assert!(!msg.contains("hunter2"), "{msg}");
        }
        let err = PostgresDatastore::connect("host=127.0.0.1 password=hunter2 bogus_option=1")
            .await
            .expect_err("unknown option");
        assert!(matches!(err, DatastoreError::Invalid(_)), "{err:?}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = PostgresDatastore::connect("user=tessera dbname=tessera")
            .await
            .expect_err("no host");
        assert!(err.to_string().contains("names no host"), "{err}");
    }

    #[test]
    fn connection_string_parsing() {
        assert_eq!(
            key_values("host=/tmp port = 5 password='a b\\'c' x=\\ y"),
            vec![
                ("host".into(), "/tmp".into()),
                ("port".into(), "5".into()),
                ("password".into(), "a b'c".into()),
                ("x".into(), " y".into()),
            ]
        );
        assert_eq!(requested_sslmode("host=a"), None);
        assert_eq!(
            requested_sslmode("postgres://h/db?sslmode=disable").as_deref(),
            Some("disable")
        );
        let (config, target) =
            parse_config("host=db.internal port=6543 user=u password=p dbname=d").expect("parse");
        assert_eq!(config.get_ssl_mode(), SslMode::Disable);
        assert_eq!(config.get_connect_timeout(), Some(&DEFAULT_CONNECT_TIMEOUT));
        assert_eq!(target, "postgres database d as user u at db.internal:6543");
    }
}
