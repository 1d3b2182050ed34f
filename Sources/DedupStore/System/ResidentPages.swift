import CLinux
import Foundation

/// Drops the pages of a memory-mapped file from this process's resident set
/// (Linux: the mappings are found in /proc/self/maps, each unmapped with
/// madvise(MADV_DONTNEED)).
///
/// LMDB maps its files (the chunk index, gc's scratch mark set): every page a
/// lookup touches stays mapped, and counts in the process's RSS, until the kernel
/// reclaims it under pressure, so a pass over a large index shows the whole index
/// as resident. On a shared file mapping MADV_DONTNEED only unmaps: the pages stay
/// in the page cache (a dirty one keeps its changes and is written back as any
/// other), and the next access maps them again, a minor fault. What the process
/// reads afterwards is the same; only its RSS is what it uses, not all it touched.
enum ResidentPages {
    /// Gives the free pages inside the heap back to the system (glibc's
    /// malloc_trim): memory freed in small pieces (a year of WAL's backup ids,
    /// 525,600 strings) otherwise stays resident beneath what is still in use, and
    /// later work adds to it.
    static func releaseFreedHeap() {
        _ = dbb_release_free_heap()
    }

    /// Unmaps the resident pages of every mapping of `path` in this process, up to
    /// the file's size; returns the bytes of mapping released (0 when there is
    /// none, or the system has no /proc/self/maps).
    @discardableResult
    static func release(mappingsOf path: String) -> Int {
        guard let real = realpath(path, nil) else { return 0 }
        let canonical = String(cString: real)
        free(real)
        guard let fileSize = FileIO.fileSize(canonical), fileSize > 0,
            let maps = try? FileIO.readFile("/proc/self/maps")
        else { return 0 }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let used = (Int(fileSize) + page - 1) / page * page
        var released = 0
        // A line: start-end perms offset dev inode path.
        let lines = String(decoding: maps, as: UTF8.self).split(separator: "\n")
        for line in lines where line.hasSuffix(" " + canonical) {
            let fields = line.split(separator: " ", maxSplits: 5, omittingEmptySubsequences: true)
            guard fields.count == 6, fields[5].drop(while: { $0 == " " }) == canonical else { continue }
            let range = fields[0].split(separator: "-")
            guard range.count == 2, let start = UInt(range[0], radix: 16), let end = UInt(range[1], radix: 16),
                let offset = Int(fields[2], radix: 16), end > start, offset < used,
                let base = UnsafeMutableRawPointer(bitPattern: start)
            else { continue }
            let length = min(Int(end - start), used - offset)
            if madvise(base, length, MADV_DONTNEED) == 0 { released += length }
        }
        return released
    }
}
