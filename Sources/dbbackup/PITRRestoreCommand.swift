import ArgumentParser
import DatabaseDumps
import DedupStore
import Foundation

struct RestoreGroup: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Point-in-time recovery (restore pitr). A single backup: dbbackup dedup restore.",
        subcommands: [RestorePITR.self])
}

struct RestorePITR: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pitr",
        abstract: "Recover a database to a point in time from a base backup or dump plus archived WAL or binlogs.",
        discussion: """
        PostgreSQL: lays out the base backup in --target-dir (absent or empty), then
        writes the recovery settings into its postgresql.auto.conf (restore_command
        = dbbackup wal restore ... with this repository, recovery_target_time,
        recovery_target_action = promote, archive_mode = off so the copy does not
        archive into the original's WAL archive) and recovery.signal, and prints how
        to start the server. The server replays archived WAL up to the target time,
        then opens for writes.
          dbbackup restore pitr --base 2026-11-21_020000_basebackup \\
              --target-time "2026-11-21 12:00:00+00" --target-dir /var/lib/postgresql/15/restored

        MySQL/MariaDB (-d mariadb): restores the dump into --target-db (created with
        --create), then replays the archived binlogs from the dump's position up to
        the target time, in one session, filtered to the dump's database.
          dbbackup restore pitr -d mariadb --base 2026-11-21_020000_shop \\
              --target-time "2026-11-21 12:00:00" --target-db shop_pitr --create

        A time without a zone is local time; it is printed back in UTC. Without
        --target-time, recovery goes to the end of the archive.
        """)

    @OptionGroup var store: StoreOptions
    @OptionGroup var archiveName: ArchiveNameOption

    @Option(
        help: ArgumentHelp(
            "The base backup (PostgreSQL) or dump (MySQL/MariaDB) to start from: an id or unique prefix.",
            valueName: "id"))
    var base: String

    @Option(
        help: ArgumentHelp(
            "Recover up to this time (e.g. \"2026-11-21 12:00:00+00\"); default: the end of the archive.",
            valueName: "time"))
    var targetTime: String?

    @Option(help: ArgumentHelp("PostgreSQL: the new data folder (absent or empty).", valueName: "dir"))
    var targetDir: String?

    @Option(name: [.customShort("d"), .long], help: ArgumentHelp(
        "Database engine (\(DatabaseEngine.aliasHelp); default: the base backup's).", valueName: "engine"))
    var dbType: DatabaseEngine?

    @Option(help: ArgumentHelp("MySQL/MariaDB: the database to restore into.", valueName: "database"))
    var targetDb: String?

    @Flag(help: "MySQL/MariaDB: create --target-db first if it does not exist.")
    var create = false

    @Flag(help: "MySQL/MariaDB: restore into a --target-db that is not empty.")
    var force = false

    @OptionGroup var server: ServerOptions

    func validate() throws {
        if let targetTime, Timestamps.parse(targetTime) == nil {
            throw ValidationError(
                "cannot read --target-time '\(targetTime)'; write it like 2026-11-21 12:00:00+00 (or without the zone for local time)"
            )
        }
    }

    func run() throws {
        try reportingErrors(noSpaceHint: "the disk receiving the restore is full") {
            let repo = try store.open()
            let manifest = try repo.loadManifest(try repo.resolveManifestID(base))
            let target = targetTime.flatMap(Timestamps.parse)
            switch try dbType ?? recordedEngine(of: manifest) {
            case .postgres:
                try recoverPostgres(repo, base: manifest, target: target)
            case .mariadb:
                try recoverMariaDB(repo, dump: manifest, target: target)
            case .mysql:
                // mysqlbinlog applies --database after --rewrite-db, and GTIDs of
                // transactions the server ran already are skipped: not built yet.
                throw DatabaseError.invalidArgument(
                    "restore pitr for MySQL is not supported yet (MariaDB is); restore the dump with dbbackup dedup restore --target-db and replay the binlogs with mysqlbinlog yourself"
                )
            }
        }
    }

    /// The engine the backup records (PostgreSQL when it records none).
    private func recordedEngine(of manifest: Manifest) throws -> DatabaseEngine {
        guard let recorded = manifest.dump?.engine ?? manifest.dbType else { return .postgres }
        guard let engine = DatabaseEngine(name: recorded) else { throw DatabaseError.unsupportedEngine(recorded) }
        return engine
    }

    // MARK: PostgreSQL

    private func recoverPostgres(_ repo: Repository, base: Manifest, target: Date?) throws {
        guard base.backupKind == .basebackup else {
            throw DatabaseError.invalidArgument(
                "\(base.id) is a \(base.kind) backup, not a base backup; take one with dbbackup dedup backup-db --base-backup"
            )
        }
        guard let targetDir = targetDir.map(StoreOptions.expand) else {
            throw DatabaseError.invalidArgument(
                "give --target-dir: the folder the recovered cluster goes to (absent or empty)")
        }
        guard server.isEmpty, targetDb == nil, !create, !force else {
            throw DatabaseError.invalidArgument(
                "PostgreSQL recovers a whole cluster into --target-dir: --target-db, --create, --force and connection flags are for MySQL/MariaDB"
            )
        }
        if let target, let taken = base.createdDate, target < taken {
            throw DatabaseError.invalidArgument(
                "the base backup \(base.id) was taken at \(base.createdAt), after the target time \(Timestamps.iso8601(target)): choose an older base backup"
            )
        }
        let name = try walArchiveName(for: base, in: repo)
        // Before anything is unpacked: it refuses an encrypted repository without a key file.
        let restoreCommand = try ServerSideCommand.make(
            ["wal", "restore", "\"%f\"", "\"%p\""], repository: repo, name: name, store: store)
        try prepareEmptyDirectory(targetDir)

        // The base backup, verified chunk by chunk, into tar.
        let restorer = Restorer(repository: repo)
        if let failure = try restorer.restore(
            base.id, intoProgram: ["tar", "--extract", "--file=-", "--directory=\(targetDir)"])
        {
            throw DatabaseError.invalidArgument(
                "tar \(failure) while unpacking the base backup into \(targetDir) (its messages are above); the folder holds a partial copy: empty it before trying again"
            )
        }
        guard FileIO.exists(targetDir + "/PG_VERSION") else {
            throw DatabaseError.invalidArgument(
                "\(base.id) unpacked, but \(targetDir) holds no PG_VERSION: it is not a PostgreSQL base backup")
        }

        let settings = PostgresRecoverySettings(baseBackup: base.id, archive: name, repository: repo.path,
                                                restoreCommand: restoreCommand, target: target)
        let autoConf = targetDir + "/postgresql.auto.conf"
        let existing = (try? FileIO.readFile(autoConf)) ?? []
        try FileIO.writeFileAtomically(autoConf, existing + Array(settings.text(at: Date()).utf8))
        try FileIO.writeFileAtomically(targetDir + "/recovery.signal", [])
        let owner = matchOwner(of: targetDir, files: ["postgresql.auto.conf", "recovery.signal"])

        Terminal.out("base backup \(base.id) (taken \(base.createdAt)) restored into \(targetDir)")
        Terminal.out(
            "recovery: WAL from archive '\(name)' up to \(target.map(PostgresTime.utc) ?? "the end of the archive"), then promote"
        )
        if !FileIO.exists(targetDir + "/postgresql.conf") {
            Terminal.out(
                "the base backup has no postgresql.conf (Debian keeps it in /etc/postgresql): copy the server's postgresql.conf, pg_hba.conf and pg_ident.conf into \(targetDir) first"
            )
        }
        let user = owner.map { " (as the OS user \($0))" } ?? ""
        Terminal.out(
            "start it\(user): pg_ctl -D \(targetDir) -o '-p <free port>' start  — the server then replays WAL and opens for writes at the target"
        )
    }

    /// The WAL archive that holds the base backup's cluster: the one whose
    /// segments carry its system identifier, else --name.
    private func walArchiveName(for base: Manifest, in repo: Repository) throws -> String {
        guard let id = base.dump?.systemIdentifier else { return archiveName.name }
        let names = try WALArchive.names(in: repo)
        if names.contains(archiveName.name) && archiveName.name != WALArchive.defaultName { return archiveName.name }
        if let name = try WALArchive.name(holding: id, in: repo) { return name }
        Terminal.notice(
            "no archived WAL carries the base backup's system identifier \(id); using the archive '\(archiveName.name)'"
        )
        return archiveName.name
    }

    /// Creates `path` (mode 0700, as PostgreSQL wants) or checks that it is empty.
    private func prepareEmptyDirectory(_ path: String) throws {
        if FileIO.exists(path) {
            guard FileIO.isDirectory(path) else {
                throw DatabaseError.invalidArgument("\(path) exists and is not a folder")
            }
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
            guard entries.isEmpty else {
                throw DatabaseError.invalidArgument("\(path) is not empty; recovery needs an empty or new folder")
            }
        } else {
            try FileIO.makeDirectories(path)
        }
        chmod(path, 0o700)
    }

    /// As root, gives the data folder itself and the files written here to the
    /// owner of its files (tar kept the server's user on them); returns that
    /// user's name.
    private func matchOwner(of dir: String, files: [String]) -> String? {
        var st = stat()
        guard stat(dir + "/PG_VERSION", &st) == 0 else { return nil }
        if geteuid() == 0 {
            for path in [dir] + files.map({ dir + "/" + $0 }) { _ = chown(path, st.st_uid, st.st_gid) }
        }
        return getpwuid(st.st_uid).map { String(cString: $0.pointee.pw_name) }
    }

    // MARK: MySQL / MariaDB

    private func recoverMariaDB(_ repo: Repository, dump: Manifest, target: Date?) throws {
        guard dump.backupKind == .dump, let info = dump.dump, let source = dump.database else {
            throw DatabaseError.invalidArgument("\(dump.id) is not a database dump made by dbbackup dedup backup-db")
        }
        guard let startFile = info.binlogFile, let startPosition = info.binlogPosition else {
            throw DatabaseError.invalidArgument(
                "dump \(dump.id) records no binary log position (was log_bin on?); it can be restored, but not rolled forward"
            )
        }
        guard let targetDb else {
            throw DatabaseError.invalidArgument("give --target-db: the database to recover into")
        }
        guard targetDir == nil else {
            throw DatabaseError.invalidArgument(
                "--target-dir is for PostgreSQL; MySQL/MariaDB recover into --target-db")
        }
        if let target, let taken = dump.createdDate, target < taken {
            throw DatabaseError.invalidArgument(
                "the dump \(dump.id) was taken at \(dump.createdAt), after the target time \(Timestamps.iso8601(target)): choose an older dump"
            )
        }
        let archive = try BinlogArchive(
            repository: repo, name: try BinlogArchive.name(for: info, given: archiveName.name, in: repo))
        let chain = try archive.replayChain(from: startFile)
        // The archive must reach the target: a replay that runs out of binlogs
        // before it would quietly stop short.
        if let target, let last = chain.last, let finished = last.createdDate, finished < target {
            throw DatabaseError.invalidArgument(
                "the archived binlogs end with \(last.archive?.file ?? last.id), last written at \(last.createdAt), before the target time \(Timestamps.iso8601(target)); run dbbackup binlog archive (--include-current for the binlog being written) and try again"
            )
        }

        // 1. The dump, into the target database.
        let address = server.address
        let plan = try MariaDBRestorePlan.prepare(address: address, target: targetDb, create: create, force: force)
        let restorer = Restorer(repository: repo)
        if info.format == NativeFormat.name {
            // A backup of the native engine: its tables on several connections.
            let loader = MariaDBNativeRestore(
                repository: repo, manifest: dump, contents: try NativeContents.read(dump, from: repo), address: address,
                target: targetDb, jobs: min(8, max(1, ProcessInfo.processInfo.activeProcessorCount)))
            try loader.run(client: plan.arguments)
        } else if let failure = try restorer.restore(dump.id, intoProgram: plan.arguments) {
            throw DatabaseError.invalidArgument(
                "\(plan.arguments[0]) \(failure) while loading the dump (its messages are above); database \(targetDb) may be partly restored"
            )
        }
        Terminal.out(
            "dump \(dump.id) restored into \(targetDb); replaying \(chain.count) binlog(s) from \(startFile):\(startPosition) up to \(target.map(PostgresTime.utc) ?? "their end")"
        )

        // 2. The binlogs, from the dump's position, in one session.
        let scratch = try FileIO.makePrivateTemporaryDirectory(prefix: "dbbackup-binlogs")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        var paths = [String]()
        for m in chain {
            let path = scratch + "/" + (m.archive?.file ?? m.id)
            try restorer.restore(m.id, to: .file(path: path, overwrite: true))
            paths.append(path)
        }
        let replay = try MariaDBReplayPlan.make(
            files: paths, startPosition: startPosition, stopTime: target,
            sourceDatabase: source, targetDatabase: targetDb, client: plan.arguments)
        if let failure = try replay.run() {
            throw DatabaseError.invalidArgument(
                "the binlog replay failed: \(failure) (messages above); database \(targetDb) holds the dump and part of the replay"
            )
        }
        Terminal.out(
            "database \(targetDb) recovered to \(target.map(PostgresTime.utc) ?? "the end of the archived binlogs")")
    }
}
