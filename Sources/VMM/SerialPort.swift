import Devices
import HostOS
import KVM
import Synchronization

/// COM1: the 16550 state machine, its console, (for Linux guests) its interrupt line, IRQ 4, and
/// host input for its receive side.
///
/// The UART is shared by every vCPU thread and the input pump's thread. The interrupt line is set
/// while the UART's lock is held, so that the levels KVM sees come in the order the UART computed
/// them (two threads setting it after unlocking could leave the line high with nothing pending,
/// or low with data waiting, and the guest's driver would hang or storm).
final class SerialPort: Sendable {
    static let com1 = KernelPorts.com1
    static let irq: UInt32 = 4
    private let uart = Locked(Serial16550())
    let console: ConsoleSink
    private let vm: VirtualMachine?
    /// The input pump waits on this when the receive FIFO is full; a guest access that takes
    /// bytes out of the FIFO signals it (only when `wantsRoom` says the pump is waiting).
    private let room: EventFD
    private let wantsRoom = Atomic<Bool>(false)

    init(console: ConsoleSink, vm: VirtualMachine?) throws(KVMError) {
        self.console = console
        self.vm = vm
        self.room = try hostOS(EventFD.init)
    }

    /// A guest's read of a COM1 register; the error when the interrupt line it changed could not
    /// be set (the VM cannot go on: its driver would wait for an interrupt that never comes).
    func read(port: UInt16) -> (UInt8, KVMError?) {
        let (value, output, error, freed) = access { u in
            let before = u.receiveFIFO.count
            let (value, effects) = u.read(offset: UInt8(port - Self.com1.lowerBound))
            return (value, effects, u.receiveFIFO.count < before)
        }
        finish(output: output, freed: freed)
        return (value, error)
    }

    /// A guest's write of a COM1 register; the error as for `read`.
    func write(port: UInt16, value: UInt8) -> KVMError? {
        let (_, output, error, freed) = access { u in
            let before = u.receiveFIFO.count
            let effects = u.write(offset: UInt8(port - Self.com1.lowerBound), value: value)
            return ((), effects, u.receiveFIFO.count < before)   // FCR can clear the receive FIFO
        }
        finish(output: output, freed: freed)
        return error
    }

    /// Runs `body` on the UART under its lock and sets the interrupt line there if it changed.
    private func access<R>(_ body: (inout Serial16550) -> (R, Serial16550.Effects, Bool)) -> (R, UInt8?, KVMError?, Bool) {
        uart.withLock { u in
            let (result, effects, freed) = body(&u)
            var error: KVMError?
            if let level = effects.interrupt, let vm {
                do throws(KVMError) { try vm.setInterruptLine(Self.irq, level: level) } catch let e { error = e }
            }
            return (result, effects.output, error, freed)
        }
    }

    private func finish(output: UInt8?, freed: Bool) {
        if let output { console.write([output]) }
        if freed, wantsRoom.exchange(false, ordering: .acquiringAndReleasing) { room.signal() }
    }

    /// Why the VM ends when IRQ 4 could not be set.
    static func interruptFailure(_ error: KVMError) -> String {
        "the COM1 interrupt (IRQ \(irq)) could not be raised or lowered: \(error)"
    }

    /// Host input for the guest: reads `input` (a pipe from the launcher) only as far as the
    /// receive FIFO has room, so nothing is dropped and nothing piles up here: a guest that does
    /// not read leaves the rest in the pipe (and the launcher's standard input). Runs on a thread
    /// of its own until `stop` is signalled; when the input ends (end of file, or an error), the
    /// VM runs on without it. Returns why the VM must end (IRQ 4 could not be set), or nil.
    func pumpInput(from input: FileDescriptor, until stop: EventFD) -> String? {
        var pending: [UInt8] = []
        var inputOpen = true
        while true {
            if !pending.isEmpty {
                let (accepted, _, error, _) = access { u -> (Int, Serial16550.Effects, Bool) in
                    let room = Serial16550.fifoCapacity - u.receiveFIFO.count
                    guard room > 0 else { return (0, Serial16550.Effects(), false) }
                    let r = u.receive(Array(pending.prefix(room)))
                    return (r.accepted, r.effects, false)
                }
                pending.removeFirst(min(accepted, pending.count))
                if let error { return Self.interruptFailure(error) }
            }
            if !pending.isEmpty {
                // The FIFO is full: wait until the guest takes bytes out. The flag goes up before
                // the second look, so a read between the two cannot be missed.
                wantsRoom.store(true, ordering: .sequentiallyConsistent)
                if uart.withLock({ $0.receiveFIFO.count < Serial16550.fifoCapacity }) {
                    wantsRoom.store(false, ordering: .sequentiallyConsistent)
                    continue
                }
                let ready = waitReadable([stop.fd.rawValue, room.fd.rawValue], timeoutMilliseconds: -1)
                if ready.first == true { return nil }
                _ = room.drain()
                continue
            }
            let fds = inputOpen ? [stop.fd.rawValue, input.rawValue] : [stop.fd.rawValue]
            let ready = waitReadable(fds, timeoutMilliseconds: -1)
            if ready.first == true { return nil }
            guard inputOpen, ready.count == 2, ready[1] else { continue }
            switch try? input.readSome(maxBytes: Serial16550.fifoCapacity) {
            case .bytes(let b)?: pending = b
            case .wouldBlock?: continue
            case .end?, nil: inputOpen = false
            }
        }
    }
}
