/// XXH64 (seed 0), streaming: a fast 64-bit digest of a whole stream, cheap
/// enough (several GB/s a core) that computing it beside a backup or a restore
/// hardly takes a core from them. The same value as `xxhsum -H64` prints;
/// tools/bench-stream checks that on a small stream. Not a cryptographic digest:
/// it tells a restore that lost, reordered or changed bytes, not an attacker.
struct XXH64 {
    private static let p1: UInt64 = 0x9E37_79B1_85EB_CA87
    private static let p2: UInt64 = 0xC2B2_AE3D_27D4_EB4F
    private static let p3: UInt64 = 0x1656_67B1_9E37_79F9
    private static let p4: UInt64 = 0x85EB_CA77_C2B2_AE63
    private static let p5: UInt64 = 0x27D4_EB2F_1656_67C5

    private var v1 = p1 &+ p2, v2 = p2, v3: UInt64 = 0, v4: UInt64 = 0 &- p1
    private var total: UInt64 = 0
    /// Up to 31 bytes not yet in a 32-byte stripe.
    private var pending = [UInt8](repeating: 0, count: 32)
    private var pendingCount = 0

    @inline(__always) private static func rotl(_ x: UInt64, _ r: UInt64) -> UInt64 { (x << r) | (x >> (64 - r)) }

    @inline(__always) private static func round(_ acc: UInt64, _ input: UInt64) -> UInt64 {
        rotl(acc &+ input &* p2, 31) &* p1
    }

    @inline(__always) private static func merge(_ acc: UInt64, _ v: UInt64) -> UInt64 {
        (acc ^ round(0, v)) &* p1 &+ p4
    }

    /// Folds whole 32-byte stripes from `p`; returns how many bytes it took.
    private mutating func stripes(_ p: UnsafeRawPointer, _ count: Int) -> Int {
        var a = v1, b = v2, c = v3, d = v4
        var off = 0
        while off + 32 <= count {
            a = Self.round(a, UInt64(littleEndian: p.loadUnaligned(fromByteOffset: off, as: UInt64.self)))
            b = Self.round(b, UInt64(littleEndian: p.loadUnaligned(fromByteOffset: off + 8, as: UInt64.self)))
            c = Self.round(c, UInt64(littleEndian: p.loadUnaligned(fromByteOffset: off + 16, as: UInt64.self)))
            d = Self.round(d, UInt64(littleEndian: p.loadUnaligned(fromByteOffset: off + 24, as: UInt64.self)))
            off += 32
        }
        v1 = a; v2 = b; v3 = c; v4 = d
        return off
    }

    mutating func update(_ bytes: UnsafeRawBufferPointer) {
        guard var p = bytes.baseAddress, bytes.count > 0 else { return }
        var count = bytes.count
        total &+= UInt64(count)
        if pendingCount > 0 {
            let take = min(32 - pendingCount, count)
            pending.withUnsafeMutableBytes { dst in
                dst.baseAddress.map { ($0 + pendingCount).copyMemory(from: p, byteCount: take) }
            }
            pendingCount += take
            p += take
            count -= take
            guard pendingCount == 32 else { return }
            let copy = pending
            _ = copy.withUnsafeBytes { raw in raw.baseAddress.map { stripes($0, 32) } }
            pendingCount = 0
        }
        let done = stripes(p, count)
        let rest = count - done
        if rest > 0 {
            pending.withUnsafeMutableBytes { dst in
                dst.baseAddress.map { $0.copyMemory(from: p + done, byteCount: rest) }
            }
            pendingCount = rest
        }
    }

    func finish() -> UInt64 {
        var h: UInt64
        if total >= 32 {
            h = Self.rotl(v1, 1) &+ Self.rotl(v2, 7) &+ Self.rotl(v3, 12) &+ Self.rotl(v4, 18)
            h = Self.merge(h, v1); h = Self.merge(h, v2); h = Self.merge(h, v3); h = Self.merge(h, v4)
        } else {
            h = Self.p5
        }
        h &+= total
        var i = 0
        pending.withUnsafeBytes { raw in
            guard let p = raw.baseAddress else { return }
            while i + 8 <= pendingCount {
                h ^= Self.round(0, UInt64(littleEndian: p.loadUnaligned(fromByteOffset: i, as: UInt64.self)))
                h = Self.rotl(h, 27) &* Self.p1 &+ Self.p4
                i += 8
            }
            if i + 4 <= pendingCount {
                h ^= UInt64(UInt32(littleEndian: p.loadUnaligned(fromByteOffset: i, as: UInt32.self))) &* Self.p1
                h = Self.rotl(h, 23) &* Self.p2 &+ Self.p3
                i += 4
            }
            while i < pendingCount {
                h ^= UInt64(raw[i]) &* Self.p5
                h = Self.rotl(h, 11) &* Self.p1
                i += 1
            }
        }
        h ^= h >> 33; h = h &* Self.p2
        h ^= h >> 29; h = h &* Self.p3
        h ^= h >> 32
        return h
    }
}
