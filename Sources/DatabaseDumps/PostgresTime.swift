import Foundation

/// Times as PostgreSQL and mariadb-binlog read them.
public enum PostgresTime {
    /// "2026-11-21 12:00:00.250+00" in UTC.
    public static func utc(_ date: Date) -> String {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "UTC")
        f.dateFormat =
            date.timeIntervalSince1970.truncatingRemainder(dividingBy: 1) == 0
            ? "yyyy-MM-dd HH:mm:ss" : "yyyy-MM-dd HH:mm:ss.SSS"
        return f.string(from: date) + "+00"
    }
}
