import Foundation

/// How a compression unit is stored, as `CompressionProbe` chose it.
public enum CompressionChoice: Int, CaseIterable, Equatable, Sendable {
    /// Stored as it is: not even an entropy coder shrinks it (random or compressed data).
    case raw
    /// Only an entropy coder shrinks it (hex text of random bytes, say): zstd's
    /// fastest level with entropy-coded literals, no costly match search.
    case entropyOnly
    /// Matches pay: the repository's level.
    case full
    /// Mostly hex digits: stored as the bytes they spell (`HexPacking`), then
    /// compressed as what is left asks.
    case hexPacked
    /// A delta against the chunk at the same place in the previous backup of the
    /// series (encoding 5).
    case delta
}

/// Picks how one compression unit is stored from a sample of it (four slices of
/// 4 KiB spread over the unit): its byte entropy, and what zstd level 1 makes of
/// it. The probe costs about 1% of compressing a 1 MiB unit at level 3; data that
/// only an entropy coder can shrink (pg_dump's hex bytea, mariadb-dump's
/// `--hex-blob`) then never pays for a match search that finds nothing, and data
/// that nothing shrinks (JPEGs, compressed dumps) is not compressed at all.
///
/// One probe per worker (its buffers and zstd context are reused for every unit).
final class CompressionProbe {
    static let slices = 4
    static let sliceBytes = 4096
    /// Units smaller than this are compressed at the repository's level unprobed:
    /// the sample would be the whole unit.
    static let minimumUnit = 4 * slices * sliceBytes

    /// Level 1 does not shrink the sample below this share: raw.
    static let rawAbove = 0.97
    /// Level 1 gets within this factor of the sample's order-0 entropy (matches
    /// add little): entropy coding only.
    static let entropyOnlyWithin = 1.07

    /// Hex packing is tried on units whose sample is at least this share long runs
    /// of hex digits.
    static let hexPackingShare = 0.5

    /// The share of long hex runs in the last unit's sample (0 when it was not sampled).
    private(set) var sampleHexShare = 0.0

    private let sample: UnsafeMutableRawBufferPointer
    private let output: UnsafeMutableRawBufferPointer
    private let fast: ZstdCompressor

    init() throws {
        sample = .allocate(byteCount: Self.slices * Self.sliceBytes, alignment: 16)
        output = .allocate(byteCount: ZstdCompressor.bound(Self.slices * Self.sliceBytes), alignment: 16)
        fast = try ZstdCompressor(level: 1)
    }

    deinit {
        sample.deallocate()
        output.deallocate()
    }

    /// The choice for the unit made of `pieces` (back to back, in order).
    func choose(_ pieces: [UnsafeRawBufferPointer]) throws -> CompressionChoice {
        let total = pieces.reduce(0) { $0 + $1.count }
        sampleHexShare = 0
        guard total >= Self.minimumUnit, let sampleBase = sample.baseAddress else { return .full }
        // Slice k starts at k/slices of the way in (bytes copied across piece ends).
        var filled = 0
        for k in 0..<Self.slices {
            var at = total / Self.slices * k
            var left = Self.sliceBytes
            for piece in pieces where left > 0 {
                if at >= piece.count {
                    at -= piece.count
                    continue
                }
                let n = min(left, piece.count - at)
                if let base = piece.baseAddress { (sampleBase + filled).copyMemory(from: base + at, byteCount: n) }
                filled += n
                left -= n
                at = 0
            }
        }
        let taken = UnsafeRawBufferPointer(start: sampleBase, count: filled)
        let compressed = try fast.compress(taken, into: output)
        let ratio = Double(compressed) / Double(max(1, filled))
        // What level 1 shrinks well (SQL text) needs neither look: the entropy
        // only matters when level 1 leaves at least 2 bits a byte, hex runs only
        // when it leaves 35% (hex of random bytes: 50%).
        if ratio >= Self.hexLooksAbove { sampleHexShare = Self.hexRunShare(taken) }
        if ratio < Self.entropyLooksAbove { return .full }
        return Self.decide(sampleBytes: filled, levelOneBytes: compressed, entropyBits: Self.entropy(taken))
    }

    static let entropyLooksAbove = 0.25
    static let hexLooksAbove = 0.35

    /// The share of `bytes` in runs of hex digits long enough for `HexPacking`
    /// (numbers and dates in SQL text are short runs: they do not count).
    static func hexRunShare(_ bytes: UnsafeRawBufferPointer) -> Double {
        let classes = HexTables.classes
        var inRuns = 0, run = 0
        for b in bytes {
            if classes[Int(b)] != 0 {
                run += 1
            } else {
                if run >= HexPacking.minimumRunDigits { inRuns += run }
                run = 0
            }
        }
        if run >= HexPacking.minimumRunDigits { inRuns += run }
        return Double(inRuns) / Double(max(1, bytes.count))
    }

    /// The rule, apart from the sampling (tests pin it).
    static func decide(sampleBytes: Int, levelOneBytes: Int, entropyBits: Double) -> CompressionChoice {
        let ratio = Double(levelOneBytes) / Double(max(1, sampleBytes))
        if ratio >= rawAbove { return .raw }
        if ratio * 8 >= entropyBits / entropyOnlyWithin { return .entropyOnly }
        return .full
    }

    /// Order-0 entropy of `bytes`, in bits per byte (0...8).
    static func entropy(_ bytes: UnsafeRawBufferPointer) -> Double {
        guard !bytes.isEmpty else { return 0 }
        var counts = [Int](repeating: 0, count: 256)
        counts.withUnsafeMutableBufferPointer { c in
            guard let base = c.baseAddress, let p = bytes.baseAddress?.assumingMemoryBound(to: UInt8.self) else { return }
            for i in 0..<bytes.count { base[Int(p[i])] += 1 }
        }
        let n = Double(bytes.count)
        var bits = 0.0
        for count in counts where count > 0 {
            let p = Double(count) / n
            bits -= p * log2(p)
        }
        return bits
    }
}

/// What a backup's new data went through: per choice, the units, their
/// plaintext bytes and what they take in packs (entry headers included).
public struct CompressionUse: Equatable, Sendable {
    public struct Share: Equatable, Sendable {
        public var units = 0
        public var rawBytes: Int64 = 0
        public var storedBytes: Int64 = 0
    }

    public var shares = [Share](repeating: Share(), count: CompressionChoice.allCases.count)

    public init() {}

    public subscript(_ choice: CompressionChoice) -> Share {
        get { shares[choice.rawValue] }
        set { shares[choice.rawValue] = newValue }
    }

    /// True when any unit was stored otherwise than at the repository's level.
    public var adapted: Bool {
        self[.raw].units + self[.entropyOnly].units + self[.hexPacked].units + self[.delta].units > 0
    }
}
