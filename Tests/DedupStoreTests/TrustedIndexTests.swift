import Foundation
import Testing

@testable import DedupStore

/// The frequent commands trust a cache that listed every pack within the hour
/// (issue 14): they open it without a listing, and check each pack they use.
/// These are the caches that fell behind: another host's gc deleted or rewrote
/// packs, another host wrote packs, a pack was deleted or truncated by hand. Each
/// case must restore byte for byte and verify clean afterwards.
@Suite struct TrustedIndexTests {
    @Test func aWarmCacheListsNoPacksForBackupAndRestore() throws {
        let store = TestStore(.memory)
        let repo = try makeRepository(store)
        let first = try backup(repo, randomBytes(600_000, seed: 1), name: "first")
        let memory = try #require(store.backend as? MemoryBackend)
        let listed = memory.listings(under: "packs/")
        let next = try store.reopen()
        let data = randomBytes(600_000, seed: 2)
        let second = try backup(next, data, name: "second")
        #expect(try restoreBytes(try store.reopen(), second.id, dir: store) == data)
        #expect(try restoreBytes(try store.reopen(), first.id, dir: store) == randomBytes(600_000, seed: 1))
        #expect(memory.listings(under: "packs/") == listed, "a trusted cache lists no packs")
        // Maintenance lists: verify sees every pack.
        _ = try Verifier(repository: try store.reopen()).verify(deep: false)
        #expect(memory.listings(under: "packs/") > listed)
    }

    @Test(arguments: StoreKind.allCases) func aRestoreFindsTheChunksOfABackupAnotherHostMade(store kind: StoreKind) throws {
        let store = TestStore(kind)
        let here = try makeRepository(store)
        try backup(here, randomBytes(300_000, seed: 3), name: "here")
        let there = try store.reopen(cacheRoot: store.sub("other-host"))
        let data = randomBytes(600_000, seed: 4)
        let made = try backup(there, data, name: "there")
        // This host's cache listed before the other host's pack existed.
        let again = try store.reopen()
        #expect(try restoreBytes(again, made.id, dir: store) == data)
        #expect(again.notices.contains { $0.contains("missing from the index") })
    }

    @Test(arguments: StoreKind.allCases) func aBackupBehindAnotherHostsGCStoresWhatGCDeleted(store kind: StoreKind) throws {
        let store = TestStore(kind)
        let here = try makeRepository(store)
        let data = randomBytes(600_000, seed: 5)
        let old = try backup(here, data, name: "old")
        let kept = try backup(here, randomBytes(600_000, seed: 6), name: "kept")
        let there = try store.reopen(cacheRoot: store.sub("other-host"))
        try there.deleteManifest(old.id)
        let report = try GarbageCollector(repository: there).run()
        #expect(report.packsDeleted >= 1)
        // This host's cache still places `data` in the deleted pack: the hit is
        // checked, the packs listed again, and the chunks stored anew.
        let again = try store.reopen()
        let stored = try backup(again, data, name: "again")
        #expect(stored.stats.newChunks == stored.stats.chunks)
        #expect(again.notices.contains { $0.contains("is gone or changed size") })
        #expect(try restoreBytes(try store.reopen(), stored.id, dir: store) == data)
        #expect(try restoreBytes(try store.reopen(), kept.id, dir: store) == randomBytes(600_000, seed: 6))
        let verified = try Verifier(repository: try store.reopen()).verify(deep: true)
        #expect(verified.damagedManifests.isEmpty && verified.problems.isEmpty)
    }

    @Test(arguments: StoreKind.allCases) func chunksAnotherHostsGCMovedAreFoundWhereTheyWent(store kind: StoreKind) throws {
        let store = TestStore(kind)
        let here = try makeRepository(store)
        // One pack: a large part only `both` has, and a small part `small` shares.
        let dead = randomBytes(700_000, seed: 7), live = randomBytes(150_000, seed: 8)
        let both = try backup(here, dead + live, name: "both")
        let small = try backup(here, live, name: "small")
        #expect(small.stats.newChunks < small.stats.chunks, "small shares chunks with both")
        let there = try store.reopen(cacheRoot: store.sub("other-host"))
        try there.deleteManifest(both.id)
        let report = try GarbageCollector(repository: there).run()
        #expect(report.packsRepacked >= 1, "the shared pack is rewritten")
        // Restore through the stale cache: the pack is gone, the listing finds the
        // chunks in the pack gc wrote.
        let reader = try store.reopen()
        #expect(try restoreBytes(reader, small.id, dir: store) == live)
        #expect(reader.notices.contains { $0.contains("is gone or changed size") })
        // A backup of the moved data through another stale view deduplicates
        // against the new copies once the listing has found them.
        let writer = try store.reopen(cacheRoot: store.sub("third-host"))
        _ = try writer.listedIndex()
        let third = try backup(writer, live, name: "third")
        #expect(third.stats.newChunks == 0)
        let verified = try Verifier(repository: try store.reopen()).verify(deep: true)
        #expect(verified.damagedManifests.isEmpty && verified.problems.isEmpty)
    }

    @Test(arguments: StoreKind.allCases) func aPackDeletedByHandIsStoredAgainByTheNextBackup(store kind: StoreKind) throws {
        let store = TestStore(kind)
        let repo = try makeRepository(store)
        let data = randomBytes(600_000, seed: 9)
        let first = try backup(repo, data, name: "first")
        let pack = try #require(try repo.listPacks().keys.first)
        try store.backend.delete(pack.key)
        let next = try store.reopen()
        let second = try backup(next, data, name: "second")
        #expect(second.stats.newChunks == second.stats.chunks)
        #expect(next.notices.contains { $0.contains("is gone or changed size") })
        #expect(next.notices.contains { $0.contains("no longer exist") })
        // Content-addressed: the first backup is whole again too.
        #expect(try restoreBytes(try store.reopen(), first.id, dir: store) == data)
        #expect(try restoreBytes(try store.reopen(), second.id, dir: store) == data)
    }

    @Test(arguments: StoreKind.allCases) func thePackTotalsKeptInTheIndexEqualACount(store kind: StoreKind) throws {
        let store = TestStore(kind)
        let repo = try makeRepository(store)
        func check(_ r: Repository, _ what: String) throws {
            let packs = try r.index().indexedPacks()
            let totals = try r.index().packTotals()
            #expect(totals.packs == packs.count && totals.bytes == packs.values.reduce(0) { $0 + $1.size }, "\(what)")
        }
        let first = try backup(repo, randomBytes(700_000, seed: 11) + randomBytes(150_000, seed: 12), name: "first")
        try check(repo, "counted once")
        try backup(repo, randomBytes(150_000, seed: 12), name: "second")
        try backup(repo, randomBytes(400_000, seed: 13), name: "third")
        try check(repo, "kept by inserts")
        try repo.deleteManifest(first.id)
        _ = try GarbageCollector(repository: repo).run()
        try check(repo, "after gc's rewrite and deletes")
        let pack = try #require(try repo.listPacks().keys.first)
        try store.backend.delete(pack.key)
        let next = try store.reopen()
        _ = try next.listedIndex()
        try check(next, "after a pack was forgotten")
        _ = try next.rebuildIndex()
        try check(next, "after a rebuild")
    }

    @Test func aCacheListedLongerAgoThanTheIntervalListsAgain() throws {
        let store = TestStore(.memory)
        let repo = try makeRepository(store)
        try backup(repo, randomBytes(100_000, seed: 10))
        let memory = try #require(store.backend as? MemoryBackend)
        try repo.index().setLastFullSync(Date().addingTimeInterval(-Repository.fullSyncInterval - 60))
        let listed = memory.listings(under: "packs/")
        let next = try store.reopen()
        _ = try next.index()
        #expect(memory.listings(under: "packs/") == listed + 1)
        // ... and records it: the next open trusts the cache again.
        _ = try store.reopen().index()
        #expect(memory.listings(under: "packs/") == listed + 1)
    }
}
