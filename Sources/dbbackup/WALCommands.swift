import ArgumentParser
import DatabaseDumps
import DedupStore
import Foundation

struct WAL: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wal",
        abstract: "PostgreSQL WAL in the chunk store: archive_command, restore_command, list.",
        subcommands: [WALArchiveCommand.self, WALRestoreCommand.self, WALList.self])
}

/// The WAL archive's name (several clusters can share a repository).
struct ArchiveNameOption: ParsableArguments {
    @Option(
        help: ArgumentHelp("Name of this cluster's WAL archive in the repository (one per cluster).", valueName: "name")
    )
    var name: String = WALArchive.defaultName
}

struct WALArchiveCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "archive",
        abstract: "Archive one WAL file: PostgreSQL's archive_command.",
        discussion: """
        In postgresql.conf (or run `dbbackup pitr enable`):
          archive_command = '/usr/local/bin/dbbackup wal archive "%p" "%f" --dedup-dir /srv/dedup'
        Exits 0 only once the file is durable in the repository. Archiving the same
        file again succeeds; a different file under a name already archived, or a
        segment of another cluster under this archive name, fails with a message
        (PostgreSQL then keeps the file and retries). The server runs the command as
        its own OS user (postgres), which must be able to write the repository.
        """)

    @OptionGroup var store: StoreOptions
    @OptionGroup var archiveName: ArchiveNameOption

    @Argument(help: ArgumentHelp("Path of the file (%p).", valueName: "path"))
    var path: String

    @Argument(help: ArgumentHelp("Its WAL file name (%f).", valueName: "file"))
    var file: String

    @Option(help: ArgumentHelp("Seconds to wait while gc or prune holds the repository.", valueName: "seconds"))
    var lockWait: Int = 600

    func run() throws {
        try reportingErrors(
            noSpaceHint:
                "the disk holding the repository is full: the file was not archived, and PostgreSQL keeps it until it is"
        ) {
            let archive = try WALArchive(repository: try store.open(), name: archiveName.name)
            switch try archive.archive(path: path, file: file, lockWait: TimeInterval(lockWait)) {
            case .archived(let m):
                if Terminal.stderrIsTerminal {
                    Terminal.out(
                        "archived \(file) as \(m.id): \(Format.bytes(m.stats.storedBytes)) stored for \(Format.bytes(m.size))"
                    )
                }
            case .alreadyArchived(let m):
                Terminal.err("dbbackup: \(file) is archived already (\(m.id)), with the same content")
            }
        }
    }
}

struct WALRestoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "restore",
        abstract: "Restore one WAL file: PostgreSQL's restore_command.",
        discussion: """
          restore_command = '/usr/local/bin/dbbackup wal restore "%f" "%p" --dedup-dir /srv/dedup'
        (`dbbackup restore pitr` writes it for you). Every chunk is checked. Exits 1
        when the archive does not hold the file, which PostgreSQL asks about
        routinely (the end of the archive, a timeline that does not exist); any
        other failure (a damaged chunk, an unreadable repository) exits 126, which
        makes PostgreSQL stop recovery instead of ending it at that point.
        """)

    @OptionGroup var store: StoreOptions
    @OptionGroup var archiveName: ArchiveNameOption

    @Argument(help: ArgumentHelp("WAL file name (%f).", valueName: "file"))
    var file: String

    @Argument(help: ArgumentHelp("Where to write it (%p).", valueName: "path"))
    var path: String

    /// PostgreSQL reads exit status 1 as "not in the archive" and may end recovery
    /// there; any other failure must stop recovery instead: above 125.
    static let fatalStatus: Int32 = 126

    func run() throws {
        let found: Bool
        do {
            let archive = try WALArchive(repository: try store.open(), name: archiveName.name)
            found = try archive.restore(file: file, to: path)
        } catch {
            Terminal.error(
                errorMessage(error)
                    + " (exit status \(Self.fatalStatus): PostgreSQL stops recovery rather than end it here)")
            throw ExitCode(Self.fatalStatus)
        }
        guard found else {
            Terminal.err("dbbackup: \(file) is not in the WAL archive '\(archiveName.name)'")
            throw ExitCode(1)
        }
    }
}

struct WALList: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List archived WAL files, in WAL order, and any gaps between segments.")

    @OptionGroup var store: StoreOptions
    @OptionGroup var archiveName: ArchiveNameOption

    @Option(help: "Only this timeline.")
    var timeline: UInt32?

    @Flag(help: "Print JSON.")
    var json = false

    func run() throws {
        try reportingErrors {
            let repo = try store.open()
            let archive = try WALArchive(repository: repo, name: archiveName.name)
            let files = try archive.files(timeline: timeline)
            if json {
                try Terminal.json(files)
                return
            }
            guard !files.isEmpty else {
                let names = try WALArchive.names(in: repo)
                Terminal.out(
                    "no WAL archived under '\(archiveName.name)'"
                        + (names.isEmpty ? "" : " (archives here: \(names.joined(separator: ", ")))"))
                return
            }
            printTable(header: ["FILE", "TIMELINE", "SIZE", "STORED", "ARCHIVED"], rows: files.map { m in
                [m.archive?.file ?? m.id, m.archive?.timeline.map { String($0) } ?? "", Format.bytes(m.size),
                 Format.bytes(m.stats.storedBytes), m.createdAt]
            })
            let gaps = WALChain.gaps(in: files.compactMap { m in m.archive.map { ($0.file, m.size) } })
            let stored = files.reduce(Int64(0)) { $0 + $1.stats.storedBytes }
            let size = files.reduce(Int64(0)) { $0 + $1.size }
            Terminal.out("\(files.count) files, \(Format.bytes(size)) of WAL in \(Format.bytes(stored)) stored")
            for g in gaps { Terminal.out("gap: timeline \(g.timeline) lacks \(g.missing)") }
        }
    }
}
