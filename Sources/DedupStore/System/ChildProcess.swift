import Foundation

/// A child process started with posix_spawn, with its signals as a child expects:
/// an empty signal mask and default dispositions for SIGPIPE, SIGINT, SIGTERM and
/// SIGHUP. (Foundation's Process on Linux passes on the spawning thread's blocked
/// signals, so `terminate()` could not stop a pg_dump, and neither could Ctrl-C.)
public final class ChildProcess {
    public let pid: pid_t
    public let commandLine: String
    private var status: Int32?

    /// Starts `executable` with `arguments` (argv[0] included). `stdinFD` and
    /// `stdoutFD` become its standard input and output; its stderr is ours.
    /// `closeInChild` lists descriptors the child must not keep (the parent's
    /// ends of pipes).
    public init(executable: String, arguments: [String], environment: [String: String]? = nil,
                stdinFD: Int32, stdoutFD: Int32, closeInChild: [Int32] = []) throws {
        commandLine = arguments.joined(separator: " ")
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, stdinFD, 0)
        posix_spawn_file_actions_adddup2(&actions, stdoutFD, 1)
        // Nothing else of ours leaks into the child: a descriptor it kept open (a
        // pipe, a lock, a parent's socket) could outlive us and hang others.
        for fd in Set(Self.openDescriptors() + closeInChild) where fd > 2 {
            posix_spawn_file_actions_addclose(&actions, fd)
        }

        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attr, &empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for sig in [SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGQUIT] { sigaddset(&defaults, sig) }
        posix_spawnattr_setsigdefault(&attr, &defaults)
        // Its own process group, so that stopping it also stops what it started.
        posix_spawnattr_setpgroup(&attr, 0)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP))

        let env = (environment ?? ProcessInfo.processInfo.environment).map { "\($0.key)=\($0.value)" }
        var cArgs = arguments.map { strdup($0) } + [nil]
        var cEnv = env.map { strdup($0) } + [nil]
        defer {
            for p in cArgs { free(p) }
            for p in cEnv { free(p) }
        }
        var child: pid_t = 0
        let rc = posix_spawn(&child, executable, &actions, &attr, &cArgs, &cEnv)
        guard rc == 0 else {
            throw DedupError.inputCommandFailed(
                command: commandLine, status: "could not be started (\(String(cString: strerror(rc))))")
        }
        pid = child
        InterruptCleanup.registerChild(child)
    }

    /// Starts `executable` reading a new pipe, its stdout going to `stdoutFD`.
    /// Returns the child and the pipe's write end, which the caller writes to
    /// (or hands to another child) and closes.
    public static func feeding(executable: String, arguments: [String], environment: [String: String]? = nil,
                               stdoutFD: Int32) throws -> (child: ChildProcess, input: Int32) {
        guard let pipe = FileIO.makePipe() else {
            throw DedupError.io(operation: "pipe", path: arguments.first ?? executable, errno: errno)
        }
        do {
            let child = try ChildProcess(executable: executable, arguments: arguments, environment: environment,
                                         stdinFD: pipe.read, stdoutFD: stdoutFD, closeInChild: [pipe.write])
            close(pipe.read)
            return (child, pipe.write)
        } catch {
            close(pipe.read); close(pipe.write)
            throw error
        }
    }

    deinit {
        if status == nil {
            kill(-pid, SIGTERM)
            _ = wait()
        }
    }

    /// The descriptors open in this process, from /proc/self/fd.
    static func openDescriptors() -> [Int32] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []).compactMap { Int32($0) }
    }

    /// Waits for the child to end; returns its wait status (cached).
    @discardableResult
    public func wait() -> Int32 {
        if let status { return status }
        var st: Int32 = 0
        while waitpid(pid, &st, 0) < 0 && errno == EINTR {}
        status = st
        InterruptCleanup.unregisterChild(pid)
        return st
    }

    /// nil when the child exited 0, else how it ended ("exited with status 3",
    /// "was killed by signal 9").
    public func failure() -> String? {
        let st = wait()
        let signal = st & 0x7F
        if signal != 0 { return "was killed by signal \(signal)" }
        let code = (st >> 8) & 0xFF
        return code == 0 ? nil : "exited with status \(code)"
    }
}

/// Unblocks every signal in the calling thread: a process started by a parent that
/// had signals blocked (as Foundation's Process does) would otherwise ignore
/// SIGTERM and Ctrl-C.
public func unblockAllSignals() {
    var empty = sigset_t()
    sigemptyset(&empty)
    pthread_sigmask(SIG_SETMASK, &empty, nil)
}
