/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the cache manager (storage/cache.c) over a real L1 and
 * fault-injecting fake L2/L3 tiers (tests/unit/fake_tier.h), with the fake
 * wall clock:
 *  - a randomized run against a naive reference model (SQLite's Bitvec
 *    self-test idea): thousands of upserts, gets, deletes, health reports,
 *    clears, clock jumps, sweeps and lists, comparing every visible result
 *    and checking cross-tier invariants after each operation;
 *  - degradation and recovery (fault injection), the pending-L3 queue and
 *    its replay, L2 recovery;
 *  - exact tier movement (served tiers, promotion/demotion/eviction counts);
 *  - TTL (ttl 0, lazy expiry, sweep, the sweeper thread), health threshold,
 *    corruption (tier -EBADMSG and tokens no key verifies), stats;
 *  - list (merge, dedupe, paging), pick (filters, weights), batch
 *    semantics, and a threaded run (for ThreadSanitizer) checking that no
 *    acknowledged write is lost to concurrent promotions.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "storage/cache.h"
#include "storage/crypto.h"
#include "storage/entry.h"
#include "storage/l1_mem.h"
#include "storage/sweeper.h"
#include "common/svc.h"
#include "tests/unit/fake_tier.h"
#include "tests/unit/testutil.h"

#define T0       1764064800000LL /* 2025-11-25T10:00:00Z */
#define ALL_MASK CACHE_ALL_TIERS
#define M(t)     CACHE_TIER_MASK(t)

static void setup(void)
{
    log_set_level(LOG_LEVEL_ERROR);
    clock_set_fake(T0);
}

static void teardown(void)
{
    clock_clear_fake();
}

/* ---------------------------------------------------------------------- */
/* Helpers                                                                */

static struct entry *mk(int i, const char *source, int64_t fetch, int64_t ttl)
{
    return testutil_entry(i, source, fetch, ttl);
}

static void key_of(int i, char out[ENTRY_KEY_LEN + 1])
{
    struct entry *e = mk(i, NULL, T0, 1);
    memcpy(out, e->key, ENTRY_KEY_LEN + 1);
    entry_unref(e);
}

struct fixture {
    struct cache *c;
    struct tier *l1;
    struct fake_tier *l2, *l3;
};

static struct cache_config base_cfg(void)
{
    struct cache_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.data_dir = "/nonexistent";
    cfg.l1_capacity = 4;
    cfg.l2_capacity = 8;
    cfg.failure_threshold = 3;
    cfg.default_ttl = 3600;
    return cfg;
}

/* l2cap 0: no L2. with_l3 false: no L3. */
static void fx_open_cfg(struct fixture *fx, size_t l1cap, size_t l2cap,
                        bool with_l3, const struct cache_config *cfg)
{
    memset(fx, 0, sizeof(*fx));
    ck_assert_int_eq(l1_mem_open(l1cap, &fx->l1), 0);
    if (l2cap)
        fx->l2 = fake_tier_new("l2", l2cap);
    if (with_l3)
        fx->l3 = fake_tier_new("l3", 0);
    ck_assert_int_eq(
        cache_new_with_tiers(cfg, fx->l1, fx->l2 ? &fx->l2->base : NULL,
                             fx->l3 ? &fx->l3->base : NULL, &fx->c),
        0);
}

static void fx_open(struct fixture *fx, size_t l1cap, size_t l2cap,
                    bool with_l3)
{
    struct cache_config cfg = base_cfg();
    cfg.l1_capacity = l1cap;
    cfg.l2_capacity = l2cap ? l2cap : 1;
    fx_open_cfg(fx, l1cap, l2cap, with_l3, &cfg);
}

static void fx_close(struct fixture *fx)
{
    cache_close(fx->c);
    memset(fx, 0, sizeof(*fx));
}

/* Upsert one entry (consumed); returns the outcome, asserts success. */
static enum cache_outcome up(struct cache *c, struct entry *e, unsigned fields,
                             unsigned flags, unsigned *mask)
{
    struct cache_item it = {e, fields, -1, CACHE_UNCHANGED};
    unsigned m = 0;
    ck_assert_int_eq(cache_upsert(c, &it, 1, flags, &m), 0);
    ck_assert_int_eq(it.err, 0);
    entry_unref(e);
    if (mask)
        *mask = m;
    return it.outcome;
}

/* get; returns the served tier or -1 on miss. */
static int get_tier(struct cache *c, int i, struct entry **out)
{
    char key[ENTRY_KEY_LEN + 1];
    struct entry *e = NULL;
    enum cache_tier t = CACHE_NTIERS;
    int err;

    key_of(i, key);
    err = cache_get(c, key, &e, &t);
    if (err) {
        ck_assert_int_eq(err, -ENOENT);
        if (out)
            *out = NULL;
        return -1;
    }
    ck_assert_str_eq(e->key, key);
    if (out)
        *out = e;
    else
        entry_unref(e);
    return (int)t;
}

static int find_cb(void *arg, struct entry *e)
{
    const char *key = arg;
    return strcmp(e->key, key) == 0 ? 1 : 0;
}

/* Does L1 hold key i (any expiry)? No LRU touch. */
static bool l1_has(struct tier *l1, int i)
{
    char key[ENTRY_KEY_LEN + 1];
    struct tier_filter f;
    key_of(i, key);
    tier_filter_init(&f, INT64_MIN);
    return l1->ops->scan(l1, &f, "", SIZE_MAX, find_cb, key) == 1;
}

static bool fk_has(struct fake_tier *f, int i)
{
    char key[ENTRY_KEY_LEN + 1];
    key_of(i, key);
    return fake_has(f, key);
}

static struct cache_stats stats(struct cache *c)
{
    struct cache_stats s;
    cache_stats_snapshot(c, &s);
    return s;
}

/* ---------------------------------------------------------------------- */
/* (1) Randomized run against a reference model                           */

#define MK 24 /* keys */

struct mentry {
    bool present;
    char source[16];
    int64_t fetch, ttl, expires;
    int health;
    uint32_t fails;
};

struct model {
    struct mentry e[MK];
};

static bool m_visible(const struct model *m, int i, int64_t now)
{
    return m->e[i].present && m->e[i].expires > now;
}

static uint64_t rnd_state;

static uint64_t rnd(void)
{
    uint64_t x = rnd_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    rnd_state = x;
    return x;
}

static unsigned rn(unsigned n)
{
    return (unsigned)(rnd() % n);
}

static void assert_matches(const struct entry *e, const struct mentry *m,
                           const char *what, unsigned step)
{
    ck_assert_msg(strcmp(e->source, m->source) == 0,
                  "step %u %s: source %s != %s", step, what, e->source,
                  m->source);
    ck_assert_msg(e->fetch_time == m->fetch && e->ttl_seconds == m->ttl &&
                      e->expires_at == m->expires,
                  "step %u %s: times differ", step, what);
    ck_assert_msg((int)e->health == m->health && e->failure_count == m->fails,
                  "step %u %s: health %d/%u != %d/%u", step, what, e->health,
                  e->failure_count, m->health, m->fails);
}

struct collect {
    struct entry *v[256];
    size_t n;
};

static int collect(void *arg, struct entry *e)
{
    struct collect *k = arg;
    ck_assert_uint_lt(k->n, 256);
    k->v[k->n++] = entry_ref(e);
    return 0;
}

static void collect_free(struct collect *k)
{
    for (size_t i = 0; i < k->n; i++)
        entry_unref(k->v[i]);
    k->n = 0;
}

static int key_index(const char *key, char keys[MK][ENTRY_KEY_LEN + 1])
{
    for (int i = 0; i < MK; i++)
        if (strcmp(keys[i], key) == 0)
            return i;
    return -1;
}

/* Every copy in every tier is either the model's visible version or
 * expired; L3 holds every visible entry; capacities hold. */
static void check_tiers(struct fixture *fx, const struct model *m,
                        char keys[MK][ENTRY_KEY_LEN + 1], int64_t now,
                        unsigned step)
{
    struct tier *tiers[3] = {fx->l1, &fx->l2->base, &fx->l3->base};
    struct tier_filter all;
    bool in_l3[MK] = {false};

    tier_filter_init(&all, INT64_MIN);
    ck_assert_uint_le(fx->l1->ops->size(fx->l1), 4);
    ck_assert_uint_le(fake_size(&fx->l2->base), 8);
    for (int t = 0; t < 3; t++) {
        struct collect *k = calloc(1, sizeof(*k));
        /* Read the fakes without faults or LRU effects: scan is both. */
        ck_assert_int_eq(
            tiers[t]->ops->scan(tiers[t], &all, "", SIZE_MAX, collect, k), 0);
        for (size_t j = 0; j < k->n; j++) {
            struct entry *e = k->v[j];
            int i = key_index(e->key, keys);
            ck_assert_int_ge(i, 0);
            if (t == 2)
                in_l3[i] = true;
            if (entry_expired(e, now))
                continue;
            ck_assert_msg(m_visible(m, i, now),
                          "step %u: tier %d holds key %d the model lacks", step,
                          t, i);
            assert_matches(e, &m->e[i],
                           t == 0   ? "l1"
                           : t == 1 ? "l2"
                                    : "l3",
                           step);
        }
        collect_free(k);
        free(k);
    }
    for (int i = 0; i < MK; i++)
        ck_assert_msg(!m_visible(m, i, now) || in_l3[i],
                      "step %u: visible key %d missing from L3", step, i);
}

static const int64_t ttls[] = {0, 1, 2, 5, 30, 3600};

static void model_run(uint64_t seed, unsigned steps)
{
    struct fixture fx;
    struct model m;
    char keys[MK][ENTRY_KEY_LEN + 1];
    uint64_t gets = 0;

    memset(&m, 0, sizeof m);
    rnd_state = seed;
    for (int i = 0; i < MK; i++)
        key_of(i, keys[i]);
    clock_set_fake(T0);
    fx_open(&fx, 4, 8, true);

    for (unsigned step = 0; step < steps; step++) {
        int64_t now = clock_now_ms();
        unsigned op = rn(100);

        if (op < 30) {
            /* upsert batch of 1..4, sometimes 9..12 (more than L2 holds);
             * duplicates possible */
            struct cache_item items[12];
            enum cache_outcome want[12];
            unsigned n = rn(10) ? 1 + rn(4) : 9 + rn(4),
                     flags = rn(5) == 0 ? CACHE_UPSERT_NEWER_ONLY : 0;
            unsigned mask = 0;
            for (unsigned j = 0; j < n; j++) {
                int i = (int)rn(MK);
                char src[16];
                struct entry *e;
                struct mentry *me = &m.e[i];
                unsigned fields = CACHE_F_SOURCE;
                if (rn(2))
                    fields |= CACHE_F_FETCH_TIME;
                if (rn(2))
                    fields |= CACHE_F_TTL;
                if (rn(3) == 0)
                    fields |= CACHE_F_HEALTH;
                snprintf(src, sizeof src, "s%u", rn(5));
                e = mk(i, src, now - (int64_t)rn(2000),
                       ttls[rn(SVC_ARRAY_LEN(ttls))]);
                e->health = (enum entry_health)rn(3);
                e->failure_count = rn(3);
                items[j] = (struct cache_item){e, fields, -1, CACHE_CREATED};
                /* model, sequentially */
                if (m_visible(&m, i, now) &&
                    (flags & CACHE_UPSERT_NEWER_ONLY) &&
                    !(e->fetch_time > me->fetch)) {
                    want[j] = CACHE_UNCHANGED;
                    continue;
                }
                if (m_visible(&m, i, now)) {
                    want[j] = CACHE_UPDATED;
                    snprintf(me->source, sizeof me->source, "%s", src);
                    if (fields & CACHE_F_FETCH_TIME)
                        me->fetch = e->fetch_time;
                    if (fields & CACHE_F_TTL)
                        me->ttl = e->ttl_seconds;
                    if (fields & CACHE_F_HEALTH) {
                        me->health = (int)e->health;
                        me->fails = e->failure_count;
                    }
                } else {
                    want[j] = CACHE_CREATED;
                    snprintf(me->source, sizeof me->source, "%s", src);
                    me->fetch = e->fetch_time;
                    me->ttl = e->ttl_seconds;
                    me->health = (int)e->health;
                    me->fails = e->failure_count;
                }
                me->expires = me->fetch + me->ttl * 1000;
                me->present = true;
            }
            ck_assert_int_eq(cache_upsert(fx.c, items, n, flags, &mask), 0);
            ck_assert_uint_eq(mask, ALL_MASK);
            for (unsigned j = 0; j < n; j++) {
                ck_assert_int_eq(items[j].err, 0);
                ck_assert_msg(items[j].outcome == want[j],
                              "step %u item %u: outcome %d want %d", step, j,
                              items[j].outcome, want[j]);
                entry_unref(items[j].entry);
            }
        } else if (op < 60) {
            int i = (int)rn(MK);
            struct entry *e = NULL;
            int t = get_tier(fx.c, i, &e);
            gets++;
            ck_assert_msg((t >= 0) == m_visible(&m, i, now),
                          "step %u: get key %d visible=%d model=%d", step, i,
                          t >= 0, m_visible(&m, i, now));
            if (e) {
                assert_matches(e, &m.e[i], "get", step);
                entry_unref(e);
            }
        } else if (op < 68) {
            int i = (int)rn(MK);
            int err = cache_delete(fx.c, keys[i]);
            ck_assert_int_eq(err, m_visible(&m, i, now) ? 0 : -ENOENT);
            m.e[i].present = false;
        } else if (op < 78) {
            int i = (int)rn(MK);
            bool ok = rn(2), evicted = false;
            struct entry *e = NULL;
            int err = cache_report_health(fx.c, keys[i], ok, &e, &evicted);
            if (!m_visible(&m, i, now)) {
                ck_assert_int_eq(err, -ENOENT);
            } else {
                struct mentry *me = &m.e[i];
                ck_assert_int_eq(err, 0);
                if (ok) {
                    me->fails = 0;
                    me->health = ENTRY_HEALTH_HEALTHY;
                } else {
                    me->fails++;
                    me->health = ENTRY_HEALTH_UNHEALTHY;
                }
                ck_assert(evicted == (!ok && me->fails >= 3));
                if (evicted) {
                    me->present = false;
                    ck_assert_ptr_null(e);
                } else {
                    assert_matches(e, me, "health", step);
                }
            }
            entry_unref(e);
        } else if (op < 80) {
            size_t removed = 0, vis = 0;
            for (int i = 0; i < MK; i++)
                vis += m_visible(&m, i, now);
            ck_assert_int_eq(cache_clear(fx.c, &removed), 0);
            ck_assert_uint_ge(removed, vis);
            ck_assert_uint_le(removed, MK);
            for (int i = 0; i < MK; i++)
                m.e[i].present = false;
        } else if (op < 90) {
            clock_advance_ms((int64_t)rn(2500));
        } else if (op < 95) {
            struct tier_filter all;
            struct collect *k = calloc(1, sizeof(*k));
            (void)cache_sweep(fx.c, now, 1000);
            /* Nothing expired is left in any tier. */
            tier_filter_init(&all, INT64_MIN);
            ck_assert_int_eq(
                fx.l1->ops->scan(fx.l1, &all, "", SIZE_MAX, collect, k), 0);
            ck_assert_int_eq(
                fake_scan(&fx.l2->base, &all, "", SIZE_MAX, collect, k), 0);
            ck_assert_int_eq(
                fake_scan(&fx.l3->base, &all, "", SIZE_MAX, collect, k), 0);
            for (size_t j = 0; j < k->n; j++)
                ck_assert(!entry_expired(k->v[j], now));
            collect_free(k);
            free(k);
        } else {
            /* list everything in pages; compare with the model */
            struct tier_filter f;
            struct collect *k = calloc(1, sizeof(*k));
            char after[ENTRY_KEY_LEN + 1] = "";
            size_t limit = 1 + rn(6), vis = 0;
            bool more = true;
            tier_filter_init(&f, now);
            while (more) {
                size_t before = k->n;
                ck_assert_int_eq(cache_list(fx.c, &f, ALL_MASK, after, limit,
                                            collect, k, &more),
                                 0);
                ck_assert_uint_le(k->n - before, limit);
                if (k->n == before)
                    break;
                snprintf(after, sizeof after, "%s", k->v[k->n - 1]->key);
            }
            for (size_t j = 0; j < k->n; j++) {
                int i = key_index(k->v[j]->key, keys);
                if (j)
                    ck_assert_int_gt(strcmp(k->v[j]->key, k->v[j - 1]->key), 0);
                ck_assert(m_visible(&m, i, now));
                assert_matches(k->v[j], &m.e[i], "list", step);
            }
            for (int i = 0; i < MK; i++)
                vis += m_visible(&m, i, now);
            ck_assert_uint_eq(k->n, vis);
            collect_free(k);
            free(k);
        }
        check_tiers(&fx, &m, keys, clock_now_ms(), step);
    }
    {
        struct cache_stats s = stats(fx.c);
        ck_assert_uint_eq(s.lookups, gets);
        ck_assert_uint_eq(s.hits + s.misses, gets);
        ck_assert_uint_eq(s.tier[CACHE_L1].hits + s.tier[CACHE_L1].misses,
                          gets);
        ck_assert_uint_eq(s.tier[CACHE_L1].hits + s.tier[CACHE_L2].hits +
                              s.tier[CACHE_L3].hits,
                          s.hits);
        ck_assert_uint_eq(s.tier[CACHE_L2].hits + s.tier[CACHE_L2].misses,
                          s.tier[CACHE_L1].misses);
        ck_assert(!s.tier[CACHE_L2].degraded && !s.tier[CACHE_L3].degraded);
        ck_assert_uint_eq(s.pending_l3, 0);
    }
    fx_close(&fx);
}

START_TEST(test_model)
{
    static const uint64_t seeds[] = {1, 2, 3, 0xdeadbeef, 20251125};
    model_run(seeds[_i], 4000);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* (2) Degradation, pending queue, recovery                               */

START_TEST(test_note_tier_result)
{
    struct fixture fx;
    struct cache_stats s;

    fx_open(&fx, 4, 8, true);
    cache_note_tier_result(fx.c, CACHE_L3, -EIO);
    cache_note_tier_result(fx.c, CACHE_L3, -EIO);
    cache_note_tier_result(fx.c, CACHE_L3, 0); /* resets the run */
    cache_note_tier_result(fx.c, CACHE_L3, -EIO);
    cache_note_tier_result(fx.c, CACHE_L3, -ENOENT); /* answered: resets */
    cache_note_tier_result(fx.c, CACHE_L3, -EBUSY);
    cache_note_tier_result(fx.c, CACHE_L3, -ENOMEM);  /* neutral */
    cache_note_tier_result(fx.c, CACHE_L3, -EINVAL);  /* neutral */
    cache_note_tier_result(fx.c, CACHE_L3, -EBADMSG); /* resets */
    s = stats(fx.c);
    ck_assert(!s.tier[CACHE_L3].degraded);
    ck_assert_uint_eq(s.tier[CACHE_L3].failures_total, 4);
    ck_assert_uint_eq(s.tier[CACHE_L3].consecutive_failures, 0);
    for (int i = 0; i < 3; i++)
        cache_note_tier_result(fx.c, CACHE_L3, -ENOSPC);
    s = stats(fx.c);
    ck_assert(s.tier[CACHE_L3].degraded);
    ck_assert_uint_eq(s.tier[CACHE_L3].consecutive_failures, 3);
    /* L1 never degrades. */
    for (int i = 0; i < 10; i++)
        cache_note_tier_result(fx.c, CACHE_L1, -EIO);
    s = stats(fx.c);
    ck_assert(!s.tier[CACHE_L1].degraded);
    ck_assert_uint_eq(s.tier[CACHE_L1].failures_total, 10);
    fx_close(&fx);
}
END_TEST

START_TEST(test_l3_degrades_and_recovers)
{
    struct fixture fx;
    struct cache_stats s;
    unsigned mask;
    char k1[ENTRY_KEY_LEN + 1];

    /* L1 of 2 and no L2, so reads must find the queued writes. */
    fx_open(&fx, 2, 0, true);
    for (int i = 100; i < 103; i++)
        up(fx.c, mk(i, "old", T0, 3600), CACHE_F_ALL, 0, NULL);
    fake_set_fail(fx.l3, true, 0, -EIO);
    for (int i = 0; i < 6; i++) {
        up(fx.c, mk(i, "deg", T0, 3600), CACHE_F_ALL, 0, &mask);
        ck_assert_uint_eq(mask, M(CACHE_L1));
    }
    s = stats(fx.c);
    ck_assert(s.tier[CACHE_L3].degraded);
    ck_assert_uint_ge(s.tier[CACHE_L3].failures_total, 3);
    ck_assert_uint_eq(s.pending_l3, 6);
    /* Reads are served from L1 or from the queue (as L3). */
    ck_assert_int_eq(get_tier(fx.c, 5, NULL), CACHE_L1);
    ck_assert_int_eq(get_tier(fx.c, 0, NULL), CACHE_L3);
    /* L3's own rows are unreachable while it is degraded. */
    ck_assert_int_eq(get_tier(fx.c, 100, NULL), -1);
    /* A delete while degraded is queued too. */
    key_of(1, k1);
    ck_assert_int_eq(cache_delete(fx.c, k1), 0);
    ck_assert_int_eq(get_tier(fx.c, 1, NULL), -1);
    /* An update of a queued entry replaces the queued operation. */
    up(fx.c, mk(2, "deg2", T0, 3600), CACHE_F_SOURCE, 0, NULL);
    s = stats(fx.c);
    ck_assert_uint_eq(s.pending_l3, 6);

    /* Probes fail while the tier fails. */
    cache_maintain(fx.c);
    ck_assert(stats(fx.c).tier[CACHE_L3].degraded);
    ck_assert_uint_ge(fx.l3->n_probe, 1);

    fake_set_fail(fx.l3, false, 0, 0);
    cache_maintain(fx.c);
    s = stats(fx.c);
    ck_assert(!s.tier[CACHE_L3].degraded);
    ck_assert_uint_eq(s.pending_l3, 0);
    ck_assert(fk_has(fx.l3, 0) && !fk_has(fx.l3, 1) && fk_has(fx.l3, 5));
    {
        char k2[ENTRY_KEY_LEN + 1];
        struct entry *e;
        key_of(2, k2);
        e = fake_peek(fx.l3, k2);
        ck_assert_ptr_nonnull(e);
        ck_assert_str_eq(e->source, "deg2");
        entry_unref(e);
    }
    ck_assert_int_eq(get_tier(fx.c, 100, NULL), CACHE_L3);
    up(fx.c, mk(7, "ok", T0, 3600), CACHE_F_ALL, 0, &mask);
    ck_assert_uint_eq(mask, M(CACHE_L1) | M(CACHE_L3));
    fx_close(&fx);
}
END_TEST

START_TEST(test_transient_l3_failure_replayed_by_next_writer)
{
    struct fixture fx;
    unsigned mask;

    fx_open(&fx, 4, 8, true);
    /* The lookup and the put of this write fail: queued, not degraded. */
    fake_set_fail(fx.l3, false, 2, -EBUSY);
    up(fx.c, mk(1, "a", T0, 3600), CACHE_F_ALL, 0, &mask);
    ck_assert_uint_eq(mask, M(CACHE_L1) | M(CACHE_L2));
    ck_assert(!stats(fx.c).tier[CACHE_L3].degraded);
    ck_assert_uint_eq(stats(fx.c).pending_l3, 1);
    ck_assert(!fk_has(fx.l3, 1));
    /* The next write drains the queue before its own commit. */
    up(fx.c, mk(2, "b", T0, 3600), CACHE_F_ALL, 0, &mask);
    ck_assert_uint_eq(mask, ALL_MASK);
    ck_assert_uint_eq(stats(fx.c).pending_l3, 0);
    ck_assert(fk_has(fx.l3, 1) && fk_has(fx.l3, 2));
    fx_close(&fx);
}
END_TEST

/* A write that arrives while another thread (the sweeper's maintain)
 * replays the pending queue waits for the replay and commits to L3; it is
 * not merely queued. L3's put_batch naps so the replay is caught mid-way. */
static _Atomic int replay_entered;
static struct tier_ops slow_replay_ops;

static int slow_replay_put_batch(struct tier *t, struct entry *const *es,
                                 size_t n, size_t *nv)
{
    struct timespec ts = {0, 100000000}; /* 100 ms */
    atomic_store(&replay_entered, 1);
    nanosleep(&ts, NULL);
    return fake_put_batch(t, es, n, nv);
}

static void *th_maintain(void *p)
{
    cache_maintain(p);
    return NULL;
}

START_TEST(test_write_waits_for_replay)
{
    struct fixture fx;
    pthread_t th;
    unsigned mask;

    fx_open(&fx, 4, 8, true);
    fake_set_fail(fx.l3, false, 2, -EBUSY);
    up(fx.c, mk(1, "a", T0, 3600), CACHE_F_ALL, 0, &mask);
    ck_assert_uint_eq(stats(fx.c).pending_l3, 1);
    slow_replay_ops = *fx.l3->base.ops;
    slow_replay_ops.put_batch = slow_replay_put_batch;
    fx.l3->base.ops = &slow_replay_ops;
    atomic_store(&replay_entered, 0);
    ck_assert_int_eq(pthread_create(&th, NULL, th_maintain, fx.c), 0);
    while (!atomic_load(&replay_entered)) {
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }
    up(fx.c, mk(2, "b", T0, 3600), CACHE_F_ALL, 0, &mask);
    ck_assert_uint_eq(mask, ALL_MASK);
    ck_assert(fk_has(fx.l3, 2));
    pthread_join(th, NULL);
    ck_assert_uint_eq(stats(fx.c).pending_l3, 0);
    ck_assert(fk_has(fx.l3, 1));
    fx_close(&fx);
}
END_TEST

START_TEST(test_l3_clear_while_degraded)
{
    struct fixture fx;
    size_t removed = 0;

    fx_open(&fx, 4, 8, true);
    for (int i = 0; i < 5; i++)
        up(fx.c, mk(i, "a", T0, 3600), CACHE_F_ALL, 0, NULL);
    fake_set_fail(fx.l3, true, 0, -EIO);
    for (int i = 0; i < 3; i++)
        cache_note_tier_result(fx.c, CACHE_L3, -EIO);
    up(fx.c, mk(10, "b", T0, 3600), CACHE_F_ALL, 0, NULL);
    ck_assert_int_eq(cache_clear(fx.c, &removed), 0);
    ck_assert_uint_ge(removed, 5);
    up(fx.c, mk(11, "c", T0, 3600), CACHE_F_ALL, 0, NULL);
    ck_assert_int_eq(get_tier(fx.c, 0, NULL), -1);
    ck_assert_int_eq(get_tier(fx.c, 10, NULL), -1);
    fake_set_fail(fx.l3, false, 0, 0);
    cache_maintain(fx.c);
    ck_assert_uint_eq(stats(fx.c).pending_l3, 0);
    /* The queued clear ran before the later write. */
    ck_assert_uint_eq(fake_size(&fx.l3->base), 1);
    ck_assert(fk_has(fx.l3, 11));
    fx_close(&fx);
}
END_TEST

START_TEST(test_l2_degrades_and_recovers)
{
    struct fixture fx;
    unsigned mask;
    struct cache_stats s;

    fx_open(&fx, 2, 8, true);
    up(fx.c, mk(0, "a", T0, 3600), CACHE_F_ALL, 0, &mask);
    ck_assert_uint_eq(mask, ALL_MASK);
    fake_set_fail(fx.l2, true, 0, -ENOSPC);
    for (int i = 1; i < 5; i++) {
        up(fx.c, mk(i, "a", T0, 3600), CACHE_F_ALL, 0, &mask);
        ck_assert_uint_eq(mask & M(CACHE_L2), 0);
        ck_assert(mask & M(CACHE_L3));
    }
    s = stats(fx.c);
    ck_assert(s.tier[CACHE_L2].degraded);
    /* Reads skip L2 and go to L3. */
    ck_assert_int_eq(get_tier(fx.c, 0, NULL), CACHE_L3);
    fake_set_fail(fx.l2, false, 0, 0);
    cache_maintain(fx.c);
    s = stats(fx.c);
    ck_assert(!s.tier[CACHE_L2].degraded);
    /* It was reset (it missed writes while degraded). */
    ck_assert_uint_ge(fx.l2->n_clear, 1);
    up(fx.c, mk(9, "a", T0, 3600), CACHE_F_ALL, 0, &mask);
    ck_assert_uint_eq(mask, ALL_MASK);
    fx_close(&fx);
}
END_TEST

START_TEST(test_failing_get_is_a_miss)
{
    struct fixture fx;
    fx_open(&fx, 1, 8, true);
    up(fx.c, mk(0, "a", T0, 3600), CACHE_F_ALL, 0, NULL);
    up(fx.c, mk(1, "a", T0, 3600), CACHE_F_ALL, 0, NULL);
    /* 0 is in L2 and L3; L2 get fails once: served by L3 instead. */
    fake_set_fail(fx.l2, false, 1, -EIO);
    ck_assert_int_eq(get_tier(fx.c, 0, NULL), CACHE_L3);
    ck_assert_uint_eq(stats(fx.c).tier[CACHE_L2].failures_total, 1);
    ck_assert_uint_eq(stats(fx.c).tier[CACHE_L2].misses, 1);
    fx_close(&fx);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* (3) Tier movement                                                      */

struct want_tier {
    uint64_t lru, dem, pro;
};

static void assert_counts(struct cache *c, enum cache_tier t, uint64_t lru,
                          uint64_t dem, uint64_t pro)
{
    struct cache_stats s = stats(c);
    ck_assert_msg(s.tier[t].evictions[CACHE_EVICT_LRU] == lru,
                  "%s lru %llu want %llu", cache_tier_name(t),
                  (unsigned long long)s.tier[t].evictions[CACHE_EVICT_LRU],
                  (unsigned long long)lru);
    ck_assert_msg(s.tier[t].demotions == dem, "%s demotions %llu want %llu",
                  cache_tier_name(t), (unsigned long long)s.tier[t].demotions,
                  (unsigned long long)dem);
    ck_assert_msg(s.tier[t].promotions == pro, "%s promotions %llu want %llu",
                  cache_tier_name(t), (unsigned long long)s.tier[t].promotions,
                  (unsigned long long)pro);
}

START_TEST(test_tier_movement)
{
    struct fixture fx;
    struct cache_item items[10];
    unsigned mask = 0;
    struct cache_stats s;

    fx_open(&fx, 2, 4, true);
    for (int i = 0; i < 10; i++)
        items[i] = (struct cache_item){mk(i, "m", T0, 3600), CACHE_F_ALL, -1,
                                       CACHE_UNCHANGED};
    ck_assert_int_eq(cache_upsert(fx.c, items, 10, 0, &mask), 0);
    ck_assert_uint_eq(mask, ALL_MASK);
    for (int i = 0; i < 10; i++) {
        ck_assert_int_eq(items[i].outcome, CACHE_CREATED);
        entry_unref(items[i].entry);
    }
    /* L1 = {9, 8}; L2 = {6, 7, 8, 9} (LRU first; a batch larger than L2
     * writes only its last 4 there); L3 = all. */
    ck_assert(l1_has(fx.l1, 9) && l1_has(fx.l1, 8) && !l1_has(fx.l1, 7));
    ck_assert(fk_has(fx.l2, 6) && !fk_has(fx.l2, 5));
    ck_assert_uint_eq(fx.l2->n_put_batch, 1);
    assert_counts(fx.c, CACHE_L1, 8, 0, 0);
    assert_counts(fx.c, CACHE_L2, 0, 0, 0);

    ck_assert_int_eq(get_tier(fx.c, 9, NULL), CACHE_L1);
    /* L2 hit: promoted to L1, whose victim 8 is demoted into L2. */
    ck_assert_int_eq(get_tier(fx.c, 7, NULL), CACHE_L2);
    assert_counts(fx.c, CACHE_L1, 9, 1, 1);
    assert_counts(fx.c, CACHE_L2, 0, 0, 0);
    /* L3 hit: into L2 (evicting 6), then L1 (demoting 9). */
    ck_assert_int_eq(get_tier(fx.c, 0, NULL), CACHE_L3);
    assert_counts(fx.c, CACHE_L1, 10, 2, 2);
    assert_counts(fx.c, CACHE_L2, 1, 1, 1);
    ck_assert(!fk_has(fx.l2, 6));
    /* 6: L3 again; L2 evicts 7 for it, then 8 for the demoted 7. */
    ck_assert_int_eq(get_tier(fx.c, 6, NULL), CACHE_L3);
    assert_counts(fx.c, CACHE_L1, 11, 3, 3);
    assert_counts(fx.c, CACHE_L2, 3, 3, 2);
    ck_assert_int_eq(get_tier(fx.c, 0, NULL), CACHE_L1);
    ck_assert_int_eq(get_tier(fx.c, 8, NULL), CACHE_L3);
    assert_counts(fx.c, CACHE_L1, 12, 4, 4);
    assert_counts(fx.c, CACHE_L2, 4, 4, 3);
    ck_assert_int_eq(get_tier(fx.c, 9, NULL), CACHE_L2);
    assert_counts(fx.c, CACHE_L1, 13, 5, 5);
    assert_counts(fx.c, CACHE_L2, 5, 5, 3);
    assert_counts(fx.c, CACHE_L3, 0, 0, 0);

    ck_assert(l1_has(fx.l1, 9) && l1_has(fx.l1, 8));
    ck_assert(fk_has(fx.l2, 8) && fk_has(fx.l2, 6) && fk_has(fx.l2, 9) &&
              fk_has(fx.l2, 0));
    s = stats(fx.c);
    ck_assert_uint_eq(s.tier[CACHE_L1].hits, 2);
    ck_assert_uint_eq(s.tier[CACHE_L1].misses, 5);
    ck_assert_uint_eq(s.tier[CACHE_L2].hits, 2);
    ck_assert_uint_eq(s.tier[CACHE_L2].misses, 3);
    ck_assert_uint_eq(s.tier[CACHE_L3].hits, 3);
    ck_assert_uint_eq(s.tier[CACHE_L3].misses, 0);
    ck_assert_uint_eq(s.hits, 7);
    ck_assert_uint_eq(s.misses, 0);
    ck_assert_uint_eq(s.lookups, 7);
    ck_assert_uint_eq(s.tier[CACHE_L1].size, 2);
    ck_assert_uint_eq(s.tier[CACHE_L2].size, 4);
    ck_assert_uint_eq(s.tier[CACHE_L3].size, 10);
    ck_assert_uint_eq(s.writes, 10);
    fx_close(&fx);
}
END_TEST

START_TEST(test_big_batch_drops_stale_l2_copy)
{
    struct fixture fx;
    struct cache_item items[9];
    char k0[ENTRY_KEY_LEN + 1];
    struct entry *e = NULL;

    struct cache_config cfg = base_cfg();

    /* Configured L2 capacity 4, but the tier holds 8: without the delete
     * the old copy of 0 would survive next to the 4 written. (With equal
     * capacities LRU eviction removes it anyway; the delete is the safety
     * net for an L2 that keeps more than configured.) */
    cfg.l1_capacity = 2;
    cfg.l2_capacity = 4;
    fx_open_cfg(&fx, 2, 8, true, &cfg);
    up(fx.c, mk(0, "v1", T0, 3600), CACHE_F_ALL, 0, NULL);
    key_of(0, k0);
    ck_assert(fk_has(fx.l2, 0));
    for (int i = 0; i < 9; i++)
        items[i] = (struct cache_item){mk(i, "v2", T0, 3600), CACHE_F_ALL, -1,
                                       CACHE_UNCHANGED};
    ck_assert_int_eq(cache_upsert(fx.c, items, 9, 0, NULL), 0);
    for (int i = 0; i < 9; i++)
        entry_unref(items[i].entry);
    /* 0 is not among the 4 written to L2, and its old copy is gone. */
    ck_assert(!fk_has(fx.l2, 0));
    ck_assert(fk_has(fx.l2, 5) && fk_has(fx.l2, 8));
    ck_assert_int_eq(get_tier(fx.c, 0, &e), CACHE_L3);
    ck_assert_str_eq(e->source, "v2");
    entry_unref(e);
    (void)k0;
    fx_close(&fx);
}
END_TEST

START_TEST(test_access_stats)
{
    struct fixture fx;
    struct entry *e = NULL;

    fx_open(&fx, 1, 8, true);
    up(fx.c, mk(0, "a", T0, 3600), CACHE_F_ALL, 0, NULL);
    clock_advance_ms(1000);
    ck_assert_int_eq(get_tier(fx.c, 0, &e), CACHE_L1);
    ck_assert_uint_eq(atomic_load(&e->access_count), 1);
    ck_assert_int_eq(atomic_load(&e->last_accessed), T0 + 1000);
    entry_unref(e);
    ck_assert_int_eq(get_tier(fx.c, 0, &e), CACHE_L1);
    ck_assert_uint_eq(atomic_load(&e->access_count), 2);
    entry_unref(e);
    /* Demoted to L2 with its statistics; promoted back with them. */
    up(fx.c, mk(1, "a", T0, 3600), CACHE_F_ALL, 0, NULL);
    ck_assert_int_eq(get_tier(fx.c, 0, &e), CACHE_L2);
    ck_assert_uint_eq(atomic_load(&e->access_count), 3);
    entry_unref(e);
    /* An update keeps them. */
    up(fx.c, mk(0, "b", T0, 3600), CACHE_F_SOURCE, 0, NULL);
    ck_assert_int_eq(get_tier(fx.c, 0, &e), CACHE_L1);
    ck_assert_str_eq(e->source, "b");
    ck_assert_uint_eq(atomic_load(&e->access_count), 4);
    entry_unref(e);
    fx_close(&fx);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* (4) TTL                                                                */

START_TEST(test_ttl_zero)
{
    struct fixture fx;
    struct cache_stats s;
    unsigned mask;

    fx_open(&fx, 4, 8, true);
    ck_assert_int_eq(up(fx.c, mk(0, "z", T0, 0), CACHE_F_ALL, 0, &mask),
                     CACHE_CREATED);
    ck_assert_uint_eq(mask, ALL_MASK);
    ck_assert_int_eq(get_tier(fx.c, 0, NULL), -1);
    s = stats(fx.c);
    ck_assert_uint_eq(s.tier[CACHE_L1].evictions[CACHE_EVICT_TTL], 1);
    ck_assert_uint_eq(s.tier[CACHE_L2].evictions[CACHE_EVICT_TTL], 0);
    ck_assert_uint_eq(s.tier[CACHE_L3].evictions[CACHE_EVICT_TTL], 0);
    ck_assert_uint_eq(s.tier[CACHE_L3].size, 0);
    ck_assert_uint_eq(s.writes, 1);

    /* Over an existing entry: every old copy goes, counted per tier. */
    up(fx.c, mk(1, "z", T0, 3600), CACHE_F_ALL, 0, NULL);
    ck_assert_int_eq(up(fx.c, mk(1, "z", T0, 0), CACHE_F_TTL, 0, NULL),
                     CACHE_UPDATED);
    s = stats(fx.c);
    ck_assert_uint_eq(s.tier[CACHE_L1].evictions[CACHE_EVICT_TTL], 2);
    ck_assert_uint_eq(s.tier[CACHE_L2].evictions[CACHE_EVICT_TTL], 1);
    ck_assert_uint_eq(s.tier[CACHE_L3].evictions[CACHE_EVICT_TTL], 1);
    ck_assert_uint_eq(s.tier[CACHE_L1].size + s.tier[CACHE_L2].size +
                          s.tier[CACHE_L3].size,
                      0);
    ck_assert_int_eq(get_tier(fx.c, 1, NULL), -1);
    fx_close(&fx);
}
END_TEST

START_TEST(test_lazy_expiry)
{
    struct fixture fx;
    struct cache_stats s;

    fx_open(&fx, 4, 8, true);
    up(fx.c, mk(0, "x", T0, 10), CACHE_F_ALL, 0, NULL);
    clock_advance_ms(9999);
    ck_assert_int_eq(get_tier(fx.c, 0, NULL), CACHE_L1);
    clock_advance_ms(1); /* expires_at <= now: expired */
    ck_assert_int_eq(get_tier(fx.c, 0, NULL), -1);
    s = stats(fx.c);
    for (int t = 0; t < 3; t++) {
        ck_assert_uint_eq(s.tier[t].evictions[CACHE_EVICT_TTL], 1);
        ck_assert_uint_eq(s.tier[t].size, 0);
    }
    ck_assert_uint_eq(s.misses, 1);
    ck_assert_uint_eq(s.hits, 1);
    /* A stale expired copy in L2 does not hide a fresh one in L3. */
    {
        struct entry *old = mk(5, "old", T0 - 100000, 10);
        up(fx.c, mk(5, "new", T0, 3600), CACHE_F_ALL, 0, NULL);
        ck_assert_int_eq(cache_delete(fx.c, old->key), 0);
        up(fx.c, mk(5, "new", T0, 3600), CACHE_F_ALL, 0, NULL);
        (void)fx.l1->ops->del(fx.l1, old->key);
        fake_plant(fx.l2, old);
        entry_unref(old);
        struct entry *e = NULL;
        ck_assert_int_eq(get_tier(fx.c, 5, &e), CACHE_L3);
        ck_assert_str_eq(e->source, "new");
        entry_unref(e);
    }
    fx_close(&fx);
}
END_TEST

START_TEST(test_sweep)
{
    struct fixture fx;
    struct cache_stats s;
    size_t n;

    fx_open(&fx, 4, 8, true);
    for (int i = 0; i < 6; i++)
        up(fx.c, mk(i, "short", T0, 5), CACHE_F_ALL, 0, NULL);
    for (int i = 6; i < 9; i++)
        up(fx.c, mk(i, "long", T0, 3600), CACHE_F_ALL, 0, NULL);
    clock_advance_ms(5000);
    /* Bounded per tier. */
    n = cache_sweep(fx.c, clock_now_ms(), 2);
    ck_assert_uint_eq(n, 1 + 2 + 2); /* L1 has 1 expired, L2 5, L3 6 */
    n += cache_sweep(fx.c, clock_now_ms(), 1000);
    ck_assert_uint_eq(n, 1 + 5 + 6);
    s = stats(fx.c);
    ck_assert_uint_eq(s.tier[CACHE_L1].evictions[CACHE_EVICT_TTL], 1);
    ck_assert_uint_eq(s.tier[CACHE_L2].evictions[CACHE_EVICT_TTL], 5);
    ck_assert_uint_eq(s.tier[CACHE_L3].evictions[CACHE_EVICT_TTL], 6);
    ck_assert_uint_eq(s.tier[CACHE_L1].size, 3);
    ck_assert_uint_eq(s.tier[CACHE_L2].size, 3);
    ck_assert_uint_eq(s.tier[CACHE_L3].size, 3);
    ck_assert_uint_eq(cache_sweep(fx.c, clock_now_ms(), 1000), 0);
    fx_close(&fx);
}
END_TEST

static bool wait_for(struct cache *c, enum cache_tier t, uint64_t size)
{
    for (int i = 0; i < 5000; i++) {
        struct timespec ts = {0, 1000000};
        if (stats(c).tier[t].size == size)
            return true;
        nanosleep(&ts, NULL);
    }
    return false;
}

START_TEST(test_sweeper_thread)
{
    struct fixture fx;
    struct sweeper *sw = NULL;

    fx_open(&fx, 4, 8, true);
    for (int i = 0; i < 3; i++)
        up(fx.c, mk(i, "s", T0, 1), CACHE_F_ALL, 0, NULL);
    up(fx.c, mk(3, "s", T0, 3600), CACHE_F_ALL, 0, NULL);
    ck_assert_int_eq(sweeper_start(fx.c, 0, &sw), -EINVAL);
    /* A long interval: only the first round and kicks run. */
    ck_assert_int_eq(sweeper_start(fx.c, 3600 * 1000, &sw), 0);
    clock_advance_ms(2000);
    sweeper_kick(sw);
    ck_assert(wait_for(fx.c, CACHE_L3, 1));
    ck_assert(wait_for(fx.c, CACHE_L1, 1));
    /* maintain runs in the same round: a degraded L3 gets probed. */
    for (int i = 0; i < 3; i++)
        cache_note_tier_result(fx.c, CACHE_L3, -EIO);
    ck_assert(stats(fx.c).tier[CACHE_L3].degraded);
    sweeper_kick(sw);
    for (int i = 0; i < 5000 && stats(fx.c).tier[CACHE_L3].degraded; i++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    ck_assert(!stats(fx.c).tier[CACHE_L3].degraded);
    sweeper_stop(sw);
    sweeper_stop(NULL);
    fx_close(&fx);
}
END_TEST

/* An L1 victim demoted after a concurrent writer already wrote a newer
 * version of its key through to L2 must not overwrite that version. The
 * race is staged: while the batch that evicted K commits to L3, another
 * thread upserts K (v2) to completion; then the batch demotes K (v1). The
 * fake L2 is wrapped to honour TIER_PUT_IFABSENT like the real L2. */
static struct tier_ops demote_l2_ops, demote_l3_ops;
static struct fake_tier *demote_l2;
static struct cache *demote_cache;
static _Atomic int demote_hook;

static int ifabsent_put(struct tier *t, struct entry *e, unsigned flags,
                        struct entry **victim)
{
    if ((flags & TIER_PUT_IFABSENT) && fake_has(demote_l2, e->key))
        return 0;
    return fake_put(t, e, flags, victim);
}

static void *th_upsert_k_v2(void *p)
{
    (void)p;
    up(demote_cache, mk(1, "v2", T0, 3600), CACHE_F_ALL, 0, NULL);
    return NULL;
}

static int hook_put_batch(struct tier *t, struct entry *const *es, size_t n,
                          size_t *nv)
{
    if (atomic_exchange(&demote_hook, 0)) {
        pthread_t th;
        ck_assert_int_eq(pthread_create(&th, NULL, th_upsert_k_v2, NULL), 0);
        pthread_join(th, NULL);
    }
    return fake_put_batch(t, es, n, nv);
}

START_TEST(test_demote_keeps_newer_l2_copy)
{
    struct fixture fx;
    char k[ENTRY_KEY_LEN + 1];
    struct entry *e;

    fx_open(&fx, 1, 8, true);
    demote_l2 = fx.l2;
    demote_cache = fx.c;
    demote_l2_ops = *fx.l2->base.ops;
    demote_l2_ops.put = ifabsent_put;
    fx.l2->base.ops = &demote_l2_ops;
    demote_l3_ops = *fx.l3->base.ops;
    demote_l3_ops.put_batch = hook_put_batch;
    fx.l3->base.ops = &demote_l3_ops;
    key_of(1, k);

    up(fx.c, mk(1, "v1", T0, 3600), CACHE_F_ALL, 0, NULL); /* K v1 in L1 */
    atomic_store(&demote_hook, 1);
    /* X evicts K v1 from L1; K v2 is written meanwhile; then K v1 is
     * demoted. */
    up(fx.c, mk(2, "x", T0, 3600), CACHE_F_ALL, 0, NULL);
    ck_assert_int_eq(atomic_load(&demote_hook), 0);
    e = fake_peek(fx.l3, k);
    ck_assert_str_eq(e->source, "v2");
    entry_unref(e);
    e = fake_peek(fx.l2, k);
    ck_assert_ptr_nonnull(e);
    ck_assert_str_eq(e->source, "v2");
    entry_unref(e);
    ck_assert_int_ge(get_tier(fx.c, 1, &e), 0);
    ck_assert_str_eq(e->source, "v2");
    entry_unref(e);
    fx_close(&fx);
}
END_TEST

/* Crash safety of the write-through: at the moment L3 commits a new
 * version, L2 holds no older copy of the key (a kill -9 right after the
 * commit must not leave L2 serving the old version after a restart). The
 * wrapped L3 put_batch records what L2 holds when the commit is done. */
static struct tier_ops crash_l3_ops;
static struct fake_tier *crash_l2;
static char crash_key[ENTRY_KEY_LEN + 1];
static char crash_seen[32];

static int crash_put_batch(struct tier *t, struct entry *const *es, size_t n,
                           size_t *nv)
{
    int err = fake_put_batch(t, es, n, nv);
    struct entry *e = fake_peek(crash_l2, crash_key);

    snprintf(crash_seen, sizeof crash_seen, "%s",
             e ? (e->failure_count ? "old-health" : e->source) : "none");
    entry_unref(e);
    return err;
}

START_TEST(test_no_old_l2_copy_at_l3_commit)
{
    struct fixture fx;
    struct entry *e = NULL;
    bool ev = true;

    fx_open(&fx, 4, 8, true);
    up(fx.c, mk(1, "v1", T0, 3600), CACHE_F_ALL, 0, NULL);
    key_of(1, crash_key);
    crash_l2 = fx.l2;
    crash_l3_ops = *fx.l3->base.ops;
    crash_l3_ops.put_batch = crash_put_batch;
    fx.l3->base.ops = &crash_l3_ops;
    ck_assert(fk_has(fx.l2, 1));

    /* Update found in L1: the L2 copy is gone before the commit. */
    snprintf(crash_seen, sizeof crash_seen, "unset");
    up(fx.c, mk(1, "v2", T0, 3600), CACHE_F_ALL, 0, NULL);
    ck_assert_str_eq(crash_seen, "none");
    e = fake_peek(fx.l2, crash_key); /* written through after */
    ck_assert_str_eq(e->source, "v2");
    entry_unref(e);

    /* Health report: same. */
    snprintf(crash_seen, sizeof crash_seen, "unset");
    ck_assert_int_eq(cache_report_health(fx.c, crash_key, false, &e, &ev), 0);
    entry_unref(e);
    ck_assert_str_eq(crash_seen, "none");
    e = fake_peek(fx.l2, crash_key);
    ck_assert_uint_eq(e->failure_count, 1);
    entry_unref(e);

    /* Found in L2 only (evicted from L1 by 4 others): same. */
    for (int i = 10; i < 14; i++)
        up(fx.c, mk(i, "o", T0, 3600), CACHE_F_ALL, 0, NULL);
    ck_assert(!l1_has(fx.l1, 1));
    ck_assert(fk_has(fx.l2, 1));
    snprintf(crash_seen, sizeof crash_seen, "unset");
    up(fx.c, mk(1, "v3", T0, 3600), CACHE_F_ALL, 0, NULL);
    ck_assert_str_eq(crash_seen, "none");
    ck_assert_int_ge(get_tier(fx.c, 1, &e), 0);
    ck_assert_str_eq(e->source, "v3");
    entry_unref(e);
    fx_close(&fx);
}
END_TEST

/* A mass expiry larger than one round (ROUND_MAX = 100,000) is removed at
 * once, not one round per interval: L3's sweep is stubbed to report
 * 250,000 expired rows, removed a batch at a time. */
static _Atomic size_t mass_left;

static int mass_sweep(struct tier *t, int64_t now_ms, size_t max,
                      size_t *removed)
{
    size_t left = atomic_load(&mass_left), n;

    (void)t;
    (void)now_ms;
    do {
        n = left < max ? left : max;
    } while (!atomic_compare_exchange_weak(&mass_left, &left, left - n));
    *removed = n;
    return 0;
}

static struct tier_ops mass_ops;

START_TEST(test_sweeper_mass_expiry)
{
    struct fixture fx;
    struct sweeper *sw = NULL;

    fx_open(&fx, 4, 8, true);
    mass_ops = *fx.l3->base.ops;
    mass_ops.sweep = mass_sweep;
    fx.l3->base.ops = &mass_ops;
    atomic_store(&mass_left, 250000);
    /* A one-hour interval: only back-to-back rounds can finish in time. */
    ck_assert_int_eq(sweeper_start(fx.c, 3600 * 1000, &sw), 0);
    for (int i = 0; i < 10000 && atomic_load(&mass_left); i++) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    {
        size_t left = atomic_load(&mass_left);
        ck_assert_uint_eq(left, 0);
    }
    ck_assert_uint_eq(stats(fx.c).tier[CACHE_L3].evictions[CACHE_EVICT_TTL],
                      250000);
    sweeper_stop(sw);
    fx_close(&fx);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* (5) Health                                                             */

START_TEST(test_health)
{
    struct fixture fx;
    char key[ENTRY_KEY_LEN + 1];
    struct entry *e = NULL;
    bool ev = true;
    struct cache_stats s;

    fx_open(&fx, 4, 8, true);
    key_of(0, key);
    up(fx.c, mk(0, "h", T0, 3600), CACHE_F_ALL, 0, NULL);
    get_tier(fx.c, 0, NULL);
    get_tier(fx.c, 0, NULL);

    ck_assert_int_eq(cache_report_health(fx.c, key, false, &e, &ev), 0);
    ck_assert(!ev);
    ck_assert_int_eq(e->health, ENTRY_HEALTH_UNHEALTHY);
    ck_assert_uint_eq(e->failure_count, 1);
    ck_assert_uint_eq(atomic_load(&e->access_count), 2);
    entry_unref(e);
    ck_assert_uint_eq(stats(fx.c).lookups, 2); /* not an access */

    ck_assert_int_eq(cache_report_health(fx.c, key, false, &e, &ev), 0);
    ck_assert_uint_eq(e->failure_count, 2);
    entry_unref(e);
    ck_assert_int_eq(cache_report_health(fx.c, key, true, &e, &ev), 0);
    ck_assert_int_eq(e->health, ENTRY_HEALTH_HEALTHY);
    ck_assert_uint_eq(e->failure_count, 0);
    entry_unref(e);
    /* Persisted: L3 has it. */
    e = fake_peek(fx.l3, key);
    ck_assert_int_eq(e->health, ENTRY_HEALTH_HEALTHY);
    entry_unref(e);

    /* An upsert without CACHE_F_HEALTH keeps health. */
    ck_assert_int_eq(cache_report_health(fx.c, key, false, &e, &ev), 0);
    entry_unref(e);
    up(fx.c, mk(0, "h2", T0, 3600), CACHE_F_SOURCE, 0, NULL);
    get_tier(fx.c, 0, &e);
    ck_assert_str_eq(e->source, "h2");
    ck_assert_int_eq(e->health, ENTRY_HEALTH_UNHEALTHY);
    ck_assert_uint_eq(e->failure_count, 1);
    entry_unref(e);

    /* Threshold 3: evicted from every tier, counted per tier. */
    ck_assert_int_eq(cache_report_health(fx.c, key, false, &e, &ev), 0);
    entry_unref(e);
    e = (struct entry *)1;
    ck_assert_int_eq(cache_report_health(fx.c, key, false, &e, &ev), 0);
    ck_assert(ev);
    ck_assert_ptr_null(e);
    ck_assert_int_eq(get_tier(fx.c, 0, NULL), -1);
    s = stats(fx.c);
    for (int t = 0; t < 3; t++) {
        ck_assert_uint_eq(s.tier[t].evictions[CACHE_EVICT_HEALTH], 1);
        ck_assert_uint_eq(s.tier[t].size, 0);
    }
    ck_assert_int_eq(cache_report_health(fx.c, key, true, &e, &ev), -ENOENT);
    ck_assert_int_eq(cache_report_health(fx.c, "zz", true, &e, &ev), -ENOENT);
    fx_close(&fx);
}
END_TEST

START_TEST(test_health_does_not_pull_into_l1)
{
    struct fixture fx;
    char key[ENTRY_KEY_LEN + 1];
    struct entry *e = NULL;
    bool ev;

    fx_open(&fx, 2, 8, true);
    for (int i = 0; i < 5; i++)
        up(fx.c, mk(i, "h", T0, 3600), CACHE_F_ALL, 0, NULL);
    ck_assert(!l1_has(fx.l1, 0));
    key_of(0, key);
    ck_assert_int_eq(cache_report_health(fx.c, key, false, &e, &ev), 0);
    entry_unref(e);
    ck_assert(!l1_has(fx.l1, 0));
    ck_assert(l1_has(fx.l1, 4) && l1_has(fx.l1, 3));
    e = fake_peek(fx.l3, key);
    ck_assert_uint_eq(e->failure_count, 1);
    entry_unref(e);
    e = fake_peek(fx.l2, key);
    ck_assert_uint_eq(e->failure_count, 1);
    entry_unref(e);
    fx_close(&fx);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* (6) Corruption                                                         */

START_TEST(test_corrupt_tier_record)
{
    struct fixture fx;
    char key[ENTRY_KEY_LEN + 1];

    fx_open(&fx, 1, 8, true);
    up(fx.c, mk(0, "c", T0, 3600), CACHE_F_ALL, 0, NULL);
    up(fx.c, mk(1, "c", T0, 3600), CACHE_F_ALL, 0, NULL);
    key_of(0, key);
    fake_set_corrupt(fx.l2, key);
    ck_assert_int_eq(get_tier(fx.c, 0, NULL), CACHE_L3);
    ck_assert_uint_eq(
        stats(fx.c).tier[CACHE_L2].evictions[CACHE_EVICT_CORRUPTION], 1);
    ck_assert_uint_eq(stats(fx.c).tier[CACHE_L2].failures_total, 0);
    fx_close(&fx);
}
END_TEST

static struct entry *mk_tok(int i, const struct crypto_keyring *ring)
{
    struct entry *e = mk(i, "tok", T0, 3600);
    char *tok = NULL;
    ck_assert_int_eq(crypto_fernet_seal(ring, "user", 4, T0 / 1000, NULL, &tok),
                     0);
    e->username_tok = tok;
    return e;
}

START_TEST(test_corrupt_token)
{
    struct fixture fx;
    struct crypto_keyring *ring = NULL, *other = NULL;
    struct cache_config cfg = base_cfg();
    struct entry *e;
    char path[] = "/tmp/check_cache_log_XXXXXX";
    int fd = mkstemp(path);
    char buf[8192];
    ssize_t len;
    int count = 0;

    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(crypto_keyring_new_random(&ring), 0);
    ck_assert_int_eq(crypto_keyring_new_random(&other), 0);
    cfg.ring = ring;
    fx_open_cfg(&fx, 4, 8, true, &cfg);

    /* Good token (this ring) in L3 only: served. */
    e = mk_tok(0, ring);
    fake_plant(fx.l3, e);
    entry_unref(e);
    ck_assert_int_eq(get_tier(fx.c, 0, NULL), CACHE_L3);

    /* Tokens of another key: corruption, removed, warned once. */
    log_set_level(LOG_LEVEL_WARN);
    log_set_fd(fd);
    for (int i = 1; i <= 2; i++) {
        e = mk_tok(i, other);
        fake_plant(fx.l3, e);
        entry_unref(e);
        ck_assert_int_eq(get_tier(fx.c, i, NULL), -1);
        ck_assert(!fk_has(fx.l3, i));
    }
    log_set_fd(2);
    log_set_level(LOG_LEVEL_ERROR);
    ck_assert_uint_eq(
        stats(fx.c).tier[CACHE_L3].evictions[CACHE_EVICT_CORRUPTION], 2);
    len = pread(fd, buf, sizeof buf - 1, 0);
    ck_assert_int_ge(len, 0);
    buf[len] = '\0';
    for (const char *p = buf; (p = strstr(p, "does not verify")); p++)
        count++;
    ck_assert_int_eq(count, 1);
    ck_assert_ptr_null(strstr(buf, "user"));
    close(fd);
    unlink(path);
    fx_close(&fx);
    crypto_keyring_free(ring);
    crypto_keyring_free(other);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* (7) Stats, list, pick, batches                                         */

START_TEST(test_stats_add_up)
{
    struct fixture fx;
    struct cache_stats s;

    fx_open(&fx, 2, 3, true);
    for (int i = 0; i < 6; i++)
        up(fx.c, mk(i, "s", T0, 3600), CACHE_F_ALL, 0, NULL);
    for (int r = 0; r < 50; r++)
        get_tier(fx.c, (r * 7) % 9, NULL); /* 6, 7, 8 always miss */
    s = stats(fx.c);
    ck_assert_uint_eq(s.lookups, 50);
    ck_assert_uint_eq(s.hits + s.misses, 50);
    ck_assert_uint_eq(s.tier[CACHE_L1].hits + s.tier[CACHE_L1].misses, 50);
    ck_assert_uint_eq(s.tier[CACHE_L2].hits + s.tier[CACHE_L2].misses,
                      s.tier[CACHE_L1].misses);
    ck_assert_uint_eq(s.tier[CACHE_L3].hits + s.tier[CACHE_L3].misses,
                      s.tier[CACHE_L2].misses);
    ck_assert_uint_eq(s.tier[CACHE_L3].misses, s.misses);
    ck_assert_uint_eq(s.tier[CACHE_L1].hits + s.tier[CACHE_L2].hits +
                          s.tier[CACHE_L3].hits,
                      s.hits);
    ck_assert(s.tier[CACHE_L1].present && s.tier[CACHE_L2].present &&
              s.tier[CACHE_L3].present);
    ck_assert_str_eq(cache_tier_name(CACHE_L2), "l2");
    ck_assert_str_eq(cache_reason_name(CACHE_EVICT_CORRUPTION), "corruption");
    cache_set_warming(fx.c, true);
    ck_assert(cache_is_warming(fx.c) && stats(fx.c).warming);
    cache_set_warming(fx.c, false);
    ck_assert(!cache_is_warming(fx.c));
    fx_close(&fx);
}
END_TEST

START_TEST(test_ttl_for_source)
{
    struct fixture fx;
    struct cache_source_ttl st[2];
    struct cache_config cfg = base_cfg();

    memset(st, 0, sizeof st);
    snprintf(st[0].name, sizeof st[0].name, "fast");
    st[0].ttl_seconds = 60;
    snprintf(st[1].name, sizeof st[1].name, "slow");
    st[1].ttl_seconds = 86400;
    cfg.source_ttls = st;
    cfg.n_source_ttls = 2;
    fx_open_cfg(&fx, 4, 8, true, &cfg);
    memset(st, 0, sizeof st); /* the cache keeps its own copy */
    ck_assert_int_eq(cache_ttl_for_source(fx.c, "fast"), 60);
    ck_assert_int_eq(cache_ttl_for_source(fx.c, "slow"), 86400);
    ck_assert_int_eq(cache_ttl_for_source(fx.c, "other"), 3600);
    ck_assert_int_eq(cache_ttl_for_source(fx.c, NULL), 3600);
    fx_close(&fx);
}
END_TEST

START_TEST(test_bad_args)
{
    struct fixture fx;
    struct cache_config cfg = base_cfg();
    struct tier *l1 = NULL;
    struct cache *c = NULL;
    struct cache_item it = {NULL, 0, 0, CACHE_CREATED};
    struct entry *e = mk(0, "a", T0, 60);

    cfg.failure_threshold = 0;
    ck_assert_int_eq(l1_mem_open(4, &l1), 0);
    /* Takes ownership even on failure (no leak under ASan). */
    ck_assert_int_eq(cache_new_with_tiers(&cfg, l1, NULL, NULL, &c), -EINVAL);
    fx_open(&fx, 4, 8, true);
    ck_assert_int_eq(cache_upsert(fx.c, &it, 0, 0, NULL), -EINVAL);
    ck_assert_int_eq(cache_upsert(fx.c, &it, 1, 0, NULL), 0);
    ck_assert_int_eq(it.err, -EINVAL);
    e->key[3] = 'X';
    it.entry = e;
    ck_assert_int_eq(cache_upsert(fx.c, &it, 1, 0, NULL), 0);
    ck_assert_int_eq(it.err, -EINVAL);
    ck_assert_int_eq(cache_delete(fx.c, "short"), -ENOENT);
    ck_assert_int_eq(cache_get(fx.c, "short", &e, NULL), -ENOENT);
    entry_unref(it.entry);
    cache_close(NULL);
    fx_close(&fx);
}
END_TEST

START_TEST(test_batch_semantics)
{
    struct fixture fx;
    struct cache_item items[4];
    struct entry *e = NULL;

    fx_open(&fx, 4, 8, true);
    up(fx.c, mk(1, "pre", T0, 3600), CACHE_F_ALL, 0, NULL);
    items[0] = (struct cache_item){mk(0, "a", T0, 3600), CACHE_F_ALL, -1, 0};
    items[1] = (struct cache_item){mk(1, "b", T0, 3600), CACHE_F_SOURCE, -1, 0};
    items[2] = (struct cache_item){mk(0, "c", T0, 3600), CACHE_F_SOURCE, -1, 0};
    items[3] = (struct cache_item){mk(2, "d", T0, 0), CACHE_F_ALL, -1, 0};
    ck_assert_int_eq(cache_upsert(fx.c, items, 4, 0, NULL), 0);
    ck_assert_int_eq(items[0].outcome, CACHE_CREATED);
    ck_assert_int_eq(items[1].outcome, CACHE_UPDATED);
    ck_assert_int_eq(items[2].outcome, CACHE_UPDATED); /* after item 0 */
    ck_assert_int_eq(items[3].outcome, CACHE_CREATED);
    for (int i = 0; i < 4; i++)
        entry_unref(items[i].entry);
    get_tier(fx.c, 0, &e);
    ck_assert_str_eq(e->source, "c"); /* last wins */
    entry_unref(e);
    ck_assert_int_eq(get_tier(fx.c, 2, NULL), -1);
    /* One L3 transaction for the batch (plus the first write's one). */
    ck_assert_uint_eq(fx.l3->n_put_batch, 2);
    ck_assert_uint_eq(stats(fx.c).writes, 5);

    /* NEWER_ONLY: only a strictly newer fetch_time replaces. */
    ck_assert_int_eq(up(fx.c, mk(1, "older", T0 - 1, 3600), CACHE_F_ALL,
                        CACHE_UPSERT_NEWER_ONLY, NULL),
                     CACHE_UNCHANGED);
    ck_assert_int_eq(up(fx.c, mk(1, "same", T0, 3600), CACHE_F_ALL,
                        CACHE_UPSERT_NEWER_ONLY, NULL),
                     CACHE_UNCHANGED);
    ck_assert_int_eq(up(fx.c, mk(1, "newer", T0 + 1, 3600), CACHE_F_ALL,
                        CACHE_UPSERT_NEWER_ONLY, NULL),
                     CACHE_UPDATED);
    ck_assert_int_eq(up(fx.c, mk(9, "new", T0 - 5, 3600), CACHE_F_ALL,
                        CACHE_UPSERT_NEWER_ONLY, NULL),
                     CACHE_CREATED);
    get_tier(fx.c, 1, &e);
    ck_assert_str_eq(e->source, "newer");
    entry_unref(e);
    fx_close(&fx);
}
END_TEST

struct klist {
    char k[64][ENTRY_KEY_LEN + 1];
    size_t n;
};

static int klist_cb(void *arg, struct entry *e)
{
    struct klist *k = arg;
    ck_assert_uint_lt(k->n, 64);
    snprintf(k->k[k->n++], sizeof k->k[0], "%s", e->key);
    return 0;
}

START_TEST(test_list)
{
    struct fixture fx;
    struct tier_filter f;
    struct klist *k = calloc(1, sizeof(*k));
    bool more = false;
    char after[ENTRY_KEY_LEN + 1] = "";
    size_t pages = 0;

    fx_open(&fx, 2, 4, true);
    for (int i = 0; i < 20; i++)
        up(fx.c, mk(i, i % 2 ? "odd" : "even", T0, i < 18 ? 3600 : 1),
           CACHE_F_ALL, 0, NULL);
    clock_advance_ms(1000); /* 18 and 19 expire */
    tier_filter_init(&f, clock_now_ms());
    for (;;) {
        size_t before = k->n;
        ck_assert_int_eq(
            cache_list(fx.c, &f, ALL_MASK, after, 5, klist_cb, k, &more), 0);
        pages++;
        if (!more)
            break;
        ck_assert_uint_eq(k->n - before, 5);
        snprintf(after, sizeof after, "%s", k->k[k->n - 1]);
    }
    ck_assert_uint_eq(k->n, 18);
    ck_assert_uint_eq(pages, 4);
    for (size_t i = 1; i < k->n; i++)
        ck_assert_int_gt(strcmp(k->k[i], k->k[i - 1]), 0);
    /* Filter and single tier. */
    k->n = 0;
    f.source = "odd";
    ck_assert_int_eq(
        cache_list(fx.c, &f, ALL_MASK, NULL, 100, klist_cb, k, &more), 0);
    ck_assert_uint_eq(k->n, 9);
    ck_assert(!more);
    k->n = 0;
    f.source = NULL;
    ck_assert_int_eq(
        cache_list(fx.c, &f, M(CACHE_L1), NULL, 100, klist_cb, k, &more), 0);
    ck_assert_uint_eq(k->n, 0); /* L1 holds 18, 19: expired */
    ck_assert_int_eq(
        cache_list(fx.c, &f, M(CACHE_L2), NULL, 100, klist_cb, k, &more), 0);
    ck_assert_uint_eq(k->n, 2); /* 16, 17 */
    /* List counts no access and promotes nothing. */
    ck_assert_uint_eq(stats(fx.c).lookups, 0);
    ck_assert_uint_eq(stats(fx.c).tier[CACHE_L1].promotions, 0);
    free(k);
    fx_close(&fx);
}
END_TEST

START_TEST(test_pick)
{
    struct fixture fx;
    struct tier_filter f;
    struct entry *out[100];
    size_t n = 0;
    int light = 0, heavy = 0;

    fx_open(&fx, 4, 8, true);
    for (int i = 0; i < 30; i++) {
        struct entry *e = mk(i, i < 10 ? "a" : "b", T0, 3600);
        e->latency_ms = i < 10 ? 10 : 5000;
        if (i == 29) {
            e->health = ENTRY_HEALTH_UNHEALTHY;
            e->failure_count = 1;
        }
        if (i == 28)
            e->scheme = ENTRY_SCHEME_SOCKS5;
        up(fx.c, e, CACHE_F_ALL, 0, NULL);
    }
    tier_filter_init(&f, clock_now_ms());
    /* Distinct, never unhealthy. */
    ck_assert_int_eq(cache_pick(fx.c, &f, 100, 1, out, &n), 0);
    ck_assert_uint_eq(n, 29);
    for (size_t i = 0; i < n; i++) {
        ck_assert_int_ne(out[i]->health, ENTRY_HEALTH_UNHEALTHY);
        for (size_t j = i + 1; j < n; j++)
            ck_assert_str_ne(out[i]->key, out[j]->key);
    }
    for (size_t i = 0; i < n; i++)
        entry_unref(out[i]);
    /* Filters. */
    f.scheme = ENTRY_SCHEME_SOCKS5;
    ck_assert_int_eq(cache_pick(fx.c, &f, 5, 2, out, &n), 0);
    ck_assert_uint_eq(n, 1);
    entry_unref(out[0]);
    f.scheme = -1;
    f.max_latency_ms = 100;
    ck_assert_int_eq(cache_pick(fx.c, &f, 50, 3, out, &n), 0);
    ck_assert_uint_eq(n, 10);
    for (size_t i = 0; i < n; i++)
        entry_unref(out[i]);
    f.max_latency_ms = -1;
    f.source = "none";
    ck_assert_int_eq(cache_pick(fx.c, &f, 5, 4, out, &n), 0);
    ck_assert_uint_eq(n, 0);
    f.source = NULL;
    /* Reproducible with a seed. */
    {
        char first[ENTRY_KEY_LEN + 1];
        ck_assert_int_eq(cache_pick(fx.c, &f, 1, 77, out, &n), 0);
        snprintf(first, sizeof first, "%s", out[0]->key);
        entry_unref(out[0]);
        ck_assert_int_eq(cache_pick(fx.c, &f, 1, 77, out, &n), 0);
        ck_assert_str_eq(out[0]->key, first);
        entry_unref(out[0]);
    }
    /* Weighted toward low latency: 10 entries at 10 ms (weight ~0.99)
     * against 19 at 5 s (weight ~0.17): ~75% of single picks. */
    for (uint64_t seed = 1; seed <= 400; seed++) {
        ck_assert_int_eq(cache_pick(fx.c, &f, 1, seed, out, &n), 0);
        ck_assert_uint_eq(n, 1);
        if (out[0]->latency_ms == 10)
            light++;
        else
            heavy++;
        entry_unref(out[0]);
    }
    ck_assert_msg(light > 240 && light < 360, "light %d heavy %d", light,
                  heavy);
    ck_assert_uint_eq(stats(fx.c).lookups, 0);
    fx_close(&fx);
}
END_TEST

START_TEST(test_clear_counts_distinct)
{
    struct fixture fx;
    size_t removed = 0;

    fx_open(&fx, 4, 8, true);
    for (int i = 0; i < 10; i++)
        up(fx.c, mk(i, "c", T0, 3600), CACHE_F_ALL, 0, NULL);
    ck_assert_int_eq(cache_clear(fx.c, &removed), 0);
    ck_assert_uint_eq(removed, 10);
    ck_assert_uint_eq(stats(fx.c).tier[CACHE_L1].size, 0);
    ck_assert_uint_eq(stats(fx.c).tier[CACHE_L2].size, 0);
    ck_assert_uint_eq(stats(fx.c).tier[CACHE_L3].size, 0);
    for (int t = 0; t < 3; t++)
        for (int r = 0; r < CACHE_NREASONS; r++)
            if (r != CACHE_EVICT_LRU)
                ck_assert_uint_eq(stats(fx.c).tier[t].evictions[r], 0);
    fx_close(&fx);
}
END_TEST

START_TEST(test_l1_only)
{
    struct fixture fx;
    unsigned mask;
    size_t removed;

    fx_open(&fx, 2, 0, false);
    up(fx.c, mk(0, "a", T0, 3600), CACHE_F_ALL, 0, &mask);
    ck_assert_uint_eq(mask, M(CACHE_L1));
    ck_assert_int_eq(get_tier(fx.c, 0, NULL), CACHE_L1);
    ck_assert(!stats(fx.c).tier[CACHE_L2].present);
    ck_assert_int_eq(cache_clear(fx.c, &removed), 0);
    ck_assert_uint_eq(removed, 1);
    fx_close(&fx);
}
END_TEST

START_TEST(test_close_writes_back_access_stats)
{
    struct fixture fx;
    char key[ENTRY_KEY_LEN + 1], key1[ENTRY_KEY_LEN + 1];
    struct fake_tier *l3;
    struct entry *e;

    fx_open(&fx, 4, 8, true);
    l3 = fx.l3;
    l3->keep_after_close = true;
    up(fx.c, mk(0, "w", T0, 3600), CACHE_F_ALL, 0, NULL);
    up(fx.c, mk(1, "w", T0, 3600), CACHE_F_ALL, 0, NULL);
    for (int i = 0; i < 3; i++) {
        get_tier(fx.c, 0, NULL);
        get_tier(fx.c, 1, NULL);
    }
    key_of(0, key);
    key_of(1, key1);
    e = fake_peek(l3, key);
    ck_assert_uint_eq(atomic_load(&e->access_count), 0);
    entry_unref(e);
    /* L3's copy of 1 is another version: it must not be overwritten. */
    e = mk(1, "other", T0 + 5, 3600);
    fake_plant(l3, e);
    entry_unref(e);
    fx_close(&fx);
    ck_assert(l3->closed);
    e = fake_peek(l3, key);
    ck_assert_uint_eq(atomic_load(&e->access_count), 3);
    entry_unref(e);
    e = fake_peek(l3, key1);
    ck_assert_str_eq(e->source, "other");
    ck_assert_uint_eq(atomic_load(&e->access_count), 0);
    entry_unref(e);
    fake_tier_free(l3);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* Threads: owners write their keys, readers promote; nothing is lost.   */

#define TH_KEYS     16
#define TH_VERSIONS 400

struct th_arg {
    struct cache *c;
    int id;
    atomic_bool *stop;
};

static void *th_writer(void *p)
{
    struct th_arg *a = p;
    for (int v = 0; v < TH_VERSIONS; v++) {
        for (int k = 0; k < TH_KEYS; k++) {
            char src[32];
            snprintf(src, sizeof src, "w%d-%d", a->id, v);
            up(a->c, mk(a->id * 100 + k, src, T0, 3600), CACHE_F_ALL, 0, NULL);
        }
    }
    return NULL;
}

static void *th_reader(void *p)
{
    struct th_arg *a = p;
    uint64_t x = (uint64_t)a->id * 7919 + 1;
    struct tier_filter f;
    tier_filter_init(&f, T0);
    while (!atomic_load(a->stop)) {
        struct entry *out[4];
        size_t n = 0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        int owner = (int)(x % 2), k = (int)((x >> 8) % TH_KEYS);
        if ((x >> 16) % 16 == 0) {
            if (cache_pick(a->c, &f, 4, x, out, &n) == 0)
                for (size_t i = 0; i < n; i++)
                    entry_unref(out[i]);
        } else {
            get_tier(a->c, owner * 100 + k, NULL);
        }
    }
    return NULL;
}

START_TEST(test_threads_no_lost_writes)
{
    struct fixture fx;
    pthread_t w[2], r[2];
    struct th_arg wa[2], ra[2];
    atomic_bool stop = false;

    fx_open(&fx, 8, 12, true);
    for (int i = 0; i < 2; i++) {
        wa[i] = (struct th_arg){fx.c, i, &stop};
        ra[i] = (struct th_arg){fx.c, 10 + i, &stop};
        ck_assert_int_eq(pthread_create(&w[i], NULL, th_writer, &wa[i]), 0);
        ck_assert_int_eq(pthread_create(&r[i], NULL, th_reader, &ra[i]), 0);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(w[i], NULL);
    atomic_store(&stop, true);
    for (int i = 0; i < 2; i++)
        pthread_join(r[i], NULL);

    for (int id = 0; id < 2; id++) {
        for (int k = 0; k < TH_KEYS; k++) {
            char want[32], key[ENTRY_KEY_LEN + 1];
            struct entry *e = NULL;
            snprintf(want, sizeof want, "w%d-%d", id, TH_VERSIONS - 1);
            key_of(id * 100 + k, key);
            e = fake_peek(fx.l3, key);
            ck_assert_ptr_nonnull(e);
            ck_assert_str_eq(e->source, want);
            entry_unref(e);
            ck_assert_int_ge(get_tier(fx.c, id * 100 + k, &e), 0);
            ck_assert_str_eq(e->source, want);
            entry_unref(e);
            /* No tier holds an older version. */
            if (l1_has(fx.l1, id * 100 + k)) {
                ck_assert_int_eq(fx.l1->ops->get(fx.l1, key, &e), 0);
                ck_assert_str_eq(e->source, want);
                entry_unref(e);
            }
            e = fake_peek(fx.l2, key);
            if (e) {
                ck_assert_str_eq(e->source, want);
                entry_unref(e);
            }
        }
    }
    {
        struct cache_stats s = stats(fx.c);
        ck_assert_uint_eq(s.hits + s.misses, s.lookups);
        ck_assert_uint_eq(s.pending_l3, 0);
    }
    fx_close(&fx);
}
END_TEST

/* The same owners/readers, while a chaos thread makes L3 fail and recover
 * and runs maintenance: once L3 is back and the queue drained, L3 holds
 * every key's last version (replays never overwrite newer writes). */
struct chaos_arg {
    struct fixture *fx;
    atomic_bool *stop;
};

static void *th_chaos(void *p)
{
    struct chaos_arg *a = p;
    unsigned round = 0;
    while (!atomic_load(a->stop)) {
        struct timespec ts = {0, 200000};
        round++;
        if (round % 3 == 0)
            fake_set_fail(a->fx->l3, true, 0, -EIO);
        else if (round % 3 == 1)
            fake_set_fail(a->fx->l3, false, 1, -EBUSY);
        else
            fake_set_fail(a->fx->l3, false, 0, 0);
        nanosleep(&ts, NULL);
        cache_maintain(a->fx->c);
    }
    fake_set_fail(a->fx->l3, false, 0, 0);
    return NULL;
}

START_TEST(test_threads_l3_chaos)
{
    struct fixture fx;
    pthread_t w[2], r, ch;
    struct th_arg wa[2], ra;
    struct chaos_arg ca;
    atomic_bool stop = false, stop_chaos = false;

    int devnull = open("/dev/null", O_WRONLY);

    ck_assert_int_ge(devnull, 0);
    log_set_fd(devnull); /* the expected "degraded" ERROR lines */
    fx_open(&fx, 4, 8, true);
    ca = (struct chaos_arg){&fx, &stop_chaos};
    ra = (struct th_arg){fx.c, 10, &stop};
    ck_assert_int_eq(pthread_create(&ch, NULL, th_chaos, &ca), 0);
    ck_assert_int_eq(pthread_create(&r, NULL, th_reader, &ra), 0);
    for (int i = 0; i < 2; i++) {
        wa[i] = (struct th_arg){fx.c, i, &stop};
        ck_assert_int_eq(pthread_create(&w[i], NULL, th_writer, &wa[i]), 0);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(w[i], NULL);
    atomic_store(&stop, true);
    atomic_store(&stop_chaos, true);
    pthread_join(r, NULL);
    pthread_join(ch, NULL);
    for (int i = 0; i < 10 && (stats(fx.c).pending_l3 ||
                               stats(fx.c).tier[CACHE_L3].degraded);
         i++)
        cache_maintain(fx.c);
    ck_assert(!stats(fx.c).tier[CACHE_L3].degraded);
    ck_assert_uint_eq(stats(fx.c).pending_l3, 0);
    ck_assert_uint_gt(stats(fx.c).tier[CACHE_L3].failures_total, 0);
    log_set_fd(2);
    close(devnull);
    for (int id = 0; id < 2; id++) {
        for (int k = 0; k < TH_KEYS; k++) {
            char want[32], key[ENTRY_KEY_LEN + 1];
            struct entry *e;
            snprintf(want, sizeof want, "w%d-%d", id, TH_VERSIONS - 1);
            key_of(id * 100 + k, key);
            e = fake_peek(fx.l3, key);
            ck_assert_ptr_nonnull(e);
            ck_assert_str_eq(e->source, want);
            entry_unref(e);
            ck_assert_int_ge(get_tier(fx.c, id * 100 + k, &e), 0);
            ck_assert_str_eq(e->source, want);
            entry_unref(e);
        }
    }
    fx_close(&fx);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* Writes to one key are serialised (per-stripe writer mutex).            */

#define SK_THREADS 8
#define SK_REPORTS 50
#define SK_UPSERTS 300

struct sk_arg {
    struct cache *c;
    int id;
    char key[ENTRY_KEY_LEN + 1];
    pthread_barrier_t *go;
};

/* Fake tiers with a short nap before each write, to widen the window
 * between a writer's read and its write (the race needs it to show). */
static struct tier_ops slow_l3_ops;

static void nap_us(long us)
{
    struct timespec ts = {0, us * 1000L};
    nanosleep(&ts, NULL);
}

/* 10..137 µs, varying from call to call. */
static void nap_jitter(void)
{
    static _Atomic unsigned n;
    unsigned x = atomic_fetch_add(&n, 1) * 2654435761u;
    nap_us(10 + (long)(x >> 25));
}

static int slow_put_batch(struct tier *t, struct entry *const *es, size_t n,
                          size_t *nv)
{
    nap_jitter();
    return fake_put_batch(t, es, n, nv);
}

static int slow_put(struct tier *t, struct entry *e, unsigned flags,
                    struct entry **victim)
{
    nap_jitter();
    return fake_put(t, e, flags, victim);
}

static struct tier_ops slow_l2_ops;

/* Both fake tiers nap before each write. */
static void make_slow(struct fixture *fx)
{
    slow_l3_ops = *fx->l3->base.ops;
    slow_l3_ops.put_batch = slow_put_batch;
    slow_l3_ops.put = slow_put;
    fx->l3->base.ops = &slow_l3_ops;
    slow_l2_ops = *fx->l2->base.ops;
    slow_l2_ops.put_batch = slow_put_batch;
    slow_l2_ops.put = slow_put;
    fx->l2->base.ops = &slow_l2_ops;
}

static void *th_health(void *p)
{
    struct sk_arg *a = p;
    pthread_barrier_wait(a->go);
    for (int i = 0; i < SK_REPORTS; i++) {
        struct entry *e = NULL;
        bool ev = true;
        ck_assert_int_eq(cache_report_health(a->c, a->key, false, &e, &ev), 0);
        ck_assert(!ev);
        entry_unref(e);
    }
    return NULL;
}

START_TEST(test_same_key_health_serialised)
{
    struct fixture fx;
    struct cache_config cfg = base_cfg();
    pthread_t th[SK_THREADS];
    struct sk_arg a[SK_THREADS];
    pthread_barrier_t go;
    struct entry *e = NULL;
    char key[ENTRY_KEY_LEN + 1];

    cfg.l1_capacity = 4;
    cfg.l2_capacity = 8;
    cfg.failure_threshold = 100000;
    fx_open_cfg(&fx, 4, 8, true, &cfg);
    up(fx.c, mk(7, "s", T0, 3600), CACHE_F_ALL, 0, NULL);
    make_slow(&fx);
    key_of(7, key);
    ck_assert_int_eq(pthread_barrier_init(&go, NULL, SK_THREADS), 0);
    for (int i = 0; i < SK_THREADS; i++) {
        a[i].go = &go;
        a[i].c = fx.c;
        a[i].id = i;
        memcpy(a[i].key, key, sizeof(key));
        ck_assert_int_eq(pthread_create(&th[i], NULL, th_health, &a[i]), 0);
    }
    for (int i = 0; i < SK_THREADS; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&go);
    e = fake_peek(fx.l3, key);
    ck_assert_ptr_nonnull(e);
    ck_assert_uint_eq(e->failure_count, SK_THREADS * SK_REPORTS);
    entry_unref(e);
    ck_assert_int_ge(get_tier(fx.c, 7, &e), 0);
    ck_assert_uint_eq(e->failure_count, SK_THREADS * SK_REPORTS);
    ck_assert_int_eq(e->health, ENTRY_HEALTH_UNHEALTHY);
    entry_unref(e);
    fx_close(&fx);
}
END_TEST

static void *th_same_key_upsert(void *p)
{
    struct sk_arg *a = p;
    for (int v = 0; v < SK_UPSERTS; v++) {
        char src[32];
        snprintf(src, sizeof src, "t%d-%d", a->id, v);
        pthread_barrier_wait(a->go); /* round starts */
        up(a->c, mk(9, src, T0, 3600), CACHE_F_ALL, 0, NULL);
        pthread_barrier_wait(a->go); /* round done: main checks */
    }
    return NULL;
}

/* L1, L2 and L3 hold the same version of key (all present). */
static void assert_tiers_agree(struct fixture *fx, const char *key, int v)
{
    struct entry *e3 = fake_peek(fx->l3, key), *e2 = fake_peek(fx->l2, key);
    struct entry *e1 = NULL;

    ck_assert_ptr_nonnull(e3);
    ck_assert_ptr_nonnull(e2);
    ck_assert_int_eq(fx->l1->ops->get(fx->l1, key, &e1), 0);
    ck_assert_msg(strcmp(e2->source, e3->source) == 0 &&
                      strcmp(e1->source, e3->source) == 0,
                  "round %d: l1=%s l2=%s l3=%s", v, e1->source, e2->source,
                  e3->source);
    entry_unref(e1);
    entry_unref(e2);
    entry_unref(e3);
}

START_TEST(test_same_key_upsert_serialised)
{
    struct fixture fx;
    pthread_t th[2];
    struct sk_arg a[2];
    pthread_barrier_t go;
    char key[ENTRY_KEY_LEN + 1];

    fx_open(&fx, 4, 8, true);
    make_slow(&fx);
    key_of(9, key);
    /* Two writers race on one key each round; the main thread checks
     * between rounds that every tier got the same last version. */
    ck_assert_int_eq(pthread_barrier_init(&go, NULL, 3), 0);
    for (int i = 0; i < 2; i++) {
        a[i].go = &go;
        a[i].c = fx.c;
        a[i].id = i;
        memcpy(a[i].key, key, sizeof(key));
        ck_assert_int_eq(
            pthread_create(&th[i], NULL, th_same_key_upsert, &a[i]), 0);
    }
    for (int v = 0; v < SK_UPSERTS; v++) {
        pthread_barrier_wait(&go);
        pthread_barrier_wait(&go);
        assert_tiers_agree(&fx, key, v);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&go);
    fx_close(&fx);
}
END_TEST

static Suite *cache_suite(void)
{
    Suite *s = suite_create("cache");
    TCase *tc;
    struct {
        const char *name;
        const TTest *fn;
    } cases[] = {
        {"note_tier_result", test_note_tier_result},
        {"l3_degrade_recover", test_l3_degrades_and_recovers},
        {"l3_transient", test_transient_l3_failure_replayed_by_next_writer},
        {"l3_clear_degraded", test_l3_clear_while_degraded},
        {"write_waits_for_replay", test_write_waits_for_replay},
        {"l2_degrade_recover", test_l2_degrades_and_recovers},
        {"failing_get", test_failing_get_is_a_miss},
        {"tier_movement", test_tier_movement},
        {"big_batch_l2", test_big_batch_drops_stale_l2_copy},
        {"access_stats", test_access_stats},
        {"ttl_zero", test_ttl_zero},
        {"lazy_expiry", test_lazy_expiry},
        {"sweep", test_sweep},
        {"sweeper_thread", test_sweeper_thread},
        {"no_old_l2_at_commit", test_no_old_l2_copy_at_l3_commit},
        {"demote_keeps_newer_l2", test_demote_keeps_newer_l2_copy},
        {"sweeper_mass_expiry", test_sweeper_mass_expiry},
        {"health", test_health},
        {"health_no_l1", test_health_does_not_pull_into_l1},
        {"corrupt_record", test_corrupt_tier_record},
        {"corrupt_token", test_corrupt_token},
        {"stats", test_stats_add_up},
        {"ttl_for_source", test_ttl_for_source},
        {"bad_args", test_bad_args},
        {"batch", test_batch_semantics},
        {"list", test_list},
        {"pick", test_pick},
        {"clear", test_clear_counts_distinct},
        {"l1_only", test_l1_only},
        {"close_writeback", test_close_writes_back_access_stats},
        {"threads", test_threads_no_lost_writes},
        {"threads_chaos", test_threads_l3_chaos},
        {"same_key_health", test_same_key_health_serialised},
        {"same_key_upsert", test_same_key_upsert_serialised},
    };

    tc = tcase_create("model");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 300);
    tcase_add_loop_test(tc, test_model, 0, 5);
    suite_add_tcase(s, tc);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tc = tcase_create(cases[i].name);
        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, cases[i].fn);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void)
{
    return testutil_run(cache_suite());
}
