#!/usr/bin/env python3
"""The cost of running the VM in a bulkhead-worker (issue 4), against running it in-process.

    python3 Benchmarks/worker.py [--runs N] [--bulkhead PATH]

Build first: `make release` (or `swift build -c release --static-swift-stdlib --scratch-path
.build-static --product bulkhead` and the same for `bulkhead-worker`); the worker's SHA-256 is
computed here and passed with --worker-sha256. Runs `bulkhead run exit0.elf` and `bulkhead run
--worker exit0.elf` alternately, --runs times each, and reports the medians of exec -> exit (wall
clock around the whole process, which includes the worker's start, its jail steps and the
descriptor hand-over) and their difference. Run as root to include the namespaces step.
"""
import argparse, hashlib, os, statistics, subprocess, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, bulkhead_path  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=21)
    ap.add_argument("--bulkhead")
    args = ap.parse_args()
    bh = bulkhead_path(args.bulkhead)
    worker = Path(bh).parent / "bulkhead-worker"
    if not worker.exists():
        sys.exit(f"worker.py: {worker} not built")
    digest = hashlib.sha256(worker.read_bytes()).hexdigest()
    guest = str(REPO / ".build/guests/exit0.elf")
    modes = {"in-process": [str(worker), "--standalone", guest], "worker": [bh, "run", "--no-jail", "--worker-sha256", digest, guest],
             "jailed": [bh, "run", "--worker-sha256", digest, guest]}
    samples = {m: [] for m in modes}
    for _ in range(2):  # warm-up
        for cmd in modes.values():
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(args.runs):
        for m, cmd in modes.items():
            t = time.perf_counter_ns()
            r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            samples[m].append((time.perf_counter_ns() - t) / 1e6)
            if r.returncode != 0:
                sys.exit(f"worker.py: {m} run failed ({r.returncode}): {r.stderr}")
    med = {m: statistics.median(v) for m, v in samples.items()}
    print(f"bulkhead: {bh}; {args.runs} interleaved runs each; uid {os.getuid()}; load {os.getloadavg()[0]:.2f}")
    print("| mode | exec -> exit, median | min | max |")
    print("|---|---|---|---|")
    for m, v in samples.items():
        print(f"| {m} | {med[m]:.2f} ms | {min(v):.2f} | {max(v):.2f} |")
    print(f"| worker - in-process | {med['worker'] - med['in-process']:+.2f} ms | | |")
    print(f"| jailed - worker (the jail's own cost) | {med['jailed'] - med['worker']:+.2f} ms | | |")


if __name__ == "__main__":
    main()
