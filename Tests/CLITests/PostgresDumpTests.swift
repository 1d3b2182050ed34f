import DedupStore
import Foundation
import Testing

/// The real thing: pg_dump from the PostgreSQL server that tools/test starts,
/// streamed into the store, restored, and loaded back into a new database.
extension PostgresServerTests {
@Suite struct PostgresDumpTests {
    @Test func pgDumpStreamsInDeduplicatesAndRestoresIntoANewDatabase() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let db = "dedup_src_\(getpid())", copy = "dedup_copy_\(getpid())"
        defer {
            _ = try? PG.psql("postgres", "DROP DATABASE IF EXISTS \(db)")
            _ = try? PG.psql("postgres", "DROP DATABASE IF EXISTS \(copy)")
        }
        try PG.psql("postgres", "DROP DATABASE IF EXISTS \(db)")
        try PG.psql("postgres", "CREATE DATABASE \(db)")
        try PG.psql(db, """
            CREATE TABLE items (id int PRIMARY KEY, label text, blob bytea, note text);
            INSERT INTO items SELECT g, 'item ' || g || ' ünïcödé ✓', decode(md5(g::text) || md5((g*7)::text), 'hex'),
                CASE WHEN g % 10 = 0 THEN NULL ELSE repeat(md5(g::text), 3) END FROM generate_series(1, 60000) g;
            INSERT INTO items VALUES (0, 'big row', decode(repeat(md5('x'), 100000), 'hex'), NULL);
            """)
        let cli = CLI(repo: dir + "/repo")
        let dumpArgs = ["pg_dump", "-Fp", "-h", PG.host, "-p", PG.port, "-U", PG.user, db]
        let first = try cli.dedup(["backup", "--name", db, "--db-type", "postgres", "--db-name", db,
                                   "--time", "2026-11-20T02:00:00Z", "--from-command", "--"] + dumpArgs)
        #expect(first.status == 0, "\(first.stderr)")
        // A night's changes: a new table, and a run of rows updated. (Rows inserted
        // into an old table land in free space all over the heap, so pg_dump
        // prints them scattered; that is a property of the data, not of the store.)
        try PG.psql(db, """
            CREATE TABLE audit (id int, what text);
            INSERT INTO audit SELECT g, 'night two ' || g FROM generate_series(1, 1000) g;
            UPDATE items SET note = 'changed' WHERE id BETWEEN 30000 AND 30100;
            """)
        let second = try cli.dedup(["backup", "--name", db, "--db-type", "postgres", "--db-name", db,
                                    "--time", "2026-11-21T02:00:00Z", "--json", "--from-command", "--"] + dumpArgs)
        #expect(second.status == 0, "\(second.stderr)")
        let (size, newBytes) = try storedAnew(second)
        #expect(size > 5_000_000)
        #expect(Double(newBytes) < 0.2 * Double(size), "night two stored \(newBytes) of \(size) bytes anew")

        // Byte for byte against a fresh pg_dump of the unchanged database, but for
        // the random \restrict key that pg_dump 15.14+ prints in every dump.
        let fresh = try PG.run(dumpArgs)
        let restored = try cli.dedup(["restore", "2026-11-21", "-"])
        #expect(restored.status == 0)
        #expect(restored.stdout.count == fresh.count)
        #expect(sha256(PG.withoutRestrictKey(restored.stdout)) == sha256(PG.withoutRestrictKey(fresh)),
                "restored dump differs from pg_dump's output")

        // Load it into a new database and compare every row by checksum.
        try PG.psql("postgres", "CREATE DATABASE \(copy);")
        let out = dir + "/restored.sql"
        #expect(try cli.dedup(["restore", "2026-11-21", out]).status == 0)
        _ = try PG.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", PG.host, "-p", PG.port, "-U", PG.user, "-d", copy, "-f", out])
        let checksum = "SELECT md5(string_agg(md5(i::text), ',' ORDER BY id)) FROM items i"
        #expect(try PG.query(db, checksum) == PG.query(copy, checksum))
        #expect(try PG.query(copy, "SELECT count(*) FROM items") == "60001")
        #expect(try PG.query(copy, "SELECT count(*) FROM audit") == "1000")
    }
}

}

enum PG {
    static let env = ProcessInfo.processInfo.environment
    static var available: Bool { env["DBBACKUP_TEST_PGHOST"] != nil }
    static var host: String { env["DBBACKUP_TEST_PGHOST"] ?? "127.0.0.1" }
    static var port: String { env["DBBACKUP_TEST_PGPORT"] ?? "5432" }
    static var user: String { env["DBBACKUP_TEST_PGUSER"] ?? "postgres" }

    /// Drops the \restrict and \unrestrict lines (a random key per dump).
    static func withoutRestrictKey(_ dump: [UInt8]) -> [UInt8] {
        dump.split(separator: 0x0A, omittingEmptySubsequences: false)
            .filter { !$0.starts(with: Array("\\restrict ".utf8)) && !$0.starts(with: Array("\\unrestrict ".utf8)) }
            .joined(separator: [0x0A]).map { $0 }
    }

    struct Failed: Error, CustomStringConvertible { var description: String }

    @discardableResult
    static func run(_ args: [String]) throws -> [UInt8] {
        let r = try CLI.runExecutable(args)
        guard r.status == 0 else { throw Failed(description: "\(args.joined(separator: " ")): \(r.stderr)") }
        return r.stdout
    }

    static func psql(_ db: String, _ sql: String) throws {
        try run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", port, "-U", user, "-d", db, "-c", sql])
    }

    static func query(_ db: String, _ sql: String) throws -> String {
        let out = try run(["psql", "-X", "-At", "-h", host, "-p", port, "-U", user, "-d", db, "-c", sql])
        return String(decoding: out, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
