import Foundation

/// What a backup records about itself besides its data.
public struct BackupOptions: Sendable {
    public var name: String
    public var kind: String = "file"
    public var database: String?
    public var dbType: String?
    public var dbHost: String?
    public var tags: [String: String] = [:]
    /// The backup time; ids and retention use it. Now, unless importing old dumps.
    public var time: Date = Date()
    /// "stdin", the input path, or the input command.
    public var source: String
    /// Refuse plain SQL dumps that lack their completion line.
    public var checkDumpComplete = true
    /// How long to wait for an exclusive lock (gc, prune) to go away.
    public var lockWait: TimeInterval = 600
    /// Also take the SHA-256 of the whole input (one more hashing pass) and record
    /// it in the manifest; restore then checks it too.
    public var streamSHA256 = false
    /// How the dump was made, for `dedup backup-db`.
    public var dump: Manifest.DumpInfo?
    /// The archived file (WAL segment, binlog) this backup is.
    public var archive: Manifest.ArchiveInfo?
    /// Commit under exactly this id, or fail with `DedupError.backupExists` if a
    /// backup holds it already (archives: one manifest per file name). Nil: the
    /// id is `<time>_<name>`, with a suffix when taken.
    public var fixedID: String?

    public init(name: String, source: String) {
        self.name = name
        self.source = source
    }
}

/// Progress of a running backup, for the CLI's progress line.
public struct BackupProgress: Sendable {
    public var bytesRead: UInt64
    public var chunks: Int
    public var newChunks: Int
    public var storedBytes: Int64
}

/// Streams one input into the repository and commits its manifest.
///
/// Order of durability: packs (fsynced, renamed) -> index -> chunk list -> manifest.
/// A crash or an error at any point before the manifest leaves no visible backup,
/// only unreferenced packs that the next backup reuses or gc reclaims.
public final class BackupSession {
    private let repository: Repository
    private let chunker: ContentDefinedChunker
    public var progress: ((BackupProgress) -> Void)?
    /// How often `progress` is called, in input bytes.
    public var progressInterval: UInt64 = 32 << 20
    /// Worker threads for hashing and compression (default: every core).
    public var jobs = ProcessInfo.processInfo.activeProcessorCount
    /// The plain SHA-256 of the last committed input, with `streamSHA256` (what
    /// sha256sum prints). An encrypted repository records only a keyed form of it
    /// (`Manifest.sha256`), so this value never goes into the repository.
    public private(set) var streamDigest: ChunkID?

    public init(repository: Repository) throws {
        try repository.requireKey()
        self.repository = repository
        _ = try ZstdCompressor(level: repository.config.compression.level)
        chunker = ContentDefinedChunker(repository.config.chunker.parameters)
    }

    /// One chunk of a batch as it goes through the pipeline.
    struct Slot {
        var range: Range<Int> = 0..<0
        var id = ChunkID(w0: 0, w1: 0, w2: 0, w3: 0)
    }

    /// New chunks compressed together: `count` of them from `first` in the
    /// batch's list of new chunks. One chunk is stored zstd or raw; several
    /// become a group (one frame), or raw chunks when zstd does not shrink them.
    struct CompressionUnit {
        var first: Int
        var count = 0
        var rawLength = 0
        /// Where its compressed form goes in the arena.
        var arenaOffset = 0
        var storedLength = 0
        var encoding = ChunkEncoding.raw
        var failure: DedupError?

        init(first: Int) { self.first = first }
    }

    /// A reader thread reads the input, cuts it into batches of chunks in place
    /// and takes the whole-stream SHA-256, a few batches ahead. Per batch: all
    /// cores hash the chunks; this thread looks each id up (pending pack, Bloom
    /// filter, index); all cores compress the new chunks into an arena; this
    /// thread appends them to the pack in input order. Memory: the reader's
    /// buffers, the arena (about one batch) and a context per worker.
    public func run<S: ByteSource>(source: S, options: BackupOptions) throws -> Manifest {
        let started = Date()
        let lock = try repository.lock(.shared, command: "backup \(options.name)", wait: options.lockWait)
        defer { lock.release() }
        let leftovers = repository.backend.removeAbandonedWrites(all: false)
        if leftovers > 0 { repository.notice("removed \(leftovers) temporary file(s) left by interrupted runs") }
        let index = try repository.index()
        var bloom = try repository.bloom()
        let backend = repository.backend
        let maxChunk = repository.config.chunker.maxSize

        let workers = max(1, min(jobs, 16))
        let batchBytes = 4 << 20
        let reader = ChunkBatchProducer(source: source, chunker: chunker, batchBytes: batchBytes,
                                        streamDigest: options.streamSHA256)
        reader.start()
        defer { reader.stop() }
        let hashers = try (0..<workers).map { _ in try repository.makeChunkHasher() }
        let compressors = try (0..<workers).map { _ in try ZstdCompressor(level: repository.config.compression.level) }
        var arena = UnsafeMutableRawBufferPointer.allocate(byteCount: ZstdCompressor.bound(batchBytes + maxChunk), alignment: 16)
        defer { arena.deallocate() }
        var slotCapacity = 1024
        var slotStorage = UnsafeMutablePointer<Slot>.allocate(capacity: slotCapacity)
        slotStorage.initialize(repeating: Slot(), count: slotCapacity)
        defer { slotStorage.deinitialize(count: slotCapacity); slotStorage.deallocate() }

        // The list's key is the first free one, found when it is committed: the
        // id's own, or with a random part for a fixed id (two runs racing for a
        // fixed id never share a list; the manifest decides).
        let baseID = options.fixedID ?? (Timestamps.idStamp(options.time) + "_" + Self.sanitize(options.name))
        let chunkList = try ChunkListWriter(backend: backend, key: options.fixedID.map { Self.fixedChunkListKey($0) }
                                            ?? Manifest.chunkListKey(for: baseID), cipher: repository.cipher)
        var pack: PackWriter?
        var pending = Set<ChunkID>()
        var completeness = DumpCompleteness()
        var stats = Manifest.Stats(chunks: 0, newChunks: 0, newBytes: 0, storedBytes: 0, durationSeconds: 0)
        var nextProgress = progressInterval
        var bytesRead: UInt64 = 0
        var streamDigest: ChunkID?
        var newSlots = [Int]()
        var units = [CompressionUnit]()

        func commitPack() throws {
            guard let p = pack else { return }
            pack = nil
            let entries = try p.finish()
            let size = Int64(p.size)  // after finish: trailer and footer included
            FaultInjection.crashPoint("backup.after-pack-commit")
            try index.insert(pack: p.id, size: size, entries: entries)
            // The filter now holds these index entries too.
            bloom.count += entries.count
            pending.removeAll(keepingCapacity: true)
        }

        do {
            while let batch = try reader.next() {
                defer { reader.release(batch) }
                let ranges = batch.ranges
                let n = ranges.count
                if n > slotCapacity {
                    slotStorage.deinitialize(count: slotCapacity)
                    slotStorage.deallocate()
                    slotCapacity = n * 2
                    slotStorage = .allocate(capacity: slotCapacity)
                    slotStorage.initialize(repeating: Slot(), count: slotCapacity)
                }
                let slots = SharedPointer(base: slotStorage)
                for i in 0..<n { slots[i] = Slot(range: ranges[i]) }
                let input = UnsafeRawBufferPointer(start: batch.base, count: batch.length)

                // 1. Hash the chunks on all cores.
                forEachInParallel(n, workers: workers) { worker, i in
                    slots[i].id = hashers[worker].digest(UnsafeRawBufferPointer(rebasing: input[slots[i].range]))
                }
                bytesRead += UInt64(batch.length)
                completeness.observe(input)

                // 2. Dedup, in input order (the pending set and the filter are this
                //    thread's); the new chunks form compression units: runs of
                //    consecutive new chunks up to PackFormat.groupTarget bytes.
                newSlots.removeAll(keepingCapacity: true)
                units.removeAll(keepingCapacity: true)
                var arenaUsed = 0
                var open: CompressionUnit?
                func closeUnit() {
                    guard var u = open else { return }
                    u.arenaOffset = arenaUsed
                    arenaUsed += ZstdCompressor.bound(u.rawLength)
                    units.append(u)
                    open = nil
                }
                for i in 0..<n {
                    let id = slots[i].id
                    try chunkList.append(id, length: slots[i].range.count)
                    var known = pending.contains(id)
                    if !known && bloom.mightContain(id) { known = try index.lookup(id) != nil }
                    if !known {
                        pending.insert(id)
                        bloom.insert(id)
                        // A unit never grows past what readers accept for a group.
                        if let u = open, u.rawLength + slots[i].range.count > PackFormat.maxGroupLength { closeUnit() }
                        var u = open ?? CompressionUnit(first: newSlots.count)
                        newSlots.append(i)
                        u.count += 1
                        u.rawLength += slots[i].range.count
                        open = u
                        if u.rawLength >= PackFormat.groupTarget { closeUnit() }
                    }
                }
                closeUnit()
                stats.chunks += n
                if arenaUsed > arena.count {
                    arena.deallocate()
                    arena = .allocate(byteCount: arenaUsed, alignment: 16)
                }

                // 3. Compress the units on all cores, each into its arena place.
                let arena = arena
                newSlots.withUnsafeBufferPointer { order in
                    units.withUnsafeMutableBufferPointer { unitBuffer in
                        nonisolated(unsafe) let order = order
                        guard let unitBase = unitBuffer.baseAddress else { return }
                        let shared = SharedPointer(base: unitBase)
                        forEachInParallel(unitBuffer.count, workers: workers) { worker, k in
                            var u = shared[k]
                            let out = UnsafeMutableRawBufferPointer(rebasing: arena[u.arenaOffset..<(u.arenaOffset + ZstdCompressor.bound(u.rawLength))])
                            let members = order[u.first..<(u.first + u.count)]
                            // Consecutive chunks of the input (the usual case) are one
                            // buffer: one-shot compression, without zstd's stream copy.
                            let contiguous = zip(members, members.dropFirst()).allSatisfy { slots[$0].range.upperBound == slots[$1].range.lowerBound }
                            do {
                                let c: Int
                                if contiguous, let a = members.first, let b = members.last {
                                    let whole = UnsafeRawBufferPointer(rebasing: input[slots[a].range.lowerBound..<slots[b].range.upperBound])
                                    c = try compressors[worker].compress(whole, into: out)
                                } else {
                                    c = try compressors[worker].compress(pieces: members.map { UnsafeRawBufferPointer(rebasing: input[slots[$0].range]) }, into: out)
                                }
                                // Not smaller: every chunk of the unit is stored raw.
                                u.storedLength = c < u.rawLength ? c : u.rawLength
                                u.encoding = c >= u.rawLength ? .raw : (u.count == 1 ? .zstd : .zstdGroup)
                            } catch {
                                u.failure = .wrapping(error)
                            }
                            shared[k] = u
                        }
                    }
                }

                // 4. Append to the pack in input order.
                for u in units {
                    if let failure = u.failure { throw failure }
                    let members = newSlots[u.first..<(u.first + u.count)]
                    let payload = UnsafeRawBufferPointer(rebasing: arena[u.arenaOffset..<(u.arenaOffset + u.storedLength)])
                    if pack == nil { pack = try PackWriter(backend: backend, cipher: repository.cipher) }
                    switch u.encoding {
                    case .zstdGroup:
                        try pack?.addGroup(members: members.map { (slots[$0].id, slots[$0].range.count) }, payload: payload)
                        stats.storedBytes += Int64(payload.count + PackFormat.entryHeaderSize)
                    case .zstd:
                        try pack?.add(id: slots[newSlots[u.first]].id, rawLength: u.rawLength, encoding: .zstd, payload: payload)
                        stats.storedBytes += Int64(payload.count + PackFormat.entryHeaderSize)
                    case .raw:
                        for i in members {
                            let chunk = UnsafeRawBufferPointer(rebasing: input[slots[i].range])
                            try pack?.add(id: slots[i].id, rawLength: chunk.count, encoding: .raw, payload: chunk)
                            stats.storedBytes += Int64(chunk.count + PackFormat.entryHeaderSize)
                        }
                    }
                    stats.newChunks += u.count
                    stats.newBytes += Int64(u.rawLength)
                    if let p = pack, p.size >= UInt64(repository.config.packSize) { try commitPack() }
                }

                if bytesRead >= nextProgress, let progress {
                    nextProgress = bytesRead + progressInterval
                    progress(BackupProgress(bytesRead: bytesRead, chunks: stats.chunks,
                                            newChunks: stats.newChunks, storedBytes: stats.storedBytes))
                }
            }
            try commitPack()
            streamDigest = reader.finish()
            if options.checkDumpComplete, let problem = completeness.problem() {
                throw DedupError.incompleteInput(problem)
            }
        } catch {
            pack?.abort()
            chunkList.abort()
            // Keep the filter in step with what was committed, best effort.
            try? repository.saveBloom(bloom)
            throw error
        }

        FaultInjection.crashPoint("backup.before-chunklist")
        let id: String
        let list: (key: String, sha256: String, size: Int64)
        do {
            if let fixed = options.fixedID {
                if try repository.hasManifest(fixed) { throw DedupError.backupExists(id: fixed) }
                id = fixed
                let first = chunkList.key
                list = try chunkList.finish { attempt in attempt == 0 ? first : Self.fixedChunkListKey(fixed) }
            } else {
                func candidate(_ n: Int) -> String { n == 0 ? baseID : "\(baseID)_\(n + 1)" }
                var n = 0
                // Skip ids whose manifest exists even if its chunk list was lost:
                // one lookup per id tried, however many backups the repository has.
                list = try chunkList.finish { _ in
                    while try repository.hasManifest(candidate(n)) { n += 1 }
                    defer { n += 1 }
                    return Manifest.chunkListKey(for: candidate(n))
                }
                id = String(FileIO.lastComponent(list.key).dropLast(".chunks".count))
            }
        } catch {
            chunkList.abort()
            throw error
        }
        stats.durationSeconds = Date().timeIntervalSince(started)
        var manifest = Manifest(
            formatVersion: Manifest.currentVersion, id: id, name: options.name, kind: options.kind,
            database: options.database, dbType: options.dbType, dbHost: options.dbHost, tags: options.tags,
            createdAt: Timestamps.iso8601(options.time), committedAt: Timestamps.iso8601(Date()),
            source: options.source, hostname: LockInfo.currentHost, dbbackupVersion: DedupStoreVersion.string,
            size: Int64(bytesRead), sha256: streamDigest.map { repository.recordedStreamDigest($0) },
            chunkList: .init(key: list.key, size: list.size, sha256: list.sha256, count: chunkList.count),
            stats: stats, dump: options.dump, archive: options.archive)
        manifest.auth = repository.manifestTag(manifest)
        FaultInjection.crashPoint("backup.before-manifest")
        do {
            try backend.put(Manifest.key(for: id), try manifest.encoded(), ifAbsent: true)
        } catch let e as DedupError where e.storageFailure == .alreadyExists && options.fixedID != nil {
            // Another run committed this id first; our chunk list is nobody's.
            try? backend.delete(list.key)
            throw DedupError.backupExists(id: id)
        }
        FaultInjection.crashPoint("backup.after-manifest")
        self.streamDigest = streamDigest
        // The backup is committed; a filter that cannot be saved is only a cache.
        do {
            try repository.saveBloom(bloom)
        } catch {
            repository.notice("could not save the Bloom filter (\(error)); the next run rebuilds it")
        }
        return manifest
    }

    /// A fixed id's chunk list: a name of its own for each run.
    static func fixedChunkListKey(_ id: String) -> String { "manifests/\(id).\(Hex.encode(SecureRandom.bytes(4))).chunks" }

    /// Manifest ids keep letters, digits, '.', '-' and '_'; anything else becomes '-'.
    public static func sanitize(_ name: String) -> String {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        let s = String(name.map { allowed.contains($0) ? $0 : "-" })
        let trimmed = s.trimmingCharacters(in: CharacterSet(charactersIn: ".-"))
        return trimmed.isEmpty ? "backup" : String(trimmed.prefix(80))
    }
}

public enum DedupStoreVersion {
    public static let string = "0.1.0"
}
