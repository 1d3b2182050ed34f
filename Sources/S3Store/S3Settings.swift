import Foundation

/// A repository's place in object storage, as a user writes it: `s3://bucket/prefix`.
public struct S3Location: Sendable, Equatable {
    public var bucket: String
    /// The key prefix, empty or ending in "/".
    public var prefix: String

    /// Nil unless `text` is an `s3://` URL with a bucket name S3 accepts
    /// (3-63 characters: lowercase letters, digits, dots and hyphens).
    public init?(_ text: String) {
        guard text.hasPrefix("s3://") else { return nil }
        let rest = text.dropFirst(5)
        let bucket = String(rest.prefix { $0 != "/" })
        let allowed = Set("abcdefghijklmnopqrstuvwxyz0123456789.-")
        guard (3...63).contains(bucket.count), bucket.allSatisfy(allowed.contains),
            bucket.first != "-", bucket.first != "."
        else { return nil }
        var prefix = String(rest.dropFirst(bucket.count).drop { $0 == "/" })
        if !prefix.isEmpty && !prefix.hasSuffix("/") { prefix += "/" }
        self.bucket = bucket
        self.prefix = prefix
    }

    public var description: String { "s3://\(bucket)/\(prefix)" }
}

/// What is wrong with the S3 settings, in one line that names where to look
/// (never a secret).
public enum S3SettingsError: Error, Equatable, CustomStringConvertible {
    case noCredentials(lookedIn: [String])
    case profileMissing(profile: String, file: String)
    case badEndpoint(String)

    public var description: String {
        switch self {
        case .noCredentials(let places):
            return "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile in "
                + places.joined(separator: " or ")
        case .profileMissing(let profile, let file):
            return "the profile [\(profile)] in \(file) has no aws_access_key_id and aws_secret_access_key"
        case .badEndpoint(let url):
            return "AWS_ENDPOINT_URL \(url) is not an http:// or https:// URL with a host"
        }
    }
}

/// The endpoint and credentials for a bucket, from the environment AWS's own
/// tools read: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN,
/// else a profile (AWS_PROFILE, default `default`) of the shared credentials
/// file (AWS_SHARED_CREDENTIALS_FILE, default ~/.aws/credentials: a file the
/// postgres user of an archive_command can read, never the command line);
/// AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL for MinIO, Ceph RGW, Garage and the
/// like (path-style addressing unless DBBACKUP_S3_PATH_STYLE=false), else AWS
/// itself in AWS_REGION (or AWS_DEFAULT_REGION, default us-east-1) with
/// virtual-host addressing; AWS_CA_BUNDLE for a private CA.
public struct S3Settings: Sendable, Equatable {
    public var endpoint: S3Endpoint
    public var credentials: S3Credentials
    /// A PEM file of the CA that signed a private endpoint's certificate
    /// (AWS_CA_BUNDLE); nil: the system's trusted certificates.
    public var caFile: String?

    public init(environment env: [String: String], home: String? = nil) throws {
        let region = env["AWS_REGION"] ?? env["AWS_DEFAULT_REGION"] ?? "us-east-1"
        caFile = env["AWS_CA_BUNDLE"].flatMap { $0.isEmpty ? nil : $0 }
        if let url = env["AWS_ENDPOINT_URL_S3"] ?? env["AWS_ENDPOINT_URL"], !url.isEmpty {
            let pathStyle = env["DBBACKUP_S3_PATH_STYLE"].map { $0 != "false" && $0 != "0" } ?? true
            guard let e = S3Endpoint(url: url, region: region, pathStyle: pathStyle) else {
                throw S3SettingsError.badEndpoint(url)
            }
            endpoint = e
        } else {
            let pathStyle = env["DBBACKUP_S3_PATH_STYLE"].map { $0 == "true" || $0 == "1" } ?? false
            endpoint = S3Endpoint(
                scheme: "https", host: "s3.\(region).amazonaws.com", port: nil, region: region, pathStyle: pathStyle)
        }
        if let id = env["AWS_ACCESS_KEY_ID"], let secret = env["AWS_SECRET_ACCESS_KEY"], !id.isEmpty, !secret.isEmpty {
            credentials = S3Credentials(accessKeyID: id, secretAccessKey: secret, sessionToken: env["AWS_SESSION_TOKEN"])
            return
        }
        let home = home ?? env["HOME"] ?? NSHomeDirectory()
        let file = env["AWS_SHARED_CREDENTIALS_FILE"] ?? home + "/.aws/credentials"
        let profile = env["AWS_PROFILE"] ?? "default"
        guard let text = try? String(contentsOfFile: file, encoding: .utf8) else {
            throw S3SettingsError.noCredentials(lookedIn: [file])
        }
        let values = Self.profile(profile, in: text)
        guard let id = values["aws_access_key_id"], let secret = values["aws_secret_access_key"] else {
            throw S3SettingsError.profileMissing(profile: profile, file: file)
        }
        credentials = S3Credentials(accessKeyID: id, secretAccessKey: secret, sessionToken: values["aws_session_token"])
    }

    /// The `key = value` lines of `[name]` in an INI text (comments with `#` or `;`).
    static func profile(_ name: String, in text: String) -> [String: String] {
        var current: String?
        var out: [String: String] = [:]
        for raw in text.split(whereSeparator: \.isNewline) {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") || line.hasPrefix(";") { continue }
            if line.hasPrefix("[") && line.hasSuffix("]") {
                current = line.dropFirst().dropLast().trimmingCharacters(in: .whitespaces)
                continue
            }
            guard current == name, let eq = line.firstIndex(of: "=") else { continue }
            let key = line[..<eq].trimmingCharacters(in: .whitespaces).lowercased()
            out[key] = line[line.index(after: eq)...].trimmingCharacters(in: .whitespaces)
        }
        return out
    }
}
