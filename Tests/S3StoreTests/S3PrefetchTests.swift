import DedupStore
import Foundation
import Testing
@testable import S3Store

/// Ranges named ahead (`Backend.willRead`, as a restore names its next entries)
/// are fetched ahead, nearby ones of an object in one GET, and the reads find
/// them there; a range not named, or whose fetch failed, is read as always.
@Suite struct S3PrefetchTests {
    /// A fetch that makes up the bytes of an object of `size` (each byte its
    /// offset, truncated), counting its calls; keys in `failing` fail.
    final class FakeObjects: @unchecked Sendable {
        let lock = NSLock()
        var calls: [(key: String, offset: Int64, count: Int)] = []
        let size: Int64
        let failing: Set<String>
        init(size: Int64, failing: Set<String> = []) {
            self.size = size
            self.failing = failing
        }
        func fetch(_ key: String, _ offset: Int64, _ count: Int) throws -> (bytes: [UInt8], objectSize: Int64?) {
            lock.withLock { calls.append((key, offset, count)) }
            if failing.contains(key) { throw DedupError.invalidArgument("no \(key)") }
            return ((0..<count).map { UInt8(truncatingIfNeeded: offset + Int64($0)) }, size)
        }
    }

    func read(_ p: S3Prefetcher, _ key: String, _ offset: Int64, _ count: Int) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: count)
        let hit = out.withUnsafeMutableBytes { p.take(key, at: offset, into: $0) }
        return hit ? out : nil
    }

    @Test func nearbyRangesOfAnObjectGoInOneFetchAndFarOnesInTheirOwn() throws {
        let objects = FakeObjects(size: 64 << 20)
        let p = S3Prefetcher(budget: 48 << 20, inFlight: 2)
        let gap = Int64(S3Prefetcher.gapLimit)
        p.want([
            ReadRange(key: "a", offset: 1000, count: 500),
            ReadRange(key: "b", offset: 0, count: 100),
            ReadRange(key: "a", offset: 1500, count: 500),          // adjacent
            ReadRange(key: "a", offset: 2000 + gap, count: 10),     // within the gap
            ReadRange(key: "a", offset: 4_000_000, count: 10),      // beyond it
            ReadRange(key: "a", offset: 1500, count: 500),          // named twice
        ], fetch: objects.fetch)
        #expect(read(p, "a", 1000, 500) == (0..<500).map { UInt8(truncatingIfNeeded: 1000 + $0) })
        #expect(read(p, "a", 1500, 500) != nil)
        #expect(read(p, "a", 2000 + gap, 10) != nil)
        #expect(read(p, "a", 4_000_000, 10) != nil)
        #expect(read(p, "b", 0, 100) != nil)
        #expect(read(p, "c", 0, 100) == nil, "a range never named is not held")
        let calls = objects.lock.withLock { objects.calls }.sorted { ($0.key, $0.offset) < ($1.key, $1.offset) }
        #expect(calls.map(\.key) == ["a", "a", "b"])
        #expect(calls[0].offset == 1000 && calls[0].count == Int(1000 + gap + 10))
        #expect(calls[1].offset == 4_000_000 && calls[1].count == 10)
        // Each span was let go with its last byte read.
        #expect(p.heldBytes == 0)
        // The object's size came with the answer.
        p.want([ReadRange(key: "d", offset: 0, count: 10)], fetch: objects.fetch)
        #expect(p.objectSize("d") == 64 << 20)
    }

    @Test func aSpanNeverExceedsItsLimitAndWhatIsHeldStaysWithinTheBudget() throws {
        let objects = FakeObjects(size: 1 << 30)
        let budget = 20 << 20
        let p = S3Prefetcher(budget: budget, inFlight: 3)
        // 40 MiB of adjacent entries of 512 KiB: five spans of 8 MiB, of which
        // only what fits the budget is fetched.
        let entry = 512 << 10
        p.want((0..<80).map { ReadRange(key: "big", offset: Int64($0 * entry), count: entry) }, fetch: objects.fetch)
        #expect(p.heldBytes <= budget)
        var hits = 0
        for k in 0..<80 where read(p, "big", Int64(k * entry), entry) != nil { hits += 1 }
        let calls = objects.lock.withLock { objects.calls }
        #expect(calls.allSatisfy { $0.count <= S3Prefetcher.spanLimit })
        #expect(calls.count == 2, "two spans of 8 MiB fit 20 MiB")
        #expect(hits == 32)
        #expect(p.heldBytes == 0)
    }

    @Test func aFailedFetchIsForgottenAndTheReadFindsNothing() throws {
        let objects = FakeObjects(size: 1 << 20, failing: ["gone"])
        let p = S3Prefetcher(budget: 8 << 20, inFlight: 2)
        p.want([ReadRange(key: "gone", offset: 0, count: 100), ReadRange(key: "here", offset: 0, count: 100)],
               fetch: objects.fetch)
        #expect(p.objectSize("gone") == nil)
        #expect(read(p, "gone", 0, 100) == nil)
        #expect(read(p, "here", 0, 100) != nil)
        #expect(p.heldBytes == 0)
    }

    /// On a real server: entries of three packs named ahead, interleaved as a
    /// restore reads them, cost one GET a pack and no HEAD, and read back exact.
    @Test(arguments: TestS3.servers)
    func entriesNamedAheadCostOneGetAPackAndNoHead(server: TestS3.Server) throws {
        let b = S3Backend(client: try TestS3.freshBucket(server), prefix: "repo")
        let packs = (0..<3).map { "packs/0\($0)/p\($0).pack" }
        let data = packs.indices.map { TestS3.distinctBytes(3 << 20, seed: UInt64($0 + 1)) }
        for (k, d) in zip(packs, data) { try b.put(k, d, ifAbsent: false) }
        // Entries of 40-70 KiB, back to back in each pack, taken in turn from each.
        var plan = [ReadRange]()
        var next = [Int64](repeating: 64, count: packs.count)
        for i in 0..<120 {
            let p = i % packs.count
            let n = 40_000 + (i * 7919) % 30_000
            plan.append(ReadRange(key: packs[p], offset: next[p], count: n))
            next[p] += Int64(n)
        }
        let before = b.traffic.requests
        b.willRead(plan)
        var readers = [String: ObjectReader]()
        for r in plan {
            let reader = try readers[r.key] ?? b.openReader(r.key)
            readers[r.key] = reader
            #expect(reader.size == 3 << 20)
            let got = try reader.read(at: r.offset, count: r.count)
            let d = data[packs.firstIndex(of: r.key) ?? 0]
            #expect(got == Array(d[Int(r.offset)..<(Int(r.offset) + r.count)]), "\(r)")
        }
        #expect(b.traffic.requests - before == packs.count, "one ranged GET a pack, no HEAD")
        // A range not named is read as always; a pack named ahead but missing is missing.
        let reader = try b.openReader(packs[0])
        #expect(try reader.read(at: 10, count: 20) == Array(data[0][10..<30]))
        b.willRead([ReadRange(key: "packs/09/missing.pack", offset: 0, count: 100)])
        #expect(throws: DedupError.self) { _ = try b.openReader("packs/09/missing.pack") }
    }
}
