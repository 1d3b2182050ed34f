import Foundation

/// A backend around another that fails on purpose, for crash and failure tests:
/// writes that run out of space, objects whose commit fails, is cut short or is
/// silently lost, slow storage, and a "crash" after which nothing works any more
/// (the test then opens the inner backend afresh, as the next process would).
public final class FaultyBackend: Backend, @unchecked Sendable {
    public enum Fault: Sendable {
        /// Writes fail with `failure` once this many bytes went through.
        case failWrites(afterBytes: Int64, failure: BackendError.Failure)
        /// The commit of the `number`th object created under `prefix` (from 1) fails.
        case failCommit(prefix: String, number: Int, failure: BackendError.Failure)
        /// That object is committed with only its first `keep` bytes.
        case truncate(prefix: String, number: Int, keep: Int64)
        /// That object's commit succeeds but nothing is stored (a lost write).
        case drop(prefix: String, number: Int)
        /// Every commit under `prefix` waits this long first.
        case delayCommits(prefix: String, seconds: Double)
        /// The process "dies" at the commit of that object: it fails, and so does
        /// every operation after it.
        case crash(prefix: String, number: Int)
    }

    public let inner: Backend
    public var location: String { inner.location }
    public var capabilities: BackendCapabilities { inner.capabilities }
    private let faults: [Fault]
    private let lock = NSLock()
    private var written: Int64 = 0
    private var created: [String: Int] = [:]
    private var crashed = false

    public init(_ inner: Backend, faults: [Fault]) {
        self.inner = inner
        self.faults = faults
    }

    /// True once a `crash` fault has fired.
    public var hasCrashed: Bool { lock.lock(); defer { lock.unlock() }; return crashed }

    private func checkAlive(_ operation: String, _ key: String) throws {
        if hasCrashed {
            throw DedupError.storage(
                BackendError(operation, location + "/" + key, .other, detail: "the process crashed (test)"))
        }
    }

    /// The faults that apply to the object just created under `key`.
    private func objectFaults(_ key: String) -> [Fault] {
        lock.lock(); defer { lock.unlock() }
        var matched = [Fault]()
        var counted = Set<String>()
        for fault in faults {
            switch fault {
            case .failCommit(let prefix, let n, _), .truncate(let prefix, let n, _), .drop(let prefix, let n),
                .crash(let prefix, let n):
                guard key.hasPrefix(prefix) else { continue }
                if counted.insert(prefix).inserted { created[prefix, default: 0] += 1 }
                if created[prefix] == n { matched.append(fault) }
            case .delayCommits(let prefix, _):
                if key.hasPrefix(prefix) { matched.append(fault) }
            case .failWrites:
                continue
            }
        }
        return matched
    }

    /// Charges `count` written bytes; throws once a write budget is used up.
    func charge(_ count: Int, key: String) throws {
        try checkAlive("write", key)
        lock.lock()
        written += Int64(count)
        let total = written
        lock.unlock()
        for case .failWrites(let limit, let failure) in faults where total > limit {
            let detail =
                failure == .noSpace ? String(cString: strerror(ENOSPC)) : "injected \(failure.rawValue) failure"
            throw DedupError.storage(BackendError("write", location + "/" + key, failure, detail: detail))
        }
    }

    func crash() { lock.lock(); crashed = true; lock.unlock() }

    public func create(_ key: String, ifAbsent: Bool) throws -> ObjectWriter {
        try checkAlive("create", key)
        return FaultyObjectWriter(
            backend: self, inner: try inner.create(key, ifAbsent: ifAbsent), faults: objectFaults(key))
    }

    public func get(_ key: String) throws -> [UInt8]? { try checkAlive("read", key); return try inner.get(key) }
    public func openReader(_ key: String) throws -> ObjectReader {
        try checkAlive("open", key); return try inner.openReader(key)
    }
    public func list(_ prefix: String) throws -> [ObjectInfo] {
        try checkAlive("list", prefix); return try inner.list(prefix)
    }
    public func keys(_ prefix: String) throws -> [String] {
        try checkAlive("list", prefix); return try inner.keys(prefix)
    }
    public func forEachKey(_ prefix: String, _ body: (String) throws -> Void) throws {
        try checkAlive("list", prefix); try inner.forEachKey(prefix, body)
    }
    public func size(_ key: String) throws -> Int64? { try checkAlive("stat", key); return try inner.size(key) }
    public func willRead(_ ranges: [ReadRange]) { inner.willRead(ranges) }
    public func delete(_ key: String) throws { try checkAlive("delete", key); try inner.delete(key) }
    public func delete(keys: [String]) throws {
        try checkAlive("delete", keys.first ?? ""); try inner.delete(keys: keys)
    }
    public var isReadOnly: Bool { inner.isReadOnly }
    public func storageUsage() -> Int64 { inner.storageUsage() }
    public var cacheIdentity: String { inner.cacheIdentity }
    public func canHoldNewRepository() throws -> Bool { try inner.canHoldNewRepository() }
    public func ages(_ prefix: String) throws -> [String: TimeInterval] { try inner.ages(prefix) }
    public func prepareForNewRepository() throws { try inner.prepareForNewRepository() }
    public func removeAbandonedWrites(all: Bool) -> Int { inner.removeAbandonedWrites(all: all) }
    public func deleteOnInterrupt(_ key: String) { inner.deleteOnInterrupt(key) }
    public func keepOnInterrupt(_ key: String) { inner.keepOnInterrupt(key) }
}

final class FaultyObjectWriter: ObjectWriter {
    private let backend: FaultyBackend
    private let inner: ObjectWriter
    private let faults: [FaultyBackend.Fault]
    private var passed: Int64 = 0

    init(backend: FaultyBackend, inner: ObjectWriter, faults: [FaultyBackend.Fault]) {
        self.backend = backend
        self.inner = inner
        self.faults = faults
    }

    var key: String { inner.key }
    var bytesWritten: Int64 { inner.bytesWritten }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        try backend.charge(bytes.count, key: inner.key)
        var slice = bytes
        for case .truncate(_, _, let keep) in faults {
            let room = max(0, keep - passed)
            slice = UnsafeRawBufferPointer(rebasing: bytes[0..<min(bytes.count, Int(room))])
        }
        passed += Int64(bytes.count)
        if !slice.isEmpty { try inner.write(slice) }
    }

    func commit() throws {
        for fault in faults {
            switch fault {
            case .delayCommits(_, let seconds):
                Thread.sleep(forTimeInterval: seconds)
            case .failCommit(_, _, let failure):
                throw DedupError.storage(
                    BackendError(
                        "create", backend.location + "/" + key, failure, detail: "injected \(failure.rawValue) failure")
                )
            case .drop:
                inner.abort()
                return
            case .crash:
                backend.crash()
                throw DedupError.storage(
                    BackendError("create", backend.location + "/" + key, .other, detail: "the process crashed (test)"))
            case .truncate, .failWrites:
                continue
            }
        }
        try inner.commit()
    }

    func retarget(to key: String) throws { try inner.retarget(to: key) }
    func abort() { inner.abort() }
}
