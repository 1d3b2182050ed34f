import Foundation

/// What a backup holds: the values of a manifest's `kind`.
public enum BackupKind: String, CaseIterable, Codable, Sendable {
    /// A database dump (backup-db, or `backup` with --db-name or --db-type).
    case dump
    /// A PostgreSQL base backup (pg_basebackup tar).
    case basebackup
    /// Any other file or stream.
    case file
    /// One archived PostgreSQL WAL file.
    case wal
    /// One archived MySQL/MariaDB binlog.
    case binlog
}

/// A committed backup: `manifests/<id>.manifest.json`, readable with jq. The chunk
/// list itself lives beside it in a compact binary object, named and checksummed here.
public struct Manifest: Codable, Equatable, Sendable {
    /// The newest format this build reads: 1 (one stream, `chunkList`) and 2
    /// (several member streams, `members`). A one-stream backup is written in
    /// format 1, exactly as before format 2 existed.
    public static let currentVersion = 2
    /// The format of a backup of one stream.
    public static let oneStreamVersion = 1
    /// The format of a backup of several member streams.
    public static let membersVersion = 2

    /// One stream of a backup: the whole input of a format-1 manifest (named ""),
    /// or one member of a format-2 one (a table, a schema section).
    public struct Member: Codable, Equatable, Sendable {
        /// Unique within the backup; "" for the one stream of format 1.
        public var name: String
        public var size: Int64
        /// The member's SHA-256 when the backup recorded one (keyed when encrypted).
        public var sha256: String?
        public var chunkList: ChunkListRef
        /// The rows of a table's member, when the dump counted them.
        public var rows: Int64?

        public init(name: String, size: Int64, sha256: String?, chunkList: ChunkListRef, rows: Int64? = nil) {
            self.name = name; self.size = size; self.sha256 = sha256; self.chunkList = chunkList; self.rows = rows
        }
    }

    public struct ChunkListRef: Codable, Equatable, Sendable {
        /// Object key of the binary chunk list.
        public var key: String
        public var size: Int64
        /// SHA-256 of the chunk list's header and records (also in its footer).
        public var sha256: String
        public var count: Int
    }

    public struct Stats: Codable, Equatable, Sendable {
        /// Chunks in the backup, and those not stored before it.
        public var chunks: Int
        public var newChunks: Int
        /// Plaintext bytes of the new chunks, and what they take in packs.
        public var newBytes: Int64
        public var storedBytes: Int64
        public var durationSeconds: Double
        /// New chunks stored as deltas against the previous backup of the series,
        /// their plaintext and what they take in packs (absent: none, or a backup
        /// made before delta encoding).
        public var deltaChunks: Int?
        public var deltaBytes: Int64?
        public var deltaStoredBytes: Int64?
    }

    /// How a database dump was made (backups of `dedup backup-db`).
    public struct DumpInfo: Codable, Equatable, Sendable {
        /// postgres, mysql, mariadb.
        public var engine: String
        public var serverVersion: String
        /// Where the server was: host:port or the socket.
        public var server: String
        /// The dump tool and its version line, e.g. "pg_dump (PostgreSQL) 15.18".
        public var tool: String
        public var toolVersion: String
        /// custom, plain, ...
        public var format: String
        /// Size of the database as the server reported it before the dump.
        public var databaseSize: Int64?
        /// MySQL/MariaDB: the binary log position (and GTID) of the dump's snapshot,
        /// where a point-in-time recovery replays from.
        public var binlogFile: String?
        public var binlogPosition: UInt64?
        public var gtid: String?
        /// MySQL/MariaDB: the server's @@server_id, which ties the dump to the
        /// binary logs archived from the same server.
        public var serverID: UInt32?
        /// PostgreSQL base backups: where WAL replay starts, on which timeline,
        /// the first WAL file needed, and the cluster's system identifier (which
        /// ties the backup to its archived WAL).
        public var startLSN: String?
        public var timeline: UInt32?
        public var startWALFile: String?
        public var systemIdentifier: String?

        public init(engine: String, serverVersion: String, server: String, tool: String, toolVersion: String,
                    format: String, databaseSize: Int64?, binlogFile: String? = nil, binlogPosition: UInt64? = nil,
                    gtid: String? = nil) {
            self.engine = engine; self.serverVersion = serverVersion; self.server = server
            self.tool = tool; self.toolVersion = toolVersion; self.format = format; self.databaseSize = databaseSize
            self.binlogFile = binlogFile; self.binlogPosition = binlogPosition; self.gtid = gtid
        }
    }

    /// A server's log file kept for point-in-time recovery (kinds wal and binlog):
    /// one manifest per file, under the id `<kind>_<archive name>_<file>`.
    public struct ArchiveInfo: Codable, Equatable, Sendable {
        /// The file's own name (000000010000000000000003, 00000002.history, mariadb-bin.000007).
        public var file: String
        /// PostgreSQL WAL: timeline, and the cluster's system identifier from the
        /// segment's first page (history and backup-label files carry none).
        public var timeline: UInt32?
        public var systemIdentifier: String?
        /// MySQL/MariaDB: the @@server_id of the server that wrote the binlog.
        public var serverID: UInt32?

        public init(file: String, timeline: UInt32? = nil, systemIdentifier: String? = nil, serverID: UInt32? = nil) {
            self.file = file; self.timeline = timeline; self.systemIdentifier = systemIdentifier;
            self.serverID = serverID
        }
    }

    public var formatVersion: Int
    public var id: String
    /// What the backup is called (the --name, else the database, else the file name).
    public var name: String
    /// dump, file, wal, binlog.
    public var kind: String
    public var database: String?
    public var dbType: String?
    public var dbHost: String?
    public var tags: [String: String]
    /// The backup time (RFC 3339, UTC); --time sets it.
    public var createdAt: String
    /// When the manifest was written.
    public var committedAt: String
    /// Input file path, "stdin", or the input command.
    public var source: String
    public var hostname: String
    public var dbbackupVersion: String
    /// Length of the whole input stream, and its SHA-256 when the backup was
    /// asked for one (`--stream-sha256`; every chunk is verified regardless).
    public var size: Int64
    public var sha256: String?
    /// Format 1: the one stream's chunk list.
    public var chunkList: ChunkListRef?
    /// Format 2: the member streams, each with its own chunk list (`size` is
    /// their sum, `sha256` absent).
    public var members: [Member]?
    public var stats: Stats
    /// Set for database dumps made by dbbackup itself.
    public var dump: DumpInfo?
    /// Set for archived WAL segments and binlogs.
    public var archive: ArchiveInfo?
    /// Encrypted repositories: HMAC-SHA256 under the id key of the id, sizes,
    /// digests and chunk-list reference, so that an edited manifest (pointed at
    /// another backup's list, shortened) is refused.
    public var auth: String?

    public var createdDate: Date? { Timestamps.parse(createdAt) }

    /// `kind` by type (nil for a kind this build does not know).
    public var backupKind: BackupKind? { BackupKind(rawValue: kind) }

    /// Every stream of the backup: format 1 reads as one member named "".
    public var streams: [Member] {
        if let members { return members }
        guard let chunkList else { return [] }
        return [Member(name: "", size: size, sha256: sha256, chunkList: chunkList)]
    }

    /// The stream named `name`; nil (with `name` nil) the only one of a backup of one stream.
    public func stream(_ name: String?) throws -> Member {
        let all = streams
        if let name {
            guard let m = all.first(where: { $0.name == name }) else {
                throw DedupError.memberNotFound(manifest: id, member: name, members: all.map(\.name))
            }
            return m
        }
        guard all.count == 1, let only = all.first else {
            throw DedupError.memberNotFound(manifest: id, member: nil, members: all.map(\.name))
        }
        return only
    }

    /// The kinds of archived log files (one manifest per WAL file or binlog):
    /// not backups of their own, they extend the base backups and dumps.
    public static let logKinds: Set<BackupKind> = [.wal, .binlog]
    public var isLogFile: Bool { backupKind.map(Self.logKinds.contains) ?? false }

    public static func key(for id: String) -> String { "manifests/\(id).manifest.json" }
    public static func chunkListKey(for id: String) -> String { "manifests/\(id).chunks" }

    func encoded() throws -> [UInt8] {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return Array(try enc.encode(self)) + [0x0A]
    }

    static func decode(_ bytes: [UInt8], id: String) throws -> Manifest {
        struct Version: Decodable { var formatVersion: Int }
        do {
            // The version first: a newer format may not decode as this one.
            let version = try JSONDecoder().decode(Version.self, from: Data(bytes)).formatVersion
            guard version <= currentVersion else {
                throw DedupError.manifestTooNew(id: id, version: version, supported: currentVersion)
            }
            let m = try JSONDecoder().decode(Manifest.self, from: Data(bytes))
            let shaped =
                version == oneStreamVersion
                ? (m.chunkList != nil && m.members == nil)
                : (m.chunkList == nil && !(m.members ?? []).isEmpty
                    && Set(m.streams.map(\.name)).count == m.streams.count
                    && m.streams.reduce(0) { $0 + $1.size } == m.size)
            guard shaped else {
                throw DedupError.manifestCorrupt(
                    id: id, detail: "format \(version) with the streams of another format (chunkList, members)")
            }
            return m
        } catch let e as DedupError {
            throw e
        } catch {
            throw DedupError.manifestCorrupt(
                id: id, detail: "its manifest JSON does not parse (\(RepositoryConfig.describe(error)))")
        }
    }
}
