// net-pong: echoes frames received on the virtio network device (virtio 1.2 §5.1) back to
// their sender — the peer of `net-ping`.
//
// Command-line word: count=K (default 100, at least 1): echo K frames, then stop.
//
// After initialising the device it prints `net-pong: ready mac <mac> mtu <mtu>`. Each
// received frame is sent back unchanged except for its addresses: destination = the frame's
// source, source = the device's own MAC. Frames shorter than 14 bytes, frames whose source is
// the device's own MAC (a reflection: echoing it could loop) and frames longer than the device
// may send (`isSendable`) are ignored (counted). After K echoes it waits for the device to
// take every queued frame, prints `net-pong: K frames echoed` and exits 0. Exit 1: nothing
// arrived for 10 s, or a device error (reason printed); 2: no network device or a bad
// command line.

let idleTimeout: UInt64 = 10_000_000_000

func fail(_ why: StaticString, _ error: VirtioError? = nil) -> Never {
    failProgram("net-pong", why, error)
}

@_cdecl("bulkhead_guest_main")
func guestMain(_ bootInfoAddress: UInt64, _ vcpu: UInt64) {
    guard vcpu == 0 else { parkForever() }
    guard let info = BootInfo(address: bootInfoAddress) else { exit(2) }
    var count: UInt64 = 100
    if let value = info.commandLine.value(of: "count") {
        guard let n = value.parseDecimal(), n > 0 else {
            Console.writeLine("net-pong: usage: [count=K]")
            exit(2)
        }
        count = n
    }
    guard let entry = info.firstDevice(.network) else {
        Console.writeLine("net-pong: no network device")
        exit(2)
    }
    var net: VirtioNet
    do throws(VirtioError) {
        net = try VirtioNet(entry)
    } catch {
        fail("cannot initialise the network device", error)
    }
    let own = net.mac
    Console.line { out in
        out.append("net-pong: ready mac ")
        out.append(mac: own)
        out.append(" mtu ")
        out.append(decimal: net.mtu)
        if !net.linkUp { out.append(" (link down)") }
    }
    guard let frame = Heap.allocate(byteCount: net.bufferSize, alignment: 64) else { fail("out of memory") }
    let buffer = UnsafeMutableRawBufferPointer(start: frame, count: net.bufferSize)

    var echoed: UInt64 = 0
    var ignored: UInt64 = 0
    while echoed < count {
        let received: Int?
        do throws(VirtioError) {
            received = try net.waitReceive(into: buffer, timeout: idleTimeout)
        } catch {
            fail("receive", error)
        }
        guard let length = received else {
            Console.line { out in
                out.append("net-pong: FAIL nothing received for 10 s; ")
                out.append(decimal: echoed)
                out.append(" frames echoed, ")
                out.append(decimal: ignored)
                out.append(" ignored")
            }
            exit(1)
        }
        let echo = UnsafeRawBufferPointer(start: frame, count: length)
        guard length <= buffer.count, net.isSendable(echo) else {
            ignored += 1
            continue
        }
        let sender = Ethernet.source(frame)
        if sender == own {
            ignored += 1
            continue
        }
        sender.store(to: frame)
        own.store(to: frame + 6)
        do throws(VirtioError) {
            try net.send(echo)
        } catch {
            fail("send", error)
        }
        echoed += 1
    }
    do throws(VirtioError) {
        try net.flush()
    } catch {
        fail("flush", error)
    }
    if ignored > 0 {
        Console.line { out in
            out.append("net-pong: ignored ")
            out.append(decimal: ignored)
            out.append(" frames")
        }
    }
    Console.line { out in
        out.append("net-pong: ")
        out.append(decimal: echoed)
        out.append(" frames echoed")
    }
    exit(0)
}
