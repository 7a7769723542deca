#!/usr/bin/env bash
# The Linux test environment (issue 10): an outer machine whose /dev/kvm is an ordinary,
# hardware-style KVM, so that Linux guests run to user space under Bulkhead on these hosts.
#
#   Tests/LinuxEnvironment/outer-machine.sh [BULKHEAD_DIR]
#
# The outer machine is QEMU with software emulation (`-accel tcg -cpu max`, which offers SVM with
# nested paging, on Intel and AMD hosts alike) booting Debian's own kernel from an initramfs.
# Its /init loads kvm and kvm_amd (nested=1), then runs `bulkhead run` on inner guests: the same
# Debian kernel with a busybox initramfs whose /init reports what Linux's own drivers see. Every
# line the outer machine prints goes to standard output; the last is `outer: done`.
#
# Everything comes from Debian packages (apt-get download: linux-image-*-amd64, busybox-static;
# apt-get install: qemu-system-x86, cpio), cached in .build/linux-env. BULKHEAD_DIR holds the
# release binaries `bulkhead`, `bulkhead-worker` and `bulkhead-worker.sha256` (default:
# .build/release, from `make release`).
# Exit status: 0 when the outer machine ran to `outer: done`; 77 when something it needs cannot
# be had here (the caller skips, with the reason on standard error); 1 otherwise.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BIN="$(cd "${1:-$REPO/.build/release}" && pwd)" || { echo "outer-machine: no directory ${1:-$REPO/.build/release}" >&2; exit 1; }
WORK="$REPO/.build/linux-env"
mkdir -p "$WORK/debs"
skip() { echo "outer-machine: skipped: $*" >&2; exit 77; }

# The package lists may be missing or stale on a fresh machine: refreshed once, when needed.
updated=0
refresh() { [[ $updated == 1 ]] || { apt-get update -q >/dev/null 2>&1; updated=1; }; }
install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null 2>&1; }
command -v qemu-system-x86_64 >/dev/null && command -v cpio >/dev/null \
    || install qemu-system-x86 cpio || { refresh; install qemu-system-x86 cpio; } \
    || skip "qemu-system-x86 and cpio cannot be installed"
for f in bulkhead bulkhead-worker bulkhead-worker.sha256; do [[ -f "$BIN/$f" ]] || skip "$BIN/$f is missing (make release)"; done

# Debian's newest 6.1 kernel image here, and busybox.
cd "$WORK/debs"
if ! ls linux-image-*.deb >/dev/null 2>&1; then
    newest() { apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' | sort -V | tail -1 | cut -d' ' -f1; }
    pkg=$(newest)
    [[ -n "$pkg" ]] || { refresh; pkg=$(newest); }
    [[ -n "$pkg" ]] || skip "no linux-image-6.1.0-*-amd64 package in the apt sources"
    apt-get download "$pkg" >/dev/null 2>&1 || { refresh; apt-get download "$pkg" >/dev/null 2>&1; } || skip "apt-get download $pkg failed"
fi
ls busybox-static_*.deb >/dev/null 2>&1 || apt-get download busybox-static >/dev/null 2>&1 \
    || { refresh; apt-get download busybox-static >/dev/null 2>&1; } || skip "apt-get download busybox-static failed"
rm -rf "$WORK/x" && mkdir -p "$WORK/x"
dpkg-deb -x linux-image-*.deb "$WORK/x/kernel"
dpkg-deb -x busybox-static_*.deb "$WORK/x/busybox"
KERNEL=$(ls "$WORK"/x/kernel/boot/vmlinuz-*)
MODULES=$(ls -d "$WORK"/x/kernel/lib/modules/*)
BUSYBOX="$WORK/x/busybox/bin/busybox"

# A root with busybox and its applets.
base_root() {
    mkdir -p "$1"/{bin,sbin,dev,proc,sys,tmp,run,etc}
    cp "$BUSYBOX" "$1/bin/busybox"
    for a in $("$BUSYBOX" --list); do [[ -e "$1/bin/$a" ]] || ln -s busybox "$1/bin/$a"; done
}

# The inner guests' initramfs: /init reports what Linux's drivers found, then reboots (or what
# its command line's bulkhead.end says: reboot, poweroff or panic). bulkhead.test= picks the extra
# checks (devices, net or vsock).
INNER="$WORK/x/inner"
base_root "$INNER"
mkdir -p "$INNER/modules"
for m in drivers/virtio/virtio.ko drivers/virtio/virtio_ring.ko drivers/virtio/virtio_mmio.ko \
         drivers/block/virtio_blk.ko drivers/char/hw_random/virtio-rng.ko \
         net/core/failover.ko drivers/net/net_failover.ko drivers/net/virtio_net.ko \
         net/vmw_vsock/vsock.ko net/vmw_vsock/vmw_vsock_virtio_transport_common.ko net/vmw_vsock/vmw_vsock_virtio_transport.ko \
         drivers/misc/pvpanic/pvpanic.ko drivers/misc/pvpanic/pvpanic-mmio.ko; do
    cp "$MODULES/kernel/$m" "$INNER/modules/"
done
# vsock-helper: busybox has no vsock client (nor a Unix-socket server, for the outer side).
gcc -static -O2 -o "$WORK/vsock-helper" "$REPO/Tests/LinuxEnvironment/vsock-helper.c" \
    || skip "gcc cannot build a static vsock-helper (libc6-dev)"
cp "$WORK/vsock-helper" "$INNER/bin/vsock-helper"
cat > "$INNER/init" <<'INIT'
#!/bin/sh
# Benchmarks/linux_boot.py: the first user-space line, then reboot at once (benchmark=1 has no
# dot, so the kernel hands it to init as an environment variable).
if [ "$benchmark" = 1 ]; then echo "inner: first user-space line"; reboot -f; fi
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_mmio virtio_blk virtio-rng failover net_failover virtio_net \
         vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport pvpanic pvpanic-mmio; do
    insmod /modules/$m.ko
done
echo "inner: user space up, $(grep -c ^processor /proc/cpuinfo) CPUs"
# Which entry booted this kernel, from the boot_params it kept: the PVH path builds its own
# (type_of_loader 0xb0); Bulkhead's zero page says 0xff, with the bzImage's setup header
# (setup_sects > 0) or, for a vmlinux, none.
bp=/sys/kernel/boot_params/data
loader=$(od -An -tx1 -j 528 -N 1 $bp | tr -d ' '); sects=$(od -An -tu1 -j 497 -N 1 $bp | tr -d ' ')
case $loader in b0) entry=pvh;; ff) [ "$sects" -gt 0 ] && entry=bzimage || entry=vmlinux-64;; *) entry="unknown ($loader)";; esac
echo "inner: entry $entry"
flags=$(grep -m1 '^flags' /proc/cpuinfo)
for f in xsave rdrand; do case " ${flags#*:} " in *" $f "*) echo "inner: cpu has $f";; *) echo "inner: cpu lacks $f";; esac; done
test=; end=reboot; me=; peer=
for w in $(cat /proc/cmdline); do
    case $w in
        bulkhead.test=*) test=${w#*=};; bulkhead.end=*) end=${w#*=};;
        bulkhead.ip=*) me=${w#*=};; bulkhead.peer=*) peer=${w#*=};;
    esac
done
case $test in
devices)
    # Linux's own drivers on Bulkhead's devices: virtio-blk (read, write, flush; a read-only disk
    # refusing writes) and virtio-rng.
    sleep 1
    [ -b /dev/vda ] && echo "inner: disk vda $(cat /sys/block/vda/size) sectors, read-only $(cat /sys/block/vda/ro)"
    [ -b /dev/vdb ] && echo "inner: disk vdb $(cat /sys/block/vdb/size) sectors, read-only $(cat /sys/block/vdb/ro)"
    echo "inner: disk vda sector 0: $(dd if=/dev/vda bs=512 count=1 2>/dev/null | head -c 16)"
    printf 'written-by-linux' | dd of=/dev/vda bs=512 seek=1 conv=fsync 2>/dev/null && echo "inner: disk vda write and flush ok"
    if printf 'x' | dd of=/dev/vdb bs=512 seek=1 conv=fsync 2>/dev/null; then echo "inner: disk vdb write accepted"; else echo "inner: disk vdb write refused"; fi
    echo "inner: rng $(cat /sys/class/misc/hw_random/rng_current) gave $(dd if=/dev/hwrng bs=32 count=1 2>/dev/null | wc -c) bytes"
    ;;
net)
    # Two guests on one wire (virtio-net, frames over a Unix socket): each pings the other until
    # it answers, then stays up a while so that the other's pings are answered too.
    ip link set eth0 up && ip addr add 10.0.2.$me/24 dev eth0
    i=0; ok=0
    while [ $i -lt 90 ]; do ping -c 1 -W 1 10.0.2.$peer >/dev/null 2>&1 && { ok=1; break; }; i=$((i+1)); done
    [ $ok = 1 ] && echo "inner: ping 10.0.2.$peer answered" || echo "inner: ping 10.0.2.$peer unanswered"
    sleep 6
    ;;
vsock)
    # A host Unix socket over vsock: CID 2 (the host), port 5000 is the socket PATH_5000.
    echo "inner: vsock answer: $(vsock-helper ask 2 5000 hello-from-the-guest)"
    ;;
esac
echo "inner: console write ok" > /dev/console && echo "inner: wrote to /dev/console"
case $test/$end in net/*|vsock/*|*/panic) ;; *)
    # Console input: the host types a line once it sees this one (bulkhead's standard input is
    # COM1's receive side).
    echo "inner: type a line"
    if read -t 60 line; then echo "inner: read '$line'"; else echo "inner: read nothing"; fi
    grep -h . /proc/tty/driver/serial 2>/dev/null | sed 's/^/inner: serial: /'
    ;;
esac
ls /sys/bus/virtio/devices 2>/dev/null | sed 's/^/inner: virtio device: /'
case $end in
    poweroff) echo "inner: powering off"; poweroff -f ;;
    panic)
        # A kernel panic, reported through pvpanic (the VM ends as a crash, not with the reboot
        # that panic=-1 would make).
        ls /sys/bus/platform/drivers/pvpanic-mmio 2>/dev/null | grep -q QEMU0001 && echo "inner: pvpanic bound"
        echo "inner: panicking"
        # Let the console drain first: the kernel's own panic lines would otherwise cut into
        # these (seen: "inner: pvpanic b[ 6.54] sysrq: Trigger a crash").
        sleep 1
        echo c > /proc/sysrq-trigger ;;
    *) echo "inner: rebooting"; reboot -f ;;
esac
INIT
chmod +x "$INNER/init"
(cd "$INNER" && find . | cpio -o -H newc -R 0:0 2>/dev/null | gzip -1) > "$WORK/inner.cpio.gz"

# The outer machine's initramfs: busybox, the kvm modules, bulkhead with its libraries, the inner
# kernel (as Debian ships it, a bzImage, and the vmlinux inside it) and initramfs, tiny kernels
# for the reset and power-off loops, vsock-helper, and /init.
OUTER="$WORK/x/outer"
base_root "$OUTER"
mkdir -p "$OUTER/modules" "$OUTER/opt/bulkhead" "$OUTER/guest"
for m in virt/lib/irqbypass.ko arch/x86/kvm/kvm.ko drivers/crypto/ccp/ccp.ko arch/x86/kvm/kvm-amd.ko; do
    cp "$MODULES/kernel/$m" "$OUTER/modules/"
done
cp "$BIN/bulkhead" "$BIN/bulkhead-worker" "$BIN/bulkhead-worker.sha256" "$OUTER/opt/bulkhead/"
for lib in $(ldd "$BIN/bulkhead" "$BIN/bulkhead-worker" | grep -o '/[^ ]*\.so[^ ]*' | sort -u); do
    mkdir -p "$OUTER$(dirname "$lib")"; cp -L "$lib" "$OUTER$lib"
done
cp "$KERNEL" "$OUTER/guest/vmlinuz"
cp "$WORK/inner.cpio.gz" "$OUTER/guest/initrd"
cp "$WORK/vsock-helper" "$OUTER/bin/vsock-helper"
# Benchmark mode (BULKHEAD_LINUX_ENV_BENCH=N, Benchmarks/linux_boot.py): QEMU (microvm) and the
# timeline helper go into the outer machine too.
if [[ -n "${BULKHEAD_LINUX_ENV_BENCH:-}" ]]; then
    gcc -static -O2 -o "$OUTER/bin/timeline" "$REPO/Benchmarks/linux/timeline.c"
    QEMU=$(command -v qemu-system-x86_64)
    cp "$QEMU" "$OUTER/bin/qemu-system-x86_64"
    for lib in $(ldd "$QEMU" | grep -o '/[^ ]*\.so[^ ]*' | sort -u); do
        mkdir -p "$OUTER$(dirname "$lib")"; cp -L "$lib" "$OUTER$lib"
    done
    mkdir -p "$OUTER/usr/share/qemu"
    for f in bios-microvm.bin qboot.rom linuxboot_dma.bin pvh.bin kvmvapic.bin; do cp -L "/usr/share/qemu/$f" "$OUTER/usr/share/qemu/"; done
fi
NOTE=$(python3 "$REPO/Tests/LinuxEnvironment/images.py" vmlinux "$KERNEL" "$OUTER/guest/vmlinux") \
    || skip "python3 cannot unpack the vmlinux from $KERNEL"
python3 "$REPO/Tests/LinuxEnvironment/images.py" tiny "$OUTER/guest/tiny-reset" reset
python3 "$REPO/Tests/LinuxEnvironment/images.py" tiny "$OUTER/guest/tiny-poweroff" poweroff
chmod 0644 "$OUTER"/guest/*
sed "s/@PVH_NOTE_TYPE_OFFSET@/$NOTE/" > "$OUTER/init" <<'INIT'
#!/bin/sh
# A write to a FIFO whose reader is gone must fail, not kill init (and the outer machine).
trap '' PIPE
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mount -t tmpfs run /run; mount -t tmpfs tmp /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
for m in irqbypass kvm ccp; do insmod /modules/$m.ko 2>/dev/null; done
insmod /modules/kvm-amd.ko nested=1 || echo "outer: kvm_amd did not load"
[ -c /dev/kvm ] && echo "outer: /dev/kvm is here" || echo "outer: no /dev/kvm"
B=/opt/bulkhead/bulkhead
CMD="console=ttyS0 panic=-1"   # reboot=k comes from Bulkhead itself (LinuxCommandLine.defaults)
# A run takes well under a minute here; one that hangs (an AP that never starts) is stopped sooner
# than that allows for, so there is time to run it once more.
INNER_TIMEOUT=180
# bulkhead.runs= on the outer command line (BULKHEAD_LINUX_ENV_RUNS): the runs to make, by name
# (comma-separated; default all).
RUNS=all
for w in $(cat /proc/cmdline); do case $w in bulkhead.runs=*) RUNS=${w#*=};; esac; done
want() { case ",$RUNS," in *,all,*|*,$1,*) return 0;; esac; return 1; }
# Benchmark mode: bulkhead.bench=N pairs of boots (Bulkhead jailed, QEMU microvm, alternately)
# of the inner kernel to its first user-space line and on through its reboot, with 1 and 2 vCPUs;
# one "bench:" line each, for Benchmarks/linux_boot.py.
BENCH=
BENCH_VCPUS="1 2"
for w in $(cat /proc/cmdline); do
    case $w in bulkhead.bench=*) BENCH=${w#*=};; bulkhead.bench-vcpus=*) BENCH_VCPUS=$(echo ${w#*=} | tr , ' ');; esac
done
if [ -n "$BENCH" ]; then
    K="console=ttyS0 panic=-1 pci=off benchmark=1"
    FIRST="inner: first user-space line"; RESTART="reboot: Restarting system"
    for n in $BENCH_VCPUS; do
        i=0
        while [ $i -lt $BENCH ]; do
            i=$((i+1))
            echo "bench: bulkhead vcpus $n run $i $(timeline "$FIRST" "$RESTART" /tmp/bulkhead.log -- \
                $B run --kernel /guest/vmlinuz --initrd /guest/initrd --memory 256 --vcpus $n --no-console-input --timeout 90 --cmdline "$K")"
            tr -d '\r' < /tmp/bulkhead.log | grep -v '^$' | tail -3 | sed "s/^/bench: bulkhead log: /"
            echo "bench: qemu-microvm vcpus $n run $i $(timeline "$FIRST" "$RESTART" /tmp/qemu.log -- \
                timeout 90 qemu-system-x86_64 -L /usr/share/qemu -M microvm -accel kvm -cpu host -m 256 -smp $n -nodefaults -no-user-config \
                -display none -serial stdio -no-reboot -kernel /guest/vmlinuz -initrd /guest/initrd -append "$K")"
            tr -d '\r' < /tmp/qemu.log | grep -v '^$' | tail -3 | sed "s/^/bench: qemu log: /"
        done
    done
    echo "outer: done"
    poweroff -f
fi
# Runs an inner guest (KERNEL, then bulkhead options); its standard input is a FIFO on which a
# line is typed when the guest asks.
# Whether a run's output (FILE...) shows what the emulated SVM sometimes does to an inner guest:
# a triple fault during boot, or a lost start-up IPI (the guest then waits for that CPU until
# --timeout; check.sh). Such a run is made up to twice more.
flaked() { grep -q 'triple fault (KVM_EXIT_SHUTDOWN)\|timeout: the guest was still running' "$@"; }
run() {
    want $1 || return 0
    run_once "$@"
    for again in 1 2; do
        flaked /tmp/out || break
        echo "outer: $1: the inner guest triple-faulted or timed out; running it once more"
        run_once "$@"
    done
}
run_once() {
    name=$1; extra=$2; kernel=$3; shift 3
    echo "outer: begin $name"
    began=$(date +%s)
    rm -f /tmp/in /tmp/out; mkfifo /tmp/in; : > /tmp/out
    server=
    if [ -n "${SERVE_VSOCK:-}" ]; then rm -f $SERVE_VSOCK; vsock-helper serve $SERVE_VSOCK & server=$!; fi
    ( $B run --kernel $kernel --initrd /guest/initrd --memory 256 --timeout $INNER_TIMEOUT --cmdline "$CMD $extra" "$@" < /tmp/in 2>&1
      echo "outer: end $name status $?" ) | tee /tmp/out &
    # Only this run's pipeline is waited for: a helper serving the run in the background (vsock)
    # never ends if the guest never came to it.
    job=$!
    # A heartbeat while the run lasts: every 60 s, the run's processes with their state and where
    # each waits in the kernel (wchan). Past bulkhead's own --timeout by a minute, they are killed:
    # a run that hangs is then a failure that says where it hung, not a silent machine (one CI
    # run went silent here for 7 minutes with no clue whether Bulkhead or the emulator hung). If
    # the heartbeats stop too, the outer machine itself is stuck.
    ( while sleep 60; do
        t=$(( $(date +%s) - began ))
        procs=$(for p in /proc/[0-9]*; do c=$(cat $p/comm 2>/dev/null); case "$c" in bulkhead*|vsock-helper) echo -n " $c[${p#/proc/}]:$(cut -d' ' -f3 $p/stat 2>/dev/null):$(cat $p/wchan 2>/dev/null)";; esac; done)
        echo "outer: heartbeat $name $t s:$procs"
        if [ $t -gt $(( INNER_TIMEOUT + 60 )) ]; then
            echo "outer: $name is still running $t s after it began, past its --timeout; killing it"
            for p in /proc/[0-9]*; do case "$(cat $p/comm 2>/dev/null)" in bulkhead*) kill -9 ${p#/proc/} 2>/dev/null;; esac; done
        fi
      done ) &
    beat=$!
    # Read-write, so that the open never waits for the reader: a blocking open of the FIFO is
    # interrupted (EINTR, which this shell does not retry, ending /init) when a child of /init
    # exits meanwhile, such as a worker of the run before that outlived its launcher by a few ms
    # while it closed its VM and was reparented here.
    exec 3<> /tmp/in
    i=0
    while ! grep -q '^inner: type a line' /tmp/out && ! grep -q '^outer: end' /tmp/out && [ $i -lt 1500 ]; do
        sleep 0.2; i=$((i+1))
    done
    echo "typed-by-the-host" >&3
    exec 3>&-
    wait $job
    kill $beat 2>/dev/null
    [ -n "$server" ] && kill $server 2>/dev/null
    echo "outer: $name took $(( $(date +%s) - began )) s"
    return 0
}
# Each feature runs through the jailed worker and unjailed (--no-jail), and each entry, vCPU count
# and way to end at least once each way:
#                        jail     entry        vCPUs  tests                  end
#   jailed-1cpu          jailed   bzImage      1      console in/out         reboot (i8042)
#   unjailed-2cpu        unjailed bzImage      2      console, devices       poweroff
#   devices-jailed       jailed   bzImage      4      console, devices, hidden CPU features  poweroff
#   pvh-vsock-unjailed   unjailed PVH          4      vsock                  panic
#   net-pair A / B       jailed / unjailed, bzImage / 64-bit ELF, 1 each, ping each other, reboot
#   pvh-vsock-jailed     jailed   PVH          2      vsock                  reboot=b (BIOS path)
#   elf64-panic-jailed   jailed   64-bit ELF   2      -                      panic
run jailed-1cpu "" /guest/vmlinuz --vcpus 1
# Disks: vda writable, vdb read-only, each 1 MiB starting with its name.
for d in u0 u1 d0 d1; do printf "bulkhead-disk-${d#?}!" > /tmp/$d.img; truncate -s 1M /tmp/$d.img; done
after_disks() {
    echo "outer: after $1: $2 sector 1: $(dd if=/tmp/$2.img bs=512 skip=1 count=1 2>/dev/null | head -c 16)"
    echo "outer: after $1: $3 sector 1 is $(dd if=/tmp/$3.img bs=512 skip=1 count=1 2>/dev/null | tr -d '\000' | wc -c) non-zero bytes"
}
run unjailed-2cpu "bulkhead.test=devices bulkhead.end=poweroff" /guest/vmlinuz --vcpus 2 --no-jail \
    --disk /tmp/u0.img --read-only-disk /tmp/u1.img --rng
want unjailed-2cpu && after_disks unjailed-2cpu u0 u1
run devices-jailed "bulkhead.test=devices bulkhead.end=poweroff" /guest/vmlinuz --vcpus 4 \
    --disk /tmp/d0.img --read-only-disk /tmp/d1.img --rng --hide-cpu-feature xsave --hide-cpu-feature rdrand
want devices-jailed && after_disks devices-jailed d0 d1

# The vmlinux inside the bzImage, through its PVH entry, talking to a host Unix socket over vsock.
# (SERVE_VSOCK: each attempt gets its own host server.)
SERVE_VSOCK=/tmp/vs_5000 run pvh-vsock-unjailed "bulkhead.test=vsock bulkhead.end=panic" /guest/vmlinux \
    --vcpus 4 --no-jail --vsock /tmp/vs --no-console-input

# The same vmlinux without its PVH note, so through the 64-bit entry.
cp /guest/vmlinux /tmp/vmlinux64
printf '\377\177\000\000' | dd of=/tmp/vmlinux64 bs=1 seek=@PVH_NOTE_TYPE_OFFSET@ conv=notrunc 2>/dev/null

# Two guests pinging each other over virtio-net: A jailed listens, B unjailed connects.
net_pair() {
echo "outer: begin net-pair"
$B run --kernel /guest/vmlinuz --initrd /guest/initrd --memory 192 --timeout $INNER_TIMEOUT --no-console-input --vcpus 1 --stats \
    --cmdline "$CMD bulkhead.test=net bulkhead.ip=1 bulkhead.peer=2" --net-listen /tmp/net.sock > /tmp/net-a 2>&1 &
a=$!
i=0; while [ ! -S /tmp/net.sock ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
$B run --kernel /tmp/vmlinux64 --initrd /guest/initrd --memory 192 --timeout $INNER_TIMEOUT --no-console-input --vcpus 1 --stats \
    --no-jail --cmdline "$CMD bulkhead.test=net bulkhead.ip=2 bulkhead.peer=1" --net-connect /tmp/net.sock > /tmp/net-b 2>&1
sb=$?
wait $a; sa=$?
sed 's/^/A: /' /tmp/net-a; sed 's/^/B: /' /tmp/net-b
echo "outer: end net-pair status $sa $sb"
}
if want net-pair; then
    net_pair
    for again in 1 2; do
        flaked /tmp/net-a /tmp/net-b || break
        echo "outer: net-pair: an inner guest triple-faulted or timed out; running the pair once more"
        net_pair
    done
fi

# reboot=b: Linux restarts through the BIOS, in real mode at F000:FFF0, where Bulkhead's reset
# vector code resets the machine.
SERVE_VSOCK=/tmp/vs_5000 run pvh-vsock-jailed "bulkhead.test=vsock reboot=b" /guest/vmlinux --vcpus 2 --vsock /tmp/vs --no-console-input
# pvpanic ends the VM as a crash.
run elf64-panic-jailed bulkhead.end=panic /tmp/vmlinux64 --vcpus 2 --no-console-input
rm -f /tmp/vmlinux64

# Reset and power off, many times, jailed, with vCPUs still waiting for their start-up IPI
# (issue 10, point 3), on this hardware-style KVM.
for k in reset poweroff; do
    want tiny-$k || continue
    ok=0
    for i in 1 2 3 4 5 6 7 8 9 10; do
        began=$(date +%s)
        # (timeout -s KILL 60: a run that outlived its own --timeout shows as status 137 here,
        # where a wedged outer machine shows as silence.)
        timeout -s KILL 60 $B run --kernel /guest/tiny-$k --vcpus 4 --memory 32 --timeout 30 --no-console-input > /tmp/tiny.out 2>&1
        st=$?
        [ $st = 0 ] && grep -q '^up' /tmp/tiny.out && ok=$((ok+1))
        echo "outer: tiny-$k run $i status $st in $(( $(date +%s) - began )) s"
    done
    echo "outer: tiny-$k: $ok of 10 ended with status 0"
done
echo "outer: done"
poweroff -f
INIT
chmod +x "$OUTER/init"
# Every file in the outer (and inner) machine is root's, whoever builds the archives: the
# launcher runs only a worker binary that nobody but root (or the caller) can change, and an
# ordinary user's build would otherwise copy in a worker owned by that user's uid.
(cd "$OUTER" && find . | cpio -o -H newc -R 0:0 2>/dev/null | gzip -1) > "$WORK/outer.cpio.gz"

# 1.25 GiB of guest RAM (inner guests of 256 MiB one after another, two of 192 MiB at once) and a 128 MiB translation
# cache keep QEMU near 0.7 GiB resident. QEMU logs CPU resets (a triple fault among them) to
# qemu-debug.log; its own exit status is the last line, for check.sh to tell an emulator that died
# from a guest that failed.
set +e
LIMIT=900; [[ -n "${BULKHEAD_LINUX_ENV_BENCH:-}" ]] && LIMIT=3600   # the benchmark boots many guests
# The console goes to a file that is streamed to standard output; a watcher stops QEMU early when
# the outer kernel has locked up (seen once: both outer CPUs stuck in the kernel for minutes,
# which would otherwise hold CI until the limit).
CONSOLE="$WORK/outer-console.log"; : > "$CONSOLE"
timeout $LIMIT qemu-system-x86_64 -accel tcg,tb-size=128 -cpu max -m 1280 -smp 2 -nographic -no-reboot \
    -d cpu_reset,guest_errors -D "$WORK/qemu-debug.log" \
    -kernel "$KERNEL" -initrd "$WORK/outer.cpio.gz" -append "console=ttyS0 quiet panic=-1 transparent_hugepage=never bulkhead.runs=${BULKHEAD_LINUX_ENV_RUNS:-all} bulkhead.bench=${BULKHEAD_LINUX_ENV_BENCH:-} bulkhead.bench-vcpus=${BULKHEAD_LINUX_ENV_BENCH_VCPUS:-1,2}" \
    < /dev/null > "$CONSOLE" 2>&1 &
qemu=$!
tail -f --pid=$qemu "$CONSOLE" &
streamer=$!
# Also when the console has said nothing for 7 minutes (seen once: the outer machine silent and
# busy in the tiny-poweroff loop, whose runs each end within 30 s): no run here is silent that long.
size=0; quiet=0; stopped=0
while kill -0 $qemu 2>/dev/null; do
    if grep -aqE 'soft lockup - CPU#[0-9]+ stuck for [0-9]{3,}s' "$CONSOLE"; then
        sleep 1
        echo "outer-machine: the outer kernel locked up (a CPU stuck in it for over 100 s); stopping QEMU"
        kill $qemu 2>/dev/null; stopped=1
        break
    fi
    now=$(stat -c %s "$CONSOLE")
    if [[ $now == "$size" ]]; then quiet=$((quiet + 5)); else size=$now; quiet=0; fi
    if (( quiet >= 420 )); then
        echo "outer-machine: the outer machine printed nothing for $quiet s; stopping QEMU"
        kill $qemu 2>/dev/null; stopped=1
        break
    fi
    sleep 5
done
wait $qemu
status=$?
# QEMU ends with status 0 on SIGTERM: a machine stopped here did not finish.
[[ $stopped == 1 && $status == 0 ]] && status=143
wait $streamer 2>/dev/null
echo "outer-machine: qemu exited with status $status"
[[ $status == 0 ]] || exit 1
