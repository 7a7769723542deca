/// Builds the kernel command line the guest sees: the operator's line with one
/// `virtio_mmio.device=<size>@<base>:<irq>` per device.
///
/// The device entries go before a `--` word if there is one: Linux passes everything after `--`
/// to init, so appending at the very end would hide the devices from the kernel. Words are split
/// the way the kernel's `next_arg` splits them (white space outside double quotes), and an
/// unbalanced double quote is refused, since it would swallow the device entries into the
/// value of the last parameter.
public enum LinuxCommandLine {
    /// Parameters Bulkhead adds unless the operator's line sets the same one (issue 10):
    /// - `pci=off`: a Bulkhead machine has no PCI (its devices are virtio-mmio, found through
    ///   ACPI). Without it Linux probes PCI configuration space through ports 0xcf8/0xcfc, every
    ///   access an exit to the VMM that finds nothing: the GART aperture check alone took 9.4 s of
    ///   a 22 s boot to user space in the Linux test environment (6.8 s to /init with it).
    /// - `reboot=k`: reset through the keyboard controller (`i8042-reset`), which ends the VM.
    ///   Left to itself, Linux on a hardware-reduced ACPI platform picks the EFI reboot method
    ///   (`efi_reboot_required()`), finds no EFI, falls back to a BIOS restart in real mode and
    ///   jumps to a reset vector with no BIOS behind it: `reboot` hung until `--timeout` (measured
    ///   in the Linux test environment, whose runs had all passed `reboot=k` themselves).
    ///   Firecracker's documented command line carries it too.
    public static let defaults: [(key: String, parameter: String)] = [("pci", "pci=off"), ("reboot", "reboot=k")]

    static func isSpace(_ b: UInt8) -> Bool {
        b == 0x20 || (b >= 0x09 && b <= 0x0d) // ' ', \t \n \v \f \r: the kernel's isspace
    }

    /// The final command line (without the NUL).
    public static func compose(_ commandLine: String, devices: [VirtioMMIODeviceInfo]) throws(LinuxBootError) -> [UInt8] {
        let base = Array(commandLine.utf8)
        guard !base.contains(0) else { throw .badCommandLine("it contains a NUL byte") }
        guard base.lazy.filter({ $0 == 0x22 }).count % 2 == 0 else {
            throw .badCommandLine("unbalanced double quote")
        }
        let split = initArgumentsStart(base)
        let keys = Set(words(Array(base[..<split])).map { word in
            String(decoding: word.prefix { $0 != 0x3d }, as: UTF8.self)   // up to '='
        })
        let added = defaults.filter { !keys.contains($0.key) }.map(\.parameter)
        let extra = (added + devices.map(\.commandLineParameter)).joined(separator: " ")
        guard !extra.isEmpty else { return base }

        var head = Array(base[..<split])
        let tail = Array(base[split...])
        while let last = head.last, isSpace(last) { head.removeLast() }
        var out = head
        if !out.isEmpty { out.append(0x20) }
        out += Array(extra.utf8)
        if !tail.isEmpty { out.append(0x20); out += tail }
        return out
    }

    /// The words of `line`, split as the kernel splits them (white space outside double quotes).
    static func words(_ line: [UInt8]) -> [ArraySlice<UInt8>] {
        var out: [ArraySlice<UInt8>] = []
        var i = 0
        while i < line.count {
            while i < line.count, isSpace(line[i]) { i += 1 }
            let start = i
            var inQuote = false
            while i < line.count, inQuote || !isSpace(line[i]) {
                if line[i] == 0x22 { inQuote.toggle() }
                i += 1
            }
            if i > start { out.append(line[start..<i]) }
        }
        return out
    }

    /// The index of the first word that is `--` (bare or quoted), or the end of the line.
    static func initArgumentsStart(_ line: [UInt8]) -> Int {
        words(line).first { $0.elementsEqual([0x2d, 0x2d]) || $0.elementsEqual([0x22, 0x2d, 0x2d, 0x22]) }?.startIndex ?? line.count
    }
}
