import Foundation

/// Where the repository's objects live. The format needs nothing more than whole
/// objects written once (atomically visible), read by range, listed, and deleted,
/// so an S3-compatible store can implement this beside the local folder.
public protocol Backend: AnyObject {
    /// A human-readable location, for messages.
    var location: String { get }
    /// Starts a new object; it becomes visible under its key only at `commit`.
    func create() throws -> ObjectWriter
    /// Writes a small object in one step; with `ifAbsent`, fails if the key exists.
    func put(_ key: String, _ bytes: [UInt8], ifAbsent: Bool) throws
    /// Reads a whole (small) object; nil if it does not exist.
    func get(_ key: String) throws -> [UInt8]?
    /// Opens an object for reads by range.
    func openReader(_ key: String) throws -> ObjectReader
    /// Keys under a prefix ("packs/", "manifests/"), with sizes.
    func list(_ prefix: String) throws -> [ObjectInfo]
    /// The size of an object, or nil if it does not exist.
    func size(_ key: String) throws -> Int64?
    func delete(_ key: String) throws
}

public struct ObjectInfo: Equatable, Sendable {
    public var key: String
    public var size: Int64
}

/// A new object being written. Either `commit` or `abort` ends it.
public protocol ObjectWriter: AnyObject {
    /// Bytes written so far.
    var bytesWritten: Int64 { get }
    func write(_ bytes: UnsafeRawBufferPointer) throws
    /// Makes the object durable and visible under `key`. With `ifAbsent`, an
    /// existing object under that key is left alone and `false` is returned.
    @discardableResult
    func commit(key: String, ifAbsent: Bool) throws -> Bool
    /// Discards the object; safe to call more than once.
    func abort()
}

/// Random-access reads of one stored object.
public protocol ObjectReader: AnyObject {
    var size: Int64 { get }
    func read(at offset: Int64, into buffer: UnsafeMutableRawBufferPointer) throws
}

extension ObjectWriter {
    public func write(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try write($0) }
    }
}

extension ObjectReader {
    public func read(at offset: Int64, count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        try out.withUnsafeMutableBytes { try read(at: offset, into: $0) }
        return out
    }
}

/// The repository in a local folder. Objects are files under their key; new ones are
/// written in `tmp/`, fsynced, then linked (create-if-absent) or renamed into place,
/// and the folder is fsynced, so a crash leaves either the whole object or none.
public final class LocalBackend: Backend {
    public let root: String
    public var location: String { root }

    public init(root: String) {
        self.root = root
    }

    public func path(_ key: String) -> String { root + "/" + key }

    var tmpDirectory: String { root + "/tmp" }

    public func create() throws -> ObjectWriter {
        try FileIO.makeDirectories(tmpDirectory)
        let tmp = tmpDirectory + "/" + TemporaryName.make()
        return try LocalObjectWriter(backend: self, tmpPath: tmp)
    }

    /// Removes temporary objects left by processes of this host that are gone.
    /// Returns how many were removed.
    @discardableResult
    public func removeDeadTemporaries() -> Int {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: tmpDirectory) else { return 0 }
        var removed = 0
        for name in names where TemporaryName.ownerIsGone(name) {
            if unlink(tmpDirectory + "/" + name) == 0 { removed += 1 }
        }
        return removed
    }

    public func put(_ key: String, _ bytes: [UInt8], ifAbsent: Bool) throws {
        let w = try create()
        do {
            try w.write(bytes)
            if try !w.commit(key: key, ifAbsent: ifAbsent) {
                throw DedupError.io(operation: "create", path: path(key), errno: EEXIST)
            }
        } catch {
            w.abort()
            throw error
        }
    }

    public func get(_ key: String) throws -> [UInt8]? {
        let p = path(key)
        guard FileIO.exists(p) else { return nil }
        return try FileIO.readFile(p)
    }

    public func openReader(_ key: String) throws -> ObjectReader {
        try LocalObjectReader(path: path(key))
    }

    public func list(_ prefix: String) throws -> [ObjectInfo] {
        // Keys are "folder/name" or "folder/xx/name"; walk the folder part of the prefix.
        let folder = prefix.hasSuffix("/") ? String(prefix.dropLast()) : FileIO.parent(prefix)
        var out = [ObjectInfo]()
        try walk(folder, into: &out)
        return out.filter { $0.key.hasPrefix(prefix) }.sorted { $0.key < $1.key }
    }

    private func walk(_ folder: String, into out: inout [ObjectInfo]) throws {
        let dirPath = path(folder)
        guard let dir = opendir(dirPath) else {
            if errno == ENOENT { return }
            throw DedupError.io(operation: "list", path: dirPath, errno: errno)
        }
        defer { closedir(dir) }
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name == "." || name == ".." || name.hasPrefix(".") { continue }
            let key = folder + "/" + name
            var st = stat()
            guard lstat(path(key), &st) == 0 else { continue }
            if (st.st_mode & S_IFMT) == S_IFDIR {
                try walk(key, into: &out)
            } else if (st.st_mode & S_IFMT) == S_IFREG {
                out.append(ObjectInfo(key: key, size: Int64(st.st_size)))
            }
        }
    }

    public func size(_ key: String) throws -> Int64? {
        FileIO.fileSize(path(key))
    }

    public func delete(_ key: String) throws {
        let p = path(key)
        if unlink(p) != 0 {
            if errno == ENOENT { return }
            throw DedupError.io(operation: "delete", path: p, errno: errno)
        }
        let folder = FileIO.parent(p)
        try FileIO.fsyncDirectory(folder)
        // A fan-out folder (packs/xx/) goes with its last object; a writer that
        // created it meanwhile finds it gone and creates it again (commit).
        if key.split(separator: "/").count > 2, rmdir(folder) == 0 {
            try FileIO.fsyncDirectory(FileIO.parent(folder))
        }
    }
}

/// Names of temporary files: `<host>_<pid>_<random>.tmp`, so that leftovers of a
/// process that died can be told from files another process is still writing.
enum TemporaryName {
    static func make() -> String {
        "\(LockInfo.currentHost)_\(getpid())_\(Hex.encode(SecureRandom.bytes(8))).tmp"
    }

    /// True for a temporary of this host whose process no longer runs.
    static func ownerIsGone(_ name: String) -> Bool {
        guard name.hasSuffix(".tmp") else { return false }
        let parts = name.dropLast(4).split(separator: "_")
        guard parts.count >= 3, let pid = Int32(parts[parts.count - 2]) else { return false }
        let host = parts.dropLast(2).joined(separator: "_")
        guard host == LockInfo.currentHost, pid > 0 else { return false }
        return kill(pid, 0) != 0 && errno == ESRCH
    }
}

final class LocalObjectWriter: ObjectWriter {
    private let backend: LocalBackend
    private let tmpPath: String
    private var fd: Int32
    private var finished = false
    private(set) var bytesWritten: Int64 = 0

    init(backend: LocalBackend, tmpPath: String) throws {
        self.backend = backend
        self.tmpPath = tmpPath
        fd = try FileIO.open(tmpPath, O_WRONLY | O_CREAT | O_EXCL, mode: 0o644)
        InterruptCleanup.register(tmpPath)
    }

    deinit { abort() }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        guard fd >= 0 else { throw DedupError.io(operation: "write", path: tmpPath, errno: EBADF) }
        try FaultInjection.chargeWrite(bytes.count, path: tmpPath)
        try FileIO.writeAll(fd, bytes, path: tmpPath)
        bytesWritten += Int64(bytes.count)
    }

    func commit(key: String, ifAbsent: Bool) throws -> Bool {
        guard !finished else { throw DedupError.io(operation: "commit", path: tmpPath, errno: EBADF) }
        // The first commit attempt makes the data durable; a retry under another
        // key (the first was taken) finds the descriptor already closed.
        if fd >= 0 {
            try FileIO.fsync(fd, path: tmpPath)
            close(fd)
            fd = -1
        }
        let final = backend.path(key)
        let folder = FileIO.parent(final)
        // Twice at most: a delete of the folder's last object may remove the
        // folder between its creation and the link (LocalBackend.delete).
        for attempt in 1...2 {
            try FileIO.makeDirectories(folder)
            // link() fails with EEXIST rather than replace: create-if-absent. The
            // temporary file stays, so the caller may commit under another key.
            let rc = ifAbsent ? link(tmpPath, final) : rename(tmpPath, final)
            if rc == 0 { break }
            let code = errno
            if ifAbsent && code == EEXIST { return false }
            if code == ENOENT && attempt == 1 { continue }
            throw DedupError.io(operation: ifAbsent ? "create" : "rename", path: final, errno: code)
        }
        if ifAbsent { unlink(tmpPath) }
        finished = true
        InterruptCleanup.unregister(tmpPath)
        try FileIO.fsyncDirectory(folder)
        return true
    }

    func abort() {
        if fd >= 0 {
            close(fd)
            fd = -1
        }
        if !finished {
            finished = true
            unlink(tmpPath)
            InterruptCleanup.unregister(tmpPath)
        }
    }
}

final class LocalObjectReader: ObjectReader {
    private let fd: Int32
    private let path: String
    let size: Int64

    init(path: String) throws {
        self.path = path
        fd = try FileIO.open(path, O_RDONLY)
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let code = errno
            close(fd)
            throw DedupError.io(operation: "stat", path: path, errno: code)
        }
        size = Int64(st.st_size)
    }

    deinit { close(fd) }

    func read(at offset: Int64, into buffer: UnsafeMutableRawBufferPointer) throws {
        guard offset >= 0, offset <= size - Int64(buffer.count) else {
            throw DedupError.shortRead(path: path)
        }
        try FileIO.preadAll(fd, buffer, at: offset, path: path)
    }
}
