import Foundation

/// Removes this process's temporary files and lock objects when it is interrupted
/// (SIGINT, SIGTERM, SIGHUP), then exits with 128 + the signal number.
///
/// The handler runs in signal context, so it only calls unlink() and _exit(), both
/// async-signal-safe, over a fixed table of C strings. Paths are copied into the
/// table when registered and the copies are never freed (a slot is only cleared),
/// so the handler never reads freed memory; that costs a few bytes per pack.
/// Caught signals revert to their defaults in child processes (pg_dump, gzip).
public enum InterruptCleanup {
    private static let slotCount = 256
    nonisolated(unsafe) private static let slots: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?> = {
        let p = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: slotCount)
        p.initialize(repeating: nil, count: slotCount)
        return p
    }()
    private static let lock = NSLock()
    nonisolated(unsafe) private static let children: UnsafeMutablePointer<pid_t> = {
        let p = UnsafeMutablePointer<pid_t>.allocate(capacity: 64)
        p.initialize(repeating: 0, count: 64)
        return p
    }()

    /// Remembers a child process (an input command, leader of its own process
    /// group) to stop, with its group, on interruption.
    public static func registerChild(_ pid: pid_t) {
        lock.lock(); defer { lock.unlock() }
        for i in 0..<64 where children[i] == 0 {
            children[i] = pid
            return
        }
    }

    public static func unregisterChild(_ pid: pid_t) {
        lock.lock(); defer { lock.unlock() }
        for i in 0..<64 where children[i] == pid { children[i] = 0 }
    }

    /// Installs the handlers; call once at start-up.
    public static func install() {
        _ = slots
        _ = children
        for sig in [SIGINT, SIGTERM, SIGHUP] {
            var action = sigaction()
            action.__sigaction_handler.sa_handler = { sig in
                InterruptCleanup.removeAll()
                _exit(128 + sig)
            }
            sigemptyset(&action.sa_mask)
            action.sa_flags = 0
            sigaction(sig, &action, nil)
        }
    }

    /// Remembers a path to remove if the process is interrupted.
    public static func register(_ path: String) {
        lock.lock(); defer { lock.unlock() }
        for i in 0..<slotCount where slots[i] == nil {
            slots[i] = strdup(path)
            return
        }
    }

    /// Forgets a path (committed, or removed normally).
    public static func unregister(_ path: String) {
        lock.lock(); defer { lock.unlock() }
        for i in 0..<slotCount {
            if let p = slots[i], strcmp(p, path) == 0 {
                slots[i] = nil  // the copy is left allocated on purpose (see above)
                return
            }
        }
    }

    /// Signal context: stop the children, unlink every registered path.
    private static func removeAll() {
        for i in 0..<64 where children[i] > 0 { kill(-children[i], SIGTERM) }
        for i in 0..<slotCount {
            if let p = slots[i] { unlink(p) }
        }
    }
}
