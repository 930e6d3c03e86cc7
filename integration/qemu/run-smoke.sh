#!/usr/bin/env bash
# Boot the QEMU guest and run smoke-test.sh in it; prints the guest log and the timings.
#
# Usage: integration/qemu/run-smoke.sh [OUT_DIR] [-- extra run-guest.sh options...]
#   OUT_DIR defaults to a temporary directory that is removed afterwards.
# Exit status: smoke-test.sh's (0 = every check passed), or run-guest.sh's 124/125 on VM failure.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

OUT=""
if [[ $# -gt 0 && "$1" != -- ]]; then OUT=$1; shift; fi
[[ "${1:-}" == -- ]] && shift
CLEAN=0
if [[ -z "$OUT" ]]; then
    OUT=$(mktemp -d "${TMPDIR:-/tmp}/berth-smoke.XXXXXX")
    CLEAN=1
fi
trap '[[ $CLEAN -eq 1 ]] && rm -rf "$OUT"' EXIT

"$HERE/prepare.sh"

# A dynamically-linked glibc program from the host proves --bin's library copying.
DYN_BIN=$(command -v stat)
start=$(date +%s.%N)
set +e
"$HERE/run-guest.sh" --out "$OUT" --bin "$DYN_BIN" --env "SMOKE_DYN_BIN=$(basename "$DYN_BIN")" \
    --timeout 300 "$@" -- "$HERE/smoke-test.sh"
rc=$?
set -e
end=$(date +%s.%N)
echo "run-smoke.sh: boot + smoke test took $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }')s wall clock; exit status $rc"
sed 's/^/run-smoke.sh: timing: /' "$OUT/timing" 2>/dev/null || true
exit "$rc"
