#!/usr/bin/env python3
"""The reference values a tenant gives the KBS for a pod VM booted as the tests
boot it: UEFI firmware (Debian's OVMF) loading the kernel and initramfs that
qemu hands it (-kernel, -initrd, -append; machine "pc"), a TPM (vTPM)
measuring them.

Computed from the files, not read from a boot:

- PCR 4: the kernel's PE image by its Authenticode SHA-256 (the firmware
  measures an EFI application it loads from outside its own volumes:
  EV_EFI_BOOT_SERVICES_APPLICATION), then the firmware's "Calling EFI
  Application from Boot Option" action and the separator between pre-boot and
  OS-present. The image is the kernel as qemu hands it over: qemu writes its
  boot-loader fields into the setup header (the loader type, the heap's end,
  the command line's address, and the initramfs's address and size, which
  depend on the VM's memory), as it does for any direct boot.
- PCR 9: the kernel's EFI stub measures its LoadOptions, the command line as
  OVMF passes it (UTF-16LE, " initrd=initrd" appended, NUL-terminated), then
  the initramfs it loads (through LINUX_EFI_INITRD_MEDIA_GUID). The dm-verity
  root hash is inside the initramfs, so it is in PCR 9.

The boot tests check both against a quote from the booted guest
(tests/tests/podvm.rs). PCRs 0-3 and 5-7 are the firmware's own and the
machine's configuration: take them from the platform's vendor.

Usage: reference-values.py VMLINUZ INITRD CMDLINE [MEMORY_MIB]  (prints JSON;
MEMORY_MIB, the VM's memory, default 1024)
"""

import hashlib
import json
import struct
import sys

# EV_EFI_ACTION's text, measured without a NUL (TCG PC Client PFP, 10.4.4).
CALLING_EFI_APPLICATION = b"Calling EFI Application from Boot Option"
# EV_SEPARATOR's data: four zero bytes.
SEPARATOR = b"\x00\x00\x00\x00"
# What OVMF adds to the command line when an initramfs is given.
OVMF_INITRD_SUFFIX = " initrd=initrd"
# qemu's direct boot of a "high and recent" kernel (boot protocol 2.02 and
# later): where it puts the real-mode code and the command line.
QEMU_REAL_ADDR = 0x10000
QEMU_CMDLINE_ADDR = 0x20000
# The memory qemu's "pc" machine keeps at the top of low memory for its ACPI
# tables: the initramfs goes below it.
QEMU_PC_ACPI_DATA_SIZE = 0x20000 + 0x8000
# Above this much memory the "pc" machine splits it around the PCI hole, and
# the initramfs's address would follow another rule: not computed here.
MAX_MEMORY_MIB = 2816


class InputError(Exception):
    """A kernel, initramfs or memory size these values cannot be computed for."""


def authenticode_sha256(pe: bytes) -> bytes:
    """The Authenticode digest of a PE/COFF image, as EDK2's measured boot
    computes it: the headers without the checksum and the certificate
    directory entry, the sections in file order, then what follows them but
    the certificate table."""
    if len(pe) < 0x40 or pe[:2] != b"MZ":
        raise InputError("not a PE image (no MZ header)")
    (lfanew,) = struct.unpack_from("<I", pe, 0x3C)
    if pe[lfanew : lfanew + 4] != b"PE\x00\x00":
        raise InputError("not a PE image (no PE signature)")
    coff = lfanew + 4
    nsections, = struct.unpack_from("<H", pe, coff + 2)
    opt_size, = struct.unpack_from("<H", pe, coff + 16)
    opt = coff + 20
    magic, = struct.unpack_from("<H", pe, opt)
    if magic == 0x20B:  # PE32+
        dirs = opt + 112
        nrva_off = opt + 108
    elif magic == 0x10B:  # PE32
        dirs = opt + 96
        nrva_off = opt + 92
    else:
        raise InputError(f"unknown optional header magic {magic:#x}")
    size_of_headers, = struct.unpack_from("<I", pe, opt + 60)
    nrva, = struct.unpack_from("<I", pe, nrva_off)
    checksum = opt + 64
    cert_entry = dirs + 4 * 8
    h = hashlib.sha256()
    h.update(pe[:checksum])
    if nrva <= 4:
        h.update(pe[checksum + 4 : size_of_headers])
        cert_size = 0
    else:
        h.update(pe[checksum + 4 : cert_entry])
        h.update(pe[cert_entry + 8 : size_of_headers])
        cert_size, = struct.unpack_from("<I", pe, cert_entry + 4)
    hashed = size_of_headers
    sections = []
    table = opt + opt_size
    for i in range(nsections):
        s = table + 40 * i
        raw_size, raw_ptr = struct.unpack_from("<II", pe, s + 16)
        if raw_size:
            sections.append((raw_ptr, raw_size))
    for ptr, size in sorted(sections):
        h.update(pe[ptr : ptr + size])
        hashed += size
    if len(pe) > hashed + cert_size:
        h.update(pe[hashed : len(pe) - cert_size])
    return h.digest()


def qemu_direct_boot_image(kernel: bytes, initrd_size: int, memory_mib: int) -> bytes:
    """The kernel with the setup header fields qemu's x86 direct boot writes
    (Documentation/arch/x86/boot.rst): what OVMF loads and measures."""
    if memory_mib > MAX_MEMORY_MIB:
        raise InputError(f"memory {memory_mib} MiB: computed only up to {MAX_MEMORY_MIB} MiB")
    k = bytearray(kernel)
    if len(k) < 0x240 or k[0x202:0x206] != b"HdrS":
        raise InputError("no Linux boot protocol header")
    (protocol,) = struct.unpack_from("<H", k, 0x206)
    if protocol < 0x203 or not k[0x211] & 0x01:
        raise InputError(f"boot protocol {protocol:#x}: expected a high kernel, 2.03 or later")
    struct.pack_into("<I", k, 0x228, QEMU_CMDLINE_ADDR)  # cmd_line_ptr
    k[0x210] = 0xB0  # type_of_loader: qemu
    k[0x211] |= 0x80  # loadflags: CAN_USE_HEAP
    struct.pack_into("<H", k, 0x224, QEMU_CMDLINE_ADDR - QEMU_REAL_ADDR - 0x200)  # heap_end_ptr
    (initrd_max,) = struct.unpack_from("<I", k, 0x22C)  # initrd_addr_max
    below_4g = memory_mib << 20
    initrd_max = min(initrd_max, below_4g - QEMU_PC_ACPI_DATA_SIZE - 1)
    if initrd_size > initrd_max:
        raise InputError(f"the initramfs ({initrd_size} bytes) does not fit below {initrd_max:#x}, where qemu puts it")
    struct.pack_into("<I", k, 0x218, (initrd_max - initrd_size) & ~4095)  # ramdisk_image
    struct.pack_into("<I", k, 0x21C, initrd_size)  # ramdisk_size
    return bytes(k)


def extend(pcr: bytes, digest: bytes) -> bytes:
    return hashlib.sha256(pcr + digest).digest()


def sha256(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


def replay(*digests: bytes) -> bytes:
    """A PCR from reset (zeros) after extending `digests` in order."""
    pcr = bytes(32)
    for d in digests:
        pcr = extend(pcr, d)
    return pcr


def pcr4(loaded_kernel: bytes) -> bytes:
    return replay(authenticode_sha256(loaded_kernel), sha256(CALLING_EFI_APPLICATION), sha256(SEPARATOR))


def load_options(cmdline: str) -> bytes:
    return (cmdline + OVMF_INITRD_SUFFIX + "\0").encode("utf-16-le")


def pcr9(initrd: bytes, cmdline: str) -> bytes:
    return replay(sha256(load_options(cmdline)), sha256(initrd))


def main(argv):
    if len(argv) not in (4, 5):
        print("\n".join(__doc__.strip().splitlines()[-2:]), file=sys.stderr)
        return 2
    with open(argv[1], "rb") as f:
        kernel = f.read()
    with open(argv[2], "rb") as f:
        initrd = f.read()
    cmdline = argv[3]
    try:
        memory_mib = int(argv[4]) if len(argv) == 5 else 1024
        loaded = qemu_direct_boot_image(kernel, len(initrd), memory_mib)
        out = {
            "firmware": "OVMF (UEFI), qemu direct kernel boot, machine pc",
            "cmdline": cmdline,
            "memory_mib": memory_mib,
            "kernel_authenticode_sha256": authenticode_sha256(kernel).hex(),
            "loaded_kernel_authenticode_sha256": authenticode_sha256(loaded).hex(),
            "initrd_sha256": sha256(initrd).hex(),
            "pcr4": pcr4(loaded).hex(),
            "pcr9": pcr9(initrd, cmdline).hex(),
        }
    except (InputError, struct.error, ValueError) as e:
        print(f"error: cannot compute the reference values of {argv[1]} and {argv[2]}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
