import Boot
import Devices
import GuestInterface
import HostOS
import KVM
import Synchronization
import Virtio

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
            wakers = try vcpus.map { _ throws(KVMError) in try hostOS(EventFD.init) }
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
                    let bell = try hostOS(EventFD.init)
                    try vm.registerDoorbell(address: base + MMIOTransport.Register.queueNotify.rawValue,
                                            length: 4, value: UInt64(q), eventfd: bell)
                    bells.append(bell)
                }
            }
            let window = DeviceWindow(kind: model.deviceType.rawValue, irq: UInt32(5 + i), base: base,
                                      size: MMIOTransport.windowSize)
            var interrupt: EventFD?
            if interrupts {
                let e = try hostOS(EventFD.init)
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
