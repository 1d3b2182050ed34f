import CLinux
import Foundation
import Testing
@testable import DedupStore
import S3Store

/// The backend contract, point by point, run against every backend: the local
/// folder, memory, and the fault-injecting decorator with no fault (it must be
/// transparent). A new backend (S3) joins the list.
@Suite struct BackendConformanceTests {
    enum Kind: String, CaseIterable, CustomTestStringConvertible {
        case local, memory, decorated, s3Moto, s3Rclone
        var testDescription: String { rawValue }
    }

    /// A new bucket on one of the S3 servers tools/test starts, and a backend
    /// under a prefix of it.
    static func s3Backend(_ kind: Kind) throws -> Backend {
        let env = ProcessInfo.processInfo.environment
        let (url, credentials) = kind == .s3Moto
            ? (env["DBBACKUP_TEST_S3_MOTO"], S3Credentials(accessKeyID: "testing", secretAccessKey: "testing"))
            : (env["DBBACKUP_TEST_S3_RCLONE"],
               S3Credentials(accessKeyID: "dbbackup-test", secretAccessKey: env["DBBACKUP_TEST_S3_RCLONE_SECRET"] ?? ""))
        // Without the server (not run through tools/test) every request fails: the tests say so.
        let endpoint = S3Endpoint(url: url ?? "http://127.0.0.1:9", region: "us-east-1", pathStyle: true)
            ?? S3Endpoint(scheme: "http", host: "127.0.0.1", port: 9, region: "us-east-1", pathStyle: true)
        let client = try S3Client(
            endpoint: endpoint, bucket: "c-" + UUID().uuidString.lowercased().prefix(18), credentials: credentials)
        _ = try? client.send("PUT", key: nil, operation: "create bucket")
        return S3Backend(client: client, prefix: "repo/")
    }

    /// A fresh, empty backend of `kind`, and the folder that holds it (if any).
    final class Subject {
        let dir = TempDir()
        let backend: Backend
        init(_ kind: Kind) throws {
            switch kind {
            case .local: backend = LocalBackend(root: dir.sub("repo"))
            case .memory: backend = MemoryBackend(name: UUID().uuidString)
            case .decorated: backend = FaultyBackend(MemoryBackend(name: UUID().uuidString), faults: [])
            case .s3Moto, .s3Rclone: backend = try BackendConformanceTests.s3Backend(kind)
            }
        }
    }

    func failure(_ body: () throws -> Void) -> BackendError.Failure? {
        do {
            try body()
            return nil
        } catch let e as DedupError {
            return e.storageFailure ?? .other
        } catch {
            return .other
        }
    }

    @Test(arguments: Kind.allCases) func smallObjectsRoundTrip(kind: Kind) throws {
        let b = try Subject(kind).backend
        #expect(try b.get("config") == nil)
        #expect(try b.size("config") == nil && !(try b.exists("config")))
        try b.put("config", [1, 2, 3], ifAbsent: true)
        #expect(try b.get("config") == [1, 2, 3])
        #expect(try b.size("config") == 3 && (try b.exists("config")))
        // Create-if-absent refuses a taken key and leaves the first object.
        #expect(failure { try b.put("config", [9], ifAbsent: true) } == .alreadyExists)
        #expect(try b.get("config") == [1, 2, 3])
        // Without it, the object is replaced.
        try b.put("config", [4], ifAbsent: false)
        #expect(try b.get("config") == [4])
        try b.put("empty", [], ifAbsent: true)
        #expect(try b.get("empty") == [] && (try b.size("empty")) == 0)
    }

    @Test(arguments: Kind.allCases) func anObjectIsVisibleOnlyOnceCommitted(kind: Kind) throws {
        let b = try Subject(kind).backend
        let w = try b.create("packs/ab/abcd.pack", ifAbsent: true)
        #expect(w.key == "packs/ab/abcd.pack")
        try w.write(Array(repeating: 7, count: 100_000))
        try w.write([8])
        #expect(w.bytesWritten == 100_001)
        #expect(try b.get("packs/ab/abcd.pack") == nil)
        #expect(try b.list("packs/").isEmpty)
        try w.commit()
        #expect(w.bytesWritten == 100_001)
        #expect(try b.list("packs/") == [ObjectInfo(key: "packs/ab/abcd.pack", size: 100_001)])
        w.abort()  // after a commit: nothing happens
        #expect(try b.size("packs/ab/abcd.pack") == 100_001)
    }

    @Test(arguments: Kind.allCases) func anAbortedObjectLeavesNothing(kind: Kind) throws {
        let s = try Subject(kind)
        let w = try s.backend.create("manifests/x.chunks", ifAbsent: true)
        try w.write([1, 2, 3])
        w.abort()
        w.abort()
        #expect(try s.backend.list("").isEmpty || (try s.backend.list("manifests/")).isEmpty)
        #expect(try s.backend.get("manifests/x.chunks") == nil)
        #expect(failure { try w.commit() } != nil, "a writer ends once")
        if case let local as LocalBackend = s.backend {
            #expect(((try? FileManager.default.contentsOfDirectory(atPath: local.path("tmp"))) ?? []).isEmpty)
        }
    }

    @Test(arguments: Kind.allCases) func aTakenKeyCanBeRetargeted(kind: Kind) throws {
        let b = try Subject(kind).backend
        try b.put("manifests/a.chunks", [1], ifAbsent: true)
        let w = try b.create("manifests/a.chunks", ifAbsent: true)
        try w.write([2, 2])
        #expect(failure { try w.commit() } == .alreadyExists)
        try w.retarget(to: "manifests/a_2.chunks")
        try w.commit()
        #expect(try b.get("manifests/a.chunks") == [1])
        #expect(try b.get("manifests/a_2.chunks") == [2, 2])
        // Of two writers of one key with create-if-absent, exactly one wins.
        let x = try b.create("manifests/b.chunks", ifAbsent: true), y = try b.create("manifests/b.chunks", ifAbsent: true)
        try x.write([1]); try y.write([2])
        let outcomes = [failure { try x.commit() }, failure { try y.commit() }]
        #expect(outcomes.filter { $0 == nil }.count == 1 && outcomes.contains(.alreadyExists))
        y.abort(); x.abort()
    }

    @Test(arguments: Kind.allCases) func rangedReadsAndTheirLimits(kind: Kind) throws {
        let b = try Subject(kind).backend
        let bytes = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        try b.put("packs/00/p.pack", bytes, ifAbsent: true)
        let r = try b.openReader("packs/00/p.pack")
        #expect(r.size == 10_000)
        #expect(try r.read(at: 0, count: 10) == Array(bytes[0..<10]))
        #expect(try r.read(at: 9_990, count: 10) == Array(bytes[9_990..<10_000]))
        #expect(try r.read(at: 5_000, count: 0) == [])
        #expect(throws: DedupError.self) { _ = try r.read(at: 9_995, count: 10) }
        #expect(throws: DedupError.self) { _ = try r.read(at: -1, count: 1) }
        #expect(failure { _ = try b.openReader("packs/00/missing.pack") } == .notFound)
    }

    @Test(arguments: Kind.allCases) func listingIsByPrefixSortedWithSizes(kind: Kind) throws {
        let b = try Subject(kind).backend
        for key in ["packs/ff/z.pack", "packs/00/a.pack", "packs/0a/m.pack", "manifests/x.manifest.json", "manifests/x.chunks", "config"] {
            try b.put(key, Array(repeating: 1, count: key.count), ifAbsent: true)
        }
        #expect(try b.list("packs/").map(\.key) == ["packs/00/a.pack", "packs/0a/m.pack", "packs/ff/z.pack"])
        #expect(try b.list("packs/0").map(\.key) == ["packs/00/a.pack", "packs/0a/m.pack"])
        #expect(try b.list("manifests/").map(\.size) == [18, 25])
        #expect(try b.list("locks/").isEmpty)
        // Keys without sizes are the same keys.
        for prefix in ["packs/", "packs/0", "manifests/", "locks/", ""] {
            #expect(try b.keys(prefix) == (try b.list(prefix)).map(\.key), "\(prefix)")
            // And one at a time, in any order.
            var walked = [String]()
            try b.forEachKey(prefix) { walked.append($0) }
            #expect(walked.sorted() == (try b.keys(prefix)), "\(prefix)")
        }
    }

    @Test(arguments: Kind.allCases) func deletingIsIdempotent(kind: Kind) throws {
        let b = try Subject(kind).backend
        try b.put("packs/aa/x.pack", [1], ifAbsent: true)
        try b.put("packs/aa/y.pack", [1], ifAbsent: true)
        try b.delete("packs/aa/x.pack")
        try b.delete("packs/aa/x.pack")
        try b.delete("never/was")
        #expect(try b.list("packs/").map(\.key) == ["packs/aa/y.pack"])
        try b.delete("packs/aa/y.pack")
        #expect(try b.list("packs/").isEmpty)
        // A key under a prefix whose last object went can be written again.
        try b.put("packs/aa/z.pack", [2], ifAbsent: true)
        #expect(try b.get("packs/aa/z.pack") == [2])
        // Several at once, absent ones and all.
        for key in ["packs/aa/1.pack", "packs/bb/2.pack", "packs/bb/3.pack", "manifests/4.chunks"] {
            try b.put(key, [3], ifAbsent: true)
        }
        try b.delete(keys: ["packs/aa/1.pack", "packs/bb/2.pack", "packs/bb/3.pack", "never/was", "packs/bb/2.pack"])
        #expect(try b.keys("packs/") == ["packs/aa/z.pack"] && b.keys("manifests/") == ["manifests/4.chunks"])
        try b.delete(keys: [])
        if let local = b as? LocalBackend {
            #expect(!FileIO.exists(local.path("packs/bb")), "the emptied fan-out folder went")
            #expect(FileIO.exists(local.path("packs/aa")))
        }
    }

    @Test(arguments: Kind.allCases) func aNewRepositoryNeedsAnEmptyPlace(kind: Kind) throws {
        let b = try Subject(kind).backend
        try b.prepareForNewRepository()
        try b.put("keys/left-by-an-interrupted-init.json", [1], ifAbsent: true)
        try b.prepareForNewRepository()
        #expect(try b.list("keys/").isEmpty)
        try b.put("something", [1], ifAbsent: true)
        #expect(throws: DedupError.self) { try b.prepareForNewRepository() }
        #expect(!b.isReadOnly)
        #expect(b.storageUsage() > 0 && !b.cacheIdentity.isEmpty)
        if let local = b as? LocalBackend {
            // The blocks of every file below the folder, hidden ones and all, as du counts them.
            try local.put("packs/ab/.hidden", Array(repeating: 7, count: 10_000), ifAbsent: true)
            var blocks: Int64 = 0
            for case let rel as String in FileManager.default.enumerator(atPath: local.root) ?? .init() {
                var st = stat()
                guard lstat(local.root + "/" + rel, &st) == 0, st.st_mode & S_IFMT == S_IFREG else { continue }
                blocks += Int64(st.st_blocks)
            }
            #expect(local.storageUsage() == blocks * 512 && blocks > 0)
        }
    }

    @Test(arguments: Kind.allCases) func aRepositoryWorksOnIt(kind: Kind) throws {
        let b = try Subject(kind).backend
        let repo = try Repository.initialize(on: b, chunker: testChunker, packSize: 1 << 20)
        let data = randomBytes(200_000, seed: 4) + sqlLikeBytes(rows: 5_000, seed: 3)
        let m = try backup(repo, data, name: "x")
        let out = TempDir()
        #expect(try restoreBytes(repo, m.id, dir: out) == data)
        #expect(try Verifier(repository: Repository(backend: b)).verify(deep: true).ok)
        #expect(Repository.isRepository(b))
    }

    /// A restore costs one ranged read per stored entry: a chunk's header and
    /// payload together, and one for all the members of a compression group.
    @Test func aRestoreReadsEachStoredEntryOnce() throws {
        let b = MemoryBackend(name: UUID().uuidString)
        let repo = try Repository.initialize(on: b, chunker: testChunker, packSize: 1 << 20)
        let data = randomBytes(500_000, seed: 8) + sqlLikeBytes(rows: 40_000, seed: 9)
        let m = try backup(repo, data, name: "x")
        var frames = Set<String>()
        var grouped = 0
        try ChunkListReader(repository: repo, manifest: m).forEach { id, _ in
            guard let loc = try repo.index().lookup(id) else { return }
            if loc.isGroupMember { grouped += 1 }
            frames.insert("\(loc.pack.hex)@\(loc.offset)")
        }
        #expect(grouped > 1)
        let before = b.rangedReads(under: "packs/")
        #expect(try restoreBytes(repo, m.id, dir: TempDir()) == data)
        let reads = b.rangedReads(under: "packs/") - before
        #expect(reads == frames.count, "\(reads) reads of packs for \(frames.count) stored entries")
    }

    /// Whether the file system at `folder` opens files for direct I/O.
    func directIOWorks(_ folder: String) -> Bool {
        let probe = folder + "/direct-probe-" + UUID().uuidString
        let fd = open(probe, O_WRONLY | O_CREAT | O_EXCL | dbb_o_direct(), 0o644)
        defer { unlink(probe) }
        guard fd >= 0 else { return false }
        close(fd)
        return true
    }

    /// Packs go to the disk directly (no page cache) where the file system
    /// allows it, in whole blocks, and come back with their exact length;
    /// elsewhere (tmpfs), and for every other object, through the page cache.
    @Test func packsAreWrittenDirectlyAndReadBackExactly() throws {
        let dir = TempDir()
        var places = [dir.path]
        if FileManager.default.isWritableFile(atPath: "/dev/shm") { places.append("/dev/shm/dbbackup-test-" + UUID().uuidString) }
        defer { for root in places.dropFirst() { try? FileManager.default.removeItem(atPath: root) } }
        for root in places {
            let b = LocalBackend(root: root + "/repo")
            var g = SeededGenerator(seed: 41)
            for total in [0, 1, 4095, 4096, 4097, LocalObjectWriter.stagingBytes + 1, 3 * LocalObjectWriter.stagingBytes + 12_345] {
                let bytes = randomBytes(total, seed: UInt64(total))
                let w = try b.create("packs/ab/pack-\(total)", ifAbsent: true)
                let local = try #require(w as? LocalObjectWriter)
                var at = 0
                while at < total {
                    let n = min(total - at, 1 + Int(g.next() % 300_000))
                    try bytes[at..<(at + n)].withUnsafeBytes { try w.write($0) }
                    at += n
                }
                try w.commit()
                #expect(local.isDirect || root != dir.path || !directIOWorks(dir.path))
                #expect(try b.get("packs/ab/pack-\(total)") == bytes, "\(total) bytes at \(root)")
                #expect(try FileManager.default.attributesOfItem(atPath: b.path("packs/ab/pack-\(total)"))[.size] as? Int == total)
                // A direct write the kernel refuses: the rest through the page cache.
                let tmp = root + "/repo/tmp/refused-\(total)"
                let refused = try LocalObjectWriter(
                    backend: b, key: "packs/ab/refused-\(total)", ifAbsent: true, tmpPath: tmp, direct: true,
                    misalignedForTests: true)
                at = 0
                while at < total {
                    let n = min(total - at, 1 + Int(g.next() % 300_000))
                    try bytes[at..<(at + n)].withUnsafeBytes { try refused.write($0) }
                    at += n
                }
                try refused.commit()
                let back = try b.get("packs/ab/refused-\(total)") ?? []
                #expect(back == bytes, "\(total) bytes after a refused direct write at \(root): \(back.count) back, first difference at \(back.indices.first { $0 < bytes.count && back[$0] != bytes[$0] } ?? -1)")
                // Only packs: a manifest goes through the page cache.
                let m = try #require(try b.create("manifests/m-\(total)", ifAbsent: true) as? LocalObjectWriter)
                #expect(!m.isDirect)
                m.abort()
            }
        }
    }
}
