import Foundation

/// What gc did (or, with `dryRun`, would do: the same figures, to the byte).
public struct GCReport: Codable, Sendable {
    public var manifests = 0
    public var liveChunks = 0
    public var missingChunks = 0
    public var packsBefore = 0
    public var packsDeleted = 0
    public var packsRepacked = 0
    /// Small packs (below half the pack size: a `wal archive` segment's, the last
    /// pack of a backup) whose live chunks were copied into packs of the pack size.
    public var packsMerged = 0
    public var packsWritten = 0
    public var packsUnreadable: [String] = []
    /// Live chunks found damaged while repacking (their packs were kept).
    public var corruptChunks: [String] = []
    /// Packs kept because they hold the only, damaged, copy of a chunk a backup
    /// needs (verify's record names it; the next backup of the data heals it).
    public var damagedPacksKept = 0
    public var chunksRemoved = 0
    public var bytesBefore: Int64 = 0
    public var bytesReclaimed: Int64 = 0
    public var orphanChunkListsRemoved = 0
    public var dryRun = false
    /// Packs kept because a backup committed while gc ran uses a chunk of theirs
    /// (counted out of deleted, repacked, merged, chunks removed and space).
    public var packsKeptForNewBackups = 0
    /// Steps that held the exclusive lock, and for how long in all (0 when the
    /// caller held it for the whole run).
    public var exclusiveSteps = 0
    public var exclusiveSeconds = 0.0
    public var durationSeconds = 0.0
}

/// Mark and sweep over the whole repository. Beside backups (`takeExclusive`
/// set, under the maintenance lock), the exclusive lock is held only for the
/// short steps that delete (`DeletionSteps`); else the caller holds it.
///
/// Mark: every chunk id of every manifest goes into an on-disk set (memory stays
/// bounded). If any backup cannot be read, gc stops before deleting anything.
///
/// Sweep, pack by pack, planned then executed: a chunk is live in a pack when it
/// is marked and the index places it in that pack (a duplicate elsewhere is dead).
/// Packs with nothing live are deleted. For the others the plan says what a
/// rewrite would keep: single chunks and wholly live groups copied as stored;
/// the live members of a partly dead group compressed together anew when that is
/// smaller than the group's frame, else the frame copied as stored with only them
/// listed. A pack is rewritten when that keeps less than the repack threshold of
/// its bytes.
///
/// Small packs (below half the pack size) are merged: their live chunks go into
/// packs of the pack size, so that a year of `wal archive` (a pack per segment)
/// ends in a few packs, not 525,600. The mark orders them by the first backup (in
/// id order: WAL segments in WAL order) that uses one of their chunks, so a merged
/// pack holds neighbouring backups and a prune of the oldest ones frees whole
/// packs. The packs gc writes are cut at the pack size, so after gc the packs
/// number at most twice the stored bytes over the pack size, plus one. A small
/// pack with nothing to merge with (no other small pack, nothing else being
/// rewritten) stays as it is: its copy would be the same pack again.
///
/// New packs are committed and indexed before the old ones are forgotten and
/// deleted, and never outnumber the packs they replace, so gc never grows the
/// repository. A dry run computes the same plan and the sizes of the packs the
/// run would write, without writing them.
/// A crash at any point leaves every manifest restorable; the next gc finishes.
public final class GarbageCollector {
    private let repository: Repository
    public var repackThreshold = 0.5
    public var dryRun = false
    /// Chunk ids forgotten in one index transaction before their packs are deleted.
    var forgetBatch = Sweep.defaultForgetBatch
    /// Takes the exclusive lock for one step that deletes (the CLI: beside its
    /// maintenance lock, waiting for running backups). Nil: the caller holds the
    /// exclusive lock for the whole run.
    public var takeExclusive: (() throws -> RepositoryLock)?
    /// How long the CLI lets one step wait for running backups to finish.
    public static let exclusiveStepWait: TimeInterval = 4 * 3600
    /// Test hook, run after the mark: a backup committed here is one gc did not see.
    var afterMark: (() throws -> Void)?
    /// Test hook, run before each exclusive step takes the lock (after the pass
    /// that marks late commits without it).
    var beforeExclusiveStep: (() throws -> Void)?

    public init(repository: Repository) {
        self.repository = repository
    }

    public func run() throws -> GCReport {
        try repository.requireKey()
        let started = Date()
        var report = GCReport()
        report.dryRun = dryRun
        // Listed before the index is: every pack gc looks at is one the index has read.
        let listed = try PackCensus.listPacks(repository.backend)
        let index = try repository.listedIndex()
        try markAndSweep(index, listed, since: started, &report)
        if !dryRun {
            try repository.saveBloom(try repository.freshBloom(), fresh: true)
            _ = repository.measureDiskUsage()
        }
        report.durationSeconds = Date().timeIntervalSince(started)
        return report
    }

    /// Mark, sweep, then the last step: the chunk lists no manifest names (a
    /// backup that died before committing), temporaries of dead writers, old
    /// change notes. What gc holds a pack or a backup of (the merge order, the
    /// sweep's tables, the mark set, the ids) goes when this returns, before the
    /// Bloom filter is rebuilt from the whole index.
    private func markAndSweep(_ index: ChunkIndex, _ listed: [PackID], since started: Date,
                              _ report: inout GCReport) throws {
        // The small packs (one whose trailer the index could not read is never
        // merged): the mark orders them.
        var census = try PackCensus(listed, index: index, backend: repository.backend,
                                    packSize: repository.config.packSize)
        let marks = try ChunkSet(path: repository.cacheDirectory + "/gc-marks-\(getpid()).lmdb")
        let mapped = MappedPages([index.path, marks.path])
        mapped.release()  // what bringing the index in step touched
        let liveLists = try mark(into: marks, index: index, ordering: &census.small, mapped, &report)
        FaultInjection.crashPoint("gc.after-mark")
        FaultInjection.pausePoint("gc.after-mark")
        try afterMark?()
        let candidates = try orphanChunkLists(keeping: liveLists)
        ResidentPages.releaseFreedHeap()

        let steps = DeletionSteps(
            repository: repository, since: started, marks: marks, index: index, chunkLists: liveLists,
            takeExclusive: dryRun ? nil : takeExclusive)
        steps.beforeLock = beforeExclusiveStep
        let sweep = try Sweep(repository: repository, index: index, marks: marks, mapped: mapped,
                              census: census, steps: steps, dryRun: dryRun, threshold: repackThreshold,
                              forgetBatch: forgetBatch, report: report)
        census = PackCensus()  // the sweep's alone, which lets go of it once sorted
        try sweep.run()
        report = sweep.report
        mapped.release()
        // What they held in small pieces (a year of WAL: 525,600 backup ids) is free.
        ResidentPages.releaseFreedHeap()
        guard !dryRun else {
            report.orphanChunkListsRemoved = candidates.count
            return
        }
        try steps.run {
            // A list that was an orphan at the listing but whose backup committed since is kept.
            let orphans = candidates.filter { !steps.chunkLists.contains($0.hashValue) }
            report.orphanChunkListsRemoved = orphans.count
            try repository.backend.delete(keys: orphans)
            // Leftovers of processes that died while writing (nothing else writes:
            // gc holds the exclusive lock).
            repository.backend.removeAbandonedWrites(all: true)
            // Change notes older than any catalog reads them (ChangeNote.retention).
            try repository.pruneChanges(before: Date().addingTimeInterval(-ChangeNote.retention))
        }
        report.exclusiveSteps = steps.lockedSteps
        report.exclusiveSeconds = steps.lockedSeconds
    }

    /// Every chunk of every backup into an on-disk set, and the chunk lists in use,
    /// by the hash values of their keys: 8 bytes a list instead of about 100 for
    /// the key (a year of WAL segments: 8 MB instead of about 70), and a collision only
    /// keeps an orphan list. Each small pack in `order` gets the position of the
    /// first backup (in id order) that uses a chunk the index places in it: an
    /// index lookup a chunk until every small pack has one, and none when there is
    /// at most one small pack (it is never merged alone).
    private func mark(
        into marks: ChunkSet, index: ChunkIndex, ordering order: inout [PackID: Int], _ mapped: MappedPages,
        _ report: inout GCReport
    ) throws -> Set<Int> {
        let ids = try repository.manifestIDs()
        var liveChunkLists = Set<Int>()
        var unplaced = order.count > 1 ? order.count : 0
        var position = 0
        let walker = ReferenceWalker(repository: repository)
        try walker.forEachBackup(ids) { id, loaded in
            do {
                let manifest = try loaded.get()
                try walker.forEachStream(of: manifest) { member, list in
                    liveChunkLists.insert(member.chunkList.key.hashValue)
                    try list.forEach { chunk, _ in
                        try marks.insert(chunk)
                        mapped.tick()
                        guard unplaced > 0, let pack = try index.lookup(chunk)?.pack, order[pack] == Int.max
                        else { return }
                        order[pack] = position
                        unplaced -= 1
                    }
                }
                position += 1
            } catch let e as DedupError {
                throw DedupError.invalidArgument(
                    "gc stopped before deleting anything: \(e.message); repair it, or remove that backup with `dbbackup dedup delete \(id)`, then run gc again"
                )
            }
        }
        try marks.flush()
        try markDeltaBases(into: marks, index: index)
        report.manifests = ids.count
        report.liveChunks = try marks.count()
        return liveChunkLists
    }

    /// Marks the bases of every live delta, and theirs down the chain: a base is
    /// live while a live delta needs it. One scan of the index (only deltas name
    /// a base), with a lookup a base as it goes: nothing is held but the scan.
    private func markDeltaBases(into marks: ChunkSet, index: ChunkIndex) throws {
        try index.forEachChunk { delta, loc in
            guard loc.isDelta, try marks.contains(delta) else { return }
            try index.forEachBase(of: delta, at: loc) { base, _ in try marks.insert(base) }
        }
        try marks.flush()
    }

    /// Chunk lists that no manifest names, found one key at a time (a year of
    /// WAL: a million keys under manifests/).
    private func orphanChunkLists(keeping live: Set<Int>) throws -> [String] {
        var orphans = [String]()
        try repository.backend.forEachKey("manifests/") { key in
            if key.hasSuffix(".chunks") && !live.contains(key.hashValue) { orphans.append(key) }
        }
        return orphans
    }
}

/// What a rewrite of one pack keeps: its live chunks, as pieces in pack order.
struct RepackPlan {
    enum Piece {
        /// A single chunk, its stored payload copied.
        case copy(PackEntry)
        /// A group's frame copied as stored; `members` are its live members (all
        /// of them, or those of a group whose recompression would not be smaller).
        case frame(members: [PackEntry])
        /// The live members of a partly dead group, compressed together anew
        /// (`payload`, when kept from planning) into `encoding`.
        case regroup(members: [PackEntry], encoding: ChunkEncoding, storedLength: Int, payload: [UInt8]?)
    }

    var pieces: [Piece] = []
    /// Bytes the pieces take in a data area (entry headers and payloads).
    var keptBytes: Int64 = 0
    /// Trailer entries the pieces make.
    var entries = 0
    /// The pack's own entry bytes (headers and payloads, a group's frame once).
    var chunkBytes: Int64 = 0

    /// True when the rewrite keeps less than `threshold` of the pack's entry
    /// bytes, and less than all of them: worth it for the dead chunks alone.
    func keepsLess(than threshold: Double) -> Bool {
        keptBytes < chunkBytes && Double(keptBytes) < threshold * Double(chunkBytes)
    }

    /// Forgets the regrouped payloads kept from planning (they are compressed
    /// again when written), for a plan that waits.
    mutating func dropKeptPayloads() {
        pieces = pieces.map { piece in
            guard case .regroup(let members, let encoding, let storedLength, .some) = piece else { return piece }
            return .regroup(members: members, encoding: encoding, storedLength: storedLength, payload: nil)
        }
    }
}

/// The pages of the chunk index and of the mark set that gc touched, dropped from
/// its resident set now and then (`ResidentPages`; the page cache keeps them): a
/// pass over every chunk would otherwise leave both maps resident, about 270 bytes
/// a chunk (tools/bench-gc: 269 of 306 MiB at 1 M chunks), pages the kernel could
/// take back at any time but which count in gc's RSS.
final class MappedPages {
    /// Lookups and changes of the maps (a chunk marked, looked up, indexed or
    /// forgotten, a pack's record) between two releases. A random fault maps about
    /// 40 KiB, not one page (the kernel maps the page cache around it too; on
    /// Linux 6.18 MADV_RANDOM does not stop that). Measured on a year of WAL
    /// (tools/bench-gc-compact): the maps' peak in gc's RSS was 241 MiB without
    /// releases, 180 with one every 1024, 171-175 every 256; what is left is
    /// mostly what one transaction maps before the next release (indexing a merged
    /// pack of 4000 chunks maps most of the index). A release reads
    /// /proc/self/maps: about 6,000 in that gc, no time measurable in it.
    static let interval = 256
    private let paths: [String]
    private var count = 0

    init(_ paths: [String]) { self.paths = paths }

    /// Counts `chunks` more; releases the maps' pages once they reach the interval.
    func tick(_ chunks: Int = 1) {
        count += chunks
        if count >= Self.interval { release() }
    }

    func release() {
        count = 0
        for path in paths { ResidentPages.release(mappingsOf: path) }
    }
}

/// A pack the sweep rewrites: why, its plan, and what it replaces.
struct PackRewrite {
    enum Reason {
        /// The plan keeps less than the repack threshold of its bytes.
        case deadChunks
        /// A small pack, merged into packs of the pack size (its dead chunks, if
        /// any, dropped on the way).
        case small
    }

    let pack: PackID
    let size: Int64
    /// Every chunk id of its trailer, live or not (what the index forgets with it).
    let ids: [ChunkID]
    var plan: RepackPlan
    let reason: Reason
}

/// The sweep of one gc run: plans each pack, then deletes, keeps or rewrites it;
/// first the packs of at least half the pack size, in key order, then the small
/// ones, in merge order. Rewrites of both kinds share the pack being written.
private final class Sweep {
    let repository: Repository
    let index: ChunkIndex
    let marks: ChunkSet
    let mapped: MappedPages
    let dryRun: Bool
    let threshold: Double
    var report: GCReport
    let backend: Backend
    let encrypted: Bool
    let packSize: Int64
    let chunkReader: ChunkReader
    /// Regrouped members are stored as a backup would store them.
    let encoder: UnitEncoder
    let damaged: DamagedChunks
    let steps: DeletionSteps
    /// The packs listed before the mark; the small ones each with the position of
    /// the first backup that uses one of its chunks (`Int.max`: none): the order
    /// they are merged in.
    var census: PackCensus
    var unreadable: Set<PackID>
    /// The first small pack to merge, held back until there is something to merge
    /// it with: another small pack, or the pack being written.
    var heldBack: PackRewrite?

    /// The pack being written (nil in a dry run), and its size so far (also in a
    /// dry run, where it is computed with the sizes PackWriter writes).
    var writer: PackWriter?
    var writing: (size: Int64, entries: Int, deltas: Int)?
    /// Rewritten packs whose live chunks all sit in the pack being written: they
    /// go once it is committed.
    var awaitingCommit: [Doomed] = []
    /// Packs to forget, batched: one durable index transaction for several packs
    /// instead of one each. LMDB keeps every page a transaction changes in memory,
    /// at most one page per removed entry (a chunk's, or a pack's record), so the
    /// batch is capped at 4 Ki entries (at most 16 MiB): about 32 packs of the
    /// default 256 KiB chunks, one pack of 4 KiB chunks, 2 Ki packs of one WAL
    /// segment (measured: a cap of 16 Ki entries cut gc's writes by a quarter at
    /// 1 M chunks but doubled its heap).
    var doomed: [Doomed] = []
    var doomedIDs = 0
    static let defaultForgetBatch = 4096
    /// Index entries removed in one transaction. Each page a transaction changes
    /// is mapped first, and with it the pages around it (fault-around: about 40
    /// KiB a fault), and dropped only after it: 4096 random removals mapped most
    /// of a year of WAL's index (130 MiB) at once, 512 map at most about 20 MiB.
    /// The pack objects still go in batches of 4096 entries, so that a folder is
    /// synced once for many of them.
    static let removalsPerTransaction = 512
    /// The cap in use (crash tests make it 1: each old pack goes as soon as it may).
    let forgetBatch: Int
    /// Bytes of regrouped payloads kept from planning to writing (beyond it they
    /// are compressed again: zstd gives the same bytes).
    static let keptPayloadLimit = 64 << 20

    init(
        repository: Repository, index: ChunkIndex, marks: ChunkSet, mapped: MappedPages, census: PackCensus,
        steps: DeletionSteps, dryRun: Bool, threshold: Double, forgetBatch: Int, report: GCReport
    ) throws {
        self.repository = repository
        self.index = index
        self.marks = marks
        self.mapped = mapped
        self.census = census
        self.steps = steps
        unreadable = census.unreadable
        self.dryRun = dryRun
        self.threshold = threshold
        self.forgetBatch = forgetBatch
        self.report = report
        backend = repository.backend
        encrypted = repository.cipher != nil
        packSize = Int64(repository.config.packSize)
        chunkReader = try ChunkReader(repository: repository)
        encoder = try UnitEncoder(repository.config.compression)
        damaged = try repository.damagedChunks()
    }

    /// The order of pack keys (`packs/xx/<hex>.pack`), without making the hex.
    static func keyOrder(_ a: PackID, _ b: PackID) -> Bool { (a.hi, a.lo) < (b.hi, b.lo) }

    func run() throws {
        report.packsBefore = census.packs
        report.bytesBefore = census.bytes
        // Packs whose trailer cannot be read are never deleted, and a copy of a
        // chunk there does not count: another, readable copy is kept instead.
        var large = census.large
        var small = [(pack: PackID, size: Int64, order: Int)]()
        small.reserveCapacity(census.small.count)
        for (pack, order) in census.small {
            if let size = try index.packSize(pack) { small.append((pack, size, order)) }
        }
        census = PackCensus()  // in `large` and `small` now
        for pack in unreadable.sorted(by: Self.keyOrder) {
            report.packsUnreadable.append("\(pack.hex): its trailer cannot be read (see `dbbackup dedup verify`)")
        }
        large.sort { Self.keyOrder($0.pack, $1.pack) }
        for p in large { try sweep(p.pack, size: p.size) }
        small.sort { a, b in (a.order, a.pack.hi, a.pack.lo) < (b.order, b.pack.hi, b.pack.lo) }
        for p in small { try sweepSmall(p.pack, size: p.size) }
        // A small pack still held back had nothing to merge with: it stays.
        heldBack = nil
        try commitWriter()
        if !dryRun { try steps.run { try flushDoomed() } }
        // Marked chunks that the index places in no pack. It was brought in step
        // with the packs at the start, and knows the packs this host wrote since;
        // a chunk of a backup that another host committed between gc's listing
        // and its mark, in a pack of its own, is counted too (verify tells).
        try marks.forEach { id in
            if try index.lookup(id) == nil { report.missingChunks += 1 }
            mapped.tick()
        }
    }

    /// A pack of at least half the pack size: deleted, kept, or rewritten without
    /// its dead chunks when that keeps less than the threshold of its bytes.
    private func sweep(_ pack: PackID, size: Int64) throws {
        guard let (entries, live) = try survey(pack, size: size), live.count < entries.count,
            let plan = try plan(pack, entries: entries, live: live, threshold: threshold)
        else { return }
        try rewrite(PackRewrite(pack: pack, size: size, ids: entries.map(\.id), plan: plan, reason: .deadChunks))
    }

    /// A small pack: deleted or kept like any other; rewritten for its dead chunks
    /// when the threshold says so; else merged, with its dead chunks dropped, once
    /// there is something to merge it with.
    private func sweepSmall(_ pack: PackID, size: Int64) throws {
        guard let (entries, live) = try survey(pack, size: size),
            let plan = try plan(pack, entries: entries, live: live, threshold: nil)
        else { return }
        let deadChunks = live.count < entries.count && plan.keepsLess(than: threshold)
        var next = PackRewrite(
            pack: pack, size: size, ids: entries.map(\.id), plan: plan, reason: deadChunks ? .deadChunks : .small)
        if !deadChunks && writing == nil && heldBack == nil {
            next.plan.dropKeptPayloads()
            heldBack = next
            return
        }
        if let held = heldBack {
            heldBack = nil
            try rewrite(held)
        }
        try rewrite(next)
    }

    /// Reads a pack's trailer and finds its live entries; nil when that settles
    /// the pack: unreadable (reported), holding the only, damaged, copy of a chunk
    /// a backup needs (kept), or with nothing live (deleted).
    private func survey(_ pack: PackID, size: Int64) throws -> (entries: [PackEntry], live: [PackEntry])? {
        let entries: [PackEntry]
        do {
            entries = try PackReader(backend: backend, id: pack, cipher: repository.cipher).entries()
        } catch let e as DedupError {
            // Damaged since it was indexed, with its size unchanged.
            unreadable.insert(pack)
            report.packsUnreadable.append("\(pack.hex): \(e.message)")
            return nil
        }
        let (live, holdsDamagedCopy) = try liveEntries(of: pack, entries)
        mapped.tick(2 * entries.count)  // the mark set's and the index's
        if holdsDamagedCopy {
            // The only copy of a chunk a backup needs, damaged: kept, so that verify
            // and restore keep naming it until a backup of the data heals it.
            report.damagedPacksKept += 1
            return nil
        }
        if live.isEmpty {
            report.packsDeleted += 1
            report.chunksRemoved += entries.count
            report.bytesReclaimed += size
            if !dryRun { try forget(Doomed(pack: pack, ids: entries.map(\.id), size: size, removed: entries.count)) }
            return nil
        }
        return (entries, live)
    }

    /// Appends a rewrite's pieces to the pack being written and counts it; the
    /// old pack goes once every live chunk of it is in a committed pack: at the
    /// next commit.
    private func rewrite(_ r: PackRewrite) throws {
        count(r, 1)
        guard try write(r.plan) else {
            // A chunk went bad between planning and writing: the pack is kept
            // (what was copied of it already is a harmless second copy).
            count(r, -1)
            return
        }
        if !dryRun {
            awaitingCommit.append(
                Doomed(pack: r.pack, ids: r.ids, size: r.size, removed: r.ids.count - r.plan.entries, reason: r.reason))
        }
    }

    /// Adds a rewrite to the report's figures (`sign` 1), or takes it back (-1).
    private func count(_ r: PackRewrite, _ sign: Int) {
        switch r.reason {
        case .deadChunks: report.packsRepacked += sign
        case .small: report.packsMerged += sign
        }
        report.chunksRemoved += sign * (r.ids.count - r.plan.entries)
        report.bytesReclaimed += Int64(sign) * r.size
    }

    /// The entries of `pack` that backups need from it, in pack order, and
    /// whether it holds the only, damaged, copy of a chunk that one needs.
    private func liveEntries(of pack: PackID, _ entries: [PackEntry]) throws -> ([PackEntry], Bool) {
        var live = [PackEntry]()
        var repointed = [PackEntry]()
        var holdsDamagedCopy = false
        for e in entries where try marks.contains(e.id) {
            let loc = try index.lookup(e.id)
            // The index names packs present only (brought in step with the listing,
            // and gc forgets a pack before it deletes it).
            let indexCopyUsable = loc.map { !unreadable.contains($0.pack) } ?? false
            if let loc, loc.pack == pack, loc.offset == e.location.offset {
                live.append(e)
            } else if !indexCopyUsable {
                // The index has no usable copy (in a pack that is gone or unreadable,
                // or dropped as corrupt): this one becomes the copy, if it is intact.
                if damaged.contains(e) {
                    holdsDamagedCopy = true
                    continue
                }
                guard
                    (try? chunkReader.fetch(
                        e.id, at: e.location, expectedLength: Int(e.location.rawLength), manifest: "(gc)")) != nil
                else { continue }
                live.append(e)
                repointed.append(e)
            }
        }
        if !repointed.isEmpty && !dryRun { try index.point(repointed) }
        return (live, holdsDamagedCopy)
    }

    /// The rewrite of a pack: its live entries as pieces. With a `threshold`, nil
    /// when the rewrite would keep at least that share of the chunks' bytes (or
    /// all of them); nil too when a damaged chunk stands in the way (the pack is
    /// kept for verify to name).
    private func plan(
        _ pack: PackID, entries: [PackEntry], live: [PackEntry], threshold: Double?
    ) throws -> RepackPlan? {
        // Measured against the chunks' bytes, not the file: header, trailer and
        // footer would make a small, wholly live pack look mostly dead.
        var frames = Set<UInt64>()
        let chunkBytes = entries.reduce(Int64(0)) { sum, e in
            guard !e.location.isGroupMember || frames.insert(e.location.offset).inserted else { return sum }
            return sum + Self.copiedSize(e)
        }
        // Each group's members, live or not, by frame offset.
        var groupMembers = [UInt64: Int]()
        for e in entries where e.location.isGroupMember { groupMembers[e.location.offset, default: 0] += 1 }
        // Live entries in runs: a single chunk, or the live members of one group.
        var runs = [ArraySlice<PackEntry>]()
        var k = 0
        while k < live.count {
            var end = k + 1
            if live[k].location.isGroupMember {
                while end < live.count && live[end].location.isGroupMember
                    && live[end].location.frame == live[k].location.frame
                { end += 1 }
            }
            runs.append(live[k..<end])
            k = end
        }
        if let threshold {
            // The least the rewrite can keep (a regrouped run at no bytes at all): a
            // pack that keeps too much even so is not read.
            let floor = runs.reduce(Int64(0)) { sum, run in
                guard let e = run.first else { return sum }
                let partial = e.location.isGroupMember && run.count < groupMembers[e.location.offset, default: 0]
                return sum + (partial ? 0 : Self.copiedSize(e))
            }
            guard Double(floor) < threshold * Double(chunkBytes) else { return nil }
        }

        var plan = RepackPlan()
        plan.chunkBytes = chunkBytes
        var keptPayloads = 0
        for run in runs {
            guard let e = run.first else { continue }
            let piece: RepackPlan.Piece
            if !e.location.isGroupMember {
                piece = .copy(e)
            } else if run.count == groupMembers[e.location.offset, default: 0] {
                piece = .frame(members: Array(run))
            } else {
                // Partly dead: recompressed together when that is smaller than the frame.
                guard let regrouped = try regroup(run) else { return nil }
                let asFrame = Self.copiedSize(e)
                if regrouped.size < asFrame {
                    let keep = keptPayloads + regrouped.payload.count <= Self.keptPayloadLimit
                    if keep { keptPayloads += regrouped.payload.count }
                    piece = .regroup(
                        members: Array(run), encoding: regrouped.encoding, storedLength: regrouped.payload.count,
                        payload: keep ? regrouped.payload : nil)
                } else {
                    piece = .frame(members: Array(run))
                }
            }
            plan.keptBytes += pieceSize(piece)
            plan.entries += pieceEntries(piece)
            plan.pieces.append(piece)
        }
        if let threshold, !plan.keepsLess(than: threshold) { return nil }
        return plan
    }

    /// The live members of a partly dead group stored together as a backup would
    /// store them (`UnitEncoder`: one chunk for one member; raw members when
    /// nothing makes them smaller), and the bytes they take in a data area; nil
    /// when a member is damaged.
    private func regroup(
        _ run: ArraySlice<PackEntry>
    ) throws -> (encoding: ChunkEncoding, payload: [UInt8], size: Int64)? {
        var plain = [UInt8]()
        for m in run {
            guard let bytes = readBack(m) else { return nil }
            plain.append(contentsOf: bytes)
        }
        var out = [UInt8](repeating: 0, count: UnitEncoder.outputSize(plain.count))
        let (n, encoding, _) = try plain.withUnsafeBytes { p in
            try out.withUnsafeMutableBytes { try encoder.encode([p], members: run.count, rawLength: p.count, into: $0) }
        }
        guard encoding == .raw else {
            out.removeSubrange(n...)
            return (encoding, out, PackFormat.entrySize(payload: n, encrypted: encrypted))
        }
        let raw = run.reduce(Int64(0)) {
            $0 + PackFormat.entrySize(payload: Int($1.location.rawLength), encrypted: encrypted)
        }
        return (.raw, plain, raw)
    }

    /// Reads a live chunk back (verified); a damaged one is reported.
    private func readBack(_ e: PackEntry) -> UnsafeRawBufferPointer? {
        do {
            return try chunkReader.fetch(
                e.id, at: e.location, expectedLength: Int(e.location.rawLength), manifest: "(gc repack)")
        } catch {
            report.corruptChunks.append((error as? DedupError)?.message ?? "\(error)")
            return nil
        }
    }

    /// Bytes an entry copied as stored takes in a data area: its header and its
    /// payload as stored (sealed, in an encrypted repository, where the copy is
    /// sealed anew at the same length).
    private static func copiedSize(_ e: PackEntry) -> Int64 {
        Int64(PackFormat.entryHeaderSize) + Int64(e.location.storedLength)
    }

    private func pieceSize(_ piece: RepackPlan.Piece) -> Int64 {
        switch piece {
        case .copy(let e): return Self.copiedSize(e)
        case .frame(let members): return members.first.map(Self.copiedSize) ?? 0
        case .regroup(let members, let encoding, let storedLength, _):
            guard encoding == .raw else { return PackFormat.entrySize(payload: storedLength, encrypted: encrypted) }
            return members.reduce(0) {
                $0 + PackFormat.entrySize(payload: Int($1.location.rawLength), encrypted: encrypted)
            }
        }
    }

    private func pieceEntries(_ piece: RepackPlan.Piece) -> Int {
        switch piece {
        case .copy: return 1
        case .frame(let members), .regroup(let members, _, _, _): return members.count
        }
    }

    /// Appends a plan's pieces to the pack being written (in a dry run, only
    /// their sizes). A full pack is committed before the next piece, unless that
    /// would make more new packs than the packs rewritten so far (repacked or
    /// merged): gc's packs never outnumber the ones they replace, so the
    /// repository never grows. Returns false when a chunk read back damaged (it
    /// is reported).
    private func write(_ plan: RepackPlan) throws -> Bool {
        for piece in plan.pieces {
            if let w = writing, w.size >= packSize,
                report.packsWritten + 1 < report.packsRepacked + report.packsMerged
            {
                try commitWriter()
            }
            if writing == nil {
                writing = (Int64(PackFormat.headerSize), 0, 0)
                if !dryRun { writer = try PackWriter(backend: backend, cipher: repository.cipher) }
            }
            if let writer {
                do {
                    try append(piece, to: writer)
                } catch let e as DedupError {
                    guard case .chunkCorrupt = e else { throw e }
                    report.corruptChunks.append(e.message)
                    return false
                }
            }
            writing?.size += pieceSize(piece)
            writing?.entries += pieceEntries(piece)
            if case .copy(let e) = piece, e.location.isDelta { writing?.deltas += 1 }
        }
        return true
    }

    /// Writes one piece: every chunk read back and checked first.
    private func append(_ piece: RepackPlan.Piece, to writer: PackWriter) throws {
        func fetch(_ e: PackEntry) throws -> UnsafeRawBufferPointer {
            try chunkReader.fetch(
                e.id, at: e.location, expectedLength: Int(e.location.rawLength), manifest: "(gc repack)")
        }
        switch piece {
        case .copy(let e):
            // Copied as stored: no decompression, no recompression.
            _ = try fetch(e)
            try writer.add(
                id: e.id, rawLength: Int(e.location.rawLength),
                encoding: ChunkEncoding(rawValue: e.location.encoding) ?? .raw, payload: chunkReader.storedPayload,
                base: e.location.base)
        case .frame(let members):
            for m in members { _ = try fetch(m) }
            let frame = chunkReader.storedPayload
            // The group's plaintext length: the frame's content size, or for a
            // hex-packed group what its packed form declares (decoded by the fetch).
            let encoding = members.first.flatMap { ChunkEncoding(rawValue: $0.location.encoding) } ?? .zstdGroup
            let declared = encoding.isHexPacked ? chunkReader.groupPlaintextLength : ZstdDecompressor.contentSize(frame)
            guard let total = declared, let first = members.first else {
                throw DedupError.packCorrupt(
                    pack: members.first?.location.pack.hex ?? "?", detail: "a group frame without its size")
            }
            let head = members.first { $0.location.groupOffset == 0 } ?? first
            try writer.addFrame(
                headerID: head.id, totalLength: total,
                members: members.map { ($0.id, Int($0.location.rawLength), Int($0.location.groupOffset)) },
                payload: frame, encoding: encoding)
        case .regroup(let members, let encoding, let storedLength, let kept):
            var payload = kept ?? []
            if kept == nil {
                guard let again = try regroup(members[...]) else {
                    throw DedupError.chunkCorrupt(
                        chunk: members.first?.id.hex ?? "?", pack: members.first?.location.pack.hex ?? "?",
                        manifest: "(gc repack)", detail: "it read back differently while being rewritten")
                }
                payload = again.payload
            }
            guard payload.count == storedLength || encoding == .raw else {
                throw DedupError.compression(
                    "a regrouped group compressed to \(payload.count) bytes, planned \(storedLength)")
            }
            try payload.withUnsafeBytes { bytes in
                switch encoding {
                case .zstdGroup, .hexZstdGroup:
                    try writer.addGroup(
                        members: members.map { ($0.id, Int($0.location.rawLength)) }, payload: bytes,
                        encoding: encoding)
                case .zstd, .hexZstd:
                    try writer.add(
                        id: members[0].id, rawLength: Int(members[0].location.rawLength), encoding: encoding,
                        payload: bytes)
                case .raw:
                    var at = 0
                    for m in members {
                        let n = Int(m.location.rawLength)
                        try writer.add(
                            id: m.id, rawLength: n, encoding: .raw,
                            payload: UnsafeRawBufferPointer(rebasing: bytes[at..<(at + n)]))
                        at += n
                    }
                case .zstdDelta:
                    throw DedupError.compression("a regrouped group cannot be a delta")
                }
            }
        }
    }

    /// Commits the pack being written, indexes it, then forgets the packs it replaces.
    private func commitWriter() throws {
        guard let w = writing else { return }
        writing = nil
        report.packsWritten += 1
        let size = w.size + PackFormat.closingSize(entries: w.entries, deltas: w.deltas, encrypted: encrypted)
        report.bytesReclaimed -= size
        guard let pack = writer else { return }
        writer = nil
        let entries = try pack.finish()
        guard Int64(pack.size) == size else {
            throw DedupError.packCorrupt(
                pack: pack.id.hex, detail: "gc wrote \(pack.size) bytes where it planned \(size)")
        }
        FaultInjection.crashPoint("gc.after-repack-commit")
        try index.insert(pack: pack.id, size: size, entries: entries)
        mapped.tick(entries.count)
        for old in awaitingCommit { try forget(old) }
        awaitingCommit.removeAll()
    }

    /// A pack the sweep deletes (wholly dead) or replaced (rewritten), and what
    /// the report counted for it.
    struct Doomed {
        let pack: PackID
        /// Every chunk id of its trailer.
        let ids: [ChunkID]
        let size: Int64
        /// The chunks the report counted as removed with it.
        let removed: Int
        /// Why it was rewritten; nil: deleted with nothing live.
        var reason: PackRewrite.Reason? = nil
    }

    private func forget(_ d: Doomed) throws {
        doomed.append(d)
        doomedIDs += d.ids.count + 1  // and the pack's record
        if doomedIDs >= forgetBatch { try steps.run { try flushDoomed() } }
    }

    /// Takes back what the report counted for a pack kept after all.
    private func countKept(_ d: Doomed) {
        report.packsKeptForNewBackups += 1
        report.chunksRemoved -= d.removed
        report.bytesReclaimed -= d.size
        switch d.reason {
        case nil: report.packsDeleted -= 1
        case .deadChunks: report.packsRepacked -= 1
        case .small: report.packsMerged -= 1
        }
    }

    /// Index entries first, then the pack objects: a crash in between leaves
    /// packs the index does not know, which the next command reads back in. The
    /// entries go in transactions of about `removalsPerTransaction`, the pack
    /// objects all at once (one sync of each folder). A step of `steps`: packs
    /// that a backup committed meanwhile uses are kept.
    private func flushDoomed() throws {
        if !steps.kept.isEmpty {
            for d in doomed where steps.kept.contains(d.pack) { countKept(d) }
            doomed.removeAll { steps.kept.contains($0.pack) }
        }
        defer {
            doomed.removeAll()
            doomedIDs = 0
        }
        guard !doomed.isEmpty else { return }
        var start = 0
        while start < doomed.count {
            var end = start, entries = 0
            // At least one pack a transaction, however many chunks it has.
            while end < doomed.count, end == start || entries + doomed[end].ids.count < Self.removalsPerTransaction {
                entries += doomed[end].ids.count + 1
                end += 1
            }
            try index.remove(packs: doomed[start..<end].map { ($0.pack, $0.ids) })
            mapped.tick(entries)
            start = end
        }
        FaultInjection.crashPoint("gc.before-pack-delete")
        try backend.delete(keys: doomed.map(\.pack.key))
        for d in doomed { try repository.forgetDamaged(pack: d.pack) }
    }
}
