#!/usr/bin/env bash
# Runs every Tessera test on this machine: formatting and lints, unit tests, and the
# end-to-end tests that start real swtpm, SoftHSM2, servers and agents and talk to
# them with py-spiffe, the `spiffe` crate, OpenSSL and pkcs11-tool.
#
#   scripts/test.sh            # set up the machine if needed, then test everything
#
# Installs what it needs first (scripts/setup.sh --tests). Prints the test runner's summary.
# Ends with a fuzzing smoke run (scripts/fuzz.sh: every fuzz target for a few seconds).
# The fuzz targets are built a second time, with coverage instrumentation, in
# target/<host triple>/; from nothing, that build takes more than ten minutes on two
# cores (later runs rebuild only what changed).
#
#   TESSERA_FUZZ_SECONDS   seconds each fuzz target runs (default 5); 0 skips the smoke
#                          run and its build

set -euo pipefail

root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$root"

bash scripts/setup.sh --tests

echo "== format"
cargo fmt --all -- --check

echo "== lints"
cargo clippy --workspace --all-targets --locked -- -D warnings
bash scripts/check-file-size.sh

# Licences, banned crates and sources (deny.toml). cargo-deny is not installed by
# setup.sh: building it takes well over ten minutes on a two-core machine. Install it
# once with `cargo install --locked cargo-deny` and this step runs.
echo "== dependency policy"
if cargo deny --version >/dev/null 2>&1; then
    cargo deny --log-level error check licenses bans sources
else
    echo "cargo-deny is not installed; skipped (cargo install --locked cargo-deny)"
fi

echo "== build (the end-to-end tests run these binaries)"
cargo build --workspace --bins --locked

# The static agents (x86_64 and aarch64) and server (docs/STATIC.md): the boot tests
# run the agents in their guests, and the end-to-end tests run again below with the
# x86_64 agent and server. The `static-ci` profile builds much faster than
# `static-release` (what ships), with the same code and features.
echo "== static build (musl)"
bash scripts/static.sh --profile static-ci
static_dir=$root/target/static/x86_64-unknown-linux-musl

# Runs the test runner with the given filter arguments.
run_tests() {
    if cargo nextest --version >/dev/null 2>&1; then
        cargo nextest run --locked --no-fail-fast "$@"
    else
        cargo test --locked --no-fail-fast "$@"
    fi
}

echo "== tests"
run_tests --workspace

# The end-to-end tests a second time, with the static agent and server: join tokens
# (workload_api), tpm_devid and tpm_ek (tpm_attestation), and the server's CA keys in
# a TPM (tpm_server_keys); a static binary reaches swtpm with the pure-Rust backend.
static_tests=(--test workload_api --test tpm_attestation --test tpm_server_keys)
echo "== end-to-end tests with the static agent and server (${static_tests[*]})"
TESSERA_TEST_AGENT_BIN=$static_dir/tessera-agent TESSERA_TEST_SERVER_BIN=$static_dir/tessera-server \
    run_tests -p tessera-swtpm-tests "${static_tests[@]}"

fuzz_seconds=${TESSERA_FUZZ_SECONDS:-5}
if [[ $fuzz_seconds == 0 ]]; then
    echo "== fuzz smoke: skipped (TESSERA_FUZZ_SECONDS=0)"
else
    echo "== fuzz smoke (every target for $fuzz_seconds s)"
    bash scripts/fuzz.sh --seconds "$fuzz_seconds" --seed 1
fi
