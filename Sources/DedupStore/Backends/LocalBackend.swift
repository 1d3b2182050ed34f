import CLinux
import Foundation

/// The repository in a local folder. Objects are files under their key; new ones are
/// written in `tmp/`, fsynced, then linked (create-if-absent) or renamed into place,
/// and the folder is fsynced, so a crash leaves either the whole object or none.
public final class LocalBackend: Backend {
    public let root: String
    public var location: String { root }
    public let capabilities = BackendCapabilities(atomicCreateIfAbsent: true, listAfterWriteConsistent: true)
    /// False: no fsync of objects or folders, for generators of test repositories
    /// only (dbbackup-gen, tools/bench-scale); a crash may then lose or cut what was written.
    public let durable: Bool

    public init(root: String, durable: Bool = true) {
        self.root = root
        self.durable = durable
    }

    func syncFolder(_ path: String) throws {
        if durable { try FileIO.fsyncDirectory(path) }
    }

    /// The file that holds `key` (the local backend's own business; tests that
    /// damage files on purpose use it).
    public func path(_ key: String) -> String { root + "/" + key }

    var tmpDirectory: String { root + "/tmp" }

    private func failure(_ operation: String, _ key: String, _ code: Int32) -> DedupError {
        .storage(BackendError(operation, path(key), errno: code))
    }

    public func create(_ key: String, ifAbsent: Bool) throws -> ObjectWriter {
        do {
            try FileIO.makeDirectories(tmpDirectory)
        } catch DedupError.io(_, _, let code) {
            throw failure("create", "tmp", code)
        }
        let tmp = tmpDirectory + "/" + TemporaryName.make()
        return try LocalObjectWriter(
            backend: self, key: key, ifAbsent: ifAbsent, tmpPath: tmp, direct: durable && key.hasPrefix("packs/"))
    }

    public func get(_ key: String) throws -> [UInt8]? {
        let p = path(key)
        guard FileIO.exists(p) else { return nil }
        do {
            return try FileIO.readFile(p)
        } catch DedupError.io(let operation, _, let code) {
            if code == ENOENT { return nil }
            throw failure(operation, key, code)
        }
    }

    public func openReader(_ key: String) throws -> ObjectReader {
        try LocalObjectReader(path: path(key))
    }

    public func list(_ prefix: String) throws -> [ObjectInfo] {
        try walk(prefix, sizes: true)
    }

    public func ages(_ prefix: String) throws -> [String: TimeInterval] {
        let now = Date().timeIntervalSince1970
        var out = [String: TimeInterval]()
        for o in try list(prefix) {
            var st = stat()
            guard stat(path(o.key), &st) == 0 else { continue }
            out[o.key] = now - (Double(st.st_mtim.tv_sec) + Double(st.st_mtim.tv_nsec) / 1e9)
        }
        return out
    }

    /// Keys only: the file types from the directory entries (d_type), a stat only
    /// where the file system does not give them.
    public func keys(_ prefix: String) throws -> [String] {
        try walk(prefix, sizes: false).map(\.key)
    }

    /// One directory entry at a time, in directory order.
    public func forEachKey(_ prefix: String, _ body: (String) throws -> Void) throws {
        try forEachFile(under: prefix, sizes: false) { try body($0.key) }
    }

    /// The files under `prefix`, sorted by key. With `sizes`, each file is stat'ed;
    /// without, sizes are 0.
    private func walk(_ prefix: String, sizes: Bool) throws -> [ObjectInfo] {
        var out = [ObjectInfo]()
        try forEachFile(under: prefix, sizes: sizes) { out.append($0) }
        return out.sorted { $0.key < $1.key }
    }

    /// Calls `visit` with each file under `prefix`, in directory order. Keys are
    /// "folder/name" or "folder/xx/name": the walk starts at the folder part of
    /// the prefix.
    private func forEachFile(under prefix: String, sizes: Bool, _ visit: (ObjectInfo) throws -> Void) throws {
        let folder = prefix.hasSuffix("/") ? String(prefix.dropLast()) : FileIO.parent(prefix)
        try walk(folder, sizes: sizes, visiting: { if $0.key.hasPrefix(prefix) { try visit($0) } })
    }

    private func walk(_ folder: String, sizes: Bool, visiting visit: (ObjectInfo) throws -> Void) throws {
        let dirPath = path(folder)
        guard let dir = opendir(dirPath) else {
            if errno == ENOENT { return }
            throw failure("list", folder, errno)
        }
        defer { closedir(dir) }
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name == "." || name == ".." || name.hasPrefix(".") { continue }
            let key = folder + "/" + name
            var type = Int32(entry.pointee.d_type)
            var size: Int64 = 0
            if sizes || type == Int32(DT_UNKNOWN) {
                var st = stat()
                guard lstat(path(key), &st) == 0 else { continue }
                let mode = st.st_mode & S_IFMT
                type = mode == S_IFDIR ? Int32(DT_DIR) : (mode == S_IFREG ? Int32(DT_REG) : 0)
                size = Int64(st.st_size)
            }
            if type == Int32(DT_DIR) {
                try walk(key, sizes: sizes, visiting: visit)
            } else if type == Int32(DT_REG) {
                try visit(ObjectInfo(key: key, size: size))
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
            throw failure("delete", key, errno)
        }
        let folder = FileIO.parent(p)
        try syncFolder(folder)
        // A fan-out folder (packs/xx/) goes with its last object; a writer that
        // created it meanwhile finds it gone and creates it again (commit).
        if key.split(separator: "/").count > 2, rmdir(folder) == 0 {
            try syncFolder(FileIO.parent(folder))
        }
    }

    /// Unlinks every file first, then syncs each folder once, and removes the
    /// fan-out folders (packs/xx/) left empty, syncing their parent once.
    public func delete(keys: [String]) throws {
        var folders = [String: Bool]()  // folder: is a fan-out folder
        for key in keys {
            let p = path(key)
            if unlink(p) != 0 {
                if errno == ENOENT { continue }
                throw failure("delete", key, errno)
            }
            folders[FileIO.parent(p)] = key.split(separator: "/").count > 2
        }
        var parents = Set<String>()
        for (folder, fanOut) in folders.sorted(by: { $0.key < $1.key }) {
            // A writer that created the folder meanwhile finds it gone and creates it again.
            if fanOut, rmdir(folder) == 0 {
                parents.insert(FileIO.parent(folder))
            } else {
                try syncFolder(folder)
            }
        }
        for parent in parents.sorted() { try syncFolder(parent) }
    }

    public var isReadOnly: Bool {
        var st = statvfs()
        return statvfs(root, &st) == 0 && (st.f_flag & UInt(ST_RDONLY)) != 0
    }

    public func storageUsage() -> Int64 { Self.diskUsage(of: root) }

    /// Bytes the regular files under `folder` take on disk, found one directory
    /// entry at a time (FileManager's enumerator held every path first: 128 MB for
    /// the million files of a year of WAL).
    public static func diskUsage(of folder: String) -> Int64 {
        guard let dir = opendir(folder) else { return 0 }
        defer { closedir(dir) }
        var total: Int64 = 0
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            if name == "." || name == ".." { continue }
            let path = folder + "/" + name
            var st = stat()
            guard lstat(path, &st) == 0 else { continue }
            switch st.st_mode & S_IFMT {
            case S_IFDIR: total += diskUsage(of: path)
            case S_IFREG: total += Int64(st.st_blocks) * 512
            default: break
            }
        }
        return total
    }

    public var cacheIdentity: String {
        realpath(root, nil).map { p in defer { free(p) }; return String(cString: p) } ?? FileIO.absolute(root)
    }

    /// The folders of a repository (each also created when first needed).
    static let folders: Set<String> = ["packs", "manifests", "locks", "tmp", "keys"]

    /// True for a folder that is absent, empty, or holds only the empty folders an
    /// interrupted `init` leaves: a repository may be created there.
    public var isEmptyOrSkeleton: Bool {
        if !FileIO.exists(root) { return true }
        guard FileIO.isDirectory(root), let entries = try? FileManager.default.contentsOfDirectory(atPath: root) else {
            return false
        }
        return entries.allSatisfy { name in
            // tmp/ may hold the half-written config of an interrupted init, keys/
            // the key object of one (removed when init runs again).
            Self.folders.contains(name) && FileIO.isDirectory(root + "/" + name)
                && (name == "tmp" || name == "keys"
                    || ((try? FileManager.default.subpathsOfDirectory(atPath: root + "/" + name)) ?? ["?"]).allSatisfy {
                        FileIO.isDirectory(root + "/" + name + "/" + $0)
                    })
        }
    }

    public func canHoldNewRepository() throws -> Bool { isEmptyOrSkeleton }

    public func prepareForNewRepository() throws {
        guard isEmptyOrSkeleton else { throw DedupError.directoryNotEmpty(path: root) }
        try FileIO.makeDirectories(root)
        // Key objects of an interrupted init wrap a master key nothing uses.
        for leftover in (try? FileManager.default.contentsOfDirectory(atPath: root + "/keys")) ?? [] {
            try? FileManager.default.removeItem(atPath: root + "/keys/" + leftover)
        }
        for sub in Self.folders.sorted() where sub != "keys" {  // keys/: encrypted repositories only
            try FileIO.makeDirectories(root + "/" + sub)
        }
    }

    @discardableResult
    public func removeAbandonedWrites(all: Bool) -> Int {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: tmpDirectory) else { return 0 }
        var removed = 0
        for name in names where all || TemporaryName.ownerIsGone(name) {
            if unlink(tmpDirectory + "/" + name) == 0 { removed += 1 }
        }
        return removed
    }

    public func deleteOnInterrupt(_ key: String) { InterruptCleanup.register(path(key)) }
    public func keepOnInterrupt(_ key: String) { InterruptCleanup.unregister(path(key)) }
}

/// Runs `body`, reporting a file error of it as the storage failure it is.
private func asStorage<T>(_ body: () throws -> T) throws -> T {
    do {
        return try body()
    } catch DedupError.io(let operation, let path, let code) {
        throw DedupError.storage(BackendError(operation, path, errno: code))
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
    private(set) var key: String
    private let ifAbsent: Bool
    private let tmpPath: String
    private var fd: Int32
    private var finished = false
    private(set) var bytesWritten: Int64 = 0
    /// Direct I/O (packs): the bytes go from `staging`, a block-aligned buffer,
    /// to the disk without the page cache. Writing 1.5 GB of packs through the
    /// page cache took 0.3-4.6 s of kernel time here (fresh page-cache memory on
    /// these VMs), directly 0.1 s (docs/PERFORMANCE.md, issue 15); and a backup's
    /// packs, read rarely, no longer push the database's pages out of the cache.
    /// Nil when the file system refuses it (tmpfs) or once a direct write failed:
    /// the rest goes through the page cache, as every other object does.
    private var staging: UnsafeMutableRawBufferPointer?
    private var stagingAllocation: UnsafeMutableRawBufferPointer?
    private var staged = 0
    /// The bytes in the file (those written less those staged).
    private var flushed: Int64 = 0
    static let directBlock = 4096
    static let stagingBytes = 1 << 20

    /// `misalignedForTests`: the staging buffer starts a byte past a block
    /// boundary, so the kernel refuses the first direct write (the fallback's test).
    init(
        backend: LocalBackend, key: String, ifAbsent: Bool, tmpPath: String, direct: Bool = false,
        misalignedForTests: Bool = false
    ) throws {
        self.backend = backend
        self.key = key
        self.ifAbsent = ifAbsent
        self.tmpPath = tmpPath
        let flags = O_WRONLY | O_CREAT | O_EXCL
        // Remembered before it exists: an interruption between the creation and
        // the registration would leave the file behind.
        InterruptCleanup.register(tmpPath)
        var opened: Int32 = -1
        if direct {
            // EINVAL: no direct I/O on this file system; the file is not created then.
            opened = Glibc.open(tmpPath, flags | O_CLOEXEC | dbb_o_direct(), 0o644)
        }
        if opened >= 0 {
            let shift = misalignedForTests ? 1 : 0
            let room = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.stagingBytes + shift, alignment: Self.directBlock)
            stagingAllocation = room
            staging = UnsafeMutableRawBufferPointer(rebasing: room[shift...])
        } else {
            do {
                opened = try asStorage { try FileIO.open(tmpPath, flags, mode: 0o644) }
            } catch {
                InterruptCleanup.unregister(tmpPath)
                throw error
            }
        }
        fd = opened
    }

    deinit {
        abort()
        stagingAllocation?.deallocate()
    }

    /// Whether the bytes still go to the disk directly (tests).
    var isDirect: Bool { staging != nil }

    func write(_ bytes: UnsafeRawBufferPointer) throws {
        guard fd >= 0 else { throw DedupError.storage(BackendError("write", tmpPath, errno: EBADF)) }
        do {
            try append(bytes)
        } catch {
            // Some of the bytes may be missing: this object is never committed.
            writeFailed = true
            throw error
        }
    }

    /// Set by a write that failed; `commit` refuses then.
    private var writeFailed = false

    private func append(_ bytes: UnsafeRawBufferPointer) throws {
        var done = 0
        // Staged while direct (a refused write ends that, within this call too).
        while done < bytes.count, let staging, let to = staging.baseAddress, let from = bytes.baseAddress {
            let n = min(bytes.count - done, staging.count - staged)
            (to + staged).copyMemory(from: from + done, byteCount: n)
            staged += n
            done += n
            bytesWritten += Int64(n)
            if staged == staging.count { try flushStaging() }
        }
        if done < bytes.count {
            let rest = UnsafeRawBufferPointer(rebasing: bytes[done...])
            try asStorage { try FileIO.writeAll(fd, rest, path: tmpPath) }
            bytesWritten += Int64(rest.count)
        }
    }

    /// Writes the staged bytes. Direct writes take whole blocks: the last,
    /// partial one is padded with zeros and the file cut back to its length
    /// after. A direct write the kernel refuses (EINVAL: a device that wants
    /// larger alignment) or cuts short is done again through the page cache,
    /// and so is everything after it.
    private func flushStaging() throws {
        guard let buffer = staging, let base = buffer.baseAddress, staged > 0 else { return }
        let block = Self.directBlock
        let padded = (staged + block - 1) / block * block
        if padded > staged { (base + staged).initializeMemory(as: UInt8.self, repeating: 0, count: padded - staged) }
        var done = 0
        while done < padded {
            let n = Glibc.write(fd, base + done, padded - done)
            if n < 0 && errno == EINTR { continue }
            if n > 0 { done += n }
            if n <= 0 || n % block != 0 { break }
        }
        let end = off_t(flushed + Int64(staged))
        if done >= padded {
            // Only the last write is padded: cut the zeros off again.
            if padded > staged && ftruncate(fd, end) != 0 {
                throw DedupError.storage(BackendError("truncate", tmpPath, errno: errno))
            }
        } else {
            let flags = fcntl(fd, F_GETFL)
            guard flags >= 0, fcntl(fd, F_SETFL, flags & ~dbb_o_direct()) == 0 else {
                throw DedupError.storage(BackendError("write", tmpPath, errno: errno))
            }
            if done > staged {
                // Zeros of the padding reached the file.
                guard ftruncate(fd, end) == 0, lseek(fd, end, SEEK_SET) == end else {
                    throw DedupError.storage(BackendError("truncate", tmpPath, errno: errno))
                }
            }
            let kept = min(done, staged)
            staging = nil
            defer {
                stagingAllocation?.deallocate()
                stagingAllocation = nil
            }
            try asStorage {
                try FileIO.writeAll(fd, UnsafeRawBufferPointer(start: base + kept, count: staged - kept), path: tmpPath)
            }
        }
        flushed += Int64(staged)
        staged = 0
    }

    func retarget(to key: String) throws {
        guard !finished else { throw DedupError.storage(BackendError("retarget", tmpPath, errno: EBADF)) }
        self.key = key
    }

    func commit() throws {
        guard !finished else { throw DedupError.storage(BackendError("commit", tmpPath, errno: EBADF)) }
        guard !writeFailed else {
            throw DedupError.storage(BackendError("commit", tmpPath, .other, detail: "an earlier write to it failed"))
        }
        // The first commit attempt makes the data durable; a retry under another
        // key (the first was taken) finds the descriptor already closed.
        if fd >= 0 {
            do {
                try flushStaging()
            } catch {
                writeFailed = true
                throw error
            }
            if backend.durable { try asStorage { try FileIO.fsync(fd, path: tmpPath) } }
            close(fd)
            fd = -1
        }
        let final = backend.path(key)
        let folder = FileIO.parent(final)
        // Twice at most: a delete of the folder's last object may remove the
        // folder between its creation and the link (LocalBackend.delete).
        for attempt in 1...2 {
            try asStorage { try FileIO.makeDirectories(folder) }
            // link() fails with EEXIST rather than replace: create-if-absent. The
            // temporary file stays, so the caller may retarget and commit again.
            let rc = ifAbsent ? link(tmpPath, final) : rename(tmpPath, final)
            if rc == 0 { break }
            let code = errno
            if code == ENOENT && attempt == 1 { continue }
            throw DedupError.storage(BackendError(ifAbsent ? "create" : "rename", final, errno: code))
        }
        if ifAbsent { unlink(tmpPath) }
        finished = true
        InterruptCleanup.unregister(tmpPath)
        try backend.syncFolder(folder)
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
        fd = try asStorage { try FileIO.open(path, O_RDONLY) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            let code = errno
            close(fd)
            throw DedupError.storage(BackendError("stat", path, errno: code))
        }
        size = Int64(st.st_size)
    }

    deinit { close(fd) }

    func read(at offset: Int64, into buffer: UnsafeMutableRawBufferPointer) throws {
        guard offset >= 0, offset <= size - Int64(buffer.count) else {
            throw DedupError.shortRead(path: path)
        }
        try asStorage { try FileIO.preadAll(fd, buffer, at: offset, path: path) }
    }
}
