#!/usr/bin/env bash
# Builds the PVH benchmark guest (entry.S + bench.c, linked with pvh.ld) into OUTDIR/pvh-bench.elf.
#
#   Benchmarks/pvh/build.sh [OUTDIR]      default OUTDIR: <repo>/.build/pvh
#
# Needs gcc and binutils (readelf). The image is checked after linking: a PT_NOTE segment with
# the Xen PHYS32_ENTRY note, every PT_LOAD at or above 1 MiB.
set -euo pipefail

DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$DIR/../.." && pwd)"
OUT="${1:-$REPO/.build/pvh}"
mkdir -p "$OUT"
CC="${CC:-gcc}"
ELF="$OUT/pvh-bench.elf"

# -mgeneral-regs-only: no SSE (CR4.OSFXSR is never set); -mno-red-zone for good measure (no
# interrupts are ever taken, but nothing is lost).
CFLAGS=(-O2 -g0 -std=gnu11 -Wall -Wextra -Werror -ffreestanding -fno-builtin -nostdlib -static
        -fno-pic -fno-pie -no-pie -fno-stack-protector -fno-asynchronous-unwind-tables
        -fcf-protection=none -mgeneral-regs-only -mno-red-zone -mcmodel=small)

"$CC" "${CFLAGS[@]}" -Wl,-T,"$DIR/pvh.ld" -Wl,--build-id=none -Wl,-z,noexecstack -Wl,--no-warn-rwx-segments \
    -o "$ELF.tmp" "$DIR/entry.S" "$DIR/bench.c"

die() { echo "build.sh: $*" >&2; rm -f "$ELF.tmp"; exit 1; }
headers="$(readelf -lW "$ELF.tmp")"
grep -q '^ *NOTE ' <<<"$headers" || die "no PT_NOTE segment"
readelf -nW "$ELF.tmp" | grep -q 'Xen.*0x00000012' || die "no Xen PHYS32_ENTRY (type 18) note"
while read -r _ _ _ paddr _; do
    (( paddr >= 0x100000 )) || die "a PT_LOAD segment at $paddr is below 1 MiB"
done < <(grep '^ *LOAD ' <<<"$headers")
mv "$ELF.tmp" "$ELF"
echo "$ELF"
