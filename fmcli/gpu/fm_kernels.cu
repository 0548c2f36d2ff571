// fmcli GPU kernels: training (per-row Hogwild, and exact mini-batches) and
// scoring of LR, FM, FFM, FwFM and FmFM models.  T is float or double, K the
// padded factor width (a multiple of 4); the host instantiates the pair it
// needs (fmcli/gpu/layout.py: kernel_names).
//
// fm_train_rows     batch size 1.  One warp per row (grid-stride over the
//                   rows of a launch): score, loss, gradient and optimizer
//                   step fused, in place, as the CPU's per-row loop does.
//                   Warps do not synchronise with each other: rows race on
//                   shared parameters like the CPU's Hogwild threads.  With
//                   hot accumulation (hot_on) the bias, the pair parameters
//                   and the hot features' weights are not written: the rows
//                   add their gradients to accumulators that fm_hot_apply
//                   steps with after the wave.
// fm_batch_grad     batch size b > 1 (exact mode).  One warp per row of a
//                   mini-batch: every row's data gradients at the parameters
//                   of the start of the batch, written as (block id, value)
//                   contributions into slots the host planned.
// fm_batch_apply_*  after the host sorted the contributions by (block id,
//                   slot): the first slot of each block's run sums the run in
//                   slot order (deterministic), divides by the batch's row
//                   count, adds L2 and steps the block once (an FmFM matrix
//                   row is a vector block like a factor vector, without L2).
// fm_hot_apply      after a wave of fm_train_rows that accumulated the hot
//                   parameters' gradients (the bias, the pair parameters,
//                   the most frequent features: see fm_device.cu), one step
//                   per touched item.
// fm_score_rows     one warp per row: raw scores of every class.
//
// Rows: CSR (indptr int64, fields/features int32, values float32), labels
// float32, optional weights float32; `order` lists row indices, and a
// launch covers positions pos0 .. pos0 + n_pos - 1 of it.  Per position the
// kernels write its status (ROW_*), weighted loss and weight.

#include "fm_device.cu"

// ---------------------------------------------------------------------------
// Per-row (Hogwild) update of one class's parameters

// Hot accumulation of one class in per-row mode (see fm_device.cu): off,
// or each hot feature's slot (-1: not hot) and the class's accumulators.
template <typename T>
struct Hot {
    bool on;
    const int* slot;   // per feature
    T* hs;             // scalar items: the bias, then each hot feature's linear weight
    T* hv;             // vector items: each hot feature's factor blocks (FFM: one per field)
    long long bpf;     // factor blocks per feature
    T* hps;            // FwFM's field-pair weights (scalar items, by field_pair)
    T* hpv;            // FmFM's matrix rows (vector items, by field_pair * K + row)

    __device__ __forceinline__ int of(int j) const { return on ? slot[j] : -1; }
};

// Per-row mode of FwFM and FmFM: step the factor vector of every in-model
// entry with its gradient from gbuf (nnz vectors of K, computed from the
// row's start values), each clipped on its own; a group of lanes per entry.
template <typename T, int K>
__device__ void step_factors(const Shape& s, const Opt<T>& o, T* F, const T* gbuf, const int* fld,
                             const int* feat, int nnz, int grp, int q, T l1, T l2f, const Hot<T>& h) {
    typedef Lanes<K> LN;
    const bool clip = s.clip > 0;
    for (int base = 0; base < nnz; base += LN::NPW) {
        const int i = base + grp;
        const bool act = i < nnz && entry_ok(s, fld, feat, i);
        T g[LN::E] = {};
        T nrm = 0;
        if (act) {
            for (int c = 0; c < LN::CH; ++c) if (LN::has(q, c)) {
                ld4(gbuf + (long long)i * K + LN::at(q, c), g + 4 * c);
                for (int e = 0; e < 4; ++e) nrm = nrm + g[c * 4 + e] * g[c * 4 + e];
            }
        }
        if (clip) {
            T f = clip_scale<T>(s.clip, group_sum<LN::G>(nrm));
            if (f != 1)
                for (int e = 0; e < LN::E; ++e) g[e] = g[e] * f;
        }
        if (act) {
            const int hs = h.of(feat[i]);
            T* w = F + (long long)feat[i] * s.fs;
            T* acc = h.hv + (long long)hs * hot_vec_stride<K>();
            for (int c = 0; c < LN::CH; ++c) if (LN::has(q, c)) {
                if (hs >= 0)
                    hot_add_chunk<T, K>(acc, LN::at(q, c), g + 4 * c, q == 0 && c == 0);
                else
                    opt_chunk<T>(o, w + LN::at(q, c), K, g + 4 * c, l1, l2f);
            }
        }
    }
}

// FwFM: this lane group's share of sum_{l != i} x_l r_il V_l for entry i of
// the row, the factor gradient of entry i before kappa x_i and L2.
template <typename T, int K>
__device__ void fwfm_factor_sum(const Shape& s, const T* F, const T* R, const int* fld, const int* feat,
                                const float* val, int nnz, T scale, int i, int q, T* g) {
    typedef Lanes<K> LN;
    for (int e = 0; e < LN::E; ++e) g[e] = 0;
    for (int l = 0; l < nnz; ++l) {
        if (l == i || !entry_ok(s, fld, feat, l)) continue;
        T xl = val[l] * scale;
        const T* wl = F + (long long)feat[l] * s.fs;
        T r = R[field_pair(fld[i], fld[l], s.m) * s.ls] * xl;
        for (int c = 0; c < LN::CH; ++c) if (LN::has(q, c)) {
            T b[4];
            ld4(wl + LN::at(q, c), b);
            for (int e = 0; e < 4; ++e) g[c * 4 + e] = g[c * 4 + e] + r * b[e];
        }
    }
}

// FmFM: this lane group's share of sum_{l != i} x_l A_il V_l for entry i of
// the row (A_il: the pair's matrix as entry i sees it, see mat_mode), the
// factor gradient of entry i before kappa x_i and L2.
template <typename T, int K>
__device__ void fmfm_factor_sum(const Shape& s, const T* F, const T* R, const int* fld, const int* feat,
                                const float* val, int nnz, T scale, int i, int q, T* g) {
    typedef Lanes<K> LN;
    for (int e = 0; e < LN::E; ++e) g[e] = 0;
    for (int l = 0; l < nnz; ++l) {
        if (l == i || !entry_ok(s, fld, feat, l)) continue;
        const T xl = val[l] * scale;
        T av[LN::E];
        mat_vec<T, K>(mat_at<T, K>(s, R, fld[i], fld[l]), s.fs, mat_mode(fld[i], fld[l]),
                      F + (long long)feat[l] * s.fs, q, av);
        for (int e = 0; e < LN::E; ++e) g[e] = g[e] + xl * av[e];
    }
}

// FmFM, as FwFM: every gradient from the values of the start of the row.
// The factors' gradients go to this warp's scratch (nnz blocks of K, then a
// flag per pair), then each touched field matrix is stepped once, matrix row
// by matrix row, with its gradient summed over the row's pairs (no L2; read
// from the factors, not stepped yet), then the factors are stepped in row
// order.  Matrices and factors are distinct blocks, each stepped from its
// own gradient and state: stepping the matrices first gives what the CPU's
// order (factors, then matrices) gives.
template <typename T, int K>
__device__ void update_row_fmfm(const Shape& s, const Opt<T>& o, T* F, T* R, const int* fld,
                                const int* feat, const float* val, int nnz, T scale, T kappa,
                                int lane, T* scr, const Hot<T>& h) {
    typedef Lanes<K> LN;
    const int grp = lane / LN::G, q = lane % LN::G;
    const T lamf = grad_l2<T>(s, s.l2f), l1 = (T)s.l1, l2f = (T)s.l2f;
    const bool clip = s.clip > 0;
    const long long P = (long long)nnz * (nnz - 1) / 2;
    T* gbuf = scr;
    T* own = scr + (long long)nnz * K;
    // g_i = kappa x_i sum_{l != i} x_l A_il V_l + lam V_i
    for (int i = grp; i < nnz; i += LN::NPW) {
        if (!entry_ok(s, fld, feat, i)) continue;
        T g[LN::E];
        fmfm_factor_sum<T, K>(s, F, R, fld, feat, val, nnz, scale, i, q, g);
        const T kx = kappa * (val[i] * scale);
        const T* wi = F + (long long)feat[i] * s.fs;
        for (int c = 0; c < LN::CH; ++c) if (LN::has(q, c)) {
            T a[4], v[4];
            ld4(wi + LN::at(q, c), a);
            for (int e = 0; e < 4; ++e) v[e] = kx * g[c * 4 + e] + lamf * a[e];
            st4(gbuf + (long long)i * K + LN::at(q, c), v);
        }
    }
    // With a field repeated in the row several pairs share a matrix: the
    // first of them (own[p] = 1) steps it with their sum.
    bool rep = false;
    for (int i = lane; i < nnz; i += 32)
        for (int l = 0; l < i; ++l)
            if (fld[l] == fld[i]) rep = true;
    rep = __any_sync(FM_FULL_MASK, rep);
    if (rep) {
        int i = 0, l = 0;
        if (lane < P) pair_decode(lane, nnz, i, l);
        for (long long p = lane; p < P; p += 32) {
            const long long key = field_pair(fld[i], fld[l], s.m);
            T first = 1;
            int a = 0, b = 1;
            for (long long pp = 0; pp < p; ++pp) {
                if (entry_ok(s, fld, feat, a) && entry_ok(s, fld, feat, b) && field_pair(fld[a], fld[b], s.m) == key) {
                    first = 0;
                    break;
                }
                pair_advance(nnz, 1, a, b);
            }
            own[p] = first;
            pair_advance(nnz, 32, i, l);
        }
    }
    __syncwarp();   // every read of the matrices (and of own) before the first step
    // Matrix rows: item p * K + r is row r of pair p's matrix.
    const long long items = P * K;
    for (long long base = 0; base < items; base += LN::NPW) {
        const long long it = base + grp;
        int i = 0, l = 0, r = 0;
        long long p = 0;
        bool act = false;
        if (it < items) {
            p = it / K;
            r = (int)(it % K);
            pair_decode(p, nnz, i, l);
            act = entry_ok(s, fld, feat, i) && entry_ok(s, fld, feat, l) && (!rep || own[p] != 0);
        }
        T g[LN::E] = {};
        T nrm = 0;
        if (act) {
            mat_row_grad<T, K>(F + (long long)feat[i] * s.fs, F + (long long)feat[l] * s.fs, fld[i], fld[l],
                               r, q, kappa * (val[i] * scale) * (val[l] * scale), g);
            if (rep) {
                const long long key = field_pair(fld[i], fld[l], s.m);
                int a = i, b = l;
                pair_advance(nnz, 1, a, b);
                for (long long pp = p + 1; pp < P; ++pp) {
                    if (entry_ok(s, fld, feat, a) && entry_ok(s, fld, feat, b) && field_pair(fld[a], fld[b], s.m) == key)
                        mat_row_grad<T, K>(F + (long long)feat[a] * s.fs, F + (long long)feat[b] * s.fs, fld[a],
                                           fld[b], r, q, kappa * (val[a] * scale) * (val[b] * scale), g);
                    pair_advance(nnz, 1, a, b);
                }
            }
            for (int e = 0; e < LN::E; ++e) nrm = nrm + g[e] * g[e];
        }
        if (clip) {
            T f = clip_scale<T>(s.clip, group_sum<LN::G>(nrm));
            if (f != 1)
                for (int e = 0; e < LN::E; ++e) g[e] = g[e] * f;
        }
        if (act) {
            const long long row = field_pair(fld[i], fld[l], s.m) * K + r;
            T* w = R + row * s.fs;
            for (int c = 0; c < LN::CH; ++c) if (LN::has(q, c)) {
                if (h.on)
                    hot_add_chunk<T, K>(h.hpv + row * hot_vec_stride<K>(), LN::at(q, c), g + 4 * c, q == 0 && c == 0);
                else
                    opt_chunk<T>(o, w + LN::at(q, c), K, g + 4 * c, (T)0, (T)0);
            }
        }
    }
    __syncwarp();   // every read of the factors' start values before their steps
    step_factors<T, K>(s, o, F, gbuf, fld, feat, nnz, grp, q, l1, l2f, h);
}

template <typename T, int K>
__device__ void update_row(const Shape& s, const Opt<T>& o, T* B, T* L, T* F, T* R,
                           const int* fld, const int* feat, const float* val, int nnz, T scale,
                           T kappa, int lane, T* scr, const Hot<T>& h) {
    typedef Lanes<K> LN;
    const int grp = lane / LN::G, q = lane % LN::G;
    const T lamb = grad_l2<T>(s, s.l2b), laml = grad_l2<T>(s, s.l2l), lamf = grad_l2<T>(s, s.l2f);
    const T l1 = (T)s.l1, l2f = (T)s.l2f;
    const bool clip = s.clip > 0;
    if (s.use_bias && lane == 0) {
        T g = kappa + lamb * B[0];
        if (h.on)
            hot_add_scalar<T>(h.hs, g * clip_scale<T>(s.clip, g * g));
        else
            opt_scalar<T>(o, B, g, (T)0, (T)s.l2b);
    }
    if (s.use_linear) {
        for (int i = lane; i < nnz; i += 32) {
            if (!entry_ok(s, fld, feat, i)) continue;
            T* w = L + (long long)feat[i] * s.ls;
            T g = kappa * (val[i] * scale) + laml * w[0];
            const int hs = h.of(feat[i]);
            if (hs >= 0)
                hot_add_scalar<T>(h.hs + (1 + (long long)hs) * FM_HOT_SCALAR, g * clip_scale<T>(s.clip, g * g));
            else
                opt_scalar<T>(o, w, g, l1, (T)s.l2l);
        }
    }
    if (s.kind == KIND_FFM) {
        // libffm's pair loop: both gradients from the pair's current values,
        // then w1 and w2 stepped.  The pairs of a row touch distinct blocks
        // when its (feature, field) entries are distinct, so stepping them in
        // parallel is the CPU's sequential loop.
        const long long P = (long long)nnz * (nnz - 1) / 2;
        int i = 0, l = 0;
        if (grp < P) pair_decode(grp, nnz, i, l);
        for (long long base = 0; base < P; base += LN::NPW) {
            const long long p = base + grp;
            bool act = p < P && entry_ok(s, fld, feat, i) && entry_ok(s, fld, feat, l);
            T* w1 = F;
            T* w2 = F;
            T g1[LN::E] = {}, g2[LN::E] = {};
            T n1 = 0, n2 = 0;
            if (act) {
                w1 = F + ((long long)feat[i] * s.m + fld[l]) * s.fs;
                w2 = F + ((long long)feat[l] * s.m + fld[i]) * s.fs;
                T kv = kappa * (val[i] * scale) * (val[l] * scale);
                for (int c = 0; c < LN::CH; ++c) if (LN::has(q, c)) {
                    T a[4], b[4];
                    ld4(w1 + LN::at(q, c), a);
                    ld4(w2 + LN::at(q, c), b);
                    for (int e = 0; e < 4; ++e) {
                        T x = lamf * a[e] + kv * b[e];
                        T y = lamf * b[e] + kv * a[e];
                        g1[c * 4 + e] = x;
                        g2[c * 4 + e] = y;
                        n1 = n1 + x * x;
                        n2 = n2 + y * y;
                    }
                }
            }
            if (clip) {
                T f1 = clip_scale<T>(s.clip, group_sum<LN::G>(n1));
                T f2 = clip_scale<T>(s.clip, group_sum<LN::G>(n2));
                for (int e = 0; e < LN::E; ++e) {
                    if (f1 != 1) g1[e] = g1[e] * f1;
                    if (f2 != 1) g2[e] = g2[e] * f2;
                }
            }
            if (act) {
                // a hot feature's block goes to its accumulator (item: feature slot, field)
                const int h1 = h.of(feat[i]), h2 = h.of(feat[l]);
                T* a1 = h.hv + ((long long)h1 * s.m + fld[l]) * hot_vec_stride<K>();
                T* a2 = h.hv + ((long long)h2 * s.m + fld[i]) * hot_vec_stride<K>();
                for (int c = 0; c < LN::CH; ++c) if (LN::has(q, c)) {
                    if (h1 >= 0)
                        hot_add_chunk<T, K>(a1, LN::at(q, c), g1 + 4 * c, q == 0 && c == 0);
                    else
                        opt_chunk<T>(o, w1 + LN::at(q, c), K, g1 + 4 * c, l1, l2f);
                }
                for (int c = 0; c < LN::CH; ++c) if (LN::has(q, c)) {
                    if (h2 >= 0)
                        hot_add_chunk<T, K>(a2, LN::at(q, c), g2 + 4 * c, q == 0 && c == 0);
                    else
                        opt_chunk<T>(o, w2 + LN::at(q, c), K, g2 + 4 * c, l1, l2f);
                }
            }
            if (p < P) pair_advance(nnz, LN::NPW, i, l);
        }
    } else if (s.kind == KIND_FM) {
        // g_i = kappa x_i (acc - V_i x_i) + lam V_i, acc from the start of the row
        T acc[LN::E], sq;
        fm_sums<T, K>(s, F, feat, val, nnz, scale, lane, acc, sq);
        for (int base = 0; base < nnz; base += LN::NPW) {
            const int i = base + grp;
            const bool act = i < nnz && feat[i] < s.n;
            T* w = F;
            T g[LN::E] = {};
            T nrm = 0;
            if (act) {
                w = F + (long long)feat[i] * s.fs;
                T x = val[i] * scale;
                T kv = kappa * x;
                for (int c = 0; c < LN::CH; ++c) if (LN::has(q, c)) {
                    T a[4];
                    ld4(w + LN::at(q, c), a);
                    for (int e = 0; e < 4; ++e) {
                        T v = kv * (acc[c * 4 + e] - a[e] * x) + lamf * a[e];
                        g[c * 4 + e] = v;
                        nrm = nrm + v * v;
                    }
                }
            }
            if (clip) {
                T f = clip_scale<T>(s.clip, group_sum<LN::G>(nrm));
                if (f != 1)
                    for (int e = 0; e < LN::E; ++e) g[e] = g[e] * f;
            }
            if (act) {
                const int hs = h.of(feat[i]);
                T* acc = h.hv + (long long)hs * hot_vec_stride<K>();
                for (int c = 0; c < LN::CH; ++c) if (LN::has(q, c)) {
                    if (hs >= 0)
                        hot_add_chunk<T, K>(acc, LN::at(q, c), g + 4 * c, q == 0 && c == 0);
                    else
                        opt_chunk<T>(o, w + LN::at(q, c), K, g + 4 * c, l1, l2f);
                }
            }
        }
    } else if (s.kind == KIND_FWFM) {
        // Every gradient from the start of the row (into this warp's scratch:
        // nnz factor gradients, then one field-pair gradient per pair), then
        // the factors stepped, then each touched field-pair weight once with
        // its gradient summed over the row's pairs (no L2).
        const long long P = (long long)nnz * (nnz - 1) / 2;
        T* gbuf = scr;
        T* rgb = scr + (long long)nnz * K;
        for (int i = grp; i < nnz; i += LN::NPW) {
            if (!entry_ok(s, fld, feat, i)) continue;
            T g[LN::E];
            fwfm_factor_sum<T, K>(s, F, R, fld, feat, val, nnz, scale, i, q, g);
            const T* wi = F + (long long)feat[i] * s.fs;
            T kx = kappa * (val[i] * scale);
            for (int c = 0; c < LN::CH; ++c) if (LN::has(q, c)) {
                T a[4], v[4];
                ld4(wi + LN::at(q, c), a);
                for (int e = 0; e < 4; ++e) v[e] = kx * g[c * 4 + e] + lamf * a[e];
                st4(gbuf + (long long)i * K + LN::at(q, c), v);
            }
        }
        {
            int i = 0, l = 0;
            if (grp < P) pair_decode(grp, nnz, i, l);
            for (long long base = 0; base < P; base += LN::NPW) {
                const long long p = base + grp;
                const bool act = p < P && entry_ok(s, fld, feat, i) && entry_ok(s, fld, feat, l);
                T d = 0;
                if (act) {
                    const T* wi = F + (long long)feat[i] * s.fs;
                    const T* wl = F + (long long)feat[l] * s.fs;
                    for (int c = 0; c < LN::CH; ++c) if (LN::has(q, c)) {
                        T a[4], b[4];
                        ld4(wi + LN::at(q, c), a);
                        ld4(wl + LN::at(q, c), b);
                        d = d + ((a[0] * b[0] + a[1] * b[1]) + (a[2] * b[2] + a[3] * b[3]));
                    }
                }
                d = group_sum<LN::G>(d);
                if (act && q == 0) rgb[p] = kappa * (val[i] * scale) * (val[l] * scale) * d;
                if (p < P) pair_advance(nnz, LN::NPW, i, l);
            }
        }
        __syncwarp();
        step_factors<T, K>(s, o, F, gbuf, fld, feat, nnz, grp, q, l1, l2f, h);
        // Field-pair weights.  With a field repeated in the row several pairs
        // share a weight: the first of them steps it with their sum.
        bool rep = false;
        for (int i = lane; i < nnz; i += 32)
            for (int l = 0; l < i; ++l)
                if (fld[l] == fld[i]) rep = true;
        rep = __any_sync(FM_FULL_MASK, rep);
        int i = 0, l = 0;
        if (lane < P) pair_decode(lane, nnz, i, l);
        for (long long p = lane; p < P; p += 32) {
            if (entry_ok(s, fld, feat, i) && entry_ok(s, fld, feat, l)) {
                const long long key = field_pair(fld[i], fld[l], s.m);
                T g = rgb[p];
                bool owner = true;
                if (rep) {
                    int a = 0, b = 1;
                    for (long long pp = 0; pp < P; ++pp) {
                        if (pp != p && entry_ok(s, fld, feat, a) && entry_ok(s, fld, feat, b)
                                && field_pair(fld[a], fld[b], s.m) == key) {
                            if (pp < p) {
                                owner = false;
                                break;
                            }
                            g = g + rgb[pp];
                        }
                        pair_advance(nnz, 1, a, b);
                    }
                }
                if (owner && h.on)
                    hot_add_scalar<T>(h.hps + key * FM_HOT_SCALAR, g * clip_scale<T>(s.clip, g * g));
                else if (owner)
                    opt_scalar<T>(o, R + key * s.ls, g, (T)0, (T)0);
            }
            pair_advance(nnz, 32, i, l);
        }
    } else if (s.kind == KIND_FMFM) {
        update_row_fmfm<T, K>(s, o, F, R, fld, feat, val, nnz, scale, kappa, lane, scr, h);
    }
    __syncwarp();
}

// Scores and loss of one row; every lane returns the same.  kap receives the
// C kappas (dloss/dt_c) in the warp's scratch tb (C > 1) or in kap0 (C = 1).
template <typename T, int K>
__device__ __forceinline__ bool row_forward(const Shape& s, const T* B, const T* L, const T* F,
                                            const T* R, const int* fld, const int* feat,
                                            const float* val, int nnz, T scale, double y, int lane,
                                            double* tb, double& loss, double& kap0) {
    bool bad = false;
    double t0 = 0;
    for (long long c = 0; c < s.C; ++c) {
        double t = score_class<T, K>(s, B + c * s.cB, L + c * s.cL, F + c * s.cF, R + c * s.cR,
                                     fld, feat, val, nnz, scale, lane);
        if (!isfinite(t)) bad = true;
        if (s.C == 1)
            t0 = t;
        else if (lane == 0)
            tb[c] = t;
    }
    loss = 0;
    kap0 = 0;
    if (s.C == 1) {
        if (!bad) {
            loss = loss_one(s.task, t0, y, s.smooth, kap0);
            bad = !isfinite(loss);
        }
        return !bad;
    }
    __syncwarp();
    if (lane == 0 && !bad) loss = loss_multi(s.C, tb, y, s.smooth, tb + s.C);
    loss = __shfl_sync(FM_FULL_MASK, loss, 0);
    __syncwarp();
    if (!bad) bad = !isfinite(loss);
    return !bad;
}

template <typename T, int K>
__global__ void fm_train_rows(const long long* sh, const double* hp, T* B, T* L, T* F, T* R,
                              const long long* indptr, const int* fields, const int* features,
                              const float* values, const float* labels, const float* weights,
                              int has_w, const long long* order, long long pos0, long long n_pos,
                              double step0, double total, signed char* status, double* rloss,
                              double* rweight, int* stop, double* tbuf, T* scratch,
                              long long scratch_len, int hot_on, const int* hot_slot, long long n_hot,
                              T* hot_s, T* hot_v) {
    const Shape s = load_shape(sh, hp);
    const int lane = threadIdx.x & 31;
    const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const long long n_warps = ((long long)gridDim.x * blockDim.x) >> 5;
    double* tb = tbuf + warp * 2 * s.C;
    T* scr = scratch + warp * scratch_len;
    for (long long k = warp; k < n_pos; k += n_warps) {
        int halt = 0;
        if (lane == 0) halt = *(volatile int*)stop;
        if (__shfl_sync(FM_FULL_MASK, halt, 0)) break;
        const long long pos = pos0 + k;
        const long long row = order[pos];
        const long long start = indptr[row];
        const int nnz = (int)(indptr[row + 1] - start);
        const int* fld = fields + start;
        const int* feat = features + start;
        const float* val = values + start;
        const T scale = (T)row_scale(val, nnz, s.normalize, lane);
        double loss, kap0;
        bool ok = row_forward<T, K>(s, B, L, F, R, fld, feat, val, nnz, scale, (double)labels[row],
                                    lane, tb, loss, kap0);
        const double wr = has_w ? (double)weights[row] : 1.0;
        if (!ok) {
            if (lane == 0) {
                status[k] = s.skip ? ROW_SKIPPED : ROW_BAD;
                if (!s.skip) *(volatile int*)stop = 1;
            }
            if (s.skip) continue;
            break;
        }
        if (lane == 0) {
            status[k] = ROW_OK;
            rloss[k] = wr * loss;
            rweight[k] = wr;
        }
        const Opt<T> o = make_opt<T>(s, step_eta(s, s.eta, step0 + (double)pos, total));
        for (long long c = 0; c < s.C; ++c) {
            const double kc = s.C == 1 ? kap0 : tb[s.C + c];
            const long long ns = 1 + n_hot + hot_pair_scalars(s), bpf = hot_bpf(s);
            const long long nv = n_hot * bpf + hot_pair_vectors<K>(s);
            T* hs = hot_s + c * ns * FM_HOT_SCALAR;
            T* hv = hot_v + c * nv * hot_vec_stride<K>();
            const Hot<T> h = {hot_on != 0, hot_slot, hs, hv, bpf, hs + (1 + n_hot) * FM_HOT_SCALAR,
                              hv + n_hot * bpf * hot_vec_stride<K>()};
            update_row<T, K>(s, o, B + c * s.cB, L + c * s.cL, F + c * s.cF, R + c * s.cR, fld, feat,
                             val, nnz, scale, (T)(wr * kc), lane, scr, h);
        }
    }
}

// After a wave of fm_train_rows with hot accumulation: every item some row
// of the wave touched (its row count is not zero) takes one step with its
// sums (opt_*_sum), and its accumulator is cleared for the next wave.
// Items: the scalars (per class the bias, the hot features' linear weights,
// FwFM's field-pair weights) one per thread, the vector items (per class
// the hot features' factor blocks, FmFM's matrix rows) one per lane group.
// hot_ids: the hot features, by slot.  Pair parameters take no L1 or L2.
template <typename T, int K>
__global__ void fm_hot_apply(const long long* sh, const double* hp, T* B, T* L, T* F, T* R,
                             const int* hot_ids, long long n_hot, T* hot_s, T* hot_v, double t,
                             double total) {
    typedef Lanes<K> LN;
    const Shape s = load_shape(sh, hp);
    const Opt<T> o = make_opt<T>(s, step_eta(s, s.eta, t, total));
    const long long tid = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long n_threads = (long long)gridDim.x * blockDim.x;
    const long long per = 1 + n_hot + hot_pair_scalars(s);
    for (long long j = tid; j < s.C * per; j += n_threads) {
        T* a = hot_s + j * FM_HOT_SCALAR;
        if (a[2] == 0) continue;
        const long long c = j / per, i = j % per;
        if (i == 0)
            opt_scalar_sum<T>(o, B + c * s.cB, a[0], a[1], (T)0, (T)s.l2b);
        else if (i <= n_hot)
            opt_scalar_sum<T>(o, L + c * s.cL + (long long)hot_ids[i - 1] * s.ls, a[0], a[1], (T)s.l1, (T)s.l2l);
        else
            opt_scalar_sum<T>(o, R + c * s.cR + (i - 1 - n_hot) * s.ls, a[0], a[1], (T)0, (T)0);
        a[0] = a[1] = a[2] = 0;
    }
    const int lane = threadIdx.x & 31;
    const int grp = lane / LN::G, q = lane % LN::G;
    const long long bpf = hot_bpf(s), stride = hot_vec_stride<K>();
    const long long per_v = n_hot * bpf + hot_pair_vectors<K>(s);
    const long long items = s.C * per_v;
    const long long warp = tid >> 5, n_warps = n_threads >> 5;
    for (long long base = warp * LN::NPW; base < items; base += n_warps * LN::NPW) {
        const long long j = base + grp;
        T* a = hot_v + j * stride;
        const bool act = j < items && a[2 * K] != 0;
        if (act) {
            const long long c = j / per_v, r = j % per_v;
            const bool pair = r >= n_hot * bpf;   // an FmFM matrix row
            T* w = pair ? R + c * s.cR + (r - n_hot * bpf) * s.fs
                        : F + c * s.cF + ((long long)hot_ids[r / bpf] * bpf + r % bpf) * s.fs;
            const T l1 = pair ? (T)0 : (T)s.l1, l2 = pair ? (T)0 : (T)s.l2f;
            for (int cc = 0; cc < LN::CH; ++cc) if (LN::has(q, cc)) {
                const int d = LN::at(q, cc);
                T g[4], g2[4];
                const T zero[4] = {0, 0, 0, 0};
                ld4(a + d, g);
                ld4(a + K + d, g2);
                opt_chunk_sum<T>(o, w + d, K, g, g2, l1, l2);
                st4(a + d, zero);
                st4(a + K + d, zero);
            }
        }
        __syncwarp();   // every lane of the group has read the row count
        if (act && q == 0) a[2 * K] = 0;
    }
}

// ---------------------------------------------------------------------------
// Exact mini-batches

// Contributions of one row and class: scalar slots [bias][linear x nnz]
// [FwFM pair weight x P] and vector slots [FM/FwFM/FmFM factor x nnz | FFM
// 2 x P] [FmFM matrix row x K x P] starting at so and vo.  Dead rows (skipped) write the id n_ids, which
// sorts last and is never applied.
template <typename T, int K>
__device__ void contribute(const Shape& s, long long c, const T* L, const T* F, const T* R,
                           const int* fld, const int* feat, const float* val, int nnz, T scale,
                           T kappa, bool live, int lane, long long so, long long vo,
                           long long* sgid, T* sval, long long* vgid, T* vval) {
    typedef Lanes<K> LN;
    const int grp = lane / LN::G, q = lane % LN::G;
    const long long dead = s.n_ids;
    const long long P = (long long)nnz * (nnz - 1) / 2;
    (void)L;
    if (s.use_bias) {
        if (lane == 0) {
            sgid[so] = live ? s.id0[0] + c : dead;
            sval[so] = kappa;
        }
        so += 1;
    }
    if (s.use_linear) {
        for (int i = lane; i < nnz; i += 32) {
            const bool ok = live && entry_ok(s, fld, feat, i);
            sgid[so + i] = ok ? s.id0[1] + c * s.n + feat[i] : dead;
            sval[so + i] = ok ? kappa * (val[i] * scale) : (T)0;
        }
        so += nnz;
    }
    if (s.kind == KIND_FM) {
        T acc[LN::E], sq;
        fm_sums<T, K>(s, F, feat, val, nnz, scale, lane, acc, sq);
        for (int i = grp; i < nnz; i += LN::NPW) {
            const bool ok = live && feat[i] < s.n;
            if (q == 0) vgid[vo + i] = ok ? s.id0[2] + c * s.blocks + feat[i] : dead;
            if (!ok) continue;
            const T* w = F + (long long)feat[i] * s.fs;
            T x = val[i] * scale;
            T kv = kappa * x;
            for (int cc = 0; cc < LN::CH; ++cc) if (LN::has(q, cc)) {
                T a[4], v[4];
                ld4(w + LN::at(q, cc), a);
                for (int e = 0; e < 4; ++e) v[e] = kv * (acc[cc * 4 + e] - a[e] * x);
                st4(vval + (vo + i) * K + LN::at(q, cc), v);
            }
        }
    } else if (s.kind == KIND_FFM) {
        int i = 0, l = 0;
        if (grp < P) pair_decode(grp, nnz, i, l);
        for (long long p = grp; p < P; p += LN::NPW) {
            const bool ok = live && entry_ok(s, fld, feat, i) && entry_ok(s, fld, feat, l);
            const long long b1 = (long long)feat[i] * s.m + fld[l];
            const long long b2 = (long long)feat[l] * s.m + fld[i];
            if (q == 0) {
                vgid[vo + 2 * p] = ok ? s.id0[2] + c * s.blocks + b1 : dead;
                vgid[vo + 2 * p + 1] = ok ? s.id0[2] + c * s.blocks + b2 : dead;
            }
            if (ok) {
                const T* w1 = F + b1 * s.fs;
                const T* w2 = F + b2 * s.fs;
                T kv = kappa * (val[i] * scale) * (val[l] * scale);
                for (int cc = 0; cc < LN::CH; ++cc) if (LN::has(q, cc)) {
                    T a[4], b[4], u[4], v[4];
                    ld4(w1 + LN::at(q, cc), a);
                    ld4(w2 + LN::at(q, cc), b);
                    for (int e = 0; e < 4; ++e) {
                        u[e] = kv * b[e];
                        v[e] = kv * a[e];
                    }
                    st4(vval + (vo + 2 * p) * K + LN::at(q, cc), u);
                    st4(vval + (vo + 2 * p + 1) * K + LN::at(q, cc), v);
                }
            }
            pair_advance(nnz, LN::NPW, i, l);
        }
    } else if (s.kind == KIND_FWFM) {
        for (int i = grp; i < nnz; i += LN::NPW) {
            const bool ok = live && entry_ok(s, fld, feat, i);
            if (q == 0) vgid[vo + i] = ok ? s.id0[2] + c * s.blocks + feat[i] : dead;
            if (!ok) continue;
            T g[LN::E];
            fwfm_factor_sum<T, K>(s, F, R, fld, feat, val, nnz, scale, i, q, g);
            T kx = kappa * (val[i] * scale);
            for (int cc = 0; cc < LN::CH; ++cc) if (LN::has(q, cc)) {
                T v[4];
                for (int e = 0; e < 4; ++e) v[e] = kx * g[cc * 4 + e];
                st4(vval + (vo + i) * K + LN::at(q, cc), v);
            }
        }
        int i = 0, l = 0;
        if (grp < P) pair_decode(grp, nnz, i, l);
        for (long long base = 0; base < P; base += LN::NPW) {
            const long long p = base + grp;
            const bool ok = p < P && live && entry_ok(s, fld, feat, i) && entry_ok(s, fld, feat, l);
            T d = 0;
            if (ok) {
                const T* wi = F + (long long)feat[i] * s.fs;
                const T* wl = F + (long long)feat[l] * s.fs;
                for (int cc = 0; cc < LN::CH; ++cc) if (LN::has(q, cc)) {
                    T a[4], b[4];
                    ld4(wi + LN::at(q, cc), a);
                    ld4(wl + LN::at(q, cc), b);
                    d = d + ((a[0] * b[0] + a[1] * b[1]) + (a[2] * b[2] + a[3] * b[3]));
                }
            }
            d = group_sum<LN::G>(d);
            if (p < P && q == 0) {
                sgid[so + p] = ok ? s.id0[3] + c * s.m * s.m + field_pair(fld[i], fld[l], s.m) : dead;
                sval[so + p] = ok ? kappa * (val[i] * scale) * (val[l] * scale) * d : (T)0;
            }
            if (p < P) pair_advance(nnz, LN::NPW, i, l);
        }
    } else if (s.kind == KIND_FMFM) {
        for (int i = grp; i < nnz; i += LN::NPW) {
            const bool ok = live && entry_ok(s, fld, feat, i);
            if (q == 0) vgid[vo + i] = ok ? s.id0[2] + c * s.blocks + feat[i] : dead;
            if (!ok) continue;
            T g[LN::E];
            fmfm_factor_sum<T, K>(s, F, R, fld, feat, val, nnz, scale, i, q, g);
            const T kx = kappa * (val[i] * scale);
            for (int cc = 0; cc < LN::CH; ++cc) if (LN::has(q, cc)) {
                T v[4];
                for (int e = 0; e < 4; ++e) v[e] = kx * g[cc * 4 + e];
                st4(vval + (vo + i) * K + LN::at(q, cc), v);
            }
        }
        // matrix rows: slot vo + nnz + p * K + r is row r of pair p's matrix
        const long long items = P * K, vm = vo + nnz;
        for (long long it = grp; it < items; it += LN::NPW) {
            const long long p = it / K;
            const int r = (int)(it % K);
            int i = 0, l = 0;
            pair_decode(p, nnz, i, l);
            const bool ok = live && entry_ok(s, fld, feat, i) && entry_ok(s, fld, feat, l);
            if (q == 0)
                vgid[vm + it] = ok ? s.id0[3] + (c * s.m * s.m + field_pair(fld[i], fld[l], s.m)) * K + r : dead;
            if (!ok) continue;
            T g[LN::E] = {};
            mat_row_grad<T, K>(F + (long long)feat[i] * s.fs, F + (long long)feat[l] * s.fs, fld[i], fld[l], r,
                               q, kappa * (val[i] * scale) * (val[l] * scale), g);
            for (int cc = 0; cc < LN::CH; ++cc) if (LN::has(q, cc)) st4(vval + (vm + it) * K + LN::at(q, cc), g + 4 * cc);
        }
    }
}

template <typename T, int K>
__global__ void fm_batch_grad(const long long* sh, const double* hp, const T* B, const T* L,
                              const T* F, const T* R, const long long* indptr, const int* fields,
                              const int* features, const float* values, const float* labels,
                              const float* weights, int has_w, const long long* order,
                              long long pos0, long long n_pos, const long long* sofs,
                              const long long* vofs, long long* sgid, T* sval, long long* vgid,
                              T* vval, signed char* status, double* rloss, double* rweight,
                              const int* stop, int* count, int* bad, double* tbuf) {
    const Shape s = load_shape(sh, hp);
    if (*stop) return;   // an earlier batch stopped the epoch (set between launches)
    const int lane = threadIdx.x & 31;
    const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const long long n_warps = ((long long)gridDim.x * blockDim.x) >> 5;
    double* tb = tbuf + warp * 2 * s.C;
    const long long s0 = sofs[pos0], v0 = vofs[pos0];
    for (long long k = warp; k < n_pos; k += n_warps) {
        const long long pos = pos0 + k;
        const long long row = order[pos];
        const long long start = indptr[row];
        const int nnz = (int)(indptr[row + 1] - start);
        const int* fld = fields + start;
        const int* feat = features + start;
        const float* val = values + start;
        const T scale = (T)row_scale(val, nnz, s.normalize, lane);
        double loss, kap0;
        const bool ok = row_forward<T, K>(s, B, L, F, R, fld, feat, val, nnz, scale,
                                          (double)labels[row], lane, tb, loss, kap0);
        const double wr = has_w ? (double)weights[row] : 1.0;
        if (lane == 0) {
            if (ok) {
                status[k] = ROW_OK;
                rloss[k] = wr * loss;
                rweight[k] = wr;
                atomicAdd(count, 1);
            } else {
                status[k] = s.skip ? ROW_SKIPPED : ROW_BAD;
                if (!s.skip) *bad = 1;
            }
        }
        const long long sper = (sofs[pos + 1] - sofs[pos]) / s.C;
        const long long vper = (vofs[pos + 1] - vofs[pos]) / s.C;
        for (long long c = 0; c < s.C; ++c) {
            const double kc = !ok ? 0.0 : (s.C == 1 ? kap0 : tb[s.C + c]);
            contribute<T, K>(s, c, L + c * s.cL, F + c * s.cF, R + c * s.cR, fld, feat, val, nnz,
                             scale, (T)(wr * kc), ok, lane, sofs[pos] - s0 + c * sper,
                             vofs[pos] - v0 + c * vper, sgid, sval, vgid, vval);
        }
        __syncwarp();
    }
}

// Whether the batch is applied: not after a stop, not with a row that stops
// the epoch (which then stops it), not without a counted row.
__device__ __forceinline__ bool batch_live(int* stop, const int* bad, const int* count) {
    if (*stop) return false;
    if (*bad) {
        *stop = 1;
        return false;
    }
    return *count > 0;
}

template <typename T, int K>
__global__ void fm_batch_apply_vec(const long long* sh, const double* hp, T* F, T* R, const long long* sg,
                                   const long long* perm, long long n, const T* vval,
                                   const int* count, const int* bad, int* stop, double t,
                                   double total) {
    typedef Lanes<K> LN;
    const Shape s = load_shape(sh, hp);
    if (!batch_live(stop, bad, count)) return;
    const int lane = threadIdx.x & 31;
    const int grp = lane / LN::G, q = lane % LN::G;
    const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const long long n_warps = ((long long)gridDim.x * blockDim.x) >> 5;
    const Opt<T> o = make_opt<T>(s, step_eta(s, s.eta, t, total));
    const T inv = (T)(1.0 / *count);
    const T lamf = grad_l2<T>(s, s.l2f), l1f = (T)s.l1, l2f = (T)s.l2f;
    for (long long base = warp * LN::NPW; base < n; base += n_warps * LN::NPW) {
        const long long j = base + grp;
        const long long gid = j < n ? sg[j] : s.n_ids;
        const bool act = j < n && gid < s.n_ids && (j == 0 || sg[j - 1] != gid);
        T g[LN::E] = {};
        T nrm = 0;
        T* w = F;
        bool mat = false;
        if (act) {
            for (long long jj = j; jj < n && sg[jj] == gid; ++jj) {
                const T* v = vval + perm[jj] * K;
                for (int c = 0; c < LN::CH; ++c) if (LN::has(q, c)) {
                    T u[4];
                    ld4(v + LN::at(q, c), u);
                    for (int e = 0; e < 4; ++e) g[c * 4 + e] = g[c * 4 + e] + u[e];
                }
            }
            // a factor vector, or a row of an FmFM field matrix (no L1, no L2)
            mat = gid >= s.id0[3];
            w = mat ? R + (gid - s.id0[3]) * s.fs : F + (gid - s.id0[2]) * s.fs;
            const T lam = mat ? (T)0 : lamf;
            for (int c = 0; c < LN::CH; ++c) if (LN::has(q, c)) {
                T a[4];
                ld4(w + LN::at(q, c), a);
                for (int e = 0; e < 4; ++e) {
                    T v = g[c * 4 + e] * inv + lam * a[e];
                    g[c * 4 + e] = v;
                    nrm = nrm + v * v;
                }
            }
        }
        if (s.clip > 0) {
            T f = clip_scale<T>(s.clip, group_sum<LN::G>(nrm));
            if (f != 1)
                for (int e = 0; e < LN::E; ++e) g[e] = g[e] * f;
        }
        if (act)
            for (int c = 0; c < LN::CH; ++c) if (LN::has(q, c))
                opt_chunk<T>(o, w + LN::at(q, c), K, g + 4 * c, mat ? (T)0 : l1f, mat ? (T)0 : l2f);
    }
}

template <typename T, int K>
__global__ void fm_batch_apply_scalar(const long long* sh, const double* hp, T* B, T* L, T* R,
                                      const long long* sg, const long long* perm, long long n,
                                      const T* sval, const int* count, const int* bad, int* stop,
                                      double t, double total) {
    const Shape s = load_shape(sh, hp);
    if (!batch_live(stop, bad, count)) return;
    const Opt<T> o = make_opt<T>(s, step_eta(s, s.eta, t, total));
    const T inv = (T)(1.0 / *count);
    const long long n_threads = (long long)gridDim.x * blockDim.x;
    for (long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x; j < n; j += n_threads) {
        const long long gid = sg[j];
        if (gid >= s.n_ids || (j > 0 && sg[j - 1] == gid)) continue;
        T g = 0;
        for (long long jj = j; jj < n && sg[jj] == gid; ++jj) g = g + sval[perm[jj]];
        T* w;
        double l1 = 0, l2 = 0;
        if (gid < s.id0[1]) {
            w = B + (gid - s.id0[0]) * s.ls;
            l2 = s.l2b;
        } else if (gid < s.id0[2]) {
            w = L + (gid - s.id0[1]) * s.ls;
            l1 = s.l1;
            l2 = s.l2l;
        } else {
            w = R + (gid - s.id0[3]) * s.ls;
        }
        g = g * inv + grad_l2<T>(s, l2) * w[0];
        opt_scalar<T>(o, w, g, (T)l1, (T)l2);
    }
}

// ---------------------------------------------------------------------------
// Scoring

template <typename T, int K>
__global__ void fm_score_rows(const long long* sh, const T* B, const T* L, const T* F, const T* R,
                              const long long* indptr, const int* fields, const int* features,
                              const float* values, long long n_rows, double* out) {
    const double hp[HP_SIZE] = {0};
    const Shape s = load_shape(sh, hp);
    const int lane = threadIdx.x & 31;
    const long long warp = ((long long)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const long long n_warps = ((long long)gridDim.x * blockDim.x) >> 5;
    for (long long row = warp; row < n_rows; row += n_warps) {
        const long long start = indptr[row];
        const int nnz = (int)(indptr[row + 1] - start);
        const T scale = (T)row_scale(values + start, nnz, s.normalize, lane);
        for (long long c = 0; c < s.C; ++c) {
            double t = score_class<T, K>(s, B + c * s.cB, L + c * s.cL, F + c * s.cF, R + c * s.cR,
                                         fields + start, features + start, values + start, nnz,
                                         scale, lane);
            if (lane == 0) out[row * s.C + c] = t;
        }
    }
}
