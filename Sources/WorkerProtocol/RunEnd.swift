/// How a run ends for the person who started it: the one table from a VM's outcome (and the
/// counters its worker reported) to an exit status and the lines printed to standard error. Used
/// by `bulkhead run` (jailed or not) and `bulkhead-worker --standalone` alike, so that a VM ends
/// with the same status and the same words whichever way it ran (README.md, "Exit status").
public enum RunEnd {
    /// Statuses besides the guest's own (sysexits.h): what `RefusalKind` carries too.
    public static let usage: Int32 = 64
    public static let badImage: Int32 = 65
    public static let unavailable: Int32 = 69
    public static let internalError: Int32 = 70
    /// A guest fault, triple fault or kernel panic (128 + SIGABRT, as a crashed process).
    public static let crashed: Int32 = 134
    public static let timedOut: Int32 = 124
    public static let vcpuFailed: Int32 = 125

    /// The exit status for `outcome`.
    public static func status(_ outcome: VMOutcome) -> Int32 {
        switch outcome {
        case .exited(let s): return Int32(s)
        case .reset, .poweredOff: return 0
        case .faulted, .panicked: return crashed
        case .timedOut: return timedOut
        case .vcpuFailure: return vcpuFailed
        }
    }

    /// What to say about `outcome` (nil: a guest that exited with status 0 needs no words).
    public static func message(_ outcome: VMOutcome) -> String? {
        switch outcome {
        case .exited(let s): return s == 0 ? nil : "guest exited with status \(s)"
        case .faulted(let why), .vcpuFailure(let why): return why
        case .timedOut(let ms):
            return "timeout: the guest was still running after \(Double(ms) / 1000) s and was stopped"
        case .reset: return "the guest reset the machine (i8042 command 0xFE); the VM ended"
        case .poweredOff: return "the guest powered the machine off (ACPI S5); the VM ended"
        case .panicked: return "the guest kernel panicked (reported through pvpanic); the VM was stopped"
        }
    }

    /// The status for a refusal: its kind's value.
    public static func status(_ kind: RefusalKind) -> Int32 { Int32(kind.rawValue) }

    // MARK: Counters

    /// Where a vCPU stood when a timeout stopped it: counter `stopped-at.vcpuN` = its rip.
    public static let stoppedAtPrefix = "stopped-at.vcpu"
    /// Whether hiding CPU features works on this host (1: every hidden feature is hidden, 0: not),
    /// and which ones the guest sees anyway (bit i for the guest interface's feature i), measured
    /// by a probe VM where the VM runs.
    public static let cpuidEnforcedCounter = "cpuid.enforced"
    public static let cpuidIneffectiveCounter = "cpuid.ineffective"

    /// "stopped at: vCPU 0 rip 0x…, vCPU 1 rip 0x…", or nil when no counter says where.
    public static func stoppedAt(_ counters: [Counter]) -> String? {
        let places = counters.compactMap { c -> (Int, UInt64)? in
            guard c.name.hasPrefix(stoppedAtPrefix), let v = Int(c.name.dropFirst(stoppedAtPrefix.count)) else { return nil }
            return (v, c.value)
        }.sorted { $0.0 < $1.0 }
        guard !places.isEmpty else { return nil }
        return "stopped at: " + places.map { "vCPU \($0.0) rip 0x\(String($0.1, radix: 16))" }.joined(separator: ", ")
    }

    /// `--stats`: the counters by group, one line each: "hypercalls: version=0 …", "exits: mmio=2 …".
    /// Timing and stopped-at counters are not statistics and are left out.
    public static func statisticsLines(_ counters: [Counter]) -> [String] {
        var groups: [(String, [String])] = []
        for c in counters where !c.name.hasPrefix("timing.") && !c.name.hasPrefix(stoppedAtPrefix) {
            let parts = c.name.split(separator: ".", maxSplits: 1).map(String.init)
            let (group, name) = parts.count == 2 ? (parts[0], parts[1]) : ("counters", c.name)
            let item = "\(name)=\(c.value)"
            if let i = groups.firstIndex(where: { $0.0 == group }) { groups[i].1.append(item) } else { groups.append((group, [item])) }
        }
        return groups.map { group, items in
            let label = group == "hypercall" ? "hypercalls" : group == "exit" ? "exits" : group
            return label + ": " + items.joined(separator: " ")
        }
    }

    /// The value of the counter `name`, if reported.
    public static func counter(_ name: String, in counters: [Counter]) -> UInt64? {
        counters.first { $0.name == name }?.value
    }

    /// The lines a run prints to standard error at its end, in order: the CPUID warning (when
    /// features were hidden, `hiddenFeatures` turning the ineffective-feature mask into names,
    /// and the probe found some of them still visible), the statistics (--stats), the outcome
    /// (the table above), and where a timeout stopped the vCPUs.
    public static func lines(_ outcome: VMOutcome, _ counters: [Counter], statistics: Bool,
                             hiddenFeatures: ((UInt64) -> [String])?) -> [String] {
        var lines: [String] = []
        if let names = hiddenFeatures, counter(cpuidEnforcedCounter, in: counters) == 0 {
            lines.append(cpuidWarning(names(counter(cpuidIneffectiveCounter, in: counters) ?? 0)))
        }
        if statistics { lines += statisticsLines(counters) }
        if let message = message(outcome) { lines.append(message) }
        if let place = stoppedAt(counters) { lines.append(place) }
        return lines
    }

    /// Printed when a probe VM found that guests of this kind still see features the VMM's CPUID
    /// table hides (a PVM host that does not trap CPUID, or not for every bit): the worker
    /// measures where the VM runs and reports it (`cpuid.enforced`, `cpuid.ineffective`).
    public static func cpuidWarning(_ features: [String]) -> String {
        "warning: on this host a guest sees the host's own CPUID value for \(features.joined(separator: ", ")) whatever the VMM's table says (measured by a probe VM), so --hide-cpu-feature has no effect for it"
    }
}
