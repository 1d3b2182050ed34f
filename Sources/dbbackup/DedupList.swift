import ArgumentParser
import Catalog
import DatabaseDumps
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

    @Option(
        help: ArgumentHelp(
            "A native backup's tables instead: rows, bytes, chunks, and the chunks not in the previous backup of the same name.",
            valueName: "backup-id"))
    var tables: String?

    @Flag(help: "Print JSON (the manifests).")
    var json = false

    func run() throws {
        try reportingErrors {
            let repo = try store.open()
            if let tables {
                try listTables(of: tables, in: repo)
                return
            }
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



/// One table of a native backup as `list --tables` shows it.
struct ListedTable: Encodable {
    var table: String
    var members: Int
    var rows: Int64?
    var bytes: Int64
    var chunks: Int
    /// Chunks that the previous backup of the same name does not hold (nil: none to compare with).
    var newChunks: Int?
    var changed: Bool?
}

extension DedupList {
    /// The tables of a native backup, each against the previous backup of the same name.
    func listTables(of idOrPrefix: String, in repo: Repository) throws {
        let manifest = try repo.loadManifest(try repo.resolveManifestID(idOrPrefix))
        guard manifest.dump?.format == NativeFormat.name else {
            throw DedupError.invalidArgument(
                "backup \(manifest.id) is one stream (\(manifest.dump.map { "\($0.tool), \($0.format) format" } ?? manifest.kind)); --tables lists the tables of a backup of the native engine (backup-db --engine native)")
        }
        let contents = try NativeContents.read(manifest, from: repo)
        let earlier = try (manifest.database.map { try backups(of: $0, in: repo) } ?? repo.manifests())
            .filter { $0.name == manifest.name && $0.kind == manifest.kind && $0.id != manifest.id
                && ($0.createdAt, $0.id) < (manifest.createdAt, manifest.id) }
        var known: Set<ChunkID>?
        if let previous = earlier.last {
            var ids = Set<ChunkID>()
            for stream in previous.streams {
                try ChunkListReader(repository: repo, manifest: previous, member: previous.members == nil ? nil : stream.name)
                    .forEach { id, _ in ids.insert(id) }
            }
            known = ids
        }
        var listed = [ListedTable]()
        for table in contents.tables {
            var chunks = 0, fresh = 0
            var rows: Int64? = 0
            var bytes: Int64 = 0
            for name in table.members {
                let member = try manifest.stream(name)
                bytes += member.size
                rows = member.rows.flatMap { r in rows.map { $0 + r } }
                try ChunkListReader(repository: repo, manifest: manifest, member: name).forEach { id, _ in
                    chunks += 1
                    if let known, !known.contains(id) { fresh += 1 }
                }
            }
            listed.append(ListedTable(table: NativeContents.unquoted(table.name), members: table.members.count, rows: rows,
                                      bytes: bytes, chunks: chunks, newChunks: known == nil ? nil : fresh,
                                      changed: known == nil ? nil : fresh > 0))
        }
        if json {
            try Terminal.json(listed)
            return
        }
        Terminal.out("backup \(manifest.id): \(listed.count) tables" + (earlier.last.map { ", against \($0.id)" } ?? ", the first of \(manifest.name)"))
        printTable(
            header: ["TABLE", "PARTS", "ROWS", "SIZE", "CHUNKS", "NEW", "CHANGED"],
            rows: listed.map { t in
                [t.table, "\(t.members)", t.rows.map(String.init) ?? "-", Format.bytes(t.bytes), "\(t.chunks)",
                 t.newChunks.map(String.init) ?? "-", t.changed.map { $0 ? "yes" : "no" } ?? "-"]
            })
    }

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
