import Foundation

/// Reads chunks back from packs, checking each against its id. Keeps a few packs
/// open so consecutive chunks from one pack cost one pread each.
final class ChunkFetcher {
    private let repository: Repository
    private let index: ChunkIndex
    private let decompressor: ZstdDecompressor
    private let hasher = SHA256Hasher()
    private var readers: [PackID: PackReader] = [:]
    private var readerOrder: [PackID] = []
    private let maxOpenPacks = 16
    let stored: UnsafeMutableRawBufferPointer
    let plain: UnsafeMutableRawBufferPointer

    init(repository: Repository) throws {
        self.repository = repository
        index = try repository.index()
        decompressor = try ZstdDecompressor()
        let maxChunk = repository.config.chunker.maxSize
        stored = .allocate(byteCount: ZstdCompressor.bound(maxChunk), alignment: 16)
        plain = .allocate(byteCount: maxChunk, alignment: 16)
    }

    deinit {
        stored.deallocate()
        plain.deallocate()
    }

    private func reader(_ pack: PackID) throws -> PackReader {
        if let r = readers[pack] { return r }
        let r = try PackReader(backend: repository.backend, id: pack)
        if readerOrder.count >= maxOpenPacks {
            let old = readerOrder.removeFirst()
            readers[old] = nil
        }
        readers[pack] = r
        readerOrder.append(pack)
        return r
    }

    /// The plaintext of a chunk, verified against its id; valid until the next call.
    func fetch(_ id: ChunkID, expectedLength: Int, manifest: String) throws -> UnsafeRawBufferPointer {
        guard let loc = try index.lookup(id) else {
            throw DedupError.chunkMissing(chunk: id.hex, manifest: manifest)
        }
        return try fetch(id, at: loc, expectedLength: expectedLength, manifest: manifest)
    }

    func fetch(_ id: ChunkID, at loc: ChunkLocation, expectedLength: Int, manifest: String) throws -> UnsafeRawBufferPointer {
        func corrupt(_ detail: String) -> DedupError {
            .chunkCorrupt(chunk: id.hex, pack: loc.pack.hex, manifest: manifest, detail: detail)
        }
        guard Int(loc.rawLength) == expectedLength else {
            throw corrupt("the index records \(loc.rawLength) bytes, the backup \(expectedLength)")
        }
        guard Int(loc.rawLength) <= plain.count, Int(loc.storedLength) <= stored.count else {
            throw corrupt("its lengths (\(loc.rawLength) plain, \(loc.storedLength) stored) exceed this repository's maximum chunk size")
        }
        guard loc.flags == 0 else {
            throw corrupt("it carries flags \(loc.flags) that this dbbackup does not know (written by a newer version?)")
        }
        let r: PackReader
        do {
            r = try reader(loc.pack)
            try r.readStored(loc, id: id, into: stored)
        } catch let e as DedupError {
            switch e {
            case .io(_, _, let code) where code == ENOENT:
                throw corrupt("its pack is missing")
            case .chunkCorrupt(_, _, _, let detail):
                throw corrupt(detail)
            case .shortRead:
                throw corrupt("its pack ends before it (truncated)")
            default:
                throw e
            }
        }
        let storedBytes = UnsafeRawBufferPointer(rebasing: stored[0..<Int(loc.storedLength)])
        let out: UnsafeRawBufferPointer
        switch ChunkEncoding(rawValue: loc.encoding) {
        case .raw:
            guard loc.storedLength == loc.rawLength else { throw corrupt("raw chunk with stored length \(loc.storedLength)") }
            out = storedBytes
        case .zstd:
            let target = UnsafeMutableRawBufferPointer(rebasing: plain[0..<Int(loc.rawLength)])
            let n: Int
            do {
                n = try decompressor.decompress(storedBytes, into: target)
            } catch {
                throw corrupt("zstd: \(error)")
            }
            guard n == Int(loc.rawLength) else { throw corrupt("decompressed to \(n) bytes, expected \(loc.rawLength)") }
            out = UnsafeRawBufferPointer(target)
        case nil:
            throw corrupt("unknown encoding \(loc.encoding) (written by a newer dbbackup?)")
        }
        guard hasher.digest(out) == id else { throw corrupt("SHA-256 of its contents does not match its id") }
        return out
    }
}

/// Where a restore writes: a file (atomically: temporary name, then rename) or
/// standard output.
public enum RestoreTarget {
    case file(path: String, overwrite: Bool)
    case standardOutput
}

/// Restores a backup byte for byte, checking every chunk and the whole stream.
public final class Restorer {
    private let repository: Repository
    public var progress: ((UInt64) -> Void)?
    /// How long to wait for gc or an index rebuild to finish.
    public var lockWait: TimeInterval = 600

    public init(repository: Repository) {
        self.repository = repository
    }

    @discardableResult
    public func restore(_ idOrPrefix: String, to target: RestoreTarget) throws -> Manifest {
        // Shared: gc and index rebuild, which move or forget chunks, wait for us.
        let lock = try repository.lock(.shared, command: "restore \(idOrPrefix)", wait: lockWait)
        defer { lock.release() }
        let id = try repository.resolveManifestID(idOrPrefix)
        let manifest = try repository.loadManifest(id)
        let list = try ChunkListReader(backend: repository.backend, manifest: manifest)
        let fetcher = try ChunkFetcher(repository: repository)

        let fd: Int32
        var tmpPath: String?
        var finalPath = "standard output"
        switch target {
        case .standardOutput:
            fd = STDOUT_FILENO
        case .file(let path, let overwrite):
            finalPath = path
            if !overwrite && FileIO.exists(path) {
                throw DedupError.invalidArgument("\(path) already exists; remove it or pass --force to replace it")
            }
            let dir = FileIO.parent(path)
            let name = FileIO.lastComponent(path)
            let tmp = (dir.isEmpty ? "." : dir) + "/.\(name).dbbackup-partial-\(Hex.encode(SecureRandom.bytes(4)))"
            fd = try FileIO.open(tmp, O_WRONLY | O_CREAT | O_EXCL, mode: 0o600)
            InterruptCleanup.register(tmp)
            tmpPath = tmp
        }

        let writeBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4 << 20, alignment: 16)
        defer { writeBuffer.deallocate() }
        var buffered = 0
        let outName = tmpPath ?? finalPath
        func flush() throws {
            try FileIO.writeAll(fd, UnsafeRawBufferPointer(rebasing: writeBuffer[0..<buffered]), path: outName)
            buffered = 0
        }

        do {
            let streamHasher = SHA256Hasher()
            var written: UInt64 = 0
            var nextProgress: UInt64 = 64 << 20
            try list.forEach { id, length in
                let plain = try fetcher.fetch(id, expectedLength: length, manifest: manifest.id)
                streamHasher.update(plain)
                if buffered + plain.count > writeBuffer.count { try flush() }
                if plain.count > writeBuffer.count {
                    try FileIO.writeAll(fd, plain, path: outName)
                } else {
                    UnsafeMutableRawBufferPointer(rebasing: writeBuffer[buffered..<(buffered + plain.count)]).copyMemory(from: plain)
                    buffered += plain.count
                }
                written += UInt64(plain.count)
                if written >= nextProgress, let progress {
                    nextProgress = written + (64 << 20)
                    progress(written)
                }
            }
            try flush()
            let digest = streamHasher.finish().hex
            guard written == UInt64(manifest.size), digest == manifest.sha256 else {
                throw DedupError.streamChecksumMismatch(manifest: manifest.id, expected: manifest.sha256, actual: digest)
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
