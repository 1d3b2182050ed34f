import DedupStore
import Foundation
import Testing
@testable import S3Store

/// What the bucket backend adds to the contract `BackendConformanceTests` runs on
/// it: listings of many pages, keys XML must escape, create-if-absent on a server
/// that ignores `If-None-Match`, and failures as the store's typed errors.
@Suite struct S3BackendTests {
    func backend(_ server: TestS3.Server) throws -> S3Backend {
        S3Backend(client: try TestS3.freshBucket(server), prefix: "repo")
    }

    func failure(_ body: () throws -> Void) -> BackendError? {
        do {
            try body()
            return nil
        } catch DedupError.storage(let e) {
            return e
        } catch {
            return BackendError("?", "?", .other, detail: "\(error)")
        }
    }

    @Test(arguments: TestS3.servers)
    func aListingOfManyPagesHasEveryKeyOnce(server: TestS3.Server) throws {
        let b = try backend(server)
        #expect(b.prefix == "repo/")
        let keys = (0..<1_050).map { String(format: "manifests/%05d.manifest.json", $0) }
        for k in keys { try b.put(k, Array(k.utf8), ifAbsent: false) }
        try b.put("packs/00/x.pack", [1, 2, 3], ifAbsent: false)
        let listed = try b.list("manifests/")
        #expect(listed.map(\.key) == keys)
        #expect(listed.allSatisfy { $0.size == Int64($0.key.utf8.count) })
        var seen = Set<String>()
        try b.forEachKey("manifests/") { seen.insert($0) }
        #expect(seen == Set(keys))
        #expect(try b.list("").count == 1_051)
    }

    @Test(arguments: TestS3.servers)
    func keysWithCharactersXMLEscapesListAsThemselves(server: TestS3.Server) throws {
        let b = try backend(server)
        let keys = ["tmp/a&b<c>d\"e'f.json", "tmp/plain.json", "tmp/ünï cödé.json"]
        for k in keys { try b.put(k, [7], ifAbsent: false) }
        #expect(try b.keys("tmp/") == keys.sorted())
        for k in keys { #expect(try b.get(k) == [7], "\(k)") }
    }

    @Test(arguments: TestS3.servers)
    func aTakenKeyIsRefusedEvenWhereTheHeaderIsIgnored(server: TestS3.Server) throws {
        // rclone ignores If-None-Match and would overwrite: the backend asks first.
        let b = try backend(server)
        try b.put("locks/exclusive.json", Array("first".utf8), ifAbsent: true)
        let e = failure { try b.put("locks/exclusive.json", Array("second".utf8), ifAbsent: true) }
        #expect(e?.failure == .alreadyExists)
        #expect(try b.get("locks/exclusive.json") == Array("first".utf8))
        #expect(!b.capabilities.atomicCreateIfAbsent)
    }

    @Test func aCreateWhoseAnswerWasLostIsNotRefusedAsTaken() throws {
        // moto honours If-None-Match; the proxy lets every third request take
        // effect and then answers 503, so the retried PUT finds its own object.
        let moto = TestS3.servers[0]
        let direct = try TestS3.freshBucket(moto)
        let url = try #require(TestS3.env["DBBACKUP_TEST_S3_MOTO_LOST_ANSWERS"], "run the tests through tools/test")
        let client = try S3Client(
            endpoint: try #require(S3Endpoint(url: url, region: "us-east-1", pathStyle: true)), bucket: direct.bucket,
            credentials: moto.credentials, firstPauseSeconds: 0.01)
        let b = S3Backend(client: client, prefix: "repo")
        for k in 0..<12 { try b.put("locks/l-\(k).json", Array("lock \(k)".utf8), ifAbsent: true) }
        #expect(client.retries >= 4)
        for k in 0..<12 { #expect(try b.get("locks/l-\(k).json") == Array("lock \(k)".utf8)) }
        // Another writer's object is still refused.
        #expect(failure { try b.put("locks/l-0.json", Array("other".utf8), ifAbsent: true) }?.failure == .alreadyExists)
    }

    @Test func failuresAreTheStoresTypedErrors() throws {
        let server = TestS3.servers[1]
        let url = try #require(server.url, "run the tests through tools/test")
        let endpoint = try #require(S3Endpoint(url: url, region: "us-east-1", pathStyle: true))
        let wrong = S3Backend(
            client: try S3Client(
                endpoint: endpoint, bucket: "any",
                credentials: S3Credentials(accessKeyID: "dbbackup-test", secretAccessKey: "WRONG-SECRET-MARKER")),
            prefix: "r/")
        let denied = failure { _ = try wrong.list("manifests/") }
        #expect(denied?.failure == .denied)
        #expect(denied.map { !$0.message.contains("WRONG-SECRET-MARKER") } ?? false)
        #expect(denied?.location.hasPrefix("s3://any/r/") ?? false)
        let b = try backend(TestS3.servers[0])
        #expect(failure { _ = try b.openReader("packs/00/none.pack") }?.failure == .notFound)
        #expect(try b.get("config") == nil)
        #expect(try b.size("config") == nil)
        try b.delete("config")  // absent: no error
        let gone = S3Backend(
            client: try S3Client(
                endpoint: S3Endpoint(scheme: "http", host: "127.0.0.1", port: 9, region: "us-east-1", pathStyle: true),
                bucket: "b", credentials: server.credentials, timeoutSeconds: 2, attempts: 2, firstPauseSeconds: 0.01),
            prefix: "")
        #expect(failure { _ = try gone.get("config") }?.failure == .transient)
    }
}
