import CLinux
import Foundation

/// CLOCK_REALTIME in nanoseconds: marks of the generator, the consumer and the
/// memory watch are compared with one another (three processes).
func nowNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Notes the time at which each tenth of `size` bytes went through, one line per
/// tenth in `path` as it happens: "tenth<TAB>bytes<TAB>realtime ns". Line 0 is the start.
final class TenthMarks {
    private let size: UInt64
    private let file: FileHandle?
    private var next = 1

    init(size: UInt64, path: String?) throws {
        self.size = size
        if let path {
            guard FileManager.default.createFile(atPath: path, contents: nil),
                  let handle = FileHandle(forWritingAtPath: path) else {
                throw StreamToolError("cannot write the marks file \(path)")
            }
            file = handle
        } else {
            file = nil
        }
        write(0, bytes: 0)
    }

    /// Called after every hand-over with the bytes so far.
    @inline(__always) func passed(_ bytes: UInt64) {
        while next <= 10 && bytes >= size * UInt64(next) / 10 {
            write(next, bytes: size * UInt64(next) / 10)
            next += 1
        }
    }

    private func write(_ tenth: Int, bytes: UInt64) {
        file?.write(Data("\(tenth)\t\(bytes)\t\(nowNanoseconds())\n".utf8))
    }
}

struct StreamToolError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Writes all of `count` bytes to `fd` (retrying on EINTR and short writes).
func writeAll(_ fd: Int32, _ p: UnsafeRawPointer, _ count: Int) throws {
    var done = 0
    while done < count {
        let n = write(fd, p + done, count - done)
        if n < 0 {
            if errno == EINTR { continue }
            throw StreamToolError("write failed: \(String(cString: strerror(errno)))")
        }
        done += n
    }
}

/// Samples a process's memory from /proc/PID/status every `interval` until it
/// has gone: RssAnon (its heap and stacks: what it allocated), RssFile (mapped
/// files, such as the chunk index: clean pages the kernel can take back), VmHWM.
/// Each sample goes to `path` as "realtime ns<TAB>RssAnon KiB<TAB>RssFile KiB<TAB>
/// the process's CPU ticks (user + system)<TAB>the machine's busy ticks<TAB>bytes the
/// kernel counted as sent to storage (/proc/PID/io write_bytes)<TAB>read from it
/// (read_bytes)<TAB>bytes passed to write calls (wchar)". Busy ticks: USER_HZ,
/// /proc/stat's user, nice, system, irq, softirq, steal, so that a report can tell
/// what else ran on the machine meanwhile. wchar tells what a backup writes besides
/// its packs (the chunk index); write_bytes came to about twice wchar on this ext4
/// (a 20 s window of a backup: 3.12 GB against 1.48 GB, which strace's sum matched).
struct MemoryWatch {
    struct Peak { var anon = 0, file = 0, hwm = 0, samples = 0 }

    static func fields(_ status: String) -> (anon: Int, file: Int, hwm: Int, zombie: Bool)? {
        var anon = -1, file = 0, hwm = 0, zombie = false
        for line in status.split(separator: "\n") {
            let parts = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard parts.count >= 2 else { continue }
            switch parts[0] {
            case "RssAnon:": anon = Int(parts[1]) ?? -1
            case "RssFile:": file = Int(parts[1]) ?? 0
            case "VmHWM:": hwm = Int(parts[1]) ?? 0
            case "State:": zombie = parts[1] == "Z"
            default: break
            }
        }
        return anon < 0 ? nil : (anon, file, hwm, zombie)
    }

    /// utime + stime of a process, from /proc/PID/stat (the fields after the name's ")").
    static func processTicks(_ pid: Int32) -> Int {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return 0 }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // fields[0] is the state (field 3); utime and stime are fields 14 and 15.
        guard fields.count > 12, let user = Int(fields[11]), let system = Int(fields[12]) else { return 0 }
        return user + system
    }

    /// write_bytes, read_bytes and wchar of /proc/PID/io.
    static func processIO(_ pid: Int32) -> (written: Int, read: Int, writeCalls: Int) {
        guard let io = try? String(contentsOfFile: "/proc/\(pid)/io", encoding: .utf8) else { return (0, 0, 0) }
        var written = 0, read = 0, writeCalls = 0
        for line in io.split(separator: "\n") {
            let parts = line.split(separator: " ")
            guard parts.count == 2 else { continue }
            switch parts[0] {
            case "write_bytes:": written = Int(parts[1]) ?? 0
            case "read_bytes:": read = Int(parts[1]) ?? 0
            case "wchar:": writeCalls = Int(parts[1]) ?? 0
            default: break
            }
        }
        return (written, read, writeCalls)
    }

    /// Busy ticks of the whole machine, from /proc/stat's first line.
    static func machineTicks() -> Int {
        guard let stat = try? String(contentsOfFile: "/proc/stat", encoding: .utf8),
              let line = stat.split(separator: "\n").first else { return 0 }
        let v = line.split(separator: " ").dropFirst().map { Int($0) ?? 0 }
        guard v.count >= 8 else { return 0 }
        return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
    }

    static func run(pid: Int32, intervalMilliseconds: Int, path: String?) throws -> Peak {
        var peak = Peak()
        var lines = ""
        let statusPath = "/proc/\(pid)/status"
        while let status = try? String(contentsOfFile: statusPath, encoding: .utf8), let f = fields(status),
              !f.zombie {
            peak.anon = max(peak.anon, f.anon)
            peak.file = max(peak.file, f.file)
            peak.hwm = max(peak.hwm, f.hwm)
            peak.samples += 1
            let io = processIO(pid)
            lines += "\(nowNanoseconds())\t\(f.anon)\t\(f.file)\t\(processTicks(pid))\t\(machineTicks())"
                + "\t\(io.written)\t\(io.read)\t\(io.writeCalls)\n"
            usleep(useconds_t(intervalMilliseconds * 1000))
        }
        if let path {
            guard FileManager.default.createFile(atPath: path, contents: Data(lines.utf8)) else {
                throw StreamToolError("cannot write the samples file \(path)")
            }
        }
        return peak
    }
}
