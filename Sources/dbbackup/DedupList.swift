import ArgumentParser
import Catalog
import DedupStore
import Foundation

struct DedupList: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "List the backups in the repository, oldest first.")

    @OptionGroup var store: StoreOptions

    @Option(help: "Only backups of this database.")
    var database: String?

    @Option(
        help: ArgumentHelp(
            "Only backups of this kind: dump, basebackup, file, wal, binlog (default: all but wal and binlog, which `wal list` and `binlog list` show).",
            valueName: "kind"))
    var kind: BackupKind?

    @Flag(help: "Print JSON (the manifests).")
    var json = false

    func run() throws {
        try reportingErrors {
            let repo = try store.open()
            var manifests = try database.map { try backups(of: $0, in: repo) } ?? repo.manifests()
            let logFiles = manifests.filter(\.isLogFile).count
            manifests = manifests.filter { m in kind.map { m.kind == $0.rawValue } ?? !m.isLogFile }
            if json {
                try Terminal.json(manifests.map { ListedBackup(manifest: $0, lastVerification: try repo.verificationRecord($0.id)) })
                return
            }
            if manifests.isEmpty {
                Terminal.out("no backups\(database.map { " of database \($0)" } ?? "") in \(repo.path)")
                return
            }
            let rows = try manifests.map { m -> [String] in
                let dedup = m.size > 0 ? 1 - Double(m.stats.newBytes) / Double(m.size) : 1
                let v =
                    try repo.verificationRecord(m.id).map { $0.ok ? "\($0.verifiedAt) \($0.mode)" : "FAILED \($0.verifiedAt)" } ?? "never"
                return [
                    m.id, m.database ?? "-", Format.bytes(m.size), Format.percent(dedup), "\(m.stats.chunks)",
                    m.createdAt, v,
                ]
            }
            printTable(header: ["ID", "DATABASE", "SIZE", "DEDUP", "CHUNKS", "CREATED", "VERIFIED"], rows: rows)
            if kind == nil && logFiles > 0 {
                Terminal.out(
                    "(and \(logFiles) archived WAL and binlog files: dbbackup wal list, dbbackup binlog list, or --kind wal|binlog)"
                )
            }
        }
    }
}



extension DedupList {
    /// The backups of `database`, oldest first: the catalog (brought in step on
    /// open) names the candidates, and only their manifests are read, not every
    /// manifest of the repository. Without a usable catalog, every manifest.
    func backups(of database: String, in repo: Repository) throws -> [Manifest] {
        let catalog: BackupCatalog
        let candidates: [String]
        do {
            var filter = BackupCatalog.Filter()
            filter.database = database
            catalog = try BackupCatalog(repository: repo)
            candidates = try catalog.backups(filter).map(\.id)
        } catch {
            Terminal.notice("the catalog could not be used (\(errorMessage(error))); reading every manifest")
            return try repo.manifests().filter { $0.database == database }
        }
        var found = [Manifest]()
        for id in candidates {
            do {
                let m = try repo.loadManifest(id)
                if m.database == database { found.append(m) }
            } catch let e as DedupError {
                switch e {
                case .manifestNotFound: continue  // deleted meanwhile
                case .manifestCorrupt, .manifestTooNew: Terminal.notice("skipping \(e.message)")
                default: throw e
                }
            }
        }
        if found.isEmpty {
            // The databases there are, from the catalog: no manifest is read for them.
            let known = Set(try catalog.backups().compactMap(\.database))
            Terminal.notice(noBackups(of: database, in: repo.path, known: known))
        }
        return found.sorted { ($0.createdAt, $0.id) < ($1.createdAt, $1.id) }
    }
}

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
