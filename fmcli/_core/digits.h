/* digits.h -- short runs of decimal digits read eight bytes at a time.
 *
 * The text parser (_parse.pyx) spends most of its time on the ids of
 * field:feature:value tokens, read one byte at a time: a loop whose length
 * varies from token to token, so its exit is mispredicted about once per id.
 * Here an id of up to seven digits is found and converted with a few word
 * operations and no data-dependent branch:
 *
 *   - fm_leading_digits8 counts the digits at the start of eight bytes:
 *     subtracting '0' from every byte leaves 0..9 in the digits; a byte is
 *     not a digit when that difference is 10 or more, which adding 0x76
 *     carries into the byte's top bit (or when the difference wrapped, which
 *     sets the top bit itself).  Borrows and carries only ever move towards
 *     later bytes and start at a byte that is no digit, so the first flagged
 *     byte is exact.
 *   - fm_digits_value converts n (1..8) digits by shifting them to the end of
 *     the word, so that the bytes before them read as leading zeros, and
 *     combining neighbours in three multiply-and-shift steps: pairs of
 *     digits, then of pairs, then of quads (the usual SWAR conversion).
 *
 * Both read eight bytes, which the caller must make sure are readable.  The
 * word form needs a little-endian host; elsewhere the plain loops run.
 */
#ifndef FMCLI_DIGITS_H
#define FMCLI_DIGITS_H

#include <stdint.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && defined(__ORDER_LITTLE_ENDIAN__) && \
    __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__ && (defined(__GNUC__) || defined(__clang__))
#define FM_DIGITS_WORDS 1
#else
#define FM_DIGITS_WORDS 0
#endif

/* How many of the eight bytes at p are digits before the first one that is
 * not: 0..8. */
static inline int fm_leading_digits8(const unsigned char *p)
{
#if FM_DIGITS_WORDS
    uint64_t w, x, m;
    memcpy(&w, p, 8);
    x = w - 0x3030303030303030ULL;
    m = ((x + 0x7676767676767676ULL) | x) & 0x8080808080808080ULL;
    return m ? (int)(__builtin_ctzll(m) >> 3) : 8;
#else
    int n = 0;
    while (n < 8 && p[n] >= '0' && p[n] <= '9')
        n++;
    return n;
#endif
}

/* The value of the n digits at p, 1 <= n <= 8 (p has eight readable bytes). */
static inline uint32_t fm_digits_value(const unsigned char *p, int n)
{
#if FM_DIGITS_WORDS
    uint64_t w;
    memcpy(&w, p, 8);
    w = (w - 0x3030303030303030ULL) << (8 * (8 - n));
    w = (w * 10 + (w >> 8)) & 0x00FF00FF00FF00FFULL;            /* pairs: 0..99 */
    w = (w * 100 + (w >> 16)) & 0x0000FFFF0000FFFFULL;          /* quads: 0..9999 */
    return (uint32_t)((w * 10000 + (w >> 32)) & 0xFFFFFFFFULL); /* eight digits */
#else
    uint32_t v = 0;
    for (int i = 0; i < n; i++)
        v = v * 10 + (uint32_t)(p[i] - '0');
    return v;
#endif
}

#endif
