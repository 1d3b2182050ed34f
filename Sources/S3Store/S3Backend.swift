import DedupStore
import Foundation
import NIOCore

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
/// Objects larger than `partSize` go up as multipart uploads while they are
/// written (`S3ObjectWriter`); uploads left by a killed process are aborted by
/// `removeAbandonedWrites` (gc: all of them; a backup: those over a day old).
public final class S3Backend: Backend, TrafficCounting, @unchecked Sendable {
    public let client: S3Client
    /// The key prefix, empty or ending in "/".
    public let prefix: String
    public let capabilities = BackendCapabilities(atomicCreateIfAbsent: false, listAfterWriteConsistent: true)
    /// The size of each part of a multipart upload but the last (S3: 5 MiB at
    /// least), and how many are sent at once.
    public let partSize: Int
    public let partsInFlight: Int

    public init(client: S3Client, prefix: String, partSize: Int = 8 << 20, partsInFlight: Int = 3) {
        self.partSize = max(5 << 20, partSize)
        self.partsInFlight = max(1, partsInFlight)
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
    public var traffic: BackendTraffic { client.trafficSoFar }

    /// The largest read-ahead of a sequential reader (its window, and the next
    /// one fetched meanwhile).
    static let readAhead = 8 << 20
    /// An object up to this size is read whole by its first read.
    static let wholeObjectBelow: Int64 = 256 << 10
    /// A read that ends at an object's end fetches this much before it too: a
    /// pack's footer, and with it the trailer (about 60 bytes a chunk).
    static let tailWindow = 32 << 10
    /// The read-ahead windows all readers may hold together: the readers used
    /// longest ago drop theirs first.
    static let readAheadBudget = 48 << 20
    private let readers = NSLock()
    /// Readers by last use, oldest first; weak: a reader its user dropped goes.
    private var recentReaders: [WeakReader] = []
    struct WeakReader { weak var reader: S3ObjectReader? }

    /// Marks `reader` as used now; readers used longer ago drop their windows
    /// while all of them together hold more than the budget.
    func activate(_ reader: S3ObjectReader) {
        let evicted: [S3ObjectReader] = readers.withLock {
            if recentReaders.last?.reader === reader { return [] }
            recentReaders.removeAll { $0.reader == nil || $0.reader === reader }
            recentReaders.append(WeakReader(reader: reader))
            var held = 0
            var out = [S3ObjectReader]()
            for r in recentReaders.reversed().compactMap(\.reader) {
                held += r.heldBytes
                if held > Self.readAheadBudget && r !== reader { out.append(r) }
            }
            return out
        }
        for r in evicted { r.release() }
    }

    func objectKey(_ key: String) -> String { prefix + key }

    /// Ranges a reader said it will read, fetched ahead (`willRead`).
    let prefetcher = S3Prefetcher(budget: 48 << 20, inFlight: 4)

    public func willRead(_ ranges: [ReadRange]) {
        prefetcher.want(ranges) { [self] key, offset, count in try readRange(key, at: offset, count: count) }
    }

    /// A pack's size as the answer to a range of it fetched ahead said: no HEAD.
    private func prefetchedSize(_ key: String) -> Int64? {
        guard key.hasPrefix("packs/"), let size = prefetcher.objectSize(key) else { return nil }
        sizes.withLock { packSizes[key] = size }
        return size
    }

    /// One ranged GET: the bytes, and the object's whole size when the answer
    /// tells it (Content-Range, or a whole object sent for the range).
    func readRange(_ key: String, at offset: Int64, count: Int) throws -> (bytes: [UInt8], objectSize: Int64?) {
        let end = offset + Int64(count)
        let r = try request("GET", key, operation: "read", headers: [("Range", "bytes=\(offset)-\(end - 1)")], ok: [200, 206])
        let total = r.objectSize
        // Some servers (rclone) answer a range with 200 and the range; others
        // with 200 and the whole object, which is cut to it.
        if r.status == 200 && r.body.count != count && r.body.count >= end {
            return (Array(r.body[Int(offset)..<Int(end)]), Int64(r.body.count))
        }
        guard r.body.count == count else {
            throw DedupError.storage(
                BackendError("read", location + key, .other, detail: "\(r.body.count) bytes of \(count) came back"))
        }
        return (r.body, total)
    }

    /// The store's error for an S3 one: its status decides the failure kind.
    func storageError(_ error: Error, _ operation: String, _ key: String) -> DedupError {
        let place = location + key
        guard let e = error as? S3Error else {
            return .storage(BackendError(operation, place, .other, detail: "\(error)"))
        }
        switch e {
        case .transport(_, _, let detail):
            return .storage(BackendError(operation, place, .transient, detail: detail))
        case .tls(_, _, let detail):
            return .storage(BackendError(operation, place, .other, detail:
                "TLS failed: \(detail); for a private endpoint give its CA with --s3-ca-file or AWS_CA_BUNDLE"))
        case .caFile:
            return .storage(BackendError(operation, place, .other, detail: e.description))
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
                + (failure == .denied
                    ? "; check the access key and secret (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, else the credentials file's profile) and the bucket's policy"
                    : "")
            return .storage(BackendError(operation, place, failure, detail: detail))
        }
    }

    /// One request whose status must be one of `ok`; else the store's error.
    @discardableResult
    func request(
        _ method: String, _ key: String?, operation: String, query: [(name: String, value: String)] = [],
        headers: [(name: String, value: String)] = [], body: [UInt8] = [], ok: Set<Int> = [200]
    ) throws -> S3Response {
        try request(method, key, operation: operation, query: query, headers: headers, body: ByteBuffer(bytes: body), ok: ok)
    }

    @discardableResult
    func request(
        _ method: String, _ key: String?, operation: String, query: [(name: String, value: String)] = [],
        headers: [(name: String, value: String)] = [], body: ByteBuffer, ok: Set<Int> = [200]
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
        guard r.status == 404 else { return r.body }
        // A missing bucket is not a missing object: a repository cannot be here.
        if client.failure(r, operation: "read", key: nil).code == "NoSuchBucket" { throw noSuchBucket("read", key) }
        return nil
    }

    /// The error for a bucket that does not exist, naming what to check.
    func noSuchBucket(_ operation: String, _ key: String) -> DedupError {
        let e = client.endpoint
        let endpoint = "\(e.scheme)://\(e.host)\(e.port.map { ":\($0)" } ?? "")"
        return .storage(BackendError(operation, location + key, .notFound, detail:
            "there is no bucket \(client.bucket) at \(endpoint); check its name and the endpoint (--s3-endpoint, AWS_ENDPOINT_URL), or create it with `dbbackup dedup init`"))
    }

    public func openReader(_ key: String) throws -> ObjectReader {
        if !key.hasPrefix("packs/"), let reader = try openWithFirstBytes(key) { return reader }
        guard let size = try knownPackSize(key) ?? prefetchedSize(key) ?? size(key) else {
            throw DedupError.storage(BackendError("open", location + key, .notFound, detail: "HTTP 404 NoSuchKey"))
        }
        return S3ObjectReader(backend: self, key: key, size: size)
    }

    /// An object other than a pack (a chunk list, read from its start) opened by
    /// a GET of its first `wholeObjectBelow` bytes instead of a HEAD: its size
    /// comes with them, and a small one is then read whole. Nil when the answer
    /// does not tell the size (the HEAD then does).
    private func openWithFirstBytes(_ key: String) throws -> S3ObjectReader? {
        let r = try request(
            "GET", key, operation: "read", headers: [("Range", "bytes=0-\(Self.wholeObjectBelow - 1)")],
            ok: [200, 206, 404, 416])
        if r.status == 404 {
            if client.failure(r, operation: "open", key: nil).code == "NoSuchBucket" { throw noSuchBucket("open", key) }
            throw DedupError.storage(BackendError("open", location + key, .notFound, detail: "HTTP 404 NoSuchKey"))
        }
        // Without Content-Range, a 200 shorter than the range is the whole object.
        guard r.status != 416,
            let size = r.objectSize ?? (r.status == 200 && r.body.count < Self.wholeObjectBelow ? Int64(r.body.count) : nil)
        else { return nil }
        let reader = S3ObjectReader(backend: self, key: key, size: size)
        // The first bytes, or the whole object of a server that ignored the range.
        if r.body.count == Int(min(size, Self.wholeObjectBelow)) || r.body.count == Int(size) { reader.hold(r.body) }
        return reader
    }

    public func size(_ key: String) throws -> Int64? {
        let r = try request("HEAD", key, operation: "stat", ok: [200, 404])
        guard r.status == 200 else {
            sizes.withLock { _ = packSizes.removeValue(forKey: key) }
            return nil
        }
        let size = r.header("Content-Length").flatMap { Int64($0) } ?? 0
        if key.hasPrefix("packs/") { sizes.withLock { packSizes[key] = size } }
        return size
    }

    /// Packs are never rewritten, only deleted: a size this process saw for one
    /// holds until then, and a pack opened by it needs no second HEAD (a pack
    /// deleted since fails its first read as missing, as it would after a HEAD).
    private let sizes = NSLock()
    private var packSizes: [String: Int64] = [:]
    private func knownPackSize(_ key: String) -> Int64? { sizes.withLock { packSizes[key] } }

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
        try forEachListing(under) { page, _ in
            try body(page.objects.compactMap { o in
                o.key.hasPrefix(prefix) ? ObjectInfo(key: String(o.key.dropFirst(prefix.count)), size: o.size) : nil
            })
        }
    }

    /// Each page of the listing of `under`, with the Date of its answer (the
    /// server's clock), following continuation tokens to the end.
    private func forEachListing(_ under: String, _ body: (ListingPage, Date?) throws -> Void) throws {
        var token: String?
        repeat {
            var query: [(name: String, value: String)] = [("list-type", "2"), ("prefix", objectKey(under))]
            if let token { query.append(("continuation-token", token)) }
            let r = try request("GET", nil, operation: "list", query: query, ok: [200, 404])
            if r.status == 404 { throw noSuchBucket("list", under) }
            let page = ListingPage(xml: r.body)
            try body(page, r.header("Date").flatMap(Self.httpDate))
            token = page.truncated ? page.nextToken : nil
            if page.truncated && token == nil {
                throw DedupError.storage(BackendError("list", location + under, .other, detail: "a truncated listing without a continuation token"))
            }
        } while token != nil
    }

    /// From the listing: each object's LastModified against the answer's Date,
    /// both the server's clock.
    public func ages(_ under: String) throws -> [String: TimeInterval] {
        var out = [String: TimeInterval]()
        try forEachListing(under) { page, answeredAt in
            let now = answeredAt ?? Date()
            for o in page.objects where o.key.hasPrefix(prefix) {
                guard let modified = o.lastModified.flatMap(Self.isoDate) else { continue }
                out[String(o.key.dropFirst(prefix.count))] = now.timeIntervalSince(modified)
            }
        }
        return out
    }

    public func delete(_ key: String) throws {
        sizes.withLock { _ = packSizes.removeValue(forKey: key) }
        prefetcher.forget(key)
        try request("DELETE", key, operation: "delete", ok: [200, 204, 404])
    }

    public func storageUsage() -> Int64 {
        (try? list("").reduce(0) { $0 + $1.size }) ?? 0
    }

    public func canHoldNewRepository() throws -> Bool {
        // One page is enough to tell: anything beyond an interrupted init's key
        // objects means no.
        var only = true
        var query: [(name: String, value: String)] = [("list-type", "2"), ("max-keys", "100")]
        if !prefix.isEmpty { query.append(("prefix", prefix)) }
        let r = try request("GET", nil, operation: "list", query: query, ok: [200, 404])
        if r.status == 404 { throw noSuchBucket("list", "") }
        for o in ListingPage(xml: r.body).objects where !o.key.dropFirst(prefix.count).hasPrefix("keys/") { only = false }
        return only
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

    /// Copies an object server-side (CopyObject: up to 5 GiB), refused when
    /// `ifAbsent` and the key is taken; a lost answer is judged by the copy's size.
    func copy(from source: String, to key: String, ifAbsent: Bool, expectedSize: Int64) throws {
        let taken = DedupError.storage(BackendError("create", location + key, .alreadyExists, detail: "the key is taken"))
        if ifAbsent, try size(key) != nil { throw taken }
        let from = SigV4Signer.encodePath("/" + client.bucket + "/" + objectKey(source))
        do {
            let r = try request(
                "PUT", key, operation: "create",
                headers: [("x-amz-copy-source", from)] + (ifAbsent ? [("If-None-Match", "*")] : []))
            if String(decoding: r.body, as: UTF8.self).contains("<Error>") {
                throw DedupError.storage(BackendError("create", location + key, .transient, detail: "CopyObject failed: \(XMLText.value("Code", in: r.body) ?? "an error")"))
            }
        } catch let e as DedupError where e.storageFailure == .alreadyExists {
            guard try size(key) == expectedSize else { throw taken }
        }
    }

    /// Multipart uploads under the prefix not completed (a killed writer's):
    /// with `all` every one (gc, which holds the exclusive lock), else those
    /// begun more than a day before the server's own clock says it is now. The
    /// staged objects of such writers (`tmp/`) likewise, by their Last-Modified.
    @discardableResult
    public func removeAbandonedWrites(all: Bool) -> Int {
        var removed = 0
        var marker: (key: String, upload: String)?
        repeat {
            var query: [(name: String, value: String)] = [("uploads", "")]
            if !prefix.isEmpty { query.append(("prefix", prefix)) }
            if let marker { query += [("key-marker", marker.key), ("upload-id-marker", marker.upload)] }
            guard let r = try? request("GET", nil, operation: "list uploads", query: query) else { return removed }
            let now = r.header("Date").flatMap(Self.httpDate) ?? Date()
            let text = String(decoding: r.body, as: UTF8.self)
            for entry in XMLText.elements("Upload", in: text) {
                guard let key = XMLText.value("Key", in: entry), let id = XMLText.value("UploadId", in: entry),
                    key.hasPrefix(prefix)
                else { continue }
                let initiated = XMLText.value("Initiated", in: entry).flatMap(Self.isoDate)
                guard all || initiated.map({ now.timeIntervalSince($0) > Self.abandonedAfter }) == true else { continue }
                let relative = String(key.dropFirst(prefix.count))
                if (try? request("DELETE", relative, operation: "abort", query: [("uploadId", id)], ok: [200, 204, 404])) != nil {
                    removed += 1
                }
            }
            let truncated = XMLText.value("IsTruncated", in: text[...]) == "true"
            let next = (XMLText.value("NextKeyMarker", in: text[...]), XMLText.value("NextUploadIdMarker", in: text[...]))
            marker = truncated ? next.0.flatMap { k in next.1.map { (k, $0) } } : nil
        } while marker != nil
        for o in (try? list("tmp/")) ?? [] where all {
            if (try? delete(o.key)) != nil { removed += 1 }
        }
        return removed
    }

    /// How long an unfinished upload lives before another writer may abort it.
    static let abandonedAfter: TimeInterval = 24 * 3600

    static func httpDate(_ text: String) -> Date? {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "GMT")
        f.dateFormat = "EEE, dd MMM yyyy HH:mm:ss zzz"
        return f.date(from: text)
    }

    static func isoDate(_ text: String) -> Date? {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let d = f.date(from: text) { return d }
        f.formatOptions = [.withInternetDateTime]
        return f.date(from: text)
    }
}

/// One page of a ListObjectsV2 answer: keys, sizes and last-modified times (as
/// sent: read only by `ages`), and where the next page starts.
struct ListingPage {
    var objects: [(key: String, size: Int64, lastModified: String?)] = []
    var truncated = false
    var nextToken: String?

    init(xml: [UInt8]) {
        let text = String(decoding: xml, as: UTF8.self)
        for entry in XMLText.elements("Contents", in: text) {
            guard let key = XMLText.value("Key", in: entry) else { continue }
            objects.append((key, XMLText.value("Size", in: entry).flatMap { Int64($0) } ?? 0,
                            XMLText.value("LastModified", in: entry)))
        }
        truncated = XMLText.value("IsTruncated", in: text[...]) == "true"
        nextToken = XMLText.value("NextContinuationToken", in: text[...])
    }
}

/// A new object: held in memory while it fits in one part, then sent as a
/// multipart upload whose parts go up while the next one fills, a few at once,
/// so that memory stays at about `partSize` times (`partsInFlight` + 1) whatever
/// the object's size. Nothing is visible before `commit` (one PUT, or
/// CompleteMultipartUpload); `abort` aborts the upload.
///
/// A create-if-absent object outside `packs/` may be retargeted after its
/// commit found the key taken (a chunk list whose backup id is taken), but an
/// upload's key is fixed when it starts: such an object's upload goes to a
/// staging key under `tmp/` and is copied to its key at commit, server-side.
/// Packs have random names and are never retargeted: theirs go to their key.
final class S3ObjectWriter: ObjectWriter {
    private let backend: S3Backend
    private(set) var key: String
    private let ifAbsent: Bool
    private var part: ByteBuffer
    private var upload: MultipartUpload?
    private var finished = false
    private(set) var bytesWritten: Int64 = 0

    init(backend: S3Backend, key: String, ifAbsent: Bool) {
        self.backend = backend
        self.key = key
        self.ifAbsent = ifAbsent
        part = ByteBuffer()
    }

    deinit { if !finished { abort() } }

    private func closed(_ operation: String) -> DedupError {
        .storage(BackendError(operation, backend.location + key, .other, detail: "the writer is closed"))
    }

    private var taken: DedupError {
        .storage(BackendError("create", backend.location + key, .alreadyExists, detail: "the key is taken"))
    }

    func write(_ data: UnsafeRawBufferPointer) throws {
        guard !finished else { throw closed("write") }
        var rest = data[...]
        let size = backend.partSize
        while !rest.isEmpty {
            // Small objects grow as they need; the parts of a big one are allocated whole.
            if upload != nil && part.capacity < size { part.reserveCapacity(size) }
            let n = min(rest.count, size - part.readableBytes)
            part.writeBytes(UnsafeRawBufferPointer(rebasing: rest.prefix(n)))
            rest = rest.dropFirst(n)
            bytesWritten += Int64(n)
            if part.readableBytes == size { try sendPart() }
        }
    }

    /// Sends the full part (starting the upload with the first), and begins the next.
    private func sendPart() throws {
        if upload == nil {
            let staged = ifAbsent && !key.hasPrefix("packs/")
            let target = staged ? "tmp/upload-\(UUID().uuidString.lowercased())" : key
            upload = try MultipartUpload(backend: backend, key: target)
        }
        guard let upload else { return }
        let full = part
        part = ByteBuffer()
        try upload.send(full)
    }

    func commit() throws {
        guard !finished else { throw closed("commit") }
        guard let upload else { return try commitInOnePut() }
        if checksFirst, try backend.size(key) != nil { throw taken }
        if part.readableBytes > 0 || upload.partCount == 0 {
            try upload.send(part)
            part = ByteBuffer()
        }
        try upload.complete(expectedSize: bytesWritten, ifAbsent: ifAbsent && upload.key == key)
        if upload.key != key {
            // Staged: copied to the key now taken for it, then the stage removed.
            try backend.copy(from: upload.key, to: key, ifAbsent: ifAbsent, expectedSize: bytesWritten)
            try? backend.delete(upload.key)
        }
        finished = true
    }

    /// Whether to ask if the key is taken before writing it: not for a pack, whose
    /// name is 128 random bits (If-None-Match is still sent).
    private var checksFirst: Bool { ifAbsent && !key.hasPrefix("packs/") }

    private func commitInOnePut() throws {
        if checksFirst, try backend.size(key) != nil { throw taken }
        do {
            try backend.request(
                "PUT", key, operation: "create", headers: ifAbsent ? [("If-None-Match", "*")] : [], body: part)
        } catch let e as DedupError where e.storageFailure == .alreadyExists {
            // Taken between the check and the PUT, or by this very PUT: a try
            // whose answer was lost, sent again (S3Client retries). Ours if the
            // object holds exactly these bytes.
            guard let stored = try backend.get(key), stored.elementsEqual(part.readableBytesView) else { throw taken }
        }
        finished = true
        part = ByteBuffer()
    }

    func retarget(to key: String) throws {
        guard !finished else { throw closed("retarget") }
        if let upload, upload.key == self.key {
            throw DedupError.storage(BackendError(
                "create", backend.location + self.key, .other, detail: "a pack's upload cannot move to another key"))
        }
        self.key = key
    }

    func abort() {
        guard !finished else { return }
        finished = true
        part = ByteBuffer()
        upload?.abort()
    }
}

/// One multipart upload: its parts sent in the background, at most
/// `partsInFlight` at once (`send` waits for a free slot), and completed or
/// aborted.
final class MultipartUpload: @unchecked Sendable {
    let backend: S3Backend
    /// The key relative to the repository's prefix.
    let key: String
    let uploadID: String
    private let slots: DispatchSemaphore
    private let group = DispatchGroup()
    private let lock = NSLock()
    private var etags: [Int: String] = [:]
    private var failure: Error?
    private(set) var partCount = 0

    init(backend: S3Backend, key: String) throws {
        self.backend = backend
        self.key = key
        slots = DispatchSemaphore(value: backend.partsInFlight)
        let r = try backend.request("POST", key, operation: "create", query: [("uploads", "")])
        guard let id = XMLText.value("UploadId", in: r.body) else {
            throw DedupError.storage(BackendError("create", backend.location + key, .other, detail: "CreateMultipartUpload answered no UploadId"))
        }
        uploadID = id
    }

    /// Queues one part (the next number); throws the failure of an earlier part.
    func send(_ bytes: ByteBuffer) throws {
        if let failure = lock.withLock({ failure }) { throw failure }
        partCount += 1
        let number = partCount
        slots.wait()
        group.enter()
        DispatchQueue.global().async { [self] in
            defer {
                slots.signal()
                group.leave()
            }
            do {
                let r = try backend.request(
                    "PUT", key, operation: "write",
                    query: [("partNumber", String(number)), ("uploadId", uploadID)], body: bytes)
                guard let etag = r.header("ETag") else {
                    throw DedupError.storage(BackendError("write", backend.location + key, .other, detail: "part \(number) answered no ETag"))
                }
                lock.withLock { etags[number] = etag }
            } catch {
                lock.withLock { if failure == nil { failure = error } }
            }
        }
    }

    /// Waits for every part, then makes the object visible.
    func complete(expectedSize: Int64, ifAbsent: Bool) throws {
        group.wait()
        if let failure = lock.withLock({ failure }) { throw failure }
        var xml = "<CompleteMultipartUpload>"
        for number in 1...max(1, partCount) {
            guard let etag = lock.withLock({ etags[number] }) else {
                throw DedupError.storage(BackendError("commit", backend.location + key, .other, detail: "part \(number) was not sent"))
            }
            xml += "<Part><PartNumber>\(number)</PartNumber><ETag>\(XMLText.escape(etag))</ETag></Part>"
        }
        xml += "</CompleteMultipartUpload>"
        do {
            let r = try backend.request(
                "POST", key, operation: "commit", query: [("uploadId", uploadID)],
                headers: ifAbsent ? [("If-None-Match", "*")] : [], body: ByteBuffer(string: xml))
            // A 200 can still carry an error (S3 sends it once the body has begun).
            if String(decoding: r.body, as: UTF8.self).contains("<Error>") {
                let code = XMLText.value("Code", in: r.body) ?? "an error"
                throw DedupError.storage(BackendError("commit", backend.location + key, .transient, detail: "CompleteMultipartUpload failed: \(code)"))
            }
        } catch let e as DedupError where e.storageFailure == .notFound || e.storageFailure == .alreadyExists {
            // NoSuchUpload on a retry whose first try took effect, or the key
            // taken by our own lost try: done if the object has exactly our size.
            guard try backend.size(key) == expectedSize else { throw e }
        }
    }

    /// Aborts the upload (its parts are discarded); failures are left to gc.
    func abort() {
        group.wait()
        _ = try? backend.request("DELETE", key, operation: "abort", query: [("uploadId", uploadID)], ok: [200, 204, 404])
    }
}

/// Ranged GETs of one object, with read-ahead for sequential reads: a read
/// that starts where the last one ended (or a little after) fetches more than
/// it asks for, doubling from 1 MiB up to `S3Backend.readAhead`, and the next
/// window is fetched in the background while this one is used. A read
/// elsewhere fetches just its range (a pack's trailer, a sampled chunk). The
/// readers used longest ago drop their windows when all together hold more
/// than `S3Backend.readAheadBudget` (`S3Backend.activate`), so that memory stays
/// bounded however many packs are open, while a restore that alternates between
/// a few packs keeps a window in each.
final class S3ObjectReader: ObjectReader, @unchecked Sendable {
    private let backend: S3Backend
    private let key: String
    let size: Int64
    private let lock = NSLock()
    private var window: [UInt8] = []
    private var windowStart: Int64 = 0
    private var lastEnd: Int64 = -1
    private var ahead = 0
    /// The window after this one, being fetched in the background.
    private var prefetch: S3Prefetcher.Span?

    init(backend: S3Backend, key: String, size: Int64) {
        self.backend = backend
        self.key = key
        self.size = size
    }

    /// Bytes of read-ahead this reader holds or is fetching.
    var heldBytes: Int { lock.withLock { window.count + (prefetch?.count ?? 0) } }

    /// Takes `bytes`, the object's first ones, as its window.
    func hold(_ bytes: [UInt8]) {
        lock.withLock {
            window = bytes
            windowStart = 0
        }
    }

    /// Drops the windows (other readers were used since).
    func release() {
        lock.withLock {
            window = []
            prefetch = nil
        }
    }

    func read(at offset: Int64, into buffer: UnsafeMutableRawBufferPointer) throws {
        guard buffer.count > 0 else { return }
        let end = offset + Int64(buffer.count)
        guard offset >= 0, end <= size else {
            throw DedupError.storage(
                BackendError("read", backend.location + key, .other, detail: "range \(offset)..<\(end) past the end (\(size) bytes)"))
        }
        if backend.prefetcher.take(key, at: offset, into: buffer) {
            lock.withLock { lastEnd = end }
            return
        }
        backend.activate(self)
        try lock.withLock {
            defer { lastEnd = end }
            if copyFromWindow(offset, buffer) { return startPrefetch() }
            if let p = prefetch, offset >= p.start, end <= p.start + Int64(p.count) {
                prefetch = nil
                window = try p.wait().get().bytes
                windowStart = p.start
                if copyFromWindow(offset, buffer) { return startPrefetch() }
            }
            let sequential = lastEnd >= 0 && offset >= lastEnd && offset - lastEnd <= 1 << 20
            ahead = sequential ? min(max(ahead * 2, 1 << 20), S3Backend.readAhead) : 0
            var start = offset
            var count = Int(min(size - offset, Int64(buffer.count + ahead)))
            if !sequential && size <= S3Backend.wholeObjectBelow {
                // A small object (a chunk list, a manifest's pack) in one GET.
                (start, count) = (0, Int(size))
            } else if !sequential && end == size {
                // A footer: the trailer before it comes along (a pack opened).
                start = max(0, size - Int64(max(buffer.count, S3Backend.tailWindow)))
                count = Int(size - start)
            }
            window = try backend.readRange(key, at: start, count: count).bytes
            windowStart = start
            prefetch = nil
            _ = copyFromWindow(offset, buffer)
            startPrefetch()
        }
    }

    /// Copies the range from the window if it holds it all.
    private func copyFromWindow(_ offset: Int64, _ buffer: UnsafeMutableRawBufferPointer) -> Bool {
        let windowEnd = windowStart + Int64(window.count)
        guard offset >= windowStart, offset + Int64(buffer.count) <= windowEnd else { return false }
        let from = Int(offset - windowStart)
        window.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[from..<(from + buffer.count)])) }
        return true
    }

    /// At full read-ahead, the window after this one, fetched in the background.
    private func startPrefetch() {
        guard ahead >= S3Backend.readAhead, prefetch == nil else { return }
        let start = windowStart + Int64(window.count)
        guard start < size else { return }
        let p = S3Prefetcher.Span(key: key, start: start, count: Int(min(size - start, Int64(ahead))))
        prefetch = p
        DispatchQueue.global().async { [backend, key] in
            p.finish(Result { try backend.readRange(key, at: p.start, count: p.count) })
        }
    }

}
