#!/usr/bin/env python3
"""Bulkhead benchmarks: Bulkhead against a bare C KVM program doing the same KVM work.

    python3 Benchmarks/run.py [--runs N] [--hc-runs N] [--hc-calls N] [--no-build] [--no-static]

Builds what it needs (release `bulkhead`, plus a `--static-swift-stdlib` variant in
.build-static unless --no-static; `--no-build` skips both Swift builds and uses whatever
binaries exist), the guest programs (Guest/build.sh) and the C programs in
Benchmarks/baseline/ (into Benchmarks/out/), then measures, interleaving the variants in a
shuffled order every round:

  a. exec -> first hypercall (guest exit0.elf): the launcher's CLOCK_MONOTONIC reading right
     before posix_spawn, subtracted from the first-hypercall-ns the process reports with
     --report-timing (CLOCK_MONOTONIC is the same clock in every process).
  b. exec -> process exit for exit0.elf (spawn .. wait4 returned).
  c. hypercall round trip: hcbench.elf making N `version` calls (same N for every variant,
     passed on the guest command line); per call = (T(hcbench) - median T(exit0)) / N.
  d. memory: peak RSS (ru_maxrss) running exit0.elf and cpu.elf; the guest RAM resident in a
     live process (from /proc/PID/smaps, the mapping with MADV_HUGEPAGE and MADV_DONTDUMP),
     and so the VMM's own memory = peak RSS - guest RAM resident.

Writes a Markdown report to stdout and Benchmarks/out/results.md, raw samples to
Benchmarks/out/results.json. Python 3.11, standard library only. docs/benchmarks.md explains
the method and the figures.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import re
import resource
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "Benchmarks"
OUT = BENCH / "out"
GUESTS = REPO / ".build" / "guests"
# The VM in process, as the C baseline runs it: `bulkhead-worker --standalone` (the launcher and
# its worker are measured by jail.py and worker.py).
BULKHEAD = REPO / ".build" / "release" / "bulkhead-worker"
BULKHEAD_STATIC = REPO / ".build-static" / "release" / "bulkhead-worker"
C_BASELINE = OUT / "kvm_baseline"
LAUNCH = OUT / "launch"

GUEST_MIB = 64          # bulkhead run's default --memory; the C baseline uses the same
GOAL_STARTUP_RATIO = 1.5
GOAL_HYPERCALL_RATIO = 1.1
GOAL_VMM_MIB = 8.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_checked(cmd: list[str], what: str) -> None:
    t = time.monotonic()
    log(f"[build] {what}: {' '.join(cmd)}")
    r = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        log(r.stdout)
        sys.exit(f"run.py: {what} failed (exit {r.returncode})")
    log(f"[build] {what}: done in {time.monotonic() - t:.1f} s")


# ---------------------------------------------------------------------------------------------
# Building


def build(args: argparse.Namespace) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    if not args.no_build:
        # Only the product measured: test support (which imports Testing) has no static build.
        run_checked(["swift", "build", "-c", "release", "--product", "bulkhead-worker"], "bulkhead-worker (release)")
        if not args.no_static:
            run_checked(["swift", "build", "-c", "release", "--static-swift-stdlib", "--product", "bulkhead-worker",
                         "--scratch-path", ".build-static"], "bulkhead-worker (release, static Swift stdlib)")
    if not BULKHEAD.exists():
        sys.exit(f"run.py: {BULKHEAD} is missing (run without --no-build)")
    run_checked(["bash", "Guest/build.sh"], "guest programs")
    cc = os.environ.get("CC", "cc")
    for src, dst in ((BENCH / "baseline" / "kvm_baseline.c", C_BASELINE),
                     (BENCH / "baseline" / "launch.c", LAUNCH)):
        if dst.exists() and dst.stat().st_mtime >= src.stat().st_mtime:
            continue
        cmd = [cc, "-O2", "-Wall", "-o", str(dst), str(src)]
        if dst == LAUNCH:  # static, so its own RSS stays tiny (see launch.c)
            r = subprocess.run(cmd[:2] + ["-static"] + cmd[2:], cwd=REPO, capture_output=True, text=True)
            if r.returncode == 0:
                log(f"[build] {dst.name}: cc -O2 -static")
                continue
            log(f"[build] {dst.name}: static link failed, linking dynamically")
        run_checked(cmd, dst.name)


# ---------------------------------------------------------------------------------------------
# Running one process


@dataclass
class Variant:
    key: str
    label: str
    argv: list[str]        # everything before the image
    cmdline_flag: str      # how to pass a guest command line

    def command(self, image: Path, cmdline: str | None = None) -> list[str]:
        cmd = list(self.argv)
        if cmdline is not None:
            cmd += [self.cmdline_flag, cmdline]
        return cmd + [str(image)]


@dataclass
class Sample:
    spawn: int
    exit: int
    status: int
    maxrss_kib: int
    start: int | None = None           # process-reported start-ns
    first_hypercall: int | None = None  # process-reported first-hypercall-ns

    @property
    def wall(self) -> int:
        return self.exit - self.spawn


LAUNCH_RE = re.compile(r"^launch: spawn-ns (\d+) exit-ns (\d+) status (\d+) maxrss-kib (\d+)$", re.M)
TIMING_RE = re.compile(r"^timing: start-ns (\d+)(?: first-hypercall-ns (\d+))?$", re.M)


def launch(cmd: list[str], expect_status: int = 0, stdout_check: str | None = None) -> Sample:
    r = subprocess.run([str(LAUNCH)] + cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    m = LAUNCH_RE.search(r.stderr)
    if r.returncode != 0 or not m:
        sys.exit(f"run.py: launching {' '.join(cmd)} failed:\n{r.stderr}")
    s = Sample(spawn=int(m[1]), exit=int(m[2]), status=int(m[3]), maxrss_kib=int(m[4]))
    if s.status != expect_status:
        sys.exit(f"run.py: {' '.join(cmd)} exited with {s.status}, expected {expect_status}:\n{r.stderr}")
    if stdout_check is not None and stdout_check not in r.stdout:
        sys.exit(f"run.py: {' '.join(cmd)}: expected {stdout_check!r} on stdout, got {r.stdout!r}")
    t = TIMING_RE.search(r.stderr)
    if t:
        s.start = int(t[1])
        s.first_hypercall = int(t[2]) if t[2] else None
    return s


@dataclass
class MemorySample:
    guest_rss_kib: int
    guest_anon_huge_kib: int
    rss_kib: int
    rss_anon_kib: int
    rss_file_kib: int
    pss_kib: int
    private_kib: int
    hwm_kib: int


def smaps_sample(cmd: list[str], delay: float) -> MemorySample:
    """Starts `cmd` twice, reads /proc/PID/smaps of the second after `delay` s while both guests
    run, then kills both. The first copy is a companion: with it running, the file pages of the
    binary and its libraries are shared, so the sampled process's private memory is what one
    more VM costs."""
    companion = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(delay)
        smaps = Path(f"/proc/{p.pid}/smaps").read_text()
        rollup = Path(f"/proc/{p.pid}/smaps_rollup").read_text()
        status = Path(f"/proc/{p.pid}/status").read_text()
        if p.poll() is not None or companion.poll() is not None:
            raise RuntimeError("the process ended before it could be sampled")
    finally:
        for q in (p, companion):
            if q.poll() is None:
                os.kill(q.pid, signal.SIGKILL)
            q.wait()
    guest_rss = guest_huge = None
    # One block per mapping: the header line, then "Key: value kB" lines, VmFlags last.
    for block in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", smaps):
        fields = dict(re.findall(r"^(\w+):\s+(\d+) kB$", block, re.M))
        flags = re.search(r"^VmFlags:(.*)$", block, re.M)
        if (flags and {"hg", "dd"} <= set(flags[1].split())
                and int(fields.get("Size", 0)) == GUEST_MIB * 1024):
            guest_rss = int(fields["Rss"])
            guest_huge = int(fields.get("AnonHugePages", 0))
    if guest_rss is None:
        raise RuntimeError("no guest RAM mapping (MADV_HUGEPAGE + MADV_DONTDUMP, 64 MiB) in smaps")
    roll = dict(re.findall(r"^(\w+):\s+(\d+) kB$", rollup, re.M))
    st = dict(re.findall(r"^(\w+):\s+(\d+) kB$", status, re.M))
    return MemorySample(
        guest_rss_kib=guest_rss, guest_anon_huge_kib=guest_huge,
        rss_kib=int(roll["Rss"]), rss_anon_kib=int(st["RssAnon"]), rss_file_kib=int(st["RssFile"]),
        pss_kib=int(roll["Pss"]),
        private_kib=int(roll["Private_Clean"]) + int(roll["Private_Dirty"]),
        hwm_kib=int(st["VmHWM"]))


def busy_cpu_seconds() -> float:
    """CPU time (s) spent by everything on the machine, from /proc/stat."""
    f = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in f[:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        r = resource.getrusage(who)
        total += r.ru_utime + r.ru_stime
    return total


def c_guest_resident(image: Path, boot_info: bool, cmdline: str | None = None) -> int:
    """Guest RAM the C baseline left resident (mincore), in KiB."""
    cmd = [str(C_BASELINE), "--report-memory"] + (["--boot-info"] if boot_info else [])
    cmd += (["--cmdline", cmdline] if cmdline else []) + [str(image)]
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    m = re.search(r"guest-resident-bytes (\d+)", r.stderr)
    if r.returncode != 0 or not m:
        sys.exit(f"run.py: {' '.join(cmd)} failed: {r.stderr}")
    return int(m[1]) // 1024


# ---------------------------------------------------------------------------------------------
# Statistics and formatting


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def p90(xs: list[float]) -> float:
    s = sorted(xs)
    # nearest-rank 90th percentile
    k = max(0, min(len(s) - 1, -(-9 * len(s) // 10) - 1))
    return s[k]


def ms(ns: float) -> str:
    return f"{ns / 1e6:.2f} ms"


def us(ns: float) -> str:
    return f"{ns / 1e3:.2f} µs"


def mib(kib: float) -> str:
    return f"{kib / 1024:.2f} MiB"


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def interleaved(variants: list[Variant], rounds: int, rng: random.Random):
    for i in range(rounds):
        order = list(variants)
        rng.shuffle(order)
        for v in order:
            yield i, v


# ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=40, help="measured runs per variant of exit0/cpu (default 40)")
    ap.add_argument("--hc-runs", type=int, default=20, help="measured hcbench runs per variant (default 20)")
    ap.add_argument("--hc-calls", type=int, default=20000, help="hypercalls per hcbench run (default 20000)")
    ap.add_argument("--warmup", type=int, default=3, help="discarded runs per variant first (default 3)")
    ap.add_argument("--mem-samples", type=int, default=3, help="smaps samples per variant and guest (default 3)")
    ap.add_argument("--no-build", action="store_true", help="do not run swift build (use existing binaries)")
    ap.add_argument("--no-static", action="store_true", help="skip the --static-swift-stdlib variant")
    ap.add_argument("--seed", type=int, default=1, help="seed of the interleaving order")
    args = ap.parse_args()
    if args.runs < 1 or args.hc_runs < 1 or args.hc_calls < 1:
        sys.exit("run.py: --runs, --hc-runs and --hc-calls must be positive")

    t_begin = time.monotonic()
    build(args)
    load_before = os.getloadavg()
    busy_before, own_before, wall_before = busy_cpu_seconds(), own_cpu_seconds(), time.monotonic()

    exit0, hcbench, cpu = GUESTS / "exit0.elf", GUESTS / "hcbench.elf", GUESTS / "cpu.elf"
    bh = Variant("bulkhead", "Bulkhead (`swift build -c release`)",
                 [str(BULKHEAD), "--standalone", "--report-timing"], "--cmdline")
    variants_bh = [bh]
    if not args.no_static and BULKHEAD_STATIC.exists():
        variants_bh.append(Variant("bulkhead-static", "Bulkhead (`--static-swift-stdlib`, `make release`)",
                                   [str(BULKHEAD_STATIC), "--standalone", "--report-timing"], "--cmdline"))
    elif not args.no_static:
        log(f"[note] {BULKHEAD_STATIC} missing: static variant skipped")
    c_bare = Variant("c", "C baseline (rdi = 0)", [str(C_BASELINE), "--report-timing"], "--cmdline")
    c_boot = Variant("c-bootinfo", "C baseline + boot info",
                     [str(C_BASELINE), "--report-timing", "--boot-info"], "--cmdline")
    startup_variants = variants_bh + [c_bare, c_boot]
    # The guest reads N from its command line, which needs a boot-information block.
    hc_variants = variants_bh + [c_boot]
    cpu_variants = variants_bh + [c_boot]
    rng = random.Random(args.seed)
    N = str(args.hc_calls)

    # ---- a, b: exit0 ------------------------------------------------------------------------
    log(f"[run] exit0.elf: {args.warmup} warm-up + {args.runs} runs x {len(startup_variants)} variants")
    for _, v in interleaved(startup_variants, args.warmup, rng):
        launch(v.command(exit0))
    startup: dict[str, list[Sample]] = {v.key: [] for v in startup_variants}
    for _, v in interleaved(startup_variants, args.runs, rng):
        s = launch(v.command(exit0))
        if s.first_hypercall is None:
            sys.exit(f"run.py: {v.key} printed no first-hypercall-ns")
        startup[v.key].append(s)

    # ---- c: hcbench ---------------------------------------------------------------------------
    log(f"[run] hcbench.elf N={N}: 1 warm-up + {args.hc_runs} runs x {len(hc_variants)} variants")
    for _, v in interleaved(hc_variants, 1, rng):
        launch(v.command(hcbench, N))
    hc: dict[str, list[Sample]] = {v.key: [] for v in hc_variants}
    for _, v in interleaved(hc_variants, args.hc_runs, rng):
        hc[v.key].append(launch(v.command(hcbench, N)))

    # ---- d: memory --------------------------------------------------------------------------
    log(f"[run] cpu.elf: {args.runs} runs x {len(cpu_variants)} variants")
    for _, v in interleaved(cpu_variants, 1, rng):
        launch(v.command(cpu), stdout_check=": ok")
    cpu_runs: dict[str, list[Sample]] = {v.key: [] for v in cpu_variants}
    for _, v in interleaved(cpu_variants, args.runs, rng):
        cpu_runs[v.key].append(launch(v.command(cpu), stdout_check=": ok"))

    log(f"[run] memory samples from /proc/PID/smaps: {args.mem_samples} per variant and guest")
    # hcbench touches the same guest pages as exit0 (system area, boot info, program, stack)
    # but lives long enough to be sampled; cpu.elf with many rounds likewise.
    mem: dict[str, dict[str, list[MemorySample]]] = {"exit0": {}, "cpu": {}}
    for _, v in interleaved(startup_variants, args.mem_samples, rng):
        # (empty command line: the default 100000 calls, several seconds; killed once sampled)
        mem["exit0"].setdefault(v.key, []).append(smaps_sample(v.command(hcbench), 0.3))
    for _, v in interleaved(cpu_variants, args.mem_samples, rng):
        mem["cpu"].setdefault(v.key, []).append(smaps_sample(v.command(cpu, "1000000"), 0.3))
    # Cross-check of the guest pages touched, from inside the C baseline (mincore).
    mincore = {
        "exit0 (rdi = 0)": c_guest_resident(exit0, False),
        "exit0 (+boot info)": c_guest_resident(exit0, True),
        f"hcbench N={N} (+boot info)": c_guest_resident(hcbench, True, N),
        "cpu (+boot info)": c_guest_resident(cpu, True),
    }
    load_after = os.getloadavg()
    # CPU that other processes used while we measured (a noise indicator), in CPUs on average.
    others = ((busy_cpu_seconds() - busy_before) - (own_cpu_seconds() - own_before)) / (time.monotonic() - wall_before)
    elapsed = time.monotonic() - t_begin

    # ---- report -------------------------------------------------------------------------------
    labels = {v.key: v.label for v in startup_variants}
    L: list[str] = []
    now = datetime.datetime.now(datetime.timezone.utc).astimezone()
    cpu_model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                      if ln.startswith("model name")), "?")
    thp = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().strip()
    L.append(f"# Bulkhead benchmark results\n")
    L.append(f"- date: {now:%Y-%m-%d %H:%M %Z}; host: {platform.node()}, Linux {platform.release()}, "
             f"{os.cpu_count()} CPUs ({cpu_model}), THP `{thp}`")
    L.append(f"- benchmark wall time {elapsed:.0f} s (including builds)")
    L.append(f"- runs per variant: exit0 {args.runs}, cpu {args.runs}, hcbench {args.hc_runs} "
             f"(N = {N} calls), after {args.warmup} discarded warm-up runs; order shuffled every round")
    L.append(f"- guest RAM {GUEST_MIB} MiB, 1 vCPU; all times CLOCK_MONOTONIC; figures are median and p90")
    L.append(f"- CPU used by other processes while measuring: {others:.2f} CPUs on average "
             f"(of {os.cpu_count()}); load average before {load_before[0]:.2f}")
    if others > 0.15:
        L.append(f"- **warning: other processes were busy during the run; times are inflated and noisy. "
                 "Rerun on an idle machine for figures to compare.**")
    L.append("")

    def row(name: str, key: str, xs: list[float], fmt) -> str:
        return f"| {name} | {labels[key]} | {fmt(median(xs))} | {fmt(p90(xs))} |"

    L.append("## Startup (guest `exit0.elf`)\n")
    L.append("| measure | variant | median | p90 |")
    L.append("|---|---|---|---|")
    for name, f in (("exec → first hypercall", lambda s: s.first_hypercall - s.spawn),
                    ("exec → process start-ns¹", lambda s: s.start - s.spawn),
                    ("start-ns¹ → first hypercall", lambda s: s.first_hypercall - s.start),
                    ("first hypercall → process reaped", lambda s: s.exit - s.first_hypercall),
                    ("exec → process exit", lambda s: s.wall)):
        for v in startup_variants:
            L.append(row(name, v.key, [f(s) for s in startup[v.key]], ms))
    L.append("\n¹ start-ns: Bulkhead = when `Machine.run` began (after dynamic loading, Swift runtime "
             "start-up, argument parsing and reading the image); C = first instruction of `main`.\n")

    L.append(f"## Hypercall round trip (guest `hcbench.elf`, N = {N} `version` calls)\n")
    L.append("| variant | hcbench wall, median | per call, median | per call, p90 |")
    L.append("|---|---|---|---|")
    per_call: dict[str, list[float]] = {}
    for v in hc_variants:
        base = median([s.wall for s in startup[v.key]])
        per_call[v.key] = [(s.wall - base) / args.hc_calls for s in hc[v.key]]
        L.append(f"| {labels[v.key]} | {ms(median([s.wall for s in hc[v.key]]))} | "
                 f"{us(median(per_call[v.key]))} | {us(p90(per_call[v.key]))} |")
    L.append("\nPer call = (wall time of an hcbench run − median wall time of exit0.elf for the same "
             "variant) / N. The C variant passes a boot-information block so that the guest can read N; "
             "its exit0 reference is the `+boot info` row above.\n")

    L.append("## Memory\n")
    L.append("Peak RSS is the child's `ru_maxrss` (through `Benchmarks/out/launch`, see launch.c). "
             "Guest RAM resident and the breakdown are read from `/proc/PID/smaps` of a live process "
             "running the same guest pages (hcbench for exit0, cpu.elf with many rounds for cpu) while a second "
             "copy of the same command runs beside it; VMM own = peak RSS − guest RAM resident. The last column "
             "(private memory minus guest RAM, with the binary's and libraries' file pages shared with the "
             "second copy) is what one more VM costs.\n")
    L.append("| guest | variant | peak RSS | guest RAM resident (THP) | VMM own (peak − guest) | "
             "live: file-backed RSS | live: anon RSS excl. guest | live: private excl. guest, 2nd VM running |")
    L.append("|---|---|---|---|---|---|---|---|")
    own: dict[tuple[str, str], float] = {}
    for guest, runs_by_key, keys in (("exit0", startup, [v.key for v in startup_variants]),
                                     ("cpu", cpu_runs, [v.key for v in cpu_variants])):
        for key in keys:
            peak = median([s.maxrss_kib for s in runs_by_key[key]])
            ms_ = mem[guest][key]
            g = median([m.guest_rss_kib for m in ms_])
            huge = median([m.guest_anon_huge_kib for m in ms_])
            own[(guest, key)] = peak - g
            L.append(f"| {guest} | {labels[key]} | {mib(peak)} | {mib(g)} ({mib(huge)}) | {mib(peak - g)} | "
                     f"{mib(median([m.rss_file_kib for m in ms_]))} | "
                     f"{mib(median([m.rss_anon_kib - m.guest_rss_kib for m in ms_]))} | "
                     f"{mib(median([m.private_kib - m.guest_rss_kib for m in ms_]))} |")
    L.append("\nGuest RAM resident according to the C baseline itself (mincore at exit): " +
             "; ".join(f"{k}: {mib(v)}" for k, v in mincore.items()) + ".\n")
    L.append("| VMM overhead over the bare KVM program (VMM own − C own, same guest pages) | exit0 | cpu |")
    L.append("|---|---|---|")
    for v in variants_bh:
        L.append(f"| {labels[v.key]} | {mib(own[('exit0', v.key)] - own[('exit0', 'c-bootinfo')])} | "
                 f"{mib(own[('cpu', v.key)] - own[('cpu', 'c-bootinfo')])} |")

    L.append("\n## Goals (from the issue)\n")
    L.append("| goal | variant | measured | target | verdict |")
    L.append("|---|---|---|---|---|")
    c_first = median([s.first_hypercall - s.spawn for s in startup["c"]])
    for v in variants_bh:
        r = median([s.first_hypercall - s.spawn for s in startup[v.key]]) / c_first
        L.append(f"| exec → first hypercall ≤ {GOAL_STARTUP_RATIO}× C | {labels[v.key]} | {r:.2f}× "
                 f"({ms(r * c_first)} vs {ms(c_first)}) | ≤ {GOAL_STARTUP_RATIO}× | {verdict(r <= GOAL_STARTUP_RATIO)} |")
    c_call = median(per_call["c-bootinfo"])
    for v in variants_bh:
        r = median(per_call[v.key]) / c_call
        L.append(f"| hypercall round trip ≤ {GOAL_HYPERCALL_RATIO}× C | {labels[v.key]} | {r:.3f}× "
                 f"({us(median(per_call[v.key]))} vs {us(c_call)}) | ≤ {GOAL_HYPERCALL_RATIO}× | "
                 f"{verdict(r <= GOAL_HYPERCALL_RATIO)} |")
    for v in variants_bh:
        worst = max(own[("exit0", v.key)], own[("cpu", v.key)])
        L.append(f"| VMM memory ≤ {GOAL_VMM_MIB:g} MiB (peak RSS − guest RAM) | {labels[v.key]} | {mib(worst)} "
                 f"| ≤ {GOAL_VMM_MIB:g} MiB | {verdict(worst <= GOAL_VMM_MIB * 1024)} |")
    L.append("")
    report = "\n".join(L)
    print(report)
    (OUT / "results.md").write_text(report + "\n")

    raw = {
        "date": now.isoformat(), "args": vars(args), "load_before": load_before, "load_after": load_after,
        "other_processes_cpus": others,
        "startup": {k: [vars(s) for s in v] for k, v in startup.items()},
        "hcbench": {k: [vars(s) for s in v] for k, v in hc.items()},
        "cpu": {k: [vars(s) for s in v] for k, v in cpu_runs.items()},
        "memory": {g: {k: [vars(m) for m in v] for k, v in d.items()} for g, d in mem.items()},
        "c_mincore_kib": mincore,
    }
    (OUT / "results.json").write_text(json.dumps(raw, indent=1) + "\n")
    log(f"[done] {elapsed:.0f} s; wrote {OUT / 'results.md'} and {OUT / 'results.json'}")


if __name__ == "__main__":
    main()
