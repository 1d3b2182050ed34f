// Sixteen-byte-wide kernels of the hex packing transform (HexPacking.swift):
// plain C with SSE2 (every x86-64 has it), because Swift's generic SIMD types
// do not compile to vector code here (docs/PERFORMANCE.md, issue 15).
#ifndef DBBACKUP_HEX_CODEC_H
#define DBBACKUP_HEX_CODEC_H

#include <stddef.h>
#include <stdint.h>

/// Packs the hex digit pairs at `in` (at most `pairs` of them) into `out`, one
/// byte a pair, sixteen pairs at a time, for as long as all 32 characters of a
/// block are hex digits and its letters keep to one case together with `*cases`
/// (bits: 2 a lowercase letter seen, 4 an uppercase one; updated).
/// Returns how many pairs it packed, a multiple of 16: the caller packs the rest
/// of the run, and finds where it ends, one pair at a time. 0 where SSE2 is absent.
size_t dbbackup_hex_pack_blocks(const uint8_t *in, size_t pairs, uint8_t *out, unsigned *cases);

/// Writes the two lowercase (or, with `upper`, uppercase) hex digits of each of
/// the first `count` bytes at `in` to `out`, sixteen bytes at a time, and returns
/// how many bytes it wrote out (a multiple of 16; the caller writes the rest).
size_t dbbackup_hex_unpack_blocks(const uint8_t *in, size_t count, uint8_t *out, int upper);

#endif
