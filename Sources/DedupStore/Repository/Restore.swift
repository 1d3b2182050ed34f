import Foundation

/// Where a restore writes: a file (atomically: temporary name, then rename) or
/// standard output.
public enum RestoreTarget {
    case file(path: String, overwrite: Bool)
    case standardOutput
    /// An open descriptor, such as a pipe into pg_restore; `name` is for messages.
    case descriptor(Int32, name: String)
    /// A function handed each verified batch of the stream in order, on a
    /// thread of the restore's own (a COPY into a database server); what it
    /// throws fails the restore.
    case consumer(name: String, write: @Sendable (UnsafeRawBufferPointer) throws -> Void)
}

/// Restores a backup byte for byte, checking every chunk and the whole stream.
public final class Restorer {
    private let repository: Repository
    public var progress: ((UInt64) -> Void)?
    /// How long to wait for gc or an index rebuild to finish.
    public var lockWait: TimeInterval = 600
    /// Worker threads for decompression and hashing (default: every core).
    public var jobs = ProcessInfo.processInfo.activeProcessorCount
    /// How far planning runs ahead of the reads, in stored bytes, and how much
    /// of it is named to the backend at a time (`Backend.willRead`).
    var lookAhead = 32 << 20
    var lookAheadSlice = 8 << 20
    /// Bytes the last restore read from packs (entry headers and stored bytes,
    /// each entry once a batch; a delta's bases included).
    public private(set) var packBytesRead: Int64 = 0

    /// The caller holds a shared lock (`Repository.lock`) across several
    /// restores (the members of one backup, restored at once): none is taken.
    public var callerHoldsLock = false

    public init(repository: Repository) {
        self.repository = repository
    }

    /// The bytes of a small member (or of a backup of one stream), verified as
    /// a restore verifies them; refused beyond `limit` bytes.
    public func bytes(of idOrPrefix: String, member: String?, limit: Int64 = 64 << 20) throws -> [UInt8] {
        let manifest = try repository.loadManifest(try repository.resolveManifestID(idOrPrefix))
        let size = try manifest.stream(member).size
        guard size <= limit else {
            throw DedupError.invalidArgument("member \(member ?? "") of \(manifest.id) is \(size) bytes, more than the \(limit) expected")
        }
        final class Collected: @unchecked Sendable { var bytes = [UInt8]() }
        let collected = Collected()
        collected.bytes.reserveCapacity(Int(size))
        // The batches come in order, one at a time, from the restore's writer.
        try restore(manifest.id, member: member, to: .consumer(name: "member \(member ?? "")") { batch in
            collected.bytes += batch
        })
        return collected.bytes
    }

    @discardableResult
    /// Restores the one stream of a backup, or its member `member` (a backup of
    /// several member streams needs it).
    public func restore(_ idOrPrefix: String, member: String? = nil, to target: RestoreTarget) throws -> Manifest {
        try repository.requireKey()
        // Shared: gc and index rebuild, which move or forget chunks, wait for us.
        let lock = callerHoldsLock ? nil : try repository.lock(.shared, command: "restore \(idOrPrefix)", wait: lockWait)
        defer { lock?.release() }
        packBytesRead = 0
        let id = try repository.resolveManifestID(idOrPrefix)
        let manifest = try repository.loadManifest(id)
        let stream = try manifest.stream(member)
        let list = try ChunkListReader(repository: repository, manifest: manifest, member: member)
        let chunkReader = try ChunkReader(repository: repository)

        let output = try RestoreOutput(target)
        let fd = output.fd
        let outName = output.name
        let consumer = output.consumer
        let maxChunk = repository.config.chunker.maxSize
        let batchBytes = 4 << 20
        let workers = max(1, min(jobs, 16))
        let decompressors = try (0..<workers).map { _ in try ZstdDecompressor() }
        let hashers = try (0..<workers).map { _ in try repository.makeChunkHasher() }
        let groups = (0..<workers).map { _ in GroupScratch() }
        let cipher = repository.cipher
        let openScratch = (0..<workers).map { _ in ScratchBuffer() }
        // A delta's bases decode here, each into the prefix of the next.
        let chains = try (0..<workers).map { _ in try DeltaChainDecoder() }
        // The whole-stream digest only for backups that recorded one.
        let streamHasher: SHA256Hasher? = stream.sha256 == nil ? nil : SHA256Hasher()
        // A file is renamed into place only once the stream's SHA-256 matched:
        // that checks every byte, so the chunks are not hashed a second time
        // (a quarter of a restore's CPU); a mismatch is then traced to its chunk.
        // What goes to a pipe or stdout is checked chunk by chunk before it is
        // written: the reader must never get a byte that is wrong.
        let checksEachChunk = !(output.isFile && streamHasher != nil)
        // Stored bytes in, plaintext out: one batch in, two out (one is being
        // decoded into while the writer thread hashes and writes the other).
        let inArena = UnsafeMutableRawBufferPointer.allocate(
            byteCount: ZstdCompressor.bound(batchBytes + maxChunk), alignment: 16)
        let outArenas = (0..<2).map { _ in
            UnsafeMutableRawBufferPointer.allocate(byteCount: batchBytes + maxChunk, alignment: 16)
        }
        var outArena = outArenas[0]
        var writtenToFile: Int64 = 0
        let isFile = output.isFile
        let writer = BackgroundSink { batch in
            if let streamHasher {
                // The stream digest on one core while the other writes.
                nonisolated(unsafe) var writeError: Error?
                runInParallel(2) { task in
                    if task == 0 {
                        streamHasher.update(batch)
                    } else {
                        do {
                            if let consumer { try consumer(batch) } else { try FileIO.writeAll(fd, batch, path: outName) }
                        } catch { writeError = error }
                    }
                }
                if let writeError { throw writeError }
            } else if let consumer {
                try consumer(batch)
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
            /// A delta: its bases in `links`, the one stored on its own first.
            var links: Range<Int> = 0..<0
        }
        /// A delta's base: its entry, read into the batch's arena.
        struct Link {
            var id: ChunkID
            var loc: ChunkLocation
            var inOffset: Int
        }
        var items = [Item]()
        var links = [Link]()
        /// Entries read into this batch's arena, by frame: a base many deltas share,
        /// or a group whose members are bases, is read once.
        var framesRead = [FrameKey: Int]()
        var inUsed = 0, outUsed = 0
        var written: UInt64 = 0
        var nextProgress: UInt64 = 64 << 20
        /// The group whose frame was read last in this batch, and where it is.
        var lastGroup: (frame: FrameKey, inOffset: Int)?

        /// Decodes the batch on all cores, then hashes and writes it in order.
        func flushBatch() throws {
            guard !items.isEmpty else { return }
            let count = items.count
            let chainLinks = links
            try items.withUnsafeMutableBufferPointer { buf in
                guard let base = buf.baseAddress else { return }
                let shared = SharedPointer(base: base)
                /// The stored bytes of an entry read into the arena.
                func storedBytes(at inOffset: Int, _ loc: ChunkLocation) -> UnsafeRawBufferPointer {
                    UnsafeRawBufferPointer(rebasing: inArena[inOffset..<(inOffset + Int(loc.storedLength))])
                }
                // In runs, not strided: a worker then decompresses a group once
                // for all the members of it that come in a row; runs of equal bytes.
                forEachRunInParallel(count, workers: workers, weight: { Int(shared[$0].loc.rawLength) }) { worker, k in
                    let it = shared[k]
                    let stored = UnsafeRawBufferPointer(
                        rebasing: inArena[it.inOffset..<(it.inOffset + Int(it.loc.storedLength))])
                    let out = UnsafeMutableRawBufferPointer(
                        rebasing: outArena[it.outOffset..<(it.outOffset + Int(it.loc.rawLength))])
                    do {
                        if !it.links.isEmpty {
                            let chain = chainLinks[it.links].map {
                                DeltaChainDecoder.Link(id: $0.id, location: $0.loc, stored: storedBytes(at: $0.inOffset, $0.loc))
                            } + [DeltaChainDecoder.Link(id: it.id, location: it.loc, stored: storedBytes(at: it.inOffset, it.loc))]
                            _ = try chains[worker].decode(
                                chain, maxChunk: maxChunk, cipher: cipher, manifest: manifest.id, into: out,
                                hasher: checksEachChunk ? hashers[worker] : nil)
                            return
                        }
                        // Encrypted: the box opened (a group's once for its run of members).
                        let (payload, loc) = try ChunkDecoder.unseal(
                            it.id, at: it.loc, stored: stored, cipher: cipher, into: openScratch[worker],
                            group: groups[worker], manifest: manifest.id)
                        let plain = try ChunkDecoder.decode(
                            it.id, at: loc, stored: payload, into: out, manifest: manifest.id,
                            decompressor: decompressors[worker], hasher: checksEachChunk ? hashers[worker] : nil,
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
            links.removeAll(keepingCapacity: true)
            framesRead.removeAll(keepingCapacity: true)
            inUsed = 0
            outUsed = 0
            lastGroup = nil
            if written >= nextProgress, let progress {
                nextProgress = written + (64 << 20)
                progress(written)
            }
        }

        do {
            guard list.totalBytes == UInt64(stream.size) else {
                throw DedupError.manifestCorrupt(
                    id: manifest.id,
                    detail: "chunk list covers \(list.totalBytes) bytes, the manifest says \(stream.size)")
            }
            if isFile { try FileIO.preallocate(fd, size: stream.size, path: outName) }
            /// Reads one planned entry into the batch (its bases first, for a delta).
            func read(_ next: Planned) throws {
                let (id, length, loc, chain) = (next.id, next.length, next.location, next.bases)
                let entryLength = PackFormat.entryHeaderSize + Int(loc.storedLength)
                if loc.isDelta {
                    // Its bases first, each read once a batch, then the delta itself.
                    let needed = chain.reduce(entryLength) {
                        $0 + PackFormat.entryHeaderSize + Int($1.location.storedLength)
                    }
                    if outUsed + length > outArena.count || inUsed + needed > inArena.count { try flushBatch() }
                    try chunkReader.checkLocation(id, at: loc, expectedLength: length, manifest: manifest.id)
                    let first = links.count
                    for (baseID, baseLoc) in chain + [(id, loc)] {
                        let payload: Int
                        if let at = framesRead[baseLoc.frame] {
                            payload = at
                        } else {
                            _ = try chunkReader.readStored(
                                baseID, at: baseLoc, expectedLength: Int(baseLoc.rawLength),
                                into: UnsafeMutableRawBufferPointer(rebasing: inArena[inUsed...]), manifest: manifest.id)
                            payload = inUsed + PackFormat.entryHeaderSize
                            framesRead[baseLoc.frame] = payload
                            let entry = PackFormat.entryHeaderSize + Int(baseLoc.storedLength)
                            inUsed += entry
                            packBytesRead += Int64(entry)
                        }
                        if baseID == id && baseLoc == loc {
                            items.append(Item(id: id, loc: loc, inOffset: payload, outOffset: outUsed,
                                              links: first..<links.count))
                        } else {
                            links.append(Link(id: baseID, loc: baseLoc, inOffset: payload))
                        }
                    }
                    lastGroup = nil
                    outUsed += length
                    if outUsed >= batchBytes { try flushBatch() }
                    return
                }
                if outUsed + length > outArena.count || inUsed + entryLength > inArena.count { try flushBatch() }
                if loc.isGroupMember, let g = lastGroup, g.frame == loc.frame {
                    // The next member of the group just read: its frame is here already.
                    try chunkReader.checkLocation(id, at: loc, expectedLength: length, manifest: manifest.id)
                    items.append(Item(id: id, loc: loc, inOffset: g.inOffset, outOffset: outUsed))
                } else {
                    // Reads stay on this thread, in list order (sequential within a pack):
                    // one ranged read per entry, its header first.
                    _ = try chunkReader.readStored(
                        id, at: loc, expectedLength: length,
                        into: UnsafeMutableRawBufferPointer(rebasing: inArena[inUsed...]), manifest: manifest.id)
                    let payload = inUsed + PackFormat.entryHeaderSize
                    items.append(Item(id: id, loc: loc, inOffset: payload, outOffset: outUsed))
                    lastGroup = loc.isGroupMember ? (loc.frame, payload) : nil
                    inUsed += entryLength
                    packBytesRead += Int64(entryLength)
                }
                outUsed += length
                if outUsed >= batchBytes { try flushBatch() }
            }
            // Entries are located a little ahead of their reads, and named to the
            // backend a slice at a time: a bucket fetches them ahead, several packs
            // at once, instead of one round trip per pack in turn.
            // The packs of a stretch of the list are confirmed first, together.
            var planner = ReadPlanner(backend: repository.backend, lookAhead: lookAhead, slice: lookAheadSlice)
            var stretch = [(id: ChunkID, length: Int)]()
            func plan() throws {
                try chunkReader.confirmPacks(of: stretch.map(\.id))
                for (id, length) in stretch {
                    let loc = try chunkReader.location(of: id, manifest: manifest.id)
                    let chain = loc.isDelta ? try chunkReader.bases(of: id, at: loc, manifest: manifest.id) : []
                    try planner.add(Planned(id: id, length: length, location: loc, bases: chain), then: read)
                }
                stretch.removeAll(keepingCapacity: true)
            }
            try list.forEach { id, length in
                stretch.append((id, length))
                if stretch.count >= 256 { try plan() }
            }
            try plan()
            try planner.finish(then: read)
            try flushBatch()
            try writer.finish()
            guard written == UInt64(stream.size) else {
                throw DedupError.streamChecksumMismatch(
                    manifest: manifest.id, expected: "\(stream.size) bytes", actual: "\(written) bytes")
            }
            if let expected = stream.sha256,
                let digest = streamHasher.map({ repository.recordedStreamDigest($0.finish()) }), digest != expected
            {
                if !checksEachChunk { try checkEachChunk(of: manifest, member: member, with: chunkReader) }
                throw DedupError.streamChecksumMismatch(
                    manifest: manifest.id, expected: "SHA-256 \(expected)", actual: digest)
            }
            try output.commit()
        } catch {
            // The writer thread may still be writing the previous batch to fd.
            writer.close()
            output.abandon()
            throw error
        }
        return manifest
    }

    /// Reads and checks every chunk of a stream against its id, throwing the
    /// first that fails (what a stream's wrong SHA-256 is traced to).
    private func checkEachChunk(of manifest: Manifest, member: String?, with chunkReader: ChunkReader) throws {
        let list = try ChunkListReader(repository: repository, manifest: manifest, member: member)
        try list.forEach { id, length in
            let loc = try chunkReader.location(of: id, manifest: manifest.id)
            _ = try chunkReader.fetch(id, at: loc, expectedLength: length, manifest: manifest.id)
        }
    }
}

/// A chunk of the stream, located, with a delta's bases (the one stored on its own first).
struct Planned {
    var id: ChunkID
    var length: Int
    var location: ChunkLocation
    var bases: [(id: ChunkID, location: ChunkLocation)]

    /// The entries it reads, as ranges of their packs.
    var ranges: [ReadRange] {
        (bases.map(\.location) + [location]).map {
            ReadRange(key: $0.pack.key, offset: Int64($0.offset), count: PackFormat.entryHeaderSize + Int($0.storedLength))
        }
    }
}

/// Keeps a restore's reads `lookAhead` stored bytes behind its planning, and
/// tells the backend what is coming (`Backend.willRead`) a slice at a time.
struct ReadPlanner {
    private let backend: Backend
    private let lookAhead: Int
    private let slice: Int
    private var pending: [(entry: Planned, bytes: Int)] = []
    private var head = 0
    private var pendingBytes = 0
    private var unsaid: [ReadRange] = []
    private var unsaidBytes = 0

    init(backend: Backend, lookAhead: Int, slice: Int) {
        self.backend = backend
        self.lookAhead = lookAhead
        self.slice = slice
    }

    /// Plans `entry`, then hands entries to `read` in order while more than
    /// `lookAhead` bytes are planned and unread.
    mutating func add(_ entry: Planned, then read: (Planned) throws -> Void) throws {
        let ranges = entry.ranges
        let bytes = ranges.reduce(0) { $0 + $1.count }
        pending.append((entry, bytes))
        pendingBytes += bytes
        unsaid += ranges
        unsaidBytes += bytes
        if unsaidBytes >= slice { say() }
        while pendingBytes > lookAhead { try readNext(read) }
    }

    /// Hands the rest to `read`.
    mutating func finish(then read: (Planned) throws -> Void) throws {
        say()
        while head < pending.count { try readNext(read) }
    }

    private mutating func say() {
        guard !unsaid.isEmpty else { return }
        backend.willRead(unsaid)
        unsaid.removeAll(keepingCapacity: true)
        unsaidBytes = 0
    }

    private mutating func readNext(_ read: (Planned) throws -> Void) throws {
        let (entry, bytes) = pending[head]
        head += 1
        pendingBytes -= bytes
        if head >= 4096 {
            pending.removeFirst(head)
            head = 0
        }
        try read(entry)
    }
}

/// Where a restore's bytes go: a file is written under a temporary name beside
/// it, and only a restore whose every check passed is fsynced and renamed into
/// place; standard output and descriptors are written as they come.
final class RestoreOutput {
    let fd: Int32
    /// Set for `.consumer` (`fd` is then -1).
    let consumer: (@Sendable (UnsafeRawBufferPointer) throws -> Void)?
    /// The name writes report (the temporary file, while there is one).
    let name: String
    private let finalPath: String?
    private var tmpPath: String?

    var isFile: Bool { finalPath != nil }

    init(_ target: RestoreTarget) throws {
        switch target {
        case .standardOutput:
            consumer = nil
            fd = STDOUT_FILENO
            name = "standard output"
            finalPath = nil
        case .descriptor(let given, let label):
            consumer = nil
            fd = given
            name = label
            finalPath = nil
        case .consumer(let label, let write):
            consumer = write
            fd = -1
            name = label
            finalPath = nil
        case .file(let path, let overwrite):
            consumer = nil
            if !overwrite && FileIO.exists(path) {
                throw DedupError.invalidArgument("\(path) already exists; remove it or pass --force to replace it")
            }
            try FileIO.requireFolder(of: path)
            let dir = FileIO.parent(path)
            let tmp =
                (dir.isEmpty ? "." : dir)
                + "/.\(FileIO.lastComponent(path)).dbbackup-partial-\(Hex.encode(SecureRandom.bytes(4)))"
            // Remembered before it exists (an interruption in between would leave it).
            InterruptCleanup.register(tmp)
            do {
                fd = try FileIO.open(tmp, O_WRONLY | O_CREAT | O_EXCL, mode: 0o600)
            } catch {
                InterruptCleanup.unregister(tmp)
                throw error
            }
            tmpPath = tmp
            name = tmp
            finalPath = path
        }
    }

    /// A file: durable, then renamed into place (and its folder fsynced).
    func commit() throws {
        guard let tmp = tmpPath, let finalPath else { return }
        try FileIO.fsync(fd, path: tmp)
        if rename(tmp, finalPath) != 0 { throw DedupError.io(operation: "rename", path: finalPath, errno: errno) }
        InterruptCleanup.unregister(tmp)
        close(fd)
        tmpPath = nil
        let dir = FileIO.parent(finalPath)
        try FileIO.fsyncDirectory(dir.isEmpty ? "." : dir)
    }

    /// A file: the partial output removed.
    func abandon() {
        guard let tmp = tmpPath else { return }
        close(fd)
        unlink(tmp)
        InterruptCleanup.unregister(tmp)
        tmpPath = nil
    }
}
