import CZstd
import Foundation

/// Per-chunk zstd compression with one reused context (no allocation per chunk).
public final class ZstdCompressor {
    private let cctx: OpaquePointer
    public let level: Int32
    fileprivate var cctxForPrefix: OpaquePointer { cctx }

    /// A compressor for deltas: long-distance matching on, over a window of
    /// `windowLog` bits that holds a base and its chunk. Without it the fast
    /// levels' match finder prefers the nearest repeat of a short pattern
    /// (the row before, in a dump) to the long match into the base, and a delta
    /// of scattered updates costs ten times what it must.
    public convenience init(level: Int, longDistanceWindowLog windowLog: Int) throws {
        try self.init(level: level)
        ZSTD_CCtx_setParameter(cctx, ZSTD_c_enableLongDistanceMatching, 1)
        ZSTD_CCtx_setParameter(cctx, ZSTD_c_windowLog, Int32(windowLog))
        // Matches of at least 128 bytes (zstd's default is 64): on pgbench
        // nights the deltas are 7.5% smaller, on the other dumps measured the
        // same within 0.3% (docs/CHUNKING.md).
        ZSTD_CCtx_setParameter(cctx, ZSTD_c_ldmMinMatch, 128)
    }

    public init(level: Int) throws {
        guard let cctx = ZSTD_createCCtx() else { throw DedupError.compression("cannot allocate a zstd context") }
        self.cctx = cctx
        let lo = ZSTD_minCLevel(), hi = ZSTD_maxCLevel()
        guard level >= Int(lo), level <= Int(hi) else {
            ZSTD_freeCCtx(cctx)
            throw DedupError.invalidArgument("compression level \(level) is outside zstd's range \(lo)...\(hi)")
        }
        self.level = Int32(level)
        ZSTD_CCtx_setParameter(cctx, ZSTD_c_compressionLevel, self.level)
        // Each frame carries zstd's checksum of its content (XXH64, 4 bytes),
        // checked as it decompresses: a delta base decoded from one needs no
        // SHA-256 of its own to be known intact.
        ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 1)
        ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 1)
    }

    deinit { ZSTD_freeCCtx(cctx) }

    public static func bound(_ size: Int) -> Int { ZSTD_compressBound(size) }

    /// Compresses several pieces as one frame (their concatenation, without
    /// copying them together) into `output`, at least `bound(total)` bytes long.
    public func compress(pieces: [UnsafeRawBufferPointer], into output: UnsafeMutableRawBufferPointer) throws -> Int {
        let total = pieces.reduce(0) { $0 + $1.count }
        ZSTD_CCtx_reset(cctx, ZSTD_reset_session_only)
        ZSTD_CCtx_setPledgedSrcSize(cctx, UInt64(total))
        var out = ZSTD_outBuffer(dst: output.baseAddress, size: output.count, pos: 0)
        for (i, piece) in pieces.enumerated() {
            var inp = ZSTD_inBuffer(src: piece.baseAddress, size: piece.count, pos: 0)
            let last = i == pieces.count - 1
            while true {
                let left = ZSTD_compressStream2(cctx, &out, &inp, last ? ZSTD_e_end : ZSTD_e_continue)
                if ZSTD_isError(left) != 0 { throw DedupError.compression(String(cString: ZSTD_getErrorName(left))) }
                if last ? left == 0 : inp.pos == inp.size { break }
                if out.pos == out.size { throw DedupError.compression("output buffer too small for the group") }
            }
        }
        return out.pos
    }

    /// Compresses `input` into `output` (at least `bound(input.count)` bytes) and
    /// returns the compressed length.
    public func compress(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = ZSTD_compress2(cctx, output.baseAddress, output.count, input.baseAddress, input.count)
        if ZSTD_isError(n) != 0 {
            throw DedupError.compression(String(cString: ZSTD_getErrorName(n)))
        }
        return n
    }
}

extension ZstdCompressor {
    /// Compresses `input` against `prefix` (zstd's referenced prefix: matches may
    /// point into it, and a decoder needs the same bytes), into `output` of at
    /// least `bound(input.count)` bytes; returns the compressed length.
    public func compress(
        _ input: UnsafeRawBufferPointer, prefix: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer
    ) throws -> Int {
        ZSTD_CCtx_reset(cctxForPrefix, ZSTD_reset_session_only)
        let rc = ZSTD_CCtx_refPrefix(cctxForPrefix, prefix.baseAddress, prefix.count)
        if ZSTD_isError(rc) != 0 { throw DedupError.compression(String(cString: ZSTD_getErrorName(rc))) }
        // The prefix holds for this one frame only.
        return try compress(input, into: output)
    }
}

/// Per-chunk zstd decompression with one reused context.
public final class ZstdDecompressor {
    private let dctx: OpaquePointer

    public init() throws {
        guard let dctx = ZSTD_createDCtx() else { throw DedupError.compression("cannot allocate a zstd context") }
        self.dctx = dctx
    }

    deinit { ZSTD_freeDCtx(dctx) }

    /// The plaintext size a frame declares, or nil when it declares none or is not a frame.
    public static func contentSize(_ frame: UnsafeRawBufferPointer) -> Int? {
        let n = ZSTD_getFrameContentSize(frame.baseAddress, frame.count)
        // ZSTD_CONTENTSIZE_UNKNOWN and _ERROR are the two largest u64 values.
        guard n < UInt64.max - 1, n <= UInt64(Int.max) else { return nil }
        return Int(n)
    }

    /// True when `frame` carries zstd's content checksum (checked when it is decompressed).
    public static func carriesChecksum(_ frame: UnsafeRawBufferPointer) -> Bool {
        // RFC 8878: the magic number 0xFD2FB528 (little-endian), then the frame
        // header descriptor, whose bit 2 is the Content_Checksum_flag.
        guard frame.count >= 5, frame.loadUnaligned(as: UInt32.self) == UInt32(0xFD2F_B528).littleEndian else {
            return false
        }
        return frame[4] & 0x04 != 0
    }

    /// Decompresses a frame compressed against `prefix` (`ZstdCompressor.compress(_:prefix:into:)`).
    /// `checksum` false: the frame's content checksum is not checked (an inner
    /// link of a delta chain, whose errors the last link's checksum shows).
    public func decompress(
        _ input: UnsafeRawBufferPointer, prefix: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer,
        checksum: Bool = true
    ) throws -> Int {
        ZSTD_DCtx_reset(dctx, ZSTD_reset_session_only)
        let set = dbbackup_zstd_check_checksums(dctx, checksum ? 1 : 0)
        if ZSTD_isError(set) != 0 { throw DedupError.compression(String(cString: ZSTD_getErrorName(set))) }
        defer { if !checksum { dbbackup_zstd_check_checksums(dctx, 1) } }
        let rc = ZSTD_DCtx_refPrefix(dctx, prefix.baseAddress, prefix.count)
        if ZSTD_isError(rc) != 0 { throw DedupError.compression(String(cString: ZSTD_getErrorName(rc))) }
        var out = ZSTD_outBuffer(dst: output.baseAddress, size: output.count, pos: 0)
        var inp = ZSTD_inBuffer(src: input.baseAddress, size: input.count, pos: 0)
        let left = ZSTD_decompressStream(dctx, &out, &inp)
        if ZSTD_isError(left) != 0 {
            ZSTD_DCtx_reset(dctx, ZSTD_reset_session_and_parameters)
            throw DedupError.compression(String(cString: ZSTD_getErrorName(left)))
        }
        guard left == 0, inp.pos == inp.size else {
            ZSTD_DCtx_reset(dctx, ZSTD_reset_session_and_parameters)
            throw DedupError.compression("the delta frame is cut short or longer than its chunk")
        }
        return out.pos
    }

    /// Decompresses a whole frame whose plaintext must be exactly `output.count` bytes.
    public func decompress(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) throws -> Int {
        let n = ZSTD_decompressDCtx(dctx, output.baseAddress, output.count, input.baseAddress, input.count)
        if ZSTD_isError(n) != 0 {
            throw DedupError.compression(String(cString: ZSTD_getErrorName(n)))
        }
        return n
    }
}

/// A `ByteSource` that decompresses a zstd stream (.zst input of `--decompress-input`).
public struct ZstdStreamSource<Inner: ByteSource>: ByteSource {
    private final class State {
        let dstream: OpaquePointer
        let inBuffer: UnsafeMutableRawBufferPointer
        var inPos = 0
        var inEnd = 0
        var innerEOF = false
        var frameOpen = false
        init(dstream: OpaquePointer) {
            self.dstream = dstream
            inBuffer = .allocate(byteCount: ZSTD_DStreamInSize(), alignment: 16)
        }
        deinit { ZSTD_freeDStream(dstream); inBuffer.deallocate() }
    }

    private var inner: Inner
    private let state: State

    public init(_ inner: Inner) throws {
        guard let ds = ZSTD_createDStream() else { throw DedupError.compression("cannot allocate a zstd stream") }
        ZSTD_initDStream(ds)
        self.inner = inner
        self.state = State(dstream: ds)
    }

    public mutating func read(into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        var output = ZSTD_outBuffer(dst: buffer.baseAddress, size: buffer.count, pos: 0)
        while output.pos == 0 {
            if state.inPos == state.inEnd {
                if state.innerEOF { break }
                let n = try inner.read(into: state.inBuffer)
                if n == 0 {
                    state.innerEOF = true
                    if state.frameOpen {
                        throw DedupError.incompleteInput(
                            "the zstd input ends in the middle of a frame: it is truncated")
                    }
                    break
                }
                state.inPos = 0
                state.inEnd = n
            }
            var input = ZSTD_inBuffer(src: state.inBuffer.baseAddress, size: state.inEnd, pos: state.inPos)
            let r = ZSTD_decompressStream(state.dstream, &output, &input)
            if ZSTD_isError(r) != 0 {
                throw DedupError.compression("zstd input: \(String(cString: ZSTD_getErrorName(r)))")
            }
            state.inPos = input.pos
            state.frameOpen = r != 0
        }
        return output.pos
    }
}
