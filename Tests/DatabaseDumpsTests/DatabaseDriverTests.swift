import DatabaseDumps
import DedupStore
import Testing

/// The factory and what a driver decides before it talks to a server.
@Suite struct DatabaseDriverTests {
    let address = ServerAddress(host: "127.0.0.1", port: 1, user: "nobody")

    @Test func eachEngineHasItsDriver() {
        let pg = DatabaseEngine.postgres.driver(address: address, settings: DumpSettings(postgresFormat: .plain))
        #expect(pg is PostgresDriver && pg is any ClusterBackupDriver)
        #expect((pg as? PostgresDriver)?.settings.postgresFormat == .plain)
        #expect(pg.engine == .postgres && pg.address == address)
        for engine in [DatabaseEngine.mysql, .mariadb] {
            let driver = engine.driver(address: address)
            #expect(driver is MariaDBDriver && !(driver is any ClusterBackupDriver))
            #expect(driver.engine == engine)
        }
    }

    func info(_ engine: String, format: String) -> Manifest.DumpInfo {
        Manifest.DumpInfo(engine: engine, serverVersion: "15", server: "db1", tool: "t", toolVersion: "t 1",
                          format: format, databaseSize: nil)
    }

    /// A dump a driver does not load is refused before any connection (the
    /// address above reaches no server).
    @Test func aDriverLoadsOnlyItsOwnDumps() throws {
        let pg = DatabaseEngine.postgres.driver(address: address)
        #expect(try pg.restorePlan(for: info("postgres", format: "tar"), into: "copy", create: false, force: false) == nil)
        #expect(try pg.restorePlan(for: info("mariadb", format: "sql"), into: "copy", create: false, force: false) == nil)
        let maria = DatabaseEngine.mariadb.driver(address: address)
        #expect(try maria.restorePlan(for: info("postgres", format: "custom"), into: "copy", create: false, force: false) == nil)
        // Its own dump: the target is checked on the server, which is unreachable.
        #expect(throws: DatabaseError.self) {
            try pg.restorePlan(for: info("postgres", format: "custom"), into: "copy", create: false, force: false)
        }
    }

    @Test func aConnectionStringIsRefusedBeforeConnecting() {
        let pg = DatabaseEngine.postgres.driver(address: address)
        #expect(throws: DatabaseError.invalidArgument("--database takes a database name, not a connection string; give --host, --port, --user and PGPASSWORD instead")) {
            try pg.check(database: "host=evil password=x")
        }
    }
}
