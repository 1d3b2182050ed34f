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
        [("last", keepLast), ("daily", keepDaily), ("weekly", keepWeekly), ("monthly", keepMonthly), ("yearly", keepYearly)]
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
}

/// Applies GFS retention to the backups of a repository.
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
        let groups = Dictionary(grouping: manifests, by: group(of:))
        for key in groups.keys.sorted() {
            guard let members = groups[key] else { continue }
            // Newest first; ids break ties between backups of the same second.
            let ordered = members.sorted {
                let a = $0.createdDate ?? .distantPast, b = $1.createdDate ?? .distantPast
                return a != b ? a > b : $0.id > $1.id
            }
            var reasons = [[String]](repeating: [], count: ordered.count)
            for (i, _) in ordered.enumerated() where i < policy.keepLast {
                reasons[i].append("last \(i + 1)")
            }
            let rules: [(String, Int, (Date) -> String)] = [
                ("daily", policy.keepDaily, { bucket($0, [.year, .month, .day], calendar) }),
                ("weekly", policy.keepWeekly, { isoWeek($0, calendar) }),
                ("monthly", policy.keepMonthly, { bucket($0, [.year, .month], calendar) }),
                ("yearly", policy.keepYearly, { bucket($0, [.year], calendar) }),
            ]
            for (name, count, bucketOf) in rules where count > 0 {
                var kept = 0
                var lastBucket: String?
                for (i, m) in ordered.enumerated() {
                    guard kept < count else { break }
                    let b = bucketOf(m.createdDate ?? .distantPast)
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

    private static func bucket(_ d: Date, _ parts: Set<Calendar.Component>, _ c: Calendar) -> String {
        let x = c.dateComponents(parts, from: d)
        var s = String(format: "%04d", x.year ?? 0)
        if parts.contains(.month) { s += String(format: "-%02d", x.month ?? 0) }
        if parts.contains(.day) { s += String(format: "-%02d", x.day ?? 0) }
        return s
    }

    private static func isoWeek(_ d: Date, _ c: Calendar) -> String {
        let x = c.dateComponents([.yearForWeekOfYear, .weekOfYear], from: d)
        return String(format: "%04d-W%02d", x.yearForWeekOfYear ?? 0, x.weekOfYear ?? 0)
    }
}
