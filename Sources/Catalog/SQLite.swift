import CSQLite
import Foundation

/// What can go wrong with the catalog's SQLite file.
public enum CatalogError: Error, CustomStringConvertible, LocalizedError {
    case sqlite(path: String, detail: String)

    public var description: String { message }
    public var errorDescription: String? { message }

    public var message: String {
        switch self {
        case .sqlite(let path, let detail):
            return
                "catalog \(path): \(detail); it is a cache of the manifests: remove it and run `dbbackup catalog sync`"
        }
    }
}

/// The SQLITE_TRANSIENT destructor: SQLite copies bound text at once.
private let transient = unsafeBitCast(-1, to: sqlite3_destructor_type.self)

/// A small wrapper over one SQLite connection: statements with bound values,
/// rows read by column index. One thread at a time.
final class SQLiteDatabase {
    private var db: OpaquePointer?
    let path: String

    init(path: String) throws {
        self.path = path
        let rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, nil)
        guard rc == SQLITE_OK else {
            let detail = db.map { String(cString: sqlite3_errmsg($0)) } ?? "cannot open"
            sqlite3_close(db)
            db = nil
            throw CatalogError.sqlite(path: path, detail: detail)
        }
        // Another dbbackup process may be writing: wait for it rather than fail.
        sqlite3_busy_timeout(db, 10_000)
    }

    deinit { sqlite3_close(db) }

    enum Value {
        case text(String?)
        case int(Int64?)
        case real(Double?)
    }

    private func failure(_ what: String) -> CatalogError {
        .sqlite(path: path, detail: "\(what): \(String(cString: sqlite3_errmsg(db)))")
    }

    /// Runs one or more statements without results.
    func execute(_ sql: String) throws {
        guard sqlite3_exec(db, sql, nil, nil, nil) == SQLITE_OK else { throw failure(String(sql.prefix(60))) }
    }

    /// Runs `sql` with `values` bound to ?1, ?2, ...; calls `row` for each result row.
    func run(_ sql: String, _ values: [Value] = [], row: ((Row) throws -> Void)? = nil) throws {
        var stmt: OpaquePointer?
        guard sqlite3_prepare_v2(db, sql, -1, &stmt, nil) == SQLITE_OK else { throw failure(String(sql.prefix(60))) }
        defer { sqlite3_finalize(stmt) }
        for (i, v) in values.enumerated() {
            let index = Int32(i + 1)
            switch v {
            case .text(let s?): sqlite3_bind_text(stmt, index, s, -1, transient)
            case .int(let n?): sqlite3_bind_int64(stmt, index, n)
            case .real(let d?): sqlite3_bind_double(stmt, index, d)
            default: sqlite3_bind_null(stmt, index)
            }
        }
        while true {
            let rc = sqlite3_step(stmt)
            if rc == SQLITE_DONE { return }
            guard rc == SQLITE_ROW else { throw failure(String(sql.prefix(60))) }
            if let row { try row(Row(stmt: stmt)) }
        }
    }

    /// Rows the last statement inserted, changed or deleted (not its triggers').
    var changes: Int { Int(sqlite3_changes(db)) }

    /// Runs `body` in one transaction (committed, or rolled back on error).
    func transaction(_ body: () throws -> Void) throws {
        try execute("BEGIN IMMEDIATE")
        do {
            try body()
            try execute("COMMIT")
        } catch {
            try? execute("ROLLBACK")
            throw error
        }
    }

    struct Row {
        let stmt: OpaquePointer?
        func text(_ i: Int32) -> String? {
            sqlite3_column_type(stmt, i) == SQLITE_NULL ? nil : sqlite3_column_text(stmt, i).map { String(cString: $0) }
        }
        func int(_ i: Int32) -> Int64? {
            sqlite3_column_type(stmt, i) == SQLITE_NULL ? nil : sqlite3_column_int64(stmt, i)
        }
        func real(_ i: Int32) -> Double? {
            sqlite3_column_type(stmt, i) == SQLITE_NULL ? nil : sqlite3_column_double(stmt, i)
        }
    }
}
