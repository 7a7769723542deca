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
