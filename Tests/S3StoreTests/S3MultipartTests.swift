import DedupStore
import Foundation
import NIOCore
import Testing
@testable import S3Store

/// Objects larger than a part go up as multipart uploads while they are written:
/// whole and exact at commit, invisible before, gone on abort, and cleaned up
/// when their writer died.
@Suite struct S3MultipartTests {
    static let part = 5 << 20

    func backend(_ server: TestS3.Server) throws -> S3Backend {
        S3Backend(client: try TestS3.freshBucket(server), prefix: "repo", partSize: Self.part, partsInFlight: 2)
    }

    /// Bytes that differ at every offset, so a part in the wrong place shows.
    func bytes(_ count: Int, seed: UInt64) -> [UInt8] { TestS3.distinctBytes(count, seed: seed) }

    /// Writes `data` in pieces of varying sizes (one of them larger than a part).
    func write(_ data: [UInt8], to w: ObjectWriter) throws {
        var offset = 0
        var sizes = [1, 4095, Self.part + 3, 65_536, 1 << 20]
        while offset < data.count {
            let n = min(sizes[0], data.count - offset)
            sizes.append(sizes.removeFirst())
            try data[offset..<(offset + n)].withUnsafeBytes { try w.write($0) }
            offset += n
        }
    }

    func uploadsInProgress(_ b: S3Backend) throws -> Int {
        let r = try b.request("GET", nil, operation: "list uploads", query: [("uploads", "")])
        return XMLText.elements("Upload", in: String(decoding: r.body, as: UTF8.self)).count
    }

    @Test(arguments: TestS3.servers)
    func anObjectOfSeveralPartsIsWholeAtCommitAndInvisibleBefore(server: TestS3.Server) throws {
        let b = try backend(server)
        let data = bytes(2 * Self.part + 777_777, seed: 1)
        let w = try b.create("packs/ab/big.pack", ifAbsent: true)
        try write(data, to: w)
        #expect(try b.size("packs/ab/big.pack") == nil)
        #expect(try uploadsInProgress(b) == 1)
        try w.commit()
        #expect(try b.size("packs/ab/big.pack") == Int64(data.count))
        #expect(try b.get("packs/ab/big.pack") == data)
        let r = try b.openReader("packs/ab/big.pack")
        #expect(try r.read(at: Int64(Self.part - 10), count: 20) == Array(data[(Self.part - 10)..<(Self.part + 10)]))
        #expect(try uploadsInProgress(b) == 0)
        // Exactly one part: still multipart (the part filled), still exact.
        let one = bytes(Self.part, seed: 2)
        try b.put("packs/cd/one.pack", one, ifAbsent: true)
        #expect(try b.get("packs/cd/one.pack") == one)
    }

    @Test(arguments: TestS3.servers)
    func anAbortedUploadLeavesNothing(server: TestS3.Server) throws {
        let b = try backend(server)
        let w = try b.create("packs/ab/gone.pack", ifAbsent: true)
        try write(bytes(Self.part * 2 + 1, seed: 3), to: w)
        w.abort()
        #expect(try b.size("packs/ab/gone.pack") == nil)
        #expect(try uploadsInProgress(b) == 0)
        #expect(try b.keys("").isEmpty)
    }

    @Test(arguments: TestS3.servers)
    func aLargeChunkListWhoseKeyIsTakenMovesToAnotherKey(server: TestS3.Server) throws {
        // Staged under tmp/ and copied at commit, since an upload cannot change key.
        let b = try backend(server)
        try b.put("manifests/n1.chunks", [9], ifAbsent: true)
        let data = bytes(Self.part + 123_456, seed: 4)
        let w = try b.create("manifests/n1.chunks", ifAbsent: true)
        try write(data, to: w)
        var refused: BackendError.Failure?
        do { try w.commit() } catch let e as DedupError { refused = e.storageFailure }
        #expect(refused == .alreadyExists)
        try w.retarget(to: "manifests/n2.chunks")
        try w.commit()
        #expect(try b.get("manifests/n1.chunks") == [9])
        #expect(try b.get("manifests/n2.chunks") == data)
        #expect(try b.keys("tmp/").isEmpty)
        #expect(try uploadsInProgress(b) == 0)
    }

    @Test(arguments: TestS3.servers)
    func uploadsOfADeadWriterAreAbortedByGCNotByABackupTheSameDay(server: TestS3.Server) throws {
        let b = try backend(server)
        // A writer that died: its upload begun, parts sent, never completed.
        let upload = try MultipartUpload(backend: b, key: "packs/ef/dead.pack")
        try upload.send(ByteBuffer(bytes: bytes(Self.part, seed: 5)))
        let staged = try MultipartUpload(backend: b, key: "tmp/upload-dead")
        try staged.send(ByteBuffer(bytes: bytes(1000, seed: 6)))
        try staged.complete(expectedSize: 1000, ifAbsent: false)
        #expect(try uploadsInProgress(b) == 1)
        // A backup aborts only uploads begun over a day before the server's clock
        // says it is now: not this one, unless the server dates it otherwise
        // (moto reports every upload as begun in 2010).
        let r = try b.request("GET", nil, operation: "list uploads", query: [("uploads", "")])
        let initiated = XMLText.value("Initiated", in: r.body).flatMap(S3Backend.isoDate)
        let serverNow = try #require(r.header("Date").flatMap(S3Backend.httpDate))
        let old = initiated.map { serverNow.timeIntervalSince($0) > S3Backend.abandonedAfter } ?? false
        #expect(b.removeAbandonedWrites(all: false) == (old ? 1 : 0))
        #expect(try uploadsInProgress(b) == (old ? 0 : 1))
        // gc (nothing else writing) aborts every upload and removes the stage.
        #expect(b.removeAbandonedWrites(all: true) == (old ? 1 : 2))
        #expect(try uploadsInProgress(b) == 0)
        #expect(try b.keys("").isEmpty)
    }

    @Test(arguments: TestS3.servers.map(\.faulty))
    func partsAnsweredWithFailuresAreSentAgain(server: TestS3.Server) throws {
        let b = try backend(server)
        let data = bytes(3 * Self.part + 5, seed: 7)
        try b.put("packs/aa/retried.pack", data, ifAbsent: true)
        #expect(b.client.retries >= 2)
        #expect(try b.get("packs/aa/retried.pack") == data)
        #expect(try uploadsInProgress(b) == 0)
    }
}

