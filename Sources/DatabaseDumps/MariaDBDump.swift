import DedupStore
import Foundation

/// How mariadb-dump (or mysqldump) is run for one database: one consistent
/// snapshot (--single-transaction), with routines, triggers and events, and, when
/// the server writes a binary log, the log position and GTID of that snapshot as
/// comments at the top of the dump. The password stays in the environment
/// (MYSQL_PWD) or the option files, which the tool reads itself.
public struct MariaDBDumpPlan: Sendable {
    public let arguments: [String]
    public let tool: String
    public let toolVersion: String

    public static func make(address: ServerAddress, database: String, binaryLog: Bool) throws -> MariaDBDumpPlan {
        guard !database.hasPrefix("-") else { throw DatabaseError.invalidArgument("--database takes a database name") }
        guard let tool = ["mariadb-dump", "mysqldump"].first(where: { findExecutable($0) != nil }) else {
            throw DatabaseError.toolMissing(tool: "mariadb-dump", package: "mariadb-client")
        }
        // 8 MiB INSERT statements instead of 1 MiB: where one statement ends shifts
        // with every changed row before it, and each shifted end is a new chunk
        // (one UPDATE of 101 rows in a 10 MB table: 6 new chunks at 1 MiB, 2 at
        // 8 MiB). 8 MiB stays under the 16 MiB max_allowed_packet servers default to.
        var args = [tool, "--single-transaction", "--routines", "--triggers", "--events", "--hex-blob",
                    "--net-buffer-length=8388608"]
        if binaryLog { args += ["--master-data=2", "--gtid"] }
        args += connectionArguments(address)
        args += ["--", database]
        return MariaDBDumpPlan(arguments: args, tool: tool, toolVersion: try PostgresDumpPlan.version(of: tool))
    }

    /// MariaDB's users, roles and grants as CREATE USER and GRANT statements.
    public static func users(address: ServerAddress) throws -> MariaDBDumpPlan {
        guard findExecutable("mariadb-dump") != nil else {
            throw DatabaseError.toolMissing(tool: "mariadb-dump", package: "mariadb-client")
        }
        let args = ["mariadb-dump", "--system=users", "--insert-ignore"] + connectionArguments(address)
        return MariaDBDumpPlan(
            arguments: args, tool: "mariadb-dump", toolVersion: try PostgresDumpPlan.version(of: "mariadb-dump"))
    }

    /// --host, --port, --user and --socket as the MariaDB client tools take them.
    public static func connectionArguments(_ address: ServerAddress) -> [String] {
        var args = [String]()
        if let socket = address.socket {
            args.append("--socket=\(socket)")
        } else if let host = address.host {
            args.append("--host=\(host)")
        }
        if let port = address.port { args.append("--port=\(port)") }
        if let user = address.user { args.append("--user=\(user)") }
        return args
    }
}

/// The binary log position and GTID a dump was taken at, read from the comments
/// `--master-data=2 --gtid` put in its header:
///   -- CHANGE MASTER TO MASTER_LOG_FILE='binlog.000002', MASTER_LOG_POS=1234;
///   -- SET GLOBAL gtid_slave_pos='0-1-15';
public struct BinlogPosition: Equatable, Sendable {
    public var file: String
    public var position: UInt64
    public var gtid: String?

    public init(file: String, position: UInt64, gtid: String? = nil) {
        self.file = file; self.position = position; self.gtid = gtid
    }

    public init?(dumpHeader: [UInt8]) {
        let text = String(decoding: dumpHeader, as: UTF8.self)
        var file: String?, position: UInt64?, gtid: String?
        for line in text.split(separator: "\n") where line.hasPrefix("-- ") {
            if line.contains("MASTER_LOG_FILE='") {
                file = Self.quoted(after: "MASTER_LOG_FILE='", in: line)
                if let r = line.range(of: "MASTER_LOG_POS=") {
                    position = UInt64(line[r.upperBound...].prefix(while: \.isNumber))
                }
            } else if line.contains("gtid_slave_pos='") {
                gtid = Self.quoted(after: "gtid_slave_pos='", in: line)
            }
        }
        guard let file, let position else { return nil }
        self.file = file
        self.position = position
        self.gtid = gtid
    }

    private static func quoted(after marker: String, in line: Substring) -> String? {
        guard let r = line.range(of: marker) else { return nil }
        return String(line[r.upperBound...].prefix(while: { $0 != "'" }))
    }
}

/// Restoring a MySQL/MariaDB dump into a server: the target database is checked
/// (and created on request) through libmariadb, then the mariadb (or mysql) client
/// reads the restored SQL on its standard input.
public struct MariaDBRestorePlan: Sendable {
    public let arguments: [String]

    public static func prepare(
        address: ServerAddress, target: String, create: Bool, force: Bool
    ) throws -> MariaDBRestorePlan {
        guard !target.isEmpty, !target.hasPrefix("-") else {
            throw DatabaseError.invalidArgument("--target-db takes a database name")
        }
        let server = try MariaDBConnection(address, database: nil)
        let exists =
            try server.column(
                "SELECT 1 FROM information_schema.schemata WHERE schema_name = \(server.quoted(literal: target))"
            ).count == 1
        if !exists {
            guard create else {
                throw DatabaseError.invalidArgument(
                    "database \(target) does not exist on \(address.mariaLabel); pass --create to create it")
            }
            try server.execute("CREATE DATABASE \(MariaDBConnection.quoted(identifier: target))")
        } else {
            let tables = try server.tableCount(target)
            if tables > 0 && !force {
                throw DatabaseError.invalidArgument(
                    "database \(target) is not empty (\(tables) tables); restore into a new one with --create, or pass --force to restore over it"
                )
            }
        }
        guard let tool = ["mariadb", "mysql"].first(where: { findExecutable($0) != nil }) else {
            throw DatabaseError.toolMissing(tool: "mariadb", package: "mariadb-client")
        }
        return MariaDBRestorePlan(
            arguments: [tool, "--batch", "--database=\(target)"] + MariaDBDumpPlan.connectionArguments(address))
    }
}
