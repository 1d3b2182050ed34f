import DatabaseDumps
import DedupStore
import Foundation
import Testing

/// `binlog archive` of one file finds what it needs by key (the archive's state
/// object): no listing of manifests/ after the first, however many binlogs the
/// archive holds; partial copies are replaced, another server is refused, and an
/// archive without a state object (an older dbbackup's) is brought forward.
@Suite struct BinlogStateTests {
    @Test func archivingUsesTheStateObjectAndKeepsThePartialCopiesRight() throws {
        let dir = NSTemporaryDirectory() + "binlog-state-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let backend = MemoryBackend(name: "binlog-" + UUID().uuidString)
        let repo = try Repository.initialize(on: backend, cacheRoot: dir + "/cache")
        let archive = try BinlogArchive(repository: repo, name: "main")
        func binlog(_ n: Int, bytes: Int = 5000) throws -> (path: String, file: String) {
            let file = String(format: "mariadb-bin.%06d", n)
            var data = BinlogArchive.magic
            var g = SystemRandomNumberGenerator()
            data += (0..<bytes).map { _ in UInt8.random(in: 0...255, using: &g) }
            try Data(data).write(to: URL(fileURLWithPath: dir + "/" + file))
            return (dir + "/" + file, file)
        }
        for n in 1...3 {
            let b = try binlog(n)
            _ = try archive.archive(path: b.path, file: b.file, serverID: 7)
        }
        #expect(backend.listings(under: "manifests/") == 1, "one listing, to make the state object")
        // The file being written, twice as it grows, then finished.
        let current = try binlog(4, bytes: 9000)
        let data = try FileIO.readFile(current.path)
        try Data(data[0..<3000]).write(to: URL(fileURLWithPath: dir + "/cut"))
        _ = try archive.archive(path: dir + "/cut", file: current.file, serverID: 7, partial: true)
        #expect(try repo.hasManifest("binlog_main_\(current.file).partial-3000"))
        try Data(data[0..<6000]).write(to: URL(fileURLWithPath: dir + "/cut"))
        _ = try archive.archive(path: dir + "/cut", file: current.file, serverID: 7, partial: true)
        #expect(try !repo.hasManifest("binlog_main_\(current.file).partial-3000"))
        #expect(try repo.hasManifest("binlog_main_\(current.file).partial-6000"))
        _ = try archive.archive(path: current.path, file: current.file, serverID: 7)
        #expect(try !repo.hasManifest("binlog_main_\(current.file).partial-6000"))
        #expect(try archive.copies().map(\.name.name) == (1...4).map { String(format: "mariadb-bin.%06d", $0) })
        #expect(try archive.newestFinished()?.name == current.file)
        #expect(backend.listings(under: "manifests/") == 2, "and one for copies(), nothing else")

        // Another server under the same name is refused.
        let foreign = try binlog(5)
        #expect(throws: DatabaseError.self) { _ = try archive.archive(path: foreign.path, file: foreign.file, serverID: 8) }
        #expect(try !repo.hasManifest("binlog_main_\(foreign.file)"))

        // An archive without its state object (an older dbbackup) gets it back from
        // the manifests: the server, the newest file, a partial copy.
        try Data(try FileIO.readFile(foreign.path)[0..<2000]).write(to: URL(fileURLWithPath: dir + "/cut"))
        _ = try archive.archive(path: dir + "/cut", file: foreign.file, serverID: 7, partial: true)
        try backend.delete("archives/binlog_main.json")
        #expect(throws: DatabaseError.self) { _ = try archive.archive(path: foreign.path, file: foreign.file, serverID: 8) }
        _ = try archive.archive(path: foreign.path, file: foreign.file, serverID: 7)
        #expect(try !repo.hasManifest("binlog_main_\(foreign.file).partial-2000"), "the rebuilt state knew the partial copy")
        #expect(try archive.newestFinished()?.name == foreign.file)
    }
}
