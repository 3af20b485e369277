/* SPDX-License-Identifier: MIT */
/*
 * A fault-injecting fake tier for the cache manager tests (header only).
 *
 * Behaves like a persistent tier: it stores a deep copy (entry_dup) of what
 * is put and hands out a fresh copy on get, as L2/L3 do after
 * (de)serialising, so the manager's access-statistics bumps on a returned
 * entry never reach the stored copy. Optionally bounded with exact LRU
 * (get and put move to MRU, TIER_PUT_NOTOUCH keeps the position of an
 * existing key), like the real L2.
 *
 * Fault injection (set the fields directly between calls):
 *  - fail_next: the next N data operations fail with fail_err (default
 *    -EIO); fail_always: every data operation fails until cleared.
 *  - probe_fails: probe() returns fail_err (probe also fails while
 *    fail_always is set).
 *  - corrupt_key: the next get of that key removes it and returns -EBADMSG
 *    (as a tier does for a corrupt record), counting it in corrupt.
 *  - keep_after_close: close() leaves the fake alive for inspection.
 *
 * Thread-safety: one mutex guards everything, so the fake can be used from
 * the threaded tests. Ownership: the cache that receives the tier closes
 * it; tests keep the pointer only to inject faults and inspect contents
 * while the cache is open.
 */
#ifndef TESTS_UNIT_FAKE_TIER_H
#define TESTS_UNIT_FAKE_TIER_H

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "storage/entry.h"
#include "storage/tier.h"

struct fake_slot {
    struct entry *e; /* own copy */
    uint64_t stamp;  /* LRU clock of the last touch */
};

struct fake_tier {
    struct tier base; /* must be first */
    pthread_mutex_t mu;
    size_t cap; /* 0 = unbounded */
    struct fake_slot *v;
    size_t n, vcap;
    uint64_t clock;
    /* fault injection */
    int fail_err;
    int fail_next;
    bool fail_always;
    bool probe_fails;
    char corrupt_key[ENTRY_KEY_LEN + 1];
    uint64_t corrupt;
    /* close() only marks it closed; the test frees it with
     * fake_tier_free() after looking at what the cache left in it. */
    bool keep_after_close;
    bool closed;
    /* operation counts */
    unsigned n_get, n_put, n_put_batch, n_del, n_probe, n_clear, n_sweep;
};

static inline struct fake_tier *fake_of(struct tier *t)
{
    return (struct fake_tier *)t;
}

/* mu held: consume one injected failure. */
static inline int fake_fault(struct fake_tier *f)
{
    if (f->fail_always)
        return f->fail_err;
    if (f->fail_next > 0) {
        f->fail_next--;
        return f->fail_err;
    }
    return 0;
}

/* mu held */
static inline long fake_find(struct fake_tier *f, const char *key)
{
    for (size_t i = 0; i < f->n; i++)
        if (strcmp(f->v[i].e->key, key) == 0)
            return (long)i;
    return -1;
}

/* mu held: remove slot i, returning its entry (caller unrefs). */
static inline struct entry *fake_remove_at(struct fake_tier *f, size_t i)
{
    struct entry *e = f->v[i].e;
    f->v[i] = f->v[--f->n];
    return e;
}

static int fake_get(struct tier *t, const char *key, struct entry **out)
{
    struct fake_tier *f = fake_of(t);
    struct entry *gone = NULL;
    long i;
    int err;

    pthread_mutex_lock(&f->mu);
    f->n_get++;
    err = fake_fault(f);
    if (err)
        goto out;
    i = fake_find(f, key);
    if (i < 0) {
        err = -ENOENT;
        goto out;
    }
    if (strcmp(f->corrupt_key, key) == 0) {
        gone = fake_remove_at(f, (size_t)i);
        f->corrupt_key[0] = '\0';
        f->corrupt++;
        err = -EBADMSG;
        goto out;
    }
    *out = entry_dup(f->v[i].e);
    if (!*out) {
        err = -ENOMEM;
        goto out;
    }
    f->v[i].stamp = ++f->clock;
out:
    pthread_mutex_unlock(&f->mu);
    entry_unref(gone);
    return err;
}

/* mu held: insert or replace a copy of e; a victim (if bounded and full)
 * is returned in *victim. */
static inline int fake_put_locked(struct fake_tier *f, struct entry *e,
                                  unsigned flags, struct entry **victim,
                                  struct entry **old)
{
    struct entry *copy = entry_dup(e);
    long i;

    if (!copy)
        return -ENOMEM;
    i = fake_find(f, e->key);
    if (i >= 0) {
        *old = f->v[i].e;
        f->v[i].e = copy;
        if (!(flags & TIER_PUT_NOTOUCH))
            f->v[i].stamp = ++f->clock;
        return 0;
    }
    if (f->n == f->vcap) {
        size_t nc = f->vcap ? f->vcap * 2 : 16;
        struct fake_slot *nv = realloc(f->v, nc * sizeof(*nv));
        if (!nv) {
            entry_unref(copy);
            return -ENOMEM;
        }
        f->v = nv;
        f->vcap = nc;
    }
    f->v[f->n].e = copy;
    f->v[f->n].stamp = ++f->clock;
    f->n++;
    if (f->cap && f->n > f->cap) {
        size_t lru = 0;
        for (size_t j = 1; j < f->n; j++)
            if (f->v[j].stamp < f->v[lru].stamp)
                lru = j;
        *victim = fake_remove_at(f, lru);
    }
    return 0;
}

static int fake_put(struct tier *t, struct entry *e, unsigned flags,
                    struct entry **victim)
{
    struct fake_tier *f = fake_of(t);
    struct entry *v = NULL, *old = NULL;
    int err;

    pthread_mutex_lock(&f->mu);
    f->n_put++;
    err = fake_fault(f);
    if (!err)
        err = fake_put_locked(f, e, flags, &v, &old);
    pthread_mutex_unlock(&f->mu);
    entry_unref(old);
    if (v) {
        if (victim)
            *victim = v;
        else
            entry_unref(v);
    }
    return err;
}

static int fake_put_batch(struct tier *t, struct entry *const *es, size_t n,
                          size_t *n_victims)
{
    struct fake_tier *f = fake_of(t);
    size_t nv = 0;
    int err;

    pthread_mutex_lock(&f->mu);
    f->n_put_batch++;
    err = fake_fault(f);
    for (size_t i = 0; i < n && !err; i++) {
        struct entry *v = NULL, *old = NULL;
        err = fake_put_locked(f, es[i], 0, &v, &old);
        if (v)
            nv++;
        /* Not the last references in these tests' use; released under
         * the fake's own lock for simplicity. */
        entry_unref(v);
        entry_unref(old);
    }
    pthread_mutex_unlock(&f->mu);
    if (n_victims)
        *n_victims = nv;
    return err;
}

static int fake_del(struct tier *t, const char *key)
{
    struct fake_tier *f = fake_of(t);
    struct entry *gone = NULL;
    long i;
    int err;

    pthread_mutex_lock(&f->mu);
    f->n_del++;
    err = fake_fault(f);
    if (!err) {
        i = fake_find(f, key);
        if (i < 0)
            err = -ENOENT;
        else
            gone = fake_remove_at(f, (size_t)i);
    }
    pthread_mutex_unlock(&f->mu);
    entry_unref(gone);
    return err;
}

static int fake_cmp_key(const void *a, const void *b)
{
    return strcmp((*(struct entry *const *)a)->key,
                  (*(struct entry *const *)b)->key);
}

/* Deliver copies[0..n) to cb (in order) and release them. */
static inline int fake_deliver(struct entry **copies, size_t n,
                               tier_entry_cb cb, void *arg)
{
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        if (!rc)
            rc = cb(arg, copies[i]);
        entry_unref(copies[i]);
    }
    free(copies);
    return rc;
}

static int fake_scan(struct tier *t, const struct tier_filter *flt,
                     const char *after, size_t max, tier_entry_cb cb, void *arg)
{
    struct fake_tier *f = fake_of(t);
    struct entry **got;
    size_t n = 0;
    int err;

    pthread_mutex_lock(&f->mu);
    err = fake_fault(f);
    if (err) {
        pthread_mutex_unlock(&f->mu);
        return err;
    }
    got = calloc(f->n + 1, sizeof(*got));
    if (!got) {
        pthread_mutex_unlock(&f->mu);
        return -ENOMEM;
    }
    for (size_t i = 0; i < f->n; i++) {
        struct entry *e = f->v[i].e;
        if (strcmp(e->key, after ? after : "") > 0 && tier_filter_match(flt, e))
            got[n++] = entry_dup(e);
    }
    pthread_mutex_unlock(&f->mu);
    qsort(got, n, sizeof(*got), fake_cmp_key);
    while (n > max)
        entry_unref(got[--n]);
    return fake_deliver(got, n, cb, arg);
}

static int fake_sample(struct tier *t, const struct tier_filter *flt,
                       size_t max, uint64_t seed, tier_entry_cb cb, void *arg)
{
    struct fake_tier *f = fake_of(t);
    struct entry **got;
    size_t n = 0;
    uint64_t x = seed | 1;
    int err;

    pthread_mutex_lock(&f->mu);
    err = fake_fault(f);
    if (err) {
        pthread_mutex_unlock(&f->mu);
        return err;
    }
    got = calloc(f->n + 1, sizeof(*got));
    if (!got) {
        pthread_mutex_unlock(&f->mu);
        return -ENOMEM;
    }
    for (size_t i = 0; i < f->n; i++)
        if (tier_filter_match(flt, f->v[i].e))
            got[n++] = entry_dup(f->v[i].e);
    pthread_mutex_unlock(&f->mu);
    /* Fisher-Yates with xorshift64, then keep max. */
    for (size_t i = n; i > 1; i--) {
        size_t j;
        struct entry *tmp;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        j = (size_t)(x % i);
        tmp = got[i - 1];
        got[i - 1] = got[j];
        got[j] = tmp;
    }
    while (n > max)
        entry_unref(got[--n]);
    return fake_deliver(got, n, cb, arg);
}

static int fake_sweep(struct tier *t, int64_t now_ms, size_t max,
                      size_t *removed)
{
    struct fake_tier *f = fake_of(t);
    size_t n = 0;
    int err;

    pthread_mutex_lock(&f->mu);
    f->n_sweep++;
    err = fake_fault(f);
    for (size_t i = 0; !err && i < f->n && n < max;) {
        if (entry_expired(f->v[i].e, now_ms)) {
            entry_unref(fake_remove_at(f, i));
            n++;
        } else {
            i++;
        }
    }
    pthread_mutex_unlock(&f->mu);
    if (removed)
        *removed = n;
    return err;
}

static int fake_clear(struct tier *t, size_t *removed)
{
    struct fake_tier *f = fake_of(t);
    size_t n = 0;
    int err;

    pthread_mutex_lock(&f->mu);
    f->n_clear++;
    err = fake_fault(f);
    if (!err) {
        n = f->n;
        while (f->n)
            entry_unref(fake_remove_at(f, f->n - 1));
    }
    pthread_mutex_unlock(&f->mu);
    if (removed)
        *removed = n;
    return err;
}

static size_t fake_size(struct tier *t)
{
    struct fake_tier *f = fake_of(t);
    size_t n;
    pthread_mutex_lock(&f->mu);
    n = f->n;
    pthread_mutex_unlock(&f->mu);
    return n;
}

static uint64_t fake_corrupt_count(struct tier *t)
{
    struct fake_tier *f = fake_of(t);
    uint64_t n;
    pthread_mutex_lock(&f->mu);
    n = f->corrupt;
    pthread_mutex_unlock(&f->mu);
    return n;
}

static int fake_probe(struct tier *t)
{
    struct fake_tier *f = fake_of(t);
    int err = 0;
    pthread_mutex_lock(&f->mu);
    f->n_probe++;
    if (f->fail_always || f->probe_fails)
        err = f->fail_err;
    pthread_mutex_unlock(&f->mu);
    return err;
}

static inline void fake_tier_free(struct fake_tier *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->n; i++)
        entry_unref(f->v[i].e);
    free(f->v);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

static void fake_close(struct tier *t)
{
    struct fake_tier *f = fake_of(t);
    if (!f)
        return;
    if (f->keep_after_close) {
        f->closed = true;
        return;
    }
    fake_tier_free(f);
}

static const struct tier_ops fake_ops_l2 = {
    .name = "l2",
    .get = fake_get,
    .put = fake_put,
    .put_batch = fake_put_batch,
    .del = fake_del,
    .scan = fake_scan,
    .sample = fake_sample,
    .sweep = fake_sweep,
    .clear = fake_clear,
    .size = fake_size,
    .corrupt_count = fake_corrupt_count,
    .probe = fake_probe,
    .maintain = NULL,
    .close = fake_close,
};

static const struct tier_ops fake_ops_l3 = {
    .name = "l3",
    .get = fake_get,
    .put = fake_put,
    .put_batch = fake_put_batch,
    .del = fake_del,
    .scan = fake_scan,
    .sample = fake_sample,
    .sweep = fake_sweep,
    .clear = fake_clear,
    .size = fake_size,
    .corrupt_count = fake_corrupt_count,
    .probe = fake_probe,
    .maintain = NULL,
    .close = fake_close,
};

/* A new fake tier; name "l2" or "l3" (only the ops table's name differs);
 * cap 0 = unbounded. Aborts the test on ENOMEM. */
static inline struct fake_tier *fake_tier_new(const char *name, size_t cap)
{
    struct fake_tier *f = calloc(1, sizeof(*f));
    if (!f)
        abort();
    f->base.ops = strcmp(name, "l3") == 0 ? &fake_ops_l3 : &fake_ops_l2;
    f->cap = cap;
    f->fail_err = -EIO;
    pthread_mutex_init(&f->mu, NULL);
    return f;
}

/* A copy of the stored entry for key (new reference) or NULL; no LRU touch,
 * no fault. */
static inline struct entry *fake_peek(struct fake_tier *f, const char *key)
{
    struct entry *e = NULL;
    long i;
    pthread_mutex_lock(&f->mu);
    i = fake_find(f, key);
    if (i >= 0)
        e = entry_dup(f->v[i].e);
    pthread_mutex_unlock(&f->mu);
    return e;
}

static inline bool fake_has(struct fake_tier *f, const char *key)
{
    struct entry *e = fake_peek(f, key);
    entry_unref(e);
    return e != NULL;
}

/* Store a copy of e directly (no fault, no LRU bound), e.g. to plant data. */
static inline void fake_plant(struct fake_tier *f, struct entry *e)
{
    struct entry *v = NULL, *old = NULL;
    size_t cap;
    pthread_mutex_lock(&f->mu);
    cap = f->cap;
    f->cap = 0;
    (void)fake_put_locked(f, e, 0, &v, &old);
    f->cap = cap;
    pthread_mutex_unlock(&f->mu);
    entry_unref(old);
    entry_unref(v);
}

static inline void fake_set_fail(struct fake_tier *f, bool always, int next,
                                 int err)
{
    pthread_mutex_lock(&f->mu);
    f->fail_always = always;
    f->fail_next = next;
    if (err)
        f->fail_err = err;
    pthread_mutex_unlock(&f->mu);
}

static inline void fake_set_corrupt(struct fake_tier *f, const char *key)
{
    pthread_mutex_lock(&f->mu);
    snprintf(f->corrupt_key, sizeof f->corrupt_key, "%s", key);
    pthread_mutex_unlock(&f->mu);
}

#endif
