import Foundation
import Testing
@testable import DedupStore

/// `ResidentPages`: a mapped file's pages leave the resident set, and read back
/// the same (from the page cache).
@Suite struct ResidentPagesTests {
    /// This process's RssFile, in bytes.
    func rssFile() throws -> Int {
        let status = String(decoding: try FileIO.readFile("/proc/self/status"), as: UTF8.self)
        let line = try #require(status.split(separator: "\n").first { $0.hasPrefix("RssFile:") })
        return try #require(Int(line.split(separator: " ").dropFirst().first ?? "")) * 1024
    }

    @Test(arguments: [PROT_READ, PROT_READ | PROT_WRITE])
    func releasedPagesLeaveTheResidentSetAndReadTheSame(protection: Int32) throws {
        let dir = TempDir()
        let path = dir.sub("mapped")
        let size = 32 << 20
        try writeFile(path, randomBytes(size, seed: 3))
        let fd = open(path, protection & PROT_WRITE != 0 ? O_RDWR : O_RDONLY)
        defer { close(fd) }
        let map = try #require(mmap(nil, size, protection, MAP_SHARED, fd, 0))
        try #require(map != MAP_FAILED)
        defer { munmap(map, size) }
        func sum() -> Int {
            stride(from: 0, to: size, by: 4096).reduce(0) { $0 &+ Int(map.load(fromByteOffset: $1, as: UInt8.self)) }
        }
        if protection & PROT_WRITE != 0 {
            // A dirty page keeps its change.
            map.storeBytes(of: 0xAB, toByteOffset: 12_345, as: UInt8.self)
        }
        let first = sum()
        let before = try rssFile()
        #expect(ResidentPages.release(mappingsOf: path) == size)
        let after = try rssFile()
        #expect(before - after >= 24 << 20, "RssFile \(before) -> \(after)")
        #expect(sum() == first)
        if protection & PROT_WRITE != 0 {
            #expect(map.load(fromByteOffset: 12_345, as: UInt8.self) == 0xAB)
            #expect(try FileIO.readFile(path)[12_345] == 0xAB, "the file has the change")
        }
        #expect(ResidentPages.release(mappingsOf: dir.sub("not-mapped")) == 0)
    }
}
