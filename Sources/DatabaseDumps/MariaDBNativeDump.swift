import DedupStore
import Foundation

/// The native engine's dump of one MySQL/MariaDB database, in the manner of
/// mydumper: a brief `FLUSH TABLES WITH READ LOCK` on a coordinating
/// connection, under which every worker starts a transaction with a
/// consistent snapshot and the binary log position and GTID are read; then the
/// lock goes and each table's rows (large ones in ranges of their integer
/// primary key) stream from the workers, one member each.
///
/// Members: `contents`, `schema` (mariadb-dump --no-data: tables, views,
/// routines and events, no triggers), `data/<table>` or `data/<table>/<part>`
/// (LOAD DATA text), `triggers` (mariadb-dump of the triggers alone, loaded
/// after the rows, as a dump loads them after its INSERTs).
public final class MariaDBNativeDump {
    public let contents: NativeContents
    public let info: Manifest.DumpInfo
    public let command: [String]
    public let expectedSize: Int64?
    public private(set) var members: [MemberPlan] = []
    public let streams: Int

    private var workers: [MariaDBConnection]
    private var copies: [String: MariaDBRowsOut] = [:]

    /// Tables larger than this (InnoDB's data length) with an integer primary
    /// key are dumped in ranges of the key of about this size.
    public static let defaultPartBytes: Int64 = NativeContents.partBytes

    public init(address: ServerAddress, database: String, jobs: Int, partBytes: Int64 = defaultPartBytes,
                notice: (String) -> Void = { _ in }) throws {
        guard !database.hasPrefix("-") else { throw DatabaseError.invalidArgument("--database takes a database name") }
        guard let tool = ["mariadb-dump", "mysqldump"].first(where: { findExecutable($0) != nil }) else {
            throw DatabaseError.toolMissing(tool: "mariadb-dump", package: "mariadb-client")
        }
        streams = max(1, jobs)
        let coordinator = try MariaDBConnection(address, database: database)
        let size = try? coordinator.databaseSize(database)
        expectedSize = size
        let tables = try coordinator.tablesToCopy(database)
        let nontransactional = tables.filter { $0.engine.lowercased() != "innodb" }
        guard nontransactional.isEmpty else {
            throw DatabaseError.invalidArgument(
                "the native engine's snapshot covers InnoDB tables; \(nontransactional.map { "\($0.name) (\($0.engine))" }.joined(separator: ", ")) would not be consistent: back them up with mariadb-dump (leave out --engine native)"
            )
        }
        workers = try (0..<streams).map { _ in
            let w = try MariaDBConnection(address, database: database)
            try w.setDumpSession()
            return w
        }
        // The snapshot: every worker's transaction starts under the lock, at
        // the binary log position read under it.
        try coordinator.execute("FLUSH TABLES WITH READ LOCK")
        var position: BinlogPosition?
        do {
            for w in workers { try w.startConsistentSnapshot() }
            if try coordinator.binaryLogOn() { position = try coordinator.currentBinlog() }
            try coordinator.execute("UNLOCK TABLES")
        } catch {
            try? coordinator.execute("UNLOCK TABLES")
            throw error
        }
        if position == nil {
            notice("the server writes no binary log: point-in-time recovery cannot start from this backup")
        }
        var info = Manifest.DumpInfo(
            engine: coordinator.engine.rawValue, serverVersion: coordinator.serverVersion, server: address.mariaLabel,
            tool: "dbbackup native (SELECT, LOAD DATA) + \(tool) --no-data",
            toolVersion: try PostgresDumpPlan.version(of: tool), format: NativeFormat.name, databaseSize: size,
            binlogFile: position?.file, binlogPosition: position?.position,
            gtid: position.flatMap { coordinator.gtid(at: $0) })
        info.serverID = try? coordinator.serverID()
        self.info = info
        command = ["dbbackup-native", "--jobs=\(streams)"] + MariaDBDumpPlan.connectionArguments(address) + [database]

        var described = [NativeContents.Table]()
        var data = [(member: String, table: MariaDBTable, query: String)]()
        // Each table's own definition and triggers, for a restore of some tables.
        var definitions = [String: (create: String, triggers: [String])]()
        let triggerNames = try coordinator.rows(
            "SELECT event_object_table, trigger_name FROM information_schema.triggers WHERE event_object_schema = "
                + coordinator.quoted(literal: database) + " ORDER BY event_object_table, action_order")
        for table in tables {
            let create = try coordinator.rows("SHOW CREATE TABLE \(table.quoted)").first.flatMap { $0.count > 1 ? $0[1] : nil } ?? ""
            let triggers = try triggerNames.filter { $0[0] == table.name }.compactMap { t in
                try coordinator.rows("SHOW CREATE TRIGGER \(MariaDBConnection.quoted(identifier: t[1]))").first
                    .flatMap { $0.count > 2 ? $0[2] : nil }
            }
            definitions[table.name] = (create, triggers)
        }
        for table in tables {
            let select = "SELECT \(table.columns.joined(separator: ", ")) FROM \(table.quoted)"
            var parts = 1
            var bounds: (Int64, Int64)?
            if let key = table.integerKey, table.bytes > partBytes, let range = try workers[0].range(of: key, in: table.quoted) {
                parts = Int(min(64, (table.bytes + partBytes - 1) / partBytes))
                bounds = range
            }
            let base = "data/" + table.name
            guard parts > 1, let (low, high) = bounds, let key = table.integerKey else {
                described.append(.init(name: table.quoted, columns: table.columns, bytes: table.bytes, members: [base]))
                described[described.count - 1].createStatement = definitions[table.name]?.create
                described[described.count - 1].triggerStatements = definitions[table.name]?.triggers
                data.append((base, table, select))
                continue
            }
            // Ranges of the key; the first and last open-ended.
            let step = max(1, (high - low) / Int64(parts) + 1)
            var names = [String]()
            for part in 0..<parts {
                let name = base + "/\(part + 1)"
                names.append(name)
                let from = low + Int64(part) * step
                var conditions = [String]()
                if part > 0 { conditions.append("\(key) >= \(from)") }
                if part < parts - 1 { conditions.append("\(key) < \(from + step)") }
                let condition = conditions.isEmpty ? "" : " WHERE " + conditions.joined(separator: " AND ")
                data.append((name, table, select + condition))
            }
            described.append(.init(name: table.quoted, columns: table.columns, bytes: table.bytes, members: names))
            described[described.count - 1].createStatement = definitions[table.name]?.create
            described[described.count - 1].triggerStatements = definitions[table.name]?.triggers
        }
        let contents = NativeContents(
            engine: coordinator.engine.rawValue, schema: "schema", largeObjects: nil, afterData: "triggers",
            tables: described)
        self.contents = contents
        let encoded = try contents.encoded()
        members.append(MemberPlan(name: NativeContents.memberName) { _ in AnySource(BufferSource(encoded)) })
        let dumpArguments = [tool, "--no-data", "--single-transaction", "--skip-lock-tables"]
            + MariaDBDumpPlan.connectionArguments(address)
        let schemaArguments = dumpArguments + ["--routines", "--events", "--skip-triggers", "--", database]
        members.append(MemberPlan(name: contents.schema) { _ in
            AnySource(try ProcessOutputSource(arguments: schemaArguments))
        })
        for (member, table, query) in data {
            members.append(MemberPlan(name: member, rows: { [weak self] in self?.copies[member]?.rows }) {
                [unowned self] slot in
                let rows = try MariaDBRowsOut(self.workers[slot], query: query, table: table.name)
                self.copies[member] = rows
                return AnySource(rows)
            })
        }
        let triggerArguments = dumpArguments + ["--no-create-info", "--triggers", "--skip-routines", "--skip-events",
                                                "--", database]
        members.append(MemberPlan(name: "triggers") { _ in
            AnySource(try ProcessOutputSource(arguments: triggerArguments))
        })
    }

    /// Ends the workers' transactions.
    public func close() {
        for w in workers { try? w.execute("COMMIT") }
    }
}
