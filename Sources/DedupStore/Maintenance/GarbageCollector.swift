import Foundation

/// What gc did (or, with `dryRun`, would do: the same figures, to the byte).
public struct GCReport: Codable, Sendable {
    public var manifests = 0
    public var liveChunks = 0
    public var missingChunks = 0
    public var packsBefore = 0
    public var packsDeleted = 0
    public var packsRepacked = 0
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
    public var durationSeconds = 0.0
}

/// Mark and sweep over the whole repository, under the exclusive lock.
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
/// its bytes. New packs are committed and indexed before the old ones are
/// forgotten and deleted, and never outnumber the packs they replace, so gc never
/// grows the repository. A dry run computes the same plan and the sizes of the
/// packs the run would write, without writing them.
/// A crash at any point leaves every manifest restorable; the next gc finishes.
public final class GarbageCollector {
    private let repository: Repository
    public var repackThreshold = 0.5
    public var dryRun = false

    public init(repository: Repository) {
        self.repository = repository
    }

    public func run() throws -> GCReport {
        try repository.requireKey()
        let started = Date()
        var report = GCReport()
        report.dryRun = dryRun
        let index = try repository.listedIndex()

        let (marks, liveChunkLists) = try mark(&report)
        FaultInjection.crashPoint("gc.after-mark")

        let sweep = try Sweep(repository: repository, index: index, marks: marks, dryRun: dryRun,
                              threshold: repackThreshold, report: report)
        try sweep.run()
        report = sweep.report

        try removeOrphanChunkLists(keeping: liveChunkLists, &report)
        if !dryRun {
            // Leftovers of processes that died while writing (nothing else can be
            // writing: gc holds the exclusive lock).
            repository.backend.removeAbandonedWrites(all: true)
            // Change notes older than any catalog reads them (ChangeNote.retention).
            try repository.pruneChanges(before: Date().addingTimeInterval(-ChangeNote.retention))
            try repository.saveBloom(try repository.freshBloom(), fresh: true)
            _ = repository.measureDiskUsage()
        }
        report.durationSeconds = Date().timeIntervalSince(started)
        return report
    }

    /// Every chunk of every backup into an on-disk set; the chunk lists in use.
    private func mark(_ report: inout GCReport) throws -> (ChunkSet, Set<String>) {
        let marks = try ChunkSet(path: repository.cacheDirectory + "/gc-marks-\(getpid()).lmdb")
        let ids = try repository.manifestIDs()
        var liveChunkLists = Set<String>()
        let walker = ReferenceWalker(repository: repository)
        try walker.forEachBackup(ids) { id, loaded in
            do {
                let manifest = try loaded.get()
                try walker.forEachStream(of: manifest) { member, list in
                    liveChunkLists.insert(member.chunkList.key)
                    try list.forEach { chunk, _ in try marks.insert(chunk) }
                }
            } catch let e as DedupError {
                throw DedupError.invalidArgument(
                    "gc stopped before deleting anything: \(e.message); repair it, or remove that backup with `dbbackup dedup delete \(id)`, then run gc again"
                )
            }
        }
        try marks.flush()
        report.manifests = ids.count
        report.liveChunks = try marks.count()
        return (marks, liveChunkLists)
    }

    /// Chunk lists that no manifest names (a backup that died before committing).
    private func removeOrphanChunkLists(keeping live: Set<String>, _ report: inout GCReport) throws {
        for obj in try repository.backend.list("manifests/")
        where obj.key.hasSuffix(".chunks") && !live.contains(obj.key) {
            report.orphanChunkListsRemoved += 1
            if !dryRun { try repository.backend.delete(obj.key) }
        }
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
}

/// The sweep of one gc run: plans each pack, then deletes or rewrites it.
private final class Sweep {
    let repository: Repository
    let index: ChunkIndex
    let marks: ChunkSet
    let dryRun: Bool
    let threshold: Double
    var report: GCReport
    let backend: Backend
    let encrypted: Bool
    let packSize: Int64
    let chunkReader: ChunkReader
    let compressor: ZstdCompressor
    let damaged: DamagedChunks
    /// Packs present, with their sizes.
    var packs: [PackID: Int64] = [:]
    var unreadable = Set<PackID>()
    var foundLive = 0

    /// The pack being written (nil in a dry run), and its size so far (also in a
    /// dry run, where it is computed with the sizes PackWriter writes).
    var writer: PackWriter?
    var writing: (size: Int64, entries: Int)?
    /// Rewritten packs whose live chunks all sit in the pack being written: they
    /// go once it is committed.
    var awaitingCommit: [(PackID, [ChunkID], Int64)] = []
    /// Packs to forget, batched: one durable index transaction for several packs
    /// instead of one each. LMDB keeps every page a transaction changes in memory,
    /// at most one page per removed entry, so the batch is capped at 4 Ki entries
    /// (at most 16 MiB): about 32 packs of the default 256 KiB chunks, one pack of
    /// 4 KiB chunks (measured: a cap of 16 Ki entries cut gc's writes by a quarter
    /// at 1 M chunks but doubled its heap).
    var doomed: [(pack: PackID, ids: [ChunkID], size: Int64)] = []
    var doomedIDs = 0
    /// Bytes of regrouped payloads kept from planning to writing (beyond it they
    /// are compressed again: zstd gives the same bytes).
    static let keptPayloadLimit = 64 << 20

    init(
        repository: Repository, index: ChunkIndex, marks: ChunkSet, dryRun: Bool, threshold: Double, report: GCReport
    ) throws {
        self.repository = repository
        self.index = index
        self.marks = marks
        self.dryRun = dryRun
        self.threshold = threshold
        self.report = report
        backend = repository.backend
        encrypted = repository.cipher != nil
        packSize = Int64(repository.config.packSize)
        chunkReader = try ChunkReader(repository: repository)
        compressor = try ZstdCompressor(level: repository.config.compression.level)
        damaged = try repository.damagedChunks()
    }

    func run() throws {
        packs = try repository.listPacks()
        report.packsBefore = packs.count
        report.bytesBefore = packs.values.reduce(0, +)
        // Packs whose trailer cannot be read are never deleted, and a copy of a
        // chunk there does not count: another, readable copy is kept instead.
        // Opening the index read every readable trailer into it, so the packs it
        // does not know are exactly the unreadable ones.
        let indexed = try index.indexedPacks()
        unreadable = Set(packs.keys.filter { indexed[$0] == nil })
        for pack in unreadable.sorted(by: { $0.hex < $1.hex }) {
            report.packsUnreadable.append("\(pack.hex): its trailer cannot be read (see `dbbackup dedup verify`)")
        }
        for (pack, size) in packs.sorted(by: { $0.key.hex < $1.key.hex }) where !unreadable.contains(pack) {
            try sweep(pack, size: size)
        }
        try commitWriter()
        if !dryRun { try flushDoomed() }
        report.missingChunks = max(0, report.liveChunks - foundLive)
    }

    /// One pack: its live entries, then delete, keep or rewrite.
    private func sweep(_ pack: PackID, size: Int64) throws {
        let entries: [PackEntry]
        do {
            entries = try PackReader(backend: backend, id: pack, cipher: repository.cipher).entries()
        } catch let e as DedupError {
            // Damaged since it was indexed, with its size unchanged.
            unreadable.insert(pack)
            report.packsUnreadable.append("\(pack.hex): \(e.message)")
            return
        }
        let (live, holdsDamagedCopy) = try liveEntries(of: pack, entries)
        foundLive += live.count
        let allIDs = entries.map(\.id)
        if holdsDamagedCopy {
            // The only copy of a chunk a backup needs, damaged: kept, so that verify
            // and restore keep naming it until a backup of the data heals it.
            report.damagedPacksKept += 1
            return
        }
        if live.isEmpty {
            report.packsDeleted += 1
            report.chunksRemoved += entries.count
            report.bytesReclaimed += size
            if !dryRun { try forget(pack, allIDs, size) }
            return
        }
        guard live.count < entries.count else { return }
        // Measured against the chunks' bytes, not the file: header, trailer and
        // footer would make a small, wholly live pack look mostly dead.
        var frames = Set<UInt64>()
        let chunkBytes = entries.reduce(Int64(0)) { sum, e in
            guard !e.location.isGroupMember || frames.insert(e.location.offset).inserted else { return sum }
            return sum + Self.copiedSize(e)
        }
        guard let plan = try plan(pack, entries: entries, live: live, chunkBytes: chunkBytes) else { return }
        report.packsRepacked += 1
        report.chunksRemoved += entries.count - plan.entries
        report.bytesReclaimed += size
        guard try write(plan) else {
            // A chunk went bad between planning and writing: the pack is kept
            // (what was copied of it already is a harmless second copy).
            report.packsRepacked -= 1
            report.chunksRemoved -= entries.count - plan.entries
            report.bytesReclaimed -= size
            return
        }
        // This pack goes once every live chunk of it is in a committed pack: at
        // the next commit.
        if !dryRun { awaitingCommit.append((pack, allIDs, size)) }
    }

    /// The entries of `pack` that backups need from it, in pack order, and
    /// whether it holds the only, damaged, copy of a chunk that one needs.
    private func liveEntries(of pack: PackID, _ entries: [PackEntry]) throws -> ([PackEntry], Bool) {
        var live = [PackEntry]()
        var repointed = [PackEntry]()
        var holdsDamagedCopy = false
        for e in entries where try marks.contains(e.id) {
            let loc = try index.lookup(e.id)
            let indexCopyUsable = loc.map { packs[$0.pack] != nil && !unreadable.contains($0.pack) } ?? false
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

    /// The rewrite of a pack with dead entries, or nil when it would keep at
    /// least the threshold's share of the chunks' bytes (or any damaged chunk
    /// stands in the way: the pack is kept for verify to name).
    private func plan(_ pack: PackID, entries: [PackEntry], live: [PackEntry], chunkBytes: Int64) throws -> RepackPlan?
    {
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
        // The least the rewrite can keep (a regrouped run at no bytes at all): a
        // pack that keeps too much even so is not read.
        let floor = runs.reduce(Int64(0)) { sum, run in
            guard let e = run.first else { return sum }
            let partial = e.location.isGroupMember && run.count < groupMembers[e.location.offset, default: 0]
            return sum + (partial ? 0 : Self.copiedSize(e))
        }
        guard Double(floor) < threshold * Double(chunkBytes) else { return nil }

        var plan = RepackPlan()
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
        guard plan.keptBytes < chunkBytes, Double(plan.keptBytes) < threshold * Double(chunkBytes) else { return nil }
        return plan
    }

    /// The live members of a partly dead group compressed together (one zstd
    /// chunk for one member; raw members when compression does not help), and
    /// the bytes they take in a data area; nil when a member is damaged.
    private func regroup(
        _ run: ArraySlice<PackEntry>
    ) throws -> (encoding: ChunkEncoding, payload: [UInt8], size: Int64)? {
        var plain = [UInt8]()
        for m in run {
            guard let bytes = readBack(m) else { return nil }
            plain.append(contentsOf: bytes)
        }
        var out = [UInt8](repeating: 0, count: ZstdCompressor.bound(plain.count))
        let n = try plain.withUnsafeBytes { p in try out.withUnsafeMutableBytes { try compressor.compress(p, into: $0) }
        }
        if n < plain.count {
            out.removeSubrange(n...)
            return (run.count == 1 ? .zstd : .zstdGroup, out, PackFormat.entrySize(payload: n, encrypted: encrypted))
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
    /// would make more new packs than the packs rewritten so far: gc's packs
    /// never outnumber the ones they replace, so the repository never grows.
    /// Returns false when a chunk read back damaged (it is reported).
    private func write(_ plan: RepackPlan) throws -> Bool {
        for piece in plan.pieces {
            if let w = writing, w.size >= packSize, report.packsWritten + 1 < report.packsRepacked {
                try commitWriter()
            }
            if writing == nil {
                writing = (Int64(PackFormat.headerSize), 0)
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
                encoding: ChunkEncoding(rawValue: e.location.encoding) ?? .raw, payload: chunkReader.storedPayload)
        case .frame(let members):
            for m in members { _ = try fetch(m) }
            let frame = chunkReader.storedPayload
            guard let total = ZstdDecompressor.contentSize(frame), let first = members.first else {
                throw DedupError.packCorrupt(
                    pack: members.first?.location.pack.hex ?? "?", detail: "a group frame without its size")
            }
            let head = members.first { $0.location.groupOffset == 0 } ?? first
            try writer.addFrame(
                headerID: head.id, totalLength: total,
                members: members.map { ($0.id, Int($0.location.rawLength), Int($0.location.groupOffset)) },
                payload: frame)
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
                case .zstdGroup:
                    try writer.addGroup(members: members.map { ($0.id, Int($0.location.rawLength)) }, payload: bytes)
                case .zstd:
                    try writer.add(
                        id: members[0].id, rawLength: Int(members[0].location.rawLength), encoding: .zstd,
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
                }
            }
        }
    }

    /// Commits the pack being written, indexes it, then forgets the packs it replaces.
    private func commitWriter() throws {
        guard let w = writing else { return }
        writing = nil
        report.packsWritten += 1
        let size = w.size + PackFormat.closingSize(entries: w.entries, encrypted: encrypted)
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
        for (old, oldIDs, oldSize) in awaitingCommit { try forget(old, oldIDs, oldSize) }
        awaitingCommit.removeAll()
    }

    private func forget(_ pack: PackID, _ chunkIDs: [ChunkID], _ size: Int64) throws {
        doomed.append((pack, chunkIDs, size))
        doomedIDs += chunkIDs.count
        if doomedIDs >= 4096 { try flushDoomed() }
    }

    /// Index entries first, then the pack objects: a crash in between leaves
    /// packs the index does not know, which the next command reads back in.
    private func flushDoomed() throws {
        guard !doomed.isEmpty else { return }
        try index.remove(packs: doomed.map { ($0.pack, $0.ids) })
        FaultInjection.crashPoint("gc.before-pack-delete")
        for d in doomed {
            try backend.delete(d.pack.key)
            try repository.forgetDamaged(pack: d.pack)
        }
        doomed.removeAll()
        doomedIDs = 0
    }
}
