/// A pg_dump-like plain SQL stream of any length that never repeats itself: one
/// COPY block of `events` rows (an increasing id, an account, a kind, an amount,
/// a time that moves forward, a note of 2 to 9 words from 1024), between a dump's
/// header and its completion line. Every row differs (its id), so no chunk is
/// stored twice, and the text compresses about as a real dump does (zstd -3:
/// see the stored size in docs/PERFORMANCE.md). Deterministic from the seed.
///
/// Rows are written straight into the caller's buffer through a pointer: words are
/// copied 16 bytes at a time from a padded table, numbers through a two-digit
/// table, one SplitMix64 draw feeds several fields. That keeps it several times
/// faster than a backup can ingest (tools/bench-stream measures it alone).
final class DumpGenerator {
    static let header = Array(
        """
        --
        -- PostgreSQL database dump
        --

        -- Dumped from database version 15.10
        -- Dumped by pg_dump version 15.10

        SET statement_timeout = 0;
        SET client_encoding = 'UTF8';
        SET standard_conforming_strings = on;

        CREATE TABLE public.events (
            id bigint NOT NULL,
            account_id integer NOT NULL,
            kind text NOT NULL,
            amount numeric(12,2) NOT NULL,
            created_at timestamp with time zone NOT NULL,
            note text
        );

        COPY public.events (id, account_id, kind, amount, created_at, note) FROM stdin;

        """.utf8)
    static let endOfCopy = Array("\\.\n".utf8)
    static let footer = Array("\n--\n-- PostgreSQL database dump complete\n--\n\n".utf8)
    /// More than the longest row `writeRow` writes (216 bytes) and the 16 bytes a word copy may overrun.
    static let maxRow = 256

    private var state: UInt64
    // The tables behind pointers (no bounds checks or copies in the row loop),
    // allocated once in init and freed in deinit.
    /// 1024 words in 16-byte slots (two UInt64 each), and their lengths.
    private let wt: UnsafeMutablePointer<UInt64>
    private let wl: UnsafeMutablePointer<UInt8>
    /// The 16 kinds, likewise.
    private let kt: UnsafeMutablePointer<UInt64>
    private let kl: UnsafeMutablePointer<UInt8>
    /// "00" to "99" as little-endian UInt16.
    private let dt: UnsafeMutablePointer<UInt16>
    /// The id, as ASCII digits right-aligned in 20 bytes, from `idStart`.
    private let idDigits: UnsafeMutablePointer<UInt8>
    private var idStart = 19
    /// Seconds since 2026-01-01 00:00 UTC, and the "YYYY-MM-DD " of its day (11 bytes).
    private var seconds: UInt64 = 0
    private var day: UInt64 = .max
    private let datePrefix: UnsafeMutablePointer<UInt8>
    private static let kinds = [
        "purchase", "refund", "login", "logout", "view", "search", "signup", "transfer",
        "deposit", "withdrawal", "review", "support", "invoice", "payment", "shipment", "return",
    ]

    init(seed: UInt64) {
        state = seed &* 0x9E37_79B9_7F4A_7C15 &+ 0x6462_6261
        dt = .allocate(capacity: 100)
        for n in 0..<100 {
            dt[n] = UInt16(UInt8(ascii: "0") + UInt8(n / 10)) | UInt16(UInt8(ascii: "0") + UInt8(n % 10)) << 8
        }
        idDigits = .allocate(capacity: 20)
        idDigits.initialize(repeating: UInt8(ascii: "0"), count: 20)
        datePrefix = .allocate(capacity: 16)
        datePrefix.initialize(repeating: 0, count: 16)
        wt = .allocate(capacity: 2 * 1024)
        wl = .allocate(capacity: 1024)
        kt = .allocate(capacity: 2 * Self.kinds.count)
        kl = .allocate(capacity: Self.kinds.count)
        // 1024 pseudo-words of 2 to 6 syllables, from a fixed syllable table (not the seed).
        let syllables = ["ka", "lo", "mi", "ne", "ru", "sa", "te", "vo", "da", "fi", "go", "hu", "je", "pa", "qui",
                         "ro", "st", "ar", "en", "il", "on", "ul", "bra", "cre", "dri", "pro", "tra", "ment", "ion",
                         "er", "ly", "ing"]
        var g: UInt64 = 0x7365_6564
        for i in 0..<1024 {
            var w = [UInt8]()
            let r = Self.mix(&g)
            let n = 2 + Int(r % 5)
            for k in 0..<n { w += Array(syllables[Int((r >> (8 + 5 * UInt64(k))) & 31)].utf8) }
            Self.slot(Array(w.prefix(15)), wt + 2 * i, wl + i)
        }
        for (i, k) in Self.kinds.enumerated() { Self.slot(Array(k.utf8), kt + 2 * i, kl + i) }
    }

    deinit {
        for p in [UnsafeMutableRawPointer(wt), UnsafeMutableRawPointer(wl), UnsafeMutableRawPointer(kt),
                  UnsafeMutableRawPointer(kl), UnsafeMutableRawPointer(dt), UnsafeMutableRawPointer(idDigits),
                  UnsafeMutableRawPointer(datePrefix)] { p.deallocate() }
    }

    /// A word of at most 15 bytes padded into two UInt64 at `slot`, its length at `length`.
    private static func slot(_ w: [UInt8], _ slot: UnsafeMutablePointer<UInt64>, _ length: UnsafeMutablePointer<UInt8>) {
        let padded = w + [UInt8](repeating: 0, count: 16 - w.count)
        padded.withUnsafeBytes { raw in
            slot[0] = raw.loadUnaligned(fromByteOffset: 0, as: UInt64.self)
            slot[1] = raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
        }
        length.pointee = UInt8(w.count)
    }

    @inline(__always) private static func mix(_ state: inout UInt64) -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Writes whole rows into `out` while at least `maxRow` bytes are left; returns the bytes written.
    func fillRows(_ out: UnsafeMutableRawPointer, capacity: Int) -> Int {
        var used = 0
        while capacity - used >= Self.maxRow { used += writeRow(out + used) }
        return used
    }

    @inline(__always)
    private func writeRow(_ p: UnsafeMutableRawPointer) -> Int {
        let tab = UInt8(ascii: "\t")
        var n = 0
        // id
        incrementID()
        p.copyMemory(from: idDigits + idStart, byteCount: 20 - idStart)
        n += 20 - idStart
        p.storeBytes(of: tab, toByteOffset: n, as: UInt8.self); n += 1
        var st = state
        defer { state = st }
        let r1 = Self.mix(&st), r2 = Self.mix(&st)
        // account_id: 1 to 2^20
        n += decimal(1 + (r1 & 0xF_FFFF), p + n)
        p.storeBytes(of: tab, toByteOffset: n, as: UInt8.self); n += 1
        // kind
        let k = Int((r1 >> 20) & 15)
        p.storeBytes(of: kt[2 * k], toByteOffset: n, as: UInt64.self)
        p.storeBytes(of: kt[2 * k + 1], toByteOffset: n + 8, as: UInt64.self)
        n += Int(kl[k])
        p.storeBytes(of: tab, toByteOffset: n, as: UInt8.self); n += 1
        // amount: 0.00 to 10485.75
        let cents = (r1 >> 24) & 0xF_FFFF
        n += decimal(cents / 100, p + n)
        p.storeBytes(of: UInt8(ascii: "."), toByteOffset: n, as: UInt8.self)
        p.storeBytes(of: dt[Int(cents % 100)], toByteOffset: n + 1, as: UInt16.self)
        n += 3
        p.storeBytes(of: tab, toByteOffset: n, as: UInt8.self); n += 1
        // created_at: moves forward 0 to 3 seconds a row
        seconds += (r1 >> 44) & 3
        n += writeTime(p + n)
        p.storeBytes(of: tab, toByteOffset: n, as: UInt8.self); n += 1
        // note: 2 to 9 words
        let count = 2 + Int((r1 >> 46) & 7)
        var bits = r2
        for w in 0..<count {
            if w == 6 { bits = Self.mix(&st) }
            let i = Int(bits & 1023)
            bits >>= 10
            p.storeBytes(of: wt[2 * i], toByteOffset: n, as: UInt64.self)
            p.storeBytes(of: wt[2 * i + 1], toByteOffset: n + 8, as: UInt64.self)
            n += Int(wl[i])
            p.storeBytes(of: w == count - 1 ? UInt8(ascii: "\n") : UInt8(ascii: " "), toByteOffset: n, as: UInt8.self)
            n += 1
        }
        return n
    }

    private func incrementID() {
        var i = 19
        while true {
            if idDigits[i] == UInt8(ascii: "9") {
                idDigits[i] = UInt8(ascii: "0")
                i -= 1
            } else {
                idDigits[i] += 1
                break
            }
        }
        idStart = min(idStart, i)
    }

    /// `v` in decimal at `p`; returns its length.
    @inline(__always)
    private func decimal(_ v: UInt64, _ p: UnsafeMutableRawPointer) -> Int {
        var digits = 1
        var t = v
        while t >= 10 { t /= 10; digits += 1 }
        var x = v
        var at = digits
        while at >= 2 {
            p.storeBytes(of: dt[Int(x % 100)], toByteOffset: at - 2, as: UInt16.self)
            x /= 100
            at -= 2
        }
        if at == 1 { p.storeBytes(of: UInt8(ascii: "0") + UInt8(x), toByteOffset: 0, as: UInt8.self) }
        return digits
    }

    /// "YYYY-MM-DD hh:mm:ss+00" (22 bytes).
    @inline(__always)
    private func writeTime(_ p: UnsafeMutableRawPointer) -> Int {
        let d = seconds / 86400
        if d != day { setDay(d) }
        p.copyMemory(from: datePrefix, byteCount: 11)
        let s = seconds % 86400
        p.storeBytes(of: dt[Int(s / 3600)], toByteOffset: 11, as: UInt16.self)
        p.storeBytes(of: UInt8(ascii: ":"), toByteOffset: 13, as: UInt8.self)
        p.storeBytes(of: dt[Int((s / 60) % 60)], toByteOffset: 14, as: UInt16.self)
        p.storeBytes(of: UInt8(ascii: ":"), toByteOffset: 16, as: UInt8.self)
        p.storeBytes(of: dt[Int(s % 60)], toByteOffset: 17, as: UInt16.self)
        p.storeBytes(of: UInt8(ascii: "+"), toByteOffset: 19, as: UInt8.self)
        p.storeBytes(of: dt[0], toByteOffset: 20, as: UInt16.self)
        return 22
    }

    /// The civil date of day `d` after 2026-01-01 (Howard Hinnant's days-to-civil).
    private func setDay(_ d: UInt64) {
        day = d
        let z = Int64(d) + 20454 + 719_468  // 2026-01-01 is day 20454 of the Unix epoch
        let era = z / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let dd = doy - (153 * mp + 2) / 5 + 1
        let mm = mp < 10 ? mp + 3 : mp - 9
        let yy = yoe + era * 400 + (mm <= 2 ? 1 : 0)
        let text = String(format: "%04lld-%02lld-%02lld ", yy, mm, dd)
        for (i, b) in text.utf8.prefix(11).enumerated() { datePrefix[i] = b }
    }
}
