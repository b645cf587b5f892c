# Shared by scripts/demo.sh and scripts/test.sh: make sure the tools exist.

# Debian packages the build and the tests need beyond the machine's Rust toolchain.
# libtss2-dev: tss-esapi (TPM attester); swtpm, tpm2-tools: its tests.
# podman, runc, skopeo, umoci: the attester images and the container launch backends.
# libssl-dev: the tests check Azure vTPM quotes with az-cvm-vtpm's verifier (OpenSSL).
# g++: libfuzzer-sys (tests/fuzz, built on stable to replay the corpus).
# python3-jsonpatch: the webhook tests apply its patches with an implementation
# not ours; python3-venv: the venv for kubernetes-validate (see ensure_kube_tools).
# docker-registry, gnupg: the registry the pull tests push to and pull from, and
# the keys they sign with.
# busybox-static, iproute2: the Kubernetes tests' app image (a shell FROM scratch)
# and the cluster's network namespace (scripts/go-build.sh builds the cluster).
ATTESTD_APT_PACKAGES=(gcc g++ pkg-config libtss2-dev libssl-dev swtpm swtpm-tools tpm2-tools podman runc skopeo umoci systemd python3-jsonpatch python3-venv docker-registry gnupg busybox-static iproute2 graphviz containernetworking-plugins)

# The demo builds attestd and the sample attester only: a C compiler and linker
# (cc, for ring), nothing else.
ATTESTD_DEMO_PACKAGES=(gcc)

# Hardware attesters: standalone workspaces with their own Cargo.lock.
# attesters/azure is the helper both Azure plugins share, tested on its own.
# tests/plugins/x-hello is a third party's plugin outside the workspace (docs/plugin-authors.md).
ATTESTD_ATTESTER_WORKSPACES=(attesters/tpm attesters/tdx attesters/snp attesters/azure attesters/az-snp-vtpm attesters/az-tdx-vtpm tests/plugins/x-hello)

# The workspaces with a `recorded` feature (recorded/emulated devices, for tests):
# the tests build them with it; shipped builds and images never do.
ATTESTD_RECORDED_WORKSPACES=(attesters/tdx attesters/snp attesters/azure attesters/az-snp-vtpm attesters/az-tdx-vtpm)

# `--features recorded` for a workspace that has it.
recorded_features() {
    local ws
    for ws in "${ATTESTD_RECORDED_WORKSPACES[@]}"; do
        [ "$ws" = "$1" ] && { echo "--features recorded"; return; }
    done
}

# The pod VM: its build (debootstrap, mkfs.ext4, veritysetup) and its boot
# tests (qemu, the TPM emulator above, socat for the forwarded IMDS, OVMF for
# the measured UEFI boot, debugfs to find the block a tamper test changes,
# genisoimage for the cidata disk libvirt gives a peer pod its user-data on).
ATTESTD_PODVM_PACKAGES=(debootstrap e2fsprogs cryptsetup-bin qemu-system-x86 qemu-utils socat ovmf genisoimage)

ensure_packages() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing: ${missing[*]}" >&2
    if [ "$(id -u)" -ne 0 ]; then
        echo "error: need root to apt-get install ${missing[*]}" >&2
        return 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    # Debian's qemu-system-x86 removes a newer qemu-utils from backports (seen on
    # these machines): put back the one that goes with it.
    if [[ " ${missing[*]} " == *" qemu-system-x86 "* ]] && ! command -v qemu-img >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-utils
    fi
}

# The webhook tests' Kubernetes counterparts without a cluster: kubectl (the
# machine's, else Debian's kubernetes-client) and kubernetes-validate from PyPI
# (Kubernetes' JSON schemas, offline) in target/kvenv, pinned.
KUBERNETES_VALIDATE_VERSION=1.37.0
ensure_kube_tools() {
    command -v kubectl >/dev/null 2>&1 || ensure_packages kubernetes-client
    local kv=target/kvenv/bin/kubernetes-validate
    if [ ! -x "$kv" ] || ! "$kv" --version 2>/dev/null | grep -q "$KUBERNETES_VALIDATE_VERSION"; then
        rm -rf target/kvenv
        /usr/bin/python3 -m venv target/kvenv
        target/kvenv/bin/pip install -q --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
    fi
}

ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1; then
        [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null 2>&1 || {
        echo "error: cargo not found: install a Rust toolchain (rustup) first" >&2
        return 1
    }
}

# The peers cache's folder for PROJECT (scripts/peers-build.sh), printed when it
# holds the build of the commit scripts/peers.pins names (kata-agent: from
# kata-containers' pin); fails, printing nothing, otherwise.
peer_dir() {
    local src=$1 commit dir=${ATTESTD_PEERS:-/var/cache/attestd/peers}/$1
    [ "$1" = kata-agent ] && src=kata-containers
    commit=$(awk -v p="$src" '$1 == p { print $2 }' scripts/peers.pins)
    grep -qx "commit $commit" "$dir/MANIFEST" 2>/dev/null && echo "$dir"
}
