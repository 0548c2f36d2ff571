/* Per-thread replicas of the hottest features' blocks (FM, FFM, FwFM, FmFM)
 * and linear weights, and per-thread copies of the small arrays every row
 * writes (the bias, the field-pair weights).
 *
 * With several threads, every row writes the blocks of its features in
 * place (Hogwild).  The few hundred features that most rows carry (the head
 * of a Zipf distribution) are then written by every thread all the time,
 * and each write pulls the cache line away from the other core: measured
 * on two cores, this contention cost 30-40% of the two-thread rate.
 *
 * So each thread trains those features on its own copy of their blocks
 * (weights and optimizer state) and, every so many rows, folds what it
 * changed into the shared model:
 *
 *     shared += local - snap
 *
 * where snap is the thread's copy as it took it.  A thread takes a
 * feature's shared values (local = snap = shared) when a row first touches
 * it after its last exchange, so what it trains on is never older than one
 * interval of its own rows, however long ago it last saw the feature; and
 * a feature it does not touch costs nothing at all.
 *
 * The features are in up to FM_HOT_TIERS tiers, each with its own interval
 * (in the thread's rows): a feature on a quarter of the rows is exchanged
 * every few hundred rows, one on a hundredth of them every few thousand, so
 * that between two exchanges the other threads make about as many updates
 * to every replicated feature (its staleness) while the bytes exchanged per
 * row are a fraction of what one interval for all would cost.  Exchanges are
 * serialised by a lock (a thread that finds it taken trains on and tries
 * again after its next row), so no change is lost.  The replicas outlive a
 * call: what is not yet exchanged stays with them until the next call's
 * ticks or a final exchange of everything (fm_hot_exchange_all), which the
 * trainer makes at the end of each call or, when asked, before anyone
 * reads the model.  Every other feature is updated in
 * place as before.  The exchange is additive, which suits SGD, AdaGrad and
 * FTRL (sums of steps and of squared gradients), not Adam's moving
 * averages.
 *
 * A prepared row (FFM, FwFM, FmFM) addresses a replicated feature's blocks
 * through the same offsets from F as any other (see fm_ffm_prepare): the
 * offset of the thread's replica from F, plus the feature's place in it;
 * FM's loops and the linear terms ask fm_hot_block and fm_hot_linear.
 */
#ifndef FMCLI_HOT_H
#define FMCLI_HOT_H

#include <stdint.h>
#include <string.h>

#include "ffm_f32.h"   /* fm_idx */
#if defined(_MSC_VER)
#include <intrin.h>
#endif

#define FM_HOT_TIERS 8
/* The linear weights in a replica are exchanged FM_HOT_LINEAR_DIVISOR times
 * as often as the blocks, and the per-thread copies of the bias and the
 * field-pair weights FM_COPY_DIVISOR times as often as the first tier: a
 * row moves them by its whole gradient (a block by the gradient times
 * another feature's factors) and every row moves the bias and most
 * field-pair weights, so two threads' stale steps, added up, overshoot
 * sooner.  BENCH.md's data, 2 threads, validation logloss against one
 * thread: fmcli's defaults (FFM, 4 epochs) +0.04% for the linear weights
 * and +0.04% for the bias at the blocks' intervals, +0.00% at these; FwFM
 * k=8 (3 epochs) +0.16% with the field-pair weights exchanged every 16
 * rows, +0.00% every 4. */
#define FM_HOT_LINEAR_DIVISOR 16
#define FM_COPY_DIVISOR 64

/* A thread's replica: the blocks of the H hot features (hlen floats each),
 * then their linear weights and state (llen floats each),
 * its copy as it took them, and the slots touched since their last exchange
 * (the others' local and snap are stale: a touch takes them again).  The
 * slots of tier t are split[t] .. split[t + 1] - 1, and so are the places
 * of its touched slots in `touched` (n_touched[t] of them); the tier is
 * exchanged every every[t] of the thread's rows (0: an empty tier). */
typedef struct {
    float *local;
    float *snap;
    uint8_t *mark;
    uint16_t *touched;
    fm_idx rep;        /* local's distance from F, in floats */
    fm_idx hlen;       /* floats of a feature's blocks in F */
    fm_idx llen;       /* floats of its linear weight (and state) in L; 0: none */
    fm_idx lbase;      /* where the linear weights start in the replica: H * hlen (the blocks
                          keep F's alignment, the linear weights are packed after them) */
    float *F;          /* the shared arrays and the hot features' ids: where touches take */
    float *L;          /* the shared values from and exchanges fold into (set by the */
    const int *ids;    /* trainer at each call) */
    fm_idx split[FM_HOT_TIERS + 1];
    fm_idx every[FM_HOT_TIERS];
    fm_idx n_touched[FM_HOT_TIERS];
    fm_idx since[FM_HOT_TIERS];   /* the thread's rows since the tier's last exchange */
    fm_idx lsince[FM_HOT_TIERS];  /* ... since its linear weights' last exchange */
} fm_replica;

/* The tier of slot h (0-based). */
static inline int fm_hot_tier(const fm_replica *r, fm_idx h) {
    int t = 0;
    while (t < FM_HOT_TIERS - 1 && h >= r->split[t + 1]) t++;
    return t;
}

/* Note slot s (1-based) as touched since the tier's last exchange; the
 * first touch takes the feature's shared values (local = snap = shared).
 * Another thread may be exchanging it meanwhile: snap is copied from local,
 * not read again from F, so that local - snap is this thread's changes alone
 * (what it saw half-written reaches it whole at its next touch). */
static inline void fm_hot_touch(fm_replica *r, fm_idx s) {
    if (!r->mark[s - 1]) {
        const fm_idx h = s - 1, hlen = r->hlen, llen = r->llen, id = r->ids[h];
        const int t = fm_hot_tier(r, h);
        r->mark[h] = 1;
        r->touched[r->split[t] + r->n_touched[t]++] = (uint16_t)h;
        memcpy(r->local + h * hlen, r->F + id * hlen, sizeof(float) * (size_t)hlen);
        memcpy(r->snap + h * hlen, r->local + h * hlen, sizeof(float) * (size_t)hlen);
        if (llen) {
            float *l = r->local + r->lbase + h * llen;
            memcpy(l, r->L + id * llen, sizeof(float) * (size_t)llen);
            memcpy(r->snap + r->lbase + h * llen, l, sizeof(float) * (size_t)llen);
        }
    }
}

/* fm_ffm_prepare, except that a feature with slot[j] = s > 0 is addressed at
 * r->rep + (s - 1) * m * fs (its blocks in the thread's replica) and noted
 * as touched. */
static inline fm_idx fm_ffm_prepare_hot(fm_idx n, fm_idx m, fm_idx fs, const int *fld,
                                         const int *feat, const float *val, fm_idx nnz,
                                         float scale, fm_idx *oj, fm_idx *of, float *xs,
                                         const uint16_t *slot, fm_replica *r) {
    fm_idx c = 0;
    for (fm_idx i = 0; i < nnz; i++) {
        if (feat[i] >= n || fld[i] >= m) continue;
        const fm_idx s = slot[feat[i]];
        if (s) {
            oj[c] = r->rep + (s - 1) * m * fs;
            fm_hot_touch(r, s);
        } else {
            oj[c] = (fm_idx)feat[i] * m * fs;
        }
        of[c] = (fm_idx)fld[i] * fs;
        xs[c] = val[i] * scale;
        c++;
    }
    return c;
}

/* fm_fwfm_prepare (FwFM and FmFM: one block of fs floats per feature), except
 * that a feature with slot[j] = s > 0 is addressed at r->rep + (s - 1) * fs
 * (its block in the thread's replica) and noted as touched. */
static inline fm_idx fm_fwfm_prepare_hot(fm_idx n, fm_idx m, fm_idx fs, const int *fld, const int *feat,
                                         const float *val, fm_idx nnz, float scale, fm_idx *ov, fm_idx *fi,
                                         float *xs, const uint16_t *slot, fm_replica *r) {
    fm_idx c = 0;
    for (fm_idx i = 0; i < nnz; i++) {
        if (feat[i] >= n || fld[i] >= m) continue;
        const fm_idx s = slot[feat[i]];
        if (s) {
            ov[c] = r->rep + (s - 1) * fs;
            fm_hot_touch(r, s);
        } else {
            ov[c] = (fm_idx)feat[i] * fs;
        }
        fi[c] = fld[i];
        xs[c] = val[i] * scale;
        c++;
    }
    return c;
}

/* FM's block of feature j (fs floats): in the thread's replica for a hot
 * feature (noted as touched when `touch`), else in F. */
static inline float *fm_hot_block(float *F, fm_idx j, fm_idx fs, const uint16_t *slot, fm_replica *r,
                                  int touch) {
    const fm_idx s = slot[j];
    if (!s) return F + j * fs;
    if (touch) fm_hot_touch(r, s);
    return r->local + (s - 1) * fs;
}

/* The linear weight of feature j (llen floats): in the thread's replica for
 * a hot feature (touched with its blocks: a row's linear terms may come
 * first), else in L. */
static inline float *fm_hot_linear(float *L, fm_idx j, fm_idx ls, const uint16_t *slot, fm_replica *r) {
    const fm_idx s = slot[j];
    if (!s || !r->llen) return L + j * ls;
    fm_hot_touch(r, s);
    return r->local + r->lbase + (s - 1) * r->llen;
}

/* fm_prefetch_features (ffm_f32.h) of a thread with a replica: a hot
 * feature's blocks are loaded from where the row will read them, the
 * replica once touched, else the shared model (which the touch copies). */
FM_INLINE void fm_prefetch_features_hot(const float *F, fm_idx row_bytes, const int *feat, fm_idx nnz,
                                            fm_idx n, const uint16_t *slot, const fm_replica *r) {
#if defined(__GNUC__)
    for (fm_idx i = 0; i < nnz; i++) {
        if (feat[i] >= n) continue;
        const fm_idx s = slot[feat[i]];
        const char *p = (s && r->mark[s - 1]) ? (const char *)(r->local + (s - 1) * r->hlen)
                                              : (const char *)F + (fm_idx)feat[i] * row_bytes;
        for (fm_idx off = 0; off < row_bytes; off += 64) __builtin_prefetch(p + off, 0, 1);
    }
#else
    (void)F; (void)row_bytes; (void)feat; (void)nnz; (void)n; (void)slot; (void)r;
#endif
}

/* The distance from F to p in floats (both float arrays). */
static inline fm_idx fm_float_distance(const float *F, const float *p) {
    return (fm_idx)(((intptr_t)p - (intptr_t)F) / (intptr_t)sizeof(float));
}

/* shared += local - snap; local = snap = shared, over n floats. */
static inline void fm_fold(float *__restrict g, float *__restrict l, float *__restrict s, fm_idx n) {
    for (fm_idx e = 0; e < n; e++) {
        const float v = g[e] + (l[e] - s[e]);
        g[e] = v;
        l[e] = v;
        s[e] = v;
    }
}

/* shared += local - snap, over n floats (local and snap are taken again at
 * the next touch). */
static inline void fm_fold_in(float *__restrict g, const float *__restrict l, const float *__restrict s,
                              fm_idx n) {
    for (fm_idx e = 0; e < n; e++) g[e] += l[e] - s[e];
}

/* Fold the touched features of tier t of a replica into the shared model
 * (under the lock) and note them as untouched: the thread takes the shared
 * values again, the other threads' changes with them, when a row next
 * touches one. */
static void fm_hot_exchange(fm_replica *r, int t) {
    const uint16_t *touched = r->touched + r->split[t];
    const fm_idx hlen = r->hlen, llen = r->llen, lbase = r->lbase;
    const int *hot = r->ids;
    float *F = r->F, *L = r->L;
    for (fm_idx i = 0; i < r->n_touched[t]; i++) {
        const fm_idx h = touched[i];
        fm_fold_in(F + (fm_idx)hot[h] * hlen, r->local + h * hlen, r->snap + h * hlen, hlen);
        if (llen) fm_fold_in(L + (fm_idx)hot[h] * llen, r->local + lbase + h * llen, r->snap + lbase + h * llen, llen);
        r->mark[h] = 0;
    }
    r->n_touched[t] = 0;
    r->since[t] = 0;
}

/* Exchange the linear weights of tier t's touched features only (they stay
 * touched until the tier's next whole exchange). */
static void fm_hot_exchange_linear(fm_replica *r, int t) {
    const uint16_t *touched = r->touched + r->split[t];
    const fm_idx llen = r->llen, lbase = r->lbase;
    const int *hot = r->ids;
    float *L = r->L;
    for (fm_idx i = 0; i < r->n_touched[t]; i++) {
        const fm_idx h = touched[i];
        fm_fold(L + (fm_idx)hot[h] * llen, r->local + lbase + h * llen, r->snap + lbase + h * llen, llen);
    }
    r->lsince[t] = 0;
}

static inline int fm_try_lock(volatile int *lock) {
#if defined(_MSC_VER)
    return _InterlockedExchange((volatile long *)lock, 1) == 0;
#else
    return __atomic_exchange_n(lock, 1, __ATOMIC_ACQUIRE) == 0;
#endif
}

static inline void fm_unlock(volatile int *lock) {
#if defined(_MSC_VER)
    _InterlockedExchange((volatile long *)lock, 0);
#else
    __atomic_store_n(lock, 0, __ATOMIC_RELEASE);
#endif
}

static inline void fm_lock(volatile int *lock) {
    while (!fm_try_lock(lock))
        while (*lock) {
        }
}

/* A thread's copy of a small array that every row writes: the bias, and
 * FwFM's and FmFM's field-pair weights (every row writes almost all of
 * them).  Written in place by every thread, their cache lines would move
 * between the cores at every row; the copies are exchanged with the shared
 * array as the replicas are (shared += local - snap; local = snap = shared),
 * every `every` of the thread's rows and at the end of a pass. */
typedef struct {
    float *local;
    float *snap;
    fm_idx len;
    fm_idx every;
    fm_idx since;
} fm_copy;

/* Start a copy from the shared array (see fm_hot_touch on snap). */
static void fm_copy_load(const float *shared, fm_copy *c) {
    memcpy(c->local, shared, sizeof(float) * (size_t)c->len);
    memcpy(c->snap, c->local, sizeof(float) * (size_t)c->len);
    c->since = 0;
}

/* Fold a copy's changes into the shared array and take the others' (under the lock). */
static void fm_copy_exchange(float *shared, fm_copy *c) {
    fm_fold(shared, c->local, c->snap, c->len);
    c->since = 0;
}

/* After each of the thread's rows: exchange the copy once its interval has
 * passed, if no other thread is exchanging (else after a later row). */
static inline void fm_copy_tick(float *shared, fm_copy *c, volatile int *lock) {
    if (++c->since >= c->every && fm_try_lock(lock)) {
        fm_copy_exchange(shared, c);
        fm_unlock(lock);
    }
}

/* After each of the thread's rows: exchange every tier whose interval has
 * passed, if no other thread is exchanging (else after a later row). */
static inline void fm_hot_tick(fm_replica *r, volatile int *lock) {
    for (int t = 0; t < FM_HOT_TIERS; t++) {
        if (!r->every[t]) continue;
        if (++r->since[t] >= r->every[t] && fm_try_lock(lock)) {
            fm_hot_exchange(r, t);
            r->lsince[t] = 0;
            fm_unlock(lock);
        } else if (r->llen && ++r->lsince[t] * FM_HOT_LINEAR_DIVISOR >= r->every[t] && fm_try_lock(lock)) {
            fm_hot_exchange_linear(r, t);
            fm_unlock(lock);
        }
    }
}

/* Exchange every tier (waiting for the lock): afterwards the shared model
 * holds all of the thread's changes. */
static void fm_hot_exchange_all(fm_replica *r, volatile int *lock) {
    fm_lock(lock);
    for (int t = 0; t < FM_HOT_TIERS; t++) fm_hot_exchange(r, t);
    fm_unlock(lock);
}

#endif /* FMCLI_HOT_H */
