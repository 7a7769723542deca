import HostOS
#if canImport(Glibc)
import Glibc
#endif

/// The host side of a worker's jail, which needs root and so is the launcher's: a slot (which
/// gives the VM its own uid and gid), the empty directory the worker pivots into, and the VM's
/// cgroup. `teardown` removes all of it; a slot whose launcher crashed is cleaned up by the next
/// launcher that takes it, so nothing is left behind for long either way.
///
/// Slots are numbered 0..<`slots`. Slot N is owned by whoever holds the flock on
/// `/run/bulkhead/jails/N.lock` (the kernel drops it when the holder dies), and gives
///   - uid and gid `uidBase + N` (a range no distribution hands out; nothing else runs as them),
///   - the jail directory `/run/bulkhead/jails/N` (empty on the host: the worker's root is a
///     tmpfs mounted over it in the worker's own mount namespace),
///   - the cgroup `bulkhead-N` below the launcher's own cgroup in each hierarchy.
public struct JailSetup: Sendable {
    public static let stateDirectory = "/run/bulkhead"
    public static let jailsDirectory = stateDirectory + "/jails"
    public static let uidBase: UInt32 = 1_900_000_000
    public static let slots = 4096

    public struct Failed: Error, CustomStringConvertible {
        public var description: String
    }

    public let slot: Int
    public let lock: LockFile
    public let root: String
    public let cgroup: CgroupPlan
    public let limits: CgroupLimits
    public var uid: UInt32 { Self.uidBase + UInt32(slot) }

    /// Takes a free slot and makes its directory and cgroup.
    public static func prepare(limits: CgroupLimits) throws(Failed) -> JailSetup {
        for dir in [stateDirectory, jailsDirectory] where !isDirectory(dir) {
            do { try makeDirectory(dir, mode: 0o711) } catch {
                if error.errno != EEXIST { throw Failed(description: "cannot make \(dir): \(error)") }
            }
        }
        let layout: CgroupLayout
        var v2Controllers: [String] = []
        do {
            layout = try CgroupLayout.current()
            if let unified = layout.unified, let text = try? readFile(unified + "/cgroup.controllers", limit: 4096) {
                v2Controllers = String(decoding: text, as: UTF8.self).split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init)
            }
        } catch {
            throw Failed(description: "cannot read this process's cgroups: \(error)")
        }
        sweep(layout: layout, v2Controllers: v2Controllers)
        let start = Int(getpid()) % slots
        for i in 0..<slots {
            let slot = (start + i) % slots
            let lock: LockFile?
            do { lock = try LockFile.acquire("\(jailsDirectory)/\(slot).lock") } catch {
                throw Failed(description: "cannot take a jail slot: \(error)")
            }
            guard let lock else { continue }   // in use
            let plan: CgroupPlan
            do { plan = try CgroupPlan.plan(layout, name: "bulkhead-\(slot)", limits: limits, v2Controllers: v2Controllers) } catch {
                lock.release()
                throw Failed(description: error.description)
            }
            let root = "\(jailsDirectory)/\(slot)"
            // Left by a launcher that crashed: its worker is gone (it dies with its launcher).
            if !plan.remove(patienceMilliseconds: 100).isEmpty || (pathExists(root) && (try? removeDirectory(root)) == nil) {
                lock.release()
                continue
            }
            do {
                try makeDirectory(root, mode: 0)
                try plan.create()
            } catch {
                try? removeDirectory(root)
                lock.release()
                throw Failed(description: "cannot set up the jail: \(error)")
            }
            return JailSetup(slot: slot, lock: lock, root: root, cgroup: plan, limits: limits)
        }
        throw Failed(description: "all \(slots) jail slots are in use")
    }

    /// Cleans up after launchers that died without tearing their jail down (a worker dies with
    /// its launcher, but a SIGKILLed launcher cannot remove the worker's cgroup and directory):
    /// every slot whose lock file nobody holds. Costs a few system calls per stale slot.
    public static func sweep(layout: CgroupLayout, v2Controllers: [String]) {
        guard let names = try? listDirectory(jailsDirectory) else { return }
        for name in names where name.hasSuffix(".lock") {
            guard let slot = Int(name.dropLast(5)), (0..<slots).contains(slot),
                  let lock = try? LockFile.acquire("\(jailsDirectory)/\(name)") else { continue }
            let dummy = CgroupLimits(memoryBytes: 0, processes: 0, cpuQuotaMicroseconds: 0)
            if let plan = try? CgroupPlan.plan(layout, name: "bulkhead-\(slot)", limits: dummy, v2Controllers: v2Controllers) {
                _ = plan.remove(patienceMilliseconds: 100)
            }
            try? removeDirectory("\(jailsDirectory)/\(slot)")
            lock.release()
        }
    }

    /// Moves this process into the cgroup it is already in (a no-op for the process), on a
    /// thread of its own. Moving a process between cgroups takes the kernel's
    /// cgroup_threadgroup_rwsem for writing, which the first time in a while waits for an RCU
    /// grace period: 6-25 ms on these hosts, for the worker's move. Started at the launcher's
    /// beginning, that wait overlaps the verification of the worker binary and the set-up, and
    /// the worker's own move is then quick (docs/benchmarks.md).
    public static func warmUpCgroupMoves() {
        guard let layout = try? CgroupLayout.current(), let dir = layout.v1["pids"] ?? layout.v1["cpu"] ?? layout.unified else { return }
        let pid = getpid()
        _ = try? OSThread.spawn { try? writeControlFile(dir + "/cgroup.procs", String(pid)) }
    }

    /// Removes the cgroup, the directory and the slot's lock. The worker must have been reaped.
    /// Returns what could not be removed.
    public func teardown() -> [String] {
        var problems = cgroup.remove().map { $0.description }
        do { try removeDirectory(root) } catch { if error.errno != ENOENT { problems.append(error.description) } }
        lock.release()
        return problems
    }
}
