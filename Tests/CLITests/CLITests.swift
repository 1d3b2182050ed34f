import DedupStore
import Foundation
import Testing

@Suite struct CLIBasics {
    @Test func aClosedStdoutLosesTheSummaryNotTheBackup() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        // `dbbackup ... | head -1`: the reader is gone before the summary is printed.
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/bash")
        p.arguments = ["-c", "printf 'abc%.0s' $(seq 1 1000) | '\(CLI.binary)' dedup backup - --dedup-dir '\(dir)/repo' --name x | head -c 1 >/dev/null; exit ${PIPESTATUS[1]}"]
        try p.run()
        p.waitUntilExit()
        #expect(p.terminationStatus == 0 && p.terminationReason == .exit, "exit status \(p.terminationStatus)")
        #expect(manifestCount(dir + "/repo") == 1)
    }

    @Test func stdinRoundTripListStatsJSON() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        let data = pseudoRandom(2_000_000, seed: 1) + plainDump(rows: 20_000, seed: 2)
        let r = try cli.dedup(["backup", "-", "--name", "shop", "--db-name", "shop", "--db-type", "postgres",
                               "--tag", "env=prod", "--time", "2026-11-21T02:00:00Z"], stdin: data)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(CLI.committedID(r) == "2026-11-21_020000_shop")
        #expect(r.stderr.contains("created repository"))
        #expect(r.out.contains("chunks") && r.out.contains("dedup") && r.out.contains("MB/s"))

        #expect(!r.out.contains("sha256"), "no whole-stream digest unless asked for")
        let again = try cli.dedup(["backup", "-", "--name", "shop", "--db-name", "shop", "--time", "2026-11-22T02:00:00Z",
                                   "--json", "--stream-sha256"], stdin: data)
        #expect(again.status == 0)
        let manifest = try JSONSerialization.jsonObject(with: Data(again.stdout)) as? [String: Any]
        let stats = manifest?["stats"] as? [String: Any]
        #expect(stats?["newChunks"] as? Int == 0)
        #expect(manifest?["sha256"] as? String == sha256(data))

        let restored = try cli.dedup(["restore", "2026-11-22", "-"])
        #expect(restored.status == 0)
        #expect(restored.stdout == data)
        #expect(restored.stderr.contains("sha256 verified"), "\(restored.stderr)")

        let list = try cli.dedup(["list", "--database", "shop"])
        #expect(list.out.contains("2026-11-21_020000_shop") && list.out.contains("2026-11-22_020000_shop"))
        let listJSON = try JSONSerialization.jsonObject(with: Data(try cli.dedup(["list", "--json"]).stdout)) as? [[String: Any]]
        #expect(listJSON?.count == 2)
        #expect((listJSON?.first?["tags"] as? [String: String])?["env"] == "prod")
        let statsJSON = try JSONSerialization.jsonObject(with: Data(try cli.dedup(["stats", "--json"]).stdout)) as? [String: Any]
        #expect(statsJSON?["manifests"] as? Int == 2)
        #expect((statsJSON?["dedupRatio"] as? Double ?? 0) > 2)

        let verify = try cli.dedup(["verify", "--deep"])
        #expect(verify.status == 0 && verify.out.contains("ok"))
    }

    @Test func fileBackupWithDecompressedInput() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        let dump = plainDump(rows: 50_000, seed: 3)
        try writeFile(dir + "/d.sql", dump)
        for tool in [["gzip", "-k", "-f"], ["zstd", "-q", "-f", "-k"]] where findExecutable(tool[0]) != nil {
            let p = try Process.run(URL(fileURLWithPath: findExecutable(tool[0]) ?? ""), arguments: Array(tool.dropFirst()) + [dir + "/d.sql"])
            p.waitUntilExit()
            let ext = tool[0] == "gzip" ? "gz" : "zst"
            let r = try cli.dedup(["backup", dir + "/d.sql.\(ext)", "--decompress-input", "--name", "dump-\(ext)"])
            #expect(r.status == 0, "\(r.stderr)")
            let id = try #require(CLI.committedID(r))
            let out = dir + "/out-\(ext).sql"
            #expect(try cli.dedup(["restore", id, out]).status == 0)
            #expect(try readFile(out) == dump)
        }
    }

    @Test func missingInputFile() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let r = try CLI(repo: dir + "/repo").dedup(["backup", dir + "/nope.sql"])
        #expect(r.status == 1)
        #expect(errorLines(r) == ["dbbackup: error: input file not found: \(dir)/nope.sql"])
        #expect(!FileManager.default.fileExists(atPath: dir + "/repo/manifests"))
    }

    @Test func folderThatIsNotARepository() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        try writeFile(dir + "/precious.txt", [1, 2, 3])
        for args in [["list"], ["backup", "-"], ["restore", "x", dir + "/o"], ["verify"]] {
            let r = try CLI(repo: dir).dedup(args, stdin: [1, 2, 3])
            #expect(r.status == 1)
            #expect(errorLines(r).count == 1 && r.stderr.contains("is not a dbbackup repository"), "\(args): \(r.stderr)")
        }
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir) == ["precious.txt"])
    }

    @Test func unknownAndAmbiguousIDs() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        for day in ["21", "22"] {
            #expect(try cli.dedup(["backup", "-", "--name", "db", "--time", "2026-11-\(day)T02:00:00Z"], stdin: [1, 2, 3]).status == 0)
        }
        let unknown = try cli.dedup(["restore", "2025-01", dir + "/o"])
        #expect(unknown.status == 1 && errorLines(unknown).count == 1 && unknown.stderr.contains("no backup matches '2025-01'"))
        let ambiguous = try cli.dedup(["restore", "2026-11", dir + "/o"])
        #expect(ambiguous.status == 1 && ambiguous.stderr.contains("matches 2 backups"))
        #expect(!FileManager.default.fileExists(atPath: dir + "/o"))
    }

    @Test func corruptPackFailsRestoreWithoutOutputFile() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        let data = pseudoRandom(3_000_000, seed: 4)
        let r = try cli.dedup(["backup", "-", "--name", "x"], stdin: data)
        let id = try #require(CLI.committedID(r))
        let packs = try FileManager.default.subpathsOfDirectory(atPath: dir + "/repo/packs").filter { $0.hasSuffix(".pack") }
        let pack = try #require(packs.first)
        let fd = open(dir + "/repo/packs/" + pack, O_RDWR)
        var b: UInt8 = 0
        pread(fd, &b, 1, 100_000); b ^= 0x55; pwrite(fd, &b, 1, 100_000)
        close(fd)
        let out = dir + "/restored.bin"
        let restore = try cli.dedup(["restore", id, out])
        #expect(restore.status == 1)
        #expect(errorLines(restore).count == 1)
        let packID = String((pack as NSString).lastPathComponent.dropLast(5))
        #expect(restore.stderr.contains("chunk ") && restore.stderr.contains("in pack \(packID)") && restore.stderr.contains(id), "\(restore.stderr)")
        #expect(!FileManager.default.fileExists(atPath: out))
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir).sorted() == ["repo"])
        let verify = try cli.dedup(["verify", "--deep"])
        #expect(verify.status == 1 && verify.out.contains(id))
    }

    @Test func restoreRefusesToOverwriteWithoutForce() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        let r = try cli.dedup(["backup", "-", "--name", "x"], stdin: [9, 9, 9])
        let id = try #require(CLI.committedID(r))
        try writeFile(dir + "/o", [1])
        #expect(try cli.dedup(["restore", id, dir + "/o"]).status == 1)
        #expect(try readFile(dir + "/o") == [1])
        #expect(try cli.dedup(["restore", id, dir + "/o", "--force"]).status == 0)
        #expect(try readFile(dir + "/o") == [9, 9, 9])
    }

    @Test func indexRebuildAndLostIndex() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        let data = pseudoRandom(1_500_000, seed: 5)
        let id = try #require(CLI.committedID(try cli.dedup(["backup", "-", "--name", "x"], stdin: data)))
        try FileManager.default.removeItem(atPath: try Repository(path: dir + "/repo").cacheDirectory)
        let restored = try cli.dedup(["restore", id, "-"])
        #expect(restored.status == 0 && restored.stdout == data)
        #expect(restored.stderr.contains("rebuilding"))
        let rebuild = try cli.dedup(["index", "rebuild"])
        #expect(rebuild.status == 0 && rebuild.out.contains("index rebuilt"))
        #expect(try cli.dedup(["verify"]).status == 0)
    }
}

/// Hostile or absurd input gives one line on stderr, never a crash.
@Suite struct HostileInputTests {
    @Test func absurdSizesAreUsageErrors() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        for size in ["4611686018427387904", "1e30KiB", "100000", "banana", "0"] {
            let r = try CLI.run(["dedup", "init", "--dedup-dir", dir + "/r", "--chunk-size", size])
            // Usage errors exit 64 (README), with one line saying what is wrong.
            #expect(r.status == 64 && !r.signaled && r.stderr.split(separator: "\n").filter { $0.hasPrefix("Error: ") }.count == 1,
                    "\(size): \(r.stderr)")
        }
        #expect(!FileManager.default.fileExists(atPath: dir + "/r/config"))
    }

    @Test func damagedChunkListFooterIsAnErrorNotACrash() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        let id = try #require(CLI.committedID(try cli.dedup(["backup", "-", "--name", "x"], stdin: pseudoRandom(500_000, seed: 1))))
        let list = dir + "/repo/manifests/\(id).chunks"
        let size = FileIO.fileSize(list) ?? 0
        // The top bit of the record count in the footer (not under its checksum).
        let fd = open(list, O_RDWR)
        var b: UInt8 = 0
        pread(fd, &b, 1, off_t(size - 56 + 7)); b ^= 0x80; pwrite(fd, &b, 1, off_t(size - 56 + 7))
        close(fd)
        for args in [["restore", id, dir + "/out"], ["verify"]] {
            let r = try cli.dedup(args)
            #expect(r.status == 1 && !r.signaled, "\(args): \(r.stderr)")
            #expect(r.stderr.contains("chunk list") || r.out.contains("chunk list"))
        }
    }

    @Test func oneDamagedManifestDoesNotHideTheOthers() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        let good = try #require(CLI.committedID(try cli.dedup(["backup", "-", "--name", "good"], stdin: [1, 2])))
        let bad = try #require(CLI.committedID(try cli.dedup(["backup", "-", "--name", "bad"], stdin: [3, 4])))
        try writeFile(dir + "/repo/manifests/\(bad).manifest.json", Array("{\"id\": ".utf8))
        let list = try cli.dedup(["list"])
        #expect(list.status == 0 && list.out.contains(good))
        #expect(list.stderr.contains("skipping") && list.stderr.contains(bad))
        #expect(try cli.dedup(["stats"]).status == 0)
        let verify = try cli.dedup(["verify"])
        #expect(verify.status == 1 && verify.out.contains("damaged backups: \(bad)"))
        let gc = try cli.dedup(["gc"])
        #expect(gc.status == 1 && gc.stderr.contains("gc stopped before deleting anything"))
    }
}
