import DedupStore
import Foundation

/// The name of a file PostgreSQL hands to archive_command or asks restore_command
/// for: a WAL segment (`TTTTTTTTXXXXXXXXYYYYYYYY`), a timeline history file
/// (`TTTTTTTT.history`), a backup history file (`<segment>.XXXXXXXX.backup`) or a
/// partial segment (`<segment>.partial`).
public struct WALFileName: Equatable, Sendable {
    public enum Kind: String, Sendable { case segment, history, backupHistory = "backup", partial }

    public let name: String
    public let kind: Kind
    public let timeline: UInt32
    /// The segment's position ("XXXXXXXXYYYYYYYY"), which sorts like the WAL;
    /// nil for history files.
    public let position: String?

    public init?(_ name: String) {
        func hex(_ s: Substring, _ count: Int) -> Bool {
            s.count == count && s.allSatisfy { $0.isHexDigit && !$0.isLowercase }
        }
        let parts = name.split(separator: ".", omittingEmptySubsequences: false)
        guard let head = parts.first, let tli = UInt32(head.prefix(8), radix: 16) else { return nil }
        switch parts.count {
        case 1 where hex(head, 24):
            kind = .segment
        case 2 where parts[1] == "history" && hex(head, 8):
            kind = .history
        case 2 where parts[1] == "partial" && hex(head, 24):
            kind = .partial
        case 3 where parts[2] == "backup" && hex(head, 24) && hex(parts[1], 8):
            kind = .backupHistory
        default:
            return nil
        }
        guard tli > 0 else { return nil }
        self.name = name
        timeline = tli
        position = kind == .history ? nil : String(head.dropFirst(8))
    }
}

/// The first page header of a WAL segment: its timeline, the system identifier
/// of the cluster that wrote it and the segment size (XLogLongPageHeaderData,
/// little-endian).
public struct WALSegmentHeader: Equatable, Sendable {
    public let magic: UInt16
    public let timeline: UInt32
    public let systemIdentifier: UInt64
    public let segmentSize: UInt32
    public let blockSize: UInt32

    /// nil when the bytes do not start with a long page header: a magic of the
    /// XLOG_PAGE_MAGIC family (0xD0xx, 0xD1xx: PostgreSQL 9 to 17 and after),
    /// XLP_LONG_HEADER set, a timeline, a system identifier, and a segment and
    /// block size that PostgreSQL can be built with (powers of two, 1 MiB to
    /// 1 GiB and 1 KiB to 64 KiB).
    public init?(_ bytes: [UInt8]) {
        guard bytes.count >= 40 else { return nil }
        func le<T: FixedWidthInteger>(_ offset: Int, _: T.Type) -> T {
            var v: T = 0
            for i in 0..<MemoryLayout<T>.size { v |= T(bytes[offset + i]) << (8 * i) }
            return v
        }
        func powerOfTwo(_ v: UInt32, _ range: ClosedRange<UInt32>) -> Bool { range.contains(v) && v & (v - 1) == 0 }
        magic = le(0, UInt16.self)
        let info = le(2, UInt16.self)
        let xlpLongHeader: UInt16 = 0x0002
        guard magic >> 8 == 0xD0 || magic >> 8 == 0xD1, info & xlpLongHeader != 0 else { return nil }
        timeline = le(4, UInt32.self)
        systemIdentifier = le(24, UInt64.self)
        segmentSize = le(32, UInt32.self)
        blockSize = le(36, UInt32.self)
        guard timeline > 0, systemIdentifier != 0, powerOfTwo(segmentSize, (1 << 20)...(1 << 30)),
              powerOfTwo(blockSize, (1 << 10)...(1 << 16)) else { return nil }
    }
}

/// PostgreSQL's WAL archive inside the chunk store: one backup of kind `wal` per
/// file, under the id `wal_<archive name>_<file name>`. The archive name tells
/// the WAL of different clusters in one repository apart (default "main").
public struct WALArchive {
    public let log: LogArchive
    public var repository: Repository { log.repository }
    public var name: String { log.name }

    public static let defaultName = "main"

    public init(repository: Repository, name: String) throws {
        log = try LogArchive(repository: repository, kind: .wal, name: name, engine: .postgres)
    }

    public typealias Outcome = LogArchive.Outcome

    /// Archives the file at `path` under `file` (archive_command's %p and %f).
    /// Returns once the file is durable in the repository. The same file again
    /// succeeds; other content under an archived name, or a segment of another
    /// cluster under this archive name, is refused.
    public func archive(path: String, file: String, jobs: Int? = nil, lockWait: TimeInterval = 600) throws -> Outcome {
        guard let walName = WALFileName(file) else {
            throw DatabaseError.invalidArgument("'\(file)' is not a WAL file name (archive_command passes %p then %f)")
        }
        let input = try ArchivedFileInput(path: path)
        var info = Manifest.ArchiveInfo(file: file, timeline: walName.timeline)
        if walName.kind == .segment || walName.kind == .partial {
            // Nothing but a real segment goes in under a segment's name: recovery
            // would stop at a file of zeros, far from where it should.
            guard let header = WALSegmentHeader(input.head) else {
                throw DatabaseError.invalidArgument(
                    "\(path) is not a WAL segment: it does not start with a WAL page header; nothing was archived")
            }
            guard Int(header.segmentSize) == input.size else {
                throw DatabaseError.invalidArgument(
                    "\(path) is not a whole WAL segment: \(input.size) bytes, its header says \(header.segmentSize); nothing was archived"
                )
            }
            info.systemIdentifier = String(header.systemIdentifier)
        }
        return try log.archive(input, info: info, jobs: jobs, lockWait: lockWait) {
            if let id = info.systemIdentifier { try checkCluster(id, file: file) }
        }
    }

    /// The system identifier of the cluster this archive holds: its newest full
    /// or partial segment's (history and backup history files carry none).
    public func systemIdentifier() throws -> String? {
        guard let newest = try log.ids().last(where: { [.segment, .partial].contains(WALFileName($0.file)?.kind) })
        else { return nil }
        return try repository.loadManifest(newest.id).archive?.systemIdentifier
    }

    /// The archive's identity object: which cluster its segments come from. One
    /// read by key per archived segment, however many the archive holds.
    var identityKey: String { "archives/\(log.kind.rawValue)_\(name).json" }

    struct Identity: Codable {
        var kind: String
        var name: String
        var systemIdentifier: String
    }

    /// Refuses a segment of another cluster. The archive's identity object names
    /// its cluster; an archive without one (made by an older dbbackup, or new)
    /// gets it here, from its newest segment, else from this one. When the two
    /// differ, the segments decide: an archive whose segments are all gone
    /// (pruned) takes the new cluster.
    private func checkCluster(_ systemIdentifier: String, file: String) throws {
        let recorded = try repository.backend.get(identityKey).flatMap {
            try? JSONDecoder().decode(Identity.self, from: Data($0)).systemIdentifier
        }
        if recorded == systemIdentifier { return }
        // No identity yet, or another one: what the segments say (one listing).
        if let known = try self.systemIdentifier(), known != systemIdentifier {
            if recorded == nil { try recordIdentity(known, replacing: false) }
            throw DatabaseError.archiveConflict(
                file: file,
                detail:
                    "it comes from the cluster with system identifier \(systemIdentifier), but the archive '\(name)' holds WAL of cluster \(known); give each cluster its own --name"
            )
        }
        try recordIdentity(systemIdentifier, replacing: recorded != nil)
    }

    /// Writes the identity object (create-if-absent unless `replacing`; of two
    /// first segments racing, the one that loses reads the winner's next time).
    private func recordIdentity(_ systemIdentifier: String, replacing: Bool) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        let body = Array(try enc.encode(Identity(kind: log.kind.rawValue, name: name, systemIdentifier: systemIdentifier)))
        do {
            try repository.backend.put(identityKey, body, ifAbsent: !replacing)
        } catch let e as DedupError where e.storageFailure == .alreadyExists {
            return
        }
    }

    /// Restores `file` to `path` (restore_command's %f and %p). False when the
    /// archive does not hold it, which PostgreSQL asks about routinely (the next
    /// timeline's history file, the segment after the last).
    public func restore(file: String, to path: String, jobs: Int? = nil) throws -> Bool {
        guard WALFileName(file) != nil else {
            throw DatabaseError.invalidArgument("'\(file)' is not a WAL file name (restore_command passes %f then %p)")
        }
        return try log.restore(file: file, to: path, jobs: jobs)
    }

    /// Every file archived under this name, in WAL order (history files with
    /// their timeline's first segment), optionally of one timeline.
    public func files(timeline: UInt32? = nil) throws -> [Manifest] {
        try log.ids().compactMap { entry -> Manifest? in
            guard let w = WALFileName(entry.file) else { return nil }
            if let timeline, w.timeline != timeline { return nil }
            return try repository.loadManifest(entry.id)
        }.sorted { Self.order($0) < Self.order($1) }
    }

    /// Sort key: position, then timeline; history files first on their timeline.
    static func order(_ m: Manifest) -> String {
        guard let file = m.archive?.file, let w = WALFileName(file) else { return m.id }
        return (w.position ?? "") + String(format: "%08X", w.timeline) + file
    }

    /// The first archive (by name) whose segments carry the cluster's `systemIdentifier`.
    public static func name(holding systemIdentifier: String, in repository: Repository) throws -> String? {
        try names(in: repository).first {
            try WALArchive(repository: repository, name: $0).systemIdentifier() == systemIdentifier
        }
    }

    /// The archive names with WAL in the repository.
    public static func names(in repository: Repository) throws -> [String] {
        try LogArchive.names(kind: .wal, in: repository)
    }
}

/// What WAL and binlog archives share: one backup per log file, committed under
/// the fixed id `<kind>_<archive name>_<file>`, never replaced by other content.
public struct LogArchive {
    public let repository: Repository
    /// wal or binlog.
    public let kind: BackupKind
    public let name: String
    let engine: DatabaseEngine

    public init(repository: Repository, kind: BackupKind, name: String, engine: DatabaseEngine) throws {
        guard !name.isEmpty, BackupSession.sanitize(name) == name, !name.contains("_") else {
            throw DatabaseError.invalidArgument("archive name '\(name)' must be letters, digits, '.' and '-' (no '_')")
        }
        self.repository = repository
        self.kind = kind
        self.name = name
        self.engine = engine
    }

    public func manifestID(_ file: String) -> String { "\(kind.rawValue)_\(name)_\(file)" }

    public func contains(_ file: String) throws -> Bool {
        try repository.hasManifest(manifestID(file))
    }

    public enum Outcome {
        case archived(Manifest)
        /// The file was archived before with the same content.
        case alreadyArchived(Manifest)
    }

    /// Archives `input` under `info.file`; `precheck` runs before anything is
    /// written (and not when the file is archived already).
    public func archive(
        _ input: ArchivedFileInput, info: Manifest.ArchiveInfo, jobs: Int? = nil, lockWait: TimeInterval = 600,
        precheck: () throws -> Void = {}
    ) throws -> Outcome {
        let file = info.file
        let id = manifestID(file)
        if let outcome = try compareWithArchived(id: id, file: file, input: input) { return outcome }
        try precheck()
        var options = BackupOptions(name: name, source: FileIO.absolute(input.path))
        options.kind = kind
        options.dbType = engine.rawValue
        options.fixedID = id
        options.archive = info
        options.streamSHA256 = true
        options.checkDumpComplete = false
        options.lockWait = lockWait
        // When the server finished the file.
        options.time = input.modified
        let session = try BackupSession(repository: repository)
        if let jobs { session.jobs = jobs }
        do {
            // One read: the manifest's stream digest is that of what was stored.
            return .archived(try session.run(source: try input.source(), options: options))
        } catch DedupError.backupExists {
            // Another run archived it meanwhile: the same rules as above.
            if let outcome = try compareWithArchived(id: id, file: file, input: input) { return outcome }
            throw DedupError.backupExists(id: id)
        }
    }

    /// nil when `file` is not archived yet; `.alreadyArchived` when it is, with
    /// this content; an error when it is, with other content.
    private func compareWithArchived(id: String, file: String, input: ArchivedFileInput) throws -> Outcome? {
        guard try contains(file) else { return nil }
        let existing = try repository.loadManifest(id)
        guard existing.size == Int64(input.size), existing.sha256 == repository.recordedStreamDigest(try input.digest())
        else {
            throw DatabaseError.archiveConflict(
                file: file,
                detail:
                    "the archive '\(name)' holds a different \(file) (\(existing.size) bytes; this one: \(input.size) bytes). Two servers may be archiving under one name: give each its own --name"
            )
        }
        return .alreadyArchived(existing)
    }

    /// Restores `file` to `path`; false when the archive does not hold it.
    public func restore(file: String, to path: String, jobs: Int? = nil) throws -> Bool {
        guard try contains(file) else { return false }
        let restorer = Restorer(repository: repository)
        if let jobs { restorer.jobs = jobs }
        try restorer.restore(manifestID(file), to: .file(path: path, overwrite: true))
        return true
    }

    /// The ids and file names of this archive, in id order.
    public func ids() throws -> [(id: String, file: String)] {
        let prefix = "\(kind.rawValue)_\(name)_"
        return try repository.manifestIDs().filter { $0.hasPrefix(prefix) }.map {
            ($0, String($0.dropFirst(prefix.count)))
        }
    }

    /// The archive names of `kind` in the repository.
    public static func names(kind: BackupKind, in repository: Repository) throws -> [String] {
        let prefix = kind.rawValue + "_"
        return Set(try repository.manifestIDs().compactMap { id -> String? in
            guard id.hasPrefix(prefix) else { return nil }
            let rest = id.dropFirst(prefix.count)
            guard let end = rest.firstIndex(of: "_") else { return nil }
            return String(rest[..<end])
        }).sorted()
    }
}

/// A server's log file (WAL segment, binlog) about to be archived: its size and
/// modification time at open, and its first bytes. The backup reads it once, up
/// to that size (a binlog the server is still writing grows meanwhile); only a
/// file that may be archived already is hashed beforehand, to compare.
public struct ArchivedFileInput {
    public let path: String
    public let size: Int
    /// Its first 64 bytes (or fewer): page and event headers.
    public let head: [UInt8]
    public let modified: Date
    private let fd: Int32
    private let owner: Descriptor

    /// Closes the file when the last copy goes.
    private final class Descriptor {
        let fd: Int32
        init(_ fd: Int32) { self.fd = fd }
        deinit { close(fd) }
    }

    public init(path: String) throws {
        self.path = path
        let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            if errno == ENOENT { throw DedupError.inputNotFound(path: path) }
            throw DedupError.inputUnreadable(path: path, reason: String(cString: strerror(errno)))
        }
        self.fd = fd
        owner = Descriptor(fd)
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG else {
            throw DedupError.inputUnreadable(path: path, reason: "not a regular file")
        }
        modified = Date(timeIntervalSince1970: TimeInterval(st.st_mtim.tv_sec) + TimeInterval(st.st_mtim.tv_nsec) / 1e9)
        size = Int(st.st_size)
        var head = [UInt8](repeating: 0, count: min(64, size))
        try head.withUnsafeMutableBytes { try FileIO.preadAll(fd, $0, at: 0, path: path) }
        self.head = head
    }

    /// SHA-256 of the file's first `size` bytes.
    public func digest() throws -> ChunkID {
        var source = try self.source()
        let hasher = SHA256Hasher()
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let n = try buffer.withUnsafeMutableBytes { try source.read(into: $0) }
            if n == 0 { return hasher.finish() }
            buffer.withUnsafeBytes { hasher.update(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        }
    }

    /// The file from its start, and no further than `size` bytes.
    public func source() throws -> LimitedSource<FileDescriptorSource> {
        guard lseek(fd, 0, SEEK_SET) == 0 else {
            throw DedupError.inputUnreadable(path: path, reason: String(cString: strerror(errno)))
        }
        return LimitedSource(FileDescriptorSource(fd: fd, name: path), limit: size)
    }
}

/// The first `limit` bytes of another source.
public struct LimitedSource<Inner: ByteSource>: ByteSource {
    private var inner: Inner
    private var left: Int

    public init(_ inner: Inner, limit: Int) {
        self.inner = inner
        left = limit
    }

    public mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        guard left > 0, buffer.count > 0 else { return 0 }
        let n = try inner.read(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<min(buffer.count, left)]))
        left -= n
        return n
    }
}

/// Continuity of archived WAL: segments follow one another on each timeline.
public enum WALChain {
    public struct Gap: Equatable, Sendable {
        public let timeline: UInt32
        /// The first and last missing segment's positions ("XXXXXXXXYYYYYYYY").
        public let first: String
        public let last: String
        /// "000000010000000000000005" or "000000010000000000000005 to ...0007".
        public var missing: String {
            let tli = String(format: "%08X", timeline)
            return first == last ? tli + first : "\(tli + first) to \(tli + last)"
        }
    }

    /// The segment number of `position` ("XXXXXXXXYYYYYYYY") for segments of
    /// `segmentSize` bytes, and back.
    public static func number(_ position: String, segmentSize: Int64) -> UInt64? {
        guard position.count == 16, let log = UInt64(position.prefix(8), radix: 16),
            let seg = UInt64(position.suffix(8), radix: 16),
            segmentSize > 0, (UInt64(1) << 32) % UInt64(segmentSize) == 0
        else { return nil }
        return log * ((UInt64(1) << 32) / UInt64(segmentSize)) + seg
    }

    public static func position(_ number: UInt64, segmentSize: Int64) -> String {
        let perLog = (UInt64(1) << 32) / UInt64(max(1, segmentSize))
        return String(format: "%08llX%08llX", number / perLog, number % perLog)
    }

    /// Missing segments between the first and the last archived one of each
    /// timeline. `files` are (file name, size); only full segments count.
    public static func gaps(in files: [(String, Int64)]) -> [Gap] {
        var byTimeline = [UInt32: [(number: UInt64, size: Int64)]]()
        for (file, size) in files {
            guard let w = WALFileName(file), w.kind == .segment, let p = w.position,
                let n = number(p, segmentSize: size)
            else { continue }
            byTimeline[w.timeline, default: []].append((n, size))
        }
        var out = [Gap]()
        for tli in byTimeline.keys.sorted() {
            let segments = (byTimeline[tli] ?? []).sorted { $0.number < $1.number }
            for (a, b) in zip(segments, segments.dropFirst()) where b.number > a.number + 1 {
                out.append(
                    Gap(
                        timeline: tli, first: position(a.number + 1, segmentSize: a.size),
                        last: position(b.number - 1, segmentSize: a.size)))
            }
        }
        return out
    }
}
