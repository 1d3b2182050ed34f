import CLinux
import Foundation

// The generator, the consumer and the memory watch of tools/bench-stream: a huge
// generated dump through a backup's standard input and back out of a restore,
// with no copy of it on disk.
//
//   dbbackup-stream generate SIZE [--seed N] [--marks FILE]   SIZE bytes of dump to stdout
//   dbbackup-stream count SIZE [--marks FILE]                  reads stdin, must get SIZE bytes
//   dbbackup-stream watch PID [--interval-ms 20] [--samples FILE]
//
// generate and count print "bytes <n> xxh64 <hex> seconds <s>" on stderr at the
// end (the digest of every byte written or read) and note each tenth's time in
// the marks file; watch prints "peak_rss_anon_kib <n> peak_rss_file_kib <n>
// vm_hwm_kib <n> samples <n>" once PID has exited. SIZE takes K, M, G, T
// (powers of 1024; KiB, MiB, GiB, TiB too).

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("dbbackup-stream: \(message)\n".utf8))
    exit(1)
}

func parseSize(_ text: String) -> UInt64? {
    let units: [(String, UInt64)] = [("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10),
                                     ("T", 1 << 40), ("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10), ("", 1)]
    for (suffix, factor) in units where text.hasSuffix(suffix) {
        guard let n = UInt64(text.dropLast(suffix.count)) else { continue }
        return n.multipliedReportingOverflow(by: factor).overflow ? nil : n * factor
    }
    return nil
}

let usage = "usage: dbbackup-stream generate SIZE [--seed N] [--marks FILE] | count SIZE [--marks FILE] | "
    + "watch PID [--interval-ms N] [--samples FILE]"
var args = Array(CommandLine.arguments.dropFirst())
guard args.count >= 2 else { fail(usage) }
let mode = args.removeFirst(), operand = args.removeFirst()
var options = [String: String]()
while !args.isEmpty {
    let name = args.removeFirst()
    guard name.hasPrefix("--"), !args.isEmpty else { fail(usage) }
    options[String(name.dropFirst(2))] = args.removeFirst()
}

let bufferSize = 1 << 20

/// The dump: header, rows, and a tail (end of COPY, a comment line padding the
/// stream to exactly `size` bytes, the completion line).
func generate(size: UInt64, seed: UInt64, marks: TenthMarks) throws -> XXH64 {
    let fixedTail = DumpGenerator.endOfCopy.count + DumpGenerator.footer.count
    let smallest = UInt64(DumpGenerator.header.count + fixedTail + 3)
    guard size >= smallest else { throw StreamToolError("SIZE must be at least \(smallest) bytes") }
    FileIO_enlargePipe(STDOUT_FILENO)
    let generator = DumpGenerator(seed: seed)
    let buffer = UnsafeMutableRawPointer.allocate(byteCount: bufferSize + DumpGenerator.maxRow, alignment: 64)
    defer { buffer.deallocate() }
    var digest = XXH64()
    var written: UInt64 = 0
    func emit(_ count: Int) throws {
        digest.update(UnsafeRawBufferPointer(start: buffer, count: count))
        try writeAll(STDOUT_FILENO, buffer, count)
        written += UInt64(count)
        marks.passed(written)
    }
    DumpGenerator.header.withUnsafeBytes { raw in
        if let b = raw.baseAddress { buffer.copyMemory(from: b, byteCount: raw.count) }
    }
    var used = DumpGenerator.header.count
    // Rows while a whole buffer of them, the longest row and the tail still fit.
    let reserve = UInt64(fixedTail + 3 + DumpGenerator.maxRow)
    while true {
        let room = size - written - UInt64(used)
        if room <= reserve { break }
        let limit = Int(min(UInt64(bufferSize - used), room - reserve)) + DumpGenerator.maxRow
        used += generator.fillRows(buffer + used, capacity: limit)
        if used >= bufferSize - DumpGenerator.maxRow || size - written - UInt64(used) <= reserve {
            try emit(used)
            used = 0
        }
    }
    // The tail: "\.", a comment "--...-" to the exact size, the completion line.
    var tail = DumpGenerator.endOfCopy
    let pad = Int(size - written) - used - fixedTail
    tail += Array("--".utf8) + [UInt8](repeating: UInt8(ascii: "-"), count: pad - 3) + [UInt8(ascii: "\n")]
    tail += DumpGenerator.footer
    tail.withUnsafeBytes { raw in
        if let b = raw.baseAddress { (buffer + used).copyMemory(from: b, byteCount: raw.count) }
    }
    try emit(used + tail.count)
    guard written == size else { throw StreamToolError("wrote \(written) bytes, not \(size)") }
    return digest
}

/// Reads standard input to its end; it must be `size` bytes.
func count(size: UInt64, marks: TenthMarks) throws -> (UInt64, XXH64) {
    FileIO_enlargePipe(STDIN_FILENO)
    let buffer = UnsafeMutableRawPointer.allocate(byteCount: bufferSize, alignment: 64)
    defer { buffer.deallocate() }
    var digest = XXH64()
    var got: UInt64 = 0
    while true {
        let n = read(STDIN_FILENO, buffer, bufferSize)
        if n < 0 {
            if errno == EINTR { continue }
            throw StreamToolError("read failed: \(String(cString: strerror(errno)))")
        }
        if n == 0 { break }
        digest.update(UnsafeRawBufferPointer(start: buffer, count: n))
        got += UInt64(n)
        marks.passed(got)
    }
    return (got, digest)
}

/// F_SETPIPE_SZ to 1 MiB (a no-op on anything but a pipe), as dbbackup does.
func FileIO_enlargePipe(_ fd: Int32) { _ = dbb_set_pipe_size(fd, 1 << 20) }

func report(bytes: UInt64, digest: XXH64, since start: UInt64) {
    let seconds = Double(nowNanoseconds() - start) / 1e9
    let line = String(format: "bytes %llu xxh64 %016llx seconds %.3f\n", bytes, digest.finish(), seconds)
    FileHandle.standardError.write(Data(line.utf8))
}

do {
    let start = nowNanoseconds()
    switch mode {
    case "generate", "count":
        guard let size = parseSize(operand), size > 0 else { fail("cannot read SIZE '\(operand)'") }
        let marks = try TenthMarks(size: size, path: options["marks"])
        if mode == "generate" {
            guard let seed = UInt64(options["seed"] ?? "1") else { fail("--seed takes a number") }
            report(bytes: size, digest: try generate(size: size, seed: seed, marks: marks), since: start)
        } else {
            let (got, digest) = try count(size: size, marks: marks)
            report(bytes: got, digest: digest, since: start)
            if got != size { fail("read \(got) bytes, expected \(size)") }
        }
    case "watch":
        guard let pid = Int32(operand) else { fail("watch takes a process id") }
        let interval = Int(options["interval-ms"] ?? "20") ?? 20
        let peak = try MemoryWatch.run(pid: pid, intervalMilliseconds: max(1, interval), path: options["samples"])
        print("peak_rss_anon_kib \(peak.anon) peak_rss_file_kib \(peak.file) vm_hwm_kib \(peak.hwm) samples \(peak.samples)")
    default:
        fail(usage)
    }
} catch {
    fail("\(error)")
}
