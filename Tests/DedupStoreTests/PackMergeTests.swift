import Foundation
import Testing
@testable import DedupStore

/// gc merges small packs (one per `wal archive` segment, the last pack of each
/// backup) into packs of the pack size: exactly as the dry run says, without
/// growing the repository, in the order of the backups, crash-safe.
@Suite struct GarbageCollectionMergeTests {
    static let packSize = 1 << 20
    static let start = Timestamps.parse("2026-11-01T00:00:00Z") ?? Date()

    /// `count` backups a minute apart, each stored in a small pack of its own as
    /// `wal archive` stores a segment: random bytes, every third one SQL-like
    /// text (compressed in a group).
    func segments(_ repo: Repository, count: Int, from minute: Int = 0) throws -> [(id: String, data: [UInt8])] {
        try (0..<count).map { i in
            let n = UInt64(minute + i)
            let data = i % 3 == 2 ? sqlLikeBytes(rows: 300, seed: n) : randomBytes(20_000 + i * 37, seed: 1000 + n)
            let m = try backup(repo, data, name: "wal", time: Self.start.addingTimeInterval(Double(minute + i) * 60),
                               checkDump: false)
            return (m.id, data)
        }
    }

    /// Every chunk id the trailers of the packs list (a copy twice if stored twice).
    func storedChunks(_ repo: Repository) throws -> [ChunkID] {
        try repo.listPacks().keys.flatMap { pack in
            try PackReader(backend: repo.backend, id: pack, cipher: repo.cipher).entries().map(\.id)
        }.sorted()
    }

    /// Every chunk id the backups reference, once.
    func referencedChunks(_ repo: Repository) throws -> [ChunkID] {
        var ids = Set<ChunkID>()
        let walker = ReferenceWalker(repository: repo)
        try walker.forEachBackup(try repo.manifestIDs()) { _, loaded in
            try walker.forEachStream(of: try loaded.get()) { _, list in try list.forEach { id, _ in ids.insert(id) } }
        }
        return ids.sorted()
    }

    /// The chunks of a backup, in stream order, with their lengths.
    func chunks(_ repo: Repository, _ id: String) throws -> [(id: ChunkID, length: Int)] {
        var out = [(id: ChunkID, length: Int)]()
        try ChunkListReader(repository: repo, manifest: try repo.loadManifest(id)).forEach { out.append(($0, $1)) }
        return out
    }

    /// How many runs of neighbouring backups (in `ids` order) the packs of their
    /// first chunks make: the number of packs when each holds one run.
    func packRuns(_ repo: Repository, _ ids: [String]) throws -> Int {
        var runs = 0
        var last: PackID?
        for id in ids {
            let first = try #require(try chunks(repo, id).first)
            let pack = try #require(try repo.index().lookup(first.id)).pack
            if pack != last { runs += 1 }
            last = pack
        }
        return runs
    }

    func expectSameFigures(_ dry: GCReport, _ run: GCReport, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(
            dry.packsMerged == run.packsMerged && dry.packsRepacked == run.packsRepacked
                && dry.packsDeleted == run.packsDeleted && dry.packsWritten == run.packsWritten
                && dry.chunksRemoved == run.chunksRemoved && dry.bytesReclaimed == run.bytesReclaimed,
            "dry run \(dry), run \(run)", sourceLocation: sourceLocation)
    }

    func dryRun(_ repo: Repository) throws -> GCReport {
        let gc = GarbageCollector(repository: repo)
        gc.dryRun = true
        return try gc.run()
    }

    @Test(arguments: StoreKind.allCases, [false, true])
    func smallPacksAreMergedIntoPacksOfThePackSize(store kind: StoreKind, encrypted: Bool) throws {
        let store = TestStore(kind)
        let key: [UInt8]? = encrypted ? Array("merge key".utf8) : nil
        let repo = try makeRepository(store, packSize: Self.packSize, key: key)
        let backups = try segments(repo, count: 120)
        let before = try repo.listPacks()
        #expect(before.count == 120, "one pack a backup")

        let plan = try dryRun(repo)
        #expect(try repo.listPacks() == before, "a dry run changes nothing")
        let r = try GarbageCollector(repository: repo).run()
        expectSameFigures(plan, r)
        #expect(r.packsMerged == 120 && r.packsRepacked == 0 && r.packsDeleted == 0 && r.chunksRemoved == 0, "\(r)")

        let after = try repo.listPacks()
        let bytesBefore = before.values.reduce(0, +), bytesAfter = after.values.reduce(0, +)
        #expect(after.count == r.packsWritten && after.count >= 2)
        #expect(after.values.filter { $0 < Int64(Self.packSize) }.count <= 1, "only the last pack written is short")
        #expect(after.count <= 2 * Int(bytesAfter) / Self.packSize + 1)
        #expect(bytesAfter < bytesBefore && bytesBefore - bytesAfter == r.bytesReclaimed, "gc never grows the packs")
        #expect(try packRuns(repo, backups.map(\.id)) == after.count, "each pack holds neighbouring backups")

        // Another process's view: everything restores and verifies, nothing is stored twice.
        let reopened = try store.reopen(key: key)
        for b in backups { #expect(try restoreBytes(reopened, b.id, dir: store) == b.data) }
        #expect(try Verifier(repository: reopened).verify(deep: true).ok)
        #expect(try storedChunks(reopened) == referencedChunks(reopened))
        #expect(store.noUnfinishedWrites)

        let again = try GarbageCollector(repository: reopened).run()
        #expect(again.packsMerged == 0 && again.packsWritten == 0 && again.bytesReclaimed == 0, "\(again)")
        #expect(try backup(reopened, backups[7].data, name: "again", checkDump: false).stats.newChunks == 0)
    }

    /// A small pack with dead chunks: merged without them when most of it is live,
    /// repacked (as any pack) when most of it is dead, in random and grouped data.
    @Test(arguments: StoreKind.allCases)
    func partlyDeadSmallPacksLoseTheirDeadChunks(store kind: StoreKind) throws {
        let store = TestStore(kind)
        let repo = try makeRepository(store, packSize: Self.packSize)
        func at(_ minute: Int) -> Date { Self.start.addingTimeInterval(Double(minute) * 60) }
        // Each pair: the first backup is deleted, the second keeps a share of it.
        let mostlyLive = randomBytes(300_000, seed: 5), mostlyDead = randomBytes(300_000, seed: 6)
        let grouped = sqlLikeBytes(rows: 4000, seed: 7)
        var doomed = [String](), kept = [(id: String, data: [UInt8])]()
        for (n, (data, share)) in [(mostlyLive, 0.7), (mostlyDead, 0.15), (grouped, 0.6)].enumerated() {
            doomed.append(try backup(repo, data, name: "first", time: at(2 * n), checkDump: false).id)
            let keep = Array(data[0..<Int(Double(data.count) * share)]) + randomBytes(5000, seed: 50 + UInt64(n))
            kept.append((try backup(repo, keep, name: "second", time: at(2 * n + 1), checkDump: false).id, keep))
        }
        kept += try segments(repo, count: 20, from: 10)
        let mostlyLiveLast = try #require(try chunks(repo, doomed[0]).last)
        let mostlyLivePack = try #require(try repo.index().lookup(mostlyLiveLast.id)).pack
        for id in doomed { try repo.deleteManifest(id) }
        #expect(try repo.listPacks().count == 26)

        let plan = try dryRun(repo)
        let r = try GarbageCollector(repository: repo).run()
        expectSameFigures(plan, r)
        #expect(r.packsRepacked == 1, "the mostly dead pack: \(r)")
        #expect(r.packsMerged == 25 && r.packsDeleted == 0 && r.chunksRemoved > 0, "\(r)")
        #expect(try repo.listPacks()[mostlyLivePack] == nil)
        #expect(try storedChunks(repo) == referencedChunks(repo), "no dead chunk was copied")
        for b in kept { #expect(try restoreBytes(repo, b.id, dir: store) == b.data) }
        #expect(try Verifier(repository: repo).verify(deep: true).ok)
        let again = try GarbageCollector(repository: repo).run()
        #expect(again.packsMerged == 0 && again.packsRepacked == 0 && again.bytesReclaimed == 0, "\(again)")
    }

    /// One small pack and nothing else to rewrite: copying it would only make the
    /// same pack again, so it stays, unless its dead chunks are worth a rewrite.
    @Test(arguments: [0.7, 0.2])
    func aLoneSmallPackStaysUnlessMostOfItIsDead(liveShare: Double) throws {
        let store = TestStore(.memory)
        let repo = try makeRepository(store, packSize: Self.packSize)
        let data = randomBytes(300_000, seed: 9)
        let first = try backup(repo, data, name: "first", checkDump: false)
        // The second backup ends on a cut of the first: it stores nothing new.
        var prefix = 0
        for c in try chunks(repo, first.id) {
            guard Double(prefix + c.length) <= liveShare * Double(data.count) else { break }
            prefix += c.length
        }
        let second = try backup(repo, Array(data[0..<prefix]), name: "second", checkDump: false)
        #expect(second.stats.newChunks == 0)
        try repo.deleteManifest(first.id)
        let r = try GarbageCollector(repository: repo).run()
        if liveShare > 0.5 {
            #expect(r.packsMerged == 0 && r.packsRepacked == 0 && r.bytesReclaimed == 0, "\(r)")
        } else {
            #expect(r.packsRepacked == 1 && r.packsMerged == 0 && r.packsWritten == 1 && r.bytesReclaimed > 0, "\(r)")
            #expect(try storedChunks(repo) == referencedChunks(repo))
        }
        #expect(try restoreBytes(repo, second.id, dir: store) == Array(data[0..<prefix]))
        // A second small pack makes a pair to merge.
        let third = try segments(repo, count: 1, from: 60)
        let merged = try GarbageCollector(repository: repo).run()
        let packs = try repo.listPacks().count
        #expect(merged.packsMerged == 2 && merged.packsWritten == 1 && packs == 1, "\(merged)")
        #expect(try restoreBytes(repo, third[0].id, dir: store) == third[0].data)
        #expect(try restoreBytes(repo, second.id, dir: store) == Array(data[0..<prefix]))
    }

    /// A crash at the commit of the first, second or third merged pack, each old
    /// pack deleted as soon as it may be (so the packs merged before the crash are
    /// gone): every backup still restores, and the next gc finishes the merge.
    @Test(arguments: StoreKind.allCases, [1, 2, 3])
    func aCrashWhileMergingLosesNothingAndTheNextGCFinishes(store kind: StoreKind, commit: Int) throws {
        let store = TestStore(kind)
        let repo = try makeRepository(store, packSize: Self.packSize)
        let backups = try segments(repo, count: 150)
        let faulty = FaultyBackend(store.backend, faults: [.crash(prefix: "packs/", number: commit)])
        let crashing = GarbageCollector(repository: try Repository(backend: faulty))
        crashing.forgetBatch = 1
        #expect(throws: DedupError.self) { _ = try crashing.run() }
        #expect(faulty.hasCrashed)
        #expect(try store.reopen().listPacks().count < 150 || commit == 1, "merged packs went before the crash")
        let next = try store.reopen()
        for b in backups { #expect(try restoreBytes(next, b.id, dir: store) == b.data) }

        let r = try GarbageCollector(repository: next).run()
        #expect(r.packsMerged > 0 && r.missingChunks == 0, "\(r)")
        let after = try next.listPacks()
        #expect(after.values.filter { $0 < Int64(Self.packSize) }.count <= 1, "\(after.values.sorted())")
        for b in backups { #expect(try restoreBytes(next, b.id, dir: store) == b.data) }
        #expect(try Verifier(repository: next).verify(deep: true).ok)
        #expect(try storedChunks(next) == referencedChunks(next))
        let again = try GarbageCollector(repository: next).run()
        #expect(again.packsMerged == 0 && again.packsDeleted == 0 && again.bytesReclaimed == 0, "\(again)")
        #expect(store.noUnfinishedWrites)
    }

    /// More dead chunks than one index transaction removes (512): every entry of
    /// every deleted pack leaves the index all the same, and the rest merges.
    @Test func manyDeadChunksLeaveTheIndexInSeveralTransactions() throws {
        let store = TestStore(.memory)
        let repo = try makeRepository(store, packSize: Self.packSize)
        let doomed = try backup(repo, randomBytes(12 << 20, seed: 77), name: "big", checkDump: false)
        let kept = try segments(repo, count: 3, from: 100)
        let doomedChunks = try chunks(repo, doomed.id).count
        #expect(doomedChunks > 512)
        try repo.deleteManifest(doomed.id)
        let r = try GarbageCollector(repository: repo).run()
        #expect(r.chunksRemoved == doomedChunks && r.packsMerged == 3, "\(r)")
        #expect(try repo.index().chunkCount() == referencedChunks(repo).count)
        #expect(try storedChunks(repo) == referencedChunks(repo))
        for b in kept { #expect(try restoreBytes(repo, b.id, dir: store) == b.data) }
    }

    /// A small pack holding the only, damaged, copy of a chunk (as verify recorded
    /// it) and one whose trailer is gone are kept as they are; the rest merge.
    @Test(arguments: StoreKind.allCases)
    func damagedAndUnreadableSmallPacksAreKeptAndTheRestMerged(store kind: StoreKind) throws {
        let store = TestStore(kind)
        let repo = try makeRepository(store, packSize: Self.packSize)
        let backups = try segments(repo, count: 30)
        func firstChunk(_ b: Int) throws -> ChunkLocation {
            let first = try #require(try chunks(repo, backups[b].id).first)
            return try #require(try repo.index().lookup(first.id))
        }
        let damaged = try firstChunk(3), cut = try firstChunk(9).pack
        try store.flip(damaged.pack.key, at: payloadOffset(damaged) + 3)
        try store.truncate(cut.key, to: try #require(try repo.backend.size(cut.key)) - 10)
        #expect(try !Verifier(repository: store.reopen()).verify(deep: true).ok)

        let repo2 = try store.reopen()
        let plan = try dryRun(repo2)
        let r = try GarbageCollector(repository: repo2).run()
        expectSameFigures(plan, r)
        #expect(r.damagedPacksKept == 1 && r.packsUnreadable.count == 1 && r.packsMerged == 28, "\(r)")
        let after = try repo2.listPacks()
        #expect(after[damaged.pack] != nil && after[cut] != nil)
        for (i, b) in backups.enumerated() where i != 3 && i != 9 {
            #expect(try restoreBytes(repo2, b.id, dir: store) == b.data)
        }
        #expect(throws: DedupError.self) { try restoreBytes(repo2, backups[3].id, dir: store) }
        let again = try GarbageCollector(repository: repo2).run()
        #expect(again.packsMerged == 0 && again.bytesReclaimed == 0 && again.damagedPacksKept == 1, "\(again)")
    }
}
