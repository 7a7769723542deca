import Boot
import GuestInterface
import HostOS
import KVM
import Synchronization

/// Whether hiding a CPU feature from a guest works on this host, measured rather than guessed.
/// On a host whose KVM is PVM the CPUID instruction may never leave the guest, or leave it only
/// in part: on these machines a guest reads KVM's table for some bits (cx16 can be hidden) and
/// the host's own for others (xsave and rdrand cannot), and `/proc/cpuinfo` says nothing useful
/// (an AMD EPYC PVM host lists `cpuid_fault` and still shows the guest the host's XSAVE bit).
///
/// So a tiny VM is run with every feature of `CPUIDPolicy.Feature` hidden and, in leaf
/// 0x8000_0002 (the first brand-string leaf), a value no real CPU returns ("BULKHEADPROBE!!!").
/// Its vCPU executes CPUID and reports whether it saw that value (the table is consulted at
/// all) and which hidden features it still sees (hiding them has no effect).
///
/// Guest programs (64-bit, CPL3) and kernels (whose early code is 32-bit CPL0, emulated on
/// nested hosts) may differ, so each kind is measured with a guest of that kind, at most once per
/// process (the first call runs the VM, under a lock; later calls return the cached answer).
public enum CPUIDProbe {
    public enum GuestKind: Hashable, Sendable { case program, kernel }

    /// What a probe VM saw.
    public struct Measurement: Equatable, Sendable {
        /// The guest read the probe's value in leaf 0x8000_0002: its CPUID comes from KVM's
        /// table, at least for that leaf.
        public var sawTable: Bool
        /// Features the guest still saw although its table hid them.
        public var visibleDespiteHiding: Set<CPUIDPolicy.Feature>

        public init(sawTable: Bool, visibleDespiteHiding: Set<CPUIDPolicy.Feature>) {
            self.sawTable = sawTable; self.visibleDespiteHiding = visibleDespiteHiding
        }

        /// Those of `hidden` that a guest sees anyway (in `Feature.allCases` order).
        public func ineffective(_ hidden: Set<CPUIDPolicy.Feature>) -> [CPUIDPolicy.Feature] {
            CPUIDPolicy.Feature.allCases.filter { hidden.contains($0) && visibleDespiteHiding.contains($0) }
        }

        /// The report byte: 0x40 | bit 0 sawTable | bit 1+i feature i (of allCases) visible.
        init?(report: UInt8) {
            guard report & 0xe0 == 0x40 else { return nil }
            sawTable = report & 1 != 0
            visibleDespiteHiding = Set(CPUIDPolicy.Feature.allCases.enumerated().filter { report & (2 << $0.offset) != 0 }.map(\.element))
        }
    }

    /// Leaf 0x8000_0002's EAX, EBX, ECX, EDX in the probe's table: "BULKHEADPROBE!!!".
    static let marker: [UInt32] = {
        let b = Array("BULKHEADPROBE!!!".utf8)
        return (0..<4).map { i in (0..<4).reduce(UInt32(0)) { $0 | UInt32(b[4 * i + $1]) << (8 * UInt32($1)) } }
    }()
    static let markerLeaf: UInt32 = 0x8000_0002
    /// The probe VM is stopped after this long (it needs a few milliseconds).
    static let timeoutSeconds = 1.0

    private static let cache = Mutex<[GuestKind: Measurement?]>([:])
    private static let runs = Mutex<[GuestKind: Int]>([:])

    /// What a guest of `kind` sees (nil when the probe could not run or gave no clear answer;
    /// never traps). `kvmDescriptor`: an open KVM device (a worker's); `vcpuThreadStart`: what
    /// the probe's vCPU thread runs first (a worker's seccomp filter). Only the first call for a
    /// kind uses them.
    public static func measured(for kind: GuestKind, kvmDescriptor: FileDescriptor? = nil,
                                vcpuThreadStart: (@Sendable () -> String?)? = nil) -> Measurement? {
        cache.withLock { known -> Measurement? in
            if let answer = known[kind] { return answer }
            let answer = measure(kind, kvmDescriptor: kvmDescriptor, vcpuThreadStart: vcpuThreadStart)
            known[kind] = .some(answer)
            return answer
        }
    }

    /// Whether hiding `features` from a guest of `kind` works here (nil: unknown).
    public static func enforced(for kind: GuestKind, hiding features: Set<CPUIDPolicy.Feature> = Set(CPUIDPolicy.Feature.allCases)) -> Bool? {
        measured(for: kind).map { $0.ineffective(features).isEmpty }
    }

    /// How many probe VMs this process has run for `kind` (at most one: for tests).
    static func probeRuns(_ kind: GuestKind) -> Int { runs.withLock { $0[kind] ?? 0 } }

    static func measure(_ kind: GuestKind, kvmDescriptor: FileDescriptor?, vcpuThreadStart: (@Sendable () -> String?)?) -> Measurement? {
        runs.withLock { $0[kind, default: 0] += 1 }
        // Nothing is written to the console but the kernel probe's report byte, which is captured.
        let sink = ConsoleSink(fd: FileDescriptor(borrowing: -1))
        sink.startCapture()
        var policy = CPUIDPolicy(hidden: Set(CPUIDPolicy.Feature.allCases))
        policy.probeMarker = true
        var config = MachineConfiguration(
            boot: BootConfiguration(memorySize: (kind == .program ? 8 : 32) << 20, vcpus: 1, commandLine: ""),
            timeout: timeoutSeconds, cpuid: policy, console: sink)
        config.kvmDescriptor = kvmDescriptor
        config.vcpuThreadStart = vcpuThreadStart
        do {
            switch kind {
            case .program:
                let report = try Machine.run(image: programImage(programProbeCode), configuration: config)
                guard case .exited(let status) = report.outcome else { return nil }
                return Measurement(report: status)
            case .kernel:
                let report = try Machine.runLinux(kernel: pvhKernel(kernelProbeCode), initrd: nil, configuration: config)
                guard report.outcome == .reset(vcpu: 0), sink.captured.count == 1 else { return nil }
                return Measurement(report: sink.captured[0])
            }
        } catch {
            return nil
        }
    }

    private static func imm(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } }

    /// x86 code (the same bytes in 32- and 64-bit mode) leaving the report byte (`Measurement`)
    /// in EDI.
    static var measureCode: [UInt8] {
        var code: [UInt8] = [0x31, 0xff]                                // xor edi, edi
        code += [0xb8] + imm(markerLeaf) + [0x0f, 0xa2]                 // mov eax, leaf; cpuid
            + [0x35] + imm(marker[0])                                   // xor eax, m0
            + [0x81, 0xf3] + imm(marker[1])                             // xor ebx, m1
            + [0x81, 0xf1] + imm(marker[2])                             // xor ecx, m2
            + [0x81, 0xf2] + imm(marker[3])                             // xor edx, m3
            + [0x09, 0xd8, 0x09, 0xc8, 0x09, 0xd0]                      // or eax, ebx; or eax, ecx; or eax, edx
            + [0x85, 0xc0, 0x75, 0x03, 0x83, 0xcf, 0x01]                // test eax, eax; jnz +3; or edi, 1
        for (i, feature) in CPUIDPolicy.Feature.allCases.enumerated() {
            for m in feature.masks {
                code += [0xb8] + imm(m.leaf) + [0x31, 0xc9, 0x0f, 0xa2] // mov eax, leaf; xor ecx, ecx; cpuid
                    + [0x81, 0xe3] + imm(m.ebx)                         // and ebx, mask
                    + [0x81, 0xe1] + imm(m.ecx)                         // and ecx, mask
                    + [0x09, 0xcb, 0x74, 0x03]                          // or ebx, ecx; jz +3
                    + [0x83, 0xcf, UInt8(2 << i)]                       // or edi, 1 << (1 + i)
            }
        }
        return code + [0x83, 0xcf, 0x40]                                // or edi, 0x40
    }

    /// 64-bit CPL3 code: exit with the report byte as the status (the exit hypercall: rax = 2,
    /// rdi = status, an 8-byte load from the hypercall page).
    static var programProbeCode: [UInt8] {
        let page = GuestLayout.hypercallPage
        return measureCode
            + [0xb8, UInt8(Hypercall.exit.rawValue), 0, 0, 0]  // mov eax, exit
            + [0x48, 0xa1] + (0..<8).map { UInt8(truncatingIfNeeded: page >> (8 * UInt64($0))) } // movabs rax, [page]
            + [0xeb, 0xfe]                                     // jmp $
    }

    /// 32-bit CPL0 code (a PVH entry): write the report byte to COM1, then reset the machine
    /// through the i8042.
    static var kernelProbeCode: [UInt8] {
        measureCode
            + [0x89, 0xf8]                                     // mov eax, edi
            + [0x66, 0xba, 0xf8, 0x03, 0xee]                   // mov dx, 0x3f8; out dx, al
            + [0xb0, 0xfe, 0xe6, 0x64]                         // mov al, 0xfe; out 0x64, al
            + [0xf4, 0xeb, 0xfd]                               // hlt; jmp back to hlt
    }

    /// A minimal guest program: one read-execute PT_LOAD segment at the program start holding
    /// `code`, which is also the entry point.
    static func programImage(_ code: [UInt8]) -> [UInt8] { minimalELF(load: GuestLayout.programStart, code: code) }
}

/// A minimal PVH kernel: one PT_LOAD segment at 1 MiB holding `code` (32-bit protected mode,
/// paging off, as the PVH entry is), and the Xen PHYS32_ENTRY note pointing at its first byte.
/// (The kernel-kind CPUID probe, and the kernel guests of the tests.)
public func pvhKernel(_ code: [UInt8]) -> [UInt8] {
    let load: UInt64 = 0x10_0000
    var note = ByteWriter(size: 20)
    note.put(UInt32(4), at: 0); note.put(UInt32(4), at: 4); note.put(UInt32(18), at: 8)
    note.put(Array("Xen".utf8) + [0], at: 12); note.put(UInt32(load), at: 16)
    return minimalELF(load: load, code: code, note: note.bytes)
}

/// A 64-bit executable ELF whose one read-execute PT_LOAD segment holds `code` at `load`, also
/// the entry point; with `note`, a PT_NOTE segment for it too.
func minimalELF(load: UInt64, code: [UInt8], note: [UInt8]? = nil) -> [UInt8] {
    let codeOffset = 0x1000
    let noteOffset = 0x200
    var w = ByteWriter(size: codeOffset + code.count)
    w.put([0x7f, 0x45, 0x4c, 0x46, 2, 1, 1, 0], at: 0)
    w.put(UInt16(2), at: 16); w.put(UInt16(62), at: 18); w.put(UInt32(1), at: 20)
    w.put(load, at: 24); w.put(UInt64(64), at: 32)
    w.put(UInt16(64), at: 52); w.put(UInt16(56), at: 54); w.put(UInt16(note == nil ? 1 : 2), at: 56)
    // PT_LOAD, R+X
    w.put(UInt32(1), at: 64); w.put(UInt32(5), at: 68); w.put(UInt64(codeOffset), at: 72)
    w.put(load, at: 80); w.put(load, at: 88)
    w.put(UInt64(code.count), at: 96); w.put(UInt64(code.count), at: 104); w.put(UInt64(0x1000), at: 112)
    if let note {
        // PT_NOTE
        w.put(UInt32(4), at: 120); w.put(UInt64(noteOffset), at: 128)
        w.put(UInt64(note.count), at: 152); w.put(UInt64(note.count), at: 160); w.put(UInt64(4), at: 168)
        w.put(note, at: noteOffset)
    }
    w.put(code, at: codeOffset)
    return w.bytes
}
