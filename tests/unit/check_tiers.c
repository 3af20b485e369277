/* SPDX-License-Identifier: MIT */
/*
 * Tier conformance suite: one set of behaviours, run against every tier
 * implementation (l1_mem, l2_jsonl, l3_sqlite) through the ops table only.
 * Each TCase is a loop test over the tiers (_i picks the tier), so a
 * failure names both the behaviour and the tier. The reference for the
 * filters is tier_filter_match() itself: every tier must select exactly
 * what the predicate selects, in ascending key order for scan.
 */
#include "config.h"

#include <check.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "storage/entry.h"
#include "storage/l1_mem.h"
#include "storage/l2_jsonl.h"
#include "storage/l3_sqlite.h"
#include "storage/tier.h"
#include "tests/unit/testutil.h"

#define T0        INT64_C(1790000000000) /* a fixed "now" in ms (2026) */
#define N_ENTRIES 60                     /* below every tier's capacity (100) */

struct tier_kind {
    const char *name;
    int (*open)(const char *dir, struct tier **out);
};

static int open_l1(const char *dir, struct tier **out)
{
    (void)dir;
    return l1_mem_open(100, out);
}

static int open_l2(const char *dir, struct tier **out)
{
    return l2_jsonl_open(dir, 100, out);
}

static int open_l3(const char *dir, struct tier **out)
{
    return l3_sqlite_open(dir, 0, out);
}

static const struct tier_kind kinds[] = {
    {"l1", open_l1},
    {"l2", open_l2},
    {"l3", open_l3},
};
#define N_KINDS ((int)(sizeof kinds / sizeof kinds[0]))

static char *dir;
static struct tier *tier;
static struct entry *es[N_ENTRIES];

static void setup(void)
{
    log_set_level(LOG_LEVEL_ERROR);
    dir = testutil_mkdtemp();
}

static void teardown(void)
{
    size_t i;

    tier_close(tier);
    tier = NULL;
    for (i = 0; i < N_ENTRIES; i++) {
        entry_unref(es[i]);
        es[i] = NULL;
    }
    testutil_rmrf(dir);
    dir = NULL;
}

static struct tier *open_kind(int i)
{
    struct tier *t = NULL;

    ck_assert_msg(kinds[i].open(dir, &t) == 0, "%s: open", kinds[i].name);
    ck_assert_ptr_nonnull(t);
    ck_assert_str_eq(t->ops->name, kinds[i].name);
    return t;
}

/*
 * Entry i of a varied population: every filterable field cycles with a
 * different period, so filters select irregular subsets. Entries with
 * i % 7 == 0 are expired at T0.
 */
static struct entry *mk(unsigned i)
{
    static const char *const schemes[] = {"http", "https", "socks4", "socks5"};
    static const char *const countries[] = {"", "US", "DE"};
    char url[80];
    struct entry_url u;
    struct entry *e;

    snprintf(url, sizeof url, "%s://proxy%u.example.net:%u", schemes[i % 4], i,
             2000 + i);
    ck_assert_int_eq(entry_url_parse(url, -1, &u, NULL), 0);
    e = entry_new();
    ck_assert_ptr_nonnull(e);
    ck_assert_int_eq(entry_set_str(&e->proxy_url, u.normalised), 0);
    e->scheme = u.scheme;
    entry_key_from_normalised(u.normalised, e->key);
    entry_url_fini(&u);
    ck_assert_int_eq(entry_set_str(&e->source, i % 2 ? "list-a" : "list-b"), 0);
    e->fetch_time = T0 - 1000 * (int64_t)i;
    e->ttl_seconds = i % 7 == 0 ? (int64_t)i / 7 : 3600;
    entry_compute_expiry(e);
    e->health = (enum entry_health)(i % 3);
    e->failure_count = i % 3 == ENTRY_HEALTH_UNHEALTHY ? i % 5 : 0;
    snprintf(e->country, sizeof e->country, "%s",
             countries[i % 3 == 0 ? 0 : i % 2 + 1]);
    e->anonymity = (enum entry_anonymity)(i % 4);
    e->latency_ms = i % 5 == 0 ? -1 : (int64_t)(i * 37 % 1500);
    atomic_store(&e->last_accessed, i % 6 == 0 ? 0 : T0 - 5000 + (int64_t)i);
    atomic_store(&e->access_count, (uint64_t)i * 3);
    if (i % 4 == 1) {
        ck_assert_int_eq(entry_set_str(&e->username_tok,
                                       "gAAAAABmUser-Token_0123456789abcdef=="),
                         0);
        ck_assert_int_eq(entry_set_str(&e->password_tok,
                                       "gAAAAABmPass-Token_fedcba9876543210=="),
                         0);
    }
    ck_assert_int_eq(entry_validate(e, NULL), 0);
    return e;
}

static void fill(void)
{
    unsigned i;

    for (i = 0; i < N_ENTRIES; i++) {
        es[i] = mk(i);
        ck_assert_int_eq(tier->ops->put(tier, es[i], 0, NULL), 0);
    }
    ck_assert_uint_eq(tier->ops->size(tier), N_ENTRIES);
}

static void str_same(const char *field, const char *a, const char *b)
{
    if (!a || !b)
        ck_assert_msg(a == b, "%s: %s vs %s", field, a ? a : "(null)",
                      b ? b : "(null)");
    else
        ck_assert_msg(strcmp(a, b) == 0, "%s: %s vs %s", field, a, b);
}

/* Every field, one by one, so a failure names the field. */
static void assert_same_entry(const struct entry *a, const struct entry *b)
{
    str_same("key", a->key, b->key);
    str_same("proxy_url", a->proxy_url, b->proxy_url);
    str_same("username_tok", a->username_tok, b->username_tok);
    str_same("password_tok", a->password_tok, b->password_tok);
    str_same("source", a->source, b->source);
    ck_assert_int_eq(a->scheme, b->scheme);
    ck_assert_int_eq(a->fetch_time, b->fetch_time);
    ck_assert_int_eq(a->ttl_seconds, b->ttl_seconds);
    ck_assert_int_eq(a->expires_at, b->expires_at);
    ck_assert_int_eq(a->health, b->health);
    ck_assert_uint_eq(a->failure_count, b->failure_count);
    str_same("country", a->country, b->country);
    ck_assert_int_eq(a->anonymity, b->anonymity);
    ck_assert_int_eq(a->latency_ms, b->latency_ms);
    ck_assert_int_eq(atomic_load(&a->last_accessed),
                     atomic_load(&b->last_accessed));
    ck_assert_uint_eq(atomic_load(&a->access_count),
                      atomic_load(&b->access_count));
}

/* ------------------------------------------------------------------ */

START_TEST(test_roundtrip)
{
    size_t i;

    tier = open_kind(_i);
    fill();
    for (i = 0; i < N_ENTRIES; i++) {
        struct entry *got = NULL;

        ck_assert_msg(tier->ops->get(tier, es[i]->key, &got) == 0,
                      "%s: get %zu", kinds[_i].name, i);
        assert_same_entry(es[i], got);
        entry_unref(got);
    }
    ck_assert_uint_eq(tier->ops->corrupt_count(tier), 0);
    ck_assert_int_eq(tier->ops->probe(tier), 0);
}
END_TEST

START_TEST(test_replace)
{
    struct entry *b, *got = NULL;

    tier = open_kind(_i);
    fill();
    b = entry_dup(es[5]);
    ck_assert_ptr_nonnull(b);
    ck_assert_int_eq(entry_set_str(&b->source, "replaced"), 0);
    ck_assert_int_eq(entry_set_str(&b->username_tok, NULL), 0);
    ck_assert_int_eq(entry_set_str(&b->password_tok, "gAAAAABnew=="), 0);
    b->fetch_time += 1000;
    b->ttl_seconds = 7200;
    entry_compute_expiry(b);
    b->health = ENTRY_HEALTH_UNHEALTHY;
    b->failure_count = 2;
    memcpy(b->country, "FR", 3);
    b->anonymity = ENTRY_ANON_NONE;
    b->latency_ms = 42;
    atomic_store(&b->access_count, 99);
    ck_assert_int_eq(tier->ops->put(tier, b, 0, NULL), 0);
    ck_assert_uint_eq(tier->ops->size(tier), N_ENTRIES);
    ck_assert_int_eq(tier->ops->get(tier, b->key, &got), 0);
    assert_same_entry(b, got);
    entry_unref(got);
    entry_unref(b);
}
END_TEST

START_TEST(test_del)
{
    struct entry *got = NULL;

    tier = open_kind(_i);
    fill();
    ck_assert_int_eq(tier->ops->del(tier, es[3]->key), 0);
    ck_assert_uint_eq(tier->ops->size(tier), N_ENTRIES - 1);
    ck_assert_int_eq(tier->ops->get(tier, es[3]->key, &got), -ENOENT);
    ck_assert_ptr_null(got);
    ck_assert_int_eq(tier->ops->del(tier, es[3]->key), -ENOENT);
    ck_assert_int_eq(tier->ops->get(tier, es[4]->key, &got), 0);
    entry_unref(got);
    /* Never stored at all. */
    ck_assert_int_eq(tier->ops->get(tier,
                                    "00000000000000000000000000000000"
                                    "00000000000000000000000000000000",
                                    &got),
                     -ENOENT);
    ck_assert_int_eq(tier->ops->del(tier, "ffffffffffffffffffffffffffffffff"
                                          "ffffffffffffffffffffffffffffffff"),
                     -ENOENT);
    ck_assert_uint_eq(tier->ops->size(tier), N_ENTRIES - 1);
}
END_TEST

START_TEST(test_batch_and_size)
{
    size_t victims = 1, i, removed = 0;
    struct entry *got = NULL;

    tier = open_kind(_i);
    ck_assert_uint_eq(tier->ops->size(tier), 0);
    for (i = 0; i < N_ENTRIES; i++)
        es[i] = mk((unsigned)i);
    ck_assert_int_eq(tier->ops->put_batch(tier, es, N_ENTRIES, &victims), 0);
    ck_assert_uint_eq(victims, 0);
    ck_assert_uint_eq(tier->ops->size(tier), N_ENTRIES);
    ck_assert_int_eq(tier->ops->put_batch(tier, es, N_ENTRIES, NULL), 0);
    ck_assert_uint_eq(tier->ops->size(tier), N_ENTRIES);
    ck_assert_int_eq(tier->ops->get(tier, es[N_ENTRIES - 1]->key, &got), 0);
    assert_same_entry(es[N_ENTRIES - 1], got);
    entry_unref(got);

    ck_assert_int_eq(tier->ops->clear(tier, &removed), 0);
    ck_assert_uint_eq(removed, N_ENTRIES);
    ck_assert_uint_eq(tier->ops->size(tier), 0);
    ck_assert_int_eq(tier->ops->get(tier, es[0]->key, &got), -ENOENT);
    ck_assert_int_eq(tier->ops->clear(tier, &removed), 0);
    ck_assert_uint_eq(removed, 0);
}
END_TEST

/* ------------------------------------------------------------------ */
/* scan and sample against the reference predicate                      */

struct seen {
    char keys[N_ENTRIES + 8][ENTRY_KEY_LEN + 1];
    size_t n;
    size_t stop_at; /* return 55 after this many (0: never) */
    const struct tier_filter *f;
    bool mismatch; /* an entry the filter rejects was visited */
};

static int seen_cb(void *arg, struct entry *e)
{
    struct seen *s = arg;

    ck_assert_uint_lt(s->n, N_ENTRIES + 8);
    memcpy(s->keys[s->n++], e->key, ENTRY_KEY_LEN + 1);
    if (s->f && !tier_filter_match(s->f, e))
        s->mismatch = true;
    return s->stop_at && s->n == s->stop_at ? 55 : 0;
}

static int cmp_key(const void *a, const void *b)
{
    return strcmp(a, b);
}

/* Keys of the population f selects, with key > after, sorted. */
static size_t expected(const struct tier_filter *f, const char *after,
                       char out[][ENTRY_KEY_LEN + 1])
{
    size_t i, n = 0;

    for (i = 0; i < N_ENTRIES; i++) {
        if (es[i] && tier_filter_match(f, es[i]) &&
            strcmp(es[i]->key, after) > 0)
            memcpy(out[n++], es[i]->key, ENTRY_KEY_LEN + 1);
    }
    qsort(out, n, sizeof out[0], cmp_key);
    return n;
}

/* The filters every tier must agree on. */
static size_t make_filters(struct tier_filter *fs)
{
    size_t n = 0;

    tier_filter_init(&fs[n++], T0); /* unexpired */
    tier_filter_init(&fs[n++], 0);  /* everything */
    tier_filter_init(&fs[n], T0);
    fs[n++].health = ENTRY_HEALTH_HEALTHY;
    tier_filter_init(&fs[n], T0);
    fs[n++].health = ENTRY_HEALTH_UNHEALTHY;
    tier_filter_init(&fs[n], T0);
    fs[n++].exclude_unhealthy = 1;
    tier_filter_init(&fs[n], T0);
    fs[n++].source = "list-a";
    tier_filter_init(&fs[n], T0);
    fs[n++].source = "nowhere";
    tier_filter_init(&fs[n], T0);
    fs[n++].scheme = ENTRY_SCHEME_SOCKS5;
    tier_filter_init(&fs[n], T0);
    fs[n++].country = "US";
    tier_filter_init(&fs[n], T0);
    fs[n++].country = "de"; /* the predicate ignores case */
    tier_filter_init(&fs[n], T0);
    fs[n++].anonymity = ENTRY_ANON_ELITE;
    tier_filter_init(&fs[n], T0);
    fs[n++].anonymity = ENTRY_ANON_NONE;
    tier_filter_init(&fs[n], T0);
    fs[n++].max_latency_ms = 500; /* unknown latency does not match */
    tier_filter_init(&fs[n], T0);
    fs[n].exclude_unhealthy = 1;
    fs[n].source = "list-b";
    fs[n].scheme = ENTRY_SCHEME_HTTP;
    fs[n++].max_latency_ms = 1000;
    tier_filter_init(&fs[n], T0 + 3600 * 1000); /* all expired */
    n++;
    return n;
}

START_TEST(test_scan_filters)
{
    static char want[N_ENTRIES][ENTRY_KEY_LEN + 1];
    struct tier_filter fs[20];
    struct seen s;
    size_t nf, k, n, i;

    tier = open_kind(_i);
    fill();
    nf = make_filters(fs);
    for (k = 0; k < nf; k++) {
        n = expected(&fs[k], "", want);
        memset(&s, 0, sizeof s);
        s.f = &fs[k];
        ck_assert_int_eq(tier->ops->scan(tier, &fs[k], "", 1000, seen_cb, &s),
                         0);
        ck_assert_msg(s.n == n, "%s filter %zu: %zu entries, expected %zu",
                      kinds[_i].name, k, s.n, n);
        for (i = 0; i < n; i++)
            ck_assert_msg(strcmp(s.keys[i], want[i]) == 0,
                          "%s filter %zu: wrong entry or order at %zu",
                          kinds[_i].name, k, i);
        ck_assert(!s.mismatch);
    }
}
END_TEST

START_TEST(test_scan_paging)
{
    static char want[N_ENTRIES][ENTRY_KEY_LEN + 1];
    struct tier_filter f;
    struct seen s, page;
    char after[ENTRY_KEY_LEN + 1] = "";
    size_t n, i, pages = 0;

    tier = open_kind(_i);
    fill();
    tier_filter_init(&f, T0);
    n = expected(&f, "", want);

    /* Pages of 7 keyed by the last key seen cover everything once. */
    memset(&s, 0, sizeof s);
    for (;;) {
        memset(&page, 0, sizeof page);
        ck_assert_int_eq(tier->ops->scan(tier, &f, after, 7, seen_cb, &page),
                         0);
        ck_assert_uint_le(page.n, 7);
        if (page.n == 0)
            break;
        for (i = 0; i < page.n; i++)
            memcpy(s.keys[s.n++], page.keys[i], ENTRY_KEY_LEN + 1);
        memcpy(after, page.keys[page.n - 1], sizeof after);
        pages++;
    }
    ck_assert_uint_eq(s.n, n);
    ck_assert_uint_eq(pages, (n + 6) / 7);
    for (i = 0; i < n; i++)
        ck_assert_str_eq(s.keys[i], want[i]);

    /* after is exclusive; max bounds the visit. */
    memset(&s, 0, sizeof s);
    ck_assert_int_eq(tier->ops->scan(tier, &f, want[9], 3, seen_cb, &s), 0);
    ck_assert_uint_eq(s.n, 3);
    ck_assert_str_eq(s.keys[0], want[10]);
    ck_assert_str_eq(s.keys[2], want[12]);
    memset(&s, 0, sizeof s);
    ck_assert_int_eq(tier->ops->scan(tier, &f, want[n - 1], 10, seen_cb, &s),
                     0);
    ck_assert_uint_eq(s.n, 0);
    ck_assert_int_eq(tier->ops->scan(tier, &f, "", 0, seen_cb, &s), 0);
    ck_assert_uint_eq(s.n, 0);

    /* A callback's non-zero value stops the scan and is returned. */
    memset(&s, 0, sizeof s);
    s.stop_at = 4;
    ck_assert_int_eq(tier->ops->scan(tier, &f, "", 1000, seen_cb, &s), 55);
    ck_assert_uint_eq(s.n, 4);
}
END_TEST

START_TEST(test_sample)
{
    static char want[N_ENTRIES][ENTRY_KEY_LEN + 1];
    struct tier_filter fs[20];
    struct seen s;
    size_t nf, k, n, i, max;
    uint64_t seed;

    tier = open_kind(_i);
    fill();
    nf = make_filters(fs);
    for (k = 0; k < nf; k++) {
        n = expected(&fs[k], "", want);
        for (seed = 1; seed <= 3; seed++) {
            for (max = 1; max <= N_ENTRIES + 5; max += 16) {
                memset(&s, 0, sizeof s);
                s.f = &fs[k];
                ck_assert_int_eq(
                    tier->ops->sample(tier, &fs[k], max, seed, seen_cb, &s), 0);
                /* A small tier is covered: min(max, matches) exactly. */
                ck_assert_msg(s.n == (n < max ? n : max),
                              "%s filter %zu max %zu: %zu of %zu",
                              kinds[_i].name, k, max, s.n, n);
                ck_assert(!s.mismatch);
                qsort(s.keys, s.n, sizeof s.keys[0], cmp_key);
                for (i = 1; i < s.n; i++)
                    ck_assert_msg(strcmp(s.keys[i - 1], s.keys[i]) != 0,
                                  "%s: duplicate in sample", kinds[_i].name);
            }
        }
    }
    /* A callback's non-zero value stops the sample and is returned. */
    memset(&s, 0, sizeof s);
    s.stop_at = 2;
    ck_assert_int_eq(tier->ops->sample(tier, &fs[0], 10, 9, seen_cb, &s), 55);
    ck_assert_uint_eq(s.n, 2);
}
END_TEST

START_TEST(test_sweep)
{
    struct tier_filter f;
    size_t i, removed = 99, n_expired = 0, n_later = 0;
    int64_t now = T0 + 4000; /* entries with i % 7 == 0 and i/7 <= 4 */

    tier = open_kind(_i);
    fill();
    for (i = 0; i < N_ENTRIES; i++) {
        if (es[i]->expires_at <= now)
            n_expired++;
        else if (es[i]->expires_at <= T0 + 3600 * 1000)
            n_later++;
    }
    ck_assert_uint_ge(n_expired, 3);
    /* Nothing expired before the earliest expiry. */
    ck_assert_int_eq(
        tier->ops->sweep(tier, T0 - 1000 * N_ENTRIES, 1000, &removed), 0);
    ck_assert_uint_eq(removed, 0);
    /* Bounded by max. */
    ck_assert_int_eq(tier->ops->sweep(tier, now, 2, &removed), 0);
    ck_assert_uint_eq(removed, 2);
    ck_assert_int_eq(tier->ops->sweep(tier, now, 1000, &removed), 0);
    ck_assert_uint_eq(removed, n_expired - 2);
    ck_assert_uint_eq(tier->ops->size(tier), N_ENTRIES - n_expired);
    for (i = 0; i < N_ENTRIES; i++) {
        struct entry *got = NULL;
        int err = tier->ops->get(tier, es[i]->key, &got);

        if (es[i]->expires_at <= now) {
            ck_assert_msg(err == -ENOENT, "%s: expired %zu kept",
                          kinds[_i].name, i);
        } else {
            ck_assert_msg(err == 0, "%s: live %zu swept", kinds[_i].name, i);
            entry_unref(got);
        }
    }
    ck_assert_int_eq(tier->ops->sweep(tier, now, 1000, &removed), 0);
    ck_assert_uint_eq(removed, 0);
    /* At the hour everything else expires. */
    ck_assert_int_eq(tier->ops->sweep(tier, T0 + 3600 * 1000, 1000, &removed),
                     0);
    ck_assert_uint_eq(removed, n_later);
    ck_assert_uint_eq(tier->ops->size(tier), 0);
    tier_filter_init(&f, 0);
    {
        struct seen s;

        memset(&s, 0, sizeof s);
        ck_assert_int_eq(tier->ops->scan(tier, &f, "", 1000, seen_cb, &s), 0);
        ck_assert_uint_eq(s.n, 0);
    }
}
END_TEST

static Suite *tiers_suite(void)
{
    Suite *s = suite_create("tier_conformance");
    struct {
        const char *name;
        const TTest *test;
    } cases[] = {
        {"roundtrip_every_field", test_roundtrip},
        {"replace", test_replace},
        {"del", test_del},
        {"batch_size_clear", test_batch_and_size},
        {"scan_filters", test_scan_filters},
        {"scan_paging", test_scan_paging},
        {"sample", test_sample},
        {"sweep", test_sweep},
    };
    size_t i;

    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        TCase *tc = tcase_create(cases[i].name);

        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 60);
        tcase_add_loop_test(tc, cases[i].test, 0, N_KINDS);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void)
{
    return testutil_run(tiers_suite());
}
