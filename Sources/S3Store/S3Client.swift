import AsyncHTTPClient
import DedupStore
import Foundation
import NIOCore
import NIOHTTP1
import NIOSSL

/// Where a bucket's server is and how to address it.
public struct S3Endpoint: Sendable, Equatable {
    /// `http` or `https`.
    public var scheme: String
    public var host: String
    public var port: Int?
    public var region: String
    /// Path-style addressing (`host/bucket/key`: MinIO, Ceph RGW, rclone, moto)
    /// instead of virtual-host style (`bucket.host/key`: AWS).
    public var pathStyle: Bool

    public init(scheme: String, host: String, port: Int?, region: String, pathStyle: Bool) {
        self.scheme = scheme
        self.host = host
        self.port = port
        self.region = region
        self.pathStyle = pathStyle
    }

    /// An endpoint from a URL such as `http://127.0.0.1:9000`.
    public init?(url: String, region: String, pathStyle: Bool) {
        guard let u = URLComponents(string: url), let scheme = u.scheme?.lowercased(), scheme == "http" || scheme == "https",
            let host = u.host, !host.isEmpty
        else { return nil }
        self.init(scheme: scheme, host: host, port: u.port, region: region, pathStyle: pathStyle)
    }
}

/// A response, its body read whole.
public struct S3Response: Sendable {
    public var status: Int
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]

    public func header(_ name: String) -> String? {
        headers.first { $0.name.lowercased() == name.lowercased() }?.value
    }

    /// The whole object's size, as a ranged answer's Content-Range gives it
    /// (`bytes 0-99/12345`); nil when it does not.
    public var objectSize: Int64? {
        header("Content-Range").flatMap { $0.split(separator: "/").last.flatMap { Int64($0) } }
    }
}

/// What went wrong with a request, for one error line.
public enum S3Error: Error, Equatable, CustomStringConvertible {
    /// The server answered with an error: its status, S3 error code and message.
    case server(operation: String, key: String, status: Int, code: String, message: String)
    /// No answer: refused, reset, timed out.
    case transport(operation: String, key: String, detail: String)
    /// The TLS handshake failed (an untrusted certificate, a wrong host name):
    /// not an accident, so never tried again.
    case tls(operation: String, key: String, detail: String)
    /// The CA file given for a private endpoint cannot be used.
    case caFile(path: String, detail: String)

    /// The S3 error code of a server's answer ("NoSuchBucket"), else empty.
    public var code: String {
        if case .server(_, _, _, let code, _) = self { return code }
        return ""
    }

    public var description: String {
        switch self {
        case .server(let op, let key, let status, let code, let message):
            return "\(op) \(key): the server answered \(status)" + (code.isEmpty ? "" : " \(code)")
                + (message.isEmpty ? "" : ": \(message)")
        case .transport(let op, let key, let detail):
            return "\(op) \(key): no answer from the server (\(detail))"
        case .tls(let op, let key, let detail):
            return "\(op) \(key): TLS failed (\(detail)); for a private endpoint give its CA with --s3-ca-file or AWS_CA_BUNDLE"
        case .caFile(let path, let detail):
            return "the CA file \(path) cannot be used: \(detail)"
        }
    }
}

/// Signed requests to one bucket, one at a time per call, from synchronous code
/// (the store's `Backend` is synchronous): each call waits for its response.
public final class S3Client: @unchecked Sendable {
    public let endpoint: S3Endpoint
    public let bucket: String
    private let signer: SigV4Signer
    private let http: HTTPClient
    private let timeout: TimeAmount

    /// How often a request is tried in all, and the first pause between tries
    /// (doubled each time, up to `maxPause`, with full jitter).
    public let attempts: Int
    private let firstPause: Double
    private let maxPause = 5.0
    private let counters = NSLock()
    private var retried = 0
    /// Requests sent again after a transient failure, since this client began.
    public var retries: Int { counters.withLock { retried } }
    private var traffic = BackendTraffic()
    /// Requests answered and bytes moved, since this client began.
    public var trafficSoFar: BackendTraffic { counters.withLock { traffic } }
    /// DBBACKUP_S3_REQUEST_LOG: a file that gets one line per request answered.
    private let requestLog = RequestLog(path: ProcessInfo.processInfo.environment["DBBACKUP_S3_REQUEST_LOG"])

    /// `caFile` (PEM) replaces the system's trusted certificates for an https
    /// endpoint with a private CA; without it the system's are used. Certificates
    /// and host names are always verified.
    public init(
        endpoint: S3Endpoint, bucket: String, credentials: S3Credentials, timeoutSeconds: Int64 = 60,
        attempts: Int = 6, firstPauseSeconds: Double = 0.1, caFile: String? = nil
    ) throws {
        self.endpoint = endpoint
        self.bucket = bucket
        self.attempts = max(1, attempts)
        firstPause = firstPauseSeconds
        signer = SigV4Signer(credentials: credentials, region: endpoint.region)
        timeout = .seconds(timeoutSeconds)
        var config = HTTPClient.Configuration()
        config.timeout = .init(connect: .seconds(10), read: .seconds(timeoutSeconds))
        // This client tries again itself (`send`); the pool's own retries of a
        // refused connection would hold every try until the connect timeout.
        config.connectionPool.retryConnectionEstablishment = false
        var tls = TLSConfiguration.makeClientConfiguration()
        if let caFile {
            do {
                let certificates = try NIOSSLCertificate.fromPEMFile(caFile)
                guard !certificates.isEmpty else { throw S3Error.caFile(path: caFile, detail: "it holds no PEM certificate") }
                tls.trustRoots = .certificates(certificates)
            } catch let e as S3Error {
                throw e
            } catch {
                let detail = FileManager.default.isReadableFile(atPath: caFile)
                    ? "it is not a PEM certificate file" : "it cannot be read"
                throw S3Error.caFile(path: caFile, detail: detail)
            }
        }
        config.tlsConfiguration = tls
        http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: config)
    }

    deinit { try? http.syncShutdown() }

    /// The Host header: the bucket's name in front of the host with virtual-host style.
    private var hostHeader: String {
        let name = endpoint.pathStyle ? endpoint.host : "\(bucket).\(endpoint.host)"
        let defaultPort = endpoint.scheme == "https" ? 443 : 80
        guard let port = endpoint.port, port != defaultPort else { return name }
        return "\(name):\(port)"
    }

    /// The request path of `key` (nil: the bucket itself), not yet encoded.
    private func path(_ key: String?) -> String {
        let k = key.map { "/" + $0 } ?? "/"
        return endpoint.pathStyle ? "/" + bucket + (key == nil ? "" : k) : k
    }

    /// Whether an answer is worth asking again: the server busy or failing
    /// (429, 500, 502, 503, 504). A refused signature (403), a missing bucket or
    /// key (404) and the rest are answers, not accidents.
    static func isTransient(status: Int) -> Bool { [429, 500, 502, 503, 504].contains(status) }

    /// Sends one signed request and reads the whole response, trying again
    /// (signed anew, after a pause with jitter) while the server answers a
    /// transient status or does not answer at all, `attempts` times in all.
    /// `operation` and `key` name it in errors. Statuses are the caller's to judge.
    public func send(
        _ method: String, key: String?, query: [(name: String, value: String)] = [],
        headers extra: [(name: String, value: String)] = [], body: [UInt8] = [], operation: String
    ) throws -> S3Response {
        try send(method, key: key, query: query, headers: extra, body: ByteBuffer(bytes: body), operation: operation)
    }

    /// The same with the body in a buffer, sent as it is on every try (a part
    /// of a multipart upload is never copied).
    public func send(
        _ method: String, key: String?, query: [(name: String, value: String)] = [],
        headers extra: [(name: String, value: String)] = [], body: ByteBuffer, operation: String
    ) throws -> S3Response {
        let payload = body.withUnsafeReadableBytes { sha256Hex($0) }
        var attempt = 1
        while true {
            do {
                let r = try sendOnce(
                    method, key: key, query: query, headers: extra, body: body, payload: payload, operation: operation)
                if !Self.isTransient(status: r.status) || attempt >= attempts { return r }
            } catch let e as S3Error {
                guard case .transport = e, attempt < attempts else { throw e }
            }
            let ceiling = min(maxPause, firstPause * Double(1 << min(attempt - 1, 20)))
            Thread.sleep(forTimeInterval: Double.random(in: 0...ceiling))
            counters.withLock { retried += 1 }
            attempt += 1
        }
    }

    private func sendOnce(
        _ method: String, key: String?, query: [(name: String, value: String)], headers extra: [(name: String, value: String)],
        body: ByteBuffer, payload: String, operation: String
    ) throws -> S3Response {
        let request = S3Request(
            method: method, path: path(key), query: query, headers: [("Host", hostHeader)] + extra,
            payloadSHA256: payload)
        let signed = signer.sign(request, at: Date())
        let queryString = SigV4Signer.canonicalQuery(query)
        let url = "\(endpoint.scheme)://\(hostHeader)\(SigV4Signer.encodePath(request.path))"
            + (queryString.isEmpty ? "" : "?" + queryString)
        let name = key ?? bucket
        do {
            var r = try HTTPClient.Request(url: url, method: HTTPMethod(rawValue: method))
            for (n, v) in signed { r.headers.replaceOrAdd(name: n, value: v) }
            if body.readableBytes > 0 || method == "PUT" || method == "POST" { r.body = .byteBuffer(body) }
            let sent = DispatchTime.now()
            let response = try http.execute(request: r, deadline: .now() + timeout).wait()
            var bytes = [UInt8]()
            if var b = response.body, let read = b.readBytes(length: b.readableBytes) { bytes = read }
            counters.withLock {
                traffic.requests += 1
                traffic.bytesSent += Int64(body.readableBytes)
                traffic.bytesReceived += Int64(bytes.count)
            }
            requestLog?.record(method, operation: operation, key: name, status: Int(response.status.code),
                               sent: body.readableBytes, received: bytes.count,
                               seconds: Double(DispatchTime.now().uptimeNanoseconds - sent.uptimeNanoseconds) / 1e9)
            return S3Response(
                status: Int(response.status.code), headers: response.headers.map { ($0.name, $0.value) }, body: bytes)
        } catch let e as S3Error {
            throw e
        } catch let e as NIOSSLError {
            throw S3Error.tls(operation: operation, key: name, detail: Self.tlsDetail("\(e)"))
        } catch let e as BoringSSLError {
            throw S3Error.tls(operation: operation, key: name, detail: Self.tlsDetail("\(e)"))
        } catch let e as IOError {
            // "Connection refused", not NIO's "connection reset (error set): ..."
            throw S3Error.transport(operation: operation, key: name, detail: String(cString: strerror(e.errnoCode)))
        } catch {
            throw S3Error.transport(operation: operation, key: name, detail: "\(error)")
        }
    }

    /// BoringSSL's words for a failed handshake, made readable where they are known.
    static func tlsDetail(_ text: String) -> String {
        if text.contains("CERTIFICATE_VERIFY_FAILED") { return "the server's certificate is not trusted" }
        if text.contains("hostname") || text.contains("Hostname") { return "the certificate is for another host name" }
        return text
    }

    /// The error a non-2xx response stands for: its S3 `<Code>` and `<Message>`.
    public func failure(_ response: S3Response, operation: String, key: String?) -> S3Error {
        .server(
            operation: operation, key: key ?? bucket, status: response.status,
            code: XMLText.value("Code", in: response.body) ?? "",
            message: XMLText.value("Message", in: response.body) ?? "")
    }
}

/// One line per answered request (method, operation, status, bytes sent and
/// received, seconds, key), appended to a file: what each command costs in requests.
final class RequestLog: @unchecked Sendable {
    private let fd: Int32
    private let lock = NSLock()

    init?(path: String?) {
        guard let path, !path.isEmpty else { return nil }
        fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return nil }
    }

    deinit { close(fd) }

    func record(_ method: String, operation: String, key: String, status: Int, sent: Int, received: Int, seconds: Double) {
        let line = Array("\(method)\t\(operation)\t\(status)\t\(sent)\t\(received)\t\(String(format: "%.4f", seconds))\t\(key)\n".utf8)
        lock.withLock { _ = line.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) } }
    }
}
