/*
 * pvh-bench: the part of the guest that runs at CPL3 (entered from entry.S with IOPL 3,
 * interrupts off, no IDT).
 *
 *  1. prints "pvh-bench: hello" on COM1 at once (the first-output marker);
 *  2. reads its command line from hvm_start_info, finds the virtio-mmio devices announced there
 *     (virtio_mmio.device=<size>@<base>:<irq>) and the first virtio-blk among them;
 *  3. drives it as a modern virtio-mmio (version 2) device, VIRTIO_F_VERSION_1 only, one split
 *     virtqueue, completion by polling the used ring (no interrupts);
 *  4. reads pvh.reads=N (default 2000) 4 KiB blocks at pseudo-random 4 KiB-aligned offsets,
 *     one request at a time, times each with the TSC, and checks the data: the benchmark's disk
 *     image holds, at the start of every 512-byte sector, the sector number and a magic value;
 *  5. prints the results and exits: port 0xf4 (QEMU's isa-debug-exit), then the i8042 reset
 *     (Bulkhead ends the VM with status 0), then, if neither worked, a triple fault.
 *
 * Failures print "pvh-bench: FAIL ..." and exit through 0xf4 with code 1 and then a triple
 * fault, so no VMM reports success for them.
 *
 * Command line words it reads: virtio_mmio.device=..., pvh.reads=N (at most MAX_READS),
 * pvh.seed=N (offset generator seed), pvh.echo (print the command line first).
 */
#include <stddef.h>
#include <stdint.h>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;

#define MAX_READS 65536
#define DEFAULT_READS 2000
#define MAX_DEVICES 16
#define QUEUE_SIZE 16
#define SECTOR_MAGIC 0x48434e4542485650ull /* "PVHBENCH" */

/* The compiler may call these even in a freestanding program. */
void *memset(void *d, int c, size_t n) {
    u8 *p = d;
    while (n--) *p++ = (u8)c;
    return d;
}
void *memcpy(void *d, const void *s, size_t n) {
    u8 *p = d;
    const u8 *q = s;
    while (n--) *p++ = *q++;
    return d;
}

/* ---- CPU ---- */

#define barrier() __asm__ __volatile__("" ::: "memory")

static inline void outb(u16 port, u8 v) { __asm__ __volatile__("outb %0, %1" : : "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) {
    u8 v;
    __asm__ __volatile__("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}
static inline void mfence(void) { __asm__ __volatile__("mfence" ::: "memory"); }
/* lfence keeps the TSC read from moving across the loads and stores around it. */
static inline u64 tsc(void) {
    u32 lo, hi;
    __asm__ __volatile__("lfence; rdtsc; lfence" : "=a"(lo), "=d"(hi) : : "memory");
    return ((u64)hi << 32) | lo;
}
static inline u32 mmio_read32(u64 a) { return *(volatile u32 *)a; }
static inline void mmio_write32(u64 a, u32 v) { *(volatile u32 *)a = v; }

/* ---- COM1 ---- */

#define COM1 0x3f8
#define LSR_THRE 0x20

static void putc_(char c) {
    while (!(inb(COM1 + 5) & LSR_THRE)) {
    }
    outb(COM1, (u8)c);
}
static void puts_(const char *s) {
    while (*s) putc_(*s++);
}
static void put_u64(u64 v) {
    char b[21];
    int n = 0;
    do {
        b[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n) putc_(b[--n]);
}
static void put_hex(u64 v) {
    char b[16];
    int n = 0;
    do {
        b[n++] = "0123456789abcdef"[v & 15];
        v >>= 4;
    } while (v);
    puts_("0x");
    while (n) putc_(b[--n]);
}
static void field(const char *name, u64 v) {
    putc_(' ');
    puts_(name);
    putc_('=');
    put_u64(v);
}

/* ---- exit ---- */

#define DEBUG_EXIT_PORT 0xf4 /* QEMU isa-debug-exit: the process exits with (v << 1) | 1 */
#define I8042_COMMAND 0x64
#define I8042_RESET 0xfe

static __attribute__((noreturn)) void triple_fault(void) {
    for (;;) __asm__ __volatile__("ud2"); /* no IDT: #UD -> #DF -> shutdown */
}

static __attribute__((noreturn)) void finish(void) {
    outb(DEBUG_EXIT_PORT, 0);
    outb(I8042_COMMAND, I8042_RESET);
    triple_fault();
}

static __attribute__((noreturn)) void fail(const char *what, u64 value) {
    puts_("pvh-bench: FAIL ");
    puts_(what);
    putc_(' ');
    put_hex(value);
    putc_('\n');
    outb(DEBUG_EXIT_PORT, 1);
    triple_fault();
}

/* ---- command line ---- */

static int starts_with(const char *s, const char *prefix) {
    while (*prefix)
        if (*s++ != *prefix++) return 0;
    return 1;
}
static int is_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

/* A number as Linux's memparse reads it: decimal, or hex with 0x; an optional K/M/G suffix. */
static u64 parse_number(const char **pp, int *ok) {
    const char *p = *pp;
    u64 v = 0;
    int digits = 0;
    if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) {
        p += 2;
        for (;; p++, digits++) {
            char c = *p;
            if (c >= '0' && c <= '9') v = v * 16 + (u64)(c - '0');
            else if (c >= 'a' && c <= 'f') v = v * 16 + (u64)(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F') v = v * 16 + (u64)(c - 'A' + 10);
            else break;
        }
    } else {
        for (; *p >= '0' && *p <= '9'; p++, digits++) v = v * 10 + (u64)(*p - '0');
    }
    switch (*p) {
    case 'k': case 'K': v <<= 10; p++; break;
    case 'm': case 'M': v <<= 20; p++; break;
    case 'g': case 'G': v <<= 30; p++; break;
    }
    *ok = digits > 0;
    *pp = p;
    return v;
}

struct mmio_device {
    u64 base, size, irq;
};

static struct mmio_device devices[MAX_DEVICES];
static int device_count;
static u64 reads = DEFAULT_READS;
static u64 seed = 0x9e3779b97f4a7c15ull;
static int echo;

/* virtio_mmio.device=<size>@<base>:<irq>[:<id>] */
static void parse_device(const char *p) {
    int ok1, ok2, ok3;
    struct mmio_device d;
    d.size = parse_number(&p, &ok1);
    if (*p++ != '@') ok1 = 0;
    d.base = parse_number(&p, &ok2);
    if (*p++ != ':') ok2 = 0;
    d.irq = parse_number(&p, &ok3);
    if (!ok1 || !ok2 || !ok3) fail("cannot parse a virtio_mmio.device parameter", (u64)device_count);
    if (d.base + d.size > (4ull << 30) || d.size < 0x100 + 8)
        fail("virtio-mmio device outside the identity-mapped 4 GiB, base", d.base);
    if (device_count < MAX_DEVICES) devices[device_count++] = d;
}

static void parse_command_line(const char *p) {
    while (*p) {
        while (is_space(*p)) p++;
        if (starts_with(p, "virtio_mmio.device=")) {
            parse_device(p + 19);
        } else if (starts_with(p, "pvh.reads=")) {
            const char *q = p + 10;
            int ok;
            reads = parse_number(&q, &ok);
            if (!ok || reads > MAX_READS) fail("pvh.reads must be a number up to 65536, got", reads);
        } else if (starts_with(p, "pvh.seed=")) {
            const char *q = p + 9;
            int ok;
            seed = parse_number(&q, &ok) | 1;
        } else if (starts_with(p, "pvh.echo") && (p[8] == 0 || is_space(p[8]))) {
            echo = 1;
        }
        while (*p && !is_space(*p)) p++;
    }
}

/* ---- virtio-mmio, version 2 ---- */

enum {
    VIRTIO_MMIO_MAGIC = 0x000,
    VIRTIO_MMIO_VERSION = 0x004,
    VIRTIO_MMIO_DEVICE_ID = 0x008,
    VIRTIO_MMIO_DEVICE_FEATURES = 0x010,
    VIRTIO_MMIO_DEVICE_FEATURES_SEL = 0x014,
    VIRTIO_MMIO_DRIVER_FEATURES = 0x020,
    VIRTIO_MMIO_DRIVER_FEATURES_SEL = 0x024,
    VIRTIO_MMIO_QUEUE_SEL = 0x030,
    VIRTIO_MMIO_QUEUE_NUM_MAX = 0x034,
    VIRTIO_MMIO_QUEUE_NUM = 0x038,
    VIRTIO_MMIO_QUEUE_READY = 0x044,
    VIRTIO_MMIO_QUEUE_NOTIFY = 0x050,
    VIRTIO_MMIO_STATUS = 0x070,
    VIRTIO_MMIO_QUEUE_DESC_LOW = 0x080,
    VIRTIO_MMIO_QUEUE_DESC_HIGH = 0x084,
    VIRTIO_MMIO_QUEUE_DRIVER_LOW = 0x090,
    VIRTIO_MMIO_QUEUE_DRIVER_HIGH = 0x094,
    VIRTIO_MMIO_QUEUE_DEVICE_LOW = 0x0a0,
    VIRTIO_MMIO_QUEUE_DEVICE_HIGH = 0x0a4,
    VIRTIO_MMIO_CONFIG_GENERATION = 0x0fc,
    VIRTIO_MMIO_CONFIG = 0x100,
};
#define MMIO_MAGIC 0x74726976 /* "virt" */
#define VIRTIO_ID_BLOCK 2
#define STATUS_ACKNOWLEDGE 1
#define STATUS_DRIVER 2
#define STATUS_DRIVER_OK 4
#define STATUS_FEATURES_OK 8
#define STATUS_FAILED 0x80
#define VIRTQ_DESC_F_NEXT 1
#define VIRTQ_DESC_F_WRITE 2
#define VIRTQ_AVAIL_F_NO_INTERRUPT 1
#define VIRTIO_BLK_T_IN 0

struct virtq_desc {
    u64 addr;
    u32 len;
    u16 flags;
    u16 next;
};
struct virtq_avail {
    u16 flags;
    u16 idx;
    u16 ring[QUEUE_SIZE];
    u16 used_event;
};
struct virtq_used_elem {
    u32 id;
    u32 len;
};
struct virtq_used {
    u16 flags;
    u16 idx;
    struct virtq_used_elem ring[QUEUE_SIZE];
    u16 avail_event;
};
struct blk_request_header {
    u32 type;
    u32 reserved;
    u64 sector;
};

/* Zeroed by bench_main (.bss). The latency samples are not: each is written before it is read. */
static struct virtq_desc desc[QUEUE_SIZE] __attribute__((aligned(4096)));
static struct virtq_avail avail __attribute__((aligned(4096)));
static struct virtq_used used __attribute__((aligned(4096)));
static struct blk_request_header header __attribute__((aligned(64)));
static volatile u8 status __attribute__((aligned(64)));
static u8 block[4096] __attribute__((aligned(4096)));
static u32 latency[MAX_READS] __attribute__((section(".noinit")));

static u64 dev; /* the virtio-blk register window */
static u16 queue_size;
static u16 avail_index;

static void blk_init(void) {
    for (int i = 0; i < device_count; i++) {
        u64 b = devices[i].base;
        if (mmio_read32(b + VIRTIO_MMIO_MAGIC) != MMIO_MAGIC) continue;
        u32 version = mmio_read32(b + VIRTIO_MMIO_VERSION);
        u32 id = mmio_read32(b + VIRTIO_MMIO_DEVICE_ID);
        if (id != VIRTIO_ID_BLOCK) continue;
        if (version != 2) fail("virtio-blk is not virtio-mmio version 2 (QEMU: -global virtio-mmio.force-legacy=false), version", version);
        dev = b;
        break;
    }
    if (!dev) fail("no virtio-blk device on the command line; devices announced:", (u64)device_count);

    mmio_write32(dev + VIRTIO_MMIO_STATUS, 0);
    mmio_write32(dev + VIRTIO_MMIO_STATUS, STATUS_ACKNOWLEDGE);
    mmio_write32(dev + VIRTIO_MMIO_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    mmio_write32(dev + VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1);
    u32 high = mmio_read32(dev + VIRTIO_MMIO_DEVICE_FEATURES);
    if (!(high & 1)) fail("the device does not offer VIRTIO_F_VERSION_1; features 63:32", high);
    mmio_write32(dev + VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0);
    mmio_write32(dev + VIRTIO_MMIO_DRIVER_FEATURES, 0);
    mmio_write32(dev + VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
    mmio_write32(dev + VIRTIO_MMIO_DRIVER_FEATURES, 1); /* VIRTIO_F_VERSION_1 (bit 32) */
    mmio_write32(dev + VIRTIO_MMIO_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    u32 st = mmio_read32(dev + VIRTIO_MMIO_STATUS);
    if (!(st & STATUS_FEATURES_OK)) fail("the device refused the features; status", st);

    mmio_write32(dev + VIRTIO_MMIO_QUEUE_SEL, 0);
    u32 max = mmio_read32(dev + VIRTIO_MMIO_QUEUE_NUM_MAX);
    if (max == 0) fail("queue 0 is not available; QueueNumMax", max);
    queue_size = max < QUEUE_SIZE ? (u16)max : QUEUE_SIZE;
    mmio_write32(dev + VIRTIO_MMIO_QUEUE_NUM, queue_size);
    mmio_write32(dev + VIRTIO_MMIO_QUEUE_DESC_LOW, (u32)(u64)desc);
    mmio_write32(dev + VIRTIO_MMIO_QUEUE_DESC_HIGH, 0);
    mmio_write32(dev + VIRTIO_MMIO_QUEUE_DRIVER_LOW, (u32)(u64)&avail);
    mmio_write32(dev + VIRTIO_MMIO_QUEUE_DRIVER_HIGH, 0);
    mmio_write32(dev + VIRTIO_MMIO_QUEUE_DEVICE_LOW, (u32)(u64)&used);
    mmio_write32(dev + VIRTIO_MMIO_QUEUE_DEVICE_HIGH, 0);
    avail.flags = VIRTQ_AVAIL_F_NO_INTERRUPT;
    mmio_write32(dev + VIRTIO_MMIO_QUEUE_READY, 1);
    mmio_write32(dev + VIRTIO_MMIO_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    st = mmio_read32(dev + VIRTIO_MMIO_STATUS);
    if (st & STATUS_FAILED || !(st & STATUS_DRIVER_OK)) fail("the device did not accept DRIVER_OK; status", st);

    /* One chain, reused for every request: header (read by the device), 4 KiB block and the
     * status byte (written by the device). */
    desc[0] = (struct virtq_desc){(u64)&header, sizeof header, VIRTQ_DESC_F_NEXT, 1};
    desc[1] = (struct virtq_desc){(u64)block, sizeof block, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 2};
    desc[2] = (struct virtq_desc){(u64)&status, 1, VIRTQ_DESC_F_WRITE, 0};
}

/* Capacity in 512-byte sectors (config offset 0), read as two 32-bit halves under the
 * configuration generation counter. */
static u64 blk_capacity(void) {
    for (;;) {
        u32 g = mmio_read32(dev + VIRTIO_MMIO_CONFIG_GENERATION);
        u64 lo = mmio_read32(dev + VIRTIO_MMIO_CONFIG);
        u64 hi = mmio_read32(dev + VIRTIO_MMIO_CONFIG + 4);
        if (mmio_read32(dev + VIRTIO_MMIO_CONFIG_GENERATION) == g) return lo | hi << 32;
    }
}

/* One 4 KiB read at `sector`; returns the TSC ticks from publishing the request to seeing it
 * in the used ring. */
static u32 blk_read(u64 sector) {
    header.type = VIRTIO_BLK_T_IN;
    header.reserved = 0;
    header.sector = sector;
    status = 0xff;
    for (int s = 0; s < 8; s++) ((volatile u64 *)block)[s * 64] = ~0ull; /* must be overwritten */
    avail.ring[avail_index % queue_size] = 0;
    barrier();
    u64 t0 = tsc();
    avail_index++;
    *(volatile u16 *)&avail.idx = avail_index;
    mfence(); /* the new index is visible before the doorbell and before we poll */
    mmio_write32(dev + VIRTIO_MMIO_QUEUE_NOTIFY, 0);
    while (*(volatile u16 *)&used.idx != avail_index) {
    }
    u64 t1 = tsc();
    barrier();
    struct virtq_used_elem e = ((volatile struct virtq_used *)&used)->ring[(u16)(avail_index - 1) % queue_size];
    if (e.id != 0) fail("used ring returned an unknown head", e.id);
    if (status != 0) fail("virtio-blk request failed; status", status);
    for (u64 s = 0; s < 8; s++) {
        const volatile u64 *p = (const volatile u64 *)(block + s * 512);
        if (p[0] != sector + s) {
            puts_("pvh-bench: sector ");
            put_u64(sector + s);
            puts_(" begins with ");
            put_hex(p[0]);
            putc_('\n');
            fail("disk data mismatch (is the image filled by Benchmarks/qemu.py?), sector", sector + s);
        }
        if (p[1] != SECTOR_MAGIC) fail("disk data mismatch: no magic in sector", sector + s);
    }
    return (u32)(t1 - t0);
}

/* ---- statistics ---- */

static void sift_down(u32 *a, u64 root, u64 n) {
    for (;;) {
        u64 c = 2 * root + 1;
        if (c >= n) return;
        if (c + 1 < n && a[c + 1] > a[c]) c++;
        if (a[root] >= a[c]) return;
        u32 t = a[root];
        a[root] = a[c];
        a[c] = t;
        root = c;
    }
}
static void heap_sort(u32 *a, u64 n) {
    for (u64 i = n / 2; i-- > 0;) sift_down(a, i, n);
    for (u64 end = n; end > 1; end--) {
        u32 t = a[0];
        a[0] = a[end - 1];
        a[end - 1] = t;
        sift_down(a, 0, end - 1);
    }
}
static u64 percentile(const u32 *sorted, u64 n, u64 pct) { return sorted[(n - 1) * pct / 100]; }

/* ---- main ---- */

extern char __bss_start[], __bss_end[];

struct hvm_start_info {
    u32 magic;
    u32 version;
    u32 flags;
    u32 nr_modules;
    u64 modlist_paddr;
    u64 cmdline_paddr;
    u64 rsdp_paddr;
    u64 memmap_paddr;
    u32 memmap_entries;
    u32 reserved;
};
#define HVM_START_MAGIC 0x336ec578

__attribute__((noreturn, used)) void bench_main(const struct hvm_start_info *info) {
    puts_("pvh-bench: hello\n");
    for (char *p = __bss_start; p < __bss_end; p++) *(volatile char *)p = 0;

    if (info->magic != HVM_START_MAGIC) fail("bad hvm_start_info magic", info->magic);
    const char *cmdline = (const char *)info->cmdline_paddr;
    if (cmdline) parse_command_line(cmdline);
    if (echo) {
        puts_("pvh-bench: cmdline: ");
        puts_(cmdline ? cmdline : "");
        putc_('\n');
    }

    blk_init();
    u64 sectors = blk_capacity();
    u64 blocks = sectors / 8;
    if (blocks == 0) fail("disk smaller than 4 KiB; sectors", sectors);

    puts_("pvh-bench: start\n");
    u64 x = seed;
    u64 t0 = tsc();
    for (u64 i = 0; i < reads; i++) {
        x ^= x << 13; /* xorshift64 */
        x ^= x >> 7;
        x ^= x << 17;
        latency[i] = blk_read((x % blocks) * 8);
    }
    u64 total = tsc() - t0;
    puts_("pvh-bench: done");
    field("reads", reads);
    field("tsc_total", total);
    putc_('\n');

    if (reads > 0) {
        u64 sum = 0;
        for (u64 i = 0; i < reads; i++) sum += latency[i];
        heap_sort(latency, reads);
        puts_("pvh-bench: latency_tsc");
        field("min", latency[0]);
        field("p50", percentile(latency, reads, 50));
        field("p90", percentile(latency, reads, 90));
        field("p99", percentile(latency, reads, 99));
        field("max", latency[reads - 1]);
        field("mean", sum / reads);
        field("sectors", sectors);
        putc_('\n');
    }
    puts_("pvh-bench: ok\n");
    finish();
}
