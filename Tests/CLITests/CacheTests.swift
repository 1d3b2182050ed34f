import DedupStore
import Foundation
import Testing

/// The chunk index is a local cache outside the repository.
@Suite struct CacheTests {
    @Test func cacheRootFollowsTheEnvironment() {
        #expect(Repository.defaultCacheRoot(environment: ["DBBACKUP_CACHE_DIR": "/srv/c", "HOME": "/h"]) == "/srv/c")
        #expect(Repository.defaultCacheRoot(environment: ["CACHE_DIRECTORY": "/var/cache/x:/var/cache/y", "HOME": "/h"]) == "/var/cache/x/dbbackup")
        #expect(Repository.defaultCacheRoot(environment: ["XDG_CACHE_HOME": "/xdg", "HOME": "/h"]) == "/xdg/dbbackup")
        #expect(Repository.defaultCacheRoot(environment: ["HOME": "/h"]) == "/h/.cache/dbbackup")
    }

    @Test func repositoryHoldsNoCacheAndItsCopiesGetTheirOwn() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        let data = pseudoRandom(1_000_000, seed: 21)
        let id = try #require(CLI.committedID(try cli.dedup(["backup", "-", "--name", "x"], stdin: data)))
        let entries = try FileManager.default.contentsOfDirectory(atPath: dir + "/repo").sorted()
        #expect(entries == ["changes", "config", "locks", "manifests", "packs", "tmp"])

        // A copy elsewhere has the same repository id but a cache of its own.
        #expect(shell("cp -a '\(dir)/repo' '\(dir)/copy'") == 0)
        let original = try Repository(path: dir + "/repo"), copy = try Repository(path: dir + "/copy")
        #expect(original.config.id == copy.config.id)
        #expect(original.cacheDirectory != copy.cacheDirectory)
        let restored = try CLI(repo: dir + "/copy").dedup(["restore", id, "-"])
        #expect(restored.status == 0 && restored.stdout == data)
    }

    @Test func unusableCacheIsAClearError() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let cli = CLI(repo: dir + "/repo")
        #expect(try cli.dedup(["backup", "-", "--name", "x"], stdin: pseudoRandom(100_000, seed: 22)).status == 0)
        try Data("not a folder".utf8).write(to: URL(fileURLWithPath: dir + "/file"))
        let r = try cli.dedup(["list", "--cache-dir", dir + "/file/cache"])
        let stats = try cli.dedup(["stats", "--cache-dir", dir + "/file/cache"])
        #expect(r.status == 0, "list needs no index: \(r.stderr)")
        #expect(stats.status == 1)
        #expect(errorLines(stats).count == 1 && stats.stderr.contains("--cache-dir"), "\(stats.stderr)")
    }

    @Test(.enabled(if: canMountTmpfs(), "needs root and mount(8) for a read-only file system"))
    func readOnlyRepositoryRestoresAndVerifies() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let mnt = dir + "/ro"
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        #expect(shell("mount -t tmpfs -o size=16m tmpfs '\(mnt)'") == 0)
        defer { _ = shell("umount '\(mnt)'") }
        let cli = CLI(repo: mnt + "/repo")
        let data = pseudoRandom(2_000_000, seed: 23)
        let id = try #require(CLI.committedID(try cli.dedup(["backup", "-", "--name", "x"], stdin: data)))
        // gc from another host (a writable mount) holds the repository: refused.
        let gc = try Repository(path: mnt + "/repo").lock(.exclusive, command: "gc")
        #expect(shell("mount -o remount,ro '\(mnt)'") == 0)
        let locked = try cli.dedup(["restore", id, "-", "--lock-wait", "0"])
        #expect(locked.status == 1 && locked.stderr.contains("is locked"), "\(locked.stderr)")
        #expect(shell("mount -o remount,rw '\(mnt)'") == 0)
        gc.release()
        #expect(shell("mount -o remount,ro '\(mnt)'") == 0)
        // A cache that has never seen this repository: rebuilt from the packs.
        let fresh = ["--cache-dir", dir + "/other-cache"]
        let restored = try cli.dedup(["restore", id, "-"] + fresh)
        #expect(restored.status == 0 && restored.stdout == data, "\(restored.stderr)")
        let verify = try cli.dedup(["verify", "--deep"] + fresh)
        #expect(verify.status == 0, "\(verify.stderr)")
    }
}
