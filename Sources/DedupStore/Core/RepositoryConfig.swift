import Foundation

/// The algorithms a config names, by the names it records them under (the
/// strings on disk stay what they are; a name this build does not know is
/// refused when the config is read).
public enum ChunkerAlgorithm: String, Sendable { case fastCDCGear64 = "fastcdc-gear64-v1" }
public enum CompressionAlgorithm: String, Sendable { case zstd }
public enum ChunkHashAlgorithm: String, Sendable { case sha256, hmacSHA256 = "hmac-sha256" }
public enum EncryptionAlgorithm: String, Sendable { case none, aes256GCM = "aes-256-gcm" }
public enum CompressionMode: String, Sendable { case adaptive, fixed }

/// The repository's `config` object: written once at init, never changed.
public struct RepositoryConfig: Codable, Equatable, Sendable {
    public static let formatName = "dbbackup-dedup"
    /// The newest format version this build reads and writes.
    public static let currentVersion = 1
    public static let defaultPackSize = 32 << 20

    public struct Chunker: Codable, Equatable, Sendable {
        public var algorithm: String
        public var minSize: Int
        public var avgSize: Int
        public var maxSize: Int

        public var parameters: ChunkerParameters {
            ChunkerParameters(minSize: minSize, avgSize: avgSize, maxSize: maxSize)
        }
    }

    public struct Compression: Codable, Equatable, Sendable {
        public var algorithm: String
        /// With `mode` "adaptive" (or none: configs before it) the highest level a
        /// unit is compressed at; with "fixed", every unit's level.
        public var level: Int
        /// "adaptive" or "fixed" (nil in configs written before modes: adaptive).
        public var mode: String?

        /// A sample of each compression unit picks raw, entropy coding only, or
        /// `level` (`CompressionProbe`).
        public var isAdaptive: Bool { mode != CompressionMode.fixed.rawValue }
    }

    public var format: String
    public var version: Int
    public var id: String
    public var createdAt: String
    public var chunker: Chunker
    public var compression: Compression
    public var packSize: Int
    public var chunkHash: String
    public var encryption: String
    /// False: backups store no chunk as a delta (`dedup init --no-delta`).
    /// Absent or true: they do where it pays (docs/FORMAT.md, encoding 5).
    public var deltas: Bool?

    /// The algorithms by type (nil for a name this build does not know; `decode`
    /// refuses such a config).
    public var chunkerAlgorithm: ChunkerAlgorithm? { ChunkerAlgorithm(rawValue: chunker.algorithm) }
    public var compressionAlgorithm: CompressionAlgorithm? { CompressionAlgorithm(rawValue: compression.algorithm) }
    public var hashAlgorithm: ChunkHashAlgorithm? { ChunkHashAlgorithm(rawValue: chunkHash) }
    public var encryptionAlgorithm: EncryptionAlgorithm? { EncryptionAlgorithm(rawValue: encryption) }

    public var isEncrypted: Bool { encryptionAlgorithm != EncryptionAlgorithm.none }

    public init(chunker: ChunkerParameters, compressionLevel: Int, compressionMode: CompressionMode = .adaptive,
                packSize: Int = RepositoryConfig.defaultPackSize, encrypted: Bool = false) {
        format = Self.formatName
        version = Self.currentVersion
        id = Hex.encode(SecureRandom.bytes(16))
        createdAt = Timestamps.iso8601(Date())
        self.chunker = Chunker(algorithm: ChunkerAlgorithm.fastCDCGear64.rawValue, minSize: chunker.minSize,
                               avgSize: chunker.avgSize, maxSize: chunker.maxSize)
        compression = Compression(
            algorithm: CompressionAlgorithm.zstd.rawValue, level: compressionLevel, mode: compressionMode.rawValue)
        self.packSize = packSize
        chunkHash = (encrypted ? ChunkHashAlgorithm.hmacSHA256 : .sha256).rawValue
        encryption = (encrypted ? EncryptionAlgorithm.aes256GCM : .none).rawValue
    }

    /// A decoding error in one short phrase, without Swift's type dump.
    static func describe(_ error: Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, _): return "missing '\(key.stringValue)'"
        case DecodingError.typeMismatch(_, let c), DecodingError.valueNotFound(_, let c):
            return "bad '\(c.codingPath.map(\.stringValue).joined(separator: "."))'"
        case DecodingError.dataCorrupted(let c): return c.debugDescription
        default: return "\(error)"
        }
    }

    func encoded() throws -> [UInt8] {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        return Array(try enc.encode(self)) + [0x0A]
    }

    /// Parses and checks a config; `path` is for messages.
    static func decode(_ bytes: [UInt8], path: String) throws -> RepositoryConfig {
        guard let object = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any] else {
            throw DedupError.foreignRepository(path: path, detail: "its config file is not JSON")
        }
        guard object["format"] as? String == formatName else {
            throw DedupError.foreignRepository(path: path, detail: "config format is not \(formatName)")
        }
        if let v = object["version"] as? Int, v > currentVersion {
            throw DedupError.unsupportedFormat(path: path, found: v, supported: currentVersion)
        }
        do {
            let config = try JSONDecoder().decode(RepositoryConfig.self, from: Data(bytes))
            guard config.chunkerAlgorithm != nil, config.hashAlgorithm != nil else {
                throw DedupError.foreignRepository(path: path, detail: "unknown chunker or hash")
            }
            guard config.compressionAlgorithm != nil else {
                throw DedupError.unsupportedRepository(
                    path: path, detail: "compression '\(config.compression.algorithm)'")
            }
            // Plain: SHA-256 ids. Encrypted: AES-256-GCM and keyed ids, always together.
            switch (config.encryptionAlgorithm, config.hashAlgorithm) {
            case (.none?, .sha256?), (.aes256GCM?, .hmacSHA256?): break
            default:
                throw DedupError.unsupportedRepository(
                    path: path, detail: "encryption '\(config.encryption)' with chunk hash '\(config.chunkHash)'")
            }
            try config.chunker.parameters.validate()
            return config
        } catch let e as DedupError {
            throw e
        } catch {
            throw DedupError.foreignRepository(
                path: path, detail: "its config file lacks a field or has a wrong value (\(Self.describe(error)))")
        }
    }
}
