/*
 * kvm_baseline: the bare KVM work Bulkhead does to run a guest program, in plain C.
 *
 * The fair baseline for Benchmarks/run.py. It does what `bulkhead run IMAGE` does with KVM,
 * and nothing else: open /dev/kvm, create a VM, map 64 MiB of private anonymous guest RAM
 * (MADV_HUGEPAGE, MADV_UNMERGEABLE, MADV_DONTDUMP, as Bulkhead's GuestMemory), load the ELF's
 * PT_LOAD segments, build identity page tables (2 MiB pages where a range covers an aligned
 * 2 MiB block, 4 KiB pages elsewhere, as Bulkhead's PageTableBuilder), a GDT with user
 * code/data and a TSS (no IDT: any guest fault is a triple fault), enter 64-bit mode at CPL3,
 * set CPUID from KVM_GET_SUPPORTED_CPUID, enable KVM_CAP_SYNC_REGS, and loop on KVM_RUN
 * answering hypercalls (docs/guest-abi.md): an 8-byte MMIO read of 0xc0000000, call number
 * in rax (read from the sync regs), arguments in rdi, rsi, rdx, rcx.
 *
 * It validates nothing: feed it only the repository's own guest ELFs.
 *
 *   kvm_baseline [--report-timing] [--report-memory] [--boot-info] [--cmdline STR] IMAGE
 *
 *   --report-timing  print "timing: start-ns T0 first-hypercall-ns T1" (CLOCK_MONOTONIC ns)
 *                    to stderr, in the same format as `bulkhead run --report-timing`;
 *                    T0 = first instruction of main, T1 = when the first hypercall exit
 *                    reached this process.
 *   --report-memory  print "memory: guest-resident-bytes N" to stderr at the end: how much
 *                    of the guest RAM mapping is resident (mincore), i.e. guest memory touched.
 *   --boot-info      pass a boot-information block (at 0x200000) in rdi, as Bulkhead does,
 *                    with a memory map and free RAM mapped user read-write (guests such as
 *                    cpu.elf need a heap). Without it rdi = 0 (the default, the bare loader).
 *   --cmdline STR    the guest command line (implies --boot-info).
 *
 * At the end it unmaps and closes everything explicitly, as Bulkhead does.
 *
 * Hypercalls served: 0 version (1), 1 console_write (to stdout), 2 exit (the process exits
 * with the status), 4 time (ns since start); anything else returns -1 (unknown call).
 * Exit status: the guest's own; 70 on any error or unexpected exit.
 *
 * Built by Benchmarks/run.py with `cc -O2` into Benchmarks/out/. Never committed as a binary.
 */
#define _GNU_SOURCE
#include <elf.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MEM_SIZE        (64ull << 20)   /* bulkhead run's default --memory 64 */
#define PAGE            0x1000ull
#define HUGE            0x200000ull
#define GDT_ADDR        0x3000ull       /* GDT at offset 0, TSS at 0x100 (as Bulkhead) */
#define TSS_ADDR        (GDT_ADDR + 0x100)
#define KSTACK_TOP      0x44000ull
#define PT_POOL         0x100000ull
#define PT_POOL_PAGES   256
#define BOOT_INFO       0x200000ull
#define BOOT_INFO_SIZE  0x2000ull
#define PROGRAM_START   0x400000ull
#define STACK_SIZE      0x10000ull
#define HYPERCALL_PAGE  0xc0000000ull

#define PTE_P  (1ull << 0)
#define PTE_RW (1ull << 1)
#define PTE_US (1ull << 2)
#define PTE_PS (1ull << 7)
#define PTE_NX (1ull << 63)

#define HC_VERSION 0
#define HC_CONSOLE_WRITE 1
#define HC_EXIT 2
#define HC_TIME 4

static uint8_t *mem;
static unsigned pt_used = 1;            /* page 0 of the pool is the PML4 */

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what) {
    fprintf(stderr, "kvm_baseline: %s: %s\n", what, strerror(errno));
    exit(70);
}

static void fail(const char *what) {
    fprintf(stderr, "kvm_baseline: %s\n", what);
    exit(70);
}

static uint64_t *table(uint64_t addr) { return (uint64_t *)(mem + addr); }

/* The next-level table under entry `e`, allocated from the pool if absent. */
static uint64_t next_table(uint64_t *e) {
    if (!(*e & PTE_P)) {
        if (pt_used >= PT_POOL_PAGES) fail("page-table pool exhausted");
        uint64_t t = PT_POOL + (uint64_t)pt_used++ * PAGE;   /* guest RAM is zero already */
        *e = t | PTE_P | PTE_RW | PTE_US;                    /* rights are set in the leaves */
    }
    return *e & 0x000ffffffffff000ull;
}

/* Identity-maps [start, end) with leaf flags `flags`; 2 MiB pages where a block fits. */
static void map_range(uint64_t start, uint64_t end, uint64_t flags) {
    for (uint64_t va = start; va < end;) {
        uint64_t *pml4 = table(PT_POOL);
        uint64_t pdpt = next_table(&pml4[(va >> 39) & 511]);
        uint64_t pd = next_table(&table(pdpt)[(va >> 30) & 511]);
        uint64_t *pde = &table(pd)[(va >> 21) & 511];
        if (va % HUGE == 0 && end - va >= HUGE) {
            *pde = va | flags | PTE_PS;
            va += HUGE;
            continue;
        }
        uint64_t pt = next_table(pde);
        table(pt)[(va >> 12) & 511] = va | flags;
        va += PAGE;
    }
}

static void put64(uint64_t addr, uint64_t v) { memcpy(mem + addr, &v, 8); }
static void put32(uint64_t addr, uint32_t v) { memcpy(mem + addr, &v, 4); }

static struct kvm_segment segment(uint16_t sel, uint8_t type, uint8_t l, uint8_t db) {
    struct kvm_segment s = {
        .base = 0, .limit = 0xffffffff, .selector = sel, .type = type, .present = 1,
        .dpl = sel & 3, .db = db, .s = 1, .l = l, .g = 1,
    };
    return s;
}

int main(int argc, char **argv) {
    uint64_t t_start = now_ns();
    int report_timing = 0, report_memory = 0, boot_info = 0;
    const char *cmdline = "", *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--report-timing")) report_timing = 1;
        else if (!strcmp(argv[i], "--report-memory")) report_memory = 1;
        else if (!strcmp(argv[i], "--boot-info")) boot_info = 1;
        else if (!strcmp(argv[i], "--cmdline") && i + 1 < argc) { cmdline = argv[++i]; boot_info = 1; }
        else path = argv[i];
    }
    if (!path) fail("usage: kvm_baseline [--report-timing] [--report-memory] [--boot-info] [--cmdline STR] IMAGE");

    /* Read the image (Bulkhead reads the whole file too). */
    int f = open(path, O_RDONLY | O_CLOEXEC);
    if (f < 0) die(path);
    struct stat st;
    if (fstat(f, &st) != 0) die("fstat");
    uint8_t *image = malloc((size_t)st.st_size);
    if (!image) die("malloc");
    for (off_t got = 0; got < st.st_size;) {
        ssize_t n = read(f, image + got, (size_t)(st.st_size - got));
        if (n <= 0) die("read");
        got += n;
    }
    close(f);

    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0) die("/dev/kvm");
    if (ioctl(kvm, KVM_GET_API_VERSION, 0) != KVM_API_VERSION) fail("KVM API version");
    if (ioctl(kvm, KVM_CHECK_EXTENSION, KVM_CAP_SYNC_REGS) <= 0) fail("no KVM_CAP_SYNC_REGS");
    int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    if (run_size < 0) die("KVM_GET_VCPU_MMAP_SIZE");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0) die("KVM_CREATE_VM");

    mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) die("mmap guest memory");
    madvise(mem, MEM_SIZE, MADV_HUGEPAGE);
    if (madvise(mem, MEM_SIZE, MADV_UNMERGEABLE) != 0 && errno != EINVAL) die("MADV_UNMERGEABLE");
    if (madvise(mem, MEM_SIZE, MADV_DONTDUMP) != 0) die("MADV_DONTDUMP");
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE, .userspace_addr = (uint64_t)mem,
    };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) != 0) die("KVM_SET_USER_MEMORY_REGION");

    /* Program segments. */
    Elf64_Ehdr *eh = (Elf64_Ehdr *)image;
    uint64_t highest = PROGRAM_START;
    uint64_t seg_start[16], seg_end[16];
    int nseg = 0;
    for (int i = 0; i < eh->e_phnum && nseg < 16; i++) {
        Elf64_Phdr *ph = (Elf64_Phdr *)(image + eh->e_phoff + (uint64_t)i * eh->e_phentsize);
        if (ph->p_type != PT_LOAD) continue;
        memcpy(mem + ph->p_vaddr, image + ph->p_offset, ph->p_filesz);
        uint64_t start = ph->p_vaddr & ~(PAGE - 1);
        uint64_t end = (ph->p_vaddr + ph->p_memsz + PAGE - 1) & ~(PAGE - 1);
        uint64_t flags = PTE_P | PTE_US;
        if (ph->p_flags & PF_W) flags |= PTE_RW;
        if (!(ph->p_flags & PF_X)) flags |= PTE_NX;
        map_range(start, end, flags);
        seg_start[nseg] = start; seg_end[nseg] = end; nseg++;
        if (end > highest) highest = end;
    }

    /* Stack at the top of RAM (unmapped guard page below it), the hypercall page. */
    uint64_t stack_top = MEM_SIZE, stack_bottom = MEM_SIZE - STACK_SIZE;
    map_range(stack_bottom, stack_top, PTE_P | PTE_RW | PTE_US | PTE_NX);
    map_range(HYPERCALL_PAGE, HYPERCALL_PAGE + PAGE, PTE_P | PTE_US | PTE_NX);

    /* Optional boot information (docs/guest-abi.md), with free RAM as the guest's heap. */
    if (boot_info) {
        uint64_t heap = highest, heap_end = stack_bottom - PAGE;
        map_range(BOOT_INFO, BOOT_INFO + BOOT_INFO_SIZE, PTE_P | PTE_US | PTE_NX);
        map_range(heap, heap_end, PTE_P | PTE_RW | PTE_US | PTE_NX);
        size_t cmdlen = strlen(cmdline);
        if (cmdlen > 4095) fail("command line too long");
        memcpy(mem + BOOT_INFO + 0x1000, cmdline, cmdlen);
        uint64_t map = BOOT_INFO + 0x400, n = 0;
#define ENTRY(base, size, type) do { put64(map + n * 24, (base)); put64(map + n * 24 + 8, (size)); \
                                     put32(map + n * 24 + 16, (type)); n++; } while (0)
        ENTRY(0, BOOT_INFO, 5);
        ENTRY(BOOT_INFO, BOOT_INFO_SIZE, 4);
        for (int i = 0; i < nseg; i++) ENTRY(seg_start[i], seg_end[i] - seg_start[i], 2);
        ENTRY(heap, heap_end - heap, 1);
        ENTRY(stack_bottom, STACK_SIZE, 3);
#undef ENTRY
        put64(BOOT_INFO + 0, 0x31544F4F424B4842ull);   /* "BHKBOOT1" */
        put32(BOOT_INFO + 8, 1);
        put32(BOOT_INFO + 12, 1);
        put64(BOOT_INFO + 16, MEM_SIZE);
        put64(BOOT_INFO + 24, HYPERCALL_PAGE);
        put64(BOOT_INFO + 32, BOOT_INFO + 0x1000);
        put64(BOOT_INFO + 40, cmdlen);
        put64(BOOT_INFO + 48, map);
        put64(BOOT_INFO + 56, n);
        put64(BOOT_INFO + 64, BOOT_INFO + 0x100);
        put64(BOOT_INFO + 72, 0);
    }

    /* GDT: null, kernel code, kernel data, user data (0x1b), user code (0x23), TSS (0x28). */
    put64(GDT_ADDR + 0, 0);
    put64(GDT_ADDR + 8, 0x00af9b000000ffffull);
    put64(GDT_ADDR + 16, 0x00cf93000000ffffull);
    put64(GDT_ADDR + 24, 0x00cff3000000ffffull);
    put64(GDT_ADDR + 32, 0x00affb000000ffffull);
    uint64_t tss_limit = 103;
    uint64_t lo = (tss_limit & 0xffff) | ((TSS_ADDR & 0xffffff) << 16) | (0x8bull << 40) |
                  (((tss_limit >> 16) & 0xf) << 48) | (((TSS_ADDR >> 24) & 0xff) << 56);
    put64(GDT_ADDR + 40, lo);
    put64(GDT_ADDR + 48, TSS_ADDR >> 32);
    put64(TSS_ADDR + 4, KSTACK_TOP);                       /* RSP0 (unused without an IDT) */
    memcpy(mem + TSS_ADDR + 102, &(uint16_t){104}, 2);     /* no I/O bitmap */

    /* The vCPU. */
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0) die("KVM_CREATE_VCPU");
    struct kvm_run *run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED) die("mmap kvm_run");

    struct {
        struct kvm_cpuid2 h;
        struct kvm_cpuid_entry2 e[256];
    } cpuid = {.h.nent = 256};
    if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, &cpuid) != 0) die("KVM_GET_SUPPORTED_CPUID");
    if (ioctl(vcpu, KVM_SET_CPUID2, &cpuid) != 0) die("KVM_SET_CPUID2");

    struct kvm_sregs sregs;
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs) != 0) die("KVM_GET_SREGS");
    sregs.cs = segment(0x23, 0xb, 1, 0);
    sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = segment(0x1b, 0x3, 0, 1);
    sregs.tr = (struct kvm_segment){.base = TSS_ADDR, .limit = (uint32_t)tss_limit, .selector = 0x28,
                                    .type = 0xb, .present = 1};
    sregs.ldt = (struct kvm_segment){.type = 0x2, .unusable = 1};
    sregs.gdt.base = GDT_ADDR; sregs.gdt.limit = 0x37;
    sregs.idt.base = 0; sregs.idt.limit = 0;
    sregs.cr0 = 0x80000000u | 0x10000 | 0x20 | 0x10 | 0x2 | 0x1;   /* PG WP NE ET MP PE */
    sregs.cr4 = 0x20 | 0x200 | 0x400;                               /* PAE OSFXSR OSXMMEXCPT */
    sregs.efer = 0x100 | 0x400 | 0x800;                             /* LME LMA NXE */
    sregs.cr3 = PT_POOL;
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) != 0) die("KVM_SET_SREGS");

    struct kvm_regs regs = {
        .rip = eh->e_entry, .rsp = stack_top, .rdi = boot_info ? BOOT_INFO : 0, .rsi = 0, .rflags = 0x2,
    };
    if (ioctl(vcpu, KVM_SET_REGS, &regs) != 0) die("KVM_SET_REGS");
    struct kvm_fpu fpu = {.fcw = 0x37f, .mxcsr = 0x1f80};
    if (ioctl(vcpu, KVM_SET_FPU, &fpu) != 0) die("KVM_SET_FPU");
    run->kvm_valid_regs = KVM_SYNC_X86_REGS;

    /* The run loop: the bare MMIO exit round trip. */
    uint64_t t_first = 0;
    int status = -1;
    while (status < 0) {
        if (ioctl(vcpu, KVM_RUN, 0) != 0) {
            if (errno == EINTR || errno == EAGAIN) continue;
            die("KVM_RUN");
        }
        if (run->exit_reason != KVM_EXIT_MMIO || run->mmio.is_write || run->mmio.phys_addr != HYPERCALL_PAGE) {
            fprintf(stderr, "kvm_baseline: unexpected exit %u (mmio 0x%llx write %u)\n", run->exit_reason,
                    (unsigned long long)run->mmio.phys_addr, run->mmio.is_write);
            exit(70);
        }
        if (!t_first) t_first = now_ns();
        struct kvm_regs *r = &run->s.regs.regs;
        uint64_t result;
        switch (r->rax) {
        case HC_VERSION: result = 1; break;
        case HC_EXIT: status = (int)(r->rdi & 0xff); result = 0; break;
        case HC_CONSOLE_WRITE:
            if (r->rsi <= 4096 && r->rdi < MEM_SIZE && r->rsi <= MEM_SIZE - r->rdi) {
                result = (uint64_t)write(1, mem + r->rdi, r->rsi);
            } else {
                result = (uint64_t)-2;
            }
            break;
        case HC_TIME: result = now_ns() - t_start; break;
        default: result = (uint64_t)-1; break;
        }
        memcpy(run->mmio.data, &result, 8);
    }

    if (report_timing)
        fprintf(stderr, "timing: start-ns %llu first-hypercall-ns %llu\n", (unsigned long long)t_start,
                (unsigned long long)t_first);
    if (report_memory) {
        static unsigned char vec[MEM_SIZE / 4096];
        if (mincore(mem, MEM_SIZE, vec) != 0) die("mincore");
        uint64_t resident = 0;
        for (size_t i = 0; i < sizeof vec; i++) resident += vec[i] & 1;
        fprintf(stderr, "memory: guest-resident-bytes %llu\n", (unsigned long long)(resident * 4096));
    }

    /* Tear the VM down before exiting, in the order Bulkhead's deinits do. Leaving it to
     * process exit took 1-12 ms (varying) instead of ~1 ms on the test machines: the address
     * space is then torn down while the VM still holds it, before the VM fd is closed.
     * See docs/benchmarks.md. */
    munmap(run, (size_t)run_size);
    close(vcpu);
    munmap(mem, MEM_SIZE);
    close(vm);
    close(kvm);
    free(image);
    return status;
}
