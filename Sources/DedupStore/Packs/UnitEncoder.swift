import Foundation

/// How one compression unit (consecutive chunks stored together) goes into a
/// pack: the one place that decides it, for a backup's new chunks
/// (`ChunkWriter`) and for the live members gc regroups. With an adaptive
/// repository a sample decides (`CompressionProbe`): hex-packed, raw, entropy
/// coding only, or the repository's level; with a fixed one, the level.
///
/// One per worker: its zstd contexts, probe and scratch buffers are reused for
/// every unit.
final class UnitEncoder {
    private let compressor: ZstdCompressor
    /// With an adaptive repository: the probe, and the compressor of units only an
    /// entropy coder shrinks (level 1, or the repository's if lower).
    private let probe: CompressionProbe?
    private let entropyCompressor: ZstdCompressor?
    /// Deltas: level 1 (the repository's if lower, or its fixed level) with
    /// long-distance matching.
    private let deltaCompressor: ZstdCompressor
    /// A unit's pieces joined, and its hex-packed form.
    private let joined = ScratchBuffer()
    private let packed = ScratchBuffer()
    /// Whether the last unit `encode` stored held nothing a match search finds
    /// (stored raw, entropy-coded only, or hex-packed to bytes of that kind):
    /// random data, which resembles nothing else either.
    private(set) var lastUnitMatchless = false

    /// `maxChunk`: the repository's largest chunk (a delta's window holds two).
    init(_ compression: RepositoryConfig.Compression, maxChunk: Int = 1 << 20) throws {
        compressor = try ZstdCompressor(level: compression.level)
        probe = compression.isAdaptive ? try CompressionProbe() : nil
        entropyCompressor = compression.isAdaptive ? try ZstdCompressor(level: min(1, compression.level)) : nil
        // A window that holds a base and its chunk.
        let windowLog = max(20, Int.bitWidth - (2 * maxChunk - 1).leadingZeroBitCount)
        // Level 1 unless the level is fixed: a delta is mostly long matches, and
        // on the nightly dumps measured (docs/CHUNKING.md) level 1 made them
        // within 3% of level 3's size (smaller on two of four) in 0.7-0.85x the
        // backup's time.
        deltaCompressor = try ZstdCompressor(
            level: compression.isAdaptive ? min(1, compression.level) : compression.level,
            longDistanceWindowLog: windowLog)
    }

    /// Room `encode` needs for a unit of `rawLength` bytes: its compressed
    /// hex-packed form included.
    static func outputSize(_ rawLength: Int) -> Int { ZstdCompressor.bound(HexPacking.bound(rawLength)) }

    /// Encodes the unit made of `pieces` (back to back: `members` chunks, `rawLength`
    /// bytes) into `out`, at least `outputSize(rawLength)` bytes. Returns the stored
    /// length and encoding; `.raw` when nothing made it smaller (every member is
    /// then stored as its plaintext, and `out` holds nothing).
    func encode(
        _ pieces: [UnsafeRawBufferPointer], members: Int, rawLength: Int, into out: UnsafeMutableRawBufferPointer
    ) throws -> (length: Int, encoding: ChunkEncoding, choice: CompressionChoice) {
        let choice = try probe?.choose(pieces) ?? .full
        lastUnitMatchless = choice == .raw || choice == .entropyOnly
        // Readers take a hex-packed frame of at most a group's size.
        if let probe, probe.sampleHexShare >= CompressionProbe.hexPackingShare,
            rawLength <= PackFormat.maxGroupLength,
            let (c, rest) = try hexPack(pieces, rawLength: rawLength, probe: probe, into: out), c < rawLength
        {
            lastUnitMatchless = rest != .full
            return (c, members == 1 ? .hexZstd : .hexZstdGroup, .hexPacked)
        }
        if choice == .raw { return (rawLength, .raw, .raw) }
        let level = choice == .entropyOnly ? entropyCompressor ?? compressor : compressor
        let c = pieces.count == 1
            ? try level.compress(pieces[0], into: out) : try level.compress(pieces: pieces, into: out)
        // Not smaller: every chunk of the unit is stored raw.
        guard c < rawLength else { return (rawLength, .raw, choice) }
        return (c, members == 1 ? .zstd : .zstdGroup, choice)
    }

    /// Encodes one chunk against `base`, the plaintext of a similar stored chunk
    /// (its delta base), into `out` (`outputSize(chunk.count)` bytes):
    /// a delta when it is clearly smaller than the chunk on its own (at most a
    /// sixteenth of the plaintext, or four fifths of what `encode` makes of it),
    /// else what `encode` makes of it.
    func encode(
        _ chunk: UnsafeRawBufferPointer, against base: UnsafeRawBufferPointer, into out: UnsafeMutableRawBufferPointer
    ) throws -> (length: Int, encoding: ChunkEncoding, choice: CompressionChoice) {
        let delta = try deltaCompressor.compress(chunk, prefix: base, into: out)
        lastUnitMatchless = false
        if delta <= chunk.count / 16 { return (delta, .zstdDelta, .delta) }
        let alone = standalone.buffer(Self.outputSize(chunk.count))
        let own = try encode([chunk], members: 1, rawLength: chunk.count, into: alone)
        if delta * 5 < own.length * 4 {
            lastUnitMatchless = false
            return (delta, .zstdDelta, .delta)
        }
        if own.encoding != .raw {
            UnsafeMutableRawBufferPointer(rebasing: out[0..<own.length])
                .copyMemory(from: UnsafeRawBufferPointer(rebasing: alone[0..<own.length]))
        }
        return own
    }

    /// Where a chunk is encoded on its own to compare with its delta.
    private let standalone = ScratchBuffer()

    /// The unit's hex-packed form (`HexPacking`), compressed as what is left
    /// asks (the bytes of random BLOBs at level 1, which copies them at memory
    /// speed; text around them at the repository's level), into `out`; nil when
    /// hex covers too little of it. Also what the probe chose for the packed form.
    private func hexPack(
        _ pieces: [UnsafeRawBufferPointer], rawLength: Int, probe: CompressionProbe,
        into out: UnsafeMutableRawBufferPointer
    ) throws -> (Int, CompressionChoice)? {
        var source = pieces.first ?? UnsafeRawBufferPointer(start: nil, count: 0)
        if pieces.count > 1 {
            let room = joined.buffer(rawLength)
            var at = 0
            for p in pieces {
                UnsafeMutableRawBufferPointer(rebasing: room[at..<(at + p.count)]).copyMemory(from: p)
                at += p.count
            }
            source = UnsafeRawBufferPointer(rebasing: room[0..<rawLength])
        }
        let room = packed.buffer(HexPacking.bound(rawLength))
        guard let n = HexPacking.pack(source, into: room) else { return nil }
        let form = UnsafeRawBufferPointer(rebasing: room[0..<n])
        let rest = try probe.choose([form])
        return (try (rest == .full ? compressor : entropyCompressor ?? compressor).compress(form, into: out), rest)
    }
}
