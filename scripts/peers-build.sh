#!/usr/bin/env bash
# Builds the upstream programs the tests compare attestd with, from the commits
# pinned in scripts/peers.pins, into a cache outside the clone:
#   $ATTESTD_PEERS (default /var/cache/attestd/peers)/<project>/
# each with a MANIFEST (project, commit, recipe, toolchain, sha256 of every file).
# A project whose MANIFEST matches its pin and whose files still hash the same is
# not built again.
#
#   scripts/peers-build.sh [--quick] [PROJECT=TREE ...]
#
# --quick builds only the projects that take minutes (the test suite's run);
# the long ones (guest-components, trustee: 15 to 20 minutes each on 2 cores)
# are used when cached and said to be missing when not, never built then.
#
# TREE is a git repository holding the pinned commit: a `git clone` of the URL
# in peers.pins (or a bare snapshot of it). Without one, a project's tree is
# looked for at $ATTESTD_PEERS_SRC/<project> (default /var/cache/attestd/src);
# a project with no tree is skipped, saying so. Only the pinned commit's files
# are read (git archive), never the tree's work copy.
#
# What each project gives the tests:
# - cloud-api-adaptor: process-user-data (cmd/process-user-data),
#   agent-protocol-forwarder (the pod VM's front door for the adaptor), and
#   attestd-caa-userdata (tests/go/caa-userdata, built inside cloud-api-adaptor's
#   module so it renders user-data with that commit's own code), and
#   attestd-agent-client (tests/go/agent-client: kata's agent protocol as the
#   adaptor speaks it to the forwarder, with the same kata Go types). Go modules
#   come from the module proxy; no cgo.
# - kata-containers: default-initdata.toml, the init-data kata's own CI gives
#   every pod (tests/integration/kubernetes/runtimeclass_workloads), and
#   allow-all.rego, the agent policy peer-pod images fall back to when
#   init-data brings none (src/kata-opa).
# - kata-agent (from kata-containers' pin and tree): kata-agent with the
#   features kata's release builds it with (seccomp, agent policy, init-data).
#   Its git dependencies: regorus from a tree; pcilibs-rs from crates.io.
# - guest-components: the Confidential Data Hub (ttrpc-cdh, with the features
#   its Makefile builds by default: ttrpc, the KBS client, Aliyun's KMS; image
#   pull through image-rs) and api-server-rest. About 15 minutes on 2 cores.
#   Its git dependencies come from trees (below): rust-oci-client, loopdev.
# - trustee: the KBS with its built-in attestation service, and every verifier
#   that builds without Intel's DCAP libraries or Veraison's services (TPM, SNP,
#   Azure SNP vTPM, ...: not TDX, SGX or CCA). About 20 minutes on 2 cores.
#   Its git dependencies come from trees (below): guest-components (the same
#   tree as above), sev and corim-rs.
#
# The patch step. Some of upstream's manifests name a dependency only by a git
# URL, which cargo must fetch even to resolve features nobody builds, and
# GitHub may be out of reach. Each such dependency is either cut (its line and
# every feature entry naming it: only attesters, verifiers and KMSes we never
# build use them) or taken from a local tree of its repository at the commit
# the project's Cargo.lock names ($ATTESTD_PEERS_SRC/<name>: git clone the URL
# the script names when one is missing). Only the extracted copy is changed,
# never a tree; the MANIFEST's recipe names the step.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
PEERS=${ATTESTD_PEERS:-/var/cache/attestd/peers}
SRC=${ATTESTD_PEERS_SRC:-/var/cache/attestd/src}
# Bump a project's number when its build steps below change: it is part of the
# MANIFEST, so the next run builds that project again (and no other).
recipe() {
    case "$1" in
        cloud-api-adaptor) echo 3 ;;
        kata-containers) echo 2 ;;
        *) echo 1 ;;
    esac
}
# A Go new enough for the pinned modules (the machine's, in /usr/local/go, as
# scripts/go-build.sh finds it).
for g in "$(command -v go || true)" /usr/local/go/bin/go; do
    if [ -n "$g" ] && "$g" version 2>/dev/null | grep -qE 'go1\.(2[5-9]|[3-9][0-9])'; then
        export PATH="$(dirname "$g"):$PATH"
        break
    fi
done

declare -A TREE=()
quick=0
LONG=" kata-agent guest-components trustee "
for a in "$@"; do
    case "$a" in
        --quick) quick=1 ;;
        *=*) TREE[${a%%=*}]=${a#*=} ;;
        *) echo "usage: $0 [--quick] [PROJECT=TREE ...]" >&2; exit 2 ;;
    esac
done

pin() { awk -v p="$1" '$1 == p { print $2 }' scripts/peers.pins; }

# The MANIFEST a build of $1 at $2 must have (without the file hashes).
header() { printf 'project %s\ncommit %s\nrecipe %s\n' "$1" "$2" "$(recipe "$1")"; }

fresh() { # project commit: whether the cache holds this build, unchanged
    local m="$PEERS/$1/MANIFEST"
    [ -f "$m" ] || return 1
    [ "$(head -3 "$m")" = "$(header "$1" "$2")" ] || return 1
    (cd "$PEERS/$1" && grep -E '^[0-9a-f]{64}  ' MANIFEST | sha256sum -c --quiet --status)
}

seal() { # project commit toolchain: write the MANIFEST over what is in the cache
    local dir="$PEERS/$1"
    {
        header "$1" "$2"
        echo "toolchain $3"
        (cd "$dir" && find . -maxdepth 1 -type f ! -name 'MANIFEST*' -printf '%P\n' | sort | xargs sha256sum)
    } >"$dir/MANIFEST.new"
    mv "$dir/MANIFEST.new" "$dir/MANIFEST"
}

extract() { # tree commit dest paths...: the pinned commit's files
    local tree=$1 commit=$2 dest=$3
    shift 3
    git -C "$tree" cat-file -e "$commit^{commit}" 2>/dev/null || {
        echo "error: $tree does not hold commit $commit (fetch it, or clone the repository in scripts/peers.pins)" >&2
        return 1
    }
    git -C "$tree" archive "$commit" "$@" | tar -x -C "$dest"
}

cut_git_deps() { # dir crate...: drop git-only dependencies and their features
    python3 - "$@" <<'PY'
import pathlib, re, sys
root, names = pathlib.Path(sys.argv[1]), sys.argv[2:]
for manifest in root.rglob("Cargo.toml"):
    text = new = manifest.read_text()
    for n in map(re.escape, names):
        new = re.sub(rf'(?m)^{n}\s*=\s*\{{[^\n]*\bgit\s*=[^\n]*\n', "", new)
        # A member's use of a cut workspace dependency goes with it.
        new = re.sub(rf'(?m)^{n}\s*=\s*\{{[^\n]*\bworkspace\s*=\s*true[^\n]*\n', "", new)
        new = re.sub(rf'(?m)^{n}\.workspace\s*=\s*true\s*\n', "", new)
        new = re.sub(rf'"(dep:)?{n}\??(/[^"]*)?"\s*,?\s*', "", new)
    if new != text:
        manifest.write_text(new)
PY
}

from_tree() { # dir url tree: a git dependency from a local tree, at the commit the lock names
    local dir=$1 url=$2 tree=$3 rev dest
    rev=$(grep -ho "git+$url?[^#\"]*#[0-9a-f]*" "$dir"/src/Cargo.lock | head -1 | sed 's/.*#//')
    [ -n "$rev" ] || { echo "error: $dir/src/Cargo.lock names no commit of $url" >&2; return 1; }
    [ -e "$tree" ] || { echo "error: no tree at $tree (git clone $url $tree)" >&2; return 1; }
    dest="$dir/deps/$(basename "$url" .git)"
    mkdir -p "$dest" && extract "$tree" "$rev" "$dest" . || return 1
    python3 - "$dir/src" "$url" "$dest" <<'PY'
import pathlib, re, sys
root, url, dest = pathlib.Path(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
crates = {}
for m in dest.rglob("Cargo.toml"):
    found = re.search(r'(?ms)^\[package\].*?^name\s*=\s*["\']([^"\']+)', m.read_text())
    if found:
        crates.setdefault(found.group(1), m.parent)
def local(match):
    key = match.group(1)
    name = re.search(r'package\s*=\s*"([^"]+)"', match.group(0))
    name = name.group(1) if name else key
    if name not in crates:
        sys.exit(f"no crate {name} in {dest}")
    return match.group(0).replace(match.group(2), f'path = "{crates[name]}"')
for m in root.rglob("Cargo.toml"):
    text = m.read_text()
    pat = rf'(?m)^([\w-]+)\s*=\s*\{{[^\n]*?(git\s*=\s*"{re.escape(url)}"\s*(,\s*(rev|tag|branch)\s*=\s*"[^"]*")?)[^\n]*'
    new = re.sub(pat, local, text)
    if new != text:
        m.write_text(new)
PY
}

to_crates_io() { # dir crate 'replacement': a git dependency no tree is reachable for
    python3 - "$@" <<'PY'
import pathlib, re, sys
root, name, spec = pathlib.Path(sys.argv[1]), re.escape(sys.argv[2]), sys.argv[3]
hits = 0
for manifest in root.rglob("Cargo.toml"):
    text = manifest.read_text()
    new, n = re.subn(rf'(?m)^({name}\s*=\s*\{{)\s*git\s*=\s*"[^"]*"\s*,\s*(rev|tag|branch)\s*=\s*"[^"]*"', rf"\g<1> {spec}", text)
    if n:
        manifest.write_text(new)
        hits += n
sys.exit(0 if hits else f"no git dependency {sys.argv[2]} under {root}")
PY
}

# Each step fails the build (these run where `set -e` does not apply).
build_cloud_api_adaptor() { # tree commit work out
    extract "$1" "$2" "$3" src/cloud-api-adaptor src/cloud-providers src/peerpod-ctrl || return 1
    install -D -m 0644 tests/go/caa-userdata/main.go "$3/src/cloud-api-adaptor/cmd/attestd-caa-userdata/main.go" || return 1
    install -D -m 0644 tests/go/agent-client/main.go "$3/src/cloud-api-adaptor/cmd/attestd-agent-client/main.go" || return 1
    # agent-protocol-forwarder imports kata's Go runtime module (the agent
    # protocol), which the module proxy here does not serve at the version
    # cloud-api-adaptor's go.mod names: it comes from the kata-containers tree
    # at that version's commit (a go.mod replace in the extracted copy).
    # Without a kata-containers tree the forwarder is left out, saying so.
    local kata=${TREE[kata-containers]:-$SRC/kata-containers} module=github.com/kata-containers/kata-containers/src/runtime
    local rev cmds=(./cmd/process-user-data ./cmd/attestd-caa-userdata)
    if [ -e "$kata" ]; then
        rev=$(awk -v m="$module" '$1 == m { print $2 }' "$3/src/cloud-api-adaptor/go.mod" | sed 's/.*-//')
        [ -n "$rev" ] || { echo "error: cloud-api-adaptor's go.mod names no $module" >&2; return 1; }
        mkdir -p "$3/kata" && extract "$kata" "$rev" "$3/kata" src/runtime || return 1
        cmds+=(./cmd/agent-protocol-forwarder ./cmd/attestd-agent-client)
    else
        echo "peers: cloud-api-adaptor: agent-protocol-forwarder and attestd-agent-client left out, no kata-containers tree at $kata" >&2
    fi
    (
        cd "$3/src/cloud-api-adaptor" &&
            export GOMODCACHE="$PEERS/.go/mod" GOCACHE="$PEERS/.go/cache" CGO_ENABLED=0 &&
            export GOFLAGS="-mod=mod -trimpath -buildvcs=false" GOTOOLCHAIN=local &&
            { [ ! -d "$3/kata" ] || go mod edit -replace "$module=$3/kata/src/runtime"; } &&
            go build -ldflags="-s -w" -o "$4/" "${cmds[@]}"
    ) >&2 || return 1
    go version | awk '{ print $3 }'
}

build_kata_containers() { # tree commit work out
    extract "$1" "$2" "$3" tests/integration/kubernetes/runtimeclass_workloads/default-initdata.toml \
        src/kata-opa/allow-all.rego || return 1
    install -m 0644 "$3/tests/integration/kubernetes/runtimeclass_workloads/default-initdata.toml" \
        "$3/src/kata-opa/allow-all.rego" "$4/" || return 1
    echo none
}

build_kata_agent() { # tree commit work out
    mkdir -p "$3/src" && extract "$1" "$2" "$3/src" Cargo.toml Cargo.lock rust-toolchain.toml \
        VERSION src/agent src/libs || return 1
    # src/version.rs, as the agent's Makefile writes it from version.rs.in.
    local version
    version=$(grep -v '^#' "$3/src/VERSION")
    sed -e "s|@AGENT_NAME@|kata-agent|g" -e "s|@AGENT_VERSION@|$version|g" \
        -e "s|@API_VERSION@|0.0.1|g" -e "s|@BINDIR@|/usr/bin|g" -e "s|@COMMIT@|$2|g" \
        -e "s|@VERSION_COMMIT@|$version-$2|g" \
        "$3/src/src/agent/src/version.rs.in" >"$3/src/src/agent/src/version.rs" || return 1
    # The protocols crate's build script writes its generated code into its
    # own src/. git archive gives every file the commit's time, so in a reused
    # target directory cargo would take the script for fresh and skip it:
    # newer files make it run again.
    find "$3/src/src/libs/protocols" -type f -exec touch {} + || return 1
    # The workspace as far as the agent reaches: its members under src/agent
    # and src/libs (the runtime, Dragonball and the tools are not extracted).
    python3 - "$3/src/Cargo.toml" <<'PY' || return 1
import re, sys
path = sys.argv[1]
text = open(path).read()
block = re.search(r'(?ms)^members = \[\n(.*?)^\]', text)
keep = [l for l in block.group(1).splitlines()
        if re.match(r'\s*"src/(agent|libs)[/"]', l)]
open(path, "w").write(text[:block.start(1)] + "\n".join(keep) + "\n" + text[block.end(1):])
PY
    # s390x's protected-virtualisation crate, and devicemapper (a feature the
    # release agent is built without, USE_DEVMAPPER=no): cut.
    cut_git_deps "$3" pv_core devicemapper || return 1
    # The agent policy's Rego engine, at the commit kata's lock names.
    from_tree "$3" https://github.com/microsoft/regorus "$SRC/regorus" || return 1
    # No tree of pcilibs-rs is reachable here: its crates.io release of the
    # same version (the two functions the agent calls are in it).
    to_crates_io "$3" pcilibs-rs 'version = "=0.1.0"' || return 1
    # The features kata's release agent is built with (kata-deploy's
    # AGENT_POLICY=yes, INIT_DATA=yes, SECCOMP=yes), for glibc.
    ( . "$root/scripts/lib.sh" && ensure_packages libseccomp-dev ) >&2 || return 1
    cargo_release "$3/src" "$4" kata-agent \
        "-p kata-agent --features seccomp,agent-policy,init-data" -- kata-agent
}

# A Rust workspace's packages, built in release and stripped into the cache.
cargo_release() { # src out target-name 'cargo args'... -- binaries...
    local src=$1 out=$2 target=$3
    shift 3
    local args=() bins=()
    while [ $# -gt 0 ] && [ "$1" != -- ]; do args+=("$1"); shift; done
    shift
    bins=("$@")
    (
        cd "$src" || exit 1
        export CARGO_TARGET_DIR="$PEERS/.cargo/$target" RUSTUP_TOOLCHAIN=1.95.0
        # The packages these builds need (bindgen's libclang, protoc, libtss2).
        . "$root/scripts/lib.sh" && ensure_packages clang libclang-dev protobuf-compiler \
            libssl-dev libtss2-dev pkg-config || exit 1
        for a in "${args[@]}"; do
            # shellcheck disable=SC2086 # each entry is one cargo command line
            cargo build --release $a || exit 1
        done
        for b in "${bins[@]}"; do
            install -m 0755 "$CARGO_TARGET_DIR/release/$b" "$out/" && strip "$out/$b" || exit 1
        done
        # Gigabytes of intermediates, on a machine whose disk CI shares: the
        # MANIFEST keeps the build from being needed again until a pin moves.
        rm -rf "$CARGO_TARGET_DIR"
    ) >&2 || return 1
    RUSTUP_TOOLCHAIN=1.95.0 rustc --version | awk '{ print $2 }'
}

build_guest_components() { # tree commit work out
    mkdir -p "$3/src" && extract "$1" "$2" "$3/src" . || return 1
    # Attesters (Azure's SDK, Intel's DCAP, Occlum, NVIDIA) and eHSM's KMS: cut.
    cut_git_deps "$3" azure-guest-attestation-sdk azure-tpm occlum_dcap tdx-attest-rs \
        nv-attestation-sdk ehsm_client || return 1
    # image-rs's registry client and loop devices, at the commits its lock names.
    from_tree "$3" https://github.com/oras-project/rust-oci-client "$SRC/rust-oci-client" || return 1
    from_tree "$3" https://github.com/mdaffin/loopdev "$SRC/loopdev" || return 1
    cargo_release "$3/src" "$4" guest-components \
        "-p confidential-data-hub --bin ttrpc-cdh --no-default-features --features bin,ttrpc,kbs,aliyun" \
        "-p api-server-rest" -- ttrpc-cdh api-server-rest
}

build_trustee() { # tree commit work out
    mkdir -p "$3/src" && extract "$1" "$2" "$3/src" . || return 1
    from_tree "$3" https://github.com/confidential-containers/guest-components.git \
        "${TREE[guest-components]:-$SRC/guest-components}" || return 1
    from_tree "$3" https://github.com/virtee/sev "$SRC/sev" || return 1
    from_tree "$3" https://github.com/veraison/corim-rs "$SRC/corim-rs" || return 1
    # Verifiers that need Intel's DCAP libraries or Veraison's client, and the
    # guest-side attesters the KBS client crates could link: cut.
    cut_git_deps "$3" intel-tee-quote-verification-rs veraison-apiclient ccatoken \
        azure-guest-attestation-sdk azure-tpm occlum_dcap tdx-attest-rs nv-attestation-sdk ehsm_client || return 1
    python3 - "$3/src/kbs/Cargo.toml" <<'PY' || return 1
import re, sys
path = sys.argv[1]
text = open(path).read()
ours = '"tpm-verifier", "snp-verifier", "az-snp-vtpm-verifier", "csv-verifier", "hygon-dcu-verifier", "se-verifier", "nvidia-verifier"'
new, n = re.subn(r'features = \[\s*"all-verifier",\s*\]', f"features = [{ours}]", text, count=1)
open(path, "w").write(new) if n else sys.exit(f"no all-verifier in {path}")
PY
    cargo_release "$3/src" "$4" trustee "-p kbs --no-default-features --features coco-as-builtin" -- kbs
}

status=0
for project in cloud-api-adaptor kata-containers kata-agent guest-components trustee; do
    # kata-agent is built from kata-containers' pin and tree, into its own
    # folder: a long build beside a quick one.
    source=$project
    [ "$project" = kata-agent ] && source=kata-containers
    commit=$(pin "$source")
    if fresh "$project" "$commit"; then
        echo "peers: $project at ${commit:0:12}: cached in $PEERS/$project"
        continue
    fi
    if [ $quick = 1 ] && [[ $LONG == *" $project "* ]]; then
        echo "peers: $project: not built (it takes a quarter of an hour or more: run scripts/peers-build.sh); its tests skip"
        continue
    fi
    tree=${TREE[$source]:-$SRC/$source}
    if [ ! -e "$tree" ]; then
        echo "peers: $project: skipped, no tree at $tree (git clone $(awk -v p="$source" '$1 == p { print $3 }' scripts/peers.pins) $tree)"
        continue
    fi
    work=$(mktemp -d /tmp/attestd-peers.XXXXXX)
    out="$PEERS/$project"
    rm -rf "$out" && mkdir -p "$out"
    start=$(date +%s)
    if toolchain=$("build_${project//-/_}" "$tree" "$commit" "$work" "$out"); then
        seal "$project" "$commit" "$toolchain"
        echo "peers: $project at ${commit:0:12}: built in $(($(date +%s) - start)) s into $out"
    else
        echo "peers: $project: build failed" >&2
        rm -rf "$out"
        status=1
    fi
    rm -rf "$work"
done
exit $status
