import ArgumentParser
import DedupStore
import Foundation

/// What every command that commits a backup takes: tags, time, digest, output,
/// locking and threads; and the run itself, with its progress line and summary.
struct CommitOptions: ParsableArguments {
    @Option(help: ArgumentHelp("A tag to record (repeatable).", valueName: "key=value"))
    var tag: [String] = []

    @Option(
        help: ArgumentHelp(
            "Backup time to record instead of now (ISO 8601, e.g. 2026-11-21T02:00:00Z; without a zone, local time).",
            valueName: "time"))
    var time: String?

    @Flag(
        name: .customLong("stream-sha256"),
        help: ArgumentHelp(
            "Also record the SHA-256 of the whole input (as sha256sum prints it); restore then checks it too. Costs one more hashing pass; every chunk is verified either way."
        ))
    var streamSHA256 = false

    @Flag(
        help: ArgumentHelp(
            "Store no new chunk as a delta. By default a new chunk that resembles a stored one (the chunk at the same place in the previous backup of the same name and kind, or a similar chunk anywhere) is stored as the difference when that is clearly smaller."
        ))
    var noDelta = false

    @Flag(help: "Print the committed manifest as JSON.")
    var json = false

    @Option(help: ArgumentHelp("Seconds to wait while gc or prune holds the repository.", valueName: "seconds"))
    var lockWait: Int = 600

    @Option(help: ArgumentHelp("Threads for hashing and compression (default: all cores).", valueName: "n"))
    var threads: Int?

    func validate() throws {
        for t in tag where !t.contains("=") { throw ValidationError("--tag takes key=value, got '\(t)'") }
        if let time, Timestamps.parse(time) == nil {
            throw ValidationError("cannot read --time '\(time)'; use ISO 8601 like 2026-11-21T02:00:00Z")
        }
        if let threads, threads < 1 { throw ValidationError("--threads takes a positive number") }
    }

    /// Backs `source` up with these settings added to `options`, showing progress on
    /// a terminal (with an ETA when `expectedSize` is known), then the summary.
    /// `threads` (a command's own --jobs) stands for --threads when given.
    @discardableResult
    func commit(
        _ source: AnySource, into repo: Repository, options base: BackupOptions, expectedSize: Int64?,
        threads given: Int? = nil
    ) throws -> Manifest {
        try committing(into: repo, options: base, expectedSize: expectedSize, threads: given) { session, options in
            try session.run(source: source, options: options)
        }
    }

    /// Backs member streams up as one backup, `streams` of them at once
    /// (the native engine's tables), with the same progress line and summary.
    @discardableResult
    func commit(
        members: [MemberPlan], streams: Int, into repo: Repository, options base: BackupOptions, expectedSize: Int64?
    ) throws -> Manifest {
        try committing(into: repo, options: base, expectedSize: expectedSize, threads: nil) { session, options in
            try session.run(members: members, streams: streams, options: options)
        }
    }

    private func committing(
        into repo: Repository, options base: BackupOptions, expectedSize: Int64?, threads given: Int?,
        run: (BackupSession, BackupOptions) throws -> Manifest
    ) throws -> Manifest {
        var options = base
        options.lockWait = TimeInterval(lockWait)
        options.streamSHA256 = streamSHA256
        options.deltaEncoding = !noDelta
        for t in tag {
            let parts = t.split(separator: "=", maxSplits: 1)
            options.tags[String(parts[0])] = parts.count > 1 ? String(parts[1]) : ""
        }
        if let time, let date = Timestamps.parse(time) { options.time = date }

        let session = try BackupSession(repository: repo)
        if let threads = given ?? threads { session.jobs = threads }
        let started = Date()
        session.progress = { p in
            let elapsed = Date().timeIntervalSince(started)
            var line =
                "\(Format.bytes(Int64(p.bytesRead))) read, \(p.chunks) chunks (\(p.newChunks) new), \(Format.rate(Int64(p.bytesRead), elapsed))"
            if let expectedSize, expectedSize > 0, p.bytesRead > 0 {
                // A dump is about as large as the database; the estimate says so.
                let done = min(0.99, Double(p.bytesRead) / Double(expectedSize))
                line +=
                    ", ~\(Format.percent(done)) of the database size, ETA \(Format.duration(elapsed / done - elapsed))"
            }
            Terminal.progress(line)
        }
        let manifest = try run(session, options)
        Terminal.clearProgress()
        CatalogHook.sync(repo)
        if json {
            try Terminal.json(manifest)
        } else {
            printSummary(manifest, streamDigest: session.streamDigest, compression: session.compressionUse,
                         level: repo.config.compression.level)
        }
        return manifest
    }

    /// `streamDigest`: the plain SHA-256 of the input (the manifest of an
    /// encrypted repository holds a keyed form of it, which no tool would print).
    private func printSummary(_ m: Manifest, streamDigest: ChunkID?, compression: CompressionUse, level: Int) {
        let s = m.stats
        let dedup = m.size > 0 ? 1 - Double(s.newBytes) / Double(m.size) : 1
        let ratio = s.storedBytes > 0 ? Double(m.size) / Double(s.storedBytes) : 0
        Terminal.out("backup \(m.id) committed")
        if let d = m.dump {
            Terminal.out(
                "  database  \(m.database ?? (m.backupKind == .basebackup ? "the whole cluster" : "?")) on \(d.server), \(d.engine) \(d.serverVersion); \(d.toolVersion), \(d.format) format"
            )
        }
        Terminal.out(
            "  input     \(Format.bytes(m.size)) (\(m.size) bytes)" + (streamDigest.map { ", sha256 \($0.hex)" } ?? ""))
        if let members = m.members {
            let tables = members.filter { $0.rows != nil }
            Terminal.out(
                "  members   \(members.count): \(tables.count) of table data (\(tables.reduce(0) { $0 + ($1.rows ?? 0) }) rows), the schema and the rest")
        }
        Terminal.out("  chunks    \(s.chunks) total, \(s.newChunks) new")
        Terminal.out("  stored    \(Format.bytes(s.newBytes)) new data -> \(Format.bytes(s.storedBytes)) in packs")
        if compression.adapted {
            // Only when the sampling chose otherwise than the level for some data.
            let parts: [(CompressionChoice, String)] = [
                (.full, "zstd level \(level)"), (.entropyOnly, "entropy-coded only (zstd level \(min(1, level)))"),
                (.raw, "stored raw (nothing shrinks it)"), (.hexPacked, "hex digits stored as bytes"),
                (.delta, "as deltas against the previous backup"),
            ]
            let described = parts.compactMap { choice, what -> String? in
                let share = compression[choice]
                guard share.units > 0 else { return nil }
                return "\(Format.bytes(share.rawBytes)) \(what) -> \(Format.bytes(share.storedBytes))"
            }
            Terminal.out("  compress  " + described.joined(separator: "; "))
        }
        Terminal.out(
            "  dedup     \(Format.percent(dedup)) already stored; ratio \(s.storedBytes > 0 ? String(format: "%.1fx", ratio) : "all deduplicated")"
        )
        Terminal.out("  duration  \(Format.duration(s.durationSeconds)), \(Format.rate(m.size, s.durationSeconds))")
    }
}

extension StoreOptions {
    /// The repository, created with defaults when the folder (or the bucket's
    /// prefix) is absent or empty. A missing bucket is an error: only `init`
    /// creates buckets, so that a mistyped name makes nothing.
    func openOrCreate() throws -> Repository {
        let (repo, created) = try Repository.openOrCreate(on: try backend(), cacheRoot: cacheRoot, key: try key())
        repo.onNotice = { Terminal.notice($0) }
        if created { Terminal.notice("created repository \(repo.path) (defaults; see `dbbackup dedup init --help`)") }
        return repo
    }
}
