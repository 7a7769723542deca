// uint64_t bh_div(uint64_t dividend, uint64_t divisor): unsigned 64-bit `div`,
// which raises #DE (vector 0) when divisor == 0.
        .section .text.bh_div, "ax", @progbits
        .globl  bh_div
        .type   bh_div, @function
bh_div:
        movq    %rdi, %rax
        xorl    %edx, %edx
        divq    %rsi
        ret
        .size   bh_div, . - bh_div

        .section .note.GNU-stack, "", @progbits
