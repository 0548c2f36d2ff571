/* Float32 fast path of FwFM's row loops (score, and the gradients of one
 * row's per-row step).
 *
 * The mathematics are those of the generic loops in _kernels.pyx (the float64
 * reference): for a row's kept entries i (feature j_i, field f_i, value
 * x_i = val_i * scale) the pair term is
 *     sum over i < l of  R[f_i, f_l] x_i x_l <v_i, v_l>
 * and the row's gradients at the parameters the row was scored with are
 *     v_i:       kappa * sum over l != i of R[f_i, f_l] x_i x_l v_l  +  lam v_i
 *     R[a, b]:   kappa * sum over the row's pairs with fields {a, b} of x_i x_l <v_i, v_l>
 * Here every pair is visited once (the generic loop visits each twice, once
 * from either side) and the k-vectors are handled four lanes at a time with
 * SSE, or eight with AVX where the CPU has it and k is padded to a multiple
 * of 8 (bit-for-bit the SSE results); only the order of the float32
 * additions differs from the generic loop.
 * The steps themselves stay with the optimizers of _optim.pxd (the caller
 * hands these gradients to them), so every optimizer, mini-batches and
 * clipping behave as in the generic path.
 *
 * A factor block is kp weights (kp a multiple of 4) and its state: feature j's
 * block starts at F + j * fs.  Field-pair weight (a, b), a <= b, is
 * R[(a * m + b) * ls]. */
#ifndef FMCLI_FWFM_F32_H
#define FMCLI_FWFM_F32_H

#include <string.h>

#include "ffm_f32.h"

/* Compact a row: entries outside the model are dropped and, for each kept
 * entry i, ov[i] = j_i * fs (its block), fi[i] = f_i and xs[i] = x_i * scale. */
static inline fm_idx fm_fwfm_prepare(fm_idx n, fm_idx m, fm_idx fs, const int *fld, const int *feat,
                                     const float *val, fm_idx nnz, float scale, fm_idx *ov, fm_idx *fi,
                                     float *xs) {
    fm_idx c = 0;
    for (fm_idx i = 0; i < nnz; i++) {
        if (feat[i] >= n || fld[i] >= m) continue;
        ov[c] = (fm_idx)feat[i] * fs;
        fi[c] = fld[i];
        xs[c] = val[i] * scale;
        c++;
    }
    return c;
}

/* Index of the weight of fields a and b (the upper triangle of R). */
static inline fm_idx fm_field_pair(fm_idx a, fm_idx b, fm_idx m) {
    return a <= b ? a * m + b : b * m + a;
}

/* The scoring loops' walk over the pairs i < l of a prepared row: the
 * statements given run with vi, vl (the two blocks) and s = R[f_i, f_l] x_i x_l. */
#define FM_FWFM_SCORE_PAIRS(...) \
    for (fm_idx i = 0; i < c; i++) { \
        const float *vi = F + ov[i]; \
        const fm_idx a = fi[i]; \
        const float xi = xs[i]; \
        for (fm_idx l = i + 1; l < c; l++) { \
            const float *vl = F + ov[l]; \
            const float s = R[fm_field_pair(a, fi[l], m) * ls] * (xi * xs[l]); \
            __VA_ARGS__ \
        } \
    }

/* The SSE loops sum a k-vector's groups of four lanes in two partial sums
 * (even and odd groups) that are added at the end: the AVX loops below hold
 * the same two partial sums in the halves of one register, so the two
 * levels give bit-for-bit the same results. */
FM_INLINE float fwfm_pairs(const float *F, const fm_idx kp, const float *R, fm_idx ls, fm_idx m,
                           const fm_idx *ov, const fm_idx *fi, const float *xs, fm_idx c) {
#if FM_SSE
    /* [l's parity][group's parity]: pairs alternate between two chains */
    __m128 acc[2][2] = {{_mm_setzero_ps(), _mm_setzero_ps()}, {_mm_setzero_ps(), _mm_setzero_ps()}};
#else
    float acc = 0.0f;
#endif
#if FM_SSE
    FM_FWFM_SCORE_PAIRS(
        const __m128 sv = _mm_set1_ps(s);
        __m128 *A = acc[l & 1];
        for (fm_idx d = 0; d < kp; d += 4)
            A[(d >> 2) & 1] = _mm_add_ps(A[(d >> 2) & 1],
                                         _mm_mul_ps(_mm_mul_ps(_mm_loadu_ps(vi + d), _mm_loadu_ps(vl + d)), sv));
    )
    __m128 t = _mm_add_ps(_mm_add_ps(acc[0][0], acc[0][1]), _mm_add_ps(acc[1][0], acc[1][1]));
    t = _mm_add_ps(t, _mm_movehl_ps(t, t));
    t = _mm_add_ss(t, _mm_shuffle_ps(t, t, 1));
    return _mm_cvtss_f32(t);
#else
    FM_FWFM_SCORE_PAIRS(
        float dot = 0.0f;
        for (fm_idx d = 0; d < kp; d++) dot += vi[d] * vl[d];
        acc += dot * s;
    )
    return acc;
#endif
}

/* The gradient loops' names for entry i (its block vi, its gradient gi,
 * field a, value xi) and for pair (i, l): vl, gl, the field-pair weight's
 * index p, xx = x_i x_l and s = R[p] x_i x_l. */
#define FM_FWFM_ENTRY \
    const float *vi = F + ov[i]; \
    float *gi = g + i * kp; \
    const fm_idx a = fi[i]; \
    const float xi = xs[i];
#define FM_FWFM_PAIR_ENTRY \
    const float *vl = F + ov[l]; \
    float *gl = g + l * kp; \
    const fm_idx p = fm_field_pair(a, fi[l], m); \
    const float xx = xi * xs[l], s = R[p * ls] * xx;

/* Add v to field-pair weight p's gradient, listing p the first time. */
static inline void fm_fwfm_rg_add(float *rg, char *rmark, fm_idx *touched, fm_idx *nt, fm_idx p, float v) {
    if (!rmark[p]) {
        rmark[p] = 1;
        touched[(*nt)++] = p;
    }
    rg[p] += v;
}

/* The gradients of a prepared row: g[i * kp ...] for entry i's block, and
 * rg[p] += the row's gradient of field-pair weight p, where the p the row
 * touches are listed once each in touched[0 .. *n_touched) (rmark[p] set). */
FM_INLINE void fwfm_grads(const float *F, const fm_idx kp, const float *R, fm_idx ls, fm_idx m,
                          const fm_idx *ov, const fm_idx *fi, const float *xs, fm_idx c, float kappa,
                          float lam, float *g, float *rg, char *rmark, fm_idx *touched, fm_idx *n_touched) {
    fm_idx nt = *n_touched;
    memset(g, 0, sizeof(float) * (size_t)(c * kp));
    for (fm_idx i = 0; i < c; i++) {
        FM_FWFM_ENTRY
#if FM_SSE
        /* k padded to at most 16: entry i's sum stays in registers */
        const int keep = kp <= 16;
        __m128 ga[4] = {_mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps()};
#endif
        for (fm_idx l = i + 1; l < c; l++) {
            FM_FWFM_PAIR_ENTRY
            float dot;
#if FM_SSE
            const __m128 sv = _mm_set1_ps(s);
            __m128 prod[2] = {_mm_setzero_ps(), _mm_setzero_ps()};
            for (fm_idx d = 0; d < kp; d += 4) {
                const __m128 x = _mm_loadu_ps(vi + d), y = _mm_loadu_ps(vl + d);
                prod[(d >> 2) & 1] = _mm_add_ps(prod[(d >> 2) & 1], _mm_mul_ps(x, y));
                if (keep) ga[d >> 2] = _mm_add_ps(ga[d >> 2], _mm_mul_ps(sv, y));
                else _mm_storeu_ps(gi + d, _mm_add_ps(_mm_loadu_ps(gi + d), _mm_mul_ps(sv, y)));
                _mm_storeu_ps(gl + d, _mm_add_ps(_mm_loadu_ps(gl + d), _mm_mul_ps(sv, x)));
            }
            dot = _mm_cvtss_f32(fm_hsum4_ps(_mm_add_ps(prod[0], prod[1])));
#else
            dot = 0.0f;
            for (fm_idx d = 0; d < kp; d++) {
                dot += vi[d] * vl[d];
                gi[d] += s * vl[d];
                gl[d] += s * vi[d];
            }
#endif
            fm_fwfm_rg_add(rg, rmark, touched, &nt, p, kappa * xx * dot);
        }
#if FM_SSE
        if (keep)
            for (fm_idx d = 0; d < kp; d += 4) _mm_storeu_ps(gi + d, _mm_add_ps(_mm_loadu_ps(gi + d), ga[d >> 2]));
#endif
    }
    for (fm_idx i = 0; i < c; i++) {
        const float *vi = F + ov[i];
        float *gi = g + i * kp;
        for (fm_idx d = 0; d < kp; d++) gi[d] = kappa * gi[d] + lam * vi[d];
    }
    *n_touched = nt;
}

/* AdaGrad steps of the field-pair weights a row touched: for each p in
 * touched[0 .. nt), weight R[p * ls] (its accumulator right after it) with
 * gradient rg[p]; then rg[p] and rmark[p] are cleared.  The step is
 * fm_adagrad_1's (exact square root), four weights at a time by
 * fm_adagrad_exact_ps (opt_f32.h). */
static inline void fm_fwfm_adagrad_r_f32(float *R, fm_idx ls, const fm_idx *touched, fm_idx nt, float *rg,
                                         char *rmark, float eta) {
    fm_idx t = 0;
#if FM_SSE
    const __m128 e = _mm_set1_ps(eta);
    for (; t + 4 <= nt; t += 4) {
        float *w0 = R + touched[t] * ls, *w1 = R + touched[t + 1] * ls;
        float *w2 = R + touched[t + 2] * ls, *w3 = R + touched[t + 3] * ls;
        const __m128 g = _mm_setr_ps(rg[touched[t]], rg[touched[t + 1]], rg[touched[t + 2]], rg[touched[t + 3]]);
        __m128 G = _mm_setr_ps(w0[1], w1[1], w2[1], w3[1]);
        const __m128 nw = fm_adagrad_exact_ps(_mm_setr_ps(w0[0], w1[0], w2[0], w3[0]), &G, g, e);
        float ow[4], oG[4];
        _mm_storeu_ps(ow, nw);
        _mm_storeu_ps(oG, G);
        w0[0] = ow[0]; w0[1] = oG[0];
        w1[0] = ow[1]; w1[1] = oG[1];
        w2[0] = ow[2]; w2[1] = oG[2];
        w3[0] = ow[3]; w3[1] = oG[3];
    }
#endif
    for (; t < nt; t++) {
        float *w = R + touched[t] * ls;
        w[0] = fm_adagrad_1(w[0], &w[1], rg[touched[t]], eta);
    }
    for (t = 0; t < nt; t++) {
        rg[touched[t]] = 0.0f;
        rmark[touched[t]] = 0;
    }
}

#if FM_AVX
/* k padded to a multiple of 8: the loops above eight lanes at a time. */
FM_AVX_INLINE float fwfm_pairs_avx(const float *F, const fm_idx kp, const float *R, fm_idx ls, fm_idx m,
                                   const fm_idx *ov, const fm_idx *fi, const float *xs, fm_idx c) {
    __m256 acc[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
    FM_FWFM_SCORE_PAIRS(
        const __m256 sv = _mm256_set1_ps(s);
        for (fm_idx d = 0; d < kp; d += 8)
            acc[l & 1] = _mm256_add_ps(acc[l & 1], _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(vi + d),
                                                                                _mm256_loadu_ps(vl + d)), sv));
    )
    __m128 t = _mm_add_ps(_mm_add_ps(_mm256_castps256_ps128(acc[0]), _mm256_extractf128_ps(acc[0], 1)),
                          _mm_add_ps(_mm256_castps256_ps128(acc[1]), _mm256_extractf128_ps(acc[1], 1)));
    t = _mm_add_ps(t, _mm_movehl_ps(t, t));
    t = _mm_add_ss(t, _mm_shuffle_ps(t, t, 1));
    return _mm_cvtss_f32(t);
}

FM_AVX_INLINE void fwfm_grads_avx(const float *F, const fm_idx kp, const float *R, fm_idx ls, fm_idx m,
                                  const fm_idx *ov, const fm_idx *fi, const float *xs, fm_idx c, float kappa,
                                  float lam, float *g, float *rg, char *rmark, fm_idx *touched,
                                  fm_idx *n_touched) {
    fm_idx nt = *n_touched;
    memset(g, 0, sizeof(float) * (size_t)(c * kp));
    for (fm_idx i = 0; i < c; i++) {
        FM_FWFM_ENTRY
        const int keep = kp <= 16;
        __m256 ga[2] = {_mm256_setzero_ps(), _mm256_setzero_ps()};
        for (fm_idx l = i + 1; l < c; l++) {
            FM_FWFM_PAIR_ENTRY
            const __m256 sv = _mm256_set1_ps(s);
            __m256 prod = _mm256_setzero_ps();
            for (fm_idx d = 0; d < kp; d += 8) {
                const __m256 x = _mm256_loadu_ps(vi + d), y = _mm256_loadu_ps(vl + d);
                prod = _mm256_add_ps(prod, _mm256_mul_ps(x, y));
                if (keep) ga[d >> 3] = _mm256_add_ps(ga[d >> 3], _mm256_mul_ps(sv, y));
                else _mm256_storeu_ps(gi + d, _mm256_add_ps(_mm256_loadu_ps(gi + d), _mm256_mul_ps(sv, y)));
                _mm256_storeu_ps(gl + d, _mm256_add_ps(_mm256_loadu_ps(gl + d), _mm256_mul_ps(sv, x)));
            }
            const float dot = _mm_cvtss_f32(fm_hsum4_ps(_mm_add_ps(_mm256_castps256_ps128(prod),
                                                                   _mm256_extractf128_ps(prod, 1))));
            fm_fwfm_rg_add(rg, rmark, touched, &nt, p, kappa * xx * dot);
        }
        if (keep)
            for (fm_idx d = 0; d < kp; d += 8)
                _mm256_storeu_ps(gi + d, _mm256_add_ps(_mm256_loadu_ps(gi + d), ga[d >> 3]));
    }
    const __m256 k8 = _mm256_set1_ps(kappa), l8 = _mm256_set1_ps(lam);
    for (fm_idx i = 0; i < c; i++) {
        const float *vi = F + ov[i];
        float *gi = g + i * kp;
        for (fm_idx d = 0; d < kp; d += 8)
            _mm256_storeu_ps(gi + d, _mm256_add_ps(_mm256_mul_ps(k8, _mm256_loadu_ps(gi + d)),
                                                   _mm256_mul_ps(l8, _mm256_loadu_ps(vi + d))));
    }
    *n_touched = nt;
}

FM_AVX_FN float fm_fwfm_pairs_avx(const float *F, fm_idx kp, const float *R, fm_idx ls, fm_idx m,
                                  const fm_idx *ov, const fm_idx *fi, const float *xs, fm_idx c) {
    if (kp == 8) return fwfm_pairs_avx(F, 8, R, ls, m, ov, fi, xs, c);
    if (kp == 16) return fwfm_pairs_avx(F, 16, R, ls, m, ov, fi, xs, c);
    return fwfm_pairs_avx(F, kp, R, ls, m, ov, fi, xs, c);
}

FM_AVX_FN void fm_fwfm_grads_avx(const float *F, fm_idx kp, const float *R, fm_idx ls, fm_idx m,
                                 const fm_idx *ov, const fm_idx *fi, const float *xs, fm_idx c, float kappa,
                                 float lam, float *g, float *rg, char *rmark, fm_idx *touched,
                                 fm_idx *n_touched) {
    if (kp == 8) fwfm_grads_avx(F, 8, R, ls, m, ov, fi, xs, c, kappa, lam, g, rg, rmark, touched, n_touched);
    else if (kp == 16) fwfm_grads_avx(F, 16, R, ls, m, ov, fi, xs, c, kappa, lam, g, rg, rmark, touched, n_touched);
    else fwfm_grads_avx(F, kp, R, ls, m, ov, fi, xs, c, kappa, lam, g, rg, rmark, touched, n_touched);
}
#endif
#undef FM_FWFM_ENTRY
#undef FM_FWFM_PAIR_ENTRY
#undef FM_FWFM_SCORE_PAIRS

/* Pair terms of a prepared row's score (see fm_fwfm_prepare). */
static inline float fm_fwfm_pairs_f32(const float *F, fm_idx kp, const float *R, fm_idx ls, fm_idx m,
                                      const fm_idx *ov, const fm_idx *fi, const float *xs, fm_idx c) {
#if FM_AVX
    if (fm_simd_level >= FM_SIMD_AVX && kp % 8 == 0) return fm_fwfm_pairs_avx(F, kp, R, ls, m, ov, fi, xs, c);
#endif
    if (kp == 4) return fwfm_pairs(F, 4, R, ls, m, ov, fi, xs, c);
    if (kp == 8) return fwfm_pairs(F, 8, R, ls, m, ov, fi, xs, c);
    if (kp == 16) return fwfm_pairs(F, 16, R, ls, m, ov, fi, xs, c);
    return fwfm_pairs(F, kp, R, ls, m, ov, fi, xs, c);
}

/* The gradients of a prepared row (see fwfm_grads). */
static inline void fm_fwfm_grads_f32(const float *F, fm_idx kp, const float *R, fm_idx ls, fm_idx m,
                                     const fm_idx *ov, const fm_idx *fi, const float *xs, fm_idx c,
                                     float kappa, float lam, float *g, float *rg, char *rmark,
                                     fm_idx *touched, fm_idx *n_touched) {
#if FM_AVX
    if (fm_simd_level >= FM_SIMD_AVX && kp % 8 == 0) {
        fm_fwfm_grads_avx(F, kp, R, ls, m, ov, fi, xs, c, kappa, lam, g, rg, rmark, touched, n_touched);
        return;
    }
#endif
#define FM_FWFM_GRADS(KP) fwfm_grads(F, KP, R, ls, m, ov, fi, xs, c, kappa, lam, g, rg, rmark, touched, n_touched)
    if (kp == 4) FM_FWFM_GRADS(4);
    else if (kp == 8) FM_FWFM_GRADS(8);
    else if (kp == 16) FM_FWFM_GRADS(16);
    else FM_FWFM_GRADS(kp);
#undef FM_FWFM_GRADS
}

#endif /* FMCLI_FWFM_F32_H */
