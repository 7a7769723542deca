// uint64_t bh_hypercall_clobbers(uint64_t nr, uint64_t a0, uint64_t a1, uint64_t a2,
//                                uint64_t a3)
// Fills every general-purpose register except rax and rsp with a known pattern, does
// the hypercall (rax = nr, rdi/rsi/rdx/rcx = a0..a3) and returns a bit mask of the
// registers whose value changed (the ABI says: no register other than rax changes).
// Bits: 0 rbx, 1 rcx, 2 rdx, 3 rsi, 4 rdi, 5 rbp, 6 r8, ... 13 r15.

#define PATTERN(n) $(0x5a5a000000000000 + (n))

        .section .text.bh_hypercall_clobbers, "ax", @progbits
        .globl  bh_hypercall_clobbers
        .type   bh_hypercall_clobbers, @function
bh_hypercall_clobbers:
        pushq   %rbp
        pushq   %rbx
        pushq   %r12
        pushq   %r13
        pushq   %r14
        pushq   %r15
        movq    %rdi, %rax              // nr
        movq    %rsi, %rdi              // a0
        movq    %rdx, %rsi              // a1
        movq    %rcx, %rdx              // a2
        movq    %r8,  %rcx              // a3
        pushq   %rcx                    // expected rcx/rdx/rsi/rdi after the call
        pushq   %rdx
        pushq   %rsi
        pushq   %rdi
        movabsq PATTERN(0), %rbx
        movabsq PATTERN(5), %rbp
        movabsq PATTERN(6), %r8
        movabsq PATTERN(7), %r9
        movabsq PATTERN(8), %r10
        movabsq PATTERN(9), %r11
        movabsq PATTERN(10), %r12
        movabsq PATTERN(11), %r13
        movabsq PATTERN(12), %r14
        movabsq PATTERN(13), %r15
        movabsq 0xc0000000, %rax        // the hypercall
        xorl    %eax, %eax              // the result is not of interest: build the mask
        // rdi, rsi, rdx, rcx against the saved arguments
        cmpq    (%rsp), %rdi
        je      1f
        orq     $(1 << 4), %rax
1:      cmpq    8(%rsp), %rsi
        je      1f
        orq     $(1 << 3), %rax
1:      cmpq    16(%rsp), %rdx
        je      1f
        orq     $(1 << 2), %rax
1:      cmpq    24(%rsp), %rcx
        je      1f
        orq     $(1 << 1), %rax
1:      addq    $32, %rsp
        movabsq PATTERN(0), %rdi
        cmpq    %rdi, %rbx
        je      1f
        orq     $(1 << 0), %rax
1:      movabsq PATTERN(5), %rdi
        cmpq    %rdi, %rbp
        je      1f
        orq     $(1 << 5), %rax
1:      movabsq PATTERN(6), %rdi
        cmpq    %rdi, %r8
        je      1f
        orq     $(1 << 6), %rax
1:      movabsq PATTERN(7), %rdi
        cmpq    %rdi, %r9
        je      1f
        orq     $(1 << 7), %rax
1:      movabsq PATTERN(8), %rdi
        cmpq    %rdi, %r10
        je      1f
        orq     $(1 << 8), %rax
1:      movabsq PATTERN(9), %rdi
        cmpq    %rdi, %r11
        je      1f
        orq     $(1 << 9), %rax
1:      movabsq PATTERN(10), %rdi
        cmpq    %rdi, %r12
        je      1f
        orq     $(1 << 10), %rax
1:      movabsq PATTERN(11), %rdi
        cmpq    %rdi, %r13
        je      1f
        orq     $(1 << 11), %rax
1:      movabsq PATTERN(12), %rdi
        cmpq    %rdi, %r14
        je      1f
        orq     $(1 << 12), %rax
1:      movabsq PATTERN(13), %rdi
        cmpq    %rdi, %r15
        je      1f
        orq     $(1 << 13), %rax
1:      popq    %r15
        popq    %r14
        popq    %r13
        popq    %r12
        popq    %rbx
        popq    %rbp
        ret
        .size   bh_hypercall_clobbers, . - bh_hypercall_clobbers

        .section .note.GNU-stack, "", @progbits
