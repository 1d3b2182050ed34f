import Foundation

/// Everything the backups of a repository reference: the one walk over the
/// manifests and their chunk lists that gc's mark and verify share (the place
/// where the base of a delta-encoded chunk joins the references).
struct ReferenceWalker {
    let repository: Repository

    /// Calls `visit` with each backup of `ids`: its manifest and its chunk list,
    /// opened and checked against the manifest (framing, counts, checksum; the
    /// tag in an encrypted repository), or the error that kept it from being read.
    func forEachBackup(_ ids: [String],
                       _ visit: (String, Result<(manifest: Manifest, list: ChunkListReader), DedupError>) throws -> Void) throws {
        for id in ids {
            let opened: Result<(manifest: Manifest, list: ChunkListReader), DedupError>
            do {
                let manifest = try repository.loadManifest(id)
                opened = .success((manifest, try ChunkListReader(repository: repository, manifest: manifest)))
            } catch let e as DedupError {
                opened = .failure(e)
            }
            try visit(id, opened)
        }
    }
}
