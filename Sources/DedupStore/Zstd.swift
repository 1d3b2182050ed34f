import CZstd
import Foundation

/// Per-chunk zstd compression with one reused context (no allocation per chunk).
public final class ZstdCompressor {
    private let cctx: OpaquePointer
    public let level: Int32

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
        ZSTD_CCtx_setParameter(cctx, ZSTD_c_checksumFlag, 0)
        ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 1)
    }

    deinit { ZSTD_freeCCtx(cctx) }

    public static func bound(_ size: Int) -> Int { ZSTD_compressBound(size) }

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

/// Per-chunk zstd decompression with one reused context.
public final class ZstdDecompressor {
    private let dctx: OpaquePointer

    public init() throws {
        guard let dctx = ZSTD_createDCtx() else { throw DedupError.compression("cannot allocate a zstd context") }
        self.dctx = dctx
    }

    deinit { ZSTD_freeDCtx(dctx) }

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
                        throw DedupError.incompleteInput("the zstd input ends in the middle of a frame: it is truncated")
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
