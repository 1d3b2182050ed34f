import Foundation
import Testing
@testable import DedupStore

/// What a restore checks: into a file, the stream's SHA-256 before the file is
/// renamed into place (a mismatch traced to its chunk); into a pipe, every chunk
/// against its id before it is written.
@Suite struct RestoreCheckTests {
    /// A stored-raw chunk with one byte flipped: it decodes, to the wrong bytes.
    func damagedBackup(_ store: TestStore) throws -> (repo: Repository, id: String, data: [UInt8], victim: ChunkID,
                                                        offset: Int) {
        let repo = try makeRepository(store)
        let data = randomBytes(300_000, seed: 11)
        let m = try backup(repo, data, name: "raw", streamSHA256: true)
        var chunks = [(id: ChunkID, offset: Int)]()
        var at = 0
        try ChunkListReader(repository: repo, manifest: m).forEach { id, length in
            chunks.append((id, at))
            at += length
        }
        let victim = chunks[chunks.count / 2]
        let loc = try #require(try repo.index().lookup(victim.id))
        #expect(loc.encoding == ChunkEncoding.raw.rawValue, "random bytes are stored raw")
        try store.flip(loc.pack.key, at: payloadOffset(loc) + 5)
        return (repo, m.id, data, victim.id, victim.offset)
    }

    func names(_ chunk: ChunkID) -> (any Error) -> Bool {
        { e in
            guard case .chunkCorrupt(let id, _, _, let detail)? = e as? DedupError else { return false }
            return id == chunk.hex && detail.contains("SHA-256")
        }
    }

    @Test(arguments: StoreKind.allCases)
    func aFileRestoreOfAWrongChunkFailsNamingItAndLeavesNoFile(store kind: StoreKind) throws {
        let store = TestStore(kind)
        let b = try damagedBackup(store)
        let out = store.sub("restored")
        #expect(performing: {
            try Restorer(repository: b.repo).restore(b.id, to: .file(path: out, overwrite: false))
        }, throws: names(b.victim))
        #expect(!FileManager.default.fileExists(atPath: out))
        #expect(try FileManager.default.contentsOfDirectory(atPath: store.path).filter { $0.hasPrefix(".") }.isEmpty,
                "no temporary file left")
    }

    @Test(arguments: StoreKind.allCases)
    func aPipeNeverGetsTheWrongChunk(store kind: StoreKind) throws {
        let store = TestStore(kind)
        let b = try damagedBackup(store)
        let path = store.sub("piped")
        let fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0o600)
        #expect(fd >= 0)
        #expect(performing: {
            try Restorer(repository: b.repo).restore(b.id, to: .descriptor(fd, name: "pipe"))
        }, throws: names(b.victim))
        close(fd)
        let got = try FileIO.readFile(path)
        #expect(got.count <= b.offset && Array(b.data.prefix(got.count)) == got, "only bytes before the damaged chunk")
    }
}
