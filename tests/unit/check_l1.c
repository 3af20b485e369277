/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the L1 tier (storage/l1_mem.c) through its ops table:
 * capacity and LRU victims, move-to-front on get, NOTOUCH, replace, the
 * sharded LRU of larger tables, scan order/filter/paging (and that scan
 * does not touch LRU order), bounded and reproducible samples, bounded
 * sweeps, clear, bad input, bucket growth, and a 4-thread mixed workload
 * meant for ThreadSanitizer.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/log.h"
#include "storage/entry.h"
#include "storage/l1_mem.h"
#include "storage/tier.h"
#include "tests/unit/testutil.h"

#define T0 1764064800000LL /* 2025-11-25T10:00:00Z */

static void setup(void)
{
    log_set_level(LOG_LEVEL_ERROR);
}

/* A valid entry for proxy number i (distinct keys for distinct i). */
static struct entry *mk(int i, const char *source, int64_t ttl)
{
    return testutil_entry(i, source, T0, ttl);
}

static struct tier *open_l1(size_t cap)
{
    struct tier *t = NULL;
    ck_assert_int_eq(l1_mem_open(cap, &t), 0);
    ck_assert_ptr_nonnull(t);
    return t;
}

/* Put e (consumed) and return the victim's key index via the source field
 * convention "v<i>", or -1 when there was no victim. */
static int put_idx(struct tier *t, struct entry *e, unsigned flags)
{
    struct entry *v = NULL;
    int idx = -1;
    ck_assert_int_eq(t->ops->put(t, e, flags, &v), 0);
    entry_unref(e);
    if (v) {
        ck_assert_int_eq(sscanf(v->source, "v%d", &idx), 1);
        entry_unref(v);
    }
    return idx;
}

static struct entry *mkv(int i)
{
    char src[16];
    snprintf(src, sizeof src, "v%d", i);
    return mk(i, src, 3600);
}

static bool has(struct tier *t, int i)
{
    struct entry *probe = mk(i, NULL, 1), *got = NULL;
    int err = t->ops->get(t, probe->key, &got);
    entry_unref(probe);
    entry_unref(got);
    return err == 0;
}

START_TEST(test_capacity_and_victims)
{
    struct tier *t = open_l1(3);

    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(put_idx(t, mkv(i), 0), -1);
    ck_assert_uint_eq(t->ops->size(t), 3);
    /* Victims leave in insertion (LRU) order. */
    ck_assert_int_eq(put_idx(t, mkv(3), 0), 0);
    ck_assert_int_eq(put_idx(t, mkv(4), 0), 1);
    ck_assert_uint_eq(t->ops->size(t), 3);
    ck_assert(!has(t, 0) && !has(t, 1));
    ck_assert(has(t, 2) && has(t, 3) && has(t, 4));
    /* Without a victim pointer the victim is simply dropped. */
    {
        struct entry *e = mkv(5);
        ck_assert_int_eq(t->ops->put(t, e, 0, NULL), 0);
        entry_unref(e);
    }
    ck_assert_uint_eq(t->ops->size(t), 3);
    tier_close(t);
}
END_TEST

START_TEST(test_get_moves_to_front)
{
    struct tier *t = open_l1(3);
    struct entry *probe = mkv(0), *got = NULL;

    for (int i = 0; i < 3; i++)
        put_idx(t, mkv(i), 0);
    /* 0 is the LRU; reading it makes 1 the LRU. */
    ck_assert_int_eq(t->ops->get(t, probe->key, &got), 0);
    ck_assert_str_eq(got->source, "v0");
    entry_unref(got);
    ck_assert_int_eq(put_idx(t, mkv(3), 0), 1);
    ck_assert_int_eq(put_idx(t, mkv(4), 0), 2);
    ck_assert_int_eq(put_idx(t, mkv(5), 0), 0);
    entry_unref(probe);
    tier_close(t);
}
END_TEST

START_TEST(test_replace_and_notouch)
{
    struct tier *t = open_l1(3);
    struct entry *e, *got = NULL;

    for (int i = 0; i < 3; i++)
        put_idx(t, mkv(i), 0);
    /* Replace 0 without touching: it stays the LRU. */
    e = mk(0, "v0-new", 3600);
    ck_assert_int_eq(put_idx(t, e, TIER_PUT_NOTOUCH), -1);
    ck_assert_uint_eq(t->ops->size(t), 3);
    e = mkv(0);
    ck_assert_int_eq(t->ops->get(t, e->key, &got), 0);
    ck_assert_str_eq(got->source, "v0-new");
    entry_unref(got);
    entry_unref(e);
    /* ...but the get above moved it; replace 1 (now LRU) with a touch. */
    ck_assert_int_eq(put_idx(t, mk(1, "v1", 3600), 0), -1);
    /* LRU is now 2. */
    ck_assert_int_eq(put_idx(t, mkv(3), 0), 2);
    tier_close(t);
}
END_TEST

START_TEST(test_replace_not_touching_stays_lru)
{
    struct tier *t = open_l1(2);

    put_idx(t, mkv(0), 0);
    put_idx(t, mkv(1), 0);
    ck_assert_int_eq(put_idx(t, mk(0, "v0", 60), TIER_PUT_NOTOUCH), -1);
    ck_assert_int_eq(put_idx(t, mkv(2), 0), 0);
    tier_close(t);
}
END_TEST

START_TEST(test_returned_reference_survives_eviction)
{
    struct tier *t = open_l1(1);
    struct entry *e = mkv(0), *got = NULL;

    put_idx(t, entry_ref(e), 0);
    ck_assert_int_eq(t->ops->get(t, e->key, &got), 0);
    ck_assert_int_eq(put_idx(t, mkv(1), 0), 0); /* evicts 0 */
    ck_assert_str_eq(got->source, "v0");        /* still ours */
    entry_unref(got);
    entry_unref(e);
    tier_close(t);
}
END_TEST

START_TEST(test_sharded_large)
{
    /* capacity 1000: 8 shards of 125, LRU per shard. The total never
     * exceeds the capacity and reaches it once every shard is full; an
     * entry read between inserts is always its shard's MRU and survives,
     * an entry never read again is evicted. */
    struct tier *t = open_l1(1000);
    struct entry *hot = mkv(0), *got = NULL;
    int victims = 0;

    for (int i = 0; i < 1000; i++)
        victims += put_idx(t, mkv(i), 0) >= 0;
    ck_assert_uint_eq(t->ops->size(t) + (size_t)victims, 1000);
    for (int i = 1000; i < 6000; i++) {
        ck_assert_int_eq(t->ops->get(t, hot->key, &got), 0);
        entry_unref(got);
        ck_assert_int_ne(put_idx(t, mkv(i), 0), 0);
        ck_assert_uint_le(t->ops->size(t), 1000);
    }
    ck_assert_uint_eq(t->ops->size(t), 1000);
    ck_assert(has(t, 0));
    ck_assert(!has(t, 1) && !has(t, 2) && !has(t, 3));
    entry_unref(hot);
    tier_close(t);
}
END_TEST

START_TEST(test_growth)
{
    struct tier *t = open_l1(100000);

    for (int i = 0; i < 20000; i++)
        ck_assert_int_eq(put_idx(t, mkv(i), 0), -1);
    ck_assert_uint_eq(t->ops->size(t), 20000);
    for (int i = 0; i < 20000; i += 97)
        ck_assert(has(t, i));
    ck_assert(!has(t, 20001));
    tier_close(t);
}
END_TEST

START_TEST(test_bad_input)
{
    struct tier *t = NULL, *l1 = open_l1(4);
    struct entry *e = mkv(0), *got = NULL;

    ck_assert_int_eq(l1_mem_open(0, &t), -EINVAL);
    ck_assert_int_eq(l1->ops->get(l1, "nothex", &got), -ENOENT);
    ck_assert_int_eq(l1->ops->get(l1, "", &got), -ENOENT);
    ck_assert_int_eq(l1->ops->del(l1, e->key), -ENOENT);
    e->key[10] = 'Z';
    ck_assert_int_eq(l1->ops->put(l1, e, 0, NULL), -EINVAL);
    e->key[10] = 'a';
    e->key[63] = '\0';
    ck_assert_int_eq(l1->ops->put(l1, e, 0, NULL), -EINVAL);
    ck_assert_int_eq(l1->ops->put(l1, NULL, 0, NULL), -EINVAL);
    ck_assert_uint_eq(l1->ops->size(l1), 0);
    ck_assert_int_eq(l1->ops->probe(l1), 0);
    ck_assert_uint_eq(l1->ops->corrupt_count(l1), 0);
    entry_unref(e);
    tier_close(l1);
    tier_close(NULL);
}
END_TEST

START_TEST(test_del)
{
    struct tier *t = open_l1(4);
    struct entry *e = mkv(1);

    put_idx(t, mkv(1), 0);
    put_idx(t, mkv(2), 0);
    ck_assert_int_eq(t->ops->del(t, e->key), 0);
    ck_assert_int_eq(t->ops->del(t, e->key), -ENOENT);
    ck_assert_uint_eq(t->ops->size(t), 1);
    ck_assert(!has(t, 1) && has(t, 2));
    entry_unref(e);
    tier_close(t);
}
END_TEST

/* scan helpers */
struct keys {
    char k[256][ENTRY_KEY_LEN + 1];
    char src[256][16];
    size_t n;
    size_t stop_after; /* 0 = never */
};

static int keys_cb(void *arg, struct entry *e)
{
    struct keys *k = arg;
    ck_assert_uint_lt(k->n, 256);
    snprintf(k->k[k->n], sizeof k->k[0], "%s", e->key);
    snprintf(k->src[k->n], sizeof k->src[0], "%s", e->source);
    k->n++;
    return k->stop_after && k->n >= k->stop_after ? 7 : 0;
}

START_TEST(test_scan_order_filter_paging)
{
    struct tier *t = open_l1(200);
    struct tier_filter f;
    struct keys *k = calloc(1, sizeof(*k));
    char after[ENTRY_KEY_LEN + 1] = "";
    size_t total = 0;

    for (int i = 0; i < 100; i++)
        put_idx(t, mk(i, i % 3 == 0 ? "a" : "b", i < 90 ? 3600 : 1), 0);

    tier_filter_init(&f, T0 + 10000); /* the last 10 are expired */
    /* All, in pages of 7: ascending, no duplicates, expired skipped. */
    for (;;) {
        k->n = 0;
        ck_assert_int_eq(t->ops->scan(t, &f, after, 7, keys_cb, k), 0);
        for (size_t i = 0; i < k->n; i++) {
            ck_assert_int_gt(strcmp(k->k[i], after), 0);
            if (i)
                ck_assert_int_gt(strcmp(k->k[i], k->k[i - 1]), 0);
        }
        total += k->n;
        if (k->n < 7)
            break;
        snprintf(after, sizeof after, "%s", k->k[k->n - 1]);
    }
    ck_assert_uint_eq(total, 90);

    /* Filter by source. */
    f.source = "a";
    k->n = 0;
    ck_assert_int_eq(t->ops->scan(t, &f, NULL, 1000, keys_cb, k), 0);
    ck_assert_uint_eq(k->n, 30); /* i % 3 == 0 and i < 90 */
    for (size_t i = 0; i < k->n; i++)
        ck_assert_str_eq(k->src[i], "a");

    /* The callback's non-zero value stops the scan and is returned. */
    k->n = 0;
    k->stop_after = 3;
    ck_assert_int_eq(t->ops->scan(t, &f, "", 1000, keys_cb, k), 7);
    ck_assert_uint_eq(k->n, 3);
    ck_assert_int_eq(t->ops->scan(t, &f, "", 0, keys_cb, k), 0);
    free(k);
    tier_close(t);
}
END_TEST

START_TEST(test_scan_does_not_touch_lru)
{
    struct tier *t = open_l1(3);
    struct tier_filter f;
    struct keys *k = calloc(1, sizeof(*k));

    for (int i = 0; i < 3; i++)
        put_idx(t, mkv(i), 0);
    tier_filter_init(&f, T0);
    ck_assert_int_eq(t->ops->scan(t, &f, "", 10, keys_cb, k), 0);
    ck_assert_uint_eq(k->n, 3);
    ck_assert_int_eq(put_idx(t, mkv(3), 0), 0);
    free(k);
    tier_close(t);
}
END_TEST

START_TEST(test_sample)
{
    struct tier *t = open_l1(500);
    struct tier_filter f;
    struct keys *a = calloc(1, sizeof(*a)), *b = calloc(1, sizeof(*b));

    for (int i = 0; i < 200; i++)
        put_idx(t, mk(i, i % 2 ? "odd" : "even", 3600), 0);
    tier_filter_init(&f, T0);

    ck_assert_int_eq(t->ops->sample(t, &f, 10, 42, keys_cb, a), 0);
    ck_assert_uint_eq(a->n, 10);
    /* Without replacement. */
    for (size_t i = 0; i < a->n; i++)
        for (size_t j = i + 1; j < a->n; j++)
            ck_assert_str_ne(a->k[i], a->k[j]);
    /* Reproducible with the same seed. */
    ck_assert_int_eq(t->ops->sample(t, &f, 10, 42, keys_cb, b), 0);
    ck_assert_uint_eq(b->n, 10);
    for (size_t i = 0; i < a->n; i++)
        ck_assert_str_eq(a->k[i], b->k[i]);
    /* A different seed gives a different sample (overwhelmingly). */
    b->n = 0;
    ck_assert_int_eq(t->ops->sample(t, &f, 10, 43, keys_cb, b), 0);
    ck_assert(memcmp(a->k, b->k, sizeof(a->k[0]) * 10) != 0);
    /* Filtered. */
    f.source = "odd";
    a->n = 0;
    ck_assert_int_eq(t->ops->sample(t, &f, 250, 7, keys_cb, a), 0);
    ck_assert_uint_eq(a->n, 100);
    for (size_t i = 0; i < a->n; i++)
        ck_assert_str_eq(a->src[i], "odd");
    /* max 0 and a filter matching nothing. */
    a->n = 0;
    ck_assert_int_eq(t->ops->sample(t, &f, 0, 7, keys_cb, a), 0);
    f.source = "none";
    ck_assert_int_eq(t->ops->sample(t, &f, 5, 7, keys_cb, a), 0);
    ck_assert_uint_eq(a->n, 0);
    free(a);
    free(b);
    tier_close(t);
}
END_TEST

START_TEST(test_sample_bounded_work)
{
    /* A filter that matches one entry out of 50,000: the sample gives up
     * after its visit budget instead of walking the table. It may or may
     * not find the one; it must return quickly and never more than max. */
    struct tier *t = open_l1(60000);
    struct tier_filter f;
    struct keys *a = calloc(1, sizeof(*a));
    uint64_t t0;

    for (int i = 0; i < 50000; i++)
        put_idx(t, mk(i, i == 777 ? "rare" : "common", 3600), 0);
    tier_filter_init(&f, T0);
    f.source = "rare";
    t0 = clock_mono_ns();
    for (int r = 0; r < 100; r++)
        ck_assert_int_eq(t->ops->sample(t, &f, 1, (uint64_t)r, keys_cb, a), 0);
    ck_assert_uint_le(a->n, 100);
    /* 100 bounded samples (4096 visits each) take far less than 100 full
     * walks; a generous bound that only catches a full scan per call. */
    ck_assert_uint_lt(clock_mono_ns() - t0, 2000000000ULL);
    free(a);
    tier_close(t);
}
END_TEST

START_TEST(test_sweep)
{
    struct tier *t = open_l1(100);
    size_t removed = 99, total = 0;

    for (int i = 0; i < 50; i++)
        put_idx(t, mk(i, "s", i < 30 ? 10 : 3600), 0);
    ck_assert_int_eq(t->ops->sweep(t, T0 + 5000, 100, &removed), 0);
    ck_assert_uint_eq(removed, 0);
    /* Bounded: at most max per call. */
    ck_assert_int_eq(t->ops->sweep(t, T0 + 10000, 7, &removed), 0);
    ck_assert_uint_eq(removed, 7);
    total += removed;
    while (removed) {
        ck_assert_int_eq(t->ops->sweep(t, T0 + 10000, 7, &removed), 0);
        ck_assert_uint_le(removed, 7);
        total += removed;
    }
    ck_assert_uint_eq(total, 30);
    ck_assert_uint_eq(t->ops->size(t), 20);
    for (int i = 0; i < 50; i++)
        ck_assert(has(t, i) == (i >= 30));
    tier_close(t);
}
END_TEST

START_TEST(test_clear)
{
    struct tier *t = open_l1(10);
    size_t removed = 0;

    for (int i = 0; i < 8; i++)
        put_idx(t, mkv(i), 0);
    ck_assert_int_eq(t->ops->clear(t, &removed), 0);
    ck_assert_uint_eq(removed, 8);
    ck_assert_uint_eq(t->ops->size(t), 0);
    ck_assert(!has(t, 3));
    ck_assert_int_eq(t->ops->clear(t, NULL), 0);
    /* Usable afterwards, with the full capacity. */
    for (int i = 0; i < 10; i++)
        ck_assert_int_eq(put_idx(t, mkv(i), 0), -1);
    ck_assert_int_eq(put_idx(t, mkv(10), 0), 0);
    tier_close(t);
}
END_TEST

START_TEST(test_put_batch)
{
    struct tier *t = open_l1(4);
    struct entry *es[6];
    size_t nv = 99;

    for (int i = 0; i < 6; i++)
        es[i] = mkv(i);
    ck_assert_int_eq(t->ops->put_batch(t, es, 6, &nv), 0);
    ck_assert_uint_eq(nv, 2);
    ck_assert_uint_eq(t->ops->size(t), 4);
    ck_assert(!has(t, 0) && !has(t, 1) && has(t, 5));
    for (int i = 0; i < 6; i++)
        entry_unref(es[i]);
    tier_close(t);
}
END_TEST

/* Four threads hammer a small table with every operation. Run under TSan
 * to catch races; here we check the invariants that survive. */
#define MT_KEYS 2048
#define MT_OPS  20000

struct mt_arg {
    struct tier *t;
    struct entry **pool;
    unsigned seed;
};

static int count_cb(void *arg, struct entry *e)
{
    (void)e;
    (*(size_t *)arg)++;
    return 0;
}

static void *mt_run(void *p)
{
    struct mt_arg *a = p;
    struct tier_filter f;
    uint64_t x = a->seed * 2654435761u + 1;

    tier_filter_init(&f, T0);
    for (int i = 0; i < MT_OPS; i++) {
        struct entry *got = NULL, *v = NULL;
        size_t n = 0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        struct entry *e = a->pool[x % MT_KEYS];
        switch ((x >> 20) % 10) {
        case 0:
        case 1:
        case 2:
            if (a->t->ops->put(a->t, e, 0, &v) == 0)
                entry_unref(v);
            break;
        case 3:
            (void)a->t->ops->del(a->t, e->key);
            break;
        case 4:
            if (i % 50 == 0)
                (void)a->t->ops->scan(a->t, &f, "", 10, count_cb, &n);
            else
                (void)a->t->ops->sample(a->t, &f, 5, x, count_cb, &n);
            break;
        case 5:
            if (i % 200 == 0)
                (void)a->t->ops->sweep(a->t, T0 + 1, 16, &n);
            break;
        default:
            if (a->t->ops->get(a->t, e->key, &got) == 0) {
                ck_assert_str_eq(got->key, e->key);
                atomic_fetch_add(&got->access_count, 1);
                entry_unref(got);
            }
            break;
        }
    }
    return NULL;
}

START_TEST(test_concurrent)
{
    /* One shard (exact LRU), then 16 shards. */
    static const size_t caps[] = {64, 1024};
    struct tier *t = open_l1(caps[_i]);
    struct entry **pool = calloc(MT_KEYS, sizeof(*pool));
    pthread_t th[4];
    struct mt_arg args[4];
    size_t n = 0;
    struct tier_filter f;

    for (int i = 0; i < MT_KEYS; i++)
        pool[i] = mk(i, "mt", i % 16 == 0 ? 0 : 3600);
    for (int i = 0; i < 4; i++) {
        args[i] = (struct mt_arg){t, pool, (unsigned)i + 1};
        ck_assert_int_eq(pthread_create(&th[i], NULL, mt_run, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    ck_assert_uint_le(t->ops->size(t), caps[_i]);
    tier_filter_init(&f, INT64_MIN);
    ck_assert_int_eq(t->ops->scan(t, &f, "", SIZE_MAX, count_cb, &n), 0);
    ck_assert_uint_eq(n, t->ops->size(t));
    tier_close(t);
    /* Only our references remain. */
    for (int i = 0; i < MT_KEYS; i++) {
        ck_assert_int_eq(atomic_load(&pool[i]->refs), 1);
        entry_unref(pool[i]);
    }
    free(pool);
}
END_TEST

static Suite *l1_suite(void)
{
    Suite *s = suite_create("l1_mem");
    struct {
        const char *name;
        const TTest *fn;
    } cases[] = {
        {"capacity", test_capacity_and_victims},
        {"lru_get", test_get_moves_to_front},
        {"replace", test_replace_and_notouch},
        {"notouch", test_replace_not_touching_stays_lru},
        {"refs", test_returned_reference_survives_eviction},
        {"sharded", test_sharded_large},
        {"growth", test_growth},
        {"bad_input", test_bad_input},
        {"del", test_del},
        {"scan", test_scan_order_filter_paging},
        {"scan_no_touch", test_scan_does_not_touch_lru},
        {"sample", test_sample},
        {"sample_bounded", test_sample_bounded_work},
        {"sweep", test_sweep},
        {"clear", test_clear},
        {"put_batch", test_put_batch},
        {"concurrent", test_concurrent},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        TCase *tc = tcase_create(cases[i].name);
        tcase_add_checked_fixture(tc, setup, NULL);
        tcase_set_timeout(tc, 60);
        if (cases[i].fn == test_concurrent)
            tcase_add_loop_test(tc, cases[i].fn, 0, 2);
        else
            tcase_add_test(tc, cases[i].fn);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void)
{
    return testutil_run(l1_suite());
}
