#!/usr/bin/env bash
# Build every attester image with podman (FROM scratch, nothing pulled) and write
# containers/images.lock: for each TEE the image name, its sha256 digest, transport
# and plugin API version; under [components.*] the core's image (attestd) and the
# admission webhook's (webhook).
#
#   containers/build.sh [--lock FILE] [--plugin DIR]... [name ...]
#
# name: a TEE, attestd or webhook (default: all, unless --plugin is given).
# --plugin DIR: a third party's plugin crate (its own workspace and Cargo.lock),
#   built static with the shipped profile into an image FROM scratch; its
#   Cargo.toml's [package.metadata.attestd] gives tee, transport, and the probe
#   and devices the image declares (labels org.attestd.probe, org.attestd.devices,
#   copied into the lock). See docs/plugin-authors.md, "Shipping a plugin".
# --lock FILE: write this lock instead of containers/images.lock.
set -euo pipefail
want=()
plugin_dirs=()
lock_arg=
while [ $# -gt 0 ]; do
    case $1 in
        --plugin) plugin_dirs+=("$(realpath -e "$2")") || exit 2; shift 2 ;;
        --lock) lock_arg=$(realpath -m "$2"); shift 2 ;;
        -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "build.sh: unknown option $1" >&2; exit 2 ;;
        *) want+=("$1"); shift ;;
    esac
done
cd "$(dirname "$0")/.."
# Reproducible across clones: Cargo hashes a path dependency outside the workspace
# being built (the SDK, seen from a hardware attester's own workspace) by its
# absolute path, and that hash names symbols and so orders the binary. Every
# clone builds through one fixed path (a symlink to it), one build at a time.
BUILD_ROOT=${ATTESTD_BUILD_ROOT:-/tmp/attestd-build-src}
exec 9>"$BUILD_ROOT.lock"
flock 9
ln -sfn "$(pwd -P)" "$BUILD_ROOT"
cd "$BUILD_ROOT"
. scripts/lib.sh
ensure_rust
ensure_packages podman runc jq "${ATTESTD_APT_PACKAGES[@]}"

TARGET=x86_64-unknown-linux-gnu
# Debian's library directory for that target.
MULTIARCH=x86_64-linux-gnu
API=1
STAGE=containers/build
LOCK=${lock_arg:-containers/images.lock}
mkdir -p "$STAGE"

# tee  plugin  manifest  transport  linking
PLUGINS=(
    "sample attester-sample Cargo.toml ttrpc static"
    "tdx attester-tdx attesters/tdx/Cargo.toml ttrpc static"
    "snp attester-snp attesters/snp/Cargo.toml ttrpc static"
    "tpm attester-tpm attesters/tpm/Cargo.toml ttrpc dynamic"
    "az-snp-vtpm attester-az-snp-vtpm attesters/az-snp-vtpm/Cargo.toml grpc dynamic"
    "az-tdx-vtpm attester-az-tdx-vtpm attesters/az-tdx-vtpm/Cargo.toml grpc dynamic"
)

selected() {
    # No names: everything, unless only third parties' plugins were asked for.
    [ ${#want[@]} -eq 0 ] && [ ${#plugin_dirs[@]} -eq 0 ] && return 0
    local t
    for t in "${want[@]}"; do [ "$t" = "$1" ] && return 0; done
    return 1
}

# The shipped profile (Cargo.toml's [profile.release], size-optimised, fat LTO, one
# codegen unit, abort, stripped), exported so every attester workspace builds alike.
. scripts/shipped-profile.sh
. scripts/plugin-metadata.sh

# Reproducible binaries: no build paths in them, so a clean clone builds the same bytes.
# Recorded in the lock: a rebuild that should match a pin needs the same compiler.
RUSTC_VERSION=$(rustc -V)
remap="--remap-path-prefix=$PWD=/src --remap-path-prefix=$(pwd -P)=/src --remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}=/cargo"

stage_closure() {
    # The binary, every shared library it loads (ldd), the TCTI modules libtss2
    # dlopens at run time (those named in $3), and the dynamic loader.
    local bin=$1 root=$2 tctis=$3
    local lib t modules=()
    for t in $tctis; do modules+=("/usr/lib/$MULTIARCH/libtss2-tcti-$t.so.0"); done
    for lib in $(ldd "$bin" | awk '/=>/ {print $3} /ld-linux/ {print $1}') "${modules[@]}"; do
        if [ ! -e "$lib" ]; then
            case $lib in
                *libtss2-tcti-*) echo "error: $lib is missing (libtss2-dev installs it)" >&2; exit 1 ;;
            esac
            continue
        fi
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
        # The TCTI modules have their own dependencies.
        for dep in $(ldd "$lib" | awk '/=>/ {print $3}'); do
            mkdir -p "$root$(dirname "$dep")"
            cp -L "$dep" "$root$dep"
        done
    done
    # ld.so finds libraries in its default directories; lib64 holds the loader.
    [ -e "$root/lib64" ] || ln -s usr/lib64 "$root/lib64" 2>/dev/null || true
}

# RUSTFLAGS for a binary linked $1 (static or dynamic).
rustflags_for() {
    if [ "$1" = static ]; then echo "-C target-feature=+crt-static $remap"; else echo "$remap"; fi
}

# Stop when binary $1 (named $2 in the error) should be static and is not.
require_static() {
    if ! ldd "$1" 2>&1 | grep -qE 'statically linked|not a dynamic executable'; then
        echo "error: $2 is not static" >&2
        exit 1
    fi
}

# Keep entries of images not rebuilt this time.
declare -A kept=()

# The core and the webhook: one binary each, FROM scratch. The core is linked
# statically: it runs in every pod VM, and a dynamic glibc costs it 1.4 MB more
# RSS and 0.9 ms more start-up than the 1 MB it adds to the binary (measured,
# docs/benchmarks.md "Static core"); glibc's static getaddrinfo still reads
# /etc/hosts and DNS in a scratch container (checked). The webhook, a cluster
# service, keeps its ldd closure. It comes last: its image carries the lock
# written before it.
# The core's image holds two binaries: the daemon (attestd), and the operator
# commands (attestd-tools) it execs for `attestd client`, the sidecar's probe.
#   name  package  binaries (the first names the image)  containerfile  linking
COMPONENTS=(
    "attestd attestd attestd,attestd-tools containers/attestd.Containerfile static"
    "webhook attestd-webhook attestd-webhook containers/webhook/Containerfile dynamic"
)

for spec in "${PLUGINS[@]}"; do
    read -r tee plugin manifest transport linking <<<"$spec"
    selected "$tee" || continue
    echo "== $tee: building $plugin ($linking)" >&2
    version=$(cargo pkgid --manifest-path "$manifest" -p "$plugin" 2>/dev/null | sed -E 's/.*[@#]([0-9][^ ]*)$/\1/')
    # The sample serves both transports for the tests; its image links only the
    # one it is pinned with (1.1 MB less: docs/benchmarks.md, "Against upstream").
    features=()
    [ "$plugin" = attester-sample ] && features=(--no-default-features --features "$transport")
    RUSTFLAGS="$(rustflags_for "$linking")" \
        cargo build --release --locked --manifest-path "$PWD/$manifest" -p "$plugin" --target "$TARGET" "${features[@]}"
    dir=$(dirname "$manifest")
    bin="$dir/target/$TARGET/release/$plugin"
    root="$STAGE/$tee/rootfs"
    rm -rf "$STAGE/$tee"
    mkdir -p "$root"
    cp "$bin" "$root/attester"
    strip "$root/attester"
    if [ "$linking" = static ]; then
        require_static "$root/attester" "$plugin"
    else
        # az-cvm-vtpm hard-codes the device TCTI; the TPM plugin takes any.
        case $tee in
            az-*) tctis="device" ;;
            *) tctis="device swtpm mssim cmd" ;;
        esac
        stage_closure "$bin" "$root" "$tctis"
    fi
    image="localhost/attestd/$plugin"
    podman build --runtime runc --timestamp 0 -q \
        -f containers/Containerfile \
        --build-arg TEE="$tee" --build-arg PLUGIN="$plugin" --build-arg TRANSPORT="$transport" \
        --build-arg API="$API" --build-arg VERSION="$version" \
        -t "$image:$version" "$STAGE/$tee" >/dev/null
    digest=$(podman image inspect --format '{{.Digest}}' "$image:$version")
    size=$(podman image inspect --format '{{.Size}}' "$image:$version")
    printf '%-8s %s@%s  %s bytes (%s KiB)\n' "$tee" "$image" "$digest" "$size" "$((size / 1024))"
    kept[images.$tee]=$(printf '[images.%s]\nimage = "%s"\ndigest = "%s"\ntransport = "%s"\napi = %s\nplugin = "%s"\nversion = "%s"\nsize = %s\nrustc = "%s"\n' \
        "$tee" "$image" "$digest" "$transport" "$API" "$plugin" "$version" "$size" "$RUSTC_VERSION")
done

# Third parties' plugins: each its own workspace, built static with the shipped
# profile, in an image FROM scratch that declares what attestd needs to select
# and start it. Their metadata is read, never executed.
for dir in ${plugin_dirs[@]+"${plugin_dirs[@]}"}; do
    # A crate in this checkout is built through the fixed path, as the others
    # are; one elsewhere has its own path mapped out of the binary.
    case $dir in
        "$(pwd -P)"/*) dir="$PWD/${dir#"$(pwd -P)"/}"; plugin_remap= ;;
        *) plugin_remap="--remap-path-prefix=$dir=/plugin" ;;
    esac
    plugin_metadata "$dir" || exit 1
    plugin=$plugin_name version=$plugin_version tee=$plugin_tee transport=$plugin_transport
    probe=$plugin_probe devices=$plugin_devices
    echo "== $tee: building $plugin from $dir (static)" >&2
    RUSTFLAGS="$(rustflags_for static) $plugin_remap" \
        cargo build --release --locked --manifest-path "$dir/Cargo.toml" --bin "$plugin" --target "$TARGET"
    root="$STAGE/$tee/rootfs"
    rm -rf "$STAGE/$tee"
    mkdir -p "$root"
    cp "$plugin_target_dir/$TARGET/release/$plugin" "$root/attester"
    strip "$root/attester"
    require_static "$root/attester" "$plugin"
    image="localhost/attestd/$plugin"
    podman build --runtime runc --timestamp 0 -q \
        -f containers/Containerfile \
        --build-arg TEE="$tee" --build-arg PLUGIN="$plugin" --build-arg TRANSPORT="$transport" \
        --build-arg API="$API" --build-arg VERSION="$version" \
        --label org.attestd.probe="$probe" --label org.attestd.devices="$devices" \
        -t "$image:$version" "$STAGE/$tee" >/dev/null
    digest=$(podman image inspect --format '{{.Digest}}' "$image:$version")
    size=$(podman image inspect --format '{{.Size}}' "$image:$version")
    printf '%-8s %s@%s  %s bytes (%s KiB)\n' "$tee" "$image" "$digest" "$size" "$((size / 1024))"
    # JSON arrays of plain strings are TOML arrays too.
    kept[images.$tee]=$(printf '[images.%s]\nimage = "%s"\ndigest = "%s"\ntransport = "%s"\napi = %s\nplugin = "%s"\nversion = "%s"\nsize = %s\nrustc = "%s"\nprobe = %s\ndevices = %s\n' \
        "$tee" "$image" "$digest" "$transport" "$API" "$plugin" "$version" "$size" "$RUSTC_VERSION" "$probe" "$devices")
done

# Sections not rebuilt now stay as they were.
merge_kept() {
    [ -f "$LOCK" ] || return 0
    local current="" line
    while IFS= read -r line; do
        if [[ $line =~ ^\[((images|components)\.[a-z0-9-]+)\]$ ]]; then
            current=${BASH_REMATCH[1]}
            [ -n "${kept[$current]+x}" ] && current="" && continue
            kept[$current]="$line"$'\n'
        elif [ -n "$current" ] && [ -n "$line" ]; then
            kept[$current]+="$line"$'\n'
        fi
    done < "$LOCK"
}

write_lock() {
    local out section body
    out=$(mktemp)
    {
        echo "# Generated by containers/build.sh: the attester images built here, by TEE,"
        echo "# and the core's and webhook's images. attestd and attestd-webhook pin them"
        echo "# by these digests (name@sha256:...)."
    } > "$out"
    for section in $(printf '%s\n' "${!kept[@]}" | sort); do
        body=${kept[$section]}
        while [[ $body == *$'\n' ]]; do body=${body%$'\n'}; done
        printf '\n%s\n' "$body" >> "$out"
    done
    mv "$out" "$LOCK"
}

build_component() {
    local name=$1 package=$2 binaries=$3 containerfile=$4 linking=$5
    echo "== $name: building $package ($linking)" >&2
    local version bin root image digest size binary bin_flags=()
    local -a all
    IFS=, read -r -a all <<<"$binaries"
    for binary in "${all[@]}"; do bin_flags+=(--bin "$binary"); done
    version=$(cargo pkgid -p "$package" 2>/dev/null | sed -E 's/.*[@#]([0-9][^ ]*)$/\1/')
    RUSTFLAGS="$(rustflags_for "$linking")" cargo build --release --locked --manifest-path "$PWD/Cargo.toml" \
        -p "$package" "${bin_flags[@]}" --target "$TARGET"
    root="$STAGE/$name/rootfs"
    rm -rf "$STAGE/$name"
    mkdir -p "$root"
    for binary in "${all[@]}"; do
        bin="target/$TARGET/release/$binary"
        cp "$bin" "$root/$binary"
        strip "$root/$binary"
        if [ "$linking" = static ]; then
            require_static "$root/$binary" "$binary"
        else
            stage_closure "$bin" "$root" ""
        fi
    done
    binary=${all[0]}
    if [ "$name" = webhook ]; then
        mkdir -p "$root/etc/attestd-webhook"
        # Without its own entry: an image cannot hold its own digest, and a
        # previous one would change the bytes on every rebuild.
        awk '/^\[/ { skip = ($0 == "[components.webhook]") } !skip' "$LOCK" \
            > "$root/etc/attestd-webhook/images.lock"
    fi
    image="localhost/attestd/$binary"
    podman build --runtime runc --timestamp 0 -q -f "$containerfile" \
        --build-arg VERSION="$version" -t "$image:$version" "$STAGE/$name" >/dev/null
    digest=$(podman image inspect --format '{{.Digest}}' "$image:$version")
    size=$(podman image inspect --format '{{.Size}}' "$image:$version")
    printf '%-8s %s@%s  %s bytes (%s KiB)\n' "$name" "$image" "$digest" "$size" "$((size / 1024))"
    kept[components.$name]=$(printf '[components.%s]\nimage = "%s"\ndigest = "%s"\nversion = "%s"\nsize = %s\nrustc = "%s"\n' \
        "$name" "$image" "$digest" "$version" "$size" "$RUSTC_VERSION")
}

merge_kept
write_lock
for spec in "${COMPONENTS[@]}"; do
    read -r name package binaries containerfile linking <<<"$spec"
    selected "$name" || continue
    build_component "$name" "$package" "$binaries" "$containerfile" "$linking"
    write_lock
done
echo "wrote $LOCK" >&2
