import DedupStore
import Foundation

/// What prune needs of one archived WAL file or binlog. A year of WAL is half a
/// million to a million of them, so prune holds this (about 200 bytes) instead of
/// the whole manifest (about 2 KB in memory).
public struct ArchivedLog: Sendable {
    /// Where the file stands in its archive.
    public enum Place: Sendable {
        /// A WAL segment, partial segment or backup history file at this position.
        case wal(position: UInt64)
        /// A timeline history file (always kept).
        case walHistory
        case binlog(base: String, number: UInt64)
        /// A name that is none of these.
        case unnamed
    }

    public let id: String
    /// "<kind>:<name>": the archive it belongs to.
    public let series: String
    public let createdAt: String
    public let kind: BackupKind
    public let place: Place
    /// PostgreSQL: the cluster's system identifier; MySQL/MariaDB: nil.
    public let systemIdentifier: String?
    public let serverID: UInt32?

    /// The log file a manifest archives (nil: it archives none). The strings that
    /// repeat (series, cluster, binlog base name) are shared through `names`.
    public init?(_ m: Manifest, names: inout Set<String>) {
        guard m.isLogFile, let kind = m.backupKind else { return nil }
        id = m.id
        let series = "\(m.kind):\(m.name)"
        self.series = names.insert(series).memberAfterInsert
        createdAt = m.createdAt
        self.kind = kind
        systemIdentifier = m.archive?.systemIdentifier.map { names.insert($0).memberAfterInsert }
        serverID = m.archive?.serverID
        let file = m.archive?.file ?? ""
        if kind == .wal {
            if let w = WALFileName(file) {
                place = w.position.flatMap { UInt64($0, radix: 16) }.map { .wal(position: $0) } ?? .walHistory
            } else {
                place = .unnamed
            }
        } else if let n = BinlogArchive.split(file)?.name {
            place = .binlog(base: names.insert(n.base).memberAfterInsert, number: n.number)
        } else {
            place = .unnamed
        }
    }
}

/// Which archived WAL files and binlogs prune keeps: every file needed to recover
/// from the oldest base backup (PostgreSQL) or dump (MySQL/MariaDB) of the same
/// server that retention keeps, and nothing older. An archive with no kept base
/// backup or dump of its server is kept whole: prune never guesses.
public enum LogRetention {
    /// `logs`: the archived files; `keptBackups`: every other backup that stays
    /// after this prune.
    public static func decide(logs: [ArchivedLog], keptBackups: [Manifest]) -> [RetentionDecision] {
        var out = [RetentionDecision]()
        out.reserveCapacity(logs.count)
        // Positions into `logs`, not copies of them (a million files).
        let groups = Dictionary(grouping: logs.indices) { logs[$0].series }
        for key in groups.keys.sorted() {
            guard let members = groups[key], let first = members.first else { continue }
            let files = members.lazy.map { logs[$0] }
            let keep = logs[first].kind == .wal ? walRule(files, keptBackups) : binlogRule(files, keptBackups)
            for f in files {
                let reason = keep(f)
                out.append(RetentionDecision(id: f.id, group: key, createdAt: f.createdAt, keep: reason != nil,
                                             reasons: reason.map { [$0] } ?? []))
            }
        }
        return out
    }

    /// Keeps segments from the start of the oldest kept base backup of the same
    /// cluster (system identifier) on, and every timeline history file.
    private static func walRule<Files: Sequence<ArchivedLog>>(
        _ files: Files, _ kept: [Manifest]
    ) -> (ArchivedLog) -> String? {
        let clusters = Set(files.compactMap(\.systemIdentifier))
        let bases = kept.filter {
            $0.backupKind == .basebackup && $0.dump?.systemIdentifier.map(clusters.contains) == true
        }
        let oldest = bases.compactMap { b in
            b.dump?.startWALFile.flatMap(WALFileName.init)?.position.flatMap { UInt64($0, radix: 16) }.map { ($0, b.id) }
        }.min { $0.0 < $1.0 }
        guard let (start, baseID) = oldest else { return { _ in "no base backup of this cluster is kept" } }
        // One string for every file it keeps (a million files, one copy).
        let needed = "needed from base backup \(baseID)"
        return { f in
            switch f.place {
            case .wal(let position): return position >= start ? needed : nil
            case .walHistory: return "timeline history"
            case .binlog, .unnamed: return "not a WAL file name"
            }
        }
    }

    /// Keeps binlogs from the one the oldest kept dump of the same server
    /// (server_id) starts in.
    private static func binlogRule<Files: Sequence<ArchivedLog>>(
        _ files: Files, _ kept: [Manifest]
    ) -> (ArchivedLog) -> String? {
        let servers = Set(files.compactMap(\.serverID))
        let dumps = kept.filter { m in
            // A dump that recorded no server_id (older dbbackup) may belong to any server.
            m.backupKind == .dump && m.dump?.binlogFile != nil && (m.dump?.serverID.map(servers.contains) ?? true)
        }
        let oldest = dumps.compactMap { d in d.dump?.binlogFile.flatMap(BinlogFileName.init).map { ($0, d.id) } }.min {
            $0.0 < $1.0
        }
        guard let (start, dumpID) = oldest else { return { _ in "no dump of this server is kept" } }
        let needed = "needed from dump \(dumpID)"
        return { f in
            guard case .binlog(let base, let number) = f.place, base == start.base else {
                return "not a binlog of this series"
            }
            return number >= start.number ? needed : nil
        }
    }
}
