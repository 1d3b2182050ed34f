import DedupStore
import Foundation

/// Runs the real `dbbackup` binary that `swift build` made beside the tests.
struct CLI {
    struct Result {
        var status: Int32
        var stdout: [UInt8]
        var stderr: String
        var out: String { String(decoding: stdout, as: UTF8.self) }
        /// Set when the process was killed by a signal.
        var signaled: Bool
    }

    static let binary: String = {
        let fm = FileManager.default
        var dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        for _ in 0..<4 {
            let candidate = dir.appendingPathComponent("dbbackup").path
            if fm.isExecutableFile(atPath: candidate) { return candidate }
            dir = dir.deletingLastPathComponent()
        }
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        return root.appendingPathComponent(".build/debug/dbbackup").path
    }()

    let repo: String
    /// Environment of every run (a bucket's credentials), under `env` of each call.
    var env: [String: String] = [:]

    /// Runs `dbbackup dedup ARGS --dedup-dir repo`, feeding `stdin`.
    @discardableResult
    func dedup(_ args: [String], stdin: [UInt8]? = nil, env extra: [String: String] = [:]) throws -> Result {
        let env = self.env.merging(extra) { $1 }
        // --dedup-dir goes right after the subcommand: anything after "--" is an input command.
        let head = args.first == "index" ? Array(args.prefix(2)) : Array(args.prefix(1))
        return try CLI.run(["dedup"] + head + ["--dedup-dir", repo] + Array(args.dropFirst(head.count)), stdin: stdin, env: env)
    }

    static func run(_ args: [String], stdin: [UInt8]? = nil, env: [String: String] = [:]) throws -> Result {
        try runProcess(binary, args, stdin: stdin, env: env)
    }

    /// Runs another program found in PATH (pg_dump, psql, ...).
    static func runExecutable(_ args: [String], stdin: [UInt8]? = nil) throws -> Result {
        guard let name = args.first, let exe = findExecutable(name) else {
            return Result(status: 127, stdout: [], stderr: "\(args.first ?? "") not found in PATH", signaled: false)
        }
        return try runProcess(exe, Array(args.dropFirst()), stdin: stdin, env: [:])
    }

    static func runProcess(_ executable: String, _ args: [String], stdin: [UInt8]?, env: [String: String]) throws -> Result {
        // A child that exits before reading all its input must not kill the tests.
        signal(SIGPIPE, SIG_IGN)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: executable)
        p.arguments = args
        var environment = ProcessInfo.processInfo.environment
        for (k, v) in env { environment[k] = v }
        p.environment = environment
        let outPipe = Pipe(), errPipe = Pipe(), inPipe = Pipe()
        p.standardOutput = outPipe
        p.standardError = errPipe
        p.standardInput = stdin == nil ? FileHandle(forReadingAtPath: "/dev/null") : inPipe
        try p.run()
        // Feed stdin and drain both outputs concurrently so no pipe fills up.
        let writer = Thread {
            if let stdin {
                try? inPipe.fileHandleForWriting.write(contentsOf: Data(stdin))
            }
            try? inPipe.fileHandleForWriting.close()
        }
        writer.start()
        let errBox = Box()
        let errReader = Thread {
            errBox.data = errPipe.fileHandleForReading.readDataToEndOfFile()
            errBox.done.signal()
        }
        errReader.start()
        let out = outPipe.fileHandleForReading.readDataToEndOfFile()
        errBox.done.wait()
        p.waitUntilExit()
        return Result(status: p.terminationStatus, stdout: Array(out),
                      stderr: String(decoding: errBox.data, as: UTF8.self),
                      signaled: p.terminationReason == .uncaughtSignal)
    }

    final class Box: @unchecked Sendable {
        var data = Data()
        let done = DispatchSemaphore(value: 0)
    }

    /// The id printed in "backup <id> committed".
    static func committedID(_ r: Result) -> String? {
        for line in r.out.split(separator: "\n") where line.hasPrefix("backup ") && line.hasSuffix(" committed") {
            return String(line.dropFirst(7).dropLast(10))
        }
        return nil
    }
}

func tempDir() -> String {
    _ = testCacheRoot
    let path = NSTemporaryDirectory() + "dbbackup-cli-" + UUID().uuidString
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

func removeDir(_ path: String) { try? FileManager.default.removeItem(atPath: path) }

func pseudoRandom(_ count: Int, seed: UInt64) -> [UInt8] {
    var state = seed
    var out = [UInt8](repeating: 0, count: count)
    var i = 0
    while i < count {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        for b in 0..<8 where i + b < count { out[i + b] = UInt8(truncatingIfNeeded: z >> (8 * UInt64(b))) }
        i += 8
    }
    return out
}

func plainDump(rows: Int, seed: UInt64) -> [UInt8] {
    var text = "--\n-- PostgreSQL database dump\n--\n\nSET statement_timeout = 0;\n\nCOPY public.items (id, label, price) FROM stdin;\n"
    var s = seed
    for i in 0..<rows {
        s = s &* 6364136223846793005 &+ 1442695040888963407
        text += "\(i)\titem-\(s >> 40)\t\((s >> 20) % 100000).\(s % 100)\n"
    }
    text += "\\.\n\n--\n-- PostgreSQL database dump complete\n--\n\n"
    return Array(text.utf8)
}

func sha256(_ bytes: [UInt8]) -> String { SHA256Hasher.hash(bytes).hex }

func writeFile(_ path: String, _ bytes: [UInt8]) throws {
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}

func readFile(_ path: String) throws -> [UInt8] { Array(try Data(contentsOf: URL(fileURLWithPath: path))) }

func manifestCount(_ repo: String) -> Int {
    ((try? FileManager.default.contentsOfDirectory(atPath: repo + "/manifests")) ?? []).filter { $0.hasSuffix(".manifest.json") }.count
}

func errorLines(_ r: CLI.Result) -> [Substring] {
    r.stderr.split(separator: "\n").filter { $0.hasPrefix("dbbackup: error:") }
}

/// The chunk-index caches of this test process go to one temporary folder (unless
/// tools/test already chose one), not to ~/.cache; the CLI runs inherit it.
let testCacheRoot: String = {
    if let set = ProcessInfo.processInfo.environment["DBBACKUP_CACHE_DIR"], !set.isEmpty { return set }
    let root = NSTemporaryDirectory() + "dbbackup-test-cache-\(getpid())"
    setenv("DBBACKUP_CACHE_DIR", root, 1)
    return root
}()

/// The share of a committed backup's input that was stored anew, from its
/// `--json` output: (input bytes, new bytes).
func storedAnew(_ r: CLI.Result) throws -> (size: Int64, newBytes: Int64) {
    let m = try JSONDecoder().decode(Manifest.self, from: Data(r.stdout))
    return (m.size, m.stats.newBytes)
}

extension Repository {
    /// The file of an object of a repository in a local folder (the CLI tests damage
    /// files on purpose).
    func localFile(_ key: String) -> String {
        (backend as? LocalBackend).map { $0.path(key) } ?? key
    }
}
