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

/// A restore names the entries it is about to read to the backend
/// (`Backend.willRead`, which a bucket fetches ahead, several packs at once):
/// each before it is read, and never more than its look-ahead beyond the reads.
@Suite struct RestoreReadAheadTests {
    @Test func everyEntryIsNamedBeforeItIsReadAndTheNamingStaysWithinTheLookAhead() throws {
        let store = TestStore(.memory)
        let repo = try makeRepository(store, packSize: 1 << 20)
        let data = randomBytes(10_000_000, seed: 23)
        let m = try backup(repo, data, name: "many-packs")
        let memory = try #require(repo.backend as? MemoryBackend)
        memory.logsReads = true
        let restorer = Restorer(repository: repo)
        restorer.lookAhead = 2_000_000
        restorer.lookAheadSlice = 500_000
        let out = store.sub("restored")
        try restorer.restore(m.id, to: .file(path: out, overwrite: false))
        #expect(try [UInt8](Data(contentsOf: URL(fileURLWithPath: out))) == data)

        var named = [ReadRange]()
        var namedBytes = 0, readBytes = 0, packReads = 0, widest = 0
        var packs = Set<String>()
        for event in memory.readEvents {
            switch event {
            case .named(let r):
                named.append(r)
                namedBytes += r.count
            case .read(let r) where r.key.hasPrefix("packs/"):
                packReads += 1
                packs.insert(r.key)
                readBytes += r.count
                #expect(named.contains { $0.key == r.key && $0.offset <= r.offset && r.offset + Int64(r.count) <= $0.offset + Int64($0.count) },
                        "read \(r) was not named first")
                widest = max(widest, namedBytes - readBytes)
            case .read:
                break
            }
        }
        #expect(packs.count >= 8, "the backup spans many packs")
        #expect(packReads > 100)
        // Random bytes: no compression groups, so each entry is named once and read once.
        #expect(namedBytes == readBytes)
        // Planned: at most the look-ahead plus one slice and one entry unread.
        #expect(widest > 500_000 && widest <= 2_000_000 + 500_000 + 70_000, "\(widest)")
    }
}
