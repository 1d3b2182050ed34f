import Foundation

/// A pack's name: 16 random bytes, written as 32 hex digits.
public struct PackID: Hashable, Sendable, CustomStringConvertible {
    public var hi: UInt64, lo: UInt64

    public init(hi: UInt64, lo: UInt64) { self.hi = hi; self.lo = lo }

    public static func random() -> PackID {
        let b = SecureRandom.bytes(16)
        var r = BinaryReader(b)
        // 16 bytes are always there.
        let hi = (try? r.u64()) ?? 0, lo = (try? r.u64()) ?? 0
        return PackID(hi: hi, lo: lo)
    }

    public init?(hex: String) {
        guard hex.utf8.count == 32, let hi = UInt64(hex.prefix(16), radix: 16),
              let lo = UInt64(hex.suffix(16), radix: 16) else { return nil }
        self.init(hi: hi, lo: lo)
    }

    public var hex: String {
        func pad(_ v: UInt64) -> String {
            let s = String(v, radix: 16)
            return String(repeating: "0", count: 16 - s.count) + s
        }
        return pad(hi) + pad(lo)
    }

    public var description: String { hex }

    /// Object key: packs/<first two hex digits>/<id>.pack, so no folder grows huge.
    public var key: String { "packs/\(hex.prefix(2))/\(hex).pack" }

    /// The pack named by an object key, or nil for anything else under packs/.
    public init?(key: String) {
        guard key.hasPrefix("packs/"), key.hasSuffix(".pack") else { return nil }
        let name = FileIO.lastComponent(key)
        self.init(hex: String(name.dropLast(5)))
    }
}

/// How a chunk's bytes are stored in a pack.
public enum ChunkEncoding: UInt8, Sendable {
    /// The plaintext as is (compression did not make it smaller).
    case raw = 0
    /// One zstd frame.
    case zstd = 1
    /// A member of a group: one zstd frame holds the plaintexts of several
    /// consecutive chunks, so that zstd sees more than one chunk at a time.
    case zstdGroup = 2
    /// One zstd frame of the chunk's hex-packed form (`HexPacking`: runs of hex
    /// digits stored as the bytes they spell).
    case hexZstd = 3
    /// A member of a group whose frame holds the hex-packed form of the members'
    /// plaintexts.
    case hexZstdGroup = 4
    /// One zstd frame compressed against another chunk's plaintext, its base
    /// (zstd's prefix): what a chunk that differs from its base in a few places
    /// costs. The base is named in the pack's trailer (`ChunkLocation.base`) and
    /// may be a delta itself, up to `DeltaFormat.maxChainLength` chunks deep.
    case zstdDelta = 5

    /// The members of one frame (2 and 4).
    public var isGroup: Bool { self == .zstdGroup || self == .hexZstdGroup }
    /// The frame's content is hex-packed (3 and 4).
    public var isHexPacked: Bool { self == .hexZstd || self == .hexZstdGroup }
}

/// Where a chunk lives: what the index maps a chunk id to.
public struct ChunkLocation: Equatable, Sendable {
    public var pack: PackID
    /// Offset of the chunk's entry header in the pack.
    public var offset: UInt64
    public var rawLength: UInt32
    public var storedLength: UInt32
    public var encoding: UInt8
    public var flags: UInt8
    /// For a group member: where its plaintext starts in the group's (else 0).
    public var groupOffset: UInt32
    /// For a delta (encoding 5): the chunk whose plaintext it was compressed
    /// against (in an encrypted repository a keyed id, like every chunk id).
    public var base: ChunkID?

    public init(pack: PackID, offset: UInt64, rawLength: UInt32, storedLength: UInt32, encoding: UInt8,
                flags: UInt8 = 0, groupOffset: UInt32 = 0, base: ChunkID? = nil) {
        self.pack = pack; self.offset = offset; self.rawLength = rawLength
        self.storedLength = storedLength; self.encoding = encoding; self.flags = flags
        self.groupOffset = groupOffset; self.base = base
    }

    /// True for a delta against another chunk (encoding 5).
    public var isDelta: Bool { encoding == ChunkEncoding.zstdDelta.rawValue }

    /// True for a member of a compression group.
    public var isGroupMember: Bool { ChunkEncoding(rawValue: encoding)?.isGroup ?? false }

    /// An encrypted entry's location once its box is opened: the payload is 28
    /// bytes shorter and carries no flags.
    var unsealed: ChunkLocation {
        var l = self
        l.storedLength &-= UInt32(RepositoryCipher.overhead)
        l.flags = 0
        return l
    }

    /// The stored entry this location reads: one per chunk, shared by a group's members.
    public var frame: FrameKey { FrameKey(pack: pack, offset: offset, storedLength: storedLength) }
}

/// Names one stored entry of a pack (a chunk's, or a whole group's frame): what
/// readers key on to read or decompress a group once for a run of its members.
public struct FrameKey: Hashable, Sendable {
    public var pack: PackID
    public var offset: UInt64
    public var storedLength: UInt32
}

/// The fixed layout of pack files, format version 1 (docs/FORMAT.md).
public enum PackFormat {
    public static let headerMagic: [UInt8] = Array("DBBPACK\0".utf8)
    public static let footerMagic: [UInt8] = Array("DBBPEND\0".utf8)
    public static let version: UInt16 = 1
    public static let headerSize = 16
    public static let entryHeaderSize = 48
    public static let trailerEntrySize = 56
    public static let footerSize = 56
    /// Readers refuse groups whose plaintext is larger (writers stay far below).
    public static let maxGroupLength = 16 << 20
    /// Writers close a group once its plaintext reaches this size.
    public static let groupTarget = 1 << 20
    /// Header flags bit 0, entry flags bit 0: sealed with AES-256-GCM.
    public static let encryptedFlag: UInt16 = 1

    /// Bytes one entry takes in the data area: its header and its payload
    /// (sealed: 28 bytes more).
    public static func entrySize(payload: Int, encrypted: Bool) -> Int64 {
        Int64(entryHeaderSize + payload + (encrypted ? RepositoryCipher.overhead : 0))
    }

    /// Bytes `finish` adds after the data area: the trailer for `entries`
    /// entries of which `deltas` name a base (sealed: 28 bytes more) and the footer.
    public static func closingSize(entries: Int, deltas: Int = 0, encrypted: Bool) -> Int64 {
        let references = deltas == 0 ? 0 : 4 + deltas * referenceSize
        return Int64(8 + entries * trailerEntrySize + references + (encrypted ? RepositoryCipher.overhead : 0)
            + footerSize)
    }

    /// Trailer versions: 0 lists entries only; 1 adds the bases of its deltas
    /// after them (a u32 count, then per delta its entry's index u32 and the
    /// base's id), written only by packs that hold a delta.
    public static let trailerWithBases: UInt32 = 1
    public static let referenceSize = 4 + 32
}

/// The bounds of delta encoding (docs/FORMAT.md, encoding 5).
public enum DeltaFormat {
    /// A delta's base may itself be a delta, down to a chunk stored on its own:
    /// at most this many deltas in a row, so that a restore reads at most this
    /// many entries besides the chunk's own (and decodes as many frames, each
    /// mostly long matches, at close to memory speed).
    public static let maxChainLength = 4
}

/// One entry of a pack's trailer.
public struct PackEntry: Equatable, Sendable {
    public var id: ChunkID
    public var location: ChunkLocation
}

/// Writes one pack, streaming: chunks go to the object as they come; only the
/// trailer (56 bytes a chunk) is kept in memory until `finish`.
public final class PackWriter {
    public let id: PackID
    private let object: ObjectWriter
    private var entries: [PackEntry] = []
    private var buffer = [UInt8]()
    private let flushThreshold = 1 << 20
    public private(set) var size: UInt64 = 0
    public var count: Int { entries.count }

    /// Seals every payload and the trailer (an encrypted repository's packs).
    private let cipher: RepositoryCipher?
    private let sealScratch = ScratchBuffer()

    public init(backend: Backend, cipher: RepositoryCipher? = nil) throws {
        id = PackID.random()
        self.cipher = cipher
        object = try backend.create(id.key, ifAbsent: true)
        var header = BinaryWriter(capacity: PackFormat.headerSize)
        header.append(PackFormat.headerMagic)
        header.append(PackFormat.version)
        header.append(UInt16(cipher == nil ? 0 : PackFormat.encryptedFlag))
        header.append(UInt32(0))
        buffer.reserveCapacity(flushThreshold + 64)
        try append(header.bytes[...])
    }

    /// Appends a chunk; `payload` is its stored form (`encoding` says which).
    @discardableResult
    public func add(
        id chunk: ChunkID, rawLength: Int, encoding: ChunkEncoding, payload: UnsafeRawBufferPointer,
        base: ChunkID? = nil
    ) throws -> ChunkLocation {
        guard (encoding == .zstdDelta) == (base != nil) else {
            throw DedupError.invalidArgument("a delta needs its base, and only a delta has one")
        }
        let (offset, stored) = try appendEntry(id: chunk, rawLength: rawLength, encoding: encoding, payload: payload)
        let location = ChunkLocation(pack: id, offset: offset, rawLength: UInt32(rawLength),
                                     storedLength: UInt32(stored), encoding: encoding.rawValue, flags: entryFlags,
                                     base: base)
        entries.append(PackEntry(id: chunk, location: location))
        return location
    }

    /// Appends a group: `payload` is one zstd frame of the members' plaintexts,
    /// concatenated in order. One entry header (the first member's id, the
    /// group's plaintext length) precedes it; the trailer lists every member.
    public func addGroup(
        members: [(id: ChunkID, rawLength: Int)], payload: UnsafeRawBufferPointer,
        encoding: ChunkEncoding = .zstdGroup
    ) throws {
        guard let first = members.first else { return }
        let total = members.reduce(0) { $0 + $1.rawLength }
        guard total <= PackFormat.maxGroupLength else {
            throw DedupError.packCorrupt(
                pack: id.hex,
                detail: "a group of \(total) bytes exceeds the \(PackFormat.maxGroupLength) readers accept")
        }
        guard encoding.isGroup else { throw DedupError.invalidArgument("a group stored as encoding \(encoding)") }
        let (offset, stored) = try appendEntry(id: first.id, rawLength: total, encoding: encoding, payload: payload)
        var inGroup = 0
        for m in members {
            entries.append(PackEntry(id: m.id, location: ChunkLocation(
                pack: id, offset: offset, rawLength: UInt32(m.rawLength), storedLength: UInt32(stored),
                encoding: encoding.rawValue, flags: entryFlags, groupOffset: UInt32(inGroup))))
            inGroup += m.rawLength
        }
    }

    /// Appends a group's frame as stored, listing the members given: the live
    /// members of a group some of whose members are dead (gc keeps the frame when
    /// recompressing them would not make it smaller). `headerID` and `totalLength`
    /// are the frame's entry header: the member at offset 0 (any member when that
    /// one is gone) and the whole frame's plaintext length.
    public func addFrame(
        headerID: ChunkID, totalLength: Int, members: [(id: ChunkID, rawLength: Int, groupOffset: Int)],
        payload: UnsafeRawBufferPointer, encoding: ChunkEncoding = .zstdGroup
    ) throws {
        guard totalLength <= PackFormat.maxGroupLength,
            members.allSatisfy({ $0.groupOffset >= 0 && $0.groupOffset + $0.rawLength <= totalLength })
        else {
            throw DedupError.packCorrupt(
                pack: id.hex, detail: "a group frame of \(totalLength) bytes with members outside it")
        }
        guard encoding.isGroup else { throw DedupError.invalidArgument("a group stored as encoding \(encoding)") }
        let (offset, stored) = try appendEntry(
            id: headerID, rawLength: totalLength, encoding: encoding, payload: payload)
        for m in members {
            entries.append(PackEntry(id: m.id, location: ChunkLocation(
                pack: id, offset: offset, rawLength: UInt32(m.rawLength), storedLength: UInt32(stored),
                encoding: encoding.rawValue, flags: entryFlags, groupOffset: UInt32(m.groupOffset))))
        }
    }

    private var entryFlags: UInt8 { cipher == nil ? 0 : UInt8(PackFormat.encryptedFlag) }

    /// Writes one entry (48-byte header, then the payload, sealed when the pack
    /// is encrypted) and returns its offset and stored length.
    private func appendEntry(id chunk: ChunkID, rawLength: Int, encoding: ChunkEncoding,
                             payload plainPayload: UnsafeRawBufferPointer) throws -> (UInt64, Int) {
        let offset = size
        var payload = plainPayload
        if let cipher {
            let box = sealScratch.buffer(plainPayload.count + RepositoryCipher.overhead)
            let n = try cipher.seal(
                plainPayload, aad: RepositoryCipher.entryAAD(pack: id, offset: offset, encoding: encoding.rawValue),
                into: box)
            payload = UnsafeRawBufferPointer(rebasing: box[0..<n])
        }
        var h = BinaryWriter(capacity: PackFormat.entryHeaderSize)
        h.append(chunk)
        h.append(UInt32(rawLength))
        h.append(UInt32(payload.count))
        h.append(encoding.rawValue)
        h.append(entryFlags)
        h.zeros(6)
        try append(h.bytes[...])
        if payload.count >= flushThreshold {
            try flush()
            try object.write(payload)
            size += UInt64(payload.count)
        } else {
            if buffer.count + payload.count > flushThreshold { try flush() }
            buffer.append(contentsOf: payload)
            size += UInt64(payload.count)
        }
        return (offset, payload.count)
    }

    private func append(_ bytes: ArraySlice<UInt8>) throws {
        if buffer.count + bytes.count > flushThreshold { try flush() }
        buffer.append(contentsOf: bytes)
        size += UInt64(bytes.count)
    }

    private func flush() throws {
        guard !buffer.isEmpty else { return }
        try object.write(buffer)
        buffer.removeAll(keepingCapacity: true)
    }

    /// Writes the trailer and footer, makes the pack durable and visible, and
    /// returns its entries for the index. `size` is then the whole pack's size.
    public func finish() throws -> [PackEntry] {
        let trailerOffset = size
        let deltas = entries.indices.filter { entries[$0].location.base != nil }
        var t = BinaryWriter(capacity: 12 + entries.count * PackFormat.trailerEntrySize
            + deltas.count * PackFormat.referenceSize)
        t.append(UInt32(entries.count))
        t.append(deltas.isEmpty ? UInt32(0) : PackFormat.trailerWithBases)
        for e in entries {
            t.append(e.id)
            t.append(e.location.offset)
            t.append(e.location.rawLength)
            t.append(e.location.storedLength)
            t.append(e.location.encoding)
            t.append(e.location.flags)
            t.append(e.location.groupOffset)
            t.zeros(2)
        }
        if !deltas.isEmpty {
            t.append(UInt32(deltas.count))
            for k in deltas {
                t.append(UInt32(k))
                if let base = entries[k].location.base { t.append(base) }
            }
        }
        // Encrypted: the trailer is sealed too, bound to this pack.
        let trailer = try cipher.map { try $0.seal(t.bytes, aad: Self.trailerAAD(id)) } ?? t.bytes
        let digest = SHA256Hasher.hash(trailer)
        try append(trailer[...])
        var f = BinaryWriter(capacity: PackFormat.footerSize)
        f.append(trailerOffset)
        f.append(UInt64(trailer.count))
        f.append(digest)
        f.append(PackFormat.footerMagic)
        try append(f.bytes[...])
        try flush()
        FaultInjection.crashPoint("pack.before-commit")
        do {
            try object.commit()
        } catch let e as DedupError where e.storageFailure == .alreadyExists {
            throw DedupError.packCorrupt(pack: id.hex, detail: "a pack with this random name already exists")
        }
        return entries
    }

    public func abort() { object.abort() }

    static func trailerAAD(_ id: PackID) -> [UInt8] {
        var w = BinaryWriter(capacity: 24)
        w.append(Array("trailer\0".utf8))
        w.append(id.hi); w.append(id.lo)
        return w.bytes
    }
}

/// Reads a pack's trailer and its chunks.
public final class PackReader {
    public let id: PackID
    private let object: ObjectReader
    private let cipher: RepositoryCipher?

    /// `cipher`: the repository's, when it is encrypted (its packs must all be).
    public init(backend: Backend, id: PackID, cipher: RepositoryCipher? = nil) throws {
        self.id = id
        self.cipher = cipher
        object = try backend.openReader(id.key)
    }

    public var size: Int64 { object.size }

    /// The trailer's entries, after checking the footer, the trailer checksum and
    /// that every entry lies inside the pack.
    public func entries() throws -> [PackEntry] {
        let size = object.size
        guard size >= Int64(PackFormat.headerSize + PackFormat.footerSize) else {
            throw DedupError.packCorrupt(
                pack: id.hex, detail: "only \(size) bytes, shorter than header and footer: truncated")
        }
        let header = try object.read(at: 0, count: PackFormat.headerSize)
        guard Array(header[0..<8]) == PackFormat.headerMagic else {
            throw DedupError.packCorrupt(pack: id.hex, detail: "bad header magic: not a dbbackup pack")
        }
        var hr = BinaryReader(header, at: 8)
        let version = (try? hr.u16()) ?? 0
        guard version == PackFormat.version else {
            throw DedupError.packCorrupt(pack: id.hex, detail: "pack format version \(version) is not supported")
        }
        let headerFlags = (try? hr.u16()) ?? 0
        guard headerFlags == (cipher == nil ? 0 : PackFormat.encryptedFlag) else {
            throw DedupError.packCorrupt(
                pack: id.hex,
                detail: cipher == nil
                    ? "it is encrypted (flags \(headerFlags)) in a repository that is not"
                    : "it is not encrypted, in an encrypted repository")
        }
        let footer = try object.read(at: size - Int64(PackFormat.footerSize), count: PackFormat.footerSize)
        guard Array(footer[48..<56]) == PackFormat.footerMagic else {
            throw DedupError.packCorrupt(pack: id.hex, detail: "no footer at the end: truncated or damaged")
        }
        var fr = BinaryReader(footer)
        do {
            let trailerOffset = try fr.u64()
            let trailerLength = try fr.u64()
            let digest = try fr.id()
            let (end, overflow) = trailerOffset.addingReportingOverflow(trailerLength)
            guard !overflow, trailerOffset >= UInt64(PackFormat.headerSize),
                  trailerLength >= 8, trailerLength <= UInt64(Int32.max),
                  end == UInt64(size) - UInt64(PackFormat.footerSize) else {
                throw DedupError.packCorrupt(pack: id.hex, detail: "footer points outside the pack")
            }
            let stored = try object.read(at: Int64(trailerOffset), count: Int(trailerLength))
            guard SHA256Hasher.hash(stored) == digest else {
                throw DedupError.packCorrupt(pack: id.hex, detail: "trailer checksum mismatch")
            }
            let trailer: [UInt8]
            do {
                trailer = try cipher.map { try $0.open(stored, aad: PackWriter.trailerAAD(id)) } ?? stored
            } catch DedupError.authenticationFailed(let detail) {
                throw DedupError.packCorrupt(pack: id.hex, detail: "its trailer does not decrypt: \(detail)")
            }
            var r = BinaryReader(trailer)
            let count = Int(try r.u32())
            let trailerVersion = try r.u32()
            guard trailerVersion <= PackFormat.trailerWithBases else {
                throw DedupError.packCorrupt(
                    pack: id.hex, detail: "trailer version \(trailerVersion) is not known (written by a newer dbbackup?)")
            }
            let entryBytes = count * PackFormat.trailerEntrySize
            guard trailer.count >= 8,
                trailerVersion == 0 ? entryBytes == r.remaining : entryBytes + 4 <= r.remaining
            else {
                throw DedupError.packCorrupt(pack: id.hex, detail: "trailer length does not match its entry count")
            }
            var out = [PackEntry]()
            out.reserveCapacity(count)
            for _ in 0..<count {
                let chunk = try r.id()
                let offset = try r.u64()
                let rawLength = try r.u32()
                let storedLength = try r.u32()
                let encoding = try r.u8()
                let flags = try r.u8()
                let groupOffset = try r.u32()
                try r.skip(2)
                guard offset < trailerOffset,
                    offset + UInt64(PackFormat.entryHeaderSize) + UInt64(storedLength) <= trailerOffset
                else {
                    throw DedupError.packCorrupt(
                        pack: id.hex, detail: "entry for chunk \(chunk.shortHex) lies outside the data area")
                }
                let grouped = ChunkEncoding(rawValue: encoding)?.isGroup ?? false
                guard
                    grouped
                        ? UInt64(groupOffset) + UInt64(rawLength) <= UInt64(PackFormat.maxGroupLength)
                        : groupOffset == 0
                else {
                    throw DedupError.packCorrupt(
                        pack: id.hex, detail: "entry for chunk \(chunk.shortHex) has a bad group offset")
                }
                out.append(PackEntry(id: chunk, location: ChunkLocation(
                    pack: id, offset: offset, rawLength: rawLength, storedLength: storedLength,
                    encoding: encoding, flags: flags, groupOffset: groupOffset)))
            }
            if trailerVersion == PackFormat.trailerWithBases {
                let references = Int(try r.u32())
                guard references * PackFormat.referenceSize == r.remaining else {
                    throw DedupError.packCorrupt(
                        pack: id.hex, detail: "trailer length does not match its count of delta bases")
                }
                for _ in 0..<references {
                    let k = Int(try r.u32())
                    let base = try r.id()
                    guard k < out.count, out[k].location.isDelta, out[k].location.base == nil, base != out[k].id else {
                        throw DedupError.packCorrupt(pack: id.hex, detail: "a delta base names no delta of the pack")
                    }
                    out[k].location.base = base
                }
            }
            if let orphan = out.first(where: { $0.location.isDelta && $0.location.base == nil }) {
                throw DedupError.packCorrupt(
                    pack: id.hex, detail: "delta chunk \(orphan.id.shortHex) has no base in the trailer")
            }
            return out
        } catch is BinaryReader.OutOfBounds {
            throw DedupError.packCorrupt(pack: id.hex, detail: "trailer is cut short")
        }
    }

    /// Reads a chunk's entry, header and stored bytes in one ranged read, into
    /// `buffer` (at least `entryHeaderSize + storedLength` long), checks that the
    /// header agrees with the index, and returns the stored bytes (in `buffer`).
    @discardableResult
    public func readStored(_ location: ChunkLocation, id chunk: ChunkID,
                           into buffer: UnsafeMutableRawBufferPointer) throws -> UnsafeRawBufferPointer {
        let headerSize = PackFormat.entryHeaderSize
        let total = headerSize + Int(location.storedLength)
        guard let start = Int64(exactly: location.offset), start <= object.size - Int64(total) else {
            throw DedupError.chunkCorrupt(
                chunk: chunk.hex, pack: id.hex, manifest: "",
                detail: "the pack is shorter than the index says (truncated)")
        }
        guard buffer.count >= total else {
            throw DedupError.chunkCorrupt(
                chunk: chunk.hex, pack: id.hex, manifest: "",
                detail: "its entry of \(total) bytes exceeds the read buffer")
        }
        let entry = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<total])
        try object.read(at: start, into: entry)
        // The header in place: id [32] | raw length u32 | stored length u32 | encoding u8 | flags u8.
        guard let h = UnsafeRawPointer(entry.baseAddress) else { throw DedupError.shortRead(path: id.hex) }
        let storedID = ChunkID(bytes: h)
        let rawLength = UInt32(littleEndian: h.loadUnaligned(fromByteOffset: 32, as: UInt32.self))
        let storedLength = UInt32(littleEndian: h.loadUnaligned(fromByteOffset: 36, as: UInt32.self))
        let encoding = h.load(fromByteOffset: 40, as: UInt8.self)
        let flags = h.load(fromByteOffset: 41, as: UInt8.self)
        // A group's header names its first member and the whole group's plaintext.
        let agrees = location.isGroupMember
            ? UInt64(location.groupOffset) + UInt64(location.rawLength) <= UInt64(rawLength)
                && (location.groupOffset != 0 || storedID == chunk)
            : storedID == chunk && rawLength == location.rawLength
        guard agrees, storedLength == location.storedLength,
            encoding == location.encoding, flags == location.flags
        else {
            throw DedupError.chunkCorrupt(
                chunk: chunk.hex, pack: id.hex, manifest: "",
                detail: "entry header at offset \(location.offset) does not match the index")
        }
        return UnsafeRawBufferPointer(rebasing: entry[headerSize..<total])
    }
}
