import DedupStore
import Foundation

/// A command line PostgreSQL runs through the shell (archive_command,
/// restore_command): a dbbackup binary, the repository, the archive name and,
/// for an encrypted repository, the key file (never the key itself), each path
/// double-quoted for sh.
public enum ServerSideCommand {
    /// `verb` ("wal", "archive", "\"%p\"", ...) run by `executable`; refused for an
    /// encrypted repository without `keyFile` (an absolute path), and for a path
    /// that the shell or PostgreSQL's % escapes would change.
    /// `options` (a bucket's endpoint, credentials file, ...) follow the
    /// repository, each value double-quoted and checked as the paths are.
    public static func make(_ verb: [String], executable exe: String, repository repo: Repository, name: String,
                            keyFile: String?, options: [(option: String, value: String)] = []) throws -> String {
        if repo.config.isEncrypted && keyFile == nil {
            throw DatabaseError.invalidArgument(
                "the repository is encrypted: give --key-file with a key file the server's OS user can read; the server's command names the file, never the key"
            )
        }
        let repository = repo.path
        let key = repo.config.isEncrypted ? keyFile : nil
        for path in [exe, repository] + (key.map { [$0] } ?? []) + options.map(\.value)
        where path.contains(where: { "\"$`\\\n'%".contains($0) }) {
            throw DatabaseError.invalidArgument(
                "\(path) holds a quote, $, `, % or \\; PostgreSQL's command line cannot name it safely: move it")
        }
        var words = ["\"\(exe)\""] + verb + ["--dedup-dir", "\"\(repository)\""]
        for (option, value) in options { words += [option, "\"\(value)\""] }
        if name != WALArchive.defaultName { words += ["--name", name] }
        if let key { words += ["--key-file", "\"\(key)\""] }
        return words.joined(separator: " ")
    }
}
