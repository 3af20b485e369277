/* SPDX-License-Identifier: MIT */
/*
 * Unit tests for the L3 SQLite tier (storage/l3_sqlite.c), through the
 * tier ops table only, plus direct sqlite3 access to damage the file the
 * way a disk or an operator could. Behaviours shared by every tier (round
 * trip, filters, scan order) are in check_tiers.c; this file covers what
 * is L3's own: persistence, group commit, corruption handling, capacity,
 * bounded sweep and sampling over a large table, concurrency.
 */
#include "config.h"

#include <check.h>
#include <errno.h>
#include <glob.h>
#include <pthread.h>
#include <stdbool.h>
#include <sqlite3.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "storage/entry.h"
#include "storage/l3_sqlite.h"
#include "storage/tier.h"
#include "tests/unit/testutil.h"

#define T0 INT64_C(1790000000000) /* a fixed "now" in ms (2026) */

static char *dir;

static void setup(void)
{
    log_set_level(LOG_LEVEL_ERROR);
    dir = testutil_mkdtemp();
}

static void teardown(void)
{
    testutil_rmrf(dir);
    dir = NULL;
}

/* A valid entry for proxy number i (distinct i give distinct keys). */
static struct entry *mk(unsigned i, const char *source, int64_t ttl)
{
    char url[64];
    struct entry_url u;
    struct entry *e;

    snprintf(url, sizeof url, "%s://10.%u.%u.%u:%u",
             i % 4 == 0 ? "socks5" : "http", (i >> 16) & 255, (i >> 8) & 255,
             i & 255, 1000 + i % 50000);
    ck_assert_int_eq(entry_url_parse(url, -1, &u, NULL), 0);
    e = entry_new();
    ck_assert_ptr_nonnull(e);
    ck_assert_int_eq(entry_set_str(&e->proxy_url, u.normalised), 0);
    e->scheme = u.scheme;
    entry_key_from_normalised(u.normalised, e->key);
    entry_url_fini(&u);
    ck_assert_int_eq(entry_set_str(&e->source, source), 0);
    e->fetch_time = T0;
    e->ttl_seconds = ttl;
    entry_compute_expiry(e);
    return e;
}

static struct tier *open_l3(size_t cap)
{
    struct tier *t = NULL;

    ck_assert_int_eq(l3_sqlite_open(dir, cap, &t), 0);
    ck_assert_ptr_nonnull(t);
    return t;
}

static void put(struct tier *t, struct entry *e)
{
    ck_assert_int_eq(t->ops->put(t, e, 0, NULL), 0);
}

static sqlite3 *raw_db(void)
{
    char path[512];
    sqlite3 *db = NULL;

    snprintf(path, sizeof path, "%s/cache.db", dir);
    ck_assert_int_eq(sqlite3_open(path, &db), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    return db;
}

static void raw_exec(const char *sql)
{
    sqlite3 *db = raw_db();
    char *msg = NULL;
    int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);

    ck_assert_msg(rc == SQLITE_OK, "%s: %s", sql, msg ? msg : "?");
    sqlite3_free(msg);
    sqlite3_close(db);
}

/* Run sql with ?1 bound to the 32-byte blob of a hex key. */
static void raw_exec_key(const char *sql, const char *hexkey)
{
    sqlite3 *db = raw_db();
    sqlite3_stmt *st = NULL;
    unsigned char blob[32];
    unsigned v;
    int i;

    for (i = 0; i < 32; i++) {
        ck_assert_int_eq(sscanf(hexkey + 2 * i, "%2x", &v), 1);
        blob[i] = (unsigned char)v;
    }
    ck_assert_int_eq(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    sqlite3_bind_blob(st, 1, blob, 32, SQLITE_STATIC);
    ck_assert_int_eq(sqlite3_step(st), SQLITE_DONE);
    ck_assert_int_eq(sqlite3_changes(db), 1);
    sqlite3_finalize(st);
    sqlite3_close(db);
}

/* ------------------------------------------------------------------ */

START_TEST(test_put_get_del)
{
    struct tier *t = open_l3(0);
    struct entry *e = mk(1, "unit", 3600), *got = NULL, *victim = e;

    ck_assert_str_eq(t->ops->name, "l3");
    ck_assert_int_eq(t->ops->get(t, e->key, &got), -ENOENT);
    e->health = ENTRY_HEALTH_HEALTHY;
    e->failure_count = 2;
    memcpy(e->country, "DE", 3);
    e->anonymity = ENTRY_ANON_ELITE;
    e->latency_ms = 123;
    atomic_store(&e->last_accessed, T0 + 5);
    atomic_store(&e->access_count, 7);
    ck_assert_int_eq(entry_set_str(&e->username_tok, "gAAAAABuser_tok-="), 0);
    ck_assert_int_eq(entry_set_str(&e->password_tok, "gAAAAABpass_tok-="), 0);
    ck_assert_int_eq(t->ops->put(t, e, 0, &victim), 0);
    ck_assert_ptr_null(victim);
    ck_assert_uint_eq(t->ops->size(t), 1);

    ck_assert_int_eq(t->ops->get(t, e->key, &got), 0);
    ck_assert_ptr_ne(got, e);
    ck_assert_str_eq(got->key, e->key);
    ck_assert_str_eq(got->proxy_url, e->proxy_url);
    ck_assert_str_eq(got->username_tok, "gAAAAABuser_tok-=");
    ck_assert_str_eq(got->password_tok, "gAAAAABpass_tok-=");
    ck_assert_str_eq(got->source, "unit");
    ck_assert_int_eq(got->scheme, e->scheme);
    ck_assert_int_eq(got->fetch_time, T0);
    ck_assert_int_eq(got->ttl_seconds, 3600);
    ck_assert_int_eq(got->expires_at, e->expires_at);
    ck_assert_int_eq(got->health, ENTRY_HEALTH_HEALTHY);
    ck_assert_uint_eq(got->failure_count, 2);
    ck_assert_str_eq(got->country, "DE");
    ck_assert_int_eq(got->anonymity, ENTRY_ANON_ELITE);
    ck_assert_int_eq(got->latency_ms, 123);
    ck_assert_int_eq(atomic_load(&got->last_accessed), T0 + 5);
    ck_assert_uint_eq(atomic_load(&got->access_count), 7);
    ck_assert_int_eq(atomic_load(&got->refs), 1);
    entry_unref(got);

    ck_assert_int_eq(t->ops->del(t, e->key), 0);
    ck_assert_int_eq(t->ops->del(t, e->key), -ENOENT);
    ck_assert_int_eq(t->ops->get(t, e->key, &got), -ENOENT);
    ck_assert_uint_eq(t->ops->size(t), 0);
    /* Keys that cannot exist are simply absent. */
    ck_assert_int_eq(t->ops->get(t, "nothex", &got), -ENOENT);
    ck_assert_int_eq(t->ops->del(t, "ABCDEF"), -ENOENT);
    ck_assert_int_eq(t->ops->probe(t), 0);
    ck_assert_int_eq(t->ops->maintain(t), 0);
    ck_assert_uint_eq(t->ops->corrupt_count(t), 0);
    entry_unref(e);
    tier_close(t);
}
END_TEST

/* An upsert replaces every field, keeps one row, and an entry that
 * cannot be stored is refused without touching the store. */
START_TEST(test_replace_and_refuse)
{
    struct tier *t = open_l3(0);
    struct entry *a = mk(2, "first", 60), *b, *got = NULL;

    put(t, a);
    b = entry_dup(a);
    ck_assert_int_eq(entry_set_str(&b->source, "second"), 0);
    b->ttl_seconds = 120;
    entry_compute_expiry(b);
    b->health = ENTRY_HEALTH_UNHEALTHY;
    put(t, b);
    ck_assert_uint_eq(t->ops->size(t), 1);
    ck_assert_int_eq(t->ops->get(t, a->key, &got), 0);
    ck_assert_str_eq(got->source, "second");
    ck_assert_int_eq(got->ttl_seconds, 120);
    ck_assert_int_eq(got->health, ENTRY_HEALTH_UNHEALTHY);
    entry_unref(got);

    b->health = (enum entry_health)7; /* no such health */
    ck_assert_int_eq(t->ops->put(t, b, 0, NULL), -EINVAL);
    b->health = ENTRY_HEALTH_HEALTHY;
    ck_assert_int_eq(entry_set_str(&b->source, NULL), 0);
    ck_assert_int_eq(t->ops->put_batch(t, &b, 1, NULL), -EINVAL);
    b->key[0] = 'X';
    ck_assert_int_eq(t->ops->put(t, b, TIER_PUT_NOWAIT, NULL), -EINVAL);
    ck_assert_int_eq(t->ops->put(t, NULL, 0, NULL), -EINVAL);
    ck_assert_uint_eq(t->ops->size(t), 1);
    ck_assert_int_eq(t->ops->get(t, a->key, &got), 0);
    ck_assert_str_eq(got->source, "second");
    entry_unref(got);
    entry_unref(a);
    entry_unref(b);
    tier_close(t);
}
END_TEST

START_TEST(test_put_batch_10k)
{
    struct tier *t = open_l3(0);
    struct entry **es = calloc(10000, sizeof *es), *got = NULL;
    size_t i, victims = 99;
    uint64_t t0;

    for (i = 0; i < 10000; i++)
        es[i] = mk((unsigned)i, "batch", 3600);
    t0 = clock_mono_ns();
    ck_assert_int_eq(t->ops->put_batch(t, es, 10000, &victims), 0);
    fprintf(stderr, "l3: put_batch of 10,000 (one commit): %.1f ms\n",
            (double)(clock_mono_ns() - t0) / 1e6);
    ck_assert_uint_eq(victims, 0);
    ck_assert_uint_eq(t->ops->size(t), 10000);
    /* Again: all updates, still one row each. */
    ck_assert_int_eq(t->ops->put_batch(t, es, 10000, NULL), 0);
    ck_assert_uint_eq(t->ops->size(t), 10000);
    ck_assert_int_eq(t->ops->get(t, es[9999]->key, &got), 0);
    entry_unref(got);
    ck_assert_int_eq(t->ops->put_batch(t, es, 0, &victims), 0);
    for (i = 0; i < 10000; i++)
        entry_unref(es[i]);
    free(es);
    tier_close(t);
}
END_TEST

START_TEST(test_restart_persistence)
{
    struct tier *t = open_l3(0);
    struct entry *a = mk(3, "persist", 3600), *b = mk(4, "persist", 3600);
    struct entry *got = NULL;

    put(t, a);
    /* A NOWAIT put is drained by close. */
    ck_assert_int_eq(t->ops->put(t, b, TIER_PUT_NOWAIT, NULL), 0);
    tier_close(t);

    t = open_l3(0);
    ck_assert_uint_eq(t->ops->size(t), 2);
    ck_assert_int_eq(t->ops->get(t, a->key, &got), 0);
    ck_assert_str_eq(got->proxy_url, a->proxy_url);
    entry_unref(got);
    ck_assert_int_eq(t->ops->get(t, b->key, &got), 0);
    entry_unref(got);
    tier_close(t);
    entry_unref(a);
    entry_unref(b);
}
END_TEST

static size_t count_glob(const char *suffix)
{
    char pat[512];
    glob_t g;
    size_t n;

    snprintf(pat, sizeof pat, "%s/cache.db.corrupt-*%s", dir, suffix);
    if (glob(pat, 0, NULL, &g) != 0)
        return 0;
    n = g.gl_pathc;
    globfree(&g);
    return n;
}

START_TEST(test_corrupt_file_moved_aside)
{
    char path[512];
    unsigned char junk[8192];
    struct tier *t;
    struct entry *e = mk(5, "fresh", 3600), *got = NULL;
    FILE *f;
    size_t i;

    for (i = 0; i < sizeof junk; i++)
        junk[i] = (unsigned char)(i * 131 + 7);
    snprintf(path, sizeof path, "%s/cache.db", dir);
    f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(junk, 1, sizeof junk, f), sizeof junk);
    fclose(f);
    snprintf(path, sizeof path, "%s/cache.db-wal", dir);
    f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(junk, 1, 100, f), 100);
    fclose(f);

    t = open_l3(0);
    ck_assert_uint_eq(count_glob(""), 2); /* the db and its -wal */
    ck_assert_uint_eq(count_glob("-wal"), 1);
    ck_assert_uint_eq(t->ops->size(t), 0);
    put(t, e);
    ck_assert_int_eq(t->ops->get(t, e->key, &got), 0);
    entry_unref(got);
    tier_close(t);

    /* The fresh database is used as is on the next start. */
    t = open_l3(0);
    ck_assert_uint_eq(t->ops->size(t), 1);
    ck_assert_uint_eq(count_glob(""), 2);
    tier_close(t);
    entry_unref(e);
}
END_TEST

/* A real database whose schema page is garbage (SQLITE_CORRUPT rather
 * than NOTADB) is moved aside too. */
START_TEST(test_corrupt_schema_moved_aside)
{
    struct tier *t = open_l3(0);
    struct entry *e = mk(8, "x", 3600);
    char path[512], junk[3000];
    FILE *f;

    put(t, e);
    tier_close(t); /* checkpointed: everything is in cache.db */
    memset(junk, 0x5a, sizeof junk);
    snprintf(path, sizeof path, "%s/cache.db", dir);
    f = fopen(path, "r+b");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(fseek(f, 100, SEEK_SET), 0); /* past the header */
    ck_assert_uint_eq(fwrite(junk, 1, sizeof junk, f), sizeof junk);
    fclose(f);

    t = open_l3(0);
    ck_assert_uint_eq(count_glob(""), 1);
    ck_assert_uint_eq(t->ops->size(t), 0);
    put(t, e);
    ck_assert_uint_eq(t->ops->size(t), 1);
    tier_close(t);
    entry_unref(e);
}
END_TEST

/* Something SQLite cannot open at all is an error, not "corrupt": it is
 * left alone. */
START_TEST(test_unopenable_is_error)
{
    char path[512];
    struct tier *t = NULL;
    int err;

    snprintf(path, sizeof path, "%s/cache.db", dir);
    ck_assert_int_eq(mkdir(path, 0700), 0);
    err = l3_sqlite_open(dir, 0, &t);
    ck_assert_int_lt(err, 0);
    ck_assert_ptr_null(t);
    ck_assert_uint_eq(count_glob(""), 0);
    ck_assert_int_eq(rmdir(path), 0);
    ck_assert_int_eq(l3_sqlite_open("/nonexistent/dir", 0, &t), -EACCES);
}
END_TEST

/* A write failure inside a group commit (the file size limit stands in
 * for a full disk) fails the waiting writer, rolls back, and the tier
 * works again once the disk does. */
START_TEST(test_write_failure_and_recovery)
{
    struct tier *t = open_l3(0);
    struct entry **es = calloc(2000, sizeof *es), *got = NULL;
    struct rlimit old, small;
    size_t i;
    int err;

    for (i = 0; i < 2000; i++)
        es[i] = mk((unsigned)i, "full", 3600);
    put(t, es[0]);
    signal(SIGXFSZ, SIG_IGN);
    ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
    small = old;
    small.rlim_cur = 256 * 1024;
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &small), 0);
    err = t->ops->put_batch(t, es + 1, 1999, NULL);
    ck_assert_msg(err == -EIO || err == -ENOSPC, "err %d", err);
    ck_assert_uint_eq(t->ops->size(t), 1);
    ck_assert_int_eq(t->ops->get(t, es[1]->key, &got), -ENOENT);
    ck_assert_int_eq(t->ops->get(t, es[0]->key, &got), 0);
    entry_unref(got);

    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
    ck_assert_int_eq(t->ops->probe(t), 0);
    ck_assert_int_eq(t->ops->put_batch(t, es + 1, 1999, NULL), 0);
    ck_assert_uint_eq(t->ops->size(t), 2000);
    tier_close(t);
    t = open_l3(0);
    ck_assert_uint_eq(t->ops->size(t), 2000);
    tier_close(t);
    for (i = 0; i < 2000; i++)
        entry_unref(es[i]);
    free(es);
}
END_TEST

/* A newer schema is refused, not moved aside or overwritten. */
START_TEST(test_newer_schema_refused)
{
    struct tier *t = open_l3(0);

    tier_close(t);
    raw_exec("PRAGMA user_version=99");
    t = NULL;
    ck_assert_int_lt(l3_sqlite_open(dir, 0, &t), 0);
    ck_assert_ptr_null(t);
    ck_assert_uint_eq(count_glob(""), 0);
}
END_TEST

/* Each damage: SQL applied to the row of entry i, and what get sees. */
static const char *const damages[] = {
    "UPDATE entries SET password_tok = 'not a token!' WHERE key = ?1",
    "UPDATE entries SET health = 'bogus' WHERE key = ?1",
    "UPDATE entries SET proxy_url = 'http://9.9.9.9:9' WHERE key = ?1",
    "UPDATE entries SET fetch_time = 'yesterday' WHERE key = ?1",
    "UPDATE entries SET expires_at = expires_at + 1 WHERE key = ?1",
    "UPDATE entries SET source = x'00' WHERE key = ?1",
    "UPDATE entries SET failure_count = -1 WHERE key = ?1",
    "UPDATE entries SET country = 'usa' WHERE key = ?1",
    "UPDATE entries SET latency_ms = 1.5 WHERE key = ?1",
    "UPDATE entries SET protocol = 'gopher' WHERE key = ?1",
};

START_TEST(test_corrupt_row_get)
{
    struct tier *t = open_l3(0);
    struct entry *e = mk(6, "victim", 3600), *ok = mk(7, "fine", 3600);
    struct entry *got = NULL;

    ck_assert_int_eq(entry_set_str(&e->password_tok, "gAAAAABgood"), 0);
    put(t, e);
    put(t, ok);
    tier_close(t);
    raw_exec_key(damages[_i], e->key);

    t = open_l3(0);
    ck_assert_uint_eq(t->ops->size(t), 2);
    ck_assert_int_eq(t->ops->get(t, e->key, &got), -EBADMSG);
    ck_assert_ptr_null(got);
    ck_assert_uint_eq(t->ops->corrupt_count(t), 1);
    ck_assert_uint_eq(t->ops->size(t), 1);
    ck_assert_int_eq(t->ops->get(t, e->key, &got), -ENOENT);
    ck_assert_uint_eq(t->ops->corrupt_count(t), 1);
    ck_assert_int_eq(t->ops->get(t, ok->key, &got), 0);
    entry_unref(got);
    tier_close(t);
    entry_unref(e);
    entry_unref(ok);
}
END_TEST

static int count_cb(void *arg, struct entry *e)
{
    (void)e;
    (*(size_t *)arg)++;
    return 0;
}

/* Scan and sample skip corrupt rows (even a malformed key), remove them
 * and count them; the good rows all come back. */
START_TEST(test_corrupt_rows_scan_sample)
{
    struct tier *t = open_l3(0);
    struct tier_filter f;
    struct entry *es[20];
    size_t i, n = 0;

    for (i = 0; i < 20; i++) {
        es[i] = mk((unsigned)i + 100, "scan", 3600);
        put(t, es[i]);
    }
    tier_close(t);
    for (i = 0; i < 5; i++)
        raw_exec_key(damages[i], es[i * 3]->key);
    /* A row whose key is not a 32-byte blob at all. */
    raw_exec("INSERT INTO entries SELECT x'0102', proxy_url, username_tok,"
             " password_tok, source, protocol, fetch_time, ttl_seconds,"
             " expires_at, health, failure_count, country, anonymity,"
             " latency_ms, last_accessed, access_count, 0"
             " FROM entries LIMIT 1");

    t = open_l3(0);
    ck_assert_uint_eq(t->ops->size(t), 21);
    tier_filter_init(&f, T0);
    ck_assert_int_eq(t->ops->scan(t, &f, "", 100, count_cb, &n), 0);
    ck_assert_uint_eq(n, 15);
    ck_assert_uint_eq(t->ops->corrupt_count(t), 6);
    ck_assert_uint_eq(t->ops->size(t), 15);
    n = 0;
    ck_assert_int_eq(t->ops->sample(t, &f, 100, 42, count_cb, &n), 0);
    ck_assert_uint_eq(n, 15);
    ck_assert_uint_eq(t->ops->corrupt_count(t), 6);
    tier_close(t);
    for (i = 0; i < 20; i++)
        entry_unref(es[i]);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Concurrency                                                          */

struct worker {
    struct tier *t;
    unsigned base, n;
    int mode; /* 0: put+get+del mix; 1: waited puts only */
    int failures;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    unsigned i;

    for (i = 0; i < w->n; i++) {
        struct entry *e = mk(w->base + i, "conc", 3600), *got = NULL;

        if (w->t->ops->put(w->t, e, 0, NULL) != 0)
            w->failures++;
        if (w->mode == 0) {
            if (w->t->ops->get(w->t, e->key, &got) != 0 ||
                strcmp(got->proxy_url, e->proxy_url) != 0)
                w->failures++;
            entry_unref(got);
            if (i % 3 == 0 && w->t->ops->del(w->t, e->key) != 0)
                w->failures++;
        }
        entry_unref(e);
    }
    return NULL;
}

static double run_workers(struct tier *t, unsigned nthreads, unsigned per,
                          int mode)
{
    pthread_t th[16];
    struct worker w[16];
    uint64_t t0 = clock_mono_ns();
    unsigned i;

    for (i = 0; i < nthreads; i++) {
        w[i] = (struct worker){t, i * 100000u, per, mode, 0};
        ck_assert_int_eq(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
    }
    for (i = 0; i < nthreads; i++) {
        pthread_join(th[i], NULL);
        ck_assert_int_eq(w[i].failures, 0);
    }
    return (double)(clock_mono_ns() - t0) / 1e9;
}

START_TEST(test_concurrent_mix)
{
    struct tier *t = open_l3(0);
    struct tier_filter f;
    size_t n = 0;

    run_workers(t, 4, 300, 0);
    /* 300 per thread, every third deleted: 200 left each. */
    ck_assert_uint_eq(t->ops->size(t), 800);
    tier_filter_init(&f, T0);
    ck_assert_int_eq(t->ops->scan(t, &f, "", 10000, count_cb, &n), 0);
    ck_assert_uint_eq(n, 800);
    tier_close(t);
}
END_TEST

START_TEST(test_group_commit)
{
    struct tier *t = open_l3(0);
    struct entry *probe, *got = NULL;
    double s = run_workers(t, 8, 2000, 1);

    fprintf(stderr, "l3: 8 threads x 2,000 waited puts: %.2f s (%.0f/s)\n", s,
            16000 / s);
    ck_assert_uint_eq(t->ops->size(t), 16000);
    tier_close(t);
    /* Every acknowledged write is there after a restart. */
    t = open_l3(0);
    ck_assert_uint_eq(t->ops->size(t), 16000);
    probe = mk(7 * 100000u + 1999, "conc", 3600);
    ck_assert_int_eq(t->ops->get(t, probe->key, &got), 0);
    entry_unref(got);
    entry_unref(probe);
    tier_close(t);
}
END_TEST

/* kill -9 in the middle of a stream of group commits: every put that was
 * acknowledged (reported through the pipe after put returned) is there
 * after a restart. */
struct acker {
    struct tier *t;
    unsigned base;
    int fd;
};

static void *acker_main(void *arg)
{
    struct acker *a = arg;
    unsigned i;

    for (i = 0;; i++) {
        struct entry *e = mk(a->base + i, "kill9", 3600);
        uint32_t idx = a->base + i;

        if (a->t->ops->put(a->t, e, 0, NULL) != 0 ||
            write(a->fd, &idx, sizeof idx) != (ssize_t)sizeof idx)
            _exit(3);
        entry_unref(e);
    }
    return NULL;
}

START_TEST(test_kill9_durability)
{
    static uint32_t acked[200000];
    size_t n = 0, i;
    int fds[2];
    pid_t pid;
    ssize_t got;
    struct tier *t;

    ck_assert_int_eq(pipe(fds), 0);
    pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        struct acker a[4];
        pthread_t th[4];
        struct tier *ct = NULL;
        unsigned k;

        close(fds[0]);
        if (l3_sqlite_open(dir, 0, &ct) != 0)
            _exit(2);
        for (k = 0; k < 4; k++) {
            a[k] = (struct acker){ct, k * 1000000u, fds[1]};
            if (pthread_create(&th[k], NULL, acker_main, &a[k]) != 0)
                _exit(2);
        }
        for (k = 0; k < 4; k++)
            pthread_join(th[k], NULL);
        _exit(0);
    }
    close(fds[1]);
    while (n < 3000) {
        got = read(fds[0], &acked[n], sizeof acked[0]);
        ck_assert_int_eq(got, (ssize_t)sizeof acked[0]);
        n++;
    }
    ck_assert_int_eq(kill(pid, SIGKILL), 0);
    ck_assert_int_eq(waitpid(pid, NULL, 0), pid);
    /* Acks written before the kill are still in the pipe. */
    for (;;) {
        got = read(fds[0], &acked[n], sizeof acked[0]);
        if (got != (ssize_t)sizeof acked[0])
            break;
        n++;
        ck_assert_uint_lt(n, sizeof acked / sizeof acked[0]);
    }
    close(fds[0]);

    t = open_l3(0);
    ck_assert_uint_ge(t->ops->size(t), n);
    for (i = 0; i < n; i++) {
        struct entry *e = mk(acked[i], "kill9", 3600), *out = NULL;

        ck_assert_msg(t->ops->get(t, e->key, &out) == 0,
                      "acknowledged put %u lost", acked[i]);
        entry_unref(out);
        entry_unref(e);
    }
    fprintf(stderr, "l3: kill -9 after %zu acknowledged puts: none lost\n", n);
    tier_close(t);
}
END_TEST

/* ------------------------------------------------------------------ */
/* Sweep, clear, scan, sample, capacity                                 */

START_TEST(test_sweep)
{
    struct tier *t = open_l3(0);
    struct entry **es = calloc(5000, sizeof *es), *got = NULL;
    size_t i, removed = 0;

    /* 4,500 expire at T0 + 10 s, 500 at T0 + 1 h. */
    for (i = 0; i < 5000; i++)
        es[i] = mk((unsigned)i, "sweep", i < 4500 ? 10 : 3600);
    ck_assert_int_eq(t->ops->put_batch(t, es, 5000, NULL), 0);
    ck_assert_int_eq(t->ops->sweep(t, T0 + 9999, 100000, &removed), 0);
    ck_assert_uint_eq(removed, 0);
    /* Bounded by max, across several internal chunks. */
    ck_assert_int_eq(t->ops->sweep(t, T0 + 10000, 4100, &removed), 0);
    ck_assert_uint_eq(removed, 4100);
    ck_assert_uint_eq(t->ops->size(t), 900);
    ck_assert_int_eq(t->ops->sweep(t, T0 + 10000, 100000, &removed), 0);
    ck_assert_uint_eq(removed, 400);
    ck_assert_uint_eq(t->ops->size(t), 500);
    ck_assert_int_eq(t->ops->get(t, es[4500]->key, &got), 0);
    entry_unref(got);
    ck_assert_int_eq(t->ops->get(t, es[0]->key, &got), -ENOENT);
    ck_assert_int_eq(t->ops->sweep(t, T0 + 3600 * 1000, 0, &removed), 0);
    ck_assert_uint_eq(removed, 0);
    ck_assert_int_eq(t->ops->clear(t, &removed), 0);
    ck_assert_uint_eq(removed, 500);
    ck_assert_uint_eq(t->ops->size(t), 0);
    ck_assert_int_eq(t->ops->clear(t, NULL), 0);
    for (i = 0; i < 5000; i++)
        entry_unref(es[i]);
    free(es);
    tier_close(t);
}
END_TEST

struct keys {
    char (*k)[ENTRY_KEY_LEN + 1];
    size_t n, cap;
    int stop_at;
};

static int keys_cb(void *arg, struct entry *e)
{
    struct keys *ks = arg;

    ck_assert_uint_lt(ks->n, ks->cap);
    memcpy(ks->k[ks->n++], e->key, ENTRY_KEY_LEN + 1);
    if (ks->stop_at > 0 && (int)ks->n == ks->stop_at)
        return 77;
    return 0;
}

static int cmp_key(const void *a, const void *b)
{
    return strcmp(a, b);
}

START_TEST(test_scan_paging)
{
    struct tier *t = open_l3(0);
    struct entry **es = calloc(1000, sizeof *es);
    char(*sorted)[ENTRY_KEY_LEN + 1] = calloc(1000, sizeof *sorted);
    struct keys ks = {calloc(1000, sizeof *ks.k), 0, 1000, 0};
    struct tier_filter f;
    char after[ENTRY_KEY_LEN + 1] = "";
    size_t i, pages = 0;

    for (i = 0; i < 1000; i++) {
        es[i] = mk((unsigned)i, i % 2 ? "odd" : "even", 3600);
        memcpy(sorted[i], es[i]->key, sizeof sorted[i]);
    }
    qsort(sorted, 1000, sizeof sorted[0], cmp_key);
    ck_assert_int_eq(t->ops->put_batch(t, es, 1000, NULL), 0);
    tier_filter_init(&f, T0);
    /* Pages of 300 (more than one internal chunk) using the last key. */
    for (;;) {
        size_t before = ks.n;

        ck_assert_int_eq(t->ops->scan(t, &f, after, 300, keys_cb, &ks), 0);
        if (ks.n == before)
            break;
        pages++;
        memcpy(after, ks.k[ks.n - 1], sizeof after);
    }
    ck_assert_uint_eq(pages, 4);
    ck_assert_uint_eq(ks.n, 1000);
    for (i = 0; i < 1000; i++)
        ck_assert_str_eq(ks.k[i], sorted[i]);

    /* Any string works as a cursor, with strcmp semantics. */
    {
        static const char *const cursors[] = {
            "",
            "0",
            "7",
            "7g",
            "7~",
            "8",
            "a",
            "ff",
            "g",
            "~",
            "fffz",
            "7zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz",
        };
        size_t c, expect;

        for (c = 0; c < sizeof cursors / sizeof cursors[0]; c++) {
            expect = 0;
            for (i = 0; i < 1000; i++)
                expect += strcmp(sorted[i], cursors[c]) > 0;
            ks.n = 0;
            ck_assert_int_eq(
                t->ops->scan(t, &f, cursors[c], 1000, keys_cb, &ks), 0);
            ck_assert_msg(ks.n == expect, "cursor %s: %zu != %zu", cursors[c],
                          ks.n, expect);
            if (expect)
                ck_assert_str_eq(ks.k[0], sorted[1000 - expect]);
        }
        /* The key right after a real key, and a key's successor prefix. */
        ks.n = 0;
        ck_assert_int_eq(t->ops->scan(t, &f, sorted[499], 1000, keys_cb, &ks),
                         0);
        ck_assert_uint_eq(ks.n, 500);
        ck_assert_str_eq(ks.k[0], sorted[500]);
    }

    /* Filters, and a callback that stops the scan. */
    f.source = "odd";
    ks.n = 0;
    ck_assert_int_eq(t->ops->scan(t, &f, "", 1000, keys_cb, &ks), 0);
    ck_assert_uint_eq(ks.n, 500);
    f.source = NULL;
    ks.n = 0;
    ks.stop_at = 10;
    ck_assert_int_eq(t->ops->scan(t, &f, "", 1000, keys_cb, &ks), 77);
    ck_assert_uint_eq(ks.n, 10);
    ks.stop_at = 0;
    /* Expired rows never match. */
    tier_filter_init(&f, T0 + 3600 * 1000);
    ks.n = 0;
    ck_assert_int_eq(t->ops->scan(t, &f, "", 1000, keys_cb, &ks), 0);
    ck_assert_uint_eq(ks.n, 0);

    for (i = 0; i < 1000; i++)
        entry_unref(es[i]);
    free(es);
    free(sorted);
    free(ks.k);
    tier_close(t);
}
END_TEST

static bool all_distinct(struct keys *ks)
{
    size_t i;

    qsort(ks->k, ks->n, sizeof ks->k[0], cmp_key);
    for (i = 1; i < ks->n; i++) {
        if (strcmp(ks->k[i - 1], ks->k[i]) == 0)
            return false;
    }
    return true;
}

START_TEST(test_sample)
{
    struct tier *t = open_l3(0);
    enum { N = 20000 };
    struct entry **es = calloc(N, sizeof *es);
    struct keys ks = {calloc(N, sizeof *ks.k), 0, N, 0};
    struct keys ks2 = {calloc(N, sizeof *ks2.k), 0, N, 0};
    struct tier_filter f;
    uint64_t t0;
    size_t i;

    for (i = 0; i < N; i++) {
        es[i] = mk((unsigned)i, i % 100 == 0 ? "rare" : "common", 3600);
        es[i]->health =
            i % 3 == 0 ? ENTRY_HEALTH_UNHEALTHY : ENTRY_HEALTH_HEALTHY;
    }
    ck_assert_int_eq(t->ops->put_batch(t, es, N, NULL), 0);
    tier_filter_init(&f, T0);

    /* Large table: a sample of 100 distinct entries, reproducible. */
    t0 = clock_mono_ns();
    ck_assert_int_eq(t->ops->sample(t, &f, 100, 1, keys_cb, &ks), 0);
    fprintf(stderr, "l3: sample 100 of %d: %.2f ms\n", N,
            (double)(clock_mono_ns() - t0) / 1e6);
    ck_assert_uint_eq(ks.n, 100);
    ck_assert_uint_eq(t->ops->sample(t, &f, 100, 1, keys_cb, &ks2), 0);
    ck_assert_uint_eq(ks2.n, 100);
    ck_assert_int_eq(memcmp(ks.k, ks2.k, 100 * sizeof ks.k[0]), 0);
    ck_assert(all_distinct(&ks));
    ks2.n = 0;
    ck_assert_uint_eq(t->ops->sample(t, &f, 100, 2, keys_cb, &ks2), 0);
    ck_assert_int_ne(memcmp(ks.k, ks2.k, 100 * sizeof ks.k[0]), 0);

    /* Only matching entries; a sparse filter still finds some, bounded. */
    f.exclude_unhealthy = 1;
    f.source = "rare";
    ks.n = 0;
    t0 = clock_mono_ns();
    ck_assert_int_eq(t->ops->sample(t, &f, 100, 3, keys_cb, &ks), 0);
    fprintf(stderr, "l3: sparse sample (%zu of 133 matches): %.2f ms\n", ks.n,
            (double)(clock_mono_ns() - t0) / 1e6);
    ck_assert_uint_gt(ks.n, 0);
    ck_assert(all_distinct(&ks));
    for (i = 0; i < ks.n; i++) {
        struct entry *got = NULL;

        ck_assert_int_eq(t->ops->get(t, ks.k[i], &got), 0);
        ck_assert_str_eq(got->source, "rare");
        ck_assert_int_ne(got->health, ENTRY_HEALTH_UNHEALTHY);
        entry_unref(got);
    }
    /* Nothing matches: an empty result, not an error. */
    f.source = "none";
    ks.n = 0;
    ck_assert_int_eq(t->ops->sample(t, &f, 10, 4, keys_cb, &ks), 0);
    ck_assert_uint_eq(ks.n, 0);
    for (i = 0; i < N; i++)
        entry_unref(es[i]);
    free(es);
    free(ks.k);
    free(ks2.k);
    tier_close(t);
}
END_TEST

/* Small tables are covered completely: every match, each once. */
START_TEST(test_sample_small_exact)
{
    struct tier *t = open_l3(0);
    struct keys ks = {calloc(200, sizeof *ks.k), 0, 200, 0};
    struct tier_filter f;
    uint64_t seed;
    size_t i;

    for (i = 0; i < 150; i++) {
        struct entry *e = mk((unsigned)i, "small", i < 50 ? 10 : 3600);

        put(t, e);
        entry_unref(e);
    }
    tier_filter_init(&f, T0 + 10000); /* the first 50 are expired */
    for (seed = 0; seed < 20; seed++) {
        ks.n = 0;
        ck_assert_int_eq(t->ops->sample(t, &f, 200, seed, keys_cb, &ks), 0);
        ck_assert_uint_eq(ks.n, 100);
        ck_assert(all_distinct(&ks));
        ks.n = 0;
        ck_assert_int_eq(t->ops->sample(t, &f, 7, seed, keys_cb, &ks), 0);
        ck_assert_uint_eq(ks.n, 7);
    }
    free(ks.k);
    tier_close(t);
}
END_TEST

START_TEST(test_capacity)
{
    struct tier *t = open_l3(100);
    struct entry *es[160], *got = NULL;
    size_t i, victims = 0;

    for (i = 0; i < 160; i++)
        es[i] = mk((unsigned)i, "cap", 3600);
    for (i = 0; i < 100; i++)
        put(t, es[i]);
    ck_assert_uint_eq(t->ops->size(t), 100);
    /* Reading entry 0 makes it recent; 1 becomes the oldest. */
    ck_assert_int_eq(t->ops->get(t, es[0]->key, &got), 0);
    entry_unref(got);
    ck_assert_int_eq(t->ops->probe(t), 0); /* the touch is committed */
    put(t, es[100]);
    ck_assert_uint_eq(t->ops->size(t), 100);
    ck_assert_int_eq(t->ops->get(t, es[1]->key, &got), -ENOENT);
    ck_assert_int_eq(t->ops->get(t, es[0]->key, &got), 0);
    entry_unref(got);
    /* A NOTOUCH update does not refresh: 2 is next to go. */
    ck_assert_int_eq(t->ops->put(t, es[2], TIER_PUT_NOTOUCH, NULL), 0);
    ck_assert_int_eq(t->ops->put_batch(t, &es[101], 59, &victims), 0);
    ck_assert_uint_eq(victims, 59);
    ck_assert_uint_eq(t->ops->size(t), 100);
    ck_assert_int_eq(t->ops->get(t, es[2]->key, &got), -ENOENT);
    ck_assert_int_eq(t->ops->get(t, es[159]->key, &got), 0);
    entry_unref(got);
    tier_close(t);
    /* Capacity applies to what is already on disk at the next write. */
    t = open_l3(10);
    ck_assert_uint_eq(t->ops->size(t), 100);
    put(t, es[0]);
    ck_assert_uint_eq(t->ops->size(t), 10);
    tier_close(t);
    for (i = 0; i < 160; i++)
        entry_unref(es[i]);
}
END_TEST

static Suite *l3_suite(void)
{
    Suite *s = suite_create("l3_sqlite");
    struct {
        const char *name;
        const TTest *test;
        int loop;
    } cases[] = {
        {"put_get_del", test_put_get_del, 1},
        {"replace_and_refuse", test_replace_and_refuse, 1},
        {"put_batch_10k", test_put_batch_10k, 1},
        {"restart_persistence", test_restart_persistence, 1},
        {"corrupt_file_moved_aside", test_corrupt_file_moved_aside, 1},
        {"newer_schema_refused", test_newer_schema_refused, 1},
        {"corrupt_schema_moved_aside", test_corrupt_schema_moved_aside, 1},
        {"unopenable_is_error", test_unopenable_is_error, 1},
        {"write_failure_and_recovery", test_write_failure_and_recovery, 1},
        {"corrupt_row_get", test_corrupt_row_get,
         (int)(sizeof damages / sizeof damages[0])},
        {"corrupt_rows_scan_sample", test_corrupt_rows_scan_sample, 1},
        {"concurrent_mix", test_concurrent_mix, 1},
        {"group_commit", test_group_commit, 1},
        {"kill9_durability", test_kill9_durability, 1},
        {"sweep_clear", test_sweep, 1},
        {"scan_paging", test_scan_paging, 1},
        {"sample", test_sample, 1},
        {"sample_small_exact", test_sample_small_exact, 1},
        {"capacity", test_capacity, 1},
    };
    size_t i;

    for (i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        TCase *tc = tcase_create(cases[i].name);

        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 120);
        tcase_add_loop_test(tc, cases[i].test, 0, cases[i].loop);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void)
{
    return testutil_run(l3_suite());
}
