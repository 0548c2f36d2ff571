# Shared low-level declarations for the compiled core.
#
# Every OpenMP call goes through the helpers below so that a build without
# OpenMP (FMCLI_NO_OPENMP=1) still compiles and imports.

from libc.math cimport sqrt, sqrtf, exp, expf, log1p, fabs

ctypedef fused floating:
    float
    double

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int fm_have_openmp(void) { return 1; }
    static int fm_max_threads(void) { return omp_get_max_threads(); }
    /* The schedule of the next schedule("runtime") loop this thread starts:
     * static (each thread one contiguous share) or dynamic (chunks handed
     * to whichever thread is free). */
    static void fm_set_schedule(int dynamic, int chunk) {
        omp_set_schedule(dynamic ? omp_sched_dynamic : omp_sched_static, dynamic ? chunk : 0);
    }
    #else
    static int fm_have_openmp(void) { return 0; }
    static int fm_max_threads(void) { return 1; }
    static void fm_set_schedule(int dynamic, int chunk) { (void)dynamic; (void)chunk; }
    #endif
    """
    int fm_have_openmp() noexcept nogil
    int fm_max_threads() noexcept nogil
    void fm_set_schedule(int dynamic, int chunk) noexcept nogil


cdef extern from "opt_f32.h":
    # The float32 optimizer steps, one per rule and lane width (see opt_f32.h):
    # the block steps _optim.pxd's opt_block uses, and the parameters of the
    # fused FFM steps below.
    void fm_adagrad_f32(float* w, float* G, const float* g, float eta, Py_ssize_t n, int refine) noexcept nogil
    void fm_rowada_f32(float* w, const float* g, float eta, float inv_k, Py_ssize_t n, int refine) noexcept nogil
    ctypedef struct fm_step_params:
        float eta, b1, b2, eps, beta, l1, l2, inv_k


cdef extern from "ffm_f32.h":
    # Float32 SIMD fast paths (see ffm_f32.h); the generic loops in
    # _kernels.pyx and _optim.pxd are the reference they must agree with.
    Py_ssize_t fm_ffm_prepare(Py_ssize_t n, Py_ssize_t m, Py_ssize_t fs, const int* fld,
                              const int* feat, const float* val, Py_ssize_t nnz, float scale,
                              Py_ssize_t* oj, Py_ssize_t* of, float* xs) noexcept nogil
    void fm_prefetch_features(const void* F, Py_ssize_t row_bytes, const int* feat, Py_ssize_t nnz,
                              Py_ssize_t n) noexcept nogil
    void fm_prefetch_linear(const float* L, Py_ssize_t stride, const int* feat, Py_ssize_t nnz,
                            Py_ssize_t n) noexcept nogil
    void fm_prefetch_span(const void* p, Py_ssize_t nbytes) noexcept nogil
    float fm_ffm_pairs_f32(const float* F, Py_ssize_t kp, const Py_ssize_t* oj,
                           const Py_ssize_t* of, const float* xs, Py_ssize_t c, Py_ssize_t fs) noexcept nogil
    float fm_ffm_pairs_f16(const char* F, Py_ssize_t kp, const Py_ssize_t* oj,
                           const Py_ssize_t* of, const float* xs, Py_ssize_t c) noexcept nogil
    void fm_ffm_adagrad_f16(int refine, char* F, Py_ssize_t kp, const Py_ssize_t* oj,
                            const Py_ssize_t* of, const float* xs, Py_ssize_t c, float kappa,
                            float lam, float eta, unsigned int seed) noexcept nogil
    int fm_f16c
    float fm_h2f(unsigned short h) noexcept nogil
    unsigned short fm_f2h_sr(float f, unsigned int r) noexcept nogil
    int fm_simd_init() noexcept nogil
    int fm_simd_set(int level) noexcept nogil
    int fm_set_uniform_rows(int on) noexcept nogil
    int fm_uniform_rows
    int fm_simd_level
    void fm_ffm_update_f32(int kind, int refine, float* F, Py_ssize_t kp, const Py_ssize_t* oj,
                           const Py_ssize_t* of, const float* xs, Py_ssize_t c, float kappa,
                           float lam, const fm_step_params* p) noexcept nogil


cdef extern from "fwfm_f32.h":
    # Float32 fast path of FwFM's row loops (see fwfm_f32.h).
    Py_ssize_t fm_fwfm_prepare(Py_ssize_t n, Py_ssize_t m, Py_ssize_t fs, const int* fld,
                               const int* feat, const float* val, Py_ssize_t nnz, float scale,
                               Py_ssize_t* ov, Py_ssize_t* fi, float* xs) noexcept nogil
    float fm_fwfm_pairs_f32(const float* F, Py_ssize_t kp, const float* R, Py_ssize_t ls, Py_ssize_t m,
                            const Py_ssize_t* ov, const Py_ssize_t* fi, const float* xs,
                            Py_ssize_t c) noexcept nogil
    void fm_fwfm_grads_f32(const float* F, Py_ssize_t kp, const float* R, Py_ssize_t ls, Py_ssize_t m,
                           const Py_ssize_t* ov, const Py_ssize_t* fi, const float* xs, Py_ssize_t c,
                           float kappa, float lam, float* g, float* rg, char* rmark,
                           Py_ssize_t* touched, Py_ssize_t* n_touched) noexcept nogil
    void fm_fwfm_adagrad_r_f32(float* R, Py_ssize_t ls, const Py_ssize_t* touched, Py_ssize_t nt,
                               float* rg, char* rmark, float eta) noexcept nogil


cdef extern from "fmfm_f32.h":
    # Float32 fast path of FmFM's row loops (see fmfm_f32.h); rows are
    # compacted by fm_fwfm_prepare.
    float fm_fmfm_pairs_f32(const float* F, Py_ssize_t kp, const float* R, Py_ssize_t fs, Py_ssize_t m,
                            const Py_ssize_t* ov, const Py_ssize_t* fi, const float* xs,
                            Py_ssize_t c) noexcept nogil
    void fm_fmfm_grads_f32(const float* F, Py_ssize_t kp, const float* R, Py_ssize_t fs, Py_ssize_t m,
                           const Py_ssize_t* ov, const Py_ssize_t* fi, const float* xs, Py_ssize_t c,
                           float kappa, float lam, float* g, float* mg, Py_ssize_t* pslot,
                           Py_ssize_t* touched, Py_ssize_t* n_touched) noexcept nogil


cdef extern from "hot.h":
    # Per-thread replicas of the hottest FFM features (see hot.h).
    ctypedef struct fm_replica:
        float* local
        float* snap
        unsigned char* mark
        unsigned short* touched
        Py_ssize_t rep
        Py_ssize_t hlen
        Py_ssize_t llen
        Py_ssize_t lbase
        float* F
        float* L
        const int* ids
        Py_ssize_t split[9]
        Py_ssize_t every[8]
        Py_ssize_t n_touched[8]
        Py_ssize_t since[8]
        Py_ssize_t lsince[8]
    enum: FM_HOT_TIERS
    enum: FM_COPY_DIVISOR
    ctypedef struct fm_copy:
        float* local
        float* snap
        Py_ssize_t len
        Py_ssize_t every
        Py_ssize_t since
    Py_ssize_t fm_ffm_prepare_hot(Py_ssize_t n, Py_ssize_t m, Py_ssize_t fs, const int* fld,
                                  const int* feat, const float* val, Py_ssize_t nnz, float scale,
                                  Py_ssize_t* oj, Py_ssize_t* of, float* xs,
                                  const unsigned short* slot, fm_replica* r) noexcept nogil
    Py_ssize_t fm_fwfm_prepare_hot(Py_ssize_t n, Py_ssize_t m, Py_ssize_t fs, const int* fld,
                                   const int* feat, const float* val, Py_ssize_t nnz, float scale,
                                   Py_ssize_t* ov, Py_ssize_t* fi, float* xs,
                                   const unsigned short* slot, fm_replica* r) noexcept nogil
    float* fm_hot_block(float* F, Py_ssize_t j, Py_ssize_t fs, const unsigned short* slot, fm_replica* r,
                        int touch) noexcept nogil
    Py_ssize_t fm_float_distance(const float* F, const float* p) noexcept nogil
    void fm_prefetch_features_hot(const float* F, Py_ssize_t row_bytes, const int* feat, Py_ssize_t nnz,
                                  Py_ssize_t n, const unsigned short* slot, const fm_replica* r) noexcept nogil
    float* fm_hot_linear(float* L, Py_ssize_t j, Py_ssize_t ls, const unsigned short* slot,
                         fm_replica* r) noexcept nogil
    void fm_hot_tick(fm_replica* r, int* lock) noexcept nogil
    void fm_hot_exchange_all(fm_replica* r, int* lock) noexcept nogil
    void fm_copy_load(const float* shared, fm_copy* c) noexcept nogil
    void fm_copy_exchange(float* shared, fm_copy* c) noexcept nogil
    void fm_copy_tick(float* shared, fm_copy* c, int* lock) noexcept nogil
    int fm_try_lock(int* lock) noexcept nogil
    void fm_unlock(int* lock) noexcept nogil
    void fm_lock(int* lock) noexcept nogil


cdef inline floating fm_sqrt(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


cdef inline double log1pexp(double z) noexcept nogil:
    """log(1 + e^z) without overflow."""
    if z > 0:
        return z + log1p(exp(-z))
    return log1p(exp(z))
