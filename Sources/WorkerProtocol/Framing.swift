/// The messages between the launcher (`bulkhead`) and a per-VM worker (`bulkhead-worker`).
///
/// They travel over a SOCK_SEQPACKET socketpair, one message per datagram, the descriptors a
/// message needs attached to it (SCM_RIGHTS). Each side treats the other as hostile: a
/// compromised worker is exactly what the launcher must survive. So every message is
///
///     magic "BHWP" | version u16 | type u16 | payload length u32 | payload
///
/// (little-endian), at most `maxPayload` bytes of payload, and decoded strictly: a wrong magic or
/// version, an unknown type, a type the sender may not send, a length that disagrees with the
/// datagram, a field out of range, a string that is not UTF-8 or holds a NUL, a descriptor index
/// that is out of range or used twice, and any byte left over are each refused with a reason.
/// Pure: no I/O; `FuzzWorkerProtocol` fuzzes the decoder.
public enum WorkerProtocol {
    public static let magic: [UInt8] = Array("BHWP".utf8)
    public static let version: UInt16 = 3
    public static let headerSize = 12
    public static let maxPayload = 64 * 1024
    /// The largest datagram either side accepts.
    public static let maxMessage = headerSize + maxPayload
    /// Descriptors that may accompany one message.
    public static let maxDescriptors = 64

    /// Who sent a message: each side may send only its own kinds.
    public enum Sender: Sendable, Equatable { case launcher, worker }

    public static func encode(_ message: WorkerMessage) -> [UInt8] {
        var p = Encoder()
        message.encodePayload(into: &p)
        var out = magic
        out += le(UInt64(version), 2) + le(UInt64(message.type.rawValue), 2) + le(UInt64(p.bytes.count), 4)
        return out + p.bytes
    }

    /// Text from the other side made safe for a terminal: control characters (escape sequences
    /// a compromised worker could use to rewrite the operator's screen) become "?".
    public static func printable(_ text: String) -> String {
        String(String.UnicodeScalarView(text.unicodeScalars.map { $0.value < 0x20 || ($0.value >= 0x7f && $0.value < 0xa0) ? "?" : $0 }))
    }

    /// Decodes one datagram from `sender`, which arrived with `descriptors` descriptors.
    public static func decode(_ bytes: [UInt8], from sender: Sender, descriptors: Int) throws(WorkerProtocolError) -> WorkerMessage {
        guard bytes.count >= headerSize else { throw .truncated("header") }
        guard Array(bytes[0..<4]) == magic else { throw .badMagic }
        var d = Decoder(bytes, from: 4)
        let v = try d.u16("version")
        guard v == version else { throw .unsupportedVersion(v) }
        let rawType = try d.u16("type")
        guard let type = MessageType(rawValue: rawType) else { throw .unknownType(rawType) }
        guard type.sender == sender else { throw .wrongDirection(type.name) }
        let length = Int(try d.u32("length"))
        guard length <= maxPayload else { throw .tooLong("payload", length) }
        guard bytes.count - headerSize == length else { throw .lengthMismatch(declared: length, actual: bytes.count - headerSize) }
        guard descriptors <= maxDescriptors else { throw .invalid("descriptors", "\(descriptors) attached (at most \(maxDescriptors))") }
        let message = try WorkerMessage.decodePayload(type, &d, descriptors: descriptors)
        guard d.atEnd else { throw .trailingBytes(d.remaining) }
        if message.descriptorCount != descriptors {
            throw .invalid("descriptors", "\(descriptors) attached, the message uses \(message.descriptorCount)")
        }
        return message
    }
}

/// Why a message was refused.
public enum WorkerProtocolError: Error, Equatable, Sendable, CustomStringConvertible {
    case truncated(String)
    case badMagic
    case unsupportedVersion(UInt16)
    case unknownType(UInt16)
    case wrongDirection(String)
    case lengthMismatch(declared: Int, actual: Int)
    case tooLong(String, Int)
    case invalid(String, String)
    case trailingBytes(Int)

    public var description: String {
        switch self {
        case .truncated(let f): return "message truncated in \(f)"
        case .badMagic: return "not a Bulkhead worker message (bad magic)"
        case .unsupportedVersion(let v): return "protocol version \(v) (this side speaks \(WorkerProtocol.version))"
        case .unknownType(let t): return "unknown message type \(t)"
        case .wrongDirection(let n): return "\(n) may not come from this sender"
        case .lengthMismatch(let d, let a): return "payload length \(d) declared, \(a) present"
        case .tooLong(let f, let n): return "\(f) of \(n) is over the limit"
        case .invalid(let f, let why): return "invalid \(f): \(why)"
        case .trailingBytes(let n): return "\(n) bytes after the end of the message"
        }
    }
}

public enum MessageType: UInt16, Sendable, CaseIterable {
    case configure = 1, stop = 2, connectReply = 3
    case started = 16, ended = 17, refused = 18, violation = 19, connectRequest = 20

    var sender: WorkerProtocol.Sender {
        switch self {
        case .configure, .stop, .connectReply: return .launcher
        case .started, .ended, .refused, .violation, .connectRequest: return .worker
        }
    }
    var name: String { "\(self)" }
}
