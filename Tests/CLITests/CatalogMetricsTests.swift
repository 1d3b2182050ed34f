import DedupStore
import Foundation
import Testing

/// The catalog (gaps, sync), the Prometheus metrics (parsed by the real
/// prometheus_client parser), `metrics serve` and `status`.
@Suite struct CatalogMetricsTests {
    /// Nightly backups of `shop` at 02:00 UTC on the given days of November 2026.
    func series(_ cli: CLI, days: [Int], seed: UInt64 = 1) throws -> [String] {
        try days.map { day in
            let r = try cli.dedup(["backup", "-", "--name", "shop", "--db-name", "shop", "--db-type", "postgres",
                                   "--time", String(format: "2026-11-%02dT02:00:00Z", day)], stdin: pseudoRandom(200_000, seed: seed + UInt64(day)))
            #expect(r.status == 0, "\(r.stderr)")
            return try #require(CLI.committedID(r))
        }
    }

    /// Debian's python3 (python3-prometheus-client installs into its dist-packages).
    static let python = "/usr/bin/python3"

    static var hasPrometheusParser: Bool {
        (try? CLI.runProcess(python, ["-c", "import prometheus_client.parser"], stdin: nil, env: [:]).status) == 0
    }

    /// Parses Prometheus text with prometheus_client; returns "family sample-count" lines.
    static func parsePrometheus(_ text: String) throws -> CLI.Result {
        let script = """
            import sys
            from prometheus_client.parser import text_string_to_metric_families
            for f in text_string_to_metric_families(sys.stdin.read()):
                print(f.name, f.type, len(f.samples))
                for s in f.samples:
                    print(" ", s.name, sorted(s.labels.items()), s.value)
            """
        return try CLI.runProcess(python, ["-c", script], stdin: Array(text.utf8), env: [:])
    }

    @Test func gapsFindTheMissingNightAndSyncReproducesTheCatalog() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        _ = try series(cli, days: [1, 2, 3, 5, 6])
        #expect(try cli.dedup(["verify"]).status == 0)

        let gaps = try CLI.run(["catalog", "gaps", "--dedup-dir", cli.repo, "--interval", "24h", "--json"])
        #expect(gaps.status == 1)
        struct Gap: Decodable { var database: String; var from: String; var to: String?; var missed: Int }
        let found = try JSONDecoder().decode([Gap].self, from: Data(gaps.stdout))
        let inside = found.filter { $0.to != nil }
        #expect(inside.count == 1 && inside.first?.from == "2026-11-03T02:00:00Z" && inside.first?.to == "2026-11-05T02:00:00Z" && inside.first?.missed == 1,
                "\(gaps.out)")
        // Since the last backup (backdated), up to now: a gap too.
        #expect(found.contains { $0.to == nil && $0.from == "2026-11-06T02:00:00Z" })
        // Only up to the series' end: no gap when every night is there.
        let none = try CLI.run(["catalog", "gaps", "--dedup-dir", cli.repo, "--interval", "72h", "--tolerance", "10000d"])
        #expect(none.status == 0 && none.out.contains("no gaps"), "\(none.out)")

        let before = try CLI.run(["catalog", "list", "--dedup-dir", cli.repo, "--json"])
        #expect(before.status == 0 && before.out.contains("\"verifiedOK\" : true"), "\(before.out)")
        // The catalog is a cache beside the index: remove it, and sync makes it again.
        let catalogPath = try Repository(path: cli.repo).cacheDirectory + "/catalog.sqlite"
        try FileManager.default.removeItem(atPath: catalogPath)
        let sync = try CLI.run(["catalog", "sync", "--dedup-dir", cli.repo])
        #expect(sync.status == 0 && sync.out.contains("5 backups"), "\(sync.out)")
        let after = try CLI.run(["catalog", "list", "--dedup-dir", cli.repo, "--json"])
        #expect(after.stdout == before.stdout)
    }

    @Test func theCatalogFollowsDeletesAndOtherWriters() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        let ids = try series(cli, days: [1, 2, 3])
        #expect(try cli.dedup(["delete", ids[1]]).status == 0)
        // Another machine (another cache, so another catalog) adds a backup.
        let other = try cli.dedup(["backup", "-", "--name", "other", "--time", "2026-11-04T02:00:00Z"], stdin: pseudoRandom(1000, seed: 9),
                                  env: ["DBBACKUP_CACHE_DIR": dir + "/other-cache"])
        #expect(other.status == 0)
        let list = try CLI.run(["catalog", "search", "--dedup-dir", cli.repo, "--after", "2026-11-02"])
        #expect(list.status == 0)
        #expect(!list.out.contains(ids[1]) && list.out.contains(ids[2]) && list.out.contains("other") && !list.out.contains(ids[0]), "\(list.out)")
    }

    @Test(.enabled(if: hasPrometheusParser, "needs python3-prometheus-client (tools/test installs it)"))
    func metricsParseAndAFailedBackupCountsAsFailure() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        _ = try series(cli, days: [1, 2])
        // Two failed runs: a producer that fails, and a missing input.
        let failing = try cli.dedup(["backup", "--name", "shop", "--db-name", "shop", "--db-type", "postgres", "--from-command", "--", "sh", "-c", "echo partial; exit 3"])
        #expect(failing.status == 1)
        #expect(try cli.dedup(["backup", dir + "/missing.sql", "--db-name", "shop", "--db-type", "postgres"]).status == 1)
        let restore = try cli.dedup(["restore", "2026-11-02", dir + "/out.bin"])
        #expect(restore.status == 0)

        let metrics = try cli.dedup(["metrics", "--server", "db \"one\""])
        #expect(metrics.status == 0, "\(metrics.stderr)")
        let parsed = try Self.parsePrometheus(metrics.out)
        #expect(parsed.status == 0, "\(parsed.stderr)\n\(metrics.out)")
        let labels = "('backup_type', 'dump'), ('database', 'shop'), ('engine', 'postgres'), ('server', 'db \"one\"')"
        #expect(parsed.out.contains("dbbackup_backup_total [\(labels), ('status', 'failure')] 2.0"), "\(parsed.out)")
        #expect(parsed.out.contains("dbbackup_backup_total [\(labels), ('status', 'success')] 2.0"), "\(parsed.out)")
        #expect(parsed.out.contains("dbbackup_last_success_timestamp [\(labels)] \(Double(Timestamps.parse("2026-11-02T02:00:00Z")?.timeIntervalSince1970 ?? 0))"))
        #expect(parsed.out.contains("dbbackup_restore_total [('server', 'db \"one\"'), ('status', 'success')] 1.0"), "\(parsed.out)")
        for family in ["dbbackup_build_info", "dbbackup_rpo_seconds", "dbbackup_backup_verified", "dbbackup_last_backup_size_bytes",
                       "dbbackup_last_backup_duration_seconds", "dbbackup_dedup_ratio", "dbbackup_dedup_database_last_backup_timestamp"] {
            #expect(parsed.out.contains("\n\(family) ") || parsed.out.hasPrefix("\(family) "), "\(family) missing")
        }

        // The textfile: written whole, under its name, nothing else left in the folder.
        let folder = dir + "/textfile"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let written = try cli.dedup(["metrics", "--output", folder + "/dbbackup.prom"])
        #expect(written.status == 0 && written.out.isEmpty)
        #expect(try FileManager.default.contentsOfDirectory(atPath: folder) == ["dbbackup.prom"])
        #expect(try Self.parsePrometheus(String(decoding: readFile(folder + "/dbbackup.prom"), as: UTF8.self)).status == 0)
    }

    @Test(.enabled(if: hasPrometheusParser, "needs python3-prometheus-client (tools/test installs it)"))
    func metricsServeAnswersMetricsAndHealthOnLoopback() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        _ = try series(cli, days: [1])
        let (server, port) = try Self.startServer(["metrics", "serve", "--port", "0", "--dedup-dir", cli.repo])
        defer { server.terminate(); server.waitUntilExit() }
        let metrics = try Self.get(port, "/metrics")
        #expect(metrics.status == 200)
        #expect(try Self.parsePrometheus(metrics.body).status == 0, "\(metrics.body)")
        #expect(metrics.body.contains("dbbackup_last_success_timestamp{"))
        let health = try Self.get(port, "/health")
        #expect(health.status == 200 && health.body == "OK\n")
        #expect(try Self.get(port, "/nothing").status == 404)

        // A repository that is gone: /health says so with 503.
        let (broken, brokenPort) = try Self.startServer(["metrics", "serve", "--port", "0", "--dedup-dir", dir + "/nowhere"])
        defer { broken.terminate(); broken.waitUntilExit() }
        let sick = try Self.get(brokenPort, "/health")
        #expect(sick.status == 503 && sick.body.contains("not a dbbackup repository"), "\(sick.body)")
    }

    @Test func statusShowsAgeStateAndNoColourOffATerminal() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        _ = try series(cli, days: [1])
        let fresh = try cli.dedup(["backup", "-", "--name", "fresh", "--db-name", "fresh"], stdin: pseudoRandom(1000, seed: 3))
        #expect(fresh.status == 0)
        let status = try CLI.run(["status", "--dedup-dir", cli.repo])
        #expect(status.status == 0)
        let lines = status.out.split(separator: "\n")
        #expect(lines.contains { $0.hasPrefix("shop ") && $0.contains("stale") && $0.contains("no ") })
        #expect(lines.contains { $0.hasPrefix("fresh ") && $0.contains(" ok") })
        #expect(!status.out.contains("\u{1B}["))
        // --check: exit 1, naming the stale database, for a cron job.
        let check = try CLI.run(["status", "--dedup-dir", cli.repo, "--check"])
        #expect(check.status == 1 && check.stderr.contains("not healthy: shop") && !check.stderr.contains("fresh"), "\(check.stderr)")
        let verified = try cli.dedup(["verify"])
        #expect(verified.status == 0)
        struct Row: Decodable { var database: String; var verified: Bool; var encrypted: Bool; var state: String }
        let rows = try JSONDecoder().decode([Row].self, from: Data(try CLI.run(["status", "--dedup-dir", cli.repo, "--json"]).stdout))
        #expect(rows.count == 2 && rows.allSatisfy { $0.verified && !$0.encrypted })
    }

    /// status takes each series' newest backup in one query: the newest time wins,
    /// a tie goes to the later id, WAL and binlogs are no series.
    @Test func statusShowsEachSeriesNewestBackup() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        let older = Timestamps.iso8601(Date().addingTimeInterval(-3 * 86400))
        let newer = Timestamps.iso8601(Date().addingTimeInterval(-3600))
        for (time, seed) in [(older, 1), (newer, 2), (newer, 3)] {
            #expect(try cli.dedup(["backup", "-", "--db-name", "shop", "--time", time], stdin: pseudoRandom(500, seed: UInt64(seed))).status == 0)
        }
        #expect(try cli.dedup(["backup", "-", "--name", "notes", "--time", older], stdin: [1, 2, 3]).status == 0)
        struct Row: Decodable { var database: String; var kind: String; var lastBackup: String?; var size: Int64? }
        let rows = try JSONDecoder().decode([Row].self, from: Data(try CLI.run(["status", "--dedup-dir", cli.repo, "--json"]).stdout))
        #expect(rows.map(\.database) == ["notes", "shop"], "\(rows)")
        #expect(rows.first { $0.database == "shop" }?.lastBackup == newer)
        let ids = try #require(try? FileManager.default.contentsOfDirectory(atPath: cli.repo + "/manifests")).filter { $0.hasSuffix("_shop_2.manifest.json") }
        #expect(ids.count == 1, "two backups of shop at one time: the second is _2")
        #expect(rows.first { $0.database == "shop" }?.size == 500)
    }

    // MARK: HTTP helpers

    static func startServer(_ args: [String]) throws -> (Process, UInt16) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: CLI.binary)
        p.arguments = args
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        // "serving http://127.0.0.1:PORT/metrics and /health"
        var line = [UInt8]()
        while !line.contains(10) {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            line += chunk
        }
        let text = String(decoding: line, as: UTF8.self)
        guard let r = text.range(of: "127.0.0.1:"), let port = UInt16(text[r.upperBound...].prefix { $0.isNumber }) else {
            p.terminate()
            throw TestFailure("metrics serve printed no port: \(text)")
        }
        return (p, port)
    }

    static func get(_ port: UInt16, _ path: String) throws -> (status: Int, body: String) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else { throw TestFailure("cannot connect to 127.0.0.1:\(port)") }
        let request = Array("GET \(path) HTTP/1.1\r\nHost: localhost\r\n\r\n".utf8)
        _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
        var response = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            response += buffer[0..<n]
        }
        let text = String(decoding: response, as: UTF8.self)
        guard let split = text.range(of: "\r\n\r\n") else { throw TestFailure("no HTTP response: \(text)") }
        let status = Int(text.split(separator: " ").dropFirst().first ?? "") ?? 0
        return (status, String(text[split.upperBound...]))
    }
}
