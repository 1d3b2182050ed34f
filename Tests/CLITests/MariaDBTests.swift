import DedupStore
import DatabaseDumps
import Foundation
import Testing

/// `dedup backup-db -d mariadb` against the MariaDB server tools/test starts.
@Suite(.serialized, .enabled(if: Maria.available, "tools/test starts MariaDB and sets DBBACKUP_TEST_MARIADB_SOCKET"))
struct MariaDBTests {
    let connection = ["-d", "mariadb", "--socket", Maria.socket, "--user", "root"]

    func makeDatabase(_ db: String, rows: Int) throws {
        try Maria.sql("DROP DATABASE IF EXISTS \(db); CREATE DATABASE \(db);")
        try Maria.sql("""
            USE \(db);
            CREATE TABLE items (id INT PRIMARY KEY, label VARCHAR(200), blob_col LONGBLOB, note TEXT) CHARACTER SET utf8mb4;
            INSERT INTO items SELECT seq, CONCAT('item ', seq, ' ünïcödé ✓'), UNHEX(CONCAT(MD5(seq), MD5(seq * 7))),
                IF(seq % 10 = 0, NULL, REPEAT(MD5(seq), 3)) FROM seq_1_to_\(rows);
            INSERT INTO items VALUES (0, 'big row', UNHEX(REPEAT(MD5('x'), 250000)), NULL);
            CREATE TRIGGER items_touch BEFORE UPDATE ON items FOR EACH ROW SET NEW.label = NEW.label;
            CREATE PROCEDURE item_count() SELECT COUNT(*) FROM items;
            """)
    }

    @Test func dumpsDeduplicatesRecordsTheBinlogAndRestoresIntoANewDatabase() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let db = "mdb_src_\(getpid())", copy = "mdb_copy_\(getpid())"
        defer { _ = try? Maria.sql("DROP DATABASE IF EXISTS \(db); DROP DATABASE IF EXISTS \(copy);") }
        try makeDatabase(db, rows: 60_000)
        let cli = CLI(repo: dir + "/repo")
        let first = try cli.dedup(["backup-db", "--database", db, "--time", "2026-11-20T02:00:00Z", "--json"] + connection)
        #expect(first.status == 0, "\(first.stderr)")
        let m1 = try JSONSerialization.jsonObject(with: Data(first.stdout)) as? [String: Any]
        let dump = m1?["dump"] as? [String: Any]
        #expect(m1?["dbType"] as? String == "mariadb" && dump?["tool"] as? String == "mariadb-dump")
        #expect((dump?["serverVersion"] as? String)?.contains("MariaDB") == true)
        // The snapshot's binary log position and GTID, where PITR replays from.
        let file = try #require(dump?["binlogFile"] as? String)
        #expect(file.hasPrefix("binlog.") && (dump?["binlogPosition"] as? Int ?? 0) > 0)
        #expect((dump?["gtid"] as? String)?.split(separator: "-").count == 3, "\(String(describing: dump?["gtid"]))")

        try Maria.sql("USE \(db); CREATE TABLE audit (id INT, what TEXT); INSERT INTO audit SELECT seq, CONCAT('night two ', seq) FROM seq_1_to_1000; UPDATE items SET note = 'changed' WHERE id BETWEEN 30000 AND 30100;")
        let second = try cli.dedup(["backup-db", db, "--time", "2026-11-21T02:00:00Z", "--json"] + connection)
        #expect(second.status == 0, "\(second.stderr)")
        let (size, newBytes) = try storedAnew(second)
        #expect(size > 5_000_000)
        // Measured: 30% anew (PostgreSQL's custom format: under 20%). An extended
        // INSERT's end moves with every changed row before it; see MariaDBDumpPlan.
        #expect(Double(newBytes) < 0.4 * Double(size), "night two stored \(newBytes) of \(size) bytes anew")

        let restored = try cli.dedup(["restore", "2026-11-21", "--target-db", copy, "--create", "--socket", Maria.socket, "--user", "root"])
        #expect(restored.status == 0, "\(restored.stderr)")
        for table in ["items", "audit"] {
            #expect(try Maria.query("CHECKSUM TABLE \(db).\(table)").split(separator: "\t").last ==
                    Maria.query("CHECKSUM TABLE \(copy).\(table)").split(separator: "\t").last, "\(table)")
        }
        #expect(try Maria.query("SELECT COUNT(*) FROM information_schema.routines WHERE routine_schema = '\(copy)'") == "1")
        #expect(try Maria.query("SELECT LENGTH(blob_col) FROM \(copy).items WHERE id = 0") == "4000000")
        let again = try cli.dedup(["restore", "2026-11-21", "--target-db", copy, "--socket", Maria.socket, "--user", "root"])
        #expect(again.status == 1 && again.stderr.contains("is not empty"), "\(again.stderr)")
        // --force restores over it (the dump drops and recreates each table).
        try Maria.sql("DELETE FROM \(copy).items WHERE id < 100")
        let forced = try cli.dedup(["restore", "2026-11-21", "--target-db", copy, "--force", "--socket", Maria.socket, "--user", "root"])
        #expect(forced.status == 0, "\(forced.stderr)")
        #expect(try Maria.query("CHECKSUM TABLE \(db).items").split(separator: "\t").last ==
                Maria.query("CHECKSUM TABLE \(copy).items").split(separator: "\t").last)
    }

    @Test func passwordStaysOffCommandLinesAndAWrongOneIsOneLine() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let db = "mdb_pw_\(getpid())"
        defer { _ = try? Maria.sql("DROP DATABASE IF EXISTS \(db);") }
        try makeDatabase(db, rows: 300_000)
        let cli = CLI(repo: dir + "/repo")
        let tcp = ["backup-db", db, "-d", "mariadb", "--host", "127.0.0.1", "--port", Maria.port, "--user", Maria.passwordUser]
        let wrong = try cli.dedup(tcp, env: ["MYSQL_PWD": "not-the-password"])
        #expect(wrong.status == 1 && errorLines(wrong).count == 1, "\(wrong.stderr)")
        #expect(wrong.stderr.contains("Access denied") && wrong.stderr.contains("set MYSQL_PWD"), "\(wrong.stderr)")

        let watcher = CommandLineWatcher(looking: "mariadb-dump")
        watcher.start()
        let right = try cli.dedup(tcp, env: ["MYSQL_PWD": Maria.password])
        let seen = watcher.stop()
        #expect(right.status == 0, "\(right.stderr)")
        #expect(!seen.isEmpty, "mariadb-dump was never seen running")
        #expect(seen.allSatisfy { !$0.contains(Maria.password) }, "\(seen)")
    }

    @Test func wholeServerWithUsersGoesOnPastABrokenDatabase() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let good = "mdb_all_good_\(getpid())", broken = "mdb_all_broken_\(getpid())"
        defer { _ = try? Maria.sql("DROP DATABASE IF EXISTS \(good); DROP DATABASE IF EXISTS \(broken);") }
        try makeDatabase(good, rows: 1_000)
        // A view whose table is gone: mariadb-dump stops on it with an error.
        try Maria.sql("DROP DATABASE IF EXISTS \(broken); CREATE DATABASE \(broken); USE \(broken); CREATE TABLE t (a INT); CREATE VIEW v AS SELECT a FROM t; DROP TABLE t;")
        let cli = CLI(repo: dir + "/repo")
        let r = try cli.dedup(["backup-db", "--all"] + connection)
        #expect(r.status == 1)
        #expect(r.stderr.contains("\(broken):") && r.stderr.contains("backups failed (\(broken))"), "\(r.stderr)")
        let repo = try Repository(path: dir + "/repo")
        let names = try repo.manifests().map(\.name)
        #expect(names.contains("globals") && names.contains(good) && !names.contains(broken), "\(names)")
        let globals = try cli.dedup(["restore", try #require(repo.manifests().first { $0.name == "globals" }?.id), "-"])
        #expect(String(decoding: globals.stdout, as: UTF8.self).contains("dbbackup_pw"), "users and grants are in the globals")
    }

    @Test func clearOneLineErrors() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        let unknown = try cli.dedup(["backup-db", "no_such_db_\(getpid())"] + connection)
        #expect(unknown.status == 1 && errorLines(unknown).count == 1 && unknown.stderr.contains("Unknown database"), "\(unknown.stderr)")
        let unreachable = try cli.dedup(["backup-db", "mysql", "-d", "mariadb", "--host", "127.0.0.1", "--port", "1", "--user", "root"])
        #expect(unreachable.status == 1 && errorLines(unreachable).count == 1 && unreachable.stderr.contains("server is running"), "\(unreachable.stderr)")
        let noTool = try cli.dedup(["backup-db", "mysql"] + connection, env: ["PATH": "/nonexistent"])
        #expect(noTool.status == 1 && noTool.stderr.contains("mariadb-dump was not found in PATH"), "\(noTool.stderr)")
        #expect(manifestCount(dir + "/repo") == 0)
    }

    @Test func dumpThatFailsHalfWayCommitsNothing() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let db = "mdb_kill_\(getpid())"
        defer { _ = try? Maria.sql("DROP DATABASE IF EXISTS \(db);") }
        try makeDatabase(db, rows: 300_000)
        // One connection polling every 2 ms (a client process per poll took
        // longer than the whole dump on a fast machine, which then succeeded).
        let watcher = try MariaDBConnection(ServerAddress(user: "root", socket: Maria.socket), database: nil)
        nonisolated(unsafe) let poller = watcher
        let killer = Thread {
            for _ in 0..<5000 {
                if let ids = try? poller.column("SELECT id FROM information_schema.processlist WHERE db = '\(db)' AND command = 'Query' AND info LIKE 'SELECT /*!40001 SQL_NO_CACHE */%'"),
                   !ids.isEmpty {
                    for id in ids { try? poller.execute("KILL \(id)") }
                    return
                }
                Thread.sleep(forTimeInterval: 0.002)
            }
        }
        killer.start()
        let r = try CLI(repo: dir + "/repo").dedup(["backup-db", db] + connection)
        #expect(r.status == 1, "\(r.stderr)")
        #expect(r.stderr.contains("mariadb-dump") && r.stderr.contains("no backup was committed"), "\(r.stderr)")
        #expect(manifestCount(dir + "/repo") == 0)
    }

    /// Point-in-time recovery: a dump, three batches with the binlogs archived as
    /// they come, recovery to a time between batches 2 and 3.
    /// In a folder, and in a bucket of `rclone serve s3`.
    @Test(arguments: S3Test.available ? ["folder", "bucket"] : ["folder"])
    func recoveryToATimeBetweenBatchesTwoAndThreeYieldsExactlyBatchesOneAndTwo(place: String) throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let env = place == "bucket" ? S3Test.credentials : [:]
        let db = "pitr_src_\(getpid())", copy = "pitr_dst_\(getpid())"
        defer { _ = try? Maria.sql("DROP DATABASE IF EXISTS \(db); DROP DATABASE IF EXISTS \(copy); DROP DATABASE IF EXISTS \(copy)_2;") }
        try Maria.sql("DROP DATABASE IF EXISTS \(db); CREATE DATABASE \(db); CREATE TABLE \(db).t (batch INT, n INT, note VARCHAR(50)) CHARACTER SET utf8mb4;")
        let cli = CLI(repo: place == "bucket" ? "s3://\(S3Test.bucketName())/pitr" : dir + "/repo", env: env)
        if place == "bucket" { #expect(try cli.dedup(["init"]).status == 0) }
        let server = ["--socket", Maria.socket, "--user", "root"]
        let dump = try cli.dedup(["backup-db", "--database", db, "--json"] + connection)
        #expect(dump.status == 0, "\(dump.stderr)")
        let dumpID = try JSONDecoder().decode(Manifest.self, from: Data(dump.stdout)).id

        func batch(_ b: Int) throws {
            // As an application does: with its database as the default one.
            try Maria.sql("USE \(db); INSERT INTO t SELECT \(b), seq, 'ünï \(b)' FROM seq_1_to_500;")
        }
        func archive() throws -> CLI.Result {
            let r = try CLI.run(["binlog", "archive", "--dedup-dir", cli.repo] + server, env: env)
            #expect(r.status == 0, "\(r.stderr)")
            return r
        }
        try batch(1)
        // A partial copy of the binlog being written, twice as it grows: the
        // longer copy replaces the shorter one; the finished file replaces both.
        let partialRun = ["binlog", "archive", "--dedup-dir", cli.repo, "--include-current"] + server
        #expect(try CLI.run(partialRun, env: env).status == 0)
        try Maria.sql("USE \(db); INSERT INTO t VALUES (1, 0, 'partial');")
        #expect(try CLI.run(partialRun, env: env).status == 0)
        let partials = try JSONDecoder().decode([Manifest].self, from: Data(try cli.dedup(["list", "--kind", "binlog", "--json"]).stdout))
            .filter { $0.archive?.file.contains(".partial-") == true }
        #expect(partials.count == 1, "\(partials.map(\.id))")
        try Maria.sql("FLUSH BINARY LOGS;")
        _ = try archive()
        let afterFinish = try JSONDecoder().decode([Manifest].self, from: Data(try cli.dedup(["list", "--kind", "binlog", "--json"]).stdout))
        #expect(!afterFinish.contains { $0.archive?.file.contains(".partial-") == true })
        usleep(1_100_000)
        try batch(2)
        usleep(1_100_000)
        let target = try Maria.sql("SELECT DATE_FORMAT(UTC_TIMESTAMP(6), '%Y-%m-%d %H:%i:%s.%f')") + "+00"
        usleep(1_100_000)
        try batch(3)
        try Maria.sql("FLUSH BINARY LOGS;")
        let second = try archive()
        #expect(second.out.contains("archived before"), "\(second.out)")
        // A run with nothing new archives nothing and succeeds.
        #expect(try archive().out.hasPrefix("0 binlog(s) archived"))
        let validate = try CLI.run(["binlog", "validate", "--dedup-dir", cli.repo] + server, env: env)
        #expect(validate.status == 0 && validate.out.contains("chain OK"), "\(validate.out) \(validate.stderr)")

        let r = try CLI.run(["restore", "pitr", "-d", "mariadb", "--dedup-dir", cli.repo, "--base", dumpID,
                             "--target-time", target, "--target-db", copy, "--create"] + server, env: env)
        #expect(r.status == 0, "\(r.out) \(r.stderr)")
        #expect(try Maria.sql("SELECT CONCAT(batch, ':', COUNT(*)) FROM \(copy).t GROUP BY batch ORDER BY batch") == "1:501\n2:500")
        #expect(try Maria.sql("SELECT COUNT(*) FROM \(copy).t WHERE note = 'ünï 2'") == "500")
        #expect(try Maria.sql("SELECT COUNT(*) FROM \(db).t") == "1501")

        // A target past the end of the archive is refused, not quietly cut short.
        let future = try CLI.run(["restore", "pitr", "-d", "mariadb", "--dedup-dir", cli.repo, "--base", dumpID,
                                  "--target-time", Timestamps.iso8601(Date().addingTimeInterval(3600)), "--target-db", copy + "_2", "--create"] + server, env: env)
        #expect(future.status == 1 && future.stderr.contains("before the target time"), "\(future.stderr)")

        // A binlog missing from the archive: validate says so, recovery refuses.
        try Maria.sql("FLUSH BINARY LOGS;")
        _ = try archive()
        let files = try JSONDecoder().decode([Manifest].self, from: Data(try cli.dedup(["list", "--kind", "binlog", "--json"]).stdout))
        let start = try #require(try JSONDecoder().decode(Manifest.self, from: Data(dump.stdout)).dump?.binlogFile)
        let victim = try #require(files.first { ($0.archive?.file ?? "") > start })
        #expect(try cli.dedup(["delete", victim.id]).status == 0)
        let broken = try CLI.run(["binlog", "validate", "--dedup-dir", cli.repo] + server, env: env)
        #expect(broken.status == 1 && broken.out.contains("GAP"), "\(broken.out) \(broken.stderr)")
        let refused = try CLI.run(["restore", "pitr", "-d", "mariadb", "--dedup-dir", cli.repo, "--base", dumpID,
                                   "--target-time", target, "--target-db", copy + "_2", "--create"] + server, env: env)
        #expect(refused.status == 1 && refused.stderr.contains("lacks \(victim.archive?.file ?? "?")"), "\(refused.stderr)")

        // Retention: with a newer dump kept and the old one pruned, the binlogs
        // before the newer dump's position go too; those after it stay.
        let newer = try cli.dedup(["backup-db", "--database", db, "--json"] + connection)
        let newerStart = try #require(try JSONDecoder().decode(Manifest.self, from: Data(newer.stdout)).dump?.binlogFile)
        try Maria.sql("FLUSH BINARY LOGS;")
        _ = try archive()
        let prune = try cli.dedup(["prune", "--keep-last", "1"])
        #expect(prune.status == 0 && prune.out.contains("binlog:main: keep"), "\(prune.out) \(prune.stderr)")
        let left = try JSONDecoder().decode([Manifest].self, from: Data(try cli.dedup(["list", "--kind", "binlog", "--json"]).stdout))
        #expect(!left.isEmpty && left.allSatisfy { ($0.archive?.file ?? "") >= newerStart }, "\(left.map { $0.archive?.file ?? "" }) from \(newerStart)")
        #expect(left.contains { $0.archive?.file == newerStart })
        #expect(try cli.dedup(["list", "--kind", "dump"]).out.contains(dumpID) == false)
    }
}

enum Maria {
    static let env = ProcessInfo.processInfo.environment
    static var available: Bool { env["DBBACKUP_TEST_MARIADB_SOCKET"] != nil }
    static var socket: String { env["DBBACKUP_TEST_MARIADB_SOCKET"] ?? "/run/mysqld/mysqld.sock" }
    static var port: String { env["DBBACKUP_TEST_MARIADB_PORT"] ?? "3306" }
    static var passwordUser: String { env["DBBACKUP_TEST_MARIADB_PASSWORD_USER"] ?? "dbbackup_pw" }
    static var password: String { env["DBBACKUP_TEST_MARIADB_PASSWORD"] ?? "" }

    @discardableResult
    static func sql(_ statements: String) throws -> String {
        let r = try CLI.runExecutable(["mariadb", "--no-defaults", "--socket=\(socket)", "--user=root", "--batch", "-N", "-e", statements])
        guard r.status == 0 else { throw PG.Failed(description: "mariadb: \(r.stderr)") }
        return String(decoding: r.stdout, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    static func query(_ sql: String) throws -> String { try self.sql(sql) }
}
