import Foundation

/// Copies a repository to another place (folder or bucket, either way) by
/// copying the objects the destination lacks, byte for byte, in the order a
/// backup commits them: key objects and config (a new destination), packs,
/// chunk lists, manifests, then the damaged-copy records and change notes. An
/// interrupted sync leaves the destination a repository whose every listed
/// backup restores (a manifest is copied only after everything it uses), and
/// running it again copies only what is still missing.
///
/// The source is read under a shared lock (its gc waits); the destination is
/// written under a shared lock as a backup is (its gc does not delete what is
/// not referenced yet), and `delete` removes what the source no longer has
/// under the destination's exclusive lock: manifests first, then their chunk
/// lists, then packs, so that no listed backup ever lacks its data.
///
/// Verification records (`verified/`) are not copied: the copy has not been
/// verified. Locks and temporaries stay where they are.
public final class RepositorySync {
    public struct Report: Equatable, Sendable {
        public var packs = 0, chunkLists = 0, manifests = 0, others = 0
        public var bytes: Int64 = 0
        /// Objects the destination had already, of the same size.
        public var present = 0
        public var deletedManifests = 0, deletedChunkLists = 0, deletedPacks = 0, deletedOthers = 0
        /// True when the destination was made by this sync (config and keys copied).
        public var createdDestination = false
        public var copied: Int { packs + chunkLists + manifests + others }
        public var deleted: Int { deletedManifests + deletedChunkLists + deletedPacks + deletedOthers }
    }

    public let source: Repository
    public let destination: Backend
    public var dryRun = false
    /// How long to wait for the destination's conflicting locks (its gc).
    public var lockWait: TimeInterval = 0
    /// Told of progress (every 64 objects copied) and of waits.
    public var onNotice: ((String) -> Void)?

    /// The prefixes copied, in commit order; manifests/ is split by suffix.
    static let copiedOrder = ["packs/", "manifests/*.chunks", "manifests/*.manifest.json", DamagedPackRecord.folder, ChangeNote.folder]

    public init(source: Repository, destination: Backend) {
        self.source = source
        self.destination = destination
    }

    public func run(delete: Bool) throws -> Report {
        var report = Report()
        let sourceLock = try source.lock(.shared, command: "sync (source)", wait: lockWait)
        defer { sourceLock.release() }
        try prepareDestination(&report)
        var lock: RepositoryLock? =
            dryRun && report.createdDestination
            ? nil : try RepositoryLock(backend: destination, kind: .shared, command: "sync", wait: lockWait, onWait: onNotice)
        defer { lock?.release() }

        let wanted = try objects(of: source.backend)
        let present = report.createdDestination && dryRun ? [:] : try objects(of: destination)
        // Refused before anything is copied: an object of the same key and another size.
        for (key, size) in wanted {
            if let there = present[key], there != size {
                throw DedupError.invalidArgument(
                    "\(destination.location)/\(key) holds \(there) bytes, the source's \(size): the destination is not a copy of \(source.path); nothing more was copied")
            }
        }
        for group in Self.copiedOrder {
            for key in wanted.keys.filter({ Self.belongs($0, to: group) }).sorted() {
                guard let size = wanted[key] else { continue }
                if present[key] != nil {
                    report.present += 1
                    continue
                }
                if !dryRun { try copy(key, size: size) }
                report.bytes += size
                switch group {
                case "packs/": report.packs += 1
                case "manifests/*.chunks":
                    report.chunkLists += 1
                    if report.chunkLists == 1 { FaultInjection.crashPoint("sync.after-first-chunk-list") }
                case "manifests/*.manifest.json": report.manifests += 1
                default: report.others += 1
                }
                if report.copied % 64 == 0 {
                    onNotice?("sync: \(report.copied) objects copied (\(report.bytes) bytes)")
                }
            }
        }
        if delete {
            lock?.release()
            lock = nil
            let exclusive = dryRun ? nil : try RepositoryLock(
                backend: destination, kind: .exclusive, command: "sync --delete", wait: lockWait, onWait: onNotice)
            defer { exclusive?.release() }
            // Listed again under the lock: what the destination holds now.
            let there = dryRun ? present : try objects(of: destination)
            for group in Self.copiedOrder.reversed().filter({ $0 != ChangeNote.folder }) {
                let gone = there.keys.filter { Self.belongs($0, to: group) && wanted[$0] == nil }.sorted()
                if !dryRun { try destination.delete(keys: gone) }
                switch group {
                case "packs/": report.deletedPacks += gone.count
                case "manifests/*.chunks": report.deletedChunkLists += gone.count
                case "manifests/*.manifest.json": report.deletedManifests += gone.count
                default: report.deletedOthers += gone.count
                }
            }
        }
        return report
    }

    /// A destination with the source's config, or an empty place made into one:
    /// key objects first, then the config (from then on it is a repository).
    private func prepareDestination(_ report: inout Report) throws {
        var existing: [UInt8]?
        var placeMissing = false
        do {
            existing = try destination.get("config")
        } catch let e as DedupError where e.storageFailure == .notFound {
            placeMissing = true  // a bucket not made yet: prepareForNewRepository makes it
        }
        if let bytes = existing {
            let config = try RepositoryConfig.decode(bytes, path: destination.location)
            guard config.id == source.config.id else {
                throw DedupError.invalidArgument(
                    "\(destination.location) is another repository (id \(config.id), the source's is \(source.config.id)); sync copies into an empty place or a copy of the source")
            }
            return
        }
        guard try placeMissing || destination.canHoldNewRepository() else {
            throw DedupError.directoryNotEmpty(path: destination.location)
        }
        report.createdDestination = true
        guard !dryRun else { return }
        try destination.prepareForNewRepository()
        for key in try source.backend.keys(WrappedKey.folder) {
            guard let size = try source.backend.size(key) else { continue }
            try copy(key, size: size)
        }
        guard let config = try source.backend.get("config") else { throw DedupError.notARepository(path: source.path) }
        try destination.put("config", config, ifAbsent: true)
    }

    /// The objects sync copies, with their sizes.
    private func objects(of backend: Backend) throws -> [String: Int64] {
        var out = [String: Int64]()
        for prefix in ["packs/", "manifests/", DamagedPackRecord.folder, ChangeNote.folder] {
            for o in try backend.list(prefix) where Self.copiedOrder.contains(where: { Self.belongs(o.key, to: $0) }) {
                out[o.key] = o.size
            }
        }
        return out
    }

    static func belongs(_ key: String, to group: String) -> Bool {
        switch group {
        case "manifests/*.chunks": return key.hasPrefix("manifests/") && key.hasSuffix(".chunks")
        case "manifests/*.manifest.json": return key.hasPrefix("manifests/") && key.hasSuffix(".manifest.json")
        default: return key.hasPrefix(group)
        }
    }

    /// Streams one object across in 8 MiB pieces; visible at the destination
    /// only once whole (a writer's commit).
    private func copy(_ key: String, size: Int64) throws {
        let reader = try source.backend.openReader(key)
        guard reader.size == size else {
            throw DedupError.storage(BackendError(
                "read", source.path + "/" + key, .other, detail: "changed size while syncing (\(size) -> \(reader.size) bytes)"))
        }
        let writer = try destination.create(key, ifAbsent: true)
        let piece = 8 << 20
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: piece, alignment: 16)
        defer { buffer.deallocate() }
        do {
            var offset: Int64 = 0
            while offset < size {
                let n = Int(min(Int64(piece), size - offset))
                let part = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n])
                try reader.read(at: offset, into: part)
                try writer.write(UnsafeRawBufferPointer(part))
                offset += Int64(n)
            }
            try writer.commit()
        } catch let e as DedupError where e.storageFailure == .alreadyExists {
            // Another sync (or this one, resumed) put it there meanwhile: the same object.
            writer.abort()
            guard try destination.size(key) == size else { throw e }
        } catch {
            writer.abort()
            throw error
        }
    }
}
