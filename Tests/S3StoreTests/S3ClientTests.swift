import Foundation
import Testing
@testable import S3Store

/// The S3 servers tools/test starts on loopback: moto (any credentials) and
/// `rclone serve s3` (checks every signature).
enum TestS3 {
    static let env = ProcessInfo.processInfo.environment

    struct Server: CustomStringConvertible, Sendable {
        let name: String
        let url: String?
        let credentials: S3Credentials
        var description: String { name }
        /// The same server behind the proxy that fails every third request.
        var faulty: Server {
            Server(name: name + "-faulty", url: TestS3.env["DBBACKUP_TEST_S3_\(name.uppercased())_FAULTY"], credentials: credentials)
        }
    }

    static let servers = [
        Server(
            name: "moto", url: env["DBBACKUP_TEST_S3_MOTO"],
            credentials: S3Credentials(accessKeyID: "testing", secretAccessKey: "testing")),
        Server(
            name: "rclone", url: env["DBBACKUP_TEST_S3_RCLONE"],
            credentials: S3Credentials(
                accessKeyID: "dbbackup-test", secretAccessKey: env["DBBACKUP_TEST_S3_RCLONE_SECRET"] ?? "")),
    ]

    /// Bytes that differ at every offset, so a range from the wrong place shows.
    static func distinctBytes(_ count: Int, seed: UInt64) -> [UInt8] {
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        return (0..<count).map { _ in
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            return UInt8(truncatingIfNeeded: state)
        }
    }

    /// A client of a new bucket on `server`.
    static func freshBucket(_ server: Server) throws -> S3Client {
        let url = try #require(server.url, "the \(server.name) server's URL is not set: run the tests through tools/test")
        let endpoint = try #require(S3Endpoint(url: url, region: "us-east-1", pathStyle: true))
        let bucket = "t-" + UUID().uuidString.lowercased().prefix(18)
        let client = try S3Client(
            endpoint: endpoint, bucket: String(bucket), credentials: server.credentials, firstPauseSeconds: 0.01)
        let made = try client.send("PUT", key: nil, operation: "create bucket")
        #expect(made.status == 200, "\(String(decoding: made.body, as: UTF8.self))")
        return client
    }
}

@Suite struct S3ClientTests {
    @Test(arguments: TestS3.servers)
    func objectsGoUpComeBackWholeAndInRangesAndGo(server: TestS3.Server) throws {
        let s3 = try TestS3.freshBucket(server)
        let bytes = (0..<100_000).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        // Keys the signature must encode as the server reads them.
        for key in ["packs/ab/plain.pack", "manifests/2026-12-01_020000_shop db+x~.json", "tmp/é ü/%20"] {
            let put = try s3.send("PUT", key: key, body: bytes, operation: "put")
            #expect(put.status == 200, "\(key): \(s3.failure(put, operation: "put", key: key))")
            let whole = try s3.send("GET", key: key, operation: "get")
            #expect(whole.status == 200)
            #expect(whole.body == bytes, "\(key)")
            let part = try s3.send("GET", key: key, headers: [("Range", "bytes=1000-1999")], operation: "get")
            // 206, or 200 from rclone, which still sends only the range.
            #expect(part.status == 206 || part.status == 200)
            #expect(part.body == Array(bytes[1000..<2000]))
            let head = try s3.send("HEAD", key: key, operation: "head")
            #expect(head.status == 200)
            #expect(head.header("Content-Length") == "100000")
        }
        let listing = try s3.send(
            "GET", key: nil, query: [("list-type", "2"), ("prefix", "manifests/")], operation: "list")
        #expect(listing.status == 200)
        let text = String(decoding: listing.body, as: UTF8.self)
        #expect(text.contains("<Key>manifests/2026-12-01_020000_shop db+x~.json</Key>"), "\(text)")
        #expect(!text.contains("packs/ab/plain.pack"))
        let gone = try s3.send("DELETE", key: "packs/ab/plain.pack", operation: "delete")
        #expect(gone.status == 204)
        let missing = try s3.send("GET", key: "packs/ab/plain.pack", operation: "get")
        #expect(missing.status == 404)
        guard case .server(_, let key, 404, let code, _) = s3.failure(missing, operation: "get", key: "packs/ab/plain.pack")
        else { Issue.record("not a server error"); return }
        #expect(key == "packs/ab/plain.pack")
        #expect(code == "NoSuchKey")
    }

    @Test func aWrongSecretIsRefusedAndNamedWithoutTheSecret() throws {
        let server = TestS3.servers[1]
        let url = try #require(server.url, "run the tests through tools/test")
        let endpoint = try #require(S3Endpoint(url: url, region: "us-east-1", pathStyle: true))
        let wrong = try S3Client(
            endpoint: endpoint, bucket: "any",
            credentials: S3Credentials(accessKeyID: "dbbackup-test", secretAccessKey: "WRONG-SECRET-MARKER"))
        let r = try wrong.send("GET", key: nil, query: [("list-type", "2")], operation: "list")
        #expect(r.status == 403)
        #expect(wrong.retries == 0)  // a refused signature is not asked again
        let message = wrong.failure(r, operation: "list", key: nil).description
        #expect(message.contains("403"))
        #expect(!message.contains("WRONG-SECRET-MARKER"))
    }

    @Test func noServerIsATransportErrorNamingTheKey() throws {
        // A port nothing listens on (the discard port on loopback).
        let endpoint = try #require(S3Endpoint(url: "http://127.0.0.1:9", region: "us-east-1", pathStyle: true))
        let s3 = try S3Client(
            endpoint: endpoint, bucket: "b", credentials: S3Credentials(accessKeyID: "a", secretAccessKey: "s"),
            timeoutSeconds: 2, attempts: 2, firstPauseSeconds: 0.01)
        #expect {
            _ = try s3.send("GET", key: "config", operation: "get")
        } throws: { error in
            guard case S3Error.transport(let op, let key, let detail) = error else { return false }
            return op == "get" && key == "config" && detail == "Connection refused"
        }
        #expect(s3.retries == 1)
    }

    @Test(arguments: TestS3.servers)
    func everyThirdRequestRefusedBusyStillSucceedsByRetrying(server: TestS3.Server) throws {
        // The bucket made directly; then every request through the proxy, which
        // answers every third one 503 SlowDown.
        let direct = try TestS3.freshBucket(server)
        let url = try #require(server.faulty.url, "run the tests through tools/test")
        let s3 = try S3Client(
            endpoint: try #require(S3Endpoint(url: url, region: "us-east-1", pathStyle: true)), bucket: direct.bucket,
            credentials: server.credentials, firstPauseSeconds: 0.01)
        for k in 0..<20 {
            let bytes = (0..<(1000 + k)).map { UInt8(truncatingIfNeeded: $0 &+ k) }
            #expect(try s3.send("PUT", key: "k/\(k)", body: bytes, operation: "put").status == 200)
            let back = try s3.send("GET", key: "k/\(k)", operation: "get")
            #expect(back.status == 200 && back.body == bytes)
        }
        // 40 requests, about one in three answered busy: each sent again.
        #expect(s3.retries >= 10, "\(s3.retries) retries")
        #expect(direct.retries == 0)
    }
}
