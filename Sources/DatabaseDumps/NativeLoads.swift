import DedupStore
import Foundation

/// The data members of a native backup loaded on several connections at once,
/// the largest tables first: each worker takes the next member when it is
/// done with one, and the first failure stops the others from starting
/// another (those under way finish) and is thrown.
struct NativeLoads {
    /// One member's rows into its table.
    struct Load {
        var table: NativeContents.Table
        var member: String
        var bytes: Int64
        /// The table's only member, and not an extension's configuration table
        /// (PostgreSQL: loaded with FREEZE into the table truncated in the same
        /// transaction).
        var whole: Bool
    }

    /// What is done so far.
    struct Done {
        var tables: Int
        var bytes: Int64
    }

    let loads: [Load]
    /// Tables without a member (no rows to load): done from the start.
    let emptyTables: Int
    /// The plaintext bytes of every member to load.
    var totalBytes: Int64 { loads.reduce(0) { $0 + $1.bytes } }

    /// Connections worth opening for `jobs`: no more than there are members.
    func workers(upTo jobs: Int) -> Int { min(max(1, jobs), max(1, loads.count)) }

    init(manifest: Manifest, tables: [NativeContents.Table]) {
        emptyTables = tables.filter(\.members.isEmpty).count
        var planned = [Load]()
        for table in tables.sorted(by: { $0.bytes > $1.bytes }) {
            for member in table.members {
                planned.append(Load(table: table, member: member, bytes: (try? manifest.stream(member).size) ?? 0,
                                    whole: table.members.count == 1 && table.extensionConfiguration != true))
            }
        }
        loads = planned
    }

    /// Runs `load` for every member on `workers` threads (the worker's number
    /// picks its connection), telling `progress` after each. At the first
    /// failure, `cancel` is asked to stop every other worker's load under way.
    func run(workers: Int, progress: @escaping (Done) -> Void, cancel: @escaping (Int) -> Void = { _ in },
             load: @escaping (Load, Int) throws -> Void) throws {
        let state = LoadState(total: loads.count, tables: Dictionary(grouping: loads, by: \.table.name).mapValues(\.count),
                              alreadyDone: emptyTables)
        let done = DispatchGroup()
        let loads = loads
        // Each worker has a connection of its own; the rest is read only or locked.
        nonisolated(unsafe) let body = load
        nonisolated(unsafe) let report = progress
        nonisolated(unsafe) let stop = cancel
        let count = max(1, workers)
        for worker in 0..<count {
            DispatchQueue.global().async(group: done) {
                while let k = state.take() {
                    do {
                        try body(loads[k], worker)
                        report(state.finished(loads[k]))
                    } catch {
                        // The first failure stops the loads under way on the
                        // other connections; theirs are not the error told.
                        if state.fail(error) {
                            for other in 0..<count where other != worker { stop(other) }
                        }
                    }
                }
            }
        }
        done.wait()
        if let failure = state.failure { throw failure }
    }
}

/// The work list of the loading workers, and what they have done.
private final class LoadState: @unchecked Sendable {
    private let lock = NSLock()
    private var next = 0
    private let total: Int
    private(set) var failure: Error?
    private var bytes: Int64 = 0
    private var tablesDone = 0
    /// Members not loaded yet, by table.
    private var left: [String: Int]

    init(total: Int, tables: [String: Int], alreadyDone: Int) {
        self.total = total
        left = tables
        tablesDone = alreadyDone
    }

    /// The next load, nil when all are taken or one failed.
    func take() -> Int? {
        lock.withLock {
            guard failure == nil, next < total else { return nil }
            next += 1
            return next - 1
        }
    }

    func finished(_ load: NativeLoads.Load) -> NativeLoads.Done {
        lock.withLock {
            bytes += load.bytes
            left[load.table.name, default: 1] -= 1
            if left[load.table.name] == 0 { tablesDone += 1 }
            return NativeLoads.Done(tables: tablesDone, bytes: bytes)
        }
    }

    /// True for the first failure.
    func fail(_ error: Error) -> Bool {
        lock.withLock {
            guard failure == nil else { return false }
            failure = error
            return true
        }
    }
}

/// Where a native restore stands, for a progress line.
public struct NativeRestoreProgress: Sendable {
    public var tablesDone: Int
    public var tables: Int
    public var bytesDone: Int64
    public var bytes: Int64
    /// pre-data, data, post-data (PostgreSQL); schema, data, triggers (MySQL/MariaDB).
    public var phase: String
}

/// How long each phase of a restore took, in order.
struct PhaseClock {
    private(set) var phases: [(name: String, seconds: Double)] = []
    private var started = Date()

    mutating func end(_ name: String) {
        phases.append((name, Date().timeIntervalSince(started)))
        started = Date()
    }
}

extension Restorer {
    /// Restores a backup (or its member `member`) into the standard input of a
    /// program (pg_restore, psql, mariadb, tar), whose standard output goes to
    /// our stderr. Returns how the program failed, nil when it exited 0.
    public func restore(_ id: String, member: String? = nil, intoProgram arguments: [String]) throws -> String? {
        // A loader that dies early must make our writes fail (EPIPE), not kill us.
        signal(SIGPIPE, SIG_IGN)
        guard let tool = arguments.first, let exe = findExecutable(tool) else {
            throw DatabaseError.toolMissing(tool: arguments.first ?? "?", package: "the database's client tools")
        }
        let (loader, input) = try ChildProcess.feeding(executable: exe, arguments: arguments, stdoutFD: STDERR_FILENO)
        do {
            _ = try restore(id, member: member, to: .descriptor(input, name: tool))
        } catch {
            close(input)
            _ = loader.wait()
            throw error
        }
        close(input)
        return loader.failure()
    }

    /// A restorer of one member of a backup whose shared lock the caller holds
    /// for all of them, on `threads` threads.
    static func forMember(of repository: Repository, threads: Int = 1) -> Restorer {
        let r = Restorer(repository: repository)
        r.callerHoldsLock = true
        r.jobs = threads
        return r
    }
}

extension DatabaseError {
    /// `error`, met loading `table`'s rows, as `loadFailed` says it: the
    /// server's words, or the store's message.
    static func loadFailed(table: String, error: Error) -> DatabaseError {
        let detail: String
        switch error {
        case DatabaseError.queryFailed(_, let d): detail = d
        case let e as DatabaseError: detail = e.message
        case let e as DedupError: detail = e.message
        default: detail = "\(error)"
        }
        return .loadFailed(table: table, detail: detail)
    }
}
