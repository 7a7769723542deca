// net-ping: sends frames through the virtio network device (virtio 1.2 §5.1) and checks that
// a peer (`net-pong` in another VM on the same link) echoes each one back unchanged.
//
// Command-line words:
//   count=K   frames to send (default 100, at least 1)
//   spoof     also check that a frame with a forged source MAC is not delivered (below)
//
// Frame i (0-based) is sent to ff:ff:ff:ff:ff:ff from the device's own MAC with EtherType
// 0x88b5 (IEEE local experimental) and is `size(i)` bytes long: 60 for frame 0, the largest
// frame (min(1514, 14 + mtu)) for frame 1, then sizes spread over [60, largest]. Payload:
//   offset 14  "BHNP" magic (4 bytes)
//   offset 18  run nonce (u32 LE, random per run: frames from an earlier run are ignored)
//   offset 22  sequence number i (u32 LE)
//   offset 26  frame length (u16 LE)
//   offset 28  pattern bytes, a function of (nonce, i, offset)
// After each frame the program waits up to 5 s for its echo. A frame with another EtherType,
// magic or nonce, or with the program's own source MAC, is ignored (counted). An echo must
// have the same length, destination = own MAC, and bytes [12, length) identical to what was
// sent; an echo of another sequence number (duplicate, out of order) is a failure.
//
// With `spoof`: after frame 0's echo proves the path works, a 60-byte frame whose source MAC is
// forged (own MAC with the last byte flipped) is sent; the host device must drop it, so within
// 300 ms nothing may come back for it. (If the device let it through, net-pong would echo it
// — to the forged address — and count it, so it would also stop one frame early and the last
// frame here would time out: the check does not depend on the link delivering frames to
// addresses other than ours.)
//
// Prints `net-ping: mac <mac> mtu <mtu> link <up|down>`, the spoof result if asked, round-trip
// times, then `net-ping: K frames echoed`, and exits 0. Exit 1: mismatch, timeout or device
// error (reason printed); 2: no network device or a bad command line.

let etherType: UInt16 = 0x88b5
let magic: UInt32 = 0x504e_4842  // "BHNP" little-endian
let payloadOffset = 28
let spoofSequence: UInt32 = 0xffff_fffe
let echoTimeout: UInt64 = 5_000_000_000
let spoofWait: UInt64 = 300_000_000

func fail(_ why: StaticString, _ error: VirtioError? = nil) -> Never {
    failProgram("net-ping", why, error)
}

func usage() -> Never {
    Console.writeLine("net-ping: usage: [count=K] [spoof]")
    exit(2)
}

@inline(__always)
func patternByte(nonce: UInt32, sequence: UInt32, offset: Int) -> UInt8 {
    var z = UInt32(truncatingIfNeeded: offset) &* 0x9e37_79b1 ^ sequence &* 0x85eb_ca6b ^ nonce
    z ^= z >> 15
    return UInt8(truncatingIfNeeded: z ^ (z >> 8))
}

func buildFrame(_ frame: UnsafeMutableRawPointer, length: Int, source: MACAddress,
                nonce: UInt32, sequence: UInt32) {
    Ethernet.writeHeader(frame, destination: .broadcast, source: source, etherType: etherType)
    frame.storeBytes(of: magic.littleEndian, toByteOffset: 14, as: UInt32.self)
    frame.storeBytes(of: nonce.littleEndian, toByteOffset: 18, as: UInt32.self)
    frame.storeBytes(of: sequence.littleEndian, toByteOffset: 22, as: UInt32.self)
    frame.storeBytes(of: UInt16(truncatingIfNeeded: length).littleEndian, toByteOffset: 26, as: UInt16.self)
    var j = payloadOffset
    while j < length {
        frame.storeBytes(of: patternByte(nonce: nonce, sequence: sequence, offset: j), toByteOffset: j, as: UInt8.self)
        j += 1
    }
}

/// What a received frame is, relative to the frame we are waiting for.
enum Received {
    case foreign        // not one of this run's frames, or our own: ignore
    case spoofEcho      // the echo of the forged-source frame
    case echo(UInt32)   // one of our frames (sequence number), not yet checked further
}

func classify(_ frame: UnsafeRawPointer, length: Int, own: MACAddress, nonce: UInt32) -> Received {
    guard length >= payloadOffset, Ethernet.etherType(frame) == etherType,
          UInt32(littleEndian: frame.loadUnaligned(fromByteOffset: 14, as: UInt32.self)) == magic,
          UInt32(littleEndian: frame.loadUnaligned(fromByteOffset: 18, as: UInt32.self)) == nonce
    else { return .foreign }
    let sequence = UInt32(littleEndian: frame.loadUnaligned(fromByteOffset: 22, as: UInt32.self))
    if sequence == spoofSequence { return .spoofEcho }
    if Ethernet.source(frame) == own { return .foreign }  // our own frame reflected: not an echo
    return .echo(sequence)
}

@_cdecl("bulkhead_guest_main")
func guestMain(_ bootInfoAddress: UInt64, _ vcpu: UInt64) {
    guard vcpu == 0 else { parkForever() }
    guard let info = BootInfo(address: bootInfoAddress) else { usage() }
    let commandLine = info.commandLine
    var count: UInt64 = 100
    if let value = commandLine.value(of: "count") {
        guard let n = value.parseDecimal(), n > 0, n < UInt64(spoofSequence) else { usage() }
        count = n
    }
    let spoof = commandLine.containsWord("spoof")

    guard let entry = info.firstDevice(.network) else {
        Console.writeLine("net-ping: no network device")
        exit(2)
    }
    var net: VirtioNet
    do throws(VirtioError) {
        net = try VirtioNet(entry)
    } catch {
        fail("cannot initialise the network device", error)
    }
    let own = net.mac
    let linkUp = net.linkUp
    Console.line { out in
        out.append("net-ping: mac ")
        out.append(mac: own)
        out.append(" mtu ")
        out.append(decimal: net.mtu)
        out.append(" link ")
        out.append(linkUp ? "up" : "down")
        if !net.macFromDevice { out.append(" (no MAC feature: random address)") }
    }

    let largest = min(Ethernet.maxStandardFrame, net.maxFrameSize)
    guard largest >= Ethernet.minFrame else { fail("the MTU is too small for 60-byte frames") }
    guard let sent = Heap.allocate(byteCount: largest, alignment: 64),
          let received = Heap.allocate(byteCount: net.bufferSize, alignment: 64) else { fail("out of memory") }
    let receiveBuffer = UnsafeMutableRawBufferPointer(start: received, count: net.bufferSize)
    let nonce = UInt32(truncatingIfNeeded: randomUInt64())

    func size(_ i: UInt64) -> Int {
        if i == 0 { return Ethernet.minFrame }
        if i == 1 { return largest }
        return Ethernet.minFrame + Int((i &* 613) % UInt64(largest - Ethernet.minFrame + 1))
    }

    var ignored: UInt64 = 0
    var spoofEchoes: UInt64 = 0
    var rttMin = UInt64.max
    var rttMax: UInt64 = 0
    var rttSum: UInt64 = 0

    /// Receives until `deadline`; returns the first frame of ours (not the spoof echo) and its
    /// length, or nil at the deadline.
    func nextEcho(until deadline: UInt64) -> (sequence: UInt32, length: Int)? {
        while true {
            let now = time()
            if now >= deadline { return nil }
            let length: Int?
            do throws(VirtioError) {
                length = try net.waitReceive(into: receiveBuffer, timeout: deadline - now)
            } catch {
                fail("receive", error)
            }
            guard let length else { return nil }
            let n = min(length, receiveBuffer.count)
            switch classify(received, length: n, own: own, nonce: nonce) {
            case .foreign: ignored += 1
            case .spoofEcho: spoofEchoes += 1
            case .echo(let sequence): return (sequence, length)
            }
        }
    }

    func exchange(_ i: UInt64) {
        let length = size(i)
        let sequence = UInt32(truncatingIfNeeded: i)
        buildFrame(sent, length: length, source: own, nonce: nonce, sequence: sequence)
        let start = time()
        do throws(VirtioError) {
            try net.send(UnsafeRawBufferPointer(start: sent, count: length))
        } catch {
            fail("send", error)
        }
        guard let (echoed, echoLength) = nextEcho(until: start &+ echoTimeout) else {
            Console.line { out in
                out.append("net-ping: FAIL no echo of frame ")
                out.append(decimal: i)
                out.append(" (")
                out.append(decimal: length)
                out.append(" bytes) within 5 s; ")
                out.append(decimal: i)
                out.append(" echoed before")
            }
            exit(1)
        }
        let rtt = time() &- start
        if echoed != sequence || echoLength != length || Ethernet.destination(received) != own {
            Console.line { out in
                out.append("net-ping: FAIL waiting for frame ")
                out.append(decimal: i)
                out.append(" (")
                out.append(decimal: length)
                out.append(" bytes), got frame ")
                out.append(decimal: echoed)
                out.append(" (")
                out.append(decimal: echoLength)
                out.append(" bytes) to ")
                out.append(mac: Ethernet.destination(received))
                out.append(" from ")
                out.append(mac: Ethernet.source(received))
            }
            exit(1)
        }
        var j = 12
        while j < length {
            let want = sent.load(fromByteOffset: j, as: UInt8.self)
            let got = received.load(fromByteOffset: j, as: UInt8.self)
            if want != got {
                Console.line { out in
                    out.append("net-ping: FAIL frame ")
                    out.append(decimal: i)
                    out.append(" byte ")
                    out.append(decimal: j)
                    out.append(": sent ")
                    out.append(hexByte: want)
                    out.append(", echoed ")
                    out.append(hexByte: got)
                }
                exit(1)
            }
            j += 1
        }
        rttMin = min(rttMin, rtt)
        rttMax = max(rttMax, rtt)
        rttSum &+= rtt
    }

    exchange(0)

    if spoof {
        var forged = own
        forged.value ^= 0xff << 40  // flip the last byte: still unicast, not ours
        buildFrame(sent, length: Ethernet.minFrame, source: forged, nonce: nonce, sequence: spoofSequence)
        do throws(VirtioError) {
            try net.send(UnsafeRawBufferPointer(start: sent, count: Ethernet.minFrame))
            try net.flush()
        } catch {
            fail("send (spoof)", error)
        }
        let deadline = time() &+ spoofWait
        if let (sequence, _) = nextEcho(until: deadline) {
            Console.line { out in
                out.append("net-ping: FAIL unexpected frame ")
                out.append(decimal: sequence)
                out.append(" during the spoof check")
            }
            exit(1)
        }
        if spoofEchoes > 0 {
            Console.line { out in
                out.append("net-ping: FAIL spoof: a frame with forged source ")
                out.append(mac: forged)
                out.append(" was delivered and echoed")
            }
            exit(1)
        }
        Console.line { out in
            out.append("net-ping: spoof: ok, frame with forged source ")
            out.append(mac: forged)
            out.append(" not echoed within 300 ms")
        }
    }

    var i: UInt64 = 1
    while i < count {
        exchange(i)
        i += 1
    }
    if spoofEchoes > 0 { fail("spoof: the frame with a forged source was echoed late") }

    Console.line { out in
        out.append("net-ping: rtt min ")
        out.append(decimal: rttMin / 1000)
        out.append(" avg ")
        out.append(decimal: rttSum / count / 1000)
        out.append(" max ")
        out.append(decimal: rttMax / 1000)
        out.append(" us; ")
        out.append(decimal: ignored)
        out.append(" other frames ignored")
    }
    Console.line { out in
        out.append("net-ping: ")
        out.append(decimal: count)
        out.append(" frames echoed")
    }
    exit(0)
}
