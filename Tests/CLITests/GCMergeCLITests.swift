import DedupStore
import Foundation
import Testing

/// gc merging the small packs of many small backups (as `wal archive` makes
/// them), and kill -9 of it half way.
@Suite struct GCMergeCLITests {
    /// 40 backups of 40 kB, each in a pack of its own, in a repository of 1 MiB packs.
    func smallBackups(_ cli: CLI) throws -> [(id: String, data: [UInt8])] {
        _ = try CLI.run(["dedup", "init", "--dedup-dir", cli.repo, "--chunk-size", "64KiB", "--pack-size", "1MiB"])
        return try (0..<40).map { i in
            let data = pseudoRandom(40_000, seed: 300 + UInt64(i))
            let time = String(format: "2026-11-01T00:%02d:00Z", i)
            let r = try cli.dedup(["backup", "-", "--name", "seg", "--time", time], stdin: data)
            return (try #require(CLI.committedID(r), "\(r.stderr)"), data)
        }
    }

    func packSizes(_ repo: String) -> [Int64] {
        ((try? FileManager.default.subpathsOfDirectory(atPath: repo + "/packs")) ?? []).filter { $0.hasSuffix(".pack") }
            .map { FileIO.fileSize(repo + "/packs/" + $0) ?? 0 }
    }

    @Test func gcMergesSmallPacksAndSaysSo() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        let backups = try smallBackups(cli)
        #expect(packSizes(cli.repo).count == 40)
        let dry = try cli.dedup(["gc", "--dry-run"])
        #expect(dry.status == 0 && dry.out.contains("40 small ones merged into 2 new"), "\(dry.out)")
        let gc = try cli.dedup(["gc"])
        #expect(gc.status == 0, "\(gc.stderr)")
        #expect(gc.out.contains("0 deleted, 0 repacked and 40 small ones merged into 2 new"), "\(gc.out)")
        #expect(packSizes(cli.repo).count == 2)
        for b in backups.prefix(5) { #expect(try cli.dedup(["restore", b.id, "-"]).stdout == b.data) }
        #expect(try cli.dedup(["verify", "--deep"]).status == 0)
    }

    /// kill -9 of gc after the first merged pack's commit (not yet indexed, no
    /// small pack deleted) and before the merged packs' deletion: every backup
    /// restores, verify passes, the next gc finishes, a further gc has nothing left.
    @Test(arguments: ["gc.after-repack-commit", "gc.before-pack-delete"])
    func aKilledMergeLosesNothingAndTheNextGCFinishes(point: String) throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        let backups = try smallBackups(cli)
        let killed = try cli.dedup(["gc"], env: ["DBBACKUP_FAULT_CRASH_AT": point])
        #expect(killed.status == 137, "crash point \(point) not reached: \(killed.stderr)")
        #expect(try cli.dedup(["unlock", "--stale-only"]).status == 0)
        for b in backups {
            let r = try cli.dedup(["restore", b.id, "-"])
            #expect(r.status == 0 && r.stdout == b.data, "\(b.id): \(r.stderr)")
        }
        #expect(try cli.dedup(["verify", "--deep"]).status == 0)
        let next = try cli.dedup(["gc"])
        #expect(next.status == 0, "\(next.stderr)")
        let sizes = packSizes(cli.repo)
        #expect(sizes.count <= 2 && sizes.filter { $0 < 1 << 20 }.count <= 1, "\(sizes)")
        let again = try cli.dedup(["gc", "--json"])
        let report = try JSONSerialization.jsonObject(with: Data(again.stdout)) as? [String: Any]
        #expect(report?["packsMerged"] as? Int == 0 && report?["bytesReclaimed"] as? Int == 0, "\(again.out)")
        for b in backups { #expect(try cli.dedup(["restore", b.id, "-"]).stdout == b.data) }
        #expect(try cli.dedup(["verify", "--deep"]).status == 0)
    }
}
