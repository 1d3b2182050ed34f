import Foundation

/// Repository-wide figures for `stats`.
public struct RepositoryStats: Codable, Sendable {
    public var manifests: Int
    public var packs: Int
    public var uniqueChunks: Int
    /// Sum of the sizes of every backup's input.
    public var rawBytes: Int64
    /// Sum of the pack files' sizes.
    public var storedBytes: Int64
    public var spaceSaved: Int64
    public var dedupRatio: Double
    public var diskUsage: Int64
    /// The local cache (chunk index, Bloom filter), outside the repository.
    public var cacheUsage: Int64
    /// Chunks the backups stored as deltas, their plaintext and what they took
    /// in packs, as the manifests recorded them (nil in figures from the caches).
    public var deltaChunks: Int?
    public var deltaBytes: Int64?
    public var deltaStoredBytes: Int64?

    public static func compute(_ repository: Repository) throws -> RepositoryStats {
        let manifests = try repository.manifests()
        let packs = try repository.listPacks()
        let raw = manifests.reduce(Int64(0)) { $0 + $1.size }
        let stored = packs.values.reduce(Int64(0), +)
        return RepositoryStats(
            manifests: manifests.count, packs: packs.count, uniqueChunks: try repository.listedIndex().chunkCount(),
            rawBytes: raw, storedBytes: stored, spaceSaved: max(0, raw - stored),
            dedupRatio: stored > 0 ? Double(raw) / Double(stored) : 0,
            diskUsage: repository.measureDiskUsage(), cacheUsage: repository.cacheUsage(),
            deltaChunks: manifests.reduce(0) { $0 + ($1.stats.deltaChunks ?? 0) },
            deltaBytes: manifests.reduce(Int64(0)) { $0 + ($1.stats.deltaBytes ?? 0) },
            deltaStoredBytes: manifests.reduce(Int64(0)) { $0 + ($1.stats.deltaStoredBytes ?? 0) })
    }

    /// The same figures from the local caches, at a cost independent of the number
    /// of backups (`dedup metrics` on every scrape): `manifests` and `rawBytes` from
    /// the catalog's totals, packs and stored bytes from the chunk index's pack
    /// table (a trusted cache: other hosts' packs of the last hour may be missing),
    /// the disk usage as last measured (`measureDiskUsage`), measured anew when
    /// that is more than a day old.
    public static func fromCaches(_ repository: Repository, manifests: Int, rawBytes: Int64) throws -> RepositoryStats {
        let totals = try repository.index().packTotals()
        return RepositoryStats(
            manifests: manifests, packs: totals.packs, uniqueChunks: try repository.index().chunkCount(),
            rawBytes: rawBytes, storedBytes: totals.bytes, spaceSaved: max(0, rawBytes - totals.bytes),
            dedupRatio: totals.bytes > 0 ? Double(rawBytes) / Double(totals.bytes) : 0,
            diskUsage: repository.recentDiskUsage(maxAge: 86400), cacheUsage: repository.cacheUsage())
    }
}

extension Repository {
    private var diskUsagePath: String { cacheDirectory + "/disk-usage.json" }

    private struct DiskUsageRecord: Codable {
        var measuredAt: Double
        var bytes: Int64
    }

    /// The repository's disk usage, measured now (a walk over every object) and
    /// kept in the cache for `recentDiskUsage`.
    public func measureDiskUsage() -> Int64 {
        let bytes = diskUsage()
        if let data = try? JSONEncoder().encode(DiskUsageRecord(measuredAt: Date().timeIntervalSince1970, bytes: bytes)) {
            // Not synced: a cache lost to a crash is measured again.
            try? FileIO.writeFileAtomically(diskUsagePath, Array(data), durable: false)
        }
        return bytes
    }

    /// The disk usage last measured on this host, if less than `maxAge` seconds
    /// ago, else measured now.
    public func recentDiskUsage(maxAge: TimeInterval) -> Int64 {
        if let bytes = try? FileIO.readFile(diskUsagePath),
           let record = try? JSONDecoder().decode(DiskUsageRecord.self, from: Data(bytes)),
           abs(Date().timeIntervalSince1970 - record.measuredAt) < maxAge {
            return record.bytes
        }
        return measureDiskUsage()
    }
}
