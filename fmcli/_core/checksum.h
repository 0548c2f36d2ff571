/* checksum.h -- a fast, streaming 64-bit checksum of bytes.
 *
 * The binary cache (fmcli/data/cache.py) checks every chunk against the
 * checksum stored when it was written, on every read, so the check must
 * cost next to nothing beside an epoch: zlib's CRC-32 (about 2.5 GB/s here)
 * cost 5-6% of an FFM epoch on BENCH.md's data.  This one keeps eight
 * independent 64-bit accumulators; each takes one 8-byte word per 64-byte
 * stripe as  acc += lo32(v) * hi32(v) + w,  v = w ^ (key + stripe counter)
 * -- a 32x32->64 multiply per word, the kind of step of xxHash's XXH3 --
 * and the accumulators are mixed and avalanched at the end.  The counter
 * makes every word's contribution depend on its position, so moved blocks
 * change the sum as well as changed ones.  It detects accidental damage
 * (truncation, overwritten or zeroed blocks, flipped bits) like a 64-bit
 * hash; it is not cryptographic and does not try to resist a forger.
 *
 * Streaming: fm_ck_update may be called on pieces of any size; the result
 * is that of the whole.  Words are read in the host's byte order: a cache
 * is read on the machine that wrote it (its key names inputs by inode);
 * one from a host of the other byte order fails its checks and is rebuilt.
 */
#ifndef FMCLI_CHECKSUM_H
#define FMCLI_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define FM_CK_LANES 8
#define FM_CK_STRIPE (8 * FM_CK_LANES)
#define FM_CK_P1 0x9E3779B185EBCA87ULL
#define FM_CK_P2 0xC2B2AE3D27D4EB4FULL
#define FM_CK_P3 0x165667B19E3779F9ULL

static const uint64_t fm_ck_key[FM_CK_LANES] = {
    0x1cad21f72c81017cULL, 0xdb979083e96dd4deULL, 0x1f67b3b7a4a44072ULL, 0x78e5c0cc4ee679cbULL,
    0x2172ffcc7dd05a82ULL, 0x8e2443f7744608b8ULL, 0x4c263a81e69035e0ULL, 0xcb00c391bb52283cULL,
};

typedef struct {
    uint64_t acc[FM_CK_LANES];
    uint64_t counter;                  /* key offset of the next stripe */
    uint64_t total;                    /* bytes seen */
    unsigned char tail[FM_CK_STRIPE];  /* bytes of an unfinished stripe */
    size_t n_tail;
} fm_ck_state;

static inline void fm_ck_init(fm_ck_state *s, uint64_t seed)
{
    for (int j = 0; j < FM_CK_LANES; j++)
        s->acc[j] = seed ^ fm_ck_key[j];
    s->counter = 0;
    s->total = 0;
    s->n_tail = 0;
}

static inline void fm_ck_stripes(fm_ck_state *s, const unsigned char *p, size_t n_stripes)
{
    uint64_t acc[FM_CK_LANES], counter = s->counter;
    memcpy(acc, s->acc, sizeof acc);
    for (size_t i = 0; i < n_stripes; i++, p += FM_CK_STRIPE, counter += FM_CK_P1) {
        uint64_t w[FM_CK_LANES];
        memcpy(w, p, sizeof w);        /* unaligned-safe; plain loads on x86-64 and arm64 */
        for (int j = 0; j < FM_CK_LANES; j++) {
            uint64_t v = w[j] ^ (fm_ck_key[j] + counter);
            acc[j] += (v & 0xffffffffULL) * (v >> 32) + w[j];
        }
    }
    memcpy(s->acc, acc, sizeof acc);
    s->counter = counter;
}

static inline void fm_ck_update(fm_ck_state *s, const unsigned char *p, size_t n)
{
    s->total += n;
    if (s->n_tail) {
        size_t take = FM_CK_STRIPE - s->n_tail;
        if (take > n)
            take = n;
        memcpy(s->tail + s->n_tail, p, take);
        s->n_tail += take;
        p += take;
        n -= take;
        if (s->n_tail < FM_CK_STRIPE)
            return;
        fm_ck_stripes(s, s->tail, 1);
        s->n_tail = 0;
    }
    size_t whole = n / FM_CK_STRIPE;
    fm_ck_stripes(s, p, whole);
    p += whole * FM_CK_STRIPE;
    n -= whole * FM_CK_STRIPE;
    memcpy(s->tail, p, n);
    s->n_tail = n;
}

static inline uint64_t fm_ck_final(const fm_ck_state *s)
{
    fm_ck_state t = *s;
    if (t.n_tail) {                    /* the last stripe, zero-padded (the length is mixed in below) */
        memset(t.tail + t.n_tail, 0, FM_CK_STRIPE - t.n_tail);
        fm_ck_stripes(&t, t.tail, 1);
    }
    uint64_t h = t.total * FM_CK_P1;
    for (int j = 0; j < FM_CK_LANES; j++) {
        h ^= t.acc[j];
        h = ((h << 27) | (h >> 37)) * FM_CK_P1 + FM_CK_P2;
    }
    h ^= h >> 33;
    h *= FM_CK_P2;
    h ^= h >> 29;
    h *= FM_CK_P3;
    h ^= h >> 32;
    return h;
}

#endif
