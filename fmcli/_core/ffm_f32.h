/* Float32 fast path of the FFM pair loops (forward and per-row update).
 *
 * Same mathematics as the generic Cython loops in _kernels.pyx and
 * _optim.pxd (which remain the reference, run for float64, mini-batches and
 * clipped gradients), except that the AdaGrad step uses the CPU's
 * reciprocal-square-root estimate like libffm unless `refine` asks for
 * float32 precision (see fm_rsqrt_ps); here the k-vectors are processed
 * four lanes at a time with SSE so that a pair costs a few dozen
 * instructions.  The optimizer steps are opt_f32.h's: these loops compute
 * the gradients and hand them to its functions.  Factor blocks are kp
 * floats (kp a multiple of 4) followed by the optimizer's state slots of kp
 * values each; block (j, f) starts at F + (j * m + f) * fs.  Entries whose feature or field is outside the model
 * are skipped, exactly as in the generic loops.
 *
 * Without SSE the same loops run on scalars.
 */
#ifndef FMCLI_FFM_F32_H
#define FMCLI_FFM_F32_H

#include "opt_f32.h"   /* the optimizer steps; fm_idx, FM_SSE, FM_AVX, FM_INLINE */

/* A row is first compacted by fm_ffm_prepare: entries outside the model are
 * dropped and, for each kept entry i, oj[i] = j_i * m * fs (start of the
 * feature's blocks), of[i] = f_i * fs (offset of a field's block) and
 * xs[i] = x_i * scale.  Then for a pair i < l
 *     w1 = block(j_i, f_l) = F + oj[i] + of[l]
 *     w2 = block(j_l, f_i) = F + oj[l] + of[i]
 * so the pair loops do no range tests and no multiplications for addresses.
 * The loops are written once with kp as a parameter and instantiated for the
 * common k (4, 8, 16) as constants, which removes the inner loop. */

static inline fm_idx fm_ffm_prepare(fm_idx n, fm_idx m, fm_idx fs, const int *fld,
                                    const int *feat, const float *val, fm_idx nnz, float scale,
                                    fm_idx *oj, fm_idx *of, float *xs) {
    fm_idx c = 0;
    for (fm_idx i = 0; i < nnz; i++) {
        if (feat[i] >= n || fld[i] >= m) continue;
        oj[c] = (fm_idx)feat[i] * m * fs;
        of[c] = (fm_idx)fld[i] * fs;
        xs[c] = val[i] * scale;
        c++;
    }
    return c;
}

/* Ask the CPU to start loading the factor rows (row_bytes each) of the
 * features of a row about to be scored: a row's pairs read blocks of every
 * one of its features, scattered over the model.
 *
 * The prefetch helpers are FM_INLINE (always inlined): GCC counts
 * __builtin_prefetch as no side effect, so a helper it does not inline
 * early is found to have none and its calls are deleted (GCC 12 did so to
 * fm_prefetch_features_hot, hot.h: no prefetch at all for two threads). */
FM_INLINE void fm_prefetch_features(const void *F, fm_idx row_bytes, const int *feat, fm_idx nnz,
                                        fm_idx n) {
#if defined(__GNUC__)
    for (fm_idx i = 0; i < nnz; i++) {
        if (feat[i] >= n) continue;
        const char *p = (const char *)F + (fm_idx)feat[i] * row_bytes;
        for (fm_idx off = 0; off < row_bytes; off += 64) __builtin_prefetch(p + off, 0, 1);
    }
#else
    (void)F; (void)row_bytes; (void)feat; (void)nnz; (void)n;
#endif
}

/* Ask the CPU to start loading `bytes` bytes at p: a row's entries (its
 * slice of the batch's field, feature and value arrays), rows ahead of its
 * turn.  Training visits the rows in a shuffled order, so every row's
 * entries are a cache miss (and often a TLB miss) that its scoring waits
 * for before it can even start its own misses on the factor blocks. */
FM_INLINE void fm_prefetch_span(const void *p, fm_idx bytes) {
#if defined(__GNUC__)
    const char *c = (const char *)p;
    for (fm_idx off = 0; off < bytes; off += 64) __builtin_prefetch(c + off, 0, 3);
    if (bytes > 0) __builtin_prefetch(c + bytes - 1, 0, 3);
#else
    (void)p; (void)bytes;
#endif
}

/* Ask the CPU to start loading the linear weights (and their state) of the
 * features of a row about to be trained, `stride` floats per feature, for
 * writing: the streams of factor blocks in between evict them from the core's
 * caches, and each would otherwise be a miss that the row's score waits for. */
FM_INLINE void fm_prefetch_linear(const float *L, fm_idx stride, const int *feat, fm_idx nnz, fm_idx n) {
#if defined(__GNUC__)
    for (fm_idx i = 0; i < nnz; i++)
        if (feat[i] < n) __builtin_prefetch(L + (fm_idx)feat[i] * stride, 1, 3);
#else
    (void)L; (void)stride; (void)feat; (void)nnz; (void)n;
#endif
}

/* While a row is scored for training, each block's optimizer state (floats
 * kp to fs of a block of fs floats, where they spill past the weights'
 * cache line) is prefetched for writing: the update that follows
 * reads and writes it.  The scoring loop's loads are independent of one
 * another and keep many cache misses in flight; the update's are not, and
 * without this it waits on every state line it meets in turn (a model of
 * more than the last-level cache).  fs = 0: nothing (scoring alone). */
#if defined(__GNUC__)
#define FM_PF_STATE(P, KP, FS) do { \
        if (FS) { \
            for (fm_idx d_ = (KP); d_ < (FS); d_ += 16) __builtin_prefetch((P) + d_, 1, 3); \
            if (((FS) - (KP)) % 16) __builtin_prefetch((P) + (FS) - 1, 1, 3); \
        } \
    } while (0)
#else
#define FM_PF_STATE(P, KP, FS) do { (void)(P); } while (0)
#endif

/* The forward loops' walk over the pairs of a prepared row, with two
 * accumulators that the pairs alternate between: one alone makes every
 * pair wait for the previous pair's addition (its latency, not the loads
 * and multiplications, bounds a single chain).  PAIR(A, L) adds pair
 * (i, L) to accumulator A, given row1 = F + oj[i], col1 = F + of[i] and
 * x1 = xs[i] (T: the element type of F's bytes as the loop sees them). */
#define FM_PAIR_LOOP(T, PAIR) \
    for (fm_idx i = 0; i < c; i++) { \
        const T *row1 = F + oj[i]; \
        const T *col1 = F + of[i]; \
        const float x1 = xs[i]; \
        fm_idx l = i + 1; \
        for (; l + 1 < c; l += 2) { \
            PAIR(acc, l); \
            PAIR(acc2, l + 1); \
        } \
        if (l < c) PAIR(acc, l); \
    }

/* The update loops' walk over the pairs of a prepared row: the statements
 * given run for every pair i < l with w1 = block(j_i, f_l) = F + oj[i] +
 * of[l], w2 = block(j_l, f_i) and kv = kappa x_i x_l (with U, the row's one
 * product ku: see fm_uniform), and may `continue` to the next pair. */
#define FM_UPDATE_PAIRS(...) \
    for (fm_idx i = 0; i < c; i++) { \
        float *row1 = F + oj[i]; \
        float *col1 = F + of[i]; \
        const float kx1 = kappa * xs[i]; \
        for (fm_idx l = i + 1; l < c; l++) { \
            float *w1 = row1 + of[l]; \
            float *w2 = col1 + oj[l]; \
            const float kv = U ? ku : kx1 * xs[l]; \
            __VA_ARGS__ \
        } \
    }

FM_INLINE float ffm_pairs(const float *F, const fm_idx kp, const fm_idx *oj, const fm_idx *of,
                          const float *xs, fm_idx c, const int U, const fm_idx fs) {
    const float vu = c ? xs[0] * xs[0] : 0.0f;   /* U: every pair's x_i x_l */
#if FM_SSE
    __m128 acc = _mm_setzero_ps(), acc2 = _mm_setzero_ps();
    const __m128 vu4 = _mm_set1_ps(vu);
#define FM_PAIR(A, L) do { \
        const float *w1 = row1 + of[L], *w2 = col1 + oj[L]; \
        const __m128 vv = U ? vu4 : _mm_set1_ps(x1 * xs[L]); \
        FM_PF_STATE(w1, kp, fs); FM_PF_STATE(w2, kp, fs); \
        for (fm_idx d = 0; d < kp; d += 4) \
            A = _mm_add_ps(A, _mm_mul_ps(_mm_mul_ps(_mm_loadu_ps(w1 + d), _mm_loadu_ps(w2 + d)), vv)); \
    } while (0)
#else
    float acc = 0.0f, acc2 = 0.0f;
#define FM_PAIR(A, L) do { \
        const float *w1 = row1 + of[L], *w2 = col1 + oj[L]; \
        const float v = U ? vu : x1 * xs[L]; \
        FM_PF_STATE(w1, kp, fs); FM_PF_STATE(w2, kp, fs); \
        for (fm_idx d = 0; d < kp; d++) A += w1[d] * w2[d] * v; \
    } while (0)
#endif
    FM_PAIR_LOOP(float, FM_PAIR)
#undef FM_PAIR
#if FM_SSE
    acc = _mm_add_ps(acc, acc2);
    acc = _mm_add_ps(acc, _mm_movehl_ps(acc, acc));
    acc = _mm_add_ss(acc, _mm_shuffle_ps(acc, acc, 1));
    return _mm_cvtss_f32(acc);
#else
    return acc + acc2;
#endif
}

/* Per-row pair updates for every optimizer: for each pair i < l in row order
 *   g1 = lam*w1 + kv*w2,  g2 = lam*w2 + kv*w1   (from the values before the pair)
 * then w1 is stepped with g1 and w2 with g2.  When both are the same block
 * (a feature repeated within one field) the two steps apply one after the
 * other to it.  The step rules are those of _optim.pxd (their reference),
 * four lanes at a time (fm_step_ps; without SSE one, fm_step_1).  Blocks
 * are kp weights followed by the optimizer's state slots, kp values each
 * (AdaGrad: G; Adam: m, v; FTRL: z, n).  `eta` is the step's size (Adam:
 * bias-corrected; FTRL: alpha); `refine` is AdaGrad's exact 1/sqrt (see
 * fm_rsqrt_ps). */
FM_INLINE void ffm_update(const int kind, const int refine, const int U, float *F, const fm_idx kp,
                          const fm_idx *oj, const fm_idx *of, const float *xs, fm_idx c, float kappa,
                          float lam, const fm_step_params *params) {
    const float ku = c ? kappa * xs[0] * xs[0] : 0.0f;   /* U: every pair's kappa x_i x_l */
    /* A local copy: stores through the weight pointers cannot alias it. */
    const fm_step_params local = *params, *p = &local;
#if FM_SSE
    const __m128 la = _mm_set1_ps(lam);
#endif
    for (fm_idx i = 0; i < c; i++) {
        float *row1 = F + oj[i];
        float *col1 = F + of[i];
        const float kx1 = kappa * xs[i];
        for (fm_idx l = i + 1; l < c; l++) {
            float *w1 = row1 + of[l];
            float *w2 = col1 + oj[l];
            const float kv = U ? ku : kx1 * xs[l];
#if FM_SSE
            const __m128 k = _mm_set1_ps(kv);
            for (fm_idx d = 0; d < kp; d += 4) {
                __m128 a = _mm_loadu_ps(w1 + d), b = _mm_loadu_ps(w2 + d);
                __m128 g1 = _mm_add_ps(_mm_mul_ps(la, a), _mm_mul_ps(k, b));
                __m128 g2 = _mm_add_ps(_mm_mul_ps(la, b), _mm_mul_ps(k, a));
                a = fm_step_ps(kind, refine, a, w1 + kp + d, kp, g1, p);
                _mm_storeu_ps(w1 + d, a);
                if (w1 == w2) b = a;
                _mm_storeu_ps(w2 + d, fm_step_ps(kind, refine, b, w2 + kp + d, kp, g2, p));
            }
#else
            (void)refine;
            for (fm_idx d = 0; d < kp; d++) {
                const float a = w1[d], b = w2[d];
                const float g1 = lam * a + kv * b, g2 = lam * b + kv * a;
                w1[d] = fm_step_1(kind, a, w1 + kp + d, kp, g1, p);
                w2[d] = fm_step_1(kind, w1 == w2 ? w1[d] : b, w2 + kp + d, kp, g2, p);
            }
#endif
        }
    }
}

/* Row-wise AdaGrad (--optimizer rowwise-adagrad): one accumulator per block,
 * right after its kp weights (a block is kp + 1 floats), and for a block
 * with gradient g
 *     G += (sum_d g_d^2) / k;   w -= eta * g / sqrt(G)
 * so every weight of a block takes the same step size.  The 1/sqrt is the
 * CPU's estimate unless `refine` (see fm_rsqrt_ps).  The rule's pieces are
 * opt_f32.h's (fm_sqsum_*, fm_rowada_rate_*, fm_rate_step_*; fm_rowada_f32
 * steps one block); the pair loops below step FFM's two blocks of a pair
 * as ffm_update does (gradients from the values before the pair, then w1,
 * then w2, which sees w1's step when they are one block). */
/* Row-wise AdaGrad on every pair of a prepared row (blocks of kp + 1). */
FM_INLINE void ffm_rowada_update(const int refine, const int U, float *F, const fm_idx kp, const fm_idx *oj,
                                 const fm_idx *of, const float *xs, fm_idx c, float kappa, float lam, float eta,
                                 float inv_k) {
    const float ku = c ? kappa * xs[0] * xs[0] : 0.0f;
#if FM_SSE
    const __m128 la = _mm_set1_ps(lam), e = _mm_set1_ps(eta), ik = _mm_set1_ps(inv_k);
    FM_UPDATE_PAIRS(
        const __m128 k = _mm_set1_ps(kv);
        /* squares summed per lane over the even and the odd groups of four,
         * then the two added (the AVX loop's eight lanes, in its order) */
        __m128 s1[2] = {_mm_setzero_ps(), _mm_setzero_ps()}, s2[2] = {_mm_setzero_ps(), _mm_setzero_ps()};
        for (fm_idx d = 0; d < kp; d += 4) {
            __m128 a = _mm_loadu_ps(w1 + d), b = _mm_loadu_ps(w2 + d);
            __m128 g1 = _mm_add_ps(_mm_mul_ps(la, a), _mm_mul_ps(k, b));
            __m128 g2 = _mm_add_ps(_mm_mul_ps(la, b), _mm_mul_ps(k, a));
            s1[(d >> 2) & 1] = fm_sqsum_ps(s1[(d >> 2) & 1], g1);
            s2[(d >> 2) & 1] = fm_sqsum_ps(s2[(d >> 2) & 1], g2);
        }
        /* w2's accumulator is read after w1's is stored: one block, both adds */
        const __m128 q1 = kp > 4 ? _mm_add_ps(s1[0], s1[1]) : s1[0];
        const __m128 r1 = fm_rowada_rate_ps(w1 + kp, fm_hsum4_ps(q1), ik, refine);
        const __m128 q2 = kp > 4 ? _mm_add_ps(s2[0], s2[1]) : s2[0];
        const __m128 r2 = fm_rowada_rate_ps(w2 + kp, fm_hsum4_ps(q2), ik, refine);
        for (fm_idx d = 0; d < kp; d += 4) {
            __m128 a = _mm_loadu_ps(w1 + d), b = _mm_loadu_ps(w2 + d);
            __m128 g1 = _mm_add_ps(_mm_mul_ps(la, a), _mm_mul_ps(k, b));
            __m128 g2 = _mm_add_ps(_mm_mul_ps(la, b), _mm_mul_ps(k, a));
            a = fm_rate_step_ps(a, g1, e, r1);
            _mm_storeu_ps(w1 + d, a);
            if (w1 == w2) b = a;
            _mm_storeu_ps(w2 + d, fm_rate_step_ps(b, g2, e, r2));
        }
    )
#else
    (void)refine;
    for (fm_idx i = 0; i < c; i++) {
        for (fm_idx l = i + 1; l < c; l++) {
            float *w1 = F + oj[i] + of[l];
            float *w2 = F + oj[l] + of[i];
            const float kv = U ? ku : kappa * xs[i] * xs[l];
            float s1 = 0.0f, s2 = 0.0f;
            for (fm_idx d = 0; d < kp; d++) {
                const float g1 = lam * w1[d] + kv * w2[d], g2 = lam * w2[d] + kv * w1[d];
                s1 = fm_sqsum_1(s1, g1);
                s2 = fm_sqsum_1(s2, g2);
            }
            const float r1 = fm_rowada_rate_1(w1 + kp, s1, inv_k);
            const float r2 = fm_rowada_rate_1(w2 + kp, s2, inv_k);
            for (fm_idx d = 0; d < kp; d++) {
                const float a = w1[d], b = w2[d];
                const float g1 = lam * a + kv * b, g2 = lam * b + kv * a;
                w1[d] = fm_rate_step_1(a, g1, eta, r1);
                w2[d] = fm_rate_step_1(w1 == w2 ? w1[d] : b, g2, eta, r2);
            }
        }
    }
#endif
}

/* Wider paths, chosen at run time (the build itself stays portable: only
 * these functions are compiled for AVX, and they run only on a CPU
 * that has it).  The levels, lowest first:
 *
 *   scalar   one lane: only in a build without SSE (elsewhere it means sse)
 *   sse      four lanes, the reference of the levels above
 *   avx      eight lanes (and F16C for float16 storage, with AVX2)
 *   avx2     the avx loops, on a CPU that also has AVX2 and FMA
 *   avx512   the avx loops, on a CPU that also has AVX-512F
 *
 * Every level performs exactly the SSE loops' operations, lane for lane and
 * in the same order, so results are bit for bit those of the SSE path; the
 * wider levels only handle more lanes per instruction.  No level contracts a
 * multiplication and an addition into one FMA (setup.py: -ffp-contract=off):
 * that changes rounding, and measured on the FFM loops with the model in
 * cache it gained 3-11% (k = 4 to 16), too little to give up results that
 * do not depend on the CPU.  Sixteen-lane AdaGrad loops (k padded to 8 as
 * [w1 | w2], to 16 full width) were measured too: with SSE's 1/sqrt
 * estimate taken on each half (AVX-512's own, rsqrt14, differs) they ran at
 * 0.88-1.0x the avx loops, so avx2 and avx512 add no loops of their own yet;
 * they are the places for loops that need those instructions
 * (benchmarks/README.md has the figures).
 *
 * The level is chosen once, at import: the best this CPU has, or the one
 * FMCLI_SIMD names (scalar, sse, avx, avx2 or avx512; a level the CPU
 * lacks falls back to the best it has).  fm_simd_set changes it, for tests
 * and measurements. */
enum { FM_SIMD_SCALAR = 0, FM_SIMD_SSE = 1, FM_SIMD_AVX = 2, FM_SIMD_AVX2 = 3, FM_SIMD_AVX512 = 4 };

#include <stdlib.h>
#include <string.h>

static int fm_simd_level = FM_SSE ? FM_SIMD_SSE : FM_SIMD_SCALAR;

/* The best level this CPU and this build support. */
static inline int fm_simd_cpu(void) {
#if FM_AVX
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return FM_SIMD_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return FM_SIMD_AVX2;
    if (__builtin_cpu_supports("avx")) return FM_SIMD_AVX;
#endif
    return FM_SSE ? FM_SIMD_SSE : FM_SIMD_SCALAR;
}

/* The level FMCLI_SIMD names (any case), or -1 when it is unset or names none. */
static inline int fm_simd_env(void) {
    static const char *const names[] = {"scalar", "sse", "avx", "avx2", "avx512"};
    const char *env = getenv("FMCLI_SIMD");
    if (!env) return -1;
    for (int level = 0; level < 5; level++) {
        const char *a = names[level], *b = env;
        while (*a && (*b == *a || *b == *a - 32)) { a++; b++; }
        if (!*a && !*b) return level;
    }
    return -1;
}

static int fm_f16c;

/* F16C (float16 conversions) is used with the AVX level, where the CPU has it. */
static inline void fm_simd_f16c(void) {
#if FM_AVX
    __builtin_cpu_init();
    fm_f16c = fm_simd_level >= FM_SIMD_AVX && __builtin_cpu_supports("f16c")
              && __builtin_cpu_supports("avx2");
#else
    fm_f16c = 0;
#endif
}

/* Use `level` if this CPU can, else the best it can; returns the level set.
 * The lowest level of a build with SSE is sse. */
static inline int fm_simd_set(int level) {
    const int best = fm_simd_cpu();
    if (level > best) level = best;
    if (level < FM_SIMD_SSE) level = FM_SSE ? FM_SIMD_SSE : FM_SIMD_SCALAR;
    fm_simd_level = level;
    fm_simd_f16c();
    return level;
}

/* The level at import: FMCLI_SIMD's, else the best. */
static inline int fm_simd_init(void) {
    const int env = fm_simd_env();
    return fm_simd_set(env >= 0 ? env : FM_SIMD_AVX512);
}

#if FM_AVX
/* A pair whose two blocks are one (a feature repeated within its field):
 * the second step sees the first's result, as in ffm_update. */
FM_AVX_INLINE void fm_adagrad_alias4(float *w, __m128 kv, __m128 la, __m128 e, const int refine) {
    __m128 a = _mm_loadu_ps(w), G = _mm_loadu_ps(w + 4);
    __m128 g1 = _mm_add_ps(_mm_mul_ps(la, a), _mm_mul_ps(kv, a));
    __m128 g2 = g1;
    a = fm_adagrad_ps(a, &G, g1, e, refine);
    a = fm_adagrad_ps(a, &G, g2, e, refine);
    _mm_storeu_ps(w + 4, G);
    _mm_storeu_ps(w, a);
}

/* k padded to 4 with AdaGrad: a block is 8 floats (w, G), so one pair's two
 * weight vectors share a register, [w1 | w2], as do their accumulators. */
FM_AVX_INLINE void ffm_adagrad_avx4(float *F, const fm_idx *oj, const fm_idx *of, const float *xs,
                                    fm_idx c, float kappa, float lam, float eta, const int refine, const int U) {
    const __m256 la = _mm256_set1_ps(lam), e = _mm256_set1_ps(eta);
    const float ku = c ? kappa * xs[0] * xs[0] : 0.0f;
    FM_UPDATE_PAIRS(
        if (w1 == w2) {
            fm_adagrad_alias4(w1, _mm_set1_ps(kv), _mm256_castps256_ps128(la),
                              _mm256_castps256_ps128(e), refine);
            continue;
        }
        const __m128 a = _mm_loadu_ps(w1), b = _mm_loadu_ps(w2);
        const __m256 k = _mm256_set1_ps(kv);
        __m256 x = _mm256_insertf128_ps(_mm256_castps128_ps256(a), b, 1);   /* [w1 | w2] */
        __m256 y = _mm256_insertf128_ps(_mm256_castps128_ps256(b), a, 1);   /* [w2 | w1] */
        __m256 G = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(w1 + 4)),
                                        _mm_loadu_ps(w2 + 4), 1);
        __m256 g = _mm256_add_ps(_mm256_mul_ps(la, x), _mm256_mul_ps(k, y));
        x = fm_adagrad_avx(x, &G, g, e, refine);
        _mm_storeu_ps(w1, _mm256_castps256_ps128(x));
        _mm_storeu_ps(w1 + 4, _mm256_castps256_ps128(G));
        _mm_storeu_ps(w2, _mm256_extractf128_ps(x, 1));
        _mm_storeu_ps(w2 + 4, _mm256_extractf128_ps(G, 1));
    )
}

/* k padded to a multiple of 8 with AdaGrad: eight lanes of one vector at a
 * time, the SSE loop's order of loads and stores kept (so a repeated block
 * behaves the same). */
FM_AVX_INLINE void ffm_adagrad_avx8(float *F, const fm_idx kp, const fm_idx *oj, const fm_idx *of,
                                    const float *xs, fm_idx c, float kappa, float lam, float eta,
                                    const int refine, const int U) {
    const __m256 la = _mm256_set1_ps(lam), e = _mm256_set1_ps(eta);
    const float ku = c ? kappa * xs[0] * xs[0] : 0.0f;
    FM_UPDATE_PAIRS(
        const __m256 k = _mm256_set1_ps(kv);
        for (fm_idx d = 0; d < kp; d += 8) {
            __m256 a = _mm256_loadu_ps(w1 + d), b = _mm256_loadu_ps(w2 + d);
            __m256 g1 = _mm256_add_ps(_mm256_mul_ps(la, a), _mm256_mul_ps(k, b));
            __m256 g2 = _mm256_add_ps(_mm256_mul_ps(la, b), _mm256_mul_ps(k, a));
            __m256 G = _mm256_loadu_ps(w1 + kp + d);
            a = fm_adagrad_avx(a, &G, g1, e, refine);
            _mm256_storeu_ps(w1 + kp + d, G);
            _mm256_storeu_ps(w1 + d, a);
            if (w1 == w2) b = a;
            G = _mm256_loadu_ps(w2 + kp + d);
            b = fm_adagrad_avx(b, &G, g2, e, refine);
            _mm256_storeu_ps(w2 + kp + d, G);
            _mm256_storeu_ps(w2 + d, b);
        }
    )
}

/* A pair whose two blocks are one (a feature repeated within its field),
 * for the AVX row-wise loops: the SSE loop's two steps, one after the other. */
FM_INLINE void fm_rowada_alias(float *w, const fm_idx kp, float kv, float lam, float eta, float inv_k,
                               const int refine) {
    const fm_idx zero[2] = {0, 0};
    const float x2[2] = {1.0f, kv};
    ffm_rowada_update(refine, 0, w, kp, zero, zero, x2, 2, 1.0f, lam, eta, inv_k);
}

/* Row-wise AdaGrad with k padded to 4: a block is 5 floats, and one pair's
 * two weight vectors share a register, [w1 | w2], as in ffm_adagrad_avx4;
 * each half's squares are summed in the SSE loop's order, so results are
 * those of ffm_rowada_update bit for bit. */
FM_AVX_INLINE void ffm_rowada_avx4(float *F, const fm_idx *oj, const fm_idx *of, const float *xs, fm_idx c,
                                   float kappa, float lam, float eta, float inv_k, const int refine, const int U) {
    const __m256 la = _mm256_set1_ps(lam), e = _mm256_set1_ps(eta), ik = _mm256_set1_ps(inv_k);
    const float ku = c ? kappa * xs[0] * xs[0] : 0.0f;
    FM_UPDATE_PAIRS(
        if (w1 == w2) {
            fm_rowada_alias(w1, 4, kv, lam, eta, inv_k, refine);
            continue;
        }
        const __m128 a = _mm_loadu_ps(w1), b = _mm_loadu_ps(w2);
        __m256 x = _mm256_insertf128_ps(_mm256_castps128_ps256(a), b, 1);   /* [w1 | w2] */
        __m256 y = _mm256_insertf128_ps(_mm256_castps128_ps256(b), a, 1);   /* [w2 | w1] */
        __m256 g = _mm256_add_ps(_mm256_mul_ps(la, x), _mm256_mul_ps(_mm256_set1_ps(kv), y));
        /* each half's block has its four squares: summed as fm_hsum4_ps does */
        const __m256 r = fm_rowada_rate2_avx(w1 + 4, w2 + 4, fm_hsum4x2_avx(_mm256_mul_ps(g, g)), ik, refine);
        x = fm_rate_step_avx(x, g, e, r);
        _mm_storeu_ps(w1, _mm256_castps256_ps128(x));
        _mm_storeu_ps(w2, _mm256_extractf128_ps(x, 1));
    )
}

/* Row-wise AdaGrad with k padded to a multiple of 8: eight lanes at a time,
 * the squares of lanes 0-3 and 4-7 added at the end (the SSE loop's even and
 * odd groups), so results are those of ffm_rowada_update bit for bit. */
FM_AVX_INLINE void ffm_rowada_avx8(float *F, const fm_idx kp, const fm_idx *oj, const fm_idx *of, const float *xs,
                                   fm_idx c, float kappa, float lam, float eta, float inv_k, const int refine,
                                   const int U) {
    const __m256 la = _mm256_set1_ps(lam), e = _mm256_set1_ps(eta);
    const float ku = c ? kappa * xs[0] * xs[0] : 0.0f;
    const __m128 ik = _mm_set1_ps(inv_k);
    FM_UPDATE_PAIRS(
        if (w1 == w2) {
            fm_rowada_alias(w1, kp, kv, lam, eta, inv_k, refine);
            continue;
        }
        const __m256 k = _mm256_set1_ps(kv);
        /* k padded to 8 or 16: the weights and gradients stay in registers
         * between the two passes; longer blocks load them again */
        const int keep = kp <= 16;
        __m256 av[2], bv[2], g1v[2], g2v[2];
        __m256 s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps();
        for (fm_idx d = 0; d < kp; d += 8) {
            __m256 a = _mm256_loadu_ps(w1 + d), b = _mm256_loadu_ps(w2 + d);
            __m256 g1 = _mm256_add_ps(_mm256_mul_ps(la, a), _mm256_mul_ps(k, b));
            __m256 g2 = _mm256_add_ps(_mm256_mul_ps(la, b), _mm256_mul_ps(k, a));
            s1 = fm_sqsum_avx(s1, g1);
            s2 = fm_sqsum_avx(s2, g2);
            if (keep) {
                av[d >> 3] = a;
                bv[d >> 3] = b;
                g1v[d >> 3] = g1;
                g2v[d >> 3] = g2;
            }
        }
        const __m128 q1 = _mm_add_ps(_mm256_castps256_ps128(s1), _mm256_extractf128_ps(s1, 1));
        const __m128 q2 = _mm_add_ps(_mm256_castps256_ps128(s2), _mm256_extractf128_ps(s2, 1));
        const __m128 r1h = fm_rowada_rate_ps(w1 + kp, fm_hsum4_ps(q1), ik, refine);
        const __m128 r2h = fm_rowada_rate_ps(w2 + kp, fm_hsum4_ps(q2), ik, refine);
        const __m256 r1 = _mm256_insertf128_ps(_mm256_castps128_ps256(r1h), r1h, 1);
        const __m256 r2 = _mm256_insertf128_ps(_mm256_castps128_ps256(r2h), r2h, 1);
        for (fm_idx d = 0; d < kp; d += 8) {
            __m256 a, b, g1, g2;
            if (keep) {
                a = av[d >> 3];
                b = bv[d >> 3];
                g1 = g1v[d >> 3];
                g2 = g2v[d >> 3];
            } else {
                a = _mm256_loadu_ps(w1 + d);
                b = _mm256_loadu_ps(w2 + d);
                g1 = _mm256_add_ps(_mm256_mul_ps(la, a), _mm256_mul_ps(k, b));
                g2 = _mm256_add_ps(_mm256_mul_ps(la, b), _mm256_mul_ps(k, a));
            }
            _mm256_storeu_ps(w1 + d, fm_rate_step_avx(a, g1, e, r1));
            _mm256_storeu_ps(w2 + d, fm_rate_step_avx(b, g2, e, r2));
        }
    )
}

/* Entry points for kp == 4 or a multiple of 8, R: refine, u: uniform values
 * (see fm_ffm_update_f32). */
#define FM_AVX_ROWADA_U(R, U) \
    if (kp == 4) ffm_rowada_avx4(F, oj, of, xs, c, kappa, lam, eta, inv_k, R, U); \
    else if (kp == 8) ffm_rowada_avx8(F, 8, oj, of, xs, c, kappa, lam, eta, inv_k, R, U); \
    else if (kp == 16) ffm_rowada_avx8(F, 16, oj, of, xs, c, kappa, lam, eta, inv_k, R, U); \
    else ffm_rowada_avx8(F, kp, oj, of, xs, c, kappa, lam, eta, inv_k, R, U);
#define FM_AVX_ROWADA(R) \
    FM_AVX_FN void ffm_rowada_avx_r##R(float *F, fm_idx kp, const fm_idx *oj, const fm_idx *of, const float *xs, \
                                       fm_idx c, float kappa, float lam, float eta, float inv_k, int u) { \
        if (u) { FM_AVX_ROWADA_U(R, 1) } else { FM_AVX_ROWADA_U(R, 0) } \
    }
FM_AVX_ROWADA(0)
FM_AVX_ROWADA(1)
#undef FM_AVX_ROWADA
#undef FM_AVX_ROWADA_U

#define FM_AVX_ADAGRAD_U(R, U) \
    if (kp == 4) ffm_adagrad_avx4(F, oj, of, xs, c, kappa, lam, eta, R, U); \
    else if (kp == 8) ffm_adagrad_avx8(F, 8, oj, of, xs, c, kappa, lam, eta, R, U); \
    else if (kp == 16) ffm_adagrad_avx8(F, 16, oj, of, xs, c, kappa, lam, eta, R, U); \
    else ffm_adagrad_avx8(F, kp, oj, of, xs, c, kappa, lam, eta, R, U);
#define FM_AVX_ADAGRAD(R) \
    FM_AVX_FN void ffm_adagrad_avx_r##R(float *F, fm_idx kp, const fm_idx *oj, const fm_idx *of, \
                                        const float *xs, fm_idx c, float kappa, float lam, float eta, int u) { \
        if (u) { FM_AVX_ADAGRAD_U(R, 1) } else { FM_AVX_ADAGRAD_U(R, 0) } \
    }
FM_AVX_ADAGRAD(0)
FM_AVX_ADAGRAD(1)
#undef FM_AVX_ADAGRAD
#undef FM_AVX_ADAGRAD_U

/* The forward pass (ffm_pairs) at the avx level and above, for kp == 4 or a
 * multiple of 8.  The SSE loop adds pair l to its accumulator acc and pair
 * l + 1 to acc2 (four lanes each, kp / 4 additions per pair, in order of d);
 * here acc and acc2 are the two halves of one register, [acc | acc2], and
 * pairs l and l + 1 go in together: at kp == 4 their products fill one
 * register, at kp = 8q each group of four lanes is added in the SSE loop's
 * order.  A row's last pair, when its count is odd, goes to acc alone.  The
 * same additions in the same order: the same score, bit for bit. */
FM_AVX_INLINE float ffm_pairs_avx(const float *F, const fm_idx kp, const fm_idx *oj, const fm_idx *of,
                                  const float *xs, fm_idx c, const int U, const fm_idx fs) {
    const float vu = c ? xs[0] * xs[0] : 0.0f;
    __m256 A = _mm256_setzero_ps();
    for (fm_idx i = 0; i < c; i++) {
        const float *row1 = F + oj[i];
        const float *col1 = F + of[i];
        const float x1 = xs[i];
        fm_idx l = i + 1;
        for (; l + 1 < c; l += 2) {
            const float *p1 = row1 + of[l], *q1 = col1 + oj[l];
            const float *p2 = row1 + of[l + 1], *q2 = col1 + oj[l + 1];
            const __m128 v1 = _mm_set1_ps(U ? vu : x1 * xs[l]), v2 = _mm_set1_ps(U ? vu : x1 * xs[l + 1]);
            FM_PF_STATE(p1, kp, fs); FM_PF_STATE(q1, kp, fs);
            FM_PF_STATE(p2, kp, fs); FM_PF_STATE(q2, kp, fs);
            if (kp == 4) {
                const __m256 a = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(p1)), _mm_loadu_ps(p2), 1);
                const __m256 b = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(q1)), _mm_loadu_ps(q2), 1);
                const __m256 v = _mm256_insertf128_ps(_mm256_castps128_ps256(v1), v2, 1);
                A = _mm256_add_ps(A, _mm256_mul_ps(_mm256_mul_ps(a, b), v));
            } else {
                const __m256 vv1 = _mm256_insertf128_ps(_mm256_castps128_ps256(v1), v1, 1);
                const __m256 vv2 = _mm256_insertf128_ps(_mm256_castps128_ps256(v2), v2, 1);
                for (fm_idx d = 0; d < kp; d += 8) {
                    const __m256 P1 = _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(p1 + d), _mm256_loadu_ps(q1 + d)), vv1);
                    const __m256 P2 = _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(p2 + d), _mm256_loadu_ps(q2 + d)), vv2);
                    A = _mm256_add_ps(A, _mm256_permute2f128_ps(P1, P2, 0x20));   /* lanes d..d+3 */
                    A = _mm256_add_ps(A, _mm256_permute2f128_ps(P1, P2, 0x31));   /* lanes d+4..d+7 */
                }
            }
        }
        if (l < c) {
            const float *p1 = row1 + of[l], *q1 = col1 + oj[l];
            const __m128 v1 = _mm_set1_ps(U ? vu : x1 * xs[l]);
            FM_PF_STATE(p1, kp, fs); FM_PF_STATE(q1, kp, fs);
            __m128 acc = _mm256_castps256_ps128(A);
            for (fm_idx d = 0; d < kp; d += 4)
                acc = _mm_add_ps(acc, _mm_mul_ps(_mm_mul_ps(_mm_loadu_ps(p1 + d), _mm_loadu_ps(q1 + d)), v1));
            A = _mm256_insertf128_ps(A, acc, 0);
        }
    }
    __m128 acc = _mm_add_ps(_mm256_castps256_ps128(A), _mm256_extractf128_ps(A, 1));
    acc = _mm_add_ps(acc, _mm_movehl_ps(acc, acc));
    acc = _mm_add_ss(acc, _mm_shuffle_ps(acc, acc, 1));
    return _mm_cvtss_f32(acc);
}

#define FM_AVX_PAIRS_U(U) \
    if (kp == 4) return ffm_pairs_avx(F, 4, oj, of, xs, c, U, 0); \
    if (kp == 8) return fs ? ffm_pairs_avx(F, 8, oj, of, xs, c, U, fs) : ffm_pairs_avx(F, 8, oj, of, xs, c, U, 0); \
    if (kp == 16) return fs ? ffm_pairs_avx(F, 16, oj, of, xs, c, U, fs) : ffm_pairs_avx(F, 16, oj, of, xs, c, U, 0); \
    return ffm_pairs_avx(F, kp, oj, of, xs, c, U, fs);
FM_AVX_FN float ffm_pairs_avx_u(const float *F, fm_idx kp, const fm_idx *oj, const fm_idx *of, const float *xs,
                                fm_idx c, int u, fm_idx fs) {
    if (u) { FM_AVX_PAIRS_U(1) }
    FM_AVX_PAIRS_U(0)
}
#undef FM_AVX_PAIRS_U
#endif /* FM_AVX */

/* ------------------------------------------------------------------------
 * float16 storage of the FFM weights (opt-in, --storage float16).
 *
 * A block is kp IEEE binary16 weights followed by kp float32 AdaGrad
 * accumulators: 6 kp bytes instead of 8 kp.  The accumulators stay float32:
 * they start at 1 and grow by squared gradients of order 1e-5, which a
 * 10-bit mantissa would round away.  Weights are widened to float32, the
 * pair's step computed exactly as in the float32 loops, and the result
 * rounded stochastically on the way back: up or down with probabilities
 * that make the stored value unbiased.  Rounding to nearest would drop every
 * step smaller than half a float16 spacing (2^-12 near 0.3, about AdaGrad's
 * step here), and training would stall.  The random bits come from xorshift32
 * seeded with the row's step number, so a run is reproducible.  Offsets (oj, of) are in bytes
 * here: fm_ffm_prepare is called with the block size in bytes.
 * With F16C and AVX2 the conversions take one instruction per four or eight
 * values; elsewhere scalar loops convert in software.
 * ------------------------------------------------------------------------ */
#include <stdint.h>
#include <string.h>

static inline float fm_h2f(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu, x;
    float f;
    if (e == 0) {
        f = (float)m * (1.0f / 16777216.0f);   /* zero or subnormal: m * 2^-24, exact */
        memcpy(&x, &f, 4);
        x |= sign;
    } else if (e == 31) {
        x = sign | 0x7f800000u | (m << 13);
    } else {
        x = sign | ((e + 112u) << 23) | (m << 13);
    }
    memcpy(&f, &x, 4);
    return f;
}

/* Scalar loops (no F16C): same arithmetic as the SIMD ones, one lane at a time. */
static inline float ffm_pairs_h_scalar(const char *F, fm_idx kp, const fm_idx *oj, const fm_idx *of,
                                       const float *xs, fm_idx c) {
    /* lane for lane and pair for pair the SIMD loop's sums (two sets of four
     * lanes, pairs alternating), so the two agree bit for bit */
    float lanes[2][4] = {{0, 0, 0, 0}, {0, 0, 0, 0}};
    for (fm_idx i = 0; i < c; i++) {
        for (fm_idx l = i + 1; l < c; l++) {
            const uint16_t *w1 = (const uint16_t *)(F + oj[i] + of[l]);
            const uint16_t *w2 = (const uint16_t *)(F + oj[l] + of[i]);
            const float v = xs[i] * xs[l];
            float *acc = lanes[(l - i - 1) & 1];
            for (fm_idx d = 0; d < kp; d++) acc[d & 3] += fm_h2f(w1[d]) * fm_h2f(w2[d]) * v;
        }
    }
    float t[4];
    for (int q = 0; q < 4; q++) t[q] = lanes[0][q] + lanes[1][q];
    return (t[0] + t[2]) + (t[1] + t[3]);
}

/* float16 by round-toward-zero; with random bits added below the kept
 * mantissa first, stochastic rounding (see fm_ffm_adagrad_f16). */
static inline uint16_t fm_f2h_rz(float f) {
    uint32_t x, sign, a;
    memcpy(&x, &f, 4);
    sign = (x >> 16) & 0x8000u;
    a = x & 0x7fffffffu;
    if (a > 0x7f800000u) return (uint16_t)(sign | 0x7e00u);
    if (a >= 0x477fe000u) return (uint16_t)(sign | (a == 0x7f800000u ? 0x7c00u : 0x7bffu));
    if (a < 0x38800000u) {
        if (a < 0x33800000u) return (uint16_t)sign;
        return (uint16_t)(sign | (((a & 0x7fffffu) | 0x800000u) >> (126u - (a >> 23))));
    }
    return (uint16_t)(sign | ((a - 0x38000000u) >> 13));
}

static inline uint16_t fm_f2h_sr(float f, uint32_t r) {
    uint32_t x;
    memcpy(&x, &f, 4);
    x += r & 0x1fffu;
    memcpy(&f, &x, 4);
    return fm_f2h_rz(f);
}

/* A seed's first state for xorshift32 (never 0). */
static inline uint32_t fm_seed32(uint32_t x) {
    x ^= x >> 16; x *= 0x7feb352du; x ^= x >> 15; x *= 0x846ca68bu; x ^= x >> 16;
    return x | 1u;
}

static inline uint32_t fm_xorshift32(uint32_t x) {
    x ^= x << 13; x ^= x >> 17; x ^= x << 5;
    return x;
}

static inline void ffm_adagrad_h_scalar(char *F, fm_idx kp, const fm_idx *oj, const fm_idx *of,
                                        const float *xs, fm_idx c, float kappa, float lam, float eta,
                                        uint32_t seed) {
    uint32_t r = fm_seed32(seed);
    for (fm_idx i = 0; i < c; i++) {
        for (fm_idx l = i + 1; l < c; l++) {
            uint16_t *w1 = (uint16_t *)(F + oj[i] + of[l]);
            uint16_t *w2 = (uint16_t *)(F + oj[l] + of[i]);
            float *G1 = (float *)(w1 + kp), *G2 = (float *)(w2 + kp);
            const float kv = kappa * xs[i] * xs[l];
            for (fm_idx d = 0; d < kp; d++) {
                const float a = fm_h2f(w1[d]), b = fm_h2f(w2[d]);
                const float g1 = lam * a + kv * b, g2 = lam * b + kv * a;
                r = fm_xorshift32(r);
                w1[d] = fm_f2h_sr(fm_adagrad_1(a, &G1[d], g1, eta), r);
                w2[d] = fm_f2h_sr(fm_adagrad_1(fm_h2f(w2[d]), &G2[d], g2, eta), r >> 16);
            }
        }
    }
}

#if FM_AVX
#define FM_F16C_FN static __attribute__((target("avx2,f16c"), noinline))
#define FM_F16C_INLINE static inline __attribute__((target("avx2,f16c"), always_inline))

FM_F16C_INLINE float ffm_pairs_h_k(const char *F, const fm_idx kp, const fm_idx *oj, const fm_idx *of,
                                    const float *xs, fm_idx c) {
    __m128 acc = _mm_setzero_ps(), acc2 = _mm_setzero_ps();
#define FM_HPAIR(A, L) do { \
        const uint16_t *w1 = (const uint16_t *)(row1 + of[L]); \
        const uint16_t *w2 = (const uint16_t *)(col1 + oj[L]); \
        const __m128 vv = _mm_set1_ps(x1 * xs[L]); \
        for (fm_idx d = 0; d < kp; d += 4) { \
            __m128 a = _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(w1 + d))); \
            __m128 b = _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)(w2 + d))); \
            A = _mm_add_ps(A, _mm_mul_ps(_mm_mul_ps(a, b), vv)); \
        } \
    } while (0)
    FM_PAIR_LOOP(char, FM_HPAIR)
#undef FM_HPAIR
    acc = _mm_add_ps(acc, acc2);
    acc = _mm_add_ps(acc, _mm_movehl_ps(acc, acc));
    acc = _mm_add_ss(acc, _mm_shuffle_ps(acc, acc, 1));
    return _mm_cvtss_f32(acc);
}

FM_F16C_FN float ffm_pairs_h_f16c(const char *F, fm_idx kp, const fm_idx *oj, const fm_idx *of,
                                  const float *xs, fm_idx c) {
    if (kp == 4) return ffm_pairs_h_k(F, 4, oj, of, xs, c);
    if (kp == 8) return ffm_pairs_h_k(F, 8, oj, of, xs, c);
    if (kp == 16) return ffm_pairs_h_k(F, 16, oj, of, xs, c);
    return ffm_pairs_h_k(F, kp, oj, of, xs, c);
}

FM_F16C_INLINE __m128 fm_h4_load(const uint16_t *p) {
    return _mm_cvtph_ps(_mm_loadl_epi64((const __m128i *)p));
}

/* Stochastic rounding to float16: random bits r (the low 13 used) added
 * below the mantissa that float16 keeps, then truncation. */
FM_F16C_INLINE void fm_h4_store_sr(uint16_t *p, __m128 v, __m128i r) {
    __m128i bits = _mm_add_epi32(_mm_castps_si128(v), _mm_and_si128(r, _mm_set1_epi32(0x1fff)));
    _mm_storel_epi64((__m128i *)p, _mm_cvtps_ph(_mm_castsi128_ps(bits), _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC));
}

FM_F16C_INLINE __m128i fm_xorshift32_x4(__m128i x) {
    x = _mm_xor_si128(x, _mm_slli_epi32(x, 13));
    x = _mm_xor_si128(x, _mm_srli_epi32(x, 17));
    return _mm_xor_si128(x, _mm_slli_epi32(x, 5));
}

FM_F16C_INLINE __m256i fm_xorshift32_x8(__m256i x) {
    x = _mm256_xor_si256(x, _mm256_slli_epi32(x, 13));
    x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 17));
    return _mm256_xor_si256(x, _mm256_slli_epi32(x, 5));
}

/* One pair's four lanes at a time (any kp, and a block paired with itself). */
FM_F16C_INLINE void fm_h_pair4(uint16_t *w1, uint16_t *w2, const fm_idx kp, __m128 k, __m128 la, __m128 e,
                               __m128i *rnd, const int refine) {
    float *G1 = (float *)(w1 + kp), *G2 = (float *)(w2 + kp);
    for (fm_idx d = 0; d < kp; d += 4) {
        __m128 a = fm_h4_load(w1 + d), b = fm_h4_load(w2 + d);
        __m128 g1 = _mm_add_ps(_mm_mul_ps(la, a), _mm_mul_ps(k, b));
        __m128 g2 = _mm_add_ps(_mm_mul_ps(la, b), _mm_mul_ps(k, a));
        __m128 G = _mm_loadu_ps(G1 + d);
        a = fm_adagrad_ps(a, &G, g1, e, refine);
        _mm_storeu_ps(G1 + d, G);
        *rnd = fm_xorshift32_x4(*rnd);
        fm_h4_store_sr(w1 + d, a, *rnd);
        if (w1 == w2) b = fm_h4_load(w1 + d);
        G = _mm_loadu_ps(G2 + d);
        b = fm_adagrad_ps(b, &G, g2, e, refine);
        _mm_storeu_ps(G2 + d, G);
        fm_h4_store_sr(w2 + d, b, _mm_srli_epi32(*rnd, 16));
    }
}

FM_F16C_INLINE void ffm_adagrad_h_f16c(char *F, const fm_idx kp, const fm_idx *oj, const fm_idx *of,
                                       const float *xs, fm_idx c, float kappa, float lam, float eta,
                                       uint32_t seed, const int refine) {
    const __m128 la = _mm_set1_ps(lam), e = _mm_set1_ps(eta);
    const __m256 la8 = _mm256_set1_ps(lam), e8 = _mm256_set1_ps(eta);
    const __m256i low13 = _mm256_set1_epi32(0x1fff);
    __m128i rnd = _mm_set_epi32((int)fm_seed32(seed + 3), (int)fm_seed32(seed + 2),
                                (int)fm_seed32(seed + 1), (int)fm_seed32(seed));
    __m256i rnd8 = _mm256_set_epi32((int)fm_seed32(seed + 11), (int)fm_seed32(seed + 10),
                                    (int)fm_seed32(seed + 9), (int)fm_seed32(seed + 8),
                                    (int)fm_seed32(seed + 7), (int)fm_seed32(seed + 6),
                                    (int)fm_seed32(seed + 5), (int)fm_seed32(seed + 4));
    for (fm_idx i = 0; i < c; i++) {
        char *row1 = F + oj[i];
        char *col1 = F + of[i];
        const float kx1 = kappa * xs[i];
        for (fm_idx l = i + 1; l < c; l++) {
            uint16_t *w1 = (uint16_t *)(row1 + of[l]);
            uint16_t *w2 = (uint16_t *)(col1 + oj[l]);
            const float kv = kx1 * xs[l];
            if (kp != 4 || w1 == w2) {
                fm_h_pair4(w1, w2, kp, _mm_set1_ps(kv), la, e, &rnd, refine);
                continue;
            }
            /* k padded to 4: both vectors in one register, [w1 | w2] */
            float *G1 = (float *)(w1 + 4), *G2 = (float *)(w2 + 4);
            __m256 x = _mm256_cvtph_ps(_mm_unpacklo_epi64(_mm_loadl_epi64((const __m128i *)w1),
                                                          _mm_loadl_epi64((const __m128i *)w2)));
            __m256 y = _mm256_permute2f128_ps(x, x, 1);                              /* [w2 | w1] */
            __m256 G = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(G1)), _mm_loadu_ps(G2), 1);
            __m256 g = _mm256_add_ps(_mm256_mul_ps(la8, x), _mm256_mul_ps(_mm256_set1_ps(kv), y));
            x = fm_adagrad_avx(x, &G, g, e8, refine);
            _mm_storeu_ps(G1, _mm256_castps256_ps128(G));
            _mm_storeu_ps(G2, _mm256_extractf128_ps(G, 1));
            rnd8 = fm_xorshift32_x8(rnd8);
            __m256i bits = _mm256_add_epi32(_mm256_castps_si256(x), _mm256_and_si256(rnd8, low13));
            __m128i h = _mm256_cvtps_ph(_mm256_castsi256_ps(bits), _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            _mm_storel_epi64((__m128i *)w1, h);
            _mm_storeh_pd((double *)w2, _mm_castsi128_pd(h));
        }
    }
}

#define FM_F16C_ADAGRAD(R) \
    FM_F16C_FN void ffm_adagrad_h_f16c_r##R(char *F, fm_idx kp, const fm_idx *oj, const fm_idx *of, \
                                           const float *xs, fm_idx c, float kappa, float lam, float eta, \
                                           uint32_t seed) { \
        if (kp == 4) ffm_adagrad_h_f16c(F, 4, oj, of, xs, c, kappa, lam, eta, seed, R); \
        else if (kp == 8) ffm_adagrad_h_f16c(F, 8, oj, of, xs, c, kappa, lam, eta, seed, R); \
        else if (kp == 16) ffm_adagrad_h_f16c(F, 16, oj, of, xs, c, kappa, lam, eta, seed, R); \
        else ffm_adagrad_h_f16c(F, kp, oj, of, xs, c, kappa, lam, eta, seed, R); \
    }
FM_F16C_ADAGRAD(0)
FM_F16C_ADAGRAD(1)
#undef FM_F16C_ADAGRAD
#endif /* FM_AVX */

/* Pair terms of a prepared row of float16 blocks (see above). */
static inline float fm_ffm_pairs_f16(const char *F, fm_idx kp, const fm_idx *oj, const fm_idx *of,
                                     const float *xs, fm_idx c) {
#if FM_AVX
    if (fm_f16c) return ffm_pairs_h_f16c(F, kp, oj, of, xs, c);
#endif
    return ffm_pairs_h_scalar(F, kp, oj, of, xs, c);
}

/* AdaGrad steps of every pair of a prepared row of float16 blocks. */
static inline void fm_ffm_adagrad_f16(int refine, char *F, fm_idx kp, const fm_idx *oj, const fm_idx *of,
                                      const float *xs, fm_idx c, float kappa, float lam, float eta,
                                      uint32_t seed) {
#if FM_AVX
    if (fm_f16c) {
        if (refine) ffm_adagrad_h_f16c_r1(F, kp, oj, of, xs, c, kappa, lam, eta, seed);
        else ffm_adagrad_h_f16c_r0(F, kp, oj, of, xs, c, kappa, lam, eta, seed);
        return;
    }
#endif
    (void)refine;
    ffm_adagrad_h_scalar(F, kp, oj, of, xs, c, kappa, lam, eta, seed);
}

/* Rows whose entries all have one value after scaling (one-hot rows, as
 * libffm-style categorical data is, normalized or not) give every pair the
 * same x_i x_l: the pair loops then take that product once per row instead
 * of loading and multiplying per pair.  It is the same float product, so
 * the results are bit for bit those of the general loops.
 * fm_uniform_rows = 0 (fm_set_uniform_rows) always runs the general loops,
 * for tests and measurements. */
static int fm_uniform_rows = 1;

static inline int fm_set_uniform_rows(int on) {
    fm_uniform_rows = on != 0;
    return fm_uniform_rows;
}

static inline int fm_uniform(const float *xs, fm_idx c) {
    if (!fm_uniform_rows) return 0;
    for (fm_idx i = 1; i < c; i++)
        if (xs[i] != xs[0]) return 0;
    return 1;
}

/* Pair terms of a prepared row's score: sum over i < l of
 * <w[j_i, f_l], w[j_l, f_i]> * xs_i * xs_l.  fs: a block's floats when the
 * row is scored for training and the optimizer state is to be prefetched
 * (see FM_PF_STATE), else 0. */
static inline float fm_ffm_pairs_f32(const float *F, fm_idx kp, const fm_idx *oj, const fm_idx *of,
                                     const float *xs, fm_idx c, fm_idx fs) {
#if FM_AVX
    if (fm_simd_level >= FM_SIMD_AVX && (kp == 4 || kp % 8 == 0))
        return ffm_pairs_avx_u(F, kp, oj, of, xs, c, fm_uniform(xs, c), fs);
#endif
#define FM_PAIRS_U(U) \
    if (kp == 4) return ffm_pairs(F, 4, oj, of, xs, c, U, 0); \
    if (kp == 8) return fs ? ffm_pairs(F, 8, oj, of, xs, c, U, fs) : ffm_pairs(F, 8, oj, of, xs, c, U, 0); \
    if (kp == 16) return fs ? ffm_pairs(F, 16, oj, of, xs, c, U, fs) : ffm_pairs(F, 16, oj, of, xs, c, U, 0); \
    return ffm_pairs(F, kp, oj, of, xs, c, U, fs);
    if (fm_uniform(xs, c)) { FM_PAIRS_U(1) }
    FM_PAIRS_U(0)
#undef FM_PAIRS_U
}

/* The optimizer step (kind: FM_OPT_*) of every pair of a prepared row,
 * instantiated for the common k so the inner loop disappears. */
static inline void fm_ffm_update_f32(int kind, int refine, float *F, fm_idx kp, const fm_idx *oj,
                                     const fm_idx *of, const float *xs, fm_idx c, float kappa,
                                     float lam, const fm_step_params *p) {
    const int u = fm_uniform(xs, c);
#if FM_AVX
    if (fm_simd_level >= FM_SIMD_AVX && (kp == 4 || kp % 8 == 0)) {
        if (kind == FM_OPT_ROWADA) {
            if (refine) ffm_rowada_avx_r1(F, kp, oj, of, xs, c, kappa, lam, p->eta, p->inv_k, u);
            else ffm_rowada_avx_r0(F, kp, oj, of, xs, c, kappa, lam, p->eta, p->inv_k, u);
            return;
        }
        if (kind == FM_OPT_ADAGRAD) {
            if (refine) ffm_adagrad_avx_r1(F, kp, oj, of, xs, c, kappa, lam, p->eta, u);
            else ffm_adagrad_avx_r0(F, kp, oj, of, xs, c, kappa, lam, p->eta, u);
            return;
        }
    }
#endif
#define FM_UPDATE(K, R, KP, U) \
    if (K == FM_OPT_ROWADA) ffm_rowada_update(R, U, F, KP, oj, of, xs, c, kappa, lam, p->eta, p->inv_k); \
    else ffm_update(K, R, U, F, KP, oj, of, xs, c, kappa, lam, p)
#define FM_KINDS_U(KP, U) \
    if (kind == FM_OPT_ADAGRAD) { if (refine) FM_UPDATE(FM_OPT_ADAGRAD, 1, KP, U); else FM_UPDATE(FM_OPT_ADAGRAD, 0, KP, U); } \
    else if (kind == FM_OPT_ROWADA) { if (refine) FM_UPDATE(FM_OPT_ROWADA, 1, KP, U); else FM_UPDATE(FM_OPT_ROWADA, 0, KP, U); } \
    else if (kind == FM_OPT_ADAM) FM_UPDATE(FM_OPT_ADAM, 0, KP, U); \
    else if (kind == FM_OPT_FTRL) FM_UPDATE(FM_OPT_FTRL, 0, KP, U); \
    else FM_UPDATE(FM_OPT_SGD, 0, KP, U);
#define FM_KINDS(KP) if (u) { FM_KINDS_U(KP, 1) } else { FM_KINDS_U(KP, 0) }
    if (kp == 4) { FM_KINDS(4) }
    else if (kp == 8) { FM_KINDS(8) }
    else if (kp == 16) { FM_KINDS(16) }
    else { FM_KINDS(kp) }
#undef FM_KINDS
#undef FM_KINDS_U
#undef FM_UPDATE
}

#endif /* FMCLI_FFM_F32_H */
