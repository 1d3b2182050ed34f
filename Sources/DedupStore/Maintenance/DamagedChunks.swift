import Foundation

/// Chunk copies that verify found corrupt, one object per pack:
/// `damaged/<pack id>.json`.
///
/// The chunk index is a cache rebuilt from the pack trailers, and a trailer still
/// lists a copy whose bytes went bad. This record is what keeps such a copy out of
/// every index (a rebuild, another host's cache, a backup's dedup lookup), so that
/// the next backup of the same data stores the chunk again and heals every backup
/// that needs it; verify and restore name the corruption instead of a missing
/// chunk. A record goes when its pack does (gc), or when a later read of the whole
/// pack finds the copies intact again.
public struct DamagedPackRecord: Codable, Equatable, Sendable {
    public struct Copy: Codable, Equatable, Sendable {
        /// The chunk id (hex).
        public var id: String
        /// Offset of the copy's entry header in the pack.
        public var offset: UInt64
        /// What was wrong with it.
        public var detail: String
        /// When verify found it (RFC 3339).
        public var foundAt: String
    }

    /// The pack id (hex).
    public var pack: String
    public var chunks: [Copy]

    public static let folder = "damaged/"
    public static func key(for pack: PackID) -> String { folder + pack.hex + ".json" }
}

/// The damaged copies of a repository, by pack and chunk.
public struct DamagedChunks: Sendable {
    public private(set) var byPack: [PackID: [ChunkID: DamagedPackRecord.Copy]] = [:]

    public init() {}

    init(records: [DamagedPackRecord]) {
        for r in records {
            guard let pack = PackID(hex: r.pack) else { continue }
            for c in r.chunks {
                guard let id = ChunkID(hex: c.id) else { continue }
                byPack[pack, default: [:]][id] = c
            }
        }
    }

    public var isEmpty: Bool { byPack.isEmpty }

    /// The damaged copy of `chunk` in `pack`, if verify found one there.
    public func copy(_ chunk: ChunkID, in pack: PackID) -> DamagedPackRecord.Copy? { byPack[pack]?[chunk] }

    /// Some damaged copy of `chunk`, with its pack (for messages about a chunk
    /// the index no longer holds).
    public func anyCopy(of chunk: ChunkID) -> (pack: PackID, copy: DamagedPackRecord.Copy)? {
        for (pack, copies) in byPack.sorted(by: { $0.key.hex < $1.key.hex }) {
            if let c = copies[chunk] { return (pack, c) }
        }
        return nil
    }

    /// True when `entry` of `pack` is a damaged copy (same chunk, same place).
    func contains(_ entry: PackEntry) -> Bool {
        guard let c = byPack[entry.location.pack]?[entry.id] else { return false }
        return c.offset == entry.location.offset
    }

    /// What a user reads about a damaged copy.
    public static func describe(_ copy: DamagedPackRecord.Copy) -> String {
        "verify found it corrupt on \(copy.foundAt): \(copy.detail)"
    }
}

extension Repository {
    /// Every damaged-copy record: listed once per open repository (an empty
    /// `damaged/` costs one listing), then kept in step with what this process
    /// records.
    public func damagedChunks() throws -> DamagedChunks {
        if let damaged { return damaged }
        var records = [DamagedPackRecord]()
        for obj in try backend.list(DamagedPackRecord.folder) where obj.key.hasSuffix(".json") {
            guard let bytes = try backend.get(obj.key),
                  let r = try? JSONDecoder().decode(DamagedPackRecord.self, from: Data(bytes)) else { continue }
            records.append(r)
        }
        let loaded = DamagedChunks(records: records)
        damaged = loaded
        return loaded
    }

    /// Records the copies of `pack` found corrupt, replacing its earlier record;
    /// none removes the record (the pack read back intact).
    func saveDamaged(pack: PackID, copies: [DamagedPackRecord.Copy]) throws {
        let key = DamagedPackRecord.key(for: pack)
        damaged = nil  // listed again when next asked
        guard !copies.isEmpty else {
            try backend.delete(key)
            return
        }
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys, .prettyPrinted]
        let record = DamagedPackRecord(pack: pack.hex, chunks: copies.sorted { $0.offset < $1.offset })
        try backend.put(key, Array(try enc.encode(record)), ifAbsent: false)
    }

    /// Forgets the record of a pack that is gone.
    func forgetDamaged(pack: PackID) throws {
        if damaged?.byPack[pack] != nil { damaged = nil }
        try backend.delete(DamagedPackRecord.key(for: pack))
    }
}

extension Repository {
    /// The error for a chunk a backup needs that the index does not hold: corrupt
    /// when verify recorded its copy so, else missing.
    func unindexedChunkError(_ chunk: ChunkID, manifest: String) -> DedupError {
        if let (pack, copy) = (try? damagedChunks())?.anyCopy(of: chunk) {
            return .chunkCorrupt(chunk: chunk.hex, pack: pack.hex, manifest: manifest,
                                 detail: DamagedChunks.describe(copy) + "; back up the same data again to heal it")
        }
        return .chunkMissing(chunk: chunk.hex, manifest: manifest)
    }
}
