#!/usr/bin/env python3
"""virtio-net between two VMs wired back to back over a Unix SOCK_SEQPACKET socket.

    python3 Benchmarks/net.py [--frames N] [--runs R] [--bulkhead PATH]

VM A runs `netbench rx N` (listening), VM B runs `netbench tx SIZE N` (connecting); the
receiver's own clock (time hypercall, first to last frame) gives frames/s and bytes/s. Frames the
sender's queue could not place are retried by the guest, so N frames always arrive.
"""
import argparse, os, re, statistics, subprocess, sys, tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, bulkhead_path  # noqa: E402




def one(bh, size, frames):
    sock = os.path.join(tempfile.mkdtemp(), "net.sock")
    g = str(REPO / ".build/guests/netbench.elf")
    rx = subprocess.Popen([bh, "run", "--no-jail", g, "--net-listen", sock, "--cmdline", f"rx {frames}", "--timeout", "120"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    tx = subprocess.run([bh, "run", "--no-jail", g, "--net-connect", sock, "--cmdline", f"tx {size} {frames}", "--timeout", "120"],
                        capture_output=True, text=True)
    out, err = rx.communicate(timeout=150)
    m = re.search(r"netbench: rx (\d+) frames (\d+) bytes (\d+) ns", out)
    if rx.returncode != 0 or tx.returncode != 0 or not m:
        sys.exit(f"netbench failed: rx {out}{err} tx {tx.stdout}{tx.stderr}")
    n, b, ns = map(int, m.groups())
    return n / ns * 1e9, b / ns * 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=20000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--bulkhead")
    a = ap.parse_args()
    bh = bulkhead_path(a.bulkhead)
    subprocess.run(["bash", str(REPO / "Guest/build.sh")], check=True, capture_output=True)
    print(f"bulkhead: {bh}; {a.frames} frames per run, {a.runs} runs, medians\n")
    print("| frame size | frames/s | MB/s |")
    print("|---|---|---|")
    for size in (64, 1500):
        r = [one(bh, size, a.frames) for _ in range(a.runs)]
        print(f"| {size} B | {statistics.median(x[0] for x in r):,.0f} | {statistics.median(x[1] for x in r) / 1e6:.1f} |")


if __name__ == "__main__":
    main()
