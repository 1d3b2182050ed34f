import Foundation

/// An open chunk-store repository: its config, backend, chunk index and Bloom filter.
///
/// Layout of a local repository (docs/FORMAT.md):
///   config                          the repository's format and parameters
///   packs/xx/<pack id>.pack         chunks, each pack with its own trailer index
///   manifests/<id>.manifest.json    one committed backup (JSON)
///   manifests/<id>.chunks           its chunk list (binary, checksummed)
///   locks/                          shared and exclusive locks
///   tmp/                            objects being written
///
/// The chunk index and the Bloom filter are a local cache outside the repository
/// (`cacheDirectory`), rebuilt from the pack trailers when lost: the repository
/// itself can be read-only, on NFS, or shared by several hosts.
public final class Repository {
    public let backend: Backend
    public let config: RepositoryConfig
    /// Where the repository is, for messages: its backend's location.
    public var path: String { backend.location }
    /// This repository's cache folder: index.lmdb, bloom, gc scratch files.
    public let cacheDirectory: String
    private var chunkIndex: ChunkIndex?
    private var bloomFilter: BloomFilter?
    /// The damaged-copy records, once listed (`damagedChunks()`).
    var damaged: DamagedChunks?

    /// Messages about self-repair of the cache (index rebuilt, packs indexed).
    public private(set) var notices: [String] = []
    /// Called with each notice as it happens (the CLI prints them on stderr).
    public var onNotice: ((String) -> Void)?

    func notice(_ message: String) {
        stateLock.withLock { notices.append(message) }
        onNotice?(message)
    }

    /// True when `backend` holds a repository (a config object).
    public static func isRepository(_ backend: Backend) -> Bool {
        ((try? backend.exists("config")) ?? false)
    }

    /// Opens the repository on `backend`, or creates one with defaults when the
    /// place is absent or empty (`created` tells which). A failure to look is
    /// thrown: a place that could not be read is never taken for an empty one.
    public static func openOrCreate(
        on backend: Backend, cacheRoot: String? = nil, key: [UInt8]? = nil
    ) throws -> (repository: Repository, created: Bool) {
        do {
            return (try Repository(backend: backend, cacheRoot: cacheRoot, key: key), false)
        } catch DedupError.notARepository {
            // No config: a new repository may go here if nothing else is.
        }
        guard try backend.canHoldNewRepository() else { throw DedupError.notARepository(path: backend.location) }
        if key != nil {
            throw DedupError.invalidArgument(
                "there is no repository at \(backend.location) yet, and a key was given; create an encrypted one first: dbbackup dedup init --encrypt --key-file <file>"
            )
        }
        return (try initialize(on: backend, cacheRoot: cacheRoot), true)
    }

    /// True when a local folder holds a repository.
    public static func isRepository(_ path: String) -> Bool { isRepository(LocalBackend(root: path)) }

    /// Creates a new repository in a local folder (absent or empty).
    @discardableResult
    public static func initialize(at path: String, chunker: ChunkerParameters = .default,
                                  compressionLevel: Int = 3, compressionMode: CompressionMode = .adaptive,
                                  packSize: Int = RepositoryConfig.defaultPackSize,
                                  cacheRoot: String? = nil, encryptionKey: [UInt8]? = nil,
                                  deltas: Bool = true) throws -> Repository {
        try initialize(on: RepositoryLocation(path).makeBackend(), chunker: chunker, compressionLevel: compressionLevel,
                       compressionMode: compressionMode, packSize: packSize, cacheRoot: cacheRoot,
                       encryptionKey: encryptionKey, deltas: deltas)
    }

    /// Creates a new repository on `backend`, which must be empty.
    /// `compressionLevel` is the highest level an adaptive repository uses, and
    /// every unit's level in a fixed one (`compressionMode`).
    @discardableResult
    public static func initialize(on backend: Backend, chunker: ChunkerParameters = .default,
                                  compressionLevel: Int = 3, compressionMode: CompressionMode = .adaptive,
                                  packSize: Int = RepositoryConfig.defaultPackSize,
                                  cacheRoot: String? = nil, encryptionKey: [UInt8]? = nil,
                                  deltas: Bool = true) throws -> Repository {
        try chunker.validate()
        _ = try ZstdCompressor(level: compressionLevel)
        guard packSize >= 1 << 20, packSize <= 1 << 30 else {
            throw DedupError.invalidArgument("pack size must be between 1MiB and 1GiB")
        }
        if isRepository(backend) { throw DedupError.repositoryExists(path: backend.location) }
        try backend.prepareForNewRepository()
        // The config last: once it exists this is a repository.
        var config = RepositoryConfig(chunker: chunker, compressionLevel: compressionLevel,
                                      compressionMode: compressionMode, packSize: packSize,
                                      encrypted: encryptionKey != nil)
        if !deltas { config.deltas = false }
        if let encryptionKey {
            // The key object before the config: a repository is never encrypted without one.
            try WrappedKey.wrap(SecureRandom.bytes(64), secret: encryptionKey, repositoryID: config.id).store(
                in: backend)
        }
        try backend.put("config", try config.encoded(), ifAbsent: true)
        return try Repository(backend: backend, cacheRoot: cacheRoot, key: encryptionKey)
    }

    /// True for a local folder that is absent, empty, or holds only the empty
    /// folders an interrupted `init` leaves: a repository may be created there.
    public static func isEmptyOrSkeleton(_ path: String) -> Bool { LocalBackend(root: path).isEmptyOrSkeleton }

    /// Opens the repository in a local folder.
    public convenience init(path: String, cacheRoot: String? = nil, key: [UInt8]? = nil) throws {
        guard FileIO.isDirectory(path) else { throw DedupError.notARepository(path: path) }
        try self.init(backend: RepositoryLocation(path).makeBackend(), cacheRoot: cacheRoot, key: key)
    }

    /// Opens an existing repository; a clear error if `backend` holds none. The
    /// cache goes under `cacheRoot` (default: `Repository.defaultCacheRoot()`).
    /// An encrypted one opens without `key` too (its manifests are readable), but
    /// anything that reads or writes data then throws `DedupError.keyRequired`; a
    /// key that opens none of its key objects is `DedupError.wrongKey`.
    public init(backend: Backend, cacheRoot: String? = nil, key: [UInt8]? = nil) throws {
        self.backend = backend
        let path = backend.location
        guard let bytes = try backend.get("config") else { throw DedupError.notARepository(path: path) }
        config = try RepositoryConfig.decode(bytes, path: path)
        cacheDirectory = Self.cacheDirectory(root: cacheRoot ?? Self.defaultCacheRoot(), repositoryID: config.id,
                                             identity: backend.cacheIdentity)
        if config.isEncrypted, let key {
            guard
                let (master, _) = try Self.unwrapMaster(
                    backend: backend, secret: key, repositoryID: config.id, path: path)
            else {
                throw DedupError.wrongKey(path: path)
            }
            cipher = RepositoryCipher(master: master)
        } else if !config.isEncrypted {
            // A plain config beside key objects: someone turned encryption off by
            // editing the config. New data would go out in plaintext: refused.
            if try !backend.list(WrappedKey.folder).isEmpty {
                throw DedupError.repositoryTampered(
                    path: path,
                    detail:
                        "its config says it is not encrypted, but keys/ holds key objects; put its original config back"
                )
            }
            if key != nil {
                throw DedupError.invalidArgument(
                    "repository \(path) is not encrypted, but a key was given (--key-file or DBBACKUP_DEDUP_KEY); drop the key: it is only for encrypted repositories"
                )
            }
        }
    }

    /// What a manifest records as the stream's SHA-256: the digest itself, or in
    /// an encrypted repository an HMAC of it under the id key (a plain digest
    /// would confirm known content).
    public func recordedStreamDigest(_ digest: ChunkID) -> String {
        guard let cipher else { return digest.hex }
        return hmacSHA256(key: cipher.idKey, Array("stream\0".utf8) + digest.bytes).hex
    }

    /// The authentication tag of a manifest in an encrypted repository (nil in a
    /// plain one): HMAC under the id key of what ties it to its data.
    public func manifestTag(_ m: Manifest) -> String? {
        cipher.map { Self.manifestTag(m, cipher: $0) }
    }

    /// The tag of `m` under `cipher`'s id key. Format 1 covers the id, size,
    /// digest, the chunk list's reference, kind and archived file; format 2 the
    /// same fields of every member, in order, each with its name.
    static func manifestTag(_ m: Manifest, cipher: RepositoryCipher) -> String {
        func reference(_ ref: Manifest.ChunkListRef) -> [String] {
            [ref.key, String(ref.size), ref.sha256, String(ref.count)]
        }
        var fields: [String]
        if let members = m.members {
            fields = ["manifest-v2", m.id, String(m.size), String(members.count)]
            for member in members {
                fields += [member.name, String(member.size), member.sha256 ?? ""] + reference(member.chunkList)
            }
        } else {
            fields =
                ["manifest", m.id, String(m.size), m.sha256 ?? ""] + (m.chunkList.map(reference) ?? ["", "", "", ""])
        }
        fields += [m.kind, m.archive?.file ?? ""]
        return hmacSHA256(key: cipher.idKey, Array(fields.joined(separator: "\0").utf8)).hex
    }

    /// True when a backup holds `id`.
    public func hasManifest(_ id: String) throws -> Bool { try backend.exists(Manifest.key(for: id)) }

    /// The data cipher of an encrypted repository opened with its key (nil for a
    /// plain one).
    public private(set) var cipher: RepositoryCipher?

    /// Throws `keyRequired` for an encrypted repository opened without its key.
    public func requireKey() throws {
        if config.isEncrypted && cipher == nil { throw DedupError.keyRequired(path: path) }
    }

    /// A hasher for chunk ids: SHA-256, or HMAC-SHA256 with the id key when encrypted.
    public func makeChunkHasher() throws -> SHA256Hasher {
        try requireKey()
        return SHA256Hasher(hmacKey: cipher?.idKey)
    }

    /// The master key under `secret`, and the key object that holds it.
    static func unwrapMaster(
        backend: Backend, secret: [UInt8], repositoryID: String, path: String
    ) throws -> ([UInt8], String)? {
        let objects = try backend.list(WrappedKey.folder).filter { $0.key.hasSuffix(".json") }
        guard !objects.isEmpty else {
            throw DedupError.repositoryTampered(
                path: path,
                detail: "its config says it is encrypted, but keys/ holds no key object; put its key objects back")
        }
        for object in objects {
            guard let bytes = try backend.get(object.key),
                let wrapped = try? JSONDecoder().decode(WrappedKey.self, from: Data(bytes))
            else { continue }
            // A key object this build cannot use does not stop the search.
            if let master = try? wrapped.unwrap(secret: secret, repositoryID: repositoryID) {
                return (master, object.key)
            }
        }
        return nil
    }

    /// Re-wraps the master key under `newSecret` (a new key object), then deletes
    /// the key object `oldSecret` opened. No data is rewritten.
    public func rotateKey(oldSecret: [UInt8], newSecret: [UInt8]) throws {
        guard config.isEncrypted else { throw DedupError.invalidArgument("repository \(path) is not encrypted") }
        guard
            let (master, oldKey) = try Self.unwrapMaster(
                backend: backend, secret: oldSecret, repositoryID: config.id, path: path)
        else {
            throw DedupError.wrongKey(path: path)
        }
        try WrappedKey.wrap(master, secret: newSecret, repositoryID: config.id).store(in: backend)
        try backend.delete(oldKey)
    }

    /// Where caches go: $DBBACKUP_CACHE_DIR, else systemd's $CACHE_DIRECTORY (a
    /// unit's CacheDirectory=), else $XDG_CACHE_HOME/dbbackup, else ~/.cache/dbbackup.
    public static func defaultCacheRoot(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        if let dir = environment["DBBACKUP_CACHE_DIR"], !dir.isEmpty { return FileIO.absolute(dir) }
        if let dirs = environment["CACHE_DIRECTORY"], let first = dirs.split(separator: ":").first {
            return FileIO.absolute(String(first)) + "/dbbackup"
        }
        if let xdg = environment["XDG_CACHE_HOME"], xdg.hasPrefix("/") { return xdg + "/dbbackup" }
        let home =
            environment["HOME"].flatMap { $0.isEmpty ? nil : $0 }
            ?? FileManager.default.homeDirectoryForCurrentUser.path
        return home + "/.cache/dbbackup"
    }

    /// One folder per repository, path and host: `<repository id>-<hash of the
    /// host name and the real path>`. A copy of a repository elsewhere (same id, other packs) so gets a
    /// cache of its own and never finds chunks that only the original holds.
    static func cacheDirectory(root: String, repositoryID: String, identity: String) -> String {
        // The host too: a cache folder shared between machines (home on NFS) still
        // gives each machine's view of the repository a cache of its own.
        let tag = SHA256Hasher.hash(Array((LockInfo.currentHost + "\n" + identity).utf8)).hex.prefix(12)
        // The id comes from the repository's config: only hex digits go into a path.
        let id = repositoryID.count == 32 && repositoryID.allSatisfy(\.isHexDigit)
            ? repositoryID : String(SHA256Hasher.hash(Array(repositoryID.utf8)).hex.prefix(32))
        return root + "/" + id + "-" + tag
    }


    // MARK: - Index and Bloom filter (the cache)

    /// How long a cache that listed every pack is trusted without listing them
    /// again (`index()`): other writers' new packs stay unseen that long, a loss
    /// of deduplication only. $DBBACKUP_INDEX_SYNC_SECONDS overrides it (0: list
    /// on every open, as maintenance always does).
    public static var fullSyncInterval: TimeInterval {
        if let text = ProcessInfo.processInfo.environment["DBBACKUP_INDEX_SYNC_SECONDS"],
           let seconds = TimeInterval(text), seconds >= 0 {
            return seconds
        }
        return 3600
    }

    /// True once this process brought the index in step with a full listing of
    /// the packs: every indexed pack then exists at its indexed size until the
    /// lock is released (removal needs the exclusive lock).
    private var indexListed: Bool {
        get { stateLock.withLock { listed } }
        set { stateLock.withLock { listed = newValue } }
    }
    private var listed = false
    /// Guards the packs confirmed, the listing flag and the notices: several
    /// restores of one backup's members run at once on one repository.
    private let stateLock = NSLock()
    /// One thread at a time opens the index or brings it in step with the packs.
    private let indexLock = NSRecursiveLock()
    /// Packs a trusted index found present at their indexed size, once each.
    private var confirmedPacks = Set<PackID>()

    /// The chunk index for the frequent commands (backup, archive, restore): on
    /// first use opened and, when it listed every pack less than
    /// `fullSyncInterval` ago, trusted without a listing (its cost is then
    /// independent of the repository's size). A trusted index is checked where it
    /// is used: `locate` confirms each pack it hands out, once per process, and
    /// lists all packs again when one is gone or resized (another host's gc).
    public func index() throws -> ChunkIndex {
        indexLock.lock()
        defer { indexLock.unlock() }
        if let chunkIndex { return chunkIndex }
        try requireKey()
        let existed = FileIO.exists(indexPath)
        let idx = try openIndexFile()
        if existed, let last = try idx.lastFullSync(), abs(Date().timeIntervalSince(last)) < Self.fullSyncInterval {
            // Copies verify found corrupt stay out, also of a trusted cache (damaged/
            // is one small folder, empty in a healthy repository).
            for (pack, copies) in try damagedChunks().byPack where try idx.packSize(pack) != nil {
                try idx.dropChunks(Array(copies.keys), inPack: pack)
            }
        } else {
            try synchronizeIndex(idx, existed: existed)
        }
        return idx
    }

    /// The chunk index brought in step with a full listing of the packs in this
    /// process (verify, gc, stats: commands that must see every pack).
    public func listedIndex() throws -> ChunkIndex {
        let idx = try index()
        if !indexListed { try synchronizeIndex(idx, existed: true) }
        return idx
    }

    /// The index brought in step with the packs present now, although this
    /// process listed them before (gc: a backup committed meanwhile wrote packs
    /// its index does not know yet).
    func listIndexAgain(_ idx: ChunkIndex) throws {
        try synchronizeIndex(idx, existed: true)
    }

    /// Where a chunk is stored, in a pack that exists at its indexed size. A
    /// trusted index that hands out a pack gone or resized (another host's gc, a
    /// hand-deleted or truncated pack) is brought in step by a full listing, and
    /// the chunk looked up again. `listIfUnknown`: a chunk the trusted index does
    /// not know is looked up again after a listing too (restore of a backup
    /// another host made); a backup stores it instead.
    func locate(_ id: ChunkID, in idx: ChunkIndex, listIfUnknown: Bool) throws -> ChunkLocation? {
        if let loc = try idx.lookup(id) {
            if indexListed || isConfirmed(loc.pack) { return loc }
            let indexed = try idx.packSize(loc.pack)
            if let indexed, try backend.size(loc.pack.key) == indexed {
                confirm(loc.pack)
                return loc
            }
            notice(
                "index: pack \(loc.pack.hex) is gone or changed size since this cache last listed the packs; listing them again"
            )
        } else if !listIfUnknown || indexListed {
            return nil
        }
        try synchronizeIndex(idx, existed: true)
        return try idx.lookup(id)
    }

    /// Confirms together, several requests in flight, the packs that the chunks
    /// `ids` are indexed in and this process has not confirmed yet, so that
    /// `locate` then finds them confirmed: a restore asks this for a stretch of
    /// its chunk list at a time instead of paying a round trip per new pack in
    /// turn. A pack gone or resized stays unconfirmed, for `locate` to deal with.
    func confirmPacks(of ids: [ChunkID], in idx: ChunkIndex) throws {
        guard !indexListed else { return }
        var packs = [(pack: PackID, indexed: Int64)]()
        var seen = Set<PackID>()
        for id in ids {
            guard let loc = try idx.lookup(id), !isConfirmed(loc.pack), seen.insert(loc.pack).inserted,
                let indexed = try idx.packSize(loc.pack)
            else { continue }
            packs.append((loc.pack, indexed))
        }
        // One alone costs `locate` the same round trip.
        guard packs.count > 1 else { return }
        var present = [Bool](repeating: false, count: packs.count)
        present.withUnsafeMutableBufferPointer { present in
            guard let base = present.baseAddress else { return }
            let shared = SharedPointer(base: base)
            forEachWaiting(packs.count, inFlight: 8) { i in
                shared[i] = (try? backend.size(packs[i].pack.key)) == packs[i].indexed
            }
        }
        for (p, ok) in zip(packs, present) where ok { confirm(p.pack) }
    }

    /// A pack this process wrote and indexed: present at its indexed size.
    func confirmWritten(_ pack: PackID) { confirm(pack) }

    private func isConfirmed(_ pack: PackID) -> Bool { stateLock.withLock { confirmedPacks.contains(pack) } }
    private func confirm(_ pack: PackID) { _ = stateLock.withLock { confirmedPacks.insert(pack) } }

    private var indexPath: String { cacheDirectory + "/index.lmdb" }

    /// Opens (or creates) the LMDB file without bringing it in step.
    private func openIndexFile() throws -> ChunkIndex {
        if let chunkIndex { return chunkIndex }
        do {
            try FileIO.makeDirectories(cacheDirectory)
        } catch let e as DedupError {
            throw DedupError.cacheUnavailable(path: cacheDirectory, reason: e.message)
        }
        let idx = try ChunkIndex(path: indexPath)
        chunkIndex = idx
        return idx
    }

    /// Brings the index in step with the packs present, incrementally (it never
    /// empties the index, so commands running meanwhile keep finding chunks):
    /// packs it knows that are gone, or whose size changed (truncated), are
    /// forgotten; packs it has not read (a crash between a pack's commit and its
    /// indexing, another writer's packs, or a lost index) are read. Records when
    /// the listing began, so that the next `index()` within `fullSyncInterval`
    /// trusts the cache.
    private func synchronizeIndex(_ idx: ChunkIndex, existed: Bool) throws {
        indexLock.lock()
        defer { indexLock.unlock() }
        let started = Date()
        let present = try listPacks()
        let known = try idx.indexedPacks()
        let missing = Set(known.keys.filter { present[$0] == nil })
        let resized = Set(known.filter { k, v in present[k].map { $0 != v.size } ?? false }.keys)
        if !missing.isEmpty {
            notice(
                "index: \(missing.count) indexed pack(s) no longer exist; their chunks are forgotten, and the next backup of the same data stores them again"
            )
        }
        if !resized.isEmpty {
            notice(
                "index: \(resized.count) pack(s) changed size since they were indexed (damaged?); re-reading them: \(resized.map(\.hex).sorted().joined(separator: ", "))"
            )
        }
        try idx.forget(packs: missing.union(resized))
        // Copies verify found corrupt stay out, also of a cache made before it did.
        let damaged = try damagedChunks()
        for (pack, copies) in damaged.byPack where present[pack] != nil && known[pack] != nil && !resized.contains(pack)
        {
            try idx.dropChunks(Array(copies.keys), inPack: pack)
        }
        let unindexed = present.filter { known[$0.key] == nil || resized.contains($0.key) }
        if !unindexed.isEmpty {
            if !existed {
                notice("index: no chunk index found; rebuilding it from \(present.count) pack(s)")
            } else if unindexed.count > resized.count {
                notice("index: reading \(unindexed.count - resized.count) pack(s) missing from the index")
            }
            for (pack, size) in unindexed.sorted(by: { $0.key.hex < $1.key.hex }) {
                try indexPack(idx, pack: pack, size: size, damaged: damaged)
            }
        }
        try idx.setLastFullSync(started)
        indexListed = true
    }

    /// Reads one pack's trailer into the index, less the copies verify found
    /// corrupt. A damaged pack is reported and left out (verify names the backups
    /// it breaks).
    private func indexPack(_ idx: ChunkIndex, pack: PackID, size: Int64, damaged: DamagedChunks) throws {
        do {
            let entries = try PackReader(backend: backend, id: pack, cipher: cipher).entries()
            try idx.insert(pack: pack, size: size, entries: entries.filter { !damaged.contains($0) })
        } catch let e as DedupError {
            if case .packCorrupt = e {
                notice("index: skipping unreadable \(e.message)")
                return
            }
            throw e
        }
    }

    /// Recreates the index and Bloom filter from the packs alone (under the
    /// exclusive lock: the index is empty while it refills).
    public func rebuildIndex() throws -> (packs: Int, chunks: Int) {
        try self.requireKey()
        let started = Date()
        let packs = try listPacks()
        let damaged = try damagedChunks()
        let idx = try openIndexFile()
        try idx.clear()
        for (pack, size) in packs.sorted(by: { $0.key.hex < $1.key.hex }) {
            try indexPack(idx, pack: pack, size: size, damaged: damaged)
        }
        try idx.setLastFullSync(started)
        indexListed = true
        try saveBloom(try freshBloom(), fresh: true)
        return (packs.count, try idx.chunkCount())
    }

    /// Every pack object present, with its size.
    public func listPacks() throws -> [PackID: Int64] {
        var out = [PackID: Int64]()
        for obj in try backend.list("packs/") {
            if let id = PackID(key: obj.key) { out[id] = obj.size }
        }
        return out
    }

    var bloomPath: String { cacheDirectory + "/bloom" }

    /// The Bloom filter: the saved one, caught up from the index's insert log
    /// with what other writers added since it was saved (a cost proportional to
    /// that, not to the index), else rebuilt from the whole index (no saved
    /// filter, one of another index, or a log that no longer reaches back).
    public func bloom() throws -> BloomFilter {
        if let bloomFilter { return bloomFilter }
        let b = try caughtUp(savedBloom()) ?? freshBloom()
        bloomFilter = b
        return b
    }

    private func savedBloom() -> BloomFilter? {
        guard let bytes = try? FileIO.readFile(bloomPath) else { return nil }
        return BloomFilter(encoded: bytes)
    }

    /// `filter` with every index entry inserted since its sequence, or nil when
    /// the log cannot say which (or it outgrew its capacity).
    private func caughtUp(_ filter: BloomFilter?) throws -> BloomFilter? {
        guard var b = filter else { return nil }
        let idx = try index()
        guard let reached = try idx.forEachInserted(from: b.sequence, { id in
            b.insert(id)
            b.count += 1
        }) else { return nil }
        b.sequence = reached
        return b.count <= b.capacity ? b : nil
    }

    /// A backup uses the Bloom filter from this many chunks of its stream on (one
    /// WAL segment has a few dozen: their index lookups cost less than reading and
    /// writing a filter sized for the whole repository).
    public var bloomAfterChunks = 8192

    /// Filters this process built from the whole index (tests check that other
    /// writers cost a catch-up, not a rebuild).
    private(set) var bloomRebuilds = 0

    /// A filter built anew from the index (after a rebuild, gc, or when stale).
    public func freshBloom() throws -> BloomFilter {
        bloomRebuilds += 1
        let idx = try index()
        // Read before the scan: entries are only added meanwhile (removal needs
        // the exclusive lock), so the filter holds every entry up to `sequence`.
        let sequence = try idx.insertSequence()
        let count = try idx.chunkCount()
        var b = BloomFilter(capacity: max(count * 2, 1 << 16))
        try idx.forEachChunk { id, _ in b.insert(id) }
        b.count = count
        b.sequence = sequence
        return b
    }

    /// Persists a filter (atomically). A `fresh` one (built from the index) is
    /// written as it is; otherwise what is written is the saved filter caught up
    /// from the insert log, which holds this process's inserts and every other
    /// writer's (else `filter` caught up, else one built anew). The log before
    /// the replaced filter's sequence is dropped: a reader of that filter can still
    /// catch up. No lock is needed: every writer writes a filter that holds the
    /// index up to the sequence it records.
    public func saveBloom(_ filter: BloomFilter, fresh: Bool = false) throws {
        let saved = savedBloom()
        // Within capacity either way: a caught-up filter past it is nil, and a
        // fresh one has room for twice the index.
        let b: BloomFilter
        if fresh {
            b = filter
        } else if let merged = try caughtUp(saved) ?? caughtUp(filter) {
            b = merged
        } else {
            b = try freshBloom()
        }
        bloomFilter = b
        // Not synced: a filter lost or torn by a crash fails to decode and is
        // rebuilt, and wrong bits can only make a chunk be stored again.
        try FileIO.writeFileAtomically(bloomPath, b.encoded(), durable: false)
        // The log is trimmed now and then, not at every save (a write transaction).
        guard let saved, saved.sequence <= b.sequence else { return }
        let idx = try index()
        if let first = try idx.firstInserted(), saved.sequence > first + 65536 {
            try idx.pruneInserted(before: saved.sequence)
        }
    }

    // MARK: - Manifests

    /// Ids of every committed backup, sorted.
    public func manifestIDs() throws -> [String] {
        var ids = [String]()
        try forEachManifestID { ids.append($0) }
        return ids.sorted()
    }

    /// Calls `body` with the id of every committed backup, in no particular order,
    /// one key at a time: neither the listing nor the chunk lists beside the
    /// manifests are held.
    public func forEachManifestID(_ body: (String) throws -> Void) throws {
        try backend.forEachKey("manifests/") { key in
            guard key.hasSuffix(".manifest.json") else { return }
            try body(String(FileIO.lastComponent(key).dropLast(".manifest.json".count)))
        }
    }

    public func loadManifest(_ id: String) throws -> Manifest {
        guard let bytes = try backend.get(Manifest.key(for: id)) else {
            throw DedupError.manifestNotFound(idOrPrefix: id)
        }
        return try Manifest.decode(bytes, id: id)
    }

    /// Every readable manifest, oldest first by backup time. A damaged one is
    /// reported as a notice and left out (`verify` names it; gc refuses to run).
    public func manifests() throws -> [Manifest] {
        var out = [Manifest]()
        try forEachManifest { out.append($0) }
        return out.sorted { ($0.createdAt, $0.id) < ($1.createdAt, $1.id) }
    }

    /// Calls `body` with each readable manifest, in no particular order, holding
    /// neither the listing nor the manifests (prune over a year of WAL); a damaged
    /// or too new one is skipped with a notice.
    public func forEachManifest(_ body: (Manifest) throws -> Void) throws {
        try forEachManifestID { id in
            let manifest: Manifest
            do {
                manifest = try loadManifest(id)
            } catch let e as DedupError {
                switch e {
                case .manifestCorrupt, .manifestTooNew: notice("skipping \(e.message)"); return
                // Deleted since the listing: another host's delete.
                case .manifestNotFound: return
                default: throw e
                }
            }
            try body(manifest)
        }
    }

    /// Resolves a full id or a unique prefix of one.
    /// A full id is found by key (a restore or `wal restore` lists nothing); a
    /// prefix needs the listing.
    public func resolveManifestID(_ text: String) throws -> String {
        if !text.isEmpty, !text.contains("/"), try hasManifest(text) { return text }
        let ids = try manifestIDs()
        let matches = ids.filter { $0.hasPrefix(text) }
        if matches.count == 1 { return matches[0] }
        if matches.isEmpty || text.isEmpty { throw DedupError.manifestNotFound(idOrPrefix: text) }
        throw DedupError.manifestAmbiguous(prefix: text, candidates: matches)
    }

    /// Deletes a backup: its manifest first (the backup is gone at that instant),
    /// then its chunk list and verification record. Its chunks stay until gc.
    public func deleteManifest(_ id: String) throws { try deleteManifests([id]) }

    /// Deletes backups one after the other (as `deleteManifest`), after one change
    /// note naming them all; `afterEach` is called with the index of each deleted.
    public func deleteManifests(_ ids: [String], afterEach: (Int) -> Void = { _ in }) throws {
        let manifests = try ids.map { try loadManifest($0) }
        try noteChange(.delete, ids: ids)
        for (i, manifest) in manifests.enumerated() {
            try backend.delete(Manifest.key(for: manifest.id))
            for stream in manifest.streams { try backend.delete(stream.chunkList.key) }
            try backend.delete(VerificationRecord.key(for: manifest.id))
            afterEach(i)
        }
    }

    /// The last verification of each backup that has one.
    public func verificationRecords() throws -> [String: VerificationRecord] {
        var out = [String: VerificationRecord]()
        try forEachVerificationRecord { out[$0.id] = $0 }
        return out
    }

    /// Calls `body` with each readable verification record, one at a time, in no
    /// particular order (a catalog's full sync of a million backups).
    public func forEachVerificationRecord(_ body: (VerificationRecord) throws -> Void) throws {
        try backend.forEachKey("verified/") { key in
            guard key.hasSuffix(".json"), let bytes = try backend.get(key),
                  let r = try? JSONDecoder().decode(VerificationRecord.self, from: Data(bytes)) else { return }
            try body(r)
        }
    }

    public func saveVerification(_ r: VerificationRecord) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        try backend.put(VerificationRecord.key(for: r.id), Array(try enc.encode(r)), ifAbsent: false)
    }

    // MARK: - Locks

    /// Takes a repository lock, waiting up to `wait` seconds for live holders.
    /// On a read-only file system a shared lock cannot be written: readers then
    /// respect exclusive locks (another host with a writable mount may run gc)
    /// without publishing their own. `alongside`: a lock this process holds that
    /// does not count as a conflict (gc's exclusive steps beside its maintenance
    /// lock); `announcesWait` false: no notice when it waits.
    public func lock(
        _ kind: LockInfo.Kind, command: String, wait: TimeInterval = 0, alongside: RepositoryLock? = nil,
        announcesWait: Bool = true
    ) throws -> RepositoryLock {
        let publish = !(kind == .shared && isReadOnly)
        if !publish { notice("repository \(path) is on a read-only file system: reading it without a lock") }
        return try RepositoryLock(
            backend: backend, kind: kind, command: command, wait: wait, alongside: alongside?.key, publish: publish
        ) { [weak self] in
            if announcesWait { self?.notice($0) }
        }
    }

    /// True when the repository's storage is read-only (a read-only mount).
    public var isReadOnly: Bool { backend.isReadOnly }

    /// Bytes the repository takes in its storage.
    public func diskUsage() -> Int64 { backend.storageUsage() }

    /// Bytes this repository's local cache takes on disk.
    public func cacheUsage() -> Int64 { LocalBackend.diskUsage(of: cacheDirectory) }
}
