import KVM
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// What this host offers the tests, measured once per test process (never guessed from CPU
/// flags or versions).
public enum TestHost {
    /// /dev/kvm opens and answers as a KVM of the API version Bulkhead needs.
    public static let hasKVM = (try? KVMSystem()) != nil
    public static let isRoot = getuid() == 0
}

extension Trait where Self == ConditionTrait {
    /// The test runs where /dev/kvm is usable, and is skipped with that reason elsewhere.
    public static var requiresKVM: Self { .enabled(if: TestHost.hasKVM, "needs /dev/kvm") }
    /// The test runs as root (the jail, filesystem credentials, cgroups), and is skipped with
    /// that reason elsewhere.
    public static var requiresRoot: Self { .enabled(if: TestHost.isRoot, "needs root") }
}
