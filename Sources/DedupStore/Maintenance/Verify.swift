import Foundation

/// The outcome of the last verification of one backup: `verified/<id>.json`.
public struct VerificationRecord: Codable, Equatable, Sendable {
    public var id: String
    public var verifiedAt: String
    /// "quick" (structure and presence), or "deep" (every chunk read and hashed).
    public var mode: String
    public var ok: Bool
    public var problem: String?

    public static func key(for id: String) -> String { "verified/\(id).json" }
}

extension Repository {
    /// The last verification of backup `id`, by key (nil: never verified, or a
    /// record this build cannot read).
    public func verificationRecord(_ id: String) throws -> VerificationRecord? {
        guard let bytes = try backend.get(VerificationRecord.key(for: id)) else { return nil }
        return try? JSONDecoder().decode(VerificationRecord.self, from: Data(bytes))
    }
}

/// One stored copy of a chunk.
struct PackChunk: Hashable {
    var pack: PackID
    var chunk: ChunkID
}

/// What `verify` found.
public struct VerifyReport: Sendable {
    public struct Problem: Sendable, Equatable {
        public var manifest: String?
        public var pack: String?
        public var chunk: String?
        public var message: String
    }

    public var manifestsChecked = 0
    public var packsChecked = 0
    public var chunksChecked = 0
    public var bytesRead: Int64 = 0
    /// Corrupt chunks dropped from the index (the next backup stores them anew).
    public var chunksDropped = 0
    public var problems: [Problem] = []
    /// Backups that cannot be restored intact.
    public var damagedManifests: [String] = []

    public var ok: Bool { problems.isEmpty }
}

/// Proves that backups can be restored.
///
/// Quick mode: every pack's footer and trailer checksum; every manifest's chunk
/// list (framing and checksum); every referenced chunk present in the index, in a
/// pack that exists and is long enough. Deep mode adds: read, decompress and hash
/// every chunk of every pack; with a sample, of a random share of the packs, so
/// that a nightly job covers the whole repository over several nights. Each
/// backup's outcome is recorded (`verified/<id>.json`): "deep" when every pack it
/// uses was read in full, else "quick".
public final class Verifier {
    private let repository: Repository
    /// Record each backup's outcome in the repository.
    public var record = true

    public init(repository: Repository) {
        self.repository = repository
    }

    /// `samplePercent` (0...100) reads that share of the packs in full; `deep`
    /// reads all of them.
    public func verify(
        manifestIDs requested: [String]? = nil, deep: Bool, samplePercent: Double? = nil
    ) throws -> VerifyReport {
        try repository.requireKey()
        var report = VerifyReport()
        /// How many backups had their verification record saved, and the first
        /// of them (what the change note names, up to a thousand).
        var recorded = 0
        var recordedIDs = [String]()
        let index = try repository.listedIndex()
        // Nothing can be recorded on a read-only repository; the report still says all.
        let readOnly = repository.isReadOnly
        let packs = try repository.listPacks()
        // Copies found corrupt before (this run's findings are added below).
        let knownDamaged = try repository.damagedChunks()
        var badPacks = [PackID: String]()
        // Corrupt copies found by reading packs, by pack and chunk.
        var corrupt = [PackChunk: String]()
        var readInFull = Set<PackID>()
        // This run's damaged copies, by pack, for the repository's record.
        var found = [PackID: [DamagedPackRecord.Copy]]()
        var intactAgain = [PackEntry]()
        let now = Timestamps.iso8601(Date())

        var toRead = Set<PackID>()
        if deep {
            toRead = Set(packs.keys)
        } else if let p = samplePercent, p > 0, !packs.isEmpty {
            let n = min(packs.count, max(1, Int((Double(packs.count) * p / 100).rounded(.up))))
            toRead = Set(packs.keys.shuffled().prefix(n))
        }

        // Packs: footer and trailer; for the packs to read, every chunk.
        let chunkReader = toRead.isEmpty ? nil : try ChunkReader(repository: repository)
        for (pack, _) in packs.sorted(by: { $0.key.hex < $1.key.hex }) {
            report.packsChecked += 1
            let entries: [PackEntry]
            do {
                entries = try PackReader(backend: repository.backend, id: pack, cipher: repository.cipher).entries()
            } catch let e as DedupError {
                badPacks[pack] = e.message
                report.problems.append(.init(manifest: nil, pack: pack.hex, chunk: nil, message: e.message))
                continue
            }
            guard let chunkReader, toRead.contains(pack) else { continue }
            var lastFrame: FrameKey?
            for e in entries {
                do {
                    _ = try chunkReader.fetch(
                        e.id, at: e.location, expectedLength: Int(e.location.rawLength), manifest: "?")
                    // A copy recorded as damaged that reads back intact (the pack was
                    // put back from a copy): indexed again where the index has none.
                    if knownDamaged.contains(e), try index.lookup(e.id) == nil { intactAgain.append(e) }
                    // A group's frame counts once, however many members it has.
                    if lastFrame != e.location.frame { report.bytesRead += Int64(e.location.storedLength) }
                    lastFrame = e.location.frame
                } catch let err as DedupError {
                    let detail: String
                    if case .chunkCorrupt(_, _, _, let d) = err { detail = d } else { detail = err.message }
                    let message = "chunk \(e.id.hex) in pack \(pack.hex) is corrupt (\(detail))"
                    corrupt[PackChunk(pack: pack, chunk: e.id)] = message
                    report.problems.append(.init(manifest: nil, pack: pack.hex, chunk: e.id.hex, message: message))
                    found[pack, default: []].append(
                        .init(id: e.id.hex, offset: e.location.offset, detail: detail, foundAt: now))
                }
            }
            readInFull.insert(pack)
        }

        // Manifests: chunk list, then each chunk's location.
        // Every backup one id at a time (a year of WAL: a million ids not held), or
        // the ones asked for.
        func eachBackupID(_ body: (String) throws -> Void) throws {
            if let requested { for id in requested { try body(id) } } else { try repository.forEachManifestID(body) }
        }
        /// Why a backup cannot get `chunk` of `length` bytes from where the index
        /// places it, or nil when nothing is wrong; `coveredInFull` goes false when
        /// its pack was not read in full in this run.
        func problem(with chunk: ChunkID, length: Int, in id: String,
                     coveredInFull: inout Bool, depth: Int = 0) throws -> VerifyReport.Problem? {
            func found(_ message: String, pack: PackID? = nil) -> VerifyReport.Problem {
                .init(manifest: id, pack: pack?.hex, chunk: chunk.hex, message: message)
            }
            guard let loc = try index.lookup(chunk) else {
                if let (pack, copy) = knownDamaged.anyCopy(of: chunk) {
                    return found(
                        "backup \(id) needs chunk \(chunk.hex), whose only copy, in pack \(pack.hex), is corrupt "
                            + "(\(DamagedChunks.describe(copy))); back up the same data again to heal it", pack: pack)
                }
                return found("backup \(id) needs chunk \(chunk.hex), which is in no pack")
            }
            if !readInFull.contains(loc.pack) { coveredInFull = false }
            if let why = badPacks[loc.pack] {
                return found("backup \(id) needs chunk \(chunk.hex) from a damaged pack: \(why)", pack: loc.pack)
            }
            guard let size = packs[loc.pack] else {
                return found(
                    "backup \(id) needs chunk \(chunk.hex) from pack \(loc.pack.hex), which is missing", pack: loc.pack)
            }
            if Int64(loc.offset) + Int64(PackFormat.entryHeaderSize) + Int64(loc.storedLength) > size
                || Int(loc.rawLength) != length
            {
                return found(
                    "backup \(id): chunk \(chunk.hex) lies outside pack \(loc.pack.hex) or has the wrong length",
                    pack: loc.pack)
            }
            if let why = corrupt[PackChunk(pack: loc.pack, chunk: chunk)] {
                return found("backup \(id) needs \(why)", pack: loc.pack)
            }
            if !readInFull.contains(loc.pack), let copy = knownDamaged.copy(chunk, in: loc.pack) {
                return found("backup \(id) needs chunk \(chunk.hex) in pack \(loc.pack.hex), which is corrupt "
                             + "(\(DamagedChunks.describe(copy)))", pack: loc.pack)
            }
            // A delta needs its bases as much as itself.
            if let base = loc.base {
                guard depth < DeltaFormat.maxChainLength else {
                    return found("backup \(id) needs chunk \(chunk.hex), at the end of a chain of deltas longer than "
                                 + "the \(DeltaFormat.maxChainLength) readers accept", pack: loc.pack)
                }
                let baseLength = try index.lookup(base).map { Int($0.rawLength) } ?? 0
                if let p = try problem(with: base, length: baseLength, in: id, coveredInFull: &coveredInFull,
                                       depth: depth + 1) {
                    return found("backup \(id) needs chunk \(chunk.hex), a delta whose base cannot be read: "
                                 + p.message, pack: p.pack.flatMap(PackID.init(hex:)))
                }
            }
            return nil
        }

        let walker = ReferenceWalker(repository: repository)
        func check(_ id: String, _ loaded: Result<Manifest, DedupError>) throws {
            report.manifestsChecked += 1
            var firstProblem: String?
            var coveredInFull = true
            func record(_ p: VerifyReport.Problem) {
                if firstProblem == nil { firstProblem = p.message }
                report.problems.append(p)
            }
            do {
                var reported = 0
                try walker.forEachStream(of: try loaded.get()) { _, list in
                    try list.forEach { chunk, length in
                        report.chunksChecked += 1
                        // At most 20 problems a backup: one damaged pack can break thousands of references.
                        guard reported < 20,
                            let p = try problem(with: chunk, length: length, in: id, coveredInFull: &coveredInFull)
                        else { return }
                        record(p)
                        reported += 1
                    }
                }
            } catch let e as DedupError {
                record(.init(manifest: id, pack: nil, chunk: nil, message: e.message))
            }
            if firstProblem != nil { report.damagedManifests.append(id) }
            if self.record, !readOnly, (try? repository.hasManifest(id)) == true {
                try repository.saveVerification(
                    VerificationRecord(
                        id: id, verifiedAt: now, mode: coveredInFull ? "deep" : "quick", ok: firstProblem == nil,
                        problem: firstProblem))
                recorded += 1
                if recordedIDs.count <= 1000 { recordedIDs.append(id) }
            }
        }
        try eachBackupID { id in try walker.forEachBackup([id], check) }
        report.damagedManifests.sort()
        // After the records: a catalog that reads the note finds them saved.
        // Past a thousand, one note for all ("*"): a catalog then reads every record.
        try repository.noteChange(.verify, ids: recorded > 1000 ? [ChangeNote.everyBackup] : recordedIDs)
        // A corrupt chunk leaves the index, so that the next backup of the same data
        // stores it again, which heals every backup that needs it; the repository
        // records it, so that no rebuild or other host's cache indexes it again.
        for (pack, copies) in Dictionary(grouping: corrupt.keys, by: \.pack) {
            try index.dropChunks(copies.map(\.chunk), inPack: pack)
        }
        report.chunksDropped = corrupt.count
        try index.point(intactAgain)
        if !readOnly {
            for pack in readInFull {
                let before = knownDamaged.byPack[pack].map { Array($0.values) } ?? []
                let now = found[pack] ?? []
                if Set(before.map(\.offset)) != Set(now.map(\.offset)) || before.isEmpty != now.isEmpty {
                    try repository.saveDamaged(pack: pack, copies: now)
                }
            }
        }
        return report
    }
}

