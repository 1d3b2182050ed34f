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

    public static func compute(_ repository: Repository) throws -> RepositoryStats {
        let manifests = try repository.manifests()
        let packs = try repository.listPacks()
        let raw = manifests.reduce(Int64(0)) { $0 + $1.size }
        let stored = packs.values.reduce(Int64(0), +)
        return RepositoryStats(
            manifests: manifests.count, packs: packs.count, uniqueChunks: try repository.listedIndex().chunkCount(),
            rawBytes: raw, storedBytes: stored, spaceSaved: max(0, raw - stored),
            dedupRatio: stored > 0 ? Double(raw) / Double(stored) : 0,
            diskUsage: repository.diskUsage(), cacheUsage: repository.cacheUsage())
    }
}
