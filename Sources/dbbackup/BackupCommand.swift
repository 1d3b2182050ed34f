import ArgumentParser
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

    @Option(help: "Database engine: postgres, mysql, mariadb.")
    var dbType: String?

    @Option(help: "Database host the dump came from.")
    var dbHost: String?

    @Option(help: ArgumentHelp("A tag to record (repeatable).", valueName: "key=value"))
    var tag: [String] = []

    @Option(help: ArgumentHelp("Backup time to record instead of now (ISO 8601, e.g. 2026-11-21T02:00:00Z).", valueName: "time"))
    var time: String?

    @Flag(help: "Decompress gzip (.gz) or zstd (.zst) input first, so that its contents deduplicate.")
    var decompressInput = false

    @Flag(help: "Run the command given after -- and back up its output; nothing is committed unless it exits 0.")
    var fromCommand = false

    @Flag(help: "Do not refuse plain SQL dumps that lack their completion line.")
    var noDumpCheck = false

    @Flag(name: .customLong("stream-sha256"), help: ArgumentHelp(
        "Also record the SHA-256 of the whole input (as sha256sum prints it); restore then checks it too. Costs one more hashing pass; every chunk is verified either way."))
    var streamSHA256 = false

    @Flag(help: "Print the committed manifest as JSON.")
    var json = false

    @Option(help: ArgumentHelp("Seconds to wait while gc or prune holds the repository.", valueName: "seconds"))
    var lockWait: Int = 600

    @Option(help: ArgumentHelp("Threads for hashing and compression (default: all cores).", valueName: "n"))
    var jobs: Int?

    @Argument(parsing: .postTerminator, help: ArgumentHelp("The input command, after --, with --from-command.", valueName: "command"))
    var command: [String] = []

    func validate() throws {
        if fromCommand {
            guard !command.isEmpty else { throw ValidationError("--from-command needs the command after --, e.g. -- pg_dump -Fc -Z0 mydb") }
            guard input == nil else { throw ValidationError("give either an input file or --from-command, not both") }
        } else {
            guard input != nil else { throw ValidationError("missing input: a file, - for standard input, or --from-command -- CMD...") }
            guard command.isEmpty else { throw ValidationError("arguments after -- need --from-command") }
        }
        for t in tag where !t.contains("=") { throw ValidationError("--tag takes key=value, got '\(t)'") }
        if let time, Timestamps.parse(time) == nil { throw ValidationError("cannot read --time '\(time)'; use ISO 8601 like 2026-11-21T02:00:00Z") }
        if let jobs, jobs < 1 { throw ValidationError("--jobs takes a positive number") }
    }

    func run() throws {
        try reportingErrors(noSpaceHint: "the disk holding the repository is full: no backup was committed; free space and run it again (chunks already written are reused)") {
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
                    guard !FileIO.isDirectory(input) else { throw DedupError.inputUnreadable(path: input, reason: "it is a folder; back up files or streams") }
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
            let repo = try openOrCreate()
            var options = BackupOptions(name: backupName(sourceName), source: sourceName)
            options.kind = (dbName != nil || dbType != nil) ? "dump" : "file"
            options.database = dbName
            options.dbType = dbType
            options.dbHost = dbHost
            options.checkDumpComplete = !noDumpCheck
            options.lockWait = TimeInterval(lockWait)
            options.streamSHA256 = streamSHA256
            for t in tag {
                let parts = t.split(separator: "=", maxSplits: 1)
                options.tags[String(parts[0])] = parts.count > 1 ? String(parts[1]) : ""
            }
            if inputFormat != .none { options.tags["decompressed"] = inputFormat.rawValue }
            if let time, let date = Timestamps.parse(time) { options.time = date }

            let session = try BackupSession(repository: repo)
            if let jobs { session.jobs = jobs }
            let started = Date()
            session.progress = { p in
                let elapsed = Date().timeIntervalSince(started)
                Terminal.progress("\(Format.bytes(Int64(p.bytesRead))) read, \(p.chunks) chunks (\(p.newChunks) new), \(Format.rate(Int64(p.bytesRead), elapsed))")
            }
            let manifest = try session.run(source: AnySource(source), options: options)
            Terminal.clearProgress()
            if json {
                try Terminal.json(manifest)
            } else {
                printSummary(manifest)
            }
        }
    }

    private func openOrCreate() throws -> Repository {
        let path = store.path
        if Repository.isRepository(path) { return try store.open() }
        guard Repository.isEmptyOrSkeleton(path) else { throw DedupError.notARepository(path: path) }
        let repo = try Repository.initialize(at: path, cacheRoot: store.cacheRoot)
        repo.onNotice = { Terminal.notice($0) }
        Terminal.notice("created repository \(path) (defaults; see `dbbackup dedup init --help`)")
        return repo
    }

    private func backupName(_ sourceName: String) -> String {
        if let name { return name }
        if let dbName { return dbName }
        if fromCommand || input == nil || input == "-" { return "stdin" }
        return FileIO.lastComponent(sourceName)
    }

    private func printSummary(_ m: Manifest) {
        let s = m.stats
        let dedup = m.size > 0 ? 1 - Double(s.newBytes) / Double(m.size) : 1
        let ratio = s.storedBytes > 0 ? Double(m.size) / Double(s.storedBytes) : 0
        Terminal.out("backup \(m.id) committed")
        Terminal.out("  input     \(Format.bytes(m.size)) (\(m.size) bytes)" + (m.sha256.map { ", sha256 \($0)" } ?? ""))
        Terminal.out("  chunks    \(s.chunks) total, \(s.newChunks) new")
        Terminal.out("  stored    \(Format.bytes(s.newBytes)) new data -> \(Format.bytes(s.storedBytes)) in packs")
        Terminal.out("  dedup     \(Format.percent(dedup)) already stored; ratio \(s.storedBytes > 0 ? String(format: "%.1fx", ratio) : "all deduplicated")")
        Terminal.out("  duration  \(Format.duration(s.durationSeconds)), \(Format.rate(m.size, s.durationSeconds))")
    }
}
