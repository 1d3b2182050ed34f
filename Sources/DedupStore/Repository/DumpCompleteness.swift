/// Recognises plain-text dumps that announce their own end, so that a stream cut
/// short (its producer died, `pg_dump | dbbackup` without pipefail) is refused
/// instead of committed as a backup that looks whole.
public struct DumpCompleteness {
    /// The dump kinds that carry a completion marker.
    public enum Kind: String, Sendable {
        case postgresPlain = "pg_dump plain SQL"
        case postgresCluster = "pg_dumpall SQL"
        case mysql = "mysqldump/mariadb-dump SQL"

        var endMarker: [UInt8] {
            switch self {
            case .postgresPlain: return Array("-- PostgreSQL database dump complete".utf8)
            case .postgresCluster: return Array("-- PostgreSQL database cluster dump complete".utf8)
            case .mysql: return Array("-- Dump completed".utf8)
            }
        }
    }

    private var head = [UInt8]()
    private var tail = [UInt8]()
    private let headSize = 256
    private let tailSize = 4096

    public init() {
        head.reserveCapacity(headSize)
        tail.reserveCapacity(2 * tailSize)
    }

    /// Feeds the next bytes of the stream.
    public mutating func observe(_ bytes: UnsafeRawBufferPointer) {
        if head.count < headSize {
            head.append(contentsOf: bytes.prefix(headSize - head.count))
        }
        if bytes.count >= tailSize {
            tail.removeAll(keepingCapacity: true)
            tail.append(contentsOf: bytes.suffix(tailSize))
        } else {
            tail.append(contentsOf: bytes)
            if tail.count > 2 * tailSize { tail.removeFirst(tail.count - tailSize) }
        }
    }

    /// The kind of dump the stream starts like, if it is one with a marker.
    public var detectedKind: Kind? {
        let text = String(decoding: head, as: UTF8.self)
        if text.hasPrefix("--\n-- PostgreSQL database cluster dump") { return .postgresCluster }
        if text.hasPrefix("--\n-- PostgreSQL database dump") { return .postgresPlain }
        if text.hasPrefix("-- MySQL dump") || text.hasPrefix("-- MariaDB dump") || text.hasPrefix("/*M!999999") {
            return .mysql
        }
        return nil
    }

    /// nil when the stream is complete (or not a kind we can tell); else why not.
    public func problem() -> String? {
        guard let kind = detectedKind else { return nil }
        let marker = kind.endMarker
        let window = tail.suffix(tailSize)
        if window.count >= marker.count {
            let w = Array(window)
            for start in stride(from: w.count - marker.count, through: 0, by: -1) where w[start] == marker[0] {
                if Array(w[start..<(start + marker.count)]) == marker { return nil }
            }
        }
        return
            "the input is a \(kind.rawValue) that ends without its completion line ('\(String(decoding: marker, as: UTF8.self))'): the dump was cut short, probably because its producer failed; no backup was committed (use --from-command, or `set -o pipefail`, to see the producer's error)"
    }
}
