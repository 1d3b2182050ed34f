import CMariaDB
import DedupStore
import Foundation

/// The native engine's MySQL/MariaDB parts: one snapshot on several
/// connections (mydumper's way), each table's rows streamed out as the text
/// `LOAD DATA` reads (tab between fields, newline between rows, backslash
/// escapes, `\N` for NULL), and streamed back in through `LOAD DATA LOCAL
/// INFILE` from a source of ours.
extension MariaDBConnection {
    /// The session settings the rows depend on, as mysqldump sets them: bytes
    /// as they are stored (`SET NAMES binary`: no conversion to a connection
    /// character set), TIMESTAMP values in UTC, and room for long reads.
    public func setDumpSession() throws {
        try execute("SET NAMES binary")
        try execute("SET SESSION time_zone = '+00:00', SESSION net_write_timeout = 3600")
    }

    /// The same for a session that loads such rows: UTC, a 0 in an
    /// AUTO_INCREMENT column kept as 0 (mysqldump's `NO_AUTO_VALUE_ON_ZERO`),
    /// and no foreign key or unique checks while a table's rows go in.
    public func setLoadSession() throws {
        try execute("SET NAMES binary")
        try execute(
            "SET SESSION time_zone = '+00:00', SESSION sql_mode = 'NO_AUTO_VALUE_ON_ZERO', SESSION foreign_key_checks = 0, SESSION unique_checks = 0, SESSION net_read_timeout = 3600"
        )
    }

    /// A REPEATABLE READ transaction with a consistent snapshot, read only.
    public func startConsistentSnapshot() throws {
        try execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        try execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
    }

    /// The base tables of `database` with the columns a dump carries (not
    /// generated ones), their engine, size, and a single integer primary key
    /// when they have one; the largest first.
    public func tablesToCopy(_ database: String) throws -> [MariaDBTable] {
        let db = quoted(literal: database)
        let tables = try rows("""
            SELECT table_name, engine, COALESCE(data_length, 0) FROM information_schema.tables
            WHERE table_schema = \(db) AND table_type = 'BASE TABLE' ORDER BY 3 DESC, 1
            """)
        let columns = try rows("""
            SELECT table_name, column_name, column_key, data_type FROM information_schema.columns
            WHERE table_schema = \(db) AND extra NOT LIKE '%GENERATED%' ORDER BY table_name, ordinal_position
            """)
        let keys = try rows("""
            SELECT table_name, COUNT(*) FROM information_schema.key_column_usage
            WHERE table_schema = \(db) AND constraint_name = 'PRIMARY' GROUP BY table_name
            """)
        var byTable = [String: [[String]]]()
        for c in columns { byTable[c[0], default: []].append(c) }
        let keyWidth = Dictionary(keys.map { ($0[0], Int($0[1]) ?? 0) }, uniquingKeysWith: { a, _ in a })
        let integers: Set<String> = ["tinyint", "smallint", "mediumint", "int", "bigint"]
        return tables.map { t in
            let cols = byTable[t[0]] ?? []
            let key = keyWidth[t[0]] == 1 ? cols.first { $0[2] == "PRI" && integers.contains($0[3]) }?[1] : nil
            return MariaDBTable(name: t[0], engine: t[1], columns: cols.map { Self.quoted(identifier: $0[1]) },
                                bytes: Int64(t[2]) ?? 0, integerKey: key.map { Self.quoted(identifier: $0) })
        }
    }

    /// The smallest and largest value of `column` in `table` (nil when empty).
    func range(of column: String, in table: String) throws -> (Int64, Int64)? {
        guard let row = try rows("SELECT MIN(\(column)), MAX(\(column)) FROM \(table)").first, row.count == 2,
              let low = Int64(row[0]), let high = Int64(row[1]) else { return nil }
        return (low, high)
    }

    /// Runs `sql`, a `LOAD DATA LOCAL INFILE`, with `source`'s bytes as the
    /// file; an error of the source fails the statement (the server keeps none
    /// of a transactional table's rows) and is thrown.
    public func loadData<S: ByteSource>(_ sql: String, from source: S) throws {
        let feeder = InfileFeeder(AnySource(source))
        let userdata = Unmanaged.passRetained(feeder)
        defer { userdata.release() }
        mysql_set_local_infile_handler(
            mysql,
            { ptr, _, userdata in
                ptr?.pointee = userdata
                return 0
            },
            { userdata, buffer, length in
                guard let userdata, let buffer else { return -1 }
                let f = Unmanaged<InfileFeeder>.fromOpaque(userdata).takeUnretainedValue()
                return f.read(UnsafeMutableRawBufferPointer(start: buffer, count: Int(length)))
            },
            { _ in },
            { userdata, message, length in
                guard let userdata, let message, length > 0 else { return 2000 }
                let f = Unmanaged<InfileFeeder>.fromOpaque(userdata).takeUnretainedValue()
                let text = Array((f.failureText ?? "the input failed").utf8.prefix(Int(length) - 1)) + [0]
                text.withUnsafeBufferPointer { b in
                    b.withMemoryRebound(to: CChar.self) { c in
                        guard let base = c.baseAddress else { return }
                        message.update(from: base, count: c.count)
                    }
                }
                return 2000
            },
            userdata.toOpaque())
        defer { mysql_set_local_infile_default(mysql) }
        let failed = mysql_query(mysql, sql) != 0
        if let failure = feeder.failure { throw failure }
        if failed { throw DatabaseError.queryFailed(query: sql, detail: String(cString: mysql_error(mysql))) }
    }
}

/// Feeds a source to libmariadb's LOCAL INFILE callbacks.
private final class InfileFeeder {
    private var source: AnySource
    private(set) var failure: Error?
    var failureText: String? { failure.map { ($0 as? DedupError)?.message ?? "\($0)" } }

    init(_ source: AnySource) { self.source = source }

    func read(_ buffer: UnsafeMutableRawBufferPointer) -> Int32 {
        do {
            return Int32(try source.read(into: buffer))
        } catch {
            failure = error
            return -1
        }
    }
}

/// A table whose rows a native dump of MySQL/MariaDB holds.
public struct MariaDBTable: Equatable, Sendable {
    /// Unquoted, as information_schema names it.
    public var name: String
    public var engine: String
    /// Back-quoted, not generated.
    public var columns: [String]
    public var bytes: Int64
    /// The back-quoted primary key when it is one integer column (a large
    /// table is dumped in ranges of it).
    public var integerKey: String?

    public var quoted: String { MariaDBConnection.quoted(identifier: name) }
}

/// A SELECT's rows as the text LOAD DATA reads, streamed (`mysql_use_result`):
/// a table's rows straight from the server to the store. A read that fails
/// half way (the connection killed) is an error naming the table, never a
/// short stream.
public final class MariaDBRowsOut: ByteSource {
    private let connection: MariaDBConnection
    public let table: String
    private var result: UnsafeMutablePointer<MYSQL_RES>?
    private let columns: Int
    private var pending = SpilledBytes()
    private var ended = false
    public private(set) var rows: Int64 = 0

    public init(_ connection: MariaDBConnection, query: String, table: String) throws {
        self.connection = connection
        self.table = table
        guard mysql_query(connection.mysql, query) == 0 else {
            throw DatabaseError.copyFailed(table: table, detail: String(cString: mysql_error(connection.mysql)))
        }
        guard let r = mysql_use_result(connection.mysql) else {
            throw DatabaseError.copyFailed(table: table, detail: String(cString: mysql_error(connection.mysql)))
        }
        result = r
        columns = Int(mysql_num_fields(r))
    }

    deinit { if let result { mysql_free_result(result) } }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        var filled = 0
        while filled < buffer.count {
            if !pending.isEmpty {
                filled = pending.drain(into: buffer, at: filled)
                continue
            }
            if ended || (filled > 0 && filled >= buffer.count / 2) { break }
            guard let result, let fields = mysql_fetch_row(result) else {
                if mysql_errno(connection.mysql) != 0 {
                    throw DatabaseError.copyFailed(table: table, detail: String(cString: mysql_error(connection.mysql)))
                }
                ended = true
                if let result { mysql_free_result(result) }
                self.result = nil
                break
            }
            rows += 1
            guard let lengths = mysql_fetch_lengths(result) else {
                throw DatabaseError.copyFailed(table: table, detail: "no field lengths for a row")
            }
            // The row's text, handed out by the reads from `pending`.
            let columns = columns
            pending.refill { text in
                for c in 0..<columns {
                    if c > 0 { text.append(0x09) }
                    guard let field = fields[c] else {
                        text.append(0x5C)
                        text.append(0x4E)
                        continue
                    }
                    let bytes = UnsafeRawBufferPointer(start: field, count: Int(lengths[c]))
                    for b in bytes {
                        switch b {
                        case 0x5C: text.append(0x5C); text.append(0x5C)
                        case 0x09: text.append(0x5C); text.append(0x74)
                        case 0x0A: text.append(0x5C); text.append(0x6E)
                        case 0x0D: text.append(0x5C); text.append(0x72)
                        case 0x00: text.append(0x5C); text.append(0x30)
                        default: text.append(b)
                        }
                    }
                }
                text.append(0x0A)
            }
        }
        return filled
    }
}

/// Rows in LOAD DATA's text (`MariaDBRowsOut`) as INSERT statements of at most
/// about `batchBytes`, for a script the mariadb client loads.
public struct MariaDBInsertWriter {
    public let table: String
    public let columns: [String]
    public let batchBytes: Int
    private var statement: [UInt8] = []
    private var rowsInStatement = 0
    private var field: [UInt8] = []
    private var row: [[UInt8]?] = []
    private var escaped = false
    private var inNull = false

    public init(table: String, columns: [String], batchBytes: Int = 1 << 20) {
        self.table = table
        self.columns = columns
        self.batchBytes = batchBytes
    }

    /// Feeds text; complete statements go to `emit`.
    public mutating func feed(_ bytes: UnsafeRawBufferPointer, emit: ([UInt8]) throws -> Void) throws {
        for b in bytes {
            if escaped {
                escaped = false
                switch b {
                case 0x4E where field.isEmpty: inNull = true
                case 0x74: field.append(0x09)
                case 0x6E: field.append(0x0A)
                case 0x72: field.append(0x0D)
                case 0x30: field.append(0x00)
                default: field.append(b)
                }
                continue
            }
            switch b {
            case 0x5C: escaped = true
            case 0x09: endField()
            case 0x0A:
                endField()
                try endRow(emit)
            default: field.append(b)
            }
        }
    }

    /// The last statement.
    public mutating func finish(emit: ([UInt8]) throws -> Void) throws {
        if !statement.isEmpty {
            statement += Array(";\n".utf8)
            try emit(statement)
            statement.removeAll(keepingCapacity: true)
        }
    }

    private mutating func endField() {
        row.append(inNull ? nil : field)
        field.removeAll(keepingCapacity: true)
        inNull = false
    }

    private mutating func endRow(_ emit: ([UInt8]) throws -> Void) throws {
        if statement.isEmpty {
            statement = Array("INSERT INTO \(table) (\(columns.joined(separator: ", "))) VALUES\n(".utf8)
        } else {
            statement += Array(",\n(".utf8)
        }
        for (k, value) in row.enumerated() {
            if k > 0 { statement.append(0x2C) }
            guard let value else {
                statement += Array("NULL".utf8)
                continue
            }
            statement.append(0x27)
            for b in value {
                switch b {
                case 0x27: statement += [0x5C, 0x27]
                case 0x5C: statement += [0x5C, 0x5C]
                case 0x00: statement += [0x5C, 0x30]
                case 0x0A: statement += [0x5C, 0x6E]
                case 0x0D: statement += [0x5C, 0x72]
                case 0x1A: statement += [0x5C, 0x5A]
                default: statement.append(b)
                }
            }
            statement.append(0x27)
        }
        statement.append(0x29)
        row.removeAll(keepingCapacity: true)
        rowsInStatement += 1
        if statement.count >= batchBytes {
            statement += Array(";\n".utf8)
            try emit(statement)
            statement.removeAll(keepingCapacity: true)
            rowsInStatement = 0
        }
    }
}
