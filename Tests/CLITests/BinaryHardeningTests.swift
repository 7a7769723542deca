import Foundation
import Testing

/// The hardening issue 4 asks of the executables, read from their ELF headers: position-
/// independent, full RELRO, a non-executable stack, stack protectors.
struct BinaryHardeningTests {
    struct ELF {
        let b: [UInt8]
        func u16(_ o: Int) -> Int { Int(b[o]) | Int(b[o + 1]) << 8 }
        func u32(_ o: Int) -> Int { u16(o) | u16(o + 2) << 16 }
        func u64(_ o: Int) -> UInt64 { UInt64(u32(o)) | UInt64(u32(o + 4)) << 32 }

        /// (type, flags, offset, filesz) of each program header.
        var segments: [(type: Int, flags: Int, offset: Int, size: Int)] {
            let phoff = Int(u64(32)), size = u16(54), count = u16(56)
            return (0..<count).map { i in
                let h = phoff + i * size
                return (u32(h), u32(h + 4), Int(u64(h + 8)), Int(u64(h + 32)))
            }
        }

        /// The dynamic section's (tag, value) pairs.
        var dynamic: [(tag: UInt64, value: UInt64)] {
            guard let d = segments.first(where: { $0.type == 2 }) else { return [] }
            return stride(from: d.offset, to: d.offset + d.size, by: 16).map { (u64($0), u64($0 + 8)) }
        }
    }

    static let directory: String = {
        let exe = binary
        return String(exe[..<(exe.lastIndex(of: "/") ?? exe.startIndex)])
    }()

    @Test(arguments: ["bulkhead", "bulkhead-worker"])
    func executableIsHardened(_ name: String) throws {
        let elf = ELF(b: [UInt8](try Data(contentsOf: URL(fileURLWithPath: Self.directory + "/" + name))))
        #expect(Array(elf.b[0..<4]) == [0x7f, 0x45, 0x4c, 0x46] && elf.b[4] == 2)
        let segments = elf.segments
        // PIE: a shared-object type with an interpreter (an executable, not a library).
        #expect(elf.u16(16) == 3, "\(name) is not position-independent")
        #expect(segments.contains { $0.type == 3 }, "\(name) has no PT_INTERP")
        // Full RELRO: a read-only-after-relocation segment, and every symbol bound at start.
        #expect(segments.contains { $0.type == 0x6474_e552 }, "\(name) has no PT_GNU_RELRO")
        let dynamic = elf.dynamic
        let bindNow = dynamic.contains { $0.tag == 30 && $0.value & 0x8 != 0 }          // DT_FLAGS: DF_BIND_NOW
            || dynamic.contains { $0.tag == 0x6fff_fffb && $0.value & 0x1 != 0 }           // DT_FLAGS_1: DF_1_NOW
        #expect(bindNow, "\(name) is not linked with -z now (partial RELRO only)")
        // Non-executable stack.
        let stack = segments.first { $0.type == 0x6474_e551 }
        #expect(stack != nil && stack!.flags & 1 == 0, "\(name) has an executable stack")
        // Stack protectors: the code calls the failure handler.
        #expect(elf.b.contains(subsequence: Array("__stack_chk_fail".utf8)), "\(name) has no stack protector")
    }
}

extension Array where Element == UInt8 {
    func contains(subsequence s: [UInt8]) -> Bool {
        guard let first = s.first, s.count <= count else { return false }
        var i = 0
        while i <= count - s.count {
            if self[i] == first && Array(self[i..<i + s.count]) == s { return true }
            i += 1
        }
        return false
    }
}
