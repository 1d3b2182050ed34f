import CLibPQ
import DedupStore
import Foundation

/// The parts of the native PostgreSQL engine that talk COPY: a consistent
/// snapshot shared by several connections, each table's rows streamed out of
/// `COPY ... TO STDOUT` as a byte source for the store, and streamed back in
/// through `COPY ... FROM STDIN`.
extension PostgresConnection {
    /// The session settings a dump's rows depend on, as pg_dump sets them:
    /// dates and intervals in ISO form, floats exact, no timeout cutting a long
    /// COPY or an idle coordinator short, `row_security` off (a table whose
    /// policies would hide rows from this role is an error, not a short table),
    /// and the rows in `encoding` (the database's; nil: leave it).
    public func setDumpSession(encoding: String?) throws {
        try execute(Self.rowSettings(encoding: encoding) + " SET row_security = off;")
    }

    /// The same settings for a session that loads rows dumped with them.
    public func setLoadSession(encoding: String?) throws {
        try execute(Self.rowSettings(encoding: encoding) + " SET synchronous_commit = off;")
    }

    /// What both a dump's and a load's sessions set.
    private static func rowSettings(encoding: String?) -> String {
        var sql = """
            SET DateStyle = ISO; SET IntervalStyle = postgres; SET extra_float_digits = 3;
            SET statement_timeout = 0; SET lock_timeout = 0; SET idle_in_transaction_session_timeout = 0;
            """
        // The encoding's name is one of the server's own (pg_encoding_to_char).
        if let encoding { sql += " SET client_encoding = '\(encoding.replacingOccurrences(of: "'", with: "''"))';" }
        return sql
    }

    /// The connected database's encoding (UTF8, LATIN1, ...).
    public func databaseEncoding() throws -> String? {
        try column("SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()").first
    }

    /// Opens a REPEATABLE READ, READ ONLY transaction and exports its snapshot:
    /// other connections that import it (`importSnapshot`) see exactly what this
    /// one sees, for as long as this transaction stays open.
    public func exportSnapshot() throws -> String {
        try execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        guard let id = try column("SELECT pg_export_snapshot()").first, !id.isEmpty else {
            throw DatabaseError.queryFailed(query: "SELECT pg_export_snapshot()", detail: "no snapshot came back")
        }
        return id
    }

    /// Opens a REPEATABLE READ, READ ONLY transaction on the snapshot another
    /// connection exported.
    public func importSnapshot(_ id: String) throws {
        try execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        try execute("SET TRANSACTION SNAPSHOT \(try quoted(literal: id))")
    }

    /// Starts `sql`, a `COPY ... TO STDOUT`; its rows are then read with `copyOutNext`.
    func startCopyOut(_ sql: String) throws {
        try run(sql, expecting: PGRES_COPY_OUT) { _ in }
    }

    /// The next row (or rows) of a COPY out, handed to `body` as libpq holds them;
    /// false at the end, after checking that the COPY ended well.
    func copyOutNext(_ sql: String, _ body: (UnsafeRawBufferPointer) -> Void) throws -> Bool {
        var buffer: UnsafeMutablePointer<CChar>?
        let n = PQgetCopyData(conn, &buffer, 0)
        if n > 0, let buffer {
            defer { PQfreemem(buffer) }
            body(UnsafeRawBufferPointer(start: buffer, count: Int(n)))
            return true
        }
        if n == -2 {
            throw DatabaseError.queryFailed(query: sql, detail: Self.oneLine(PQerrorMessage(conn)))
        }
        // -1: the COPY is done; its outcome is the result that follows.
        try finishCommand(sql)
        return false
    }

    /// Sends `source`'s bytes, in the COPY text format, to `sql`, a `COPY ... FROM
    /// STDIN`; the server's verdict on them is thrown if it refused them.
    /// Returns the bytes sent.
    @discardableResult
    public func copyIn<S: ByteSource>(_ sql: String, from source: inout S, bufferSize: Int = 1 << 20) throws -> Int64 {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bufferSize, alignment: 16)
        defer { buffer.deallocate() }
        var sent: Int64 = 0
        try copyIn(sql) { send in
            while true {
                let n = try source.read(into: buffer)
                if n == 0 { break }
                try send(UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
                sent += Int64(n)
            }
        }
        return sent
    }

    /// Runs `sql`, a `COPY ... FROM STDIN`, with the bytes `body` hands to the
    /// function it is given (on any one thread at a time). If `body` throws,
    /// the COPY is ended with an error, so that the server keeps none of it,
    /// and that error is thrown.
    public func copyIn(_ sql: String, _ body: (_ send: @escaping @Sendable (UnsafeRawBufferPointer) throws -> Void) throws -> Void) throws {
        try run(sql, expecting: PGRES_COPY_IN) { _ in }
        nonisolated(unsafe) let conn = conn
        let send: @Sendable (UnsafeRawBufferPointer) throws -> Void = { bytes in
            guard bytes.count > 0 else { return }
            let base = bytes.baseAddress?.assumingMemoryBound(to: CChar.self)
            guard PQputCopyData(conn, base, Int32(bytes.count)) == 1 else {
                throw DatabaseError.queryFailed(query: sql, detail: Self.oneLine(PQerrorMessage(conn)))
            }
        }
        do {
            try body(send)
        } catch {
            // The server must not take a table cut short for a whole one.
            _ = PQputCopyEnd(conn, "the input failed")
            try? finishCommand(sql)
            throw error
        }
        guard PQputCopyEnd(conn, nil) == 1 else {
            throw DatabaseError.queryFailed(query: sql, detail: Self.oneLine(PQerrorMessage(conn)))
        }
        try finishCommand(sql)
    }

    /// Asks the server to cancel what this connection is running (from any
    /// thread: the native restore stops the other tables' loads after a failure).
    public func cancelRunningCommand() {
        guard let cancel = PQgetCancel(conn) else { return }
        defer { PQfreeCancel(cancel) }
        var message = [CChar](repeating: 0, count: 256)
        _ = PQcancel(cancel, &message, Int32(message.count))
    }

    /// Reads the results of the command just ended; throws the server's error.
    private func finishCommand(_ sql: String) throws {
        var failure: String?
        while let r = PQgetResult(conn) {
            if PQresultStatus(r) != PGRES_COMMAND_OK, failure == nil { failure = Self.oneLine(PQresultErrorMessage(r)) }
            PQclear(r)
        }
        if let failure { throw DatabaseError.queryFailed(query: sql, detail: failure) }
    }
}

/// One table's rows, `COPY <table> TO STDOUT` in the text format, as a byte
/// source: what libpq hands over is copied straight into the reader's buffer,
/// and what does not fit waits there for the next read. A COPY that fails half
/// way (the server gone, the backend terminated) is an error naming the table,
/// never a short stream.
public final class PostgresCopyOut: ByteSource {
    private let connection: PostgresConnection
    private let sql: String
    /// The table, for messages.
    public let table: String
    private var pending = SpilledBytes()
    private var ended = false
    public private(set) var rows: Int64 = 0
    public private(set) var bytes: Int64 = 0

    /// `table`: a qualified, quoted name (`"public"."orders"`), or a query in
    /// parentheses.
    public convenience init(_ connection: PostgresConnection, table: String) throws {
        try self.init(connection, statement: "COPY \(table) TO STDOUT", table: table)
    }

    /// `statement`: a `COPY ... TO STDOUT` (`PostgresTable.copyOut`); `table` names it in messages.
    public init(_ connection: PostgresConnection, statement: String, table: String) throws {
        self.connection = connection
        self.table = table
        sql = statement
        try connection.startCopyOut(sql)
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        var filled = 0
        while filled < buffer.count {
            if !pending.isEmpty {
                filled = pending.drain(into: buffer, at: filled)
                continue
            }
            if ended { break }
            // Half a buffer is enough to hand over: the chunker reads again,
            // and a large buffer need not wait for many more rows.
            if filled > 0 && filled >= buffer.count / 2 { break }
            // Locals in the closure: no exclusivity check of this object's
            // properties for each row.
            var rowCount: Int64 = 0, byteCount: Int64 = 0
            var spill: [UInt8]?
            var at = filled
            let more: Bool
            do {
                more = try connection.copyOutNext(sql) { row in
                    rowCount += 1
                    byteCount += Int64(row.count)
                    let room = buffer.count - at
                    if row.count <= room {
                        UnsafeMutableRawBufferPointer(rebasing: buffer[at..<(at + row.count)]).copyMemory(from: row)
                        at += row.count
                    } else {
                        if room > 0 {
                            UnsafeMutableRawBufferPointer(rebasing: buffer[at...])
                                .copyMemory(from: UnsafeRawBufferPointer(rebasing: row[0..<room]))
                            at += room
                        }
                        spill = Array(row[room...])
                    }
                }
            } catch let e as DatabaseError {
                throw DatabaseError.copyFailed(table: table, detail: e.detail)
            }
            filled = at
            rows += rowCount
            bytes += byteCount
            if let spill { pending.keep(spill) }
            if !more { ended = true }
        }
        return filled
    }
}

/// A table whose rows a dump holds, with the columns COPY moves (in their
/// order; not dropped, not generated: the server computes those again).
public struct PostgresTable: Equatable, Sendable {
    /// `schema.name`, each part quoted as the server quotes identifiers.
    public var qualified: String
    /// The quoted column names.
    public var columns: [String]
    /// The table's size on disk (its heap), to dump and restore the largest first.
    public var bytes: Int64
    /// An extension's configuration table (`pg_extension_config_dump`): its
    /// rows that `condition` keeps (the extension's own condition, as pg_dump
    /// applies it) are dumped, and restored beside the rows the extension
    /// creates itself.
    public var extensionCondition: String?

    public var copyOut: String {
        guard let condition = extensionCondition else {
            return "COPY \(qualified) (\(columns.joined(separator: ", "))) TO STDOUT"
        }
        return "COPY (SELECT \(columns.joined(separator: ", ")) FROM ONLY \(qualified) \(condition)) TO STDOUT"
    }
    public var copyIn: String { "COPY \(qualified) (\(columns.joined(separator: ", "))) FROM STDIN" }
}

/// A sequence's value as a dump restores it.
public struct PostgresSequenceValue: Equatable, Sendable {
    public var qualified: String
    public var lastValue: Int64
    public var isCalled: Bool

    public init(qualified: String, lastValue: Int64, isCalled: Bool) {
        self.qualified = qualified
        self.lastValue = lastValue
        self.isCalled = isCalled
    }

    /// The statement that sets it again, as pg_dump writes it.
    public var setval: String {
        "SELECT pg_catalog.setval('\(qualified.replacingOccurrences(of: "'", with: "''"))', \(lastValue), \(isCalled));"
    }
}

extension PostgresConnection {
    /// The tables whose rows a dump of this database holds, as pg_dump picks
    /// them: ordinary tables and leaf partitions (a partitioned table holds no
    /// rows of its own), outside the system schemas, not an extension's; the
    /// largest first.
    public func tablesToCopy() throws -> [PostgresTable] {
        try rows("""
            SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), pg_relation_size(c.oid),
                   array_to_json(ARRAY(SELECT quote_ident(a.attname) FROM pg_attribute a
                         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
                         ORDER BY a.attnum))::text
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind = 'r' AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
              AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                              AND d.objid = c.oid AND d.deptype = 'e')
            ORDER BY 2 DESC, 1
            """).map { row in
            let columns = try JSONDecoder().decode([String].self, from: Data((row[2] ?? "[]").utf8))
            return PostgresTable(qualified: row[0] ?? "", columns: columns, bytes: Int64(row[1] ?? "") ?? 0)
        } + extensionConfigurationTables()
    }

    /// Extensions' configuration tables (`pg_extension_config_dump`), whose rows
    /// pg_dump dumps although the extension creates the table: with the
    /// extension's condition on them.
    func extensionConfigurationTables() throws -> [PostgresTable] {
        try rows("""
            SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), pg_relation_size(c.oid),
                   array_to_json(ARRAY(SELECT quote_ident(a.attname) FROM pg_attribute a
                         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
                         ORDER BY a.attnum))::text,
                   coalesce(x.cond, '')
            FROM pg_extension e CROSS JOIN LATERAL unnest(e.extconfig, e.extcondition) AS x(cfg, cond)
            JOIN pg_class c ON c.oid = x.cfg JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind = 'r'
            ORDER BY 2 DESC, 1
            """).map { row in
            let columns = try JSONDecoder().decode([String].self, from: Data((row[2] ?? "[]").utf8))
            var t = PostgresTable(qualified: row[0] ?? "", columns: columns, bytes: Int64(row[1] ?? "") ?? 0)
            t.extensionCondition = row[3] ?? ""
            return t
        }
    }

    /// The values of this database's sequences (an extension's left out), in
    /// one query, as pg_dump restores them: the last value and whether it was
    /// used (else the start value, not used). Sequences are not transactional:
    /// a value is the one at the moment it is read.
    public func sequenceValues() throws -> [PostgresSequenceValue] {
        try rows("""
            SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname),
                   coalesce(pg_sequence_last_value(c.oid), s.seqstart), pg_sequence_last_value(c.oid) IS NOT NULL
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_sequence s ON s.seqrelid = c.oid
            WHERE c.relkind = 'S' AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
              AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                              AND d.objid = c.oid AND d.deptype = 'e')
            ORDER BY 1
            """).map { row in
            PostgresSequenceValue(qualified: row[0] ?? "", lastValue: Int64(row[1] ?? "") ?? 0, isCalled: row[2] == "t")
        }
    }

    /// What goes with each table of `tablesToCopy` when a restore picks tables
    /// (`restore --table`), by table: the OIDs of the objects pg_dump's archive
    /// lists for it (its partitioned ancestors, their and its indexes,
    /// constraints other than foreign keys, triggers, column defaults, owned
    /// sequences), their names, its owned sequences, and its foreign keys with
    /// the tables they reference.
    public func tableDependents() throws -> [String: NativeContents.Dependents] {
        let rows = try rows("""
            WITH RECURSIVE anc(tab, rel) AS (
                SELECT c.oid, c.oid FROM pg_class c WHERE c.relkind = 'r'
              UNION
                SELECT a.tab, i.inhparent FROM anc a JOIN pg_inherits i ON i.inhrelid = a.rel),
            named AS (SELECT c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS q, n.nspname, c.relname
                      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace)
            SELECT t.q, 'rel', a.rel::text, r.nspname, r.relname, NULL FROM anc a JOIN named t ON t.oid = a.tab
                JOIN named r ON r.oid = a.rel WHERE a.rel <> a.tab
            UNION ALL SELECT t.q, 'index', x.indexrelid::text, r.nspname, r.relname, NULL FROM anc a JOIN named t ON t.oid = a.tab
                JOIN pg_index x ON x.indrelid = a.rel JOIN named r ON r.oid = x.indexrelid
            UNION ALL SELECT t.q, CASE WHEN k.contype = 'f' THEN 'fk' ELSE 'constraint' END, k.oid::text, NULL, k.conname,
                    (SELECT q FROM named WHERE oid = k.confrelid)
                FROM anc a JOIN named t ON t.oid = a.tab JOIN pg_constraint k ON k.conrelid = a.rel
            UNION ALL SELECT t.q, 'trigger', g.oid::text, NULL, NULL, NULL FROM anc a JOIN named t ON t.oid = a.tab
                JOIN pg_trigger g ON g.tgrelid = a.rel AND NOT g.tgisinternal
            UNION ALL SELECT t.q, 'default', d.oid::text, NULL, NULL, NULL FROM anc a JOIN named t ON t.oid = a.tab
                JOIN pg_attrdef d ON d.adrelid = a.rel
            UNION ALL SELECT t.q, 'sequence', s.objid::text, r.nspname, r.relname, r.q FROM anc a JOIN named t ON t.oid = a.tab
                JOIN pg_depend s ON s.refobjid = a.rel AND s.classid = 'pg_class'::regclass
                    AND s.refclassid = 'pg_class'::regclass AND s.deptype IN ('a', 'i')
                JOIN named r ON r.oid = s.objid JOIN pg_class sc ON sc.oid = s.objid AND sc.relkind = 'S'
            UNION ALL SELECT t.q, 'self', t.oid::text, t.nspname, t.relname, NULL FROM named t JOIN pg_class c ON c.oid = t.oid
                WHERE c.relkind = 'r'
            """)
        var out = [String: NativeContents.Dependents]()
        for row in rows {
            guard let table = row[0], let kind = row[1], let oid = row[2].flatMap({ UInt32($0) }) else { continue }
            var d = out[table] ?? NativeContents.Dependents()
            let name = row[3].flatMap { schema in row[4].map { NativeContents.ArchiveName(schema: schema, name: $0) } }
            switch kind {
            case "fk":
                if let referenced = row[5] { d.foreignKeys.append(.init(oid: oid, references: referenced)) }
                out[table] = d
                continue
            case "sequence":
                if let q = row[5] { d.sequences.append(q) }
            default: break
            }
            d.oids.append(oid)
            if let name { d.names.append(name) }
            out[table] = d
        }
        return out
    }

    /// The populated materialized views outside the system schemas (an
    /// extension's left out), oldest first: one built on another comes after it.
    public func populatedMaterializedViews() throws -> [String] {
        try column("""
            SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname)
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind = 'm' AND c.relispopulated AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'
              AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                              AND d.objid = c.oid AND d.deptype = 'e')
            ORDER BY c.oid
            """)
    }

    /// Large objects in this database.
    public func largeObjectCount() throws -> Int {
        Int(try column("SELECT count(*) FROM pg_largeobject_metadata").first ?? "") ?? 0
    }
}

/// Bytes of a row that did not fit the reader's buffer, handed out first by
/// the next read (the COPY and SELECT sources of the native engine).
struct SpilledBytes {
    private var bytes: [UInt8] = []
    private var start = 0

    var isEmpty: Bool { start >= bytes.count }

    /// Keeps `more` for the next reads (what was kept before is handed out).
    mutating func keep(_ more: [UInt8]) {
        bytes = more
        start = 0
    }

    /// Makes the next bytes to hand out those `body` appends (the storage of
    /// the last ones reused).
    mutating func refill(_ body: (inout [UInt8]) throws -> Void) rethrows {
        bytes.removeAll(keepingCapacity: true)
        start = 0
        try body(&bytes)
    }

    /// Copies as much as fits into `buffer` from `filled` on; returns the new fill.
    mutating func drain(into buffer: UnsafeMutableRawBufferPointer, at filled: Int) -> Int {
        let n = min(buffer.count - filled, bytes.count - start)
        guard n > 0 else { return filled }
        bytes.withUnsafeBytes {
            UnsafeMutableRawBufferPointer(rebasing: buffer[filled..<(filled + n)])
                .copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[start..<(start + n)]))
        }
        start += n
        return filled + n
    }
}
