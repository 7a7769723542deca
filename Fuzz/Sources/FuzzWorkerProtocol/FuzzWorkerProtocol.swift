import FuzzSupport
import WorkerProtocol

// FuzzWorkerProtocol: the decoder of the launcher <-> worker messages, fed arbitrary datagrams
// as if from either side. The worker is the launcher's most likely attacker (it runs next to a
// hostile guest), and the launcher's messages are the worker's whole input.
//
// Input: u8 control, then the datagram.
//   control bit 0: sender (0 launcher, 1 worker); bits 1-7: descriptors attached (0...127)
//
// Checks: decoding never traps; an accepted message is canonical (encoding it gives back exactly
// the input bytes), uses exactly the attached descriptors, and is a kind its sender may send; a
// refusal has a non-empty description.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzWorkerProtocol(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = FuzzInput(data, size).bytes
    guard let control = input.first else { return 0 }
    let sender: WorkerProtocol.Sender = control & 1 == 0 ? .launcher : .worker
    let descriptors = Int(control >> 1)
    let datagram = Array(input.dropFirst())
    do {
        let m = try WorkerProtocol.decode(datagram, from: sender, descriptors: descriptors)
        check(WorkerProtocol.encode(m) == datagram, "accepted \(m) but it encodes differently")
        check(m.descriptorCount == descriptors, "\(m) uses \(m.descriptorCount) descriptors, \(descriptors) attached")
        check(descriptors <= WorkerProtocol.maxDescriptors, "accepted \(descriptors) descriptors")
        check(datagram.count <= WorkerProtocol.maxMessage, "accepted a \(datagram.count)-byte datagram")
        switch m {
        case .configure(let c):
            check(sender == .launcher, "configure from the worker")
            check(Set(c.descriptorIndexes).count == c.descriptorIndexes.count, "a descriptor used twice")
            check(c.descriptorIndexes.allSatisfy { Int($0) < descriptors }, "a descriptor index out of range")
            check(c.memoryMiB >= 1 && c.memoryMiB <= VMConfiguration.maxMemoryMiB, "memory \(c.memoryMiB)")
            check(c.vcpus >= 1 && c.vcpus <= VMConfiguration.maxVCPUs, "vcpus \(c.vcpus)")
            check(c.limits.isEmpty || c.limits.count == c.devices.count, "limits for other devices")
            check(!c.commandLine.utf8.contains(0), "NUL in the command line")
        case .stop, .connectReply: check(sender == .launcher, "\(m) from the worker")
        case .started, .ended, .refused, .violation, .connectRequest: check(sender == .worker, "\(m) from the launcher")
        }
    } catch {
        check(!error.description.isEmpty, "a refusal without a reason")
    }
    return 0
}
