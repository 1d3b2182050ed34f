import DedupStore
import Foundation

// Builds a large repository quickly through the library, for measuring what each
// command costs as a repository grows (tools/bench-scale runs it):
//
//   dbbackup-gen --repo DIR [--databases 100] [--nights 50] [--wal 0] [--binlogs 0]
//                [--dump-bytes 65536] [--log-bytes 8192] [--pack-size 33554432] [--wal-from 0 --wal-to N]
//
// Nightly dumps: each database once a night at 02:00 local (plus its index in
// seconds), going back --nights days from today; each night's dump is SQL-like
// text that changes a little from night to night. WAL: --wal segments of one
// cluster under the archive name "main", one a minute back from now, named like
// PostgreSQL's (timeline 1), with the archive's identity object; binlogs: --binlogs
// files of server 1. Stored sizes are scaled down (--dump-bytes, --log-bytes); the
// counts are not. Every backup goes through BackupSession, so every one has its
// pack, chunk list and manifest, as a grown repository does; nothing is fsynced
// (LocalBackend durable: false), and times are set, not waited for. The change
// notes (changes/) are deleted at the end: a grown repository has a week of them.
// --pack-size (bytes) is the new repository's; with stored sizes scaled down, a
// smaller one keeps gc's merge of the small packs (tools/bench-gc-compact) meaningful.
// --wal-from K --wal-to M make only segments K..<M of the --wal N (names and
// times as in the whole archive), into the repository already there: a large
// archive is built in parts (one process holds about 38 KB more for each backup
// it makes: 490,000 in one run took 18 GB).

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("dbbackup-gen: \(message)\n".utf8))
    exit(64)
}

func parse() -> [String: String] {
    var out = [String: String]()
    var it = CommandLine.arguments.dropFirst().makeIterator()
    while let a = it.next() {
        guard a.hasPrefix("--"), let v = it.next() else {
            fail("usage: dbbackup-gen --repo DIR [--databases N] [--nights N] [--wal N] [--binlogs N]")
        }
        out[String(a.dropFirst(2))] = v
    }
    return out
}
ProcessMemory.configure()
ChunkIndex.syncsCommits = false
let arguments = parse()
guard let root = arguments["repo"] else { fail("--repo is required") }
func count(_ key: String, _ fallback: Int) -> Int {
    guard let text = arguments[key] else { return fallback }
    guard let v = Int(text), v >= 0 else { fail("--\(key) takes a count") }
    return v
}
let databases = count("databases", 100), nights = count("nights", 50)
let walCount = count("wal", 0), binlogCount = count("binlogs", 0)
let walFrom = count("wal-from", 0), walTo = min(count("wal-to", walCount), walCount)
let dumpBytes = count("dump-bytes", 64 << 10), logBytes = count("log-bytes", 8 << 10)
let packSize = count("pack-size", RepositoryConfig.defaultPackSize)

/// Deterministic bytes: SQL-like lines for dumps, noise for logs.
struct Generator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

func dump(database: Int, night: Int) -> [UInt8] {
    var g = Generator(state: UInt64(database) << 32)
    var text = "--\n-- PostgreSQL database dump\n--\n\nCOPY public.t (id, v) FROM stdin;\n"
    var row = 0
    while text.utf8.count < dumpBytes {
        // About one row in 50 changes each night.
        let v = g.next()
        text += "\(row)\t\(v % 50 == 0 ? v &+ UInt64(night) : v)\n"
        row += 1
    }
    text += "\\.\n\n--\n-- PostgreSQL database dump complete\n--\n\n"
    return Array(text.utf8)
}

func noise(_ seed: UInt64) -> [UInt8] {
    var g = Generator(state: seed)
    return (0..<logBytes).map { _ in UInt8(truncatingIfNeeded: g.next()) }
}

do {
    let backend = LocalBackend(root: root, durable: false)
    let repo =
        Repository.isRepository(backend)
        ? try Repository(backend: backend) : try Repository.initialize(on: backend, packSize: packSize)
    let started = Date()
    var made = 0
    func commit(_ bytes: [UInt8], _ configure: (inout BackupOptions) -> Void) throws {
        var options = BackupOptions(name: "x", source: "dbbackup-gen")
        options.lockWait = 0
        configure(&options)
        let session = try BackupSession(repository: repo)
        session.jobs = 1
        _ = try session.run(source: BufferSource(bytes), options: options)
        made += 1
        if made % 5000 == 0 {
            FileHandle.standardError.write(Data("dbbackup-gen: \(made) backups, \(Int(Date().timeIntervalSince(started))) s\n".utf8))
        }
    }
    let today = Calendar.current.startOfDay(for: Date())
    for night in 0..<nights {
        let day = today.addingTimeInterval(-Double(nights - night) * 86400 + 2 * 3600)
        for db in 0..<databases {
            try commit(dump(database: db, night: night)) { o in
                o.name = "db\(db)"; o.database = "db\(db)"; o.dbType = "postgres"; o.kind = .dump
                o.time = day.addingTimeInterval(Double(db))
            }
        }
    }
    let system = "7301234567890123456"
    for n in min(walFrom, walTo)..<walTo {
        let file = String(format: "00000001%08X%08X", n >> 8, n & 0xFF)
        try commit(noise(UInt64(n) | 1 << 40)) { o in
            o.name = "main"; o.kind = .wal; o.dbType = "postgres"; o.fixedID = "wal_main_\(file)"
            o.archive = Manifest.ArchiveInfo(file: file, timeline: 1, systemIdentifier: system)
            o.streamSHA256 = true; o.checkDumpComplete = false
            o.time = Date().addingTimeInterval(-Double(walCount - n) * 60)
        }
    }
    if walCount > 0 {
        let identity = "{\"kind\":\"wal\",\"name\":\"main\",\"systemIdentifier\":\"\(system)\"}"
        try? backend.put("archives/wal_main.json", Array(identity.utf8), ifAbsent: true)
    }
    for n in 0..<binlogCount {
        let file = String(format: "mariadb-bin.%06d", n + 1)
        try commit(noise(UInt64(n) | 1 << 41)) { o in
            o.name = "main"; o.kind = .binlog; o.dbType = "mariadb"; o.fixedID = "binlog_main_\(file)"
            o.archive = Manifest.ArchiveInfo(file: file, serverID: 1)
            o.streamSHA256 = true; o.checkDumpComplete = false
            o.time = Date().addingTimeInterval(-Double(binlogCount - n) * 3600)
        }
    }
    // A grown repository holds the last week's change notes (gc deletes older
    // ones), a few dozen per hour folder; the notes written here all carry the
    // generation time and would crowd one folder: a generated repository keeps none.
    try repo.pruneChanges(before: .distantFuture)
    print("\(root): \(made) backups made in \(String(format: "%.1f", Date().timeIntervalSince(started))) s; \(try repo.manifestIDs().count) in all, \(try repo.listPacks().count) packs")
} catch {
    fail((error as? DedupError)?.message ?? "\(error)")
}
