import DedupStore
import Foundation

/// A repository in a bucket, under a key prefix (`s3://bucket/prefix`): the
/// store's objects as S3 objects, written once by a single PUT at commit (the
/// object is visible whole or not at all), read by ranged GETs, listed page by
/// page (ListObjectsV2) and deleted.
///
/// Create-if-absent sends `If-None-Match: *`, which AWS, MinIO, Ceph RGW and
/// moto honour and `rclone serve s3` and Garage ignore; the backend first asks
/// whether the key is taken as well, so that a taken key is refused on every
/// server, but only a server that honours the header makes two racing writers
/// exclusive (`capabilities.atomicCreateIfAbsent` is false: nothing relies on it).
///
/// First step (issue 17): a writer holds its object in memory until commit
/// (a pack is at most the pack size); no retries yet.
public final class S3Backend: Backend, @unchecked Sendable {
    public let client: S3Client
    /// The key prefix, empty or ending in "/".
    public let prefix: String
    public let capabilities = BackendCapabilities(atomicCreateIfAbsent: false, listAfterWriteConsistent: true)

    public init(client: S3Client, prefix: String) {
        self.client = client
        let p = prefix.hasPrefix("/") ? String(prefix.dropFirst()) : prefix
        self.prefix = p.isEmpty || p.hasSuffix("/") ? p : p + "/"
    }

    public var location: String { "s3://\(client.bucket)/\(prefix)" }
    public var cacheIdentity: String {
        let e = client.endpoint
        return "s3://\(e.host)\(e.port.map { ":\($0)" } ?? "")/\(client.bucket)/\(prefix)"
    }
    public var isReadOnly: Bool { false }

    func objectKey(_ key: String) -> String { prefix + key }

    /// The store's error for an S3 one: its status decides the failure kind.
    func storageError(_ error: Error, _ operation: String, _ key: String) -> DedupError {
        let place = location + key
        guard let e = error as? S3Error else {
            return .storage(BackendError(operation, place, .other, detail: "\(error)"))
        }
        switch e {
        case .transport(_, _, let detail):
            return .storage(BackendError(operation, place, .transient, detail: detail))
        case .server(_, _, let status, let code, let message):
            let failure: BackendError.Failure
            switch status {
            case 404: failure = .notFound
            case 412: failure = .alreadyExists
            case 401, 403: failure = .denied
            case 429, 500...599: failure = .transient
            default: failure = .other
            }
            let detail = "HTTP \(status)" + (code.isEmpty ? "" : " \(code)") + (message.isEmpty ? "" : ": \(message)")
            return .storage(BackendError(operation, place, failure, detail: detail))
        }
    }

    /// One request whose status must be one of `ok`; else the store's error.
    @discardableResult
    func request(
        _ method: String, _ key: String?, operation: String, query: [(name: String, value: String)] = [],
        headers: [(name: String, value: String)] = [], body: [UInt8] = [], ok: Set<Int> = [200]
    ) throws -> S3Response {
        let objectKey = key.map(objectKey)
        do {
            let r = try client.send(method, key: objectKey, query: query, headers: headers, body: body, operation: operation)
            guard ok.contains(r.status) else { throw client.failure(r, operation: operation, key: objectKey) }
            return r
        } catch {
            throw storageError(error, operation, key ?? "")
        }
    }

    public func create(_ key: String, ifAbsent: Bool) throws -> ObjectWriter {
        S3ObjectWriter(backend: self, key: key, ifAbsent: ifAbsent)
    }

    public func get(_ key: String) throws -> [UInt8]? {
        let r = try request("GET", key, operation: "read", ok: [200, 404])
        return r.status == 404 ? nil : r.body
    }

    public func openReader(_ key: String) throws -> ObjectReader {
        guard let size = try size(key) else {
            throw DedupError.storage(BackendError("open", location + key, .notFound, detail: "HTTP 404 NoSuchKey"))
        }
        return S3ObjectReader(backend: self, key: key, size: size)
    }

    public func size(_ key: String) throws -> Int64? {
        let r = try request("HEAD", key, operation: "stat", ok: [200, 404])
        guard r.status == 200 else { return nil }
        return r.header("Content-Length").flatMap { Int64($0) } ?? 0
    }

    public func list(_ prefix: String) throws -> [ObjectInfo] {
        var out = [ObjectInfo]()
        try forEachPage(prefix) { out.append(contentsOf: $0) }
        return out.sorted { $0.key < $1.key }
    }

    public func forEachKey(_ prefix: String, _ body: (String) throws -> Void) throws {
        try forEachPage(prefix) { page in for o in page { try body(o.key) } }
    }

    /// ListObjectsV2, a page (up to 1000 keys) at a time, with the keys made
    /// relative to the repository's prefix.
    func forEachPage(_ under: String, _ body: ([ObjectInfo]) throws -> Void) throws {
        var token: String?
        repeat {
            var query: [(name: String, value: String)] = [("list-type", "2"), ("prefix", objectKey(under))]
            if let token { query.append(("continuation-token", token)) }
            let r = try request("GET", nil, operation: "list", query: query)
            let page = ListingPage(xml: r.body)
            try body(page.objects.compactMap { o in
                o.key.hasPrefix(prefix) ? ObjectInfo(key: String(o.key.dropFirst(prefix.count)), size: o.size) : nil
            })
            token = page.truncated ? page.nextToken : nil
            if page.truncated && token == nil {
                throw DedupError.storage(BackendError("list", location + under, .other, detail: "a truncated listing without a continuation token"))
            }
        } while token != nil
    }

    public func delete(_ key: String) throws {
        try request("DELETE", key, operation: "delete", ok: [200, 204, 404])
    }

    public func storageUsage() -> Int64 {
        (try? list("").reduce(0) { $0 + $1.size }) ?? 0
    }

    public func prepareForNewRepository() throws {
        // The bucket: made if absent (an existing one answers 409 or 200).
        let made = try? client.send("PUT", key: nil, operation: "create bucket")
        if let made, ![200, 409].contains(made.status) {
            throw storageError(client.failure(made, operation: "create bucket", key: nil), "create bucket", "")
        }
        let present = try list("")
        // Key objects of an interrupted init are all it may hold.
        guard present.allSatisfy({ $0.key.hasPrefix("keys/") }) else {
            throw DedupError.directoryNotEmpty(path: location)
        }
        for o in present { try delete(o.key) }
    }

    public func removeAbandonedWrites(all: Bool) -> Int { 0 }
}

/// One page of a ListObjectsV2 answer: keys and sizes, and where the next starts.
struct ListingPage {
    var objects: [(key: String, size: Int64)] = []
    var truncated = false
    var nextToken: String?

    init(xml: [UInt8]) {
        let text = String(decoding: xml, as: UTF8.self)
        func value(_ name: String, in s: Substring) -> String? {
            guard let a = s.range(of: "<\(name)>"), let b = s.range(of: "</\(name)>", range: a.upperBound..<s.endIndex)
            else { return nil }
            return Self.unescape(s[a.upperBound..<b.lowerBound])
        }
        var rest = text[...]
        while let a = rest.range(of: "<Contents>"), let b = rest.range(of: "</Contents>", range: a.upperBound..<rest.endIndex) {
            let entry = rest[a.upperBound..<b.lowerBound]
            if let key = value("Key", in: entry) {
                objects.append((key, value("Size", in: entry).flatMap { Int64($0) } ?? 0))
            }
            rest = rest[b.upperBound...]
        }
        truncated = value("IsTruncated", in: text[...]) == "true"
        nextToken = value("NextContinuationToken", in: text[...])
    }

    /// XML's five entities and numeric character references.
    static func unescape(_ s: Substring) -> String {
        guard s.contains("&") else { return String(s) }
        var out = ""
        var i = s.startIndex
        while i < s.endIndex {
            if s[i] == "&", let semi = s[i...].firstIndex(of: ";") {
                let name = s[s.index(after: i)..<semi]
                var scalar: Unicode.Scalar?
                switch name {
                case "amp": scalar = "&"
                case "lt": scalar = "<"
                case "gt": scalar = ">"
                case "quot": scalar = "\""
                case "apos": scalar = "'"
                default:
                    if name.hasPrefix("#x") {
                        scalar = UInt32(name.dropFirst(2), radix: 16).flatMap(Unicode.Scalar.init)
                    } else if name.hasPrefix("#") {
                        scalar = UInt32(name.dropFirst()).flatMap(Unicode.Scalar.init)
                    }
                }
                if let scalar {
                    out.unicodeScalars.append(scalar)
                    i = s.index(after: semi)
                    continue
                }
            }
            out.append(s[i])
            i = s.index(after: i)
        }
        return out
    }
}

/// An object held in memory until its commit, one PUT.
final class S3ObjectWriter: ObjectWriter {
    private let backend: S3Backend
    private(set) var key: String
    private let ifAbsent: Bool
    private var bytes = [UInt8]()
    private var finished = false
    private(set) var bytesWritten: Int64 = 0

    init(backend: S3Backend, key: String, ifAbsent: Bool) {
        self.backend = backend
        self.key = key
        self.ifAbsent = ifAbsent
    }

    private func closed(_ operation: String) -> DedupError {
        .storage(BackendError(operation, backend.location + key, .other, detail: "the writer is closed"))
    }

    func write(_ data: UnsafeRawBufferPointer) throws {
        guard !finished else { throw closed("write") }
        bytes.append(contentsOf: data)
        bytesWritten += Int64(data.count)
    }

    func commit() throws {
        guard !finished else { throw closed("commit") }
        let taken = DedupError.storage(BackendError("create", backend.location + key, .alreadyExists, detail: "the key is taken"))
        if ifAbsent, try backend.size(key) != nil { throw taken }
        do {
            try backend.request(
                "PUT", key, operation: "create", headers: ifAbsent ? [("If-None-Match", "*")] : [], body: bytes)
        } catch let e as DedupError where e.storageFailure == .alreadyExists {
            // Taken between the check and the PUT, or by this very PUT: a try
            // whose answer was lost, sent again (S3Client retries). Ours if the
            // object holds exactly these bytes.
            guard try backend.get(key) == bytes else { throw taken }
        }
        finished = true
        bytes = []
    }

    func retarget(to key: String) throws {
        guard !finished else { throw closed("retarget") }
        self.key = key
    }

    func abort() {
        finished = true
        bytes = []
    }
}

/// Ranged GETs of one object.
final class S3ObjectReader: ObjectReader {
    private let backend: S3Backend
    private let key: String
    let size: Int64

    init(backend: S3Backend, key: String, size: Int64) {
        self.backend = backend
        self.key = key
        self.size = size
    }

    func read(at offset: Int64, into buffer: UnsafeMutableRawBufferPointer) throws {
        guard buffer.count > 0 else { return }
        let end = offset + Int64(buffer.count)
        guard offset >= 0, end <= size else {
            throw DedupError.storage(
                BackendError("read", backend.location + key, .other, detail: "range \(offset)..<\(end) past the end (\(size) bytes)"))
        }
        let r = try backend.request(
            "GET", key, operation: "read", headers: [("Range", "bytes=\(offset)-\(end - 1)")], ok: [200, 206])
        // A server that answers a range with the whole object (200) is cut to it.
        var body = r.body[...]
        if r.status == 200 && r.body.count == Int(size) && Int64(buffer.count) != size {
            body = r.body[Int(offset)..<Int(end)]
        }
        guard body.count == buffer.count else {
            throw DedupError.storage(
                BackendError("read", backend.location + key, .other, detail: "\(body.count) bytes of \(buffer.count) came back"))
        }
        body.withUnsafeBytes { buffer.copyMemory(from: $0) }
    }
}
