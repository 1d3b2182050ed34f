import Foundation
import Testing
@testable import DedupStore

/// gc runs beside backups: it holds the maintenance lock, takes the exclusive one
/// only for the steps that delete, and keeps what a backup committed meanwhile
/// uses, although its mark found it dead.
@Suite struct GCBesideBackupsTests {
    /// A gc as the CLI runs it: under the maintenance lock, with exclusive steps.
    func besideBackups(_ repo: Repository, _ hold: RepositoryLock) -> GarbageCollector {
        let gc = GarbageCollector(repository: repo)
        gc.takeExclusive = { try repo.lock(.exclusive, command: "gc step", wait: 5, alongside: hold) }
        return gc
    }

    /// (The backup beside gc uses a cache of its own: two handles on one LMDB file
    /// in one process break LMDB's reader table. The CLI tests run both on one
    /// cache, in two processes.)
    /// When the late backup commits: after the mark (the pass before the first
    /// step marks it), or just before a step takes the lock (the step marks it).
    enum Moment: String, CaseIterable, Sendable { case afterMark, beforeLock }

    @Test(arguments: StoreKind.allCases, Moment.allCases)
    func aBackupCommittedDuringGCKeepsTheDeadChunksItUses(store kind: StoreKind, moment: Moment) throws {
        let store = TestStore(kind)
        let repo = try makeRepository(store)
        let head = randomBytes(150_000, seed: 1), tail = randomBytes(600_000, seed: 2)
        let x = try backup(repo, head + tail, name: "x")  // one large pack, mostly dead once x goes
        let y = try backup(repo, head + randomBytes(100_000, seed: 3), name: "y")  // keeps the head live
        let dead = randomBytes(200_000, seed: 4)
        let d = try backup(repo, dead, name: "d")  // a small pack, wholly dead once d goes
        try repo.deleteManifests([x.id, d.id])

        let hold = try repo.lock(.maintenance, command: "gc")
        defer { hold.release() }
        let gc = besideBackups(repo, hold)
        // Committed after the mark: its chunks of x's tail and of d were marked dead.
        let late = tail + dead + randomBytes(50_000, seed: 5)
        var lateID = ""
        let commitLate = {
            guard lateID.isEmpty else { return }
            let other = try store.reopen(cacheRoot: store.sub("other-host"))
            lateID = try backup(other, late, name: "late").id
        }
        switch moment {
        case .afterMark: gc.afterMark = commitLate
        case .beforeLock: gc.beforeExclusiveStep = commitLate
        }
        let r = try gc.run()
        #expect(r.packsKeptForNewBackups == 2, "x's pack (planned for a rewrite) and d's (for deletion): \(r)")
        #expect(r.exclusiveSteps >= 2, "\(r)")
        #expect(r.orphanChunkListsRemoved == 0, "the late backup's chunk list is not an orphan: \(r)")

        let reopened = try store.reopen(cacheRoot: store.sub("fresh"))
        #expect(try restoreBytes(reopened, lateID, dir: store) == late)
        #expect(try restoreBytes(reopened, y.id, dir: store) == head + randomBytes(100_000, seed: 3))
        #expect(try Verifier(repository: reopened).verify(deep: true).ok)
        #expect(store.noUnfinishedWrites)
        #expect(try RepositoryLock.list(store.backend).map(\.info.kind) == [.maintenance], "only gc's own lock")

        // The next gc sees the late backup from the start: nothing of it goes.
        hold.release()
        let again = try GarbageCollector(repository: reopened).run()
        #expect(again.packsKeptForNewBackups == 0)
        #expect(try restoreBytes(try store.reopen(cacheRoot: store.sub("fresh2")), lateID, dir: store) == late)
    }

    @Test func aPackWrittenDuringGCIsNotGCs() throws {
        let store = TestStore(.local)
        let repo = try makeRepository(store)
        let gone = try backup(repo, randomBytes(200_000, seed: 7), name: "gone")
        try repo.deleteManifests([gone.id])
        let hold = try repo.lock(.maintenance, command: "gc")
        defer { hold.release() }
        let gc = besideBackups(repo, hold)
        let fresh = randomBytes(300_000, seed: 8)
        var freshID = ""
        gc.afterMark = { freshID = try backup(try store.reopen(cacheRoot: store.sub("other")), fresh, name: "fresh").id }
        let r = try gc.run()
        #expect(r.packsDeleted == 1 && r.packsBefore == 1, "only the pack listed before the mark: \(r)")
        #expect(try restoreBytes(try store.reopen(cacheRoot: store.sub("fresh")), freshID, dir: store) == fresh)
    }

    /// Missing is what the index, listed at gc's start, places in no pack.
    @Test(arguments: StoreKind.allCases)
    func chunksInNoPackAreCountedMissing(store kind: StoreKind) throws {
        let store = TestStore(kind)
        let repo = try makeRepository(store)
        let lost = try backup(repo, randomBytes(100_000, seed: 9), name: "lost")
        try backup(repo, randomBytes(600_000, seed: 10), name: "kept")
        var chunks = Set<ChunkID>()
        try ChunkListReader(repository: repo, manifest: lost).forEach { id, _ in chunks.insert(id) }
        let first = try #require(chunks.first)
        let pack = try #require(try repo.index().lookup(first)).pack
        try store.backend.delete(pack.key)
        let r = try GarbageCollector(repository: try store.reopen(cacheRoot: store.sub("other"))).run()
        #expect(r.missingChunks == chunks.count, "\(r)")
        let again = try GarbageCollector(repository: try store.reopen(cacheRoot: store.sub("other"))).run()
        #expect(again.missingChunks == chunks.count && again.packsDeleted == 0, "\(again)")
    }

    @Test func lockKinds() throws {
        let store = TestStore(.memory)
        let repo = try makeRepository(store)
        let gc = try repo.lock(.maintenance, command: "gc")
        // Backups go on beside gc; another gc, prune or delete does not.
        let backupLock = try repo.lock(.shared, command: "backup")
        #expect(throws: DedupError.self) { try repo.lock(.maintenance, command: "another gc") }
        #expect(throws: DedupError.self) { try repo.lock(.exclusive, command: "prune") }
        // gc's own step waits for the backup, and then shuts backups out.
        #expect(throws: DedupError.self) { try repo.lock(.exclusive, command: "step", alongside: gc) }
        backupLock.release()
        let step = try repo.lock(.exclusive, command: "step", alongside: gc)
        #expect(throws: DedupError.self) { try repo.lock(.shared, command: "backup") }
        step.release()
        gc.release()
        // What an older dbbackup sees: a lock of a kind it does not know is unreadable,
        // which counts as exclusive.
        struct OldInfo: Codable { enum Kind: String, Codable { case shared, exclusive }; var kind: Kind }
        let held = try repo.lock(.maintenance, command: "gc")
        let bytes = try #require(try store.backend.get(held.key))
        #expect((try? JSONDecoder().decode(OldInfo.self, from: Data(bytes))) == nil)
    }
}
