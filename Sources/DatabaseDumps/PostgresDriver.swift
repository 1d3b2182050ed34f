import DedupStore

/// PostgreSQL: checks through libpq, dumps with pg_dump (one database),
/// pg_dumpall --globals-only (roles and tablespaces) and pg_basebackup (the whole
/// cluster), loads with pg_restore (custom format) or psql (plain).
public final class PostgresDriver: ClusterBackupDriver {
    public let engine = DatabaseEngine.postgres
    public let address: ServerAddress
    public let settings: DumpSettings
    public var onNotice: (String) -> Void = { _ in }

    /// The database libpq connects to for the server as a whole.
    static let serverDatabase = "postgres"

    /// The connection to the server as a whole, and the one `check` made to a
    /// database, until its dump takes it: one database connection open at a time.
    private var connections = ConnectionCache<PostgresConnection>()

    public init(address: ServerAddress, settings: DumpSettings = DumpSettings()) {
        self.address = address
        self.settings = settings
    }

    /// The connection to `database` (nil: the server), made once.
    private func connection(_ database: String?) throws -> PostgresConnection {
        try connections.connection(database) { [address] database in
            guard let database else { return try PostgresConnection(address, database: Self.serverDatabase) }
            try PostgresDumpPlan.checkDatabaseName(database)
            return try PostgresConnection(address, database: database)
        }
    }

    public func check(database: String?) throws {
        _ = try connection(database)
    }

    public func databases() throws -> [String] {
        try connection(nil).databases()
    }

    /// One database through pg_dump, checked first through libpq.
    public func dump(database db: String) throws -> DatabaseDump {
        let connection = try connection(db)
        defer { connections.release() }
        let dumpFormat = settings.postgresFormat
        let size = try? connection.databaseSize()
        let plan = try PostgresDumpPlan.make(address: address, database: db, format: dumpFormat)
        let dump = try ProcessOutputSource(arguments: plan.arguments)
        // A custom-format archive starts with "PGDMP": anything else (nothing at
        // all, a wrapper's message) is not a dump, whatever the exit status.
        let head = try dump.read(upTo: 5)
        if dumpFormat == .custom && head != Array("PGDMP".utf8) {
            _ = try? dump.read(upTo: 1 << 20)  // let pg_dump finish and say why
            throw DatabaseError.invalidArgument(
                "pg_dump's output does not start like a custom-format archive (\(head.count) bytes: \(String(decoding: head, as: UTF8.self).debugDescription)); no backup was committed"
            )
        }
        let source = PrefixedSource(prefix: head, rest: AnySource(dump))
        let info = Manifest.DumpInfo(engine: engine.rawValue, serverVersion: connection.serverVersion,
                                     server: address.postgresLabel, tool: "pg_dump", toolVersion: plan.toolVersion,
                                     format: dumpFormat.rawValue, databaseSize: size)
        // Only the plain format ends with a completion line; pg_dump's exit
        // status guards both.
        return DatabaseDump(command: plan.arguments, source: AnySource(source), info: info, expectedSize: size,
                            checkComplete: dumpFormat == .plain)
    }

    /// Roles and tablespaces (pg_dumpall --globals-only).
    public func dumpGlobals() throws -> DatabaseDump? {
        let serverVersion = try connection(nil).serverVersion
        let plan = try PostgresDumpPlan.globals(address: address)
        let source = try ProcessOutputSource(arguments: plan.arguments)
        let info = Manifest.DumpInfo(engine: engine.rawValue, serverVersion: serverVersion,
                                     server: address.postgresLabel, tool: "pg_dumpall", toolVersion: plan.toolVersion,
                                     format: "plain", databaseSize: nil)
        return DatabaseDump(command: plan.arguments, source: AnySource(source), info: info, expectedSize: nil,
                            checkComplete: true)
    }

    /// The whole cluster through pg_basebackup: a tar stream whose first member,
    /// backup_label, says where WAL replay starts; that and the cluster's system
    /// identifier go into the manifest.
    public func baseBackup() throws -> DatabaseDump {
        let connection = try connection(nil)
        let systemIdentifier = try connection.column("SELECT system_identifier::text FROM pg_control_system()").first
        let size = try? connection.column("SELECT sum(pg_database_size(oid))::bigint FROM pg_database").first
            .flatMap { Int64($0) }
        let plan = try PostgresBaseBackupPlan.make(address: address)
        let tar = try ProcessOutputSource(arguments: plan.arguments)
        let head = try tar.read(upTo: 64 << 10)
        guard let labelBytes = TarHead.member(named: "backup_label", in: head),
              let label = BackupLabel(String(decoding: labelBytes, as: UTF8.self)) else {
            _ = try? tar.read(upTo: 1 << 20)  // let pg_basebackup finish and say why
            throw DatabaseError.invalidArgument(
                "pg_basebackup's output does not start with a backup_label (\(head.count) bytes read); no backup was committed"
            )
        }
        var info = Manifest.DumpInfo(
            engine: engine.rawValue, serverVersion: connection.serverVersion,
            server: address.postgresLabel, tool: "pg_basebackup", toolVersion: plan.toolVersion,
            format: "tar", databaseSize: size)
        info.startLSN = label.startLSN
        info.startWALFile = label.startWALFile
        info.timeline = label.timeline
        info.systemIdentifier = systemIdentifier
        return DatabaseDump(kind: .basebackup, command: plan.arguments,
                            source: AnySource(PrefixedSource(prefix: head, rest: AnySource(tar))), info: info,
                            expectedSize: size, checkComplete: false)
    }

    /// pg_restore for a custom-format dump, psql for a plain one; nil for anything
    /// else (a base backup's tar stream).
    public func restorePlan(for dump: Manifest.DumpInfo, into target: String, create: Bool, force: Bool) throws
        -> (any DatabaseRestorePlan)? {
        guard DatabaseEngine(name: dump.engine) == engine, let format = PostgresDumpFormat(rawValue: dump.format) else {
            return nil
        }
        return try PostgresRestorePlan.prepare(address: address, target: target, format: format, create: create,
                                               force: force)
    }
}
