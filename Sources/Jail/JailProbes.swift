import HostOS
import CLinux
#if canImport(Glibc)
import Glibc
#endif

/// A test mode of the worker (`bulkhead run --jail-probe`): after its jail is complete, the
/// worker tries what a compromised worker would try first and writes one line per attempt,
/// `jail-probe NAME: RESULT`, to the VM's console. The tests (Tests/CLITests/JailTests.swift)
/// read those lines and check each result: these are the jail's proofs seen from inside it.
/// Results are errno names ("ENOENT") or what was seen; nothing here changes anything.
public enum JailProbes {
    public static func run(writingTo console: FileDescriptor) {
        var lines: [String] = []
        func report(_ name: String, _ result: String) { lines.append("jail-probe \(name): \(result)") }
        func errnoName(_ e: Int32) -> String {
            switch e {
            case ENOENT: return "ENOENT"
            case EACCES: return "EACCES"
            case EPERM: return "EPERM"
            case ESRCH: return "ESRCH"
            case ENETUNREACH: return "ENETUNREACH"
            case EROFS: return "EROFS"
            case EINVAL: return "EINVAL"
            default: return "errno \(e)"
            }
        }
        func tryOpen(_ path: String) -> String {
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            if fd >= 0 { close(fd); return "opened" }
            return errnoName(errno)
        }
        // Host files, /proc (other processes), devices.
        report("open /etc/passwd", tryOpen("/etc/passwd"))
        report("open /proc/self/status", tryOpen("/proc/self/status"))
        report("open /dev/kvm", tryOpen("/dev/kvm"))
        report("open ../../etc/passwd", tryOpen("../../etc/passwd"))
        // The root: what is in it, and whether it can be written.
        do {
            let names = try listDirectory("/")
            report("list /", names.isEmpty ? "empty" : names.sorted().joined(separator: " "))
        } catch {
            report("list /", errnoName(error.errno))
        }
        let created = open("/x", O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
        if created >= 0 { close(created) }
        report("create /x", created >= 0 ? "created" : errnoName(errno))
        report("mount tmpfs", mount("x", "/", "tmpfs", 0, nil) == 0 ? "mounted" : errnoName(errno))
        // The network: which interfaces exist, and whether anything outside is reachable.
        if let list = if_nameindex() {
            var interfaces: [String] = []
            var i = 0
            // SAFETY: if_nameindex returns an array ended by an entry with index 0; each name is a
            // C string owned by the array until if_freenameindex.
            while list[i].if_index != 0, let name = list[i].if_name {
                interfaces.append(String(cString: name))
                i += 1
            }
            if_freenameindex(list)
            report("network interfaces", interfaces.sorted().joined(separator: " "))
        } else {
            report("network interfaces", errnoName(errno))
        }
        let r = connectUDP(ipv4: 0x0101_0101, port: 53)   // 1.1.1.1
        report("connect 1.1.1.1:53", r == 0 ? "connected" : errnoName(r))
        // Processes: its own PID namespace, where it is alone.
        report("pid", "\(getpid()) parent \(getppid())")
        report("kill -1", kill(-1, 0) == 0 ? "signalled" : errnoName(errno))
        report("kill 2", kill(2, 0) == 0 ? "signalled" : errnoName(errno))
        // Identity and privilege.
        var sets: [UInt32] = [1, 1, 1, 1, 1, 1]
        // SAFETY: capget writes six uint32 into the array's own storage.
        let caps = clinux_capget(&sets) == 0 ? (sets.allSatisfy { $0 == 0 } ? "none" : "\(sets)") : errnoName(errno)
        report("uid", "\(getuid()) capabilities \(caps) no_new_privs \(clinux_get_no_new_privs())")
        report("setuid 1", setuid(1) == 0 ? "changed" : errnoName(errno))
        let bytes = Array((lines.joined(separator: "\n") + "\n").utf8)
        _ = try? console.writeAll(bytes)
    }

    /// The `violation` probe: a system call no worker policy allows (socket(2)), made after the
    /// filters are in place. The worker never returns from it when the jail holds.
    public static func makeForbiddenCall() {
        let s = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        if s >= 0 { close(s) }
    }
}
