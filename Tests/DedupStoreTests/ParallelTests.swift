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

    /// Runs are taken as workers come free: while the first run's first item
    /// holds its worker, the other worker takes every other run. (The pool may
    /// give no second thread while the test suites load it: then there is
    /// nothing to see, and only the runs' order is checked.)
    @Test func aSlowRunDoesNotHoldBackTheRest() {
        final class State: @unchecked Sendable {
            let lock = NSLock()
            var ranBy = [Int](repeating: -1, count: 40)
            func run(_ item: Int, on worker: Int) { lock.withLock { ranBy[item] = worker } }
            func snapshot() -> [Int] { lock.withLock { ranBy } }
        }
        let count = 40
        let firstRun = count / (2 * runsPerWorker)
        let state = State()
        var sawOtherWorker = false
        forEachRunInParallel(count, workers: 2, weight: { _ in 1 }) { worker, item in
            if item == 0 {
                // Wait (up to 10 s) for a worker other than this one, then for
                // every item outside the first run.
                let deadline = Date().addingTimeInterval(10)
                while Date() < deadline {
                    let seen = state.snapshot()
                    if seen.contains(where: { $0 >= 0 && $0 != worker }) { sawOtherWorker = true }
                    if sawOtherWorker && seen[firstRun...].allSatisfy({ $0 >= 0 }) { break }
                    usleep(1000)
                }
            }
            state.run(item, on: worker)
        }
        let ranBy = state.snapshot()
        #expect(ranBy.allSatisfy { $0 >= 0 })
        // Within a run the items go in order on one worker.
        #expect((0..<firstRun).allSatisfy { ranBy[$0] == ranBy[0] })
        if sawOtherWorker {
            // One run a worker would have kept half the items behind the slow one.
            let bySlow = ranBy.filter { $0 == ranBy[0] }.count
            #expect(bySlow == firstRun, "the slow item's worker ran \(bySlow) of \(count)")
        }
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
