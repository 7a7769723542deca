import Boot
import GuestInterface
import HostOS
import VMM
import WorkerProtocol
#if canImport(Glibc)
import Glibc
#endif

/// `bulkhead-worker --standalone IMAGE [options]`: one VM in this process, no launcher, no jail.
/// The options are a subset of `bulkhead run`'s, with the same meaning and the same checks; the
/// VM is built from the same `VMConfiguration` as the launcher-driven mode and its end is told
/// by the same table (RunEnd). Devices that need a launcher (network, vsock) are not offered.
struct StandaloneOptions {
    var image: String?
    var kernel: String?
    var initrd: String?
    var memoryMiB: UInt64 = 64
    var vcpus = 1
    var commandLine = ""
    var timeoutMilliseconds: UInt64?
    var console: String?
    var disks: [(path: String, readOnly: Bool)] = []
    var rng = false
    var diskLimit = VMConfiguration.Limit()
    var rngBytesPerSecond: UInt64 = 0
    var hiddenFeatures: [String] = []
    var statistics = false
    var reportTiming = false
    var doorbellsInKernel = true
    var faultHandlers = true
    var consoleInput = true
    var help = false

    static let usage = """
        usage: bulkhead-worker --standalone [IMAGE] [options]
          Runs one VM in this process, without a launcher or a jail (a benchmark baseline; use
          `bulkhead run` otherwise). With no IMAGE and no --kernel, nothing is run.
          --kernel PATH            boot this Linux kernel instead of a guest program
          --initrd PATH            initial RAM disk for --kernel
          --memory MIB             guest memory (default 64)
          --vcpus N                number of vCPUs (default 1)
          --cmdline TEXT           command line passed to the guest
          --timeout SECONDS        stop the guest after this long (0.001 to 31622400)
          --console PATH           write the console to this file instead of standard output
          --disk PATH              attach a raw disk image (repeatable)
          --read-only-disk PATH    attach a raw disk image read-only (repeatable)
          --rng                    attach a virtio-rng device
          --disk-ops-limit N       limit each disk to N requests per second
          --disk-bytes-limit N     limit each disk to N bytes per second
          --rng-bytes-limit N      limit the rng to N bytes per second
          --hide-cpu-feature NAME  hide a CPU feature (\(CPUIDPolicy.Feature.allCases.map(\.rawValue).joined(separator: ", ")))
          --no-console-input       do not connect standard input to a kernel's console
          --stats                  print hypercall and exit statistics at the end
          --report-timing          print monotonic timestamps (ns) of start and first hypercall
          --no-ioeventfd           serve queue doorbells as MMIO exits
          --no-fault-handlers      no IDT and fault stubs for a guest program
        """

    struct UsageError: Error, CustomStringConvertible { var description: String }

    /// Parses the arguments after `--standalone`. Every number is checked against the range
    /// `bulkhead run` allows; an option given twice (unless repeatable), a missing value or an
    /// unknown option is an error.
    static func parse(_ arguments: [String]) throws(UsageError) -> StandaloneOptions {
        var o = StandaloneOptions()
        var seen = Set<String>()
        var i = 0
        func value(_ name: String, _ inline: String?) throws(UsageError) -> String {
            if let inline { return inline }
            i += 1
            guard i < arguments.count else { throw UsageError(description: "\(name) needs a value") }
            return arguments[i]
        }
        func number(_ name: String, _ text: String, _ range: ClosedRange<UInt64>) throws(UsageError) -> UInt64 {
            guard let n = UInt64(text), range.contains(n) else {
                throw UsageError(description: "\(name) must be a whole number between \(range.lowerBound) and \(range.upperBound), not '\(text.prefix(40))'")
            }
            return n
        }
        while i < arguments.count {
            let argument = arguments[i]
            guard argument.hasPrefix("-") else {
                guard o.image == nil else { throw UsageError(description: "more than one IMAGE ('\(o.image ?? "")' and '\(argument.prefix(80))')") }
                o.image = argument
                i += 1
                continue
            }
            var name = argument
            var inline: String?
            if let eq = argument.firstIndex(of: "=") {
                name = String(argument[..<eq])
                inline = String(argument[argument.index(after: eq)...])
            }
            let repeatable: Set<String> = ["--disk", "--read-only-disk", "--hide-cpu-feature"]
            if !repeatable.contains(name) {
                guard seen.insert(name).inserted else { throw UsageError(description: "\(name) given twice") }
            }
            let flags: Set<String> = ["--rng", "--stats", "--report-timing", "--no-ioeventfd", "--no-fault-handlers", "--no-console-input", "--help", "-h"]
            if flags.contains(name), inline != nil { throw UsageError(description: "\(name) takes no value") }
            switch name {
            case "--kernel": o.kernel = try value(name, inline)
            case "--initrd": o.initrd = try value(name, inline)
            case "--memory": o.memoryMiB = try number(name, try value(name, inline), 1...(GuestLayout.maxMemory >> 20))
            case "--vcpus": o.vcpus = Int(try number(name, try value(name, inline), 1...UInt64(GuestLayout.maxVCPUs)))
            case "--cmdline": o.commandLine = try value(name, inline)
            case "--timeout":
                let text = try value(name, inline)
                guard let seconds = Double(text), let ms = VMConfiguration.timeoutMilliseconds(seconds: seconds) else {
                    throw UsageError(description: "--timeout must be \(VMConfiguration.timeoutRangeDescription), not '\(text.prefix(40))'")
                }
                o.timeoutMilliseconds = ms
            case "--console": o.console = try value(name, inline)
            case "--disk": o.disks.append((try value(name, inline), false))
            case "--read-only-disk": o.disks.append((try value(name, inline), true))
            case "--hide-cpu-feature":
                let f = try value(name, inline)
                guard CPUIDPolicy.Feature(rawValue: f) != nil else {
                    throw UsageError(description: "unknown CPU feature '\(f.prefix(40))' (known: \(CPUIDPolicy.Feature.allCases.map(\.rawValue).joined(separator: ", ")))")
                }
                o.hiddenFeatures.append(f)
            case "--rng": o.rng = true
            case "--disk-ops-limit": o.diskLimit.operationsPerSecond = try number(name, try value(name, inline), 1...UInt64.max)
            case "--disk-bytes-limit": o.diskLimit.bytesPerSecond = try number(name, try value(name, inline), 1...UInt64.max)
            case "--rng-bytes-limit": o.rngBytesPerSecond = try number(name, try value(name, inline), 1...UInt64.max)
            case "--stats": o.statistics = true
            case "--report-timing": o.reportTiming = true
            case "--no-ioeventfd": o.doorbellsInKernel = false
            case "--no-fault-handlers": o.faultHandlers = false
            case "--no-console-input": o.consoleInput = false
            case "--help", "-h": o.help = true
            default:
                throw UsageError(description: "unknown option '\(name.prefix(80))' (the network and vsock devices need `bulkhead run`)")
            }
            i += 1
        }
        if o.help { return o }
        if o.kernel != nil && o.image != nil { throw UsageError(description: "give either IMAGE or --kernel, not both") }
        if o.kernel == nil && o.image == nil { throw UsageError(description: "give an IMAGE or --kernel") }
        if o.initrd != nil && o.kernel == nil { throw UsageError(description: "--initrd needs --kernel") }
        if o.disks.count + (o.rng ? 1 : 0) > VMConfiguration.maxDevices {
            throw UsageError(description: "at most \(VMConfiguration.maxDevices) devices")
        }
        if o.hiddenFeatures.count > VMConfiguration.maxHiddenFeatures {
            throw UsageError(description: "at most \(VMConfiguration.maxHiddenFeatures) --hide-cpu-feature")
        }
        return o
    }
}

func standaloneSay(_ line: String) {
    try? FileDescriptor.standardError.writeAll(Array(("bulkhead-worker: " + line + "\n").utf8))
}

/// Runs `--standalone` and exits with the VM's status.
func runStandalone(_ arguments: [String]) -> Never {
    ignoreBrokenPipe()
    let options: StandaloneOptions
    do { options = try StandaloneOptions.parse(arguments) } catch {
        standaloneSay("\(error)")
        exit(RunEnd.usage)
    }
    if options.help {
        try? FileDescriptor.standardOutput.writeAll(Array((StandaloneOptions.usage + "\n").utf8))
        exit(0)
    }
    var descriptors: [FileDescriptor] = []
    func add(_ fd: FileDescriptor) -> UInt8 {
        descriptors.append(fd)
        return UInt8(descriptors.count - 1)
    }
    func open(_ path: String, what: String, status: Int32, access: OpenAccess = .read) -> FileDescriptor {
        // The same checked open as the launcher's: regular files only, no symbolic link, never blocks.
        do { return try Caller.current.open(path, what: what, access: access) } catch {
            standaloneSay("\(error)")
            exit(status)
        }
    }
    let image: VMConfiguration.Image
    if let kernel = options.kernel {
        let k = add(open(kernel, what: "kernel", status: RunEnd.badImage))
        image = .kernel(descriptor: k, initrd: options.initrd.map { add(open($0, what: "initrd", status: RunEnd.badImage)) })
    } else {
        image = .program(descriptor: add(open(options.image ?? "", what: "guest image", status: RunEnd.badImage)))
    }
    let kvm: UInt8
    do { kvm = add(try FileDescriptor.openChecked("/dev/kvm", what: "KVM device", access: .readWrite, kind: .characterDevice, followSymlinks: true)) } catch {
        standaloneSay("\(error)")
        exit(RunEnd.unavailable)
    }
    let console = add(options.console.map { open($0, what: "console file", status: RunEnd.internalError, access: .createOrTruncate) } ?? .standardOutput)
    var input: UInt8?
    if options.kernel != nil && options.consoleInput {
        do {
            // Ctrl-A x: the relay has put the terminal back; ending the process ends the VM.
            input = try ConsoleInputRelay.standardInput(say: { standaloneSay($0) }, stop: {
                standaloneSay("the VM was stopped from its console (Ctrl-A x)")
                _exit(0)
            }).map(add)
        } catch {
            standaloneSay("\(error)")
            exit(RunEnd.internalError)
        }
    }
    var devices: [VMConfiguration.Device] = []
    var limits: [VMConfiguration.Limit] = []
    for (path, readOnly) in options.disks {
        devices.append(.disk(descriptor: add(open(path, what: "disk", status: RunEnd.badImage, access: readOnly ? .read : .readWrite)), readOnly: readOnly))
        limits.append(options.diskLimit)
    }
    if options.rng {
        devices.append(.rng)
        limits.append(.init(bytesPerSecond: options.rngBytesPerSecond))
    }
    let configuration = VMConfiguration(
        memoryMiB: UInt32(options.memoryMiB), vcpus: UInt16(options.vcpus), commandLine: options.commandLine,
        timeoutMilliseconds: options.timeoutMilliseconds ?? 0, image: image, kvm: kvm, console: console, devices: devices, limits: limits,
        hiddenCPUFeatures: options.hiddenFeatures, faultHandlers: options.faultHandlers,
        doorbellsInKernel: options.doorbellsInKernel, consoleInput: input)
    let vm: WorkerVM
    do { vm = try WorkerVM(configuration, descriptors: descriptors) } catch {
        standaloneSay(error.description)
        exit(RunEnd.status(error.kind))
    }
    let cpuidCounters = vm.cpuidEnforcementCounters()
    let report: RunReport
    do { report = try vm.run() } catch {
        standaloneSay("\(error)")
        exit(RunEnd.status(error.refusalKind))
    }
    guard case .ended(let outcome, let counters) = WorkerVM.ended(report, extra: cpuidCounters) else { exit(RunEnd.internalError) }
    if options.reportTiming {
        // The line the in-process run always printed (Benchmarks/run.py reads exactly this).
        var line = "timing: start-ns \(report.startNanoseconds)"
        if let f = report.firstHypercallNanoseconds { line += " first-hypercall-ns \(f)" }
        try? FileDescriptor.standardError.writeAll(Array((line + "\n").utf8))
    }
    let features: ((UInt64) -> [String])? = options.hiddenFeatures.isEmpty ? nil : { CPUIDPolicy.features(mask: $0).map(\.rawValue) }
    for line in RunEnd.lines(outcome, counters, statistics: options.statistics, hiddenFeatures: features) { standaloneSay(line) }
    // The outcome is out; closing the VM (12-20 ms with the in-kernel irqchip) is left to a child
    // that outlives this process, so the exit status follows at once (issue 9). Exit here,
    // holding the report: releasing it in this process would close the VM first.
    releaseDescriptorsAfterExit()
    withExtendedLifetime(report) { exit(RunEnd.status(outcome)) }
}
