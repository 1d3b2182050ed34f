import ArgumentParser
import Catalog
import DedupStore
import Foundation

/// What the metrics commands share: the repository, the server label, rendering.
struct MetricsOptions: ParsableArguments {
    @OptionGroup var store: StoreOptions

    @Option(help: ArgumentHelp("The `server` label (default: this host's name).", valueName: "name"))
    var server: String?

    func render() throws -> String {
        let repo = try store.open()
        let catalog = try BackupCatalog(repository: repo)
        // Repository-wide figures need the index: skipped, not fatal, when gc holds the repository.
        let stats: RepositoryStats?
        do {
            let lock = try repo.lock(.shared, command: "metrics", wait: 30)
            defer { lock.release() }
            let totals = try catalog.totals()
            stats = try RepositoryStats.fromCaches(repo, manifests: totals.backups, rawBytes: totals.bytes)
        } catch {
            Terminal.notice("repository figures left out: \(errorMessage(error))")
            stats = nil
        }
        return try RepositoryMetrics.render(catalog: catalog, stats: stats, server: server ?? LockInfo.currentHost)
    }
}

struct DedupMetrics: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "metrics",
        abstract: "Prometheus metrics of the repository, for node_exporter's textfile collector.",
        discussion: """
          dbbackup dedup metrics --output /var/lib/node_exporter/textfile_collector/dbbackup.prom
        The file is written atomically (temporary name, fsync, rename), so the
        collector never reads half of it. Without --output the text goes to stdout.
        Names and labels: docs/METRICS.md.
        """)

    @OptionGroup var options: MetricsOptions

    @Option(help: ArgumentHelp("Write to this file instead of stdout.", valueName: "path"))
    var output: String?

    func run() throws {
        try reportingErrors {
            let text = try options.render()
            if let output {
                try FileIO.writeFileAtomically(StoreOptions.expand(output), Array(text.utf8))
            } else {
                Terminal.raw(text)
            }
        }
    }
}

struct Metrics: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "metrics",
        abstract: "Prometheus metrics: export (as `dedup metrics`) or serve them over HTTP.",
        subcommands: [MetricsExport.self, MetricsServe.self])
}

struct MetricsExport: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export", abstract: "The same as `dbbackup dedup metrics`.")
    @OptionGroup var options: MetricsOptions
    @Option(help: ArgumentHelp("Write to this file instead of stdout.", valueName: "path")) var output: String?

    func run() throws {
        var command = DedupMetrics()
        command.options = options
        command.output = output
        try command.run()
    }
}

struct MetricsServe: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve /metrics and /health over HTTP (default 127.0.0.1:9399).",
        discussion: """
        /metrics renders the metrics afresh for every request; /health answers 200
        "OK" while the repository opens, 503 with the reason when it does not.
        Anything else is 404. One request at a time, each with a 10 s deadline.
        Listens on 127.0.0.1 unless --bind says otherwise (0.0.0.0 for every address).
        """)

    @OptionGroup var options: MetricsOptions
    @Option(help: "TCP port (0: any free one, printed at start).") var port: Int = 9399
    @Option(help: ArgumentHelp("Address to listen on.", valueName: "ipv4")) var bind: String = "127.0.0.1"

    func validate() throws {
        guard (0...65535).contains(port) else { throw ValidationError("--port takes 0-65535") }
    }

    func run() throws {
        try reportingErrors {
            let server = try HTTPServer(address: bind, port: UInt16(port))
            Terminal.out("serving http://\(bind):\(server.port)/metrics and /health")
            server.serve { path in
                switch path {
                case "/metrics":
                    do {
                        return (200, "text/plain; version=0.0.4; charset=utf-8", try options.render())
                    } catch {
                        return (500, "text/plain", errorMessage(error) + "\n")
                    }
                case "/health", "/healthz":
                    do {
                        _ = try Repository(backend: try options.store.backend(), cacheRoot: options.store.cacheRoot)
                        return (200, "text/plain", "OK\n")
                    } catch {
                        return (503, "text/plain", errorMessage(error) + "\n")
                    }
                default:
                    return (404, "text/plain", "not found: try /metrics or /health\n")
                }
            }
        }
    }
}

/// A minimal HTTP/1.1 server for GET requests, one connection at a time.
final class HTTPServer {
    private let fd: Int32
    let port: UInt16

    init(address: String, port: UInt16) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw DedupError.io(operation: "socket", path: address, errno: errno) }
        var yes: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = port.bigEndian
        guard inet_pton(AF_INET, address, &addr.sin_addr) == 1 else {
            close(fd)
            throw DedupError.invalidArgument("--bind takes an IPv4 address like 127.0.0.1, not '\(address)'")
        }
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard bound == 0, listen(fd, 16) == 0 else {
            let code = errno
            close(fd)
            throw DedupError.io(operation: "listen on", path: "\(address):\(port)", errno: code)
        }
        var actual = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &actual) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        self.fd = fd
        self.port = UInt16(bigEndian: actual.sin_port)
    }

    deinit { close(fd) }

    /// Answers requests until the process is stopped.
    func serve(_ handler: (String) -> (status: Int, type: String, body: String)) {
        signal(SIGPIPE, SIG_IGN)
        while true {
            let client = accept(fd, nil, nil)
            if client < 0 { if errno == EINTR { continue }; usleep(100_000); continue }
            var timeout = timeval(tv_sec: 10, tv_usec: 0)
            setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            respond(client, handler)
            close(client)
        }
    }

    private func respond(_ client: Int32, _ handler: (String) -> (status: Int, type: String, body: String)) {
        var request = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 4096)
        // One deadline for the whole request, however slowly it trickles in.
        let deadline = Date().addingTimeInterval(10)
        while request.count < 16384 {
            let left = deadline.timeIntervalSinceNow
            guard left > 0 else { break }
            var pfd = pollfd(fd: client, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, Int32(left * 1000)) > 0 else { break }
            let n = buffer.withUnsafeMutableBytes { recv(client, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            request += buffer[0..<n]
            if request.count >= 4, request.suffix(4) == [13, 10, 13, 10] { break }
            if String(decoding: request, as: UTF8.self).contains("\r\n\r\n") { break }
        }
        let firstLine = String(decoding: request, as: UTF8.self).split(separator: "\r\n").first ?? ""
        let parts = firstLine.split(separator: " ")
        let reply: (status: Int, type: String, body: String)
        if parts.count >= 2, parts[0] == "GET" || parts[0] == "HEAD" {
            let path = String(parts[1].split(separator: "?").first ?? "")
            reply = handler(path)
        } else {
            reply = (405, "text/plain", "only GET\n")
        }
        let reason =
            [
                200: "OK", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error",
                503: "Service Unavailable",
            ][reply.status] ?? "Error"
        let body = Array(reply.body.utf8)
        let head =
            "HTTP/1.1 \(reply.status) \(reason)\r\nContent-Type: \(reply.type)\r\nContent-Length: \(body.count)\r\nConnection: close\r\n\r\n"
        let bytes = Array(head.utf8) + (parts.first == "HEAD" ? [] : body)
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes { raw -> Int in
                guard let base = raw.baseAddress else { return -1 }
                return send(client, base + sent, bytes.count - sent, 0)
            }
            if n <= 0 { break }
            sent += n
        }
    }
}
