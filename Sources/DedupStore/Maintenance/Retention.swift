import Foundation

/// A GFS retention policy: how many backups to keep per kind of bucket.
public struct RetentionPolicy: Equatable, Sendable {
    public var keepLast = 0
    public var keepDaily = 0
    public var keepWeekly = 0
    public var keepMonthly = 0
    public var keepYearly = 0

    public init(keepLast: Int = 0, keepDaily: Int = 0, keepWeekly: Int = 0, keepMonthly: Int = 0, keepYearly: Int = 0) {
        self.keepLast = keepLast; self.keepDaily = keepDaily; self.keepWeekly = keepWeekly
        self.keepMonthly = keepMonthly; self.keepYearly = keepYearly
    }

    /// True when no rule keeps anything (a policy that would delete every backup).
    public var isEmpty: Bool { keepLast + keepDaily + keepWeekly + keepMonthly + keepYearly == 0 }

    public var summary: String {
        [
            ("last", keepLast), ("daily", keepDaily), ("weekly", keepWeekly), ("monthly", keepMonthly),
            ("yearly", keepYearly),
        ]
        .filter { $0.1 > 0 }.map { "\($0.0) \($0.1)" }.joined(separator: ", ")
    }
}

/// What prune decided for one backup.
public struct RetentionDecision: Equatable, Sendable {
    public var id: String
    public var group: String
    public var createdAt: String
    public var keep: Bool
    /// Every rule that keeps it ("daily 2026-11-21", "last 1", ...); empty when deleted.
    public var reasons: [String]

    public init(id: String, group: String, createdAt: String, keep: Bool, reasons: [String]) {
        self.id = id; self.group = group; self.createdAt = createdAt; self.keep = keep; self.reasons = reasons
    }
}

/// Applies GFS retention to the backups of a repository (not to archived WAL
/// files and binlogs, which have a manifest each but follow their backups).
///
/// Backups are grouped by database (or by name when they have none). Within a
/// group each rule walks the backups newest first and keeps the newest backup of
/// each day, ISO week, month or year, until it has kept its count; `keepLast`
/// keeps the N newest. A backup kept by any rule stays. Buckets follow `calendar`'s
/// time zone (the local one by default).
public enum Retention {
    public static func group(of m: Manifest) -> String { m.database ?? m.name }

    public static func decide(_ manifests: [Manifest], policy: RetentionPolicy,
                              calendar: Calendar = localISOCalendar()) -> [RetentionDecision] {
        var out = [RetentionDecision]()
        // Archived WAL files and binlogs are not backups of their own: they go
        // with the base backups and dumps they extend (see LogRetention).
        let groups = Dictionary(grouping: manifests.filter { !$0.isLogFile }, by: group(of:))
        for key in groups.keys.sorted() {
            guard let members = groups[key] else { continue }
            // Newest first; ids break ties between backups of the same second.
            let ordered = members.map { ($0, $0.createdDate ?? .distantPast) }.sorted {
                $0.1 != $1.1 ? $0.1 > $1.1 : $0.0.id > $1.0.id
            }.map(\.0)
            var reasons = [[String]](repeating: [], count: ordered.count)
            for (i, _) in ordered.enumerated() where i < policy.keepLast {
                reasons[i].append("last \(i + 1)")
            }
            // One calendar computation per backup (they are slow), four bucket names.
            let buckets = ordered.map { Buckets($0.createdDate ?? .distantPast, calendar) }
            let rules: [(String, Int, KeyPath<Buckets, String>)] = [
                ("daily", policy.keepDaily, \.day), ("weekly", policy.keepWeekly, \.week),
                ("monthly", policy.keepMonthly, \.month), ("yearly", policy.keepYearly, \.year),
            ]
            for (name, count, bucketName) in rules where count > 0 {
                var kept = 0
                var lastBucket: String?
                for i in ordered.indices {
                    guard kept < count else { break }
                    let b = buckets[i][keyPath: bucketName]
                    if b != lastBucket {
                        lastBucket = b
                        reasons[i].append("\(name) \(b)")
                        kept += 1
                    }
                }
            }
            for (i, m) in ordered.enumerated() {
                out.append(RetentionDecision(id: m.id, group: key, createdAt: m.createdAt,
                                             keep: !reasons[i].isEmpty, reasons: reasons[i]))
            }
        }
        return out
    }

    /// A Gregorian calendar in the local time zone with ISO 8601 weeks.
    public static func localISOCalendar(timeZone: TimeZone = .current) -> Calendar {
        var c = Calendar(identifier: .iso8601)
        c.timeZone = timeZone
        return c
    }

    /// The day, ISO week, month and year a backup falls in, as names.
    struct Buckets {
        let day: String, week: String, month: String, year: String

        init(_ d: Date, _ c: Calendar) {
            let x = c.dateComponents([.year, .month, .day, .yearForWeekOfYear, .weekOfYear], from: d)
            func pad(_ v: Int?, _ width: Int) -> String {
                let s = String(v ?? 0)
                return String(repeating: "0", count: max(0, width - s.count)) + s
            }
            year = pad(x.year, 4)
            month = year + "-" + pad(x.month, 2)
            day = month + "-" + pad(x.day, 2)
            week = pad(x.yearForWeekOfYear, 4) + "-W" + pad(x.weekOfYear, 2)
        }
    }
}
