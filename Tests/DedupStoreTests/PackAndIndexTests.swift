import Foundation
import Testing
@testable import DedupStore

@Suite struct PackTests {
    func writePack(_ dir: TestStore, chunks: [[UInt8]]) throws -> (Backend, PackID, [PackEntry]) {
        let backend = dir.backend
        let writer = try PackWriter(backend: backend)
        let h = SHA256Hasher()
        for c in chunks {
            _ = try c.withUnsafeBytes { raw in
                try writer.add(id: h.digest(raw), rawLength: c.count, encoding: .raw, payload: raw)
            }
        }
        let entries = try writer.finish()
        return (backend, writer.id, entries)
    }

    @Test(arguments: StoreKind.allCases) func roundTripThroughTrailer(store kind: StoreKind) throws {
        let dir = TestStore(kind)
        let chunks = (0..<20).map { randomBytes(1000 + $0 * 37, seed: UInt64($0)) }
        let (backend, id, written) = try writePack(dir, chunks: chunks)
        let reader = try PackReader(backend: backend, id: id)
        let read = try reader.entries()
        #expect(read == written)
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 16, alignment: 8)
        defer { buf.deallocate() }
        for (e, c) in zip(read, chunks) {
            let payload = try reader.readStored(e.location, id: e.id, into: buf)
            #expect(Array(payload) == c)
        }
        // Nothing is left unfinished after a commit.
        #expect(dir.noUnfinishedWrites)
    }

    @Test(arguments: StoreKind.allCases) func groupMembersRoundTripAndShareOneFrame(store kind: StoreKind) throws {
        let dir = TestStore(kind)
        let backend = dir.backend
        let writer = try PackWriter(backend: backend)
        let h = SHA256Hasher()
        let single = sqlLikeBytes(rows: 300, seed: 1)
        let members = (0..<5).map { sqlLikeBytes(rows: 200 + 50 * $0, seed: UInt64(10 + $0)) }
        let compressor = try ZstdCompressor(level: 3)
        let frame = UnsafeMutableRawBufferPointer.allocate(byteCount: ZstdCompressor.bound(members.reduce(0) { $0 + $1.count }), alignment: 16)
        defer { frame.deallocate() }
        _ = try single.withUnsafeBytes { try writer.add(id: h.digest($0), rawLength: single.count, encoding: .raw, payload: $0) }
        let ids = members.map { m in m.withUnsafeBytes { h.digest($0) } }
        let n = try withPieces(members) { try compressor.compress(pieces: $0, into: frame) }
        try writer.addGroup(members: zip(ids, members).map { ($0, $1.count) }, payload: UnsafeRawBufferPointer(rebasing: frame[0..<n]))
        let written = try writer.finish()

        let reader = try PackReader(backend: backend, id: writer.id)
        let read = try reader.entries()
        #expect(read == written && read.count == 6)
        #expect(read.dropFirst().allSatisfy { $0.location.isGroupMember && $0.location.offset == read[1].location.offset })
        #expect(read.dropFirst().map(\.location.groupOffset) == [0] + members.dropLast().reduce(into: [UInt32]()) { acc, m in
            acc.append((acc.last ?? 0) + UInt32(m.count)) })
        let stored = UnsafeMutableRawBufferPointer.allocate(byteCount: n + 64, alignment: 16)
        let plain = UnsafeMutableRawBufferPointer.allocate(byteCount: 1 << 20, alignment: 16)
        defer { stored.deallocate(); plain.deallocate() }
        let scratch = GroupScratch()
        let decompressor = try ZstdDecompressor()
        // Read back in reverse order: each member on its own, not only in a run.
        for (e, m) in zip(read.dropFirst(), members).reversed() {
            let payload = try reader.readStored(e.location, id: e.id, into: stored)
            #expect(payload.count == n)
            let out = try ChunkDecoder.decode(e.id, at: e.location, stored: payload,
                                              into: plain, manifest: "t", decompressor: decompressor, hasher: h, group: scratch)
            #expect(Array(out) == m)
        }
        // One flipped byte in the shared frame: every member fails, none decodes to garbage.
        try dir.flip(writer.id.key, at: Int64(read[1].location.offset) + Int64(PackFormat.entryHeaderSize) + Int64(n / 2))
        for e in read.dropFirst() {
            let payload = try reader.readStored(e.location, id: e.id, into: stored)
            #expect(throws: DedupError.self) {
                _ = try ChunkDecoder.decode(e.id, at: e.location, stored: payload,
                                            into: plain, manifest: "t", decompressor: decompressor, hasher: h, group: GroupScratch())
            }
        }
    }

    @Test(arguments: StoreKind.allCases) func truncatedPackIsReported(store kind: StoreKind) throws {
        let dir = TestStore(kind)
        let (backend, id, _) = try writePack(dir, chunks: [randomBytes(5000, seed: 1), randomBytes(5000, seed: 2)])
        let size = try backend.size(id.key) ?? 0
        try dir.truncate(id.key, to: size - 10)
        #expect { try PackReader(backend: backend, id: id).entries() } throws: { e in
            guard case DedupError.packCorrupt(let pack, let detail) = e else { return false }
            return pack == id.hex && detail.contains("truncated")
        }
    }

    @Test(arguments: StoreKind.allCases) func damagedTrailerIsReported(store kind: StoreKind) throws {
        let dir = TestStore(kind)
        let (backend, id, _) = try writePack(dir, chunks: [randomBytes(5000, seed: 1), randomBytes(5000, seed: 2)])
        let size = try backend.size(id.key) ?? 0
        // A byte inside the trailer, before the footer.
        try dir.flip(id.key, at: size - Int64(PackFormat.footerSize) - 20)
        #expect { try PackReader(backend: backend, id: id).entries() } throws: { e in
            (e as? DedupError)?.message.contains("trailer checksum mismatch") == true
        }
    }

    @Test(arguments: StoreKind.allCases) func abortLeavesNothing(store kind: StoreKind) throws {
        let dir = TestStore(kind)
        let backend = dir.backend
        let writer = try PackWriter(backend: backend)
        let c = randomBytes(1000, seed: 1)
        _ = try c.withUnsafeBytes { try writer.add(id: SHA256Hasher.hash(c), rawLength: 1000, encoding: .raw, payload: $0) }
        writer.abort()
        #expect(try backend.list("packs/").isEmpty)
        #expect(dir.noUnfinishedWrites)
    }
}

@Suite struct BloomAndIndexTests {
    @Test func bloomHasNoFalseNegativesAndFewFalsePositives() throws {
        var bloom = BloomFilter(capacity: 100_000)
        var g = SeededGenerator(seed: 1)
        let ids = (0..<100_000).map { _ in ChunkID(w0: g.next(), w1: g.next(), w2: g.next(), w3: g.next()) }
        for id in ids { bloom.insert(id) }
        #expect(ids.allSatisfy { bloom.mightContain($0) })
        var falsePositives = 0
        for _ in 0..<100_000 where bloom.mightContain(ChunkID(w0: g.next(), w1: g.next(), w2: g.next(), w3: g.next())) {
            falsePositives += 1
        }
        #expect(falsePositives < 2000, "false positive rate \(Double(falsePositives) / 1000)%")
        let decoded = BloomFilter(encoded: bloom.encoded())
        #expect(decoded == bloom)
        var damaged = bloom.encoded()
        damaged.removeLast()
        #expect(BloomFilter(encoded: damaged) == nil)
    }

    @Test func indexStoresLocationsAndPacks() throws {
        let dir = TempDir()
        let index = try ChunkIndex(path: dir.sub("index.lmdb"))
        let pack = PackID.random()
        var entries = [PackEntry]()
        for i in 0..<1000 {
            let id = SHA256Hasher.hash(Array("chunk \(i)".utf8))
            let loc = ChunkLocation(pack: pack, offset: UInt64(i * 100), rawLength: UInt32(i), storedLength: UInt32(i / 2), encoding: 1)
            entries.append(PackEntry(id: id, location: loc))
        }
        try index.insert(pack: pack, size: 123_456, entries: entries)
        #expect(try index.chunkCount() == 1000)
        for e in entries { #expect(try index.lookup(e.id) == e.location) }
        #expect(try index.lookup(SHA256Hasher.hash([1, 2, 3])) == nil)
        let packs = try index.indexedPacks()
        #expect(packs.count == 1 && packs[pack]?.size == 123_456 && packs[pack]?.entries == 1000)
        var seen = 0
        try index.forEachChunk { _, _ in seen += 1 }
        #expect(seen == 1000)
        try index.clear()
        #expect(try index.chunkCount() == 0)
    }

    @Test func forgettingPacksRemovesExactlyTheirEntries() throws {
        let dir = TempDir()
        let index = try ChunkIndex(path: dir.sub("index.lmdb"))
        let packs = (0..<3).map { _ in PackID.random() }
        var byPack = [PackID: [ChunkID]]()
        // Interleaved in key order, runs of consecutive deletions included.
        for i in 0..<3000 {
            let id = SHA256Hasher.hash(Array("c\(i)".utf8))
            let pack = packs[(i / 7) % 3]
            byPack[pack, default: []].append(id)
            try index.insert(pack: pack, size: 1, entries: [PackEntry(id: id, location: ChunkLocation(pack: pack, offset: 0, rawLength: 1, storedLength: 1, encoding: 0))])
        }
        let removed = try index.forget(packs: [packs[0], packs[2]])
        #expect(removed == (byPack[packs[0]]?.count ?? 0) + (byPack[packs[2]]?.count ?? 0))
        #expect(try index.chunkCount() == byPack[packs[1]]?.count)
        for id in byPack[packs[1]] ?? [] { #expect(try index.lookup(id)?.pack == packs[1]) }
        for id in (byPack[packs[0]] ?? []) + (byPack[packs[2]] ?? []) { #expect(try index.lookup(id) == nil) }
        #expect(Set(try index.indexedPacks().keys) == [packs[1]])
    }
}

/// Calls `body` with raw views of every array (kept alive for the call).
func withPieces<R>(_ arrays: [[UInt8]], _ body: ([UnsafeRawBufferPointer]) throws -> R) rethrows -> R {
    var views = [UnsafeRawBufferPointer]()
    func nest(_ i: Int) throws -> R {
        if i == arrays.count { return try body(views) }
        return try arrays[i].withUnsafeBytes { raw in
            views.append(raw)
            return try nest(i + 1)
        }
    }
    return try nest(0)
}
