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

/// The address of a pointer as a UInt64 (for hypercall arguments and printing).
@inline(__always)
public func address(of pointer: UnsafeRawPointer) -> UInt64 {
    UInt64(UInt(bitPattern: pointer))
}
