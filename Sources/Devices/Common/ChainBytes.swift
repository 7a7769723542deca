import Virtio

extension DescriptorChain {
    /// The guest ranges holding `count` readable bytes after the first `skip`, in order; nil
    /// when the chain has fewer.
    public func readableRanges(skipping skip: UInt64, count: Int) -> [(address: UInt64, count: Int)]? {
        var out: [(address: UInt64, count: Int)] = []
        var left = count
        var toSkip = skip
        for b in readable where left > 0 {
            let len = UInt64(b.length)
            if toSkip >= len { toSkip -= len; continue }
            let n = min(Int(len - toSkip), left)
            out.append((b.address + toSkip, n))
            toSkip = 0
            left -= n
        }
        return left == 0 ? out : nil
    }

    func readableBytes(from ram: GuestRAM, skipping skip: UInt64, count: Int) throws(VirtqueueError) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(count)
        var toSkip = skip
        for b in readable where out.count < count {
            let len = UInt64(b.length)
            if toSkip >= len { toSkip -= len; continue }
            let n = min(Int(len - toSkip), count - out.count)
            let addr = b.address + toSkip   // inside a buffer already checked to be guest RAM
            toSkip = 0
            guard let bytes = ram.copyOut(at: addr, count: n) else { throw .memory(address: addr, length: UInt64(n)) }
            out += bytes
        }
        guard out.count == count else { throw .memory(address: 0, length: UInt64(count)) }
        return out
    }
}

// Little-endian helpers for the request and configuration layouts.
