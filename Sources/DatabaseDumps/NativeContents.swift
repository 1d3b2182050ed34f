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
        /// PostgreSQL: what a restore of some tables (`--table`) restores with it.
        public var dependents: Dependents?
        /// An extension's configuration table: the extension creates it (and
        /// may fill it) in the pre-data section; the rows are added, never
        /// truncated first.
        public var extensionConfiguration: Bool?
        /// MySQL/MariaDB: its `SHOW CREATE TABLE` and its triggers' `SHOW CREATE
        /// TRIGGER`, for a restore of some tables (`--table`).
        public var createStatement: String?
        public var triggerStatements: [String]?

        public init(name: String, columns: [String], bytes: Int64, members: [String], dependents: Dependents? = nil) {
            self.name = name; self.columns = columns; self.bytes = bytes; self.members = members
            self.dependents = dependents
        }
    }

    /// An object as pg_restore's list names it: schema and name, unquoted.
    public struct ArchiveName: Codable, Equatable, Hashable, Sendable {
        public var schema: String
        public var name: String
    }

    /// The objects of the schema archive that belong with one table.
    public struct Dependents: Codable, Equatable, Sendable {
        public struct ForeignKey: Codable, Equatable, Sendable {
            public var oid: UInt32
            /// The referenced table, quoted and qualified: the key is restored
            /// only with it.
            public var references: String
        }
        /// The source's OIDs of the table itself, its partitioned ancestors,
        /// their and its indexes, constraints other than foreign keys,
        /// triggers, defaults and owned sequences (pg_restore's list gives
        /// each entry's OID).
        public var oids: [UInt32] = []
        /// The names among them that entries without an OID use (comments,
        /// grants, partitions and indexes attached, sequences owned by).
        public var names: [ArchiveName] = []
        /// Its owned sequences, quoted and qualified (their setval goes with it).
        public var sequences: [String] = []
        public var foreignKeys: [ForeignKey] = []

        public init() {}
    }

    /// The size of the parts a large table is dumped in: 64 MiB, or
    /// DBBACKUP_NATIVE_PART_MIB (tests split small tables with it).
    public static var partBytes: Int64 {
        let mib = ProcessInfo.processInfo.environment["DBBACKUP_NATIVE_PART_MIB"].flatMap { Int64($0) } ?? 64
        return max(1, mib) << 20
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
    /// PostgreSQL: the encoding the rows are in (the database's), which a
    /// restore's sessions set as their client encoding.
    public var encoding: String?
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

    /// `public."Order"` as `public.Order`, `` `Order` `` as `Order`.
    public static func unquoted(_ qualified: String) -> String {
        var out = ""
        var quote: Character?
        let chars = Array(qualified)
        var i = 0
        while i < chars.count {
            let c = chars[i]
            if let q = quote, c == q {
                if i + 1 < chars.count && chars[i + 1] == q {
                    out.append(q)
                    i += 2
                    continue
                }
                quote = nil
            } else if quote == nil && (c == "\"" || c == "`") {
                quote = c
            } else {
                out.append(c)
            }
            i += 1
        }
        return out
    }
}

/// The native engine's backups: `Manifest.DumpInfo.format`.
public enum NativeFormat {
    public static let name = "native"
}

/// What a restore of some of a backup's tables (`restore --table`) takes: the
/// tables, the entries of the schema archive that belong with them (as a
/// pg_restore list: `pg_restore -L`), and their sequences' values.
public struct NativeSelection {
    public let tables: [NativeContents.Table]
    private let oids: Set<UInt32>
    private let names: Set<NativeContents.ArchiveName>
    private let sequences: Set<String>

    /// Objects every table may need (types, functions of triggers and
    /// defaults, schemas, extensions): kept whole.
    static let supporting: Set<String> = [
        "SCHEMA", "EXTENSION", "FUNCTION", "PROCEDURE", "AGGREGATE", "TYPE", "SHELL TYPE", "DOMAIN", "COLLATION",
        "CONVERSION", "OPERATOR", "OPERATOR CLASS", "OPERATOR FAMILY", "CAST", "TEXT SEARCH CONFIGURATION",
        "TEXT SEARCH DICTIONARY", "TEXT SEARCH PARSER", "TEXT SEARCH TEMPLATE", "ENCODING", "STDSTRINGS", "SEARCHPATH",
    ]
    /// pg_restore's entry kinds of more than one word, longest first.
    static let multiWord = [
        "TEXT SEARCH CONFIGURATION", "TEXT SEARCH DICTIONARY", "TEXT SEARCH PARSER", "TEXT SEARCH TEMPLATE",
        "SEQUENCE OWNED BY", "OPERATOR FAMILY", "OPERATOR CLASS", "MATERIALIZED VIEW DATA", "MATERIALIZED VIEW",
        "FK CONSTRAINT", "CHECK CONSTRAINT", "TABLE ATTACH", "INDEX ATTACH", "TABLE DATA", "SEQUENCE SET",
        "SHELL TYPE", "ROW SECURITY", "DEFAULT ACL", "SECURITY LABEL", "BLOB METADATA",
    ]

    /// `patterns` as `NativeContents.tables(matching:)` takes them; nil when
    /// none is given (the whole backup). Throws when a pattern matches no table.
    public init?(_ contents: NativeContents, patterns: [String]) throws {
        guard !patterns.isEmpty else { return nil }
        let picked = contents.tables(matching: patterns)
        for p in patterns where contents.tables(matching: [p]).isEmpty {
            let known = contents.tables.map { NativeContents.unquoted($0.name) }
            throw DatabaseError.invalidArgument(
                "--table \(p) matches no table of the backup (it has \(known.count): \(known.prefix(12).joined(separator: ", "))\(known.count > 12 ? ", ..." : ""))")
        }
        tables = picked
        var oids = Set<UInt32>(), names = Set<NativeContents.ArchiveName>(), sequences = Set<String>()
        for t in picked {
            guard let d = t.dependents else {
                throw DatabaseError.invalidArgument(
                    "this backup does not record what goes with each table (made by an older dbbackup): restore it whole")
            }
            oids.formUnion(d.oids)
            names.formUnion(d.names)
            sequences.formUnion(d.sequences)
        }
        let pickedNames = Set(picked.map { NativeContents.unquoted($0.name) })
            .union(names.map { "\($0.schema).\($0.name)" })
        for t in picked {
            for fk in t.dependents?.foreignKeys ?? [] where pickedNames.contains(NativeContents.unquoted(fk.references)) {
                oids.insert(fk.oid)
            }
        }
        self.oids = oids
        self.names = names
        self.sequences = sequences
    }

    /// The lines of `pg_restore -l` to keep, for `pg_restore -L`.
    public func list(from toc: String) -> String {
        toc.split(separator: "\n", omittingEmptySubsequences: false).filter { line in
            line.hasPrefix(";") || line.isEmpty || keeps(String(line))
        }.joined(separator: "\n")
    }

    /// One entry of the list: `<dump id>; <catalog oid> <oid> <kind> <schema> <name> <owner>`.
    func keeps(_ line: String) -> Bool {
        let fields = line.split(separator: " ", maxSplits: 3, omittingEmptySubsequences: false)
        guard fields.count == 4, let oid = UInt32(fields[2]) else { return false }
        let rest = String(fields[3])
        let kind = Self.multiWord.first { rest.hasPrefix($0 + " ") } ?? String(rest.prefix { $0 != " " })
        if Self.supporting.contains(kind) { return true }
        if oid != 0 { return oids.contains(oid) }
        let after = String(rest.dropFirst(kind.count + 1))
        switch kind {
        case "COMMENT", "ACL", "SECURITY LABEL":
            // "<schema> <TYPE> <name> <owner>": kept with what it is about.
            if Self.supporting.contains(where: { after.contains(" \($0) ") || after.hasPrefix("- \($0) ") }) { return true }
            return names.contains { n in
                after.hasPrefix("\(n.schema) TABLE \(n.name) ") || after.hasPrefix("\(n.schema) SEQUENCE \(n.name) ")
                    || after.hasPrefix("\(n.schema) INDEX \(n.name) ") || after.hasPrefix("\(n.schema) COLUMN \(n.name).")
            }
        case "SEQUENCE OWNED BY", "TABLE ATTACH", "INDEX ATTACH":
            return names.contains { after.hasPrefix("\($0.schema) \($0.name) ") }
        default:
            return false
        }
    }

    /// The statements of the sequences member that set the picked tables' sequences.
    public func setvals(_ script: String) -> String {
        let prefixes = sequences.map { "SELECT pg_catalog.setval('\($0.replacingOccurrences(of: "'", with: "''"))'," }
        return script.split(separator: "\n").filter { line in prefixes.contains { line.hasPrefix($0) } }
            .map { $0 + "\n" }.joined()
    }
}

extension NativeSelection {
    /// Writes the pg_restore list of `archive` that this selection keeps to `path`.
    func writeList(of archive: String, to path: String) throws {
        let toc = try ProcessOutputSource(arguments: ["pg_restore", "--list", archive])
        var bytes = [UInt8]()
        while true {
            let more = try toc.read(upTo: 1 << 20)
            if more.isEmpty { break }
            bytes += more
        }
        let kept = list(from: String(decoding: bytes, as: UTF8.self))
        guard FileManager.default.createFile(atPath: path, contents: Data(kept.utf8)) else {
            throw DatabaseError.invalidArgument("cannot write \(path)")
        }
    }
}

/// What a restore of some tables of a native MySQL/MariaDB backup takes: the
/// tables, each created from its own definition (without the foreign keys to
/// tables left out), then their rows, then their triggers.
public struct MariaDBSelection {
    public let tables: [NativeContents.Table]

    /// nil when no pattern is given; throws when one matches no table, or the
    /// backup does not record the definitions.
    public init?(_ contents: NativeContents, patterns: [String]) throws {
        guard !patterns.isEmpty else { return nil }
        for p in patterns where contents.tables(matching: [p]).isEmpty {
            let known = contents.tables.map { NativeContents.unquoted($0.name) }
            throw DatabaseError.invalidArgument(
                "--table \(p) matches no table of the backup (it has \(known.count): \(known.prefix(12).joined(separator: ", "))\(known.count > 12 ? ", ..." : ""))")
        }
        tables = contents.tables(matching: patterns)
        guard tables.allSatisfy({ $0.createStatement != nil }) else {
            throw DatabaseError.invalidArgument(
                "this backup does not record each table's definition (made by an older dbbackup): restore it whole")
        }
    }

    /// The statements that create the tables (dropping them first with
    /// `replace`), foreign key checks off while they run.
    public func createStatements(replace: Bool) -> [String] {
        let names = Set(tables.map { NativeContents.unquoted($0.name) })
        var out = ["SET FOREIGN_KEY_CHECKS = 0"]
        for t in tables {
            if replace { out.append("DROP TABLE IF EXISTS \(t.name)") }
            out.append(Self.withoutForeignKeys(outside: names, t.createStatement ?? ""))
        }
        out.append("SET FOREIGN_KEY_CHECKS = 1")
        return out
    }

    /// The triggers of the tables, to run after their rows are in.
    public var triggerStatements: [String] { tables.flatMap { $0.triggerStatements ?? [] } }

    /// `SHOW CREATE TABLE`'s text without the constraints that reference a
    /// table not in `kept` (one constraint a line, as the server writes them).
    static func withoutForeignKeys(outside kept: Set<String>, _ create: String) -> String {
        var lines = create.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        lines.removeAll { line in
            guard line.contains(" FOREIGN KEY "), let r = line.range(of: " REFERENCES ") else { return false }
            let after = line[r.upperBound...]
            let referenced = after.hasPrefix("`") ? String(after.dropFirst().prefix { $0 != "`" }) : String(after.prefix { $0 != " " })
            return !kept.contains(referenced)
        }
        // The last column or key before the closing line takes no comma.
        if let close = lines.firstIndex(where: { $0.hasPrefix(")") }), close > 0, lines[close - 1].hasSuffix(",") {
            lines[close - 1].removeLast()
        }
        return lines.joined(separator: "\n")
    }
}

/// A native dump under way, of either engine: the member streams to back up
/// `streams` at once, what the manifest records, and the snapshot to end.
public protocol NativeDump: AnyObject {
    var members: [MemberPlan] { get }
    var streams: Int { get }
    var info: Manifest.DumpInfo { get }
    /// What the backup records as its source.
    var command: [String] { get }
    var expectedSize: Int64? { get }
    /// Ends the snapshot's transactions (the backup is committed or has failed).
    func close()
}

extension PostgresNativeDump: NativeDump {}
extension MariaDBNativeDump: NativeDump {}
