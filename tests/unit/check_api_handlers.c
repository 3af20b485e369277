/* SPDX-License-Identifier: MIT */
/*
 * Handler tests of api/ against a real cache in a temporary directory:
 * every route through its handler function with fake requests, the
 * streamed warm/import (fed in odd chunk sizes) and export (read in small
 * blocks), and a robustness loop throwing mutated bodies at every JSON
 * handler (no crash, a well-formed answer every time).
 */
#include "config.h"

#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "api/metrics.h"
#include "common/clock.h"
#include "common/log.h"
#include "storage/cache.h"
#include "storage/crypto.h"
#include "storage/entry.h"
#include "tests/unit/testutil.h"

static char *dir;
static struct cache *cache;
static struct crypto_keyring *ring;
static struct metrics *metrics;
static struct api_ctx ctx;

static void setup(void)
{
    struct cache_config cfg;
    static const char *const routes[] = {"/v1/proxies"};

    log_set_level(LOG_LEVEL_ERROR);
    dir = testutil_mkdtemp();
    memset(&cfg, 0, sizeof cfg);
    ck_assert_int_eq(crypto_keyring_new_random(&ring), 0);
    cfg.data_dir = dir;
    cfg.l1_capacity = 4;
    cfg.l2_capacity = 8;
    cfg.l3_capacity = 0;
    cfg.failure_threshold = 3;
    cfg.default_ttl = 3600;
    cfg.ring = ring;
    ck_assert_int_eq(cache_open(&cfg, &cache), 0);
    ck_assert_int_eq(metrics_new(1, routes, &metrics), 0);
    memset(&ctx, 0, sizeof ctx);
    ctx.cache = cache;
    ctx.ring = ring;
    ctx.metrics = metrics;
    ctx.max_body_bytes = 1 << 20;
    ctx.max_import_bytes = 1 << 26;
    ctx.openapi_yaml = "openapi: 3.1.0\n";
    ctx.openapi_len = 15;
    ctx.version = "0.1.0";
    ctx.start_time_ms = clock_now_ms();
    atomic_store(&ctx.ready, true);
}

static void teardown(void)
{
    cache_close(cache);
    metrics_free(metrics);
    crypto_keyring_free(ring);
    testutil_rmrf(dir);
}

/* ---- fake requests ---- */

struct req {
    struct api_request r;
    const char *names[8];
    const char *values[8];
    int n;
};

static const char *fake_query(const struct api_request *r, const char *name)
{
    const struct req *q = (const struct req *)r;
    for (int i = 0; i < q->n; i++)
        if (strcmp(q->names[i], name) == 0)
            return q->values[i];
    return NULL;
}

static void req_init(struct req *q, enum api_method m, const char *key,
                     const char *body)
{
    memset(q, 0, sizeof *q);
    q->r.method = m;
    q->r.key = key;
    q->r.body = body;
    q->r.body_len = body ? strlen(body) : 0;
    q->r.content_type = "application/json";
    q->r.query = fake_query;
    q->r.path = "/test";
}

static void req_q(struct req *q, const char *name, const char *value)
{
    q->names[q->n] = name;
    q->values[q->n] = value;
    q->n++;
}

struct resp {
    struct api_response a;
    json_t *j;
};

static void resp_fini(struct resp *r)
{
    free(r->a.body);
    if (r->a.reader_free)
        r->a.reader_free(r->a.reader_cls);
    json_decref(r->j);
    memset(r, 0, sizeof *r);
}

/* Run h and parse the JSON answer (asserting it is JSON when a body). */
static unsigned run(api_handler_fn h, struct req *q, struct resp *out)
{
    json_error_t e;

    memset(out, 0, sizeof *out);
    h(&ctx, &q->r, &out->a);
    ck_assert_uint_ne(out->a.status, 0);
    if (out->a.body && out->a.content_type &&
        strstr(out->a.content_type, "json")) {
        out->j = json_loadb(out->a.body, out->a.body_len, 0, &e);
        ck_assert_msg(out->j != NULL, "not JSON (%s): %.*s", e.text,
                      (int)out->a.body_len, out->a.body);
    }
    return out->a.status;
}

static const char *jstr(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static json_int_t jint(json_t *o, const char *k)
{
    return json_integer_value(json_object_get(o, k));
}

static const char *header(const struct api_response *a, const char *name)
{
    for (size_t i = 0; i < a->n_headers; i++)
        if (strcmp(a->headers[i].name, name) == 0)
            return a->headers[i].value;
    return NULL;
}

/* POST one object; returns the status; key copied to key_out. */
static unsigned post(const char *body, char *key_out)
{
    struct req q;
    struct resp r;
    unsigned st;

    req_init(&q, API_POST, NULL, body);
    st = run(h_proxies_post, &q, &r);
    if (key_out && r.j && jstr(r.j, "key"))
        snprintf(key_out, ENTRY_KEY_LEN + 1, "%s", jstr(r.j, "key"));
    resp_fini(&r);
    return st;
}

/* ---- proxies ---- */

START_TEST(test_post_get_delete)
{
    char key[ENTRY_KEY_LEN + 1];
    struct req q;
    struct resp r;

    ck_assert_uint_eq(post("{\"proxy_url\":\"http://u:p@10.0.0.1:80\"}", key),
                      201);
    ck_assert_uint_eq(post("{\"proxy_url\":\"HTTP://10.0.0.1:80/\","
                           "\"source\":\"s\"}",
                           NULL),
                      200);
    req_init(&q, API_GET, key, NULL);
    ck_assert_uint_eq(run(h_proxy_get, &q, &r), 200);
    ck_assert_str_eq(jstr(r.j, "username"), "***");
    ck_assert_str_eq(jstr(r.j, "source"), "s");
    ck_assert_str_eq(jstr(r.j, "tier"), "l1");
    ck_assert_str_eq(header(&r.a, "X-Cache-Tier"), "l1");
    ck_assert_int_eq(jint(r.j, "access_count"), 1);
    resp_fini(&r);

    /* reveal: no token configured -> 403 */
    req_q(&q, "reveal", "true");
    ck_assert_uint_eq(run(h_proxy_get, &q, &r), 403);
    resp_fini(&r);
    ctx.token_configured = true;
    ck_assert_uint_eq(run(h_proxy_get, &q, &r), 401);
    ck_assert_str_eq(header(&r.a, "WWW-Authenticate"), "Bearer");
    resp_fini(&r);
    q.r.authenticated = true;
    ck_assert_uint_eq(run(h_proxy_get, &q, &r), 200);
    ck_assert_str_eq(jstr(r.j, "username"), "u");
    ck_assert_str_eq(jstr(r.j, "password"), "p");
    ck_assert_str_eq(header(&r.a, "Cache-Control"), "no-store");
    resp_fini(&r);

    req_init(&q, API_DELETE, key, NULL);
    ck_assert_uint_eq(run(h_proxy_delete, &q, &r), 204);
    ck_assert_ptr_null(r.a.body);
    resp_fini(&r);
    ck_assert_uint_eq(run(h_proxy_delete, &q, &r), 404);
    resp_fini(&r);
    req_init(&q, API_GET, key, NULL);
    ck_assert_uint_eq(run(h_proxy_get, &q, &r), 404);
    resp_fini(&r);
    req_init(&q, API_GET, "nothex", NULL);
    ck_assert_uint_eq(run(h_proxy_get, &q, &r), 404);
    resp_fini(&r);
    req_init(&q, API_GET, NULL, NULL);
    ck_assert_uint_eq(run(h_proxy_get, &q, &r), 404);
    resp_fini(&r);
}
END_TEST

START_TEST(test_batch_and_list)
{
    struct req q;
    struct resp r;
    char body[8192];
    size_t off;
    int seen = 0, pages = 0;
    char cursor[256] = "";

    off = (size_t)snprintf(body, sizeof body, "{\"proxies\":[");
    for (int i = 0; i < 30; i++)
        off += (size_t)snprintf(body + off, sizeof body - off,
                                "%s{\"proxy_url\":\"http://10.1.0.%d:80\","
                                "\"source\":\"%s\"}",
                                i ? "," : "", i, i % 2 ? "odd" : "even");
    snprintf(body + off, sizeof body - off, ",{\"proxy_url\":1}]}");
    req_init(&q, API_POST, NULL, body);
    ck_assert_uint_eq(run(h_proxies_post, &q, &r), 201);
    ck_assert_int_eq(jint(r.j, "created"), 30);
    ck_assert_int_eq(jint(r.j, "failed"), 1);
    ck_assert_ptr_null(json_object_get(r.j, "key"));
    ck_assert_int_eq(json_array_size(json_object_get(r.j, "items")), 31);
    resp_fini(&r);

    for (;;) {
        req_init(&q, API_GET, NULL, NULL);
        req_q(&q, "limit", "7");
        req_q(&q, "source", "odd");
        if (cursor[0])
            req_q(&q, "cursor", cursor);
        ck_assert_uint_eq(run(h_proxies_list, &q, &r), 200);
        seen += (int)jint(r.j, "count");
        pages++;
        if (json_is_null(json_object_get(r.j, "next_cursor"))) {
            resp_fini(&r);
            break;
        }
        snprintf(cursor, sizeof cursor, "%s", jstr(r.j, "next_cursor"));
        resp_fini(&r);
        ck_assert_int_lt(pages, 10);
    }
    ck_assert_int_eq(seen, 15);
    ck_assert_int_eq(pages, 3);

    req_init(&q, API_DELETE, NULL, NULL);
    ck_assert_uint_eq(run(h_proxies_clear, &q, &r), 200);
    ck_assert_int_eq(jint(r.j, "removed"), 30);
    resp_fini(&r);

    /* too many items */
    {
        size_t n = 10001, cap = n * 4 + 32, o = 0;
        char *big = malloc(cap);
        o += (size_t)snprintf(big, cap, "{\"proxies\":[");
        for (size_t i = 0; i < n; i++)
            o += (size_t)snprintf(big + o, cap - o, "%s1", i ? "," : "");
        snprintf(big + o, cap - o, "]}");
        req_init(&q, API_POST, NULL, big);
        ck_assert_uint_eq(run(h_proxies_post, &q, &r), 413);
        ck_assert_str_eq(jstr(r.j, "field"), "proxies");
        resp_fini(&r);
        free(big);
    }
}
END_TEST

/* ---- health ---- */

START_TEST(test_health)
{
    char key[ENTRY_KEY_LEN + 1];
    struct req q;
    struct resp r;

    ck_assert_uint_eq(post("{\"proxy_url\":\"http://10.2.0.1:80\"}", key),
                      201);
    req_init(&q, API_POST, key, "{\"status\":\"failure\"}");
    ck_assert_uint_eq(run(h_proxy_health, &q, &r), 200);
    ck_assert(json_is_false(json_object_get(r.j, "evicted")));
    ck_assert_int_eq(jint(r.j, "failure_count"), 1);
    resp_fini(&r);
    ck_assert_uint_eq(run(h_proxy_health, &q, &r), 200);
    resp_fini(&r);
    ck_assert_uint_eq(run(h_proxy_health, &q, &r), 200);
    ck_assert(json_is_true(json_object_get(r.j, "evicted")));
    ck_assert_int_eq(jint(r.j, "failure_count"), 3);
    ck_assert_int_eq(json_object_size(r.j), 3);
    resp_fini(&r);
    ck_assert_uint_eq(run(h_proxy_health, &q, &r), 404);
    resp_fini(&r);

    /* key ending in '0' and 'a' exercise the peek's "just below" key */
    ck_assert_uint_eq(post("{\"proxy_url\":\"http://10.2.0.2:80\","
                           "\"failure_count\":7}",
                           key),
                      201);
    req_init(&q, API_POST, key, "{\"status\":\"failure\"}");
    ck_assert_uint_eq(run(h_proxy_health, &q, &r), 200);
    ck_assert_int_eq(jint(r.j, "failure_count"), 8);
    resp_fini(&r);

    req_init(&q, API_POST, key, "{\"status\":\"nope\"}");
    ck_assert_uint_eq(run(h_proxy_health, &q, &r), 400);
    resp_fini(&r);

    ck_assert_uint_eq(post("{\"proxy_url\":\"http://10.2.0.3:80\"}", key),
                      201);
    req_init(&q, API_POST, key, "{\"status\":\"nope\"}");
    ck_assert_uint_eq(run(h_proxy_health, &q, &r), 400);
    ck_assert_str_eq(jstr(r.j, "field"), "status");
    resp_fini(&r);
    req_init(&q, API_POST, key, "{\"status\":\"success\",\"x\":1}");
    ck_assert_uint_eq(run(h_proxy_health, &q, &r), 400);
    ck_assert_str_eq(jstr(r.j, "field"), "x");
    resp_fini(&r);

    req_init(&q, API_POST, NULL,
             "{\"results\":[{\"proxy_url\":\"http://10.2.0.3:80\","
             "\"status\":\"success\"},{\"key\":\"zz\",\"status\":\"failure\"}"
             ",{\"key\":\"0000000000000000000000000000000000000000000000000"
             "000000000000000\",\"status\":\"failure\"}]}");
    ck_assert_uint_eq(run(h_proxies_health_bulk, &q, &r), 200);
    ck_assert_int_eq(jint(r.j, "updated"), 1);
    ck_assert_int_eq(jint(r.j, "failed"), 1);
    ck_assert_int_eq(jint(r.j, "not_found"), 1);
    resp_fini(&r);
    req_init(&q, API_POST, NULL, "[]");
    ck_assert_uint_eq(run(h_proxies_health_bulk, &q, &r), 200);
    ck_assert_int_eq(json_array_size(json_object_get(r.j, "results")), 0);
    resp_fini(&r);
    req_init(&q, API_POST, NULL, "{\"results\":5}");
    ck_assert_uint_eq(run(h_proxies_health_bulk, &q, &r), 400);
    resp_fini(&r);
}
END_TEST

/* ---- pick ---- */

START_TEST(test_pick)
{
    struct req q;
    struct resp r;

    req_init(&q, API_GET, NULL, NULL);
    ck_assert_uint_eq(run(h_pick, &q, &r), 503);
    ck_assert_str_eq(header(&r.a, "Retry-After"), "5");
    resp_fini(&r);
    ck_assert_uint_eq(post("{\"proxy_url\":\"http://10.3.0.1:80\","
                           "\"country\":\"US\",\"latency_ms\":5}",
                           NULL),
                      201);
    ck_assert_uint_eq(post("{\"proxy_url\":\"socks5://10.3.0.2:80\","
                           "\"health_status\":\"unhealthy\"}",
                           NULL),
                      201);
    req_q(&q, "count", "100");
    ck_assert_uint_eq(run(h_pick, &q, &r), 200);
    ck_assert_int_eq(jint(r.j, "count"), 1);
    resp_fini(&r);
    req_q(&q, "protocol", "socks5");
    ck_assert_uint_eq(run(h_pick, &q, &r), 200);
    ck_assert_int_eq(jint(r.j, "count"), 0);
    resp_fini(&r);
    req_init(&q, API_GET, NULL, NULL);
    req_q(&q, "anonymity", "elite");
    req_q(&q, "max_latency_ms", "10");
    ck_assert_uint_eq(run(h_pick, &q, &r), 200);
    resp_fini(&r);
    req_init(&q, API_GET, NULL, NULL);
    req_q(&q, "country", "u1");
    ck_assert_uint_eq(run(h_pick, &q, &r), 400);
    ck_assert_str_eq(jstr(r.j, "field"), "country");
    resp_fini(&r);
    cache_set_warming(cache, true);
    req_init(&q, API_GET, NULL, NULL);
    ck_assert_uint_eq(run(h_pick, &q, &r), 503);
    resp_fini(&r);
    ck_assert_uint_eq(run(h_readyz, &q, &r), 503);
    ck_assert_str_eq(jstr(r.j, "status"), "warming");
    resp_fini(&r);
    cache_set_warming(cache, false);
}
END_TEST

/* ---- warm, export, import ---- */

/* Feed body in chunks of step bytes through a stream handler. */
static unsigned stream(api_stream_begin_fn begin, struct req *q,
                       const char *body, size_t len, size_t step,
                       struct resp *out)
{
    struct api_stream st;
    json_error_t e;
    size_t off;

    memset(out, 0, sizeof *out);
    memset(&st, 0, sizeof st);
    if (begin(&ctx, &q->r, &st, &out->a) != 0)
        goto parse;
    for (off = 0; off < len; off += step) {
        size_t n = len - off < step ? len - off : step;
        if (st.feed(st.st, body + off, n, &out->a) != 0)
            goto done;
    }
    st.finish(st.st, &out->a);
done:
    st.free(st.st);
parse:
    if (out->a.body) {
        out->j = json_loadb(out->a.body, out->a.body_len, 0, &e);
        ck_assert_ptr_nonnull(out->j);
    }
    return out->a.status;
}

static char *export_all(size_t block, size_t *len)
{
    struct req q;
    struct resp r;
    size_t cap = 1 << 20, n = 0;
    char *all = malloc(cap);
    ssize_t got;

    req_init(&q, API_GET, NULL, NULL);
    ck_assert_uint_eq(run(h_export, &q, &r), 200);
    ck_assert_ptr_nonnull(r.a.reader);
    ck_assert_str_eq(r.a.content_type, "application/x-ndjson");
    for (;;) {
        ck_assert_uint_lt(n + block, cap);
        got = r.a.reader(r.a.reader_cls, n, all + n, block);
        if (got == API_READER_END)
            break;
        ck_assert_int_gt(got, 0);
        n += (size_t)got;
    }
    resp_fini(&r);
    *len = n;
    return all;
}

START_TEST(test_warm_export_import)
{
    static const char text[] =
        "# SOCKS5 Proxies (2)\n10.4.0.1:1080\nhttp://a:b@10.4.0.2:80\n"
        "bogus line\n10.4.0.1:1080\n10.4.0.3:1080";
    struct req q;
    struct resp r;
    char *exp1, *exp2;
    size_t len1, len2;
    int steps[] = {1, 3, 64, 100000};

    for (size_t s = 0; s < sizeof steps / sizeof steps[0]; s++) {
        req_init(&q, API_POST, NULL, NULL);
        q.r.content_type = "text/plain";
        req_q(&q, "source", "warm");
        ck_assert_uint_eq(stream(h_warm_begin, &q, text, sizeof text - 1,
                                 (size_t)steps[s], &r),
                          200);
        ck_assert_int_eq(jint(r.j, "imported") + jint(r.j, "updated"), 3);
        ck_assert_int_eq(jint(r.j, "skipped"), 1);
        ck_assert_int_eq(jint(r.j, "error_count"), 1);
        ck_assert_int_eq(
            jint(json_array_get(json_object_get(r.j, "errors"), 0), "line"),
            4);
        resp_fini(&r);
    }
    req_init(&q, API_POST, NULL, NULL);
    q.r.content_type = "text/plain";
    req_q(&q, "ttl_seconds", "-5");
    ck_assert_uint_eq(stream(h_warm_begin, &q, text, sizeof text - 1, 10, &r),
                      400);
    resp_fini(&r);
    req_init(&q, API_POST, NULL, NULL);
    q.r.content_type = "image/png";
    ck_assert_uint_eq(stream(h_warm_begin, &q, text, sizeof text - 1, 10, &r),
                      415);
    resp_fini(&r);

    exp1 = export_all(7, &len1);
    ck_assert_ptr_nonnull(memchr(exp1, '\n', len1));
    ck_assert_ptr_null(strstr(exp1, "\"a\""));

    req_init(&q, API_DELETE, NULL, NULL);
    ck_assert_uint_eq(run(h_proxies_clear, &q, &r), 200);
    ck_assert_int_eq(jint(r.j, "removed"), 3);
    resp_fini(&r);

    req_init(&q, API_POST, NULL, NULL);
    q.r.content_type = "application/x-ndjson";
    ck_assert_uint_eq(stream(h_import_begin, &q, exp1, len1, 5, &r), 200);
    ck_assert_int_eq(jint(r.j, "imported"), 3);
    ck_assert_int_eq(jint(r.j, "error_count"), 0);
    resp_fini(&r);
    exp2 = export_all(4096, &len2);
    ck_assert_uint_eq(len1, len2);
    ck_assert(memcmp(exp1, exp2, len1) == 0);

    /* same again: not newer -> skipped */
    ck_assert_uint_eq(stream(h_import_begin, &q, exp1, len1, 4096, &r), 200);
    ck_assert_int_eq(jint(r.j, "skipped"), 3);
    resp_fini(&r);

    /* a foreign key's tokens: line errors */
    {
        struct crypto_keyring *other;
        const struct crypto_keyring *mine = ctx.ring;
        ck_assert_int_eq(crypto_keyring_new_random(&other), 0);
        ctx.ring = other;
        ck_assert_uint_eq(stream(h_import_begin, &q, exp1, len1, 4096, &r),
                          200);
        ck_assert_int_eq(jint(r.j, "error_count"), 1);
        resp_fini(&r);
        ctx.ring = NULL;
        ck_assert_uint_eq(stream(h_import_begin, &q, exp1, len1, 4096, &r),
                          200);
        ck_assert_int_eq(jint(r.j, "error_count"), 1);
        resp_fini(&r);
        ctx.ring = mine;
        crypto_keyring_free(other);
    }
    free(exp1);
    free(exp2);
}
END_TEST

/* ---- ops ---- */

START_TEST(test_ops)
{
    struct req q;
    struct resp r;

    req_init(&q, API_GET, NULL, NULL);
    ck_assert_uint_eq(run(h_stats, &q, &r), 200);
    ck_assert_str_eq(jstr(r.j, "version"), "0.1.0");
    ck_assert_ptr_nonnull(json_object_get(json_object_get(r.j, "tiers"),
                                          "l3"));
    resp_fini(&r);
    ck_assert_uint_eq(run(h_healthz, &q, &r), 200);
    ck_assert_str_eq(jstr(r.j, "status"), "ok");
    resp_fini(&r);
    ck_assert_uint_eq(run(h_readyz, &q, &r), 200);
    ck_assert_str_eq(jstr(r.j, "status"), "ready");
    resp_fini(&r);
    atomic_store(&ctx.ready, false);
    ck_assert_uint_eq(run(h_readyz, &q, &r), 503);
    ck_assert_str_eq(jstr(r.j, "status"), "starting");
    resp_fini(&r);
    ck_assert_uint_eq(run(h_metrics, &q, &r), 200);
    ck_assert(strstr(r.a.body, "proxycache_entries{tier=\"l1\"} 0"));
    resp_fini(&r);
    ck_assert_uint_eq(run(h_openapi, &q, &r), 200);
    ck_assert_str_eq(r.a.content_type, "application/yaml");
    resp_fini(&r);
}
END_TEST

/* ---- robustness ---- */

static const char *const seeds[] = {
    "{\"proxy_url\":\"http://10.9.0.1:80\",\"username\":\"u\","
    "\"password\":\"p\",\"source\":\"s\",\"fetch_time\":"
    "\"2026-01-01T00:00:00Z\",\"ttl_seconds\":60,\"health_status\":"
    "\"healthy\",\"failure_count\":1,\"country\":\"DE\",\"anonymity\":"
    "\"elite\",\"latency_ms\":3.5}",
    "{\"proxies\":[{\"proxy_url\":\"socks5://[::1]:1080\"},{\"proxy_url\":"
    "\"https://h.example:443\"}]}",
    "[{\"key\":\"0000000000000000000000000000000000000000000000000000000000"
    "000000\",\"status\":\"failure\"},{\"proxy_url\":\"http://10.9.0.1:80\","
    "\"status\":\"success\"}]",
    "{\"status\":\"failure\"}",
};

static uint64_t rng_state = 88172645463325252ull;

static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

START_TEST(test_mutated_bodies)
{
    static const char alphabet[] = "{}[]\",:0123456789.-eE \\u/trufalsn@x";
    api_handler_fn hs[] = {h_proxies_post, h_proxy_health,
                           h_proxies_health_bulk};
    char key[ENTRY_KEY_LEN + 1];
    char buf[1024];
    struct req q;
    struct resp r;

    ck_assert_uint_eq(post("{\"proxy_url\":\"http://10.9.0.1:80\"}", key),
                      201);
    for (int it = 0; it < 6000; it++) {
        const char *seed = seeds[rnd() % (sizeof seeds / sizeof seeds[0])];
        size_t len = strlen(seed);
        int muts = 1 + (int)(rnd() % 4);
        unsigned st;

        memcpy(buf, seed, len);
        for (int m = 0; m < muts; m++) {
            size_t pos = len ? rnd() % len : 0;
            switch (rnd() % 4) {
            case 0: /* replace */
                buf[pos] = alphabet[rnd() % (sizeof alphabet - 1)];
                break;
            case 1: /* delete */
                if (len) {
                    memmove(buf + pos, buf + pos + 1, len - pos - 1);
                    len--;
                }
                break;
            case 2: /* insert */
                if (len + 1 < sizeof buf) {
                    memmove(buf + pos + 1, buf + pos, len - pos);
                    buf[pos] = alphabet[rnd() % (sizeof alphabet - 1)];
                    len++;
                }
                break;
            default: /* random byte */
                buf[pos] = (char)(rnd() & 0xff);
                break;
            }
        }
        buf[len] = '\0';
        req_init(&q, API_POST, key, NULL);
        q.r.body = buf;
        q.r.body_len = len;
        st = run(hs[rnd() % 3], &q, &r);
        ck_assert_msg(st == 200 || st == 201 || st == 400 || st == 404 ||
                          st == 413,
                      "status %u for %s", st, buf);
        ck_assert_ptr_nonnull(r.j);
        resp_fini(&r);
    }
}
END_TEST

static Suite *suite(void)
{
    Suite *s = suite_create("api_handlers");
    TCase *tc;

#define ADD(name, fn)                                                          \
    do {                                                                       \
        tc = tcase_create(name);                                               \
        tcase_add_checked_fixture(tc, setup, teardown);                        \
        tcase_set_timeout(tc, 120);                                            \
        tcase_add_test(tc, fn);                                                \
        suite_add_tcase(s, tc);                                                \
    } while (0)
    ADD("proxies", test_post_get_delete);
    ADD("batch_list", test_batch_and_list);
    ADD("health", test_health);
    ADD("pick", test_pick);
    ADD("warm_export_import", test_warm_export_import);
    ADD("ops", test_ops);
    ADD("mutated", test_mutated_bodies);
    return s;
}

int main(void)
{
    return testutil_run(suite());
}
