import DatabaseDumps
import DedupStore
import Foundation
import Testing

/// The native engine's COPY parts against the real server: one snapshot seen by
/// every connection that imports it, rows out and back in exactly, and a COPY
/// cut short an error naming its table, never a short stream.
extension PostgresServerTests {
@Suite struct PostgresCopyTests {
    static var address: ServerAddress { ServerAddress(host: PG.host, port: Int(PG.port), user: PG.user) }

    /// A database made for one test, dropped after it.
    func withDatabase(_ setup: String, _ body: (String) throws -> Void) throws {
        let db = "copy_\(getpid())_\(UInt32.random(in: 0...UInt32.max))"
        try PG.psql("postgres", "CREATE DATABASE \(db)")
        defer { _ = try? PG.psql("postgres", "DROP DATABASE IF EXISTS \(db) WITH (FORCE)") }
        try PG.psql(db, setup)
        try body(db)
    }

    /// Reads a source to its end with reads of `size` bytes.
    func drain<S: ByteSource>(_ source: inout S, size: Int) throws -> [UInt8] {
        var out = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: size)
        while true {
            let n = try buffer.withUnsafeMutableBytes { try source.read(into: $0) }
            if n == 0 { return out }
            out += buffer[0..<n]
        }
    }

    /// Reads a source to its end with reads of the sizes given, in turn (a
    /// reader's buffer may have one byte left).
    func drain<S: ByteSource>(_ source: inout S, sizes: [Int]) throws -> [UInt8] {
        var out = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: sizes.max() ?? 1)
        for k in 0... {
            let size = sizes[k % sizes.count]
            let n = try buffer.withUnsafeMutableBytes { try source.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<size])) }
            if n == 0 { return out }
            out += buffer[0..<n]
        }
        return out
    }

    struct Bytes: ByteSource {
        var bytes: [UInt8]
        var at = 0
        /// Throws once this many bytes were read (a dump failing half way).
        var failAfter: Int?
        mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
            if let failAfter, at >= failAfter { throw DatabaseError.invalidArgument("the input broke off") }
            let n = min(buffer.count, bytes.count - at, (failAfter ?? Int.max) - at)
            bytes.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[at..<(at + n)])) }
            at += n
            return n
        }
    }

    @Test func everyConnectionThatImportsTheSnapshotCopiesWhatItSaw() throws {
        try withDatabase("CREATE TABLE t (id int PRIMARY KEY, v int); INSERT INTO t SELECT g, g FROM generate_series(1, 5000) g;") { db in
            let coordinator = try PostgresConnection(Self.address, database: db)
            let snapshot = try coordinator.exportSnapshot()
            // Changed after the snapshot, committed at once.
            try PG.psql(db, "INSERT INTO t SELECT g, g FROM generate_series(5001, 6000) g; UPDATE t SET v = 0 WHERE id <= 100;")
            for _ in 0..<2 {
                let worker = try PostgresConnection(Self.address, database: db)
                try worker.importSnapshot(snapshot)
                var rows = try PostgresCopyOut(worker, table: "public.t")
                let text = String(decoding: try drain(&rows, size: 64 << 10), as: UTF8.self)
                let lines = text.split(separator: "\n")
                #expect(lines.count == 5000 && rows.rows == 5000)
                let sum = lines.reduce(0) { $0 + (Int($1.split(separator: "\t")[1]) ?? 0) }
                #expect(sum == 5000 * 5001 / 2, "the rows as of the snapshot, before the update")
            }
            #expect(try PG.query(db, "SELECT count(*) FROM t") == "6000")
        }
    }

    @Test func rowsOfEveryKindGoOutAndBackInExactly() throws {
        let setup = """
            CREATE TABLE src (id int, b bytea, t text, n numeric, j jsonb, a int[], ts timestamptz, nul text);
            INSERT INTO src SELECT g, decode(md5(g::text) || repeat('00ff', g % 50), 'hex'),
                E'tab\\there, newline\\nthere, backslash \\\\ ünïcödé ✓ ' || g, g * 1.5 / 7, jsonb_build_object('k', g, 'q', 'x"y'),
                ARRAY[g, -g, NULL], '2026-12-04 10:00:00+00'::timestamptz + g * interval '1 minute', NULL
              FROM generate_series(1, 20000) g;
            CREATE TABLE dst (LIKE src);
            """
        try withDatabase(setup) { db in
            let c = try PostgresConnection(Self.address, database: db)
            // Reads of 7 bytes cut rows anywhere; reads of 1 MiB take many rows at once.
            var small = try PostgresCopyOut(c, table: "public.src")
            let bytes = try drain(&small, size: 7)
            var large = try PostgresCopyOut(c, table: "public.src")
            #expect(try drain(&large, size: 1 << 20) == bytes)
            // A read of one byte is no end of input, wherever it falls.
            var odd = try PostgresCopyOut(c, table: "public.src")
            #expect(try drain(&odd, sizes: [1, 1, 2, 3, 1, 65536, 1, 4097]) == bytes)
            #expect(small.bytes == Int64(bytes.count) && small.rows == 20000)
            var source = Bytes(bytes: bytes)
            let sent = try c.copyIn("COPY public.dst FROM STDIN", from: &source, bufferSize: 4096)
            #expect(sent == Int64(bytes.count))
            let digest = "SELECT md5(string_agg(x::text, '|' ORDER BY id)) FROM %@ x"
            #expect(try PG.query(db, digest.replacingOccurrences(of: "%@", with: "dst"))
                    == PG.query(db, digest.replacingOccurrences(of: "%@", with: "src")))
        }
    }

    @Test func anInputThatFailsHalfWayLoadsNothing() throws {
        try withDatabase("CREATE TABLE t (id int, v text); CREATE TABLE d (LIKE t); INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 50000) g;") { db in
            let c = try PostgresConnection(Self.address, database: db)
            var rows = try PostgresCopyOut(c, table: "public.t")
            let bytes = try drain(&rows, size: 1 << 20)
            var broken = Bytes(bytes: bytes, failAfter: bytes.count / 2)
            #expect(throws: DatabaseError.invalidArgument("the input broke off")) {
                try c.copyIn("COPY public.d FROM STDIN", from: &broken)
            }
            #expect(try PG.query(db, "SELECT count(*) FROM d") == "0")
            // The connection is usable again.
            #expect(try c.column("SELECT 1") == ["1"])
        }
    }

    /// The tables and sequences a dump holds, as pg_dump picks them: leaf
    /// partitions, not their parent; no generated or dropped column; quoted
    /// names; sequences with is_called; large objects counted (not taken yet).
    /// Copied into a database made from the schema alone, every table and
    /// sequence is the source's again.
    @Test func theTablesAndSequencesOfADumpCopyIntoItsSchemaExactly() throws {
        let setup = """
            CREATE TABLE plain (id serial PRIMARY KEY, v text, gone int, twice int GENERATED ALWAYS AS (id * 2) STORED);
            ALTER TABLE plain DROP COLUMN gone;
            INSERT INTO plain (v) SELECT repeat('p', g % 40) FROM generate_series(1, 3000) g;
            CREATE TABLE "Mixed Case" ("Key" int, "a,b" text);
            INSERT INTO "Mixed Case" VALUES (1, 'x'), (2, NULL);
            CREATE TABLE parted (k int, v text) PARTITION BY RANGE (k);
            CREATE TABLE parted_low PARTITION OF parted FOR VALUES FROM (0) TO (100);
            CREATE TABLE parted_high PARTITION OF parted FOR VALUES FROM (100) TO (1000);
            INSERT INTO parted SELECT g, 'v' || g FROM generate_series(0, 999) g;
            CREATE SEQUENCE untouched;
            SELECT lo_from_bytea(0, 'a large object');
            """
        try withDatabase(setup) { db in
            let c = try PostgresConnection(Self.address, database: db)
            let tables = try c.tablesToCopy()
            #expect(Set(tables.map(\.qualified)) == ["public.plain", "public.\"Mixed Case\"", "public.parted_low", "public.parted_high"])
            #expect(tables.first?.qualified == "public.plain", "the largest first")
            #expect(tables.first { $0.qualified == "public.plain" }?.columns == ["id", "v"])
            #expect(tables.first { $0.qualified.contains("Mixed") }?.columns == ["\"Key\"", "\"a,b\""])
            let sequences = try c.sequenceValues()
            #expect(sequences == [
                PostgresSequenceValue(qualified: "public.plain_id_seq", lastValue: 3000, isCalled: true),
                PostgresSequenceValue(qualified: "public.untouched", lastValue: 1, isCalled: false),
            ])
            #expect(try c.largeObjectCount() == 1)

            let copy = db + "_copy"
            try PG.psql("postgres", "CREATE DATABASE \(copy)")
            defer { _ = try? PG.psql("postgres", "DROP DATABASE IF EXISTS \(copy) WITH (FORCE)") }
            let dir = tempDir(); defer { removeDir(dir) }
            let schema = dir + "/schema.sql"
            try PG.run(["pg_dump", "--schema-only", "-h", PG.host, "-p", PG.port, "-U", PG.user, "-f", schema, db])
            try PG.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", PG.host, "-p", PG.port, "-U", PG.user, "-d", copy, "-f", schema])
            let target = try PostgresConnection(Self.address, database: copy)
            for table in tables {
                var rows = try PostgresCopyOut(c, statement: table.copyOut, table: table.qualified)
                try target.copyIn(table.copyIn, from: &rows)
            }
            for s in sequences { _ = try target.column(s.setval) }
            for name in ["plain", "\"Mixed Case\"", "parted"] {
                let digest = "SELECT md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM \(name) x"
                #expect(try PG.query(copy, digest) == PG.query(db, digest), "\(name)")
            }
            #expect(try PG.query(copy, "SELECT nextval('plain_id_seq') || ',' || nextval('untouched')") == "3001,1")
        }
    }

    @Test func aCopyWhoseBackendIsTerminatedFailsNamingTheTable() throws {
        try withDatabase("CREATE TABLE big (id int, v text); INSERT INTO big SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 400000) g;") { db in
            let c = try PostgresConnection(Self.address, database: db)
            let pid = try c.column("SELECT pg_backend_pid()").first ?? ""
            let rows = try PostgresCopyOut(c, table: "public.big")
            var buffer = [UInt8](repeating: 0, count: 64 << 10)
            _ = try buffer.withUnsafeMutableBytes { try rows.read(into: $0) }
            try PG.psql("postgres", "SELECT pg_terminate_backend(\(pid))")
            var failure: DatabaseError?
            do {
                while try buffer.withUnsafeMutableBytes({ try rows.read(into: $0) }) > 0 {}
            } catch let e as DatabaseError {
                failure = e
            }
            guard case .copyFailed(let table, let detail)? = failure else {
                Issue.record("the COPY ended without an error after \(rows.rows) rows: \(String(describing: failure))")
                return
            }
            #expect(table == "public.big" && !detail.isEmpty)
            #expect(rows.rows < 400000)
        }
    }
}
}
