import DedupStore
import Foundation
@testable import S3Store
import Testing

/// The commands on a repository in a bucket of `rclone serve s3` (a real S3
/// server that checks signatures, started by tools/test), exactly as on a folder.
enum S3Test {
    static let env = ProcessInfo.processInfo.environment
    static var available: Bool { env["DBBACKUP_TEST_S3_RCLONE"] != nil }
    static var endpoint: String { env["DBBACKUP_TEST_S3_RCLONE"] ?? "http://127.0.0.1:9" }
    static var secret: String { env["DBBACKUP_TEST_S3_RCLONE_SECRET"] ?? "" }
    /// The environment a user sets for the bucket's server.
    static var credentials: [String: String] {
        ["AWS_ACCESS_KEY_ID": "dbbackup-test", "AWS_SECRET_ACCESS_KEY": secret, "AWS_ENDPOINT_URL": endpoint]
    }

    /// A new bucket name (made by `dedup init`, or by `makeBucket`).
    static func bucketName() -> String { "t-" + UUID().uuidString.lowercased().prefix(18) }

    /// The store's view of `s3://bucket/prefix`, for checks the CLI cannot make.
    static func backend(_ bucket: String, prefix: String) throws -> S3Backend {
        let e = S3Endpoint(url: endpoint, region: "us-east-1", pathStyle: true)
            ?? S3Endpoint(scheme: "http", host: "127.0.0.1", port: 9, region: "us-east-1", pathStyle: true)
        let client = try S3Client(
            endpoint: e, bucket: bucket,
            credentials: S3Credentials(accessKeyID: "dbbackup-test", secretAccessKey: secret))
        return S3Backend(client: client, prefix: prefix)
    }

    /// Runs `dbbackup ARGS --dedup-dir url` (the option right after the
    /// subcommand words), with the bucket's credentials unless `env` replaces them.
    struct Repo {
        let url: String
        let bucket: String
        let prefix: String
        var env: [String: String] = S3Test.credentials

        init(bucket: String = S3Test.bucketName(), prefix: String = "db1") {
            self.bucket = bucket
            self.prefix = prefix
            url = "s3://\(bucket)/\(prefix)"
        }

        @discardableResult
        func run(_ words: Int, _ args: [String], stdin: [UInt8]? = nil, env extra: [String: String] = [:]) throws
            -> CLI.Result
        {
            var environment = env
            for (k, v) in extra { environment[k] = v }
            return try CLI.run(
                Array(args.prefix(words)) + ["--dedup-dir", url] + Array(args.dropFirst(words)), stdin: stdin,
                env: environment)
        }

        /// `dbbackup dedup <verb> ...`
        @discardableResult
        func dedup(_ args: [String], stdin: [UInt8]? = nil, env extra: [String: String] = [:]) throws -> CLI.Result {
            try run(args.first == "index" ? 3 : 2, ["dedup"] + args, stdin: stdin, env: extra)
        }

        func backend() throws -> S3Backend { try S3Test.backend(bucket, prefix: prefix + "/") }
    }
}

@Suite(.enabled(if: S3Test.available, "tools/test starts rclone serve s3 and sets DBBACKUP_TEST_S3_RCLONE"))
struct S3CLITests {
    @Test func everyStoreCommandWorksOnABucketAsOnAFolder() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let repo = S3Test.Repo()
        let initialized = try repo.dedup(["init"])
        #expect(initialized.status == 0 && initialized.out.contains("created repository \(repo.url)/"), "\(initialized.stderr)")

        // Two nights: the second mostly deduplicated against the first.
        let shared = pseudoRandom(3_000_000, seed: 11)
        let night1 = shared + pseudoRandom(2_000_000, seed: 12)
        var night2 = night1
        night2.replaceSubrange(1_000_000..<1_000_100, with: pseudoRandom(100, seed: 13))
        try writeFile(dir + "/night1", night1)
        let b1 = try repo.dedup(["backup", dir + "/night1", "--name", "shop", "--time", "2026-11-20T02:00:00Z"])
        #expect(b1.status == 0, "\(b1.stderr)")
        let b2 = try repo.dedup(["backup", "-", "--name", "shop", "--time", "2026-11-21T02:00:00Z", "--json"], stdin: night2)
        #expect(b2.status == 0, "\(b2.stderr)")
        let (size, newBytes) = try storedAnew(b2)
        #expect(size == Int64(night2.count) && newBytes < 1_500_000, "night two stored \(newBytes) bytes anew")
        let b3 = try repo.dedup(["backup", "-", "--name", "shop", "--time", "2026-11-22T02:00:00Z"], stdin: shared)
        #expect(b3.status == 0, "\(b3.stderr)")
        guard let id1 = CLI.committedID(b1), let id3 = CLI.committedID(b3) else {
            Issue.record("no ids: \(b1.out) \(b3.out)")
            return
        }
        let id2 = "2026-11-21_020000_shop"

        let list = try repo.dedup(["list"])
        #expect(list.status == 0 && [id1, id2, id3].allSatisfy(list.out.contains), "\(list.out)")

        // Restores to a file and to stdout, byte for byte.
        let restored = try repo.dedup(["restore", id2, dir + "/out2"])
        #expect(restored.status == 0, "\(restored.stderr)")
        #expect(try readFile(dir + "/out2") == night2)
        let toStdout = try repo.dedup(["restore", id1, "-"])
        #expect(toStdout.status == 0 && toStdout.stdout == night1, "\(toStdout.stderr)")

        for args in [["verify"], ["verify", "--deep"], ["verify", "--sample", "50"]] {
            let v = try repo.dedup(args)
            #expect(v.status == 0 && v.out.contains("ok: every checked backup can be restored"), "\(args): \(v.out) \(v.stderr)")
        }
        let stats = try repo.dedup(["stats"])
        #expect(stats.status == 0 && stats.out.contains("repository    \(repo.url)/") && stats.out.contains("manifests     3"), "\(stats.out)")
        let status = try repo.run(1, ["status"])
        #expect(status.status == 0 && status.out.contains("shop"), "\(status.out) \(status.stderr)")
        let metrics = try repo.dedup(["metrics"])
        #expect(metrics.status == 0 && metrics.out.contains("dbbackup_dedup_manifests"), "\(metrics.stderr)")
        let catalog = try repo.run(2, ["catalog", "list"])
        #expect(catalog.status == 0 && catalog.out.contains(id3), "\(catalog.out) \(catalog.stderr)")

        // A new host's empty cache: the index is rebuilt from the pack trailers.
        let fresh = try repo.dedup(["restore", id3, dir + "/out3"], env: ["DBBACKUP_CACHE_DIR": dir + "/other-cache"])
        #expect(fresh.status == 0 && fresh.stderr.contains("rebuilding it from"), "\(fresh.stderr)")
        #expect(try readFile(dir + "/out3") == shared)

        // Retention, delete and gc: night 1's own bytes are deleted, the rest rewritten into one pack.
        let prune = try repo.dedup(["prune", "--keep-last", "2"])
        #expect(prune.status == 0 && prune.out.contains(id1), "\(prune.out) \(prune.stderr)")
        let delete = try repo.dedup(["delete", id2])
        #expect(delete.status == 0, "\(delete.stderr)")
        let before = try repo.backend().list("packs/").reduce(0) { $0 + $1.size }
        let gc = try repo.dedup(["gc"])
        #expect(gc.status == 0 && gc.out.contains("merged into 1 new") && gc.out.contains("1 deleted"), "\(gc.out) \(gc.stderr)")
        let after = try repo.backend().list("packs/").reduce(0) { $0 + $1.size }
        #expect(after < before && after >= Int64(shared.count) / 2, "packs \(before) -> \(after) bytes")
        let rebuilt = try repo.dedup(["index", "rebuild"])
        #expect(rebuilt.status == 0, "\(rebuilt.stderr)")
        let last = try repo.dedup(["restore", id3, "-"])
        #expect(last.status == 0 && last.stdout == shared, "\(last.stderr)")
        let deep = try repo.dedup(["verify", "--deep"])
        #expect(deep.status == 0, "\(deep.out) \(deep.stderr)")
        let unlock = try repo.dedup(["unlock"])
        #expect(unlock.status == 0 && unlock.out.contains("no locks"), "\(unlock.out)")

        // The repository's objects are under its prefix, nothing was made locally.
        let keys = try S3Test.backend(repo.bucket, prefix: "").keys("")
        #expect(keys.allSatisfy { $0.hasPrefix("db1/") } && keys.contains("db1/config"), "\(keys.prefix(5))")
        #expect(!FileManager.default.fileExists(atPath: FileManager.default.currentDirectoryPath + "/s3:"))
    }

    /// A nightly backup's requests are round trips on a real network: none is
    /// spent on asking whether a random name is taken (lock, change note), on
    /// reading the repository's own lock back, on a HEAD before a chunk list it
    /// reads whole, or on a HEAD before the catalog reads the new manifest.
    @Test func aNightlyBackupSpendsNoRequestOnWhatItKnowsAlready() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let repo = S3Test.Repo()
        #expect(try repo.dedup(["init"]).status == 0)
        let night1 = pseudoRandom(2_000_000, seed: 41)
        var night2 = night1
        night2.replaceSubrange(500_000..<500_100, with: pseudoRandom(100, seed: 42))
        for (k, night) in [night1, night2].enumerated() {
            let log = dir + "/requests-\(k + 1).log"
            let b = try repo.dedup(["backup", "-", "--name", "shop", "--time", "2026-11-2\(k + 1)T02:00:00Z"],
                                   stdin: night, env: ["DBBACKUP_S3_REQUEST_LOG": log])
            #expect(b.status == 0, "\(b.stderr)")
            let lines = String(decoding: try readFile(log), as: UTF8.self).split(separator: "\n").map {
                $0.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
            }
            func requests(_ method: String, under folder: String) -> Int {
                lines.filter { $0.first == method && ($0.last ?? "").hasPrefix("db1/" + folder) }.count
            }
            #expect(requests("HEAD", under: "locks/") == 0 && requests("GET", under: "locks/") == 0, "\(lines)")
            #expect(requests("HEAD", under: "changes/") == 0, "\(lines)")
            #expect(lines.filter { $0.first == "HEAD" && ($0.last ?? "").hasSuffix(".chunks") }.count == 1,
                    "only the new chunk list's key is asked for, before it is written: \(lines)")
            #expect(lines.filter { $0.first == "HEAD" && ($0.last ?? "").hasSuffix("_shop.manifest.json") }.count
                    == 2 + k, "the new id twice (free? then taken?) and, from night 2 on, night 1's in the catalog")
        }
    }

    @Test func twoHostsBackUpIntoOneBucketAtOnceAndGCFromAThirdLosesNothing() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let repo = S3Test.Repo()
        #expect(try repo.dedup(["init"]).status == 0)
        // Two hosts: two caches, two processes at a time, sharing most of their data.
        let shared = pseudoRandom(6_000_000, seed: 71)
        let results = NSLock()
        nonisolated(unsafe) var committed = [(String, [UInt8])]()
        nonisolated(unsafe) var failures = [String]()
        DispatchQueue.concurrentPerform(iterations: 2) { host in
            for night in 1...3 {
                var data = shared
                data.replaceSubrange((night * 1_000_000)..<(night * 1_000_000 + 5000), with: pseudoRandom(5000, seed: UInt64(host * 10 + night)))
                data += pseudoRandom(500_000, seed: UInt64(100 + host * 10 + night))
                let r = try? repo.dedup(["backup", "-", "--name", "host\(host)", "--time", "2026-11-0\(night)T02:00:0\(host)Z"],
                                        stdin: data, env: ["DBBACKUP_CACHE_DIR": dir + "/cache-\(host)"])
                results.withLock {
                    if let r, r.status == 0, let id = CLI.committedID(r) { committed.append((id, data)) } else {
                        failures.append(r?.stderr ?? "did not run")
                    }
                }
            }
        }
        #expect(failures.isEmpty, "\(failures)")
        #expect(committed.count == 6)
        // A third host deletes one backup of each and collects the garbage.
        let third = ["DBBACKUP_CACHE_DIR": dir + "/cache-third"]
        for id in ["2026-11-01_020000_host0", "2026-11-01_020001_host1"] {
            #expect(try repo.dedup(["delete", id], env: third).status == 0)
        }
        let gc = try repo.dedup(["gc"], env: third)
        #expect(gc.status == 0, "\(gc.stderr)")
        for (id, data) in committed where !id.hasPrefix("2026-11-01") {
            for cache in ["cache-0", "cache-1", "cache-third"] {
                let r = try repo.dedup(["restore", id, "-"], env: ["DBBACKUP_CACHE_DIR": dir + "/" + cache])
                #expect(r.status == 0 && r.stdout == data, "\(id) from \(cache): \(r.stderr)")
            }
        }
        let verify = try repo.dedup(["verify", "--deep"], env: third)
        #expect(verify.status == 0, "\(verify.out) \(verify.stderr)")
    }

    @Test func aTruncatedOrDeletedObjectInTheBucketIsNamedByVerify() throws {
        let repo = S3Test.Repo()
        #expect(try repo.dedup(["init"]).status == 0)
        for (name, seed) in [("a", UInt64(91)), ("b", UInt64(92))] {
            #expect(try repo.dedup(["backup", "-", "--name", name], stdin: pseudoRandom(1_500_000, seed: seed)).status == 0)
        }
        let backend = try repo.backend()
        let packs = try backend.list("packs/")
        #expect(packs.count == 2)
        // One pack cut short (written again shorter: what a broken copy leaves), one deleted.
        let cut = try #require(try backend.get(packs[0].key))
        try backend.put(packs[0].key, Array(cut.prefix(cut.count / 2)), ifAbsent: false)
        try backend.delete(packs[1].key)
        // From a fresh cache (as another host): the cut pack by its id, and every
        // backup that needs a chunk of either (the deleted pack is gone from the listing).
        let v = try repo.dedup(["verify"], env: ["DBBACKUP_CACHE_DIR": tempDir()])
        #expect(v.status == 1, "\(v.out) \(v.stderr)")
        let cutHex = String(packs[0].key.split(separator: "/").last?.dropLast(5) ?? "")
        #expect(v.stderr.contains("pack \(cutHex) is corrupt"), "\(v.stderr)")
        #expect(v.stderr.contains("which is in no pack"), "\(v.stderr)")
        #expect(v.out.contains("damaged backups: ") && v.out.contains("_a") && v.out.contains("_b"), "\(v.out)")
    }

    @Test func anEncryptedRepositoryOnABucketNeedsItsKey() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let repo = S3Test.Repo()
        try writeFile(dir + "/key", Array("first key of this test\n".utf8))
        try writeFile(dir + "/key2", Array("second key of this test\n".utf8))
        let made = try repo.dedup(["init", "--encrypt", "--key-file", dir + "/key"])
        #expect(made.status == 0, "\(made.stderr)")
        let data = pseudoRandom(1_500_000, seed: 21)
        let backup = try repo.dedup(["backup", "-", "--name", "vault", "--key-file", dir + "/key"], stdin: data)
        #expect(backup.status == 0, "\(backup.stderr)")
        guard let id = CLI.committedID(backup) else {
            Issue.record("no id: \(backup.out)")
            return
        }
        let wrong = try repo.dedup(["restore", id, "-", "--key-file", dir + "/key2"])
        #expect(wrong.status == 1 && errorLines(wrong).count == 1 && wrong.stdout.isEmpty, "\(wrong.stderr)")
        let rotate = try repo.run(2, ["encryption", "rotate", "--key-file", dir + "/key", "--new-key-file", dir + "/key2"])
        #expect(rotate.status == 0, "\(rotate.stderr)")
        let restored = try repo.dedup(["restore", id, "-", "--key-file", dir + "/key2"])
        #expect(restored.status == 0 && restored.stdout == data, "\(restored.stderr)")
    }

    @Test func aRefusedSignatureIsOneLineNamingTheBucketAndNothingIsCommitted() throws {
        let repo = S3Test.Repo()
        #expect(try repo.dedup(["init"]).status == 0)
        let marker = "MARKER-not-the-secret-4711"
        let r = try repo.dedup(["backup", "-", "--name", "x"], stdin: pseudoRandom(100_000, seed: 3),
                               env: ["AWS_SECRET_ACCESS_KEY": marker])
        #expect(r.status == 1 && errorLines(r).count == 1, "\(r.stderr)")
        #expect(r.stderr.contains("s3://\(repo.bucket)/db1/") && r.stderr.contains("403"), "\(r.stderr)")
        #expect(r.stderr.contains("check the access key and secret"), "\(r.stderr)")
        #expect(!r.stderr.contains(marker) && !r.out.contains(marker))
        let list = try repo.dedup(["list"])
        #expect(list.status == 0 && list.out.contains("no backups"), "\(list.out) \(list.stderr)")
    }

    @Test func aMissingBucketIsNamedAndNotCreatedByABackup() throws {
        let repo = S3Test.Repo()
        let r = try repo.dedup(["backup", "-", "--name", "x"], stdin: pseudoRandom(1000, seed: 4))
        #expect(r.status == 1 && errorLines(r).count == 1, "\(r.stderr)")
        #expect(r.stderr.contains("there is no bucket \(repo.bucket)") && r.stderr.contains("dedup init"), "\(r.stderr)")
        let list = try repo.dedup(["list"])
        #expect(list.status == 1 && list.stderr.contains("there is no bucket"), "\(list.stderr)")
    }

    @Test func credentialsComeFromAProfileOfACredentialsFileAndNeverShow() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let repo = S3Test.Repo()
        try writeFile(dir + "/credentials", Array("""
            [default]
            aws_access_key_id = nobody
            aws_secret_access_key = nothing

            [backup]
            aws_access_key_id = dbbackup-test
            aws_secret_access_key = \(S3Test.secret)

            """.utf8))
        var viaFile = S3Test.Repo(bucket: repo.bucket)
        viaFile.env = ["AWS_ENDPOINT_URL": S3Test.endpoint, "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""]
        let made = try viaFile.dedup(["init", "--s3-credentials-file", dir + "/credentials", "--s3-profile", "backup"])
        #expect(made.status == 0, "\(made.stderr)")
        let data = pseudoRandom(2_000_000, seed: 31)
        let b = try viaFile.dedup(["backup", "-", "--name", "f"], stdin: data,
                                  env: ["AWS_SHARED_CREDENTIALS_FILE": dir + "/credentials", "AWS_PROFILE": "backup"])
        #expect(b.status == 0, "\(b.stderr)")
        let refused = try viaFile.dedup(["list", "--s3-credentials-file", dir + "/credentials"])
        #expect(refused.status == 1 && refused.stderr.contains("403"), "\(refused.stderr)")
        // Neither output nor any object of the repository holds the secret.
        let secret = Array(S3Test.secret.utf8)
        #expect(!b.out.contains(S3Test.secret) && !b.stderr.contains(S3Test.secret))
        let backend = try repo.backend()
        for key in try backend.keys("") where !key.hasPrefix("packs/") {
            let bytes = try backend.get(key) ?? []
            #expect(bytes.count < secret.count || !bytes.indices.dropLast(secret.count - 1).contains {
                bytes[$0..<($0 + secret.count)].elementsEqual(secret)
            }, "\(key) holds the secret")
        }
    }

    @Test func walArchiveAndRestoreThroughABucket() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let repo = S3Test.Repo()
        #expect(try repo.dedup(["init"]).status == 0)
        let name = "000000010000000000000007"
        let segment = WALArchiveTests.segment(seed: 5)
        try writeFile(dir + "/" + name, segment)
        let archived = try repo.run(2, ["wal", "archive", dir + "/" + name, name])
        #expect(archived.status == 0 && archived.stderr.isEmpty, "\(archived.stderr)")
        let again = try repo.run(2, ["wal", "archive", dir + "/" + name, name])
        #expect(again.status == 0, "\(again.stderr)")
        let restored = try repo.run(2, ["wal", "restore", name, dir + "/RECOVERYXLOG"])
        #expect(restored.status == 0, "\(restored.stderr)")
        #expect(try readFile(dir + "/RECOVERYXLOG") == segment)
        let missing = try repo.run(2, ["wal", "restore", "000000010000000000000008", dir + "/RECOVERYXLOG2"])
        #expect(missing.status == 1 && !FileManager.default.fileExists(atPath: dir + "/RECOVERYXLOG2"), "\(missing.stderr)")
    }
}

/// Locks are refreshed while held and judged stale by the storage's clock.
@Suite struct LockRefreshTests {
    /// A lock of another host, just taken by its own clock (startedAt now).
    static func foreignLock() -> [UInt8] {
        let info = LockInfo(kind: .exclusive, hostname: "other-host", pid: 4242,
                            startedAt: Timestamps.iso8601(Date()), command: "gc")
        return Array((try? JSONEncoder().encode(info)) ?? Data())
    }

    /// Sets a file's modification time `seconds` back.
    static func age(_ path: String, by seconds: Int) -> Bool {
        shell("touch -d '\(seconds) seconds ago' '\(path)'") == 0
    }

    @Test func aHolderRefreshesItsLockSoThatItNeverLooksStale() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        #expect(try cli.dedup(["backup", "-", "--name", "a"], stdin: pseudoRandom(300_000, seed: 1)).status == 0)
        let quick = ["DBBACKUP_LOCK_REFRESH_SECONDS": "1", "DBBACKUP_LOCK_STALE_SECONDS": "3"]
        // gc holds its maintenance lock for 6 s, paused after its mark.
        let gc = Thread { _ = try? cli.dedup(["gc"], env: quick.merging(["DBBACKUP_FAULT_PAUSE_AT": "gc.after-mark:6"]) { $1 }) }
        gc.start()
        Thread.sleep(forTimeInterval: 4.5)
        let unlock = try cli.dedup(["unlock", "--stale-only"], env: quick)
        #expect(unlock.out.contains("kept    maintenance lock") && unlock.out.contains("0 lock(s) removed"), "\(unlock.out)")
        while gc.isExecuting || !gc.isFinished { Thread.sleep(forTimeInterval: 0.2) }
        #expect(try cli.dedup(["unlock"]).out.contains("no locks"))
    }

    @Test func aHolderStoppedPastTheLimitExitsInsteadOfRefreshing() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        #expect(try cli.dedup(["backup", "-", "--name", "a"], stdin: pseudoRandom(300_000, seed: 3)).status == 0)
        let quick = ["DBBACKUP_LOCK_REFRESH_SECONDS": "1", "DBBACKUP_LOCK_STALE_SECONDS": "3"]
        nonisolated(unsafe) var gc: CLI.Result?
        let runner = Thread {
            gc = try? cli.dedup(["gc"], env: quick.merging(["DBBACKUP_FAULT_PAUSE_AT": "gc.after-mark:12"]) { $1 })
        }
        runner.start()
        Thread.sleep(forTimeInterval: 1.5)
        // SIGSTOP the gc for longer than the stale limit, as a suspended VM would be.
        let pid = shell("kill -STOP $(pgrep -f '^[^ ]*/dbbackup dedup gc --dedup-dir \(cli.repo)')")
        #expect(pid == 0)
        Thread.sleep(forTimeInterval: 4)
        #expect(shell("kill -CONT $(pgrep -f '^[^ ]*/dbbackup dedup gc --dedup-dir \(cli.repo)')") == 0)
        let deadline = Date().addingTimeInterval(30)
        while !runner.isFinished && Date() < deadline { Thread.sleep(forTimeInterval: 0.2) }
        #expect(gc?.status == 75 && gc?.stderr.contains("this process was not running") == true, "\(gc?.stderr ?? "")")
    }

    @Test func aLockOfAnotherHostIsStaleOnceNotRefreshedByTheFoldersClock() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        #expect(try cli.dedup(["init"]).status == 0)
        let lock = dir + "/repo/locks/exclusive-0123456789abcdef.json"
        try writeFile(lock, Self.foreignLock())
        let fresh = try cli.dedup(["unlock", "--stale-only"])
        #expect(fresh.out.contains("kept") && !fresh.out.contains("stale"), "\(fresh.out)")
        #expect(Self.age(lock, by: 3600))
        let old = try cli.dedup(["unlock", "--stale-only"])
        #expect(old.out.contains("[stale: not refreshed for 60 min]") && old.out.contains("1 lock(s) removed"), "\(old.out)")
    }

    @Test(.enabled(if: S3Test.available, "tools/test starts rclone serve s3"))
    func aHolderThatCannotRefreshItsLockStopsBeforeItCouldBeTakenAsStale() throws {
        var repo = S3Test.Repo()
        #expect(try repo.dedup(["init"]).status == 0)
        let data = pseudoRandom(300_000, seed: 2)
        let backup = try repo.dedup(["backup", "-", "--name", "a"], stdin: data)
        #expect(backup.status == 0)
        // The bucket behind a proxy of this test's own, which then goes away.
        let port = 56_900 + Int(getpid() % 50)
        let proxy = Process()
        proxy.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        proxy.arguments = [ThrowawayCluster.repoRoot + "/tools/lib/s3-fault-proxy.py", String(port), S3Test.endpoint, "0"]
        try proxy.run()
        // SIGKILL: a child of the test process may have SIGTERM blocked.
        defer { if proxy.isRunning { kill(proxy.processIdentifier, SIGKILL) } }
        Thread.sleep(forTimeInterval: 1)
        repo.env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:\(port)"
        let started = Date()
        nonisolated(unsafe) var gc: CLI.Result?
        let viaProxy = repo
        let runner = Thread {
            gc = try? viaProxy.dedup(["gc"], env: [
                "DBBACKUP_LOCK_REFRESH_SECONDS": "1", "DBBACKUP_LOCK_STALE_SECONDS": "4",
                "DBBACKUP_FAULT_PAUSE_AT": "gc.after-mark:20",
            ])
        }
        runner.start()
        Thread.sleep(forTimeInterval: 2.5)
        kill(proxy.processIdentifier, SIGKILL)
        let deadline = Date().addingTimeInterval(60)
        while !runner.isFinished && Date() < deadline { Thread.sleep(forTimeInterval: 0.2) }
        #expect(gc?.status == 75, "\(gc?.stderr ?? "")")
        #expect(gc?.stderr.contains("was not refreshed for") == true && gc?.stderr.contains("stopping") == true, "\(gc?.stderr ?? "")")
        #expect(Date().timeIntervalSince(started) < 15, "it stopped while paused, not after")
        // Killed as by a crash: the backup restores, the lock is stale later.
        repo.env["AWS_ENDPOINT_URL"] = S3Test.endpoint
        let restored = try repo.dedup(["restore", CLI.committedID(backup) ?? "?", "-"])
        #expect(restored.status == 0 && restored.stdout == data, "\(restored.stderr)")
        let unlock = try repo.dedup(["unlock", "--stale-only"])
        #expect(unlock.out.contains("1 lock(s) removed"), "\(unlock.out)")
    }

    @Test(.enabled(if: S3Test.env["DBBACKUP_TEST_S3_RCLONE_DATA"] != nil, "tools/test starts rclone serve s3"))
    func aLockInABucketIsJudgedByTheServersClockNotThisHosts() throws {
        let repo = S3Test.Repo()
        #expect(try repo.dedup(["init"]).status == 0)
        try repo.backend().put("locks/exclusive-0123456789abcdef.json", Self.foreignLock(), ifAbsent: true)
        let blocked = try repo.dedup(["gc"])
        #expect(blocked.status == 1 && blocked.stderr.contains("is locked") && !blocked.stderr.contains("stale"), "\(blocked.stderr)")
        // The server's file an hour old, though its startedAt says it was just taken.
        let data = try #require(S3Test.env["DBBACKUP_TEST_S3_RCLONE_DATA"])
        #expect(Self.age("\(data)/\(repo.bucket)/db1/locks/exclusive-0123456789abcdef.json", by: 3600))
        Thread.sleep(forTimeInterval: 1.5)  // rclone's directory cache (tools/test: 1 s)
        let stale = try repo.dedup(["gc"])
        #expect(stale.status == 1 && stale.stderr.contains("[stale: not refreshed for 60 min]"), "\(stale.stderr)")
        let unlock = try repo.dedup(["unlock", "--stale-only"])
        #expect(unlock.out.contains("1 lock(s) removed"), "\(unlock.out)")
        #expect(try repo.dedup(["gc"]).status == 0)
    }
}

/// A private endpoint over TLS with a self-signed certificate: refused by
/// default, accepted with its CA file.
@Suite(.enabled(if: S3Test.env["DBBACKUP_TEST_RCLONE_BIN"] != nil, "tools/test installs rclone"))
struct S3TLSTests {
    @Test func aSelfSignedEndpointIsRefusedUntilItsCAIsGiven() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cert = dir + "/cert.pem", key = dir + "/key.pem"
        #expect(shell("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 -keyout '\(key)' -out '\(cert)' 2>/dev/null") == 0)
        try FileManager.default.createDirectory(atPath: dir + "/data", withIntermediateDirectories: true)
        let port = 56_950 + Int(getpid() % 40)
        let server = Process()
        server.executableURL = URL(fileURLWithPath: S3Test.env["DBBACKUP_TEST_RCLONE_BIN"] ?? "/bin/false")
        server.arguments = ["serve", "s3", "--config", "/dev/null", "--auth-key", "dbbackup-test,tls-secret",
                            "--addr", "127.0.0.1:\(port)", "--cert", cert, "--key", key, dir + "/data"]
        server.standardOutput = FileHandle(forWritingAtPath: "/dev/null")
        server.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try server.run()
        defer { kill(server.processIdentifier, SIGKILL) }
        Thread.sleep(forTimeInterval: 1.5)
        var repo = S3Test.Repo()
        repo.env = ["AWS_ACCESS_KEY_ID": "dbbackup-test", "AWS_SECRET_ACCESS_KEY": "tls-secret",
                    "AWS_ENDPOINT_URL": "https://127.0.0.1:\(port)"]
        let refused = try repo.dedup(["init"])
        #expect(refused.status == 1 && errorLines(refused).count == 1, "\(refused.stderr)")
        #expect(refused.stderr.contains("certificate is not trusted") && refused.stderr.contains("--s3-ca-file"), "\(refused.stderr)")
        let made = try repo.dedup(["init", "--s3-ca-file", cert])
        #expect(made.status == 0, "\(made.stderr)")
        let data = pseudoRandom(500_000, seed: 81)
        let b = try repo.dedup(["backup", "-", "--name", "tls"], stdin: data, env: ["AWS_CA_BUNDLE": cert])
        #expect(b.status == 0, "\(b.stderr)")
        let r = try repo.dedup(["restore", CLI.committedID(b) ?? "?", "-", "--s3-ca-file", cert])
        #expect(r.status == 0 && r.stdout == data, "\(r.stderr)")
    }
}

/// `dedup sync` between folders and buckets, and what a killed upload leaves.
@Suite(.enabled(if: S3Test.available, "tools/test starts rclone serve s3"))
struct S3SyncTests {
    /// Three nights backed up into a folder.
    func seeded(_ dir: String) throws -> (CLI, [(String, [UInt8])]) {
        let cli = CLI(repo: dir + "/local")
        var night = pseudoRandom(4_000_000, seed: 51)
        var out = [(String, [UInt8])]()
        for n in 1...3 {
            night.replaceSubrange((n * 1_000_000)..<(n * 1_000_000 + 100), with: pseudoRandom(100, seed: UInt64(n)))
            let b = try cli.dedup(["backup", "-", "--name", "n", "--time", "2026-11-0\(n)T02:00:00Z"], stdin: night)
            #expect(b.status == 0, "\(b.stderr)")
            if let id = CLI.committedID(b) { out.append((id, night)) }
        }
        return (cli, out)
    }

    @Test func aFolderSyncedToABucketRestoresThereAndASecondSyncCopiesNothing() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let (cli, nights) = try seeded(dir)
        let bucket = S3Test.Repo()
        let dry = try CLI.run(["dedup", "sync", cli.repo, bucket.url, "--dry-run"], env: bucket.env)
        #expect(dry.status == 0 && dry.out.contains("3 manifests") && dry.out.contains("(dry run)"), "\(dry.out) \(dry.stderr)")
        #expect(try bucket.dedup(["list"]).status == 1)  // a dry run makes nothing
        let first = try CLI.run(["dedup", "sync", cli.repo, bucket.url], env: bucket.env)
        #expect(first.status == 0 && first.out.contains("3 chunk lists, 3 manifests"), "\(first.out) \(first.stderr)")
        #expect(first.out.contains("created   a copy"), "\(first.out)")
        for (id, bytes) in nights {
            let r = try bucket.dedup(["restore", id, "-"], env: ["DBBACKUP_CACHE_DIR": dir + "/bucket-cache"])
            #expect(r.status == 0 && r.stdout == bytes, "\(id): \(r.stderr)")
        }
        let again = try CLI.run(["dedup", "sync", cli.repo, bucket.url], env: bucket.env)
        #expect(again.status == 0 && again.out.contains("0 packs, 0 chunk lists, 0 manifests"), "\(again.out)")

        // Bucket to folder, and --delete after a delete and gc at the source.
        #expect(try cli.dedup(["delete", nights[0].0]).status == 0)
        #expect(try cli.dedup(["gc"]).status == 0)
        let pruned = try CLI.run(["dedup", "sync", cli.repo, bucket.url, "--delete"], env: bucket.env)
        #expect(pruned.status == 0 && pruned.out.contains("deleted   1 manifests, 1 chunk lists"), "\(pruned.out) \(pruned.stderr)")
        let back = try CLI.run(["dedup", "sync", bucket.url, dir + "/copy"], env: bucket.env)
        #expect(back.status == 0, "\(back.stderr)")
        let copy = CLI(repo: dir + "/copy")
        let list = try copy.dedup(["list"])
        #expect(!list.out.contains(nights[0].0) && list.out.contains(nights[2].0), "\(list.out)")
        let verify = try copy.dedup(["verify", "--deep"])
        #expect(verify.status == 0, "\(verify.out) \(verify.stderr)")
        let r = try copy.dedup(["restore", nights[2].0, "-"])
        #expect(r.status == 0 && r.stdout == nights[2].1)

        // Another repository at the destination is refused.
        let other = CLI(repo: dir + "/other")
        #expect(try other.dedup(["init"]).status == 0)
        let refused = try CLI.run(["dedup", "sync", cli.repo, other.repo])
        #expect(refused.status == 1 && refused.stderr.contains("is another repository"), "\(refused.stderr)")
    }

    /// Bucket to bucket across two servers, as to another provider: the source
    /// (moto) reached with the environment, the destination (rclone, which
    /// checks signatures) with --to-s3-* and a profile of its own keys; the
    /// same bucket name on another endpoint is another place.
    @Test(.enabled(if: S3Test.env["DBBACKUP_TEST_S3_MOTO"] != nil, "tools/test starts moto"))
    func aBucketSyncsToABucketOfAnotherServerWithItsOwnKeys() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let (cli, nights) = try seeded(dir)
        let moto = S3Test.env["DBBACKUP_TEST_S3_MOTO"] ?? ""
        let url = S3Test.Repo().url
        let motoEnv = ["AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_ENDPOINT_URL": moto,
                       "DBBACKUP_CACHE_DIR": dir + "/cache"]
        let toMoto = try CLI.run(["dedup", "sync", cli.repo, url], env: motoEnv)
        #expect(toMoto.status == 0 && toMoto.out.contains("3 manifests"), "\(toMoto.out) \(toMoto.stderr)")

        let credentials = dir + "/credentials"
        try writeFile(credentials, Array("[offsite]\naws_access_key_id = dbbackup-test\naws_secret_access_key = \(S3Test.secret)\n".utf8))
        let across = try CLI.run(
            ["dedup", "sync", url, url, "--to-s3-endpoint", S3Test.endpoint, "--to-s3-credentials-file", credentials,
             "--to-s3-profile", "offsite"], env: motoEnv)
        #expect(across.status == 0 && across.out.contains("3 chunk lists, 3 manifests"), "\(across.out) \(across.stderr)")
        #expect(!(across.out + across.stderr).contains(S3Test.secret))
        let copy = S3Test.Repo(bucket: String(url.dropFirst(5).prefix { $0 != "/" }))
        for (id, bytes) in nights {
            let r = try copy.dedup(["restore", id, "-"], env: ["DBBACKUP_CACHE_DIR": dir + "/rclone-cache"])
            #expect(r.status == 0 && r.stdout == bytes, "\(id): \(r.stderr)")
        }
        // Without its own keys the destination gets the source's, which rclone refuses.
        let refused = try CLI.run(["dedup", "sync", url, url, "--to-s3-endpoint", S3Test.endpoint], env: motoEnv)
        #expect(refused.status == 1 && refused.stderr.contains("403"), "\(refused.stderr)")
        let folder = try CLI.run(["dedup", "sync", url, dir + "/f", "--to-s3-profile", "offsite"], env: motoEnv)
        #expect(folder.status != 0 && folder.stderr.contains("for a destination in a bucket"), "\(folder.stderr)")
        let same = try CLI.run(["dedup", "sync", url, url], env: motoEnv)
        #expect(same.status != 0 && same.stderr.contains("the same place"), "\(same.stderr)")
    }

    @Test func aKilledSyncLeavesOnlyWholeBackupsAndTheNextOneFinishes() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let (cli, nights) = try seeded(dir)
        let bucket = S3Test.Repo()
        let killed = try CLI.run(["dedup", "sync", cli.repo, bucket.url], env: bucket.env.merging(
            ["DBBACKUP_FAULT_CRASH_AT": "sync.after-first-chunk-list"]) { $1 })
        #expect(killed.status == 137, "\(killed.stderr)")
        let list = try bucket.dedup(["list"])
        #expect(list.status == 0 && list.out.contains("no backups"), "\(list.out) \(list.stderr)")
        let finished = try CLI.run(["dedup", "sync", cli.repo, bucket.url], env: bucket.env)
        #expect(finished.status == 0 && finished.out.contains("2 chunk lists, 3 manifests"), "\(finished.out) \(finished.stderr)")
        for (id, bytes) in nights {
            let r = try bucket.dedup(["restore", id, "-"])
            #expect(r.status == 0 && r.stdout == bytes, "\(id): \(r.stderr)")
        }
    }

    @Test func aBackupKilledMidUploadLeavesNoBackupAndGCAbortsTheUpload() throws {
        let repo = S3Test.Repo()
        #expect(try repo.dedup(["init"]).status == 0)
        let big = pseudoRandom(20_000_000, seed: 61)  // a pack of several parts
        let killed = try repo.dedup(["backup", "-", "--name", "big"], stdin: big, env: ["DBBACKUP_FAULT_CRASH_AT": "pack.before-commit"])
        #expect(killed.status == 137, "\(killed.stderr)")
        let backend = try repo.backend()
        let uploads = try backend.request("GET", nil, operation: "list uploads", query: [("uploads", "")])
        #expect(String(decoding: uploads.body, as: UTF8.self).contains("<Upload>"), "no upload left by the kill")
        #expect(try repo.dedup(["list"]).out.contains("no backups"))
        #expect(try backend.keys("packs/").isEmpty)
        let next = try repo.dedup(["backup", "-", "--name", "big"], stdin: big)
        #expect(next.status == 0, "\(next.stderr)")
        // The killed backup's lock is stale (its process is gone), as on a folder.
        let unlock = try repo.dedup(["unlock", "--stale-only"])
        #expect(unlock.status == 0, "\(unlock.stderr)")
        let gc = try repo.dedup(["gc"])
        #expect(gc.status == 0, "\(gc.stderr)")
        let after = try backend.request("GET", nil, operation: "list uploads", query: [("uploads", "")])
        #expect(!String(decoding: after.body, as: UTF8.self).contains("<Upload>"))
        if let id = CLI.committedID(next) {
            let r = try repo.dedup(["restore", id, "-"])
            #expect(r.status == 0 && r.stdout == big)
        }
    }
}

/// The same commands through a proxy that fails 5% of requests at random: 500,
/// 503, 429, connections reset before and during the answer, bodies cut short.
@Suite(.enabled(if: S3Test.env["DBBACKUP_TEST_S3_RCLONE_MIXED_FAULTS"] != nil, "tools/test starts the fault proxy"))
struct S3FaultTests {
    @Test func fiveNightsAndTheirRestoresCompleteByteForByteUnderFivePercentFaults() throws {
        var repo = S3Test.Repo()
        #expect(try repo.dedup(["init"]).status == 0)
        repo.env["AWS_ENDPOINT_URL"] = S3Test.env["DBBACKUP_TEST_S3_RCLONE_MIXED_FAULTS"]
        // Nights of 12 MB (packs go up in several parts) with scattered changes.
        var night = pseudoRandom(6_000_000, seed: 41) + [UInt8](repeating: 0x41, count: 6_000_000)
        var ids = [(String, [UInt8])]()
        for n in 1...5 {
            for k in 0..<20 {
                let at = (k * 600_011 + n * 7919) % (night.count - 64)
                night.replaceSubrange(at..<(at + 64), with: pseudoRandom(64, seed: UInt64(n * 100 + k)))
            }
            let b = try repo.dedup(["backup", "-", "--name", "night", "--time", "2026-11-0\(n)T02:00:00Z"], stdin: night)
            #expect(b.status == 0, "night \(n): \(b.stderr)")
            if let id = CLI.committedID(b) { ids.append((id, night)) }
        }
        #expect(ids.count == 5)
        for (id, bytes) in ids {
            let r = try repo.dedup(["restore", id, "-"])
            #expect(r.status == 0 && r.stdout == bytes, "\(id): \(r.stderr)")
        }
        let verify = try repo.dedup(["verify", "--deep"])
        #expect(verify.status == 0, "\(verify.out) \(verify.stderr)")
    }
}

extension PostgresServerTests {
    /// backup-db into a bucket and restore --target-db from it.
    @Suite(.enabled(if: S3Test.available, "tools/test starts rclone serve s3"))
    struct S3BackupDBTests {
        let connection = ["--host", PG.host, "--port", PG.port, "--user", PG.user]

        @Test func aDatabaseBackedUpIntoABucketRestoresIntoANewOne() throws {
            let db = "s3db_src_\(getpid())", copy = "s3db_copy_\(getpid())"
            defer {
                _ = try? PG.psql("postgres", "DROP DATABASE IF EXISTS \(db)")
                _ = try? PG.psql("postgres", "DROP DATABASE IF EXISTS \(copy)")
            }
            try PG.psql("postgres", "DROP DATABASE IF EXISTS \(db)")
            try PG.psql("postgres", "CREATE DATABASE \(db)")
            try PG.psql(db, """
                CREATE TABLE items (id int PRIMARY KEY, label text);
                INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 20000) g;
                """)
            let repo = S3Test.Repo()
            #expect(try repo.dedup(["init"]).status == 0)
            let b = try repo.dedup(["backup-db", db] + connection)
            #expect(b.status == 0, "\(b.stderr)")
            guard let id = CLI.committedID(b) else {
                Issue.record("no id: \(b.out)")
                return
            }
            let r = try repo.dedup(["restore", id, "--target-db", copy, "--create"] + connection)
            #expect(r.status == 0, "\(r.stderr)")
            #expect(try PG.query(copy, "SELECT count(*), sum(id) FROM items") == "20000|200010000")
            // --all: the globals, then every database, each its own backup in the bucket.
            let all = try repo.dedup(["backup-db", "--all"] + connection)
            #expect(all.status == 0, "\(all.stderr)")
            let list = try repo.dedup(["list"])
            #expect(list.out.contains("globals") && list.out.contains(copy), "\(list.out)")
        }
    }
}
