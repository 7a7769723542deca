import Foundation
import HostTestSupport
import HostOS
import KVM
import Testing

/// Opt-in (slow, downloads a Debian package): BULKHEAD_LINUX_CHECK=1 swift test --filter LinuxCheck
let linuxCheckEnabled = ProcessInfo.processInfo.environment["BULKHEAD_LINUX_CHECK"] == "1"

@discardableResult
func sh(_ command: String, in dir: String) throws -> String {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/sh")
    p.arguments = ["-c", command]
    p.currentDirectoryURL = URL(fileURLWithPath: dir)
    let out = Pipe()
    p.standardOutput = out
    p.standardError = out
    try p.run()
    let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    p.waitUntilExit()
    guard p.terminationStatus == 0 else { throw CocoaError(.executableLoad, userInfo: [NSLocalizedDescriptionKey: "\(command): \(text)"]) }
    return text
}

@Suite(.enabled(if: linuxCheckEnabled, "opt-in: set BULKHEAD_LINUX_CHECK=1 (downloads Debian's cloud kernel)"),
       .requiresKVM)
struct LinuxCheckTests {
    /// Debian's cloud kernel, installed from Debian's packages, boots under Bulkhead far enough to
    /// print its banner and the command line Bulkhead passed.
    ///
    /// The bzImage's own decompressor runs at CPL0, which these nested hosts emulate at ~1 µs an
    /// instruction (minutes for a 14 MB payload), so the test unpacks the kernel the way
    /// scripts/extract-vmlinux does and boots the vmlinux through its PVH entry. On a host with
    /// hardware virtualization the bzImage boots directly with `--kernel vmlinuz`.
    @Test(.timeLimit(.minutes(5)))
    func debianCloudKernelPrintsItsBanner() throws {
        let dir = NSTemporaryDirectory() + "bulkhead-linux-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try sh("command -v lz4 >/dev/null || (apt-get update -qq && apt-get install -y -qq lz4 >/dev/null)", in: dir)
        let package = try sh("apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-/ {print $2; exit}'", in: dir)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(package.hasPrefix("linux-image-"))
        try sh("apt-get download -qq \(package) && dpkg-deb -x \(package)_*.deb root", in: dir)
        let vmlinuz = try sh("ls root/boot/vmlinuz-*", in: dir).trimmingCharacters(in: .whitespacesAndNewlines)
        // extract-vmlinux: the setup header names the compressed payload.
        let image = try Data(contentsOf: URL(fileURLWithPath: dir + "/" + vmlinuz))
        let bytes = [UInt8](image)
        let setupSectors = Int(bytes[0x1f1] == 0 ? 4 : bytes[0x1f1])
        func u32(_ o: Int) -> Int { Int(bytes[o]) | Int(bytes[o + 1]) << 8 | Int(bytes[o + 2]) << 16 | Int(bytes[o + 3]) << 24 }
        let start = (setupSectors + 1) * 512 + u32(0x248)
        let payload = Data(bytes[start..<start + u32(0x24c)])
        #expect(payload.prefix(4) == Data([0x02, 0x21, 0x4c, 0x18]), "Debian's cloud kernel is LZ4-compressed")
        try payload.write(to: URL(fileURLWithPath: dir + "/payload.lz4"))
        // The payload ends with the kernel's 4-byte uncompressed size, which lz4 reports as
        // trailing garbage after a complete frame: judge by the output instead.
        try sh("lz4 -dc payload.lz4 > vmlinux 2>/dev/null; head -c 4 vmlinux | od -An -tx1 | grep -q '7f 45 4c 46'", in: dir)

        let cmdline = "console=ttyS0 earlyprintk=serial,ttyS0,115200 bulkhead.check=\(getpid())"
        let began = Date()
        let r = try bulkhead(["run", "--kernel", dir + "/vmlinux", "--memory", "256", "--vcpus", "2", "--rng", "--cmdline", cmdline,
                              "--hide-cpu-feature", "cx16", "--hide-cpu-feature", "xsave",
                              "--timeout", "60", "--console", dir + "/console.log"])
        let console = (try? String(contentsOfFile: dir + "/console.log", encoding: .utf8)) ?? ""
        let seconds = Date().timeIntervalSince(began)
        print("linux-check: \(package), \(String(format: "%.1f", seconds)) s, exit \(r.status); first lines:")
        print(console.split(separator: "\n").prefix(3).joined(separator: "\n"))
        #expect(console.contains("Linux version"))
        #expect(console.contains("Command line: \(cmdline)"))
        // The kernel reads Bulkhead's ACPI tables: both vCPUs from the MADT, the IOAPIC, and a
        // DSDT (where the rng is described as LNRO0005).
        #expect(console.contains("ACPI: RSDP 0x00000000000E0000"))
        #expect(console.contains("ACPI: DSDT 0x00000000000E0600"))
        #expect(console.contains("IOAPIC[0]: apic_id 0"))
        #expect(console.contains("smpboot: Allowing 2 CPUs"))
    }
}
