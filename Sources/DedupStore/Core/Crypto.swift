import CCrypto
import Foundation

/// AES-256-GCM with the repository's data key, through libcrypto. A sealed box is
/// nonce (12 random bytes) | ciphertext | tag (16 bytes); `aad` binds it to where
/// it belongs (a pack entry's position, a trailer's pack, a chunk list block's
/// index), so a box moved elsewhere fails to open.
public final class RepositoryCipher: @unchecked Sendable {
    public static let overhead = 28
    private let dataKey: [UInt8]
    /// Keys the chunk ids (HMAC-SHA256), so that ids do not tell which content is stored.
    let idKey: [UInt8]

    /// `master`: 64 bytes, the data key then the id key.
    convenience init(master: [UInt8]) {
        self.init(dataKey: Array(master[0..<32]), idKey: Array(master[32..<64]))
    }

    /// A cipher that only seals and opens (a key-encryption key): no id key.
    private init(dataKey: [UInt8], idKey: [UInt8] = []) {
        self.dataKey = dataKey
        self.idKey = idKey
    }

    /// The cipher of a key object: its key-encryption key seals the master key.
    static func keyEncryption(_ kek: [UInt8]) -> RepositoryCipher { RepositoryCipher(dataKey: kek) }

    /// Seals `plain` into `out` (at least plain.count + 28 bytes); returns the box's length.
    public func seal(
        _ plain: UnsafeRawBufferPointer, aad: [UInt8], into out: UnsafeMutableRawBufferPointer
    ) throws -> Int {
        guard out.count >= plain.count + Self.overhead, let outBase = out.baseAddress else {
            throw DedupError.compression("seal: buffer too small")
        }
        let nonce = SecureRandom.bytes(12)
        outBase.copyMemory(from: nonce, byteCount: 12)
        guard let ctx = EVP_CIPHER_CTX_new() else { throw DedupError.compression("AES-GCM: no context") }
        defer { EVP_CIPHER_CTX_free(ctx) }
        var n: Int32 = 0, total = 0
        let ok = dataKey.withUnsafeBufferPointer { key in
            nonce.withUnsafeBufferPointer { iv in
                EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), nil, key.baseAddress, iv.baseAddress) == 1
            }
        }
        guard ok, aad.withUnsafeBufferPointer({ EVP_EncryptUpdate(ctx, nil, &n, $0.baseAddress, Int32($0.count)) }) == 1
        else {
            throw DedupError.compression("AES-GCM: init failed")
        }
        let body = (outBase + 12).assumingMemoryBound(to: UInt8.self)
        if plain.count > 0 {
            guard
                EVP_EncryptUpdate(
                    ctx, body, &n, plain.baseAddress?.assumingMemoryBound(to: UInt8.self), Int32(plain.count)) == 1
            else {
                throw DedupError.compression("AES-GCM: encryption failed")
            }
            total = Int(n)
        }
        guard EVP_EncryptFinal_ex(ctx, body + total, &n) == 1 else {
            throw DedupError.compression("AES-GCM: final failed")
        }
        total += Int(n)
        guard EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, 16, body + total) == 1 else {
            throw DedupError.compression("AES-GCM: no tag")
        }
        return 12 + total + 16
    }

    /// Opens a box into `out` (at least box.count - 28 bytes); returns the
    /// plaintext's length, or throws `DedupError.authenticationFailed` when the box
    /// was damaged, moved or sealed with another key.
    public func open(_ box: UnsafeRawBufferPointer, aad: [UInt8], into out: UnsafeMutableRawBufferPointer) throws -> Int
    {
        guard box.count >= Self.overhead, let boxBase = box.baseAddress else {
            throw DedupError.authenticationFailed("too short to be sealed")
        }
        let length = box.count - Self.overhead
        guard out.count >= length else { throw DedupError.compression("open: buffer too small") }
        guard let ctx = EVP_CIPHER_CTX_new() else { throw DedupError.compression("AES-GCM: no context") }
        defer { EVP_CIPHER_CTX_free(ctx) }
        let iv = boxBase.assumingMemoryBound(to: UInt8.self)
        var n: Int32 = 0, total = 0
        let ok = dataKey.withUnsafeBufferPointer {
            EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), nil, $0.baseAddress, iv) == 1
        }
        guard ok, aad.withUnsafeBufferPointer({ EVP_DecryptUpdate(ctx, nil, &n, $0.baseAddress, Int32($0.count)) }) == 1
        else {
            throw DedupError.compression("AES-GCM: init failed")
        }
        let outPtr = out.baseAddress?.assumingMemoryBound(to: UInt8.self)
        if length > 0 {
            guard EVP_DecryptUpdate(ctx, outPtr, &n, iv + 12, Int32(length)) == 1 else {
                throw DedupError.authenticationFailed("decryption failed")
            }
            total = Int(n)
        }
        let tag = UnsafeMutableRawPointer(mutating: boxBase + 12 + length)
        guard EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, tag) == 1 else {
            throw DedupError.compression("AES-GCM: tag not accepted")
        }
        var last: Int32 = 0
        var scratch = [UInt8](repeating: 0, count: 16)
        let final = scratch.withUnsafeMutableBufferPointer {
            EVP_DecryptFinal_ex(ctx, outPtr.map { $0 + total } ?? $0.baseAddress, &last)
        }
        guard final > 0 else {
            throw DedupError.authenticationFailed(
                "its authentication tag does not match (damaged, moved, or another key)")
        }
        return total + Int(last)
    }

    /// Seals a byte array (small objects: trailers, key material).
    public func seal(_ plain: [UInt8], aad: [UInt8]) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: plain.count + Self.overhead)
        let n = try plain.withUnsafeBytes { p in try out.withUnsafeMutableBytes { try seal(p, aad: aad, into: $0) } }
        return Array(out[0..<n])
    }

    public func open(_ box: [UInt8], aad: [UInt8]) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: max(0, box.count - Self.overhead))
        let n = try box.withUnsafeBytes { b in try out.withUnsafeMutableBytes { try open(b, aad: aad, into: $0) } }
        return Array(out[0..<n])
    }

    /// Where a pack entry's box belongs: its pack, its offset, its encoding.
    static func entryAAD(pack: PackID, offset: UInt64, encoding: UInt8) -> [UInt8] {
        var w = BinaryWriter(capacity: 25)
        w.append(pack.hi); w.append(pack.lo); w.append(offset); w.append(encoding)
        return w.bytes
    }
}

/// HMAC-SHA256 of a byte array under `key` (manifest tags, stream digests).
func hmacSHA256(key: [UInt8], _ bytes: [UInt8]) -> ChunkID {
    bytes.withUnsafeBytes { hmacSHA256(key: key, $0) }
}

/// HMAC-SHA256 of one buffer under `key` (the chunk ids of an encrypted repository).
func hmacSHA256(key: [UInt8], _ data: UnsafeRawBufferPointer) -> ChunkID {
    var out = [UInt8](repeating: 0, count: 32)
    var length: UInt32 = 0
    let ok = key.withUnsafeBufferPointer { k in
        out.withUnsafeMutableBufferPointer { o in
            HMAC(
                EVP_sha256(), k.baseAddress, Int32(k.count), data.baseAddress?.assumingMemoryBound(to: UInt8.self),
                data.count, o.baseAddress, &length) != nil
        }
    }
    // HMAC fails only when libcrypto cannot allocate: ids of zeros would merge every chunk.
    guard ok, length == 32 else { fatalError("libcrypto HMAC-SHA256 failed") }
    return ChunkID(out[...])
}

/// A wrapped master key: `keys/<id>.json`. The user's key (the bytes of a key
/// file, or a passphrase) goes through scrypt into a key-encryption key, which
/// seals the repository's random 64-byte master key. Rotation writes a new key
/// object and deletes the old one; no data is rewritten.
public struct WrappedKey: Codable, Sendable {
    public var kdf: String
    public var n: UInt64
    public var r: UInt64
    public var p: UInt64
    public var salt: String
    /// nonce | sealed master key | tag, hex.
    public var wrapped: String
    public var createdAt: String

    public static let folder = "keys/"
    static let scryptN: UInt64 = 1 << 15, scryptR: UInt64 = 8, scryptP: UInt64 = 1

    /// The key-encryption key of `secret` with these parameters.
    static func derive(_ secret: [UInt8], salt: [UInt8], n: UInt64, r: UInt64, p: UInt64) throws -> [UInt8] {
        // Within the 256 MiB scrypt may use here (128 * N * r bytes).
        guard n >= 1 << 10, n <= 1 << 20, r >= 1, r <= 16, p >= 1, p <= 16, 128 * n * r <= 256 << 20 else {
            throw DedupError.unsupportedRepository(
                path: "keys", detail: "key object with implausible scrypt parameters")
        }
        var out = [UInt8](repeating: 0, count: 32)
        let ok = secret.withUnsafeBufferPointer { s in
            salt.withUnsafeBufferPointer { sa in
                out.withUnsafeMutableBufferPointer { o in
                    EVP_PBE_scrypt(
                        s.baseAddress.map { UnsafeRawPointer($0).assumingMemoryBound(to: CChar.self) }, s.count,
                        sa.baseAddress, sa.count, n, r, p, 256 << 20, o.baseAddress, 32)
                }
            }
        }
        guard ok == 1 else { throw DedupError.compression("scrypt failed") }
        return out
    }

    static func aad(repositoryID: String) -> [UInt8] { Array("dbbackup master key\n\(repositoryID)".utf8) }

    /// Wraps `master` under `secret`.
    static func wrap(_ master: [UInt8], secret: [UInt8], repositoryID: String) throws -> WrappedKey {
        let salt = SecureRandom.bytes(32)
        let kek = try derive(secret, salt: salt, n: scryptN, r: scryptR, p: scryptP)
        let box = try RepositoryCipher.keyEncryption(kek).seal(master, aad: aad(repositoryID: repositoryID))
        return WrappedKey(
            kdf: "scrypt", n: scryptN, r: scryptR, p: scryptP, salt: Hex.encode(salt), wrapped: Hex.encode(box),
            createdAt: Timestamps.iso8601(Date()))
    }

    /// Writes this key object under a new random name.
    func store(in backend: Backend) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        try backend.put(
            Self.folder + Hex.encode(SecureRandom.bytes(8)) + ".json", Array(try enc.encode(self)) + [0x0A],
            ifAbsent: true)
    }

    /// The master key, or nil when `secret` is not this key object's.
    func unwrap(secret: [UInt8], repositoryID: String) throws -> [UInt8]? {
        guard kdf == "scrypt", let salt = Hex.decode(salt), let box = Hex.decode(wrapped) else {
            throw DedupError.unsupportedRepository(path: "keys", detail: "key object of an unknown kind (\(kdf))")
        }
        let kek = try Self.derive(secret, salt: salt, n: n, r: r, p: p)
        do {
            let master = try RepositoryCipher.keyEncryption(kek).open(box, aad: Self.aad(repositoryID: repositoryID))
            return master.count == 64 ? master : nil
        } catch DedupError.authenticationFailed {
            return nil
        }
    }
}
