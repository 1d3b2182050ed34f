import DedupStore
import Foundation

/// Prometheus text exposition format (version 0.0.4): families with HELP and TYPE,
/// samples with escaped label values.
public struct PrometheusText {
    public private(set) var text = ""
    private var declared = Set<String>()

    public init() {}

    /// Adds a sample; the family's HELP and TYPE come before its first sample.
    /// Samples of one family must be added together.
    public mutating func add(
        _ name: String, _ type: String, _ help: String, labels: [(String, String)] = [], _ value: Double
    ) {
        if !declared.contains(name) {
            declared.insert(name)
            text +=
                "# HELP \(name) \(help.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\n", with: "\\n"))\n"
            text += "# TYPE \(name) \(type)\n"
        }
        text += name
        if !labels.isEmpty {
            text += "{" + labels.map { "\($0.0)=\"\(Self.escape($0.1))\"" }.joined(separator: ",") + "}"
        }
        text += " " + Self.format(value) + "\n"
    }

    static func escape(_ v: String) -> String {
        v.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
            .replacingOccurrences(of: "\n", with: "\\n")
    }

    static func format(_ v: Double) -> String {
        if v.isNaN { return "NaN" }
        if v.isInfinite { return v > 0 ? "+Inf" : "-Inf" }
        if v == v.rounded(), abs(v) < 1e15 { return String(Int64(v)) }
        return String(v)
    }
}

/// The metrics of a repository, from its catalog: per database the last
/// successful backup (time, age, duration, size, verified), counts by status,
/// restores, PITR archives, and the store's dedup figures. The metric names and
/// labels (server, database, engine, backup_type, status) are those of the
/// dbbackup documentation.
public enum RepositoryMetrics {
    public static func render(
        catalog: BackupCatalog, stats: RepositoryStats?, server: String, now: Date = Date()
    ) throws -> String {
        var p = PrometheusText()
        p.add("dbbackup_build_info", "gauge", "Build information.", labels: [("version", DedupStoreVersion.string)], 1)

        // Per series, not per backup: the cost does not grow with the backups held.
        let events = try catalog.events()
        // The newest backup of each database, engine and kind, and their number.
        struct Key: Hashable { var database: String; var engine: String; var type: String }
        var last = [Key: BackupCatalog.Entry]()
        var counts = [Key: Int]()
        for (b, n) in try catalog.seriesSummaries(byEngine: true) {
            let k = Key(database: b.subject, engine: b.engine ?? "", type: b.kind)
            counts[k] = n
            last[k] = b
        }
        let keys = last.keys.sorted { ($0.database, $0.type, $0.engine) < ($1.database, $1.type, $1.engine) }
        func labels(_ k: Key) -> [(String, String)] {
            [("server", server), ("database", k.database), ("engine", k.engine), ("backup_type", k.type)]
        }
        for k in keys {
            p.add(
                "dbbackup_last_success_timestamp", "gauge", "Unix time of the last successful backup.",
                labels: labels(k),
                last[k]?.createdDate?.timeIntervalSince1970 ?? 0)
        }
        for k in keys {
            p.add(
                "dbbackup_last_backup_duration_seconds", "gauge", "Duration of the last successful backup.",
                labels: labels(k), last[k]?.durationSeconds ?? 0)
        }
        for k in keys {
            p.add(
                "dbbackup_last_backup_size_bytes", "gauge", "Size of the last successful backup (its input stream).",
                labels: labels(k),
                Double(last[k]?.size ?? 0))
        }
        for k in keys {
            p.add("dbbackup_rpo_seconds", "gauge", "Seconds since the last successful backup.", labels: labels(k),
                  max(0, now.timeIntervalSince(last[k]?.createdDate ?? now)))
        }
        for k in keys {
            p.add(
                "dbbackup_backup_verified", "gauge", "1 when the last backup's last verification passed.",
                labels: labels(k),
                last[k]?.verifiedOK == true ? 1 : 0)
        }
        // One series per database: the newest backup of any kind or engine.
        var newestPerDatabase = [String: Double]()
        for (k, b) in last {
            newestPerDatabase[k.database] = max(
                newestPerDatabase[k.database] ?? 0, b.createdDate?.timeIntervalSince1970 ?? 0)
        }
        for database in newestPerDatabase.keys.sorted() {
            p.add(
                "dbbackup_dedup_database_last_backup_timestamp", "gauge",
                "Unix time of the last deduplicated backup of a database.",
                labels: [("server", server), ("database", database)], newestPerDatabase[database] ?? 0)
        }

        // Successes are the backups the repository holds; failures the ones recorded
        // in the catalog (a failed backup leaves no manifest).
        struct StatusKey: Hashable { var key: Key; var status: String }
        var byStatus = [StatusKey: Int]()
        for (k, n) in counts { byStatus[StatusKey(key: k, status: "success"), default: 0] += n }
        for e in events where e.kind == "backup" && e.status == "failure" {
            byStatus[
                StatusKey(
                    key: Key(database: e.database ?? e.name, engine: e.engine ?? "", type: e.backupType ?? "dump"),
                    status: "failure"), default: 0] += 1
        }
        for s in byStatus.keys.sorted(by: {
            ($0.key.database, $0.key.type, $0.status) < ($1.key.database, $1.key.type, $1.status)
        }) {
            p.add(
                "dbbackup_backup_total", "gauge",
                "Backups by status: success (held by the repository) and failure (recorded by failed runs).",
                labels: labels(s.key) + [("status", s.status)], Double(byStatus[s] ?? 0))
        }
        var byType = [String: Int]()
        for (k, n) in counts { byType[k.type, default: 0] += n }
        for t in byType.keys.sorted() {
            p.add(
                "dbbackup_backup_by_type", "gauge", "Backups in the repository by type.",
                labels: [("server", server), ("backup_type", t)], Double(byType[t] ?? 0))
        }

        let restores = events.filter { $0.kind == "restore" }
        for status in ["success", "failure"] {
            p.add(
                "dbbackup_restore_total", "counter", "Restores by status, as recorded in the catalog.",
                labels: [("server", server), ("status", status)],
                Double(restores.filter { $0.status == status }.count))
        }
        if let lastRestore = restores.last(where: { $0.status == "success" }), let d = lastRestore.durationSeconds {
            p.add(
                "dbbackup_restore_duration_seconds", "gauge", "Duration of the last successful restore.",
                labels: [("server", server)], d)
        }

        // Point-in-time recovery: the newest archived WAL file or binlog per archive.
        var newestLog = [String: BackupCatalog.Entry]()
        for l in try catalog.newestLogs() { newestLog[l.kind + "\u{0}" + l.name] = l }
        for k in newestLog.keys.sorted() {
            guard let l = newestLog[k] else { continue }
            p.add(
                "dbbackup_pitr_last_archived_timestamp", "gauge",
                "Unix time of the newest archived WAL file or binlog (its modification time).",
                labels: [
                    ("server", server), ("archive", l.name),
                    ("engine", l.kind == "wal" ? "postgres" : (l.engine ?? "mariadb")), ("backup_type", l.kind),
                ],
                l.createdDate?.timeIntervalSince1970 ?? 0)
        }

        if let s = stats {
            p.add(
                "dbbackup_dedup_manifests", "gauge", "Manifests in the repository (backups, WAL files, binlogs).",
                labels: [("server", server)], Double(s.manifests))
            p.add(
                "dbbackup_dedup_packs", "gauge", "Pack files in the repository.", labels: [("server", server)],
                Double(s.packs))
            p.add(
                "dbbackup_dedup_unique_chunks", "gauge", "Distinct chunks stored.", labels: [("server", server)],
                Double(s.uniqueChunks))
            p.add(
                "dbbackup_dedup_raw_bytes", "gauge", "Bytes of all backups before deduplication and compression.",
                labels: [("server", server)], Double(s.rawBytes))
            p.add(
                "dbbackup_dedup_stored_bytes", "gauge", "Bytes the chunks take in packs.", labels: [("server", server)],
                Double(s.storedBytes))
            p.add(
                "dbbackup_dedup_space_saved_bytes", "gauge", "Raw bytes minus stored bytes.",
                labels: [("server", server)], Double(s.spaceSaved))
            p.add(
                "dbbackup_dedup_ratio", "gauge", "Raw bytes over stored bytes (compression included).",
                labels: [("server", server)], s.dedupRatio)
            p.add(
                "dbbackup_dedup_disk_usage_bytes", "gauge", "Disk usage of the repository.",
                labels: [("server", server)], Double(s.diskUsage))
        }
        return p.text
    }
}
