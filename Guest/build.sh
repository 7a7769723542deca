#!/usr/bin/env bash
# Builds every Bulkhead guest program (Guest/Programs/<name>/) into OUTDIR/<name>.elf.
#
#   Guest/build.sh [OUTDIR]        default OUTDIR: <repo>/.build/guests
#
# Each program is one Embedded Swift module (Guest/SDK/*.swift, Sources/GuestABI/GuestABI.swift
# and the program's *.swift),
# plus Guest/SDK/entry.S and the program's own *.S files, linked with the toolchain's
# ld.lld against Guest/linker.ld. Up-to-date programs are skipped. Every ELF is then
# checked: PT_LOAD segments page-aligned at or above 0x400000, none both W and X, entry
# point inside an executable segment, no undefined symbols.
#
# Environment: SWIFTC (default: swiftc on PATH), JOBS (parallel builds, default: nproc),
#              FORCE=1 (rebuild everything).
set -euo pipefail

GUEST_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$GUEST_DIR/.." && pwd)"
OUTDIR="${1:-$REPO_ROOT/.build/guests}"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
OBJDIR="$OUTDIR/obj"
mkdir -p "$OBJDIR"

die() { echo "build.sh: error: $*" >&2; exit 1; }

SWIFTC="${SWIFTC:-$(command -v swiftc || true)}"
[[ -n "$SWIFTC" && -x "$SWIFTC" ]] || die "swiftc not found (set SWIFTC or put the Swift toolchain on PATH)"
TOOLBIN="$(dirname "$(readlink -f "$SWIFTC")")"
LLD="$TOOLBIN/ld.lld"
CLANG="$TOOLBIN/clang"
[[ -x "$LLD" ]] || die "ld.lld not found next to swiftc ($LLD)"
[[ -x "$CLANG" ]] || CLANG="$(command -v clang || true)"
[[ -n "$CLANG" && -x "$CLANG" ]] || die "clang not found (needed to assemble entry.S)"
READELF="$(command -v readelf || command -v llvm-readelf || true)"
if [[ -z "$READELF" && -x "$TOOLBIN/llvm-readelf" ]]; then READELF="$TOOLBIN/llvm-readelf"; fi
[[ -n "$READELF" ]] || die "readelf not found (binutils or llvm-readelf)"
JOBS="${JOBS:-$(nproc 2>/dev/null || echo 2)}"

TARGET=x86_64-unknown-none-elf
SWIFT_FLAGS=(
    -enable-experimental-feature Embedded
    -target "$TARGET"
    -wmo -parse-as-library -Osize
    -Xfrontend -disable-stack-protector   # no __stack_chk_guard/__stack_chk_fail in a guest
    -Xfrontend -function-sections         # lets --gc-sections drop unused SDK code
)
CLANG_FLAGS=(--target="$TARGET" -fno-pic -ffunction-sections -Wa,--noexecstack)
LD_FLAGS=(
    -T "$GUEST_DIR/linker.ld" -static -nostdlib --no-pie
    --gc-sections --build-id=none -z noexecstack -z max-page-size=4096
    --orphan-handling=error --no-undefined --fatal-warnings
)

# The SDK, and the ABI's numbers in the one file the host compiles too (module GuestABI).
SDK_SWIFT=("$GUEST_DIR"/SDK/*.swift "$REPO_ROOT/Sources/GuestABI/GuestABI.swift")
SDK_ASM=("$GUEST_DIR"/SDK/*.S)

# Every input shared by all programs; a change to any rebuilds everything.
COMMON_INPUTS=("${SDK_SWIFT[@]}" "${SDK_ASM[@]}" "$GUEST_DIR/linker.ld" "$GUEST_DIR/build.sh")

# Assemble the SDK's .S files once.
SDK_OBJS=()
for src in "${SDK_ASM[@]}"; do
    obj="$OBJDIR/sdk-$(basename "${src%.S}").o"
    "$CLANG" "${CLANG_FLAGS[@]}" -c "$src" -o "$obj.tmp.$$"
    mv "$obj.tmp.$$" "$obj"
    SDK_OBJS+=("$obj")
done

up_to_date() {  # up_to_date OUTPUT INPUT...
    local out="$1"; shift
    [[ "${FORCE:-0}" != 1 && -f "$out" ]] || return 1
    local f
    for f in "$@"; do [[ "$f" -nt "$out" ]] && return 1; done
    return 0
}

build_program() {  # build_program NAME; runs in a subshell, so every step checks itself
    local name="$1" dir="$GUEST_DIR/Programs/$1"
    local elf="$OUTDIR/$name.elf" obj="$OBJDIR/$name"
    shopt -s nullglob
    local swift_srcs=("$dir"/*.swift) asm_srcs=("$dir"/*.S)
    shopt -u nullglob
    [[ ${#swift_srcs[@]} -gt 0 ]] || { echo "build.sh: $name: no .swift files in $dir" >&2; return 1; }
    if up_to_date "$elf" "${COMMON_INPUTS[@]}" "${swift_srcs[@]}" "${asm_srcs[@]+"${asm_srcs[@]}"}"; then
        echo "  up to date  $name"
        return 0
    fi
    rm -f "$elf"
    mkdir -p "$obj" || return 1
    local objs=("$obj/swift.o") src o
    "$SWIFTC" "${SWIFT_FLAGS[@]}" -module-name BulkheadGuest \
        -c "${SDK_SWIFT[@]}" "${swift_srcs[@]}" -o "$obj/swift.o" || return 1
    for src in "${asm_srcs[@]+"${asm_srcs[@]}"}"; do
        o="$obj/$(basename "${src%.S}").o"
        "$CLANG" "${CLANG_FLAGS[@]}" -c "$src" -o "$o" || return 1
        objs+=("$o")
    done
    "$LLD" "${LD_FLAGS[@]}" "${SDK_OBJS[@]}" "${objs[@]}" -o "$elf.tmp.$$" || return 1
    mv "$elf.tmp.$$" "$elf" || return 1
    echo "  built       $name"
}

PROGRAMS=()
for dir in "$GUEST_DIR"/Programs/*/; do
    PROGRAMS+=("$(basename "$dir")")
done
[[ ${#PROGRAMS[@]} -gt 0 ]] || die "no programs under $GUEST_DIR/Programs"

echo "Building ${#PROGRAMS[@]} guest programs into $OUTDIR"
rm -f "$OBJDIR"/*.failed
for name in "${PROGRAMS[@]}"; do
    while [[ $(jobs -rp | wc -l) -ge $JOBS ]]; do wait -n 2>/dev/null || sleep 0.05; done
    ( build_program "$name" || { echo "  FAILED      $name" >&2; touch "$OBJDIR/$name.failed"; } ) &
done
wait || true
failed=()
for name in "${PROGRAMS[@]}"; do
    [[ ! -e "$OBJDIR/$name.failed" ]] || failed+=("$name")
done
[[ ${#failed[@]} -eq 0 ]] || die "failed to build: ${failed[*]}"

# ---- check every ELF ---------------------------------------------------------
check_elf() {  # check_elf FILE
    local elf="$1"
    "$READELF" -hlW "$elf" | awk -v file="$elf" '
        function hex(s,   v, i, d) {  # portable (mawk has no strtonum)
            s = tolower(s); sub(/^0x/, "", s); v = 0
            for (i = 1; i <= length(s); i++) {
                d = index("0123456789abcdef", substr(s, i, 1)) - 1
                if (d < 0) return -1
                v = v * 16 + d
            }
            return v
        }
        /^ *Type:/    { type = $2 }
        /^ *Machine:/ { machine = $0 }
        /^ *Entry point address:/ { entry = hex($4); entrytext = $4 }
        $1 == "LOAD" {
            off = hex($2); va = hex($3); fsz = hex($5); msz = hex($6); align = hex($NF)
            flags = ""; for (i = 7; i < NF; i++) flags = flags $i
            nload++
            if (va < 4194304) { print file ": PT_LOAD at " $3 " is below 0x400000"; bad = 1 }
            if (va % 4096 != 0) { print file ": PT_LOAD at " $3 " is not page aligned"; bad = 1 }
            if (off % 4096 != 0) { print file ": PT_LOAD at " $3 " has file offset " $2 " not page aligned"; bad = 1 }
            if (align < 4096) { print file ": PT_LOAD at " $3 " has alignment " $NF; bad = 1 }
            if (index(flags, "W") && index(flags, "E")) { print file ": PT_LOAD at " $3 " is writable and executable"; bad = 1 }
            if (msz < fsz) { print file ": PT_LOAD at " $3 " has MemSiz < FileSiz"; bad = 1 }
            if (index(flags, "E") && entry >= va && entry < va + msz) entryok = 1
            if (va < prevend) { print file ": PT_LOAD at " $3 " shares a page with the previous segment"; bad = 1 }
            prevend = va + msz; if (prevend % 4096) prevend += 4096 - prevend % 4096
        }
        $1 == "INTERP" || $1 == "DYNAMIC" || $1 == "TLS" { print file ": unexpected " $1 " segment"; bad = 1 }
        END {
            if (type != "EXEC") { print file ": ELF type " type ", expected EXEC"; bad = 1 }
            if (machine !~ /X86-64|x86-64/) { print file ": not an x86-64 ELF"; bad = 1 }
            if (nload == 0) { print file ": no PT_LOAD segments"; bad = 1 }
            if (!entryok) { print file ": entry point " entrytext " is not inside an executable PT_LOAD"; bad = 1 }
            exit bad
        }' || return 1
    # Undefined symbols (a weak one would silently resolve to address 0).
    local undefined
    undefined="$("$READELF" -sW "$elf" | awk '$7 == "UND" && $8 != "" { print $8 }')"
    if [[ -n "$undefined" ]]; then
        echo "$elf: undefined symbols: $undefined"
        return 1
    fi
}

bad=0
for name in "${PROGRAMS[@]}"; do
    check_elf "$OUTDIR/$name.elf" || bad=1
done
[[ $bad -eq 0 ]] || die "ELF checks failed"
echo "All ${#PROGRAMS[@]} guest ELFs pass the segment checks."
