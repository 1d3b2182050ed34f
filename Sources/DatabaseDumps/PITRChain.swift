import DedupStore

/// Which base backups can recover up to the newest archived WAL: those whose
/// first WAL file is archived (or inside the backup) with no gap after it.
public struct PITRChain: Sendable {
    public let baseBackups: [Manifest]
    public let newestSegment: String?
    public let gaps: [WALChain.Gap]
    public let oldestRecoverable: Manifest?

    public init(files: [Manifest], baseBackups: [Manifest]) {
        self.baseBackups = baseBackups
        let segments = files.compactMap { m in m.archive.map { ($0.file, m.size) } }.filter {
            WALFileName($0.0)?.kind == .segment
        }
        newestSegment = segments.map(\.0).max { (WALFileName($0)?.position ?? "") < (WALFileName($1)?.position ?? "") }
        let gaps = WALChain.gaps(in: segments)
        self.gaps = gaps
        // A gap after a backup's start breaks its chain; one before it does not matter.
        oldestRecoverable = baseBackups.sorted { $0.createdAt < $1.createdAt }.first { b in
            guard let start = b.dump?.startWALFile, let startPos = WALFileName(start)?.position else { return false }
            return !gaps.contains { $0.first > startPos }
        }
    }
}
