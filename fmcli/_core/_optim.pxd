# The one home of the optimizer update rules and of the step-size schedule.
#
# Every trainable weight is followed in memory by its optimizer state: for a
# block of n weights starting at w, state slot s of element d lives at
# w[d + (s + 1) * n].  Linear weights are blocks of one.  Model loops hand a
# block's gradient to opt_block (or, for FFM's pairs of interacting blocks, to
# opt_pair); adding an optimizer means adding a branch here, never touching
# the model loops.  The float32 fast paths step with opt_f32.h, the one home
# of each rule per lane width (scalar, SSE, AVX): a new optimizer there is its
# step functions and a branch in fm_step_1 / fm_step_ps (and FFM's fused
# per-row loop lists the rules it instantiates, FM_KINDS_U in ffm_f32.h).
#
#   optimizer  state slots          step (g: the block's gradient, clipped)
#   sgd        -                    w -= eta g
#   adagrad    G (starts at 1)      G += g^2; w -= eta g / sqrt(G)
#   rowwise-   G, one per block     G += sum(g^2) / k; w -= eta g / sqrt(G)
#   adagrad    (starts at 1)        (k: the block's real weights, 1 for a
#                                   linear weight; the state is a single
#                                   value after the block's n weights)
#   adam       m, v (start at 0)    m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
#                                   w -= eta_n m / (sqrt(v) + eps), where
#                                   eta_n = eta sqrt(1-b2^n) / (1-b1^n) and n
#                                   is the global step (lazy Adam: only the
#                                   blocks a step touches move)
#   ftrl       z, n                 FTRL-Proximal (McMahan et al., 2013):
#                                   s = (sqrt(n+g^2) - sqrt(n)) / alpha;
#                                   z += g - s w; n += g^2;
#                                   w = 0 if |z| <= l1 else
#                                       -(z - sign(z) l1) / ((beta + sqrt(n))/alpha + l2)
#
# For sgd, adagrad and adam, L2 is part of the gradient the caller passes
# (grad_l2 gives the coefficient to use); FTRL takes l1 and l2 in its closed
# form instead, so grad_l2 is 0 for it.

from libc.math cimport sqrt, pow, cos, fabs, M_PI
from ._common cimport floating, fm_sqrt, fm_adagrad_f32, fm_rowada_f32

cdef enum:
    OPT_SGD = 0
    OPT_ADAGRAD = 1
    OPT_ADAM = 2
    OPT_FTRL = 3
    OPT_ROWADA = 4           # row-wise AdaGrad

cdef enum:
    SCHED_CONSTANT = 0
    SCHED_LINEAR = 1
    SCHED_COSINE = 2
    SCHED_INVSQRT = 3

cdef enum:
    OPT_MAX_BLOCK = 1024     # longest block opt_block may clip (MAX_KP)


cdef struct Opt:
    int kind
    double b1, b2, eps       # adam
    double ftrl_beta         # ftrl (alpha is the step size)
    double clip              # > 0: a block's gradient is scaled to norm <= clip
    bint exact               # float32 adagrad: refined instead of estimated 1/sqrt
    double row_k             # row-wise AdaGrad: real weights in a factor block (k)
    int schedule
    double warmup            # steps
    double total             # steps in the whole run


cdef inline int opt_n_state(int kind) noexcept nogil:
    """Number of state slots per weight (row-wise AdaGrad: one per block)."""
    if kind == OPT_ADAGRAD or kind == OPT_ROWADA:
        return 1
    if kind == OPT_ADAM or kind == OPT_FTRL:
        return 2
    return 0


cdef inline double opt_grad_l2(int kind, double l2) noexcept nogil:
    """The L2 coefficient that belongs in the gradient (FTRL applies it itself)."""
    if kind == OPT_FTRL:
        return 0
    return l2


cdef inline double opt_step_eta(const Opt* o, double eta, double t) noexcept nogil:
    """Step size of (0-based) step t: the schedule's multiplier, and for Adam
    its bias correction with the global step count t + 1."""
    cdef double m = 1, span, u, n
    if t < o.warmup:
        m = (t + 1) / o.warmup
    elif o.schedule == SCHED_LINEAR or o.schedule == SCHED_COSINE:
        span = o.total - o.warmup
        if span > 0:
            u = (t - o.warmup) / span
            if u > 1:
                u = 1
            if o.schedule == SCHED_LINEAR:
                m = 1 - u
            else:
                m = 0.5 * (1 + cos(M_PI * u))
    elif o.schedule == SCHED_INVSQRT:
        m = sqrt((o.warmup if o.warmup > 1 else 1) / (t + 1))
    if o.kind == OPT_ADAM:
        n = t + 1
        m = m * sqrt(1 - pow(o.b2, n)) / (1 - pow(o.b1, n))
    return eta * m


cdef inline void opt_block(const Opt* o, floating eta, floating* w, const floating* g0,
                           Py_ssize_t n, floating l1, floating l2) noexcept nogil:
    """Apply the gradient g0[0:n] to the block of n weights at w.

    eta is opt_step_eta's value for this step (FTRL: alpha).  float32
    AdaGrad uses the SIMD step of opt_f32.h: with o.exact false its 1/sqrt is
    the CPU's estimate (libffm's), else refined to float32 precision; float64
    is always exact."""
    cdef Py_ssize_t d
    cdef floating* s1 = w + n
    cdef floating* s2 = w + 2 * n
    cdef floating gd, norm = 0, sig, z, a, ss, r
    cdef floating clipped[OPT_MAX_BLOCK]
    cdef const floating* g = g0
    if o.clip > 0:
        for d in range(n):
            norm = norm + g0[d] * g0[d]
        norm = fm_sqrt(norm)
        if norm > o.clip:
            for d in range(n):
                clipped[d] = g0[d] * <floating>(o.clip / norm)
            g = clipped
    if o.kind == OPT_ADAGRAD:
        # libffm's AdaGrad: accumulators start at 1.
        if floating is float:
            fm_adagrad_f32(w, s1, g, eta, n, o.exact)
        else:
            for d in range(n):
                s1[d] = s1[d] + g[d] * g[d]
                w[d] = w[d] - eta * g[d] / fm_sqrt(s1[d])
    elif o.kind == OPT_ROWADA:
        # one accumulator at w[n]; a factor block (n = kp >= 4) has k real
        # weights (its padding's gradients are 0), any other block one
        if floating is float:
            fm_rowada_f32(w, g, eta, <float>(1.0 / o.row_k) if n > 1 else 1.0, n, o.exact)
        else:
            ss = 0
            for d in range(n):
                ss = ss + g[d] * g[d]
            s1[0] = s1[0] + ss / (<floating>o.row_k if n > 1 else 1)
            r = 1 / fm_sqrt(s1[0])
            for d in range(n):
                w[d] = w[d] - eta * g[d] * r
    elif o.kind == OPT_ADAM:
        for d in range(n):
            gd = g[d]
            s1[d] = <floating>o.b1 * s1[d] + <floating>(1 - o.b1) * gd
            s2[d] = <floating>o.b2 * s2[d] + <floating>(1 - o.b2) * gd * gd
            w[d] = w[d] - eta * s1[d] / (fm_sqrt(s2[d]) + <floating>o.eps)
    elif o.kind == OPT_FTRL:
        for d in range(n):
            gd = g[d]
            sig = (fm_sqrt(s2[d] + gd * gd) - fm_sqrt(s2[d])) / eta
            z = s1[d] + gd - sig * w[d]
            s1[d] = z
            s2[d] = s2[d] + gd * gd
            a = fabs(z)
            if a <= l1:
                w[d] = 0
            else:
                w[d] = -(z - (l1 if z > 0 else -l1)) / ((<floating>o.ftrl_beta + fm_sqrt(s2[d])) / eta + l2)
    else:
        for d in range(n):
            w[d] = w[d] - eta * g[d]


cdef inline void opt_pair(const Opt* o, floating eta, floating lam, floating kv,
                          floating* w1, floating* w2, Py_ssize_t n,
                          floating* g1, floating* g2, floating l1, floating l2) noexcept nogil:
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
    opt_block(o, eta, w1, g1, n, l1, l2)
    opt_block(o, eta, w2, g2, n, l1, l2)
