import Foundation
import Testing
@testable import DedupStore

/// Storage that fails, lies or dies, through `FaultyBackend` around an in-memory
/// repository: every committed backup still restores byte for byte, and what a
/// failure leaves behind heals with the next backup or gc.
@Suite struct FaultInjectionTests {
    /// A repository in memory with one committed backup, and its data.
    func seeded() throws -> (MemoryBackend, Manifest, [UInt8]) {
        let inner = MemoryBackend(name: "faults-" + UUID().uuidString)
        let repo = try Repository.initialize(on: inner, chunker: testChunker, packSize: 1 << 20)
        let data = randomBytes(600_000, seed: 2) + sqlLikeBytes(rows: 20_000, seed: 1)
        return (inner, try backup(repo, data, name: "base"), data)
    }

    /// The next process: the repository opened afresh on the inner backend.
    func expectIntact(_ inner: MemoryBackend, _ m: Manifest, _ data: [UInt8]) throws {
        let repo = try Repository(backend: inner)
        #expect(try restoreBytes(repo, m.id, dir: TempDir()) == data)
    }

    /// The pack, the chunk list (the backup's first object under manifests/) and
    /// the manifest (its second).
    @Test(arguments: [("packs/", 1), ("manifests/", 1), ("manifests/", 2)])
    func aCrashAtACommitLeavesEveryCommittedBackupAndTheRetryWorks(prefix: String, number: Int) throws {
        let (inner, base, data) = try seeded()
        let faulty = FaultyBackend(inner, faults: [.crash(prefix: prefix, number: number)])
        let next = randomBytes(900_000, seed: 3)
        #expect(throws: DedupError.self) { try backup(Repository(backend: faulty), next, name: "next") }
        #expect(faulty.hasCrashed)
        #expect(try Repository(backend: inner).manifestIDs() == [base.id])
        try expectIntact(inner, base, data)
        let retried = try backup(Repository(backend: inner), next, name: "next")
        #expect(try restoreBytes(Repository(backend: inner), retried.id, dir: TempDir()) == next)
        #expect(try Verifier(repository: Repository(backend: inner)).verify(deep: true).ok)
        _ = try GarbageCollector(repository: Repository(backend: inner)).run()
        #expect(inner.unfinishedWrites == 0)
    }

    /// The same at each commit of a backup whose chunks are deltas against the
    /// last one's: the night before restores, and so does the retried night.
    @Test(arguments: [("packs/", 1), ("manifests/", 1), ("manifests/", 2)])
    func aCrashWhileStoringDeltasLeavesEveryCommittedBackup(prefix: String, number: Int) throws {
        // The local cache (series heads, resemblance) in the tests' folder, as a TempDir would set it.
        _ = testCacheRoot
        let inner = MemoryBackend(name: "faults-" + UUID().uuidString)
        let repo = try Repository.initialize(on: inner, chunker: testChunker, packSize: 1 << 20)
        let nights = scatteredNights(2)
        let first = try backup(repo, nights[0], name: "shop", checkDump: false)
        let faulty = FaultyBackend(inner, faults: [.crash(prefix: prefix, number: number)])
        #expect(throws: DedupError.self) { try backup(Repository(backend: faulty), nights[1], name: "shop", checkDump: false) }
        #expect(faulty.hasCrashed)
        #expect(try Repository(backend: inner).manifestIDs() == [first.id])
        try expectIntact(inner, first, nights[0])
        let retried = try backup(Repository(backend: inner), nights[1], name: "shop", checkDump: false)
        // Stored as deltas by the retry, or already by the attempt whose packs committed.
        let chains = try deltaChains(Repository(backend: inner)).count
        #expect(chains > retried.stats.chunks / 2, "\(retried.stats), \(chains) deltas")
        #expect(try restoreBytes(Repository(backend: inner), retried.id, dir: TempDir()) == nights[1])
        _ = try GarbageCollector(repository: Repository(backend: inner)).run()
        #expect(try Verifier(repository: Repository(backend: inner)).verify(deep: true).ok)
        try expectIntact(inner, first, nights[0])
        try expectIntact(inner, retried, nights[1])
    }

    @Test func aFullDiskCommitsNothingAndSaysSo() throws {
        let (inner, base, data) = try seeded()
        let faulty = FaultyBackend(inner, faults: [.failWrites(afterBytes: 300_000, failure: .noSpace)])
        #expect { try backup(Repository(backend: faulty), randomBytes(3 << 20, seed: 4), name: "big") } throws: { e in
            (e as? DedupError)?.isNoSpace == true
        }
        #expect(try Repository(backend: inner).manifestIDs() == [base.id])
        #expect(inner.unfinishedWrites == 0, "every writer was aborted")
        try expectIntact(inner, base, data)
    }

    @Test func aCommitThatFailsCommitsNothing() throws {
        let (inner, base, data) = try seeded()
        let faulty = FaultyBackend(inner, faults: [.failCommit(prefix: "packs/", number: 1, failure: .transient)])
        #expect(throws: DedupError.self) { try backup(Repository(backend: faulty), randomBytes(500_000, seed: 5), name: "x") }
        #expect(try Repository(backend: inner).manifestIDs() == [base.id])
        #expect(inner.unfinishedWrites == 0)
        try expectIntact(inner, base, data)
    }

    /// Storage that loses or cuts a pack while saying it stored it: the backup
    /// looks committed, verify names it, and the next backup of the data heals it.
    @Test(arguments: [FaultyBackend.Fault.drop(prefix: "packs/", number: 1),
                      FaultyBackend.Fault.truncate(prefix: "packs/", number: 1, keep: 100_000)])
    func aPackLostByTheStorageIsFoundByVerifyAndHealedByTheNextBackup(fault: FaultyBackend.Fault) throws {
        let (inner, base, data) = try seeded()
        let lost = randomBytes(700_000, seed: 6)
        let m = try backup(Repository(backend: FaultyBackend(inner, faults: [fault])), lost, name: "lost")
        let repo = try Repository(backend: inner)
        let report = try Verifier(repository: repo).verify(deep: false)
        #expect(report.damagedManifests == [m.id], "\(report.problems)")
        #expect(throws: DedupError.self) { try restoreBytes(repo, m.id, dir: TempDir()) }
        let again = try backup(repo, lost, name: "again")
        #expect(again.stats.newChunks == again.stats.chunks)
        #expect(try restoreBytes(repo, m.id, dir: TempDir()) == lost)
        try expectIntact(inner, base, data)
    }

    @Test func aCrashWhileGCRepacksLosesNothingAndTheNextGCFinishes() throws {
        let inner = MemoryBackend(name: "gc-" + UUID().uuidString)
        let repo = try Repository.initialize(on: inner, chunker: testChunker, packSize: 1 << 20)
        let a = randomBytes(3 << 20, seed: 7)
        let first = try backup(repo, a, name: "a")
        let kept = Array(a[0..<1_300_000]) + randomBytes(400_000, seed: 8)
        let b = try backup(repo, kept, name: "b")
        try repo.deleteManifest(first.id)
        let faulty = FaultyBackend(inner, faults: [.crash(prefix: "packs/", number: 1)])
        #expect(throws: DedupError.self) { _ = try GarbageCollector(repository: Repository(backend: faulty)).run() }
        #expect(faulty.hasCrashed)
        #expect(try restoreBytes(Repository(backend: inner), b.id, dir: TempDir()) == kept)
        let r = try GarbageCollector(repository: Repository(backend: inner)).run()
        #expect(r.packsRepacked + r.packsDeleted > 0)
        #expect(try restoreBytes(Repository(backend: inner), b.id, dir: TempDir()) == kept)
        #expect(try Verifier(repository: Repository(backend: inner)).verify(deep: true).ok)
    }

    @Test func slowCommitsStillCommit() throws {
        let (inner, _, _) = try seeded()
        let faulty = FaultyBackend(inner, faults: [.delayCommits(prefix: "manifests/", seconds: 0.2)])
        let started = Date()
        let m = try backup(Repository(backend: faulty), [1, 2, 3], name: "slow")
        #expect(Date().timeIntervalSince(started) >= 0.4, "chunk list and manifest both waited")
        #expect(try restoreBytes(Repository(backend: inner), m.id, dir: TempDir()) == [1, 2, 3])
    }
}
