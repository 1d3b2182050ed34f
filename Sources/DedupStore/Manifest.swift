import Foundation

/// What a backup holds: the values of a manifest's `kind`.
public enum BackupKind: String, CaseIterable, Codable, Sendable {
    /// A database dump (backup-db, or `backup` with --db-name or --db-type).
    case dump
    /// A PostgreSQL base backup (pg_basebackup tar).
    case basebackup
    /// Any other file or stream.
    case file
    /// One archived PostgreSQL WAL file.
    case wal
    /// One archived MySQL/MariaDB binlog.
    case binlog
}

/// A committed backup: `manifests/<id>.manifest.json`, readable with jq. The chunk
/// list itself lives beside it in a compact binary object, named and checksummed here.
public struct Manifest: Codable, Equatable, Sendable {
    /// The newest format this build reads: 1 (one stream, `chunkList`) and 2
    /// (several member streams, `members`). A one-stream backup is written in
    /// format 1, exactly as before format 2 existed.
    public static let currentVersion = 2
    /// The format of a backup of one stream.
    public static let oneStreamVersion = 1
    /// The format of a backup of several member streams.
    public static let membersVersion = 2

    /// One stream of a backup: the whole input of a format-1 manifest (named ""),
    /// or one member of a format-2 one (a table, a schema section).
    public struct Member: Codable, Equatable, Sendable {
        /// Unique within the backup; "" for the one stream of format 1.
        public var name: String
        public var size: Int64
        /// The member's SHA-256 when the backup recorded one (keyed when encrypted).
        public var sha256: String?
        public var chunkList: ChunkListRef

        public init(name: String, size: Int64, sha256: String?, chunkList: ChunkListRef) {
            self.name = name; self.size = size; self.sha256 = sha256; self.chunkList = chunkList
        }
    }

    public struct ChunkListRef: Codable, Equatable, Sendable {
        /// Object key of the binary chunk list.
        public var key: String
        public var size: Int64
        /// SHA-256 of the chunk list's header and records (also in its footer).
        public var sha256: String
        public var count: Int
    }

    public struct Stats: Codable, Equatable, Sendable {
        /// Chunks in the backup, and those not stored before it.
        public var chunks: Int
        public var newChunks: Int
        /// Plaintext bytes of the new chunks, and what they take in packs.
        public var newBytes: Int64
        public var storedBytes: Int64
        public var durationSeconds: Double
    }

    /// How a database dump was made (backups of `dedup backup-db`).
    public struct DumpInfo: Codable, Equatable, Sendable {
        /// postgres, mysql, mariadb.
        public var engine: String
        public var serverVersion: String
        /// Where the server was: host:port or the socket.
        public var server: String
        /// The dump tool and its version line, e.g. "pg_dump (PostgreSQL) 15.18".
        public var tool: String
        public var toolVersion: String
        /// custom, plain, ...
        public var format: String
        /// Size of the database as the server reported it before the dump.
        public var databaseSize: Int64?
        /// MySQL/MariaDB: the binary log position (and GTID) of the dump's snapshot,
        /// where a point-in-time recovery replays from.
        public var binlogFile: String?
        public var binlogPosition: UInt64?
        public var gtid: String?
        /// MySQL/MariaDB: the server's @@server_id, which ties the dump to the
        /// binary logs archived from the same server.
        public var serverID: UInt32?
        /// PostgreSQL base backups: where WAL replay starts, on which timeline,
        /// the first WAL file needed, and the cluster's system identifier (which
        /// ties the backup to its archived WAL).
        public var startLSN: String?
        public var timeline: UInt32?
        public var startWALFile: String?
        public var systemIdentifier: String?

        public init(engine: String, serverVersion: String, server: String, tool: String, toolVersion: String,
                    format: String, databaseSize: Int64?, binlogFile: String? = nil, binlogPosition: UInt64? = nil,
                    gtid: String? = nil) {
            self.engine = engine; self.serverVersion = serverVersion; self.server = server
            self.tool = tool; self.toolVersion = toolVersion; self.format = format; self.databaseSize = databaseSize
            self.binlogFile = binlogFile; self.binlogPosition = binlogPosition; self.gtid = gtid
        }
    }

    /// A server's log file kept for point-in-time recovery (kinds wal and binlog):
    /// one manifest per file, under the id `<kind>_<archive name>_<file>`.
    public struct ArchiveInfo: Codable, Equatable, Sendable {
        /// The file's own name (000000010000000000000003, 00000002.history, mariadb-bin.000007).
        public var file: String
        /// PostgreSQL WAL: timeline, and the cluster's system identifier from the
        /// segment's first page (history and backup-label files carry none).
        public var timeline: UInt32?
        public var systemIdentifier: String?
        /// MySQL/MariaDB: the @@server_id of the server that wrote the binlog.
        public var serverID: UInt32?

        public init(file: String, timeline: UInt32? = nil, systemIdentifier: String? = nil, serverID: UInt32? = nil) {
            self.file = file; self.timeline = timeline; self.systemIdentifier = systemIdentifier; self.serverID = serverID
        }
    }

    public var formatVersion: Int
    public var id: String
    /// What the backup is called (the --name, else the database, else the file name).
    public var name: String
    /// dump, file, wal, binlog.
    public var kind: String
    public var database: String?
    public var dbType: String?
    public var dbHost: String?
    public var tags: [String: String]
    /// The backup time (RFC 3339, UTC); --time sets it.
    public var createdAt: String
    /// When the manifest was written.
    public var committedAt: String
    /// Input file path, "stdin", or the input command.
    public var source: String
    public var hostname: String
    public var dbbackupVersion: String
    /// Length of the whole input stream, and its SHA-256 when the backup was
    /// asked for one (`--stream-sha256`; every chunk is verified regardless).
    public var size: Int64
    public var sha256: String?
    /// Format 1: the one stream's chunk list.
    public var chunkList: ChunkListRef?
    /// Format 2: the member streams, each with its own chunk list (`size` is
    /// their sum, `sha256` absent).
    public var members: [Member]?
    public var stats: Stats
    /// Set for database dumps made by dbbackup itself.
    public var dump: DumpInfo?
    /// Set for archived WAL segments and binlogs.
    public var archive: ArchiveInfo?
    /// Encrypted repositories: HMAC-SHA256 under the id key of the id, sizes,
    /// digests and chunk-list reference, so that an edited manifest (pointed at
    /// another backup's list, shortened) is refused.
    public var auth: String?

    public var createdDate: Date? { Timestamps.parse(createdAt) }

    /// Every stream of the backup: format 1 reads as one member named "".
    public var streams: [Member] {
        if let members { return members }
        guard let chunkList else { return [] }
        return [Member(name: "", size: size, sha256: sha256, chunkList: chunkList)]
    }

    /// The stream named `name`; nil (with `name` nil) the only one of a backup of one stream.
    public func stream(_ name: String?) throws -> Member {
        let all = streams
        if let name {
            guard let m = all.first(where: { $0.name == name }) else {
                throw DedupError.memberNotFound(manifest: id, member: name, members: all.map(\.name))
            }
            return m
        }
        guard all.count == 1, let only = all.first else {
            throw DedupError.memberNotFound(manifest: id, member: nil, members: all.map(\.name))
        }
        return only
    }

    /// The kinds of archived log files (one manifest per WAL file or binlog):
    /// not backups of their own, they extend the base backups and dumps.
    public static let logKinds: Set<String> = [BackupKind.wal.rawValue, BackupKind.binlog.rawValue]
    public var isLogFile: Bool { Self.logKinds.contains(kind) }

    public static func key(for id: String) -> String { "manifests/\(id).manifest.json" }
    public static func chunkListKey(for id: String) -> String { "manifests/\(id).chunks" }

    func encoded() throws -> [UInt8] {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return Array(try enc.encode(self)) + [0x0A]
    }

    static func decode(_ bytes: [UInt8], id: String) throws -> Manifest {
        struct Version: Decodable { var formatVersion: Int }
        do {
            // The version first: a newer format may not decode as this one.
            let version = try JSONDecoder().decode(Version.self, from: Data(bytes)).formatVersion
            guard version <= currentVersion else {
                throw DedupError.manifestTooNew(id: id, version: version, supported: currentVersion)
            }
            let m = try JSONDecoder().decode(Manifest.self, from: Data(bytes))
            let shaped = version == oneStreamVersion ? (m.chunkList != nil && m.members == nil)
                : (m.chunkList == nil && !(m.members ?? []).isEmpty && Set(m.streams.map(\.name)).count == m.streams.count
                   && m.streams.reduce(0) { $0 + $1.size } == m.size)
            guard shaped else {
                throw DedupError.manifestCorrupt(id: id, detail: "format \(version) with the streams of another format (chunkList, members)")
            }
            return m
        } catch let e as DedupError {
            throw e
        } catch {
            throw DedupError.manifestCorrupt(id: id, detail: "its manifest JSON does not parse (\(RepositoryConfig.describe(error)))")
        }
    }
}

/// The binary chunk list of a backup (docs/FORMAT.md): a header, 36 bytes a chunk
/// (id and plaintext length), and a footer with counts and a SHA-256. Written and
/// read streaming, so a 1 TB backup never holds its list in memory.
public enum ChunkListFormat {
    public static let headerMagic: [UInt8] = Array("DBBCHNK\0".utf8)
    public static let footerMagic: [UInt8] = Array("DBBCEND\0".utf8)
    public static let headerSize = 16
    public static let recordSize = 36
    public static let footerSize = 56
    /// Version 2 (encrypted repositories): records in sealed blocks of this many.
    public static let recordsPerSealedBlock = 4096

    static func blockAAD(_ index: Int) -> [UInt8] {
        var w = BinaryWriter(capacity: 16)
        w.append(Array("chunks\0\0".utf8))
        w.append(UInt64(index))
        return w.bytes
    }

    /// Bytes between header and footer of a list of `count` records.
    static func bodySize(count: Int, sealed: Bool) -> Int64 {
        guard sealed else { return Int64(count) * Int64(recordSize) }
        let blocks = (count + recordsPerSealedBlock - 1) / recordsPerSealedBlock
        return Int64(count) * Int64(recordSize) + Int64(blocks) * Int64(RepositoryCipher.overhead)
    }
}

public final class ChunkListWriter {
    private let object: ObjectWriter
    private let hasher = SHA256Hasher()
    private var buffer = [UInt8]()
    private let cipher: RepositoryCipher?
    /// Encrypted: the records of the block being filled, and the blocks sealed so far.
    private var pending = [UInt8]()
    private var sealedBlocks = 0
    public private(set) var count = 0
    public private(set) var totalBytes: UInt64 = 0

    /// Starts a list to be committed under `key` (or another free key that
    /// `finish` finds). With `cipher`, the records are sealed in blocks (version 2).
    public init(backend: Backend, key: String, cipher: RepositoryCipher? = nil) throws {
        object = try backend.create(key, ifAbsent: true)
        self.cipher = cipher
        var h = BinaryWriter(capacity: ChunkListFormat.headerSize)
        h.append(ChunkListFormat.headerMagic)
        h.append(UInt32(cipher == nil ? 1 : 2))
        h.append(UInt32(0))
        buffer = h.bytes
        buffer.reserveCapacity(64 * 1024)
    }

    public func append(_ id: ChunkID, length: Int) throws {
        count += 1
        totalBytes += UInt64(length)
        if cipher != nil {
            pending.append(contentsOf: id.bytes)
            withUnsafeBytes(of: UInt32(length).littleEndian) { pending.append(contentsOf: $0) }
            if pending.count == ChunkListFormat.recordsPerSealedBlock * ChunkListFormat.recordSize { try sealPending() }
            return
        }
        buffer.append(contentsOf: id.bytes)
        withUnsafeBytes(of: UInt32(length).littleEndian) { buffer.append(contentsOf: $0) }
        if buffer.count >= 60 * 1024 { try flush() }
    }

    private func sealPending() throws {
        guard let cipher, !pending.isEmpty else { return }
        buffer += try cipher.seal(pending, aad: ChunkListFormat.blockAAD(sealedBlocks))
        sealedBlocks += 1
        pending.removeAll(keepingCapacity: true)
        try flush()
    }

    private func flush() throws {
        hasher.update(buffer)
        try object.write(buffer)
        buffer.removeAll(keepingCapacity: true)
    }

    /// Writes the footer and commits the object under the first free key that
    /// `key(attempt)` gives; returns the key and the object's checksum and size.
    public func finish(key: (Int) throws -> String) throws -> (key: String, sha256: String, size: Int64) {
        try sealPending()
        try flush()
        let digest = hasher.finish()
        var f = BinaryWriter(capacity: ChunkListFormat.footerSize)
        f.append(UInt64(count))
        f.append(totalBytes)
        f.append(digest)
        f.append(ChunkListFormat.footerMagic)
        try object.write(f.bytes)
        for attempt in 0..<1000 {
            let k = try key(attempt)
            if k != object.key { try object.retarget(to: k) }
            do {
                try object.commit()
                return (k, digest.hex, object.bytesWritten)
            } catch let e as DedupError where e.storageFailure == .alreadyExists {
                continue
            }
        }
        throw DedupError.invalidArgument("could not find a free backup id after 1000 attempts")
    }

    public func abort() { object.abort() }

    /// The key the list goes to unless `finish` finds it taken.
    public var key: String { object.key }
}

/// Streams a chunk list, after checking its framing and checksum.
public final class ChunkListReader {
    private let object: ObjectReader
    public let count: Int
    public let totalBytes: UInt64

    private let cipher: RepositoryCipher?

    /// Opens a backup's chunk list in `repository`; in an encrypted one the
    /// manifest's tag is checked first.
    /// The list of the one stream of a backup of one stream (or of `member`).
    public convenience init(repository: Repository, manifest: Manifest, member: String? = nil) throws {
        if repository.config.isEncrypted {
            try repository.requireKey()
            guard let tag = manifest.auth, tag == repository.manifestTag(manifest) else {
                throw DedupError.manifestCorrupt(id: manifest.id, detail: manifest.auth == nil
                    ? "it carries no authentication tag, in an encrypted repository" : "its authentication tag does not match (the manifest was changed)")
            }
        }
        try self.init(backend: repository.backend, manifestID: manifest.id, ref: try manifest.stream(member).chunkList,
                      cipher: repository.cipher)
    }

    /// The list of the one stream of `manifest`, without the tag check.
    public convenience init(backend: Backend, manifest: Manifest, cipher: RepositoryCipher? = nil) throws {
        try self.init(backend: backend, manifestID: manifest.id, ref: try manifest.stream(nil).chunkList, cipher: cipher)
    }

    /// Opens and fully checks the list: size, magic, counts and SHA-256 against
    /// the manifest (reading it once; it is 36 bytes a chunk). `cipher`: the
    /// repository's, when it is encrypted (its lists are sealed).
    public init(backend: Backend, manifestID: String, ref: Manifest.ChunkListRef, cipher: RepositoryCipher? = nil) throws {
        self.cipher = cipher
        guard let size = try backend.size(ref.key) else {
            throw DedupError.manifestCorrupt(id: manifestID, detail: "its chunk list \(ref.key) is missing")
        }
        let object = try backend.openReader(ref.key)
        self.object = object
        let bad = { (d: String) in DedupError.manifestCorrupt(id: manifestID, detail: "chunk list \(ref.key): \(d)") }
        guard size == ref.size, size >= Int64(ChunkListFormat.headerSize + ChunkListFormat.footerSize) else {
            throw bad("size \(size) bytes, the manifest recorded \(ref.size)")
        }
        let recordBytes = size - Int64(ChunkListFormat.headerSize + ChunkListFormat.footerSize)
        let header = try object.read(at: 0, count: ChunkListFormat.headerSize)
        guard Array(header[0..<8]) == ChunkListFormat.headerMagic else { throw bad("bad header magic") }
        var hr = BinaryReader(header, at: 8)
        let version = (try? hr.u32()) ?? 0
        guard version == (cipher == nil ? 1 : 2) else {
            throw bad(version == 2 ? "it is encrypted, in a repository that is not" : version == 1 ? "it is not encrypted, in an encrypted repository"
                                   : "chunk list version \(version) is not known (written by a newer dbbackup?)")
        }
        let footer = try object.read(at: size - Int64(ChunkListFormat.footerSize), count: ChunkListFormat.footerSize)
        var fr = BinaryReader(footer)
        // The footer is not under its own checksum: every number is checked.
        guard let rawCount = try? fr.u64(), let count = Int(exactly: rawCount), count <= Int(recordBytes),
              let total = try? fr.u64(), let digest = try? fr.id(),
              Array(footer[48..<56]) == ChunkListFormat.footerMagic else { throw bad("bad footer") }
        guard ChunkListFormat.bodySize(count: count, sealed: cipher != nil) == recordBytes, count == ref.count,
              digest.hex == ref.sha256 else {
            throw bad("footer does not match the manifest")
        }
        // Check the records' checksum before anything is restored from them.
        let hasher = SHA256Hasher()
        var offset: Int64 = 0
        let end = size - Int64(ChunkListFormat.footerSize)
        var block = [UInt8](repeating: 0, count: 1 << 20)
        while offset < end {
            let n = Int(min(Int64(block.count), end - offset))
            try block.withUnsafeMutableBytes { try object.read(at: offset, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<n])) }
            block.withUnsafeBytes { hasher.update(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            offset += Int64(n)
        }
        guard hasher.finish() == digest else { throw bad("checksum mismatch: the list is damaged") }
        self.count = count
        self.totalBytes = total
    }

    /// Calls `body` with each chunk id and plaintext length, in stream order.
    public func forEach(_ body: (ChunkID, Int) throws -> Void) throws {
        let perBlock = ChunkListFormat.recordsPerSealedBlock
        let sealedBlockSize = perBlock * ChunkListFormat.recordSize + RepositoryCipher.overhead
        var block = [UInt8](repeating: 0, count: perBlock * ChunkListFormat.recordSize)
        var box = [UInt8](repeating: 0, count: cipher == nil ? 0 : sealedBlockSize)
        var index = 0
        while index < count {
            let n = min(perBlock, count - index)
            let bytes = n * ChunkListFormat.recordSize
            if let cipher {
                let blockIndex = index / perBlock
                let boxBytes = bytes + RepositoryCipher.overhead
                try box.withUnsafeMutableBytes {
                    try object.read(at: Int64(ChunkListFormat.headerSize) + Int64(blockIndex) * Int64(sealedBlockSize),
                                    into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<boxBytes]))
                }
                let opened = try box.withUnsafeBytes { b in
                    try block.withUnsafeMutableBytes { try cipher.open(UnsafeRawBufferPointer(rebasing: b[0..<boxBytes]), aad: ChunkListFormat.blockAAD(blockIndex), into: $0) }
                }
                guard opened == bytes else { throw DedupError.authenticationFailed("a chunk list block opened to \(opened) bytes, not \(bytes)") }
            } else {
                try block.withUnsafeMutableBytes {
                    try object.read(at: Int64(ChunkListFormat.headerSize + index * ChunkListFormat.recordSize),
                                    into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<bytes]))
                }
            }
            try block.withUnsafeBytes { raw in
                guard let base = raw.baseAddress else { return }
                for i in 0..<n {
                    let p = base + i * ChunkListFormat.recordSize
                    let id = ChunkID(bytes: p)
                    let length = Int(UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 32, as: UInt32.self)))
                    try body(id, length)
                }
            }
            index += n
        }
    }
}
