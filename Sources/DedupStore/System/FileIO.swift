import CLinux
import Foundation

/// Thin, checked wrappers around the POSIX calls the store needs. Every failure
/// becomes a `DedupError.io` naming the operation and the path.
public enum FileIO {
    /// The folder part of a path ("" for a bare name, "/" for a file in /).
    /// Foundation's NSString path methods trap on some inputs on Linux; these don't.
    public static func parent(_ path: String) -> String {
        var p = Substring(path)
        while p.count > 1 && p.hasSuffix("/") { p = p.dropLast() }
        guard let slash = p.lastIndex(of: "/") else { return "" }
        if slash == p.startIndex { return "/" }
        return String(p[p.startIndex..<slash])
    }

    /// The last component of a path.
    public static func lastComponent(_ path: String) -> String {
        var p = Substring(path)
        while p.count > 1 && p.hasSuffix("/") { p = p.dropLast() }
        guard let slash = p.lastIndex(of: "/") else { return String(p) }
        return String(p[p.index(after: slash)...])
    }

    /// An absolute path: relative ones are taken from the current folder.
    public static func absolute(_ path: String) -> String {
        if path.hasPrefix("/") { return path }
        let cwd = FileManager.default.currentDirectoryPath
        let joined = path == "." ? cwd : cwd + "/" + (path.hasPrefix("./") ? String(path.dropFirst(2)) : path)
        return joined.count > 1 && joined.hasSuffix("/") ? String(joined.dropLast()) : joined
    }

    public static func open(_ path: String, _ flags: Int32, mode: mode_t = 0o644) throws -> Int32 {
        while true {
            let fd = Glibc.open(path, flags | O_CLOEXEC, mode)
            if fd >= 0 { return fd }
            if errno == EINTR { continue }
            throw DedupError.io(operation: "open", path: path, errno: errno)
        }
    }

    /// A pipe whose two ends are closed on exec (children get only what they are given).
    public static func makePipe() -> (read: Int32, write: Int32)? {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { return nil }
        _ = fcntl(fds[0], F_SETFD, FD_CLOEXEC)
        _ = fcntl(fds[1], F_SETFD, FD_CLOEXEC)
        enlargePipe(fds[0])
        return (fds[0], fds[1])
    }

    /// The largest single write(2). Measured on this project's machines (VMs whose
    /// free memory goes back to the host): writing 360 MB into a new file took
    /// 1.24 s of kernel time in 16 MiB writes, 0.32–0.83 s in 1 MiB writes and
    /// 0.10–0.47 s in 128 KiB writes (`dd bs=...` after rm, sync and a pause; large
    /// writes make the kernel assemble large page-cache folios from fresh memory).
    static let maxWrite = 128 << 10

    /// Writes every byte or throws.
    public static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer, path: String) throws {
        guard var p = bytes.baseAddress else { return }
        var left = bytes.count
        while left > 0 {
            let n = Glibc.write(fd, p, min(left, maxWrite))
            if n < 0 {
                if errno == EINTR { continue }
                throw DedupError.io(operation: "write", path: path, errno: errno)
            }
            p += n
            left -= n
        }
    }

    /// Reads exactly `buffer.count` bytes at `offset`, or throws (a short file is an error).
    public static func preadAll(
        _ fd: Int32, _ buffer: UnsafeMutableRawBufferPointer, at offset: Int64, path: String
    ) throws {
        guard var p = buffer.baseAddress else { return }
        var left = buffer.count
        var off = offset
        while left > 0 {
            let n = Glibc.pread(fd, p, left, off_t(off))
            if n < 0 {
                if errno == EINTR { continue }
                throw DedupError.io(operation: "read", path: path, errno: errno)
            }
            if n == 0 { throw DedupError.shortRead(path: path) }
            p += n
            left -= n
            off += Int64(n)
        }
    }

    public static func fsync(_ fd: Int32, path: String) throws {
        if Glibc.fsync(fd) != 0 { throw DedupError.io(operation: "fsync", path: path, errno: errno) }
    }

    /// Reserves `size` bytes for a new file, so that a full disk shows at once
    /// (ENOSPC) rather than half way; file systems without fallocate are fine.
    public static func preallocate(_ fd: Int32, size: Int64, path: String) throws {
        guard size > 0 else { return }
        if dbb_fallocate(fd, 0, size) != 0 && errno != EOPNOTSUPP && errno != ENOSYS {
            throw DedupError.io(operation: "fallocate", path: path, errno: errno)
        }
    }

    /// Asks the kernel to start writing a range of a file to disk now, without
    /// waiting (a later fsync then finds little left to do).
    public static func startWriteback(_ fd: Int32, offset: Int64, length: Int64) {
        _ = dbb_start_writeback(fd, offset, length)
    }

    /// Grows a pipe's kernel buffer to 1 MiB (the unprivileged maximum), so a
    /// reader gets large reads and far fewer wake-ups than with the default 64 KiB.
    /// Does nothing for files, terminals and sockets, or when the kernel refuses.
    public static func enlargePipe(_ fd: Int32) {
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFIFO else { return }
        _ = dbb_set_pipe_size(fd, 1 << 20)
    }

    /// fsyncs a directory so that a rename or a new entry in it survives a crash.
    public static func fsyncDirectory(_ path: String) throws {
        let fd = try open(path, O_RDONLY | O_DIRECTORY)
        defer { close(fd) }
        try fsync(fd, path: path)
    }

    public static func fileSize(_ path: String) -> Int64? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return Int64(st.st_size)
    }

    public static func isDirectory(_ path: String) -> Bool {
        var st = stat()
        return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
    }

    public static func exists(_ path: String) -> Bool {
        var st = stat()
        return lstat(path, &st) == 0
    }

    /// Creates a directory and any missing parents, fsyncing each new entry's parent.
    public static func makeDirectories(_ path: String) throws {
        if isDirectory(path) { return }
        let parent = parent(path)
        if !parent.isEmpty && parent != path { try makeDirectories(parent) }
        if mkdir(path, 0o755) != 0 && errno != EEXIST {
            throw DedupError.io(operation: "create folder", path: path, errno: errno)
        }
        if !parent.isEmpty { try fsyncDirectory(parent) }
    }

    /// Reads a whole (small) file.
    /// A new folder only this user can enter, in $TMPDIR (else /tmp).
    public static func makePrivateTemporaryDirectory(prefix: String) throws -> String {
        let root = ProcessInfo.processInfo.environment["TMPDIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
        var template = Array((root + "/" + prefix + ".XXXXXX").utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ buf in buf.baseAddress.flatMap { mkdtemp($0) } })
        else {
            throw DedupError.io(operation: "mkdtemp", path: root, errno: errno)
        }
        return String(cString: made)
    }

    public static func readFile(_ path: String) throws -> [UInt8] {
        let fd = try open(path, O_RDONLY)
        defer { close(fd) }
        var out = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw DedupError.io(operation: "read", path: path, errno: errno)
            }
            if n == 0 { break }
            out.append(contentsOf: chunk[0..<n])
        }
        return out
    }

    /// Writes a small file atomically: temporary name, fsync, rename, fsync folder.
    /// Throws `outputFolderMissing` when the folder `path` goes into is not there
    /// (before a temporary name beside it would be the one a message names).
    public static func requireFolder(of path: String) throws {
        let dir = parent(path)
        let folder = dir.isEmpty ? "." : dir
        guard isDirectory(folder) else { throw DedupError.outputFolderMissing(path: path, folder: folder) }
    }

    public static func writeFileAtomically(_ path: String, _ bytes: [UInt8], durable: Bool = true) throws {
        let dir = parent(path)
        try requireFolder(of: path)
        let tmp = path + ".tmp-\(getpid())-\(Hex.encode(SecureRandom.bytes(4)))"
        let fd = try open(tmp, O_WRONLY | O_CREAT | O_EXCL, mode: 0o644)
        var open = true
        do {
            try bytes.withUnsafeBytes { try writeAll(fd, $0, path: tmp) }
            if durable { try fsync(fd, path: tmp) }
            close(fd)
            open = false
            if rename(tmp, path) != 0 { throw DedupError.io(operation: "rename", path: tmp, errno: errno) }
            if durable { try fsyncDirectory(dir.isEmpty ? "." : dir) }
        } catch {
            if open { close(fd) }
            unlink(tmp)
            throw error
        }
    }
}

/// Reads a file descriptor: a file, a pipe or standard input.
public struct FileDescriptorSource: ByteSource {
    public let fd: Int32
    public let name: String

    public init(fd: Int32, name: String) {
        self.fd = fd
        self.name = name
        FileIO.enlargePipe(fd)
    }

    public mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        while true {
            let n = Glibc.read(fd, buffer.baseAddress, buffer.count)
            if n >= 0 { return n }
            if errno == EINTR { continue }
            throw DedupError.inputUnreadable(path: name, reason: String(cString: strerror(errno)))
        }
    }
}

/// Reads from memory (tests and benchmarks).
public struct BufferSource: ByteSource {
    private let bytes: [UInt8]
    private var position = 0

    public init(_ bytes: [UInt8]) { self.bytes = bytes }

    public mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = min(buffer.count, bytes.count - position)
        if n == 0 { return 0 }
        bytes.withUnsafeBytes { src in
            guard let dst = buffer.baseAddress, let from = src.baseAddress else { return }
            dst.copyMemory(from: from + position, byteCount: n)
        }
        position += n
        return n
    }
}
