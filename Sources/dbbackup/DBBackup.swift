import ArgumentParser
import DatabaseDumps
import DedupStore
import Foundation

@main
struct DBBackup: ParsableCommand {
    static func main() {
        ProcessMemory.configure()
        unblockAllSignals()
        InterruptCleanup.install()
        // The passphrase leaves the environment at once: no child (pg_dump, tar,
        // an input command) inherits it.
        if let passphrase = ProcessInfo.processInfo.environment["DBBACKUP_DEDUP_KEY"] {
            if !passphrase.isEmpty { KeyEnvironment.passphrase = Array(passphrase.utf8) }
            unsetenv("DBBACKUP_DEDUP_KEY")
        }
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            exit(withError: error)
        }
    }

    static let configuration = CommandConfiguration(
        commandName: "dbbackup",
        abstract: "Deduplicating backups of PostgreSQL, MySQL and MariaDB into a content-addressed chunk store.",
        discussion: """
        The chunk store lives in --dedup-dir (or DBBACKUP_DEDUP_DIR; default ~/db_backups/dedup).
        Exit status: 0 on success, 1 on any error (the message is on stderr), 64 for usage errors.
        See README.md and docs/ for the repository format and the nightly workflow.
        """,
        version: DedupStoreVersion.string,
        subcommands: [
            Dedup.self, WAL.self, Binlog.self, PITR.self, RestoreGroup.self, CatalogCommand.self, Metrics.self,
            StatusCommand.self, Encryption.self,
        ]
    )
}

struct Dedup: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The deduplicating chunk store: backup, restore, list, stats, verify, prune, gc.",
        subcommands: [
            DedupInit.self, DedupBackup.self, DedupBackupDB.self, DedupRestore.self, DedupList.self, DedupStats.self,
            DedupVerify.self, DedupDelete.self, DedupPrune.self, DedupGC.self, DedupIndex.self, DedupUnlock.self,
            DedupMetrics.self, DedupSync.self,
        ]
    )
}

/// Options every `dedup` command takes.
struct StoreOptions: ParsableArguments {
    @Option(name: .customLong("dedup-dir"), help: ArgumentHelp(
        "Repository: a folder or s3://bucket/prefix (default: $DBBACKUP_DEDUP_DIR, else ~/db_backups/dedup).",
        valueName: "dir|url"))
    var dedupDir: String?

    @Option(
        name: .customLong("cache-dir"),
        help: ArgumentHelp(
            "Local cache folder for the chunk index and catalog (default: $DBBACKUP_CACHE_DIR, else systemd's $CACHE_DIRECTORY/dbbackup, else $XDG_CACHE_HOME/dbbackup, else ~/.cache/dbbackup).",
            valueName: "dir"))
    var cacheDir: String?

    @OptionGroup var s3: S3Options

    /// The cache root: --cache-dir, else the environment's (see Repository.defaultCacheRoot).
    var cacheRoot: String? { cacheDir.map { Self.expand($0) } }

    /// The repository as given: --dedup-dir, else DBBACKUP_DEDUP_DIR, else the default folder.
    var given: String {
        if let dedupDir { return dedupDir }
        if let env = ProcessInfo.processInfo.environment["DBBACKUP_DEDUP_DIR"], !env.isEmpty { return env }
        return "~/db_backups/dedup"
    }

    /// A location that is neither a folder nor a bucket URL is refused before
    /// anything runs (as a folder, `x://...` would become a local folder `x:`).
    func validate() throws { _ = try place }

    /// Where the repository is: a folder or a bucket.
    var place: RepositoryPlace { get throws { try RepositoryPlace(given) } }

    /// The repository's location for messages: a folder's absolute path, a bucket's URL.
    var location: String { (try? place.description) ?? given }

    /// The backend that serves the repository, with the fault hooks of
    /// `FaultInjection` around it when they are set (tests only).
    func backend() throws -> Backend { try place.backend(s3: s3) }

    /// The options the database server's own commands (archive_command,
    /// restore_command) need to reach this repository: none for a folder.
    func serverSideOptions() throws -> [(option: String, value: String)] {
        guard case .bucket = try place else { return [] }
        return try s3.serverSideOptions()
    }

    /// `~` and `~/x` become the home folder; relative paths become absolute.
    static func expand(_ p: String) -> String {
        var path = p
        if path == "~" || path.hasPrefix("~/") {
            let home =
                ProcessInfo.processInfo.environment["HOME"] ?? FileManager.default.homeDirectoryForCurrentUser.path
            path = home + path.dropFirst()
        }
        return FileIO.absolute(path)
    }

    @Option(
        name: .customLong("key-file"),
        help: ArgumentHelp(
            "Key of an encrypted repository: a file whose bytes are the key (default: the passphrase in $DBBACKUP_DEDUP_KEY).",
            valueName: "file"))
    var keyFile: String?

    /// The key given: the key file's bytes (one trailing newline dropped), else
    /// DBBACKUP_DEDUP_KEY's. Never printed.
    func key() throws -> [UInt8]? {
        if let keyFile { return try Self.readKey(file: keyFile) }
        return KeyEnvironment.passphrase
    }

    /// A key file's bytes, one trailing newline dropped.
    static func readKey(file: String) throws -> [UInt8] {
        let path = expand(file)
        guard FileIO.exists(path) else { throw DedupError.keyFileNotFound(path: path) }
        var bytes = try FileIO.readFile(path)
        if bytes.last == 0x0A { bytes.removeLast() }
        if bytes.last == 0x0D { bytes.removeLast() }
        guard !bytes.isEmpty else { throw DedupError.invalidArgument("key file \(path) is empty") }
        return bytes
    }

    /// Opens the repository (with the key, when one is given); its self-repair
    /// notices go to stderr as they happen.
    func open() throws -> Repository {
        let repo = try Repository(backend: try backend(), cacheRoot: cacheRoot, key: try key())
        repo.onNotice = { Terminal.notice($0) }
        return repo
    }
}

/// DBBACKUP_DEDUP_KEY, read once at start and removed from the environment.
enum KeyEnvironment {
    nonisolated(unsafe) static var passphrase: [UInt8]?
}

/// Where a database server is, as `backup-db` and `restore --target-db` take it.
/// No password option: passwords come from the environment or option files.
struct ServerOptions: ParsableArguments {
    @Option(help: "Database server host (PostgreSQL default: PGHOST, else the local socket).")
    var host: String?

    @Option(help: "Database server port.")
    var port: Int?

    @Option(
        help:
            "Database user (PostgreSQL default: PGUSER, else your login name). Passwords: PGPASSWORD or ~/.pgpass; MYSQL_PWD or ~/.my.cnf."
    )
    var user: String?

    @Option(
        help: ArgumentHelp("Unix socket: for PostgreSQL its folder (or the .s.PGSQL.<port> file).", valueName: "path"))
    var socket: String?

    var address: ServerAddress { ServerAddress(host: host, port: port, user: user, socket: socket) }
    var isEmpty: Bool { address == ServerAddress() }

    func validate() throws {
        if let port, !(1...65535).contains(port) { throw ValidationError("--port takes 1-65535") }
    }
}

/// One line for an error: the message of dbbackup's own errors, else its description.
func errorMessage(_ error: Error) -> String {
    (error as? DedupError)?.message ?? (error as? DatabaseError)?.message ?? "\(error)"
}

/// Runs a command body, turning errors into one line on stderr and exit status 1.
/// `noSpaceHint` is added when the failure is a full disk.
func reportingErrors(noSpaceHint: String? = nil, _ body: () throws -> Void) throws {
    do {
        try body()
    } catch let e as DedupError {
        var message = e.message
        if e.isNoSpace, let noSpaceHint { message += "; " + noSpaceHint }
        Terminal.error(message)
        throw ExitCode(1)
    } catch let e as ExitCode {
        throw e
    } catch let e as CleanExit {
        throw e
    } catch {
        Terminal.error(errorMessage(error))
        throw ExitCode(1)
    }
}

/// Parses "256KiB", "1MiB", "4M", "65536".
func parseSize(_ text: String) -> Int? {
    let t = text.trimmingCharacters(in: .whitespaces)
    let units: [(String, Int)] = [("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("KB", 1000), ("MB", 1_000_000),
                                  ("GB", 1_000_000_000), ("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("B", 1)]
    for (suffix, mult) in units where t.hasSuffix(suffix) {
        guard let v = Double(t.dropLast(suffix.count).trimmingCharacters(in: .whitespaces)), v >= 0,
              v * Double(mult) < Double(Int.max) else { return nil }
        return Int(v * Double(mult))
    }
    return Int(t)
}
