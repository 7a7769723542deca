/// The repository's root directory (this file is Tests/TestSupport/Repository.swift), for tests
/// that read its documents, scripts and built guests.
public let repositoryRoot: String = {
    var path = #filePath
    for _ in 0..<3 { if let i = path.lastIndex(of: "/") { path = String(path[..<i]) } }
    return path
}()
