/// What the VMM waits on for a back end: in practice one of the VMM's own host sockets. A device
/// model only passes it from its back end to the VMM's poll loop; it does no I/O with it (Devices
/// is pure), so it holds no descriptor, only this typed handle.
public struct WaitHandle: Hashable, Sendable {
    /// The number the VMM polls (a descriptor the back end owns).
    public let hostDescriptor: Int32
    public init(hostDescriptor: Int32) { self.hostDescriptor = hostDescriptor }
}
