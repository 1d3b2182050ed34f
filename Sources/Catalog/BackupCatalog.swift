import DedupStore
import Foundation

/// The SQLite catalog of a repository's backups, kept in the local cache folder
/// beside the chunk index (`<cache>/catalog.sqlite`). The manifests stay the
/// truth: every open brings the catalog in step with them (new manifests added,
/// deleted ones removed, verifications updated), and `rebuild()` makes it anew.
/// Besides the backups it keeps events the manifests cannot tell: failed backups
/// and restores, for monitoring.
public final class BackupCatalog {
    private let db: SQLiteDatabase
    public let repository: Repository
    public var path: String { db.path }

    /// One backup as the catalog holds it.
    public struct Entry: Codable, Equatable, Sendable {
        public var id: String
        public var name: String
        public var kind: String
        public var database: String?
        public var engine: String?
        public var host: String?
        public var createdAt: String
        public var size: Int64
        public var storedBytes: Int64
        public var newBytes: Int64
        public var durationSeconds: Double
        public var tags: [String: String]
        public var verifiedAt: String?
        public var verifiedOK: Bool?
        public var verifyMode: String?

        public var createdDate: Date? { Timestamps.parse(createdAt) }
        /// What a backup is of: its database, else its name.
        public var subject: String { database ?? name }
        /// An archived WAL file or binlog rather than a backup of its own.
        public var isLogFile: Bool { BackupKind(rawValue: kind).map(Manifest.logKinds.contains) ?? false }
        /// The series a backup belongs to: its subject and kind.
        public var series: Series { Series(subject: subject, kind: kind) }
    }

    /// The backups of one database (or name) and kind.
    public struct Series: Hashable, Comparable, Sendable {
        public var subject: String
        public var kind: String
        public static func < (a: Series, b: Series) -> Bool { (a.subject, a.kind) < (b.subject, b.kind) }
    }

    /// An outcome a manifest cannot record: kind backup or restore, status
    /// success or failure.
    public struct Event: Codable, Equatable, Sendable {
        public var at: String
        public var kind: String
        public var status: String
        public var name: String
        public var database: String?
        public var engine: String?
        /// The kind of backup (dump, basebackup, file) for backup events.
        public var backupType: String?
        public var durationSeconds: Double?
        public var size: Int64?
        public var message: String?

        public init(
            at: Date = Date(), kind: String, status: String, name: String, database: String? = nil,
            engine: String? = nil,
            backupType: String? = nil, durationSeconds: Double? = nil, size: Int64? = nil, message: String? = nil
        ) {
            self.at = Timestamps.iso8601(at); self.kind = kind; self.status = status; self.name = name
            self.database = database; self.engine = engine; self.backupType = backupType
            self.durationSeconds = durationSeconds; self.size = size; self.message = message
        }
    }

    public static func defaultPath(for repository: Repository) -> String {
        repository.cacheDirectory + "/catalog.sqlite"
    }

    /// Opens (or creates) the catalog and brings it in step with the manifests.
    public init(repository: Repository, path: String? = nil, synchronize: Bool = true) throws {
        self.repository = repository
        let file = path ?? Self.defaultPath(for: repository)
        try FileIO.makeDirectories(FileIO.parent(file))
        db = try SQLiteDatabase(path: file)
        try db.execute("""
            CREATE TABLE IF NOT EXISTS backups (
                id TEXT PRIMARY KEY, name TEXT NOT NULL, kind TEXT NOT NULL, database TEXT, engine TEXT, host TEXT,
                created_at TEXT NOT NULL, created_unix REAL NOT NULL, size INTEGER NOT NULL, stored_bytes INTEGER NOT NULL,
                new_bytes INTEGER NOT NULL, duration REAL NOT NULL, tags TEXT NOT NULL,
                verified_at TEXT, verified_ok INTEGER, verify_mode TEXT);
            CREATE INDEX IF NOT EXISTS backups_by_subject ON backups (coalesce(database, name), created_unix);
            CREATE INDEX IF NOT EXISTS backups_by_time ON backups (created_unix, id);
            CREATE INDEX IF NOT EXISTS backups_by_kind ON backups (kind, created_unix);
            CREATE TABLE IF NOT EXISTS events (
                seq INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, kind TEXT NOT NULL, status TEXT NOT NULL,
                name TEXT NOT NULL, database TEXT, engine TEXT, backup_type TEXT, duration REAL, size INTEGER, message TEXT);
            CREATE TABLE IF NOT EXISTS sync_state (key TEXT PRIMARY KEY, value REAL NOT NULL);
            CREATE TABLE IF NOT EXISTS applied_changes (key TEXT PRIMARY KEY, at REAL NOT NULL);
            CREATE INDEX IF NOT EXISTS backups_by_archive ON backups (kind, name, created_unix);
            PRAGMA recursive_triggers = ON;
            """)
        // Totals kept by triggers (a REPLACE deletes first, so with recursive
        // triggers on it is counted out and in again): count and bytes in O(1).
        var hasTotals = false
        try db.run("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'totals'") { _ in hasTotals = true }
        if !hasTotals {
            try db.transaction {
                try db.execute("""
                    CREATE TABLE totals (id INTEGER PRIMARY KEY CHECK (id = 1), backups INTEGER NOT NULL, bytes INTEGER NOT NULL);
                    INSERT INTO totals SELECT 1, count(*), coalesce(sum(size), 0) FROM backups;
                    CREATE TRIGGER totals_in AFTER INSERT ON backups BEGIN
                        UPDATE totals SET backups = backups + 1, bytes = bytes + NEW.size; END;
                    CREATE TRIGGER totals_out AFTER DELETE ON backups BEGIN
                        UPDATE totals SET backups = backups - 1, bytes = bytes - OLD.size; END;
                    """)
            }
        }
        if synchronize { try self.synchronize() }
    }

    // MARK: Keeping in step

    public struct SyncReport: Equatable, Sendable {
        public var added = 0
        public var removed = 0
        public var verificationsUpdated = 0
        /// True when every manifest was listed; false when the change notes since
        /// the last sync were read instead.
        public var full = false

        public init(added: Int = 0, removed: Int = 0, verificationsUpdated: Int = 0, full: Bool = false) {
            self.added = added; self.removed = removed
            self.verificationsUpdated = verificationsUpdated; self.full = full
        }
    }

    /// Brings the catalog in step with the repository. Usually from the change
    /// notes written since its last sync (docs/FORMAT.md, `changes/`): a cost
    /// independent of the number of backups. In full, listing every manifest and
    /// verification record, when `full` is asked for, when it never synced, or
    /// when its last sync is older than the notes are kept. `now`: the time of
    /// this sync (tests set it to see notes settle).
    @discardableResult
    public func synchronize(full: Bool = false, now started: Date = Date()) throws -> SyncReport {
        var report = SyncReport()
        try db.transaction {
            let last = try stateValue("last_sync").map { Date(timeIntervalSince1970: $0) }
            if full || last == nil
                || started.timeIntervalSince(last ?? started) > ChangeNote.retention - ChangeNote.settleTime
            {
                report = try synchronizeFully()
            } else if let last {
                report = try synchronizeChanges(since: last.addingTimeInterval(-ChangeNote.settleTime), now: started)
            }
            try setState("last_sync", started.timeIntervalSince1970)
        }
        return report
    }

    /// Every manifest and verification record against the catalog's rows. The
    /// listing goes into a temporary table and both sides meet in SQL, so memory
    /// stays bounded (a year of WAL is a million ids); both are read inside the
    /// transaction: another process's commit cannot fall between them.
    private func synchronizeFully() throws -> SyncReport {
        var report = SyncReport(full: true)
        try db.execute("CREATE TEMP TABLE IF NOT EXISTS listed (id TEXT PRIMARY KEY); DELETE FROM temp.listed")
        try repository.forEachManifestID { id in
            try db.run("INSERT OR IGNORE INTO temp.listed (id) VALUES (?1)", [.text(id)])
        }
        report.verificationsUpdated = try applyChangedVerifications(onlyListed: true)
        // Backups the catalog does not list yet, a page at a time in id order.
        var after = ""
        while true {
            var page = [String]()
            try db.run("""
                SELECT id FROM temp.listed WHERE id > ?1 AND id NOT IN (SELECT id FROM backups) ORDER BY id LIMIT 1000
                """, [.text(after)]) { row in
                if let id = row.text(0) { page.append(id) }
            }
            guard let last = page.last else { break }
            after = last
            for id in page {
                guard let manifest = try readableManifest(id) else { continue }
                try upsert(manifest)
                report.added += 1
                if let v = try repository.verificationRecord(id) { try apply(v) }
            }
        }
        try db.run("DELETE FROM backups WHERE id NOT IN (SELECT id FROM temp.listed)")
        report.removed = db.changes
        try db.execute("DELETE FROM temp.listed")
        return report
    }

    private enum ManifestRead {
        case read(Manifest)
        /// There, but damaged or of a newer format (verify names it).
        case unreadable
        case absent
    }

    private func manifestIfPresent(_ id: String) throws -> ManifestRead {
        do {
            return .read(try repository.loadManifest(id))
        } catch DedupError.manifestNotFound {
            return .absent
        } catch DedupError.manifestCorrupt, DedupError.manifestTooNew {
            return .unreadable
        }
    }

    /// A manifest, or nil when it is gone or cannot be read (verify names those;
    /// the catalog lists what can be read).
    private func readableManifest(_ id: String) throws -> Manifest? {
        if case .read(let manifest) = try manifestIfPresent(id) { return manifest }
        return nil
    }

    /// Applies the change notes written from `start` on that are not applied yet.
    /// A commit note is applied once its manifests exist, a delete note once they
    /// are gone; until then (the change under way, or abandoned) it is looked at
    /// again by each sync, and applied as things stand once older than
    /// `ChangeNote.settleTime`.
    private func synchronizeChanges(since start: Date, now: Date) throws -> SyncReport {
        var report = SyncReport()
        var applied = Set<String>()
        try db.run("SELECT key FROM applied_changes WHERE at >= ?1", [.real(start.timeIntervalSince1970)]) { row in
            if let key = row.text(0) { applied.insert(key) }
        }
        for key in try repository.changeKeys(since: start, now: now) where !applied.contains(key) {
            guard let time = ChangeNote.time(ofKey: key) else { continue }
            let settled = now.timeIntervalSince(time) > ChangeNote.settleTime
            var done = true
            if let note = try repository.loadChange(key) {
                if note.op == .verify, note.ids == [ChangeNote.everyBackup] {
                    report.verificationsUpdated += try applyChangedVerifications(onlyListed: false)
                } else {
                    for id in note.ids {
                        done = try apply(note.op, id, &report) && done
                    }
                }
            }
            if done || settled {
                try db.run("INSERT OR REPLACE INTO applied_changes (key, at) VALUES (?1, ?2)",
                           [.text(key), .real(time.timeIntervalSince1970)])
            }
        }
        // Keys older than any sync will list again.
        try db.run("DELETE FROM applied_changes WHERE at < ?1",
                   [.real(start.timeIntervalSince1970 - ChangeNote.settleTime)])
        return report
    }

    /// Takes in every verification record whose time differs from the catalog's
    /// for a backup it lists (and, `onlyListed`, that the full sync's listing
    /// has), one record at a time. Returns how many were taken in.
    private func applyChangedVerifications(onlyListed: Bool) throws -> Int {
        var updated = 0
        let listed = onlyListed ? " AND id IN (SELECT id FROM temp.listed)" : ""
        try repository.forEachVerificationRecord { v in
            try db.run("""
                UPDATE backups SET verified_at = ?2, verified_ok = ?3, verify_mode = ?4
                WHERE id = ?1 AND verified_at IS NOT ?2\(listed)
                """, [.text(v.id), .text(v.verifiedAt), .int(v.ok ? 1 : 0), .text(v.mode)])
            updated += db.changes
        }
        return updated
    }

    /// One backup a note names, brought in step. True when the note's change is
    /// done for it (a committed manifest is there, a deleted one is gone).
    private func apply(_ op: ChangeNote.Operation, _ id: String, _ report: inout SyncReport) throws -> Bool {
        var known = false
        try db.run("SELECT 1 FROM backups WHERE id = ?1", [.text(id)]) { _ in known = true }
        switch op {
        case .commit, .delete:
            // A backup not known yet is read at once (one request, not a HEAD first).
            let present: Bool
            if known {
                present = try repository.hasManifest(id)
            } else {
                switch try manifestIfPresent(id) {
                case .absent: present = false
                case .unreadable: present = true
                case .read(let manifest):
                    present = true
                    try upsert(manifest)
                    if let v = try repository.verificationRecord(id) { try apply(v) }
                    report.added += 1
                }
            }
            if present { return op == .commit }
            if known {
                try db.run("DELETE FROM backups WHERE id = ?1", [.text(id)])
                report.removed += 1
            }
            return op == .delete
        case .verify:
            if known, let v = try repository.verificationRecord(id) {
                try apply(v)
                report.verificationsUpdated += 1
            }
            return true
        }
    }

    private func stateValue(_ key: String) throws -> Double? {
        var value: Double?
        try db.run("SELECT value FROM sync_state WHERE key = ?1", [.text(key)]) { row in value = row.real(0) }
        return value
    }

    private func setState(_ key: String, _ value: Double) throws {
        try db.run("INSERT OR REPLACE INTO sync_state (key, value) VALUES (?1, ?2)", [.text(key), .real(value)])
    }

    /// Forgets every backup and reads all manifests again (events stay).
    @discardableResult
    public func rebuild() throws -> SyncReport {
        try db.execute("DELETE FROM backups; DELETE FROM applied_changes")
        return try synchronize(full: true)
    }

    /// Records a committed backup.
    public func record(_ m: Manifest) throws {
        try db.transaction { try upsert(m) }
    }

    /// Forgets a deleted backup.
    public func remove(_ id: String) throws {
        try db.run("DELETE FROM backups WHERE id = ?1", [.text(id)])
    }


    public func recordEvent(_ e: Event) throws {
        try db.run(
            "INSERT INTO events (at, kind, status, name, database, engine, backup_type, duration, size, message) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            [
                .text(e.at), .text(e.kind), .text(e.status), .text(e.name), .text(e.database), .text(e.engine),
                .text(e.backupType),
                .real(e.durationSeconds), .int(e.size), .text(e.message),
            ])
    }

    private func upsert(_ m: Manifest) throws {
        let tags = String(decoding: (try? JSONEncoder().encode(m.tags)) ?? Data("{}".utf8), as: UTF8.self)
        try db.run("""
            INSERT OR REPLACE INTO backups (id, name, kind, database, engine, host, created_at, created_unix, size, stored_bytes,
                new_bytes, duration, tags) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
            """,
            [
                .text(m.id), .text(m.name), .text(m.kind), .text(m.database), .text(m.dump?.engine ?? m.dbType),
                .text(m.dbHost),
                .text(m.createdAt), .real(m.createdDate?.timeIntervalSince1970 ?? 0), .int(m.size),
                .int(m.stats.storedBytes),
                .int(m.stats.newBytes), .real(m.stats.durationSeconds), .text(tags),
            ])
    }

    private func apply(_ v: VerificationRecord) throws {
        try db.run("UPDATE backups SET verified_at = ?2, verified_ok = ?3, verify_mode = ?4 WHERE id = ?1",
                   [.text(v.id), .text(v.verifiedAt), .int(v.ok ? 1 : 0), .text(v.mode)])
    }

    // MARK: Queries

    public struct Filter: Sendable {
        public var database: String?
        public var kind: String?
        public var after: Date?
        public var before: Date?
        /// Substring of the id, name or database.
        public var text: String?
        public var tag: (key: String, value: String)?
        /// The newest N (all when nil); results are oldest first either way.
        public var limit: Int?
        public init() {}
    }

    public func backups(_ f: Filter = Filter()) throws -> [Entry] {
        var clauses = [String](), values = [SQLiteDatabase.Value]()
        /// Binds `value` and adds the clause `where` makes with its placeholder.
        func add(_ value: SQLiteDatabase.Value, _ clause: (String) -> String) {
            values.append(value)
            clauses.append(clause("?\(values.count)"))
        }
        if let d = f.database { add(.text(d)) { "coalesce(database, name) = \($0)" } }
        if let k = f.kind { add(.text(k)) { "kind = \($0)" } }
        if let a = f.after { add(.real(a.timeIntervalSince1970)) { "created_unix >= \($0)" } }
        if let b = f.before { add(.real(b.timeIntervalSince1970)) { "created_unix < \($0)" } }
        if let t = f.text {
            add(.text(t)) {
                "(instr(id, \($0)) > 0 OR instr(name, \($0)) > 0 OR instr(coalesce(database, ''), \($0)) > 0)"
            }
        }
        var sql = "SELECT \(Self.entryColumns) FROM backups"
        if !clauses.isEmpty { sql += " WHERE " + clauses.joined(separator: " AND ") }
        sql += " ORDER BY created_unix DESC, id DESC"
        // Without a tag filter (applied to the decoded rows) SQLite stops at the limit.
        if let limit = f.limit, f.tag == nil { sql += " LIMIT \(max(0, limit))" }
        var out = [Entry]()
        try db.run(sql, values) { r in
            let entry = Self.entry(r)
            if let tag = f.tag, entry.tags[tag.key] != tag.value { return }
            if let limit = f.limit, out.count >= limit { return }
            out.append(entry)
        }
        return out.reversed()
    }

    /// The newest backup of each database (or name) and kind, WAL and binlogs left
    /// out, by subject and kind: what `status` shows. One query, one row a series;
    /// it reads the backups' rows only, through the index by kind, not the
    /// archived logs' however many there are.
    public func latestBackups() throws -> [Entry] {
        try seriesSummaries(byEngine: false).map(\.newest)
    }

    /// Per series of backups (subject, kind and, with `byEngine`, engine; WAL
    /// and binlogs left out): the newest backup and how many there are.
    public func seriesSummaries(byEngine: Bool) throws -> [(newest: Entry, count: Int)] {
        let kinds = try self.kinds().filter { !Self.logKinds.contains($0) }
        guard !kinds.isEmpty else { return [] }
        let engine = byEngine ? ", coalesce(engine, '')" : ""
        // SQLite takes the bare columns of a max() aggregate from the row that holds
        // the maximum; the key breaks ties of time by id.
        let sql = """
            SELECT \(Self.entryColumns), count(*), max(printf('%020.6f %s', created_unix, id)) FROM backups
            WHERE kind IN (\(kinds.indices.map { "?\($0 + 1)" }.joined(separator: ", ")))
            GROUP BY coalesce(database, name), kind\(engine)
            ORDER BY coalesce(database, name), kind\(engine)
            """
        var out = [(newest: Entry, count: Int)]()
        try db.run(sql, kinds.map { .text($0) }) { out.append((Self.entry($0), Int($0.int(15) ?? 0))) }
        return out
    }

    /// The newest archived file of each WAL and binlog archive (kind and name):
    /// one index lookup per archive.
    public func newestLogs() throws -> [Entry] {
        var out = [Entry]()
        for kind in try kinds() where Self.logKinds.contains(kind) {
            for name in try distinct("name", from: "backups WHERE kind = ?1", [.text(kind)]) {
                try db.run(
                    "SELECT \(Self.entryColumns) FROM backups WHERE kind = ?1 AND name = ?2 ORDER BY created_unix DESC, id DESC LIMIT 1",
                    [.text(kind), .text(name)]
                ) { out.append(Self.entry($0)) }
            }
        }
        return out
    }

    /// How many backups (archived logs included) the catalog holds, and the sum of
    /// their sizes: kept by triggers, read in O(1).
    public func totals() throws -> (backups: Int, bytes: Int64) {
        var result = (backups: 0, bytes: Int64(0))
        try db.run("SELECT backups, bytes FROM totals WHERE id = 1") { r in
            result = (Int(r.int(0) ?? 0), r.int(1) ?? 0)
        }
        return result
    }

    /// The databases (or names) the catalog holds backups of, sorted: one index
    /// lookup each, not a pass over the backups.
    public func subjects() throws -> [String] {
        try distinct("coalesce(database, name)", from: "backups", [])
    }

    /// True when the catalog holds a backup of `subject` (one index lookup).
    public func hasBackups(of subject: String) throws -> Bool {
        var found = false
        try db.run("SELECT 1 FROM backups WHERE coalesce(database, name) = ?1 LIMIT 1", [.text(subject)]) { _ in
            found = true
        }
        return found
    }

    private static let logKinds = Set(Manifest.logKinds.map(\.rawValue))

    /// The kinds present, by skipping through the index on kind (one lookup per kind).
    private func kinds() throws -> [String] {
        try distinct("kind", from: "backups", [])
    }

    /// The distinct values of an indexed column (its index leading after the fixed
    /// columns of `source`'s WHERE clause): one index lookup per value, not a scan.
    private func distinct(_ column: String, from source: String, _ values: [SQLiteDatabase.Value]) throws -> [String] {
        let more = source.contains("WHERE") ? " AND" : " WHERE"
        let sql = """
            WITH RECURSIVE v(x) AS (
                SELECT (SELECT min(\(column)) FROM \(source))
                UNION ALL
                SELECT (SELECT min(\(column)) FROM \(source)\(more) \(column) > v.x) FROM v WHERE v.x IS NOT NULL)
            SELECT x FROM v WHERE x IS NOT NULL
            """
        var out = [String]()
        try db.run(sql, values) { if let x = $0.text(0) { out.append(x) } }
        return out
    }

    private static let entryColumns = """
        id, name, kind, database, engine, host, created_at, size, stored_bytes, new_bytes, duration, tags, \
        verified_at, verified_ok, verify_mode
        """

    private static func entry(_ r: SQLiteDatabase.Row) -> Entry {
        let tags = (try? JSONDecoder().decode([String: String].self, from: Data((r.text(11) ?? "{}").utf8))) ?? [:]
        return Entry(
            id: r.text(0) ?? "", name: r.text(1) ?? "", kind: r.text(2) ?? "", database: r.text(3),
            engine: r.text(4),
            host: r.text(5), createdAt: r.text(6) ?? "", size: r.int(7) ?? 0, storedBytes: r.int(8) ?? 0,
            newBytes: r.int(9) ?? 0, durationSeconds: r.real(10) ?? 0, tags: tags, verifiedAt: r.text(12),
            verifiedOK: r.int(13).map { $0 != 0 }, verifyMode: r.text(14))
    }

    public func events(kind: String? = nil) throws -> [Event] {
        var out = [Event]()
        try db.run(
            "SELECT at, kind, status, name, database, engine, backup_type, duration, size, message FROM events"
                + (kind == nil ? "" : " WHERE kind = ?1") + " ORDER BY seq", kind.map { [.text($0)] } ?? []
        ) { r in
            var e = Event(
                kind: r.text(1) ?? "", status: r.text(2) ?? "", name: r.text(3) ?? "", database: r.text(4),
                engine: r.text(5),
                backupType: r.text(6), durationSeconds: r.real(7), size: r.int(8), message: r.text(9))
            e.at = r.text(0) ?? ""
            out.append(e)
        }
        return out
    }

    // MARK: Gaps

    /// A stretch longer than the expected interval without a backup.
    public struct Gap: Codable, Equatable, Sendable {
        public var database: String
        /// The backups before and after it (after: nil when the gap runs up to now).
        public var from: String
        public var to: String?
        public var hours: Double
        /// How many scheduled backups are missing in it.
        public var missed: Int
    }

    /// Per database (or name), every interval between consecutive backups (and
    /// from the last one to `now`) longer than `interval` plus `tolerance`.
    /// Archived WAL and binlogs are not scheduled backups: left out.
    public func gaps(
        interval: TimeInterval, tolerance: TimeInterval, database: String? = nil, now: Date = Date()
    ) throws -> [Gap] {
        var f = Filter()
        f.database = database
        let all = try backups(f).filter { !$0.isLogFile }
        var out = [Gap]()
        for (subject, entries) in Dictionary(grouping: all, by: \.subject).sorted(by: { $0.key < $1.key }) {
            let times = entries.compactMap { e in e.createdDate.map { (e.createdAt, $0) } }.sorted { $0.1 < $1.1 }
            for (a, b) in zip(times, times.dropFirst()) {
                let span = b.1.timeIntervalSince(a.1)
                if span > interval + tolerance {
                    out.append(
                        Gap(
                            database: subject, from: a.0, to: b.0, hours: span / 3600,
                            missed: Int((span - tolerance) / interval)))
                }
            }
            if let last = times.last, now.timeIntervalSince(last.1) > interval + tolerance {
                let span = now.timeIntervalSince(last.1)
                out.append(
                    Gap(
                        database: subject, from: last.0, to: nil, hours: span / 3600,
                        missed: Int((span - tolerance) / interval)))
            }
        }
        return out
    }
}
