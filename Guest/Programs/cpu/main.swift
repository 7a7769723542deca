// cpu: CPU-bound work that checks its own answer.
//
//   1. Sieve of Eratosthenes below 2,000,000 (odd numbers only, 1 MB in the free-RAM
//      heap): count and sum of the primes.
//   2. FNV-1a-64 over 1 MiB of bytes from a 64-bit LCG.
//
// The expected values were computed independently (Python):
//   primes below 2e6: 148933, sum 142913828922; FNV-1a-64 of the LCG stream: 0x892c2ad7b1583ccd.
// Command line: optional number of rounds (default 1). Exits 0 if every round is right, else 1.

let limit = 2_000_000
let expectedPrimeCount = 148_933
let expectedPrimeSum: UInt64 = 142_913_828_922
let expectedFNV: UInt64 = 0x892c_2ad7_b158_3ccd

/// Odd-only sieve: sieve[i] == 0 means 2i+1 is prime (memory starts zeroed or is cleared).
func sievePrimes(_ sieve: UnsafeMutablePointer<UInt8>) -> (count: Int, sum: UInt64) {
    let odds = limit / 2  // indices 0..<odds stand for 1, 3, 5, ..., limit-1
    sieve.update(repeating: 0, count: odds)
    sieve[0] = 1  // 1 is not prime
    var i = 1
    while true {
        let p = 2 * i + 1
        if p * p >= limit { break }
        if sieve[i] == 0 {
            var j = (p * p) / 2
            while j < odds {
                sieve[j] = 1
                j += p
            }
        }
        i += 1
    }
    var count = 1  // the prime 2
    var sum: UInt64 = 2
    for k in 1..<odds where sieve[k] == 0 {
        count += 1
        sum &+= UInt64(2 * k + 1)
    }
    return (count, sum)
}

func fnvOfLCGStream() -> UInt64 {
    var state: UInt64 = 0x0123_4567_89ab_cdef
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    for _ in 0..<(1 << 20) {
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        hash = (hash ^ (state >> 56)) &* 0x0000_0100_0000_01b3
    }
    return hash
}

@_cdecl("bulkhead_guest_main")
func guestMain(_ bootInfoAddress: UInt64, _ vcpu: UInt64) {
    guard vcpu == 0 else { parkForever() }
    var rounds: UInt64 = 1
    if let info = BootInfo(address: bootInfoAddress), info.commandLine.count > 0 {
        guard let n = info.commandLine.parseDecimal(), n >= 1 else {
            Console.writeLine("cpu: command line must be a round count (decimal, >= 1)")
            exit(1)
        }
        rounds = n
    }
    guard let memory = Heap.allocate(byteCount: limit / 2, alignment: 64) else {
        Console.writeLine("cpu: not enough free RAM for the sieve (needs 1 MB)")
        exit(1)
    }
    let sieve = memory.bindMemory(to: UInt8.self, capacity: limit / 2)

    let start = time()
    var good = true
    var result = (count: 0, sum: UInt64(0))
    var fnv: UInt64 = 0
    var round: UInt64 = 0
    while round < rounds {
        result = sievePrimes(sieve)
        fnv = fnvOfLCGStream()
        if result.count != expectedPrimeCount || result.sum != expectedPrimeSum || fnv != expectedFNV {
            good = false
            break
        }
        round += 1
    }
    let elapsed = time() &- start

    Console.line { out in
        out.append("cpu: ")
        out.append(decimal: result.count)
        out.append(" primes below 2000000, sum ")
        out.append(decimal: result.sum)
        out.append(", fnv1a ")
        out.append(hex: fnv, minDigits: 16)
        out.append(", rounds ")
        out.append(decimal: round)
        out.append(", ")
        out.append(decimal: elapsed / 1000)
        out.append(" us: ")
        out.append(ok: good)
    }
    exit(good ? 0 : 1)
}
