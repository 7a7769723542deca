import Virtio

/// A virtio device model: the device-type-specific half of a virtio device, driven by
/// `VirtioMMIODevice`. Models are pure state machines; their I/O goes through back ends they are
/// given (a block back end, an entropy source...), so every model runs in tests with no KVM.
public protocol VirtioDeviceModel: AnyObject {
    var deviceType: Virtio.DeviceType { get }
    /// Device-specific feature bits offered (the transport adds the reserved ones it supports).
    var features: UInt64 { get }
    /// Maximum size of each queue; the count is the number of queues.
    var queueSizes: [UInt16] { get }
    /// Configuration space as the driver sees it.
    var config: [UInt8] { get }
    /// The driver wrote configuration space (most devices ignore it).
    func configWrite(offset: Int, bytes: [UInt8])
    /// Drop all state: the driver reset the device.
    func reset()
    /// Serve every available chain of queue `index`, admitting each through `limit`, the queue's
    /// rate limit (nil: none). Returns true if any chain was used. Throws only for ring-level
    /// corruption, after which the device needs a reset.
    func process(queue index: Int, _ queue: inout SplitQueue, ram: GuestRAM, limit: QueueLimiter?) throws(VirtqueueError) -> Bool
}

extension VirtioDeviceModel {
    public func configWrite(offset: Int, bytes: [UInt8]) {}

    /// Serves queue `index` without a rate limit.
    public func process(queue index: Int, _ queue: inout SplitQueue, ram: GuestRAM) throws(VirtqueueError) -> Bool {
        try process(queue: index, &queue, ram: ram, limit: nil)
    }
}

/// A complete virtio-mmio device: the transport's register state machine, the driver's queues
/// and the device model. Pure: the VMM supplies guest memory and carries out the interrupt.
///
/// Not thread-safe: the VMM serialises calls (one lock per device).
public final class VirtioMMIODevice {
    public let model: VirtioDeviceModel
    public private(set) var transport: MMIOTransport
    public private(set) var queues: [SplitQueue?]
    /// Chains refused (broken) and ring errors seen: a hostile driver is visible here.
    public private(set) var ringErrors: UInt64 = 0

    /// Per-queue rate limits (nil: unlimited). Each queue gets its own buckets, handed to the
    /// model with every call that may serve the queue.
    public let rateLimit: RateLimiter?
    private let limiters: [QueueLimiter?]

    public init(model: VirtioDeviceModel, rateLimit: RateLimiter? = nil) {
        self.model = model
        self.rateLimit = rateLimit
        self.limiters = model.queueSizes.map { _ in rateLimit.map(QueueLimiter.init) }
        let offered = model.features | Virtio.Feature.indirectDescriptors | Virtio.Feature.eventIndex
        transport = MMIOTransport(deviceID: model.deviceType.rawValue, features: offered,
                                  queueSizes: model.queueSizes, config: model.config)
        queues = Array(repeating: nil, count: model.queueSizes.count)
    }

    public func read(offset: UInt64, size: Int) -> UInt64 { transport.read(offset: offset, size: size) }

    /// Whether a guest write at `offset` can run the device model, and through it the back end
    /// (files, sockets): a Status write (0 resets the model), QueueNotify (serves a queue) and
    /// configuration space. Every other register only changes the transport's own state, and
    /// reads never reach the model. The VMM runs these writes where back-end I/O is allowed.
    public static func writeMayReachModel(offset: UInt64) -> Bool {
        offset == MMIOTransport.Register.status.rawValue || offset == MMIOTransport.Register.queueNotify.rawValue
            || offset >= MMIOTransport.configOffset
    }

    /// A guest write to the window. Returns true when the driver should be interrupted.
    public func write(offset: UInt64, size: Int, value: UInt64, ram: GuestRAM) -> Bool {
        var interrupt = false
        for action in transport.write(offset: offset, size: size, value: value) {
            switch action {
            case .reset:
                model.reset()
                queues = Array(repeating: nil, count: queues.count)
                transport.configChanged(model.config)
                _ = transport.write(offset: MMIOTransport.Register.interruptAck.rawValue, size: 4, value: 0xffff_ffff)
            case .featuresAccepted:
                break
            case .queueReady(let i, let q):
                do {
                    try q.validate(in: ram)
                    queues[i] = q
                } catch {
                    ringErrors += 1
                    transport.disableQueue(i)
                }
            case .driverOK:
                break
            case .notify(let i):
                interrupt = notify(queue: i, ram: ram) || interrupt
            case .configWrite(let o, let bytes):
                model.configWrite(offset: o, bytes: bytes)
            }
        }
        return interrupt
    }

    func replaceQueues(_ qs: [SplitQueue?]) { queues = qs }
    func signalUsedBuffers() { transport.signalUsedBuffers() }
    func markBroken() {
        ringErrors += 1
        transport.needsReset()
    }

    /// Whether queue `index` still has chains the model did not take (its back end was full, or
    /// more than a queue's worth was published): the VMM comes back to it shortly.
    /// A receive queue's posted buffers are not work: they wait for input, which the back end's
    /// descriptor announces (otherwise an idle device would be polled every millisecond).
    public func hasPending(queue index: Int, ram: GuestRAM) -> Bool {
        guard transport.running, queues.indices.contains(index), let q = queues[index] else { return false }
        if let input = model as? VirtioBackendInput, input.inputQueue == index { return false }
        return q.hasPending(in: ram)
    }

    /// Nanoseconds until queue `index`, deferred by its rate limit, should be served again.
    public func deferral(queue index: Int) -> UInt64? {
        guard limiters.indices.contains(index) else { return nil }
        return limiters[index]?.deferredFor
    }

    /// The driver rang queue `index`'s doorbell (from an ioeventfd, or a QueueNotify exit), or a
    /// deferral expired. `now` is monotonic nanoseconds, for the rate limiter.
    /// Returns true when the driver should be interrupted.
    public func notify(queue index: Int, ram: GuestRAM, now: UInt64 = 0) -> Bool {
        guard transport.running, queues.indices.contains(index), var q = queues[index] else { return false }
        let limit = limiters[index]
        limit?.start(at: now)
        do {
            let used = try model.process(queue: index, &q, ram: ram, limit: limit)
            let wanted = used && q.shouldNotify(ram)
            queues[index] = q
            guard wanted else { return false }
            transport.signalUsedBuffers()
            return true
        } catch {
            // §2.1.2: a ring the device cannot trust is reported, not guessed at.
            ringErrors += 1
            queues[index] = nil
            transport.needsReset()
            return true
        }
    }
}

extension SplitQueue {
    /// Pops every available chain and hands it to `handle`, which returns the number of bytes it
    /// wrote into the chain. Broken chains are returned to the driver with nothing written.
    /// Returns whether anything was used.
    ///
    /// Under a rate limit (`limit`), a chain whose operation or bytes (readable plus writable
    /// length) the buckets cannot cover yet is put back in the queue, and the limiter records how
    /// long to wait: the guest is slowed, its requests are not failed.
    public mutating func serveAll(ram: GuestRAM, limit: QueueLimiter? = nil, onBroken: (VirtqueueError) -> Void = { _ in },
                                  _ handle: (DescriptorChain) -> UInt32) throws(VirtqueueError) -> Bool {
        var used = false
        // At most one queue's worth per call, so a driver that keeps publishing cannot starve
        // the other queues and devices.
        for _ in 0..<Int(size) {
            guard let next = try pop(from: ram) else { break }
            let written: UInt32
            switch next.result {
            case .success(let chain):
                if let limit, !limit.admit(bytes: chain.readableLength + chain.writableLength) {
                    undoPop()
                    return used
                }
                written = handle(chain)
            case .failure(let e): onBroken(e); written = 0
            }
            if next.head < size { try push(head: next.head, written: written, to: ram) }
            used = true
        }
        return used
    }
}

/// What `VirtioBackendInput.receive` did.
public struct ReceiveResult: Equatable, Sendable {
    /// Chains were used: the driver may need an interrupt.
    public var used: Bool
    /// Input is waiting but the guest posted no buffer for it: stop polling the back end until the
    /// driver next rings a doorbell of this device (otherwise the device thread would spin).
    public var needsBuffers: Bool
    public init(used: Bool, needsBuffers: Bool) { self.used = used; self.needsBuffers = needsBuffers }
}

/// A device model whose back end produces input on its own (network frames, stream data). The VMM
/// polls `inputDescriptors` on the device thread and calls `receive` when one is readable.
public protocol VirtioBackendInput: VirtioDeviceModel {
    /// What is readable when there is input for the guest (the back ends' sockets).
    var inputHandles: [WaitHandle] { get }
    /// Moves ready input into the guest's receive queue(s) (`queues[i]` is nil while queue i is
    /// not ready), admitting it through `limits[inputQueue]` (`limits[i]` is queue i's rate
    /// limit, nil: none; empty: no limits at all). Throws only for ring-level corruption, as
    /// `process` does.
    func receive(queues: inout [SplitQueue?], ram: GuestRAM, limits: [QueueLimiter?]) throws(VirtqueueError) -> ReceiveResult
    /// Output is backed up in the device; see the default below.
    var hasOutputBacklog: Bool { get }
    /// The queue input goes to: its rate limit (if any) applies to `receive`.
    var inputQueue: Int { get }
}

extension VirtioBackendInput {
    /// Guest data waits for a back end that could not take it (a full socket): the VMM calls
    /// `receive` again soon, which retries, since no doorbell or readable descriptor may come.
    public var hasOutputBacklog: Bool { false }
    public var inputQueue: Int { 0 }

    /// Moves ready input without rate limits.
    public func receive(queues: inout [SplitQueue?], ram: GuestRAM) throws(VirtqueueError) -> ReceiveResult {
        try receive(queues: &queues, ram: ram, limits: [])
    }
}

extension Array where Element == QueueLimiter? {
    /// Queue `index`'s limiter, or nil (none, or no such queue).
    public func limit(_ index: Int) -> QueueLimiter? { indices.contains(index) ? self[index] : nil }
}

extension VirtioMMIODevice {
    /// Nanoseconds until held input may go to the guest, when the input queue's rate limit
    /// stopped the last `backendInput`; nil when it did not.
    public var inputDeferral: UInt64? {
        guard let input = model as? VirtioBackendInput else { return nil }
        return deferral(queue: input.inputQueue)
    }

    /// The back end has input. Returns (interrupt wanted, stop polling until the next doorbell).
    /// Under a rate limit on the input queue, input the buckets cannot cover waits in the device
    /// and `inputDeferral` says for how long; `now` is monotonic nanoseconds.
    public func backendInput(ram: GuestRAM, now: UInt64 = 0) -> (interrupt: Bool, needsBuffers: Bool) {
        guard let input = model as? VirtioBackendInput else { return (false, false) }
        // The input queue's pass starts now; the other queues' limiters (a device may resume
        // output from here) just learn the time.
        for (i, l) in limiters.enumerated() { if i == input.inputQueue { l?.start(at: now) } else { l?.advance(to: now) } }
        // Before DRIVER_OK (or after a reset) there is nowhere to put input: stop polling until the
        // driver rings a doorbell, or a waiting frame would keep the device thread spinning.
        guard transport.running else { return (false, true) }
        var qs = queues
        let before = queues.map { $0?.nextUsed }
        do {
            let r = try input.receive(queues: &qs, ram: ram, limits: limiters)
            var interrupt = false
            for i in qs.indices {
                // Only queues that gained used entries can want an interrupt.
                guard var q = qs[i], q.nextUsed != before[i] else { continue }
                if q.shouldNotify(ram) { interrupt = true }
                qs[i] = q
            }
            replaceQueues(qs)
            if interrupt { signalUsedBuffers() }
            return (interrupt, r.needsBuffers)
        } catch {
            markBroken()
            return (true, false)
        }
    }
}
