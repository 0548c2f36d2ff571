/* Float32 fast path of FmFM's row loops (score, and the gradients of one
 * row's per-row step or of its share of a mini-batch).
 *
 * The mathematics are those of the generic loops in _kernels.pyx (the float64
 * reference).  A row is compacted by fm_fwfm_prepare (fwfm_f32.h): for each
 * kept entry i, ov[i] = j_i * fs (its factor block), fi[i] = f_i and
 * xs[i] = x_i * scale.  Field pair (a, c), a <= c, has a kp x kp matrix P in
 * R: its row r is the block R + ((a * m + c) * kp + r) * fs, a block of the
 * same format as a factor block (kp weights, then the optimizer state).  For a
 * pair of entries i < l, with lo the entry of the lower field (ties: i) and
 * hi the other, and s = x_i x_l:
 *     fields differ:  s * v_lo^T P v_hi
 *     same field:     s * (v_i^T P v_l + v_l^T P v_i) / 2
 * and the gradients at the parameters the row was scored with (times kappa):
 *     fields differ:  v_lo: s P v_hi    v_hi: s P^T v_lo    P: s v_lo v_hi^T
 *     same field:     v_i: s (P + P^T) v_l / 2    v_l: s (P + P^T) v_i / 2
 *                     P: s (v_i v_l^T + v_l v_i^T) / 2
 *
 * The loops take a block four lanes at a time (kp is a multiple of 4; SSE
 * registers, or four floats where there is no SSE): a product P^T v is a sum
 * of the rows of P scaled by v's entries, lane group by lane group, and P v
 * takes four rows at a time, their four dot products summed across lanes at
 * once.  The loops are instantiated for kp = 4, 8 and 16 as constants.  Only
 * the order of the float32 additions differs from the generic loop.  The
 * results do not depend on the SIMD level (no AVX variant).  The steps stay
 * with the optimizers of _optim.pxd, as for FwFM. */
#ifndef FMCLI_FMFM_F32_H
#define FMCLI_FMFM_F32_H

#include <string.h>

#include "ffm_f32.h"
#include "fwfm_f32.h"

/* Four lanes of a block: SSE registers, or four floats where there is no SSE. */
#if FM_SSE
typedef __m128 fm_f4;
static inline fm_f4 fm_f4_zero(void) { return _mm_setzero_ps(); }
static inline fm_f4 fm_f4_load(const float *p) { return _mm_loadu_ps(p); }
static inline void fm_f4_store(float *p, fm_f4 v) { _mm_storeu_ps(p, v); }
static inline fm_f4 fm_f4_set1(float x) { return _mm_set1_ps(x); }
static inline fm_f4 fm_f4_add(fm_f4 a, fm_f4 b) { return _mm_add_ps(a, b); }
static inline fm_f4 fm_f4_mul(fm_f4 a, fm_f4 b) { return _mm_mul_ps(a, b); }
/* (sum of a's lanes, of b's, of c's, of d's) */
static inline fm_f4 fm_f4_sums(fm_f4 a, fm_f4 b, fm_f4 c, fm_f4 d) {
    _MM_TRANSPOSE4_PS(a, b, c, d);
    return _mm_add_ps(_mm_add_ps(a, b), _mm_add_ps(c, d));
}
static inline float fm_f4_sum(fm_f4 a) { return _mm_cvtss_f32(fm_hsum4_ps(a)); }
#else
typedef struct { float x[4]; } fm_f4;
static inline fm_f4 fm_f4_zero(void) { fm_f4 r = {{0.0f, 0.0f, 0.0f, 0.0f}}; return r; }
static inline fm_f4 fm_f4_load(const float *p) { fm_f4 r = {{p[0], p[1], p[2], p[3]}}; return r; }
static inline void fm_f4_store(float *p, fm_f4 v) { for (int d = 0; d < 4; d++) p[d] = v.x[d]; }
static inline fm_f4 fm_f4_set1(float x) { fm_f4 r = {{x, x, x, x}}; return r; }
static inline fm_f4 fm_f4_add(fm_f4 a, fm_f4 b) { for (int d = 0; d < 4; d++) a.x[d] += b.x[d]; return a; }
static inline fm_f4 fm_f4_mul(fm_f4 a, fm_f4 b) { for (int d = 0; d < 4; d++) a.x[d] *= b.x[d]; return a; }
static inline float fm_f4_sum(fm_f4 a) { return (a.x[0] + a.x[1]) + (a.x[2] + a.x[3]); }
static inline fm_f4 fm_f4_sums(fm_f4 a, fm_f4 b, fm_f4 c, fm_f4 d) {
    fm_f4 r = {{fm_f4_sum(a), fm_f4_sum(b), fm_f4_sum(c), fm_f4_sum(d)}};
    return r;
}
#endif

/* a += b * c */
static inline fm_f4 fm_f4_fma(fm_f4 a, fm_f4 b, fm_f4 c) { return fm_f4_add(a, fm_f4_mul(b, c)); }

/* Lanes d .. d+3 of P^T v: the rows of P (row r at P + r * fs) scaled by v[r] and summed. */
FM_INLINE fm_f4 fmfm_tmul4(const float *P, fm_idx fs, const float *v, fm_idx d, const fm_idx kp) {
    fm_f4 u = fm_f4_zero();
    for (fm_idx r = 0; r < kp; r++) u = fm_f4_fma(u, fm_f4_set1(v[r]), fm_f4_load(P + r * fs + d));
    return u;
}

/* Rows rr .. rr+3 of P v: four dot products along the rows, summed at the end. */
FM_INLINE fm_f4 fmfm_mul4(const float *P, fm_idx fs, const float *v, fm_idx rr, const fm_idx kp) {
    fm_f4 p0 = fm_f4_zero(), p1 = fm_f4_zero(), p2 = fm_f4_zero(), p3 = fm_f4_zero();
    const float *P0 = P + rr * fs;
    for (fm_idx d = 0; d < kp; d += 4) {
        const fm_f4 y = fm_f4_load(v + d);
        p0 = fm_f4_fma(p0, fm_f4_load(P0 + d), y);
        p1 = fm_f4_fma(p1, fm_f4_load(P0 + fs + d), y);
        p2 = fm_f4_fma(p2, fm_f4_load(P0 + 2 * fs + d), y);
        p3 = fm_f4_fma(p3, fm_f4_load(P0 + 3 * fs + d), y);
    }
    return fm_f4_sums(p0, p1, p2, p3);
}

/* The pairs of a prepared row: its pair term.  The pair terms are summed
 * lane by lane and added up at the end. */
FM_INLINE float fmfm_pairs(const float *F, const fm_idx kp, const float *R, fm_idx fs, fm_idx m,
                           const fm_idx *ov, const fm_idx *fi, const float *xs, fm_idx c) {
    fm_f4 acc = fm_f4_zero();
    for (fm_idx i = 0; i < c; i++) {
        const float *vi = F + ov[i];
        const fm_idx a = fi[i];
        const float xi = xs[i];
        for (fm_idx l = i + 1; l < c; l++) {
            const float *vl = F + ov[l];
            const fm_idx b = fi[l];
            const float *P = R + fm_field_pair(a, b, m) * kp * fs;
            if (a == b) {
                /* (v_i^T P v_l + v_l^T P v_i) / 2 = (<P^T v_i, v_l> + <P^T v_l, v_i>) / 2 */
                const fm_f4 h = fm_f4_set1(0.5f * (xi * xs[l]));
                for (fm_idx d = 0; d < kp; d += 4) {
                    fm_f4 t = fm_f4_mul(fmfm_tmul4(P, fs, vi, d, kp), fm_f4_load(vl + d));
                    t = fm_f4_fma(t, fmfm_tmul4(P, fs, vl, d, kp), fm_f4_load(vi + d));
                    acc = fm_f4_fma(acc, h, t);
                }
            } else {
                const float *vlo = a < b ? vi : vl, *vhi = a < b ? vl : vi;
                const fm_f4 s = fm_f4_set1(xi * xs[l]);
                for (fm_idx d = 0; d < kp; d += 4)
                    acc = fm_f4_fma(acc, s, fm_f4_mul(fmfm_tmul4(P, fs, vlo, d, kp), fm_f4_load(vhi + d)));
            }
        }
    }
    return fm_f4_sum(acc);
}

/* One pair's gradients (fields differ), sv = kappa x_i x_l: glo += sv P v_hi,
 * ghi += sv P^T v_lo, gP += sv v_lo v_hi^T (gP: kp rows of kp). */
FM_INLINE void fmfm_pair_grads(const float *P, fm_idx fs, const float *vlo, const float *vhi, float sv,
                               float *glo, float *ghi, float *gP, const fm_idx kp) {
    const fm_f4 s = fm_f4_set1(sv);
    for (fm_idx rr = 0; rr < kp; rr += 4)
        fm_f4_store(glo + rr, fm_f4_fma(fm_f4_load(glo + rr), s, fmfm_mul4(P, fs, vhi, rr, kp)));
    for (fm_idx d = 0; d < kp; d += 4) {
        const fm_f4 y = fm_f4_mul(s, fm_f4_load(vhi + d));
        fm_f4 u = fm_f4_zero();
        for (fm_idx r = 0; r < kp; r++) {
            const fm_f4 a = fm_f4_set1(vlo[r]);
            float *gr = gP + r * kp + d;
            u = fm_f4_fma(u, a, fm_f4_load(P + r * fs + d));
            fm_f4_store(gr, fm_f4_fma(fm_f4_load(gr), a, y));
        }
        fm_f4_store(ghi + d, fm_f4_fma(fm_f4_load(ghi + d), s, u));
    }
}

/* One pair's gradients (same field), h = kappa x_i x_l / 2:
 * gi += h (P v_l + P^T v_l), gl += h (P v_i + P^T v_i), gP += h (v_i v_l^T + v_l v_i^T). */
FM_INLINE void fmfm_pair_grads_sym(const float *P, fm_idx fs, const float *vi, const float *vl, float h,
                                   float *gi, float *gl, float *gP, const fm_idx kp) {
    const fm_f4 s = fm_f4_set1(h);
    for (fm_idx rr = 0; rr < kp; rr += 4) {
        fm_f4_store(gi + rr, fm_f4_fma(fm_f4_load(gi + rr), s, fmfm_mul4(P, fs, vl, rr, kp)));
        fm_f4_store(gl + rr, fm_f4_fma(fm_f4_load(gl + rr), s, fmfm_mul4(P, fs, vi, rr, kp)));
    }
    for (fm_idx d = 0; d < kp; d += 4) {
        const fm_f4 yi = fm_f4_mul(s, fm_f4_load(vi + d)), yl = fm_f4_mul(s, fm_f4_load(vl + d));
        fm_f4 ui = fm_f4_zero(), ul = fm_f4_zero();
        for (fm_idx r = 0; r < kp; r++) {
            const fm_f4 ai = fm_f4_set1(vi[r]), al = fm_f4_set1(vl[r]), x = fm_f4_load(P + r * fs + d);
            float *gr = gP + r * kp + d;
            ui = fm_f4_fma(ui, ai, x);     /* P^T v_i */
            ul = fm_f4_fma(ul, al, x);     /* P^T v_l */
            fm_f4_store(gr, fm_f4_fma(fm_f4_fma(fm_f4_load(gr), ai, yl), al, yi));
        }
        fm_f4_store(gi + d, fm_f4_fma(fm_f4_load(gi + d), s, ul));
        fm_f4_store(gl + d, fm_f4_fma(fm_f4_load(gl + d), s, ui));
    }
}

/* The gradients of a prepared row: g[i * kp ...] for entry i's block
 * (kappa times its pair sums, plus lam v_i), and for each field pair p the
 * row touches, its matrix's gradient summed over the row's pairs at
 * mg + slot * kp * kp (kp rows of kp), where pslot[p] = slot + 1 and
 * touched[slot] = p for the slots *n_touched .. in the order of first touch
 * (pslot must be 0 for every pair not yet listed; a new slot starts at 0). */
FM_INLINE void fmfm_grads(const float *F, const fm_idx kp, const float *R, fm_idx fs, fm_idx m,
                          const fm_idx *ov, const fm_idx *fi, const float *xs, fm_idx c, float kappa,
                          float lam, float *g, float *mg, fm_idx *pslot, fm_idx *touched,
                          fm_idx *n_touched) {
    fm_idx nt = *n_touched;
    memset(g, 0, sizeof(float) * (size_t)(c * kp));
    for (fm_idx i = 0; i < c; i++) {
        const float *vi = F + ov[i];
        float *gi = g + i * kp;
        const fm_idx a = fi[i];
        const float xi = xs[i];
        for (fm_idx l = i + 1; l < c; l++) {
            const float *vl = F + ov[l];
            float *gl = g + l * kp;
            const fm_idx b = fi[l];
            const fm_idx p = fm_field_pair(a, b, m);
            const float *P = R + p * kp * fs;
            const float sv = kappa * (xi * xs[l]);
            if (!pslot[p]) {
                touched[nt] = p;
                pslot[p] = ++nt;
                memset(mg + (nt - 1) * kp * kp, 0, sizeof(float) * (size_t)(kp * kp));
            }
            float *gP = mg + (pslot[p] - 1) * kp * kp;
            if (a == b) fmfm_pair_grads_sym(P, fs, vi, vl, 0.5f * sv, gi, gl, gP, kp);
            else if (a < b) fmfm_pair_grads(P, fs, vi, vl, sv, gi, gl, gP, kp);
            else fmfm_pair_grads(P, fs, vl, vi, sv, gl, gi, gP, kp);
        }
    }
    /* factor L2 from the start-of-row values */
    const fm_f4 l4 = fm_f4_set1(lam);
    for (fm_idx i = 0; i < c; i++) {
        const float *vi = F + ov[i];
        float *gi = g + i * kp;
        for (fm_idx d = 0; d < kp; d += 4) fm_f4_store(gi + d, fm_f4_fma(fm_f4_load(gi + d), l4, fm_f4_load(vi + d)));
    }
    *n_touched = nt;
}

/* kp as a constant for the common widths: the loops over a block's lanes
 * and a matrix's rows unroll. */
#define FM_FMFM_WIDTH(K)                                                                                 \
    static float fmfm_pairs_##K(const float *F, const float *R, fm_idx fs, fm_idx m, const fm_idx *ov,   \
                                const fm_idx *fi, const float *xs, fm_idx c) {                           \
        return fmfm_pairs(F, K, R, fs, m, ov, fi, xs, c);                                                \
    }                                                                                                    \
    static void fmfm_grads_##K(const float *F, const float *R, fm_idx fs, fm_idx m, const fm_idx *ov,    \
                               const fm_idx *fi, const float *xs, fm_idx c, float kappa, float lam,      \
                               float *g, float *mg, fm_idx *pslot, fm_idx *touched, fm_idx *n_touched) { \
        fmfm_grads(F, K, R, fs, m, ov, fi, xs, c, kappa, lam, g, mg, pslot, touched, n_touched);         \
    }
FM_FMFM_WIDTH(4)
FM_FMFM_WIDTH(8)
FM_FMFM_WIDTH(16)
#undef FM_FMFM_WIDTH

/* Pair terms of a prepared row's score. */
static inline float fm_fmfm_pairs_f32(const float *F, fm_idx kp, const float *R, fm_idx fs, fm_idx m,
                                      const fm_idx *ov, const fm_idx *fi, const float *xs, fm_idx c) {
    if (kp == 4) return fmfm_pairs_4(F, R, fs, m, ov, fi, xs, c);
    if (kp == 8) return fmfm_pairs_8(F, R, fs, m, ov, fi, xs, c);
    if (kp == 16) return fmfm_pairs_16(F, R, fs, m, ov, fi, xs, c);
    return fmfm_pairs(F, kp, R, fs, m, ov, fi, xs, c);
}

/* The gradients of a prepared row (see fmfm_grads). */
static inline void fm_fmfm_grads_f32(const float *F, fm_idx kp, const float *R, fm_idx fs, fm_idx m,
                                     const fm_idx *ov, const fm_idx *fi, const float *xs, fm_idx c,
                                     float kappa, float lam, float *g, float *mg, fm_idx *pslot,
                                     fm_idx *touched, fm_idx *n_touched) {
    if (kp == 4) fmfm_grads_4(F, R, fs, m, ov, fi, xs, c, kappa, lam, g, mg, pslot, touched, n_touched);
    else if (kp == 8) fmfm_grads_8(F, R, fs, m, ov, fi, xs, c, kappa, lam, g, mg, pslot, touched, n_touched);
    else if (kp == 16) fmfm_grads_16(F, R, fs, m, ov, fi, xs, c, kappa, lam, g, mg, pslot, touched, n_touched);
    else fmfm_grads(F, kp, R, fs, m, ov, fi, xs, c, kappa, lam, g, mg, pslot, touched, n_touched);
}

#endif /* FMCLI_FMFM_F32_H */
