#include "hex_codec.h"

#if defined(__SSE2__)
#include <emmintrin.h>

/// 0xFF in each byte of `c` between lo and hi (inclusive), as unsigned bytes.
static inline __m128i in_range(__m128i c, char lo, char hi) {
    __m128i t = _mm_sub_epi8(c, _mm_set1_epi8(lo));
    return _mm_cmpeq_epi8(_mm_min_epu8(t, _mm_set1_epi8((char)(hi - lo))), t);
}

/// The nibble values of 16 characters; `valid` gets 0xFF where a character is
/// a hex digit, `lower` and `upper` where it is a letter of that case.
static inline __m128i nibbles(__m128i c, __m128i *valid, __m128i *lower, __m128i *upper) {
    __m128i digit = in_range(c, '0', '9');
    *lower = in_range(c, 'a', 'f');
    *upper = in_range(c, 'A', 'F');
    *valid = _mm_or_si128(digit, _mm_or_si128(*lower, *upper));
    __m128i v = _mm_and_si128(digit, _mm_sub_epi8(c, _mm_set1_epi8('0')));
    v = _mm_or_si128(v, _mm_and_si128(*lower, _mm_sub_epi8(c, _mm_set1_epi8('a' - 10))));
    return _mm_or_si128(v, _mm_and_si128(*upper, _mm_sub_epi8(c, _mm_set1_epi8('A' - 10))));
}

/// Eight pairs of nibbles (first digit first in memory) as eight bytes in the
/// low halves of 16-bit lanes.
static inline __m128i join_pairs(__m128i v) {
    __m128i joined = _mm_or_si128(_mm_slli_epi16(v, 4), _mm_srli_epi16(v, 8));
    return _mm_and_si128(joined, _mm_set1_epi16(0x00FF));
}

size_t dbbackup_hex_pack_blocks(const uint8_t *in, size_t pairs, uint8_t *out, unsigned *cases) {
    size_t k = 0;
    unsigned seen = *cases;
    while (k + 16 <= pairs) {
        __m128i va, la, ua, vb, lb, ub;
        __m128i a = nibbles(_mm_loadu_si128((const __m128i *)(in + 2 * k)), &va, &la, &ua);
        __m128i b = nibbles(_mm_loadu_si128((const __m128i *)(in + 2 * k + 16)), &vb, &lb, &ub);
        if (_mm_movemask_epi8(_mm_and_si128(va, vb)) != 0xFFFF) break;
        unsigned found = seen | (_mm_movemask_epi8(_mm_or_si128(la, lb)) ? 2u : 0u)
            | (_mm_movemask_epi8(_mm_or_si128(ua, ub)) ? 4u : 0u);
        if ((found & 6u) == 6u) break;
        _mm_storeu_si128((__m128i *)(out + k), _mm_packus_epi16(join_pairs(a), join_pairs(b)));
        seen = found;
        k += 16;
    }
    *cases = seen;
    return k;
}

size_t dbbackup_hex_unpack_blocks(const uint8_t *in, size_t count, uint8_t *out, int upper) {
    const __m128i low_nibbles = _mm_set1_epi8(0x0F);
    const __m128i nine = _mm_set1_epi8(9);
    const __m128i gap = _mm_set1_epi8(upper ? 7 : 39);  // from '9' + 1 to 'A' or 'a'
    size_t k = 0;
    while (k + 16 <= count) {
        __m128i bytes = _mm_loadu_si128((const __m128i *)(in + k));
        __m128i high = _mm_and_si128(_mm_srli_epi16(bytes, 4), low_nibbles);
        __m128i low = _mm_and_si128(bytes, low_nibbles);
        // The first digit (the high nibble) first in memory.
        __m128i first = _mm_unpacklo_epi8(high, low), second = _mm_unpackhi_epi8(high, low);
        __m128i fl = _mm_and_si128(_mm_cmpgt_epi8(first, nine), gap);
        __m128i sl = _mm_and_si128(_mm_cmpgt_epi8(second, nine), gap);
        first = _mm_add_epi8(_mm_add_epi8(first, _mm_set1_epi8('0')), fl);
        second = _mm_add_epi8(_mm_add_epi8(second, _mm_set1_epi8('0')), sl);
        _mm_storeu_si128((__m128i *)(out + 2 * k), first);
        _mm_storeu_si128((__m128i *)(out + 2 * k + 16), second);
        k += 16;
    }
    return k;
}

#else

size_t dbbackup_hex_pack_blocks(const uint8_t *in, size_t pairs, uint8_t *out, unsigned *cases) {
    (void)in; (void)pairs; (void)out; (void)cases;
    return 0;
}

size_t dbbackup_hex_unpack_blocks(const uint8_t *in, size_t count, uint8_t *out, int upper) {
    (void)in; (void)count; (void)out; (void)upper;
    return 0;
}

#endif
