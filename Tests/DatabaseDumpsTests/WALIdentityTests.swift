import DatabaseDumps
import DedupStore
import Foundation
import Testing

/// `wal archive` checks a segment's cluster against the archive's identity
/// object, by key: archiving costs no listing of manifests/, however many
/// segments the archive holds.
@Suite struct WALIdentityTests {
    /// A 16 MiB segment of cluster `system` (a long page header, then zeros).
    static func segment(system: UInt64, at path: String) throws {
        var bytes = [UInt8](repeating: 0, count: 16 << 20)
        func put<T: FixedWidthInteger>(_ v: T, at offset: Int) {
            withUnsafeBytes(of: v.littleEndian) { for (i, b) in $0.enumerated() { bytes[offset + i] = b } }
        }
        put(UInt16(0xD110), at: 0)
        put(UInt16(0x0002), at: 2)
        put(UInt32(1), at: 4)
        put(system, at: 24)
        put(UInt32(16 << 20), at: 32)
        put(UInt32(8192), at: 36)
        put(UInt64.random(in: 1...UInt64.max), at: 64)
        try Data(bytes).write(to: URL(fileURLWithPath: path))
    }

    @Test func archivingFindsTheClusterByKeyAndOlderArchivesAreBroughtForward() throws {
        let dir = NSTemporaryDirectory() + "wal-identity-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let backend = MemoryBackend(name: "wal-" + UUID().uuidString)
        let repo = try Repository.initialize(on: backend, cacheRoot: dir + "/cache")
        let archive = try WALArchive(repository: repo, name: "main")
        func archiveSegment(_ n: Int, system: UInt64) throws {
            let file = String(format: "0000000100000000%08X", n)
            try Self.segment(system: system, at: dir + "/" + file)
            _ = try archive.archive(path: dir + "/" + file, file: file, lockWait: 0)
        }
        try archiveSegment(1, system: 7)
        let identity = try #require(try backend.get("archives/wal_main.json"))
        #expect(String(decoding: identity, as: UTF8.self).contains("\"systemIdentifier\":\"7\""))
        // The next segments: the cluster by key, no listing of manifests/.
        let before = backend.listings(under: "manifests/")
        for n in 2...4 { try archiveSegment(n, system: 7) }
        #expect(backend.listings(under: "manifests/") == before)
        // Another cluster is refused; so it is when the identity object is gone
        // (a repository of an older dbbackup), which then gets it back.
        #expect(throws: DatabaseError.self) { try archiveSegment(5, system: 42) }
        try backend.delete("archives/wal_main.json")
        #expect(throws: DatabaseError.self) { try archiveSegment(5, system: 42) }
        #expect(try backend.get("archives/wal_main.json") == identity)
        try archiveSegment(5, system: 7)
        // An archive whose segments are all gone takes a new cluster.
        for id in try repo.manifestIDs() { try repo.deleteManifest(id) }
        try archiveSegment(6, system: 42)
        #expect(String(decoding: try #require(try backend.get("archives/wal_main.json")), as: UTF8.self).contains("\"42\""))
    }
}
