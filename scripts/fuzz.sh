#!/usr/bin/env bash
# Runs Tessera's fuzz targets (the fuzz/ crate; docs/SECURITY.md, "Fuzzing", says
# what each checks) under libFuzzer, each for a bounded time, and fails when one
# finds an input that panics, breaks a property, hangs or runs out of memory.
#
#   scripts/fuzz.sh                          # every target for 10 s
#   scripts/fuzz.sh --seconds 900            # a longer run: every target for 15 minutes
#   scripts/fuzz.sh --seconds 3600 csr h2_authority   # only the targets named
#   scripts/fuzz.sh --jobs 2                 # two targets at a time
#   scripts/fuzz.sh --seed 1                 # libFuzzer's random seed fixed (as in CI)
#   scripts/fuzz.sh --list                   # the targets
#
# scripts/test.sh (and so CI) runs every target for 5 s (TESSERA_FUZZ_SECONDS sets
# the seconds there; 0 skips the run and its build) with the random seed fixed, so
# that on a fresh machine (no corpus yet) a failure CI reports comes back when the
# same commit is run again, and a commit that passed does not fail later because
# the dice fell differently. Longer runs by hand keep libFuzzer's own random seed
# and so explore further each time. Each target starts from its seeds
# (fuzz/seeds/<target>/) and the inputs that once found a bug
# (fuzz/regressions/<target>/), and adds what it finds to fuzz/corpus/<target>/
# (not committed), so later runs on the same machine go on where the last one
# stopped. An input that fails is written to fuzz/artifacts/<target>/; the script
# prints how to replay it. Once the bug is fixed, the input goes to
# fuzz/regressions/<target>/, where `cargo test -p tessera-fuzz --test replay`
# (part of the ordinary test run) replays it for good.
#
# How the targets are built. cargo-fuzz's usual set-up wants a nightly toolchain
# (for -Zsanitizer=address, and it passes -Z flags to cargo). What the targets need
# is less: Rust's own code is memory-safe, so the sanitizer adds little, and the
# coverage instrumentation libFuzzer steers by (-Cpasses=sancov-module and LLVM's
# sanitizer-coverage options) is a stable rustc option. So this script builds the
# libFuzzer binaries (fuzz/fuzz_targets/, behind the crate's `libfuzzer` feature)
# with the stable toolchain and plain cargo, with the instrumentation flags
# cargo-fuzz passes for `--sanitizer none`: no nightly, no RUSTC_BOOTSTRAP (which
# would make proc-macro2's build script run again and rebuild every derive macro
# for the ordinary build too), and no tool to install. libfuzzer-sys compiles
# libFuzzer itself with the C++ compiler (build-essential, scripts/setup.sh).
# The flags are given for the target triple only (--target), so build scripts and
# proc macros are not instrumented and are shared with the ordinary build; the
# instrumented crates go to target/<triple>/debug/. The dev profile is used (the
# dependencies at opt-level 2, Tessera's crates unoptimized, debug assertions
# and overflow checks on), which builds much faster than a release build.
#
# cargo-fuzz works on the same crate for interactive use, e.g.
#   cargo fuzz run --sanitizer none --features libfuzzer h2_authority fuzz/corpus/h2_authority fuzz/seeds/h2_authority
# (on the stable toolchain it needs RUSTC_BOOTSTRAP=1; with a nightly toolchain,
# `cargo +nightly fuzz run --features libfuzzer h2_authority` adds AddressSanitizer).

set -euo pipefail

root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
# prog, die, note
. "$root/scripts/common.sh"
cd "$root"

usage() {
    sed -n '/^#   scripts\/fuzz.sh  /,/^#   scripts\/fuzz.sh --list/p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

seconds=10
jobs=1
seed=
list=false
targets=()
while (($#)); do
    case $1 in
        --seconds)
            [[ ${2-} =~ ^[1-9][0-9]*$ ]] || die "--seconds wants a whole number of seconds above 0, not '${2-}'"
            seconds=$2
            shift 2
            ;;
        --jobs)
            [[ ${2-} =~ ^[1-9][0-9]*$ ]] || die "--jobs wants a number of targets to run at once, not '${2-}'"
            jobs=$2
            shift 2
            ;;
        --seed)
            [[ ${2-} =~ ^[1-9][0-9]*$ ]] || die "--seed wants a whole number above 0, not '${2-}'"
            seed=$2
            shift 2
            ;;
        --list) list=true; shift ;;
        -h | --help) usage ;;
        -*) die "unknown option '$1' (usage: $prog [--seconds N] [--jobs N] [--seed N] [--list] [TARGET...])" ;;
        *) targets+=("$1"); shift ;;
    esac
done

# The targets are the crate's [[bin]] entries (one per fuzz_targets/*.rs).
mapfile -t all < <(sed -n 's/^path = "fuzz_targets\/\(.*\)\.rs"$/\1/p' fuzz/Cargo.toml)
((${#all[@]})) || die "no fuzz targets found in fuzz/Cargo.toml"
if $list; then
    printf '%s\n' "${all[@]}"
    exit 0
fi
if ((${#targets[@]} == 0)); then
    targets=("${all[@]}")
fi
for t in "${targets[@]}"; do
    [[ " ${all[*]} " == *" $t "* ]] || die "no fuzz target '$t' (the targets: ${all[*]})"
done

command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust with rustup, then run scripts/setup.sh"
command -v c++ >/dev/null 2>&1 || die "no C++ compiler (libFuzzer is built from source): run scripts/setup.sh"

triple=$(rustc -vV | sed -n 's/^host: //p')
[[ -n $triple ]] || die "cannot tell the host target triple from 'rustc -vV'"

# The instrumentation cargo-fuzz 0.13 uses with --dev --sanitizer none, in its
# order (so that `cargo fuzz build --dev --sanitizer none` shares this build):
# inline 8-bit edge counters and the PC table libFuzzer steers by, comparison
# tracing (so it learns the magic numbers and strings the parsers compare with),
# stack depth, cfg(fuzzing) for crates that adapt to a fuzzer, debug assertions.
flags=(
    -Cpasses=sancov-module
    -Cllvm-args=-sanitizer-coverage-level=4
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
    -Cllvm-args=-sanitizer-coverage-pc-table
    -Cllvm-args=-sanitizer-coverage-trace-compares
    --cfg fuzzing
    -Cllvm-args=-simplifycfg-branch-fold-threshold=0
    -Cllvm-args=-sanitizer-coverage-stack-depth
    -Cdebug-assertions
)
note "building the fuzz targets (instrumented, $triple, dev profile)"
build_start=$SECONDS
bins=()
for t in "${targets[@]}"; do bins+=(--bin "$t"); done
CARGO_ENCODED_RUSTFLAGS=$(IFS=$'\x1f'; printf '%s' "${flags[*]}") \
    cargo build --locked --quiet -p tessera-fuzz --features libfuzzer --target "$triple" "${bins[@]}"
build_time=$((SECONDS - build_start))
note "built in ${build_time} s"

out=target/$triple/debug
logs=target/fuzz-logs
mkdir -p "$logs"

# Runs one target for $seconds; its libFuzzer output goes to $logs/<target>.log.
run_one() {
    local t=$1
    local dirs=("fuzz/corpus/$t" "fuzz/seeds/$t")
    [[ -d fuzz/regressions/$t ]] && dirs+=("fuzz/regressions/$t")
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    # -timeout: one input running for 20 s is a hang (the slowest target, h2
    # judging a connection twice, takes milliseconds); -rss_limit_mb: a target that
    # needs more than 2 GiB for one input has a memory bug.
    local seeded=()
    [[ -n $seed ]] && seeded=(-seed="$seed")
    "$out/$t" \
        "${seeded[@]}" \
        -max_total_time="$seconds" \
        -timeout=20 \
        -rss_limit_mb=2048 \
        -print_final_stats=1 \
        -artifact_prefix="fuzz/artifacts/$t/" \
        "${dirs[@]}" >"$logs/$t.log" 2>&1
}

# One line per target: the executions, the coverage reached, or what failed.
report() {
    local t=$1 status=$2 log=$logs/$1.log
    if ((status == 0)); then
        local runs cov
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
        cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n1)
        printf 'fuzz %-16s ok      %s runs in %s s, %s\n' "$t" "${runs:-?}" "$seconds" "${cov:-cov: ?}"
        return 0
    fi
    printf 'fuzz %-16s FAILED  (libFuzzer exit status %s)\n' "$t" "$status"
    # The panic message or libFuzzer's verdict, and the input it wrote.
    # (Lines cut at 300 characters: a failed assertion may print whole values.)
    grep -E "panicked at|deadly signal|ERROR: libFuzzer|Test unit written to|^Base64" -A3 "$log" |
        grep -v -E '^(0x|   *[0-9]+: |stack backtrace:|NOTE: libFuzzer|      *Combine libFuzzer|stat::|--$)' |
        head -n 30 | cut -c1-300 | sed 's/^/    /'
    local input
    input=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -n1)
    if [[ -n $input ]]; then
        printf '    replay: %s %s\n' "$out/$t" "$input"
        printf '    once fixed, keep it: cp %s fuzz/regressions/%s/ (the replay test runs it)\n' "$input" "$t"
    fi
    printf '    full log: %s\n' "$log"
    return 1
}

note "running ${#targets[@]} target(s) for ${seconds} s each, ${jobs} at a time${seed:+, seed $seed}"
run_start=$SECONDS
failed=()
passed=0
pending=("${targets[@]}")
declare -A pid_of=()
while ((${#pending[@]} || ${#pid_of[@]})); do
    while ((${#pending[@]})) && ((${#pid_of[@]} < jobs)); do
        t=${pending[0]}
        pending=("${pending[@]:1}")
        run_one "$t" &
        pid_of[$t]=$!
    done
    # Wait for one to end (-p: which one; bash 5.1 or later) and report it.
    status=0
    ended=
    wait -n -p ended || status=$?
    for t in "${!pid_of[@]}"; do
        [[ ${pid_of[$t]} == "$ended" ]] || continue
        unset "pid_of[$t]"
        if report "$t" "$status"; then
            passed=$((passed + 1))
        else
            failed+=("$t")
        fi
    done
done

times="build ${build_time} s, runs $((SECONDS - run_start)) s"
if ((${#failed[@]})); then
    echo "fuzz: ${#failed[@]} target(s) failed: ${failed[*]}"
    echo "fuzz: $passed passed, ${#failed[@]} failed ($times)"
    exit 1
fi
echo "fuzz: $passed passed, 0 failed ($times)"
