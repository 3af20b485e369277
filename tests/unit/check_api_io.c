/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of api/json_io, api/problem and api/metrics. No cache: the four
 * cache functions they call are stood in for below (ctx->cache is a dummy
 * pointer), so libproxycache.a's cache.o is never pulled in.
 */
#include "config.h"

#include <check.h>
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"
#include "api/json_io.h"
#include "api/metrics.h"
#include "api/problem.h"
#include "common/clock.h"
#include "storage/cache.h"
#include "storage/crypto.h"
#include "storage/entry.h"
#include "tests/unit/testutil.h"

/* ---- cache stand-ins: json_io and metrics only need these four; the
 * stats give metrics a degraded L3 to render. ---- */
int64_t cache_ttl_for_source(const struct cache *c, const char *source)
{
    (void)c;
    return strcmp(source, "fast") == 0 ? 60 : 3600;
}

void cache_stats_snapshot(struct cache *c, struct cache_stats *out)
{
    (void)c;
    memset(out, 0, sizeof *out);
    for (int t = 0; t < CACHE_NTIERS; t++)
        out->tier[t].present = true;
    out->tier[CACHE_L1].hits = 5;
    out->tier[CACHE_L3].degraded = true;
}

const char *cache_tier_name(enum cache_tier t)
{
    static const char *const n[] = {"l1", "l2", "l3"};
    return (unsigned)t < 3 ? n[t] : "?";
}

const char *cache_reason_name(enum cache_evict_reason r)
{
    static const char *const n[] = {"lru", "ttl", "health", "corruption"};
    return (unsigned)r < 4 ? n[r] : "?";
}

static struct crypto_keyring *ring;
static struct api_ctx ctx;
static char dummy_cache;

static void setup(void)
{
    ck_assert_int_eq(crypto_keyring_new_random(&ring), 0);
    memset(&ctx, 0, sizeof ctx);
    ctx.cache = (struct cache *)(void *)&dummy_cache;
    ctx.ring = ring;
    ctx.version = "0.1.0";
    clock_set_fake(INT64_C(1795600000000));
}

static void teardown(void)
{
    crypto_keyring_free(ring);
    ring = NULL;
    clock_clear_fake();
}

/* ---- fake request with a query table ---- */
struct fake_req {
    struct api_request r;
    const char *names[8];
    const char *values[8];
};

static const char *fake_query(const struct api_request *r, const char *name)
{
    const struct fake_req *f = (const struct fake_req *)r;
    for (int i = 0; i < 8 && f->names[i]; i++)
        if (strcmp(f->names[i], name) == 0)
            return f->values[i];
    return NULL;
}

static void resp_fini(struct api_response *resp)
{
    free(resp->body);
    memset(resp, 0, sizeof *resp);
}

static json_t *resp_json(const struct api_response *resp)
{
    json_error_t e;
    json_t *j = json_loadb(resp->body, resp->body_len, 0, &e);
    ck_assert_msg(j != NULL, "bad JSON: %s (%.*s)", e.text,
                  (int)resp->body_len, resp->body);
    return j;
}

/* ---- escaper ---- */

START_TEST(test_jstr_escapes)
{
    static const char in[] = "a\"b\\c\n\x01\x1f\t\xc3\xa9\xff\xe2\x82";
    struct jbuf b;
    json_error_t e;
    json_t *j;
    char *s;

    jbuf_init(&b, 1 << 20, false);
    jbuf_put_jstr(&b, in, sizeof in - 1);
    s = jbuf_steal(&b, NULL);
    ck_assert_ptr_nonnull(s);
    j = json_loads(s, JSON_DECODE_ANY, &e);
    ck_assert_msg(j != NULL, "%s: %s", s, e.text);
    ck_assert_str_eq(json_string_value(j),
                     "a\"b\\c\n\x01\x1f\t\xc3\xa9\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    json_decref(j);
    free(s);
}
END_TEST

START_TEST(test_jbuf_cap)
{
    struct jbuf b;

    jbuf_init(&b, 16, true);
    jbuf_puts(&b, "0123456789");
    ck_assert_int_eq(jbuf_failed(&b), 0);
    jbuf_puts(&b, "0123456789");
    ck_assert_int_eq(jbuf_failed(&b), -E2BIG);
    ck_assert_ptr_null(jbuf_steal(&b, NULL));
    jbuf_init(&b, 1 << 20, true);
    for (int i = 0; i < 1000; i++)
        jbuf_put_i64(&b, -i);
    ck_assert_int_eq(jbuf_failed(&b), 0);
    jbuf_fini(&b);
}
END_TEST

/* ---- input ---- */

static int parse(const char *text, struct entry **e, unsigned *fields,
                 struct problem *p)
{
    json_t *j = json_loads(text, JSON_REJECT_DUPLICATES, NULL);
    int err;
    ck_assert_ptr_nonnull(j);
    err = json_io_entry_from_json(&ctx, j, e, fields, p);
    json_decref(j);
    return err;
}

START_TEST(test_input_minimal)
{
    struct entry *e = NULL;
    struct problem p;
    unsigned f = 0;

    ck_assert_int_eq(parse("{\"proxy_url\":\"HTTP://Example.COM:8080/\"}", &e,
                           &f, &p),
                     0);
    ck_assert_str_eq(e->proxy_url, "http://example.com:8080");
    ck_assert_str_eq(e->source, "unknown");
    ck_assert_int_eq(e->ttl_seconds, 3600);
    ck_assert_int_eq(e->fetch_time, clock_now_ms());
    ck_assert_int_eq(e->expires_at, clock_now_ms() + 3600000);
    ck_assert_ptr_null(e->username_tok);
    ck_assert_uint_eq(f, CACHE_F_FETCH_TIME);
    entry_unref(e);

    ck_assert_int_eq(parse("{\"proxy_url\":\"socks5://1.2.3.4:1080\","
                           "\"source\":\"fast\",\"country\":\"de\","
                           "\"anonymity\":\"elite\",\"latency_ms\":12.6,"
                           "\"health_status\":\"healthy\","
                           "\"fetch_time\":\"2026-11-25T09:00:00Z\"}",
                           &e, &f, &p),
                     0);
    ck_assert_int_eq(e->ttl_seconds, 60);
    ck_assert_str_eq(e->country, "DE");
    ck_assert_int_eq(e->latency_ms, 13);
    ck_assert_int_eq(e->anonymity, ENTRY_ANON_ELITE);
    ck_assert_uint_eq(f, CACHE_F_FETCH_TIME | CACHE_F_TTL | CACHE_F_SOURCE |
                             CACHE_F_COUNTRY | CACHE_F_ANONYMITY |
                             CACHE_F_LATENCY | CACHE_F_HEALTH);
    entry_unref(e);
}
END_TEST

START_TEST(test_input_credentials)
{
    struct entry *e = NULL;
    struct problem p;
    unsigned f = 0;
    char *plain;
    size_t len;
    json_t *j;

    ck_assert_int_eq(
        parse("{\"proxy_url\":\"http://bob:s%40cret@h.example:3128\"}", &e,
              &f, &p),
        0);
    ck_assert_str_eq(e->proxy_url, "http://h.example:3128");
    ck_assert_ptr_nonnull(e->username_tok);
    ck_assert_ptr_nonnull(e->password_tok);
    ck_assert(f & CACHE_F_CREDENTIALS);
    ck_assert_int_eq(crypto_fernet_open(ring, e->password_tok, 0,
                                        clock_now_ms() / 1000, &plain, &len),
                     0);
    ck_assert_str_eq(plain, "s@cret");
    crypto_free_secret(plain);
    entry_unref(e);

    /* explicit members win; the request JSON is wiped */
    j = json_loads("{\"proxy_url\":\"http://a:b@h:1\",\"username\":\"u2\","
                   "\"password\":\"p2\"}",
                   0, NULL);
    ck_assert_int_eq(json_io_entry_from_json(&ctx, j, &e, &f, &p), 0);
    ck_assert_int_eq(crypto_fernet_open(ring, e->username_tok, 0,
                                        clock_now_ms() / 1000, &plain, &len),
                     0);
    ck_assert_str_eq(plain, "u2");
    crypto_free_secret(plain);
    ck_assert(strstr(json_string_value(json_object_get(j, "password")),
                     "p2") == NULL);
    ck_assert(strstr(json_string_value(json_object_get(j, "proxy_url")),
                     "a:b") == NULL);
    json_decref(j);
    entry_unref(e);

    /* the mask alone keeps what is stored */
    ck_assert_int_eq(parse("{\"proxy_url\":\"http://h:1\",\"username\":\"***\","
                           "\"password\":\"***\"}",
                           &e, &f, &p),
                     0);
    ck_assert(!(f & CACHE_F_CREDENTIALS));
    entry_unref(e);
    ck_assert_int_eq(parse("{\"proxy_url\":\"http://h:1\",\"username\":\"***\","
                           "\"password\":\"new\"}",
                           &e, &f, &p),
                     -EINVAL);
    ck_assert_str_eq(p.field, "username");

    /* no key ring: dropped, warned once */
    ctx.ring = NULL;
    ck_assert_int_eq(parse("{\"proxy_url\":\"http://a:b@h:1\"}", &e, &f, &p),
                     0);
    ck_assert_ptr_null(e->username_tok);
    ck_assert(!(f & CACHE_F_CREDENTIALS));
    ck_assert(atomic_load(&ctx.warned_no_key));
    entry_unref(e);
}
END_TEST

struct bad_case {
    const char *json;
    const char *field;
};

static const struct bad_case bad_cases[] = {
    {"{}", "proxy_url"},
    {"{\"proxy_url\":1}", "proxy_url"},
    {"{\"proxy_url\":\"ftp://h:1\"}", "proxy_url"},
    {"{\"proxy_url\":\"http://h:0\"}", "proxy_url"},
    {"{\"proxy_url\":\"http://h:65536\"}", "proxy_url"},
    {"{\"proxy_url\":\"h:80\"}", "proxy_url"},
    {"{\"proxy_url\":\"http://h:1\",\"bogus\":1}", "bogus"},
    {"{\"proxy_url\":\"http://h:1\",\"ttl_seconds\":-1}", "ttl_seconds"},
    {"{\"proxy_url\":\"http://h:1\",\"ttl_seconds\":1.5}", "ttl_seconds"},
    {"{\"proxy_url\":\"http://h:1\",\"ttl_seconds\":\"5\"}", "ttl_seconds"},
    {"{\"proxy_url\":\"http://h:1\",\"ttl_seconds\":99999999999999}",
     "ttl_seconds"},
    {"{\"proxy_url\":\"http://h:1\",\"source\":\"\"}", "source"},
    {"{\"proxy_url\":\"http://h:1\",\"source\":\"a\\nb\"}", "source"},
    {"{\"proxy_url\":\"http://h:1\",\"source\":null}", "source"},
    {"{\"proxy_url\":\"http://h:1\",\"health_status\":\"dead\"}",
     "health_status"},
    {"{\"proxy_url\":\"http://h:1\",\"failure_count\":-1}", "failure_count"},
    {"{\"proxy_url\":\"http://h:1\",\"country\":\"USA\"}", "country"},
    {"{\"proxy_url\":\"http://h:1\",\"anonymity\":\"high\"}", "anonymity"},
    {"{\"proxy_url\":\"http://h:1\",\"latency_ms\":-3}", "latency_ms"},
    {"{\"proxy_url\":\"http://h:1\",\"latency_ms\":\"3\"}", "latency_ms"},
    {"{\"proxy_url\":\"http://h:1\",\"fetch_time\":\"yesterday\"}",
     "fetch_time"},
    {"{\"proxy_url\":\"http://h:1\",\"fetch_time\":\"2099-01-01T00:00:00Z\"}",
     "fetch_time"},
    {"{\"proxy_url\":\"http://h:1\",\"key\":\"abc\"}", "key"},
    {"{\"proxy_url\":\"http://h:1\",\"protocol\":\"socks5\"}", "protocol"},
    {"{\"proxy_url\":\"http://h:1\",\"username\":5}", "username"},
    {"[1]", "body"},
};

START_TEST(test_input_bad)
{
    const struct bad_case *c = &bad_cases[_i];
    struct entry *e = NULL;
    struct problem p;
    unsigned f = 0;
    json_t *j = json_loads(c->json, JSON_DECODE_ANY, NULL);

    ck_assert_ptr_nonnull(j);
    ck_assert_int_eq(json_io_entry_from_json(&ctx, j, &e, &f, &p), -EINVAL);
    ck_assert_ptr_null(e);
    ck_assert_uint_eq(p.status, 400);
    ck_assert_ptr_nonnull(p.field);
    ck_assert_msg(strcmp(p.field, c->field) == 0, "%s: field %s (%s)",
                  c->json, p.field, p.reason);
    ck_assert(p.reason[0]);
    json_decref(j);
}
END_TEST

START_TEST(test_input_url_reason_strips_userinfo)
{
    struct entry *e = NULL;
    struct problem p;
    unsigned f;

    ck_assert_int_eq(parse("{\"proxy_url\":\"http://user:hunter2@h:99999\"}",
                           &e, &f, &p),
                     -EINVAL);
    ck_assert(strstr(p.reason, "hunter2") == NULL);
    ck_assert(strstr(p.reason, "user") == NULL);
    /* Not quoted at all, only the parser's reason (the port). */
    ck_assert(strstr(p.reason, "h:99999") == NULL);
    ck_assert(strstr(p.reason, "port") != NULL);
}
END_TEST

/* ---- output ---- */

START_TEST(test_output_entry)
{
    struct entry *e = NULL;
    struct problem p;
    unsigned f;
    struct jbuf b;
    json_t *j;
    char *s;

    ck_assert_int_eq(parse("{\"proxy_url\":\"http://u:p@h:1\","
                           "\"source\":\"x\\\"y\"}",
                           &e, &f, &p),
                     0);
    jbuf_init(&b, 1 << 20, false);
    ck_assert_int_eq(json_io_entry_append(&b, &ctx, e, 0, "l2"), 0);
    s = jbuf_steal(&b, NULL);
    j = json_loads(s, 0, NULL);
    ck_assert_msg(j != NULL, "%s", s);
    ck_assert_str_eq(json_string_value(json_object_get(j, "username")), "***");
    ck_assert_str_eq(json_string_value(json_object_get(j, "password")), "***");
    ck_assert_str_eq(json_string_value(json_object_get(j, "source")), "x\"y");
    ck_assert_str_eq(json_string_value(json_object_get(j, "tier")), "l2");
    ck_assert_str_eq(json_string_value(json_object_get(j, "protocol")), "http");
    ck_assert_str_eq(json_string_value(json_object_get(j, "key")), e->key);
    ck_assert(json_is_null(json_object_get(j, "country")));
    ck_assert(json_is_null(json_object_get(j, "anonymity")));
    ck_assert(json_is_null(json_object_get(j, "latency_ms")));
    ck_assert(json_is_null(json_object_get(j, "last_accessed")));
    ck_assert_int_eq(json_integer_value(json_object_get(j, "access_count")), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "ttl_seconds")),
                     3600);
    ck_assert_str_eq(json_string_value(json_object_get(j, "expires_at")),
                     "2026-11-25T10:46:40.000Z");
    ck_assert_int_eq(json_object_size(j), 17);
    json_decref(j);
    free(s);

    jbuf_init(&b, 1 << 20, true);
    ck_assert_int_eq(json_io_entry_append(&b, &ctx, e,
                                          JSON_IO_REVEAL |
                                              JSON_IO_EVICTED_FALSE,
                                          NULL),
                     0);
    s = jbuf_steal(&b, NULL);
    j = json_loads(s, 0, NULL);
    ck_assert_str_eq(json_string_value(json_object_get(j, "username")), "u");
    ck_assert_str_eq(json_string_value(json_object_get(j, "password")), "p");
    ck_assert(json_is_false(json_object_get(j, "evicted")));
    ck_assert_ptr_null(json_object_get(j, "tier"));
    json_decref(j);
    free(s);

    /* a ring that cannot open the tokens */
    ctx.ring = NULL;
    jbuf_init(&b, 1 << 20, true);
    ck_assert_int_eq(json_io_entry_append(&b, &ctx, e, JSON_IO_REVEAL, NULL),
                     -EBADMSG);
    jbuf_fini(&b);
    entry_unref(e);
}
END_TEST

/* ---- problem ---- */

START_TEST(test_problem_doc)
{
    struct api_response resp;
    json_t *j;

    memset(&resp, 0, sizeof resp);
    problem_respond(&resp, 400, "limit", "must be between %d and %d", 1, 1000);
    ck_assert_uint_eq(resp.status, 400);
    ck_assert_str_eq(resp.content_type, "application/problem+json");
    j = resp_json(&resp);
    ck_assert_str_eq(json_string_value(json_object_get(j, "type")),
                     "urn:proxycache:problem:bad-request");
    ck_assert_str_eq(json_string_value(json_object_get(j, "title")),
                     "Bad Request");
    ck_assert_int_eq(json_integer_value(json_object_get(j, "status")), 400);
    ck_assert_str_eq(json_string_value(json_object_get(j, "field")), "limit");
    ck_assert_str_eq(json_string_value(json_object_get(j, "reason")),
                     "must be between 1 and 1000");
    json_decref(j);
    resp_fini(&resp);

    problem_respond(&resp, 404, NULL, "gone \xff bytes");
    j = resp_json(&resp);
    ck_assert_ptr_null(json_object_get(j, "field"));
    ck_assert_str_eq(json_string_value(json_object_get(j, "title")),
                     "Not Found");
    json_decref(j);
    resp_fini(&resp);

    problem_respond_errno(&resp, -EIO, "write");
    ck_assert_uint_eq(resp.status, 503);
    ck_assert_uint_eq(resp.n_headers, 1);
    ck_assert_str_eq(resp.headers[0].name, "Retry-After");
    resp_fini(&resp);
    problem_respond_errno(&resp, -ENOENT, NULL);
    ck_assert_uint_eq(resp.status, 404);
    resp_fini(&resp);
    problem_respond_errno(&resp, -E2BIG, NULL);
    ck_assert_uint_eq(resp.status, 413);
    resp_fini(&resp);
    problem_respond_errno(&resp, -12345, NULL);
    ck_assert_uint_eq(resp.status, 500);
    resp_fini(&resp);

    ck_assert_str_eq(problem_title(415), "Unsupported Media Type");
    ck_assert_str_eq(problem_title(599), "Server Error");
}
END_TEST

START_TEST(test_strip_userinfo)
{
    char out[128];

    problem_strip_userinfo("http://u:p@h:1", out, sizeof out);
    ck_assert_str_eq(out, "http://h:1");
    problem_strip_userinfo("socks5://a@b:c@h:1", out, sizeof out);
    ck_assert_str_eq(out, "socks5://h:1");
    problem_strip_userinfo("u:p@h:1", out, sizeof out);
    ck_assert_str_eq(out, "h:1");
    problem_strip_userinfo("http://h:1", out, sizeof out);
    ck_assert_str_eq(out, "http://h:1");
    problem_strip_userinfo("http://u:p/x@h:1", out, sizeof out);
    ck_assert_str_eq(out, "http://h:1");
    problem_strip_userinfo("http://u:p@h:1", out, 5);
    ck_assert_str_eq(out, "http");
    problem_strip_userinfo(NULL, out, sizeof out);
    ck_assert_str_eq(out, "");
    /* '@' before any scheme, and "://" inside a password (review finding). */
    problem_strip_userinfo("user:secret@x://1.2.3.4:80", out, sizeof out);
    ck_assert_ptr_null(strstr(out, "secret"));
    problem_strip_userinfo("user:pa://ss@1.2.3.4:80", out, sizeof out);
    ck_assert_ptr_null(strstr(out, "pa:"));
    ck_assert_str_eq(out, "1.2.3.4:80");
}
END_TEST

/* ---- request helpers ---- */

START_TEST(test_query_int)
{
    struct fake_req f;
    struct api_response resp;
    int64_t v;
    static const char *const bad[] = {"", "0", "1001", "-1", "1e3", " 5",
                                      "5 ", "+5", "99999999999999999999",
                                      "0x10", "1.0"};

    memset(&f, 0, sizeof f);
    memset(&resp, 0, sizeof resp);
    f.r.query = fake_query;
    ck_assert_int_eq(api_query_int(&f.r, "limit", 1, 1000, 100, &v, &resp), 0);
    ck_assert_int_eq(v, 100);
    f.names[0] = "limit";
    f.values[0] = "1000";
    ck_assert_int_eq(api_query_int(&f.r, "limit", 1, 1000, 100, &v, &resp), 0);
    ck_assert_int_eq(v, 1000);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        json_t *j;
        f.values[0] = bad[i];
        ck_assert_int_eq(api_query_int(&f.r, "limit", 1, 1000, 100, &v, &resp),
                         -EINVAL);
        ck_assert_uint_eq(resp.status, 400);
        j = resp_json(&resp);
        ck_assert_str_eq(json_string_value(json_object_get(j, "field")),
                         "limit");
        json_decref(j);
        resp_fini(&resp);
    }
}
END_TEST

START_TEST(test_parse_body)
{
    struct api_request r;
    struct api_response resp;
    static const char *const bad[] = {
        "", "{", "{\"a\":1,\"a\":2}", "[1,]", "{\"a\":\"\\u0000\"}",
        "\"x\" 5", "\xff", "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
        "1e999999", "123456789012345678901234567890"};
    json_t *j;

    memset(&r, 0, sizeof r);
    memset(&resp, 0, sizeof resp);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        r.body = bad[i];
        r.body_len = strlen(bad[i]);
        ck_assert_ptr_null(api_parse_body(&r, &resp));
        ck_assert_uint_eq(resp.status, 400);
        j = resp_json(&resp);
        ck_assert_str_eq(json_string_value(json_object_get(j, "field")),
                         "body");
        json_decref(j);
        resp_fini(&resp);
    }
    r.body = NULL;
    r.body_len = 0;
    ck_assert_ptr_null(api_parse_body(&r, &resp));
    ck_assert_uint_eq(resp.status, 400);
    resp_fini(&resp);

    /* deep nesting is bounded by jansson, not the stack */
    {
        size_t n = 100000;
        char *deep = malloc(2 * n);
        memset(deep, '[', n);
        memset(deep + n, ']', n);
        r.body = deep;
        r.body_len = 2 * n;
        ck_assert_ptr_null(api_parse_body(&r, &resp));
        ck_assert_uint_eq(resp.status, 400);
        resp_fini(&resp);
        free(deep);
    }
    r.content_type = "text/plain";
    ck_assert_int_eq(api_require_json(&r, &resp), -EINVAL);
    ck_assert_uint_eq(resp.status, 415);
    resp_fini(&resp);
    r.content_type = "application/json";
    ck_assert_int_eq(api_require_json(&r, &resp), 0);
}
END_TEST

START_TEST(test_cursor)
{
    char key[ENTRY_KEY_LEN + 1], out[128], back[ENTRY_KEY_LEN + 1];

    entry_key_from_normalised("http://h:1", key);
    api_cursor_encode(key, out, sizeof out);
    ck_assert_uint_eq(strlen(out), 86);
    ck_assert_int_eq(api_cursor_decode(out, back), 0);
    ck_assert_str_eq(back, key);
    ck_assert_int_eq(api_cursor_decode("", back), -EINVAL);
    ck_assert_int_eq(api_cursor_decode("abc", back), -EINVAL);
    ck_assert_int_eq(api_cursor_decode(key, back), -EINVAL);
    out[10] = '*';
    ck_assert_int_eq(api_cursor_decode(out, back), -EINVAL);
    /* base64url of 64 bytes that are not hex */
    memset(back, 'G', ENTRY_KEY_LEN);
    back[ENTRY_KEY_LEN] = '\0';
    api_cursor_encode(back, out, sizeof out);
    ck_assert_int_eq(api_cursor_decode(out, key), -EINVAL);
}
END_TEST

/* ---- metrics ---- */

START_TEST(test_metrics_render)
{
    static const char *const routes[] = {"/v1/proxies", "/v1/proxies/{key}"};
    struct metrics *m;
    char *text;
    size_t len;
    FILE *f;
    int rc;

    ck_assert_int_eq(metrics_new(2, routes, &m), 0);
    metrics_observe(m, 0, API_POST, 201, 50000);
    metrics_observe(m, 0, API_POST, 201, 300000);
    metrics_observe(m, 1, API_GET, 200, 7000000000ull);
    metrics_observe(m, 1, API_GET, 418, 1);
    metrics_observe(m, 2, API_OTHER, 404, 1);
    metrics_observe(m, 99, (enum api_method)77, 9999, 1);
    ck_assert_int_eq(metrics_render(m, &ctx, &text, &len), 0);
    ck_assert_uint_eq(strlen(text), len);
    ck_assert(strstr(text, "proxycache_http_requests_total{route=\"/v1/"
                           "proxies\",method=\"POST\",code=\"201\"} 2\n"));
    ck_assert(strstr(text, "code=\"4xx\"} 1"));
    ck_assert(strstr(text, "code=\"other\"} 1"));
    ck_assert(strstr(text, "proxycache_http_request_duration_seconds_bucket{"
                           "route=\"/v1/proxies\",le=\"0.0001\"} 1\n"));
    ck_assert(strstr(text, "proxycache_http_request_duration_seconds_bucket{"
                           "route=\"/v1/proxies\",le=\"0.0005\"} 2\n"));
    ck_assert(strstr(text, "proxycache_http_request_duration_seconds_sum{"
                           "route=\"/v1/proxies\"} 0.000350000\n"));
    ck_assert(strstr(text, "proxycache_http_request_duration_seconds_bucket{"
                           "route=\"/v1/proxies/{key}\",le=\"5\"} 1\n"));
    ck_assert(strstr(text, "le=\"+Inf\"} 2\n"));
    ck_assert(strstr(text, "proxycache_tier_degraded{tier=\"l3\"} 1\n"));
    ck_assert(strstr(text, "proxycache_build_info{version=\"0.1.0\"} 1\n"));
    ck_assert(strstr(text, "process_open_fds "));
    f = fopen("/tmp/apitest/metrics.txt", "w");
    ck_assert_ptr_nonnull(f);
    fwrite(text, 1, len, f);
    fclose(f);
    rc = system("promtool check metrics < /tmp/apitest/metrics.txt");
    ck_assert_int_eq(rc, 0);
    free(text);
    metrics_free(m);
    metrics_free(NULL);
}
END_TEST

static Suite *api_io_suite(void)
{
    Suite *s = suite_create("api_io");
    TCase *tc;

#define ADD(name, fn)                                                          \
    do {                                                                       \
        tc = tcase_create(name);                                               \
        tcase_add_checked_fixture(tc, setup, teardown);                        \
        tcase_add_test(tc, fn);                                                \
        suite_add_tcase(s, tc);                                                \
    } while (0)
    ADD("jstr", test_jstr_escapes);
    ADD("jbuf", test_jbuf_cap);
    ADD("input_minimal", test_input_minimal);
    ADD("input_credentials", test_input_credentials);
    ADD("input_url_reason", test_input_url_reason_strips_userinfo);
    ADD("output_entry", test_output_entry);
    ADD("problem", test_problem_doc);
    ADD("strip_userinfo", test_strip_userinfo);
    ADD("query_int", test_query_int);
    ADD("parse_body", test_parse_body);
    ADD("cursor", test_cursor);
    ADD("metrics", test_metrics_render);
    tc = tcase_create("input_bad");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_loop_test(tc, test_input_bad, 0,
                        (int)(sizeof bad_cases / sizeof bad_cases[0]));
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return testutil_run(api_io_suite());
}
