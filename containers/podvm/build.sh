#!/usr/bin/env bash
# Build the generic pod VM: one Debian image for every TEE. It holds the kernel's
# modules, systemd, runc (and podman, for --registry), attestd (the binaries of
# the pinned attestd image) and its units, /usr/share/attestd/images.lock, and
# every attester image of that lock prefetched into attestd's OCI layout and
# unpacked (`attestd prefetch`): at boot attestd selects the TEE (primary =
# "auto") and runs its pinned image with runc (launch "oci"), nothing pulled.
#
# The root disk is dm-verity: its root hash is in the initramfs, which the
# launch measures, and the initramfs mounts it read-only (containers/podvm/init).
# podvm.json and reference-values.json give the PCRs a UEFI vTPM boot of this
# kernel, initramfs and command line yields (containers/podvm/reference-values.py).
#
# Usage: containers/podvm/build.sh [--out DIR] [--registry REG] [--cmdline LINE] [--memory MIB] [--coco] [--test-hooks]
#   --out DIR       where rootfs.img, vmlinuz, initrd.img, podvm.json go
#                   (default target/podvm)
#   --cmdline LINE  the kernel command line the VM is launched with, which the
#                   reference values cover (default "root=/dev/vda console=ttyS0
#                   panic=-1")
#   --memory MIB    the VM's memory, which the reference values cover (qemu puts
#                   the initramfs below its top; default 1024)
#   --registry REG  fetch at boot instead of prefetching: the VM's images.lock
#                   names each attester image REG/<its name> at the same digest
#                   (publish them there first, digests kept: skopeo copy
#                   --preserve-digests), REG is the one registry attestd may
#                   pull from, and nothing is prefetched. What is accepted is the
#                   tenant's policy.json, from init-data (docs/deployment.md).
#   --coco          a peer pod's VM: upstream's Confidential Containers guest
#                   around attestd, as cloud-api-adaptor's images run it —
#                   kata-agent (guest_components_procs = "none", the agent
#                   policy from init-data or allow-all), agent-protocol-forwarder
#                   on TCP 15150 (TLS from apf.json), the Confidential Data Hub
#                   (image pull and decryption, keys from the KBS through
#                   attestd) and api-server-rest in the pod's network namespace,
#                   and a pause bundle (containers/pause.c). Their binaries come
#                   from the cache scripts/peers-build.sh fills (ATTESTD_PEERS),
#                   at the commits scripts/peers.pins names.
#   --test-hooks    for the boot tests, never for a real pod VM: the initramfs
#                   honours attestd.unverified_root (no dm-verity, said on the
#                   console) and the qemu guest agent runs (the host runs
#                   commands in the guest); without --coco, a stand-in for the
#                   Confidential Data Hub too (started on attestd's socket as CDH
#                   is, it relays TCP port 50000 to the AA socket, so the host can
#                   call the AA API). They hand the guest to the host.
#
# Needs root (debootstrap, chroot), the images of containers/build.sh (every
# [images.*] of containers/images.lock, and the attestd component), and Debian's
# mirror. The debootstrapped base is cached under target/podvm-cache, keyed by
# what goes into it; attestd, the lock and the images go in at every build.
set -euo pipefail
cd "$(dirname "$0")/../.."
. scripts/lib.sh

OUT=target/podvm
CMDLINE="root=/dev/vda console=ttyS0 panic=-1"
MEMORY=1024
HOOKS=0
COCO=0
REGISTRY=
while [ $# -gt 0 ]; do
    case $1 in
        --out) OUT=$2; shift 2 ;;
        --test-hooks) HOOKS=1; shift ;;
        --coco) COCO=1; shift ;;
        --registry) REGISTRY=$2; shift 2 ;;
        --cmdline) CMDLINE=$2; shift 2 ;;
        --memory) MEMORY=$2; shift 2 ;;
        *) echo "error: unknown argument $1" >&2; exit 2 ;;
    esac
done
# host[:port][/path], as [plugins] registries takes it.
if [ -n "$REGISTRY" ] && ! [[ $REGISTRY =~ ^[a-z0-9.-]+(:[0-9]+)?(/[a-z0-9._-]+)*$ && $REGISTRY =~ ^[^/]*[.:] ]]; then
    echo "error: --registry $REGISTRY: expected host[:port][/path] (a registry host has a dot or a port)" >&2
    exit 2
fi
[ "$(id -u)" = 0 ] || { echo "error: the pod VM build needs root (debootstrap, chroot)" >&2; exit 1; }
ensure_rust
# skopeo and umoci: `attestd prefetch` copies and unpacks the images with them;
# busybox-static and cpio: the initramfs; cryptsetup-bin: veritysetup, which
# hashes the root disk.
ensure_packages debootstrap e2fsprogs skopeo umoci podman busybox-static cpio cryptsetup-bin
LOCK=containers/images.lock
[ -f "$LOCK" ] || { echo "error: no $LOCK: run containers/build.sh first" >&2; exit 1; }

# The upstream guest programs (--coco): each from the peers cache, at its pin.
peer() { # project: its cache folder, built at the pinned commit (scripts/lib.sh)
    peer_dir "$1" || {
        echo "error: --coco needs $1 at its pin in ${ATTESTD_PEERS:-/var/cache/attestd/peers}: run scripts/peers-build.sh" >&2
        return 1
    }
}
if [ "$COCO" = 1 ]; then
    # gcc: the pause bundle's one program (static).
    ensure_packages gcc libc6-dev
    P_AGENT=$(peer kata-agent) && P_CAA=$(peer cloud-api-adaptor) && P_GC=$(peer guest-components) &&
        P_KATA=$(peer kata-containers) || exit 1
    for f in "$P_AGENT/kata-agent" "$P_CAA/agent-protocol-forwarder" "$P_GC/ttrpc-cdh" "$P_GC/api-server-rest" \
        "$P_KATA/allow-all.rego"; do
        [ -f "$f" ] || { echo "error: --coco: $f is missing: run scripts/peers-build.sh" >&2; exit 1; }
    done
fi

START=$(date +%s)
SUITE=bookworm
MIRROR=${ATTESTD_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# containernetworking-plugins by name: debootstrap does not resolve podman's
# virtual container-network-stack.
# skopeo: attestd pulls a pinned image the store lacks with it (and checks its
# signatures by policy).
# dmsetup: the initramfs opens the root disk with it (dm-verity).
# iptables: agent-protocol-forwarder's tunnel (--coco) runs it.
PACKAGES=systemd-sysv,udev,podman,runc,skopeo,kmod,iproute2,initramfs-tools,zstd,containernetworking-plugins,dmsetup,iptables
[ "$HOOKS" = 1 ] && PACKAGES=$PACKAGES,socat,qemu-guest-agent
# The initramfs (containers/podvm/init) mounts the root disk: virtio block
# first, then SCSI (Hyper-V, virtio-scsi) and NVMe; ext4. And virtio's entropy
# source, where the hypervisor gives one, before anything asks for randomness.
# Beside them, on the other CPU: dm-verity, and overlay for /var on memory.
INITRAMFS_MODULES="virtio_pci virtio_blk ext4 virtio_rng"
INITRAMFS_MODULES_DM="dm_verity overlay"
INITRAMFS_MODULES_2="virtio_scsi sd_mod hv_storvsc nvme"
# The kernel modules a pod VM keeps (with what they depend on); every other one
# goes. The supported hypervisors' devices (virtio under QEMU/KVM, VMBus under
# Hyper-V/Azure, NVMe), ext4 and overlay (podman's store, for --registry), vsock
# (kata's agent channel), SCSI disks, dm-verity (the root disk), configfs (where
# configfs-tsm's reports appear; systemd mounts it), the TPM interfaces, the TEE guest drivers (sev-guest;
# tdx-guest and configfs-tsm's tsm where the kernel has them), qemu_fw_cfg, and
# isofs (for whoever mounts the cidata disk; attestd-podvm reads it from the
# device) with SCSI CD drives (libvirt's and byom's cidata disk).
# Containers get no network of their own (none, the host's, or with --coco the
# pod's namespace, which agent-protocol-forwarder joins to the worker node by a
# VXLAN tunnel), so no bridge. The forwarder's netlink library opens an XFRM
# and a netfilter netlink socket for every namespace handle, and its tunnel
# exempts the VXLAN port from connection tracking (iptables' raw table,
# NOTRACK): their modules stay.
KEEP_MODULES="virtio_pci virtio_blk virtio_scsi virtio_net virtio_console virtio_rng virtio_balloon
virtio_mmio sd_mod ext4 overlay vsock vmw_vsock_virtio_transport hv_vmbus hv_storvsc hv_netvsc hv_utils
hv_sock hv_balloon pci-hyperv hyperv_keyboard nvme dm_verity configfs tpm_tis tpm_crb sev-guest tdx-guest tsm
qemu_fw_cfg isofs sr_mod vxlan xfrm_user nfnetlink nf_tables nft_compat xt_comment xt_tcpudp xt_CT iptable_raw"
# Bump when the base steps below change: it keys the cache.
RECIPE=7
CACHE=target/podvm-cache
KEY=$(printf '%s\n' "$RECIPE" "$SUITE" "$MIRROR" "$PACKAGES" "$KEEP_MODULES" | sha256sum | cut -c1-16)
BASE=$CACHE/base-$KEY.tar
WORK=$(mktemp -d /tmp/attestd-podvm.XXXXXX)
ROOT=$WORK/root
cleanup() {
    # podman's overlay driver bind-mounts its directory: undo before removing.
    umount -R "$ROOT/var/lib/containers/storage/overlay" 2>/dev/null || true
    for m in dev/pts dev proc sys; do umount "$ROOT/$m" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

CACHED=true
if [ ! -f "$BASE" ]; then
    CACHED=false
    echo "== pod VM base: debootstrap $SUITE ($PACKAGES)"
    mkdir -p "$CACHE"
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
        { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
    # The kernel's package makes an initramfs-tools initramfs, which the pod VM
    # does not use (below): keep that one small.
    printf 'MODULES=list\nCOMPRESS=zstd\n' >"$ROOT/etc/initramfs-tools/conf.d/attestd-podvm.conf"
    mount -t proc proc "$ROOT/proc"
    mount -t sysfs sys "$ROOT/sys"
    mount --bind /dev "$ROOT/dev"
    chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends linux-image-amd64 >"$WORK/kernel.log" 2>&1 ||
        { tail -20 "$WORK/kernel.log" >&2; exit 1; }
    chroot "$ROOT" apt-get clean
    for m in dev proc sys; do umount "$ROOT/$m"; done
    # What a pod VM never reads: documentation, locales, and the modules of
    # hardware and features it does not have.
    rm -rf "$ROOT"/usr/share/{doc,man,info,locale}/* "$ROOT"/var/lib/apt/lists/*
    kdir=$(echo "$ROOT"/usr/lib/modules/*)
    kver=$(basename "$kdir")
    # shellcheck disable=SC2086 # one word per module
    keep=$(for m in $KEEP_MODULES; do chroot "$ROOT" modprobe --show-depends -S "$kver" "$m" 2>/dev/null || true; done |
        awk '$1 == "insmod" { sub(/.*\/kernel\//, "kernel/", $2); print $2 }' | sort -u)
    (cd "$kdir" && find kernel -name '*.ko*') | sort | comm -23 - <(echo "$keep") | (cd "$kdir" && xargs -r rm -f)
    find "$kdir/kernel" -type d -empty -delete
    echo "pod VM base: kept $(echo "$keep" | wc -l) kernel modules" >&2
    chroot "$ROOT" depmod "$kver"
    # A generic image: each VM makes its own machine id at first boot.
    : >"$ROOT/etc/machine-id"
    rm -f "$ROOT/var/lib/dbus/machine-id"
    tar --xattrs --xattrs-include='*' -C "$ROOT" -cf "$BASE.tmp" .
    mv "$BASE.tmp" "$BASE"
    rm -rf "$ROOT"
fi
mkdir -p "$ROOT"
tar --xattrs --xattrs-include='*' -C "$ROOT" -xf "$BASE"
if [ -z "$REGISTRY" ]; then
    # The prefetched VM runs its attester with runc alone: no container engine,
    # nor what only pulls need (91 MiB of the disk).
    chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive apt-get purge -y -q --auto-remove \
        podman skopeo containernetworking-plugins >"$WORK/purge.log" 2>&1 ||
        { tail -20 "$WORK/purge.log" >&2; exit 1; }
fi

echo "== pod VM: attestd, its configuration and units"
# attestd is the binary of the pinned attestd image: the pod VM runs what the
# lock names, not whatever this checkout builds.
component() { sed -n "/^\[components\.$1\]/,/^\[/p" "$LOCK" | sed -n "s/^$2 = \"\(.*\)\"/\1/p"; }
core_image=$(component attestd image)
core_digest=$(component attestd digest)
[ -n "$core_digest" ] || { echo "error: $LOCK has no [components.attestd]: containers/build.sh attestd" >&2; exit 1; }
cid=$(podman create "$core_image@$core_digest")
podman cp "$cid:/attestd" "$ROOT/usr/bin/attestd"
podman cp "$cid:/attestd-tools" "$ROOT/usr/bin/attestd-tools"
podman rm "$cid" >/dev/null
cargo build --release --locked -q -p attestd-podvm
install -m 0755 target/release/attestd-podvm "$ROOT/usr/bin/attestd-podvm"
# At every boot, before any unit starts: whether provisioning must wait for
# systemd-tmpfiles-setup (only where tmpfiles.d has entries for /run/peerpod).
install -d "$ROOT/usr/lib/systemd/system-generators"
printf '#!/bin/sh\nexec /usr/bin/attestd-podvm generator "$@"\n' \
    >"$ROOT/usr/lib/systemd/system-generators/attestd-podvm"
chmod 0755 "$ROOT/usr/lib/systemd/system-generators/attestd-podvm"

# The attester images only, each prefetched below.
install -d "$ROOT/usr/share/attestd" "$ROOT/etc/attestd/attestd.toml.d"
# Where cloud-api-adaptor's images mount the cidata disk (attestd-podvm reads
# the disk without mounting it, and reads this directory when someone did).
install -d -m 0700 "$ROOT/media/cidata"
awk '/^\[components\./ {skip=1; next} /^\[/ {skip=0} !skip' "$LOCK" >"$ROOT/usr/share/attestd/images.lock"
if [ -n "$REGISTRY" ]; then
    # Same digests, the registry's names: localhost/attestd/attester-tpm becomes
    # $REGISTRY/attester-tpm.
    sed -i -E "s|^image = \"[^\"]*/([^/\"]+)\"|image = \"$REGISTRY/\1\"|" "$ROOT/usr/share/attestd/images.lock"
fi
cat >"$ROOT/etc/attestd/attestd.toml" <<'EOF'
# The -c file, /run/peerpod/aa.toml, never decides what attestd launches: from
# init-data (measured) it may set all but [plugins]' launch keys; from user-data
# (unmeasured; attestd.env says ATTESTD_CONFIG_FILE_SOURCE=user-data) only
# upstream attestation-agent's [token_configs] and [eventlog_config] keys.
[config_file]
source = "init-data"

# The generic pod VM: attestd probes the machine at start, selects the TEE and
# runs the image /usr/share/attestd/images.lock pins for it.
[plugins]
primary = "auto"
EOF
if [ -z "$REGISTRY" ]; then
    cat >>"$ROOT/etc/attestd/attestd.toml" <<'EOF'
# Prefetched when the image was built, into the oci backend's layout and
# unpacked (`attestd prefetch`): runc runs the attester, no container engine in
# the boot path (docs/deployment.md, "Why runc, not podman, in the pod VM").
auto_launch = "oci"
EOF
else
    # podman's store: the initramfs puts memory there (the root is read-only,
    # and podman's overlay does not stack on /var's).
    install -d -m 0700 "$ROOT/var/lib/containers"
    cat >>"$ROOT/etc/attestd/attestd.toml" <<EOF
# Pulled at boot by podman, which applies the tenant's containers-policy.json.
auto_launch = "podman"
podman_runtime = "runc"
# Fetched at boot from $REGISTRY (nothing prefetched), by digest, accepted by
# the tenant's containers-policy.json from init-data (attestd-podvm never takes
# one from user-data); the registry's CA and its signatures' lookaside
# (registries.d) may come with user-data. Without a policy.json from init-data,
# attestd pulls nothing.
registries = ["$REGISTRY"]
policy_json = "/run/peerpod/policy.json"
registry_certs_dir = "/run/peerpod/certs.d"
registries_d = "/run/peerpod/registries.d"
EOF
fi
# The units as the VM's own attestd renders them (not a `cargo run`: rebuilding
# the debug attestd alone would drop the features the test suite built it with).
"$ROOT/usr/bin/attestd" units --at-boot --config-dir "$ROOT/etc/attestd" -c "$ROOT/etc/attestd/attestd.toml" \
    --config-path /run/peerpod/aa.toml --out-dir "$ROOT/etc/systemd/system" >/dev/null ||
    { echo "error: the pinned attestd image cannot render the units: rebuild it (containers/build.sh attestd)" >&2; exit 1; }
install -d "$ROOT/etc/systemd/system/attestd.service.d"
cat >"$ROOT/etc/systemd/system/attestd.service.d/10-podvm.conf" <<'EOF'
# The pod VM: user-data (init-data) is written to /run/peerpod first, then
# attestd starts on it, binding the init-data digest when one came.
# attestd needs no more of the boot than that: the root file system (mounted
# read-only through dm-verity by the initramfs, /var an overlay on memory) and
# the journal's socket. It starts without waiting for
# sysinit.target (udev's coldplug and the rest run beside it), which takes
# about 2 s under emulation; the TPM drivers are built into the kernel, and
# attestd-provision loads the TEE guest drivers that are modules.
[Unit]
Requires=attestd-provision.service
After=attestd-provision.service
DefaultDependencies=no
After=systemd-journald.socket
Conflicts=shutdown.target
Before=shutdown.target

[Service]
EnvironmentFile=/run/peerpod/attestd.env
ExecStart=
ExecStart=/usr/bin/attestd -c /run/peerpod/aa.toml $ATTESTD_INITDATA
EOF
cat >"$ROOT/etc/systemd/system/attestd-provision.service" <<'EOF'
[Unit]
Description=attestd: user-data and init-data to /run/peerpod
DefaultDependencies=no
After=systemd-journald.socket systemd-modules-load.service
# configfs, where the TEE guest drivers loaded below put configfs-tsm's
# report directory: mounted before attestd (after this unit) probes for it.
Wants=sys-kernel-config.mount
After=sys-kernel-config.mount
# Files other units put in /run/peerpod stay (cloud-api-adaptor's images copy
# a default policy.rego and auth.json there with systemd-tmpfiles). Where the
# image's tmpfiles.d has such entries, the generator (attestd-podvm generator)
# orders this unit after systemd-tmpfiles-setup, so init-data's files take their
# names last; elsewhere that wait (the journal's flush) stays off the path.
Before=attestd.service
Conflicts=shutdown.target
Before=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
# The TEE guest drivers that are modules, loaded where their device is (udev
# would, but attestd does not wait for its coldplug): sev-guest on SEV-SNP,
# tdx-guest on TDX (kernels that have it).
ExecStartPre=-/bin/sh -c '[ ! -e /sys/bus/platform/devices/sev-guest ] || modprobe sev-guest; ! grep -qw tdx_guest /proc/cpuinfo || modprobe -q tdx-guest'
# Where the user-data comes from: qemu's fw_cfg, the cidata disk, or the
# cloud's metadata service (CPUID and DMI say which). The network is not waited
# for: a metadata service is asked again until it answers, within the fetch
# timeout (180 s); the unit's own start timeout must stay above it.
ExecStart=/usr/bin/attestd-podvm provision --from auto
TimeoutStartSec=240

[Install]
WantedBy=multi-user.target
EOF
if [ "$HOOKS" = 1 ] && [ "$COCO" = 0 ]; then
    cat >"$ROOT/etc/systemd/system/confidential-data-hub.service" <<'EOF'
[Unit]
Description=Stand-in for the Confidential Data Hub: the AA API relayed to TCP 50000 (tests)

[Service]
ExecStart=/usr/bin/socat TCP-LISTEN:50000,fork,reuseaddr UNIX-CONNECT:/run/confidential-containers/attestation-agent/attestation-agent.sock
Restart=always
EOF
fi

COCO_UNITS=
if [ "$COCO" = 1 ]; then
    echo "== pod VM: the Confidential Containers guest (kata-agent, agent-protocol-forwarder, CDH, api-server-rest)"
    bash containers/podvm/coco.sh "$ROOT" "$P_AGENT" "$P_CAA" "$P_GC" "$P_KATA"
    COCO_UNITS="kata-agent.path agent-protocol-forwarder.path api-server-rest.path"
fi

echo "== pod VM: system settings"
echo podvm >"$ROOT/etc/hostname"
# The root is the initramfs's (dm-verity, read-only), nothing to check or
# remount; /tmp is memory.
echo "tmpfs /tmp tmpfs nosuid,nodev,mode=1777,size=25% 0 0" >"$ROOT/etc/fstab"
echo qemu_fw_cfg >"$ROOT/etc/modules-load.d/attestd-podvm.conf"
# Modules udev would load for emulated hardware a pod VM does not use.
printf 'blacklist %s\n' kvm kvm_amd kvm_intel ppdev parport_pc floppy pcspkr joydev \
    >"$ROOT/etc/modprobe.d/attestd-podvm.conf"
install -d "$ROOT/etc/systemd/network" "$ROOT/etc/systemd/journald.conf.d"
printf '[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n' >"$ROOT/etc/systemd/network/20-wired.network"
# The journal, as it is written, on the second serial port: what a host reads
# when a boot goes wrong.
# In memory: a pod VM lives as long as its pod (nothing to flush to disk at
# boot).
printf '[Journal]\nStorage=volatile\nForwardToConsole=yes\nTTYPath=/dev/ttyS1\nMaxLevelConsole=info\n' \
    >"$ROOT/etc/systemd/journald.conf.d/50-attestd-podvm.conf"
# shellcheck disable=SC2086 # one word per unit
systemctl --root="$ROOT" enable attestd-provision.service attestd.service confidential-data-hub.path systemd-networkd.service \
    $COCO_UNITS >/dev/null 2>&1
# Timers and services a short-lived pod VM has no use for (each costs boot time).
# The boot tests' systemd-analyze blame showed the rest: podman-auto-update
# alone took 3.4 s of the two vCPUs, each modprobe@ unit about 1 s, for modules
# the image no longer has.
systemctl --root="$ROOT" mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer \
    fstrim.timer podman-auto-update.timer podman-auto-update.service podman-restart.service \
    man-db.timer dpkg-db-backup.timer systemd-networkd-wait-online.service e2scrub_reap.service \
    getty-static.service modprobe@fuse.service modprobe@loop.service modprobe@dm_mod.service \
    modprobe@efi_pstore.service systemd-network-generator.service getty.target \
    systemd-remount-fs.service >/dev/null 2>&1
# The generators of what a pod VM has none of (crypttab, swap partitions to
# resume from, sysv scripts, a getty on the console, …): each is a process
# systemd waits for before it starts any unit (about 0.5 s in all under
# emulation). The fstab one stays (/tmp), and attestd-podvm's (provisioning's
# ordering). systemd-remount-fs, masked above,
# has no root entry to apply.
install -d "$ROOT/etc/systemd/system-generators"
for g in "$ROOT"/usr/lib/systemd/system-generators/*; do
    case "$(basename "$g")" in systemd-fstab-generator | attestd-podvm) ;;
    *) ln -sf /dev/null "$ROOT/etc/systemd/system-generators/$(basename "$g")" ;; esac
done

echo "== pod VM: prefetching the attester images"
images=()
while read -r tee image digest; do
    images+=("$tee $image@$digest")
done < <(awk -F' = ' '
    /^\[images\./ { gsub(/^\[images\.|\]$/, ""); tee=$0 }
    tee && $1=="image" { gsub(/"/, "", $2); image=$2 }
    tee && $1=="digest" { gsub(/"/, "", $2); print tee, image, $2; tee="" }' "$ROOT/usr/share/attestd/images.lock")
prefetched=0
if [ -z "$REGISTRY" ]; then
    # From this machine's podman store (containers/build.sh put them there), by
    # name and digest, as the VM's attestd will look for them: the same code
    # (the VM's own attestd) writes the layout and unpacks it.
    oci="$ROOT/var/lib/attestd/oci"
    "$ROOT/usr/bin/attestd" prefetch --images-lock "$ROOT/usr/share/attestd/images.lock" --oci-dir "$oci" >/dev/null
    prefetched=$(du -sb "$oci" | cut -f1)
fi

echo "== pod VM: disk image (dm-verity)"
mkdir -p "$OUT"
kver=$(basename "$(echo "$ROOT"/usr/lib/modules/*)")
cp "$ROOT/boot/vmlinuz-$kver" "$OUT/vmlinuz"
# What the initramfs takes from the image: dmsetup and the libraries it loads,
# at their paths, and the modules below.
DMSETUP=/usr/sbin/dmsetup
dm_libs=$(chroot "$ROOT" ldd "$DMSETUP" | awk '$2 == "=>" { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
# qemu boots the kernel directly (a provider's image adds its boot loader).
rm -f "$ROOT"/boot/vmlinuz-* "$ROOT"/boot/initrd.img-*
used=$(du -sm "$ROOT" | cut -f1)
size=$((used + used / 4 + 256))
rm -f "$OUT/rootfs.img"
# Read-only: no journal to replay. 4 KiB blocks, dm-verity's.
mkfs.ext4 -q -L podvm-root -b 4096 -O ^has_journal -d "$ROOT" "$OUT/rootfs.img" "${size}M"
# The hash tree goes after the file system on the same disk, with no superblock:
# everything the kernel needs to check it (the root hash, the salt, the data's
# size) is in the initramfs, which the launch measures, none of it on the disk.
data_bytes=$(stat -c %s "$OUT/rootfs.img")
data_blocks=$((data_bytes / 4096))
veritysetup format --no-superblock --hash-offset="$data_bytes" --data-block-size=4096 --hash-block-size=4096 \
    --data-blocks="$data_blocks" "$OUT/rootfs.img" "$OUT/rootfs.img" >"$WORK/verity.txt"
root_hash=$(sed -n 's/^Root hash:[[:space:]]*//p' "$WORK/verity.txt")
salt=$(sed -n 's/^Salt:[[:space:]]*//p' "$WORK/verity.txt")
[[ $root_hash =~ ^[0-9a-f]{64}$ && $salt =~ ^[0-9a-f]{64}$ ]] ||
    { cat "$WORK/verity.txt" >&2; echo "error: veritysetup format gave no root hash" >&2; exit 1; }

# The initramfs: containers/podvm/init, busybox (static), dmsetup, the root
# hash, and the modules it loads with what they depend on, uncompressed
# (unpacking a compressed one took about a second under emulation).
IRD=$WORK/initramfs
mkdir -p "$IRD"/{bin,sbin,dev,proc,sys,root}
install -m 0755 containers/podvm/init "$IRD/init"
install -m 0755 /bin/busybox "$IRD/bin/busybox"
install -D -m 0755 "$ROOT$DMSETUP" "$IRD/sbin/dmsetup"
# (resolved inside the image: its loader's link is absolute)
for l in $dm_libs; do install -D -m 0755 "$ROOT$(chroot "$ROOT" readlink -e "$l")" "$IRD$l"; done
printf 'ROOT_HASH=%s\nSALT=%s\nDATA_BLOCKS=%s\n' "$root_hash" "$salt" "$data_blocks" >"$IRD/root.verity"
# Only a test image may boot a root without dm-verity (attestd.unverified_root).
[ "$HOOKS" = 1 ] && echo "built with --test-hooks: attestd.unverified_root is honoured" >"$IRD/test-image"
depends() {
    # shellcheck disable=SC2086 # one word per module
    for m in $1; do chroot "$ROOT" modprobe --show-depends -S "$kver" "$m"; done |
        awk '$1 == "insmod" && !seen[$2]++ { print $2 }'
}
depends "$INITRAMFS_MODULES" >"$IRD/modules.1"
depends "$INITRAMFS_MODULES_DM" | grep -vxFf "$IRD/modules.1" >"$IRD/modules.dm"
depends "$INITRAMFS_MODULES $INITRAMFS_MODULES_DM $INITRAMFS_MODULES_2" |
    grep -vxFf <(cat "$IRD/modules.1" "$IRD/modules.dm") >"$IRD/modules.2"
while read -r m; do install -D -m 0644 "$ROOT$m" "$IRD$m"; done < <(cat "$IRD/modules.1" "$IRD/modules.dm" "$IRD/modules.2")
find "$IRD" -exec touch -h -d @0 {} +
(cd "$IRD" && find . | LC_ALL=C sort | cpio -o -H newc --quiet --reproducible) >"$OUT/initrd.img"
# What a tenant gives the KBS: computed from the files (not read from a boot).
python3 containers/podvm/reference-values.py "$OUT/vmlinuz" "$OUT/initrd.img" "$CMDLINE" "$MEMORY" >"$OUT/reference-values.json"
SECS=$(($(date +%s) - START))
{
    printf '{\n  "kernel": "%s",\n  "rootfs_bytes": %s,\n  "used_mib": %s,\n  "prefetched_bytes": %s,\n' \
        "$kver" "$(stat -c %s "$OUT/rootfs.img")" "$used" "$prefetched"
    printf '  "verity": {"root_hash": "%s", "salt": "%s", "data_blocks": %s},\n' "$root_hash" "$salt" "$data_blocks"
    printf '  "reference_values": %s,\n' "$(sed 's/^/  /' "$OUT/reference-values.json" | sed '1s/^  //')"
    printf '  "build_secs": %s,\n  "base_cached": %s,\n  "test_hooks": %s,\n  "coco": %s,\n  "registry": "%s",\n  "images": [' \
        "$SECS" "$CACHED" "$([ "$HOOKS" = 1 ] && echo true || echo false)" "$([ "$COCO" = 1 ] && echo true || echo false)" "$REGISTRY"
    sep=""
    for i in "${images[@]}"; do printf '%s\n    "%s"' "$sep" "$i"; sep=","; done
    printf '\n  ]\n}\n'
} >"$OUT/podvm.json"
echo "pod VM: $OUT/rootfs.img ($((size)) MiB, ${used} MiB used; images $((prefetched / 1024)) KiB; dm-verity root hash $root_hash) in ${SECS}s"
echo "pod VM: reference values for a UEFI vTPM boot (qemu -machine pc -m $MEMORY, the command line \"$CMDLINE\"; $OUT/reference-values.json):"
sed -n 's/^  "\(pcr[0-9]*\)": "\(.*\)",\{0,1\}$/  \1 (sha256) \2/p' "$OUT/reference-values.json"
