import DedupStore
import Foundation

/// The output format of pg_dump that `dedup backup-db` asks for.
public enum PostgresDumpFormat: String, CaseIterable, Sendable {
    /// `-Fc -Z0`: pg_restore can restore in parallel and pick objects; table data is
    /// stored uncompressed, so unchanged rows deduplicate night after night.
    case custom
    /// `-Fp`: SQL text for psql; ends with a completion line that is checked.
    case plain
}

/// How pg_dump is run for one database: its arguments (never a password: libpq
/// reads PGPASSWORD or ~/.pgpass from the environment pg_dump inherits) and the
/// version of the pg_dump found on PATH.
public struct PostgresDumpPlan: Sendable {
    public let arguments: [String]
    public let toolVersion: String
    public let format: PostgresDumpFormat

    /// pg_dump reads a database "name" with '=' or a URI prefix as a connection
    /// string, which could carry a password onto the command line: refused.
    public static func checkDatabaseName(_ database: String) throws {
        guard !database.contains("="), !database.hasPrefix("postgres://"), !database.hasPrefix("postgresql://") else {
            throw DatabaseError.invalidArgument(
                "--database takes a database name, not a connection string; give --host, --port, --user and PGPASSWORD instead"
            )
        }
    }

    public static func make(
        address: ServerAddress, database: String, format: PostgresDumpFormat
    ) throws -> PostgresDumpPlan {
        try checkDatabaseName(database)
        guard findExecutable("pg_dump") != nil else {
            throw DatabaseError.toolMissing(tool: "pg_dump", package: "postgresql-client")
        }
        var args = ["pg_dump", "--no-password"]
        switch format {
        case .custom: args += ["--format=custom", "--compress=0"]
        case .plain: args += ["--format=plain"]
        }
        args += connectionArguments(address)
        args.append(database)
        return PostgresDumpPlan(arguments: args, toolVersion: try Self.version(of: "pg_dump"), format: format)
    }

    /// pg_dumpall --globals-only: roles and tablespaces, as SQL.
    public static func globals(address: ServerAddress) throws -> PostgresDumpPlan {
        guard findExecutable("pg_dumpall") != nil else {
            throw DatabaseError.toolMissing(tool: "pg_dumpall", package: "postgresql-client")
        }
        var args = ["pg_dumpall", "--globals-only", "--no-password"]
        args += connectionArguments(address)
        return PostgresDumpPlan(arguments: args, toolVersion: try Self.version(of: "pg_dumpall"), format: .plain)
    }

    /// --host, --port and --username as pg_dump, pg_dumpall, pg_restore and psql take them.
    public static func connectionArguments(_ address: ServerAddress) -> [String] {
        var args = [String]()
        if let folder = address.postgresSocketFolder {
            args.append("--host=\(folder)")
        } else if let host = address.host {
            args.append("--host=\(host)")
        }
        if let port = address.port { args.append("--port=\(port)") }
        if let user = address.user { args.append("--username=\(user)") }
        return args
    }

    /// The first line `tool --version` prints, e.g. "pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)".
    static func version(of tool: String) throws -> String {
        let text = String(
            decoding: try ProcessOutputSource(arguments: [tool, "--version"]).read(upTo: 4096), as: UTF8.self)
        return text.split(separator: "\n").first.map { $0.trimmingCharacters(in: .whitespaces) } ?? tool
    }
}
