import Foundation
import TestSupport
import Testing

/// The guest ABI's numbers have one copy, Sources/GuestABI/GuestABI.swift, compiled into the host
/// (module GuestABI) and into every guest (Guest/build.sh). This checks that it stays one: the
/// guest build compiles that file, and the SDK declares none of its types again. (That the numbers
/// work is shown by the guests that run: the selftest and hostile guests call every hypercall
/// and check every error code.)
struct GuestABISharingTests {
    static let sharedTypes = ["GuestABI", "Hypercall", "HypercallError", "VirtioDeviceType", "VirtioFeature", "VirtioStatus",
                              "VirtioMMIORegister", "VirtioDescriptorFlag", "VsockABI", "BlockABI"]

    @Test func theGuestBuildCompilesTheSharedFile() throws {
        let script = try String(contentsOfFile: repositoryRoot + "/Guest/build.sh", encoding: .utf8)
        let line = script.split(separator: "\n").first { $0.hasPrefix("SDK_SWIFT=(") } ?? ""
        #expect(line.contains("$REPO_ROOT/Sources/GuestABI/GuestABI.swift"), "SDK_SWIFT: \(line)")
        #expect(FileManager.default.fileExists(atPath: repositoryRoot + "/Sources/GuestABI/GuestABI.swift"))
    }

    @Test func theSDKDeclaresNoSharedTypeAgain() throws {
        let dir = repositoryRoot + "/Guest/SDK"
        let files = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.hasSuffix(".swift") }
        #expect(files.count >= 5, "Guest/SDK not found")
        for file in files {
            let text = try String(contentsOfFile: dir + "/" + file, encoding: .utf8)
            for name in Self.sharedTypes {
                for kind in ["enum", "struct", "class"] {
                    #expect(!text.contains("\(kind) \(name) ") && !text.contains("\(kind) \(name):") && !text.contains("\(kind) \(name){"),
                            "Guest/SDK/\(file) declares \(kind) \(name): use GuestABI's")
                }
            }
        }
    }

    /// The shared file imports nothing and so compiles anywhere (the guest has no Foundation, no
    /// Glibc, no host modules).
    @Test func theSharedFileImportsNothing() throws {
        let text = try String(contentsOfFile: repositoryRoot + "/Sources/GuestABI/GuestABI.swift", encoding: .utf8)
        #expect(!text.split(separator: "\n").contains { $0.hasPrefix("import ") || $0.hasPrefix("@_exported") })
    }
}
