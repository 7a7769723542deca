import Boot
import Devices
import GuestInterface
import HostOS
import KVM
import Synchronization
import Virtio

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
