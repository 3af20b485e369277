/* SPDX-License-Identifier: MIT */
/*
 * POST /v1/warm, POST /v1/import (streamed bodies) and the --warm start-up
 * path (api_warm_file).
 *
 * Design: the body is never buffered whole. Warm feeds each chunk to the
 * push parser of storage/formats (text, JSON, JSONL, CSV, the reference's
 * documents), which calls back once per record; import splits the body into
 * lines itself and decodes each with formats_entry_from_line(), because an
 * export line carries everything (access statistics, failure_count) and
 * the round trip must lose nothing. Valid records are collected into
 * batches of WARM_BATCH items, each written with one cache_upsert() (one
 * L3 transaction), so memory stays flat whatever the body size.
 *
 * Counting: imported = created, updated = an existing entry changed,
 * skipped = a key already seen in this request (a small set of 64-bit key
 * prefixes), an expired import line, or an import line not newer than the
 * stored entry. Errors keep their line number; the first WARM_MAX_ERRORS
 * are returned with their reasons, which never quote credentials.
 *
 * api_warm_file() is the one place api/ reads a file: the --warm start-up
 * path, which runs before the HTTP server starts. It reads 64 KiB chunks
 * with fopen/fread into the very same state machine as the HTTP route.
 *
 * Thread-safety: a struct warm belongs to one request (one MHD thread at a
 * time); the cache is thread-safe.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/crypto.h>

#define LOG_MODULE "warm"
#include "api/api.h"
#include "api/api_int.h"
#include "api/json_io.h"
#include "api/problem.h"
#include "common/clock.h"
#include "common/log.h"
#include "storage/cache.h"
#include "storage/crypto.h"
#include "storage/entry.h"
#include "storage/formats.h"

#define WARM_BATCH 2000
#define WARM_MAX_ERRORS 100
#define WARM_REASON_MAX 192
#define WARM_TTL_MAX INT64_C(3153600000)
#define WARM_CREDENTIAL_MAX 1024
#define WARM_LATENCY_MAX INT64_C(3600000)
#define PROGRESS_NS UINT64_C(2000000000)
/* The seen-key set stops growing here (64 MiB); later duplicates then
 * count as updates instead of skips. */
#define SEEN_MAX_SLOTS (UINT64_C(1) << 23)
#define FILE_CHUNK (64 * 1024)

/* Returned by the parser callbacks to stop on a fatal error (w->fatal). */
#define STOP 1

struct warm_error {
    size_t line;
    char reason[WARM_REASON_MAX];
};

/* Open addressing set of 64-bit key prefixes; 0 marks an empty slot. */
struct seen_set {
    uint64_t *slots;
    size_t cap;     /* power of two, or 0 */
    size_t n;
    bool full;      /* stopped growing at SEEN_MAX_SLOTS */
};

struct warm {
    struct api_ctx *ctx;
    bool import;
    const char *what;             /* "warm" / "import" / the file path */
    struct formats_warm *parser;  /* warm only */

    /* import: the current line or array element (FORMATS_LINE_MAX + NUL) */
    char *line;
    size_t line_len;
    size_t line_no;               /* line, or element number in an array */
    bool line_too_long;
    enum { IMP_DETECT, IMP_LINES, IMP_ARRAY, IMP_ARRAY_END } imp_mode;
    /* JSON array splitter state */
    bool in_elem, in_string, escape;
    size_t depth;

    /* warm: query overrides */
    char source[ENTRY_SOURCE_MAX + 1];
    bool have_source;
    int64_t ttl;                  /* -1: none */

    /* the batch being collected */
    struct cache_item items[WARM_BATCH];
    size_t item_lines[WARM_BATCH];
    size_t n_items;

    struct seen_set seen;
    uint64_t imported, updated, skipped, n_errors, records;
    struct warm_error errors[WARM_MAX_ERRORS];
    size_t n_reported;
    unsigned tiers;
    bool wrote;

    uint64_t bytes;
    bool unbounded;               /* --warm FILE: no --max-import-bytes */
    uint64_t start_ns, last_log_ns;
    int fatal;                    /* errno that stopped the run, or 0 */
    const char *doc_error;        /* reason when the document is unusable */
    bool done;                    /* finished or failed: ignore more input */
};

/* ---- seen set ---- */

static uint64_t key_hash(const char *key)
{
    uint64_t h = 0;
    int i;

    /* The key is a SHA-256 in hex: its first 16 digits are a fine hash. */
    for (i = 0; i < 16; i++) {
        char c = key[i];
        h = (h << 4) | (uint64_t)(c <= '9' ? c - '0' : c - 'a' + 10);
    }
    return h ? h : 1;
}

static int seen_grow(struct seen_set *s)
{
    size_t ncap = s->cap ? s->cap * 2 : 4096, i;
    uint64_t *ns;

    if (ncap > SEEN_MAX_SLOTS) {
        s->full = true;
        return 0;
    }
    ns = calloc(ncap, sizeof *ns);
    if (!ns)
        return -ENOMEM;
    for (i = 0; i < s->cap; i++) {
        uint64_t h = s->slots[i];
        size_t j;
        if (!h)
            continue;
        for (j = h & (ncap - 1); ns[j]; j = (j + 1) & (ncap - 1))
            ;
        ns[j] = h;
    }
    free(s->slots);
    s->slots = ns;
    s->cap = ncap;
    return 0;
}

/* 1 if key was already in the set; else adds it and returns 0.
 * -ENOMEM when the set cannot grow. */
static int seen_check_add(struct seen_set *s, const char *key)
{
    uint64_t h = key_hash(key);
    size_t j;
    int err;

    if (s->cap && !s->full && s->n * 2 >= s->cap) {
        err = seen_grow(s);
        if (err)
            return err;
    }
    if (!s->cap) {
        err = seen_grow(s);
        if (err)
            return err;
    }
    for (j = h & (s->cap - 1); s->slots[j]; j = (j + 1) & (s->cap - 1)) {
        if (s->slots[j] == h)
            return 1;
    }
    /* A full set keeps a free slot for lookups: stop inserting at 3/4. */
    if (s->full && s->n * 4 >= s->cap * 3)
        return 0;
    s->slots[j] = h;
    s->n++;
    return 0;
}

static void seen_fini(struct seen_set *s)
{
    free(s->slots);
    memset(s, 0, sizeof *s);
}

/* ---- errors and progress ---- */

static void add_error(struct warm *w, size_t line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void add_error(struct warm *w, size_t line, const char *fmt, ...)
{
    va_list ap;

    w->n_errors++;
    if (w->n_reported >= WARM_MAX_ERRORS)
        return;
    w->errors[w->n_reported].line = line ? line : 1;
    va_start(ap, fmt);
    vsnprintf(w->errors[w->n_reported].reason, WARM_REASON_MAX, fmt, ap);
    va_end(ap);
    w->n_reported++;
}

static void log_progress(struct warm *w, bool final)
{
    uint64_t now = clock_mono_ns();
    double secs = (double)(now - w->start_ns) / 1e9;
    uint64_t done = w->imported + w->updated + w->skipped;

    if (!final && now - w->last_log_ns < PROGRESS_NS)
        return;
    w->last_log_ns = now;
    if (final)
        log_info("%s: done in %.3f s: %" PRIu64 " imported, %" PRIu64
                 " updated, %" PRIu64 " skipped, %" PRIu64 " errors",
                 w->what, secs, w->imported, w->updated, w->skipped,
                 w->n_errors);
    else
        log_info("%s: %" PRIu64 " records so far (%.0f/s)", w->what, done,
                 secs > 0 ? (double)done / secs : 0.0);
}

/* ---- batches ---- */

static void drop_batch(struct warm *w)
{
    size_t i;

    for (i = 0; i < w->n_items; i++)
        entry_unref(w->items[i].entry);
    w->n_items = 0;
}

/* Write the collected batch; 0 or the cache's errno (fatal). */
static int flush(struct warm *w)
{
    unsigned mask = 0;
    size_t i;
    int err;

    if (w->n_items == 0)
        return 0;
    err = cache_upsert(w->ctx->cache, w->items, w->n_items,
                       w->import ? CACHE_UPSERT_NEWER_ONLY : 0, &mask);
    if (err) {
        drop_batch(w);
        return err;
    }
    for (i = 0; i < w->n_items; i++) {
        const struct cache_item *it = &w->items[i];
        if (it->err)
            add_error(w, w->item_lines[i], "not stored: %s",
                      api_errno_reason(it->err));
        else if (it->outcome == CACHE_CREATED)
            w->imported++;
        else if (it->outcome == CACHE_UPDATED)
            w->updated++;
        else
            w->skipped++;
    }
    w->tiers = w->wrote ? (w->tiers & mask) : mask;
    w->wrote = true;
    drop_batch(w);
    log_progress(w, false);
    return 0;
}

/* Queue e (reference taken over) for line; flushes a full batch. */
static int enqueue(struct warm *w, struct entry *e, unsigned fields,
                   size_t line)
{
    w->items[w->n_items].entry = e;
    w->items[w->n_items].fields = fields;
    w->items[w->n_items].err = 0;
    w->item_lines[w->n_items] = line;
    w->n_items++;
    if (w->n_items == WARM_BATCH)
        return flush(w);
    return 0;
}

/* Seen before in this request? 1 yes (counted as skipped), 0 no, or
 * -ENOMEM. */
static int duplicate(struct warm *w, const char *key)
{
    int rc = seen_check_add(&w->seen, key);

    if (rc == 1)
        w->skipped++;
    return rc;
}

/* Every token of e must open with a configured key. NULL or the reason. */
static const char *check_tokens(struct warm *w, const char *ut,
                                const char *pt)
{
    const char *toks[2] = {ut, pt};
    int64_t now_s = clock_now_ms() / 1000;
    int i;

    if (!ut && !pt)
        return NULL;
    if (!w->ctx->ring)
        return "credentials are encrypted but no encryption key is "
               "configured";
    for (i = 0; i < 2; i++) {
        char *plain = NULL;
        size_t len = 0;
        if (!toks[i])
            continue;
        if (crypto_fernet_open(w->ctx->ring, toks[i], 0, now_s, &plain, &len))
            return "token does not decrypt with any configured key";
        crypto_free_secret(plain);
    }
    return NULL;
}

/* ---- warm records ---- */

/* Quote a URL in a reason: no userinfo, bounded. */
/* Optional metadata of a record (lenient: unusable values are ignored,
 * since scraped lists are messy; the URL is what matters). */
static void record_metadata(const struct formats_record *rec, struct entry *e,
                            unsigned *fields)
{
    enum entry_health h;
    enum entry_anonymity a;

    if (rec->health && entry_health_parse(rec->health, &h) == 0) {
        e->health = h;
        e->failure_count = 0;
        *fields |= CACHE_F_HEALTH;
    }
    if (rec->country && entry_country_parse(rec->country, e->country))
        *fields |= CACHE_F_COUNTRY;
    else
        e->country[0] = '\0';
    if (rec->anonymity && entry_anonymity_parse(rec->anonymity, &a) == 0 &&
        a != ENTRY_ANON_NONE) {
        e->anonymity = a;
        *fields |= CACHE_F_ANONYMITY;
    }
    if (rec->latency_ms >= 0 && rec->latency_ms <= WARM_LATENCY_MAX) {
        e->latency_ms = rec->latency_ms;
        *fields |= CACHE_F_LATENCY;
    }
}

/* Credentials of a record into e. NULL or the reason for a line error;
 * *err set on a fatal error. */
static const char *record_credentials(struct warm *w,
                                      const struct formats_record *rec,
                                      const struct entry_url *u,
                                      struct entry *e, unsigned *fields,
                                      int *err)
{
    const char *user = rec->username ? rec->username : u->username;
    const char *pass = rec->password ? rec->password : u->password;
    const char *why;

    *err = 0;
    if (rec->username_tok || rec->password_tok) {
        if (user || pass)
            return "both plain-text and encrypted credentials";
        why = check_tokens(w, rec->username_tok, rec->password_tok);
        if (why)
            return why;
        if (entry_set_str(&e->username_tok, rec->username_tok) ||
            entry_set_str(&e->password_tok, rec->password_tok)) {
            *err = -ENOMEM;
            return NULL;
        }
        *fields |= CACHE_F_CREDENTIALS;
        return NULL;
    }
    if ((user && strlen(user) > WARM_CREDENTIAL_MAX) ||
        (pass && strlen(pass) > WARM_CREDENTIAL_MAX))
        return "credentials longer than 1024 bytes";
    *err = api_seal_credentials(w->ctx, user, user ? strlen(user) : 0, pass,
                                pass ? strlen(pass) : 0, e, fields);
    return NULL;
}

static int on_record(void *arg, const struct formats_record *rec)
{
    struct warm *w = arg;
    struct entry_url u;
    struct entry *e = NULL;
    const char *why = NULL, *source;
    unsigned fields = CACHE_F_FETCH_TIME | CACHE_F_TTL;
    int64_t now = clock_now_ms(), ttl;
    int rc = 0, err;

    w->records++;
    memset(&u, 0, sizeof u);
    if (!rec->proxy_url ||
        entry_url_parse(rec->proxy_url, rec->default_scheme, &u, &why)) {
        /* Never quoted: see fail_url() in json_io.c. */
        add_error(w, rec->line, "invalid proxy URL: %s",
                  why ? why : "malformed");
        goto out;
    }
    e = entry_new();
    if (!e || entry_set_str(&e->proxy_url, u.normalised)) {
        w->fatal = -ENOMEM;
        rc = STOP;
        goto out;
    }
    entry_key_from_normalised(u.normalised, e->key);
    e->scheme = u.scheme;

    if (w->have_source) {
        source = w->source;
        fields |= CACHE_F_SOURCE;
    } else if (rec->source) {
        if (!entry_source_valid(rec->source)) {
            add_error(w, rec->line,
                      "source must be 1 to %d printable ASCII characters",
                      ENTRY_SOURCE_MAX);
            goto out;
        }
        source = rec->source;
        fields |= CACHE_F_SOURCE;
    } else {
        source = "unknown";
    }
    if (entry_set_str(&e->source, source)) {
        w->fatal = -ENOMEM;
        rc = STOP;
        goto out;
    }
    if (w->ttl >= 0)
        ttl = w->ttl;
    else if (rec->ttl_seconds >= 0 && rec->ttl_seconds <= WARM_TTL_MAX)
        ttl = rec->ttl_seconds;
    else
        ttl = cache_ttl_for_source(w->ctx->cache, source);
    e->ttl_seconds = ttl;
    /* The input's fetch_time counts only when recent: not in the future
     * and not older than its TTL. Otherwise the warm is the fetch. */
    e->fetch_time = now;
    if (rec->fetch_time >= 0 && rec->fetch_time <= now &&
        (now - rec->fetch_time) / 1000 < ttl)
        e->fetch_time = rec->fetch_time;
    record_metadata(rec, e, &fields);
    why = record_credentials(w, rec, &u, e, &fields, &err);
    if (err) {
        w->fatal = err;
        rc = STOP;
        goto out;
    }
    if (why) {
        add_error(w, rec->line, "%s", why);
        goto out;
    }
    entry_compute_expiry(e);
    if (entry_validate(e, &why)) {
        add_error(w, rec->line, "invalid entry: %s", why ? why : "invalid");
        goto out;
    }
    err = duplicate(w, e->key);
    if (err < 0) {
        w->fatal = err;
        rc = STOP;
        goto out;
    }
    if (err == 1)
        goto out;
    err = enqueue(w, e, fields, rec->line);
    e = NULL;
    if (err) {
        w->fatal = err;
        rc = STOP;
    }
out:
    entry_url_fini(&u);
    entry_unref(e);
    return rc;
}

static int on_error(void *arg, size_t line, const char *reason)
{
    struct warm *w = arg;

    add_error(w, line, "%s", reason ? reason : "invalid record");
    return 0;
}

/* ---- import lines ---- */

/*
 * Import recomputes expires_at from fetch_time + ttl_seconds (SPEC §5), but
 * the line codec insists that a present expires_at agrees. So a line whose
 * only fault is its expires_at is decoded again without that member (rare:
 * the fast path parses once).
 */
static int decode_without_expiry(const char *line, size_t len,
                                 struct entry **out, char *key,
                                 const char **why)
{
    json_t *o = json_loadb(line, len, JSON_REJECT_DUPLICATES, NULL);
    char *again = NULL;
    int err = -EBADMSG;

    if (!json_is_object(o))
        goto out;
    json_object_del(o, "expires_at");
    again = json_dumps(o, JSON_COMPACT);
    if (!again) {
        err = -ENOMEM;
        goto out;
    }
    err = formats_entry_from_line(again, strlen(again), out, key, why);
out:
    if (again) {
        OPENSSL_cleanse(again, strlen(again));
        free(again);
    }
    json_decref(o);
    return err;
}

static int import_line(struct warm *w, const char *line, size_t len,
                       size_t line_no)
{
    char key[ENTRY_KEY_LEN + 1] = "";
    const char *why = NULL;
    struct entry *e = NULL;
    size_t i;
    int err;

    while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == ' ' ||
                       line[len - 1] == '\t'))
        len--;
    for (i = 0; i < len && (line[i] == ' ' || line[i] == '\t'); i++)
        ;
    if (i == len)
        return 0; /* blank */
    w->records++;
    err = formats_entry_from_line(line, len, &e, key, &why);
    if (err == -EBADMSG && why && strstr(why, "expires_at"))
        err = decode_without_expiry(line, len, &e, key, &why);
    if (err == -ENOMEM)
        return err;
    if (err) {
        add_error(w, line_no, "%s", why ? why : "invalid line");
        return 0;
    }
    entry_compute_expiry(e);
    if (e->fetch_time > clock_now_ms() + FUTURE_SKEW_MS) {
        /* Such an entry would outlive its TTL by years: refuse the line. */
        add_error(w, line_no, "fetch_time must not be in the future");
        goto out;
    }
    if (entry_expired(e, clock_now_ms())) {
        w->skipped++;
        goto out;
    }
    why = check_tokens(w, e->username_tok, e->password_tok);
    if (why) {
        add_error(w, line_no, "%s", why);
        goto out;
    }
    err = duplicate(w, e->key);
    if (err < 0)
        goto out;
    if (err == 1) {
        err = 0;
        goto out;
    }
    err = enqueue(w, e, CACHE_F_ALL, line_no);
    e = NULL;
out:
    entry_unref(e);
    return err;
}

/* Split data into lines; a line longer than FORMATS_LINE_MAX is an error
 * reported once at its end. */
static int lines_feed(struct warm *w, const char *data, size_t len)
{
    while (len > 0) {
        const char *nl = memchr(data, '\n', len);
        size_t take = nl ? (size_t)(nl - data) : len;
        int err;

        if (!w->line_too_long) {
            if (w->line_len + take > FORMATS_LINE_MAX) {
                w->line_too_long = true;
            } else {
                memcpy(w->line + w->line_len, data, take);
                w->line_len += take;
            }
        }
        if (!nl)
            return 0;
        w->line_no++;
        if (w->line_too_long) {
            add_error(w, w->line_no, "line longer than %d bytes",
                      FORMATS_LINE_MAX);
            err = 0;
        } else {
            err = import_line(w, w->line, w->line_len, w->line_no);
        }
        OPENSSL_cleanse(w->line, w->line_len);
        w->line_len = 0;
        w->line_too_long = false;
        if (err)
            return err;
        data = nl + 1;
        len -= take + 1;
    }
    return 0;
}

/* One complete element of a JSON array body. */
static int array_element(struct warm *w)
{
    int err = 0;

    w->line_no++;
    if (w->line_too_long)
        add_error(w, w->line_no, "element longer than %d bytes",
                  FORMATS_LINE_MAX);
    else
        err = import_line(w, w->line, w->line_len, w->line_no);
    OPENSSL_cleanse(w->line, w->line_len);
    w->line_len = 0;
    w->line_too_long = false;
    w->in_elem = false;
    return err;
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/*
 * A JSON array of export objects, split into elements by a string- and
 * depth-aware scanner (jansson then sees one element at a time, so memory
 * stays at one element whatever the array's size).
 */
static int array_feed(struct warm *w, const char *data, size_t len)
{
    size_t i;
    int err;

    for (i = 0; i < len; i++) {
        char c = data[i];

        if (w->imp_mode == IMP_ARRAY_END) {
            if (is_space(c))
                continue;
            w->doc_error = "data after the end of the JSON array";
            return -EINVAL;
        }
        if (!w->in_elem) {
            if (is_space(c) || c == ',')
                continue;
            if (c == ']') {
                w->imp_mode = IMP_ARRAY_END;
                continue;
            }
            w->in_elem = true;
            w->in_string = w->escape = false;
            w->depth = 0;
        }
        if (w->in_string) {
            if (w->escape)
                w->escape = false;
            else if (c == '\\')
                w->escape = true;
            else if (c == '"')
                w->in_string = false;
        } else if (c == '"') {
            w->in_string = true;
        } else if (c == '{' || c == '[') {
            w->depth++;
        } else if ((c == '}' || c == ']') && w->depth > 0) {
            w->depth--;
        } else if (c == ',' && w->depth == 0) {
            err = array_element(w);
            if (err)
                return err;
            continue;
        } else if (c == ']') {
            /* The array's own end right after an element. */
            err = array_element(w);
            if (err)
                return err;
            w->imp_mode = IMP_ARRAY_END;
            continue;
        }
        if (w->line_len < FORMATS_LINE_MAX)
            w->line[w->line_len++] = c;
        else
            w->line_too_long = true;
    }
    return 0;
}

/* Import body: JSONL (an export stream) or a JSON array of export
 * objects, told apart by the first non-blank byte. */
static int import_feed(struct warm *w, const char *data, size_t len)
{
    while (w->imp_mode == IMP_DETECT && len > 0) {
        if (*data == '[') {
            w->imp_mode = IMP_ARRAY;
            data++;
            len--;
        } else if (is_space(*data)) {
            if (*data == '\n')
                w->line_no++;
            data++;
            len--;
        } else {
            w->imp_mode = IMP_LINES;
        }
    }
    if (len == 0)
        return 0;
    if (w->imp_mode == IMP_LINES)
        return lines_feed(w, data, len);
    return array_feed(w, data, len);
}

/* End of an import body. */
static int import_end(struct warm *w)
{
    if (w->imp_mode == IMP_LINES) {
        if (w->line_len > 0 || w->line_too_long)
            return lines_feed(w, "\n", 1);
        return 0;
    }
    if (w->imp_mode == IMP_ARRAY) {
        /* Truncated: what came complete is kept; say what was lost. */
        if (w->in_elem)
            w->line_len = 0;
        add_error(w, w->line_no + 1, "unexpected end of the JSON array");
    }
    return 0;
}

/* ---- the run ---- */

static void warm_free(void *st)
{
    struct warm *w = st;

    if (!w)
        return;
    drop_batch(w);
    formats_warm_free(w->parser);
    if (w->line) {
        OPENSSL_cleanse(w->line, FORMATS_LINE_MAX + 1);
        free(w->line);
    }
    seen_fini(&w->seen);
    free(w);
}

static int warm_new(struct api_ctx *ctx, bool import, enum formats_kind kind,
                    const char *what, struct warm **out)
{
    struct formats_warm_cb cb;
    struct warm *w;
    int err;

    w = calloc(1, sizeof *w);
    if (!w)
        return -ENOMEM;
    w->ctx = ctx;
    w->import = import;
    w->what = what;
    w->ttl = -1;
    w->start_ns = w->last_log_ns = clock_mono_ns();
    if (import) {
        w->line = malloc(FORMATS_LINE_MAX + 1);
        if (!w->line) {
            free(w);
            return -ENOMEM;
        }
    } else {
        cb.on_record = on_record;
        cb.on_error = on_error;
        cb.arg = w;
        err = formats_warm_new(kind, &cb, &w->parser);
        if (err) {
            free(w);
            return err;
        }
    }
    *out = w;
    return 0;
}

/* Push bytes: 0, -EINVAL (document unusable: w->doc_error), -E2BIG, or a
 * fatal errno. */
static int warm_push(struct warm *w, const char *data, size_t len)
{
    int err;

    if (w->done)
        return w->fatal ? w->fatal : -EINVAL;
    w->bytes += len;
    if (!w->unbounded && w->ctx->max_import_bytes &&
        w->bytes > w->ctx->max_import_bytes) {
        w->done = true;
        w->fatal = -E2BIG;
        return -E2BIG;
    }
    if (w->import) {
        err = import_feed(w, data, len);
        if (err)
            w->fatal = err;
    } else {
        err = formats_warm_feed(w->parser, data, len);
        if (err == STOP)
            err = w->fatal;
        else if (err == -EINVAL)
            w->doc_error = formats_warm_error(w->parser);
        else if (err > 0)
            err = -EIO;
    }
    if (err)
        w->done = true;
    return err;
}

static int warm_end(struct warm *w)
{
    int err = 0;

    if (w->done)
        return w->fatal ? w->fatal : -EINVAL;
    if (w->import) {
        err = import_end(w);
    } else {
        err = formats_warm_finish(w->parser);
        if (err == STOP)
            err = w->fatal;
        else if (err == -EINVAL)
            w->doc_error = formats_warm_error(w->parser);
        else if (err > 0)
            err = -EIO;
    }
    if (!err)
        err = flush(w);
    w->done = true;
    if (err && !w->fatal && err != -EINVAL)
        w->fatal = err;
    if (!err)
        log_progress(w, true);
    return err;
}

/* An error that stopped the run as a problem document. */
static void respond_failure(struct warm *w, int err,
                            struct api_response *resp)
{
    if (err == -EINVAL) {
        problem_respond(resp, 400, "body", "%s",
                        w->doc_error ? w->doc_error : "unusable input");
    } else if (err == -E2BIG) {
        problem_respond(resp, 413, NULL,
                        "the body is larger than %zu bytes",
                        w->ctx->max_import_bytes);
    } else {
        problem_respond_errno(resp, err,
                              w->imported + w->updated ?
                                  "stopped after a partial write" :
                                  "nothing was written");
        log_error("%s stopped after %" PRIu64 " records: %s", w->what,
                  w->imported + w->updated, api_errno_reason(err));
    }
}

static void respond_summary(struct warm *w, struct api_response *resp)
{
    struct jbuf b;
    size_t i;

    jbuf_init(&b, API_MAX_RESPONSE, false);
    jbuf_put(&b, "{\"imported\":", 12);
    jbuf_put_u64(&b, w->imported);
    jbuf_put(&b, ",\"updated\":", 11);
    jbuf_put_u64(&b, w->updated);
    jbuf_put(&b, ",\"skipped\":", 11);
    jbuf_put_u64(&b, w->skipped);
    jbuf_put(&b, ",\"error_count\":", 15);
    jbuf_put_u64(&b, w->n_errors);
    jbuf_put(&b, ",\"errors\":[", 11);
    for (i = 0; i < w->n_reported; i++) {
        if (i)
            jbuf_putc(&b, ',');
        jbuf_put(&b, "{\"line\":", 8);
        jbuf_put_u64(&b, w->errors[i].line);
        jbuf_put(&b, ",\"reason\":", 10);
        jbuf_put_jstr(&b, w->errors[i].reason, strlen(w->errors[i].reason));
        jbuf_putc(&b, '}');
    }
    jbuf_put(&b, "],\"tiers\":", 10);
    api_put_tiers(&b, w->wrote ? w->tiers :
                                 api_tiers_available(w->ctx->cache));
    jbuf_putc(&b, '}');
    api_respond_jbuf(resp, 200, &b);
}

/* ---- the api_stream glue ---- */

static int stream_feed(void *st, const char *data, size_t len,
                       struct api_response *resp)
{
    struct warm *w = st;
    int err = warm_push(w, data, len);

    if (err)
        respond_failure(w, err, resp);
    return err ? 1 : 0;
}

static void stream_finish(void *st, struct api_response *resp)
{
    struct warm *w = st;
    int err;

    if (w->done && (w->fatal || w->doc_error)) {
        /* feed already answered; answer again in case the service
         * discarded that response. */
        respond_failure(w, w->fatal ? w->fatal : -EINVAL, resp);
        return;
    }
    err = warm_end(w);
    if (err) {
        respond_failure(w, err, resp);
        return;
    }
    respond_summary(w, resp);
}

/* Content types a streamed route takes (a missing one is refused, as on
 * the JSON routes). Import tells JSONL from a JSON array by the first byte
 * whatever the type says. */
static int media_ok(const char *ct)
{
    static const char *const warm_types[] = {
        "text/plain",           "text/csv",           "application/json",
        "application/x-ndjson", "application/ndjson", "application/jsonl",
        "application/x-jsonl",  "application/x-jsonlines",
        "application/jsonlines",
    };
    size_t i;

    if (!ct)
        return 0;
    for (i = 0; i < sizeof warm_types / sizeof warm_types[0]; i++) {
        if (strcmp(ct, warm_types[i]) == 0)
            return 1;
    }
    return 0;
}

static int begin(struct api_ctx *ctx, const struct api_request *req,
                 struct api_stream *out, struct api_response *resp,
                 bool import)
{
    struct warm *w = NULL;
    const char *source = NULL;
    int64_t ttl = -1;
    int err;

    if (!media_ok(req->content_type)) {
        problem_respond(resp, 415, NULL,
                        "Content-Type must be text/plain, text/csv, "
                        "application/json or application/x-ndjson");
        return 1;
    }
    if (!import) {
        source = api_query(req, "source");
        if (source && !entry_source_valid(source)) {
            problem_respond(resp, 400, "source",
                            "must be 1 to %d printable ASCII characters",
                            ENTRY_SOURCE_MAX);
            return 1;
        }
        if (api_query_int(req, "ttl_seconds", 0, WARM_TTL_MAX, -1, &ttl,
                          resp))
            return 1;
    }
    err = warm_new(ctx, import,
                   formats_kind_from_content_type(req->content_type),
                   import ? "import" : "warm", &w);
    if (err) {
        problem_respond_errno(resp, err, "cannot start");
        return 1;
    }
    if (source) {
        snprintf(w->source, sizeof w->source, "%s", source);
        w->have_source = true;
    }
    w->ttl = ttl;
    out->st = w;
    out->feed = stream_feed;
    out->finish = stream_finish;
    out->free = warm_free;
    return 0;
}

int h_warm_begin(struct api_ctx *ctx, const struct api_request *req,
                 struct api_stream *out, struct api_response *resp)
{
    return begin(ctx, req, out, resp, false);
}

int h_import_begin(struct api_ctx *ctx, const struct api_request *req,
                   struct api_stream *out, struct api_response *resp)
{
    return begin(ctx, req, out, resp, true);
}

/* ---- --warm FILE ---- */

static enum formats_kind kind_from_path(const char *path)
{
    static const struct {
        const char *ext;
        enum formats_kind kind;
    } map[] = {
        {".json", FORMATS_JSON}, {".jsonl", FORMATS_JSONL},
        {".ndjson", FORMATS_JSONL}, {".csv", FORMATS_CSV},
        {".txt", FORMATS_TEXT},
    };
    size_t n = strlen(path), i;

    for (i = 0; i < sizeof map / sizeof map[0]; i++) {
        size_t m = strlen(map[i].ext);
        if (n > m && strcmp(path + n - m, map[i].ext) == 0)
            return map[i].kind;
    }
    return FORMATS_AUTO;
}

int api_warm_file(struct api_ctx *ctx, const char *path,
                  struct api_warm_counts *out)
{
    struct warm *w = NULL;
    char *chunk = NULL;
    FILE *f = NULL;
    size_t n, i;
    bool first = true;
    int err;

    f = fopen(path, "rb");
    if (!f) {
        err = -errno;
        log_error_errno(-err, "--warm %s: cannot open", path);
        return err;
    }
    chunk = malloc(FILE_CHUNK);
    err = chunk ? warm_new(ctx, false, kind_from_path(path), path, &w) :
                  -ENOMEM;
    if (err) {
        log_error("--warm %s: %s", path, api_errno_reason(err));
        goto out;
    }
    /* A file is not bounded by --max-import-bytes. */
    w->unbounded = true;
    for (;;) {
        n = fread(chunk, 1, FILE_CHUNK, f);
        if (n == 0)
            break;
        if (first && n >= 2 && (unsigned char)chunk[0] == 0x1f &&
            (unsigned char)chunk[1] == 0x8b) {
            log_error("--warm %s: gzip-compressed input is not supported; "
                      "gunzip it first",
                      path);
            err = -EINVAL;
            goto out;
        }
        first = false;
        err = warm_push(w, chunk, n);
        if (err)
            break;
    }
    if (!err && ferror(f)) {
        err = -EIO;
        log_error("--warm %s: read error", path);
        goto out;
    }
    if (!err)
        err = warm_end(w);
    if (err) {
        if (err == -EINVAL)
            log_error("--warm %s: %s", path,
                      w->doc_error ? w->doc_error : "unusable input");
        else
            log_error("--warm %s: stopped: %s", path,
                      api_errno_reason(err));
        goto out;
    }
    for (i = 0; i < w->n_reported && i < 5; i++)
        log_warn("--warm %s: line %zu: %s", path, w->errors[i].line,
                 w->errors[i].reason);
    if (out) {
        out->imported = w->imported;
        out->updated = w->updated;
        out->skipped = w->skipped;
        out->errors = w->n_errors;
    }
out:
    warm_free(w);
    free(chunk);
    fclose(f);
    return err;
}
