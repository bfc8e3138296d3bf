#!/usr/bin/env bash
# Builds the Java workload that Tessera's interoperability tests run against the
# agent: swtpm-tests/java-spiffe/, a small program on java-spiffe (the Workload API
# library and TLS provider Java services use), pinned by its pom.xml. Maven fetches
# java-spiffe and what it needs from the Maven repository the first time and keeps
# them in its local repository after that. Needs a JDK (17 or later) and Maven.
#
#   scripts/java-spiffe-env.sh
#       Compiles the program unless it is up to date and prints, on standard
#       output, the class path to run it with
#       (`java -cp "$(scripts/java-spiffe-env.sh)" tessera.test.SpiffeWorkload ...`);
#       everything else goes to standard error. Running it again changes nothing.
#
# TESSERA_JAVA_SPIFFE_DIR  where the build goes (default: <repo>/target/java-spiffe).

set -euo pipefail

# prog, die, note, lock_for, stale
. "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"

root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
out=${TESSERA_JAVA_SPIFFE_DIR:-$root/target/java-spiffe}
src=$root/swtpm-tests/java-spiffe

for tool in java javac mvn; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found; run scripts/setup.sh --tests"
done
major=$(javac -version 2>&1 | sed -n 's/^javac \([0-9][0-9]*\).*/\1/p')
[[ ${major:-0} -ge 17 ]] ||
    die "javac ${major:-of unknown version} is too old: the Java workload is compiled for Java 17"

mkdir -p -- "$out" || die "cannot create $out"

# Test binaries may run this script concurrently; one compiles, the others wait.
lock_for "$out"

build=$out/build
stamp=$out/classpath
if stale "$stamp" "$src/pom.xml" $(find "$src/src" -name '*.java') "$0" "$root/scripts/common.sh"; then
    note "compiling $src with Maven into $build"
    rm -rf -- "$build" "$stamp.new"
    mvn -B -q -Dstyle.color=never -f "$src/pom.xml" -Dtessera.build.dir="$build" \
        compile dependency:build-classpath -Dmdep.outputFile="$stamp.new" >&2 ||
        die "mvn could not build $src (is the Maven repository reachable for the first build?)"
    [[ -s $stamp.new ]] || die "Maven wrote no class path to $stamp.new"
    # The program's classes first, then java-spiffe and what it needs.
    printf '%s:%s\n' "$build/classes" "$(<"$stamp.new")" >"$stamp.tmp"
    rm -f -- "$stamp.new"
    mv -- "$stamp.tmp" "$stamp"
fi

cat -- "$stamp"
