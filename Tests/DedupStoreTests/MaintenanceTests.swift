import Foundation
import Testing
@testable import DedupStore

@Suite struct RetentionTests {
    /// 400 backups over two years at seeded random times, several on some days.
    func history(seed: UInt64) -> [(id: String, date: Date)] {
        var g = SeededGenerator(seed: seed)
        let start = Timestamps.parse("2024-11-01T00:00:00Z") ?? Date()
        let span = 2 * 365 * 86400.0
        return (0..<400).map { i in
            let t = start.addingTimeInterval(Double(g.next() % UInt64(span)))
            return (String(format: "b%03d", i), t)
        }
    }

    func manifest(_ id: String, _ date: Date, database: String) -> Manifest {
        Manifest(formatVersion: 1, id: id, name: database, kind: "dump", database: database, dbType: nil, dbHost: nil,
                 tags: [:], createdAt: Timestamps.iso8601(date), committedAt: Timestamps.iso8601(date), source: "test",
                 hostname: "h", dbbackupVersion: "t", size: 0, sha256: "",
                 chunkList: .init(key: "", size: 0, sha256: "", count: 0),
                 stats: .init(chunks: 0, newChunks: 0, newBytes: 0, storedBytes: 0, durationSeconds: 0))
    }

    /// The expected kept set, computed the other way round: for each rule, the
    /// distinct buckets newest first, the first N of them, the newest backup in each.
    func expectedKept(_ backups: [(id: String, date: Date)], _ p: RetentionPolicy, _ cal: Calendar) -> Set<String> {
        var kept = Set<String>()
        let newestFirst = backups.sorted { $0.date != $1.date ? $0.date > $1.date : $0.id > $1.id }
        kept.formUnion(newestFirst.prefix(p.keepLast).map(\.id))
        // One calendar call per backup: Foundation's calendar is slow in debug builds.
        let parts = Dictionary(uniqueKeysWithValues: backups.map {
            ($0.id, cal.dateComponents([.year, .month, .day, .yearForWeekOfYear, .weekOfYear], from: $0.date))
        })
        func rule(_ n: Int, _ key: (DateComponents) -> [Int]) {
            var newestIn = [[Int]: (id: String, date: Date)]()
            for b in backups {
                let k = key(parts[b.id] ?? DateComponents())
                if let cur = newestIn[k], cur.date > b.date || (cur.date == b.date && cur.id > b.id) { continue }
                newestIn[k] = b
            }
            let buckets = newestIn.keys.sorted { $0.lexicographicallyPrecedes($1) }.reversed()
            for k in buckets.prefix(n) { if let b = newestIn[k] { kept.insert(b.id) } }
        }
        rule(p.keepDaily) { [$0.year ?? 0, $0.month ?? 0, $0.day ?? 0] }
        rule(p.keepWeekly) { [$0.yearForWeekOfYear ?? 0, $0.weekOfYear ?? 0] }
        rule(p.keepMonthly) { [$0.year ?? 0, $0.month ?? 0] }
        rule(p.keepYearly) { [$0.year ?? 0] }
        return kept
    }

    @Test(arguments: [
        RetentionPolicy(keepLast: 3, keepDaily: 7, keepWeekly: 4, keepMonthly: 12, keepYearly: 3),
        RetentionPolicy(keepDaily: 30),
        RetentionPolicy(keepWeekly: 52, keepYearly: 10),
        RetentionPolicy(keepLast: 10),
        RetentionPolicy(keepMonthly: 100),
    ])
    func gfsKeepsWhatAnIndependentComputationKeeps(policy: RetentionPolicy) throws {
        for zone in ["UTC", "America/New_York", "Asia/Kolkata"] {
            guard let tz = TimeZone(identifier: zone) else { Issue.record("no time zone \(zone)"); continue }
            let cal = Retention.localISOCalendar(timeZone: tz)
            let backups = history(seed: 7)
            let manifests = backups.map { manifest($0.id, $0.date, database: "shop") }
            let decisions = Retention.decide(manifests, policy: policy, calendar: cal)
            let kept = Set(decisions.filter(\.keep).map(\.id))
            #expect(kept == expectedKept(backups, policy, cal), "\(policy.summary) in \(zone)")
            #expect(decisions.count == 400)
            #expect(decisions.allSatisfy { $0.keep == !$0.reasons.isEmpty })
        }
    }

    @Test func groupsAreIndependent() {
        let t = Timestamps.parse("2026-11-21T02:00:00Z") ?? Date()
        let ms = [manifest("a1", t, database: "a"), manifest("a2", t.addingTimeInterval(60), database: "a"),
                  manifest("b1", t, database: "b")]
        let d = Retention.decide(ms, policy: RetentionPolicy(keepLast: 1))
        #expect(Set(d.filter(\.keep).map(\.id)) == ["a2", "b1"])
        #expect(d.first { $0.id == "a2" }?.reasons == ["last 1"])
    }

    @Test func localTimeDecidesTheDay() throws {
        // 03:30 UTC on the 21st is still the 20th in New York.
        let ny = Retention.localISOCalendar(timeZone: try #require(TimeZone(identifier: "America/New_York")))
        let a = try #require(Timestamps.parse("2026-11-21T03:30:00Z")), b = try #require(Timestamps.parse("2026-11-20T23:00:00Z"))
        let d = Retention.decide([manifest("late", a, database: "x"), manifest("early", b, database: "x")],
                                 policy: RetentionPolicy(keepDaily: 5), calendar: ny)
        #expect(Set(d.filter(\.keep).map(\.id)) == ["late"], "both are on the 20th in New York")
        let utc = Retention.localISOCalendar(timeZone: try #require(TimeZone(identifier: "UTC")))
        let d2 = Retention.decide([manifest("late", a, database: "x"), manifest("early", b, database: "x")],
                                  policy: RetentionPolicy(keepDaily: 5), calendar: utc)
        #expect(d2.allSatisfy { $0.keep })
    }
}

@Suite struct GarbageCollectionTests {
    @Test(arguments: StoreKind.allCases) func pruneAndGCReclaimSpaceAndKeepTheRest(store kind: StoreKind) throws {
        let dir = TestStore(kind)
        let repo = try makeRepository(dir)
        let shared = randomBytes(400_000, seed: 1)
        var kept = [(String, [UInt8])]()
        for night in 0..<10 {
            let data = shared + randomBytes(1_500_000, seed: 100 + UInt64(night))
            let t = (Timestamps.parse("2026-11-01T02:00:00Z") ?? Date()).addingTimeInterval(Double(night) * 86400)
            let m = try backup(repo, data, name: "shop", time: t)
            if night >= 8 { kept.append((m.id, data)) }
        }
        let before = try repo.listPacks().values.reduce(0, +)
        for d in Retention.decide(try repo.manifests(), policy: RetentionPolicy(keepLast: 2)) where !d.keep {
            try repo.deleteManifest(d.id)
        }
        let report = try GarbageCollector(repository: repo).run()
        let after = try repo.listPacks().values.reduce(0, +)
        #expect(Double(after) <= 0.6 * Double(before), "packs \(before) -> \(after) bytes")
        #expect(report.bytesReclaimed == before - after)
        #expect(report.packsDeleted + report.packsRepacked > 0)
        for (id, data) in kept { #expect(try restoreBytes(repo, id, dir: dir) == data) }
        #expect(try Verifier(repository: repo).verify(deep: true).ok)
        // A second gc finds nothing more to do.
        let again = try GarbageCollector(repository: repo).run()
        #expect(again.packsDeleted == 0 && again.packsRepacked == 0 && again.bytesReclaimed == 0)
        // Dedup still works after gc (index and filter are in step).
        #expect(try backup(repo, kept[1].1, name: "again").stats.newChunks == 0)
    }

    @Test(arguments: StoreKind.allCases) func repackingKeepsLiveChunksOfPartlyDeadPacks(store kind: StoreKind) throws {
        let dir = TestStore(kind)
        let repo = try makeRepository(dir, packSize: 1 << 20)
        let a = randomBytes(3 << 20, seed: 2)
        let first = try backup(repo, a, name: "a")
        let bData = Array(a[0..<1_200_000]) + randomBytes(500_000, seed: 3)
        let b = try backup(repo, bData, name: "b")
        try repo.deleteManifest(first.id)
        let dry = GarbageCollector(repository: repo)
        dry.dryRun = true
        let plan = try dry.run()
        #expect(plan.packsRepacked >= 1 && plan.packsDeleted >= 1, "\(plan)")
        let packsBefore = try repo.listPacks()
        #expect(plan.bytesReclaimed > 0)
        #expect(try repo.listPacks() == packsBefore, "a dry run changes nothing")
        let r = try GarbageCollector(repository: repo).run()
        #expect(r.packsRepacked == plan.packsRepacked && r.packsDeleted == plan.packsDeleted)
        #expect(r.packsWritten >= 1)
        #expect(try restoreBytes(repo, b.id, dir: dir) == bData)
        #expect(try Verifier(repository: repo).verify(deep: true).ok)
        // The index never points at a deleted pack.
        let present = try repo.listPacks()
        try repo.index().forEachChunk { _, loc in #expect(present[loc.pack] != nil) }
    }

    @Test(arguments: StoreKind.allCases) func repackingRegroupsPartlyDeadGroupsAndKeepsWholeOnes(store kind: StoreKind) throws {
        let dir = TestStore(kind)
        let repo = try makeRepository(dir, packSize: 1 << 20)
        // Compressible input: new chunks are stored in groups of ~1 MiB.
        let a = sqlLikeBytes(rows: 120_000, seed: 31)
        let first = try backup(repo, a, name: "a")
        var grouped = 0
        try repo.index().forEachChunk { _, loc in if loc.isGroupMember { grouped += 1 } }
        #expect(grouped > 0)
        // b shares a's first part, which ends inside a group.
        let bData = Array(a[0..<(a.count * 2 / 5)]) + sqlLikeBytes(rows: 20_000, seed: 32)
        let r = try collectAfterDeletingFirst(repo, first: first, keeping: bData) { try restoreBytes(repo, $0, dir: dir) }
        // Live members of partly dead groups were compressed together anew (or their
        // frame kept); whole groups stayed groups; the packs shrank by what gc said.
        var members = 0
        try repo.index().forEachChunk { _, loc in if loc.isGroupMember { members += 1 } }
        #expect(members > 0)
        let packBytes = try repo.listPacks().values.reduce(0, +)
        #expect(r.bytesReclaimed > 0 && r.bytesBefore - r.bytesReclaimed == packBytes)
        #expect(try backup(repo, bData, name: "again", checkDump: false).stats.newChunks == 0)
    }

    /// Issue 12, defect 3: repacking never grows the repository, whatever the
    /// threshold, and a dry run reports what the run then does, to the byte.
    @Test(arguments: [false, true])
    func repackingNeverGrowsTheRepositoryAndTheDryRunIsExact(encrypted: Bool) throws {
        let dir = TempDir()
        let key: [UInt8]? = encrypted ? Array("gc key".utf8) : nil
        let source = try Repository.initialize(at: dir.sub("source"), chunker: ChunkerParameters(average: 64 << 10),
                                               compressionLevel: 3, packSize: 1 << 20, encryptionKey: key)
        // Nights of lines drawn from a pool that a 1 MiB group sees repeated far more
        // than a 64 KiB chunk does, with a few scattered edits: most groups end partly
        // dead, and their live members compress worse one by one than together.
        var g = SeededGenerator(seed: 71)
        let pool = (0..<3000).map { _ in Array(randomBytes(45, seed: g.next()).map { UInt8(ascii: "a") + $0 % 26 }) + [10] }
        var night = [UInt8]()
        while night.count < 3_000_000 { night += pool[Int(g.next() % 3000)] }
        var kept = [(String, [UInt8])]()
        var doomed = [String]()
        for n in 0..<4 {
            for _ in 0..<3 { night[Int(g.next() % UInt64(night.count))] = UInt8(ascii: "#") }
            // Without deltas, which would keep the doomed nights' chunks alive as bases.
            let m = try backup(source, night, name: "db\(n % 2)", checkDump: false, deltas: false)
            if n % 2 == 0 { doomed.append(m.id) } else { kept.append((m.id, night)) }
        }
        for id in doomed { try source.deleteManifest(id) }
        for threshold in [0.1, 0.3, 0.5, 0.7, 0.9, 0.99] {
            let copy = dir.sub("copy-\(threshold)")
            try FileManager.default.copyItem(atPath: source.path, toPath: copy)
            let repo = try Repository(path: copy, key: key)
            let before = try repo.listPacks().values.reduce(0, +)
            let dry = GarbageCollector(repository: repo)
            dry.dryRun = true
            dry.repackThreshold = threshold
            let plan = try dry.run()
            let gc = GarbageCollector(repository: repo)
            gc.repackThreshold = threshold
            let r = try gc.run()
            let after = try repo.listPacks().values.reduce(0, +)
            #expect(r.bytesReclaimed >= 0 && after <= before, "threshold \(threshold): \(before) -> \(after)")
            #expect(before - after == r.bytesReclaimed, "threshold \(threshold)")
            #expect(plan.bytesReclaimed == r.bytesReclaimed && plan.packsWritten == r.packsWritten
                    && plan.packsRepacked == r.packsRepacked && plan.packsDeleted == r.packsDeleted
                    && plan.chunksRemoved == r.chunksRemoved, "threshold \(threshold): dry \(plan) run \(r)")
            for (id, data) in kept { #expect(try restoreBytes(repo, id, dir: dir) == data) }
            #expect(try Verifier(repository: repo).verify(deep: true).ok)
            if threshold == 0.99 { #expect(r.packsRepacked > 0) }
            // No empty fan-out folder stays behind (packs/xx/).
            for sub in try FileManager.default.contentsOfDirectory(atPath: copy + "/packs") {
                #expect(!(try FileManager.default.contentsOfDirectory(atPath: copy + "/packs/" + sub)).isEmpty, "packs/\(sub) is empty")
            }
        }
    }

    @Test(arguments: StoreKind.allCases) func gcKeepsTheIntactCopyOfADuplicatedChunk(store kind: StoreKind) throws {
        let dir = TestStore(kind)
        let repo = try makeRepository(dir)
        let data = randomBytes(10_000, seed: 31)  // one chunk
        let m = try backup(repo, data, name: "x")
        let index = try repo.index()
        let id = SHA256Hasher.hash(data)
        let first = try #require(try index.lookup(id))
        // A second copy in another pack, as a re-store after damage leaves it.
        let writer = try PackWriter(backend: repo.backend)
        _ = try data.withUnsafeBytes { try writer.add(id: id, rawLength: data.count, encoding: .raw, payload: $0) }
        let entries = try writer.finish()
        try index.insert(pack: writer.id, size: Int64(writer.size), entries: entries)
        // The first copy is damaged and the index has forgotten the chunk.
        try dir.flip(first.pack.key, at: payloadOffset(first) + 5)
        try index.dropChunks([id], inPack: writer.id)
        try index.dropChunks([id], inPack: first.pack)
        #expect(try index.lookup(id) == nil)
        let report = try GarbageCollector(repository: repo).run()
        #expect(report.packsDeleted == 1)
        #expect(try index.lookup(id)?.pack == writer.id, "the intact copy is the one kept")
        #expect(try restoreBytes(repo, m.id, dir: dir) == data)
        #expect(try Verifier(repository: repo).verify(deep: true).ok)
    }

    @Test(arguments: StoreKind.allCases) func gcRefusesWhenABackupIsUnreadable(store kind: StoreKind) throws {
        let dir = TestStore(kind)
        let repo = try makeRepository(dir)
        let m = try backup(repo, randomBytes(500_000, seed: 4), name: "x")
        let victim = try backup(repo, randomBytes(500_000, seed: 5), name: "y")
        try repo.backend.delete(try #require(m.chunkList).key)
        let packs = try repo.listPacks()
        #expect { try GarbageCollector(repository: repo).run() } throws: { e in
            (e as? DedupError)?.message.contains("gc stopped before deleting anything") == true
        }
        #expect(try repo.listPacks() == packs)
        #expect(try restoreBytes(repo, victim.id, dir: dir) == randomBytes(500_000, seed: 5))
    }

    @Test(arguments: StoreKind.allCases) func verifyNamesBackupsBrokenByAMissingChunk(store kind: StoreKind) throws {
        let dir = TestStore(kind)
        let repo = try makeRepository(dir)
        let good = try backup(repo, randomBytes(300_000, seed: 6), name: "good")
        // A manifest whose chunk list names a chunk that was never stored.
        let list = try ChunkListWriter(backend: repo.backend, key: Manifest.chunkListKey(for: "2026-01-01_000000_ghost"))
        let ghost = SHA256Hasher.hash([1, 2, 3, 4])
        try list.append(ghost, length: 4)
        let committed = try list.finish { _ in Manifest.chunkListKey(for: "2026-01-01_000000_ghost") }
        var m = good
        m.id = "2026-01-01_000000_ghost"
        m.size = 4
        m.chunkList = .init(key: committed.key, size: committed.size, sha256: committed.sha256, count: 1)
        try repo.backend.put(Manifest.key(for: m.id), try m.encoded(), ifAbsent: true)
        let report = try Verifier(repository: repo).verify(deep: false)
        #expect(report.damagedManifests == [m.id])
        #expect(report.problems.contains { $0.chunk == ghost.hex })
        let records = try repo.verificationRecords()
        #expect(records[m.id]?.ok == false && records[good.id]?.ok == true)
        let out = dir.sub("ghost.out")
        #expect(throws: DedupError.chunkMissing(chunk: ghost.hex, manifest: m.id)) {
            try Restorer(repository: repo).restore(m.id, to: .file(path: out, overwrite: false))
        }
        #expect(!FileIO.exists(out))
    }

    @Test(arguments: StoreKind.allCases) func backupWaitsForAnExclusiveLockOrFailsClearly(store kind: StoreKind) throws {
        let dir = TestStore(kind)
        let repo = try makeRepository(dir)
        let gcLock = try repo.lock(.exclusive, command: "gc")
        var options = BackupOptions(name: "waiting", source: "memory")
        options.lockWait = 0
        #expect { try BackupSession(repository: repo).run(source: BufferSource([1]), options: options) } throws: { e in
            (e as? DedupError)?.message.contains("is locked: exclusive lock by 'gc'") == true
        }
        // Released after a second: a backup willing to wait goes through.
        defer { gcLock.release() }
        let lockKey = gcLock.key
        nonisolated(unsafe) let backend = dir.backend
        let releaser = Thread { Thread.sleep(forTimeInterval: 1); try? backend.delete(lockKey) }
        releaser.start()
        options.lockWait = 20
        let started = Date()
        let other = try dir.reopen()
        let m = try BackupSession(repository: other).run(source: BufferSource([1, 2, 3]), options: options)
        #expect(Date().timeIntervalSince(started) >= 0.5)
        #expect(try restoreBytes(other, m.id, dir: dir) == [1, 2, 3])
    }
}
