import Foundation
import HostTestSupport
import Testing
@testable import HostOS

/// `Caller` as root, for a caller that is not (issue 9, items 4 to 6; the rest of the checked
/// opens are unit tests in HostOSTests).
@Suite(.timeLimit(.minutes(1)))
struct CallerCredentialsTests {
    /// A fresh directory of mode 0755 for one test.
    func directory(_ name: String) throws -> String {
        let dir = NSTemporaryDirectory() + "bh-checked-\(getpid())-\(name)"
        try? FileManager.default.removeItem(atPath: dir)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        chmod(dir, 0o755)
        return dir
    }

    /// As root, for a caller that is not: the kernel's own rules apply as for them (mode bits,
    /// search permission on the directories), on a thread of its own; this thread is unchanged.
    @Test(.requiresRoot)
    func aCallerWithoutPermissionIsRefused() throws {
        let dir = try directory("caller")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let caller = Caller(uid: 4242, gid: 4242, groups: [])
        #expect(caller.needsOwnCredentials)
        try Data(count: 512).write(to: URL(fileURLWithPath: dir + "/root-only"))
        chmod(dir + "/root-only", 0o600)
        try Data(count: 512).write(to: URL(fileURLWithPath: dir + "/theirs"))
        chown(dir + "/theirs", 4242, 4242)
        chmod(dir + "/theirs", 0o600)
        try FileManager.default.createDirectory(atPath: dir + "/closed", withIntermediateDirectories: false)
        chmod(dir + "/closed", 0o700)
        try Data(count: 512).write(to: URL(fileURLWithPath: dir + "/closed/open"))
        chmod(dir + "/closed/open", 0o644)

        do {
            _ = try caller.open(dir + "/root-only", what: "disk", access: .read)
            Issue.record("a root-only file was opened for uid 4242")
        } catch {
            #expect(error.reason == .system(errno: EACCES))
            #expect(error.checkedFor == 4242)
            #expect(error.description.contains("checked for uid 4242"), "\(error)")
        }
        #expect(throws: Never.self) { try caller.open(dir + "/theirs", what: "disk", access: .readWrite) }
        // Search permission: the file is readable by all, its directory is not searchable.
        #expect(throws: PathRefusal.self) { try caller.open(dir + "/closed/open", what: "disk", access: .read) }
        // A console file the caller creates is theirs.
        try FileManager.default.createDirectory(atPath: dir + "/mine", withIntermediateDirectories: false)
        chown(dir + "/mine", 4242, 4242)
        _ = try caller.open(dir + "/mine/console", what: "console file", access: .createOrTruncate)
        let attributes = try FileManager.default.attributesOfItem(atPath: dir + "/mine/console")
        #expect((attributes[.ownerAccountID] as? NSNumber)?.uint32Value == 4242)
        // The thread that did all this was another one: this one is still root for the kernel.
        #expect(throws: Never.self) { try FileDescriptor.openChecked(dir + "/root-only", what: "disk", access: .read) }
        #expect(fileSystemIDs() == "0 0")
        // And the one that does take them has the caller's, and no groups.
        let seen = try caller.perform { fileSystemIDs() + " groups:" + threadGroups() }
        #expect(seen == "4242 4242 groups:", "\(seen)")
    }
}

/// This thread's filesystem uid and gid ("fsuid fsgid"), from /proc/thread-self/status.
func fileSystemIDs() -> String {
    let text = String(decoding: (try? readFile("/proc/thread-self/status", limit: 1 << 16)) ?? [], as: UTF8.self)
    func fourth(_ key: String) -> String {
        text.split(separator: "\n").first { $0.hasPrefix(key) }?.split(whereSeparator: { $0 == "\t" || $0 == " " }).dropFirst(4).first.map(String.init) ?? "?"
    }
    return fourth("Uid:") + " " + fourth("Gid:")
}

/// This thread's supplementary groups, from /proc/thread-self/status.
func threadGroups() -> String {
    let text = String(decoding: (try? readFile("/proc/thread-self/status", limit: 1 << 16)) ?? [], as: UTF8.self)
    return text.split(separator: "\n").first { $0.hasPrefix("Groups:") }.map { String($0.dropFirst(7)).trimmingCharacters(in: .whitespaces) } ?? "?"
}
