import Foundation
import Testing

/// The package's modules and their edges: the targets `swift package describe --type json`
/// reports, and the modules each target's sources import.
struct PackageGraph {
    struct Target {
        var name: String
        var type: String
        var path: String
        var dependencies: [String]
        var imports: Set<String> = []
    }
    var targets: [String: Target]

    /// Every target `name` depends on, directly or through others (itself excluded).
    func closure(of name: String) -> Set<String> {
        var seen: Set<String> = []
        var todo = targets[name]?.dependencies ?? []
        while let next = todo.popLast() {
            guard seen.insert(next).inserted else { continue }
            todo += targets[next]?.dependencies ?? []
        }
        return seen
    }

    /// The modules a Swift source imports (plain, @testable, @_exported, inside #if or not).
    static func imports(in source: String) -> Set<String> {
        var found: Set<String> = []
        for line in source.split(separator: "\n", omittingEmptySubsequences: true) {
            var words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })[...]
            while let w = words.first, w.hasPrefix("@") { words = words.dropFirst() }
            guard words.count >= 2, words.first == "import" else { continue }
            var module = words[words.startIndex + 1]
            // `import struct Foo.Bar`, `import Foo.Bar`: the module is the first path component.
            if ["struct", "class", "enum", "protocol", "func", "var", "let", "typealias"].contains(module), words.count >= 3 {
                module = words[words.startIndex + 2]
            }
            found.insert(String(module.split(separator: ".").first ?? module))
        }
        return found
    }

    /// The package at `root`, read with `swift package describe` (a scratch path of its own, so
    /// that it never waits for the lock of the build that is running these tests).
    static func load(root: URL) throws -> PackageGraph {
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("bulkhead-describe-\(getpid())")
        defer { try? FileManager.default.removeItem(at: scratch) }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        p.arguments = ["swift", "package", "--package-path", root.path, "--scratch-path", scratch.path, "describe", "--type", "json"]
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            throw DescribeFailed(text: String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self))
        }
        struct Description: Decodable {
            struct T: Decodable { var name: String; var type: String; var path: String; var target_dependencies: [String]? }
            var targets: [T]
        }
        let d = try JSONDecoder().decode(Description.self, from: data)
        var targets: [String: Target] = [:]
        for t in d.targets {
            var target = Target(name: t.name, type: t.type, path: t.path, dependencies: t.target_dependencies ?? [])
            let dir = root.appendingPathComponent(t.path)
            if let files = FileManager.default.enumerator(at: dir, includingPropertiesForKeys: nil) {
                for case let file as URL in files where file.pathExtension == "swift" {
                    target.imports.formUnion(imports(in: (try? String(contentsOf: file, encoding: .utf8)) ?? ""))
                }
            }
            targets[t.name] = target
        }
        return PackageGraph(targets: targets)
    }

    struct DescribeFailed: Error, CustomStringConvertible { var text: String; var description: String { "swift package describe failed: \(text)" } }
}

/// One rule of docs/architecture.md: `modules` may not reach any of `forbidden`, neither through
/// the package graph nor by an import in their sources.
struct Rule {
    var why: String
    var modules: [String]
    var forbidden: Set<String>

    /// The forbidden edges in `graph`, one line each (empty: the rule holds).
    func violations(in graph: PackageGraph) -> [String] {
        var found: [String] = []
        for m in modules {
            guard let t = graph.targets[m] else { continue }
            for d in graph.closure(of: m).intersection(forbidden).sorted() {
                found.append("\(m) depends on \(d) (\(why))")
            }
            for i in t.imports.intersection(forbidden).sorted() {
                found.append("\(m) imports \(i) (\(why))")
            }
        }
        return found
    }
}

enum Architecture {
    static let pure = ["GuestABI", "Boot", "Virtio", "Devices", "GuestInterface", "WorkerProtocol", "Seccomp", "AuditLog"]
    static let hostOS: Set<String> = ["Glibc", "Foundation", "HostOS", "Jail", "KVM", "VMM", "CLinux", "CKVM"]
    static let guestMemory: Set<String> = ["KVM", "VMM", "Devices", "Virtio", "Boot"]

    /// The rules of docs/architecture.md, in its order.
    static let rules: [Rule] = [
        Rule(why: "a pure module does no I/O and holds no pointers", modules: pure, forbidden: hostOS),
        Rule(why: "the host-OS layer knows nothing of virtual machines", modules: ["HostOS", "Jail"],
             forbidden: ["KVM", "VMM", "CKVM", "Boot", "Virtio", "Devices"]),
        Rule(why: "the daemon, the switch, the witness and the audit log never link the code that maps guest memory",
             modules: ["bulkheadd", "bulkhead-switch", "bulkhead-witness", "AuditStore"], forbidden: guestMemory),
        Rule(why: "the launcher starts and watches workers and never maps guest memory", modules: ["Supervisor", "bulkhead"],
             forbidden: ["KVM", "VMM", "CKVM", "Devices", "Virtio"]),
        Rule(why: "the shared test support is pure, so that the fuzzers and the unit tests can use it", modules: ["TestSupport"],
             forbidden: ["HostOS", "Jail", "KVM", "VMM", "CLinux", "CKVM", "HostTestSupport", "Glibc", "Foundation"]),
    ]

    /// The test targets that may need /dev/kvm or root: the only ones that reach the
    /// requiresKVM / requiresRoot traits (HostTestSupport). Every other test target is a unit
    /// target, which runs anywhere.
    static let integrationTargets: Set<String> = ["IntegrationTests", "CLITests"]

    static var packageRoot: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }
}

@Suite struct ArchitectureTests {
    /// The rules hold for the package as it is.
    @Test func thePackageKeepsItsModuleBoundaries() throws {
        let graph = try PackageGraph.load(root: Architecture.packageRoot)
        // The graph was read: the modules the rules speak of are there.
        for m in Architecture.pure + ["HostOS", "Jail", "KVM", "VMM", "Supervisor", "bulkhead", "bulkhead-worker", "bulkhead-witness", "AuditStore"] {
            #expect(graph.targets[m] != nil, "no target \(m) in the package description")
        }
        for rule in Architecture.rules {
            let v = rule.violations(in: graph)
            #expect(v.isEmpty, "\(v.joined(separator: "\n"))")
        }
    }

    /// Unit test targets reach neither the traits that mark a test as needing /dev/kvm or root
    /// nor anything that does; no product reaches test support at all.
    @Test func unitTargetsNeedNeitherKVMNorRoot() throws {
        let graph = try PackageGraph.load(root: Architecture.packageRoot)
        let tests = graph.targets.values.filter { $0.type == "test" }
        #expect(Set(tests.map(\.name)).isSuperset(of: Architecture.integrationTargets))
        #expect(tests.count > Architecture.integrationTargets.count + 5, "too few test targets read: \(tests.map(\.name))")
        for t in tests where !Architecture.integrationTargets.contains(t.name) {
            #expect(!graph.closure(of: t.name).contains("HostTestSupport") && !t.imports.contains("HostTestSupport"),
                    "unit test target \(t.name) reaches HostTestSupport (the requiresKVM / requiresRoot traits)")
        }
        for (name, t) in graph.targets where t.type != "test" && !["TestSupport", "HostTestSupport"].contains(name) && !t.path.hasPrefix("Tests/") {
            let reached = graph.closure(of: name).intersection(["TestSupport", "HostTestSupport"])
            #expect(reached.isEmpty, "\(name) depends on \(reached.sorted())")
        }
    }

    /// Pointers only where system calls are marshalled: `Unsafe` appears in the sources of
    /// HostOS and KVM only.
    @Test func pointersOnlyInHostOSAndKVM() throws {
        let graph = try PackageGraph.load(root: Architecture.packageRoot)
        for (name, t) in graph.targets where t.type != "test" && t.path.hasPrefix("Sources/") && !["HostOS", "KVM"].contains(name) {
            let dir = Architecture.packageRoot.appendingPathComponent(t.path)
            guard let files = FileManager.default.enumerator(at: dir, includingPropertiesForKeys: nil) else { continue }
            for case let file as URL in files where file.pathExtension == "swift" {
                let text = (try? String(contentsOf: file, encoding: .utf8)) ?? ""
                #expect(!text.contains("Unsafe"), "\(file.lastPathComponent) in \(name) uses an Unsafe pointer")
            }
        }
    }

    /// Only KVM maps guest memory: mmap appears in no other module's sources, and only KVM
    /// (and its tests) imports CKVM.
    @Test func onlyKVMMapsMemory() throws {
        let graph = try PackageGraph.load(root: Architecture.packageRoot)
        for (name, t) in graph.targets where t.type != "test" && name != "KVM" {
            #expect(!t.imports.contains("CKVM"), "\(name) imports CKVM")
            let dir = Architecture.packageRoot.appendingPathComponent(t.path)
            guard let files = FileManager.default.enumerator(at: dir, includingPropertiesForKeys: nil) else { continue }
            for case let file as URL in files where file.pathExtension == "swift" {
                let text = (try? String(contentsOf: file, encoding: .utf8)) ?? ""
                #expect(!text.contains("mmap("), "\(file.lastPathComponent) in \(name) calls mmap")
            }
        }
    }

    /// The checker itself finds what it must: a pure module with `import KVM` (directly or through
    /// a dependency), and a daemon that reaches VMM through another module.
    @Test func forbiddenEdgesAreFound() {
        var g = PackageGraph(targets: [
            "Devices": .init(name: "Devices", type: "library", path: "", dependencies: ["Virtio"], imports: ["Virtio"]),
            "Virtio": .init(name: "Virtio", type: "library", path: "", dependencies: []),
            "KVM": .init(name: "KVM", type: "library", path: "", dependencies: ["HostOS"]),
            "HostOS": .init(name: "HostOS", type: "library", path: "", dependencies: []),
            "VMM": .init(name: "VMM", type: "library", path: "", dependencies: ["KVM", "Devices"]),
            "Supervisor": .init(name: "Supervisor", type: "library", path: "", dependencies: ["HostOS"]),
            "bulkheadd": .init(name: "bulkheadd", type: "executable", path: "", dependencies: ["Supervisor"]),
        ])
        #expect(Architecture.rules.flatMap { $0.violations(in: g) }.isEmpty)
        g.targets["Devices"]?.imports.insert("KVM")
        #expect(Architecture.rules[0].violations(in: g) == ["Devices imports KVM (a pure module does no I/O and holds no pointers)"])
        g.targets["Virtio"]?.dependencies = ["HostOS"]
        #expect(Architecture.rules[0].violations(in: g).contains("Devices depends on HostOS (a pure module does no I/O and holds no pointers)"))
        g.targets["Supervisor"]?.dependencies.append("VMM")
        let daemon = Architecture.rules[2].violations(in: g)
        #expect(daemon.contains("bulkheadd depends on VMM (the daemon, the switch, the witness and the audit log never link the code that maps guest memory)"))
        #expect(daemon.contains("bulkheadd depends on KVM (the daemon, the switch, the witness and the audit log never link the code that maps guest memory)"))
        #expect(Architecture.rules[3].violations(in: g).contains("Supervisor depends on VMM (the launcher starts and watches workers and never maps guest memory)"))
        g.targets["bulkhead"] = .init(name: "bulkhead", type: "executable", path: "", dependencies: [], imports: ["KVM"])
        #expect(Architecture.rules[3].violations(in: g).contains("bulkhead imports KVM (the launcher starts and watches workers and never maps guest memory)"))
    }

    @Test func importsAreRead() {
        let source = """
        import Foundation
        @testable import KVM
        #if canImport(Glibc)
        import Glibc
        #endif
        import struct Devices.VirtioNet
        // import Commented — a comment is not an import
        let important = 1
        """
        #expect(PackageGraph.imports(in: source) == ["Foundation", "KVM", "Glibc", "Devices"])
    }
}
