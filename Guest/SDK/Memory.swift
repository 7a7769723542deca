// Bulkhead guest SDK — raw memory helpers.

import _Volatile

@_silgen_name("bh_stack_pointer")
func _bh_stack_pointer() -> UInt64

/// The caller's stack pointer (rsp).
@inline(__always)
public func stackPointer() -> UInt64 { _bh_stack_pointer() }

/// An 8-byte load the compiler may not remove, merge or move (MMIO, fault tests).
@inline(__always)
public func volatileLoad(_ pointer: UnsafeRawPointer) -> UInt64 {
    VolatileMappedRegister<UInt64>(unsafeBitPattern: UInt(bitPattern: pointer)).load()
}

/// A 1-byte volatile load.
@inline(__always)
public func volatileLoadByte(_ pointer: UnsafeRawPointer) -> UInt8 {
    VolatileMappedRegister<UInt8>(unsafeBitPattern: UInt(bitPattern: pointer)).load()
}

/// An 8-byte store the compiler may not remove, merge or move.
@inline(__always)
public func volatileStore(_ value: UInt64, to pointer: UnsafeMutableRawPointer) {
    VolatileMappedRegister<UInt64>(unsafeBitPattern: UInt(bitPattern: pointer)).store(value)
}

/// A 1-byte volatile store.
@inline(__always)
public func volatileStoreByte(_ value: UInt8, to pointer: UnsafeMutableRawPointer) {
    VolatileMappedRegister<UInt8>(unsafeBitPattern: UInt(bitPattern: pointer)).store(value)
}

/// A 2-byte volatile load (virtqueue ring indices and entries).
@inline(__always)
public func volatileLoad16(_ pointer: UnsafeRawPointer) -> UInt16 {
    VolatileMappedRegister<UInt16>(unsafeBitPattern: UInt(bitPattern: pointer)).load()
}

/// A 4-byte volatile load (exactly one 32-bit access: MMIO registers such as virtio-mmio's).
@inline(__always)
public func volatileLoad32(_ pointer: UnsafeRawPointer) -> UInt32 {
    VolatileMappedRegister<UInt32>(unsafeBitPattern: UInt(bitPattern: pointer)).load()
}

/// A 2-byte volatile store.
@inline(__always)
public func volatileStore16(_ value: UInt16, to pointer: UnsafeMutableRawPointer) {
    VolatileMappedRegister<UInt16>(unsafeBitPattern: UInt(bitPattern: pointer)).store(value)
}

/// A 4-byte volatile store (exactly one 32-bit access).
@inline(__always)
public func volatileStore32(_ value: UInt32, to pointer: UnsafeMutableRawPointer) {
    VolatileMappedRegister<UInt32>(unsafeBitPattern: UInt(bitPattern: pointer)).store(value)
}

@_silgen_name("bh_cpu_relax")
func _bh_cpu_relax()

/// `pause`: a spin-wait hint (entry.S).
@inline(__always)
public func cpuRelax() { _bh_cpu_relax() }

/// The address of a pointer as a UInt64 (for hypercall arguments and printing).
@inline(__always)
public func address(of pointer: UnsafeRawPointer) -> UInt64 {
    UInt64(UInt(bitPattern: pointer))
}
