#!/usr/bin/env bash
# Runs the Linux test environment (outer-machine.sh) with the given Bulkhead build and checks what
# the inner Linux guests printed (issue 10). Part of `make test`. Exit 0 when every check passed,
# or when the environment cannot be had here (it then says why, on one line); 1 otherwise.
#
#   Tests/LinuxEnvironment/check.sh BULKHEAD_DIR
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEBUG="$HERE/../../.build/linux-env/qemu-debug.log"

# The checks of one outer machine's log ($LOG): one "FAIL" line per failed check (and notes).
run_checks() {
    failed=0
    check() {   # check RUN PATTERN...: each pattern appears between "begin RUN" and "end RUN"
        local run=$1; shift  # (of the run's last attempt: outer-machine.sh repeats a triple fault)
        local part; part=$(awk -v r="$run" '$0 == "outer: begin " r { buf = ""; on = 1 }
            on { buf = buf $0 "\n" }
            on && index($0, "outer: end " r " ") == 1 { on = 0; last = buf }
            END { printf "%s", last }' "$LOG")
        for pattern in "$@"; do
            if ! grep -qE -- "$pattern" <<<"$part"; then echo "Linux environment: FAIL $run: no line matching '$pattern'"; failed=1; fi
        done
    }
    grep -q 'outer: /dev/kvm is here' "$LOG" || { echo "Linux environment: FAIL the outer machine has no /dev/kvm"; failed=1; }
    # User space runs, and its own writes reach the console (COM1 with IRQ 4 from the DSDT).
    # Standard input reaches user space through COM1's receive side (rx counted, IRQ 4 taken).
    TYPED="^inner: read 'typed-by-the-host'\$"
    check jailed-1cpu '^inner: user space up, 1 CPUs' '^inner: entry bzimage$' '^inner: wrote to /dev/console' "$TYPED" \
        'uart:16550A port:000003F8 irq:[0-9]+ tx:[1-9][0-9]* rx:[1-9]' 'reset the machine' '^outer: end jailed-1cpu status 0$'
    # Linux's own drivers on Bulkhead's devices, unjailed and jailed: virtio-blk reads, writes and
    # flushes (the write is in the image afterwards), a read-only disk refuses writes, virtio-rng
    # feeds /dev/hwrng; `poweroff` ends the VM cleanly (ACPI S5), with 2 and 4 vCPUs.
    for r in unjailed-2cpu:2:u devices-jailed:4:d; do
        run=${r%%:*}; n=${r#*:}; n=${n%:*}; img=${r##*:}
        check $run "^inner: user space up, $n CPUs" '^inner: entry bzimage$' '^inner: wrote to /dev/console' "$TYPED" \
            '^inner: disk vda 2048 sectors, read-only 0' '^inner: disk vdb 2048 sectors, read-only 1' \
            '^inner: disk vda sector 0: bulkhead-disk-0!' '^inner: disk vda write and flush ok' '^inner: disk vdb write refused' \
            '^inner: rng virtio_rng\.[0-9]+ gave 32 bytes' '^inner: powering off' 'powered the machine off \(ACPI S5\)' \
            "^outer: end $run status 0\$"
        grep -q "^outer: after $run: ${img}0 sector 1: written-by-linux\$" "$LOG" \
            || { echo "Linux environment: FAIL $run: the guest's write is not in the disk image"; failed=1; }
        grep -q "^outer: after $run: ${img}1 sector 1 is 0 non-zero bytes\$" "$LOG" \
            || { echo "Linux environment: FAIL $run: the read-only disk image changed"; failed=1; }
    done
    # --hide-cpu-feature hides what the outer CPU offers (measured: the unhidden run shows what
    # there is to hide).
    for f in xsave rdrand; do
        if sed -n '/^outer: begin unjailed-2cpu$/,/^outer: end unjailed-2cpu /p' "$LOG" | grep -q "^inner: cpu has $f$"; then
            check devices-jailed "^inner: cpu lacks $f$"
        else
            echo "Linux environment: note: inner guests do not see $f even when it is not hidden, so hiding it was not checked"
        fi
    done
    # The vmlinux inside the bzImage through its PVH entry, with 4 vCPUs unjailed and 2 jailed,
    # reaching a host Unix socket over vsock; unjailed it then panics (pvpanic ends the VM as a
    # crash), jailed it reboots through the BIOS path.
    for r in pvh-vsock-unjailed:4 pvh-vsock-jailed:2; do
        check ${r%:*} "^inner: user space up, ${r#*:} CPUs" '^inner: entry pvh$' '^inner: vsock answer: host got: hello-from-the-guest$'
    done
    check pvh-vsock-unjailed '^inner: pvpanic bound' 'Kernel panic' 'the guest kernel panicked \(reported (by vCPU [0-9]+ )?through pvpanic\)' \
        '^outer: end pvh-vsock-unjailed status 134$'
    check pvh-vsock-jailed 'reset the machine' '^outer: end pvh-vsock-jailed status 0$'
    # Two Linux guests ping each other over virtio-net: A jailed (bzImage), B unjailed (64-bit entry).
    check net-pair '^A: inner: entry bzimage$' '^B: inner: entry vmlinux-64$' '^A: inner: ping 10\.0\.2\.2 answered' \
        '^B: inner: ping 10\.0\.2\.1 answered' '^outer: end net-pair status 0 0$'
    # The same vmlinux through the 64-bit entry, jailed; its kernel panics.
    check elf64-panic-jailed '^inner: user space up, 2 CPUs' '^inner: entry vmlinux-64$' '^inner: pvpanic bound' \
        'Kernel panic' 'the guest kernel panicked \(reported (by vCPU [0-9]+ )?through pvpanic\)' '^outer: end elf64-panic-jailed status 134$'
    # Reset and power-off with vCPUs waiting for their start-up IPI, ten times each.
    grep -q '^outer: tiny-reset: 10 of 10 ended with status 0' "$LOG" || { echo "Linux environment: FAIL a reset did not end the VM cleanly every time"; failed=1; }
    grep -q '^outer: tiny-poweroff: 10 of 10 ended with status 0' "$LOG" || { echo "Linux environment: FAIL a power-off did not end the VM cleanly every time"; failed=1; }
    grep -q '^outer: done' "$LOG" || { echo "Linux environment: FAIL the outer machine did not run to its end"; failed=1; }
}

# The emulated machine is not perfectly reliable: under QEMU's software SVM, runs here have seen
# the outer kernel panic (a stack-guard hit in its page-fault path), QEMU end early, inner guests
# triple-fault at random points of their boot (about one boot in five with 2 or 4 vCPUs, fewer
# with 1), and an AP never start, with builds that pass the next time. So an inner run that
# triple-faulted or timed out is made up to twice more (outer-machine.sh; only its last attempt
# is checked), and a failed outer machine is run again, up to three times, after its failures are
# printed; the last run decides. A Bulkhead failure that repeats fails the check; one that does
# not is still shown.
for attempt in 1 2 3; do
    LOG="$(mktemp /tmp/bulkhead-linux-env-XXXXXX.log)"
    bash "$HERE/outer-machine.sh" "$1" > "$LOG" 2>&1
    status=$?
    if [[ $status == 77 ]]; then
        echo "Linux environment: $(grep -m1 'skipped:' "$LOG" || echo skipped)"
        exit 0
    fi
    # The serial console ends lines with CR LF, and QEMU's first lines carry terminal escapes.
    tr '\r' '\n' < "$LOG" | sed -e 's/\x1bc//g' -e 's/\x1b\[[0-9;?]*[a-zA-Z]//g' > "$LOG.clean" && mv "$LOG.clean" "$LOG"
    failed=0
    report=$(run_checks)
    grep -q 'FAIL' <<<"$report" && failed=1
    [[ $failed == 0 ]] && break
    if [[ $attempt != 3 ]]; then
        qemu=$(grep -a -m1 '^outer-machine: qemu exited with status' "$LOG")
        triple=$(grep -a -c -i 'triple fault' "$DEBUG" 2>/dev/null)
        why=$(grep -a -m3 -E '^\[ *[0-9.]+\] (watchdog: )?(BUG|Kernel panic - not syncing: corrupted|general protection|stack guard)|^outer-machine: the outer kernel locked up' "$LOG" | tr '\n' ' ')
        echo "Linux environment: attempt $attempt failed (${qemu:-no QEMU status}; outer triple faults: ${triple:-0}; ${why:-no outer kernel message}; log: $LOG):"
        sed "s/^Linux environment: FAIL/Linux environment:   attempt $attempt: FAIL/" <<<"$report" | grep -v '^Linux environment: note' | head -20
        grep -a -E '^outer: (heartbeat|.* is still running)' "$LOG" | tail -4 | sed "s/^/Linux environment:   attempt $attempt: /"
        echo "Linux environment: running the outer machine once more"
    fi
done
[[ -n "$report" ]] && echo "$report"
if [[ $failed == 0 ]]; then
    echo "Linux environment: passed (outer machine log: $LOG)"
else
    echo "Linux environment: the outer machine's output is in $LOG; its last lines:"
    tail -20 "$LOG"
    grep -a '^outer-machine:' "$LOG"
    # A triple fault or other reset of the outer machine's CPUs after its boot, as QEMU logged it.
    [[ -f "$DEBUG" ]] && grep -a -i -m5 'triple fault\|guest_errors\|invalid' "$DEBUG" | sed 's/^/Linux environment: qemu: /'
fi
exit $failed
