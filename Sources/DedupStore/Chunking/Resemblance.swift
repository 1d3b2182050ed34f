import CLMDB
import Foundation

/// A chunk's resemblance sketch: three super-features, each a hash of four
/// features, in the manner of Odess (content-defined sampling) and Finesse: two
/// chunks that share a super-feature are very likely to share most of their
/// bytes, wherever either stands in its stream. A feature is the largest value
/// of one linear transform of the gear hash over the positions the hash itself
/// samples (about one in 128), so an edit moves only the features whose maximum
/// it touches. Costs one gear-hash step a byte.
struct ResemblanceSketch: Sendable {
    static let superFeatures = 3
    static let featuresPerSuper = 4
    private static let featureCount = superFeatures * featuresPerSuper

    var features: (UInt64, UInt64, UInt64)

    /// Nil for a chunk too small to be sampled.
    init?(_ data: UnsafeRawBufferPointer) {
        guard let bytes = data.baseAddress?.assumingMemoryBound(to: UInt8.self), data.count >= Self.minimumLength
        else { return nil }
        var top = Maxima()
        let samples = Self.sample(bytes, count: data.count, into: &top)
        self.init(top, samples: samples)
    }

    /// The sketch of the chunk at `chunk` (positions in the buffer the chunker
    /// searched) from that search's samples (`samples`, ascending, as
    /// `ContentDefinedChunker.findCandidates(_:from:to:into:samples:)` found
    /// them): the same as hashing the chunk's bytes again, for a sixteenth of
    /// the work. Nil for a chunk too small to be sampled.
    init?(samples: UnsafeBufferPointer<ResemblanceSample>, chunk: Range<Int>) {
        guard chunk.count >= Self.minimumLength else { return nil }
        // The chunk's own hash covers a whole window from its 64th byte on;
        // before that it differs from the stream's.
        let from = chunk.lowerBound + 63
        var lo = 0, hi = samples.count
        while lo < hi {
            let m = (lo + hi) / 2
            if samples[m].position < from { lo = m + 1 } else { hi = m }
        }
        var top = Maxima()
        var n = 0
        var i = lo
        while i < samples.count && samples[i].position < chunk.upperBound {
            top.add(samples[i].hash)
            n += 1
            i += 1
        }
        self.init(top, samples: n)
    }

    private init?(_ top: Maxima, samples: Int) {
        guard samples >= 4 else { return nil }
        let best = top.values
        func superFeature(_ j: Int) -> UInt64 {
            var x: UInt64 = 0x9E37_79B9_7F4A_7C15 &* UInt64(j + 1)
            for k in (j * Self.featuresPerSuper)..<((j + 1) * Self.featuresPerSuper) {
                x = (x ^ best[k]) &* 0xBF58_476D_1CE4_E5B9
                x ^= x >> 31
            }
            return x
        }
        features = (superFeature(0), superFeature(1), superFeature(2))
    }

    private static let minimumLength = 256

    /// The largest value of each feature's transform over the samples so far.
    private struct Maxima {
        var values = [UInt64](repeating: 0, count: ResemblanceSketch.featureCount)

        @inline(__always)
        mutating func add(_ h: UInt64) {
            let (m, a) = (ResemblanceSketch.multipliers, ResemblanceSketch.addends)
            values.withUnsafeMutableBufferPointer { top in
                for k in 0..<ResemblanceSketch.featureCount {
                    let t = h &* m[k] &+ a[k]
                    if t > top[k] { top[k] = t }
                }
            }
        }
    }

    var all: [UInt64] { [features.0, features.1, features.2] }

    /// The features' maxima into `top`; returns how many positions were sampled
    /// (every one from the 64th byte on whose hash passes the sampling mask).
    private static func sample(_ bytes: UnsafePointer<UInt8>, count: Int, into top: inout Maxima) -> Int {
        let gear = GearTable.pointer
        var samples = 0
        var h: UInt64 = 0
        for i in 0..<63 { h = (h << 1) &+ gear[Int(bytes[i])] }
        for i in 63..<count {
            h = (h << 1) &+ gear[Int(bytes[i])]
            guard h & ResemblanceSample.mask == 0 else { continue }
            samples &+= 1
            top.add(h)
        }
        return samples
    }

    /// Odd multipliers and addends of the transforms (fixed: sketches stored by
    /// one run are compared by the next).
    nonisolated(unsafe) private static let multipliers: UnsafePointer<UInt64> = constants(seed: 0x5DEE_CE66_D1CE_4E5B) { $0 | 1 }
    nonisolated(unsafe) private static let addends: UnsafePointer<UInt64> = constants(seed: 0x2545_F491_4F6C_DD1D) { $0 }

    private static func constants(seed: UInt64, _ f: (UInt64) -> UInt64) -> UnsafePointer<UInt64> {
        let p = UnsafeMutablePointer<UInt64>.allocate(capacity: featureCount)
        var s = seed
        for k in 0..<featureCount {
            // SplitMix64.
            s &+= 0x9E37_79B9_7F4A_7C15
            var z = s
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            p[k] = f(z ^ (z >> 31))
        }
        return UnsafePointer(p)
    }
}

/// A position of a stream whose gear hash (of the 64 bytes ending there) a
/// resemblance sketch samples: where the hash's top 7 bits are zero, about one
/// position in 128.
public struct ResemblanceSample: Sendable, Equatable {
    static let mask: UInt64 = ~UInt64(0) << 57
    public var position: Int
    public var hash: UInt64
}

/// Super-feature -> the last chunk stored with it: the local cache's table of
/// resemblance (`similar.lmdb` beside the chunk index), where a backup finds a
/// delta base anywhere in the repository, across series and after reordering.
/// A cache: an id whose chunk is gone is skipped (the index no longer has it),
/// and a lost table only costs deltas until new backups fill it again.
final class ResemblanceTable {
    private var env: OpaquePointer?
    private var dbi: MDB_dbi = 0
    private var readTxn: OpaquePointer?

    init(path: String) throws {
        var env: OpaquePointer?
        guard mdb_env_create(&env) == 0 else { throw DedupError.index("cannot create the resemblance table") }
        self.env = env
        mdb_env_set_mapsize(env, 1 << 40)
        // Not synced: a cache that a crash may set back.
        let flags = UInt32(MDB_NOSUBDIR | MDB_NOSYNC | MDB_NOMETASYNC | MDB_NOTLS)
        let rc = mdb_env_open(env, path, flags, 0o644)
        guard rc == 0 else {
            mdb_env_close(env)
            self.env = nil
            throw DedupError.index("open \(path): \(String(cString: mdb_strerror(rc)))")
        }
        var txn: OpaquePointer?
        mdb_txn_begin(env, nil, 0, &txn)
        mdb_dbi_open(txn, nil, 0, &dbi)
        mdb_txn_commit(txn)
    }

    deinit {
        if let readTxn { mdb_txn_abort(readTxn) }
        if let env { mdb_env_close(env) }
    }

    /// The chunk most of `sketch`'s super-features name (the first's on a tie),
    /// other than `own`.
    func similar(to sketch: ResemblanceSketch, own: ChunkID) throws -> ChunkID? {
        if let readTxn {
            guard mdb_txn_renew(readTxn) == 0 else { throw DedupError.index("resemblance table: renew") }
        } else {
            var txn: OpaquePointer?
            guard mdb_txn_begin(env, nil, UInt32(MDB_RDONLY), &txn) == 0 else {
                throw DedupError.index("resemblance table: begin")
            }
            readTxn = txn
        }
        defer { if let readTxn { mdb_txn_reset(readTxn) } }
        var found = [ChunkID]()
        for var feature in sketch.all {
            withUnsafeMutableBytes(of: &feature) { k in
                var mk = MDB_val(mv_size: 8, mv_data: k.baseAddress)
                var mv = MDB_val()
                if mdb_get(readTxn, dbi, &mk, &mv) == 0, mv.mv_size == 32, let p = mv.mv_data {
                    let id = ChunkID(bytes: p)
                    if id != own { found.append(id) }
                }
            }
        }
        // The id named most often; a tie goes to the one found first.
        var best: ChunkID?
        var bestCount = 0
        for id in found {
            let count = found.count(where: { $0 == id })
            if count > bestCount { (best, bestCount) = (id, count) }
        }
        return best
    }

    /// How many super-features the table holds.
    func featureCount() throws -> Int {
        var txn: OpaquePointer?
        guard mdb_txn_begin(env, nil, UInt32(MDB_RDONLY), &txn) == 0 else {
            throw DedupError.index("resemblance table: begin")
        }
        defer { mdb_txn_abort(txn) }
        var st = MDB_stat()
        guard mdb_stat(txn, dbi, &st) == 0 else { throw DedupError.index("resemblance table: stat") }
        return Int(st.ms_entries)
    }

    /// Records the chunks of a committed pack under their super-features.
    func insert(_ entries: [(ResemblanceSketch, ChunkID)]) throws {
        guard !entries.isEmpty else { return }
        var txn: OpaquePointer?
        guard mdb_txn_begin(env, nil, 0, &txn) == 0 else { throw DedupError.index("resemblance table: begin") }
        for (sketch, id) in entries {
            for var feature in sketch.all {
                var value = id.bytes
                let rc = withUnsafeMutableBytes(of: &feature) { k in
                    value.withUnsafeMutableBytes { v in
                        var mk = MDB_val(mv_size: 8, mv_data: k.baseAddress)
                        var mv = MDB_val(mv_size: 32, mv_data: v.baseAddress)
                        return mdb_put(txn, dbi, &mk, &mv, 0)
                    }
                }
                if rc != 0 {
                    mdb_txn_abort(txn)
                    throw DedupError.index("resemblance table: \(String(cString: mdb_strerror(rc)))")
                }
            }
        }
        guard mdb_txn_commit(txn) == 0 else { throw DedupError.index("resemblance table: commit") }
    }
}
