// void bh_spin_forever(void): an endless loop, written in assembly so that the
// instruction stream is obvious (no calls, no memory accesses, no hypercalls).
        .section .text.bh_spin_forever, "ax", @progbits
        .globl  bh_spin_forever
        .type   bh_spin_forever, @function
bh_spin_forever:
1:      pause
        jmp     1b
        .size   bh_spin_forever, . - bh_spin_forever

        .section .note.GNU-stack, "", @progbits
