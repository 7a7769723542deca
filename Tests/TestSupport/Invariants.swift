/// `precondition` with a message built only on failure: a violated invariant crashes, and a
/// fuzzer records the input that did it. (The page-table walker's structural rules use it too.)
@inline(__always)
public func check(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String,
                  file: StaticString = #fileID, line: UInt = #line) {
    if !condition() {
        fatalError("invariant violated: \(message())", file: file, line: line)
    }
}

public func hex(_ v: UInt64) -> String { "0x" + String(v, radix: 16) }
