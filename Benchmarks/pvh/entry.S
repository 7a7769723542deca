/*
 * pvh-bench: the PVH entry.
 *
 * The loader (Bulkhead or QEMU) jumps to pvh_entry in 32-bit protected mode with paging off,
 * interrupts off and %ebx = the physical address of struct hvm_start_info. Code here runs at
 * CPL0, which on the nested machines this benchmark was written for is emulated at about 1 µs an
 * instruction, so it does as little as possible: the page tables and the GDT are built at link
 * time, and about 30 instructions take the CPU to 64-bit mode and down to CPL3, where
 * bench_main (bench.c) does all the work at native speed.
 *
 * Layout of what is set up here:
 *   GDT   0x08 kernel code 64   0x10 kernel data   0x1b user data (DPL3)   0x23 user code 64 (DPL3)
 *         0x28 64-bit TSS (16 bytes; its base is filled in at run time)
 *   paging: 4-level, the first 4 GiB identity-mapped with 2 MiB pages, present + writable + user,
 *         so CPL3 reaches RAM and the virtio-mmio windows (Bulkhead 0xd0000000, QEMU microvm
 *         0xfeb00000) alike
 *   CPL3: IF = 0; no IDT, so any exception ends the VM with a triple fault. in/out on COM1 and
 *         the exit ports are allowed twice over: RFLAGS.IOPL = 3, and the TSS I/O permission
 *         bitmap allows ports 0-0x3ff. The bitmap is needed on the nested "PVM" KVM this was
 *         developed on, which does not honour IOPL at CPL3 (in/out raised #GP with IOPL 3 alone)
 *         but does check the bitmap.
 */

#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define PTE_P  0x001
#define PTE_RW 0x002
#define PTE_US 0x004
#define PTE_PS 0x080

/* The PVH entry note: owner "Xen", type 18, a 32-bit physical entry address. */
        .section .note.Xen, "a", @note
        .balign 4
        .long 4                         /* namesz */
        .long 4                         /* descsz */
        .long XEN_ELFNOTE_PHYS32_ENTRY  /* type */
        .asciz "Xen"
        .balign 4
        .long pvh_entry

        .section .text.entry, "ax", @progbits
        .code32
        .globl pvh_entry
pvh_entry:
        cli
        movl    %ebx, %edi              /* hvm_start_info, the C argument (zero-extended below) */
        lgdt    gdt_descriptor
        /* The TSS descriptor's base is split over three fields: fill it in here. */
        movl    $tss, %eax
        movw    %ax, gdt + 0x28 + 2
        shrl    $16, %eax
        movb    %al, gdt + 0x28 + 4
        movb    %ah, gdt + 0x28 + 7
        movl    $pml4, %eax
        movl    %eax, %cr3
        movl    $0x20, %eax             /* CR4.PAE */
        movl    %eax, %cr4
        movl    $0xc0000080, %ecx       /* EFER */
        rdmsr
        orl     $0x100, %eax            /* LME */
        wrmsr
        movl    $0x80000011, %eax       /* CR0.PG | ET | PE */
        movl    %eax, %cr0
        ljmp    $0x08, $long_entry

        .code64
long_entry:
        movl    $0x10, %eax
        movl    %eax, %ds
        movl    %eax, %es
        movl    %eax, %ss
        xorl    %eax, %eax
        movl    %eax, %fs
        movl    %eax, %gs
        movl    $0x28, %eax
        ltr     %ax
        movl    %edi, %edi              /* upper halves are undefined after the mode switch */
        leaq    kstack_top(%rip), %rsp
        pushq   $0x1b                   /* SS: user data */
        leaq    ustack_top - 8(%rip), %rax  /* as if bench_main had been called */
        pushq   %rax                    /* RSP */
        pushq   $0x3002                 /* RFLAGS: IOPL 3, reserved bit 1, IF 0 */
        pushq   $0x23                   /* CS: user code */
        leaq    bench_main(%rip), %rax
        pushq   %rax                    /* RIP */
        iretq

        .section .rodata.entry, "a", @progbits
        .balign 8
gdt_descriptor:
        .word   gdt_end - gdt - 1
        .long   gdt

        .section .data.entry, "aw", @progbits
        .balign 16
gdt:
        .quad   0
        .quad   0x00af9a000000ffff      /* 0x08: P, DPL0, code exec/read, L */
        .quad   0x00cf92000000ffff      /* 0x10: P, DPL0, data read/write */
        .quad   0x00cff2000000ffff      /* 0x18: P, DPL3, data read/write */
        .quad   0x00affa000000ffff      /* 0x20: P, DPL3, code exec/read, L */
        .quad   0x00008900000000e8      /* 0x28: P, DPL0, available 64-bit TSS, limit 232, base later */
        .quad   0                       /* 0x30: the TSS descriptor's upper half (base 63:32 = 0) */
gdt_end:

        .balign 16
tss:
        .long   0
        .quad   kstack_top              /* RSP0 */
        .fill   88, 1, 0
        .word   0
        .word   104                     /* I/O permission bitmap right after the TSS */
        .fill   128, 1, 0               /* ports 0-0x3ff allowed (a clear bit allows) */
        .byte   0xff                    /* the byte after the bitmap must be all ones; ports
                                           above 0x3ff are beyond the limit: refused */

/* Page tables, built by the assembler: PML4 -> PDPT -> four page directories of 2 MiB pages. */
        .section .data.pagetables, "aw", @progbits
        .balign 4096
pml4:
        .quad   pdpt + (PTE_P | PTE_RW | PTE_US)
        .fill   511, 8, 0
pdpt:
        .quad   pd + 0 * 4096 + (PTE_P | PTE_RW | PTE_US)
        .quad   pd + 1 * 4096 + (PTE_P | PTE_RW | PTE_US)
        .quad   pd + 2 * 4096 + (PTE_P | PTE_RW | PTE_US)
        .quad   pd + 3 * 4096 + (PTE_P | PTE_RW | PTE_US)
        .fill   508, 8, 0
pd:
        .set    page, 0
        .rept   2048
        .quad   page + (PTE_P | PTE_RW | PTE_US | PTE_PS)
        .set    page, page + 0x200000
        .endr

        .section .stack, "aw", @nobits
        .balign 4096
        .space  4096
kstack_top:
        .space  65536
ustack_top:
