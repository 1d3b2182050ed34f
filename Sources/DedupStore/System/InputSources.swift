import Foundation

/// Finds an executable in PATH, as a shell would.
public func findExecutable(_ name: String) -> String? {
    if name.contains("/") { return access(name, X_OK) == 0 ? name : nil }
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
    for dir in path.split(separator: ":") {
        let candidate = "\(dir)/\(name)"
        if access(candidate, X_OK) == 0, !FileIO.isDirectory(candidate) { return candidate }
    }
    return nil
}

/// The standard output of a child process. End of input counts only once the child
/// has exited 0: a producer that fails, or is killed, half way makes `read` throw,
/// so no backup of a cut-short stream is committed.
public final class ProcessOutputSource: ByteSource {
    private let child: ChildProcess
    private let fd: Int32
    public var commandLine: String { child.commandLine }
    private var finished = false

    /// Starts `arguments[0]` (looked up in PATH) with the rest as its arguments.
    /// Its stdin is /dev/null unless `stdinFD` is given; its stderr is ours.
    public init(arguments: [String], environment: [String: String]? = nil, stdinFD: Int32? = nil) throws {
        guard let name = arguments.first else { throw DedupError.invalidArgument("no input command given") }
        guard let exe = findExecutable(name) else {
            throw DedupError.inputCommandFailed(command: name, status: "was not found in PATH")
        }
        guard let fds = FileIO.makePipe() else {
            throw DedupError.inputCommandFailed(
                command: name, status: "could not be started (no pipe: \(String(cString: strerror(errno))))")
        }
        let devNull = stdinFD == nil ? Glibc.open("/dev/null", O_RDONLY | O_CLOEXEC) : -1
        defer { if devNull >= 0 { close(devNull) } }
        do {
            child = try ChildProcess(executable: exe, arguments: arguments, environment: environment,
                                     stdinFD: stdinFD ?? devNull, stdoutFD: fds.write)
        } catch {
            close(fds.read); close(fds.write)
            throw error
        }
        close(fds.write)
        fd = fds.read
    }

    deinit {
        close(fd)  // a child still writing gets SIGPIPE; ChildProcess's deinit stops it
    }

    /// The next `count` bytes (fewer at the end of the output).
    public func read(upTo count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = try bytes.withUnsafeMutableBytes {
                try read(into: UnsafeMutableRawBufferPointer(rebasing: $0[got...]))
            }
            if n == 0 { break }
            got += n
        }
        return Array(bytes[0..<got])
    }

    public func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        if finished { return 0 }
        while true {
            let n = Glibc.read(fd, buffer.baseAddress, buffer.count)
            if n > 0 { return n }
            if n < 0 {
                if errno == EINTR { continue }
                throw DedupError.inputUnreadable(path: commandLine, reason: String(cString: strerror(errno)))
            }
            break
        }
        finished = true
        if let failure = child.failure() {
            throw DedupError.inputCommandFailed(command: commandLine, status: failure)
        }
        return 0
    }
}

/// Reads a source that may be gzip- or zstd-compressed and yields its plaintext:
/// zstd through libzstd, gzip through a `gzip -dc` child fed from a thread.
public enum DecompressingInput {
    public enum Format: String, Sendable { case gzip, zstd, none }

    /// Detects the format from the first bytes of `fd` and returns a source of the
    /// decompressed stream, and which format it was.
    public static func open(fd: Int32, name: String) throws -> (source: any ByteSource, format: Format) {
        var magic = [UInt8](repeating: 0, count: 4)
        var got = 0
        var raw = FileDescriptorSource(fd: fd, name: name)
        while got < 4 {
            let n = try magic.withUnsafeMutableBytes {
                try raw.read(into: UnsafeMutableRawBufferPointer(rebasing: $0[got...]))
            }
            if n == 0 { break }
            got += n
        }
        let prefix = Array(magic[0..<got])
        let inner = PrefixedSource(prefix: prefix, rest: raw)
        if prefix.count >= 4, prefix == [0x28, 0xB5, 0x2F, 0xFD] {
            return (try ZstdStreamSource(inner), .zstd)
        }
        if prefix.count >= 2, prefix[0] == 0x1F, prefix[1] == 0x8B {
            guard let feed = FileIO.makePipe() else {
                throw DedupError.inputUnreadable(
                    path: name, reason: "cannot set up gzip decompression (\(String(cString: strerror(errno))))")
            }
            let source: ProcessOutputSource
            do {
                source = try ProcessOutputSource(arguments: ["gzip", "-dc"], stdinFD: feed.read)
            } catch {
                close(feed.read); close(feed.write)
                throw error
            }
            close(feed.read)
            // The feeder owns its own descriptors: the caller may close `fd` on error.
            let writeFD = feed.write
            let readFD = dup(fd)
            guard readFD >= 0 else {
                close(writeFD)
                throw DedupError.inputUnreadable(
                    path: name, reason: "cannot set up gzip decompression (\(String(cString: strerror(errno))))")
            }
            let thread = Thread {
                // Copies prefix + rest of the input into gzip; closing ends its input.
                // SIGPIPE is blocked in this thread only: if gzip exits early (bad
                // input, or dbbackup stopping it on an error), write() fails with
                // EPIPE here instead of killing the process.
                var set = sigset_t()
                sigemptyset(&set)
                sigaddset(&set, SIGPIPE)
                pthread_sigmask(SIG_BLOCK, &set, nil)
                var buf = [UInt8](repeating: 0, count: 1 << 20)
                var src = PrefixedSource(prefix: prefix, rest: FileDescriptorSource(fd: readFD, name: name))
                while let n = try? buf.withUnsafeMutableBytes({ try src.read(into: $0) }), n > 0 {
                    let ok =
                        (try? buf.withUnsafeBytes {
                            try FileIO.writeAll(writeFD, UnsafeRawBufferPointer(rebasing: $0[0..<n]), path: "gzip")
                        }) != nil
                    if !ok { break }
                }
                close(writeFD)
                close(readFD)
            }
            thread.start()
            return (source, .gzip)
        }
        return (inner, .none)
    }
}

/// A few bytes already read, then the rest of a source.
public struct PrefixedSource<Rest: ByteSource>: ByteSource {
    private var prefix: [UInt8]
    private var rest: Rest

    public init(prefix: [UInt8], rest: Rest) {
        self.prefix = prefix
        self.rest = rest
    }

    public mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        if !prefix.isEmpty {
            let n = min(prefix.count, buffer.count)
            for i in 0..<n { buffer[i] = prefix[i] }
            prefix.removeFirst(n)
            return n
        }
        return try rest.read(into: buffer)
    }
}

/// Lets an existential source be used where a concrete `ByteSource` is needed.
public struct AnySource: ByteSource {
    private var inner: any ByteSource
    public init(_ inner: any ByteSource) { self.inner = inner }
    public mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        try inner.read(into: buffer)
    }
}
