import ArgumentParser
import DedupStore
import Foundation

struct DedupSync: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sync",
        abstract: "Copy a repository to another folder or bucket: only what the copy lacks.",
        discussion: """
          dbbackup dedup sync /srv/backups/dedup s3://offsite/dedup
          dbbackup dedup sync s3://backups/db1 /mnt/usb/dedup --delete
        Copies the objects the destination lacks, byte for byte, in the order a
        backup commits them: packs, then chunk lists, then manifests, so that every
        backup the copy lists restores even if the sync is interrupted; run it again
        to finish. An empty or absent destination becomes a copy (same repository id,
        same key: an encrypted copy opens with the source's key). --delete then
        removes what the source no longer has (after a prune and gc there):
        manifests before packs. Folders and buckets in any combination. Both buckets
        are reached with the --s3-* options and the AWS environment; --to-s3-*
        options reach the destination otherwise (another provider, region or
        account: its keys from --to-s3-profile of a credentials file; docs/S3.md).
        """)

    @Argument(help: ArgumentHelp("The repository to copy: a folder or s3://bucket/prefix.", valueName: "source"))
    var source: String

    @Argument(help: ArgumentHelp("Where the copy goes: a folder or s3://bucket/prefix.", valueName: "destination"))
    var destination: String

    @Flag(help: "Delete from the destination what the source no longer has.")
    var delete = false

    @Flag(help: "Say what would be copied and deleted; copy nothing.")
    var dryRun = false

    @Option(
        help: ArgumentHelp(
            "Seconds to wait for the locks of either repository (a gc running there; default: fail at once).",
            valueName: "seconds"))
    var lockWait: Int = 0

    @OptionGroup var s3: S3Options

    @OptionGroup var toS3: DestinationS3Options

    @Option(name: .customLong("cache-dir"), help: ArgumentHelp("Local cache folder (see dedup backup --help).", valueName: "dir"))
    var cacheDir: String?

    func validate() throws {
        let from = try RepositoryPlace(source), to = try RepositoryPlace(destination)
        // The same bucket name on another endpoint is another place.
        if from == to && toS3.endpoint == nil {
            throw ValidationError("the source and the destination are the same place")
        }
        if case .folder = to, toS3.overrides.anyGiven {
            throw ValidationError("the --to-s3-* options are for a destination in a bucket; \(destination) is a folder")
        }
    }

    func run() throws {
        try reportingErrors {
            let started = Date()
            let repo = try Repository(
                backend: try RepositoryPlace(source).backend(s3: s3), cacheRoot: cacheDir.map { StoreOptions.expand($0) })
            repo.onNotice = { Terminal.notice($0) }
            let target = try RepositoryPlace(destination).backend(s3Environment: toS3.environment(over: s3.environment()))
            let sync = RepositorySync(source: repo, destination: target)
            sync.dryRun = dryRun
            sync.lockWait = TimeInterval(lockWait)
            sync.onNotice = { Terminal.notice($0) }
            let r = try sync.run(delete: delete)
            Terminal.out("sync \(repo.path) -> \(target.location)\(dryRun ? " (dry run)" : "")")
            if r.createdDestination { Terminal.out("  created   a copy of the repository (its config and keys)") }
            Terminal.out(
                "  \(dryRun ? "to copy " : "copied  ") \(r.packs) packs, \(r.chunkLists) chunk lists, \(r.manifests) manifests, \(r.others) other objects (\(Format.bytes(r.bytes)))"
            )
            Terminal.out("  present   \(r.present) objects already there")
            if delete {
                Terminal.out(
                    "  \(dryRun ? "to delete" : "deleted  ") \(r.deletedManifests) manifests, \(r.deletedChunkLists) chunk lists, \(r.deletedPacks) packs, \(r.deletedOthers) other objects"
                )
            }
            Terminal.out("  duration  \(Format.duration(Date().timeIntervalSince(started)))")
        }
    }
}
