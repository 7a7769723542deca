import HostOS
#if canImport(Glibc)
import Glibc
#endif

/// Errors from the KVM layer. Every case says what failed in terms a user can act on.
public enum KVMError: Error, Equatable, CustomStringConvertible, Sendable {
    case deviceUnavailable(path: String, errno: Int32)
    case unsupportedAPIVersion(Int32)
    case missingCapability(String)
    case system(SystemError)
    case invalidMemoryRegion(String)
    case tooManyCPUIDEntries(Int)

    public var description: String {
        switch self {
        case .deviceUnavailable(let path, let code):
            let hint: String
            switch code {
            case ENOENT: hint = "KVM is not available on this host (no \(path); is the kvm module loaded?)"
            case EACCES, EPERM: hint = "no permission to open \(path) (run as root or join the kvm group)"
            default: hint = "cannot open \(path)"
            }
            return "\(hint): \(SystemError.message(for: code))"
        case .unsupportedAPIVersion(let v):
            if v < 0 { return "the KVM device did not answer KVM_GET_API_VERSION: it is not a usable KVM device" }
            return "KVM API version \(v) is not supported (need 12)"
        case .missingCapability(let c): return "the host's KVM lacks a required capability: \(c)"
        case .system(let e): return e.description
        case .invalidMemoryRegion(let why): return "invalid guest memory region: \(why)"
        case .tooManyCPUIDEntries(let n): return "CPUID policy has \(n) entries, more than KVM accepts"
        }
    }
}

/// Retries a system call on EINTR and turns -1 into a typed error.
@inline(__always)
func check(_ operation: @autoclosure () -> String, retryOnInterrupt: Bool = true, _ body: () -> Int32) throws(KVMError) -> Int32 {
    let r = retryOnInterrupt ? SystemCall.uninterrupted(body) : body()
    if r < 0 { throw .system(SystemError(operation(), errno: errno)) }
    return r
}

/// Runs a host-OS call where the KVM layer's errors are expected: its `SystemError` becomes
/// `KVMError.system`.
@inline(__always)
public func hostOS<T>(_ body: () throws(SystemError) -> T) throws(KVMError) -> T {
    do { return try body() } catch { throw .system(error) }
}
