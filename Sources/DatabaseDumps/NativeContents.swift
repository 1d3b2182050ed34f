import DedupStore
import Foundation

/// What a backup of the native engine holds, member by member: its first
/// member, `contents`, as JSON. Restore reads it to know which member is the
/// schema, which the sequences, and into which table (with which columns)
/// each data member goes.
public struct NativeContents: Codable, Equatable, Sendable {
    /// A table whose rows the backup holds: in one member, or split into parts
    /// (ranges of its pages), each a member of its own.
    public struct Table: Codable, Equatable, Sendable {
        /// Quoted and qualified as the server quotes it (`public."Order"`).
        public var name: String
        /// The quoted columns the data members carry, in their order.
        public var columns: [String]
        /// The table's size on the server when it was dumped.
        public var bytes: Int64
        /// Its data members, in order.
        public var members: [String]

        public init(name: String, columns: [String], bytes: Int64, members: [String]) {
            self.name = name; self.columns = columns; self.bytes = bytes; self.members = members
        }
    }

    /// The newest layout this build reads.
    public static let currentFormat = 1
    /// The member that holds these contents.
    public static let memberName = "contents"

    public var format: Int
    /// postgres, mysql, mariadb.
    public var engine: String
    /// The member holding the schema (PostgreSQL: pg_dump's custom-format
    /// archive of --schema-only).
    public var schema: String
    /// PostgreSQL: the member of large objects (pg_dump's custom-format archive
    /// of them alone), when the database had any.
    public var largeObjects: String?
    /// The member of SQL statements that run after the data and before the
    /// post-data section (PostgreSQL: the sequences' setval).
    public var afterData: String?
    /// Largest first.
    public var tables: [Table]
    /// PostgreSQL: the materialized views that held rows, refreshed after the
    /// post-data section in this order (pg_dump's schema-only archive leaves
    /// their data out).
    public var materializedViews: [String]?

    public init(engine: String, schema: String, largeObjects: String?, afterData: String?, tables: [Table],
                materializedViews: [String]? = nil) {
        format = Self.currentFormat
        self.engine = engine
        self.schema = schema
        self.largeObjects = largeObjects
        self.afterData = afterData
        self.tables = tables
        self.materializedViews = materializedViews
    }

    /// The statements that refresh `materializedViews`.
    public var refreshStatements: [String] {
        (materializedViews ?? []).map { "REFRESH MATERIALIZED VIEW \($0);" }
    }

    public func encoded() throws -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return Array(try encoder.encode(self))
    }

    /// Reads the contents member of `manifest`.
    public static func read(_ manifest: Manifest, from repository: Repository) throws -> NativeContents {
        let bytes = try Restorer(repository: repository).bytes(of: manifest.id, member: memberName)
        let contents: NativeContents
        do {
            contents = try JSONDecoder().decode(NativeContents.self, from: Data(bytes))
        } catch {
            throw DatabaseError.invalidArgument(
                "backup \(manifest.id): its contents member does not read as the native engine's (\(error))")
        }
        guard contents.format <= currentFormat else {
            throw DatabaseError.invalidArgument(
                "backup \(manifest.id) was made by a newer dbbackup (native contents format \(contents.format)); upgrade to restore it"
            )
        }
        return contents
    }

    /// The tables whose name matches one of `patterns` (shell patterns, `*` and
    /// `?`, on the unquoted `schema.table`; a name without a dot matches the
    /// table in any schema). All tables without patterns.
    public func tables(matching patterns: [String]) -> [Table] {
        guard !patterns.isEmpty else { return tables }
        return tables.filter { table in
            let plain = Self.unquoted(table.name)
            let bare = plain.split(separator: ".", maxSplits: 1).last.map(String.init) ?? plain
            return patterns.contains { p in
                fnmatch(p, p.contains(".") ? plain : bare, 0) == 0
            }
        }
    }

    /// `public."Order"` as `public.Order`.
    public static func unquoted(_ qualified: String) -> String {
        var out = ""
        var quoted = false
        var chars = Array(qualified)
        var i = 0
        while i < chars.count {
            let c = chars[i]
            if c == "\"" {
                if quoted && i + 1 < chars.count && chars[i + 1] == "\"" {
                    out.append("\"")
                    i += 2
                    continue
                }
                quoted.toggle()
            } else {
                out.append(c)
            }
            i += 1
        }
        chars.removeAll()
        return out
    }
}

/// The native engine's backups: `Manifest.DumpInfo.format`.
public enum NativeFormat {
    public static let name = "native"
}
