import Foundation

/// Hands buffers, in order, to `body` on a thread of its own, one at a time, so
/// that the caller can fill the next buffer meanwhile (double buffering).
///
/// `submit` returns once the previous buffer is done with: the caller may then
/// reuse that one. The first error `body` throws is rethrown by the next `submit`
/// or by `finish`; later buffers are then skipped.
final class BackgroundSink: @unchecked Sendable {
    private let condition = NSCondition()
    private var pending: UnsafeRawBufferPointer?
    private var busy = false
    private var closed = false
    private var running = false
    private var failure: Error?
    private let body: (UnsafeRawBufferPointer) throws -> Void

    init(_ body: @escaping (UnsafeRawBufferPointer) throws -> Void) {
        self.body = body
        running = true
        startThread(named: "dbbackup-writer") { [self] in run() }
    }

    /// Waits until the buffer submitted before is processed, then queues this one.
    func submit(_ buffer: UnsafeRawBufferPointer) throws {
        condition.lock()
        defer { condition.unlock() }
        while busy { condition.wait() }
        if let failure { throw failure }
        pending = buffer
        busy = true
        condition.broadcast()
    }

    /// Waits for the last buffer and ends the thread; throws the first error.
    func finish() throws {
        close()
        if let failure { throw failure }
    }

    /// Ends the thread after the buffer in hand, without rethrowing (error paths).
    func close() {
        condition.lock()
        closed = true
        condition.broadcast()
        while running { condition.wait() }
        condition.unlock()
    }

    private func run() {
        condition.lock()
        while true {
            while pending == nil && !closed { condition.wait() }
            guard let buffer = pending else { break }
            let skip = failure != nil
            condition.unlock()
            var error: Error?
            if !skip {
                do { try body(buffer) } catch let e { error = e }
            }
            condition.lock()
            if let error, failure == nil { failure = error }
            pending = nil
            busy = false
            condition.broadcast()
        }
        running = false
        condition.broadcast()
        condition.unlock()
    }
}
