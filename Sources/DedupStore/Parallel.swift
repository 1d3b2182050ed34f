import Dispatch

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

/// A pointer handed to parallel tasks that each use their own part of it.
struct SharedPointer<T>: @unchecked Sendable {
    let base: UnsafeMutablePointer<T>
    subscript(i: Int) -> T {
        get { base[i] }
        nonmutating set { base[i] = newValue }
    }
}
