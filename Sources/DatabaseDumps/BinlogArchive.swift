import DedupStore
import Foundation

/// A binary log file name: `<base>.<number>` (mariadb-bin.000007).
public struct BinlogFileName: Equatable, Comparable, Sendable {
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
/// `<file>.partial` until the finished file replaces it).
public struct BinlogArchive {
    public let log: LogArchive
    public var repository: Repository { log.repository }
    public var name: String { log.name }

    public static let defaultName = "main"
    /// Every binary log starts with these four bytes.
    public static let magic: [UInt8] = [0xFE, 0x62, 0x69, 0x6E]

    public init(repository: Repository, name: String) throws {
        log = try LogArchive(repository: repository, kind: "binlog", name: name, dbType: "mariadb")
    }

    /// Archives the binlog at `path`. A `partial` copy (of the file the server is
    /// still writing) replaces an older partial copy; a finished file replaces
    /// the partial copy of itself.
    public func archive(path: String, file: String, serverID: UInt32?, partial: Bool = false, jobs: Int? = nil) throws -> LogArchive.Outcome {
        guard BinlogFileName(file) != nil else {
            throw DatabaseError.invalidArgument("'\(file)' is not a binary log file name (<base>.<number>)")
        }
        let input = try ArchivedFileInput(path: path)
        guard input.head.starts(with: Self.magic) else {
            throw DatabaseError.archiveConflict(file: file, detail: "\(path) does not start like a binary log")
        }
        let key = partial ? file + ".partial" : file
        if partial, log.contains(key) {
            let old = try repository.loadManifest(log.manifestID(key))
            if old.sha256 == input.sha256 { return .alreadyArchived(old) }
            try repository.deleteManifest(old.id)
        }
        let outcome = try log.archive(input, info: Manifest.ArchiveInfo(file: key, serverID: serverID), jobs: jobs) {
            if let serverID { try checkServer(serverID, file: file) }
        }
        if !partial, log.contains(file + ".partial") {
            try repository.deleteManifest(log.manifestID(file + ".partial"))
        }
        return outcome
    }

    /// Refuses binlogs of another server under this name.
    private func checkServer(_ serverID: UInt32, file: String) throws {
        guard let newest = try log.ids().last else { return }
        guard let known = try repository.loadManifest(newest.id).archive?.serverID, known != serverID else { return }
        throw DatabaseError.archiveConflict(file: file, detail: "it comes from the server with server_id \(serverID), but the archive '\(name)' holds binlogs of server_id \(known); give each server its own --name")
    }

    /// Every archived binlog, in log order; a partial copy comes last.
    public func files() throws -> [Manifest] {
        try log.ids().compactMap { entry -> (BinlogFileName, Bool, String)? in
            let partial = entry.file.hasSuffix(".partial")
            guard let n = BinlogFileName(partial ? String(entry.file.dropLast(8)) : entry.file) else { return nil }
            return (n, partial, entry.id)
        }.sorted { ($0.0, $0.1 ? 1 : 0) < ($1.0, $1.1 ? 1 : 0) }.map { try repository.loadManifest($0.2) }
    }

    /// Numbers missing between the first and the last archived file.
    public static func gaps(in files: [String]) -> [String] {
        let names = files.compactMap { BinlogFileName($0.hasSuffix(".partial") ? String($0.dropLast(8)) : $0) }.sorted()
        var out = [String]()
        for (a, b) in zip(names, names.dropFirst()) where a.base == b.base && b.number > a.number + 1 {
            let width = a.name.count - a.base.count - 1
            func name(_ n: UInt64) -> String {
                let digits = String(n)
                return a.base + "." + String(repeating: "0", count: max(0, width - digits.count)) + digits
            }
            out.append(b.number == a.number + 2 ? name(a.number + 1) : "\(name(a.number + 1)) to \(name(b.number - 1))")
        }
        return out
    }

    /// The archive names with binlogs in the repository.
    public static func names(in repository: Repository) throws -> [String] {
        try LogArchive.names(kind: "binlog", in: repository)
    }
}
