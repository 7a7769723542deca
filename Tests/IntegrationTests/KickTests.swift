import Synchronization
import HostTestSupport
import Testing
import HostOS
@testable import KVM


final class Flag: Sendable {
    let value = Atomic<Int>(0)
}

@Suite(.requiresKVM)
struct KickTests {
    /// A vCPU executing `vmcall; jmp $` at CPL0 never leaves KVM_RUN on its own (on nested PVM
    /// hosts it hangs inside the kernel; elsewhere it spins). A kick must stop it.
    @Test func kickStopsAVCPUStuckInTheKernel() throws {
        let system = try KVMSystem()
        let vm = try system.createVM()
        let memory = try GuestMemory(base: 0, size: 1 << 20)
        try vm.map(memory, slot: 0)
        try memory.write([0x0f, 0x01, 0xc1, 0xeb, 0xfe], at: 0x1000) // vmcall; jmp $
        let vcpu = try vm.createVCPU(id: 0)
        var s = try vcpu.specialRegisters()
        s.cs.base = 0; s.cs.selector = 0
        try vcpu.setSpecialRegisters(s)
        var r = Registers(); r.rip = 0x1000; r.rflags = 2
        try vcpu.setRegisters(r)

        let state = Flag() // 0 running, 1 returned early, 2 interrupted after kick
        let done = try EventFD()
        let kicked = Flag()
        let thread = try OSThread.spawn {
            vcpu.kicker.attachCurrentThread()
            while true {
                let exit = try? vcpu.run()
                if exit == .interrupted, kicked.value.load(ordering: .acquiring) == 1 {
                    state.value.store(2, ordering: .releasing); break
                }
                if exit != .interrupted { state.value.store(1, ordering: .releasing); break }
            }
            done.signal()
        }
        #expect(!done.wait(nanoseconds: 300_000_000), "the vCPU left KVM_RUN before the kick")
        kicked.value.store(1, ordering: .releasing)
        vcpu.kicker.kick()
        #expect(done.wait(nanoseconds: 10_000_000_000), "the kick did not stop the vCPU")
        thread.join()
        #expect(state.value.load(ordering: .acquiring) == 2)
        #expect(vcpu.kicker.isKicked)
    }

    @Test func kickBeforeRunReturnsImmediately() throws {
        let system = try KVMSystem()
        let vm = try system.createVM()
        let memory = try GuestMemory(base: 0, size: 1 << 20)
        try vm.map(memory, slot: 0)
        let vcpu = try vm.createVCPU(id: 0)
        vcpu.kicker.kick()
        #expect(try vcpu.run() == .interrupted)
    }
}
