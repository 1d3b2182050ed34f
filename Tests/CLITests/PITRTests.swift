import DedupStore
import Foundation
import Testing

/// A PostgreSQL cluster of a test's own (tools/lib/pg-cluster.sh), for tests that
/// change the server's configuration and restart it. Needs root: the server and
/// the dbbackup runs it starts (archive_command) run as the OS user postgres.
struct ThrowawayCluster {
    static let repoRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
    static let bin = ProcessInfo.processInfo.environment["PG_CLUSTER_BIN"] ?? "/usr/lib/postgresql/15/bin"
    static var canRun: Bool {
        geteuid() == 0 && FileManager.default.isExecutableFile(atPath: bin + "/initdb") && getpwnam("postgres") != nil
    }

    let dir: String
    let port: Int
    /// The environment of the server and of dbbackup runs as postgres: a cache folder postgres owns.
    let env: [String: String]

    /// Runs a bash script whose children may outlive it (a server): every
    /// descriptor but 0-2 is closed first, so that no server keeps our output
    /// pipes open.
    static func detachedShell(_ script: String, _ args: [String], env: [String: String]) throws -> CLI.Result {
        let closeInherited = "for fd in $(ls /proc/$$/fd); do if [ \"$fd\" -gt 2 ]; then eval \"exec $fd>&-\"; fi; done 2>/dev/null; "
        return try CLI.runProcess("/bin/bash", ["-c", closeInherited + "cd '\(repoRoot)' && " + script, "_"] + args, stdin: nil, env: env)
    }

    static func start(in dir: String, port: Int, env: [String: String]) throws -> ThrowawayCluster {
        let script = "source tools/lib/common.sh; source tools/lib/pg-cluster.sh; pg_cluster_start \"$1\" \"$2\" >&2; echo \"$PGPORT\""
        let r = try detachedShell(script, [dir, String(port)], env: env)
        guard r.status == 0, let chosen = Int(r.out.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw TestFailure("could not start a cluster in \(dir): \(r.stderr)")
        }
        return ThrowawayCluster(dir: dir, port: chosen, env: env)
    }

    func stop() {
        _ = try? Self.detachedShell("source tools/lib/common.sh; source tools/lib/pg-cluster.sh; pg_cluster_stop \"$1\"", [dir], env: [:])
    }

    /// psql -At on database postgres of a server on `port` (default: this one).
    @discardableResult
    func sql(_ query: String, port: Int? = nil) throws -> String {
        let r = try CLI.runProcess(Self.bin + "/psql", ["-h", dir, "-p", String(port ?? self.port), "-U", "postgres", "-d", "postgres",
                                                        "-v", "ON_ERROR_STOP=1", "-Atc", query], stdin: nil, env: [:])
        guard r.status == 0 else { throw TestFailure("psql \(query): \(r.stderr)") }
        return r.out.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Runs a program as the OS user postgres, with `env`.
    func asPostgres(_ args: [String]) throws -> CLI.Result {
        try CLI.runProcess("/usr/sbin/runuser", ["-u", "postgres", "--"] + args, stdin: nil, env: env)
    }

    func dbbackup(_ args: [String]) throws -> CLI.Result { try asPostgres([CLI.binary] + args) }

    func pgCtl(_ args: [String]) throws -> CLI.Result {
        try Self.detachedShell("exec /usr/sbin/runuser -u postgres -- \"$@\"", [Self.bin + "/pg_ctl"] + args, env: env)
    }

    /// The first port from `start` that can be bound on 127.0.0.1 now. Refusing
    /// connections is not enough: the port may be the local end of an outgoing
    /// connection (the S3 tests make thousands, in the ephemeral range).
    static func bindablePort(from start: Int) -> Int {
        for port in start..<(start + 200) {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { continue }
            defer { close(fd) }
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = in_port_t(UInt16(port).bigEndian)
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            let bound = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            if bound == 0 { return port }
        }
        return start
    }

    /// Waits until `check` holds, up to `seconds`.
    static func waitFor(_ seconds: Double, _ check: () throws -> Bool) rethrows -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if try check() { return true }
            usleep(200_000)
        }
        return try check()
    }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// Point-in-time recovery end to end against a real PostgreSQL: archiving turned
/// on by `pitr enable`, a base backup, three batches of rows with WAL archived as
/// it comes, and recovery to a time between the second and the third batch.
@Suite(.serialized, .enabled(if: ThrowawayCluster.canRun, "needs root, PostgreSQL 15's server binaries and the OS user postgres"))
struct PostgresPITRTests {
    enum Place: String, CaseIterable, CustomStringConvertible {
        case folder, encryptedFolder, bucket
        var description: String { rawValue }
    }

    /// Plain, with an encrypted repository (archive_command and restore_command
    /// then carry --key-file), and in a bucket of `rclone serve s3` (they then
    /// carry the endpoint and a credentials file postgres reads, never keys).
    @Test(arguments: S3Test.available ? Place.allCases : [.folder, .encryptedFolder])
    func recoveryToATimeBetweenBatchesTwoAndThreeYieldsExactlyBatchesOneAndTwo(place: Place) throws {
        let encrypted = place == .encryptedFolder
        let dir = tempDir(); defer { removeDir(dir) }
        let work = dir + "/work"
        try FileManager.default.createDirectory(atPath: work + "/cache", withIntermediateDirectories: true)
        #expect(chown(work, getpwnam("postgres").pointee.pw_uid, getpwnam("postgres").pointee.pw_gid) == 0)
        #expect(chown(work + "/cache", getpwnam("postgres").pointee.pw_uid, getpwnam("postgres").pointee.pw_gid) == 0)
        let bucket = S3Test.bucketName()
        let repo = place == .bucket ? "s3://\(bucket)/pitr" : work + "/repo"
        let cluster = try ThrowawayCluster.start(in: dir + "/pg", port: 55700, env: ["DBBACKUP_CACHE_DIR": work + "/cache"])
        defer { cluster.stop() }
        let address = ["--host", "127.0.0.1", "--port", String(cluster.port), "--user", "postgres"]

        let keyFile = work + "/dedup.key"
        var key = encrypted ? ["--key-file", keyFile] : []
        if place == .bucket {
            // The server's environment has no AWS variables: the commands it runs
            // name the endpoint and a credentials file only postgres can read.
            let credentials = work + "/s3-credentials"
            try writeFile(credentials, Array("[default]\naws_access_key_id = dbbackup-test\naws_secret_access_key = \(S3Test.secret)\n".utf8))
            #expect(chown(credentials, getpwnam("postgres").pointee.pw_uid, getpwnam("postgres").pointee.pw_gid) == 0)
            chmod(credentials, 0o600)
            key += ["--s3-endpoint", S3Test.endpoint, "--s3-credentials-file", credentials]
        }
        if encrypted {
            try writeFile(keyFile, pseudoRandom(32, seed: 99))
            #expect(chown(keyFile, getpwnam("postgres").pointee.pw_uid, getpwnam("postgres").pointee.pw_gid) == 0)
            chmod(keyFile, 0o600)
        }
        #expect(try cluster.dbbackup(["dedup", "init", "--dedup-dir", repo] + key + (encrypted ? ["--encrypt"] : [])).status == 0)
        if place == .bucket {
            // Keys only in this shell's environment cannot reach the server's commands.
            let keysOnly = try CLI.run(
                ["pitr", "enable", "--dedup-dir", repo, "--s3-endpoint", S3Test.endpoint] + address, env: S3Test.credentials)
            #expect(keysOnly.status == 1 && keysOnly.stderr.contains("--s3-credentials-file"), "\(keysOnly.stderr)")
            #expect(try cluster.sql("SHOW archive_mode") == "off")
        }
        let enable = try CLI.run(["pitr", "enable", "--dedup-dir", repo] + key + address)
        #expect(enable.status == 0 && enable.out.contains("after a restart"), "\(enable.out) \(enable.stderr)")
        #expect(enable.out.contains("--s3-credentials-file") == (place == .bucket), "\(enable.out)")
        #expect(!enable.out.contains(S3Test.secret) || S3Test.secret.isEmpty)
        #expect(enable.out.contains("--key-file") == encrypted, "\(enable.out)")
        let restart = try cluster.pgCtl(["-D", cluster.dir + "/data", "-l", cluster.dir + "/server.log", "-w", "-t", "60", "restart"])
        #expect(restart.status == 0, "\(restart.stderr)")
        #expect(try cluster.sql("SHOW archive_mode") == "on")

        try cluster.sql("CREATE TABLE t (batch int, n int, at timestamptz DEFAULT clock_timestamp())")
        let base = try cluster.dbbackup(["dedup", "backup-db", "--base-backup", "--dedup-dir", repo] + key + ["--json"] + address)
        #expect(base.status == 0, "\(base.stderr)")
        let baseManifest = try JSONDecoder().decode(Manifest.self, from: Data(base.stdout))
        #expect(baseManifest.kind == "basebackup" && baseManifest.dump?.startWALFile != nil && baseManifest.dump?.systemIdentifier != nil)

        func batch(_ b: Int) throws {
            try cluster.sql("INSERT INTO t (batch, n) SELECT \(b), g FROM generate_series(1, 1000) g")
        }
        /// Switches to a new segment and waits until the old one is archived.
        func switchAndWaitForArchive() throws {
            let segment = try cluster.sql("SELECT pg_walfile_name(pg_switch_wal())")
            let archived = try ThrowawayCluster.waitFor(30) {
                try cluster.sql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") >= segment
            }
            let state = (try? cluster.sql("SELECT * FROM pg_stat_archiver")) ?? "?"
            #expect(archived, "segment \(segment) was not archived: \(state)")
        }
        try batch(1)
        try switchAndWaitForArchive()
        usleep(1_100_000)
        try batch(2)
        usleep(1_100_000)
        let target = try cluster.sql("SELECT now()")
        usleep(1_100_000)
        try batch(3)
        try switchAndWaitForArchive()

        // The archive: gap-free, and a segment closed early by a switch costs little.
        let list = try cluster.dbbackup(["wal", "list", "--dedup-dir", repo] + key + ["--json"])
        let files = try JSONDecoder().decode([Manifest].self, from: Data(list.stdout))
        let afterBase = files.filter { ($0.archive?.file ?? "") > (baseManifest.dump?.startWALFile ?? "~") && $0.archive?.file.count == 24 }
        #expect(afterBase.count >= 2)
        for m in afterBase { #expect(m.stats.storedBytes < 256 << 10, "\(m.id): \(m.stats.storedBytes) bytes stored for \(m.size)") }
        let status = try CLI.run(["pitr", "status", "--dedup-dir", repo] + key + address)
        #expect(status.status == 0 && status.out.contains("recoverable from  \(baseManifest.createdAt)") && !status.out.contains("gap"), "\(status.out) \(status.stderr)")

        // A target before the base backup is refused; the folder must be empty.
        let tooEarly = try cluster.dbbackup(["restore", "pitr", "--dedup-dir", repo] + key + ["--base", baseManifest.id,
                                             "--target-time", "2001-01-01 00:00:00+00", "--target-dir", work + "/early"])
        #expect(tooEarly.status == 1 && tooEarly.stderr.contains("after the target time"), "\(tooEarly.stderr)")
        try FileManager.default.createDirectory(atPath: work + "/busy", withIntermediateDirectories: true)
        try writeFile(work + "/busy/x", [1])
        let busy = try CLI.run(["restore", "pitr", "--dedup-dir", repo] + key + ["--base", baseManifest.id, "--target-dir", work + "/busy"])
        #expect(busy.status == 1 && busy.stderr.contains("is not empty"), "\(busy.stderr)")

        let restored = work + "/restored"
        let r = try cluster.dbbackup(["restore", "pitr", "--dedup-dir", repo] + key + ["--base", baseManifest.id,
                                      "--target-time", target, "--target-dir", restored])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(FileManager.default.fileExists(atPath: restored + "/recovery.signal"))
        let port2 = ThrowawayCluster.bindablePort(from: cluster.port + 50)
        let start = try cluster.pgCtl(["-D", restored, "-o", "-p \(port2) -k \(cluster.dir)", "-l", work + "/restored.log", "-w", "-t", "120", "start"])
        defer { _ = try? cluster.pgCtl(["-D", restored, "-m", "immediate", "stop"]) }
        #expect(start.status == 0, "\(start.stderr) \((try? String(contentsOfFile: work + "/restored.log", encoding: .utf8)) ?? "")")
        let promoted = ThrowawayCluster.waitFor(60) { (try? cluster.sql("SELECT pg_is_in_recovery()", port: port2)) == "f" }
        #expect(promoted, "\((try? String(contentsOfFile: work + "/restored.log", encoding: .utf8)) ?? "")")
        #expect(try cluster.sql("SELECT batch || ':' || count(*) FROM t GROUP BY batch ORDER BY batch", port: port2) == "1:1000\n2:1000")
        // The original still has all three.
        #expect(try cluster.sql("SELECT count(*) FROM t") == "3000")

        // Retention: a newer base backup kept and the old one pruned; the WAL
        // before the newer one's start goes, the rest stays.
        let newer = try cluster.dbbackup(["dedup", "backup-db", "--base-backup", "--dedup-dir", repo] + key + ["--json"] + address)
        #expect(newer.status == 0, "\(newer.stderr)")
        let newerBase = try JSONDecoder().decode(Manifest.self, from: Data(newer.stdout))
        let newerStart = try #require(newerBase.dump?.startWALFile)
        try switchAndWaitForArchive()
        // archive_command may hold its shared lock for a moment: wait for it, as a nightly job does.
        let prune = try cluster.dbbackup(["dedup", "prune", "--dedup-dir", repo] + key + ["--keep-last", "1", "--lock-wait", "60"])
        #expect(prune.status == 0 && prune.out.contains("wal:main: keep"), "\(prune.out) \(prune.stderr)")
        let left = try JSONDecoder().decode([Manifest].self, from: Data(try cluster.dbbackup(["wal", "list", "--dedup-dir", repo] + key + ["--json"]).stdout))
        let segmentsLeft = left.compactMap { $0.archive?.file }.filter { $0.count == 24 }
        #expect(!segmentsLeft.isEmpty && segmentsLeft.allSatisfy { $0 >= newerStart } && segmentsLeft.contains(newerStart), "\(segmentsLeft) from \(newerStart)")
        let after = try CLI.run(["pitr", "status", "--dedup-dir", repo] + key + address)
        #expect(after.out.contains("recoverable from  \(newerBase.createdAt)"), "\(after.out)")
    }
}
