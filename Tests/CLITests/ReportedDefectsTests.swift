import DedupStore
import Foundation
import Testing

/// Defects a new user found by reading the docs and trying them (issue 12): each
/// test failed before its fix.
@Suite struct ReportedDefectsTests {
    /// The pack file and payload offset of the first chunk of a backup, through
    /// the library (the tests' cache root is the CLI's).
    func firstChunk(_ repoPath: String, _ id: String) throws -> (path: String, offset: Int64, chunk: String) {
        let repo = try Repository(path: repoPath)
        var first: ChunkID?
        try ChunkListReader(backend: repo.backend, manifest: try repo.loadManifest(id)).forEach { c, _ in
            if first == nil { first = c }
        }
        let chunk = try #require(first)
        let loc = try #require(try repo.index().lookup(chunk))
        return (repo.backend.path(loc.pack.key), Int64(loc.offset) + Int64(PackFormat.entryHeaderSize) + 50, chunk.hex)
    }

    @Test func aCorruptChunkStaysBrokenInVerifyAfterAnIndexRebuildUntilTheNextBackupHealsIt() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        let data = pseudoRandom(1_500_000, seed: 12)
        let id = try #require(CLI.committedID(try cli.dedup(["backup", "-", "--name", "victim"], stdin: data)))
        let (pack, offset, chunk) = try firstChunk(dir + "/repo", id)
        let fd = open(pack, O_RDWR); var b: UInt8 = 0
        _ = pread(fd, &b, 1, off_t(offset)); b ^= 0xFF; _ = pwrite(fd, &b, 1, off_t(offset)); close(fd)

        let deep = try cli.dedup(["verify", "--deep"])
        #expect(deep.status == 1 && deep.out.contains(id))
        // Before a rebuild restore names the corruption, not a missing chunk.
        let before = try cli.dedup(["restore", id, "-"])
        #expect(before.status == 1 && before.stderr.contains("\(chunk) in pack") && before.stderr.contains("is corrupt"), "\(before.stderr)")
        #expect(!before.stderr.contains("is in no pack"))
        #expect(try cli.dedup(["index", "rebuild"]).status == 0)
        let quick = try cli.dedup(["verify"])
        #expect(quick.status == 1, "\(quick.out)")
        #expect(quick.out.contains("damaged backups: \(id)") && !quick.out.contains("ok: every"), "\(quick.out)")
        let after = try cli.dedup(["restore", id, "-"])
        #expect(after.status == 1 && after.stderr.contains("is corrupt"))
        // The next backup of the same data stores the chunk again: restorable again.
        let again = try cli.dedup(["backup", "-", "--name", "victim", "--json"], stdin: data)
        #expect(try storedAnew(again).newBytes > 0)
        #expect(try cli.dedup(["verify"]).status == 0)
        let healed = try cli.dedup(["restore", id, "-"])
        #expect(healed.status == 0 && healed.stdout == data)
    }

    @Test func statusShowsFailingOverAgingAndDatabasesThatOnlyEverFailed() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        let old = Timestamps.iso8601(Date().addingTimeInterval(-30 * 3600))
        #expect(try cli.dedup(["backup", "-", "--db-name", "shop", "--time", old], stdin: pseudoRandom(1000, seed: 1)).status == 0)
        #expect(try cli.dedup(["backup", dir + "/missing.sql", "--db-name", "shop"]).status == 1)
        #expect(try cli.dedup(["backup", dir + "/missing.sql", "--db-name", "newdb"]).status == 1)
        struct Row: Decodable { var database: String; var state: String; var lastBackup: String?; var failuresSinceLastBackup: Int }
        let rows = try JSONDecoder().decode([Row].self, from: Data(try CLI.run(["status", "--dedup-dir", cli.repo, "--json"]).stdout))
        #expect(rows.count == 2)
        #expect(rows.first { $0.database == "shop" }?.state == "failing", "aging must not hide a failed run: \(rows)")
        let never = try #require(rows.first { $0.database == "newdb" })
        #expect(never.state == "failing" && never.lastBackup == nil && never.failuresSinceLastBackup == 1)
        let table = try CLI.run(["status", "--dedup-dir", cli.repo])
        let shopLine = table.out.split(separator: "\n").first { $0.hasPrefix("shop ") } ?? ""
        #expect(shopLine.contains("failing (1 failed since)") && shopLine.contains(" 1d06h "), "\(table.out)")
        #expect(table.out.split(separator: "\n").contains { $0.hasPrefix("newdb ") && $0.contains("never") && $0.contains("failing") })
        let check = try CLI.run(["status", "--dedup-dir", cli.repo, "--check"])
        #expect(check.status == 1 && check.stderr.contains("not healthy: newdb, shop"), "\(check.stderr)")
        // With a wider --warn, the same data gives the same answer.
        let wide = try CLI.run(["status", "--dedup-dir", cli.repo, "--check", "--warn", "100h", "--crit", "200h"])
        #expect(wide.status == 1 && wide.stderr.contains("newdb, shop"))
    }

    @Test func streamSHA256PrintsWhatSha256sumPrintsAlsoWhenEncrypted() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let data = pseudoRandom(300_000, seed: 4)
        let expected = "sha256 " + sha256(data)
        let plain = CLI(repo: dir + "/plain")
        let p = try plain.dedup(["backup", "-", "--name", "x", "--stream-sha256"], stdin: data)
        #expect(p.out.contains(expected), "\(p.out)")
        let key = dir + "/key"
        try writeFile(key, Array("a key for the test".utf8))
        let sealed = CLI(repo: dir + "/sealed")
        #expect(try sealed.dedup(["init", "--encrypt", "--key-file", key]).status == 0)
        let e = try sealed.dedup(["backup", "-", "--name", "x", "--stream-sha256", "--key-file", key], stdin: data)
        #expect(e.status == 0 && e.out.contains(expected), "\(e.out)")
        // The repository keeps only the keyed form; a restore checks it.
        let id = try #require(CLI.committedID(e))
        let manifest = try String(contentsOfFile: dir + "/sealed/manifests/\(id).manifest.json", encoding: .utf8)
        #expect(!manifest.contains(sha256(data)))
        let restored = try sealed.dedup(["restore", id, "-", "--key-file", key])
        #expect(restored.status == 0 && restored.stdout == data)
    }
}
