import Foundation

/// What can go wrong talking to a database server or running its dump tool, with a
/// one-line message that says what to do.
public enum DatabaseError: Error, Equatable, CustomStringConvertible, LocalizedError {
    /// The server could not be reached or refused us; `detail` is the client
    /// library's own message, `hint` the next step.
    case connectionFailed(server: String, detail: String, hint: String)
    case queryFailed(query: String, detail: String)
    /// A table's COPY failed half way (the server gone, the backend terminated).
    case copyFailed(table: String, detail: String)
    /// A table's rows could not be loaded into the target database (the
    /// server refused them, or their member would not restore); it keeps none.
    case loadFailed(table: String, detail: String)
    /// The dump tool is not installed.
    case toolMissing(tool: String, package: String)
    case invalidArgument(String)
    /// An engine this build cannot back up yet.
    case unsupportedEngine(String)
    /// A WAL file or binlog that cannot go into the archive as it is.
    case archiveConflict(file: String, detail: String)

    public var description: String { message }

    /// The server's or client library's own words, where there are any.
    public var detail: String {
        switch self {
        case .connectionFailed(_, let detail, _), .queryFailed(_, let detail), .copyFailed(_, let detail),
            .loadFailed(_, let detail),
            .archiveConflict(_, let detail):
            return detail
        default:
            return message
        }
    }
    public var errorDescription: String? { message }

    public var message: String {
        switch self {
        case .connectionFailed(let server, let detail, let hint):
            return "cannot connect to \(server): \(detail); \(hint)"
        case .queryFailed(let query, let detail):
            return "query \(query) failed: \(detail)"
        case .copyFailed(let table, let detail):
            return "the rows of table \(table) could not be read to the end: \(detail)"
        case .loadFailed(let table, let detail):
            return
                "table \(table) was not loaded (it holds none of its rows): \(detail); the target database is partly restored: restore again with --force, or drop it"
        case .toolMissing(let tool, let package):
            return "\(tool) was not found in PATH; install it (Debian: apt-get install \(package)) or put it on PATH"
        case .invalidArgument(let text):
            return text
        case .archiveConflict(let file, let detail):
            return "refusing to archive \(file): \(detail)"
        case .unsupportedEngine(let engine):
            return "--db-type \(engine) cannot be backed up by this version yet (postgres can)"
        }
    }
}
