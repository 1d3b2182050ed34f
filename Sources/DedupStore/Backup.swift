import Foundation

/// What a backup records about itself besides its data.
public struct BackupOptions: Sendable {
    public var name: String
    public var kind: String = "file"
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
    private let repository: Repository
    private let compressor: ZstdCompressor
    private let chunker: ContentDefinedChunker
    public var progress: ((BackupProgress) -> Void)?
    /// How often `progress` is called, in input bytes.
    public var progressInterval: UInt64 = 32 << 20

    public init(repository: Repository) throws {
        self.repository = repository
        compressor = try ZstdCompressor(level: repository.config.compression.level)
        chunker = ContentDefinedChunker(repository.config.chunker.parameters)
    }

    public func run<S: ByteSource>(source: S, options: BackupOptions) throws -> Manifest {
        let started = Date()
        let lock = try repository.lock(.shared, command: "backup \(options.name)", wait: options.lockWait)
        defer { lock.release() }
        let leftovers = repository.backend.removeDeadTemporaries()
        if leftovers > 0 { repository.notice("removed \(leftovers) temporary file(s) left by interrupted runs") }
        let index = try repository.index()
        var bloom = try repository.bloom()
        let backend = repository.backend

        let stream = ChunkStream(source: source, chunker: chunker)
        let hasher = SHA256Hasher()
        let streamHasher = SHA256Hasher()
        let chunkList = try ChunkListWriter(backend: backend)
        var pack: PackWriter?
        var pending = Set<ChunkID>()
        var completeness = DumpCompleteness()
        var stats = Manifest.Stats(chunks: 0, newChunks: 0, newBytes: 0, storedBytes: 0, durationSeconds: 0)
        let scratch = UnsafeMutableRawBufferPointer.allocate(
            byteCount: ZstdCompressor.bound(repository.config.chunker.maxSize), alignment: 16)
        defer { scratch.deallocate() }
        var nextProgress = progressInterval

        func commitPack() throws {
            guard let p = pack else { return }
            pack = nil
            let entries = try p.finish()
            let size = Int64(p.size)  // after finish: trailer and footer included
            FaultInjection.crashPoint("backup.after-pack-commit")
            try index.insert(pack: p.id, size: size, entries: entries)
            // The filter now holds these index entries too.
            bloom.count += entries.count
            pending.removeAll(keepingCapacity: true)
        }

        do {
            while let chunk = try stream.next() {
                let id = hasher.digest(chunk)
                streamHasher.update(chunk)
                completeness.observe(chunk)
                try chunkList.append(id, length: chunk.count)
                stats.chunks += 1

                var known = pending.contains(id)
                if !known && bloom.mightContain(id) { known = try index.lookup(id) != nil }
                if !known {
                    let compressed = try compressor.compress(chunk, into: scratch)
                    let useZstd = compressed < chunk.count
                    let payload = useZstd ? UnsafeRawBufferPointer(rebasing: scratch[0..<compressed]) : chunk
                    if pack == nil { pack = try PackWriter(backend: backend) }
                    try pack?.add(id: id, rawLength: chunk.count, encoding: useZstd ? .zstd : .raw, payload: payload)
                    pending.insert(id)
                    bloom.insert(id)
                    stats.newChunks += 1
                    stats.newBytes += Int64(chunk.count)
                    stats.storedBytes += Int64(payload.count + PackFormat.entryHeaderSize)
                    if let p = pack, p.size >= UInt64(repository.config.packSize) { try commitPack() }
                }
                if stream.offset >= nextProgress, let progress {
                    nextProgress = stream.offset + progressInterval
                    progress(BackupProgress(bytesRead: stream.offset, chunks: stats.chunks,
                                            newChunks: stats.newChunks, storedBytes: stats.storedBytes))
                }
            }
            try commitPack()
            if options.checkDumpComplete, let problem = completeness.problem() {
                throw DedupError.incompleteInput(problem)
            }
        } catch {
            pack?.abort()
            chunkList.abort()
            // Keep the filter in step with what was committed, best effort.
            try? repository.saveBloom(bloom)
            throw error
        }

        FaultInjection.crashPoint("backup.before-chunklist")
        let base = Timestamps.idStamp(options.time) + "_" + Self.sanitize(options.name)
        let existing = Set(try repository.manifestIDs())
        let list: (key: String, sha256: String, size: Int64)
        do {
            func candidate(_ n: Int) -> String { n == 0 ? base : "\(base)_\(n + 1)" }
            var n = 0
            // Skip ids whose manifest exists even if its chunk list was lost.
            list = try chunkList.finish { _ in
                while existing.contains(candidate(n)) { n += 1 }
                defer { n += 1 }
                return Manifest.chunkListKey(for: candidate(n))
            }
        } catch {
            chunkList.abort()
            throw error
        }
        let id = String(FileIO.lastComponent(list.key).dropLast(".chunks".count))
        stats.durationSeconds = Date().timeIntervalSince(started)
        let manifest = Manifest(
            formatVersion: Manifest.currentVersion, id: id, name: options.name, kind: options.kind,
            database: options.database, dbType: options.dbType, dbHost: options.dbHost, tags: options.tags,
            createdAt: Timestamps.iso8601(options.time), committedAt: Timestamps.iso8601(Date()),
            source: options.source, hostname: LockInfo.currentHost, dbbackupVersion: DedupStoreVersion.string,
            size: Int64(stream.offset), sha256: streamHasher.finish().hex,
            chunkList: .init(key: list.key, size: list.size, sha256: list.sha256, count: chunkList.count),
            stats: stats)
        FaultInjection.crashPoint("backup.before-manifest")
        try backend.put(Manifest.key(for: id), try manifest.encoded(), ifAbsent: true)
        FaultInjection.crashPoint("backup.after-manifest")
        // The backup is committed; a filter that cannot be saved is only a cache.
        do {
            try repository.saveBloom(bloom)
        } catch {
            repository.notice("could not save the Bloom filter (\(error)); the next run rebuilds it")
        }
        return manifest
    }

    /// Manifest ids keep letters, digits, '.', '-' and '_'; anything else becomes '-'.
    public static func sanitize(_ name: String) -> String {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        let s = String(name.map { allowed.contains($0) ? $0 : "-" })
        let trimmed = s.trimmingCharacters(in: CharacterSet(charactersIn: ".-"))
        return trimmed.isEmpty ? "backup" : String(trimmed.prefix(80))
    }
}

public enum DedupStoreVersion {
    public static let string = "0.1.0"
}
