// netbench: virtio network throughput (virtio 1.2 §5.1).
//
// Command line:
//   tx SIZE COUNT [batch=N]
//                   sends COUNT frames of SIZE bytes (14 ... 14 + mtu) as fast as the transmit
//                   ring (256 descriptors) allows: broadcast destination, the device's own MAC
//                   as source, EtherType 0x88b5, a sequence number (u32 LE at offset 14, if
//                   SIZE ≥ 18) and a fixed pattern. Timed from before the first frame until
//                   the device has returned every transmit buffer. batch=N (1–256, default 1):
//                   ring the transmit doorbell once per N frames instead of after each.
//   rx COUNT        receives COUNT frames (any frames; 256 receive buffers). Timed from the
//                   arrival of the first frame to that of the last (the wait for the first one
//                   is not counted); a 10 s gap is a failure.
// Prints exactly one line (times from the `time` hypercall; bytes are frame bytes, without the
// 12-byte virtio header):
//   netbench: tx|rx <count> frames <bytes> bytes <ns> ns
// Exit status: 0 ok, 1 device error or rx timeout (reason printed), 2 bad command line or no
// network device.

let etherType: UInt16 = 0x88b5
let idleTimeout: UInt64 = 10_000_000_000

func usage() -> Never {
    Console.writeLine("netbench: usage: tx SIZE COUNT [batch=N] | rx COUNT")
    exit(2)
}

func fail(_ why: StaticString, _ error: VirtioError) -> Never {
    Console.line { out in
        out.append("netbench: FAIL ")
        out.append(why)
        out.append(": ")
        out.append(error.name)
    }
    exit(1)
}

func report(_ mode: StaticString, frames: UInt64, bytes: UInt64, ns: UInt64) {
    Console.line { out in
        out.append("netbench: ")
        out.append(mode)
        out.append(" ")
        out.append(decimal: frames)
        out.append(" frames ")
        out.append(decimal: bytes)
        out.append(" bytes ")
        out.append(decimal: ns)
        out.append(" ns")
    }
}

@_cdecl("bulkhead_guest_main")
func guestMain(_ bootInfoAddress: UInt64, _ vcpu: UInt64) {
    guard vcpu == 0 else { parkForever() }
    guard let info = BootInfo(address: bootInfoAddress) else { usage() }
    let commandLine = info.commandLine
    guard let mode = commandLine.word(0) else { usage() }
    let transmitting: Bool
    var size = 0
    var batch: UInt64 = 1
    let count: UInt64
    if mode.equals("tx") {
        guard let s = commandLine.word(1)?.parseDecimal(), s <= 65535,
              let n = commandLine.word(2)?.parseDecimal(), n > 0 else { usage() }
        if let word = commandLine.word(3) {
            guard let value = commandLine.value(of: "batch"), value.baseAddress == word.baseAddress! + 6,
                  let b = value.parseDecimal(), b > 0, b <= 256, commandLine.word(4) == nil else { usage() }
            batch = b
        }
        transmitting = true
        size = Int(s)
        count = n
    } else if mode.equals("rx") {
        guard let n = commandLine.word(1)?.parseDecimal(), n > 0, commandLine.word(2) == nil else { usage() }
        transmitting = false
        count = n
    } else {
        usage()
    }

    guard let entry = info.firstDevice(.network) else {
        Console.writeLine("netbench: no network device")
        exit(2)
    }
    var net: VirtioNet
    do throws(VirtioError) {
        net = try VirtioNet(entry, rxQueueSize: transmitting ? 16 : 256, txQueueSize: transmitting ? 256 : 16)
    } catch {
        fail("cannot initialise the network device", error)
    }
    guard let frame = Heap.allocate(byteCount: net.bufferSize, alignment: 64) else {
        Console.writeLine("netbench: FAIL out of memory")
        exit(1)
    }

    if transmitting {
        guard size >= Ethernet.headerSize, size <= net.maxFrameSize else { usage() }
        Ethernet.writeHeader(frame, destination: .broadcast, source: net.mac, etherType: etherType)
        var j = Ethernet.headerSize
        while j < size {
            frame.storeBytes(of: UInt8(truncatingIfNeeded: j &* 7 &+ 3), toByteOffset: j, as: UInt8.self)
            j += 1
        }
        let buffer = UnsafeRawBufferPointer(start: frame, count: size)
        let start = time()
        var i: UInt64 = 0
        while i < count {
            if size >= 18 {
                frame.storeBytes(of: UInt32(truncatingIfNeeded: i).littleEndian, toByteOffset: 14, as: UInt32.self)
            }
            do throws(VirtioError) {
                try net.send(buffer, notify: (i + 1) % batch == 0)
            } catch {
                fail("send", error)
            }
            i += 1
        }
        do throws(VirtioError) { try net.flush() } catch { fail("flush", error) }
        let elapsed = time() &- start
        report("tx", frames: count, bytes: count &* UInt64(size), ns: elapsed)
    } else {
        let buffer = UnsafeMutableRawBufferPointer(start: frame, count: net.bufferSize)
        var received: UInt64 = 0
        var bytes: UInt64 = 0
        var first: UInt64 = 0
        var last: UInt64 = 0
        while received < count {
            let length: Int?
            do throws(VirtioError) {
                length = try net.waitReceive(into: buffer, timeout: idleTimeout)
            } catch {
                fail("receive", error)
            }
            guard let length else {
                Console.line { out in
                    out.append("netbench: FAIL rx: nothing received for 10 s after ")
                    out.append(decimal: received)
                    out.append(" frames")
                }
                exit(1)
            }
            last = time()
            if received == 0 { first = last }
            received += 1
            bytes &+= UInt64(length)
        }
        report("rx", frames: received, bytes: bytes, ns: last &- first)
    }
    exit(0)
}
