import ArgumentParser
import DatabaseDumps
import DedupStore
import Foundation

struct DedupBackupDB: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup-db",
        abstract: "Dump a database straight into the chunk store (no temporary file).",
        discussion: """
        Examples:
          dbbackup dedup backup-db --db-type postgres --database shop --host db1 --user backup
          dbbackup dedup backup-db shop --socket /run/postgresql

        PostgreSQL: the server is checked through libpq first (a clear error if it
        cannot be reached, refuses the login or lacks the database), then pg_dump
        streams the database in (custom format without compression by default, so
        that pg_restore can restore in parallel and unchanged data deduplicates).
        Nothing is committed unless pg_dump exits 0; its own messages pass through.
        Passwords never go on a command line: set PGPASSWORD or use ~/.pgpass; PGHOST,
        PGPORT and PGUSER are the defaults of --host, --port and --user.
        MySQL and MariaDB are not supported by this version yet.
        """)

    @OptionGroup var store: StoreOptions

    @Argument(help: ArgumentHelp("The database (or use --database).", valueName: "database"))
    var positionalDatabase: String?

    @Option(help: "The database to dump.")
    var database: String?

    @Option(name: [.customShort("d"), .long], help: "Database engine: postgres, mysql, mariadb.")
    var dbType: String = "postgres"

    @Option(help: "Database server host (PostgreSQL default: PGHOST, else the local socket).")
    var host: String?

    @Option(help: "Database server port.")
    var port: Int?

    @Option(help: "Database user (PostgreSQL default: PGUSER, else your login name).")
    var user: String?

    @Option(help: ArgumentHelp("Unix socket: for PostgreSQL its folder (or the .s.PGSQL.<port> file).", valueName: "path"))
    var socket: String?

    @Option(help: ArgumentHelp("pg_dump format: custom (-Fc -Z0, default) or plain (-Fp).", valueName: "format"))
    var format: String = PostgresDumpFormat.custom.rawValue

    @Option(help: "Name of the backup (default: the database).")
    var name: String?

    @OptionGroup var committing: CommitOptions

    func validate() throws {
        guard (positionalDatabase ?? database) != nil else { throw ValidationError("which database? give it as an argument or with --database") }
        if positionalDatabase != nil && database != nil && positionalDatabase != database {
            throw ValidationError("two different databases given: \(positionalDatabase ?? "") and \(database ?? "")")
        }
        guard PostgresDumpFormat(rawValue: format) != nil else { throw ValidationError("--format takes custom or plain") }
        if let port, !(1...65535).contains(port) { throw ValidationError("--port takes 1-65535") }
    }

    func run() throws {
        try reportingErrors(noSpaceHint: "the disk holding the repository is full: no backup was committed; free space and run it again (chunks already written are reused)") {
            guard dbType == "postgres" || dbType == "postgresql" else { throw DatabaseError.unsupportedEngine(dbType) }
            let db = positionalDatabase ?? database ?? ""
            let address = ServerAddress(host: host, port: port, user: user, socket: socket)
            let dumpFormat = PostgresDumpFormat(rawValue: format) ?? .custom

            try PostgresDumpPlan.checkDatabaseName(db)
            // The connection check, version and size through libpq, before anything runs.
            let connection = try PostgresConnection(address, database: db)
            let serverVersion = connection.serverVersion
            let size = try? connection.databaseSize()
            let plan = try PostgresDumpPlan.make(address: address, database: db, format: dumpFormat)
            let repo = try store.openOrCreate()

            let source = try ProcessOutputSource(arguments: plan.arguments)
            var options = BackupOptions(name: name ?? db, source: plan.arguments.joined(separator: " "))
            options.kind = "dump"
            options.database = db
            options.dbType = "postgres"
            options.dbHost = address.label
            // Only the plain format ends with a completion line; pg_dump's exit
            // status guards both.
            options.checkDumpComplete = dumpFormat == .plain
            options.dump = Manifest.DumpInfo(engine: "postgres", serverVersion: serverVersion, server: address.label,
                                             tool: "pg_dump", toolVersion: plan.toolVersion, format: dumpFormat.rawValue,
                                             databaseSize: size)
            try committing.commit(AnySource(source), into: repo, options: options, expectedSize: size)
        }
    }
}
