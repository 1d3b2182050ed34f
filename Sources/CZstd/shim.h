// The experimental section too, for one decoder parameter (below); the library
// is Debian 12's libzstd 1.5.4, fixed for this product.
#define ZSTD_STATIC_LINKING_ONLY
#include <zstd.h>
#include <zstd_errors.h>

/// Whether `dctx` checks each frame's content checksum (ZSTD_d_forceIgnoreChecksum,
/// stable since zstd 1.4.7): a delta chain's inner links are checked by the last
/// link's checksum instead.
static inline size_t dbbackup_zstd_check_checksums(ZSTD_DCtx *dctx, int check) {
    return ZSTD_DCtx_setParameter(dctx, ZSTD_d_forceIgnoreChecksum,
                                  check ? ZSTD_d_validateChecksum : ZSTD_d_ignoreChecksum);
}
