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
        """)

    @OptionGroup var store: StoreOptions

    @Argument(help: ArgumentHelp("Backup id, or a unique prefix of one.", valueName: "manifest-id"))
    var id: String

    @Argument(help: ArgumentHelp("Output file, or - for standard output (or use --target-db).", valueName: "output"))
    var output: String?

    @Flag(help: "Replace the output file if it exists; with --target-db, restore over a database that is not empty.")
    var force = false

    @Option(help: ArgumentHelp("Restore a backup-db dump straight into this database (pg_restore, psql or mariadb).", valueName: "database"))
    var targetDb: String?

    @Flag(help: "With --target-db: create the database first if it does not exist.")
    var create = false

    /// With --target-db: the server.
    @OptionGroup var server: ServerOptions

    @Option(help: ArgumentHelp("Seconds to wait while gc or an index rebuild holds the repository.", valueName: "seconds"))
    var lockWait: Int = 600

    @Option(help: ArgumentHelp("Threads for decompression and hashing (default: all cores).", valueName: "n"))
    var jobs: Int?

    func validate() throws {
        if let jobs, jobs < 1 { throw ValidationError("--jobs takes a positive number") }
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
            if let jobs { restorer.jobs = jobs }
            let started = Date()
            restorer.progress = { written in
                Terminal.progress("\(Format.bytes(Int64(written))) restored, \(Format.rate(Int64(written), Date().timeIntervalSince(started)))")
            }
            func recorded(_ body: () throws -> Manifest) throws -> Manifest {
                do {
                    let m = try body()
                    if !repo.isReadOnly {
                        CatalogHook.record(repo, .init(kind: "restore", status: "success", name: m.name, database: m.database, engine: m.dump?.engine ?? m.dbType,
                                                       backupType: m.kind, durationSeconds: Date().timeIntervalSince(started), size: m.size))
                    }
                    return m
                } catch {
                    if !repo.isReadOnly {
                        CatalogHook.record(repo, .init(kind: "restore", status: "failure", name: id, message: errorMessage(error)))
                    }
                    throw error
                }
            }
            if let targetDb {
                let m = try recorded { try restoreIntoServer(repo, restorer, database: targetDb) }
                Terminal.clearProgress()
                Terminal.out(summary(m, since: started) + " -> database \(targetDb)")
                return
            }
            let output = output ?? "-"
            let target: RestoreTarget = output == "-" ? .standardOutput : .file(path: output, overwrite: force)
            let m = try recorded { try restorer.restore(id, to: target) }
            Terminal.clearProgress()
            if output == "-" { Terminal.err(summary(m, since: started)) } else { Terminal.out(summary(m, since: started) + " -> \(output)") }
        }
    }

    private func summary(_ m: Manifest, since started: Date) -> String {
        let elapsed = Date().timeIntervalSince(started)
        let checked = m.sha256 == nil ? "every chunk verified" : "every chunk and the stream's sha256 verified"
        return "restored \(m.id): \(Format.bytes(m.size)) (\(m.size) bytes), \(checked), \(Format.duration(elapsed)), \(Format.rate(m.size, elapsed))"
    }

    /// Pipes the verified stream into the loader the dump's driver names:
    /// pg_restore (custom format), psql (plain) or the mariadb client.
    private func restoreIntoServer(_ repo: Repository, _ restorer: Restorer, database: String) throws -> Manifest {
        let manifest = try repo.loadManifest(try repo.resolveManifestID(id))
        guard let dump = manifest.dump, let engine = DatabaseEngine(name: dump.engine),
              let plan = try engine.driver(address: server.address).restorePlan(for: dump, into: database, create: create, force: force)
        else {
            throw DatabaseError.invalidArgument("backup \(manifest.id) was not made by `dedup backup-db`; restore it to a file and load it yourself")
        }
        let arguments = plan.arguments
        let tool = arguments[0]
        if let failure = try restore(manifest.id, with: restorer, into: arguments) {
            throw DatabaseError.invalidArgument("\(tool) \(failure) (its messages are above); database \(database) may be partly restored")
        }
        return manifest
    }
}

/// Restores a backup into the standard input of a program (pg_restore, psql,
/// mariadb, tar), whose standard output goes to our stderr. Returns how the
/// program failed, or nil when it exited 0.
func restore(_ id: String, with restorer: Restorer, into arguments: [String]) throws -> String? {
    // A loader that dies early must make our writes fail (EPIPE), not kill us.
    signal(SIGPIPE, SIG_IGN)
    guard let tool = arguments.first, let exe = findExecutable(tool) else {
        throw DatabaseError.toolMissing(tool: arguments.first ?? "?", package: "the database's client tools")
    }
    let (loader, input) = try ChildProcess.feeding(executable: exe, arguments: arguments, stdoutFD: STDERR_FILENO)
    do {
        _ = try restorer.restore(id, to: .descriptor(input, name: tool))
    } catch {
        close(input)
        _ = loader.wait()
        throw error
    }
    close(input)
    return loader.failure()
}

struct DedupList: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "List the backups in the repository, oldest first.")

    @OptionGroup var store: StoreOptions

    @Option(help: "Only backups of this database.")
    var database: String?

    @Option(help: ArgumentHelp("Only backups of this kind: dump, basebackup, file, wal, binlog (default: all but wal and binlog, which `wal list` and `binlog list` show).", valueName: "kind"))
    var kind: BackupKind?

    @Flag(help: "Print JSON (the manifests).")
    var json = false

    func run() throws {
        try reportingErrors {
            let repo = try store.open()
            var manifests = try repo.manifests()
            if let database {
                let known = Set(manifests.compactMap(\.database))
                if !known.contains(database) { Terminal.notice(noBackups(of: database, in: repo.path, known: known)) }
                manifests = manifests.filter { $0.database == database }
            }
            let logFiles = manifests.filter(\.isLogFile).count
            manifests = manifests.filter { m in kind.map { m.kind == $0.rawValue } ?? !m.isLogFile }
            if json {
                let verified = try repo.verificationRecords()
                try Terminal.json(manifests.map { ListedBackup(manifest: $0, lastVerification: verified[$0.id]) })
                return
            }
            if manifests.isEmpty {
                Terminal.out("no backups\(database.map { " of database \($0)" } ?? "") in \(repo.path)")
                return
            }
            let verified = try repo.verificationRecords()
            let rows = manifests.map { m -> [String] in
                let dedup = m.size > 0 ? 1 - Double(m.stats.newBytes) / Double(m.size) : 1
                let v = verified[m.id].map { $0.ok ? "\($0.verifiedAt) \($0.mode)" : "FAILED \($0.verifiedAt)" } ?? "never"
                return [m.id, m.database ?? "-", Format.bytes(m.size), Format.percent(dedup), "\(m.stats.chunks)", m.createdAt, v]
            }
            printTable(header: ["ID", "DATABASE", "SIZE", "DEDUP", "CHUNKS", "CREATED", "VERIFIED"], rows: rows)
            if kind == nil && logFiles > 0 {
                Terminal.out("(and \(logFiles) archived WAL and binlog files: dbbackup wal list, dbbackup binlog list, or --kind wal|binlog)")
            }
        }
    }
}

/// What a filter by database says when the repository has no backup of it at all
/// (a typo, or a database never backed up): the ones it has.
func noBackups(of database: String, in path: String, known: Set<String>) -> String {
    let names = known.sorted()
    let shown = names.isEmpty ? "none" : names.prefix(20).joined(separator: ", ") + (names.count > 20 ? ", ..." : "")
    return "no backups of database '\(database)' at all in \(path) (databases with backups: \(shown))"
}

extension BackupKind: ExpressibleByArgument {}

/// A manifest's fields plus its last verification, flat, for `list --json`.
struct ListedBackup: Encodable {
    var manifest: Manifest
    var lastVerification: VerificationRecord?

    enum Key: String, CodingKey { case lastVerification }

    func encode(to encoder: Encoder) throws {
        try manifest.encode(to: encoder)
        var c = encoder.container(keyedBy: Key.self)
        try c.encodeIfPresent(lastVerification, forKey: .lastVerification)
    }
}

func printTable(header: [String], rows: [[String]]) {
    var widths = header.map(\.count)
    for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { i, c in
            i == cells.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0)
        }.joined(separator: "  ")
    }
    Terminal.out(line(header))
    for r in rows { Terminal.out(line(r)) }
}

struct DedupStats: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stats", abstract: "Show repository-wide deduplication figures.")

    @OptionGroup var store: StoreOptions

    @Flag(help: "Print JSON.")
    var json = false

    func run() throws {
        try reportingErrors {
            let repo = try store.open()
            let s = try RepositoryStats.compute(repo)
            if json {
                try Terminal.json(s)
                return
            }
            Terminal.out("repository    \(repo.path)")
            Terminal.out("manifests     \(s.manifests)")
            Terminal.out("packs         \(s.packs)")
            Terminal.out("unique chunks \(s.uniqueChunks)")
            Terminal.out("raw data      \(Format.bytes(s.rawBytes)) (\(s.rawBytes) bytes)")
            Terminal.out("stored        \(Format.bytes(s.storedBytes)) in packs")
            Terminal.out("space saved   \(Format.bytes(s.spaceSaved)) (\(s.rawBytes > 0 ? Format.percent(Double(s.spaceSaved) / Double(s.rawBytes)) : "-"))")
            Terminal.out("dedup ratio   \(String(format: "%.2fx", s.dedupRatio)) (raw / stored, compression included)")
            Terminal.out("disk usage    \(Format.bytes(s.diskUsage)) (packs and manifests)")
            Terminal.out("local cache   \(Format.bytes(s.cacheUsage)) in \(repo.cacheDirectory) (chunk index; rebuilt when lost)")
        }
    }
}
