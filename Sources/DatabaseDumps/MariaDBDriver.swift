import DedupStore

/// MySQL and MariaDB: checks through libmariadb, dumps with mariadb-dump (or
/// mysqldump) recording the snapshot's binary log position, MariaDB's users and
/// grants with mariadb-dump --system=users, loads with the mariadb (or mysql) client.
public final class MariaDBDriver: DatabaseDriver {
    /// The engine asked for (-d mysql or mariadb); manifests record the one the
    /// server reports.
    public let engine: DatabaseEngine
    public let address: ServerAddress
    public var onNotice: (String) -> Void = { _ in }

    /// The connection to the server as a whole, and the one `check` made to a
    /// database, until its dump takes it: one database connection open at a time.
    private var connections = ConnectionCache<MariaDBConnection>()

    public init(address: ServerAddress, engine: DatabaseEngine = .mariadb) {
        self.address = address
        self.engine = engine
    }

    /// The connection to `database` (nil: the server), made once.
    private func connection(_ database: String?) throws -> MariaDBConnection {
        try connections.connection(database) { [address] in try MariaDBConnection(address, database: $0) }
    }

    public func check(database: String?) throws {
        _ = try connection(database)
    }

    public func databases() throws -> [String] {
        try connection(nil).databases()
    }

    /// One database through mariadb-dump (or mysqldump), with the binary log
    /// position of its snapshot recorded.
    public func dump(database db: String) throws -> DatabaseDump {
        let connection = try connection(db)
        defer { connections.release() }
        let size = try? connection.databaseSize(db)
        let binaryLog = (try? connection.binaryLogOn()) ?? false
        let plan = try MariaDBDumpPlan.make(address: address, database: db, binaryLog: binaryLog)
        let dump = try ProcessOutputSource(arguments: plan.arguments)
        // The header (the first 64 KiB) carries the snapshot's binary log position.
        let header = try dump.read(upTo: 64 << 10)
        let position = BinlogPosition(dumpHeader: header)
        if binaryLog && position == nil {
            onNotice("\(plan.tool) printed no binary log position; point-in-time recovery cannot start from this dump")
        }
        var info = Manifest.DumpInfo(engine: connection.engine.rawValue, serverVersion: connection.serverVersion,
                                     server: address.mariaLabel, tool: plan.tool, toolVersion: plan.toolVersion,
                                     format: "sql", databaseSize: size, binlogFile: position?.file,
                                     binlogPosition: position?.position,
                                     gtid: position.flatMap { connection.gtid(at: $0) })
        info.serverID = try? connection.serverID()
        let source = PrefixedSource(prefix: header, rest: AnySource(dump))
        return DatabaseDump(command: plan.arguments, source: AnySource(source), info: info, expectedSize: size,
                            checkComplete: true)
    }

    /// MariaDB's users, roles and grants (mariadb-dump --system=users). MySQL's
    /// mysqldump has no such option: nil, with a notice.
    public func dumpGlobals() throws -> DatabaseDump? {
        let connection = try connection(nil)
        guard connection.engine == .mariadb else {
            onNotice("MySQL: users and grants are not dumped by mysqldump; back up the mysql database for them")
            return nil
        }
        let plan = try MariaDBDumpPlan.users(address: address)
        let source = try ProcessOutputSource(arguments: plan.arguments)
        let info = Manifest.DumpInfo(engine: connection.engine.rawValue, serverVersion: connection.serverVersion,
                                     server: address.mariaLabel, tool: plan.tool, toolVersion: plan.toolVersion,
                                     format: "sql", databaseSize: nil)
        return DatabaseDump(command: plan.arguments, source: AnySource(source), info: info, expectedSize: nil,
                            checkComplete: true)
    }

    /// The mariadb (or mysql) client, for any dump of this family.
    public func restorePlan(for dump: Manifest.DumpInfo, into target: String, create: Bool, force: Bool) throws
        -> (any DatabaseRestorePlan)? {
        guard DatabaseEngine(name: dump.engine)?.isMySQLFamily == true else { return nil }
        return try MariaDBRestorePlan.prepare(address: address, target: target, create: create, force: force)
    }
}
