import CLibPQ
import DedupStore
import Foundation

/// The parts of the native PostgreSQL engine that talk COPY: a consistent
/// snapshot shared by several connections, each table's rows streamed out of
/// `COPY ... TO STDOUT` as a byte source for the store, and streamed back in
/// through `COPY ... FROM STDIN`.
extension PostgresConnection {
    /// Opens a REPEATABLE READ, READ ONLY transaction and exports its snapshot:
    /// other connections that import it (`importSnapshot`) see exactly what this
    /// one sees, for as long as this transaction stays open.
    public func exportSnapshot() throws -> String {
        try execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        guard let id = try column("SELECT pg_export_snapshot()").first, !id.isEmpty else {
            throw DatabaseError.queryFailed(query: "SELECT pg_export_snapshot()", detail: "no snapshot came back")
        }
        return id
    }

    /// Opens a REPEATABLE READ, READ ONLY transaction on the snapshot another
    /// connection exported.
    public func importSnapshot(_ id: String) throws {
        try execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        try execute("SET TRANSACTION SNAPSHOT \(try quoted(literal: id))")
    }

    /// Starts `sql`, a `COPY ... TO STDOUT`; its rows are then read with `copyOut(into:)`.
    func startCopyOut(_ sql: String) throws {
        guard let result = PQexec(conn, sql) else {
            throw DatabaseError.queryFailed(query: sql, detail: Self.oneLine(PQerrorMessage(conn)))
        }
        defer { PQclear(result) }
        guard PQresultStatus(result) == PGRES_COPY_OUT else {
            throw DatabaseError.queryFailed(query: sql, detail: Self.oneLine(PQresultErrorMessage(result)))
        }
    }

    /// The next row (or rows) of a COPY out, handed to `body` as libpq holds them;
    /// false at the end, after checking that the COPY ended well.
    func copyOutNext(_ sql: String, _ body: (UnsafeRawBufferPointer) -> Void) throws -> Bool {
        var buffer: UnsafeMutablePointer<CChar>?
        let n = PQgetCopyData(conn, &buffer, 0)
        if n > 0, let buffer {
            defer { PQfreemem(buffer) }
            body(UnsafeRawBufferPointer(start: buffer, count: Int(n)))
            return true
        }
        if n == -2 {
            throw DatabaseError.queryFailed(query: sql, detail: Self.oneLine(PQerrorMessage(conn)))
        }
        // -1: the COPY is done; its outcome is the result that follows.
        try finishCommand(sql)
        return false
    }

    /// Sends `source`'s bytes, in the COPY text format, to `sql`, a `COPY ... FROM
    /// STDIN`; the server's verdict on them is thrown if it refused them.
    /// Returns the bytes sent.
    @discardableResult
    public func copyIn<S: ByteSource>(_ sql: String, from source: inout S, bufferSize: Int = 1 << 20) throws -> Int64 {
        guard let result = PQexec(conn, sql) else {
            throw DatabaseError.queryFailed(query: sql, detail: Self.oneLine(PQerrorMessage(conn)))
        }
        let status = PQresultStatus(result)
        let detail = Self.oneLine(PQresultErrorMessage(result))
        PQclear(result)
        guard status == PGRES_COPY_IN else { throw DatabaseError.queryFailed(query: sql, detail: detail) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: bufferSize, alignment: 16)
        defer { buffer.deallocate() }
        var sent: Int64 = 0
        do {
            while true {
                let n = try source.read(into: buffer)
                if n == 0 { break }
                let base = buffer.baseAddress?.assumingMemoryBound(to: CChar.self)
                guard PQputCopyData(conn, base, Int32(n)) == 1 else {
                    throw DatabaseError.queryFailed(query: sql, detail: Self.oneLine(PQerrorMessage(conn)))
                }
                sent += Int64(n)
            }
        } catch {
            // The server must not take a table cut short for a whole one.
            _ = PQputCopyEnd(conn, "the input failed")
            try? finishCommand(sql)
            throw error
        }
        guard PQputCopyEnd(conn, nil) == 1 else {
            throw DatabaseError.queryFailed(query: sql, detail: Self.oneLine(PQerrorMessage(conn)))
        }
        try finishCommand(sql)
        return sent
    }

    /// Reads the results of the command just ended; throws the server's error.
    private func finishCommand(_ sql: String) throws {
        var failure: String?
        while let r = PQgetResult(conn) {
            if PQresultStatus(r) != PGRES_COMMAND_OK, failure == nil { failure = Self.oneLine(PQresultErrorMessage(r)) }
            PQclear(r)
        }
        if let failure { throw DatabaseError.queryFailed(query: sql, detail: failure) }
    }
}

/// One table's rows, `COPY <table> TO STDOUT` in the text format, as a byte
/// source: what libpq hands over is copied straight into the reader's buffer,
/// and what does not fit waits there for the next read. A COPY that fails half
/// way (the server gone, the backend terminated) is an error naming the table,
/// never a short stream.
public final class PostgresCopyOut: ByteSource {
    private let connection: PostgresConnection
    private let sql: String
    /// The table, for messages.
    public let table: String
    private var pending: [UInt8] = []
    private var pendingStart = 0
    private var ended = false
    public private(set) var rows: Int64 = 0
    public private(set) var bytes: Int64 = 0

    /// `table`: a qualified, quoted name (`"public"."orders"`), or a query in
    /// parentheses.
    public init(_ connection: PostgresConnection, table: String) throws {
        self.connection = connection
        self.table = table
        sql = "COPY \(table) TO STDOUT"
        try connection.startCopyOut(sql)
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        var filled = 0
        while filled < buffer.count {
            if pendingStart < pending.count {
                let n = min(buffer.count - filled, pending.count - pendingStart)
                pending.withUnsafeBytes {
                    UnsafeMutableRawBufferPointer(rebasing: buffer[filled..<(filled + n)])
                        .copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[pendingStart..<(pendingStart + n)]))
                }
                pendingStart += n
                filled += n
                continue
            }
            if ended { break }
            // Stop once something is filled and nothing is waiting: the chunker
            // reads again, and a large buffer need not wait for many rows.
            if filled > 0 && filled >= buffer.count / 2 { break }
            let more: Bool
            do {
                more = try connection.copyOutNext(sql) { row in
                    rows += 1
                    bytes += Int64(row.count)
                    let room = buffer.count - filled
                    if row.count <= room {
                        UnsafeMutableRawBufferPointer(rebasing: buffer[filled..<(filled + row.count)]).copyMemory(from: row)
                        filled += row.count
                    } else {
                        if room > 0 {
                            UnsafeMutableRawBufferPointer(rebasing: buffer[filled...])
                                .copyMemory(from: UnsafeRawBufferPointer(rebasing: row[0..<room]))
                            filled += room
                        }
                        pending = Array(row[room...])
                        pendingStart = 0
                    }
                }
            } catch let e as DatabaseError {
                throw DatabaseError.copyFailed(table: table, detail: e.detail)
            }
            if !more { ended = true }
        }
        return filled
    }
}
