#!/usr/bin/env bash
# The whole test suite: lint, generated-code check, build, unit and end-to-end tests.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_rust
ensure_packages "${ATTESTD_APT_PACKAGES[@]}" "${ATTESTD_PODVM_PACKAGES[@]}"
ensure_kube_tools
# One full run, not an edit loop: incremental caches only cost disk here.
export CARGO_INCREMENTAL=0

echo "== format and lints"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Each transport alone, as a plugin links it; none at all, as attester-tsm links it.
cargo clippy -p attester-sdk --no-default-features --locked -- -D warnings
cargo clippy -p attester-sdk --no-default-features --features ttrpc --locked -- -D warnings
cargo clippy -p attester-sdk --no-default-features --features grpc --locked -- -D warnings
# The core without its gRPC servers (a ttrpc-only build): it lints clean, and its
# unit tests pass, among them the one that a gRPC listener is refused.
cargo clippy -p attestd --no-default-features --all-targets --locked -- -D warnings
cargo test -p attestd --no-default-features --lib --locked

# The SDK as a dependency others take: both crates package, and the packaged
# crates build on their own, outside this workspace.
cargo package -p attestd-proto -p attester-sdk --locked --allow-dirty

cargo fmt --manifest-path tests/fuzz/Cargo.toml --check
cargo clippy --manifest-path tests/fuzz/Cargo.toml --all-targets --locked -- -D warnings
for ws in "${ATTESTD_ATTESTER_WORKSPACES[@]}"; do
    cargo fmt --manifest-path "$ws/Cargo.toml" --check
    cargo clippy --manifest-path "$ws/Cargo.toml" --all-targets --locked -- -D warnings
    # shellcheck disable=SC2046 # the flag is one word or none
    cargo clippy --manifest-path "$ws/Cargo.toml" --all-targets --locked $(recorded_features "$ws") -- -D warnings
done

echo "== generated code is current"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    touch proto/build.rs
    cargo build -q -p attestd-proto --features regen --locked
    cargo fmt --all
    git diff --exit-code -- proto/ || {
        echo "error: proto/src/generated differs from protos/: commit the regenerated code" >&2
        exit 1
    }
fi

echo "== architecture invariants"
# The core links no TEE library; attesters link neither the core nor each other.
tee_crates='^(tss-esapi|tss-esapi-sys|sev|az-cvm-vtpm|az-snp-vtpm|az-tdx-vtpm|tdx-attest-rs|dcap-qvl|configfs-tsm) '
if cargo tree -p attestd -e normal --prefix none --locked | grep -E "$tee_crates"; then
    echo "error: the attestd runtime depends on a TEE crate (above)" >&2
    exit 1
fi
if cargo tree -p attestd-webhook -e normal --prefix none --locked | grep -E "$tee_crates"; then
    echo "error: attestd-webhook depends on a TEE crate (above)" >&2
    exit 1
fi
# The pod VM's first-boot tool only turns user-data into files.
if cargo tree -p attestd-podvm -e normal --prefix none --locked | grep -E "$tee_crates|^attestd "; then
    echo "error: attestd-podvm depends on a TEE crate or the runtime (above)" >&2
    exit 1
fi
if cargo tree -p attester-sample -e normal --prefix none --locked | grep -E '^attestd '; then
    echo "error: an attester depends on the attestd runtime" >&2
    exit 1
fi
for ws in "${ATTESTD_ATTESTER_WORKSPACES[@]}"; do
    own=$(cargo pkgid --manifest-path "$ws/Cargo.toml" | sed -E 's/.*#([^@]+)@.*/\1/')
    # Shared helper crates (sdk, tsm, azure) are fine; the runtime and other attesters are not.
    if cargo tree --manifest-path "$ws/Cargo.toml" -e normal --prefix none --locked | grep -E '^(attestd|attester-[a-z0-9-]+) ' | grep -vE "^(attester-sdk|attester-tsm|attester-azure|$own) "; then
        echo "error: $ws depends on the runtime or on another attester" >&2
        exit 1
    fi
done

echo "== build (the end-to-end tests run the real binaries)"
cargo build --workspace --bins --locked
for ws in "${ATTESTD_ATTESTER_WORKSPACES[@]}"; do
    # As shipped (the features containers/build.sh uses): no recorded mode at all.
    cargo build --manifest-path "$ws/Cargo.toml" --bins --locked
    for b in "$ws"/target/debug/attester-*; do
        [ -x "$b" ] && [ -f "$b" ] || continue
        # (no grep -q: an early exit would SIGPIPE --help and hide the match)
        if "$b" --help | grep -i recorded >/dev/null; then
            echo "error: $b, built as shipped, offers a recorded mode" >&2
            exit 1
        fi
    done
    # The tests drive the recorded devices.
    # shellcheck disable=SC2046
    cargo build --manifest-path "$ws/Cargo.toml" --bins --locked $(recorded_features "$ws")
done

echo "== images (the container backend tests start the sample image; the webhook tests the core's and the webhook's; the pod VM holds the attesters')"
bash containers/build.sh sample tpm az-snp-vtpm attestd webhook
echo "== reproducible images: tdx built here and from a copy elsewhere has one digest"
bash scripts/repro-check.sh tdx
echo "== the Go counterparts: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl, containerd, skopeo and Go's ocicrypt from the Go module proxy (pinned in tests/go/*/go.mod)"
bash scripts/go-build.sh
if [ "${ATTESTD_PRUNE_BUILD:-0}" = 1 ]; then
    # The binaries are in target/kube/bin; the module and build caches are
    # gigabytes CI's disk has no room for (the module cache is read-only).
    chmod -R u+w target/go && rm -rf target/go
fi
echo "== upstream peers (scripts/peers.pins): built into their cache where a tree is; the tests that compare with them say whether they ran"
# A peer that does not build is said, and its tests skip: it is upstream's code,
# not a reason to stop the suite.
# The long ones (most of an hour each) are built only by an explicit run of
# scripts/peers-build.sh; here they are used when cached.
bash scripts/peers-build.sh --quick || echo "peers: a build failed (above); the tests that need it skip"
# Every test that needs a peer writes whether it ran here (tests/src/peers.rs).
export ATTESTD_PEERS_LOG="$PWD/target/peers-tests.log"
rm -f "$ATTESTD_PEERS_LOG"

echo "== the pod VMs (the boot tests boot them): one with the images prefetched, one that pulls them, and the peer pod VM where the peers are cached"
bash containers/podvm/build.sh --test-hooks
bash containers/podvm/build.sh --test-hooks --registry 10.0.2.100:5000/attestd --out target/podvm-pull
# The peer pod VM holds upstream's guest programs: built when the cache has
# them all at their pins (tests/tests/coco.rs skips, saying so, when not).
coco_peers() {
    local p
    for p in kata-agent cloud-api-adaptor guest-components kata-containers; do
        peer_dir "$p" >/dev/null || return 1
    done
}
if coco_peers; then
    bash containers/podvm/build.sh --coco --test-hooks --out target/podvm-coco
else
    echo "peers: the peer pod VM (--coco) not built: the peers cache lacks kata-agent, guest-components or cloud-api-adaptor"
fi
if [ "${ATTESTD_PRUNE_BUILD:-0}" = 1 ]; then
    # The images and the pod VM hold the release binaries now; CI's disk is tight.
    rm -rf target/x86_64-unknown-linux-gnu attesters/*/target/x86_64-unknown-linux-gnu \
        target/release target/podvm-cache
fi

echo "== tests"
for ws in "${ATTESTD_ATTESTER_WORKSPACES[@]}"; do
    # shellcheck disable=SC2046
    cargo test --manifest-path "$ws/Cargo.toml" --locked $(recorded_features "$ws")
done
cargo test --workspace --locked
# What fuzzing found stays found: the saved corpus through every target, on stable.
cargo test --manifest-path tests/fuzz/Cargo.toml --locked --test corpus

echo "== the daemon as shipped: built alone, then the end-to-end tests again"
# Test builds unify features across the workspace: dcap-qvl turns on serde_json's
# preserve_order and the tests turn on fault injection, so the daemon the tests ran
# above is not byte for byte the one that ships (a JWE AAD bug hid behind this).
# Rebuild it with its own features and run the end-to-end tests against it again,
# all but eventlog and fault_injection, which need the fault-injection points, and
# podvm and coco, whose attestd is the pinned image's, inside the VM, and kube, whose
# attestd is the pinned image's too, in the cluster's pods.
cargo build -p attestd --bins --locked
shipped=()
for f in tests/tests/*.rs; do
    t=$(basename "$f" .rs)
    case "$t" in eventlog|fault_injection|podvm|coco|kube) ;; *) shipped+=(--test "$t") ;; esac
done
cargo test -p attestd-e2e --locked "${shipped[@]}"

# One line on the real peers, never silent: how many tests ran against them
# (each test once, though the end-to-end tests run twice above).
tally() { grep -h ": $1" "$ATTESTD_PEERS_LOG" 2>/dev/null | cut -d: -f2 | sort -u | wc -l; }
ran=$(tally 'runs against ')
if [ "$ran" -gt 0 ]; then
    echo "real peers: $ran tests run, $(tally 'skipped: ') skipped (target/peers-tests.log)"
else
    echo "real peers: skipped (no cache at ${ATTESTD_PEERS:-/var/cache/attestd/peers}; run scripts/peers-build.sh)"
fi
