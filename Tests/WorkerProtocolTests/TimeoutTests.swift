import Testing
@testable import WorkerProtocol

@Suite struct TimeoutTests {
    /// The one conversion of `--timeout`: finite, 1 ms to 366 days, never a trap.
    @Test func secondsBecomeMillisecondsOnlyInRange() {
        #expect(VMConfiguration.timeoutMilliseconds(seconds: 0.001) == 1)
        #expect(VMConfiguration.timeoutMilliseconds(seconds: 0.3) == 300)
        #expect(VMConfiguration.timeoutMilliseconds(seconds: 1.0015) == 1002)
        #expect(VMConfiguration.timeoutMilliseconds(seconds: 31_622_400) == VMConfiguration.maxTimeoutMilliseconds)
        for bad in [0, -1, 0.0009, 31_622_400.001, 1e11, 18_446_744_073, 1e300, 1e-300, -1e300,
                    Double.infinity, -Double.infinity, Double.nan, Double.greatestFiniteMagnitude, Double.leastNonzeroMagnitude] {
            #expect(VMConfiguration.timeoutMilliseconds(seconds: bad) == nil, "\(bad)")
        }
    }

    /// A launcher's `configure` with a timeout above the maximum is refused before any arithmetic.
    @Test func decoderRefusesHugeTimeouts() throws {
        var c = VMConfiguration(memoryMiB: 1, vcpus: 1, image: .program(descriptor: 0), kvm: 1, console: 2)
        for ms in [VMConfiguration.maxTimeoutMilliseconds + 1, UInt64.max / 1_000_000 + 1, UInt64.max] {
            c.timeoutMilliseconds = ms
            #expect(throws: WorkerProtocolError.self, "\(ms)") {
                try WorkerProtocol.decode(WorkerProtocol.encode(.configure(c)), from: .launcher, descriptors: 3)
            }
        }
        c.timeoutMilliseconds = VMConfiguration.maxTimeoutMilliseconds
        #expect(try WorkerProtocol.decode(WorkerProtocol.encode(.configure(c)), from: .launcher, descriptors: 3) == .configure(c))
    }
}
