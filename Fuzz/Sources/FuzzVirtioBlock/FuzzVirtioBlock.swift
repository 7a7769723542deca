import Devices
import FuzzSupport
import Virtio

// FuzzVirtioBlock: a hostile driver's virtio-blk request queue. The input is the guest RAM the
// device sees (descriptor table, available ring, used ring, request buffers) plus the queue's and
// the disk's configuration. A VirtioBlock over a 16-sector MemoryBlockBackend serves every
// published chain through `SplitQueue.serveAll`, and for each chain the target checks what
// virtio 1.2 §5.2 and the device's threat model promise:
//   - the used length never exceeds the chain's device-writable bytes, and is 0 exactly when the
//     chain has no writable byte (or was broken);
//   - a status was written in the last writable byte, and it is OK, IOERR or UNSUPP; it is the
//     status `VirtioBlock.parse` predicts for a refused request, OK (or IOERR only when the back
//     end was told to fail) for an accepted one; the used length is data + 1 for IN / GET_ID;
//   - the disk changes only by an accepted OUT (exactly its data at its sector), DISCARD or
//     WRITE_ZEROES (zeros in exactly its segments); never on a refusal, never when read-only;
//   - the back end is never asked for a range outside the disk;
//   - at most one queue's worth of chains per notification.
//
// Input: u8 config (bits 0-2: log2 queue size; bit 3: indirect; bit 4: event index;
//        bit 5: read-only disk; bit 6: failure injection), u8 failing operations (bit i:
//        BlockOperation.allCases[i]), then up to 16 KiB of guest RAM at 0x100000.
//        Layout: descriptors at +0x0, available ring at +0x1000, used ring at +0x2000, anything
//        else is buffer space. The disk's 16 sectors hold the byte pattern (i*7 + i>>9).

let ramSize = 0x4000
let diskSectors = 16

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzVirtioBlock(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let config = input.u8()
    let failMask = input.u8()
    let ram = ArrayRAM(base: 0x10_0000, size: ramSize)
    _ = ram.copyIn(input.take(ramSize), at: ram.base)
    var queue = SplitQueue(size: UInt16(1) << UInt16(config & 7), descriptorTable: ram.base,
                           availRing: ram.base + 0x1000, usedRing: ram.base + 0x2000,
                           indirectAllowed: config & 8 != 0, eventIndex: config & 16 != 0)
    do { try queue.validate(in: ram) } catch { check(false, "valid layout refused: \(error)") }

    let readOnly = config & 32 != 0
    let backend = MemoryBlockBackend(contents: (0..<diskSectors * 512).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 9) })
    if config & 64 != 0 {
        backend.failing = Set(BlockOperation.allCases.enumerated().filter { failMask & (1 << $0.offset) != 0 }.map(\.element))
    }
    let block = VirtioBlock(backend: backend, readOnly: readOnly, id: "fuzz-disk")
    check(block.config.count == VirtioBlock.configSize && block.capacity == UInt64(diskSectors), "config")
    check((block.features & VirtioBlock.Feature.readOnly != 0) == readOnly, "RO feature")

    var served = 0
    do {
        _ = try queue.serveAll(ram: ram, onBroken: { trace("broken chain: \($0)") }) { chain in
            served += 1
            let expected = VirtioBlock.parse(chain, ram: ram, capacity: block.capacity, readOnly: readOnly)
            // What a write request carries, as guest memory holds it before the device runs (the
            // device may then write the status byte over an aliased data byte).
            var outData: [UInt8] = []
            if case .success(.write(_, let n)) = expected, let ranges = chain.readableRanges(skipping: 16, count: n) {
                for r in ranges { outData += ram.copyOut(at: r.address, count: r.count) ?? [] }
            }
            let before = backend.bytes
            let written = block.serve(chain, ram: ram)
            trace("chain \(chain.head): r\(chain.readableLength) w\(chain.writableLength) -> \(summary(expected)), used \(written)")
            verify(chain, expected: expected, written: written, before: before, backend: backend, ram: ram, outData: outData)
            return written
        }
    } catch {
        trace("ring error: \(error)")
    }
    check(served <= Int(queue.size), "served \(served) chains from a queue of \(queue.size)")
    check(backend.refusedCalls == 0, "the device asked the back end for a range outside the disk")
    if readOnly {
        check(backend.calls[.write] == nil && backend.calls[.discard] == nil && backend.calls[.writeZeroes] == nil,
              "a read-only disk reached a write path")
        check(backend.bytes == backend.durable, "a read-only disk changed")
    }
    check(block.counters.requests >= UInt64(served), "request counter")
    check(ram.bytes.count == ramSize, "RAM changed size")
    return 0
}

func summary(_ r: Result<BlockRequest, BlockRequestError>) -> String {
    switch r {
    case .failure(let e): return "refused: \(e)"
    case .success(.write(let sector, let n)): return "write \(n) bytes at sector \(sector)"
    case .success(let request): return "\(request)"
    }
}

/// The byte at the last device-writable position of the chain (where the status goes).
func lastWritableByte(_ chain: DescriptorChain, _ ram: ArrayRAM) -> UInt8? {
    guard let b = chain.writable.last(where: { $0.length > 0 }) else { return nil }
    return ram.copyOut(at: b.address + UInt64(b.length) - 1, count: 1)?.first
}

/// The back-end operation an accepted request needs, if any.
func operation(of request: BlockRequest) -> BlockOperation? {
    switch request {
    case .read(_, let n): return n > 0 ? .read : nil
    case .write(_, let n): return n == 0 ? nil : .write
    case .flush: return .flush
    case .getID: return nil
    case .discard(let s): return s.contains { $0.sectors > 0 } ? .discard : nil
    case .writeZeroes(let s): return s.contains { $0.sectors > 0 } ? .writeZeroes : nil
    }
}

func verify(_ chain: DescriptorChain, expected: Result<BlockRequest, BlockRequestError>, written: UInt32,
            before: [UInt8], backend: MemoryBlockBackend, ram: ArrayRAM, outData: [UInt8]) {
    check(UInt64(written) <= chain.writableLength, "used length \(written) > writable \(chain.writableLength)")
    guard chain.writableLength > 0 else {
        check(written == 0, "wrote \(written) into a chain with no writable byte")
        check(backend.bytes == before, "a chain with no status byte changed the disk")
        return
    }
    check(written >= 1, "a chain with a status byte got no status")
    let status = lastWritableByte(chain, ram)
    check(status.map { $0 <= 2 } ?? false, "status byte \(String(describing: status))")

    switch expected {
    case .failure(let e):
        check(written == 1 && status == e.status.rawValue, "refusal \(e): status \(String(describing: status)), used \(written)")
        check(backend.bytes == before, "a refused request (\(e)) changed the disk")
    case .success(let request):
        let failing = operation(of: request).map { backend.failing.contains($0) } ?? false
        if status != BlockStatus.ok.rawValue {
            check(status == BlockStatus.ioError.rawValue && failing,
                  "accepted \(summary(.success(request))) failed with \(String(describing: status)) without an injected failure")
            check(written == 1, "a failed request reported \(written) bytes")
            check(backend.bytes == before, "a failed request changed the disk")
            return
        }
        var model = before
        switch request {
        case .read(let sector, let n):
            check(written == UInt32(n + 1), "IN used \(written) for \(n) bytes")
            check(sector + UInt64(n / 512) <= backend.sectorCount, "IN range")
        case .getID:
            check(written == UInt32(VirtioBlock.idLength + 1), "GET_ID used \(written)")
        case .flush:
            check(written == 1, "FLUSH used \(written)")
            check(backend.durable == backend.bytes, "a completed flush left data volatile")
        case .write(let sector, let n):
            check(written == 1, "OUT used \(written)")
            check(outData.count == n, "a write of \(n) bytes from a chain holding \(outData.count)")
            let start = Int(sector) * 512
            model.replaceSubrange(start..<start + outData.count, with: outData)
        case .discard(let segments), .writeZeroes(let segments):
            check(written == 1, "segment request used \(written)")
            for s in segments {
                let start = Int(s.sector) * 512
                model.replaceSubrange(start..<start + Int(s.sectors) * 512, with: repeatElement(0, count: Int(s.sectors) * 512))
            }
        }
        check(backend.bytes == model, "\(summary(.success(request))) changed the disk outside its ranges")
    }
}
