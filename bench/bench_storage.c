/* SPDX-License-Identifier: MIT */
/*
 * In-process storage benchmark: lookup latency per tier (p50/p99 in µs),
 * batched write rate, bytes on disk per 10,000 entries, and the time to open
 * an L3 database holding N entries (start-up must not read every row).
 *
 * Usage: bench_storage [N_LOOKUP=10000] [N_BIG=1000000]
 * Prints figures; asserts nothing (benchmarks are not tests).
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <dirent.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"
#include "storage/cache.h"
#include "storage/entry.h"
#include "storage/l1_mem.h"
#include "storage/l2_jsonl.h"
#include "storage/l3_sqlite.h"
#include "storage/tier.h"

static struct entry *make_entry(size_t i)
{
    struct entry_url u;
    char url[64];
    struct entry *e = entry_new();

    if (!e)
        return NULL;
    snprintf(url, sizeof url, "http://10.%zu.%zu.%zu:%zu", (i >> 16) & 255,
             (i >> 8) & 255, i & 255, 1024 + i % 50000);
    if (entry_url_parse(url, -1, &u, NULL) != 0) {
        entry_unref(e);
        return NULL;
    }
    entry_set_str(&e->proxy_url, u.normalised);
    entry_key_from_normalised(u.normalised, e->key);
    entry_url_fini(&u);
    entry_set_str(&e->source, "bench");
    e->scheme = ENTRY_SCHEME_HTTP;
    e->fetch_time = clock_now_ms();
    e->ttl_seconds = 86400;
    e->latency_ms = (int64_t)(i % 5000);
    memcpy(e->country, "US", 3);
    entry_compute_expiry(e);
    return e;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Look up n random keys of es[0..n) in t; print p50/p99 in µs. */
static void bench_get(const char *label, struct tier *t, struct entry **es,
                      size_t n)
{
    uint64_t *lat = calloc(n, sizeof *lat);
    size_t misses = 0;
    uint64_t x = 88172645463325252ull;

    if (!lat)
        return;
    for (size_t i = 0; i < n; i++) {
        struct entry *out = NULL;
        uint64_t t0;
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        t0 = clock_mono_ns();
        if (t->ops->get(t, es[x % n]->key, &out) != 0)
            misses++;
        lat[i] = clock_mono_ns() - t0;
        entry_unref(out);
    }
    qsort(lat, n, sizeof *lat, cmp_u64);
    printf("%-28s p50 %8.2f us   p99 %8.2f us   (%zu lookups, %zu misses)\n",
           label, lat[n / 2] / 1000.0, lat[n * 99 / 100] / 1000.0, n, misses);
    free(lat);
}

static uint64_t du(const char *dir)
{
    char path[4096];
    struct dirent *d;
    struct stat st;
    uint64_t sum = 0;
    DIR *dp = opendir(dir);

    if (!dp)
        return 0;
    while ((d = readdir(dp))) {
        if (strcmp(d->d_name, ".") == 0 || strcmp(d->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, d->d_name);
        if (lstat(path, &st) != 0)
            continue;
        sum += S_ISDIR(st.st_mode) ? du(path) : (uint64_t)st.st_size;
    }
    closedir(dp);
    return sum;
}

int main(int argc, char **argv)
{
    size_t n = argc > 1 ? strtoul(argv[1], NULL, 10) : 10000;
    size_t big = argc > 2 ? strtoul(argv[2], NULL, 10) : 1000000;
    char dir[] = "/tmp/proxycache-bench-XXXXXX", dir2[] =
        "/tmp/proxycache-bench-XXXXXX";
    struct entry **es;
    struct tier *l1, *l2, *l3;
    uint64_t t0;
    int err;

    log_set_level(LOG_LEVEL_WARN);
    if (n < 100 || !mkdtemp(dir) || !mkdtemp(dir2))
        return 1;
    es = calloc(n, sizeof *es);
    for (size_t i = 0; i < n; i++)
        if (!(es[i] = make_entry(i)))
            return 1;

    if ((err = l1_mem_open(n, &l1)) || (err = l2_jsonl_open(dir, n, &l2)) ||
        (err = l3_sqlite_open(dir, 0, &l3))) {
        fprintf(stderr, "open: %s\n", strerror(-err));
        return 1;
    }
    t0 = clock_mono_ns();
    for (size_t i = 0; i < n; i++)
        l1->ops->put(l1, es[i], 0, NULL);
    printf("L1 put x%zu: %.1f ms\n", n, (clock_mono_ns() - t0) / 1e6);
    t0 = clock_mono_ns();
    for (size_t i = 0; i < n; i++)
        l2->ops->put(l2, es[i], 0, NULL);
    printf("L2 append x%zu: %.1f ms\n", n, (clock_mono_ns() - t0) / 1e6);
    t0 = clock_mono_ns();
    l3->ops->put_batch(l3, es, n, NULL);
    printf("L3 put_batch x%zu (one transaction, durable): %.1f ms\n", n,
           (clock_mono_ns() - t0) / 1e6);

    bench_get("L1 get (in process)", l1, es, n);
    bench_get("L2 get (pread + decode)", l2, es, n);
    bench_get("L3 get (SQLite point read)", l3, es, n);
    tier_close(l1);
    tier_close(l2);
    tier_close(l3);
    printf("bytes on disk for %zu entries in L2 + L3: %.2f MB (%.0f B/entry)\n",
           n, du(dir) / 1e6, (double)du(dir) / (double)n);

    /* Large L3: fill in batches of 10,000, close, time the re-open. */
    if (big > 0) {
        struct entry **bes = calloc(10000, sizeof *bes);
        if ((err = l3_sqlite_open(dir2, 0, &l3)))
            return 1;
        t0 = clock_mono_ns();
        for (size_t base = 0; base < big; base += 10000) {
            size_t m = big - base < 10000 ? big - base : 10000;
            for (size_t i = 0; i < m; i++)
                bes[i] = make_entry(base + i);
            l3->ops->put_batch(l3, bes, m, NULL);
            for (size_t i = 0; i < m; i++)
                entry_unref(bes[i]);
        }
        printf("L3 fill x%zu in batches of 10,000: %.2f s (%.0f rows/s)\n",
               big, (clock_mono_ns() - t0) / 1e9,
               big / ((clock_mono_ns() - t0) / 1e9));
        tier_close(l3);
        printf("bytes on disk for %zu entries in L3: %.1f MB\n", big,
               du(dir2) / 1e6);
        t0 = clock_mono_ns();
        if ((err = l3_sqlite_open(dir2, 0, &l3)))
            return 1;
        printf("L3 open with %zu rows: %.1f ms (size reports %zu)\n", big,
               (clock_mono_ns() - t0) / 1e6, l3->ops->size(l3));
        {
            struct entry *probe = make_entry(big / 2), *out = NULL;
            t0 = clock_mono_ns();
            err = l3->ops->get(l3, probe->key, &out);
            printf("first L3 get after open: %.1f us (%s)\n",
                   (clock_mono_ns() - t0) / 1e3, err ? "miss" : "hit");
            entry_unref(out);
            entry_unref(probe);
        }
        tier_close(l3);
        free(bes);
    }
    for (size_t i = 0; i < n; i++)
        entry_unref(es[i]);
    free(es);
    printf("data dirs: %s %s (removed)\n", dir, dir2);
    {
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf %s %s", dir, dir2);
        if (system(cmd) != 0)
            return 1;
    }
    return 0;
}
