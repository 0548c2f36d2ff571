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
    #else
    static int fm_have_openmp(void) { return 0; }
    static int fm_max_threads(void) { return 1; }
    #endif
    """
    int fm_have_openmp() noexcept nogil
    int fm_max_threads() noexcept nogil


cdef extern from *:
    """
    /* AdaGrad step on n float32 weights: G += g*g; w -= eta * g / sqrt(G).
     * On x86 the reciprocal square root is SSE's estimate refined by one
     * Newton-Raphson step (relative error about 1e-7, near float32 rounding;
     * libffm uses the raw estimate, error 4e-4), four lanes at a time: the
     * exact sqrt + divide pair costs several times more and dominates FFM's
     * update.  Elsewhere, and for the tail, the exact formula. */
    #include <math.h>
    #if defined(__SSE__) || defined(_M_X64)
    #include <xmmintrin.h>
    #define FM_HAVE_SSE 1
    #else
    #define FM_HAVE_SSE 0
    #endif
    #if FM_HAVE_SSE
    /* One AdaGrad step on four lanes; updates *G and returns the new weights. */
    static inline __m128 fm_adagrad_ps(__m128 w, __m128 *G, __m128 g, __m128 eta) {
        const __m128 half = _mm_set1_ps(0.5f), three = _mm_set1_ps(3.0f);
        __m128 acc = _mm_add_ps(*G, _mm_mul_ps(g, g));
        __m128 r = _mm_rsqrt_ps(acc);
        r = _mm_mul_ps(_mm_mul_ps(half, r), _mm_sub_ps(three, _mm_mul_ps(_mm_mul_ps(acc, r), r)));
        *G = acc;
        return _mm_sub_ps(w, _mm_mul_ps(_mm_mul_ps(eta, g), r));
    }
    #endif

    static inline void fm_adagrad_f32(float *w, float *G, const float *g, float eta, Py_ssize_t n) {
        Py_ssize_t d = 0;
    #if FM_HAVE_SSE
        const __m128 e = _mm_set1_ps(eta);
        for (; d + 4 <= n; d += 4) {
            __m128 acc = _mm_loadu_ps(G + d);
            __m128 nw = fm_adagrad_ps(_mm_loadu_ps(w + d), &acc, _mm_loadu_ps(g + d), e);
            _mm_storeu_ps(G + d, acc);
            _mm_storeu_ps(w + d, nw);
        }
    #endif
        for (; d < n; d++) {
            G[d] += g[d] * g[d];
            w[d] -= eta * g[d] / sqrtf(G[d]);
        }
    }

    /* AdaGrad on two interacting blocks of n weights (n a multiple of 4),
     * each followed by its n accumulators:
     *   g1 = lam*w1 + kv*w2,  g2 = lam*w2 + kv*w1  (both from the old values)
     * fused in registers.  Returns 0 when it cannot (no SSE, or w1 == w2,
     * where the caller applies the two steps one after the other). */
    static inline int fm_adagrad_pair_f32(float *w1, float *w2, Py_ssize_t n,
                                          float lam, float kv, float eta) {
    #if FM_HAVE_SSE
        if (w1 == w2) return 0;
        const __m128 e = _mm_set1_ps(eta), l = _mm_set1_ps(lam), k = _mm_set1_ps(kv);
        for (Py_ssize_t d = 0; d < n; d += 4) {
            __m128 a = _mm_loadu_ps(w1 + d), b = _mm_loadu_ps(w2 + d);
            __m128 G1 = _mm_loadu_ps(w1 + n + d), G2 = _mm_loadu_ps(w2 + n + d);
            __m128 g1 = _mm_add_ps(_mm_mul_ps(l, a), _mm_mul_ps(k, b));
            __m128 g2 = _mm_add_ps(_mm_mul_ps(l, b), _mm_mul_ps(k, a));
            a = fm_adagrad_ps(a, &G1, g1, e);
            b = fm_adagrad_ps(b, &G2, g2, e);
            _mm_storeu_ps(w1 + d, a);
            _mm_storeu_ps(w1 + n + d, G1);
            _mm_storeu_ps(w2 + d, b);
            _mm_storeu_ps(w2 + n + d, G2);
        }
        return 1;
    #else
        return 0;
    #endif
    }
    """
    void fm_adagrad_f32(float* w, float* G, const float* g, float eta, Py_ssize_t n) noexcept nogil
    int fm_adagrad_pair_f32(float* w1, float* w2, Py_ssize_t n, float lam, float kv, float eta) noexcept nogil


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
