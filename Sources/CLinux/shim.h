// Linux calls that Swift's Glibc module leaves out (they need _GNU_SOURCE).
#ifndef DBBACKUP_CLINUX_SHIM_H
#define DBBACKUP_CLINUX_SHIM_H
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <fcntl.h>
#include <errno.h>
#include <malloc.h>

/// fallocate(2) with mode 0: 0, or -1 with errno set.
static inline int dbb_fallocate(int fd, long long offset, long long length) {
    return fallocate(fd, 0, (off_t)offset, (off_t)length);
}

/// sync_file_range(2) with SYNC_FILE_RANGE_WRITE: starts writeback, does not wait.
static inline int dbb_start_writeback(int fd, long long offset, long long length) {
    return sync_file_range(fd, (off_t)offset, (off_t)length, SYNC_FILE_RANGE_WRITE);
}

/// malloc_trim(3) with no padding: returns the heap's free pages to the system.
static inline int dbb_release_free_heap(void) {
    return malloc_trim(0);
}

/// The O_DIRECT flag of open(2) and fcntl(F_SETFL): I/O that bypasses the page cache.
static inline int dbb_o_direct(void) {
    return O_DIRECT;
}

/// fcntl(F_SETPIPE_SZ): the new size, or -1.
static inline int dbb_set_pipe_size(int fd, int size) {
    return fcntl(fd, F_SETPIPE_SZ, size);
}
/// Buffers of `bytes` or more are mapped and unmapped by malloc itself, not kept
/// in its heaps: fixes glibc's threshold, which otherwise rises with each large
/// free until the transient buffers of every backup stay resident. 1, or 0.
static inline int dbb_set_mmap_threshold(int bytes) {
    return mallopt(M_MMAP_THRESHOLD, bytes);
}

#endif
