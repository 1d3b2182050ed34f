// Stage throughput of the backup pipeline on this machine, one core each:
// chunker, SHA-256, zstd compress (levels 1 and 3), zstd decompress, Bloom lookups;
// and cutting + SHA-256 together (what a stored chunk costs) on one core and on all.
// Usage: dbbackup-bench FILE [--repeat N] [--chunk-size BYTES] [--only cut-hash]
// tools/bench runs it on a generated SQL dump (release build) and adds end-to-end
// figures; tools/bench-dedup-path runs `--only cut-hash`, the limit of a backup of
// stored data.
import DedupStore
import Foundation

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("dbbackup-bench: \(message)\n".utf8))
    exit(1)
}

var args = Array(CommandLine.arguments.dropFirst())
var repeats = 3
var average = ChunkerParameters.default.avgSize
var path: String?
var onlyCutHash = false
while !args.isEmpty {
    let a = args.removeFirst()
    switch a {
    case "--repeat": repeats = Int(args.isEmpty ? "" : args.removeFirst()) ?? 3
    case "--chunk-size": average = Int(args.isEmpty ? "" : args.removeFirst()) ?? average
    case "--only":
        guard !args.isEmpty, args.removeFirst() == "cut-hash" else { fail("--only takes cut-hash") }
        onlyCutHash = true
    default: path = a
    }
}
guard let path else { fail("usage: dbbackup-bench FILE [--repeat N] [--chunk-size BYTES] [--only cut-hash]") }
let data: [UInt8]
do { data = try FileIO.readFile(path) } catch { fail("\(error)") }
guard !data.isEmpty else { fail("\(path) is empty") }
let params = ChunkerParameters(average: average)
let mb = Double(data.count) / 1e6

/// Runs `body` `repeats` times and returns the median MB/s over `bytes`.
@MainActor func measure(_ bytes: Int, _ body: () throws -> Void) rethrows -> Double {
    var rates = [Double]()
    for _ in 0..<repeats {
        let t0 = DispatchTime.now().uptimeNanoseconds
        try body()
        let dt = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        rates.append(Double(bytes) / 1e6 / dt)
    }
    return rates.sorted()[rates.count / 2]
}

/// Cuts `count` bytes from `base` into chunks and takes each one's SHA-256: the
/// work a chunk that is stored already costs a backup. Returns the chunk count.
@Sendable func cutAndHash(_ base: UnsafePointer<UInt8>, count: Int, _ chunker: ContentDefinedChunker) -> Int {
    let hasher = SHA256Hasher()
    var chunks = 0
    // The two-lane cut search a backup's reader uses (the faster of the two ways).
    chunker.forEachChunk(base, count: count) { off, n in
        _ = hasher.digest(UnsafeRawBufferPointer(start: base + off, count: n))
        chunks += 1
    }
    return chunks
}

/// Cut + hash on one core, then on every core at once, each core its own
/// contiguous part of the input (no pipeline, nothing shared, no waiting): the
/// most a backup of stored data could reach on this machine.
@MainActor func printCutHash() {
    let cores = ProcessInfo.processInfo.activeProcessorCount
    let chunker = ContentDefinedChunker(params)
    data.withUnsafeBufferPointer { buf in
        guard let base = buf.baseAddress else { return }
        let one = measure(buf.count) { _ = cutAndHash(base, count: buf.count, chunker) }
        print(String(format: "| cut + SHA-256, one core | %.0f |", one))
        nonisolated(unsafe) let shared = base
        let total = buf.count
        let all = measure(total) {
            DispatchQueue.concurrentPerform(iterations: cores) { part in
                let from = total * part / cores, to = total * (part + 1) / cores
                _ = cutAndHash(shared + from, count: to - from, chunker)
            }
        }
        print(String(format: "| cut + SHA-256, all %d cores (each its own part of the input) | %.0f |", cores, all))
    }
}

if onlyCutHash {
    print(String(format: "input: %@, %.1f MB, %d KiB average chunks; median of %d runs", path, mb, average / 1024,
                 repeats))
    print("| stage | MB/s |")
    print("|---|---:|")
    printCutHash()
    exit(0)
}

// Chunk boundaries once, reused by the per-chunk stages.
var bounds = [(Int, Int)]()
let chunker = ContentDefinedChunker(params)
data.withUnsafeBufferPointer { buf in
    guard let base = buf.baseAddress else { return }
    var off = 0
    while off < buf.count {
        let n = chunker.cutPoint(base + off, count: buf.count - off)
        bounds.append((off, n))
        off += n
    }
}

print(
    String(
        format: "input: %@, %.1f MB, %d chunks (avg %.0f KiB, target %d KiB); median of %d runs, one core", path, mb,
        bounds.count,
        Double(data.count) / Double(bounds.count) / 1024, average / 1024, repeats))
print("| stage | MB/s |")
print("|---|---:|")

let chunkRate = measure(data.count) {
    let stream = ChunkStream(source: BufferSource(data), chunker: chunker)
    var n = 0
    while let c = try? stream.next() { n += c.count }
    precondition(n == data.count)
}
print(String(format: "| FastCDC chunker (streaming, %d KiB avg) | %.0f |", average / 1024, chunkRate))

let searchRate = data.withUnsafeBufferPointer { buf in
    measure(buf.count) {
        guard let base = buf.baseAddress else { return }
        var n = 0
        chunker.forEachChunk(base, count: buf.count) { _, length in n += length }
        precondition(n == buf.count)
    }
}
print(String(format: "| FastCDC chunker (two-lane cut search, as a backup's reader) | %.0f |", searchRate))

let hasher = SHA256Hasher()
let shaRate = data.withUnsafeBytes { raw in
    measure(data.count) {
        for (o, n) in bounds { _ = hasher.digest(UnsafeRawBufferPointer(rebasing: raw[o..<(o + n)])) }
    }
}
print(String(format: "| SHA-256 per chunk (libcrypto EVP) | %.0f |", shaRate))
printCutHash()

var compressedSize = 0
var compressedChunks = [[UInt8]]()
for level in [1, 3] {
    guard let z = try? ZstdCompressor(level: level) else { fail("zstd") }
    let out = UnsafeMutableRawBufferPointer.allocate(byteCount: ZstdCompressor.bound(params.maxSize), alignment: 16)
    defer { out.deallocate() }
    var total = 0
    let rate = data.withUnsafeBytes { raw in
        measure(data.count) {
            total = 0
            for (o, n) in bounds {
                total += (try? z.compress(UnsafeRawBufferPointer(rebasing: raw[o..<(o + n)]), into: out)) ?? 0
            }
        }
    }
    print(
        String(
            format: "| zstd -%d compress per chunk (ratio %.2f) | %.0f |", level,
            Double(data.count) / Double(max(total, 1)), rate))
    if level == 3 {
        compressedSize = total
        compressedChunks = data.withUnsafeBytes { raw in
            bounds.map { (o, n) in
                let c = (try? z.compress(UnsafeRawBufferPointer(rebasing: raw[o..<(o + n)]), into: out)) ?? 0
                return Array(UnsafeRawBufferPointer(rebasing: out[0..<c]))
            }
        }
    }
}

guard let dz = try? ZstdDecompressor() else { fail("zstd") }
let plain = UnsafeMutableRawBufferPointer.allocate(byteCount: params.maxSize, alignment: 16)
let dRate = measure(data.count) {
    for (c, b) in zip(compressedChunks, bounds) {
        _ = c.withUnsafeBytes { try? dz.decompress($0, into: UnsafeMutableRawBufferPointer(rebasing: plain[0..<b.1])) }
    }
}
plain.deallocate()
print(String(format: "| zstd decompress per chunk (output MB/s) | %.0f |", dRate))

var bloom = BloomFilter(capacity: 2_000_000)
let h = SHA256Hasher()
var ids = [ChunkID]()
for i in 0..<1_000_000 { ids.append(h.digest(withUnsafeBytes(of: i) { $0 })) }
for id in ids.prefix(500_000) { bloom.insert(id) }
var hits = 0
let t0 = DispatchTime.now().uptimeNanoseconds
for id in ids where bloom.mightContain(id) { hits += 1 }
let lookups = Double(ids.count) / (Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
print(
    String(
        format: "| Bloom filter lookups | %.1f M/s (%.2f%% false positives) |", lookups / 1e6,
        Double(hits - 500_000) / 5000))
_ = compressedSize
