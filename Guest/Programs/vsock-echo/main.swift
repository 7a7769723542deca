// vsock-echo: echoes a host stream over virtio-vsock (virtio 1.2 §5.10).
//
// Command-line words:
//   port=P      host port to connect to (default 5000); the VMM connects it to its Unix
//               socket PATH_P (`bulkhead run --vsock PATH`)
//   timeout=S   seconds to wait for data, credit or the device before giving up (default 30)
//   stats       also print the driver's counters (packets, credit requests and updates...)
//
// Connects from the guest's CID to host CID 2 port P, prints
// `vsock-echo: connected to host port P from cid C port L`, then sends back every byte it
// receives, in order, until the host shuts down its sending side (end of stream). Closes the
// connection (SHUTDOWN both ways, then the host's RST) and prints
// `vsock-echo: echoed N bytes in T ms (clean close|no RST from the host)`, exit 0.
//
// Exit 1 (with the reason): connection refused, reset, timeout, the host shutting down its
// receiving side while echo data is still owed, or the device breaking the protocol
// (`VirtioVsock` validates every packet). Exit 2: no vsock device or a bad command line.

let chunkSize = 16 * 1024

func fail(_ why: StaticString, _ error: VsockError? = nil) -> Never {
    Console.line { out in
        out.append("vsock-echo: FAIL ")
        out.append(why)
        if let error {
            out.append(": ")
            out.append(vsockError: error)
        }
    }
    exit(1)
}

func usage() -> Never {
    Console.writeLine("vsock-echo: usage: [port=P] [timeout=SECONDS] [stats]")
    exit(2)
}

@_cdecl("bulkhead_guest_main")
func guestMain(_ bootInfoAddress: UInt64, _ vcpu: UInt64) {
    guard vcpu == 0 else { parkForever() }
    guard let info = BootInfo(address: bootInfoAddress) else { usage() }
    let commandLine = info.commandLine
    var port: UInt32 = 5000
    if let value = commandLine.value(of: "port") {
        guard let p = value.parseDecimal(), p < 0xffff_ffff else { usage() }
        port = UInt32(p)
    }
    var timeout: UInt64 = 30_000_000_000
    if let value = commandLine.value(of: "timeout") {
        guard let s = value.parseDecimal(), s >= 1, s <= 3600 else { usage() }
        timeout = s * 1_000_000_000
    }
    let stats = commandLine.containsWord("stats")
    guard let entry = info.firstDevice(.vsock) else {
        Console.writeLine("vsock-echo: no vsock device")
        exit(2)
    }

    let vsock: VirtioVsock
    do throws(VsockError) {
        vsock = try VirtioVsock(entry)
    } catch {
        fail("cannot initialise the vsock device", error)
    }
    vsock.timeout = timeout
    guard let memory = Heap.allocate(byteCount: chunkSize, alignment: 4096) else { fail("out of memory") }
    let buffer = UnsafeMutableRawBufferPointer(start: memory, count: chunkSize)

    let connection: VsockConnection
    do throws(VsockError) {
        connection = try vsock.connect(port: port)
    } catch {
        Console.line { out in
            out.append("vsock-echo: FAIL connect to host port ")
            out.append(decimal: port)
            out.append(": ")
            out.append(vsockError: error)
        }
        exit(1)
    }
    let start = time()
    Console.line { out in
        out.append("vsock-echo: connected to host port ")
        out.append(decimal: port)
        out.append(" from cid ")
        out.append(decimal: vsock.guestCID)
        out.append(" port ")
        out.append(decimal: connection.localPort)
    }

    var echoed: UInt64 = 0
    echo: while true {
        let result: VsockReceiveResult
        do throws(VsockError) {
            result = try vsock.waitReceive(connection, into: buffer, timeout: timeout)
        } catch {
            fail("receive", error)
        }
        switch result {
        case .closed:
            break echo
        case .wouldBlock:
            Console.line { out in
                out.append("vsock-echo: FAIL nothing from the host for ")
                out.append(decimal: timeout / 1_000_000_000)
                out.append(" s after ")
                out.append(decimal: echoed)
                out.append(" bytes")
            }
            exit(1)
        case .data(let n):
            do throws(VsockError) {
                try vsock.send(connection, UnsafeRawBufferPointer(start: memory, count: n), timeout: timeout)
            } catch {
                Console.line { out in
                    out.append("vsock-echo: FAIL send after ")
                    out.append(decimal: echoed)
                    out.append(" bytes: ")
                    out.append(vsockError: error)
                }
                exit(1)
            }
            echoed &+= UInt64(n)
        }
    }

    let clean: Bool
    do throws(VsockError) {
        clean = try vsock.close(connection)
    } catch {
        fail("close", error)
    }
    let elapsed = time() &- start
    Console.line { out in
        out.append("vsock-echo: echoed ")
        out.append(decimal: echoed)
        out.append(" bytes in ")
        out.append(decimal: elapsed / 1_000_000)
        out.append(" ms (")
        out.append(clean ? "clean close" : "no RST from the host")
        out.append(")")
    }
    if stats {
        let c = vsock.counters
        Console.line { out in
            out.append("vsock-echo: packets sent ")
            out.append(decimal: c.packetsSent)
            out.append(" received ")
            out.append(decimal: c.packetsReceived)
            out.append("; credit requests sent ")
            out.append(decimal: c.creditRequestsSent)
            out.append(", updates received ")
            out.append(decimal: c.creditUpdatesReceived)
            out.append(", updates sent ")
            out.append(decimal: c.creditUpdatesSent)
            out.append("; peak buffered ")
            out.append(decimal: c.peakBuffered)
            out.append("; send waits ")
            out.append(decimal: c.sendWaits)
            out.append("; dropped ")
            out.append(decimal: c.malformed &+ c.misaddressed &+ c.stray)
            out.append(", violations ")
            out.append(decimal: c.violations)
        }
    }
    exit(0)
}
