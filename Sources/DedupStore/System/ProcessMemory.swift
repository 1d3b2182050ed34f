import CLinux

/// How the process uses memory, set once at start by each executable.
public enum ProcessMemory {
    /// Large buffers (1 MiB and up: batches, arenas) are mapped per allocation and
    /// returned at free. glibc's default threshold rises with each large free, after
    /// which such buffers come from its heaps and stay resident: a process making
    /// many backups (`binlog archive --watch`, dbbackup-gen) grew by ~20 KiB per
    /// backup (184 MiB after 3,000 backups, 36 MiB with this), and ran 2.8x slower.
    public static func configure() {
        _ = dbb_set_mmap_threshold(1 << 20)
    }
}
