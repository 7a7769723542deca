import VMM

// Test support shared by the test targets (issue 11, point 6, begins here): guest images built
// from a few instructions, for behaviour no guest program can show.

/// A PVH kernel (32-bit, CPL 0) that echoes what COM1 receives until it reads '.', then powers
/// the machine off (ACPI S5). It polls the line status register: no interrupts needed.
public let echoKernel: [UInt8] = pvhKernel([
    0x66, 0xba, 0xfd, 0x03,     //  0: mov dx, 0x3fd (LSR)
    0xec,                       //  4: in al, dx
    0xa8, 0x01,                 //  5: test al, 1 (data ready)
    0x74, 0xfb,                 //  7: jz 4
    0x66, 0xba, 0xf8, 0x03,     //  9: mov dx, 0x3f8 (RBR/THR)
    0xec,                       // 13: in al, dx
    0x3c, 0x2e,                 // 14: cmp al, '.'
    0x74, 0x03,                 // 16: je 21
    0xee,                       // 18: out dx, al (echo)
    0xeb, 0xeb,                 // 19: jmp 0
    0x66, 0xba, 0x00, 0x06,     // 21: mov dx, 0x600 (FADT sleep control)
    0xb0, 0x34,                 // 25: mov al, 0x34 (S5, SLP_EN)
    0xee,                       // 27: out dx, al
    0xf4,                       // 28: hlt
    0xeb, 0xfd,                 // 29: jmp 28
])
