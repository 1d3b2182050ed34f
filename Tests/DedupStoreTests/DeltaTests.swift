import Foundation
import Testing
@testable import DedupStore

/// Nightly dumps of scattered updates: `nights` versions of one SQL-like dump,
/// each with a few digits changed every ~6 KB of the one before (almost every
/// 16 KiB test chunk differs from yesterday's in a few places).
func scatteredNights(_ nights: Int, rows: Int = 12_000, seed: UInt64 = 21) -> [[UInt8]] {
    var g = SeededGenerator(seed: seed)
    var night = sqlLikeBytes(rows: rows, seed: seed)
    var out = [night]
    for _ in 1..<nights {
        var at = Int(g.next() % 6000)
        while at < night.count {
            if night[at] >= UInt8(ascii: "0") && night[at] <= UInt8(ascii: "8") { night[at] += 1 }
            at += 1000 + Int(g.next() % 10_000)
        }
        out.append(night)
    }
    return out
}

private func backupNight(_ repo: Repository, _ bytes: [UInt8], deltas: Bool = true, name: String = "shop") throws -> Manifest {
    var options = BackupOptions(name: name, source: "memory")
    options.kind = .dump
    options.lockWait = 0
    options.checkDumpComplete = false
    options.deltaEncoding = deltas
    return try BackupSession(repository: repo).run(source: BufferSource(bytes), options: options)
}

/// Every delta of the index with the length of its chain (deltas down to the
/// chunk stored on its own).
func deltaChains(_ repo: Repository) throws -> [(ChunkID, Int)] {
    let index = try repo.index()
    var out = [(ChunkID, Int)]()
    try index.forEachChunk { id, loc in
        guard loc.isDelta else { return }
        var length = 0
        var current: ChunkLocation? = loc
        while let c = current, let base = c.base, length <= DeltaFormat.maxChainLength + 1 {
            length += 1
            current = try index.lookup(base)
        }
        out.append((id, length))
    }
    return out
}

@Suite struct DeltaTests {
    @Test(arguments: [false, true])
    func scatteredChangesAreStoredAsDeltasAndRestoreExactly(encrypted: Bool) throws {
        let dir = TempDir()
        let key: [UInt8]? = encrypted ? Array(repeating: 9, count: 32) : nil
        let repo = try Repository.initialize(at: dir.sub("repo"), chunker: testChunker, packSize: 1 << 20,
                                             encryptionKey: key)
        let plain = try Repository.initialize(at: dir.sub("plain"), chunker: testChunker, packSize: 1 << 20,
                                              encryptionKey: key)
        let nights = scatteredNights(3)
        var manifests = [Manifest]()
        var without = [Manifest]()
        for night in nights {
            manifests.append(try backupNight(repo, night))
            without.append(try backupNight(plain, night, deltas: false))
        }
        #expect(manifests[0].stats.deltaChunks == nil)
        for k in 1..<3 {
            let m = manifests[k]
            #expect((m.stats.deltaChunks ?? 0) > m.stats.chunks / 2, "night \(k + 1): \(m.stats)")
            // What changed, not the whole night again.
            #expect(m.stats.storedBytes * 3 < without[k].stats.storedBytes,
                    "night \(k + 1): \(m.stats.storedBytes) with deltas, \(without[k].stats.storedBytes) without")
            #expect(without[k].stats.deltaChunks == nil)
        }
        // Every night back byte for byte, into a file and through a descriptor.
        for (m, night) in zip(manifests, nights) {
            #expect(try restoreBytes(repo, m.id, dir: dir) == night)
            let pipeOut = dir.sub("piped-\(m.id)")
            let fd = try FileIO.open(pipeOut, O_WRONLY | O_CREAT | O_TRUNC)
            try Restorer(repository: repo).restore(m.id, to: .descriptor(fd, name: pipeOut))
            close(fd)
            #expect(try FileIO.readFile(pipeOut) == night)
        }
        #expect(try Verifier(repository: repo).verify(deep: true).ok)
        #expect(try Verifier(repository: repo).verify(deep: false).ok)
        // The bases come back from the packs alone.
        let before = try deltaChains(repo).count
        #expect(before > 0)
        _ = try repo.rebuildIndex()
        #expect(try deltaChains(repo).count == before)
        #expect(try restoreBytes(repo, manifests[2].id, dir: dir) == nights[2])
        if encrypted {
            // Sealed like every entry: no plaintext of a delta or its base in the packs.
            let marker = Array("alpha bravo".utf8)
            for pack in try repo.listPacks().keys {
                let bytes = try FileIO.readFile(dir.sub("repo/" + pack.key))
                #expect(!bytes.indices.dropLast(marker.count).contains { bytes[$0..<($0 + marker.count)].elementsEqual(marker) })
            }
        }
    }

    @Test func chainsStopAtTheirBoundAndEveryNightRestores() throws {
        let dir = TempDir()
        let repo = try Repository.initialize(at: dir.sub("repo"), chunker: testChunker, packSize: 1 << 20)
        let nights = scatteredNights(DeltaFormat.maxChainLength + 3, rows: 6000)
        // The night after full chains: its new deltas, and the length of their chains.
        let after = DeltaFormat.maxChainLength + 1
        var manifests = [Manifest]()
        var rebased = [Int]()
        for (k, night) in nights.enumerated() {
            let before = k == after ? Set(try deltaChains(repo).map(\.0)) : []
            manifests.append(try backupNight(repo, night))
            if k == after { rebased = try deltaChains(repo).filter { !before.contains($0.0) }.map(\.1) }
        }
        let chains = try deltaChains(repo)
        #expect(!chains.isEmpty)
        #expect(chains.allSatisfy { $0.1 <= DeltaFormat.maxChainLength }, "\(chains.map(\.1).max() ?? 0)")
        #expect(chains.contains { $0.1 == DeltaFormat.maxChainLength })
        // That night re-bases onto the chunks the chains start from (chains of
        // one) instead of storing the chunks at the bound whole.
        #expect(rebased.contains(1), "\(rebased)")
        #expect(manifests[after].stats.deltaChunks == manifests[after].stats.newChunks, "\(manifests[after].stats)")
        for (m, night) in zip(manifests, nights) { #expect(try restoreBytes(repo, m.id, dir: dir) == night) }
        #expect(try Verifier(repository: repo).verify(deep: true).ok)
    }

    @Test func gcKeepsEveryBaseALiveDeltaNeeds() throws {
        let dir = TempDir()
        let repo = try Repository.initialize(at: dir.sub("repo"), chunker: testChunker, packSize: 1 << 20)
        let nights = scatteredNights(3)
        let manifests = try nights.map { try backupNight(repo, $0) }
        // The oldest nights pruned: the last one's deltas still need their chunks.
        try repo.deleteManifests([manifests[0].id, manifests[1].id])
        let gc = GarbageCollector(repository: repo)
        gc.repackThreshold = 0.99
        let report = try gc.run()
        #expect(report.liveChunks > manifests[2].stats.chunks, "\(report)")
        #expect(try restoreBytes(repo, manifests[2].id, dir: dir) == nights[2])
        #expect(try Verifier(repository: repo).verify(deep: true).ok)
        // A backup after gc still finds its bases and restores.
        var next = nights[2]
        next[next.count / 2] ^= 1
        let m = try backupNight(repo, next)
        #expect((m.stats.deltaChunks ?? 0) > 0)
        #expect(try restoreBytes(repo, m.id, dir: dir) == next)
    }

    /// A backup committed while gc runs may take as its base a chunk the mark
    /// found dead (the resemblance table still names chunks that wait for gc):
    /// gc keeps it, and the backup restores.
    @Test func aDeltaCommittedDuringGCKeepsTheDeadBaseItTook() throws {
        let dir = TempDir()
        let path = dir.sub("repo")
        let repo = try Repository.initialize(at: path, chunker: testChunker, packSize: 1 << 20)
        let before = scatteredNights(1)[0]
        let old = try backupNight(repo, before, name: "old")
        try repo.deleteManifests([old.id])
        // A digit changed every 2 KB: no chunk of old's is shared, each is a base.
        var after = before
        var at = 0
        while at < after.count {
            while at < after.count && !(UInt8(ascii: "0")...UInt8(ascii: "8")).contains(after[at]) { at += 1 }
            if at < after.count { after[at] += 1 }
            at += 2000
        }
        // The late backup runs as another process on this host would, on a copy of
        // this cache (two handles on one LMDB file in one process break LMDB's
        // reader table): it has the resemblance table that names old's chunks.
        let otherRoot = dir.sub("other-cache")
        let otherCache = otherRoot + "/" + URL(fileURLWithPath: repo.cacheDirectory).lastPathComponent
        try FileManager.default.createDirectory(atPath: otherCache, withIntermediateDirectories: true)
        for file in ["index.lmdb", "similar.lmdb"] {
            try FileManager.default.copyItem(atPath: repo.cacheDirectory + "/" + file, toPath: otherCache + "/" + file)
        }
        let hold = try repo.lock(.maintenance, command: "gc")
        defer { hold.release() }
        let gc = GarbageCollector(repository: repo)
        gc.takeExclusive = { try repo.lock(.exclusive, command: "gc step", wait: 5, alongside: hold) }
        var late: Manifest?
        gc.afterMark = {
            guard late == nil else { return }
            late = try backupNight(try Repository(path: path, cacheRoot: otherRoot), after, name: "late")
        }
        let report = try gc.run()
        let m = try #require(late)
        #expect(m.stats.newChunks == m.stats.chunks, "\(m.stats)")
        #expect((m.stats.deltaChunks ?? 0) > m.stats.newChunks / 2, "its bases are old's chunks: \(m.stats)")
        #expect(report.packsKeptForNewBackups >= 1, "\(report)")
        let fresh = try Repository(path: path, cacheRoot: dir.sub("fresh-cache"))
        #expect(try restoreBytes(fresh, m.id, dir: dir) == after)
        #expect(try Verifier(repository: fresh).verify(deep: true).ok)
    }

    @Test(arguments: [false, true])
    func repackingCopiesDeltasWithTheirBases(encrypted: Bool) throws {
        let dir = TempDir()
        let key: [UInt8]? = encrypted ? Array(repeating: 3, count: 32) : nil
        let repo = try Repository.initialize(at: dir.sub("repo"), chunker: testChunker, packSize: 4 << 20,
                                             encryptionKey: key)
        let nights = scatteredNights(2)
        let a = try backupNight(repo, nights[0])
        // B: night 2 (deltas) and a tail of its own, in one pack; D: night 2 alone,
        // which needs B's deltas. Once B is gone, its pack is partly dead.
        let b = try backupNight(repo, nights[1] + randomBytes(300_000, seed: 4))
        #expect((b.stats.deltaChunks ?? 0) > 0)
        let d = try backupNight(repo, nights[1], name: "copy")
        try repo.deleteManifest(b.id)
        let gc = GarbageCollector(repository: repo)
        gc.repackThreshold = 0.99
        let report = try gc.run()
        #expect(report.packsRepacked > 0, "\(report)")
        #expect(try deltaChains(repo).count > 0)
        #expect(try restoreBytes(repo, d.id, dir: dir) == nights[1])
        #expect(try restoreBytes(repo, a.id, dir: dir) == nights[0])
        #expect(try Verifier(repository: repo).verify(deep: true).ok)
        _ = try repo.rebuildIndex()
        #expect(try restoreBytes(repo, d.id, dir: dir) == nights[1])
    }

    @Test func aDamagedBaseNamesEveryBackupThatNeedsIt() throws {
        let dir = TempDir()
        let repo = try Repository.initialize(at: dir.sub("repo"), chunker: testChunker, packSize: 1 << 20)
        let nights = scatteredNights(3)
        let manifests = try nights.map { try backupNight(repo, $0) }
        // A chunk of the first night that a delta of the third needs, two links down.
        let index = try repo.index()
        var root: ChunkLocation?
        try index.forEachChunk { _, loc in
            guard root == nil, let base = loc.base, let b = try index.lookup(base), let first = b.base,
                let r = try index.lookup(first), !r.isDelta
            else { return }
            root = r
        }
        let damaged = try #require(root)
        try flipByte(at: dir.sub("repo/" + damaged.pack.key), offset: payloadOffset(damaged) + 3)
        let report = try Verifier(repository: repo).verify(deep: true)
        #expect(!report.ok)
        #expect(Set(report.damagedManifests) == Set(manifests.map(\.id)), "\(report.damagedManifests)")
        #expect(throws: DedupError.self) { try restoreBytes(repo, manifests[2].id, dir: dir) }
    }

    /// A chain's inner links are decoded without their checksums (the last
    /// link's covers them): an inner link damaged so that it still decodes, to
    /// other bytes, must fail the chain, never give wrong bytes, with and
    /// without a hasher.
    @Test func aDamagedInnerLinkFailsTheChain() throws {
        // Digits changed every few hundred bytes: deltas with literals to damage.
        let n = 64 << 10
        var plain = [Array(sqlLikeBytes(rows: 3000, seed: 8)[0..<n])]
        for night in 1..<3 {
            var next = plain[night - 1]
            var at = 50 * night
            while at < n {
                if next[at] >= UInt8(ascii: "0") && next[at] <= UInt8(ascii: "8") { next[at] += 1 }
                at += 200 + at % 97
            }
            plain.append(next)
        }
        #expect(plain[1] != plain[0] && plain[2] != plain[1])
        let whole = try ZstdCompressor(level: 3)
        let delta = try ZstdCompressor(level: 1, longDistanceWindowLog: 20)
        func frame(_ i: Int) throws -> [UInt8] {
            var out = [UInt8](repeating: 0, count: ZstdCompressor.bound(n))
            let length = try plain[i].withUnsafeBytes { chunk in
                try out.withUnsafeMutableBytes { o in
                    i == 0 ? try whole.compress(chunk, into: o)
                        : try plain[i - 1].withUnsafeBytes { try delta.compress(chunk, prefix: $0, into: o) }
                }
            }
            return Array(out[0..<length])
        }
        let frames = try (0..<3).map(frame)
        let ids = plain.map { bytes in bytes.withUnsafeBytes { SHA256Hasher().digest($0) } }
        func location(_ i: Int, _ stored: [UInt8]) -> ChunkLocation {
            ChunkLocation(
                pack: PackID(hi: 1, lo: UInt64(i)), offset: 0, rawLength: UInt32(n), storedLength: UInt32(stored.count),
                encoding: i == 0 ? ChunkEncoding.zstd.rawValue : ChunkEncoding.zstdDelta.rawValue,
                base: i == 0 ? nil : ids[i - 1])
        }
        func decodeChain(_ stored: [[UInt8]], hasher: SHA256Hasher?) throws -> [UInt8] {
            let decoder = try DeltaChainDecoder()
            let buffers = stored.map { $0 + [] }
            return try withExtendedLifetime(buffers) {
                let links = buffers.enumerated().map { i, b in
                    DeltaChainDecoder.Link(
                        id: ids[i], location: location(i, b), stored: b.withUnsafeBytes { UnsafeRawBufferPointer($0) })
                }
                return Array(try decoder.decode(links, maxChunk: n, cipher: nil, manifest: "test", hasher: hasher))
            }
        }
        #expect(try decodeChain(frames, hasher: nil) == plain[2])
        // Damage the inner link where it still decodes (without its checksum) to other bytes.
        let decompressor = try ZstdDecompressor()
        var damagedInner = 0
        for offset in stride(from: 8, to: frames[1].count - 4, by: 1) {
            var inner = frames[1]
            inner[offset] ^= 0x10
            var out = [UInt8](repeating: 0, count: n)
            let decoded: Int? = try? inner.withUnsafeBytes { f in
                try plain[0].withUnsafeBytes { base in
                    try out.withUnsafeMutableBytes {
                        try decompressor.decompress(f, prefix: base, into: $0, checksum: false)
                    }
                }
            }
            guard decoded == n, out != plain[1] else { continue }
            damagedInner += 1
            for hasher in [nil, SHA256Hasher()] {
                let result = try? decodeChain([frames[0], inner, frames[2]], hasher: hasher)
                #expect(result == nil || result == plain[2], "inner byte \(offset) flipped gave wrong bytes")
                #expect(result == nil || out == plain[1])
            }
        }
        #expect(damagedInner > 0, "no damage of the inner link decoded: the test proves nothing")
        // The last link damaged the same way: its checksum, or the SHA-256 that
        // replaces it, fails the chain.
        var damagedLast = 0
        for offset in stride(from: 8, to: frames[2].count - 4, by: 1) {
            var last = frames[2]
            last[offset] ^= 0x10
            for hasher in [nil, SHA256Hasher()] {
                let result = try? decodeChain([frames[0], frames[1], last], hasher: hasher)
                #expect(result == nil || result == plain[2], "last byte \(offset) flipped gave wrong bytes")
                if result == nil { damagedLast += 1 }
            }
        }
        #expect(damagedLast > 0)
    }

    @Test func aSimilarChunkOfAnotherSeriesOrPlaceIsFoundAsABase() throws {
        let dir = TempDir()
        let repo = try Repository.initialize(at: dir.sub("repo"), chunker: testChunker, packSize: 1 << 20)
        let nights = scatteredNights(2)
        _ = try backupNight(repo, nights[0], name: "night-1")
        // Another name (no previous backup of its series), and its halves swapped:
        // only resemblance finds the chunks it changed.
        let half = nights[1].count / 2
        let moved = Array(nights[1][half...] + nights[1][..<half])
        let m = try backupNight(repo, moved, name: "night-2")
        #expect((m.stats.deltaChunks ?? 0) > m.stats.newChunks / 2, "\(m.stats)")
        #expect(try restoreBytes(repo, m.id, dir: dir) == moved)
        #expect(try Verifier(repository: repo).verify(deep: true).ok)
        // Without the local table (a fresh cache), the series has no previous
        // backup either: no deltas, and nothing breaks.
        let fresh = try Repository(path: dir.sub("repo"), cacheRoot: dir.sub("other-cache"))
        var again = moved
        again[10] ^= 1
        let n = try backupNight(fresh, again, name: "night-3")
        #expect(n.stats.deltaChunks == nil)
        #expect(try restoreBytes(fresh, n.id, dir: dir) == again)
    }

    @Test func sketchesOfSimilarChunksShareASuperFeature() throws {
        let a = sqlLikeBytes(rows: 6000, seed: 5)
        var b = a
        for at in stride(from: 100, to: b.count, by: 4000) where b[at] >= 48 && b[at] <= 56 { b[at] += 1 }
        let other = sqlLikeBytes(rows: 6000, seed: 6)
        func sketch(_ x: [UInt8]) throws -> [UInt64] {
            try #require(x.withUnsafeBytes { ResemblanceSketch($0) }).all
        }
        #expect(!Set(try sketch(a)).isDisjoint(with: try sketch(b)))
        #expect(Set(try sketch(a)).isDisjoint(with: try sketch(other)))
        #expect([UInt8](repeating: 7, count: 100).withUnsafeBytes { ResemblanceSketch($0) } == nil)
    }

    @Test func randomDataIsNotSketchedYetItsChangedChunksBecomeDeltas() throws {
        // 64 MiB of random bytes (BLOBs of images): after the first batches, whose
        // chunks compress to nothing, no sketches; the same text is sketched whole.
        let dir = TempDir()
        let repo = try Repository.initialize(at: dir.sub("repo"), chunker: testChunker, packSize: 8 << 20)
        let night = randomBytes(64 << 20, seed: 31)
        let first = try backupNight(repo, night, name: "blobs")
        let similar = repo.cacheDirectory + "/similar.lmdb"
        let features = try ResemblanceTable(path: similar).featureCount()
        #expect(features > 0)
        #expect(features * 2 < 3 * first.stats.chunks, "\(features) features for \(first.stats.chunks) chunks")
        let text = try Repository.initialize(at: dir.sub("text"), chunker: testChunker, packSize: 8 << 20)
        let sql = try backupNight(text, sqlLikeBytes(rows: 60_000, seed: 32), name: "shop")
        let textFeatures = try ResemblanceTable(path: text.cacheDirectory + "/similar.lmdb").featureCount()
        #expect(textFeatures * 10 >= 3 * sql.stats.chunks * 9, "\(textFeatures) features for \(sql.stats.chunks) chunks")
        // A byte changed every 256 KiB: each changed chunk is a delta against the
        // one at its place last night.
        var next = night
        for at in stride(from: 1000, to: next.count, by: 256 << 10) { next[at] ^= 0x5A }
        let second = try backupNight(repo, next, name: "blobs")
        #expect((second.stats.deltaChunks ?? 0) * 4 >= second.stats.newChunks * 3, "\(second.stats)")
        #expect(second.stats.storedBytes * 20 < first.stats.storedBytes)
        #expect(try restoreBytes(repo, second.id, dir: dir) == next)
        #expect(try restoreBytes(repo, first.id, dir: dir) == night)
    }

    @Test func noDeltaAndTheRepositorySettingTurnItOff() throws {
        let dir = TempDir()
        let nights = scatteredNights(2)
        let repo = try Repository.initialize(at: dir.sub("repo"), chunker: testChunker, packSize: 1 << 20)
        _ = try backupNight(repo, nights[0])
        #expect(try backupNight(repo, nights[1], deltas: false).stats.deltaChunks == nil)
        let off = try Repository.initialize(at: dir.sub("off"), chunker: testChunker, packSize: 1 << 20, deltas: false)
        #expect(off.config.deltas == false)
        _ = try backupNight(off, nights[0])
        #expect(try backupNight(off, nights[1]).stats.deltaChunks == nil)
        #expect(try deltaChains(off).isEmpty)
    }
}
