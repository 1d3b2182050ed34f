import Foundation

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
                throw DedupError.manifestCorrupt(
                    id: manifest.id,
                    detail: manifest.auth == nil
                        ? "it carries no authentication tag, in an encrypted repository"
                        : "its authentication tag does not match (the manifest was changed)")
            }
        }
        try self.init(backend: repository.backend, manifestID: manifest.id, ref: try manifest.stream(member).chunkList,
                      cipher: repository.cipher)
    }

    /// The list of the one stream of `manifest`, without the tag check.
    public convenience init(backend: Backend, manifest: Manifest, cipher: RepositoryCipher? = nil) throws {
        try self.init(
            backend: backend, manifestID: manifest.id, ref: try manifest.stream(nil).chunkList, cipher: cipher)
    }

    /// Opens and fully checks the list: size, magic, counts and SHA-256 against
    /// the manifest (reading it once; it is 36 bytes a chunk). `cipher`: the
    /// repository's, when it is encrypted (its lists are sealed).
    public init(
        backend: Backend, manifestID: String, ref: Manifest.ChunkListRef, cipher: RepositoryCipher? = nil
    ) throws {
        self.cipher = cipher
        let object: ObjectReader
        do {
            object = try backend.openReader(ref.key)
        } catch let e as DedupError where e.storageFailure == .notFound {
            throw DedupError.manifestCorrupt(id: manifestID, detail: "its chunk list \(ref.key) is missing")
        }
        let size = object.size
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
            throw bad(
                version == 2
                    ? "it is encrypted, in a repository that is not"
                    : version == 1
                        ? "it is not encrypted, in an encrypted repository"
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
            try block.withUnsafeMutableBytes {
                try object.read(at: offset, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<n]))
            }
            block.withUnsafeBytes { hasher.update(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            offset += Int64(n)
        }
        guard hasher.finish() == digest else { throw bad("checksum mismatch: the list is damaged") }
        self.count = count
        self.totalBytes = total
    }

    /// Calls `body` with each chunk id and plaintext length, in stream order.
    public func forEach(_ body: (ChunkID, Int) throws -> Void) throws {
        let cursor = ChunkListCursor(self)
        while let (id, length) = try cursor.next() { try body(id, length) }
    }

    /// Reads records `index..<(index + n)` (within one sealed block) into `block`.
    fileprivate func readRecords(from index: Int, count n: Int, into block: inout [UInt8], box: inout [UInt8]) throws {
        let perBlock = ChunkListFormat.recordsPerSealedBlock
        let sealedBlockSize = perBlock * ChunkListFormat.recordSize + RepositoryCipher.overhead
        let bytes = n * ChunkListFormat.recordSize
        if let cipher {
            let blockIndex = index / perBlock
            let boxBytes = bytes + RepositoryCipher.overhead
            try box.withUnsafeMutableBytes {
                try object.read(at: Int64(ChunkListFormat.headerSize) + Int64(blockIndex) * Int64(sealedBlockSize),
                                into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<boxBytes]))
            }
            let opened = try box.withUnsafeBytes { b in
                try block.withUnsafeMutableBytes {
                    try cipher.open(
                        UnsafeRawBufferPointer(rebasing: b[0..<boxBytes]),
                        aad: ChunkListFormat.blockAAD(blockIndex), into: $0)
                }
            }
            guard opened == bytes else {
                throw DedupError.authenticationFailed("a chunk list block opened to \(opened) bytes, not \(bytes)")
            }
        } else {
            try block.withUnsafeMutableBytes {
                try object.read(at: Int64(ChunkListFormat.headerSize + index * ChunkListFormat.recordSize),
                                into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<bytes]))
            }
        }
    }

    fileprivate var isSealed: Bool { cipher != nil }
}

/// Reads a checked chunk list one record at a time, a block ahead (what a
/// backup walks in step with its own stream to find delta bases).
public final class ChunkListCursor {
    private let list: ChunkListReader
    private var block: [UInt8]
    private var box: [UInt8]
    private var index = 0
    private var inBlock = 0
    private var blockCount = 0

    public init(_ list: ChunkListReader) {
        self.list = list
        let perBlock = ChunkListFormat.recordsPerSealedBlock
        block = [UInt8](repeating: 0, count: perBlock * ChunkListFormat.recordSize)
        box = [UInt8](repeating: 0, count: list.isSealed ? perBlock * ChunkListFormat.recordSize + RepositoryCipher.overhead : 0)
    }

    /// The next chunk id and plaintext length, or nil at the end.
    public func next() throws -> (ChunkID, Int)? {
        if inBlock == blockCount {
            guard index < list.count else { return nil }
            blockCount = min(ChunkListFormat.recordsPerSealedBlock, list.count - index)
            try list.readRecords(from: index, count: blockCount, into: &block, box: &box)
            index += blockCount
            inBlock = 0
        }
        let record = block.withUnsafeBytes { raw -> (ChunkID, Int)? in
            // In bounds: inBlock < blockCount records were read.
            guard let base = raw.baseAddress else { return nil }
            let p = base + inBlock * ChunkListFormat.recordSize
            return (ChunkID(bytes: p), Int(UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 32, as: UInt32.self))))
        }
        inBlock += 1
        return record
    }
}
