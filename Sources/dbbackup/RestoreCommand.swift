import ArgumentParser
import Catalog
import DatabaseDumps
import DedupStore
import Foundation

struct DedupRestore: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Restore a backup byte for byte to a file or standard output.",
        discussion: """
        Every chunk is checked against its SHA-256 id, the chunk list against its
        checksum, the length, and the whole stream's SHA-256 when the backup recorded
        one (--stream-sha256). A file is written under a temporary name, fsynced and
        renamed only when all checks pass, so a failed restore leaves no file that
        looks complete. With -, a failure is
        reported on stderr and the exit status is 1 after partial output.

        With --target-db a dump made by `dedup backup-db` goes straight into a
        database: pg_restore --exit-on-error (PostgreSQL custom format), psql with
        ON_ERROR_STOP (plain) or the mariadb client reads the verified stream. The
        database must exist (--create makes it) and be empty unless --force (then
        pg_restore drops what it restores first: --clean --if-exists; a MariaDB dump
        drops and recreates each of its tables).
          dbbackup dedup restore 2026-11-21_020000_shop --target-db shop_copy --create

        A backup of the native engine (backup-db --engine native) loads into a server
        table by table on --jobs connections (COPY, or LOAD DATA LOCAL INFILE), the
        indexes and constraints after the rows; --table restores some of its tables
        (PostgreSQL); to a file it becomes one SQL script for psql or mariadb; --member
        restores one member stream byte for byte. docs/NATIVE.md.
          dbbackup dedup restore <id> --target-db shop_copy --create --jobs 4
          dbbackup dedup restore <id> --target-db shop_copy --table public.orders
          dbbackup dedup restore <id> shop.sql
        """)

    @OptionGroup var store: StoreOptions

    @Argument(help: ArgumentHelp("Backup id, or a unique prefix of one.", valueName: "manifest-id"))
    var id: String

    @Argument(help: ArgumentHelp("Output file, or - for standard output (or use --target-db).", valueName: "output"))
    var output: String?

    @Flag(help: "Replace the output file if it exists; with --target-db, restore over a database that is not empty.")
    var force = false

    @Option(
        help: ArgumentHelp(
            "Restore a backup-db dump straight into this database (pg_restore, psql or mariadb).", valueName: "database"
        ))
    var targetDb: String?

    @Flag(help: "With --target-db: create the database first if it does not exist.")
    var create = false

    /// With --target-db: the server.
    @OptionGroup var server: ServerOptions

    @Option(
        help: ArgumentHelp("Seconds to wait while gc or an index rebuild holds the repository.", valueName: "seconds"))
    var lockWait: Int = 600

    @Option(
        help: ArgumentHelp(
            "With --target-db, a native backup: tables loaded at once, each on its own connection, and pg_restore's --jobs for the indexes (default: this machine's cores, at most 8).",
            valueName: "n"))
    var jobs: Int?

    @Option(help: ArgumentHelp("Threads for decompression and hashing (default: all cores).", valueName: "n"))
    var threads: Int?

    @Option(
        name: .customLong("table"),
        help: ArgumentHelp(
            "A native backup: restore this table alone (repeatable; shell patterns such as 'public.order*'; without a schema, in any schema), with its indexes, constraints, triggers and sequences (MySQL/MariaDB: its definition and triggers), and the foreign keys among the tables restored.",
            valueName: "table"))
    var tables: [String] = []

    @Option(
        help: ArgumentHelp(
            "A backup of member streams (the native engine's): restore this member alone, byte for byte, to the output.",
            valueName: "name"))
    var member: String?

    func validate() throws {
        if let jobs, jobs < 1 { throw ValidationError("--jobs takes a positive number") }
        if let threads, threads < 1 { throw ValidationError("--threads takes a positive number") }
        if member != nil && targetDb != nil { throw ValidationError("--member restores to a file; leave out --target-db") }
        if member != nil && !tables.isEmpty { throw ValidationError("give --member or --table, not both") }
        switch (output, targetDb) {
        case (nil, nil): throw ValidationError("where to? give an output file, - for standard output, or --target-db")
        case (.some, .some): throw ValidationError("give either an output file or --target-db, not both")
        default: break
        }
        if targetDb == nil && (create || !server.isEmpty) {
            throw ValidationError("--create and the connection flags go with --target-db")
        }
    }

    func run() throws {
        try reportingErrors(noSpaceHint: "the disk receiving the restore is full: the partial output was removed") {
            let repo = try store.open()
            let restorer = Restorer(repository: repo)
            restorer.lockWait = TimeInterval(lockWait)
            if let threads { restorer.jobs = threads }
            let started = Date()
            restorer.progress = { written in
                Terminal.progress(
                    "\(Format.bytes(Int64(written))) restored, \(Format.rate(Int64(written), Date().timeIntervalSince(started)))"
                )
            }
            func recorded(_ body: () throws -> Manifest) throws -> Manifest {
                do {
                    let m = try body()
                    if !repo.isReadOnly {
                        CatalogHook.record(
                            repo,
                            .init(
                                kind: "restore", status: "success", name: m.name, database: m.database,
                                engine: m.dump?.engine ?? m.dbType,
                                backupType: m.kind, durationSeconds: Date().timeIntervalSince(started), size: m.size))
                    }
                    return m
                } catch {
                    if !repo.isReadOnly {
                        CatalogHook.record(
                            repo, .init(kind: "restore", status: "failure", name: id, message: errorMessage(error)))
                    }
                    throw error
                }
            }
            if let targetDb {
                let m = try recorded { try restoreIntoServer(repo, restorer, database: targetDb) }
                Terminal.clearProgress()
                Terminal.out(summary(m, since: started, read: restorer.packBytesRead) + " -> database \(targetDb)")
                return
            }
            let output = output ?? "-"
            let target: RestoreTarget = output == "-" ? .standardOutput : .file(path: output, overwrite: force)
            let m = try recorded {
                let manifest = try repo.loadManifest(try repo.resolveManifestID(id))
                if member == nil, manifest.dump?.format == NativeFormat.name {
                    try writeScript(manifest, repo, to: output)
                    return manifest
                }
                try requireNoTables(manifest)
                return try restorer.restore(manifest.id, member: member, to: target)
            }
            Terminal.clearProgress()
            if output == "-" {
                Terminal.err(summary(m, since: started, read: restorer.packBytesRead))
            } else {
                Terminal.out(summary(m, since: started, read: restorer.packBytesRead) + " -> \(output)")
            }
        }
    }

    /// After a native backup's restore: how long each phase took.
    private func tellPhases(_ phases: [(name: String, seconds: Double)], connections: Int) {
        Terminal.clearProgress()
        Terminal.err(
            "loaded on \(connections) connections: "
                + phases.map { "\($0.name) \(String(format: "%.2f", $0.seconds)) s" }.joined(separator: ", "))
    }

    /// The progress line of a native backup's restore: tables, bytes, ETA.
    private func nativeProgress() -> (NativeRestoreProgress) -> Void {
        let started = Date()
        return { p in
            let elapsed = Date().timeIntervalSince(started)
            var line = "\(p.phase): \(p.tablesDone)/\(p.tables) tables, \(Format.bytes(p.bytesDone)) of \(Format.bytes(p.bytes))"
            if p.phase == "data", p.bytesDone > 0, p.bytes > 0 {
                let done = Double(p.bytesDone) / Double(p.bytes)
                line += ", \(Format.rate(p.bytesDone, elapsed)), ETA \(Format.duration(elapsed / done - elapsed))"
            }
            Terminal.progress(line)
        }
    }

    /// --table picks tables of a native backup; another is one stream.
    private func requireNoTables(_ manifest: Manifest) throws {
        guard tables.isEmpty else {
            throw ValidationError(
                "--table picks tables of a backup made by the native engine (backup-db --engine native); \(manifest.id) is one stream: restore it to a file and use pg_restore --table")
        }
    }

    /// A native backup as one SQL script, to a file (written under a temporary
    /// name, fsynced, then renamed) or standard output.
    private func writeScript(_ manifest: Manifest, _ repo: Repository, to output: String) throws {
        let contents = try NativeContents.read(manifest, from: repo)
        let mysql = DatabaseEngine(name: contents.engine)?.isMySQLFamily == true
        let selection = mysql ? nil : try NativeSelection(contents, patterns: tables)
        let mariaSelection = mysql ? try MariaDBSelection(contents, patterns: tables) : nil
        func write(_ fd: Int32, _ name: String) throws {
            if mysql {
                try MariaDBNativeScript.write(manifest, contents: contents, repository: repo, to: fd, name: name,
                                              selection: mariaSelection, lockWait: TimeInterval(lockWait))
            } else {
                try PostgresNativeScript.write(manifest, contents: contents, repository: repo, to: fd, name: name,
                                               selection: selection, lockWait: TimeInterval(lockWait))
            }
        }
        guard output != "-" else {
            try write(STDOUT_FILENO, "standard output")
            return
        }
        if !force && FileIO.exists(output) {
            throw DedupError.invalidArgument("\(output) exists; pass --force to replace it")
        }
        let temporary = output + ".dbbackup-partial"
        let fd = try FileIO.open(temporary, O_WRONLY | O_CREAT | O_TRUNC, mode: 0o600)
        do {
            try write(fd, output)
            try FileIO.fsync(fd, path: temporary)
            close(fd)
            guard rename(temporary, output) == 0 else {
                throw DedupError.invalidArgument("cannot rename \(temporary) to \(output): \(String(cString: strerror(errno)))")
            }
        } catch {
            close(fd)
            unlink(temporary)
            throw error
        }
    }

    private func summary(_ m: Manifest, since started: Date, read: Int64) -> String {
        let elapsed = Date().timeIntervalSince(started)
        let checked = m.sha256 == nil ? "every chunk verified" : "every chunk and the stream's sha256 verified"
        // A native backup's members are restored by restorers of their own.
        let reads = m.dump?.format == NativeFormat.name ? "" : "; read \(Format.bytes(read)) (\(read) bytes) of packs"
        return
            "restored \(m.id): \(Format.bytes(m.size)) (\(m.size) bytes), \(checked), \(Format.duration(elapsed)), \(Format.rate(m.size, elapsed))\(reads)"
    }

    /// Pipes the verified stream into the loader the dump's driver names:
    /// pg_restore (custom format), psql (plain) or the mariadb client.
    private func restoreIntoServer(_ repo: Repository, _ restorer: Restorer, database: String) throws -> Manifest {
        let manifest = try repo.loadManifest(try repo.resolveManifestID(id))
        if let dump = manifest.dump, dump.format == NativeFormat.name, DatabaseEngine(name: dump.engine)?.isMySQLFamily == true {
            let plan = try MariaDBRestorePlan.prepare(address: server.address, target: database, create: create, force: force)
            let contents = try NativeContents.read(manifest, from: repo)
            let loader = MariaDBNativeRestore(
                repository: repo, manifest: manifest, contents: contents, address: server.address, target: database,
                jobs: jobs ?? min(8, max(1, ProcessInfo.processInfo.activeProcessorCount)))
            loader.lockWait = TimeInterval(lockWait)
            if let threads { loader.threads = threads }
            loader.selection = try MariaDBSelection(contents, patterns: tables)
            loader.replace = force
            loader.progress = nativeProgress()
            try loader.run(client: plan.arguments)
            tellPhases(loader.phases, connections: loader.jobs)
            return manifest
        }
        if let dump = manifest.dump, dump.format == NativeFormat.name, DatabaseEngine(name: dump.engine) == .postgres {
            // The target checked (and created) as for a pg_dump backup.
            _ = try PostgresRestorePlan.prepare(
                address: server.address, target: database, format: .custom, create: create, force: force)
            let contents = try NativeContents.read(manifest, from: repo)
            let selection = try NativeSelection(contents, patterns: tables)
            let loader = PostgresNativeRestore(
                repository: repo, manifest: manifest, contents: contents, address: server.address, target: database,
                jobs: jobs ?? min(8, max(1, ProcessInfo.processInfo.activeProcessorCount)))
            loader.lockWait = TimeInterval(lockWait)
            loader.selection = selection
            if let threads { loader.threads = threads }
            loader.progress = nativeProgress()
            try loader.run(force: force)
            tellPhases(loader.phases, connections: loader.jobs)
            return manifest
        }
        try requireNoTables(manifest)
        guard let dump = manifest.dump, let engine = DatabaseEngine(name: dump.engine),
            let plan = try engine.driver(address: server.address).restorePlan(
                for: dump, into: database, create: create, force: force)
        else {
            throw DatabaseError.invalidArgument(
                "backup \(manifest.id) was not made by `dedup backup-db`; restore it to a file and load it yourself")
        }
        let arguments = plan.arguments
        let tool = arguments[0]
        if let failure = try restorer.restore(manifest.id, intoProgram: arguments) {
            throw DatabaseError.invalidArgument(
                "\(tool) \(failure) (its messages are above); database \(database) may be partly restored")
        }
        return manifest
    }
}

