/// Little-endian encoding of the fixed-layout records in packs and chunk lists.
struct BinaryWriter {
    var bytes: [UInt8] = []

    init(capacity: Int = 0) { bytes.reserveCapacity(capacity) }

    mutating func append(_ v: UInt8) { bytes.append(v) }
    mutating func append(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func append(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func append(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func append(_ id: ChunkID) { bytes.append(contentsOf: id.bytes) }
    mutating func append(_ raw: [UInt8]) { bytes.append(contentsOf: raw) }
    mutating func zeros(_ n: Int) { bytes.append(contentsOf: repeatElement(0, count: n)) }
}

/// Reads the records `BinaryWriter` writes; every read is bounds-checked.
struct BinaryReader {
    let bytes: [UInt8]
    var position: Int

    init(_ bytes: [UInt8], at position: Int = 0) {
        self.bytes = bytes
        self.position = position
    }

    var remaining: Int { bytes.count - position }

    struct OutOfBounds: Error {}

    mutating func u8() throws -> UInt8 {
        guard remaining >= 1 else { throw OutOfBounds() }
        defer { position += 1 }
        return bytes[position]
    }

    mutating func u16() throws -> UInt16 { UInt16(truncatingIfNeeded: try fixed(2)) }
    mutating func u32() throws -> UInt32 { UInt32(truncatingIfNeeded: try fixed(4)) }
    mutating func u64() throws -> UInt64 { try fixed(8) }

    private mutating func fixed(_ n: Int) throws -> UInt64 {
        guard remaining >= n else { throw OutOfBounds() }
        var v: UInt64 = 0
        for i in 0..<n { v |= UInt64(bytes[position + i]) << UInt64(8 * i) }
        position += n
        return v
    }

    mutating func id() throws -> ChunkID {
        guard remaining >= 32 else { throw OutOfBounds() }
        defer { position += 32 }
        return ChunkID(bytes[position..<(position + 32)])
    }

    mutating func raw(_ n: Int) throws -> [UInt8] {
        guard n >= 0, remaining >= n else { throw OutOfBounds() }
        defer { position += n }
        return Array(bytes[position..<(position + n)])
    }

    mutating func skip(_ n: Int) throws {
        guard remaining >= n else { throw OutOfBounds() }
        position += n
    }
}
