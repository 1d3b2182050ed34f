import DedupStore
import Foundation
import Testing

/// Defects a new user found by reading the docs and trying them (issue 12): each
/// test failed before its fix.
@Suite struct ReportedDefectsTests {
    /// The pack file and payload offset of the first chunk of a backup, through
    /// the library (the tests' cache root is the CLI's).
    func firstChunk(_ repoPath: String, _ id: String) throws -> (path: String, offset: Int64, chunk: String) {
        let repo = try Repository(path: repoPath)
        var first: ChunkID?
        try ChunkListReader(backend: repo.backend, manifest: try repo.loadManifest(id)).forEach { c, _ in
            if first == nil { first = c }
        }
        let chunk = try #require(first)
        let loc = try #require(try repo.index().lookup(chunk))
        return (repo.localFile(loc.pack.key), Int64(loc.offset) + Int64(PackFormat.entryHeaderSize) + 50, chunk.hex)
    }

    @Test func aCorruptChunkStaysBrokenInVerifyAfterAnIndexRebuildUntilTheNextBackupHealsIt() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        let data = pseudoRandom(1_500_000, seed: 12)
        let id = try #require(CLI.committedID(try cli.dedup(["backup", "-", "--name", "victim"], stdin: data)))
        let (pack, offset, chunk) = try firstChunk(dir + "/repo", id)
        let fd = open(pack, O_RDWR); var b: UInt8 = 0
        _ = pread(fd, &b, 1, off_t(offset)); b ^= 0xFF; _ = pwrite(fd, &b, 1, off_t(offset)); close(fd)

        let deep = try cli.dedup(["verify", "--deep"])
        #expect(deep.status == 1 && deep.out.contains(id))
        // Before a rebuild restore names the corruption, not a missing chunk.
        let before = try cli.dedup(["restore", id, "-"])
        #expect(before.status == 1 && before.stderr.contains("\(chunk) in pack") && before.stderr.contains("is corrupt"), "\(before.stderr)")
        #expect(!before.stderr.contains("is in no pack"))
        #expect(try cli.dedup(["index", "rebuild"]).status == 0)
        let quick = try cli.dedup(["verify"])
        #expect(quick.status == 1, "\(quick.out)")
        #expect(quick.out.contains("damaged backups: \(id)") && !quick.out.contains("ok: every"), "\(quick.out)")
        let after = try cli.dedup(["restore", id, "-"])
        #expect(after.status == 1 && after.stderr.contains("is corrupt"))
        // The next backup of the same data stores the chunk again: restorable again.
        let again = try cli.dedup(["backup", "-", "--name", "victim", "--json"], stdin: data)
        #expect(try storedAnew(again).newBytes > 0)
        #expect(try cli.dedup(["verify"]).status == 0)
        let healed = try cli.dedup(["restore", id, "-"])
        #expect(healed.status == 0 && healed.stdout == data)
    }

    @Test func statusShowsFailingOverAgingAndDatabasesThatOnlyEverFailed() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        let old = Timestamps.iso8601(Date().addingTimeInterval(-30 * 3600))
        #expect(try cli.dedup(["backup", "-", "--db-name", "shop", "--time", old], stdin: pseudoRandom(1000, seed: 1)).status == 0)
        #expect(try cli.dedup(["backup", dir + "/missing.sql", "--db-name", "shop"]).status == 1)
        #expect(try cli.dedup(["backup", dir + "/missing.sql", "--db-name", "newdb"]).status == 1)
        struct Row: Decodable { var database: String; var state: String; var lastBackup: String?; var failuresSinceLastBackup: Int }
        let rows = try JSONDecoder().decode([Row].self, from: Data(try CLI.run(["status", "--dedup-dir", cli.repo, "--json"]).stdout))
        #expect(rows.count == 2)
        #expect(rows.first { $0.database == "shop" }?.state == "failing", "aging must not hide a failed run: \(rows)")
        let never = try #require(rows.first { $0.database == "newdb" })
        #expect(never.state == "failing" && never.lastBackup == nil && never.failuresSinceLastBackup == 1)
        let table = try CLI.run(["status", "--dedup-dir", cli.repo])
        let shopLine = table.out.split(separator: "\n").first { $0.hasPrefix("shop ") } ?? ""
        #expect(shopLine.contains("failing (1 failed since)") && shopLine.contains(" 1d06h "), "\(table.out)")
        #expect(table.out.split(separator: "\n").contains { $0.hasPrefix("newdb ") && $0.contains("never") && $0.contains("failing") })
        let check = try CLI.run(["status", "--dedup-dir", cli.repo, "--check"])
        #expect(check.status == 1 && check.stderr.contains("not healthy: newdb, shop"), "\(check.stderr)")
        // With a wider --warn, the same data gives the same answer.
        let wide = try CLI.run(["status", "--dedup-dir", cli.repo, "--check", "--warn", "100h", "--crit", "200h"])
        #expect(wide.status == 1 && wide.stderr.contains("newdb, shop"))
    }

    @Test func streamSHA256PrintsWhatSha256sumPrintsAlsoWhenEncrypted() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let data = pseudoRandom(300_000, seed: 4)
        let expected = "sha256 " + sha256(data)
        let plain = CLI(repo: dir + "/plain")
        let p = try plain.dedup(["backup", "-", "--name", "x", "--stream-sha256"], stdin: data)
        #expect(p.out.contains(expected), "\(p.out)")
        let key = dir + "/key"
        try writeFile(key, Array("a key for the test".utf8))
        let sealed = CLI(repo: dir + "/sealed")
        #expect(try sealed.dedup(["init", "--encrypt", "--key-file", key]).status == 0)
        let e = try sealed.dedup(["backup", "-", "--name", "x", "--stream-sha256", "--key-file", key], stdin: data)
        #expect(e.status == 0 && e.out.contains(expected), "\(e.out)")
        // The repository keeps only the keyed form; a restore checks it.
        let id = try #require(CLI.committedID(e))
        let manifest = try String(contentsOfFile: dir + "/sealed/manifests/\(id).manifest.json", encoding: .utf8)
        #expect(!manifest.contains(sha256(data)))
        let restored = try sealed.dedup(["restore", id, "-", "--key-file", key])
        #expect(restored.status == 0 && restored.stdout == data)
    }

    // MARK: Messages and flags

    @Test func anEditedConfigAndANewerManifestSayWhatHappenedInOneLine() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let key = dir + "/key"
        try writeFile(key, Array("key".utf8))
        let sealed = CLI(repo: dir + "/sealed")
        #expect(try sealed.dedup(["init", "--encrypt", "--key-file", key]).status == 0)
        let configPath = sealed.repo + "/config"
        let config = String(decoding: try readFile(configPath), as: UTF8.self)
        try writeFile(configPath, Array(config.replacingOccurrences(of: "\"aes-256-gcm\"", with: "\"none\"")
            .replacingOccurrences(of: "\"hmac-sha256\"", with: "\"sha256\"").utf8))
        let edited = try sealed.dedup(["list"])
        #expect(errorLines(edited) == ["dbbackup: error: repository \(sealed.repo) was changed outside dbbackup: its config says it is not "
                                        + "encrypted, but keys/ holds key objects; put its original config back; nothing was read or written"],
                "\(edited.stderr)")

        let plain = CLI(repo: dir + "/plain")
        let id = try #require(CLI.committedID(try plain.dedup(["backup", "-", "--name", "x"], stdin: [1, 2, 3])))
        let path = plain.repo + "/manifests/\(id).manifest.json"
        let text = String(decoding: try readFile(path), as: UTF8.self)
        try writeFile(path, Array(text.replacingOccurrences(of: "\"formatVersion\" : 1", with: "\"formatVersion\" : 7").utf8))
        let restore = try plain.dedup(["restore", id, "-"])
        #expect(errorLines(restore) == ["dbbackup: error: backup \(id) has manifest format version 7, but this dbbackup reads versions up to 2; "
                                         + "upgrade dbbackup to read it"], "\(restore.stderr)")
        #expect(!restore.stderr.contains("damaged"))
        let list = try plain.dedup(["list"])
        #expect(list.status == 0 && list.stderr.contains("skipping backup \(id) has manifest format version 7"), "\(list.stderr)")
        // gc must not reclaim what a newer manifest may use.
        let gc = try plain.dedup(["gc"])
        #expect(gc.status == 1 && gc.stderr.contains("gc stopped before deleting anything"))
    }

    @Test func keyFileMessagesFitTheCommand() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let plain = CLI(repo: dir + "/plain")
        #expect(try plain.dedup(["backup", "-", "--name", "x"], stdin: [1]).status == 0)
        let missing = try plain.dedup(["list", "--key-file", dir + "/no-such.key"])
        #expect(errorLines(missing) == ["dbbackup: error: key file \(dir)/no-such.key not found; --key-file takes the file that holds the repository's key"])
        try writeFile(dir + "/k", Array("k".utf8))
        let given = try plain.dedup(["list", "--key-file", dir + "/k"])
        #expect(given.status == 1 && given.stderr.contains("is not encrypted, but a key was given") && given.stderr.contains("drop the key"))
        #expect(!given.stderr.contains("back up into"), "\(given.stderr)")
    }

    @Test func anUnknownKindIsAUsageErrorAndAnUnknownDatabaseIsSaidSo() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        #expect(try cli.dedup(["backup", "-", "--db-name", "shop"], stdin: pseudoRandom(1000, seed: 9)).status == 0)
        for args in [["dedup", "list", "--kind", "bogus"], ["catalog", "list", "--kind", "bogus"], ["catalog", "search", "--kind", "bogus"]] {
            let r = try CLI.run(args + ["--dedup-dir", cli.repo])
            #expect(r.status == 64 && r.stderr.contains("bogus"), "\(args): \(r.status) \(r.stderr)")
        }
        #expect(try cli.dedup(["list", "--kind", "dump"]).out.contains("shop"))
        let list = try cli.dedup(["list", "--database", "shpo"])
        #expect(list.status == 0 && list.stderr.contains("no backups of database 'shpo' at all") && list.stderr.contains("shop"), "\(list.stderr)")
        let catalogList = try CLI.run(["catalog", "list", "--database", "shpo", "--dedup-dir", cli.repo])
        #expect(catalogList.status == 0 && catalogList.stderr.contains("no backups of database 'shpo' at all"))
        let gaps = try CLI.run(["catalog", "gaps", "--database", "shpo", "--dedup-dir", cli.repo])
        #expect(gaps.status == 1 && !gaps.out.contains("no gaps") && gaps.stderr.contains("'shpo'"), "\(gaps.out) \(gaps.stderr)")
        #expect(try CLI.run(["catalog", "gaps", "--database", "shop", "--dedup-dir", cli.repo]).status == 0)
        let prune = try cli.dedup(["prune", "--keep-last", "1", "--database", "shpo"])
        #expect(prune.status == 1 && prune.stderr.contains("'shpo'") && prune.stderr.contains("nothing was deleted"))
        #expect(manifestCount(cli.repo) == 1)
    }

    @Test func aMissingOutputFolderIsNamedNotATemporaryFile() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        let id = try #require(CLI.committedID(try cli.dedup(["backup", "-", "--name", "x"], stdin: [1, 2, 3])))
        let restore = try cli.dedup(["restore", id, dir + "/nope/out.bin"])
        #expect(errorLines(restore) == ["dbbackup: error: cannot write \(dir)/nope/out.bin: the folder \(dir)/nope does not exist; "
                                         + "create it or choose another path"], "\(restore.stderr)")
        let metrics = try cli.dedup(["metrics", "--output", dir + "/nope/x.prom"])
        #expect(metrics.status == 1 && metrics.stderr.contains("the folder \(dir)/nope does not exist") && !metrics.stderr.contains(".tmp-"),
                "\(metrics.stderr)")
    }

    @Test func walArchiveRefusesWhatIsNotAWholeSegment() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        try FileManager.default.createDirectory(atPath: dir + "/pg_wal", withIntermediateDirectories: true)
        #expect(try CLI(repo: dir + "/repo").dedup(["init"]).status == 0)
        let name = "000000010000000000000001"
        try writeFile(dir + "/pg_wal/" + name, [UInt8](repeating: 0, count: 1000))
        let zeros = try CLI.run(["wal", "archive", dir + "/pg_wal/" + name, name, "--dedup-dir", dir + "/repo"])
        #expect(zeros.status != 0 && zeros.stderr.contains("is not a WAL segment"), "\(zeros.stderr)")
        // A real header on a file cut short.
        try writeFile(dir + "/pg_wal/" + name, Array(WALArchiveTests.segment(seed: 3)[0..<(1 << 20)]))
        let cut = try CLI.run(["wal", "archive", dir + "/pg_wal/" + name, name, "--dedup-dir", dir + "/repo"])
        #expect(cut.status != 0 && cut.stderr.contains("is not a whole WAL segment"), "\(cut.stderr)")
        #expect(manifestCount(dir + "/repo") == 0)
        try writeFile(dir + "/pg_wal/" + name, WALArchiveTests.segment(seed: 3))
        #expect(try CLI.run(["wal", "archive", dir + "/pg_wal/" + name, name, "--dedup-dir", dir + "/repo"]).status == 0)
    }

    @Test func badInitValuesAreUsageErrorsAndNegativeLevelsTakeASpace() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        for args in [["--chunk-size", "3KiB"], ["--chunk-size", "lots"], ["--compression", "25"], ["--compression", "0"],
                     ["--pack-size", "10"], ["--pack-size", "2GiB"]] {
            let r = try CLI.run(["dedup", "init", "--dedup-dir", dir + "/r"] + args)
            #expect(r.status == 64, "\(args): \(r.status) \(r.stderr)")
            #expect(!FileManager.default.fileExists(atPath: dir + "/r/config"))
        }
        let fast = try CLI.run(["dedup", "init", "--dedup-dir", dir + "/fast", "--compression", "-5"])
        #expect(fast.status == 0 && fast.out.contains("zstd level -5"), "\(fast.stderr)")
        let help = try CLI.run(["dedup", "init", "--help"])
        #expect(help.out.contains("1 to 22") && help.out.contains("-1 to -50"))
    }

    @Test func figuresReadAsUsersWriteThem() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        #expect(try cli.dedup(["backup", "-", "--db-name", "shop"], stdin: pseudoRandom(1000, seed: 2)).status == 0)
        let sample = try cli.dedup(["verify", "--sample", "50"])
        #expect(sample.out.contains("quick, 50% of packs read"), "\(sample.out)")
        let gaps = try CLI.run(["catalog", "gaps", "--interval", "30d", "--dedup-dir", cli.repo])
        #expect(gaps.out.contains("every 30d (+7d12h tolerance)"), "\(gaps.out)")
    }
}
