import Foundation

/// gc's steps that delete (index entries, packs, chunk lists), each a short one.
///
/// When gc runs beside backups (`takeExclusive` set: the CLI, which holds the
/// maintenance lock for the whole run), it marks and plans without the exclusive
/// lock and takes it only for these steps. Backups committed meanwhile may use
/// chunks the mark found dead: at the start of each step, with no backup in
/// flight, every backup committed since gc began (found in the change notes, see
/// `LateCommits`; most of them in a pass just before, without the lock) is
/// marked, and the packs that the index places its newly marked
/// chunks in are kept by this run. Packs written meanwhile are never gc's: the
/// sweep only looks at the packs listed before the mark (`PackCensus`).
///
/// Without `takeExclusive` the caller holds the exclusive lock for the whole run
/// (nothing else writes), and a step is just its body.
final class DeletionSteps {
    private let takeExclusive: (() throws -> RepositoryLock)?
    private let late: LateCommits?
    private let marks: ChunkSet
    private let index: ChunkIndex
    /// Packs that hold a chunk of a backup committed while gc ran: kept.
    private(set) var kept = Set<PackID>()
    /// The chunk lists in use, by the hash values of their keys, with those of
    /// backups committed while gc ran.
    private(set) var chunkLists: Set<Int>
    /// Steps run under the exclusive lock, and the seconds they held it.
    private(set) var lockedSteps = 0
    private(set) var lockedSeconds = 0.0
    /// Test hook, run between the unlocked pass and taking the lock.
    var beforeLock: (() throws -> Void)?

    init(
        repository: Repository, since started: Date, marks: ChunkSet, index: ChunkIndex, chunkLists: Set<Int>,
        takeExclusive: (() throws -> RepositoryLock)?
    ) {
        self.takeExclusive = takeExclusive
        self.marks = marks
        self.index = index
        self.chunkLists = chunkLists
        late = takeExclusive == nil ? nil : LateCommits(repository: repository, since: started)
    }

    /// Runs `body` as one step: under the exclusive lock, after the late commits
    /// are marked, when gc runs beside backups.
    func run(_ body: () throws -> Void) throws {
        guard let takeExclusive, let late else { return try body() }
        kept.formUnion(try late.mark(into: marks, index: index, chunkLists: &chunkLists, locked: false))
        try beforeLock?()
        let lock = try takeExclusive()
        defer { lock.release() }
        let started = Date()
        defer {
            lockedSteps += 1
            lockedSeconds += Date().timeIntervalSince(started)
        }
        kept.formUnion(try late.mark(into: marks, index: index, chunkLists: &chunkLists, locked: true))
        try body()
    }
}

/// Backups committed while gc runs without the exclusive lock, found by their
/// change notes (a commit note is written before its manifest, in the hour
/// folder of its writer's clock). Notes are read from a day before gc began to a
/// day past now (`clockMargin`): a writer whose clock is off by less than that
/// is seen. Marking a backup twice costs only the time; a step lists about 49
/// small hour folders.
final class LateCommits {
    private let repository: Repository
    private let since: Date
    /// Notes whose backups are marked (or died), and the backups marked.
    private var settled = Set<String>()
    private var marked = Set<String>()
    /// How far a writer's clock may be from gc's.
    static let clockMargin: TimeInterval = 24 * 3600

    init(repository: Repository, since started: Date) {
        self.repository = repository
        since = started.addingTimeInterval(-Self.clockMargin)
    }

    /// Marks the chunks and chunk lists of every backup committed since the last
    /// call (notes not settled yet) and returns the packs the index places their
    /// newly marked chunks in. Run once without the lock (most of the work: the
    /// first call reads a day of notes) and once `locked`, with no backup in
    /// flight: a note whose manifest is not there is then a backup that died;
    /// before, it may be one still writing, so its note is looked at again.
    func mark(into marks: ChunkSet, index: ChunkIndex, chunkLists: inout Set<Int>, locked: Bool) throws -> Set<PackID> {
        var packs = Set<PackID>()
        var listedAgain = false
        let walker = ReferenceWalker(repository: repository)
        for key in try repository.changeKeys(since: since, ahead: Self.clockMargin) where !settled.contains(key) {
            guard let note = try repository.loadChange(key), note.op == .commit else {
                settled.insert(key)
                continue
            }
            var done = true
            try walker.forEachBackup(note.ids.filter { !marked.contains($0) }) { id, loaded in
                let manifest: Manifest
                switch loaded {
                case .success(let m): manifest = m
                case .failure(.manifestNotFound):
                    if !locked { done = false }
                    return
                case .failure(let error):
                    throw DedupError.invalidArgument(
                        "gc stopped: backup \(id), committed while gc ran, cannot be read: \(error.message); nothing it needs was deleted; run gc again"
                    )
                }
                try walker.forEachStream(of: manifest) { member, list in
                    chunkLists.insert(member.chunkList.key.hashValue)
                    try list.forEach { chunk, _ in
                        // (A chunk seen twice before the set's next flush is inserted twice.)
                        guard try !marks.contains(chunk) else { return }
                        try marks.insert(chunk)
                        var location = try index.lookup(chunk)
                        if location == nil && !listedAgain {
                            // A chunk new to the repository, in a pack another
                            // process wrote: read its trailer (once per call),
                            // for the delta base it may name.
                            try repository.listIndexAgain(index)
                            listedAgain = true
                            location = try index.lookup(chunk)
                        }
                        if let pack = location?.pack { packs.insert(pack) }
                        // A delta keeps its chain: the backup may have taken a
                        // base the mark found dead (the resemblance table still
                        // names chunks that wait for gc).
                        try index.forEachBase(of: chunk, at: location) { base, at in
                            try marks.insert(base)
                            if let pack = at?.pack { packs.insert(pack) }
                        }
                    }
                }
                marked.insert(id)
            }
            if done { settled.insert(key) }
        }
        try marks.flush()
        return packs
    }
}

/// The packs gc looks at: those listed before the mark, sorted out by the size
/// the index (then brought in step with a listing) has for each. A pack written
/// after this listing (a backup running beside gc) is not in it, so gc never
/// deletes a pack whose chunks the mark could not see.
struct PackCensus {
    /// Packs of at least half the pack size, with their sizes.
    var large: [(pack: PackID, size: Int64)] = []
    /// The small packs, none yet placed in the merge order (`Int.max`).
    var small: [PackID: Int] = [:]
    /// Packs whose trailer cannot be read: never deleted, their copies not counted.
    var unreadable = Set<PackID>()
    var packs = 0
    var bytes: Int64 = 0

    /// The packs present, one key at a time (a year of WAL: 525,600 keys, 55 MB
    /// as a listing; 16 bytes each here).
    static func listPacks(_ backend: Backend) throws -> [PackID] {
        var out = [PackID]()
        try backend.forEachKey("packs/") { key in
            if let pack = PackID(key: key) { out.append(pack) }
        }
        return out
    }

    /// Packs merged when they are smaller than this share of the pack size. The
    /// packs gc writes reach the pack size (all but its last), so after gc every
    /// pack but that one and those kept (damaged, unreadable) holds at least half
    /// the pack size: at most 2 x stored bytes / pack size of them, plus one. A
    /// larger share would rewrite more for fewer packs; a smaller one leaves more.
    static let smallPackShare = 0.5

    init() {}

    /// Sorts `listed` by size. Opening the index read every readable trailer into
    /// it, so the listed packs it does not know are exactly the unreadable ones.
    init(_ listed: [PackID], index: ChunkIndex, backend: Backend, packSize: Int) throws {
        let below = Int64(Double(packSize) * Self.smallPackShare)
        for pack in listed {
            packs += 1
            guard let size = try index.packSize(pack) else {
                unreadable.insert(pack)
                bytes += try backend.size(pack.key) ?? 0
                continue
            }
            bytes += size
            if size < below { small[pack] = Int.max } else { large.append((pack, size)) }
        }
    }
}
