# Training and scoring kernels for LR, FM, FFM and FwFM.
#
# Parameter layout (float32, or float64 for exact tests):
#   B   bias block:    [w, state...]                       (1 + n_state values)
#   L   linear blocks: feature j at L[j * lstride]          (lstride = 1 + n_state)
#   F   factor blocks: FM  feature j at F[j * fstride]
#                      FFM feature j, field f at F[(j * n_fields + f) * fstride]
#                      FwFM: as FM, plus R, the field-pair weights: pair (a, b),
#                      a <= b, at R[(a * n_fields + b) * lstride]
#       each block is kp weights (k padded with zeros to a multiple of 4)
#       followed by n_state * kp optimizer-state values, so a block's
#       weights and accumulators share cache lines (libffm's layout).
# A loaded model for scoring uses the same layout with n_state = 0.
#
# Rows come as CSR: indptr (int64), fields and features (int32), values
# (float32), labels (float32, -1 / +1 for the logistic loss).
#
# The float32 FFM pair loops run the SSE code of ffm_f32.h; everything else
# (and all of float64, the precision the tests compare with the NumPy
# reference) runs the loops below.
#
# Threads: rows of an epoch are split statically across OpenMP threads and
# every thread updates the shared parameters without locks (Hogwild, as
# libffm does).  With one thread an epoch is a plain loop over `order`, so a
# run is bit-for-bit reproducible for a seed.

from cython.parallel cimport prange, parallel, threadid
from libc.stdlib cimport malloc, calloc, free
from libc.math cimport exp, sqrt, isfinite

from ._common cimport (floating, fm_sqrt, fm_have_openmp, fm_max_threads, log1pexp,
                      fm_ffm_prepare, fm_ffm_pairs_f32, fm_ffm_update_adagrad_f32)
from ._optim cimport opt_block, opt_pair, opt_n_state, OPT_SGD, OPT_ADAGRAD

import numpy as np

cdef enum:
    MAX_KP = 1024       # fmcli.config.MAX_K rounded up to a multiple of 4

# Model kinds (the names are fmcli.config.MODELS).
cdef enum:
    KIND_LR = 0
    KIND_FM = 1
    KIND_FFM = 2
    KIND_FWFM = 3

KIND_CODES = {"lr": KIND_LR, "fm": KIND_FM, "ffm": KIND_FFM, "fwfm": KIND_FWFM}
OPT_CODES = {"sgd": OPT_SGD, "adagrad": OPT_ADAGRAD}


def openmp_info():
    """(compiled with OpenMP, threads OpenMP would use by default)."""
    return bool(fm_have_openmp()), int(fm_max_threads())


def n_state(str optimizer):
    """Optimizer-state values kept per weight."""
    return opt_n_state(OPT_CODES[optimizer])


cdef struct Shape:
    int kind
    Py_ssize_t n_features
    Py_ssize_t n_fields
    Py_ssize_t kp            # padded factor width (multiple of 4)
    Py_ssize_t fstride       # distance between factor blocks
    Py_ssize_t lstride       # distance between linear weights (and FwFM field-pair weights)
    bint fielded             # FFM / FwFM: an entry whose field is outside the model is skipped
    bint use_bias
    bint use_linear
    bint normalize
    bint exact               # float32 AdaGrad: refined instead of estimated 1/sqrt


cdef inline floating dot(const floating* a, const floating* b, Py_ssize_t kp) noexcept nogil:
    cdef floating s0 = 0, s1 = 0, s2 = 0, s3 = 0
    cdef Py_ssize_t d
    for d in range(0, kp, 4):
        s0 = s0 + a[d] * b[d]
        s1 = s1 + a[d + 1] * b[d + 1]
        s2 = s2 + a[d + 2] * b[d + 2]
        s3 = s3 + a[d + 3] * b[d + 3]
    return (s0 + s1) + (s2 + s3)


cdef inline double row_scale(const float* val, Py_ssize_t nnz, bint normalize) noexcept nogil:
    """Instance normalization: every value is multiplied by 1/||x||."""
    cdef double ss = 0
    cdef Py_ssize_t i
    if not normalize:
        return 1
    for i in range(nnz):
        ss = ss + <double>val[i] * val[i]
    if ss > 0:
        return 1 / sqrt(ss)
    return 1


cdef struct Row:
    # A row compacted for the float32 FFM loops (see ffm_f32.h).
    Py_ssize_t* oj
    Py_ssize_t* of
    float* xs
    Py_ssize_t count


cdef struct Scratch:
    # Per-thread work space: FM's kp sums, the compacted row, and for FwFM
    # the factor gradients of a row, the field-pair gradients (m * m, zero
    # between rows), which of them a row touched and in what order.
    void* acc
    Row row
    void* gbuf
    void* rgrad
    char* rmark
    Py_ssize_t* touched


cdef Scratch* scratch_new(int nthreads, Py_ssize_t kp, Py_ssize_t max_nnz,
                          size_t itemsize, Py_ssize_t fwfm_fields) noexcept nogil:
    """One Scratch per thread, or NULL when memory is short.  fwfm_fields:
    the model's fields when it is an FwFM being trained, else 0."""
    cdef Py_ssize_t mm = fwfm_fields * fwfm_fields
    cdef Scratch* sc = <Scratch*>calloc(nthreads, sizeof(Scratch))
    cdef int i
    if sc == NULL:
        return NULL
    for i in range(nthreads):
        sc[i].acc = malloc(itemsize * (kp + 4))
        sc[i].row.oj = <Py_ssize_t*>malloc(sizeof(Py_ssize_t) * (max_nnz + 1))
        sc[i].row.of = <Py_ssize_t*>malloc(sizeof(Py_ssize_t) * (max_nnz + 1))
        sc[i].row.xs = <float*>malloc(sizeof(float) * (max_nnz + 1))
        sc[i].gbuf = malloc(itemsize * kp * (max_nnz + 1) if mm else 1)
        sc[i].rgrad = calloc(mm + 1, itemsize)
        sc[i].rmark = <char*>calloc(mm + 1, 1)
        sc[i].touched = <Py_ssize_t*>malloc(sizeof(Py_ssize_t) * (mm + 1))
        if (sc[i].acc == NULL or sc[i].row.oj == NULL or sc[i].row.of == NULL or sc[i].row.xs == NULL
                or sc[i].gbuf == NULL or sc[i].rgrad == NULL or sc[i].rmark == NULL or sc[i].touched == NULL):
            scratch_free(sc, nthreads)
            return NULL
    return sc


cdef void scratch_free(Scratch* sc, int nthreads) noexcept nogil:
    cdef int i
    if sc == NULL:
        return
    for i in range(nthreads):
        free(sc[i].acc)
        free(sc[i].row.oj)
        free(sc[i].row.of)
        free(sc[i].row.xs)
        free(sc[i].gbuf)
        free(sc[i].rgrad)
        free(sc[i].rmark)
        free(sc[i].touched)
    free(sc)


cdef Py_ssize_t longest_row(const long long[::1] indptr) noexcept nogil:
    cdef Py_ssize_t r, best = 0
    for r in range(indptr.shape[0] - 1):
        if indptr[r + 1] - indptr[r] > best:
            best = indptr[r + 1] - indptr[r]
    return best


cdef inline double score_row(const Shape* s, const floating* B, const floating* L,
                             const floating* F, const floating* R, const int* fld, const int* feat,
                             const float* val, Py_ssize_t nnz, floating scale,
                             floating* acc, Row* prep) noexcept nogil:
    """Score one row.  For FM, acc receives sum_i V[j_i] * xt_i (kp values);
    for the float32 FFM path, prep receives the compacted row that update_row
    then reuses.

    Entries whose feature (or, for FFM, field) is outside the model add
    nothing; they still count in the row's normalization."""
    cdef double t = 0
    cdef floating pair = 0, x1, sq = 0, v
    cdef Py_ssize_t i, l, d, j1, j2, f1, f2
    # Shape fields in locals: stores through float pointers cannot alias them.
    cdef Py_ssize_t n = s.n_features, m = s.n_fields, kp = s.kp, fs = s.fstride
    cdef const floating* w1
    cdef const floating* w2
    cdef const floating* row1
    if s.use_bias:
        t += B[0]
    if s.use_linear:
        for i in range(nnz):
            j1 = feat[i]
            if j1 < n and (not s.fielded or fld[i] < m):
                t += L[j1 * s.lstride] * (val[i] * scale)
    if s.kind == KIND_FFM:
        if floating is float:
            prep.count = fm_ffm_prepare(n, m, fs, fld, feat, val, nnz, scale, prep.oj, prep.of, prep.xs)
            t += fm_ffm_pairs_f32(F, kp, prep.oj, prep.of, prep.xs, prep.count)
        else:
            for i in range(nnz):
                j1 = feat[i]
                f1 = fld[i]
                if j1 >= n or f1 >= m:
                    continue
                x1 = val[i] * scale
                row1 = F + j1 * m * fs
                for l in range(i + 1, nnz):
                    j2 = feat[l]
                    f2 = fld[l]
                    if j2 >= n or f2 >= m:
                        continue
                    w1 = row1 + f2 * fs
                    w2 = F + (j2 * m + f1) * fs
                    pair = pair + dot(w1, w2, kp) * (x1 * (val[l] * scale))
            t += pair
    elif s.kind == KIND_FWFM:
        for i in range(nnz):
            j1 = feat[i]
            f1 = fld[i]
            if j1 >= n or f1 >= m:
                continue
            x1 = val[i] * scale
            w1 = F + j1 * fs
            for l in range(i + 1, nnz):
                j2 = feat[l]
                f2 = fld[l]
                if j2 >= n or f2 >= m:
                    continue
                pair = pair + (R[field_pair(f1, f2, m) * s.lstride] * dot(w1, F + j2 * fs, kp)
                               * (x1 * (val[l] * scale)))
        t += pair
    elif s.kind == KIND_FM:
        for d in range(kp):
            acc[d] = 0
        for i in range(nnz):
            j1 = feat[i]
            if j1 >= n:
                continue
            x1 = val[i] * scale
            w1 = F + j1 * fs
            for d in range(kp):
                v = w1[d] * x1
                acc[d] = acc[d] + v
                sq = sq + v * v
        for d in range(kp):
            pair = pair + acc[d] * acc[d]
        t += 0.5 * (pair - sq)
    return t


cdef inline Py_ssize_t field_pair(Py_ssize_t a, Py_ssize_t b, Py_ssize_t m) noexcept nogil:
    """Index of FwFM's weight for fields a and b (upper triangle of R)."""
    if a <= b:
        return a * m + b
    return b * m + a


cdef void fwfm_update(const Shape* s, int opt, floating eta, floating lam, floating* F,
                      floating* R, const int* fld, const int* feat, const float* val,
                      Py_ssize_t nnz, floating scale, floating kappa, Scratch* sc) noexcept nogil:
    """FwFM step: every gradient from the values at the start of the row, then
    the factors stepped in row order, then each touched field-pair weight
    once with its gradient summed over the row's pairs (no L2 on them)."""
    cdef Py_ssize_t n = s.n_features, m = s.n_fields, kp = s.kp, fs = s.fstride, ls = s.lstride
    cdef Py_ssize_t i, l, d, p, n_touched = 0
    cdef floating xi, xl, r
    cdef floating* gbuf = <floating*>sc.gbuf
    cdef floating* rg = <floating*>sc.rgrad
    cdef floating* g
    cdef const floating* wi
    cdef const floating* wl
    for i in range(nnz):
        g = gbuf + i * kp
        for d in range(kp):
            g[d] = 0
        if feat[i] >= n or fld[i] >= m:
            continue
        xi = val[i] * scale
        wi = F + feat[i] * fs
        for l in range(nnz):
            if l == i or feat[l] >= n or fld[l] >= m:
                continue
            xl = val[l] * scale
            wl = F + feat[l] * fs
            p = field_pair(fld[i], fld[l], m)
            r = R[p * ls] * xl
            for d in range(kp):
                g[d] = g[d] + r * wl[d]
            if l > i:
                if not sc.rmark[p]:
                    sc.rmark[p] = 1
                    sc.touched[n_touched] = p
                    n_touched += 1
                rg[p] = rg[p] + kappa * xi * xl * dot(wi, wl, kp)
        for d in range(kp):
            g[d] = kappa * xi * g[d] + lam * wi[d]
    for i in range(nnz):
        if feat[i] < n and fld[i] < m:
            opt_block(opt, eta, F + feat[i] * fs, gbuf + i * kp, kp, s.exact)
    for i in range(n_touched):
        p = sc.touched[i]
        opt_block(opt, eta, R + p * ls, &rg[p], 1, s.exact)
        rg[p] = 0
        sc.rmark[p] = 0


cdef inline void update_row(const Shape* s, int opt, floating eta, floating lam,
                            floating* B, floating* L, floating* F, floating* R,
                            const int* fld, const int* feat, const float* val,
                            Py_ssize_t nnz, floating scale, floating kappa,
                            const floating* acc, const Row* prep, Scratch* sc) noexcept nogil:
    """One optimizer step for every parameter the row touches.

    kappa is dloss/dscore at the parameters as they were when the row was
    scored.  FFM blocks are updated pair by pair in place, as libffm does."""
    cdef Py_ssize_t i, l, d, j1, j2, f1, f2
    cdef Py_ssize_t n = s.n_features, m = s.n_fields, kp = s.kp, fs = s.fstride, ls = s.lstride
    cdef floating x1, kv, a, b, g
    cdef floating* w1
    cdef floating* w2
    cdef floating* row1
    cdef floating g1[MAX_KP]
    cdef floating g2[MAX_KP]
    if s.use_bias:
        opt_block(opt, eta, B, &kappa, 1, s.exact)
    # Ids outside the model are skipped exactly as score_row skips them.
    if s.use_linear:
        for i in range(nnz):
            if feat[i] >= n or (s.fielded and fld[i] >= m):
                continue
            w1 = L + feat[i] * ls
            g = kappa * (val[i] * scale) + lam * w1[0]
            opt_block(opt, eta, w1, &g, 1, s.exact)
    if s.kind == KIND_FFM:
        if floating is float:
            if opt == OPT_ADAGRAD:
                fm_ffm_update_adagrad_f32(F, kp, s.exact, prep.oj, prep.of, prep.xs, prep.count,
                                          kappa, eta, lam)
                return
        for i in range(nnz):
            f1 = fld[i]
            if feat[i] >= n or f1 >= m:
                continue
            x1 = val[i] * scale
            row1 = F + feat[i] * m * fs
            for l in range(i + 1, nnz):
                if feat[l] >= n or fld[l] >= m:
                    continue
                w1 = row1 + fld[l] * fs
                w2 = F + (feat[l] * m + f1) * fs
                kv = kappa * x1 * (val[l] * scale)
                opt_pair(opt, eta, lam, kv, w1, w2, kp, g1, g2, s.exact)
    elif s.kind == KIND_FWFM:
        fwfm_update(s, opt, eta, lam, F, R, fld, feat, val, nnz, scale, kappa, sc)
    elif s.kind == KIND_FM:
        for i in range(nnz):
            if feat[i] >= n:
                continue
            x1 = val[i] * scale
            w1 = F + feat[i] * fs
            kv = kappa * x1
            for d in range(kp):
                a = w1[d]
                g1[d] = kv * (acc[d] - a * x1) + lam * a
            opt_block(opt, eta, w1, g1, kp, s.exact)


cdef inline floating* ptr(floating[::1] a) noexcept:
    if a.shape[0] == 0:
        return NULL
    return &a[0]


cdef inline const floating* cptr(const floating[::1] a) noexcept:
    if a.shape[0] == 0:
        return NULL
    return &a[0]


cdef Shape make_shape(str kind, Py_ssize_t n_features, Py_ssize_t n_fields, Py_ssize_t kp,
                      Py_ssize_t n_state_, bint use_bias, bint use_linear, bint normalize) except *:
    cdef Shape s
    if kp % 4 != 0 or not 0 < kp <= MAX_KP:
        raise ValueError(f"kp must be a multiple of 4 in 4..{MAX_KP}")
    s.kind = KIND_CODES[kind]
    s.n_features = n_features
    s.n_fields = n_fields
    s.kp = kp
    s.fstride = kp * (1 + n_state_)
    s.lstride = 1 + n_state_
    s.fielded = s.kind == KIND_FFM or s.kind == KIND_FWFM
    s.use_bias = use_bias
    s.use_linear = use_linear
    s.normalize = normalize
    s.exact = False
    return s


def train_epoch(str kind, str optimizer, floating[::1] B, floating[::1] L, floating[::1] F,
                floating[::1] R,
                Py_ssize_t n_features, Py_ssize_t n_fields, Py_ssize_t kp,
                const long long[::1] indptr, const int[::1] fields, const int[::1] features,
                const float[::1] values, const float[::1] labels, const long long[::1] order,
                double eta, double lam, bint use_bias=True, bint use_linear=True,
                bint normalize=True, int threads=1, bint exact_rsqrt=False):
    """One pass of logistic-loss training over rows in `order`.

    Ids outside the model are skipped.  exact_rsqrt: float32 AdaGrad refines the
    CPU's 1/sqrt estimate to float32 precision (slower; float64 is always
    exact).  Returns (sum of row losses, number of rows skipped because their
    score was not finite)."""
    cdef int opt = OPT_CODES[optimizer]
    cdef Shape s = make_shape(kind, n_features, n_fields, kp, opt_n_state(opt),
                              use_bias, use_linear, normalize)
    s.exact = exact_rsqrt
    if B.shape[0] < s.lstride or L.shape[0] < n_features * s.lstride:
        raise ValueError("bias or linear array too small")
    if s.kind != KIND_LR and F.shape[0] < n_features * (n_fields if s.kind == KIND_FFM else 1) * s.fstride:
        raise ValueError("factor array too small")
    if s.kind == KIND_FWFM and R.shape[0] < n_fields * n_fields * s.lstride:
        raise ValueError("field-pair weight array too small")
    cdef floating* pR = ptr(R)
    cdef floating* pB = ptr(B)
    cdef floating* pL = ptr(L)
    cdef floating* pF = ptr(F)
    cdef Py_ssize_t n = order.shape[0]
    cdef Py_ssize_t ii, row, start, nnz
    cdef double t, loss = 0, y
    cdef long long bad = 0
    cdef floating scale, kappa
    cdef floating feta = eta, flam = lam
    cdef int nthreads = max(1, threads), tid
    cdef Scratch* sc = scratch_new(nthreads, kp, longest_row(indptr), sizeof(floating),
                                   n_fields if s.kind == KIND_FWFM else 0)
    if sc == NULL:
        raise MemoryError("no memory for the training work space")
    tid = 0
    try:
        with nogil, parallel(num_threads=nthreads):
            tid = threadid()
            for ii in prange(n, schedule="static"):
                row = order[ii]
                start = indptr[row]
                nnz = indptr[row + 1] - start
                scale = <floating>row_scale(&values[start], nnz, s.normalize)
                t = score_row(&s, pB, pL, pF, pR, &fields[start], &features[start], &values[start],
                              nnz, scale, <floating*>sc[tid].acc, &sc[tid].row)
                if not isfinite(t):
                    bad += 1
                    continue
                y = labels[row]
                kappa = <floating>(-y / (1.0 + exp(y * t)))
                loss += log1pexp(-y * t)
                update_row(&s, opt, feta, flam, pB, pL, pF, pR, &fields[start], &features[start],
                           &values[start], nnz, scale, kappa, <floating*>sc[tid].acc, &sc[tid].row,
                           &sc[tid])
    finally:
        scratch_free(sc, nthreads)
    return loss, bad


def score_rows(str kind, const floating[::1] B, const floating[::1] L, const floating[::1] F,
               const floating[::1] R,
               Py_ssize_t n_features, Py_ssize_t n_fields, Py_ssize_t kp, Py_ssize_t n_state_,
               const long long[::1] indptr, const int[::1] fields, const int[::1] features,
               const float[::1] values, double[::1] out, bint use_bias=True,
               bint use_linear=True, bint normalize=True, int threads=1):
    """Raw scores (logits) of every row into `out`.

    Ids at or beyond the model's n_features / n_fields contribute nothing.
    n_state_ is the optimizer-state width of the layout (0 for a saved model)."""
    cdef Shape s = make_shape(kind, n_features, n_fields, kp, n_state_,
                              use_bias, use_linear, normalize)
    cdef Py_ssize_t n = indptr.shape[0] - 1
    if out.shape[0] < n:
        raise ValueError("output array too small")
    cdef const floating* pB = cptr(B)
    cdef const floating* pL = cptr(L)
    cdef const floating* pF = cptr(F)
    cdef const floating* pR = cptr(R)
    if s.kind == KIND_FWFM and R.shape[0] < n_fields * n_fields * s.lstride:
        raise ValueError("field-pair weight array too small")
    cdef Py_ssize_t row, start, nnz
    cdef floating scale
    cdef int nthreads = max(1, threads), tid
    cdef Scratch* sc = scratch_new(nthreads, kp, longest_row(indptr), sizeof(floating), 0)
    if sc == NULL:
        raise MemoryError("no memory for the scoring work space")
    tid = 0
    try:
        with nogil, parallel(num_threads=nthreads):
            tid = threadid()
            for row in prange(n, schedule="static"):
                start = indptr[row]
                nnz = indptr[row + 1] - start
                scale = <floating>row_scale(&values[start], nnz, s.normalize)
                out[row] = score_row(&s, pB, pL, pF, pR, &fields[start], &features[start],
                                     &values[start], nnz, scale, <floating*>sc[tid].acc, &sc[tid].row)
    finally:
        scratch_free(sc, nthreads)
    return np.asarray(out)
