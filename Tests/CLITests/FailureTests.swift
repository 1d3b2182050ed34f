import DedupStore
import Foundation
import Testing

/// Failures during a backup: nothing half-done becomes visible, and every backup
/// committed before still restores byte for byte.
@Suite struct FailureTests {
    /// A repository with one committed backup, and its data.
    func seeded(_ dir: String) throws -> (CLI, String, [UInt8]) {
        let cli = CLI(repo: dir + "/repo")
        let data = pseudoRandom(1_000_000, seed: 42) + plainDump(rows: 10_000, seed: 42)
        let r = try cli.dedup(["backup", "-", "--name", "base"], stdin: data)
        return (cli, try #require(CLI.committedID(r)), data)
    }

    func expectIntact(_ cli: CLI, _ id: String, _ data: [UInt8]) throws {
        let restored = try cli.dedup(["restore", id, "-"])
        #expect(restored.status == 0 && restored.stdout == data)
        let verify = try cli.dedup(["verify", "--deep"])
        #expect(verify.status == 0, "\(verify.out) \(verify.stderr)")
    }

    @Test func locationsThatAreNeitherFoldersNorBucketsAreRefused() throws {
        let here = FileManager.default.currentDirectoryPath
        for (url, words) in [("gs://backups/db1", "gs:// is not supported"), ("s3://Bad_Bucket/db1", "is not a bucket location")] {
            for args in [["dedup", "init", "--dedup-dir", url], ["dedup", "list"]] {
                let r = try CLI.run(args, env: ["DBBACKUP_DEDUP_DIR": url])
                #expect(r.status != 0 && r.stderr.contains(words), "\(r.stderr)")
            }
        }
        #expect(!FileManager.default.fileExists(atPath: here + "/gs:"))
        #expect(!FileManager.default.fileExists(atPath: here + "/s3:"))
    }

    @Test func writeErrorDuringBackupCommitsNothing() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let (cli, id, data) = try seeded(dir)
        let r = try cli.dedup(["backup", "-", "--name", "big"], stdin: pseudoRandom(6_000_000, seed: 7),
                              env: ["DBBACKUP_FAULT_ENOSPC_AFTER": "2000000"])
        #expect(r.status == 1)
        #expect(errorLines(r).count == 1 && r.stderr.contains("No space left on device"), "\(r.stderr)")
        #expect(manifestCount(dir + "/repo") == 1)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir + "/repo/tmp").isEmpty)
        try expectIntact(cli, id, data)
    }

    @Test(.enabled(if: canMountTmpfs(), "needs root and mount(8) for a real full filesystem"))
    func realFullDiskCommitsNothing() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let mnt = dir + "/small"
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        #expect(shell("mount -t tmpfs -o size=6m tmpfs '\(mnt)'") == 0)
        defer { _ = shell("umount '\(mnt)'") }
        let cli = CLI(repo: mnt + "/repo")
        let small = pseudoRandom(500_000, seed: 8)
        let id = try #require(CLI.committedID(try cli.dedup(["backup", "-", "--name", "small"], stdin: small)))
        let r = try cli.dedup(["backup", "-", "--name", "big"], stdin: pseudoRandom(12_000_000, seed: 9))
        #expect(r.status == 1)
        #expect(r.stderr.contains("No space left on device"), "\(r.stderr)")
        #expect(manifestCount(mnt + "/repo") == 1)
        try expectIntact(cli, id, small)

        // A restore onto a full disk fails and leaves no partial file behind.
        let out = dir + "/tiny"
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        #expect(shell("mount -t tmpfs -o size=256k tmpfs '\(out)'") == 0)
        defer { _ = shell("umount '\(out)'") }
        let restore = try cli.dedup(["restore", id, out + "/small.bin"])
        #expect(restore.status == 1)
        #expect(errorLines(restore).count == 1 && restore.stderr.contains("the partial output was removed"), "\(restore.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: out).isEmpty)
    }

    @Test func producerThatFailsCommitsNothing() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let (cli, id, data) = try seeded(dir)
        let failing = try cli.dedup(["backup", "--name", "x", "--from-command", "--",
                                     "sh", "-c", "head -c 3000000 /dev/urandom; echo 'pg_dump: error: connection lost' >&2; exit 3"])
        #expect(failing.status == 1)
        #expect(failing.stderr.contains("pg_dump: error: connection lost"))
        #expect(failing.stderr.contains("exited with status 3") && failing.stderr.contains("no backup was committed"))
        let killed = try cli.dedup(["backup", "--name", "x", "--from-command", "--",
                                    "sh", "-c", "head -c 2000000 /dev/urandom; kill -9 $$"])
        #expect(killed.status == 1 && killed.stderr.contains("killed by signal 9"), "\(killed.stderr)")
        let missing = try cli.dedup(["backup", "--name", "x", "--from-command", "--", "no-such-dump-tool"])
        #expect(missing.status == 1 && errorLines(missing) == ["dbbackup: error: input command 'no-such-dump-tool' was not found in PATH; no backup was committed"])
        #expect(manifestCount(dir + "/repo") == 1)
        let ok = try cli.dedup(["backup", "--name", "y", "--from-command", "--", "sh", "-c", "printf hello"])
        #expect(ok.status == 0)
        try expectIntact(cli, id, data)
    }

    @Test func stdinCutShortIsRefusedForPlainDumps() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let (cli, id, data) = try seeded(dir)
        let dump = plainDump(rows: 30_000, seed: 10)
        let r = try cli.dedup(["backup", "-", "--name", "cut", "--db-type", "postgres"], stdin: Array(dump.prefix(dump.count / 2)))
        #expect(r.status == 1)
        #expect(errorLines(r).count == 1 && r.stderr.contains("ends without its completion line"))
        #expect(manifestCount(dir + "/repo") == 1)
        let whole = try cli.dedup(["backup", "-", "--name", "whole", "--db-type", "postgres"], stdin: dump)
        #expect(whole.status == 0)
        try expectIntact(cli, id, data)
    }

    /// Kill -9 equivalents at each step of a backup's commit sequence.
    @Test(arguments: ["pack.before-commit", "backup.after-pack-commit", "backup.before-chunklist", "backup.before-manifest"])
    func crashBeforeManifestLeavesNoBackup(point: String) throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let (cli, id, data) = try seeded(dir)
        let input = pseudoRandom(3_000_000, seed: 11)
        let r = try cli.dedup(["backup", "-", "--name", "crashed"], stdin: input, env: ["DBBACKUP_FAULT_CRASH_AT": point])
        #expect(r.status == 137, "crash hook \(point) did not fire: \(r.stderr)")
        #expect(manifestCount(dir + "/repo") == 1)
        // The dead process's lock is reported as stale and can be removed.
        let blocked = try cli.dedup(["index", "rebuild"])
        #expect(blocked.status == 1 && blocked.stderr.contains("stale"))
        #expect(try cli.dedup(["unlock", "--stale-only"]).status == 0)
        try expectIntact(cli, id, data)
        // The next backup of the same input completes and reuses what was stored.
        let next = try cli.dedup(["backup", "-", "--name", "retry"], stdin: input)
        #expect(next.status == 0)
        let nextID = try #require(CLI.committedID(next))
        try expectIntact(cli, nextID, input)
    }

    @Test func crashAfterManifestKeepsTheBackup() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let (cli, _, _) = try seeded(dir)
        let input = pseudoRandom(2_000_000, seed: 12)
        let r = try cli.dedup(["backup", "-", "--name", "done"], stdin: input, env: ["DBBACKUP_FAULT_CRASH_AT": "backup.after-manifest"])
        #expect(r.status == 137)
        #expect(manifestCount(dir + "/repo") == 2)
        _ = try cli.dedup(["unlock", "--stale-only"])
        let ids = try FileManager.default.contentsOfDirectory(atPath: dir + "/repo/manifests").filter { $0.contains("_done.manifest.json") }
        let id = try #require(ids.first).replacingOccurrences(of: ".manifest.json", with: "")
        try expectIntact(cli, id, input)
    }
}

func shell(_ command: String) -> Int32 {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: "/bin/sh")
    p.arguments = ["-c", command + " >/dev/null 2>&1"]
    guard (try? p.run()) != nil else { return -1 }
    p.waitUntilExit()
    return p.terminationStatus
}

func canMountTmpfs() -> Bool {
    guard getuid() == 0 else { return false }
    let probe = NSTemporaryDirectory() + "dbbackup-mount-probe-\(getpid())"
    try? FileManager.default.createDirectory(atPath: probe, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: probe) }
    guard shell("mount -t tmpfs -o size=1m tmpfs '\(probe)'") == 0 else { return false }
    _ = shell("umount '\(probe)'")
    return true
}

@Suite struct InterruptTests {
    @Test func sigtermDuringBackupLeavesNoTemporaryFilesNorLock() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let repo = dir + "/repo"
        _ = try CLI.run(["dedup", "init", "--dedup-dir", repo, "--pack-size", "1MiB"])
        let p = Process()
        p.executableURL = URL(fileURLWithPath: CLI.binary)
        p.arguments = ["dedup", "backup", "--dedup-dir", repo, "--name", "slow", "--from-command", "--",
                       "sh", "-c", "head -c 3000000 /dev/urandom; sleep 30"]
        p.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
        p.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try p.run()
        // Wait until it holds its lock and is writing a pack.
        let deadline = Date().addingTimeInterval(20)
        func count(_ sub: String) -> Int { ((try? FileManager.default.contentsOfDirectory(atPath: repo + "/" + sub)) ?? []).count }
        while Date() < deadline && !(count("locks") > 0 && count("tmp") > 0) { Thread.sleep(forTimeInterval: 0.05) }
        #expect(count("locks") == 1 && count("tmp") >= 1, "the backup never got going")
        p.terminate()
        p.waitUntilExit()
        #expect(p.terminationStatus == 128 + SIGTERM)
        #expect(count("tmp") == 0, "temporary files left: \(count("tmp"))")
        #expect(count("locks") == 0)
        #expect(manifestCount(repo) == 0)
        #expect(try CLI(repo: repo).dedup(["verify"]).status == 0)
    }

    @Test func badGzipInputIsAClearErrorNotASignal() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        // A gzip header followed by garbage.
        try writeFile(dir + "/bad.gz", [0x1F, 0x8B, 0x08, 0x00] + pseudoRandom(3_000_000, seed: 5))
        let bad = try cli.dedup(["backup", dir + "/bad.gz", "--decompress-input"])
        #expect(bad.status == 1 && !bad.signaled)
        #expect(errorLines(bad).count == 1 && bad.stderr.contains("gzip -dc' exited with status"), "\(bad.stderr)")
        #expect(manifestCount(dir + "/repo") == 0)
        // A good .gz while gc holds the repository: the lock error, not SIGPIPE.
        try writeFile(dir + "/d.sql", plainDump(rows: 50_000, seed: 6))
        _ = shell("gzip -k -f '\(dir)/d.sql'")
        #expect(try cli.dedup(["backup", "-", "--name", "first"], stdin: [1]).status == 0)
        let repo = try Repository(path: dir + "/repo")
        let lock = try repo.lock(.exclusive, command: "gc")
        defer { lock.release() }
        let locked = try cli.dedup(["backup", dir + "/d.sql.gz", "--decompress-input", "--lock-wait", "0"])
        #expect(locked.status == 1 && !locked.signaled)
        #expect(errorLines(locked).count == 1 && locked.stderr.contains("is locked"), "\(locked.stderr)")
    }

    @Test func initAfterAnInterruptedInitWorks() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        for sub in ["packs", "tmp", "manifests"] {
            try FileManager.default.createDirectory(atPath: dir + "/repo/" + sub, withIntermediateDirectories: true)
        }
        let r = try CLI.run(["dedup", "init", "--dedup-dir", dir + "/repo"])
        #expect(r.status == 0, "\(r.stderr)")
    }
}
