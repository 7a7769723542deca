// Bulkhead guest SDK — hypercalls (docs/guest-abi.md, "Hypercalls").
//
// One hypercall = one exit to the VMM (tens of microseconds under nested KVM):
// batch output into lines (see `Console.line`) rather than writing byte by byte.

/// The assembly stub in entry.S: rax = nr, rdi/rsi/rdx/rcx = a0...a3, then an
/// 8-byte load from the hypercall page. Returns rax.
@_silgen_name("bh_hypercall")
func _bh_hypercall(_ nr: UInt64, _ a0: UInt64, _ a1: UInt64, _ a2: UInt64, _ a3: UInt64) -> Int64

/// The hypercall page address fixed by ABI version 1 (also in the boot-info block). The numbers
/// of the ABI (call numbers, error codes, limits) are GuestABI's: Sources/GuestABI/GuestABI.swift,
/// which Guest/build.sh compiles into every guest and the host compiles into the VMM.
public let hypercallPageAddress: UInt64 = GuestABI.hypercallPage

extension Hypercall {
    /// The interface version this SDK was written against.
    public static var abiVersion: Int64 { Int64(interfaceVersion) }

    /// Performs this hypercall and returns the raw result (`>= 0` success, `< 0` = `-error`).
    @inline(__always)
    public func callAsFunction(_ a0: UInt64 = 0, _ a1: UInt64 = 0, _ a2: UInt64 = 0, _ a3: UInt64 = 0) -> Int64 {
        _bh_hypercall(rawValue, a0, a1, a2, a3)
    }

    /// Performs any call number (including ones that do not exist — for hostile tests).
    @inline(__always)
    public static func raw(_ nr: UInt64, _ a0: UInt64 = 0, _ a1: UInt64 = 0, _ a2: UInt64 = 0, _ a3: UInt64 = 0) -> Int64 {
        _bh_hypercall(nr, a0, a1, a2, a3)
    }
}

/// The errors a hypercall can return (the result is `-rawValue`).
extension HypercallError: Error {
    /// The raw (negative) value the VMM puts in rax for this error.
    public var result: Int64 { -Int64(rawValue) }

    public var name: StaticString {
        switch self {
        case .unknownCall: return "unknown call"
        case .badAddress: return "bad address"
        case .badLength: return "bad length"
        case .badArgument: return "bad argument"
        }
    }
}

/// A decoded hypercall result.
public enum HypercallResult: Equatable {
    case success(UInt64)
    case failure(HypercallError)
    /// A negative value that is not a known error (a VMM bug or newer ABI).
    case unknownError(Int64)

    public init(_ raw: Int64) {
        if raw >= 0 {
            self = .success(UInt64(raw))
        } else if raw != Int64.min, let error = HypercallError(rawValue: UInt64(-raw)) {
            self = .failure(error)
        } else {
            self = .unknownError(raw)
        }
    }

    /// The value on success, else throws the error (`badArgument` for unknown errors).
    public func get() throws(HypercallError) -> UInt64 {
        switch self {
        case .success(let value): return value
        case .failure(let error): throw error
        case .unknownError: throw HypercallError.badArgument
        }
    }
}

// MARK: - Typed wrappers

/// Interface version of the VMM (1 for ABI version 1).
@inline(__always)
public func hypercallVersion() -> Int64 {
    Hypercall.version()
}

/// Ends the VM with `status`. Every vCPU stops.
public func exit(_ status: UInt8) -> Never {
    _ = Hypercall.exit(UInt64(status))
    // The VMM never resumes a vCPU after exit; fault loudly if it ever did.
    trap()
}

/// Monotonic nanoseconds since the VM started.
@inline(__always)
public func time() -> UInt64 {
    let raw = Hypercall.time()
    return raw < 0 ? 0 : UInt64(raw)
}

/// Sleeps up to `nanoseconds` (clamped to the ABI maximum of 10 s); 0 just yields.
/// Returns the raw hypercall result (0 on success).
@discardableResult
public func wait(_ nanoseconds: UInt64) -> Int64 {
    Hypercall.wait(min(nanoseconds, Hypercall.maxWaitNanoseconds))
}

/// Waits forever (in 1 s naps). For secondary vCPUs that have nothing to do.
public func parkForever() -> Never {
    while true { wait(1_000_000_000) }
}

/// Fills `buffer` with random bytes from the host (several calls if needed).
public func random(into buffer: UnsafeMutableRawBufferPointer) throws(HypercallError) {
    guard let base = buffer.baseAddress else { return }
    var done = 0
    while done < buffer.count {
        let chunk = min(buffer.count - done, Int(Hypercall.maxRandom))
        let raw = Hypercall.random(UInt64(UInt(bitPattern: base + done)), UInt64(chunk))
        let written = try HypercallResult(raw).get()
        if written == 0 { throw HypercallError.badLength }
        done += Int(written)
    }
}

/// A random 64-bit value from the host (0 if the call fails).
public func randomUInt64() -> UInt64 {
    var value: UInt64 = 0
    withUnsafeMutableBytes(of: &value) { buffer in
        do throws(HypercallError) { try random(into: buffer) } catch { }
    }
    return value
}

/// `ud2` (entry.S): ends the VM with an invalid-opcode fault (vector 6).
@_silgen_name("bh_ud2")
func _bh_ud2() -> Never

/// Stops this program with an invalid-opcode fault (#UD, vector 6), which the VMM reports.
@inline(__always)
public func trap() -> Never { _bh_ud2() }
