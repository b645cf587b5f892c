#!/usr/bin/env bash
# Build and install attestd and the chosen attesters, as shipped (no test-only
# features), with the example configs and the image list.
#
#   scripts/install.sh [--prefix DIR] [--destdir DIR] [--profile release|debug] [--no-build] [TEE…]
#
# TEE: sample tpm tdx snp az-snp-vtpm az-tdx-vtpm (default: sample). Each hardware
# attester is its own workspace, built with its own Cargo.lock.
#
# Installs, under DESTDIR (for image builds; default none) and PREFIX (default /usr,
# where attestd's defaults look):
#   PREFIX/bin/attestd, PREFIX/bin/attester-<tee>   (attestd finds a plugin's bare
#                                                    command name next to itself)
#   PREFIX/share/attestd/examples/*.toml             (the example configs)
#   PREFIX/share/attestd/images.lock                 (when containers/build.sh made one)
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=/usr
destdir=
profile=release
build=1
tees=()
while [ $# -gt 0 ]; do
    case $1 in
        --prefix) prefix=$2; shift 2 ;;
        --destdir) destdir=$2; shift 2 ;;
        --profile) profile=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "install.sh: unknown option $1" >&2; exit 2 ;;
        *) tees+=("$1"); shift ;;
    esac
done
[ ${#tees[@]} -gt 0 ] || tees=(sample)
case $profile in
    release) flag=(--release) ;;
    debug) flag=() ;;
    *) echo "install.sh: --profile is release or debug, not $profile" >&2; exit 2 ;;
esac

# Where each attester is built: the root workspace or its own.
manifest() {
    case $1 in
        sample) echo Cargo.toml ;;
        tpm|tdx|snp|az-snp-vtpm|az-tdx-vtpm) echo "attesters/$1/Cargo.toml" ;;
        *) echo "install.sh: unknown TEE $1 (sample tpm tdx snp az-snp-vtpm az-tdx-vtpm)" >&2; return 1 ;;
    esac
}
target_dir() {
    case $1 in
        sample) echo "target/$profile" ;;
        *) echo "attesters/$1/target/$profile" ;;
    esac
}
for tee in "${tees[@]}"; do manifest "$tee" >/dev/null; done

if [ $build = 1 ]; then
    # Only what ships: the core alone (not the workspace, whose test crate would
    # add test-only features), then each attester as shipped.
    cargo build "${flag[@]}" --locked -p attestd --bin attestd
    for tee in "${tees[@]}"; do
        if [ "$tee" = sample ]; then
            cargo build "${flag[@]}" --locked -p attester-sample --bin attester-sample
        else
            cargo build "${flag[@]}" --locked --manifest-path "$(manifest "$tee")" --bins
        fi
    done
fi

root=$destdir$prefix
install -d -m 0755 "$root/bin" "$root/share/attestd/examples"
install -m 0755 "target/$profile/attestd" "$root/bin/attestd"
for tee in "${tees[@]}"; do
    bin="$(target_dir "$tee")/attester-$tee"
    [ -x "$bin" ] || { echo "install.sh: $bin is not built (drop --no-build)" >&2; exit 1; }
    install -m 0755 "$bin" "$root/bin/attester-$tee"
done
install -m 0644 docs/examples/*.toml "$root/share/attestd/examples/"
if [ -f containers/images.lock ]; then
    install -m 0644 containers/images.lock "$root/share/attestd/images.lock"
fi
echo "installed attestd and ${tees[*]} under $root"
if [ "$prefix" != /usr ]; then
    echo "note: attestd looks for $prefix/share/attestd/images.lock only when [plugins] images_lock says so (default /usr/share/attestd/images.lock)"
fi
