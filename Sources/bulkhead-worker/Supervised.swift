import CPolicies
import HostOS
import Jail
import KVM
import Seccomp
import VMM
import WorkerProtocol
#if canImport(Glibc)
import Glibc
#endif

/// The launcher-driven mode (no arguments): configured over descriptor 3, jailed as told, runs
/// the VM and reports its end. See main.swift.
func runForLauncher(processStart: UInt64) -> Never {
    setThreadName("bulkhead-worker")   // started from a descriptor, it would be called "3" or so
    // Never outlive the launcher: SIGKILL when it goes (the closed control socket ends us too).
    setParentDeathSignal(SIGKILL)
    let control = FileDescriptor(borrowing: 3)
    ignoreBrokenPipe()

    func send(_ m: WorkerMessage) {
        do { try control.sendMessage(WorkerProtocol.encode(m)) } catch { exit(1) }
    }

    func refuse(_ why: String, kind: RefusalKind = .internal, status: Int32 = 3) -> Never {
        send(.refused(String(why.prefix(VMOutcome.maxReasonLength)), kind: kind))
        exit(status)
    }

    // Before reading anything: only descriptors 0-3 open, no environment.
    do {
        try JailSteps.closeDescriptors(above: 3)
        try JailSteps.clearEnvironment()
    } catch {
        refuse(error.description)
    }

    let first: ReceivedMessage
    do {
        guard let m = try control.receiveMessage(maxBytes: WorkerProtocol.maxMessage, maxDescriptors: WorkerProtocol.maxDescriptors) else {
            exit(1) // the launcher went away before saying anything
        }
        first = m
    } catch {
        refuse("control socket: \(error)", status: 1)
    }

    let configuration: VMConfiguration
    do {
        let message = try WorkerProtocol.decode(first.bytes, from: .launcher, descriptors: first.descriptors.count)
        guard case .configure(let c) = message else { refuse("expected configure, got \(message.type)", status: 2) }
        configuration = c
    } catch {
        refuse("bad configure message: \(error)", status: 2)
    }

    let configured = monotonicNanoseconds()

    // The jail, while this process is single-threaded, each step checked (Sources/Jail/Jail.swift).
    // The launcher has already put this process in its own PID namespace (it is pid 1 there: checked) and in
    // the VM's cgroup, and made the empty directory `root`. Here:
    //   1. the VM's own host uid and gid, no supplementary groups (first: a process can map only its
    //      own uid into a user namespace it makes);
    //   2. new user, mount, network, IPC, UTS and cgroup namespaces (root inside = that uid outside);
    //   3. pivot_root into an empty read-only tmpfs, the host's tree detached;
    //   4. resource limits: no core dumps, 4096 descriptors, files of at most 1 GiB, `processLimit`
    //      threads;
    //   5. every capability dropped, for good (securebits locked);
    //   6. no_new_privs, not dumpable.
    // Without a jail (`bulkhead run --no-jail --worker`, or a launcher without root) only 4 and 6.
    do {
        if let jail = configuration.jail {
            try JailSteps.checkOwnPIDNamespace()
            try JailSteps.becomeUser(uid: jail.uid, gid: jail.gid)
            setParentDeathSignal(SIGKILL)   // a change of uid clears it
            try JailSteps.enterUserNamespaces(uid: jail.uid, gid: jail.gid)
            try JailSteps.pivotRoot(into: jail.root)
            try JailSteps.limitResources(openFiles: 4096, fileSize: 1 << 30, processes: UInt64(jail.processLimit))
            try JailSteps.dropCapabilities()
        } else {
            try JailSteps.limitResources(openFiles: 4096, fileSize: 1 << 30)
        }
        try JailSteps.forbidNewPrivileges()
    } catch {
        refuse(error.description)
    }

    if let jail = configuration.jail, jail.probe != .none, Int(configuration.console) < first.descriptors.count {
        JailProbes.run(writingTo: first.descriptors[Int(configuration.console)])
    }

    // Last step: the seccomp allowlists (Sources/CPolicies/policies/*.policy, compiled in). The main
    // thread's filter covers every thread made after it (control, device, vCPU); each vCPU thread
    // adds the stricter vCPU filter at its start. A call outside them is not run: the kernel raises
    // SIGSYS, whose handler sends `violation` with the call's number and ends the process. In log
    // mode the calls run and the kernel logs them instead.
    var vcpuProgram: [(code: UInt16, jt: UInt8, jf: UInt8, k: UInt32)] = []
    if let jail = configuration.jail {
        do {
            let action: DefaultAction = jail.seccomp == .log ? .log : .trap
            let main = try SeccompPolicy(parsing: stringFromStaticCString(bulkhead_policy_worker_main_text())).compile(defaultAction: action)
            vcpuProgram = try SeccompPolicy(parsing: stringFromStaticCString(bulkhead_policy_worker_vcpu_text())).compile(defaultAction: action).map(\.fields)
            try installViolationReporter(descriptor: control.rawValue, template: WorkerProtocol.encode(.violation(syscall: 0)),
                                         syscallOffset: WorkerMessage.violationSyscallOffset)
            try installSeccompFilter(main.map(\.fields))
        } catch {
            refuse("jail step 'seccomp' failed: \(error)")
        }
        if !isUnderSeccompFilter() { refuse("jail step 'seccomp' failed: the filter is not in force") }
        if jail.probe == .probesThenViolation { JailProbes.makeForbiddenCall() }
    }

    let jailed = monotonicNanoseconds()

    var vm: WorkerVM
    do { vm = try WorkerVM(configuration, descriptors: first.descriptors) } catch { refuse(error.description, kind: error.kind) }
    if configuration.jail != nil {
        let program = vcpuProgram
        vm.machine.vcpuThreadStart = {
            do { try installSeccompFilter(program); return nil } catch { return "seccomp: \(error)" }
        }
    }

    // The launcher's later messages: `stop` (or its going away) ends the VM and this process now.
    do {
        _ = try OSThread.spawn {
            while true {
                let next = try? control.receiveMessage(maxBytes: WorkerProtocol.maxMessage, maxDescriptors: 0)
                guard let next else { _exit(0) }
                if case .stop? = try? WorkerProtocol.decode(next.bytes, from: .launcher, descriptors: next.descriptors.count) {
                    _exit(0)
                }
                // Anything else after configure is a protocol violation by the launcher: stop too.
                _exit(2)
            }
        }
    } catch {
        refuse("cannot start the control thread: \(error)")
    }

    // With --hide-cpu-feature: whether it has any effect here, measured by a probe VM of the same
    // kind, behind the same jail and filters (the launcher warns when it has none).
    let cpuidCounters = vm.cpuidEnforcementCounters()
    send(.started)
    do {
        let report = try vm.run()
        send(WorkerVM.ended(report, extra: [Counter(name: "timing.worker-start-ns", value: processStart),
                                            Counter(name: "timing.configured-ns", value: configured),
                                            Counter(name: "timing.jailed-ns", value: jailed)] + cpuidCounters))
        // Closing the VM takes 12-20 ms (the in-kernel irqchip) and happens as this process exits.
        // The launcher has the outcome; let go of the terminal or pipe now (the console and standard
        // descriptors), so that whoever reads the launcher's output sees its end with the launcher's
        // exit, not with ours (issue 9).
        if Int(configuration.console) < first.descriptors.count { close(first.descriptors[Int(configuration.console)].rawValue) }
        close(0); close(1); close(2)
        exit(0)
    } catch {
        refuse(error.description, kind: error.refusalKind)
    }
}
