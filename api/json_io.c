/* SPDX-License-Identifier: MIT */
/*
 * Entry <-> JSON for the REST API, plus the request-parsing helpers of
 * api_int.h.
 *
 * Design: output is hand-assembled into a struct jbuf (see json_io.h for
 * why); the escaper handles every byte value so that any stored string,
 * including credentials decrypted from an import, yields valid JSON. Input
 * goes through jansson (json_loadb with JSON_REJECT_DUPLICATES, whose parser
 * bounds nesting depth) and a table of known members; every member is type-
 * and range-checked before anything is built, so a rejected object has no
 * side effect.
 *
 * Secrets: plain-text credentials exist only between the request body and
 * crypto_fernet_seal() (input) or between crypto_fernet_open() and the
 * escaper (reveal); both are wiped with OPENSSL_cleanse right after use.
 *
 * Thread-safety: no globals; ctx->warned_no_key is an atomic flag.
 */
#include "config.h"

#include <errno.h>
#include <malloc.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#define LOG_MODULE "api"
#include "api/api_int.h"
#include "api/json_io.h"
#include "common/clock.h"
#include "common/log.h"
#include "storage/cache.h"
#include "storage/crypto.h"
#include "storage/entry.h"

/* Bounds of the input members. */
#define TTL_MAX_SECONDS INT64_C(3153600000)   /* 100 years */
#define LATENCY_MAX_MS 3600000.0              /* one hour */
#define CREDENTIAL_MAX 1024                   /* bytes, each */

/* ------------------------------------------------------------------ */
/* jbuf                                                                */
/* ------------------------------------------------------------------ */

void jbuf_init(struct jbuf *b, size_t max, bool wipe)
{
    memset(b, 0, sizeof *b);
    b->max = max;
    b->wipe = wipe;
}

void jbuf_fini(struct jbuf *b)
{
    if (!b)
        return;
    if (b->p && b->wipe)
        OPENSSL_cleanse(b->p, b->cap);
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* Make room for need more bytes plus the NUL. 0 or the sticky error. */
static int jbuf_reserve(struct jbuf *b, size_t need)
{
    size_t want, ncap;
    char *np;

    if (b->err)
        return b->err;
    if (need >= b->max || b->len >= b->max - need) {
        b->err = -E2BIG;
        return b->err;
    }
    want = b->len + need + 1;
    if (want <= b->cap)
        return 0;
    ncap = b->cap ? b->cap : 1024;
    while (ncap < want) {
        if (ncap > SIZE_MAX / 2) {
            ncap = want;
            break;
        }
        ncap *= 2;
    }
    if (ncap > b->max)
        ncap = b->max;
    if (b->wipe) {
        /* Never leave a copy of the old bytes behind in freed memory. */
        np = malloc(ncap);
        if (np && b->p) {
            memcpy(np, b->p, b->len);
            OPENSSL_cleanse(b->p, b->cap);
        }
        if (np)
            free(b->p);
    } else {
        np = realloc(b->p, ncap);
    }
    if (!np) {
        b->err = -ENOMEM;
        return b->err;
    }
    b->p = np;
    b->cap = ncap;
    return 0;
}

void jbuf_put(struct jbuf *b, const char *s, size_t len)
{
    if (len == 0 || jbuf_reserve(b, len))
        return;
    memcpy(b->p + b->len, s, len);
    b->len += len;
    b->p[b->len] = '\0';
}

void jbuf_puts(struct jbuf *b, const char *s)
{
    jbuf_put(b, s, strlen(s));
}

void jbuf_putc(struct jbuf *b, char c)
{
    jbuf_put(b, &c, 1);
}

void jbuf_put_u64(struct jbuf *b, uint64_t v)
{
    char tmp[24];
    size_t i = sizeof tmp;

    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    jbuf_put(b, tmp + i, sizeof tmp - i);
}

void jbuf_put_i64(struct jbuf *b, int64_t v)
{
    if (v < 0) {
        jbuf_putc(b, '-');
        /* -(v + 1) + 1 avoids overflow at INT64_MIN. */
        jbuf_put_u64(b, (uint64_t)(-(v + 1)) + 1u);
    } else {
        jbuf_put_u64(b, (uint64_t)v);
    }
}

/* Length of the valid UTF-8 sequence at s (n bytes available), or 0. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];

    if (c >= 0xc2 && c <= 0xdf)
        return (n >= 2 && (s[1] & 0xc0) == 0x80) ? 2 : 0;
    if (c >= 0xe0 && c <= 0xef) {
        unsigned char lo = 0x80, hi = 0xbf;
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f; /* no UTF-16 surrogates */
        if (n < 3 || s[1] < lo || s[1] > hi || (s[2] & 0xc0) != 0x80)
            return 0;
        return 3;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        unsigned char lo = 0x80, hi = 0xbf;
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
        if (n < 4 || s[1] < lo || s[1] > hi || (s[2] & 0xc0) != 0x80 ||
            (s[3] & 0xc0) != 0x80)
            return 0;
        return 4;
    }
    return 0;
}

/* 1 if s[0..len) is valid UTF-8 without NUL bytes. */
static int utf8_valid(const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;

    while (i < len) {
        if (u[i] == 0)
            return 0;
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        size_t n = utf8_seq(u + i, len - i);
        if (!n)
            return 0;
        i += n;
    }
    return 1;
}

void jbuf_put_jstr(struct jbuf *b, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0, run = 0;

    jbuf_putc(b, '"');
    while (i < len) {
        unsigned char c = u[i];
        if (c >= 0x20 && c < 0x80 && c != '"' && c != '\\') {
            i++;
            continue;
        }
        jbuf_put(b, s + run, i - run);
        if (c < 0x80) {
            char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            switch (c) {
            case '"':
                jbuf_put(b, "\\\"", 2);
                break;
            case '\\':
                jbuf_put(b, "\\\\", 2);
                break;
            case '\n':
                jbuf_put(b, "\\n", 2);
                break;
            case '\r':
                jbuf_put(b, "\\r", 2);
                break;
            case '\t':
                jbuf_put(b, "\\t", 2);
                break;
            default:
                jbuf_put(b, esc, sizeof esc);
                break;
            }
            i++;
        } else {
            size_t n = utf8_seq(u + i, len - i);
            if (n) {
                jbuf_put(b, s + i, n);
                i += n;
            } else {
                jbuf_put(b, "\\ufffd", 6);
                i++;
            }
        }
        run = i;
    }
    jbuf_put(b, s + run, i - run);
    jbuf_putc(b, '"');
}

void jbuf_put_time(struct jbuf *b, int64_t ms)
{
    char tmp[CLOCK_RFC3339_LEN];

    clock_format_rfc3339(ms, tmp, sizeof tmp);
    jbuf_putc(b, '"');
    jbuf_puts(b, tmp);
    jbuf_putc(b, '"');
}

char *jbuf_steal(struct jbuf *b, size_t *len)
{
    char *p;

    if (b->err) {
        jbuf_fini(b);
        return NULL;
    }
    if (!b->p && jbuf_reserve(b, 0)) {
        jbuf_fini(b);
        return NULL;
    }
    b->p[b->len] = '\0';
    p = b->p;
    if (len)
        *len = b->len;
    b->p = NULL;
    b->len = b->cap = 0;
    return p;
}

/* ------------------------------------------------------------------ */
/* Entry -> JSON                                                       */
/* ------------------------------------------------------------------ */

/* "name":<credential> — masked, or opened and wiped. */
static int put_credential(struct jbuf *b, struct api_ctx *ctx,
                          const char *name, const char *tok, bool reveal)
{
    char *plain = NULL;
    size_t len = 0;
    int err;

    jbuf_putc(b, ',');
    jbuf_put_jstr(b, name, strlen(name));
    jbuf_putc(b, ':');
    if (!reveal) {
        jbuf_put(b, "\"***\"", 5);
        return 0;
    }
    if (!ctx->ring)
        return -EBADMSG;
    err = crypto_fernet_open(ctx->ring, tok, 0, clock_now_ms() / 1000,
                             &plain, &len);
    if (err)
        return -EBADMSG;
    jbuf_put_jstr(b, plain, len);
    crypto_free_secret(plain);
    return 0;
}

int json_io_entry_append(struct jbuf *b, struct api_ctx *ctx,
                         const struct entry *e, unsigned flags,
                         const char *tier)
{
    bool reveal = (flags & JSON_IO_REVEAL) != 0;
    const char *anon;
    int64_t last;
    int err;

    jbuf_put(b, "{\"key\":\"", 8);
    jbuf_put(b, e->key, strnlen(e->key, ENTRY_KEY_LEN));
    jbuf_put(b, "\",\"proxy_url\":", 14);
    jbuf_put_jstr(b, e->proxy_url ? e->proxy_url : "",
                  e->proxy_url ? strlen(e->proxy_url) : 0);
    jbuf_put(b, ",\"protocol\":\"", 13);
    jbuf_puts(b, entry_scheme_name(e->scheme));
    jbuf_putc(b, '"');
    if (e->username_tok) {
        err = put_credential(b, ctx, "username", e->username_tok, reveal);
        if (err)
            return err;
    }
    if (e->password_tok) {
        err = put_credential(b, ctx, "password", e->password_tok, reveal);
        if (err)
            return err;
    }
    jbuf_put(b, ",\"source\":", 10);
    jbuf_put_jstr(b, e->source ? e->source : "unknown",
                  e->source ? strlen(e->source) : 7);
    jbuf_put(b, ",\"fetch_time\":", 14);
    jbuf_put_time(b, e->fetch_time);
    jbuf_put(b, ",\"ttl_seconds\":", 15);
    jbuf_put_i64(b, e->ttl_seconds);
    jbuf_put(b, ",\"expires_at\":", 14);
    jbuf_put_time(b, e->expires_at);
    jbuf_put(b, ",\"health_status\":\"", 18);
    jbuf_puts(b, entry_health_name(e->health));
    jbuf_put(b, "\",\"failure_count\":", 18);
    jbuf_put_u64(b, e->failure_count);
    jbuf_put(b, ",\"country\":", 11);
    if (e->country[0])
        jbuf_put_jstr(b, e->country, strnlen(e->country, 2));
    else
        jbuf_put(b, "null", 4);
    jbuf_put(b, ",\"anonymity\":", 13);
    anon = entry_anonymity_name(e->anonymity);
    if (anon) {
        jbuf_putc(b, '"');
        jbuf_puts(b, anon);
        jbuf_putc(b, '"');
    } else {
        jbuf_put(b, "null", 4);
    }
    jbuf_put(b, ",\"latency_ms\":", 14);
    if (e->latency_ms >= 0)
        jbuf_put_i64(b, e->latency_ms);
    else
        jbuf_put(b, "null", 4);
    jbuf_put(b, ",\"last_accessed\":", 17);
    last = atomic_load_explicit(&e->last_accessed, memory_order_relaxed);
    if (last > 0)
        jbuf_put_time(b, last);
    else
        jbuf_put(b, "null", 4);
    jbuf_put(b, ",\"access_count\":", 16);
    jbuf_put_u64(b, atomic_load_explicit(&e->access_count,
                                         memory_order_relaxed));
    if (tier) {
        jbuf_put(b, ",\"tier\":\"", 9);
        jbuf_puts(b, tier);
        jbuf_putc(b, '"');
    }
    if (flags & JSON_IO_EVICTED_FALSE)
        jbuf_put(b, ",\"evicted\":false", 16);
    jbuf_putc(b, '}');
    return jbuf_failed(b);
}

json_t *json_io_string(const char *s)
{
    json_t *j;
    char *copy;
    size_t i, len;

    if (!s)
        s = "";
    j = json_string(s);
    if (j)
        return j;
    /* Invalid UTF-8: replace every non-ASCII byte. */
    len = strlen(s);
    copy = malloc(len + 1);
    if (!copy)
        return NULL;
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        copy[i] = c < 0x80 ? (char)c : '?';
    }
    copy[len] = '\0';
    j = json_string(copy);
    free(copy);
    return j;
}

/* ------------------------------------------------------------------ */
/* JSON -> entry                                                       */
/* ------------------------------------------------------------------ */

enum member {
    M_PROXY_URL = 0,
    M_USERNAME,
    M_PASSWORD,
    M_SOURCE,
    M_FETCH_TIME,
    M_TTL,
    M_HEALTH,
    M_FAILURES,
    M_COUNTRY,
    M_ANONYMITY,
    M_LATENCY,
    /* Read-only members, accepted (key and protocol are checked). */
    M_KEY,
    M_PROTOCOL,
    M_EXPIRES_AT,
    M_LAST_ACCESSED,
    M_ACCESS_COUNT,
    M_TIER,
    M_COUNT,
};

static const char *const member_names[M_COUNT] = {
    [M_PROXY_URL] = "proxy_url",
    [M_USERNAME] = "username",
    [M_PASSWORD] = "password",
    [M_SOURCE] = "source",
    [M_FETCH_TIME] = "fetch_time",
    [M_TTL] = "ttl_seconds",
    [M_HEALTH] = "health_status",
    [M_FAILURES] = "failure_count",
    [M_COUNTRY] = "country",
    [M_ANONYMITY] = "anonymity",
    [M_LATENCY] = "latency_ms",
    [M_KEY] = "key",
    [M_PROTOCOL] = "protocol",
    [M_EXPIRES_AT] = "expires_at",
    [M_LAST_ACCESSED] = "last_accessed",
    [M_ACCESS_COUNT] = "access_count",
    [M_TIER] = "tier",
};

static int fail(struct problem *p, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(struct problem *p, const char *field, const char *fmt, ...)
{
    va_list ap;

    p->status = 400;
    p->field = field;
    va_start(ap, fmt);
    vsnprintf(p->reason, sizeof p->reason, fmt, ap);
    va_end(ap);
    return -EINVAL;
}

/* Wipe the bytes of a jansson string in place (it holds a credential). */
static void wipe_json_string(json_t *v)
{
    if (json_is_string(v) && json_string_length(v) > 0)
        OPENSSL_cleanse((char *)json_string_value(v), json_string_length(v));
}

/* The value of a string member, or fail (type). */
static int get_string(json_t *v, const char *field, const char **out,
                      struct problem *p)
{
    if (!json_is_string(v))
        return fail(p, field, "must be a string");
    *out = json_string_value(v);
    return 0;
}

static int get_int(json_t *v, const char *field, int64_t min, int64_t max,
                   int64_t *out, struct problem *p)
{
    json_int_t n;

    if (!json_is_integer(v))
        return fail(p, field, "must be an integer");
    n = json_integer_value(v);
    if (n < min || n > max)
        return fail(p, field, "must be between %" PRId64 " and %" PRId64,
                    min, max);
    *out = (int64_t)n;
    return 0;
}

static void warn_no_key(struct api_ctx *ctx)
{
    bool expected = false;

    if (atomic_compare_exchange_strong(&ctx->warned_no_key, &expected,
                                       true))
        log_warn("no encryption key configured: credentials are not stored "
                 "(set PROXYCACHE_ENCRYPTION_KEY or --ephemeral-key)");
}

int api_seal_credentials(struct api_ctx *ctx, const char *user,
                         size_t user_len, const char *pass, size_t pass_len,
                         struct entry *e, unsigned *fields)
{
    int64_t now_s = clock_now_ms() / 1000;
    char *ut = NULL, *pt = NULL;
    int err;

    if (!user && !pass)
        return 0;
    if (!ctx->ring) {
        warn_no_key(ctx);
        return 0;
    }
    if (user) {
        err = crypto_fernet_seal(ctx->ring, user, user_len, now_s, NULL, &ut);
        if (err)
            goto fail;
    }
    if (pass) {
        err = crypto_fernet_seal(ctx->ring, pass, pass_len, now_s, NULL, &pt);
        if (err)
            goto fail;
    }
    free(e->username_tok);
    free(e->password_tok);
    e->username_tok = ut;
    e->password_tok = pt;
    *fields |= CACHE_F_CREDENTIALS;
    return 0;
fail:
    free(ut);
    free(pt);
    return err;
}

/* The mask a GET shows for a stored credential. */
static int is_mask(json_t *v)
{
    return json_is_string(v) && strcmp(json_string_value(v), "***") == 0;
}

/* Validate one credential member (string or null, bounded). */
static int check_credential(json_t *v, const char *field, struct problem *p)
{
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v))
        return fail(p, field, "must be a string or null");
    if (json_string_length(v) > CREDENTIAL_MAX)
        return fail(p, field, "must be at most %d bytes", CREDENTIAL_MAX);
    return 0;
}

/* Reason for a bad proxy URL, quoting it without userinfo, shortened. */
/* An unparsable URL is never quoted: without a successful parse nothing
 * says which part is a credential ("host:port:user:pass" has no '@'). */
static int fail_url(struct problem *p, const char *why)
{
    return fail(p, "proxy_url", "invalid proxy URL: %s",
                why ? why : "malformed");
}

/* Collect the members of obj into v[], rejecting unknown names. */
static int collect_members(json_t *obj, json_t *v[M_COUNT], struct problem *p)
{
    const char *name;
    size_t name_len;
    json_t *val;

    memset(v, 0, sizeof(json_t *) * M_COUNT);
    json_object_keylen_foreach(obj, name, name_len, val)
    {
        size_t i;
        for (i = 0; i < M_COUNT; i++) {
            if (strlen(member_names[i]) == name_len &&
                memcmp(member_names[i], name, name_len) == 0)
                break;
        }
        if (i == M_COUNT)
            return fail(p, name, "unknown member");
        v[i] = val;
    }
    return 0;
}

/* Scalar metadata members into e (validated); sets *fields bits. */
static int parse_metadata(struct api_ctx *ctx, json_t *v[M_COUNT],
                          struct entry *e, unsigned *fields, int64_t now,
                          struct problem *p)
{
    const char *s = NULL;
    int64_t n;
    int err;

    /* source */
    s = "unknown";
    if (v[M_SOURCE]) {
        err = get_string(v[M_SOURCE], "source", &s, p);
        if (err)
            return err;
        if (!entry_source_valid(s) ||
            strlen(s) != json_string_length(v[M_SOURCE]))
            return fail(p, "source",
                        "must be 1 to %d printable ASCII characters",
                        ENTRY_SOURCE_MAX);
        *fields |= CACHE_F_SOURCE;
    }
    if (entry_set_str(&e->source, s))
        return -ENOMEM;

    /* fetch_time: a write is a fetch, so it defaults to now. */
    e->fetch_time = now;
    if (v[M_FETCH_TIME]) {
        err = get_string(v[M_FETCH_TIME], "fetch_time", &s, p);
        if (err)
            return err;
        if (clock_parse_rfc3339(s, &n))
            return fail(p, "fetch_time", "must be an RFC 3339 timestamp");
        if (n < 0)
            return fail(p, "fetch_time", "must not be before 1970");
        if (n > now + FUTURE_SKEW_MS)
            return fail(p, "fetch_time", "must not be in the future");
        e->fetch_time = n;
    }
    *fields |= CACHE_F_FETCH_TIME;

    /* ttl_seconds: explicit, else the default of the (new) source. */
    if (v[M_TTL]) {
        err = get_int(v[M_TTL], "ttl_seconds", 0, TTL_MAX_SECONDS,
                      &e->ttl_seconds, p);
        if (err)
            return err;
        *fields |= CACHE_F_TTL;
    } else {
        /* Not sent: the default of the source. An update that changes the
         * source takes the new source's TTL; one that does not keeps the
         * stored TTL (the cache recomputes expires_at). */
        e->ttl_seconds = ctx->cache ?
                             cache_ttl_for_source(ctx->cache, e->source) :
                             3600;
        if (*fields & CACHE_F_SOURCE)
            *fields |= CACHE_F_TTL;
    }

    /* health_status and failure_count travel together. */
    if (v[M_HEALTH]) {
        err = get_string(v[M_HEALTH], "health_status", &s, p);
        if (err)
            return err;
        if (entry_health_parse(s, &e->health))
            return fail(p, "health_status",
                        "must be one of healthy, unhealthy, unknown");
        *fields |= CACHE_F_HEALTH;
    }
    if (v[M_FAILURES]) {
        err = get_int(v[M_FAILURES], "failure_count", 0, UINT32_MAX, &n, p);
        if (err)
            return err;
        e->failure_count = (uint32_t)n;
        *fields |= CACHE_F_HEALTH;
    }

    if (v[M_COUNTRY]) {
        if (json_is_null(v[M_COUNTRY])) {
            e->country[0] = '\0';
        } else {
            err = get_string(v[M_COUNTRY], "country", &s, p);
            if (err)
                return err;
            if (!entry_country_parse(s, e->country))
                return fail(p, "country",
                            "must be an ISO 3166-1 alpha-2 code (2 letters)");
        }
        *fields |= CACHE_F_COUNTRY;
    }
    if (v[M_ANONYMITY]) {
        if (json_is_null(v[M_ANONYMITY])) {
            e->anonymity = ENTRY_ANON_NONE;
        } else {
            err = get_string(v[M_ANONYMITY], "anonymity", &s, p);
            if (err)
                return err;
            if (entry_anonymity_parse(s, &e->anonymity) ||
                e->anonymity == ENTRY_ANON_NONE)
                return fail(p, "anonymity",
                            "must be one of transparent, anonymous, elite");
        }
        *fields |= CACHE_F_ANONYMITY;
    }
    if (v[M_LATENCY]) {
        json_t *l = v[M_LATENCY];
        if (json_is_null(l)) {
            e->latency_ms = -1;
        } else {
            double d;
            if (!json_is_number(l))
                return fail(p, "latency_ms", "must be a number or null");
            d = json_number_value(l);
            if (!isfinite(d) || d < 0 || d > LATENCY_MAX_MS)
                return fail(p, "latency_ms", "must be between 0 and %.0f",
                            LATENCY_MAX_MS);
            e->latency_ms = (int64_t)llround(d);
        }
        *fields |= CACHE_F_LATENCY;
    }
    return 0;
}

/* Credentials: members win over the URL's userinfo. */
static int parse_credentials(struct api_ctx *ctx, json_t *v[M_COUNT],
                             struct entry_url *u, struct entry *e,
                             unsigned *fields, struct problem *p)
{
    json_t *ju = v[M_USERNAME], *jp = v[M_PASSWORD];
    const char *user = NULL, *pass = NULL;
    size_t ulen = 0, plen = 0;
    bool mu = is_mask(ju), mp = is_mask(jp);
    int err;

    err = check_credential(ju, "username", p);
    if (err)
        return err;
    err = check_credential(jp, "password", p);
    if (err)
        return err;
    /* "***" (what a GET shows) means "keep the stored value" only when
     * nothing else about the credentials is being changed. */
    if (mu || mp) {
        bool other = (ju && !mu) || (jp && !mp) || u->username || u->password;
        if (other)
            return fail(p, mu ? "username" : "password",
                        "\"***\" is the mask of a stored credential: send "
                        "the real value or omit the member");
        return 0;
    }
    if (!ju && !jp && !u->username && !u->password)
        return 0;
    if (ju) {
        if (json_is_string(ju)) {
            user = json_string_value(ju);
            ulen = json_string_length(ju);
        }
    } else if (u->username) {
        user = u->username;
        ulen = strlen(user);
    }
    if (jp) {
        if (json_is_string(jp)) {
            pass = json_string_value(jp);
            plen = json_string_length(jp);
        }
    } else if (u->password) {
        pass = u->password;
        plen = strlen(pass);
    }
    if ((user && !ju && (ulen > CREDENTIAL_MAX || !utf8_valid(user, ulen))) ||
        (pass && !jp && (plen > CREDENTIAL_MAX || !utf8_valid(pass, plen))))
        return fail(p, "proxy_url",
                    "credentials in the URL must be valid UTF-8, at most %d "
                    "bytes each",
                    CREDENTIAL_MAX);
    if (!user && !pass) {
        /* Explicit nulls: clear the stored credentials. */
        if (ctx->ring)
            *fields |= CACHE_F_CREDENTIALS;
        return 0;
    }
    err = api_seal_credentials(ctx, user, ulen, pass, plen, e, fields);
    if (err)
        return err == -ENOMEM ? -ENOMEM : fail(p, "body",
                                               "credentials could not be "
                                               "encrypted");
    return 0;
}

int json_io_entry_from_json(struct api_ctx *ctx, json_t *obj,
                            struct entry **out, unsigned *fields,
                            struct problem *p)
{
    json_t *v[M_COUNT];
    struct entry_url u;
    struct entry *e = NULL;
    const char *url = NULL, *s = NULL, *why = NULL;
    unsigned f = 0;
    int64_t now = clock_now_ms();
    int err;

    memset(&u, 0, sizeof u);
    memset(v, 0, sizeof v);
    p->status = 400;
    p->field = NULL;
    p->reason[0] = '\0';

    if (!json_is_object(obj)) {
        err = fail(p, "body", "an entry must be a JSON object");
        goto out;
    }
    err = collect_members(obj, v, p);
    if (err)
        goto out;

    if (!v[M_PROXY_URL]) {
        err = fail(p, "proxy_url", "is required");
        goto out;
    }
    err = get_string(v[M_PROXY_URL], "proxy_url", &url, p);
    if (err)
        goto out;
    if (json_string_length(v[M_PROXY_URL]) >= ENTRY_URL_MAX) {
        err = fail(p, "proxy_url", "must be shorter than %d bytes",
                   ENTRY_URL_MAX);
        goto out;
    }
    if (entry_url_parse(url, -1, &u, &why)) {
        err = fail_url(p, why);
        goto out;
    }

    e = entry_new();
    if (!e) {
        err = -ENOMEM;
        goto out;
    }
    entry_key_from_normalised(u.normalised, e->key);
    e->scheme = u.scheme;
    if (entry_set_str(&e->proxy_url, u.normalised)) {
        err = -ENOMEM;
        goto out;
    }

    if (v[M_KEY]) {
        err = get_string(v[M_KEY], "key", &s, p);
        if (err)
            goto out;
        if (strcmp(s, e->key) != 0) {
            err = fail(p, "key", "does not match the key of proxy_url");
            goto out;
        }
    }
    if (v[M_PROTOCOL]) {
        enum entry_scheme sc;
        err = get_string(v[M_PROTOCOL], "protocol", &s, p);
        if (err)
            goto out;
        if (entry_scheme_parse(s, &sc) || sc != u.scheme) {
            err = fail(p, "protocol", "does not match the proxy_url scheme");
            goto out;
        }
    }

    err = parse_metadata(ctx, v, e, &f, now, p);
    if (err)
        goto out;
    err = parse_credentials(ctx, v, &u, e, &f, p);
    if (err)
        goto out;

    entry_compute_expiry(e);
    if (entry_validate(e, &why)) {
        err = fail(p, "body", "invalid entry: %s", why ? why : "invalid");
        goto out;
    }
    *out = e;
    *fields = f;
    e = NULL;
    err = 0;
out:
    /* Whatever happened, no plain-text credential outlives this call. */
    if (v[M_PROXY_URL] && json_is_string(v[M_PROXY_URL]) &&
        strchr(json_string_value(v[M_PROXY_URL]), '@'))
        wipe_json_string(v[M_PROXY_URL]);
    wipe_json_string(v[M_USERNAME]);
    wipe_json_string(v[M_PASSWORD]);
    entry_url_fini(&u);
    entry_unref(e);
    if (err == -ENOMEM) {
        p->status = 503;
        p->field = NULL;
        snprintf(p->reason, sizeof p->reason, "out of memory");
    }
    return err;
}

/* ------------------------------------------------------------------ */
/* Request helpers (api_int.h)                                         */
/* ------------------------------------------------------------------ */

const char *api_query(const struct api_request *req, const char *name)
{
    if (!req || !req->query)
        return NULL;
    return req->query(req, name);
}

int api_query_int(const struct api_request *req, const char *name,
                  int64_t min, int64_t max, int64_t def, int64_t *out,
                  struct api_response *resp)
{
    const char *s = api_query(req, name);
    const char *d;
    long long n;
    char *end;

    if (!s) {
        *out = def;
        return 0;
    }
    d = s;
    if (*d == '-')
        d++;
    if (*d == '\0' || strspn(d, "0123456789") != strlen(d) ||
        strlen(d) > 18) {
        problem_respond(resp, 400, name, "must be an integer between %" PRId64
                        " and %" PRId64, min, max);
        return -EINVAL;
    }
    errno = 0;
    n = strtoll(s, &end, 10);
    if (errno || *end != '\0' || n < min || n > max) {
        problem_respond(resp, 400, name, "must be between %" PRId64
                        " and %" PRId64, min, max);
        return -EINVAL;
    }
    *out = (int64_t)n;
    return 0;
}

int api_query_bool(const struct api_request *req, const char *name, bool def,
                   bool *out, struct api_response *resp)
{
    const char *s = api_query(req, name);

    if (!s) {
        *out = def;
        return 0;
    }
    if (*s == '\0' || strcmp(s, "true") == 0 || strcmp(s, "1") == 0) {
        *out = true;
        return 0;
    }
    if (strcmp(s, "false") == 0 || strcmp(s, "0") == 0) {
        *out = false;
        return 0;
    }
    problem_respond(resp, 400, name, "must be true or false");
    return -EINVAL;
}

int api_require_json(const struct api_request *req, struct api_response *resp)
{
    if (req->content_type && strcmp(req->content_type, API_CT_JSON) == 0)
        return 0;
    problem_respond(resp, 415, NULL, "Content-Type must be application/json");
    return -EINVAL;
}

/*
 * jansson's allocator (installed once by json_io_install_allocator(), before
 * any thread starts).
 *  - Every block jansson frees is wiped first: request JSON may carry
 *    plain-text credentials, and the parser's internal buffers and strings
 *    are freed on every path, including early rejections.
 *  - While a request body is parsed, the thread has an allocation budget
 *    (a multiple of the body size, capped), so that a small body of tiny
 *    values ("[0,0,0,...]" expands ~20x into a tree) cannot take hundreds
 *    of MiB per request. These two thread-locals are the only per-thread
 *    state in api/; they are reset around each parse.
 */
static _Thread_local size_t jbudget; /* 0: no budget */
static _Thread_local size_t jused;
static _Thread_local bool jrefused; /* the budget refused an allocation */

#define PARSE_BUDGET_FACTOR 8
#define PARSE_BUDGET_SLACK ((size_t)4 << 20)
#define PARSE_BUDGET_MAX ((size_t)64 << 20)

static void *jalloc(size_t n)
{
    void *p;

    if (jbudget && (n > jbudget || jused > jbudget - n)) {
        jrefused = true;
        return NULL;
    }
    p = malloc(n);
    if (p && jbudget)
        jused += malloc_usable_size(p);
    return p;
}

static void jfree(void *p)
{
    size_t n;

    if (!p)
        return;
    n = malloc_usable_size(p);
    jused = jused > n ? jused - n : 0;
    OPENSSL_cleanse(p, n);
    free(p);
}

void json_io_install_allocator(void)
{
    json_set_alloc_funcs(jalloc, jfree);
}

json_t *api_parse_body(const struct api_request *req,
                       struct api_response *resp)
{
    json_error_t jerr;
    const char *why;
    json_t *root;
    size_t budget;

    if (!req->body || req->body_len == 0) {
        problem_respond(resp, 400, "body", "the request body is empty");
        return NULL;
    }
    budget = req->body_len > (PARSE_BUDGET_MAX - PARSE_BUDGET_SLACK) /
                                 PARSE_BUDGET_FACTOR
                 ? PARSE_BUDGET_MAX
                 : req->body_len * PARSE_BUDGET_FACTOR + PARSE_BUDGET_SLACK;
    jused = 0;
    jrefused = false;
    jbudget = budget;
    root = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &jerr);
    jbudget = 0;
    if (root)
        return root;
    if (jrefused) {
        /* jansson may report the refusal as any error: the flag decides. */
        problem_respond(resp, 413, "body",
                        "the JSON document expands beyond %zu bytes in "
                        "memory: send fewer values per request",
                        budget);
        return NULL;
    }
    /* jerr.text may quote the body (credentials): never echo it. */
    switch (json_error_code(&jerr)) {
    case json_error_out_of_memory:
        problem_respond(resp, 503, NULL, "out of memory");
        return NULL;
    case json_error_stack_overflow:
        why = "nested too deeply";
        break;
    case json_error_invalid_utf8:
        why = "invalid UTF-8";
        break;
    case json_error_duplicate_key:
        why = "duplicate member";
        break;
    case json_error_numeric_overflow:
        why = "number out of range";
        break;
    case json_error_null_character:
    case json_error_null_byte_in_key:
        why = "NUL character in a string";
        break;
    case json_error_premature_end_of_input:
        why = "unexpected end of input";
        break;
    case json_error_end_of_input_expected:
        why = "data after the JSON value";
        break;
    default:
        why = "malformed JSON";
        break;
    }
    problem_respond(resp, 400, "body", "%s at line %d, column %d", why,
                    jerr.line, jerr.column);
    return NULL;
}

json_t *api_tiers_json(unsigned mask)
{
    json_t *a = json_array();
    int t;

    if (!a)
        return NULL;
    for (t = 0; t < CACHE_NTIERS; t++) {
        if (mask & CACHE_TIER_MASK(t))
            json_array_append_new(a,
                                  json_string(cache_tier_name(
                                      (enum cache_tier)t)));
    }
    return a;
}

void api_put_tiers(struct jbuf *b, unsigned mask)
{
    bool first = true;
    int t;

    jbuf_putc(b, '[');
    for (t = 0; t < CACHE_NTIERS; t++) {
        if (!(mask & CACHE_TIER_MASK(t)))
            continue;
        if (!first)
            jbuf_putc(b, ',');
        first = false;
        jbuf_putc(b, '"');
        jbuf_puts(b, cache_tier_name((enum cache_tier)t));
        jbuf_putc(b, '"');
    }
    jbuf_putc(b, ']');
}

unsigned api_tiers_available(struct cache *c)
{
    struct cache_stats st;
    unsigned mask = CACHE_TIER_MASK(CACHE_L1);
    int t;

    if (!c)
        return mask;
    cache_stats_snapshot(c, &st);
    for (t = CACHE_L2; t < CACHE_NTIERS; t++) {
        if (st.tier[t].present && !st.tier[t].degraded)
            mask |= CACHE_TIER_MASK(t);
    }
    return mask;
}

void api_respond_jbuf(struct api_response *resp, unsigned status,
                      struct jbuf *b)
{
    int err = jbuf_failed(b);
    size_t len = 0;
    char *body;

    if (err) {
        jbuf_fini(b);
        if (err == -E2BIG)
            problem_respond(resp, 500, NULL, "response too large");
        else
            problem_respond(resp, 503, NULL, "out of memory");
        return;
    }
    body = jbuf_steal(b, &len);
    if (!body) {
        problem_respond(resp, 503, NULL, "out of memory");
        return;
    }
    free(resp->body);
    resp->status = status;
    resp->content_type = API_CT_JSON;
    resp->body = body;
    resp->body_len = len;
}

/* base64url alphabet (RFC 4648 §5). */
static const char b64url[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

void api_cursor_encode(const char *key, char *out, size_t len)
{
    const unsigned char *in = (const unsigned char *)key;
    size_t n = strnlen(key, ENTRY_KEY_LEN), i, o = 0;

    if (len == 0)
        return;
    for (i = 0; i < n && o + 4 < len; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        size_t rem = n - i;
        if (rem > 1)
            v |= (uint32_t)in[i + 1] << 8;
        if (rem > 2)
            v |= in[i + 2];
        out[o++] = b64url[(v >> 18) & 63];
        out[o++] = b64url[(v >> 12) & 63];
        if (rem > 1)
            out[o++] = b64url[(v >> 6) & 63];
        if (rem > 2)
            out[o++] = b64url[v & 63];
    }
    out[o] = '\0';
}

int api_cursor_decode(const char *cursor, char key[ENTRY_KEY_LEN + 1])
{
    char raw[ENTRY_KEY_LEN + 4];
    char check[128];
    size_t n, i, o = 0;
    uint32_t acc = 0;
    int bits = 0;

    if (!cursor)
        return -EINVAL;
    n = strnlen(cursor, 128);
    while (n > 0 && cursor[n - 1] == '=')
        n--;
    if (n != 86) /* ceil(64 * 4 / 3) */
        return -EINVAL;
    for (i = 0; i < n; i++) {
        const char *pos = memchr(b64url, cursor[i], 64);
        if (!pos || cursor[i] == '\0')
            return -EINVAL;
        acc = (acc << 6) | (uint32_t)(pos - b64url);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o >= ENTRY_KEY_LEN)
                return -EINVAL;
            raw[o++] = (char)((acc >> bits) & 0xff);
        }
    }
    if (o != ENTRY_KEY_LEN)
        return -EINVAL;
    raw[o] = '\0';
    if (!entry_key_valid(raw))
        return -EINVAL;
    /* Canonical form only: the unused low bits must be zero. */
    api_cursor_encode(raw, check, sizeof check);
    if (strncmp(check, cursor, n) != 0)
        return -EINVAL;
    memcpy(key, raw, ENTRY_KEY_LEN + 1);
    return 0;
}

void jbuf_put_field(struct jbuf *b, const char *field)
{
    size_t n = strnlen(field, 129);

    if (n > 128) {
        n = 128;
        while (n > 0 && ((unsigned char)field[n] & 0xc0) == 0x80)
            n--;
    }
    jbuf_put(b, "\"field\":", 8);
    jbuf_put_jstr(b, field, n);
}
