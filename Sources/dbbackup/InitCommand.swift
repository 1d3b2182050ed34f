import ArgumentParser
import DedupStore
import Foundation

struct DedupInit: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init",
        abstract: "Create a repository (optional: backup creates one with the defaults on first use).")

    @OptionGroup var store: StoreOptions

    @Option(help: ArgumentHelp("Average chunk size, a power of two (min is 1/4, max 4x).", valueName: "size"))
    var chunkSize: String = "256KiB"

    @Option(help: ArgumentHelp("zstd level for new chunks (1-19; negative levels are faster).", valueName: "level"))
    var compression: Int = 3

    @Option(help: ArgumentHelp("Target pack file size.", valueName: "size"))
    var packSize: String = "32MiB"

    func run() throws {
        try reportingErrors {
            guard let avg = parseSize(chunkSize) else { throw DedupError.invalidArgument("cannot read --chunk-size '\(chunkSize)' (examples: 256KiB, 1MiB)") }
            guard let pack = parseSize(packSize) else { throw DedupError.invalidArgument("cannot read --pack-size '\(packSize)'") }
            let repo = try Repository.initialize(at: store.path, chunker: ChunkerParameters(average: avg),
                                                 compressionLevel: compression, packSize: pack, cacheRoot: store.cacheRoot)
            let c = repo.config
            Terminal.out("created repository \(repo.path)")
            Terminal.out("  chunks: \(Format.bytes(Int64(c.chunker.minSize))) min, \(Format.bytes(Int64(c.chunker.avgSize))) average, \(Format.bytes(Int64(c.chunker.maxSize))) max; zstd level \(c.compression.level); packs of \(Format.bytes(Int64(c.packSize)))")
        }
    }
}
