import ArgumentParser
import HostOS
import Supervisor
import WorkerProtocol
#if canImport(Glibc)
import Glibc
#endif

/// What `bulkhead run` hands its worker: the one configuration, and the descriptors its indexes
/// name, in order. Everything is opened here, by the launcher, with the caller's permissions;
/// the worker opens nothing.
struct RunPlan {
    var configuration: VMConfiguration
    var descriptors: [FileDescriptor]
    /// Signalled by Ctrl-A x on the console: the launcher stops the worker.
    var stopRequest: EventFD
}

extension Run {
    /// Opens what the VM needs and builds its configuration. Bad paths end the run with the
    /// status README.md gives (65 for images and disks, 69 without /dev/kvm, 70 otherwise).
    func plan() throws -> RunPlan {
        var descriptors: [FileDescriptor] = []
        func add(_ fd: FileDescriptor) -> UInt8 {
            descriptors.append(fd)
            return UInt8(descriptors.count - 1)
        }
        func open(_ path: String, what: String, status: Int32, access: OpenAccess = .read) throws -> FileDescriptor {
            // Paths the caller named, with the caller's permissions (Caller.open).
            do { return try Caller.current.open(path, what: what, access: access) } catch {
                printError("\(error)")
                throw ExitCode(status)
            }
        }
        let imageSpec: VMConfiguration.Image
        if let kernel {
            let k = add(try open(kernel, what: "kernel", status: RunEnd.badImage))
            let i = try initrd.map { add(try open($0, what: "initrd", status: RunEnd.badImage)) }
            imageSpec = .kernel(descriptor: k, initrd: i)
        } else {
            let path: String
            if let image { path = image } else {
                guard let p = GuestCatalog.locate(GuestCatalog.defaultGuest) else {
                    printError("the built-in '\(GuestCatalog.defaultGuest)' guest is not built; run Guest/build.sh (searched: \(GuestCatalog.searchDirectories.joined(separator: ", ")))")
                    throw ExitCode(RunEnd.unavailable)
                }
                path = p
            }
            imageSpec = .program(descriptor: add(try open(path, what: "guest image", status: RunEnd.badImage)))
        }
        // A fixed system path, opened by the launcher itself (symbolic links followed).
        let kvmFD: FileDescriptor
        do { kvmFD = try FileDescriptor.openChecked("/dev/kvm", what: "KVM device", access: .readWrite, kind: .characterDevice, followSymlinks: true) } catch {
            printError("\(error)")
            throw ExitCode(RunEnd.unavailable)
        }
        let kvm = add(kvmFD)
        let consoleIndex = add(try console.map { try open($0, what: "console file", status: RunEnd.internalError, access: .createOrTruncate) }
                               ?? .standardOutput)
        let stopRequest: EventFD
        do { stopRequest = try EventFD() } catch {
            printError("\(error)")
            throw ExitCode(RunEnd.internalError)
        }
        let inputIndex = try consoleInput(stop: { stopRequest.signal() }).map(add)
        var devices: [VMConfiguration.Device] = []
        var limits: [VMConfiguration.Limit] = []
        for (path, readOnly) in disk.map({ ($0, false) }) + readOnlyDisks.map({ ($0, true) }) {
            let fd = try open(path, what: "disk", status: RunEnd.badImage, access: readOnly ? .read : .readWrite)
            devices.append(.disk(descriptor: add(fd), readOnly: readOnly))
            limits.append(.init(operationsPerSecond: diskOpsLimit ?? 0, bytesPerSecond: diskBytesLimit ?? 0))
        }
        if let path = netListen ?? netConnect {
            devices.append(.net(descriptor: add(try networkSocket(path)), mac: mac.flatMap(Run.parseMAC) ?? Run.randomMAC()))
            limits.append(.init(operationsPerSecond: netOpsLimit ?? 0, bytesPerSecond: netBytesLimit ?? 0))
        }
        if rng {
            devices.append(.rng)
            limits.append(.init(bytesPerSecond: rngBytesLimit ?? 0))
        }
        if let vsock {
            // The worker cannot reach "PATH_P": this process connects for it (VsockBrokerService),
            // on a thread that takes the caller's credentials.
            do {
                let (mine, theirs) = try UnixSeqpacket.pair()
                devices.append(.vsock(broker: add(theirs), cid: UInt32(vsockCID)))
                limits.append(.init(operationsPerSecond: vsockOpsLimit ?? 0, bytesPerSecond: vsockBytesLimit ?? 0))
                let caller = Caller.current
                _ = try OSThread.spawn { VsockBrokerService.serve(mine, pathPrefix: vsock, caller: caller) }
            } catch {
                printError("cannot attach the vsock device: \(error)")
                throw ExitCode(RunEnd.internalError)
            }
        }
        let configuration = VMConfiguration(
            memoryMiB: UInt32(memory), vcpus: UInt16(vcpus), commandLine: cmdline,
            timeoutMilliseconds: timeoutMilliseconds ?? 0, image: imageSpec, kvm: kvm,
            console: consoleIndex, devices: devices, limits: limits, hiddenCPUFeatures: hiddenFeatures,
            faultHandlers: !noFaultHandlers, doorbellsInKernel: !noIoeventfd, consoleInput: inputIndex)
        return RunPlan(configuration: configuration, descriptors: descriptors, stopRequest: stopRequest)
    }

    /// Standard input for a kernel guest's console (COM1), relayed through a pipe; nil when there
    /// is none to give: a guest program (it cannot reach ports), --no-console-input, a closed
    /// standard input, or a terminal of which this process is not in the foreground (a
    /// background job that read it would be stopped by SIGTTIN).
    func consoleInput(stop: @escaping @Sendable () -> Void) throws -> FileDescriptor? {
        guard kernel != nil, !noConsoleInput else { return nil }
        do {
            return try ConsoleInputRelay.standardInput(say: { printError($0) }, stop: stop)
        } catch {
            printError("\(error)")
            throw ExitCode(RunEnd.internalError)
        }
    }

    /// Attaches the network device's socket: listens (bounded by --timeout, or
    /// UnixSeqpacket.defaultListenSeconds) or connects, with the caller's credentials. Failures
    /// are reported here; a termination signal while listening exits 128 + the signal.
    func networkSocket(_ path: String) throws -> FileDescriptor {
        do {
            if netListen != nil {
                return try UnixSeqpacket.listenAndAccept(path, timeoutSeconds: timeout ?? UnixSeqpacket.defaultListenSeconds)
            }
            return try UnixSeqpacket.connect(path, caller: .current)
        } catch {
            printError("cannot attach the network device on \(path): \(error)")
            if case .interrupted(_, let signal)? = error as? ListenError { throw ExitCode(128 + signal) }
            throw ExitCode(RunEnd.internalError)
        }
    }

    static func parseMAC(_ text: String) -> [UInt8]? {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        let bytes = parts.compactMap { $0.count == 2 ? UInt8($0, radix: 16) : nil }
        guard bytes.count == 6, bytes[0] & 1 == 0 else { return nil }
        return bytes
    }

    static func randomMAC() -> [UInt8] {
        var b = randomBytes(6) ?? [0, 0, 0, 0, 0, 1]
        b[0] = (b[0] & 0xfe) | 0x02 // unicast, locally administered
        return b
    }
}
