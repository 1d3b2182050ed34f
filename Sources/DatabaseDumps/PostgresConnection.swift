import CLibPQ
import Foundation

/// Where a database server is and who we are there. Unset fields fall back to the
/// client library's own defaults and environment (PGHOST, PGPORT, PGUSER; for
/// MySQL/MariaDB their option files). Passwords never travel in here: libpq reads
/// PGPASSWORD or ~/.pgpass itself.
public struct ServerAddress: Sendable, Equatable {
    public var host: String?
    public var port: Int?
    public var user: String?
    /// A Unix socket: for PostgreSQL its folder (or the socket file in it).
    public var socket: String?

    public init(host: String? = nil, port: Int? = nil, user: String? = nil, socket: String? = nil) {
        self.host = host; self.port = port; self.user = user; self.socket = socket
    }

    /// The folder libpq takes as "host" for a socket given as a folder or as the
    /// `.s.PGSQL.<port>` file itself.
    var postgresSocketFolder: String? {
        guard let socket else { return nil }
        let name = socket.split(separator: "/").last.map(String.init) ?? ""
        if name.hasPrefix(".s.PGSQL."), let slash = socket.lastIndex(of: "/") {
            return slash == socket.startIndex ? "/" : String(socket[..<slash])
        }
        return socket
    }

    /// For messages and manifests: the socket, or host:port with what is unset
    /// taken from the defaults (an engine's environment variables).
    public func label(defaultHost: String?, defaultPort: String?) -> String {
        if let socket { return "socket \(socket)" }
        let h = host ?? defaultHost ?? "localhost"
        return (port.map(String.init) ?? defaultPort).map { "\(h):\($0)" } ?? h
    }

    /// As libpq sees it: PGHOST and PGPORT fill in what is unset.
    public var postgresLabel: String {
        let env = ProcessInfo.processInfo.environment
        return label(defaultHost: env["PGHOST"], defaultPort: env["PGPORT"])
    }
}

/// A libpq connection: the connection check, the server's version and the sizes
/// and names of its databases.
public final class PostgresConnection {
    let conn: OpaquePointer
    public let address: ServerAddress

    /// Connects to `database` ("postgres" to look at the server as a whole). A
    /// failure becomes one line with libpq's message and what to do about it.
    public init(_ address: ServerAddress, database: String) throws {
        self.address = address
        var params: [(String, String)] = [
            ("dbname", database), ("application_name", "dbbackup"),
            ("connect_timeout", "10"),
        ]
        if let folder = address.postgresSocketFolder {
            params.append(("host", folder))
        } else if let host = address.host {
            params.append(("host", host))
        }
        if let port = address.port { params.append(("port", String(port))) }
        if let user = address.user { params.append(("user", user)) }
        let keys = params.map { strdup($0.0) }
        let values = params.map { strdup($0.1) }
        defer { (keys + values).forEach { free($0) } }
        var keyPointers = keys.map { UnsafePointer<CChar>($0) } + [nil]
        var valuePointers = values.map { UnsafePointer<CChar>($0) } + [nil]
        let c = keyPointers.withUnsafeMutableBufferPointer { k in
            valuePointers.withUnsafeMutableBufferPointer { v in
                PQconnectdbParams(k.baseAddress, v.baseAddress, 0)
            }
        }
        guard let c else {
            throw DatabaseError.connectionFailed(
                server: address.postgresLabel, detail: "libpq could not allocate a connection",
                hint: "the machine is out of memory")
        }
        guard PQstatus(c) == CONNECTION_OK else {
            let detail = Self.oneLine(PQerrorMessage(c))
            PQfinish(c)
            throw DatabaseError.connectionFailed(
                server: address.postgresLabel, detail: detail, hint: Self.hint(for: detail, database: database))
        }
        conn = c
    }

    deinit { PQfinish(conn) }

    /// The server's version as it reports it, e.g. "15.18 (Debian 15.18-0+deb12u1)".
    public var serverVersion: String {
        PQparameterStatus(conn, "server_version").map { String(cString: $0) } ?? "unknown"
    }

    /// Every row of a query without parameters, each column's text (nil: NULL).
    public func rows(_ sql: String) throws -> [[String?]] {
        try run(sql, expecting: PGRES_TUPLES_OK) { result in
            let columns = PQnfields(result)
            return (0..<PQntuples(result)).map { row in
                (0..<columns).map { col in
                    PQgetisnull(result, row, col) == 1 ? nil : String(cString: PQgetvalue(result, row, col))
                }
            }
        }
    }

    /// The first column of every row of a query without parameters (NULL: "").
    public func column(_ sql: String) throws -> [String] {
        try rows(sql).map { ($0.first ?? nil) ?? "" }
    }

    /// Runs `sql`, whose result must be `expected`, and hands the result to
    /// `body`; else the server's error, naming the statement.
    func run<T>(_ sql: String, expecting expected: ExecStatusType, _ body: (OpaquePointer) -> T) throws -> T {
        guard let result = PQexec(conn, sql) else {
            throw DatabaseError.queryFailed(query: sql, detail: Self.oneLine(PQerrorMessage(conn)))
        }
        defer { PQclear(result) }
        guard PQresultStatus(result) == expected else {
            throw DatabaseError.queryFailed(query: sql, detail: Self.oneLine(PQresultErrorMessage(result)))
        }
        return body(result)
    }

    /// The connected database's size in bytes (for progress and ETA).
    public func databaseSize() throws -> Int64 {
        Int64(try column("SELECT pg_database_size(current_database())").first ?? "") ?? 0
    }

    /// Runs a statement that returns no rows.
    public func execute(_ sql: String) throws {
        try run(sql, expecting: PGRES_COMMAND_OK) { _ in }
    }

    /// `text` as an SQL identifier or literal, quoted by libpq for this server.
    public func quoted(identifier text: String) throws -> String { try escape(text, PQescapeIdentifier) }
    public func quoted(literal text: String) throws -> String { try escape(text, PQescapeLiteral) }

    private func escape(
        _ text: String, _ f: (OpaquePointer?, UnsafePointer<CChar>?, Int) -> UnsafeMutablePointer<CChar>?
    ) throws -> String {
        let utf8 = Array(text.utf8CString)
        guard let out = utf8.withUnsafeBufferPointer({ f(conn, $0.baseAddress, utf8.count - 1) }) else {
            throw DatabaseError.invalidArgument("cannot quote '\(text)': \(Self.oneLine(PQerrorMessage(conn)))")
        }
        defer { PQfreemem(out) }
        return String(cString: out)
    }

    /// Tables, views, sequences and other relations outside the system schemas.
    public func userRelationCount() throws -> Int {
        Int(try column("""
            SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
            """).first ?? "0") ?? 0
    }

    /// Databases that can be dumped: not templates, connections allowed.
    public func databases() throws -> [String] {
        try column("SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY datname")
    }

    /// Turns WAL archiving on with ALTER SYSTEM (a superuser's): archive_mode = on
    /// (unless always), archive_command = `command`, wal_level = replica when it was
    /// minimal, then reloads the configuration. Returns whether the server must be
    /// restarted for archive_mode or wal_level to take effect.
    public func enableArchiving(command: String) throws -> Bool {
        let before = (
            mode: try column("SHOW archive_mode").first ?? "", level: try column("SHOW wal_level").first ?? ""
        )
        var restart = before.mode == "off"
        if before.level == "minimal" {
            try execute("ALTER SYSTEM SET wal_level = 'replica'")
            restart = true
        }
        if before.mode != "always" { try execute("ALTER SYSTEM SET archive_mode = 'on'") }
        try execute("ALTER SYSTEM SET archive_command = \(try quoted(literal: command))")
        _ = try column("SELECT pg_reload_conf()")
        return restart
    }

    static func oneLine(_ message: UnsafePointer<CChar>?) -> String {
        let text = message.map { String(cString: $0) } ?? "unknown error"
        let lines = text.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        // libpq prefixes "connection to server at ... failed:"; the reason follows.
        return lines.joined(separator: " ")
    }

    static func hint(for detail: String, database: String) -> String {
        let d = detail.lowercased()
        if d.contains("password authentication failed") || d.contains("no password supplied") {
            return "set PGPASSWORD or add a ~/.pgpass line (host:port:database:user:password, mode 0600) for this user"
        }
        if d.contains("database \"\(database.lowercased())\" does not exist") {
            return "check --database; the server's databases are listed by `psql -l`"
        }
        if d.contains("role") && d.contains("does not exist") {
            return "check --user (default: PGUSER, else your login name)"
        }
        if d.contains("connection refused") || d.contains("no such file") || d.contains("timeout")
            || d.contains("could not translate host name")
        {
            return "check --host/--port (or --socket) and that the server is running"
        }
        return "check the connection flags and the server's pg_hba.conf"
    }
}
