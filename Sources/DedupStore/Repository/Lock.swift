import Foundation

/// Repository locks, as objects under `locks/` so that they work on any backend:
/// backups hold a shared lock; gc and prune a maintenance lock for their whole
/// run, and the exclusive one only for their short steps that delete; index
/// rebuild and delete an exclusive one. A lock records host, pid and start time, so that a
/// lock left by a dead process can be recognised and reported.
public struct LockInfo: Codable, Equatable, Sendable {
    /// What a lock excludes: shared locks each other nothing; a maintenance lock
    /// excludes another maintenance lock and exclusive locks (not backups); an
    /// exclusive lock excludes every other lock. A dbbackup that does not know a
    /// kind reads the lock as unreadable, which it treats as exclusive.
    public enum Kind: String, Codable, Sendable {
        case shared, maintenance, exclusive

        /// True when a lock of this kind and one of `other` cannot be held together.
        public func conflicts(with other: Kind) -> Bool {
            switch (self, other) {
            case (.shared, .shared), (.shared, .maintenance), (.maintenance, .shared): return false
            default: return true
            }
        }
    }
    public var kind: Kind
    public var hostname: String
    public var pid: Int32
    public var startedAt: String
    public var command: String
    /// Seconds since the lock object was last written (taken or refreshed), by
    /// the storage's clock; nil when not known. Not stored: `list` reads it.
    public var age: TimeInterval?

    enum CodingKeys: String, CodingKey { case kind, hostname, pid, startedAt, command }

    public init(kind: Kind, hostname: String, pid: Int32, startedAt: String, command: String, age: TimeInterval? = nil) {
        self.kind = kind
        self.hostname = hostname
        self.pid = pid
        self.startedAt = startedAt
        self.command = command
        self.age = age
    }

    /// How often a holder rewrites its lock object: 5 minutes, or
    /// `DBBACKUP_LOCK_REFRESH_SECONDS`.
    public static var refreshInterval: TimeInterval {
        ProcessInfo.processInfo.environment["DBBACKUP_LOCK_REFRESH_SECONDS"].flatMap(Double.init) ?? 300
    }

    /// A lock not rewritten for this long is stale whatever its host: its holder
    /// is gone or stopped (30 minutes, or `DBBACKUP_LOCK_STALE_SECONDS`). A holder
    /// that could not refresh for this long less one refresh interval stops.
    public static var unrefreshedStaleAfter: TimeInterval {
        ProcessInfo.processInfo.environment["DBBACKUP_LOCK_STALE_SECONDS"].flatMap(Double.init) ?? 1800
    }

    /// How old a lock may grow before it counts as stale whatever its host:
    /// 72 hours, or `DBBACKUP_STALE_LOCK_HOURS`.
    public static var staleAfter: TimeInterval {
        let hours = ProcessInfo.processInfo.environment["DBBACKUP_STALE_LOCK_HOURS"].flatMap(Double.init) ?? 72
        return hours * 3600
    }

    /// True when this lock's process is certainly gone (same host, pid not
    /// running), its holder has not refreshed it for `unrefreshedStaleAfter` by
    /// the storage's clock (a process on another host, or one stopped), or it is
    /// older than `staleAfter` by this host's clock.
    public var isStale: Bool { staleReason != nil }

    /// Why the lock is stale, or nil.
    public var staleReason: String? {
        if let age, age > LockInfo.unrefreshedStaleAfter {
            return age < 120 ? "not refreshed for \(Int(age)) s" : "not refreshed for \(Int(age / 60)) min"
        }
        if let started = Timestamps.parse(startedAt), Date().timeIntervalSince(started) > LockInfo.staleAfter {
            return "older than \(Int(LockInfo.staleAfter / 3600)) h"
        }
        guard hostname == LockInfo.currentHost, kill(pid, 0) != 0 && errno == ESRCH else { return nil }
        return "that process is gone"
    }

    public var summary: String {
        "\(kind.rawValue) lock by '\(command)' (pid \(pid) on \(hostname), since \(startedAt))\(staleReason.map { " [stale: \($0)]" } ?? "")"
    }

    public static var currentHost: String {
        var buf = [UInt8](repeating: 0, count: 256)
        _ = buf.withUnsafeMutableBufferPointer { p in
            p.withMemoryRebound(to: CChar.self) { q -> Int32 in
                guard let base = q.baseAddress else { return -1 }
                return gethostname(base, q.count - 1)
            }
        }
        return String(decoding: buf.prefix(while: { $0 != 0 }), as: UTF8.self)
    }
}

/// A held lock; `release()` removes it (also on deinit).
/// Unchecked Sendable: `held` changes only under `refreshing` once the
/// refresher runs, and the backend is safe to call from several threads.
public final class RepositoryLock: @unchecked Sendable {
    private let backend: Backend
    public let key: String
    private var held = false

    /// Takes a lock of `kind`, or throws `.locked` naming whoever conflicts. With
    /// `wait` > 0 it retries for that long while the conflicting locks belong to
    /// live processes (`onWait` hears about it once): soon at first (gc holds the
    /// exclusive lock for steps of a second or less), then every two seconds. A
    /// stale lock fails at once, since waiting cannot end it. `alongside` is the
    /// key of a lock this process holds already (gc's maintenance lock), which
    /// does not conflict with this one.
    ///
    /// With `publish` false nothing is written (a reader on a read-only file
    /// system): the same conflicts are waited for or refused, and the lock holds
    /// nothing once they are gone.
    public init(backend: Backend, kind: LockInfo.Kind, command: String, wait: TimeInterval = 0,
                alongside: String? = nil, publish: Bool = true, onWait: ((String) -> Void)? = nil) throws {
        self.backend = backend
        let info = LockInfo(kind: kind, hostname: LockInfo.currentHost, pid: getpid(),
                            startedAt: Timestamps.iso8601(Date()), command: command)
        key = Self.newKey(kind)
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        let body = Array(try enc.encode(info))
        let deadline = Date().addingTimeInterval(wait)
        var told = false
        var pause: TimeInterval = 0.1
        while true {
            if publish {
                // Its name is 64 random bits: nobody else writes it, so no
                // create-if-absent (a bucket would ask first, a round trip).
                try backend.put(key, body, ifAbsent: false)
                held = true
                backend.deleteOnInterrupt(key)
            }
            // Publish first, then look: of two racing writers at least one sees the other.
            let conflicts: [LockInfo]
            do {
                // Only the locks that may conflict are read: the kind is in the key.
                conflicts = try RepositoryLock.list(backend) { other in
                    other != key && other != alongside && RepositoryLock.kind(ofKey: other).map(kind.conflicts) != false
                }
                .filter { kind.conflicts(with: $0.info.kind) }
                .map(\.info)
            } catch {
                release()
                throw error
            }
            guard let first = conflicts.first else {
                if publish { startRefreshing(body) }
                return
            }
            release()
            let stale = conflicts.first { $0.isStale }
            if stale == nil, Date() < deadline {
                if !told {
                    onWait?("waiting for the repository lock: \(first.summary)")
                    told = true
                }
                Thread.sleep(forTimeInterval: min(pause, max(0.1, deadline.timeIntervalSinceNow)))
                pause = min(2, pause * 1.5)
                continue
            }
            let hint = stale != nil
                ? "; its holder is gone: remove it with `dbbackup dedup unlock --stale-only`"
                : (wait > 0
                    ? "; gave up after waiting \(Int(wait)) s"
                    : "; try again when it has finished (or pass --lock-wait)")
            throw DedupError.locked("repository \(backend.location) is locked: \((stale ?? first).summary)\(hint)")
        }
    }

    deinit { release() }

    public func release() {
        refreshing.lock()
        defer { refreshing.unlock() }
        if held {
            held = false
            wake.signal()
            try? backend.delete(key)
            backend.keepOnInterrupt(key)
        }
    }

    /// Held while the lock object is rewritten or removed, so that a refresh
    /// never brings back a released lock.
    private let refreshing = NSLock()
    private let wake = DispatchSemaphore(value: 0)

    /// Rewrites the lock object every `refreshInterval` while it is held, so
    /// that others judge it live by the storage's clock. A holder that has not
    /// managed to refresh for `unrefreshedStaleAfter` less one interval ends
    /// the process at once (exit 75), before another process may take the lock
    /// as stale: what it was doing is left as after a crash, which every
    /// command survives.
    private func startRefreshing(_ body: [UInt8]) {
        let interval = LockInfo.refreshInterval
        let limit = LockInfo.unrefreshedStaleAfter - interval
        nonisolated(unsafe) let backend = self.backend
        let key = self.key
        Thread.detachNewThread { [weak self, wake] in
            var lastRefresh = Date()
            while true {
                if wake.wait(timeout: .now() + interval) == .success { return }  // released
                guard let self else { return }
                self.refreshing.lock()
                guard self.held else {
                    self.refreshing.unlock()
                    return
                }
                // Checked before writing as well: a process that was stopped
                // (SIGSTOP, a suspended VM) past the limit may have lost its lock
                // already, and must not bring it back and carry on.
                func stop(_ why: String) -> Never {
                    let message = "dbbackup: error: the repository lock \(backend.location) \(key) was not refreshed for \(Int(Date().timeIntervalSince(lastRefresh))) s (\(why)); stopping before another process takes it as stale\n"
                    FileHandle.standardError.write(Data(message.utf8))
                    _exit(75)
                }
                if Date().timeIntervalSince(lastRefresh) > limit { stop("this process was not running") }
                do {
                    try backend.put(key, body, ifAbsent: false)
                    lastRefresh = Date()
                } catch {
                    if Date().timeIntervalSince(lastRefresh) > limit { stop((error as? DedupError)?.message ?? "\(error)") }
                }
                self.refreshing.unlock()
            }
        }
    }

    /// Every lock in the repository (those whose key `wanted` accepts), with
    /// its age by the storage's clock; unreadable lock objects are reported as
    /// stale exclusive locks.
    public static func list(
        _ backend: Backend, reading wanted: (String) -> Bool = { _ in true }
    ) throws -> [(key: String, info: LockInfo)] {
        // One listing gives the keys and their ages alike.
        let ages = try backend.ages("locks/")
        return try ages.keys.sorted().filter { $0.hasSuffix(".json") && wanted($0) }.map { key in
            guard let bytes = try backend.get(key),
                var info = try? JSONDecoder().decode(LockInfo.self, from: Data(bytes))
            else {
                return (
                    key,
                    LockInfo(kind: .exclusive, hostname: "?", pid: 0, startedAt: "?", command: "unreadable lock \(key)")
                )
            }
            info.age = ages[key]
            return (key, info)
        }
    }

    /// A lock's key: `locks/<kind>-<64 random bits>.json`.
    static func newKey(_ kind: LockInfo.Kind) -> String {
        "locks/\(kind.rawValue)-\(Hex.encode(SecureRandom.bytes(8))).json"
    }

    /// The kind a lock's key names (`newKey`), if it names one.
    static func kind(ofKey key: String) -> LockInfo.Kind? {
        let name = key.dropFirst("locks/".count)
        guard let dash = name.firstIndex(of: "-") else { return nil }
        return LockInfo.Kind(rawValue: String(name[..<dash]))
    }
}
