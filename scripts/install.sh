#!/usr/bin/env bash
# Build and install attestd and the chosen attesters, as shipped (the shipped
# release profile, no test-only features), with a system configuration, its
# systemd units, the example configs and the image list.
#
#   scripts/install.sh [--prefix DIR] [--destdir DIR] [--unitdir DIR]
#                      [--profile release|debug] [--no-build] [--plugin DIR]… [TEE…]
#
# TEE: sample tpm tdx snp az-snp-vtpm az-tdx-vtpm (default: sample, unless a
# --plugin is given). Each hardware attester is its own workspace, built with its
# own Cargo.lock. --plugin DIR: a third party's plugin crate, whose Cargo.toml's
# [package.metadata.attestd] names its TEE, transport, probe and devices (needs
# jq). The first TEE (the TEEs, then the plugins) is the primary plugin of the
# system configuration.
#
# Installs, under DESTDIR (for image builds; default none) and PREFIX (default /usr,
# where attestd's defaults look):
#   PREFIX/bin/attestd, PREFIX/bin/attester-<tee>   (a --plugin: its own binary name;
#                                                    attestd finds a plugin's bare
#                                                    command name next to itself)
#   PREFIX/bin/attestd-tools                         (the operator commands: attestd
#                                                    execs it for `attestd <command>`)
#   /etc/attestd/attestd.toml                        (the system configuration; an
#                                                    existing one is kept)
#   /etc/attestd/attestd.toml.d/50-attestd-<tee>.toml (written with the units: the
#                                                    plugin runs as its own unit)
#   UNITDIR/attestd.service, attestd-<tee>.service, attestd-<tee>.path,
#   confidential-data-hub.path                       (`attestd units`; UNITDIR is
#                                                    PREFIX/lib/systemd/system for /usr and
#                                                    /usr/local, else /etc/systemd/system:
#                                                    where systemd looks)
#   PREFIX/share/attestd/examples/*.toml             (the example configs)
#   PREFIX/share/attestd/images.lock                 (when containers/build.sh made one)
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=/usr
destdir=
unitdir=
profile=release
build=1
tees=()
plugin_dirs=()
while [ $# -gt 0 ]; do
    case $1 in
        --prefix) prefix=$2; shift 2 ;;
        --destdir) destdir=$2; shift 2 ;;
        --unitdir) unitdir=$2; shift 2 ;;
        --profile) profile=$2; shift 2 ;;
        --no-build) build=0; shift ;;
        --plugin) plugin_dirs+=("$(realpath -e "$2")") || exit 2; shift 2 ;;
        -h|--help) sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "install.sh: unknown option $1" >&2; exit 2 ;;
        *) tees+=("$1"); shift ;;
    esac
done
[ ${#tees[@]} -gt 0 ] || [ ${#plugin_dirs[@]} -gt 0 ] || tees=(sample)
# Where systemd looks: its own unit path for /usr and /usr/local, else /etc.
if [ -z "$unitdir" ]; then
    case $prefix in
        /usr|/usr/local) unitdir=$prefix/lib/systemd/system ;;
        *) unitdir=/etc/systemd/system ;;
    esac
fi
case $prefix in
    /*) ;;
    *) echo "install.sh: --prefix must be an absolute path (the units name it), not $prefix" >&2; exit 2 ;;
esac
case $profile in
    release) flag=(--release) ;;
    debug) flag=() ;;
    *) echo "install.sh: --profile is release or debug, not $profile" >&2; exit 2 ;;
esac

# Where each attester is built and how it serves.
manifest() {
    case $1 in
        sample) echo Cargo.toml ;;
        tpm|tdx|snp|az-snp-vtpm|az-tdx-vtpm) echo "attesters/$1/Cargo.toml" ;;
        *) echo "install.sh: unknown TEE $1 (sample tpm tdx snp az-snp-vtpm az-tdx-vtpm)" >&2; return 1 ;;
    esac
}
# Where cargo put it (CARGO_TARGET_DIR, when set, holds every workspace's build).
target_dir() {
    case $1 in
        sample) echo "${CARGO_TARGET_DIR:-target}/$profile" ;;
        *) echo "${CARGO_TARGET_DIR:-attesters/$1/target}/$profile" ;;
    esac
}
transport() {
    case $1 in
        az-*) echo grpc ;;
        *) echo ttrpc ;;
    esac
}
for tee in ${tees[@]+"${tees[@]}"}; do manifest "$tee" >/dev/null; done

# Third parties' plugins: what their metadata declares, by TEE.
. scripts/plugin-metadata.sh
declare -A p_dir=() p_bin=() p_target=() p_transport=() p_extra=()
p_tees=()
for dir in ${plugin_dirs[@]+"${plugin_dirs[@]}"}; do
    plugin_metadata "$dir" || exit 1
    tee=$plugin_tee
    p_tees+=("$tee")
    p_dir[$tee]=$dir
    p_bin[$tee]=$plugin_name
    p_target[$tee]="$plugin_target_dir/$profile"
    p_transport[$tee]=$plugin_transport
    p_extra[$tee]=$(printf 'devices = %s\nprobe = %s' "$plugin_devices" "$plugin_probe")
done
all=(${tees[@]+"${tees[@]}"} ${p_tees[@]+"${p_tees[@]}"})
# The binary each TEE's plugin installs as.
bin_name() { if [ -n "${p_bin[$1]+x}" ]; then echo "${p_bin[$1]}"; else echo "attester-$1"; fi; }
built_at() { if [ -n "${p_target[$1]+x}" ]; then echo "${p_target[$1]}"; else target_dir "$1"; fi; }

if [ $build = 1 ]; then
    # The shipped profile for every workspace (Cargo.toml's [profile.release]).
    . scripts/shipped-profile.sh
    # Only what ships: the core alone (not the workspace, whose test crate would
    # add test-only features), then each attester as shipped.
    cargo build "${flag[@]}" --locked -p attestd --bin attestd --bin attestd-tools
    for tee in ${tees[@]+"${tees[@]}"}; do
        if [ "$tee" = sample ]; then
            cargo build "${flag[@]}" --locked -p attester-sample --bin attester-sample
        else
            cargo build "${flag[@]}" --locked --manifest-path "$(manifest "$tee")" --bins
        fi
    done
    for tee in ${p_tees[@]+"${p_tees[@]}"}; do
        cargo build "${flag[@]}" --locked --manifest-path "${p_dir[$tee]}/Cargo.toml" --bin "${p_bin[$tee]}"
    done
fi

# The system configuration: each installed attester as a process plugin, the first
# one primary. Written and checked by the attestd just built before anything is
# installed: a plugin's probe or devices that attestd would refuse stop the
# install here, with nothing made. An operator's file is never overwritten.
stage=$(mktemp -d /tmp/attestd-install.XXXXXX)
trap 'rm -rf "$stage"' EXIT
{
    echo "# Written by scripts/install.sh. Drop-ins in attestd.toml.d/ (read after this"
    echo "# file, in lexical order) change it; \`attestd config\` shows every key's origin."
    echo "[plugins]"
    echo "primary = \"${all[0]}\""
    for tee in ${tees[@]+"${tees[@]}"}; do
        printf '\n[plugins.attester.%s]\nlaunch = "process"\ncommand = "attester-%s"\ntransport = "%s"\ntee = "%s"\n' \
            "$tee" "$tee" "$(transport "$tee")" "$tee"
    done
    for tee in ${p_tees[@]+"${p_tees[@]}"}; do
        printf '\n[plugins.attester.%s]\nlaunch = "process"\ncommand = "%s"\ntransport = "%s"\ntee = "%s"\n%s\n' \
            "$tee" "${p_bin[$tee]}" "${p_transport[$tee]}" "$tee" "${p_extra[$tee]}"
    done
} >"$stage/attestd.toml"
mkdir "$stage/etc"
if [ -x "$(target_dir sample)/attestd-tools" ] &&
    ! "$(target_dir sample)/attestd-tools" config --config-dir "$stage/etc" -c "$stage/attestd.toml" >/dev/null 2>"$stage/why"; then
    echo "install.sh: attestd refuses the configuration it would install, so nothing is installed:" >&2
    cat "$stage/why" >&2
    exit 1
fi

# Everything to install is there before anything is installed: no half-made prefix.
bins=("$(target_dir sample)/attestd" "$(target_dir sample)/attestd-tools")
for tee in "${all[@]}"; do bins+=("$(built_at "$tee")/$(bin_name "$tee")"); done
for bin in "${bins[@]}"; do
    if [ ! -x "$bin" ]; then
        echo "install.sh: $bin is not built: run without --no-build (or build it with --profile $profile first)" >&2
        exit 1
    fi
done

root=$destdir$prefix
etc=$destdir/etc/attestd

install -d -m 0755 "$root/bin" "$root/share/attestd/examples" "$etc" "$destdir$unitdir"
install -m 0755 "$(target_dir sample)/attestd" "$root/bin/attestd"
# `attestd <command>` (and the unit's ExecReload) execs it from beside attestd.
install -m 0755 "$(target_dir sample)/attestd-tools" "$root/bin/attestd-tools"
for tee in "${all[@]}"; do
    install -m 0755 "$(built_at "$tee")/$(bin_name "$tee")" "$root/bin/$(bin_name "$tee")"
done
install -m 0644 docs/examples/*.toml "$root/share/attestd/examples/"
if [ -f containers/images.lock ]; then
    install -m 0644 containers/images.lock "$root/share/attestd/images.lock"
fi

if [ -e "$etc/attestd.toml" ]; then
    echo "install.sh: kept the existing $etc/attestd.toml"
else
    install -m 0644 "$stage/attestd.toml" "$etc/attestd.toml.tmp"
    mv "$etc/attestd.toml.tmp" "$etc/attestd.toml"
fi

# The units, rendered by the attestd just installed for where it will run: the
# primary plugin as its own service, attestd after it, and the drop-in telling
# attestd so.
"$root/bin/attestd" units --config-dir "$etc" -c "$etc/attestd.toml" \
    --config-path /etc/attestd/attestd.toml --attestd "$prefix/bin/attestd" \
    --out-dir "$destdir$unitdir" --drop-in-dir "$etc/attestd.toml.d" >/dev/null
echo "installed attestd and ${all[*]} under $root, its configuration in $etc, its units in $destdir$unitdir"
if [ -z "$destdir" ]; then
    echo "next: systemctl daemon-reload && systemctl enable --now attestd-${all[0]}.service attestd-${all[0]}.path"
fi
if [ "$prefix" != /usr ]; then
    echo "note: attestd looks for $prefix/share/attestd/images.lock only when [plugins] images_lock says so (default /usr/share/attestd/images.lock)"
fi
