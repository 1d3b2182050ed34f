import Foundation
import Testing
@testable import S3Store

@Suite struct S3SettingsTests {
    @Test func locationsAreBucketAndPrefix() throws {
        #expect(S3Location("s3://backups/db1") == S3Location("s3://backups/db1/"))
        let l = try #require(S3Location("s3://backups/db1"))
        #expect(l.bucket == "backups" && l.prefix == "db1/")
        #expect(try #require(S3Location("s3://my.bucket-1")).prefix == "")
        #expect(try #require(S3Location("s3://b12//a/b")).prefix == "a/b/")
        for bad in ["s3://", "s3://ab", "s3://Upper", "s3://under_score/x", "s3://-dash", "/srv/dedup", "https://x.y/z"] {
            #expect(S3Location(bad) == nil, "\(bad)")
        }
    }

    @Test func theEnvironmentsKeysComeFirst() throws {
        let s = try S3Settings(environment: [
            "AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "SECRET", "AWS_SESSION_TOKEN": "TOKEN",
            "AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_REGION": "eu-west-1",
        ], home: "/nonexistent")
        #expect(s.credentials == S3Credentials(accessKeyID: "AKID", secretAccessKey: "SECRET", sessionToken: "TOKEN"))
        #expect(s.endpoint == S3Endpoint(scheme: "http", host: "127.0.0.1", port: 9000, region: "eu-west-1", pathStyle: true))
        let aws = try S3Settings(environment: ["AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"], home: "/nonexistent")
        #expect(aws.endpoint == S3Endpoint(scheme: "https", host: "s3.us-east-1.amazonaws.com", port: nil, region: "us-east-1", pathStyle: false))
        #expect(throws: S3SettingsError.badEndpoint("minio:9000")) {
            try S3Settings(environment: ["AWS_ENDPOINT_URL": "minio:9000", "AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "b"])
        }
    }

    @Test func aProfileOfTheSharedCredentialsFile() throws {
        let dir = NSTemporaryDirectory() + "s3-settings-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: dir + "/.aws", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try """
            # written by aws configure
            [default]
            aws_access_key_id = DEFAULTKEY
            aws_secret_access_key = DEFAULT-SECRET-MARKER

            [archive]
            aws_access_key_id=ARCHIVEKEY
            aws_secret_access_key= ARCHIVE-SECRET-MARKER
            aws_session_token = T
            [empty]
            region = eu-west-1
            """.write(toFile: dir + "/.aws/credentials", atomically: true, encoding: .utf8)
        let d = try S3Settings(environment: [:], home: dir)
        #expect(d.credentials == S3Credentials(accessKeyID: "DEFAULTKEY", secretAccessKey: "DEFAULT-SECRET-MARKER"))
        let a = try S3Settings(environment: ["AWS_PROFILE": "archive"], home: dir)
        #expect(a.credentials == S3Credentials(accessKeyID: "ARCHIVEKEY", secretAccessKey: "ARCHIVE-SECRET-MARKER", sessionToken: "T"))
        // A file named for the postgres user of an archive_command.
        let named = try S3Settings(environment: ["AWS_SHARED_CREDENTIALS_FILE": dir + "/.aws/credentials"], home: "/nonexistent")
        #expect(named.credentials.accessKeyID == "DEFAULTKEY")
        let missing = S3SettingsError.profileMissing(profile: "empty", file: dir + "/.aws/credentials")
        #expect(throws: missing) { try S3Settings(environment: ["AWS_PROFILE": "empty"], home: dir) }
        #expect(throws: S3SettingsError.noCredentials(lookedIn: ["/nonexistent/.aws/credentials"])) {
            try S3Settings(environment: [:], home: "/nonexistent")
        }
        // No message carries a secret.
        for e in [missing, .noCredentials(lookedIn: ["x"]), .badEndpoint("u")] {
            #expect(!e.description.contains("SECRET-MARKER"))
        }
    }
}
