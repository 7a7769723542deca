import HostOS
import CKVM
import CLinux
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Why `KVM_RUN` returned, decoded from `kvm_run.exit_reason` and its union.
public enum VCPUExit: Equatable, Sendable {
    /// The guest read `length` bytes of MMIO at `address`; answer with `completeMMIORead`.
    case mmioRead(address: UInt64, length: Int)
    /// The guest wrote `length` bytes (`value`, little-endian) of MMIO at `address`.
    case mmioWrite(address: UInt64, length: Int, value: UInt64)
    /// The guest executed `in` on `port`; answer with `completeIOIn`.
    case ioIn(port: UInt16, size: Int, count: Int)
    /// The guest executed `out` on `port` with these bytes (`size * count` of them).
    case ioOut(port: UInt16, size: Int, data: [UInt8])
    case halt
    /// Triple fault or INIT: the vCPU cannot continue.
    case shutdown
    case failEntry(hardwareReason: UInt64)
    case internalError(suberror: UInt32)
    case systemEvent(type: UInt32)
    /// `KVM_RUN` was interrupted by a signal or by `immediate_exit` (a kick).
    case interrupted
    case unknown(reason: UInt32)
}

/// One virtual CPU: its fd and its shared `kvm_run` page.
///
/// Used by exactly one thread at a time (its vCPU thread); other threads reach it only through
/// its `VCPUKicker`.
public final class VCPU: @unchecked Sendable {
    // Sendable: the vCPU is handed to its own thread and used there only; the one field other
    // threads touch (immediate_exit) is written through `VCPUKicker`.
    public let id: UInt32
    public let fd: FileDescriptor
    private let runPage: UnsafeMutableRawPointer
    private let runSize: Int
    public let kicker: VCPUKicker

    init(id: UInt32, fd: FileDescriptor, run: UnsafeMutableRawPointer, runSize: Int) {
        self.id = id
        self.fd = fd
        self.runPage = run
        self.runSize = runSize
        self.kicker = VCPUKicker(run: run)
    }

    deinit {
        // SAFETY: `run` is this vCPU's kvm_run mapping of `runSize` bytes; no one uses it after deinit
        // (the kicker is disarmed first so a late kick cannot write into an unmapped page).
        kicker.disarm()
        munmap(runPage, runSize)
    }

    // MARK: registers

    public func registers() throws(KVMError) -> Registers {
        var r = kvm_regs()
        _ = try check("KVM_GET_REGS") { withUnsafeMutablePointer(to: &r) { clinux_ioctl_ptr(fd.rawValue, CKVM_GET_REGS, $0) } }
        return Registers(r)
    }

    public func setRegisters(_ regs: Registers) throws(KVMError) {
        var r = regs.kvm
        _ = try check("KVM_SET_REGS") { withUnsafeMutablePointer(to: &r) { clinux_ioctl_ptr(fd.rawValue, CKVM_SET_REGS, $0) } }
    }

    public func specialRegisters() throws(KVMError) -> SpecialRegisters {
        var s = kvm_sregs()
        _ = try check("KVM_GET_SREGS") { withUnsafeMutablePointer(to: &s) { clinux_ioctl_ptr(fd.rawValue, CKVM_GET_SREGS, $0) } }
        return SpecialRegisters(s)
    }

    public func setSpecialRegisters(_ sregs: SpecialRegisters) throws(KVMError) {
        var s = kvm_sregs()
        _ = try check("KVM_GET_SREGS") { withUnsafeMutablePointer(to: &s) { clinux_ioctl_ptr(fd.rawValue, CKVM_GET_SREGS, $0) } }
        sregs.apply(to: &s)
        _ = try check("KVM_SET_SREGS") { withUnsafeMutablePointer(to: &s) { clinux_ioctl_ptr(fd.rawValue, CKVM_SET_SREGS, $0) } }
    }

    /// Initialises the x87/SSE state: default control word, all exceptions masked.
    public func resetFPU() throws(KVMError) {
        var f = kvm_fpu()
        f.fcw = 0x37f
        f.mxcsr = 0x1f80
        _ = try check("KVM_SET_FPU") { withUnsafeMutablePointer(to: &f) { clinux_ioctl_ptr(fd.rawValue, CKVM_SET_FPU, $0) } }
    }

    /// Sets the CPUID leaves this vCPU reports.
    public func setCPUID(_ entries: [CPUIDEntry]) throws(KVMError) {
        guard entries.count <= Int(CKVM_MAX_CPUID_ENTRIES) else { throw .tooManyCPUIDEntries(entries.count) }
        let stride = MemoryLayout<kvm_cpuid_entry2>.stride
        let bytes = 8 + max(entries.count, 1) * stride
        // SAFETY: scratch buffer owned by this function: kvm_cpuid2 header + entries; freed on return.
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 8)
        defer { buffer.deallocate() }
        buffer.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        buffer.storeBytes(of: UInt32(entries.count), as: UInt32.self)
        for (i, e) in entries.enumerated() {
            var k = kvm_cpuid_entry2()
            k.function = e.function; k.index = e.index; k.flags = e.flags
            k.eax = e.eax; k.ebx = e.ebx; k.ecx = e.ecx; k.edx = e.edx
            // SAFETY: entry i lies inside the buffer (8 + count*stride bytes).
            buffer.storeBytes(of: k, toByteOffset: 8 + i * stride, as: kvm_cpuid_entry2.self)
        }
        _ = try check("KVM_SET_CPUID2") { clinux_ioctl_ptr(fd.rawValue, CKVM_SET_CPUID2, buffer) }
    }

    // MARK: sync registers

    /// Asks KVM to copy the general-purpose registers into `kvm_run` on every exit, so that an
    /// exit handler can read them without a `KVM_GET_REGS` ioctl.
    public func enableSyncRegisters() {
        // SAFETY: kvm_valid_regs is a u64 inside the kvm_run mapping.
        runPage.storeBytes(of: CKVM_SYNC_X86_REGS, toByteOffset: CKVM_RUN_VALID_REGS, as: UInt64.self)
    }

    /// The registers KVM copied out at the last exit (requires `enableSyncRegisters`).
    public var syncedRegisters: Registers {
        // SAFETY: s.regs.regs is a struct kvm_regs inside the kvm_run mapping, 8-byte aligned.
        Registers(runPage.load(fromByteOffset: CKVM_RUN_SYNC_REGS, as: kvm_regs.self))
    }

    /// Replaces the registers at the next `KVM_RUN` without an ioctl.
    public func setSyncedRegisters(_ regs: Registers) {
        // SAFETY: as above; kvm_dirty_regs is a u64 in the same mapping.
        runPage.storeBytes(of: regs.kvm, toByteOffset: CKVM_RUN_SYNC_REGS, as: kvm_regs.self)
        runPage.storeBytes(of: CKVM_SYNC_X86_REGS, toByteOffset: CKVM_RUN_DIRTY_REGS, as: UInt64.self)
    }

    // MARK: running

    /// Runs the vCPU until the next exit to user space.
    public func run() throws(KVMError) -> VCPUExit {
        let r = clinux_ioctl(fd.rawValue, CKVM_RUN, 0)
        if r < 0 {
            let e = errno
            if e == EINTR || e == EAGAIN { return .interrupted }
            throw .system(SystemError("KVM_RUN", errno: e))
        }
        // SAFETY: every offset below comes from offsetof() on the kernel's struct kvm_run, inside
        // the mapping; the union members read are the ones the exit reason selects.
        let reason = runPage.load(fromByteOffset: CKVM_RUN_EXIT_REASON, as: UInt32.self)
        switch reason {
        case CKVM_EXIT_MMIO:
            let addr = runPage.load(fromByteOffset: CKVM_RUN_MMIO_PHYS_ADDR, as: UInt64.self)
            let len = Int(min(runPage.load(fromByteOffset: CKVM_RUN_MMIO_LEN, as: UInt32.self), 8))
            if runPage.load(fromByteOffset: CKVM_RUN_MMIO_IS_WRITE, as: UInt8.self) != 0 {
                var value: UInt64 = 0
                for i in 0..<len {
                    value |= UInt64(runPage.load(fromByteOffset: CKVM_RUN_MMIO_DATA + i, as: UInt8.self)) << (8 * UInt64(i))
                }
                return .mmioWrite(address: addr, length: len, value: value)
            }
            return .mmioRead(address: addr, length: len)
        case CKVM_EXIT_IO:
            let dir = runPage.load(fromByteOffset: CKVM_RUN_IO_DIRECTION, as: UInt8.self)
            let size = Int(runPage.load(fromByteOffset: CKVM_RUN_IO_SIZE, as: UInt8.self))
            let port = runPage.load(fromByteOffset: CKVM_RUN_IO_PORT, as: UInt16.self)
            let count = Int(runPage.load(fromByteOffset: CKVM_RUN_IO_COUNT, as: UInt32.self))
            if dir == CKVM_EXIT_IO_IN { return .ioIn(port: port, size: size, count: count) }
            let offset = Int(runPage.load(fromByteOffset: CKVM_RUN_IO_DATA_OFFSET, as: UInt64.self))
            let total = size * count
            // The kernel places the data inside the kvm_run mapping; refuse anything else.
            guard offset >= 0, total >= 0, offset <= runSize, total <= runSize - offset else {
                return .internalError(suberror: UInt32.max)
            }
            let data = (0..<total).map { runPage.load(fromByteOffset: offset + $0, as: UInt8.self) }
            return .ioOut(port: port, size: size, data: data)
        case CKVM_EXIT_HLT: return .halt
        case CKVM_EXIT_SHUTDOWN: return .shutdown
        case CKVM_EXIT_FAIL_ENTRY:
            return .failEntry(hardwareReason: runPage.load(fromByteOffset: CKVM_RUN_FAIL_ENTRY_REASON, as: UInt64.self))
        case CKVM_EXIT_INTERNAL_ERROR:
            return .internalError(suberror: runPage.load(fromByteOffset: CKVM_RUN_INTERNAL_SUBERROR, as: UInt32.self))
        case CKVM_EXIT_SYSTEM_EVENT:
            return .systemEvent(type: runPage.load(fromByteOffset: CKVM_RUN_SYSTEM_EVENT_TYPE, as: UInt32.self))
        case CKVM_EXIT_INTR: return .interrupted
        default: return .unknown(reason: reason)
        }
    }

    /// Supplies the data for the MMIO read that caused the last exit.
    public func completeMMIORead(_ value: UInt64) {
        // SAFETY: mmio.data is an 8-byte array inside the kvm_run mapping.
        runPage.storeBytes(of: value.littleEndian, toByteOffset: CKVM_RUN_MMIO_DATA, as: UInt64.self)
    }

    /// Supplies the data for the `in` instruction that caused the last exit.
    public func completeIOIn(_ bytes: [UInt8]) {
        let offset = Int(runPage.load(fromByteOffset: CKVM_RUN_IO_DATA_OFFSET, as: UInt64.self))
        guard offset >= 0, offset <= runSize, bytes.count <= runSize - offset else { return }
        for (i, b) in bytes.enumerated() {
            // SAFETY: offset+i < runSize, checked above.
            runPage.storeBytes(of: b, toByteOffset: offset + i, as: UInt8.self)
        }
    }
}

/// Stops a vCPU from any thread, at any time: sets `immediate_exit` so the next `KVM_RUN` returns
/// at once, and signals the vCPU thread so a `KVM_RUN` in progress (or a blocking wait) returns
/// with EINTR. A guest spinning forever, or a vCPU stuck in the kernel, cannot hang the process.
public final class VCPUKicker: Sendable {
    // Sendable: the pointer is only dereferenced under the mutex, while the mapping is alive.
    private struct State: ~Copyable, @unchecked Sendable {
        var run: UnsafeMutableRawPointer?
        var thread: pthread_t?
    }
    private let state: Mutex<State>
    /// Set once a kick has been requested; stays set.
    private let kicked = Atomic<Bool>(false)

    init(run: UnsafeMutableRawPointer) {
        state = Mutex(State(run: run, thread: nil))
    }

    /// Records the calling thread as the one running this vCPU.
    public func attachCurrentThread() {
        KickSignal.install()
        KickSignal.unblockOnCurrentThread()
        state.withLock { $0.thread = pthread_self() }
        if kicked.load(ordering: .acquiring) { kick() }
    }

    public func detachThread() {
        state.withLock { $0.thread = nil }
    }

    public var isKicked: Bool { kicked.load(ordering: .acquiring) }

    public func kick() {
        kicked.store(true, ordering: .releasing)
        state.withLock { s in
            if let run = s.run {
                // SAFETY: immediate_exit is a u8 inside the kvm_run mapping, which stays mapped
                // while `run` is non-nil (disarm clears it under this lock before munmap).
                run.storeBytes(of: UInt8(1), toByteOffset: CKVM_RUN_IMMEDIATE_EXIT, as: UInt8.self)
            }
            if let t = s.thread { pthread_kill(t, KickSignal.number) }
        }
    }

    func disarm() {
        state.withLock { $0.run = nil; $0.thread = nil }
    }
}

/// The signal used to interrupt vCPU threads. Its handler does nothing: its only purpose is to
/// make blocking calls (KVM_RUN, poll) return EINTR.
public enum KickSignal {
    public static let number: Int32 = SIGUSR2
    private static let installed = Atomic<Bool>(false)

    public static func install() {
        guard installed.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged else { return }
        var action = sigaction()
        action.__sigaction_handler.sa_handler = { _ in }
        action.sa_flags = 0 // no SA_RESTART: blocked calls must return EINTR
        sigemptyset(&action.sa_mask)
        sigaction(number, &action, nil)
    }

    /// Threads inherit their creator's signal mask, and thread pools (libdispatch, Swift
    /// concurrency) block most signals: a vCPU thread created from one would never see a kick.
    public static func unblockOnCurrentThread() {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, number)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
    }
}
