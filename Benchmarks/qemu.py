#!/usr/bin/env python3
"""Bulkhead side by side with QEMU (issue 3): one PVH guest image booted by both.

    python3 Benchmarks/qemu.py [--runs N] [--reads N] [--memory MiB] [--bulkhead PATH]
                               [--qemu PATH] [--warmup N] [--json FILE]

Needs root (or /dev/kvm access), gcc, and Debian's QEMU (`apt-get install -y qemu-system-x86`).
Bulkhead is the static release build found by common.bulkhead_path (build it first:
`swift build -c release --static-swift-stdlib --scratch-path .build-static --product bulkhead`).

The guest is Benchmarks/pvh/ (built here into .build/pvh/pvh-bench.elf): a PVH ELF whose 32-bit
entry goes to long mode and drops to CPL3, prints "pvh-bench: hello" on COM1, then does
--reads 4 KiB virtio-blk reads at pseudo-random offsets of a 64 MiB raw image, times each with
the TSC, checks every block's contents, and prints the results. Both VMMs get the same image,
the same command line, 1 vCPU and the same RAM, and run it alternately (Bulkhead, QEMU,
Bulkhead, ...) --runs times each after --warmup discarded pairs. Per run:

- exec -> first output: CLOCK_MONOTONIC just before posix_spawn (Benchmarks/out/launch, the
  same launcher as Benchmarks/run.py) to the moment this script reads the end of the line
  "pvh-bench: hello" from the VMM's stdout pipe (also the first byte of it).
- exec -> exit: spawn to wait4 returning.
- last output -> exit: the last read of the VMM's stdout pipe to wait4 returning (the caller's
  wait after the guest's last line; issue 9).
- peak RSS: ru_maxrss of the VMM process itself (the launcher spawns it directly, no shell).
- 4 KiB read latency: the guest's TSC ticks from publishing a request to seeing it in the used
  ring (median, p99 and mean of the run's reads), converted with the host TSC frequency
  (Benchmarks/pvh/tscfreq.c, measured before and after). Cross-check: the host-side time from
  the "start" line to the "done" line, divided by the number of reads.

Exits non-zero if a run fails: wrong exit status, a missing marker, or the guest's data check.
Method, results and commentary: docs/benchmarks.md, "Side by side with QEMU".
"""
import argparse, json, os, platform, re, resource, shutil, statistics, struct, subprocess, sys, tempfile, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, bulkhead_path  # noqa: E402

OUT = REPO / "Benchmarks" / "out"
GUEST = REPO / ".build" / "pvh" / "pvh-bench.elf"
IMAGE = OUT / "pvh-disk.img"
IMAGE_SIZE = 64 << 20
SECTOR_MAGIC = 0x48434E4542485650  # "PVHBENCH", as in Benchmarks/pvh/bench.c
LAUNCH = OUT / "launch"
TSCFREQ = OUT / "tscfreq"
# QEMU's machine: microvm without the legacy devices; -cpu host alone aborts on an MSR here.
QEMU_MACHINE = ["-M", "microvm,pit=off,pic=off,rtc=off,acpi=off", "-accel", "kvm",
                "-cpu", "host,-arch-capabilities", "-nodefaults", "-no-user-config"]


def die(msg):
    sys.exit(f"qemu.py: {msg}")


def build(cc="cc"):
    subprocess.run(["bash", str(REPO / "Benchmarks/pvh/build.sh")], check=True, stdout=subprocess.DEVNULL)
    OUT.mkdir(parents=True, exist_ok=True)
    if not LAUNCH.exists():
        src = str(REPO / "Benchmarks/baseline/launch.c")
        if subprocess.run([cc, "-O2", "-static", "-o", str(LAUNCH), src]).returncode != 0:
            subprocess.run([cc, "-O2", "-o", str(LAUNCH), src], check=True)
    src = REPO / "Benchmarks/pvh/tscfreq.c"
    if not TSCFREQ.exists() or TSCFREQ.stat().st_mtime < src.stat().st_mtime:
        subprocess.run([cc, "-O2", "-Wall", "-o", str(TSCFREQ), str(src)], check=True)


def make_image():
    """64 MiB; every 512-byte sector starts with its number and the magic (u64 LE each)."""
    want = bytearray(IMAGE_SIZE)
    for s in range(IMAGE_SIZE // 512):
        struct.pack_into("<QQ", want, s * 512, s, SECTOR_MAGIC)
    if not IMAGE.exists() or IMAGE.read_bytes() != want:
        IMAGE.write_bytes(want)
    # Both VMMs read through the host page cache: have the whole image there before measuring.
    IMAGE.read_bytes()


def tsc_hz():
    return int(subprocess.run([str(TSCFREQ), "200"], check=True, capture_output=True, text=True).stdout)


def bulkhead_cmd(bh, a):
    # By default the VM in process, as QEMU runs it: `bulkhead-worker --standalone`. --worker: in
    # an unjailed worker (`bulkhead run --no-jail`); --jailed: in a jailed worker (root), as
    # `bulkhead run` runs it by default.
    if a.jailed or a.worker:
        head = [bh, "run", *([] if a.jailed else ["--no-jail"])]
    else:
        head = [str(Path(bh).parent / "bulkhead-worker"), "--standalone"]
    return head + ["--kernel", str(GUEST), "--memory", str(a.memory), "--disk", str(IMAGE),
                   "--timeout", "60", "--cmdline", f"pvh.reads={a.reads}"]


def qemu_cmd(qemu, a):
    # cache: QEMU's default (writeback: the host page cache, as Bulkhead's pread does).
    return [qemu, *QEMU_MACHINE, "-m", f"{a.memory}M", "-smp", "1", "-display", "none", "-serial", "stdio",
            "-no-reboot", "-kernel", str(GUEST), "-append", f"pvh.reads={a.reads}",
            "-global", "virtio-mmio.force-legacy=false",
            "-drive", f"file={IMAGE},format=raw,if=none,id=d0", "-device", "virtio-blk-device,drive=d0",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]


def run_once(name, cmd, expect_status, reads):
    """Runs one VM through the launcher; returns the measures of the run."""
    err = tempfile.TemporaryFile()
    p = subprocess.Popen([str(LAUNCH), *cmd], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, bufsize=0)
    fd = p.stdout.fileno()
    chunks = []  # (arrival ns, end offset)
    out = bytearray()
    deadline = time.monotonic() + 120
    while True:
        b = os.read(fd, 65536)
        t = time.monotonic_ns()
        if not b:
            break
        out += b
        chunks.append((t, len(out)))
        if time.monotonic() > deadline:
            p.kill()
            die(f"{name}: no end after 120 s")
    p.wait()
    err.seek(0)
    stderr = err.read().decode(errors="replace")
    text = out.decode(errors="replace")
    m = re.search(r"launch: spawn-ns (\d+) exit-ns (\d+) status (\d+) maxrss-kib (\d+)", stderr)
    if not m:
        die(f"{name}: the launcher did not report (is {LAUNCH} built?)\n{stderr}")
    spawn, exit_ns, status, maxrss = map(int, m.groups())

    def fail(why):
        die(f"{name}: {why}\ncommand: {' '.join(cmd)}\n--- guest console ---\n{text}--- stderr ---\n{stderr}")

    if "pvh-bench: FAIL" in text:
        fail("the guest reported a failure")
    if status != expect_status:
        fail(f"exit status {status}, expected {expect_status}")

    def arrival(offset):
        """When the byte at `offset` of the output was read."""
        for t, end in chunks:
            if end > offset:
                return t
        fail(f"no output at offset {offset}")

    hello = text.find("pvh-bench: hello\n")
    start = text.find("pvh-bench: start\n")
    done = re.search(r"pvh-bench: done reads=(\d+) tsc_total=(\d+)\n", text)
    lat = re.search(r"pvh-bench: latency_tsc min=(\d+) p50=(\d+) p90=(\d+) p99=(\d+) max=(\d+) mean=(\d+) sectors=(\d+)\n", text)
    if hello != 0 or start < 0 or not done or not lat or "pvh-bench: ok\n" not in text:
        fail("a marker line is missing (hello first, start, done, latency_tsc, ok)")
    if int(done.group(1)) != reads:
        fail(f"the guest did {done.group(1)} reads, not {reads}")
    r = {
        "first_byte_ns": arrival(hello) - spawn,
        "first_line_ns": arrival(hello + len("pvh-bench: hello\n") - 1) - spawn,
        "exit_ns": exit_ns - spawn,
        # From the moment the last output was read (the guest's last line, then the VMM's own
        # report if any) to the VMM's exit: what a caller waits for after the outcome (issue 9).
        "after_last_output_ns": exit_ns - chunks[-1][0] if chunks else None,
        "maxrss_kib": maxrss,
        "reads": int(done.group(1)),
        "tsc_total": int(done.group(2)),
    }
    # None when both lines came in one read of the pipe (a short run): no host-side span then.
    span = arrival(done.start()) - arrival(start + len("pvh-bench: start\n") - 1)
    r["host_reads_ns"] = span if span > 0 else None
    for k, v in zip(("min", "p50", "p90", "p99", "max", "mean"), lat.groups()):
        r[f"tsc_{k}"] = int(v)
    return r


def values(rows, key):
    return [r[key] for r in rows if r[key] is not None]


def median(rows, key):
    v = values(rows, key)
    return statistics.median(v) if v else None


def guest_mhz(rows):
    """The guest's TSC ticks over the reads against the host's time for the same stretch."""
    v = [r["tsc_total"] / r["host_reads_ns"] * 1e3 for r in rows if r["host_reads_ns"]]
    return f"{statistics.median(v):.1f} MHz" if v else "n/a"


def cpu_seconds_all():
    f = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in f[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def cpu_seconds_own():
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                 resource.getrusage(resource.RUSAGE_CHILDREN)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=11, help="runs of each VMM (default 11, at least 9 for the report)")
    ap.add_argument("--warmup", type=int, default=1, help="discarded pairs of runs first (default 1)")
    ap.add_argument("--reads", type=int, default=2000, help="4 KiB reads per run (default 2000, at most 65536)")
    ap.add_argument("--memory", type=int, default=64, help="guest RAM in MiB for both (default 64)")
    ap.add_argument("--bulkhead")
    ap.add_argument("--jailed", action="store_true", help="run Bulkhead's VM in a jailed worker (needs root; default: in process, bulkhead-worker --standalone)")
    ap.add_argument("--worker", action="store_true", help="run Bulkhead's VM in an unjailed worker (bulkhead run --no-jail)")
    ap.add_argument("--qemu", default="qemu-system-x86_64")
    ap.add_argument("--json", help="also write the raw samples to this file")
    a = ap.parse_args()
    if not 1 <= a.reads <= 65536:
        die("--reads must be 1..65536")
    bh = bulkhead_path(a.bulkhead)
    qemu = shutil.which(a.qemu)
    if not qemu:
        die(f"{a.qemu} not found: apt-get install -y qemu-system-x86")
    qemu_version = subprocess.run([qemu, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    build()
    make_image()

    load_before = os.getloadavg()
    hz0 = tsc_hz()
    wall0, all0, own0 = time.monotonic(), cpu_seconds_all(), cpu_seconds_own()
    variants = [("Bulkhead", bulkhead_cmd(bh, a), 0),       # the i8042 reset: a clean end
                ("QEMU", qemu_cmd(qemu, a), 1)]             # isa-debug-exit: (0 << 1) | 1
    samples = {name: [] for name, _, _ in variants}
    for i in range(a.warmup + a.runs):
        for name, cmd, status in variants:
            r = run_once(name, cmd, status, a.reads)
            if i >= a.warmup:
                samples[name].append(r)
        print(f"\rrun {i + 1}/{a.warmup + a.runs}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    wall = time.monotonic() - wall0
    others = max(0.0, (cpu_seconds_all() - all0 - (cpu_seconds_own() - own0)) / wall)
    hz1 = tsc_hz()
    hz = (hz0 + hz1) / 2
    load_after = os.getloadavg()

    def us(ticks):
        return ticks / hz * 1e6

    B, Q = samples["Bulkhead"], samples["QEMU"]
    rows = [  # label, key, unit conversion, lower is better
        ("exec → first output line (`pvh-bench: hello`)", "first_line_ns", lambda v: v / 1e6, "ms"),
        ("exec → first output byte", "first_byte_ns", lambda v: v / 1e6, "ms"),
        ("exec → exit", "exit_ns", lambda v: v / 1e6, "ms"),
        ("last output → exit", "after_last_output_ns", lambda v: v / 1e6, "ms"),
        ("peak RSS of the VMM process", "maxrss_kib", lambda v: v / 1024, "MiB"),
        ("4 KiB read latency, median of the run's reads", "tsc_p50", us, "µs"),
        ("4 KiB read latency, mean", "tsc_mean", us, "µs"),
        ("4 KiB read latency, p90", "tsc_p90", us, "µs"),
        ("4 KiB read latency, p99", "tsc_p99", us, "µs"),
        ("4 KiB read latency, min", "tsc_min", us, "µs"),
        ("reads, host clock: (done − start) / reads", "host_reads_ns", lambda v: v / a.reads / 1e3, "µs"),
    ]
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"- date: {now}; host: {platform.node()}, Linux {platform.release()}, {os.cpu_count()} CPUs")
    print(f"- Bulkhead: `{os.path.relpath(bh, REPO)}`; QEMU: {qemu_version} (`{qemu}`)")
    print(f"- guest: `.build/pvh/pvh-bench.elf`, {a.memory} MiB, 1 vCPU, {a.reads} reads of 4 KiB per run "
          f"on a {IMAGE_SIZE >> 20} MiB raw image (host page cache for both: Bulkhead preads, QEMU cache=writeback)")
    print(f"- {a.runs} runs each, alternating Bulkhead and QEMU, after {a.warmup} discarded pair(s); "
          f"figures are the median over runs (min–max in brackets)"
          + (" — **provisional: fewer than 9 runs**" if a.runs < 9 else ""))
    print(f"- host TSC {hz / 1e6:.3f} MHz (before {hz0 / 1e6:.3f}, after {hz1 / 1e6:.3f}); "
          f"guest TSC rate against the host clock (cross-check), median: Bulkhead {guest_mhz(B)}, "
          f"QEMU {guest_mhz(Q)}")
    print(f"- load average before {load_before[0]:.2f} / after {load_after[0]:.2f}; "
          f"CPU used by other processes while measuring: {others:.2f} CPUs"
          + (" (**noisy: measure again on an idle machine**)" if others > 0.15 else ""))
    print(f"- wall time {wall:.1f} s\n")
    print("| measure | Bulkhead | QEMU | QEMU / Bulkhead |")
    print("|---|---|---|---|")
    for label, key, conv, unit in rows:
        b, q = median(B, key), median(Q, key)
        if b is None or q is None:
            print(f"| {label} | n/a | n/a | |")
            continue
        rb = f"{conv(min(values(B, key))):.2f}–{conv(max(values(B, key))):.2f}"
        rq = f"{conv(min(values(Q, key))):.2f}–{conv(max(values(Q, key))):.2f}"
        print(f"| {label} | {conv(b):.2f} {unit} ({rb}) | {conv(q):.2f} {unit} ({rq}) | {q / b:.2f}× |")

    first_byte = median(Q, "first_byte_ns") / median(B, "first_byte_ns")
    first_line = median(Q, "first_line_ns") / median(B, "first_line_ns")
    rss = median(B, "maxrss_kib") / median(Q, "maxrss_kib")
    lat_b, lat_q = us(median(B, "tsc_p50")), us(median(Q, "tsc_p50"))
    mean_b, mean_q = us(median(B, "tsc_mean")), us(median(Q, "tsc_mean"))
    goals = [
        ("first output at least 5× sooner than QEMU: first byte", f"{first_byte:.2f}× sooner", first_byte >= 5),
        ("first output at least 5× sooner than QEMU: whole `pvh-bench: hello` line", f"{first_line:.2f}× sooner",
         first_line >= 5),
        ("peak RSS at most a quarter of QEMU's", f"{rss:.2f} of QEMU's ({median(B, 'maxrss_kib') / 1024:.1f} vs "
         f"{median(Q, 'maxrss_kib') / 1024:.1f} MiB)", rss <= 0.25),
        ("4 KiB read latency no worse than QEMU (median)", f"{lat_b:.2f} µs vs {lat_q:.2f} µs "
         f"(mean {mean_b:.2f} vs {mean_q:.2f} µs)", lat_b <= lat_q),
    ]
    print("\n| goal | measured | verdict |")
    print("|---|---|---|")
    for goal, measured, ok in goals:
        print(f"| {goal} | {measured} | **{'met' if ok else 'not met'}** |")

    if a.json:
        Path(a.json).write_text(json.dumps({
            "date": now, "bulkhead": bh, "qemu": qemu, "qemu_version": qemu_version, "runs": a.runs,
            "warmup": a.warmup, "reads": a.reads, "memory_mib": a.memory, "tsc_hz": hz,
            "load_before": load_before, "load_after": load_after, "other_cpus": others,
            "commands": {name: cmd for name, cmd, _ in variants}, "samples": samples}, indent=1))


if __name__ == "__main__":
    main()
