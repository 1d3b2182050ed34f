import ArgumentParser
import Catalog
import DedupStore
import Foundation

struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Per database: last backup, its age, size, verified, encrypted, and its state.",
        discussion: """
        State: failing when a backup run failed after the last good backup (or every \
        run so far failed: the row then says never), else ok below --warn, aging below \
        --crit, stale above. Colour only on a terminal (and not with NO_COLOR).
        --check exits 1 naming every database that is stale or failing.
        """)

    @OptionGroup var store: StoreOptions
    @Option(help: ArgumentHelp("Age at which a database's last backup is aging.", valueName: "duration")) var warn:
        String = "26h"
    @Option(help: ArgumentHelp("Age at which it is stale.", valueName: "duration")) var crit: String = "50h"
    @Flag(help: "Print JSON.") var json = false
    @Flag(help: "Exit 1 when a database is stale or failing (for a cron job or a check).") var check = false

    /// One database's row. A database whose runs have all failed has no last
    /// backup: `lastBackup`, `ageSeconds` and `size` are left out of the JSON.
    struct Row: Encodable {
        var database: String, kind: String, engine: String?, lastBackup: String?, ageSeconds: Double?, size: Int64?
        var verified: Bool, encrypted: Bool, failuresSinceLastBackup: Int, state: String
    }

    func validate() throws {
        guard parseDuration(warn) != nil, parseDuration(crit) != nil else {
            throw ValidationError("--warn and --crit take durations like 26h")
        }
    }

    func run() throws {
        try reportingErrors {
            let repo = try store.open()
            let catalog = try BackupCatalog(repository: repo)
            let (aging, stale) = (parseDuration(warn) ?? 93600, parseDuration(crit) ?? 180000)  // validated above
            let rows = Self.rows(
                backups: try catalog.latestBackups(),
                failures: try catalog.events(kind: "backup").filter { $0.status == "failure" },
                encrypted: repo.config.isEncrypted, now: Date(), aging: aging, stale: stale)
            if json {
                try Terminal.json(rows)
            } else if rows.isEmpty {
                Terminal.out("no backups in \(repo.path)")
            } else {
                printRows(rows)
            }
            let unhealthy = rows.filter { $0.state == "stale" || $0.state == "failing" }.map(\.database)
            if check && !unhealthy.isEmpty {
                Terminal.err("dbbackup: not healthy: \(unhealthy.joined(separator: ", "))")
                throw ExitCode(1)
            }
        }
    }

    /// A row per database and kind with a backup (`backups`: the newest of each, or
    /// all of them), and one per database whose runs have only failed. A failed run after the last good backup makes the state
    /// failing whatever the age: the age column still tells how old that backup is.
    static func rows(backups: [BackupCatalog.Entry], failures: [BackupCatalog.Event], encrypted: Bool,
                     now: Date, aging: Double, stale: Double) -> [Row] {
        var rows = [Row]()
        for (_, group) in Dictionary(grouping: backups, by: \.series).sorted(by: { $0.key < $1.key }) {
            guard let last = group.max(by: { ($0.createdDate ?? .distantPast) < ($1.createdDate ?? .distantPast) })
            else { continue }
            let age = now.timeIntervalSince(last.createdDate ?? now)
            let failed = failures.filter { ($0.database ?? $0.name) == last.subject && $0.at > last.createdAt }.count
            let state = failed > 0 ? "failing" : (age < aging ? "ok" : (age < stale ? "aging" : "stale"))
            rows.append(
                Row(
                    database: last.subject, kind: last.kind, engine: last.engine, lastBackup: last.createdAt,
                    ageSeconds: age,
                    size: last.size, verified: last.verifiedOK == true, encrypted: encrypted,
                    failuresSinceLastBackup: failed, state: state))
        }
        let backedUp = Set(backups.map(\.subject))
        for (subject, failed) in Dictionary(grouping: failures, by: { $0.database ?? $0.name }).sorted(by: {
            $0.key < $1.key
        })
        where !backedUp.contains(subject) {
            let latest = failed.max { $0.at < $1.at }
            rows.append(
                Row(
                    database: subject, kind: latest?.backupType ?? "dump", engine: latest?.engine, lastBackup: nil,
                    ageSeconds: nil, size: nil, verified: false, encrypted: encrypted,
                    failuresSinceLastBackup: failed.count, state: "failing"))
        }
        return rows.sorted { ($0.database, $0.kind) < ($1.database, $1.kind) }
    }

    /// The table; the state in colour only on a terminal without NO_COLOR.
    private func printRows(_ rows: [Row]) {
        let colour = isatty(STDOUT_FILENO) == 1 && ProcessInfo.processInfo.environment["NO_COLOR"] == nil
        func paint(_ s: String) -> String {
            guard colour else { return s }
            let code = ["ok": "32", "aging": "33", "failing": "33", "stale": "31"][s] ?? "0"
            return "\u{1B}[\(code)m\(s)\u{1B}[0m"
        }
        printTable(
            header: ["DATABASE", "KIND", "ENGINE", "LAST BACKUP", "AGE", "SIZE", "VERIFIED", "ENCRYPTED", "STATE"],
            rows: rows.map {
                [
                    $0.database, $0.kind, $0.engine ?? "-", $0.lastBackup ?? "never",
                    $0.ageSeconds.map(Format.age) ?? "-",
                    $0.size.map(Format.bytes) ?? "-",
                    $0.verified ? "yes" : "no", $0.encrypted ? "yes" : "no",
                    paint($0.state)
                        + ($0.failuresSinceLastBackup > 0 ? " (\($0.failuresSinceLastBackup) failed since)" : ""),
                ]
            })
    }
}
