// The shared test support of the main package (Tests/TestSupport): every fuzzer gets it with
// FuzzSupport.
@_exported import TestSupport
