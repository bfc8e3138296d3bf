//! Replays every committed input of every fuzz target through the same target
//! functions the fuzzer runs: the seed corpora (`fuzz/seeds/<target>/`, small
//! real inputs) and the inputs that once found a bug
//! (`fuzz/regressions/<target>/`). Runs with `cargo test` on a stable toolchain,
//! without libFuzzer, so a bug that comes back fails CI even where the fuzzer
//! is not run.

#![allow(
    clippy::expect_used,
    reason = "test code: a step that cannot be taken ends the test with its message"
)]

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = root().join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("a readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Runs one target over its seeds and regression inputs, naming the input
/// that fails.
fn replay(target: &str) {
    let (_, run) = tessera_fuzz::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no target {target}"));
    let seeds = inputs("seeds", target);
    assert!(!seeds.is_empty(), "target {target} has no seed inputs");
    for path in seeds.iter().chain(&inputs("regressions", target)) {
        let data = std::fs::read(path).expect("a readable input");
        let outcome = std::panic::catch_unwind(|| run(&data));
        if let Err(e) = outcome {
            std::panic::resume_unwind(Box::new(format!(
                "{target}: {} fails: {}",
                path.display(),
                e.downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| e.downcast_ref::<&str>().copied())
                    .unwrap_or("(panic)")
            )));
        }
    }
}

macro_rules! replay_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                replay(stringify!($name));
            }
        )*

        #[test]
        fn every_target_is_replayed_and_every_corpus_belongs_to_one() {
            let tested = [$(stringify!($name)),*];
            let targets: Vec<&str> = tessera_fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
            assert_eq!(targets, tested, "TARGETS and the replay tests differ");
            for kind in ["seeds", "regressions"] {
                let Ok(dirs) = std::fs::read_dir(root().join(kind)) else {
                    continue;
                };
                for dir in dirs {
                    let name = dir.expect("a directory entry").file_name();
                    let name = name.to_string_lossy();
                    assert!(
                        targets.contains(&name.as_ref()),
                        "{kind}/{name} is not a target's"
                    );
                }
            }
            // Every target has a cargo-fuzz binary.
            let manifest = std::fs::read_to_string(root().join("Cargo.toml"))
                .expect("the fuzz crate's manifest");
            for t in &targets {
                assert!(
                    manifest.contains(&format!("path = \"fuzz_targets/{t}.rs\"")),
                    "no cargo-fuzz binary for {t}"
                );
            }
        }
    };
}

replay_tests!(
    config,
    csr,
    der_pem,
    h2_authority,
    h2_requests,
    join_token,
    jwks_bundle,
    jwt_svid,
    selector,
    spiffe_id,
    tpm_attestation,
    tpm_wire,
    tss2_key,
);
