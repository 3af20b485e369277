/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of storage/entry (URL parsing and normalisation, key
 * derivation, the refcounted model, validation of entries read back from
 * disk) and of common/procstat (a sanity TCase).
 *
 * The URL cases are a table (curl's data-driven style): each row is an
 * input, the default scheme, and either the expected normalised form and
 * credentials or a fragment of the expected reason.
 */
#include "config.h"

#include "common/procstat.h"
#include "storage/entry.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tests/unit/testutil.h"

/* --- URL parsing ---------------------------------------------------------- */

struct url_case {
    const char *in;
    int def;          /* default scheme, -1 for none */
    const char *norm; /* expected normalised URL, NULL if it must fail */
    const char *user; /* expected username (or reason fragment if failing) */
    const char *pass;
};

#define OK(in, def, norm, user, pass)                                          \
    {                                                                          \
        in, def, norm, user, pass                                              \
    }
#define BAD(in, def, why)                                                      \
    {                                                                          \
        in, def, NULL, why, NULL                                               \
    }

static const struct url_case url_cases[] = {
    OK("http://1.2.3.4:8080", -1, "http://1.2.3.4:8080", NULL, NULL),
    OK("HTTP://User:Pa%40ss@Example.COM:8080/", -1, "http://example.com:8080",
       "User", "Pa@ss"),
    OK("socks5://[::1]:1080", -1, "socks5://[::1]:1080", NULL, NULL),
    /* IPv6 is canonicalised (RFC 5952): one proxy, one key. */
    OK("socks5://[0:0:0:0:0:0:0:1]:1080", -1, "socks5://[::1]:1080", NULL, NULL),
    OK("http://[2001:DB8:0::1]:8080", -1, "http://[2001:db8::1]:8080", NULL, NULL),
    OK("SOCKS4://[2001:DB8::AbC]:1080", -1, "socks4://[2001:db8::abc]:1080",
       NULL, NULL),
    OK("[::ffff:1.2.3.4]:3128", ENTRY_SCHEME_HTTP,
       "http://[::ffff:1.2.3.4]:3128", NULL, NULL),
    OK("HtTpS://proxy-1.Example.org:443", -1, "https://proxy-1.example.org:443",
       NULL, NULL),
    OK("http://u:p@ss@host.example:3128", -1, "http://host.example:3128", "u",
       "p@ss"),
    OK("http://user@host:1", -1, "http://host:1", "user", NULL),
    OK("http://user:@host:1", -1, "http://host:1", "user", NULL),
    OK("http://a%3Ab:c%3a%2F@h:1", -1, "http://h:1", "a:b", "c:/"),
    OK("http://u:p:q@h:1", -1, "http://h:1", "u", "p:q"),
    OK("http://1.2.3.4:65535", -1, "http://1.2.3.4:65535", NULL, NULL),
    OK("http://0.0.0.0:1", -1, "http://0.0.0.0:1", NULL, NULL),
    OK("http://255.255.255.255:1", -1, "http://255.255.255.255:1", NULL, NULL),
    OK("http://h:0080", -1, "http://h:80", NULL, NULL),
    OK("http://localhost:80/", -1, "http://localhost:80", NULL, NULL),
    OK("http://xn--bcher-kva.example:80", -1, "http://xn--bcher-kva.example:80",
       NULL, NULL),
    OK("http://1.2.3.4a:80", -1, "http://1.2.3.4a:80", NULL, NULL),
    OK("1.2.3.4:8080", ENTRY_SCHEME_HTTP, "http://1.2.3.4:8080", NULL, NULL),
    OK("user:pass@1.2.3.4:8080", ENTRY_SCHEME_SOCKS5, "socks5://1.2.3.4:8080",
       "user", "pass"),
    OK("https://1.2.3.4:8080", ENTRY_SCHEME_SOCKS5, "https://1.2.3.4:8080",
       NULL, NULL),

    BAD("http://1.2.3.4:0", -1, "port out of range"),
    BAD("http://1.2.3.4:65536", -1, "port out of range"),
    BAD("http://1.2.3.4:99999999999999999999999", -1, "port out of range"),
    BAD("http://h:80x", -1, "invalid port"),
    BAD("http://h:-1", -1, "invalid port"),
    BAD("http://h:+80", -1, "invalid port"),
    BAD("1.2.3.4:8080", -1, "missing scheme"),
    BAD("://1.2.3.4:8080", ENTRY_SCHEME_HTTP, "missing scheme"),
    BAD("ftp://h:21", -1, "unsupported scheme"),
    BAD("ftp://h:21", ENTRY_SCHEME_HTTP, "unsupported scheme"),
    BAD("httpx://h:21", -1, "unsupported scheme"),
    BAD("1http://h:21", -1, "unsupported scheme"),
    BAD("http://:80", -1, "empty host"),
    BAD("http://", -1, "empty host"),
    BAD("http://user:pw@:80", -1, "empty host"),
    BAD("http://h", -1, "missing port"),
    BAD("http://h:", -1, "missing port"),
    BAD("http://h/", -1, "missing port"),
    BAD("http://h:80/path", -1, "unexpected path"),
    BAD("http://h:80//", -1, "unexpected path"),
    BAD("http://h:80?q=1", -1, "unexpected path"),
    BAD("http://h:80#frag", -1, "unexpected path"),
    BAD("http://h:1/x@evil:2", -1, "unexpected path"),
    BAD("http://1.2.3.256:80", -1, "invalid IPv4"),
    BAD("http://01.2.3.4:80", -1, "invalid IPv4"),
    BAD("http://1.2.3:80", -1, "invalid IPv4"),
    BAD("http://1.2.3.4.5:80", -1, "invalid IPv4"),
    BAD("http://1..2.3:80", -1, "invalid IPv4"),
    BAD("http://1234.2.3.4:80", -1, "invalid IPv4"),
    BAD("http://.1.2.3:80", -1, "invalid IPv4"),
    BAD("http://-a.com:80", -1, "invalid host"),
    BAD("http://a-.com:80", -1, "invalid host"),
    BAD("http://a..b:80", -1, "invalid host"),
    BAD("http://a.b.:80", -1, "invalid host"),
    BAD("http://.a.b:80", -1, "invalid host"),
    BAD("http://a_b:80", -1, "invalid host"),
    BAD("http://a.-b:80", -1, "invalid host"),
    BAD("http://h\xc3\xa9:80", -1, "invalid host"),
    BAD("http://[::1:80", -1, "invalid IPv6"),
    BAD("http://[::g]:80", -1, "invalid IPv6"),
    BAD("http://[]:80", -1, "invalid IPv6"),
    BAD("http://[1.2.3.4]:80", -1, "invalid IPv6"),
    BAD("http://[fe80::1%25eth0]:80", -1, "invalid IPv6"),
    BAD("http://[0000:0000:0000:0000:0000:0000:0000:0000:1]:80", -1,
        "invalid IPv6"),
    BAD("http://[0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:1]:80", -1,
        "invalid IPv6"),
    BAD("http://[::1]", -1, "missing port"),
    BAD("http://[::1]x:80", -1, "invalid host"),
    BAD("http://::1:80", -1, "invalid host"),
    BAD("http://h :80", -1, "invalid character"),
    BAD("http://h:80\n", -1, "invalid character"),
    BAD(" http://h:80", -1, "invalid character"),
    BAD("http://h\x7f:80", -1, "invalid character"),
    BAD("http://u%zz:p@h:1", -1, "invalid credentials"),
    BAD("http://u:p%4@h:1", -1, "invalid credentials"),
    BAD("http://u:p%@h:1", -1, "invalid credentials"),
    BAD("http://u%00:p@h:1", -1, "invalid credentials"),
    BAD("http://u:p%0a@h:1", -1, "invalid credentials"),
    BAD("http://@h:1", -1, "empty username"),
    BAD("http://:pass@h:1", -1, "empty username"),
    BAD("", -1, "missing URL"),
    BAD("", ENTRY_SCHEME_HTTP, "missing URL"),
};

START_TEST(test_url_table)
{
    const struct url_case *c = &url_cases[_i];
    struct entry_url u;
    const char *reason = NULL;
    int err;

    memset(&u, 0xa5, sizeof u);
    err = entry_url_parse(c->in, c->def, &u, &reason);
    if (c->norm) {
        ck_assert_msg(err == 0, "case %d: \"%s\" rejected: %s", _i, c->in,
                      reason ? reason : "?");
        ck_assert_str_eq(u.normalised, c->norm);
        if (c->user)
            ck_assert_str_eq(u.username, c->user);
        else
            ck_assert_ptr_null(u.username);
        if (c->pass)
            ck_assert_str_eq(u.password, c->pass);
        else
            ck_assert_ptr_null(u.password);
        entry_url_fini(&u);
        ck_assert_ptr_null(u.username);
        entry_url_fini(&u); /* twice is harmless */
    } else {
        ck_assert_msg(err == -EINVAL, "case %d: \"%s\" accepted (%d)", _i,
                      c->in, err);
        ck_assert_ptr_nonnull(reason);
        ck_assert_msg(strstr(reason, c->user) != NULL,
                      "case %d: \"%s\": reason \"%s\", wanted \"%s\"", _i,
                      c->in, reason, c->user);
    }
}
END_TEST

START_TEST(test_url_fields)
{
    struct entry_url u;

    ck_assert_int_eq(entry_url_parse("SOCKS5://A:B@[::1]:1080/", -1, &u, NULL),
                     0);
    ck_assert_int_eq(u.scheme, ENTRY_SCHEME_SOCKS5);
    ck_assert_str_eq(u.host, "[::1]");
    ck_assert_uint_eq(u.port, 1080);
    ck_assert_str_eq(u.username, "A");
    ck_assert_str_eq(u.password, "B");
    entry_url_fini(&u);
    entry_url_fini(NULL);
}
END_TEST

START_TEST(test_url_limits)
{
    char url[ENTRY_URL_MAX + 64];
    char label[80];
    struct entry_url u;
    const char *reason = NULL;
    size_t i, n;

    /* a host of exactly 253 characters in labels of 63 is fine ... */
    n = (size_t)snprintf(url, sizeof url, "http://");
    for (i = 0; i < 3; i++) {
        memset(url + n, 'a', 63);
        n += 63;
        url[n++] = '.';
    }
    memset(url + n, 'b', 253 - 3 * 64);
    n += 253 - 3 * 64;
    snprintf(url + n, sizeof url - n, ":80");
    ck_assert_int_eq(entry_url_parse(url, -1, &u, &reason), 0);
    ck_assert_uint_eq(strlen(u.host), 253);
    entry_url_fini(&u);
    /* ... 254 is not */
    snprintf(url + n, sizeof url - n, "b:80");
    ck_assert_int_eq(entry_url_parse(url, -1, &u, &reason), -EINVAL);
    ck_assert_str_eq(reason, "invalid host");

    /* labels of 63 but not 64 */
    memset(label, 'x', 63);
    label[63] = '\0';
    snprintf(url, sizeof url, "http://%s.com:80", label);
    ck_assert_int_eq(entry_url_parse(url, -1, &u, &reason), 0);
    snprintf(url, sizeof url, "http://%sx.com:80", label);
    ck_assert_int_eq(entry_url_parse(url, -1, &u, &reason), -EINVAL);

    /* too long: ENTRY_URL_MAX - 1 characters fit, ENTRY_URL_MAX do not;
     * the long part is userinfo so that only the length is at stake */
    n = (size_t)snprintf(url, sizeof url, "http://");
    memset(url + n, 'u', ENTRY_URL_MAX - 1 - n - strlen("@h:80"));
    n = ENTRY_URL_MAX - 1 - strlen("@h:80");
    snprintf(url + n, sizeof url - n, "@h:80");
    ck_assert_uint_eq(strlen(url), ENTRY_URL_MAX - 1);
    ck_assert_int_eq(entry_url_parse(url, -1, &u, &reason), 0);
    ck_assert_uint_eq(strlen(u.username), n - strlen("http://"));
    entry_url_fini(&u);
    memmove(url + 8, url + 7, strlen(url + 7) + 1);
    ck_assert_uint_eq(strlen(url), ENTRY_URL_MAX);
    ck_assert_int_eq(entry_url_parse(url, -1, &u, &reason), -EINVAL);
    ck_assert_str_eq(reason, "URL too long");

    /* NULL arguments */
    ck_assert_int_eq(entry_url_parse(NULL, -1, &u, &reason), -EINVAL);
    ck_assert_int_eq(entry_url_parse("http://h:1", -1, NULL, &reason), -EINVAL);
    ck_assert_int_eq(entry_url_parse("nope", -1, &u, NULL), -EINVAL);
    /* a default scheme out of range counts as none */
    ck_assert_int_eq(entry_url_parse("h:1", 7, &u, &reason), -EINVAL);
    ck_assert_str_eq(reason, "missing scheme");
}
END_TEST

START_TEST(test_url_reason_never_quotes)
{
    static const char *const inputs[] = {
        "http://user:s3cr3t@h:99999", "ftp://user:s3cr3t@h:1",
        "http://user:s3cr3t%zz@h:1",  "http://user:s3cr3t@h:1/s3cr3t",
        "http://user:s3cr3t@-h:1",
    };
    struct entry_url u;
    size_t i;

    for (i = 0; i < sizeof inputs / sizeof inputs[0]; i++) {
        const char *reason = NULL;

        ck_assert_int_eq(entry_url_parse(inputs[i], -1, &u, &reason), -EINVAL);
        ck_assert_ptr_nonnull(reason);
        ck_assert_ptr_null(strstr(reason, "s3cr3t"));
        ck_assert_ptr_null(strstr(reason, "user"));
    }
}
END_TEST

/* --- keys ----------------------------------------------------------------- */

START_TEST(test_key_vectors)
{
    /* printf %s '<url>' | sha256sum */
    static const struct {
        const char *url, *key;
    } v[] = {
        {"http://1.2.3.4:8080",
         "fe229370330820fe10388f82e6631a7f920331ee9c111d22de532c49db19b423"},
        {"http://example.com:8080",
         "e0ddde96f675ccf3d1e07e45f995cc890f5c8fe1f5215822dc14863250e05020"},
        {"socks5://[::1]:1080",
         "7a21c30564b8a24db9979b05833187562ad39548aab8890cd462a781fdfb53e2"},
    };
    char key[ENTRY_KEY_LEN + 1];
    struct entry_url u;
    size_t i;

    for (i = 0; i < sizeof v / sizeof v[0]; i++) {
        entry_key_from_normalised(v[i].url, key);
        ck_assert_str_eq(key, v[i].key);
        ck_assert_int_eq(entry_key_valid(key), 1);
    }
    /* the same proxy spelled differently has the same key */
    ck_assert_int_eq(
        entry_url_parse("HTTP://u:p@Example.COM:8080/", -1, &u, NULL), 0);
    entry_key_from_normalised(u.normalised, key);
    ck_assert_str_eq(key, v[1].key);
    entry_url_fini(&u);

    entry_key_from_normalised(NULL, key);
    ck_assert_str_eq(key, "");
}
END_TEST

START_TEST(test_key_valid)
{
    char k[ENTRY_KEY_LEN + 2];

    memset(k, 'a', ENTRY_KEY_LEN);
    k[ENTRY_KEY_LEN] = '\0';
    ck_assert_int_eq(entry_key_valid(k), 1);
    k[10] = '9';
    ck_assert_int_eq(entry_key_valid(k), 1);
    k[10] = 'A';
    ck_assert_int_eq(entry_key_valid(k), 0);
    k[10] = 'g';
    ck_assert_int_eq(entry_key_valid(k), 0);
    k[10] = 'a';
    k[ENTRY_KEY_LEN] = 'a';
    k[ENTRY_KEY_LEN + 1] = '\0';
    ck_assert_int_eq(entry_key_valid(k), 0);
    k[ENTRY_KEY_LEN - 1] = '\0';
    ck_assert_int_eq(entry_key_valid(k), 0);
    ck_assert_int_eq(entry_key_valid(""), 0);
    ck_assert_int_eq(entry_key_valid(NULL), 0);
}
END_TEST

/* --- model ---------------------------------------------------------------- */

#define TOKEN_A "gAAAAABk-_token_A=="
#define TOKEN_B "gAAAAABk-_token_B=="

/* A valid entry for url (already normalised), with or without tokens. */
static struct entry *make_entry(const char *url, int with_tokens)
{
    struct entry *e = entry_new();
    struct entry_url u;

    ck_assert_ptr_nonnull(e);
    ck_assert_int_eq(entry_url_parse(url, -1, &u, NULL), 0);
    ck_assert_int_eq(entry_set_str(&e->proxy_url, u.normalised), 0);
    entry_key_from_normalised(u.normalised, e->key);
    e->scheme = u.scheme;
    entry_url_fini(&u);
    ck_assert_int_eq(entry_set_str(&e->source, "unknown"), 0);
    e->fetch_time = 1764064800000;
    e->ttl_seconds = 3600;
    entry_compute_expiry(e);
    if (with_tokens) {
        ck_assert_int_eq(entry_set_str(&e->username_tok, TOKEN_A), 0);
        ck_assert_int_eq(entry_set_str(&e->password_tok, TOKEN_B), 0);
    }
    return e;
}

START_TEST(test_new_defaults)
{
    struct entry *e = entry_new();

    ck_assert_ptr_nonnull(e);
    ck_assert_int_eq(atomic_load(&e->refs), 1);
    ck_assert_int_eq(e->latency_ms, -1);
    ck_assert_int_eq(e->health, ENTRY_HEALTH_UNKNOWN);
    ck_assert_int_eq(e->anonymity, ENTRY_ANON_NONE);
    ck_assert_ptr_null(e->proxy_url);
    ck_assert_ptr_null(e->username_tok);
    ck_assert_str_eq(e->country, "");
    ck_assert_int_eq(atomic_load(&e->access_count), 0);
    entry_unref(e);
    entry_unref(NULL);
    ck_assert_ptr_null(entry_ref(NULL));
}
END_TEST

START_TEST(test_dup_and_refcount)
{
    struct entry *e = make_entry("socks5://1.2.3.4:1080", 1);
    struct entry *d, *r;

    e->health = ENTRY_HEALTH_HEALTHY;
    e->failure_count = 2;
    e->anonymity = ENTRY_ANON_ELITE;
    e->latency_ms = 42;
    memcpy(e->country, "DE", 3);
    atomic_store(&e->access_count, 7);
    atomic_store(&e->last_accessed, 1764064900000);

    d = entry_dup(e);
    ck_assert_ptr_nonnull(d);
    ck_assert_int_eq(atomic_load(&d->refs), 1);
    ck_assert_str_eq(d->key, e->key);
    ck_assert_str_eq(d->proxy_url, e->proxy_url);
    ck_assert_ptr_ne(d->proxy_url, e->proxy_url);
    ck_assert_str_eq(d->username_tok, TOKEN_A);
    ck_assert_ptr_ne(d->username_tok, e->username_tok);
    ck_assert_str_eq(d->password_tok, TOKEN_B);
    ck_assert_str_eq(d->source, "unknown");
    ck_assert_ptr_ne(d->source, e->source);
    ck_assert_int_eq(d->scheme, ENTRY_SCHEME_SOCKS5);
    ck_assert_int_eq(d->fetch_time, e->fetch_time);
    ck_assert_int_eq(d->ttl_seconds, 3600);
    ck_assert_int_eq(d->expires_at, e->expires_at);
    ck_assert_int_eq(d->health, ENTRY_HEALTH_HEALTHY);
    ck_assert_uint_eq(d->failure_count, 2);
    ck_assert_int_eq(d->anonymity, ENTRY_ANON_ELITE);
    ck_assert_int_eq(d->latency_ms, 42);
    ck_assert_str_eq(d->country, "DE");
    ck_assert_uint_eq(atomic_load(&d->access_count), 7);
    ck_assert_int_eq(atomic_load(&d->last_accessed), 1764064900000);
    ck_assert_int_eq(entry_validate(d, NULL), 0);

    /* a change to the copy does not reach the original */
    ck_assert_int_eq(entry_set_str(&d->source, "other"), 0);
    ck_assert_str_eq(e->source, "unknown");

    r = entry_ref(e);
    ck_assert_ptr_eq(r, e);
    ck_assert_int_eq(atomic_load(&e->refs), 2);
    entry_unref(e);
    ck_assert_int_eq(atomic_load(&e->refs), 1);
    ck_assert_str_eq(e->proxy_url, "socks5://1.2.3.4:1080"); /* still alive */
    entry_unref(e);
    entry_unref(d);

    /* dup of an entry without optional strings */
    e = entry_new();
    d = entry_dup(e);
    ck_assert_ptr_nonnull(d);
    ck_assert_ptr_null(d->proxy_url);
    ck_assert_ptr_null(d->source);
    ck_assert_int_eq(d->latency_ms, -1);
    entry_unref(d);
    entry_unref(e);
    ck_assert_ptr_null(entry_dup(NULL));
}
END_TEST

START_TEST(test_set_str)
{
    char *f = NULL;

    ck_assert_int_eq(entry_set_str(&f, "abc"), 0);
    ck_assert_str_eq(f, "abc");
    ck_assert_int_eq(entry_set_str(&f, "defg"), 0);
    ck_assert_str_eq(f, "defg");
    ck_assert_int_eq(entry_set_str(&f, NULL), 0);
    ck_assert_ptr_null(f);
    ck_assert_int_eq(entry_set_str(&f, ""), 0);
    ck_assert_str_eq(f, "");
    ck_assert_int_eq(entry_set_str(&f, NULL), 0);
}
END_TEST

START_TEST(test_expiry)
{
    struct entry *e = entry_new();

    e->fetch_time = 1000;
    e->ttl_seconds = 0;
    entry_compute_expiry(e);
    ck_assert_int_eq(e->expires_at, 1000);
    ck_assert_int_eq(entry_expired(e, 999), 0);
    ck_assert_int_eq(entry_expired(e, 1000), 1); /* ttl 0: expired at once */

    e->ttl_seconds = 5;
    entry_compute_expiry(e);
    ck_assert_int_eq(e->expires_at, 6000);
    ck_assert_int_eq(entry_expired(e, 5999), 0);
    ck_assert_int_eq(entry_expired(e, 6000), 1);

    /* saturating arithmetic */
    e->ttl_seconds = INT64_MAX;
    entry_compute_expiry(e);
    ck_assert_int_eq(e->expires_at, INT64_MAX);
    e->ttl_seconds = INT64_MAX / 1000;
    e->fetch_time = INT64_MAX - 10;
    entry_compute_expiry(e);
    ck_assert_int_eq(e->expires_at, INT64_MAX);
    ck_assert_int_eq(entry_expired(e, INT64_MAX - 1), 0);
    e->ttl_seconds = INT64_MIN / 10;
    e->fetch_time = 0;
    entry_compute_expiry(e);
    ck_assert_int_eq(e->expires_at, INT64_MIN);
    e->ttl_seconds = -1;
    e->fetch_time = INT64_MIN;
    entry_compute_expiry(e);
    ck_assert_int_eq(e->expires_at, INT64_MIN);
    entry_unref(e);
}
END_TEST

START_TEST(test_names)
{
    enum entry_health h;
    enum entry_anonymity a;
    enum entry_scheme s;
    int i;

    for (i = 0; i <= 2; i++) {
        const char *n = entry_health_name((enum entry_health)i);
        ck_assert_ptr_nonnull(n);
        ck_assert_int_eq(entry_health_parse(n, &h), 0);
        ck_assert_int_eq(h, i);
    }
    ck_assert_str_eq(entry_health_name(ENTRY_HEALTH_HEALTHY), "healthy");
    ck_assert_str_eq(entry_health_name(ENTRY_HEALTH_UNHEALTHY), "unhealthy");
    ck_assert_str_eq(entry_health_name(ENTRY_HEALTH_UNKNOWN), "unknown");
    ck_assert_ptr_null(entry_health_name((enum entry_health)3));
    ck_assert_int_eq(entry_health_parse("sick", &h), -EINVAL);
    ck_assert_int_eq(entry_health_parse("", &h), -EINVAL);
    ck_assert_int_eq(entry_health_parse(NULL, &h), -EINVAL);

    ck_assert_ptr_null(entry_anonymity_name(ENTRY_ANON_NONE));
    for (i = 1; i <= 3; i++) {
        const char *n = entry_anonymity_name((enum entry_anonymity)i);
        ck_assert_ptr_nonnull(n);
        ck_assert_int_eq(entry_anonymity_parse(n, &a), 0);
        ck_assert_int_eq(a, i);
    }
    ck_assert_str_eq(entry_anonymity_name(ENTRY_ANON_TRANSPARENT),
                     "transparent");
    ck_assert_str_eq(entry_anonymity_name(ENTRY_ANON_ANONYMOUS), "anonymous");
    ck_assert_str_eq(entry_anonymity_name(ENTRY_ANON_ELITE), "elite");
    ck_assert_ptr_null(entry_anonymity_name((enum entry_anonymity)4));
    ck_assert_int_eq(entry_anonymity_parse("none", &a), -EINVAL);
    ck_assert_int_eq(entry_anonymity_parse("", &a), -EINVAL);
    ck_assert_int_eq(entry_anonymity_parse(NULL, &a), -EINVAL);

    for (i = 0; i <= 3; i++) {
        const char *n = entry_scheme_name((enum entry_scheme)i);
        ck_assert_ptr_nonnull(n);
        ck_assert_int_eq(entry_scheme_parse(n, &s), 0);
        ck_assert_int_eq(s, i);
    }
    ck_assert_str_eq(entry_scheme_name(ENTRY_SCHEME_HTTPS), "https");
    ck_assert_ptr_null(entry_scheme_name((enum entry_scheme)4));
    ck_assert_int_eq(entry_scheme_parse("SOCKS5", &s), 0);
    ck_assert_int_eq(s, ENTRY_SCHEME_SOCKS5);
    ck_assert_int_eq(entry_scheme_parse("socks", &s), -EINVAL);
    ck_assert_int_eq(entry_scheme_parse("socks55", &s), -EINVAL);
    ck_assert_int_eq(entry_scheme_parse("", &s), -EINVAL);
    ck_assert_int_eq(entry_scheme_parse(NULL, &s), -EINVAL);
}
END_TEST

START_TEST(test_source_and_country)
{
    char src[ENTRY_SOURCE_MAX + 2];
    char c[3] = "";

    ck_assert_int_eq(entry_source_valid("unknown"), 1);
    ck_assert_int_eq(entry_source_valid("a b ~!"), 1);
    ck_assert_int_eq(entry_source_valid(""), 0);
    ck_assert_int_eq(entry_source_valid(NULL), 0);
    ck_assert_int_eq(entry_source_valid("tab\there"), 0);
    ck_assert_int_eq(entry_source_valid("caf\xc3\xa9"), 0);
    ck_assert_int_eq(entry_source_valid("del\x7f"), 0);
    memset(src, 's', ENTRY_SOURCE_MAX);
    src[ENTRY_SOURCE_MAX] = '\0';
    ck_assert_int_eq(entry_source_valid(src), 1);
    src[ENTRY_SOURCE_MAX] = 's';
    src[ENTRY_SOURCE_MAX + 1] = '\0';
    ck_assert_int_eq(entry_source_valid(src), 0);

    ck_assert_int_eq(entry_country_parse("us", c), 1);
    ck_assert_str_eq(c, "US");
    ck_assert_int_eq(entry_country_parse("De", c), 1);
    ck_assert_str_eq(c, "DE");
    ck_assert_int_eq(entry_country_parse("USA", c), 0);
    ck_assert_str_eq(c, "DE"); /* untouched on failure */
    ck_assert_int_eq(entry_country_parse("U", c), 0);
    ck_assert_int_eq(entry_country_parse("", c), 0);
    ck_assert_int_eq(entry_country_parse("1A", c), 0);
    ck_assert_int_eq(entry_country_parse("A1", c), 0);
    ck_assert_int_eq(entry_country_parse(NULL, c), 0);
}
END_TEST

/* --- validation ----------------------------------------------------------- */

START_TEST(test_validate_accepts)
{
    struct entry *e = make_entry("http://1.2.3.4:8080", 0);
    const char *reason = NULL;

    ck_assert_int_eq(entry_validate(e, &reason), 0);
    memcpy(e->country, "US", 3);
    e->latency_ms = 0;
    e->anonymity = ENTRY_ANON_ELITE;
    e->health = ENTRY_HEALTH_UNHEALTHY;
    e->failure_count = UINT32_MAX;
    ck_assert_int_eq(entry_set_str(&e->username_tok, TOKEN_A), 0);
    ck_assert_int_eq(entry_validate(e, &reason), 0);
    e->ttl_seconds = 0;
    entry_compute_expiry(e);
    ck_assert_int_eq(entry_validate(e, &reason), 0);
    e->ttl_seconds = INT64_MAX; /* saturates, still consistent */
    entry_compute_expiry(e);
    ck_assert_int_eq(entry_validate(e, &reason), 0);
    entry_unref(e);

    e = make_entry("socks4://[2001:db8::1]:1080", 1);
    ck_assert_int_eq(entry_validate(e, NULL), 0);
    entry_unref(e);
}
END_TEST

enum mutation {
    M_KEY_UPPER,
    M_KEY_SHORT,
    M_KEY_OTHER,
    M_URL_NULL,
    M_URL_BAD,
    M_URL_NOT_NORMAL,
    M_URL_SLASH,
    M_URL_CREDS,
    M_SCHEME,
    M_SCHEME_RANGE,
    M_SOURCE_NULL,
    M_SOURCE_EMPTY,
    M_SOURCE_CTRL,
    M_TTL_NEG,
    M_FETCH_NEG,
    M_EXPIRES,
    M_HEALTH,
    M_ANON,
    M_COUNTRY_LOWER,
    M_COUNTRY_ONE,
    M_COUNTRY_DIGIT,
    M_COUNTRY_UNTERMINATED,
    M_LATENCY,
    M_LAST_ACCESSED,
    M_UTOK_EMPTY,
    M_UTOK_CHARS,
    M_PTOK_CHARS,
    M_PTOK_LONG,
    M_COUNT
};

static void mutate(struct entry *e, enum mutation m)
{
    char *big;

    switch (m) {
    case M_KEY_UPPER:
        e->key[0] = 'F';
        break;
    case M_KEY_SHORT:
        e->key[63] = '\0';
        break;
    case M_KEY_OTHER:
        e->key[0] = e->key[0] == '0' ? '1' : '0';
        break;
    case M_URL_NULL:
        entry_set_str(&e->proxy_url, NULL);
        break;
    case M_URL_BAD:
        entry_set_str(&e->proxy_url, "http://1.2.3.4:0");
        break;
    case M_URL_NOT_NORMAL:
        entry_set_str(&e->proxy_url, "HTTP://1.2.3.4:8080");
        break;
    case M_URL_SLASH:
        entry_set_str(&e->proxy_url, "http://1.2.3.4:8080/");
        break;
    case M_URL_CREDS:
        entry_set_str(&e->proxy_url, "http://u:p@1.2.3.4:8080");
        break;
    case M_SCHEME:
        e->scheme = ENTRY_SCHEME_HTTPS;
        break;
    case M_SCHEME_RANGE:
        e->scheme = (enum entry_scheme)9;
        break;
    case M_SOURCE_NULL:
        entry_set_str(&e->source, NULL);
        break;
    case M_SOURCE_EMPTY:
        entry_set_str(&e->source, "");
        break;
    case M_SOURCE_CTRL:
        entry_set_str(&e->source, "a\nb");
        break;
    case M_TTL_NEG:
        e->ttl_seconds = -1;
        entry_compute_expiry(e);
        break;
    case M_FETCH_NEG:
        e->fetch_time = -5;
        entry_compute_expiry(e);
        break;
    case M_EXPIRES:
        e->expires_at += 1;
        break;
    case M_HEALTH:
        e->health = (enum entry_health)3;
        break;
    case M_ANON:
        e->anonymity = (enum entry_anonymity)4;
        break;
    case M_COUNTRY_LOWER:
        memcpy(e->country, "us", 3);
        break;
    case M_COUNTRY_ONE:
        memcpy(e->country, "U", 2);
        break;
    case M_COUNTRY_DIGIT:
        memcpy(e->country, "U1", 3);
        break;
    case M_COUNTRY_UNTERMINATED:
        memcpy(e->country, "USA", 3);
        break;
    case M_LATENCY:
        e->latency_ms = -2;
        break;
    case M_LAST_ACCESSED:
        atomic_store(&e->last_accessed, -1);
        break;
    case M_UTOK_EMPTY:
        entry_set_str(&e->username_tok, "");
        break;
    case M_UTOK_CHARS:
        entry_set_str(&e->username_tok, "gAAAA+/==");
        break;
    case M_PTOK_CHARS:
        entry_set_str(&e->password_tok, "gAAAA AA");
        break;
    case M_PTOK_LONG:
        big = malloc(9000);
        ck_assert_ptr_nonnull(big);
        memset(big, 'A', 8999);
        big[8999] = '\0';
        entry_set_str(&e->password_tok, big);
        free(big);
        break;
    case M_COUNT:
        break;
    }
}

START_TEST(test_validate_rejects)
{
    struct entry *e = make_entry("http://1.2.3.4:8080", 1);
    const char *reason = NULL;

    ck_assert_int_eq(entry_validate(e, NULL), 0);
    mutate(e, (enum mutation)_i);
    ck_assert_msg(entry_validate(e, &reason) == -EBADMSG,
                  "mutation %d accepted", _i);
    ck_assert_ptr_nonnull(reason);
    ck_assert_int_eq(entry_validate(e, NULL), -EBADMSG);
    entry_unref(e);
}
END_TEST

START_TEST(test_validate_null)
{
    const char *reason = NULL;

    ck_assert_int_eq(entry_validate(NULL, &reason), -EBADMSG);
    ck_assert_ptr_nonnull(reason);
}
END_TEST

/* --- concurrency (run under TSan too) ------------------------------------ */

#define N_THREADS 4
#define N_ROUNDS  20000

static void *hammer(void *arg)
{
    struct entry *e = arg;
    int i;

    for (i = 0; i < N_ROUNDS; i++) {
        struct entry *r = entry_ref(e);

        atomic_fetch_add(&r->access_count, 1);
        atomic_store(&r->last_accessed, (int64_t)i + 1);
        entry_unref(r);
    }
    entry_unref(e); /* the reference the main thread gave this thread */
    return NULL;
}

START_TEST(test_concurrent_refs)
{
    struct entry *e = make_entry("http://1.2.3.4:8080", 1);
    pthread_t th[N_THREADS];
    int i;

    for (i = 0; i < N_THREADS; i++)
        ck_assert_int_eq(pthread_create(&th[i], NULL, hammer, entry_ref(e)), 0);
    for (i = 0; i < N_THREADS; i++)
        ck_assert_int_eq(pthread_join(th[i], NULL), 0);
    ck_assert_int_eq(atomic_load(&e->refs), 1);
    ck_assert_uint_eq(atomic_load(&e->access_count),
                      (uint64_t)N_THREADS * N_ROUNDS);
    ck_assert_int_eq(atomic_load(&e->last_accessed), N_ROUNDS);
    entry_unref(e);
}
END_TEST

/* The last unref may happen on any thread: the one that frees must see
 * every write made before the others let go. */
static void *drop(void *arg)
{
    entry_unref(arg);
    return NULL;
}

START_TEST(test_last_unref_any_thread)
{
    int round;

    for (round = 0; round < 200; round++) {
        struct entry *e = make_entry("socks5://[::1]:1080", 1);
        pthread_t a, b;

        entry_ref(e);
        ck_assert_int_eq(pthread_create(&a, NULL, drop, e), 0);
        ck_assert_int_eq(pthread_create(&b, NULL, drop, e), 0);
        ck_assert_int_eq(pthread_join(a, NULL), 0);
        ck_assert_int_eq(pthread_join(b, NULL), 0);
    }
}
END_TEST

/* --- procstat ------------------------------------------------------------- */

START_TEST(test_procstat)
{
    struct procstat ps;

    ck_assert_int_eq(procstat_read(&ps), 0);
    ck_assert_uint_gt(ps.resident_bytes, 0);
    ck_assert_uint_ge(ps.virtual_bytes, ps.resident_bytes);
    ck_assert_uint_gt(ps.open_fds, 0);
    ck_assert_uint_ge(ps.max_fds, ps.open_fds);
    ck_assert(ps.cpu_seconds >= 0.0);
    /* started after 2020 and not in the future (with rounding slack) */
    ck_assert(ps.start_time_seconds > 1577836800.0);
    ck_assert(ps.start_time_seconds <= (double)time(NULL) + 2.0);
    ck_assert_int_eq(procstat_read(NULL), -EINVAL);
}
END_TEST

START_TEST(test_procstat_counts_fds)
{
    struct procstat a, b;
    int fd;

    ck_assert_int_eq(procstat_read(&a), 0);
    fd = dup(0);
    ck_assert_int_ge(fd, 0);
    ck_assert_int_eq(procstat_read(&b), 0);
    close(fd);
    ck_assert_uint_eq(b.open_fds, a.open_fds + 1);
}
END_TEST

static Suite *entry_suite(void)
{
    Suite *s = suite_create("entry");
    TCase *tc;

    tc = tcase_create("url");
    tcase_add_loop_test(tc, test_url_table, 0,
                        (int)(sizeof url_cases / sizeof url_cases[0]));
    tcase_add_test(tc, test_url_fields);
    tcase_add_test(tc, test_url_limits);
    tcase_add_test(tc, test_url_reason_never_quotes);
    suite_add_tcase(s, tc);

    tc = tcase_create("key");
    tcase_add_test(tc, test_key_vectors);
    tcase_add_test(tc, test_key_valid);
    suite_add_tcase(s, tc);

    tc = tcase_create("model");
    tcase_add_test(tc, test_new_defaults);
    tcase_add_test(tc, test_dup_and_refcount);
    tcase_add_test(tc, test_set_str);
    tcase_add_test(tc, test_expiry);
    tcase_add_test(tc, test_names);
    tcase_add_test(tc, test_source_and_country);
    suite_add_tcase(s, tc);

    tc = tcase_create("validate");
    tcase_add_test(tc, test_validate_accepts);
    tcase_add_loop_test(tc, test_validate_rejects, 0, M_COUNT);
    tcase_add_test(tc, test_validate_null);
    suite_add_tcase(s, tc);

    tc = tcase_create("concurrency");
    tcase_add_test(tc, test_concurrent_refs);
    tcase_add_test(tc, test_last_unref_any_thread);
    suite_add_tcase(s, tc);

    tc = tcase_create("procstat");
    tcase_add_test(tc, test_procstat);
    tcase_add_test(tc, test_procstat_counts_fds);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return testutil_run(entry_suite());
}
