import Foundation
import Testing
@testable import DedupStore

/// Manifests on disk: a backup of one stream writes exactly the format-1 manifest
/// it always wrote (bytes and tag pinned here), and a backup of several member
/// streams writes format 2, whose tag covers every member.
@Suite struct ManifestFormatTests {
    /// A format-1 manifest with every optional field that a dump fills in.
    static func oneStream() -> Manifest {
        var dump = Manifest.DumpInfo(engine: "postgres", serverVersion: "15.18", server: "db1:5432", tool: "pg_dump",
                                     toolVersion: "pg_dump (PostgreSQL) 15.18", format: "custom", databaseSize: 1234)
        dump.serverID = 7
        var m = Manifest(formatVersion: 1, id: "2026-11-21_020000_shop", name: "shop", kind: "dump", database: "shop",
                         dbType: "postgres", dbHost: nil, tags: ["env": "prod"], createdAt: "2026-11-21T02:00:00Z",
                         committedAt: "2026-11-21T02:00:03Z", source: "stdin", hostname: "storage1", dbbackupVersion: "0.1.0",
                         size: 50_000_000, sha256: String(repeating: "ab", count: 32),
                         chunkList: .init(key: "manifests/2026-11-21_020000_shop.chunks", size: 6084,
                                          sha256: String(repeating: "cd", count: 32), count: 167),
                         stats: .init(chunks: 167, newChunks: 3, newBytes: 700_000, storedBytes: 200_000, durationSeconds: 0.25),
                         dump: dump, archive: nil)
        m.auth = nil
        return m
    }

    @Test func aOneStreamManifestIsTheFormatOneBytesItAlwaysWas() throws {
        let text = String(decoding: try Self.oneStream().encoded(), as: UTF8.self)
        #expect(text == Self.formatOneGolden, "\(text)")
    }

    @Test func aOneStreamManifestTagIsTheOneItAlwaysWas() throws {
        let cipher = RepositoryCipher(master: [UInt8](repeating: 9, count: 64))
        #expect(Repository.manifestTag(Self.oneStream(), cipher: cipher) == Self.formatOneTagGolden)
    }

    @Test func aBackupOfOneStreamIsWrittenInFormatOne() throws {
        let dir = TestStore(.memory)
        let repo = try makeRepository(dir)
        let m = try backup(repo, randomBytes(100_000, seed: 1), name: "one")
        let bytes = try #require(try repo.backend.get(Manifest.key(for: m.id)))
        let json = try #require(try JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any])
        #expect(json["formatVersion"] as? Int == 1 && json["chunkList"] != nil && json["members"] == nil)
        #expect(m.streams.count == 1 && m.streams[0].name == "")
    }

    @Test func everyFormatOneManifestReadsAsOneMember() throws {
        let m = try Manifest.decode(Array(Self.formatOneGolden.utf8), id: "2026-11-21_020000_shop")
        let list = try #require(m.chunkList)
        #expect(m.streams == [Manifest.Member(name: "", size: 50_000_000, sha256: String(repeating: "ab", count: 32), chunkList: list)])
        #expect(try m.stream(nil).chunkList.count == 167)
        // The streams of one format under the number of the other: refused.
        let misnumbered = Self.formatOneGolden.replacingOccurrences(of: "\"formatVersion\" : 1", with: "\"formatVersion\" : 2")
        #expect { try Manifest.decode(Array(misnumbered.utf8), id: "x") } throws: { e in
            if case DedupError.manifestCorrupt = e { return true } else { return false }
        }
    }

    /// Several member streams: one backup in format 2 that restores member by
    /// member, verifies, keeps its chunks through gc, and goes whole on delete.
    @Test(arguments: [(StoreKind.local, false), (StoreKind.memory, false), (StoreKind.memory, true)])
    func membersAreOneBackupOfSeveralStreams(kind: StoreKind, encrypted: Bool) throws {
        let dir = TestStore(kind)
        let key: [UInt8]? = encrypted ? Array("members".utf8) : nil
        let repo = try makeRepository(dir, key: key)
        let shared = sqlLikeBytes(rows: 8_000, seed: 5)
        let streams: [(String, [UInt8])] = [("public.orders", shared + randomBytes(200_000, seed: 6)),
                                            ("public.customers", randomBytes(300_000, seed: 7) + shared),
                                            ("schema", [])]
        var options = BackupOptions(name: "shop", source: "memory")
        options.kind = .dump
        options.lockWait = 0
        options.streamSHA256 = true
        options.checkDumpComplete = false
        let m = try BackupSession(repository: repo).run(members: streams.map { ($0.0, AnySource(BufferSource($0.1))) }, options: options)
        #expect(m.formatVersion == 2 && m.chunkList == nil && m.members?.map(\.name) == streams.map(\.0))
        #expect(m.size == Int64(streams.reduce(0) { $0 + $1.1.count }))
        #expect(m.stats.newChunks < m.stats.chunks, "the members deduplicate against each other")
        let reopened = try dir.reopen(key: key)
        for (name, data) in streams {
            let out = dir.sub("out-\(name)")
            try Restorer(repository: reopened).restore(m.id, member: name, to: .file(path: out, overwrite: false))
            #expect(try FileIO.readFile(out) == data, "\(name)")
        }
        #expect { try Restorer(repository: reopened).restore(m.id, to: .file(path: dir.sub("whole"), overwrite: false)) } throws: { e in
            guard case DedupError.memberNotFound(_, nil, let names) = e else { return false }
            return names == streams.map(\.0)
        }
        #expect(try Verifier(repository: reopened).verify(deep: true).ok)
        // gc keeps every member's chunks; a delete takes the backup whole.
        let other = try backup(reopened, randomBytes(400_000, seed: 8), name: "other")
        try reopened.deleteManifest(other.id)
        _ = try GarbageCollector(repository: reopened).run()
        for (name, data) in streams {
            let out = dir.sub("again-\(name)")
            try Restorer(repository: reopened).restore(m.id, member: name, to: .file(path: out, overwrite: false))
            #expect(try FileIO.readFile(out) == data)
        }
        try reopened.deleteManifest(m.id)
        _ = try GarbageCollector(repository: reopened).run()
        #expect(try reopened.listPacks().isEmpty && (try reopened.backend.list("manifests/")).isEmpty)
    }

    /// Members streamed several at once: each read on its own thread in small
    /// pieces (so that their batches interleave), each restored byte for byte,
    /// listed in the order given, never more open than asked; the same data
    /// again stores nothing new; a member that fails commits nothing.
    @Test func membersStreamedConcurrentlyAreEachWhole() throws {
        let dir = TestStore(.local)
        let repo = try makeRepository(dir)
        let data: [(String, [UInt8])] = (0..<7).map { i in
            ("t\(i)", i % 2 == 0 ? sqlLikeBytes(rows: 3_000 * (i + 1), seed: UInt64(10 + i)) : randomBytes(150_000 * i, seed: UInt64(20 + i)))
        }
        var options = BackupOptions(name: "native", source: "memory")
        options.kind = .dump
        options.lockWait = 0
        options.checkDumpComplete = false
        let opened = OpenCount()
        func plans(failing: String? = nil) -> [MemberPlan] {
            data.map { name, bytes in
                MemberPlan(name: name) { slot in
                    #expect((0..<3).contains(slot))
                    opened.open()
                    return AnySource(TricklingSource(bytes, failAfter: name == failing ? bytes.count / 2 : nil, onEnd: opened.close))
                }
            }
        }
        let m = try BackupSession(repository: repo).run(members: plans(), streams: 3, options: options)
        #expect(m.members?.map(\.name) == data.map(\.0))
        #expect((2...3).contains(opened.most), "several members were open at once, never more than three")
        for (name, bytes) in data {
            let out = dir.sub("out-\(name)")
            try Restorer(repository: repo).restore(m.id, member: name, to: .file(path: out, overwrite: false))
            #expect(try FileIO.readFile(out) == bytes, "\(name)")
        }
        let again = try BackupSession(repository: repo).run(members: plans(), streams: 2, options: options)
        #expect(again.stats.newChunks == 0 && again.stats.chunks == m.stats.chunks)
        let before = try repo.backend.list("manifests/").filter { $0.key.hasSuffix(".json") }.count
        #expect { try BackupSession(repository: repo).run(members: plans(failing: "t3"), streams: 3, options: options) } throws: { e in
            "\(e)".contains("cut off at")
        }
        #expect(try repo.backend.list("manifests/").filter { $0.key.hasSuffix(".json") }.count == before)
        #expect(try Verifier(repository: repo).verify(deep: true).ok)
    }

    /// In an encrypted repository the tag covers every member: a member pointed
    /// at another list, or a member dropped, is refused.
    @Test func theTagCoversEveryMember() throws {
        let dir = TestStore(.memory)
        let key = Array("tag".utf8)
        let repo = try makeRepository(dir, key: key)
        var options = BackupOptions(name: "t", source: "memory")
        options.lockWait = 0
        options.checkDumpComplete = false
        let m = try BackupSession(repository: repo).run(members: [("a", AnySource(BufferSource(randomBytes(50_000, seed: 1)))),
                                                                  ("b", AnySource(BufferSource(randomBytes(60_000, seed: 2))))],
                                                        options: options)
        let members = try #require(m.members)
        var swapped = m
        swapped.members = [Manifest.Member(name: "a", size: members[1].size, sha256: nil, chunkList: members[1].chunkList),
                           Manifest.Member(name: "b", size: members[0].size, sha256: nil, chunkList: members[0].chunkList)]
        var dropped = m
        dropped.members = [members[0]]
        dropped.size = members[0].size
        for forged in [swapped, dropped] {
            try dir.rewrite(Manifest.key(for: m.id), try forged.encoded())
            #expect { try Restorer(repository: dir.reopen(key: key)).restore(m.id, member: "a", to: .file(path: dir.sub("x"), overwrite: true)) } throws: { e in
                (e as? DedupError)?.message.contains("authentication tag does not match") == true
            }
            #expect(try Verifier(repository: dir.reopen(key: key)).verify(deep: false).damagedManifests == [m.id])
        }
    }

    static let formatOneGolden = """
        {
          "chunkList" : {
            "count" : 167,
            "key" : "manifests/2026-11-21_020000_shop.chunks",
            "sha256" : "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd",
            "size" : 6084
          },
          "committedAt" : "2026-11-21T02:00:03Z",
          "createdAt" : "2026-11-21T02:00:00Z",
          "database" : "shop",
          "dbType" : "postgres",
          "dbbackupVersion" : "0.1.0",
          "dump" : {
            "databaseSize" : 1234,
            "engine" : "postgres",
            "format" : "custom",
            "server" : "db1:5432",
            "serverID" : 7,
            "serverVersion" : "15.18",
            "tool" : "pg_dump",
            "toolVersion" : "pg_dump (PostgreSQL) 15.18"
          },
          "formatVersion" : 1,
          "hostname" : "storage1",
          "id" : "2026-11-21_020000_shop",
          "kind" : "dump",
          "name" : "shop",
          "sha256" : "abababababababababababababababababababababababababababababababab",
          "size" : 50000000,
          "source" : "stdin",
          "stats" : {
            "chunks" : 167,
            "durationSeconds" : 0.25,
            "newBytes" : 700000,
            "newChunks" : 3,
            "storedBytes" : 200000
          },
          "tags" : {
            "env" : "prod"
          }
        }
        """ + "\n"
    static let formatOneTagGolden = "141b54524c66abec3b71f2a1009262d1ec60967366fe0003a9ca8358f8cdb211"
}

/// Counts the members open at once.
final class OpenCount: @unchecked Sendable {
    private let lock = NSLock()
    private var now = 0
    private(set) var most = 0
    func open() { lock.lock(); now += 1; most = max(most, now); lock.unlock() }
    func close() { lock.lock(); now -= 1; lock.unlock() }
}

/// Hands its bytes out in pieces of at most 64 KiB with a short pause between,
/// as a database connection does; with `failAfter`, throws once that many are out.
struct TricklingSource: ByteSource {
    struct CutOff: Error, CustomStringConvertible {
        var at: Int
        var description: String { "cut off at \(at)" }
    }
    let bytes: [UInt8]
    let failAfter: Int?
    let onEnd: () -> Void
    var offset = 0
    var ended = false
    init(_ bytes: [UInt8], failAfter: Int?, onEnd: @escaping () -> Void) {
        self.bytes = bytes
        self.failAfter = failAfter
        self.onEnd = onEnd
    }
    mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        if let failAfter, offset >= failAfter {
            if !ended { ended = true; onEnd() }
            throw CutOff(at: offset)
        }
        let n = min(buffer.count, 64 << 10, bytes.count - offset)
        if n == 0 {
            if !ended { ended = true; onEnd() }
            return 0
        }
        usleep(200)
        bytes.withUnsafeBytes { buffer.baseAddress?.copyMemory(from: $0.baseAddress! + offset, byteCount: n) }
        offset += n
        return n
    }
}
