import ArgumentParser
import AuditLog
import AuditStore
import GuestInterface
import HostOS
import Jail
import Supervisor
import WorkerProtocol
#if canImport(Glibc)
import Glibc
#endif

extension Run {
    /// Runs the VM in a bulkhead-worker process, jailed or not, and ends this process with the
    /// VM's status (RunEnd, the one table of outcomes).
    func launch(jailed: Bool) throws {
        guard let auditLog else { return try launch(jailed: jailed, audit: nil) }
        let name = (image ?? kernel).map { String($0.split(separator: "/").last ?? "vm") } ?? "hello"
        let audit: RunAudit
        var witness: WitnessEndpoint?
        if let auditWitness, let auditWitnessKey {
            do { witness = WitnessEndpoint(socketPath: auditWitness, key: try AuditDirectory.witnessKey(at: auditWitnessKey)) } catch {
                printError("--audit-witness-key: \(error.description)")
                throw ExitCode(RunEnd.usage)
            }
        }
        do { audit = try RunAudit(directory: auditLog, vmName: name, witness: witness) } catch {
            printError("the VM was not started: its audit record could not be written: \(error.description)")
            throw ExitCode(RunEnd.internalError)
        }
        var status: Int32 = 0
        do { try launch(jailed: jailed, audit: audit) } catch let e as ExitCode { status = e.rawValue } catch {
            status = RunEnd.internalError
        }
        // Fail closed: a run whose records could not all be written ends with an error.
        if !audit.finish(status: status) && status == 0 { status = RunEnd.internalError }
        if status != 0 { throw ExitCode(status) }
    }

    private func launch(jailed: Bool, audit: RunAudit?) throws {
        let launcherStart = monotonicNanoseconds()
        // Verified exec: the binary is checked (owner, mode, SHA-256) before anything else is
        // opened, and the checked descriptor is the one executed.
        let executable: FileDescriptor
        do { executable = try Launcher.verifiedWorker(digest: try Launcher.expectedDigest(workerSHA256)) } catch {
            printError(error.description)
            throw ExitCode(RunEnd.internalError)
        }
        var plan: RunPlan
        do { plan = try self.plan() } catch {
            audit?.event("vm.refused", "the configuration was refused: \((error as? ExitCode).map { "exit status \($0.rawValue)" } ?? "\(error)")")
            throw error
        }
        audit?.event("vm.configured", "\(image ?? kernel ?? "hello") with \(memory) MiB, \(vcpus) vCPU\(vcpus == 1 ? "" : "s"), \(disk.count + readOnlyDisks.count) disks"
                     + (netListen != nil || netConnect != nil ? ", a network device" : "") + (vsock != nil ? ", vsock" : "") + (rng ? ", rng" : "")
                     + (timeout.map { ", timeout \($0) s" } ?? "") + (jailed ? ", jailed" : ", not jailed"))
        var jail: JailSetup?
        if jailed {
            // The worker's threads: main, control, device, one per vCPU, and room to spare.
            let cgroupLimits = CgroupLimits(memoryBytes: UInt64(memoryLimit ?? Int(memory) + 64) << 20, processes: UInt32(vcpus + 8),
                                            cpuQuotaMicroseconds: UInt64(vcpus + 1) * CgroupLimits.cpuPeriodMicroseconds)
            do { jail = try JailSetup.prepare(limits: cgroupLimits) } catch {
                printError("\(error)")
                audit?.event("vm.refused", "the jail could not be prepared: \(error)")
                throw ExitCode(RunEnd.unavailable)
            }
            let probe: VMConfiguration.Jail.Probe = jailProbe == "probes" ? .probes : jailProbe == "violation" ? .probesThenViolation : .none
            plan.configuration.jail = jail?.settings(seccomp: seccompLog ? .log : .enforce, probe: probe)
        }
        var endStatus: Int32?
        let result: Launcher.Result
        do {
            result = try Launcher.run(plan.configuration, descriptors: plan.descriptors, executable: executable, jail: jail,
                                      stop: plan.stopRequest,
                                      onStarted: { audit?.event("vm.started", "worker pid \($0), \(jailed ? "jailed" : "not jailed")") },
                                      onEnded: { endStatus = reportEnd($0, $1, launcherStart: launcherStart); audit?.ended($0) },
                                      warn: { printError("warning: " + $0) })
        } catch {
            for problem in jail?.teardown() ?? [] { printError("warning: jail teardown: \(problem)") }
            printError("cannot start the worker: \(error)")
            audit?.event("vm.refused", "the worker could not be started: \(error)")
            throw ExitCode(RunEnd.internalError)
        }
        switch result {
        case .refused(let why, let kind):
            printError("the worker refused the VM: \(why)")
            audit?.event("vm.refused", "the worker refused the configuration: \(why)")
            throw ExitCode(RunEnd.status(kind))
        case .workerFailed(let why, let status, let failure):
            printError(why)
            audit?.workerFailed(why, failure)
            throw ExitCode(status)
        case .ended(let outcome, let counters):
            let code = endStatus ?? reportEnd(outcome, counters, launcherStart: launcherStart)
            if code != 0 { throw ExitCode(code) }
        case .stopped:
            printError("the VM was stopped from its console (Ctrl-A x)")
            audit?.event("vm.stopped", "stopped from its console (Ctrl-A x)")
        }
    }

    /// Prints how the VM ended (as soon as the worker says so, before its teardown: issue 9)
    /// and returns the exit status.
    func reportEnd(_ outcome: VMOutcome, _ counters: [Counter], launcherStart: UInt64) -> Int32 {
        if reportTiming {
            // The worker's own start, and its VM's first hypercall (same clock as ours).
            var line = "timing: launcher-start-ns \(launcherStart) spawn-ns \(Launcher.spawnNanoseconds)"
            for c in counters where c.name.hasPrefix("timing.") { line += " \(c.name.dropFirst(7)) \(c.value)" }
            try? FileDescriptor.standardError.writeAll(Array((line + "\n").utf8))
        }
        let features: ((UInt64) -> [String])? = hiddenFeatures.isEmpty ? nil : { CPUIDPolicy.features(mask: $0).map(\.rawValue) }
        for line in RunEnd.lines(outcome, counters, statistics: stats, hiddenFeatures: features) { printError(line) }
        return RunEnd.status(outcome)
    }
}
