#!/usr/bin/env bash
# The main job on the embedded default: start attestd with the sample attester
# plugin and ask it for evidence over the AA API (ttrpc, then gRPC), then stop it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_rust
# What the demo needs, not the test suite's set (Go, qemu, debootstrap, …).
ensure_packages "${ATTESTD_DEMO_PACKAGES[@]}"

cargo build -q --release --locked -p attestd -p attester-sample
bin=target/release
work=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT

# The shipped sample config, with its sockets in a scratch directory.
sed "s|^\[plugins\]$|[plugins]\nsocket_dir = \"$work/plugins\"|" docs/examples/sample.toml >"$work/attestd.toml"
aa="unix://$work/attestation-agent.sock"
grpc="unix://$work/attestation-agent-grpc.sock"

echo "\$ attestd -c attestd.toml --attestation_sock $aa --grpc_sock $grpc"
"$bin/attestd" -c "$work/attestd.toml" --attestation_sock "$aa" --grpc_sock "$grpc" 2>"$work/attestd.log" &
pid=$!
for _ in $(seq 200); do [ -S "$work/attestation-agent.sock" ] && break; sleep 0.05; done
[ -S "$work/attestation-agent.sock" ] || { cat "$work/attestd.log"; exit 1; }

run() { echo "\$ attestd client $*"; "$bin/attestd" client "$@"; }
run --attestation_sock "$aa" get-tee-type
run --attestation_sock "$aa" get-evidence --runtime-data hello-coco
run --grpc "$grpc" get-evidence --runtime-data hello-coco

kill -TERM $pid
wait $pid
echo "attestd stopped cleanly; its log:"
sed 's/^/  /' "$work/attestd.log"
