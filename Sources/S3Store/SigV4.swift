import DedupStore
import Foundation

/// The access key, secret and (for temporary credentials) session token of an
/// S3 account. Its description names the access key only: the secret and the
/// token never reach a log line or an error.
public struct S3Credentials: Sendable, Equatable, CustomStringConvertible {
    public var accessKeyID: String
    public var secretAccessKey: String
    public var sessionToken: String?

    public init(accessKeyID: String, secretAccessKey: String, sessionToken: String? = nil) {
        self.accessKeyID = accessKeyID
        self.secretAccessKey = secretAccessKey
        self.sessionToken = sessionToken
    }

    public var description: String {
        "access key \(accessKeyID)" + (sessionToken == nil ? "" : " (with a session token)")
    }
}

/// One HTTP request as AWS Signature Version 4 sees it.
public struct S3Request: Sendable {
    public var method: String
    /// The path as the object key spells it (`/bucket/a b.pack`), not yet
    /// percent-encoded: `SigV4Signer.encodePath` encodes it for the request
    /// line and the signature alike.
    public var path: String
    /// Query parameters, unencoded (`("prefix", "packs/")`, `("uploads", "")`).
    public var query: [(name: String, value: String)]
    /// Headers to send and sign, `Host` among them.
    public var headers: [(name: String, value: String)]
    /// The hex SHA-256 of the body, or `UNSIGNED-PAYLOAD`.
    public var payloadSHA256: String

    public init(
        method: String, path: String, query: [(name: String, value: String)] = [],
        headers: [(name: String, value: String)], payloadSHA256: String = SigV4Signer.emptyPayloadSHA256
    ) {
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.payloadSHA256 = payloadSHA256
    }
}

/// AWS Signature Version 4 in the `Authorization` header, for S3 and the
/// servers that speak its API (MinIO, Ceph RGW, Garage, rclone, moto). Written
/// small and checked against AWS's published examples (`SigV4Tests`).
public struct SigV4Signer: Sendable {
    public static let algorithm = "AWS4-HMAC-SHA256"
    public static let emptyPayloadSHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    public static let unsignedPayload = "UNSIGNED-PAYLOAD"

    public let credentials: S3Credentials
    public let region: String
    public let service: String

    public init(credentials: S3Credentials, region: String, service: String = "s3") {
        self.credentials = credentials
        self.region = region
        self.service = service
    }

    /// The headers to send: the request's, then `x-amz-content-sha256`,
    /// `x-amz-date`, `x-amz-security-token` (temporary credentials) and
    /// `Authorization`, all but the last signed.
    public func sign(_ request: S3Request, at date: Date) -> [(name: String, value: String)] {
        var signed = request
        let stamp = Self.timestamp(date)
        signed.headers.append(("x-amz-content-sha256", request.payloadSHA256))
        signed.headers.append(("x-amz-date", stamp))
        if let token = credentials.sessionToken { signed.headers.append(("x-amz-security-token", token)) }
        return signed.headers + [("Authorization", authorization(signed, timestamp: stamp))]
    }

    /// The `Authorization` value of a request whose headers already hold
    /// `x-amz-date` (= `timestamp`) and whatever else is to be signed.
    func authorization(_ request: S3Request, timestamp: String) -> String {
        let day = String(timestamp.prefix(8))
        let scope = "\(day)/\(region)/\(service)/aws4_request"
        let (canonical, signedNames) = Self.canonicalRequest(request)
        let toSign = Self.stringToSign(canonicalRequest: canonical, timestamp: timestamp, scope: scope)
        var key = hmac(Array(("AWS4" + credentials.secretAccessKey).utf8), day)
        key = hmac(key, region)
        key = hmac(key, service)
        key = hmac(key, "aws4_request")
        let signature = Hex.encode(hmac(key, toSign))
        return "\(Self.algorithm) Credential=\(credentials.accessKeyID)/\(scope),SignedHeaders=\(signedNames),Signature=\(signature)"
    }

    /// The canonical request, and the signed header names (`host;range;...`).
    static func canonicalRequest(_ r: S3Request) -> (String, String) {
        // Names lowercased and sorted; values trimmed, inner runs of spaces made
        // one; a name given twice gets its values joined with commas.
        var byName: [String: [String]] = [:]
        for (name, value) in r.headers {
            let v = value.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
            byName[name.lowercased(), default: []].append(v)
        }
        let names = byName.keys.sorted()
        let headers = names.map { "\($0):\(byName[$0, default: []].joined(separator: ","))\n" }.joined()
        let signedNames = names.joined(separator: ";")
        let request = [
            r.method, encodePath(r.path), canonicalQuery(r.query), headers, signedNames, r.payloadSHA256,
        ].joined(separator: "\n")
        return (request, signedNames)
    }

    static func stringToSign(canonicalRequest: String, timestamp: String, scope: String) -> String {
        [algorithm, timestamp, scope, SHA256Hasher.hash(Array(canonicalRequest.utf8)).hex].joined(separator: "\n")
    }

    /// The query string as signed and sent: each name and value encoded, sorted
    /// by name then value, `name=` for a parameter without a value.
    public static func canonicalQuery(_ query: [(name: String, value: String)]) -> String {
        query.map { (encode($0.name), encode($0.value)) }
            .sorted { $0.0 != $1.0 ? $0.0 < $1.0 : $0.1 < $1.1 }
            .map { "\($0.0)=\($0.1)" }
            .joined(separator: "&")
    }

    /// `path` percent-encoded except its slashes (S3 does not encode it twice).
    public static func encodePath(_ path: String) -> String {
        let p = path.isEmpty ? "/" : path
        return p.split(separator: "/", omittingEmptySubsequences: false).map { encode(String($0)) }
            .joined(separator: "/")
    }

    /// RFC 3986 percent-encoding of everything but the unreserved characters
    /// (letters, digits, `-._~`), byte by byte of the UTF-8, in uppercase hex.
    public static func encode(_ s: String) -> String {
        var out = ""
        out.reserveCapacity(s.utf8.count)
        for b in s.utf8 {
            switch b {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"),
                UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(b))
            default:
                out += "%" + String(b, radix: 16, uppercase: true).leftPadded(to: 2)
            }
        }
        return out
    }

    /// `yyyyMMdd'T'HHmmss'Z'` in UTC.
    public static func timestamp(_ date: Date) -> String {
        var t = time_t(date.timeIntervalSince1970.rounded(.down))
        var parts = tm()
        gmtime_r(&t, &parts)
        func two(_ v: Int32) -> String { String(v).leftPadded(to: 2) }
        return String(parts.tm_year + 1900) + two(parts.tm_mon + 1) + two(parts.tm_mday) + "T"
            + two(parts.tm_hour) + two(parts.tm_min) + two(parts.tm_sec) + "Z"
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}

/// The hex SHA-256 of `bytes`, as `x-amz-content-sha256` wants it.
public func sha256Hex(_ bytes: UnsafeRawBufferPointer) -> String { SHA256Hasher().digest(bytes).hex }

private func hmac(_ key: [UInt8], _ message: String) -> [UInt8] {
    Array(message.utf8).withUnsafeBytes { SHA256Hasher(hmacKey: key).digest($0).bytes }
}
