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
          dbbackup dedup backup-db --all --host db1     # every database, plus roles and tablespaces

        PostgreSQL: the server is checked through libpq first (a clear error if it
        cannot be reached, refuses the login or lacks the database), then pg_dump
        streams the database in (custom format without compression by default, so
        that pg_restore can restore in parallel and unchanged data deduplicates).
        Nothing is committed unless pg_dump exits 0; its own messages pass through.
        Passwords never go on a command line: set PGPASSWORD or use ~/.pgpass; PGHOST,
        PGPORT and PGUSER are the defaults of --host, --port and --user.
        MySQL/MariaDB (-d mariadb or mysql): the server is checked through
        libmariadb, then mariadb-dump (or mysqldump) runs with --single-transaction
        --routines --triggers --events --hex-blob, and, when the server writes a
        binary log, --master-data=2 --gtid: the log position and GTID of the
        snapshot go into the manifest. Passwords: MYSQL_PWD or the [client] group
        of ~/.my.cnf.

        --engine native (or --native): each table as its own member stream, from
        one consistent snapshot, on --jobs connections at once; the schema by pg_dump
        --schema-only or mariadb-dump --no-data. `dedup list --tables <id>` shows the
        tables. The default stays pg_dump / mariadb-dump (docs/NATIVE.md says why).
          dbbackup dedup backup-db shop --engine native --jobs 4
        """)

    @OptionGroup var store: StoreOptions

    @Argument(help: ArgumentHelp("The database (or use --database).", valueName: "database"))
    var positionalDatabase: String?

    @Option(help: "The database to dump.")
    var database: String?

    @Option(
        name: [.customShort("d"), .long],
        help: ArgumentHelp("Database engine (\(DatabaseEngine.aliasHelp)).", valueName: "engine"))
    var dbType: DatabaseEngine = .postgres

    @OptionGroup var server: ServerOptions

    @Option(help: ArgumentHelp("pg_dump format: custom (-Fc -Z0, default) or plain (-Fp).", valueName: "format"))
    var format: String = PostgresDumpFormat.custom.rawValue

    @Option(help: "Name of the backup (default: the database).")
    var name: String?

    @Flag(
        help:
            "PostgreSQL: the whole cluster with pg_basebackup (tar, with the WAL it needs), the start of point-in-time recovery (see `dbbackup restore pitr`)."
    )
    var baseBackup = false

    @Flag(
        help:
            "Every database of the server, plus a backup named globals: roles and tablespaces (pg_dumpall --globals-only), or MariaDB's users and grants (mariadb-dump --system=users)."
    )
    var all = false

    @Option(
        help: ArgumentHelp(
            "How a database is dumped: pg_dump (the default; mariadb-dump for MySQL/MariaDB), or native: each table on its own (PostgreSQL: COPY; MySQL/MariaDB: SELECT) on --jobs connections of one snapshot, one member stream per table.",
            valueName: "engine"))
    var engine: DumpEngine = .tool

    @Flag(help: "The same as --engine native.")
    var native = false

    @Option(
        help: ArgumentHelp(
            "Native engine: database connections that dump at once (default: this machine's cores, at most 8). Hashing and compression use --threads.",
            valueName: "n"))
    var jobs: Int?

    @OptionGroup var committing: CommitOptions

    /// The engine asked for: --native is --engine native.
    var dumpEngine: DumpEngine { native ? .native : engine }

    /// Connections the native engine dumps on.
    var workers: Int { jobs ?? min(8, max(1, ProcessInfo.processInfo.activeProcessorCount)) }

    static let baseBackupIsForClusters =
        "--base-backup is for PostgreSQL; for MySQL/MariaDB, dump a database and archive its binlogs"

    func validate() throws {
        if let jobs, jobs < 1 { throw ValidationError("--jobs takes a positive number") }
        if dumpEngine == .native {
            guard !baseBackup else { throw ValidationError("--engine native dumps databases; --base-backup copies the cluster") }
            guard format == PostgresDumpFormat.custom.rawValue else {
                throw ValidationError("--format is pg_dump's; the native engine has its own (one member per table)")
            }
        }
        if baseBackup {
            guard !all, positionalDatabase == nil, database == nil else {
                throw ValidationError("--base-backup copies the whole cluster: give no database and no --all")
            }
            guard dbType.driver(address: server.address) is any ClusterBackupDriver else {
                throw ValidationError(Self.baseBackupIsForClusters)
            }
            return
        }
        if all {
            guard positionalDatabase == nil, database == nil, name == nil else {
                throw ValidationError("--all backs up every database: give no database and no --name")
            }
        } else {
            guard (positionalDatabase ?? database) != nil else {
                throw ValidationError("which database? give it as an argument or with --database (or --all)")
            }
        }
        if positionalDatabase != nil && database != nil && positionalDatabase != database {
            throw ValidationError("two different databases given: \(positionalDatabase ?? "") and \(database ?? "")")
        }
        guard PostgresDumpFormat(rawValue: format) != nil else {
            throw ValidationError("--format takes custom or plain")
        }
    }

    func run() throws {
        try reportingErrors(
            noSpaceHint:
                "the disk holding the repository is full: no backup was committed; free space and run it again (chunks already written are reused)"
        ) {
            let settings = DumpSettings(postgresFormat: PostgresDumpFormat(rawValue: format) ?? .custom)
            let driver = dbType.driver(address: server.address, settings: settings)
            driver.onNotice = { Terminal.notice($0) }
            if baseBackup {
                try backUpCluster(driver)
            } else if all {
                try backUpServer(driver)
            } else {
                try backUpDatabase(positionalDatabase ?? database ?? "", driver)
            }
        }
    }

    /// One database: checked through the client library before the repository is
    /// opened (or created), then dumped.
    private func backUpDatabase(_ db: String, _ driver: any DatabaseDriver) throws {
        try recordingFailure(store, name: name ?? db, database: db, engine: dbType.rawValue, backupType: "dump") {
            try driver.check(database: db)
            let repo = try store.openOrCreate()
            try commitDatabase(db, name: name ?? db, driver, into: repo)
        }
    }

    /// One database through the engine asked for.
    private func commitDatabase(_ db: String, name: String, _ driver: any DatabaseDriver, into repo: Repository) throws {
        guard dumpEngine == .native else {
            try commit(try driver.dump(database: db), name: name, database: db, into: repo)
            return
        }
        let dump: any NativeDump = dbType.isMySQLFamily
            ? try MariaDBNativeDump(address: server.address, database: db, jobs: workers) { Terminal.notice($0) }
            : try PostgresNativeDump(address: server.address, database: db, jobs: workers)
        defer { dump.close() }
        var options = BackupOptions(name: name, source: dump.command.joined(separator: " "))
        options.kind = .dump
        options.database = db
        options.dbType = dump.info.engine
        options.dbHost = dump.info.server
        options.dump = dump.info
        options.checkDumpComplete = false
        try committing.commit(
            members: dump.members, streams: dump.streams, into: repo, options: options, expectedSize: dump.expectedSize)
    }

    /// The whole cluster (PostgreSQL's pg_basebackup), the start of point-in-time recovery.
    private func backUpCluster(_ driver: any DatabaseDriver) throws {
        guard let cluster = driver as? any ClusterBackupDriver else {
            throw ValidationError(Self.baseBackupIsForClusters)
        }
        let backupName = name ?? "basebackup"
        try recordingFailure(store, name: backupName, database: nil, engine: dbType.rawValue, backupType: "basebackup")
        {
            try cluster.check(database: nil)
            let repo = try store.openOrCreate()
            try commit(try cluster.baseBackup(), name: backupName, database: nil, into: repo)
        }
    }

    /// The whole server: globals (roles, or users and grants), then every
    /// database; a failure does not stop the others, and is counted in the exit
    /// status.
    private func backUpServer(_ driver: any DatabaseDriver) throws {
        let databases = try driver.databases()
        let repo = try store.openOrCreate()
        var failed = [String]()
        for target in ["globals"] + databases {
            do {
                if target == "globals" {
                    guard let dump = try driver.dumpGlobals() else { continue }
                    try commit(dump, name: "globals", database: nil, into: repo)
                } else {
                    try commitDatabase(target, name: target, driver, into: repo)
                }
            } catch {
                Terminal.error("\(target): \(errorMessage(error))")
                CatalogHook.failed(store, kind: "backup", name: target, database: target == "globals" ? nil : target,
                                   engine: dbType.rawValue, backupType: "dump", error: error)
                failed.append(target)
            }
        }
        if !failed.isEmpty {
            throw DatabaseError.invalidArgument(
                "\(failed.count) of \(databases.count + 1) backups failed (\(failed.joined(separator: ", "))); the others were committed"
            )
        }
    }

    /// Commits a dump under way as the backup `name`: its engine and server are the dump's.
    private func commit(_ dump: DatabaseDump, name: String, database: String?, into repo: Repository) throws {
        var options = BackupOptions(name: name, source: dump.command.joined(separator: " "))
        options.kind = dump.kind
        options.database = database
        options.dbType = dump.info.engine
        options.dbHost = dump.info.server
        options.dump = dump.info
        options.checkDumpComplete = dump.checkComplete
        try committing.commit(dump.source, into: repo, options: options, expectedSize: dump.expectedSize)
    }
}

/// How `backup-db` dumps a database.
enum DumpEngine: String, ExpressibleByArgument, CaseIterable {
    /// The engine's own dump tool: pg_dump, mariadb-dump or mysqldump.
    case tool = "pg_dump"
    /// dbbackup's own: one COPY stream per table, several at once.
    case native

    init?(argument: String) {
        switch argument.lowercased() {
        case "pg_dump", "pg-dump", "mariadb-dump", "mysqldump", "tool": self = .tool
        case "native": self = .native
        default: return nil
        }
    }
}
