//! `tessera-server entry create --data FILE`: registration entries in bulk, from a
//! file in either of SPIRE's two entry formats, so that entries move from a SPIRE
//! server as they are:
//!
//! - what `spire-server entry create -data` reads: `{"entries": [...]}`, each entry
//!   with `spiffe_id` and `parent_id` as URIs, `selectors` as `[{"type", "value"}]`,
//!   `x509_svid_ttl` (or the older `ttl`), `jwt_svid_ttl`, `federates_with`,
//!   `entry_id`, `admin`, `downstream`, `entryExpiry`, `dns_names`, `hint`;
//!   Tessera's own `workload_key` (`software` or `tpm`) is read too;
//! - what `spire-server entry show -output json` prints: `{"entries": [...],
//!   "next_page_token": ""}`, each entry with `id`, `spiffe_id` and `parent_id` as
//!   `{"trust_domain", "path"}`, `expires_at`, and its 64-bit numbers as JSON
//!   strings (`"0"`), as protobuf's JSON mapping writes them.
//!
//! An entry may mix the two spellings (`id` or `entry_id`, `expires_at` or
//! `entryExpiry`), but not give one field twice with different values. Numbers are
//! read as JSON numbers or strings of digits. `revision_number` and `created_at`
//! are ignored (the server sets them); `additional_attributes` are accepted only when
//! they ask for nothing (every attribute false or empty). `-` reads standard input.
//!
//! Each entry stands alone: one that cannot be read or that the server refuses is
//! reported (as `entries[N]`, with why) and the others are still created; the command
//! then exits non-zero.

use std::io::Read;
use std::path::Path;

use serde::Deserialize;
use tessera_proto::admin as pb;
use tessera_proto::admin::admin_client::AdminClient;
use tessera_proto::types as tpb;
use tonic::transport::Channel;

use super::entry::{entry_json, entry_text};
use super::{CliError, Output, json_text};

/// Entries sent per call: large files go in several.
const CHUNK: usize = 500;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntries {
    entries: Vec<serde_json::Value>,
    /// `entry show` prints it; not empty means the listing was cut into pages and
    /// this file holds only one.
    #[serde(default)]
    next_page_token: String,
}

/// A SPIFFE ID as either format writes it: a URI (`-data`) or protobuf's
/// `{"trust_domain", "path"}` (`entry show`).
fn id_field(name: &str, v: Option<serde_json::Value>) -> Result<String, String> {
    use serde_json::Value;
    let parts = match v {
        None | Some(Value::Null) => return Ok(String::new()),
        Some(Value::String(uri)) => return Ok(uri),
        Some(Value::Object(o)) => o,
        Some(other) => {
            return Err(format!(
                "{name} is {other}: give a URI string or {{\"trust_domain\", \"path\"}}"
            ));
        }
    };
    let mut trust_domain = None;
    let mut path = "";
    for (key, value) in &parts {
        match (key.as_str(), value.as_str()) {
            ("trust_domain", Some(td)) => trust_domain = Some(td),
            ("path", Some(p)) => path = p,
            ("trust_domain" | "path", None) => {
                return Err(format!("{name}.{key} is {value}, not a string"));
            }
            _ => return Err(format!("{name} has an unknown field {key:?}")),
        }
    }
    let trust_domain = trust_domain
        .filter(|td| !td.is_empty())
        .ok_or_else(|| format!("{name} has no trust_domain"))?;
    if !path.is_empty() && !path.starts_with('/') {
        return Err(format!("{name}.path {path:?} does not start with '/'"));
    }
    Ok(format!("spiffe://{trust_domain}{path}"))
}

/// A whole number as JSON writes it, or as protobuf's JSON mapping writes a 64-bit
/// one (a string of digits).
fn number_field(name: &str, v: Option<&serde_json::Value>) -> Result<Option<i64>, String> {
    use serde_json::Value;
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| format!("{name} {n} is not a whole number")),
        Some(Value::String(t)) => t
            .parse()
            .map(Some)
            .map_err(|_| format!("{name} {t:?} is not a whole number")),
        Some(other) => Err(format!("{name} is {other}, not a number")),
    }
}

/// The value of a field the two formats spell differently (`entry_id` and `id`):
/// either one, or both when they agree.
fn one_of<T: PartialEq + std::fmt::Debug>(
    names: (&str, &str),
    a: Option<T>,
    b: Option<T>,
) -> Result<Option<T>, String> {
    match (a, b) {
        (Some(a), Some(b)) if a != b => Err(format!(
            "{} ({a:?}) and {} ({b:?}) disagree; give one",
            names.0, names.1
        )),
        (a, b) => Ok(a.or(b)),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSelector {
    #[serde(rename = "type")]
    kind: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEntry {
    #[serde(default)]
    selectors: Vec<FileSelector>,
    #[serde(default)]
    parent_id: Option<serde_json::Value>,
    #[serde(default)]
    spiffe_id: Option<serde_json::Value>,
    #[serde(default)]
    x509_svid_ttl: Option<serde_json::Value>,
    /// The name `x509_svid_ttl` had before SPIRE 1.5.
    #[serde(default)]
    ttl: Option<serde_json::Value>,
    #[serde(default)]
    jwt_svid_ttl: Option<serde_json::Value>,
    #[serde(default)]
    federates_with: Vec<String>,
    /// The entry's ID as `-data` names it.
    #[serde(default)]
    entry_id: Option<String>,
    /// The entry's ID as `entry show` names it.
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    downstream: bool,
    /// The expiry as `-data` names it.
    #[serde(default, rename = "entryExpiry")]
    entry_expiry: Option<serde_json::Value>,
    /// The expiry as `entry show` names it.
    #[serde(default)]
    expires_at: Option<serde_json::Value>,
    #[serde(default)]
    dns_names: Vec<String>,
    #[serde(default)]
    hint: String,
    /// Tessera's own (`software` or `tpm`); SPIRE's files have none.
    #[serde(default)]
    workload_key: String,
    #[serde(default)]
    store_svid: bool,
    #[serde(default)]
    additional_attributes: Option<serde_json::Value>,
    #[serde(default)]
    #[expect(
        dead_code,
        reason = "read so that SPIRE's files are accepted; the server sets it"
    )]
    revision_number: serde_json::Value,
    #[serde(default)]
    #[expect(
        dead_code,
        reason = "read so that SPIRE's files are accepted; the server sets it"
    )]
    created_at: serde_json::Value,
}

/// Whether `additional_attributes` asks for nothing: absent, null, or an object
/// whose every attribute is false, null, zero or empty.
fn asks_for_nothing(v: Option<&serde_json::Value>) -> bool {
    use serde_json::Value;
    let unset = |v: &Value| match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    };
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Object(o)) => o.values().all(unset),
        Some(_) => false,
    }
}

fn ttl(name: &str, v: Option<i64>) -> Result<u32, String> {
    match v {
        None => Ok(0),
        Some(s) => u32::try_from(s).map_err(|_| {
            format!(
                "{name} {s} is not a number of seconds from 0 to {}",
                u32::MAX
            )
        }),
    }
}

impl FileEntry {
    fn into_proto(self) -> Result<tpb::Entry, String> {
        let spiffe_id = id_field("spiffe_id", self.spiffe_id)?;
        let parent_id = id_field("parent_id", self.parent_id)?;
        if spiffe_id.is_empty() {
            return Err("spiffe_id is required".into());
        }
        if parent_id.is_empty() {
            return Err("parent_id is required".into());
        }
        if self.selectors.is_empty() {
            return Err("at least one selector is required".into());
        }
        if self.store_svid {
            return Err("store_svid is not supported: Tessera has no SVID stores".into());
        }
        if !asks_for_nothing(self.additional_attributes.as_ref()) {
            return Err("additional_attributes are not supported".into());
        }
        let x509 = one_of(
            ("x509_svid_ttl", "its older name ttl"),
            number_field("x509_svid_ttl", self.x509_svid_ttl.as_ref())?,
            number_field("ttl", self.ttl.as_ref())?,
        )?;
        let x509 = ttl("x509_svid_ttl", x509)?;
        let id = one_of(("entry_id", "id"), self.entry_id, self.id)?.unwrap_or_default();
        let expires_at = one_of(
            ("entryExpiry", "expires_at"),
            number_field("entryExpiry", self.entry_expiry.as_ref())?,
            number_field("expires_at", self.expires_at.as_ref())?,
        )?
        .unwrap_or(0);
        let selectors = self
            .selectors
            .into_iter()
            .map(|s| {
                if s.kind.is_empty() || s.value.is_empty() {
                    Err(format!(
                        "selector {{\"type\": {:?}, \"value\": {:?}}} needs both a type and a value",
                        s.kind, s.value
                    ))
                } else {
                    Ok(format!("{}:{}", s.kind, s.value))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        tessera_core::WorkloadKey::from_wire(&self.workload_key).map_err(|e| e.to_string())?;
        Ok(tpb::Entry {
            id,
            spiffe_id,
            parent_id,
            selectors,
            x509_svid_ttl: x509,
            jwt_svid_ttl: ttl(
                "jwt_svid_ttl",
                number_field("jwt_svid_ttl", self.jwt_svid_ttl.as_ref())?,
            )?,
            federates_with: self.federates_with,
            admin: self.admin,
            downstream: self.downstream,
            dns_names: self.dns_names,
            hint: self.hint,
            expires_at,
            workload_key: self.workload_key,
            ..Default::default()
        })
    }
}

/// Reads a file's entries: each one, or why it cannot be used. The error is for a
/// file that is not such a file at all.
pub fn parse(data: &[u8]) -> Result<Vec<Result<tpb::Entry, String>>, String> {
    let file: FileEntries = serde_json::from_slice(data).map_err(|e| {
        format!("not a registration entry file ({{\"entries\": [...]}}, as spire-server entry create -data reads and entry show -output json prints): {e}")
    })?;
    if !file.next_page_token.is_empty() {
        return Err(format!(
            "next_page_token is {:?}: the file holds one page of a longer listing, and \
             the entries after it are missing (print them all with spire-server entry show \
             -output json)",
            file.next_page_token
        ));
    }
    Ok(file
        .entries
        .into_iter()
        .map(|v| {
            serde_json::from_value::<FileEntry>(v)
                .map_err(|e| e.to_string())
                .and_then(FileEntry::into_proto)
        })
        .collect())
}

/// What became of one entry of the file.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    Ok(tpb::Entry),
    Failed {
        /// The SPIFFE ID it asked for, when it could be read.
        spiffe_id: Option<String>,
        /// The gRPC code's name when the server refused it.
        code: Option<String>,
        reason: String,
    },
}

/// The bytes of `path`, or of standard input for `-`.
pub(super) fn read_input(path: &Path) -> Result<Vec<u8>, CliError> {
    let mut data = Vec::new();
    let read = if path == Path::new("-") {
        std::io::stdin().read_to_end(&mut data).map(|_| ())
    } else {
        std::fs::read(path).map(|d| data = d)
    };
    read.map_err(|source| CliError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(data)
}

/// Runs `entry create --data FILE`; returns what to print.
pub(super) async fn create(
    c: &mut AdminClient<Channel>,
    path: &Path,
    output: Output,
) -> Result<String, CliError> {
    let parsed = parse(&read_input(path)?).map_err(|reason| CliError::BadFile {
        path: path.to_owned(),
        reason,
    })?;
    let mut outcome: Vec<Option<Created>> = vec![None; parsed.len()];
    let mut pending: Vec<(usize, tpb::Entry)> = Vec::new();
    for (i, p) in parsed.into_iter().enumerate() {
        match p {
            Ok(e) => pending.push((i, e)),
            Err(reason) => {
                outcome[i] = Some(Created::Failed {
                    spiffe_id: None,
                    code: None,
                    reason,
                });
            }
        }
    }
    for chunk in pending.chunks(CHUNK) {
        let resp = c
            .batch_create_entries(pb::BatchCreateEntriesRequest {
                entries: chunk.iter().map(|(_, e)| e.clone()).collect(),
            })
            .await?
            .into_inner();
        if resp.results.len() != chunk.len() {
            return Err(CliError::Reply(format!(
                "{} results for {} entries",
                resp.results.len(),
                chunk.len()
            )));
        }
        for ((i, asked), r) in chunk.iter().zip(resp.results) {
            let status = r.status.unwrap_or_default();
            outcome[*i] = Some(match r.entry {
                Some(e) if status.code == 0 => Created::Ok(e),
                _ => Created::Failed {
                    spiffe_id: Some(asked.spiffe_id.clone()),
                    code: Some(format!("{:?}", tonic::Code::from_i32(status.code))),
                    reason: status.message,
                },
            });
        }
    }
    let outcome: Vec<Created> = outcome.into_iter().flatten().collect();
    report(&outcome, output)
}

/// What to print for the outcome of a file: the created entries (as `entry show`
/// prints them, or JSON), and an error listing the failures when there were any.
pub fn report(outcome: &[Created], output: Output) -> Result<String, CliError> {
    let shown = match output {
        Output::Pretty => outcome
            .iter()
            .filter_map(|o| match o {
                Created::Ok(e) => Some(entry_text(e)),
                Created::Failed { .. } => None,
            })
            .collect::<String>(),
        Output::Json => {
            let results = outcome
                .iter()
                .enumerate()
                .map(|(i, o)| match o {
                    Created::Ok(e) => {
                        Ok(serde_json::json!({ "index": i, "entry": entry_json(e)? }))
                    }
                    Created::Failed {
                        spiffe_id,
                        code,
                        reason,
                    } => Ok(serde_json::json!({
                        "index": i,
                        "error": { "spiffe_id": spiffe_id, "code": code, "message": reason },
                    })),
                })
                .collect::<Result<Vec<_>, CliError>>()?;
            json_text(&serde_json::json!({ "results": results }))?
        }
    };
    let failures: Vec<String> = outcome
        .iter()
        .enumerate()
        .filter_map(|(i, o)| match o {
            Created::Ok(_) => None,
            Created::Failed {
                spiffe_id,
                code,
                reason,
            } => Some(format!(
                "  entries[{i}]{}: {reason}{}",
                spiffe_id
                    .as_ref()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default(),
                code.as_ref().map(|c| format!(" ({c})")).unwrap_or_default()
            )),
        })
        .collect();
    if failures.is_empty() {
        return Ok(shown);
    }
    Err(CliError::Partial {
        what: "entries",
        failed: failures.len(),
        total: outcome.len(),
        details: failures.join("\n"),
        shown,
    })
}

#[cfg(test)]
mod tests {
    #![allow(
        clippy::unwrap_used,
        reason = "test code: a failed unwrap is a failed test"
    )]

    use super::*;

    #[test]
    fn spire_files_are_read_entry_by_entry() {
        // The shape of SPIRE's own fixture, plus the newer fields.
        let text = br#"{
            "entries": [
                {
                    "selectors": [{"type": "unix", "value": "uid:1111"}],
                    "spiffe_id": "spiffe://example.org/Blog",
                    "parent_id": "spiffe://example.org/spire/agent/join_token/TokenBlog",
                    "ttl": 200,
                    "admin": true
                },
                {
                    "selectors": [{"type": "unix", "value": "uid:1111"}, {"type": "unix", "value": "gid:5"}],
                    "spiffe_id": "spiffe://example.org/Database",
                    "parent_id": "spiffe://example.org/spire/server",
                    "x509_svid_ttl": 300, "jwt_svid_ttl": 60,
                    "federates_with": ["spiffe://other.org"],
                    "dns_names": ["db.example.org"],
                    "entryExpiry": 1900000000,
                    "entry_id": "db", "hint": "primary", "downstream": true,
                    "revision_number": 4, "created_at": "0", "store_svid": false
                },
                {"spiffe_id": "spiffe://example.org/x", "parent_id": "spiffe://example.org/p"},
                {"selectors": [{"type": "unix", "value": "uid:1"}], "spiffeID": "spiffe://example.org/y"},
                {"selectors": [{"type": "unix", "value": "uid:1"}], "spiffe_id": "spiffe://example.org/z",
                 "parent_id": "spiffe://example.org/p", "x509_svid_ttl": -1},
                {"selectors": [{"type": "unix", "value": "uid:1"}], "spiffe_id": "spiffe://example.org/s",
                 "parent_id": "spiffe://example.org/p", "store_svid": true},
                {"selectors": [{"type": "", "value": "uid:1"}], "spiffe_id": "spiffe://example.org/t",
                 "parent_id": "spiffe://example.org/p"}
            ]
        }"#;
        let got = parse(text).unwrap();
        assert_eq!(got.len(), 7);
        let blog = got[0].as_ref().unwrap();
        assert_eq!(blog.selectors, ["unix:uid:1111"]);
        assert_eq!((blog.x509_svid_ttl, blog.admin), (200, true));
        let db = got[1].as_ref().unwrap();
        assert_eq!(
            db,
            &tpb::Entry {
                id: "db".into(),
                spiffe_id: "spiffe://example.org/Database".into(),
                parent_id: "spiffe://example.org/spire/server".into(),
                selectors: vec!["unix:uid:1111".into(), "unix:gid:5".into()],
                x509_svid_ttl: 300,
                jwt_svid_ttl: 60,
                federates_with: vec!["spiffe://other.org".into()],
                admin: false,
                downstream: true,
                dns_names: vec!["db.example.org".into()],
                hint: "primary".into(),
                expires_at: 1_900_000_000,
                revision_number: 0,
                created_at: 0,
                workload_key: String::new(),
            }
        );
        let errs: Vec<String> = got[2..].iter().map(|r| r.clone().unwrap_err()).collect();
        assert_eq!(errs[0], "at least one selector is required");
        assert!(errs[1].contains("unknown field `spiffeID`"), "{}", errs[1]);
        assert!(errs[2].contains("x509_svid_ttl -1"), "{}", errs[2]);
        assert!(
            errs[3].contains("store_svid is not supported"),
            "{}",
            errs[3]
        );
        assert!(
            errs[4].contains("needs both a type and a value"),
            "{}",
            errs[4]
        );
    }

    #[test]
    fn spire_show_output_is_read_as_it_is_printed() {
        // `entry show -output json`: IDs as {trust_domain, path}, 64-bit numbers as
        // strings, every field printed, the listing's page token at the end.
        let text = br#"{
            "entries": [
                {
                    "id": "0a2b6e43-4c3e-4b8e-a1f2-5d1c9e6f7a80",
                    "spiffe_id": {"trust_domain": "example.org", "path": "/db"},
                    "parent_id": {"trust_domain": "example.org", "path": "/spire/agent/join_token/t1"},
                    "selectors": [{"type": "unix", "value": "uid:1000"}, {"type": "unix", "value": "gid:50"}],
                    "x509_svid_ttl": 600, "jwt_svid_ttl": 120,
                    "federates_with": ["other.test"],
                    "admin": true, "downstream": false,
                    "expires_at": "1900000000",
                    "dns_names": ["db.example.org", "db"],
                    "revision_number": "3", "store_svid": false, "hint": "primary",
                    "created_at": "1764633600"
                },
                {
                    "id": "e2", "spiffe_id": {"trust_domain": "example.org", "path": "/w"},
                    "parent_id": {"trust_domain": "example.org", "path": "/node"},
                    "selectors": [{"type": "unix", "value": "uid:1"}],
                    "x509_svid_ttl": 0, "jwt_svid_ttl": 0, "federates_with": [], "admin": false,
                    "downstream": false, "expires_at": "0", "dns_names": [], "revision_number": "0",
                    "store_svid": false, "hint": "", "created_at": "0",
                    "additional_attributes": {"disable_x509_svid_prefetch": false, "jwt_svid_include_jti": false}
                },
                {"id": "a", "entry_id": "b", "spiffe_id": "spiffe://example.org/x",
                 "parent_id": "spiffe://example.org/p", "selectors": [{"type": "unix", "value": "uid:1"}]},
                {"spiffe_id": {"path": "/x"}, "parent_id": "spiffe://example.org/p",
                 "selectors": [{"type": "unix", "value": "uid:1"}]},
                {"spiffe_id": {"trust_domain": "example.org", "path": "x"}, "parent_id": "spiffe://example.org/p",
                 "selectors": [{"type": "unix", "value": "uid:1"}]},
                {"spiffe_id": "spiffe://example.org/x", "parent_id": "spiffe://example.org/p",
                 "selectors": [{"type": "unix", "value": "uid:1"}], "expires_at": "soon"},
                {"spiffe_id": "spiffe://example.org/x", "parent_id": "spiffe://example.org/p",
                 "selectors": [{"type": "unix", "value": "uid:1"}], "expires_at": "5", "entryExpiry": 6},
                {"spiffe_id": "spiffe://example.org/x", "parent_id": "spiffe://example.org/p",
                 "selectors": [{"type": "unix", "value": "uid:1"}],
                 "additional_attributes": {"jwt_svid_include_jti": true}},
                {"spiffe_id": 7, "parent_id": "spiffe://example.org/p",
                 "selectors": [{"type": "unix", "value": "uid:1"}]}
            ],
            "next_page_token": ""
        }"#;
        let got = parse(text).unwrap();
        assert_eq!(
            got[0].as_ref().unwrap(),
            &tpb::Entry {
                id: "0a2b6e43-4c3e-4b8e-a1f2-5d1c9e6f7a80".into(),
                spiffe_id: "spiffe://example.org/db".into(),
                parent_id: "spiffe://example.org/spire/agent/join_token/t1".into(),
                selectors: vec!["unix:uid:1000".into(), "unix:gid:50".into()],
                x509_svid_ttl: 600,
                jwt_svid_ttl: 120,
                federates_with: vec!["other.test".into()],
                admin: true,
                downstream: false,
                dns_names: vec!["db.example.org".into(), "db".into()],
                hint: "primary".into(),
                expires_at: 1_900_000_000,
                revision_number: 0,
                created_at: 0,
                workload_key: String::new(),
            }
        );
        let plain = got[1].as_ref().unwrap();
        assert_eq!((plain.id.as_str(), plain.expires_at), ("e2", 0));
        let errs: Vec<String> = got[2..].iter().map(|r| r.clone().unwrap_err()).collect();
        let wanted = [
            "entry_id (\"b\") and id (\"a\") disagree; give one",
            "spiffe_id has no trust_domain",
            "spiffe_id.path \"x\" does not start with '/'",
            "expires_at \"soon\" is not a whole number",
            "entryExpiry (6) and expires_at (5) disagree; give one",
            "additional_attributes are not supported",
            "spiffe_id is 7: give a URI string or {\"trust_domain\", \"path\"}",
        ];
        assert_eq!(errs, wanted);
    }

    #[test]
    fn one_page_of_a_longer_listing_is_refused() {
        let e = parse(br#"{"entries": [], "next_page_token": "abc"}"#).unwrap_err();
        assert!(e.contains("one page of a longer listing"), "{e}");
    }

    #[test]
    fn a_file_that_is_no_entry_file_is_refused_whole() {
        for bad in [
            &b"not json"[..],
            b"[]",
            b"{\"entries\": 3}",
            b"{\"entry\": []}",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.starts_with("not a registration entry file"), "{e}");
        }
        assert_eq!(parse(b"{\"entries\": []}").unwrap().len(), 0);
    }

    #[test]
    fn failures_are_listed_and_make_the_command_fail() {
        let ok = tpb::Entry {
            id: "e1".into(),
            spiffe_id: "spiffe://example.org/a".into(),
            parent_id: "spiffe://example.org/p".into(),
            selectors: vec!["unix:uid:1".into()],
            ..Default::default()
        };
        let outcome = vec![
            Created::Ok(ok.clone()),
            Created::Failed {
                spiffe_id: None,
                code: None,
                reason: "spiffe_id is required".into(),
            },
            Created::Failed {
                spiffe_id: Some("spiffe://example.org/b".into()),
                code: Some("AlreadyExists".into()),
                reason: "entry already exists".into(),
            },
        ];
        let Err(CliError::Partial { shown, .. }) = report(&outcome, Output::Pretty) else {
            panic!("failures must fail the command");
        };
        assert_eq!(shown, entry_text(&ok));
        let err = report(&outcome, Output::Pretty).unwrap_err().to_string();
        assert_eq!(
            err,
            "2 of 3 entries failed:\n  entries[1]: spiffe_id is required\n  \
             entries[2] (spiffe://example.org/b): entry already exists (AlreadyExists)"
        );
        let Err(CliError::Partial { shown, .. }) = report(&outcome, Output::Json) else {
            panic!("failures must fail the command");
        };
        let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
        assert_eq!(v["results"][0]["entry"]["id"], "e1");
        assert_eq!(v["results"][2]["error"]["code"], "AlreadyExists");
        assert_eq!(
            report(&outcome[..1], Output::Pretty).unwrap(),
            entry_text(&ok)
        );
    }
}
