import DedupStore
import Foundation
import Testing

/// A repository whose backups share packs, so that deleting some leaves packs
/// partly dead (gc repacks them) and others wholly dead (gc deletes them).
struct SharedPacksFixture {
    let dir: String
    let cli: CLI
    let a: [UInt8], b: [UInt8], c: [UInt8]
    var ids: [String: String] = [:]

    init() throws {
        dir = tempDir()
        cli = CLI(repo: dir + "/repo")
        _ = try CLI.run(["dedup", "init", "--dedup-dir", dir + "/repo", "--chunk-size", "64KiB", "--pack-size", "1MiB"])
        a = pseudoRandom(3_000_000, seed: 21)
        // 300 kB from each MB of a: every pack of a keeps some live chunks.
        b = Array(a[0..<300_000]) + Array(a[1_000_000..<1_300_000]) + Array(a[2_000_000..<2_300_000]) + pseudoRandom(300_000, seed: 22)
        c = pseudoRandom(800_000, seed: 23)
        for (name, data, day) in [("a", a, "01"), ("b", b, "02"), ("c", c, "03")] {
            let r = try cli.dedup(["backup", "-", "--name", name, "--db-name", "shop", "--time", "2026-11-\(day)T02:00:00Z"], stdin: data)
            ids[name] = CLI.committedID(r)
        }
    }

    func packs() -> [String] {
        ((try? FileManager.default.subpathsOfDirectory(atPath: dir + "/repo/packs")) ?? []).filter { $0.hasSuffix(".pack") }.sorted()
    }

    func packBytes() -> Int {
        packs().reduce(0) { $0 + Int(FileIO.fileSize(dir + "/repo/packs/" + $1) ?? 0) }
    }

    func expectRestores(_ name: String, _ data: [UInt8]) throws {
        let id = try #require(ids[name])
        let r = try cli.dedup(["restore", id, "-"])
        #expect(r.status == 0 && r.stdout.count == data.count && sha256(r.stdout) == sha256(data), "\(name): \(r.stderr)")
    }
}

@Suite struct MaintenanceCLITests {
    @Test func pruneThenGCReclaimsAndEverythingLeftRestores() throws {
        let f = try SharedPacksFixture(); defer { removeDir(f.dir) }
        let before = f.packBytes()
        let dry = try f.cli.dedup(["prune", "--keep-last", "1", "--dry-run"])
        #expect(dry.status == 0 && dry.out.contains("KEEP") && dry.out.contains("DELETE") && dry.out.contains("last 1"))
        #expect(manifestCount(f.dir + "/repo") == 3)
        let prune = try f.cli.dedup(["prune", "--keep-last", "1"])
        #expect(prune.status == 0 && prune.out.contains("deleted 2 of 3"))
        let gc = try f.cli.dedup(["gc"])
        #expect(gc.status == 0, "\(gc.stderr)")
        #expect(Double(f.packBytes()) <= 0.6 * Double(before), "\(before) -> \(f.packBytes())")
        try f.expectRestores("c", f.c)
        let verify = try f.cli.dedup(["verify", "--deep"])
        #expect(verify.status == 0)
        #expect(try f.cli.dedup(["list"]).out.contains("deep"))
        // A policy that would empty a database is refused.
        let empty = try f.cli.dedup(["prune"])
        #expect(empty.status == 1 && empty.stderr.contains("would delete every backup of shop"))
        #expect(manifestCount(f.dir + "/repo") == 1)
    }

    @Test func deleteAndRepack() throws {
        let f = try SharedPacksFixture(); defer { removeDir(f.dir) }
        let del = try f.cli.dedup(["delete", "2026-11-01"])
        #expect(del.status == 0 && del.out.contains("deleted \(f.ids["a"] ?? "?")"))
        let gc = try f.cli.dedup(["gc", "--json"])
        let report = try JSONSerialization.jsonObject(with: Data(gc.stdout)) as? [String: Any]
        #expect((report?["packsRepacked"] as? Int ?? 0) >= 1, "\(gc.out)")
        #expect((report?["bytesReclaimed"] as? Int ?? 0) > 1_000_000)
        try f.expectRestores("b", f.b)
        try f.expectRestores("c", f.c)
        #expect(try f.cli.dedup(["verify", "--deep"]).status == 0)
    }

    /// kill -9 of gc and prune at each step: every remaining backup restores,
    /// and the next gc finishes the job.
    @Test(arguments: ["gc.after-mark", "gc.after-repack-commit", "gc.before-pack-delete", "prune.after-first-delete"])
    func crashDuringMaintenance(point: String) throws {
        let f = try SharedPacksFixture(); defer { removeDir(f.dir) }
        let env = ["DBBACKUP_FAULT_CRASH_AT": point]
        let r: CLI.Result
        if point.hasPrefix("prune") {
            r = try f.cli.dedup(["prune", "--keep-last", "1"], env: env)
        } else {
            _ = try f.cli.dedup(["delete", f.ids["a"] ?? "?"])
            r = try f.cli.dedup(["gc"], env: env)
        }
        #expect(r.status == 137, "crash point \(point) not reached: \(r.stderr)")
        // The dead process's exclusive lock blocks, is reported as stale, and goes.
        // gc outside its deletion steps holds only the maintenance lock: backups go
        // on, another gc is refused.
        let heldExclusive = point == "gc.before-pack-delete" || point.hasPrefix("prune")
        let next = try f.cli.dedup(["backup", "-", "--name", "x", "--lock-wait", "0"], stdin: [1])
        if heldExclusive {
            #expect(next.status == 1 && next.stderr.contains("stale"), "\(next.stderr)")
        } else {
            #expect(next.status == 0, "\(next.stderr)")
            let gc = try f.cli.dedup(["gc"])
            #expect(gc.status == 1 && gc.stderr.contains("stale") && gc.stderr.contains("maintenance lock"), "\(gc.stderr)")
        }
        #expect(try f.cli.dedup(["unlock", "--stale-only"]).status == 0)
        for name in ["b", "c"] where FileManager.default.fileExists(atPath: f.dir + "/repo/manifests/\(f.ids[name] ?? "?").manifest.json") {
            try f.expectRestores(name, name == "b" ? f.b : f.c)
        }
        try f.expectRestores("c", f.c)
        #expect(try f.cli.dedup(["verify", "--deep"]).status == 0)
        // The next run completes; a further gc has nothing left to do.
        if point.hasPrefix("prune") { #expect(try f.cli.dedup(["prune", "--keep-last", "1"]).status == 0) }
        #expect(try f.cli.dedup(["gc"]).status == 0)
        let again = try f.cli.dedup(["gc", "--json"])
        let report = try JSONSerialization.jsonObject(with: Data(again.stdout)) as? [String: Any]
        #expect(report?["bytesReclaimed"] as? Int == 0 && report?["packsRepacked"] as? Int == 0, "\(again.out) \(f.packs().map { "\($0) \(FileIO.fileSize(f.dir + "/repo/packs/" + $0) ?? 0)" })")
        try f.expectRestores("c", f.c)
        #expect(try f.cli.dedup(["verify", "--deep"]).status == 0)
    }

    /// A backup runs while gc is paused after its mark (two processes, one
    /// cache): it does not wait, it uses chunks the mark found dead, and gc keeps
    /// them; everything restores afterwards.
    @Test func backupsRunBesideGC() throws {
        let f = try SharedPacksFixture(); defer { removeDir(f.dir) }
        #expect(try f.cli.dedup(["delete", f.ids["a"] ?? "?"]).status == 0)
        final class Outcome: @unchecked Sendable { var gc: CLI.Result? }
        let outcome = Outcome(), done = DispatchSemaphore(value: 0)
        let cli = f.cli
        let gcThread = Thread {
            outcome.gc = try? cli.dedup(["gc", "--json"], env: ["DBBACKUP_FAULT_PAUSE_AT": "gc.after-mark:6"])
            done.signal()
        }
        gcThread.start()
        Thread.sleep(forTimeInterval: 2)  // gc is past its mark, paused
        let started = Date()
        // a's last megabyte: dead for gc's mark, in packs gc planned to delete or rewrite.
        let late = Array(f.a[2_000_000...])
        let backup = try f.cli.dedup(["backup", "-", "--name", "late", "--lock-wait", "0"], stdin: late)
        let took = Date().timeIntervalSince(started)
        #expect(backup.status == 0 && !backup.stderr.contains("waiting"), "\(backup.stderr)")
        #expect(took < 3, "the backup took \(took) s beside gc")
        #expect(done.wait(timeout: .now() + 120) == .success)
        let gc = try #require(outcome.gc)
        #expect(gc.status == 0, "\(gc.stderr)")
        let report = try JSONSerialization.jsonObject(with: Data(gc.stdout)) as? [String: Any]
        #expect((report?["packsKeptForNewBackups"] as? Int ?? 0) >= 1, "\(gc.out)")
        let id = try #require(CLI.committedID(backup))
        let restored = try f.cli.dedup(["restore", id, "-"])
        #expect(restored.status == 0 && restored.stdout == late, "\(restored.stderr)")
        try f.expectRestores("b", f.b)
        try f.expectRestores("c", f.c)
        #expect(try f.cli.dedup(["verify", "--deep"]).status == 0)
    }

    @Test func backupDuringGCWaitsOrFailsClearly() throws {
        let f = try SharedPacksFixture(); defer { removeDir(f.dir) }
        let repo = try Repository(path: f.dir + "/repo")
        let lock = try repo.lock(.exclusive, command: "gc")
        let failed = try f.cli.dedup(["backup", "-", "--name", "late", "--lock-wait", "0"], stdin: [1, 2, 3])
        #expect(failed.status == 1)
        #expect(errorLines(failed).count == 1 && failed.stderr.contains("is locked: exclusive lock by 'gc'"), "\(failed.stderr)")
        let key = lock.key, root = f.dir + "/repo"
        let releaser = Thread { Thread.sleep(forTimeInterval: 1.5); try? LocalBackend(root: root).delete(key) }
        releaser.start()
        let waited = try f.cli.dedup(["backup", "-", "--name", "late", "--lock-wait", "30"], stdin: [1, 2, 3])
        #expect(waited.status == 0 && waited.stderr.contains("waiting for the repository lock"), "\(waited.stderr)")
        lock.release()
    }
}

/// Damage of every kind: verify finds it and names the backups it breaks; restore
/// of a broken backup fails without leaving a file.
@Suite struct DamageTests {
    enum Damage: String, CaseIterable, Sendable { case flippedByte, truncatedPack, deletedPack }

    @Test(arguments: Damage.allCases)
    func verifyNamesTheBrokenBackupsOnly(damage: Damage) throws {
        let f = try SharedPacksFixture(); defer { removeDir(f.dir) }
        // c's chunks are in packs of their own (written last, nothing shared).
        let manifest = try Repository(path: f.dir + "/repo").loadManifest(f.ids["c"] ?? "?")
        let repo = try Repository(path: f.dir + "/repo")
        var first: ChunkID?
        try ChunkListReader(backend: repo.backend, manifest: manifest).forEach { id, _ in if first == nil { first = id } }
        let chunk = try #require(first)
        let loc = try #require(try repo.index().lookup(chunk))
        let pack = repo.localFile(loc.pack.key)
        switch damage {
        case .flippedByte:
            let fd = open(pack, O_RDWR)
            var byte: UInt8 = 0
            let at = off_t(loc.offset) + off_t(PackFormat.entryHeaderSize) + 10
            pread(fd, &byte, 1, at); byte ^= 1; pwrite(fd, &byte, 1, at)
            close(fd)
        case .truncatedPack:
            #expect(truncate(pack, off_t((FileIO.fileSize(pack) ?? 0) / 2)) == 0)
        case .deletedPack:
            #expect(unlink(pack) == 0)
        }
        let verify = try f.cli.dedup(damage == .flippedByte ? ["verify", "--deep"] : ["verify"])
        #expect(verify.status == 1)
        #expect(verify.out.contains("damaged backups: \(manifest.id)"), "\(verify.out)")
        #expect(!verify.out.contains(f.ids["a"] ?? "?") && !verify.out.contains(f.ids["b"] ?? "?"))
        let out = f.dir + "/restored"
        let restore = try f.cli.dedup(["restore", manifest.id, out])
        #expect(restore.status == 1 && errorLines(restore).count == 1, "\(restore.stderr)")
        #expect(!FileManager.default.fileExists(atPath: out))
        #expect(try FileManager.default.contentsOfDirectory(atPath: f.dir).sorted() == ["repo"])
        try f.expectRestores("a", f.a)
        try f.expectRestores("b", f.b)
        let list = try f.cli.dedup(["list"])
        #expect(list.out.contains("FAILED"))
    }

    @Test func deletedIndexIsRebuiltAndVerifies() throws {
        let f = try SharedPacksFixture(); defer { removeDir(f.dir) }
        try FileManager.default.removeItem(atPath: try Repository(path: f.dir + "/repo").cacheDirectory)
        let rebuild = try f.cli.dedup(["index", "rebuild"])
        #expect(rebuild.status == 0 && rebuild.out.contains("index rebuilt"))
        #expect(try f.cli.dedup(["verify", "--deep"]).status == 0)
        for (n, d) in [("a", f.a), ("b", f.b), ("c", f.c)] { try f.expectRestores(n, d) }
    }
}
