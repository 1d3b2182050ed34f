import DedupStore
import Foundation
import Testing
@testable import S3Store

/// AWS's published examples of Signature Version 4 for S3 ("Examples:
/// Signature Calculations in AWS Signature Version 4", the Amazon S3 API
/// reference): the example account, 2013-05-24 00:00:00 UTC, us-east-1.
@Suite struct SigV4Tests {
    let signer = SigV4Signer(
        credentials: S3Credentials(
            accessKeyID: "AKIAIOSFODNN7EXAMPLE", secretAccessKey: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
        region: "us-east-1")
    let date = Date(timeIntervalSince1970: 1_369_353_600)
    let host = ("Host", "examplebucket.s3.amazonaws.com")

    func authorization(_ request: S3Request) throws -> String {
        let headers = signer.sign(request, at: date)
        return try #require(headers.last { $0.name == "Authorization" }).value
    }

    func stringToSignHash(_ request: S3Request) -> String {
        var r = request
        r.headers += [("x-amz-content-sha256", r.payloadSHA256), ("x-amz-date", "20130524T000000Z")]
        let (canonical, _) = SigV4Signer.canonicalRequest(r)
        return SHA256Hasher.hash(Array(canonical.utf8)).hex
    }

    @Test func getObjectWithARange() throws {
        let r = S3Request(method: "GET", path: "/test.txt", headers: [host, ("Range", "bytes=0-9")])
        #expect(stringToSignHash(r) == "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972")
        #expect(try authorization(r) == "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
    }

    @Test func putObjectWithAKeyToEncode() throws {
        let body = Array("Welcome to Amazon S3.".utf8)
        let r = S3Request(
            method: "PUT", path: "/test$file.text",
            headers: [("Date", "Fri, 24 May 2013 00:00:00 GMT"), host, ("x-amz-storage-class", "REDUCED_REDUNDANCY")],
            payloadSHA256: body.withUnsafeBytes { sha256Hex($0) })
        #expect(r.payloadSHA256 == "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072")
        #expect(SigV4Signer.encodePath(r.path) == "/test%24file.text")
        #expect(stringToSignHash(r) == "9e0e90d9c76de8fa5b200d8c849cd5b8dc7a3be3951ddb7f6a76b4158342019d")
        #expect(try authorization(r).hasSuffix("SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class,Signature=98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"))
    }

    @Test func aQueryParameterWithoutAValue() throws {
        let r = S3Request(method: "GET", path: "/", query: [("lifecycle", "")], headers: [host])
        #expect(SigV4Signer.canonicalQuery(r.query) == "lifecycle=")
        #expect(stringToSignHash(r) == "9766c798316ff2757b517bc739a67f6213b4ab36dd5da2f94eaebf79c77395ca")
        #expect(try authorization(r).hasSuffix("Signature=fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543"))
    }

    @Test func aListingsParametersAreSorted() throws {
        let r = S3Request(method: "GET", path: "/", query: [("prefix", "J"), ("max-keys", "2")], headers: [host])
        #expect(SigV4Signer.canonicalQuery(r.query) == "max-keys=2&prefix=J")
        #expect(stringToSignHash(r) == "df57d21db20da04d7fa30298dd4488ba3a2b47ca3a489c74750e0f1e7df1b9b7")
        #expect(try authorization(r).hasSuffix("Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"))
    }

    @Test func encodingKeepsOnlyTheUnreservedCharacters() {
        #expect(SigV4Signer.encode("AZaz09-._~") == "AZaz09-._~")
        #expect(SigV4Signer.encode("a b+c/d=e&f%") == "a%20b%2Bc%2Fd%3De%26f%25")
        #expect(SigV4Signer.encode("é") == "%C3%A9")
        #expect(SigV4Signer.encodePath("/bucket/packs/ab/x y.pack") == "/bucket/packs/ab/x%20y.pack")
        #expect(SigV4Signer.encodePath("") == "/")
        // A listing's prefix is a query value: its slashes are encoded.
        #expect(SigV4Signer.canonicalQuery([("prefix", "packs/ab/"), ("list-type", "2")]) == "list-type=2&prefix=packs%2Fab%2F")
    }

    @Test func headersAreTrimmedJoinedAndSorted() {
        let r = S3Request(
            method: "GET", path: "/k", headers: [("X-Amz-Meta-A", "  one   two "), ("x-amz-meta-a", "three"), host])
        let (canonical, names) = SigV4Signer.canonicalRequest(r)
        #expect(names == "host;x-amz-meta-a")
        #expect(canonical.contains("\nx-amz-meta-a:one two,three\n"))
    }

    @Test func temporaryCredentialsSignTheirToken() throws {
        let withToken = SigV4Signer(
            credentials: S3Credentials(accessKeyID: "AKID", secretAccessKey: "SECRET-MARKER", sessionToken: "TOKEN-MARKER"),
            region: "eu-west-1")
        let headers = withToken.sign(S3Request(method: "GET", path: "/k", headers: [host]), at: date)
        #expect(headers.contains { $0.name == "x-amz-security-token" && $0.value == "TOKEN-MARKER" })
        let auth = try #require(headers.last).value
        #expect(auth.contains("SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token,"))
        #expect(auth.contains("/20130524/eu-west-1/s3/aws4_request"))
        // Neither secret reaches a description (log lines and errors print these).
        let described = "\(withToken.credentials)"
        #expect(!described.contains("SECRET-MARKER") && !described.contains("TOKEN-MARKER"))
        #expect(SigV4Signer.timestamp(Date(timeIntervalSince1970: 1_764_633_599)) == "20251201T235959Z")
    }
}
