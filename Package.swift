// swift-tools-version: 6.0
import PackageDescription

// The dependency line (see ../shared/STYLE.md and docs/architecture.md):
//   CLinux (C wrappers and constants for system calls, no logic)
//     └─ HostOS   typed system calls: descriptors, files, sockets, threads, processes, seccomp
//          ├─ Jail     the worker's sandbox steps and the host side (cgroups)
//          └─ KVM      (with CKVM, the KVM ABI's constants) the only module that maps guest memory
//               └─ VMM  run loop, device bus, hypercalls, attack-surface registry
//   Unsafe* pointers appear only in HostOS and KVM.
//   Boot, Devices  pure: no I/O, no pointers; testable and fuzzable without /dev/kvm
//   WorkerProtocol pure: the launcher <-> worker messages (strict decoder, fuzzed)
//   bulkhead       thin @main command line (the launcher)
//   bulkhead-worker  one VM per process, configured over a socketpair by the launcher
// Executables are hardened as issue 4 asks: position-independent (the toolchain's default), full
// RELRO (relocations resolved at start, then read-only: -z relro -z now), a non-executable stack
// and stack protectors (the compiler's default). CLITests.BinaryHardeningTests checks the result.
// Release builds are also stripped of their symbol tables: the launcher reads and hashes the whole
// worker binary before every start, and a stripped one is 8 MiB instead of 14 (about 10 ms less
// from exec to exit with --worker; docs/benchmarks.md). Crash backtraces then show addresses only.
let hardening: [LinkerSetting] = [.unsafeFlags(["-Xlinker", "-z", "-Xlinker", "relro", "-Xlinker", "-z", "-Xlinker", "now",
                                                "-Xlinker", "-z", "-Xlinker", "noexecstack"]),
                                  .unsafeFlags(["-Xlinker", "-s"], .when(configuration: .release))]

let package = Package(
    name: "Bulkhead",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "bulkhead", targets: ["bulkhead"]),
        .executable(name: "bulkhead-worker", targets: ["bulkhead-worker"]),
        .executable(name: "bulkhead-witness", targets: ["bulkhead-witness"]),
        // Libraries for the fuzz targets (Fuzz/) and benchmarks; not a stable API.
        .library(name: "BulkheadBoot", targets: ["Boot"]),
        .library(name: "BulkheadVirtio", targets: ["Virtio"]),
        .library(name: "BulkheadDevices", targets: ["Devices"]),
        .library(name: "BulkheadVMM", targets: ["VMM"]),
        .library(name: "BulkheadWorkerProtocol", targets: ["WorkerProtocol"]),
        .library(name: "BulkheadGuestInterface", targets: ["GuestInterface"]),
        .library(name: "BulkheadAuditLog", targets: ["AuditLog"]),
        // The shared test support, for Fuzz/ (never part of a release).
        .library(name: "BulkheadTestSupport", targets: ["TestSupport"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        // SHA-256 of the worker binary before the launcher executes it (issue 4, verified exec).
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.0"),
        // The host-OS layer's descriptors, errno values and retrying calls where it covers them.
        .package(url: "https://github.com/apple/swift-system", from: "1.4.0"),
    ],
    targets: [
        .target(name: "CLinux"),
        .target(name: "CKVM"),
        .target(name: "HostOS", dependencies: ["CLinux", .product(name: "SystemPackage", package: "swift-system")]),
        .target(name: "Jail", dependencies: ["HostOS", "CLinux"]),
        .target(name: "KVM", dependencies: ["HostOS", "CKVM", "CLinux"]),
        // The guest ABI's numbers, the one copy: Guest/build.sh compiles the same file into every
        // Embedded Swift guest (pure, no dependencies, constants only).
        .target(name: "GuestABI"),
        .target(name: "Boot", dependencies: ["GuestABI"]),
        .target(name: "Virtio", dependencies: ["GuestABI"]),
        .target(name: "Devices", dependencies: ["Virtio", "GuestABI"]),
        .target(name: "WorkerProtocol"),
        // The tamper-evident audit log's format (issue 12): record frames, canonical JSON, the
        // RFC 6962 Merkle tree and its proofs. Pure: no I/O; SHA-256 from swift-crypto.
        .target(name: "AuditLog", dependencies: [.product(name: "Crypto", package: "swift-crypto")]),
        // The audit log's one appender (group commit, fdatasync, crash recovery, the key) and its
        // directory's reader: AuditLog's format on the host's files. Never maps guest memory.
        .target(name: "AuditStore", dependencies: ["AuditLog", "HostOS", .product(name: "Crypto", package: "swift-crypto")]),
        // What a guest sees of the VMM: the hypercall ABI and dispatcher, fault reports, the CPUID
        // policy and the attack-surface registry (pure).
        .target(name: "GuestInterface", dependencies: ["GuestABI", "Boot"]),
        // Seccomp allowlists: policy text -> classic BPF, and a BPF interpreter (pure).
        .target(name: "Seccomp"),
        // The worker's policy files, embedded in the binary with C23 #embed (data only).
        .target(name: "CPolicies", exclude: ["policies"]),
        .target(name: "VMM", dependencies: ["KVM", "HostOS", "Boot", "Devices", "GuestInterface", "WorkerProtocol"]),
        // Starts and watches one jailed worker: verified exec, the control socket, configure ->
        // started -> ended, kill, teardown, the vsock broker's host side. Never maps guest memory:
        // no KVM, no VMM (ArchitectureTests).
        .target(name: "Supervisor", dependencies: ["HostOS", "Jail", "WorkerProtocol", "Seccomp",
                                                   .product(name: "Crypto", package: "swift-crypto")]),
        // The command line over Supervisor: it links neither KVM nor VMM (ArchitectureTests).
        .executableTarget(
            name: "bulkhead",
            dependencies: ["Supervisor", "HostOS", "Jail", "WorkerProtocol", "GuestInterface", "Boot", "AuditLog", "AuditStore",
                           .product(name: "ArgumentParser", package: "swift-argument-parser")],
            linkerSettings: hardening
        ),
        // One VM per process, configured over a socketpair by the launcher (or, with --standalone,
        // from a few options parsed by hand): no argument parser, no Foundation.
        .executableTarget(name: "bulkhead-worker", dependencies: ["VMM", "KVM", "HostOS", "Jail", "Boot", "GuestInterface", "WorkerProtocol", "Seccomp", "CPolicies"],
                         linkerSettings: hardening),
        // The audit log's witness: cosigns checkpoints after checking consistency, jailed under its
        // own uid with its own seccomp allowlist. Never maps guest memory (ArchitectureTests).
        .executableTarget(name: "bulkhead-witness", dependencies: ["AuditLog", "HostOS", "Jail", "Seccomp", "CPolicies",
                                                                    .product(name: "Crypto", package: "swift-crypto")],
                          linkerSettings: hardening),
        // The module rules of docs/architecture.md, read from the package graph (no root, no KVM).
        .testTarget(name: "ArchitectureTests"),
        // Unit test targets: they need neither root nor /dev/kvm, and cannot reach the
        // requiresKVM / requiresRoot traits (HostTestSupport: ArchitectureTests checks it).
        .testTarget(name: "HostOSTests", dependencies: ["HostOS", "Jail", "CLinux", "TestSupport"]),
        .testTarget(name: "KVMTests", dependencies: ["KVM", "HostOS"]),
        .testTarget(name: "BootTests", dependencies: ["Boot", "TestSupport"]),
        .testTarget(name: "VirtioTests", dependencies: ["Virtio", "GuestABI", "TestSupport"]),
        .testTarget(name: "DevicesTests", dependencies: ["Devices", "GuestABI", "TestSupport"]),
        // Shared by the tests and the fuzzers (pure: no KVM, no root): the driver side of a virtqueue,
        // the in-memory back ends, the seeded generator, the page-table walker, the image builders.
        .target(name: "TestSupport", dependencies: ["Boot", "Virtio", "Devices", "GuestABI"], path: "Tests/TestSupport"),
        // For the integration targets only: the requiresKVM / requiresRoot traits and tiny kernels
        // (re-exports TestSupport).
        .target(name: "HostTestSupport", dependencies: ["TestSupport", "VMM", "KVM"], path: "Tests/HostTestSupport"),
        .testTarget(name: "VMMTests", dependencies: ["VMM", "HostOS", "Jail", "Devices", "GuestInterface", "Supervisor", "TestSupport"]),
        // Integration test targets: IntegrationTests (in-process suites that need /dev/kvm or root:
        // guest runs, vCPU kicks, cgroups, credentials) and CLITests (the built executables).
        .testTarget(name: "IntegrationTests", dependencies: ["VMM", "KVM", "HostOS", "Jail", "Devices", "Boot", "GuestInterface",
                                                             "HostTestSupport"]),
        .testTarget(name: "WorkerProtocolTests", dependencies: ["WorkerProtocol"]),
        .testTarget(name: "AuditLogTests", dependencies: ["AuditLog", "TestSupport"]),
        .testTarget(name: "AuditStoreTests", dependencies: ["AuditStore", "AuditLog", "HostOS", "TestSupport"]),
        // KVM and CPolicies too: the compiled policies installed for real, and the embedded files.
        .testTarget(name: "SeccompTests", dependencies: ["Seccomp", "CPolicies", "HostOS", "KVM", "CKVM", "CLinux", "TestSupport"]),
        // A worker that misbehaves on purpose, for the launcher's tests (never installed).
        .executableTarget(name: "bulkhead-fake-worker", dependencies: ["HostOS", "Jail", "WorkerProtocol"], path: "Tests/FakeWorker"),
        // Drives the audit log's appender from N threads, for the crash test and the benchmark (never installed).
        .executableTarget(name: "bulkhead-audit-writer", dependencies: ["AuditLog", "AuditStore", "HostOS"], path: "Tests/AuditWriter"),
        // Runs the built `bulkhead` executable (the dependency makes `swift test` build it).
        // VMM too: NumberTests compares `--hide-cpu-feature`'s warning with the CPUID probe run here.
        .testTarget(name: "CLITests", dependencies: ["bulkhead", "bulkhead-worker", "bulkhead-fake-worker", "bulkhead-audit-writer", "bulkhead-witness", "AuditLog", "AuditStore", "KVM", "HostOS", "Jail", "VMM", "GuestInterface", "HostTestSupport",
                                                     .product(name: "Crypto", package: "swift-crypto")]),
    ],
    swiftLanguageModes: [.v6]
)
