import Foundation

/// Every failure the chunk store reports. Each case carries what a user needs to
/// understand what went wrong and what to do next; `message` is one line.
public enum DedupError: Error, Equatable, CustomStringConvertible, LocalizedError {
    case notARepository(path: String)
    case cacheUnavailable(path: String, reason: String)
    case repositoryExists(path: String)
    case directoryNotEmpty(path: String)
    case unsupportedFormat(path: String, found: Int, supported: Int)
    case foreignRepository(path: String, detail: String)
    case inputNotFound(path: String)
    case inputUnreadable(path: String, reason: String)
    case manifestNotFound(idOrPrefix: String)
    case manifestAmbiguous(prefix: String, candidates: [String])
    case manifestCorrupt(id: String, detail: String)
    case manifestTooNew(id: String, version: Int, supported: Int)
    /// A backup of several streams asked for one it does not hold, or for none.
    case memberNotFound(manifest: String, member: String?, members: [String])
    case repositoryTampered(path: String, detail: String)
    case keyFileNotFound(path: String)
    case outputFolderMissing(path: String, folder: String)
    case chunkMissing(chunk: String, manifest: String)
    case chunkCorrupt(chunk: String, pack: String, manifest: String, detail: String)
    case packCorrupt(pack: String, detail: String)
    case streamChecksumMismatch(manifest: String, expected: String, actual: String)
    case io(operation: String, path: String, errno: Int32)
    /// A repository object could not be stored, read, listed or deleted.
    case storage(BackendError)
    case compression(String)
    case shortRead(path: String)
    case unsupportedRepository(path: String, detail: String)
    case index(String)
    case locked(String)
    case incompleteInput(String)
    case inputCommandFailed(command: String, status: String)
    case invalidArgument(String)
    case backupExists(id: String)
    case keyRequired(path: String)
    case wrongKey(path: String)
    case authenticationFailed(String)

    public var description: String { message }
    public var errorDescription: String? { message }

    /// A one-line, user-facing explanation with a hint at the next step.
    public var message: String {
        switch self {
        case .cacheUnavailable(let path, let reason):
            return
                "cannot use the cache folder \(path) (\(reason)); point --cache-dir or DBBACKUP_CACHE_DIR at a writable local folder"
        case .notARepository(let path):
            return
                "\(path) is not a dbbackup repository (no config file); create one with `dbbackup dedup init --dedup-dir \(path)` or point --dedup-dir at an existing repository"
        case .repositoryExists(let path):
            return "a repository already exists at \(path)"
        case .directoryNotEmpty(let path):
            return
                "\(path) exists, is not empty and is not a dbbackup repository; choose an empty or new folder for --dedup-dir"
        case .unsupportedFormat(let path, let found, let supported):
            return
                "repository \(path) has format version \(found), but this dbbackup reads versions up to \(supported); upgrade dbbackup"
        case .foreignRepository(let path, let detail):
            return "\(path) does not hold a dbbackup repository config (\(detail)); check --dedup-dir"
        case .inputNotFound(let path):
            return "input file not found: \(path)"
        case .inputUnreadable(let path, let reason):
            return "cannot read input \(path): \(reason)"
        case .manifestNotFound(let id):
            return "no backup matches '\(id)'; `dbbackup dedup list` shows the backups in this repository"
        case .manifestAmbiguous(let prefix, let candidates):
            let shown = candidates.prefix(5).joined(separator: ", ")
            let more = candidates.count > 5 ? ", ..." : ""
            return "'\(prefix)' matches \(candidates.count) backups (\(shown)\(more)); give more of the id"
        case .manifestCorrupt(let id, let detail):
            return "backup \(id) is damaged: \(detail)"
        case .manifestTooNew(let id, let version, let supported):
            return
                "backup \(id) has manifest format version \(version), but this dbbackup reads versions up to \(supported); upgrade dbbackup to read it"
        case .memberNotFound(let manifest, let member, let members):
            let names =
                members.prefix(10).map { $0.isEmpty ? "(the stream)" : $0 }.joined(separator: ", ")
                + (members.count > 10 ? ", ..." : "")
            if let member {
                return "backup \(manifest) holds no stream named '\(member)' (it holds: \(names))"
            }
            return "backup \(manifest) holds \(members.count) member streams (\(names)); name the one to read"
        case .repositoryTampered(let path, let detail):
            return "repository \(path) was changed outside dbbackup: \(detail); nothing was read or written"
        case .outputFolderMissing(let path, let folder):
            return "cannot write \(path): the folder \(folder) does not exist; create it or choose another path"
        case .keyFileNotFound(let path):
            return "key file \(path) not found; --key-file takes the file that holds the repository's key"
        case .chunkMissing(let chunk, let manifest):
            return
                "backup \(manifest) needs chunk \(chunk), which is in no pack of this repository; run `dbbackup dedup verify` to see every damaged backup"
        case .chunkCorrupt(let chunk, let pack, let manifest, let detail):
            return "chunk \(chunk) in pack \(pack) is corrupt (\(detail)); backup \(manifest) cannot be restored intact"
        case .packCorrupt(let pack, let detail):
            return "pack \(pack) is corrupt: \(detail)"
        case .streamChecksumMismatch(let manifest, let expected, let actual):
            return
                "restored data of backup \(manifest) came out as \(actual), but the backup recorded \(expected); the output was not kept"
        case .io(let operation, let path, let code):
            return "\(operation) \(path) failed: \(String(cString: strerror(code)))"
        case .storage(let e):
            return e.message
        case .compression(let detail):
            return "compression failed: \(detail)"
        case .shortRead(let path):
            return "\(path) ends before the data it should hold (truncated?)"
        case .unsupportedRepository(let path, let detail):
            return "repository \(path) uses \(detail), which this dbbackup does not support; upgrade dbbackup"
        case .index(let detail):
            return "chunk index: \(detail)"
        case .locked(let detail):
            return detail
        case .incompleteInput(let detail):
            return detail
        case .inputCommandFailed(let command, let status):
            return "input command '\(command)' \(status); no backup was committed"
        case .keyRequired(let path):
            return
                "repository \(path) is encrypted: give its key with --key-file <file> (or the passphrase in DBBACKUP_DEDUP_KEY)"
        case .wrongKey(let path):
            return
                "the key given does not open repository \(path) (wrong key file or passphrase); nothing was read or written"
        case .authenticationFailed(let detail):
            return "decryption failed: \(detail)"
        case .backupExists(let id):
            return "a backup with the id \(id) exists already"
        case .invalidArgument(let detail):
            return detail
        }
    }

    /// True when the failure is the disk filling up, so callers can say so plainly.
    public var isNoSpace: Bool {
        if case .io(_, _, let code) = self { return code == ENOSPC || code == EDQUOT }
        return storageFailure == .noSpace
    }
}
