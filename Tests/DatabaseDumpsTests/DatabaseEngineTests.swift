import DatabaseDumps
import Testing

/// The engine's names: one place for the aliases, raw values as manifests hold them.
@Suite struct DatabaseEngineTests {
    @Test func rawValuesAreWhatManifestsRecord() {
        #expect(DatabaseEngine.allCases.map(\.rawValue) == ["postgres", "mysql", "mariadb"])
        for engine in DatabaseEngine.allCases {
            #expect(DatabaseEngine(rawValue: engine.rawValue) == engine)
            #expect(DatabaseEngine(name: engine.rawValue) == engine)
            #expect(engine.names.first == engine.rawValue)
        }
    }

    @Test func aliasesAndCaseNameTheSameEngine() {
        for name in ["postgres", "postgresql", "pg", "pgsql", "PostgreSQL", "POSTGRES", "Pg"] {
            #expect(DatabaseEngine(name: name) == .postgres, "\(name)")
        }
        for name in ["mysql", "MySQL"] { #expect(DatabaseEngine(name: name) == .mysql, "\(name)") }
        for name in ["mariadb", "MariaDB", "maria"] { #expect(DatabaseEngine(name: name) == .mariadb, "\(name)") }
    }

    @Test func otherNamesAreNoEngine() {
        for name in ["", "oracle", "sqlite", "postgres ", " pg", "my", "mongo", "postgre"] {
            #expect(DatabaseEngine(name: name) == nil, "\(name.debugDescription)")
        }
    }

    @Test func noNameBelongsToTwoEngines() {
        let names = DatabaseEngine.allCases.flatMap(\.names)
        #expect(Set(names).count == names.count)
        #expect(names.allSatisfy { $0 == $0.lowercased() })
    }

    @Test func familiesAndDisplayNames() {
        #expect(!DatabaseEngine.postgres.isMySQLFamily)
        #expect(DatabaseEngine.mysql.isMySQLFamily && DatabaseEngine.mariadb.isMySQLFamily)
        #expect(DatabaseEngine.allCases.map(\.displayName) == ["PostgreSQL", "MySQL", "MariaDB"])
    }
}
