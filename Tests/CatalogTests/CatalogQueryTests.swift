import Catalog
import DedupStore
import Foundation
import Testing

/// The catalog's per-series queries (status, metrics) equal what a pass over
/// every row gives, and its totals follow inserts, replaces and deletes.
@Suite struct CatalogQueryTests {
    @Test func seriesNewestLogsAndTotalsEqualAPassOverEveryRow() throws {
        let f = try IncrementalSyncTests.Fixture()
        func commit(_ name: String, kind: BackupKind, engine: String?, database: String?, at: Double, seed: UInt8) throws {
            var o = BackupOptions(name: name, source: "memory")
            o.kind = kind; o.dbType = engine; o.database = database; o.lockWait = 0
            o.time = Date(timeIntervalSince1970: 1_790_000_000 + at)
            o.checkDumpComplete = false
            _ = try BackupSession(repository: f.repo).run(
                source: BufferSource([UInt8](repeating: seed, count: 1000 + Int(seed))), options: o)
        }
        for night in 0..<3 {
            for db in ["a", "b"] {
                try commit(db, kind: .dump, engine: "postgres", database: db, at: Double(night * 86400), seed: UInt8(night))
            }
            try commit("b", kind: .dump, engine: "mariadb", database: "b", at: Double(night * 86400 + 5), seed: 7)
            try commit("etc", kind: .file, engine: nil, database: nil, at: Double(night * 86400 + 9), seed: 9)
        }
        for n in 0..<5 {
            try commit("main", kind: .wal, engine: "postgres", database: nil, at: Double(n * 60), seed: UInt8(20 + n))
            try commit("other", kind: .wal, engine: "postgres", database: nil, at: Double(n * 90), seed: UInt8(30 + n))
        }
        try commit("bin", kind: .binlog, engine: "mariadb", database: nil, at: 100, seed: 40)
        let catalog = try f.catalog()
        try catalog.synchronize()
        // A replace (rebuild) and a delete must keep the totals right.
        try catalog.rebuild()
        let doomed = try #require(try catalog.backups().first { $0.kind == "wal" })
        try f.repo.deleteManifest(doomed.id)
        try catalog.synchronize()

        let rows = try catalog.backups()
        #expect(try catalog.totals().backups == rows.count)
        #expect(try catalog.totals().bytes == rows.reduce(0) { $0 + $1.size })

        let backups = rows.filter { !$0.isLogFile }
        let grouped = Dictionary(grouping: backups) { "\($0.subject)/\($0.kind)/\($0.engine ?? "")" }
        let summaries = try catalog.seriesSummaries(byEngine: true)
        #expect(summaries.count == grouped.count && summaries.count == 4)
        for (newest, count) in summaries {
            let group = try #require(grouped["\(newest.subject)/\(newest.kind)/\(newest.engine ?? "")"])
            #expect(count == group.count)
            #expect(newest.id == group.max { ($0.createdAt, $0.id) < ($1.createdAt, $1.id) }?.id)
        }
        #expect(try catalog.latestBackups().map(\.subject) == ["a", "b", "etc"])
        let logs = Dictionary(grouping: rows.filter(\.isLogFile)) { "\($0.kind)/\($0.name)" }
        let newest = try catalog.newestLogs()
        #expect(newest.count == logs.count && newest.count == 3)
        for l in newest {
            #expect(l.id == logs["\(l.kind)/\(l.name)"]?.max { ($0.createdAt, $0.id) < ($1.createdAt, $1.id) }?.id)
        }
    }
}
