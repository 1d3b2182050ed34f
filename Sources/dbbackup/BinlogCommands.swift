import ArgumentParser
import DatabaseDumps
import DedupStore
import Foundation

struct Binlog: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "binlog",
        abstract: "MySQL/MariaDB binary logs in the chunk store: position, list, archive, validate.",
        subcommands: [BinlogPositionCommand.self, BinlogList.self, BinlogArchiveCommand.self, BinlogValidate.self])
}

/// The binlog archive's name (several servers can share a repository).
struct BinlogNameOption: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "Name of this server's binlog archive in the repository (one per server).", valueName: "name"))
    var name: String = BinlogArchive.defaultName
}

struct BinlogPositionCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "position", abstract: "The server's current binary log file, position and GTID.")

    @OptionGroup var server: ServerOptions
    @Flag(help: "Print JSON.") var json = false

    struct Report: Encodable { var file: String; var position: UInt64; var gtid: String?; var serverID: UInt32? }

    func run() throws {
        try reportingErrors {
            let connection = try MariaDBConnection(server.address, database: nil)
            guard let current = try connection.currentBinlog() else {
                throw DatabaseError.invalidArgument(
                    "the server on \(server.address.mariaLabel) writes no binary log (log_bin is off); turn it on for point-in-time recovery"
                )
            }
            let report = Report(file: current.file, position: current.position, gtid: connection.currentGTID(),
                                serverID: try connection.serverID())
            if json { try Terminal.json(report); return }
            Terminal.out("file      \(report.file)")
            Terminal.out("position  \(report.position)")
            Terminal.out("gtid      \(report.gtid ?? "-")")
            Terminal.out("server_id \(report.serverID.map { String($0) } ?? "?")")
        }
    }
}

struct BinlogList: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list", abstract: "The server's binary logs and the archived ones, side by side.")

    @OptionGroup var store: StoreOptions
    @OptionGroup var archiveName: BinlogNameOption
    @OptionGroup var server: ServerOptions

    func run() throws {
        try reportingErrors {
            let archive = try BinlogArchive(repository: try store.open(), name: archiveName.name)
            let archived = Dictionary(try archive.copies().map { ($0.name.name, $0) }, uniquingKeysWith: { a, _ in a })
            let connection = try MariaDBConnection(server.address, database: nil)
            let current = try connection.currentBinlog()?.file
            let onServer = try connection.binaryLogs()
            var rows = [[String]]()
            let names = Set(onServer.map(\.file)).union(archived.keys).compactMap(BinlogFileName.init).sorted()
            for name in names {
                let file = name.name
                let size = onServer.first { $0.file == file }?.size
                let entry = archived[file]
                let state =
                    entry.map { $0.partial ? "partial copy" : "archived" }
                    ?? (file == current ? "being written" : "not archived")
                rows.append([
                    file, size.map { Format.bytes($0) } ?? "purged", state,
                    entry.map { Format.bytes($0.manifest.stats.storedBytes) } ?? "-",
                ])
            }
            printTable(header: ["FILE", "ON SERVER", "ARCHIVE", "STORED"], rows: rows)
        }
    }
}

struct BinlogArchiveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "archive",
        abstract: "Archive the server's finished binary logs into the repository.",
        discussion: """
        Reads the files from --binlog-dir (default: the folder of the server's
        log_bin_basename, when the server is on this machine). Each finished binlog
        becomes one backup of kind binlog; a run continues where the last one
        stopped (archived files are skipped, a changed one is refused). The file the
        server is still writing is left alone unless --include-current, which keeps
        a partial copy until the finished file replaces it. With --watch it runs on,
        archiving every --interval seconds (for a systemd service).
          dbbackup binlog archive --socket /run/mysqld/mysqld.sock --dedup-dir /srv/dedup --watch
        """)

    @OptionGroup var store: StoreOptions
    @OptionGroup var archiveName: BinlogNameOption
    @OptionGroup var server: ServerOptions

    @Option(
        help: ArgumentHelp(
            "Folder of the binary log files (default: from the server's log_bin_basename).", valueName: "dir"))
    var binlogDir: String?

    @Flag(help: "Also keep a partial copy of the binlog the server is still writing.")
    var includeCurrent = false

    @Flag(help: "Keep running, archiving every --interval seconds.")
    var watch = false

    @Option(help: ArgumentHelp("Seconds between passes with --watch.", valueName: "seconds"))
    var interval: Int = 60

    func validate() throws {
        if interval < 1 { throw ValidationError("--interval takes a positive number of seconds") }
    }

    func run() throws {
        try reportingErrors(
            noSpaceHint: "the disk holding the repository is full; the binlogs stay on the server until the next run"
        ) {
            guard watch else { try pass(); return }
            while true {
                do { try pass() } catch { Terminal.error(errorMessage(error)) }
                sleep(UInt32(interval))
            }
        }
    }

    /// One pass: every finished binlog the server still has and the archive lacks.
    private func pass() throws {
        let archive = try BinlogArchive(repository: try store.open(), name: archiveName.name)
        let connection = try MariaDBConnection(server.address, database: nil)
        // The list first, then the file being written: a rotation in between only
        // makes the current file newer than every listed one, never older.
        let listed = try connection.binaryLogs().map(\.file).compactMap(BinlogFileName.init).sorted()
        guard let current = try connection.currentBinlog(), let currentName = BinlogFileName(current.file) else {
            throw DatabaseError.invalidArgument(
                "the server on \(server.address.mariaLabel) writes no binary log (log_bin is off)")
        }
        let dir =
            try binlogDir.map(StoreOptions.expand)
            ?? {
                guard let basename = try connection.column("SELECT @@log_bin_basename").first, basename.hasPrefix("/")
                else {
                    throw DatabaseError.invalidArgument(
                        "the server does not say where its binlogs are; give --binlog-dir")
                }
                return FileIO.parent(basename)
            }()
        let serverID = try connection.serverID()
        // Binlogs purged from the server before they were archived: a gap for good.
        if let gap = BinlogArchive.purgedGap(
            newestArchived: try archive.newestFinished(), oldestOnServer: listed.first)
        {
            Terminal.notice(
                "binlogs after \(gap.after) up to before \(gap.before) were purged from the server unarchived: point-in-time recovery cannot cross that gap"
            )
        }
        var archived = 0, before = 0
        var stored: Int64 = 0
        // Finished: every listed file before the one being written.
        var work = listed.filter { $0.base != currentName.base || $0.number < currentName.number }.map {
            ($0.name, false)
        }
        if includeCurrent { work.append((current.file, true)) }
        for (file, isCurrent) in work {
            switch try archive.archive(path: dir + "/" + file, file: file, serverID: serverID, partial: isCurrent) {
            case .archived(let m):
                archived += 1
                stored += m.stats.storedBytes
                if !watch || Terminal.stderrIsTerminal {
                    Terminal.out(
                        "archived \(m.archive?.file ?? file): \(Format.bytes(m.size)) -> \(Format.bytes(m.stats.storedBytes)) stored"
                    )
                }
            case .alreadyArchived:
                before += 1
            }
        }
        if !watch {
            Terminal.out(
                "\(archived) binlog(s) archived (\(Format.bytes(stored)) stored), \(before) archived before; \(current.file) is being written"
                    + (includeCurrent ? " (partial copy kept)" : " (not archived yet)"))
        }
    }
}

struct BinlogValidate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "validate",
        abstract: "Check that the archived binlogs form a chain without gaps, up to the server's.",
        discussion:
            "Exit status 1 when a gap would stop a point-in-time recovery: a file missing between archived ones, binlogs purged from the server before they were archived, or a dump whose starting binlog is neither archived nor on the server."
    )

    @OptionGroup var store: StoreOptions
    @OptionGroup var archiveName: BinlogNameOption
    @OptionGroup var server: ServerOptions

    func run() throws {
        try reportingErrors {
            let repo = try store.open()
            let archive = try BinlogArchive(repository: repo, name: archiveName.name)
            let files = try archive.copies().filter { !$0.partial }.map(\.name.name)
            var problems = BinlogArchive.gaps(in: files).map { "missing from the archive: \($0)" }
            let connection = try MariaDBConnection(server.address, database: nil)
            let onServer = try connection.binaryLogs().map(\.file)
            let serverID = try connection.serverID()
            let known = Set(files).union(onServer)
            if let gap = BinlogArchive.purgedGap(
                newestArchived: files.last.flatMap(BinlogFileName.init),
                oldestOnServer: onServer.compactMap(BinlogFileName.init).min())
            {
                problems.append(
                    "purged from the server before they were archived: after \(gap.after), before \(gap.before)")
            }
            for m in try repo.manifests()
            where m.backupKind == .dump && DatabaseEngine(name: m.dump?.engine ?? "")?.isMySQLFamily == true {
                guard let file = m.dump?.binlogFile, m.dump?.serverID == nil || m.dump?.serverID == serverID else {
                    continue
                }
                if !known.contains(file), let n = BinlogFileName(file),
                    let oldest = files.compactMap(BinlogFileName.init).min(), n < oldest
                {
                    problems.append("dump \(m.id) starts at \(file), which is neither archived nor on the server")
                }
            }
            Terminal.out(
                "archive '\(archive.name)': \(files.count) binlogs"
                    + (files.isEmpty ? "" : ", \(files.first ?? "") to \(files.last ?? "")")
                    + "; server: \(onServer.first ?? "-") to \(onServer.last ?? "-")")
            if problems.isEmpty {
                Terminal.out("chain OK: no gaps")
                return
            }
            for p in problems { Terminal.out("GAP: \(p)") }
            throw DatabaseError.invalidArgument(
                "the binlog chain has \(problems.count) gap(s); recovery cannot cross them")
        }
    }
}
