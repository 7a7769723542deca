// Bulkhead guest SDK: the few things that have to be assembly.
// GNU as, AT&T syntax, x86-64 SysV. Everything else lives in Swift (SDK/*.swift).
//
// Contract: docs/guest-abi.md (ABI version 1).
//   entry: rdi = boot-information block address (0 if the loader gives none),
//          rsi = vCPU index, rsp = top of this vCPU's stack.
//   hypercall: rax = nr, rdi/rsi/rdx/rcx = args, 8-byte load from 0xc0000000
//          returns the result in rax; no other register changes.

#define BH_HYPERCALL_PAGE 0xc0000000
#define BH_CALL_EXIT      2

        .section .text.bh_start, "ax", @progbits
        .globl  _start
        .type   _start, @function
_start:
        andq    $-16, %rsp                  // SysV: rsp 16-aligned before the call
        xorl    %ebp, %ebp                  // terminate frame-pointer chains
        movq    %rdi, bh_boot_info_address(%rip)   // same value on every vCPU
        call    bulkhead_guest_main         // (bootInfo: rdi, vcpu: rsi)
        movl    $BH_CALL_EXIT, %eax         // main returned: exit(0)
        xorl    %edi, %edi
        movabsq BH_HYPERCALL_PAGE, %rax
        ud2                                 // exit never returns; fault loudly if it did
        .size   _start, . - _start

// int64_t bh_hypercall(uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2, uint64_t a3)
        .section .text.bh_hypercall, "ax", @progbits
        .globl  bh_hypercall
        .type   bh_hypercall, @function
        .p2align 4
bh_hypercall:
        movq    %rdi, %rax                  // nr
        movq    %rsi, %rdi                  // a0
        movq    %rdx, %rsi                  // a1
        movq    %rcx, %rdx                  // a2
        movq    %r8,  %rcx                  // a3
        movabsq BH_HYPERCALL_PAGE, %rax     // the hypercall: one MMIO exit
        ret
        .size   bh_hypercall, . - bh_hypercall

// uint64_t bh_boot_info(void): the rdi value _start was entered with.
        .section .text.bh_boot_info, "ax", @progbits
        .globl  bh_boot_info
        .type   bh_boot_info, @function
        .p2align 4
bh_boot_info:
        movq    bh_boot_info_address(%rip), %rax
        ret
        .size   bh_boot_info, . - bh_boot_info

// uint64_t bh_stack_pointer(void): the caller's rsp (after return).
        .section .text.bh_stack_pointer, "ax", @progbits
        .globl  bh_stack_pointer
        .type   bh_stack_pointer, @function
        .p2align 4
bh_stack_pointer:
        leaq    8(%rsp), %rax
        ret
        .size   bh_stack_pointer, . - bh_stack_pointer

// noreturn void bh_ud2(void): invalid-opcode fault (#UD, vector 6).
        .section .text.bh_ud2, "ax", @progbits
        .globl  bh_ud2
        .type   bh_ud2, @function
        .p2align 4
bh_ud2:
        ud2
        .size   bh_ud2, . - bh_ud2

// void bh_cpu_relax(void): `pause`, for spin-wait loops (polling a virtqueue's used ring).
        .section .text.bh_cpu_relax, "ax", @progbits
        .globl  bh_cpu_relax
        .type   bh_cpu_relax, @function
        .p2align 4
bh_cpu_relax:
        pause
        ret
        .size   bh_cpu_relax, . - bh_cpu_relax

// ---- the C library functions the compiler emits calls to -----------------
// Code runs at CPL3 with DF = 0 (rflags = 0x2 at entry), so rep movsb/stosb
// are fine and fast.

// void *memcpy(void *dst, const void *src, size_t n)
        .section .text.memcpy, "ax", @progbits
        .globl  memcpy
        .type   memcpy, @function
        .p2align 4
memcpy:
        movq    %rdi, %rax
        movq    %rdx, %rcx
        rep movsb
        ret
        .size   memcpy, . - memcpy

// void *memmove(void *dst, const void *src, size_t n)
        .section .text.memmove, "ax", @progbits
        .globl  memmove
        .type   memmove, @function
        .p2align 4
memmove:
        movq    %rdi, %rax
        movq    %rdx, %rcx
        movq    %rdi, %r8
        subq    %rsi, %r8                   // dst - src (unsigned)
        cmpq    %rdx, %r8
        jb      1f                          // dst inside [src, src+n): copy backwards
        rep movsb
        ret
1:      leaq    -1(%rdi,%rdx), %rdi
        leaq    -1(%rsi,%rdx), %rsi
        std
        rep movsb
        cld
        ret
        .size   memmove, . - memmove

// void *memset(void *dst, int c, size_t n)
        .section .text.memset, "ax", @progbits
        .globl  memset
        .type   memset, @function
        .p2align 4
memset:
        movq    %rdi, %r8
        movl    %esi, %eax
        movq    %rdx, %rcx
        rep stosb
        movq    %r8, %rax
        ret
        .size   memset, . - memset

// int memcmp(const void *a, const void *b, size_t n)
        .section .text.memcmp, "ax", @progbits
        .globl  memcmp
        .type   memcmp, @function
        .p2align 4
memcmp:
        xorl    %eax, %eax
        testq   %rdx, %rdx
        jz      2f
1:      movzbl  (%rdi), %eax
        movzbl  (%rsi), %ecx
        subl    %ecx, %eax
        jnz     2f
        incq    %rdi
        incq    %rsi
        decq    %rdx
        jnz     1b
2:      ret
        .size   memcmp, . - memcmp

// int posix_memalign(void **p, size_t align, size_t size): Heap.swift's bump allocator.
        .section .text.posix_memalign, "ax", @progbits
        .globl  posix_memalign
        .type   posix_memalign, @function
        .p2align 4
posix_memalign:
        jmp     bh_posix_memalign
        .size   posix_memalign, . - posix_memalign

// void free(void *p): the bump allocator never reuses memory.
        .section .text.free, "ax", @progbits
        .globl  free
        .type   free, @function
        .p2align 4
free:
        ret
        .size   free, . - free

        .section .bss.bh_boot_info_address, "aw", @nobits
        .p2align 3
bh_boot_info_address:
        .quad   0

        .section .note.GNU-stack, "", @progbits
