import Boot
import Devices
import HostOS
import KVM
import Synchronization
import Virtio

/// Shared between the vCPU threads and the thread that waits for the VM to end.
final class RunControl: Sendable {
    private let outcome = Mutex<RunOutcome?>(nil)
    let done: EventFD
    let kickers: [VCPUKicker]
    let wakers: [EventFD]

    init(kickers: [VCPUKicker], wakers: [EventFD]) throws(KVMError) {
        self.done = try hostOS(EventFD.init)
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
