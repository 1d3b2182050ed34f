import Foundation

/// Finds the delta base of each chunk of a stream: the chunk that stood at the
/// same place in the previous backup of the same series, found by walking that
/// backup's chunk list in step with the new stream (no lookup a chunk).
///
/// "The same place" is the old stream's offset that the new one's corresponds
/// to: the new offset less a drift, which every chunk the two streams share
/// sets again (an insertion or a deletion shifts what follows it; the next
/// shared chunk says by how much). Memory: the old chunks of a window of
/// `lookahead` bytes ahead of the current place.
final class DeltaBaseFinder {
    private let cursor: ChunkListCursor
    /// Old chunks from `windowStart` on: id, start offset, length.
    private var window: [(id: ChunkID, start: Int64, length: Int)] = []
    private var head = 0
    private var oldEnd: Int64 = 0
    private var exhausted = false
    /// New offset minus the old offset it corresponds to.
    private var drift: Int64 = 0
    /// How far ahead of the current place old chunks are read, to find a chunk
    /// both streams share after an insertion or a deletion.
    private let lookahead: Int64 = 8 << 20

    init(previous list: ChunkListReader) {
        cursor = ChunkListCursor(list)
    }

    /// The base for the chunk `id` of `length` bytes at `newStart` in the new
    /// stream (called for every chunk, in order), or nil: no old chunk there,
    /// or `id` is one both streams share (it resets the drift instead).
    func base(for id: ChunkID, at newStart: Int64, length: Int) throws -> ChunkID? {
        let target = newStart - drift
        while !exhausted && oldEnd < target + lookahead {
            guard let (oldID, oldLength) = try cursor.next() else {
                exhausted = true
                break
            }
            window.append((oldID, oldEnd, oldLength))
            oldEnd += Int64(oldLength)
        }
        // Old chunks wholly before the place are done with (kept one window back,
        // for a shared chunk found a little behind after a deletion).
        while head < window.count, window[head].start + Int64(window[head].length) + lookahead / 8 < target {
            head += 1
        }
        if head > 4096 {
            window.removeFirst(head)
            head = 0
        }
        if let shared = window[head...].first(where: { $0.id == id }) {
            drift = newStart - shared.start
            return nil
        }
        guard let at = window[head...].first(where: { $0.start <= target && target < $0.start + Int64($0.length) })
        else { return nil }
        return at.id
    }
}

/// The newest backup of each series (name and kind) this host made into a
/// repository: one small file per series in the repository's local cache, so
/// that a backup finds its delta bases by key, not by listing manifests. A hint
/// only: a missing or stale one costs one backup stored without deltas.
struct SeriesHeads {
    let folder: String

    init(repository: Repository) {
        folder = repository.cacheDirectory + "/series"
    }

    private func path(name: String, kind: BackupKind) -> String {
        folder + "/" + SHA256Hasher.hash(Array("\(kind.rawValue)\0\(name)".utf8)).hex
    }

    /// The id of the series' newest backup, when one is recorded.
    func newest(name: String, kind: BackupKind) -> String? {
        guard let bytes = try? FileIO.readFile(path(name: name, kind: kind)) else { return nil }
        let id = String(decoding: bytes, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        return id.isEmpty ? nil : id
    }

    /// Records `id` as the series' newest backup (best effort: a cache).
    func record(_ id: String, name: String, kind: BackupKind) {
        try? FileIO.makeDirectories(folder)
        try? FileIO.writeFileAtomically(path(name: name, kind: kind), Array((id + "\n").utf8), durable: false)
    }
}
