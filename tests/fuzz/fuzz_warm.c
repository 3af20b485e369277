/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer harness of the warm parsers (storage/formats.c): text, JSON
 * (array or reference document), JSONL, CSV and AUTO detection.
 *
 * Why: POST /v1/warm feeds request bodies to these parsers chunk by chunk
 * as they arrive from the network, so both the bytes and where the chunks
 * end are chosen by the client. A parser must never crash, and what it
 * reports must not depend on how the body was cut.
 *
 * Input layout: byte 0 picks the kind (byte % 5: AUTO, TEXT, JSON, JSONL,
 * CSV); byte 1 seeds the chunk sizes; byte 2 bit 0 turns on run-length
 * expansion of the body (0xff n repeats the previous byte (n + 1) * 512
 * times, so 64 KiB line and element limits are reachable from small
 * inputs), bits 1..7 give a callback number at which to stop (0: never);
 * the rest is the body.
 *
 * The body is parsed several times: in one feed; in pseudo-random chunks
 * (1..3 bytes, up to 64, up to 4096 or up to all, with empty feeds mixed
 * in); byte by byte when it is short; and with the callbacks asking to stop
 * at the chosen callback. Invariants (trap on violation):
 *  - every record has a proxy_url; line numbers start at 1 and never go
 *    back; default_scheme is -1 (only for a URL with "://") or a valid
 *    scheme; plain and sealed credentials never both; fetch_time,
 *    ttl_seconds, latency_ms are -1 or >= 0; every string is readable
 *    (ASan) and bounded; reasons are short printable ASCII;
 *  - the sequence of callbacks (every field of every record and error),
 *    the final return and the document error are the same for every
 *    chunking;
 *  - a callback's non-zero return is returned by feed/finish, no callback
 *    runs after it, and the callbacks before it are a prefix of the full
 *    run; a feed after finish fails without a callback;
 *  - each record's URL goes through entry_url_parse() as the API does.
 */
#include "config.h"

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "storage/entry.h"
#include "storage/formats.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Report the broken invariant, then trap (libFuzzer saves the input). */
#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__,         \
                    __LINE__, #cond);                                          \
            __builtin_trap();                                                  \
        }                                                                      \
    } while (0)

#define HDR_LEN 3
#define EXPAND_UNIT 512
#define EXPANDED_MAX (FORMATS_LINE_MAX + (16u << 10))
#define BYTEWISE_MAX 4096
#define STOP_VALUE 42
#define REASON_MAX 160

/* What one parse saw: a hash chain over the callbacks. */
struct run {
    uint64_t *chain; /* chain[i]: hash of callbacks 0..i */
    size_t n;
    size_t cap;
    uint64_t h;
    size_t last_line;
    size_t stop_at; /* 1-based callback that returns STOP_VALUE; 0 none */
    bool stopped;
    bool oom;
    int rc;          /* first non-zero return of feed/finish, or 0 */
    char err[REASON_MAX];
};

static uint64_t mix(uint64_t h, const void *p, size_t len)
{
    const unsigned char *b = p;
    size_t i;

    for (i = 0; i < len; i++) {
        h ^= b[i];
        h *= UINT64_C(0x100000001b3);
    }
    return h;
}

static uint64_t mix_str(uint64_t h, const char *s)
{
    static const char null_mark[] = "\x01(null)";

    if (!s)
        return mix(h, null_mark, sizeof null_mark);
    /* strlen walks the string: ASan checks it is live and terminated */
    return mix(h, s, strlen(s) + 1);
}

static uint64_t mix_i64(uint64_t h, int64_t v)
{
    return mix(h, &v, sizeof v);
}

/* Account one callback; returns its return value. */
static int event(struct run *r, size_t line, uint64_t h)
{
    CHECK(!r->stopped); /* a callback after a stop */
    CHECK(line >= 1);
    CHECK(line >= r->last_line);
    r->last_line = line;
    r->h = mix(r->h ^ h, &line, sizeof line);
    if (r->n == r->cap) {
        size_t cap = r->cap ? 2 * r->cap : 256;
        uint64_t *c = realloc(r->chain, cap * sizeof *c);

        if (!c) {
            r->oom = true;
            return -ENOMEM;
        }
        r->chain = c;
        r->cap = cap;
    }
    r->chain[r->n++] = r->h;
    if (r->stop_at != 0 && r->n == r->stop_at) {
        r->stopped = true;
        return STOP_VALUE;
    }
    return 0;
}

static void check_bounded(const char *s)
{
    if (s)
        CHECK(strnlen(s, FORMATS_LINE_MAX + 1) <= FORMATS_LINE_MAX);
}

static int on_record(void *arg, const struct formats_record *rec)
{
    struct run *r = arg;
    struct entry_url u;
    bool has_scheme;
    uint64_t h = 0xcbf29ce484222325u;

    CHECK(rec != NULL && rec->proxy_url != NULL);
    check_bounded(rec->proxy_url);
    has_scheme = strstr(rec->proxy_url, "://") != NULL;
    /* A bare host:port always gets a scheme. (The converse does not hold:
     * a CSV or JSON host such as "://" gives "[://]:9" with the default
     * scheme, which entry_url_parse() rejects; checked below.) */
    if (rec->default_scheme == -1)
        CHECK(has_scheme);
    CHECK(rec->default_scheme >= -1 &&
          rec->default_scheme <= ENTRY_SCHEME_SOCKS5);
    CHECK(!(rec->username && rec->username_tok));
    CHECK(!(rec->password && rec->password_tok));
    CHECK(rec->fetch_time == -1 || rec->fetch_time >= 0);
    CHECK(rec->ttl_seconds >= -1);
    CHECK(rec->latency_ms >= -1);
    check_bounded(rec->username);
    check_bounded(rec->password);
    check_bounded(rec->source);
    check_bounded(rec->country);
    check_bounded(rec->anonymity);
    check_bounded(rec->health);

    h = mix_str(h, "R");
    h = mix_str(h, rec->proxy_url);
    h = mix_i64(h, rec->default_scheme);
    h = mix_str(h, rec->username);
    h = mix_str(h, rec->password);
    h = mix_str(h, rec->source);
    h = mix_i64(h, rec->fetch_time);
    h = mix_i64(h, rec->ttl_seconds);
    h = mix_str(h, rec->country);
    h = mix_str(h, rec->anonymity);
    h = mix_i64(h, rec->latency_ms);
    h = mix_str(h, rec->health);
    h = mix_str(h, rec->username_tok);
    h = mix_str(h, rec->password_tok);

    /* what the API does next with the URL */
    if (entry_url_parse(rec->proxy_url, rec->default_scheme, &u, NULL) == 0) {
        struct entry_url v;

        /* a scheme in the URL is never overridden by the default */
        if (has_scheme && rec->default_scheme != -1 &&
            entry_url_parse(rec->proxy_url, -1, &v, NULL) == 0) {
            CHECK(strcmp(u.normalised, v.normalised) == 0);
            entry_url_fini(&v);
        }
        entry_url_fini(&u);
    }
    return event(r, rec->line, h);
}

static int on_error(void *arg, size_t line, const char *reason)
{
    struct run *r = arg;
    uint64_t h = 0xcbf29ce484222325u;
    size_t i, len;

    CHECK(reason != NULL);
    len = strlen(reason);
    CHECK(len > 0 && len < REASON_MAX);
    for (i = 0; i < len; i++)
        CHECK(reason[i] >= 0x20 && reason[i] < 0x7f);
    h = mix_str(h, "E");
    h = mix_str(h, reason);
    return event(r, line, h);
}

static uint32_t next_rand(uint32_t *s)
{
    uint32_t x = *s;

    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    *s = x;
    return x;
}

/* Size of the next chunk (>= 1) of at most left bytes; 0 = empty feed. */
static size_t chunk_size(uint32_t *seed, size_t left)
{
    uint32_t v = next_rand(seed);
    size_t max;

    switch (v % 17) {
    case 0:
        return 0;
    case 1:
    case 2:
    case 3:
    case 4:
        max = 3;
        break;
    case 5:
    case 6:
    case 7:
    case 8:
        max = 64;
        break;
    case 9:
    case 10:
    case 11:
    case 12:
        max = 4096;
        break;
    default:
        max = left;
        break;
    }
    v = next_rand(seed);
    max = max < left ? max : left;
    return 1 + v % max;
}

/*
 * Parse body with the given chunking: step 0 = one feed, 1 = byte by
 * byte, else pseudo-random chunks from seed. Fills r.
 */
static void parse(enum formats_kind kind, const char *body, size_t len,
                  int step, uint32_t seed, struct run *r)
{
    struct formats_warm_cb cb = {on_record, on_error, r};
    struct formats_warm *p = NULL;
    size_t off = 0, n_before;
    int err;

    err = formats_warm_new(kind, &cb, &p);
    if (err < 0) {
        CHECK(err == -ENOMEM);
        r->oom = true;
        return;
    }
    if (seed == 0)
        seed = 0x9e3779b9u;
    while (off < len) {
        size_t n = step == 0 ? len - off
                   : step == 1 ? 1
                               : chunk_size(&seed, len - off);

        n_before = r->n;
        err = formats_warm_feed(p, body + off, n);
        off += n;
        if (err != 0 && r->rc == 0) {
            r->rc = err;
        } else if (err != 0 || r->rc != 0) {
            /* sticky: the same value, and nothing more was reported */
            CHECK(err == r->rc);
            CHECK(r->n == n_before);
        }
    }
    n_before = r->n;
    err = formats_warm_finish(p);
    if (r->rc == 0) {
        r->rc = err;
    } else {
        CHECK(err == r->rc);
        CHECK(r->n == n_before);
    }
    CHECK(err == 0 || err == -EINVAL || err == -ENOMEM || err == STOP_VALUE);
    if (r->stopped)
        CHECK(r->rc == STOP_VALUE);
    else
        CHECK(r->rc != STOP_VALUE);
    if (err == -ENOMEM)
        r->oom = true;
    if (err == -EINVAL) {
        const char *why = formats_warm_error(p);

        CHECK(why != NULL && why[0] != '\0');
        CHECK(strlen(why) < sizeof r->err);
        snprintf(r->err, sizeof r->err, "%s", why);
    }

    /* Nothing is accepted after the end, and nothing is reported. */
    n_before = r->n;
    err = formats_warm_feed(p, "x\n", 2);
    CHECK(err != 0);
    CHECK(r->n == n_before);

    formats_warm_free(p);
}

static void run_free(struct run *r)
{
    free(r->chain);
}

static void run_init(struct run *r, size_t stop_at)
{
    memset(r, 0, sizeof *r);
    r->h = 0xcbf29ce484222325u;
    r->stop_at = stop_at;
}

static void check_same(const struct run *a, const struct run *b)
{
    if (a->oom || b->oom)
        return;
    CHECK(a->n == b->n);
    CHECK(a->h == b->h);
    CHECK(a->rc == b->rc);
    CHECK(strcmp(a->err, b->err) == 0);
}

/* Bytes of the expansion of in[0..len) (see expand()), capped. */
static size_t expanded_len(const uint8_t *in, size_t len)
{
    size_t i, n = 0;

    for (i = 0; i < len && n < EXPANDED_MAX; i++) {
        if (in[i] == 0xff && i + 1 < len)
            n += ((size_t)in[++i] + 1) * EXPAND_UNIT;
        else
            n++;
    }
    return n < EXPANDED_MAX ? n : EXPANDED_MAX;
}

/* Expand 0xff n into (n + 1) * EXPAND_UNIT copies of the previous byte,
 * into an exact-size buffer. */
static char *expand(const uint8_t *in, size_t len, size_t *outlen)
{
    size_t cap = expanded_len(in, len), i, n = 0;
    char *out = malloc(cap ? cap : 1);
    char prev = 'a';

    if (!out)
        return NULL;
    for (i = 0; i < len && n < cap; i++) {
        if (in[i] == 0xff && i + 1 < len) {
            size_t k = ((size_t)in[++i] + 1) * EXPAND_UNIT;

            if (k > cap - n)
                k = cap - n;
            memset(out + n, prev, k);
            n += k;
            continue;
        }
        prev = (char)in[i];
        out[n++] = prev;
    }
    *outlen = n;
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct run whole, chunked, bytewise, stopped;
    enum formats_kind kind;
    uint32_t seed;
    size_t stop_at, len;
    char *body;

    if (size < HDR_LEN)
        return 0;
    kind = (enum formats_kind)(data[0] % 5);
    seed = (uint32_t)data[1] * 0x01000193u + 1;
    stop_at = data[2] >> 1;
    if (data[2] & 1) {
        body = expand(data + HDR_LEN, size - HDR_LEN, &len);
    } else {
        len = size - HDR_LEN;
        body = malloc(len ? len : 1); /* exact size: ASan sees overreads */
        if (body)
            memcpy(body, data + HDR_LEN, len);
    }
    if (!body)
        return 0;

    run_init(&whole, 0);
    parse(kind, body, len, 0, 0, &whole);

    run_init(&chunked, 0);
    parse(kind, body, len, 2, seed, &chunked);
    check_same(&whole, &chunked);
    run_free(&chunked);

    if (len <= BYTEWISE_MAX) {
        run_init(&bytewise, 0);
        parse(kind, body, len, 1, 0, &bytewise);
        check_same(&whole, &bytewise);
        run_free(&bytewise);
    }

    if (stop_at > 0 && stop_at <= whole.n && !whole.oom) {
        run_init(&stopped, stop_at);
        parse(kind, body, len, 2, seed ^ 0x5bd1e995u, &stopped);
        if (!stopped.oom) {
            CHECK(stopped.n == stop_at && stopped.rc == STOP_VALUE);
            CHECK(stopped.chain[stop_at - 1] == whole.chain[stop_at - 1]);
        }
        run_free(&stopped);
    }

    run_free(&whole);
    free(body);
    return 0;
}
