import DedupStore
import Foundation

/// Ranges a reader said it is about to read (`Backend.willRead`), fetched ahead
/// by ranged GETs, several at once, in the order given: a restore's next
/// entries, spread over many packs, then cost one round trip together instead
/// of one each, in turn. Nearby ranges of one object go in one GET.
///
/// Only an aid: a read it holds is copied from it, any other goes to the
/// object as always, and a fetch that failed is forgotten (the read then makes
/// its own request and reports its own error). Bounded: what it holds, fetched
/// or in flight, stays within `budget`; a hint beyond it is dropped.
final class S3Prefetcher: @unchecked Sendable {
    /// The most bytes one GET fetches, and the widest gap between two hinted
    /// ranges that one GET reads across (fewer requests for a few wasted bytes).
    static let spanLimit = 8 << 20
    static let gapLimit: Int64 = 256 << 10

    /// One ranged GET of (key, offset, count), with the object's whole size
    /// when the answer tells it.
    typealias Fetch = @Sendable (String, Int64, Int) throws -> (bytes: [UInt8], objectSize: Int64?)

    private let budget: Int
    private let inFlight: Int

    private let lock = NSLock()
    /// Spans by age, oldest first (the reader consumes them in about that order).
    private var spans: [Span] = []
    private var held = 0
    private var queued: [(span: Span, fetch: Fetch)] = []
    private var running = 0

    /// Bytes of one object fetched, or being fetched, ahead of its read (by the
    /// prefetcher, or by a reader for its next window).
    final class Span: @unchecked Sendable {
        typealias Fetched = (bytes: [UInt8], objectSize: Int64?)
        let key: String
        let start: Int64
        let count: Int
        var end: Int64 { start + Int64(count) }
        private let done = DispatchSemaphore(value: 0)
        private let state = NSLock()
        private var result: Result<Fetched, Error>?

        init(key: String, start: Int64, count: Int) {
            self.key = key
            self.start = start
            self.count = count
        }

        func finish(_ r: Result<Fetched, Error>) {
            state.withLock { result = r }
            done.signal()
        }

        /// True once the fetch ended, either way.
        var isFinished: Bool { state.withLock { result != nil } }

        /// The bytes and the object's size, or why they could not be fetched.
        func wait() -> Result<Fetched, Error> {
            done.wait()
            done.signal()
            return state.withLock { result } ?? .failure(CancellationError())
        }
    }

    /// At most `budget` bytes held, `inFlight` GETs at once.
    init(budget: Int, inFlight: Int) {
        self.budget = budget
        self.inFlight = max(1, inFlight)
    }

    /// Bytes held or being fetched.
    var heldBytes: Int { lock.withLock { held } }

    /// Starts fetching the ranges not held already, joined per object into spans.
    func want(_ ranges: [ReadRange], fetch: @escaping Fetch) {
        var byKey = [String: [ReadRange]]()
        var keys = [String]()
        for r in ranges where r.count > 0 {
            if byKey[r.key] == nil { keys.append(r.key) }
            byKey[r.key, default: []].append(r)
        }
        var new = [Span]()
        lock.withLock {
            for key in keys {
                let sorted = (byKey[key] ?? []).sorted { $0.offset < $1.offset }
                var open: (start: Int64, end: Int64)?
                func close() {
                    guard let o = open else { return }
                    open = nil
                    let span = Span(key: key, start: o.start, count: Int(o.end - o.start))
                    guard makeRoom(for: span.count) else { return }
                    spans.append(span)
                    held += span.count
                    new.append(span)
                }
                for r in sorted {
                    let end = r.offset + Int64(r.count)
                    if covered(key, r.offset, end) { continue }
                    if let o = open, r.offset <= o.end + Self.gapLimit, max(o.end, end) - o.start <= Int64(Self.spanLimit) {
                        open = (o.start, max(o.end, end))
                    } else {
                        close()
                        open = (r.offset, end)
                    }
                }
                close()
            }
            queued.append(contentsOf: new.map { ($0, fetch) })
        }
        startWorkers()
    }

    /// Copies `buffer.count` bytes at `offset` of `key` from a span that holds
    /// them, waiting for one still in flight; false when none does (or its fetch
    /// failed). A span is let go once its last byte has been read.
    func take(_ key: String, at offset: Int64, into buffer: UnsafeMutableRawBufferPointer) -> Bool {
        let end = offset + Int64(buffer.count)
        guard let span = lock.withLock({ spans.first { $0.key == key && $0.start <= offset && end <= $0.end } }) else {
            return false
        }
        guard case .success(let fetched) = span.wait(), fetched.bytes.count == span.count else {
            drop(span)
            return false
        }
        let from = Int(offset - span.start)
        fetched.bytes.withUnsafeBytes {
            buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[from..<(from + buffer.count)]))
        }
        if end == span.end { drop(span) }
        return true
    }

    /// The size of `key` as the answer to a span of it said, waiting for the
    /// first one in flight; nil when no span of it is held, or it did not say.
    func objectSize(_ key: String) -> Int64? {
        guard let span = lock.withLock({ spans.first { $0.key == key } }) else { return nil }
        return try? span.wait().get().objectSize
    }

    /// Forgets every span of `key` (deleted).
    func forget(_ key: String) {
        lock.withLock {
            for s in spans where s.key == key { held -= s.count }
            spans.removeAll { $0.key == key }
            queued.removeAll { $0.span.key == key }
        }
    }

    private func covered(_ key: String, _ start: Int64, _ end: Int64) -> Bool {
        spans.contains { $0.key == key && $0.start <= start && end <= $0.end }
    }

    /// Under the lock: lets the oldest fetched spans go until `count` more fits.
    private func makeRoom(for count: Int) -> Bool {
        guard count <= budget else { return false }
        while held + count > budget {
            // Only spans already fetched: one in flight or queued was asked for later.
            guard let i = spans.firstIndex(where: { $0.isFinished }) else {
                return false
            }
            held -= spans[i].count
            spans.remove(at: i)
        }
        return true
    }

    private func drop(_ span: Span) {
        lock.withLock {
            guard let i = spans.firstIndex(where: { $0 === span }) else { return }
            held -= span.count
            spans.remove(at: i)
        }
    }

    /// Up to `inFlight` workers, each fetching the oldest queued span until none is left.
    private func startWorkers() {
        let toStart: Int = lock.withLock {
            let n = min(inFlight - running, queued.count)
            running += max(0, n)
            return max(0, n)
        }
        for _ in 0..<toStart {
            DispatchQueue.global().async { [self] in
                while let (span, fetch) = lock.withLock({ () -> (Span, Fetch)? in
                    if queued.isEmpty { running -= 1; return nil }
                    return queued.removeFirst()
                }) {
                    span.finish(Result { try fetch(span.key, span.start, span.count) })
                }
            }
        }
    }
}
