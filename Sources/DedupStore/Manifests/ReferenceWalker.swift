import Foundation

/// Everything the backups of a repository reference: the one walk over the
/// manifests, their member streams and their chunk lists that gc's mark and
/// verify share (the place where the base of a delta-encoded chunk joins the
/// references).
struct ReferenceWalker {
    let repository: Repository

    /// Calls `visit` with each backup of `ids`: its manifest, or the error that
    /// kept it from being read.
    func forEachBackup(_ ids: [String], _ visit: (String, Result<Manifest, DedupError>) throws -> Void) throws {
        for id in ids {
            let loaded: Result<Manifest, DedupError>
            do {
                loaded = .success(try repository.loadManifest(id))
            } catch let e as DedupError {
                loaded = .failure(e)
            }
            try visit(id, loaded)
        }
    }

    /// Opens each stream's chunk list of `manifest` in turn, checked against the
    /// manifest (framing, counts, checksum; the tag in an encrypted repository),
    /// and hands it to `body`. The first that cannot be read throws.
    func forEachStream(of manifest: Manifest, _ body: (Manifest.Member, ChunkListReader) throws -> Void) throws {
        for member in manifest.streams {
            let list = try ChunkListReader(
                repository: repository, manifest: manifest, member: manifest.members == nil ? nil : member.name)
            guard list.totalBytes == UInt64(member.size) else {
                throw DedupError.manifestCorrupt(
                    id: manifest.id,
                    detail: "chunk list covers \(list.totalBytes) bytes, the manifest says \(member.size)")
            }
            try body(member, list)
        }
    }
}
