import CLMDB
import Foundation

/// The chunk index: chunk id -> pack, offset and lengths, in LMDB, plus the set of
/// packs it has read. It is a cache of the pack trailers: the repository rebuilds
/// it from the packs alone, and catches it up with packs it has not seen.
public final class ChunkIndex {
    private var env: OpaquePointer?
    private var chunks: MDB_dbi = 0
    private var packs: MDB_dbi = 0
    /// Small facts about the cache itself (when it last listed every pack, how
    /// many entries were ever inserted).
    private var meta: MDB_dbi = 0
    /// The insert log: at each insert's sequence number (big-endian u64, the
    /// count of entries inserted before it), the ids it inserted. A saved Bloom
    /// filter records the sequence it holds everything up to, and is caught up
    /// from here instead of rebuilt from the whole index (`Repository.bloom()`).
    private var inserted: MDB_dbi = 0
    public let path: String
    /// Reused read transaction for lookups (reset/renewed around each one).
    private var readTxn: OpaquePointer?
    private let readLock = NSLock()

    static let locationSize = 16 + 8 + 4 + 4 + 1 + 1 + 4
    /// A delta's location: the base's id after it.
    static let deltaLocationSize = locationSize + 32

    /// False only in tools that build throwaway repositories (dbbackup-gen): commits
    /// are then not synced to disk (LMDB's MDB_NOSYNC).
    nonisolated(unsafe) public static var syncsCommits = true

    public init(path: String) throws {
        self.path = path
        var env: OpaquePointer?
        try check(mdb_env_create(&env), "create environment")
        self.env = env
        do {
            try check(mdb_env_set_maxdbs(env, 4), "set max dbs")
            // Virtual address space only; the file grows with the data (1 TiB is
            // room for billions of chunks).
            try check(mdb_env_set_mapsize(env, 1 << 40), "set map size")
            let flags = MDB_NOSUBDIR | MDB_NOTLS | (Self.syncsCommits ? 0 : MDB_NOSYNC)
            try check(mdb_env_open(env, path, UInt32(flags), 0o644), "open \(path)")
            try write { txn in
                // "-v2": locations with a group offset. A cache written by an older
                // dbbackup has other tables, so its packs are read in again.
                try check(mdb_dbi_open(txn, "chunks-v2", UInt32(MDB_CREATE), &chunks), "open chunks table")
                try check(mdb_dbi_open(txn, "packs-v2", UInt32(MDB_CREATE), &packs), "open packs table")
                try check(mdb_dbi_open(txn, "meta", UInt32(MDB_CREATE), &meta), "open meta table")
                try check(mdb_dbi_open(txn, "inserted", UInt32(MDB_CREATE), &inserted), "open insert log")
            }
        } catch {
            mdb_env_close(env)
            self.env = nil
            throw error
        }
    }

    deinit {
        if let readTxn { mdb_txn_abort(readTxn) }
        if let env { mdb_env_close(env) }
    }

    private func check(_ rc: Int32, _ what: String) throws {
        if rc != 0 {
            throw DedupError.index("\(what): \(String(cString: mdb_strerror(rc))) (\(path))")
        }
    }

    /// Runs `body` in a write transaction and commits it (durably) if it returns.
    public func write(_ body: (OpaquePointer) throws -> Void) throws {
        var txn: OpaquePointer?
        try check(mdb_txn_begin(env, nil, 0, &txn), "begin write")
        guard let txn else { throw DedupError.index("no transaction") }
        do {
            try body(txn)
        } catch {
            mdb_txn_abort(txn)
            throw error
        }
        try check(mdb_txn_commit(txn), "commit")
    }

    /// Records every entry of a durable pack, and the pack itself, in one
    /// transaction, with the ids in the insert log.
    public func insert(pack: PackID, size: Int64, entries: [PackEntry]) throws {
        try write { txn in
            try putChunks(txn, entries)
            var pv = BinaryWriter(capacity: 16)
            pv.append(UInt64(size)); pv.append(UInt64(entries.count))
            let old = try storedPackSize(txn, pack)
            try put(txn, packs, Self.packKey(pack), pv.bytes)
            try adjustPackTotals(txn, packs: old == nil ? 1 : 0, bytes: size - (old ?? 0))
            guard !entries.isEmpty else { return }
            let seq = try metaValue(txn, Self.insertSeqKey) ?? 0
            var ids = BinaryWriter(capacity: entries.count * 32)
            for e in entries { ids.append(e.id) }
            try put(txn, inserted, Self.bigEndian(seq), ids.bytes)
            try setMetaValue(txn, Self.insertSeqKey, seq + UInt64(entries.count))
        }
    }

    private static let insertSeqKey = "insert-seq"

    private static func bigEndian(_ v: UInt64) -> [UInt8] { withUnsafeBytes(of: v.bigEndian) { Array($0) } }

    private func metaValue(_ txn: OpaquePointer, _ name: String) throws -> UInt64? {
        var key = Array(name.utf8)
        return try key.withUnsafeMutableBytes { k in
            var mk = MDB_val(mv_size: k.count, mv_data: k.baseAddress)
            var mv = MDB_val()
            let rc = mdb_get(txn, meta, &mk, &mv)
            if rc == MDB_NOTFOUND { return nil }
            try check(rc, "get meta")
            guard mv.mv_size == 8, let p = mv.mv_data else { return nil }
            return UInt64(littleEndian: p.loadUnaligned(as: UInt64.self))
        }
    }

    private func setMetaValue(_ txn: OpaquePointer, _ name: String, _ value: UInt64) throws {
        var w = BinaryWriter(capacity: 8)
        w.append(value)
        try put(txn, meta, Array(name.utf8), w.bytes)
    }

    /// The insert sequence: how many entries were ever inserted (never decreases).
    public func insertSequence() throws -> UInt64 {
        var result: UInt64 = 0
        try read { txn in result = try metaValue(txn, Self.insertSeqKey) ?? 0 }
        return result
    }

    /// Calls `body` with every id inserted from sequence `start` on, in order, and
    /// returns the sequence reached; nil when the log does not reach back to
    /// `start` (pruned, or written by an older dbbackup): the caller rebuilds.
    public func forEachInserted(from start: UInt64, _ body: (ChunkID) -> Void) throws -> UInt64? {
        var reached: UInt64? = start
        try read { txn in
            var expected = start
            try walk(txn, inserted, from: Self.bigEndian(start)) { _, k, v in
                guard k.count == 8, let kp = k.baseAddress, let vp = v.baseAddress, v.count % 32 == 0,
                      UInt64(bigEndian: kp.loadUnaligned(as: UInt64.self)) == expected else {
                    reached = nil
                    return false
                }
                let n = v.count / 32
                for i in 0..<n { body(ChunkID(bytes: vp + i * 32)) }
                expected += UInt64(n)
                return true
            }
            // The log ends where the sequence is (both are written in one
            // transaction); a start past it is a filter of another index.
            if reached != nil {
                reached = expected == (try metaValue(txn, Self.insertSeqKey) ?? 0) ? expected : nil
            }
        }
        return reached
    }

    /// The sequence of the oldest insert the log holds (nil: it is empty).
    public func firstInserted() throws -> UInt64? {
        var result: UInt64?
        try read { txn in
            try walk(txn, inserted) { _, k, _ in
                if k.count == 8, let kp = k.baseAddress { result = UInt64(bigEndian: kp.loadUnaligned(as: UInt64.self)) }
                return false
            }
        }
        return result
    }

    /// Drops the insert log before sequence `end` (what a saved filter holds).
    public func pruneInserted(before end: UInt64) throws {
        try write { txn in
            try walk(txn, inserted) { cursor, k, _ in
                guard k.count == 8, let kp = k.baseAddress,
                      UInt64(bigEndian: kp.loadUnaligned(as: UInt64.self)) < end else { return false }
                try check(mdb_cursor_del(cursor, 0), "delete")
                return true
            }
        }
    }

    private func putChunks(_ txn: OpaquePointer, _ entries: [PackEntry]) throws {
        for e in entries { try put(txn, chunks, e.id.bytes, Self.encode(e.location)) }
    }

    /// A pack's key in the packs table: its two halves, little-endian.
    private static func packKey(_ pack: PackID) -> [UInt8] {
        var w = BinaryWriter(capacity: 16)
        w.append(pack.hi); w.append(pack.lo)
        return w.bytes
    }

    private func put(_ txn: OpaquePointer, _ dbi: MDB_dbi, _ key: [UInt8], _ value: [UInt8]) throws {
        var key = key, value = value
        try key.withUnsafeMutableBytes { k in
            try value.withUnsafeMutableBytes { v in
                var mk = MDB_val(mv_size: k.count, mv_data: k.baseAddress)
                var mv = MDB_val(mv_size: v.count, mv_data: v.baseAddress)
                try check(mdb_put(txn, dbi, &mk, &mv, 0), "put")
            }
        }
    }

    private static func encode(_ l: ChunkLocation) -> [UInt8] {
        var w = BinaryWriter(capacity: deltaLocationSize)
        w.append(l.pack.hi); w.append(l.pack.lo); w.append(l.offset)
        w.append(l.rawLength); w.append(l.storedLength); w.append(l.encoding); w.append(l.flags)
        w.append(l.groupOffset)
        if let base = l.base { w.append(base) }
        return w.bytes
    }

    /// Reads a location straight from LMDB's memory: no copy, no allocation (every
    /// dedup lookup and every scanned entry goes through here).
    private static func decode(_ v: UnsafeRawBufferPointer) -> ChunkLocation? {
        guard v.count == locationSize || v.count == deltaLocationSize, let p = v.baseAddress else { return nil }
        func u64(_ at: Int) -> UInt64 { UInt64(littleEndian: p.loadUnaligned(fromByteOffset: at, as: UInt64.self)) }
        func u32(_ at: Int) -> UInt32 { UInt32(littleEndian: p.loadUnaligned(fromByteOffset: at, as: UInt32.self)) }
        return ChunkLocation(pack: PackID(hi: u64(0), lo: u64(8)), offset: u64(16), rawLength: u32(24),
                             storedLength: u32(28), encoding: v[32], flags: v[33], groupOffset: u32(34),
                             base: v.count == deltaLocationSize ? ChunkID(bytes: p + locationSize) : nil)
    }

    private static func decode(_ v: MDB_val) -> ChunkLocation? {
        decode(UnsafeRawBufferPointer(start: v.mv_data, count: v.mv_size))
    }

    /// Where a chunk is stored, or nil if the index does not know it.
    public func lookup(_ id: ChunkID) throws -> ChunkLocation? {
        // The reused transaction is one thread's at a time (restores of several
        // members run at once).
        readLock.lock()
        defer { readLock.unlock() }
        if let readTxn {
            try check(mdb_txn_renew(readTxn), "renew read")
        } else {
            var txn: OpaquePointer?
            try check(mdb_txn_begin(env, nil, UInt32(MDB_RDONLY), &txn), "begin read")
            readTxn = txn
        }
        defer { if let readTxn { mdb_txn_reset(readTxn) } }
        var key: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        return try withUnsafeMutableBytes(of: &key) { k in
            guard let kp = k.baseAddress else { return nil }
            id.store(to: kp)
            var mk = MDB_val(mv_size: 32, mv_data: kp)
            var mv = MDB_val()
            let rc = mdb_get(readTxn, chunks, &mk, &mv)
            if rc == MDB_NOTFOUND { return nil }
            try check(rc, "get")
            guard let loc = Self.decode(mv) else {
                throw DedupError.index("damaged entry for chunk \(id.shortHex); run `dbbackup dedup index rebuild`")
            }
            return loc
        }
    }

    /// The number of chunks indexed.
    public func chunkCount() throws -> Int {
        var result = 0
        try read { txn in
            var st = MDB_stat()
            try check(mdb_stat(txn, chunks, &st), "stat")
            result = st.ms_entries
        }
        return result
    }

    /// The size a pack had when the index read it, or nil for a pack it has not read.
    public func packSize(_ pack: PackID) throws -> Int64? {
        var result: Int64?
        try read { txn in result = try storedPackSize(txn, pack) }
        return result
    }

    /// When the index was last brought in step with a full listing of the packs
    /// (nil: never, or by a dbbackup that did not record it).
    public func lastFullSync() throws -> Date? {
        var result: Date?
        try read { txn in
            if let ms = try metaValue(txn, Self.fullSyncKey) {
                result = Date(timeIntervalSince1970: Double(Int64(bitPattern: ms)) / 1000)
            }
        }
        return result
    }

    /// Records when a full listing of the packs began that the index is now in step with.
    public func setLastFullSync(_ date: Date) throws {
        let ms = UInt64(bitPattern: Int64((date.timeIntervalSince1970 * 1000).rounded()))
        try write { txn in try setMetaValue(txn, Self.fullSyncKey, ms) }
    }

    private static let fullSyncKey = "full-sync"

    /// The packs the index has read, with their sizes and entry counts.
    public func indexedPacks() throws -> [PackID: (size: Int64, entries: Int)] {
        var out = [PackID: (size: Int64, entries: Int)]()
        try scan(packs) { k, v in
            guard k.count == 16, v.count == 16, let kp = k.baseAddress, let vp = v.baseAddress else { return }
            func u64(_ p: UnsafeRawPointer, _ at: Int) -> UInt64 {
                UInt64(littleEndian: p.loadUnaligned(fromByteOffset: at, as: UInt64.self))
            }
            out[PackID(hi: u64(kp, 0), lo: u64(kp, 8))] = (
                Int64(bitPattern: u64(vp, 0)), Int(truncatingIfNeeded: u64(vp, 8))
            )
        }
        return out
    }

    /// How many packs the index has read, and their bytes. Kept in `meta` in the transactions that change the packs table; an index
    /// without them (an older dbbackup's) counts once by one pass over the table.
    public func packTotals() throws -> (packs: Int, bytes: Int64) {
        var kept: (Int, Int64)?
        try read { txn in
            if let n = try metaValue(txn, Self.packCountKey), let b = try metaValue(txn, Self.packBytesKey) {
                kept = (Int(n), Int64(bitPattern: b))
            }
        }
        if let kept { return kept }
        var result = (packs: 0, bytes: Int64(0))
        try write { txn in
            var packs = 0, bytes: Int64 = 0
            try walk(txn, self.packs) { _, _, v in
                if v.count == 16, let vp = v.baseAddress {
                    packs += 1
                    bytes += Int64(bitPattern: UInt64(littleEndian: vp.loadUnaligned(as: UInt64.self)))
                }
                return true
            }
            try setMetaValue(txn, Self.packCountKey, UInt64(packs))
            try setMetaValue(txn, Self.packBytesKey, UInt64(bitPattern: bytes))
            result = (packs, bytes)
        }
        return result
    }

    private static let packCountKey = "pack-count", packBytesKey = "pack-bytes"

    /// Changes the kept pack totals, if they are kept yet.
    private func adjustPackTotals(_ txn: OpaquePointer, packs: Int, bytes: Int64) throws {
        guard let n = try metaValue(txn, Self.packCountKey), let b = try metaValue(txn, Self.packBytesKey) else { return }
        try setMetaValue(txn, Self.packCountKey, UInt64(max(0, Int64(n) + Int64(packs))))
        try setMetaValue(txn, Self.packBytesKey, UInt64(bitPattern: Int64(bitPattern: b) + bytes))
    }

    /// A pack's recorded size inside a transaction (nil: not indexed).
    private func storedPackSize(_ txn: OpaquePointer, _ pack: PackID) throws -> Int64? {
        try Self.packKey(pack).withUnsafeBytes { raw in
            var mk = MDB_val(mv_size: raw.count, mv_data: UnsafeMutableRawPointer(mutating: raw.baseAddress))
            var mv = MDB_val()
            let rc = mdb_get(txn, packs, &mk, &mv)
            if rc == MDB_NOTFOUND { return nil }
            try check(rc, "get pack")
            guard mv.mv_size == 16, let p = mv.mv_data else { return nil }
            return Int64(bitPattern: UInt64(littleEndian: p.loadUnaligned(as: UInt64.self)))
        }
    }

    /// Calls `body` with every indexed chunk id and location, in id order.
    /// The bases down the chain of the delta `id` at `location`, nearest first,
    /// each with its location (nil when not indexed, which ends the chain): at
    /// most `DeltaFormat.maxChainLength`, and none once the chain comes back to
    /// `id`. Nothing for a chunk that is no delta.
    func forEachBase(of id: ChunkID, at location: ChunkLocation?, _ body: (ChunkID, ChunkLocation?) throws -> Void)
        throws
    {
        var current = location
        for _ in 0..<DeltaFormat.maxChainLength {
            guard let base = current?.base, base != id else { return }
            current = try lookup(base)
            try body(base, current)
        }
    }

    public func forEachChunk(_ body: (ChunkID, ChunkLocation) throws -> Void) throws {
        try scan(chunks) { k, v in
            guard k.count == 32, let kp = k.baseAddress, let loc = Self.decode(v) else { return }
            try body(ChunkID(bytes: kp), loc)
        }
    }

    private func read(_ body: (OpaquePointer) throws -> Void) throws {
        var txn: OpaquePointer?
        try check(mdb_txn_begin(env, nil, UInt32(MDB_RDONLY), &txn), "begin read")
        guard let txn else { throw DedupError.index("no transaction") }
        defer { mdb_txn_abort(txn) }
        try body(txn)
    }

    /// Calls `body` with each key and value in LMDB's memory (valid during the call).
    private func scan(_ dbi: MDB_dbi, _ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) throws -> Void) throws {
        try read { txn in
            try walk(txn, dbi) { _, k, v in
                try body(k, v)
                return true
            }
        }
    }

    /// Walks a table with a cursor in `txn`, from its first key (or the first at or
    /// after `start`), calling `body` with the cursor and each key and value in
    /// LMDB's memory until it returns false. `body` may delete the current entry:
    /// after `mdb_cursor_del` LMDB's MDB_NEXT yields the entry that followed it
    /// (tested: none is skipped).
    private func walk(_ txn: OpaquePointer, _ dbi: MDB_dbi, from start: [UInt8]? = nil,
                      _ body: (OpaquePointer?, UnsafeRawBufferPointer, UnsafeRawBufferPointer) throws -> Bool) throws {
        var cursor: OpaquePointer?
        try check(mdb_cursor_open(txn, dbi, &cursor), "open cursor")
        defer { mdb_cursor_close(cursor) }
        var startKey = start ?? []
        try startKey.withUnsafeMutableBytes { sb in
            var k = MDB_val(mv_size: sb.count, mv_data: sb.baseAddress), v = MDB_val()
            var rc = mdb_cursor_get(cursor, &k, &v, start == nil ? MDB_FIRST : MDB_SET_RANGE)
            while rc == 0 {
                guard try body(cursor, UnsafeRawBufferPointer(start: k.mv_data, count: k.mv_size),
                               UnsafeRawBufferPointer(start: v.mv_data, count: v.mv_size)) else { return }
                rc = mdb_cursor_get(cursor, &k, &v, MDB_NEXT)
            }
            if rc != MDB_NOTFOUND { try check(rc, "cursor") }
        }
    }

    /// Forgets packs: their records, and each of their `ids` whose location is in
    /// that pack (a chunk that was copied elsewhere keeps its newer location), in
    /// one transaction.
    public func remove(packs: [(PackID, [ChunkID])]) throws {
        try write { txn in
            for (pack, ids) in packs {
                for id in ids { try deleteChunk(txn, id, ifIn: pack) }
                try deletePackRecord(txn, pack)
            }
        }
    }

    /// Deletes a chunk's entry if it points into `pack`.
    private func deleteChunk(_ txn: OpaquePointer, _ id: ChunkID, ifIn pack: PackID) throws {
        var key = id.bytes
        try key.withUnsafeMutableBytes { k in
            var mk = MDB_val(mv_size: 32, mv_data: k.baseAddress)
            var mv = MDB_val()
            let rc = mdb_get(txn, chunks, &mk, &mv)
            if rc == MDB_NOTFOUND { return }
            try check(rc, "get")
            guard Self.decode(mv)?.pack == pack else { return }
            try check(mdb_del(txn, chunks, &mk, nil), "delete")
        }
    }

    private func deletePackRecord(_ txn: OpaquePointer, _ pack: PackID) throws {
        if let old = try storedPackSize(txn, pack) { try adjustPackTotals(txn, packs: -1, bytes: -old) }
        try Self.packKey(pack).withUnsafeBytes { raw in
            var mk = MDB_val(mv_size: raw.count, mv_data: UnsafeMutableRawPointer(mutating: raw.baseAddress))
            let rc = mdb_del(txn, packs, &mk, nil)
            if rc != MDB_NOTFOUND { try check(rc, "delete pack") }
        }
    }

    /// Points chunks at the given copies (gc, when the index's copy is unusable).
    public func point(_ entries: [PackEntry]) throws {
        guard !entries.isEmpty else { return }
        try write { txn in try putChunks(txn, entries) }
    }

    /// Forgets whole packs (gone, or not the size the index recorded): their records
    /// and every chunk entry that points into them. One scan of the index.
    @discardableResult
    public func forget(packs doomed: Set<PackID>) throws -> Int {
        guard !doomed.isEmpty else { return 0 }
        var removed = 0
        try write { txn in
            try walk(txn, chunks) { cursor, _, v in
                if let loc = Self.decode(v), doomed.contains(loc.pack) {
                    try check(mdb_cursor_del(cursor, 0), "delete")
                    removed += 1
                }
                return true
            }
            for pack in doomed { try deletePackRecord(txn, pack) }
        }
        return removed
    }

    /// Drops single chunk entries (found corrupt), if they still point into `pack`,
    /// so that the next backup of the same data stores them again.
    public func dropChunks(_ ids: [ChunkID], inPack pack: PackID) throws {
        try write { txn in
            for id in ids { try deleteChunk(txn, id, ifIn: pack) }
        }
    }

    /// Removes every chunk and pack record (before a rebuild).
    public func clear() throws {
        try write { txn in
            try check(mdb_drop(txn, chunks, 0), "clear chunks")
            try check(mdb_drop(txn, packs, 0), "clear packs")
            try setMetaValue(txn, Self.packCountKey, 0)
            try setMetaValue(txn, Self.packBytesKey, 0)
            // The insert sequence continues (saved filters stay comparable); the
            // log goes: a filter saved before the clear is not caught up.
            try check(mdb_drop(txn, inserted, 0), "clear insert log")
        }
    }
}
