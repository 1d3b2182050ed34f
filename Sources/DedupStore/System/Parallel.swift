import Dispatch
import Foundation
import Synchronization

/// Runs `body(task)` for task 0..<count on all cores and returns when all are done.
///
/// The one place where values cross into `concurrentPerform`'s @Sendable closure
/// unchecked: callers give each task its own slots and contexts (task i touches
/// only what belongs to i), and nothing runs after the call returns.
func runInParallel(_ count: Int, _ body: (Int) -> Void) {
    if count == 1 {
        body(0)
        return
    }
    withoutActuallyEscaping(body) { body in
        nonisolated(unsafe) let unsafeBody = body
        DispatchQueue.concurrentPerform(iterations: count) { task in unsafeBody(task) }
    }
}

/// Runs `body(worker, item)` for every item in 0..<count, the workers in
/// parallel, each taking the next item not yet taken (so items of unequal cost
/// keep every worker busy to the end: give the costly ones the low numbers).
/// Worker w uses only its own contexts (the w-th compressor, hasher...) and item i
/// only its own slot.
func forEachInParallel(_ count: Int, workers: Int, _ body: (_ worker: Int, _ item: Int) -> Void) {
    let tasks = min(workers, count)
    guard tasks > 0 else { return }
    if tasks == 1 {
        for item in 0..<count { body(0, item) }
        return
    }
    let next = Atomic<Int>(0)
    runInParallel(tasks) { worker in
        while true {
            let item = next.wrappingAdd(1, ordering: .relaxed).oldValue
            if item >= count { return }
            body(worker, item)
        }
    }
}

/// Runs `body(item)` for every item in 0..<count, up to `inFlight` at once on
/// threads that may block: for work that waits (requests to a bucket), not for
/// the CPU's, which `forEachInParallel` keeps to the cores. Item i touches only
/// what belongs to it.
func forEachWaiting(_ count: Int, inFlight: Int, _ body: (_ item: Int) -> Void) {
    let tasks = min(inFlight, count)
    guard tasks > 1 else {
        for item in 0..<count { body(item) }
        return
    }
    let next = Atomic<Int>(0)
    let group = DispatchGroup()
    withoutActuallyEscaping(body) { body in
        nonisolated(unsafe) let unsafeBody = body
        for _ in 0..<tasks {
            DispatchQueue.global().async(group: group) {
                while true {
                    let item = next.wrappingAdd(1, ordering: .relaxed).oldValue
                    if item >= count { return }
                    unsafeBody(item)
                }
            }
        }
        group.wait()
    }
}

/// Runs `body(worker, item)` for every item in 0..<count in contiguous runs (for
/// work where neighbours share state, such as the members of one compression
/// group, or deltas whose bases share one): the items are cut into a few runs per
/// worker of about equal total `weight` (an item's cost, such as its bytes), and
/// each worker takes the next run not yet taken, so that items whose cost the
/// weight does not tell (a delta against a long chain, a chunk compressed twice)
/// still keep every worker busy to the end.
func forEachRunInParallel(
    _ count: Int, workers: Int, weight: (Int) -> Int, _ body: (_ worker: Int, _ item: Int) -> Void
) {
    let tasks = min(workers, count)
    guard tasks > 0 else { return }
    if tasks == 1 {
        for item in 0..<count { body(0, item) }
        return
    }
    let ends = runEnds(count, parts: min(count, tasks * runsPerWorker), weight: weight)
    let next = Atomic<Int>(0)
    ends.withUnsafeBufferPointer { ends in
        nonisolated(unsafe) let ends = ends
        runInParallel(tasks) { worker in
            while true {
                let run = next.wrappingAdd(1, ordering: .relaxed).oldValue
                if run >= ends.count { return }
                for item in (run == 0 ? 0 : ends[run - 1])..<ends[run] { body(worker, item) }
            }
        }
    }
}

/// Runs a worker takes in `forEachRunInParallel`, on average: with 4 a pgbench
/// night of deltas took 0.95x the wall time of one run a worker, and its restore
/// 0.96x; 8 was the same as 4 within noise, and splits more neighbours.
let runsPerWorker = 4

/// Where each of `parts` contiguous runs of 0..<count ends (`count >= parts`): run
/// w ends where the running total of `weight` comes nearest to w+1 of `parts`
/// equal shares, and every run keeps at least one item.
func runEnds(_ count: Int, parts: Int, weight: (Int) -> Int) -> [Int] {
    let weights = (0..<count).map { Double(max(0, weight($0))) }
    let total = weights.reduce(0, +)
    var ends = [Int]()
    ends.reserveCapacity(parts)
    var sum = 0.0, item = 0
    for w in 0..<(parts - 1) {
        let goal = total * Double(w + 1) / Double(parts)
        let limit = count - (parts - 1 - w)  // an item left for each later run
        repeat {
            sum += weights[item]
            item += 1
        } while item < limit && sum + weights[item] / 2 < goal
        ends.append(item)
    }
    ends.append(count)
    return ends
}

/// Starts a named thread with a 1 MiB stack running `body`.
func startThread(named name: String, _ body: @escaping @Sendable () -> Void) {
    let thread = Thread(block: body)
    thread.name = name
    thread.stackSize = 1 << 20
    thread.start()
}

extension DedupError {
    /// Any error as a DedupError (for the per-chunk failure slots of parallel work).
    static func wrapping(_ error: Error) -> DedupError {
        (error as? DedupError) ?? .compression("\(error)")
    }
}

/// A pointer handed to parallel tasks that each use their own part of it.
struct SharedPointer<T>: @unchecked Sendable {
    let base: UnsafeMutablePointer<T>
    subscript(i: Int) -> T {
        get { base[i] }
        nonmutating set { base[i] = newValue }
    }
}
