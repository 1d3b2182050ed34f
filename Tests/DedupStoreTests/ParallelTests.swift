import Foundation
import Testing
@testable import DedupStore

@Suite struct ParallelTests {
    @Test func runsOfEqualWeightCoverEveryItemOnce() {
        var g = SeededGenerator(seed: 41)
        for _ in 0..<200 {
            let count = Int(g.next() % 40) + 1
            let parts = Int(g.next() % UInt64(min(count, 5))) + 1
            let weights = (0..<count).map { _ in Int(g.next() % 1_000_000) }
            let ends = runEnds(count, parts: parts, weight: { weights[$0] })
            #expect(ends.count == parts)
            #expect(ends.last == count)
            // Contiguous, none empty.
            #expect(zip([0] + ends.dropLast(), ends).allSatisfy { $0 < $1 })
            // No run is further from its share than half of the largest item it could move.
            let total = weights.reduce(0, +), largest = weights.max() ?? 0
            for (k, end) in ends.dropLast().enumerated() {
                let before = weights[0..<end].reduce(0, +)
                let goal = Double(total) * Double(k + 1) / Double(parts)
                if end > k + 1 && end < count - (parts - 1 - k) {
                    #expect(abs(Double(before) - goal) <= Double(largest) / 2 + 1, "run \(k) of \(ends)")
                }
            }
        }
    }

    @Test func oneHeavyItemGetsAWorkerOfItsOwn() {
        let weights = [4_000_000, 100, 100, 100, 100, 100]
        #expect(runEnds(weights.count, parts: 2, weight: { weights[$0] }) == [1, 6])
        let late = [100, 100, 100, 100, 100, 4_000_000]
        #expect(runEnds(late.count, parts: 2, weight: { late[$0] }) == [5, 6])
    }

    /// Runs are taken as workers come free: an item slower than its weight says
    /// keeps its worker, and the other worker takes the runs it would have had.
    @Test func aSlowRunDoesNotHoldBackTheRest() {
        let count = 40
        let ranBy = UnsafeMutablePointer<Int>.allocate(capacity: count)
        ranBy.initialize(repeating: -1, count: count)
        defer { ranBy.deallocate() }
        let shared = SharedPointer(base: ranBy)
        forEachRunInParallel(count, workers: 2, weight: { _ in 1 }) { worker, item in
            if item == 0 { usleep(200_000) }
            shared[item] = worker
        }
        let slowWorker = ranBy[0]
        let bySlow = (0..<count).filter { ranBy[$0] == slowWorker }.count
        #expect((0..<count).allSatisfy { ranBy[$0] >= 0 })
        // One run a worker would have given it half the items.
        #expect(bySlow < count / 2, "the slow item's worker ran \(bySlow) of \(count)")
        // Within a run the items go in order on one worker: the first run is 0..<5.
        #expect((0..<(count / (2 * runsPerWorker))).allSatisfy { ranBy[$0] == slowWorker })
    }

    @Test func everyItemRunsOnceOnSomeWorker() {
        for workers in 1...4 {
            let count = 37
            let seen = UnsafeMutablePointer<Int>.allocate(capacity: count)
            seen.initialize(repeating: 0, count: count)
            defer { seen.deallocate() }
            let shared = SharedPointer(base: seen)
            forEachInParallel(count, workers: workers) { _, item in shared[item] += 1 }
            #expect((0..<count).allSatisfy { seen[$0] == 1 })
            seen.update(repeating: 0, count: count)
            forEachRunInParallel(count, workers: workers, weight: { $0 * $0 }) { _, item in shared[item] += 1 }
            #expect((0..<count).allSatisfy { seen[$0] == 1 })
        }
    }
}
