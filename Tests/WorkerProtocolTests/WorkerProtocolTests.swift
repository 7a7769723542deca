import Testing
@testable import WorkerProtocol

let sample = VMConfiguration(
    memoryMiB: 64, vcpus: 2, commandLine: "count=3 é", timeoutMilliseconds: 5000,
    image: .kernel(descriptor: 0, initrd: 1), kvm: 5, console: 2,
    devices: [.disk(descriptor: 3, readOnly: true), .net(descriptor: 4, mac: [2, 0, 0, 0, 0, 9]), .rng],
    limits: [.init(operationsPerSecond: 10), .init(), .init(bytesPerSecond: 99)],
    hiddenCPUFeatures: ["xsave"], faultHandlers: false, doorbellsInKernel: true)

func decode(_ m: WorkerMessage, from s: WorkerProtocol.Sender) throws(WorkerProtocolError) -> WorkerMessage {
    try WorkerProtocol.decode(WorkerProtocol.encode(m), from: s, descriptors: m.descriptorCount)
}

func error(_ bytes: [UInt8], from s: WorkerProtocol.Sender = .launcher, descriptors: Int = 0) -> WorkerProtocolError? {
    do { _ = try WorkerProtocol.decode(bytes, from: s, descriptors: descriptors); return nil } catch { return error }
}

struct WorkerProtocolTests {
    @Test func everyMessageRoundTrips() throws {
        let launcher: [WorkerMessage] = [.configure(sample), .stop,
                                         .configure(VMConfiguration(memoryMiB: 1, vcpus: 1, image: .program(descriptor: 1), kvm: 2, console: 0))]
        var jailed = sample
        jailed.jail = .init(uid: 1_900_000_001, gid: 1_900_000_001, root: "/run/bulkhead/jail/1", processLimit: 18, seccomp: .log, probe: .probes)
        var vsock = sample
        vsock.devices.append(.vsock(broker: 6, cid: 3)); vsock.limits.append(.init())
        for m in launcher + [.configure(jailed), .configure(vsock), .connectReply(port: 5000, errno: 0), .connectReply(port: 1, errno: 111)] { #expect(try decode(m, from: .launcher) == m) }
        let worker: [WorkerMessage] = [.started, .refused("no KVM", kind: .unavailable), .refused("odd", kind: .internal),
                                       .ended(.exited(status: 3), counters: [Counter(name: "hypercalls.exit", value: 1)]),
                                       .ended(.faulted("vCPU 0: #UD at 0x401000"), counters: []),
                                       .ended(.timedOut(milliseconds: 1500), counters: []),
                                       .ended(.vcpuFailure("KVM internal error"), counters: []), .ended(.reset, counters: []),
                                       .ended(.poweredOff, counters: []), .ended(.panicked, counters: []),
                                       .violation(syscall: 41), .connectRequest(port: 5000)]
        for m in worker { #expect(try decode(m, from: .worker) == m) }
        #expect(sample.descriptorIndexes == [0, 1, 5, 2, 3, 4])
    }

    /// The console input descriptor (issue 10): optional, counted among the indexes, never one
    /// that another field uses, never out of range, and no stray index without the flag.
    @Test func consoleInputIsChecked() throws {
        var c = sample
        c.consoleInput = 6
        #expect(try decode(.configure(c), from: .launcher) == .configure(c))
        #expect(c.descriptorIndexes == [0, 1, 5, 2, 6, 3, 4])
        c.consoleInput = 2   // the console's own descriptor
        #expect(error(WorkerProtocol.encode(.configure(c)), descriptors: 7) == .invalid("descriptor index", "2 used twice"))
        c.consoleInput = 7
        #expect(error(WorkerProtocol.encode(.configure(c)), descriptors: 7) == .invalid("descriptor index", "7 of 7 attached"))
        // The flag byte is 0 but an index follows: refused, not read as "no input".
        var bytes = WorkerProtocol.encode(.configure(sample))
        let flag = try #require(consoleInputFlagOffset(in: bytes))
        bytes[flag + 1] = 4
        #expect(error(bytes, descriptors: 6) == .invalid("console input descriptor", "set without console input"))
        bytes[flag] = 2
        #expect(error(bytes, descriptors: 6) == .invalid("console input present", "boolean 2"))
    }

    /// Where `sample`'s console-input flag sits: after the header and the fields before it.
    func consoleInputFlagOffset(in bytes: [UInt8]) -> Int? {
        // memory u32, vcpus u16, command line (u32 length + bytes), timeout u64, image kind u8 +
        // kernel u8 + initrd flag u8 + initrd u8, kvm u8, console u8.
        let lineLength = Array(sample.commandLine.utf8).count
        let offset = WorkerProtocol.headerSize + 4 + 2 + 4 + lineLength + 8 + 4 + 1 + 1
        return offset + 1 < bytes.count ? offset : nil
    }

    @Test func headerIsChecked() {
        let good = WorkerProtocol.encode(.stop)
        #expect(good.count == WorkerProtocol.headerSize)
        #expect(error(Array(good.prefix(11))) == .truncated("header"))
        var bad = good; bad[0] = UInt8(ascii: "X")
        #expect(error(bad) == .badMagic)
        bad = good; bad[4] = UInt8(WorkerProtocol.version) &+ 1
        #expect(error(bad) == .unsupportedVersion(WorkerProtocol.version + 1))
        bad = good; bad[4] = UInt8(WorkerProtocol.version) &- 1
        #expect(error(bad) == .unsupportedVersion(WorkerProtocol.version - 1))
        bad = good; bad[6] = 99
        #expect(error(bad) == .unknownType(99))
        #expect(error(good, from: .worker) == .wrongDirection("stop"))
        #expect(error(WorkerProtocol.encode(.started), from: .launcher) == .wrongDirection("started"))
        #expect(error(good + [0]) == .lengthMismatch(declared: 0, actual: 1))
        bad = good; bad[8] = 1
        #expect(error(bad) == .lengthMismatch(declared: 1, actual: 0))
        bad = good; bad[10] = 2   // 128 KiB declared
        #expect(error(bad) == .tooLong("payload", 0x2_0000))
        #expect(error(good, descriptors: 1) == .invalid("descriptors", "1 attached, the message uses 0"))
        #expect(error(good, descriptors: 65) == .invalid("descriptors", "65 attached (at most 64)"))
    }

    /// Payload bytes after a complete message, with the length field updated to cover them.
    @Test func trailingBytesAreRefused() {
        var b = WorkerProtocol.encode(.started) + [7]
        b[8] = 1
        #expect(error(b, from: .worker) == .trailingBytes(1))
    }

    /// Every prefix of a valid configuration is refused (with the length field made to match), and
    /// never crashes.
    @Test func everyTruncationIsRefused() {
        let full = WorkerProtocol.encode(.configure(sample))
        for n in WorkerProtocol.headerSize..<full.count {
            var b = Array(full.prefix(n))
            let len = n - WorkerProtocol.headerSize
            b[8] = UInt8(len & 0xff); b[9] = UInt8(len >> 8); b[10] = 0; b[11] = 0
            #expect(error(b, descriptors: 6) != nil, "prefix \(n) accepted")
        }
    }

    @Test func fieldsAreRangeChecked() {
        func refused(_ c: VMConfiguration, descriptors: Int? = nil) -> WorkerProtocolError? {
            error(WorkerProtocol.encode(.configure(c)), descriptors: descriptors ?? c.descriptorCount)
        }
        var c = sample; c.memoryMiB = 0
        #expect(refused(c) == .invalid("memory", "0 MiB (1...3072)"))
        c = sample; c.memoryMiB = 4096
        #expect(refused(c) != nil)
        c = sample; c.vcpus = 65
        #expect(refused(c) == .invalid("vcpus", "65 (1...64)"))
        c = sample; c.commandLine = String(repeating: "a", count: 4097)
        #expect(refused(c) == .tooLong("command line", 4097))
        c = sample; c.commandLine = "a\u{0}b"
        #expect(refused(c) == .invalid("command line", "contains NUL"))
        c = sample; c.devices[1] = .net(descriptor: 4, mac: [1, 0, 0, 0, 0, 0])
        #expect(refused(c) == .invalid("mac", "multicast"))
        c = sample; c.limits = [.init()]
        #expect(refused(c) == .invalid("limits", "1 for 3 devices"))
        c = sample; c.hiddenCPUFeatures = [""]
        #expect(refused(c) == .invalid("CPU feature", "empty"))
        c = sample; c.devices = Array(repeating: .rng, count: 33); c.limits = []
        #expect(refused(c) == .tooLong("devices", 33))
        // Descriptor indexes: in range, each once.
        c = sample; c.console = 9
        #expect(refused(c) == .invalid("descriptor index", "9 of 6 attached"))
        c = sample; c.console = 0
        #expect(refused(c, descriptors: 6) == .invalid("descriptor index", "0 used twice"))
    }

    @Test func jailSettingsAreRangeChecked() {
        func refused(_ j: VMConfiguration.Jail) -> WorkerProtocolError? {
            var c = sample; c.jail = j
            return error(WorkerProtocol.encode(.configure(c)), descriptors: c.descriptorCount)
        }
        let good = VMConfiguration.Jail(uid: 1_900_000_001, gid: 1_900_000_002, root: "/run/bulkhead/jail/1", processLimit: 18)
        #expect(refused(good) == nil)
        var j = good; j.uid = 0
        #expect(refused(j) == .invalid("jail uid/gid", "0/1900000002"))
        j = good; j.gid = UInt32.max
        #expect(refused(j) != nil)
        for root in ["relative/dir", "/", "/run/../etc", "/run/./x", ""] {
            j = good; j.root = root
            #expect(refused(j) == .invalid("jail root", "'\(root)' is not an absolute path without . or .."))
        }
        j = good; j.processLimit = 0
        #expect(refused(j) == .invalid("process limit", "0 (1...4096)"))
        var b = WorkerProtocol.encode(.configure(VMConfiguration(memoryMiB: 1, vcpus: 1, image: .program(descriptor: 0), kvm: 1, console: 2, jail: good)))
        b[b.count - 2] = 3   // the seccomp mode
        #expect(error(b, descriptors: 3) == .invalid("seccomp mode", "3"))
        b[b.count - 2] = 1; b[b.count - 1] = 7
        #expect(error(b, descriptors: 3) == .invalid("probe", "7"))
    }

    @Test func brokerMessagesAreChecked() {
        // A reply that says "connected" carries exactly one descriptor; a refusal carries none.
        #expect(error(WorkerProtocol.encode(.connectReply(port: 5, errno: 0)), descriptors: 0) == .invalid("descriptors", "0 attached, the message uses 1"))
        #expect(error(WorkerProtocol.encode(.connectReply(port: 5, errno: 111)), descriptors: 1) == .invalid("descriptors", "1 attached, the message uses 0"))
        #expect(error(WorkerProtocol.encode(.connectReply(port: 5, errno: 5000)), descriptors: 0) == .invalid("errno", "5000"))
        #expect(error(WorkerProtocol.encode(.connectRequest(port: 5)), from: .launcher) == .wrongDirection("connectRequest"))
        #expect(error(WorkerProtocol.encode(.connectReply(port: 5, errno: 111)), from: .worker) == .wrongDirection("connectReply"))
        var c = sample
        c.devices.append(.vsock(broker: 6, cid: 2)); c.limits.append(.init())
        #expect(error(WorkerProtocol.encode(.configure(c)), descriptors: 7) == .invalid("vsock cid", "2 (3...4294967294)"))
        c.devices[3] = .vsock(broker: 4, cid: 3)
        #expect(error(WorkerProtocol.encode(.configure(c)), descriptors: 7) == .invalid("descriptor index", "4 used twice"))
    }

    @Test func violationTemplateHasTheNumberWhereTheWorkerPatchesIt() throws {
        var template = WorkerProtocol.encode(.violation(syscall: 0))
        let at = WorkerMessage.violationSyscallOffset
        template.replaceSubrange(at..<at + 4, with: [0x3b, 0x01, 0, 0])
        #expect(try WorkerProtocol.decode(template, from: .worker, descriptors: 0) == .violation(syscall: 315))
    }

    @Test func workerTextIsMadeSafeForATerminal() {
        #expect(WorkerProtocol.printable("fault \u{1b}[2J\u{1b}]0;owned\u{07} at\tx\u{7f}\u{9b}é") == "fault ?[2J?]0;owned? at?x??é")
        #expect(WorkerProtocol.printable("vCPU 0: #UD") == "vCPU 0: #UD")
    }

    @Test func malformedValuesAreRefused() {
        var b = WorkerProtocol.encode(.configure(sample))
        // The first boolean after the features (fault handlers) is the third-to-last byte (then
        // doorbells, then "no jail").
        b[b.count - 3] = 2
        #expect(error(b, descriptors: 6) == .invalid("fault handlers", "boolean 2"))
        // A command line that is not UTF-8: its first byte follows memory (4), vcpus (2), length (4).
        b = WorkerProtocol.encode(.configure(sample))
        b[WorkerProtocol.headerSize + 10] = 0xff
        #expect(error(b, descriptors: 6) == .invalid("command line", "not UTF-8"))
        // An unknown outcome kind.
        var e = WorkerProtocol.encode(.ended(.reset, counters: []))
        e[WorkerProtocol.headerSize] = 9
        #expect(error(e, from: .worker) == .invalid("outcome", "kind 9"))
    }
}

import Foundation

/// The fuzz seeds come from an encoder written separately in Fuzz/make-seeds.py: the Swift decoder
/// must accept each valid one and re-encode it to the same bytes, so the two agree on the layout.
struct SeedAgreementTests {
    @Test func pythonEncodedSeedsDecode() throws {
        var dir = #filePath
        for _ in 0..<3 { dir = String(dir[..<dir.lastIndex(of: "/")!]) }
        dir += "/Fuzz/corpus/FuzzWorkerProtocol"
        let names = try FileManager.default.contentsOfDirectory(atPath: dir).sorted()
        #expect(names.count >= 8)
        for name in names {
            let input = [UInt8](try Data(contentsOf: URL(fileURLWithPath: dir + "/" + name)))
            let sender: WorkerProtocol.Sender = input[0] & 1 == 0 ? .launcher : .worker
            let datagram = Array(input.dropFirst())
            let result = Result { () throws(WorkerProtocolError) in try WorkerProtocol.decode(datagram, from: sender, descriptors: Int(input[0] >> 1)) }
            if name == "wrong-direction" {
                #expect(throws: WorkerProtocolError.wrongDirection("stop")) { try result.get() }
            } else {
                let m = try result.get()
                #expect(WorkerProtocol.encode(m) == datagram, "\(name)")
            }
        }
    }
}
