import DedupStore
import Foundation

/// Rolls a restored dump forward: mariadb-binlog (or mysqlbinlog) reads the
/// binlogs from the dump's position up to the stop time, keeps the events of the
/// dump's database, renamed to the target database, and the mariadb client runs
/// them in one session.
///
/// The filter is mariadb-binlog's --database: with row-based logging it is exact;
/// a statement logged with the dump's database as the default one but naming
/// another database explicitly is replayed as written (as with any
/// mysqlbinlog-based recovery).
public struct MariaDBReplayPlan {
    public let decoder: [String]
    public let client: [String]
    /// mariadb-binlog reads --stop-datetime in its local time zone: UTC here.
    public let decoderEnvironment: [String: String]

    public static func make(files: [String], startPosition: UInt64, stopTime: Date?, sourceDatabase: String,
                            targetDatabase: String, client: [String]) throws -> MariaDBReplayPlan {
        guard let tool = ["mariadb-binlog", "mysqlbinlog"].first(where: { findExecutable($0) != nil }) else {
            throw DatabaseError.toolMissing(tool: "mariadb-binlog", package: "mariadb-client")
        }
        var args = [tool, "--start-position=\(startPosition)", "--database=\(sourceDatabase)"]
        if let stopTime {
            let f = DateFormatter()
            f.locale = Locale(identifier: "en_US_POSIX")
            f.timeZone = TimeZone(identifier: "UTC")
            f.dateFormat = "yyyy-MM-dd HH:mm:ss"
            // Whole seconds: an event at the target second itself is not replayed
            // unless the target is past it.
            args.append(
                "--stop-datetime=\(f.string(from: stopTime.addingTimeInterval(stopTime.timeIntervalSince1970.truncatingRemainder(dividingBy: 1) > 0 ? 1 : 0)))"
            )
        }
        if sourceDatabase != targetDatabase { args.append("--rewrite-db=\(sourceDatabase)->\(targetDatabase)") }
        var env = ProcessInfo.processInfo.environment
        env["TZ"] = "UTC"
        return MariaDBReplayPlan(decoder: args + files, client: client + ["--binary-mode"], decoderEnvironment: env)
    }

    /// Runs decoder | client; nil when both exit 0, else what failed.
    public func run() throws -> String? {
        guard let decoderExe = findExecutable(decoder[0]), let clientExe = findExecutable(client[0]) else {
            throw DatabaseError.toolMissing(tool: "mariadb-binlog", package: "mariadb-client")
        }
        let devNull = open("/dev/null", O_RDONLY | O_CLOEXEC)
        defer { if devNull >= 0 { close(devNull) } }
        let (loader, input) = try ChildProcess.feeding(
            executable: clientExe, arguments: client, stdoutFD: STDERR_FILENO)
        let reader: ChildProcess
        do {
            reader = try ChildProcess(executable: decoderExe, arguments: decoder, environment: decoderEnvironment,
                                      stdinFD: devNull, stdoutFD: input)
        } catch {
            close(input)
            _ = loader.wait()
            throw error
        }
        close(input)
        let readerFailure = reader.failure()
        let loaderFailure = loader.failure()
        if let readerFailure { return "\(decoder[0]) \(readerFailure)" }
        if let loaderFailure { return "\(client[0]) \(loaderFailure)" }
        return nil
    }
}
