import Foundation
import Testing
@testable import DedupStore

/// Deterministic pseudo-random bytes (SplitMix64), so failures reproduce.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

func randomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var g = SeededGenerator(seed: seed)
    var out = [UInt8](repeating: 0, count: count)
    out.withUnsafeMutableBytes { raw in
        let words = raw.bindMemory(to: UInt64.self)
        for i in 0..<words.count { words[i] = g.next() }
    }
    for i in (count / 8 * 8)..<count { out[i] = UInt8(truncatingIfNeeded: g.next()) }
    return out
}

/// SQL-dump-like text: compressible, mostly unique lines.
func sqlLikeBytes(rows: Int, seed: UInt64) -> [UInt8] {
    var g = SeededGenerator(seed: seed)
    let words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo", "lima"]
    var text = "--\n-- PostgreSQL database dump\n--\n\nCOPY public.t (id, name, note, amount) FROM stdin;\n"
    for i in 0..<rows {
        let a = words[Int(g.next() % 12)], b = words[Int(g.next() % 12)]
        text += "\(i)\t\(a) \(b)\t\(a)-\(g.next() % 100_000)@example.com\t\(g.next() % 1_000_000).\(g.next() % 100)\n"
    }
    text += "\\.\n\n--\n-- PostgreSQL database dump complete\n--\n\n"
    return Array(text.utf8)
}

/// A fresh temporary folder, removed when the value goes away.
final class TempDir {
    let path: String
    init() {
        _ = testCacheRoot
        path = NSTemporaryDirectory() + "dbbackup-test-" + UUID().uuidString
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
    func sub(_ name: String) -> String { path + "/" + name }
}

/// Small chunks and packs, so that tests exercise many of both quickly.
let testChunker = ChunkerParameters(average: 16 * 1024)

func makeRepository(_ dir: TempDir, packSize: Int = 1 << 20) throws -> Repository {
    try Repository.initialize(at: dir.sub("repo"), chunker: testChunker, compressionLevel: 3, packSize: packSize)
}

/// The backends the store's tests run on.
enum StoreKind: String, CaseIterable, Sendable, CustomTestStringConvertible {
    /// A folder on disk.
    case local
    /// In memory: no repository folder on disk at all (the cache still is).
    case memory

    var testDescription: String { rawValue }
}

/// Where a test's repository lives, and a temporary folder for what the test
/// writes beside it (restored files, other caches). Damage is done through the
/// backend's own means, so that a test reads the same on both kinds.
final class TestStore {
    let kind: StoreKind
    let dir = TempDir()
    let backend: Backend

    init(_ kind: StoreKind) {
        self.kind = kind
        switch kind {
        case .local: backend = LocalBackend(root: dir.sub("repo"))
        case .memory: backend = MemoryBackend(name: "test-" + UUID().uuidString)
        }
    }

    var path: String { dir.path }
    func sub(_ name: String) -> String { dir.sub(name) }

    /// The same repository, as another process would open it.
    func reopen(cacheRoot: String? = nil, key: [UInt8]? = nil) throws -> Repository {
        try Repository(backend: backend, cacheRoot: cacheRoot, key: key)
    }

    /// Flips one byte of an object.
    func flip(_ key: String, at offset: Int64) throws {
        switch backend {
        case let local as LocalBackend: try flipByte(at: local.path(key), offset: offset)
        case let memory as MemoryBackend: memory.damage(key) { $0[Int(offset)] ^= 0xFF }
        default: throw TestStoreError("cannot damage objects of \(backend.location)")
        }
    }

    /// Cuts an object to `size` bytes.
    func truncate(_ key: String, to size: Int64) throws {
        switch backend {
        case let local as LocalBackend: #expect(Glibc.truncate(local.path(key), off_t(size)) == 0)
        case let memory as MemoryBackend: memory.damage(key) { $0.removeSubrange(Int(size)...) }
        default: throw TestStoreError("cannot damage objects of \(backend.location)")
        }
    }

    /// True when no write was left unfinished (nothing in tmp/, no open writer).
    var noUnfinishedWrites: Bool {
        switch backend {
        case let local as LocalBackend: return ((try? FileManager.default.contentsOfDirectory(atPath: local.path("tmp"))) ?? []).isEmpty
        case let memory as MemoryBackend: return memory.unfinishedWrites == 0
        default: return false
        }
    }

    /// Replaces an object's bytes, as an editor would.
    func rewrite(_ key: String, _ bytes: [UInt8]) throws {
        switch backend {
        case let local as LocalBackend: try writeFile(local.path(key), bytes)
        case let memory as MemoryBackend: memory.damage(key) { $0 = bytes }
        default: throw TestStoreError("cannot damage objects of \(backend.location)")
        }
    }
}

struct TestStoreError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

func makeRepository(_ store: TestStore, packSize: Int = 1 << 20, chunker: ChunkerParameters = testChunker,
                    key: [UInt8]? = nil) throws -> Repository {
    try Repository.initialize(on: store.backend, chunker: chunker, compressionLevel: 3, packSize: packSize, encryptionKey: key)
}

func writeFile(_ path: String, _ bytes: [UInt8]) throws {
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}

@discardableResult
func backup(_ repo: Repository, _ bytes: [UInt8], name: String = "test", time: Date = Date(), checkDump: Bool = true,
            streamSHA256: Bool = false, deltas: Bool = true) throws -> Manifest {
    var options = BackupOptions(name: name, source: "memory")
    options.deltaEncoding = deltas
    options.time = time
    options.streamSHA256 = streamSHA256
    options.checkDumpComplete = checkDump
    options.lockWait = 0
    return try BackupSession(repository: repo).run(source: BufferSource(bytes), options: options)
}

func restoreBytes(_ repo: Repository, _ id: String, dir: TestStore) throws -> [UInt8] {
    try restoreBytes(repo, id, dir: dir.dir)
}

func restoreBytes(_ repo: Repository, _ id: String, dir: TempDir) throws -> [UInt8] {
    let out = dir.sub("restored-\(UUID().uuidString)")
    try Restorer(repository: repo).restore(id, to: .file(path: out, overwrite: false))
    return try FileIO.readFile(out)
}

/// Byte offset of a chunk's payload in a pack, for corruption tests.
func payloadOffset(_ loc: ChunkLocation) -> Int64 {
    Int64(loc.offset) + Int64(PackFormat.entryHeaderSize)
}

func flipByte(at path: String, offset: Int64) throws {
    let fd = open(path, O_RDWR)
    defer { close(fd) }
    var b: UInt8 = 0
    _ = pread(fd, &b, 1, off_t(offset))
    b ^= 0xFF
    _ = pwrite(fd, &b, 1, off_t(offset))
}

/// The chunk-index caches of this test process go to one temporary folder (unless
/// tools/test already chose one), not to ~/.cache; the CLI runs inherit it.
let testCacheRoot: String = {
    if let set = ProcessInfo.processInfo.environment["DBBACKUP_CACHE_DIR"], !set.isEmpty { return set }
    let root = NSTemporaryDirectory() + "dbbackup-test-cache-\(getpid())"
    setenv("DBBACKUP_CACHE_DIR", root, 1)
    return root
}()

/// Backs `bData` up (it shares the first part of `first`'s input, which ends
/// inside a compression group), deletes `first` and runs gc with a repack
/// threshold of 0.99, so that partly dead groups are regrouped or kept whole;
/// checks that gc rewrote or deleted a pack and that `bData` still restores and
/// verifies. Returns gc's report.
@discardableResult
func collectAfterDeletingFirst(
    _ repo: Repository, first: Manifest, keeping bData: [UInt8], restore: (String) throws -> [UInt8]
) throws -> GCReport {
    // Without deltas: b's chunks would otherwise keep a's alive as their bases.
    let b = try backup(repo, bData, name: "b", checkDump: false, deltas: false)
    try repo.deleteManifest(first.id)
    let gc = GarbageCollector(repository: repo)
    gc.repackThreshold = 0.99
    let r = try gc.run()
    #expect(r.packsRepacked + r.packsDeleted >= 1, "\(r)")
    #expect(try restore(b.id) == bData)
    #expect(try Verifier(repository: repo).verify(deep: true).ok)
    return r
}
