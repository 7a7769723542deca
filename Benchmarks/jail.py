#!/usr/bin/env python3
"""What the jail costs (issue 4): time to the guest's first hypercall, host memory per VM, and
creating and destroying 50 jailed VMs at once. Run as root (the jail needs it).

    python3 Benchmarks/jail.py [--runs N] [--vms N] [--bulkhead PATH]

Build first with `make release` (the worker's SHA-256 is computed here and passed with
--worker-sha256). Three measures, each against a baseline in the same run:

1. exec -> first hypercall: CLOCK_MONOTONIC read here just before the exec, against the
   first-hypercall-ns that `bulkhead run --report-timing` prints (the VM's own clock reading; the
   same clock in every process). Modes, interleaved, --runs each: in process
   (`bulkhead-worker --standalone`), a worker without the jail (`bulkhead run --no-jail`), and the
   jailed worker (the default as root). The jail's cost is jailed minus unjailed worker; the goal
   is at most 5 ms.
2. host memory per VM: a jailed `loop` guest (64 MiB, which it barely touches) is left running;
   the worker's RSS minus the RSS of its guest-memory mapping (found in /proc/PID/smaps by its
   size), the VM cgroup's memory.usage_in_bytes (which also counts the kernel's memory for the VM:
   page tables, KVM's structures) minus the same, and the launcher's RSS, which stays alive for the
   run. The goal is at most 8 MiB (worker RSS minus guest memory).
3. create and destroy --vms VMs at once: wall time for that many concurrent `bulkhead run
   hello.elf`, jailed, against the same in process (`bulkhead-worker --standalone hello.elf`).
"""
import argparse, hashlib, os, re, statistics, subprocess, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, bulkhead_path  # noqa: E402


def first_hypercall(cmd):
    t0 = time.monotonic_ns()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.exit(f"jail.py: {cmd} failed ({r.returncode}): {r.stderr}")
    m = re.search(r"first-hypercall-ns (\d+)", r.stderr)
    if not m:
        sys.exit(f"jail.py: no first-hypercall-ns in: {r.stderr}")
    return (int(m.group(1)) - t0) / 1e6


def status_kib(pid, field="VmRSS"):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rss_kib(pid):
    return status_kib(pid)


def mapping_rss_kib(pid, size_kib):
    """Rss of the mappings of exactly size_kib (the guest memory)."""
    total, current = 0, None
    for line in open(f"/proc/{pid}/smaps"):
        if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
            current = None
        elif line.startswith("Size:"):
            current = int(line.split()[1])
        elif line.startswith("Rss:") and current == size_kib:
            total += int(line.split()[1])
    return total


def memory_per_vm(bh, digest, memory_mib=64):
    p = subprocess.Popen([bh, "run", "--worker-sha256", digest, "--memory", str(memory_mib), "--timeout", "30",
                          str(REPO / ".build/guests/loop.elf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        worker = None
        for _ in range(300):
            out = subprocess.run(["pgrep", "-P", str(p.pid), "-x", "bulkhead-worker"], capture_output=True, text=True).stdout.split()
            if out:
                worker = int(out[0])
                break
            time.sleep(0.01)
        if worker is None:
            sys.exit("jail.py: the worker did not show")
        time.sleep(0.5)
        rss = rss_kib(worker)
        anon = status_kib(worker, "RssAnon")
        guest = mapping_rss_kib(worker, memory_mib * 1024)
        cgroup = None
        for line in open(f"/proc/{worker}/cgroup"):
            parts = line.strip().split(":", 2)
            if "memory" in parts[1].split(","):
                path = f"/sys/fs/cgroup/memory{parts[2]}/memory.usage_in_bytes"
                if os.path.exists(path):
                    cgroup = int(open(path).read()) // 1024
            elif parts[0] == "0" and os.path.exists(f"/sys/fs/cgroup{parts[2]}/memory.current"):
                cgroup = int(open(f"/sys/fs/cgroup{parts[2]}/memory.current").read()) // 1024
        return rss, anon, guest, cgroup, rss_kib(p.pid)
    finally:
        p.kill()
        p.wait()


def many(cmd_for, n):
    t = time.monotonic()
    procs = [subprocess.Popen(cmd_for(i), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(n)]
    for pr in procs:
        _, err = pr.communicate()
        if pr.returncode != 0:
            sys.exit(f"jail.py: a VM failed ({pr.returncode}): {err}")
    return time.monotonic() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=21)
    ap.add_argument("--vms", type=int, default=50)
    ap.add_argument("--bulkhead")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("jail.py: the jail needs root")
    bh = bulkhead_path(args.bulkhead)
    worker = str(Path(bh).parent / "bulkhead-worker")
    digest = hashlib.sha256(Path(worker).read_bytes()).hexdigest()
    guest = str(REPO / ".build/guests/exit0.elf")
    modes = {
        "in process": [worker, "--standalone", "--report-timing", guest],
        "worker, no jail": [bh, "run", "--no-jail", "--worker-sha256", digest, "--report-timing", guest],
        "jailed worker": [bh, "run", "--worker-sha256", digest, "--report-timing", guest],
    }
    samples = {m: [] for m in modes}
    for _ in range(2):
        for cmd in modes.values():
            first_hypercall(cmd)
    for _ in range(args.runs):
        for m, cmd in modes.items():
            samples[m].append(first_hypercall(cmd))
    med = {m: statistics.median(v) for m, v in samples.items()}
    print(f"bulkhead: {bh}; {args.runs} interleaved runs each; load {os.getloadavg()[0]:.2f}")
    print("\n| mode | exec -> first hypercall, median | min | max |")
    print("|---|---|---|---|")
    for m, v in samples.items():
        print(f"| {m} | {med[m]:.2f} ms | {min(v):.2f} | {max(v):.2f} |")
    print(f"| the jail (jailed - worker, no jail) | {med['jailed worker'] - med['worker, no jail']:+.2f} ms | | |")
    print(f"| jailed / in process | {med['jailed worker'] / med['in process']:.2f}x | | |")

    rss, anon, guest_rss, cgroup, launcher = memory_per_vm(bh, digest)
    print("\n| memory of one jailed VM (64 MiB loop guest) | KiB |")
    print("|---|---|")
    print(f"| worker RSS | {rss} |")
    print(f"| of which guest memory touched | {guest_rss} |")
    print(f"| worker RSS - guest memory | {rss - guest_rss} ({(rss - guest_rss) / 1024:.1f} MiB) |")
    print(f"| worker private (anonymous) RSS - guest memory: the per-VM part; the rest is the binary's pages, shared by all workers | {anon - guest_rss} ({(anon - guest_rss) / 1024:.1f} MiB) |")
    if cgroup is not None:
        print(f"| VM cgroup usage (kernel memory too) - guest memory | {cgroup - guest_rss} ({(cgroup - guest_rss) / 1024:.1f} MiB) |")
    print(f"| launcher RSS (alive for the run) | {launcher} |")

    hello = str(REPO / ".build/guests/hello.elf")
    jailed = many(lambda i: [bh, "run", "--worker-sha256", digest, "--memory", "16", hello], args.vms)
    plain = many(lambda i: [worker, "--standalone", "--memory", "16", hello], args.vms)
    print(f"\n| {args.vms} VMs created, run and destroyed at once | seconds |")
    print("|---|---|")
    print(f"| jailed | {jailed:.2f} |")
    print(f"| in process | {plain:.2f} |")
    print(f"| ratio | {jailed / plain:.2f}x |")


if __name__ == "__main__":
    main()
