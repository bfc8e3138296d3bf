//! `tessera-server entry create --data FILE`: registration entries in bulk, from a
//! file in the format `spire-server entry create -data` reads: `{"entries": [...]}`,
//! each entry with `spiffe_id` and `parent_id` as URIs, `selectors` as
//! `[{"type", "value"}]`, `x509_svid_ttl` (or the older `ttl`), `jwt_svid_ttl`,
//! `federates_with`, `entry_id`, `admin`, `downstream`, `entryExpiry`, `dns_names`,
//! `hint`; `revision_number` and `created_at` are ignored (the server sets them).
//! `-` reads standard input.
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
    parent_id: String,
    #[serde(default)]
    spiffe_id: String,
    #[serde(default)]
    x509_svid_ttl: Option<i64>,
    /// The name `x509_svid_ttl` had before SPIRE 1.5.
    #[serde(default)]
    ttl: Option<i64>,
    #[serde(default)]
    jwt_svid_ttl: Option<i64>,
    #[serde(default)]
    federates_with: Vec<String>,
    #[serde(default)]
    entry_id: String,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    downstream: bool,
    #[serde(default, rename = "entryExpiry")]
    entry_expiry: i64,
    #[serde(default)]
    dns_names: Vec<String>,
    #[serde(default)]
    hint: String,
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
        if self.spiffe_id.is_empty() {
            return Err("spiffe_id is required".into());
        }
        if self.parent_id.is_empty() {
            return Err("parent_id is required".into());
        }
        if self.selectors.is_empty() {
            return Err("at least one selector is required".into());
        }
        if self.store_svid {
            return Err("store_svid is not supported: Tessera has no SVID stores".into());
        }
        if self
            .additional_attributes
            .as_ref()
            .is_some_and(|v| !v.is_null() && v.as_object().is_none_or(|o| !o.is_empty()))
        {
            return Err("additional_attributes are not supported".into());
        }
        let x509 = match (self.x509_svid_ttl, self.ttl) {
            (Some(a), Some(b)) if a != b => {
                return Err(format!(
                    "x509_svid_ttl ({a}) and its older name ttl ({b}) disagree; give one"
                ));
            }
            (a, b) => ttl("x509_svid_ttl", a.or(b))?,
        };
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
        Ok(tpb::Entry {
            id: self.entry_id,
            spiffe_id: self.spiffe_id,
            parent_id: self.parent_id,
            selectors,
            x509_svid_ttl: x509,
            jwt_svid_ttl: ttl("jwt_svid_ttl", self.jwt_svid_ttl)?,
            federates_with: self.federates_with,
            admin: self.admin,
            downstream: self.downstream,
            dns_names: self.dns_names,
            hint: self.hint,
            expires_at: self.entry_expiry,
            ..Default::default()
        })
    }
}

/// Reads a file's entries: each one, or why it cannot be used. The error is for a
/// file that is not such a file at all.
pub fn parse(data: &[u8]) -> Result<Vec<Result<tpb::Entry, String>>, String> {
    let file: FileEntries = serde_json::from_slice(data).map_err(|e| {
        format!("not a registration entry file ({{\"entries\": [...]}}, as spire-server entry create -data reads): {e}")
    })?;
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

fn read_input(path: &Path) -> Result<Vec<u8>, CliError> {
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
