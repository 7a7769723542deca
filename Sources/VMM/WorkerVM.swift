import Boot
import Devices
import GuestInterface
import HostOS
import KVM
import WorkerProtocol

/// Turns a worker's `configure` message and the descriptors that came with it into a VM, and its
/// end into the `ended` message. The worker opens nothing itself: the image, the KVM device, the
/// console and every device's back end are descriptors the launcher opened.
public struct WorkerVM {
    public enum Kind { case program, kernel(initrd: [UInt8]?) }

    public var machine: MachineConfiguration
    public var image: [UInt8]
    public var kind: Kind

    /// Why a configuration cannot be run (sent back as `refused`).
    public struct Refusal: Error, Equatable, CustomStringConvertible {
        public var description: String
        public var kind: RefusalKind
        init(_ d: String, kind: RefusalKind = .internal) { description = d; self.kind = kind }
    }

    /// `descriptors` are the ones attached to the message, in order (the decoder has checked
    /// every index). Descriptors the configuration does not use are closed by the caller.
    public init(_ c: VMConfiguration, descriptors: [FileDescriptor], now: UInt64 = monotonicNanoseconds()) throws(Refusal) {
        func fd(_ i: UInt8) -> FileDescriptor { descriptors[Int(i)] }
        let memory = UInt64(c.memoryMiB) << 20
        func read(_ i: UInt8, _ what: String) throws(Refusal) -> [UInt8] {
            do { return try fd(i).readAll(limit: Int(memory)) } catch { throw Refusal("cannot read the \(what): \(error)", kind: .image) }
        }
        image = []
        switch c.image {
        case .program(let d):
            kind = .program
            image = try read(d, "guest image")
        case .kernel(let d, let initrd):
            image = try read(d, "kernel")
            kind = .kernel(initrd: try initrd.map { i throws(Refusal) in try read(i, "initrd") })
        }
        var hidden = Set<CPUIDPolicy.Feature>()
        for name in c.hiddenCPUFeatures {
            guard let f = CPUIDPolicy.Feature(rawValue: name) else { throw Refusal("unknown CPU feature '\(name)'") }
            hidden.insert(f)
        }
        var models: [VirtioDeviceModel] = []
        for (i, d) in c.devices.enumerated() {
            do {
                switch d {
                case .disk(let desc, let readOnly):
                    models.append(VirtioBlock(backend: try FileBlockBackend(fd: fd(desc)), readOnly: readOnly, id: "bulkhead-disk\(i)"))
                case .net(let desc, let mac):
                    models.append(try VirtioNet(backend: try SeqpacketFrameBackend(fd: fd(desc)), mac: mac))
                case .rng:
                    models.append(VirtioRNG(source: randomBytes))
                case .vsock(let broker, let cid):
                    let client = VsockBrokerClient(socket: fd(broker))
                    models.append(try VirtioVsock(guestCID: UInt64(cid), host: UnixVsockHost(connector: client.connect)))
                }
            } catch {
                throw Refusal("device \(i): \(error)")
            }
        }
        var m = MachineConfiguration(
            boot: BootConfiguration(memorySize: memory, vcpus: Int(c.vcpus), commandLine: c.commandLine,
                                    faultHandlers: c.faultHandlers),
            timeout: c.timeoutMilliseconds == 0 ? nil : Double(c.timeoutMilliseconds) / 1000,
            cpuid: CPUIDPolicy(hidden: hidden), console: ConsoleSink(fd: fd(c.console)), devices: models)
        m.kvmDescriptor = fd(c.kvm)
        m.consoleInput = c.consoleInput.map(fd)
        m.doorbellsInKernel = c.doorbellsInKernel
        func bucket(_ rate: UInt64) -> TokenBucket? { rate == 0 ? nil : TokenBucket(capacity: rate, ratePerSecond: rate, now: now) }
        for (i, l) in c.limits.enumerated() where l.operationsPerSecond != 0 || l.bytesPerSecond != 0 {
            m.rateLimits[i] = RateLimiter(operations: bucket(l.operationsPerSecond), bytes: bucket(l.bytesPerSecond))
        }
        machine = m
    }

    /// Boots and runs the VM to its end.
    public func run() throws(MachineError) -> RunReport {
        switch kind {
        case .program: return try Machine.run(image: image, configuration: machine)
        case .kernel(let initrd): return try Machine.runLinux(kernel: image, initrd: initrd, configuration: machine)
        }
    }

    /// With features hidden: whether hiding them works on this host for this kind of guest,
    /// measured here, where the VM runs (`CPUIDProbe`, through the VM's own KVM descriptor and
    /// vCPU thread set-up), as counters for the `ended` message, from which the launcher warns:
    /// `cpuid.enforced` (1: every hidden feature is hidden, 0: not) and `cpuid.ineffective` (the
    /// hidden features the guest sees anyway, bit i for `Feature.allCases[i]`). None when nothing
    /// is hidden or the probe had no answer.
    public func cpuidEnforcementCounters() -> [Counter] {
        guard !machine.cpuid.hidden.isEmpty else { return [] }
        let probeKind: CPUIDProbe.GuestKind
        if case .program = kind { probeKind = .program } else { probeKind = .kernel }
        guard let m = CPUIDProbe.measured(for: probeKind, kvmDescriptor: machine.kvmDescriptor,
                                          vcpuThreadStart: machine.vcpuThreadStart) else { return [] }
        let ineffective = m.ineffective(machine.cpuid.hidden)
        return [Counter(name: RunEnd.cpuidEnforcedCounter, value: ineffective.isEmpty ? 1 : 0),
                Counter(name: RunEnd.cpuidIneffectiveCounter, value: CPUIDPolicy.mask(of: ineffective))]
    }

    /// The `ended` message for a report: the outcome and the counters (hypercalls by name,
    /// exits by kind).
    public static func ended(_ report: RunReport, extra: [Counter] = []) -> WorkerMessage {
        let outcome: VMOutcome
        switch report.outcome {
        case .exited(let s): outcome = .exited(status: s)
        case .fault, .tripleFault: outcome = .faulted(String(report.outcome.description.prefix(VMOutcome.maxReasonLength)))
        case .timedOut(let s): outcome = .timedOut(milliseconds: Saturating.milliseconds(seconds: s))
        case .vcpuFailure: outcome = .vcpuFailure(String(report.outcome.description.prefix(VMOutcome.maxReasonLength)))
        case .reset: outcome = .reset
        case .poweredOff: outcome = .poweredOff
        case .panicked: outcome = .panicked
        }
        var counters = Hypercall.allCases.map { Counter(name: "hypercall.\($0.name)", value: report.statistics.count($0)) }
        counters.append(Counter(name: "hypercall.unknown", value: report.statistics.unknownCalls))
        counters.append(Counter(name: "hypercall.errors", value: report.statistics.totalErrors))
        let e = report.exits
        counters += [Counter(name: "exit.mmio", value: e.mmio), Counter(name: "exit.pio", value: e.pio),
                     Counter(name: "exit.other", value: e.other), Counter(name: "exit.unassigned-mmio", value: e.unassignedMMIO),
                     Counter(name: "exit.unassigned-pio", value: e.unassignedPIO)]
        // CLOCK_MONOTONIC is one clock for every process (no time namespace is used): the
        // launcher's --report-timing and the benchmarks compare it with their own readings.
        counters.append(Counter(name: "timing.start-ns", value: report.startNanoseconds))
        if let first = report.firstHypercallNanoseconds { counters.append(Counter(name: "timing.first-hypercall-ns", value: first)) }
        // Where a timeout found each vCPU (RunEnd.stoppedAt prints it).
        for (vcpu, rip) in report.stoppedAt.sorted(by: { $0.key < $1.key }).prefix(Int(VMConfiguration.maxVCPUs)) {
            counters.append(Counter(name: RunEnd.stoppedAtPrefix + String(vcpu), value: rip))
        }
        return .ended(outcome, counters: counters + extra)
    }
}

extension MachineError {
    /// The refusal kind (and so the exit status) this error gives: the same in a worker as in
    /// process.
    public var refusalKind: RefusalKind {
        switch self {
        case .boot(.elf), .linux: return .image
        case .boot: return .configuration
        case .kvm(.deviceUnavailable), .kvm(.missingCapability), .kvm(.unsupportedAPIVersion): return .unavailable
        default: return .internal
        }
    }
}
