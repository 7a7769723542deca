/// Port I/O of kernel guests, decoded without side effects: which device a write goes to.
/// (Guest programs run at CPL3 with IOPL 0 and cannot reach any port.)
public enum KernelPortWrite: Equatable, Sendable {
    /// Bytes for the 16550 on COM1, at register `offset` (0-7), in order.
    case serial(offset: UInt8, bytes: [UInt8])
    /// The i8042 reset command: the guest wants the machine reset (Linux `reboot=k`).
    case reset
    /// ACPI S5 through the FADT's sleep control register: the guest powers the machine off.
    case powerOff
    /// The pvpanic device's "guest panicked" event: the guest's kernel panicked.
    case panicked
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
    /// The pvpanic device (QEMU's ISA pvpanic: ACPI `QEMU0001`, one I/O port): Linux's
    /// pvpanic-mmio driver reads its capabilities there, and writes an event when the kernel
    /// panics (bit 0) or has loaded a crash kernel (bit 1).
    public static let pvpanic: UInt16 = 0x505
    public static let pvpanicPanicked: UInt8 = 0x01
    public static let pvpanicCrashLoaded: UInt8 = 0x02
    /// What a read of the pvpanic port answers: the events Bulkhead acts on (a panic only; a
    /// crash kernel's loading is no reason to end the VM, so it is not offered).
    public static let pvpanicCapabilities: UInt8 = pvpanicPanicked

    /// What a read of the i8042 status port gives: both buffers empty. Linux's reset path
    /// (`reboot=k`) waits, before each 0xfe, until the input buffer is empty; an absent
    /// controller's 0xff would make it poll this port 65536 times first (one exit each: seconds
    /// on nested hosts, between the guest's "machine restart" and the VM's end).
    public static let i8042StatusIdle: UInt8 = 0x00

    /// What an `in` from `port` reads, for the ports that are not COM1's (nil: nothing there,
    /// the caller answers 0xff as for an absent device).
    public static func read(port: UInt16) -> UInt8? {
        switch port {
        case pvpanic: return pvpanicCapabilities
        case i8042Command: return i8042StatusIdle
        default: return nil
        }
    }

    /// Decodes an `out` of `data` (one element per byte written, `rep outs` included) to `port`.
    public static func write(port: UInt16, data: [UInt8]) -> KernelPortWrite {
        if com1.contains(port) {
            return data.isEmpty ? .ignored : .serial(offset: UInt8(port - com1.lowerBound), bytes: data)
        }
        // A reset is the single byte 0xfe (a wider `out` or a string of bytes is not the command).
        if port == i8042Command, data == [i8042Reset] { return .reset }
        // Power off is that single byte too; other sleep types, and writes without SLP_EN, do nothing.
        if port == sleepControl, data == [powerOffValue] { return .powerOff }
        // A panic event is one byte with bit 0 set (the driver writes only the events offered).
        if port == pvpanic, data.count == 1, data[0] & pvpanicPanicked != 0 { return .panicked }
        return .ignored
    }
}
