import CHexCodec
import Foundation

/// The reversible transform of dump text whose BLOBs are written in hex
/// (PostgreSQL's bytea as `\x0a1b...` in COPY and INSERT, mariadb-dump's
/// `--hex-blob` as `0x0A1B...`): runs of hex digits are stored as the bytes they
/// spell, everything else as it is. What a backup of such a dump then compresses
/// is half as long, and for random BLOBs (images, compressed files) nothing is
/// left for zstd to do but copy. Decoding writes the digits back in the run's case:
/// the plaintext comes back byte for byte, and its SHA-256 is checked as always.
///
/// Packed form (docs/FORMAT.md, encodings 3 and 4): `"HX"`, version u8 = 1, a
/// reserved u8 = 0, the plaintext length u32; then alternately a literal and a
/// run, ending with a literal: a literal is a u32 L and L bytes as they are; a
/// run is a u32 N << 1 | upper and N bytes, each written out as two hex digits,
/// lowercase or, with `upper`, uppercase (all integers little-endian).
enum HexPacking {
    static let headerSize = 8
    /// Shorter runs stay literal: the two lengths would cost more than they save.
    static let minimumRunDigits = 32

    /// The packed form of `input` into `output`, which must hold `bound(input.count)`
    /// bytes; nil when runs of hex cover less than a quarter of the input (the
    /// transform would not pay).
    static func pack(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) -> Int? {
        let total = input.count
        guard total <= Int(UInt32.max), output.count >= bound(total), let out = output.baseAddress,
            let inp = input.baseAddress?.assumingMemoryBound(to: UInt8.self)
        else { return nil }
        let classes = HexTables.classes, pairs = HexTables.pairValues
        var w = headerSize
        var literalStart = 0  // the pending literal: literalStart..<(the next run)
        var covered = 0
        var i = 0
        while i < total {
            if classes[Int(inp[i])] == 0 {
                i += 1
                continue
            }
            // A run, two digits at a time through one table (value, classes,
            // validity), decoded straight to where it goes if it is long enough:
            // after the pending literal and the two lengths. Its letters share one
            // case: a pair that adds the other case, or is no pair of digits, ends it.
            let start = i
            let runOut = out + w + 8 + (start - literalStart)
            // Sixteen pairs at a time while whole blocks are digits of one case,
            // then a pair at a time to find where the run ends.
            var cases: UInt32 = 0
            var k = dbbackup_hex_pack_blocks(
                inp + i, (total - i) / 2, runOut.assumingMemoryBound(to: UInt8.self), &cases)
            i += 2 * k
            var seen = UInt16(truncatingIfNeeded: cases) << 8
            while i + 1 < total {
                let v = pairs[Int(UInt16(inp[i]) << 8 | UInt16(inp[i + 1]))]
                let next = seen | v
                if v & HexTables.validPair == 0 || next & HexTables.bothCases == HexTables.bothCases { break }
                runOut.storeBytes(of: UInt8(truncatingIfNeeded: v), toByteOffset: k, as: UInt8.self)
                seen = next
                k += 1
                i += 2
            }
            guard 2 * k >= minimumRunDigits else {
                i = start + max(1, 2 * k)  // stays in the literal
                continue
            }
            let literal = start - literalStart
            out.storeBytes(of: UInt32(literal).littleEndian, toByteOffset: w, as: UInt32.self)
            (out + w + 4).copyMemory(from: inp + literalStart, byteCount: literal)
            let upper: UInt32 = seen & HexTables.upperCase != 0 ? 1 : 0
            out.storeBytes(of: (UInt32(k) << 1 | upper).littleEndian, toByteOffset: w + 4 + literal, as: UInt32.self)
            w += 8 + literal + k
            covered += 2 * k
            literalStart = start + 2 * k  // an odd last digit stays in the next literal
            i = literalStart
        }
        guard covered > 0, covered * 4 >= total else { return nil }
        let tail = total - literalStart
        out.storeBytes(of: UInt32(tail).littleEndian, toByteOffset: w, as: UInt32.self)
        (out + w + 4).copyMemory(from: inp + literalStart, byteCount: tail)
        w += 4 + tail
        out.storeBytes(of: UInt8(ascii: "H"), toByteOffset: 0, as: UInt8.self)
        out.storeBytes(of: UInt8(ascii: "X"), toByteOffset: 1, as: UInt8.self)
        out.storeBytes(of: UInt8(1), toByteOffset: 2, as: UInt8.self)
        out.storeBytes(of: UInt8(0), toByteOffset: 3, as: UInt8.self)
        out.storeBytes(of: UInt32(total).littleEndian, toByteOffset: 4, as: UInt32.self)
        return w
    }

    /// Room `pack` may need for `count` bytes of input: the header, the input and
    /// the last literal's length (a run of at least 32 digits takes at most 8 + 16
    /// bytes for 32, so runs never make the form longer than their input).
    static func bound(_ count: Int) -> Int { headerSize + count + 20 }

    /// The plaintext length a packed form declares, or nil when it is not one.
    static func plaintextLength(_ packed: UnsafeRawBufferPointer) -> Int? {
        guard packed.count >= headerSize, packed[0] == UInt8(ascii: "H"), packed[1] == UInt8(ascii: "X"),
            packed[2] == 1, packed[3] == 0
        else { return nil }
        return Int(UInt32(littleEndian: packed.loadUnaligned(fromByteOffset: 4, as: UInt32.self)))
    }

    /// Writes the plaintext of `packed` into `output` (exactly its declared
    /// length) and returns that length; throws on anything malformed.
    static func unpack(_ packed: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) throws -> Int {
        guard let total = plaintextLength(packed) else { throw HexPackingError("not a hex-packed form") }
        guard output.count >= total, let out = output.baseAddress, let src = packed.baseAddress else {
            throw HexPackingError("declares \(total) bytes, more than its chunk or group")
        }
        func u32(_ at: Int) throws -> Int {
            guard at + 4 <= packed.count else { throw HexPackingError("a length is cut short") }
            return Int(UInt32(littleEndian: src.loadUnaligned(fromByteOffset: at, as: UInt32.self)))
        }
        var r = headerSize
        var w = 0
        while true {
            // A literal, then (unless it was the last) a run.
            let literal = try u32(r)
            r += 4
            guard literal <= total - w, literal <= packed.count - r else {
                throw HexPackingError("a literal runs past the end")
            }
            (out + w).copyMemory(from: src + r, byteCount: literal)
            w += literal
            r += literal
            if r == packed.count { break }
            let run = try u32(r)
            r += 4
            let pairs = run >> 1
            guard pairs <= (total - w) / 2, pairs <= packed.count - r else {
                throw HexPackingError("a run of hex runs past the end")
            }
            let upper = run & 1 == 1
            let vectored = dbbackup_hex_unpack_blocks(
                (src + r).assumingMemoryBound(to: UInt8.self), pairs,
                (out + w).assumingMemoryBound(to: UInt8.self), upper ? 1 : 0)
            let table = upper ? HexTables.upperPairs : HexTables.lowerPairs
            for k in vectored..<pairs {
                let v = table[Int(src.load(fromByteOffset: r + k, as: UInt8.self))]
                out.storeBytes(of: v, toByteOffset: w + 2 * k, as: UInt16.self)
            }
            w += 2 * pairs
            r += pairs
        }
        guard w == total else { throw HexPackingError("decodes to \(w) bytes, it declares \(total)") }
        return total
    }
}

/// A packed form that does not decode: the chunk is reported corrupt with this.
struct HexPackingError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Lookup tables of the transform, behind stable pointers (no bounds checks).
enum HexTables {
    /// 0 not a hex digit, 1 a digit, 2 a lowercase letter a-f, 4 an uppercase one
    /// (bits, so that a run's classes can be or-ed together).
    nonisolated(unsafe) static let classes: UnsafePointer<UInt8> = table(256) { c in
        switch UInt8(c) {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): 1
        case UInt8(ascii: "a")...UInt8(ascii: "f"): 2
        case UInt8(ascii: "A")...UInt8(ascii: "F"): 4
        default: 0
        }
    }
    /// A digit's value (0 for what is not one).
    nonisolated(unsafe) static let values: UnsafePointer<UInt8> = table(256) { c in
        switch UInt8(c) {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): UInt8(c) - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): UInt8(c) - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): UInt8(c) - UInt8(ascii: "A") + 10
        default: 0
        }
    }
    /// For two characters (the first in the high byte): the byte they spell in
    /// the low 8 bits, the or of their classes in bits 8-10, and `validPair` when
    /// both are hex digits (else 0).
    nonisolated(unsafe) static let pairValues: UnsafePointer<UInt16> = {
        let p = UnsafeMutablePointer<UInt16>.allocate(capacity: 1 << 16)
        for a in 0..<256 {
            for b in 0..<256 {
                let ca = UInt16(classes[a]), cb = UInt16(classes[b])
                p[a << 8 | b] = ca == 0 || cb == 0
                    ? 0 : validPair | (ca | cb) << 8 | UInt16(values[a]) << 4 | UInt16(values[b])
            }
        }
        return UnsafePointer(p)
    }()
    static let validPair: UInt16 = 1 << 11
    static let upperCase: UInt16 = 4 << 8
    static let bothCases: UInt16 = 6 << 8

    /// A byte's two digits as they lie in memory (first digit first).
    nonisolated(unsafe) static let lowerPairs: UnsafePointer<UInt16> = pairs(Array("0123456789abcdef".utf8))
    nonisolated(unsafe) static let upperPairs: UnsafePointer<UInt16> = pairs(Array("0123456789ABCDEF".utf8))

    private static func table(_ n: Int, _ f: (Int) -> UInt8) -> UnsafePointer<UInt8> {
        let p = UnsafeMutablePointer<UInt8>.allocate(capacity: n)
        for i in 0..<n { p[i] = f(i) }
        return UnsafePointer(p)
    }

    private static func pairs(_ digits: [UInt8]) -> UnsafePointer<UInt16> {
        let p = UnsafeMutablePointer<UInt16>.allocate(capacity: 256)
        for b in 0..<256 {
            // Little-endian: the low byte is the first in memory.
            p[b] = UInt16(digits[b >> 4]) | UInt16(digits[b & 15]) << 8
        }
        return UnsafePointer(p)
    }
}
