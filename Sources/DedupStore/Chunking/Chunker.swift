import Foundation

/// Minimum, average and maximum chunk sizes, recorded in the repository config so
/// that every later backup cuts the same content at the same places.
public struct ChunkerParameters: Codable, Equatable, Sendable {
    public var minSize: Int
    public var avgSize: Int
    public var maxSize: Int

    /// Chosen by measurement on SQL dumps; see docs/CHUNKING.md.
    public static let `default` = ChunkerParameters(average: 256 * 1024)

    public init(minSize: Int, avgSize: Int, maxSize: Int) {
        self.minSize = minSize; self.avgSize = avgSize; self.maxSize = maxSize
    }

    /// min = avg/4, max = avg*4: the FastCDC paper's spread around the average.
    public init(average: Int) {
        let (max, overflow) = average.multipliedReportingOverflow(by: 4)
        self.init(minSize: average / 4, avgSize: average, maxSize: overflow ? Int.max : max)
    }

    public func validate() throws {
        guard avgSize.nonzeroBitCount == 1 else {
            throw DedupError.invalidArgument(
                "chunk size must be a power of two between 4KiB and 16MiB (got \(avgSize) bytes)")
        }
        guard avgSize >= 4096, avgSize <= 16 << 20, minSize >= 64, minSize < avgSize, maxSize > avgSize,
            maxSize <= 64 << 20
        else {
            throw DedupError.invalidArgument(
                "chunk sizes out of range: min \(minSize), avg \(avgSize), max \(maxSize); avg must be 4KiB...16MiB with min < avg < max <= 64MiB"
            )
        }
    }
}

/// FastCDC content-defined chunking with normalized chunking (level 2).
///
/// A 64-bit gear hash rolls over the input; a cut falls where the hash's top bits
/// are zero. Before the average size a stricter mask (two more bits) applies, after
/// it a looser one, which pulls chunk sizes toward the average. The gear hash at a
/// position depends only on the 64 bytes before it, so an edit changes only the
/// chunks around it and the boundaries after it fall where they fell before.
public struct ContentDefinedChunker: Sendable {
    public let parameters: ChunkerParameters
    private let maskSmall: UInt64
    private let maskLarge: UInt64

    public init(_ parameters: ChunkerParameters) {
        self.parameters = parameters
        let bits = parameters.avgSize.trailingZeroBitCount
        // Top bits of the hash: bit k of a gear hash depends on the last k+1 bytes,
        // so the high bits see the widest window.
        maskSmall = ~UInt64(0) << UInt64(64 - (bits + 2))
        maskLarge = ~UInt64(0) << UInt64(64 - (bits - 2))
    }

    /// Length of the next chunk at the start of `data`, whose `count` bytes are all
    /// the input that remains or at least `maxSize` bytes of it.
    @inline(__always)
    public func cutPoint(_ data: UnsafePointer<UInt8>, count: Int) -> Int {
        let minSize = parameters.minSize
        if count <= minSize { return count }
        let end = min(count, parameters.maxSize)
        let normal = min(parameters.avgSize, end)
        let gear = GearTable.pointer
        var hash: UInt64 = 0
        var i = minSize
        let maskS = maskSmall, maskL = maskLarge
        while i < normal {
            hash = (hash << 1) &+ gear[Int(data[i])]
            if hash & maskS == 0 { return i + 1 }
            i += 1
        }
        while i < end {
            hash = (hash << 1) &+ gear[Int(data[i])]
            if hash & maskL == 0 { return i + 1 }
            i += 1
        }
        return end
    }

    // MARK: - Searching for cuts apart from choosing them

    /// Appends to `out`, ascending, every position `from..<to` of `data` where the
    /// gear hash of the 64 bytes ending there passes the looser mask: as
    /// `position << 1 | 1` when it passes the stricter one too, `position << 1`
    /// when not. The hash warms up on the 63 bytes before `from` (fewer at the
    /// start of `data`).
    ///
    /// A gear hash depends only on the last 64 bytes, so parts of a buffer can be
    /// searched apart (on several cores, and two at a time on one core, where the
    /// two hashes' dependency chains overlap), and `cutPoint(_:at:count:candidates:cursor:)`
    /// then chooses exactly the cuts `cutPoint(_:count:)` makes.
    public func findCandidates(_ data: UnsafePointer<UInt8>, from: Int, to: Int, into out: inout [Int]) {
        var none = [ResemblanceSample]()
        search(data, from: from, to: to, into: &out, samples: &none, sampling: false)
    }

    /// `findCandidates(_:from:to:into:)`, and on the same pass every position
    /// whose hash a resemblance sketch samples, with that hash, appended to
    /// `samples` (ascending): a chunk's sketch is then made from them
    /// (`ResemblanceSketch(samples:chunk:)`) without hashing its bytes again.
    public func findCandidates(
        _ data: UnsafePointer<UInt8>, from: Int, to: Int, into out: inout [Int], samples: inout [ResemblanceSample]
    ) {
        search(data, from: from, to: to, into: &out, samples: &samples, sampling: true)
    }

    @inline(__always)
    private func search(
        _ data: UnsafePointer<UInt8>, from: Int, to: Int, into out: inout [Int], samples: inout [ResemblanceSample],
        sampling: Bool
    ) {
        guard to > from else { return }
        let gear = GearTable.pointer
        let maskS = maskSmall, maskL = maskLarge
        @inline(__always) func warm(_ at: Int) -> UInt64 {
            var h: UInt64 = 0
            var j = max(0, at - 63)
            while j < at {
                h = (h << 1) &+ gear[Int(data[j])]
                j += 1
            }
            return h
        }
        @inline(__always) func entry(_ position: Int, _ h: UInt64) -> Int {
            position << 1 | (h & maskS == 0 ? 1 : 0)
        }
        // Two lanes: a = from..<mid, b = mid..<to (b the longer by at most one byte).
        let mid = from + (to - from) / 2
        let laneLength = mid - from
        var ha = warm(from), hb = warm(mid)
        var laterHits = [Int]()  // lane b's, appended after lane a's
        var laterSamples = [ResemblanceSample]()
        var k = 0
        if sampling {
            // Samples into raw buffers, copied out a block at a time.
            let block = 4096
            let laneA = UnsafeMutablePointer<ResemblanceSample>.allocate(capacity: block)
            let laneB = UnsafeMutablePointer<ResemblanceSample>.allocate(capacity: block)
            defer { laneA.deallocate(); laneB.deallocate() }
            let sampleMask = ResemblanceSample.mask
            // Every cut candidate is a sample too (the looser mask has at least
            // 10 top bits, the sampling one 7): one test a byte for both.
            while k < laneLength {
                let blockEnd = min(laneLength, k + block)
                var na = 0, nb = 0
                while k < blockEnd {
                    ha = (ha << 1) &+ gear[Int(data[from + k])]
                    hb = (hb << 1) &+ gear[Int(data[mid + k])]
                    if (ha & sampleMask == 0) || (hb & sampleMask == 0) {
                        if ha & sampleMask == 0 {
                            laneA[na] = ResemblanceSample(position: from + k, hash: ha)
                            na &+= 1
                            if ha & maskL == 0 { out.append(entry(from + k, ha)) }
                        }
                        if hb & sampleMask == 0 {
                            laneB[nb] = ResemblanceSample(position: mid + k, hash: hb)
                            nb &+= 1
                            if hb & maskL == 0 { laterHits.append(entry(mid + k, hb)) }
                        }
                    }
                    k += 1
                }
                samples.append(contentsOf: UnsafeBufferPointer(start: laneA, count: na))
                laterSamples.append(contentsOf: UnsafeBufferPointer(start: laneB, count: nb))
            }
        }
        while k < laneLength {
            ha = (ha << 1) &+ gear[Int(data[from + k])]
            hb = (hb << 1) &+ gear[Int(data[mid + k])]
            if (ha & maskL == 0) || (hb & maskL == 0) {
                if ha & maskL == 0 { out.append(entry(from + k, ha)) }
                if hb & maskL == 0 { laterHits.append(entry(mid + k, hb)) }
            }
            k += 1
        }
        var i = mid + laneLength
        while i < to {
            hb = (hb << 1) &+ gear[Int(data[i])]
            if sampling && hb & ResemblanceSample.mask == 0 {
                laterSamples.append(ResemblanceSample(position: i, hash: hb))
            }
            if hb & maskL == 0 { laterHits.append(entry(i, hb)) }
            i += 1
        }
        out.append(contentsOf: laterHits)
        if sampling { samples.append(contentsOf: laterSamples) }
    }

    /// The length of the chunk at `start` of `data`, whose `count` bytes from there
    /// are all the input that remains or at least `maxSize` of it: the same as
    /// `cutPoint(data + start, count: count)`, chosen from `candidates` (what
    /// `findCandidates` found for every position of `data` up to `start + count`).
    /// `cursor` is where to look in `candidates`; it only moves forward.
    @inline(__always)
    public func cutPoint(
        _ data: UnsafePointer<UInt8>, at start: Int, count: Int, candidates: UnsafeBufferPointer<Int>,
        cursor: inout Int
    ) -> Int {
        let minSize = parameters.minSize
        if count <= minSize { return count }
        let end = min(count, parameters.maxSize)
        let normal = min(parameters.avgSize, end)
        // The first 63 positions after the minimum: the hash started at the minimum
        // and does not cover 64 bytes yet, so it differs from the candidates'.
        let gear = GearTable.pointer
        let exactEnd = min(minSize + 63, end)
        var hash: UInt64 = 0
        var i = minSize
        while i < exactEnd {
            hash = (hash << 1) &+ gear[Int(data[start + i])]
            if hash & (i < normal ? maskSmall : maskLarge) == 0 { return i + 1 }
            i += 1
        }
        let first = (start + exactEnd) << 1
        while cursor < candidates.count && candidates[cursor] < first { cursor += 1 }
        var c = cursor
        while c < candidates.count {
            let position = candidates[c] >> 1 - start
            if position >= end { break }
            if position >= normal || candidates[c] & 1 == 1 {
                cursor = c + 1
                return position + 1
            }
            c += 1
        }
        return end
    }

    /// Every cut of `count` bytes at `data` (the whole input), in order, through
    /// `findCandidates` on this thread: the same cuts as repeated `cutPoint(_:count:)`.
    public func forEachChunk(_ data: UnsafePointer<UInt8>, count: Int, _ body: (_ offset: Int, _ length: Int) -> Void) {
        var candidates = [Int]()
        findCandidates(data, from: 0, to: count, into: &candidates)
        candidates.withUnsafeBufferPointer { found in
            var cursor = 0
            var offset = 0
            while offset < count {
                let n = cutPoint(data, at: offset, count: count - offset, candidates: found, cursor: &cursor)
                body(offset, n)
                offset += n
            }
        }
    }
}

/// The 256 random 64-bit gear values, fixed forever for format version 1
/// (SplitMix64 from the seed 0x6462_6261_636B_7570, "dbbackup").
enum GearTable {
    static let values: [UInt64] = {
        var state: UInt64 = 0x6462_6261_636B_7570
        return (0..<256).map { _ in
            state &+= 0x9E37_79B9_7F4A_7C15
            var z = state
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            return z ^ (z >> 31)
        }
    }()

    /// The table behind a stable pointer: indexing it costs no bounds check or
    /// retain, which is most of the chunker's speed (see ../shared/SWIFT-NOTES.md).
    nonisolated(unsafe) static let pointer: UnsafePointer<UInt64> = {
        let p = UnsafeMutablePointer<UInt64>.allocate(capacity: 256)
        p.initialize(from: values, count: 256)
        return UnsafePointer(p)
    }()
}

/// Something bytes can be read from: a file descriptor, a decompressor, a buffer.
public protocol ByteSource {
    /// Fills as much of `buffer` as it can; returns 0 only at the end of input.
    mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int
}

/// Cuts a stream into content-defined chunks through one fixed buffer: memory use
/// is a few times the maximum chunk size whatever the stream's length.
public final class ChunkStream<Source: ByteSource> {
    private var source: Source
    private let chunker: ContentDefinedChunker
    private let buffer: UnsafeMutableRawBufferPointer
    private var start = 0
    private var end = 0
    private var atEOF = false
    /// Bytes handed out so far.
    public private(set) var offset: UInt64 = 0

    public init(source: Source, chunker: ContentDefinedChunker, bufferSize: Int = 8 << 20) {
        self.source = source
        self.chunker = chunker
        let size = max(bufferSize, 2 * chunker.parameters.maxSize)
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 64)
    }

    deinit { buffer.deallocate() }

    /// The next chunk, valid until the following call; nil at the end of input.
    public func next() throws -> UnsafeRawBufferPointer? {
        if end - start < chunker.parameters.maxSize && !atEOF {
            try refill()
        }
        guard end > start, let base = buffer.baseAddress else { return nil }
        let p = (base + start).assumingMemoryBound(to: UInt8.self)
        let n = chunker.cutPoint(p, count: end - start)
        let chunk = UnsafeRawBufferPointer(start: base + start, count: n)
        start += n
        offset += UInt64(n)
        return chunk
    }

    private func refill() throws {
        guard let base = buffer.baseAddress else { return }
        if start > 0 {
            let remaining = end - start
            if remaining > 0 { memmove(base, base + start, remaining) }
            start = 0
            end = remaining
        }
        while end < buffer.count {
            let n = try source.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[end...]))
            if n == 0 { atEOF = true; break }
            end += n
        }
    }
}
