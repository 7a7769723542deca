/// The ACPI tables a Linux guest reads to find its CPUs, its interrupt controllers and its
/// virtio-mmio devices (ACPI 6.5): RSDP → XSDT → FADT (hardware-reduced) → DSDT, and the MADT.
///
/// Why ACPI: distribution kernels (Debian's cloud kernel among them) build virtio-mmio without
/// `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES` and without MP-table parsing, so the command line cannot
/// announce devices to them and they would see a single CPU. They do read ACPI: the DSDT
/// describes each device as `LNRO0005` (the ID Linux's virtio-mmio driver matches) with its
/// register window and interrupt, and the MADT lists one local APIC per vCPU and the IOAPIC.
///
/// No firmware runs, so there is no AML method, no SCI and no fixed-feature hardware: the FADT
/// sets HW_REDUCED_ACPI. Its reset register is the i8042 command port with value 0xfe, the one
/// reset Bulkhead implements (`reboot` in the guest ends the VM).
///
/// Pure: `build` returns one block of bytes to copy to `base`, the RSDP first.
public enum ACPITables {
    /// In the reserved BIOS area (0xe0000–0xfffff), where a kernel without a pointer to the RSDP
    /// also scans for it.
    public static let base: UInt64 = 0xe_0000
    /// Room for the tables: the DSDT grows by ~60 bytes per device.
    public static let areaSize = 0x1_0000

    static let xsdtOffset = 0x40
    static let fadtOffset = 0x80
    static let madtOffset = 0x200
    static let dsdtOffset = 0x600

    public static let localAPICAddress: UInt32 = 0xfee0_0000
    public static let ioAPICAddress: UInt32 = 0xfec0_0000
    /// KVM's in-kernel IOAPIC reports ID 0.
    public static let ioAPICID: UInt8 = 0
    /// The virtio-mmio hardware ID Linux's driver matches (drivers/virtio/virtio_mmio.c).
    public static let virtioMMIOHardwareID = "LNRO0005"

    /// FADT flags and boot-architecture flags.
    static let fadtResetRegisterSupported: UInt32 = 1 << 10
    static let fadtHardwareReduced: UInt32 = 1 << 20
    static let bootArchVGANotPresent: UInt16 = 1 << 2
    static let bootArchCMOSNotPresent: UInt16 = 1 << 5

    /// The tables for `cpus` vCPUs (APIC IDs 0..<cpus) and `devices`, to be placed at `base`.
    public static func build(cpus: Int, devices: [VirtioMMIODeviceInfo], base: UInt64 = base) -> [UInt8] {
        let dsdt = self.dsdt(devices: devices)
        var w = ByteWriter(size: dsdtOffset + dsdt.count)
        w.put(rsdp(xsdt: base + UInt64(xsdtOffset)), at: 0)
        w.put(xsdt(entries: [base + UInt64(fadtOffset), base + UInt64(madtOffset)]), at: xsdtOffset)
        w.put(fadt(dsdt: base + UInt64(dsdtOffset)), at: fadtOffset)
        w.put(madt(cpus: cpus), at: madtOffset)
        w.put(dsdt, at: dsdtOffset)
        return w.bytes
    }

    /// Makes the byte sum of `bytes[range]` zero by setting the byte at `at`.
    static func fixChecksum(_ bytes: inout [UInt8], _ range: Range<Int>, at: Int) {
        bytes[at] = 0
        let sum = bytes[range].reduce(UInt8(0)) { $0 &+ $1 }
        bytes[at] = 0 &- sum
    }

    /// RSDP, revision 2 (36 bytes): the XSDT address; no RSDT.
    static func rsdp(xsdt: UInt64) -> [UInt8] {
        var w = ByteWriter(size: 36)
        w.put(Array("RSD PTR ".utf8), at: 0)
        w.put(oemID, at: 9)
        w.put(UInt8(2), at: 15)               // revision
        w.put(UInt32(0), at: 16)              // RSDT address
        w.put(UInt32(36), at: 20)             // length
        w.put(xsdt, at: 24)
        var b = w.bytes
        fixChecksum(&b, 0..<20, at: 8)
        fixChecksum(&b, 0..<36, at: 32)
        return b
    }

    static let oemID = Array("BLKHD ".utf8)
    static let oemTableID = Array("BULKHEAD".utf8)

    /// A system description table: the 36-byte header, then `body`, checksummed.
    static func table(_ signature: String, revision: UInt8, body: [UInt8]) -> [UInt8] {
        var w = ByteWriter(size: 36 + body.count)
        w.put(Array(signature.utf8), at: 0)
        w.put(UInt32(36 + body.count), at: 4)
        w.put(revision, at: 8)
        w.put(oemID, at: 10)
        w.put(oemTableID, at: 16)
        w.put(UInt32(1), at: 24)              // OEM revision
        w.put(Array("BLKH".utf8), at: 28)     // creator ID
        w.put(UInt32(1), at: 32)              // creator revision
        w.put(body, at: 36)
        var b = w.bytes
        fixChecksum(&b, 0..<b.count, at: 9)
        return b
    }

    static func xsdt(entries: [UInt64]) -> [UInt8] {
        var w = ByteWriter(size: 8 * entries.count)
        for (i, e) in entries.enumerated() { w.put(e, at: 8 * i) }
        return table("XSDT", revision: 1, body: w.bytes)
    }

    /// FADT revision 6.5 (276 bytes): hardware-reduced, no PM blocks, DSDT via X_DSDT.
    static func fadt(dsdt: UInt64) -> [UInt8] {
        var w = ByteWriter(size: 276 - 36)
        func at(_ tableOffset: Int) -> Int { tableOffset - 36 }
        w.put(UInt32(truncatingIfNeeded: dsdt), at: at(40))
        w.put(bootArchVGANotPresent | bootArchCMOSNotPresent, at: at(109))
        w.put(fadtHardwareReduced | fadtResetRegisterSupported, at: at(112))
        // RESET_REG: a Generic Address Structure in system I/O space, 8 bits at port 0x64.
        w.put([1, 8, 0, 1], at: at(116))
        w.put(UInt64(0x64), at: at(120))
        w.put(UInt8(0xfe), at: at(128))        // RESET_VALUE
        w.put(UInt8(5), at: at(131))           // FADT minor version
        w.put(dsdt, at: at(140))               // X_DSDT
        // SLEEP_CONTROL_REG and SLEEP_STATUS_REG: 8 bits at port 0x600 (power off: the DSDT's
        // \_S5_ gives sleep type 5; writing SLP_EN | 5 << 2 there ends the VM).
        for offset in [244, 256] {
            w.put([1, 8, 0, 1], at: at(offset))
            w.put(UInt64(sleepControlPort), at: at(offset + 4))
        }
        w.put(Array("BULKHEAD".utf8), at: at(268))  // hypervisor vendor identity
        return table("FACP", revision: 6, body: w.bytes)
    }

    /// MADT: a local APIC per vCPU, the IOAPIC (GSIs 0–23 on its pins), LINT1 as NMI for all.
    /// No interrupt source overrides: KVM's default routing connects ISA IRQ n to pin n.
    static func madt(cpus: Int) -> [UInt8] {
        var body: [UInt8] = []
        func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { (0..<MemoryLayout<T>.size).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
        body += le(localAPICAddress) + le(UInt32(1))                     // PCAT_COMPAT: there is a PIC
        for i in 0..<cpus {
            body += [0, 8, UInt8(truncatingIfNeeded: i), UInt8(truncatingIfNeeded: i)] + le(UInt32(1))  // enabled
        }
        body += [1, 12, ioAPICID, 0] + le(ioAPICAddress) + le(UInt32(0)) // GSI base 0
        body += [4, 6, 0xff] + le(UInt16(0)) + [1]                       // NMI on LINT1, every processor
        return table("APIC", revision: 5, body: body)
    }

    /// The sleep control and status register's port (KernelPorts.sleepControl).
    public static let sleepControlPort: UInt16 = 0x600
    /// `\_S5_`'s sleep type (KernelPorts.sleepTypeS5).
    public static let sleepTypeS5: UInt64 = 5

    /// COM1 as the DSDT describes it: a 16550 (`PNP0501`) at I/O ports 0x3f8-0x3ff with ISA IRQ 4.
    /// A hardware-reduced platform has no legacy interrupt controller, so Linux maps no ISA IRQ
    /// by itself: without this device the 8250 driver's legacy port cannot get IRQ 4, and every
    /// write from user space to the console fails (issue 10). Described here, the port is
    /// enumerated through PnP ACPI, which maps GSI 4 for it.
    public static let com1HardwareID = "PNP0501"
    /// The pvpanic device as QEMU describes it (`QEMU0001`, one I/O port; KernelPorts.pvpanic):
    /// Linux's pvpanic-mmio driver binds to it and reports a kernel panic there, so that the VM
    /// ends as a crash with its reason instead of rebooting (panic=-1) or spinning for ever.
    public static let pvpanicHardwareID = "QEMU0001"
    public static let pvpanicPort: UInt16 = 0x505

    /// DSDT: `\_SB` with COM1, the pvpanic device and one `LNRO0005` device per virtio-mmio window.
    static func dsdt(devices: [VirtioMMIODeviceInfo]) -> [UInt8] {
        var scope: [UInt8] = AML.device(Array("COM1".utf8), [
            AML.name("_HID", AML.string(com1HardwareID)),
            AML.name("_UID", AML.integer(1)),
            AML.name("_CRS", AML.buffer(AML.ioPorts(base: 0x3f8, count: 8) + AML.isaIRQ(4) + AML.endTag)),
        ].flatMap { $0 })
        scope += AML.device(Array("PEVT".utf8), [
            AML.name("_HID", AML.string(pvpanicHardwareID)),
            AML.name("_UID", AML.integer(0)),
            AML.name("_CRS", AML.buffer(AML.ioPorts(base: pvpanicPort, count: 1) + AML.endTag)),
        ].flatMap { $0 })
        for (i, d) in devices.enumerated() {
            scope += AML.device(AML.nameSeg(i), [
                AML.name("_HID", AML.string(virtioMMIOHardwareID)),
                AML.name("_UID", AML.integer(UInt64(i))),
                AML.name("_CRS", AML.buffer(AML.memory32Fixed(base: UInt32(truncatingIfNeeded: d.base), size: UInt32(truncatingIfNeeded: d.size))
                                            + AML.interrupt(d.irq) + AML.endTag)),
            ].flatMap { $0 })
        }
        // \_S5_: power off is sleep type 5 (Linux then writes it to the FADT's sleep control
        // register; without it a guest's `poweroff` would halt its CPUs and the VM run on).
        let s5 = AML.name("\\_S5_", AML.package([AML.integer(sleepTypeS5), AML.integer(0)]))
        return table("DSDT", revision: 2, body: s5 + AML.scope("\\_SB_", scope))
    }
}

/// The few AML encodings the DSDT needs (ACPI 6.5 §20.2).
enum AML {
    /// PkgLength: the length of what follows, counting the encoding's own bytes.
    static func packageLength(_ payload: Int) -> [UInt8] {
        if payload + 1 < 0x40 { return [UInt8(payload + 1)] }
        for extra in 1...3 {
            let total = payload + 1 + extra
            guard total < 1 << (4 + 8 * extra) else { continue }
            var out = [UInt8(extra << 6) | UInt8(total & 0x0f)]
            for k in 0..<extra { out.append(UInt8(truncatingIfNeeded: total >> (4 + 8 * k))) }
            return out
        }
        return [] // unreachable for tables this small (< 256 MiB)
    }

    static func scope(_ name: String, _ body: [UInt8]) -> [UInt8] {
        let n = Array(name.utf8)
        return [0x10] + packageLength(n.count + body.count) + n + body
    }

    static func device(_ name: [UInt8], _ body: [UInt8]) -> [UInt8] {
        [0x5b, 0x82] + packageLength(name.count + body.count) + name + body
    }

    /// "VR00"…"VR1F": a four-character name for device `i`.
    static func nameSeg(_ i: Int) -> [UInt8] {
        let hex = Array("0123456789ABCDEF".utf8)
        return Array("VR".utf8) + [hex[(i >> 4) & 0xf], hex[i & 0xf]]
    }

    static func name(_ seg: String, _ value: [UInt8]) -> [UInt8] { [0x08] + Array(seg.utf8) + value }

    static func string(_ s: String) -> [UInt8] { [0x0d] + Array(s.utf8) + [0] }

    static func integer(_ v: UInt64) -> [UInt8] {
        switch v {
        case 0: return [0x00]
        case 1: return [0x01]
        case ...0xff: return [0x0a, UInt8(v)]
        case ...0xffff: return [0x0b, UInt8(v & 0xff), UInt8(v >> 8)]
        case ...0xffff_ffff: return [0x0c] + (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) }
        default: return [0x0e] + (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) }
        }
    }

    static func package(_ elements: [[UInt8]]) -> [UInt8] {
        let body = [UInt8(elements.count)] + elements.flatMap { $0 }
        return [0x12] + packageLength(body.count) + body
    }

    static func buffer(_ bytes: [UInt8]) -> [UInt8] {
        let size = integer(UInt64(bytes.count))
        return [0x11] + packageLength(size.count + bytes.count) + size + bytes
    }

    /// Memory32Fixed, read-write.
    static func memory32Fixed(base: UInt32, size: UInt32) -> [UInt8] {
        [0x86, 9, 0, 1] + (0..<4).map { UInt8(truncatingIfNeeded: base >> (8 * $0)) }
            + (0..<4).map { UInt8(truncatingIfNeeded: size >> (8 * $0)) }
    }

    /// Extended Interrupt: consumer, edge-triggered, active-high, exclusive, one GSI (an irqfd
    /// delivers a pulse per notification).
    static func interrupt(_ gsi: UInt32) -> [UInt8] {
        [0x89, 6, 0, 0x03, 1] + (0..<4).map { UInt8(truncatingIfNeeded: gsi >> (8 * $0)) }
    }

    /// I/O port descriptor: 16-bit decode, `count` ports at `base` (fixed: minimum = maximum).
    static func ioPorts(base: UInt16, count: UInt8) -> [UInt8] {
        [0x47, 0x01, UInt8(base & 0xff), UInt8(base >> 8), UInt8(base & 0xff), UInt8(base >> 8), 0x01, count]
    }

    /// IRQ descriptor without flags (edge-triggered, active-high, as ISA IRQs are): one IRQ.
    static func isaIRQ(_ irq: Int) -> [UInt8] {
        let mask = UInt16(1) << UInt16(irq & 15)
        return [0x22, UInt8(mask & 0xff), UInt8(mask >> 8)]
    }

    /// End tag; checksum 0 means "treat as correct".
    static let endTag: [UInt8] = [0x79, 0]
}
