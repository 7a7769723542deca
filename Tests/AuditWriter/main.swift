// bulkhead-audit-writer: drives the audit log's appender for the crash test and the benchmark
// (never installed).
//
//   bulkhead-audit-writer DIR [--writers N] [--records M] [--segment-bytes B] [--heartbeat S] [--bench]
//                         [--witness SOCKET --witness-key FILE]
//
// Opens the log in DIR and starts N writer threads, each appending M records one at a time (a
// blocking, durable append each). After every acknowledged append it prints `ack SEQ` on standard
// output in one write (so a test that kills this process knows exactly which records were
// acknowledged). Then it closes the log and prints `closed`. With --bench it prints nothing per
// record; instead one line: `records R seconds T p50_us A p99_us B`.
import AuditLog
import AuditStore
import HostOS
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

func fail(_ text: String) -> Never {
    try? FileDescriptor.standardError.writeAll(Array(("bulkhead-audit-writer: " + text + "\n").utf8))
    exit(2)
}

var arguments = Array(CommandLine.arguments.dropFirst())

// `bulkhead-audit-writer --proofs N`: the cost of proofs in a tree of N records (for
// Benchmarks/audit.py): building the tree, then producing and checking inclusion and consistency
// proofs at random places, against one SHA-256 of a 300-byte record (the baseline in the same run).
if arguments.first == "--proofs", arguments.count == 2, let n = UInt64(arguments[1]), n >= 2 {
    var rng = SystemRandomNumberGenerator()
    let record = [UInt8](repeating: 0x41, count: 300)
    var t = monotonicNanoseconds()
    var hashSink: UInt8 = 0
    for i in 0..<10_000 { hashSink ^= Merkle.leafHash(record + [UInt8(truncatingIfNeeded: i)])[0] }
    let hashNs = Double(monotonicNanoseconds() - t) / 10_000
    var tree = MerkleTree()
    t = monotonicNanoseconds()
    for i in 0..<n { tree.append(leafHash: Merkle.leafHash(withUnsafeBytes(of: i) { Array($0) })) }
    let buildSeconds = Double(monotonicNanoseconds() - t) / 1e9
    guard let root = try? tree.root(size: n) else { fail("no root") }
    let rounds = 2000
    var inclusionNs: [UInt64] = [], consistencyNs: [UInt64] = []
    for _ in 0..<rounds {
        let i = UInt64.random(in: 0..<n, using: &rng)
        t = monotonicNanoseconds()
        guard let proof = try? tree.inclusionProof(index: i, size: n),
              Merkle.verifyInclusion(leafHash: Merkle.leafHash(withUnsafeBytes(of: i) { Array($0) }), index: i, size: n, proof: proof, root: root) else {
            fail("an inclusion proof of \(i) did not verify")
        }
        inclusionNs.append(monotonicNanoseconds() - t)
        let m = UInt64.random(in: 1..<n, using: &rng)
        t = monotonicNanoseconds()
        guard let oldRoot = try? tree.root(size: m), let proof2 = try? tree.consistencyProof(old: m, new: n),
              Merkle.verifyConsistency(old: m, new: n, oldRoot: oldRoot, newRoot: root, proof: proof2) else {
            fail("a consistency proof from \(m) did not verify")
        }
        consistencyNs.append(monotonicNanoseconds() - t)
    }
    func p(_ a: [UInt64], _ q: Double) -> Double { let s = a.sorted(); return Double(s[min(s.count - 1, Int(Double(s.count) * q))]) / 1000 }
    print("records \(n) build_seconds \(buildSeconds) hash_us \(hashNs / 1000) inclusion_p50_us \(p(inclusionNs, 0.5)) inclusion_p99_us \(p(inclusionNs, 0.99)) consistency_p50_us \(p(consistencyNs, 0.5)) consistency_p99_us \(p(consistencyNs, 0.99)) sink \(hashSink)")
    exit(0)
}
guard let directory = arguments.first, !directory.hasPrefix("-") else { fail("usage: bulkhead-audit-writer DIR [--writers N] [--records M] [--segment-bytes B] [--heartbeat S] [--bench]") }
arguments.removeFirst()
var writers = 1, records = 100, bench = false, tasks = false
var fileSizeLimit: UInt64?
var witnessSocket: String?, witnessKey: CosignatureKey?
var options = AuditAppender.Options()
while !arguments.isEmpty {
    let flag = arguments.removeFirst()
    if flag == "--bench" { bench = true; continue }
    if flag == "--tasks" { tasks = true; continue }
    guard let value = arguments.first else { fail("\(flag) needs a value") }
    arguments.removeFirst()
    switch flag {
    case "--writers": guard let n = Int(value), n > 0, n <= 1024 else { fail("--writers: 1 to 1024") }; writers = n
    case "--records": guard let n = Int(value), n >= 0 else { fail("--records: a count") }; records = n
    case "--segment-bytes": guard let n = Int(value), n > 0 else { fail("--segment-bytes: a size") }; options.segmentBytes = n
    case "--heartbeat": guard let s = Double(value), s > 0, s < 1e6 else { fail("--heartbeat: seconds") }; options.heartbeatSeconds = s
    case "--witness": witnessSocket = value
    case "--file-size-limit": guard let n = UInt64(value), n > 0 else { fail("--file-size-limit: bytes") }; fileSizeLimit = n
    case "--witness-key":
        do { witnessKey = try AuditDirectory.witnessKey(at: value) } catch { fail("--witness-key: \(error.description)") }
    default: fail("unknown option \(flag)")
    }
}

if let witnessSocket {
    guard let witnessKey else { fail("--witness needs --witness-key") }
    options.witness = WitnessEndpoint(socketPath: witnessSocket, key: witnessKey)
}
// --file-size-limit: writes past it fail (EFBIG; SIGXFSZ ignored), to show the appender failing
// closed. Then a failed append prints `error TEXT` instead of ending the process, the others go
// on, and the exit status is 3.
if let fileSizeLimit {
    var limit = rlimit(rlim_cur: rlim_t(fileSizeLimit), rlim_max: rlim_t(fileSizeLimit))
    guard setrlimit(__rlimit_resource_t(RLIMIT_FSIZE.rawValue), &limit) == 0 else { fail("setrlimit") }
    signal(SIGXFSZ, SIG_IGN)
}
let failures = Mutex(0)
let keepGoing = fileSizeLimit != nil
@Sendable func failed(_ error: any Error) {
    guard keepGoing else { fail("append: \(error)") }
    failures.withLock { $0 += 1 }
    try? FileDescriptor.standardOutput.writeAll(Array("error \(error)\n".utf8))
}
let log: AuditAppender
do { log = try AuditAppender.open(directory, options: options) } catch { fail(error.description) }
let latencies = Mutex<[UInt64]>([])
let start = monotonicNanoseconds()
var threads: [OSThread] = []
func entry(_ w: Int, _ i: Int) -> AuditEntry {
    AuditEntry(actor: .local(uid: 0, gid: 0, pid: Int32(getpid())), tenant: "tenant-\(w % 4)", action: "vm.start",
               target: "vm/writer-\(w)-\(i)", reason: "host admin", stage: .outcome, operation: "op-\(w)-\(i)", result: "ok")
}
if tasks {
    // --tasks: the writers are Swift tasks awaiting `append` (as the daemon's request handlers
    // will), not threads blocked in it.
    await withTaskGroup(of: [UInt64].self) { group in
        for w in 0..<writers {
            group.addTask { [records, bench] in
                var mine: [UInt64] = []
                for i in 0..<records {
                    let t0 = monotonicNanoseconds()
                    do {
                        let seq = try await log.append(entry(w, i))
                        if bench { mine.append(monotonicNanoseconds() - t0) } else {
                            try? FileDescriptor.standardOutput.writeAll(Array("ack \(seq)\n".utf8))
                        }
                    } catch { failed(error) }
                }
                return mine
            }
        }
        for await mine in group { latencies.withLock { $0 += mine } }
    }
}
for w in 0..<(tasks ? 0 : writers) {
    do {
        threads.append(try OSThread.spawn { [bench, records] in
            var mine: [UInt64] = []
            mine.reserveCapacity(records)
            for i in 0..<records {
                let entry = AuditEntry(actor: .local(uid: 0, gid: 0, pid: Int32(getpid())), tenant: "tenant-\(w % 4)",
                                       action: "vm.start", target: "vm/writer-\(w)-\(i)", reason: "host admin",
                                       stage: .outcome, operation: "op-\(w)-\(i)", result: "ok")
                let t0 = monotonicNanoseconds()
                do {
                    let seq = try log.append(entry)
                    if bench { mine.append(monotonicNanoseconds() - t0) } else {
                        try? FileDescriptor.standardOutput.writeAll(Array("ack \(seq)\n".utf8))
                    }
                } catch {
                    failed(error)
                }
            }
            latencies.withLock { $0 += mine }
        })
    } catch { fail("thread: \(error)") }
}
for t in threads { t.join() }
let seconds = Double(monotonicNanoseconds() - start) / 1e9
do { try log.close() } catch {
    guard fileSizeLimit != nil else { fail("close: \(error.description)") }
}
if failures.withLock({ $0 }) > 0 { exit(3) }
if bench {
    let sorted = latencies.withLock { $0.sorted() }
    func percentile(_ p: Double) -> Double { sorted.isEmpty ? 0 : Double(sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]) / 1000 }
    print("records \(writers * records) seconds \(seconds) p50_us \(percentile(0.5)) p99_us \(percentile(0.99))")
} else {
    try? FileDescriptor.standardOutput.writeAll(Array("closed\n".utf8))
}
