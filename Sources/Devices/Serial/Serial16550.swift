/// A 16550A UART as a pure state machine: no I/O, no clock, no threads.
///
/// The VMM calls `read(offset:)` / `write(offset:value:)` for guest port accesses and
/// `receive(_:)` for host input; the device answers with the effects for the caller to carry out
/// (bytes to transmit, the new level of its interrupt line). The state is plain data.
///
/// Threats: a guest can write any register with any value (all are masked to their defined bits),
/// read any register (side effects as on real hardware, nothing else), and transmit without limit
/// (every byte is handed to the caller, who owns the rate). Host input is held in a FIFO capped at
/// `fifoCapacity`; bytes beyond it are refused, never buffered without bound.
public struct Serial16550: Equatable, Sendable {
    public static let fifoCapacity = 64

    /// What the caller must do after an access.
    public struct Effects: Equatable, Sendable {
        /// A byte the guest transmitted.
        public var output: UInt8?
        /// The interrupt line's level, when it changed.
        public var interrupt: Bool?
        public init(output: UInt8? = nil, interrupt: Bool? = nil) { self.output = output; self.interrupt = interrupt }
    }

    // Register offsets.
    public enum Register: UInt8 {
        case data = 0, interruptEnable = 1, interruptIdentification = 2, lineControl = 3
        case modemControl = 4, lineStatus = 5, modemStatus = 6, scratch = 7
    }

    static let lcrDLAB: UInt8 = 0x80
    static let ierReceived: UInt8 = 0x01
    static let ierTransmitEmpty: UInt8 = 0x02
    static let lsrDataReady: UInt8 = 0x01
    static let lsrOverrun: UInt8 = 0x02
    static let lsrTHREmpty: UInt8 = 0x20
    static let lsrTransmitterEmpty: UInt8 = 0x40
    static let mcrLoopback: UInt8 = 0x10
    static let iirNoInterrupt: UInt8 = 0x01
    static let iirTHREmpty: UInt8 = 0x02
    static let iirReceived: UInt8 = 0x04
    static let iirFIFOEnabled: UInt8 = 0xc0

    public private(set) var interruptEnable: UInt8 = 0
    public private(set) var lineControl: UInt8 = 0x03       // 8N1
    public private(set) var modemControl: UInt8 = 0x08      // OUT2
    public private(set) var scratch: UInt8 = 0
    public private(set) var divisor: UInt16 = 12            // 9600 baud
    public private(set) var fifoControl: UInt8 = 0
    private var overrun = false
    /// A THR-empty interrupt is pending until IIR is read or THR is written.
    private var thrEmptyPending = false
    public private(set) var receiveFIFO: [UInt8] = []
    private var interruptLevel = false

    public init() {}

    /// Host input for the guest. Returns how many bytes were accepted (the rest did not fit).
    public mutating func receive(_ bytes: [UInt8]) -> (accepted: Int, effects: Effects) {
        let room = Self.fifoCapacity - receiveFIFO.count
        let n = min(room, bytes.count)
        receiveFIFO.append(contentsOf: bytes.prefix(n))
        if n < bytes.count { overrun = true }
        return (n, Effects(interrupt: updateInterrupt()))
    }

    public mutating func read(offset: UInt8) -> (value: UInt8, effects: Effects) {
        let dlab = lineControl & Self.lcrDLAB != 0
        var value: UInt8
        switch offset & 7 {
        case 0:
            if dlab { value = UInt8(truncatingIfNeeded: divisor) }
            else if receiveFIFO.isEmpty { value = 0 }
            else { value = receiveFIFO.removeFirst() }
        case 1:
            value = dlab ? UInt8(truncatingIfNeeded: divisor >> 8) : interruptEnable
        case 2:
            value = identification
            if value & 0x0f == Self.iirTHREmpty { thrEmptyPending = false }
            if fifoControl & 1 != 0 { value |= Self.iirFIFOEnabled }
        case 3: value = lineControl
        case 4: value = modemControl
        case 5:
            value = Self.lsrTHREmpty | Self.lsrTransmitterEmpty
            if !receiveFIFO.isEmpty { value |= Self.lsrDataReady }
            if overrun { value |= Self.lsrOverrun; overrun = false }
        case 6:
            // Loopback reflects MCR outputs; otherwise report CTS, DSR and DCD asserted.
            if modemControl & Self.mcrLoopback != 0 {
                let m = modemControl
                value = ((m & 0x02) << 3) | ((m & 0x01) << 5) | ((m & 0x04) << 4) | ((m & 0x08) << 4)
            } else {
                value = 0xb0
            }
        default: value = scratch
        }
        return (value, Effects(interrupt: updateInterrupt()))
    }

    public mutating func write(offset: UInt8, value: UInt8) -> Effects {
        let dlab = lineControl & Self.lcrDLAB != 0
        var effects = Effects()
        switch offset & 7 {
        case 0:
            if dlab {
                divisor = (divisor & 0xff00) | UInt16(value)
            } else if modemControl & Self.mcrLoopback != 0 {
                if receiveFIFO.count < Self.fifoCapacity { receiveFIFO.append(value) } else { overrun = true }
                thrEmptyPending = true
            } else {
                effects.output = value
                thrEmptyPending = true // transmission is instantaneous
            }
        case 1:
            if dlab {
                divisor = (divisor & 0x00ff) | UInt16(value) << 8
            } else {
                let newlyEnabled = (value & ~interruptEnable) & Self.ierTransmitEmpty != 0
                interruptEnable = value & 0x0f
                if newlyEnabled { thrEmptyPending = true }
            }
        case 2:
            fifoControl = value & 0xc9
            if value & 0x02 != 0 { receiveFIFO.removeAll(); overrun = false }
        case 3: lineControl = value
        case 4: modemControl = value & 0x1f
        case 5, 6: break // read-only registers: writes are ignored
        default: scratch = value
        }
        effects.interrupt = updateInterrupt()
        return effects
    }

    /// IIR value without side effects: highest-priority pending interrupt.
    var identification: UInt8 {
        if interruptEnable & Self.ierReceived != 0 && !receiveFIFO.isEmpty { return Self.iirReceived }
        if interruptEnable & Self.ierTransmitEmpty != 0 && thrEmptyPending { return Self.iirTHREmpty }
        return Self.iirNoInterrupt
    }

    /// Recomputes the interrupt line; returns the new level only when it changed.
    private mutating func updateInterrupt() -> Bool? {
        // OUT2 gates the interrupt line on PC-compatible boards.
        let level = identification != Self.iirNoInterrupt && modemControl & 0x08 != 0
        guard level != interruptLevel else { return nil }
        interruptLevel = level
        return level
    }
}
