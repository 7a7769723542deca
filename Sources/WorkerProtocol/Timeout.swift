extension VMConfiguration {
    /// The range of a VM's timeout (`bulkhead run --timeout`, the `configure` message): 1 ms to
    /// 366 days. Checked once where the number enters (the command line, the decoder), so that
    /// nothing downstream does arithmetic on an unbounded or non-finite value.
    public static let minTimeoutMilliseconds: UInt64 = 1
    public static let maxTimeoutMilliseconds: UInt64 = 366 * 86_400_000
    /// The same range in seconds, for messages.
    public static let timeoutRangeDescription = "between 0.001 and 31622400 seconds (366 days)"

    /// `seconds` as whole milliseconds (to nearest), or nil when it is not a finite number in
    /// the range. Never traps, whatever the Double.
    public static func timeoutMilliseconds(seconds: Double) -> UInt64? {
        guard seconds.isFinite else { return nil }
        let ms = seconds * 1000
        guard ms >= Double(minTimeoutMilliseconds), ms <= Double(maxTimeoutMilliseconds) else { return nil }
        return UInt64(ms.rounded())
    }
}
