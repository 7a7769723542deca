import Boot

/// One channel through which a guest can reach the VMM.
public struct SurfaceChannel: Equatable, Sendable {
    public enum Kind: String, Sendable, CaseIterable {
        case mmio, pio, virtqueue, hypercall, exit
    }
    public var kind: Kind
    public var name: String
    /// Where it is: an address range, a port range, a call number or an exit reason.
    public var location: String
    /// What a hostile guest could try through it, and what stops it.
    public var threat: String
}

/// The attack-surface registry: every MMIO/PIO range, hypercall and handled exit reason.
///
/// This is the one list of what a guest can reach. The run loop dispatches only what is here
/// (tests check that every hypercall and every handled exit has an entry), `bulkhead surface`
/// prints it, and `docs/attack-surface.json` pins it: CI fails when the code and the pinned file
/// differ. Adding a channel means adding it here, to the pinned file and to docs/threat-model.md.
public enum AttackSurface {
    static func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }
    static func range(_ start: UInt64, _ size: UInt64) -> String { hex(start) + "-" + hex(start + size - 1) }

    /// MMIO ranges handled by the VMM.
    public static let mmio: [SurfaceChannel] = [
        SurfaceChannel(kind: .mmio, name: "hypercall-page", location: range(GuestLayout.hypercallPage, GuestLayout.pageSize),
                       threat: "8-byte reads at offset 0 perform a hypercall; any other access returns bad-argument; mapped read-only for CPL3"),
        SurfaceChannel(kind: .mmio, name: "fault-report", location: range(GuestLayout.faultPage, GuestLayout.pageSize),
                       threat: "supervisor-only mapping written by the VMM's own CPL0 fault stubs; a CPL3 write page-faults; ends the VM"),
        SurfaceChannel(kind: .mmio, name: "virtio-mmio", location: range(GuestLayout.deviceWindows, GuestLayout.deviceWindowsEnd - GuestLayout.deviceWindows),
                       threat: "one 4 KiB virtio-mmio v2 window per configured device; register state machine validates every write (virtio 1.2 4.2.2); forbidden writes ignored and counted; QueueNotify served by ioeventfd"),
    ]

    /// Virtqueues the device models serve (their contents are parsed by the device threads).
    public static let virtqueues: [SurfaceChannel] = [
        SurfaceChannel(kind: .virtqueue, name: "virtio-blk.requestq", location: "device 2, queue 0",
                       threat: "request header, data and status parsed from the chain with checked sector arithmetic; range within capacity; at most 4 MiB per request; writes refused on read-only disks; flush is fdatasync before completion"),
        SurfaceChannel(kind: .virtqueue, name: "virtio-net.receiveq", location: "device 1, queue 0",
                       threat: "device writes one 12-byte header + frame per chain, only into CPL3-writable RAM for programs; frames over the MTU dropped; at most one frame held while the guest posts no buffers or the receive rate limit holds it"),
        SurfaceChannel(kind: .virtqueue, name: "virtio-net.transmitq", location: "device 1, queue 1",
                       threat: "header must request no offloads; frame 14..MTU+14 bytes; source MAC must be the device's own (anti-spoofing); a full socket defers, never spins"),
        SurfaceChannel(kind: .virtqueue, name: "virtio-vsock.rx", location: "device 19, queue 0",
                       threat: "device writes one 44-byte header + payload per chain, only into CPL3-writable RAM for programs; chains too small for a header are returned empty; host data read only within the guest's credit and the chain's room"),
        SurfaceChannel(kind: .virtqueue, name: "virtio-vsock.tx", location: "device 19, queue 1",
                       threat: "chain copied out once (header + at most 64 KiB); src_cid must be the guest's (anti-spoofing, dropped); dst_cid host, type stream, len within the bytes present; data beyond the advertised credit resets the connection; at most 64 connections and 160 queued control packets, then TX waits"),
        SurfaceChannel(kind: .virtqueue, name: "virtio-vsock.event", location: "device 19, queue 2",
                       threat: "never consumed: the device sends no events (no migration); buffers posted there stay with the guest"),
        SurfaceChannel(kind: .virtqueue, name: "virtio-rng.requestq", location: "device 4, queue 0",
                       threat: "chains parsed with a time-to-live and RAM checks; device writes only into CPL3-writable RAM; at most 64 KiB per request"),
    ]

    /// Port I/O ranges handled by the VMM.
    public static let pio: [SurfaceChannel] = [
        SurfaceChannel(kind: .pio, name: "serial-com1", location: "0x3f8-0x3ff",
                       threat: "16550 UART state machine; bounded receive FIFO; unreachable from CPL3 (IOPL 0, no I/O bitmap)"),
        SurfaceChannel(kind: .pio, name: "i8042-reset", location: "0x64 (kernels only)",
                       threat: "the byte 0xfe ends the VM as a clean exit (no reboot); any other value ignored; reads give the constant status 0x00 (buffers empty)"),
        SurfaceChannel(kind: .pio, name: "acpi-sleep-control", location: "0x600 (kernels only)",
                       threat: "write-only: the byte 0x34 (SLP_EN, sleep type 5 = S5) ends the VM as a clean exit (power off); any other value or width ignored; reads 0xff"),
        SurfaceChannel(kind: .pio, name: "pvpanic", location: "0x505 (kernels only)",
                       threat: "reads the constant capability byte 0x01; a one-byte write with bit 0 set ends the VM as a guest crash (kernel panic); any other value or width ignored"),
    ]

    public static let hypercalls: [SurfaceChannel] = Hypercall.allCases.map { call in
        let threat: String
        switch call {
        case .version: threat = "no arguments; constant result"
        case .consoleWrite: threat = "buffer must lie in CPL3-readable memory, length <= 4096; copied out once; output flood bounded per call"
        case .exit: threat = "status must be 0-255; ends only this VM"
        case .wait: threat = "timeout <= 10 s; interruptible by the VMM at any time"
        case .time: threat = "no arguments; monotonic time since VM start (no host wall clock leaked)"
        case .random: threat = "buffer must lie in CPL3-writable memory, length <= 256; filled from getrandom"
        }
        return SurfaceChannel(kind: .hypercall, name: call.name, location: "nr \(call.rawValue)", threat: threat)
    }

    /// KVM exit reasons the run loop handles. Anything else ends the VM as an internal error.
    public static let exits: [SurfaceChannel] = [
        SurfaceChannel(kind: .exit, name: "KVM_EXIT_MMIO", location: "exit 6",
                       threat: "dispatched by address to the MMIO channels above (hypercall page, fault page, device windows); any other address ends the VM"),
        SurfaceChannel(kind: .exit, name: "KVM_EXIT_IO", location: "exit 2",
                       threat: "dispatched by port to the PIO channels above; other ports read 0xff and ignore writes"),
        SurfaceChannel(kind: .exit, name: "KVM_EXIT_HLT", location: "exit 5",
                       threat: "a halted vCPU with no interrupt source ends the VM"),
        SurfaceChannel(kind: .exit, name: "KVM_EXIT_SHUTDOWN", location: "exit 8",
                       threat: "triple fault: ends the VM with a reason"),
        SurfaceChannel(kind: .exit, name: "KVM_EXIT_FAIL_ENTRY", location: "exit 9",
                       threat: "invalid guest state: ends the VM with the hardware reason"),
        SurfaceChannel(kind: .exit, name: "KVM_EXIT_INTR", location: "exit 10",
                       threat: "signal or immediate_exit kick: the VMM stops or resumes the vCPU"),
        SurfaceChannel(kind: .exit, name: "KVM_EXIT_INTERNAL_ERROR", location: "exit 17",
                       threat: "KVM could not emulate an instruction: ends the VM with the suberror"),
        SurfaceChannel(kind: .exit, name: "KVM_EXIT_SYSTEM_EVENT", location: "exit 24",
                       threat: "guest-requested reset or shutdown: ends the VM"),
    ]

    public static var all: [SurfaceChannel] { mmio + pio + virtqueues + hypercalls + exits }

    /// One channel per line: kind, name, location, threat.
    public static func text() -> String {
        let width = all.map(\.name.count).max() ?? 0
        var out = "Bulkhead attack surface: \(all.count) channels\n"
        for c in all {
            let kind = c.kind.rawValue.padding(9)
            out += "\(kind) \(c.name.padding(width)) \(c.location.padding(23)) \(c.threat)\n"
        }
        return out
    }

    /// A stable JSON rendering (the pinned format).
    public static func json() -> String {
        var out = "{\n  \"version\": 1,\n  \"channels\": [\n"
        for (i, c) in all.enumerated() {
            out += "    {\"kind\": \(quote(c.kind.rawValue)), \"name\": \(quote(c.name)), \"location\": \(quote(c.location)), \"threat\": \(quote(c.threat))}"
            out += i + 1 < all.count ? ",\n" : "\n"
        }
        return out + "  ]\n}\n"
    }

    static func quote(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            default:
                if u.value < 0x20 { out += "\\u" + String(repeating: "0", count: 4 - String(u.value, radix: 16).count) + String(u.value, radix: 16) }
                else { out.unicodeScalars.append(u) }
            }
        }
        return out + "\""
    }
}

extension String {
    func padding(_ width: Int) -> String {
        count >= width ? self : self + String(repeating: " ", count: width - count)
    }
}
