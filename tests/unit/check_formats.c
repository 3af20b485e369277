/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of storage/formats: the JSONL entry line (round trip of every
 * field, strict rejection of corrupt lines, a bounded fuzz loop) and the
 * push-driven warm parsers (text, JSON, JSONL, CSV, AUTO), including the
 * property that feeding the same bytes in any chunking gives the same
 * records and errors, and the real proxy lists under shared/data.
 *
 * Every parse is rendered into a text log (one line per record or error)
 * by a collecting callback, so that chunked and whole-input parses can be
 * compared byte for byte and expectations can be written as plain text.
 * Credentials in the inputs contain "SECRET"; the collector fails the test
 * if an error reason ever quotes them.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "common/clock.h"
#include "common/svc.h"
#include "storage/entry.h"
#include "storage/formats.h"
#include "tests/unit/testutil.h"

/* ---------------------------------------------------------------------- */
/* Helpers. */

/* xorshift64*: a seeded, repeatable PRNG (the C library one is banned). */
static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint64_t rng(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dULL;
}

static size_t rng_below(size_t n)
{
    return n ? (size_t)(rng() % n) : 0;
}

/* A growable test buffer. */
struct sbuf {
    char *p;
    size_t len;
    size_t cap;
};

static void sb_add(struct sbuf *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        b->p = realloc(b->p, cap);
        ck_assert_ptr_nonnull(b->p);
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_printf(struct sbuf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    va_list ap;
    char *tmp = NULL;
    int n;

    va_start(ap, fmt);
    n = vasprintf(&tmp, fmt, ap);
    va_end(ap);
    ck_assert_int_ge(n, 0);
    sb_add(b, tmp, (size_t)n);
    free(tmp);
}

static const char *nz(const char *s)
{
    return s ? s : "-";
}

/* Collector: renders records and errors into a log. */
struct collect {
    struct sbuf log;
    size_t records;
    size_t errors;
    size_t by_scheme[5]; /* default_scheme 0..3, [4] = -1 */
    int stop_after;      /* > 0: return 7 from the n-th callback */
    int calls;
    bool quiet; /* count only, no log (big files) */
};

static int on_record(void *arg, const struct formats_record *r)
{
    struct collect *c = arg;

    ck_assert_ptr_nonnull(r->proxy_url);
    c->records++;
    c->by_scheme[r->default_scheme >= 0 && r->default_scheme < 4
                     ? r->default_scheme
                     : 4]++;
    if (!c->quiet)
        sb_printf(&c->log,
                  "R %zu %s ds=%d u=%s p=%s src=%s ft=%" PRId64 " ttl=%" PRId64
                  " c=%s a=%s lat=%" PRId64 " h=%s ut=%s pt=%s\n",
                  r->line, r->proxy_url, r->default_scheme, nz(r->username),
                  nz(r->password), nz(r->source), r->fetch_time, r->ttl_seconds,
                  nz(r->country), nz(r->anonymity), r->latency_ms,
                  nz(r->health), nz(r->username_tok), nz(r->password_tok));
    c->calls++;
    if (c->stop_after > 0 && c->calls >= c->stop_after)
        return 7;
    return 0;
}

static int on_error(void *arg, size_t line, const char *reason)
{
    struct collect *c = arg;

    ck_assert_ptr_nonnull(reason);
    ck_assert_msg(strstr(reason, "SECRET") == NULL,
                  "credentials in an error reason: %s", reason);
    c->errors++;
    if (!c->quiet)
        sb_printf(&c->log, "E %zu %s\n", line, reason);
    c->calls++;
    if (c->stop_after > 0 && c->calls >= c->stop_after)
        return 7;
    return 0;
}

enum chunking {
    CHUNK_WHOLE,
    CHUNK_BYTES,
    CHUNK_RANDOM,
};

/*
 * Parse data with the given kind and chunking into c. Returns the first
 * non-zero of feed/finish, and appends "X <rc> <error>" to the log when
 * non-zero so that documents errors are part of the comparison.
 */
static int parse_into(enum formats_kind kind, const char *data, size_t len,
                      enum chunking how, struct collect *c)
{
    struct formats_warm_cb cb = {on_record, on_error, c};
    struct formats_warm *p = NULL;
    size_t off = 0;
    int rc = 0;

    ck_assert_int_eq(formats_warm_new(kind, &cb, &p), 0);
    while (off < len && rc == 0) {
        size_t n = len - off;

        if (how == CHUNK_BYTES)
            n = 1;
        else if (how == CHUNK_RANDOM)
            n = 1 + rng_below(rng_below(4) == 0 ? 8192 : 64);
        if (n > len - off)
            n = len - off;
        rc = formats_warm_feed(p, data + off, n);
        off += n;
    }
    if (rc == 0)
        rc = formats_warm_finish(p);
    if (rc != 0) {
        ck_assert_int_eq(formats_warm_finish(p), rc); /* sticky */
        if (!c->quiet)
            sb_printf(&c->log, "X %d %s\n", rc, formats_warm_error(p));
    }
    formats_warm_free(p);
    return rc;
}

/* Parse whole; return the log (caller frees). */
static char *parse_log(enum formats_kind kind, const char *data, size_t len)
{
    struct collect c;

    memset(&c, 0, sizeof c);
    parse_into(kind, data, len, CHUNK_WHOLE, &c);
    if (!c.log.p)
        return strdup("");
    return c.log.p;
}

/* The whole-input log must equal the 1-byte and random-chunk logs. */
static char *parse_all_ways(enum formats_kind kind, const char *data,
                            size_t len)
{
    char *whole = parse_log(kind, data, len);
    int round;

    for (round = 0; round < 4; round++) {
        struct collect c;

        memset(&c, 0, sizeof c);
        parse_into(kind, data, len, round == 0 ? CHUNK_BYTES : CHUNK_RANDOM,
                   &c);
        ck_assert_str_eq(c.log.p ? c.log.p : "", whole);
        free(c.log.p);
    }
    return whole;
}

static void expect_log(enum formats_kind kind, const char *input,
                       const char *want)
{
    char *got = parse_all_ways(kind, input, strlen(input));

    ck_assert_msg(strcmp(got, want) == 0, "input:\n%s\ngot:\n%s\nwant:\n%s",
                  input, got, want);
    free(got);
}

/* ---------------------------------------------------------------------- */
/* Entries for the line codec. */

#define T_FETCH INT64_C(1764064800123) /* 2025-11-25T10:00:00.123Z */
#define TOK_U   "gAAAAABnQ0123456789abcdef-_ABCDEFGHIJKLMNOPQRSTUVWXYZ=="
#define TOK_P   "gAAAAABnQzyxwvutsrqponmlkjihgfedcba9876543210_-xyz="

static struct entry *make_entry(const char *url, bool full)
{
    struct entry *e = entry_new();
    struct entry_url u;

    ck_assert_ptr_nonnull(e);
    ck_assert_int_eq(entry_url_parse(url, -1, &u, NULL), 0);
    ck_assert_int_eq(entry_set_str(&e->proxy_url, u.normalised), 0);
    e->scheme = u.scheme;
    entry_key_from_normalised(u.normalised, e->key);
    entry_url_fini(&u);
    ck_assert_int_eq(entry_set_str(&e->source, "unit-test"), 0);
    e->fetch_time = T_FETCH;
    e->ttl_seconds = 3600;
    entry_compute_expiry(e);
    if (full) {
        ck_assert_int_eq(entry_set_str(&e->username_tok, TOK_U), 0);
        ck_assert_int_eq(entry_set_str(&e->password_tok, TOK_P), 0);
        ck_assert_int_eq(entry_set_str(&e->source, "feed \"A\" \\ b/c"), 0);
        e->health = ENTRY_HEALTH_UNHEALTHY;
        e->failure_count = 4000000000u;
        memcpy(e->country, "DE", 3);
        e->anonymity = ENTRY_ANON_ELITE;
        e->latency_ms = 123;
        atomic_store(&e->last_accessed, T_FETCH + 5001);
        atomic_store(&e->access_count, 42);
    }
    ck_assert_int_eq(entry_validate(e, NULL), 0);
    return e;
}

static void assert_same_entry(const struct entry *a, const struct entry *b)
{
    ck_assert_str_eq(a->key, b->key);
    ck_assert_str_eq(a->proxy_url, b->proxy_url);
    ck_assert_str_eq(nz(a->username_tok), nz(b->username_tok));
    ck_assert_str_eq(nz(a->password_tok), nz(b->password_tok));
    ck_assert((a->username_tok == NULL) == (b->username_tok == NULL));
    ck_assert((a->password_tok == NULL) == (b->password_tok == NULL));
    ck_assert_str_eq(a->source, b->source);
    ck_assert_int_eq(a->scheme, b->scheme);
    ck_assert_int_eq(a->fetch_time, b->fetch_time);
    ck_assert_int_eq(a->ttl_seconds, b->ttl_seconds);
    ck_assert_int_eq(a->expires_at, b->expires_at);
    ck_assert_int_eq(a->health, b->health);
    ck_assert_uint_eq(a->failure_count, b->failure_count);
    ck_assert_str_eq(a->country, b->country);
    ck_assert_int_eq(a->anonymity, b->anonymity);
    ck_assert_int_eq(a->latency_ms, b->latency_ms);
    ck_assert_int_eq(atomic_load(&a->last_accessed),
                     atomic_load(&b->last_accessed));
    ck_assert_uint_eq(atomic_load(&a->access_count),
                      atomic_load(&b->access_count));
}

/* Encode e, check the line shape, decode it and compare. */
static char *round_trip(const struct entry *e)
{
    struct entry *d = NULL;
    const char *why = NULL;
    char key[ENTRY_KEY_LEN + 1];
    char *line;
    size_t len;

    ck_assert_int_eq(formats_entry_to_line(e, &line, &len), 0);
    ck_assert_uint_eq(strlen(line), len);
    ck_assert_int_eq(line[len - 1], '\n');
    ck_assert_ptr_eq(memchr(line, '\n', len - 1), NULL);
    ck_assert_msg(formats_entry_from_line(line, len, &d, key, &why) == 0,
                  "decode failed: %s\n%s", why, line);
    ck_assert_str_eq(key, e->key);
    assert_same_entry(e, d);
    entry_unref(d);
    /* Without the trailing newline too. */
    ck_assert_int_eq(formats_entry_from_line(line, len - 1, &d, NULL, NULL), 0);
    entry_unref(d);
    ck_assert_int_eq(formats_line_is_tombstone(line, len, key), 0);
    return line;
}

/* ---------------------------------------------------------------------- */
/* Line codec. */

START_TEST(line_round_trip_full)
{
    struct entry *e = make_entry("socks5://user:pw@Example.COM:1080", true);
    char *line = round_trip(e);

    /* Every member, in the documented order. */
    const char *order[] = {"\"key\":",
                           "\"proxy_url\":",
                           "\"username\":",
                           "\"password\":",
                           "\"source\":",
                           "\"protocol\":\"socks5\"",
                           "\"fetch_time\":\"2025-11-25T10:00:00.123Z\"",
                           "\"ttl_seconds\":3600",
                           "\"expires_at\":\"2025-11-25T11:00:00.123Z\"",
                           "\"health_status\":\"unhealthy\"",
                           "\"failure_count\":4000000000",
                           "\"country\":\"DE\"",
                           "\"anonymity\":\"elite\"",
                           "\"latency_ms\":123",
                           "\"last_accessed\":\"2025-11-25T10:00:05.124Z\"",
                           "\"access_count\":42}"};
    const char *at = line;
    size_t i;

    for (i = 0; i < SVC_ARRAY_LEN(order); i++) {
        const char *f = strstr(at, order[i]);
        ck_assert_msg(f != NULL, "missing or out of order: %s in %s", order[i],
                      line);
        at = f;
    }
    ck_assert_ptr_nonnull(
        strstr(line, "\"proxy_url\":\"socks5://example.com:1080\""));
    ck_assert_ptr_nonnull(
        strstr(line, "\"source\":\"feed \\\"A\\\" \\\\ b/c\""));
    free(line);
    entry_unref(e);
}
END_TEST

START_TEST(line_round_trip_minimal)
{
    struct entry *e = make_entry("http://1.2.3.4:8080", false);
    char *line = round_trip(e);
    const char *absent[] = {"username",  "password",   "country",
                            "anonymity", "latency_ms", "last_accessed"};
    size_t i;

    for (i = 0; i < SVC_ARRAY_LEN(absent); i++)
        ck_assert_msg(strstr(line, absent[i]) == NULL, "%s present: %s",
                      absent[i], line);
    ck_assert_ptr_nonnull(strstr(line, "\"health_status\":\"unknown\""));
    ck_assert_ptr_nonnull(strstr(line, "\"access_count\":0}"));
    free(line);
    entry_unref(e);
}
END_TEST

START_TEST(line_round_trip_variants)
{
    static const char *const urls[] = {
        "http://[2001:db8::1]:8080", "https://proxy.example.org:443",
        "socks4://10.0.0.1:1", "socks5://a-b.c:65535"};
    size_t i;

    for (i = 0; i < SVC_ARRAY_LEN(urls); i++) {
        struct entry *e = make_entry(urls[i], i % 2 == 0);
        char *line;

        /* Edge values of each field. */
        e->health = (enum entry_health)(i % 3);
        e->anonymity = (enum entry_anonymity)(i % 4);
        e->latency_ms = i == 1 ? 0 : -1;
        e->ttl_seconds = i == 2 ? 0 : (int64_t)i * 86400;
        e->fetch_time = i == 3 ? 0 : T_FETCH + (int64_t)i;
        entry_compute_expiry(e);
        atomic_store(&e->last_accessed, i == 0 ? 1 : 0);
        e->failure_count = i == 3 ? UINT32_MAX : 0;
        ck_assert_int_eq(entry_validate(e, NULL), 0);
        line = round_trip(e);
        free(line);
        entry_unref(e);
    }
}
END_TEST

/* Fields that entry_validate() would reject are still written as one
 * valid JSON line (defence in depth for the L2 file format). */
START_TEST(line_escaping)
{
    struct entry *e = make_entry("http://1.2.3.4:80", false);
    struct entry *d = NULL;
    const char *why = NULL;
    char *line;
    size_t len;
    json_t *j;

    ck_assert_int_eq(entry_set_str(&e->source, "a\nb\rc\td\001e\177f\"g\\h"),
                     0);
    ck_assert_int_eq(formats_entry_to_line(e, &line, &len), 0);
    ck_assert_ptr_eq(memchr(line, '\n', len - 1), NULL);
    ck_assert_ptr_nonnull(
        strstr(line, "\"a\\nb\\rc\\td\\u0001e\\u007ff\\\"g\\\\h\""));
    j = json_loadb(line, len, 0, NULL);
    ck_assert_ptr_nonnull(j);
    ck_assert_str_eq(json_string_value(json_object_get(j, "source")),
                     e->source);
    json_decref(j);
    ck_assert_int_eq(formats_entry_from_line(line, len, &d, NULL, &why),
                     -EBADMSG);
    ck_assert_str_eq(why, "missing or bad source");
    free(line);
    entry_unref(e);
}
END_TEST

START_TEST(line_huge_values)
{
    struct entry *e = make_entry("http://1.2.3.4:80", true);
    struct entry *d = NULL;
    char *line;
    size_t len;

    /* expires_at beyond year 9999 is left out and recomputed. */
    e->ttl_seconds = INT64_MAX / 1000 - 5;
    entry_compute_expiry(e);
    line = round_trip(e);
    ck_assert_ptr_eq(strstr(line, "expires_at"), NULL);
    free(line);
    e->ttl_seconds = INT64_MAX;
    entry_compute_expiry(e);
    ck_assert_int_eq(e->expires_at, INT64_MAX);
    line = round_trip(e);
    free(line);

    /* access_count saturates at INT64_MAX rather than becoming unreadable. */
    atomic_store(&e->access_count, UINT64_MAX);
    ck_assert_int_eq(formats_entry_to_line(e, &line, &len), 0);
    ck_assert_int_eq(formats_entry_from_line(line, len, &d, NULL, NULL), 0);
    ck_assert_uint_eq(atomic_load(&d->access_count), (uint64_t)INT64_MAX);
    entry_unref(d);
    free(line);
    entry_unref(e);
}
END_TEST

/* Replace the first occurrence of from in s by to; returns a new string. */
static char *replace(const char *s, const char *from, const char *to)
{
    const char *at = strstr(s, from);
    size_t n;
    char *out;

    ck_assert_msg(at != NULL, "'%s' not in %s", from, s);
    n = strlen(s) - strlen(from) + strlen(to) + 1;
    out = malloc(n);
    ck_assert_ptr_nonnull(out);
    snprintf(out, n, "%.*s%s%s", (int)(at - s), s, to, at + strlen(from));
    return out;
}

/* A URL longer than ENTRY_URL_MAX (labels of 50 characters). */
#define L50           "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa."
#define L500          L50 L50 L50 L50 L50 L50 L50 L50 L50 L50
#define LONG_HOST_URL "socks5://" L500 L500 L500 L500 L500 "com:1080"

START_TEST(line_corrupt)
{
    /* Each: substring of the valid line, replacement, key readable. */
    static const struct {
        const char *from, *to;
        bool key;
    } cases[] = {
        {"{\"key\"", "[{\"key\"", false},
        {"\"key\":", "\"kex\":", false},
        {"\"key\":\"", "\"key\":\"X", false},
        {"\"key\":\"", "\"key\":1,\"x\":\"", false},
        {"example.com:1080", "example.com:1081", true},
        {"example.com:1080", "Example.com:1080", true},
        {"socks5://example.com", "socks5://u:SECRET@example.com", true},
        {"socks5://example.com", "socks5://example.com/", true},
        {"\"proxy_url\":\"", "\"proxy_url\":7,\"x\":\"", true},
        {"\"protocol\":\"socks5\"", "\"protocol\":\"http\"", true},
        {"\"protocol\":\"socks5\"", "\"protocol\":\"SOCKS5\"", true},
        {"\"protocol\":\"socks5\",", "", true},
        {"\"username\":\"", "\"username\":\"a b", true},
        {"\"username\":\"" TOK_U "\"", "\"username\":\"\"", true},
        {"\"username\":\"" TOK_U "\"", "\"username\":5", true},
        {"\"password\":\"", "\"password\":\"SECRET!", true},
        {"\"source\":\"unit-test\"", "\"source\":\"\"", true},
        {"\"source\":\"unit-test\"", "\"source\":null", true},
        {"\"source\":\"unit-test\"", "\"source\":\"\\u00e9\"", true},
        {"\"fetch_time\":\"2025", "\"fetch_time\":\"2O25", true},
        {"\"fetch_time\":\"2025-11-25T10:00:00.123Z\"",
         "\"fetch_time\":1764064800123", true},
        {"\"fetch_time\":\"2025-11-25T10:00:00.123Z\"",
         "\"fetch_time\":\"1969-12-31T23:59:59.000Z\"", true},
        {"\"fetch_time\":\"2025-11-25T10:00:00.123Z\",", "", true},
        {"\"ttl_seconds\":3600", "\"ttl_seconds\":-1", true},
        {"\"ttl_seconds\":3600", "\"ttl_seconds\":\"3600\"", true},
        {"\"ttl_seconds\":3600", "\"ttl_seconds\":3600.0", true},
        {"\"ttl_seconds\":3600", "\"ttl_seconds\":99999999999999999999", true},
        {"\"ttl_seconds\":3600", "\"ttl_seconds\":3601", true},
        {"\"expires_at\":\"2025-11-25T11", "\"expires_at\":\"2025-11-25T12",
         true},
        {"\"expires_at\":\"", "\"expires_at\":\"x", true},
        {"\"health_status\":\"unhealthy\"", "\"health_status\":\"sick\"", true},
        {"\"health_status\":\"unhealthy\"", "\"health_status\":null", true},
        {"\"failure_count\":4000000000", "\"failure_count\":-1", true},
        {"\"failure_count\":4000000000", "\"failure_count\":4294967296", true},
        {"\"failure_count\":4000000000", "\"failure_count\":true", true},
        {"\"country\":\"DE\"", "\"country\":\"de\"", true},
        {"\"country\":\"DE\"", "\"country\":\"DEU\"", true},
        {"\"country\":\"DE\"", "\"country\":\"D1\"", true},
        {"\"anonymity\":\"elite\"", "\"anonymity\":\"Elite\"", true},
        {"\"anonymity\":\"elite\"", "\"anonymity\":\"none\"", true},
        {"\"latency_ms\":123", "\"latency_ms\":-2", true},
        {"\"latency_ms\":123", "\"latency_ms\":12.5", true},
        {"\"latency_ms\":123", "\"latency_ms\":\"123\"", true},
        {"\"last_accessed\":\"", "\"last_accessed\":\"z", true},
        {"\"last_accessed\":\"2025-11-25T10:00:05.124Z\"",
         "\"last_accessed\":5", true},
        {"\"access_count\":42", "\"access_count\":-42", true},
        {"\"access_count\":42", "\"access_count\":42,\"access_count\":43",
         true},
        {"\"access_count\":42", "\"access_count\":42,\"extra\":1", true},
        {"\"access_count\":42", "\"access_count\":42,\"deleted\":true", true},
        {"\"access_count\":42}", "\"access_count\":42", true},
        {"\"access_count\":42}", "\"access_count\":42}}", true},
        {"\"access_count\":42}", "\"access_count\":42} x", true},
        {"\"password\":\"" TOK_P "\"", "\"password\":\"\"", true},
        {"\"country\":\"DE\"", "\"country\":5", true},
        {"\"country\":\"DE\"", "\"country\":\"\"", true},
        {"socks5://example.com:1080", LONG_HOST_URL, true},
    };
    struct entry *e = make_entry("socks5://example.com:1080", true);
    char *line;
    size_t len, i;

    ck_assert_int_eq(entry_set_str(&e->source, "unit-test"), 0);
    ck_assert_int_eq(formats_entry_to_line(e, &line, &len), 0);
    for (i = 0; i < SVC_ARRAY_LEN(cases); i++) {
        char *bad = replace(line, cases[i].from, cases[i].to);
        char key[ENTRY_KEY_LEN + 1] = "junk";
        const char *why = NULL;
        struct entry *d = NULL;
        int rc = formats_entry_from_line(bad, strlen(bad), &d, key, &why);

        ck_assert_msg(rc == -EBADMSG, "case %zu accepted (rc %d): %s", i, rc,
                      bad);
        ck_assert_ptr_eq(d, NULL);
        ck_assert_ptr_nonnull(why);
        ck_assert_msg(strstr(why, "SECRET") == NULL, "reason quotes input");
        if (cases[i].key)
            ck_assert_msg(strcmp(key, e->key) == 0, "case %zu: key '%s'", i,
                          key);
        else
            ck_assert_msg(key[0] == '\0', "case %zu: key '%s'", i, key);
        free(bad);
    }

    /* Specific reasons. */
    {
        const char *why = NULL;
        struct entry *d = NULL;
        char key[ENTRY_KEY_LEN + 1];
        char *bad;

        ck_assert_int_eq(formats_entry_from_line("nonsense", 8, &d, key, &why),
                         -EBADMSG);
        ck_assert_str_eq(why, "bad json");
        ck_assert_str_eq(key, "");
        ck_assert_int_eq(formats_entry_from_line("{}", 2, &d, key, &why),
                         -EBADMSG);
        ck_assert_str_eq(why, "missing key");
        ck_assert_int_eq(formats_entry_from_line("[]", 2, &d, key, &why),
                         -EBADMSG);
        ck_assert_str_eq(why, "not a JSON object");
        ck_assert_int_eq(formats_entry_from_line("\"s\"", 3, &d, key, &why),
                         -EBADMSG);
        bad = replace(line, "\"access_count\":42",
                      "\"access_count\":42,\"deleted\":true");
        ck_assert_int_eq(
            formats_entry_from_line(bad, strlen(bad), &d, key, &why), -EBADMSG);
        ck_assert_str_eq(why, "tombstone, not an entry");
        free(bad);
        bad =
            replace(line, "\"access_count\":42", "\"access_count\":42,\"x\":1");
        ck_assert_int_eq(
            formats_entry_from_line(bad, strlen(bad), &d, key, &why), -EBADMSG);
        ck_assert_str_eq(why, "unknown member");
        free(bad);
        bad = replace(line, "example.com:1080", "example.com:1081");
        ck_assert_int_eq(
            formats_entry_from_line(bad, strlen(bad), &d, key, &why), -EBADMSG);
        ck_assert_str_eq(why, "key does not match proxy_url");
        free(bad);
        bad = replace(line, "\"fetch_time\":\"2025", "\"fetch_time\":\"x");
        ck_assert_int_eq(
            formats_entry_from_line(bad, strlen(bad), &d, key, &why), -EBADMSG);
        ck_assert_ptr_nonnull(strstr(why, "fetch_time"));
        free(bad);
        /* A torn line (crash mid-write): the key is still named. */
        ck_assert_int_eq(formats_entry_from_line(line, len / 2, &d, key, &why),
                         -EBADMSG);
        ck_assert_str_eq(why, "bad json");
        ck_assert_str_eq(key, e->key);
        /* Embedded NUL. */
        bad = strdup(line);
        bad[100] = '\0';
        ck_assert_int_eq(formats_entry_from_line(bad, len, &d, key, &why),
                         -EBADMSG);
        free(bad);
        ck_assert_int_eq(formats_entry_from_line(NULL, 0, &d, key, &why),
                         -EBADMSG);
        ck_assert_int_eq(formats_entry_from_line("", 0, &d, NULL, NULL),
                         -EBADMSG);
    }
    free(line);
    entry_unref(e);
}
END_TEST

START_TEST(line_fuzz)
{
    struct entry *e =
        make_entry("https://user:pw@proxy.example.org:3128", true);
    char *line, *buf;
    size_t len, i, accepted = 0;

    rng_state = 0x1234567u;
    ck_assert_int_eq(formats_entry_to_line(e, &line, &len), 0);
    buf = malloc(len * 2 + 64);
    ck_assert_ptr_nonnull(buf);
    for (i = 0; i < 20000; i++) {
        size_t n = len, k, muts;
        struct entry *d = NULL;
        char key[ENTRY_KEY_LEN + 1];
        const char *why = NULL;
        int rc;

        if (i % 10 == 9) {
            /* Pure garbage, biased toward JSON punctuation. */
            static const char alpha[] = "{}[]\":,\\0123456789abcdefkeytrun \n";
            n = rng_below(len + 32);
            for (k = 0; k < n; k++)
                buf[k] = rng_below(2) ? (char)rng()
                                      : alpha[rng_below(sizeof alpha - 1)];
        } else {
            memcpy(buf, line, len);
            muts = 1 + rng_below(4);
            for (k = 0; k < muts; k++) {
                switch (rng_below(4)) {
                case 0: /* flip a byte */
                    buf[rng_below(n)] = (char)rng();
                    break;
                case 1: /* truncate */
                    n = rng_below(n + 1);
                    break;
                case 2: /* duplicate a span */
                    if (n > 8) {
                        size_t at = rng_below(n - 4), span = 1 + rng_below(4);
                        memmove(buf + at + span, buf + at, n - at);
                        n += span;
                        if (n > len * 2)
                            n = len * 2;
                    }
                    break;
                default: /* swap a digit */
                    buf[rng_below(n + 1 > 1 ? n : 1)] =
                        (char)('0' + rng_below(10));
                    break;
                }
                if (n == 0)
                    break;
            }
        }
        rc = formats_entry_from_line(buf, n, &d, key, &why);
        ck_assert(rc == 0 || rc == -EBADMSG);
        ck_assert_uint_le(strlen(key), ENTRY_KEY_LEN);
        if (rc == 0) {
            accepted++;
            ck_assert_int_eq(entry_validate(d, NULL), 0);
            entry_unref(d);
        } else {
            ck_assert_ptr_nonnull(why);
            ck_assert_ptr_eq(d, NULL);
        }
        (void)formats_line_is_tombstone(buf, n, key);
    }
    /* Some mutations (e.g. a digit of access_count) stay valid. */
    ck_assert_uint_gt(accepted, 0);
    free(buf);
    free(line);
    entry_unref(e);
}
END_TEST

START_TEST(tombstones)
{
    struct entry *e = make_entry("http://1.2.3.4:80", false);
    char key[ENTRY_KEY_LEN + 1];
    char *line, *alt;
    size_t len;
    struct entry *d = NULL;
    const char *why = NULL;

    ck_assert_int_eq(formats_tombstone_line(e->key, &line, &len), 0);
    ck_assert_uint_eq(len, strlen(line));
    ck_assert_int_eq(line[len - 1], '\n');
    ck_assert_int_eq(formats_line_is_tombstone(line, len, key), 1);
    ck_assert_str_eq(key, e->key);
    ck_assert_int_eq(formats_line_is_tombstone(line, len - 1, key), 1);
    /* It is not an entry. */
    ck_assert_int_eq(formats_entry_from_line(line, len, &d, key, &why),
                     -EBADMSG);
    ck_assert_str_eq(key, e->key);

    alt = malloc(256);
    snprintf(alt, 256, "{ \"deleted\": true, \"key\": \"%s\" }\n", e->key);
    ck_assert_int_eq(formats_line_is_tombstone(alt, strlen(alt), key), 1);
    snprintf(alt, 256, "{\"key\":\"%s\",\"deleted\":false}\n", e->key);
    ck_assert_int_eq(formats_line_is_tombstone(alt, strlen(alt), key), 0);
    snprintf(alt, 256, "{\"key\":\"%s\",\"deleted\":true,\"x\":1}\n", e->key);
    ck_assert_int_eq(formats_line_is_tombstone(alt, strlen(alt), key), 0);
    snprintf(alt, 256, "{\"key\":\"%.63sG\",\"deleted\":true}\n", e->key);
    ck_assert_int_eq(formats_line_is_tombstone(alt, strlen(alt), key), 0);
    ck_assert_int_eq(formats_line_is_tombstone("", 0, key), 0);
    ck_assert_int_eq(formats_line_is_tombstone(NULL, 0, key), 0);
    free(alt);
    free(line);

    ck_assert_int_eq(formats_tombstone_line("abc", &line, &len), -EINVAL);
    ck_assert_int_eq(formats_tombstone_line(NULL, &line, &len), -EINVAL);
    entry_unref(e);
}
END_TEST

START_TEST(content_types)
{
    ck_assert_int_eq(formats_kind_from_content_type("application/json"),
                     FORMATS_JSON);
    ck_assert_int_eq(
        formats_kind_from_content_type("Application/JSON; charset=utf-8"),
        FORMATS_JSON);
    ck_assert_int_eq(formats_kind_from_content_type("application/x-ndjson"),
                     FORMATS_JSONL);
    ck_assert_int_eq(formats_kind_from_content_type("application/jsonl"),
                     FORMATS_JSONL);
    ck_assert_int_eq(formats_kind_from_content_type("application/x-jsonlines"),
                     FORMATS_JSONL);
    ck_assert_int_eq(
        formats_kind_from_content_type(" text/csv ;header=present"),
        FORMATS_CSV);
    ck_assert_int_eq(
        formats_kind_from_content_type("text/plain; charset=utf-8"),
        FORMATS_AUTO);
    ck_assert_int_eq(formats_kind_from_content_type("application/jsonx"),
                     FORMATS_AUTO);
    ck_assert_int_eq(formats_kind_from_content_type("application/octet-stream"),
                     FORMATS_AUTO);
    ck_assert_int_eq(formats_kind_from_content_type(""), FORMATS_AUTO);
    ck_assert_int_eq(formats_kind_from_content_type(NULL), FORMATS_AUTO);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* Warm: text. */

START_TEST(warm_text)
{
    expect_log(FORMATS_TEXT,
               "# proxies for the unit test\n"
               "1.2.3.4:80\n"
               "\n"
               "  # SOCKS5 Proxies (2)  \r\n"
               "5.6.7.8:1080\r\n"
               "   socks4://u:SECRET@9.9.9.9:4145   \n"
               "#https\n"
               "host.example:443\n"
               "#Generated by a tool, not a section\n"
               "10.0.0.1:3128\n"
               "# HTTP\n"
               "last:1",
               "R 2 1.2.3.4:80 ds=0 u=- p=- src=- ft=-1 ttl=-1 c=- a=- "
               "lat=-1 h=- ut=- pt=-\n"
               "R 5 5.6.7.8:1080 ds=3 u=- p=- src=- ft=-1 ttl=-1 c=- a=- "
               "lat=-1 h=- ut=- pt=-\n"
               "R 6 socks4://u:SECRET@9.9.9.9:4145 ds=-1 u=- p=- src=- ft=-1 "
               "ttl=-1 c=- a=- lat=-1 h=- ut=- pt=-\n"
               "R 8 host.example:443 ds=1 u=- p=- src=- ft=-1 ttl=-1 c=- a=- "
               "lat=-1 h=- ut=- pt=-\n"
               "R 10 10.0.0.1:3128 ds=1 u=- p=- src=- ft=-1 ttl=-1 c=- a=- "
               "lat=-1 h=- ut=- pt=-\n"
               "R 12 last:1 ds=0 u=- p=- src=- ft=-1 ttl=-1 c=- a=- lat=-1 "
               "h=- ut=- pt=-\n");
    /* Empty input, only blanks, and NUL bytes. */
    expect_log(FORMATS_TEXT, "", "");
    expect_log(FORMATS_TEXT, "\n\r\n  \n", "");
    {
        static const char nul[] = "a:1\nb\0c:2\nd:3";
        char *got = parse_all_ways(FORMATS_TEXT, nul, sizeof nul - 1);
        ck_assert_str_eq(got, "R 1 a:1 ds=0 u=- p=- src=- ft=-1 ttl=-1 c=- a=- "
                              "lat=-1 h=- ut=- pt=-\n"
                              "E 2 NUL byte in line\n"
                              "R 3 d:3 ds=0 u=- p=- src=- ft=-1 ttl=-1 c=- a=- "
                              "lat=-1 h=- ut=- pt=-\n");
        free(got);
    }
}
END_TEST

/* A line of exactly n bytes of 'a' (plus suffix). */
static char *long_line(size_t n, const char *prefix, const char *suffix)
{
    size_t pl = strlen(prefix), sl = strlen(suffix);
    char *s = malloc(pl + n + sl + 1);

    ck_assert_ptr_nonnull(s);
    memcpy(s, prefix, pl);
    memset(s + pl, 'a', n);
    memcpy(s + pl + n, suffix, sl + 1);
    return s;
}

START_TEST(warm_line_limits)
{
    static const enum formats_kind kinds[] = {FORMATS_TEXT, FORMATS_AUTO};
    size_t k;

    for (k = 0; k < SVC_ARRAY_LEN(kinds); k++) {
        /* Exactly FORMATS_LINE_MAX: accepted, also with CRLF. */
        char *ok = long_line(FORMATS_LINE_MAX, "", "\r\nx:1\n");
        char *bad = long_line(FORMATS_LINE_MAX + 1, "", "\r\nx:1\n");
        char *huge = long_line(5 * FORMATS_LINE_MAX, "x:2\n", "\nx:3");
        struct collect c;

        memset(&c, 0, sizeof c);
        c.quiet = true;
        ck_assert_int_eq(parse_into(kinds[k], ok, strlen(ok), CHUNK_RANDOM, &c),
                         0);
        ck_assert_uint_eq(c.records, 2);
        ck_assert_uint_eq(c.errors, 0);
        free(c.log.p);

        free(parse_all_ways(kinds[k], bad, strlen(bad)));
        {
            char *got = parse_log(kinds[k], bad, strlen(bad));
            ck_assert_str_eq(got, "E 1 line too long\n"
                                  "R 2 x:1 ds=0 u=- p=- src=- ft=-1 ttl=-1 c=- "
                                  "a=- lat=-1 h=- ut=- pt=-\n");
            free(got);
            got = parse_all_ways(kinds[k], huge, strlen(huge));
            ck_assert_str_eq(got, "R 1 x:2 ds=0 u=- p=- src=- ft=-1 ttl=-1 c=- "
                                  "a=- lat=-1 h=- ut=- pt=-\n"
                                  "E 2 line too long\n"
                                  "R 3 x:3 ds=0 u=- p=- src=- ft=-1 ttl=-1 c=- "
                                  "a=- lat=-1 h=- ut=- pt=-\n");
            free(got);
        }
        free(ok);
        free(bad);
        free(huge);
    }
}
END_TEST

START_TEST(warm_stop_and_sticky)
{
    struct collect c;
    struct formats_warm_cb cb = {on_record, on_error, &c};
    struct formats_warm *p = NULL;
    const char *in = "a:1\nb:2\nc:3\nd:4\n";

    memset(&c, 0, sizeof c);
    c.stop_after = 2;
    ck_assert_int_eq(formats_warm_new(FORMATS_TEXT, &cb, &p), 0);
    ck_assert_int_eq(formats_warm_feed(p, in, strlen(in)), 7);
    ck_assert_int_eq(c.calls, 2);
    /* No callback after a stop, and the stop value stays. */
    ck_assert_int_eq(formats_warm_feed(p, in, strlen(in)), 7);
    ck_assert_int_eq(formats_warm_finish(p), 7);
    ck_assert_int_eq(c.calls, 2);
    formats_warm_free(p);
    free(c.log.p);

    /* Stop from on_error, in the JSON walker. */
    memset(&c, 0, sizeof c);
    c.stop_after = 1;
    ck_assert_int_eq(formats_warm_new(FORMATS_JSON, &cb, &p), 0);
    ck_assert_int_eq(formats_warm_feed(p, "[1, \"a:1\"]", 10), 7);
    ck_assert_int_eq(c.calls, 1);
    ck_assert_int_eq(formats_warm_finish(p), 7);
    formats_warm_free(p);
    free(c.log.p);

    /* Stop value 1 from a callback is passed through unchanged. */
    memset(&c, 0, sizeof c);
    ck_assert_int_eq(formats_warm_new(FORMATS_TEXT, NULL, &p), 0);
    ck_assert_int_eq(formats_warm_feed(p, in, strlen(in)), 0);
    ck_assert_int_eq(formats_warm_finish(p), 0);
    ck_assert_int_eq(formats_warm_finish(p), 0);
    ck_assert_int_eq(formats_warm_feed(p, "x", 1), -EINVAL);
    formats_warm_free(p);
    formats_warm_free(NULL);

    ck_assert_int_eq(formats_warm_new((enum formats_kind)42, NULL, &p),
                     -EINVAL);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* Warm: JSONL. */

START_TEST(warm_jsonl)
{
    expect_log(
        FORMATS_JSONL,
        "\"http://1.2.3.4:80\"\n"
        "\"5.6.7.8:81\"\r\n"
        "\n"
        "{\"proxy_url\":\"socks5://9.9.9.9:1080\",\"username\":\"u\","
        "\"password\":\"SECRET\",\"source\":\"s1\",\"fetch_time\":"
        "\"2026-01-02T03:04:05Z\",\"ttl_seconds\":60,\"country\":\"us\","
        "\"anonymity\":\"elite\",\"latency_ms\":12,\"health_status\":"
        "\"healthy\"}\n"
        "{\"url\":\"1.1.1.1:8080\",\"protocol\":\"socks4\",\"status\":"
        "\"unknown\","
        "\"country_code\":\"FR\",\"country\":\"France\",\"response_time\":99.5}"
        "\n"
        "{\"ip\":\"2.2.2.2\",\"port\":3128,\"protocol\":\"https\","
        "\"last_checked\":\"2026-08-22T18:26:26.792266\",\"created_at\":\"x\"}"
        "\n"
        "{\"ip\":\"2001:db8::1\",\"port\":\"8080\",\"created_at\":"
        "\"2026-08-22T18:26:26\"}\n"
        "{\"key\":\"abc\",\"proxy_url\":\"http://3.3.3.3:80\",\"username\":"
        "\"tokU\",\"password\":\"tokP\",\"expires_at\":\"whatever\","
        "\"access_count\":3}\n"
        "{\"proxy_url\":5}\n"
        "{\"proxy_url\":\"a:1\",\"ttl_seconds\":-1}\n"
        "{\"proxy_url\":\"a:1\",\"ttl_seconds\":1.5}\n"
        "{\"proxy_url\":\"a:1\",\"password\":[\"SECRET\"]}\n"
        "{\"proxy_url\":\"a:1\",\"fetch_time\":\"yesterday\"}\n"
        "{\"proxy_url\":\"a:1\",\"response_time\":-3}\n"
        "{\"proxy_url\":\"a:1\",\"protocol\":\"ftp\"}\n"
        "{\"ip\":\"4.4.4.4\"}\n"
        "{\"ip\":\"4.4.4.4\",\"port\":0}\n"
        "{\"ip\":\"4.4.4.4\",\"port\":\"80x\"}\n"
        "{\"source\":\"x\"}\n"
        "[1,2]\n"
        "42\n"
        "{\"proxy_url\":\"SECRET\n"
        "{\"proxy_url\":\"a:1\",\"proxy_url\":\"b:2\"}\n"
        "{\"proxy_url\":\"a:1\",\"source\":null,\"country\":null,"
        "\"latency_ms\":null,\"ttl_seconds\":null}\n"
        "  \"trailing:9\"  ",
        "R 1 http://1.2.3.4:80 ds=-1 u=- p=- src=- ft=-1 ttl=-1 c=- a=- "
        "lat=-1 h=- ut=- pt=-\n"
        "R 2 5.6.7.8:81 ds=0 u=- p=- src=- ft=-1 ttl=-1 c=- a=- lat=-1 h=- "
        "ut=- pt=-\n"
        "R 4 socks5://9.9.9.9:1080 ds=-1 u=u p=SECRET src=s1 "
        "ft=1767323045000 ttl=60 c=us a=elite lat=12 h=healthy ut=- pt=-\n"
        "R 5 1.1.1.1:8080 ds=2 u=- p=- src=- ft=-1 ttl=-1 c=FR a=- lat=100 "
        "h=unknown ut=- pt=-\n"
        "R 6 https://2.2.2.2:3128 ds=-1 u=- p=- src=- ft=1787423186792 "
        "ttl=-1 c=- a=- lat=-1 h=- ut=- pt=-\n"
        "R 7 [2001:db8::1]:8080 ds=0 u=- p=- src=- ft=1787423186000 ttl=-1 "
        "c=- a=- lat=-1 h=- ut=- pt=-\n"
        "R 8 http://3.3.3.3:80 ds=-1 u=- p=- src=- ft=-1 ttl=-1 c=- a=- "
        "lat=-1 h=- ut=tokU pt=tokP\n"
        "E 9 \"proxy_url\": must be a string\n"
        "E 10 \"ttl_seconds\": must be an integer >= 0\n"
        "E 11 \"ttl_seconds\": must be an integer >= 0\n"
        "E 12 \"password\": must be a string\n"
        "E 13 \"fetch_time\": must be an RFC 3339 time\n"
        "E 14 \"response_time\": must be a number >= 0\n"
        "E 15 \"protocol\": unknown protocol\n"
        "E 16 \"port\": missing\n"
        "E 17 \"port\": must be 1..65535\n"
        "E 18 \"port\": must be 1..65535\n"
        "E 19 missing proxy_url (or ip and port)\n"
        "E 20 expected a proxy URL string or an object\n"
        "E 21 expected a proxy URL string or an object\n"
        "E 22 invalid JSON (column 20)\n"
        "E 23 invalid JSON (column 30)\n"
        "R 24 a:1 ds=0 u=- p=- src=- ft=-1 ttl=-1 c=- a=- lat=-1 h=- ut=- "
        "pt=-\n"
        "R 25 trailing:9 ds=0 u=- p=- src=- ft=-1 ttl=-1 c=- a=- lat=-1 h=- "
        "ut=- pt=-\n");
    /* Each member with a wrong type is named. */
    expect_log(
        FORMATS_JSONL,
        "{\"proxy_url\":\"a:1\",\"username\":1}\n"
        "{\"proxy_url\":\"a:1\",\"source\":{}}\n"
        "{\"proxy_url\":\"a:1\",\"anonymity\":true}\n"
        "{\"proxy_url\":\"a:1\",\"status\":1}\n"
        "{\"proxy_url\":\"a:1\",\"country_code\":1,\"country\":\"US\"}\n"
        "{\"proxy_url\":\"a:1\",\"last_checked\":1}\n"
        "{\"proxy_url\":null,\"url\":2}\n"
        "{\"ip\":[],\"port\":1}\n"
        "{\"protocol\":1,\"ip\":\"a\",\"port\":1}\n"
        "{\"ip\":\"1.2.3.4\",\"port\":\"1\",\"protocol\":\"" L500 L500 L500 L500
            L500 "\"}\n"
        "{\"proxy_url\":\"\",\"username\":\"\",\"source\":\"\",\"ip\":\"h\","
        "\"port\":2}\n",
        "E 1 \"username\": must be a string\n"
        "E 2 \"source\": must be a string\n"
        "E 3 \"anonymity\": must be a string\n"
        "E 4 \"status\": must be a string\n"
        "E 5 \"country_code\": must be a string\n"
        "E 6 \"last_checked\": must be a string\n"
        "E 7 \"url\": must be a string\n"
        "E 8 \"ip\": must be a string\n"
        "E 9 \"protocol\": must be a string\n"
        "E 10 \"ip\": too long\n"
        "R 11 h:2 ds=0 u=- p=- src=- ft=-1 ttl=-1 c=- a=- lat=-1 h=- "
        "ut=- pt=-\n");
}
END_TEST

/* ---------------------------------------------------------------------- */
/* Warm: JSON. */

START_TEST(warm_json_array)
{
    expect_log(FORMATS_JSON,
               " [ \"http://1.2.3.4:80\" ,\n"
               "  {\"proxy_url\":\"a:1\",\"source\":\"x]}\\\"[{\"},\r\n"
               "  \"b:2\", 17, null, [\"nested\"], {\"ip\":\"c\",\"port\":3},"
               "{\"bad\": tru},\"d:4\"\n] \n\n",
               "R 1 http://1.2.3.4:80 ds=-1 u=- p=- src=- ft=-1 ttl=-1 c=- "
               "a=- lat=-1 h=- ut=- pt=-\n"
               "R 2 a:1 ds=0 u=- p=- src=x]}\"[{ ft=-1 ttl=-1 c=- a=- lat=-1 "
               "h=- ut=- pt=-\n"
               "R 3 b:2 ds=0 u=- p=- src=- ft=-1 ttl=-1 c=- a=- lat=-1 h=- "
               "ut=- pt=-\n"
               "E 4 expected a proxy URL string or an object\n"
               "E 5 expected a proxy URL string or an object\n"
               "E 6 expected a proxy URL string or an object\n"
               "R 7 c:3 ds=0 u=- p=- src=- ft=-1 ttl=-1 c=- a=- lat=-1 h=- "
               "ut=- pt=-\n"
               "E 8 invalid JSON element\n"
               "R 9 d:4 ds=0 u=- p=- src=- ft=-1 ttl=-1 c=- a=- lat=-1 h=- "
               "ut=- pt=-\n");
    expect_log(FORMATS_JSON, "[]", "");
    expect_log(FORMATS_JSON, "[ ]\n", "");
}
END_TEST

START_TEST(warm_json_documents)
{
    /* proxies.json shape, with a metadata member full of traps. */
    expect_log(FORMATS_JSON,
               "{\n  \"metadata\": {\"generated_at\": \"x\", \"note\": "
               "\"a ] } [ { \\\" \\\\\", \"counts\": {\"http\": [1,[2]]}},\n"
               "  \"proxies\": {\n"
               "    \"http\": [\"1.1.1.1:80\", \"1.1.1.2:81\"],\n"
               "    \"HTTPS\": [\"2.2.2.2:443\"],\n"
               "    \"socks4\": [],\n"
               "    \"ftp\": [\"9.9.9.9:21\"],\n"
               "    \"socks5\": [\"3.3.3.3:1080\", 5, \"socks4://4.4.4.4:1\"]\n"
               "  },\n  \"tail\": null\n}\n",
               "R 1 1.1.1.1:80 ds=0 u=- p=- src=- ft=-1 ttl=-1 c=- a=- lat=-1 "
               "h=- ut=- pt=-\n"
               "R 2 1.1.1.2:81 ds=0 u=- p=- src=- ft=-1 ttl=-1 c=- a=- lat=-1 "
               "h=- ut=- pt=-\n"
               "R 3 2.2.2.2:443 ds=1 u=- p=- src=- ft=-1 ttl=-1 c=- a=- "
               "lat=-1 h=- ut=- pt=-\n"
               "E 4 unknown protocol list in \"proxies\" (skipped)\n"
               "R 4 3.3.3.3:1080 ds=3 u=- p=- src=- ft=-1 ttl=-1 c=- a=- "
               "lat=-1 h=- ut=- pt=-\n"
               "E 5 expected a proxy URL string or an object\n"
               "R 6 socks4://4.4.4.4:1 ds=-1 u=- p=- src=- ft=-1 ttl=-1 c=- "
               "a=- lat=-1 h=- ut=- pt=-\n");
    /* proxies-rich.json shape. */
    expect_log(
        FORMATS_JSON,
        "{\"generated_at\": \"2026-08-22T18:26:30.454225+00:00\", "
        "\"total\": 2, \"proxies\": [{\"ip\": \"159.112.235.140\", "
        "\"port\": 80, \"protocol\": \"http\", \"status\": \"healthy\", "
        "\"response_time\": 7268.396000999999, \"success_rate\": 100.0, "
        "\"total_checks\": 1, \"source\": \"user\", \"last_checked\": "
        "\"2026-08-22T18:26:26.792266\", \"created_at\": "
        "\"2026-08-22T18:26:26.823066\", \"country\": \"United States\", "
        "\"country_code\": \"US\", \"continent_code\": null}, "
        "{\"ip\": \"1.2.3.4\", \"port\": 1080, \"protocol\": \"socks5\", "
        "\"country\": null, \"country_code\": null}], "
        "\"aggregations\": {\"by_port\": [{\"port\": 80, \"count\": 1}],"
        " \"s\": \"]]]}}}\"}}",
        "R 1 http://159.112.235.140:80 ds=-1 u=- p=- src=user "
        "ft=1787423186792 ttl=-1 c=US a=- lat=7268 h=healthy ut=- pt=-\n"
        "R 2 socks5://1.2.3.4:1080 ds=-1 u=- p=- src=- ft=-1 ttl=-1 "
        "c=- a=- lat=-1 h=- ut=- pt=-\n");
}
END_TEST

START_TEST(warm_json_bad_documents)
{
    static const struct {
        const char *in;
        const char *want;
    } cases[] = {
        {"", "X -22 empty JSON document\n"},
        {"  \n ", "X -22 empty JSON document\n"},
        {"\"a:1\"", "X -22 a JSON document must be an array or an object\n"},
        {"42", "X -22 a JSON document must be an array or an object\n"},
        {"{}", "X -22 JSON object has no \"proxies\" member\n"},
        {"{\"proxy_url\":\"a:1\"}",
         "X -22 JSON object has no \"proxies\" member\n"},
        {"{\"proxies\": 5}",
         "X -22 \"proxies\" must be an array or an object\n"},
        {"[\"a:1\"", "R 1 a:1 ds=0 u=- p=- src=- ft=-1 ttl=-1 c=- a=- lat=-1 "
                     "h=- ut=- pt=-\nX -22 truncated JSON document\n"},
        {"[\"a:1", "X -22 truncated JSON document\n"},
        {"[\"a:1\"] x", "R 1 a:1 ds=0 u=- p=- src=- ft=-1 ttl=-1 c=- a=- "
                        "lat=-1 h=- ut=- pt=-\nX -22 trailing data after the "
                        "JSON document\n"},
        {"[\"a:1\"][]", "R 1 a:1 ds=0 u=- p=- src=- ft=-1 ttl=-1 c=- a=- "
                        "lat=-1 h=- ut=- pt=-\nX -22 trailing data after the "
                        "JSON document\n"},
        {"[\"a:1\" \"b:2\"]",
         "R 1 a:1 ds=0 u=- p=- src=- ft=-1 ttl=-1 c=- a=- lat=-1 h=- ut=- "
         "pt=-\nX -22 malformed JSON: expected ',' or a closing bracket\n"},
        {"[,]", "X -22 malformed JSON: a value is missing\n"},
        {"[\"a:1\",]", "R 1 a:1 ds=0 u=- p=- src=- ft=-1 ttl=-1 c=- a=- "
                       "lat=-1 h=- ut=- pt=-\nX -22 malformed JSON: a value "
                       "is missing\n"},
        {"[\"a:1\"}", "R 1 a:1 ds=0 u=- p=- src=- ft=-1 ttl=-1 c=- a=- "
                      "lat=-1 h=- ut=- pt=-\nX -22 malformed JSON: expected "
                      "',' or a closing bracket\n"},
        {"{\"a\" 1}", "X -22 malformed JSON: expected ':'\n"},
        {"{1:2}", "X -22 malformed JSON: expected a member name\n"},
        {"{\"a\":1,}", "X -22 malformed JSON: expected a member name\n"},
        {"{\"proxies\":[]", "X -22 truncated JSON document\n"},
        {"{\"proxies\":[]]", "X -22 malformed JSON: expected ',' or a "
                             "closing bracket\n"},
        {"{\"pro\\u0078ies\":[\"a:1\"]}",
         "X -22 JSON object has no \"proxies\" member\n"},
        {"{\"proxies_but_a_much_longer_member_name\":[\"a:1\"]}",
         "X -22 JSON object has no \"proxies\" member\n"},
        {"{\"proxies\":{}}", ""},
        {"{\"proxies\":{\"http\":5,\"socks4\":[\"a:1\"]}}",
         "E 1 a protocol list in \"proxies\" must be an array (skipped)\n"
         "R 1 a:1 ds=2 u=- p=- src=- ft=-1 ttl=-1 c=- a=- lat=-1 h=- ut=- "
         "pt=-\n"},
    };
    size_t i;

    for (i = 0; i < SVC_ARRAY_LEN(cases); i++)
        expect_log(FORMATS_JSON, cases[i].in, cases[i].want);
}
END_TEST

START_TEST(warm_json_element_limits)
{
    /* An element over the cap is an error for that element only; nesting
     * depth inside an element or a skipped member is not limited. */
    char *big = long_line(FORMATS_LINE_MAX, "[\"a:1\", \"", "\", \"b:2\"]");
    char *fits = long_line(FORMATS_LINE_MAX - 2, "[\"", "\"]");
    char *deep = malloc(300100);
    size_t n = 0, i;
    char *got;

    got = parse_all_ways(FORMATS_JSON, big, strlen(big));
    ck_assert_str_eq(got, "R 1 a:1 ds=0 u=- p=- src=- ft=-1 ttl=-1 c=- a=- "
                          "lat=-1 h=- ut=- pt=-\n"
                          "E 2 element too long\n"
                          "R 3 b:2 ds=0 u=- p=- src=- ft=-1 ttl=-1 c=- a=- "
                          "lat=-1 h=- ut=- pt=-\n");
    free(got);
    got = parse_log(FORMATS_JSON, fits, strlen(fits));
    ck_assert_uint_eq(strncmp(got, "R 1 aaaa", 8), 0);
    free(got);

    /* jansson's own depth limit protects the element parse. */
    for (i = 0; i < 30000; i++)
        deep[i] = '[';
    got = parse_log(FORMATS_JSON, deep, 30000);
    ck_assert_str_eq(got, "X -22 truncated JSON document\n");
    free(got);
    for (i = 0; i < 30000; i++)
        deep[30000 + i] = ']';
    got = parse_log(FORMATS_JSON, deep, 60000);
    ck_assert_str_eq(got, "E 1 invalid JSON element\n");
    free(got);
    {
        struct entry *d = NULL;
        const char *why = NULL;
        ck_assert_int_eq(formats_entry_from_line(deep, 60000, &d, NULL, &why),
                         -EBADMSG);
        ck_assert_str_eq(why, "bad json");
    }

    n += (size_t)snprintf(deep, 100, "{\"metadata\":");
    for (i = 0; i < 100000; i++)
        deep[n++] = '[';
    for (i = 0; i < 100000; i++)
        deep[n++] = ']';
    n += (size_t)snprintf(deep + n, 100, ",\"proxies\":[[[[[[]]]]]]}");
    got = parse_all_ways(FORMATS_JSON, deep, n);
    ck_assert_str_eq(got, "E 1 expected a proxy URL string or an object\n");
    free(got);
    free(deep);
    free(big);
    free(fits);
}
END_TEST

/* ---------------------------------------------------------------------- */
/* Warm: CSV. */

START_TEST(warm_csv)
{
    expect_log(FORMATS_CSV,
               "\n"
               "Source, PROXY_URL ,username,password,country,anonymity,"
               "latency_ms,ttl_seconds,fetch_time,health_status,extra\r\n"
               "s1,http://1.2.3.4:80,u,SECRET,de,elite,12.6,60,"
               "2026-01-02T03:04:05Z,healthy,x\r\n"
               "\"s,2\",\"5.6.7.8:81\",\"a \"\"q\"\" b\",,,,,,,,\r\n"
               "\r\n"
               "s3,a:1,,,,,,,,\n"
               "s4,a:1,,,,,,,,,,\n"
               "s5,a:1,,,,,abc,,,,\n"
               "s6,a:1,,,,,,-1,,,\n"
               "s7,a:1,,,,,,,yesterday,,\n"
               "\"s8,a:1,,,,,,,,,\n"
               "\"s9\"x,a:1,,,,,,,,,\n"
               "s10,,,,,,,,,,\n"
               "  s11  ,  \" b:2 \"  ,,,,,,,,,\n",
               "R 3 http://1.2.3.4:80 ds=-1 u=u p=SECRET src=s1 "
               "ft=1767323045000 ttl=60 c=de a=elite lat=13 h=healthy ut=- "
               "pt=-\n"
               "R 4 5.6.7.8:81 ds=0 u=a \"q\" b p=- src=s,2 ft=-1 ttl=-1 c=- "
               "a=- lat=-1 h=- ut=- pt=-\n"
               "E 6 wrong number of columns (expected 11, got 10)\n"
               "E 7 wrong number of columns (expected 11, got 12)\n"
               "E 8 \"latency_ms\": must be a number >= 0\n"
               "E 9 \"ttl_seconds\": must be an integer >= 0\n"
               "E 10 \"fetch_time\": must be an RFC 3339 time\n"
               "E 11 bad CSV quoting\n"
               "E 12 bad CSV quoting\n"
               "E 13 missing proxy_url (or host and port)\n"
               "R 14  b:2  ds=0 u=- p=- src=s11 ft=-1 ttl=-1 c=- a=- lat=-1 "
               "h=- ut=- pt=-\n");
    expect_log(FORMATS_CSV,
               "ip,port,protocol,country_code,country,response_time,status,"
               "last_checked\n"
               "1.2.3.4,80,,US,United States,7268.39,healthy,"
               "2026-08-22T18:26:26.792266\n"
               "5.6.7.8,1080,socks5,,,,,\n"
               "2001:db8::2,3128,https,,,,,\n"
               "9.9.9.9,0,,,,,,\n"
               "9.9.9.9,70000,,,,,,\n"
               ",80,,,,,,\n",
               "R 2 1.2.3.4:80 ds=0 u=- p=- src=- ft=1787423186792 ttl=-1 "
               "c=US a=- lat=7268 h=healthy ut=- pt=-\n"
               "R 3 socks5://5.6.7.8:1080 ds=-1 u=- p=- src=- ft=-1 ttl=-1 "
               "c=- a=- lat=-1 h=- ut=- pt=-\n"
               "R 4 https://[2001:db8::2]:3128 ds=-1 u=- p=- src=- ft=-1 "
               "ttl=-1 c=- a=- lat=-1 h=- ut=- pt=-\n"
               "E 5 \"port\": must be 1..65535\n"
               "E 6 \"port\": must be 1..65535\n"
               "E 7 missing proxy_url (or host and port)\n");
    /* url + protocol for bare URLs; embedded newlines do not crash. */
    expect_log(FORMATS_CSV,
               "url,scheme\n"
               "a:1,socks4\n"
               "b:2,gopher\n"
               "\"c:3\nd:4\",http\n",
               "R 2 a:1 ds=2 u=- p=- src=- ft=-1 ttl=-1 c=- a=- lat=-1 h=- "
               "ut=- pt=-\n"
               "E 3 \"protocol\": unknown protocol\n"
               "E 4 bad CSV quoting\n"
               "E 5 bad CSV quoting\n");
}
END_TEST

START_TEST(warm_csv_bad_headers)
{
    expect_log(FORMATS_CSV, "host,source\na,b\n",
               "X -22 CSV header needs a proxy_url (or url) column, or host "
               "(or ip) and port columns\n");
    expect_log(FORMATS_CSV, "", "X -22 CSV header row missing\n");
    expect_log(FORMATS_CSV, "\n\n", "X -22 CSV header row missing\n");
    expect_log(FORMATS_CSV, "\"url,x\n", "X -22 CSV header has bad quoting\n");
    {
        /* More than 256 columns. */
        struct sbuf b = {NULL, 0, 0};
        int i;
        char *got;

        for (i = 0; i < 300; i++)
            sb_printf(&b, "c%d,", i);
        sb_printf(&b, "url\n");
        got = parse_log(FORMATS_CSV, b.p, b.len);
        ck_assert_str_eq(got, "X -22 CSV header has too many columns\n");
        free(got);
        free(b.p);
    }
    {
        char *hdr = long_line(FORMATS_LINE_MAX + 10, "url,", "\na:1\n");
        char *got = parse_all_ways(FORMATS_CSV, hdr, strlen(hdr));
        ck_assert_str_eq(got, "X -22 CSV header line too long\n");
        free(got);
        free(hdr);
    }
}
END_TEST

/* ---------------------------------------------------------------------- */
/* Warm: AUTO detection. */

START_TEST(warm_auto)
{
    static const struct {
        const char *in;
        enum formats_kind same_as;
    } cases[] = {
        {"1.2.3.4:80\n# SOCKS5\n5.6.7.8:1\n", FORMATS_TEXT},
        {"\n\n# HTTP Proxies (1)\n1.2.3.4:80\n", FORMATS_TEXT},
        {"http://a,b@c:1\n", FORMATS_TEXT},
        {"proxy_url,source\na:1,s\n", FORMATS_CSV},
        {"\r\n  Host , Port\r\n1.2.3.4,80\r\n", FORMATS_CSV},
        {"\"ip\",\"port\"\n1.2.3.4,80\n", FORMATS_CSV},
        {"\"ip\",port\r\n1.2.3.4,80\n", FORMATS_CSV},
        {"\"ip,port\"\n\"a:1\"\n", FORMATS_JSONL},
        {"\"a:1\"\n", FORMATS_JSONL},
        {"{\"proxy_url\":\"a:1\"}\n{\"url\":\"b:2\"}\n", FORMATS_JSONL},
        {"\n{\"proxy_url\":\"a:1\"}", FORMATS_JSONL},
        {"\"a:1\"\n\"b:2\"\n", FORMATS_JSONL},
        {"[\"a:1\",\n\"b:2\"]", FORMATS_JSON},
        {"[\"a:1\"]", FORMATS_JSON},
        {"\n\n  [\n\"a:1\"]\n", FORMATS_JSON},
        {"{\n\"proxies\":{\"socks5\":[\"a:1\"]}}\n", FORMATS_JSON},
        {"{\"proxies\":{\"socks5\":[\"a:1\"]}}", FORMATS_JSON},
        {"{\"proxies\":[{\"ip\":\"1.2.3.4\",\"port\":1}]}\n", FORMATS_JSON},
        {"{\"a\":1, \"proxies\":[", FORMATS_JSON},
        {"{ not json\n", FORMATS_JSON},
        {"", FORMATS_TEXT},
        {"   \n\t\n", FORMATS_TEXT},
    };
    size_t i;

    for (i = 0; i < SVC_ARRAY_LEN(cases); i++) {
        size_t len = strlen(cases[i].in);
        char *want = parse_log(cases[i].same_as, cases[i].in, len);
        char *got = parse_all_ways(FORMATS_AUTO, cases[i].in, len);

        ck_assert_msg(strcmp(got, want) == 0,
                      "case %zu:\n%s\ngot:\n%s\nwant:\n%s", i, cases[i].in, got,
                      want);
        free(got);
        free(want);
    }

    /* A UTF-8 byte order mark is dropped, for every kind. */
    {
        static const char bom_text[] = "\xef\xbb\xbf"
                                       "1.2.3.4:80\n";
        static const char bom_json[] = "\xef\xbb\xbf[\"a:1\"]";
        static const char bom_csv[] = "\xef\xbb\xbfurl\na:1\n";
        static const char not_bom[] = "\xef\xbbx:1\n";
        char *got;

        got = parse_all_ways(FORMATS_AUTO, bom_text, sizeof bom_text - 1);
        ck_assert_str_eq(got, "R 1 1.2.3.4:80 ds=0 u=- p=- src=- ft=-1 "
                              "ttl=-1 c=- a=- lat=-1 h=- ut=- pt=-\n");
        free(got);
        got = parse_all_ways(FORMATS_AUTO, bom_json, sizeof bom_json - 1);
        ck_assert_str_eq(got, "R 1 a:1 ds=0 u=- p=- src=- ft=-1 ttl=-1 c=- "
                              "a=- lat=-1 h=- ut=- pt=-\n");
        free(got);
        got = parse_all_ways(FORMATS_CSV, bom_csv, sizeof bom_csv - 1);
        ck_assert_str_eq(got, "R 2 a:1 ds=0 u=- p=- src=- ft=-1 ttl=-1 c=- "
                              "a=- lat=-1 h=- ut=- pt=-\n");
        free(got);
        got = parse_all_ways(FORMATS_TEXT, not_bom, sizeof not_bom - 1);
        ck_assert_str_eq(got, "R 1 \xef\xbbx:1 ds=0 u=- p=- src=- ft=-1 "
                              "ttl=-1 c=- a=- lat=-1 h=- ut=- pt=-\n");
        free(got);
        got = parse_all_ways(FORMATS_TEXT, "\xef", 1);
        ck_assert_str_eq(got, "R 1 \xef ds=0 u=- p=- src=- ft=-1 "
                              "ttl=-1 c=- a=- lat=-1 h=- ut=- pt=-\n");
        free(got);
    }

    /* AUTO with a huge first line: JSON if it starts with '{', else text. */
    {
        char *obj = long_line(FORMATS_LINE_MAX * 2,
                              "{\"proxies\":[\"a:1\"],\"pad\":\"", "\"}\n");
        char *txt = long_line(FORMATS_LINE_MAX * 2, "", "\nb:2\n");
        char *got;

        got = parse_all_ways(FORMATS_AUTO, obj, strlen(obj));
        ck_assert_str_eq(got, "R 1 a:1 ds=0 u=- p=- src=- ft=-1 ttl=-1 c=- "
                              "a=- lat=-1 h=- ut=- pt=-\n");
        free(got);
        got = parse_all_ways(FORMATS_AUTO, txt, strlen(txt));
        ck_assert_str_eq(got, "E 1 line too long\n"
                              "R 2 b:2 ds=0 u=- p=- src=- ft=-1 ttl=-1 c=- "
                              "a=- lat=-1 h=- ut=- pt=-\n");
        free(got);
        free(obj);
        free(txt);
    }
}
END_TEST

/* ---------------------------------------------------------------------- */
/* Warm: random inputs never crash, and chunking never changes results. */

START_TEST(warm_fuzz)
{
    static const char *const seeds[] = {
        "# SOCKS4 x\n1.2.3.4:80\r\nhttp://u:SECRET@h:1\n\n#c\n",
        "url,port,ip,source\n\"a:1\",2,\"x\"\"y\",s\n,,,\n",
        "{\"proxy_url\":\"a:1\",\"ttl_seconds\":5,\"port\":7}\n\"b:2\"\n[1]\n",
        "[\"a:1\",{\"ip\":\"1.1.1.1\",\"port\":80,\"protocol\":\"http\"},"
        "{\"proxy_url\":\"b:2\",\"latency_ms\":1.5}]",
        "{\"metadata\":{\"x\":[1,{\"y\":\"]}\"}]},\"proxies\":{\"http\":"
        "[\"a:1\"],\"socks5\":[\"b:2\"]}}",
        "{\"total\":1,\"proxies\":[{\"ip\":\"1.2.3.4\",\"port\":80,"
        "\"last_checked\":\"2026-08-22T18:26:26.1\"}],\"aggregations\":{}}",
    };
    static const char alpha[] = "{}[]\":,\\ \n\r#/:@abc019";
    char buf[1024];
    size_t it;

    rng_state = 0xfeedbeefu;
    for (it = 0; it < 6000; it++) {
        const char *seed = seeds[it % SVC_ARRAY_LEN(seeds)];
        size_t n = strlen(seed), k, muts = rng_below(5);
        enum formats_kind kind = (enum formats_kind)rng_below(5);
        struct collect a, b;
        int ra, rb;

        memcpy(buf, seed, n);
        if (it % 7 == 6) {
            n = rng_below(sizeof buf);
            for (k = 0; k < n; k++)
                buf[k] = rng_below(3) ? alpha[rng_below(sizeof alpha - 1)]
                                      : (char)rng();
        } else {
            for (k = 0; k < muts && n > 0; k++) {
                size_t at = rng_below(n);
                if (rng_below(3) == 0 && n < sizeof buf - 1) {
                    memmove(buf + at + 1, buf + at, n - at);
                    n++;
                }
                buf[at] = rng_below(2) ? alpha[rng_below(sizeof alpha - 1)]
                                       : (char)rng();
            }
        }
        memset(&a, 0, sizeof a);
        memset(&b, 0, sizeof b);
        ra = parse_into(kind, buf, n, CHUNK_WHOLE, &a);
        rb = parse_into(kind, buf, n, it % 2 ? CHUNK_BYTES : CHUNK_RANDOM, &b);
        ck_assert_int_eq(ra, rb);
        ck_assert(ra == 0 || ra == -EINVAL);
        ck_assert_str_eq(a.log.p ? a.log.p : "", b.log.p ? b.log.p : "");
        free(a.log.p);
        free(b.log.p);
    }
}
END_TEST

/* ---------------------------------------------------------------------- */
/* The real proxy lists (shared/data/proxylists). */

/* Read gzip-compressed file name of the proxylists directory; NULL (and a
 * message) if it is not there. */
static char *read_gz(const char *name, size_t *len)
{
    const char *dir = getenv("PROXYCACHE_PROXYLISTS_DIR");
    char path[1024], cmd[1200];
    struct sbuf b = {NULL, 0, 0};
    char chunk[65536];
    size_t n;
    FILE *f;

    if (dir)
        snprintf(path, sizeof path, "%s/%s", dir, name);
    else
        snprintf(path, sizeof path, "%s/../shared/data/proxylists/%s",
                 testutil_srcdir(), name);
    if (access(path, R_OK) != 0) {
        fprintf(stderr, "check_formats: %s absent, test skipped\n", path);
        return NULL;
    }
    snprintf(cmd, sizeof cmd, "gzip -dc '%s'", path);
    f = popen(cmd, "r");
    ck_assert_ptr_nonnull(f);
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        sb_add(&b, chunk, n);
    ck_assert_int_eq(pclose(f), 0);
    *len = b.len;
    return b.p;
}

/* Every record's URL must pass entry_url_parse; count schemes. */
struct real_stats {
    size_t records, errors;
    size_t scheme[4];
    size_t with_time, with_latency, with_country, healthy;
    struct sbuf urls; /* normalised URLs, one per line */
};

static int real_record(void *arg, const struct formats_record *r)
{
    struct real_stats *s = arg;
    struct entry_url u;
    const char *why = NULL;

    ck_assert_msg(entry_url_parse(r->proxy_url, r->default_scheme, &u, &why) ==
                      0,
                  "line %zu: %s: %s", r->line, r->proxy_url, why);
    s->records++;
    s->scheme[u.scheme]++;
    sb_printf(&s->urls, "%s\n", u.normalised);
    entry_url_fini(&u);
    s->with_time += r->fetch_time > 0;
    s->with_latency += r->latency_ms >= 0;
    if (r->country) {
        char cc[3];
        ck_assert(entry_country_parse(r->country, cc));
        s->with_country++;
    }
    s->healthy += r->health && strcmp(r->health, "healthy") == 0;
    return 0;
}

static int real_error(void *arg, size_t line, const char *reason)
{
    struct real_stats *s = arg;

    s->errors++;
    ck_abort_msg("unexpected error at %zu: %s", line, reason);
    return 0;
}

static void parse_real(enum formats_kind kind, const char *data, size_t len,
                       enum chunking how, struct real_stats *s)
{
    struct formats_warm_cb cb = {real_record, real_error, s};
    struct formats_warm *p = NULL;
    size_t off = 0;

    memset(s, 0, sizeof *s);
    ck_assert_int_eq(formats_warm_new(kind, &cb, &p), 0);
    while (off < len) {
        size_t n = how == CHUNK_WHOLE ? len - off : 1 + rng_below(16384);
        if (n > len - off)
            n = len - off;
        ck_assert_int_eq(formats_warm_feed(p, data + off, n), 0);
        off += n;
    }
    ck_assert_msg(formats_warm_finish(p) == 0, "finish: %s",
                  formats_warm_error(p));
    formats_warm_free(p);
}

static void check_counts(const struct real_stats *s)
{
    ck_assert_uint_eq(s->records, 6754);
    ck_assert_uint_eq(s->errors, 0);
    ck_assert_uint_eq(s->scheme[ENTRY_SCHEME_HTTP], 6642);
    ck_assert_uint_eq(s->scheme[ENTRY_SCHEME_HTTPS], 56);
    ck_assert_uint_eq(s->scheme[ENTRY_SCHEME_SOCKS4], 28);
    ck_assert_uint_eq(s->scheme[ENTRY_SCHEME_SOCKS5], 28);
}

START_TEST(real_all_txt_and_proxies_json)
{
    size_t tlen = 0, jlen = 0;
    char *txt = read_gz("all.txt.gz", &tlen);
    char *json = read_gz("proxies.json.gz", &jlen);
    struct real_stats a, b;

    if (!txt || !json) {
        free(txt);
        free(json);
        return;
    }
    ck_assert_uint_eq(tlen, 117215);
    ck_assert_uint_eq(jlen, 178218);
    rng_state = 42;

    parse_real(FORMATS_TEXT, txt, tlen, CHUNK_WHOLE, &a);
    check_counts(&a);
    free(a.urls.p);
    parse_real(FORMATS_AUTO, txt, tlen, CHUNK_RANDOM, &a);
    check_counts(&a);

    parse_real(FORMATS_JSON, json, jlen, CHUNK_WHOLE, &b);
    check_counts(&b);
    free(b.urls.p);
    parse_real(FORMATS_AUTO, json, jlen, CHUNK_RANDOM, &b);
    check_counts(&b);
    /* Same content and order in both files. */
    ck_assert_uint_eq(a.urls.len, b.urls.len);
    ck_assert(memcmp(a.urls.p, b.urls.p, a.urls.len) == 0);
    free(a.urls.p);
    free(b.urls.p);

    /* One byte at a time, too. */
    {
        char *w1 = parse_log(FORMATS_TEXT, txt, tlen);
        struct collect c;

        memset(&c, 0, sizeof c);
        parse_into(FORMATS_TEXT, txt, tlen, CHUNK_BYTES, &c);
        ck_assert(strcmp(w1, c.log.p) == 0);
        free(c.log.p);
        free(w1);
    }
    free(txt);
    free(json);
}
END_TEST

START_TEST(real_proxies_rich_json)
{
    size_t len = 0;
    char *json = read_gz("proxies-rich.json.gz", &len);
    struct real_stats s;
    char *whole;

    if (!json)
        return;
    ck_assert_uint_eq(len, 2216178);
    rng_state = 7;
    parse_real(FORMATS_JSON, json, len, CHUNK_WHOLE, &s);
    ck_assert_uint_eq(s.records, 6699);
    ck_assert_uint_eq(s.scheme[ENTRY_SCHEME_HTTP], 6642);
    ck_assert_uint_eq(s.scheme[ENTRY_SCHEME_HTTPS], 1);
    ck_assert_uint_eq(s.scheme[ENTRY_SCHEME_SOCKS4], 28);
    ck_assert_uint_eq(s.scheme[ENTRY_SCHEME_SOCKS5], 28);
    ck_assert_uint_eq(s.with_time, 6699);
    ck_assert_uint_eq(s.with_latency, 6699);
    /* country_code is null in 1,690 records and "" in 2,386. */
    ck_assert_uint_eq(s.with_country, 6699 - 1690 - 2386);
    ck_assert_uint_eq(s.healthy, 6699);
    free(s.urls.p);
    parse_real(FORMATS_AUTO, json, len, CHUNK_RANDOM, &s);
    ck_assert_uint_eq(s.records, 6699);
    free(s.urls.p);

    /* Chunking does not change a single byte of the results. */
    whole = parse_log(FORMATS_JSON, json, len);
    {
        struct collect c;

        memset(&c, 0, sizeof c);
        parse_into(FORMATS_AUTO, json, len, CHUNK_BYTES, &c);
        ck_assert(strcmp(whole, c.log.p) == 0);
        free(c.log.p);
    }
    free(whole);
    free(json);
}
END_TEST

/* The fixtures under tests/unit/data/formats parse as described. */
static char *read_fixture(const char *name, size_t *len)
{
    char path[1024];
    struct sbuf b = {NULL, 0, 0};
    char chunk[4096];
    size_t n;
    FILE *f;

    snprintf(path, sizeof path, "%s/tests/unit/data/formats/%s",
             testutil_srcdir(), name);
    f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "fixture %s missing", path);
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        sb_add(&b, chunk, n);
    fclose(f);
    *len = b.len;
    return b.p ? b.p : strdup("");
}

START_TEST(fixtures)
{
    static const struct {
        const char *input, *expected;
        enum formats_kind kind;
    } cases[] = {
        {"mixed.txt", "mixed.txt.expected", FORMATS_AUTO},
        {"records.csv", "records.csv.expected", FORMATS_AUTO},
        {"records.jsonl", "records.jsonl.expected", FORMATS_AUTO},
        {"reference.json", "reference.json.expected", FORMATS_AUTO},
        {"export.jsonl", "export.jsonl.expected", FORMATS_JSONL},
    };
    size_t i;

    for (i = 0; i < SVC_ARRAY_LEN(cases); i++) {
        size_t ilen, elen;
        char *in = read_fixture(cases[i].input, &ilen);
        char *want = read_fixture(cases[i].expected, &elen);
        char *got = parse_all_ways(cases[i].kind, in, ilen);

        ck_assert_msg(strcmp(got, want) == 0, "%s:\ngot:\n%s\nwant:\n%s",
                      cases[i].input, got, want);
        free(got);
        free(want);
        free(in);
    }
}
END_TEST

/* An export line read through the warm JSONL parser carries the tokens. */
START_TEST(export_lines_as_warm_records)
{
    struct entry *e = make_entry("socks5://example.com:1080", true);
    char *line, *got;
    size_t len;

    ck_assert_int_eq(formats_entry_to_line(e, &line, &len), 0);
    got = parse_all_ways(FORMATS_AUTO, line, len);
    ck_assert_str_eq(got,
                     "R 1 socks5://example.com:1080 ds=-1 u=- p=- "
                     "src=feed \"A\" \\ b/c ft=1764064800123 ttl=3600 c=DE "
                     "a=elite lat=123 h=unhealthy ut=" TOK_U " pt=" TOK_P "\n");
    free(got);
    free(line);
    entry_unref(e);
}
END_TEST

static Suite *formats_suite(void)
{
    Suite *s = suite_create("formats");
    TCase *tc;

#define ADD(name, fn)                                                          \
    do {                                                                       \
        tc = tcase_create(name);                                               \
        tcase_set_timeout(tc, 120);                                            \
        tcase_add_test(tc, fn);                                                \
        suite_add_tcase(s, tc);                                                \
    } while (0)

    ADD("line_round_trip_full", line_round_trip_full);
    ADD("line_round_trip_minimal", line_round_trip_minimal);
    ADD("line_round_trip_variants", line_round_trip_variants);
    ADD("line_escaping", line_escaping);
    ADD("line_huge_values", line_huge_values);
    ADD("line_corrupt", line_corrupt);
    ADD("line_fuzz", line_fuzz);
    ADD("tombstones", tombstones);
    ADD("content_types", content_types);
    ADD("warm_text", warm_text);
    ADD("warm_line_limits", warm_line_limits);
    ADD("warm_stop_and_sticky", warm_stop_and_sticky);
    ADD("warm_jsonl", warm_jsonl);
    ADD("warm_json_array", warm_json_array);
    ADD("warm_json_documents", warm_json_documents);
    ADD("warm_json_bad_documents", warm_json_bad_documents);
    ADD("warm_json_element_limits", warm_json_element_limits);
    ADD("warm_csv", warm_csv);
    ADD("warm_csv_bad_headers", warm_csv_bad_headers);
    ADD("warm_auto", warm_auto);
    ADD("warm_fuzz", warm_fuzz);
    ADD("export_lines_as_warm_records", export_lines_as_warm_records);
    ADD("fixtures", fixtures);
    ADD("real_all_txt_and_proxies_json", real_all_txt_and_proxies_json);
    ADD("real_proxies_rich_json", real_proxies_rich_json);
#undef ADD
    return s;
}

int main(void)
{
    return testutil_run(formats_suite());
}
