import Foundation
import Testing
@testable import DedupStore

@Suite struct RepositoryTests {
    @Test(arguments: StoreKind.allCases) func backupAndRestoreAreByteForByte(store kind: StoreKind) throws {
        let dir = TestStore(kind)
        let repo = try makeRepository(dir)
        for (i, data) in [randomBytes(3 << 20, seed: 1), sqlLikeBytes(rows: 40_000, seed: 2), [], [42]].enumerated() {
            // With and without the optional whole-stream digest.
            let m = try backup(repo, data, name: "b\(i)", streamSHA256: i % 2 == 0)
            #expect(m.size == Int64(data.count))
            #expect(m.sha256 == (i % 2 == 0 ? SHA256Hasher.hash(data).hex : nil))
            #expect(try restoreBytes(repo, m.id, dir: dir) == data)
        }
        let report = try Verifier(repository: repo).verify(deep: true)
        #expect(report.ok, "\(report.problems)")
        #expect(report.manifestsChecked == 4)
        // The index recorded every pack as it is on disk: a new process has
        // nothing to repair.
        let reopened = try dir.reopen()
        _ = try reopened.index()
        _ = try reopened.bloom()
        #expect(reopened.notices.isEmpty, "\(reopened.notices)")
    }

    @Test(arguments: StoreKind.allCases) func recordedStreamDigestIsChecked(store kind: StoreKind) throws {
        let dir = TestStore(kind)
        let repo = try makeRepository(dir)
        let data = sqlLikeBytes(rows: 5_000, seed: 9)
        let m = try backup(repo, data, name: "s", streamSHA256: true)
        let key = Manifest.key(for: m.id)
        let text = String(decoding: try #require(try repo.backend.get(key)), as: UTF8.self)
        let forged = text.replacingOccurrences(of: m.sha256 ?? "?", with: String(repeating: "0", count: 64))
        #expect(forged != text)
        try dir.rewrite(key, Array(forged.utf8))
        let out = dir.sub("out")
        #expect { try Restorer(repository: repo).restore(m.id, to: .file(path: out, overwrite: false)) } throws: { e in
            guard case DedupError.streamChecksumMismatch = e else { return false }
            return true
        }
        #expect(!FileIO.exists(out))
    }

    @Test func parallelBackupMatchesSerialByteForByte() throws {
        // Small chunks: many per batch, and the compression arena must grow.
        let data = sqlLikeBytes(rows: 60_000, seed: 41) + randomBytes(3 << 20, seed: 42) + sqlLikeBytes(rows: 20_000, seed: 41)
        var lists = [[ChunkID]]()
        var packBytes = [Int64]()
        for jobs in [1, 2, 5] {
            let dir = TempDir()
            let repo = try Repository.initialize(at: dir.sub("repo"), chunker: ChunkerParameters(average: 4096), compressionLevel: 3, packSize: 1 << 20)
            let session = try BackupSession(repository: repo)
            session.jobs = jobs
            var options = BackupOptions(name: "p", source: "memory")
            options.lockWait = 0
            options.streamSHA256 = true
            let m = try session.run(source: BufferSource(data), options: options)
            var ids = [ChunkID]()
            try ChunkListReader(backend: repo.backend, manifest: m).forEach { id, _ in ids.append(id) }
            lists.append(ids)
            packBytes.append(m.stats.storedBytes)
            #expect(m.sha256 == SHA256Hasher.hash(data).hex)
            let restorer = Restorer(repository: repo)
            restorer.jobs = jobs
            let out = dir.sub("out")
            try restorer.restore(m.id, to: .file(path: out, overwrite: false))
            #expect(try FileIO.readFile(out) == data)
        }
        #expect(lists[0].count > 1000, "many chunks per batch")
        #expect(lists[1] == lists[0] && lists[2] == lists[0])
        #expect(packBytes[1] == packBytes[0] && packBytes[2] == packBytes[0])
    }

    @Test(arguments: StoreKind.allCases) func secondBackupOfSameDataStoresNothingNew(store kind: StoreKind) throws {
        let dir = TestStore(kind)
        let repo = try makeRepository(dir)
        let data = sqlLikeBytes(rows: 30_000, seed: 3)
        let first = try backup(repo, data, name: "night1")
        #expect(first.stats.newChunks == first.stats.chunks)
        #expect(first.stats.storedBytes < first.size / 2, "SQL text compresses")
        let second = try backup(repo, data, name: "night2")
        #expect(second.stats.newChunks == 0)
        #expect(second.stats.storedBytes == 0)
        // An edit in the middle stores only the chunks around it.
        var edited = data
        edited.insert(contentsOf: Array("999999\tinserted row\tx@example.com\t1.00\n".utf8), at: data.count / 2)
        let third = try backup(repo, edited, name: "night3")
        #expect(third.stats.newChunks <= 3, "\(third.stats.newChunks) new of \(third.stats.chunks)")
        #expect(try restoreBytes(repo, third.id, dir: dir) == edited)
    }

    @Test(arguments: StoreKind.allCases) func duplicatesWithinOneBackupAreStoredOnce(store kind: StoreKind) throws {
        let dir = TestStore(kind)
        let repo = try makeRepository(dir)
        let block = randomBytes(1 << 20, seed: 4)
        // 1 MiB of zeros cuts into max-size chunks that are all the same.
        let data = block + [UInt8](repeating: 0, count: 1 << 20) + block
        let m = try backup(repo, data)
        #expect(m.stats.newBytes < Int64(block.count) + 300_000, "zeros and the repeated block are stored once")
        #expect(try restoreBytes(repo, m.id, dir: dir) == data)
    }

    @Test(arguments: StoreKind.allCases) func idsArePrefixResolvableAndUnique(store kind: StoreKind) throws {
        let dir = TestStore(kind)
        let repo = try makeRepository(dir)
        let t = try #require(Timestamps.parse("2026-11-21T02:00:00Z"))
        let a = try backup(repo, [1, 2, 3], name: "mydb", time: t)
        let b = try backup(repo, [4, 5, 6], name: "mydb", time: t)
        let c = try backup(repo, [7], name: "other db/x", time: t.addingTimeInterval(86400))
        #expect(a.id == "2026-11-21_020000_mydb")
        #expect(b.id == "2026-11-21_020000_mydb_2")
        #expect(c.id == "2026-11-22_020000_other-db-x")
        #expect(try repo.resolveManifestID("2026-11-22") == c.id)
        #expect(try repo.resolveManifestID(a.id) == a.id)
        #expect(throws: DedupError.manifestAmbiguous(prefix: "2026-11-21", candidates: [a.id, b.id])) {
            try repo.resolveManifestID("2026-11-21")
        }
        #expect(throws: DedupError.manifestNotFound(idOrPrefix: "2025")) { try repo.resolveManifestID("2025") }
        let listed = try repo.manifests().map(\.id)
        #expect(listed == [a.id, b.id, c.id])
    }

    /// A restore by full id finds the manifest by key: nothing lists manifests/
    /// (a prefix still needs the listing).
    @Test func aFullIDIsFoundByKey() throws {
        let backend = MemoryBackend(name: UUID().uuidString)
        let repo = try Repository.initialize(on: backend, chunker: testChunker)
        let m = try backup(repo, randomBytes(50_000, seed: 3), name: "x")
        let before = backend.listings(under: "manifests/")
        #expect(try restoreBytes(repo, m.id, dir: TempDir()) == randomBytes(50_000, seed: 3))
        #expect(backend.listings(under: "manifests/") == before)
        #expect(try repo.resolveManifestID(String(m.id.prefix(12))) == m.id)
        #expect(backend.listings(under: "manifests/") == before + 1)
    }

    @Test func notARepositoryAndNewerFormatsAreClearErrors() throws {
        let dir = TempDir()
        #expect(throws: DedupError.notARepository(path: dir.path)) { try Repository(path: dir.path) }
        #expect(throws: DedupError.notARepository(path: dir.sub("missing"))) { try Repository(path: dir.sub("missing")) }
        try FileManager.default.createDirectory(atPath: dir.sub("full"), withIntermediateDirectories: true)
        _ = FileManager.default.createFile(atPath: dir.sub("full/x"), contents: Data([1]))
        #expect(throws: DedupError.directoryNotEmpty(path: dir.sub("full"))) { try Repository.initialize(at: dir.sub("full")) }

        let repo = try makeRepository(dir)
        #expect(throws: DedupError.repositoryExists(path: repo.path)) { try Repository.initialize(at: repo.path) }
        var config = try #require(try JSONSerialization.jsonObject(with: Data(FileIO.readFile(repo.path + "/config"))) as? [String: Any])
        config["version"] = 2
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: repo.path + "/config"))
        #expect(throws: DedupError.unsupportedFormat(path: repo.path, found: 2, supported: 1)) { try Repository(path: repo.path) }
        try Data("{\"format\":\"restic\"}".utf8).write(to: URL(fileURLWithPath: repo.path + "/config"))
        #expect { try Repository(path: repo.path) } throws: { e in
            if case DedupError.foreignRepository = e { return true } else { return false }
        }
    }

    @Test(arguments: StoreKind.allCases) func corruptChunkFailsRestoreNamingChunkAndPackAndLeavesNoFile(store kind: StoreKind) throws {
        let dir = TestStore(kind)
        let repo = try makeRepository(dir)
        let data = randomBytes(2 << 20, seed: 5)
        let m = try backup(repo, data, name: "victim")
        let other = try backup(repo, randomBytes(300_000, seed: 6), name: "bystander")
        // Damage one chunk of the first backup.
        var victimChunk: ChunkID?
        try ChunkListReader(backend: repo.backend, manifest: m).forEach { id, _ in if victimChunk == nil { victimChunk = id } }
        let chunk = try #require(victimChunk)
        let loc = try #require(try repo.index().lookup(chunk))
        try dir.flip(loc.pack.key, at: payloadOffset(loc) + 100)

        let out = dir.sub("out.sql")
        #expect { try Restorer(repository: repo).restore(m.id, to: .file(path: out, overwrite: false)) } throws: { e in
            guard case DedupError.chunkCorrupt(let c, let p, let manifest, _) = e else { return false }
            return c == chunk.hex && p == loc.pack.hex && manifest == m.id
        }
        #expect(!FileIO.exists(out))
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).allSatisfy { !$0.contains("partial") })
        // verify --deep names the damaged backup and not the other one.
        let report = try Verifier(repository: repo).verify(deep: true)
        #expect(!report.ok)
        #expect(report.damagedManifests == [m.id])
        #expect(try restoreBytes(repo, other.id, dir: dir) == randomBytes(300_000, seed: 6))
        // verify dropped the corrupt chunk from the index: backing up the same data
        // stores it again and the damaged backup restores once more.
        #expect(report.chunksDropped == 1)
        let healed = try backup(repo, data, name: "again")
        #expect(healed.stats.newChunks == 1)
        #expect(try restoreBytes(repo, m.id, dir: dir) == data)
        #expect(try Verifier(repository: repo).verify(deep: true).damagedManifests.isEmpty)
    }

    /// Issue 12, defect 1: an index rebuild (or another host's cache) must not bring
    /// back a copy verify found corrupt; quick verify and restore name it.
    @Test(arguments: StoreKind.allCases) func corruptChunkStaysOutOfTheIndexAfterARebuild(store kind: StoreKind) throws {
        let dir = TestStore(kind)
        let repo = try makeRepository(dir)
        let data = randomBytes(2 << 20, seed: 51)
        let m = try backup(repo, data, name: "victim")
        var first: ChunkID?
        try ChunkListReader(backend: repo.backend, manifest: m).forEach { id, _ in if first == nil { first = id } }
        let chunk = try #require(first)
        let loc = try #require(try repo.index().lookup(chunk))
        try dir.flip(loc.pack.key, at: payloadOffset(loc) + 100)
        #expect(try Verifier(repository: repo).verify(deep: true).damagedManifests == [m.id])
        #expect(try repo.backend.exists(DamagedPackRecord.key(for: loc.pack)))

        func restoreFailsNamingTheCorruptCopy(_ r: Repository) {
            #expect { try Restorer(repository: r).restore(m.id, to: .file(path: dir.sub("out"), overwrite: true)) } throws: { e in
                guard case DedupError.chunkCorrupt(let c, let p, let manifest, let detail) = e else { return false }
                return c == chunk.hex && p == loc.pack.hex && manifest == m.id && detail.contains("verify found it corrupt")
            }
        }
        // Before a rebuild: the cause is the corruption, not "in no pack".
        restoreFailsNamingTheCorruptCopy(repo)
        // After a rebuild, and in a cache made from scratch: still out of the index.
        _ = try repo.rebuildIndex()
        #expect(try repo.index().lookup(chunk) == nil)
        let quick = try Verifier(repository: repo).verify(deep: false)
        #expect(quick.damagedManifests == [m.id])
        #expect(quick.problems.contains { $0.message.contains("is corrupt") && $0.chunk == chunk.hex })
        restoreFailsNamingTheCorruptCopy(repo)
        try FileManager.default.removeItem(atPath: repo.cacheDirectory)
        let fresh = try dir.reopen()
        #expect(try fresh.index().lookup(chunk) == nil)
        #expect(try Verifier(repository: fresh).verify(deep: false).damagedManifests == [m.id])
        // A cache that indexed the copy before verify found it (another host's) drops it on open.
        let other = try dir.reopen(cacheRoot: dir.sub("other-cache"))
        try other.index().point([PackEntry(id: chunk, location: loc)])
        let reopened = try dir.reopen(cacheRoot: dir.sub("other-cache"))
        #expect(try reopened.index().lookup(chunk) == nil)
        // The next backup of the same data stores the chunk again and heals the backup.
        let healed = try backup(fresh, data, name: "again")
        #expect(healed.stats.newChunks == 1)
        #expect(try restoreBytes(fresh, m.id, dir: dir) == data)
        #expect(try Verifier(repository: fresh).verify(deep: false).ok)
        // gc drops the pack with the corrupt copy once nothing needs it, and its record with it.
        try fresh.deleteManifest(m.id)
        try fresh.deleteManifest(healed.id)
        _ = try GarbageCollector(repository: fresh).run()
        #expect(try fresh.listPacks().isEmpty)
        #expect(try fresh.damagedChunks().isEmpty)
    }

    @Test(arguments: StoreKind.allCases) func lostIndexIsRebuiltFromPacks(store kind: StoreKind) throws {
        let dir = TestStore(kind)
        let cache: String
        let ids: [String]
        do {
            let repo = try makeRepository(dir)
            cache = repo.cacheDirectory
            ids = [try backup(repo, randomBytes(2 << 20, seed: 7), name: "a").id,
                   try backup(repo, sqlLikeBytes(rows: 10_000, seed: 8), name: "b").id]
        }
        try FileManager.default.removeItem(atPath: cache)
        let repo = try dir.reopen()
        #expect(try restoreBytes(repo, ids[0], dir: dir) == randomBytes(2 << 20, seed: 7))
        #expect(repo.notices.contains { $0.contains("rebuilding") })
        // Dedup still works against the rebuilt index and filter.
        let again = try backup(repo, sqlLikeBytes(rows: 10_000, seed: 8), name: "c")
        #expect(again.stats.newChunks == 0)
        let rebuilt = try repo.rebuildIndex()
        #expect(rebuilt.chunks == (try repo.index().chunkCount()))
        #expect(try Verifier(repository: repo).verify(deep: true).ok)
    }

    @Test(arguments: StoreKind.allCases) func overlappingBackupsKeepTheBloomFilterHonest(store kind: StoreKind) throws {
        let dir = TestStore(kind)
        let a = try makeRepository(dir)
        a.bloomAfterChunks = 0
        try backup(a, [1])
        // B loads its filter before A's backup and saves after it, as two
        // overlapping nightly jobs would.
        let b = try dir.reopen()
        b.bloomAfterChunks = 0
        _ = try b.bloom()
        let x = randomBytes(1 << 20, seed: 21), y = randomBytes(1 << 20, seed: 22)
        try backup(a, x, name: "x")
        try backup(b, y, name: "y")
        let c = try dir.reopen()
        c.bloomAfterChunks = 0
        #expect(try backup(c, x, name: "x-again").stats.newChunks == 0, "A's chunks must not be stored again")
        #expect(try backup(c, y, name: "y-again").stats.newChunks == 0)
        // The saved filter was caught up from the index's insert log, not rebuilt
        // from the whole index, by every writer after the first.
        #expect(a.bloomRebuilds <= 1 && b.bloomRebuilds == 0 && c.bloomRebuilds == 0,
                "\(a.bloomRebuilds) \(b.bloomRebuilds) \(c.bloomRebuilds)")
        let filter = try dir.reopen().bloom()
        try c.index().forEachChunk { id, _ in #expect(filter.mightContain(id)) }
    }

    @Test func aSmallBackupUsesNoFilterAndTheNextFilterHoldsItsChunks() throws {
        let dir = TestStore(.memory)
        let a = try makeRepository(dir)
        a.bloomAfterChunks = 0
        try backup(a, randomBytes(300_000, seed: 41))
        let before = try FileIO.readFile(a.bloomPath)
        // A backup below the threshold neither reads nor writes the filter ...
        let small = try dir.reopen()
        let data = randomBytes(300_000, seed: 42)
        try backup(small, data)
        #expect(try small.bloomRebuilds == 0 && FileIO.readFile(a.bloomPath) == before)
        #expect(try backup(try dir.reopen(), data).stats.newChunks == 0, "its chunks are found in the index")
        // ... and the next filter holds its chunks, from the insert log.
        let next = try dir.reopen()
        let filter = try next.bloom()
        #expect(next.bloomRebuilds == 0)
        try next.index().forEachChunk { id, _ in #expect(filter.mightContain(id)) }
    }

    @Test func aFilterBehindALostLogIsRebuiltAndAFilterOfAnotherIndexToo() throws {
        let dir = TestStore(.memory)
        let a = try makeRepository(dir)
        a.bloomAfterChunks = 0
        try backup(a, randomBytes(300_000, seed: 31))
        let saved = try FileIO.readFile(a.bloomPath)
        try backup(try dir.reopen(), randomBytes(300_000, seed: 32))
        try backup(try dir.reopen(), randomBytes(300_000, seed: 33))
        // The filter of two saves ago, after its part of the log was dropped.
        let trimmer = try dir.reopen()
        try trimmer.index().pruneInserted(before: try trimmer.index().insertSequence())
        try FileIO.writeFileAtomically(a.bloomPath, saved)
        let b = try dir.reopen()
        let filter = try b.bloom()
        #expect(b.bloomRebuilds == 1)
        try b.index().forEachChunk { id, _ in #expect(filter.mightContain(id)) }
        // A filter ahead of the index (of another index) is rebuilt too.
        var ahead = filter
        ahead.sequence += 1000
        try FileIO.writeFileAtomically(a.bloomPath, ahead.encoded())
        let c = try dir.reopen()
        _ = try c.bloom()
        #expect(c.bloomRebuilds == 1)
    }

    @Test(arguments: StoreKind.allCases) func truncatedPackIsForgottenAndItsChunksStoredAgain(store kind: StoreKind) throws {
        let dir = TestStore(kind)
        let repo = try makeRepository(dir)
        let data = randomBytes(600_000, seed: 23)
        let first = try backup(repo, data, name: "first")
        let pack = try #require(try repo.listPacks().keys.first)
        try dir.truncate(pack.key, to: (try repo.backend.size(pack.key) ?? 0) / 2)
        // The next night: the index no longer trusts the truncated pack, so the
        // same data is stored again and the new backup restores.
        let next = try dir.reopen()
        let second = try backup(next, data, name: "second")
        #expect(second.stats.newChunks == second.stats.chunks)
        #expect(next.notices.contains { $0.contains("changed size") })
        #expect(try restoreBytes(next, second.id, dir: dir) == data)
        // The chunks are content-addressed: storing them again heals the first backup too.
        #expect(try restoreBytes(next, first.id, dir: dir) == data)
        let report = try Verifier(repository: next).verify(deep: true)
        #expect(report.damagedManifests.isEmpty)
        #expect(report.problems.contains { $0.pack == pack.hex }, "the damaged pack itself is still reported")
    }

    @Test func pathHelpersHandleEveryShape() {
        #expect(FileIO.parent("RR") == "" && FileIO.parent("a/b") == "a" && FileIO.parent("/x") == "/")
        #expect(FileIO.parent("/a/b/") == "/a" && FileIO.parent("/") == "/")
        #expect(FileIO.lastComponent("a/b.pack") == "b.pack" && FileIO.lastComponent("RR") == "RR" && FileIO.lastComponent("/a/b/") == "b")
        #expect(FileIO.absolute("/x/y") == "/x/y")
        #expect(FileIO.absolute("rel").hasSuffix("/rel") && FileIO.absolute("rel").hasPrefix("/"))
    }

    @Test(arguments: StoreKind.allCases) func packWrittenButNotIndexedIsPickedUp(store kind: StoreKind) throws {
        let dir = TestStore(kind)
        let repo = try makeRepository(dir)
        try backup(repo, [1, 2, 3])
        // Write a pack behind the index's back, as a crash between pack commit and
        // index insert would leave it.
        let data = randomBytes(200_000, seed: 9)
        let writer = try PackWriter(backend: repo.backend)
        let id = SHA256Hasher.hash(data)
        _ = try data.withUnsafeBytes { try writer.add(id: id, rawLength: data.count, encoding: .raw, payload: $0) }
        _ = try writer.finish()
        // A cache that listed the packs within the hour is trusted: the pack is
        // unseen (a loss of dedup only) until the next full listing ...
        let trusting = try dir.reopen()
        #expect(try trusting.index().lookup(id) == nil)
        // ... which maintenance always makes,
        #expect(try trusting.listedIndex().lookup(id) != nil)
        #expect(trusting.notices.contains { $0.contains("missing from the index") })
        // and any command makes once the last listing is older than the interval.
        // (The pack stays; the cache forgets it again, as before the listing.)
        try trusting.index().forget(packs: [writer.id])
        try trusting.index().setLastFullSync(Date().addingTimeInterval(-2 * Repository.fullSyncInterval))
        let later = try dir.reopen()
        #expect(try later.index().lookup(id) != nil)
        #expect(later.notices.contains { $0.contains("missing from the index") })
    }

    @Test(arguments: StoreKind.allCases) func truncatedPlainDumpIsRefused(store kind: StoreKind) throws {
        let dir = TestStore(kind)
        let repo = try makeRepository(dir)
        let dump = sqlLikeBytes(rows: 20_000, seed: 10)
        let cut = Array(dump[0..<(dump.count * 2 / 3)])
        #expect { try backup(repo, cut, name: "cut") } throws: { e in
            guard case DedupError.incompleteInput(let msg) = e else { return false }
            return msg.contains("PostgreSQL database dump complete")
        }
        #expect(try repo.manifestIDs().isEmpty)
        // The packs it wrote are reused by the next, complete backup.
        let whole = try backup(repo, dump, name: "whole")
        #expect(whole.stats.newChunks < whole.stats.chunks)
        // Explicitly allowed, a cut dump is kept.
        #expect(throws: Never.self) { try backup(repo, cut, name: "cut-allowed", checkDump: false) }
    }

    @Test(arguments: StoreKind.allCases) func sharedLocksCoexistExclusiveConflicts(store kind: StoreKind) throws {
        let dir = TestStore(kind)
        let repo = try makeRepository(dir)
        let a = try repo.lock(.shared, command: "backup a")
        let b = try repo.lock(.shared, command: "backup b")
        #expect { try repo.lock(.exclusive, command: "gc") } throws: { e in
            (e as? DedupError)?.message.contains("is locked") == true
        }
        a.release(); b.release()
        let ex = try repo.lock(.exclusive, command: "gc")
        #expect(throws: DedupError.self) { try backup(repo, [1, 2, 3]) }
        ex.release()
        #expect(try RepositoryLock.list(repo.backend).isEmpty)
    }

    @Test(arguments: StoreKind.allCases) func oldLocksFromOtherHostsAreStale(store kind: StoreKind) throws {
        let dir = TestStore(kind)
        let repo = try makeRepository(dir)
        let enc = JSONEncoder()
        let old = LockInfo(kind: .exclusive, hostname: "elsewhere", pid: 1, startedAt: "2020-01-01T00:00:00Z", command: "gc")
        let fresh = LockInfo(kind: .exclusive, hostname: "elsewhere", pid: 1, startedAt: Timestamps.iso8601(Date()), command: "gc")
        #expect(old.isStale && !fresh.isStale)
        try repo.backend.put("locks/exclusive-old.json", Array(try enc.encode(old)), ifAbsent: true)
        #expect { try repo.lock(.shared, command: "backup", wait: 5) } throws: { e in
            (e as? DedupError)?.message.contains("stale") == true
        }
    }

    @Test(arguments: StoreKind.allCases) func damagedChunkListIsDetected(store kind: StoreKind) throws {
        let dir = TestStore(kind)
        let repo = try makeRepository(dir)
        let m = try backup(repo, randomBytes(500_000, seed: 11), name: "x")
        try dir.flip(try #require(m.chunkList).key, at: 20)
        #expect { try restoreBytes(repo, m.id, dir: dir) } throws: { e in
            guard case DedupError.manifestCorrupt(let id, let detail) = e else { return false }
            return id == m.id && detail.contains("checksum")
        }
        #expect(try Verifier(repository: repo).verify(deep: false).damagedManifests == [m.id])
    }

    @Test(arguments: StoreKind.allCases) func missingPackIsReportedByVerifyAndRestore(store kind: StoreKind) throws {
        let dir = TestStore(kind)
        let repo = try makeRepository(dir)
        let m = try backup(repo, randomBytes(3 << 20, seed: 12), name: "x")
        let pack = try #require(try repo.listPacks().keys.first)
        try repo.backend.delete(pack.key)
        let reopened = try dir.reopen()
        let report = try Verifier(repository: reopened).verify(deep: false)
        #expect(report.damagedManifests == [m.id])
        #expect(throws: DedupError.self) { try restoreBytes(reopened, m.id, dir: dir) }
    }
}
