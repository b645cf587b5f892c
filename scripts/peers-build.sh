#!/usr/bin/env bash
# Builds the upstream programs the tests compare attestd with, from the commits
# pinned in scripts/peers.pins, into a cache outside the clone:
#   $ATTESTD_PEERS (default /var/cache/attestd/peers)/<project>/
# each with a MANIFEST (project, commit, recipe, toolchain, sha256 of every file).
# A project whose MANIFEST matches its pin and whose files still hash the same is
# not built again.
#
#   scripts/peers-build.sh [PROJECT=TREE ...]
#
# TREE is a git repository holding the pinned commit: a `git clone` of the URL
# in peers.pins (or a bare snapshot of it). Without one, a project's tree is
# looked for at $ATTESTD_PEERS_SRC/<project> (default /var/cache/attestd/src);
# a project with no tree is skipped, saying so. Only the pinned commit's files
# are read (git archive), never the tree's work copy.
#
# What each project gives the tests:
# - cloud-api-adaptor: process-user-data (cmd/process-user-data), and
#   attestd-caa-userdata (tests/go/caa-userdata, built inside cloud-api-adaptor's
#   module so it renders user-data with that commit's own code). Go modules come
#   from the module proxy; no cgo.
# - kata-containers: default-initdata.toml, the init-data kata's own CI gives
#   every pod (tests/integration/kubernetes/runtimeclass_workloads).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
PEERS=${ATTESTD_PEERS:-/var/cache/attestd/peers}
SRC=${ATTESTD_PEERS_SRC:-/var/cache/attestd/src}
# Bump when a project's build steps below change: it is part of the MANIFEST.
RECIPE=1
# A Go new enough for the pinned modules (the machine's, in /usr/local/go, as
# scripts/go-build.sh finds it).
for g in "$(command -v go || true)" /usr/local/go/bin/go; do
    if [ -n "$g" ] && "$g" version 2>/dev/null | grep -qE 'go1\.(2[5-9]|[3-9][0-9])'; then
        export PATH="$(dirname "$g"):$PATH"
        break
    fi
done

declare -A TREE=()
for a in "$@"; do
    case "$a" in
        *=*) TREE[${a%%=*}]=${a#*=} ;;
        *) echo "usage: $0 [PROJECT=TREE ...]" >&2; exit 2 ;;
    esac
done

pin() { awk -v p="$1" '$1 == p { print $2 }' scripts/peers.pins; }

# The MANIFEST a build of $1 at $2 must have (without the file hashes).
header() { printf 'project %s\ncommit %s\nrecipe %s\n' "$1" "$2" "$RECIPE"; }

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

# Each step fails the build (these run where `set -e` does not apply).
build_cloud_api_adaptor() { # tree commit work out
    extract "$1" "$2" "$3" src/cloud-api-adaptor src/cloud-providers src/peerpod-ctrl || return 1
    install -D -m 0644 tests/go/caa-userdata/main.go "$3/src/cloud-api-adaptor/cmd/attestd-caa-userdata/main.go" || return 1
    (
        cd "$3/src/cloud-api-adaptor"
        export GOMODCACHE="$PEERS/.go/mod" GOCACHE="$PEERS/.go/cache" CGO_ENABLED=0
        export GOFLAGS="-mod=readonly -trimpath -buildvcs=false" GOTOOLCHAIN=local
        go build -ldflags="-s -w" -o "$4/" ./cmd/process-user-data ./cmd/attestd-caa-userdata
    ) >&2 || return 1
    go version | awk '{ print $3 }'
}

build_kata_containers() { # tree commit work out
    extract "$1" "$2" "$3" tests/integration/kubernetes/runtimeclass_workloads/default-initdata.toml || return 1
    install -m 0644 "$3/tests/integration/kubernetes/runtimeclass_workloads/default-initdata.toml" "$4/" || return 1
    echo none
}

status=0
for project in cloud-api-adaptor kata-containers; do
    commit=$(pin "$project")
    if fresh "$project" "$commit"; then
        echo "peers: $project at ${commit:0:12}: cached in $PEERS/$project"
        continue
    fi
    tree=${TREE[$project]:-$SRC/$project}
    if [ ! -e "$tree" ]; then
        echo "peers: $project: skipped, no tree at $tree (git clone $(awk -v p="$project" '$1 == p { print $3 }' scripts/peers.pins) $tree)"
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
