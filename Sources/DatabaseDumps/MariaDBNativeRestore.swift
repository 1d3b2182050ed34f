import DedupStore
import Foundation

/// Restores a native backup of MySQL/MariaDB: the schema through the mariadb
/// client, each table's rows by `LOAD DATA LOCAL INFILE` on `jobs`
/// connections at once (foreign key and unique checks off for the load, as a
/// dump's own header sets them), then the triggers.
public final class MariaDBNativeRestore {
    private let repository: Repository
    private let manifest: Manifest
    private let contents: NativeContents
    private let address: ServerAddress
    private let target: String
    public var jobs: Int
    public var threads = 1
    public var lockWait: TimeInterval = 600
    public var progress: ((NativeRestoreProgress) -> Void)?
    /// Restore these tables alone (their definitions, rows and triggers); nil:
    /// the whole backup.
    public var selection: MariaDBSelection?
    /// With `selection`: drop the tables first (`--force`).
    public var replace = false
    public private(set) var phases: [(name: String, seconds: Double)] = []

    public init(repository: Repository, manifest: Manifest, contents: NativeContents, address: ServerAddress,
                target: String, jobs: Int) {
        self.repository = repository
        self.manifest = manifest
        self.contents = contents
        self.address = address
        self.target = target
        self.jobs = max(1, jobs)
    }

    /// Restores into `target`, checked (or created) by `MariaDBRestorePlan.prepare`,
    /// whose client `arguments` load the schema and triggers. The schema drops
    /// each table before it creates it: over a database restored before, as
    /// `--force` asks.
    public func run(client arguments: [String]) throws {
        try repository.requireKey()
        let lock = try repository.lock(.shared, command: "restore \(manifest.id) into \(target)", wait: lockWait)
        defer { lock.release() }
        signal(SIGPIPE, SIG_IGN)
        var clock = PhaseClock()
        defer { phases = clock.phases }
        let tables = selection?.tables ?? contents.tables
        let loads = NativeLoads(manifest: manifest, tables: tables)
        let totalBytes = loads.totalBytes
        if let selection {
            let control = try MariaDBConnection(address, database: target)
            for statement in selection.createStatements(replace: replace) { try control.execute(statement) }
        } else {
            try load(member: contents.schema, into: arguments, what: "the schema")
        }
        clock.end("schema")
        let connections = try (0..<loads.workers(upTo: jobs)).map { _ in
            let c = try MariaDBConnection(address, database: target, localInfile: true)
            try c.setLoadSession()
            return c
        }
        let threadIDs = connections.map(\.threadID)
        let server = address, database = target
        try loads.run(workers: connections.count) { p in
            self.progress?(.init(tablesDone: p.tables, tables: tables.count, bytesDone: p.bytes, bytes: totalBytes,
                                 phase: "data"))
        } cancel: { worker in
            // From a connection of its own: the worker's is busy.
            try? MariaDBConnection(server, database: database).execute("KILL QUERY \(threadIDs[worker])")
        } load: { load, worker in
            try self.load(load, on: connections[worker])
        }
        clock.end("data")
        if let selection {
            let control = try MariaDBConnection(address, database: target)
            for statement in selection.triggerStatements { try control.execute(statement) }
        } else if let triggers = contents.afterData {
            try load(member: triggers, into: arguments, what: "the triggers")
        }
        clock.end("triggers")
    }

    private func restorer() -> Restorer { .forMember(of: repository, threads: threads) }

    /// A member of SQL into the mariadb client.
    private func load(member: String, into arguments: [String], what: String) throws {
        if let failure = try restorer().restore(manifest.id, member: member, intoProgram: arguments) {
            throw DatabaseError.invalidArgument(
                "\(arguments.first ?? "mariadb") loading \(what) \(failure) (its messages are above); database \(target) is partly restored: restore again with --force, or drop it"
            )
        }
    }

    /// One member's rows through LOAD DATA LOCAL INFILE, fed by a restore of
    /// the member on a thread of its own (a failed restore fails the statement).
    private func load(_ load: NativeLoads.Load, on connection: MariaDBConnection) throws {
        let sql = """
            LOAD DATA LOCAL INFILE 'dbbackup-member' INTO TABLE \(load.table.name) CHARACTER SET binary \
            FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' (\(load.table.columns.joined(separator: ", ")))
            """
        do {
            let feed = try MemberPipe(restorer: restorer(), manifest: manifest.id, member: load.member)
            defer { feed.finish() }
            try connection.loadData(sql, from: feed.source)
        } catch {
            let failure = DatabaseError.loadFailed(table: load.table.name, error: error)
            let detail = failure.detail
            if detail.contains("command is not allowed") || detail.contains("not allowed with this MariaDB version")
                || detail.contains("local_infile") {
                throw DatabaseError.invalidArgument(
                    "the server refuses LOAD DATA LOCAL INFILE (\(detail)); set local_infile=ON on it for the native engine's restore, or restore to a file and load the script with the mariadb client")
            }
            throw failure
        }
    }
}

/// A member restored into a pipe on a thread of its own, read as a source
/// that, at its end, throws what the restore threw: a member cut short is an
/// error, never a short table.
final class MemberPipe {
    private let outcome = Outcome()
    private let readFD: Int32
    let source: Source

    final class Outcome: @unchecked Sendable {
        let done = DispatchSemaphore(value: 0)
        private let lock = NSLock()
        private var error: Error?
        func set(_ e: Error) { lock.withLock { error = e } }
        var failure: Error? { lock.withLock { error } }
    }

    struct Source: ByteSource {
        var inner: FileDescriptorSource
        let outcome: Outcome
        mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
            let n = try inner.read(into: buffer)
            if n == 0 {
                outcome.done.wait()
                outcome.done.signal()
                if let failure = outcome.failure { throw failure }
            }
            return n
        }
    }

    init(restorer: Restorer, manifest: String, member: String) throws {
        guard let pipe = FileIO.makePipe() else {
            throw DatabaseError.invalidArgument("cannot make a pipe (\(String(cString: strerror(errno))))")
        }
        readFD = pipe.read
        source = Source(inner: FileDescriptorSource(fd: pipe.read, name: "member \(member)"), outcome: outcome)
        let outcome = outcome
        let writeFD = pipe.write
        nonisolated(unsafe) let restorer = restorer
        let thread = Thread {
            do {
                try restorer.restore(manifest, member: member, to: .descriptor(writeFD, name: "member \(member)"))
            } catch {
                outcome.set(error)
            }
            close(writeFD)
            outcome.done.signal()
        }
        thread.start()
    }

    /// Closes the read end (a restore still writing stops with EPIPE) and
    /// waits for the restore's thread.
    func finish() {
        close(readFD)
        outcome.done.wait()
        outcome.done.signal()
    }
}

/// A native backup of MySQL/MariaDB as one script the mariadb client loads:
/// the schema, each member's rows as INSERT statements, the triggers.
public enum MariaDBNativeScript {
    public static func write(_ manifest: Manifest, contents: NativeContents, repository: Repository, to fd: Int32,
                             name: String, selection: MariaDBSelection? = nil, lockWait: TimeInterval = 600) throws {
        try repository.requireKey()
        let lock = try repository.lock(.shared, command: "restore \(manifest.id) as SQL", wait: lockWait)
        defer { lock.release() }
        func restorer() -> Restorer { .forMember(of: repository) }
        func text(_ bytes: [UInt8]) throws { try bytes.withUnsafeBytes { try FileIO.writeAll(fd, $0, path: name) } }
        try text(Array("-- dbbackup: backup \(manifest.id) of database \(manifest.database ?? "?") (native engine)\n-- load: mariadb --database=<db> < <this file>\n".utf8))
        if let selection {
            try text(Array((selection.createStatements(replace: true).joined(separator: ";\n") + ";\n").utf8))
        } else {
            try restorer().restore(manifest.id, member: contents.schema, to: .descriptor(fd, name: name))
        }
        // The rows as the dump's sessions read them: bytes as stored, UTC, a 0
        // kept in an AUTO_INCREMENT column; the client's settings come back after.
        try text(Array("""

            SET @DBBACKUP_FK = @@FOREIGN_KEY_CHECKS, @DBBACKUP_UQ = @@UNIQUE_CHECKS, @DBBACKUP_TZ = @@TIME_ZONE, @DBBACKUP_MODE = @@SQL_MODE, @DBBACKUP_CS = @@CHARACTER_SET_CLIENT, @DBBACKUP_CR = @@CHARACTER_SET_RESULTS, @DBBACKUP_CC = @@COLLATION_CONNECTION;
            SET FOREIGN_KEY_CHECKS = 0, UNIQUE_CHECKS = 0, TIME_ZONE = '+00:00', SQL_MODE = 'NO_AUTO_VALUE_ON_ZERO';
            SET NAMES binary;

            """.utf8))
        for table in selection?.tables ?? contents.tables {
            for member in table.members {
                // The restore's batches, in order, one at a time, into INSERTs.
                final class Writer: @unchecked Sendable {
                    var insert: MariaDBInsertWriter
                    init(_ insert: MariaDBInsertWriter) { self.insert = insert }
                }
                let writer = Writer(MariaDBInsertWriter(table: table.name, columns: table.columns))
                try restorer().restore(manifest.id, member: member, to: .consumer(name: name) { batch in
                    try writer.insert.feed(batch) { statement in
                        try statement.withUnsafeBytes { try FileIO.writeAll(fd, $0, path: name) }
                    }
                })
                try writer.insert.finish(emit: text)
            }
        }
        try text(Array("""
            SET FOREIGN_KEY_CHECKS = @DBBACKUP_FK, UNIQUE_CHECKS = @DBBACKUP_UQ, TIME_ZONE = @DBBACKUP_TZ, SQL_MODE = @DBBACKUP_MODE;
            SET CHARACTER_SET_CLIENT = @DBBACKUP_CS, CHARACTER_SET_RESULTS = @DBBACKUP_CR, COLLATION_CONNECTION = @DBBACKUP_CC;

            """.utf8))
        if let selection {
            for trigger in selection.triggerStatements {
                try text(Array("DELIMITER ;;\n\(trigger);;\nDELIMITER ;\n".utf8))
            }
        } else if let triggers = contents.afterData {
            try restorer().restore(manifest.id, member: triggers, to: .descriptor(fd, name: name))
        }
    }
}
