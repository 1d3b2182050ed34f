import Catalog
import DedupStore
import Foundation
import Testing

/// The catalog catches up from the change notes (issue 14): commits, deletes and
/// verifications by other writers, without listing `manifests/`; notes whose
/// change is still under way, or was abandoned by a crash; a catalog too old for
/// the notes syncs in full.
@Suite struct IncrementalSyncTests {
    final class Fixture {
        let folder = NSTemporaryDirectory() + "dbbackup-catalog-test-" + UUID().uuidString
        let memory = MemoryBackend(name: "catalog-test-" + UUID().uuidString)
        let repo: Repository

        init() throws {
            repo = try Repository.initialize(
                on: memory, chunker: ChunkerParameters(average: 16 * 1024), cacheRoot: folder + "/cache")
        }

        deinit { try? FileManager.default.removeItem(atPath: folder) }

        /// The same repository as another host sees it (its own cache and catalog).
        func otherHost() throws -> Repository {
            try Repository(backend: memory, cacheRoot: folder + "/other-cache")
        }

        func catalog(_ repo: Repository? = nil) throws -> BackupCatalog {
            try BackupCatalog(repository: repo ?? self.repo, synchronize: false)
        }

        @discardableResult
        func backup(_ repo: Repository, name: String, seed: UInt8) throws -> Manifest {
            var options = BackupOptions(name: name, source: "memory")
            options.database = name
            options.lockWait = 0
            var bytes = [UInt8](repeating: seed, count: 50_000)
            for i in stride(from: 0, to: bytes.count, by: 7) { bytes[i] = UInt8(truncatingIfNeeded: i &* Int(seed)) }
            return try BackupSession(repository: repo).run(source: BufferSource(bytes), options: options)
        }
    }

    @Test func otherWritersCommitsDeletesAndVerificationsArriveWithoutAListing() throws {
        let f = try Fixture()
        let kept = try f.backup(f.repo, name: "kept", seed: 1)
        let doomed = try f.backup(f.repo, name: "doomed", seed: 2)
        let catalog = try f.catalog()
        #expect(try catalog.synchronize().full, "a catalog that never synced lists everything")
        #expect(try catalog.backups().map(\.id) == [kept.id, doomed.id].sorted())

        // Another host commits, deletes and verifies.
        let other = try f.otherHost()
        let added = try f.backup(other, name: "added", seed: 3)
        try other.deleteManifest(doomed.id)
        _ = try Verifier(repository: other).verify(manifestIDs: [kept.id], deep: false)

        let listed = f.memory.listings(under: "manifests/") + f.memory.listings(under: "verified/")
        let report = try catalog.synchronize()
        #expect(!report.full)
        #expect(report.added == 1 && report.removed == 1 && report.verificationsUpdated == 1, "\(report)")
        #expect(f.memory.listings(under: "manifests/") + f.memory.listings(under: "verified/") == listed)
        let rows = try catalog.backups()
        #expect(Set(rows.map(\.id)) == [kept.id, added.id])
        #expect(rows.first { $0.id == kept.id }?.verifiedOK == true)
        // The same as a full sync of a new catalog.
        let fresh = try f.catalog(try Repository(backend: f.memory, cacheRoot: f.folder + "/third-cache"))
        #expect(try fresh.synchronize().full)
        #expect(try fresh.backups() == rows)
        // Nothing new: nothing read again.
        #expect(try catalog.synchronize() == BackupCatalog.SyncReport())
    }

    @Test func aCommitUnderWayIsPickedUpWhenItLandsAndAnAbandonedDeleteKeepsTheBackup() throws {
        let f = try Fixture()
        let catalog = try f.catalog()
        try catalog.synchronize()
        // A commit under way: its note is written, its manifest not yet.
        let slow = try f.backup(try f.otherHost(), name: "slow", seed: 4)
        let key = Manifest.key(for: slow.id)
        let bytes = try #require(try f.memory.get(key))
        try f.memory.delete(key)
        #expect(try catalog.synchronize().added == 0)
        try f.memory.put(key, bytes, ifAbsent: true)
        #expect(try catalog.synchronize().added == 1, "the note is looked at again until its manifest lands")
        #expect(try catalog.backups().map(\.id) == [slow.id])

        // A delete that died after its note: the backup is still there and stays,
        // also once the note has settled.
        try f.repo.noteChange(.delete, ids: [slow.id])
        #expect(try catalog.synchronize().removed == 0)
        let later = Date().addingTimeInterval(ChangeNote.settleTime + 60)
        #expect(try catalog.synchronize(now: later).removed == 0)
        #expect(try catalog.backups().map(\.id) == [slow.id])
        // A commit that died after its note: nothing to add, ever.
        try f.repo.noteChange(.commit, ids: ["2026-11-01_020000_never"])
        #expect(try catalog.synchronize(now: later.addingTimeInterval(1)).added == 0)
        #expect(try catalog.backups().map(\.id) == [slow.id])
    }

    @Test func aVerifyNoteForEveryBackupTakesInEveryRecord() throws {
        let f = try Fixture()
        let one = try f.backup(f.repo, name: "one", seed: 7)
        let two = try f.backup(f.repo, name: "two", seed: 8)
        let catalog = try f.catalog()
        try catalog.synchronize()
        _ = try Verifier(repository: try f.otherHost()).verify(deep: false)
        // As a verify of more than a thousand backups notes it: one note for all.
        try f.repo.pruneChanges(before: .distantFuture)
        try f.repo.noteChange(.verify, ids: [ChangeNote.everyBackup])
        let report = try catalog.synchronize()
        #expect(!report.full && report.verificationsUpdated == 2, "\(report)")
        #expect(try catalog.backups().allSatisfy { $0.verifiedOK == true } && [one, two].count == 2)
    }

    @Test func aCatalogOlderThanTheNotesSyncsInFull() throws {
        let f = try Fixture()
        try f.backup(f.repo, name: "one", seed: 5)
        let catalog = try f.catalog()
        try catalog.synchronize(now: Date().addingTimeInterval(-ChangeNote.retention))
        let report = try catalog.synchronize()
        #expect(report.full && report.added == 0)
        #expect(try catalog.backups().count == 1)
    }

    @Test func notesAreListedOnlyForTheHoursSinceTheLastSync() throws {
        let f = try Fixture()
        // A week of old notes (as a busy archive leaves them), then a sync.
        let start = Date().addingTimeInterval(-6 * 86400)
        for hour in 0..<(6 * 24) {
            try f.repo.noteChange(.commit, ids: ["gone-\(hour)"], at: start.addingTimeInterval(Double(hour) * 3600))
        }
        let catalog = try f.catalog()
        try catalog.synchronize(full: true)
        let before = f.memory.listings(under: "changes/")
        try f.backup(f.repo, name: "new", seed: 6)
        #expect(try catalog.synchronize().added == 1)
        let listed = f.memory.listings(under: "changes/") - before
        #expect(listed <= 4, "the hours since the last sync (less the settle time), not the week: \(listed)")
        // gc keeps a week of notes.
        let removed = try f.repo.pruneChanges(before: Date().addingTimeInterval(-3 * 86400))
        #expect(removed == 3 * 24 + 1 || removed == 3 * 24, "\(removed)")
    }

    @Test func noteKeysCarryTheirTime() {
        let date = Date(timeIntervalSince1970: 1_796_090_400.123)  // 2026-12-01T02:00:00.123Z
        #expect(ChangeNote.time(ofKey: "changes/2026120102/20261201T020000123Z-ab-1-cd.json")?.timeIntervalSince1970
                == date.timeIntervalSince1970.rounded(.down) + 0.123)
        #expect(ChangeNote.time(ofKey: "changes/2026120102/garbage.json") == nil)
        #expect(ChangeNote.time(ofKey: "manifests/x.json") == nil)
    }
}
