import DedupStore
import Foundation

/// How pg_basebackup is run for `dedup backup-db --base-backup`: one tar stream on
/// stdout (`-D - -Ft`), with the WAL the backup needs inside it (`-X fetch`), so a
/// base backup restores to a consistent cluster on its own; archived WAL then
/// carries it forward to any later time.
public struct PostgresBaseBackupPlan: Sendable {
    public let arguments: [String]
    public let toolVersion: String

    public static func make(address: ServerAddress) throws -> PostgresBaseBackupPlan {
        guard findExecutable("pg_basebackup") != nil else {
            throw DatabaseError.toolMissing(tool: "pg_basebackup", package: "postgresql-client")
        }
        let args = ["pg_basebackup", "--no-password", "--pgdata=-", "--format=tar", "--wal-method=fetch",
                    "--checkpoint=fast", "--label=dbbackup base backup"] + PostgresDumpPlan.connectionArguments(address)
        return PostgresBaseBackupPlan(arguments: args, toolVersion: try PostgresDumpPlan.version(of: "pg_basebackup"))
    }
}

/// The backup_label file of a base backup: where WAL replay starts.
public struct BackupLabel: Equatable, Sendable {
    /// START WAL LOCATION, e.g. 0/2000028, and its file.
    public let startLSN: String
    public let startWALFile: String
    public let timeline: UInt32
    /// START TIME as the server wrote it.
    public let startTime: String?

    public init?(_ text: String) {
        var fields = [String: String]()
        for line in text.split(separator: "\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            fields[String(line[..<colon])] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        // "0/2000028 (file 000000010000000000000002)"
        guard let start = fields["START WAL LOCATION"], let lsn = start.split(separator: " ").first,
            let open = start.range(of: "(file "), let close = start.lastIndex(of: ")"), open.upperBound <= close
        else { return nil }
        let file = String(start[open.upperBound..<close])
        guard let walFile = WALFileName(file), walFile.kind == .segment else { return nil }
        startLSN = String(lsn)
        startWALFile = file
        timeline = fields["START TIMELINE"].flatMap { UInt32($0) } ?? walFile.timeline
        startTime = fields["START TIME"]
    }
}

/// Reads members from the first bytes of a tar stream (ustar, as pg_basebackup
/// writes it), without unpacking anything.
public enum TarHead {
    /// The content of the member called `name` if it lies wholly within `bytes`.
    public static func member(named name: String, in bytes: [UInt8]) -> [UInt8]? {
        var offset = 0
        while offset + 512 <= bytes.count {
            let header = bytes[offset..<(offset + 512)]
            if header.allSatisfy({ $0 == 0 }) { return nil }  // end of archive
            func text(_ from: Int, _ count: Int) -> String {
                let field = bytes[(offset + from)..<(offset + from + count)]
                return String(decoding: field.prefix { $0 != 0 }, as: UTF8.self)
            }
            var memberName = text(0, 100)
            if text(257, 5) == "ustar" {
                let prefix = text(345, 155)
                if !prefix.isEmpty { memberName = prefix + "/" + memberName }
            }
            if memberName.hasPrefix("./") { memberName.removeFirst(2) }
            guard let size = Int(text(124, 12).trimmingCharacters(in: .whitespaces), radix: 8), size >= 0,
                size < 1 << 40
            else { return nil }
            let dataStart = offset + 512
            if memberName == name {
                guard dataStart + size <= bytes.count else { return nil }
                return Array(bytes[dataStart..<(dataStart + size)])
            }
            offset = dataStart + (size + 511) / 512 * 512
        }
        return nil
    }
}
