#!/usr/bin/env bash
# Keeps every non-test source file at 800 lines or fewer, counting the lines before
# its `#[cfg(test)]` module: a file past that does more than one job and should be
# split along its seams. Test code is not held to it: integration tests (`tests/`
# folders, `tests.rs` modules), the end-to-end harness (`swtpm-tests/`) and the
# datastore conformance suite. Generated code is not tracked, so not counted.
#
#   scripts/check-file-size.sh        # exits 1 and names each file over the limit

set -euo pipefail

root=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$root"

limit=800
over=0
while IFS= read -r -d '' file; do
    case "$file" in
        swtpm-tests/* | */tests/* | tests/* | */tests.rs | */conformance/*) continue ;;
    esac
    # Lines up to a top-level `#[cfg(test)]` that opens a `mod`.
    lines=$(awk '
        prev_cfg && /^(pub(\(crate\))? )?mod / { n--; exit }
        { prev_cfg = /^#\[cfg\(test\)\]/; n++ }
        END { print n + 0 }' "$file")
    if [ "$lines" -gt "$limit" ]; then
        echo "$file: $lines lines before #[cfg(test)] (at most $limit); split it along its seams" >&2
        over=1
    fi
done < <(git ls-files -z -- '*.rs')

if [ "$over" -ne 0 ]; then
    exit 1
fi
echo "no source file over $limit lines"
