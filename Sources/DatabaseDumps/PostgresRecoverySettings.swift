import DedupStore
import Foundation

/// What `restore pitr` appends to a restored cluster's postgresql.auto.conf: WAL
/// from the archive through `restoreCommand`, up to `target` (then promote) or the
/// end of the archive, on the newest timeline, and archive_mode off, so that the
/// copy does not archive into the original's WAL archive.
public struct PostgresRecoverySettings: Sendable, Equatable {
    public var baseBackup: String
    public var archive: String
    public var repository: String
    public var restoreCommand: String
    public var target: Date?

    public init(baseBackup: String, archive: String, repository: String, restoreCommand: String, target: Date?) {
        self.baseBackup = baseBackup
        self.archive = archive
        self.repository = repository
        self.restoreCommand = restoreCommand
        self.target = target
    }

    /// The lines to append, with a comment saying they were added at `now`.
    public func text(at now: Date) -> String {
        func literal(_ s: String) -> String { "'" + s.replacingOccurrences(of: "'", with: "''") + "'" }
        var settings = [
            "",
            "# Added by dbbackup restore pitr at \(Timestamps.iso8601(now)): recovery from base backup \(baseBackup)",
            "# and the WAL archive '\(archive)' of \(repository).",
            "restore_command = \(literal(restoreCommand))",
        ]
        if let target {
            settings += [
                "recovery_target_time = \(literal(PostgresTime.utc(target)))", "recovery_target_inclusive = on",
                "recovery_target_action = 'promote'",
            ]
        }
        settings += ["recovery_target_timeline = 'latest'",
                     "# This copy must not archive into the original's WAL archive; if it becomes the",
                     "# primary, run dbbackup pitr enable (with a --name of its own) and take a base backup.",
                     "archive_mode = 'off'", ""]
        return settings.joined(separator: "\n")
    }
}
