# Training and scoring kernels for LR, FM, FFM, FwFM and FmFM.
#
# Parameter layout (float32, or float64 for exact tests):
#   B   bias block:    [w, state...]                       (1 + n_state values)
#   L   linear blocks: feature j at L[j * lstride]          (lstride = 1 + n_state)
#   F   factor blocks: FM  feature j at F[j * fstride]
#                      FFM feature j, field f at F[(j * n_fields + f) * fstride]
#                      FwFM: as FM, plus R, the field-pair weights: pair (a, b),
#                      a <= b, at R[(a * n_fields + b) * lstride]
#                      FmFM: as FM, plus R, the field-pair matrices (kp x kp,
#                      the k x k matrix padded with zeros): row r of pair
#                      (a, b), a <= b, is a block like a factor block (kp
#                      weights and their state) at
#                      R[((a * n_fields + b) * kp + r) * fstride]
#       each block is kp weights (k padded with zeros to a multiple of 4)
#       followed by n_state * kp optimizer-state values, so a block's
#       weights and accumulators share cache lines (libffm's layout);
#       with row-wise AdaGrad by its one accumulator (kp + 1 values).
# A multiclass model has one such set per class, class after class in each
# of B, L, F and R.  A loaded model for scoring uses the same layout with
# n_state = 0.
#
# Rows come as CSR: indptr (int64), fields and features (int32), values
# (float32), labels (float32: 0/1 for the binary task, the target for
# regression, the class index for multiclass) and optional row weights.
#
# Losses (kappa = dloss/dscore, times the row weight):
#   binary       q log(1+e^-t) + (1-q) log(1+e^t), q = y(1-eps) + eps/2
#   regression   (t - y)^2 / 2
#   multiclass   -sum_c q_c log softmax(t)_c, q_c = (1-eps)[c = y] + eps/C
#
# Updates: with batch_size 1 every row steps the parameters it touches
# (libffm's per-row SGD; FFM's pairs are stepped in place, pair by pair).
# With batch_size b > 1 the gradients of b consecutive rows are computed at
# the same parameters, summed per block in a per-thread accumulator, and each
# touched block is stepped once with their mean (plus L2).  The update rules
# themselves live in _optim.pxd.
#
# The float32 FFM per-row loops run the SIMD code of ffm_f32.h (SSE, or AVX
# where the CPU has it, chosen at import), float32 FwFM scores rows and
# computes their per-row gradients with fwfm_f32.h, and float32 FmFM with
# fmfm_f32.h;
# everything else (and all of float64, the precision the tests compare with
# the NumPy reference) runs the loops below.
#
# Threads: rows (or batches) of an epoch are handed to OpenMP threads in
# chunks of BALANCE_CHUNK and every thread updates the shared parameters without locks
# (Hogwild, as libffm does), except that float32 FFM can train the hottest
# features on per-thread replicas exchanged every few hundred rows (hot.h).
# With one thread an epoch is a plain loop over `order`, so a run is
# bit-for-bit reproducible for a seed.
#
# Entry points: a Layout (the Shape of a model's arrays) is built once per
# model; a Trainer, built once per run from a Layout, the four arrays and the
# hyperparameters, trains them in place one slice of rows at a time
# (Trainer.train); score_rows(layout, ...) is the one scoring loop, for
# validation and for predict alike.

from cython.parallel cimport prange, parallel, threadid
from libc.stdlib cimport malloc, calloc, free

cdef extern from "<stdlib.h>" nogil:
    void* aligned_alloc(size_t alignment, size_t size)
from libc.string cimport memcmp, memcpy, memset
from libc.math cimport exp, log, sqrt, isfinite

from ._common cimport (floating, fm_sqrt, fm_have_openmp, fm_max_threads, fm_set_schedule, log1pexp,
                      fm_simd_init, fm_simd_set, fm_simd_level, fm_set_uniform_rows, fm_uniform_rows, fm_f16c, fm_ffm_prepare,
                      fm_ffm_pairs_f16, fm_ffm_adagrad_f16, fm_h2f, fm_f2h_sr, fm_ffm_pairs_f32, fm_ffm_update_f32, fm_step_params,
                      fm_fwfm_prepare, fm_fwfm_pairs_f32, fm_fwfm_grads_f32, fm_fwfm_adagrad_r_f32,
                      fm_fmfm_pairs_f32, fm_fmfm_grads_f32,
                      fm_replica, fm_ffm_prepare_hot, fm_fwfm_prepare_hot, fm_hot_block, fm_hot_linear, fm_float_distance, fm_prefetch_features, fm_prefetch_features_hot, fm_prefetch_linear, fm_prefetch_span, fm_hot_tick,
                      fm_hot_exchange_all, FM_HOT_TIERS, FM_COPY_DIVISOR,
                      fm_copy, fm_copy_load, fm_copy_exchange, fm_copy_tick, fm_lock, fm_unlock)
from ._optim cimport (Opt, opt_block, opt_pair, opt_n_state, opt_grad_l2, opt_step_eta,
                      OPT_SGD, OPT_ADAGRAD, OPT_ADAM, OPT_FTRL, OPT_ROWADA,
                      SCHED_CONSTANT, SCHED_LINEAR, SCHED_COSINE, SCHED_INVSQRT)

import numpy as np

cdef enum:
    MAX_KP = 1024       # fmcli.config.MAX_K rounded up to a multiple of 4
    BALANCE_CHUNK = 256 # rows (or batches) a thread takes at a time with balance=True
    # Training prefetches an FFM row's whole factor rows (n_fields blocks a
    # feature) only when the row has at least n_fields / ROWS_AHEAD_FIELDS
    # entries: most of each factor row is then read by its pairs
    ROWS_AHEAD_FIELDS = 4
    # train_pass's flags (the stop flag, then the replicas' lock 128 bytes on)
    FLAG_INTS = 64

# Trainer.train copies the rows of a shuffled order side by side before it
# trains them (see gather_entries), at most this many rows and (unless one
# row or batch alone has more) entries at a time, when there are at least
# GATHER_MIN_ROWS of them.
GATHER_ROWS = 65536
GATHER_ENTRIES = 1 << 21
GATHER_MIN_ROWS = 64

# Model kinds (the names are fmcli.config.MODELS).
cdef enum:
    KIND_LR = 0
    KIND_FM = 1
    KIND_FFM = 2
    KIND_FWFM = 3
    KIND_FMFM = 4

cdef enum:
    TASK_BINARY = 0
    TASK_REGRESSION = 1
    TASK_MULTICLASS = 2

# Parameter arrays, as emit() names them.
cdef enum:
    ARR_B = 0
    ARR_L = 1
    ARR_F = 2
    ARR_R = 3

KIND_CODES = {"lr": KIND_LR, "fm": KIND_FM, "ffm": KIND_FFM, "fwfm": KIND_FWFM, "fmfm": KIND_FMFM}
OPT_CODES = {"sgd": OPT_SGD, "adagrad": OPT_ADAGRAD, "adam": OPT_ADAM, "ftrl": OPT_FTRL,
             "rowwise-adagrad": OPT_ROWADA}
TASK_CODES = {"binary": TASK_BINARY, "regression": TASK_REGRESSION, "multiclass": TASK_MULTICLASS}
SCHEDULE_CODES = {"constant": SCHED_CONSTANT, "linear": SCHED_LINEAR, "cosine": SCHED_COSINE,
                  "inverse-sqrt": SCHED_INVSQRT}


# The SIMD levels of the float32 loops, lowest first (see ffm_f32.h).  At
# import the best this CPU has is chosen, or the one the environment variable
# FMCLI_SIMD names (a level the CPU lacks falls back to the best it has;
# "scalar" exists only in builds without SSE, elsewhere it means "sse").
SIMD_LEVELS = ("scalar", "sse", "avx", "avx2", "avx512")
fm_simd_init()


def simd():
    """The SIMD level the float32 loops use: one of SIMD_LEVELS."""
    return SIMD_LEVELS[fm_simd_level]


def f16c():
    """Whether float16 factors are converted with F16C (else in software)."""
    return bool(fm_f16c)


def set_simd(str level):
    """Use `level` (one of SIMD_LEVELS) for the float32 loops where the CPU
    has it, else the best level it has; returns the level in use.  Every
    level gives bit-identical results, except --storage float16 (F16C comes
    with the avx level and above, and the loops without it take AdaGrad's
    exact 1/sqrt); this exists for tests and measurements."""
    return SIMD_LEVELS[fm_simd_set(SIMD_LEVELS.index(level))]


def uniform_rows(on=None):
    """Whether the float32 FFM loops take one-hot rows' common x_i x_l once
    per row (bit-identical results; see ffm_f32.h); `on` changes it, for
    tests and measurements.  Returns the setting in effect."""
    if on is not None:
        fm_set_uniform_rows(1 if on else 0)
    return bool(fm_uniform_rows)


def float16_round(const float[::1] x, const unsigned int[::1] bits, unsigned short[::1] out,
                  float[::1] back):
    """The scalar float16 conversions of --storage float16, for tests:
    out[i] = x[i] rounded to float16 with the random bits[i] (0: toward
    zero), back[i] = out[i] widened again."""
    cdef Py_ssize_t i
    for i in range(x.shape[0]):
        out[i] = fm_f2h_sr(x[i], bits[i])
        back[i] = fm_h2f(out[i])


def openmp_info():
    """(compiled with OpenMP, threads OpenMP would use by default)."""
    return bool(fm_have_openmp()), int(fm_max_threads())


def n_state(str optimizer):
    """Optimizer-state values kept per weight."""
    return opt_n_state(OPT_CODES[optimizer])


def step_size(str optimizer, double eta, double t, str schedule="constant", double warmup=0,
              double total=1, double beta1=0.9, double beta2=0.999):
    """The step size the kernels use at 0-based step t (for tests and logs)."""
    cdef Opt o
    o.kind = OPT_CODES[optimizer]
    o.b1 = beta1
    o.b2 = beta2
    o.schedule = SCHEDULE_CODES[schedule]
    o.warmup = warmup
    o.total = total
    return opt_step_eta(&o, eta, t)


cdef struct Shape:
    int kind
    int task
    Py_ssize_t n_classes
    Py_ssize_t n_features
    Py_ssize_t n_fields
    Py_ssize_t n_blocks      # factor blocks per class
    Py_ssize_t kp            # padded factor width (multiple of 4)
    Py_ssize_t fstride       # distance between factor blocks
    Py_ssize_t lstride       # distance between linear weights (and FwFM field-pair weights)
    Py_ssize_t cB, cL, cF, cR  # distance between classes in B, L, F, R
    bint fielded             # FFM / FwFM / FmFM: an entry whose field is outside the model is skipped
    bint use_bias
    bint use_linear
    bint normalize
    bint batch               # mini-batch mode: emit() accumulates instead of stepping
    # regularisation: L2 per group as the optimizer sees it (FTRL's closed
    # form), the L2 coefficient inside per-row gradients (0 for FTRL and in
    # mini-batch mode, where it is added once per step), and L1 (FTRL)
    double l2b, l2l, l2f
    double lamb, laml, lamf
    double l1
    # mini-batch accounting: first block id of each array in the id space
    Py_ssize_t id0[4]
    char* base[4]            # parameter arrays (class 0)
    Py_ssize_t stride[4]     # block stride of each array
    Py_ssize_t blen[4]       # weights per block of each array
    Py_ssize_t itemsize      # sizeof(floating)
    bint half                # FFM blocks: kp float16 weights, then kp float32 AdaGrad
                             # accumulators (fstride counts 4-byte words: 3 kp / 2)
    const unsigned short* hot_slot  # float32 FFM with per-thread replicas (hot.h): per
                                    # feature, 1 + its slot in a replica, or 0; else NULL
    Py_ssize_t pf_state      # float32 FFM training one row at a time: fstride when a block's
                             # optimizer state spills past its weights' cache line (scoring
                             # the row prefetches it for the update, see FM_PF_STATE), else 0


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
    # A row compacted for the float32 FFM loops (see ffm_f32.h), and for
    # FwFM's and FmFM's (fm_fwfm_prepare: of holds the fields).
    Py_ssize_t* oj
    Py_ssize_t* of
    float* xs
    Py_ssize_t count
    fm_replica* hot          # the thread's replica of the hot features (hot.h), when in use


cdef struct Scratch:
    # Per-thread work space: FM's kp sums per class, the compacted row, the
    # row's class scores, for FwFM the factor gradients of a row, the
    # field-pair gradients (m * m, zero between rows), which of them a row
    # touched and in what order; for FmFM the factor gradients of a row, the
    # matrix gradients of the field pairs it touches (one kp x kp slot per
    # pair, in the order of first touch), each pair's slot + 1 (m * m, zero
    # between rows) and the pairs in slot order; in mini-batch mode the
    # gradient sums of the batch (weights only, per array), a mark per block
    # and the touched ids.
    void* acc
    Row row
    int* fld                 # a row's fields, widened from uint8
    float* ones              # values of a row stored without values (all 1)
    double* t
    void* gbuf
    void* lgrad              # a row's linear gradients (from its start-of-row weights)
    void* rgrad
    char* rmark
    Py_ssize_t* touched
    Py_ssize_t* pslot        # FmFM: per field pair, 1 + its gradient slot in rgrad, or 0
    void* gacc[4]
    char* mark
    Py_ssize_t* ids
    Py_ssize_t n_ids
    unsigned int seed        # float16 storage: the row's stochastic-rounding seed
    fm_replica hot           # the thread's replica of the hot features' blocks (hot.h;
                             # its arrays belong to the Trainer)
    long long first_bad      # position in `order` of the first non-finite row, or -1
    char pad[128]            # the threads' Scratch structs share no cache line, nor a pair
                             # of lines that the CPU fetches together (their fields are
                             # written every row)


cdef inline void* line_alloc(size_t size) noexcept nogil:
    """`size` bytes on cache lines of their own (64-byte aligned, rounded up to
    whole lines): one thread's work space never shares a line with another
    thread's (or with anything else malloc placed beside it), so the writes
    every row makes to it never travel between cores."""
    return aligned_alloc(64, (size + 63) // 64 * 64 if size else 64)


cdef inline void* line_calloc(size_t n, size_t size) noexcept nogil:
    cdef void* p = line_alloc(n * size)
    if p != NULL:
        memset(p, 0, n * size)
    return p


cdef Scratch* scratch_new(int nthreads, const Shape* s, Py_ssize_t max_nnz, size_t itemsize,
                          bint pair_train, bint batch) noexcept nogil:
    """One Scratch per thread, or NULL when memory is short.  pair_train:
    the row gradients of a kind with field-pair parameters (FwFM, FmFM)."""
    cdef Py_ssize_t m = s.n_fields, kp = s.kp, C = s.n_classes, a, total = 0
    # FwFM: one gradient per field pair (m * m, indexed by the pair);
    # FmFM: a kp x kp gradient per pair a row can touch (in slots), and the
    # slot map (m * m)
    cdef Py_ssize_t mm = m * m if pair_train else 0
    cdef Py_ssize_t slots = mm, glen = mm, nmap = 0
    if pair_train and s.kind == KIND_FMFM:
        slots = min(max_nnz * (max_nnz - 1) // 2, m * (m + 1) // 2)
        glen = slots * kp * kp
        nmap = mm
    cdef Scratch* sc = <Scratch*>line_calloc(nthreads, sizeof(Scratch))
    cdef int i
    cdef bint ok
    if sc == NULL:
        return NULL
    if batch:
        # every array's blocks: R's are FwFM's weights or FmFM's matrix rows
        total = s.id0[3] + C * (s.cR // s.stride[ARR_R])
    for i in range(nthreads):
        sc[i].first_bad = -1
        sc[i].acc = line_alloc(itemsize * (kp + 4) * C)
        sc[i].t = <double*>line_alloc(sizeof(double) * 2 * C)   # scores, then kappas
        sc[i].row.oj = <Py_ssize_t*>line_alloc(sizeof(Py_ssize_t) * (max_nnz + 1))
        sc[i].row.of = <Py_ssize_t*>line_alloc(sizeof(Py_ssize_t) * (max_nnz + 1))
        sc[i].row.xs = <float*>line_alloc(sizeof(float) * (max_nnz + 1))
        sc[i].fld = <int*>line_alloc(sizeof(int) * (max_nnz + 1))
        sc[i].ones = <float*>line_alloc(sizeof(float) * (max_nnz + 1))
        if sc[i].ones != NULL:
            for a in range(max_nnz + 1):
                sc[i].ones[a] = 1
        sc[i].gbuf = line_alloc(itemsize * kp * (max_nnz + 1))
        sc[i].lgrad = line_alloc(itemsize * (max_nnz + 1))
        sc[i].rgrad = line_calloc(glen + 1, itemsize)
        sc[i].rmark = <char*>line_calloc(mm + 1, 1)
        sc[i].touched = <Py_ssize_t*>line_alloc(sizeof(Py_ssize_t) * (slots + 1))
        sc[i].pslot = <Py_ssize_t*>line_calloc(nmap + 1, sizeof(Py_ssize_t))
        ok = (sc[i].acc != NULL and sc[i].t != NULL and sc[i].row.oj != NULL and sc[i].row.of != NULL
              and sc[i].row.xs != NULL and sc[i].fld != NULL and sc[i].ones != NULL
              and sc[i].gbuf != NULL and sc[i].lgrad != NULL and sc[i].rgrad != NULL
              and sc[i].rmark != NULL and sc[i].touched != NULL and sc[i].pslot != NULL)
        if batch and ok:
            for a in range(4):
                sc[i].gacc[a] = line_calloc(((s.id0[a + 1] if a < 3 else total) - s.id0[a]) * s.blen[a] + 1, itemsize)
                ok = ok and sc[i].gacc[a] != NULL
            sc[i].mark = <char*>line_calloc(total + 1, 1)
            sc[i].ids = <Py_ssize_t*>line_alloc(sizeof(Py_ssize_t) * (total + 1))
            ok = ok and sc[i].mark != NULL and sc[i].ids != NULL
        if not ok:
            scratch_free(sc, nthreads)
            return NULL
    return sc


cdef void scratch_free(Scratch* sc, int nthreads) noexcept nogil:
    cdef int i, a
    if sc == NULL:
        return
    for i in range(nthreads):
        free(sc[i].acc)
        free(sc[i].t)
        free(sc[i].row.oj)
        free(sc[i].row.of)
        free(sc[i].row.xs)
        free(sc[i].fld)
        free(sc[i].ones)
        free(sc[i].gbuf)
        free(sc[i].lgrad)
        free(sc[i].rgrad)
        free(sc[i].rmark)
        free(sc[i].touched)
        free(sc[i].pslot)
        for a in range(4):
            free(sc[i].gacc[a])
        free(sc[i].mark)
        free(sc[i].ids)
    free(sc)


cdef struct Entries:
    # The entry arrays of a batch: fields as int32 or (compact) uint8, and
    # values, or NULL when every value is 1 (a compact batch stores none).
    const int* f32
    const unsigned char* f8
    const int* feat
    const float* val


cdef Entries entries_of(object fields, const int[::1] features, const float[::1] values) except *:
    """Pointers to a batch's entry arrays; fields may be int32 or uint8 and
    values empty (all 1).  The caller keeps the arrays alive."""
    cdef Entries e
    cdef const int[::1] f32
    cdef const unsigned char[::1] f8
    cdef Py_ssize_t nnz = features.shape[0]
    e.f32 = NULL
    e.f8 = NULL
    e.feat = &features[0] if nnz else NULL
    e.val = NULL
    if fields.dtype == np.uint8:
        f8 = fields
        if f8.shape[0] != nnz:
            raise ValueError("fields and features differ in length")
        e.f8 = &f8[0] if nnz else NULL
    else:
        f32 = fields
        if f32.shape[0] != nnz:
            raise ValueError("fields and features differ in length")
        e.f32 = &f32[0] if nnz else NULL
    if values.shape[0]:
        if values.shape[0] != nnz:
            raise ValueError("values and features differ in length")
        e.val = &values[0]
    return e


cdef inline void prefetch_entries(const Entries* e, Py_ssize_t start, Py_ssize_t nnz) noexcept nogil:
    """Start loading a row's entries (see fm_prefetch_span); nothing of an empty batch."""
    if e.feat == NULL or nnz <= 0:
        return
    fm_prefetch_span(e.feat + start, nnz * 4)
    if e.f8 != NULL:
        fm_prefetch_span(e.f8 + start, nnz)
    else:
        fm_prefetch_span(e.f32 + start, nnz * 4)
    if e.val != NULL:
        fm_prefetch_span(e.val + start, nnz * 4)


cdef inline const int* row_fields(const Entries* e, Py_ssize_t start, Py_ssize_t nnz,
                                  Scratch* sc) noexcept nogil:
    cdef Py_ssize_t i
    if e.f8 == NULL:
        return e.f32 + start
    for i in range(nnz):
        sc.fld[i] = e.f8[start + i]
    return sc.fld


cdef inline const float* row_values(const Entries* e, Py_ssize_t start, Scratch* sc) noexcept nogil:
    if e.val == NULL:
        return sc.ones
    return e.val + start


cdef Py_ssize_t longest_row(const long long[::1] indptr) noexcept nogil:
    cdef Py_ssize_t r, best = 0
    for r in range(indptr.shape[0] - 1):
        if indptr[r + 1] - indptr[r] > best:
            best = indptr[r + 1] - indptr[r]
    return best


cdef inline floating* lin(const Shape* s, const floating* L, Py_ssize_t j, const Row* prep) noexcept nogil:
    """Feature j's linear weight (and state): the thread's replica of it for
    a hot feature (see fm_hot_linear), else L's."""
    if floating is float:
        if s.hot_slot != NULL:
            return fm_hot_linear(<float*>L, j, s.lstride, s.hot_slot, prep.hot)
    return <floating*>L + j * s.lstride


cdef inline double score_row(const Shape* s, const floating* B, const floating* L,
                             const floating* F, const floating* R, const int* fld, const int* feat,
                             const float* val, Py_ssize_t nnz, floating scale,
                             floating* acc, Row* prep) noexcept nogil:
    """Score one row.  For FM, acc receives sum_i V[j_i] * xt_i (kp values);
    for the float32 FFM, FwFM and FmFM paths, prep receives the compacted row
    that update_row then reuses.

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
                t += lin(s, L, j1, prep)[0] * (val[i] * scale)
    if s.kind == KIND_FFM:
        if floating is float and s.half:
            # offsets in bytes: a block is fs 4-byte words
            prep.count = fm_ffm_prepare(n, m, fs * 4, fld, feat, val, nnz, scale, prep.oj, prep.of, prep.xs)
            t += fm_ffm_pairs_f16(<const char*>F, kp, prep.oj, prep.of, prep.xs, prep.count)
        elif floating is float:
            if s.hot_slot != NULL:
                prep.count = fm_ffm_prepare_hot(n, m, fs, fld, feat, val, nnz, scale, prep.oj,
                                                prep.of, prep.xs, s.hot_slot, prep.hot)
            else:
                prep.count = fm_ffm_prepare(n, m, fs, fld, feat, val, nnz, scale, prep.oj, prep.of,
                                            prep.xs)
            t += fm_ffm_pairs_f32(F, kp, prep.oj, prep.of, prep.xs, prep.count, s.pf_state)
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
    elif s.kind == KIND_FWFM or s.kind == KIND_FMFM:
        if floating is float:
            # the compacted row (prep.of: fields) that update_row then reuses
            if s.hot_slot != NULL:
                prep.count = fm_fwfm_prepare_hot(n, m, fs, fld, feat, val, nnz, scale, prep.oj, prep.of,
                                                 prep.xs, s.hot_slot, prep.hot)
            else:
                prep.count = fm_fwfm_prepare(n, m, fs, fld, feat, val, nnz, scale, prep.oj, prep.of, prep.xs)
            if s.kind == KIND_FWFM:
                t += fm_fwfm_pairs_f32(F, kp, R, s.lstride, m, prep.oj, prep.of, prep.xs, prep.count)
            else:
                t += fm_fmfm_pairs_f32(F, kp, R, fs, m, prep.oj, prep.of, prep.xs, prep.count)
        else:
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
                    pair = pair + field_pair_term(s, R, f1, f2, w1, F + j2 * fs) * (x1 * (val[l] * scale))
            t += pair
    elif s.kind == KIND_FM:
        for d in range(kp):
            acc[d] = 0
        for i in range(nnz):
            j1 = feat[i]
            if j1 >= n:
                continue
            x1 = val[i] * scale
            if floating is float and s.hot_slot != NULL:
                w1 = fm_hot_block(F, j1, fs, s.hot_slot, prep.hot, 1)
            else:
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
    """Index of FwFM's weight (FmFM's matrix) for fields a and b (upper triangle of R)."""
    if a <= b:
        return a * m + b
    return b * m + a


cdef inline floating field_pair_term(const Shape* s, const floating* R, Py_ssize_t f1, Py_ssize_t f2,
                                     const floating* w1, const floating* w2) noexcept nogil:
    """The interaction of feature vectors w1 (field f1) and w2 (field f2) before
    their values: FwFM's r_ab <w1, w2>; FmFM's w1^T M w2 with M the pair's
    matrix as the lower field sees it (the symmetric part within one field)."""
    cdef Py_ssize_t kp = s.kp, fs = s.fstride
    cdef const floating* P
    if s.kind == KIND_FWFM:
        return R[field_pair(f1, f2, s.n_fields) * s.lstride] * dot(w1, w2, kp)
    P = R + field_pair(f1, f2, s.n_fields) * kp * fs
    if f1 < f2:
        return bilinear(P, fs, kp, w1, w2)
    if f1 > f2:
        return bilinear(P, fs, kp, w2, w1)
    return <floating>0.5 * (bilinear(P, fs, kp, w1, w2) + bilinear(P, fs, kp, w2, w1))


cdef inline floating bilinear(const floating* P, Py_ssize_t fs, Py_ssize_t kp, const floating* u,
                              const floating* v) noexcept nogil:
    """u^T P v for FmFM's matrix P (row r at P + r * fs, kp rows and columns)."""
    cdef floating t = 0
    cdef Py_ssize_t r
    for r in range(kp):
        t = t + u[r] * dot(P + r * fs, v, kp)
    return t




cdef inline void emit(const Shape* s, const Opt* o, Scratch* sc, int arr, floating eta,
                      floating* w, const floating* g, Py_ssize_t n, floating l1,
                      floating l2) noexcept nogil:
    """Hand the gradient g[0:n] of the block at w to the optimizer: step it now
    (per-row mode), or add it to the batch's sums (mini-batch mode)."""
    cdef Py_ssize_t idx, gid, d
    cdef floating* acc
    if not s.batch:
        opt_block(o, eta, w, g, n, l1, l2)
        return
    idx = (<char*>w - s.base[arr]) // (<Py_ssize_t>sizeof(floating) * s.stride[arr])
    gid = s.id0[arr] + idx
    if not sc.mark[gid]:
        sc.mark[gid] = 1
        sc.ids[sc.n_ids] = gid
        sc.n_ids += 1
    acc = <floating*>sc.gacc[arr] + idx * n
    for d in range(n):
        acc[d] = acc[d] + g[d]


cdef inline int block_of(const Shape* s, Py_ssize_t gid, Py_ssize_t* idx) noexcept nogil:
    """The array (ARR_*) of mini-batch block id gid; idx receives its block index there."""
    cdef int arr = ARR_R
    while arr > 0 and gid < s.id0[arr]:
        arr -= 1
    idx[0] = gid - s.id0[arr]
    return arr


cdef void flush(const Shape* s, const Opt* o, Scratch* sc, floating eta, double rows) noexcept nogil:
    """Step every block the batch touched once, with the mean of its gradient
    sums plus L2, then clear the sums."""
    cdef Py_ssize_t i, d, gid, idx, n
    cdef int arr
    cdef floating* w
    cdef floating* acc
    cdef floating g[MAX_KP]
    cdef floating lam, l1, l2
    cdef floating inv = <floating>(1.0 / rows)
    for i in range(sc.n_ids):
        gid = sc.ids[i]
        arr = block_of(s, gid, &idx)
        n = s.blen[arr]
        w = <floating*>(s.base[arr]) + idx * s.stride[arr]
        acc = <floating*>sc.gacc[arr] + idx * n
        if arr == ARR_B:
            l1, l2 = 0, <floating>s.l2b
        elif arr == ARR_L:
            l1, l2 = <floating>s.l1, <floating>s.l2l
        elif arr == ARR_F:
            l1, l2 = <floating>s.l1, <floating>s.l2f
        else:
            l1, l2 = 0, 0
        lam = <floating>opt_grad_l2(o.kind, l2)
        for d in range(n):
            g[d] = acc[d] * inv + lam * w[d]
            acc[d] = 0
        opt_block(o, eta, w, g, n, l1, l2)
        sc.mark[gid] = 0
    sc.n_ids = 0


cdef void fwfm_update(const Shape* s, const Opt* o, floating eta, floating* F,
                      floating* R, const int* fld, const int* feat, const float* val,
                      Py_ssize_t nnz, floating scale, floating kappa, Scratch* sc) noexcept nogil:
    """FwFM step: every gradient from the values at the start of the row, then
    the factors stepped in row order, then each touched field-pair weight
    once with its gradient summed over the row's pairs (no L2 on them)."""
    cdef Py_ssize_t n = s.n_features, m = s.n_fields, kp = s.kp, fs = s.fstride, ls = s.lstride
    cdef Py_ssize_t i, l, d, p, n_touched = 0
    cdef floating xi, xl, r
    cdef floating lam = <floating>s.lamf, l1 = <floating>s.l1, l2 = <floating>s.l2f
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
            emit(s, o, sc, ARR_F, eta, F + feat[i] * fs, gbuf + i * kp, kp, l1, l2)
    emit_field_pairs(s, o, sc, eta, R, rg, n_touched)


cdef inline void emit_field_pairs(const Shape* s, const Opt* o, Scratch* sc, floating eta, floating* R,
                                  floating* rg, Py_ssize_t n_touched) noexcept nogil:
    """Hand each field-pair weight a FwFM row touched its summed gradient
    (no L2 on them), then clear the sums and marks."""
    cdef Py_ssize_t i, p
    for i in range(n_touched):
        p = sc.touched[i]
        emit(s, o, sc, ARR_R, eta, R + p * s.lstride, &rg[p], 1, 0, 0)
        rg[p] = 0
        sc.rmark[p] = 0


cdef void fwfm_update_f32(const Shape* s, const Opt* o, float eta, float* F, float* R, float kappa,
                          const Row* prep, Scratch* sc) noexcept nogil:
    """fwfm_update on the row score_row compacted (prep), its gradients from
    the SIMD loops of fwfm_f32.h; the steps are the same."""
    cdef Py_ssize_t kp = s.kp, ls = s.lstride, i, n_touched = 0
    cdef float* gbuf = <float*>sc.gbuf
    cdef float* rg = <float*>sc.rgrad
    fm_fwfm_grads_f32(F, kp, R, ls, s.n_fields, prep.oj, prep.of, prep.xs, prep.count, kappa,
                      <float>s.lamf, gbuf, rg, sc.rmark, sc.touched, &n_touched)
    for i in range(prep.count):
        emit(s, o, sc, ARR_F, eta, F + prep.oj[i], gbuf + i * kp, kp, <float>s.l1, <float>s.l2f)
    if o.kind == OPT_ADAGRAD and o.clip == 0 and not s.batch:
        # what opt_block does to each, four weights at a time
        fm_fwfm_adagrad_r_f32(R, ls, sc.touched, n_touched, rg, sc.rmark, eta)
    else:
        emit_field_pairs(s, o, sc, eta, R, rg, n_touched)


cdef inline floating* fmfm_slot(Scratch* sc, floating* mg, Py_ssize_t p, Py_ssize_t kp,
                                Py_ssize_t* n_touched) noexcept nogil:
    """The row's gradient of FmFM's matrix p (kp rows of kp, in mg = the
    scratch's rgrad), given a zeroed slot and listed the first time the row
    touches p."""
    cdef floating* g
    cdef Py_ssize_t d
    if not sc.pslot[p]:
        sc.touched[n_touched[0]] = p
        n_touched[0] += 1
        sc.pslot[p] = n_touched[0]
        g = mg + (n_touched[0] - 1) * kp * kp
        for d in range(kp * kp):
            g[d] = 0
        return g
    return mg + (sc.pslot[p] - 1) * kp * kp


cdef inline void fmfm_pair_grads(const floating* P, Py_ssize_t fs, Py_ssize_t kp, const floating* vlo,
                                 const floating* vhi, floating sv, floating* glo, floating* ghi,
                                 floating* gP) noexcept nogil:
    """One FmFM pair of different fields (lo: the lower field), sv = kappa
    x_i x_l: glo += sv P v_hi, ghi += sv P^T v_lo, gP += sv v_lo v_hi^T."""
    cdef Py_ssize_t r, d
    cdef const floating* pr
    cdef floating a
    for r in range(kp):
        pr = P + r * fs
        a = vlo[r]
        glo[r] = glo[r] + sv * dot(pr, vhi, kp)
        for d in range(kp):
            ghi[d] = ghi[d] + sv * a * pr[d]
            gP[r * kp + d] = gP[r * kp + d] + sv * a * vhi[d]


cdef inline void fmfm_pair_grads_sym(const floating* P, Py_ssize_t fs, Py_ssize_t kp, const floating* vi,
                                     const floating* vl, floating h, floating* gi, floating* gl,
                                     floating* gP) noexcept nogil:
    """One FmFM pair of the same field, h = kappa x_i x_l / 2 (S = (P + P^T) / 2):
    gi += h (P + P^T) v_l, gl += h (P + P^T) v_i, gP += h (v_i v_l^T + v_l v_i^T)."""
    cdef Py_ssize_t r, d
    cdef const floating* pr
    cdef floating ai, al
    for r in range(kp):
        pr = P + r * fs
        ai = vi[r]
        al = vl[r]
        gi[r] = gi[r] + h * dot(pr, vl, kp)
        gl[r] = gl[r] + h * dot(pr, vi, kp)
        for d in range(kp):
            gi[d] = gi[d] + h * al * pr[d]
            gl[d] = gl[d] + h * ai * pr[d]
            gP[r * kp + d] = gP[r * kp + d] + h * (ai * vl[d] + al * vi[d])


cdef void fmfm_update(const Shape* s, const Opt* o, floating eta, floating* F,
                      floating* R, const int* fld, const int* feat, const float* val,
                      Py_ssize_t nnz, floating scale, floating kappa, Scratch* sc) noexcept nogil:
    """FmFM step, as FwFM's: every gradient from the values at the start of
    the row, then the factors stepped in row order, then each touched
    field-pair matrix once (emit_field_matrices)."""
    cdef Py_ssize_t n = s.n_features, m = s.n_fields, kp = s.kp, fs = s.fstride
    cdef Py_ssize_t i, l, d, f1, f2, n_touched = 0
    cdef floating xi, sv
    cdef floating lam = <floating>s.lamf, l1 = <floating>s.l1, l2 = <floating>s.l2f
    cdef floating* gbuf = <floating*>sc.gbuf
    cdef floating* gi
    cdef floating* gl
    cdef floating* gP
    cdef const floating* P
    cdef const floating* wi
    cdef const floating* wl
    for i in range(nnz * kp):
        gbuf[i] = 0
    for i in range(nnz):
        f1 = fld[i]
        if feat[i] >= n or f1 >= m:
            continue
        xi = val[i] * scale
        wi = F + feat[i] * fs
        gi = gbuf + i * kp
        for l in range(i + 1, nnz):
            f2 = fld[l]
            if feat[l] >= n or f2 >= m:
                continue
            wl = F + feat[l] * fs
            gl = gbuf + l * kp
            P = R + field_pair(f1, f2, m) * kp * fs
            gP = fmfm_slot(sc, <floating*>sc.rgrad, field_pair(f1, f2, m), kp, &n_touched)
            sv = kappa * xi * (val[l] * scale)
            if f1 < f2:
                fmfm_pair_grads(P, fs, kp, wi, wl, sv, gi, gl, gP)
            elif f1 > f2:
                fmfm_pair_grads(P, fs, kp, wl, wi, sv, gl, gi, gP)
            else:
                fmfm_pair_grads_sym(P, fs, kp, wi, wl, <floating>0.5 * sv, gi, gl, gP)
    # L2 from the start-of-row values too (a feature may occur twice in a row)
    for i in range(nnz):
        if feat[i] < n and fld[i] < m:
            wi = F + feat[i] * fs
            gi = gbuf + i * kp
            for d in range(kp):
                gi[d] = gi[d] + lam * wi[d]
    for i in range(nnz):
        if feat[i] < n and fld[i] < m:
            emit(s, o, sc, ARR_F, eta, F + feat[i] * fs, gbuf + i * kp, kp, l1, l2)
    emit_field_matrices(s, o, sc, eta, R, n_touched)


cdef inline void emit_field_matrices(const Shape* s, const Opt* o, Scratch* sc, floating eta, floating* R,
                                     Py_ssize_t n_touched) noexcept nogil:
    """Hand each field-pair matrix an FmFM row touched its summed gradient,
    matrix row by matrix row (a row is one block; no L1 or L2 on them), then
    clear the slot map.  Only the k real rows are handed over (o.row_k: k
    when the trainer was given it, else kp): the padding rows' gradients are
    0 and they are never stepped, per row and in mini-batches alike."""
    cdef Py_ssize_t t, p, r, kp = s.kp, fs = s.fstride
    cdef Py_ssize_t kr = <Py_ssize_t>o.row_k
    cdef floating* g
    if kr > kp or kr < 1:
        kr = kp
    for t in range(n_touched):
        p = sc.touched[t]
        g = <floating*>sc.rgrad + t * kp * kp
        for r in range(kr):
            emit(s, o, sc, ARR_R, eta, R + (p * kp + r) * fs, g + r * kp, kp, 0, 0)
        sc.pslot[p] = 0


cdef void fmfm_update_f32(const Shape* s, const Opt* o, float eta, float* F, float* R, float kappa,
                          const Row* prep, Scratch* sc) noexcept nogil:
    """fmfm_update on the row score_row compacted (prep), its gradients from
    the loops of fmfm_f32.h; the steps are the same."""
    cdef Py_ssize_t kp = s.kp, i, n_touched = 0
    cdef float* gbuf = <float*>sc.gbuf
    fm_fmfm_grads_f32(F, kp, R, s.fstride, s.n_fields, prep.oj, prep.of, prep.xs, prep.count, kappa,
                      <float>s.lamf, gbuf, <float*>sc.rgrad, sc.pslot, sc.touched, &n_touched)
    for i in range(prep.count):
        emit(s, o, sc, ARR_F, eta, F + prep.oj[i], gbuf + i * kp, kp, <float>s.l1, <float>s.l2f)
    emit_field_matrices(s, o, sc, eta, R, n_touched)


cdef inline void update_row(const Shape* s, const Opt* o, floating eta,
                            floating* B, floating* L, floating* F, floating* R,
                            const int* fld, const int* feat, const float* val,
                            Py_ssize_t nnz, floating scale, floating kappa,
                            const floating* acc, const Row* prep, Scratch* sc) noexcept nogil:
    """Gradients of every parameter the row touches, handed to emit().

    kappa is dloss/dscore at the parameters as they were when the row was
    scored.  In per-row mode FFM blocks are stepped pair by pair in place, as
    libffm does."""
    cdef Py_ssize_t i, l, d, j1, j2, f1, f2
    cdef Py_ssize_t n = s.n_features, m = s.n_fields, kp = s.kp, fs = s.fstride, ls = s.lstride
    cdef floating x1, kv, a, b, g
    cdef floating lam = <floating>s.lamf, l1 = <floating>s.l1, l2 = <floating>s.l2f
    cdef floating* w1
    cdef floating* w2
    cdef floating* row1
    cdef floating* gl
    cdef floating* gf
    cdef floating g1[MAX_KP]
    cdef floating g2[MAX_KP]
    cdef fm_step_params sp
    # a local copy: stores through the weight pointers cannot alias it
    cdef Opt oc = o[0]
    o = &oc
    if s.use_bias:
        g = kappa + <floating>s.lamb * B[0]
        emit(s, o, sc, ARR_B, eta, B, &g, 1, 0, <floating>s.l2b)
    # Ids outside the model are skipped exactly as score_row skips them.
    # Every gradient is taken at the start-of-row weights, then the steps
    # follow in row order: a feature that occurs twice in a row is stepped
    # twice, both times with its start-of-row gradient.
    if s.use_linear:
        gl = <floating*>sc.lgrad
        for i in range(nnz):
            if feat[i] >= n or (s.fielded and fld[i] >= m):
                continue
            gl[i] = kappa * (val[i] * scale) + <floating>s.laml * lin(s, L, feat[i], prep)[0]
        for i in range(nnz):
            if feat[i] >= n or (s.fielded and fld[i] >= m):
                continue
            emit(s, o, sc, ARR_L, eta, lin(s, L, feat[i], prep), &gl[i], 1, l1, <floating>s.l2l)
    if s.kind == KIND_FFM:
        if floating is float and s.half:
            # train_epoch checked: AdaGrad, per row, no clipping
            fm_ffm_adagrad_f16(o.exact, <char*>F, kp, prep.oj, prep.of, prep.xs, prep.count,
                               kappa, lam, eta, sc.seed)
            return
        if floating is float:
            if o.clip == 0 and not s.batch:
                sp.eta, sp.b1, sp.b2, sp.eps = eta, <float>o.b1, <float>o.b2, <float>o.eps
                sp.beta, sp.l1, sp.l2 = <float>o.ftrl_beta, l1, l2
                sp.inv_k = <float>(1.0 / o.row_k)
                fm_ffm_update_f32(o.kind, o.exact, F, kp, prep.oj, prep.of, prep.xs, prep.count,
                                  kappa, lam, &sp)
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
                if s.batch:
                    for d in range(kp):
                        g1[d] = kv * w2[d]
                        g2[d] = kv * w1[d]
                    emit(s, o, sc, ARR_F, eta, w1, g1, kp, l1, l2)
                    emit(s, o, sc, ARR_F, eta, w2, g2, kp, l1, l2)
                else:
                    opt_pair(o, eta, lam, kv, w1, w2, kp, g1, g2, l1, l2)
    elif s.kind == KIND_FWFM:
        if floating is float:
            fwfm_update_f32(s, o, eta, F, R, kappa, prep, sc)
        else:
            fwfm_update(s, o, eta, F, R, fld, feat, val, nnz, scale, kappa, sc)
    elif s.kind == KIND_FMFM:
        if floating is float:
            fmfm_update_f32(s, o, eta, F, R, kappa, prep, sc)
        else:
            fmfm_update(s, o, eta, F, R, fld, feat, val, nnz, scale, kappa, sc)
    elif s.kind == KIND_FM:
        gf = <floating*>sc.gbuf
        for i in range(nnz):
            if feat[i] >= n:
                continue
            x1 = val[i] * scale
            w1 = fm_block(s, F, feat[i], prep)
            kv = kappa * x1
            for d in range(kp):
                a = w1[d]
                gf[i * kp + d] = kv * (acc[d] - a * x1) + lam * a
        for i in range(nnz):
            if feat[i] < n:
                emit(s, o, sc, ARR_F, eta, fm_block(s, F, feat[i], prep), gf + i * kp, kp, l1, l2)


cdef inline floating* fm_block(const Shape* s, floating* F, Py_ssize_t j, const Row* prep) noexcept nogil:
    """FM's block of feature j: the thread's replica of it for a hot feature
    (score_row noted it as touched), else F's."""
    if floating is float:
        if s.hot_slot != NULL:
            return fm_hot_block(F, j, s.fstride, s.hot_slot, prep.hot, 0)
    return F + j * s.fstride


cdef inline double row_loss(const Shape* s, double* t, double y, double eps, double* kappa) noexcept nogil:
    """The row's loss; kappa[c] receives dloss/dt_c (t: the C class scores).
    A non-finite score gives a non-finite loss."""
    cdef Py_ssize_t c, C = s.n_classes, yc
    cdef double q, e1, e2, mx, z, lse
    if s.task == TASK_REGRESSION:
        kappa[0] = t[0] - y
        return 0.5 * (t[0] - y) * (t[0] - y)
    if s.task == TASK_BINARY:
        q = y * (1 - eps) + 0.5 * eps
        if q == 1:
            kappa[0] = -1 / (1 + exp(t[0]))
            return log1pexp(-t[0])
        if q == 0:
            kappa[0] = 1 / (1 + exp(-t[0]))
            return log1pexp(t[0])
        e1 = 1 / (1 + exp(-t[0]))
        e2 = 1 / (1 + exp(t[0]))
        kappa[0] = (1 - q) * e1 - q * e2
        return q * log1pexp(-t[0]) + (1 - q) * log1pexp(t[0])
    # multiclass: softmax cross-entropy
    mx = t[0]
    for c in range(1, C):
        if t[c] > mx:
            mx = t[c]
    z = 0
    for c in range(C):
        z = z + exp(t[c] - mx)
    lse = mx + log(z)
    yc = <Py_ssize_t>y
    q = 0
    for c in range(C):
        e1 = exp(t[c] - lse)
        e2 = eps / C + ((1 - eps) if c == yc else 0)
        kappa[c] = e1 - e2
        q = q + e2 * (lse - t[c])
    return q


cdef inline floating* ptr(floating[::1] a) noexcept:
    if a.shape[0] == 0:
        return NULL
    return &a[0]


cdef inline const floating* cptr(const floating[::1] a) noexcept:
    if a.shape[0] == 0:
        return NULL
    return &a[0]


cdef Shape make_shape(str kind, str task, Py_ssize_t n_classes, Py_ssize_t n_features,
                      Py_ssize_t n_fields, Py_ssize_t kp, Py_ssize_t n_state_, bint use_bias,
                      bint use_linear, bint normalize, bint half=False, bint row_state=False) except *:
    cdef Shape s
    if kp % 4 != 0 or not 0 < kp <= MAX_KP:
        raise ValueError(f"kp must be a multiple of 4 in 4..{MAX_KP}")
    if n_classes < 1 or (task != "multiclass" and n_classes != 1):
        raise ValueError("n_classes must be 1, or at least 1 for multiclass")
    s.kind = KIND_CODES[kind]
    s.task = TASK_CODES[task]
    s.n_classes = n_classes
    s.n_features = n_features
    s.n_fields = n_fields
    s.n_blocks = {KIND_LR: 0, KIND_FM: n_features, KIND_FWFM: n_features, KIND_FMFM: n_features,
                  KIND_FFM: n_features * n_fields}[s.kind]
    s.kp = kp
    s.half = half
    s.hot_slot = NULL
    s.pf_state = 0
    if half:
        if kind != "ffm" or n_state_ > 1:
            raise ValueError("float16 factor storage is for FFM with AdaGrad (or no state)")
        s.fstride = kp // 2 + kp * n_state_
    elif row_state:
        if n_state_ != 1:
            raise ValueError("row-wise optimizer state is one value per block")
        s.fstride = kp + 1
    else:
        s.fstride = kp * (1 + n_state_)
    s.lstride = 1 + n_state_
    s.cB = s.lstride
    s.cL = n_features * s.lstride
    s.cF = s.n_blocks * s.fstride
    s.cR = 0
    if s.kind == KIND_FWFM:
        s.cR = n_fields * n_fields * s.lstride
    elif s.kind == KIND_FMFM:
        # a kp x kp matrix per field pair, one factor-format block per matrix row
        s.cR = n_fields * n_fields * kp * s.fstride
    s.fielded = s.kind == KIND_FFM or s.kind == KIND_FWFM or s.kind == KIND_FMFM
    s.use_bias = use_bias
    s.use_linear = use_linear
    s.normalize = normalize
    s.batch = False
    s.itemsize = 4
    s.l2b = s.l2l = s.l2f = s.lamb = s.laml = s.lamf = s.l1 = 0
    s.id0[0] = 0
    s.id0[1] = n_classes
    s.id0[2] = n_classes + n_classes * n_features
    s.id0[3] = s.id0[2] + n_classes * s.n_blocks
    s.stride[ARR_B] = s.lstride
    s.stride[ARR_L] = s.lstride
    s.stride[ARR_F] = s.fstride
    s.stride[ARR_R] = s.lstride
    s.blen[ARR_B] = 1
    s.blen[ARR_L] = 1
    s.blen[ARR_F] = kp
    s.blen[ARR_R] = 1
    if s.kind == KIND_FMFM:
        s.stride[ARR_R] = s.fstride
        s.blen[ARR_R] = kp
    return s


cdef void check_sizes(const Shape* s, Py_ssize_t nB, Py_ssize_t nL, Py_ssize_t nF,
                      Py_ssize_t nR) except *:
    cdef Py_ssize_t C = s.n_classes
    if nB < C * s.cB or nL < C * s.cL:
        raise ValueError("bias or linear array too small")
    if nF < C * s.cF:
        raise ValueError("factor array too small")
    if nR < C * s.cR:
        raise ValueError("field-pair weight array too small")


cdef class Layout:
    """Where a model's parameters and optimizer state live in B, L, F and R
    (see the top of this file): built once per model and handed to Trainer
    and score_rows.

    Layout(kind, task, n_classes, n_features, n_fields, kp, n_state=0, *,
    use_bias=True, use_linear=True, normalize=True, half=False,
    row_state=False).  kind: lr, fm, ffm, fwfm or fmfm; task: binary, regression or
    multiclass (n_classes > 1 only for multiclass); kp: the padded factor
    width (a multiple of 4); n_state: optimizer-state values per weight (0
    for a saved model); half: FFM blocks of float16 weights and float32
    AdaGrad accumulators; row_state: factor blocks of kp weights and one
    state value (row-wise AdaGrad)."""
    cdef Shape s
    cdef readonly str kind
    cdef readonly str task
    cdef readonly Py_ssize_t n_state
    cdef readonly bint row_state

    def __init__(self, str kind, str task, Py_ssize_t n_classes, Py_ssize_t n_features,
                 Py_ssize_t n_fields, Py_ssize_t kp, Py_ssize_t n_state=0, *, bint use_bias=True,
                 bint use_linear=True, bint normalize=True, bint half=False, bint row_state=False):
        if kind not in KIND_CODES:
            raise ValueError(f"unknown model kind {kind!r}")
        if task not in TASK_CODES:
            raise ValueError(f"unknown task {task!r}")
        if n_features < 0 or n_fields < 0 or n_state < 0:
            raise ValueError("n_features, n_fields and n_state cannot be negative")
        self.s = make_shape(kind, task, n_classes, n_features, n_fields, kp, n_state, use_bias,
                            use_linear, normalize, half, row_state)
        self.kind = kind
        self.task = task
        self.n_state = n_state
        self.row_state = row_state

    @property
    def n_classes(self):
        return self.s.n_classes

    @property
    def n_features(self):
        return self.s.n_features

    @property
    def n_fields(self):
        return self.s.n_fields

    @property
    def kp(self):
        return self.s.kp

    @property
    def use_bias(self):
        return bool(self.s.use_bias)

    @property
    def use_linear(self):
        return bool(self.s.use_linear)

    @property
    def normalize(self):
        return bool(self.s.normalize)

    @property
    def half(self):
        return bool(self.s.half)

    @property
    def n_blocks(self):
        """Factor blocks per class."""
        return self.s.n_blocks

    @property
    def fstride(self):
        """Values (4-byte words with half) from one factor block to the next."""
        return self.s.fstride

    @property
    def lstride(self):
        """Values from one linear weight (or FwFM field-pair weight) to the next
        (FmFM's matrix rows are blocks fstride apart)."""
        return self.s.lstride

    @property
    def class_sizes(self):
        """Values per class in B, L, F and R."""
        return self.s.cB, self.s.cL, self.s.cF, self.s.cR

    @property
    def sizes(self):
        """Values of B, L, F and R for all classes (the least each array may hold)."""
        C = self.s.n_classes
        return C * self.s.cB, C * self.s.cL, C * self.s.cF, C * self.s.cR

    def __repr__(self):
        return (f"Layout({self.kind!r}, {self.task!r}, {self.n_classes}, {self.n_features}, "
                f"{self.n_fields}, {self.kp}, {self.n_state}, use_bias={self.use_bias}, "
                f"use_linear={self.use_linear}, normalize={self.normalize}, half={self.half}, "
                f"row_state={bool(self.row_state)})")


# Trainer's hyperparameters and their defaults; "optimizer" and "eta" have none.
HYPER_DEFAULTS = {
    "k": 0, "l2_bias": 0.0, "l2_linear": 0.0, "l2_factors": 0.0, "l1": 0.0, "beta1": 0.9,
    "beta2": 0.999, "adam_eps": 1e-8, "ftrl_beta": 1.0, "label_smoothing": 0.0, "clip_norm": 0.0,
    "schedule": "constant", "warmup": 0.0, "total_steps": 1.0, "batch_size": 1,
    "exact_rsqrt": False, "skip_nonfinite": False,
}
HYPER_REQUIRED = ("optimizer", "eta")


cdef object model_dtype(tuple arrays):
    """The one dtype (float32 or float64) of the four parameter arrays."""
    dt = arrays[2].dtype
    if dt != np.float32 and dt != np.float64:
        raise ValueError("parameter arrays must be float32 or float64")
    for a in arrays:
        if a.dtype != dt:
            raise ValueError("B, L, F and R must share one dtype")
    return dt


cdef char* data_of(object a, bint f64, Py_ssize_t* n) except *:
    """The address of a writable contiguous 1-d float array (NULL when empty);
    n receives its length.  The caller keeps the array alive."""
    cdef float[::1] f
    cdef double[::1] d
    if f64:
        d = a
        n[0] = d.shape[0]
        return <char*>&d[0] if d.shape[0] else NULL
    f = a
    n[0] = f.shape[0]
    return <char*>&f[0] if f.shape[0] else NULL


cdef const char* cdata_of(object a, bint f64, Py_ssize_t* n) except *:
    """data_of for an array that is only read (it may be read-only)."""
    cdef const float[::1] f
    cdef const double[::1] d
    if f64:
        d = a
        n[0] = d.shape[0]
        return <const char*>&d[0] if d.shape[0] else NULL
    f = a
    n[0] = f.shape[0]
    return <const char*>&f[0] if f.shape[0] else NULL


cdef inline Py_ssize_t hot_len(const Shape* s) noexcept nogil:
    """The floats of a feature's blocks in F (what a replica holds of it): FFM's
    one per field, one for FM, FwFM and FmFM."""
    return s.n_fields * s.fstride if s.kind == KIND_FFM else s.fstride


cdef class Trainer:
    """Trains one model's parameters in place, one pass over a slice of rows
    at a time.  Built once per run: the arrays, their layout, the optimizer,
    the schedule and the hot-feature replicas are checked and set up here,
    so that each train() call only runs the loop.

    Trainer(layout, B, L, F, R, hyper, threads=1, hot_features=None,
    hot_sync=256, balance=True).

    B, L, F, R: writable contiguous 1-d arrays, all float32 or all float64,
    laid out as `layout` says (its n_state and row_state those of the
    optimizer); the trainer keeps references to them.
    hyper: a dict of hyperparameters: optimizer and eta (the base step size,
    FTRL's alpha) and any of HYPER_DEFAULTS -- k (the unpadded factor width,
    which "rowwise-adagrad" needs), l2_bias, l2_linear, l2_factors, l1,
    beta1, beta2, adam_eps, ftrl_beta, label_smoothing, clip_norm, schedule,
    warmup, total_steps (the run's length in steps: the schedule's), batch_size,
    exact_rsqrt (float32 AdaGrad refines the CPU's 1/sqrt estimate to float32
    precision) and skip_nonfinite (a row whose score or loss is not finite is
    skipped and counted, else it stops the pass).
    half layouts train float32 FFM with AdaGrad, one row at a time, without
    clipping.
    balance: threads take BALANCE_CHUNK rows (batches) at a time, so none
    waits for a slower one at the end; else each takes one contiguous share of
    `order` (the first thread the first share).
    hot_features: with several threads, float32 FM, FFM, FwFM or FmFM, one
    class, one row at a time, no clipping and an additive optimizer (not
    Adam), each thread
    trains these features (at most 65535 distinct ids) on a replica that it
    exchanges with the shared model every hot_sync of its rows and, with
    settle_passes (the default), at the end of each pass; with settle_passes
    False what is not exchanged stays with the replicas across passes
    (unsettled) until settle() (see hot.h).  Elsewhere they are ignored.  hot_sync: one
    interval for all, or one per feature (an int array beside hot_features,
    at most FM_HOT_TIERS distinct values: the features of one interval are
    exchanged together).

    One train() at a time: the replicas belong to the trainer."""
    cdef readonly Layout layout
    cdef readonly int threads
    cdef readonly object dtype
    cdef tuple arrays           # B, L, F, R: kept alive while the trainer uses them
    cdef Shape s                # the layout's Shape, completed for training
    cdef Opt o
    cdef double eta
    cdef double label_smoothing
    cdef bint skip_nonfinite
    cdef bint balance
    cdef Py_ssize_t batch_size
    # hot features: their ids, a slot per model feature (hot.h), one replica per thread
    cdef Py_ssize_t H
    cdef object hot_sync
    cdef int* hot
    cdef unsigned short* slot
    cdef fm_replica* reps
    # settle_passes: each train() ends with the replicas' changes all in the
    # shared model; else they may stay with the replicas (unsettled) until settle()
    cdef public bint settle_passes
    cdef readonly bint unsettled
    # each thread's copies of the bias and of the field-pair weights (hot.h), or NULL
    cdef fm_copy* copies
    # the arrays train() copies shuffled rows into (see gathered), kept between calls
    cdef dict gather_bufs

    def __cinit__(self):
        self.hot = NULL
        self.slot = NULL
        self.reps = NULL
        self.copies = NULL
        self.H = 0
        self.settle_passes = True
        self.unsettled = False

    def __init__(self, Layout layout not None, B, L, F, R, dict hyper not None, int threads=1,
                 hot_features=None, hot_sync=256, bint balance=True, bint copies=True):
        if self.layout is not None:
            raise TypeError("a Trainer is built once")
        unknown = sorted(set(hyper) - set(HYPER_DEFAULTS) - set(HYPER_REQUIRED))
        if unknown:
            raise ValueError(f"unknown hyperparameters: {', '.join(map(str, unknown))}")
        missing = [name for name in HYPER_REQUIRED if name not in hyper]
        if missing:
            raise ValueError(f"hyperparameters missing: {', '.join(missing)}")
        h = dict(HYPER_DEFAULTS)
        h.update(hyper)
        if h["optimizer"] not in OPT_CODES:
            raise ValueError(f"unknown optimizer {h['optimizer']!r}")
        if h["schedule"] not in SCHEDULE_CODES:
            raise ValueError(f"unknown schedule {h['schedule']!r}")
        cdef Opt o
        o.kind = OPT_CODES[h["optimizer"]]
        o.b1 = h["beta1"]
        o.b2 = h["beta2"]
        o.eps = h["adam_eps"]
        o.ftrl_beta = h["ftrl_beta"]
        o.clip = h["clip_norm"]
        o.exact = h["exact_rsqrt"]
        cdef Py_ssize_t k = h["k"], kp = layout.s.kp
        if o.kind == OPT_ROWADA and not 0 < k <= kp:
            raise ValueError("row-wise AdaGrad needs the unpadded k (1..kp)")
        o.row_k = k if k > 0 else kp
        o.schedule = SCHEDULE_CODES[h["schedule"]]
        o.warmup = h["warmup"]
        o.total = h["total_steps"]
        if layout.n_state != opt_n_state(o.kind) or bool(layout.row_state) != (o.kind == OPT_ROWADA):
            raise ValueError(f"the layout's optimizer state does not fit {h['optimizer']}")
        self.batch_size = h["batch_size"]
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.arrays = (B, L, F, R)
        self.dtype = model_dtype(self.arrays)
        cdef bint f64 = self.dtype == np.float64
        cdef Shape s = layout.s
        if s.half and (f64 or o.kind != OPT_ADAGRAD or self.batch_size != 1 or o.clip != 0):
            raise ValueError("float16 factor storage trains float32 FFM with AdaGrad, one row at a "
                             "time, without clipping")
        cdef Py_ssize_t n[4]
        cdef int a
        for a in range(4):
            s.base[a] = data_of(self.arrays[a], f64, &n[a])
        check_sizes(&s, n[ARR_B], n[ARR_L], n[ARR_F], n[ARR_R])
        s.batch = self.batch_size > 1
        s.itemsize = 8 if f64 else 4
        s.l2b, s.l2l, s.l2f, s.l1 = h["l2_bias"], h["l2_linear"], h["l2_factors"], h["l1"]
        if not s.batch:
            s.lamb = opt_grad_l2(o.kind, s.l2b)
            s.laml = opt_grad_l2(o.kind, s.l2l)
            s.lamf = opt_grad_l2(o.kind, s.l2f)
        self.layout = layout
        self.o = o
        self.eta = h["eta"]
        self.label_smoothing = h["label_smoothing"]
        self.skip_nonfinite = h["skip_nonfinite"]
        self.threads = max(1, threads)
        self.balance = balance
        self.hot_sync = hot_sync
        cdef bint replicable = (self.threads > 1 and not f64 and not s.half and not s.batch
                                and o.clip == 0 and s.n_classes == 1 and o.kind != OPT_ADAM)
        if replicable and hot_features is not None and len(hot_features) and s.kind != KIND_LR:
            self.set_hot(hot_features, &s)
        if replicable and copies and (s.use_bias or s.cR > 0):
            self.set_copies(&s)
        if (s.kind == KIND_FFM and not f64 and not s.half and not s.batch and s.fstride > s.kp
                and s.fstride * 4 > 64):
            s.pf_state = s.fstride
        self.s = s

    cdef set_hot(self, hot_features, Shape* s):
        """The hot features' slots, in tiers of one exchange interval each
        (the shortest first), and one replica per thread (each feature taken
        from the shared model at its first touch after an exchange)."""
        ids_in = np.ascontiguousarray(hot_features, dtype=np.int32)
        cdef Py_ssize_t H = ids_in.shape[0], i, t, hlen = hot_len(s)
        cdef int c
        every_in = np.asarray(self.hot_sync, dtype=np.int64)
        if every_in.ndim == 0:
            every_in = np.full(H, int(every_in), np.int64)
        if every_in.shape != (H,):
            raise ValueError("hot_sync: one interval, or one per hot feature")
        if H > 65535 or (H and every_in.min() < 1):
            raise ValueError("at most 65535 hot features, exchanged every 1 or more rows")
        tiers = np.unique(every_in)
        if len(tiers) > FM_HOT_TIERS:
            raise ValueError(f"hot_sync: at most {FM_HOT_TIERS} distinct intervals")
        # slots in tier order (the features of a tier in the order given)
        by_tier = np.argsort(np.searchsorted(tiers, every_in), kind="stable")
        cdef const int[::1] ids = ids_in[by_tier]
        cdef Py_ssize_t split[FM_HOT_TIERS + 1]
        cdef Py_ssize_t every[FM_HOT_TIERS]
        counts = np.bincount(np.searchsorted(tiers, every_in), minlength=FM_HOT_TIERS)
        split[0] = 0
        for t in range(FM_HOT_TIERS):
            split[t + 1] = split[t] + counts[t]
            every[t] = tiers[t] if t < len(tiers) else 0
        self.slot = <unsigned short*>calloc(s.n_features + 1, sizeof(unsigned short))
        self.hot = <int*>malloc(sizeof(int) * H)
        self.reps = <fm_replica*>calloc(self.threads, sizeof(fm_replica))
        if self.slot == NULL or self.hot == NULL or self.reps == NULL:
            raise MemoryError("no memory for the training work space")
        for i in range(H):
            if not 0 <= ids[i] < s.n_features or self.slot[ids[i]]:
                raise ValueError("hot features must be distinct ids of the model")
            self.slot[ids[i]] = <unsigned short>(i + 1)
            self.hot[i] = ids[i]
        # a replica: the features' blocks, then their linear weights (and state)
        cdef Py_ssize_t llen = s.lstride if s.use_linear else 0
        for c in range(self.threads):
            self.reps[c].hlen = hlen
            self.reps[c].llen = llen
            self.reps[c].lbase = H * hlen
            # each thread's own lines (see line_alloc)
            self.reps[c].local = <float*>line_alloc(sizeof(float) * H * (hlen + llen))
            self.reps[c].snap = <float*>line_alloc(sizeof(float) * H * (hlen + llen))
            self.reps[c].mark = <unsigned char*>line_calloc(H, 1)
            self.reps[c].touched = <unsigned short*>line_alloc(sizeof(unsigned short) * H)
            if (self.reps[c].local == NULL or self.reps[c].snap == NULL or self.reps[c].mark == NULL
                    or self.reps[c].touched == NULL):
                raise MemoryError("no memory for the training work space")
            for t in range(FM_HOT_TIERS + 1):
                self.reps[c].split[t] = split[t]
            for t in range(FM_HOT_TIERS):
                self.reps[c].every[t] = every[t]
        self.H = H
        s.hot_slot = self.slot

    cdef set_copies(self, Shape* s):
        """Each thread's copies of the bias and of the field-pair weights
        (loaded at each train()), exchanged FM_COPY_DIVISOR times as often
        as hot_sync rows (the shortest interval where there is one per
        feature): every 4 rows by default."""
        every = np.asarray(self.hot_sync, dtype=np.int64)
        cdef Py_ssize_t interval = int(every.min()) if every.size else 256
        cdef Py_ssize_t c, a
        cdef Py_ssize_t lens[2]
        if interval < 1:
            raise ValueError("hot_sync: copies are exchanged every 1 or more rows")
        lens[0] = s.cB if s.use_bias else 0
        lens[1] = s.cR
        self.copies = <fm_copy*>calloc(2 * self.threads, sizeof(fm_copy))
        if self.copies == NULL:
            raise MemoryError("no memory for the training work space")
        for c in range(self.threads):
            for a in range(2):
                self.copies[2 * c + a].len = lens[a]
                self.copies[2 * c + a].every = max(1, interval // FM_COPY_DIVISOR)
                if lens[a]:
                    self.copies[2 * c + a].local = <float*>line_alloc(sizeof(float) * lens[a])
                    self.copies[2 * c + a].snap = <float*>line_alloc(sizeof(float) * lens[a])
                    if self.copies[2 * c + a].local == NULL or self.copies[2 * c + a].snap == NULL:
                        raise MemoryError("no memory for the training work space")

    @property
    def copied(self):
        """Which small arrays each thread trains on a copy of: a subset of ("B", "R")."""
        if self.copies == NULL:
            return ()
        return tuple(name for a, name in enumerate(("B", "R")) if self.copies[a].len)

    def __dealloc__(self):
        cdef int c
        if self.copies != NULL:
            for c in range(2 * self.threads):
                free(self.copies[c].local)
                free(self.copies[c].snap)
        free(self.copies)
        if self.reps != NULL:
            for c in range(self.threads):
                free(self.reps[c].local)
                free(self.reps[c].snap)
                free(self.reps[c].mark)
                free(self.reps[c].touched)
        free(self.reps)
        free(self.hot)
        free(self.slot)

    @property
    def total_steps(self):
        """The run's length in steps (the schedule's); a resumed run may change it."""
        return self.o.total

    @total_steps.setter
    def total_steps(self, double value):
        self.o.total = value

    def settle(self):
        """Fold what the replicas have not exchanged yet into the shared
        model (after passes made with settle_passes False): afterwards the
        arrays hold every change of every thread.  Cheap when there is none."""
        cdef int c, lock = 0
        if not self.unsettled:
            return
        with nogil:
            for c in range(self.threads):
                fm_hot_exchange_all(&self.reps[c], &lock)   # (the arrays the last pass set)
        self.unsettled = False

    @property
    def hot_features(self):
        """How many features train on per-thread replicas (0: none)."""
        return self.H

    @property
    def row_prefetch(self):
        """Bytes of each feature's factor blocks (an FFM feature's n_fields
        blocks, one block otherwise) prefetched for the next row while a row
        trains; 0 for LR, which has none."""
        return 0 if self.s.kind == KIND_LR else factor_row_bytes(&self.s, self.s.itemsize)

    @property
    def state_prefetch(self):
        """Floats per factor block when scoring a row prefetches the blocks'
        optimizer state for the row's update (FM_PF_STATE), else 0."""
        return self.s.pf_state

    def train(self, const long long[::1] indptr, fields, const int[::1] features,
              const float[::1] values, const float[::1] labels, const float[::1] weights,
              const long long[::1] order, double step0):
        """One pass of training over the rows in `order`.

        fields: int32, or uint8 (a compact batch); values: one per entry, or
        empty when every value is 1.  labels: 0/1 (binary), targets
        (regression) or class indices (multiclass); weights: one per row, or
        empty for all ones.  step0: the run's step count before this pass
        (for the schedule and Adam's bias correction).  Ids outside the model
        are skipped.  Returns (sum of weighted row losses, sum of their
        weights, rows skipped, position in `order` of the row that stopped
        the pass or -1)."""
        if labels.shape[0] < indptr.shape[0] - 1 or (weights.shape[0] and weights.shape[0] < labels.shape[0]):
            raise ValueError("labels or weights shorter than the rows")
        if order.shape[0] >= GATHER_MIN_ROWS and not consecutive(order):
            return self.gathered(indptr, fields, features, values, labels, weights, order, step0)
        return self.train_rows(indptr, fields, features, values, labels, weights, order, step0)

    def gathered(self, const long long[::1] indptr, fields, const int[::1] features,
                 const float[::1] values, const float[::1] labels, const float[::1] weights,
                 const long long[::1] order, double step0):
        """train() of a shuffled order: its rows copied, in that order and
        a piece of at most GATHER_ROWS rows and GATHER_ENTRIES entries at a
        time (whole batches), into arrays of the trainer, and trained from
        there in sequence (the same rows in the same order: the same results)."""
        cdef Py_ssize_t n = order.shape[0], bs = self.batch_size, pos = 0, m, nnz
        cdef double loss = 0, wsum = 0
        cdef long long nbad = 0
        fields = np.asarray(fields)
        values_a, weights_a = np.asarray(values), np.asarray(weights)
        rows_cap = max(bs, GATHER_ROWS // bs * bs)
        g = self.buffers(min(n, rows_cap), 0, fields.dtype, values_a.shape[0] > 0, weights_a.shape[0] > 0)
        while pos < n:
            m = min(n - pos, rows_cap)
            part = order[pos : pos + m]
            nnz = gather_offsets(indptr, part, g["indptr"], g["src"])
            if nnz > GATHER_ENTRIES and m > bs:
                # fewer rows: whole batches up to the entries' cap (at least one batch)
                fit = int(np.searchsorted(g["indptr"][: m + 1], GATHER_ENTRIES, side="right")) - 1
                m = max(bs, fit // bs * bs)
                nnz = int(g["indptr"][m])
                part = order[pos : pos + m]
            g = self.buffers(m, nnz, fields.dtype, values_a.shape[0] > 0, weights_a.shape[0] > 0)
            gather_entries(part, g["src"], g["indptr"], fields, features, values, labels, weights,
                           g["fields"][:nnz], g["features"][:nnz], g["values"][:nnz], g["labels"][:m],
                           g["weights"][:m], self.threads)
            l, w, bad, first = self.train_rows(g["indptr"][: m + 1], g["fields"][:nnz], g["features"][:nnz],
                                               g["values"][:nnz], g["labels"][:m], g["weights"][:m],
                                               g["order"][:m], step0 + pos // bs)
            loss += l
            wsum += w
            nbad += bad
            if first >= 0:
                return loss, wsum, nbad, pos + first
            pos += m
        return loss, wsum, nbad, -1

    cdef dict buffers(self, Py_ssize_t rows, Py_ssize_t entries, dtype, bint has_values, bint has_weights):
        """gathered()'s arrays, for at least `rows` rows and `entries`
        entries, grown (by half again) when too small; "order" is 0, 1, 2, ..."""
        g = self.gather_bufs
        if g is None or g["fields"].dtype != dtype:
            g = self.gather_bufs = {"fields": np.empty(0, dtype), "src": np.empty(0, np.int64)}
        cdef Py_ssize_t R = grown(g["src"].shape[0], rows), E = grown(g["fields"].shape[0], entries)
        if "order" not in g or R != g["src"].shape[0]:
            g["indptr"], g["src"] = np.empty(R + 1, np.int64), np.empty(R, np.int64)
            g["labels"], g["order"] = np.empty(R, np.float32), np.arange(R, dtype=np.int64)
        if "features" not in g or E != g["fields"].shape[0]:
            g["fields"], g["features"] = np.empty(E, dtype), np.empty(E, np.int32)
        g["weights"] = floats_for(g.get("weights"), R if has_weights else 0)
        g["values"] = floats_for(g.get("values"), E if has_values else 0)
        return g

    def train_rows(self, const long long[::1] indptr, fields, const int[::1] features,
                   const float[::1] values, const float[::1] labels, const float[::1] weights,
                   const long long[::1] order, double step0):
        """train() without copying the rows first."""
        if self.s.itemsize == 8:
            return train_pass(self, <double*>self.s.base[ARR_B], <double*>self.s.base[ARR_L],
                              <double*>self.s.base[ARR_F], <double*>self.s.base[ARR_R], indptr,
                              entries_of(fields, features, values), labels, weights, order, step0)
        return train_pass(self, <float*>self.s.base[ARR_B], <float*>self.s.base[ARR_L],
                          <float*>self.s.base[ARR_F], <float*>self.s.base[ARR_R], indptr,
                          entries_of(fields, features, values), labels, weights, order, step0)


cdef tuple train_pass(Trainer tr, floating* pB, floating* pL, floating* pF, floating* pR,
                      const long long[::1] indptr, Entries ent, const float[::1] labels,
                      const float[::1] weights, const long long[::1] order, double step0):
    """Trainer.train's loop, for the trainer's parameter type."""
    # the trainer's settings in locals (the loop below reads nothing else of it)
    cdef Shape s = tr.s
    cdef Opt o = tr.o
    cdef double eta = tr.eta
    cdef Py_ssize_t batch_size = tr.batch_size, kp = s.kp
    cdef bint skip_nonfinite = tr.skip_nonfinite
    cdef const int* fp
    cdef const float* vp
    cdef Py_ssize_t n = order.shape[0], C = s.n_classes
    cdef Py_ssize_t ii, bi, row, nxt, ahead, start, nnz, c, first, last
    cdef Py_ssize_t n_batches = (n + batch_size - 1) // batch_size
    cdef double t, loss = 0, wsum = 0, l, wr, cnt, eps = tr.label_smoothing
    cdef bint has_w = weights.shape[0] > 0, bad
    cdef long long nbad = 0
    cdef floating scale, eta_t
    cdef int nthreads = tr.threads, tid
    cdef double* kap
    # the stop flag, which every thread reads at every batch, and the
    # replicas' lock on lines of their own: on the stack they would share a
    # line with what the first thread writes there
    cdef int* flags = <int*>line_calloc(FLAG_INTS, sizeof(int))
    if flags == NULL:
        raise MemoryError("no memory for the training work space")
    cdef int* pstop = flags
    cdef int* plock = flags + FLAG_INTS // 2
    cdef Scratch* sc = scratch_new(nthreads, &s, longest_row(indptr), sizeof(floating),
                                   s.kind == KIND_FWFM or s.kind == KIND_FMFM, s.batch)
    if sc == NULL:
        free(flags)
        raise MemoryError("no memory for the training work space")
    cdef const int* hot = tr.hot
    cdef Py_ssize_t H = tr.H
    cdef bint settle = tr.settle_passes
    cdef fm_copy* copies = tr.copies
    # float32, one class: prefetch the next row's linear weights (fm_prefetch_linear)
    cdef bint lin_ahead = floating is float and s.use_linear and C == 1
    # prefetch the next row's factor rows (see Trainer.row_prefetch)
    cdef Py_ssize_t frow = tr.row_prefetch
    cdef bint rows_ahead = frow > 0
    cdef floating* tB      # the bias and field-pair weights a thread trains: its copies, or the shared ones
    cdef floating* tR
    tid = 0
    try:
        if H:
            # the threads' replicas go on from the last pass (hot.h): what they
            # have not exchanged yet, and when each tier's exchange is due.
            # Each thread works on a copy of its struct in its own scratch.
            for c in range(nthreads):
                sc[c].hot = tr.reps[c]
                sc[c].hot.rep = fm_float_distance(<float*>pF, sc[c].hot.local)
                sc[c].hot.F = <float*>pF
                sc[c].hot.L = <float*>pL
                sc[c].hot.ids = hot
                sc[c].row.hot = &sc[c].hot
        fm_set_schedule(tr.balance and nthreads > 1, BALANCE_CHUNK)
        with nogil, parallel(num_threads=nthreads):
            tid = threadid()
            tB = pB
            tR = pR
            if copies != NULL:
                if copies[2 * tid].len:
                    fm_copy_load(<float*>pB, &copies[2 * tid])
                    tB = <floating*>copies[2 * tid].local
                if copies[2 * tid + 1].len:
                    fm_copy_load(<float*>pR, &copies[2 * tid + 1])
                    tR = <floating*>copies[2 * tid + 1].local
            for bi in prange(n_batches, schedule="runtime"):
                if pstop[0]:
                    continue
                eta_t = <floating>opt_step_eta(&o, eta, step0 + bi)
                first = bi * batch_size
                last = first + batch_size
                if last > n:
                    last = n
                cnt = 0
                kap = sc[tid].t + C
                for ii in range(first, last):
                    row = order[ii]
                    start = indptr[row]
                    nnz = indptr[row + 1] - start
                    fp = row_fields(&ent, start, nnz, &sc[tid])
                    vp = row_values(&ent, start, &sc[tid])
                    scale = <floating>row_scale(vp, nnz, s.normalize)
                    # the rows are shuffled: the entries of the row after next, and where
                    # the one after that starts, are loaded while this one trains
                    if ii + 3 < n:
                        fm_prefetch_span(&indptr[order[ii + 3]], 16)
                    if ii + 2 < n:
                        ahead = order[ii + 2]
                        prefetch_entries(&ent, indptr[ahead], indptr[ahead + 1] - indptr[ahead])
                    bad = False
                    for c in range(C):
                        t = score_row(&s, tB + c * s.cB, pL + c * s.cL, pF + c * s.cF, tR + c * s.cR,
                                      fp, ent.feat + start, vp, nnz, scale,
                                      <floating*>sc[tid].acc + c * (kp + 4), &sc[tid].row)
                        sc[tid].t[c] = t
                        if not isfinite(t):
                            bad = True
                    l = 0
                    if not bad:
                        l = row_loss(&s, sc[tid].t, labels[row], eps, kap)
                        bad = not isfinite(l)
                    if bad:
                        if skip_nonfinite:
                            nbad += 1
                            continue
                        if sc[tid].first_bad < 0:
                            sc[tid].first_bad = ii
                        pstop[0] = 1
                        break
                    wr = weights[row] if has_w else 1.0
                    loss += wr * l
                    wsum += wr
                    cnt = cnt + 1
                    if lin_ahead and ii + 1 < n:
                        # the next row's linear weights, while this one's pairs train
                        nxt = order[ii + 1]
                        fm_prefetch_linear(<float*>pL, s.lstride, ent.feat + indptr[nxt],
                                           indptr[nxt + 1] - indptr[nxt], s.n_features)
                    if rows_ahead and ii + 1 < n:
                        # the next row's factor rows, while this one's pairs train (their
                        # update runs from the core's caches: the memory is free meanwhile)
                        nxt = order[ii + 1]
                        if s.kind != KIND_FFM or s.n_fields <= ROWS_AHEAD_FIELDS * (indptr[nxt + 1] - indptr[nxt]):
                            if H:
                                fm_prefetch_features_hot(<float*>pF, frow, ent.feat + indptr[nxt],
                                                         indptr[nxt + 1] - indptr[nxt], s.n_features,
                                                         s.hot_slot, &sc[tid].hot)
                            else:
                                fm_prefetch_features(<float*>pF, frow, ent.feat + indptr[nxt],
                                                     indptr[nxt + 1] - indptr[nxt], s.n_features)
                    # the row's step number: float16 storage's rounding is reproducible
                    sc[tid].seed = <unsigned int>((<unsigned long long>step0 + ii) * C)
                    for c in range(C):
                        sc[tid].seed = sc[tid].seed + 1
                        update_row(&s, &o, eta_t, tB + c * s.cB, pL + c * s.cL, pF + c * s.cF,
                                   tR + c * s.cR, fp, ent.feat + start, vp,
                                   nnz, scale, <floating>(wr * kap[c]),
                                   <floating*>sc[tid].acc + c * (kp + 4), &sc[tid].row, &sc[tid])
                if s.batch:
                    if cnt > 0 and not pstop[0]:
                        flush(&s, &o, &sc[tid], eta_t, cnt)
                    else:
                        flush_discard(&s, &sc[tid])
                else:
                    if H:
                        fm_hot_tick(&sc[tid].hot, plock)
                    if copies != NULL:
                        if copies[2 * tid].len:
                            fm_copy_tick(<float*>pB, &copies[2 * tid], plock)
                        if copies[2 * tid + 1].len:
                            fm_copy_tick(<float*>pR, &copies[2 * tid + 1], plock)
            if H and settle:
                fm_hot_exchange_all(&sc[tid].hot, plock)
            if copies != NULL:
                fm_lock(plock)
                if copies[2 * tid].len:
                    fm_copy_exchange(<float*>pB, &copies[2 * tid])
                if copies[2 * tid + 1].len:
                    fm_copy_exchange(<float*>pR, &copies[2 * tid + 1])
                fm_unlock(plock)
        if H:
            for c in range(nthreads):
                tr.reps[c] = sc[c].hot
            tr.unsettled = not settle
        first = -1
        for c in range(nthreads):
            if sc[c].first_bad >= 0 and (first < 0 or sc[c].first_bad < first):
                first = sc[c].first_bad
    finally:
        scratch_free(sc, nthreads)   # the replicas stay with the trainer
        free(flags)
    return loss, wsum, nbad, first


cdef inline Py_ssize_t factor_row_bytes(const Shape* s, Py_ssize_t itemsize) noexcept nogil:
    """Bytes of one feature's factor blocks (an FFM feature's n_fields, one
    otherwise) in arrays of `itemsize`-byte numbers."""
    return (s.n_fields if s.kind == KIND_FFM else 1) * s.fstride * itemsize


cdef inline Py_ssize_t grown(Py_ssize_t have, Py_ssize_t need) noexcept:
    """A buffer's new length: `have` when it holds `need`, else half again (at least `need`)."""
    return have if have >= need else max(need, have * 3 // 2)


cdef object floats_for(a, Py_ssize_t n):
    """`a` when it holds n floats, else a new array of n (an empty one for 0)."""
    if n == 0:
        return np.empty(0, np.float32)
    return a if a is not None and a.shape[0] >= n else np.empty(n, np.float32)


cdef bint consecutive(const long long[::1] order) noexcept:
    """order is r, r + 1, r + 2, ... (its rows already lie in sequence)."""
    cdef Py_ssize_t i
    for i in range(1, order.shape[0]):
        if order[i] != order[i - 1] + 1:
            return False
    return True


def gather_offsets(const long long[::1] indptr, const long long[::1] order, long long[::1] out_indptr,
                   long long[::1] src):
    """Where rows `order` of a batch start once copied in that order:
    out_indptr (n + 1) their offsets from 0, src (n) where each starts in
    the batch.  Returns their entries in all (out_indptr[n])."""
    cdef Py_ssize_t i, n = order.shape[0], nrows = indptr.shape[0] - 1
    cdef long long r, a, tot = 0
    if out_indptr.shape[0] < n + 1 or src.shape[0] < n:
        raise ValueError("out_indptr or src too short")
    with nogil:
        out_indptr[0] = 0
        for i in range(n):
            r = order[i]
            if r < 0 or r >= nrows:
                with gil:
                    raise IndexError(f"row {r} of order is not a row of the batch ({nrows} rows)")
            a = indptr[r]
            src[i] = a
            tot = tot + (indptr[r + 1] - a)
            out_indptr[i + 1] = tot
    return tot


def gather_entries(const long long[::1] order, const long long[::1] src, const long long[::1] out_indptr,
                   fields, const int[::1] features, const float[::1] values, const float[::1] labels,
                   const float[::1] weights, out_fields, int[::1] out_features, float[::1] out_values,
                   float[::1] out_labels, float[::1] out_weights, int threads=1):
    """Copy rows `order` of a batch, in that order, into the out arrays (as
    gather_offsets placed them): their fields (uint8 or int32, as the
    batch's), features, values (none when the batch has none: every value
    1), labels and weights (none when the batch has none).  The entries of
    rows visited in a shuffled order are each a cache miss where they lie;
    copied first, side by side, they are read in sequence while the rows train."""
    cdef Py_ssize_t i, n = order.shape[0], nnz = out_indptr[n] if n else 0
    cdef long long a, b, m, r
    cdef bint has_w = weights.shape[0] > 0
    if (src.shape[0] < n or out_indptr.shape[0] < n + 1 or out_features.shape[0] != nnz
            or np.asarray(out_fields).dtype != np.asarray(fields).dtype
            or out_values.shape[0] != (nnz if values.shape[0] else 0)
            or out_labels.shape[0] < n or (has_w and out_weights.shape[0] < n)):
        raise ValueError("the out arrays do not fit the rows")
    cdef Entries e = entries_of(fields, features, values)
    cdef Entries o = entries_of(out_fields, out_features, out_values)
    with nogil:
        for i in prange(n, num_threads=max(1, threads), schedule="static"):
            r = order[i]
            out_labels[i] = labels[r]
            if has_w:
                out_weights[i] = weights[r]
            a = src[i]
            b = out_indptr[i]
            m = out_indptr[i + 1] - b
            if m == 0:      # (an empty array's pointer is NULL)
                continue
            memcpy(<void*>(o.feat + b), e.feat + a, m * sizeof(int))
            if e.f8 != NULL:
                memcpy(<void*>(o.f8 + b), e.f8 + a, m)
            else:
                memcpy(<void*>(o.f32 + b), e.f32 + a, m * sizeof(int))
            if e.val != NULL:
                memcpy(<void*>(o.val + b), e.val + a, m * sizeof(float))


cdef void flush_discard(const Shape* s, Scratch* sc) noexcept nogil:
    """Drop a batch's sums without stepping."""
    cdef Py_ssize_t i, gid, idx
    cdef int arr
    for i in range(sc.n_ids):
        gid = sc.ids[i]
        arr = block_of(s, gid, &idx)
        memset(<char*>sc.gacc[arr] + idx * s.blen[arr] * s.itemsize, 0, s.blen[arr] * s.itemsize)
        sc.mark[gid] = 0
    sc.n_ids = 0


def score_rows(Layout layout not None, B, L, F, R, const long long[::1] indptr, fields,
               const int[::1] features, const float[::1] values, double[::1] out, int threads=1):
    """Raw scores (logits) of every row into `out` (row-major, n_classes per
    row): the one scoring entry, for validation in training and for predict.

    B, L, F, R: contiguous 1-d arrays, all float32 or all float64, as
    `layout` says (a saved model: n_state 0); B may be empty without a bias
    and L without linear terms.  Ids at or beyond the model's n_features /
    n_fields contribute nothing.  fields may be int32 or uint8, values empty
    when every value is 1.  Returns `out` as an array."""
    cdef Shape s = layout.s
    cdef bint f64 = model_dtype((B, L, F, R)) == np.float64
    if s.half and f64:
        raise ValueError("float16 factor storage is read in float32")
    cdef Py_ssize_t nrows = indptr.shape[0] - 1, C = s.n_classes
    if out.shape[0] < nrows * C:
        raise ValueError("output array too small")
    cdef const char* base[4]
    cdef Py_ssize_t n[4]
    cdef int a
    for a, arr in enumerate((B, L, F, R)):
        base[a] = cdata_of(arr, f64, &n[a])
    check_sizes(&s, n[ARR_B] if s.use_bias else C * s.cB, n[ARR_L] if s.use_linear else C * s.cL,
                n[ARR_F], n[ARR_R])
    cdef Entries ent = entries_of(fields, features, values)
    if f64:
        score_pass(&s, <const double*>base[ARR_B], <const double*>base[ARR_L],
                   <const double*>base[ARR_F], <const double*>base[ARR_R], indptr, &ent, out, threads)
    else:
        score_pass(&s, <const float*>base[ARR_B], <const float*>base[ARR_L],
                   <const float*>base[ARR_F], <const float*>base[ARR_R], indptr, &ent, out, threads)
    return np.asarray(out)


cdef void score_pass(const Shape* s, const floating* pB, const floating* pL, const floating* pF,
                     const floating* pR, const long long[::1] indptr, const Entries* ent,
                     double[::1] out, int threads) except *:
    """score_rows' loop, for the model's parameter type."""
    cdef Py_ssize_t n = indptr.shape[0] - 1, C = s.n_classes, c, kp = s.kp
    cdef Py_ssize_t row, start, nnz
    cdef floating scale
    cdef const int* fp
    cdef const float* vp
    cdef int nthreads = max(1, threads), tid
    # Scoring waits on memory (a row reads blocks scattered over the model), so
    # while a row is scored the next row's factor and linear blocks are
    # prefetched (class 0's; n_pf / n_pl = 0: none), as training does.
    cdef Py_ssize_t frow = factor_row_bytes(s, sizeof(floating))
    cdef Py_ssize_t lrow = s.lstride * sizeof(floating)
    cdef Py_ssize_t n_pf = s.n_features if s.kind != KIND_LR else 0
    cdef Py_ssize_t n_pl = s.n_features if s.use_linear else 0
    cdef Scratch* sc = scratch_new(nthreads, s, longest_row(indptr), sizeof(floating), False, False)
    if sc == NULL:
        raise MemoryError("no memory for the scoring work space")
    tid = 0
    try:
        with nogil, parallel(num_threads=nthreads):
            tid = threadid()
            for row in prange(n, schedule="dynamic", chunksize=256):
                start = indptr[row]
                nnz = indptr[row + 1] - start
                if row + 1 < n:   # start loading the next row's parameters
                    fm_prefetch_features(pF, frow, ent.feat + indptr[row + 1],
                                         indptr[row + 2] - indptr[row + 1], n_pf)
                    fm_prefetch_features(pL, lrow, ent.feat + indptr[row + 1],
                                         indptr[row + 2] - indptr[row + 1], n_pl)
                fp = row_fields(ent, start, nnz, &sc[tid])
                vp = row_values(ent, start, &sc[tid])
                scale = <floating>row_scale(vp, nnz, s.normalize)
                for c in range(C):
                    out[row * C + c] = score_row(s, pB + c * s.cB, pL + c * s.cL, pF + c * s.cF,
                                                 pR + c * s.cR, fp, ent.feat + start,
                                                 vp, nnz, scale,
                                                 <floating*>sc[tid].acc + c * (kp + 4), &sc[tid].row)
    finally:
        scratch_free(sc, nthreads)


# ---------------------------------------------------------------------------
# the AdaGrad merge of data-parallel rounds (fmcli.distributed._merge_adagrad)
# ---------------------------------------------------------------------------

def changed_row_mask(const unsigned char[:, ::1] before, const unsigned char[:, ::1] after,
                     unsigned char[::1] out):
    """out[i] = 1 where row i of `after` has other bytes than row i of
    `before`, else 0 (the rows of two arrays of one shape, viewed as bytes).
    A row is compared up to its first difference (fmcli.distributed: the
    rows a worker changed in a round, most of them at their first bytes)."""
    cdef Py_ssize_t n = before.shape[0], w = before.shape[1], i
    if after.shape[0] != n or after.shape[1] != w or out.shape[0] != n:
        raise ValueError("changed_row_mask needs two arrays of one shape and one output per row")
    if n == 0:
        return
    if w == 0:
        memset(&out[0], 0, n)
        return
    with nogil:
        for i in range(n):
            out[i] = memcmp(&before[i, 0], &after[i, 0], w) != 0


def ftrl_rate_f32(const float[:, :] w, float[:, :] z, const float[:, :] n, double alpha, double beta,
                  double l1, double l2, w0=None, z0=None, n0=None):
    """FTRL's z rewritten for the rate alpha, each weight kept (see
    fmcli.distributed._ftrl_rate, whose NumPy code this is, with the same
    bits): z = -(w ((beta + sqrt n) / alpha + l2) + sign(w) l1) in double
    where w != 0; with the base slots w0, z0, n0, an element whose w and n
    equal the base's takes z0 back instead.  w, z, n: (rows, lanes) views
    of one array's slots (any strides)."""
    cdef Py_ssize_t rows = w.shape[0], lanes = w.shape[1], i, j
    cdef const float[:, :] bw
    cdef const float[:, :] bz
    cdef const float[:, :] bn
    cdef bint restore = w0 is not None
    cdef double x, f
    if z.shape[0] != rows or z.shape[1] != lanes or n.shape[0] != rows or n.shape[1] != lanes:
        raise ValueError("ftrl_rate_f32 needs w, z and n of one shape")
    if restore:
        bw, bz, bn = w0, z0, n0
        if (bw.shape[0] != rows or bw.shape[1] != lanes or bz.shape[0] != rows or bz.shape[1] != lanes
                or bn.shape[0] != rows or bn.shape[1] != lanes):
            raise ValueError("ftrl_rate_f32 needs base slots of the shape of w")
    with nogil:
        for i in range(rows):
            for j in range(lanes):
                if restore and w[i, j] == bw[i, j] and n[i, j] == bn[i, j]:
                    z[i, j] = bz[i, j]
                elif w[i, j] != 0:
                    x = w[i, j]
                    f = x * ((beta + sqrt(<double>n[i, j])) / alpha + l2) + (l1 if x > 0 else -l1)
                    z[i, j] = <float>(-f)


def merge_adagrad_f32(const float[:, ::1] base, float[:, ::1] out, list parts,
                      Py_ssize_t w0, Py_ssize_t nw, Py_ssize_t g0, Py_ssize_t ng):
    """Merge the workers' AdaGrad rows of one float32 array, row by row:
    fmcli.distributed._merge_adagrad's rule with its float64 sums in its
    order, so the result has the same bits, in one pass and without
    temporaries.

    base (n, words): the rows as the round began; out: the merged rows.
    parts: per worker, in the fixed order, (idx, rows, packed) as
    distributed._part makes them: idx None and rows (n, words) with
    packed (np.packbits of whether each row changed), or idx (int32,
    sorted) and rows (len(idx), words).  The weights are words
    [w0, w0 + nw), their accumulators [g0, g0 + ng) (ng: nw, or 1 for
    one accumulator per row); other words are taken from base.

    A row no worker changed is base's; one worker changed, that worker's;
    several: G grows by the sum of their increments and w moves by the
    increment-weighted mean of their moves (where no accumulator grew, the
    plain mean of the moves of the workers that changed the row)."""
    cdef Py_ssize_t n = base.shape[0], words = base.shape[1], W = len(parts)
    if out.shape[0] != n or out.shape[1] != words:
        raise ValueError("out must have base's shape")
    if not (0 <= w0 and w0 + nw <= words and 0 <= g0 and g0 + ng <= words and (ng == nw or ng == 1)
            and (w0 + nw <= g0 or g0 + ng <= w0) and nw <= MAX_KP):
        raise ValueError("bad slot layout")
    if W < 1:
        raise ValueError("no parts")
    cdef const float** rows = <const float**>calloc(W, sizeof(float*))
    cdef const int** idx = <const int**>calloc(W, sizeof(int*))
    cdef const unsigned char** bits = <const unsigned char**>calloc(W, sizeof(char*))
    cdef Py_ssize_t* nidx = <Py_ssize_t*>calloc(W, sizeof(Py_ssize_t))
    cdef Py_ssize_t* cur = <Py_ssize_t*>calloc(W, sizeof(Py_ssize_t))
    cdef const float** at = <const float**>calloc(W, sizeof(float*))
    if not (rows and idx and bits and nidx and cur and at):
        free(rows); free(idx); free(bits); free(nidx); free(cur); free(at)
        raise MemoryError("no memory for the merge")
    cdef const float[:, ::1] r2
    cdef const int[::1] i1
    cdef const unsigned char[::1] b1
    cdef list keep = []     # the parts' buffers, alive through the loop
    cdef Py_ssize_t i, r, d, cnt, last
    cdef double wsum[MAX_KP]
    cdef double gsum[MAX_KP]
    cdef double msum[MAX_KP]
    cdef double x0, dg, dw, hits, tot
    cdef bint pos
    try:
        for i in range(W):
            p_idx, p_rows, p_bits = parts[i]
            r2 = p_rows
            if r2.shape[1] != words:
                raise ValueError("a part's rows must have base's words")
            keep.append(r2)
            rows[i] = &r2[0, 0] if r2.shape[0] else NULL
            if p_idx is None:
                b1 = p_bits
                if b1.shape[0] < (n + 7) // 8 or r2.shape[0] != n:
                    raise ValueError("a whole part needs n rows and n bits")
                keep.append(b1)
                bits[i] = &b1[0] if b1.shape[0] else NULL
            else:
                i1 = p_idx
                if i1.shape[0] != r2.shape[0]:
                    raise ValueError("a part needs one row per index")
                keep.append(i1)
                idx[i] = &i1[0] if i1.shape[0] else NULL
                nidx[i] = i1.shape[0]
                for r in range(1, i1.shape[0]):
                    if i1[r] <= i1[r - 1]:
                        raise ValueError("a part's indices must increase")
                if i1.shape[0] and (i1[0] < 0 or i1[i1.shape[0] - 1] >= n):
                    raise ValueError("a part's index is outside the block")
        with nogil:
            for r in range(n):
                cnt = 0
                last = 0
                for i in range(W):
                    at[i] = NULL
                    if bits[i] != NULL:
                        if (bits[i][r >> 3] >> (7 - (r & 7))) & 1:
                            at[i] = rows[i] + r * words
                    elif cur[i] < nidx[i] and idx[i][cur[i]] == r:
                        at[i] = rows[i] + cur[i] * words
                        cur[i] += 1
                    if at[i] != NULL:
                        cnt += 1
                        last = i
                if cnt == 0:
                    for d in range(words):
                        out[r, d] = base[r, d]
                    continue
                if cnt == 1:
                    for d in range(words):
                        out[r, d] = at[last][d]
                    continue
                for d in range(words):
                    out[r, d] = base[r, d]
                # the sums over every worker in order, from 0.0 (a worker
                # that kept the row adds its zero move and increment)
                for d in range(nw):
                    wsum[d] = 0.0
                    msum[d] = 0.0
                for d in range(ng):
                    gsum[d] = 0.0
                hits = 0.0
                for i in range(W):
                    if at[i] == NULL:   # its move and increment are +0.0
                        for d in range(nw):
                            wsum[d] += 0.0
                            msum[d] += 0.0
                        for d in range(ng):
                            gsum[d] += 0.0
                        continue
                    hits += 1.0
                    for d in range(ng):
                        gsum[d] += <double>at[i][g0 + d] - <double>base[r, g0 + d]
                    for d in range(nw):
                        dg = <double>at[i][g0 + (d if ng == nw else 0)] - <double>base[r, g0 + (d if ng == nw else 0)]
                        dw = <double>at[i][w0 + d] - <double>base[r, w0 + d]
                        wsum[d] += dg * dw
                        msum[d] += 1.0 * dw
                for d in range(nw):
                    tot = gsum[d if ng == nw else 0]
                    x0 = base[r, w0 + d]
                    if tot > 0:
                        out[r, w0 + d] = <float>(wsum[d] / tot + x0)
                    else:
                        out[r, w0 + d] = <float>(msum[d] / (hits if hits > 1.0 else 1.0) + x0)
                for d in range(ng):
                    out[r, g0 + d] = <float>(gsum[d] + <double>base[r, g0 + d])
    finally:
        free(rows); free(idx); free(bits); free(nidx); free(cur); free(at)
    return out
