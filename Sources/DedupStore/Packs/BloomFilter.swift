import Foundation

/// A Bloom filter over chunk ids in front of the LMDB index: "no" is certain and
/// costs a few memory reads, so a new chunk skips the index lookup entirely.
///
/// Chunk ids are SHA-256 digests, already uniform, so the k probe positions come
/// from two of the id's words by double hashing. Sized at 10 bits a key (k = 7,
/// under 1% false positives at capacity); it is rebuilt larger from the index when
/// the index outgrows it.
public struct BloomFilter: Equatable {
    public static let hashCount = 7
    public static let bitsPerKey = 10
    static let magic: [UInt8] = Array("DBBBLOOM".utf8)

    private(set) var words: [UInt64]
    public let bitCount: UInt64
    /// The number of keys it was sized for.
    public let capacity: Int
    /// The keys inserted (for sizing: a filter outgrown is rebuilt larger).
    public var count: Int = 0
    /// The index's insert sequence it holds every entry up to
    /// (`ChunkIndex.insertSequence`): a filter behind the index is caught up from
    /// its insert log.
    public var sequence: UInt64 = 0

    public init(capacity: Int) {
        let cap = max(capacity, 1 << 16)
        self.capacity = cap
        let bits = UInt64(cap * Self.bitsPerKey + 63) & ~63
        bitCount = bits
        words = [UInt64](repeating: 0, count: Int(bits / 64))
    }

    public mutating func insert(_ id: ChunkID) {
        let h1 = id.w0, h2 = id.w1 | 1
        var h = h1
        for _ in 0..<Self.hashCount {
            let bit = h % bitCount
            words[Int(bit >> 6)] |= UInt64(1) << (bit & 63)
            h = h &+ h2
        }
    }

    /// False means certainly absent; true means "ask the index".
    public func mightContain(_ id: ChunkID) -> Bool {
        let h2 = id.w1 | 1
        var h = id.w0
        for _ in 0..<Self.hashCount {
            let bit = h % bitCount
            if words[Int(bit >> 6)] & (UInt64(1) << (bit & 63)) == 0 { return false }
            h = h &+ h2
        }
        return true
    }

    /// Serialized form: magic, version (2), k, capacity, count, sequence, bit
    /// count, the bits.
    public func encoded() -> [UInt8] {
        var w = BinaryWriter(capacity: 48 + words.count * 8)
        w.append(Self.magic)
        w.append(UInt32(2))
        w.append(UInt32(Self.hashCount))
        w.append(UInt64(capacity))
        w.append(UInt64(count))
        w.append(sequence)
        w.append(bitCount)
        words.withUnsafeBytes { raw in
            if UInt32(1).littleEndian == 1 {
                w.bytes.append(contentsOf: raw)
            } else {
                for v in words { w.append(v) }
            }
        }
        return w.bytes
    }

    /// Decodes a serialized filter; nil if it is damaged or of another version
    /// (a version-1 filter, without a sequence, is rebuilt once).
    public init?(encoded bytes: [UInt8]) {
        var r = BinaryReader(bytes)
        guard let magic = try? r.raw(8), magic == Self.magic, (try? r.u32()) == 2,
              (try? r.u32()) == UInt32(Self.hashCount),
              let cap = try? r.u64(), let count = try? r.u64(), let sequence = try? r.u64(), let bits = try? r.u64(),
              bits > 0, bits % 64 == 0, let bytes = Int(exactly: bits / 8), r.remaining == bytes,
              let capacity = Int(exactly: cap), let keys = Int(exactly: count) else { return nil }
        self.capacity = capacity
        bitCount = bits
        self.count = keys
        self.sequence = sequence
        var words = [UInt64](repeating: 0, count: Int(bits / 64))
        for i in 0..<words.count { words[i] = (try? r.u64()) ?? 0 }
        self.words = words
    }
}
