import Foundation

/// Where the repository's objects live. The format needs nothing more than whole
/// objects written once (visible atomically, at commit), read by range, listed by
/// prefix and deleted, so an S3-compatible store can implement this beside the
/// local folder. Everything that touches the files of a repository is in an
/// implementation; the store above sees keys ("packs/ab/<id>.pack") only.
///
/// Failures are `DedupError.storage(BackendError)`, whose `failure` tells the
/// cases a caller acts on (not found, already exists, no space, denied,
/// transient) apart, whatever the backend.
public protocol Backend: AnyObject {
    /// A human-readable location, for messages (a folder, a URL).
    var location: String { get }
    /// What this backend guarantees beyond the contract.
    var capabilities: BackendCapabilities { get }

    /// Starts a new object under `key`; it becomes visible only at `commit`.
    /// With `ifAbsent`, the commit fails with `alreadyExists` when the key is taken.
    func create(_ key: String, ifAbsent: Bool) throws -> ObjectWriter
    /// Reads a whole (small) object; nil if it does not exist.
    func get(_ key: String) throws -> [UInt8]?
    /// Opens an object for reads by range; `notFound` if it does not exist.
    func openReader(_ key: String) throws -> ObjectReader
    /// Keys under a prefix ("packs/", "manifests/"), with sizes, sorted by key.
    func list(_ prefix: String) throws -> [ObjectInfo]
    /// The same keys without their sizes, when a backend can list those for less
    /// (a local folder: no stat per file).
    func keys(_ prefix: String) throws -> [String]
    /// Calls `body` with each key under a prefix, in no particular order, without
    /// holding the whole listing (a year of WAL is a million keys under
    /// manifests/, about 100 bytes each in an array). `body` must not delete keys.
    func forEachKey(_ prefix: String, _ body: (String) throws -> Void) throws
    /// The size of an object, or nil if it does not exist.
    func size(_ key: String) throws -> Int64?
    /// How long ago each object under a prefix was last written, by the
    /// storage's own clock (a bucket's server: its Last-Modified against the Date
    /// of its answer), so that hosts whose clocks differ judge alike. For the
    /// few objects of `locks/`.
    func ages(_ prefix: String) throws -> [String: TimeInterval]
    /// Deletes an object; an absent one is no error.
    func delete(_ key: String) throws
    /// Deletes objects (absent ones are no error), for less than one `delete` each
    /// where a backend can (a local folder: each folder synced once, not once per
    /// object; gc's merge of a year of WAL deletes 525,600 packs).
    func delete(keys: [String]) throws

    /// True when the backend can be read but not written (a read-only mount).
    var isReadOnly: Bool { get }
    /// Bytes the repository takes in its storage.
    func storageUsage() -> Int64
    /// A stable name of this place for the local cache's folder name (a local
    /// folder's real path, a bucket's URL).
    var cacheIdentity: String { get }
    /// True when a repository may be created here: the place is absent or empty,
    /// or holds only what an interrupted `init` leaves. A failure to look (a
    /// refused signature, a missing bucket) is thrown, not taken for "no".
    func canHoldNewRepository() throws -> Bool
    /// Makes an absent or empty place ready to become a repository; fails with
    /// `directoryNotEmpty` when it holds anything else. Objects a previous,
    /// interrupted `init` left (key objects, temporaries) are removed.
    func prepareForNewRepository() throws
    /// Removes objects abandoned by writers that died: with `all`, every
    /// unfinished write (nothing else may be writing: gc's exclusive lock), else
    /// those whose process is certainly gone. Returns how many.
    @discardableResult
    func removeAbandonedWrites(all: Bool) -> Int
    /// Asks that `key` be deleted if this process is interrupted (SIGINT, SIGTERM)
    /// while it holds it: lock objects. Backends that cannot do that in a signal
    /// handler ignore it (the lock is then reported stale, as after a kill -9).
    func deleteOnInterrupt(_ key: String)
    func keepOnInterrupt(_ key: String)
    /// Tells the backend which ranges are about to be read, in the order they
    /// will be (a restore's next entries). One that pays a round trip a request
    /// (a bucket) starts fetching them, several at once, so that the reads find
    /// them there; the others ignore it. Never needed for correctness: a range
    /// not fetched ahead is read as always.
    func willRead(_ ranges: [ReadRange])
}

/// A range of an object a reader is about to read.
public struct ReadRange: Equatable, Sendable {
    public var key: String
    public var offset: Int64
    public var count: Int
    public init(key: String, offset: Int64, count: Int) {
        self.key = key
        self.offset = offset
        self.count = count
    }
}

/// Requests a remote backend made and the bytes it moved.
public struct BackendTraffic: Equatable, Sendable {
    public var requests = 0
    public var bytesSent: Int64 = 0
    public var bytesReceived: Int64 = 0
    public init() {}
}

/// A backend that counts its requests (a bucket's): commands report them.
public protocol TrafficCounting {
    var traffic: BackendTraffic { get }
}

/// What a backend guarantees beyond the contract.
public struct BackendCapabilities: Equatable, Sendable {
    /// Of two writers committing one key with `ifAbsent`, exactly one succeeds.
    public var atomicCreateIfAbsent: Bool
    /// A committed object shows in the next listing.
    public var listAfterWriteConsistent: Bool

    public init(atomicCreateIfAbsent: Bool, listAfterWriteConsistent: Bool) {
        self.atomicCreateIfAbsent = atomicCreateIfAbsent
        self.listAfterWriteConsistent = listAfterWriteConsistent
    }
}

/// A failed storage operation: what was attempted, on which object, and which
/// case it is.
public struct BackendError: Error, Equatable, Sendable {
    public enum Failure: String, Equatable, Sendable {
        case notFound, alreadyExists, noSpace, denied, transient, other
    }
    /// What was attempted: "create", "write", "read", "list", "delete", ...
    public var operation: String
    /// The object's full location (a path, a URL).
    public var location: String
    public var failure: Failure
    /// The backend's own words (strerror, an HTTP status).
    public var detail: String

    public init(_ operation: String, _ location: String, _ failure: Failure, detail: String) {
        self.operation = operation
        self.location = location
        self.failure = failure
        self.detail = detail
    }

    /// From a POSIX errno.
    public init(_ operation: String, _ location: String, errno code: Int32) {
        let failure: Failure
        switch code {
        case ENOENT: failure = .notFound
        case EEXIST: failure = .alreadyExists
        case ENOSPC, EDQUOT: failure = .noSpace
        case EACCES, EPERM, EROFS: failure = .denied
        case EINTR, EAGAIN, EIO: failure = .transient
        default: failure = .other
        }
        self.init(operation, location, failure, detail: String(cString: strerror(code)))
    }

    public var message: String { "\(operation) \(location) failed: \(detail)" }
}

extension DedupError {
    /// A storage failure of `failure`'s kind (nil for other errors).
    public var storageFailure: BackendError.Failure? {
        if case .storage(let e) = self { return e.failure }
        return nil
    }
}

public struct ObjectInfo: Equatable, Sendable {
    public var key: String
    public var size: Int64

    public init(key: String, size: Int64) {
        self.key = key
        self.size = size
    }
}

/// A new object being written under its key. Either `commit` or `abort` ends it.
public protocol ObjectWriter: AnyObject {
    /// The key the object becomes visible under.
    var key: String { get }
    /// Bytes written so far.
    var bytesWritten: Int64 { get }
    func write(_ bytes: UnsafeRawBufferPointer) throws
    /// Makes the object durable and visible under `key`. A create-if-absent
    /// writer whose key is taken throws `alreadyExists` and stays open: it may be
    /// `retarget`ed to another key and committed again, or aborted.
    func commit() throws
    /// Moves a writer whose commit found its key taken to another key (the bytes
    /// written stay; nothing is written again).
    func retarget(to key: String) throws
    /// Discards the object; safe to call more than once, and after `commit`.
    func abort()
}

/// Random-access reads of one stored object.
public protocol ObjectReader: AnyObject {
    var size: Int64 { get }
    func read(at offset: Int64, into buffer: UnsafeMutableRawBufferPointer) throws
}

extension Backend {
    /// Writes a small object in one step; with `ifAbsent`, fails with
    /// `alreadyExists` if the key is taken.
    public func put(_ key: String, _ bytes: [UInt8], ifAbsent: Bool) throws {
        let w = try create(key, ifAbsent: ifAbsent)
        do {
            try w.write(bytes)
            try w.commit()
        } catch {
            w.abort()
            throw error
        }
    }

    /// True when an object exists under `key`.
    public func exists(_ key: String) throws -> Bool { try size(key) != nil }

    public func keys(_ prefix: String) throws -> [String] { try list(prefix).map(\.key) }

    public func forEachKey(_ prefix: String, _ body: (String) throws -> Void) throws {
        for key in try keys(prefix) { try body(key) }
    }

    public func delete(keys: [String]) throws {
        for key in keys { try delete(key) }
    }

    public func deleteOnInterrupt(_ key: String) {}
    public func keepOnInterrupt(_ key: String) {}
    public func willRead(_ ranges: [ReadRange]) {}
}

extension ObjectWriter {
    public func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write($0) }
    }
}

extension ObjectReader {
    public func read(at offset: Int64, count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        try out.withUnsafeMutableBytes { try read(at: offset, into: $0) }
        return out
    }
}

/// Where a repository is, as a user names it: today a local folder.
public enum RepositoryLocation: Equatable, Sendable {
    case local(path: String)

    /// Reads a `--dedup-dir` value (an absolute path by then).
    public init(_ text: String) {
        self = .local(path: text)
    }

    /// The backend that serves this location, with the fault hooks of
    /// `FaultInjection` around it when they are set (tests only).
    public func makeBackend() -> Backend {
        let backend: Backend
        switch self {
        case .local(let path): backend = LocalBackend(root: path)
        }
        return FaultInjection.wrap(backend)
    }

    public var description: String {
        switch self {
        case .local(let path): return path
        }
    }
}
