/* SPDX-License-Identifier: MIT */
/*
 * Small helpers shared by the Check unit tests: temporary directories and
 * the source tree location (for fixtures under ../shared).
 */
#ifndef TESTS_UNIT_TESTUTIL_H
#define TESTS_UNIT_TESTUTIL_H

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "storage/entry.h"

/* Create a fresh temporary directory; returns a malloc'd path. */
static inline char *testutil_mkdtemp(void)
{
    char tmpl[] = "/tmp/proxycache-test-XXXXXX";
    char *d = mkdtemp(tmpl);
    ck_assert_ptr_nonnull(d);
    return strdup(d);
}

/* rm -rf dir (test-only helper) and free the path. */
static inline void testutil_rmrf(char *dir)
{
    char cmd[512];
    if (!dir)
        return;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "warning: could not remove %s\n", dir);
    free(dir);
}

/* The repository root (PROXYCACHE_SRCDIR env, else the compile-time value,
 * else "."). */
static inline const char *testutil_srcdir(void)
{
    const char *s = getenv("PROXYCACHE_SRCDIR");
#ifdef PROXYCACHE_SRCDIR
    if (!s)
        s = PROXYCACHE_SRCDIR;
#endif
    return s ? s : ".";
}

/* Run a suite in fork mode; returns the process exit status. */
static inline int testutil_run(Suite *s)
{
    SRunner *sr = srunner_create(s);
    int failed;
    srunner_run_all(sr, CK_NORMAL);
    failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

/* A valid http entry for proxy number i (distinct keys for distinct i),
 * checked with entry_validate(). source NULL means "unknown". */
static inline struct entry *testutil_entry(int i, const char *source,
                                           int64_t fetch, int64_t ttl)
{
    struct entry *e = entry_new();
    const char *why = NULL;
    char url[64];

    ck_assert_ptr_nonnull(e);
    snprintf(url, sizeof url, "http://10.%d.%d.%d:8080", (i >> 16) & 255,
             (i >> 8) & 255, i & 255);
    ck_assert_int_eq(entry_set_str(&e->proxy_url, url), 0);
    entry_key_from_normalised(url, e->key);
    ck_assert_int_eq(entry_set_str(&e->source, source ? source : "unknown"), 0);
    e->scheme = ENTRY_SCHEME_HTTP;
    e->fetch_time = fetch;
    e->ttl_seconds = ttl;
    entry_compute_expiry(e);
    ck_assert_msg(entry_validate(e, &why) == 0, "invalid test entry: %s",
                  why ? why : "?");
    return e;
}

#endif
