import DedupStore
import Foundation
import Testing

/// PostgreSQL's archive_command and restore_command contract, each point a test,
/// on WAL-shaped files (a long page header with a system identifier, then data).
@Suite struct WALArchiveTests {
    /// A 16 MiB segment of cluster `system`: a long page header, `fill` bytes of
    /// data from `seed`, zeros after (as a segment closed early by a switch).
    static func segment(system: UInt64 = 7_301_234_567_890_123_456, timeline: UInt32 = 1, seed: UInt64, fill: Int = 200_000) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 16 << 20)
        func put<T: FixedWidthInteger>(_ v: T, at offset: Int) {
            withUnsafeBytes(of: v.littleEndian) { for (i, b) in $0.enumerated() { bytes[offset + i] = b } }
        }
        put(UInt16(0xD110), at: 0)  // XLOG_PAGE_MAGIC of PostgreSQL 15
        put(UInt16(0x0002), at: 2)  // XLP_LONG_HEADER
        put(timeline, at: 4)
        put(system, at: 24)
        put(UInt32(16 << 20), at: 32)
        put(UInt32(8192), at: 36)
        bytes.replaceSubrange(40..<(40 + fill), with: pseudoRandom(fill, seed: seed))
        return bytes
    }

    struct Setup {
        let dir: String
        let repo: String
        func run(_ args: [String], env: [String: String] = [:]) throws -> CLI.Result {
            try CLI.run(args + ["--dedup-dir", repo], env: env)
        }
        func archive(_ bytes: [UInt8], as file: String, env: [String: String] = [:]) throws -> CLI.Result {
            let path = dir + "/pg_wal/" + file
            try writeFile(path, bytes)
            return try run(["wal", "archive", path, file], env: env)
        }
        func restored(_ file: String) throws -> (CLI.Result, [UInt8]?) {
            let path = dir + "/restored/RECOVERYXLOG"
            try? FileManager.default.removeItem(atPath: path)
            let r = try run(["wal", "restore", file, path])
            return (r, try? readFile(path))
        }
    }

    func setup() throws -> Setup {
        let dir = tempDir()
        for sub in ["pg_wal", "restored"] { try FileManager.default.createDirectory(atPath: dir + "/" + sub, withIntermediateDirectories: true) }
        let s = Setup(dir: dir, repo: dir + "/repo")
        #expect(try CLI.run(["dedup", "init", "--dedup-dir", s.repo]).status == 0)
        return s
    }

    let name = "000000010000000000000003"

    @Test func archivedSegmentRestoresByteForByteAndAnEmptyTailCostsLittle() throws {
        let s = try setup(); defer { removeDir(s.dir) }
        let seg = Self.segment(seed: 1)
        let r = try s.archive(seg, as: name)
        #expect(r.status == 0 && r.stderr.isEmpty, "\(r.stderr)")
        let (rr, bytes) = try s.restored(name)
        #expect(rr.status == 0, "\(rr.stderr)")
        #expect(bytes == seg)
        // 200 KB of data and 16 MiB of zeros: the zeros cost almost nothing.
        let list = try s.run(["wal", "list", "--json"])
        let manifests = try JSONDecoder().decode([Manifest].self, from: Data(list.stdout))
        #expect(manifests.count == 1 && manifests[0].kind == "wal" && manifests[0].archive?.systemIdentifier == "7301234567890123456")
        #expect(manifests[0].stats.storedBytes < 300_000, "\(manifests[0].stats.storedBytes) bytes stored")
    }

    @Test func killedBeforeTheCommitExitsNonZeroAndTheRetrySucceeds() throws {
        let s = try setup(); defer { removeDir(s.dir) }
        let seg = Self.segment(seed: 2)
        for point in ["pack.before-commit", "backup.before-chunklist", "backup.before-manifest"] {
            let killed = try s.archive(seg, as: name, env: ["DBBACKUP_FAULT_CRASH_AT": point])
            #expect(killed.status != 0, "\(point)")
            #expect(try s.restored(name).0.status == 1, "nothing is archived after a kill at \(point)")
        }
        #expect(try s.archive(seg, as: name).status == 0)
        #expect(try s.restored(name).1 == seg)
    }

    @Test func archivingTheSameFileAgainSucceeds() throws {
        let s = try setup(); defer { removeDir(s.dir) }
        let seg = Self.segment(seed: 3)
        #expect(try s.archive(seg, as: name).status == 0)
        let again = try s.archive(seg, as: name)
        #expect(again.status == 0 && again.stderr.contains("archived already"), "\(again.stderr)")
        #expect(manifestCount(s.repo) == 1)
    }

    @Test func aDifferentFileUnderAnArchivedNameFailsAndKeepsTheFirst() throws {
        let s = try setup(); defer { removeDir(s.dir) }
        let first = Self.segment(seed: 4)
        #expect(try s.archive(first, as: name).status == 0)
        let other = try s.archive(Self.segment(seed: 5), as: name)
        #expect(other.status == 1)
        #expect(errorLines(other).count == 1 && other.stderr.contains("refusing to archive \(name)") && other.stderr.contains("different"), "\(other.stderr)")
        #expect(try s.restored(name).1 == first)
    }

    @Test func aSegmentOfAnotherClusterIsRefused() throws {
        let s = try setup(); defer { removeDir(s.dir) }
        #expect(try s.archive(Self.segment(seed: 6), as: name).status == 0)
        let foreign = try s.archive(Self.segment(system: 42, seed: 7), as: "000000010000000000000004")
        #expect(foreign.status == 1 && foreign.stderr.contains("system identifier 42"), "\(foreign.stderr)")
        // Under a name of its own it goes in.
        let own = try s.run(["wal", "archive", s.dir + "/pg_wal/000000010000000000000004", "000000010000000000000004", "--name", "other"])
        #expect(own.status == 0, "\(own.stderr)")
    }

    @Test func historyAndBackupHistoryFilesAreArchivedToo() throws {
        let s = try setup(); defer { removeDir(s.dir) }
        let history = Array("1\t0/3000000\tbefore 2026-11-21 12:00:00+00\n".utf8)
        let label = Array("START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n".utf8)
        #expect(try s.archive(history, as: "00000002.history").status == 0)
        #expect(try s.archive(label, as: "000000010000000000000002.00000028.backup").status == 0)
        #expect(try s.restored("00000002.history").1 == history)
        #expect(try s.restored("000000010000000000000002.00000028.backup").1 == label)
    }

    @Test func aFileNotArchivedExitsOneAndWritesNothing() throws {
        let s = try setup(); defer { removeDir(s.dir) }
        let (r, bytes) = try s.restored("00000003.history")
        #expect(r.status == 1 && r.stderr.contains("not in the WAL archive"), "\(r.stderr)")
        #expect(bytes == nil)
    }

    /// A damaged archive must stop recovery, not look like its end (exit 1).
    @Test func aDamagedSegmentExits126AndWritesNothing() throws {
        let s = try setup(); defer { removeDir(s.dir) }
        #expect(try s.archive(Self.segment(seed: 9), as: name).status == 0)
        let repo = try Repository(path: s.repo)
        let manifest = try repo.loadManifest("wal_main_" + name)
        var first: ChunkID?
        try ChunkListReader(backend: repo.backend, manifest: manifest).forEach { id, _ in if first == nil { first = id } }
        let chunk = try #require(first)
        let loc = try #require(try repo.index().lookup(chunk))
        let fd = open(repo.localFile(loc.pack.key), O_RDWR)
        var byte: UInt8 = 0
        let at = off_t(loc.offset) + off_t(PackFormat.entryHeaderSize) + 10
        pread(fd, &byte, 1, at); byte ^= 1; pwrite(fd, &byte, 1, at)
        close(fd)
        let (r, bytes) = try s.restored(name)
        #expect(r.status == 126 && errorLines(r).count == 1, "\(r.status) \(r.stderr)")
        #expect(bytes == nil)
    }

    /// An encrypted repository: archive and restore take the key file; without
    /// it restore_command fails fatally (126), not as "not archived" (1).
    @Test func anEncryptedArchiveNeedsItsKey() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        try FileManager.default.createDirectory(atPath: dir + "/pg_wal", withIntermediateDirectories: true)
        let key = dir + "/k"
        try writeFile(key, pseudoRandom(32, seed: 1))
        let repo = dir + "/repo"
        #expect(try CLI.run(["dedup", "init", "--encrypt", "--key-file", key, "--dedup-dir", repo]).status == 0)
        let seg = Self.segment(seed: 12)
        try writeFile(dir + "/pg_wal/" + name, seg)
        let archived = try CLI.run(["wal", "archive", dir + "/pg_wal/" + name, name, "--dedup-dir", repo, "--key-file", key])
        #expect(archived.status == 0, "\(archived.stderr)")
        let restored = try CLI.run(["wal", "restore", name, dir + "/out", "--dedup-dir", repo, "--key-file", key])
        #expect(restored.status == 0 && (try? readFile(dir + "/out")) == seg)
        let keyless = try CLI.run(["wal", "restore", name, dir + "/out2", "--dedup-dir", repo])
        #expect(keyless.status == 126 && keyless.stderr.contains("--key-file"), "\(keyless.status) \(keyless.stderr)")
        let next = "000000010000000000000004"
        try writeFile(dir + "/pg_wal/" + next, Self.segment(seed: 13))
        let keylessArchive = try CLI.run(["wal", "archive", dir + "/pg_wal/" + next, next, "--dedup-dir", repo])
        #expect(keylessArchive.status == 1 && keylessArchive.stderr.contains("--key-file"), "\(keylessArchive.stderr)")
    }

    @Test func swappedArgumentsAndAMissingFileAreClearErrors() throws {
        let s = try setup(); defer { removeDir(s.dir) }
        let path = s.dir + "/pg_wal/" + name
        try writeFile(path, Self.segment(seed: 8))
        let swapped = try s.run(["wal", "archive", name, path])
        #expect(swapped.status == 1 && swapped.stderr.contains("is not a WAL file name"), "\(swapped.stderr)")
        let missing = try s.run(["wal", "archive", s.dir + "/pg_wal/nothing", "000000010000000000000009"])
        #expect(missing.status == 1 && errorLines(missing).count == 1, "\(missing.stderr)")
        #expect(manifestCount(s.repo) == 0)
    }

    @Test func listShowsTheArchiveInWALOrderWithItsGaps() throws {
        let s = try setup(); defer { removeDir(s.dir) }
        for (i, seg) in ["000000010000000000000001", "000000010000000000000002", "000000010000000000000005"].enumerated() {
            #expect(try s.archive(Self.segment(seed: UInt64(10 + i), fill: 1000), as: seg).status == 0)
        }
        let list = try s.run(["wal", "list"])
        #expect(list.status == 0)
        #expect(list.out.contains("gap: timeline 1 lacks 000000010000000000000003 to 000000010000000000000004"), "\(list.out)")
        let lines = list.out.split(separator: "\n").filter { $0.hasPrefix("0000") }
        #expect(lines.map { String($0.prefix(24)) } == ["000000010000000000000001", "000000010000000000000002", "000000010000000000000005"])
    }
}
