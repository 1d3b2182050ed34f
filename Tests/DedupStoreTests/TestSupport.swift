import Foundation
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

@discardableResult
func backup(_ repo: Repository, _ bytes: [UInt8], name: String = "test", time: Date = Date(), checkDump: Bool = true,
            streamSHA256: Bool = false) throws -> Manifest {
    var options = BackupOptions(name: name, source: "memory")
    options.time = time
    options.streamSHA256 = streamSHA256
    options.checkDumpComplete = checkDump
    options.lockWait = 0
    return try BackupSession(repository: repo).run(source: BufferSource(bytes), options: options)
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
