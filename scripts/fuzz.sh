#!/usr/bin/env bash
# Coverage-guided fuzzing of what attestd parses from others (tests/fuzz): each
# target runs for SECONDS (default 60) with cargo-fuzz on the nightly toolchain,
# growing tests/fuzz/corpus/<target>/ (commit what it adds: the test suite replays
# it on stable). A crash stops the run and leaves its input in tests/fuzz/artifacts/.
#   scripts/fuzz.sh [SECONDS] [TARGET…]
set -euo pipefail
cd "$(dirname "$0")/../tests/fuzz"
secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(config initdata keyprovider kbs_answers eventlog plugin_info snp_device tdx_quote hcl_report podvm_user_data webhook_review probe ttrpc_frames cidata_iso)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# Recorded device answers seed the plugins' parsers (read only: libFuzzer writes
# what it finds to the first directory).
seeds() {
    case $1 in
        snp_device) echo ../../attesters/snp/tests/fixtures ;;
        tdx_quote) echo ../../attesters/tdx/tests/fixtures ;;
        hcl_report) echo ../../attesters/azure/tests/fixtures ;;
    esac
}
for t in "${targets[@]}"; do
    echo "== $t: ${secs}s"
    mkdir -p "corpus/$t"
    # shellcheck disable=SC2046 # one directory or none
    cargo +nightly fuzz run --fuzz-dir . "$t" "corpus/$t" $(seeds "$t") -- \
        -max_total_time="$secs" -max_len=65536 -timeout=10 -print_final_stats=1 2>&1 |
        grep -E "stat::|Done|ERROR|panicked|SUMMARY" || true
    # cargo fuzz returns non-zero on a crash; pipefail would hide it behind grep.
    [ -z "$(ls -A artifacts/"$t" 2>/dev/null)" ] || { echo "crash in $t: see artifacts/$t" >&2; exit 1; }
done
