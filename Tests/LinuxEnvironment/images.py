#!/usr/bin/env python3
"""Guest images for the Linux test environment, made from what Debian ships.

  images.py vmlinux VMLINUZ OUT
      The vmlinux inside a bzImage (its payload, XZ-compressed in Debian's kernels), whose Xen
      PHYS32_ENTRY note makes Bulkhead boot it through the PVH entry. Prints the file offset of
      that note's type: written as 0x7fff there (4 bytes, little-endian), the same kernel has no
      PVH entry and Bulkhead boots it through the 64-bit entry (the outer machine makes that copy
      itself, so that the initramfs carries one).
  images.py tiny OUT reset|poweroff
      A minimal PVH kernel: it prints "up" on COM1, then resets the machine (i8042) or powers it
      off (ACPI S5) at once, from its boot vCPU, while any other vCPU still waits for its start-up
      IPI. Run many times, it checks that every such end stops every vCPU (issue 10, point 3).
"""
import lzma
import struct
import sys

XEN_PHYS32_ENTRY = 18


def vmlinux(vmlinuz, out):
    data = open(vmlinuz, "rb").read()
    start = data.find(b"\xfd7zXZ\x00")
    if start < 0:
        sys.exit("images.py: no XZ payload in " + vmlinuz)
    elf = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[start:])
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        sys.exit("images.py: the payload is not a 64-bit ELF")
    open(out, "wb").write(elf)
    # The Xen PHYS32_ENTRY note in the PT_NOTE segments (the same bytes are the .notes section,
    # so retyping it there leaves the section fallback nothing either).
    phoff, = struct.unpack_from("<Q", elf, 32)
    phentsize, phnum = struct.unpack_from("<HH", elf, 54)
    found = []
    for i in range(phnum):
        p_type, _, p_offset, _, _, p_filesz = struct.unpack_from("<IIQQQQ", elf, phoff + i * phentsize)
        if p_type != 4:
            continue
        at, end = p_offset, p_offset + p_filesz
        while at + 12 <= end:
            namesz, descsz, ntype = struct.unpack_from("<III", elf, at)
            name = elf[at + 12:at + 12 + namesz]
            if name.rstrip(b"\x00") == b"Xen" and ntype == XEN_PHYS32_ENTRY:
                found.append(at + 8)
            at += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    if len(found) != 1:
        sys.exit("images.py: the vmlinux has %d PVH entry notes, not one" % len(found))
    print(found[0])


def tiny(out, kind):
    code = bytes([0x66, 0xBA, 0xF8, 0x03]) + b"".join(bytes([0xB0, c, 0xEE]) for c in b"up\n")  # mov dx, 0x3f8; (mov al, c; out dx, al)*
    if kind == "reset":
        code += bytes([0xB0, 0xFE, 0xE6, 0x64])                            # mov al, 0xfe; out 0x64, al
    elif kind == "poweroff":
        code += bytes([0x66, 0xBA, 0x00, 0x06, 0xB0, 0x34, 0xEE])          # mov dx, 0x600; mov al, 0x34; out dx, al
    else:
        sys.exit("images.py: tiny OUT reset|poweroff")
    code += bytes([0xF4, 0xEB, 0xFD])                                      # hlt; jmp back to hlt
    load, code_at, note_at = 0x100000, 0x1000, 0x200
    note = struct.pack("<III4sI", 4, 4, XEN_PHYS32_ENTRY, b"Xen\x00", load)
    img = bytearray(code_at + len(code))
    img[0:8] = b"\x7fELF" + bytes([2, 1, 1, 0])
    # ELF header: executable, x86-64, entry = load address, two program headers at 64.
    struct.pack_into("<HHIQQQIHHHHHH", img, 16, 2, 62, 1, load, 64, 0, 0, 64, 56, 2, 0, 0, 0)
    struct.pack_into("<IIQQQQQQ", img, 64, 1, 5, code_at, load, load, len(code), len(code), 0x1000)   # PT_LOAD, R+X
    struct.pack_into("<IIQQQQQQ", img, 120, 4, 4, note_at, 0, 0, len(note), len(note), 4)           # PT_NOTE
    img[note_at:note_at + len(note)] = note
    img[code_at:] = code
    open(out, "wb").write(img)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "vmlinux":
        vmlinux(*sys.argv[2:])
    elif len(sys.argv) == 4 and sys.argv[1] == "tiny":
        tiny(*sys.argv[2:])
    else:
        sys.exit(__doc__)
