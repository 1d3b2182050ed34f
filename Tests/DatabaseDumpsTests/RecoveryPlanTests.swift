import DatabaseDumps
import DedupStore
import Foundation
import Testing

/// What point-in-time recovery computes before it touches a server or a folder.
@Suite struct RecoveryPlanTests {
    let now = Date(timeIntervalSince1970: 1_795_000_000)

    @Test func recoverySettingsStopAtTheTargetAndArchiveNothing() {
        let target = Date(timeIntervalSince1970: 1_795_003_600.25)
        let text = PostgresRecoverySettings(baseBackup: "2026-11-21_020000_basebackup", archive: "main", repository: "/srv/it's",
                                            restoreCommand: "\"/usr/bin/dbbackup\" wal restore \"%f\" \"%p\"", target: target).text(at: now)
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
        #expect(lines.first == "" && lines.last == "")
        #expect(lines.contains("restore_command = '\"/usr/bin/dbbackup\" wal restore \"%f\" \"%p\"'"))
        #expect(lines.contains("recovery_target_time = '\(PostgresTime.utc(target))'"))
        #expect(PostgresTime.utc(target).hasSuffix(".250+00"))
        #expect(lines.contains("recovery_target_inclusive = on") && lines.contains("recovery_target_action = 'promote'"))
        #expect(lines.contains("recovery_target_timeline = 'latest'") && lines.contains("archive_mode = 'off'"))
        #expect(text.contains("# and the WAL archive 'main' of /srv/it's."))
        #expect(text.contains("at \(Timestamps.iso8601(now)): recovery from base backup 2026-11-21_020000_basebackup"))
    }

    @Test func withoutATargetRecoveryGoesToTheEndOfTheArchive() {
        let text = PostgresRecoverySettings(baseBackup: "b", archive: "main", repository: "/r", restoreCommand: "it's",
                                            target: nil).text(at: now)
        #expect(text.contains("restore_command = 'it''s'"))
        #expect(!text.contains("recovery_target_time =") && !text.contains("recovery_target_action"))
        #expect(text.contains("recovery_target_timeline = 'latest'") && text.contains("archive_mode = 'off'"))
    }

    @Test func wholeSecondsHaveNoFraction() {
        #expect(PostgresTime.utc(Date(timeIntervalSince1970: 0)) == "1970-01-01 00:00:00+00")
    }
}
