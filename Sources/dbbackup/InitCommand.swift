import ArgumentParser
import DedupStore
import Foundation

struct DedupInit: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Create a repository (optional: backup creates one with the defaults on first use).")

    @OptionGroup var store: StoreOptions

    @Option(
        help: ArgumentHelp(
            "Average chunk size, a power of two from 4KiB to 16MiB (min is 1/4, max 4x).", valueName: "size"))
    var chunkSize: String = "256KiB"

    /// zstd's levels that dbbackup accepts: 1 to 22, and the fast ones down to -50.
    static let compressionLevels = -50...22

    @Option(parsing: .unconditional, help: ArgumentHelp(
        "zstd level for new chunks: 1 to 22 (above 19 slow), or -1 to -50 (faster, larger). The highest level used: BLOBs a dump writes as hex are stored as the bytes they spell, data only an entropy coder shrinks gets level 1, data nothing shrinks is stored raw (see --fixed-compression).", valueName: "level"))
    var compression: Int = 3

    @Flag(help: "Compress every unit at --compression's level, whatever the data (no sampling).")
    var fixedCompression = false

    @Flag(help: "Store no chunk of this repository as a delta against a similar stored chunk (see docs/FORMAT.md, encoding 5).")
    var noDelta = false

    @Option(help: ArgumentHelp("Target pack file size, 1MiB to 1GiB.", valueName: "size"))
    var packSize: String = "32MiB"

    @Flag(
        help:
            "Encrypt (AES-256-GCM, keyed chunk ids) under the key of --key-file or DBBACKUP_DEDUP_KEY. Keep the key: without it nothing can be restored."
    )
    var encrypt = false

    /// Bad values are usage errors (exit 64), found before anything is created.
    func validate() throws {
        guard let avg = parseSize(chunkSize) else {
            throw ValidationError("cannot read --chunk-size '\(chunkSize)' (examples: 256KiB, 1MiB)")
        }
        do {
            try ChunkerParameters(average: avg).validate()
        } catch let e as DedupError {
            throw ValidationError("--chunk-size: \(e.message)")
        }
        guard Self.compressionLevels.contains(compression), compression != 0 else {
            throw ValidationError("--compression takes a zstd level from 1 to 22, or -1 to -50 (got \(compression))")
        }
        guard let pack = parseSize(packSize) else {
            throw ValidationError("cannot read --pack-size '\(packSize)' (examples: 32MiB, 128MiB)")
        }
        guard (1 << 20)...(1 << 30) ~= pack else {
            throw ValidationError("--pack-size must be between 1MiB and 1GiB (got \(packSize))")
        }
    }

    func run() throws {
        try reportingErrors {
            let avg = parseSize(chunkSize) ?? 0, pack = parseSize(packSize) ?? 0  // validated
            let key = try store.key()
            if encrypt && key == nil {
                throw DedupError.invalidArgument(
                    "--encrypt needs a key: --key-file <file> (e.g. made with: head -c 32 /dev/urandom > dedup.key; chmod 600 dedup.key) or a passphrase in DBBACKUP_DEDUP_KEY"
                )
            }
            if !encrypt && key != nil {
                throw DedupError.invalidArgument(
                    "a key was given (--key-file or DBBACKUP_DEDUP_KEY) without --encrypt: add --encrypt for an encrypted repository, or drop the key"
                )
            }
            let repo = try Repository.initialize(
                on: try store.backend(), chunker: ChunkerParameters(average: avg),
                compressionLevel: compression, compressionMode: fixedCompression ? .fixed : .adaptive,
                packSize: pack, cacheRoot: store.cacheRoot,
                encryptionKey: encrypt ? key : nil, deltas: !noDelta)
            let c = repo.config
            Terminal.out("created \(encrypt ? "encrypted " : "")repository \(repo.path)")
            if encrypt {
                Terminal.out(
                    "  encryption: AES-256-GCM, keyed chunk ids; keep the key safe and apart from the repository: without it nothing can be restored"
                )
            }
            Terminal.out(
                "  chunks: \(Format.bytes(Int64(c.chunker.minSize))) min, \(Format.bytes(Int64(c.chunker.avgSize))) average, \(Format.bytes(Int64(c.chunker.maxSize))) max; zstd level \(c.compression.level)\(c.compression.isAdaptive ? " at most (adaptive)" : " (fixed)"); packs of \(Format.bytes(Int64(c.packSize)))"
            )
        }
    }
}

struct Encryption: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "encryption",
        abstract: "Manage the key of an encrypted repository.",
        subcommands: [EncryptionRotate.self])
}

struct EncryptionRotate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rotate",
        abstract: "Re-wrap the master key under a new key; no data is rewritten.",
        discussion: """
          dbbackup encryption rotate --dedup-dir /srv/dedup --key-file old.key --new-key-file new.key
        Writes a new key object (the master key sealed under the new key), then
        deletes the one the old key opened. The old key stops working; backups,
        packs and chunk ids stay as they are.
        """)

    @OptionGroup var store: StoreOptions

    @Option(help: ArgumentHelp("The new key: a file whose bytes are the key.", valueName: "file"))
    var newKeyFile: String

    func run() throws {
        try reportingErrors {
            guard let old = try store.key() else {
                throw DedupError.invalidArgument("give the current key with --key-file (or DBBACKUP_DEDUP_KEY)")
            }
            let newKey = try StoreOptions.readKey(file: newKeyFile)
            let repo = try Repository(backend: try store.backend(), cacheRoot: store.cacheRoot)
            let lock = try repo.lock(.exclusive, command: "encryption rotate")
            defer { lock.release() }
            try repo.rotateKey(oldSecret: old, newSecret: newKey)
            Terminal.out("key rotated for \(repo.path): the new key opens it, the old one no longer does")
        }
    }
}
