import Foundation

/// A note that backups changed, so that a catalog can catch up by reading what
/// changed since its last sync instead of listing every manifest.
///
/// Stored as `changes/<yyyyMMddHH>/<yyyyMMddTHHmmssSSS>Z-<host hash>-<pid>-<random>.json`
/// (UTC, the writer's clock): one folder per hour, so that a catalog lists only
/// the hours since its last sync. A commit or delete note is written *before* the
/// manifest is put or deleted (a crash in between leaves a note about nothing,
/// which a catalog checks and drops); a verify note after the records are saved.
/// Notes are hints: a catalog looks at the manifests they name, which stay the
/// truth. gc deletes notes older than `ChangeNote.retention`.
public struct ChangeNote: Codable, Equatable, Sendable {
    public enum Operation: String, Codable, Sendable {
        /// Manifests about to be committed.
        case commit
        /// Manifests about to be deleted.
        case delete
        /// Manifests whose verification records were just saved.
        case verify
    }

    public var op: Operation
    /// The backups touched; `everyBackup` alone for a verify of many.
    public var ids: [String]

    /// The id that stands for every backup (a verify note of a whole repository).
    public static let everyBackup = "*"

    public static let folder = "changes/"
    /// How long notes are kept: a catalog that last synced longer ago than this
    /// (less `settleTime`) lists every manifest instead.
    public static let retention: TimeInterval = 7 * 86400
    /// How long after a note its change is surely done (or abandoned), and the
    /// clock difference between hosts this allows for: a catalog reads the notes
    /// from this long before its last sync.
    public static let settleTime: TimeInterval = 3600

    /// The hour folder of a time (UTC): `changes/yyyyMMddHH/`.
    static func hourFolder(_ date: Date) -> String {
        let s = Array(stamp(date))
        return folder + String(s[0..<8]) + String(s[9..<11]) + "/"
    }

    /// `yyyyMMddTHHmmssSSS` in UTC.
    static func stamp(_ date: Date) -> String {
        let ms = Int64((date.timeIntervalSince1970 * 1000).rounded(.down))
        var seconds = time_t(ms / 1000)
        var t = tm()
        gmtime_r(&seconds, &t)
        return String(
            format: "%04d%02d%02dT%02d%02d%02d%03d", Int(t.tm_year) + 1900, Int(t.tm_mon) + 1, Int(t.tm_mday),
            Int(t.tm_hour), Int(t.tm_min), Int(t.tm_sec), Int(ms % 1000))
    }

    /// The time a note's key carries (nil: not a note's key).
    public static func time(ofKey key: String) -> Date? {
        guard key.hasPrefix(folder), key.hasSuffix(".json"), let slash = key.lastIndex(of: "/") else { return nil }
        let name = Array(key[key.index(after: slash)...].utf8)
        guard name.count > 19, name[8] == UInt8(ascii: "T") else { return nil }
        func number(_ range: Range<Int>) -> Int? {
            var v = 0
            for i in range {
                guard name[i] >= 48, name[i] <= 57 else { return nil }
                v = v * 10 + Int(name[i] - 48)
            }
            return v
        }
        guard let year = number(0..<4), let month = number(4..<6), let day = number(6..<8),
              let hour = number(9..<11), let minute = number(11..<13), let second = number(13..<15),
              let ms = number(15..<18)
        else { return nil }
        var t = tm()
        t.tm_year = Int32(year - 1900); t.tm_mon = Int32(month - 1); t.tm_mday = Int32(day)
        t.tm_hour = Int32(hour); t.tm_min = Int32(minute); t.tm_sec = Int32(second)
        return Date(timeIntervalSince1970: Double(timegm(&t)) + Double(ms) / 1000)
    }
}

extension Repository {
    /// Writes a change note (see `ChangeNote`) for `ids`.
    public func noteChange(_ op: ChangeNote.Operation, ids: [String], at date: Date = Date()) throws {
        guard !ids.isEmpty else { return }
        let host = SHA256Hasher.hash(Array(LockInfo.currentHost.utf8)).hex.prefix(8)
        let key =
            ChangeNote.hourFolder(date) + ChangeNote.stamp(date) + "Z-\(host)-\(getpid())-"
            + Hex.encode(SecureRandom.bytes(6)) + ".json"
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        // A name of its own (time, host, pid, 48 random bits): written plainly,
        // without the round trip a bucket's create-if-absent costs.
        try backend.put(key, Array(try encoder.encode(ChangeNote(op: op, ids: ids))), ifAbsent: false)
    }

    /// The keys of the notes written from `start` on (by their writers' clocks),
    /// oldest first: one listing per hour folder up to `ahead` past now (an hour:
    /// writers' clocks may run that much ahead).
    public func changeKeys(
        since start: Date, now: Date = Date(), ahead: TimeInterval = ChangeNote.settleTime
    ) throws -> [String] {
        var keys = [String]()
        var hour = Date(timeIntervalSince1970: (start.timeIntervalSince1970 / 3600).rounded(.down) * 3600)
        let end = now.addingTimeInterval(ahead)
        while hour <= end {
            keys += try backend.keys(ChangeNote.hourFolder(hour)).filter {
                (ChangeNote.time(ofKey: $0) ?? .distantPast) >= start
            }
            hour.addTimeInterval(3600)
        }
        return keys.sorted()
    }

    /// A note by key (nil: gone, or not readable as a note).
    public func loadChange(_ key: String) throws -> ChangeNote? {
        guard let bytes = try backend.get(key) else { return nil }
        return try? JSONDecoder().decode(ChangeNote.self, from: Data(bytes))
    }

    /// Deletes the notes written before `date` (gc: older than
    /// `ChangeNote.retention`). Returns how many.
    @discardableResult
    public func pruneChanges(before date: Date) throws -> Int {
        let old = try backend.keys(ChangeNote.folder).filter { (ChangeNote.time(ofKey: $0) ?? .distantFuture) < date }
        try backend.delete(keys: old)
        return old.count
    }
}
