import Foundation

/// The one chunk layer for reading: turns a chunk id (and its location) into
/// verified plaintext, for restore, verify, gc's repacking and the fetch of a
/// single chunk alike. Reads go through the backend, one ranged read per stored
/// entry (a group's members share it); decoding is `ChunkDecoder`, the one place
/// that knows the encodings. Keeps a few packs open so that consecutive chunks of
/// one pack cost one read each.
final class ChunkReader {
    private let repository: Repository
    let index: ChunkIndex
    private let decompressor: ZstdDecompressor
    private let hasher: SHA256Hasher
    private let group = GroupScratch()
    private let cipher: RepositoryCipher?
    /// An encrypted entry's box as read, before `stored` gets its opened payload.
    private let sealed = ScratchBuffer()
    private var readers: [PackID: PackReader] = [:]
    private var readerOrder: [PackID] = []
    private let maxOpenPacks = 16
    /// The last entry's payload as compressed (a group's: its whole frame),
    /// opened when the repository is encrypted.
    private let stored = ScratchBuffer()
    private var payloadLength = 0
    private var payloadOffset = 0
    private let plain: UnsafeMutableRawBufferPointer
    /// The last group frame read into `stored` (members of one group come in a row).
    private var storedGroup: FrameKey?

    init(repository: Repository) throws {
        self.repository = repository
        index = try repository.index()
        hasher = try repository.makeChunkHasher()
        cipher = repository.cipher
        decompressor = try ZstdDecompressor()
        plain = .allocate(byteCount: repository.config.chunker.maxSize, alignment: 16)
    }

    deinit { plain.deallocate() }

    private func reader(_ pack: PackID) throws -> PackReader {
        if let r = readers[pack] { return r }
        let r = try PackReader(backend: repository.backend, id: pack, cipher: cipher)
        if readerOrder.count >= maxOpenPacks {
            let old = readerOrder.removeFirst()
            readers[old] = nil
        }
        readers[pack] = r
        readerOrder.append(pack)
        return r
    }

    /// Confirms the packs of the chunks `ids` together (`Repository.confirmPacks`),
    /// before their `location`s are asked for one by one.
    func confirmPacks(of ids: [ChunkID]) throws { try repository.confirmPacks(of: ids, in: index) }

    /// Where the chunk a backup needs is stored: its indexed copy, else the error
    /// that says why there is none (corrupt, as verify recorded, or missing).
    func location(of id: ChunkID, manifest: String) throws -> ChunkLocation {
        guard let loc = try repository.locate(id, in: index, listIfUnknown: true) else {
            throw repository.unindexedChunkError(id, manifest: manifest)
        }
        return loc
    }

    /// The plaintext of a chunk at a known location, verified against its id;
    /// valid until the next call.
    /// `checked: false` skips the check against the id: for a delta base read
    /// to encode against, whose decoding a restore repeats exactly (the delta is
    /// then checked against its own id).
    func fetch(
        _ id: ChunkID, at loc: ChunkLocation, expectedLength: Int, manifest: String, checked: Bool = true
    ) throws -> UnsafeRawBufferPointer {
        if loc.isDelta {
            return try fetchDelta(id, at: loc, expectedLength: expectedLength, manifest: manifest, checked: checked)
        }
        try readPayload(id, at: loc, expectedLength: expectedLength, manifest: manifest)
        let payloadLoc = cipher == nil ? loc : loc.unsealed
        return try ChunkDecoder.decode(id, at: payloadLoc, stored: storedPayload, into: plain, manifest: manifest,
                                       decompressor: decompressor, hasher: checked ? hasher : nil, group: group)
    }

    /// A delta: its bases decoded in turn, from the chunk stored on its own up,
    /// each into the prefix of the next; the chunk itself checked against its id.
    /// `storedPayload` is then the delta's own.
    private func fetchDelta(
        _ id: ChunkID, at loc: ChunkLocation, expectedLength: Int, manifest: String, checked: Bool
    ) throws -> UnsafeRawBufferPointer {
        let chain = try bases(of: id, at: loc, manifest: manifest)
        guard let root = chain.first else { throw DedupError.chunkCorrupt(
            chunk: id.hex, pack: loc.pack.hex, manifest: manifest, detail: "a delta without a base") }
        let maxChunk = plain.count
        var prefix = prefixScratch[0].buffer(maxChunk), next = prefixScratch[1].buffer(maxChunk)
        let rootPlain = try fetch(root.id, at: root.location, expectedLength: Int(root.location.rawLength),
                                  manifest: manifest, checked: false)
        UnsafeMutableRawBufferPointer(rebasing: prefix[0..<rootPlain.count]).copyMemory(from: rootPlain)
        var prefixLength = rootPlain.count
        for (k, link) in (chain.dropFirst() + [(id: id, location: loc)]).enumerated() {
            let last = k == chain.count - 1
            try readPayload(link.id, at: link.location, expectedLength: Int(link.location.rawLength),
                            manifest: manifest)
            let out = try ChunkDecoder.decodeDelta(
                link.id, at: cipher == nil ? link.location : link.location.unsealed, stored: storedPayload,
                base: UnsafeRawBufferPointer(rebasing: prefix[0..<prefixLength]), into: last ? plain : next,
                manifest: manifest, decompressor: decompressor, hasher: last && checked ? hasher : nil)
            if last { return out }
            swap(&prefix, &next)
            prefixLength = out.count
        }
        throw DedupError.chunkCorrupt(chunk: id.hex, pack: loc.pack.hex, manifest: manifest, detail: "an empty chain")
    }

    /// The chunks a delta at `loc` needs before it, the one stored on its own
    /// first, then each delta on it in turn (not the chunk itself); at most
    /// `DeltaFormat.maxChainLength - 1` deltas.
    func bases(of id: ChunkID, at loc: ChunkLocation, manifest: String) throws -> [(id: ChunkID, location: ChunkLocation)] {
        var chain = [(id: ChunkID, location: ChunkLocation)]()
        var current = loc
        var links = 1
        while let base = current.base, current.isDelta {
            guard links <= DeltaFormat.maxChainLength, base != id else {
                throw DedupError.chunkCorrupt(
                    chunk: id.hex, pack: loc.pack.hex, manifest: manifest,
                    detail: "its chain of deltas is longer than the \(DeltaFormat.maxChainLength) readers accept")
            }
            let baseLocation: ChunkLocation
            do {
                baseLocation = try location(of: base, manifest: manifest)
            } catch let e as DedupError {
                throw DedupError.chunkCorrupt(
                    chunk: id.hex, pack: loc.pack.hex, manifest: manifest,
                    detail: "its delta base \(base.hex) cannot be read: \(e.message)")
            }
            chain.insert((base, baseLocation), at: 0)
            current = baseLocation
            links += 1
        }
        return chain
    }

    /// Reads a chunk's entry (a group's frame once for a run of its members)
    /// and opens it when the repository is encrypted: `storedPayload` is then its payload.
    private func readPayload(_ id: ChunkID, at loc: ChunkLocation, expectedLength: Int, manifest: String) throws {
        try checkLocation(id, at: loc, expectedLength: expectedLength, manifest: manifest)
        if !loc.isGroupMember || storedGroup != loc.frame {
            storedGroup = nil
            // Encrypted: read the box, open it into `stored`. gc copies `stored`
            // as the chunk's payload, and the new pack seals it where it lands.
            let target = (cipher == nil ? stored : sealed).buffer(PackFormat.entryHeaderSize + Int(loc.storedLength))
            let entry = try readStored(id, at: loc, expectedLength: expectedLength, into: target, manifest: manifest)
            // Plain: the payload stays where it was read, after its entry header;
            // encrypted: the box opens to the start of `stored`.
            payloadOffset = cipher == nil ? PackFormat.entryHeaderSize : 0
            payloadLength = try ChunkDecoder.unseal(
                id, at: loc, stored: entry, cipher: cipher, into: stored, group: nil,
                manifest: manifest
            ).payload.count
            if loc.isGroupMember { storedGroup = loc.frame }
        }
    }

    /// Where a delta's bases are decoded (two: the prefix, and the next one).
    private let prefixScratch = [ScratchBuffer(), ScratchBuffer()]

    /// The plaintext length of the group the last fetch decoded (dead members included).
    var groupPlaintextLength: Int { group.plaintextLength }

    /// The last entry's payload as compressed (decrypted when the repository is encrypted).
    var storedPayload: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(
            rebasing: stored.buffer(payloadOffset + payloadLength)[payloadOffset..<(payloadOffset + payloadLength)])
    }

    /// Checks that a location is one this repository and this reader can hold.
    func checkLocation(_ id: ChunkID, at loc: ChunkLocation, expectedLength: Int, manifest: String) throws {
        func corrupt(_ detail: String) -> DedupError {
            .chunkCorrupt(chunk: id.hex, pack: loc.pack.hex, manifest: manifest, detail: detail)
        }
        guard Int(loc.rawLength) == expectedLength else {
            throw corrupt("the index records \(loc.rawLength) bytes, the backup \(expectedLength)")
        }
        let storedLimit = ZstdCompressor.bound(loc.isGroupMember ? PackFormat.maxGroupLength : plain.count)
        guard Int(loc.rawLength) <= plain.count, Int(loc.storedLength) <= storedLimit else {
            throw corrupt(
                "its lengths (\(loc.rawLength) plain, \(loc.storedLength) stored) exceed this repository's maximum chunk size"
            )
        }
        guard loc.isDelta == (loc.base != nil) else {
            throw corrupt(loc.isDelta ? "a delta whose base the index does not name" : "it names a base but is no delta")
        }
        guard loc.flags == (cipher == nil ? 0 : UInt8(PackFormat.encryptedFlag)) else {
            throw corrupt(
                cipher == nil
                    ? "it carries flags \(loc.flags) that this dbbackup does not know (written by a newer version?)"
                    : "it is not encrypted, in an encrypted repository")
        }
    }

    /// Checks a location and reads the chunk's entry (header, then stored bytes:
    /// one ranged read) into `buffer`; returns the stored bytes.
    func readStored(_ id: ChunkID, at loc: ChunkLocation, expectedLength: Int,
                    into buffer: UnsafeMutableRawBufferPointer, manifest: String) throws -> UnsafeRawBufferPointer {
        func corrupt(_ detail: String) -> DedupError {
            .chunkCorrupt(chunk: id.hex, pack: loc.pack.hex, manifest: manifest, detail: detail)
        }
        try checkLocation(id, at: loc, expectedLength: expectedLength, manifest: manifest)
        guard PackFormat.entryHeaderSize + Int(loc.storedLength) <= buffer.count else {
            throw corrupt("its stored length \(loc.storedLength) exceeds the read buffer")
        }
        do {
            return try reader(loc.pack).readStored(loc, id: id, into: buffer)
        } catch let e as DedupError {
            switch e {
            case .storage(let failure) where failure.failure == .notFound:
                throw corrupt("its pack is missing")
            case .chunkCorrupt(_, _, _, let detail):
                throw corrupt(detail)
            case .shortRead:
                throw corrupt("its pack ends before it (truncated)")
            default:
                throw e
            }
        }
    }
}

/// Turns a chunk's stored bytes back into its plaintext and checks it against its
/// id. Stateless apart from the contexts it is given, so workers run it in parallel.
enum ChunkDecoder {
    /// A stored entry ready for `decode`: in a plain repository `stored` itself
    /// at `loc`; in an encrypted one its box opened into `scratch`, at the opened
    /// location (28 bytes shorter, no flags). A group member whose group `group`
    /// holds decoded already needs no payload: nothing is opened.
    static func unseal(
        _ id: ChunkID, at loc: ChunkLocation, stored: UnsafeRawBufferPointer, cipher: RepositoryCipher?,
        into scratch: ScratchBuffer, group: GroupScratch?, manifest: String
    ) throws -> (payload: UnsafeRawBufferPointer, location: ChunkLocation) {
        guard let cipher else { return (stored, loc) }
        let opened = loc.unsealed
        if loc.isGroupMember, let group, group.holds(opened.frame) {
            return (UnsafeRawBufferPointer(start: nil, count: 0), opened)
        }
        let out = scratch.buffer(stored.count)
        do {
            let n = try cipher.open(
                stored, aad: RepositoryCipher.entryAAD(pack: loc.pack, offset: loc.offset, encoding: loc.encoding),
                into: out)
            return (UnsafeRawBufferPointer(rebasing: out[0..<n]), opened)
        } catch DedupError.authenticationFailed(let detail) {
            throw DedupError.chunkCorrupt(chunk: id.hex, pack: loc.pack.hex, manifest: manifest, detail: detail)
        }
    }

    /// Returns the plaintext: `stored` itself for a raw chunk, else `plain`'s start.
    /// A group member's group is decompressed into `group` (once for a run of
    /// members of the same group). Without a `hasher` the plaintext is not checked
    /// against the id (a restore into a file that the stream's SHA-256 checks).
    static func decode(_ id: ChunkID, at loc: ChunkLocation, stored: UnsafeRawBufferPointer,
                       into plain: UnsafeMutableRawBufferPointer, manifest: String,
                       decompressor: ZstdDecompressor, hasher: SHA256Hasher?,
                       group: GroupScratch) throws -> UnsafeRawBufferPointer {
        func corrupt(_ detail: String) -> DedupError {
            .chunkCorrupt(chunk: id.hex, pack: loc.pack.hex, manifest: manifest, detail: detail)
        }
        let out: UnsafeRawBufferPointer
        switch ChunkEncoding(rawValue: loc.encoding) {
        case .raw:
            guard loc.storedLength == loc.rawLength else {
                throw corrupt("raw chunk with stored length \(loc.storedLength)")
            }
            out = stored
        case .zstd:
            guard Int(loc.rawLength) <= plain.count else { throw corrupt("larger than its buffer") }
            let target = UnsafeMutableRawBufferPointer(rebasing: plain[0..<Int(loc.rawLength)])
            let n: Int
            do {
                n = try decompressor.decompress(stored, into: target)
            } catch {
                throw corrupt("zstd: \(error)")
            }
            guard n == Int(loc.rawLength) else {
                throw corrupt("decompressed to \(n) bytes, expected \(loc.rawLength)")
            }
            out = UnsafeRawBufferPointer(target)
        case .hexZstd:
            guard Int(loc.rawLength) <= plain.count else { throw corrupt("larger than its buffer") }
            let target = UnsafeMutableRawBufferPointer(rebasing: plain[0..<Int(loc.rawLength)])
            let n: Int
            do {
                n = try group.unpackSingle(stored, into: target, decompressor: decompressor)
            } catch let e as DedupError {
                throw corrupt(e.message)
            }
            guard n == Int(loc.rawLength) else {
                throw corrupt("decoded to \(n) bytes, expected \(loc.rawLength)")
            }
            out = UnsafeRawBufferPointer(target)
        case .zstdGroup, .hexZstdGroup:
            let plaintext: UnsafeRawBufferPointer
            do {
                plaintext = try group.decompress(
                    loc.frame, frame: stored, decompressor: decompressor,
                    hexPacked: loc.encoding == ChunkEncoding.hexZstdGroup.rawValue)
            } catch let e as DedupError {
                throw corrupt("its group: \(e.message)")
            }
            let start = Int(loc.groupOffset), end = start + Int(loc.rawLength)
            guard end <= plaintext.count, Int(loc.rawLength) <= plain.count else {
                throw corrupt("lies beyond its group's \(plaintext.count) bytes")
            }
            let target = UnsafeMutableRawBufferPointer(rebasing: plain[0..<Int(loc.rawLength)])
            target.copyMemory(from: UnsafeRawBufferPointer(rebasing: plaintext[start..<end]))
            out = UnsafeRawBufferPointer(target)
        case .zstdDelta:
            throw corrupt("a delta decoded without its base")
        case nil:
            throw corrupt("unknown encoding \(loc.encoding) (written by a newer dbbackup?)")
        }
        if let hasher, hasher.digest(out) != id { throw corrupt("SHA-256 of its contents does not match its id") }
        return out
    }

    /// A delta's plaintext (encoding 5): its frame decompressed against `base`,
    /// its base's plaintext, into `plain`; checked against the id with a `hasher`.
    /// `checksum` false: the frame's content checksum is not checked (an inner
    /// link of a chain whose last link's check covers it).
    static func decodeDelta(_ id: ChunkID, at loc: ChunkLocation, stored: UnsafeRawBufferPointer,
                            base: UnsafeRawBufferPointer, into plain: UnsafeMutableRawBufferPointer,
                            manifest: String, decompressor: ZstdDecompressor,
                            hasher: SHA256Hasher?, checksum: Bool = true) throws -> UnsafeRawBufferPointer {
        func corrupt(_ detail: String) -> DedupError {
            .chunkCorrupt(chunk: id.hex, pack: loc.pack.hex, manifest: manifest, detail: detail)
        }
        guard loc.isDelta else { throw corrupt("decoded as a delta, stored as encoding \(loc.encoding)") }
        guard Int(loc.rawLength) <= plain.count else { throw corrupt("larger than its buffer") }
        let target = UnsafeMutableRawBufferPointer(rebasing: plain[0..<Int(loc.rawLength)])
        let n: Int
        do {
            n = try decompressor.decompress(stored, prefix: base, into: target, checksum: checksum)
        } catch {
            throw corrupt("zstd delta: \(error)")
        }
        guard n == Int(loc.rawLength) else { throw corrupt("decompressed to \(n) bytes, expected \(loc.rawLength)") }
        let out = UnsafeRawBufferPointer(target)
        if let hasher, hasher.digest(out) != id { throw corrupt("SHA-256 of its contents does not match its id") }
        return out
    }
}

/// Decodes a chain of deltas on one worker: the first link stored on its own,
/// each next one a delta against the plaintext before it. What restore and a
/// backup's delta encoding (which decodes its bases) share; one per worker.
final class DeltaChainDecoder {
    /// A link: a chunk and its entry's stored bytes, as read.
    struct Link {
        var id: ChunkID
        var location: ChunkLocation
        var stored: UnsafeRawBufferPointer
    }

    private let prefixes = [ScratchBuffer(), ScratchBuffer()]
    private let opened = ScratchBuffer()
    let decompressor: ZstdDecompressor
    let group = GroupScratch()

    init() throws { decompressor = try ZstdDecompressor() }

    /// The last link's plaintext: in `final` when given, else in this decoder's
    /// scratch (valid until the next call); checked against its id with a
    /// `hasher`. `unlessSealedOrSummed`: no hashing when every link's stored
    /// bytes are known intact otherwise (opened with the repository's key, or a
    /// zstd frame with its content checksum): what the bytes decode to is then
    /// what was written from the chunk, whose id was taken from the same bytes.
    func decode(
        _ links: [Link], maxChunk: Int, cipher: RepositoryCipher?, manifest: String,
        into final: UnsafeMutableRawBufferPointer? = nil, hasher given: SHA256Hasher?,
        unlessSealedOrSummed: Bool = false
    ) throws -> UnsafeRawBufferPointer {
        guard let root = links.first else {
            throw DedupError.chunkCorrupt(chunk: "?", pack: "?", manifest: manifest, detail: "an empty chain of deltas")
        }
        let selfChecked = unlessSealedOrSummed && (cipher != nil || links.allSatisfy {
            $0.location.encoding != ChunkEncoding.raw.rawValue && ZstdDecompressor.carriesChecksum($0.stored)
        })
        let hasher = selfChecked ? nil : given
        var prefix = prefixes[0].buffer(maxChunk), next = prefixes[1].buffer(maxChunk)
        let lone = links.count == 1
        let (payload, rootLoc) = try ChunkDecoder.unseal(
            root.id, at: root.location, stored: root.stored, cipher: cipher, into: opened, group: group,
            manifest: manifest)
        let rootTarget = lone ? final ?? prefix : prefix
        var plain = try ChunkDecoder.decode(
            root.id, at: rootLoc, stored: payload, into: rootTarget, manifest: manifest, decompressor: decompressor,
            hasher: lone ? hasher : nil, group: group)
        // A raw chunk decodes to its stored (or opened) bytes: copied, as the next open reuses them.
        if plain.baseAddress != UnsafeRawPointer(rootTarget.baseAddress) && (!lone || final != nil) {
            UnsafeMutableRawBufferPointer(rebasing: rootTarget[0..<plain.count]).copyMemory(from: plain)
            plain = UnsafeRawBufferPointer(rebasing: rootTarget[0..<plain.count])
        }
        // The delta links' zstd checksums are not checked where a later check
        // covers them: a wrong byte of an inner link that the chunk is built from
        // makes the last link's plaintext wrong, which its checksum or the
        // chunk's SHA-256 then shows; and the SHA-256, when taken, covers the
        // last link itself (on pgbench's chains of 4 a delta link decodes in
        // about 0.6x the time without its checksum).
        let lastChecked = hasher != nil || links.last.map {
            $0.location.encoding != ChunkEncoding.raw.rawValue && cipher == nil
                && ZstdDecompressor.carriesChecksum($0.stored)
        } ?? false
        for (k, link) in links.dropFirst().enumerated() {
            let last = k == links.count - 2
            let (payload, loc) = try ChunkDecoder.unseal(
                link.id, at: link.location, stored: link.stored, cipher: cipher, into: opened, group: nil,
                manifest: manifest)
            plain = try ChunkDecoder.decodeDelta(
                link.id, at: loc, stored: payload, base: plain, into: last ? final ?? next : next,
                manifest: manifest, decompressor: decompressor, hasher: last ? hasher : nil,
                checksum: last ? hasher == nil : !lastChecked)
            swap(&prefix, &next)
        }
        return plain
    }
}

/// A growable buffer owned by one worker.
final class ScratchBuffer: @unchecked Sendable {
    private var storage = UnsafeMutableRawBufferPointer(start: nil, count: 0)

    deinit { storage.deallocate() }

    /// At least `count` bytes (the same memory until a larger size is asked for).
    func buffer(_ count: Int) -> UnsafeMutableRawBufferPointer {
        if storage.count < count {
            storage.deallocate()
            storage = .allocate(byteCount: max(count, 1 << 16), alignment: 16)
        }
        return storage
    }
}

/// The plaintext of the last group decompressed, kept while its members are read.
final class GroupScratch {
    private var buffer = UnsafeMutableRawBufferPointer(start: nil, count: 0)
    private var key: FrameKey?
    private var length = 0

    deinit { buffer.deallocate() }

    /// The group's plaintext (checked against the size its frame declares), from
    /// the previous call when it was the same group.
    /// True when the last group decompressed is `group` (its frame need not be read).
    func holds(_ group: FrameKey) -> Bool { key == group }

    /// `hexPacked`: the frame holds the group's hex-packed form (encoding 4),
    /// unpacked after decompression.
    func decompress(_ group: FrameKey, frame: UnsafeRawBufferPointer,
                    decompressor: ZstdDecompressor, hexPacked: Bool = false) throws -> UnsafeRawBufferPointer {
        if key == group {
            return UnsafeRawBufferPointer(rebasing: buffer[0..<length])
        }
        key = nil
        let size: Int
        if hexPacked {
            let packed = try decompressFrame(frame, into: packedScratch, decompressor: decompressor)
            guard let plain = HexPacking.plaintextLength(packed), plain <= PackFormat.maxGroupLength else {
                throw DedupError.compression("the group's hex-packed form does not declare a plausible size")
            }
            reserve(plain)
            do {
                size = try HexPacking.unpack(packed, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<plain]))
            } catch let e as HexPackingError {
                throw DedupError.compression("hex-packed form: \(e.description)")
            }
        } else {
            guard let declared = ZstdDecompressor.contentSize(frame), declared <= PackFormat.maxGroupLength else {
                throw DedupError.compression("the group's zstd frame does not declare a plausible size")
            }
            reserve(declared)
            let n = try decompressor.decompress(
                frame, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<declared]))
            guard n == declared else {
                throw DedupError.compression("the group decompressed to \(n) bytes, its frame says \(declared)")
            }
            size = declared
        }
        key = group
        length = size
        return UnsafeRawBufferPointer(rebasing: buffer[0..<size])
    }

    /// The plaintext length of the group decoded last (its members' span, dead ones included).
    var plaintextLength: Int { length }

    /// A single chunk's frame of its hex-packed form (encoding 3), decoded into `target`.
    func unpackSingle(_ frame: UnsafeRawBufferPointer, into target: UnsafeMutableRawBufferPointer,
                      decompressor: ZstdDecompressor) throws -> Int {
        let packed = try decompressFrame(frame, into: packedScratch, decompressor: decompressor)
        do {
            return try HexPacking.unpack(packed, into: target)
        } catch let e as HexPackingError {
            throw DedupError.compression("hex-packed form: \(e.description)")
        }
    }

    /// Where a hex-packed frame is decompressed before it is unpacked.
    private let packedScratch = ScratchBuffer()

    private func reserve(_ size: Int) {
        if size > buffer.count {
            buffer.deallocate()
            buffer = .allocate(byteCount: size, alignment: 16)
        }
    }

    private func decompressFrame(_ frame: UnsafeRawBufferPointer, into scratch: ScratchBuffer,
                                 decompressor: ZstdDecompressor) throws -> UnsafeRawBufferPointer {
        guard let size = ZstdDecompressor.contentSize(frame),
            size <= HexPacking.bound(PackFormat.maxGroupLength)
        else {
            throw DedupError.compression("the zstd frame does not declare a plausible size")
        }
        let out = scratch.buffer(size)
        let n = try decompressor.decompress(frame, into: UnsafeMutableRawBufferPointer(rebasing: out[0..<size]))
        guard n == size else { throw DedupError.compression("the frame decompressed to \(n) bytes, it says \(size)") }
        return UnsafeRawBufferPointer(rebasing: out[0..<size])
    }
}

