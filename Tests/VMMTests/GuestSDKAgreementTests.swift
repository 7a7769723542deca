import GuestInterface
import Boot
import Foundation
import HostOS
import KVM
import Testing
@testable import VMM

/// The guest SDK (Embedded Swift, its own build) cannot import the host's definitions, so the
/// ABI's numbers are written twice. This reads the SDK's source and checks each copy against
/// the VMM's.
struct GuestSDKAgreementTests {
    let sdk: String = {
        let bytes = (try? readFile(repositoryRoot + "/Guest/SDK/Hypercall.swift", limit: 1 << 20)) ?? []
        return String(decoding: bytes, as: UTF8.self)
    }()

    /// `case name = N` lines inside `enum <name>` up to its closing brace.
    func cases(of enumName: String) -> [String: UInt64] {
        guard let start = sdk.range(of: "enum \(enumName):") else { return [:] }
        var out: [String: UInt64] = [:]
        for line in sdk[start.upperBound...].split(separator: "\n").dropFirst() {
            let t = line.trimmingCharacters(in: .whitespaces)
            if t == "}" { break }
            let parts = t.split(separator: " ")
            if parts.count == 4, parts[0] == "case", parts[2] == "=", let v = UInt64(parts[3]) { out[String(parts[1])] = v }
        }
        return out
    }

    @Test func hypercallNumbersAgree() {
        let guest = cases(of: "Hypercall")
        #expect(!guest.isEmpty, "Guest/SDK/Hypercall.swift not found or not parsed")
        let host = Dictionary(uniqueKeysWithValues: Hypercall.allCases.map { ("\($0)", $0.rawValue) })
        #expect(guest == host)
    }

    @Test func errorNumbersAgree() {
        let guest = cases(of: "HypercallError")
        let host = Dictionary(uniqueKeysWithValues: HypercallError.allCases.map { ("\($0)", $0.rawValue) })
        #expect(!guest.isEmpty && guest == host)
    }

    @Test func limitsAndAddressesAgree() {
        #expect(sdk.contains("hypercallPageAddress: UInt64 = 0x\(String(GuestLayout.hypercallPage >> 16, radix: 16))_0000"))
        #expect(sdk.contains("abiVersion: Int64 = \(Hypercall.interfaceVersion)"))
        #expect(sdk.contains("maxConsoleWrite = \(Hypercall.maxConsoleWrite)"))
        #expect(sdk.contains("maxRandom = \(Hypercall.maxRandom)"))
        #expect(sdk.contains("maxWaitNanoseconds: UInt64 = 10_000_000_000") && Hypercall.maxWaitNanoseconds == 10_000_000_000)
    }
}
