import Seccomp
import Testing

/// The policy text format: what it accepts, and that every refusal names its line and reason.
struct PolicyParserTests {
    func parse(_ text: String) throws -> SeccompPolicy { try SeccompPolicy(parsing: text) }

    /// The line and reason of the error `text` gets (nil if it parses).
    func refusal(_ text: String) -> PolicyError? {
        do { _ = try SeccompPolicy(parsing: text); return nil } catch { return error }
    }

    @Test func acceptsEveryRuleForm() throws {
        let p = try parse("""
            # a comment line

              # an indented comment line
            read            # plain allow
            ioctl KVM_RUN   # by name
            ioctl 0x5421    # by number
            ioctl 21531     # decimal
            mmap if arg2 & 0x4 == 0                       # mask
            mmap if arg2 & 0x4 == 0x4 and arg3 == 0x22    # and, whole-argument
            futex if arg1 & 0xfffffe7f == 0   # int argument
            clone3 errno ENOSYS  # named errno
            openat errno 13      # numeric errno
            """)
        #expect(p.rules.map(\.syscall) == ["read", "ioctl", "ioctl", "ioctl", "mmap", "mmap", "futex", "clone3", "openat"])
        #expect(p.rules.map(\.line) == [4, 5, 6, 7, 8, 9, 10, 11, 12])
        #expect(p.rules[0].kind == .allow && p.rules[0].comment == "plain allow" && p.rules[0].number == 0)
        #expect(p.rules[1].kind == .allowIoctl(request: 0xae80))
        #expect(p.rules[2].kind == .allowIoctl(request: 0x5421))
        #expect(p.rules[3].kind == .allowIoctl(request: 21531))
        #expect(p.rules[4].kind == .allowIf([.init(argument: 2, mask: 4, value: 0)]))
        #expect(p.rules[5].kind == .allowIf([.init(argument: 2, mask: 4, value: 4), .init(argument: 3, mask: .max, value: 0x22)]))
        #expect(p.rules[7].kind == .fail(errno: 38))
        #expect(p.rules[8].kind == .fail(errno: 13))
        #expect(p.syscalls == [0, 16, 9, 202, 435, 257])
    }

    @Test func emptyTextAndCarriageReturnsAreFine() throws {
        #expect(try parse("").rules.isEmpty)
        #expect(try parse("\n\n# only comments\n").rules.isEmpty)
        let crlf = try parse("read # a\r\nwrite # b\r\n")
        #expect(crlf.rules.map(\.syscall) == ["read", "write"])
        #expect(crlf.rules.map(\.comment) == ["a", "b"])
        #expect(try parse("\tread\t#\ttabs").rules.first?.comment == "tabs")
    }

    @Test func refusesUnknownSystemCalls() {
        let e = refusal("read # ok\nreadd # typo")
        #expect(e?.line == 2)
        #expect(e?.reason.contains("unknown system call 'readd'") == true)
        #expect(refusal("pread # glibc's name, not the kernel's")?.reason.contains("unknown system call") == true)
    }

    @Test func refusesRulesWithoutComments() {
        #expect(refusal("read")?.line == 1)
        #expect(refusal("read # x\nwrite")?.reason.contains("has no comment") == true)
        #expect(refusal("read #   ")?.reason.contains("has no comment") == true)
        #expect(refusal("ioctl KVM_RUN #")?.line == 1)
    }

    @Test func refusesDuplicates() {
        let plain = refusal("read # a\nwrite # b\nread # again")
        #expect(plain?.line == 3)
        #expect(plain?.reason.contains("duplicate rule for read (first at line 1)") == true)
        #expect(refusal("ioctl KVM_RUN # a\nioctl 0xae80 # the same request")?.reason.contains("duplicate") == true)
        #expect(refusal("mmap if arg2 & 4 == 0 # a\nmmap if arg2 & 0x4 == 0x0 # b")?.reason.contains("duplicate") == true)
        // The same conditions in another order are the same rule.
        #expect(refusal("mmap if arg2 & 4 == 0 and arg3 == 1 # a\nmmap if arg3 == 1 and arg2 & 4 == 0 # b")?.line == 2)
        #expect(refusal("clone3 errno ENOSYS # a\nclone3 errno 38 # b")?.reason.contains("duplicate") == true)
    }

    @Test func refusesContradictoryRules() {
        let bare = refusal("ioctl # everything\nioctl KVM_RUN # one")
        #expect(bare?.line == 2)
        #expect(bare?.reason.contains("bare 'ioctl'") == true)
        #expect(refusal("ioctl KVM_RUN # one\nioctl # everything")?.reason.contains("bare 'ioctl'") == true)
        #expect(refusal("mmap # all\nmmap if arg2 & 4 == 0 # some")?.reason.contains("without conditions and with conditions") == true)
        #expect(refusal("clone3 errno ENOSYS # a\nclone3 # b")?.reason.contains("errno rule") == true)
        #expect(refusal("clone if arg0 == 1 # a\nclone errno EPERM # b")?.reason.contains("errno rule") == true)
        #expect(refusal("ioctl if arg1 == 0xae80 # a")?.reason.contains("filter ioctl by request") == true)
    }

    @Test func refusesUnknownIoctlRequests() {
        let e = refusal("ioctl KVM_RUN # ok\nioctl KVM_DESTROY_EVERYTHING # no")
        #expect(e?.line == 2)
        #expect(e?.reason.contains("unknown ioctl request 'KVM_DESTROY_EVERYTHING'") == true)
        #expect(refusal("ioctl 0x1ffffffff # more than 32 bits")?.reason.contains("bad ioctl request number") == true)
        #expect(refusal("ioctl 0xzz # not hex")?.reason.contains("bad ioctl request number") == true)
        #expect(refusal("ioctl KVM_RUN KVM_GET_REGS # two")?.reason.contains("one request per ioctl rule") == true)
    }

    @Test func refusesMalformedConditions() {
        let cases: [(String, String)] = [
            ("mmap if # nothing", "missing condition"),
            ("mmap if arg6 == 0 # no such argument", "'arg6' is not an argument"),
            ("mmap if argx == 0 # no number", "'argx' is not an argument"),
            ("mmap if arg2 & == 0 # no mask", "bad mask"),
            ("mmap if arg2 & 4 = 0 # one =", "bad comparison"),
            ("mmap if arg2 & 4 == # no value", "bad comparison"),
            ("mmap if arg2&4==0 # no spaces", "is not an argument"),
            ("mmap if arg2 & 4 == 8 # outside the mask", "can never match"),
            ("mmap if arg2 & 0 == 0 # zero mask", "zero mask"),
            ("mmap if arg2 == 0 and # dangling and", "missing condition"),
            ("mmap if arg2 == 0 or arg3 == 1 # no or", "unexpected 'or'"),
            ("mmap if arg2 == 0 and arg2 == 0 # twice", "the same condition twice"),
            ("mmap if arg2 == 0x10000000000000000 # 65 bits", "bad comparison"),
            ("mmap maybe # unknown keyword", "unexpected 'maybe'"),
            ("clone3 errno # missing", "expected 'errno NAME'"),
            ("clone3 errno 0 # zero", "expected 'errno NAME'"),
            ("clone3 errno 4096 # too big", "expected 'errno NAME'"),
            ("clone3 errno EWHATEVER # unknown", "expected 'errno NAME'"),
        ]
        for (text, reason) in cases {
            let e = refusal("read # first line\n" + text)
            #expect(e?.line == 2, "\(text)")
            #expect(e?.reason.contains(reason) == true, "\(text): \(e?.description ?? "accepted")")
        }
    }

    @Test func errorsSayWhereAndWhy() {
        let e = refusal("read # ok\n\n# comment\nbogus # x")
        #expect(e?.description.hasPrefix("policy line 4: unknown system call 'bogus'") == true)
    }
}
