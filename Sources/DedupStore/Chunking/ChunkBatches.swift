import Foundation
import Synchronization

/// What the producer's threads run (`role` 0: reader, 1: digest).
protocol ThreadBody: AnyObject, Sendable {
    func run(_ role: Int)
}

/// One batch of chunks cut by a `ChunkBatchProducer`: the chunks lie back to back
/// from `base`; `ranges` are their offsets. Valid until handed back with `release`.
struct ChunkBatch {
    let buffer: Int
    let base: UnsafeRawPointer
    let ranges: [Range<Int>]
    /// With a producer that samples: the resemblance samples of the batch's
    /// bytes (positions from `base`, ascending), for the chunks' sketches;
    /// `sampled` when they are there for every chunk of the batch.
    let samples: [ResemblanceSample]
    var sampled = false
    /// With a producer that hashes: the chunks' ids, in the order of `ranges`.
    var ids: [ChunkID] = []
    var length: Int { ranges.last?.upperBound ?? 0 }
}

/// Reads and cuts the input on its own thread (searching each buffer for cuts on
/// all cores, `ContentDefinedChunker.findCandidates`), a few batches ahead of the thread
/// that hashes, compresses and stores them; on request a second thread folds
/// every batch into the whole-stream SHA-256 meanwhile. Memory: `depth` buffers of one batch plus
/// two maximum-size chunks each, whatever the input's length.
///
/// The consumer calls `next()` until it returns nil and `release` for every batch
/// it got, then `finish()` for the stream digest. `stop()` ends both threads early
/// (after an error); one of the two must be called before the source goes away.
final class ChunkBatchProducer<Source: ByteSource>: ThreadBody, @unchecked Sendable {
    // Guarded by `condition`: the queues, the buffer users and the flags. The
    // source, the chunker and the cut candidates belong to the reader thread, the hasher to the
    // digest thread, until each has ended.
    private let condition = NSCondition()
    private var free: [Int]
    private var users: [Int]
    private var ready: [ChunkBatch] = []
    private var toDigest: [ChunkBatch] = []
    private var readerEnded = false
    private var failure: Error?
    private var cancelled = false
    private var running = 0

    private var source: Source
    private let chunker: ContentDefinedChunker
    private let buffers: [UnsafeMutableRawBufferPointer]
    private let batchBytes: Int
    private let streamHasher = SHA256Hasher()

    private let digests: Bool
    private let sampling: Bool
    /// Whether the consumer wants samples for the next buffers (most of its
    /// chunks new): a night that is mostly stored needs few sketches, which
    /// then cost less from the new chunks' bytes than sampling every byte.
    private let samplingWanted = Atomic<Bool>(true)
    /// Whether the tail carried into the next buffer has its samples.
    private var carriedSampled = false
    /// Given: the reader thread takes each batch's chunk ids too (on all cores),
    /// so that hashing the next batch overlaps the consumer's work on this one.
    private let chunkHashers: [SHA256Hasher]

    /// With `streamDigest` false there is no digest thread and `finish()` returns nil.
    /// `searchWorkers`: how many cores search each buffer for cuts (the reader's
    /// thread and the rest from the shared pool). `sampling`: each batch
    /// carries its resemblance samples, found on the search's pass.
    init(
        source: Source, chunker: ContentDefinedChunker, batchBytes: Int, depth: Int = 3, streamDigest: Bool = true,
        searchWorkers: Int = ProcessInfo.processInfo.activeProcessorCount, sampling: Bool = false,
        chunkHashers: [SHA256Hasher] = []
    ) {
        self.source = source
        self.sampling = sampling
        self.chunkHashers = chunkHashers
        self.searchWorkers = max(1, searchWorkers)
        digests = streamDigest
        self.chunker = chunker
        self.batchBytes = batchBytes
        let size = batchBytes + 2 * chunker.parameters.maxSize
        buffers = (0..<max(2, depth)).map { _ in .allocate(byteCount: size, alignment: 64) }
        free = Array(buffers.indices)
        users = Array(repeating: 0, count: buffers.count)
    }

    deinit {
        for b in buffers { b.deallocate() }
    }

    /// Starts the reader and the digest thread.
    func start() {
        // Through an existential: the closures then need no generic metatype.
        let body: any ThreadBody = self
        let roles = digests ? [(0, "dbbackup-reader"), (1, "dbbackup-digest")] : [(0, "dbbackup-reader")]
        running = roles.count
        for (role, name) in roles {
            startThread(named: name) { body.run(role) }
        }
    }

    /// The next batch in input order; nil at the end of the input. Throws what the
    /// input's read threw.
    func next() throws -> ChunkBatch? {
        condition.lock()
        defer { condition.unlock() }
        while ready.isEmpty && !readerEnded { condition.wait() }
        if !ready.isEmpty { return ready.removeFirst() }
        if let failure { throw failure }
        return nil
    }

    /// What `poll()` found.
    enum Poll {
        case batch(ChunkBatch)
        /// The input has ended and every batch was handed out.
        case ended
        /// Nothing yet: `onReady` is called when there is.
        case notYet
    }

    /// Called on the reader thread whenever a batch is ready or the input ended
    /// (set before `start`): one consumer can then serve several producers.
    var onReady: (@Sendable () -> Void)?

    /// `next()` without waiting.
    func poll() throws -> Poll {
        condition.lock()
        defer { condition.unlock() }
        if !ready.isEmpty { return .batch(ready.removeFirst()) }
        guard readerEnded else { return .notYet }
        if let failure { throw failure }
        return .ended
    }

    /// Asks for samples in the buffers not yet searched, or for none.
    func wantSamples(_ wanted: Bool) { samplingWanted.store(wanted, ordering: .relaxed) }

    /// Gives a batch's buffer back (the consumer's and the digest thread's turn).
    func release(_ batch: ChunkBatch) {
        condition.lock()
        users[batch.buffer] -= 1
        if users[batch.buffer] == 0 {
            free.append(batch.buffer)
            condition.broadcast()
        }
        condition.unlock()
    }

    /// Once `next()` has returned nil: waits for the digest thread and returns the
    /// SHA-256 of every byte handed out (nil when not asked for).
    func finish() -> ChunkID? {
        waitForThreads()
        return digests ? streamHasher.finish() : nil
    }

    /// Stops both threads (the reader after its current read) and waits for them.
    func stop() {
        condition.lock()
        cancelled = true
        condition.broadcast()
        condition.unlock()
        waitForThreads()
    }

    private func waitForThreads() {
        condition.lock()
        while running > 0 { condition.wait() }
        condition.unlock()
    }

    func run(_ role: Int) {
        if role == 0 { readInput() } else { digest() }
        condition.lock()
        running -= 1
        if role == 0 { readerEnded = true }
        condition.broadcast()
        condition.unlock()
        if role == 0 { onReady?() }
    }

    // MARK: - digest thread

    private func digest() {
        while true {
            condition.lock()
            while toDigest.isEmpty && !readerEnded && !cancelled { condition.wait() }
            if cancelled || toDigest.isEmpty {
                condition.unlock()
                return
            }
            let batch = toDigest.removeFirst()
            condition.unlock()
            streamHasher.update(UnsafeRawBufferPointer(start: batch.base, count: batch.length))
            release(batch)
        }
    }

    // MARK: - reader thread

    private func takeFreeBuffer() -> Int? {
        condition.lock()
        defer { condition.unlock() }
        while free.isEmpty && !cancelled { condition.wait() }
        return cancelled ? nil : free.removeFirst()
    }

    private func publish(_ batch: ChunkBatch) {
        condition.lock()
        users[batch.buffer] = digests ? 2 : 1
        ready.append(batch)
        if digests { toDigest.append(batch) }
        condition.broadcast()
        condition.unlock()
        onReady?()
    }

    // MARK: - the reader's search for cuts

    /// The cut candidates of the buffer being cut (`findCandidates`' entries),
    /// which begin with those of the tail carried over from the previous buffer.
    private var candidates = [Int]()
    /// How many of `candidates` came with the carried tail (searched whole).
    private var carriedCandidates = 0
    /// One list per part of the input searched on its own core.
    private var partCandidates: [[Int]] = []
    /// The same for the resemblance samples, when sampling.
    private var samples = [ResemblanceSample]()
    private var carriedSamples = 0
    private var partSamples: [[ResemblanceSample]] = []
    private let searchWorkers: Int

    /// Finds the candidates of `from..<to` of the buffer at `bytes` (the carried
    /// tail's are there already), in parts on all the search workers when the
    /// span is large enough to pay for it.
    private func findCandidates(_ bytes: UnsafePointer<UInt8>, from: Int, to: Int, sampling: Bool) {
        candidates.removeSubrange(carriedCandidates...)
        samples.removeSubrange(carriedSamples...)
        let parts = min(searchWorkers, max(1, (to - from) / (256 << 10)))
        if parts == 1 {
            if sampling {
                chunker.findCandidates(bytes, from: from, to: to, into: &candidates, samples: &samples)
            } else {
                chunker.findCandidates(bytes, from: from, to: to, into: &candidates)
            }
            return
        }
        while partCandidates.count < parts { partCandidates.append([]) }
        while partSamples.count < parts { partSamples.append([]) }
        let chunker = chunker
        partCandidates.withUnsafeMutableBufferPointer { lists in
            partSamples.withUnsafeMutableBufferPointer { sampleLists in
                guard let listBase = lists.baseAddress, let sampleBase = sampleLists.baseAddress else { return }
                let out = SharedPointer(base: listBase)
                let sampleOut = SharedPointer(base: sampleBase)
                runInParallel(parts) { part in
                    var list = out[part]
                    out[part] = []  // unshared, so appends do not copy
                    list.removeAll(keepingCapacity: true)
                    let a = from + (to - from) * part / parts, b = from + (to - from) * (part + 1) / parts
                    if sampling {
                        var found = sampleOut[part]
                        sampleOut[part] = []
                        found.removeAll(keepingCapacity: true)
                        chunker.findCandidates(bytes, from: a, to: b, into: &list, samples: &found)
                        sampleOut[part] = found
                    } else {
                        chunker.findCandidates(bytes, from: a, to: b, into: &list)
                    }
                    out[part] = list
                }
            }
        }
        for part in 0..<parts { candidates.append(contentsOf: partCandidates[part]) }
        if sampling { for part in 0..<parts { samples.append(contentsOf: partSamples[part]) } }
    }

    /// Keeps the candidates of the uncut tail from `start` on for the next buffer,
    /// where the tail moves to the front.
    private func carryCandidates(from start: Int) {
        var first = 0
        while first < candidates.count && candidates[first] >> 1 < start { first += 1 }
        let shift = start << 1
        var kept = 0
        for i in first..<candidates.count {
            candidates[kept] = candidates[i] - shift
            kept += 1
        }
        candidates.removeSubrange(kept...)
        carriedCandidates = kept
        var firstSample = 0
        while firstSample < samples.count && samples[firstSample].position < start { firstSample += 1 }
        samples.removeSubrange(..<firstSample)
        for i in samples.indices { samples[i].position -= start }
        carriedSamples = samples.count
    }

    /// The ids of the chunks at `ranges` of `base` with the chunk hashers, on
    /// all of them (the largest first, so that they finish together); none
    /// without hashers.
    private func hashChunks(_ base: UnsafeRawPointer, _ ranges: [Range<Int>]) -> [ChunkID] {
        guard !chunkHashers.isEmpty else { return [] }
        var ids = [ChunkID](repeating: ChunkID(w0: 0, w1: 0, w2: 0, w3: 0), count: ranges.count)
        let order = ranges.indices.sorted { ranges[$0].count > ranges[$1].count }
        let hashers = chunkHashers
        ids.withUnsafeMutableBufferPointer { out in
            order.withUnsafeBufferPointer { order in
                ranges.withUnsafeBufferPointer { ranges in
                    nonisolated(unsafe) let out = out, order = order, ranges = ranges
                    forEachInParallel(order.count, workers: hashers.count) { worker, k in
                        let i = order[k]
                        out[i] = hashers[worker].digest(UnsafeRawBufferPointer(start: base + ranges[i].lowerBound, count: ranges[i].count))
                    }
                }
            }
        }
        return ids
    }

    private func readInput() {
        let maxChunk = chunker.parameters.maxSize
        // The uncut tail of the previous buffer: it moves to the front of the next.
        var carry: (buffer: Int, start: Int, count: Int)?
        var atEOF = false
        do {
            while true {
                guard let index = takeFreeBuffer() else { return }
                let buffer = buffers[index]
                guard let base = buffer.baseAddress else { return }
                var end = 0
                if let c = carry, c.count > 0, let from = buffers[c.buffer].baseAddress {
                    // memmove: the free buffer may be the one the tail is in.
                    memmove(base, from + c.start, c.count)
                    end = c.count
                }
                carry = nil
                // The tail's candidates came with it; the search goes on after it.
                let carried = end
                if carried == 0 { (carriedCandidates, carriedSamples) = (0, 0) }
                while end < buffer.count && !atEOF {
                    // Stopped (the consumer failed): wait for no more than this read.
                    if condition.withLock({ cancelled }) { return }
                    let n = try source.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[end...]))
                    if n == 0 { atEOF = true } else { end += n }
                }
                let bytes = UnsafePointer(base.assumingMemoryBound(to: UInt8.self))
                // Samples for every chunk of this buffer: asked for, and the
                // carried tail's are there too.
                let sampleThis = sampling && samplingWanted.load(ordering: .relaxed)
                let sampled = sampleThis && (carried == 0 || carriedSampled)
                if !sampleThis { (samples, carriedSamples) = ([], 0) }
                findCandidates(bytes, from: carried, to: end, sampling: sampleThis)
                var ranges = [Range<Int>]()
                ranges.reserveCapacity(batchBytes / chunker.parameters.minSize + 1)
                var start = 0
                candidates.withUnsafeBufferPointer { found in
                    var cursor = 0
                    // A cut near the end must see the bytes after it: cut while a
                    // maximum-size chunk is available, or the input is all here.
                    while end > start && (atEOF || end - start >= maxChunk) && start < batchBytes {
                        let n = chunker.cutPoint(bytes, at: start, count: end - start, candidates: found, cursor: &cursor)
                        ranges.append(start..<(start + n))
                        start += n
                    }
                }
                if ranges.isEmpty {
                    condition.lock()
                    free.append(index)
                    condition.unlock()
                    return
                }
                let batch = ChunkBatch(
                    buffer: index, base: UnsafeRawPointer(base), ranges: ranges, samples: sampled ? samples : [],
                    sampled: sampled, ids: hashChunks(UnsafeRawPointer(base), ranges))
                if end > start {
                    carry = (index, start, end - start)
                    carryCandidates(from: start)
                    // Positions from `carried` on were sampled if this buffer was.
                    carriedSampled = sampled || (sampleThis && start >= carried)
                } else {
                    (carriedCandidates, carriedSamples) = (0, 0)
                }
                publish(batch)
            }
        } catch {
            condition.lock()
            failure = error
            condition.unlock()
        }
    }
}
