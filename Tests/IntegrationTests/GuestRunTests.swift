import GuestInterface
import Boot
import HostTestSupport
import Devices
import HostOS
import KVM
import Testing
#if canImport(Glibc)
import Glibc
#endif
@testable import VMM

/// Where `Guest/build.sh` puts the test guests.
let guestDirectory = environment("BULKHEAD_GUEST_DIR") ?? (repositoryRoot + "/.build/guests")
/// A usable KVM (not merely a file at /dev/kvm): the API version and capabilities check out.
/// `make test` sets BULKHEAD_REQUIRE_GUESTS=1 so that missing guests fail instead of skipping.
let guestsBuilt = isRegularFile(guestDirectory + "/hello.elf") || environment("BULKHEAD_REQUIRE_GUESTS") == "1"

func guestImage(_ name: String) throws -> [UInt8] {
    try readFile(guestDirectory + "/" + name + ".elf", limit: 16 << 20)
}

struct GuestRun {
    var report: RunReport
    var console: String
}

func runGuest(_ name: String, vcpus: Int = 1, memory: UInt64 = 64, cmdline: String = "",
              timeout: Double = 20, faultHandlers: Bool = true) throws -> GuestRun {
    let sink = ConsoleSink(fd: try FileDescriptor.open(writing: "/dev/null"))
    sink.startCapture()
    let config = MachineConfiguration(
        boot: BootConfiguration(memorySize: memory << 20, vcpus: vcpus, commandLine: cmdline, faultHandlers: faultHandlers),
        timeout: timeout, console: sink)
    let report = try Machine.run(image: try guestImage(name), configuration: config)
    return GuestRun(report: report, console: String(decoding: sink.captured, as: UTF8.self))
}

func faultReport(_ run: GuestRun) -> FaultReport? {
    if case .fault(let f) = run.report.outcome { return f }
    return nil
}

@Suite(.requiresKVM,
       .enabled(if: guestsBuilt, "test guests not built: run Guest/build.sh (make test does)"))
struct GuestRunTests {
    @Test func helloPrintsBannerWithVCPUsAndCommandLine() throws {
        let r = try runGuest("hello", vcpus: 2, cmdline: "console=hv quiet")
        #expect(r.report.outcome == .exited(status: 0))
        #expect(r.console.contains("vCPU 0 of 2"))
        #expect(r.console.contains("command line: \"console=hv quiet\""))
        #expect(r.report.statistics.count(.consoleWrite) >= 1)
        #expect(r.report.firstHypercallNanoseconds != nil)
    }

    /// Memory hygiene: every byte of RAM the guest gets as free reads as zero the first time.
    @Test func freshGuestMemoryIsAllZero() throws {
        let r = try runGuest("zeros", memory: 128)
        #expect(r.report.outcome == .exited(status: 0), "\(r.console)")
        #expect(r.console.contains("all zero") && r.console.contains(" bytes of fresh memory"), "\(r.console)")
    }

    @Test func exitStatusIsTheGuests() throws {
        #expect(try runGuest("exitcode", cmdline: "42").report.outcome == .exited(status: 42))
        #expect(try runGuest("exitcode", cmdline: "0").report.outcome == .exited(status: 0))
        #expect(try runGuest("exit0").report.outcome == .exited(status: 0))
    }

    @Test func cpuBoundGuestChecksItsResult() throws {
        let r = try runGuest("cpu")
        #expect(r.report.outcome == .exited(status: 0))
        #expect(r.console.contains(": ok"))
    }

    @Test func sdkSelfTest() throws {
        let r = try runGuest("selftest", vcpus: 2, cmdline: "a b")
        #expect(r.report.outcome == .exited(status: 0), "\(r.console)")
        #expect(!r.console.contains("FAIL"))
    }

    @Test func smpGivesEachVCPUItsOwnStackAndIndex() throws {
        let r = try runGuest("smp", vcpus: 4)
        #expect(r.report.outcome == .exited(status: 0), "\(r.console)")
        #expect(r.console.contains("4 vCPUs checked in"))
    }

    @Test func divideByZero() throws {
        let f = try #require(faultReport(try runGuest("fault-divzero")))
        #expect(f.vector == 0)
        #expect(f.rip >= GuestLayout.programStart)
    }

    @Test func invalidOpcode() throws {
        let f = try #require(faultReport(try runGuest("fault-ud")))
        #expect(f.vector == 6)
    }

    @Test func unmappedMemory() throws {
        let f = try #require(faultReport(try runGuest("fault-unmapped")))
        #expect(f.vector == 14)
        #expect(f.address == 0x8000_0000)
        #expect(f.errorCode.map { $0 & 1 } == 0) // not present
        #expect(f.pageFaultDetail?.contains("unmapped") == true)
    }

    @Test func writeToReadOnlyPage() throws {
        let f = try #require(faultReport(try runGuest("fault-readonly")))
        #expect(f.vector == 14)
        #expect(f.errorCode.map { $0 & 7 } == 7) // present, write, user
        #expect(f.pageFaultDetail?.contains("read-only") == true)
    }

    @Test func executeFromNoExecutePage() throws {
        let f = try #require(faultReport(try runGuest("fault-exec-nx")))
        #expect(f.vector == 14)
        #expect(f.errorCode.map { $0 & 0x10 } == 0x10) // instruction fetch
        #expect(f.rip == f.address)
    }

    @Test func stackOverflowHitsTheGuardPage() throws {
        let f = try #require(faultReport(try runGuest("fault-stack-overflow")))
        #expect(f.vector == 14)
        #expect(f.guardPageHit)
    }

    @Test func tripleFaultWithoutFaultHandlers() throws {
        let r = try runGuest("fault-ud", faultHandlers: false)
        guard case .tripleFault(vcpu: 0, let state) = r.report.outcome else {
            Issue.record("not a triple fault on vCPU 0: \(r.report.outcome)"); return
        }
        // Where the vCPU stood is reported: a guest program runs in long mode with paging on.
        // Unless KVM reset the registers on the shutdown (SVM does): then the report says so.
        let s = try #require(state)
        if s.isResetState {
            #expect(r.report.outcome.description.contains("KVM reset the vCPU's registers"))
        } else {
            #expect(s.rip != 0 && s.cr0 & 0x8000_0001 == 0x8000_0001 && s.efer & 0x400 != 0, "\(s)")
            #expect(r.report.outcome.description.contains("at rip 0x\(String(s.rip, radix: 16)) "))
        }
    }

    @Test func infiniteLoopIsStoppedByTheTimeout() throws {
        let r = try runGuest("loop", vcpus: 2, timeout: 0.5)
        #expect(r.report.outcome == .timedOut(seconds: 0.5))
    }

    @Test func hostileHypercallsGetErrorsAndTheVMMCarriesOn() throws {
        let r = try runGuest("hostile")
        #expect(r.report.outcome == .exited(status: 0), "\(r.console)")
        #expect(!r.console.contains("FAIL"))
        let s = r.report.statistics
        #expect(s.unknownCalls >= 3)
        #expect(s.count(.badAddress) >= 10)
        #expect(s.count(.badLength) >= 2)
        #expect(s.count(.badArgument) >= 3)
    }

    @Test func manyVMsOneAfterAnother() throws {
        for i in 0..<20 {
            #expect(try runGuest("exitcode", memory: 16, cmdline: "\(i)").report.outcome == .exited(status: UInt8(i)))
        }
    }

}

/// Runs without KVM: the image and configuration are checked before KVM is opened.
@Suite(.enabled(if: guestsBuilt, "test guests not built: run Guest/build.sh (make test does)"))
struct GuestImageTests {
    @Test func badImagesAreRefusedBeforeKVMIsTouched() throws {
        let config = MachineConfiguration(boot: BootConfiguration(), kvmPath: "/nonexistent/kvm")
        #expect(throws: MachineError.self) { try Machine.run(image: Array("not an elf".utf8), configuration: config) }
        var image = try guestImage("hello")
        image[18] = 3 // EM_386
        do { _ = try Machine.run(image: image, configuration: config); Issue.record("accepted") } catch {
            guard case .boot(.elf(.unsupported)) = error else { Issue.record("wrong error \(error)"); return }
        }
    }

    @Test func missingKVMIsAClearError() throws {
        let config = MachineConfiguration(boot: BootConfiguration(), kvmPath: "/nonexistent/kvm")
        do { _ = try Machine.run(image: try guestImage("exit0"), configuration: config); Issue.record("ran") } catch {
            #expect("\(error)".contains("KVM is not available"))
        }
    }
}

/// Guest programs driving virtio devices through the real VMM: doorbells on ioeventfds, DMA
/// confined to the program's own memory.
@Suite(.requiresKVM,
       .enabled(if: guestsBuilt, "test guests not built: run Guest/build.sh (make test does)"))
struct VirtioGuestTests {
    func run(_ name: String, cmdline: String = "", devices: [VirtioDeviceModel]) throws -> GuestRun {
        let sink = ConsoleSink(fd: try FileDescriptor.open(writing: "/dev/null"))
        sink.startCapture()
        let config = MachineConfiguration(boot: BootConfiguration(memorySize: 64 << 20, commandLine: cmdline),
                                          timeout: 60, console: sink, devices: devices)
        let report = try Machine.run(image: try guestImage(name), configuration: config)
        return GuestRun(report: report, console: String(decoding: sink.captured, as: UTF8.self))
    }

    func image(sectors: Int) throws -> (String, FileDescriptor) {
        let path = "/tmp/bulkhead-test-disk-\(getpid())-\(UInt64.random(in: 0..<UInt64.max))"
        let w = try FileDescriptor.open(writing: path)
        try w.writeAll([UInt8](repeating: 0, count: sectors * 512))
        return (path, try FileDescriptor.open(readWrite: path))
    }

    @Test func rngDeliversRandomBytes() throws {
        let rng = VirtioRNG(source: randomBytes)
        let r = try run("rng", devices: [rng])
        #expect(r.report.outcome == .exited(status: 0), "\(r.console)")
        #expect(r.console.contains("rng: ok"))
        #expect(rng.bytesServed >= 128)
    }

    @Test func blockWriteFlushReadBackAndReadOnly() throws {
        let (path, fd) = try image(sectors: 8192)
        defer { unlink(path) }
        let disk = VirtioBlock(backend: try FileBlockBackend(fd: fd), readOnly: false, id: "test-disk")
        let w = try run("blk", cmdline: "write", devices: [disk])
        #expect(w.report.outcome == .exited(status: 0), "\(w.console)")
        #expect(w.console.contains("id \"test-disk\""))
        #expect(w.console.contains("blk: verified"))
        // A second VM, read-only, sees the pattern and cannot write.
        let ro = VirtioBlock(backend: try FileBlockBackend(fd: try FileDescriptor.open(readOnly: path)), readOnly: true, id: "ro")
        let v = try run("blk", cmdline: "verify readonly-check", devices: [ro])
        #expect(v.report.outcome == .exited(status: 0), "\(v.console)")
        #expect(v.console.contains("write refused"))
    }

    @Test func hostileVirtioDriverIsContained() throws {
        let (path, fd) = try image(sectors: 4096)
        defer { unlink(path) }
        let disk = VirtioBlock(backend: try FileBlockBackend(fd: fd), readOnly: false, id: "hostile")
        let r = try run("virtio-hostile", devices: [disk, VirtioRNG(source: randomBytes)])
        #expect(r.report.outcome == .exited(status: 0), "\(r.console)")
        #expect(!r.console.contains("FAIL"))
        #expect(r.console.contains("checks passed"))
    }
}
