#!/usr/bin/env python3
"""Where the startup time of `bulkhead run` goes, phase by phase, next to the C baseline.

    sudo python3 Benchmarks/startup_timeline.py [--runs 30] [--guest exit0]

Needs root and `perf` with uprobes. Uses the binaries that Benchmarks/run.py builds
(.build/release/bulkhead, .build-static/release/bulkhead if present, Benchmarks/out/kvm_baseline)
and adds temporary uprobes on `main`, `Run.run()` and `Machine.run(...)`; records them with
sched_process_exec/exit and the KVM ioctls (enter and return) for `--runs` runs of each
binary, then prints the median time between consecutive events, e.g.

    exec -> main                       dynamic loading, relocation, Swift runtime start-up
    main -> Run.run                    argument parsing (swift-argument-parser)
    Run.run -> Machine.run             reading the image
    Machine.run -> CREATE_VM           boot plan: ELF parse, page tables, system tables
    SET_USER_MEMORY_REGION done -> GET_SUPPORTED_CPUID
                                       copying the plan into guest RAM (THP first-touch faults)
    ... CREATE_VCPU, SET_CPUID2, SET_SREGS, SET_REGS, SET_FPU ...
    SET_FPU done -> RUN                vCPU thread start
    RUN -> RUN done                    first guest entry and the first hypercall exit
    RUN done -> exit_group             hand-off to the main thread, deinits, VM teardown, runtime exit
    exit_group -> reaped               the kernel tearing the address space down, until the
                                       parent's wait4 returns

Each binary is started through Benchmarks/out/launch, as in run.py. Tracing adds a few µs per
event; compare phases, not totals, with run.py's figures.
The probes are removed at the end.
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GUESTS = REPO / ".build" / "guests"
LAUNCH = REPO / "Benchmarks" / "out" / "launch"
BINARIES = [
    ("bulkhead", REPO / ".build" / "release" / "bulkhead-worker", ["--standalone"]),
    ("bulkhead-static", REPO / ".build-static" / "release" / "bulkhead-worker", ["--standalone"]),
    ("c", REPO / "Benchmarks" / "out" / "kvm_baseline", []),
]
SWIFT_PROBES = {  # probe name -> symbol
    "main": "main",
    "Machine_run": "$s3VMM7MachineO3run5image13configurationAA9RunReportVSays5UInt8VG_AA0B13ConfigurationVtAA0B5ErrorOYKFZ",
}
IOCTLS = {0xae01: "CREATE_VM", 0x4020ae46: "SET_USER_MEMORY_REGION", 0xc008ae05: "GET_SUPPORTED_CPUID",
          0xae41: "CREATE_VCPU", 0x4008ae90: "SET_CPUID2", 0x8138ae83: "GET_SREGS", 0x4138ae84: "SET_SREGS",
          0x4090ae82: "SET_REGS", 0x41a0ae8d: "SET_FPU", 0xae80: "RUN"}
GROUP = "bhtimeline"
LINE = re.compile(r"\s*(\S+)\s+(\d+)/(\d+)\s+([\d.]+):\s+(\S+):\s*(.*)")


def perf(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["perf", *args], capture_output=True, text=True, check=check)


def add_probes(key: str, binary: Path) -> None:
    probes = SWIFT_PROBES if key.startswith("bulkhead") else {"main": "main"}
    tag = key.replace("-", "_")
    for name, sym in probes.items():
        r = perf("probe", "-x", str(binary), "-a", f"{GROUP}:{tag}__{name}={sym}", check=False)
        if r.returncode != 0:
            sys.exit(f"startup_timeline.py: perf probe failed for {sym} in {binary}:\n{r.stderr}")


def timeline(data: Path, binary: Path) -> list[list[tuple[str, float]]]:
    out = perf("script", "-i", str(data), "-F", "comm,pid,tid,time,event,trace").stdout
    procs: dict[str, list[tuple[str, float]]] = {}
    pending: dict[str, str] = {}
    last_exited: list[tuple[str, float]] | None = None
    for ln in out.splitlines():
        m = LINE.match(ln)
        if not m:
            continue
        comm, pid, tid, t, ev, tr = m.groups()
        ms = float(t) * 1e3
        if comm == "launch" and ev == "syscalls:sys_exit_wait4":
            if last_exited is not None:
                last_exited.append(("reaped", ms))
                last_exited = None
            continue
        if ev == "sched:sched_process_exec":
            if tr.startswith(f"filename={binary} "):
                procs[pid] = [("exec", ms)]
            continue
        seq = procs.get(pid)
        if seq is None:
            continue
        have = {k for k, _ in seq}
        if ev.startswith(GROUP + ":"):
            name = ev.split("__", 1)[1].replace("_", ".")
            if name not in have:  # first hit only (`main` also matches ParsableCommand.main)
                seq.append((name, ms))
        elif ev == "syscalls:sys_enter_ioctl":
            cmd = int(re.search(r"cmd: (0x[0-9a-f]+)", tr).group(1), 16)
            if cmd in IOCTLS and IOCTLS[cmd] not in have:
                seq.append((IOCTLS[cmd], ms))
                pending[tid] = IOCTLS[cmd]
        elif ev == "syscalls:sys_exit_ioctl":
            name = pending.pop(tid, None)
            if name:
                seq.append((name + " done", ms))
        elif ev == "syscalls:sys_enter_exit_group":
            seq.append(("exit_group", ms))
        elif ev == "sched:sched_process_exit" and tid == pid:
            last_exited = seq
    return list(procs.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--guest", default="exit0", help="guest program in .build/guests (default exit0)")
    args = ap.parse_args()
    image = GUESTS / f"{args.guest}.elf"
    perf("probe", "-d", f"{GROUP}:*", check=False)
    try:
        for key, binary, sub in BINARIES:
            if not binary.exists():
                print(f"({key}: {binary} not built, skipped)\n")
                continue
            binary = binary.resolve()
            add_probes(key, binary)
            with tempfile.TemporaryDirectory() as tmp:
                data = Path(tmp) / "perf.data"
                if not LAUNCH.exists():
                    sys.exit(f"startup_timeline.py: {LAUNCH} missing (run Benchmarks/run.py once)")
                loop = (f"for i in $(seq {args.runs}); do {LAUNCH} {binary} {' '.join(sub)} {image} "
                        ">/dev/null 2>&1; done")
                perf("record", "-q", "-o", str(data), "-e", "sched:sched_process_exec", "-e", "sched:sched_process_exit",
                     "-e", f"{GROUP}:*", "-e", "syscalls:sys_enter_ioctl", "-e", "syscalls:sys_exit_ioctl",
                     "-e", "syscalls:sys_enter_exit_group", "-e", "syscalls:sys_exit_wait4",
                     "--", "sh", "-c", loop)
                seqs = timeline(data, binary)
            if not seqs:
                print(f"{key}: no runs recorded\n")
                continue
            order = max((tuple(k for k, _ in s) for s in seqs), key=lambda o: sum(
                1 for s in seqs if tuple(k for k, _ in s) == o))
            same = [s for s in seqs if tuple(k for k, _ in s) == order]
            print(f"## {key} ({binary.relative_to(REPO)}): {len(same)} of {len(seqs)} runs, median (min) ms")
            for i in range(1, len(order)):
                d = [s[i][1] - s[i - 1][1] for s in same]
                print(f"  {order[i - 1]:>26} -> {order[i]:<26} {statistics.median(d):7.3f} ({min(d):.3f})")
            first = order.index("RUN done")
            d = [s[first][1] - s[0][1] for s in same]
            print(f"  {'exec -> first hypercall exit':>55} {statistics.median(d):7.3f} ({min(d):.3f})")
            d = [s[-1][1] - s[first][1] for s in same]
            print(f"  {'first hypercall exit -> reaped':>55} {statistics.median(d):7.3f} ({min(d):.3f})")
            d = [s[-1][1] - s[0][1] for s in same]
            print(f"  {'exec -> reaped':>55} {statistics.median(d):7.3f} ({min(d):.3f})\n")
    finally:
        perf("probe", "-d", f"{GROUP}:*", check=False)


if __name__ == "__main__":
    main()
