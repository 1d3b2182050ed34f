import ArgumentParser
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
                let v =
                    verified[m.id].map { $0.ok ? "\($0.verifiedAt) \($0.mode)" : "FAILED \($0.verifiedAt)" } ?? "never"
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
