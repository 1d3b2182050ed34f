import DedupStore
import Foundation

/// A binary log file name: `<base>.<number>` (mariadb-bin.000007).
public struct BinlogFileName: Hashable, Comparable, Sendable {
    public let name: String
    public let base: String
    public let number: UInt64

    public init?(_ name: String) {
        guard let dot = name.lastIndex(of: "."), dot != name.startIndex else { return nil }
        let digits = name[name.index(after: dot)...]
        guard digits.count >= 6, digits.allSatisfy(\.isASCII), let n = UInt64(digits) else { return nil }
        let base = String(name[..<dot])
        guard !base.contains("/"), !base.hasPrefix(".") else { return nil }
        self.name = name
        self.base = base
        number = n
    }

    public static func < (a: Self, b: Self) -> Bool { (a.base, a.number) < (b.base, b.number) }
}

/// MySQL/MariaDB binary logs inside the chunk store: one backup of kind `binlog`
/// per file, id `binlog_<archive name>_<file>`. Only finished files are archived
/// (the one the server is writing is skipped unless asked for, and then kept as
/// `<file>.partial-<bytes>` until a longer copy or the finished file replaces it).
public struct BinlogArchive {
    public let log: LogArchive
    public var repository: Repository { log.repository }
    public var name: String { log.name }

    public static let defaultName = "main"
    /// Every binary log starts with these four bytes.
    public static let magic: [UInt8] = [0xFE, 0x62, 0x69, 0x6E]

    public init(repository: Repository, name: String) throws {
        log = try LogArchive(repository: repository, kind: .binlog, name: name, engine: .mariadb)
    }

    /// The binlog an archived name stands for, and for a partial copy its length.
    public static func split(_ archived: String) -> (name: BinlogFileName, partialBytes: Int?)? {
        if let r = archived.range(of: ".partial-", options: .backwards) {
            guard let bytes = Int(archived[r.upperBound...]), let n = BinlogFileName(String(archived[..<r.lowerBound]))
            else { return nil }
            return (n, bytes)
        }
        return BinlogFileName(archived).map { ($0, nil) }
    }

    /// Archives the binlog at `path`. A `partial` copy (of the file the server is
    /// still writing: its first bytes, as many as there are now) is committed
    /// before older partial copies of it are deleted; the finished file replaces
    /// them all. The archive's state object (`archives/binlog_<name>.json`: its
    /// server, newest finished file, partial copies) is read and written by key,
    /// so archiving costs no listing of manifests/, however many the repository
    /// holds; an archive without one (made by an older dbbackup) gets it from one
    /// listing.
    public func archive(
        path: String, file: String, serverID: UInt32?, partial: Bool = false, jobs: Int? = nil
    ) throws -> LogArchive.Outcome {
        guard BinlogFileName(file) != nil else {
            throw DatabaseError.invalidArgument("'\(file)' is not a binary log file name (<base>.<number>)")
        }
        let input = try ArchivedFileInput(path: path)
        guard input.head.starts(with: Self.magic) else {
            throw DatabaseError.archiveConflict(file: file, detail: "\(path) does not start like a binary log")
        }
        var state = try self.state()
        state.partials = try state.partials.filter { try repository.hasManifest($0) }
        let olderPartials = state.partials.filter { id in
            guard let s = Self.split(String(id.dropFirst(log.manifestID("").count))), s.name.name == file,
                  let bytes = s.partialBytes
            else { return false }
            return !partial || bytes != input.size
        }
        let key = partial ? "\(file).partial-\(input.size)" : file
        let outcome = try log.archive(input, info: Manifest.ArchiveInfo(file: key, serverID: serverID), jobs: jobs) {
            if let serverID { try checkServer(serverID, file: file, state: &state) }
        }
        // The new copy is committed: the older partial ones can go.
        try repository.deleteManifests(olderPartials)
        state.partials.removeAll { olderPartials.contains($0) }
        if partial {
            if !state.partials.contains(log.manifestID(key)) { state.partials.append(log.manifestID(key)) }
        } else if let name = BinlogFileName(file), state.newest.flatMap(BinlogFileName.init).map({ $0 < name }) ?? true {
            state.newest = file
        }
        try saveState(state)
        return outcome
    }

    /// What the archive keeps about itself, beside its binlogs: hints, each
    /// checked against the manifests where it matters (a lost update leaves a
    /// partial copy behind, never fewer copies).
    struct State: Codable, Equatable {
        var kind = "binlog"
        var name: String
        /// The server whose binlogs the archive holds.
        var serverID: UInt32?
        /// The newest finished binlog archived.
        var newest: String?
        /// Ids of the partial copies kept.
        var partials: [String] = []
    }

    var stateKey: String { "archives/binlog_\(name).json" }

    /// The state object, or one made from the manifests (one listing) when the
    /// archive has none yet.
    func state() throws -> State {
        if let bytes = try repository.backend.get(stateKey),
           let state = try? JSONDecoder().decode(State.self, from: Data(bytes)), state.name == name {
            return state
        }
        var state = State(name: name)
        let entries = try log.ids()
        for entry in entries {
            guard let s = Self.split(entry.file) else { continue }
            if s.partialBytes != nil {
                state.partials.append(entry.id)
            } else if state.newest.flatMap(BinlogFileName.init).map({ $0 < s.name }) ?? true {
                state.newest = s.name.name
            }
        }
        if let newest = entries.last { state.serverID = try repository.loadManifest(newest.id).archive?.serverID }
        return state
    }

    private func saveState(_ state: State) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        try repository.backend.put(stateKey, Array(try enc.encode(state)), ifAbsent: false)
    }

    /// The newest finished binlog archived (for the purged-gap check), by key.
    public func newestFinished() throws -> BinlogFileName? {
        let state = try self.state()
        if let newest = state.newest, try log.contains(newest) { return BinlogFileName(newest) }
        // Gone (pruned, deleted): what the manifests say.
        return try copies().last(where: { !$0.partial })?.name
    }

    /// Refuses binlogs of another server under this name. The state names the
    /// server; when it names another, the binlogs decide (an archive whose
    /// binlogs are all gone takes the new server).
    private func checkServer(_ serverID: UInt32, file: String, state: inout State) throws {
        if state.serverID == serverID { return }
        if state.serverID != nil, let newest = try log.ids().last,
           let known = try repository.loadManifest(newest.id).archive?.serverID, known != serverID {
            throw DatabaseError.archiveConflict(
                file: file,
                detail:
                    "it comes from the server with server_id \(serverID), but the archive '\(name)' holds binlogs of server_id \(known); give each server its own --name"
            )
        }
        state.serverID = serverID
    }

    /// Every archived binlog, in log order; partial copies after the finished
    /// file of the same number, longest last.
    public func files() throws -> [Manifest] {
        try log.ids().compactMap { entry -> (BinlogFileName, Int, String)? in
            guard let s = Self.split(entry.file) else { return nil }
            return (s.name, s.partialBytes.map { $0 + 1 } ?? 0, entry.id)
        }.sorted { ($0.0, $0.1) < ($1.0, $1.1) }.map { try repository.loadManifest($0.2) }
    }

    /// One archived copy of a binlog.
    public struct Copy {
        public let name: BinlogFileName
        public let manifest: Manifest
        /// Only its beginning (`--include-current`).
        public let partial: Bool
    }

    /// One copy per binlog, in log order: the finished file, else its longest
    /// partial copy.
    public func copies() throws -> [Copy] {
        var best = [BinlogFileName: Copy]()
        // files() puts partial copies after the finished file, longest last.
        for m in try files() {
            guard let s = m.archive.flatMap({ Self.split($0.file) }), best[s.name]?.partial != false else { continue }
            best[s.name] = Copy(name: s.name, manifest: m, partial: s.partialBytes != nil)
        }
        return best.values.sorted { $0.name < $1.name }
    }

    /// Binlogs purged from the server before they were archived: the newest
    /// archived one and the oldest the server has, when numbers lie between them.
    public static func purgedGap(
        newestArchived: BinlogFileName?, oldestOnServer: BinlogFileName?
    ) -> (after: String, before: String)? {
        guard let a = newestArchived, let b = oldestOnServer, a.base == b.base, b.number > a.number,
            b.number - a.number > 1
        else { return nil }
        return (a.name, b.name)
    }

    /// Numbers missing between the first and the last archived file.
    public static func gaps(in files: [String]) -> [String] {
        let names = Set(files.compactMap { split($0)?.name }).sorted()
        var out = [String]()
        for (a, b) in zip(names, names.dropFirst()) where a.base == b.base && b.number - a.number > 1 {
            out.append(
                b.number - a.number == 2
                    ? a.sibling(a.number + 1) : "\(a.sibling(a.number + 1)) to \(a.sibling(b.number - 1))")
        }
        return out
    }

    /// The archive names with binlogs in the repository.
    public static func names(in repository: Repository) throws -> [String] {
        try LogArchive.names(kind: .binlog, in: repository)
    }
}

extension BinlogFileName {
    /// The file of the same series with another number, zero-padded alike.
    public func sibling(_ n: UInt64) -> String {
        let width = name.count - base.count - 1
        let digits = String(n)
        return base + "." + String(repeating: "0", count: max(0, width - digits.count)) + digits
    }
}

extension BinlogArchive {
    /// The binlog archive of a dump's server: `given` when it is not the default
    /// name, else the one whose files carry the dump's server_id (refused when
    /// several do: server ids are 1 on many servers), else `given`.
    public static func name(for dump: Manifest.DumpInfo, given: String, in repo: Repository) throws -> String {
        guard let id = dump.serverID, given == defaultName else { return given }
        let matching = try names(in: repo).filter {
            try BinlogArchive(repository: repo, name: $0).files().last?.archive?.serverID == id
        }
        guard matching.count <= 1 else {
            throw DatabaseError.invalidArgument(
                "the binlog archives \(matching.joined(separator: ", ")) all hold binlogs of server_id \(id); say which with --name"
            )
        }
        return matching.first ?? given
    }

    /// The archived binlogs from `startFile` on, in order and without a gap. A
    /// partial copy (the longest) may only end the chain: a finished file after
    /// it means its end was never archived.
    public func replayChain(from startFile: String) throws -> [Manifest] {
        guard let start = BinlogFileName(startFile) else {
            throw DatabaseError.invalidArgument("the dump's binlog '\(startFile)' is not a binlog file name")
        }
        let copies = try copies().filter { $0.name.base == start.base && $0.name.number >= start.number }
        var chain = [Manifest]()
        var expected = start.number
        for copy in copies {
            guard copy.name.number == expected else {
                throw DatabaseError.invalidArgument(
                    "the binlog archive '\(name)' lacks \(start.sibling(expected)) (run dbbackup binlog validate); recovery cannot cross the gap"
                )
            }
            if copy.partial && copy.name != copies.last?.name {
                throw DatabaseError.invalidArgument(
                    "the binlog archive '\(name)' holds only the beginning of \(copy.name.name) (a partial copy) but later binlogs too: its end was never archived, and recovery cannot cross it"
                )
            }
            chain.append(copy.manifest)
            expected += 1
        }
        guard !chain.isEmpty else {
            throw DatabaseError.invalidArgument(
                "the binlog archive '\(name)' does not hold \(startFile), where the dump starts; run dbbackup binlog archive first"
            )
        }
        return chain
    }
}
