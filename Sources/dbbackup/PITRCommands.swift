import ArgumentParser
import DatabaseDumps
import DedupStore
import Foundation

struct PITR: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pitr",
        abstract: "Point-in-time recovery for PostgreSQL: turn WAL archiving on, see where it stands.",
        subcommands: [PITREnable.self, PITRStatus.self])
}

extension ServerSideCommand {
    /// For this very binary, with the key file's path as the user gave it expanded.
    static func make(_ verb: [String], repository repo: Repository, name: String, store: StoreOptions) throws -> String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return try make(verb, executable: exe, repository: repo, name: name, keyFile: store.keyFile.map(StoreOptions.expand),
                        options: try store.serverSideOptions())
    }
}

struct PITREnable: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "enable",
        abstract: "Turn WAL archiving into the repository on (ALTER SYSTEM; a restart may be needed).",
        discussion: """
        Sets archive_mode = on and archive_command = 'dbbackup wal archive "%p" "%f"
        --dedup-dir <repository>' with ALTER SYSTEM (as a superuser), and wal_level =
        replica when it was minimal, then reloads the configuration. archive_mode
        and wal_level take effect only after a restart of the server: the command
        says when one is needed. The server runs archive_command as its own OS user
        (postgres): that user must be able to write the repository.
        Then take a base backup: dbbackup dedup backup-db --base-backup
        """)

    @OptionGroup var store: StoreOptions
    @OptionGroup var archiveName: ArchiveNameOption
    @OptionGroup var server: ServerOptions

    func run() throws {
        try reportingErrors {
            let repo = try store.open()
            _ = try WALArchive(repository: repo, name: archiveName.name)
            let connection = try PostgresConnection(server.address, database: "postgres")
            let command = try ServerSideCommand.make(
                ["wal", "archive", "\"%p\"", "\"%f\""], repository: repo, name: archiveName.name, store: store)
            let restart = try connection.enableArchiving(command: command)
            Terminal.out("archive_command = '\(command)'")
            if let owner = ownerWarning(connection: connection, repository: repo.path) { Terminal.notice(owner) }
            if restart {
                Terminal.out(
                    "archive_mode (and wal_level) take effect after a restart of the server: systemctl restart postgresql (or pg_ctl restart); then take a base backup: dbbackup dedup backup-db --base-backup"
                )
            } else {
                Terminal.out("WAL archiving is on; take a base backup next: dbbackup dedup backup-db --base-backup")
            }
        }
    }

    /// When the server's data folder is on this machine and belongs to another OS
    /// user than the repository, archive_command (run as that user) cannot write.
    private func ownerWarning(connection: PostgresConnection, repository: String) -> String? {
        guard let dataDir = try? connection.column("SHOW data_directory").first else { return nil }
        var data = stat(), repo = stat()
        guard stat(dataDir, &data) == 0, stat(repository, &repo) == 0, data.st_uid != repo.st_uid else { return nil }
        let user = getpwuid(data.st_uid).map { String(cString: $0.pointee.pw_name) } ?? "uid \(data.st_uid)"
        return
            "the server runs as OS user \(user), who does not own \(repository): archive_command will fail unless \(user) can write there (chown -R \(user) \(repository), and run dbbackup commands on it as \(user))"
    }
}

struct PITRStatus: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Archiver state, last archived WAL, lag, and the oldest time a recovery can reach.")

    @OptionGroup var store: StoreOptions
    @OptionGroup var archiveName: ArchiveNameOption
    @OptionGroup var server: ServerOptions

    @Flag(help: "Print JSON.")
    var json = false

    struct Report: Encodable {
        var archiveMode: String
        var archiveCommand: String
        var archivedCount: Int64?
        var lastArchivedWAL: String?
        var lastArchivedTime: String?
        var failedCount: Int64?
        var lastFailedWAL: String?
        var lastFailedTime: String?
        var currentWAL: String?
        /// Finished segments the server has not archived yet.
        var lagSegments: Int64?
        var archiveName: String
        var archivedFiles: Int
        var newestInRepository: String?
        var gaps: [String]
        var baseBackups: Int
        /// The start of the oldest base backup whose WAL chain reaches the newest archived segment.
        var oldestRecoverableTime: String?
    }

    func run() throws {
        try reportingErrors {
            let repo = try store.open()
            let archive = try WALArchive(repository: repo, name: archiveName.name)
            let connection = try PostgresConnection(server.address, database: "postgres")
            func one(_ sql: String) -> String? {
                (try? connection.column(sql))?.first.flatMap { $0.isEmpty ? nil : $0 }
            }
            let stats =
                (try? connection.column(
                    "SELECT concat_ws('|', archived_count, coalesce(last_archived_wal, ''), coalesce(last_archived_time::text, ''), failed_count, coalesce(last_failed_wal, ''), coalesce(last_failed_time::text, '')) FROM pg_stat_archiver"
                ))?.first?
                .split(separator: "|", omittingEmptySubsequences: false).map(String.init) ?? []
            func field(_ i: Int) -> String? { i < stats.count && !stats[i].isEmpty ? stats[i] : nil }
            let systemIdentifier = one("SELECT system_identifier::text FROM pg_control_system()")
            let files = try archive.files()
            let chain = PITRChain(
                files: files,
                baseBackups: try repo.manifests().filter {
                    $0.backupKind == .basebackup
                        && (systemIdentifier == nil || $0.dump?.systemIdentifier == systemIdentifier)
                })
            var report = Report(
                archiveMode: one("SHOW archive_mode") ?? "?", archiveCommand: one("SHOW archive_command") ?? "",
                archivedCount: field(0).flatMap { Int64($0) }, lastArchivedWAL: field(1), lastArchivedTime: field(2),
                failedCount: field(3).flatMap { Int64($0) }, lastFailedWAL: field(4), lastFailedTime: field(5),
                currentWAL: one("SELECT pg_walfile_name(pg_current_wal_lsn())"), lagSegments: nil,
                archiveName: archive.name, archivedFiles: files.count, newestInRepository: chain.newestSegment,
                gaps: chain.gaps.map(\.missing), baseBackups: chain.baseBackups.count,
                oldestRecoverableTime: chain.oldestRecoverable?.createdAt)
            let segmentSize = Int64(one("SELECT pg_size_bytes(current_setting('wal_segment_size'))") ?? "") ?? 16 << 20
            if let current = report.currentWAL.flatMap(WALFileName.init), let currentPos = current.position,
                let c = WALChain.number(currentPos, segmentSize: segmentSize)
            {
                let last = report.lastArchivedWAL.flatMap(WALFileName.init)?.position.flatMap {
                    WALChain.number($0, segmentSize: segmentSize)
                }
                report.lagSegments = max(0, Int64(c) - Int64(last.map { $0 + 1 } ?? c))
            }
            if json {
                try Terminal.json(report)
                return
            }
            Terminal.out("archive_mode      \(report.archiveMode)")
            Terminal.out("archive_command   \(report.archiveCommand.isEmpty ? "(not set)" : report.archiveCommand)")
            Terminal.out(
                "archiver          \(report.archivedCount ?? 0) archived, last \(report.lastArchivedWAL ?? "none") at \(report.lastArchivedTime ?? "-"); \(report.failedCount ?? 0) failed"
                    + (report.lastFailedWAL.map { ", last \($0) at \(report.lastFailedTime ?? "?")" } ?? ""))
            Terminal.out(
                "current WAL       \(report.currentWAL ?? "?")"
                    + (report.lagSegments.map { ", \($0) finished segment(s) not archived yet" } ?? ""))
            Terminal.out(
                "repository        \(report.archivedFiles) files in archive '\(report.archiveName)', newest segment \(report.newestInRepository ?? "none")"
            )
            for g in report.gaps { Terminal.out("gap               \(g) missing: recovery cannot cross it") }
            Terminal.out("base backups      \(report.baseBackups)")
            Terminal.out(
                "recoverable from  \(report.oldestRecoverableTime ?? "nowhere yet: take a base backup (dbbackup dedup backup-db --base-backup)")"
            )
            if (report.failedCount ?? 0) > 0, let failed = report.lastFailedTime,
                failed > (report.lastArchivedTime ?? "")
            {
                Terminal.notice("the last archive attempt failed; the server's log has archive_command's message")
            }
        }
    }
}
