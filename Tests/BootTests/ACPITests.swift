import TestSupport
import Testing
@testable import Boot

/// Reads the tables back the way a kernel does: from the RSDP, by physical address.
private struct TableReader {
    let bytes: [UInt8]
    let base: UInt64

    func u8(_ a: UInt64) -> UInt8 { bytes[Int(a - base)] }
    func u16(_ a: UInt64) -> UInt16 { UInt16(u8(a)) | UInt16(u8(a + 1)) << 8 }
    func u32(_ a: UInt64) -> UInt32 { (0..<4).reduce(0) { $0 | UInt32(u8(a + UInt64($1))) << (8 * UInt32($1)) } }
    func u64(_ a: UInt64) -> UInt64 { UInt64(u32(a)) | UInt64(u32(a + 4)) << 32 }
    func slice(_ a: UInt64, _ n: Int) -> [UInt8] { Array(bytes[Int(a - base)..<Int(a - base) + n]) }
    func sum(_ a: UInt64, _ n: Int) -> UInt8 { slice(a, n).reduce(0, &+) }
    func signature(_ a: UInt64) -> String { String(decoding: slice(a, 4), as: UTF8.self) }

    /// The table at `a`, checked: its checksum is zero and it lies inside the block.
    func table(_ a: UInt64) -> (signature: String, length: Int) {
        let length = Int(u32(a + 4))
        #expect(a >= base && Int(a - base) + length <= bytes.count)
        #expect(sum(a, length) == 0, "checksum of \(signature(a))")
        return (signature(a), length)
    }

    /// The XSDT's tables by signature.
    func tables() -> [String: UInt64] {
        #expect(String(decoding: slice(base, 8), as: UTF8.self) == "RSD PTR ")
        #expect(sum(base, 20) == 0 && sum(base, 36) == 0)
        #expect(u8(base + 15) == 2 && u32(base + 16) == 0 && u32(base + 20) == 36)
        let xsdt = u64(base + 24)
        let (sig, length) = table(xsdt)
        #expect(sig == "XSDT")
        var out: [String: UInt64] = [:]
        for i in 0..<(length - 36) / 8 {
            let t = u64(xsdt + 36 + UInt64(8 * i))
            out[table(t).signature] = t
        }
        return out
    }
}

/// A minimal AML reader for what the DSDT uses: Scope, Device, Name with String, Integer and
/// Buffer values. It checks every package length against the bytes present.
private enum AMLNode: Equatable {
    case scope(String, [AMLNode])
    case device(String, [AMLNode])
    case name(String, AMLValue)
}
private enum AMLValue: Equatable {
    case string(String), integer(UInt64), buffer([UInt8]), package([AMLValue])
}

private struct AMLReader {
    var b: [UInt8]
    var i = 0
    enum Failure: Error { case bad(String) }

    mutating func pkgLength() throws -> Int {
        let start = i
        let lead = Int(b[i]); i += 1
        let extra = lead >> 6
        if extra == 0 { return start + (lead & 0x3f) }
        var total = lead & 0x0f
        for k in 0..<extra { total |= Int(b[i]) << (4 + 8 * k); i += 1 }
        return start + total
    }
    mutating func nameSeg() -> String { defer { i += 4 }; return String(decoding: b[i..<i + 4], as: UTF8.self) }
    mutating func integer() throws -> UInt64 {
        let op = b[i]; i += 1
        func le(_ n: Int) -> UInt64 { defer { i += n }; return (0..<n).reduce(0) { $0 | UInt64(b[i + $1]) << (8 * UInt64($1)) } }
        switch op {
        case 0x00: return 0
        case 0x01: return 1
        case 0x0a: return le(1)
        case 0x0b: return le(2)
        case 0x0c: return le(4)
        case 0x0e: return le(8)
        default: throw Failure.bad("integer op \(op)")
        }
    }
    mutating func value() throws -> AMLValue {
        switch b[i] {
        case 0x0d:
            i += 1
            guard let end = b[i...].firstIndex(of: 0) else { throw Failure.bad("unterminated string") }
            defer { i = end + 1 }
            return .string(String(decoding: b[i..<end], as: UTF8.self))
        case 0x12:
            i += 1
            let end = try pkgLength()
            let count = Int(b[i]); i += 1
            var elements: [AMLValue] = []
            for _ in 0..<count { elements.append(try value()) }
            guard i == end else { throw Failure.bad("package length") }
            return .package(elements)
        case 0x11:
            i += 1
            let end = try pkgLength()
            let size = Int(try integer())
            guard end - i == size, end <= b.count else { throw Failure.bad("buffer size \(size) vs \(end - i)") }
            defer { i = end }
            return .buffer(Array(b[i..<end]))
        default:
            return .integer(try integer())
        }
    }
    mutating func nodes(until end: Int) throws -> [AMLNode] {
        var out: [AMLNode] = []
        while i < end {
            switch b[i] {
            case 0x10:
                i += 1
                let e = try pkgLength()
                guard e <= end else { throw Failure.bad("scope overruns") }
                var name = ""
                if b[i] == 0x5c { name = "\\"; i += 1 }
                name += nameSeg()
                out.append(.scope(name, try nodes(until: e)))
            case 0x5b where b[i + 1] == 0x82:
                i += 2
                let e = try pkgLength()
                guard e <= end else { throw Failure.bad("device overruns") }
                let name = nameSeg()
                out.append(.device(name, try nodes(until: e)))
            case 0x08:
                i += 1
                var name = ""
                if b[i] == 0x5c { name = "\\"; i += 1 }
                name += nameSeg()
                out.append(.name(name, try value()))
            default:
                throw Failure.bad("op \(b[i]) at \(i)")
            }
        }
        guard i == end else { throw Failure.bad("ran past a package end") }
        return out
    }
}

struct ACPITests {
    let devices = [VirtioMMIODeviceInfo(base: 0xd000_0000, size: 0x1000, irq: 5),
                   VirtioMMIODeviceInfo(base: 0xd000_1000, size: 0x1000, irq: 6),
                   VirtioMMIODeviceInfo(base: 0xd001_f000, size: 0x1000, irq: 23)]

    @Test func tablesChainFromTheRSDPWithValidChecksums() {
        let r = TableReader(bytes: ACPITables.build(cpus: 4, devices: devices), base: ACPITables.base)
        #expect(r.bytes.count <= ACPITables.areaSize)
        let t = r.tables()
        #expect(Set(t.keys) == ["FACP", "APIC"])
        let fadt = t["FACP"]!
        #expect(r.table(fadt).length == 276 && r.u8(fadt + 8) == 6)
        #expect(r.u32(fadt + 112) & (1 << 20) != 0)                    // HW_REDUCED_ACPI
        let dsdt = r.u64(fadt + 140)
        #expect(UInt64(r.u32(fadt + 40)) == dsdt && r.table(dsdt).signature == "DSDT")
        // The reset register: one byte, 0xfe, to I/O port 0x64.
        #expect(r.u32(fadt + 112) & (1 << 10) != 0)
        #expect(r.slice(fadt + 116, 4) == [1, 8, 0, 1] && r.u64(fadt + 120) == 0x64 && r.u8(fadt + 128) == 0xfe)
        // SLEEP_CONTROL_REG and SLEEP_STATUS_REG: 8 bits in system I/O at 0x600 (power off, issue 10).
        for offset: UInt64 in [244, 256] {
            #expect(r.slice(fadt + offset, 4) == [1, 8, 0, 1] && r.u64(fadt + offset + 4) == 0x600)
        }
    }

    @Test func madtListsEachCPUAndTheIOAPIC() {
        for cpus in [1, 2, 64] {
            let r = TableReader(bytes: ACPITables.build(cpus: cpus, devices: []), base: ACPITables.base)
            let madt = r.tables()["APIC"]!
            let length = r.table(madt).length
            #expect(r.u32(madt + 36) == 0xfee0_0000)
            var apicIDs: [UInt8] = []
            var ioapics: [(UInt8, UInt32, UInt32)] = []
            var nmis = 0
            var a = madt + 44
            while a < madt + UInt64(length) {
                let type = r.u8(a), len = r.u8(a + 1)
                #expect(len >= 2)
                switch type {
                case 0:
                    #expect(r.u32(a + 4) & 1 == 1)                        // enabled
                    #expect(r.u8(a + 2) == r.u8(a + 3))                   // processor UID = APIC ID
                    apicIDs.append(r.u8(a + 3))
                case 1: ioapics.append((r.u8(a + 2), r.u32(a + 4), r.u32(a + 8)))
                case 4: nmis += 1; #expect(r.u8(a + 5) == 1)
                default: Issue.record("unexpected MADT entry type \(type)")
                }
                a += UInt64(len)
            }
            #expect(a == madt + UInt64(length))
            #expect(apicIDs == (0..<cpus).map { UInt8($0) })
            #expect(ioapics.count == 1 && ioapics[0].1 == 0xfec0_0000 && ioapics[0].2 == 0)
            #expect(nmis == 1)
        }
    }

    @Test func dsdtDescribesEachVirtioDevice() throws {
        let r = TableReader(bytes: ACPITables.build(cpus: 1, devices: devices), base: ACPITables.base)
        let dsdt = r.u64(r.tables()["FACP"]! + 140)
        let length = r.table(dsdt).length
        var reader = AMLReader(b: r.slice(dsdt, length), i: 36)
        let tree = try reader.nodes(until: length)
        // \_S5_ first: sleep type 5 for S5, which Linux writes to the sleep control register.
        #expect(tree.first == .name("\\_S5_", .package([.integer(5), .integer(0)])))
        guard case .scope("\\_SB_", let children)? = tree.last, tree.count == 2 else {
            Issue.record("DSDT is not one \\_SB_ scope: \(tree)"); return
        }
        #expect(children.count == devices.count + 2)
        // COM1 first: a 16550 at 0x3f8-0x3ff with ISA IRQ 4 (Linux's PnP ACPI maps IRQ 4 for it).
        guard case .device("COM1", let com1)? = children.first else { Issue.record("no COM1 first: \(children)"); return }
        #expect(com1.contains(.name("_HID", .string("PNP0501"))))
        #expect(com1.contains(.name("_CRS", .buffer([0x47, 1, 0xf8, 3, 0xf8, 3, 1, 8, 0x22, 0x10, 0, 0x79, 0]))))
        // Then pvpanic, as QEMU describes it: QEMU0001 with the one I/O port 0x505 (no IRQ).
        guard case .device("PEVT", let pvpanic)? = children.dropFirst().first else { Issue.record("no PEVT second: \(children)"); return }
        #expect(pvpanic.contains(.name("_HID", .string("QEMU0001"))))
        #expect(pvpanic.contains(.name("_CRS", .buffer([0x47, 1, 0x05, 5, 0x05, 5, 1, 1, 0x79, 0]))))
        for (i, (node, d)) in zip(children.dropFirst(2), devices).enumerated() {
            guard case .device(let name, let body) = node else { Issue.record("not a device: \(node)"); continue }
            #expect(name.hasPrefix("VR"))
            #expect(body.contains(.name("_HID", .string("LNRO0005"))))
            #expect(body.contains(.name("_UID", .integer(UInt64(i)))))
            var crs: [UInt8] = []
            for case .name("_CRS", .buffer(let b)) in body { crs = b }
            func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }
            #expect(crs == [0x86, 9, 0, 1] + le32(UInt32(d.base)) + le32(UInt32(d.size))
                    + [0x89, 6, 0, 3, 1] + le32(d.irq) + [0x79, 0])
        }
        #expect(Set(children.map { if case .device(let n, _) = $0 { return n } else { return "" } }).count == devices.count + 2)
    }

    /// PkgLength at every encoding boundary: the reader lands exactly on the end.
    @Test func packageLengthsRoundTrip() throws {
        for payload in [0, 1, 61, 62, 63, 64, 300, 4093, 4094, 4095, 4096, 70000, 1 << 20] {
            let enc = AML.packageLength(payload)
            var reader = AMLReader(b: enc + [UInt8](repeating: 0, count: payload), i: 0)
            #expect(try reader.pkgLength() == enc.count + payload, "payload \(payload)")
            #expect(reader.i == enc.count)
        }
    }

    @Test func integersUseTheSmallestEncoding() {
        #expect(AML.integer(0) == [0x00] && AML.integer(1) == [0x01] && AML.integer(2) == [0x0a, 2])
        #expect(AML.integer(0x1234) == [0x0b, 0x34, 0x12])
        #expect(AML.integer(0x1_0000) == [0x0c, 0, 0, 1, 0])
        #expect(AML.integer(1 << 32).count == 9)
    }

    /// The planner puts the tables where the zero page and start_info say, inside the reserved
    /// BIOS area, for the vCPU count asked; impossible counts are refused.
    @Test func plannerPlacesTheTables() throws {
        let kernel = try LinuxKernel.parse(BzImageBuilder().build())
        let plan = try LinuxBootPlanner.plan(kernel: kernel, initrd: nil, commandLine: "", memorySize: 64 << 20,
                                             devices: devices, vcpus: 3)
        let chunk = try #require(plan.chunks.first { $0.address == ACPITables.base })
        #expect(chunk.bytes == ACPITables.build(cpus: 3, devices: devices))
        let end = ACPITables.base + UInt64(chunk.bytes.count)
        #expect(plan.e820.contains { $0.kind == .reserved && $0.address <= ACPITables.base && end <= $0.address + $0.size })
        for n in [0, -1, LinuxBootLayout.maxVCPUs + 1] {
            #expect(throws: LinuxBootError.badVCPUCount(n)) {
                try LinuxBootPlanner.plan(kernel: kernel, initrd: nil, commandLine: "", memorySize: 64 << 20, devices: [], vcpus: n)
            }
        }
    }
}
