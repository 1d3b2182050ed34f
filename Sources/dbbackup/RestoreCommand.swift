import ArgumentParser
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
        """)

    @OptionGroup var store: StoreOptions

    @Argument(help: ArgumentHelp("Backup id, or a unique prefix of one.", valueName: "manifest-id"))
    var id: String

    @Argument(help: ArgumentHelp("Output file, or - for standard output.", valueName: "output"))
    var output: String

    @Flag(help: "Replace the output file if it exists.")
    var force = false

    @Option(help: ArgumentHelp("Seconds to wait while gc or an index rebuild holds the repository.", valueName: "seconds"))
    var lockWait: Int = 600

    @Option(help: ArgumentHelp("Threads for decompression and hashing (default: all cores).", valueName: "n"))
    var jobs: Int?

    func validate() throws {
        if let jobs, jobs < 1 { throw ValidationError("--jobs takes a positive number") }
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
            let target: RestoreTarget = output == "-" ? .standardOutput : .file(path: output, overwrite: force)
            let m = try restorer.restore(id, to: target)
            Terminal.clearProgress()
            let elapsed = Date().timeIntervalSince(started)
            let checked = m.sha256 == nil ? "every chunk verified" : "every chunk and the stream's sha256 verified"
            let line = "restored \(m.id): \(Format.bytes(m.size)) (\(m.size) bytes), \(checked), \(Format.duration(elapsed)), \(Format.rate(m.size, elapsed))"
            if output == "-" { Terminal.err(line) } else { Terminal.out(line + " -> \(output)") }
        }
    }
}

struct DedupList: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "List the backups in the repository, oldest first.")

    @OptionGroup var store: StoreOptions

    @Option(help: "Only backups of this database.")
    var database: String?

    @Flag(help: "Print JSON (the manifests).")
    var json = false

    func run() throws {
        try reportingErrors {
            let repo = try store.open()
            var manifests = try repo.manifests()
            if let database { manifests = manifests.filter { $0.database == database } }
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
