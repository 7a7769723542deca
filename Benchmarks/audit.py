#!/usr/bin/env python3
"""The audit log (issue 12): durable appends, verification, proofs.

    python3 Benchmarks/audit.py [--rounds N] [--big N] [--no-build] [--python]

Builds the release `bulkhead` and `bulkhead-audit-writer` first (unless --no-build). Writes its
logs under Benchmarks/out/audit (the repository's file system: what a host's log would be on).
Three measures, each against a baseline in the same run:

1. Durable appends per second with 1, 8 and 64 concurrent writers (`bulkhead-audit-writer
   --bench`: each writer appends one record at a time and waits until it is durable), with the
   p50/p99 latency of one append. Writers are OS threads blocked in `append` (as `bulkhead run`
   is), and, for 8 and 64, Swift tasks awaiting it (`--tasks`, as the daemon's request handlers
   will be). The floor: a plain Python loop that writes the very bytes the
   appender wrote (its records and checkpoints), batch by batch as the appender grouped them,
   with one fdatasync per batch. Goal: at least 0.7x the floor with 64 writers. Rounds are
   interleaved (appender, floor, appender, ...) and medians reported.
2. Verification of a log of --big records (default 10^6): `bulkhead audit verify` against reading
   the same bytes and SHA-256 over them in Python (a lower bound of any verifier's work). Goal:
   under 10 s. With --python, tools/audit_verify.py on the same log too.
3. Proofs in a tree of --big records (`bulkhead-audit-writer --proofs`): producing and checking an
   inclusion proof and a consistency proof, p50/p99, against one SHA-256 of a 300-byte record.
   Goal: under 1 ms each.
"""
import argparse, hashlib, os, shutil, statistics, struct, subprocess, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO  # noqa: E402

OUT = REPO / "Benchmarks" / "out" / "audit"
RELEASE = REPO / ".build" / "release"


def build():
    for product in ["bulkhead", "bulkhead-audit-writer"]:
        subprocess.run(["swift", "build", "-c", "release", "--product", product], cwd=REPO, check=True)


def frames(path):
    """(payload start, end, is_checkpoint) for every whole frame of a segment."""
    data = path.read_bytes()
    at, out = 0, []
    while at + 8 <= len(data):
        length = struct.unpack_from("<I", data, at)[0]
        if length == 0 or at + 8 + length > len(data):
            break
        out.append((at, at + 8 + length, data[at + 8] != ord("{")))
        at += 8 + length
    return data, out


def batches(log):
    """The appender's groups: the bytes up to and including each checkpoint frame."""
    out = []
    for seg in sorted(log.glob("*.seg")):
        data, fs = frames(seg)
        start = 0
        for (a, b, checkpoint) in fs:
            if checkpoint:
                out.append(data[start:b])
                start = b
    return out


def floor(log, records):
    """Records per second of writing the appender's bytes batch by batch, fdatasync per batch."""
    bs = batches(log)
    path = OUT / "floor.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    t = time.perf_counter()
    for b in bs:
        os.write(fd, b)
        os.fdatasync(fd)
    elapsed = time.perf_counter() - t
    os.close(fd)
    path.unlink()
    return records / elapsed, len(bs)


def appender(writers, per_writer, tasks=False):
    log = OUT / f"log-{writers}"
    shutil.rmtree(log, ignore_errors=True)
    r = subprocess.run([str(RELEASE / "bulkhead-audit-writer"), str(log), "--writers", str(writers),
                        "--records", str(per_writer), "--bench"] + (["--tasks"] if tasks else []),
                       capture_output=True, text=True, check=True)
    f = r.stdout.split()
    v = dict(zip(f[0::2], f[1::2]))
    return log, int(v["records"]) / float(v["seconds"]), float(v["p50_us"]), float(v["p99_us"]), int(v["records"])


def appends(rounds):
    print("== durable appends (records/s; floor = the same bytes, one fdatasync per batch)")
    print(f"{'writers':>14} {'appender':>10} {'floor':>10} {'ratio':>6} {'records/sync':>13} {'p50 us':>8} {'p99 us':>8}")
    for writers, per, tasks in [(1, 3000, False), (8, 1500, False), (64, 300, False), (8, 1500, True), (64, 300, True)]:
        rates, floors, p50s, p99s, per_sync = [], [], [], [], []
        for _ in range(rounds):
            log, rate, p50, p99, n = appender(writers, per, tasks)
            fl, nb = floor(log, n)
            rates.append(rate); floors.append(fl); p50s.append(p50); p99s.append(p99); per_sync.append(n / nb)
        a, f = statistics.median(rates), statistics.median(floors)
        label = f"{writers} {'tasks' if tasks else 'threads'}"
        print(f"{label:>14} {a:>10.0f} {f:>10.0f} {a / f:>6.2f} {statistics.median(per_sync):>13.1f} "
              f"{statistics.median(p50s):>8.0f} {statistics.median(p99s):>8.0f}")


def verification(big, python):
    print(f"== verifying a log of {big} records")
    log = OUT / "big"
    if not (log / "log.pub").exists() or int(os.environ.get("AUDIT_REBUILD", "0")):
        shutil.rmtree(log, ignore_errors=True)
        writers = 64
        t = time.perf_counter()
        subprocess.run([str(RELEASE / "bulkhead-audit-writer"), str(log), "--writers", str(writers),
                        "--records", str(big // writers), "--bench"], check=True, stdout=subprocess.DEVNULL)
        print(f"   written in {time.perf_counter() - t:.1f} s")
    size = sum(p.stat().st_size for p in log.glob("*.seg"))
    t = time.perf_counter()
    h = hashlib.sha256()
    for p in sorted(log.glob("*.seg")):
        h.update(p.read_bytes())
    base = time.perf_counter() - t
    t = time.perf_counter()
    r = subprocess.run([str(RELEASE / "bulkhead"), "audit", "verify", str(log)], capture_output=True, text=True)
    swift = time.perf_counter() - t
    print("   " + r.stdout.strip().splitlines()[1])
    print(f"   {size / 2**20:.0f} MiB; read + SHA-256 (baseline) {base:.2f} s; bulkhead audit verify {swift:.2f} s "
          f"({swift / base:.1f}x), status {r.returncode}")
    if python:
        t = time.perf_counter()
        r = subprocess.run([sys.executable, str(REPO / "tools" / "audit_verify.py"), str(log)], capture_output=True, text=True)
        print(f"   tools/audit_verify.py {time.perf_counter() - t:.2f} s, status {r.returncode}")


def proofs(big):
    print(f"== proofs in a tree of {big} records")
    r = subprocess.run([str(RELEASE / "bulkhead-audit-writer"), "--proofs", str(big)], capture_output=True, text=True, check=True)
    f = r.stdout.split()
    v = dict(zip(f[0::2], f[1::2]))
    hash_us = float(v["hash_us"])
    print(f"   tree built in {float(v['build_seconds']):.2f} s; one SHA-256 of a record (baseline) {hash_us:.2f} us")
    for kind in ["inclusion", "consistency"]:
        p50, p99 = float(v[f"{kind}_p50_us"]), float(v[f"{kind}_p99_us"])
        print(f"   {kind} proof, produced and checked: p50 {p50:.1f} us ({p50 / hash_us:.0f} hashes), p99 {p99:.1f} us")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--big", type=int, default=1_000_000)
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--python", action="store_true", help="also time tools/audit_verify.py on the big log")
    a = ap.parse_args()
    if not a.no_build:
        build()
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start")
    appends(a.rounds)
    verification(a.big, a.python)
    proofs(a.big)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
