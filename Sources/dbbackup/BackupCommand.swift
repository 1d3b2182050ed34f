import ArgumentParser
import DatabaseDumps
import DedupStore
import Foundation

struct DedupBackup: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "backup",
        abstract: "Back up a file, standard input or a command's output into the chunk store.",
        discussion: """
        Examples:
          dbbackup dedup backup mydb.sql --db-name mydb
          pg_dump -Fc -Z0 mydb | dbbackup dedup backup - --name mydb --db-type postgres --db-name mydb
          dbbackup dedup backup --name mydb --db-type postgres --from-command -- pg_dump -Fc -Z0 mydb

        With stdin, a producer that dies half way looks like a short, complete input.
        Plain SQL dumps (pg_dump -Fp, pg_dumpall, mysqldump, mariadb-dump) are refused
        when they lack their completion line; for any other input prefer --from-command,
        which commits nothing unless the command exits 0.
        """)

    @OptionGroup var store: StoreOptions

    @Argument(help: ArgumentHelp("Input file, or - for standard input.", valueName: "input"))
    var input: String?

    @Option(help: "Name of the backup (default: --db-name, else the file name).")
    var name: String?

    @Option(help: "Database the input is a dump of.")
    var dbName: String?

    @Option(help: ArgumentHelp("Database engine (\(DatabaseEngine.aliasHelp)).", valueName: "engine"))
    var dbType: DatabaseEngine?

    @Option(help: "Database host the dump came from.")
    var dbHost: String?

    @Flag(
        help:
            "Decompress gzip (.gz) or zstd (.zst) input first, so that its contents deduplicate (restore then gives the decompressed stream)."
    )
    var decompressInput = false

    @Flag(help: "Run the command given after -- and back up its output; nothing is committed unless it exits 0.")
    var fromCommand = false

    @Flag(help: "Do not refuse plain SQL dumps that lack their completion line.")
    var noDumpCheck = false

    @OptionGroup var committing: CommitOptions

    @Option(help: ArgumentHelp("The same as --threads: one stream has no other parallel jobs.", valueName: "n"))
    var jobs: Int?

    @Argument(
        parsing: .postTerminator,
        help: ArgumentHelp("The input command, after --, with --from-command.", valueName: "command"))
    var command: [String] = []

    func validate() throws {
        if let jobs, jobs < 1 { throw ValidationError("--jobs takes a positive number") }
        if fromCommand {
            guard !command.isEmpty else {
                throw ValidationError("--from-command needs the command after --, e.g. -- pg_dump -Fc -Z0 mydb")
            }
            guard input == nil else { throw ValidationError("give either an input file or --from-command, not both") }
        } else {
            guard input != nil else {
                throw ValidationError("missing input: a file, - for standard input, or --from-command -- CMD...")
            }
            guard command.isEmpty else { throw ValidationError("arguments after -- need --from-command") }
        }
    }

    func run() throws {
        let label =
            name ?? dbName
            ?? (fromCommand || input == nil || input == "-" ? "stdin" : FileIO.lastComponent(input ?? "stdin"))
        try reportingErrors(
            noSpaceHint:
                "the disk holding the repository is full: no backup was committed; free space and run it again (chunks already written are reused)"
        ) {
            try recordingFailure(
                store, name: label, database: dbName, engine: dbType?.rawValue,
                backupType: (dbName != nil || dbType != nil) ? "dump" : "file"
            ) {
                var sourceName = "stdin"
                var rawFD: Int32 = STDIN_FILENO
                var openedFD: Int32 = -1
                defer { if openedFD >= 0 { close(openedFD) } }
                var source: any ByteSource
                var inputFormat = DecompressingInput.Format.none
                if fromCommand {
                    sourceName = command.joined(separator: " ")
                    source = try ProcessOutputSource(arguments: command)
                } else {
                    if let input, input != "-" {
                        sourceName = input
                        guard FileIO.exists(input) else { throw DedupError.inputNotFound(path: input) }
                        guard !FileIO.isDirectory(input) else {
                            throw DedupError.inputUnreadable(
                                path: input, reason: "it is a folder; back up files or streams")
                        }
                        do {
                            openedFD = try FileIO.open(input, O_RDONLY)
                        } catch let DedupError.io(_, _, code) {
                            throw DedupError.inputUnreadable(path: input, reason: String(cString: strerror(code)))
                        }
                        rawFD = openedFD
                    }
                    if decompressInput {
                        let opened = try DecompressingInput.open(fd: rawFD, name: sourceName)
                        source = opened.source
                        inputFormat = opened.format
                    } else {
                        source = FileDescriptorSource(fd: rawFD, name: sourceName)
                    }
                }

                // The input is open (or the command started) before a repository is created.
                let repo = try store.openOrCreate()
                var options = BackupOptions(name: backupName(sourceName), source: sourceName)
                options.kind = (dbName != nil || dbType != nil) ? .dump : .file
                options.database = dbName
                options.dbType = dbType?.rawValue
                options.dbHost = dbHost
                options.checkDumpComplete = !noDumpCheck
                if inputFormat != .none { options.tags["decompressed"] = inputFormat.rawValue }
                try committing.commit(AnySource(source), into: repo, options: options, expectedSize: nil, threads: jobs)
            }
        }
    }

    private func backupName(_ sourceName: String) -> String {
        if let name { return name }
        if let dbName { return dbName }
        if fromCommand || input == nil || input == "-" { return "stdin" }
        return FileIO.lastComponent(sourceName)
    }
}
