/* Per-thread replicas of the hottest features' FFM blocks.
 *
 * With several threads, every row writes the blocks of its features in
 * place (Hogwild).  The few hundred features that most rows carry (the head
 * of a Zipf distribution) are then written by every thread all the time,
 * and each write pulls the cache line away from the other core: measured
 * on two cores, this contention cost 30-40% of the two-thread rate.
 *
 * So each thread trains those features on its own copy of their blocks
 * (weights and optimizer state) and, every so many rows, folds what it
 * changed into the shared model and takes the others' changes back:
 *
 *     shared += local - snap;   local = snap = shared
 *
 * where snap is the thread's copy as of its last exchange.
 *
 * The features are in up to FM_HOT_TIERS tiers, each with its own interval
 * (in the thread's rows): a feature on a quarter of the rows is exchanged
 * every few hundred rows, one on a hundredth of them every few thousand, so
 * that between two exchanges the other threads make about as many updates
 * to every replicated feature (its staleness) while the bytes exchanged per
 * row are a fraction of what one interval for all would cost.  Exchanges are
 * serialised by a lock (a thread that finds it taken trains on and tries
 * again after its next row), so no change is lost; each thread exchanges
 * once more at the end of the call.  Every other feature is updated in
 * place as before.  The exchange is additive, which suits SGD, AdaGrad and
 * FTRL (sums of steps and of squared gradients), not Adam's moving
 * averages.
 *
 * A prepared row addresses a replicated feature's blocks through the same
 * offsets from F as any other (see fm_ffm_prepare): the offset of the
 * thread's replica from F, plus the feature's slot in it.
 */
#ifndef FMCLI_HOT_H
#define FMCLI_HOT_H

#include <stdint.h>
#include <string.h>

#include "ffm_f32.h"   /* fm_idx */
#if defined(_MSC_VER)
#include <intrin.h>
#endif

#define FM_HOT_TIERS 4

/* A thread's replica: the blocks of the H hot features (len floats each),
 * its copy as of the last exchange, and the slots touched since then.  The
 * slots of tier t are split[t] .. split[t + 1] - 1, and so are the places
 * of its touched slots in `touched` (n_touched[t] of them); the tier is
 * exchanged every every[t] of the thread's rows (0: an empty tier). */
typedef struct {
    float *local;
    float *snap;
    uint8_t *mark;
    uint16_t *touched;
    fm_idx rep;        /* local's distance from F, in floats */
    fm_idx split[FM_HOT_TIERS + 1];
    fm_idx every[FM_HOT_TIERS];
    fm_idx n_touched[FM_HOT_TIERS];
    fm_idx since[FM_HOT_TIERS];   /* the thread's rows since the tier's last exchange */
} fm_replica;

/* The tier of slot h (0-based). */
static inline int fm_hot_tier(const fm_replica *r, fm_idx h) {
    int t = 0;
    while (t < FM_HOT_TIERS - 1 && h >= r->split[t + 1]) t++;
    return t;
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
            if (!r->mark[s - 1]) {
                const int t = fm_hot_tier(r, s - 1);
                r->mark[s - 1] = 1;
                r->touched[r->split[t] + r->n_touched[t]++] = (uint16_t)(s - 1);
            }
        } else {
            oj[c] = (fm_idx)feat[i] * m * fs;
        }
        of[c] = (fm_idx)fld[i] * fs;
        xs[c] = val[i] * scale;
        c++;
    }
    return c;
}

/* The distance from F to p in floats (both float arrays). */
static inline fm_idx fm_float_distance(const float *F, const float *p) {
    return (fm_idx)(((intptr_t)p - (intptr_t)F) / (intptr_t)sizeof(float));
}

/* Start a replica: local takes the shared values of the H features in hot
 * (len floats each, the feature's m blocks), and snap local's.  Another
 * thread may be exchanging meanwhile: snap is copied from local, not read
 * again from F, so that local - snap is this thread's changes alone (what
 * it saw half-written reaches it whole at its next exchange). */
static void fm_hot_load(const float *F, const int *hot, fm_idx H, fm_idx len, float *local,
                        float *snap) {
    for (fm_idx h = 0; h < H; h++)
        memcpy(local + h * len, F + (fm_idx)hot[h] * len, sizeof(float) * (size_t)len);
    memcpy(snap, local, sizeof(float) * (size_t)(H * len));
}

/* Exchange the touched features of tier t of a replica with the shared
 * model (under the lock).  The others are as they were: the thread changed
 * nothing, and it sees the other threads' changes to them at a later
 * exchange. */
static void fm_hot_exchange(float *F, const int *hot, fm_idx len, fm_replica *r, int t) {
    const uint16_t *touched = r->touched + r->split[t];
    for (fm_idx i = 0; i < r->n_touched[t]; i++) {
        const fm_idx h = touched[i];
        float *__restrict g = F + (fm_idx)hot[h] * len;
        float *__restrict l = r->local + h * len;
        float *__restrict s = r->snap + h * len;
        for (fm_idx e = 0; e < len; e++) {
            const float v = g[e] + (l[e] - s[e]);
            g[e] = v;
            l[e] = v;
            s[e] = v;
        }
        r->mark[h] = 0;
    }
    r->n_touched[t] = 0;
    r->since[t] = 0;
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

/* After each of the thread's rows: exchange every tier whose interval has
 * passed, if no other thread is exchanging (else after a later row). */
static inline void fm_hot_tick(float *F, const int *hot, fm_idx len, fm_replica *r, volatile int *lock) {
    for (int t = 0; t < FM_HOT_TIERS; t++) {
        if (!r->every[t]) continue;
        if (++r->since[t] >= r->every[t] && fm_try_lock(lock)) {
            fm_hot_exchange(F, hot, len, r, t);
            fm_unlock(lock);
        }
    }
}

/* At the end of a pass: exchange every tier (waiting for the lock). */
static void fm_hot_exchange_all(float *F, const int *hot, fm_idx len, fm_replica *r, volatile int *lock) {
    fm_lock(lock);
    for (int t = 0; t < FM_HOT_TIERS; t++) fm_hot_exchange(F, hot, len, r, t);
    fm_unlock(lock);
}

/* Start a pass: nothing touched, no rows since an exchange. */
static void fm_hot_reset(fm_replica *r, fm_idx H) {
    memset(r->mark, 0, (size_t)H);
    for (int t = 0; t < FM_HOT_TIERS; t++) r->n_touched[t] = r->since[t] = 0;
}

#endif /* FMCLI_HOT_H */
