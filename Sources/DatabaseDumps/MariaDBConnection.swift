import CMariaDB
import Foundation

/// A libmariadb connection to MySQL or MariaDB: the connection check, the server's
/// version, databases and sizes, and where its binary log stands. Credentials come
/// the way the ecosystem has them: the [client] group of the option files
/// (~/.my.cnf), and MYSQL_PWD from the environment; never a command line.
public final class MariaDBConnection {
    let mysql: UnsafeMutablePointer<MYSQL>
    public let address: ServerAddress

    /// `localInfile`: this connection may send a file of ours to `LOAD DATA
    /// LOCAL INFILE` (the native engine's restore; off otherwise).
    public init(_ address: ServerAddress, database: String?, localInfile: Bool = false) throws {
        self.address = address
        guard let m = mysql_init(nil) else {
            throw DatabaseError.connectionFailed(
                server: address.mariaLabel, detail: "libmariadb could not allocate a connection",
                hint: "the machine is out of memory")
        }
        mysql_options(m, MYSQL_READ_DEFAULT_GROUP, "client")
        var timeout: UInt32 = 10
        mysql_options(m, MYSQL_OPT_CONNECT_TIMEOUT, &timeout)
        var local: UInt32 = localInfile ? 1 : 0
        mysql_options(m, MYSQL_OPT_LOCAL_INFILE, &local)
        let password = ProcessInfo.processInfo.environment["MYSQL_PWD"]
        // With neither host nor socket, libmariadb uses its default socket; a host
        // of "localhost" also means the socket, so a TCP address is kept as given.
        let ok = mysql_real_connect(
            m, address.socket == nil ? address.host : "localhost", address.user, password, database,
            UInt32(address.port ?? 0), address.socket, 0)
        guard ok != nil else {
            let detail = String(cString: mysql_error(m))
            let code = mysql_errno(m)
            mysql_close(m)
            throw DatabaseError.connectionFailed(
                server: address.mariaLabel, detail: detail, hint: Self.hint(code: code))
        }
        mysql = m
    }

    deinit { mysql_close(mysql) }

    /// e.g. "10.11.19-MariaDB-0+deb12u1-log".
    public var serverVersion: String { String(cString: mysql_get_server_info(mysql)) }

    /// The server's id of this connection (`KILL QUERY` takes it).
    public var threadID: UInt { UInt(mysql_thread_id(mysql)) }

    /// MariaDB or MySQL, from the version string.
    public var engine: DatabaseEngine { serverVersion.lowercased().contains("mariadb") ? .mariadb : .mysql }

    /// The first column of every row (NULL as "").
    public func column(_ sql: String) throws -> [String] {
        try rows(sql).map { $0.first ?? "" }
    }

    /// Every row, every column (NULL as "").
    public func rows(_ sql: String) throws -> [[String]] {
        guard mysql_query(mysql, sql) == 0 else {
            throw DatabaseError.queryFailed(query: sql, detail: String(cString: mysql_error(mysql)))
        }
        guard let result = mysql_store_result(mysql) else { return [] }
        defer { mysql_free_result(result) }
        let columns = Int(mysql_num_fields(result))
        var out = [[String]]()
        while let row = mysql_fetch_row(result) {
            out.append((0..<columns).map { row[$0].map { String(cString: $0) } ?? "" })
        }
        return out
    }

    /// The binary log file being written and the position in it (SHOW MASTER
    /// STATUS); nil when the binary log is off.
    public func currentBinlog() throws -> BinlogPosition? {
        guard let row = try rows("SHOW MASTER STATUS").first, row.count >= 2, let pos = UInt64(row[1]) else {
            return nil
        }
        return BinlogPosition(file: row[0], position: pos)
    }

    /// The binary logs the server still has (SHOW BINARY LOGS): name and size.
    public func binaryLogs() throws -> [(file: String, size: Int64)] {
        try rows("SHOW BINARY LOGS").compactMap { r in r.count >= 2 ? (r[0], Int64(r[1]) ?? 0) : nil }
    }

    /// @@server_id, which ties dumps and binlogs of one server together.
    public func serverID() throws -> UInt32? { UInt32(try column("SELECT @@server_id").first ?? "") }

    /// Runs a statement that returns no rows.
    public func execute(_ sql: String) throws {
        guard mysql_query(mysql, sql) == 0 else {
            throw DatabaseError.queryFailed(query: sql, detail: String(cString: mysql_error(mysql)))
        }
    }

    /// `name` as a back-quoted identifier.
    public static func quoted(identifier name: String) -> String {
        "`" + name.replacingOccurrences(of: "`", with: "``") + "`"
    }

    /// `text` as a string literal, escaped by libmariadb for this connection.
    public func quoted(literal text: String) -> String {
        let bytes = Array(text.utf8)
        var out = [CChar](repeating: 0, count: bytes.count * 2 + 1)
        let n = bytes.withUnsafeBufferPointer { b in
            b.withMemoryRebound(to: CChar.self) { c in
                mysql_real_escape_string(mysql, &out, c.baseAddress, UInt(bytes.count))
            }
        }
        return "'" + String(decoding: out[0..<Int(n)].map { UInt8(bitPattern: $0) }, as: UTF8.self) + "'"
    }

    /// Data and index bytes of a database's tables (for progress and ETA).
    public func databaseSize(_ database: String) throws -> Int64 {
        Int64(
            try column(
                "SELECT COALESCE(SUM(data_length + index_length), 0) FROM information_schema.tables WHERE table_schema = \(quoted(literal: database))"
            ).first ?? "") ?? 0
    }

    /// The user databases (not information_schema, performance_schema, mysql, sys).
    public func databases() throws -> [String] {
        try column("""
            SELECT schema_name FROM information_schema.schemata
            WHERE schema_name NOT IN ('information_schema', 'performance_schema', 'mysql', 'sys') ORDER BY schema_name
            """)
    }

    /// Whether the server writes a binary log (then a dump records its position).
    public func binaryLogOn() throws -> Bool { try column("SELECT @@log_bin").first == "1" }

    /// MariaDB: the GTID position a binary log position stands for (nil on MySQL).
    public func gtid(at position: BinlogPosition) -> String? {
        guard engine == .mariadb else { return nil }
        let value = try? column("SELECT BINLOG_GTID_POS(\(quoted(literal: position.file)), \(position.position))").first
        return value.flatMap { $0.isEmpty ? nil : $0 }
    }

    /// The server's current GTID position (MariaDB's gtid_current_pos, MySQL's
    /// gtid_executed); nil when it has none.
    public func currentGTID() -> String? {
        let variable = engine == .mariadb ? "@@gtid_current_pos" : "@@gtid_executed"
        return (try? column("SELECT \(variable)").first).flatMap { $0.isEmpty ? nil : $0 }
    }

    /// Tables and views in a database.
    public func tableCount(_ database: String) throws -> Int {
        Int(
            try column(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = \(quoted(literal: database))"
            ).first ?? "0") ?? 0
    }

    static func hint(code: UInt32) -> String {
        switch code {
        case 1045: return "set MYSQL_PWD or a password in the [client] group of ~/.my.cnf (mode 0600) for this user"
        case 1049: return "check --database; the server's databases are listed by `mariadb -e 'SHOW DATABASES'`"
        case 2002, 2003, 2005, 2013: return "check --host/--port (or --socket) and that the server is running"
        default: return "check the connection flags and the account's privileges"
        }
    }
}

extension ServerAddress {
    /// As libmariadb is given it (no environment defaults).
    public var mariaLabel: String { label(defaultHost: nil, defaultPort: nil) }
}
