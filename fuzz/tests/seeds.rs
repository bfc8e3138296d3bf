//! The seed corpora made from the fixtures: `write_seeds` (ignored; run it with
//! `cargo test -p tessera-fuzz --test seeds -- --ignored`) writes them to
//! `fuzz/seeds/<target>/`, and `seeds_made_now_hold` runs freshly made ones
//! through their targets, so the fixtures and the targets stay in step.

#![allow(
    clippy::expect_used,
    reason = "test code: a step that cannot be taken ends the test with its message"
)]

use std::path::Path;

#[test]
fn seeds_made_now_hold() {
    for (target, name, data) in tessera_fuzz::seeds::all() {
        let (_, run) = tessera_fuzz::TARGETS
            .iter()
            .find(|(n, _)| *n == target)
            .unwrap_or_else(|| panic!("seed {name} is for no target ({target})"));
        run(&data);
    }
}

#[test]
#[ignore = "writes fuzz/seeds; run by hand after changing the fixtures"]
fn write_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    for (target, name, data) in tessera_fuzz::seeds::all() {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), data).unwrap();
    }
}
