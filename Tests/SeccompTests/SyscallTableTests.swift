import Seccomp
import Testing

/// The generated system call table (scripts/gen-syscalls.py).
struct SyscallTableTests {
    @Test func wellKnownNumbers() {
        // A few numbers every x86_64 kernel has had for ever.
        for (name, number) in [("read", 0), ("write", 1), ("mmap", 9), ("ioctl", 16), ("exit", 60), ("exit_group", 231),
                               ("seccomp", 317), ("clone3", 435), ("pread64", 17), ("newfstatat", 262)] as [(String, UInt32)] {
            #expect(SyscallTable.number(of: name) == number, "\(name)")
            #expect(SyscallTable.name(of: number) == name, "\(number)")
        }
    }

    @Test func unknownNamesAndNumbersGiveNil() {
        #expect(SyscallTable.number(of: "no_such_call") == nil)
        #expect(SyscallTable.number(of: "") == nil)
        #expect(SyscallTable.number(of: "READ") == nil)
        #expect(SyscallTable.name(of: 100_000) == nil)
        #expect(SyscallTable.name(of: 0x4000_0000) == nil)   // x32 numbers are not in the table
    }

    @Test func bothWaysAgreeForEveryEntry() {
        #expect(SyscallTable.all.count > 300)
        var previous: UInt32?
        for (name, number) in SyscallTable.all {
            #expect(SyscallTable.number(of: name) == number)
            #expect(SyscallTable.name(of: number) == name)
            if let previous { #expect(number > previous, "sorted by number") }
            previous = number
        }
    }
}
