import Foundation

/// Test hooks for crash and failure tests, read once from the environment.
///
/// `DBBACKUP_FAULT_CRASH_AT=<point>` ends the process at once (`_exit(137)`, as if
/// killed with SIGKILL: no cleanup, no flush) when the code reaches that point.
/// `DBBACKUP_FAULT_ENOSPC_AFTER=<bytes>` makes object writes fail with ENOSPC once
/// that many bytes have been written by this process.
/// Neither is set in normal use; docs/TESTING.md lists the points.
public enum FaultInjection {
    nonisolated(unsafe) private static var written: Int64 = 0
    private static let crashPoint: String? = ProcessInfo.processInfo.environment["DBBACKUP_FAULT_CRASH_AT"]
    private static let enospcAfter: Int64? = ProcessInfo.processInfo.environment["DBBACKUP_FAULT_ENOSPC_AFTER"].flatMap { Int64($0) }

    /// Ends the process here if the crash hook names this point.
    public static func crashPoint(_ name: String) {
        if crashPoint == name { _exit(137) }
    }

    /// Throws ENOSPC if the write budget of the fault hook is used up.
    static func chargeWrite(_ count: Int, path: String) throws {
        guard let limit = enospcAfter else { return }
        written += Int64(count)
        if written > limit { throw DedupError.io(operation: "write", path: path, errno: ENOSPC) }
    }
}
