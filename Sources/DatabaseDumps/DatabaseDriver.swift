import DedupStore

/// One database engine as `backup-db` and `restore --target-db` drive it: the
/// connection check through the client library, the databases of a server, the
/// dump of one database or of the server-wide part (globals), and the command that
/// loads a dump back. A command asks its engine's driver (`DatabaseEngine.driver`)
/// and never branches on the engine itself; a new engine is one more driver.
///
/// The order is the commands': `check` first (a clear error before anything is
/// created or run), then the repository is opened, then `dump` starts the dump
/// tool. A driver keeps the connections it made, so a dump after its check, or
/// the globals after `databases()`, ask the server nothing twice.
public protocol DatabaseDriver: AnyObject {
    var engine: DatabaseEngine { get }
    var address: ServerAddress { get }
    /// Told what the user should know but is no error (a dump without a binary
    /// log position, globals the engine's tools cannot dump).
    var onNotice: (String) -> Void { get set }

    /// Connects to `database` (nil: the server as a whole) and checks it: the
    /// server answers, takes the login, has the database. Nothing runs yet.
    func check(database: String?) throws

    /// The databases a backup of the whole server dumps, one by one.
    func databases() throws -> [String]

    /// Starts the dump of `database` (connecting first unless `check` did) and
    /// checks its first bytes.
    func dump(database: String) throws -> DatabaseDump

    /// Starts the dump of what belongs to the server rather than a database (roles,
    /// users, grants), as the backup named "globals"; nil, with a notice, when the
    /// engine's tools cannot dump it.
    func dumpGlobals() throws -> DatabaseDump?

    /// Checks `target` on the server (creating it with `create`; refusing one that
    /// is not empty unless `force`) and returns the command that loads `dump` into
    /// it from its standard input; nil when `dump` is not one this driver loads.
    func restorePlan(for dump: Manifest.DumpInfo, into target: String, create: Bool, force: Bool) throws
        -> (any DatabaseRestorePlan)?
}

/// A driver that can also copy a whole cluster, the start of point-in-time
/// recovery (PostgreSQL's pg_basebackup).
public protocol ClusterBackupDriver: DatabaseDriver {
    /// Starts the copy of the whole cluster (after `check(database: nil)`).
    func baseBackup() throws -> DatabaseDump
}

/// Settings of a dump that only some engines read.
public struct DumpSettings: Sendable, Equatable {
    /// pg_dump's output format (PostgreSQL).
    public var postgresFormat: PostgresDumpFormat

    public init(postgresFormat: PostgresDumpFormat = .custom) {
        self.postgresFormat = postgresFormat
    }
}

/// A dump under way: its stream (the bytes read to check it put back in front) and
/// what its manifest records.
public struct DatabaseDump {
    /// The manifest's kind: a dump, or a base backup of a whole cluster.
    public var kind: BackupKind
    /// The dump tool's command line (never a password), as the manifest's source.
    public var command: [String]
    public var source: AnySource
    public var info: Manifest.DumpInfo
    /// About how many bytes the dump will be (the database's size), for the ETA.
    public var expectedSize: Int64?
    /// Whether the stream must end with its tool's completion line (plain SQL).
    public var checkComplete: Bool

    public init(kind: BackupKind = .dump, command: [String], source: AnySource, info: Manifest.DumpInfo,
                expectedSize: Int64?, checkComplete: Bool) {
        self.kind = kind
        self.command = command
        self.source = source
        self.info = info
        self.expectedSize = expectedSize
        self.checkComplete = checkComplete
    }
}

/// The command that loads a restored dump into a server, reading it on its standard input.
public protocol DatabaseRestorePlan: Sendable {
    var arguments: [String] { get }
}

extension PostgresRestorePlan: DatabaseRestorePlan {}
extension MariaDBRestorePlan: DatabaseRestorePlan {}

extension DatabaseEngine {
    /// The driver of this engine for the server at `address`. Nothing connects yet.
    public func driver(address: ServerAddress, settings: DumpSettings = DumpSettings()) -> any DatabaseDriver {
        switch self {
        case .postgres: PostgresDriver(address: address, settings: settings)
        case .mysql, .mariadb: MariaDBDriver(address: address, engine: self)
        }
    }
}

/// A driver's connections: one to the server as a whole, and the one a check
/// made to a database, kept until that database's dump takes it, so that one
/// database connection at a time is open.
struct ConnectionCache<Connection> {
    private var server: Connection?
    private var checked: (database: String, connection: Connection)?

    /// The connection to `database` (nil: the server), opened by `open` once.
    mutating func connection(_ database: String?, open: (String?) throws -> Connection) throws -> Connection {
        guard let database else {
            if let server { return server }
            let made = try open(nil)
            server = made
            return made
        }
        if let checked, checked.database == database { return checked.connection }
        let made = try open(database)
        checked = (database, made)
        return made
    }

    /// Forgets the database connection (its dump has taken it).
    mutating func release() { checked = nil }
}
