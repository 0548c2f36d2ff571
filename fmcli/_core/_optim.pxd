# The one home of the optimizer update rules.
#
# Every trainable weight is followed in memory by its optimizer state: for a
# block of n weights starting at w, state slot s of element d lives at
# w[d + (s + 1) * n].  Linear weights are blocks of one.  Model loops hand a
# block's gradient to opt_block (or, for FFM's pairs of interacting blocks, to
# opt_pair); adding an optimizer means adding a branch here, never touching
# the model loops.

from ._common cimport floating, fm_sqrt, fm_adagrad_f32

cdef enum:
    OPT_SGD = 0
    OPT_ADAGRAD = 1

cdef inline int opt_n_state(int kind) noexcept nogil:
    """Number of state slots per weight."""
    if kind == OPT_ADAGRAD:
        return 1
    return 0


cdef inline void opt_block(int kind, floating eta, floating* w, const floating* g,
                           Py_ssize_t n, bint exact) noexcept nogil:
    """Apply the gradient g[0:n] to the block of n weights at w.

    float32 AdaGrad uses the SIMD step of ffm_f32.h: with `exact` false its
    1/sqrt is the CPU's estimate (libffm's), else refined to float32
    precision.  float64 is always exact."""
    cdef Py_ssize_t d
    cdef floating* G = w + n
    if kind == OPT_ADAGRAD:
        # libffm's AdaGrad: accumulators start at 1.
        if floating is float:
            fm_adagrad_f32(w, G, g, eta, n, exact)
        else:
            for d in range(n):
                G[d] = G[d] + g[d] * g[d]
                w[d] = w[d] - eta * g[d] / fm_sqrt(G[d])
    else:
        for d in range(n):
            w[d] = w[d] - eta * g[d]



cdef inline void opt_pair(int kind, floating eta, floating lam, floating kv,
                          floating* w1, floating* w2, Py_ssize_t n,
                          floating* g1, floating* g2, bint exact) noexcept nogil:
    """Step two interacting blocks (FFM's w[j1,f2] and w[j2,f1]).

    Gradients g1 = lam*w1 + kv*w2 and g2 = lam*w2 + kv*w1, both from the
    values before this step; then w1 is stepped, then w2.  g1 and g2 are
    scratch buffers of n values."""
    cdef Py_ssize_t d
    cdef floating a, b
    for d in range(n):
        a = w1[d]
        b = w2[d]
        g1[d] = lam * a + kv * b
        g2[d] = lam * b + kv * a
    opt_block(kind, eta, w1, g1, n, exact)
    opt_block(kind, eta, w2, g2, n, exact)
