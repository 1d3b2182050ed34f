import CCrypto
import Foundation

/// Streaming SHA-256 through libcrypto's EVP interface. One instance per thread;
/// `reset()` makes it reusable without allocating a new context.
public final class SHA256Hasher {
    private let ctx: OpaquePointer
    private let md: OpaquePointer

    /// With a key, `digest` is HMAC-SHA256 (the chunk ids of an encrypted
    /// repository); streaming (`update`/`finish`) stays plain SHA-256.
    private let hmacKey: [UInt8]?

    public init(hmacKey: [UInt8]? = nil) {
        self.hmacKey = hmacKey
        // EVP_MD_CTX_new and EVP_sha256 only fail when the process is out of memory.
        guard let ctx = EVP_MD_CTX_new(), let md = EVP_sha256() else {
            fatalError("libcrypto could not allocate a SHA-256 context")
        }
        self.ctx = ctx
        self.md = md
        reset()
    }

    deinit { EVP_MD_CTX_free(ctx) }

    public func reset() {
        EVP_DigestInit_ex(ctx, md, nil)
    }

    public func update(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        EVP_DigestUpdate(ctx, base, bytes.count)
    }

    public func update(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { update($0) }
    }

    /// Returns the digest and resets the hasher for the next message.
    public func finish() -> ChunkID {
        var digest = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        _ = digest.withUnsafeMutableBufferPointer { EVP_DigestFinal_ex(ctx, $0.baseAddress, &length) }
        reset()
        return ChunkID(digest[...])
    }

    /// The digest of one buffer.
    /// The digest of one buffer. (The context is always fresh here: `init` and
    /// `finish` reset it.)
    public func digest(_ bytes: UnsafeRawBufferPointer) -> ChunkID {
        if let hmacKey { return hmacSHA256(key: hmacKey, bytes) }
        update(bytes)
        return finish()
    }

    /// One-shot convenience.
    public static func hash(_ bytes: [UInt8]) -> ChunkID {
        let h = SHA256Hasher()
        h.update(bytes)
        return h.finish()
    }
}

/// Cryptographically random bytes from libcrypto.
public enum SecureRandom {
    public static func bytes(_ count: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        let ok = out.withUnsafeMutableBufferPointer { RAND_bytes($0.baseAddress, Int32(count)) }
        if ok != 1 {
            // Fall back to the system generator rather than produce predictable names.
            var generator = SystemRandomNumberGenerator()
            for i in 0..<count { out[i] = UInt8.random(in: 0...255, using: &generator) }
        }
        return out
    }
}
