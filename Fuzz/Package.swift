// swift-tools-version: 6.0
import PackageDescription

// libFuzzer targets for Bulkhead's guest-facing pure code. A separate package so the main build
// never needs the fuzzer runtime. Build and run with ./run.sh (see README.md).
//
// The main package is the parent directory. SwiftPM names a path dependency after its directory,
// so the product references use that name, whatever the checkout is called.
let mainPackage: String = {
    var dir = #filePath
    for _ in 0..<2 {  // strip "/Package.swift", then "/Fuzz"
        if let slash = dir.lastIndex(of: "/") { dir = String(dir[..<slash]) }
    }
    if let slash = dir.lastIndex(of: "/") { dir = String(dir[dir.index(after: slash)...]) }
    return dir
}()

func fuzzTarget(_ name: String, _ products: [String]) -> Target {
    .executableTarget(
        name: name,
        dependencies: ["FuzzSupport"] + products.map { .product(name: $0, package: mainPackage) }
    )
}

let package = Package(
    name: "BulkheadFuzz",
    platforms: [.macOS(.v14)],
    dependencies: [
        .package(path: ".."),
    ],
    targets: [
        // The fuzzers' own input helpers, over the main package's shared test support (the
        // in-memory back ends, the seeded generator, the page-table walker, the image builders).
        .target(name: "FuzzSupport", dependencies: [.product(name: "BulkheadBoot", package: mainPackage),
                                                    .product(name: "BulkheadVirtio", package: mainPackage),
                                                    .product(name: "BulkheadTestSupport", package: mainPackage)]),
        fuzzTarget("FuzzELF", ["BulkheadBoot"]),
        fuzzTarget("FuzzHypercall", ["BulkheadBoot", "BulkheadGuestInterface"]),
        fuzzTarget("FuzzSerial", ["BulkheadDevices"]),
        fuzzTarget("FuzzPageTables", ["BulkheadBoot"]),
        fuzzTarget("FuzzLinuxImage", ["BulkheadBoot"]),
        fuzzTarget("FuzzVirtqueue", ["BulkheadVirtio"]),
        fuzzTarget("FuzzVirtioMMIO", ["BulkheadVirtio"]),
        fuzzTarget("FuzzVirtioBlock", ["BulkheadDevices", "BulkheadVirtio"]),
        fuzzTarget("FuzzVirtioNet", ["BulkheadDevices", "BulkheadVirtio"]),
        fuzzTarget("FuzzVsock", ["BulkheadDevices", "BulkheadVirtio"]),
        fuzzTarget("FuzzWorkerProtocol", ["BulkheadWorkerProtocol"]),
        fuzzTarget("FuzzAuditRecord", ["BulkheadAuditLog"]),
        fuzzTarget("FuzzWitness", ["BulkheadAuditLog"]),
    ],
    swiftLanguageModes: [.v6]
)
