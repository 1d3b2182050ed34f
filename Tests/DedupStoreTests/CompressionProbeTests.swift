import Foundation
import Testing
@testable import DedupStore

/// Lowercase hex of `bytes`, as pg_dump writes bytea (`\x...`).
func hexText(_ bytes: [UInt8]) -> [UInt8] {
    let digits = Array("0123456789abcdef".utf8)
    var out = [UInt8]()
    out.reserveCapacity(bytes.count * 2)
    for b in bytes {
        out.append(digits[Int(b >> 4)])
        out.append(digits[Int(b & 15)])
    }
    return out
}

@Suite struct CompressionProbeTests {
    func choice(_ bytes: [UInt8]) throws -> CompressionChoice {
        let probe = try CompressionProbe()
        return try bytes.withUnsafeBytes { try probe.choose([$0]) }
    }

    @Test func randomBytesAreStoredRaw() throws {
        #expect(try choice(randomBytes(1 << 20, seed: 51)) == .raw)
    }

    @Test func hexOfRandomBytesIsEntropyCodedOnly() throws {
        #expect(try choice(hexText(randomBytes(1 << 19, seed: 52))) == .entropyOnly)
        // Uppercase, as mariadb-dump --hex-blob writes it, in rows of a dump.
        var rows = [UInt8]()
        for i in 0..<8 {
            rows += Array("INSERT INTO t VALUES (\(i),0x".utf8)
            rows += hexText(randomBytes(64 << 10, seed: 60 + UInt64(i))).map { $0 >= 97 ? $0 - 32 : $0 }
            rows += Array(");\n".utf8)
        }
        #expect(try choice(rows) == .entropyOnly)
    }

    @Test func sqlTextGetsTheRepositoryLevel() throws {
        #expect(try choice(sqlLikeBytes(rows: 20_000, seed: 53)) == .full)
        // Numbers are hex digits, but short runs: no hex packing is tried.
        let numbers = Array((0..<40_000).map { "\($0 * 7919)\t\($0 % 10)\t0\t2026-11-21 02:00:00\n" }.joined().utf8)
        let probe = try CompressionProbe()
        _ = try numbers.withUnsafeBytes { try probe.choose([$0]) }
        #expect(probe.sampleHexShare == 0)
        _ = try hexText(randomBytes(1 << 18, seed: 61)).withUnsafeBytes { try probe.choose([$0]) }
        #expect(probe.sampleHexShare > 0.99)
        // A unit too small to sample is compressed at the level, unprobed.
        #expect(try choice(randomBytes(CompressionProbe.minimumUnit - 1, seed: 54)) == .full)
    }

    @Test func samplesAcrossPiecesLikeTheWhole() throws {
        let data = hexText(randomBytes(300_000, seed: 55)) + randomBytes(10, seed: 56)
        let probe = try CompressionProbe()
        let whole = try data.withUnsafeBytes { try probe.choose([$0]) }
        let cuts = [0, 7, 70_000, 333_333, 599_999, data.count]
        let pieced = try data.withUnsafeBytes { raw in
            try probe.choose(zip(cuts, cuts.dropFirst()).map { UnsafeRawBufferPointer(rebasing: raw[$0..<$1]) })
        }
        #expect(whole == .entropyOnly && pieced == whole)
    }

    @Test func theRuleItself() {
        #expect(CompressionProbe.decide(sampleBytes: 1000, levelOneBytes: 990, entropyBits: 7.99) == .raw)
        #expect(CompressionProbe.decide(sampleBytes: 1000, levelOneBytes: 505, entropyBits: 4.0) == .entropyOnly)
        #expect(CompressionProbe.decide(sampleBytes: 1000, levelOneBytes: 150, entropyBits: 5.1) == .full)
        #expect(CompressionProbe.entropy(UnsafeRawBufferPointer(start: nil, count: 0)) == 0)
        let hex = hexText(randomBytes(1 << 16, seed: 57))
        let bits = hex.withUnsafeBytes { CompressionProbe.entropy($0) }
        #expect(abs(bits - 4) < 0.01)
    }

    @Test(arguments: [false, true])
    func mixedDataRoundTripsAndIsStoredByKind(fixed: Bool) throws {
        let dir = TempDir()
        let repo = try Repository.initialize(
            at: dir.sub("repo"), chunker: testChunker, compressionLevel: 3, compressionMode: fixed ? .fixed : .adaptive)
        #expect(repo.config.compression.isAdaptive == !fixed)
        // SQL between the others: a unit across a border of hex and random bytes
        // is rightly entropy-coded only (neither has matches).
        let random = randomBytes(3 << 20, seed: 58), hex = hexText(randomBytes(3 << 19, seed: 59))
        let sql = sqlLikeBytes(rows: 30_000, seed: 60)
        let data = sql + hex + sql.reversed() + random + sql
        let session = try BackupSession(repository: repo)
        var options = BackupOptions(name: "mixed", source: "memory")
        options.checkDumpComplete = false
        options.lockWait = 0
        let m = try session.run(source: BufferSource(data), options: options)
        #expect(try restoreBytes(repo, m.id, dir: dir) == data)
        let use = session.compressionUse
        if fixed {
            #expect(!use.adapted)
            #expect(use[.full].rawBytes == m.stats.newBytes)
        } else {
            // Units at the borders of two kinds go either way.
            #expect(use[.raw].rawBytes > Int64(random.count) * 2 / 3)
            // Hex is stored as the bytes it spells (HexPacking).
            #expect(use[.hexPacked].rawBytes > Int64(hex.count) / 2)
            #expect(use[.full].rawBytes > Int64(sql.count))
            #expect(use[.hexPacked].storedBytes < use[.hexPacked].rawBytes * 55 / 100)
            #expect(use.shares.map(\.rawBytes).reduce(0, +) == m.stats.newBytes)
            #expect(use.shares.map(\.storedBytes).reduce(0, +) == m.stats.storedBytes)
        }
        #expect(try Verifier(repository: repo).verify(deep: true).ok)
    }

    @Test func aConfigWithoutAModeIsAdaptive() throws {
        let json = Array("""
            {"algorithm": "zstd", "level": 3}
            """.utf8)
        let c = try JSONDecoder().decode(RepositoryConfig.Compression.self, from: Data(json))
        #expect(c.isAdaptive && c.mode == nil)
    }
}
