import Foundation

/// Test hooks for crash and failure tests, read once from the environment.
///
/// `DBBACKUP_FAULT_CRASH_AT=<point>` ends the process at once (`_exit(137)`, as if
/// killed with SIGKILL: no cleanup, no flush) when the code reaches that point.
/// `DBBACKUP_FAULT_ENOSPC_AFTER=<bytes>` makes repository writes fail with ENOSPC once
/// that many bytes have been written by this process (through `FaultyBackend`).
/// Neither is set in normal use; docs/TESTING.md lists the points.
public enum FaultInjection {
    private static let crashPoint: String? = ProcessInfo.processInfo.environment["DBBACKUP_FAULT_CRASH_AT"]
    private static let enospcAfter: Int64? = ProcessInfo.processInfo.environment["DBBACKUP_FAULT_ENOSPC_AFTER"].flatMap
    { Int64($0) }

    /// Ends the process here if the crash hook names this point.
    public static func crashPoint(_ name: String) {
        if crashPoint == name { _exit(137) }
    }

    private static let pause: (point: String, seconds: Double)? = {
        guard let spec = ProcessInfo.processInfo.environment["DBBACKUP_FAULT_PAUSE_AT"],
              let colon = spec.lastIndex(of: ":"), let seconds = Double(spec[spec.index(after: colon)...])
        else { return nil }
        return (String(spec[..<colon]), seconds)
    }()

    /// Sleeps here if `DBBACKUP_FAULT_PAUSE_AT=<point>:<seconds>` names this point
    /// (tests of what runs beside a paused command).
    public static func pausePoint(_ name: String) {
        if let pause, pause.point == name { Thread.sleep(forTimeInterval: pause.seconds) }
    }

    /// `backend`, inside a `FaultyBackend` that runs out of space when the ENOSPC
    /// hook is set.
    public static func wrap(_ backend: Backend) -> Backend {
        guard let enospcAfter else { return backend }
        return FaultyBackend(backend, faults: [.failWrites(afterBytes: enospcAfter, failure: .noSpace)])
    }
}
