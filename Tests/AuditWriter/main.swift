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
guard let directory = arguments.first, !directory.hasPrefix("-") else { fail("usage: bulkhead-audit-writer DIR [--writers N] [--records M] [--segment-bytes B] [--heartbeat S] [--bench]") }
arguments.removeFirst()
var writers = 1, records = 100, bench = false
var witnessSocket: String?, witnessKey: CosignatureKey?
var options = AuditAppender.Options()
while !arguments.isEmpty {
    let flag = arguments.removeFirst()
    if flag == "--bench" { bench = true; continue }
    guard let value = arguments.first else { fail("\(flag) needs a value") }
    arguments.removeFirst()
    switch flag {
    case "--writers": guard let n = Int(value), n > 0, n <= 1024 else { fail("--writers: 1 to 1024") }; writers = n
    case "--records": guard let n = Int(value), n >= 0 else { fail("--records: a count") }; records = n
    case "--segment-bytes": guard let n = Int(value), n > 0 else { fail("--segment-bytes: a size") }; options.segmentBytes = n
    case "--heartbeat": guard let s = Double(value), s > 0, s < 1e6 else { fail("--heartbeat: seconds") }; options.heartbeatSeconds = s
    case "--witness": witnessSocket = value
    case "--witness-key":
        guard let bytes = try? readFile(value, limit: 4096),
              let key = try? CosignatureKey(text: String(decoding: bytes, as: UTF8.self).filter { $0 != "\n" }) else { fail("--witness-key: not a witness key") }
        witnessKey = key
    default: fail("unknown option \(flag)")
    }
}

if let witnessSocket {
    guard let witnessKey else { fail("--witness needs --witness-key") }
    options.witness = WitnessEndpoint(socketPath: witnessSocket, key: witnessKey)
}
let log: AuditAppender
do { log = try AuditAppender.open(directory, options: options) } catch { fail(error.description) }
let latencies = Mutex<[UInt64]>([])
let start = monotonicNanoseconds()
var threads: [OSThread] = []
for w in 0..<writers {
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
                    fail("append: \(error)")
                }
            }
            latencies.withLock { $0 += mine }
        })
    } catch { fail("thread: \(error)") }
}
for t in threads { t.join() }
let seconds = Double(monotonicNanoseconds() - start) / 1e9
do { try log.close() } catch { fail("close: \(error.description)") }
if bench {
    let sorted = latencies.withLock { $0.sorted() }
    func percentile(_ p: Double) -> Double { sorted.isEmpty ? 0 : Double(sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]) / 1000 }
    print("records \(writers * records) seconds \(seconds) p50_us \(percentile(0.5)) p99_us \(percentile(0.99))")
} else {
    try? FileDescriptor.standardOutput.writeAll(Array("closed\n".utf8))
}
