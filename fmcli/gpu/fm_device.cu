// Device-side building blocks of the fmcli GPU kernels (fm_kernels.cu).
//
// The arithmetic mirrors the CPU core exactly: fmcli/_core/_optim.pxd (update
// rules, step-size schedule) and fmcli/_core/_kernels.pyx (scores, losses,
// gradients).  The parameter layout is the CPU's: B, L, F, R hold one block
// per bias / linear weight / factor vector / FwFM field-pair weight, each
// block's weights followed by its optimizer state (slot s of element d of a
// block of n weights at w[d + (s + 1) * n]), one parameter set per class.
// FmFM's R holds one factor-format block (K weights, then the state; stride
// fs) per row of each field pair's matrix: row r of the matrix of fields
// (a, c), a <= c, is block (a * m + c) * K + r; only the k real rows and
// columns are ever non-zero (the padding has zero gradients).
//
// Work split: a row belongs to one warp.  The row's items (entries for LR and
// FM, field pairs i < l for FFM, FwFM and FmFM) are dealt to groups of G
// lanes; the G lanes of a group split the item's K factor values in chunks of four
// (lane q of a group owns elements (c * G + q) * 4 .. + 3, c = 0 .. K/(4G)-1).
// G is K/4 rounded up to a power of two, at most 32: one lane per pair at
// K = 4, four at K = 16, the whole warp from K = 128 on.
//
// No includes: the source is compiled at run time by NVRTC (CuPy's
// RawModule), by nvcc in the tests, and on the host by fmcli.gpu.emulate.

#ifndef FM_DEVICE_CU
#define FM_DEVICE_CU

#define FM_FULL_MASK 0xffffffffu
#ifndef FM_CHECK_ALIGN
#define FM_CHECK_ALIGN(p, n)   // the CPU emulation checks vector alignment
#endif
#define FM_PI 3.14159265358979323846

// Indices into the int64 shape array and the float64 hyperparameter array
// the host builds (fmcli/gpu/layout.py: SHAPE_FIELDS and HYPER_FIELDS list
// the same names in the same order; a test checks it).
enum {
    SH_KIND = 0, SH_TASK, SH_OPT, SH_SCHEDULE, SH_CLASSES, SH_FEATURES, SH_FIELDS, SH_KP,
    SH_NSTATE, SH_FSTRIDE, SH_LSTRIDE, SH_CB, SH_CL, SH_CF, SH_CR, SH_USE_BIAS, SH_USE_LINEAR,
    SH_NORMALIZE, SH_SKIP_NONFINITE, SH_BLOCKS, SH_ID_B, SH_ID_L, SH_ID_F, SH_ID_R, SH_N_IDS,
    SH_SIZE
};
enum {
    HP_ETA = 0, HP_L2_BIAS, HP_L2_LINEAR, HP_L2_FACTORS, HP_L1, HP_BETA1, HP_BETA2, HP_ADAM_EPS,
    HP_FTRL_BETA, HP_CLIP, HP_SMOOTHING, HP_WARMUP, HP_SIZE
};
// Codes (fmcli/gpu/layout.py: KINDS, TASKS, OPTIMIZERS, SCHEDULES, ROW_*).
enum { KIND_LR = 0, KIND_FM = 1, KIND_FFM = 2, KIND_FWFM = 3, KIND_FMFM = 4 };
enum { TASK_BINARY = 0, TASK_REGRESSION = 1, TASK_MULTICLASS = 2 };
enum { OPT_SGD = 0, OPT_ADAGRAD = 1, OPT_ADAM = 2, OPT_FTRL = 3 };
enum { SCHED_CONSTANT = 0, SCHED_LINEAR = 1, SCHED_COSINE = 2, SCHED_INVSQRT = 3 };
// What happened to a row (one signed char per row of a launch).
enum { ROW_NOT_RUN = 0, ROW_OK = 1, ROW_SKIPPED = 2, ROW_BAD = 3 };

struct Shape {
    int kind, task, opt, schedule;
    long long C, n, m, kp, ns, fs, ls, cB, cL, cF, cR, blocks, n_ids;
    long long id0[4];
    bool use_bias, use_linear, normalize, skip, fielded;
    double eta, l2b, l2l, l2f, l1, b1, b2, eps, fbeta, clip, smooth, warmup;
};

__device__ __forceinline__ Shape load_shape(const long long* sh, const double* hp) {
    Shape s;
    s.kind = (int)sh[SH_KIND];
    s.task = (int)sh[SH_TASK];
    s.opt = (int)sh[SH_OPT];
    s.schedule = (int)sh[SH_SCHEDULE];
    s.C = sh[SH_CLASSES];
    s.n = sh[SH_FEATURES];
    s.m = sh[SH_FIELDS];
    s.kp = sh[SH_KP];
    s.ns = sh[SH_NSTATE];
    s.fs = sh[SH_FSTRIDE];
    s.ls = sh[SH_LSTRIDE];
    s.cB = sh[SH_CB];
    s.cL = sh[SH_CL];
    s.cF = sh[SH_CF];
    s.cR = sh[SH_CR];
    s.use_bias = sh[SH_USE_BIAS] != 0;
    s.use_linear = sh[SH_USE_LINEAR] != 0;
    s.normalize = sh[SH_NORMALIZE] != 0;
    s.skip = sh[SH_SKIP_NONFINITE] != 0;
    s.blocks = sh[SH_BLOCKS];
    s.id0[0] = sh[SH_ID_B];
    s.id0[1] = sh[SH_ID_L];
    s.id0[2] = sh[SH_ID_F];
    s.id0[3] = sh[SH_ID_R];
    s.n_ids = sh[SH_N_IDS];
    s.fielded = s.kind == KIND_FFM || s.kind == KIND_FWFM || s.kind == KIND_FMFM;
    s.eta = hp[HP_ETA];
    s.l2b = hp[HP_L2_BIAS];
    s.l2l = hp[HP_L2_LINEAR];
    s.l2f = hp[HP_L2_FACTORS];
    s.l1 = hp[HP_L1];
    s.b1 = hp[HP_BETA1];
    s.b2 = hp[HP_BETA2];
    s.eps = hp[HP_ADAM_EPS];
    s.fbeta = hp[HP_FTRL_BETA];
    s.clip = hp[HP_CLIP];
    s.smooth = hp[HP_SMOOTHING];
    s.warmup = hp[HP_WARMUP];
    return s;
}

// ---------------------------------------------------------------------------
// Lanes, groups and warp reductions

template <int K>
struct Lanes {
    static constexpr int Q = K / 4;                       // chunks of four in a block
    static constexpr int G = Q >= 32 ? 32 : Q > 16 ? 32 : Q > 8 ? 16 : Q > 4 ? 8 : Q > 2 ? 4 : Q > 1 ? 2 : 1;
    static constexpr int NPW = 32 / G;                    // items per warp pass
    static constexpr int CH = (Q + G - 1) / G;            // chunks per lane (at most)
    static constexpr int E = 4 * CH;                      // factor values per lane
    // offset of chunk c of lane q (of its group) inside a block, and whether
    // the lane has that chunk (G lanes need not divide Q)
    static __device__ __forceinline__ int at(int q, int c) { return (c * G + q) * 4; }
    static __device__ __forceinline__ bool has(int q, int c) { return Q % G == 0 || c * G + q < Q; }
};

template <typename V>
__device__ __forceinline__ V warp_sum(V v) {
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(FM_FULL_MASK, v, o);
    return v;
}

// Sum over the G lanes of each group (lanes g*G .. g*G + G - 1).
template <int G, typename V>
__device__ __forceinline__ V group_sum(V v) {
    for (int o = G / 2; o > 0; o >>= 1)
        v += __shfl_xor_sync(FM_FULL_MASK, v, o);
    return v;
}

// Sum over the groups, lane q with lane q of every other group.
template <int G, typename V>
__device__ __forceinline__ V across_groups(V v) {
    for (int o = 16; o >= G; o >>= 1)
        v += __shfl_xor_sync(FM_FULL_MASK, v, o);
    return v;
}

// Four consecutive values (16-byte aligned for float, 32 for double).
__device__ __forceinline__ void ld4(const float* p, float* v) {
    FM_CHECK_ALIGN(p, 16);
    float4 a = *reinterpret_cast<const float4*>(p);
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
}
__device__ __forceinline__ void st4(float* p, const float* v) {
    FM_CHECK_ALIGN(p, 16);
    float4 a;
    a.x = v[0]; a.y = v[1]; a.z = v[2]; a.w = v[3];
    *reinterpret_cast<float4*>(p) = a;
}
__device__ __forceinline__ void ld4(const double* p, double* v) {
    FM_CHECK_ALIGN(p, 16);
    double2 a = reinterpret_cast<const double2*>(p)[0];
    double2 b = reinterpret_cast<const double2*>(p)[1];
    v[0] = a.x; v[1] = a.y; v[2] = b.x; v[3] = b.y;
}
__device__ __forceinline__ void st4(double* p, const double* v) {
    FM_CHECK_ALIGN(p, 16);
    double2 a, b;
    a.x = v[0]; a.y = v[1]; b.x = v[2]; b.y = v[3];
    reinterpret_cast<double2*>(p)[0] = a;
    reinterpret_cast<double2*>(p)[1] = b;
}

// Pair index p of a row of n entries <-> (i, l), i < l, in row order:
// (0,1), (0,2), ..., (0,n-1), (1,2), ...
__device__ __forceinline__ long long pairs_before(long long i, long long n) {
    return i * (2 * n - i - 1) / 2;
}

__device__ __forceinline__ void pair_decode(long long p, int n, int& i, int& l) {
    double b = 2.0 * n - 1.0;
    double r = b * b - 8.0 * (double)p;
    int ii = (int)floor((b - sqrt(r > 0 ? r : 0.0)) * 0.5);
    if (ii > n - 2) ii = n - 2;
    if (ii < 0) ii = 0;
    while (ii > 0 && pairs_before(ii, n) > p) --ii;
    while (ii < n - 2 && pairs_before(ii + 1, n) <= p) ++ii;
    i = ii;
    l = (int)(p - pairs_before(ii, n)) + ii + 1;
}

// (i, l) of pair p -> (i, l) of pair p + step
__device__ __forceinline__ void pair_advance(int n, int step, int& i, int& l) {
    l += step;
    while (l >= n && i < n - 1) {
        int over = l - n;
        ++i;
        l = i + 1 + over;
    }
}

__device__ __forceinline__ long long field_pair(long long a, long long b, long long m) {
    return a <= b ? a * m + b : b * m + a;
}

// ---------------------------------------------------------------------------
// FmFM's field matrices
//
// The pair (i, l) of fields a = f_i, c = f_l scores V_i^T A V_l, where P is
// the matrix of the sorted pair (P = M[min, max]) and A, seen from entry i,
// is P (a < c), P^T (a > c) or S = (P + P^T) / 2 (a == c).  The gradient of
// that score by V_i is A V_l, by V_l it is the same with i and l swapped.

enum { MAT_PLAIN = 0, MAT_TRANS = 1, MAT_SYM = 2 };

// How entry i of field a sees the matrix it shares with an entry of field c.
__device__ __forceinline__ int mat_mode(int a, int c) {
    return a < c ? MAT_PLAIN : a > c ? MAT_TRANS : MAT_SYM;
}

// The first block (matrix row 0) of the matrix of fields a and c in R.
template <typename T, int K>
__device__ __forceinline__ const T* mat_at(const Shape& s, const T* R, int a, int c) {
    return R + field_pair(a, c, s.m) * K * s.fs;
}

// This lane's elements (chunks of its group, Lanes<K>::at) of A v, where A
// is P (MAT_PLAIN), P^T (MAT_TRANS) or (P + P^T) / 2 (MAT_SYM); P's rows are
// blocks of stride fs, v is one block of K values.  Reads only.
template <typename T, int K>
__device__ __forceinline__ void mat_vec(const T* P, long long fs, int mode, const T* v, int q, T* out) {
    typedef Lanes<K> LN;
    for (int e = 0; e < LN::E; ++e) out[e] = 0;
    for (int c = 0; c < LN::CH; ++c) if (LN::has(q, c)) {
        const int d0 = LN::at(q, c);
        T row[4] = {0, 0, 0, 0}, col[4] = {0, 0, 0, 0};
        for (int r = 0; r < K; r += 4) {
            T x[4];
            ld4(v + r, x);
            if (mode != MAT_TRANS) {
                // (P v)[d] = sum_r P[d][r] v[r]: rows d0 .. d0 + 3
                for (int e = 0; e < 4; ++e) {
                    T a[4];
                    ld4(P + (long long)(d0 + e) * fs + r, a);
                    row[e] = row[e] + ((a[0] * x[0] + a[1] * x[1]) + (a[2] * x[2] + a[3] * x[3]));
                }
            }
            if (mode != MAT_PLAIN) {
                // (P^T v)[d] = sum_r P[r][d] v[r]: columns d0 .. d0 + 3 of rows r .. r + 3
                for (int u = 0; u < 4; ++u) {
                    T a[4];
                    ld4(P + (long long)(r + u) * fs + d0, a);
                    for (int e = 0; e < 4; ++e) col[e] = col[e] + a[e] * x[u];
                }
            }
        }
        for (int e = 0; e < 4; ++e)
            out[c * 4 + e] = mode == MAT_PLAIN ? row[e] : mode == MAT_TRANS ? col[e] : (T)0.5 * (row[e] + col[e]);
    }
}

// This lane's elements of row r of the gradient of the pair (i, l)'s score
// by its matrix P (without kappa x_i x_l): V_lo[r] V_hi with lo the entry of
// the lower field, or (V_i[r] V_l + V_l[r] V_i) / 2 for one field.
template <typename T, int K>
__device__ __forceinline__ void mat_row_grad(const T* vi, const T* vl, int fi, int fl, int r, int q,
                                             T coef, T* g) {
    typedef Lanes<K> LN;
    const T* lo = fi <= fl ? vi : vl;
    const T* hi = fi <= fl ? vl : vi;
    const T a = coef * lo[r], b = coef * hi[r];
    for (int c = 0; c < LN::CH; ++c) if (LN::has(q, c)) {
        T h[4], u[4];
        ld4(hi + LN::at(q, c), h);
        if (fi == fl) {
            ld4(lo + LN::at(q, c), u);
            for (int e = 0; e < 4; ++e) g[c * 4 + e] = g[c * 4 + e] + (T)0.5 * (a * h[e] + b * u[e]);
        } else {
            for (int e = 0; e < 4; ++e) g[c * 4 + e] = g[c * 4 + e] + a * h[e];
        }
    }
}

// ---------------------------------------------------------------------------
// Step sizes and update rules (_optim.pxd: opt_step_eta, opt_block)

__device__ __forceinline__ double step_eta(const Shape& s, double eta, double t, double total) {
    double m = 1;
    if (t < s.warmup) {
        m = (t + 1) / s.warmup;
    } else if (s.schedule == SCHED_LINEAR || s.schedule == SCHED_COSINE) {
        double span = total - s.warmup;
        if (span > 0) {
            double u = (t - s.warmup) / span;
            if (u > 1) u = 1;
            m = s.schedule == SCHED_LINEAR ? 1 - u : 0.5 * (1 + cos(FM_PI * u));
        }
    } else if (s.schedule == SCHED_INVSQRT) {
        m = sqrt((s.warmup > 1 ? s.warmup : 1.0) / (t + 1));
    }
    if (s.opt == OPT_ADAM) {
        double n = t + 1;
        m = m * sqrt(1 - pow(s.b2, n)) / (1 - pow(s.b1, n));
    }
    return eta * m;
}

template <typename T>
struct Opt {
    int kind;
    T eta, b1, ob1, b2, ob2, eps, beta;
    double clip;
};

template <typename T>
__device__ __forceinline__ Opt<T> make_opt(const Shape& s, double eta) {
    Opt<T> o;
    o.kind = s.opt;
    o.eta = (T)eta;
    o.b1 = (T)s.b1;
    o.ob1 = (T)(1 - s.b1);
    o.b2 = (T)s.b2;
    o.ob2 = (T)(1 - s.b2);
    o.eps = (T)s.eps;
    o.beta = (T)s.fbeta;
    o.clip = s.clip;
    return o;
}

// The L2 coefficient inside a gradient (FTRL applies L2 in its closed form).
template <typename T>
__device__ __forceinline__ T grad_l2(const Shape& s, double l2) {
    return s.opt == OPT_FTRL ? (T)0 : (T)l2;
}

// Scale applied to a block's gradient of squared norm nrm2 (clipping).
template <typename T>
__device__ __forceinline__ T clip_scale(double clip, T nrm2) {
    if (clip > 0) {
        T norm = sqrt(nrm2);
        if (norm > clip) return (T)(clip / norm);
    }
    return (T)1;
}

// One element: weight w, state slots s1 = w[n], s2 = w[2n].
template <typename T>
__device__ __forceinline__ void opt_elem(const Opt<T>& o, T& w, T& s1, T& s2, T g, T l1, T l2) {
    if (o.kind == OPT_ADAGRAD) {
        s1 = s1 + g * g;
        w = w - o.eta * g / sqrt(s1);
    } else if (o.kind == OPT_ADAM) {
        s1 = o.b1 * s1 + o.ob1 * g;
        s2 = o.b2 * s2 + o.ob2 * g * g;
        w = w - o.eta * s1 / (sqrt(s2) + o.eps);
    } else if (o.kind == OPT_FTRL) {
        T sig = (sqrt(s2 + g * g) - sqrt(s2)) / o.eta;
        T z = s1 + g - sig * w;
        s1 = z;
        s2 = s2 + g * g;
        T a = z < 0 ? -z : z;
        if (a <= l1)
            w = 0;
        else
            w = -(z - (z > 0 ? l1 : -l1)) / ((o.beta + sqrt(s2)) / o.eta + l2);
    } else {
        w = w - o.eta * g;
    }
}

// A block of one weight (bias, linear weight, FwFM field-pair weight); g is
// the full gradient (L2 included for sgd/adagrad/adam), clipped here.
template <typename T>
__device__ __forceinline__ void opt_scalar(const Opt<T>& o, T* w, T g, T l1, T l2) {
    g = g * clip_scale<T>(o.clip, g * g);
    T dummy = 0;
    T& s1 = o.kind == OPT_SGD ? dummy : w[1];
    T& s2 = (o.kind == OPT_ADAM || o.kind == OPT_FTRL) ? w[2] : dummy;
    opt_elem<T>(o, w[0], s1, s2, g, l1, l2);
}

// Four elements of a factor block of n = K weights at w (offset d already
// applied); g already clipped.
template <typename T>
__device__ __forceinline__ void opt_chunk(const Opt<T>& o, T* w, long long n, const T* g, T l1, T l2) {
    T a[4], s1[4] = {0, 0, 0, 0}, s2[4] = {0, 0, 0, 0};
    ld4(w, a);
    if (o.kind != OPT_SGD) ld4(w + n, s1);
    if (o.kind == OPT_ADAM || o.kind == OPT_FTRL) ld4(w + 2 * n, s2);
    for (int e = 0; e < 4; ++e) opt_elem<T>(o, a[e], s1[e], s2[e], g[e], l1, l2);
    st4(w, a);
    if (o.kind != OPT_SGD) st4(w + n, s1);
    if (o.kind == OPT_ADAM || o.kind == OPT_FTRL) st4(w + 2 * n, s2);
}

// ---------------------------------------------------------------------------
// Hot parameters in per-row mode (fm_train_rows with hot accumulation)
//
// With thousands of rows in flight, a weight that most rows carry (the bias,
// a missing-value token, a small field's features) would be read by every
// warp before any of their writes landed, and all but the last write would
// be lost.  Instead the rows add what they would have stepped with into an
// accumulator (atomically): per weight the sum of their gradients and the
// sum of their squared gradients, per block the number of rows; after the
// wave fm_hot_apply takes one step with the sums.  For SGD and AdaGrad that
// step is the sum of the rows' own steps at the wave's start values (FTRL:
// its state grows by the same sums), as the CPU's hot-feature replicas fold
// their steps additively (fmcli/_core/hot.h); with one row it is the row's
// step exactly.  Adam's moving averages have no such sum: it trains per row.
//
// FwFM's field-pair weights and FmFM's field matrices, which every row
// carries as well, are accumulated the same way.
//
// Accumulator layout, per class: scalar items (the bias, each hot feature's
// linear weight, then FwFM's m * m field-pair weights) of four values each
// (sum g, sum g^2, rows, unused); vector items (each hot feature's factor
// blocks, then FmFM's m * m * K matrix rows) of 2 K + 4 values each (K sums
// of g, K sums of g^2, rows, three unused), which keeps every item's start
// aligned for ld4/st4.

#define FM_HOT_SCALAR 4

template <int K>
__device__ __forceinline__ long long hot_vec_stride() { return 2 * K + 4; }

// Factor blocks per feature: one per field (FFM), none (LR), else one.
__device__ __forceinline__ long long hot_bpf(const Shape& s) {
    return s.kind == KIND_FFM ? s.m : s.kind == KIND_LR ? 0 : 1;
}

// Accumulated pair parameters per class: scalars (FwFM), vector items (FmFM).
__device__ __forceinline__ long long hot_pair_scalars(const Shape& s) {
    return s.kind == KIND_FWFM ? s.m * s.m : 0;
}
template <int K>
__device__ __forceinline__ long long hot_pair_vectors(const Shape& s) {
    return s.kind == KIND_FMFM ? s.m * s.m * K : 0;
}

// One element: as opt_elem with the sums g (of gradients) and g2 (of their squares).
template <typename T>
__device__ __forceinline__ void opt_elem_sum(const Opt<T>& o, T& w, T& s1, T& s2, T g, T g2, T l1, T l2) {
    if (o.kind == OPT_ADAGRAD) {
        s1 = s1 + g2;
        w = w - o.eta * g / sqrt(s1);
    } else if (o.kind == OPT_FTRL) {
        T sig = (sqrt(s2 + g2) - sqrt(s2)) / o.eta;
        T z = s1 + g - sig * w;
        s1 = z;
        s2 = s2 + g2;
        T a = z < 0 ? -z : z;
        if (a <= l1)
            w = 0;
        else
            w = -(z - (z > 0 ? l1 : -l1)) / ((o.beta + sqrt(s2)) / o.eta + l2);
    } else {
        w = w - o.eta * g;   // SGD (Adam never accumulates)
    }
}

// A scalar block stepped with accumulated sums (gradients already clipped per row).
template <typename T>
__device__ __forceinline__ void opt_scalar_sum(const Opt<T>& o, T* w, T g, T g2, T l1, T l2) {
    T dummy = 0;
    T& s1 = o.kind == OPT_SGD ? dummy : w[1];
    T& s2 = o.kind == OPT_FTRL ? w[2] : dummy;
    opt_elem_sum<T>(o, w[0], s1, s2, g, g2, l1, l2);
}

// Four elements of a factor block of n = K weights at w stepped with the
// sums g and g2 (four values each).
template <typename T>
__device__ __forceinline__ void opt_chunk_sum(const Opt<T>& o, T* w, long long n, const T* g, const T* g2,
                                              T l1, T l2) {
    T a[4], s1[4] = {0, 0, 0, 0}, s2[4] = {0, 0, 0, 0};
    ld4(w, a);
    if (o.kind != OPT_SGD) ld4(w + n, s1);
    if (o.kind == OPT_FTRL) ld4(w + 2 * n, s2);
    for (int e = 0; e < 4; ++e) opt_elem_sum<T>(o, a[e], s1[e], s2[e], g[e], g2[e], l1, l2);
    st4(w, a);
    if (o.kind != OPT_SGD) st4(w + n, s1);
    if (o.kind == OPT_FTRL) st4(w + 2 * n, s2);
}

// A row's gradient of a scalar item, added to its accumulator acc.
template <typename T>
__device__ __forceinline__ void hot_add_scalar(T* acc, T g) {
    atomicAdd(acc, g);
    atomicAdd(acc + 1, g * g);
    atomicAdd(acc + 2, (T)1);
}

// Four elements of a row's gradient of a vector item (acc: the item's
// accumulator, d: the chunk's offset in the block); `first` counts the row.
template <typename T, int K>
__device__ __forceinline__ void hot_add_chunk(T* acc, int d, const T* g, bool first) {
    for (int e = 0; e < 4; ++e) {
        atomicAdd(acc + d + e, g[e]);
        atomicAdd(acc + K + d + e, g[e] * g[e]);
    }
    if (first) atomicAdd(acc + 2 * K, (T)1);
}

// ---------------------------------------------------------------------------
// Losses (_kernels.pyx: row_loss)

__device__ __forceinline__ double log1pexp(double z) {
    if (z > 0) return z + log1p(exp(-z));
    return log1p(exp(z));
}

// One output (binary, regression); kappa = dloss/dt.
__device__ __forceinline__ double loss_one(int task, double t, double y, double eps, double& kappa) {
    if (task == TASK_REGRESSION) {
        kappa = t - y;
        return 0.5 * (t - y) * (t - y);
    }
    double q = y * (1 - eps) + 0.5 * eps;
    if (q == 1) {
        kappa = -1 / (1 + exp(t));
        return log1pexp(-t);
    }
    if (q == 0) {
        kappa = 1 / (1 + exp(-t));
        return log1pexp(t);
    }
    double e1 = 1 / (1 + exp(-t));
    double e2 = 1 / (1 + exp(t));
    kappa = (1 - q) * e1 - q * e2;
    return q * log1pexp(-t) + (1 - q) * log1pexp(t);
}

// Softmax cross-entropy over C scores t; kappa[c] = dloss/dt_c.
__device__ __forceinline__ double loss_multi(long long C, const double* t, double y, double eps, double* kappa) {
    double mx = t[0];
    for (long long c = 1; c < C; ++c)
        if (t[c] > mx) mx = t[c];
    double z = 0;
    for (long long c = 0; c < C; ++c) z = z + exp(t[c] - mx);
    double lse = mx + log(z);
    long long yc = (long long)y;
    double q = 0;
    for (long long c = 0; c < C; ++c) {
        double e1 = exp(t[c] - lse);
        double e2 = eps / C + (c == yc ? (1 - eps) : 0);
        kappa[c] = e1 - e2;
        q = q + e2 * (lse - t[c]);
    }
    return q;
}

// ---------------------------------------------------------------------------
// Rows

// Instance normalisation: 1/||x|| (1 for an empty row or without it).
__device__ __forceinline__ double row_scale(const float* val, int nnz, bool normalize, int lane) {
    if (!normalize) return 1;
    double ss = 0;
    for (int i = lane; i < nnz; i += 32) ss = ss + (double)val[i] * val[i];
    ss = warp_sum(ss);
    if (ss > 0) return 1 / sqrt(ss);
    return 1;
}

// An entry the model has weights for (others add nothing, as on the CPU).
__device__ __forceinline__ bool entry_ok(const Shape& s, const int* fld, const int* feat, int i) {
    return feat[i] < s.n && (!s.fielded || fld[i] < s.m);
}

// FM: acc = sum_i V[j_i] x_i over the row (this lane's elements, summed over
// every group) and sq = sum_i |V[j_i] x_i|^2 (this lane's part).
template <typename T, int K>
__device__ __forceinline__ void fm_sums(const Shape& s, const T* F, const int* feat, const float* val,
                                        int nnz, T scale, int lane, T* acc, T& sq) {
    typedef Lanes<K> LN;
    const int grp = lane / LN::G, q = lane % LN::G;
    for (int e = 0; e < LN::E; ++e) acc[e] = 0;
    sq = 0;
    for (int i = grp; i < nnz; i += LN::NPW) {
        long long j = feat[i];
        if (j >= s.n) continue;
        T x = val[i] * scale;
        const T* w = F + j * s.fs;
        for (int c = 0; c < LN::CH; ++c) if (LN::has(q, c)) {
            T v[4];
            ld4(w + LN::at(q, c), v);
            for (int e = 0; e < 4; ++e) {
                T a = v[e] * x;
                acc[c * 4 + e] = acc[c * 4 + e] + a;
                sq = sq + a * a;
            }
        }
    }
    for (int e = 0; e < LN::E; ++e) acc[e] = across_groups<LN::G>(acc[e]);
}

// The score of one class (its B, L, F, R); every lane returns the same value.
template <typename T, int K>
__device__ double score_class(const Shape& s, const T* B, const T* L, const T* F, const T* R,
                              const int* fld, const int* feat, const float* val, int nnz, T scale,
                              int lane) {
    typedef Lanes<K> LN;
    const int grp = lane / LN::G, q = lane % LN::G;
    // Every parameter is read before the first warp reduction: once a lane
    // is past the last one it may start stepping them (per-row training).
    const double bias = s.use_bias ? (double)B[0] : 0.0;
    double lin = 0, pt = 0;
    if (s.use_linear) {
        for (int i = lane; i < nnz; i += 32)
            if (entry_ok(s, fld, feat, i)) lin += (double)(L[(long long)feat[i] * s.ls] * (val[i] * scale));
        lin = warp_sum(lin);
    }
    if (s.kind == KIND_FM) {
        T acc[LN::E], sq;
        fm_sums<T, K>(s, F, feat, val, nnz, scale, lane, acc, sq);
        T ss = 0;
        for (int e = 0; e < LN::E; ++e) ss = ss + acc[e] * acc[e];
        ss = group_sum<LN::G>(ss);
        sq = warp_sum(sq);
        pt = 0.5 * (double)(ss - sq);
    } else if (s.kind == KIND_FFM || s.kind == KIND_FWFM || s.kind == KIND_FMFM) {
        const long long P = (long long)nnz * (nnz - 1) / 2;
        T part = 0;
        int i = 0, l = 0;
        if (grp < P) pair_decode(grp, nnz, i, l);
        for (long long p = grp; p < P; p += LN::NPW) {
            if (entry_ok(s, fld, feat, i) && entry_ok(s, fld, feat, l)) {
                const T* w1;
                const T* w2;
                T av[LN::E];
                if (s.kind == KIND_FMFM) {
                    // V_i^T A V_l: this lane's elements of V_i times those of A V_l
                    w1 = F + (long long)feat[i] * s.fs;
                    w2 = F + (long long)feat[l] * s.fs;
                    mat_vec<T, K>(mat_at<T, K>(s, R, fld[i], fld[l]), s.fs, mat_mode(fld[i], fld[l]), w2, q, av);
                } else if (s.kind == KIND_FFM) {
                    w1 = F + ((long long)feat[i] * s.m + fld[l]) * s.fs;
                    w2 = F + ((long long)feat[l] * s.m + fld[i]) * s.fs;
                } else {
                    w1 = F + (long long)feat[i] * s.fs;
                    w2 = F + (long long)feat[l] * s.fs;
                }
                T d = 0;
                for (int c = 0; c < LN::CH; ++c) if (LN::has(q, c)) {
                    T a[4], b[4];
                    ld4(w1 + LN::at(q, c), a);
                    if (s.kind == KIND_FMFM)
                        for (int e = 0; e < 4; ++e) b[e] = av[c * 4 + e];
                    else
                        ld4(w2 + LN::at(q, c), b);
                    d = d + ((a[0] * b[0] + a[1] * b[1]) + (a[2] * b[2] + a[3] * b[3]));
                }
                T xx = (val[i] * scale) * (val[l] * scale);
                if (s.kind == KIND_FFM || s.kind == KIND_FMFM)
                    part = part + d * xx;
                else
                    part = part + R[field_pair(fld[i], fld[l], s.m) * s.ls] * d * xx;
            }
            pair_advance(nnz, LN::NPW, i, l);
        }
        pt = (double)warp_sum(part);
    }
    return bias + lin + pt;
}

#endif  // FM_DEVICE_CU
