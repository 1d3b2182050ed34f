import ArgumentParser
import DedupStore
import Foundation

struct DedupStats: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "stats", abstract: "Show repository-wide deduplication figures.")

    @OptionGroup var store: StoreOptions

    @Flag(help: "Print JSON.")
    var json = false

    func run() throws {
        try reportingErrors {
            let repo = try store.open()
            let s = try RepositoryStats.compute(repo)
            if json {
                try Terminal.json(s)
                return
            }
            Terminal.out("repository    \(repo.path)")
            Terminal.out("manifests     \(s.manifests)")
            Terminal.out("packs         \(s.packs)")
            Terminal.out("unique chunks \(s.uniqueChunks)")
            Terminal.out("raw data      \(Format.bytes(s.rawBytes)) (\(s.rawBytes) bytes)")
            Terminal.out("stored        \(Format.bytes(s.storedBytes)) in packs")
            Terminal.out(
                "space saved   \(Format.bytes(s.spaceSaved)) (\(s.rawBytes > 0 ? Format.percent(Double(s.spaceSaved) / Double(s.rawBytes)) : "-"))"
            )
            Terminal.out("dedup ratio   \(String(format: "%.2fx", s.dedupRatio)) (raw / stored, compression included)")
            if let n = s.deltaChunks, n > 0 {
                Terminal.out(
                    "deltas        \(n) new chunks stored as deltas against the previous backup: \(Format.bytes(s.deltaBytes ?? 0)) -> \(Format.bytes(s.deltaStoredBytes ?? 0))"
                )
            }
            Terminal.out("disk usage    \(Format.bytes(s.diskUsage)) (packs and manifests)")
            Terminal.out(
                "local cache   \(Format.bytes(s.cacheUsage)) in \(repo.cacheDirectory) (chunk index; rebuilt when lost)"
            )
        }
    }
}
