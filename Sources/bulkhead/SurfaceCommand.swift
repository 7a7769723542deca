import ArgumentParser
import GuestInterface
import HostOS

struct Surface: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the attack surface: every channel from a guest to the VMM.")

    @Flag(help: "Print JSON (the format pinned in docs/attack-surface.json).")
    var json = false

    func run() throws {
        let text = json ? AttackSurface.json() : AttackSurface.text()
        try? FileDescriptor.standardOutput.writeAll(Array(text.utf8))
    }
}
