import Foundation

/// Time stamps in manifests and ids.
public enum Timestamps {
    /// RFC 3339 / ISO 8601 in UTC with seconds: 2026-11-21T02:00:00Z.
    public static func iso8601(_ date: Date) -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime]
        f.timeZone = TimeZone(identifier: "UTC")
        return f.string(from: date)
    }

    /// Parses an ISO 8601 time as users write it: with a zone (Z, +02:00), with
    /// fractional seconds, or without a zone (local time); a date alone is midnight local.
    public static func parse(_ text: String) -> Date? {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime]
        if let d = f.date(from: text) { return d }
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let d = f.date(from: text) { return d }
        let local = DateFormatter()
        local.locale = Locale(identifier: "en_US_POSIX")
        local.timeZone = TimeZone.current
        // With a zone as PostgreSQL prints it: 2026-11-21 12:00:00+00, ...+05:30, ...Z.
        for time in ["HH:mm:ss", "HH:mm:ss.SSSSSS", "HH:mm:ss.SSS", "HH:mm"] {
            for zone in ["X", "XXX", "XX", " X", " XXX", " z"] {
                for sep in [" ", "'T'"] {
                    local.dateFormat = "yyyy-MM-dd" + sep + time + zone
                    if let d = local.date(from: text) { return d }
                }
            }
        }
        for format in [
            "yyyy-MM-dd'T'HH:mm:ss", "yyyy-MM-dd HH:mm:ss", "yyyy-MM-dd'T'HH:mm", "yyyy-MM-dd HH:mm", "yyyy-MM-dd",
        ] {
            local.dateFormat = format
            if let d = local.date(from: text) { return d }
        }
        return nil
    }

    /// The time part of a manifest id, in UTC: 2026-11-21_020000.
    public static func idStamp(_ date: Date) -> String {
        let f = DateFormatter()
        f.locale = Locale(identifier: "en_US_POSIX")
        f.timeZone = TimeZone(identifier: "UTC")
        f.dateFormat = "yyyy-MM-dd_HHmmss"
        return f.string(from: date)
    }
}
