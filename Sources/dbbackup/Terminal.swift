import DedupStore
import Foundation

/// Output helpers: results on stdout, messages and progress on stderr, progress
/// only when stderr is a terminal (cron and systemd see the summary alone).
enum Terminal {
    static let stderrIsTerminal = isatty(STDERR_FILENO) == 1

    static func out(_ line: String) { write(STDOUT_FILENO, line + "\n") }

    static func err(_ line: String) { write(STDERR_FILENO, line + "\n") }

    /// Text as it is, on stdout.
    static func raw(_ text: String) { write(STDOUT_FILENO, text) }

    /// write(2), not FileHandle (which traps when the reader is gone, as with
    /// `dbbackup ... | head`): a closed stdout or stderr loses the text, nothing else.
    private static func write(_ fd: Int32, _ text: String) {
        let bytes = Array(text.utf8)
        bytes.withUnsafeBytes {
            try? FileIO.writeAll(fd, $0, path: fd == STDOUT_FILENO ? "standard output" : "standard error")
        }
    }

    static func error(_ message: String) {
        clearProgress()
        err("dbbackup: error: \(message)")
    }

    static func notice(_ message: String) {
        clearProgress()
        err("dbbackup: \(message)")
    }

    static func progress(_ line: String) {
        guard stderrIsTerminal else { return }
        write(STDERR_FILENO, "\r\u{1B}[K" + line)
    }

    static func clearProgress() {
        guard stderrIsTerminal else { return }
        write(STDERR_FILENO, "\r\u{1B}[K")
    }

    static func json<T: Encodable>(_ value: T) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        out(String(decoding: try enc.encode(value), as: UTF8.self))
    }
}

/// Human-readable figures.
enum Format {
    static func bytes(_ n: Int64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"]
        var v = Double(n)
        var i = 0
        while abs(v) >= 1024 && i < units.count - 1 { v /= 1024; i += 1 }
        return i == 0 ? "\(n) B" : String(format: "%.1f %@", v, units[i])
    }

    static func rate(_ bytes: Int64, _ seconds: Double) -> String {
        guard seconds > 0 else { return "-" }
        return String(format: "%.1f MB/s", Double(bytes) / seconds / 1e6)
    }

    /// 50, 12.5: no trailing zeros.
    static func number(_ v: Double) -> String {
        v == v.rounded() && abs(v) < 1e15 ? String(Int(v)) : String(format: "%g", v)
    }

    static func percent(_ fraction: Double) -> String {
        String(format: "%.1f%%", fraction * 100)
    }

    /// An age or an interval, in whole units of one style: 45s, 2m47s, 3h05m, 7d12h.
    static func age(_ seconds: Double) -> String {
        let t = Int(max(0, seconds).rounded())
        switch t {
        case ..<60: return "\(t)s"
        case ..<3600: return String(format: "%dm%02ds", t / 60, t % 60)
        case ..<86400: return String(format: "%dh%02dm", t / 3600, t / 60 % 60)
        default: return String(format: "%dd%02dh", t / 86400, t / 3600 % 24)
        }
    }

    /// How long a run took: 0.42 s below a minute, else 2m47s or 1h02m03s.
    static func duration(_ s: Double) -> String {
        if s < 60 { return String(format: "%.2f s", s) }
        let t = Int(s)
        return t < 3600
            ? String(format: "%dm%02ds", t / 60, t % 60)
            : String(format: "%dh%02dm%02ds", t / 3600, t / 60 % 60, t % 60)
    }
}

/// Columns padded to their widest cell; the last one is not padded.
func printTable(header: [String], rows: [[String]]) {
    var widths = header.map(\.count)
    for r in rows { for (i, c) in r.enumerated() { widths[i] = max(widths[i], c.count) } }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { i, c in
            i == cells.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0)
        }.joined(separator: "  ")
    }
    Terminal.out(line(header))
    for r in rows { Terminal.out(line(r)) }
}

/// What a filter by database says when the repository has no backup of it at all
/// (a typo, or a database never backed up): the ones it has.
func noBackups(of database: String, in path: String, known: Set<String>) -> String {
    let names = known.sorted()
    let shown = names.isEmpty ? "none" : names.prefix(20).joined(separator: ", ") + (names.count > 20 ? ", ..." : "")
    return "no backups of database '\(database)' at all in \(path) (databases with backups: \(shown))"
}
