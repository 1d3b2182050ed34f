import Dispatch
import Foundation

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

/// Runs `body(worker, item)` for every item in 0..<count: item i on worker
/// i % workers, the workers in parallel. Worker w uses only its own contexts (the
/// w-th compressor, hasher...) and item i only its own slot.
func forEachInParallel(_ count: Int, workers: Int, _ body: (_ worker: Int, _ item: Int) -> Void) {
    let tasks = min(workers, count)
    guard tasks > 0 else { return }
    runInParallel(tasks) { worker in
        var item = worker
        while item < count {
            body(worker, item)
            item += tasks
        }
    }
}

/// Runs `body(worker, item)` for every item in 0..<count, each worker taking one
/// contiguous run of items (for work where neighbours share state, such as the
/// members of one compression group).
func forEachRunInParallel(_ count: Int, workers: Int, _ body: (_ worker: Int, _ item: Int) -> Void) {
    let tasks = min(workers, count)
    guard tasks > 0 else { return }
    runInParallel(tasks) { worker in
        for item in (count * worker / tasks)..<(count * (worker + 1) / tasks) { body(worker, item) }
    }
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
