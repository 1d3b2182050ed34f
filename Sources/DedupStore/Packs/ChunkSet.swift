import CLMDB
import Foundation

/// A set of chunk ids on disk (a scratch LMDB file), for garbage collection's
/// mark phase: memory stays bounded however many chunks the repository holds.
/// Inserts are buffered and written in sorted batches without fsync: the set is
/// thrown away after use, and a crash simply leaves a file the next gc replaces.
public final class ChunkSet {
    private var env: OpaquePointer?
    private var dbi: MDB_dbi = 0
    let path: String
    private var pending: [ChunkID] = []
    private let batch = 100_000
    private var readTxn: OpaquePointer?

    public init(path: String) throws {
        self.path = path
        unlink(path)
        unlink(path + "-lock")
        var env: OpaquePointer?
        guard mdb_env_create(&env) == 0 else { throw DedupError.index("cannot create scratch set") }
        self.env = env
        mdb_env_set_mapsize(env, 1 << 40)
        let flags = UInt32(MDB_NOSUBDIR | MDB_NOSYNC | MDB_NOMETASYNC | MDB_WRITEMAP | MDB_NOTLS)
        let rc = mdb_env_open(env, path, flags, 0o600)
        guard rc == 0 else {
            mdb_env_close(env)
            self.env = nil
            throw DedupError.index("open scratch set \(path): \(String(cString: mdb_strerror(rc)))")
        }
        var txn: OpaquePointer?
        mdb_txn_begin(env, nil, 0, &txn)
        mdb_dbi_open(txn, nil, 0, &dbi)
        mdb_txn_commit(txn)
    }

    deinit {
        if let readTxn { mdb_txn_abort(readTxn) }
        if let env { mdb_env_close(env) }
        unlink(path)
        unlink(path + "-lock")
    }

    public func insert(_ id: ChunkID) throws {
        pending.append(id)
        if pending.count >= batch { try flush() }
    }

    /// Writes buffered inserts; call before `contains`.
    public func flush() throws {
        guard !pending.isEmpty else { return }
        pending.sort()
        if let readTxn { mdb_txn_abort(readTxn); self.readTxn = nil }
        var txn: OpaquePointer?
        var rc = mdb_txn_begin(env, nil, 0, &txn)
        guard rc == 0 else { throw DedupError.index("scratch set: \(String(cString: mdb_strerror(rc)))") }
        var key = [UInt8](repeating: 0, count: 33)
        for id in pending {
            key = id.bytes + [0]
            rc = key.withUnsafeMutableBytes { k in
                var mk = MDB_val(mv_size: 32, mv_data: k.baseAddress)
                // An empty value; LMDB wants a pointer anyway.
                var mv = MDB_val(mv_size: 0, mv_data: k.baseAddress.map { $0 + 32 })
                return mdb_put(txn, dbi, &mk, &mv, 0)
            }
            if rc != 0 {
                mdb_txn_abort(txn)
                throw DedupError.index("scratch set \(path): \(String(cString: mdb_strerror(rc)))")
            }
        }
        rc = mdb_txn_commit(txn)
        guard rc == 0 else { throw DedupError.index("scratch set \(path): \(String(cString: mdb_strerror(rc)))") }
        pending.removeAll(keepingCapacity: true)
    }

    public func contains(_ id: ChunkID) throws -> Bool {
        if readTxn == nil {
            var txn: OpaquePointer?
            let rc = mdb_txn_begin(env, nil, UInt32(MDB_RDONLY), &txn)
            guard rc == 0 else { throw DedupError.index("scratch set: \(String(cString: mdb_strerror(rc)))") }
            readTxn = txn
        }
        var key = id.bytes
        return key.withUnsafeMutableBytes { k in
            var mk = MDB_val(mv_size: 32, mv_data: k.baseAddress)
            var mv = MDB_val()
            return mdb_get(readTxn, dbi, &mk, &mv) == 0
        }
    }

    /// Calls `body` with each id, in order (after `flush`).
    public func forEach(_ body: (ChunkID) throws -> Void) throws {
        var txn: OpaquePointer?
        var rc = mdb_txn_begin(env, nil, UInt32(MDB_RDONLY), &txn)
        guard rc == 0 else { throw DedupError.index("scratch set: \(String(cString: mdb_strerror(rc)))") }
        defer { mdb_txn_abort(txn) }
        var cursor: OpaquePointer?
        rc = mdb_cursor_open(txn, dbi, &cursor)
        guard rc == 0 else { throw DedupError.index("scratch set: \(String(cString: mdb_strerror(rc)))") }
        defer { mdb_cursor_close(cursor) }
        var k = MDB_val(), v = MDB_val()
        rc = mdb_cursor_get(cursor, &k, &v, MDB_FIRST)
        while rc == 0 {
            if k.mv_size == 32, let p = k.mv_data { try body(ChunkID(bytes: UnsafeRawPointer(p))) }
            rc = mdb_cursor_get(cursor, &k, &v, MDB_NEXT)
        }
        guard rc == MDB_NOTFOUND else { throw DedupError.index("scratch set: \(String(cString: mdb_strerror(rc)))") }
    }

    /// The number of distinct ids (after `flush`).
    public func count() throws -> Int {
        var txn: OpaquePointer?
        guard mdb_txn_begin(env, nil, UInt32(MDB_RDONLY), &txn) == 0 else { return 0 }
        defer { mdb_txn_abort(txn) }
        var st = MDB_stat()
        mdb_stat(txn, dbi, &st)
        return st.ms_entries
    }
}
