import HostOS

/// Finds the guest programs that ship with Bulkhead (built from `Guest/` by `Guest/build.sh`).
///
/// Searched in order: `$BULKHEAD_GUEST_DIR`, then `guests/` next to the `bulkhead` executable,
/// then `../guests/` and `../../guests/` (so `.build/debug/bulkhead`, which is really
/// `.build/<triple>/debug/bulkhead`, finds `.build/guests/`), then `../libexec/bulkhead/guests/`
/// for an installed copy.
public enum GuestCatalog {
    public static let defaultGuest = "hello"

    public static var searchDirectories: [String] {
        var dirs: [String] = []
        if let d = environment("BULKHEAD_GUEST_DIR"), !d.isEmpty { dirs.append(d) }
        if let exe = executablePath(), let slash = exe.lastIndex(of: "/") {
            let dir = String(exe[..<slash])
            dirs += [dir + "/guests", dir + "/../guests", dir + "/../../guests", dir + "/../libexec/bulkhead/guests"]
        }
        return dirs
    }

    /// The path of the built guest `name`, if one exists.
    public static func locate(_ name: String) -> String? {
        for d in searchDirectories {
            let p = d + "/" + name + ".elf"
            if isRegularFile(p) { return p }
        }
        return nil
    }
}
