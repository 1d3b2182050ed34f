import Foundation

/// Reads chunks back from packs, checking each against its id. Keeps a few packs
/// open so consecutive chunks from one pack cost one pread each.
final class ChunkFetcher {
    private let repository: Repository
    let index: ChunkIndex
    private let decompressor: ZstdDecompressor
    private let hasher: SHA256Hasher
    private let group = GroupScratch()
    private let cipher: RepositoryCipher?
    /// An encrypted entry's box as read, before `stored` gets its opened payload.
    private let sealed = ScratchBuffer()
    private var readers: [PackID: PackReader] = [:]
    private var readerOrder: [PackID] = []
    private let maxOpenPacks = 16
    /// The last entry's payload as compressed (a group's: its whole frame),
    /// opened when the repository is encrypted.
    private let stored = ScratchBuffer()
    private var payloadLength = 0
    private var payloadOffset = 0
    private let plain: UnsafeMutableRawBufferPointer
    /// The last group frame read into `stored` (members of one group come in a row).
    private var storedGroup: FrameKey?

    init(repository: Repository) throws {
        self.repository = repository
        index = try repository.index()
        hasher = try repository.makeChunkHasher()
        cipher = repository.cipher
        decompressor = try ZstdDecompressor()
        plain = .allocate(byteCount: repository.config.chunker.maxSize, alignment: 16)
    }

    deinit { plain.deallocate() }

    private func reader(_ pack: PackID) throws -> PackReader {
        if let r = readers[pack] { return r }
        let r = try PackReader(backend: repository.backend, id: pack, cipher: cipher)
        if readerOrder.count >= maxOpenPacks {
            let old = readerOrder.removeFirst()
            readers[old] = nil
        }
        readers[pack] = r
        readerOrder.append(pack)
        return r
    }

    /// The plaintext of a chunk at a known location, verified against its id;
    /// valid until the next call.
    func fetch(_ id: ChunkID, at loc: ChunkLocation, expectedLength: Int, manifest: String) throws -> UnsafeRawBufferPointer {
        try checkLocation(id, at: loc, expectedLength: expectedLength, manifest: manifest)
        let payloadLoc = cipher == nil ? loc : loc.unsealed
        if !loc.isGroupMember || storedGroup != loc.frame {
            storedGroup = nil
            // Encrypted: read the box, open it into `stored`. gc copies `stored`
            // as the chunk's payload, and the new pack seals it where it lands.
            let target = (cipher == nil ? stored : sealed).buffer(PackFormat.entryHeaderSize + Int(loc.storedLength))
            let entry = try readStored(id, at: loc, expectedLength: expectedLength, into: target, manifest: manifest)
            // Plain: the payload stays where it was read, after its entry header;
            // encrypted: the box opens to the start of `stored`.
            payloadOffset = cipher == nil ? PackFormat.entryHeaderSize : 0
            payloadLength = try ChunkDecoder.unseal(id, at: loc, stored: entry, cipher: cipher, into: stored, group: nil,
                                                   manifest: manifest).payload.count
            if loc.isGroupMember { storedGroup = loc.frame }
        }
        return try ChunkDecoder.decode(id, at: payloadLoc, stored: storedPayload, into: plain, manifest: manifest,
                                       decompressor: decompressor, hasher: hasher, group: group)
    }

    /// The last entry's payload as compressed (decrypted when the repository is encrypted).
    var storedPayload: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: stored.buffer(payloadOffset + payloadLength)[payloadOffset..<(payloadOffset + payloadLength)])
    }

    /// Checks that a location is one this repository and this reader can hold.
    func checkLocation(_ id: ChunkID, at loc: ChunkLocation, expectedLength: Int, manifest: String) throws {
        func corrupt(_ detail: String) -> DedupError {
            .chunkCorrupt(chunk: id.hex, pack: loc.pack.hex, manifest: manifest, detail: detail)
        }
        guard Int(loc.rawLength) == expectedLength else {
            throw corrupt("the index records \(loc.rawLength) bytes, the backup \(expectedLength)")
        }
        let storedLimit = ZstdCompressor.bound(loc.isGroupMember ? PackFormat.maxGroupLength : plain.count)
        guard Int(loc.rawLength) <= plain.count, Int(loc.storedLength) <= storedLimit else {
            throw corrupt("its lengths (\(loc.rawLength) plain, \(loc.storedLength) stored) exceed this repository's maximum chunk size")
        }
        guard loc.flags == (cipher == nil ? 0 : UInt8(PackFormat.encryptedFlag)) else {
            throw corrupt(cipher == nil ? "it carries flags \(loc.flags) that this dbbackup does not know (written by a newer version?)"
                                        : "it is not encrypted, in an encrypted repository")
        }
    }

    /// Checks a location and reads the chunk's entry (header, then stored bytes:
    /// one ranged read) into `buffer`; returns the stored bytes.
    func readStored(_ id: ChunkID, at loc: ChunkLocation, expectedLength: Int,
                    into buffer: UnsafeMutableRawBufferPointer, manifest: String) throws -> UnsafeRawBufferPointer {
        func corrupt(_ detail: String) -> DedupError {
            .chunkCorrupt(chunk: id.hex, pack: loc.pack.hex, manifest: manifest, detail: detail)
        }
        try checkLocation(id, at: loc, expectedLength: expectedLength, manifest: manifest)
        guard PackFormat.entryHeaderSize + Int(loc.storedLength) <= buffer.count else {
            throw corrupt("its stored length \(loc.storedLength) exceeds the read buffer")
        }
        do {
            return try reader(loc.pack).readStored(loc, id: id, into: buffer)
        } catch let e as DedupError {
            switch e {
            case .storage(let failure) where failure.failure == .notFound:
                throw corrupt("its pack is missing")
            case .chunkCorrupt(_, _, _, let detail):
                throw corrupt(detail)
            case .shortRead:
                throw corrupt("its pack ends before it (truncated)")
            default:
                throw e
            }
        }
    }
}

/// Turns a chunk's stored bytes back into its plaintext and checks it against its
/// id. Stateless apart from the contexts it is given, so workers run it in parallel.
enum ChunkDecoder {
    /// A stored entry ready for `decode`: in a plain repository `stored` itself
    /// at `loc`; in an encrypted one its box opened into `scratch`, at the opened
    /// location (28 bytes shorter, no flags). A group member whose group `group`
    /// holds decoded already needs no payload: nothing is opened.
    static func unseal(_ id: ChunkID, at loc: ChunkLocation, stored: UnsafeRawBufferPointer, cipher: RepositoryCipher?,
                       into scratch: ScratchBuffer, group: GroupScratch?, manifest: String) throws -> (payload: UnsafeRawBufferPointer, location: ChunkLocation) {
        guard let cipher else { return (stored, loc) }
        let opened = loc.unsealed
        if loc.isGroupMember, let group, group.holds(opened.frame) { return (UnsafeRawBufferPointer(start: nil, count: 0), opened) }
        let out = scratch.buffer(stored.count)
        do {
            let n = try cipher.open(stored, aad: RepositoryCipher.entryAAD(pack: loc.pack, offset: loc.offset, encoding: loc.encoding), into: out)
            return (UnsafeRawBufferPointer(rebasing: out[0..<n]), opened)
        } catch DedupError.authenticationFailed(let detail) {
            throw DedupError.chunkCorrupt(chunk: id.hex, pack: loc.pack.hex, manifest: manifest, detail: detail)
        }
    }

    /// Returns the plaintext: `stored` itself for a raw chunk, else `plain`'s start.
    /// A group member's group is decompressed into `group` (once for a run of
    /// members of the same group).
    static func decode(_ id: ChunkID, at loc: ChunkLocation, stored: UnsafeRawBufferPointer,
                       into plain: UnsafeMutableRawBufferPointer, manifest: String,
                       decompressor: ZstdDecompressor, hasher: SHA256Hasher,
                       group: GroupScratch) throws -> UnsafeRawBufferPointer {
        func corrupt(_ detail: String) -> DedupError {
            .chunkCorrupt(chunk: id.hex, pack: loc.pack.hex, manifest: manifest, detail: detail)
        }
        let out: UnsafeRawBufferPointer
        switch ChunkEncoding(rawValue: loc.encoding) {
        case .raw:
            guard loc.storedLength == loc.rawLength else { throw corrupt("raw chunk with stored length \(loc.storedLength)") }
            out = stored
        case .zstd:
            guard Int(loc.rawLength) <= plain.count else { throw corrupt("larger than its buffer") }
            let target = UnsafeMutableRawBufferPointer(rebasing: plain[0..<Int(loc.rawLength)])
            let n: Int
            do {
                n = try decompressor.decompress(stored, into: target)
            } catch {
                throw corrupt("zstd: \(error)")
            }
            guard n == Int(loc.rawLength) else { throw corrupt("decompressed to \(n) bytes, expected \(loc.rawLength)") }
            out = UnsafeRawBufferPointer(target)
        case .zstdGroup:
            let plaintext: UnsafeRawBufferPointer
            do {
                plaintext = try group.decompress(loc.frame, frame: stored, decompressor: decompressor)
            } catch let e as DedupError {
                throw corrupt("its group: \(e.message)")
            }
            let start = Int(loc.groupOffset), end = start + Int(loc.rawLength)
            guard end <= plaintext.count, Int(loc.rawLength) <= plain.count else {
                throw corrupt("lies beyond its group's \(plaintext.count) bytes")
            }
            let target = UnsafeMutableRawBufferPointer(rebasing: plain[0..<Int(loc.rawLength)])
            target.copyMemory(from: UnsafeRawBufferPointer(rebasing: plaintext[start..<end]))
            out = UnsafeRawBufferPointer(target)
        case nil:
            throw corrupt("unknown encoding \(loc.encoding) (written by a newer dbbackup?)")
        }
        guard hasher.digest(out) == id else { throw corrupt("SHA-256 of its contents does not match its id") }
        return out
    }
}

/// A growable buffer owned by one worker.
final class ScratchBuffer: @unchecked Sendable {
    private var storage = UnsafeMutableRawBufferPointer(start: nil, count: 0)

    deinit { storage.deallocate() }

    /// At least `count` bytes (the same memory until a larger size is asked for).
    func buffer(_ count: Int) -> UnsafeMutableRawBufferPointer {
        if storage.count < count {
            storage.deallocate()
            storage = .allocate(byteCount: max(count, 1 << 16), alignment: 16)
        }
        return storage
    }
}

/// The plaintext of the last group decompressed, kept while its members are read.
final class GroupScratch {
    private var buffer = UnsafeMutableRawBufferPointer(start: nil, count: 0)
    private var key: FrameKey?
    private var length = 0

    deinit { buffer.deallocate() }

    /// The group's plaintext (checked against the size its frame declares), from
    /// the previous call when it was the same group.
    /// True when the last group decompressed is `group` (its frame need not be read).
    func holds(_ group: FrameKey) -> Bool { key == group }

    func decompress(_ group: FrameKey, frame: UnsafeRawBufferPointer,
                    decompressor: ZstdDecompressor) throws -> UnsafeRawBufferPointer {
        if key == group {
            return UnsafeRawBufferPointer(rebasing: buffer[0..<length])
        }
        key = nil
        guard let size = ZstdDecompressor.contentSize(frame), size <= PackFormat.maxGroupLength else {
            throw DedupError.compression("the group's zstd frame does not declare a plausible size")
        }
        if size > buffer.count {
            buffer.deallocate()
            buffer = .allocate(byteCount: size, alignment: 16)
        }
        let n = try decompressor.decompress(frame, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<size]))
        guard n == size else { throw DedupError.compression("the group decompressed to \(n) bytes, its frame says \(size)") }
        key = group
        length = size
        return UnsafeRawBufferPointer(rebasing: buffer[0..<size])
    }
}

/// Where a restore writes: a file (atomically: temporary name, then rename) or
/// standard output.
public enum RestoreTarget {
    case file(path: String, overwrite: Bool)
    case standardOutput
    /// An open descriptor, such as a pipe into pg_restore; `name` is for messages.
    case descriptor(Int32, name: String)
}

/// Restores a backup byte for byte, checking every chunk and the whole stream.
public final class Restorer {
    private let repository: Repository
    public var progress: ((UInt64) -> Void)?
    /// How long to wait for gc or an index rebuild to finish.
    public var lockWait: TimeInterval = 600
    /// Worker threads for decompression and hashing (default: every core).
    public var jobs = ProcessInfo.processInfo.activeProcessorCount

    public init(repository: Repository) {
        self.repository = repository
    }

    @discardableResult
    public func restore(_ idOrPrefix: String, to target: RestoreTarget) throws -> Manifest {
        try repository.requireKey()
        // Shared: gc and index rebuild, which move or forget chunks, wait for us.
        let lock = try repository.lock(.shared, command: "restore \(idOrPrefix)", wait: lockWait)
        defer { lock.release() }
        let id = try repository.resolveManifestID(idOrPrefix)
        let manifest = try repository.loadManifest(id)
        let list = try ChunkListReader(repository: repository, manifest: manifest)
        let fetcher = try ChunkFetcher(repository: repository)

        let fd: Int32
        var tmpPath: String?
        var finalPath = "standard output"
        switch target {
        case .standardOutput:
            fd = STDOUT_FILENO
        case .descriptor(let given, let name):
            fd = given
            finalPath = name
        case .file(let path, let overwrite):
            finalPath = path
            if !overwrite && FileIO.exists(path) {
                throw DedupError.invalidArgument("\(path) already exists; remove it or pass --force to replace it")
            }
            try FileIO.requireFolder(of: path)
            let dir = FileIO.parent(path)
            let name = FileIO.lastComponent(path)
            let tmp = (dir.isEmpty ? "." : dir) + "/.\(name).dbbackup-partial-\(Hex.encode(SecureRandom.bytes(4)))"
            fd = try FileIO.open(tmp, O_WRONLY | O_CREAT | O_EXCL, mode: 0o600)
            InterruptCleanup.register(tmp)
            tmpPath = tmp
        }

        let outName = tmpPath ?? finalPath
        let maxChunk = repository.config.chunker.maxSize
        let batchBytes = 4 << 20
        let workers = max(1, min(jobs, 16))
        let decompressors = try (0..<workers).map { _ in try ZstdDecompressor() }
        let hashers = try (0..<workers).map { _ in try repository.makeChunkHasher() }
        let groups = (0..<workers).map { _ in GroupScratch() }
        let cipher = repository.cipher
        let openScratch = (0..<workers).map { _ in ScratchBuffer() }
        // The whole-stream digest only for backups that recorded one.
        let streamHasher: SHA256Hasher? = manifest.sha256 == nil ? nil : SHA256Hasher()
        // Stored bytes in, plaintext out: one batch in, two out (one is being
        // decoded into while the writer thread hashes and writes the other).
        let inArena = UnsafeMutableRawBufferPointer.allocate(byteCount: ZstdCompressor.bound(batchBytes + maxChunk), alignment: 16)
        let outArenas = (0..<2).map { _ in UnsafeMutableRawBufferPointer.allocate(byteCount: batchBytes + maxChunk, alignment: 16) }
        var outArena = outArenas[0]
        var writtenToFile: Int64 = 0
        let isFile = tmpPath != nil
        let writer = BackgroundSink { batch in
            if let streamHasher {
                // The stream digest on one core while the other writes.
                nonisolated(unsafe) var writeError: Error?
                runInParallel(2) { task in
                    if task == 0 {
                        streamHasher.update(batch)
                    } else {
                        do { try FileIO.writeAll(fd, batch, path: outName) } catch { writeError = error }
                    }
                }
                if let writeError { throw writeError }
            } else {
                try FileIO.writeAll(fd, batch, path: outName)
            }
            if isFile {
                // Start writeback now, so that the final fsync has little left.
                FileIO.startWriteback(fd, offset: writtenToFile, length: Int64(batch.count))
                writtenToFile += Int64(batch.count)
            }
        }
        defer {
            writer.close()
            inArena.deallocate()
            for a in outArenas { a.deallocate() }
        }

        struct Item {
            var id: ChunkID
            var loc: ChunkLocation
            var inOffset: Int
            var outOffset: Int
            var failure: DedupError?
        }
        var items = [Item]()
        var inUsed = 0, outUsed = 0
        var written: UInt64 = 0
        var nextProgress: UInt64 = 64 << 20
        /// The group whose frame was read last in this batch, and where it is.
        var lastGroup: (frame: FrameKey, inOffset: Int)?

        /// Decodes the batch on all cores, then hashes and writes it in order.
        func flushBatch() throws {
            guard !items.isEmpty else { return }
            let count = items.count
            try items.withUnsafeMutableBufferPointer { buf in
                guard let base = buf.baseAddress else { return }
                let shared = SharedPointer(base: base)
                // In runs, not strided: a worker then decompresses a group once
                // for all the members of it that come in a row.
                forEachRunInParallel(count, workers: workers) { worker, k in
                    let it = shared[k]
                    let stored = UnsafeRawBufferPointer(rebasing: inArena[it.inOffset..<(it.inOffset + Int(it.loc.storedLength))])
                    let out = UnsafeMutableRawBufferPointer(rebasing: outArena[it.outOffset..<(it.outOffset + Int(it.loc.rawLength))])
                    do {
                        // Encrypted: the box opened (a group's once for its run of members).
                        let (payload, loc) = try ChunkDecoder.unseal(it.id, at: it.loc, stored: stored, cipher: cipher, into: openScratch[worker],
                                                                     group: groups[worker], manifest: manifest.id)
                        let plain = try ChunkDecoder.decode(it.id, at: loc, stored: payload, into: out, manifest: manifest.id,
                                                            decompressor: decompressors[worker], hasher: hashers[worker],
                                                            group: groups[worker])
                        // A raw chunk decodes to its stored bytes: copy it into place.
                        if plain.baseAddress != UnsafeRawPointer(out.baseAddress) { out.copyMemory(from: plain) }
                    } catch {
                        shared[k].failure = .wrapping(error)
                    }
                }
                for k in 0..<count { if let f = buf[k].failure { throw f } }
            }
            // Returns once the previous batch is written: its arena is free.
            try writer.submit(UnsafeRawBufferPointer(rebasing: outArena[0..<outUsed]))
            outArena = outArena.baseAddress == outArenas[0].baseAddress ? outArenas[1] : outArenas[0]
            written += UInt64(outUsed)
            items.removeAll(keepingCapacity: true)
            inUsed = 0
            outUsed = 0
            lastGroup = nil
            if written >= nextProgress, let progress {
                nextProgress = written + (64 << 20)
                progress(written)
            }
        }

        do {
            guard list.totalBytes == UInt64(manifest.size) else {
                throw DedupError.manifestCorrupt(id: manifest.id, detail: "chunk list covers \(list.totalBytes) bytes, the manifest says \(manifest.size)")
            }
            if tmpPath != nil { try FileIO.preallocate(fd, size: manifest.size, path: outName) }
            try list.forEach { id, length in
                guard let loc = try fetcher.index.lookup(id) else {
                    throw repository.unindexedChunkError(id, manifest: manifest.id)
                }
                let entryLength = PackFormat.entryHeaderSize + Int(loc.storedLength)
                if outUsed + length > outArena.count || inUsed + entryLength > inArena.count { try flushBatch() }
                if loc.isGroupMember, let g = lastGroup, g.frame == loc.frame {
                    // The next member of the group just read: its frame is here already.
                    try fetcher.checkLocation(id, at: loc, expectedLength: length, manifest: manifest.id)
                    items.append(Item(id: id, loc: loc, inOffset: g.inOffset, outOffset: outUsed))
                } else {
                    // Reads stay on this thread, in list order (sequential within a pack):
                    // one ranged read per entry, its header first.
                    _ = try fetcher.readStored(id, at: loc, expectedLength: length,
                                               into: UnsafeMutableRawBufferPointer(rebasing: inArena[inUsed...]), manifest: manifest.id)
                    let payload = inUsed + PackFormat.entryHeaderSize
                    items.append(Item(id: id, loc: loc, inOffset: payload, outOffset: outUsed))
                    lastGroup = loc.isGroupMember ? (loc.frame, payload) : nil
                    inUsed += entryLength
                }
                outUsed += length
                if outUsed >= batchBytes { try flushBatch() }
            }
            try flushBatch()
            try writer.finish()
            guard written == UInt64(manifest.size) else {
                throw DedupError.streamChecksumMismatch(manifest: manifest.id, expected: "\(manifest.size) bytes", actual: "\(written) bytes")
            }
            if let expected = manifest.sha256, let digest = streamHasher.map({ repository.recordedStreamDigest($0.finish()) }), digest != expected {
                throw DedupError.streamChecksumMismatch(manifest: manifest.id, expected: "SHA-256 \(expected)", actual: digest)
            }
            if let tmp = tmpPath {
                try FileIO.fsync(fd, path: tmp)
                if rename(tmp, finalPath) != 0 { throw DedupError.io(operation: "rename", path: finalPath, errno: errno) }
                InterruptCleanup.unregister(tmp)
                close(fd)
                tmpPath = nil
                let dir = FileIO.parent(finalPath)
                try FileIO.fsyncDirectory(dir.isEmpty ? "." : dir)
            }
        } catch {
            // The writer thread may still be writing the previous batch to fd.
            writer.close()
            if let tmp = tmpPath {
                close(fd)
                unlink(tmp)
                InterruptCleanup.unregister(tmp)
            }
            throw error
        }
        return manifest
    }
}
