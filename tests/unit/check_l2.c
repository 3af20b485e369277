/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of the L2 tier (storage/l2_jsonl.c) through its public ops:
 * CRUD, restart, LRU capacity and victims, tombstones, damaged shard files
 * (garbage, torn tail, overlong line, flipped byte), compaction, sweep,
 * scan order, sample, clear, failed appends (simulated with RLIMIT_FSIZE,
 * which makes write(2) fail with EFBIG past a size, like a full disk) and
 * a 4-thread stress run meant for ThreadSanitizer.
 *
 * Each test works in its own temporary data directory; Check runs every
 * test in a forked child, so rlimits and signal dispositions stay local.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "storage/entry.h"
#include "storage/formats.h"
#include "storage/l2_jsonl.h"
#include "storage/tier.h"
#include "tests/unit/testutil.h"

#define T0 1764064800000LL /* 2025-11-25T10:00:00Z */

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

/* ---------------------------------------------------------------------- */
/* Helpers                                                                */

/* A valid entry for proxy number i (distinct keys for distinct i). */
static struct entry *mk(int i, const char *source, int64_t fetch, int64_t ttl)
{
    return testutil_entry(i, source, fetch, ttl);
}

static struct tier *open_l2(size_t cap)
{
    struct tier *t = NULL;

    ck_assert_int_eq(l2_jsonl_open(dir, cap, &t), 0);
    ck_assert_ptr_nonnull(t);
    return t;
}

static void put(struct tier *t, struct entry *e)
{
    ck_assert_int_eq(t->ops->put(t, e, 0, NULL), 0);
}

/* put mk(i) and return its key in key. */
static void put_i(struct tier *t, int i, const char *src, int64_t fetch,
                  int64_t ttl, char key[ENTRY_KEY_LEN + 1])
{
    struct entry *e = mk(i, src, fetch, ttl);

    put(t, e);
    if (key)
        memcpy(key, e->key, ENTRY_KEY_LEN + 1);
    entry_unref(e);
}

static void key_of(int i, char key[ENTRY_KEY_LEN + 1])
{
    struct entry *e = mk(i, "k", T0, 60);

    memcpy(key, e->key, ENTRY_KEY_LEN + 1);
    entry_unref(e);
}

/* get key, expecting rc; on success check the source. */
static void expect_get(struct tier *t, const char *key, int rc,
                       const char *source)
{
    struct entry *e = NULL;
    int got = t->ops->get(t, key, &e);

    ck_assert_msg(got == rc, "get %.8s: %d, expected %d", key, got, rc);
    if (rc == 0) {
        ck_assert_ptr_nonnull(e);
        ck_assert_str_eq(e->key, key);
        if (source)
            ck_assert_str_eq(e->source, source);
        entry_unref(e);
    }
}

static void shard_path(const char *key, char *buf, size_t len)
{
    int idx = key[0] <= '9' ? key[0] - '0' : key[0] - 'a' + 10;

    snprintf(buf, len, "%s/l2/shard-%02d.jsonl", dir, idx);
}

static off_t file_size(const char *path)
{
    struct stat st;

    ck_assert_int_eq(stat(path, &st), 0);
    return st.st_size;
}

static off_t total_size(void)
{
    off_t sum = 0;

    for (int i = 0; i < L2_SHARDS; i++) {
        char p[512];

        snprintf(p, sizeof p, "%s/l2/shard-%02d.jsonl", dir, i);
        sum += file_size(p);
    }
    return sum;
}

static void append_raw(const char *path, const char *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_APPEND);

    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(write(fd, data, len), (ssize_t)len);
    close(fd);
}

/* Read a whole (small) file into a new NUL-terminated buffer. */
static char *slurp(const char *path, size_t *len)
{
    off_t sz = file_size(path);
    char *buf = malloc((size_t)sz + 1);
    int fd = open(path, O_RDONLY);

    ck_assert_ptr_nonnull(buf);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(read(fd, buf, (size_t)sz), (ssize_t)sz);
    close(fd);
    buf[sz] = '\0';
    *len = (size_t)sz;
    return buf;
}

/* Collects keys seen by scan/sample callbacks. */
struct seen {
    char keys[256][ENTRY_KEY_LEN + 1];
    size_t n;
    size_t stop_after; /* 0: never stop */
};

static int collect_cb(void *arg, struct entry *e)
{
    struct seen *s = arg;

    ck_assert_uint_lt(s->n, 256);
    memcpy(s->keys[s->n++], e->key, ENTRY_KEY_LEN + 1);
    if (s->stop_after && s->n == s->stop_after)
        return 42;
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Tests                                                                  */

START_TEST(test_basic)
{
    struct tier *t = open_l2(100);
    char k1[65], k2[65], k3[65];
    struct entry *e = NULL;

    ck_assert_str_eq(t->ops->name, "l2");
    put_i(t, 1, "a", T0, 3600, k1);
    put_i(t, 2, "b", T0, 3600, k2);
    put_i(t, 3, "c", T0, 3600, k3);
    ck_assert_uint_eq(t->ops->size(t), 3);

    ck_assert_int_eq(t->ops->get(t, k1, &e), 0);
    ck_assert_str_eq(e->proxy_url, "http://10.0.0.1:8080");
    ck_assert_str_eq(e->source, "a");
    ck_assert_int_eq(e->fetch_time, T0);
    ck_assert_int_eq(e->ttl_seconds, 3600);
    ck_assert_int_eq(e->expires_at, T0 + 3600 * 1000);
    entry_unref(e);

    /* Replace: same key, new fields, size unchanged. */
    put_i(t, 2, "b2", T0 + 1000, 60, NULL);
    ck_assert_uint_eq(t->ops->size(t), 3);
    expect_get(t, k2, 0, "b2");

    ck_assert_int_eq(t->ops->del(t, k3), 0);
    expect_get(t, k3, -ENOENT, NULL);
    ck_assert_int_eq(t->ops->del(t, k3), -ENOENT);
    ck_assert_uint_eq(t->ops->size(t), 2);

    /* Keys that can never be stored are misses, not crashes. */
    expect_get(t, "not-a-key", -ENOENT, NULL);
    expect_get(t, "", -ENOENT, NULL);
    ck_assert_int_eq(t->ops->del(t, "ZZ"), -ENOENT);
    ck_assert_int_eq(t->ops->put(t, NULL, 0, NULL), -EINVAL);
    ck_assert_uint_eq(t->ops->corrupt_count(t), 0);
    tier_close(t);
    tier_close(NULL);
}
END_TEST

START_TEST(test_open_errors)
{
    struct tier *t = NULL;
    char path[512];

    ck_assert_int_eq(l2_jsonl_open(dir, 0, &t), -EINVAL);
    ck_assert_int_eq(l2_jsonl_open(NULL, 10, &t), -EINVAL);
    ck_assert_ptr_null(t);
    /* DIR/l2 exists as a regular file: open fails cleanly. */
    snprintf(path, sizeof path, "%s/l2", dir);
    close(open(path, O_WRONLY | O_CREAT, 0600));
    ck_assert_int_lt(l2_jsonl_open(dir, 10, &t), 0);
    ck_assert_ptr_null(t);
    unlink(path);
    /* A data dir that does not exist yet is created (0700). */
    snprintf(path, sizeof path, "%s/sub", dir);
    ck_assert_int_eq(l2_jsonl_open(path, 10, &t), 0);
    tier_close(t);
    snprintf(path, sizeof path, "%s/sub/l2", dir);
    {
        struct stat st;

        ck_assert_int_eq(stat(path, &st), 0);
        ck_assert_int_eq(st.st_mode & 0777, 0700);
    }
}
END_TEST

START_TEST(test_restart)
{
    struct tier *t = open_l2(1000);
    char keys[50][65];

    for (int i = 0; i < 50; i++)
        put_i(t, i, "v1", T0 + i, 3600, keys[i]);
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(t->ops->del(t, keys[i]), 0);
    for (int i = 5; i < 10; i++)
        put_i(t, i, "v2", T0 + 100 + i, 3600, NULL);
    tier_close(t);

    t = open_l2(1000);
    ck_assert_uint_eq(t->ops->size(t), 45);
    ck_assert_uint_eq(t->ops->corrupt_count(t), 0);
    for (int i = 0; i < 5; i++)
        expect_get(t, keys[i], -ENOENT, NULL);
    for (int i = 5; i < 10; i++)
        expect_get(t, keys[i], 0, "v2");
    for (int i = 10; i < 50; i++)
        expect_get(t, keys[i], 0, "v1");
    tier_close(t);
}
END_TEST

START_TEST(test_lru_victim)
{
    struct tier *t = open_l2(3);
    char a[65], b[65], c[65], d[65];
    struct entry *e, *v = NULL;

    put_i(t, 1, "a", T0, 3600, a);
    put_i(t, 2, "b", T0, 3600, b);
    put_i(t, 3, "c", T0, 3600, c);
    expect_get(t, a, 0, "a"); /* a is now the most recent */

    e = mk(4, "d", T0, 3600);
    memcpy(d, e->key, sizeof d);
    ck_assert_int_eq(t->ops->put(t, e, 0, &v), 0);
    entry_unref(e);
    ck_assert_ptr_nonnull(v);
    ck_assert_str_eq(v->key, b);
    ck_assert_str_eq(v->source, "b");
    entry_unref(v);
    ck_assert_uint_eq(t->ops->size(t), 3);
    expect_get(t, b, -ENOENT, NULL);

    /* Order (old to new): c, a, d. A NOTOUCH replace keeps c oldest. */
    e = mk(3, "c2", T0, 3600);
    v = NULL;
    ck_assert_int_eq(t->ops->put(t, e, TIER_PUT_NOTOUCH, &v), 0);
    ck_assert_ptr_null(v);
    entry_unref(e);
    e = mk(5, "e", T0, 3600);
    ck_assert_int_eq(t->ops->put(t, e, 0, &v), 0);
    entry_unref(e);
    ck_assert_ptr_nonnull(v);
    ck_assert_str_eq(v->key, c);
    ck_assert_str_eq(v->source, "c2");
    entry_unref(v);

    /* Without a victim pointer the LRU entry (a) is dropped. */
    put_i(t, 6, "f", T0, 3600, NULL);
    ck_assert_uint_eq(t->ops->size(t), 3);
    expect_get(t, a, -ENOENT, NULL);
    tier_close(t);

    /* Evictions were tombstoned: the restart sees the same 3. */
    t = open_l2(3);
    ck_assert_uint_eq(t->ops->size(t), 3);
    expect_get(t, a, -ENOENT, NULL);
    expect_get(t, b, -ENOENT, NULL);
    expect_get(t, c, -ENOENT, NULL);
    expect_get(t, d, 0, "d");
    tier_close(t);
}
END_TEST

/* TIER_PUT_IFABSENT: a present key (any version, even expired) is left
 * alone, untouched in LRU order; an absent key is inserted (with victim). */
START_TEST(test_put_ifabsent)
{
    struct tier *t = open_l2(2);
    char a[ENTRY_KEY_LEN + 1], b[ENTRY_KEY_LEN + 1], c[ENTRY_KEY_LEN + 1];
    struct entry *e, *v = NULL;
    off_t before;

    put_i(t, 1, "a1", T0, 3600, a);
    put_i(t, 2, "b1", T0 - 86400000LL, 1, b); /* long expired */
    before = total_size();
    e = mk(1, "a2", T0, 3600);
    ck_assert_int_eq(t->ops->put(t, e, TIER_PUT_IFABSENT, &v), 0);
    entry_unref(e);
    ck_assert_ptr_null(v);
    ck_assert_int_eq(total_size(), before); /* nothing appended */
    expect_get(t, a, 0, "a1");              /* order (old to new): b, a */
    e = mk(2, "b2", T0, 3600);
    ck_assert_int_eq(t->ops->put(t, e, TIER_PUT_IFABSENT, &v), 0);
    entry_unref(e);
    ck_assert_ptr_null(v);
    ck_assert_int_eq(total_size(), before);
    /* Absent: inserted. The victim is b, still the old version and still
     * the least recently used (the skipped put did not touch it). */
    e = mk(3, "c1", T0, 3600);
    memcpy(c, e->key, sizeof(c));
    ck_assert_int_eq(t->ops->put(t, e, TIER_PUT_IFABSENT, &v), 0);
    entry_unref(e);
    ck_assert_ptr_nonnull(v);
    ck_assert_str_eq(v->key, b);
    ck_assert_str_eq(v->source, "b1");
    entry_unref(v);
    tier_close(t);
    /* The restart sees the same state. */
    t = open_l2(2);
    expect_get(t, a, 0, "a1");
    expect_get(t, c, 0, "c1");
    expect_get(t, b, -ENOENT, NULL);
    tier_close(t);
}
END_TEST

START_TEST(test_put_batch)
{
    struct tier *t = open_l2(50);
    struct entry *es[61];
    size_t nv = 99;
    char k[65];

    for (int i = 0; i < 60; i++)
        es[i] = mk(i, "batch", T0 + i, 3600);
    es[60] = mk(59, "dup", T0 + 60, 3600); /* same key twice: last wins */
    ck_assert_int_eq(t->ops->put_batch(t, es, 61, &nv), 0);
    ck_assert_uint_eq(nv, 10);
    ck_assert_uint_eq(t->ops->size(t), 50);
    /* Earlier items are older: the first 10 were evicted. */
    for (int i = 0; i < 10; i++)
        expect_get(t, es[i]->key, -ENOENT, NULL);
    for (int i = 10; i < 59; i++)
        expect_get(t, es[i]->key, 0, "batch");
    expect_get(t, es[59]->key, 0, "dup");
    ck_assert_int_eq(t->ops->put_batch(t, es, 0, NULL), 0);
    for (int i = 0; i < 61; i++)
        entry_unref(es[i]);
    tier_close(t);

    t = open_l2(50);
    ck_assert_uint_eq(t->ops->size(t), 50);
    key_of(59, k);
    expect_get(t, k, 0, "dup");
    tier_close(t);
}
END_TEST

START_TEST(test_tombstone_restart)
{
    struct tier *t = open_l2(10);
    char a[65], b[65];

    put_i(t, 1, "a", T0, 3600, a);
    put_i(t, 2, "b", T0, 3600, b);
    ck_assert_int_eq(t->ops->del(t, a), 0);
    ck_assert_int_eq(t->ops->del(t, b), 0);
    put_i(t, 2, "b-again", T0, 3600, NULL);
    tier_close(t);

    t = open_l2(10);
    ck_assert_uint_eq(t->ops->size(t), 1);
    expect_get(t, a, -ENOENT, NULL);
    expect_get(t, b, 0, "b-again");
    tier_close(t);
}
END_TEST

START_TEST(test_corrupt_open)
{
    struct tier *t = open_l2(100);
    char keys[20][65], p1[512], p2[512], *line = NULL;
    struct entry *e;
    size_t len;
    off_t before;
    static const char garbage[] = "this is not json at all\n";

    for (int i = 0; i < 20; i++)
        put_i(t, i, "ok", T0, 3600, keys[i]);
    tier_close(t);

    /* A garbage line in the middle of shard(k0). */
    shard_path(keys[0], p1, sizeof p1);
    append_raw(p1, garbage, sizeof garbage - 1);
    e = mk(1000, "after-garbage", T0, 3600);
    ck_assert_int_eq(formats_entry_to_line(e, &line, &len), 0);
    {
        /* Put the record where it belongs, after the garbage. */
        char p[512];

        shard_path(e->key, p, sizeof p);
        append_raw(p, line, len);
    }
    free(line);

    /* A torn last line in another shard: half of a valid record. */
    for (int i = 1; i < 20; i++) {
        shard_path(keys[i], p2, sizeof p2);
        if (strcmp(p1, p2) != 0)
            break;
    }
    before = file_size(p2);
    {
        struct entry *x = mk(2000, "torn", T0, 3600);

        ck_assert_int_eq(formats_entry_to_line(x, &line, &len), 0);
        entry_unref(x);
        append_raw(p2, line, len / 2);
        free(line);
    }

    t = open_l2(100);
    ck_assert_uint_eq(t->ops->size(t), 21);
    ck_assert_uint_eq(t->ops->corrupt_count(t), 2);
    for (int i = 0; i < 20; i++)
        expect_get(t, keys[i], 0, "ok");
    expect_get(t, e->key, 0, "after-garbage");
    ck_assert_int_eq(file_size(p2), before); /* torn tail truncated */

    /* Appends after the repaired tail work and survive a restart. */
    put_i(t, 3000, "new", T0, 3600, NULL);
    ck_assert_int_eq(t->ops->maintain(t), 0);
    tier_close(t);
    t = open_l2(100);
    ck_assert_uint_eq(t->ops->size(t), 22);
    ck_assert_uint_eq(t->ops->corrupt_count(t), 0); /* compacted away */
    tier_close(t);
    entry_unref(e);
}
END_TEST

START_TEST(test_corrupt_lines_various)
{
    struct tier *t = open_l2(100);
    char k1[65], k2[65], p[512], other[512], *line = NULL;
    size_t len, big = FORMATS_LINE_MAX + 100;
    char *huge = malloc(big + 1);
    struct entry *e;

    ck_assert_ptr_nonnull(huge);
    put_i(t, 1, "one", T0, 3600, k1);
    put_i(t, 2, "two", T0, 3600, k2);
    tier_close(t);

    /* An overlong line, then a valid newer version of k1. */
    shard_path(k1, p, sizeof p);
    memset(huge, 'x', big);
    huge[big] = '\n';
    append_raw(p, huge, big + 1);
    e = mk(1, "one-v2", T0, 3600);
    ck_assert_int_eq(formats_entry_to_line(e, &line, &len), 0);
    append_raw(p, line, len);
    entry_unref(e);
    free(line);

    /* k2's record copied into a shard it does not belong to. */
    e = mk(2, "two-wrong-shard", T0, 3600);
    ck_assert_int_eq(formats_entry_to_line(e, &line, &len), 0);
    for (int i = 0; i < L2_SHARDS; i++) {
        char sp[512];

        snprintf(other, sizeof other, "%s/l2/shard-%02d.jsonl", dir, i);
        shard_path(k2, sp, sizeof sp);
        if (strcmp(sp, other) != 0)
            break;
    }
    append_raw(other, line, len);
    free(line);
    entry_unref(e);

    /* A corrupt newer version of k2 (its URL no longer matches its key)
     * hides the old one. */
    e = mk(2, "two-bad", T0, 3600);
    ck_assert_int_eq(formats_entry_to_line(e, &line, &len), 0);
    {
        char *hit = strstr(line, "10.0.0.2:");

        ck_assert_ptr_nonnull(hit);
        hit[7] = '9';
    }
    shard_path(k2, p, sizeof p);
    append_raw(p, line, len);
    free(line);
    entry_unref(e);
    /* And blank lines are harmless. */
    append_raw(p, "\n\n", 2);

    t = open_l2(100);
    ck_assert_uint_eq(t->ops->corrupt_count(t), 3);
    expect_get(t, k1, 0, "one-v2");
    expect_get(t, k2, -ENOENT, NULL);
    ck_assert_uint_eq(t->ops->size(t), 1);
    tier_close(t);
    free(huge);
}
END_TEST

START_TEST(test_overlong_torn_tail)
{
    struct tier *t = open_l2(10);
    char k[65], p[512];
    size_t big = 3 * FORMATS_LINE_MAX;
    char *huge = malloc(big);
    off_t before;

    ck_assert_ptr_nonnull(huge);
    put_i(t, 1, "one", T0, 3600, k);
    tier_close(t);
    shard_path(k, p, sizeof p);
    before = file_size(p);
    memset(huge, 'y', big);
    append_raw(p, huge, big); /* no newline at all */
    free(huge);

    t = open_l2(10);
    ck_assert_uint_eq(t->ops->corrupt_count(t), 1);
    ck_assert_int_eq(file_size(p), before);
    expect_get(t, k, 0, "one");
    tier_close(t);
}
END_TEST

START_TEST(test_flipped_byte)
{
    struct tier *t = open_l2(10);
    char k[65], p[512], *buf, *hit;
    size_t len;
    int fd;

    put_i(t, 77, "flip", T0, 3600, k);
    shard_path(k, p, sizeof p);
    buf = slurp(p, &len);
    hit = strstr(buf, "10.0.0.77");
    ck_assert_ptr_nonnull(hit);
    fd = open(p, O_WRONLY);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(pwrite(fd, "9", 1, (off_t)(hit - buf) + 1), 1);
    close(fd);
    free(buf);

    expect_get(t, k, -EBADMSG, NULL);
    ck_assert_uint_eq(t->ops->corrupt_count(t), 1);
    ck_assert_uint_eq(t->ops->size(t), 0);
    expect_get(t, k, -ENOENT, NULL);
    ck_assert_uint_eq(t->ops->corrupt_count(t), 1);
    tier_close(t);

    /* The tombstone keeps it gone after a restart. */
    t = open_l2(10);
    expect_get(t, k, -ENOENT, NULL);
    ck_assert_uint_eq(t->ops->size(t), 0);
    tier_close(t);
}
END_TEST

START_TEST(test_truncated_under_index)
{
    struct tier *t = open_l2(10);
    char k[65], p[512];

    put_i(t, 5, "five", T0, 3600, k);
    shard_path(k, p, sizeof p);
    ck_assert_int_eq(truncate(p, file_size(p) - 10), 0);
    expect_get(t, k, -EBADMSG, NULL);
    ck_assert_uint_eq(t->ops->corrupt_count(t), 1);
    expect_get(t, k, -ENOENT, NULL);
    /* Later appends to the shortened file are indexed where they land. */
    put_i(t, 5, "five-again", T0, 3600, NULL);
    expect_get(t, k, 0, "five-again");
    tier_close(t);
    t = open_l2(10);
    expect_get(t, k, 0, "five-again");
    tier_close(t);
}
END_TEST

START_TEST(test_compaction_damaged)
{
    /* Compaction copies bytes without decoding them; a record that is no
     * longer a whole line is dropped and counted instead of copied. */
    struct tier *t = open_l2(10);
    char k[65], p[512];

    put_i(t, 5, "five", T0, 3600, k);
    /* Churn the same key until the shard is over maintain()'s threshold,
     * then damage the live (last) record. */
    for (int i = 0; i < 400; i++)
        put_i(t, 5, "five", T0 + i, 3600, NULL);
    shard_path(k, p, sizeof p);
    ck_assert_int_eq(truncate(p, file_size(p) - 10), 0);
    ck_assert_int_eq(t->ops->maintain(t), 0);
    ck_assert_uint_eq(t->ops->corrupt_count(t), 1);
    ck_assert_uint_eq(t->ops->size(t), 0);
    ck_assert_int_eq(file_size(p), 0);
    expect_get(t, k, -ENOENT, NULL);
    tier_close(t);
}
END_TEST

START_TEST(test_compaction)
{
    struct tier *t = open_l2(100);
    char keys[20][65];
    off_t before, after;
    char tmp[512];

    /* Enough rewrites that every shard passes maintain()'s threshold
     * (64 KiB dead and more than half the file). */
    for (int round = 0; round < 400; round++)
        for (int i = 0; i < 20; i++)
            put_i(t, i, round == 399 ? "last" : "old", T0 + round, 3600,
                  keys[i]);
    for (int i = 15; i < 20; i++)
        ck_assert_int_eq(t->ops->del(t, keys[i]), 0);
    before = total_size();
    ck_assert_int_eq(t->ops->maintain(t), 0);
    after = total_size();
    ck_assert_msg(after * 20 < before, "before %lld after %lld",
                  (long long)before, (long long)after);
    ck_assert_uint_eq(t->ops->size(t), 15);
    for (int i = 0; i < 15; i++)
        expect_get(t, keys[i], 0, "last");
    for (int i = 15; i < 20; i++)
        expect_get(t, keys[i], -ENOENT, NULL);
    /* Writes after a compaction land at the right offsets. */
    put_i(t, 0, "post", T0 + 99, 3600, NULL);
    expect_get(t, keys[0], 0, "post");
    tier_close(t);

    for (int i = 0; i < L2_SHARDS; i++) {
        snprintf(tmp, sizeof tmp, "%s/l2/shard-%02d.jsonl.tmp", dir, i);
        ck_assert_int_ne(access(tmp, F_OK), 0);
    }
    t = open_l2(100);
    ck_assert_uint_eq(t->ops->size(t), 15);
    ck_assert_uint_eq(t->ops->corrupt_count(t), 0);
    expect_get(t, keys[0], 0, "post");
    for (int i = 1; i < 15; i++)
        expect_get(t, keys[i], 0, "last");
    for (int i = 15; i < 20; i++)
        expect_get(t, keys[i], -ENOENT, NULL);
    tier_close(t);
}
END_TEST

START_TEST(test_inline_compaction)
{
    /* One key rewritten until its shard holds > 1 MiB of dead lines: the
     * write path compacts without maintain(). */
    struct tier *t = open_l2(10);
    char k[65], p[512];

    for (int i = 0; i < 6000; i++)
        put_i(t, 1, "churn", T0 + i, 3600, k);
    shard_path(k, p, sizeof p);
    ck_assert_int_lt(file_size(p), 1024 * 1024);
    expect_get(t, k, 0, "churn");
    tier_close(t);
    t = open_l2(10);
    ck_assert_uint_eq(t->ops->size(t), 1);
    tier_close(t);
}
END_TEST

START_TEST(test_capacity_at_open)
{
    struct tier *t = open_l2(100);
    char keys[20][65];

    for (int i = 0; i < 20; i++)
        put_i(t, i, "s", T0 + i * 1000, 3600, keys[i]);
    tier_close(t);

    /* Reopen smaller: the 5 most recent stay. */
    t = open_l2(5);
    ck_assert_uint_eq(t->ops->size(t), 5);
    for (int i = 0; i < 15; i++)
        expect_get(t, keys[i], -ENOENT, NULL);
    for (int i = 15; i < 20; i++)
        expect_get(t, keys[i], 0, "s");
    /* A delete of a dropped key still shadows it on disk. */
    ck_assert_int_eq(t->ops->del(t, keys[0]), -ENOENT);
    tier_close(t);

    t = open_l2(100);
    expect_get(t, keys[0], -ENOENT, NULL);
    ck_assert_uint_eq(t->ops->size(t), 19);
    tier_close(t);

    /* After compaction the dropped records are gone for good. */
    t = open_l2(5);
    ck_assert_int_eq(t->ops->maintain(t), 0);
    tier_close(t);
    t = open_l2(100);
    ck_assert_uint_eq(t->ops->size(t), 5);
    tier_close(t);
}
END_TEST

START_TEST(test_sweep)
{
    struct tier *t = open_l2(100);
    char keys[20][65];
    size_t removed = 99;

    for (int i = 0; i < 10; i++)
        put_i(t, i, "short", T0, 10, keys[i]);
    for (int i = 10; i < 20; i++)
        put_i(t, i, "long", T0, 1000, keys[i]);
    ck_assert_int_eq(t->ops->sweep(t, T0 + 5000, 100, &removed), 0);
    ck_assert_uint_eq(removed, 0);
    ck_assert_int_eq(t->ops->sweep(t, T0 + 10000, 3, &removed), 0);
    ck_assert_uint_eq(removed, 3);
    ck_assert_uint_eq(t->ops->size(t), 17);
    ck_assert_int_eq(t->ops->sweep(t, T0 + 10000, 100, &removed), 0);
    ck_assert_uint_eq(removed, 7);
    ck_assert_uint_eq(t->ops->size(t), 10);
    for (int i = 0; i < 10; i++)
        expect_get(t, keys[i], -ENOENT, NULL);
    for (int i = 10; i < 20; i++)
        expect_get(t, keys[i], 0, "long");
    ck_assert_int_eq(t->ops->sweep(t, T0 + 10000, 100, NULL), 0);
    tier_close(t);

    t = open_l2(100);
    ck_assert_uint_eq(t->ops->size(t), 10);
    tier_close(t);
}
END_TEST

START_TEST(test_scan)
{
    struct tier *t = open_l2(100);
    struct tier_filter f;
    struct seen *s = calloc(1, sizeof *s);
    char sorted[30][65];

    ck_assert_ptr_nonnull(s);
    for (int i = 0; i < 30; i++)
        put_i(t, i, i % 3 == 0 ? "three" : "other", T0, 3600, sorted[i]);
    put_i(t, 100, "expired", T0, 1, NULL);
    qsort(sorted, 30, sizeof sorted[0],
          (int (*)(const void *, const void *))strcmp);

    tier_filter_init(&f, T0 + 5000);
    ck_assert_int_eq(t->ops->scan(t, &f, "", 1000, collect_cb, s), 0);
    ck_assert_uint_eq(s->n, 30); /* the expired one never matches */
    for (int i = 0; i < 30; i++)
        ck_assert_str_eq(s->keys[i], sorted[i]);

    memset(s, 0, sizeof *s);
    ck_assert_int_eq(t->ops->scan(t, &f, sorted[9], 5, collect_cb, s), 0);
    ck_assert_uint_eq(s->n, 5);
    for (int i = 0; i < 5; i++)
        ck_assert_str_eq(s->keys[i], sorted[10 + i]);

    memset(s, 0, sizeof *s);
    ck_assert_int_eq(t->ops->scan(t, &f, sorted[29], 5, collect_cb, s), 0);
    ck_assert_uint_eq(s->n, 0);

    memset(s, 0, sizeof *s);
    s->stop_after = 2;
    ck_assert_int_eq(t->ops->scan(t, &f, NULL, 10, collect_cb, s), 42);
    ck_assert_uint_eq(s->n, 2);

    memset(s, 0, sizeof *s);
    f.source = "three";
    ck_assert_int_eq(t->ops->scan(t, &f, "", 100, collect_cb, s), 0);
    ck_assert_uint_eq(s->n, 10);
    for (size_t i = 1; i < s->n; i++)
        ck_assert_int_lt(strcmp(s->keys[i - 1], s->keys[i]), 0);
    tier_close(t);
    free(s);
}
END_TEST

START_TEST(test_sample)
{
    struct tier *t = open_l2(100);
    struct tier_filter f;
    struct seen *a = calloc(1, sizeof *a), *b = calloc(1, sizeof *b);

    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_nonnull(b);
    for (int i = 0; i < 50; i++)
        put_i(t, i, i < 5 ? "rare" : "common", T0, 3600, NULL);
    tier_filter_init(&f, T0);
    ck_assert_int_eq(t->ops->sample(t, &f, 10, 7, collect_cb, a), 0);
    ck_assert_int_eq(t->ops->sample(t, &f, 10, 7, collect_cb, b), 0);
    ck_assert_uint_eq(a->n, 10);
    ck_assert_uint_eq(b->n, 10);
    for (size_t i = 0; i < 10; i++) {
        ck_assert_str_eq(a->keys[i], b->keys[i]); /* same seed */
        for (size_t j = 0; j < i; j++)
            ck_assert_str_ne(a->keys[i], a->keys[j]); /* distinct */
    }
    memset(a, 0, sizeof *a);
    f.source = "rare";
    ck_assert_int_eq(t->ops->sample(t, &f, 100, 1, collect_cb, a), 0);
    ck_assert_uint_eq(a->n, 5);
    memset(a, 0, sizeof *a);
    ck_assert_int_eq(t->ops->sample(t, &f, 0, 1, collect_cb, a), 0);
    ck_assert_uint_eq(a->n, 0);
    tier_close(t);
    free(a);
    free(b);
}
END_TEST

START_TEST(test_sample_large)
{
    /* Above the enumeration threshold sampling probes the index. */
    struct tier *t = open_l2(6000);
    struct tier_filter f;
    struct entry **es = calloc(5000, sizeof *es);
    struct seen *a = calloc(1, sizeof *a);

    ck_assert_ptr_nonnull(es);
    ck_assert_ptr_nonnull(a);
    for (int i = 0; i < 5000; i++)
        es[i] = mk(i, "bulk", T0, 3600);
    ck_assert_int_eq(t->ops->put_batch(t, es, 5000, NULL), 0);
    for (int i = 0; i < 5000; i++)
        entry_unref(es[i]);
    free(es);
    tier_filter_init(&f, T0);
    ck_assert_int_eq(t->ops->sample(t, &f, 20, 3, collect_cb, a), 0);
    ck_assert_uint_eq(a->n, 20);
    for (size_t i = 0; i < a->n; i++)
        for (size_t j = 0; j < i; j++)
            ck_assert_str_ne(a->keys[i], a->keys[j]);
    tier_close(t);
    free(a);
}
END_TEST

START_TEST(test_clear)
{
    struct tier *t = open_l2(100);
    size_t removed = 0;
    char k[65];

    for (int i = 0; i < 10; i++)
        put_i(t, i, "c", T0, 3600, k);
    ck_assert_int_eq(t->ops->clear(t, &removed), 0);
    ck_assert_uint_eq(removed, 10);
    ck_assert_uint_eq(t->ops->size(t), 0);
    ck_assert_int_eq(total_size(), 0);
    expect_get(t, k, -ENOENT, NULL);
    put_i(t, 1, "after", T0, 3600, k);
    expect_get(t, k, 0, "after");
    ck_assert_int_eq(t->ops->clear(t, NULL), 0);
    tier_close(t);
    t = open_l2(100);
    ck_assert_uint_eq(t->ops->size(t), 0);
    tier_close(t);
}
END_TEST

static void limit_fsize(rlim_t lim)
{
    struct rlimit rl;

    ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &rl), 0);
    rl.rlim_cur = lim;
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &rl), 0);
}

START_TEST(test_failed_append)
{
    struct tier *t = open_l2(100);
    char a[65], b[65], pa[512], pb[512];
    struct entry *eb;
    off_t size_b, size_a;
    struct rlimit orig;

    signal(SIGXFSZ, SIG_IGN); /* EFBIG instead of a signal */
    ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &orig), 0);
    put_i(t, 1, "a", T0, 3600, a);
    /* b: a key in another shard than a (so its shard starts empty). */
    for (int i = 2;; i++) {
        key_of(i, b);
        if (b[0] != a[0]) {
            eb = mk(i, "b", T0, 3600);
            break;
        }
    }
    shard_path(a, pa, sizeof pa);
    shard_path(b, pb, sizeof pb);
    size_a = file_size(pa);
    size_b = file_size(pb);
    ck_assert_int_eq(size_b, 0);

    /* Room for 10 bytes: a short write, then EFBIG; truncated back. */
    limit_fsize((rlim_t)size_b + 10);
    ck_assert_int_eq(t->ops->put(t, eb, 0, NULL), -ENOSPC);
    ck_assert_int_eq(file_size(pb), size_b);
    expect_get(t, b, -ENOENT, NULL);
    ck_assert_uint_eq(t->ops->size(t), 1);
    ck_assert_int_eq(t->ops->probe(t), -ENOSPC);

    /* A failed replace forgets the old version rather than serve it. */
    limit_fsize((rlim_t)size_a + 10);
    {
        struct entry *a2 = mk(1, "a2", T0, 3600);

        ck_assert_int_eq(t->ops->put(t, a2, 0, NULL), -ENOSPC);
        entry_unref(a2);
    }
    ck_assert_int_eq(file_size(pa), size_a);
    expect_get(t, a, -ENOENT, NULL);
    ck_assert_uint_eq(t->ops->size(t), 0);

    /* The disk "recovers". */
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &orig), 0);
    ck_assert_int_eq(t->ops->probe(t), 0);
    ck_assert_int_eq(t->ops->put(t, eb, 0, NULL), 0);
    expect_get(t, b, 0, "b");
    ck_assert_int_eq(t->ops->maintain(t), 0);
    tier_close(t);

    t = open_l2(100);
    ck_assert_uint_eq(t->ops->size(t), 1);
    expect_get(t, a, -ENOENT, NULL);
    expect_get(t, b, 0, "b");
    ck_assert_uint_eq(t->ops->corrupt_count(t), 0);
    tier_close(t);
    entry_unref(eb);
}
END_TEST

START_TEST(test_failed_batch_and_sweep)
{
    struct tier *t = open_l2(3);
    struct entry *es[4];
    struct rlimit orig;
    size_t nv = 99, removed = 0;

    signal(SIGXFSZ, SIG_IGN);
    ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &orig), 0);
    for (int i = 0; i < 4; i++)
        es[i] = mk(i, "b", T0, i < 2 ? 1 : 3600);
    ck_assert_int_eq(t->ops->put_batch(t, es, 2, NULL), 0);

    /* Nothing can be written: the batch fails, new keys are not indexed,
     * and existing keys in it are forgotten rather than served stale. */
    limit_fsize(0);
    ck_assert_int_eq(t->ops->put_batch(t, es + 1, 3, &nv), -ENOSPC);
    ck_assert_uint_eq(nv, 0);
    expect_get(t, es[0]->key, 0, "b");
    for (int i = 1; i < 4; i++)
        expect_get(t, es[i]->key, -ENOENT, NULL);
    ck_assert_uint_eq(t->ops->size(t), 1);

    /* Expired entries leave the index even if tombstones fail. */
    ck_assert_int_eq(t->ops->sweep(t, T0 + 2000, 10, &removed), 0);
    ck_assert_uint_eq(removed, 1);
    ck_assert_uint_eq(t->ops->size(t), 0);

    /* The disk comes back: maintain() rewrites the marked shards, so the
     * forgotten records do not return after a restart. */
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &orig), 0);
    ck_assert_int_eq(t->ops->put_batch(t, es + 2, 2, NULL), 0);
    ck_assert_int_eq(t->ops->maintain(t), 0);
    tier_close(t);
    t = open_l2(3);
    ck_assert_uint_eq(t->ops->size(t), 2);
    expect_get(t, es[0]->key, -ENOENT, NULL);
    expect_get(t, es[1]->key, -ENOENT, NULL);
    expect_get(t, es[2]->key, 0, "b");
    expect_get(t, es[3]->key, 0, "b");
    tier_close(t);
    for (int i = 0; i < 4; i++)
        entry_unref(es[i]);
}
END_TEST

START_TEST(test_failed_delete)
{
    struct tier *t = open_l2(100);
    char a[65], pa[512];
    struct rlimit orig;

    signal(SIGXFSZ, SIG_IGN);
    ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &orig), 0);
    put_i(t, 1, "a", T0, 3600, a);
    shard_path(a, pa, sizeof pa);
    limit_fsize((rlim_t)file_size(pa));
    ck_assert_int_eq(t->ops->del(t, a), -ENOSPC);
    expect_get(t, a, -ENOENT, NULL); /* never served after a delete */
    ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &orig), 0);
    /* A retried delete of the forgotten key writes its tombstone. */
    ck_assert_int_eq(t->ops->del(t, a), -ENOENT);
    tier_close(t);
    t = open_l2(100);
    expect_get(t, a, -ENOENT, NULL);
    tier_close(t);
}
END_TEST

/* Four threads hammer one small tier; run under TSan for races. Long
 * sources make the shards pass maintain()'s compaction threshold, so
 * compactions (fd swaps, new offsets) race with reads and appends. */
#define STRESS_SOURCE                                                          \
    "stress-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"  \
    "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"

struct stress {
    struct tier *t;
    unsigned seed;
    int errors;
};

static int count_cb(void *arg, struct entry *e)
{
    (void)e;
    (*(size_t *)arg)++;
    return 0;
}

static void *stress_thread(void *arg)
{
    struct stress *st = arg;
    struct tier *t = st->t;
    uint64_t x = st->seed * 0x9e3779b97f4a7c15ULL + 1;

    for (int op = 0; op < 6000; op++) {
        int i, kind, rc = 0;
        char key[65];
        struct entry *e = NULL;

        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        i = (int)(x % 200);
        kind = (int)((x >> 32) % 100);
        if (kind < 45) {
            struct entry *v = NULL;

            e = mk(i, STRESS_SOURCE, T0 + op, (x >> 40) % 2 ? 3600 : 1);
            rc = t->ops->put(t, e, 0, (x >> 41) % 2 ? &v : NULL);
            entry_unref(e);
            entry_unref(v);
        } else if (kind < 75) {
            key_of(i, key);
            rc = t->ops->get(t, key, &e);
            if (rc == 0 && strcmp(e->key, key) != 0)
                rc = -EINVAL;
            entry_unref(e);
            if (rc == -ENOENT)
                rc = 0;
        } else if (kind < 87) {
            key_of(i, key);
            rc = t->ops->del(t, key);
            if (rc == -ENOENT)
                rc = 0;
        } else if (kind < 92) {
            struct tier_filter f;
            size_t n = 0;

            tier_filter_init(&f, T0);
            rc = t->ops->scan(t, &f, "", 20, count_cb, &n);
        } else if (kind < 95) {
            struct tier_filter f;
            size_t n = 0;

            tier_filter_init(&f, T0);
            rc = t->ops->sample(t, &f, 5, x, count_cb, &n);
        } else if (kind < 98) {
            size_t removed;

            rc = t->ops->sweep(t, T0 + 5000, 50, &removed);
        } else {
            rc = t->ops->maintain(t);
        }
        if (rc != 0)
            st->errors++;
    }
    return NULL;
}

START_TEST(test_threads)
{
    struct tier *t = open_l2(64);
    struct stress st[4];
    pthread_t th[4];
    struct tier_filter f;
    size_t n = 0;

    for (int i = 0; i < 4; i++) {
        st[i] = (struct stress){.t = t, .seed = (unsigned)i + 1};
        ck_assert_int_eq(pthread_create(&th[i], NULL, stress_thread, &st[i]),
                         0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        ck_assert_int_eq(st[i].errors, 0);
    }
    ck_assert_uint_le(t->ops->size(t), 64);
    ck_assert_uint_eq(t->ops->corrupt_count(t), 0);
    tier_filter_init(&f, 0);
    ck_assert_int_eq(t->ops->scan(t, &f, "", 1000, count_cb, &n), 0);
    ck_assert_uint_eq(n, t->ops->size(t));
    tier_close(t);

    t = open_l2(64);
    ck_assert_uint_eq(t->ops->corrupt_count(t), 0);
    n = 0;
    ck_assert_int_eq(t->ops->scan(t, &f, "", 1000, count_cb, &n), 0);
    ck_assert_uint_eq(n, t->ops->size(t));
    tier_close(t);
}
END_TEST

static Suite *l2_suite(void)
{
    Suite *s = suite_create("l2_jsonl");
    struct {
        const char *name;
        const TTest *test;
    } cases[] = {
        {"basic", test_basic},
        {"open_errors", test_open_errors},
        {"restart", test_restart},
        {"lru_victim", test_lru_victim},
        {"put_ifabsent", test_put_ifabsent},
        {"put_batch", test_put_batch},
        {"tombstone_restart", test_tombstone_restart},
        {"corrupt_open", test_corrupt_open},
        {"corrupt_lines_various", test_corrupt_lines_various},
        {"overlong_torn_tail", test_overlong_torn_tail},
        {"flipped_byte", test_flipped_byte},
        {"truncated_under_index", test_truncated_under_index},
        {"compaction", test_compaction},
        {"compaction_damaged", test_compaction_damaged},
        {"inline_compaction", test_inline_compaction},
        {"capacity_at_open", test_capacity_at_open},
        {"sweep", test_sweep},
        {"scan", test_scan},
        {"sample", test_sample},
        {"sample_large", test_sample_large},
        {"clear", test_clear},
        {"failed_append", test_failed_append},
        {"failed_batch_and_sweep", test_failed_batch_and_sweep},
        {"failed_delete", test_failed_delete},
        {"threads", test_threads},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        TCase *tc = tcase_create(cases[i].name);

        tcase_add_checked_fixture(tc, setup, teardown);
        tcase_set_timeout(tc, 120);
        tcase_add_test(tc, cases[i].test);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void)
{
    return testutil_run(l2_suite());
}
