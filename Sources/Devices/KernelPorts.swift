/// Port I/O of kernel guests, decoded without side effects: which device a write goes to.
/// (Guest programs run at CPL3 with IOPL 0 and cannot reach any port.)
public enum KernelPortWrite: Equatable, Sendable {
    /// Bytes for the 16550 on COM1, at register `offset` (0-7), in order.
    case serial(offset: UInt8, bytes: [UInt8])
    /// The i8042 reset command: the guest wants the machine reset (Linux `reboot=k`).
    case reset
    /// ACPI S5 through the FADT's sleep control register: the guest powers the machine off.
    case powerOff
    /// A port with nothing behind it, or a command nothing implements: dropped.
    case ignored
}

public enum KernelPorts {
    /// COM1's eight registers.
    public static let com1: ClosedRange<UInt16> = 0x3f8...0x3ff
    /// The i8042 command port. There is no keyboard controller; only its reset command counts.
    public static let i8042Command: UInt16 = 0x64
    public static let i8042Reset: UInt8 = 0xfe
    /// The FADT's sleep control (and status) register, in system I/O space: a hardware-reduced
    /// platform's way to enter a sleep state. Bulkhead implements S5 only (power off).
    public static let sleepControl: UInt16 = 0x600
    /// The sleep type the DSDT's `\_S5_` package gives for S5.
    public static let sleepTypeS5: UInt8 = 5
    /// The one write that powers off: SLP_EN (bit 5) with SLP_TYP (bits 2-4) = S5, as Linux's
    /// acpi_hw_extended_sleep writes it.
    public static let powerOffValue: UInt8 = 0x20 | (sleepTypeS5 << 2)

    /// Decodes an `out` of `data` (one element per byte written, `rep outs` included) to `port`.
    public static func write(port: UInt16, data: [UInt8]) -> KernelPortWrite {
        if com1.contains(port) {
            return data.isEmpty ? .ignored : .serial(offset: UInt8(port - com1.lowerBound), bytes: data)
        }
        // A reset is the single byte 0xfe (a wider `out` or a string of bytes is not the command).
        if port == i8042Command, data == [i8042Reset] { return .reset }
        // Power off is that single byte too; other sleep types, and writes without SLP_EN, do nothing.
        if port == sleepControl, data == [powerOffValue] { return .powerOff }
        return .ignored
    }
}
