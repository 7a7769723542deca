import FuzzSupport
import Virtio

// FuzzVirtqueue: a hostile driver's split queue. The input is the guest RAM the device sees
// (descriptor table, available ring, used ring, buffers), plus the queue's configuration.
// The device pops every published chain and checks what virtio 1.2 §2.7 promises it:
//   - a chain is either refused with an error or has its readable buffers before its writable
//     ones, every buffer in guest RAM, at most `size` (or indirect-table) descriptors, and a
//     total length below 2^32;
//   - gathering and scattering a parsed chain never touches memory outside guest RAM;
//   - the device consumes at most `size` chains per avail-index value and stops on a broken ring.
//
// Input: u8 config (bits 0-2: log2 queue size; bit 3: indirect; bit 4: event index),
//        then up to 16 KiB of guest RAM. Layout: descriptors at 0x0, available ring at 0x1000,
//        used ring at 0x2000, anything else is buffer space.

let ramSize = 0x4000

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzVirtqueue(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var input = FuzzInput(data, size)
    let config = input.u8()
    let ram = ArrayRAM(base: 0x10_0000, size: ramSize)
    let image = input.take(ramSize)
    _ = ram.copyIn(image, at: ram.base)
    var queue = SplitQueue(size: UInt16(1) << UInt16(config & 7), descriptorTable: ram.base,
                           availRing: ram.base + 0x1000, usedRing: ram.base + 0x2000,
                           indirectAllowed: config & 8 != 0, eventIndex: config & 16 != 0)
    do { try queue.validate(in: ram) } catch { check(false, "valid layout refused: \(error)") }

    var popped = 0
    while popped <= Int(queue.size) {
        let next: AvailableChain?
        do { next = try queue.pop(from: ram) } catch {
            trace("ring error: \(error)")
            break
        }
        guard let a = next else { break }
        popped += 1
        switch a.result {
        case .failure(let e):
            trace("chain \(a.head): \(e)")
        case .success(let c):
            check(a.head < queue.size, "head \(a.head) beyond size \(queue.size) accepted")
            let count = c.readable.count + c.writable.count
            let limit = Int(queue.size) + (queue.indirectAllowed ? Int(Virtio.maxQueueSize) : 0)
            check(count <= limit, "\(count) descriptors in one chain")
            check(c.readableLength + c.writableLength <= UInt64(UInt32.max), "chain longer than 2^32")
            for b in c.readable + c.writable {
                check(ram.isRAM(b.address, length: UInt64(b.length)), "buffer \(hex(b.address))+\(b.length) outside RAM")
            }
            do {
                let bytes = try c.gather(from: ram, limit: 4096)
                check(bytes.count == min(4096, Int(c.readableLength)), "gathered \(bytes.count) of \(c.readableLength)")
                let written = try c.scatter([UInt8](repeating: 0x5a, count: 64), to: ram)
                check(written == min(64, Int(c.writableLength)), "scattered \(written)")
                try queue.push(head: a.head, written: UInt32(written), to: ram)
            } catch {
                check(false, "a parsed chain failed to copy: \(error)")
            }
        }
    }
    check(popped <= Int(queue.size), "popped \(popped) chains from a queue of \(queue.size)")
    _ = queue.shouldNotify(ram)
    check(ram.bytes.count == ramSize, "RAM changed size")
    return 0
}
