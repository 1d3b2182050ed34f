import ArgumentParser
import Catalog
import DedupStore
import Foundation

/// Keeps the catalog in step from the commands that change the repository.
/// Best effort: the catalog is a cache, and a backup never fails because of it.
enum CatalogHook {
    /// Brings the catalog in step (after a commit, delete, prune or verify).
    static func sync(_ repo: Repository) {
        do {
            _ = try BackupCatalog(repository: repo)
        } catch {
            Terminal.notice("the catalog was not updated (\(errorMessage(error))); `dbbackup catalog sync` rebuilds it")
        }
    }

    /// Records a failed backup or restore, if the repository can be opened.
    static func failed(_ store: StoreOptions, kind: String, name: String, database: String?, engine: String?,
                       backupType: String?, error: Error) {
        guard let repo = try? Repository(backend: store.backend(), cacheRoot: store.cacheRoot) else { return }
        record(repo, BackupCatalog.Event(kind: kind, status: "failure", name: name, database: database, engine: engine,
                                         backupType: backupType, message: errorMessage(error)))
    }

    static func record(_ repo: Repository, _ event: BackupCatalog.Event) {
        do {
            try BackupCatalog(repository: repo, synchronize: false).recordEvent(event)
        } catch {
            Terminal.notice("the catalog did not record the \(event.kind) \(event.status) (\(errorMessage(error)))")
        }
    }
}

/// Runs a backup, recording a failure in the catalog before passing it on.
func recordingFailure(_ store: StoreOptions, name: String, database: String?, engine: String?, backupType: String,
                      _ body: () throws -> Void) throws {
    do {
        try body()
    } catch {
        CatalogHook.failed(
            store, kind: "backup", name: name, database: database, engine: engine, backupType: backupType, error: error)
        throw error
    }
}

struct CatalogCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "catalog",
        abstract: "The SQLite catalog of backups: list, search, stats, gaps, sync.",
        discussion: """
        The catalog lives beside the chunk index in the local cache folder
        (<cache root>/<repository id>-<hash>/catalog.sqlite, where the cache root is
        --cache-dir or its default) and is brought in step with the manifests, which
        stay the truth, whenever it is opened. It also records failed backups and
        restores, which leave no manifest, for `dedup metrics` and `status`.
        """,
        subcommands: [CatalogList.self, CatalogSearch.self, CatalogStats.self, CatalogGaps.self, CatalogSync.self])
}

/// Filters shared by catalog list and search.
struct CatalogFilterOptions: ParsableArguments {
    @Option(help: "Only backups of this database (or name).") var database: String?
    @Option(help: ArgumentHelp("Only this kind: dump, basebackup, file, wal, binlog.", valueName: "kind")) var kind:
        BackupKind?
    @Option(help: ArgumentHelp("Only backups made at or after this time (ISO 8601).", valueName: "time")) var after:
        String?
    @Option(help: ArgumentHelp("Only backups made before this time.", valueName: "time")) var before: String?
    @Flag(help: "Print JSON.") var json = false

    func validate() throws {
        for t in [after, before].compactMap({ $0 }) where Timestamps.parse(t) == nil {
            throw ValidationError("cannot read the time '\(t)'; use ISO 8601 like 2026-11-21 or 2026-11-21T02:00:00Z")
        }
    }

    func filter() -> BackupCatalog.Filter {
        var f = BackupCatalog.Filter()
        f.database = database
        f.kind = kind?.rawValue
        f.after = after.flatMap(Timestamps.parse)
        f.before = before.flatMap(Timestamps.parse)
        return f
    }

    /// Says so on stderr when --database names a database the catalog has no
    /// backup of at all; true when it does.
    @discardableResult
    func checkDatabase(_ catalog: BackupCatalog, path: String) throws -> Bool {
        guard let database else { return true }
        if try catalog.hasBackups(of: database) { return true }
        let known = Set(try catalog.subjects())
        Terminal.notice(noBackups(of: database, in: path, known: known))
        return false
    }

    func show(_ entries: [BackupCatalog.Entry]) throws {
        if json { try Terminal.json(entries); return }
        printTable(
            header: ["ID", "KIND", "DATABASE", "ENGINE", "CREATED", "SIZE", "STORED NEW", "VERIFIED"],
            rows: entries.map { e in
                [
                    e.id, e.kind, e.subject, e.engine ?? "-", e.createdAt, Format.bytes(e.size),
                    Format.bytes(e.storedBytes),
                    e.verifiedAt.map { "\(e.verifiedOK == true ? "ok" : "FAILED") \($0)" } ?? "never",
                ]
            })
    }
}

struct CatalogList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "The newest backups, oldest first.")
    @OptionGroup var store: StoreOptions
    @OptionGroup var filters: CatalogFilterOptions
    @Option(help: "At most this many (the newest).") var limit: Int = 50

    func run() throws {
        try reportingErrors {
            var f = filters.filter()
            f.limit = limit
            let repo = try store.open()
            let catalog = try BackupCatalog(repository: repo)
            try filters.checkDatabase(catalog, path: repo.path)
            try filters.show(try catalog.backups(f))
        }
    }
}

struct CatalogSearch: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "search", abstract: "Backups matching every filter given, oldest first.")
    @OptionGroup var store: StoreOptions
    @OptionGroup var filters: CatalogFilterOptions
    @Option(help: ArgumentHelp("Text in the id, name or database.", valueName: "text")) var text: String?
    @Option(help: ArgumentHelp("A tag the backup carries.", valueName: "key=value")) var tag: String?

    func validate() throws {
        if let tag, !tag.contains("=") || tag.hasPrefix("=") { throw ValidationError("--tag takes key=value") }
    }

    func run() throws {
        try reportingErrors {
            var f = filters.filter()
            f.text = text
            if let tag {
                let parts = tag.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
                f.tag = (parts[0], parts.count > 1 ? parts[1] : "")
            }
            try filters.show(try BackupCatalog(repository: try store.open()).backups(f))
        }
    }
}

struct CatalogStats: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stats", abstract: "Backups per database and kind: count, size, first and last, verified.")
    @OptionGroup var store: StoreOptions
    @Flag(help: "Print JSON.") var json = false

    struct Row: Encodable {
        var database: String, kind: String, count: Int, totalSize: Int64, storedNew: Int64
        var first: String, last: String, verified: Int, failures: Int
    }

    func run() throws {
        try reportingErrors {
            let catalog = try BackupCatalog(repository: try store.open())
            let entries = try catalog.backups()
            let failures = try catalog.events(kind: "backup").filter { $0.status == "failure" }
            var rows = [Row]()
            for (series, group) in Dictionary(grouping: entries, by: \.series).sorted(by: { $0.key < $1.key }) {
                let (database, kind) = (series.subject, series.kind)
                rows.append(
                    Row(
                        database: database, kind: kind, count: group.count, totalSize: group.reduce(0) { $0 + $1.size },
                        storedNew: group.reduce(0) { $0 + $1.storedBytes }, first: group.first?.createdAt ?? "",
                        last: group.last?.createdAt ?? "", verified: group.filter { $0.verifiedOK == true }.count,
                        failures: failures.filter {
                            ($0.database ?? $0.name) == database && ($0.backupType ?? "dump") == kind
                        }.count))
            }
            if json { try Terminal.json(rows); return }
            printTable(
                header: [
                    "DATABASE", "KIND", "BACKUPS", "TOTAL SIZE", "STORED NEW", "FIRST", "LAST", "VERIFIED",
                    "FAILED RUNS",
                ],
                rows: rows.map {
                    [
                        $0.database, $0.kind, "\($0.count)", Format.bytes($0.totalSize), Format.bytes($0.storedNew),
                        $0.first, $0.last, "\($0.verified)", "\($0.failures)",
                    ]
                })
            Terminal.out(
                "\(entries.count) backups, \(failures.count) failed backup runs recorded; catalog \(catalog.path)")
        }
    }
}

struct CatalogGaps: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gaps",
        abstract: "Missed scheduled backups: stretches longer than --interval without one, per database.",
        discussion:
            "Exit status 1 when there is a gap, so a cron job or a check can alert on it. WAL and binlogs are left out."
    )
    @OptionGroup var store: StoreOptions
    @Option(help: ArgumentHelp("The schedule, e.g. 24h, 12h, 7d.", valueName: "duration")) var interval: String = "24h"
    @Option(
        help: ArgumentHelp(
            "Slack before a late backup counts as missed (default: a quarter of the interval).", valueName: "duration"))
    var tolerance: String?
    @Option(help: "Only this database (or name).") var database: String?
    @Flag(help: "Print JSON.") var json = false

    func validate() throws {
        guard parseDuration(interval).map({ $0 > 0 }) == true else {
            throw ValidationError("--interval takes a duration like 24h, 90m or 7d")
        }
        if let tolerance, parseDuration(tolerance) == nil {
            throw ValidationError("--tolerance takes a duration like 6h")
        }
    }

    func run() throws {
        try reportingErrors {
            let every = parseDuration(interval) ?? 86400
            let slack = tolerance.flatMap(parseDuration) ?? every / 4
            let repo = try store.open()
            let catalog = try BackupCatalog(repository: repo)
            if let database {
                let known = Set(try catalog.backups().filter { !$0.isLogFile }.map(\.subject))
                guard known.contains(database) else {
                    Terminal.error(
                        noBackups(of: database, in: repo.path, known: known)
                            + ": it has never been backed up, or --database is mistyped")
                    throw ExitCode(1)
                }
            }
            let gaps = try catalog.gaps(interval: every, tolerance: slack, database: database)
            if json {
                try Terminal.json(gaps)
            } else if gaps.isEmpty {
                Terminal.out(
                    "no gaps: every database has a backup at least every \(interval) (+\(Format.age(slack)) tolerance)")
            } else {
                printTable(header: ["DATABASE", "FROM", "TO", "HOURS", "MISSED"], rows: gaps.map {
                    [$0.database, $0.from, $0.to ?? "now", String(format: "%.1f", $0.hours), "\($0.missed)"]
                })
            }
            if !gaps.isEmpty { throw ExitCode(1) }
        }
    }
}

struct CatalogSync: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sync", abstract: "Rebuild the catalog's backups from the manifests (failure events stay).")
    @OptionGroup var store: StoreOptions

    func run() throws {
        try reportingErrors {
            let catalog = try BackupCatalog(repository: try store.open(), synchronize: false)
            let report = try catalog.rebuild()
            Terminal.out("catalog \(catalog.path): \(report.added) backups from the manifests")
        }
    }
}

/// "24h", "90m", "7d", "3600s", "3600" -> seconds.
func parseDuration(_ text: String) -> TimeInterval? {
    let units: [(String, Double)] = [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)]
    for (suffix, mult) in units where text.hasSuffix(suffix) {
        return Double(text.dropLast()).flatMap { $0 >= 0 ? $0 * mult : nil }
    }
    return Double(text).flatMap { $0 >= 0 ? $0 : nil }
}
