// virtio-hostile: feeds the virtio block device (virtio-mmio transport, split virtqueue,
// virtio-blk requests) bad input and checks every answer, and that the device still works
// afterwards.
//
// One line per check: `virtio-hostile: ok   <what> -> <outcome>` or
// `virtio-hostile: FAIL <what> -> <outcome>, <why>` (`skip` for checks that need a read-only
// or a writable disk when the disk is the other kind); then a summary. Exits 0 only if every
// check passed, 1 otherwise, 2 without a block device.
//
// After every check the program reads sector 0 the normal way and compares it with what it
// read at the start. A broken chain must fail only that request (docs/guest-abi.md): the
// device must not need a reset. Ring-level corruption (an available index that jumps by more
// than the queue size) must set DEVICE_NEEDS_RESET; the program then resets and
// re-initialises the device and checks that it works again. Transport checks leave the device
// half-initialised on purpose, and re-initialise it themselves.
//
// Outcomes: `IOERR`/`UNSUPP`/`OK` (the status byte the device wrote), `rejected` (the chain
// came back with no status written), `needs reset`, `nothing came back` (timeout).
//
// Nothing is written to the disk except on a writable disk by checks that expect the write to
// be refused (and then verify the target sector is unchanged).

enum Outcome: Equatable {
    case status(UInt8)
    case rejected
    case needsReset
    case timeout
    case driverError(VirtioError)

    var isRefusal: Bool {
        switch self {
        case .status(let s): return s == VirtioBlock.Status.ioError || s == VirtioBlock.Status.unsupported
        case .rejected: return true
        default: return false
        }
    }

    func describe(_ out: inout LineWriter) {
        switch self {
        case .status(let s):
            switch s {
            case VirtioBlock.Status.ok: out.append("OK")
            case VirtioBlock.Status.ioError: out.append("IOERR")
            case VirtioBlock.Status.unsupported: out.append("UNSUPP")
            default:
                out.append("status ")
                out.append(hex: s)
            }
        case .rejected: out.append("rejected (no status written)")
        case .needsReset: out.append("needs reset")
        case .timeout: out.append("nothing came back")
        case .driverError(let e):
            out.append("driver error: ")
            out.append(e.name)
        }
    }
}

/// What a check accepts.
enum Expect {
    case refused       // IOERR, UNSUPP or rejected
    case ioError       // exactly IOERR
    case unsupported   // exactly UNSUPP
    case rejected      // returned with no status
    case ok            // OK (a legal request, for contrast)
    case dropped       // ring-level: needs reset, or dropped (timeout) or rejected, device fine
    case needsReset    // ring-level: DEVICE_NEEDS_RESET

    func accepts(_ o: Outcome) -> Bool {
        switch self {
        case .refused: return o.isRefusal
        case .ioError: return o == .status(VirtioBlock.Status.ioError)
        case .unsupported: return o == .status(VirtioBlock.Status.unsupported)
        case .rejected: return o == .rejected
        case .ok: return o == .status(VirtioBlock.Status.ok)
        case .dropped: return o == .needsReset || o == .timeout || o == .rejected || o.isRefusal
        case .needsReset: return o == .needsReset
        }
    }

    /// Whether the device may need a reset after this check.
    var allowsReset: Bool {
        switch self {
        case .dropped, .needsReset: return true
        default: return false
        }
    }
}

/// The two slots of a request built by hand.
struct Slots {
    var head: UInt16
    var header: UInt64
    var status: UInt64

    func header(_ length: UInt32 = 16) -> VirtqBuffer {
        VirtqBuffer(address: header, length: length, deviceWritable: false)
    }
    var statusByte: VirtqBuffer { VirtqBuffer(address: status, length: 1, deviceWritable: true) }
}

func readable(_ address: UInt64, _ length: UInt32) -> VirtqBuffer {
    VirtqBuffer(address: address, length: length, deviceWritable: false)
}

func writable(_ address: UInt64, _ length: UInt32) -> VirtqBuffer {
    VirtqBuffer(address: address, length: length, deviceWritable: true)
}

let hostileTimeout: UInt64 = 1_000_000_000
let sectorSize = VirtioBlock.sectorSize

struct Hostile {
    var disk: VirtioBlock
    let info: BootInfo
    let entry: VirtioDeviceEntry
    /// 64 KiB of scratch RAM.
    let scratch: UnsafeMutableRawPointer
    /// Sector 0 as read at the start.
    let reference: UnsafeMutableRawPointer
    /// The last sector as read at the start.
    let lastReference: UnsafeMutableRawPointer
    var passed = 0
    var failed = 0
    var skipped = 0

    var notRAM: UInt64 { (info.ramSize + 0x10_0000) & ~0xfff }

    // MARK: requests built by hand

    /// Prepares the header (type, sector) and status slots of the next chain.
    mutating func begin(_ type: UInt32, sector: UInt64 = 0) -> Slots {
        let head = disk.queue.nextHead
        disk.prepare(head: head, type: type, sector: sector)
        return Slots(head: head, header: address(of: disk.headerSlot(for: head)),
                     status: address(of: disk.statusSlot(for: head)))
    }

    /// Adds `chain`, lets `tamper` rewrite its descriptors, publishes it and waits for it.
    mutating func send(_ chain: [VirtqBuffer],
                       tamper: (inout VirtQueue, UInt16) -> Void = { _, _ in }) -> Outcome {
        var head: UInt16 = 0
        do throws(VirtioError) {
            head = try chain.withUnsafeBufferPointer { (b) throws(VirtioError) -> UInt16 in try disk.queue.add(b) }
        } catch {
            return .driverError(error)
        }
        tamper(&disk.queue, head)
        disk.queue.publish(head)
        disk.queue.notify()
        return awaitChain(head)
    }

    mutating func awaitChain(_ head: UInt16) -> Outcome {
        do throws(VirtioError) {
            _ = try disk.queue.waitFor(head, timeout: hostileTimeout)
            let status = volatileLoadByte(disk.statusSlot(for: head))
            return status == VirtioBlock.Status.notWritten ? .rejected : .status(status)
        } catch {
            if error == .deviceNeedsReset || disk.transport.needsReset { return .needsReset }
            if error == .timeout { return .timeout }
            return .driverError(error)
        }
    }

    /// Publishes a raw head value (no chain behind it) and waits for anything to happen.
    mutating func sendRawHead(_ value: UInt16) -> Outcome {
        disk.queue.publish(value)
        disk.queue.notify()
        do throws(VirtioError) {
            let element = try disk.queue.waitUsed(timeout: hostileTimeout)
            return element.id == UInt32(value) ? .rejected : .driverError(.badUsedID(element.id))
        } catch {
            if error == .deviceNeedsReset || disk.transport.needsReset { return .needsReset }
            if error == .timeout { return .timeout }
            return .driverError(error)
        }
    }

    // MARK: health

    /// Reads sector 0 normally and compares it with the reference; resets and re-initialises
    /// first if the device needs it (only allowed when `allowReset`).
    mutating func healthy(allowReset: Bool, _ why: inout StaticString) -> Bool {
        var attempts = 0
        while true {
            attempts += 1
            if disk.transport.needsReset {
                guard allowReset else { why = "the device needs a reset (only the request should fail)"; return false }
                do throws(VirtioError) { try disk.reinitialize() } catch {
                    why = "re-initialisation after the reset failed"
                    return false
                }
            }
            scratch.initializeMemory(as: UInt8.self, repeating: 0xee, count: sectorSize)
            do throws(VirtioError) {
                try disk.read(sector: 0, into: UnsafeMutableRawBufferPointer(start: scratch, count: sectorSize))
            } catch {
                if error == .deviceNeedsReset && allowReset && attempts == 1 { continue }
                why = error == .deviceNeedsReset ? "a normal read then found the device needing a reset"
                    : error == .timeout ? "a normal read then timed out" : "a normal read then failed"
                return false
            }
            guard memcmp(scratch, reference, sectorSize) == 0 else {
                why = "a normal read then returned different data"
                return false
            }
            return true
        }
    }

    /// Re-initialises the device from scratch and checks a normal read (after transport checks).
    mutating func restore(_ why: inout StaticString) -> Bool {
        do throws(VirtioError) { try disk.reinitialize() } catch {
            why = "re-initialisation failed"
            return false
        }
        return healthy(allowReset: false, &why)
    }

    // MARK: reporting

    mutating func record(_ what: StaticString, ok: Bool, why: StaticString, _ outcome: (inout LineWriter) -> Void) {
        if ok { passed += 1 } else { failed += 1 }
        Console.line { out in
            out.append("virtio-hostile: ")
            out.append(ok ? "ok   " : "FAIL ")
            out.append(what)
            out.append(" -> ")
            outcome(&out)
            if !ok {
                out.append(", ")
                out.append(why)
            }
        }
    }

    mutating func skip(_ what: StaticString, _ why: StaticString) {
        skipped += 1
        Console.line { out in
            out.append("virtio-hostile: skip ")
            out.append(what)
            out.append(" (")
            out.append(why)
            out.append(")")
        }
    }

    /// Judges a request-level check: the outcome, then the device's health.
    mutating func check(_ what: StaticString, _ outcome: Outcome, _ expect: Expect,
                        extra: Bool = true, extraWhy: StaticString = "") {
        var why: StaticString = "unexpected outcome"
        var ok = expect.accepts(outcome)
        if ok && !extra { ok = false; why = extraWhy }
        let resetNeeded = disk.transport.needsReset || outcome == .needsReset
        var healthWhy: StaticString = ""
        let fine = healthy(allowReset: expect.allowsReset, &healthWhy)
        if ok && !fine { ok = false; why = healthWhy }
        record(what, ok: ok, why: why) { out in
            outcome.describe(&out)
            if resetNeeded && fine { out.append("; reset and re-initialised, works again") }
        }
    }

    /// Judges a transport-level check, then re-initialises the device.
    mutating func transportCheck(_ what: StaticString, _ ok: Bool, _ observed: StaticString) {
        var why: StaticString = "the device accepted it"
        var good = ok
        var restoreWhy: StaticString = ""
        if !restore(&restoreWhy) && good { good = false; why = restoreWhy }
        record(what, ok: good, why: why) { $0.append(observed) }
    }

    /// Reads the last sector and compares it with the start (after refused writes).
    mutating func lastSectorUnchanged() -> Bool {
        scratch.initializeMemory(as: UInt8.self, repeating: 0xee, count: sectorSize)
        do throws(VirtioError) {
            try disk.read(sector: disk.capacity - 1, into: UnsafeMutableRawBufferPointer(start: scratch, count: sectorSize))
        } catch {
            return false
        }
        return memcmp(scratch, lastReference, sectorSize) == 0
    }

    // MARK: the checks

    mutating func transportChecks() {
        let t = disk.transport
        let ok = t.read32(VirtioMMIO.Register.magicValue) == VirtioMMIO.magic
            && t.read32(VirtioMMIO.Register.version) == 2
            && t.read32(VirtioMMIO.Register.deviceID) == VirtioDeviceType.block.rawValue
        record("registers: MagicValue \"virt\", Version 2, DeviceID 2", ok: ok, why: "wrong register values") {
            $0.append(hex: t.read32(VirtioMMIO.Register.magicValue))
            $0.append(" ")
            $0.append(decimal: t.read32(VirtioMMIO.Register.version))
            $0.append(" ")
            $0.append(decimal: t.read32(VirtioMMIO.Register.deviceID))
        }

        // A feature bit the device does not offer.
        do {
            t.reset()
            t.setStatus(VirtioStatus.acknowledge)
            t.setStatus(VirtioStatus.acknowledge | VirtioStatus.driver)
            let offered = t.readDeviceFeatures()
            var bit: UInt64 = 1 << 63
            var i: UInt64 = 0
            while i < 64 {
                if offered & (1 << i) == 0 { bit = 1 << i; break }
                i += 1
            }
            t.writeDriverFeatures(VirtioFeature.version1 | bit)
            t.setStatus(VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK)
            let refused = t.status & VirtioStatus.featuresOK == 0
            transportCheck("FEATURES_OK with a feature the device does not offer", refused,
                           refused ? "FEATURES_OK not set" : "FEATURES_OK set")
        }

        // A modern device must refuse a driver without VIRTIO_F_VERSION_1.
        do {
            t.reset()
            t.setStatus(VirtioStatus.acknowledge)
            t.setStatus(VirtioStatus.acknowledge | VirtioStatus.driver)
            t.writeDriverFeatures(0)
            t.setStatus(VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK)
            let refused = t.status & VirtioStatus.featuresOK == 0
            transportCheck("FEATURES_OK without VIRTIO_F_VERSION_1", refused,
                           refused ? "FEATURES_OK not set" : "FEATURES_OK set")
        }

        // Queue layouts the device must refuse at QueueReady.
        queueLayoutCheck("queue whose descriptor table is not guest RAM", desc: notRAM)
        queueLayoutCheck("queue whose descriptor table is in the VMM system area (0x1000)", desc: 0x1000)
        queueLayoutCheck("queue whose used ring is in the boot-information block (read-only)", used: info.address,
                         mustNotWrite: info.address)
        queueLayoutCheck("queue whose used ring is misaligned (+2)", used: address(of: disk.queue.usedRing) + 2)
        queueLayoutCheck("queue of size 3 (not a power of two)", size: 3)

        // Notifying a queue that does not exist.
        do {
            disk.transport.write32(VirtioMMIO.Register.queueNotify, 7)
            var why: StaticString = ""
            let fine = healthy(allowReset: false, &why)
            record("QueueNotify for queue 7 (does not exist)", ok: fine, why: why) { $0.append(fine ? "ignored" : "broke the device") }
        }

        // Writing a read-only register.
        do {
            disk.transport.write32(VirtioMMIO.Register.deviceID, 0x1234)
            let id = disk.transport.read32(VirtioMMIO.Register.deviceID)
            var why: StaticString = "DeviceID changed"
            var fine = id == VirtioDeviceType.block.rawValue
            if fine { fine = healthy(allowReset: false, &why) }
            record("write to DeviceID (read-only)", ok: fine, why: why) { $0.append("DeviceID "); $0.append(decimal: id) }
        }

        // Moving a live queue's descriptor table.
        do {
            disk.transport.write32(VirtioMMIO.Register.queueSel, 0)
            disk.transport.write32(VirtioMMIO.Register.queueDescLow, 0x1000)
            disk.transport.write32(VirtioMMIO.Register.queueDescHigh, 0)
            var why: StaticString = ""
            let fine = healthy(allowReset: false, &why)
            record("QueueDescLow rewritten while the queue is live", ok: fine, why: why) { $0.append(fine ? "ignored" : "took effect") }
            if !fine { _ = restore(&why) }
        }
    }

    /// Sets up queue 0 with one part replaced, sets QueueReady and expects it refused (QueueReady
    /// reads 0, or DEVICE_NEEDS_RESET, or QueueNum did not take the bad size). With
    /// `mustNotWrite` (a used ring in memory the program may only read), accepting the layout is
    /// also fine as long as the device never writes there: the program then sends one request
    /// and expects DEVICE_NEEDS_RESET or no answer, with the memory unchanged.
    mutating func queueLayoutCheck(_ what: StaticString, desc: UInt64? = nil, used: UInt64? = nil, size: UInt32? = nil,
                                   mustNotWrite: UInt64? = nil) {
        var t = disk.transport
        do throws(VirtioError) {
            try t.negotiate(wanted: VirtioBlock.defaultFeatures)
        } catch {
            transportCheck(what, false, "negotiation failed")
            return
        }
        let q = disk.queue
        let d = desc ?? address(of: q.descriptors)
        let a = address(of: q.availRing)
        let u = used ?? address(of: q.usedRing)
        t.write32(VirtioMMIO.Register.queueSel, 0)
        t.write32(VirtioMMIO.Register.queueNum, size ?? UInt32(q.size))
        let sizeTaken = size.map { t.read32(VirtioMMIO.Register.queueNum) == $0 } ?? false
        t.write32(VirtioMMIO.Register.queueDescLow, UInt32(truncatingIfNeeded: d))
        t.write32(VirtioMMIO.Register.queueDescHigh, UInt32(truncatingIfNeeded: d >> 32))
        t.write32(VirtioMMIO.Register.queueDriverLow, UInt32(truncatingIfNeeded: a))
        t.write32(VirtioMMIO.Register.queueDriverHigh, UInt32(truncatingIfNeeded: a >> 32))
        t.write32(VirtioMMIO.Register.queueDeviceLow, UInt32(truncatingIfNeeded: u))
        t.write32(VirtioMMIO.Register.queueDeviceHigh, UInt32(truncatingIfNeeded: u >> 32))
        t.write32(VirtioMMIO.Register.queueReady, 1)
        let ready = t.read32(VirtioMMIO.Register.queueReady) == 1
        var refused: Bool
        var observed: StaticString
        if let guarded = mustNotWrite, ready && !t.needsReset {
            // Accepted: the device must still never write there.
            let bytes = 6 + 8 * Int(q.size)
            let before = scratch + 8192
            let watched = UnsafeRawPointer(bitPattern: UInt(guarded))!
            before.copyMemory(from: watched, byteCount: bytes)
            t.setStatus(VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK | VirtioStatus.driverOK)
            disk.queue.restart()
            let r = begin(VirtioBlock.RequestType.read)
            let outcome = send([r.header(), writable(address(of: scratch), UInt32(sectorSize)), r.statusByte])
            let unchanged = memcmp(before, watched, bytes) == 0
            refused = unchanged && (outcome == .needsReset || outcome == .timeout)
            observed = !unchanged ? "accepted, and the device wrote there"
                : outcome == .needsReset ? "accepted; first request: needs reset, memory unchanged"
                : outcome == .timeout ? "accepted; first request: nothing came back, memory unchanged"
                : "accepted; first request answered"
        } else if size != nil {
            refused = !sizeTaken || !ready || t.needsReset
            observed = !sizeTaken ? "QueueNum kept its old value" : !ready ? "QueueReady refused" : "size 3 accepted"
        } else {
            refused = !ready || t.needsReset
            observed = t.needsReset ? "needs reset" : ready ? "QueueReady reads 1" : "QueueReady reads 0"
        }
        transportCheck(what, refused, observed)
    }

    mutating func chainChecks() {
        let ramEnd = info.ramSize
        let s = UInt32(sectorSize)
        let scratchAddress = address(of: scratch)

        // Buffers the device may not touch.
        var r = begin(VirtioBlock.RequestType.read)
        check("read into a buffer beyond the end of RAM", send([r.header(), writable(notRAM, s), r.statusByte]), .refused)
        r = begin(VirtioBlock.RequestType.read)
        check("read into a buffer straddling the end of RAM", send([r.header(), writable(ramEnd - 256, s), r.statusByte]), .refused)
        r = begin(VirtioBlock.RequestType.read)
        check("read into the device's own MMIO window", send([r.header(), writable(entry.base, s), r.statusByte]), .refused)
        r = begin(VirtioBlock.RequestType.read)
        check("read into the hypercall page", send([r.header(), writable(hypercallPageAddress, s), r.statusByte]), .refused)
        r = begin(VirtioBlock.RequestType.read)
        check("read into a buffer whose end overflows 64 bits", send([r.header(), writable(0xffff_ffff_ffff_fe00, s), r.statusByte]), .refused)
        r = begin(VirtioBlock.RequestType.read)
        check("read into the boot-information block (read-only)", send([r.header(), writable(info.address, s), r.statusByte]), .refused)
        r = begin(VirtioBlock.RequestType.read)
        check("read into the program's code (read-only)", send([r.header(), writable(0x40_0000, s), r.statusByte]), .refused)
        r = begin(VirtioBlock.RequestType.read)
        check("header in a buffer beyond the end of RAM", send([readable(notRAM, 16), writable(scratchAddress, s), r.statusByte]), .refused)
        r = begin(VirtioBlock.RequestType.read)
        check("status byte beyond the end of RAM", send([r.header(), writable(scratchAddress, s), writable(notRAM, 1)]), .refused)

        // Broken chains.
        r = begin(VirtioBlock.RequestType.read)
        check("descriptor loop (the last descriptor links back to the head)",
              send([r.header(), writable(scratchAddress, s), r.statusByte]) { q, head in
                  let data = q.link(after: head)
                  let status = q.link(after: data)
                  q.writeDescriptor(status, address: r.status, length: 1,
                                    flags: VirtQueue.flagWrite | VirtQueue.flagNext, next: head)
              }, .refused)
        r = begin(VirtioBlock.RequestType.read)
        check("descriptor that links to itself",
              send([r.header(), writable(scratchAddress, s), r.statusByte]) { q, head in
                  q.writeDescriptor(head, address: r.header, length: 16, flags: VirtQueue.flagNext, next: head)
              }, .refused)
        r = begin(VirtioBlock.RequestType.read)
        check("next index outside the descriptor table",
              send([r.header(), writable(scratchAddress, s), r.statusByte]) { q, head in
                  q.writeDescriptor(head, address: r.header, length: 16, flags: VirtQueue.flagNext, next: q.size &+ 5)
              }, .refused)
        r = begin(VirtioBlock.RequestType.read)
        // A one-entry indirect table in scratch that names the status byte.
        let table = scratch + 4096
        table.storeBytes(of: r.status, toByteOffset: 0, as: UInt64.self)
        table.storeBytes(of: UInt32(1), toByteOffset: 8, as: UInt32.self)
        table.storeBytes(of: VirtQueue.flagWrite, toByteOffset: 12, as: UInt16.self)
        table.storeBytes(of: UInt16(0), toByteOffset: 14, as: UInt16.self)
        check("indirect descriptor without VIRTIO_F_INDIRECT_DESC",
              send([r.header(), writable(scratchAddress, s), r.statusByte]) { q, head in
                  let data = q.link(after: head)
                  q.writeDescriptor(data, address: address(of: table), length: 16, flags: VirtQueue.flagIndirect, next: 0)
              }, .refused)
        r = begin(VirtioBlock.RequestType.read)
        check("device-readable descriptor after a device-writable one",
              send([r.header(), writable(scratchAddress, s), readable(r.status, 1)]), .refused)
        r = begin(VirtioBlock.RequestType.read)
        check("chain without a device-writable byte for the status", send([r.header()]), .rejected)

        // Malformed requests.
        r = begin(VirtioBlock.RequestType.read)
        check("request header of 8 bytes", send([r.header(8), writable(scratchAddress, s), r.statusByte]), .refused)
        r = begin(VirtioBlock.RequestType.read)
        check("request header of 0 bytes", send([r.header(0), writable(scratchAddress, s), r.statusByte]), .refused)
        r = begin(VirtioBlock.RequestType.read)
        check("read of 100 bytes (not a whole sector)", send([r.header(), writable(scratchAddress, 100), r.statusByte]), .refused)
        r = begin(0x7777)
        check("unknown request type 0x7777", send([r.header(), writable(scratchAddress, s), r.statusByte]), .unsupported)
        r = begin(VirtioBlock.RequestType.read, sector: disk.capacity)
        check("read at sector = capacity", send([r.header(), writable(scratchAddress, s), r.statusByte]), .ioError)
        r = begin(VirtioBlock.RequestType.read, sector: disk.capacity &- 1)
        check("read of 2 sectors from the last sector", send([r.header(), writable(scratchAddress, 2 * s), r.statusByte]), .ioError)
        r = begin(VirtioBlock.RequestType.read, sector: UInt64.max)
        check("read at sector 2^64-1", send([r.header(), writable(scratchAddress, s), r.statusByte]), .ioError)
        r = begin(VirtioBlock.RequestType.read, sector: UInt64.max / 512)
        check("read whose byte offset overflows 64 bits", send([r.header(), writable(scratchAddress, s), r.statusByte]), .ioError)

        // A legal but unusual framing (§2.6.4): the header split over two descriptors.
        r = begin(VirtioBlock.RequestType.read)
        scratch.initializeMemory(as: UInt8.self, repeating: 0xee, count: sectorSize)
        let split = send([readable(r.header, 8), readable(r.header + 8, 8), writable(scratchAddress, s), r.statusByte])
        check("header split over two descriptors (8 + 8 bytes, legal)", split, .ok,
              extra: memcmp(scratch, reference, sectorSize) == 0, extraWhy: "wrong data")

        // Writes.
        if disk.readOnly {
            r = begin(VirtioBlock.RequestType.write)
            check("write to the read-only disk", send([r.header(), readable(address(of: reference), s), r.statusByte]), .refused)
            skip("write from a buffer beyond the end of RAM", "disk is read-only")
            skip("write from the VMM system area", "disk is read-only")
            skip("write at sector = capacity", "disk is read-only")
        } else {
            skip("write to the read-only disk", "disk is writable")
            let last = disk.capacity - 1
            r = begin(VirtioBlock.RequestType.write, sector: last)
            var outcome = send([r.header(), readable(notRAM, s), r.statusByte])
            check("write from a buffer beyond the end of RAM", outcome, .refused,
                  extra: lastSectorUnchanged(), extraWhy: "the target sector changed")
            r = begin(VirtioBlock.RequestType.write, sector: last)
            outcome = send([r.header(), readable(0x1000, s), r.statusByte])
            check("write from the VMM system area (supervisor-only)", outcome, .refused,
                  extra: lastSectorUnchanged(), extraWhy: "the target sector changed")
            r = begin(VirtioBlock.RequestType.write, sector: disk.capacity)
            check("write at sector = capacity", send([r.header(), readable(address(of: lastReference), s), r.statusByte]), .ioError)
        }

        // Last, because a device that accepted it would overwrite the VM's own system tables.
        r = begin(VirtioBlock.RequestType.read)
        check("read into the VMM system area (0x1000: GDT, IDT, page tables)",
              send([r.header(), writable(0x1000, s), r.statusByte]), .refused)
    }

    mutating func ringChecks() {
        let size = disk.queue.size
        check("available head outside the descriptor table (size + 3)", sendRawHead(size &+ 3), .dropped)
        check("available head 0xffff", sendRawHead(0xffff), .dropped)

        // The available index jumps by more than the queue size: the ring cannot be trusted.
        let jump = disk.queue.availIndex &+ size &+ 1
        disk.queue.setAvailIndexRaw(jump)
        disk.queue.notify()
        var outcome = Outcome.timeout
        let start = time()
        while time() &- start < hostileTimeout {
            if disk.transport.needsReset { outcome = .needsReset; break }
            wait(1_000_000)
        }
        check("available index jumps by queue size + 1", outcome, .needsReset)
    }
}

@_silgen_name("memcmp")
func memcmp(_ a: UnsafeRawPointer, _ b: UnsafeRawPointer, _ n: Int) -> CInt

@_cdecl("bulkhead_guest_main")
func guestMain(_ bootInfoAddress: UInt64, _ vcpu: UInt64) {
    guard vcpu == 0 else { parkForever() }
    guard let info = BootInfo(address: bootInfoAddress) else {
        Console.writeLine("virtio-hostile: FAIL no valid boot-information block")
        exit(1)
    }
    guard let entry = info.firstDevice(.block) else {
        Console.writeLine("virtio-hostile: no block device")
        exit(2)
    }
    var disk: VirtioBlock
    do throws(VirtioError) {
        disk = try VirtioBlock(entry)
    } catch {
        Console.line { out in
            out.append("virtio-hostile: FAIL cannot initialise the block device: ")
            out.append(error.name)
        }
        exit(1)
    }
    guard disk.capacity >= 2,
          let memory = Heap.allocate(byteCount: 64 * 1024 + 2 * sectorSize, alignment: 4096) else {
        Console.writeLine("virtio-hostile: FAIL needs a disk of at least 2 sectors and 65 KiB of heap")
        exit(1)
    }
    disk.queue.timeout = 2_000_000_000
    let reference = memory + 64 * 1024
    let lastReference = reference + sectorSize
    do throws(VirtioError) {
        try disk.read(sector: 0, into: UnsafeMutableRawBufferPointer(start: reference, count: sectorSize))
        try disk.read(sector: disk.capacity - 1, into: UnsafeMutableRawBufferPointer(start: lastReference, count: sectorSize))
    } catch {
        Console.line { out in
            out.append("virtio-hostile: FAIL a normal read before any check: ")
            out.append(error.name)
        }
        exit(1)
    }
    var h = Hostile(disk: disk, info: info, entry: entry, scratch: memory,
                    reference: reference, lastReference: lastReference)
    h.transportChecks()
    h.chainChecks()
    h.ringChecks()
    Console.line { out in
        out.append("virtio-hostile: ")
        out.append(decimal: h.passed)
        out.append(" of ")
        out.append(decimal: h.passed + h.failed)
        out.append(" checks passed")
        if h.skipped > 0 {
            out.append(" (")
            out.append(decimal: h.skipped)
            out.append(" skipped)")
        }
    }
    exit(h.failed == 0 ? 0 : 1)
}
