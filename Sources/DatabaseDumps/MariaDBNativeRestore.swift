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
    public var progress: ((PostgresNativeRestore.Progress) -> Void)?
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
        phases = []
        var started = Date()
        func phaseEnded(_ name: String) {
            phases.append((name, Date().timeIntervalSince(started)))
            started = Date()
        }
        let tables = selection?.tables ?? contents.tables
        let totalBytes = tables.reduce(Int64(0)) { sum, t in
            sum + t.members.reduce(0) { $0 + ((try? manifest.stream($1).size) ?? 0) }
        }
        if let selection {
            let control = try MariaDBConnection(address, database: target)
            for statement in selection.createStatements(replace: replace) { try control.execute(statement) }
        } else {
            try load(member: contents.schema, into: arguments, what: "the schema")
        }
        phaseEnded("schema")
        let connections = try (0..<min(jobs, max(1, tables.reduce(0) { $0 + $1.members.count }))).map { _ in
            let c = try MariaDBConnection(address, database: target, localInfile: true)
            try c.setLoadSession()
            return c
        }
        let threadIDs = connections.map(\.threadID)
        let server = address, database = target
        try NativeLoads(manifest: manifest, tables: tables).run(workers: connections.count) { p in
            self.progress?(.init(tablesDone: p.tables, tables: tables.count, bytesDone: p.bytes, bytes: totalBytes,
                                 phase: "data"))
        } cancel: { worker in
            // From a connection of its own: the worker's is busy.
            try? MariaDBConnection(server, database: database).execute("KILL QUERY \(threadIDs[worker])")
        } load: { load, worker in
            try self.load(load, on: connections[worker])
        }
        phaseEnded("data")
        if let selection {
            let control = try MariaDBConnection(address, database: target)
            for statement in selection.triggerStatements { try control.execute(statement) }
        } else if let triggers = contents.afterData {
            try load(member: triggers, into: arguments, what: "the triggers")
        }
        phaseEnded("triggers")
    }

    private func restorer() -> Restorer {
        let r = Restorer(repository: repository)
        r.callerHoldsLock = true
        r.jobs = threads
        return r
    }

    /// A member of SQL into the mariadb client.
    private func load(member: String, into arguments: [String], what: String) throws {
        guard let tool = arguments.first, let exe = findExecutable(tool) else {
            throw DatabaseError.toolMissing(tool: arguments.first ?? "mariadb", package: "mariadb-client")
        }
        let (client, input) = try ChildProcess.feeding(executable: exe, arguments: arguments, stdoutFD: STDERR_FILENO)
        do {
            try restorer().restore(manifest.id, member: member, to: .descriptor(input, name: tool))
        } catch {
            close(input)
            _ = client.wait()
            throw error
        }
        close(input)
        if let failure = client.failure() {
            throw DatabaseError.invalidArgument(
                "\(tool) loading \(what) \(failure) (its messages are above); database \(target) is partly restored: restore again with --force, or drop it"
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
            let detail: String
            switch error {
            case DatabaseError.queryFailed(_, let d): detail = d
            case let e as DatabaseError: detail = e.message
            case let e as DedupError: detail = e.message
            default: detail = "\(error)"
            }
            if detail.contains("command is not allowed") || detail.contains("not allowed with this MariaDB version")
                || detail.contains("local_infile") {
                throw DatabaseError.invalidArgument(
                    "the server refuses LOAD DATA LOCAL INFILE (\(detail)); set local_infile=ON on it for the native engine's restore, or restore to a file and load the script with the mariadb client")
            }
            throw DatabaseError.loadFailed(table: load.table.name, detail: detail)
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
        func restorer() -> Restorer {
            let r = Restorer(repository: repository)
            r.callerHoldsLock = true
            return r
        }
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
                let feed = try MemberPipe(restorer: restorer(), manifest: manifest.id, member: member)
                defer { feed.finish() }
                var source = feed.source
                var writer = MariaDBInsertWriter(table: table.name, columns: table.columns)
                var buffer = [UInt8](repeating: 0, count: 1 << 20)
                while true {
                    let n = try buffer.withUnsafeMutableBytes { try source.read(into: $0) }
                    if n == 0 { break }
                    try buffer.withUnsafeBytes { try writer.feed(UnsafeRawBufferPointer(rebasing: $0[0..<n]), emit: text) }
                }
                try writer.finish(emit: text)
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
