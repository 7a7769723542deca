import Boot
import Devices
import GuestInterface
import HostOS
import KVM
import Synchronization
import Virtio

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
