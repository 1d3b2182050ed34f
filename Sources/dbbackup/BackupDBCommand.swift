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
        """)

    @OptionGroup var store: StoreOptions

    @Argument(help: ArgumentHelp("The database (or use --database).", valueName: "database"))
    var positionalDatabase: String?

    @Option(help: "The database to dump.")
    var database: String?

    @Option(name: [.customShort("d"), .long], help: ArgumentHelp("Database engine: \(DatabaseEngine.helpList).", valueName: "engine"))
    var dbType: DatabaseEngine = .postgres

    @OptionGroup var server: ServerOptions

    @Option(help: ArgumentHelp("pg_dump format: custom (-Fc -Z0, default) or plain (-Fp).", valueName: "format"))
    var format: String = PostgresDumpFormat.custom.rawValue

    @Option(help: "Name of the backup (default: the database).")
    var name: String?

    @Flag(help: "PostgreSQL: the whole cluster with pg_basebackup (tar, with the WAL it needs), the start of point-in-time recovery (see `dbbackup restore pitr`).")
    var baseBackup = false

    @Flag(help: "Every database of the server, plus a backup named globals: roles and tablespaces (pg_dumpall --globals-only), or MariaDB's users and grants (mariadb-dump --system=users).")
    var all = false

    @OptionGroup var committing: CommitOptions

    func validate() throws {
        if baseBackup {
            guard !all, positionalDatabase == nil, database == nil else { throw ValidationError("--base-backup copies the whole cluster: give no database and no --all") }
            guard dbType == .postgres else { throw ValidationError("--base-backup is for PostgreSQL; for MySQL/MariaDB, dump a database and archive its binlogs") }
            return
        }
        if all {
            guard positionalDatabase == nil, database == nil, name == nil else { throw ValidationError("--all backs up every database: give no database and no --name") }
        } else {
            guard (positionalDatabase ?? database) != nil else { throw ValidationError("which database? give it as an argument or with --database (or --all)") }
        }
        if positionalDatabase != nil && database != nil && positionalDatabase != database {
            throw ValidationError("two different databases given: \(positionalDatabase ?? "") and \(database ?? "")")
        }
        guard PostgresDumpFormat(rawValue: format) != nil else { throw ValidationError("--format takes custom or plain") }
    }

    func run() throws {
        try reportingErrors(noSpaceHint: "the disk holding the repository is full: no backup was committed; free space and run it again (chunks already written are reused)") {
            let address = server.address
            let maria = dbType.isMySQLFamily
            let engine = dbType.rawValue
            if baseBackup {
                try recordingFailure(store, name: name ?? "basebackup", database: nil, engine: engine, backupType: "basebackup") {
                    try backUpCluster(connection: try PostgresConnection(address, database: "postgres"), into: try store.openOrCreate(), address: address)
                }
                return
            }
            guard all else {
                let db = positionalDatabase ?? database ?? ""
                try recordingFailure(store, name: name ?? db, database: db, engine: engine, backupType: "dump") {
                    if maria {
                        try backUpMariaDB(db, connection: try MariaDBConnection(address, database: db), into: try store.openOrCreate(), address: address)
                    } else {
                        try PostgresDumpPlan.checkDatabaseName(db)
                        // The connection check, version and size through libpq, before anything runs.
                        let connection = try PostgresConnection(address, database: db)
                        try backUp(db, connection: connection, into: try store.openOrCreate(), address: address)
                    }
                }
                return
            }
            // The whole server: globals (roles, or users and grants), then every
            // database; a failure does not stop the others, and is counted in the
            // exit status.
            let databases: [String]
            let globals: (Repository) throws -> Void
            let one: (String, Repository) throws -> Void
            if maria {
                let server = try MariaDBConnection(address, database: nil)
                databases = try server.databases()
                globals = { try backUpMariaDBUsers(into: $0, connection: server, address: address) }
                one = { db, repo in try backUpMariaDB(db, connection: try MariaDBConnection(address, database: db), into: repo, address: address) }
            } else {
                let server = try PostgresConnection(address, database: "postgres")
                databases = try server.databases()
                globals = { try backUpGlobals(into: $0, address: address, serverVersion: server.serverVersion) }
                one = { db, repo in try backUp(db, connection: try PostgresConnection(address, database: db), into: repo, address: address) }
            }
            let repo = try store.openOrCreate()
            var failed = [String]()
            for target in ["globals"] + databases {
                do {
                    if target == "globals" { try globals(repo) } else { try one(target, repo) }
                } catch {
                    Terminal.error("\(target): \(errorMessage(error))")
                    CatalogHook.failed(store, kind: "backup", name: target, database: target == "globals" ? nil : target, engine: engine,
                                       backupType: "dump", error: error)
                    failed.append(target)
                }
            }
            if !failed.isEmpty {
                throw DatabaseError.invalidArgument("\(failed.count) of \(databases.count + 1) backups failed (\(failed.joined(separator: ", "))); the others were committed")
            }
        }
    }

    /// One database through pg_dump, checked first through `connection`.
    private func backUp(_ db: String, connection: PostgresConnection, into repo: Repository, address: ServerAddress) throws {
        let dumpFormat = PostgresDumpFormat(rawValue: format) ?? .custom
        let size = try? connection.databaseSize()
        let plan = try PostgresDumpPlan.make(address: address, database: db, format: dumpFormat)
        let dump = try ProcessOutputSource(arguments: plan.arguments)
        // A custom-format archive starts with "PGDMP": anything else (nothing at
        // all, a wrapper's message) is not a dump, whatever the exit status.
        let head = try dump.read(upTo: 5)
        if dumpFormat == .custom && head != Array("PGDMP".utf8) {
            _ = try? dump.read(upTo: 1 << 20)  // let pg_dump finish and say why
            throw DatabaseError.invalidArgument("pg_dump's output does not start like a custom-format archive (\(head.count) bytes: \(String(decoding: head, as: UTF8.self).debugDescription)); no backup was committed")
        }
        let source = PrefixedSource(prefix: head, rest: AnySource(dump))
        var options = dumpOptions(name: all ? db : (name ?? db), database: db, command: plan.arguments,
                                  dump: Manifest.DumpInfo(engine: DatabaseEngine.postgres.rawValue, serverVersion: connection.serverVersion,
                                                          server: address.postgresLabel, tool: "pg_dump", toolVersion: plan.toolVersion,
                                                          format: dumpFormat.rawValue, databaseSize: size))
        // Only the plain format ends with a completion line; pg_dump's exit
        // status guards both.
        options.checkDumpComplete = dumpFormat == .plain
        try committing.commit(AnySource(source), into: repo, options: options, expectedSize: size)
    }

    /// The whole cluster through pg_basebackup: a tar stream whose first member,
    /// backup_label, says where WAL replay starts; that and the cluster's system
    /// identifier go into the manifest.
    private func backUpCluster(connection: PostgresConnection, into repo: Repository, address: ServerAddress) throws {
        let systemIdentifier = try connection.column("SELECT system_identifier::text FROM pg_control_system()").first
        let size = try? connection.column("SELECT sum(pg_database_size(oid))::bigint FROM pg_database").first.flatMap { Int64($0) }
        let plan = try PostgresBaseBackupPlan.make(address: address)
        let tar = try ProcessOutputSource(arguments: plan.arguments)
        let head = try tar.read(upTo: 64 << 10)
        guard let labelBytes = TarHead.member(named: "backup_label", in: head),
              let label = BackupLabel(String(decoding: labelBytes, as: UTF8.self)) else {
            _ = try? tar.read(upTo: 1 << 20)  // let pg_basebackup finish and say why
            throw DatabaseError.invalidArgument("pg_basebackup's output does not start with a backup_label (\(head.count) bytes read); no backup was committed")
        }
        var info = Manifest.DumpInfo(engine: DatabaseEngine.postgres.rawValue, serverVersion: connection.serverVersion, server: address.postgresLabel,
                                     tool: "pg_basebackup", toolVersion: plan.toolVersion, format: "tar", databaseSize: size)
        info.startLSN = label.startLSN
        info.startWALFile = label.startWALFile
        info.timeline = label.timeline
        info.systemIdentifier = systemIdentifier
        var options = dumpOptions(name: name ?? "basebackup", database: nil, command: plan.arguments, dump: info)
        options.kind = "basebackup"
        options.checkDumpComplete = false
        try committing.commit(AnySource(PrefixedSource(prefix: head, rest: AnySource(tar))), into: repo, options: options, expectedSize: size)
    }

    /// One MySQL/MariaDB database through mariadb-dump (or mysqldump), with the
    /// binary log position of its snapshot recorded.
    private func backUpMariaDB(_ db: String, connection: MariaDBConnection, into repo: Repository, address: ServerAddress) throws {
        let size = try? connection.databaseSize(db)
        let binaryLog = (try? connection.binaryLogOn()) ?? false
        let plan = try MariaDBDumpPlan.make(address: address, database: db, binaryLog: binaryLog)
        let dump = try ProcessOutputSource(arguments: plan.arguments)
        // The header (the first 64 KiB) carries the snapshot's binary log position.
        let header = try dump.read(upTo: 64 << 10)
        let position = BinlogPosition(dumpHeader: header)
        if binaryLog && position == nil {
            Terminal.notice("\(plan.tool) printed no binary log position; point-in-time recovery cannot start from this dump")
        }
        var info = Manifest.DumpInfo(engine: connection.engine.rawValue, serverVersion: connection.serverVersion,
                                     server: address.mariaLabel, tool: plan.tool, toolVersion: plan.toolVersion,
                                     format: "sql", databaseSize: size, binlogFile: position?.file,
                                     binlogPosition: position?.position, gtid: position.flatMap { connection.gtid(at: $0) })
        info.serverID = try? connection.serverID()
        let options = dumpOptions(name: all ? db : (name ?? db), database: db, command: plan.arguments, dump: info)
        let source = PrefixedSource(prefix: header, rest: AnySource(dump))
        try committing.commit(AnySource(source), into: repo, options: options, expectedSize: size)
    }

    /// MariaDB's users, roles and grants (mariadb-dump --system=users), as a backup
    /// named "globals". MySQL's mysqldump has no such option: skipped with a notice.
    private func backUpMariaDBUsers(into repo: Repository, connection: MariaDBConnection, address: ServerAddress) throws {
        guard connection.engine == .mariadb else {
            Terminal.notice("MySQL: users and grants are not dumped by mysqldump; back up the mysql database for them")
            return
        }
        let plan = try MariaDBDumpPlan.users(address: address)
        let source = try ProcessOutputSource(arguments: plan.arguments)
        let options = dumpOptions(name: "globals", database: nil, command: plan.arguments,
                                  dump: Manifest.DumpInfo(engine: connection.engine.rawValue, serverVersion: connection.serverVersion,
                                                          server: address.mariaLabel, tool: plan.tool, toolVersion: plan.toolVersion,
                                                          format: "sql", databaseSize: nil))
        try committing.commit(AnySource(source), into: repo, options: options, expectedSize: nil)
    }

    /// A dump's backup options: its engine and server are the dump's.
    private func dumpOptions(name: String, database: String?, command: [String], dump: Manifest.DumpInfo) -> BackupOptions {
        var options = BackupOptions(name: name, source: command.joined(separator: " "))
        options.kind = "dump"
        options.database = database
        options.dbType = dump.engine
        options.dbHost = dump.server
        options.dump = dump
        return options
    }

    /// Roles and tablespaces (pg_dumpall --globals-only), as a backup named "globals".
    private func backUpGlobals(into repo: Repository, address: ServerAddress, serverVersion: String) throws {
        let plan = try PostgresDumpPlan.globals(address: address)
        let source = try ProcessOutputSource(arguments: plan.arguments)
        let options = dumpOptions(name: "globals", database: nil, command: plan.arguments,
                                  dump: Manifest.DumpInfo(engine: DatabaseEngine.postgres.rawValue, serverVersion: serverVersion,
                                                          server: address.postgresLabel, tool: "pg_dumpall", toolVersion: plan.toolVersion,
                                                          format: "plain", databaseSize: nil))
        try committing.commit(AnySource(source), into: repo, options: options, expectedSize: nil)
    }
}
