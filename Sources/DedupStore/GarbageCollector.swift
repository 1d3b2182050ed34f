import Foundation

/// What gc did (or, with `dryRun`, would do).
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
/// Sweep, pack by pack: a chunk is live in a pack when it is marked and the index
/// places it in that pack (a duplicate elsewhere is dead). Packs with nothing live
/// are deleted; packs whose live bytes fall below the threshold are repacked: their
/// live chunks, checked against their ids, are copied as stored into new packs,
/// which are committed and indexed before the old pack is forgotten and deleted.
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
        let backend = repository.backend
        let index = try repository.index()

        // Mark.
        let marks = try ChunkSet(path: repository.cacheDirectory + "/gc-marks-\(getpid()).lmdb")
        let ids = try repository.manifestIDs()
        var liveChunkLists = Set<String>()
        for id in ids {
            do {
                let m = try repository.loadManifest(id)
                let list = try ChunkListReader(repository: repository, manifest: m)
                liveChunkLists.insert(m.chunkList.key)
                try list.forEach { chunk, _ in try marks.insert(chunk) }
            } catch let e as DedupError {
                throw DedupError.invalidArgument("gc stopped before deleting anything: \(e.message); repair it, or remove that backup with `dbbackup dedup delete \(id)`, then run gc again")
            }
        }
        try marks.flush()
        report.manifests = ids.count
        report.liveChunks = try marks.count()
        FaultInjection.crashPoint("gc.after-mark")

        // Sweep.
        let packs = try repository.listPacks()
        report.packsBefore = packs.count
        report.bytesBefore = packs.values.reduce(0, +)
        var writer: PackWriter?
        var awaitingCommit: [(PackID, [ChunkID], Int64)] = []
        var foundLive = 0

        func commitWriter() throws {
            guard let w = writer else { return }
            writer = nil
            let entries = try w.finish()
            let size = Int64(w.size)
            report.packsWritten += 1
            report.bytesReclaimed -= size
            FaultInjection.crashPoint("gc.after-repack-commit")
            try index.insert(pack: w.id, size: size, entries: entries)
            for (old, oldIDs, oldSize) in awaitingCommit {
                try forget(old, oldIDs, oldSize)
            }
            awaitingCommit.removeAll()
        }

        // Packs to forget, batched: one durable index transaction for several packs
        // instead of one each. LMDB keeps every page a transaction changes in
        // memory, at most one page per removed entry, so the batch is capped at 4 Ki
        // entries (at most 16 MiB): about 32 packs of the default 256 KiB chunks,
        // one pack of 4 KiB chunks (measured: a cap of 16 Ki entries cut gc's
        // writes by a quarter at 1 M chunks but doubled its heap).
        var doomed: [(pack: PackID, ids: [ChunkID], size: Int64)] = []
        var doomedIDs = 0

        func forget(_ pack: PackID, _ chunkIDs: [ChunkID], _ size: Int64) throws {
            doomed.append((pack, chunkIDs, size))
            doomedIDs += chunkIDs.count
            if doomedIDs >= 4096 { try flushDoomed() }
        }

        /// Index entries first, then the pack objects: a crash in between leaves
        /// packs the index does not know, which the next command reads back in.
        func flushDoomed() throws {
            guard !doomed.isEmpty else { return }
            try index.remove(packs: doomed.map { ($0.pack, $0.ids) })
            FaultInjection.crashPoint("gc.before-pack-delete")
            for d in doomed {
                try backend.delete(d.pack.key)
                try repository.forgetDamaged(pack: d.pack)
                report.bytesReclaimed += d.size
            }
            doomed.removeAll()
            doomedIDs = 0
        }

        let fetcher = try ChunkFetcher(repository: repository)
        let recompressor = try ZstdCompressor(level: repository.config.compression.level)
        let recompressed = UnsafeMutableRawBufferPointer.allocate(
            byteCount: ZstdCompressor.bound(repository.config.chunker.maxSize), alignment: 16)
        defer { recompressed.deallocate() }
        // Packs whose trailer cannot be read are never deleted, and a copy of a
        // chunk there does not count: another, readable copy is kept instead.
        // Opening the index read every readable trailer into it, so the packs it
        // does not know are exactly the unreadable ones.
        let indexed = try index.indexedPacks()
        var unreadable = Set(packs.keys.filter { indexed[$0] == nil })
        for pack in unreadable.sorted(by: { $0.hex < $1.hex }) {
            report.packsUnreadable.append("\(pack.hex): its trailer cannot be read (see `dbbackup dedup verify`)")
        }

        for (pack, size) in packs.sorted(by: { $0.key.hex < $1.key.hex }) where !unreadable.contains(pack) {
            let entries: [PackEntry]
            do {
                entries = try PackReader(backend: backend, id: pack, cipher: repository.cipher).entries()
            } catch let e as DedupError {
                // Damaged since it was indexed, with its size unchanged.
                unreadable.insert(pack)
                report.packsUnreadable.append("\(pack.hex): \(e.message)")
                continue
            }
            var live = [PackEntry]()
            var liveBytes: Int64 = 0
            var repointed = [PackEntry]()
            // Measured against the chunks' bytes, not the file: header, trailer and
            // footer would make a small, wholly live pack look mostly dead. A group
            // member counts for its share of the group's frame.
            // Each group's member count and plaintext length, by entry offset.
            var groups = [UInt64: (members: Int, rawLength: Int64)]()
            for e in entries where e.location.isGroupMember {
                groups[e.location.offset, default: (0, 0)].members += 1
                groups[e.location.offset, default: (0, 0)].rawLength += Int64(e.location.rawLength)
            }
            func storedShare(_ e: PackEntry) -> Int64 {
                let whole = Int64(e.location.storedLength) + Int64(PackFormat.entryHeaderSize)
                guard e.location.isGroupMember, let total = groups[e.location.offset]?.rawLength, total > 0 else { return whole }
                return whole * Int64(e.location.rawLength) / total
            }
            let chunkBytes = entries.reduce(Int64(0)) { $0 + storedShare($1) }
            for e in entries where try marks.contains(e.id) {
                let loc = try index.lookup(e.id)
                let indexCopyUsable = loc.map { packs[$0.pack] != nil && !unreadable.contains($0.pack) } ?? false
                if let loc, loc.pack == pack, loc.offset == e.location.offset {
                    live.append(e)
                } else if !indexCopyUsable {
                    // The index has no usable copy (dropped as corrupt, or in a pack
                    // that is gone or unreadable): this one becomes the copy, if it
                    // is itself intact.
                    guard (try? fetcher.fetch(e.id, at: e.location, expectedLength: Int(e.location.rawLength), manifest: "(gc)")) != nil else { continue }
                    live.append(e)
                    repointed.append(e)
                } else {
                    continue
                }
                liveBytes += storedShare(e)
            }
            if !repointed.isEmpty && !dryRun { try index.point(repointed) }
            foundLive += live.count
            let allIDs = entries.map(\.id)
            if live.isEmpty {
                report.packsDeleted += 1
                report.chunksRemoved += entries.count
                if dryRun { report.bytesReclaimed += size } else { try forget(pack, allIDs, size) }
                continue
            }
            guard live.count < entries.count, Double(liveBytes) < repackThreshold * Double(chunkBytes) else { continue }
            report.packsRepacked += 1
            report.chunksRemoved += entries.count - live.count
            if dryRun {
                report.bytesReclaimed += size - liveBytes
                continue
            }
            var intact = true
            /// Reads a live chunk back (verified); a damaged one is reported, and
            /// its pack kept for verify to name.
            func readBack(_ e: PackEntry) -> UnsafeRawBufferPointer? {
                do {
                    return try fetcher.fetch(e.id, at: e.location, expectedLength: Int(e.location.rawLength), manifest: "(gc repack)")
                } catch let err as DedupError {
                    report.corruptChunks.append(err.message)
                    intact = false
                    return nil
                } catch {
                    intact = false
                    return nil
                }
            }
            /// True when the members' group offsets are their running sum from 0: the
            /// frame then holds exactly them, in this order, and can be copied as is.
            func membersInOrder(_ group: ArraySlice<PackEntry>) -> Bool {
                var next: UInt64 = 0
                for m in group {
                    guard UInt64(m.location.groupOffset) == next else { return false }
                    next += UInt64(m.location.rawLength)
                }
                return true
            }
            var k = 0
            while k < live.count {
                let e = live[k]
                var run = k + 1
                while run < live.count && e.location.isGroupMember && live[run].location.isGroupMember
                    && live[run].location.frame == e.location.frame { run += 1 }
                let batch = live[k..<run]
                k = run
                if writer == nil { writer = try PackWriter(backend: backend, cipher: repository.cipher) }
                if !e.location.isGroupMember {
                    // Copied as stored: no decompression, no recompression.
                    guard readBack(e) != nil else { continue }
                    let stored = fetcher.storedPayload
                    try writer?.add(id: e.id, rawLength: Int(e.location.rawLength),
                                    encoding: ChunkEncoding(rawValue: e.location.encoding) ?? .raw, payload: stored)
                } else if batch.count == groups[e.location.offset]?.members, membersInOrder(batch) {
                    // A wholly live group is copied as stored too, once every member checks out.
                    guard batch.allSatisfy({ readBack($0) != nil }) else { continue }
                    let frame = fetcher.storedPayload
                    try writer?.addGroup(members: batch.map { ($0.id, Int($0.location.rawLength)) }, payload: frame)
                } else {
                    // A group that also holds dead chunks: each live member is stored
                    // on its own, compressed again.
                    for m in batch {
                        guard let plain = readBack(m) else { continue }
                        let n = try recompressor.compress(plain, into: recompressed)
                        let smaller = n < plain.count
                        try writer?.add(id: m.id, rawLength: plain.count, encoding: smaller ? .zstd : .raw,
                                        payload: smaller ? UnsafeRawBufferPointer(rebasing: recompressed[0..<n]) : plain)
                    }
                }
                if let w = writer, w.size >= UInt64(repository.config.packSize) {
                    // Forgets only packs copied in full before this one.
                    try commitWriter()
                }
            }
            // This pack goes once every live chunk of it is in a committed pack:
            // at the next commit.
            if intact { awaitingCommit.append((pack, allIDs, size)) }
        }
        if !dryRun {
            try commitWriter()
            try flushDoomed()
        }
        report.missingChunks = max(0, report.liveChunks - foundLive)

        // Chunk lists that no manifest names (a backup that died before committing).
        for obj in try backend.list("manifests/") where obj.key.hasSuffix(".chunks") && !liveChunkLists.contains(obj.key) {
            report.orphanChunkListsRemoved += 1
            if !dryRun { try backend.delete(obj.key) }
        }
        if !dryRun {
            // Leftovers of processes that died while writing (nothing else can be
            // writing: gc holds the exclusive lock).
            for obj in try backend.list("tmp/") { try backend.delete(obj.key) }
            try repository.saveBloom(try repository.freshBloom())
        }
        report.durationSeconds = Date().timeIntervalSince(started)
        return report
    }
}
