import Foundation
import HostTestSupport
import Testing
@testable import VMM

/// A kernel's reset with several vCPUs, through `bulkhead run` (jailed as root, and in process):
/// the other vCPUs still wait for their start-up IPI in the in-kernel LAPIC, and every run must
/// end at once with status 0 (issue 10: a 2-vCPU Linux reboot once left the VMM running).
@Suite(.requiresKVM)
struct ResetTests {
    /// 32-bit PVH code: "up\n" on COM1, then the i8042 reset (command 0xFE to port 0x64).
    static let kernel: String? = {
        let code: [UInt8] = [0x66, 0xba, 0xf8, 0x03] + "up\n".utf8.flatMap { [0xb0, $0, 0xee] }   // mov dx, 0x3f8; (mov al, c; out dx, al)*
            + [0xb0, 0xfe, 0xe6, 0x64]                                                              // mov al, 0xfe; out 0x64, al
            + [0xf4, 0xeb, 0xfd]                                                                    // hlt; jmp back
        let path = NSTemporaryDirectory() + "bulkhead-reset-kernel-\(getpid())"
        return FileManager.default.createFile(atPath: path, contents: Data(pvhKernel(code))) ? path : nil
    }()

    @Test(.timeLimit(.minutes(3)), arguments: [2, 4])
    func resetEndsTheVMEveryTime(vcpus: Int) throws {
        let kernel = try #require(Self.kernel)
        for jailed in isRoot ? [true, false] : [false] {
            for _ in 0..<8 {
                let r = try bulkhead(["run", "--kernel", kernel, "--vcpus", "\(vcpus)", "--timeout", "60"]
                                     + (jailed ? ["--worker-sha256", workerDigest] : ["--no-jail"]))
                #expect(r.status == 0, "\(vcpus) vCPUs, jailed \(jailed): \(r.stderr)")
                #expect(r.stdout == "up\n" && r.stderr.contains("reset the machine"), "\(r.stdout)\(r.stderr)")
            }
        }
    }
}
