/// A database engine dbbackup backs up. The raw value is what manifests, the catalog
/// and metrics record (`dump.engine`, `dbType`); the names a user may type for it
/// are in one place, `init(name:)`, so that every command accepts the same ones.
public enum DatabaseEngine: String, CaseIterable, Sendable {
    case postgres
    case mysql
    case mariadb

    /// The names each engine answers to besides its raw value (lower case).
    static let aliases: [DatabaseEngine: [String]] = [
        .postgres: ["postgresql", "pg", "pgsql"],
        .mysql: [],
        .mariadb: ["maria"],
    ]

    /// Reads an engine as a user types it (any case, an alias such as postgresql or
    /// pg) or as a manifest records it (the raw value); nil when it names none.
    public init?(name: String) {
        let key = name.lowercased()
        guard let engine = Self.allCases.first(where: { $0.names.contains(key) }) else { return nil }
        self = engine
    }

    /// Every name `init(name:)` reads as this engine: the raw value first, then its aliases.
    public var names: [String] { [rawValue] + (Self.aliases[self] ?? []) }

    /// MySQL and MariaDB: one client library, one family of dump and binlog tools.
    public var isMySQLFamily: Bool { self == .mysql || self == .mariadb }

    /// The engine's name as its makers write it, for messages.
    public var displayName: String {
        switch self {
        case .postgres: "PostgreSQL"
        case .mysql: "MySQL"
        case .mariadb: "MariaDB"
        }
    }
}
