#!/usr/bin/env python3
"""Linux boot under Bulkhead against QEMU microvm, in the Linux test environment (issue 10).

    python3 Benchmarks/linux_boot.py [--runs N] [--vcpus 1,2] [--bulkhead DIR] [--json FILE]

Boots the outer machine of Tests/LinuxEnvironment/outer-machine.sh (QEMU with software emulation,
Debian's kernel, kvm_amd nested=1) in its benchmark mode: inside it, the same Debian kernel and
busybox initramfs are booted --runs times per vCPU count by Bulkhead (jailed, `bulkhead run
--kernel`, as root) and by QEMU microvm (`-M microvm -accel kvm -cpu host`, qboot), alternately,
with the same memory (256 MiB), vCPUs and command line (`console=ttyS0 panic=-1 pci=off
benchmark=1`). The guest's /init prints "inner: first user-space line" and reboots at once.
Per run, Benchmarks/linux/timeline.c measures on the outer machine's CLOCK_MONOTONIC:

- start -> first user-space line: fork of the VMM to the moment that line is read from its
  output pipe (the console is COM1 in both, polled by the guest's printk and user space's writes);
- reboot -> exit: from that same line (the guest's /init calls `reboot -f` right after printing
  it) to the VMM's exit: the guest kernel's whole restart path, then the VMM's teardown;
- restart line -> exit: from the kernel's "reboot: Restarting system" line to the VMM's exit
  (the end of the kernel's path, then the VMM's).

DIR holds the `bulkhead` binaries to measure (default .build/release, from `make release`; the
debug build works too and is what `make test` builds). Prints a table of medians and writes the
raw runs to --json (default Benchmarks/out/linux-boot.json). Exits non-zero if a run failed (a
marker missing or a non-zero status). The absolute figures are those of a guest two levels of
virtualization deep under a software-emulated CPU: only the ratio between the two VMMs in the
same run means something.
"""
import argparse, json, os, re, statistics, subprocess, sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^bench: (\S+) vcpus (\d+) run (\d+) timeline: first-ms (-?[\d.]+) restart-ms (-?[\d.]+) exit-ms (-?[\d.]+) status (\d+)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--vcpus", default="1,2")
    ap.add_argument("--bulkhead", default=str(REPO / ".build" / "release"))
    ap.add_argument("--json", default=str(REPO / "Benchmarks" / "out" / "linux-boot.json"))
    a = ap.parse_args()
    load = os.getloadavg()
    env = dict(os.environ, BULKHEAD_LINUX_ENV_BENCH=str(a.runs), BULKHEAD_LINUX_ENV_BENCH_VCPUS=a.vcpus)
    out = subprocess.run(["bash", str(REPO / "Tests" / "LinuxEnvironment" / "outer-machine.sh"), a.bulkhead],
                         env=env, capture_output=True, text=True, errors="replace")
    text = out.stdout.replace("\r", "\n")
    if out.returncode == 77:
        print("linux_boot: skipped: " + out.stderr.strip())
        return 0
    runs, failed = [], False
    for line in text.splitlines():
        if line.startswith("bench: "):
            print(line)
        m = LINE.match(line)
        if not m:
            continue
        vmm, vcpus, run, first, restart, exit_ms, status = m.groups()
        r = dict(vmm=vmm, vcpus=int(vcpus), run=int(run), first_ms=float(first), restart_ms=float(restart),
                 exit_ms=float(exit_ms), status=int(status))
        if r["status"] != 0 or r["first_ms"] < 0 or r["restart_ms"] < 0:
            failed = True
            print("linux_boot: run failed: " + line)
        runs.append(r)
    if not runs:
        print("linux_boot: no benchmark lines; the outer machine printed:\n" + text[-3000:])
        return 1
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(dict(load_before=load, runs=runs), indent=1))
    print(f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {a.runs} runs each; raw: {a.json}")
    print(f"{'vCPUs':>5} {'VMM':<14} {'start→user space (s)':>22} {'reboot→exit (ms)':>18} {'restart line→exit (ms)':>24}")
    medians = {}
    for vcpus in sorted({r["vcpus"] for r in runs}):
        for vmm in ("bulkhead", "qemu-microvm"):
            ok = [r for r in runs if r["vmm"] == vmm and r["vcpus"] == vcpus and r["status"] == 0 and r["first_ms"] >= 0]
            if not ok:
                print(f"{vcpus:>5} {vmm:<14} {'(no good run)':>22}")
                continue
            first = statistics.median(r["first_ms"] for r in ok) / 1000
            down = statistics.median(r["exit_ms"] - r["first_ms"] for r in ok)
            tail = statistics.median(r["exit_ms"] - r["restart_ms"] for r in ok)
            medians[(vmm, vcpus)] = (first, down, tail)
            print(f"{vcpus:>5} {vmm:<14} {first:>22.2f} {down:>18.1f} {tail:>24.1f}")
        b, q = medians.get(("bulkhead", vcpus)), medians.get(("qemu-microvm", vcpus))
        if b and q:
            print(f"{vcpus:>5} {'ratio B/Q':<14} {b[0] / q[0]:>22.2f} {b[1] / q[1]:>18.2f} {b[2] / q[2]:>24.2f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
