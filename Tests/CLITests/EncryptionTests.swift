import DedupStore
import Foundation
import Testing

/// Encrypted repositories: AES-256-GCM chunks, trailers and chunk lists, keyed
/// chunk ids, the master key wrapped under the user's key.
@Suite struct EncryptionTests {
    static let marker = Array("MARKER-7f3a-SECRET-ROW".utf8)

    /// Random bytes (incompressible: a plain repository stores them raw) with the
    /// marker inside, then compressible SQL-like text with the marker too.
    static func input() -> [UInt8] {
        var bytes = pseudoRandom(1_500_000, seed: 11)
        bytes.replaceSubrange(700_000..<(700_000 + marker.count), with: marker)
        bytes += plainDump(rows: 20_000, seed: 5) + marker + pseudoRandom(300_000, seed: 12)
        return bytes
    }

    struct Setup {
        let dir: String
        let cli: CLI
        let key: String
        func run(_ args: [String], stdin: [UInt8]? = nil, key keyFile: String? = nil, env: [String: String] = [:]) throws -> CLI.Result {
            try cli.dedup(args + (keyFile.map { ["--key-file", $0] } ?? []), stdin: stdin, env: env)
        }
    }

    func setup() throws -> Setup {
        let dir = tempDir()
        let key = dir + "/dedup.key"
        try writeFile(key, pseudoRandom(32, seed: 77))
        let cli = CLI(repo: dir + "/repo")
        let r = try cli.dedup(["init", "--encrypt", "--key-file", key])
        #expect(r.status == 0 && r.out.contains("encrypted"), "\(r.stderr)")
        return Setup(dir: dir, cli: cli, key: key)
    }

    /// Every file under `root` that contains `needle`.
    static func filesContaining(_ needle: [UInt8], under root: String) throws -> [String] {
        try FileManager.default.subpathsOfDirectory(atPath: root).filter { sub in
            guard let bytes = try? readFile(root + "/" + sub) else { return false }
            return bytes.count >= needle.count && bytes.indices.dropLast(needle.count - 1).contains { bytes[$0] == needle[0] && Array(bytes[$0..<($0 + needle.count)]) == needle }
        }
    }

    @Test func roundTripIsByteForByteAndTheMarkerIsNowhereInTheRepository() throws {
        let s = try setup(); defer { removeDir(s.dir) }
        let data = Self.input()
        let b = try s.run(["backup", "-", "--name", "secret"], stdin: data, key: s.key)
        #expect(b.status == 0, "\(b.stderr)")
        let id = try #require(CLI.committedID(b))
        let again = try s.run(["backup", "-", "--name", "secret", "--json"], stdin: data, key: s.key)
        #expect(try storedAnew(again).newBytes == 0, "the second backup deduplicates")
        let r = try s.run(["restore", id, s.dir + "/out.bin"], key: s.key)
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try readFile(s.dir + "/out.bin") == data)
        #expect(try Self.filesContaining(Self.marker, under: s.cli.repo).isEmpty)
        #expect(try Self.filesContaining(Array("item-".utf8), under: s.cli.repo).isEmpty)

        // The same input in a plain repository: the marker is there (the check can fail).
        let plain = CLI(repo: s.dir + "/plain")
        #expect(try plain.dedup(["backup", "-", "--name", "secret"], stdin: data).status == 0)
        #expect(try !Self.filesContaining(Self.marker, under: plain.repo).isEmpty)
    }

    @Test func aMissingOrWrongKeyIsOneLineAndLeavesNoOutput() throws {
        let s = try setup(); defer { removeDir(s.dir) }
        let b = try s.run(["backup", "-", "--name", "secret"], stdin: Self.input(), key: s.key)
        let id = try #require(CLI.committedID(b))
        let wrongKey = s.dir + "/wrong.key"
        try writeFile(wrongKey, pseudoRandom(32, seed: 78))
        for (key, expected) in [(nil as String?, "is encrypted: give its key with --key-file"), (wrongKey, "does not open repository")] {
            let out = s.dir + "/out-\(key == nil ? "none" : "wrong").bin"
            let r = try s.run(["restore", id, out], key: key)
            #expect(r.status == 1 && errorLines(r).count == 1 && r.stderr.contains(expected), "\(r.stderr)")
            #expect(!FileManager.default.fileExists(atPath: out))
            #expect(try FileManager.default.contentsOfDirectory(atPath: s.dir).allSatisfy { !$0.contains("partial") })
            let backup = try s.run(["backup", "-", "--name", "more"], stdin: [1, 2, 3], key: key)
            #expect(backup.status == 1 && errorLines(backup).count == 1, "\(backup.stderr)")
            let verify = try s.run(["verify"], key: key)
            #expect(verify.status == 1 && errorLines(verify).count == 1)
        }
        #expect(manifestCount(s.cli.repo) == 1)
        // The manifests stay readable without the key (as documented): list works.
        #expect(try s.run(["list"]).out.contains(id))
        // The key never shows in what the commands print.
        let keyHex = Hex.encode(try readFile(s.key))
        #expect(try !s.run(["restore", id, s.dir + "/x"], key: wrongKey).stderr.contains(keyHex))
        // A passphrase in DBBACKUP_DEDUP_KEY is a key too: a wrong one is refused.
        let env = try s.run(["verify"], env: ["DBBACKUP_DEDUP_KEY": "not the key"])
        #expect(env.status == 1 && env.stderr.contains("does not open repository"))
    }

    @Test func aFlippedCiphertextByteIsFoundByVerifyAndFailsTheRestore() throws {
        let s = try setup(); defer { removeDir(s.dir) }
        let b = try s.run(["backup", "-", "--name", "secret"], stdin: Self.input(), key: s.key)
        let id = try #require(CLI.committedID(b))
        let packs = try FileManager.default.subpathsOfDirectory(atPath: s.cli.repo + "/packs").filter { $0.hasSuffix(".pack") }
        let pack = s.cli.repo + "/packs/" + (try #require(packs.first))
        var bytes = try readFile(pack)
        bytes[PackFormat.headerSize + PackFormat.entryHeaderSize + 100] ^= 0x01  // inside the first payload's ciphertext
        try writeFile(pack, bytes)
        let verify = try s.run(["verify", "--deep"], key: s.key)
        #expect(verify.status == 1 && verify.out.contains(id), "\(verify.out)")
        #expect(verify.stderr.contains("authentication tag"), "\(verify.stderr)")
        let r = try s.run(["restore", id, s.dir + "/out.bin"], key: s.key)
        #expect(r.status == 1 && errorLines(r).count == 1 && !FileManager.default.fileExists(atPath: s.dir + "/out.bin"))
    }

    @Test func rotationRewrapsTheKeyAndRewritesNoData() throws {
        let s = try setup(); defer { removeDir(s.dir) }
        let data = Self.input()
        let id = try #require(CLI.committedID(try s.run(["backup", "-", "--name", "secret"], stdin: data, key: s.key)))
        func packDigests() throws -> [String: String] {
            Dictionary(uniqueKeysWithValues: try FileManager.default.subpathsOfDirectory(atPath: s.cli.repo + "/packs")
                .filter { $0.hasSuffix(".pack") }.map { ($0, sha256(try readFile(s.cli.repo + "/packs/" + $0))) })
        }
        let before = try packDigests()
        let newKey = s.dir + "/new.key"
        try writeFile(newKey, Array("a long passphrase in a file\n".utf8))
        let rotate = try CLI.run(["encryption", "rotate", "--dedup-dir", s.cli.repo, "--key-file", s.key, "--new-key-file", newKey])
        #expect(rotate.status == 0, "\(rotate.stderr)")
        #expect(try packDigests() == before)
        #expect(try s.run(["restore", id, s.dir + "/old.bin"], key: s.key).stderr.contains("does not open repository"))
        #expect(try s.run(["restore", id, s.dir + "/new.bin"], key: newKey).status == 0)
        #expect(try readFile(s.dir + "/new.bin") == data)
        #expect(try FileManager.default.contentsOfDirectory(atPath: s.cli.repo + "/keys").count == 1)
    }

    @Test func gcRepacksAnEncryptedRepositoryAndTheRestStillRestores() throws {
        let s = try setup(); defer { removeDir(s.dir) }
        let first = pseudoRandom(3_000_000, seed: 21), second = Array(first[0..<1_000_000]) + pseudoRandom(2_000_000, seed: 22)
        let a = try #require(CLI.committedID(try s.run(["backup", "-", "--name", "a"], stdin: first, key: s.key)))
        let b = try #require(CLI.committedID(try s.run(["backup", "-", "--name", "b"], stdin: second, key: s.key)))
        #expect(try s.run(["delete", a], key: s.key).status == 0)
        let gc = try s.run(["gc", "--repack-threshold", "0.9"], key: s.key)
        #expect(gc.status == 0, "\(gc.stderr)")
        #expect(try s.run(["verify", "--deep"], key: s.key).status == 0)
        #expect(try s.run(["restore", b, s.dir + "/b.bin"], key: s.key).status == 0)
        #expect(try readFile(s.dir + "/b.bin") == second)
    }

    @Test func chunkIdsAreKeyedPerRepository() throws {
        let s1 = try setup(), s2 = try setup()
        defer { removeDir(s1.dir); removeDir(s2.dir) }
        let data = pseudoRandom(100_000, seed: 3)
        let h1 = try Repository(path: s1.cli.repo, key: try readFile(s1.key)).makeChunkHasher()
        let h2 = try Repository(path: s2.cli.repo, key: try readFile(s2.key)).makeChunkHasher()
        let id1 = data.withUnsafeBytes { h1.digest($0) }, id2 = data.withUnsafeBytes { h2.digest($0) }
        #expect(id1 != SHA256Hasher.hash(data) && id2 != SHA256Hasher.hash(data) && id1 != id2)
        // A backup with a key into a folder that is no repository yet is refused, not made plain.
        let r = try CLI(repo: s1.dir + "/fresh").dedup(["backup", "-", "--key-file", s1.key], stdin: [1])
        #expect(r.status == 1 && r.stderr.contains("dedup init --encrypt"))
    }

    @Test func anEditedManifestOrConfigIsRefused() throws {
        let s = try setup(); defer { removeDir(s.dir) }
        let a = try #require(CLI.committedID(try s.run(["backup", "-", "--name", "a"], stdin: pseudoRandom(400_000, seed: 31), key: s.key)))
        let b = try #require(CLI.committedID(try s.run(["backup", "-", "--name", "b"], stdin: pseudoRandom(400_000, seed: 32), key: s.key)))
        // Point a's manifest at b's chunk list (everything in it consistent but the tag).
        let aPath = s.cli.repo + "/manifests/\(a).manifest.json", bPath = s.cli.repo + "/manifests/\(b).manifest.json"
        var aJSON = try JSONSerialization.jsonObject(with: Data(try readFile(aPath))) as? [String: Any] ?? [:]
        let bJSON = try JSONSerialization.jsonObject(with: Data(try readFile(bPath))) as? [String: Any] ?? [:]
        aJSON["chunkList"] = bJSON["chunkList"]
        aJSON["size"] = bJSON["size"]
        try writeFile(aPath, Array(try JSONSerialization.data(withJSONObject: aJSON)))
        let r = try s.run(["restore", a, s.dir + "/a.bin"], key: s.key)
        #expect(r.status == 1 && r.stderr.contains("authentication tag does not match"), "\(r.stderr)")
        #expect(!FileManager.default.fileExists(atPath: s.dir + "/a.bin"))
        let verify = try s.run(["verify"], key: s.key)
        #expect(verify.status == 1 && verify.out.contains(a) && !verify.out.contains(b), "\(verify.out)")

        // A config turned to "none" beside key objects: refused, nothing written in plaintext.
        let configPath = s.cli.repo + "/config"
        let config = String(decoding: try readFile(configPath), as: UTF8.self)
        try writeFile(configPath, Array(config.replacingOccurrences(of: "\"aes-256-gcm\"", with: "\"none\"")
            .replacingOccurrences(of: "\"hmac-sha256\"", with: "\"sha256\"").utf8))
        let downgraded = try s.run(["backup", "-", "--name", "c"], stdin: Self.marker)
        #expect(downgraded.status == 1 && downgraded.stderr.contains("was changed outside dbbackup: its config says it is not encrypted")
                && downgraded.stderr.contains("put its original config back"), "\(downgraded.stderr)")
        #expect(try Self.filesContaining(Self.marker, under: s.cli.repo).isEmpty)
    }

    @Test func aKeyForAPlainRepositoryIsRefusedAndThePassphraseReachesNoChild() throws {
        let dir = tempDir(); defer { removeDir(dir) }
        let plain = CLI(repo: dir + "/plain")
        #expect(try plain.dedup(["init"]).status == 0)
        let refused = try plain.dedup(["backup", "-"], stdin: [1, 2], env: ["DBBACKUP_DEDUP_KEY": "some passphrase"])
        #expect(refused.status == 1 && refused.stderr.contains("is not encrypted, but a key was given"), "\(refused.stderr)")

        // An encrypted repository opened with DBBACKUP_DEDUP_KEY: an input command does not see it.
        let enc = CLI(repo: dir + "/enc")
        let env = ["DBBACKUP_DEDUP_KEY": "correct horse battery staple"]
        #expect(try enc.dedup(["init", "--encrypt"], env: env).status == 0)
        let b = try enc.dedup(["backup", "--name", "env", "--from-command", "--", "sh", "-c", "echo \"[$DBBACKUP_DEDUP_KEY]\""], env: env)
        #expect(b.status == 0, "\(b.stderr)")
        let id = try #require(CLI.committedID(b))
        let r = try enc.dedup(["restore", id, "-"], env: env)
        #expect(r.status == 0 && r.out == "[]\n", "\(r.out)")
    }
}
