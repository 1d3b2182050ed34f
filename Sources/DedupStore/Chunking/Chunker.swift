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
