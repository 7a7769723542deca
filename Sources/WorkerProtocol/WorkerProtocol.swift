/// The messages between the launcher (`bulkhead`) and a per-VM worker (`bulkhead-worker`).
///
/// They travel over a SOCK_SEQPACKET socketpair, one message per datagram, the descriptors a
/// message needs attached to it (SCM_RIGHTS). Each side treats the other as hostile: a
/// compromised worker is exactly what the launcher must survive. So every message is
///
///     magic "BHWP" | version u16 | type u16 | payload length u32 | payload
///
/// (little-endian), at most `maxPayload` bytes of payload, and decoded strictly: a wrong magic or
/// version, an unknown type, a type the sender may not send, a length that disagrees with the
/// datagram, a field out of range, a string that is not UTF-8 or holds a NUL, a descriptor index
/// that is out of range or used twice, and any byte left over are each refused with a reason.
/// Pure: no I/O; `FuzzWorkerProtocol` fuzzes the decoder.
public enum WorkerProtocol {
    public static let magic: [UInt8] = Array("BHWP".utf8)
    public static let version: UInt16 = 3
    public static let headerSize = 12
    public static let maxPayload = 64 * 1024
    /// The largest datagram either side accepts.
    public static let maxMessage = headerSize + maxPayload
    /// Descriptors that may accompany one message.
    public static let maxDescriptors = 64

    /// Who sent a message: each side may send only its own kinds.
    public enum Sender: Sendable, Equatable { case launcher, worker }

    public static func encode(_ message: WorkerMessage) -> [UInt8] {
        var p = Encoder()
        message.encodePayload(into: &p)
        var out = magic
        out += le(UInt64(version), 2) + le(UInt64(message.type.rawValue), 2) + le(UInt64(p.bytes.count), 4)
        return out + p.bytes
    }

    /// Text from the other side made safe for a terminal: control characters (escape sequences
    /// a compromised worker could use to rewrite the operator's screen) become "?".
    public static func printable(_ text: String) -> String {
        String(String.UnicodeScalarView(text.unicodeScalars.map { $0.value < 0x20 || ($0.value >= 0x7f && $0.value < 0xa0) ? "?" : $0 }))
    }

    /// Decodes one datagram from `sender`, which arrived with `descriptors` descriptors.
    public static func decode(_ bytes: [UInt8], from sender: Sender, descriptors: Int) throws(WorkerProtocolError) -> WorkerMessage {
        guard bytes.count >= headerSize else { throw .truncated("header") }
        guard Array(bytes[0..<4]) == magic else { throw .badMagic }
        var d = Decoder(bytes, from: 4)
        let v = try d.u16("version")
        guard v == version else { throw .unsupportedVersion(v) }
        let rawType = try d.u16("type")
        guard let type = MessageType(rawValue: rawType) else { throw .unknownType(rawType) }
        guard type.sender == sender else { throw .wrongDirection(type.name) }
        let length = Int(try d.u32("length"))
        guard length <= maxPayload else { throw .tooLong("payload", length) }
        guard bytes.count - headerSize == length else { throw .lengthMismatch(declared: length, actual: bytes.count - headerSize) }
        guard descriptors <= maxDescriptors else { throw .invalid("descriptors", "\(descriptors) attached (at most \(maxDescriptors))") }
        let message = try WorkerMessage.decodePayload(type, &d, descriptors: descriptors)
        guard d.atEnd else { throw .trailingBytes(d.remaining) }
        if message.descriptorCount != descriptors {
            throw .invalid("descriptors", "\(descriptors) attached, the message uses \(message.descriptorCount)")
        }
        return message
    }
}

/// Why a message was refused.
public enum WorkerProtocolError: Error, Equatable, Sendable, CustomStringConvertible {
    case truncated(String)
    case badMagic
    case unsupportedVersion(UInt16)
    case unknownType(UInt16)
    case wrongDirection(String)
    case lengthMismatch(declared: Int, actual: Int)
    case tooLong(String, Int)
    case invalid(String, String)
    case trailingBytes(Int)

    public var description: String {
        switch self {
        case .truncated(let f): return "message truncated in \(f)"
        case .badMagic: return "not a Bulkhead worker message (bad magic)"
        case .unsupportedVersion(let v): return "protocol version \(v) (this side speaks \(WorkerProtocol.version))"
        case .unknownType(let t): return "unknown message type \(t)"
        case .wrongDirection(let n): return "\(n) may not come from this sender"
        case .lengthMismatch(let d, let a): return "payload length \(d) declared, \(a) present"
        case .tooLong(let f, let n): return "\(f) of \(n) is over the limit"
        case .invalid(let f, let why): return "invalid \(f): \(why)"
        case .trailingBytes(let n): return "\(n) bytes after the end of the message"
        }
    }
}

public enum MessageType: UInt16, Sendable, CaseIterable {
    case configure = 1, stop = 2, connectReply = 3
    case started = 16, ended = 17, refused = 18, violation = 19, connectRequest = 20

    var sender: WorkerProtocol.Sender {
        switch self {
        case .configure, .stop, .connectReply: return .launcher
        case .started, .ended, .refused, .violation, .connectRequest: return .worker
        }
    }
    var name: String { "\(self)" }
}

// MARK: - Messages

public enum WorkerMessage: Equatable, Sendable {
    /// Launcher → worker, first and once: the VM to run, with its descriptors attached (indexes
    /// in the configuration name them).
    case configure(VMConfiguration)
    /// Launcher → worker: stop the VM now.
    case stop
    /// Worker → launcher: the configuration was accepted and the VM is running.
    case started
    /// Worker → launcher, last: how the VM ended, and its counters.
    case ended(VMOutcome, counters: [Counter])
    /// Worker → launcher, instead of `started`: the configuration cannot be run, and why.
    case refused(String, kind: RefusalKind)
    /// Worker → launcher, last: a thread made a system call its seccomp allowlist forbids (the
    /// kernel did not run it), and the worker is ending itself. Sent by the worker's SIGSYS
    /// handler from a prebuilt template; `syscallOffset` is where the number goes.
    case violation(syscall: UInt32)
    /// Worker → launcher, on the vsock broker socket: the guest connects to host port `port`;
    /// connect me to "PATH_port" (the worker cannot reach host paths).
    case connectRequest(port: UInt32)
    /// Launcher → worker, the answer: with `errno` 0 the connected socket is attached; else the
    /// connection failed with that errno and nothing is attached.
    case connectReply(port: UInt32, errno: UInt32)

    /// Where `violation`'s syscall number sits in the encoded message.
    public static let violationSyscallOffset = WorkerProtocol.headerSize

    public var type: MessageType {
        switch self {
        case .configure: return .configure
        case .stop: return .stop
        case .started: return .started
        case .ended: return .ended
        case .refused: return .refused
        case .violation: return .violation
        case .connectRequest: return .connectRequest
        case .connectReply: return .connectReply
        }
    }

    /// Descriptors this message must arrive with.
    public var descriptorCount: Int {
        if case .configure(let c) = self { return Int(c.descriptorCount) }
        if case .connectReply(_, let e) = self, e == 0 { return 1 }
        return 0
    }

    func encodePayload(into e: inout Encoder) {
        switch self {
        case .configure(let c): c.encode(into: &e)
        case .stop, .started: break
        case .ended(let o, let counters):
            o.encode(into: &e)
            e.u16(UInt16(truncatingIfNeeded: counters.count))
            for c in counters { e.string(c.name); e.u64(c.value) }
        case .refused(let why, let kind): e.string(why); e.u8(kind.rawValue)
        case .violation(let n): e.u32(n)
        case .connectRequest(let port): e.u32(port)
        case .connectReply(let port, let errno): e.u32(port); e.u32(errno)
        }
    }

    static func decodePayload(_ type: MessageType, _ d: inout Decoder, descriptors: Int) throws(WorkerProtocolError) -> WorkerMessage {
        switch type {
        case .configure: return .configure(try VMConfiguration.decode(&d, descriptors: descriptors))
        case .stop: return .stop
        case .started: return .started
        case .ended:
            let outcome = try VMOutcome.decode(&d)
            let n = Int(try d.u16("counter count"))
            guard n <= Counter.maxCount else { throw .tooLong("counters", n) }
            var counters: [Counter] = []
            for _ in 0..<n {
                let name = try d.string("counter name", max: Counter.maxNameLength)
                guard !name.isEmpty else { throw .invalid("counter name", "empty") }
                counters.append(Counter(name: name, value: try d.u64("counter value")))
            }
            return .ended(outcome, counters: counters)
        case .refused:
            let why = try d.string("reason", max: VMOutcome.maxReasonLength)
            let raw = try d.u8("refusal kind")
            guard let kind = RefusalKind(rawValue: raw) else { throw .invalid("refusal kind", "\(raw)") }
            return .refused(why, kind: kind)
        case .violation: return .violation(syscall: try d.u32("syscall number"))
        case .connectRequest: return .connectRequest(port: try d.u32("port"))
        case .connectReply:
            let port = try d.u32("port")
            let errno = try d.u32("errno")
            guard errno < 4096 else { throw .invalid("errno", "\(errno)") }
            return .connectReply(port: port, errno: errno)
        }
    }
}

/// What kind of problem a refusal is, so that the launcher exits with the same status as a VM run
/// in process would (the values are those exit statuses, from sysexits.h).
public enum RefusalKind: UInt8, Sendable {
    /// The configuration cannot work (e.g. too little memory for the vCPUs): 64, EX_USAGE.
    case configuration = 64
    /// The image or kernel is not one Bulkhead can run: 65, EX_DATAERR.
    case image = 65
    /// KVM is missing or lacks something: 69, EX_UNAVAILABLE.
    case unavailable = 69
    /// Anything else, including a jail step that failed: 70, EX_SOFTWARE.
    case `internal` = 70
}

/// A named count the worker reports at the end (hypercalls, exits, device drops...).
public struct Counter: Equatable, Sendable {
    public static let maxCount = 256
    public static let maxNameLength = 64
    public var name: String
    public var value: UInt64
    public init(name: String, value: UInt64) { self.name = name; self.value = value }
}

/// How a VM ended, as the worker saw it. (A worker killed by a signal says nothing: the launcher
/// learns that from its exit status.)
public enum VMOutcome: Equatable, Sendable {
    case exited(status: UInt8)
    /// A CPU exception or triple fault; the text is the worker's description.
    case faulted(String)
    case timedOut(milliseconds: UInt64)
    case vcpuFailure(String)
    /// A kernel reset the machine (i8042).
    case reset
    /// A kernel powered the machine off (ACPI S5).
    case poweredOff
    /// A kernel reported a panic (pvpanic).
    case panicked

    public static let maxReasonLength = 1024

    func encode(into e: inout Encoder) {
        switch self {
        case .exited(let s): e.u8(1); e.u8(s)
        case .faulted(let r): e.u8(2); e.string(r)
        case .timedOut(let ms): e.u8(3); e.u64(ms)
        case .vcpuFailure(let r): e.u8(4); e.string(r)
        case .reset: e.u8(5)
        case .poweredOff: e.u8(6)
        case .panicked: e.u8(7)
        }
    }

    static func decode(_ d: inout Decoder) throws(WorkerProtocolError) -> VMOutcome {
        switch try d.u8("outcome") {
        case 1: return .exited(status: try d.u8("exit status"))
        case 2: return .faulted(try d.string("fault", max: maxReasonLength))
        case 3: return .timedOut(milliseconds: try d.u64("timeout"))
        case 4: return .vcpuFailure(try d.string("failure", max: maxReasonLength))
        case 5: return .reset
        case 6: return .poweredOff
        case 7: return .panicked
        case let k: throw .invalid("outcome", "kind \(k)")
        }
    }
}

/// What a worker needs to build and run its one VM. Descriptor fields are indexes into the
/// descriptors attached to the `configure` message, each used exactly once.
public struct VMConfiguration: Equatable, Sendable {
    public enum Image: Equatable, Sendable {
        /// A Bulkhead guest program (ELF).
        case program(descriptor: UInt8)
        /// A Linux (or PVH) kernel, optionally with an initrd.
        case kernel(descriptor: UInt8, initrd: UInt8?)
    }

    public enum Device: Equatable, Sendable {
        case disk(descriptor: UInt8, readOnly: Bool)
        /// A connected SOCK_SEQPACKET socket; `mac` is 6 bytes, unicast.
        case net(descriptor: UInt8, mac: [UInt8])
        case rng
        /// virtio-vsock; `broker` is a SOCK_SEQPACKET socket to the launcher, which connects the
        /// guest's connections for the worker (`connectRequest` / `connectReply`).
        case vsock(broker: UInt8, cid: UInt32)
    }

    /// Per-device token buckets (0: no limit).
    public struct Limit: Equatable, Sendable {
        public var operationsPerSecond: UInt64
        public var bytesPerSecond: UInt64
        public init(operationsPerSecond: UInt64 = 0, bytesPerSecond: UInt64 = 0) {
            self.operationsPerSecond = operationsPerSecond; self.bytesPerSecond = bytesPerSecond
        }
    }

    /// The jail a root launcher asks for (nil: no jail beyond the worker's unconditional first
    /// steps, e.g. `bulkhead run --worker` by an unprivileged user).
    public struct Jail: Equatable, Sendable {
        public enum Seccomp: UInt8, Sendable {
            /// A forbidden system call is not run; the worker reports it and ends.
            case enforce = 1
            /// Diagnosis: forbidden system calls run and the kernel logs them (audit type 1326).
            case log = 2
        }
        /// A test mode: after the jail, the worker tries what a compromised worker would and
        /// writes what happened to the console (`probes`), then also makes a forbidden system
        /// call (`probesThenViolation`).
        public enum Probe: UInt8, Sendable { case none = 0, probes = 1, probesThenViolation = 2 }

        public static let maxRootPath = 1024
        /// The host uid and gid the VM's worker runs as (never root).
        public var uid: UInt32
        public var gid: UInt32
        /// An empty directory on the host, absolute path: the worker mounts its own empty,
        /// read-only root there, in its own mount namespace, and pivots into it.
        public var root: String
        /// RLIMIT_NPROC for the worker's uid: its threads.
        public var processLimit: UInt32
        public var seccomp: Seccomp
        public var probe: Probe

        public init(uid: UInt32, gid: UInt32, root: String, processLimit: UInt32, seccomp: Seccomp = .enforce, probe: Probe = .none) {
            self.uid = uid; self.gid = gid; self.root = root; self.processLimit = processLimit
            self.seccomp = seccomp; self.probe = probe
        }

        func encode(into e: inout Encoder) {
            e.u32(uid); e.u32(gid); e.string(root); e.u32(processLimit); e.u8(seccomp.rawValue); e.u8(probe.rawValue)
        }

        static func decode(_ d: inout Decoder) throws(WorkerProtocolError) -> Jail {
            let uid = try d.u32("jail uid"), gid = try d.u32("jail gid")
            guard uid != 0, gid != 0, uid != UInt32.max, gid != UInt32.max else { throw .invalid("jail uid/gid", "\(uid)/\(gid)") }
            let root = try d.string("jail root", max: maxRootPath)
            guard root.hasPrefix("/"), root.count > 1, !root.split(separator: "/").contains(where: { $0 == ".." || $0 == "." }) else {
                throw .invalid("jail root", "'\(root)' is not an absolute path without . or ..")
            }
            let processes = try d.u32("process limit")
            guard processes >= 1, processes <= 4096 else { throw .invalid("process limit", "\(processes) (1...4096)") }
            let raw = try d.u8("seccomp mode")
            guard let seccomp = Seccomp(rawValue: raw) else { throw .invalid("seccomp mode", "\(raw)") }
            let rawProbe = try d.u8("probe")
            guard let probe = Probe(rawValue: rawProbe) else { throw .invalid("probe", "\(rawProbe)") }
            return Jail(uid: uid, gid: gid, root: root, processLimit: processes, seccomp: seccomp, probe: probe)
        }
    }

    public static let maxMemoryMiB: UInt32 = 3072
    public static let maxVCPUs: UInt16 = 64
    public static let maxCommandLine = 4096
    public static let maxDevices = 32
    public static let maxHiddenFeatures = 16
    public static let maxFeatureName = 32

    public var memoryMiB: UInt32
    public var vcpus: UInt16
    public var commandLine: String
    /// 0: no timeout.
    public var timeoutMilliseconds: UInt64
    public var image: Image
    /// The KVM device (`/dev/kvm`, opened by the launcher: the worker opens no paths).
    public var kvm: UInt8
    /// Where the guest's console goes.
    public var console: UInt8
    /// Where COM1's receive side reads from (a pipe the launcher feeds), or nil: no input.
    public var consoleInput: UInt8?
    public var devices: [Device]
    /// Same count as `devices` (or empty: no limits).
    public var limits: [Limit]
    public var hiddenCPUFeatures: [String]
    public var faultHandlers: Bool
    public var doorbellsInKernel: Bool
    public var jail: Jail?

    public init(memoryMiB: UInt32, vcpus: UInt16, commandLine: String = "", timeoutMilliseconds: UInt64 = 0,
                image: Image, kvm: UInt8, console: UInt8, devices: [Device] = [], limits: [Limit] = [],
                hiddenCPUFeatures: [String] = [], faultHandlers: Bool = true, doorbellsInKernel: Bool = true,
                jail: Jail? = nil, consoleInput: UInt8? = nil) {
        self.memoryMiB = memoryMiB; self.vcpus = vcpus; self.commandLine = commandLine
        self.timeoutMilliseconds = timeoutMilliseconds; self.image = image; self.kvm = kvm; self.console = console
        self.devices = devices; self.limits = limits; self.hiddenCPUFeatures = hiddenCPUFeatures
        self.faultHandlers = faultHandlers; self.doorbellsInKernel = doorbellsInKernel; self.jail = jail
        self.consoleInput = consoleInput
    }

    /// Every descriptor index the configuration uses, in field order.
    public var descriptorIndexes: [UInt8] {
        var out: [UInt8] = []
        switch image {
        case .program(let d): out.append(d)
        case .kernel(let d, let i): out.append(d); if let i { out.append(i) }
        }
        out.append(kvm)
        out.append(console)
        if let consoleInput { out.append(consoleInput) }
        for dev in devices {
            switch dev {
            case .disk(let d, _), .net(let d, _), .vsock(let d, _): out.append(d)
            case .rng: break
            }
        }
        return out
    }

    public var descriptorCount: Int { descriptorIndexes.count }

    func encode(into e: inout Encoder) {
        e.u32(memoryMiB); e.u16(vcpus); e.string(commandLine); e.u64(timeoutMilliseconds)
        switch image {
        case .program(let d): e.u8(1); e.u8(d)
        case .kernel(let d, let i): e.u8(2); e.u8(d); e.u8(i == nil ? 0 : 1); e.u8(i ?? 0)
        }
        e.u8(kvm)
        e.u8(console)
        e.bool(consoleInput != nil); e.u8(consoleInput ?? 0)
        e.u16(UInt16(truncatingIfNeeded: devices.count))
        for dev in devices {
            switch dev {
            case .disk(let d, let ro): e.u8(1); e.u8(d); e.bool(ro)
            case .net(let d, let mac): e.u8(2); e.u8(d); e.raw(mac)
            case .rng: e.u8(3)
            case .vsock(let d, let cid): e.u8(4); e.u8(d); e.u32(cid)
            }
        }
        e.u16(UInt16(truncatingIfNeeded: limits.count))
        for l in limits { e.u64(l.operationsPerSecond); e.u64(l.bytesPerSecond) }
        e.u16(UInt16(truncatingIfNeeded: hiddenCPUFeatures.count))
        for f in hiddenCPUFeatures { e.string(f) }
        e.bool(faultHandlers); e.bool(doorbellsInKernel)
        e.bool(jail != nil)
        jail?.encode(into: &e)
    }

    static func decode(_ d: inout Decoder, descriptors: Int) throws(WorkerProtocolError) -> VMConfiguration {
        let memory = try d.u32("memory")
        guard memory >= 1, memory <= maxMemoryMiB else { throw .invalid("memory", "\(memory) MiB (1...\(maxMemoryMiB))") }
        let vcpus = try d.u16("vcpus")
        guard vcpus >= 1, vcpus <= maxVCPUs else { throw .invalid("vcpus", "\(vcpus) (1...\(maxVCPUs))") }
        let commandLine = try d.string("command line", max: maxCommandLine)
        let timeout = try d.u64("timeout")
        guard timeout <= maxTimeoutMilliseconds else { throw .invalid("timeout", "\(timeout) ms (at most \(maxTimeoutMilliseconds))") }
        let image: Image
        switch try d.u8("image kind") {
        case 1: image = .program(descriptor: try d.u8("image descriptor"))
        case 2:
            let k = try d.u8("kernel descriptor")
            let has = try d.bool("initrd present")
            let i = try d.u8("initrd descriptor")
            guard has || i == 0 else { throw .invalid("initrd descriptor", "set without an initrd") }
            image = .kernel(descriptor: k, initrd: has ? i : nil)
        case let k: throw .invalid("image kind", "\(k)")
        }
        let kvm = try d.u8("KVM descriptor")
        let console = try d.u8("console descriptor")
        let hasInput = try d.bool("console input present")
        let input = try d.u8("console input descriptor")
        guard hasInput || input == 0 else { throw .invalid("console input descriptor", "set without console input") }
        let deviceCount = Int(try d.u16("device count"))
        guard deviceCount <= maxDevices else { throw .tooLong("devices", deviceCount) }
        var devices: [Device] = []
        for _ in 0..<deviceCount {
            switch try d.u8("device kind") {
            case 1: devices.append(.disk(descriptor: try d.u8("disk descriptor"), readOnly: try d.bool("read-only")))
            case 2:
                let fd = try d.u8("net descriptor")
                let mac = try d.raw("mac", count: 6)
                guard mac[0] & 1 == 0 else { throw .invalid("mac", "multicast") }
                devices.append(.net(descriptor: fd, mac: mac))
            case 3: devices.append(.rng)
            case 4:
                let fd = try d.u8("vsock broker descriptor")
                let cid = try d.u32("vsock cid")
                guard cid >= 3, cid < UInt32.max else { throw .invalid("vsock cid", "\(cid) (3...4294967294)") }
                devices.append(.vsock(broker: fd, cid: cid))
            case let k: throw .invalid("device kind", "\(k)")
            }
        }
        let limitCount = Int(try d.u16("limit count"))
        guard limitCount == 0 || limitCount == deviceCount else {
            throw .invalid("limits", "\(limitCount) for \(deviceCount) devices")
        }
        var limits: [Limit] = []
        for _ in 0..<limitCount {
            limits.append(Limit(operationsPerSecond: try d.u64("operations limit"), bytesPerSecond: try d.u64("bytes limit")))
        }
        let featureCount = Int(try d.u16("feature count"))
        guard featureCount <= maxHiddenFeatures else { throw .tooLong("hidden CPU features", featureCount) }
        var features: [String] = []
        for _ in 0..<featureCount {
            let f = try d.string("CPU feature", max: maxFeatureName)
            guard !f.isEmpty else { throw .invalid("CPU feature", "empty") }
            features.append(f)
        }
        let c = VMConfiguration(memoryMiB: memory, vcpus: vcpus, commandLine: commandLine, timeoutMilliseconds: timeout,
                                image: image, kvm: kvm, console: console, devices: devices, limits: limits,
                                hiddenCPUFeatures: features, faultHandlers: try d.bool("fault handlers"),
                                doorbellsInKernel: try d.bool("doorbells"),
                                jail: try d.bool("jail present") ? try Jail.decode(&d) : nil,
                                consoleInput: hasInput ? input : nil)
        // Every index names an attached descriptor, and no descriptor serves twice.
        var seen = Set<UInt8>()
        for i in c.descriptorIndexes {
            guard Int(i) < descriptors else { throw .invalid("descriptor index", "\(i) of \(descriptors) attached") }
            guard seen.insert(i).inserted else { throw .invalid("descriptor index", "\(i) used twice") }
        }
        return c
    }
}

// MARK: - Encoding

private func le(_ v: UInt64, _ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } }

struct Encoder {
    var bytes: [UInt8] = []
    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func bool(_ v: Bool) { bytes.append(v ? 1 : 0) }
    mutating func u16(_ v: UInt16) { bytes += le(UInt64(v), 2) }
    mutating func u32(_ v: UInt32) { bytes += le(UInt64(v), 4) }
    mutating func u64(_ v: UInt64) { bytes += le(v, 8) }
    mutating func raw(_ b: [UInt8]) { bytes += b }
    mutating func string(_ s: String) {
        let b = Array(s.utf8)
        u32(UInt32(truncatingIfNeeded: b.count))
        bytes += b
    }
}

struct Decoder {
    let bytes: [UInt8]
    var position: Int
    init(_ bytes: [UInt8], from position: Int) { self.bytes = bytes; self.position = position }

    var remaining: Int { bytes.count - position }
    var atEnd: Bool { position == bytes.count }

    mutating func take(_ n: Int, _ field: String) throws(WorkerProtocolError) -> ArraySlice<UInt8> {
        guard n >= 0, remaining >= n else { throw .truncated(field) }
        defer { position += n }
        return bytes[position..<position + n]
    }
    mutating func int(_ n: Int, _ field: String) throws(WorkerProtocolError) -> UInt64 {
        try take(n, field).reversed().reduce(0) { $0 << 8 | UInt64($1) }
    }
    mutating func u8(_ f: String) throws(WorkerProtocolError) -> UInt8 { UInt8(try int(1, f)) }
    mutating func u16(_ f: String) throws(WorkerProtocolError) -> UInt16 { UInt16(try int(2, f)) }
    mutating func u32(_ f: String) throws(WorkerProtocolError) -> UInt32 { UInt32(try int(4, f)) }
    mutating func u64(_ f: String) throws(WorkerProtocolError) -> UInt64 { try int(8, f) }
    mutating func bool(_ f: String) throws(WorkerProtocolError) -> Bool {
        switch try u8(f) {
        case 0: return false
        case 1: return true
        case let v: throw .invalid(f, "boolean \(v)")
        }
    }
    mutating func raw(_ f: String, count: Int) throws(WorkerProtocolError) -> [UInt8] { Array(try take(count, f)) }
    /// A u32 length, then that many bytes of UTF-8 without NUL.
    mutating func string(_ f: String, max: Int) throws(WorkerProtocolError) -> String {
        let n = Int(try u32(f + " length"))
        guard n <= max else { throw .tooLong(f, n) }
        let b = try take(n, f)
        guard !b.contains(0) else { throw .invalid(f, "contains NUL") }
        guard let s = String(validating: b, as: UTF8.self) else { throw .invalid(f, "not UTF-8") }
        return s
    }
}
