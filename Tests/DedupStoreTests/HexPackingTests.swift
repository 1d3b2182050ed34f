import Foundation
import Testing
@testable import DedupStore

/// pg_dump-like COPY text with a bytea column: `\\x` and lowercase hex.
func byteaCopyDump(rows: Int, rowBytes: Int, seed: UInt64) -> [UInt8] {
    var out = Array("--\n-- PostgreSQL database dump\n--\n\nCOPY public.images (id, name, data) FROM stdin;\n".utf8)
    for i in 0..<rows {
        out += Array("\(i)\timage-\(i).jpg\t\\\\x".utf8)
        out += hexText(randomBytes(rowBytes, seed: seed &+ UInt64(i)))
        out += Array("\n".utf8)
    }
    out += Array("\\.\n\n--\n-- PostgreSQL database dump complete\n--\n\n".utf8)
    return out
}

@Suite struct HexPackingTests {
    func roundTrip(_ input: [UInt8]) throws -> Int? {
        var room = [UInt8](repeating: 0, count: HexPacking.bound(input.count))
        let n = input.withUnsafeBytes { i in room.withUnsafeMutableBytes { HexPacking.pack(i, into: $0) } }
        guard let n else { return nil }
        var back = [UInt8](repeating: 0, count: input.count)
        let m = try room.withUnsafeBytes { r in
            try back.withUnsafeMutableBytes { try HexPacking.unpack(UnsafeRawBufferPointer(rebasing: r[0..<n]), into: $0) }
        }
        #expect(m == input.count)
        #expect(back == input, "\(input.count) bytes round trip")
        return n
    }

    @Test func dumpsWithHexBlobsRoundTripAtHalfTheSize() throws {
        let pg = byteaCopyDump(rows: 20, rowBytes: 5000, seed: 1)
        let packed = try #require(try roundTrip(pg))
        #expect(packed < pg.count * 52 / 100)
        var my = Array("INSERT INTO `t` VALUES (1,0x".utf8)
        my += hexText(randomBytes(40_000, seed: 2)).map { $0 >= 97 ? $0 - 32 : $0 }
        my += Array("),(2,0xABCDEF0123456789ABCDEF0123456789ABCDEF01),(3,0x);\n".utf8)
        #expect(try #require(try roundTrip(my)) < my.count * 52 / 100)
    }

    @Test func runsOfEveryShapeComeBackByteForByte() throws {
        var g = SeededGenerator(seed: 3)
        let alphabet = Array("0123456789abcdefABCDEF \n\\x,'".utf8)
        for round in 0..<300 {
            // Mostly long hex runs, in both cases, with odd lengths, case changes
            // in the middle, digit-only stretches and separators.
            var input = [UInt8]()
            while input.count < Int(g.next() % 4000) + 1 {
                switch g.next() % 5 {
                case 0: input += hexText(randomBytes(Int(g.next() % 90), seed: g.next()))
                case 1: input += hexText(randomBytes(Int(g.next() % 90), seed: g.next())).map { $0 >= 97 ? $0 - 32 : $0 }
                case 2: input += (0..<Int(g.next() % 70)).map { _ in UInt8(ascii: "0") + UInt8(g.next() % 10) }
                case 3: input.append(hexText([UInt8(g.next() & 255)])[Int(g.next() % 2)])
                default: input += (0..<Int(g.next() % 5)).map { _ in alphabet[Int(g.next() % UInt64(alphabet.count))] }
                }
            }
            _ = try roundTrip(input)
            if round == 0 { #expect(try roundTrip(hexText(randomBytes(16, seed: 4))) != nil) }
        }
    }

    @Test func aRunEndsWhereTheSixteenPairStepMeetsItsEnd() throws {
        // The packer takes 32 digits at a time while they are all digits of one
        // case: a separator, or a letter of the other case, at every place in and
        // around such steps must end the run there, and the rest come back as it was.
        let digits = hexText(randomBytes(80, seed: 7))  // 160 lowercase digits
        for at in 0..<digits.count {
            for breaker: UInt8 in [UInt8(ascii: ","), UInt8(ascii: "A"), UInt8(ascii: "g"), 0] {
                let prefix = Array("\\\\x".utf8)
                var input = prefix + digits
                input[prefix.count + at] = breaker
                _ = try roundTrip(input)
                let upper = input.map { $0 >= 97 && $0 <= 102 ? $0 - 32 : ($0 == 65 ? 97 : $0) }
                _ = try roundTrip(upper)
            }
        }
    }

    @Test func everyByteValueComesBackAsItsTwoDigitsInEitherCase() throws {
        // All 256 values, at every offset of the sixteen-byte steps the decoder takes.
        for shift in 0..<17 {
            let bytes = (0..<(256 + shift)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
            let lower = Array(bytes.map { String(format: "%02x", $0) }.joined().utf8)
            let upper = Array(bytes.map { String(format: "%02X", $0) }.joined().utf8)
            #expect(try roundTrip(Array("x\\\\x".utf8) + lower + [10]) != nil)
            #expect(try roundTrip(Array("0x".utf8) + upper + Array(");".utf8)) != nil)
        }
    }

    @Test func littleOrNoHexIsLeftAlone() throws {
        #expect(try roundTrip(sqlLikeBytes(rows: 2000, seed: 5)) == nil)
        #expect(try roundTrip([]) == nil)
        // 31 digits: shorter than a run, stays literal.
        #expect(try roundTrip(Array(hexText(randomBytes(16, seed: 6)).dropLast())) == nil)
    }

    @Test func malformedFormsAreRefused() throws {
        let input = byteaCopyDump(rows: 3, rowBytes: 300, seed: 7)
        var room = [UInt8](repeating: 0, count: HexPacking.bound(input.count))
        let n = try #require(input.withUnsafeBytes { i in room.withUnsafeMutableBytes { HexPacking.pack(i, into: $0) } })
        var out = [UInt8](repeating: 0, count: input.count)
        for cut in [0, 4, 9, n / 2, n - 1] {
            #expect(throws: HexPackingError.self) {
                try room.withUnsafeBytes { r in
                    try out.withUnsafeMutableBytes { try HexPacking.unpack(UnsafeRawBufferPointer(rebasing: r[0..<cut]), into: $0) }
                }
            }
        }
        var small = [UInt8](repeating: 0, count: input.count - 1)
        #expect(throws: HexPackingError.self) {
            try room.withUnsafeBytes { r in
                try small.withUnsafeMutableBytes { try HexPacking.unpack(UnsafeRawBufferPointer(rebasing: r[0..<n]), into: $0) }
            }
        }
    }

    @Test(arguments: [false, true])
    func backupsOfHexBlobsStoreTheBytesAndRestoreExactly(encrypted: Bool) throws {
        let dir = TempDir()
        let key: [UInt8]? = encrypted ? Array(repeating: 7, count: 32) : nil
        let repo = try Repository.initialize(at: dir.sub("repo"), chunker: testChunker, compressionLevel: 3,
                                             packSize: 1 << 20, encryptionKey: key)
        let dump = byteaCopyDump(rows: 40, rowBytes: 60_000, seed: 8)
        let session = try BackupSession(repository: repo)
        var options = BackupOptions(name: "images", source: "memory")
        options.lockWait = 0
        let m = try session.run(source: BufferSource(dump), options: options)
        let use = session.compressionUse
        #expect(use[.hexPacked].rawBytes > Int64(dump.count) * 9 / 10, "\(use)")
        // 2.4 MB of random bytes as hex: stored at about the bytes' size.
        #expect(m.stats.storedBytes < Int64(dump.count) * 52 / 100)
        var hexEntries = 0
        try repo.index().forEachChunk { _, loc in
            if loc.encoding == ChunkEncoding.hexZstd.rawValue || loc.encoding == ChunkEncoding.hexZstdGroup.rawValue {
                hexEntries += 1
            }
        }
        #expect(hexEntries > 0)
        #expect(try restoreBytes(repo, m.id, dir: dir) == dump)
        #expect(try Verifier(repository: repo).verify(deep: true).ok)
        // An index rebuilt from the packs' trailers knows the encodings too.
        try FileManager.default.removeItem(atPath: repo.cacheDirectory)
        let reopened = try Repository(backend: repo.backend, key: key)
        #expect(try restoreBytes(reopened, m.id, dir: dir) == dump)
    }

    @Test func gcKeepsAndRegroupsHexPackedGroups() throws {
        let dir = TempDir()
        let repo = try makeRepository(dir, packSize: 1 << 20)
        let a = byteaCopyDump(rows: 60, rowBytes: 50_000, seed: 9)
        let first = try backup(repo, a, name: "a", checkDump: false)
        // b shares a's first part, which ends inside a hex-packed group.
        let bData = Array(a[0..<(a.count * 2 / 5)]) + byteaCopyDump(rows: 5, rowBytes: 30_000, seed: 10)
        try collectAfterDeletingFirst(repo, first: first, keeping: bData) { try restoreBytes(repo, $0, dir: dir) }
        // Whole hex-packed groups stay hex-packed, and regrouped live members of
        // partly dead ones are packed again: b takes about half its size in packs.
        var hexMembers = 0, zstdMembers = 0
        try repo.index().forEachChunk { _, loc in
            switch ChunkEncoding(rawValue: loc.encoding) {
            case .hexZstd?, .hexZstdGroup?: hexMembers += 1
            case .zstd?, .zstdGroup?: zstdMembers += 1
            default: break
            }
        }
        #expect(hexMembers > 0)
        // Only the dump's text around the rows (its first and last chunks) is plain zstd.
        #expect(zstdMembers <= 2, "\(zstdMembers) chunks stored as plain zstd")
        let packBytes = try repo.listPacks().values.reduce(0, +)
        #expect(packBytes < Int64(bData.count) * 56 / 100, "\(packBytes) bytes of packs for \(bData.count) of hex dump")
    }

    @Test func aFlippedByteInAHexPackedGroupIsFoundAndNamed() throws {
        let dir = TempDir()
        let repo = try makeRepository(dir, packSize: 4 << 20)
        let dump = byteaCopyDump(rows: 20, rowBytes: 50_000, seed: 11)
        let m = try backup(repo, dump, name: "x")
        var target: ChunkLocation?
        try repo.index().forEachChunk { _, loc in
            if target == nil && loc.encoding == ChunkEncoding.hexZstdGroup.rawValue { target = loc }
        }
        let loc = try #require(target)
        try flipByte(at: dir.sub("repo/") + loc.pack.key, offset: payloadOffset(loc) + Int64(loc.storedLength / 2))
        #expect(throws: DedupError.self) { _ = try restoreBytes(repo, m.id, dir: dir) }
        #expect(try !Verifier(repository: repo).verify(deep: true).ok)
    }
}
