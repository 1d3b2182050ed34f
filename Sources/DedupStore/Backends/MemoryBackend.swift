import Foundation

/// A repository held in memory: the contract and nothing more, for tests and for
/// checking that the store assumes nothing a bucket would not give. Thread-safe.
public final class MemoryBackend: Backend, @unchecked Sendable {
    public let location: String
    public let capabilities = BackendCapabilities(atomicCreateIfAbsent: true, listAfterWriteConsistent: true)
    private var objects: [String: [UInt8]] = [:]
    private var openWriters = 0
    private var reads: [String: Int] = [:]
    private var listings: [String: Int] = [:]
    private let lock = NSLock()

    public init(name: String = "memory") {
        location = "memory://" + name
    }

    func withLock<T>(_ body: () throws -> T) rethrows -> T {
        lock.lock(); defer { lock.unlock() }
        return try body()
    }

    private func notFound(_ key: String) -> DedupError {
        .storage(BackendError("open", location + "/" + key, .notFound, detail: "No such object"))
    }

    /// When each object was last written.
    private var written: [String: Date] = [:]

    public func ages(_ prefix: String) throws -> [String: TimeInterval] {
        withLock {
            var out = [String: TimeInterval]()
            for (key, at) in written where key.hasPrefix(prefix) && objects[key] != nil { out[key] = -at.timeIntervalSinceNow }
            return out
        }
    }

    public func create(_ key: String, ifAbsent: Bool) throws -> ObjectWriter {
        withLock { openWriters += 1 }
        return MemoryObjectWriter(backend: self, key: key, ifAbsent: ifAbsent)
    }

    /// Makes `bytes` visible under `key`; false when `ifAbsent` and taken.
    func store(_ key: String, _ bytes: [UInt8], ifAbsent: Bool) -> Bool {
        withLock {
            if ifAbsent && objects[key] != nil { return false }
            objects[key] = bytes
            written[key] = Date()
            return true
        }
    }

    func writerEnded() { withLock { openWriters -= 1 } }

    /// Runs `body` on an object's bytes (without copying them); `notFound` if gone.
    func withBytes(_ key: String, range: Range<Int64>? = nil, _ body: ([UInt8]) throws -> Void) throws {
        try withLock {
            reads[key, default: 0] += 1
            if logging, let range {
                readLog.append(.read(ReadRange(key: key, offset: range.lowerBound, count: range.count)))
            }
            guard let bytes = objects[key] else { throw notFound(key) }
            try body(bytes)
        }
    }

    public func get(_ key: String) throws -> [UInt8]? { withLock { objects[key] } }

    public func openReader(_ key: String) throws -> ObjectReader {
        guard let size = withLock({ objects[key]?.count }) else { throw notFound(key) }
        return MemoryObjectReader(backend: self, key: key, size: Int64(size))
    }

    public func list(_ prefix: String) throws -> [ObjectInfo] {
        withLock {
            listings[prefix, default: 0] += 1
            return objects.filter { $0.key.hasPrefix(prefix) }.map { ObjectInfo(key: $0.key, size: Int64($0.value.count)) }
        }.sorted { $0.key < $1.key }
    }

    public func size(_ key: String) throws -> Int64? { withLock { objects[key].map { Int64($0.count) } } }

    public func delete(_ key: String) throws { _ = withLock { objects.removeValue(forKey: key) } }

    public var isReadOnly: Bool { false }

    public func storageUsage() -> Int64 { withLock { objects.values.reduce(0) { $0 + Int64($1.count) } } }

    public var cacheIdentity: String { location }

    public func canHoldNewRepository() throws -> Bool { withLock { objects.keys.allSatisfy { $0.hasPrefix("keys/") } } }

    public func prepareForNewRepository() throws {
        try withLock {
            // Key objects of an interrupted init are all it may hold.
            guard objects.keys.allSatisfy({ $0.hasPrefix("keys/") }) else {
                throw DedupError.directoryNotEmpty(path: location)
            }
            objects.removeAll()
        }
    }

    /// With `logsReads`, the ranges named by `willRead` and the ranged reads, in
    /// the order they came (tests check that a restore names what it reads first).
    public enum ReadEvent: Equatable, Sendable {
        case named(ReadRange)
        case read(ReadRange)
    }
    public var logsReads: Bool {
        get { withLock { logging } }
        set { withLock { logging = newValue } }
    }
    private var logging = false
    public var readEvents: [ReadEvent] { withLock { readLog } }
    private var readLog: [ReadEvent] = []

    public func willRead(_ ranges: [ReadRange]) {
        withLock { if logging { readLog += ranges.map { .named($0) } } }
    }

    /// Writers never outlive their process here: nothing is ever abandoned.
    public func removeAbandonedWrites(all: Bool) -> Int { 0 }

    /// Ranged reads served so far of objects under `prefix` (tests count the
    /// reads a restore makes).
    public func rangedReads(under prefix: String) -> Int {
        withLock { reads.filter { $0.key.hasPrefix(prefix) }.values.reduce(0, +) }
    }

    /// Listings so far of prefixes that start with `prefix` (tests check that a
    /// frequent command finds what it needs by key).
    public func listings(under prefix: String) -> Int {
        withLock { listings.filter { $0.key.hasPrefix(prefix) }.values.reduce(0, +) }
    }

    /// Writers started and not yet committed or aborted (tests check for leaks).
    public var unfinishedWrites: Int { withLock { openWriters } }

    /// Changes an object in place, as damage would (tests only).
    public func damage(_ key: String, _ change: (inout [UInt8]) -> Void) {
        withLock {
            guard var bytes = objects[key] else { return }
            change(&bytes)
            objects[key] = bytes
        }
    }
}

final class MemoryObjectWriter: ObjectWriter {
    private let backend: MemoryBackend
    private(set) var key: String
    private let ifAbsent: Bool
    private var bytes = [UInt8]()
    private var finished = false
    private(set) var bytesWritten: Int64 = 0

    init(backend: MemoryBackend, key: String, ifAbsent: Bool) {
        self.backend = backend
        self.key = key
        self.ifAbsent = ifAbsent
    }

    deinit { abort() }

    private func closed(_ operation: String) -> DedupError {
        .storage(BackendError(operation, backend.location + "/" + key, .other, detail: "the writer is closed"))
    }

    func write(_ data: UnsafeRawBufferPointer) throws {
        guard !finished else { throw closed("write") }
        bytes.append(contentsOf: data)
        bytesWritten += Int64(data.count)
    }

    func commit() throws {
        guard !finished else { throw closed("commit") }
        guard backend.store(key, bytes, ifAbsent: ifAbsent) else {
            throw DedupError.storage(
                BackendError("create", backend.location + "/" + key, .alreadyExists, detail: "File exists"))
        }
        finished = true
        bytes = []
        backend.writerEnded()
    }

    func retarget(to key: String) throws {
        guard !finished else { throw closed("retarget") }
        self.key = key
    }

    func abort() {
        guard !finished else { return }
        finished = true
        bytes = []
        backend.writerEnded()
    }
}

/// Reads ranges of the object as it is at each read (as ranged GETs would), of
/// the size it had when opened.
final class MemoryObjectReader: ObjectReader {
    private let backend: MemoryBackend
    private let key: String
    let size: Int64

    init(backend: MemoryBackend, key: String, size: Int64) {
        self.backend = backend
        self.key = key
        self.size = size
    }

    func read(at offset: Int64, into buffer: UnsafeMutableRawBufferPointer) throws {
        let name = backend.location + "/" + key
        guard offset >= 0, offset <= size - Int64(buffer.count) else { throw DedupError.shortRead(path: name) }
        try backend.withBytes(key, range: offset..<(offset + Int64(buffer.count))) { bytes in
            guard Int(offset) + buffer.count <= bytes.count else { throw DedupError.shortRead(path: name) }
            bytes.withUnsafeBytes { src in
                buffer.copyMemory(
                    from: UnsafeRawBufferPointer(rebasing: src[Int(offset)..<(Int(offset) + buffer.count)]))
            }
        }
    }
}
