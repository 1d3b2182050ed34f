import DedupStore
import Foundation

/// Restoring a PostgreSQL dump into a server: the target database is checked (and
/// created on request) through libpq, then pg_restore (custom format) or psql
/// (plain) reads the restored stream on its standard input.
public struct PostgresRestorePlan: Sendable {
    public let arguments: [String]

    /// Checks the target: it must exist (or is created with `create`), and hold no
    /// relations unless `force`. Returns the command that loads the dump.
    public static func prepare(address: ServerAddress, target: String, format: PostgresDumpFormat,
                               create: Bool, force: Bool) throws -> PostgresRestorePlan {
        try PostgresDumpPlan.checkDatabaseName(target)
        let server = try PostgresConnection(address, database: "postgres")
        let exists =
            try server.column("SELECT 1 FROM pg_database WHERE datname = \(try server.quoted(literal: target))").count
            == 1
        if !exists {
            guard create else {
                throw DatabaseError.invalidArgument(
                    "database \(target) does not exist on \(address.postgresLabel); pass --create to create it")
            }
            try server.execute("CREATE DATABASE \(try server.quoted(identifier: target))")
        } else {
            let relations = try PostgresConnection(address, database: target).userRelationCount()
            if relations > 0 && !force {
                throw DatabaseError.invalidArgument(
                    "database \(target) is not empty (\(relations) relations); restore into a new one with --create, or pass --force to restore over it"
                )
            }
        }
        var args: [String]
        let tool: String
        switch format {
        case .custom:
            tool = "pg_restore"
            args = ["pg_restore", "--no-password", "--exit-on-error", "--dbname=\(target)"]
            if force { args += ["--clean", "--if-exists"] }
        case .plain:
            tool = "psql"
            args = ["psql", "--no-password", "--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1", "--dbname=\(target)"]
        }
        guard findExecutable(tool) != nil else {
            throw DatabaseError.toolMissing(tool: tool, package: "postgresql-client")
        }
        args += PostgresDumpPlan.connectionArguments(address)
        return PostgresRestorePlan(arguments: args)
    }
}

extension PostgresRestorePlan {
    /// Runs pg_restore with `arguments` (argv[0] excluded), its input
    /// /dev/null and its output to `stdoutFD`; `options` joins PGOPTIONS for
    /// its sessions. Returns how it failed, nil when it exited 0.
    static func runPgRestore(_ arguments: [String], stdoutFD: Int32, options: String? = nil) throws -> String? {
        guard let exe = findExecutable("pg_restore") else {
            throw DatabaseError.toolMissing(tool: "pg_restore", package: "postgresql-client")
        }
        var environment: [String: String]?
        if let options {
            var env = ProcessInfo.processInfo.environment
            env["PGOPTIONS"] = [env["PGOPTIONS"], options].compactMap { $0 }.joined(separator: " ")
            environment = env
        }
        let devNull = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { close(devNull) }
        let child = try ChildProcess(executable: exe, arguments: ["pg_restore"] + arguments, environment: environment,
                                     stdinFD: devNull, stdoutFD: stdoutFD)
        return child.failure()
    }
}
