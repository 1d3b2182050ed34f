import DedupStore
import Foundation
import Testing

/// Every test that uses the PostgreSQL server tools/test starts, one at a time: a
/// test of `--all` dumps every database on it, which must not race with other
/// tests creating and dropping theirs.
@Suite(.serialized, .enabled(if: PG.available, "tools/test starts PostgreSQL and sets DBBACKUP_TEST_PGHOST"))
enum PostgresServerTests {}

extension PostgresServerTests {
/// `dedup backup-db` against the PostgreSQL server tools/test starts.
@Suite struct BackupDBTests {
    let connection = ["--host", PG.host, "--port", PG.port, "--user", PG.user]

    func makeDatabase(_ db: String, rows: Int) throws {
        try PG.psql("postgres", "DROP DATABASE IF EXISTS \(db)")
        try PG.psql("postgres", "CREATE DATABASE \(db)")
        try PG.psql(db, """
            CREATE TABLE items (id int PRIMARY KEY, label text, blob bytea, note text);
            INSERT INTO items SELECT g, 'item ' || g || ' ünïcödé ✓', decode(md5(g::text) || md5((g*7)::text), 'hex'),
                CASE WHEN g % 10 = 0 THEN NULL ELSE repeat(md5(g::text), 3) END FROM generate_series(1, \(rows)) g;
            INSERT INTO items VALUES (0, 'big row', decode(repeat(md5('x'), 250000), 'hex'), NULL);
            """)
    }

    @Test func dumpsDeduplicatesAndRestoresWithPgRestore() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let db = "bdb_src_\(getpid())", copy = "bdb_copy_\(getpid())"
        defer {
            _ = try? PG.psql("postgres", "DROP DATABASE IF EXISTS \(db)")
            _ = try? PG.psql("postgres", "DROP DATABASE IF EXISTS \(copy)")
        }
        try makeDatabase(db, rows: 60_000)
        let cli = CLI(repo: dir + "/repo")
        let first = try cli.dedup(["backup-db", "--database", db, "--db-type", "postgres", "--time", "2026-11-20T02:00:00Z",
                                   "--json"] + connection)
        #expect(first.status == 0, "\(first.stderr)")
        let m1 = try JSONSerialization.jsonObject(with: Data(first.stdout)) as? [String: Any]
        let dump = m1?["dump"] as? [String: Any]
        #expect(m1?["kind"] as? String == "dump" && m1?["database"] as? String == db)
        #expect(dump?["engine"] as? String == "postgres" && dump?["format"] as? String == "custom")
        #expect((dump?["serverVersion"] as? String)?.hasPrefix("15") == true)
        #expect((dump?["toolVersion"] as? String)?.hasPrefix("pg_dump (PostgreSQL)") == true)
        #expect((dump?["databaseSize"] as? Int ?? 0) > 1_000_000)

        // A night's changes; the second dump must mostly deduplicate.
        try PG.psql(db, """
            CREATE TABLE audit (id int, what text);
            INSERT INTO audit SELECT g, 'night two ' || g FROM generate_series(1, 1000) g;
            UPDATE items SET note = 'changed' WHERE id BETWEEN 30000 AND 30100;
            """)
        let second = try cli.dedup(["backup-db", db, "--time", "2026-11-21T02:00:00Z", "--json"] + connection)
        #expect(second.status == 0, "\(second.stderr)")
        let (size, newBytes) = try storedAnew(second)
        #expect(size > 5_000_000)
        #expect(Double(newBytes) < 0.25 * Double(size), "night two stored \(newBytes) of \(size) bytes anew")

        // Restored to a file, loaded with pg_restore into a new database: equal rows.
        let out = dir + "/shop.dump"
        #expect(try cli.dedup(["restore", "2026-11-21", out]).status == 0)
        try PG.psql("postgres", "CREATE DATABASE \(copy)")
        _ = try PG.run(["pg_restore", "--no-owner", "-h", PG.host, "-p", PG.port, "-U", PG.user, "-d", copy, "--jobs", "2", out])
        let checksum = "SELECT md5(string_agg(md5(i::text), ',' ORDER BY id)) FROM items i"
        #expect(try PG.query(db, checksum) == PG.query(copy, checksum))
        #expect(try PG.query(copy, "SELECT count(*) FROM audit") == "1000")
        #expect(try PG.query(copy, "SELECT length(blob) FROM items WHERE id = 0") == "4000000")
    }

    @Test(arguments: ["custom", "plain"])
    func restoresStraightIntoANewDatabase(format: String) throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let db = "bdb_into_\(format)_\(getpid())", copy = "bdb_into_copy_\(format)_\(getpid())"
        defer {
            _ = try? PG.psql("postgres", "DROP DATABASE IF EXISTS \(db)")
            _ = try? PG.psql("postgres", "DROP DATABASE IF EXISTS \(copy)")
        }
        try makeDatabase(db, rows: 20_000)
        let cli = CLI(repo: dir + "/repo")
        let backup = try cli.dedup(["backup-db", db, "--format", format] + connection)
        let id = try #require(CLI.committedID(backup), "\(backup.stderr)")

        let missing = try cli.dedup(["restore", id, "--target-db", copy] + connection)
        #expect(missing.status == 1 && missing.stderr.contains("pass --create"), "\(missing.stderr)")
        let restored = try cli.dedup(["restore", id, "--target-db", copy, "--create"] + connection)
        #expect(restored.status == 0, "\(restored.stderr)")
        let checksum = "SELECT md5(string_agg(md5(i::text), ',' ORDER BY id)) FROM items i"
        #expect(try PG.query(db, checksum) == PG.query(copy, checksum))

        // Not empty now: refused, unless --force.
        let again = try cli.dedup(["restore", id, "--target-db", copy] + connection)
        #expect(again.status == 1 && errorLines(again).count == 1 && again.stderr.contains("is not empty"), "\(again.stderr)")
        if format == "custom" {
            try PG.psql(copy, "DELETE FROM items WHERE id < 100")
            let forced = try cli.dedup(["restore", id, "--target-db", copy, "--force"] + connection)
            #expect(forced.status == 0, "\(forced.stderr)")
            #expect(try PG.query(db, checksum) == PG.query(copy, checksum))
        }
    }

    @Test func overTheUnixSocket() throws {
        let socket = try #require(ProcessInfo.processInfo.environment["DBBACKUP_TEST_PGSOCKET"])
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        // The folder, or the socket file itself.
        for given in [socket, socket + "/.s.PGSQL.\(PG.port)"] {
            let r = try cli.dedup(["backup-db", "postgres", "--socket", given, "--port", PG.port, "--user", PG.user, "--json"])
            #expect(r.status == 0, "\(r.stderr)")
            let m = try JSONSerialization.jsonObject(with: Data(r.stdout)) as? [String: Any]
            #expect((m?["dump"] as? [String: Any])?["server"] as? String == "socket \(given)")
        }
    }

    @Test func noPasswordOnAnyCommandLine() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let db = "bdb_pw_\(getpid())"
        defer { _ = try? PG.psql("postgres", "DROP DATABASE IF EXISTS \(db)") }
        try makeDatabase(db, rows: 400_000)
        let secret = "s3cret-\(UUID().uuidString)"
        // Watch every process's command line while the backup runs.
        let watcher = CommandLineWatcher(looking: "pg_dump")
        watcher.start()
        let r = try CLI(repo: dir + "/repo").dedup(["backup-db", db] + connection, env: ["PGPASSWORD": secret])
        let seen = watcher.stop()
        #expect(r.status == 0, "\(r.stderr)")
        #expect(!seen.isEmpty, "pg_dump was never seen running")
        #expect(seen.allSatisfy { !$0.contains(secret) }, "\(seen)")
        #expect(seen.contains { $0.contains("--no-password") })
    }

    @Test func clearOneLineErrors() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        let unknown = try cli.dedup(["backup-db", "no_such_db_\(getpid())"] + connection)
        #expect(unknown.status == 1 && errorLines(unknown).count == 1)
        #expect(unknown.stderr.contains("does not exist") && unknown.stderr.contains("check --database"), "\(unknown.stderr)")

        let unreachable = try cli.dedup(["backup-db", "postgres", "--host", "127.0.0.1", "--port", "1", "--user", PG.user])
        #expect(unreachable.status == 1 && errorLines(unreachable).count == 1)
        #expect(unreachable.stderr.contains("cannot connect to 127.0.0.1:1") && unreachable.stderr.contains("server is running"), "\(unreachable.stderr)")

        let noRole = try cli.dedup(["backup-db", "postgres", "--host", PG.host, "--port", PG.port, "--user", "no_such_role"])
        #expect(noRole.status == 1 && noRole.stderr.contains("check --user"), "\(noRole.stderr)")

        // A role that must log in with a password (pg_hba: scram for pwtest).
        let role = "pwtest"
        try PG.psql("postgres", "DROP ROLE IF EXISTS \(role); CREATE ROLE \(role) LOGIN PASSWORD 'right-one'")
        defer { _ = try? PG.psql("postgres", "DROP ROLE IF EXISTS \(role)") }
        let pw = ["--host", PG.host, "--port", PG.port, "--user", role]
        let wrong = try cli.dedup(["backup-db", "postgres"] + pw, env: ["PGPASSWORD": "wrong-one"])
        #expect(wrong.status == 1 && errorLines(wrong).count == 1, "\(wrong.stderr)")
        #expect(wrong.stderr.contains("password authentication failed") && wrong.stderr.contains("set PGPASSWORD"), "\(wrong.stderr)")
        #expect(!wrong.stderr.contains("wrong-one"))
        let right = try cli.dedup(["backup-db", "postgres"] + pw, env: ["PGPASSWORD": "right-one"])
        #expect(right.status == 0, "\(right.stderr)")

        let noTool = try cli.dedup(["backup-db", "postgres"] + connection, env: ["PATH": "/nonexistent"])
        #expect(noTool.status == 1 && errorLines(noTool) == ["dbbackup: error: pg_dump was not found in PATH; install it (Debian: apt-get install postgresql-client) or put it on PATH"], "\(noTool.stderr)")

        // A "pg_dump" that exits 0 with something that is not an archive.
        let fake = dir + "/fake-bin"
        try FileManager.default.createDirectory(atPath: fake, withIntermediateDirectories: true)
        try Data("#!/bin/sh\necho 'pg_dump (PostgreSQL) 15.0'\nexit 0\n".utf8).write(to: URL(fileURLWithPath: fake + "/pg_dump"))
        chmod(fake + "/pg_dump", 0o755)
        let notADump = try cli.dedup(["backup-db", "postgres"] + connection,
                                     env: ["PATH": fake + ":" + (ProcessInfo.processInfo.environment["PATH"] ?? "")])
        #expect(notADump.status == 1 && notADump.stderr.contains("does not start like a custom-format archive"), "\(notADump.stderr)")

        let connString = try cli.dedup(["backup-db", "dbname=postgres password=x"] + connection)
        #expect(connString.status == 1 && connString.stderr.contains("not a connection string"), "\(connString.stderr)")
        #expect(manifestCount(dir + "/repo") == 1, "only the backup with the right password")
    }

    @Test func dumpThatFailsHalfWayCommitsNothing() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let db = "bdb_kill_\(getpid())"
        defer { _ = try? PG.psql("postgres", "DROP DATABASE IF EXISTS \(db)") }
        try makeDatabase(db, rows: 400_000)
        let cli = CLI(repo: dir + "/repo")
        // Kill pg_dump's server session while it streams.
        let killer = Thread {
            for _ in 0..<200 {
                let n = (try? PG.query("postgres", "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'pg_dump' AND datname = '\(db)'")) ?? "0"
                if n != "0" { return }
                Thread.sleep(forTimeInterval: 0.02)
            }
        }
        killer.start()
        let r = try cli.dedup(["backup-db", db] + connection)
        #expect(r.status == 1, "\(r.stderr)")
        #expect(r.stderr.contains("pg_dump") && r.stderr.contains("no backup was committed"), "\(r.stderr)")
        #expect(manifestCount(dir + "/repo") == 0)
    }

    @Test func wholeClusterGoesOnPastAFailureAndSaysWhich() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let dbs = (1...2).map { "bdb_all\($0)_\(getpid())" }
        defer { for db in dbs { _ = try? PG.psql("postgres", "DROP DATABASE IF EXISTS \(db)") } }
        for db in dbs { try makeDatabase(db, rows: 2_000) }
        let cli = CLI(repo: dir + "/repo")
        let ok = try cli.dedup(["backup-db", "--all"] + connection)
        #expect(ok.status == 0, "\(ok.stderr)")
        let names = try Repository(path: dir + "/repo").manifests().map(\.name)
        #expect(names.contains("globals") && dbs.allSatisfy(names.contains), "\(names)")

        // No pg_dumpall on PATH: the globals fail, every database is still backed up.
        let bin = dir + "/bin"
        try FileManager.default.createDirectory(atPath: bin, withIntermediateDirectories: true)
        let pgDump = try #require(findExecutable("pg_dump"))
        try FileManager.default.createSymbolicLink(atPath: bin + "/pg_dump", withDestinationPath: pgDump)
        let partial = try cli.dedup(["backup-db", "--all", "--time", "2026-11-23T02:00:00Z"] + connection, env: ["PATH": bin])
        #expect(partial.status == 1)
        #expect(partial.stderr.contains("globals: pg_dumpall was not found"), "\(partial.stderr)")
        #expect(partial.stderr.contains("backups failed (globals)"), "\(partial.stderr)")
        let later = try Repository(path: dir + "/repo").manifests().filter { $0.id.hasPrefix("2026-11-23") }.map(\.name)
        #expect(dbs.allSatisfy(later.contains) && !later.contains("globals"), "\(later)")
    }
}
}


/// Samples /proc/<pid>/cmdline of every process whose command line mentions a word.
final class CommandLineWatcher: @unchecked Sendable {
    private let word: String
    private let lock = NSLock()
    private var seen = Set<String>()
    private var running = true
    private var thread: Thread?

    init(looking word: String) { self.word = word }

    func start() {
        let t = Thread { [self] in
            while lock.withLock({ running }) {
                for pid in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] where pid.allSatisfy(\.isNumber) {
                    guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline"), !data.isEmpty else { continue }
                    let line = String(decoding: data.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self)
                    if line.contains(word) { _ = lock.withLock { seen.insert(line) } }
                }
                Thread.sleep(forTimeInterval: 0.005)
            }
        }
        thread = t
        t.start()
    }

    func stop() -> Set<String> {
        lock.withLock { running = false }
        Thread.sleep(forTimeInterval: 0.05)
        return lock.withLock { seen }
    }
}
