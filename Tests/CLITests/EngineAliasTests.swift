import DatabaseDumps
import Foundation
import Testing

/// `-d/--db-type` reads the same names in every command (DatabaseEngine(name:)):
/// what backup-db accepts, restore pitr and backup accept too, and a name no
/// engine has is a usage error (exit 64) everywhere.
@Suite struct EngineAliasTests {
    /// Every name of every engine, and one in capitals.
    static let accepted = DatabaseEngine.allCases.flatMap(\.names) + ["PostgreSQL"]

    @Test func restoreAcceptsTheNamesBackupDBAccepts() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        let base = try #require(CLI.committedID(try cli.dedup(["backup", "-", "--name", "base"], stdin: Array("x\n".utf8))))
        // What restore pitr says of a plain file backup, by the engine it took.
        let refusal: [DatabaseEngine: String] = [
            .postgres: "is a file backup, not a base backup", .mariadb: "is not a database dump made by",
            .mysql: "restore pitr for MySQL is not supported yet",
        ]
        for name in Self.accepted {
            let engine = try #require(DatabaseEngine(name: name))
            // No server listens on port 1: parsed, then the connection fails (exit 1).
            let backup = try cli.dedup(["backup-db", "shop", "-d", name, "--host", "127.0.0.1", "--port", "1", "--user", "nobody"])
            #expect(backup.status == 1 && backup.stderr.contains("cannot connect"), "backup-db -d \(name): \(backup.stderr)")
            let pitr = try CLI.run(["restore", "pitr", "-d", name, "--dedup-dir", cli.repo, "--base", base])
            #expect(pitr.status == 1 && pitr.stderr.contains(refusal[engine] ?? "?"), "restore pitr -d \(name): \(pitr.stderr)")
            let file = try cli.dedup(["backup", "-", "--name", "n", "--db-type", name], stdin: Array("x\n".utf8))
            #expect(file.status == 0, "backup --db-type \(name): \(file.stderr)")
        }
    }

    @Test func aliasesAreRecordedAsTheEngine() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        let r = try cli.dedup(["backup", "-", "--name", "n", "--db-type", "postgresql", "--json"], stdin: Array("x\n".utf8))
        let manifest = try JSONSerialization.jsonObject(with: Data(r.stdout)) as? [String: Any]
        #expect(r.status == 0 && manifest?["dbType"] as? String == "postgres", "\(r.stderr)")
    }

    @Test func aNameNoEngineHasIsAUsageErrorEverywhere() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        for name in ["oracle", "postgre", ""] {
            let backupDB = try cli.dedup(["backup-db", "shop", "-d", name])
            #expect(backupDB.status == 64, "backup-db -d \(name): \(backupDB.stderr)")
            let pitr = try CLI.run(["restore", "pitr", "-d", name, "--dedup-dir", dir + "/repo", "--base", "x"])
            #expect(pitr.status == 64, "restore pitr -d \(name): \(pitr.stderr)")
            let file = try cli.dedup(["backup", "-", "--db-type", name], stdin: Array("x\n".utf8))
            #expect(file.status == 64, "backup --db-type \(name): \(file.stderr)")
        }
        #expect(manifestCount(dir + "/repo") == 0)
    }
}
