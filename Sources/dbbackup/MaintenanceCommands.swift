import ArgumentParser
import DedupStore
import Foundation

struct DedupVerify: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "verify",
        abstract: "Check that backups can be restored; exit 1 on any problem.",
        discussion: """
        Quick (default): every pack's footer and trailer checksum, every backup's chunk
        list, and every referenced chunk present in a pack. --deep also reads,
        decompresses and hashes every chunk; --sample 10% does that for a random tenth
        of the packs, so that a nightly job covers the repository in about ten nights.
        Each backup's outcome is recorded; `dedup list` shows it.
        """)

    @OptionGroup var store: StoreOptions

    @Argument(help: ArgumentHelp("Only this backup (id or unique prefix).", valueName: "manifest-id"))
    var id: String?

    @Flag(help: "Read and hash every chunk.")
    var deep = false

    @Option(
        help: ArgumentHelp(
            "Read and hash the chunks of this share of the packs, chosen at random.", valueName: "percent"))
    var sample: String?

    func validate() throws {
        if let sample, samplePercent(sample) == nil {
            throw ValidationError("--sample takes a percentage from 0 to 100, e.g. 10%")
        }
        if deep && sample != nil { throw ValidationError("give --deep or --sample, not both") }
    }

    private func samplePercent(_ text: String) -> Double? {
        let t = text.hasSuffix("%") ? String(text.dropLast()) : text
        guard let v = Double(t), (0...100).contains(v) else { return nil }
        return v
    }

    func run() throws {
        try reportingErrors {
            let repo = try store.open()
            let lock = try repo.lock(.shared, command: "verify")
            defer { lock.release() }
            let ids = try id.map { [try repo.resolveManifestID($0)] }
            let started = Date()
            let report = try Verifier(repository: repo).verify(
                manifestIDs: ids, deep: deep, samplePercent: sample.flatMap(samplePercent))
            if !repo.isReadOnly { CatalogHook.sync(repo) }
            let elapsed = Date().timeIntervalSince(started)
            for p in report.problems { Terminal.err("dbbackup: problem: \(p.message)") }
            let mode =
                deep
                ? "deep"
                : (sample.flatMap(samplePercent).map { "quick, \(Format.number($0))% of packs read" } ?? "quick")
            Terminal.out(
                "verify (\(mode)): \(report.manifestsChecked) backups, \(report.packsChecked) packs, \(report.chunksChecked) chunk references checked in \(Format.duration(elapsed))"
            )
            if report.ok {
                Terminal.out("ok: every checked backup can be restored")
            } else {
                Terminal.out(
                    "FAILED: \(report.problems.count) problem(s); damaged backups: \(report.damagedManifests.isEmpty ? "none (unreferenced data only)" : report.damagedManifests.joined(separator: ", "))"
                )
                if report.chunksDropped > 0 {
                    Terminal.out(
                        "\(report.chunksDropped) corrupt chunk(s) were dropped from the index: the next backup of the same data stores them again, which repairs every backup that needs them"
                    )
                }
                throw ExitCode(1)
            }
        }
    }
}

struct DedupIndex: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "index", abstract: "Maintain the chunk index (a cache of the pack trailers).",
        subcommands: [Rebuild.self])

    struct Rebuild: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Recreate the LMDB index and the Bloom filter from the packs alone.")

        @OptionGroup var store: StoreOptions

        func run() throws {
            try reportingErrors {
                let repo = try store.open()
                let lock = try repo.lock(.exclusive, command: "index rebuild")
                defer { lock.release() }
                let started = Date()
                let before = (repo.backend as? TrafficCounting)?.traffic
                let r = try repo.rebuildIndex()
                Terminal.out(
                    "index rebuilt from \(r.packs) packs: \(r.chunks) chunks in \(Format.duration(Date().timeIntervalSince(started)))"
                )
                if let before, let after = (repo.backend as? TrafficCounting)?.traffic {
                    // A bucket: what reading the trailers cost.
                    let packBytes = try repo.listPacks().values.reduce(0, +)
                    let fetched = after.bytesReceived - before.bytesReceived
                    let share = packBytes > 0 ? Double(fetched) / Double(packBytes) : 0
                    Terminal.out(
                        "  fetched \(Format.bytes(fetched)) (\(Format.percent(share)) of \(Format.bytes(packBytes)) in packs) in \(after.requests - before.requests) requests"
                    )
                }
            }
        }
    }
}

struct DedupUnlock: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "unlock", abstract: "List and remove repository locks.",
        discussion: "Without --stale-only every lock is removed: make sure no dbbackup is running on the repository.")

    @OptionGroup var store: StoreOptions

    @Flag(help: "Remove only stale locks: the process is gone (same host), or the lock was not refreshed for 30 minutes by the storage's clock (any host; holders refresh every 5 minutes).")
    var staleOnly = false

    func run() throws {
        try reportingErrors {
            let repo = try store.open()
            let locks = try RepositoryLock.list(repo.backend)
            if locks.isEmpty { Terminal.out("no locks"); return }
            var removed = 0
            for l in locks {
                if staleOnly && !l.info.isStale {
                    Terminal.out("kept    \(l.info.summary)")
                    continue
                }
                try repo.backend.delete(l.key)
                removed += 1
                Terminal.out("removed \(l.info.summary)")
            }
            Terminal.out("\(removed) lock(s) removed")
        }
    }
}
