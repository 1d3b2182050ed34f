import Foundation
import Testing
@testable import DedupStore

/// Manifests on disk: a backup of one stream writes exactly the format-1 manifest
/// it always wrote (bytes and tag pinned here), and a backup of several member
/// streams writes format 2, whose tag covers every member.
@Suite struct ManifestFormatTests {
    /// A format-1 manifest with every optional field that a dump fills in.
    static func oneStream() -> Manifest {
        var dump = Manifest.DumpInfo(engine: "postgres", serverVersion: "15.18", server: "db1:5432", tool: "pg_dump",
                                     toolVersion: "pg_dump (PostgreSQL) 15.18", format: "custom", databaseSize: 1234)
        dump.serverID = 7
        var m = Manifest(formatVersion: 1, id: "2026-11-21_020000_shop", name: "shop", kind: "dump", database: "shop",
                         dbType: "postgres", dbHost: nil, tags: ["env": "prod"], createdAt: "2026-11-21T02:00:00Z",
                         committedAt: "2026-11-21T02:00:03Z", source: "stdin", hostname: "storage1", dbbackupVersion: "0.1.0",
                         size: 50_000_000, sha256: String(repeating: "ab", count: 32),
                         chunkList: .init(key: "manifests/2026-11-21_020000_shop.chunks", size: 6084,
                                          sha256: String(repeating: "cd", count: 32), count: 167),
                         stats: .init(chunks: 167, newChunks: 3, newBytes: 700_000, storedBytes: 200_000, durationSeconds: 0.25),
                         dump: dump, archive: nil)
        m.auth = nil
        return m
    }

    @Test func aOneStreamManifestIsTheFormatOneBytesItAlwaysWas() throws {
        let text = String(decoding: try Self.oneStream().encoded(), as: UTF8.self)
        #expect(text == Self.formatOneGolden, "\(text)")
    }

    @Test func aOneStreamManifestTagIsTheOneItAlwaysWas() throws {
        let cipher = RepositoryCipher(master: [UInt8](repeating: 9, count: 64))
        #expect(Repository.manifestTag(Self.oneStream(), cipher: cipher) == Self.formatOneTagGolden)
    }

    static let formatOneGolden = """
        {
          "chunkList" : {
            "count" : 167,
            "key" : "manifests/2026-11-21_020000_shop.chunks",
            "sha256" : "cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd",
            "size" : 6084
          },
          "committedAt" : "2026-11-21T02:00:03Z",
          "createdAt" : "2026-11-21T02:00:00Z",
          "database" : "shop",
          "dbType" : "postgres",
          "dbbackupVersion" : "0.1.0",
          "dump" : {
            "databaseSize" : 1234,
            "engine" : "postgres",
            "format" : "custom",
            "server" : "db1:5432",
            "serverID" : 7,
            "serverVersion" : "15.18",
            "tool" : "pg_dump",
            "toolVersion" : "pg_dump (PostgreSQL) 15.18"
          },
          "formatVersion" : 1,
          "hostname" : "storage1",
          "id" : "2026-11-21_020000_shop",
          "kind" : "dump",
          "name" : "shop",
          "sha256" : "abababababababababababababababababababababababababababababababab",
          "size" : 50000000,
          "source" : "stdin",
          "stats" : {
            "chunks" : 167,
            "durationSeconds" : 0.25,
            "newBytes" : 700000,
            "newChunks" : 3,
            "storedBytes" : 200000
          },
          "tags" : {
            "env" : "prod"
          }
        }
        """ + "\n"
    static let formatOneTagGolden = "141b54524c66abec3b71f2a1009262d1ec60967366fe0003a9ca8358f8cdb211"
}
