import Boot
import Devices
import HostOS
import KVM
import Synchronization
import Virtio

/// A vCPU's registers where it stopped for good (a triple fault): what a person debugging the
/// guest needs first, since the fault that started it is lost.
public struct StoppedCPUState: Equatable, Sendable, CustomStringConvertible {
    public var rip: UInt64, rsp: UInt64, rflags: UInt64
    public var cs: UInt16
    public var cr0: UInt64, cr2: UInt64, cr3: UInt64, cr4: UInt64, efer: UInt64
    public var idtBase: UInt64, idtLimit: UInt16

    public init(_ r: Registers, _ s: SpecialRegisters) {
        rip = r.rip; rsp = r.rsp; rflags = r.rflags
        cs = s.cs.selector
        cr0 = s.cr0; cr2 = s.cr2; cr3 = s.cr3; cr4 = s.cr4; efer = s.efer
        idtBase = s.idt.base; idtLimit = s.idt.limit
    }

    /// The registers are the architectural reset state (CS F000, RIP FFF0, real mode): AMD's SVM
    /// leaves the VMCB undefined after a shutdown, so KVM reinitialises the vCPU before it returns
    /// KVM_EXIT_SHUTDOWN, and where the guest stood is lost. (Intel's VMX keeps it.)
    public var isResetState: Bool { cs == 0xf000 && rip == 0xfff0 && cr0 & 1 == 0 }

    public var description: String {
        if isResetState { return "an unknown place (KVM reset the vCPU's registers on the shutdown)" }
        func h<T: BinaryInteger>(_ v: T) -> String { "0x" + String(v, radix: 16) }
        return "rip \(h(rip)) rsp \(h(rsp)) rflags \(h(rflags)) cs \(h(cs)) cr0 \(h(cr0)) cr2 \(h(cr2)) "
            + "cr3 \(h(cr3)) cr4 \(h(cr4)) efer \(h(efer)) idt \(h(idtBase))/\(h(idtLimit))"
    }
}

/// How a VM ended.
public enum RunOutcome: Equatable, Sendable, CustomStringConvertible {
    /// The guest called `exit` with this status.
    case exited(status: UInt8)
    /// The guest took a CPU exception (reported by the fault stubs).
    case fault(FaultReport)
    /// The vCPU triple-faulted (KVM_EXIT_SHUTDOWN): the fault reason is lost; `state` is where
    /// the vCPU stood (nil if KVM could not say).
    case tripleFault(vcpu: Int, state: StoppedCPUState?)
    /// `--timeout` expired; every vCPU was stopped.
    case timedOut(seconds: Double)
    /// The vCPU could not continue for another reason (invalid state, unexpected exit, halt).
    case vcpuFailure(vcpu: Int, reason: String)
    /// A kernel guest reset the machine through the i8042 (command 0xFE to port 0x64, how Linux
    /// reboots with `reboot=k`). Bulkhead does not reboot: the VM ends, as a clean exit.
    case reset(vcpu: Int)
    /// A kernel guest powered the machine off (ACPI S5 through the FADT's sleep control
    /// register, how Linux's `poweroff` ends): the VM ends, as a clean exit.
    case poweredOff(vcpu: Int)
    /// A kernel guest reported a panic through the pvpanic device (Linux's pvpanic-mmio driver):
    /// the VM ends as a crash, with that reason, before the kernel reboots or spins.
    case panicked(vcpu: Int)

    /// Process exit status for the command line (documented in README.md).
    public var exitCode: Int32 {
        switch self {
        case .exited(let s): return Int32(s)
        case .reset, .poweredOff: return 0
        case .fault, .tripleFault, .panicked: return 134
        case .timedOut: return 124
        case .vcpuFailure: return 125
        }
    }

    public var description: String {
        switch self {
        case .exited(let s): return "guest exited with status \(s)"
        case .fault(let f): return "guest fault: \(f)"
        case .tripleFault(let v, let state):
            return "guest fault: vCPU \(v): triple fault (KVM_EXIT_SHUTDOWN)"
                + (state.map { " at \($0)" } ?? "") + "; the VM cannot continue"
        case .timedOut(let s): return "timeout: the guest was still running after \(s) s and was stopped"
        case .vcpuFailure(let v, let r): return "vCPU \(v) failed: \(r)"
        case .reset(let v): return "vCPU \(v) reset the machine (i8042 command 0xFE); the VM ended"
        case .poweredOff(let v): return "vCPU \(v) powered the machine off (ACPI S5); the VM ended"
        case .panicked(let v): return "the guest kernel panicked (reported by vCPU \(v) through pvpanic); the VM was stopped"
        }
    }
}

/// Everything `Machine.run` needs besides the image.
public struct MachineConfiguration {
    public var boot: BootConfiguration
    /// Stop the VM after this many seconds (nil: no limit).
    public var timeout: Double?
    public var cpuid: CPUIDPolicy
    public var console: ConsoleSink
    /// Host input for COM1's receive side (kernel guests; guest programs cannot reach ports):
    /// read as the guest's UART has room, on a thread of its own (`SerialPort.pumpInput`).
    public var consoleInput: FileDescriptor?
    public var kvmPath: String
    /// An open KVM device to use instead of opening `kvmPath` (a worker is handed one).
    public var kvmDescriptor: FileDescriptor?
    /// Virtio devices, attached in this order at `GuestLayout.deviceWindow(i)`.
    public var devices: [VirtioDeviceModel]
    /// Rate limits by device index (each queue of the device gets its own buckets).
    public var rateLimits: [Int: RateLimiter] = [:]
    /// Serve queue doorbells with KVM ioeventfds (default). Off: every QueueNotify is an MMIO exit
    /// served on the vCPU thread (for measuring what ioeventfd saves).
    public var doorbellsInKernel = true
    /// Runs first on every vCPU thread, before its first KVM call (a worker installs the vCPU
    /// role's seccomp filter there). A non-nil result is why the thread cannot run: the VM ends
    /// with a vCPU failure.
    public var vcpuThreadStart: (@Sendable () -> String?)?

    public init(boot: BootConfiguration, timeout: Double? = nil, cpuid: CPUIDPolicy = CPUIDPolicy(),
                console: ConsoleSink = .standardOutput(), kvmPath: String = "/dev/kvm",
                devices: [VirtioDeviceModel] = []) {
        self.boot = boot; self.timeout = timeout; self.cpuid = cpuid; self.console = console; self.kvmPath = kvmPath
        self.devices = devices
    }

    /// The boot configuration with the device windows filled in.
    var bootWithDevices: BootConfiguration {
        var b = boot
        b.devices = devices.enumerated().map { i, m in
            DeviceWindow(kind: m.deviceType.rawValue, irq: UInt32(5 + i), base: GuestLayout.deviceWindow(i),
                         size: MMIOTransport.windowSize)
        }
        return b
    }
}

/// What happened in a run.
/// What the vCPUs' exits were, for audit: how often each kind happened, and accesses that hit
/// nothing (a kernel probing for hardware that is not there, or a guest looking for a way out).
public struct ExitStatistics: Equatable, Sendable {
    public var mmio: UInt64 = 0
    public var pio: UInt64 = 0
    public var other: UInt64 = 0
    /// MMIO reads and writes at addresses no channel claims (kernel guests: read as all ones,
    /// writes dropped), and the last such address.
    public var unassignedMMIO: UInt64 = 0
    public var lastUnassignedMMIO: UInt64?
    /// Port accesses no channel claims (read as 0xff, writes dropped), and the last such port.
    public var unassignedPIO: UInt64 = 0
    public var lastUnassignedPort: UInt16?

    public init() {}

    mutating func merge(_ o: ExitStatistics) {
        mmio += o.mmio; pio += o.pio; other += o.other
        unassignedMMIO += o.unassignedMMIO; unassignedPIO += o.unassignedPIO
        lastUnassignedMMIO = o.lastUnassignedMMIO ?? lastUnassignedMMIO
        lastUnassignedPort = o.lastUnassignedPort ?? lastUnassignedPort
    }

    mutating func unassigned(mmio address: UInt64) { unassignedMMIO += 1; lastUnassignedMMIO = address }
    mutating func unassigned(port: UInt16) { unassignedPIO += 1; lastUnassignedPort = port }
}

public struct RunReport: Sendable {
    public var outcome: RunOutcome
    public var statistics: HypercallStatistics
    public var exits = ExitStatistics()
    /// Monotonic time (ns) at which the VMM started, and at which it served the first hypercall.
    public var startNanoseconds: UInt64
    public var firstHypercallNanoseconds: UInt64?
    /// After a timeout: the instruction pointer of each vCPU when it was stopped.
    public var stoppedAt: [Int: UInt64] = [:]
    /// The ended VM's kernel objects and memory. They are released when the last copy of the
    /// report goes, so a caller can report the outcome before paying for the teardown (closing
    /// a VM with the in-kernel irqchip takes 12-20 ms on these hosts).
    public var resources: VMResources?
}

/// What a VM that has ended still holds: its KVM descriptors, guest memory, device back ends.
/// Dropping the last reference closes them.
public final class VMResources: @unchecked Sendable {
    // Sendable: never used after the run ended, only kept alive and then dropped.
    private let held: [AnyObject]
    init(_ held: [AnyObject]) { self.held = held }
}

public enum MachineError: Error, CustomStringConvertible, Sendable {
    case boot(BootError)
    case kvm(KVMError)
    case memory(GuestMemoryError)
    case linux(LinuxBootError)

    public var description: String {
        switch self {
        case .linux(let e): return e.description
        case .boot(let e): return e.description
        case .kvm(let e): return e.description
        case .memory(let e): return "cannot load the guest: \(e)"
        }
    }
}

/// Shared between the vCPU threads and the thread that waits for the VM to end.
final class RunControl: Sendable {
    private let outcome = Mutex<RunOutcome?>(nil)
    let done: EventFD
    let kickers: [VCPUKicker]
    let wakers: [EventFD]

    init(kickers: [VCPUKicker], wakers: [EventFD]) throws(KVMError) {
        self.done = try hostOS { () throws(SystemError) in try EventFD() }
        self.kickers = kickers
        self.wakers = wakers
    }

    /// Records the first outcome and stops every vCPU. Later outcomes are ignored.
    func finish(_ o: RunOutcome) {
        let first = outcome.withLock { current -> Bool in
            guard current == nil else { return false }
            current = o
            return true
        }
        guard first else { return }
        for k in kickers { k.kick() }
        for w in wakers { w.signal() }
        done.signal()
    }

    var result: RunOutcome? { outcome.withLock { $0 } }

    /// Where each vCPU was when a timeout stopped it (for the report).
    private let stoppedAt = Mutex<[Int: UInt64]>([:])
    func recordStoppedAt(vcpu: Int, rip: UInt64) { stoppedAt.withLock { $0[vcpu] = rip } }
    var stoppedRIPs: [Int: UInt64] { stoppedAt.withLock { $0 } }
}

/// The hypercall environment of a live VM: its RAM, its access map, its console.
struct LiveEnvironment: HypercallEnvironment {
    let memory: GuestMemory
    let plan: BootPlan
    let console: ConsoleSink
    let start: UInt64

    func userCanAccess(_ address: UInt64, length: UInt64, rights: PageFlags) -> Bool {
        plan.userCanAccess(address, length: length, rights: rights) && memory.contains(address, length: length)
    }
    func readGuest(_ address: UInt64, count: Int) -> [UInt8]? { try? memory.read(at: address, count: count) }
    func fillRandom(_ address: UInt64, count: Int) -> Bool { (try? memory.fillRandom(at: address, count: count)) ?? false }
    func console(_ bytes: [UInt8]) { console.write(bytes) }
    func nanosecondsSinceStart() -> UInt64 { monotonicNanoseconds() &- start }
}

/// Creates, runs and tears down one VM running a Bulkhead guest program.
public enum Machine {
    /// Builds the boot plan without touching KVM (validates the image and configuration).
    public static func plan(image: [UInt8], configuration: MachineConfiguration) throws(MachineError) -> BootPlan {
        do { return try ProgramLoader.plan(image: image, config: configuration.bootWithDevices) } catch { throw .boot(error) }
    }

    public static func run(image: [UInt8], configuration: MachineConfiguration) throws(MachineError) -> RunReport {
        let start = monotonicNanoseconds()
        let plan = try self.plan(image: image, configuration: configuration)
        return try execute(.program(plan), configuration: configuration, start: start)
    }

    /// Validates a Linux kernel (and initrd) and builds its boot plan without touching KVM.
    public static func planLinux(kernel: [UInt8], initrd: [UInt8]?, configuration: MachineConfiguration) throws(MachineError) -> LinuxBootPlan {
        do {
            let parsed = try LinuxKernel.parse(kernel)
            let boot = configuration.bootWithDevices
            return try LinuxBootPlanner.plan(kernel: parsed, initrd: initrd, commandLine: boot.commandLine,
                                             memorySize: boot.memorySize, devices: boot.devices.map(VirtioMMIODeviceInfo.init),
                                             vcpus: boot.vcpus)
        } catch { throw .linux(error) }
    }

    /// Boots a Linux kernel directly (bzImage, vmlinux or PVH) with the UART on COM1 as its console.
    public static func runLinux(kernel: [UInt8], initrd: [UInt8]?, configuration: MachineConfiguration) throws(MachineError) -> RunReport {
        let start = monotonicNanoseconds()
        let plan = try planLinux(kernel: kernel, initrd: initrd, configuration: configuration)
        return try execute(.linux(plan), configuration: configuration, start: start)
    }

    enum Guest {
        case program(BootPlan)
        case linux(LinuxBootPlan)

        var chunks: [BootPlan.Chunk] {
            switch self {
            case .program(let p): return p.chunks
            case .linux(let p): return p.chunks
            }
        }
        var programPlan: BootPlan? { if case .program(let p) = self { return p }; return nil }
    }

    static func execute(_ guest: Guest, configuration: MachineConfiguration, start: UInt64) throws(MachineError) -> RunReport {
        let vcpus: [VCPU]
        let memory: GuestMemory
        let system: KVMSystem
        let vm: VirtualMachine
        do {
            if let fd = configuration.kvmDescriptor { system = try KVMSystem(adopting: fd) } else {
                system = try KVMSystem(path: configuration.kvmPath)
            }
            vm = try system.createVM()
            memory = try GuestMemory(base: 0, size: configuration.boot.memorySize)
            try vm.map(memory, slot: 0)
            if case .linux = guest {
                try vm.setTSSAddress(LinuxTSSAddress)
                try vm.createInterruptController()
                try vm.createTimer()
            }
        } catch { throw .kvm(error) }
        do {
            for chunk in guest.chunks { try memory.write(chunk.bytes, at: chunk.address) }
        } catch { throw .memory(error) }
        do {
            let supported = try system.supportedCPUID()
            var created: [VCPU] = []
            for i in 0..<configuration.boot.vcpus {
                let vcpu = try vm.createVCPU(id: UInt32(i))
                try vcpu.setCPUID(configuration.cpuid.apply(to: supported, vcpu: i))
                switch guest {
                case .program(let plan):
                    let state = plan.cpus[i]
                    try vcpu.setSpecialRegisters(specialRegisters(state))
                    var regs = Registers()
                    regs.rip = state.rip; regs.rsp = state.rsp; regs.rdi = state.rdi; regs.rsi = state.rsi
                    regs.rflags = state.rflags
                    try vcpu.setRegisters(regs)
                case .linux(let plan):
                    // Only the boot vCPU starts; the kernel wakes the others with INIT/SIPI.
                    if i == 0 {
                        try vcpu.setSpecialRegisters(specialRegisters(plan.cpu))
                        var regs = Registers()
                        regs.rip = plan.cpu.rip; regs.rsp = plan.cpu.rsp; regs.rsi = plan.cpu.rsi
                        regs.rbx = plan.cpu.rbx; regs.rflags = plan.cpu.rflags
                        try vcpu.setRegisters(regs)
                    }
                }
                try vcpu.resetFPU()
                vcpu.enableSyncRegisters()
                created.append(vcpu)
            }
            vcpus = created
        } catch { throw .kvm(error) }

        let bus: DeviceBus
        do {
            let ram: GuestRAM & Sendable
            if let plan = guest.programPlan { ram = ProgramDMAView(memory: memory, plan: plan) } else { ram = memory }
            let interrupts: Bool
            if case .linux = guest { interrupts = true } else { interrupts = false }
            bus = try attachDevices(configuration.devices, rateLimits: configuration.rateLimits, ram: ram,
                                    interrupts: interrupts, doorbells: configuration.doorbellsInKernel, vm: vm, system: system)
        } catch { throw .kvm(error) }

        let wakers: [EventFD]
        let replies: [MailboxReply]
        let control: RunControl
        do {
            wakers = try vcpus.map { _ throws(KVMError) in try hostOS { () throws(SystemError) in try EventFD() } }
            replies = try vcpus.map { _ throws(KVMError) in try MailboxReply() }
            control = try RunControl(kickers: vcpus.map(\.kicker), wakers: wakers)
        } catch { throw .kvm(error) }
        let env = guest.programPlan.map { LiveEnvironment(memory: memory, plan: $0, console: configuration.console, start: start) }
        let serial: SerialPort
        do { serial = try SerialPort(console: configuration.console, vm: guest.programPlan == nil ? vm : nil) } catch { throw .kvm(error) }
        let results = Locked<[(HypercallStatistics, UInt64?, ExitStatistics)]>([])

        var threads: [OSThread] = []
        for (i, vcpu) in vcpus.enumerated() {
            let runner = VCPURunner(index: i, vcpu: vcpu, waker: wakers[i], reply: replies[i], control: control, env: env,
                                    serial: serial, plan: guest.programPlan, memory: memory, bus: bus,
                                    threadStart: configuration.vcpuThreadStart)
            do {
                threads.append(try OSThread.spawn {
                    let r = runner.run()
                    results.withLock { $0.append(r) }
                    control.done.signal()
                })
            } catch {
                control.finish(.vcpuFailure(vcpu: i, reason: "cannot start its thread: \(error)"))
                break
            }
        }

        // Queue doorbells, and guest writes that reach a back end (DeviceMailbox), are served on
        // their own thread, never on a vCPU thread.
        var deviceThread: OSThread?
        let stopDevices: EventFD
        do { stopDevices = try EventFD() } catch { throw .kvm(.system(error)) }
        if bus.mailbox != nil || bus.devices.contains(where: { !$0.doorbells.isEmpty || $0.device.withLock { $0.model is VirtioBackendInput } }) {
            do { deviceThread = try OSThread.spawn { bus.serve(until: stopDevices) } } catch {
                control.finish(.vcpuFailure(vcpu: 0, reason: "cannot start the device thread: \(error)"))
            }
        }

        // Console input (kernel guests): fed to COM1 as its receive FIFO has room.
        var inputThread: OSThread?
        if guest.programPlan == nil, let input = configuration.consoleInput {
            do {
                inputThread = try OSThread.spawn {
                    setThreadName("console input")
                    if let why = serial.pumpInput(from: input, until: stopDevices) {
                        control.finish(.vcpuFailure(vcpu: 0, reason: "console input: " + why))
                    }
                }
            } catch {
                control.finish(.vcpuFailure(vcpu: 0, reason: "cannot start the console input thread: \(error)"))
            }
        }

        // Wait for the first outcome, or the timeout (the watchdog).
        let deadline = configuration.timeout.map { Saturating.adding(start, Saturating.nanoseconds(seconds: $0)) }
        while control.result == nil {
            if let deadline {
                let now = monotonicNanoseconds()
                if now >= deadline {
                    control.finish(.timedOut(seconds: configuration.timeout ?? 0))
                    break
                }
                _ = control.done.wait(nanoseconds: deadline - now)
            } else {
                _ = control.done.wait(nanoseconds: 1_000_000_000)
            }
        }
        let started = threads.count
        Machine.stopVCPUs(kick: { for k in control.kickers { k.kick() } },
                          allStopped: { results.withLock { $0.count } >= started },
                          wait: { _ = control.done.wait(nanoseconds: $0) })
        for t in threads { t.join() }
        stopDevices.signal()
        deviceThread?.join()
        inputThread?.join()

        var stats = HypercallStatistics()
        var exits = ExitStatistics()
        var first: UInt64?
        for (s, f, e) in results.withLock({ $0 }) {
            stats.merge(s)
            exits.merge(e)
            if let f { first = min(first ?? f, f) }
        }
        // The outcome goes back now; the VM is torn down when the caller drops the report (vCPUs
        // first, then the VM, its devices and memory).
        return RunReport(outcome: control.result ?? .vcpuFailure(vcpu: 0, reason: "no outcome"),
                         statistics: stats, exits: exits, startNanoseconds: start, firstHypercallNanoseconds: first,
                         stoppedAt: control.stoppedRIPs, resources: VMResources(vcpus as [AnyObject] + [vm, bus, memory, system]))
    }

    /// How often `stopVCPUs` kicks the vCPUs that have not stopped yet.
    static let rekickNanoseconds: UInt64 = 10_000_000

    /// Kicks every vCPU until all have stopped (`allStopped`), waiting up to `rekickNanoseconds`
    /// between rounds (`wait` returns early when a vCPU thread ends). One kick can be lost: its
    /// signal may be handled in user space just before the thread enters KVM_RUN, and a kernel
    /// whose KVM_RUN blocks a vCPU still waiting for its start-up IPI (UNINITIALIZED) without
    /// looking at immediate_exit then sleeps for ever (issue 10: a 2-vCPU Linux guest's reboot
    /// that never ended the VM). Kicking again, while the thread sleeps there, always wakes it.
    static func stopVCPUs(kick: () -> Void, allStopped: () -> Bool, wait: (UInt64) -> Void) {
        while !allStopped() {
            kick()
            wait(rekickNanoseconds)
        }
    }

    /// Three pages below 4 GiB that Intel KVM may use for real-mode emulation (never RAM here).
    static let LinuxTSSAddress: UInt64 = 0xfffb_d000

    /// Creates each device at its window and registers one ioeventfd doorbell per queue.
    /// With `interrupts`, each device also gets an irqfd on its IRQ line (Linux guests).
    static func attachDevices(_ models: [VirtioDeviceModel], rateLimits: [Int: RateLimiter], ram: GuestRAM & Sendable, interrupts: Bool,
                              doorbells: Bool, vm: VirtualMachine, system: KVMSystem) throws(KVMError) -> DeviceBus {
        let useDoorbells = doorbells && system.checkExtension(CKVMCapabilities.ioeventfd) > 0
        var attached: [AttachedDevice] = []
        for (i, model) in models.enumerated() {
            let base = GuestLayout.deviceWindow(i)
            var bells: [EventFD] = []
            if useDoorbells {
                for q in model.queueSizes.indices {
                    let bell = try hostOS { () throws(SystemError) in try EventFD() }
                    try vm.registerDoorbell(address: base + MMIOTransport.Register.queueNotify.rawValue,
                                            length: 4, value: UInt64(q), eventfd: bell)
                    bells.append(bell)
                }
            }
            let window = DeviceWindow(kind: model.deviceType.rawValue, irq: UInt32(5 + i), base: base,
                                      size: MMIOTransport.windowSize)
            var interrupt: EventFD?
            if interrupts {
                let e = try hostOS { () throws(SystemError) in try EventFD() }
                try vm.registerInterrupt(gsi: window.irq, eventfd: e)
                interrupt = e
            }
            attached.append(AttachedDevice(window: window, device: VirtioMMIODevice(model: model, rateLimit: rateLimits[i]), doorbells: bells,
                                           interrupt: interrupt))
        }
        // Writes that reach a back end run on the device thread (see DeviceMailbox), except in
        // the --no-ioeventfd benchmark mode, which serves everything on vCPU threads.
        return DeviceBus(devices: attached, ram: ram, mailbox: doorbells && !attached.isEmpty ? try DeviceMailbox() : nil)
    }

    static func specialRegisters(_ c: LinuxCPUState) -> SpecialRegisters {
        func seg(_ s: SegmentState) -> Segment {
            Segment(base: s.base, limit: s.limit, selector: s.selector, type: s.type, present: s.present,
                    dpl: s.dpl, db: s.defaultSize32, s: s.codeOrData, l: s.long, g: s.granularity)
        }
        var r = SpecialRegisters()
        r.cs = seg(c.cs); r.ds = seg(c.ds); r.es = seg(c.es); r.fs = seg(c.fs); r.gs = seg(c.gs); r.ss = seg(c.ss)
        r.tr = seg(c.tr)
        r.ldt = Segment(type: 0x2, unusable: true)
        r.gdt = DescriptorTable(base: c.gdtBase, limit: c.gdtLimit)
        r.idt = DescriptorTable(base: c.idtBase, limit: c.idtLimit)
        r.cr0 = c.cr0; r.cr3 = c.cr3; r.cr4 = c.cr4; r.efer = c.efer
        return r
    }

    static func specialRegisters(_ s: InitialCPUState) -> SpecialRegisters {
        var r = SpecialRegisters()
        r.cs = Segment(base: 0, limit: 0xffff_ffff, selector: s.codeSelector, type: 0xb, present: true,
                       dpl: UInt8(s.codeSelector & 3), db: false, s: true, l: true, g: true)
        let data = Segment(base: 0, limit: 0xffff_ffff, selector: s.dataSelector, type: 0x3, present: true,
                           dpl: UInt8(s.dataSelector & 3), db: true, s: true, l: false, g: true)
        r.ds = data; r.es = data; r.fs = data; r.gs = data; r.ss = data
        r.tr = Segment(base: s.tssBase, limit: s.tssLimit, selector: s.tssSelector, type: 0xb, present: true)
        r.ldt = Segment(type: 0x2, unusable: true)
        r.gdt = DescriptorTable(base: s.gdtBase, limit: s.gdtLimit)
        r.idt = DescriptorTable(base: s.idtBase, limit: s.idtLimit)
        r.cr0 = s.cr0; r.cr3 = s.cr3; r.cr4 = s.cr4; r.efer = s.efer
        return r
    }
}

/// The loop of one vCPU thread: run, decode the exit, dispatch through the registered channels.
struct VCPURunner: @unchecked Sendable {
    // Sendable: moved into exactly one thread; the shared parts (control, env, serial) are Sendable.
    let index: Int
    let vcpu: VCPU
    let waker: EventFD
    /// Where the device thread says a write this thread handed it is done (see DeviceMailbox).
    let reply: MailboxReply
    let control: RunControl
    /// Hypercalls, the fault page and guard pages exist for guest programs only (nil for Linux).
    let env: LiveEnvironment?
    let serial: SerialPort
    let plan: BootPlan?
    let memory: GuestMemory
    let bus: DeviceBus
    let threadStart: (@Sendable () -> String?)?

    func run() -> (HypercallStatistics, UInt64?, ExitStatistics) {
        var stats = HypercallStatistics()
        var exits = ExitStatistics()
        var firstHypercall: UInt64?
        var ticket: UInt64 = 0
        if let threadStart, let why = threadStart() {
            control.finish(.vcpuFailure(vcpu: index, reason: "its thread could not be set up: \(why)"))
            return (stats, nil, exits)
        }
        vcpu.kicker.attachCurrentThread()
        defer { vcpu.kicker.detachThread() }
        while control.result == nil {
            let exit: VCPUExit
            do { exit = try vcpu.run() } catch {
                control.finish(.vcpuFailure(vcpu: index, reason: "\(error)"))
                break
            }
            switch exit {
            case .mmioRead, .mmioWrite: exits.mmio += 1
            case .ioIn, .ioOut: exits.pio += 1
            case .interrupted: break
            default: exits.other += 1
            }
            switch exit {
            case .mmioRead(let address, let length):
                guard let env, address >= GuestLayout.hypercallPage, address < GuestLayout.hypercallPage + GuestLayout.pageSize else {
                    if let (device, offset) = bus.device(at: address) {
                        vcpu.completeMMIORead(bus.read(device, offset: offset, size: length))
                        continue
                    }
                    if plan == nil {
                        // A kernel probing for hardware that is not there: reads as all ones.
                        exits.unassigned(mmio: address)
                        vcpu.completeMMIORead(UInt64.max)
                        continue
                    }
                    control.finish(.vcpuFailure(vcpu: index, reason: "read of unassigned MMIO address 0x\(String(address, radix: 16))"))
                    continue
                }
                if firstHypercall == nil { firstHypercall = monotonicNanoseconds() }
                guard address == GuestLayout.hypercallPage, length == 8 else {
                    stats.errors[Int(HypercallError.badArgument.rawValue)] += 1
                    vcpu.completeMMIORead(HypercallError.badArgument.returnValue)
                    continue
                }
                let r = vcpu.syncedRegisters
                switch HypercallDispatcher.handle(number: r.rax, arguments: (r.rdi, r.rsi, r.rdx, r.rcx),
                                                  environment: env, statistics: &stats) {
                case .value(let v):
                    vcpu.completeMMIORead(v)
                case .wait(let ns):
                    if ns > 0 { _ = waker.wait(nanoseconds: ns) }
                    vcpu.completeMMIORead(0)
                case .exit(let status):
                    control.finish(.exited(status: status))
                }
            case .mmioWrite(let address, let length, let value):
                if plan != nil, address == GuestLayout.faultPage, length == 1 {
                    control.finish(fault(vector: Int(value & 0xff)))
                } else if let (device, offset) = bus.device(at: address) {
                    bus.guestWrite(device, offset: offset, size: length, value: value, reply: reply, ticket: &ticket,
                                   waker: waker, abandon: { control.result != nil })
                } else if plan == nil {
                    exits.unassigned(mmio: address) // a kernel's write to absent hardware is dropped
                } else {
                    control.finish(.vcpuFailure(vcpu: index, reason: "write to unassigned MMIO address 0x\(String(address, radix: 16))"))
                }
            case .ioIn(let port, let size, let count):
                var bytes: [UInt8] = []
                var failure: KVMError?
                let other = KernelPorts.read(port: port)
                if !SerialPort.com1.contains(port) && other == nil { exits.unassigned(port: port) }
                for _ in 0..<(size * count) {
                    if SerialPort.com1.contains(port) {
                        let (value, error) = serial.read(port: port)
                        bytes.append(value)
                        failure = failure ?? error
                    } else {
                        bytes.append(other ?? 0xff)   // the pvpanic device's capabilities, or nothing there
                    }
                }
                vcpu.completeIOIn(bytes)
                if let failure { control.finish(.vcpuFailure(vcpu: index, reason: SerialPort.interruptFailure(failure))) }
            case .ioOut(let port, _, let data):
                switch KernelPorts.write(port: port, data: data) {
                case .serial(_, let bytes):
                    for b in bytes {
                        if let failure = serial.write(port: port, value: b) {
                            control.finish(.vcpuFailure(vcpu: index, reason: SerialPort.interruptFailure(failure)))
                            break
                        }
                    }
                case .reset:
                    // Only kernels can reach ports at all; guest programs run with IOPL 0.
                    if plan == nil { control.finish(.reset(vcpu: index)) }
                case .powerOff:
                    if plan == nil { control.finish(.poweredOff(vcpu: index)) }
                case .panicked:
                    if plan == nil { control.finish(.panicked(vcpu: index)) }
                case .ignored:
                    if !SerialPort.com1.contains(port) && port != KernelPorts.pvpanic { exits.unassigned(port: port) }
                }
            case .interrupted:
                continue
            case .shutdown:
                var state: StoppedCPUState?
                if let r = try? vcpu.registers(), let sr = try? vcpu.specialRegisters() { state = StoppedCPUState(r, sr) }
                control.finish(.tripleFault(vcpu: index, state: state))
            case .halt:
                control.finish(.vcpuFailure(vcpu: index, reason: "the vCPU halted with no interrupt source"))
            case .failEntry(let reason):
                control.finish(.vcpuFailure(vcpu: index, reason: "KVM could not enter the guest (hardware reason 0x\(String(reason, radix: 16)))"))
            case .internalError(let sub):
                control.finish(.vcpuFailure(vcpu: index, reason: "KVM internal error (suberror \(sub)): an instruction could not be emulated"))
            case .systemEvent(let type):
                control.finish(.vcpuFailure(vcpu: index, reason: "guest requested a system event (type \(type))"))
            case .unknown(let reason):
                control.finish(.vcpuFailure(vcpu: index, reason: "unhandled KVM exit reason \(reason)"))
            }
        }
        if case .timedOut? = control.result, let r = try? vcpu.registers() {
            control.recordStoppedAt(vcpu: index, rip: r.rip)
        }
        return (stats, firstHypercall, exits)
    }

    /// Reads the exception frame the CPU pushed on this vCPU's kernel stack.
    func fault(vector: Int) -> RunOutcome {
        guard let plan else { return .vcpuFailure(vcpu: index, reason: "fault report without fault handlers") }
        var report = FaultReport(vcpu: index, vector: vector, errorCode: nil, rip: 0, rsp: 0, address: nil)
        guard let regs = try? vcpu.registers() else { return .fault(report) }
        let stackTop = GuestLayout.kernelStackTop(index)
        let hasCode = SystemTables.vectorsWithErrorCode.contains(vector)
        let frameSize: UInt64 = hasCode ? 48 : 40
        // The frame must lie inside this vCPU's own kernel stack page.
        if regs.rsp >= stackTop - GuestLayout.pageSize, regs.rsp <= stackTop - frameSize {
            var at = regs.rsp
            if hasCode { report.errorCode = try? memory.load(UInt64.self, at: at); at += 8 }
            report.rip = (try? memory.load(UInt64.self, at: at)) ?? 0
            report.rsp = (try? memory.load(UInt64.self, at: at + 24)) ?? 0
        }
        if vector == 14, let s = try? vcpu.specialRegisters() {
            report.address = s.cr2
            report.guardPageHit = plan.guardPages.contains { $0.contains(s.cr2) }
        }
        return .fault(report)
    }
}

/// A value behind a mutex, shareable between threads.
final class Locked<Value>: @unchecked Sendable {
    // Sendable: every access to `value` goes through the mutex.
    private let mutex = Mutex<Void>(())
    private var value: Value
    init(_ value: Value) { self.value = value }

    func withLock<R>(_ body: (inout Value) -> R) -> R {
        mutex.withLock { _ in body(&value) }
    }
}
