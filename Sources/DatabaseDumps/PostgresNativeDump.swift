import DedupStore
import Foundation

/// The native engine's dump of one PostgreSQL database: one consistent
/// snapshot, exported by a coordinating connection and imported by one
/// connection per stream, and one member stream per table (or per range of a
/// large table's pages), next to the schema as pg_dump writes it.
///
/// Members, in order: `contents` (what the others are, `NativeContents`),
/// `schema` (`pg_dump --schema-only --snapshot`, custom format: pre-data and
/// post-data), `large-objects` when there are any (pg_dump's archive of them
/// alone), `data/<table>` or `data/<table>/<part>` for each table's rows
/// (`COPY ... TO STDOUT`, text format), largest first, and `sequences` (their
/// values as setval statements, read under the snapshot).
public final class PostgresNativeDump {
    public let address: ServerAddress
    public let database: String
    public let contents: NativeContents
    public let info: Manifest.DumpInfo
    /// What the backup records as its source.
    public let command: [String]
    public let expectedSize: Int64?
    /// The member streams, to back up with `streams` of them at once.
    public private(set) var members: [MemberPlan] = []
    public let streams: Int

    private let coordinator: PostgresConnection
    private let snapshot: String
    /// The database's encoding: the rows are dumped in it.
    private let encoding: String?
    private var connections: [PostgresConnection?]
    /// The COPY sources made, by member, for their row counts.
    private var copies: [String: PostgresCopyOut] = [:]

    /// Tables larger than this are dumped in parts of about this size (ranges of
    /// pages), so that one large table is dumped and restored on several
    /// connections; fixed, so that the parts of a table stay where they were
    /// from one night to the next.
    public static let defaultPartBytes: Int64 = NativeContents.partBytes

    /// Connects, opens the snapshot, locks the tables against DDL (ACCESS SHARE,
    /// as pg_dump does) and lists what the dump holds. `jobs`: connections
    /// that COPY at once.
    public init(address: ServerAddress, database: String, jobs: Int, partBytes: Int64 = defaultPartBytes) throws {
        try PostgresDumpPlan.checkDatabaseName(database)
        guard findExecutable("pg_dump") != nil else {
            throw DatabaseError.toolMissing(tool: "pg_dump", package: "postgresql-client")
        }
        self.address = address
        self.database = database
        streams = max(1, jobs)
        coordinator = try PostgresConnection(address, database: database)
        let encoding = try coordinator.databaseEncoding()
        self.encoding = encoding
        try coordinator.setDumpSession(encoding: encoding)
        let size = try? coordinator.databaseSize()
        expectedSize = size
        snapshot = try coordinator.exportSnapshot()
        let tables = try coordinator.tablesToCopy()
        if !tables.isEmpty {
            try coordinator.execute(
                "LOCK TABLE \(tables.map(\.qualified).joined(separator: ", ")) IN ACCESS SHARE MODE")
        }
        let sequences = try coordinator.sequenceValues()
        let largeObjects = try coordinator.largeObjectCount()
        let materializedViews = try coordinator.populatedMaterializedViews()
        let dependents = try coordinator.tableDependents()
        connections = Array(repeating: nil, count: streams)
        let toolVersion = try PostgresDumpPlan.version(of: "pg_dump")
        info = Manifest.DumpInfo(
            engine: DatabaseEngine.postgres.rawValue, serverVersion: coordinator.serverVersion,
            server: address.postgresLabel, tool: "dbbackup native (COPY) + pg_dump --schema-only",
            toolVersion: toolVersion, format: NativeFormat.name, databaseSize: size)
        command = ["dbbackup-native", "--jobs=\(streams)"] + PostgresDumpPlan.connectionArguments(address) + [database]

        // The parts of each table: ranges of its pages.
        var described = [NativeContents.Table]()
        var data = [(member: String, table: PostgresTable, statement: String)]()
        for table in tables {
            // A heap of no pages holds no row the snapshot sees (a row it sees
            // was written before it, and the size is read after it): no member,
            // no chunk list object.
            if table.bytes == 0 && table.extensionCondition == nil {
                described.append(.init(name: table.qualified, columns: table.columns, bytes: 0, members: [],
                                       dependents: dependents[table.qualified]))
                continue
            }
            let pages = max(1, table.bytes / 8192)
            let perPart = max(1, partBytes / 8192)
            let parts = Int((pages + perPart - 1) / perPart)
            let base = "data/" + NativeContents.unquoted(table.qualified)
            if parts <= 1 || table.extensionCondition != nil {
                described.append(.init(name: table.qualified, columns: table.columns, bytes: table.bytes, members: [base],
                                       dependents: dependents[table.qualified]))
                if table.extensionCondition != nil { described[described.count - 1].extensionConfiguration = true }
                data.append((base, table, table.copyOut))
                continue
            }
            var names = [String]()
            for part in 0..<parts {
                let name = base + "/\(part + 1)"
                names.append(name)
                let from = Int64(part) * perPart
                var condition = "ctid >= '(\(from),0)'::tid"
                // The last part takes every page after its first: the table may have grown.
                if part < parts - 1 { condition += " AND ctid < '(\(from + perPart),0)'::tid" }
                let select = "SELECT \(table.columns.joined(separator: ", ")) FROM ONLY \(table.qualified) WHERE \(condition)"
                data.append((name, table, "COPY (\(select)) TO STDOUT"))
            }
            described.append(.init(name: table.qualified, columns: table.columns, bytes: table.bytes, members: names,
                                   dependents: dependents[table.qualified]))
        }
        // The largest parts first, so that the last ones to end are small.
        var contents = NativeContents(
            engine: DatabaseEngine.postgres.rawValue, schema: "schema",
            largeObjects: largeObjects > 0 ? "large-objects" : nil, afterData: "sequences", tables: described,
            materializedViews: materializedViews.isEmpty ? nil : materializedViews)
        contents.encoding = encoding
        self.contents = contents

        let encoded = try contents.encoded()
        members.append(MemberPlan(name: NativeContents.memberName) { _ in AnySource(BufferSource(encoded)) })
        let schemaArguments = try pgDumpArguments(["--schema-only"])
        members.append(MemberPlan(name: contents.schema) { _ in
            AnySource(try Self.archive(ProcessOutputSource(arguments: schemaArguments), what: "the schema"))
        })
        if let member = contents.largeObjects {
            // Their data alone: no table's rows, no sequence's value.
            let arguments = try pgDumpArguments(["--data-only", "--blobs", "--exclude-table-data=*.*"])
            members.append(MemberPlan(name: member) { _ in
                AnySource(try Self.archive(ProcessOutputSource(arguments: arguments), what: "the large objects"))
            })
        }
        for (member, table, statement) in data {
            members.append(MemberPlan(name: member, rows: { [weak self] in self?.copies[member]?.rows }) {
                [unowned self] slot in
                let copy = try PostgresCopyOut(try self.connection(slot), statement: statement, table: table.qualified)
                self.copies[member] = copy
                return AnySource(copy)
            })
        }
        let setvals = Array((sequences.map(\.setval).joined(separator: "\n") + (sequences.isEmpty ? "" : "\n")).utf8)
        members.append(MemberPlan(name: "sequences") { _ in AnySource(BufferSource(setvals)) })
    }

    /// Ends the snapshot's transaction (the backup is committed or has failed).
    public func close() {
        for c in connections { try? c?.execute("COMMIT") }
        try? coordinator.execute("COMMIT")
    }

    /// The connection of stream `slot`, on the snapshot.
    private func connection(_ slot: Int) throws -> PostgresConnection {
        if let made = connections[slot] { return made }
        let made = try PostgresConnection(address, database: database)
        try made.setDumpSession(encoding: encoding)
        try made.importSnapshot(snapshot)
        connections[slot] = made
        return made
    }

    /// pg_dump of this database on the snapshot, custom format without compression.
    private func pgDumpArguments(_ what: [String]) throws -> [String] {
        ["pg_dump", "--no-password", "--format=custom", "--compress=0", "--snapshot=\(snapshot)"] + what
            + PostgresDumpPlan.connectionArguments(address) + [database]
    }

    /// pg_dump's output, checked to start like a custom-format archive.
    private static func archive(_ dump: ProcessOutputSource, what: String) throws -> PrefixedSource<ProcessOutputSource> {
        let head = try dump.read(upTo: 5)
        guard head == Array("PGDMP".utf8) else {
            _ = try? dump.read(upTo: 1 << 20)  // let pg_dump finish and say why
            throw DatabaseError.invalidArgument(
                "pg_dump's archive of \(what) does not start like a custom-format archive (\(head.count) bytes); no backup was committed"
            )
        }
        return PrefixedSource(prefix: head, rest: dump)
    }
}
