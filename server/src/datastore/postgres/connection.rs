//! Connections to PostgreSQL: connection strings (checked, their TLS settings
//! taken out for rustls, and described for messages without the password) and the
//! pool (deadpool-postgres) that hands out connections.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime, TimeoutType,
};
use tokio_postgres::config::{Host, SslMode, TargetSessionAttrs};
use tokio_postgres::{Client, Config};

use super::PostgresDatastore;
use super::error::{connect_error, describe};
use super::tls::{RustlsConnect, Verify, read_root_certs};
use crate::datastore::{DatastoreError, Failure, Result};

/// How long a new connection may take when the connection string sets no
/// `connect_timeout`.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a request waits for a free connection before giving up with
/// `Unavailable`.
pub(super) const POOL_WAIT: Duration = Duration::from_secs(30);

/// How many connections the pool keeps at most, and how long a request waits for
/// one when all are busy.
#[derive(Debug, Clone, Copy)]
pub(super) struct PoolLimits {
    pub(super) size: usize,
    pub(super) wait: Duration,
}

/// How long the check of an idle connection may take before it is dropped.
const RECYCLE_TIMEOUT: Duration = Duration::from_secs(5);

/// Run on an idle connection before it is handed out again when the connection
/// string asks for `target_session_attrs=read-write`: it fails on a server that
/// has become read-only (a primary turned standby), so that connection is dropped
/// and a new one goes to whichever host takes writes now.
const CHECK_READ_WRITE: &str = "SET transaction_read_only = off";

/// Run on an idle connection before it is handed out again otherwise: a round
/// trip, so that a connection whose server is gone is dropped, not used.
const CHECK_ALIVE: &str = "";

/// A connection checked out of the pool; it goes back when dropped.
pub(super) struct PooledClient(Object);

impl PooledClient {
    pub(super) fn get(&mut self) -> Result<&mut Client> {
        Ok(&mut self.0)
    }
}

/// Builds the pool for a checked connection string; opens nothing yet.
pub(super) fn pool(settings: Settings, limits: PoolLimits) -> Result<Pool> {
    let read_write = settings.config.get_target_session_attrs() == TargetSessionAttrs::ReadWrite;
    let check = if read_write {
        CHECK_READ_WRITE
    } else {
        CHECK_ALIVE
    };
    // A connection may try every host in turn, each for up to connect_timeout, then
    // log in: give it that, plus a little.
    let hosts = settings
        .config
        .get_hosts()
        .len()
        .max(settings.config.get_hostaddrs().len())
        .max(1);
    let per_host = settings
        .config
        .get_connect_timeout()
        .copied()
        .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
    let create =
        per_host.saturating_mul(u32::try_from(hosts).unwrap_or(u32::MAX)) + Duration::from_secs(5);
    let manager = Manager::from_config(
        settings.config,
        settings.tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Custom(check.to_owned()),
        },
    );
    Pool::builder(manager)
        .max_size(limits.size)
        .wait_timeout(Some(limits.wait))
        .create_timeout(Some(create))
        .recycle_timeout(Some(RECYCLE_TIMEOUT))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| {
            DatastoreError::Backend(Failure::caused_by("cannot build the PostgreSQL pool", e))
        })
}

impl PostgresDatastore {
    /// A connection from the pool: an idle one that passes its check, or a new one.
    pub(super) async fn conn(&self) -> Result<PooledClient> {
        let target = &self.inner.target;
        let limits = self.inner.limits;
        self.inner
            .pool
            .get()
            .await
            .map(PooledClient)
            .map_err(|e| match e {
                PoolError::Backend(e) => connect_error(target, e),
                PoolError::Timeout(TimeoutType::Wait) => {
                    DatastoreError::Unavailable(Failure::new(format!(
                        "{target}: all {} connections stayed busy for {:?}; the database \
                         answers too slowly for the load",
                        limits.size, limits.wait
                    )))
                }
                PoolError::Timeout(TimeoutType::Create) => {
                    DatastoreError::Unavailable(Failure::new(format!(
                        "cannot connect to the {target}: no host answered in time"
                    )))
                }
                PoolError::Timeout(TimeoutType::Recycle) => DatastoreError::Unavailable(
                    Failure::new(format!("{target}: an idle connection did not answer")),
                ),
                PoolError::Closed => {
                    DatastoreError::Unavailable(Failure::new("the datastore is closed"))
                }
                other => DatastoreError::Backend(Failure::new(format!("{target}: {other}"))),
            })
    }
}

// ---- connection strings ----

/// A checked connection string: what tokio-postgres reads, the TLS connector its
/// `sslmode` and `sslrootcert` call for, and where it leads (for messages).
pub(super) struct Settings {
    pub(super) config: Config,
    pub(super) tls: RustlsConnect,
    pub(super) target: String,
}

/// Parses and checks a connection string. Errors never quote it (it may hold a
/// password).
pub(super) fn parse_config(connection_string: &str) -> Result<Settings> {
    let (rest, tls) = take_tls_settings(connection_string.trim());
    let mode = match tls.sslmode.as_deref() {
        None => SslModeSetting::Prefer,
        Some(m) => SslModeSetting::parse(m)?,
    };
    // The parser's error names the option it refuses, never a value: it may be kept.
    let mut config = Config::from_str(&rest).map_err(|e| {
        DatastoreError::Invalid(Failure::caused_by(
            format!("invalid PostgreSQL connection string: {}", describe(&e)),
            e,
        ))
    })?;
    if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
        return Err(DatastoreError::Invalid(
            "the PostgreSQL connection string names no host (host=NAME, host=/socket/dir \
             or postgres://NAME/DATABASE)"
                .into(),
        ));
    }
    let roots = match tls.sslrootcert.as_deref() {
        Some("system") => {
            return Err(DatastoreError::Invalid(
                "sslrootcert=system (the system's CAs) is not supported: give the file of \
                 the CA that signed the PostgreSQL server's certificate"
                    .into(),
            ));
        }
        Some(file) if mode != SslModeSetting::Disable => read_root_certs(Path::new(file))?,
        _ => Vec::new(),
    };
    let verify = match mode {
        SslModeSetting::VerifyFull => Verify::ChainAndName,
        SslModeSetting::VerifyCa => Verify::Chain,
        // As libpq: with a root CA file, require (and prefer) check the chain too.
        _ if !roots.is_empty() => Verify::Chain,
        _ => Verify::Nothing,
    };
    if matches!(verify, Verify::Chain | Verify::ChainAndName) && roots.is_empty() {
        return Err(DatastoreError::Invalid(
            format!(
                "sslmode={} checks the PostgreSQL server's certificate and needs the CA \
                 that signed it: add sslrootcert=/path/to/ca.pem to the connection string",
                mode.name()
            )
            .into(),
        ));
    }
    let only_sockets = config.get_hostaddrs().is_empty()
        && config
            .get_hosts()
            .iter()
            .all(|h| !matches!(h, Host::Tcp(_)));
    config.ssl_mode(match mode {
        // libpq never uses TLS on a Unix socket, whatever sslmode says.
        _ if only_sockets => SslMode::Disable,
        SslModeSetting::Disable => SslMode::Disable,
        SslModeSetting::Prefer => SslMode::Prefer,
        _ => SslMode::Require,
    });
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("tessera-server");
    }
    let target = describe_target(&config);
    Ok(Settings {
        config,
        tls: RustlsConnect::new(verify, roots)?,
        target,
    })
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SslModeSetting {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslModeSetting {
    fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            "allow" => {
                return Err(DatastoreError::Invalid(
                    "sslmode=allow is not supported: use disable, prefer, require, verify-ca \
                     or verify-full"
                        .into(),
                ));
            }
            other => {
                return Err(DatastoreError::Invalid(
                    format!(
                        "invalid sslmode {other:?} in the PostgreSQL connection string: use \
                         disable, prefer, require, verify-ca or verify-full"
                    )
                    .into(),
                ));
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

/// libpq's TLS settings that tokio-postgres does not read (it knows no `verify-*`
/// mode nor `sslrootcert`); the last one wins, as in libpq.
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsSettings {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

impl TlsSettings {
    /// Keeps `key = value` if it is a TLS setting; says whether it was.
    fn take(&mut self, key: &str, value: &str) -> bool {
        match key {
            "sslmode" => self.sslmode = Some(value.to_owned()),
            "sslrootcert" => self.sslrootcert = Some(value.to_owned()),
            _ => return false,
        }
        true
    }
}

/// The connection string without its TLS settings, and those settings.
fn take_tls_settings(s: &str) -> (String, TlsSettings) {
    let mut tls = TlsSettings::default();
    if let Some(rest) = s
        .strip_prefix("postgres://")
        .or_else(|| s.strip_prefix("postgresql://"))
    {
        let Some((head, query)) = rest.split_once('?') else {
            return (s.to_owned(), tls);
        };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|kv| match kv.split_once('=') {
                Some((k, v)) => !tls.take(k, &percent_decode(v)),
                None => true,
            })
            .collect();
        let scheme = &s[..s.len() - rest.len()];
        let out = if kept.is_empty() {
            format!("{scheme}{head}")
        } else {
            format!("{scheme}{head}?{}", kept.join("&"))
        };
        return (out, tls);
    }
    let (pairs, complete) = key_values(s);
    if !complete {
        // The real parser reports what is wrong.
        return (s.to_owned(), tls);
    }
    let kept: Vec<String> = pairs
        .into_iter()
        .filter(|(k, v)| !tls.take(k, v))
        .map(|(k, v)| format!("{k}='{}'", v.replace('\\', "\\\\").replace('\'', "\\'")))
        .collect();
    (kept.join(" "), tls)
}

/// Decodes `%XX` escapes (a URL query value); anything else is kept as it is.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `key=value` pairs of a libpq connection string (values may be single-quoted,
/// with backslash escapes), and whether they are all of it: this stops at the first
/// thing that is not a pair, which the real parser then reports.
fn key_values(s: &str) -> (Vec<(String, String)>, bool) {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        if key.is_empty() {
            return (out, chars.peek().is_none());
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next_if_eq(&'=').is_none() {
            return (out, false);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '\'' => {
                        closed = true;
                        break;
                    }
                    c => value.push(c),
                }
            }
            if !closed {
                return (out, false);
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

    #[test]
    fn connection_string_parsing() {
        assert_eq!(
            key_values("host=/tmp port = 5 password='a b\\'c' x=\\ y"),
            (
                vec![
                    ("host".into(), "/tmp".into()),
                    ("port".into(), "5".into()),
                    ("password".into(), "a b'c".into()),
                    ("x".into(), " y".into()),
                ],
                true
            )
        );
        assert!(!key_values("host=a password='open").1);
        assert!(!key_values("host=a b").1);

        // The TLS settings come out; the rest is what tokio-postgres reads.
        let (rest, tls) = take_tls_settings(
            "host=db sslmode=disable password='p w' sslrootcert='/etc/ca dir/ca.pem' sslmode=verify-full",
        );
        assert_eq!(rest, "host='db' password='p w'");
        assert_eq!(tls.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(tls.sslrootcert.as_deref(), Some("/etc/ca dir/ca.pem"));
        let (rest, tls) = take_tls_settings(
            "postgres://u:pw@h1:1,h2:2/db?sslmode=verify-ca&connect_timeout=3&sslrootcert=%2Fca%20dir%2Fca.pem",
        );
        assert_eq!(rest, "postgres://u:pw@h1:1,h2:2/db?connect_timeout=3");
        assert_eq!(tls.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(tls.sslrootcert.as_deref(), Some("/ca dir/ca.pem"));
        let (rest, tls) = take_tls_settings("postgresql://h/db?sslmode=disable");
        assert_eq!(rest, "postgresql://h/db");
        assert_eq!(tls.sslmode.as_deref(), Some("disable"));

        let settings =
            parse_config("host=db.internal port=6543 user=u password=p dbname=d").expect("parse");
        // libpq's default: TLS when the server offers it.
        assert_eq!(settings.config.get_ssl_mode(), SslMode::Prefer);
        assert_eq!(
            settings.config.get_connect_timeout(),
            Some(&DEFAULT_CONNECT_TIMEOUT)
        );
        assert_eq!(
            settings.target,
            "postgres database d as user u at db.internal:6543"
        );
        let settings = parse_config(
            "host=a,b port=1,2 user=u dbname=d sslmode=require target_session_attrs=read-write",
        )
        .expect("parse");
        assert_eq!(settings.config.get_ssl_mode(), SslMode::Require);
        assert_eq!(settings.target, "postgres database d as user u at a:1, b:2");
        // No TLS on Unix sockets, as libpq.
        let settings = parse_config("host=/run/postgresql sslmode=require").expect("parse");
        assert_eq!(settings.config.get_ssl_mode(), SslMode::Disable);
    }

    /// The error a connection string gets, checked to be `Invalid` and to hold no
    /// password.
    fn refused(s: &str) -> String {
        let err = parse_config(s)
            .err()
            .unwrap_or_else(|| panic!("accepted: {s}"));
        assert!(matches!(err, DatastoreError::Invalid(_)), "{s}: {err:?}");
        let msg = err.to_string();
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(!format!("{err:?}").contains("hunter2"), "{err:?}");
        msg
    }

    #[test]
    fn bad_tls_settings_are_refused_saying_what_is_wrong() {
        let dir = tempfile::tempdir().expect("temporary folder");
        let msg = refused("host=h password=hunter2 sslmode=verify-fool");
        assert!(msg.contains("invalid sslmode \"verify-fool\""), "{msg}");
        let msg = refused("postgres://u:hunter2@h/db?sslmode=allow");
        assert!(msg.contains("sslmode=allow is not supported"), "{msg}");
        for mode in ["verify-ca", "verify-full"] {
            let msg = refused(&format!("host=h password=hunter2 sslmode={mode}"));
            assert!(msg.contains(&format!("sslmode={mode} checks")), "{msg}");
            assert!(msg.contains("sslrootcert="), "{msg}");
        }
        let missing = dir.path().join("missing.pem");
        let msg = refused(&format!(
            "host=h password=hunter2 sslmode=verify-full sslrootcert={}",
            missing.display()
        ));
        assert!(
            msg.contains(&format!(
                "cannot read the PostgreSQL root CA file sslrootcert={}",
                missing.display()
            )),
            "{msg}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let msg = refused(&format!(
            "host=h password=hunter2 sslmode=require sslrootcert={}",
            empty.display()
        ));
        assert!(msg.contains("holds no certificate"), "{msg}");
        let msg = refused("host=h password=hunter2 sslmode=verify-full sslrootcert=system");
        assert!(msg.contains("sslrootcert=system"), "{msg}");
        // Options libpq has and this does not are named.
        let msg = refused("host=h password=hunter2 sslcert=/x");
        assert!(msg.contains("sslcert"), "{msg}");
        let msg = refused("user=tessera password=hunter2 dbname=tessera");
        assert!(msg.contains("names no host"), "{msg}");
    }

    /// A connection's TLS state, as the server sees it.
    async fn ssl_in_use(ds: &PostgresDatastore) -> bool {
        let mut conn = ds.conn().await.expect("connection");
        conn.get()
            .expect("client")
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await
            .expect("pg_stat_ssl")
            .get(0)
    }

    /// A CA the test cluster's certificate does not come from.
    fn other_ca(dir: &Path) -> String {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("CA");
        let path = dir.join("other-ca.pem");
        std::fs::write(&path, cert.pem()).expect("write");
        path.display().to_string()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_sslmode_connects_or_is_refused_as_libpq_does() {
        let db = TestDb::new().await;
        let tmp = tempfile::tempdir().expect("temporary folder");
        let ca = &cluster().ca_file;
        let port = cluster().port;
        let name = &db.name;
        // `tessera_tls` may connect over TLS only (pg_hba.conf), so its connecting
        // at all shows the session is encrypted; pg_stat_ssl says so too.
        let tls_only = |host: &str, rest: &str| {
            format!("host={host} port={port} user=tessera_tls dbname={name} {rest}")
        };
        let modes = [
            ("require, no CA", tls_only("127.0.0.1", "sslmode=require")),
            (
                "require with the CA",
                tls_only("localhost", &format!("sslmode=require sslrootcert={ca}")),
            ),
            (
                "verify-ca, the certificate for another name",
                tls_only("127.0.0.1", &format!("sslmode=verify-ca sslrootcert={ca}")),
            ),
            (
                "verify-full, its name",
                tls_only(
                    "localhost",
                    &format!("sslmode=verify-full sslrootcert={ca}"),
                ),
            ),
            ("prefer (the default)", tls_only("127.0.0.1", "")),
            (
                "a URL",
                format!(
                    "postgres://tessera_tls@localhost:{port}/{name}?sslmode=verify-full&sslrootcert={ca}"
                ),
            ),
        ];
        for (i, (what, s)) in modes.into_iter().enumerate() {
            let ds = PostgresDatastore::connect(&s)
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert!(ssl_in_use(&ds).await, "{what}: not encrypted");
            ds.create_entry(sample_entry(&format!("tls-{i}")))
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}"));
        }

        // disable: in clear, which the server refuses for this role, and which
        // another role gets.
        let err = PostgresDatastore::connect(&tls_only("127.0.0.1", "sslmode=disable"))
            .await
            .expect_err("tessera_tls without TLS");
        assert!(err.to_string().contains("no encryption"), "{err}");
        let ds = PostgresDatastore::connect(&format!("{} sslmode=disable", db.tcp()))
            .await
            .expect("disable");
        assert!(!ssl_in_use(&ds).await, "sslmode=disable encrypted");
        // No TLS on a Unix socket, whatever sslmode says (as libpq).
        let ds = PostgresDatastore::connect(&format!("{} sslmode=require", db.unix()))
            .await
            .expect("require over a Unix socket");
        assert!(!ssl_in_use(&ds).await, "TLS on a Unix socket");

        // Refused: a certificate for another name under verify-full, a CA that did
        // not sign it under verify-ca (and under require given that CA, as libpq).
        let other = other_ca(tmp.path());
        for (what, s, says) in [
            (
                "verify-full, another name",
                tls_only(
                    "127.0.0.1",
                    &format!("sslmode=verify-full sslrootcert={ca}"),
                ),
                "not valid for name",
            ),
            (
                "verify-ca, an untrusted CA",
                tls_only(
                    "localhost",
                    &format!("sslmode=verify-ca sslrootcert={other}"),
                ),
                "UnknownIssuer",
            ),
            (
                "verify-full, an untrusted CA",
                tls_only(
                    "localhost",
                    &format!("sslmode=verify-full sslrootcert={other}"),
                ),
                "UnknownIssuer",
            ),
            (
                "require with an untrusted CA",
                tls_only("localhost", &format!("sslmode=require sslrootcert={other}")),
                "UnknownIssuer",
            ),
        ] {
            let err = PostgresDatastore::connect(&s).await.expect_err(what);
            let msg = err.to_string();
            let host = if s.contains("host=localhost") {
                "localhost"
            } else {
                "127.0.0.1"
            };
            assert!(
                msg.contains(&format!("TLS handshake with {host} failed")),
                "{what}: {msg}"
            );
            assert!(msg.contains(says), "{what}: {msg}");
        }
        drop(ds);
        db.finish().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_host_is_tried_in_turn() {
        let db = TestDb::new().await;
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let port = cluster().port;
        let ds = PostgresDatastore::connect(&format!(
            "host=127.0.0.1,127.0.0.1 port={dead},{port} user=tessera dbname={} \
             target_session_attrs=read-write",
            db.name
        ))
        .await
        .expect("the second host");
        ds.ping().await.expect("ping");
        assert!(
            ds.target()
                .contains(&format!("127.0.0.1:{dead}, 127.0.0.1:{port}")),
            "{}",
            ds.target()
        );
        drop(ds);
        let err = PostgresDatastore::connect(&format!(
            "host=127.0.0.1,localhost port={dead},{dead} user=tessera password=hunter2 dbname=x"
        ))
        .await
        .expect_err("no host answers");
        assert!(matches!(err, DatastoreError::Unavailable(_)), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("127.0.0.1:{dead}, localhost:{dead}")),
            "{msg}"
        );
        assert!(!msg.contains("hunter2"), "{msg}");
        db.finish().await;
    }

    async fn backend(c: &mut PooledClient) -> i32 {
        c.get()
            .expect("client")
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .expect("pid")
            .get(0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pool_is_bounded_and_drops_broken_connections() {
        let db = TestDb::new().await;
        let limits = PoolLimits {
            size: 2,
            wait: Duration::from_millis(300),
        };
        let ds = PostgresDatastore::connect_with(
            &db.tcp(),
            crate::datastore::postgres::schema::MIGRATIONS,
            limits,
        )
        .await
        .expect("connect");
        let mut a = ds.conn().await.expect("first");
        let mut b = ds.conn().await.expect("second");
        let err = ds.conn().await.err().expect("a third connection");
        assert!(matches!(err, DatastoreError::Unavailable(_)), "{err:?}");
        assert!(
            err.to_string().contains("all 2 connections stayed busy"),
            "{err}"
        );
        let pid_a = backend(&mut a).await;
        let pid_b = backend(&mut b).await;
        drop(b);
        // A connection whose backend is gone goes back to the pool looking fine;
        // the check before it is handed out again drops it.
        db.raw()
            .await
            .query_one("SELECT pg_terminate_backend($1)", &[&pid_a])
            .await
            .expect("terminate");
        drop(a);
        let mut seen = Vec::new();
        for _ in 0..4 {
            let mut c = ds.conn().await.expect("a working connection");
            seen.push(backend(&mut c).await);
        }
        assert!(
            !seen.contains(&pid_a),
            "{seen:?} holds the terminated {pid_a}"
        );
        assert!(
            seen.contains(&pid_b),
            "{seen:?}: the live idle one is reused"
        );
        ds.ping().await.expect("ping");
        drop(ds);
        db.finish().await;
    }
}
