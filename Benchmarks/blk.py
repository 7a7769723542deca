#!/usr/bin/env python3
"""virtio-blk from a guest program against the same I/O done directly on the host file.

    python3 Benchmarks/blk.py [--runs N] [--bulkhead PATH]

For each mode the guest `blkbench` does the I/O through virtio-blk (doorbells on ioeventfds, and
again with --no-ioeventfd, every doorbell an MMIO exit), and this script does the same preads /
pwrites on the same image file from the host. Runs are interleaved; medians are reported.
Both sides go through the host page cache (the image is a regular file, no O_DIRECT), so the
ratio measures Bulkhead's path, not the disk. Write modes end with a flush (guest) / fdatasync
(host) inside the timed interval.
"""
import argparse, os, random, re, statistics, subprocess, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, bulkhead_path  # noqa: E402
IMAGE = REPO / "Benchmarks" / "out" / "blk-bench.img"
SIZE = 256 << 20
MODES = [("seq-read", 128, 1 << 20), ("seq-write", 128, 1 << 20), ("rand-read", 4000, 4096), ("rand-write", 4000, 4096)]




def guest(bh, mode, ops, extra):
    out = subprocess.run([bh, "run", "--no-jail", str(REPO / ".build/guests/blkbench.elf"), "--disk", str(IMAGE),
                          "--memory", "128", "--cmdline", f"{mode} {ops}"] + extra,
                         capture_output=True, text=True, timeout=300)
    m = re.search(r"blkbench: \S+ (\d+) ops (\d+) bytes (\d+) ns", out.stdout)
    if out.returncode != 0 or not m:
        sys.exit(f"blkbench failed: {out.stdout}{out.stderr}")
    return int(m.group(3))


def host(mode, ops, size):
    fd = os.open(IMAGE, os.O_RDWR)
    rnd = random.Random(1)
    buf = bytes(size)
    sectors = SIZE // 4096
    t0 = time.monotonic_ns()
    for i in range(ops):
        off = (i * size) % SIZE if mode.startswith("seq") else rnd.randrange(sectors) * 4096
        if mode.endswith("read"):
            os.pread(fd, size, off)
        else:
            os.pwrite(fd, buf, off)
    if mode.endswith("write"):
        os.fdatasync(fd)
    t = time.monotonic_ns() - t0
    os.close(fd)
    return t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--bulkhead")
    args = ap.parse_args()
    bh = bulkhead_path(args.bulkhead)
    subprocess.run(["bash", str(REPO / "Guest/build.sh")], check=True, capture_output=True)
    IMAGE.parent.mkdir(parents=True, exist_ok=True)
    with open(IMAGE, "wb") as f:
        f.truncate(SIZE)
    rows = []
    for mode, ops, size in MODES:
        g, gx, h = [], [], []
        for _ in range(args.runs):
            order = [0, 1, 2]
            random.shuffle(order)
            for k in order:
                if k == 0: g.append(guest(bh, mode, ops, []))
                elif k == 1: gx.append(guest(bh, mode, ops, ["--no-ioeventfd"]))
                else: h.append(host(mode, ops, size))
        mg, mx, mh = statistics.median(g), statistics.median(gx), statistics.median(h)
        total = ops * size
        rows.append((mode, size, ops, total / mg * 1e3, total / mh * 1e3, mh / mg, mg / ops / 1e3, mx / ops / 1e3, mh / ops / 1e3))
    print(f"bulkhead: {bh}; image {SIZE >> 20} MiB (page cache); {args.runs} interleaved runs, medians\n")
    print("| mode | request | guest MB/s | host MB/s | guest/host | guest µs/op (ioeventfd) | guest µs/op (MMIO exit doorbell) | host µs/op |")
    print("|---|---|---|---|---|---|---|---|")
    for mode, size, ops, gmb, hmb, ratio, gus, xus, hus in rows:
        print(f"| {mode} | {size // 1024} KiB × {ops} | {gmb:.0f} | {hmb:.0f} | {ratio:.2f}× | {gus:.1f} | {xus:.1f} | {hus:.1f} |")


if __name__ == "__main__":
    main()
