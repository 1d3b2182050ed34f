import DatabaseDumps
import DedupStore
import Foundation
import Testing

/// `backup-db -d mariadb --engine native` and the restore of its backups
/// against the real MariaDB server: every table, its definition, triggers and
/// routines come back (into a server on several connections, and as one
/// script for the mariadb client); a backup under a writer is consistent; a
/// changed table alone costs new chunks; a worker killed half way commits nothing.
extension MariaDBTests {
    static let richSchema = """
        CREATE TABLE big (id INT PRIMARY KEY, a VARCHAR(100), b TEXT, c INT, KEY c_idx (c)) CHARACTER SET utf8mb4;
        INSERT INTO big SELECT seq, MD5(seq), REPEAT(MD5(seq), 4), seq % 1000 FROM seq_1_to_60000;
        CREATE TABLE kinds (id INT AUTO_INCREMENT PRIMARY KEY, bin LONGBLOB, d DECIMAL(20,5), j JSON, u VARCHAR(200),
            nul TEXT, ts DATETIME(6), f DOUBLE, e ENUM('x','y','z'), tabs TEXT, g VARCHAR(210) AS (CONCAT(u, '!')) STORED) CHARACTER SET utf8mb4;
        INSERT INTO kinds (bin, d, j, u, nul, ts, f, e, tabs)
            SELECT UNHEX(CONCAT(MD5(seq), '00FF5C0A0D09')), seq * 1.23456, JSON_OBJECT('k', seq, 'q', 'x"y'),
                CONCAT('ünïcödé ✓ 日本語 ', seq), IF(seq % 3 = 0, NULL, 'x'),
                TIMESTAMP('2026-06-01 12:00:00') + INTERVAL seq SECOND, seq / 7, ELT(1 + seq % 3, 'x', 'y', 'z'),
                CONCAT('tab\there\nline\\\\back ', seq, ' \\'quote\\'')
            FROM seq_1_to_3000;
        CREATE TABLE ring_a (id INT PRIMARY KEY, b_id INT);
        CREATE TABLE ring_b (id INT PRIMARY KEY, a_id INT, FOREIGN KEY (a_id) REFERENCES ring_a (id));
        ALTER TABLE ring_a ADD FOREIGN KEY (b_id) REFERENCES ring_b (id);
        SET FOREIGN_KEY_CHECKS = 0;
        INSERT INTO ring_a SELECT seq, seq FROM seq_1_to_500;
        INSERT INTO ring_b SELECT seq, seq FROM seq_1_to_500;
        SET FOREIGN_KEY_CHECKS = 1;
        CREATE TABLE audit_log (id BIGINT AUTO_INCREMENT PRIMARY KEY, what VARCHAR(100));
        CREATE TABLE audited (id INT PRIMARY KEY, v VARCHAR(20));
        CREATE TRIGGER audited_log AFTER INSERT ON audited FOR EACH ROW INSERT INTO audit_log (what) VALUES (CONCAT('insert ', NEW.id));
        INSERT INTO audited SELECT seq, CONCAT('a', seq) FROM seq_1_to_200;
        CREATE TABLE empty_one (id INT);
        CREATE TABLE single (id INT PRIMARY KEY, v VARCHAR(10));
        INSERT INTO single VALUES (1, 'one');
        CREATE TABLE nokey (v VARCHAR(20));
        INSERT INTO nokey SELECT CONCAT('n', seq % 10) FROM seq_1_to_1000;
        CREATE TABLE `Mixed Case` (`Weird Col` VARCHAR(20), n INT);
        INSERT INTO `Mixed Case` SELECT CONCAT('w', seq), seq FROM seq_1_to_100;
        CREATE TABLE parted (k INT NOT NULL, v VARCHAR(20), PRIMARY KEY (k)) PARTITION BY RANGE (k)
            (PARTITION p0 VALUES LESS THAN (1000), PARTITION p1 VALUES LESS THAN MAXVALUE);
        INSERT INTO parted SELECT seq, CONCAT('v', seq) FROM seq_0_to_2999;
        CREATE VIEW big_view AS SELECT id, a FROM big WHERE id % 2 = 0;
        CREATE PROCEDURE big_count() SELECT COUNT(*) FROM big;
        CREATE FUNCTION twice(x INT) RETURNS INT DETERMINISTIC RETURN x * 2;
        ANALYZE TABLE big;
        """

    /// Each table's rows by checksum, each definition, the triggers and routines.
    static func fingerprint(_ db: String) throws -> String {
        let tables = try Maria.sql("SELECT table_name FROM information_schema.tables WHERE table_schema = '\(db)' AND table_type = 'BASE TABLE' ORDER BY 1")
            .split(separator: "\n").map(String.init)
        var out = [String]()
        for t in tables {
            let q = "`\(db)`.`\(t.replacingOccurrences(of: "`", with: "``"))`"
            let count = try Maria.sql("SELECT COUNT(*) FROM \(q)")
            let sum = try Maria.sql("CHECKSUM TABLE \(q) EXTENDED").split(separator: "\t").last.map(String.init) ?? ""
            let rows = count + " " + sum
            let create = try Maria.sql("SHOW CREATE TABLE \(q)").split(separator: "\t", maxSplits: 1).last.map(String.init) ?? ""
            // The next AUTO_INCREMENT value follows the rows loaded, not the source's history.
            let definition = create.replacingOccurrences(of: #" AUTO_INCREMENT=\d+"#, with: "", options: .regularExpression)
            out.append("\(t) \(rows) \(definition)")
        }
        out.append(try Maria.sql("SELECT trigger_name, action_statement FROM information_schema.triggers WHERE trigger_schema = '\(db)' ORDER BY 1"))
        out.append(try Maria.sql("SELECT routine_name, routine_type FROM information_schema.routines WHERE routine_schema = '\(db)' ORDER BY 1"))
        out.append(try Maria.sql("SELECT table_name FROM information_schema.views WHERE table_schema = '\(db)' ORDER BY 1"))
        return out.joined(separator: "\n")
    }

    func native(_ db: String) -> [String] { ["backup-db", db, "--engine", "native"] + connection }
    /// restore takes no --db-type: the backup says.
    var server: [String] { ["--socket", Maria.socket, "--user", "root"] }

    @Test func nativeTablesDefinitionsAndTriggersComeBackIntoAServerAndAsAScript() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let db = "mnat_src_\(getpid())", copies = ["mnat_a_\(getpid())", "mnat_b_\(getpid())"]
        defer { _ = try? Maria.sql(([db] + copies).map { "DROP DATABASE IF EXISTS \($0);" }.joined()) }
        try Maria.sql("DROP DATABASE IF EXISTS \(db); CREATE DATABASE \(db); USE \(db);" + Self.richSchema)
        let source = try Self.fingerprint(db)
        #expect(source.split(separator: "\n").count > 12)
        let cli = CLI(repo: dir + "/repo")
        let backup = try cli.dedup(native(db) + ["--jobs", "3", "--json"], env: ["DBBACKUP_NATIVE_PART_MIB": "4"])
        #expect(backup.status == 0, "\(backup.stderr)")
        let m = try JSONDecoder().decode(Manifest.self, from: Data(backup.stdout))
        #expect(m.dump?.format == "native" && m.dump?.engine == "mariadb")
        #expect(m.dump?.binlogFile?.hasPrefix("binlog.") == true && (m.dump?.binlogPosition ?? 0) > 0 && m.dump?.gtid != nil)
        let names = m.streams.map(\.name)
        #expect(names.first == "contents" && names.last == "triggers" && names.contains("data/big/2"), "\(names)")
        #expect(try m.stream("data/kinds").rows == 3000)

        let restored = try cli.dedup(["restore", m.id, "--target-db", copies[0], "--create", "--jobs", "2"] + server)
        #expect(restored.status == 0, "\(restored.stderr)")
        #expect(try Self.fingerprint(copies[0]) == source)
        #expect(try Maria.sql("SELECT COUNT(*) FROM \(copies[0]).audit_log") == "200", "the trigger did not fire on the rows loaded")

        let script = dir + "/db.sql"
        let written = try cli.dedup(["restore", m.id, script])
        #expect(written.status == 0, "\(written.stderr)")
        try Maria.sql("CREATE DATABASE \(copies[1])")
        let loaded = try CLI.runExecutable(["sh", "-c", "mariadb --no-defaults --socket=\(Maria.socket) --user=root \(copies[1]) < \(script)"])
        #expect(loaded.status == 0, "\(loaded.stderr)")
        #expect(try Self.fingerprint(copies[1]) == source)

        // Over the database restored before, with --force.
        try Maria.sql("DELETE FROM \(copies[0]).big WHERE id < 100; INSERT INTO \(copies[0]).single VALUES (2, 'extra');")
        let again = try cli.dedup(["restore", m.id, "--target-db", copies[0], "--force"] + server)
        #expect(again.status == 0, "\(again.stderr)")
        #expect(try Self.fingerprint(copies[0]) == source)
    }

    /// Point-in-time recovery from a native backup: its tables, then the
    /// binlogs replayed from the position read under the snapshot's lock; the
    /// rows before the backup come once, those after it from the binlogs.
    @Test func pointInTimeRecoveryStartsFromANativeBackup() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let db = "mnat_pitr_\(getpid())", copy = "mnat_pitr_copy_\(getpid())"
        defer { _ = try? Maria.sql("DROP DATABASE IF EXISTS \(db); DROP DATABASE IF EXISTS \(copy);") }
        try Maria.sql("DROP DATABASE IF EXISTS \(db); CREATE DATABASE \(db); CREATE TABLE \(db).t (batch INT, n INT PRIMARY KEY);")
        try Maria.sql("USE \(db); INSERT INTO t SELECT 1, seq FROM seq_1_to_300;")
        let cli = CLI(repo: dir + "/repo")
        let backup = try cli.dedup(native(db) + ["--json"])
        #expect(backup.status == 0, "\(backup.stderr)")
        let id = try JSONDecoder().decode(Manifest.self, from: Data(backup.stdout)).id
        try Maria.sql("USE \(db); INSERT INTO t SELECT 2, seq FROM seq_301_to_500; FLUSH BINARY LOGS;")
        let archived = try CLI.run(["binlog", "archive", "--dedup-dir", cli.repo] + server)
        #expect(archived.status == 0, "\(archived.stderr)")
        let r = try CLI.run(["restore", "pitr", "-d", "mariadb", "--dedup-dir", cli.repo, "--base", id,
                             "--target-db", copy, "--create"] + server)
        #expect(r.status == 0, "\(r.out) \(r.stderr)")
        #expect(try Maria.sql("SELECT CONCAT(batch, ':', COUNT(*)) FROM \(copy).t GROUP BY batch ORDER BY batch") == "1:300\n2:200")
    }

    @Test func aNativeBackupUnderAWriterIsConsistent() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let db = "mnat_load_\(getpid())", copy = "mnat_load_copy_\(getpid())"
        defer { _ = try? Maria.sql("DROP DATABASE IF EXISTS \(db); DROP DATABASE IF EXISTS \(copy);") }
        try Maria.sql("""
            DROP DATABASE IF EXISTS \(db); CREATE DATABASE \(db); USE \(db);
            CREATE TABLE accounts (id INT PRIMARY KEY, balance BIGINT);
            CREATE TABLE ledger (id BIGINT AUTO_INCREMENT PRIMARY KEY, account INT, delta BIGINT, pad VARCHAR(200));
            INSERT INTO accounts SELECT seq, 0 FROM seq_1_to_1000;
            INSERT INTO ledger (account, delta, pad) SELECT 1 + seq % 1000, 0, REPEAT('x', 200) FROM seq_1_to_200000;
            ANALYZE TABLE ledger;
            """)
        // Each transaction moves the same amount into an account and the
        // ledger, without end, until the backup is done.
        let writer = try ChildProcess(
            executable: try #require(findExecutable("sh")),
            arguments: ["sh", "-c", """
                i=0; while :; do i=$((i + 1)); echo "START TRANSACTION; UPDATE accounts SET balance = balance + $i WHERE id = $((i % 1000 + 1)); INSERT INTO ledger (account, delta, pad) VALUES ($((i % 1000 + 1)), $i, 'w'); COMMIT;"; done | mariadb --no-defaults --socket=\(Maria.socket) --user=root \(db)
                """],
            stdinFD: open("/dev/null", O_RDONLY), stdoutFD: open("/dev/null", O_WRONLY))
        defer { kill(-writer.pid, SIGKILL); kill(writer.pid, SIGKILL); _ = writer.wait() }
        // The writer is under way (at most 30 s: a writer that never starts fails the test, not CI's clock).
        var waited = 0
        while waited < 1500, (Int(try Maria.sql("SELECT COUNT(*) FROM \(db).ledger")) ?? 0) < 200_050 {
            usleep(20_000)
            waited += 1
        }
        let cli = CLI(repo: dir + "/repo")
        // Parts of 8 MiB: the ledger is dumped in ranges of its key while it grows.
        let backup = try cli.dedup(native(db) + ["--jobs", "2"], env: ["DBBACKUP_NATIVE_PART_MIB": "8"])
        let after = Int(try Maria.sql("SELECT COUNT(*) FROM \(db).ledger")) ?? 0
        #expect(backup.status == 0, "\(backup.stderr)")
        let m = try #require(try Repository(path: dir + "/repo").manifests().first)
        // The ledger may be dumped in parts once it outgrows one.
        let seen = m.streams.filter { $0.name == "data/ledger" || $0.name.hasPrefix("data/ledger/") }
            .reduce(Int64(0)) { $0 + ($1.rows ?? 0) }
        #expect(seen > 200_050 && Int(seen) < after, "the snapshot fell while the writer wrote (\(seen) of \(after) rows)")
        #expect(m.streams.filter { $0.name.hasPrefix("data/ledger/") }.count > 1, "\(m.streams.map(\.name))")
        let restored = try cli.dedup(["restore", m.id, "--target-db", copy, "--create", "--jobs", "2"] + server)
        #expect(restored.status == 0, "\(restored.stderr)")
        let sums = try Maria.sql("SELECT (SELECT SUM(balance) FROM \(copy).accounts), (SELECT SUM(delta) FROM \(copy).ledger)")
            .split(separator: "\t")
        #expect(sums.count == 2 && sums[0] == sums[1], "the copy's sums disagree: \(sums)")
    }

    @Test func aSecondNativeBackupStoresNewChunksForTheChangedTableAlone() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let db = "mnat_change_\(getpid())"
        defer { _ = try? Maria.sql("DROP DATABASE IF EXISTS \(db)") }
        try Maria.sql("""
            DROP DATABASE IF EXISTS \(db); CREATE DATABASE \(db); USE \(db);
            CREATE TABLE orders (id INT PRIMARY KEY, note TEXT);
            INSERT INTO orders SELECT seq, REPEAT(MD5(seq), 2) FROM seq_1_to_100000;
            CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(50));
            INSERT INTO customers SELECT seq, CONCAT('customer ', seq) FROM seq_1_to_20000;
            """)
        let cli = CLI(repo: dir + "/repo")
        #expect(try cli.dedup(native(db) + ["--time", "2026-12-01T02:00:00Z"]).status == 0)
        try Maria.sql("UPDATE \(db).customers SET name = CONCAT(name, ' (moved)') WHERE id % 100 = 0")
        let second = try cli.dedup(native(db) + ["--time", "2026-12-02T02:00:00Z", "--json"])
        #expect(second.status == 0, "\(second.stderr)")
        let m = try JSONDecoder().decode(Manifest.self, from: Data(second.stdout))
        let listed = try cli.dedup(["list", "--tables", m.id, "--json"])
        struct Row: Decodable { var table: String; var newChunks: Int? }
        let rows = try JSONDecoder().decode([Row].self, from: Data(listed.stdout))
        #expect(rows.filter { ($0.newChunks ?? 0) > 0 }.map(\.table) == ["customers"], "\(rows)")
    }

    /// `--table` of a native MariaDB backup: the tables picked, each from its
    /// own definition (a foreign key to a table left out dropped), their rows
    /// and triggers; into a server and as a script.
    @Test func someTablesOfANativeBackupRestoreWithTheirTriggers() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let db = "mnat_pick_\(getpid())", copies = (1...3).map { "mnat_pick\($0)_\(getpid())" }
        defer { _ = try? Maria.sql(([db] + copies).map { "DROP DATABASE IF EXISTS \($0);" }.joined()) }
        try Maria.sql("""
            DROP DATABASE IF EXISTS \(db); CREATE DATABASE \(db); USE \(db);
            CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(40));
            INSERT INTO customers SELECT seq, CONCAT('c', seq) FROM seq_1_to_300;
            CREATE TABLE orders (id INT AUTO_INCREMENT PRIMARY KEY, customer INT, total INT,
                KEY (customer), CONSTRAINT orders_customer FOREIGN KEY (customer) REFERENCES customers (id));
            CREATE TABLE seen (what VARCHAR(40));
            CREATE TRIGGER orders_seen AFTER INSERT ON orders FOR EACH ROW INSERT INTO seen VALUES (CONCAT('o', NEW.id));
            INSERT INTO orders (customer, total) SELECT 1 + seq % 300, seq FROM seq_1_to_5000;
            CREATE TABLE products (id INT PRIMARY KEY);
            INSERT INTO products SELECT seq FROM seq_1_to_10;
            """)
        let cli = CLI(repo: dir + "/repo")
        #expect(try cli.dedup(native(db)).status == 0)
        let id = try #require(try Repository(path: dir + "/repo").manifests().first?.id)
        func tables(_ d: String) throws -> String {
            try Maria.sql("SELECT GROUP_CONCAT(table_name ORDER BY table_name) FROM information_schema.tables WHERE table_schema = '\(d)'")
        }
        func keys(_ d: String) throws -> String {
            try Maria.sql("SELECT COUNT(*) FROM information_schema.referential_constraints WHERE constraint_schema = '\(d)'")
        }
        func triggers(_ d: String) throws -> String {
            try Maria.sql("SELECT COUNT(*) FROM information_schema.triggers WHERE trigger_schema = '\(d)'")
        }
        let two = try cli.dedup(["restore", id, "--target-db", copies[0], "--create", "--table", "orders", "--table", "cust*"] + server)
        #expect(two.status == 0, "\(two.stderr)")
        #expect(try tables(copies[0]) == "customers,orders")
        #expect(try keys(copies[0]) == "1" && triggers(copies[0]) == "1")
        #expect(try Maria.sql("SELECT COUNT(*), SUM(total) FROM \(copies[0]).orders") == Maria.sql("SELECT COUNT(*), SUM(total) FROM \(db).orders"))

        let one = try cli.dedup(["restore", id, "--target-db", copies[1], "--create", "--table", "orders", "--table", "seen"] + server)
        #expect(one.status == 0, "\(one.stderr)")
        #expect(try tables(copies[1]) == "orders,seen" && keys(copies[1]) == "0" && triggers(copies[1]) == "1")
        let seen = try Maria.sql("SELECT COUNT(*) FROM \(copies[1]).seen")
        #expect(seen == "5000", "the rows loaded, not the trigger: \(seen)")

        let script = dir + "/two.sql"
        #expect(try cli.dedup(["restore", id, script, "--table", "orders", "--table", "customers"]).status == 0)
        try Maria.sql("CREATE DATABASE \(copies[2])")
        let loaded = try CLI.runExecutable(["sh", "-c", "mariadb --no-defaults --socket=\(Maria.socket) --user=root \(copies[2]) < \(script)"])
        #expect(loaded.status == 0, "\(loaded.stderr)")
        #expect(try tables(copies[2]) == "customers,orders" && keys(copies[2]) == "1" && triggers(copies[2]) == "1")
        #expect(try Maria.sql("SELECT COUNT(*) FROM \(copies[2]).orders") == "5000")
    }

    /// The rows do not depend on the sessions' settings: TIMESTAMPs dumped while
    /// the server's time zone is +05:00 load as the same instants after it is
    /// UTC again; a 0 in an AUTO_INCREMENT column stays 0; latin1 text keeps its
    /// characters; into a server and through the script.
    @Test func nativeRowsDoNotDependOnTheSessionsSettings() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let db = "mnat_tz_\(getpid())", copies = ["mnat_tz_a_\(getpid())", "mnat_tz_b_\(getpid())"]
        let zone = try Maria.sql("SELECT @@GLOBAL.time_zone")
        defer {
            _ = try? Maria.sql("SET GLOBAL time_zone = '\(zone)'")
            _ = try? Maria.sql(([db] + copies).map { "DROP DATABASE IF EXISTS \($0);" }.joined())
        }
        try Maria.sql("""
            DROP DATABASE IF EXISTS \(db); CREATE DATABASE \(db); USE \(db);
            CREATE TABLE moments (id INT AUTO_INCREMENT PRIMARY KEY, at TIMESTAMP NULL, note VARCHAR(20) CHARACTER SET latin1);
            SET SESSION sql_mode = 'NO_AUTO_VALUE_ON_ZERO', SESSION time_zone = '+00:00';
            INSERT INTO moments VALUES (0, '2026-06-01 00:00:00', 'zéro');
            INSERT INTO moments (at, note) SELECT TIMESTAMP('2026-06-01 12:00:00') + INTERVAL seq HOUR, CONCAT('çà ', seq) FROM seq_1_to_50;
            """)
        let digest = "SELECT GROUP_CONCAT(id, ':', UNIX_TIMESTAMP(at), ':', HEX(note) ORDER BY id) FROM %@.moments"
        let source = try Maria.sql(digest.replacingOccurrences(of: "%@", with: db))
        try Maria.sql("SET GLOBAL time_zone = '+05:00'")
        let cli = CLI(repo: dir + "/repo")
        #expect(try cli.dedup(native(db)).status == 0)
        try Maria.sql("SET GLOBAL time_zone = '+00:00'")
        let id = try #require(try Repository(path: dir + "/repo").manifests().first?.id)
        let restored = try cli.dedup(["restore", id, "--target-db", copies[0], "--create"] + server)
        #expect(restored.status == 0, "\(restored.stderr)")
        #expect(try Maria.sql(digest.replacingOccurrences(of: "%@", with: copies[0])) == source)
        let script = dir + "/tz.sql"
        #expect(try cli.dedup(["restore", id, script]).status == 0)
        try Maria.sql("CREATE DATABASE \(copies[1])")
        let loaded = try CLI.runExecutable(["sh", "-c", "mariadb --no-defaults --socket=\(Maria.socket) --user=root \(copies[1]) < \(script)"])
        #expect(loaded.status == 0, "\(loaded.stderr)")
        #expect(try Maria.sql(digest.replacingOccurrences(of: "%@", with: copies[1])) == source)
    }

    @Test func aNativeWorkerKilledHalfWayFailsNamingItsTableAndCommitsNothing() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let db = "mnat_kill_\(getpid())"
        defer { _ = try? Maria.sql("DROP DATABASE IF EXISTS \(db)") }
        try Maria.sql("""
            DROP DATABASE IF EXISTS \(db); CREATE DATABASE \(db); USE \(db);
            CREATE TABLE small (id INT); INSERT INTO small SELECT seq FROM seq_1_to_10;
            CREATE TABLE victim (id INT, v TEXT); INSERT INTO victim SELECT seq, REPEAT(MD5(seq), 8) FROM seq_1_to_400000;
            """)
        let killer = Thread {
            for _ in 0..<3000 {
                let ids = (try? Maria.sql("SELECT id FROM information_schema.processlist WHERE db = '\(db)' AND info LIKE 'SELECT%victim%'")) ?? ""
                if let id = ids.split(separator: "\n").first {
                    _ = try? Maria.sql("KILL \(id)")
                    return
                }
                usleep(2000)
            }
        }
        killer.start()
        let cli = CLI(repo: dir + "/repo")
        let r = try cli.dedup(native(db) + ["--jobs", "2"])
        #expect(r.status == 1, "\(r.stderr)")
        #expect(r.stderr.contains("victim"), "\(r.stderr)")
        #expect(manifestCount(dir + "/repo") == 0)
        #expect(try cli.dedup(native(db)).status == 0)
    }
}
