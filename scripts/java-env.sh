#!/usr/bin/env bash
# Builds the Java workload that Tessera's interoperability tests use to talk to
# the agent the way Java services do: grpc-java over the grpc-netty transport,
# with the Workload API stubs generated from Tessera's own workload.proto by
# protoc and Debian's grpc-java plugin. Everything comes from Debian's packages
# (scripts/setup.sh --tests installs them); nothing is downloaded here.
#
#   scripts/java-env.sh
#       Compiles swtpm-tests/java/WorkloadClient.java unless it is up to date and
#       prints, on standard output, the class path to run it with
#       (`java -cp "$(scripts/java-env.sh)" WorkloadClient ...`); everything else
#       goes to standard error. Running it again changes nothing.
#
# TESSERA_JAVA_DIR   where the classes go (default: <repo>/target/java).

set -euo pipefail

# prog, die, note, lock_for, stale, need_struct_proto
. "$(dirname -- "${BASH_SOURCE[0]}")/common.sh"

root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
out=${TESSERA_JAVA_DIR:-$root/target/java}
proto_dir=$root/proto/proto
source=$root/swtpm-tests/java/WorkloadClient.java
jars=/usr/share/java
plugin=/usr/bin/grpc_java_plugin

for tool in javac protoc; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found; run scripts/setup.sh --tests"
done
[[ -x $plugin ]] || die "$plugin not found; run scripts/setup.sh --tests (package protobuf-compiler-grpc-java-plugin)"
need_struct_proto
# The client uses the JDK's own Unix sockets (java.net.UnixDomainSocketAddress).
major=$(javac -version 2>&1 | sed -n 's/^javac \([0-9][0-9]*\).*/\1/p')
[[ ${major:-0} -ge 16 ]] ||
    die "javac ${major:-of unknown version} is too old: the Java workload needs Java 16 or later for Unix sockets"

# The run-time class path: grpc-java and what it needs, Netty, protobuf-java, and
# the generated code's javax.annotation.Generated. The Unix socket is the JDK's
# own (Java 16 or later).
classpath=$out/classes
for jar in grpc-api grpc-core grpc-context grpc-netty grpc-stub grpc-protobuf grpc-protobuf-lite \
    netty-buffer netty-codec netty-codec-http netty-codec-http2 netty-common netty-handler \
    netty-resolver netty-transport \
    protobuf guava perfmark-api gson geronimo-annotation-1.3-spec; do
    [[ -f $jars/$jar.jar ]] || die "$jars/$jar.jar not found; run scripts/setup.sh --tests"
    classpath+=:$jars/$jar.jar
done

mkdir -p -- "$out" || die "cannot create $out"

# Test binaries may run this script concurrently; one compiles, the others wait.
lock_for "$out"

if stale "$out/classes/.built" "$source" "$proto_dir/workload.proto" "$0"; then
    note "generating the Workload API stubs and compiling WorkloadClient into $out"
    rm -rf -- "$out/gen" "$out/classes.new"
    mkdir -p -- "$out/gen" "$out/classes.new"
    protoc -I"$proto_dir" -I/usr/include \
        --java_out="$out/gen" \
        --plugin=protoc-gen-grpc-java="$plugin" --grpc-java_out="$out/gen" \
        "$proto_dir/workload.proto" >&2 || die "protoc could not generate Java from workload.proto"
    javac -nowarn -encoding UTF-8 -d "$out/classes.new" -cp "${classpath#*:}" \
        "$out/gen"/*.java "$source" >&2 || die "javac failed"
    touch -- "$out/classes.new/.built"
    # Replace the old classes only once the new ones are complete.
    rm -rf -- "$out/classes"
    mv -- "$out/classes.new" "$out/classes"
fi

printf '%s\n' "$classpath"
