import ArgumentParser
import DatabaseDumps
import DedupStore
import Foundation

/// Options of commands that need the exclusive or the maintenance lock.
struct ExclusiveLockOptions: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "Seconds to wait for the commands holding the lock to finish (delete: running backups; gc, prune: another gc, prune, delete or index rebuild; default: fail at once).",
            valueName: "seconds"))
    var lockWait: Int = 0
}

struct DedupDelete: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "delete",
        abstract: "Delete backups (their chunks stay until `dedup gc`).")

    @OptionGroup var store: StoreOptions
    @OptionGroup var locking: ExclusiveLockOptions

    @Argument(help: ArgumentHelp("Backup ids or unique prefixes.", valueName: "manifest-id"))
    var ids: [String]

    func validate() throws {
        if ids.isEmpty { throw ValidationError("name at least one backup to delete") }
    }

    func run() throws {
        try reportingErrors {
            let repo = try store.open()
            let lock = try repo.lock(.exclusive, command: "delete", wait: TimeInterval(locking.lockWait))
            defer { lock.release() }
            let resolved = try ids.map { try repo.resolveManifestID($0) }
            for id in Set(resolved).sorted() {
                try repo.deleteManifest(id)
                Terminal.out("deleted \(id)")
            }
            CatalogHook.sync(repo)
            Terminal.out("run `dbbackup dedup gc` to reclaim the space of chunks no backup uses any more")
        }
    }
}

struct DedupPrune: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prune",
        abstract: "Delete backups that a GFS retention policy does not keep.",
        discussion: """
        Backups are grouped by database (or by name when they have none). Within a
        group each rule walks the backups newest first and keeps the newest backup
        of each day, ISO week, month or year (in the local time zone) until it has
        kept its count; --keep-last N keeps the N newest. A backup kept by any rule
        stays. A policy that would delete every backup of a group is refused without
        --allow-empty. Archived WAL files and binlogs are not backups of their own:
        they are kept from the oldest kept base backup or dump of their server on
        (all of them while none is kept), and the rest deleted. Run `dedup gc`
        afterwards to reclaim the space.

        prune decides beside running backups and archiving (holding the maintenance
        lock) and deletes in short exclusive steps of at most 1000 backups or files.
        """)

    /// Manifests deleted under one exclusive lock.
    static let idsPerStep = 1000

    @OptionGroup var store: StoreOptions
    @OptionGroup var locking: ExclusiveLockOptions

    @Option(help: "Keep the N newest backups.") var keepLast: Int = 0
    @Option(help: "Keep the newest backup of each of the N latest days that have one.") var keepDaily: Int = 0
    @Option(help: "Keep the newest backup of each of the N latest ISO weeks that have one.") var keepWeekly: Int = 0
    @Option(help: "Keep the newest backup of each of the N latest months that have one.") var keepMonthly: Int = 0
    @Option(help: "Keep the newest backup of each of the N latest years that have one.") var keepYearly: Int = 0
    @Option(help: "Only backups of this database (or name).") var database: String?
    @Flag(help: "Show what would be kept and deleted; change nothing.") var dryRun = false
    @Flag(help: "Allow a policy that deletes every backup of a database.") var allowEmpty = false
    @Flag(help: "Print the decisions as JSON.") var json = false

    func validate() throws {
        for v in [keepLast, keepDaily, keepWeekly, keepMonthly, keepYearly] where v < 0 {
            throw ValidationError("--keep-* values must not be negative")
        }
    }

    func run() throws {
        try reportingErrors {
            let repo = try store.open()
            // Planned beside backups (they only add what the plan keeps); deleted in
            // short exclusive steps.
            let lock = dryRun ? nil : try repo.lock(.maintenance, command: "prune", wait: TimeInterval(locking.lockWait))
            defer { lock?.release() }
            let policy = RetentionPolicy(keepLast: keepLast, keepDaily: keepDaily, keepWeekly: keepWeekly,
                                         keepMonthly: keepMonthly, keepYearly: keepYearly)
            // Archived WAL and binlogs held as small records: a year of WAL is a
            // million manifests.
            var backups = [Manifest](), logs = [ArchivedLog](), names = Set<String>()
            try repo.forEachManifest { m in
                if let log = ArchivedLog(m, names: &names) { logs.append(log) } else { backups.append(m) }
            }
            backups.sort { ($0.createdAt, $0.id) < ($1.createdAt, $1.id) }
            logs.sort { ($0.createdAt, $0.id) < ($1.createdAt, $1.id) }
            if let database {
                let known = Set(backups.map { Retention.group(of: $0) })
                guard known.contains(database) else {
                    throw DedupError.invalidArgument(
                        noBackups(of: database, in: repo.path, known: known) + "; nothing was deleted")
                }
            }
            let decisions = Retention.decide(
                database.map { db in backups.filter { Retention.group(of: $0) == db } } ?? backups, policy: policy)
            let deleted = Set(decisions.filter { !$0.keep }.map(\.id))
            // Archived WAL and binlogs: what the backups that stay need.
            let logDecisions = LogRetention.decide(
                logs: logs,
                keptBackups: backups.filter { !deleted.contains($0.id) })
            let emptied = Dictionary(grouping: decisions, by: \.group).filter { $0.value.allSatisfy { !$0.keep } }.keys
                .sorted()
            if !emptied.isEmpty && !allowEmpty {
                throw DedupError.invalidArgument(
                    "this policy (\(policy.isEmpty ? "keeps nothing" : policy.summary)) would delete every backup of \(emptied.joined(separator: ", ")); nothing was deleted (pass --allow-empty if that is what you want)"
                )
            }
            if json {
                struct Row: Encodable { var id, group, createdAt: String; var keep: Bool; var reasons: [String] }
                try Terminal.json(
                    (decisions + logDecisions).map {
                        Row(id: $0.id, group: $0.group, createdAt: $0.createdAt, keep: $0.keep, reasons: $0.reasons)
                    })
            } else {
                printTable(header: ["ACTION", "ID", "GROUP", "CREATED", "REASONS"], rows: decisions.map {
                    [$0.keep ? "KEEP" : "DELETE", $0.id, $0.group, $0.createdAt, $0.reasons.joined(separator: ", ")]
                })
                // One line per WAL or binlog archive: they can be a million files.
                var summary = [String: (kept: Int, deleted: Int, reasons: Set<String>)]()
                for d in logDecisions {
                    var s = summary[d.group] ?? (0, 0, [])
                    if d.keep {
                        s.kept += 1
                        s.reasons.formUnion(d.reasons)
                    } else {
                        s.deleted += 1
                    }
                    summary[d.group] = s
                }
                for (group, s) in summary.sorted(by: { $0.key < $1.key }) {
                    let why = s.reasons.sorted().joined(separator: "; ")
                    Terminal.out("\(group): keep \(s.kept) files\(why.isEmpty ? "" : " (\(why))"), delete \(s.deleted)")
                }
            }
            let doomed = decisions.filter { !$0.keep }
            let doomedLogs = logDecisions.filter { !$0.keep }
            if dryRun {
                if !json {
                    Terminal.out(
                        "dry run: \(doomed.count) of \(decisions.count) backups and \(doomedLogs.count) archived WAL/binlog files would be deleted; nothing was changed"
                    )
                }
                return
            }
            let stepWait = max(TimeInterval(locking.lockWait), GarbageCollector.exclusiveStepWait)
            var first = true
            // Logs last: a crash in between leaves more logs than needed, never fewer.
            for ids in [doomed.map(\.id), doomedLogs.map(\.id)] {
                for start in stride(from: 0, to: ids.count, by: Self.idsPerStep) {
                    let step = try repo.lock(
                        .exclusive, command: "prune (deleting)", wait: stepWait, alongside: lock, announcesWait: false)
                    defer { step.release() }
                    try repo.deleteManifests(Array(ids[start..<min(ids.count, start + Self.idsPerStep)])) { _ in
                        if first { FaultInjection.crashPoint("prune.after-first-delete") }
                        first = false
                    }
                }
            }
            CatalogHook.sync(repo)
            if !json {
                Terminal.out(
                    "deleted \(doomed.count) of \(decisions.count) backups and \(doomedLogs.count) archived WAL/binlog files; run `dbbackup dedup gc` to reclaim their space"
                )
            }
        }
    }
}

struct DedupGC: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gc",
        abstract: "Reclaim the space of chunks that no backup uses (mark and sweep, with repacking).",
        discussion: """
        Runs beside backups and archiving: gc holds the maintenance lock (one gc, prune,
        delete or index rebuild at a time) and takes the exclusive lock only for short
        steps that delete, each after marking the backups committed meanwhile; a backup
        or `wal archive` waits at most about a second for one. A step waits for running
        backups to finish (up to 4 hours, or --lock-wait if longer).

        Packs with no live chunk are deleted; a pack whose rewrite would keep less than
        the repack threshold of its bytes is rewritten without its dead chunks (a partly
        dead group is recompressed only when that makes it smaller). Small packs (below
        half the pack size: one per `wal archive` segment, the last one of each backup)
        are merged into packs of the pack size, in the order of the backups that use
        them. gc never grows the repository, and --dry-run reports exactly what the run
        would reclaim. Memory stays bounded: the set of live chunks is kept on disk. If
        any backup is unreadable, gc stops before deleting anything.
        """)

    @OptionGroup var store: StoreOptions
    @OptionGroup var locking: ExclusiveLockOptions

    @Flag(help: "Report what would be reclaimed; change nothing.") var dryRun = false

    @Option(
        help: ArgumentHelp(
            "Rewrite a pack when its rewrite keeps less than this fraction (0-1) of its bytes.", valueName: "fraction"))
    var repackThreshold: Double = 0.5

    @Flag(help: "Print the report as JSON.") var json = false

    func validate() throws {
        guard (0...1).contains(repackThreshold) else {
            throw ValidationError("--repack-threshold takes a fraction from 0 to 1")
        }
    }

    func run() throws {
        try reportingErrors {
            let repo = try store.open()
            let lock = try repo.lock(.maintenance, command: "gc", wait: TimeInterval(locking.lockWait))
            defer { lock.release() }
            let gc = GarbageCollector(repository: repo)
            let stepWait = max(TimeInterval(locking.lockWait), GarbageCollector.exclusiveStepWait)
            gc.takeExclusive = {
                try repo.lock(.exclusive, command: "gc (deleting)", wait: stepWait, alongside: lock, announcesWait: false)
            }
            gc.dryRun = dryRun
            gc.repackThreshold = repackThreshold
            let r = try gc.run()
            if json { try Terminal.json(r); return }
            let verb = dryRun ? "would reclaim" : "reclaimed"
            Terminal.out("gc\(dryRun ? " (dry run)" : ""): \(r.manifests) backups reference \(r.liveChunks) chunks")
            let merged = r.packsMerged > 0 ? " and \(r.packsMerged) small ones merged" : ""
            Terminal.out(
                "  packs     \(r.packsBefore) before: \(r.packsDeleted) deleted, \(r.packsRepacked) repacked\(merged) into \(r.packsWritten) new"
            )
            Terminal.out("  chunks    \(r.chunksRemoved) removed")
            Terminal.out(
                "  space     \(verb) \(Format.bytes(r.bytesReclaimed)) of \(Format.bytes(r.bytesBefore)) in packs")
            if r.orphanChunkListsRemoved > 0 {
                Terminal.out("  \(r.orphanChunkListsRemoved) chunk list(s) of unfinished backups removed")
            }
            if r.packsKeptForNewBackups > 0 {
                Terminal.out("  \(r.packsKeptForNewBackups) pack(s) kept for backups committed while gc ran")
            }
            if r.exclusiveSteps > 0 {
                Terminal.out(
                    "  locked    \(r.exclusiveSteps) exclusive step(s), \(Format.duration(r.exclusiveSeconds)) in all")
            }
            Terminal.out("  duration  \(Format.duration(r.durationSeconds))")
            for p in r.packsUnreadable { Terminal.err("dbbackup: warning: unreadable pack kept: \(p)") }
            for c in r.corruptChunks {
                Terminal.err("dbbackup: warning: damaged chunk not copied, its pack kept: \(c)")
            }
            if r.damagedPacksKept > 0 {
                Terminal.err(
                    "dbbackup: warning: \(r.damagedPacksKept) pack(s) kept: each holds the only, damaged, copy of a chunk a backup needs; back that data up again, see `dbbackup dedup verify`"
                )
            }
            if r.missingChunks > 0 {
                Terminal.err(
                    "dbbackup: warning: \(r.missingChunks) referenced chunk(s) are missing; run `dbbackup dedup verify` to see the damaged backups"
                )
            }
        }
    }
}
