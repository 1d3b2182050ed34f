import DatabaseDumps
import DedupStore
import Foundation
import Testing

/// `backup-db --engine native` and the restore of its backups against the real
/// PostgreSQL server: every table and the schema come back as they were (into a
/// server on several connections, and as one psql script), a backup taken under
/// load is consistent, a changed table alone costs new chunks, a worker killed
/// half way commits nothing.
extension PostgresServerTests {
@Suite struct NativeEngineTests {
    let connection = ["--host", PG.host, "--port", PG.port, "--user", PG.user]

    /// A database of many kinds of table: one of about 150 MB (dumped in parts),
    /// every common column type with NULLs and unicode, generated and dropped
    /// columns, a partitioned table, a foreign-key cycle, a trigger, a view and
    /// a materialized view, sequences, a large object, a quoted schema and name.
    static let richSchema = """
        CREATE TABLE big (id bigint PRIMARY KEY, a text, b text, c int);
        INSERT INTO big SELECT g, md5(g::text) || md5((g + 1)::text), repeat(md5(g::text), 2), g % 1000
            FROM generate_series(1, 900000) g;
        CREATE TABLE medium (id int PRIMARY KEY, label text, at timestamptz);
        INSERT INTO medium SELECT g, 'row ' || g, timestamptz '2026-01-01 00:00:00+00' + g * interval '1 minute'
            FROM generate_series(1, 50000) g;
        CREATE TABLE kinds (id serial PRIMARY KEY, doomed text, b bytea, n numeric(20,5), j jsonb, js json,
            arr int[], tags text[], u text, nul text, ts timestamptz, g int GENERATED ALWAYS AS (id * 2) STORED);
        INSERT INTO kinds (doomed, b, n, j, js, arr, tags, u, nul, ts)
            SELECT 'x', decode(md5(g::text), 'hex') || '\\x00ff'::bytea, g * 1.23456, jsonb_build_object('g', g, 'list', jsonb_build_array(g, 'ü')),
                   json_build_object('k', g)::json, ARRAY[g, -g, NULL], ARRAY['a,b', 'c"d', E'e\\\\f', NULL],
                   'ünïcödé ✓ 日本語 ' || g, CASE WHEN g % 3 = 0 THEN NULL ELSE E'tab\\there\\nline' END,
                   timestamptz '2026-06-01 12:00:00+02' + g * interval '1 second'
            FROM generate_series(1, 3000) g;
        ALTER TABLE kinds DROP COLUMN doomed;
        CREATE TABLE parted (k int NOT NULL, v text) PARTITION BY RANGE (k);
        CREATE TABLE parted_low PARTITION OF parted FOR VALUES FROM (0) TO (1000);
        CREATE TABLE parted_high PARTITION OF parted FOR VALUES FROM (1000) TO (2000);
        CREATE TABLE parted_rest PARTITION OF parted DEFAULT;
        INSERT INTO parted SELECT g, 'v' || g FROM generate_series(0, 2999) g;
        CREATE TABLE ring_a (id int PRIMARY KEY, b_id int);
        CREATE TABLE ring_b (id int PRIMARY KEY, a_id int REFERENCES ring_a);
        ALTER TABLE ring_a ADD FOREIGN KEY (b_id) REFERENCES ring_b;
        INSERT INTO ring_a SELECT g, NULL FROM generate_series(1, 500) g;
        INSERT INTO ring_b SELECT g, g FROM generate_series(1, 500) g;
        UPDATE ring_a SET b_id = id;
        CREATE TABLE audit_log (id bigserial PRIMARY KEY, what text);
        CREATE TABLE audited (id int PRIMARY KEY, v text);
        CREATE FUNCTION log_it() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN INSERT INTO audit_log (what) VALUES ('insert ' || NEW.id); RETURN NEW; END $$;
        CREATE TRIGGER audited_log AFTER INSERT ON audited FOR EACH ROW EXECUTE FUNCTION log_it();
        INSERT INTO audited SELECT g, 'a' || g FROM generate_series(1, 200) g;
        CREATE TABLE empty (id int);
        CREATE TABLE single (id int PRIMARY KEY, v text);
        INSERT INTO single VALUES (1, 'one');
        CREATE SCHEMA "Other Schema";
        CREATE TABLE "Other Schema"."Mixed ""Case"" Table" ("Weird Col" text, n int);
        INSERT INTO "Other Schema"."Mixed ""Case"" Table" SELECT 'w' || g, g FROM generate_series(1, 100) g;
        CREATE VIEW medium_view AS SELECT id, label FROM medium WHERE id % 2 = 0;
        CREATE MATERIALIZED VIEW medium_counts AS SELECT id % 10 AS bucket, count(*) FROM medium GROUP BY 1;
        CREATE SEQUENCE standalone START 100;
        SELECT nextval('standalone'), nextval('standalone');
        CREATE SEQUENCE unused START 7;
        SELECT lo_from_bytea(0, convert_to(repeat('large object ', 1000), 'UTF8'));
        """

    /// Every table's and materialized view's rows, by checksum; the large
    /// objects; the sequences; then the schema as pg_dump writes it.
    static func fingerprint(_ db: String) throws -> (data: String, schema: [UInt8]) {
        let relations = try PG.query(db, """
            SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE c.relkind IN ('r', 'm', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
              AND n.nspname NOT LIKE 'pg\\_toast%' ORDER BY 1
            """).split(separator: "\n").map(String.init)
        var parts = [String]()
        for r in relations {
            parts.append(r + " " + (try PG.query(db, "SELECT count(*) || ' ' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '-') FROM \(r) t")))
        }
        parts.append("lo " + (try PG.query(db, "SELECT coalesce(string_agg(md5(lo_get(oid)), ',' ORDER BY oid), '-') FROM pg_largeobject_metadata")))
        parts.append("seq " + (try PG.query(db, """
            SELECT string_agg(sequencename || '=' || coalesce(last_value::text, 'unset'), ',' ORDER BY sequencename) FROM pg_sequences
            """)))
        let schema = PG.withoutRestrictKey(try PG.run(["pg_dump", "--schema-only", "-h", PG.host, "-p", PG.port, "-U", PG.user, db]))
        return (parts.joined(separator: "\n"), schema)
    }

    func drop(_ dbs: [String]) {
        for db in dbs { _ = try? PG.psql("postgres", "DROP DATABASE IF EXISTS \(db) WITH (FORCE)") }
    }

    /// Flips a byte in the middle of the stored bytes of the chunk of `member`
    /// that stands at `fraction` of its list; returns where that chunk is.
    func damageChunk(of member: String, in m: Manifest, repo path: String, at fraction: Double) throws -> ChunkLocation {
        let repo = try Repository(path: path)
        var ids = [ChunkID]()
        try ChunkListReader(repository: repo, manifest: m, member: member).forEach { id, _ in ids.append(id) }
        let chunk = try #require(ids.dropFirst(Int(Double(ids.count) * fraction)).first)
        let loc = try #require(try repo.index().lookup(chunk))
        let fd = open(repo.localFile(loc.pack.key), O_RDWR)
        defer { close(fd) }
        var byte: UInt8 = 0
        let at = off_t(loc.offset) + off_t(PackFormat.entryHeaderSize) + off_t(loc.storedLength / 2)
        _ = pread(fd, &byte, 1, at)
        byte ^= 0x5A
        _ = pwrite(fd, &byte, 1, at)
        return loc
    }

    func onlyManifest(_ repo: String) throws -> Manifest {
        let all = try Repository(path: repo).manifests()
        return try #require(all.count == 1 ? all.first : nil, "\(all.map(\.id))")
    }

    @Test func everyTableAndTheSchemaComeBackByEachEngineAndAsAScript() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let db = "nat_src_\(getpid())"
        let copies = ["native", "script", "pgdump"].map { "nat_\($0)_\(getpid())" }
        defer { drop([db] + copies) }
        drop([db] + copies)
        try PG.psql("postgres", "CREATE DATABASE \(db)")
        try PG.psql(db, Self.richSchema)
        let source = try Self.fingerprint(db)
        #expect(source.data.split(separator: "\n").count >= 16, "\(source.data)")

        let cli = CLI(repo: dir + "/native")
        let backup = try cli.dedup(["backup-db", db, "--engine", "native", "--jobs", "3", "--json"] + connection)
        #expect(backup.status == 0, "\(backup.stderr)")
        let m = try onlyManifest(dir + "/native")
        #expect(m.dump?.format == "native" && m.database == db)
        let names = m.streams.map(\.name)
        #expect(Array(names.prefix(3)) == ["contents", "schema", "large-objects"] && names.last == "sequences", "\(names)")
        #expect(names.contains("data/public.big/3") && names.contains("data/public.parted_rest")
                && names.contains("data/Other Schema.Mixed \"Case\" Table"), "\(names)")
        #expect(try m.stream("data/public.medium").rows == 50_000)
        #expect(!names.contains("data/public.parted"), "a partitioned table holds no rows of its own")
        #expect(!names.contains("data/public.empty"), "an empty table (no pages) costs no member")

        // Into a new database on two connections.
        let restored = try cli.dedup(["restore", m.id, "--target-db", copies[0], "--create", "--jobs", "2"] + connection)
        #expect(restored.status == 0, "\(restored.stderr)")
        let native = try Self.fingerprint(copies[0])
        #expect(native.data == source.data)
        #expect(native.schema == source.schema, "the schema differs from the source's")

        // As one script, loaded by psql.
        let script = dir + "/shop.sql"
        let written = try cli.dedup(["restore", m.id, script])
        #expect(written.status == 0, "\(written.stderr)")
        try PG.psql("postgres", "CREATE DATABASE \(copies[1])")
        try PG.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", PG.host, "-p", PG.port, "-U", PG.user, "-d", copies[1], "-f", script])
        let loaded = try Self.fingerprint(copies[1])
        #expect(loaded.data == source.data)
        #expect(loaded.schema == source.schema)

        // The pg_dump engine on the same database restores the same.
        let other = CLI(repo: dir + "/pgdump")
        #expect(try other.dedup(["backup-db", db] + connection).status == 0)
        let pm = try onlyManifest(dir + "/pgdump")
        let viaPgDump = try other.dedup(["restore", pm.id, "--target-db", copies[2], "--create"] + connection)
        #expect(viaPgDump.status == 0, "\(viaPgDump.stderr)")
        #expect(try Self.fingerprint(copies[2]).data == source.data)

        // --force restores over the database it restored before.
        try PG.psql(copies[0], "INSERT INTO single VALUES (2, 'extra'); DELETE FROM medium WHERE id < 10")
        let again = try cli.dedup(["restore", m.id, "--target-db", copies[0], "--force", "--jobs", "2"] + connection)
        #expect(again.status == 0, "\(again.stderr)")
        #expect(try Self.fingerprint(copies[0]).data == source.data)
        // Without --force a database that is not empty is refused.
        let refused = try cli.dedup(["restore", m.id, "--target-db", copies[0]] + connection)
        #expect(refused.status == 1 && refused.stderr.contains("not empty"), "\(refused.stderr)")

        #expect(try cli.dedup(["verify", "--deep"]).status == 0)
    }

    @Test func aBackupUnderLoadRestoresToAConsistentState() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let db = "nat_load_\(getpid())", copy = "nat_load_copy_\(getpid())"
        defer { drop([db, copy]) }
        drop([db, copy])
        try PG.psql("postgres", "CREATE DATABASE \(db)")
        let pgbench = findExecutable("pgbench") ?? "/usr/lib/postgresql/15/bin/pgbench"
        try PG.run([pgbench, "-i", "-s", "3", "-q", "-h", PG.host, "-p", PG.port, "-U", PG.user, db])
        // Writers for the whole backup: each transaction moves the same delta
        // into an account, a teller, a branch and the history.
        let load = try ChildProcess(
            executable: pgbench, arguments: [pgbench, "-c", "2", "-T", "8", "-n", "-h", PG.host, "-p", PG.port, "-U", PG.user, db],
            stdinFD: open("/dev/null", O_RDONLY), stdoutFD: open("/dev/null", O_WRONLY))
        Thread.sleep(forTimeInterval: 1.5)
        let cli = CLI(repo: dir + "/repo")
        let backup = try cli.dedup(["backup-db", db, "--native", "--jobs", "2"] + connection)
        #expect(load.wait() == 0)
        #expect(backup.status == 0, "\(backup.stderr)")
        let m = try onlyManifest(dir + "/repo")
        #expect(try m.stream("data/public.pgbench_history").rows ?? 0 > 0, "the load ran during the backup")
        let restored = try cli.dedup(["restore", m.id, "--target-db", copy, "--create", "--jobs", "2"] + connection)
        #expect(restored.status == 0, "\(restored.stderr)")
        let sums = try PG.query(copy, """
            SELECT (SELECT sum(abalance) FROM pgbench_accounts) || ' ' || (SELECT sum(bbalance) FROM pgbench_branches)
                || ' ' || (SELECT sum(tbalance) FROM pgbench_tellers) || ' ' || (SELECT coalesce(sum(delta), 0) FROM pgbench_history)
            """).split(separator: " ")
        #expect(sums.count == 4 && Set(sums).count == 1, "the sums of the restored copy disagree: \(sums)")
        #expect(sums.first != "0", "the copy holds the load's transactions")
    }

    @Test func aSecondBackupStoresNewChunksForTheChangedTableAlone() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let db = "nat_change_\(getpid())"
        defer { drop([db]) }
        drop([db])
        try PG.psql("postgres", "CREATE DATABASE \(db)")
        try PG.psql(db, """
            CREATE TABLE orders (id int PRIMARY KEY, customer int, note text);
            INSERT INTO orders SELECT g, g % 500, repeat(md5(g::text), 2) FROM generate_series(1, 200000) g;
            CREATE TABLE customers (id int PRIMARY KEY, name text);
            INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 20000) g;
            CREATE TABLE products (id int PRIMARY KEY, title text);
            INSERT INTO products SELECT g, 'product ' || md5(g::text) FROM generate_series(1, 30000) g;
            """)
        let cli = CLI(repo: dir + "/repo")
        #expect(try cli.dedup(["backup-db", db, "--native", "--time", "2026-12-01T02:00:00Z"] + connection).status == 0)
        // 1% of one table's rows.
        try PG.psql(db, "UPDATE customers SET name = name || ' (moved)' WHERE id % 100 = 0")
        let second = try cli.dedup(["backup-db", db, "--native", "--time", "2026-12-02T02:00:00Z", "--json"] + connection)
        #expect(second.status == 0, "\(second.stderr)")
        let m = try JSONDecoder().decode(Manifest.self, from: Data(second.stdout))
        let listed = try cli.dedup(["list", "--tables", m.id, "--json"])
        #expect(listed.status == 0, "\(listed.stderr)")
        struct Row: Decodable { var table: String; var newChunks: Int?; var rows: Int64? }
        let rows = try JSONDecoder().decode([Row].self, from: Data(listed.stdout))
        let changed = rows.filter { ($0.newChunks ?? 0) > 0 }.map(\.table)
        #expect(changed == ["public.customers"], "\(rows)")
        #expect(rows.count == 3 && rows.allSatisfy { $0.newChunks != nil })
    }

    /// `--table` restores some tables with what belongs to them: their indexes,
    /// constraints, triggers, comments and sequences, the foreign keys among
    /// them and not those to tables left out; a partition with its parent;
    /// into a server and as a script alike. A pattern that matches nothing is
    /// refused, naming the tables there are.
    @Test func someTablesRestoreWithWhatBelongsToThem() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let db = "nat_pick_\(getpid())"
        let copies = (1...3).map { "nat_pick\($0)_\(getpid())" }
        defer { drop([db] + copies) }
        drop([db] + copies)
        try PG.psql("postgres", "CREATE DATABASE \(db)")
        try PG.psql(db, """
            CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL);
            INSERT INTO customers (name) SELECT 'c' || g FROM generate_series(1, 300) g;
            CREATE TABLE orders (id serial PRIMARY KEY, customer int REFERENCES customers, total numeric CHECK (total >= 0));
            CREATE INDEX orders_customer ON orders (customer);
            COMMENT ON TABLE orders IS 'the orders';
            CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.total := NEW.total; RETURN NEW; END $$;
            CREATE TRIGGER orders_touch BEFORE UPDATE ON orders FOR EACH ROW EXECUTE FUNCTION touch();
            INSERT INTO orders (customer, total) SELECT 1 + g % 300, g FROM generate_series(1, 5000) g;
            CREATE TABLE products (id int PRIMARY KEY, title text);
            INSERT INTO products SELECT g, 'p' || g FROM generate_series(1, 100) g;
            CREATE TABLE events (at int NOT NULL, what text) PARTITION BY RANGE (at);
            CREATE TABLE events_old PARTITION OF events FOR VALUES FROM (0) TO (100);
            CREATE TABLE events_new PARTITION OF events FOR VALUES FROM (100) TO (200);
            CREATE INDEX events_what ON events (what);
            INSERT INTO events SELECT g, 'e' || g FROM generate_series(0, 199) g;
            """)
        let cli = CLI(repo: dir + "/repo")
        #expect(try cli.dedup(["backup-db", db, "--native"] + connection).status == 0)
        let m = try onlyManifest(dir + "/repo")
        func tables(_ db: String) throws -> String {
            try PG.query(db, "SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND relkind IN ('r', 'p')")
        }
        func objects(_ db: String) throws -> String {
            try PG.query(db, """
                SELECT (SELECT string_agg(indexrelid::regclass::text, ',' ORDER BY indexrelid::regclass::text) FROM pg_index WHERE indrelid = 'orders'::regclass)
                    || ' ' || (SELECT string_agg(conname, ',' ORDER BY conname) FROM pg_constraint WHERE conrelid = 'orders'::regclass)
                    || ' ' || (SELECT string_agg(tgname, ',') FROM pg_trigger WHERE tgrelid = 'orders'::regclass AND NOT tgisinternal)
                    || ' ' || obj_description('orders'::regclass, 'pg_class') || ' ' || (SELECT last_value FROM orders_id_seq)
                """)
        }

        let two = try cli.dedup(["restore", m.id, "--target-db", copies[0], "--create", "--table", "public.orders", "--table", "cust*"] + connection)
        #expect(two.status == 0, "\(two.stderr)")
        #expect(try tables(copies[0]) == "customers,orders")
        #expect(try objects(copies[0]) == objects(db))
        #expect(try objects(copies[0]).contains("orders_customer_fkey"))
        #expect(try PG.query(copies[0], "SELECT count(*) || ' ' || sum(total) FROM orders") == PG.query(db, "SELECT count(*) || ' ' || sum(total) FROM orders"))

        // Alone, orders loses the key to the customers left out, and nothing else.
        let one = try cli.dedup(["restore", m.id, "--target-db", copies[1], "--create", "--table", "orders", "--table", "events_old"] + connection)
        #expect(one.status == 0, "\(one.stderr)")
        #expect(try tables(copies[1]) == "events,events_old,orders")
        #expect(try !objects(copies[1]).contains("fkey") && objects(copies[1]).contains("orders_customer,orders_pkey"))
        #expect(try PG.query(copies[1], "SELECT count(*) FROM events") == "100")
        #expect(try PG.query(copies[1], "SELECT count(*) FROM pg_indexes WHERE tablename = 'events_old'") == "1")

        // The same as a script.
        let script = dir + "/two.sql"
        let written = try cli.dedup(["restore", m.id, script, "--table", "orders", "--table", "customers"])
        #expect(written.status == 0, "\(written.stderr)")
        try PG.psql("postgres", "CREATE DATABASE \(copies[2])")
        try PG.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", PG.host, "-p", PG.port, "-U", PG.user, "-d", copies[2], "-f", script])
        #expect(try tables(copies[2]) == "customers,orders")
        #expect(try objects(copies[2]) == objects(db))

        let none = try cli.dedup(["restore", m.id, dir + "/x.sql", "--table", "public.nothing"])
        #expect(none.status == 1 && none.stderr.contains("matches no table") && none.stderr.contains("public.orders"), "\(none.stderr)")
    }

    /// A native backup in a bucket of `rclone serve s3`: members restored at
    /// once, each fetched ahead by its own restore, into a server on three
    /// connections and as a script.
    @Test(.enabled(if: S3Test.available, "tools/test starts rclone serve s3"))
    func aNativeBackupInABucketRestoresOnSeveralConnections() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let db = "nat_s3_\(getpid())", copy = "nat_s3_copy_\(getpid())"
        defer { drop([db, copy]) }
        drop([db, copy])
        try PG.psql("postgres", "CREATE DATABASE \(db)")
        try PG.psql(db, """
            CREATE TABLE a (id int PRIMARY KEY, v text);
            INSERT INTO a SELECT g, md5(g::text) || repeat('x', g % 50) FROM generate_series(1, 120000) g;
            CREATE TABLE b (id int PRIMARY KEY, a_id int REFERENCES a, w bytea);
            INSERT INTO b SELECT g, g, decode(md5(g::text), 'hex') FROM generate_series(1, 60000) g;
            CREATE TABLE c (id serial PRIMARY KEY, note text);
            INSERT INTO c (note) SELECT 'note ' || g FROM generate_series(1, 30000) g;
            """)
        let cli = CLI(repo: "s3://\(S3Test.bucketName())/native", env: S3Test.credentials)
        #expect(try cli.dedup(["init"]).status == 0)
        let backup = try cli.dedup(["backup-db", db, "--native", "--jobs", "3", "--json"] + connection,
                                   env: ["DBBACKUP_NATIVE_PART_MIB": "2"])
        #expect(backup.status == 0, "\(backup.stderr)")
        let m = try JSONDecoder().decode(Manifest.self, from: Data(backup.stdout))
        #expect(m.streams.filter { $0.name.hasPrefix("data/public.a/") }.count >= 3, "\(m.streams.map(\.name))")
        let restored = try cli.dedup(["restore", m.id, "--target-db", copy, "--create", "--jobs", "3"] + connection)
        #expect(restored.status == 0, "\(restored.stderr)")
        #expect(try Self.fingerprint(copy).data == Self.fingerprint(db).data)
        let script = try cli.dedup(["restore", m.id, dir + "/s3.sql"])
        #expect(script.status == 0, "\(script.stderr)")
    }

    /// An extension's configuration table (tools/test installs one): the rows
    /// a user added come back beside the one the extension creates itself,
    /// once each, as pg_dump would have it.
    @Test(.enabled(if: PG.env["DBBACKUP_TEST_PGHOST"] != nil && FileManager.default.fileExists(
        atPath: "/usr/share/postgresql/15/extension/dbbackup_test_config.control"), "tools/test installs the test extension"))
    func anExtensionsConfigurationRowsComeBack() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let db = "nat_ext_\(getpid())", copy = "nat_ext_copy_\(getpid())"
        defer { drop([db, copy]) }
        drop([db, copy])
        try PG.psql("postgres", "CREATE DATABASE \(db)")
        try PG.psql(db, """
            CREATE EXTENSION dbbackup_test_config;
            INSERT INTO dbbackup_test_settings (name, value) SELECT 'user ' || g, 'v' || g FROM generate_series(1, 50) g;
            """)
        let cli = CLI(repo: dir + "/repo")
        let backup = try cli.dedup(["backup-db", db, "--native", "--json"] + connection)
        #expect(backup.status == 0, "\(backup.stderr)")
        let m = try JSONDecoder().decode(Manifest.self, from: Data(backup.stdout))
        #expect(try m.stream("data/public.dbbackup_test_settings").rows == 50)
        let restored = try cli.dedup(["restore", m.id, "--target-db", copy, "--create"] + connection)
        #expect(restored.status == 0, "\(restored.stderr)")
        #expect(try PG.query(copy, "SELECT count(*) || ' ' || count(*) FILTER (WHERE builtin) FROM dbbackup_test_settings") == "51 1")
    }

    /// The rows do not depend on the sessions' settings: dates dumped from a
    /// database whose DateStyle is `SQL, DMY` load into one whose DateStyle is
    /// `ISO, MDY` as the same dates; a table whose row-level security would hide
    /// rows from the backup's role is an error, not a short table.
    @Test func rowsDoNotDependOnSessionSettingsNorHideBehindPolicies() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let db = "nat_style_\(getpid())", copy = "nat_style_copy_\(getpid())", role = "nat_rls_\(getpid())"
        defer {
            drop([db, copy])
            _ = try? PG.psql("postgres", "DROP ROLE IF EXISTS \(role)")
        }
        drop([db, copy])
        try PG.psql("postgres", "CREATE DATABASE \(db)")
        try PG.psql("postgres", "ALTER DATABASE \(db) SET DateStyle = 'SQL, DMY'")
        try PG.psql(db, """
            CREATE TABLE days (d date, t timestamptz, i interval, f float8);
            INSERT INTO days SELECT date '2026-01-02' + g, timestamptz '2026-03-04 05:06:07+00' + g * interval '1 hour',
                g * interval '1 day 2 hours', 1.0 / (g + 3) FROM generate_series(0, 40) g;
            """)
        let cli = CLI(repo: dir + "/repo")
        let backup = try cli.dedup(["backup-db", db, "--native", "--json"] + connection)
        #expect(backup.status == 0, "\(backup.stderr)")
        let m = try JSONDecoder().decode(Manifest.self, from: Data(backup.stdout))
        try PG.psql("postgres", "CREATE DATABASE \(copy)")
        try PG.psql("postgres", "ALTER DATABASE \(copy) SET DateStyle = 'ISO, MDY'")
        let restored = try cli.dedup(["restore", m.id, "--target-db", copy, "--force"] + connection)
        #expect(restored.status == 0, "\(restored.stderr)")
        let digest = "SELECT md5(string_agg(to_char(d, 'YYYY-MM-DD') || extract(epoch FROM t) || extract(epoch FROM i) || f::text, ',' ORDER BY d)) FROM days"
        #expect(try PG.query(copy, digest) == PG.query(db, digest))

        try PG.psql("postgres", "CREATE ROLE \(role) LOGIN")
        try PG.psql(db, """
            CREATE TABLE secrets (id int, owner name);
            INSERT INTO secrets SELECT g, CASE WHEN g % 2 = 0 THEN 'someone' ELSE '\(role)' END FROM generate_series(1, 10) g;
            ALTER TABLE secrets ENABLE ROW LEVEL SECURITY;
            CREATE POLICY mine ON secrets USING (owner = current_user);
            GRANT SELECT ON ALL TABLES IN SCHEMA public TO \(role);
            GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO \(role);
            """)
        let hidden = try cli.dedup(["backup-db", db, "--native", "--host", PG.host, "--port", PG.port, "--user", role])
        #expect(hidden.status == 1 && hidden.stderr.contains("secrets"), "\(hidden.stderr)")
    }

    /// A chunk of one table's member damaged in its pack: the restore into a
    /// server fails naming that table, its COPY keeps nothing, no other table
    /// starts after it; verify names the backup; the other tables' rows are whole.
    @Test func aDamagedMemberFailsTheRestoreNamingItsTable() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let db = "nat_damage_\(getpid())", copy = "nat_damage_copy_\(getpid())"
        defer { drop([db, copy]) }
        drop([db, copy])
        try PG.psql("postgres", "CREATE DATABASE \(db)")
        try PG.psql(db, """
            CREATE TABLE victim (id int PRIMARY KEY, v text);
            INSERT INTO victim SELECT g, md5(g::text) || md5((g * 3)::text) FROM generate_series(1, 200000) g;
            CREATE TABLE bystander (id int PRIMARY KEY, v text);
            INSERT INTO bystander SELECT g, 'b' || g FROM generate_series(1, 1000) g;
            """)
        let cli = CLI(repo: dir + "/repo")
        #expect(try cli.dedup(["backup-db", db, "--native", "--no-delta"] + connection).status == 0)
        let m = try onlyManifest(dir + "/repo")
        let loc = try damageChunk(of: "data/public.victim", in: m, repo: dir + "/repo", at: 0.5)

        let r = try cli.dedup(["restore", m.id, "--target-db", copy, "--create", "--jobs", "1"] + connection)
        #expect(r.status == 1, "\(r.stderr)")
        #expect(r.stderr.contains("public.victim") && r.stderr.contains(loc.pack.hex), "\(r.stderr)")
        #expect(try PG.query(copy, "SELECT count(*) FROM victim") == "0", "the table keeps none of a member that failed")
        #expect(try PG.query(copy, "SELECT count(*) FROM bystander") == "0", "no table starts after a failure (one connection, the largest first)")
        #expect(try cli.dedup(["verify", "--deep"]).status == 1)
    }

    /// On two connections: a member that fails stops the load of the large
    /// table under way on the other (its COPY canceled: it keeps no rows), and
    /// the error told is the first one.
    @Test func aFailedTableStopsTheLoadUnderWayOnTheOtherConnection() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let db = "nat_stop_\(getpid())", copy = "nat_stop_copy_\(getpid())"
        defer { drop([db, copy]) }
        drop([db, copy])
        try PG.psql("postgres", "CREATE DATABASE \(db)")
        try PG.psql(db, """
            CREATE TABLE large (id int, v text);
            INSERT INTO large SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 1500000) g;
            CREATE TABLE victim (id int PRIMARY KEY, v text);
            INSERT INTO victim SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
            """)
        let cli = CLI(repo: dir + "/repo")
        // Parts of 512 MiB: the large table is one member, loaded by one COPY.
        #expect(try cli.dedup(["backup-db", db, "--native", "--no-delta"] + connection, env: ["DBBACKUP_NATIVE_PART_MIB": "512"]).status == 0)
        let m = try onlyManifest(dir + "/repo")
        _ = try damageChunk(of: "data/public.victim", in: m, repo: dir + "/repo", at: 0)
        let r = try cli.dedup(["restore", m.id, "--target-db", copy, "--create", "--jobs", "2"] + connection)
        #expect(r.status == 1, "\(r.stderr)")
        #expect(r.stderr.contains("table public.victim was not loaded"), "\(r.stderr)")
        #expect(try PG.query(copy, "SELECT count(*) FROM large") == "0", "the load under way was canceled")
    }

    @Test func aWorkerKilledHalfWayFailsNamingItsTableAndCommitsNothing() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let db = "nat_kill_\(getpid())"
        defer { drop([db]) }
        drop([db])
        try PG.psql("postgres", "CREATE DATABASE \(db)")
        try PG.psql(db, """
            CREATE TABLE small (id int);
            INSERT INTO small SELECT generate_series(1, 10);
            CREATE TABLE victim (id int, v text);
            INSERT INTO victim SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 600000) g;
            """)
        let killer = Thread {
            for _ in 0..<2000 {
                let n = (try? PG.query("postgres", """
                    SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                    WHERE datname = '\(db)' AND query LIKE 'COPY%victim%' AND state = 'active'
                    """)) ?? "0"
                if n != "0" { return }
                Thread.sleep(forTimeInterval: 0.003)
            }
        }
        killer.start()
        let cli = CLI(repo: dir + "/repo")
        let r = try cli.dedup(["backup-db", db, "--native", "--jobs", "2"] + connection)
        #expect(r.status == 1, "\(r.stderr)")
        #expect(r.stderr.contains("public.victim"), "\(r.stderr)")
        #expect(manifestCount(dir + "/repo") == 0)
        // The next backup of the same database goes through.
        #expect(try cli.dedup(["backup-db", db, "--native"] + connection).status == 0)
        #expect(manifestCount(dir + "/repo") == 1)
    }
}
}
