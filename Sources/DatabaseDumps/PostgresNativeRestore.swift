import CLibPQ
import DedupStore
import Foundation

/// Restores a backup of the native engine into a PostgreSQL database: the
/// schema's pre-data section (pg_restore), the large objects, then the tables'
/// rows on `jobs` connections at once (`COPY ... FROM STDIN`, each member's
/// chunks verified before a byte is sent), the sequences, and the post-data
/// section (indexes, constraints, triggers) by pg_restore on `jobs` connections.
public final class PostgresNativeRestore {
    private let repository: Repository
    private let manifest: Manifest
    private let contents: NativeContents
    private let address: ServerAddress
    private let target: String
    public var jobs: Int
    /// Decompression and hashing threads of each member's restore.
    public var threads = 1
    public var lockWait: TimeInterval = 600
    public var progress: ((NativeRestoreProgress) -> Void)?
    /// Restore these tables alone (with their indexes, constraints, triggers,
    /// sequences, and the foreign keys between them); nil: the whole backup.
    public var selection: NativeSelection?
    /// How long each phase of the last run took, in order (pre-data, data,
    /// post-data), for the summary.
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

    /// Restores into `target` (already checked, or created, by
    /// `PostgresRestorePlan.prepare`). `force`: the backup's tables are dropped
    /// first (with what depends on them), and pg_restore cleans what it creates.
    public func run(force: Bool) throws {
        try repository.requireKey()
        let lock = try repository.lock(.shared, command: "restore \(manifest.id) into \(target)", wait: lockWait)
        defer { lock.release() }
        // A loader that dies early must make our writes fail (EPIPE), not kill us.
        signal(SIGPIPE, SIG_IGN)
        let folder = try TemporaryFolder()
        defer { folder.remove() }
        let schema = folder.path + "/schema.dump"
        try restoreMember(contents.schema, toFile: schema)
        var listed = [String]()
        if let selection {
            let list = folder.path + "/selection.list"
            try selection.writeList(of: schema, to: list)
            listed = ["--use-list=\(list)"]
        }

        let tables = selection?.tables ?? contents.tables
        let loads = NativeLoads(manifest: manifest, tables: tables)
        let totalBytes = loads.totalBytes
        var clock = PhaseClock()
        defer { phases = clock.phases }
        report(.init(tablesDone: 0, tables: tables.count, bytesDone: 0, bytes: totalBytes, phase: "pre-data"))
        if force && !tables.isEmpty {
            let connection = try PostgresConnection(address, database: target)
            try connection.execute(tables.map { "DROP TABLE IF EXISTS \($0.name) CASCADE;" }.joined(separator: "\n"))
        }
        try pgRestore(["--section=pre-data"] + listed + (force ? ["--clean", "--if-exists"] : []), schema,
                      what: "of the pre-data section")
        if let member = contents.largeObjects, selection == nil {
            let file = folder.path + "/large-objects.dump"
            try restoreMember(member, toFile: file)
            try pgRestore(force ? ["--clean", "--if-exists"] : [], file, what: "of the large objects")
        }
        clock.end("pre-data")
        try load(loads, tables: tables.count, totalBytes: totalBytes)
        if let member = contents.afterData {
            var script = String(decoding: try restorer().bytes(of: manifest.id, member: member), as: UTF8.self)
            if let selection { script = selection.setvals(script) }
            // setval statements: their last result is rows.
            if !script.isEmpty { try PostgresConnection(address, database: target).run(script, expecting: PGRES_TUPLES_OK) { _ in } }
        }
        clock.end("data")
        report(.init(tablesDone: tables.count, tables: tables.count, bytesDone: totalBytes, bytes: totalBytes,
                     phase: "post-data"))
        // Index builds in parallel, each with the server's parallel workers and
        // room to sort in memory.
        try pgRestore(["--section=post-data", "--jobs=\(jobs)"] + listed, schema, what: "of the post-data section",
                      options: "-c maintenance_work_mem=256MB -c max_parallel_maintenance_workers=\(max(0, jobs - 1))")
        let refresh = selection == nil ? contents.refreshStatements : []
        if !refresh.isEmpty { try PostgresConnection(address, database: target).execute(refresh.joined(separator: "\n")) }
        clock.end("post-data")
    }

    private func report(_ p: NativeRestoreProgress) { progress?(p) }

    private func restorer() -> Restorer { .forMember(of: repository, threads: threads) }

    private func restoreMember(_ member: String, toFile path: String) throws {
        try restorer().restore(manifest.id, member: member, to: .file(path: path, overwrite: true))
    }

    /// pg_restore of `file` into the target, stopping at the first error.
    private func pgRestore(_ arguments: [String], _ file: String, what: String, options: String? = nil) throws {
        let args = ["--no-password", "--exit-on-error", "--dbname=\(target)"] + arguments
            + PostgresDumpPlan.connectionArguments(address) + [file]
        if let failure = try PostgresRestorePlan.runPgRestore(args, stdoutFD: STDERR_FILENO, options: options) {
            throw DatabaseError.invalidArgument(
                "pg_restore \(what) \(failure) (its messages are above); database \(target) is partly restored: restore again with --force, or drop it"
            )
        }
    }

    /// The data members on `jobs` connections, the largest tables first; the
    /// first failure cancels the loads under way and is thrown.
    private func load(_ loads: NativeLoads, tables: Int, totalBytes: Int64) throws {
        let connections = try (0..<loads.workers(upTo: jobs)).map { _ in
            let c = try PostgresConnection(address, database: target)
            try c.setLoadSession(encoding: contents.encoding)
            return c
        }
        try loads.run(workers: connections.count) { p in
            self.report(.init(tablesDone: p.tables, tables: tables, bytesDone: p.bytes, bytes: totalBytes, phase: "data"))
        } cancel: { worker in
            connections[worker].cancelRunningCommand()
        } load: { load, worker in
            try self.load(load, on: connections[worker])
        }
    }

    /// Streams one member into its table: the restore hands each verified batch
    /// to COPY as it is decoded. A restore that fails fails the COPY (the table
    /// gets none of it).
    private func load(_ load: NativeLoads.Load, on connection: PostgresConnection) throws {
        let restorer = restorer()
        let columns = load.table.columns.joined(separator: ", ")
        let copy = { (sql: String) in
            try connection.copyIn(sql) { send in
                try restorer.restore(self.manifest.id, member: load.member, to: .consumer(name: "COPY", write: send))
            }
        }
        do {
            if load.whole {
                try connection.execute("BEGIN")
                try connection.execute("TRUNCATE ONLY \(load.table.name)")
                try copy("COPY \(load.table.name) (\(columns)) FROM STDIN WITH (FREEZE)")
                try connection.execute("COMMIT")
            } else {
                try copy("COPY \(load.table.name) (\(columns)) FROM STDIN")
            }
        } catch {
            if load.whole { try? connection.execute("ROLLBACK") }
            throw DatabaseError.loadFailed(table: load.table.name, error: error)
        }
    }
}

/// A folder of our own under the temporary directory, removed with what it holds.
struct TemporaryFolder {
    let path: String

    init() throws {
        var template = Array((NSTemporaryDirectory() + "/dbbackup-restore-XXXXXX").utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ buffer in buffer.baseAddress.flatMap { mkdtemp($0) } })
        else {
            throw DatabaseError.invalidArgument(
                "cannot make a temporary folder in \(NSTemporaryDirectory()) (\(String(cString: strerror(errno))))")
        }
        path = String(cString: made)
    }

    func remove() {
        if let names = try? FileManager.default.contentsOfDirectory(atPath: path) {
            for name in names { unlink(path + "/" + name) }
        }
        rmdir(path)
    }
}

/// A backup of the native engine as one SQL script that psql loads: the
/// pre-data section as pg_restore writes it, the large objects, each member's
/// rows as a `COPY ... FROM stdin` block, the sequences, the post-data section.
public enum PostgresNativeScript {
    /// Writes the script to `fd`; every member is verified as it is restored.
    public static func write(_ manifest: Manifest, contents: NativeContents, repository: Repository, to fd: Int32,
                             name: String, selection: NativeSelection? = nil, lockWait: TimeInterval = 600) throws {
        try repository.requireKey()
        let lock = try repository.lock(.shared, command: "restore \(manifest.id) as SQL", wait: lockWait)
        defer { lock.release() }
        signal(SIGPIPE, SIG_IGN)
        let folder = try TemporaryFolder()
        defer { folder.remove() }
        func restorer() -> Restorer { .forMember(of: repository) }
        func text(_ s: String) throws {
            try Array(s.utf8).withUnsafeBytes { try FileIO.writeAll(fd, $0, path: name) }
        }
        /// A member that is a pg_dump archive, in a file of the folder (restored once).
        func archiveFile(_ member: String) throws -> String {
            let file = folder.path + "/" + member.replacingOccurrences(of: "/", with: "_")
            if !FileIO.exists(file) {
                try restorer().restore(manifest.id, member: member, to: .file(path: file, overwrite: true))
            }
            return file
        }
        var listed = [String]()
        func archive(_ member: String, _ arguments: [String]) throws {
            let file = try archiveFile(member)
            if let failure = try PostgresRestorePlan.runPgRestore(["--file=-"] + arguments + listed + [file], stdoutFD: fd) {
                throw DatabaseError.invalidArgument("pg_restore of the \(member) member \(failure) (its messages are above)")
            }
        }
        try text("-- dbbackup: backup \(manifest.id) of database \(manifest.database ?? "?") (native engine)\n"
                 + "-- load into an empty database: psql --set ON_ERROR_STOP=1 -d <db> -f <this file>\n")
        if let selection {
            let list = folder.path + "/selection.list"
            try selection.writeList(of: try archiveFile(contents.schema), to: list)
            listed = ["--use-list=\(list)"]
        }
        try archive(contents.schema, ["--section=pre-data"])
        if let member = contents.largeObjects, selection == nil { try archive(member, []) }
        for table in selection?.tables ?? contents.tables {
            for member in table.members {
                try text("\nCOPY \(table.name) (\(table.columns.joined(separator: ", "))) FROM stdin;\n")
                try restorer().restore(manifest.id, member: member, to: .descriptor(fd, name: name))
                try text("\\.\n")
            }
        }
        if let member = contents.afterData {
            try text("\n")
            if let selection {
                try text(selection.setvals(String(decoding: try restorer().bytes(of: manifest.id, member: member), as: UTF8.self)))
            } else {
                try restorer().restore(manifest.id, member: member, to: .descriptor(fd, name: name))
            }
        }
        try archive(contents.schema, ["--section=post-data"])
        let refresh = selection == nil ? contents.refreshStatements : []
        if !refresh.isEmpty { try text("\n" + refresh.joined(separator: "\n") + "\n") }
    }
}
