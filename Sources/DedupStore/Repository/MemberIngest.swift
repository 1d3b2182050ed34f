import Foundation

/// One member of a backup of member streams: its name, and how to open its
/// stream when one of the backup's streams is free.
public struct MemberPlan {
    public var name: String
    /// Opens the member's stream in stream slot `slot` (0 up to the backup's
    /// `streams`), on the backup's thread: a caller can keep one connection per
    /// slot. The source is then read on a thread of its own.
    public var open: (_ slot: Int) throws -> AnySource
    /// Asked once the member has ended: its rows, recorded in the manifest.
    public var rows: (() -> Int64?)?

    public init(name: String, rows: (() -> Int64?)? = nil, open: @escaping (_ slot: Int) throws -> AnySource) {
        self.name = name
        self.rows = rows
        self.open = open
    }
}

/// Wakes the thread that serves several producers when any of them has something.
private final class ReadySignal: @unchecked Sendable {
    private let condition = NSCondition()
    private var generation = 0

    var current: Int {
        condition.lock()
        defer { condition.unlock() }
        return generation
    }

    func poke() {
        condition.lock()
        generation += 1
        condition.broadcast()
        condition.unlock()
    }

    /// Waits until something happened after `seen` (a value of `current`).
    func wait(after seen: Int) {
        condition.lock()
        while generation == seen { condition.wait() }
        condition.unlock()
    }
}

extension StreamIngest {
    /// Streams `plans` with up to `streams` of them open at once: each member's
    /// source is read, cut and hashed by its own producer thread, and this thread
    /// stores the batches of whichever is ready, each into its member's list (new
    /// lists from `newList`, delta bases from `previous(name)`). `finished` is
    /// told each member as it ends (its index in `plans`, its list, what it came
    /// to); members open in the order given. An error stops every producer and
    /// aborts the lists not finished.
    func streamMembers(
        _ plans: [MemberPlan], streams: Int, newList: () throws -> ChunkListWriter,
        previous: (String) -> ChunkListReader?,
        finished: (Int, ChunkListWriter, StreamResult) throws -> Void
    ) throws {
        final class Open {
            let index: Int
            let input: InputStream
            let producer: ChunkBatchProducer<AnySource>
            init(index: Int, input: InputStream, producer: ChunkBatchProducer<AnySource>) {
                self.index = index
                self.input = input
                self.producer = producer
            }
        }
        let signal = ReadySignal()
        let slots = max(1, min(streams, plans.count))
        var open = [Open?](repeating: nil, count: slots)
        // Each slot's hashers: its producer hashes on all cores with them.
        var hashers = [readerHashers]
        for _ in 1..<slots { hashers.append(try (0..<workers).map { _ in try session.repository.makeChunkHasher() }) }
        var nextPlan = 0
        defer {
            for case let member? in open {
                member.producer.stop()
                member.input.list.abort()
            }
        }
        func start(in slot: Int) throws {
            let index = nextPlan
            nextPlan += 1
            let list = try newList()
            do {
                let position = try chunks.beginStream(
                    deltaAgainst: previous(plans[index].name), resemblance: resemblance)
                let source = try plans[index].open(slot)
                let producer = makeProducer(source, hashers: hashers[slot])
                producer.onReady = { signal.poke() }
                open[slot] = Open(index: index, input: InputStream(list: list, position: position), producer: producer)
                producer.start()
            } catch {
                list.abort()
                throw error
            }
        }
        var turn = 0
        while true {
            for slot in 0..<slots where open[slot] == nil && nextPlan < plans.count { try start(in: slot) }
            guard open.contains(where: { $0 != nil }) else { return }
            let seen = signal.current
            var progressed = false
            // In turn, so that one fast member does not starve the others.
            for k in 0..<slots {
                let slot = (turn + k) % slots
                guard let member = open[slot] else { continue }
                switch try member.producer.poll() {
                case .batch(let batch):
                    defer { member.producer.release(batch) }
                    try store(batch, of: member.input, wantSamples: member.producer.wantSamples)
                    progressed = true
                case .ended:
                    let result = finish(member.input, digest: member.producer.finish())
                    open[slot] = nil
                    do {
                        try finished(member.index, member.input.list, result)
                    } catch {
                        member.input.list.abort()
                        throw error
                    }
                    progressed = true
                case .notYet:
                    continue
                }
            }
            turn += 1
            if !progressed { signal.wait(after: seen) }
        }
    }
}
