import ArgumentParser
import DedupStore
import Foundation
import S3Store

/// Where `--dedup-dir` points: a local folder or a bucket. The CLI picks the
/// backend from it; everything above the backend is the same for both.
enum RepositoryPlace: Equatable {
    case folder(String)
    case bucket(S3Location)

    /// Reads a `--dedup-dir` value: `s3://bucket/prefix`, else a folder (`~`
    /// expanded, made absolute). Another URL scheme is refused rather than taken
    /// for a folder name.
    init(_ text: String) throws {
        if text.hasPrefix("s3://") {
            guard let location = S3Location(text) else {
                throw ValidationError(
                    "\(text) is not a bucket location: write s3://<bucket>/<prefix>, with a bucket name of 3-63 lowercase letters, digits, dots and hyphens")
            }
            self = .bucket(location)
        } else if let scheme = text.range(of: "://"), !text[..<scheme.lowerBound].contains("/") {
            throw ValidationError(
                "\(text): only local folders and s3:// buckets can hold a repository (\(text[..<scheme.lowerBound]):// is not supported); nothing was created")
        } else {
            self = .folder(StoreOptions.expand(text))
        }
    }

    var description: String {
        switch self {
        case .folder(let path): return path
        case .bucket(let location): return location.description
        }
    }

    /// The backend that serves this place (a bucket's reached with `s3`), with
    /// the fault hooks of `FaultInjection` around it when they are set (tests only).
    func backend(s3: S3Options) throws -> Backend { try backend(s3Environment: s3.environment()) }

    /// The same, a bucket reached with the AWS environment `env` (its
    /// endpoint, region, credentials: `S3Settings`).
    func backend(s3Environment env: [String: String]) throws -> Backend {
        switch self {
        case .folder(let path):
            return FaultInjection.wrap(LocalBackend(root: path))
        case .bucket(let location):
            let settings = try S3Settings(environment: env)
            let client = try S3Client(
                endpoint: settings.endpoint, bucket: location.bucket, credentials: settings.credentials,
                caFile: settings.caFile)
            return FaultInjection.wrap(S3Backend(client: client, prefix: location.prefix))
        }
    }
}

/// How to reach a bucket: options that override the standard AWS environment
/// variables (docs/S3.md). Credentials are never options: they come from the
/// environment or a credentials file.
struct S3Options: ParsableArguments {
    @Option(
        name: .customLong("s3-endpoint"),
        help: ArgumentHelp(
            "S3 endpoint URL for MinIO, Ceph RGW, Garage, ... (default: $AWS_ENDPOINT_URL_S3, $AWS_ENDPOINT_URL, else AWS in the region).",
            valueName: "url"))
    var endpoint: String?

    @Option(name: .customLong("s3-region"), help: ArgumentHelp("S3 region (default: $AWS_REGION, else us-east-1).", valueName: "name"))
    var region: String?

    @Option(
        name: .customLong("s3-addressing"),
        help: ArgumentHelp(
            "path (host/bucket/key) or virtual-host (bucket.host/key) (default: path with an endpoint, virtual-host on AWS).",
            valueName: "style"))
    var addressing: String?

    @Option(
        name: .customLong("s3-ca-file"),
        help: ArgumentHelp("PEM file of the CA of a private TLS endpoint (default: $AWS_CA_BUNDLE, else the system's).", valueName: "file"))
    var caFile: String?

    @Option(
        name: .customLong("s3-credentials-file"),
        help: ArgumentHelp(
            "Shared credentials file (default: $AWS_SHARED_CREDENTIALS_FILE, else ~/.aws/credentials); used when AWS_ACCESS_KEY_ID is not set.",
            valueName: "file"))
    var credentialsFile: String?

    @Option(name: .customLong("s3-profile"), help: ArgumentHelp("Profile in the credentials file (default: $AWS_PROFILE, else default).", valueName: "name"))
    var profile: String?

    func validate() throws { try overrides.validate("--s3-addressing") }

    var overrides: S3Overrides {
        S3Overrides(endpoint: endpoint, region: region, addressing: addressing, caFile: caFile,
                    credentialsFile: credentialsFile, profile: profile)
    }

    /// The AWS environment with these options laid over it.
    func environment(_ base: [String: String] = ProcessInfo.processInfo.environment) -> [String: String] {
        overrides.applied(to: base)
    }

    /// The options a command the database server runs (archive_command,
    /// restore_command) needs to reach the same bucket from the server's own
    /// environment, which has none of this shell's variables: the endpoint,
    /// region, addressing, CA file, and the credentials file and profile. Keys
    /// given only as AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY cannot be passed
    /// on (they would stand in the server's configuration): refused, naming the
    /// credentials file to use instead.
    func serverSideOptions(_ base: [String: String] = ProcessInfo.processInfo.environment) throws
        -> [(option: String, value: String)]
    {
        let env = environment(base)
        func given(_ names: String...) -> String? {
            names.lazy.compactMap { env[$0] }.first { !$0.isEmpty }
        }
        var out = [(option: String, value: String)]()
        if let url = given("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL") { out.append(("--s3-endpoint", url)) }
        if let region = given("AWS_REGION", "AWS_DEFAULT_REGION") { out.append(("--s3-region", region)) }
        if let style = given("DBBACKUP_S3_PATH_STYLE") {
            out.append(("--s3-addressing", style == "false" || style == "0" ? "virtual-host" : "path"))
        }
        if let ca = given("AWS_CA_BUNDLE") { out.append(("--s3-ca-file", ca)) }
        guard let file = given("AWS_SHARED_CREDENTIALS_FILE") else {
            throw DedupError.invalidArgument(
                "the database server runs this command in its own environment, where AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set, and keys never go on its command line: give --s3-credentials-file <file> (a credentials file the server's OS user can read; docs/S3.md)")
        }
        out.append(("--s3-credentials-file", file))
        if let profile = given("AWS_PROFILE") { out.append(("--s3-profile", profile)) }
        return out
    }
}

/// What options say about reaching a bucket, laid over the AWS environment:
/// the `--s3-*` options, and `dedup sync`'s `--to-s3-*` for its destination.
struct S3Overrides {
    var endpoint, region, addressing, caFile, credentialsFile, profile: String?

    var anyGiven: Bool {
        [endpoint, region, addressing, caFile, credentialsFile, profile].contains { $0 != nil }
    }

    func validate(_ addressingOption: String) throws {
        if let addressing, !["path", "virtual-host"].contains(addressing) {
            throw ValidationError("\(addressingOption) takes path or virtual-host")
        }
    }

    /// `base` with each given setting in the variable it overrides.
    func applied(to base: [String: String]) -> [String: String] {
        var env = base
        if let endpoint { env["AWS_ENDPOINT_URL_S3"] = endpoint }
        if let region { env["AWS_REGION"] = region }
        if let addressing { env["DBBACKUP_S3_PATH_STYLE"] = addressing == "path" ? "true" : "false" }
        if let caFile { env["AWS_CA_BUNDLE"] = StoreOptions.expand(caFile) }
        if let credentialsFile { env["AWS_SHARED_CREDENTIALS_FILE"] = StoreOptions.expand(credentialsFile) }
        if let profile { env["AWS_PROFILE"] = profile }
        return env
    }
}

/// How `dedup sync` reaches a destination bucket that is not reached like the
/// source (another provider, region or account): each option replaces, for the
/// destination alone, what the `--s3-*` options and the environment give both.
struct DestinationS3Options: ParsableArguments {
    @Option(name: .customLong("to-s3-endpoint"), help: ArgumentHelp("The destination's S3 endpoint URL.", valueName: "url"))
    var endpoint: String?

    @Option(name: .customLong("to-s3-region"), help: ArgumentHelp("The destination's S3 region.", valueName: "name"))
    var region: String?

    @Option(name: .customLong("to-s3-addressing"), help: ArgumentHelp("The destination's addressing: path or virtual-host.", valueName: "style"))
    var addressing: String?

    @Option(name: .customLong("to-s3-ca-file"), help: ArgumentHelp("PEM file of the destination's private CA.", valueName: "file"))
    var caFile: String?

    @Option(
        name: .customLong("to-s3-credentials-file"),
        help: ArgumentHelp(
            "Credentials file for the destination; with it or --to-s3-profile the destination's keys come from that file, never from AWS_ACCESS_KEY_ID.",
            valueName: "file"))
    var credentialsFile: String?

    @Option(name: .customLong("to-s3-profile"), help: ArgumentHelp("Profile of the destination's keys in the credentials file.", valueName: "name"))
    var profile: String?

    var overrides: S3Overrides {
        S3Overrides(endpoint: endpoint, region: region, addressing: addressing, caFile: caFile,
                    credentialsFile: credentialsFile, profile: profile)
    }

    func validate() throws { try overrides.validate("--to-s3-addressing") }

    /// The destination's environment: the source's with these laid over. A
    /// profile or credentials file named here replaces the keys of the
    /// environment, which are the source's.
    func environment(over source: [String: String]) -> [String: String] {
        var env = overrides.applied(to: source)
        if credentialsFile != nil || profile != nil {
            for name in ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"] { env[name] = nil }
        }
        return env
    }
}
