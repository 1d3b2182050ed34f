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
}
