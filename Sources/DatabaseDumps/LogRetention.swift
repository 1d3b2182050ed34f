import DedupStore
import Foundation

/// Which archived WAL files and binlogs prune keeps: every file needed to recover
/// from the oldest base backup (PostgreSQL) or dump (MySQL/MariaDB) of the same
/// server that retention keeps, and nothing older. An archive with no kept base
/// backup or dump of its server is kept whole: prune never guesses.
public enum LogRetention {
    /// `logs`: the archived files (manifests with `archive` set); `keptBackups`:
    /// every other backup that stays after this prune.
    public static func decide(logs: [Manifest], keptBackups: [Manifest]) -> [RetentionDecision] {
        var out = [RetentionDecision]()
        let groups = Dictionary(grouping: logs) { "\($0.kind):\($0.name)" }
        for key in groups.keys.sorted() {
            guard let files = groups[key], let kind = files.first?.kind else { continue }
            let keep: (Manifest) -> String?
            if kind == BackupKind.wal.rawValue {
                keep = walRule(files, keptBackups)
            } else {
                keep = binlogRule(files, keptBackups)
            }
            for m in files {
                let reason = keep(m)
                out.append(RetentionDecision(id: m.id, group: key, createdAt: m.createdAt, keep: reason != nil,
                                             reasons: reason.map { [$0] } ?? []))
            }
        }
        return out
    }

    /// Keeps segments from the start of the oldest kept base backup of the same
    /// cluster (system identifier) on, and every timeline history file.
    private static func walRule(_ files: [Manifest], _ kept: [Manifest]) -> (Manifest) -> String? {
        let clusters = Set(files.compactMap { $0.archive?.systemIdentifier })
        let bases = kept.filter {
            $0.backupKind == .basebackup && $0.dump?.systemIdentifier.map(clusters.contains) == true
        }
        let oldest = bases.compactMap { b in b.dump?.startWALFile.flatMap(WALFileName.init)?.position.map { ($0, b.id) }
        }.min { $0.0 < $1.0 }
        guard let (start, baseID) = oldest else { return { _ in "no base backup of this cluster is kept" } }
        return { m in
            guard let w = m.archive.flatMap({ WALFileName($0.file) }) else { return "not a WAL file name" }
            guard let position = w.position else { return "timeline history" }
            return position >= start ? "needed from base backup \(baseID)" : nil
        }
    }

    /// Keeps binlogs from the one the oldest kept dump of the same server
    /// (server_id) starts in.
    private static func binlogRule(_ files: [Manifest], _ kept: [Manifest]) -> (Manifest) -> String? {
        let servers = Set(files.compactMap { $0.archive?.serverID })
        let dumps = kept.filter { m in
            // A dump that recorded no server_id (older dbbackup) may belong to any server.
            m.backupKind == .dump && m.dump?.binlogFile != nil && (m.dump?.serverID.map(servers.contains) ?? true)
        }
        let oldest = dumps.compactMap { d in d.dump?.binlogFile.flatMap(BinlogFileName.init).map { ($0, d.id) } }.min {
            $0.0 < $1.0
        }
        guard let (start, dumpID) = oldest else { return { _ in "no dump of this server is kept" } }
        return { m in
            guard let n = BinlogArchive.split(m.archive?.file ?? "")?.name, n.base == start.base else {
                return "not a binlog of this series"
            }
            return n.number >= start.number ? "needed from dump \(dumpID)" : nil
        }
    }
}
