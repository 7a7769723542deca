import Boot
import Devices
import HostOS
import KVM
import Synchronization
import Virtio

extension GuestMemory: GuestRAM {
    public func copyOut(at address: UInt64, count: Int) -> [UInt8]? { try? read(at: address, count: count) }
    public func copyIn(_ bytes: [UInt8], at address: UInt64) -> Bool { (try? write(bytes, at: address)) != nil }
    public func isRAM(_ address: UInt64, length: UInt64) -> Bool { contains(address, length: length) }
}

/// Guest RAM as a guest program's devices may see it: device reads only where the program may
/// read at CPL3, device writes only where it may write.
///
/// Without this a program could hand a device a buffer in its page tables, its IDT or its own
/// read-only code and have the device write there for it: DMA is confined to what the guest
/// could do itself.
final class ProgramDMAView: GuestRAM, DirectFileTarget, @unchecked Sendable {
    // Sendable: immutable; GuestMemory is thread-safe for copies.
    let memory: GuestMemory
    let plan: BootPlan

    init(memory: GuestMemory, plan: BootPlan) { self.memory = memory; self.plan = plan }

    func copyOut(at address: UInt64, count: Int) -> [UInt8]? {
        guard count >= 0, plan.userCanAccess(address, length: UInt64(count), rights: [.user]) else { return nil }
        return memory.copyOut(at: address, count: count)
    }

    func copyIn(_ bytes: [UInt8], at address: UInt64) -> Bool {
        guard plan.userCanAccess(address, length: UInt64(bytes.count), rights: [.user, .writable]) else { return false }
        return memory.copyIn(bytes, at: address)
    }

    func isRAM(_ address: UInt64, length: UInt64) -> Bool {
        plan.userCanAccess(address, length: length, rights: [.user]) && memory.contains(address, length: length)
    }

    func isWritable(_ address: UInt64, length: UInt64) -> Bool {
        plan.userCanAccess(address, length: length, rights: [.user, .writable]) && memory.contains(address, length: length)
    }

    func readFile(_ fd: Int32, fileOffset: UInt64, into address: UInt64, count: Int) -> Bool {
        guard count >= 0, isWritable(address, length: UInt64(count)) else { return false }
        return memory.readFile(fd, fileOffset: fileOffset, into: address, count: count)
    }

    func readFile(_ fd: Int32, fileOffset: UInt64, into ranges: [(address: UInt64, count: Int)]) -> Bool {
        for r in ranges { guard r.count >= 0, isWritable(r.address, length: UInt64(r.count)) else { return false } }
        return memory.readFile(fd, fileOffset: fileOffset, into: ranges)
    }

    func writeFile(_ fd: Int32, fileOffset: UInt64, from ranges: [(address: UInt64, count: Int)]) -> Bool {
        for r in ranges { guard r.count >= 0, isRAM(r.address, length: UInt64(r.count)) else { return false } }
        return memory.writeFile(fd, fileOffset: fileOffset, from: ranges)
    }
}

/// A virtio device attached to a VM: its window, its state behind a lock, its doorbells.
final class AttachedDevice: Sendable {
    let window: DeviceWindow
    let device: Locked<VirtioMMIODevice>
    /// One ioeventfd per queue (nil when the host's KVM has no ioeventfd support: notifications
    /// then arrive as MMIO exits and are served on the vCPU thread).
    let doorbells: [EventFD]
    /// The irqfd of the device's interrupt line (Linux guests); nil for guest programs, which poll.
    let interrupt: EventFD?

    init(window: DeviceWindow, device: VirtioMMIODevice, doorbells: [EventFD], interrupt: EventFD? = nil) {
        self.window = window
        self.device = Locked(device)
        self.doorbells = doorbells
        self.interrupt = interrupt
    }

    /// Tells the driver about used buffers or a configuration change.
    func raiseInterrupt(if wanted: Bool) {
        if wanted { interrupt?.signal() }
    }
}

/// Device work that a vCPU thread hands to the device thread and waits for (issue 9).
///
/// A vCPU thread answers MMIO exits, and its seccomp filter allows only what that takes: no
/// disk or socket I/O, no `close`. Yet a guest reaches a device's back end through plain MMIO
/// writes too: a Status write of 0 resets the device (vsock closes its host connections), a
/// QueueNotify whose value is not the one the ioeventfd matches arrives as an exit and serves a
/// queue (disk reads, socket sends), a configuration write goes to the model. Such writes are
/// posted here and carried out on the device thread, in order, while the vCPU waits: the guest
/// sees exactly what it saw when they ran on its own thread, and no back-end call ever runs on a
/// vCPU thread.
final class DeviceMailbox: Sendable {
    struct Request: Sendable {
        let device: AttachedDevice
        let offset: UInt64
        let size: Int
        let value: UInt64
        let reply: MailboxReply
        let ticket: UInt64
    }

    /// Readable when requests are waiting (the device thread polls it).
    let bell: EventFD
    private let requests = Mutex<[Request]>([])

    init() throws(KVMError) { bell = try hostOS(EventFD.init) }

    func post(_ r: Request) {
        requests.withLock { $0.append(r) }
        bell.signal()
    }

    /// Every waiting request, oldest first.
    func take() -> [Request] {
        requests.withLock { r in
            let all = r
            r = []
            return all
        }
    }
}

/// Where the device thread tells one vCPU thread that its request is done: the request's ticket
/// (a per-thread count) and an eventfd to wake it. One per vCPU thread, made before the threads
/// start (a vCPU thread creates no descriptors).
final class MailboxReply: Sendable {
    let event: EventFD
    private let completed = Atomic<UInt64>(0)

    init() throws(KVMError) { event = try hostOS(EventFD.init) }

    func complete(_ ticket: UInt64) {
        completed.store(ticket, ordering: .releasing)
        event.signal()
    }

    func isDone(_ ticket: UInt64) -> Bool { completed.load(ordering: .acquiring) >= ticket }
}

/// The devices of one VM, found by guest-physical address.
final class DeviceBus: Sendable {
    let devices: [AttachedDevice]
    let ram: GuestRAM & Sendable
    /// Where vCPU threads post writes that can reach a back end; nil: they run them themselves
    /// (the --no-ioeventfd benchmark mode, which is never jailed).
    let mailbox: DeviceMailbox?

    init(devices: [AttachedDevice], ram: GuestRAM & Sendable, mailbox: DeviceMailbox? = nil) {
        self.devices = devices
        self.ram = ram
        self.mailbox = mailbox
    }

    /// A guest's MMIO write to device `d`, on the vCPU thread that took the exit. Writes that can
    /// reach the device's back end go to the device thread (see `DeviceMailbox`); this thread
    /// waits for them, or until `waker` says the VM is ending (`abandon` then returns true).
    func guestWrite(_ d: AttachedDevice, offset: UInt64, size: Int, value: UInt64,
                    reply: MailboxReply, ticket: inout UInt64, waker: EventFD, abandon: () -> Bool) {
        guard let mailbox, VirtioMMIODevice.writeMayReachModel(offset: offset) else {
            write(d, offset: offset, size: size, value: value)
            return
        }
        ticket &+= 1
        mailbox.post(.init(device: d, offset: offset, size: size, value: value, reply: reply, ticket: ticket))
        while !reply.isDone(ticket) && !abandon() {
            _ = waitReadable([reply.event.fd.rawValue, waker.fd.rawValue], timeoutMilliseconds: -1)
            _ = reply.event.drain()
        }
    }

    func device(at address: UInt64) -> (AttachedDevice, UInt64)? {
        for d in devices where address >= d.window.base && address - d.window.base < d.window.size {
            return (d, address - d.window.base)
        }
        return nil
    }

    func read(_ d: AttachedDevice, offset: UInt64, size: Int) -> UInt64 {
        d.device.withLock { $0.read(offset: offset, size: size) }
    }

    func write(_ d: AttachedDevice, offset: UInt64, size: Int, value: UInt64) {
        d.raiseInterrupt(if: d.device.withLock { $0.write(offset: offset, size: size, value: value, ram: ram) })
    }

    /// Serves queue `q` of `d` now; returns when it must be served again if its rate limit
    /// deferred a request (monotonic nanoseconds), nil otherwise.
    func serve(_ d: AttachedDevice, queue q: Int) -> UInt64? {
        let now = monotonicNanoseconds()
        let (interrupt, deferral, pending) = d.device.withLock { dev in
            (dev.notify(queue: q, ram: ram, now: now), dev.deferral(queue: q), dev.hasPending(queue: q, ram: ram))
        }
        d.raiseInterrupt(if: interrupt)
        if let deferral { return now + deferral }
        // Work left with no rate limit in the way: the back end was full (a socket's buffer) or
        // the driver published more than one pass takes. Come back in a millisecond rather than
        // wait for a doorbell the driver may never ring.
        return pending ? now + 1_000_000 : nil
    }

    /// After serving a doorbell, the device thread watches that queue this long before it goes
    /// back to sleep: a driver that submits its next request at once (a guest program issuing
    /// requests back to back) is served without the wake-up of a sleeping thread, which costs
    /// tens of microseconds on these nested hosts. Bounded, so an idle guest costs no CPU.
    static let busyPollNanoseconds: UInt64 = 30_000
    /// After a watch that found nothing, the queue's next this-many doorbells are not watched.
    static let watchBackoff = 8

    /// The device thread: waits on every doorbell and serves the queue that rang, until `stop`
    /// is signalled. Queue processing never runs on a vCPU thread when doorbells exist.
    func serve(until stop: EventFD) {
        // Doorbells: one per queue of each device.
        var bells: [(device: Int, queue: Int, fd: EventFD)] = []
        for (di, d) in devices.enumerated() {
            for (q, bell) in d.doorbells.enumerated() { bells.append((di, q, bell)) }
        }
        // Back-end inputs (sockets), read again every pass: a back end whose peer hung up stops
        // listing its descriptor (a closed socket is readable for ever and would spin this thread).
        let inputModels: [(device: Int, model: VirtioBackendInput)] = devices.enumerated().compactMap { di, d in
            d.device.withLock { $0.model as? VirtioBackendInput }.map { (di, $0) }
        }
        func inputQueue(of device: Int) -> Int? { inputModels.first { $0.device == device }?.model.inputQueue }
        // Devices whose input waits for the guest to post buffers: their inputs are not polled
        // until the device's next doorbell (otherwise a readable socket would spin this thread).
        var starved = Set<Int>()
        // Queues a rate limit deferred, and when to serve them again.
        var deferred: [Int: UInt64] = [:]
        // Devices whose input a rate limit holds back, and when to deliver it: their inputs are
        // not polled meanwhile (the held input would make them readable for ever).
        var inputDeferred: [Int: UInt64] = [:]
        // Doorbells served in the last pass: their queues are watched for a moment before
        // sleeping (see `busyPollNanoseconds`).
        var recent: [Int] = []
        // Per doorbell: how many of its next wake-ups skip the watching, after a watch found
        // nothing (a driver that takes longer between requests: it prepares data, or is idle).
        var skipWatch = [Int](repeating: 0, count: bells.count)
        while true {
            var timeout: Int32 = -1
            if !recent.isEmpty {
                let until = monotonicNanoseconds() + Self.busyPollNanoseconds
                var found: Int?
                spin: while monotonicNanoseconds() < until {
                    for i in recent where devices[bells[i].device].device.withLock({ $0.hasPending(queue: bells[i].queue, ram: ram) }) {
                        found = i
                        break spin
                    }
                }
                if let i = found {
                    deferred[i] = serve(devices[bells[i].device], queue: bells[i].queue)
                    recent = deferred[i] == nil ? [i] : []
                    timeout = 0   // still look at everything else, without sleeping
                } else {
                    // Nothing came: watching this queue costs CPU (which the host's own writeback,
                    // for one, may need) and gains nothing; skip it for a while.
                    for i in recent { skipWatch[i] = Self.watchBackoff }
                    recent = []
                }
            }
            if timeout != 0, let next = (Array(deferred.values) + Array(inputDeferred.values)).min() {
                let now = monotonicNanoseconds()
                timeout = next <= now ? 0 : Int32(clamping: (next - now + 999_999) / 1_000_000)
            }
            // Devices whose output waits for a full back end (a host socket): nothing signals
            // when it drains, so try again in a millisecond.
            let backlogged = inputModels.filter { di, m in devices[di].device.withLock { _ in m.hasOutputBacklog } }.map(\.device)
            if !backlogged.isEmpty, timeout != 0 { timeout = timeout < 0 ? 1 : min(timeout, 1) }
            var polledInputs: [(device: Int, fd: Int32)] = []
            for (di, m) in inputModels where !starved.contains(di) && inputDeferred[di] == nil {
                let handles = devices[di].device.withLock { _ in m.inputHandles }
                for h in handles { polledInputs.append((di, h.hostDescriptor)) }
            }
            let fds = [stop.fd.rawValue] + bells.map { $0.fd.fd.rawValue } + polledInputs.map(\.fd)
                + (mailbox.map { [$0.bell.fd.rawValue] } ?? [])
            let ready = waitReadable(fds, timeoutMilliseconds: timeout)
            if ready.first == true { return }
            var inputDevices = Set(backlogged)
            if let mailbox, ready.last == true {
                // Writes the vCPU threads handed over, in the order they were posted.
                _ = mailbox.bell.drain()
                let now = monotonicNanoseconds()
                for r in mailbox.take() {
                    write(r.device, offset: r.offset, size: r.size, value: r.value)
                    r.reply.complete(r.ticket)
                    guard let di = devices.firstIndex(where: { $0 === r.device }) else { continue }
                    // As after a doorbell: the device may have new receive buffers (or was reset and
                    // set up again), and a queue it served may have been deferred or left work.
                    starved.remove(di)
                    if inputDeferred[di] == nil, inputModels.contains(where: { $0.device == di }) { inputDevices.insert(di) }
                    let (waits, pending) = r.device.device.withLock { dev in
                        (r.device.doorbells.indices.map { dev.deferral(queue: $0) },
                         r.device.doorbells.indices.map { dev.hasPending(queue: $0, ram: ram) })
                    }
                    for (i, b) in bells.enumerated() where b.device == di && deferred[i] == nil && b.queue < waits.count {
                        if let w = waits[b.queue] { deferred[i] = now + w } else if pending[b.queue] { deferred[i] = now + 1_000_000 }
                    }
                }
            }
            for (i, isReady) in ready.dropFirst().enumerated() where isReady && i < bells.count + polledInputs.count {
                if i < bells.count {
                    let b = bells[i]
                    b.fd.drain()
                    deferred[i] = serve(devices[b.device], queue: b.queue)
                    if skipWatch[i] > 0 {
                        skipWatch[i] -= 1
                    } else if deferred[i] == nil {
                        recent.append(i)
                    }
                    // A doorbell may have posted receive buffers, or (vsock) made replies for the
                    // receive queue: run the input side now rather than on the next poll.
                    starved.remove(b.device)
                    if inputDeferred[b.device] == nil, inputModels.contains(where: { $0.device == b.device }) {
                        inputDevices.insert(b.device)
                    }
                } else {
                    inputDevices.insert(polledInputs[i - bells.count].device)
                }
            }
            var now = monotonicNanoseconds()
            for (di, when) in inputDeferred where when <= now {
                inputDeferred[di] = nil
                inputDevices.insert(di)
            }
            for di in inputDevices {
                let d = devices[di]
                let (interrupt, needsBuffers, wait, queueWaits) = d.device.withLock { dev in
                    let r = dev.backendInput(ram: ram, now: now)
                    // The input side may also have resumed an output queue (vsock TX after its
                    // replies drained) and had its rate limit defer it.
                    let waits = d.doorbells.indices.map { dev.deferral(queue: $0) }
                    return (r.interrupt, r.needsBuffers, dev.inputDeferral, waits)
                }
                d.raiseInterrupt(if: interrupt)
                if needsBuffers { starved.insert(di) }
                if let wait { inputDeferred[di] = now + wait }
                for (i, b) in bells.enumerated() where b.device == di && deferred[i] == nil {
                    if b.queue < queueWaits.count, b.queue != inputQueue(of: di), let w = queueWaits[b.queue] {
                        deferred[i] = now + w
                    }
                }
            }
            now = monotonicNanoseconds()
            for (i, when) in deferred where when <= now {
                deferred[i] = serve(devices[bells[i].device], queue: bells[i].queue)
            }
        }
    }
}
