/* The float32 optimizer steps of the compiled fast paths, written once per
 * lane width.
 *
 * _optim.pxd states the update rules and is their reference (it runs them
 * for float64, mini-batches and clipped gradients).  The float32 loops that
 * step weights themselves -- FFM's per-row pairs at every SIMD level
 * (ffm_f32.h), float16 storage, FwFM's field-pair weights (fwfm_f32.h) and
 * opt_block's float32 AdaGrad and row-wise AdaGrad -- call the functions
 * below instead of spelling a step out, so a rule's arithmetic lives here
 * and only here:
 *
 *   rule                         1 lane (scalar)    4 lanes (SSE)        8 lanes (AVX)
 *   sgd                          fm_sgd_1           fm_sgd_ps            -
 *   adagrad, estimated 1/sqrt    -                  fm_adagrad_ps        fm_adagrad_avx
 *   adagrad, exact 1/sqrt        fm_adagrad_1       fm_adagrad_exact_ps  -
 *   rowwise-adagrad: squares     fm_sqsum_1         fm_sqsum_ps          fm_sqsum_avx
 *     the block's rate           fm_rowada_rate_1   fm_rowada_rate_ps    fm_rowada_rate2_avx
 *     each weight's step         fm_rate_step_1     fm_rate_step_ps      fm_rate_step_avx
 *   adam                         fm_adam_1          fm_adam_ps           -
 *   ftrl                         fm_ftrl_1          fm_ftrl_ps           -
 *
 * ("-": no loop runs that rule at that width.)  fm_step_1 and fm_step_ps
 * pick the rule for a block laid out as its weights followed by the state
 * slots, kp values apart; fm_adagrad_f32 and fm_rowada_f32 are opt_block's
 * float32 steps of a whole block.
 *
 * The widths are not interchangeable: each keeps its own operations in its
 * own order (the SSE and AVX AdaGrad take the CPU's reciprocal square root
 * estimate, like libffm, unless `refine`; the scalar one divides by sqrtf;
 * the scalar Adam takes ((1-b2) g) g, the SSE one (1-b2) (g g)), and the
 * fast path tests pin each SIMD level's results down bit for bit: a change
 * of operation or of order here is a change of results.  The AVX functions
 * perform the SSE ones' operations lane for lane, so the two levels agree
 * bit for bit -- except float16 storage, whose loops without F16C (the SSE
 * level) take the scalar steps and their exact 1/sqrt.
 *
 * This header also says which widths the build has (FM_SSE, FM_AVX) and
 * defines the index type and the inlining macros the other headers use. */
#ifndef FMCLI_OPT_F32_H
#define FMCLI_OPT_F32_H

#include <math.h>
#include <stddef.h>

#if defined(__SSE__) || defined(_M_X64) || (defined(_M_IX86_FP) && _M_IX86_FP >= 1)
#include <xmmintrin.h>
#define FM_SSE 1
#else
#define FM_SSE 0
#endif

typedef ptrdiff_t fm_idx;

#if defined(__GNUC__) || defined(__clang__)
#define FM_INLINE static inline __attribute__((always_inline))
#elif defined(_MSC_VER)
#define FM_INLINE static __forceinline
#else
#define FM_INLINE static inline
#endif

/* AVX is compiled only into the functions marked for it and chosen at run
 * time (see fm_simd_level in ffm_f32.h), so the build itself stays portable. */
#if FM_SSE && (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__))
#define FM_AVX 1
#include <immintrin.h>
#define FM_AVX_FN static __attribute__((target("avx"), noinline))
#define FM_AVX_INLINE static inline __attribute__((target("avx"), always_inline))
#else
#define FM_AVX 0
#endif

/* The optimizers (the codes of _optim.pxd's OPT_*) and their float32
 * hyperparameters for one step: eta is the step's size (Adam: bias-corrected;
 * FTRL: alpha). */
enum { FM_OPT_SGD = 0, FM_OPT_ADAGRAD = 1, FM_OPT_ADAM = 2, FM_OPT_FTRL = 3, FM_OPT_ROWADA = 4 };

typedef struct {
    float eta, b1, b2, eps, beta, l1, l2;
    float inv_k;   /* row-wise AdaGrad: 1 / k, the real weights of a block */
} fm_step_params;

/* ------------------------------------------------------------------------
 * One lane.  Each function returns the weight after the step and updates
 * the state it is handed.
 * ------------------------------------------------------------------------ */

/* SGD: w - eta g. */
FM_INLINE float fm_sgd_1(float w, float g, float eta) {
    return w - eta * g;
}

/* AdaGrad: G += g^2; w - eta g / sqrt(G), with sqrtf's exact root. */
FM_INLINE float fm_adagrad_1(float w, float *G, float g, float eta) {
    *G += g * g;
    return w - eta * g / sqrtf(*G);
}

/* Adam with moments m and v: m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 * w - eta m / (sqrt(v) + eps). */
FM_INLINE float fm_adam_1(float w, float *m, float *v, float g, const fm_step_params *p) {
    *m = p->b1 * *m + (1.0f - p->b1) * g;
    *v = p->b2 * *v + (1.0f - p->b2) * g * g;
    return w - p->eta * *m / (sqrtf(*v) + p->eps);
}

/* FTRL-Proximal with state z and n (see _optim.pxd; eta is alpha). */
FM_INLINE float fm_ftrl_1(float w, float *z, float *n, float g, const fm_step_params *p) {
    const float n0 = *n, nn = n0 + g * g, sq = sqrtf(nn);
    const float z1 = *z + g - (sq - sqrtf(n0)) / p->eta * w;
    *z = z1;
    *n = nn;
    if (fabsf(z1) <= p->l1) return 0.0f;
    return -(z1 - (z1 > 0 ? p->l1 : -p->l1)) / ((p->beta + sq) / p->eta + p->l2);
}

/* Row-wise AdaGrad (one accumulator G per block, after its weights):
 * s + g^2, the running sum of a block's squared gradients; */
FM_INLINE float fm_sqsum_1(float s, float g) {
    return s + g * g;
}

/* G += ss / k for the block's sum of squares ss, and the block's rate
 * r = 1 / sqrt(G); */
FM_INLINE float fm_rowada_rate_1(float *G, float ss, float inv_k) {
    *G += ss * inv_k;
    return 1.0f / sqrtf(*G);
}

/* and each weight's step at that rate: w - eta g r. */
FM_INLINE float fm_rate_step_1(float w, float g, float eta, float r) {
    return w - eta * g * r;
}

/* The step of one weight w of a block whose state slots follow it kp
 * values apart (st: its first slot; AdaGrad: G; Adam: m, v; FTRL: z, n).
 * Row-wise AdaGrad steps whole blocks (fm_rowada_f32) and is not here. */
FM_INLINE float fm_step_1(const int kind, float w, float *st, const fm_idx kp, float g,
                          const fm_step_params *p) {
    if (kind == FM_OPT_ADAGRAD) return fm_adagrad_1(w, st, g, p->eta);
    if (kind == FM_OPT_ADAM) return fm_adam_1(w, st, st + kp, g, p);
    if (kind == FM_OPT_FTRL) return fm_ftrl_1(w, st, st + kp, g, p);
    return fm_sgd_1(w, g, p->eta);
}

#if FM_SSE
/* ------------------------------------------------------------------------
 * Four lanes (SSE).  fm_rsqrt_ps, fm_hsum4_ps, fm_adagrad_ps and
 * fm_rowada_rate_ps leave their inlining to the compiler: forcing it
 * changes the code generated around them in the AVX AdaGrad loops.
 * ------------------------------------------------------------------------ */

/* The reciprocal square root: SSE's estimate (relative error at most
 * 1.5 * 2^-12, as in libffm), or with `refine` that estimate after one
 * Newton-Raphson step (relative error about 1e-7, float32 rounding level),
 * which costs five more operations per four lanes. */
static inline __m128 fm_rsqrt_ps(__m128 x, const int refine) {
    __m128 r = _mm_rsqrt_ps(x);
    if (refine) {
        const __m128 half = _mm_set1_ps(0.5f), three = _mm_set1_ps(3.0f);
        r = _mm_mul_ps(_mm_mul_ps(half, r), _mm_sub_ps(three, _mm_mul_ps(_mm_mul_ps(x, r), r)));
    }
    return r;
}

/* Sum of the four lanes of v in every lane, added as (v0 + v2) + (v1 + v3). */
static inline __m128 fm_hsum4_ps(__m128 v) {
    v = _mm_add_ps(v, _mm_shuffle_ps(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
    return _mm_add_ps(v, _mm_shuffle_ps(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
}

/* A step at the rate r of each lane (AdaGrad's, row-wise AdaGrad's):
 * w - (eta g) r. */
FM_INLINE __m128 fm_rate_step_ps(__m128 w, __m128 g, __m128 eta, __m128 r) {
    return _mm_sub_ps(w, _mm_mul_ps(_mm_mul_ps(eta, g), r));
}

FM_INLINE __m128 fm_sgd_ps(__m128 w, __m128 g, __m128 eta) {
    return _mm_sub_ps(w, _mm_mul_ps(eta, g));
}

/* AdaGrad: G += g^2; w - eta g / sqrt(G), the 1/sqrt by fm_rsqrt_ps. */
static inline __m128 fm_adagrad_ps(__m128 w, __m128 *G, __m128 g, __m128 eta, const int refine) {
    const __m128 acc = _mm_add_ps(*G, _mm_mul_ps(g, g));
    const __m128 r = fm_rsqrt_ps(acc, refine);
    *G = acc;
    return fm_rate_step_ps(w, g, eta, r);
}

/* AdaGrad with the exact square root and division: fm_adagrad_1 on four
 * lanes, bit for bit. */
FM_INLINE __m128 fm_adagrad_exact_ps(__m128 w, __m128 *G, __m128 g, __m128 eta) {
    const __m128 acc = _mm_add_ps(*G, _mm_mul_ps(g, g));
    *G = acc;
    return _mm_sub_ps(w, _mm_div_ps(_mm_mul_ps(eta, g), _mm_sqrt_ps(acc)));
}

/* Adam (as fm_adam_1; here v's increment is (1-b2) (g g)).  Adam's and
 * FTRL's state stays in memory (the four lanes of each slot at m and v, z
 * and n): every loop that runs them keeps it there. */
FM_INLINE __m128 fm_adam_ps(__m128 w, float *m, float *v, __m128 g, __m128 eta, const fm_step_params *p) {
    __m128 m1 = _mm_loadu_ps(m), v1 = _mm_loadu_ps(v);
    m1 = _mm_add_ps(_mm_mul_ps(_mm_set1_ps(p->b1), m1), _mm_mul_ps(_mm_set1_ps(1.0f - p->b1), g));
    v1 = _mm_add_ps(_mm_mul_ps(_mm_set1_ps(p->b2), v1), _mm_mul_ps(_mm_set1_ps(1.0f - p->b2), _mm_mul_ps(g, g)));
    _mm_storeu_ps(m, m1);
    _mm_storeu_ps(v, v1);
    return _mm_sub_ps(w, _mm_div_ps(_mm_mul_ps(eta, m1), _mm_add_ps(_mm_sqrt_ps(v1), _mm_set1_ps(p->eps))));
}

/* FTRL-Proximal (as fm_ftrl_1), the |z| <= l1 test as a mask. */
FM_INLINE __m128 fm_ftrl_ps(__m128 w, float *z, float *n, __m128 g, __m128 eta, const fm_step_params *p) {
    __m128 z1 = _mm_loadu_ps(z), n0 = _mm_loadu_ps(n);
    const __m128 nn = _mm_add_ps(n0, _mm_mul_ps(g, g));
    const __m128 sq = _mm_sqrt_ps(nn);
    const __m128 sig = _mm_div_ps(_mm_sub_ps(sq, _mm_sqrt_ps(n0)), eta);
    z1 = _mm_sub_ps(_mm_add_ps(z1, g), _mm_mul_ps(sig, w));
    _mm_storeu_ps(z, z1);
    _mm_storeu_ps(n, nn);
    const __m128 sign = _mm_set1_ps(-0.0f), l1 = _mm_set1_ps(p->l1);
    const __m128 az = _mm_andnot_ps(sign, z1);
    const __m128 num = _mm_sub_ps(z1, _mm_or_ps(_mm_and_ps(sign, z1), l1));   /* z - sign(z) l1 */
    const __m128 den = _mm_add_ps(_mm_div_ps(_mm_add_ps(_mm_set1_ps(p->beta), sq), eta), _mm_set1_ps(p->l2));
    const __m128 nw = _mm_sub_ps(_mm_setzero_ps(), _mm_div_ps(num, den));
    return _mm_andnot_ps(_mm_cmple_ps(az, l1), nw);
}

/* Row-wise AdaGrad: s + g^2 per lane (a block's squares, summed across the
 * lanes by fm_hsum4_ps at the end); */
FM_INLINE __m128 fm_sqsum_ps(__m128 s, __m128 g) {
    return _mm_add_ps(s, _mm_mul_ps(g, g));
}

/* the block's rate: *G += ss / k, stored back from lane 0, and fm_rsqrt_ps
 * of the new *G, the rate that fm_rate_step_ps takes.  ss holds the block's
 * sum of squares in each lane whose rate is used (every lane after
 * fm_hsum4_ps). */
static inline __m128 fm_rowada_rate_ps(float *G, __m128 ss, __m128 ik, const int refine) {
    const __m128 acc = _mm_add_ps(_mm_set1_ps(*G), _mm_mul_ps(ss, ik));
    _mm_store_ss(G, acc);
    return fm_rsqrt_ps(acc, refine);
}

/* fm_step_1 on four lanes: the step of four weights w of a block whose
 * state slots follow it kp values apart (st: the first slot of the four). */
FM_INLINE __m128 fm_step_ps(const int kind, const int refine, __m128 w, float *st, const fm_idx kp,
                            __m128 g, const fm_step_params *p) {
    const __m128 eta = _mm_set1_ps(p->eta);
    if (kind == FM_OPT_ADAGRAD) {
        __m128 G = _mm_loadu_ps(st);
        w = fm_adagrad_ps(w, &G, g, eta, refine);
        _mm_storeu_ps(st, G);
        return w;
    }
    if (kind == FM_OPT_ADAM) return fm_adam_ps(w, st, st + kp, g, eta, p);
    if (kind == FM_OPT_FTRL) return fm_ftrl_ps(w, st, st + kp, g, eta, p);
    return fm_sgd_ps(w, g, eta);
}
#endif /* FM_SSE */

#if FM_AVX
/* ------------------------------------------------------------------------
 * Eight lanes (AVX): the SSE functions' operations, lane for lane.
 * ------------------------------------------------------------------------ */

FM_AVX_INLINE __m256 fm_rsqrt_avx(__m256 x, const int refine) {
    __m256 r = _mm256_rsqrt_ps(x);
    if (refine) {
        const __m256 half = _mm256_set1_ps(0.5f), three = _mm256_set1_ps(3.0f);
        r = _mm256_mul_ps(_mm256_mul_ps(half, r), _mm256_sub_ps(three, _mm256_mul_ps(_mm256_mul_ps(x, r), r)));
    }
    return r;
}

/* fm_hsum4_ps in each half of v. */
FM_AVX_INLINE __m256 fm_hsum4x2_avx(__m256 v) {
    v = _mm256_add_ps(v, _mm256_permute_ps(v, _MM_SHUFFLE(1, 0, 3, 2)));
    return _mm256_add_ps(v, _mm256_permute_ps(v, _MM_SHUFFLE(2, 3, 0, 1)));
}

FM_AVX_INLINE __m256 fm_rate_step_avx(__m256 w, __m256 g, __m256 eta, __m256 r) {
    return _mm256_sub_ps(w, _mm256_mul_ps(_mm256_mul_ps(eta, g), r));
}

FM_AVX_INLINE __m256 fm_adagrad_avx(__m256 w, __m256 *G, __m256 g, __m256 eta, const int refine) {
    const __m256 acc = _mm256_add_ps(*G, _mm256_mul_ps(g, g));
    const __m256 r = fm_rsqrt_avx(acc, refine);
    *G = acc;
    return fm_rate_step_avx(w, g, eta, r);
}

FM_AVX_INLINE __m256 fm_sqsum_avx(__m256 s, __m256 g) {
    return _mm256_add_ps(s, _mm256_mul_ps(g, g));
}

/* fm_rowada_rate_ps for two blocks at once, one per half: G1's block's sum
 * of squares in every lane of ss's low half, G2's in the high half. */
FM_AVX_INLINE __m256 fm_rowada_rate2_avx(float *G1, float *G2, __m256 ss, __m256 ik, const int refine) {
    const __m256 G = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_set1_ps(*G1)), _mm_set1_ps(*G2), 1);
    const __m256 acc = _mm256_add_ps(G, _mm256_mul_ps(ss, ik));
    _mm_store_ss(G1, _mm256_castps256_ps128(acc));
    _mm_store_ss(G2, _mm256_extractf128_ps(acc, 1));
    return fm_rsqrt_avx(acc, refine);
}
#endif /* FM_AVX */

/* ------------------------------------------------------------------------
 * Whole blocks, for opt_block (_optim.pxd) in float32.
 * ------------------------------------------------------------------------ */

/* AdaGrad on n weights w with accumulators G: four lanes at a time by
 * fm_adagrad_ps (see fm_rsqrt_ps for `refine`), the rest by fm_adagrad_1
 * (always exact). */
static inline void fm_adagrad_f32(float *w, float *G, const float *g, float eta, fm_idx n, int refine) {
    fm_idx d = 0;
#if FM_SSE
    const __m128 e = _mm_set1_ps(eta);
    for (; d + 4 <= n; d += 4) {
        __m128 acc = _mm_loadu_ps(G + d);
        __m128 nw = fm_adagrad_ps(_mm_loadu_ps(w + d), &acc, _mm_loadu_ps(g + d), e, refine);
        _mm_storeu_ps(G + d, acc);
        _mm_storeu_ps(w + d, nw);
    }
#else
    (void)refine;
#endif
    for (; d < n; d++) w[d] = fm_adagrad_1(w[d], &G[d], g[d], eta);
}

/* Row-wise AdaGrad of the block of n weights w (n a multiple of 4, or 1),
 * its accumulator w[n], with gradient g; inv_k: 1 / the block's real
 * weights.  With SSE the rate's 1/sqrt is fm_rsqrt_ps's. */
static inline void fm_rowada_f32(float *w, const float *g, float eta, float inv_k, fm_idx n, int refine) {
#if FM_SSE
    const __m128 e = _mm_set1_ps(eta), ik = _mm_set1_ps(inv_k);
    if (n % 4 == 0) {
        __m128 sq = _mm_setzero_ps();
        for (fm_idx d = 0; d < n; d += 4) sq = fm_sqsum_ps(sq, _mm_loadu_ps(g + d));
        const __m128 r = fm_rowada_rate_ps(w + n, fm_hsum4_ps(sq), ik, refine);
        for (fm_idx d = 0; d < n; d += 4)
            _mm_storeu_ps(w + d, fm_rate_step_ps(_mm_loadu_ps(w + d), _mm_loadu_ps(g + d), e, r));
        return;
    }
    if (n == 1) {   /* one weight, in lane 0: its square is the block's sum */
        const __m128 g1 = _mm_load_ss(g);
        const __m128 r = fm_rowada_rate_ps(w + 1, _mm_mul_ss(g1, g1), ik, refine);
        _mm_store_ss(w, fm_rate_step_ps(_mm_load_ss(w), g1, e, r));
        return;
    }
#endif
    (void)refine;
    float ss = 0.0f;
    for (fm_idx d = 0; d < n; d++) ss = fm_sqsum_1(ss, g[d]);
    const float r = fm_rowada_rate_1(w + n, ss, inv_k);
    for (fm_idx d = 0; d < n; d++) w[d] = fm_rate_step_1(w[d], g[d], eta, r);
}

#endif /* FMCLI_OPT_F32_H */
