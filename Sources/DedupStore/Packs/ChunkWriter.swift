import Foundation

/// One chunk of a batch as it goes through a backup: where it is in the batch's
/// input, and its id once hashed.
struct ChunkSlot {
    var range: Range<Int> = 0..<0
    var id = ChunkID(w0: 0, w1: 0, w2: 0, w3: 0)
}

/// Stores the new chunks of a stream, batch by batch: the one way chunks get into
/// a repository's packs during a backup.
///
/// Per batch, on the caller's thread and in input order, each chunk is looked up
/// (the pack being written, the Bloom filter, the index); the new ones form
/// compression units, runs of consecutive new chunks up to
/// `PackFormat.groupTarget` bytes, that all cores compress into an arena; the
/// units are then appended to the pack in input order. A pack is committed
/// (durable) and then indexed when it reaches the repository's pack size, and at
/// `finish`. Memory: the arena (about one batch, compressed) and a zstd context
/// per worker.
final class ChunkWriter {
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
        /// What the probe chose (`.full` when the repository's level is fixed).
        var choice = CompressionChoice.full
        /// Random data (`UnitEncoder.lastUnitMatchless`).
        var matchless = false
        var failure: DedupError?
        /// A chunk to encode against a base: the base's id, and the entries that
        /// decode to its plaintext (`deltaLinks`: the chunk stored on its own
        /// first, the base last).
        var delta: (base: ChunkID, links: Range<Int>)?

        init(first: Int) { self.first = first }
    }

    private let repository: Repository
    private let index: ChunkIndex
    /// The Bloom filter, loaded once the stream has `repository.bloomAfterChunks`
    /// chunks: a small backup (one WAL segment) looks its few chunks up in the
    /// index directly rather than read and write a filter whose size grows with
    /// the repository.
    /// Its inserts are in the index's insert log, so the next filter holds them.
    private var bloom: BloomFilter?
    private let workers: Int
    /// One per worker.
    private let encoders: [UnitEncoder]
    private var arena: UnsafeMutableRawBufferPointer
    private var pack: PackWriter?
    /// Ids in the pack being written (not in the index yet).
    private var pending = Set<ChunkID>()
    private var newSlots = [Int]()
    private var units = [CompressionUnit]()
    /// The walk of the previous backup of the series, for the stream being
    /// stored (nil: no delta encoding for it), and the stream's offset so far.
    /// The stream being stored: its same-place delta bases and how far into it
    /// the chunks stored so far reach (several streams may take turns, `resume`).
    private var stream = StreamPosition()
    /// Reads delta bases' entries (on this thread) for the workers to decode:
    /// the entries of one batch, and which chunk each is.
    private var baseReader: ChunkReader?
    private var baseArena = UnsafeMutableRawBufferPointer(start: nil, count: 0)
    private var deltaLinks = [(id: ChunkID, location: ChunkLocation, stored: Range<Int>)]()
    private var framesRead = [FrameKey: Range<Int>]()
    /// Super-features of stored chunks (nil: no delta encoding for this stream),
    /// and the sketches of the new chunks in the pack being written, recorded
    /// once it is committed.
    private var resemblance: ResemblanceTable?
    private var uncommittedSketches = [(ResemblanceSketch, ChunkID)]()
    /// Per batch: the new chunks, their same-place candidates and sketches.
    private var fresh = [Int]()
    private var samePlace = [ChunkID?]()
    private var sketches = [ResemblanceSketch?]()
    /// Which base sources a backup uses: both unless DBBACKUP_DELTA_BASES says
    /// `same-place` or `similar` (for measuring one against the other).
    private let baseSources: (samePlace: Bool, similar: Bool) = {
        switch ProcessInfo.processInfo.environment["DBBACKUP_DELTA_BASES"] {
        case "same-place": (true, false)
        case "similar": (false, true)
        default: (true, true)
        }
    }()
    /// The longest chain a backup makes: `DeltaFormat.maxChainLength`, or fewer
    /// when DBBACKUP_DELTA_CHAIN says so (for measuring the bound; readers
    /// accept chains up to the format's bound whatever a writer chose).
    private let chainBound: Int = {
        guard let v = ProcessInfo.processInfo.environment["DBBACKUP_DELTA_CHAIN"].flatMap({ Int($0) }) else {
            return DeltaFormat.maxChainLength
        }
        return min(max(v, 1), DeltaFormat.maxChainLength)
    }()
    /// One per worker: decodes the bases, and checks each against its id.
    private let chainDecoders: [DeltaChainDecoder]
    private let hashers: [SHA256Hasher]

    /// Chunks seen, and the new ones stored (their plaintext and stored bytes).
    private(set) var chunks = 0
    private(set) var newChunks = 0
    private(set) var newBytes: Int64 = 0
    /// Entry headers and payloads of the new chunks in packs.
    private(set) var storedBytes: Int64 = 0
    /// The same by what the probe chose.
    private(set) var compressionUse = CompressionUse()
    /// How many chunks of the last batch stored were new.
    private(set) var lastBatchNewChunks = 0
    /// Whether nine tenths of the last batch's new bytes were random data (stored
    /// raw, entropy-coded only, or hex-packed to such bytes): then the next
    /// batches' new chunks are not sketched for similar ones (random chunks
    /// resemble only their own earlier versions, which the same-place base finds).
    private(set) var lastBatchMatchless = false
    /// New chunks stored as deltas.
    private(set) var deltaChunks = 0

    init(repository: Repository, workers: Int, batchBytes: Int) throws {
        self.repository = repository
        self.workers = workers
        index = try repository.index()
        encoders = try (0..<workers).map { _ in
            try UnitEncoder(repository.config.compression, maxChunk: repository.config.chunker.maxSize)
        }
        chainDecoders = try (0..<workers).map { _ in try DeltaChainDecoder() }
        hashers = try (0..<workers).map { _ in try repository.makeChunkHasher() }
        arena = .allocate(
            byteCount: ZstdCompressor.bound(batchBytes + repository.config.chunker.maxSize), alignment: 16)
    }

    deinit {
        arena.deallocate()
        baseArena.deallocate()
    }

    /// The next stream's chunks are encoded against the chunks at the same
    /// place in `previous` (a chunk list of the series' previous backup), or
    /// not at all with nil.
    @discardableResult
    func beginStream(deltaAgainst previous: ChunkListReader?, resemblance useResemblance: Bool) throws
        -> StreamPosition {
        stream = StreamPosition()
        stream.deltaBases = baseSources.samePlace ? previous.map(DeltaBaseFinder.init) : nil
        defer { if !useResemblance { resemblance = nil } }
        if useResemblance && baseSources.similar && resemblance == nil {
            resemblance = try ResemblanceTable(path: repository.cacheDirectory + "/similar.lmdb")
        }
        return stream
    }

    /// Where one of several streams stored in turn stands: `beginStream` makes
    /// it, `resume` makes it the stream the next batches belong to.
    final class StreamPosition {
        fileprivate var deltaBases: DeltaBaseFinder?
        fileprivate var offset: Int64 = 0
        fileprivate init() {}
    }

    /// The next batches belong to `position`'s stream (begun by `beginStream`).
    func resume(_ position: StreamPosition) { stream = position }

    /// Where the new chunks' resemblance sketches come from.
    enum Sketching {
        /// The batch's resemblance samples (positions in `input`, from a sampling
        /// `ChunkBatchProducer`), there for every chunk.
        case fromSamples([ResemblanceSample])
        /// The new chunks' bytes, hashed again.
        case fromBytes
        /// None: the new chunks look for no similar chunk and are found by none
        /// (random data, `lastBatchMatchless`); the same-place base stays.
        case none
    }

    /// Stores the chunks of one hashed batch that the repository does not hold,
    /// with their sketches made as `sketching` says.
    func store(
        _ input: UnsafeRawBufferPointer, slots: SharedPointer<ChunkSlot>, count n: Int, sketching: Sketching
    ) throws {
        let arenaUsed = try formUnits(input, slots: slots, count: n, sketching: sketching)
        chunks += n
        if arenaUsed > arena.count {
            arena.deallocate()
            arena = .allocate(byteCount: arenaUsed, alignment: 16)
        }
        compressUnits(input, slots: slots)
        try appendUnits(input, slots: slots)
    }

    /// Dedup, in input order (the pending set and the filter are this thread's);
    /// the new chunks form compression units. Returns the arena bytes they need.
    private func formUnits(
        _ input: UnsafeRawBufferPointer, slots: SharedPointer<ChunkSlot>, count n: Int, sketching: Sketching
    ) throws -> Int {
        newSlots.removeAll(keepingCapacity: true)
        units.removeAll(keepingCapacity: true)
        deltaLinks.removeAll(keepingCapacity: true)
        framesRead.removeAll(keepingCapacity: true)
        fresh.removeAll(keepingCapacity: true)
        samePlace.removeAll(keepingCapacity: true)
        defer { lastBatchNewChunks = fresh.count }
        // Dedup and the same-place candidates, in input order.
        for i in 0..<n {
            let id = slots[i].id
            let length = slots[i].range.count
            let candidate = try stream.deltaBases?.base(for: id, at: stream.offset, length: length)
            stream.offset += Int64(length)
            var known = pending.contains(id)
            if bloom == nil && chunks + i >= repository.bloomAfterChunks { bloom = try repository.bloom() }
            if !known && (bloom?.mightContain(id) ?? true) {
                known = try repository.locate(id, in: index, listIfUnknown: false) != nil
            }
            guard !known else { continue }
            pending.insert(id)
            bloom?.insert(id)
            fresh.append(i)
            samePlace.append(candidate)
        }
        // The new chunks' sketches, on all cores.
        sketches.removeAll(keepingCapacity: true)
        var samples: [ResemblanceSample]?
        var sketched = true  // else every new chunk keeps its same-place candidate only
        switch sketching {
        case .fromSamples(let found): samples = found
        case .fromBytes: break
        case .none: sketched = false
        }
        if resemblance != nil { sketches.append(contentsOf: repeatElement(nil, count: fresh.count)) }
        if resemblance != nil && sketched {
            fresh.withUnsafeBufferPointer { order in
                sketches.withUnsafeMutableBufferPointer { out in
                    (samples ?? []).withUnsafeBufferPointer { found in
                        nonisolated(unsafe) let order = order, out = out, found = found
                        let fromSamples = samples != nil
                        forEachInParallel(order.count, workers: workers) { _, k in
                            let range = slots[order[k]].range
                            out[k] = fromSamples
                                ? ResemblanceSketch(samples: found, chunk: range)
                                : ResemblanceSketch(UnsafeRawBufferPointer(rebasing: input[range]))
                        }
                    }
                }
            }
        }
        var arenaUsed = 0
        var baseUsed = 0
        var open: CompressionUnit?
        func closeUnit() {
            guard var u = open else { return }
            u.arenaOffset = arenaUsed
            arenaUsed += UnitEncoder.outputSize(u.rawLength)
            units.append(u)
            open = nil
        }
        for (k, i) in fresh.enumerated() {
            let id = slots[i].id
            let length = slots[i].range.count
            // A similar chunk anywhere, else the one at the same place yesterday.
            var candidate = samePlace[k]
            if let resemblance, let sketch = sketches[k] {
                uncommittedSketches.append((sketch, id))
                if let similar = try resemblance.similar(to: sketch, own: id) { candidate = similar }
            }
            if let candidate, let (base, links) = try readBase(candidate, at: &baseUsed) {
                // A delta is a unit of its own.
                closeUnit()
                var u = CompressionUnit(first: newSlots.count)
                newSlots.append(i)
                u.count = 1
                u.rawLength = length
                u.delta = (base, links)
                open = u
                closeUnit()
                continue
            }
            // A unit never grows past what readers accept for a group.
            if let u = open, u.rawLength + length > PackFormat.maxGroupLength { closeUnit() }
            var u = open ?? CompressionUnit(first: newSlots.count)
            newSlots.append(i)
            u.count += 1
            u.rawLength += length
            open = u
            if u.rawLength >= PackFormat.groupTarget { closeUnit() }
        }
        closeUnit()
        return arenaUsed
    }

    /// Reads the entries a delta base decodes from (its own, after those of the
    /// chain it ends, each once a batch) into the base arena at `used`, and
    /// returns the base and the entries as a range of `deltaLinks`; nil when
    /// the candidate cannot serve (not indexed, or unreadable). A candidate at
    /// the end of a chain of `chainBound` deltas gives way to the chunk that
    /// chain starts from (stored on its own): the delta then holds the changes
    /// of every night since, still less than the chunk on its own while they
    /// are few (the encoder decides), and the chain starts again at one.
    private func readBase(_ candidate: ChunkID, at used: inout Int) throws -> (ChunkID, Range<Int>)? {
        guard let found = try repository.locate(candidate, in: index, listIfUnknown: false) else { return nil }
        if baseReader == nil { baseReader = try ChunkReader(repository: repository) }
        guard let reader = baseReader, var chain = try? reader.bases(of: candidate, at: found, manifest: "(delta base)")
        else { return nil }
        var (base, loc) = (candidate, found)
        if chain.count >= chainBound {
            guard let root = chain.first else { return nil }
            (base, loc) = root
            chain = []
        }
        let first = deltaLinks.count
        for (id, at) in chain + [(base, loc)] {
            if let stored = framesRead[at.frame] {
                deltaLinks.append((id, at, stored))
                continue
            }
            let entry = PackFormat.entryHeaderSize + Int(at.storedLength)
            if used + entry > baseArena.count {
                let grown = UnsafeMutableRawBufferPointer.allocate(
                    byteCount: max(2 * baseArena.count, used + entry, 1 << 20), alignment: 16)
                if used > 0, let from = baseArena.baseAddress { grown.baseAddress?.copyMemory(from: from, byteCount: used) }
                baseArena.deallocate()
                baseArena = grown
            }
            do {
                _ = try reader.readStored(
                    id, at: at, expectedLength: Int(at.rawLength),
                    into: UnsafeMutableRawBufferPointer(rebasing: baseArena[used...]), manifest: "(delta base)")
            } catch {
                // A base that does not read is no base: the chunk is stored on its own.
                deltaLinks.removeSubrange(first...)
                return nil
            }
            let stored = (used + PackFormat.entryHeaderSize)..<(used + entry)
            framesRead[at.frame] = stored
            deltaLinks.append((id, at, stored))
            used += entry
        }
        return (base, first..<deltaLinks.count)
    }

    /// Compresses the units on all cores, each into its arena place.
    private func compressUnits(_ input: UnsafeRawBufferPointer, slots: SharedPointer<ChunkSlot>) {
        let arena = arena
        let baseArena = UnsafeRawBufferPointer(baseArena)
        let encoders = encoders
        let deltaLinks = deltaLinks
        let chainDecoders = chainDecoders, hashers = hashers
        let cipher = repository.cipher
        let maxChunk = repository.config.chunker.maxSize
        newSlots.withUnsafeBufferPointer { order in
            units.withUnsafeMutableBufferPointer { unitBuffer in
                nonisolated(unsafe) let order = order
                guard let unitBase = unitBuffer.baseAddress else { return }
                let shared = SharedPointer(base: unitBase)
                // In runs of consecutive units: deltas whose bases share a group
                // (yesterday's neighbours) decode it once on one worker.
                forEachRunInParallel(unitBuffer.count, workers: workers, weight: { shared[$0].rawLength }) { worker, k in
                    var u = shared[k]
                    let out = UnsafeMutableRawBufferPointer(
                        rebasing: arena[u.arenaOffset..<(u.arenaOffset + UnitEncoder.outputSize(u.rawLength))])
                    let members = order[u.first..<(u.first + u.count)]
                    // Consecutive chunks of the input (the usual case) are one
                    // buffer: one-shot compression, without zstd's stream copy.
                    let contiguous = zip(members, members.dropFirst()).allSatisfy {
                        slots[$0].range.upperBound == slots[$1].range.lowerBound
                    }
                    do {
                        if let delta = u.delta, let only = members.first {
                            // The base decoded and known intact (its id, or a frame
                            // checksum or the key): a delta is never made against
                            // bytes that are not the base's.
                            let chain = deltaLinks[delta.links].map {
                                DeltaChainDecoder.Link(
                                    id: $0.id, location: $0.location,
                                    stored: UnsafeRawBufferPointer(rebasing: baseArena[$0.stored]))
                            }
                            let chunk = UnsafeRawBufferPointer(rebasing: input[slots[only].range])
                            if let base = try? chainDecoders[worker].decode(
                                chain, maxChunk: maxChunk, cipher: cipher, manifest: "(delta base)",
                                hasher: hashers[worker], unlessSealedOrSummed: true)
                            {
                                (u.storedLength, u.encoding, u.choice) = try encoders[worker].encode(
                                    chunk, against: base, into: out)
                            } else {
                                // A base that does not decode (damaged): the chunk on its own.
                                (u.storedLength, u.encoding, u.choice) = try encoders[worker].encode(
                                    [chunk], members: 1, rawLength: chunk.count, into: out)
                            }
                            u.matchless = encoders[worker].lastUnitMatchless
                            shared[k] = u
                            return
                        }
                        let pieces: [UnsafeRawBufferPointer]
                        if contiguous, let a = members.first, let b = members.last {
                            pieces = [UnsafeRawBufferPointer(
                                rebasing: input[slots[a].range.lowerBound..<slots[b].range.upperBound])]
                        } else {
                            pieces = members.map { UnsafeRawBufferPointer(rebasing: input[slots[$0].range]) }
                        }
                        (u.storedLength, u.encoding, u.choice) = try encoders[worker].encode(
                            pieces, members: u.count, rawLength: u.rawLength, into: out)
                        u.matchless = encoders[worker].lastUnitMatchless
                    } catch {
                        u.failure = .wrapping(error)
                    }
                    shared[k] = u
                }
            }
        }
    }

    /// Appends the units to the pack in input order; a full pack is committed.
    private func appendUnits(_ input: UnsafeRawBufferPointer, slots: SharedPointer<ChunkSlot>) throws {
        var newInBatch = 0, matchlessInBatch = 0
        defer { lastBatchMatchless = newInBatch > 0 && matchlessInBatch * 10 >= newInBatch * 9 }
        for u in units {
            newInBatch += u.rawLength
            if u.matchless { matchlessInBatch += u.rawLength }
            if let failure = u.failure { throw failure }
            let members = newSlots[u.first..<(u.first + u.count)]
            let payload = UnsafeRawBufferPointer(rebasing: arena[u.arenaOffset..<(u.arenaOffset + u.storedLength)])
            let storedBefore = storedBytes
            if pack == nil { pack = try PackWriter(backend: repository.backend, cipher: repository.cipher) }
            switch u.encoding {
            case .zstdGroup, .hexZstdGroup:
                try pack?.addGroup(
                    members: members.map { (slots[$0].id, slots[$0].range.count) }, payload: payload,
                    encoding: u.encoding)
                storedBytes += Int64(payload.count + PackFormat.entryHeaderSize)
            case .zstd, .hexZstd:
                try pack?.add(
                    id: slots[newSlots[u.first]].id, rawLength: u.rawLength, encoding: u.encoding, payload: payload)
                storedBytes += Int64(payload.count + PackFormat.entryHeaderSize)
            case .zstdDelta:
                try pack?.add(
                    id: slots[newSlots[u.first]].id, rawLength: u.rawLength, encoding: .zstdDelta, payload: payload,
                    base: u.delta?.base)
                storedBytes += Int64(payload.count + PackFormat.entryHeaderSize)
                deltaChunks += 1
            case .raw:
                for i in members {
                    let chunk = UnsafeRawBufferPointer(rebasing: input[slots[i].range])
                    try pack?.add(id: slots[i].id, rawLength: chunk.count, encoding: .raw, payload: chunk)
                    storedBytes += Int64(chunk.count + PackFormat.entryHeaderSize)
                }
            }
            newChunks += u.count
            newBytes += Int64(u.rawLength)
            compressionUse[u.choice].units += 1
            compressionUse[u.choice].rawBytes += Int64(u.rawLength)
            compressionUse[u.choice].storedBytes += storedBytes - storedBefore
            if let p = pack, p.size >= UInt64(repository.config.packSize) { try commitPack() }
        }
    }

    /// Commits the pack being written (durable), then indexes it.
    private func commitPack() throws {
        guard let p = pack else { return }
        pack = nil
        let entries = try p.finish()
        let size = Int64(p.size)  // after finish: trailer and footer included
        FaultInjection.crashPoint("backup.after-pack-commit")
        try index.insert(pack: p.id, size: size, entries: entries)
        repository.confirmWritten(p.id)
        // Bases for later chunks from now on (a cache: a failure only costs deltas).
        try? resemblance?.insert(uncommittedSketches)
        uncommittedSketches.removeAll(keepingCapacity: true)
        // The filter now holds these index entries too.
        bloom?.count += entries.count
        pending.removeAll(keepingCapacity: true)
    }

    /// Commits the last pack: every chunk stored so far is durable and indexed.
    func finish() throws { try commitPack() }

    /// Forgets the pack being written; the filter is saved, best effort, in step
    /// with what was committed.
    func abort() {
        pack?.abort()
        pack = nil
        uncommittedSketches.removeAll()
        if let bloom { try? repository.saveBloom(bloom) }
    }

    /// Saves the Bloom filter with the chunks this writer added.
    func saveFilter() throws {
        if let bloom { try repository.saveBloom(bloom) }
    }
}
