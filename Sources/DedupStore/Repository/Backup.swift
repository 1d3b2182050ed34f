import Foundation

/// What a backup records about itself besides its data.
public struct BackupOptions: Sendable {
    public var name: String
    public var kind: BackupKind = .file
    public var database: String?
    public var dbType: String?
    public var dbHost: String?
    public var tags: [String: String] = [:]
    /// The backup time; ids and retention use it. Now, unless importing old dumps.
    public var time: Date = Date()
    /// "stdin", the input path, or the input command.
    public var source: String
    /// Refuse plain SQL dumps that lack their completion line.
    public var checkDumpComplete = true
    /// How long to wait for an exclusive lock (gc, prune) to go away.
    public var lockWait: TimeInterval = 600
    /// Also take the SHA-256 of the whole input (one more hashing pass) and record
    /// it in the manifest; restore then checks it too.
    public var streamSHA256 = false
    /// How the dump was made, for `dedup backup-db`.
    public var dump: Manifest.DumpInfo?
    /// The archived file (WAL segment, binlog) this backup is.
    public var archive: Manifest.ArchiveInfo?
    /// Commit under exactly this id, or fail with `DedupError.backupExists` if a
    /// backup holds it already (archives: one manifest per file name). Nil: the
    /// id is `<time>_<name>`, with a suffix when taken.
    public var fixedID: String?
    /// Store a new chunk that resembles the one at the same place in the
    /// previous backup of the series (same name and kind) as a delta against it,
    /// where that is clearly smaller; also off when the repository's `deltas` is
    /// false. WAL and binlog archives never: one file does not resemble the last.
    public var deltaEncoding = true

    public init(name: String, source: String) {
        self.name = name
        self.source = source
    }
}

/// Progress of a running backup, for the CLI's progress line.
public struct BackupProgress: Sendable {
    public var bytesRead: UInt64
    public var chunks: Int
    public var newChunks: Int
    public var storedBytes: Int64
}

/// Streams one input into the repository and commits its manifest.
///
/// Order of durability: packs (fsynced, renamed) -> index -> chunk list -> manifest.
/// A crash or an error at any point before the manifest leaves no visible backup,
/// only unreferenced packs that the next backup reuses or gc reclaims.
public final class BackupSession {
    let repository: Repository
    let chunker: ContentDefinedChunker
    public var progress: ((BackupProgress) -> Void)?
    /// How often `progress` is called, in input bytes.
    public var progressInterval: UInt64 = 32 << 20
    /// Worker threads for hashing and compression (default: every core).
    public var jobs = ProcessInfo.processInfo.activeProcessorCount
    /// The plain SHA-256 of the last committed input, with `streamSHA256` (what
    /// sha256sum prints). An encrypted repository records only a keyed form of it
    /// (`Manifest.sha256`), so this value never goes into the repository.
    public private(set) var streamDigest: ChunkID?
    /// How the last committed backup's new data was compressed.
    public private(set) var compressionUse = CompressionUse()

    public init(repository: Repository) throws {
        try repository.requireKey()
        self.repository = repository
        _ = try ZstdCompressor(level: repository.config.compression.level)
        chunker = ContentDefinedChunker(repository.config.chunker.parameters)
    }

    /// A reader thread reads the input, cuts it into batches of chunks in place
    /// and takes the whole-stream SHA-256, a few batches ahead. Per batch: all
    /// cores hash the chunks, the ids go to the chunk list, and the chunk writer
    /// stores the new ones (dedup lookup, compression on all cores, packs). Then
    /// the chunk list, then the manifest (format 1). Memory: the reader's buffers,
    /// the chunk writer's arena (about one batch) and a context per worker.
    public func run<S: ByteSource>(source: S, options: BackupOptions) throws -> Manifest {
        let started = Date()
        let lock = try repository.lock(.shared, command: "backup \(options.name)", wait: options.lockWait)
        defer { lock.release() }
        let ingest = try StreamIngest(session: self, options: options)
        let previous = previousBackup(options)
        // The list's key is the first free one, found when it is committed: the
        // id's own, or with a random part for a fixed id (two runs racing for a
        // fixed id never share a list; the manifest decides).
        let baseID = options.fixedID ?? Self.baseID(options)
        let chunkList = try ChunkListWriter(
            backend: repository.backend,
            key: options.fixedID.map { Self.fixedChunkListKey($0) }
                ?? Manifest.chunkListKey(for: baseID), cipher: repository.cipher)
        let streamed: StreamIngest.StreamResult
        do {
            streamed = try ingest.stream(source, into: chunkList, deltaAgainst: previousList(previous, member: nil))
            try ingest.chunks.finish()
            if let problem = streamed.incomplete { throw DedupError.incompleteInput(problem) }
        } catch {
            ingest.chunks.abort()
            chunkList.abort()
            throw error
        }

        FaultInjection.crashPoint("backup.before-chunklist")
        let (id, list): (String, (key: String, sha256: String, size: Int64))
        do {
            (id, list) = try commitChunkList(chunkList, options: options, baseID: baseID)
        } catch {
            chunkList.abort()
            throw error
        }
        var manifest = makeManifest(
            id: id, options: options, started: started, chunks: ingest.chunks,
            size: Int64(streamed.bytes), sha256: streamed.digest.map { repository.recordedStreamDigest($0) })
        manifest.chunkList = .init(key: list.key, size: list.size, sha256: list.sha256, count: chunkList.count)
        manifest.auth = repository.manifestTag(manifest)
        FaultInjection.crashPoint("backup.before-manifest")
        try repository.noteChange(.commit, ids: [id])
        do {
            try repository.backend.put(Manifest.key(for: id), try manifest.encoded(), ifAbsent: true)
        } catch let e as DedupError where e.storageFailure == .alreadyExists && options.fixedID != nil {
            // Another run committed this id first; our chunk list is nobody's.
            try? repository.backend.delete(list.key)
            throw DedupError.backupExists(id: id)
        }
        FaultInjection.crashPoint("backup.after-manifest")
        SeriesHeads(repository: repository).record(id, name: options.name, kind: options.kind)
        streamDigest = streamed.digest
        ingest.saveFilter()
        compressionUse = ingest.chunks.compressionUse
        return manifest
    }

    /// Backs up several member streams as one backup (format 2), one after
    /// another: `run(members:streams:options:)` with one stream at a time.
    public func run(members: [(name: String, source: AnySource)], options: BackupOptions) throws -> Manifest {
        try run(members: members.map { m in MemberPlan(name: m.name) { _ in m.source } }, streams: 1, options: options)
    }

    /// Backs up several member streams as one backup (format 2): up to `streams`
    /// members at once, each read, cut and hashed on a thread of its own and
    /// stored by this one into its own chunk list, all into the same packs (so
    /// that they deduplicate against each other); then one manifest naming every
    /// member in the order given. Names must be unique and not empty.
    /// `streamSHA256` records each member's. A member that fails stops the
    /// others and commits nothing.
    public func run(members: [MemberPlan], streams: Int, options: BackupOptions) throws -> Manifest {
        let names = members.map(\.name)
        guard !members.isEmpty, Set(names).count == names.count, !names.contains("") else {
            throw DedupError.invalidArgument(
                "a backup of member streams needs at least one, each with a name of its own")
        }
        let started = Date()
        let lock = try repository.lock(.shared, command: "backup \(options.name)", wait: options.lockWait)
        defer { lock.release() }
        let ingest = try StreamIngest(session: self, options: options)
        let baseID = options.fixedID ?? Self.baseID(options)
        let previous = previousBackup(options)
        var committed = [Manifest.Member?](repeating: nil, count: members.count)
        do {
            try ingest.streamMembers(
                members, streams: max(1, streams),
                // A name of its own: a list never collides with another run's.
                newList: {
                    try ChunkListWriter(
                        backend: repository.backend, key: Self.fixedChunkListKey(baseID), cipher: repository.cipher)
                },
                previous: { previousList(previous, member: $0) }
            ) { index, list, streamed in
                if let problem = streamed.incomplete {
                    try ingest.chunks.finish()
                    throw DedupError.incompleteInput("member \(members[index].name): \(problem)")
                }
                let first = list.key
                let ref = try list.finish { attempt in attempt == 0 ? first : Self.fixedChunkListKey(baseID) }
                committed[index] = Manifest.Member(
                    name: members[index].name, size: Int64(streamed.bytes),
                    sha256: streamed.digest.map { repository.recordedStreamDigest($0) },
                    chunkList: .init(key: ref.key, size: ref.size, sha256: ref.sha256, count: list.count),
                    rows: members[index].rows?())
            }
            try ingest.chunks.finish()
        } catch {
            ingest.chunks.abort()
            // The lists already committed are nobody's: gc removes them.
            throw error
        }
        let all = committed.compactMap { $0 }
        var manifest = makeManifest(
            id: baseID, options: options, started: started, chunks: ingest.chunks,
            size: all.reduce(0) { $0 + $1.size }, sha256: nil)
        manifest.formatVersion = Manifest.membersVersion
        manifest.members = all
        manifest = try commitManifest(manifest, options: options)
        SeriesHeads(repository: repository).record(manifest.id, name: options.name, kind: options.kind)
        ingest.saveFilter()
        compressionUse = ingest.chunks.compressionUse
        return manifest
    }

    /// The series' previous backup, whose chunks are the delta bases of this
    /// one's: found by key (`SeriesHeads`), nil when delta encoding is off, for
    /// archives, or when none is recorded or it is gone.
    private func previousBackup(_ options: BackupOptions) -> Manifest? {
        guard Self.usesDeltas(options, repository),
            let id = SeriesHeads(repository: repository).newest(name: options.name, kind: options.kind),
            let manifest = try? repository.loadManifest(id),
            manifest.name == options.name, manifest.backupKind == options.kind
        else { return nil }
        return manifest
    }

    /// Delta encoding is on for this backup: asked (the default), allowed by the
    /// repository, and not an archive.
    static func usesDeltas(_ options: BackupOptions, _ repository: Repository) -> Bool {
        options.deltaEncoding && repository.config.deltas != false && options.kind != .wal && options.kind != .binlog
    }

    /// The chunk list of `previous`'s stream of the same member (its only one
    /// for a backup of one stream), when it has one that reads.
    private func previousList(_ previous: Manifest?, member: String?) -> ChunkListReader? {
        guard let previous else { return nil }
        let name = previous.members == nil ? nil : member
        if member != nil && previous.members == nil { return nil }
        return try? ChunkListReader(repository: repository, manifest: previous, member: name)
    }

    /// `<time>_<name>`: the id a backup gets when it is free.
    static func baseID(_ options: BackupOptions) -> String {
        Timestamps.idStamp(options.time) + "_" + sanitize(options.name)
    }

    /// A manifest for `options` without its streams (format 1 until they are set).
    private func makeManifest(id: String, options: BackupOptions, started: Date, chunks: ChunkWriter,
                              size: Int64, sha256: String?) -> Manifest {
        let deltas = chunks.compressionUse[.delta]
        let stats = Manifest.Stats(chunks: chunks.chunks, newChunks: chunks.newChunks, newBytes: chunks.newBytes,
                                   storedBytes: chunks.storedBytes, durationSeconds: Date().timeIntervalSince(started),
                                   deltaChunks: deltas.units > 0 ? deltas.units : nil,
                                   deltaBytes: deltas.units > 0 ? deltas.rawBytes : nil,
                                   deltaStoredBytes: deltas.units > 0 ? deltas.storedBytes : nil)
        return Manifest(
            formatVersion: Manifest.oneStreamVersion, id: id, name: options.name, kind: options.kind.rawValue,
            database: options.database, dbType: options.dbType, dbHost: options.dbHost, tags: options.tags,
            createdAt: Timestamps.iso8601(options.time), committedAt: Timestamps.iso8601(Date()),
            source: options.source, hostname: LockInfo.currentHost, dbbackupVersion: DedupStoreVersion.string,
            size: size, sha256: sha256, chunkList: nil, stats: stats, dump: options.dump, archive: options.archive)
    }

    /// Commits a manifest of member streams under its fixed id (refused when
    /// taken), else under the first free `<id>`, `<id>_2`, ...: the manifest's
    /// create-if-absent decides between racing runs.
    private func commitManifest(_ draft: Manifest, options: BackupOptions) throws -> Manifest {
        for n in 0..<1000 {
            var manifest = draft
            if n > 0 {
                guard options.fixedID == nil else { throw DedupError.backupExists(id: draft.id) }
                manifest.id = "\(draft.id)_\(n + 1)"
            }
            if try repository.hasManifest(manifest.id) { continue }
            manifest.auth = repository.manifestTag(manifest)
            FaultInjection.crashPoint("backup.before-manifest")
            try repository.noteChange(.commit, ids: [manifest.id])
            do {
                try repository.backend.put(Manifest.key(for: manifest.id), try manifest.encoded(), ifAbsent: true)
            } catch let e as DedupError where e.storageFailure == .alreadyExists {
                continue
            }
            FaultInjection.crashPoint("backup.after-manifest")
            return manifest
        }
        throw DedupError.invalidArgument("could not find a free backup id after 1000 attempts")
    }

    /// Commits the chunk list under the backup's id: a fixed id (refused when a
    /// backup holds it already), else the first free `<base>`, `<base>_2`, ...
    /// (an id whose manifest exists is skipped even if its chunk list was lost:
    /// one lookup per id tried, however many backups the repository has).
    private func commitChunkList(_ chunkList: ChunkListWriter, options: BackupOptions,
                                 baseID: String) throws -> (String, (key: String, sha256: String, size: Int64)) {
        if let fixed = options.fixedID {
            if try repository.hasManifest(fixed) { throw DedupError.backupExists(id: fixed) }
            let first = chunkList.key
            return (fixed, try chunkList.finish { attempt in attempt == 0 ? first : Self.fixedChunkListKey(fixed) })
        }
        func candidate(_ n: Int) -> String { n == 0 ? baseID : "\(baseID)_\(n + 1)" }
        var n = 0
        let list = try chunkList.finish { _ in
            while try repository.hasManifest(candidate(n)) { n += 1 }
            defer { n += 1 }
            return Manifest.chunkListKey(for: candidate(n))
        }
        return (String(FileIO.lastComponent(list.key).dropLast(".chunks".count)), list)
    }

    /// A fixed id's chunk list: a name of its own for each run.
    static func fixedChunkListKey(_ id: String) -> String {
        "manifests/\(id).\(Hex.encode(SecureRandom.bytes(4))).chunks"
    }

    /// Manifest ids keep letters, digits, '.', '-' and '_'; anything else becomes '-'.
    public static func sanitize(_ name: String) -> String {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        let s = String(name.map { allowed.contains($0) ? $0 : "-" })
        let trimmed = s.trimmingCharacters(in: CharacterSet(charactersIn: ".-"))
        return trimmed.isEmpty ? "backup" : String(trimmed.prefix(80))
    }
}

/// The part of a backup that streams inputs into the store: a reader thread
/// per input (cutting and hashing on all cores), the chunk list, and the shared chunk writer.
final class StreamIngest {
    let session: BackupSession
    let options: BackupOptions
    let chunks: ChunkWriter
    /// Abandoned writes of interrupted runs, removed beside the ingest.
    private let cleanup = DispatchGroup()
    private let leftovers = Leftovers()
    /// Written by the cleanup thread, read after waiting for it.
    private final class Leftovers: @unchecked Sendable { var count = 0 }
    let workers: Int
    let batchBytes = 4 << 20
    /// The reader thread's: it hashes each batch as it cuts it, ahead of this one.
    let readerHashers: [SHA256Hasher]
    /// Delta bases may come from similar chunks anywhere (not for archives, nor
    /// with delta encoding off).
    let resemblance: Bool
    private var bytesSoFar: UInt64 = 0
    private var nextProgress: UInt64
    /// The chunks of the batch being stored.
    private var slotCapacity = 1024
    private var slotStorage: UnsafeMutablePointer<ChunkSlot>

    deinit {
        slotStorage.deinitialize(count: slotCapacity)
        slotStorage.deallocate()
        cleanup.wait()
        if leftovers.count > 0 {
            session.repository.notice("removed \(leftovers.count) temporary file(s) left by interrupted runs")
        }
    }

    init(session: BackupSession, options: BackupOptions) throws {
        self.session = session
        self.options = options
        let repository = session.repository
        // Meanwhile, on a thread of its own (a bucket: a listing, one round trip
        // off the backup's path); said and waited for when the ingest ends.
        nonisolated(unsafe) let backend = repository.backend
        let leftovers = self.leftovers
        DispatchQueue.global().async(group: cleanup) {
            leftovers.count = backend.removeAbandonedWrites(all: false)
        }
        workers = max(1, min(session.jobs, 16))
        chunks = try ChunkWriter(repository: repository, workers: workers, batchBytes: batchBytes)
        readerHashers = try (0..<workers).map { _ in try repository.makeChunkHasher() }
        resemblance = BackupSession.usesDeltas(options, repository)
        nextProgress = session.progressInterval
        slotStorage = .allocate(capacity: slotCapacity)
        slotStorage.initialize(repeating: ChunkSlot(), count: slotCapacity)
    }

    /// Streams one input: its chunks into `list` (in order) and the new ones into
    /// the chunk writer. Returns the bytes read, with `streamSHA256` their digest,
    /// and what is wrong with a plain SQL dump that lacks its completion line (the
    /// caller commits the chunks first, for the next run to reuse, then refuses).
    func stream<S: ByteSource>(
        _ source: S, into list: ChunkListWriter, deltaAgainst previous: ChunkListReader? = nil
    ) throws -> StreamResult {
        let member = InputStream(list: list, position: try chunks.beginStream(deltaAgainst: previous, resemblance: resemblance))
        let reader = makeProducer(source, hashers: readerHashers)
        reader.start()
        defer { reader.stop() }
        while let batch = try reader.next() {
            defer { reader.release(batch) }
            try store(batch, of: member, wantSamples: reader.wantSamples)
        }
        return finish(member, digest: reader.finish())
    }

    /// What one input came to.
    struct StreamResult {
        var bytes: UInt64
        var digest: ChunkID?
        /// What is wrong with a plain SQL dump that lacks its completion line.
        var incomplete: String?
    }

    /// One input being stored: its chunk list, its place in the chunk writer and
    /// what the last batch said about it.
    final class InputStream {
        let list: ChunkListWriter
        let position: ChunkWriter.StreamPosition
        var completeness = DumpCompleteness()
        var bytesRead: UInt64 = 0
        var lastMatchless = false
        init(list: ChunkListWriter, position: ChunkWriter.StreamPosition) {
            self.list = list
            self.position = position
        }
    }

    func makeProducer<S: ByteSource>(_ source: S, hashers: [SHA256Hasher]) -> ChunkBatchProducer<S> {
        ChunkBatchProducer(
            source: source, chunker: session.chunker, batchBytes: batchBytes,
            streamDigest: options.streamSHA256, searchWorkers: workers, sampling: resemblance,
            chunkHashers: hashers)
    }

    /// Lists one batch's chunks in `input`'s list and stores the new ones;
    /// `wantSamples` tells its producer whether the next batches need samples.
    func store(_ batch: ChunkBatch, of input: InputStream, wantSamples: (Bool) -> Void) throws {
        let ranges = batch.ranges
        let n = ranges.count
        if n > slotCapacity {
            slotStorage.deinitialize(count: slotCapacity)
            slotStorage.deallocate()
            slotCapacity = n * 2
            slotStorage = .allocate(capacity: slotCapacity)
            slotStorage.initialize(repeating: ChunkSlot(), count: slotCapacity)
        }
        let slots = SharedPointer(base: slotStorage)
        // The ids: the reader thread took them as it cut the batch (the
        // next batch is hashed while this one is stored). Then list them in
        // order and store the new ones.
        guard batch.ids.count == n else { throw DedupError.index("a batch came without its chunk ids") }
        for i in 0..<n { slots[i] = ChunkSlot(range: ranges[i], id: batch.ids[i]) }
        let bytes = UnsafeRawBufferPointer(start: batch.base, count: batch.length)
        input.bytesRead += UInt64(batch.length)
        input.completeness.observe(bytes)
        for i in 0..<n { try input.list.append(slots[i].id, length: slots[i].range.count) }
        let sketching: ChunkWriter.Sketching
        if batch.sampled {
            sketching = .fromSamples(batch.samples)
        } else {
            sketching = input.lastMatchless ? .none : .fromBytes
        }
        chunks.resume(input.position)
        try chunks.store(bytes, slots: slots, count: n, sketching: sketching)
        input.lastMatchless = chunks.lastBatchMatchless
        // Samples while most chunks are new: for a few new chunks hashing
        // their bytes again costs less than sampling every byte. None while
        // they are random data (BLOBs of images, compressed files).
        wantSamples(chunks.lastBatchNewChunks * 4 >= n && !chunks.lastBatchMatchless)
        bytesSoFar += UInt64(batch.length)
        reportProgress(bytesSoFar)
    }

    func finish(_ input: InputStream, digest: ChunkID?) -> StreamResult {
        StreamResult(
            bytes: input.bytesRead, digest: digest,
            incomplete: options.checkDumpComplete ? input.completeness.problem() : nil)
    }

    func reportProgress(_ bytes: UInt64) {
        guard bytes >= nextProgress, let progress = session.progress else { return }
        nextProgress = bytes + session.progressInterval
        progress(
            BackupProgress(
                bytesRead: bytes, chunks: chunks.chunks, newChunks: chunks.newChunks, storedBytes: chunks.storedBytes))
    }

    /// The backup is committed; a filter that cannot be saved is only a cache.
    func saveFilter() {
        do {
            try chunks.saveFilter()
        } catch {
            session.repository.notice("could not save the Bloom filter (\(error)); the next run rebuilds it")
        }
    }
}
