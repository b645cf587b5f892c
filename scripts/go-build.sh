#!/usr/bin/env bash
# Builds the tests' Go counterparts from the Go module proxy, each at the versions
# pinned in its go.mod, into target/kube/bin:
# - tests/go/kube: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
#   kubelet, kubectl (the Kubernetes tests);
# - tests/go/containerd: containerd, its runc shim, ctr (the Kubernetes tests);
# - tests/go/skopeo: skopeo with ocicrypt's key providers (image decryption);
# - tests/go/ocicrypt: a client of Go's ocicrypt library (image decryption).
# The module and build caches live under target/go, so a second run only relinks
# what changed (nothing, usually) and a clean clone builds everything once.
# Prints how long the build took; the figure goes in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
export GOMODCACHE="$root/target/go/mod" GOCACHE="$root/target/go/cache"
export GOFLAGS="-mod=readonly -trimpath -buildvcs=false" GOTOOLCHAIN=local
# Static, stripped binaries: nothing here needs cgo (containerd's btrfs and
# devmapper snapshotters do, and the tests use overlayfs).
export CGO_ENABLED=0
# A Go new enough for the go.mod files (the machine's, in /usr/local/go; Debian's
# golang-go, should it be installed, is older).
go_ok() { "$1" version 2>/dev/null | grep -qE 'go1\.(2[6-9]|[3-9][0-9])'; }
GO=""
for g in "$(command -v go || true)" /usr/local/go/bin/go; do
    if [ -n "$g" ] && go_ok "$g"; then GO=$g; break; fi
done
if [ -z "$GO" ]; then
    echo "error: scripts/go-build.sh needs Go 1.26 or newer (tests/go/*/go.mod); found: $(go version 2>&1)" >&2
    exit 1
fi
export PATH="$(dirname "$GO"):$PATH"
bin="$root/target/kube/bin"
mkdir -p "$bin"
start=$(date +%s)
# The version each reports, as Kubernetes' and containerd's own builds stamp it
# (unstamped, kube-apiserver says v0.0.0-master and kubectl warns of skew).
kube=$(cd tests/go/kube && go list -m -f '{{.Version}}' k8s.io/kubernetes)
ctrd=$(cd tests/go/containerd && go list -m -f '{{.Version}}' github.com/containerd/containerd/v2)
minor=${kube#v1.}; minor=${minor%%.*}
stamp="-X k8s.io/component-base/version.gitVersion=$kube -X k8s.io/component-base/version.gitMajor=1"
stamp+=" -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
stamp+=" -X k8s.io/client-go/pkg/version.gitVersion=$kube -X k8s.io/client-go/pkg/version.gitMajor=1"
stamp+=" -X k8s.io/client-go/pkg/version.gitMinor=$minor"
(cd tests/go/kube && go build -ldflags="-s -w $stamp" -o "$bin/" \
    ./etcd k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kubectl)
(cd tests/go/containerd && go build -tags "no_btrfs no_devmapper no_zfs" \
    -ldflags="-s -w -X github.com/containerd/containerd/v2/version.Version=$ctrd" -o "$bin/" \
    github.com/containerd/containerd/v2/cmd/containerd \
    github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
    github.com/containerd/containerd/v2/cmd/ctr)
# skopeo's own build tags for a build without C libraries.
(cd tests/go/skopeo && go build \
    -tags "containers_image_openpgp exclude_graphdriver_btrfs exclude_graphdriver_devicemapper" \
    -ldflags="-s -w" -o "$bin/" github.com/containers/skopeo/cmd/skopeo)
(cd tests/go/ocicrypt && go build -ldflags="-s -w" -o "$bin/ocicrypt-client" .)
echo "go-build: $(ls "$bin" | tr '\n' ' ')in $(($(date +%s) - start)) s"
