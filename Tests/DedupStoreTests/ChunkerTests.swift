import Foundation
import Testing
@testable import DedupStore

/// Reads in pieces of varying size, as a pipe would deliver them.
struct JaggedSource: ByteSource {
    let bytes: [UInt8]
    var position = 0
    var g = SeededGenerator(seed: 99)
    mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let want = min(buffer.count, Int(g.next() % 70_000) + 1, bytes.count - position)
        if want <= 0 { return 0 }
        for i in 0..<want { buffer[i] = bytes[position + i] }
        position += want
        return want
    }
}

func chunkLengths<S: ByteSource>(_ source: S, _ params: ChunkerParameters, bufferSize: Int = 8 << 20) throws -> [Int] {
    let stream = ChunkStream(source: source, chunker: ContentDefinedChunker(params), bufferSize: bufferSize)
    var out = [Int]()
    while let c = try stream.next() { out.append(c.count) }
    return out
}

func chunkHashes(_ bytes: [UInt8], _ params: ChunkerParameters) throws -> [ChunkID] {
    let stream = ChunkStream(source: BufferSource(bytes), chunker: ContentDefinedChunker(params))
    let h = SHA256Hasher()
    var out = [ChunkID]()
    while let c = try stream.next() { out.append(h.digest(c)) }
    return out
}

@Suite struct ChunkerTests {
    let params = ChunkerParameters(average: 64 * 1024)

    @Test func chunksRespectBoundsAndCoverInput() throws {
        let data = randomBytes(6 << 20, seed: 1)
        let lengths = try chunkLengths(BufferSource(data), params)
        #expect(lengths.reduce(0, +) == data.count)
        for l in lengths.dropLast() {
            #expect(l >= params.minSize && l <= params.maxSize)
        }
        let mean = Double(data.count) / Double(lengths.count)
        // Normalized chunking keeps the mean near the target on random data.
        #expect(mean > 0.7 * Double(params.avgSize) && mean < 1.3 * Double(params.avgSize), "mean chunk \(mean)")
    }

    @Test func cutPointsDoNotDependOnReadSizes() throws {
        let data = randomBytes(5 << 20, seed: 2)
        let whole = try chunkLengths(BufferSource(data), params)
        let jagged = try chunkLengths(JaggedSource(bytes: data), params, bufferSize: 1 << 20)
        #expect(whole == jagged)
    }

    @Test(arguments: [2, 3])
    func readerThreadCutsExactlyLikeSingleChunks(depth: Int) throws {
        let data = randomBytes(5 << 20, seed: 9) + [UInt8](repeating: 7, count: 1 << 20)
        let single = try chunkLengths(JaggedSource(bytes: data), params, bufferSize: 1 << 20)
        let reader = ChunkBatchProducer(source: JaggedSource(bytes: data), chunker: ContentDefinedChunker(params),
                                        batchBytes: 300_000, depth: depth)
        reader.start()
        var batched = [Int]()
        var held = [ChunkBatch]()
        while let batch = try reader.next() {
            #expect(!batch.ranges.isEmpty)
            batched += batch.ranges.map(\.count)
            // Hold one batch back: buffers are handed out again only once released.
            held.append(batch)
            if held.count == depth - 1 { reader.release(held.removeFirst()) }
        }
        held.forEach(reader.release)
        #expect(reader.finish() == data.withUnsafeBytes { SHA256Hasher().digest($0) })
        #expect(batched == single)
    }

    /// Small chunks (the smallest allowed minimum, 64 bytes) make cuts fall often in
    /// the 63 bytes after the minimum, where the hash from the chunk's start
    /// differs from the 64-byte window the candidate search uses.
    static let searchParameters: [ChunkerParameters] = [
        ChunkerParameters(minSize: 64, avgSize: 4096, maxSize: 16384),
        ChunkerParameters(average: 64 * 1024),
        .default,
    ]

    @Test(arguments: searchParameters)
    func candidateSearchCutsExactlyLikeCutPoint(params: ChunkerParameters) throws {
        let chunker = ContentDefinedChunker(params)
        let sqlLike = Array((0..<60_000).map { "INSERT INTO t VALUES (\($0), 'row \($0 % 97)');\n" }.joined().utf8)
        let inputs: [[UInt8]] = [
            randomBytes(3 << 20, seed: 21), sqlLike, [UInt8](repeating: 0, count: 3 * params.maxSize + 77),
            randomBytes(params.minSize + 100, seed: 22), randomBytes(1, seed: 23), [],
            randomBytes(1 << 20, seed: 24) + [UInt8](repeating: 9, count: 2 * params.maxSize) + randomBytes(1 << 20, seed: 25),
        ]
        var nearMinimum = 0
        for data in inputs {
            var serial = [Int]()
            var searched = [Int]()
            data.withUnsafeBufferPointer { buf in
                guard let base = buf.baseAddress else { return }
                var off = 0
                while off < buf.count {
                    let n = chunker.cutPoint(base + off, count: buf.count - off)
                    serial.append(n)
                    off += n
                }
                chunker.forEachChunk(base, count: buf.count) { offset, n in
                    #expect(offset == searched.reduce(0, +))
                    searched.append(n)
                }
            }
            #expect(sameCuts(searched, serial), "\(data.count) bytes: \(firstDifference(searched, serial))")
            nearMinimum += serial.dropLast().filter { $0 > params.minSize && $0 <= params.minSize + 64 }.count
        }
        if params.minSize == 64 {
            // The test must reach the exact-hash path, or it proves nothing there.
            #expect(nearMinimum > 0)
        }
    }

    @Test func candidateSearchOfAnyPartAgreesWithTheWhole() {
        let chunker = ContentDefinedChunker(ChunkerParameters(minSize: 64, avgSize: 4096, maxSize: 16384))
        let data = randomBytes(1 << 20, seed: 26)
        data.withUnsafeBufferPointer { buf in
            guard let base = buf.baseAddress else { return }
            var whole = [Int]()
            chunker.findCandidates(base, from: 0, to: buf.count, into: &whole)
            #expect(whole.count > 500)
            #expect(whole == whole.sorted())
            // Parts of every length, split anywhere (odd lanes, one byte, none).
            var g = SeededGenerator(seed: 27)
            var joined = [Int]()
            var at = 0
            while at < buf.count {
                let n = min(buf.count - at, Int(g.next() % 9000))
                chunker.findCandidates(base, from: at, to: at + n, into: &joined)
                at += n
            }
            // Positions before 63 see less than a whole window: left out of the comparison.
            #expect(joined.filter { $0 >> 1 >= 63 } == whole.filter { $0 >> 1 >= 63 })
        }
    }

    @Test(arguments: [1, 2, 3])
    func readerSearchOnSeveralCoresCutsLikeSingleChunks(searchWorkers: Int) throws {
        let params = ChunkerParameters(minSize: 64, avgSize: 4096, maxSize: 16384)
        let data = randomBytes(3 << 20, seed: 28) + [UInt8](repeating: 5, count: 100_000) + randomBytes(1 << 20, seed: 29)
        let single = try chunkLengths(JaggedSource(bytes: data), params, bufferSize: 1 << 20)
        for batchBytes in [1 << 20, 300_000] {
            let reader = ChunkBatchProducer(
                source: JaggedSource(bytes: data), chunker: ContentDefinedChunker(params), batchBytes: batchBytes,
                searchWorkers: searchWorkers)
            reader.start()
            var batched = [Int]()
            while let batch = try reader.next() {
                batched += batch.ranges.map(\.count)
                reader.release(batch)
            }
            _ = reader.finish()
            #expect(sameCuts(batched, single), "batches of \(batchBytes): \(firstDifference(batched, single))")
        }
    }

    /// A sketch made from the search's samples is the one hashing the chunk's
    /// bytes makes, for every chunk, across batches (carried tails) and parts
    /// searched on several cores; sampling changes no cut; the ids the reader
    /// takes are the chunks' SHA-256.
    @Test(arguments: [1, 2, 3])
    func sketchesFromTheSearchsSamplesEqualSketchesOfTheBytes(searchWorkers: Int) throws {
        let params = ChunkerParameters(minSize: 1024, avgSize: 8192, maxSize: 32768)
        // Text-like bytes (sketches of similar chunks must agree) and random ones.
        var data = [UInt8]()
        var g = SeededGenerator(seed: 41)
        while data.count < 2 << 20 {
            data += Array("INSERT INTO t VALUES (\(g.next() % 100_000), 'row \(g.next() % 977)');\n".utf8)
        }
        data += randomBytes(1 << 20, seed: 42)
        let single = try chunkLengths(JaggedSource(bytes: data), params, bufferSize: 1 << 20)
        for batchBytes in [1 << 20, 300_000] {
            let reader = ChunkBatchProducer(
                source: JaggedSource(bytes: data), chunker: ContentDefinedChunker(params), batchBytes: batchBytes,
                searchWorkers: searchWorkers, sampling: true,
                chunkHashers: (0..<searchWorkers).map { _ in SHA256Hasher() })
            reader.start()
            var batched = [Int]()
            var compared = 0, unsampled = 0, index = 0
            let check = SHA256Hasher()
            while let batch = try reader.next() {
                // The consumer turns sampling off and on again: a batch says
                // whether its samples cover every chunk, and then they are right.
                reader.wantSamples(index % 4 != 1)
                index += 1
                if !batch.sampled { unsampled += 1 }
                batched += batch.ranges.map(\.count)
                // The reader's ids are the chunks' SHA-256, in order.
                let bytes = UnsafeRawBufferPointer(start: batch.base, count: batch.length)
                #expect(batch.ids == batch.ranges.map { check.digest(UnsafeRawBufferPointer(rebasing: bytes[$0])) })
                #expect(batch.samples.map(\.position) == batch.samples.map(\.position).sorted())
                let input = UnsafeRawBufferPointer(start: batch.base, count: batch.length)
                batch.samples.withUnsafeBufferPointer { found in
                    for range in batch.ranges where batch.sampled {
                        let fromBytes = ResemblanceSketch(UnsafeRawBufferPointer(rebasing: input[range]))?.all
                        let fromSamples = ResemblanceSketch(samples: found, chunk: range)?.all
                        #expect(fromSamples == fromBytes, "chunk at \(range) of a batch of \(batch.length)")
                        if fromBytes != nil { compared += 1 }
                    }
                }
                reader.release(batch)
            }
            _ = reader.finish()
            #expect(compared > 150)
            #expect(unsampled > 0, "sampling was never off: the test proves nothing there")
            #expect(sameCuts(batched, single), "batches of \(batchBytes): \(firstDifference(batched, single))")
        }
    }

    @Test func readerThreadPassesReadErrorsOnAndStops() throws {
        struct FailingSource: ByteSource {
            var left = 3 << 20
            mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
                if left == 0 { throw DedupError.inputUnreadable(path: "test", reason: "boom") }
                let n = min(left, buffer.count, 100_000)
                for i in 0..<n { buffer[i] = UInt8(truncatingIfNeeded: (left - i) &* 31) }
                left -= n
                return n
            }
        }
        let reader = ChunkBatchProducer(source: FailingSource(), chunker: ContentDefinedChunker(params), batchBytes: 1 << 20)
        reader.start()
        #expect(throws: DedupError.self) {
            while let batch = try reader.next() { reader.release(batch) }
        }
        reader.stop()

        // Stopping while the reader waits for a free buffer does not hang.
        let early = ChunkBatchProducer(source: BufferSource(randomBytes(8 << 20, seed: 3)),
                                       chunker: ContentDefinedChunker(params), batchBytes: 300_000, depth: 2)
        early.start()
        _ = try early.next()
        early.stop()
    }

    @Test func insertionChangesOnlyNearbyChunks() throws {
        let data = randomBytes(8 << 20, seed: 3)
        var edited = data
        edited.insert(contentsOf: randomBytes(100, seed: 4), at: 4 << 20)
        let a = try chunkHashes(data, params), b = try chunkHashes(edited, params)
        let changed = Set(b).subtracting(a).count
        #expect(a.count > 100)
        #expect(changed >= 1 && changed <= 3, "an insertion changed \(changed) of \(b.count) chunks")
    }

    @Test func deletionChangesOnlyNearbyChunks() throws {
        let data = randomBytes(8 << 20, seed: 5)
        var edited = data
        edited.removeSubrange((3 << 20)..<((3 << 20) + 5000))
        let a = try chunkHashes(data, params), b = try chunkHashes(edited, params)
        let changed = Set(b).subtracting(a).count
        #expect(changed >= 1 && changed <= 3, "a deletion changed \(changed) of \(b.count) chunks")
    }

    @Test func manyEditsKeepMostChunks() throws {
        let data = randomBytes(16 << 20, seed: 6)
        var edited = data
        for k in 0..<10 { edited.insert(contentsOf: randomBytes(100, seed: 100 + UInt64(k)), at: (k + 1) * (1 << 20) + 12345) }
        let a = Set(try chunkHashes(data, params)), b = try chunkHashes(edited, params)
        let changed = b.filter { !a.contains($0) }.count
        #expect(changed <= 30, "10 insertions changed \(changed) of \(b.count) chunks")
    }

    @Test func tinyAndEmptyInputs() throws {
        #expect(try chunkLengths(BufferSource([]), params) == [])
        #expect(try chunkLengths(BufferSource([7]), params) == [1])
        let small = randomBytes(params.minSize - 1, seed: 7)
        #expect(try chunkLengths(BufferSource(small), params) == [small.count])
    }

    @Test func zeroRunsCutAtMaximum() throws {
        let zeros = [UInt8](repeating: 0, count: 3 * params.maxSize + 10)
        let lengths = try chunkLengths(BufferSource(zeros), params)
        #expect(lengths == [params.maxSize, params.maxSize, params.maxSize, 10])
    }

    @Test func invalidParametersAreRejected() {
        #expect(throws: DedupError.self) { try ChunkerParameters(average: 100_000).validate() }
        #expect(throws: DedupError.self) { try ChunkerParameters(average: 1024).validate() }
        #expect(throws: Never.self) { try ChunkerParameters.default.validate() }
    }

    @Test func gearTableIsFixed() {
        // Format version 1 depends on these exact values: a change would re-cut every stream.
        #expect(GearTable.values.count == 256)
        let digest = SHA256Hasher.hash(GearTable.values.flatMap { v in (0..<8).map { UInt8(truncatingIfNeeded: v >> (8 * UInt64($0))) } })
        #expect(digest.hex == GearTableFingerprint.expected)
    }
}

extension ChunkerTests {
    /// Cut points are part of the format: the same input must cut the same way in
    /// every version, or a new release would stop deduplicating against old backups.
    @Test func cutPointsArePinned() throws {
        let lengths = try chunkLengths(BufferSource(randomBytes(1 << 20, seed: 1)), params)
        #expect(Array(lengths.prefix(6)) == PinnedCuts.first6)
    }
}

/// Equal chunk lengths (a function, so that a failure prints the difference, not both lists).
func sameCuts(_ a: [Int], _ b: [Int]) -> Bool { a == b }

func firstDifference(_ a: [Int], _ b: [Int]) -> String {
    guard let i = (0..<min(a.count, b.count)).first(where: { a[$0] != b[$0] }) ?? (a.count == b.count ? nil : min(a.count, b.count))
    else { return "none" }
    return "chunk \(i) (after \(a.prefix(i).reduce(0, +)) bytes): \(i < a.count ? "\(a[i])" : "end") vs \(i < b.count ? "\(b[i])" : "end")"
}

enum PinnedCuts {
    static let first6: [Int] = [70666, 91104, 90205, 67875, 57597, 64054]
}

enum GearTableFingerprint {
    static let expected = "f65e365cef2d416d6d0ff9a2d062e2070dc299ae914e45b533e13b0034ad09e8"
}
