// Seccomp allowlists as data: a small line-based text format, parsed strictly.
//
// Use: parse a policy (`SeccompPolicy(parsing:)`), compile it with a default action
// (`compile(defaultAction:)`: `.trap` in production; `.log` to find what a policy lacks — the
// calls run and the kernel logs each one, `dmesg | grep type=1326` or the audit log), and hand
// `program.map(\.fields)` to KVM's `installSeccompFilter` on the thread the policy is for.
// `BPFInterpreter` runs a program on a `SeccompData` the way the kernel would (tests, fuzzing).
// This module is pure: no I/O, no pointers, no Foundation.
//
// The format (the policy files under Sources/CPolicies/policies repeat this at their top):
//
//     # a full-line comment (blank lines are ignored too)
//     read                          # why it is needed: a comment is REQUIRED on every rule
//     ioctl KVM_RUN                 # ioctl is allowed per request: a name of IoctlTable ...
//     ioctl 0x5421                  # ... or a number (judged on the low 32 bits, as the kernel does)
//     mmap if arg2 & 0x4 == 0       # allowed when (argN & mask) == value; N is 0-5, 64-bit values
//     futex if arg1 & 0x7f == 0     # several lines for one syscall are ORed
//     clone if arg0 & 0x10000 == 0x10000 and arg0 & 0x20000 == 0   # `and`: all must hold
//     fcntl if arg1 == 4            # `argN == value` compares the whole argument
//     clone3 errno ENOSYS           # fails with this errno (a name or 1-4095) instead of the default
//
// Names are the kernel's x86_64 system call names (SyscallTable: `pread64`, `newfstatat`).
// Numbers are decimal or 0x-hexadecimal. A condition's mask whose upper 32 bits are zero does not
// look at the argument's upper half, which is what a 32-bit (`int`) argument needs: the kernel
// ignores that half and a caller may leave anything in it.
//
// Refused, with the line number and the reason: unknown system calls or ioctl names, a rule
// without a comment, the same rule twice, a condition that is malformed or can never hold
// (value bits outside the mask, argument index above 5, a zero mask), a condition on `ioctl`
// (filter it by request), a syscall both allowed outright and conditionally (or an `ioctl`
// both bare and by request), an errno rule mixed with other rules for the same syscall.

/// A parsed seccomp allowlist: which system calls a thread may make, and under which conditions.
public struct SeccompPolicy: Equatable, Sendable {
    /// `(args[argument] & mask) == value`, on the full 64-bit argument.
    public struct Condition: Equatable, Hashable, Sendable, CustomStringConvertible {
        public var argument: Int
        public var mask: UInt64
        public var value: UInt64

        public init(argument: Int, mask: UInt64, value: UInt64) {
            self.argument = argument; self.mask = mask; self.value = value
        }

        public var description: String {
            mask == .max ? "arg\(argument) == 0x\(String(value, radix: 16))"
                : "arg\(argument) & 0x\(String(mask, radix: 16)) == 0x\(String(value, radix: 16))"
        }
    }

    /// What a rule does.
    public enum Kind: Equatable, Hashable, Sendable {
        /// The system call is allowed whatever its arguments.
        case allow
        /// `ioctl` with this request (the low 32 bits of its second argument) is allowed.
        case allowIoctl(request: UInt32)
        /// The system call is allowed when every condition holds.
        case allowIf([Condition])
        /// The system call is not run and fails with this errno (for example ENOSYS for
        /// `clone3`, so that glibc falls back to `clone`, whose flags a filter can see).
        case fail(errno: UInt16)
    }

    /// One line of the policy.
    public struct Rule: Equatable, Sendable {
        /// 1-based line number in the policy text.
        public var line: Int
        public var syscall: String
        public var number: UInt32
        public var kind: Kind
        /// The required comment: why the rule is there.
        public var comment: String
    }

    public private(set) var rules: [Rule]

    /// The system calls with at least one rule, by number.
    public var syscalls: Set<UInt32> { Set(rules.map(\.number)) }

    /// Parses policy text (see the format above). Throws at the first bad line.
    public init(parsing text: String) throws(PolicyError) {
        var rules: [Rule] = []
        for (index, rawLine) in text.split(omittingEmptySubsequences: false, whereSeparator: \.isNewline).enumerated() {
            let lineNumber = index + 1
            let line = rawLine.trimmingWhitespace
            if line.isEmpty || line.hasPrefix("#") { continue }
            let rule: Substring
            let comment: Substring
            if let hash = line.firstIndex(of: "#") {
                rule = line[..<hash].trimmingWhitespace
                comment = line[line.index(after: hash)...].trimmingWhitespace
            } else {
                rule = line
                comment = ""
            }
            guard !comment.isEmpty else {
                throw PolicyError(line: lineNumber, reason: "rule '\(rule)' has no comment: say after '#' who needs it and why")
            }
            let parsed = try Self.parseRule(rule, line: lineNumber)
            let new = Rule(line: lineNumber, syscall: parsed.name, number: parsed.number, kind: parsed.kind, comment: String(comment))
            try Self.check(new, against: rules)
            rules.append(new)
        }
        self.rules = rules
    }

    /// Refuses a rule that repeats or contradicts an earlier one for the same system call.
    private static func check(_ new: Rule, against rules: [Rule]) throws(PolicyError) {
        for old in rules where old.number == new.number {
            func fail(_ why: String) -> PolicyError { PolicyError(line: new.line, reason: why) }
            if old.kind == new.kind || sameConditions(old.kind, new.kind) {
                throw fail("duplicate rule for \(new.syscall) (first at line \(old.line))")
            }
            switch (old.kind, new.kind) {
            case (.fail, _), (_, .fail):
                throw fail("\(new.syscall) has an errno rule and another rule (line \(old.line)): it either fails or is allowed")
            case (.allow, .allowIoctl), (.allowIoctl, .allow):
                throw fail("a bare 'ioctl' allows every request, so the per-request rules (line \(old.line)) would mean nothing")
            case (.allow, _), (_, .allow):
                throw fail("\(new.syscall) is allowed without conditions and with conditions (line \(old.line)): keep one")
            default:
                break
            }
        }
    }

    /// Conditions compare equal as sets (the same conditions in another order are a duplicate).
    private static func sameConditions(_ a: Kind, _ b: Kind) -> Bool {
        guard case .allowIf(let x) = a, case .allowIf(let y) = b else { return false }
        return Set(x) == Set(y)
    }

    private static func parseRule(_ text: Substring, line: Int) throws(PolicyError) -> (name: String, number: UInt32, kind: Kind) {
        func fail(_ why: String) -> PolicyError { PolicyError(line: line, reason: why) }
        let words = text.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        guard let name = words.first else { throw fail("a comment with no rule before it: start the line with '#'") }
        guard let number = SyscallTable.number(of: name) else {
            throw fail("unknown system call '\(name)' (x86_64 names, as in unistd_64.h: pread64, newfstatat, ...)")
        }
        let rest = words.dropFirst()
        guard let keyword = rest.first else { return (name, number, .allow) }
        switch keyword {
        case "if":
            guard name != "ioctl" else { throw fail("filter ioctl by request ('ioctl KVM_RUN' or 'ioctl 0xae80'), not by conditions") }
            return (name, number, .allowIf(try parseConditions(Array(rest.dropFirst()), line: line)))
        case "errno":
            guard rest.count == 2, let code = errnoValue(rest[rest.startIndex + 1]) else {
                throw fail("expected 'errno NAME' or 'errno N' with N in 1-4095 (names: \(errnoNames.keys.sorted().joined(separator: ", ")))")
            }
            return (name, number, .fail(errno: code))
        default:
            guard name == "ioctl" else {
                throw fail("unexpected '\(keyword)' after \(name): expected 'if argN & MASK == VALUE', 'errno NAME', or nothing")
            }
            guard rest.count == 1 else { throw fail("one request per ioctl rule ('ioctl KVM_RUN')") }
            if let request = IoctlTable.request(named: keyword) { return (name, number, .allowIoctl(request: request)) }
            if keyword.first?.isNumber == true {
                guard let value = parseNumber(keyword), value <= UInt64(UInt32.max) else {
                    throw fail("bad ioctl request number '\(keyword)' (the kernel's request is 32 bits)")
                }
                return (name, number, .allowIoctl(request: UInt32(value)))
            }
            throw fail("unknown ioctl request '\(keyword)' (add it to IoctlTable, or give its number)")
        }
    }

    /// `argN & MASK == VALUE` or `argN == VALUE`, joined by `and`.
    private static func parseConditions(_ words: [String], line: Int) throws(PolicyError) -> [Condition] {
        func fail(_ why: String) -> PolicyError {
            PolicyError(line: line, reason: why + " (expected 'if argN & MASK == VALUE' or 'if argN == VALUE', joined by 'and', N in 0-5)")
        }
        var conditions: [Condition] = []
        var i = 0
        while true {
            guard i < words.count else { throw fail("missing condition") }
            let arg = words[i]
            guard arg.hasPrefix("arg"), arg.count == 4, let n = Int(arg.dropFirst(3)), (0...5).contains(n) else {
                throw fail("'\(arg)' is not an argument")
            }
            var mask = UInt64.max
            var j = i + 1
            if j < words.count, words[j] == "&" {
                guard j + 1 < words.count, let m = parseNumber(words[j + 1]) else { throw fail("bad mask") }
                mask = m
                j += 2
            }
            guard j + 1 < words.count, words[j] == "==", let value = parseNumber(words[j + 1]) else {
                throw fail("bad comparison")
            }
            guard mask != 0 else { throw fail("a zero mask makes the condition always true") }
            guard value & ~mask == 0 else {
                throw fail("value 0x\(String(value, radix: 16)) has bits outside mask 0x\(String(mask, radix: 16)): it can never match")
            }
            let condition = Condition(argument: n, mask: mask, value: value)
            guard !conditions.contains(condition) else { throw fail("the same condition twice") }
            conditions.append(condition)
            i = j + 2
            if i == words.count { return conditions }
            guard words[i] == "and" else { throw fail("unexpected '\(words[i])'") }
            i += 1
        }
    }

    /// Decimal or 0x-hexadecimal, up to 64 bits.
    static func parseNumber(_ text: String) -> UInt64? {
        if text.hasPrefix("0x") || text.hasPrefix("0X") {
            let digits = text.dropFirst(2)
            guard !digits.isEmpty else { return nil }
            return UInt64(digits, radix: 16)
        }
        guard text.first?.isNumber == true else { return nil }
        return UInt64(text, radix: 10)
    }

    static let errnoNames: [String: UInt16] = [
        "EPERM": 1, "ENOENT": 2, "EACCES": 13, "EINVAL": 22, "ENOSYS": 38, "EOPNOTSUPP": 95,
    ]

    private static func errnoValue(_ text: String) -> UInt16? {
        if let named = errnoNames[text] { return named }
        guard let n = parseNumber(text), (1...4095).contains(n) else { return nil }
        return UInt16(n)
    }
}

/// A policy line the parser refuses: where, and why.
public struct PolicyError: Error, Equatable, Sendable, CustomStringConvertible {
    public var line: Int
    public var reason: String
    public var description: String { "policy line \(line): \(reason)" }
}

extension Substring {
    /// The text without leading and trailing spaces, tabs and carriage returns.
    var trimmingWhitespace: Substring {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\r" }
        guard let start = firstIndex(where: { !isSpace($0) }), let end = lastIndex(where: { !isSpace($0) }) else {
            return self[endIndex...]
        }
        return self[start...end]
    }
}
