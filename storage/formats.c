/* SPDX-License-Identifier: MIT */
/*
 * Byte formats: the JSONL line of one entry (L2 shards, export, import) and
 * the push-driven parsers of warm inputs (text, JSON, JSONL, CSV).
 *
 * Line codec. Encoding is on the L2 write path, so it is assembled by hand
 * into one exactly-sized allocation instead of building a json_t tree: the
 * upper bound of the line is computed first (fixed members plus six bytes
 * per byte of every string, the worst case of JSON escaping), then written
 * with a bounds-asserting cursor. Decoding goes through jansson and is
 * strict: every member is type- and range-checked, unknown members are
 * rejected (a flipped byte in a member name must not silently drop data),
 * expires_at is recomputed and compared, and entry_validate() has the last
 * word. Times are RFC 3339 with milliseconds; an expires_at that cannot be
 * written that way (after year 9999, e.g. a huge TTL) is left out, which is
 * safe because it is derived data.
 *
 * Warm parsers. The body is never buffered whole. Text, CSV and JSONL are
 * split into lines in one line buffer of FORMATS_LINE_MAX (+CR, +NUL)
 * bytes; a longer line is reported once, at its end, and skipped. JSON is
 * walked by a small state machine that knows the shapes we accept (a
 * top-level array of elements; a top-level object whose "proxies" member is
 * an array of records or an object of per-protocol string arrays) and that
 * skips every other value by tracking only strings, escapes and nesting
 * depth. Each element is copied into an element buffer (same cap) and then
 * parsed by jansson, so jansson never sees more than one element. AUTO
 * detection buffers at most the first non-blank line in the line buffer,
 * then either continues with it as the current line or replays it into the
 * JSON walker. Peak memory is therefore about 2 x FORMATS_LINE_MAX.
 *
 * Errors: a bad line or element goes to on_error with a reason that names
 * at most a member or column, never input bytes (they may be credentials).
 * A document that is unusable as a whole makes feed/finish return -EINVAL
 * (sticky) with the reason in formats_warm_error(). A callback's non-zero
 * return stops the parser (sticky too); no callback runs after that.
 *
 * Thread-safety: no globals; a parser belongs to one thread. The codec
 * functions are reentrant. Ownership: the strings of a formats_record are
 * borrowed for the duration of the callback only.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/crypto.h>

#include "common/clock.h"
#include "common/svc.h"
#include "storage/formats.h"

/* 9999-12-31T23:59:59.999Z, the last instant RFC 3339 (4-digit years) can
 * write. */
#define TIME_MS_MAX INT64_C(253402300799999)

/* ---------------------------------------------------------------------- */
/* ASCII helpers (ctype.h depends on the locale). */

static bool is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' ||
           c == '\f';
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_alnum(char c)
{
    return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static char to_lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

/* Case-insensitive equality of s[0..len) and the lowercase name. */
static bool span_eq_ci(const char *s, size_t len, const char *name)
{
    size_t i;

    for (i = 0; i < len; i++) {
        if (name[i] == '\0' || to_lower(s[i]) != name[i])
            return false;
    }
    return name[len] == '\0';
}

/* Trim ASCII white space from both ends of s[0..*len); returns the start. */
static const char *trim(const char *s, size_t *len)
{
    size_t n = *len;

    while (n > 0 && is_ws(*s)) {
        s++;
        n--;
    }
    while (n > 0 && is_ws(s[n - 1]))
        n--;
    *len = n;
    return s;
}

static const char *const scheme_names[] = {
    [ENTRY_SCHEME_HTTP] = "http",
    [ENTRY_SCHEME_HTTPS] = "https",
    [ENTRY_SCHEME_SOCKS4] = "socks4",
    [ENTRY_SCHEME_SOCKS5] = "socks5",
};

/* enum entry_scheme of a case-insensitive protocol name, or -1. */
static int scheme_of(const char *s, size_t len)
{
    size_t i;

    for (i = 0; i < SVC_ARRAY_LEN(scheme_names); i++) {
        if (span_eq_ci(s, len, scheme_names[i]))
            return (int)i;
    }
    return -1;
}

static bool has_scheme(const char *url)
{
    return strstr(url, "://") != NULL;
}

/* ---------------------------------------------------------------------- */
/* Line encoder. */

/* Everything but the four free-form strings: member names, punctuation,
 * the key, 5 integers (<= 20 digits), 3 times, enum names, the country. */
#define LINE_FIXED_MAX 1024

struct obuf {
    char *p;
    size_t len;
    size_t cap;
};

static void ob_put(struct obuf *b, const char *s, size_t n)
{
    SVC_ASSERT(b->len + n <= b->cap);
    memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void ob_lit(struct obuf *b, const char *s)
{
    ob_put(b, s, strlen(s));
}

/* Worst case of ob_str(): every byte as \u00XX, plus the quotes. */
static size_t str_bound(const char *s)
{
    return (s ? 6 * strlen(s) : 0) + 2;
}

/* A JSON string literal. Control bytes are escaped; other bytes, including
 * UTF-8 sequences, are copied (entry_validate() keeps the fields ASCII). */
static void ob_str(struct obuf *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    char *w;

    SVC_ASSERT(b->len + str_bound(s) <= b->cap);
    w = b->p + b->len;
    *w++ = '"';
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;

        switch (c) {
        case '"':
        case '\\':
            *w++ = '\\';
            *w++ = (char)c;
            break;
        case '\n':
            *w++ = '\\';
            *w++ = 'n';
            break;
        case '\r':
            *w++ = '\\';
            *w++ = 'r';
            break;
        case '\t':
            *w++ = '\\';
            *w++ = 't';
            break;
        default:
            if (c < 0x20 || c == 0x7f) {
                *w++ = '\\';
                *w++ = 'u';
                *w++ = '0';
                *w++ = '0';
                *w++ = hex[c >> 4];
                *w++ = hex[c & 0x0f];
            } else {
                *w++ = (char)c;
            }
            break;
        }
    }
    *w++ = '"';
    b->len = (size_t)(w - b->p);
}

static void ob_i64(struct obuf *b, int64_t v)
{
    char num[24];
    int n = snprintf(num, sizeof num, "%" PRId64, v);

    SVC_ASSERT(n > 0 && (size_t)n < sizeof num);
    ob_put(b, num, (size_t)n);
}

static void ob_time(struct obuf *b, int64_t ms)
{
    char t[CLOCK_RFC3339_LEN];

    clock_format_rfc3339(ms, t, sizeof t);
    ob_str(b, t);
}

static void ob_member_str(struct obuf *b, const char *name, const char *s)
{
    ob_lit(b, ",\"");
    ob_lit(b, name);
    ob_lit(b, "\":");
    ob_str(b, s);
}

int formats_entry_to_line(const struct entry *e, char **line, size_t *len)
{
    const char *anon = entry_anonymity_name(e->anonymity);
    int64_t last = atomic_load(&e->last_accessed);
    uint64_t count = atomic_load(&e->access_count);
    struct obuf b;

    b.len = 0;
    b.cap = LINE_FIXED_MAX + str_bound(e->proxy_url) +
            str_bound(e->username_tok) + str_bound(e->password_tok) +
            str_bound(e->source);
    b.p = malloc(b.cap + 1); /* + NUL, not counted in *len */
    if (!b.p)
        return -ENOMEM;

    ob_lit(&b, "{\"key\":");
    ob_str(&b, e->key);
    ob_member_str(&b, "proxy_url", e->proxy_url);
    if (e->username_tok)
        ob_member_str(&b, "username", e->username_tok);
    if (e->password_tok)
        ob_member_str(&b, "password", e->password_tok);
    ob_member_str(&b, "source", e->source);
    ob_member_str(&b, "protocol", entry_scheme_name(e->scheme));
    ob_lit(&b, ",\"fetch_time\":");
    ob_time(&b, e->fetch_time);
    ob_lit(&b, ",\"ttl_seconds\":");
    ob_i64(&b, e->ttl_seconds);
    if (e->expires_at >= 0 && e->expires_at <= TIME_MS_MAX) {
        ob_lit(&b, ",\"expires_at\":");
        ob_time(&b, e->expires_at);
    }
    ob_member_str(&b, "health_status", entry_health_name(e->health));
    ob_lit(&b, ",\"failure_count\":");
    ob_i64(&b, (int64_t)e->failure_count);
    if (e->country[0] != '\0')
        ob_member_str(&b, "country", e->country);
    if (anon)
        ob_member_str(&b, "anonymity", anon);
    if (e->latency_ms >= 0) {
        ob_lit(&b, ",\"latency_ms\":");
        ob_i64(&b, e->latency_ms);
    }
    if (last != 0) {
        ob_lit(&b, ",\"last_accessed\":");
        ob_time(&b, last);
    }
    ob_lit(&b, ",\"access_count\":");
    /* jansson integers are signed 64-bit: saturate rather than write a
     * line that cannot be read back. */
    ob_i64(&b, count > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)count);
    ob_lit(&b, "}\n");
    b.p[b.len] = '\0';

    *line = b.p;
    *len = b.len;
    return 0;
}

int formats_tombstone_line(const char *key, char **line, size_t *len)
{
    char *buf;
    int n;

    if (!entry_key_valid(key))
        return -EINVAL;
    buf = malloc(ENTRY_KEY_LEN + 32);
    if (!buf)
        return -ENOMEM;
    n = snprintf(buf, ENTRY_KEY_LEN + 32, "{\"key\":\"%s\",\"deleted\":true}\n",
                 key);
    SVC_ASSERT(n > 0 && n < ENTRY_KEY_LEN + 32);
    *line = buf;
    *len = (size_t)n;
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Line decoder. */

#define KEY_PREFIX  "{\"key\":\""
#define TOMB_SUFFIX "\",\"deleted\":true}"

/* Read the key from the canonical prefix of a line that jansson could not
 * parse (a torn or damaged line), so the caller can name it. */
static void salvage_key(const char *line, size_t len, char *key_out)
{
    size_t n = sizeof KEY_PREFIX - 1;
    char k[ENTRY_KEY_LEN + 1];

    if (len < n + ENTRY_KEY_LEN + 1 || memcmp(line, KEY_PREFIX, n) != 0 ||
        line[n + ENTRY_KEY_LEN] != '"')
        return;
    memcpy(k, line + n, ENTRY_KEY_LEN);
    k[ENTRY_KEY_LEN] = '\0';
    if (entry_key_valid(k))
        memcpy(key_out, k, sizeof k);
}

/*
 * The members of a line, looked up once each. Every present member counts
 * towards "seen", so that seen != json_object_size() means an unknown one.
 */
struct line_reader {
    json_t *obj;
    size_t seen;
};

static json_t *lr_get(struct line_reader *lr, const char *name)
{
    json_t *v = json_object_get(lr->obj, name);

    if (v)
        lr->seen++;
    return v;
}

/* Optional string member: absent or null -> *out = NULL. */
static int lr_opt_str(struct line_reader *lr, const char *name,
                      const char **out)
{
    json_t *v = lr_get(lr, name);

    *out = NULL;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v))
        return -1;
    *out = json_string_value(v);
    return 0;
}

static int lr_req_str(struct line_reader *lr, const char *name,
                      const char **out)
{
    json_t *v = lr_get(lr, name);

    if (!v || !json_is_string(v))
        return -1;
    *out = json_string_value(v);
    return 0;
}

/* Integer member in [min, max]; absent -> -2 (caller decides), else -1. */
static int lr_int(struct line_reader *lr, const char *name, int64_t min,
                  int64_t max, bool null_ok, int64_t *out)
{
    json_t *v = lr_get(lr, name);
    json_int_t i;

    if (!v || (null_ok && json_is_null(v)))
        return -2;
    if (!json_is_integer(v))
        return -1;
    i = json_integer_value(v);
    if (i < min || i > max)
        return -1;
    *out = (int64_t)i;
    return 0;
}

/* RFC 3339 time member; absent -> -2, null -> -2 if null_ok. */
static int lr_time(struct line_reader *lr, const char *name, bool null_ok,
                   int64_t *out)
{
    json_t *v = lr_get(lr, name);

    if (!v || (null_ok && json_is_null(v)))
        return -2;
    if (!json_is_string(v) ||
        clock_parse_rfc3339(json_string_value(v), out) < 0 || *out < 0)
        return -1;
    return 0;
}

/* Fill e from the line's members; returns NULL or the reason. */
static const char *decode_members(struct line_reader *lr, struct entry *e,
                                  int *err)
{
    const char *s, *u, *p;
    int64_t v, exp;
    int rc;

    *err = -EBADMSG;
    if (lr_req_str(lr, "proxy_url", &s) < 0)
        return "missing or bad proxy_url";
    if (strlen(s) >= ENTRY_URL_MAX)
        return "bad proxy_url";
    if (lr_opt_str(lr, "username", &u) < 0 || (u && u[0] == '\0'))
        return "bad username";
    if (lr_opt_str(lr, "password", &p) < 0 || (p && p[0] == '\0'))
        return "bad password";
    if (entry_set_str(&e->proxy_url, s) < 0 ||
        entry_set_str(&e->username_tok, u) < 0 ||
        entry_set_str(&e->password_tok, p) < 0)
        goto nomem;
    if (lr_req_str(lr, "source", &s) < 0 || !entry_source_valid(s))
        return "missing or bad source";
    if (entry_set_str(&e->source, s) < 0)
        goto nomem;
    if (lr_req_str(lr, "protocol", &s) < 0 ||
        entry_scheme_parse(s, &e->scheme) < 0 ||
        strcmp(s, entry_scheme_name(e->scheme)) != 0)
        return "missing or bad protocol";
    if (lr_time(lr, "fetch_time", false, &e->fetch_time) < 0)
        return "missing or bad fetch_time";
    if (lr_int(lr, "ttl_seconds", 0, INT64_MAX, false, &e->ttl_seconds) < 0)
        return "missing or bad ttl_seconds";
    entry_compute_expiry(e);
    rc = lr_time(lr, "expires_at", false, &exp);
    if (rc == -1)
        return "bad expires_at";
    if (rc == 0 && exp != e->expires_at)
        return "expires_at does not match fetch_time + ttl_seconds";
    if (lr_req_str(lr, "health_status", &s) < 0 ||
        entry_health_parse(s, &e->health) < 0)
        return "missing or bad health_status";
    if (lr_int(lr, "failure_count", 0, UINT32_MAX, false, &v) < 0)
        return "missing or bad failure_count";
    e->failure_count = (uint32_t)v;
    if (lr_opt_str(lr, "country", &s) < 0)
        return "bad country";
    if (s && (!entry_country_parse(s, e->country) || strcmp(s, e->country)))
        return "bad country";
    if (lr_opt_str(lr, "anonymity", &s) < 0 ||
        (s && entry_anonymity_parse(s, &e->anonymity) < 0))
        return "bad anonymity";
    rc = lr_int(lr, "latency_ms", 0, INT64_MAX, true, &e->latency_ms);
    if (rc == -1)
        return "bad latency_ms";
    rc = lr_time(lr, "last_accessed", true, &v);
    if (rc == -1)
        return "bad last_accessed";
    atomic_store(&e->last_accessed, rc == 0 ? v : 0);
    if (lr_int(lr, "access_count", 0, INT64_MAX, false, &v) < 0)
        return "missing or bad access_count";
    atomic_store(&e->access_count, (uint64_t)v);
    if (lr->seen != json_object_size(lr->obj))
        return "unknown member";
    *err = 0;
    return NULL;
nomem:
    *err = -ENOMEM;
    return "out of memory";
}

int formats_entry_from_line(const char *line, size_t len, struct entry **out,
                            char *key_out, const char **reason)
{
    struct line_reader lr = {NULL, 0};
    struct entry *e = NULL;
    const char *why = NULL;
    const char *key;
    json_error_t jerr;
    int err = -EBADMSG;

    if (key_out)
        key_out[0] = '\0';
    if (!line) {
        why = "empty line";
        goto out;
    }
    lr.obj = json_loadb(line, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!lr.obj) {
        if (key_out)
            salvage_key(line, len, key_out);
        why = "bad json";
        goto out;
    }
    if (!json_is_object(lr.obj)) {
        why = "not a JSON object";
        goto out;
    }
    if (lr_req_str(&lr, "key", &key) < 0) {
        why = "missing key";
        goto out;
    }
    if (!entry_key_valid(key)) {
        why = "bad key";
        goto out;
    }
    if (key_out)
        memcpy(key_out, key, ENTRY_KEY_LEN + 1);
    if (json_object_get(lr.obj, "deleted")) {
        why = "tombstone, not an entry";
        goto out;
    }

    e = entry_new();
    if (!e) {
        err = -ENOMEM;
        why = "out of memory";
        goto out;
    }
    memcpy(e->key, key, ENTRY_KEY_LEN + 1);
    why = decode_members(&lr, e, &err);
    if (why)
        goto out;
    err = entry_validate(e, &why);
    if (err < 0)
        goto out;
    *out = e;
    e = NULL;
out:
    entry_unref(e);
    json_decref(lr.obj);
    if (err < 0 && reason)
        *reason = why ? why : "bad line";
    return err;
}

int formats_line_is_tombstone(const char *line, size_t len,
                              char key_out[ENTRY_KEY_LEN + 1])
{
    size_t pre = sizeof KEY_PREFIX - 1, suf = sizeof TOMB_SUFFIX - 1;
    char k[ENTRY_KEY_LEN + 1];
    json_t *root, *kv, *dv;
    int is = 0;

    if (!line)
        return 0;
    if (len > 0 && line[len - 1] == '\n')
        len--;
    /* Fast path: the exact bytes formats_tombstone_line() writes. */
    if (len == pre + ENTRY_KEY_LEN + suf &&
        memcmp(line, KEY_PREFIX, pre) == 0 &&
        memcmp(line + pre + ENTRY_KEY_LEN, TOMB_SUFFIX, suf) == 0) {
        memcpy(k, line + pre, ENTRY_KEY_LEN);
        k[ENTRY_KEY_LEN] = '\0';
        if (!entry_key_valid(k))
            return 0;
        memcpy(key_out, k, sizeof k);
        return 1;
    }
    /* Any other spelling of the same object (e.g. written by a tool). */
    if (len > FORMATS_LINE_MAX || !memmem(line, len, "deleted", 7))
        return 0;
    root = json_loadb(line, len, JSON_REJECT_DUPLICATES, NULL);
    kv = json_object_get(root, "key");
    dv = json_object_get(root, "deleted");
    if (json_is_object(root) && json_object_size(root) == 2 &&
        json_is_string(kv) && entry_key_valid(json_string_value(kv)) &&
        json_is_true(dv)) {
        memcpy(key_out, json_string_value(kv), ENTRY_KEY_LEN + 1);
        is = 1;
    }
    json_decref(root);
    return is;
}

/* ---------------------------------------------------------------------- */
/* Warm parser state. */

/* Bytes of one line in the buffer: the line, a CR before its LF. */
#define LINE_CAP        (FORMATS_LINE_MAX + 1)
#define REASON_MAX      160
#define CSV_COLS_MAX    256
#define JSON_FRAMES_MAX 4
#define JSON_KEY_MAX    32

/* Where the JSON walker is inside the structure it understands. */
enum jframe {
    JF_TOP_ARRAY,   /* [ element, ... ] */
    JF_TOP_OBJECT,  /* { "proxies": ..., other members skipped } */
    JF_LIST_ARRAY,  /* "proxies": [ record, ... ] */
    JF_LIST_OBJECT, /* "proxies": { "<protocol>": [...], ... } */
    JF_PROTO_ARRAY, /* "<protocol>": [ "host:port", ... ] */
};

enum jstate {
    JS_START,        /* before the document */
    JS_VALUE_OR_END, /* after '[': an element or ']' */
    JS_VALUE,        /* after ',' in an array or ':' in an object */
    JS_AFTER_VALUE,  /* ',' or the closing bracket */
    JS_KEY_OR_END,   /* after '{': a member name or '}' */
    JS_KEY,          /* after ',' in an object: a member name */
    JS_KEY_STR,      /* inside a member name */
    JS_COLON,        /* after a member name */
    JS_IN_VALUE,     /* inside an element being copied or a skipped value */
    JS_DONE,         /* after the document: white space only */
};

enum vkind {
    V_STRING,
    V_CONTAINER,
    V_SCALAR,
};

/* CSV columns we understand. */
enum csv_field {
    CF_URL,
    CF_HOST,
    CF_PORT,
    CF_PROTOCOL,
    CF_USER,
    CF_PASS,
    CF_SOURCE,
    CF_COUNTRY,
    CF_ANON,
    CF_LATENCY,
    CF_TTL,
    CF_FETCH,
    CF_HEALTH,
    CF_COUNT,
};

/* Header names; for one field, an earlier name wins over a later one. */
static const struct {
    const char *name;
    enum csv_field field;
} csv_names[] = {
    {"proxy_url", CF_URL},
    {"url", CF_URL},
    {"host", CF_HOST},
    {"ip", CF_HOST},
    {"port", CF_PORT},
    {"protocol", CF_PROTOCOL},
    {"scheme", CF_PROTOCOL},
    {"username", CF_USER},
    {"password", CF_PASS},
    {"source", CF_SOURCE},
    {"country_code", CF_COUNTRY},
    {"country", CF_COUNTRY},
    {"anonymity", CF_ANON},
    {"latency_ms", CF_LATENCY},
    {"response_time", CF_LATENCY},
    {"ttl_seconds", CF_TTL},
    {"fetch_time", CF_FETCH},
    {"last_checked", CF_FETCH},
    {"created_at", CF_FETCH},
    {"health_status", CF_HEALTH},
    {"status", CF_HEALTH},
};

struct formats_warm {
    enum formats_kind kind; /* AUTO until detected */
    struct formats_warm_cb cb;
    int rc; /* sticky: -EINVAL, -ENOMEM or a callback's value */
    bool finished;
    unsigned bom;            /* UTF-8 BOM bytes matched; 3 = past it */
    char err[REASON_MAX];    /* document error */
    char reason[REASON_MAX]; /* per-line reason being reported */

    /* Lines (text, CSV, JSONL, and AUTO detection). */
    char *buf; /* LINE_CAP + 1 bytes */
    size_t len;
    bool overlong; /* the current line passed LINE_CAP: skip it */
    size_t line;   /* lines completed */

    /* Text. */
    int section; /* scheme of the current "# PROTO" section */

    /* CSV. */
    bool csv_header;
    int csv_ncols;
    int csv_col[CF_COUNT];  /* column index, or -1 */
    int csv_rank[CF_COUNT]; /* csv_names index that set it */
    char **fields;          /* CSV_COLS_MAX */

    /* JSON. */
    enum jstate js;
    enum jframe frames[JSON_FRAMES_MAX];
    int frame_scheme[JSON_FRAMES_MAX];
    size_t depth;
    bool saw_proxies;
    char key[JSON_KEY_MAX + 1];
    size_t klen;
    bool kbad; /* name too long or escaped: matches nothing */
    bool kesc;
    size_t elements; /* elements started */
    char *ebuf;      /* FORMATS_LINE_MAX bytes */
    size_t elen;
    enum vkind vkind;
    bool vcapture; /* copy the value (an element) or skip it */
    bool voverlong;
    bool vstr;
    bool vesc;
    bool vdone;
    size_t vdepth;
    int vscheme; /* default scheme for the element */
};

static int doc_fail(struct formats_warm *p, const char *why)
{
    snprintf(p->err, sizeof p->err, "%s", why);
    p->rc = -EINVAL;
    return p->rc;
}

static int emit_error(struct formats_warm *p, size_t line, const char *why)
{
    int rc = 0;

    if (p->cb.on_error)
        rc = p->cb.on_error(p->cb.arg, line, why);
    if (rc)
        p->rc = rc;
    return rc;
}

/* A per-line error naming a member or column (never its value). */
static int member_error(struct formats_warm *p, size_t line, const char *name,
                        const char *what)
{
    snprintf(p->reason, sizeof p->reason, "\"%s\": %s", name, what);
    return emit_error(p, line, p->reason);
}

static int emit_record(struct formats_warm *p, const struct formats_record *r)
{
    int rc = 0;

    if (p->cb.on_record)
        rc = p->cb.on_record(p->cb.arg, r);
    if (rc)
        p->rc = rc;
    return rc;
}

static void record_init(struct formats_record *r, size_t line)
{
    memset(r, 0, sizeof *r);
    r->line = line;
    r->default_scheme = -1;
    r->fetch_time = -1;
    r->ttl_seconds = -1;
    r->latency_ms = -1;
}

/* "proto://host:port" or, without a protocol, "host:port"; an IPv6 host
 * gets its brackets. Returns 0 or -1 if it does not fit. */
static int build_url(char *out, size_t cap, const char *proto, const char *host,
                     unsigned port)
{
    bool v6 = strchr(host, ':') != NULL && host[0] != '[';
    int n;

    if (proto)
        n = snprintf(out, cap, "%s://%s%s%s:%u", proto, v6 ? "[" : "", host,
                     v6 ? "]" : "", port);
    else
        n = snprintf(out, cap, "%s%s%s:%u", v6 ? "[" : "", host, v6 ? "]" : "",
                     port);
    return (n < 0 || (size_t)n >= cap) ? -1 : 0;
}

/* Decimal unsigned integer s (whole string) <= max. */
static int parse_uint(const char *s, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;

    if (!is_digit(*s))
        return -1;
    for (; *s; s++) {
        if (!is_digit(*s))
            return -1;
        if (v > (max - (uint64_t)(*s - '0')) / 10)
            return -1;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    *out = v;
    return 0;
}

/* Non-negative decimal with an optional fraction, rounded to an integer
 * (latency "123.45" -> 123). Locale-independent, unlike strtod. */
static int parse_udecimal(const char *s, int64_t *out)
{
    uint64_t v = 0;
    bool up = false;

    if (!is_digit(*s))
        return -1;
    for (; is_digit(*s); s++) {
        if (v > (UINT64_C(1) << 53))
            return -1;
        v = v * 10 + (uint64_t)(*s - '0');
    }
    if (*s == '.') {
        s++;
        if (!is_digit(*s))
            return -1;
        up = *s >= '5';
        while (is_digit(*s))
            s++;
    }
    if (*s != '\0')
        return -1;
    *out = (int64_t)(v + (up ? 1 : 0));
    return 0;
}

/* ---------------------------------------------------------------------- */
/* Records from JSON values (JSONL lines and JSON elements). */

/*
 * Optional string member; absent, null or "" -> NULL (proxies-rich.json
 * writes "" for an unknown country_code, as CSV does with empty cells).
 * -1 on a wrong type.
 */
static int obj_str(json_t *o, const char *name, const char **out)
{
    json_t *v = json_object_get(o, name);

    *out = NULL;
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_string(v))
        return -1;
    if (json_string_length(v) > 0)
        *out = json_string_value(v);
    return 0;
}

/* The first of the alias members that is present and not null; its name
 * goes to *used. -1 (with *used set) on a wrong type. */
static int obj_str_alias(json_t *o, const char *const *names, size_t n,
                         const char **out, const char **used)
{
    size_t i;

    *out = NULL;
    *used = names[0];
    for (i = 0; i < n; i++) {
        *used = names[i];
        if (obj_str(o, names[i], out) < 0)
            return -1;
        if (*out)
            return 0;
    }
    return 0;
}

/* Non-negative number (integer, or real rounded) <= 1e12. */
static int obj_latency(json_t *o, const char *name, int64_t *out)
{
    json_t *v = json_object_get(o, name);
    double d;

    if (!v || json_is_null(v))
        return 0;
    if (json_is_integer(v)) {
        if (json_integer_value(v) < 0 ||
            json_integer_value(v) > INT64_C(1000000000000))
            return -1;
        *out = (int64_t)json_integer_value(v);
        return 0;
    }
    if (!json_is_real(v))
        return -1;
    d = json_real_value(v);
    if (!(d >= 0.0 && d <= 1e12)) /* also rejects NaN */
        return -1;
    *out = (int64_t)(d + 0.5);
    return 0;
}

/*
 * The URL of an object: proxy_url/url, else ip/host + port (+ protocol).
 * Sets r->proxy_url (and default_scheme) and *ok on success; otherwise
 * reports the error. Returns 0 or a callback's stop value.
 */
static int obj_url(struct formats_warm *p, json_t *o, struct formats_record *r,
                   char *url, size_t cap, int def_scheme, bool *ok)
{
    static const char *const url_names[] = {"proxy_url", "url"};
    static const char *const host_names[] = {"ip", "host"};
    static const char *const proto_names[] = {"protocol", "scheme"};
    const char *s, *host, *proto, *used;
    json_t *pv;
    uint64_t port = 0;
    int sch = def_scheme;

    *ok = false;
    if (obj_str_alias(o, proto_names, 2, &proto, &used) < 0)
        return member_error(p, r->line, used, "must be a string");
    if (obj_str_alias(o, url_names, 2, &s, &used) < 0)
        return member_error(p, r->line, used, "must be a string");
    if (s) {
        if (!has_scheme(s) && proto) {
            sch = scheme_of(proto, strlen(proto));
            if (sch < 0)
                return member_error(p, r->line, "protocol", "unknown protocol");
        }
        r->proxy_url = s;
        r->default_scheme = has_scheme(s) ? -1 : sch;
        *ok = true;
        return 0;
    }
    if (obj_str_alias(o, host_names, 2, &host, &used) < 0)
        return member_error(p, r->line, used, "must be a string");
    if (!host)
        return emit_error(p, r->line, "missing proxy_url (or ip and port)");
    pv = json_object_get(o, "port");
    if (json_is_integer(pv)) {
        if (json_integer_value(pv) < 1 || json_integer_value(pv) > 65535)
            return member_error(p, r->line, "port", "must be 1..65535");
        port = (uint64_t)json_integer_value(pv);
    } else if (json_is_string(pv)) {
        if (parse_uint(json_string_value(pv), 65535, &port) < 0 || port == 0)
            return member_error(p, r->line, "port", "must be 1..65535");
    } else {
        return member_error(p, r->line, "port",
                            pv ? "must be an integer" : "missing");
    }
    if (build_url(url, cap, proto, host, (unsigned)port) < 0)
        return member_error(p, r->line, used, "too long");
    r->proxy_url = url;
    r->default_scheme = proto ? -1 : def_scheme;
    *ok = true;
    return 0;
}

/*
 * Fill r from an object. *ok tells whether r is ready; if not, the error
 * has been reported. Returns 0 or a callback's stop value.
 */
static int record_from_object(struct formats_warm *p, json_t *o,
                              struct formats_record *r, char *url, size_t cap,
                              int def_scheme, bool *ok)
{
    static const char *const time_names[] = {"fetch_time", "last_checked",
                                             "created_at"};
    static const char *const health_names[] = {"health_status", "status"};
    const char *user, *pass, *s, *used;
    bool tokens = json_object_get(o, "key") != NULL;
    json_t *v;
    int rc;

    rc = obj_url(p, o, r, url, cap, def_scheme, ok);
    if (rc || !*ok)
        return rc;
    *ok = false;
    if (obj_str(o, "username", &user) < 0)
        return member_error(p, r->line, "username", "must be a string");
    if (obj_str(o, "password", &pass) < 0)
        return member_error(p, r->line, "password", "must be a string");
    /* An export line ("key" present) carries sealed tokens. */
    if (tokens) {
        r->username_tok = user;
        r->password_tok = pass;
    } else {
        r->username = user;
        r->password = pass;
    }
    if (obj_str(o, "source", &r->source) < 0)
        return member_error(p, r->line, "source", "must be a string");
    if (obj_str(o, "anonymity", &r->anonymity) < 0)
        return member_error(p, r->line, "anonymity", "must be a string");
    if (obj_str_alias(o, health_names, 2, &r->health, &used) < 0)
        return member_error(p, r->line, used, "must be a string");
    /* proxies-rich.json has "country" as a name and "country_code" as the
     * code: when a country_code member exists, it alone counts. */
    used = json_object_get(o, "country_code") ? "country_code" : "country";
    if (obj_str(o, used, &r->country) < 0)
        return member_error(p, r->line, used, "must be a string");
    if (obj_str_alias(o, time_names, 3, &s, &used) < 0)
        return member_error(p, r->line, used, "must be a string");
    if (s && (clock_parse_rfc3339(s, &r->fetch_time) < 0 || r->fetch_time < 0))
        return member_error(p, r->line, used, "must be an RFC 3339 time");
    v = json_object_get(o, "ttl_seconds");
    if (v && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 0)
            return member_error(p, r->line, "ttl_seconds",
                                "must be an integer >= 0");
        r->ttl_seconds = (int64_t)json_integer_value(v);
    }
    used = json_object_get(o, "latency_ms") ? "latency_ms" : "response_time";
    if (obj_latency(o, used, &r->latency_ms) < 0)
        return member_error(p, r->line, used, "must be a number >= 0");
    *ok = true;
    return 0;
}

/* One JSONL line or JSON element, already parsed. */
static int deliver_value(struct formats_warm *p, json_t *v, size_t line,
                         int def_scheme)
{
    struct formats_record r;
    char url[ENTRY_URL_MAX];
    bool ok;
    int rc;

    record_init(&r, line);
    if (json_is_string(v)) {
        r.proxy_url = json_string_value(v);
        if (!has_scheme(r.proxy_url))
            r.default_scheme = def_scheme;
        return emit_record(p, &r);
    }
    if (!json_is_object(v))
        return emit_error(p, line, "expected a proxy URL string or an object");
    rc = record_from_object(p, v, &r, url, sizeof url, def_scheme, &ok);
    if (rc || !ok)
        return rc;
    return emit_record(p, &r);
}

/* ---------------------------------------------------------------------- */
/* Text, JSONL and CSV lines. */

static int text_line(struct formats_warm *p, const char *s)
{
    struct formats_record r;
    const char *w;
    size_t wl = 0;
    int sch;

    if (s[0] == '#') {
        /* "# HTTP Proxies (6642)": the first word may name a protocol. */
        w = s + 1;
        while (*w == ' ' || *w == '\t')
            w++;
        while (is_alnum(w[wl]))
            wl++;
        sch = scheme_of(w, wl);
        if (sch >= 0)
            p->section = sch;
        return 0;
    }
    record_init(&r, p->line);
    r.proxy_url = s;
    if (!has_scheme(s))
        r.default_scheme = p->section;
    return emit_record(p, &r);
}

static int jsonl_line(struct formats_warm *p, const char *s, size_t len)
{
    json_error_t jerr;
    json_t *v;
    int rc;

    v = json_loadb(s, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
    if (!v) {
        /* jerr.text may quote the input: report the column only. */
        snprintf(p->reason, sizeof p->reason, "invalid JSON (column %d)",
                 jerr.column);
        return emit_error(p, p->line, p->reason);
    }
    rc = deliver_value(p, v, p->line, ENTRY_SCHEME_HTTP);
    json_decref(v);
    return rc;
}

/*
 * Split a CSV line (NUL-terminated, len bytes) into fields in place, RFC
 * 4180 quoting ("" inside quotes is a quote). Unquoted fields are trimmed.
 * Returns the count, -1 for bad quoting or -2 for too many fields.
 */
static int csv_split(char *s, size_t len, char **fields, int max)
{
    size_t r = 0, w, b, e;
    int n = 0;

    for (;;) {
        if (n == max)
            return -2;
        while (r < len && (s[r] == ' ' || s[r] == '\t'))
            r++;
        if (r < len && s[r] == '"') {
            /* Unescaping never writes past the byte being read. */
            w = r++;
            fields[n++] = s + w;
            for (;;) {
                if (r >= len)
                    return -1;
                if (s[r] == '"') {
                    if (r + 1 < len && s[r + 1] == '"') {
                        s[w++] = '"';
                        r += 2;
                        continue;
                    }
                    r++;
                    break;
                }
                s[w++] = s[r++];
            }
            s[w] = '\0';
            while (r < len && (s[r] == ' ' || s[r] == '\t'))
                r++;
            if (r >= len)
                return n;
            if (s[r] != ',')
                return -1;
            r++;
            continue;
        }
        b = r;
        while (r < len && s[r] != ',') {
            if (s[r] == '"') /* RFC 4180: no quote in an unquoted field */
                return -1;
            r++;
        }
        e = r;
        while (e > b && (s[e - 1] == ' ' || s[e - 1] == '\t'))
            e--;
        fields[n++] = s + b;
        if (r >= len) {
            s[e] = '\0';
            return n;
        }
        s[e] = '\0';
        r++;
    }
}

static int csv_header(struct formats_warm *p, char *s, size_t len)
{
    int n, i, f;
    size_t k;

    n = csv_split(s, len, p->fields, CSV_COLS_MAX);
    if (n == -2)
        return doc_fail(p, "CSV header has too many columns");
    if (n < 0)
        return doc_fail(p, "CSV header has bad quoting");
    for (f = 0; f < CF_COUNT; f++) {
        p->csv_col[f] = -1;
        p->csv_rank[f] = INT32_MAX;
    }
    for (i = 0; i < n; i++) {
        size_t nl = strlen(p->fields[i]);

        for (k = 0; k < SVC_ARRAY_LEN(csv_names); k++) {
            if (!span_eq_ci(p->fields[i], nl, csv_names[k].name))
                continue;
            f = csv_names[k].field;
            if ((int)k < p->csv_rank[f]) {
                p->csv_rank[f] = (int)k;
                p->csv_col[f] = i;
            }
            break;
        }
    }
    if (p->csv_col[CF_URL] < 0 &&
        (p->csv_col[CF_HOST] < 0 || p->csv_col[CF_PORT] < 0))
        return doc_fail(p, "CSV header needs a proxy_url (or url) column, "
                           "or host (or ip) and port columns");
    p->csv_ncols = n;
    p->csv_header = true;
    return 0;
}

/* Field f of the current row, or NULL if there is no such column or the
 * cell is empty. */
static const char *csv_get(struct formats_warm *p, enum csv_field f)
{
    int c = p->csv_col[f];

    if (c < 0 || p->fields[c][0] == '\0')
        return NULL;
    return p->fields[c];
}

static int csv_row(struct formats_warm *p, char *s, size_t len)
{
    struct formats_record r;
    char url[ENTRY_URL_MAX];
    const char *host, *port_s, *proto, *v;
    uint64_t u;
    int n;

    n = csv_split(s, len, p->fields, CSV_COLS_MAX);
    if (n < 0)
        return emit_error(p, p->line,
                          n == -2 ? "too many columns" : "bad CSV quoting");
    if (n != p->csv_ncols) {
        snprintf(p->reason, sizeof p->reason,
                 "wrong number of columns (expected %d, got %d)", p->csv_ncols,
                 n);
        return emit_error(p, p->line, p->reason);
    }
    record_init(&r, p->line);
    proto = csv_get(p, CF_PROTOCOL);
    r.proxy_url = csv_get(p, CF_URL);
    if (r.proxy_url) {
        if (!has_scheme(r.proxy_url)) {
            r.default_scheme =
                proto ? scheme_of(proto, strlen(proto)) : ENTRY_SCHEME_HTTP;
            if (r.default_scheme < 0)
                return member_error(p, r.line, "protocol", "unknown protocol");
        }
    } else {
        host = csv_get(p, CF_HOST);
        port_s = csv_get(p, CF_PORT);
        if (!host || !port_s)
            return emit_error(p, r.line,
                              "missing proxy_url (or host and port)");
        if (parse_uint(port_s, 65535, &u) < 0 || u == 0)
            return member_error(p, r.line, "port", "must be 1..65535");
        if (build_url(url, sizeof url, proto, host, (unsigned)u) < 0)
            return member_error(p, r.line, "host", "too long");
        r.proxy_url = url;
        if (!proto)
            r.default_scheme = ENTRY_SCHEME_HTTP;
    }
    r.username = csv_get(p, CF_USER);
    r.password = csv_get(p, CF_PASS);
    r.source = csv_get(p, CF_SOURCE);
    r.country = csv_get(p, CF_COUNTRY);
    r.anonymity = csv_get(p, CF_ANON);
    r.health = csv_get(p, CF_HEALTH);
    v = csv_get(p, CF_TTL);
    if (v) {
        if (parse_uint(v, INT64_MAX, &u) < 0)
            return member_error(p, r.line, "ttl_seconds",
                                "must be an integer >= 0");
        r.ttl_seconds = (int64_t)u;
    }
    v = csv_get(p, CF_LATENCY);
    if (v && parse_udecimal(v, &r.latency_ms) < 0)
        return member_error(p, r.line, "latency_ms", "must be a number >= 0");
    v = csv_get(p, CF_FETCH);
    if (v && (clock_parse_rfc3339(v, &r.fetch_time) < 0 || r.fetch_time < 0))
        return member_error(p, r.line, "fetch_time",
                            "must be an RFC 3339 time");
    return emit_record(p, &r);
}

/* A complete line is in p->buf[0..p->len); dispatch it. */
static int end_line(struct formats_warm *p)
{
    size_t n = p->len;
    bool over = p->overlong;
    const char *s;
    char *m;

    p->line++;
    p->len = 0;
    p->overlong = false;
    if (!over && n > 0 && p->buf[n - 1] == '\r')
        n--;
    if (over || n > FORMATS_LINE_MAX) {
        if (p->kind == FORMATS_CSV && !p->csv_header)
            return doc_fail(p, "CSV header line too long");
        return emit_error(p, p->line, "line too long");
    }
    p->buf[n] = '\0';
    s = trim(p->buf, &n);
    if (n == 0)
        return 0;
    if (memchr(s, '\0', n))
        return emit_error(p, p->line, "NUL byte in line");
    m = p->buf + (s - p->buf);
    m[n] = '\0';
    switch (p->kind) {
    case FORMATS_TEXT:
        return text_line(p, m);
    case FORMATS_JSONL:
        return jsonl_line(p, m, n);
    case FORMATS_CSV:
        return p->csv_header ? csv_row(p, m, n) : csv_header(p, m, n);
    case FORMATS_AUTO:
    case FORMATS_JSON:
        break;
    }
    SVC_PANIC("end_line: not a line format");
}

/* ---------------------------------------------------------------------- */
/* JSON walker. */

static bool is_value_end(char c)
{
    return is_ws(c) || c == ',' || c == ']' || c == '}';
}

static void value_start(struct formats_warm *p, char c, bool capture,
                        int scheme)
{
    p->vkind = c == '"'                 ? V_STRING
               : (c == '{' || c == '[') ? V_CONTAINER
                                        : V_SCALAR;
    p->vcapture = capture;
    p->voverlong = false;
    p->vstr = false;
    p->vesc = false;
    p->vdone = false;
    p->vdepth = 0;
    p->vscheme = scheme;
    p->elen = 0;
    p->js = JS_IN_VALUE;
}

/* One byte of a value (the first included). Sets vdone at its end. */
static void value_byte(struct formats_warm *p, char c)
{
    if (p->vcapture) {
        if (p->elen < FORMATS_LINE_MAX)
            p->ebuf[p->elen++] = c;
        else
            p->voverlong = true;
    }
    if (p->vkind == V_SCALAR)
        return;
    if (p->vstr) {
        if (p->vesc)
            p->vesc = false;
        else if (c == '\\')
            p->vesc = true;
        else if (c == '"') {
            p->vstr = false;
            if (p->vdepth == 0)
                p->vdone = true;
        }
        return;
    }
    switch (c) {
    case '"':
        p->vstr = true;
        break;
    case '{':
    case '[':
        p->vdepth++;
        break;
    case '}':
    case ']':
        if (p->vdepth > 0 && --p->vdepth == 0)
            p->vdone = true;
        break;
    default:
        break;
    }
}

static int value_end(struct formats_warm *p)
{
    json_t *v;
    int rc;

    p->js = JS_AFTER_VALUE;
    if (!p->vcapture)
        return 0;
    if (p->voverlong)
        return emit_error(p, p->elements, "element too long");
    v = json_loadb(p->ebuf, p->elen, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES,
                   NULL);
    if (!v)
        return emit_error(p, p->elements, "invalid JSON element");
    rc = deliver_value(p, v, p->elements, p->vscheme);
    json_decref(v);
    return rc;
}

static void push(struct formats_warm *p, enum jframe f, int scheme)
{
    SVC_ASSERT(p->depth < JSON_FRAMES_MAX);
    p->frames[p->depth] = f;
    p->frame_scheme[p->depth] = scheme;
    p->depth++;
    p->js = (f == JF_TOP_OBJECT || f == JF_LIST_OBJECT) ? JS_KEY_OR_END
                                                        : JS_VALUE_OR_END;
}

static bool top_is_array(const struct formats_warm *p)
{
    enum jframe f = p->frames[p->depth - 1];

    return f != JF_TOP_OBJECT && f != JF_LIST_OBJECT;
}

static int pop(struct formats_warm *p)
{
    p->depth--;
    if (p->depth > 0) {
        p->js = JS_AFTER_VALUE;
        return 0;
    }
    p->js = JS_DONE;
    if (p->frames[0] == JF_TOP_OBJECT && !p->saw_proxies)
        return doc_fail(p, "JSON object has no \"proxies\" member");
    return 0;
}

/*
 * A value starts with byte c in the current frame: walk into it (a frame we
 * understand; *consumed = true) or hand it to the value machine, which
 * copies an element or skips anything else. Returns 0 or a stop value.
 */
static int begin_value(struct formats_warm *p, char c, bool *consumed)
{
    enum jframe f = p->frames[p->depth - 1];
    int sch, rc;

    *consumed = false;
    switch (f) {
    case JF_TOP_ARRAY:
    case JF_LIST_ARRAY:
    case JF_PROTO_ARRAY:
        p->elements++;
        value_start(p, c, true,
                    f == JF_PROTO_ARRAY ? p->frame_scheme[p->depth - 1]
                                        : ENTRY_SCHEME_HTTP);
        return 0;
    case JF_TOP_OBJECT:
        if (p->kbad || strcmp(p->key, "proxies") != 0)
            break;
        p->saw_proxies = true;
        if (c == '[')
            push(p, JF_LIST_ARRAY, -1);
        else if (c == '{')
            push(p, JF_LIST_OBJECT, -1);
        else
            return doc_fail(p, "\"proxies\" must be an array or an object");
        *consumed = true;
        return 0;
    case JF_LIST_OBJECT:
        sch = p->kbad ? -1 : scheme_of(p->key, p->klen);
        if (sch >= 0 && c == '[') {
            push(p, JF_PROTO_ARRAY, sch);
            *consumed = true;
            return 0;
        }
        rc = emit_error(p, p->elements + 1,
                        sch >= 0 ? "a protocol list in \"proxies\" must be "
                                   "an array (skipped)"
                                 : "unknown protocol list in \"proxies\" "
                                   "(skipped)");
        if (rc)
            return rc;
        break;
    }
    value_start(p, c, false, -1);
    return 0;
}

static int json_feed(struct formats_warm *p, const char *d, size_t n)
{
    size_t i = 0;
    bool consumed;
    int rc;

    while (i < n) {
        char c = d[i];

        if (p->rc)
            return p->rc;
        switch (p->js) {
        case JS_IN_VALUE:
            if (p->vkind == V_SCALAR && is_value_end(c)) {
                rc = value_end(p); /* c belongs to the structure */
                if (rc)
                    return rc;
                continue;
            }
            value_byte(p, c);
            i++;
            if (p->vdone) {
                rc = value_end(p);
                if (rc)
                    return rc;
            }
            continue;
        case JS_KEY_STR:
            i++;
            if (p->kesc) {
                p->kesc = false;
            } else if (c == '\\') {
                p->kesc = true;
                p->kbad = true;
            } else if (c == '"') {
                p->key[p->klen] = '\0';
                p->js = JS_COLON;
            } else if (p->klen < JSON_KEY_MAX) {
                p->key[p->klen++] = c;
            } else {
                p->kbad = true;
            }
            continue;
        default:
            break;
        }
        if (is_ws(c)) {
            i++;
            continue;
        }
        switch (p->js) {
        case JS_START:
            if (c == '[')
                push(p, JF_TOP_ARRAY, -1);
            else if (c == '{')
                push(p, JF_TOP_OBJECT, -1);
            else
                return doc_fail(p, "a JSON document must be an array or "
                                   "an object");
            i++;
            break;
        case JS_VALUE_OR_END:
        case JS_VALUE:
            if (c == ']' && p->js == JS_VALUE_OR_END) {
                i++;
                rc = pop(p);
                if (rc)
                    return rc;
                break;
            }
            if (c == ',' || c == ':' || c == ']' || c == '}')
                return doc_fail(p, "malformed JSON: a value is missing");
            rc = begin_value(p, c, &consumed);
            if (rc)
                return rc;
            if (consumed)
                i++;
            break;
        case JS_AFTER_VALUE:
            if (c == ',') {
                p->js = top_is_array(p) ? JS_VALUE : JS_KEY;
                i++;
            } else if (c == (top_is_array(p) ? ']' : '}')) {
                i++;
                rc = pop(p);
                if (rc)
                    return rc;
            } else {
                return doc_fail(p, "malformed JSON: expected ',' or a "
                                   "closing bracket");
            }
            break;
        case JS_KEY_OR_END:
        case JS_KEY:
            if (c == '}' && p->js == JS_KEY_OR_END) {
                i++;
                rc = pop(p);
                if (rc)
                    return rc;
                break;
            }
            if (c != '"')
                return doc_fail(p, "malformed JSON: expected a member name");
            p->klen = 0;
            p->kbad = false;
            p->kesc = false;
            p->js = JS_KEY_STR;
            i++;
            break;
        case JS_COLON:
            if (c != ':')
                return doc_fail(p, "malformed JSON: expected ':'");
            p->js = JS_VALUE;
            i++;
            break;
        case JS_DONE:
            return doc_fail(p, "trailing data after the JSON document");
        case JS_IN_VALUE:
        case JS_KEY_STR:
            SVC_PANIC("json_feed: state handled above");
        }
    }
    return p->rc;
}

static int json_finish(struct formats_warm *p)
{
    if (p->js == JS_START)
        return doc_fail(p, "empty JSON document");
    if (p->js != JS_DONE)
        return doc_fail(p, "truncated JSON document");
    return 0;
}

/* ---------------------------------------------------------------------- */
/* AUTO detection. */

/* The first line is a whole JSON object that is a record (not a
 * reference document with a "proxies" member), or a JSON string. */
static bool first_line_is_jsonl(const char *s, size_t len)
{
    json_t *v =
        json_loadb(s, len, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, NULL);
    bool yes = (json_is_object(v) && !json_object_get(v, "proxies")) ||
               json_is_string(v);

    json_decref(v);
    return yes;
}

/* A comma-separated line with one of the header names we need. */
static bool looks_like_csv_header(const char *s, size_t len)
{
    static const char *const words[] = {"proxy_url", "url", "host", "ip"};
    size_t b = 0, e, fl, k;
    const char *f;

    if (!memchr(s, ',', len))
        return false;
    while (b <= len) {
        e = b;
        while (e < len && s[e] != ',')
            e++;
        fl = e - b;
        f = trim(s + b, &fl);
        if (fl >= 2 && f[0] == '"' && f[fl - 1] == '"') {
            f++;
            fl -= 2;
        }
        for (k = 0; k < SVC_ARRAY_LEN(words); k++) {
            if (span_eq_ci(f, fl, words[k]))
                return true;
        }
        b = e + 1;
    }
    return false;
}

static int switch_to_json(struct formats_warm *p)
{
    char *first = p->buf;
    size_t n = p->len;
    int rc;

    p->kind = FORMATS_JSON;
    p->ebuf = malloc(FORMATS_LINE_MAX);
    if (!p->ebuf) {
        p->rc = -ENOMEM;
        return p->rc;
    }
    p->buf = NULL;
    p->len = 0;
    rc = json_feed(p, first, n);
    free(first);
    return rc;
}

/* CSV needs its field table, allocated when AUTO picks CSV. */
static int ensure_fields(struct formats_warm *p)
{
    if (p->kind != FORMATS_CSV || p->fields)
        return 0;
    p->fields = calloc(CSV_COLS_MAX, sizeof *p->fields);
    if (!p->fields)
        p->rc = -ENOMEM;
    return p->rc;
}

/* Decide the kind from the first non-blank line in p->buf (complete: it
 * ended with a newline or the input ended; else the buffer is full). */
static int decide(struct formats_warm *p, bool complete)
{
    size_t n = p->len;
    const char *s = trim(p->buf, &n);

    switch (p->buf[0]) {
    case '[':
        return switch_to_json(p);
    case '{':
        if (complete && first_line_is_jsonl(s, n)) {
            p->kind = FORMATS_JSONL;
            return 0;
        }
        return switch_to_json(p);
    case '"':
        /* A JSON string line, or a CSV header with quoted names. */
        if (complete && !first_line_is_jsonl(s, n) &&
            looks_like_csv_header(s, n)) {
            p->kind = FORMATS_CSV;
            return ensure_fields(p);
        }
        p->kind = FORMATS_JSONL;
        return 0;
    default:
        p->kind = complete && looks_like_csv_header(s, n) ? FORMATS_CSV
                                                          : FORMATS_TEXT;
        return ensure_fields(p);
    }
}

/*
 * AUTO: skip leading blank lines (counting them), then collect the first
 * line without consuming its newline. *used receives the bytes consumed.
 */
static int detect(struct formats_warm *p, const char *d, size_t n, size_t *used)
{
    size_t i = 0, seg, room;
    const char *nl;

    if (p->len == 0) {
        while (i < n && is_ws(d[i])) {
            if (d[i] == '\n')
                p->line++;
            i++;
        }
        if (i == n) {
            *used = i;
            return 0;
        }
    }
    nl = memchr(d + i, '\n', n - i);
    seg = nl ? (size_t)(nl - (d + i)) : n - i;
    room = LINE_CAP - p->len;
    if (seg > room) {
        memcpy(p->buf + p->len, d + i, room);
        p->len += room;
        *used = i + room;
        return decide(p, false);
    }
    memcpy(p->buf + p->len, d + i, seg);
    p->len += seg;
    *used = i + seg;
    return nl ? decide(p, true) : 0;
}

/* ---------------------------------------------------------------------- */
/* Feeding. */

static int lines_feed(struct formats_warm *p, const char *d, size_t n)
{
    size_t i = 0, seg, used;
    const char *nl;
    int rc;

    while (i < n) {
        if (p->rc)
            return p->rc;
        if (p->kind == FORMATS_JSON)
            return json_feed(p, d + i, n - i);
        if (p->kind == FORMATS_AUTO) {
            rc = detect(p, d + i, n - i, &used);
            i += used;
            if (rc)
                return rc;
            continue;
        }
        nl = memchr(d + i, '\n', n - i);
        seg = nl ? (size_t)(nl - (d + i)) : n - i;
        if (!p->overlong) {
            if (seg > LINE_CAP - p->len) {
                p->overlong = true;
            } else {
                memcpy(p->buf + p->len, d + i, seg);
                p->len += seg;
            }
        }
        i += seg;
        if (!nl)
            break;
        i++;
        rc = end_line(p);
        if (rc)
            return rc;
    }
    return p->rc;
}

static int dispatch(struct formats_warm *p, const char *d, size_t n)
{
    if (p->kind == FORMATS_JSON)
        return json_feed(p, d, n);
    return lines_feed(p, d, n);
}

static const unsigned char utf8_bom[3] = {0xef, 0xbb, 0xbf};

int formats_warm_new(enum formats_kind kind, const struct formats_warm_cb *cb,
                     struct formats_warm **out)
{
    struct formats_warm *p;

    if ((unsigned)kind > FORMATS_CSV)
        return -EINVAL;
    p = calloc(1, sizeof *p);
    if (!p)
        return -ENOMEM;
    p->kind = kind;
    if (cb)
        p->cb = *cb;
    p->section = ENTRY_SCHEME_HTTP;
    p->js = JS_START;
    if (kind == FORMATS_JSON)
        p->ebuf = malloc(FORMATS_LINE_MAX);
    else
        p->buf = malloc(LINE_CAP + 1);
    if (kind == FORMATS_CSV)
        p->fields = calloc(CSV_COLS_MAX, sizeof *p->fields);
    if ((kind == FORMATS_JSON && !p->ebuf) ||
        (kind != FORMATS_JSON && !p->buf) ||
        (kind == FORMATS_CSV && !p->fields)) {
        formats_warm_free(p);
        return -ENOMEM;
    }
    *out = p;
    return 0;
}

int formats_warm_feed(struct formats_warm *p, const char *data, size_t len)
{
    size_t k;
    int rc;

    if (p->rc)
        return p->rc;
    if (p->finished)
        return doc_fail(p, "data after the end of input");
    /* Drop a UTF-8 byte order mark at the very start. */
    while (p->bom < 3 && len > 0) {
        if ((unsigned char)*data == utf8_bom[p->bom]) {
            p->bom++;
            data++;
            len--;
            continue;
        }
        k = p->bom;
        p->bom = 3;
        if (k > 0) {
            rc = dispatch(p, (const char *)utf8_bom, k);
            if (rc)
                return rc;
        }
    }
    if (len == 0)
        return 0;
    return dispatch(p, data, len);
}

int formats_warm_finish(struct formats_warm *p)
{
    size_t k;
    int rc;

    if (p->rc || p->finished)
        return p->rc;
    if (p->bom > 0 && p->bom < 3) {
        k = p->bom;
        p->bom = 3;
        rc = dispatch(p, (const char *)utf8_bom, k);
        if (rc)
            return rc;
    }
    p->finished = true;
    if (p->kind == FORMATS_AUTO && p->len == 0)
        p->kind = FORMATS_TEXT; /* nothing but blank lines */
    if (p->kind == FORMATS_AUTO) {
        rc = decide(p, true);
        if (rc)
            return rc;
    }
    if (p->kind == FORMATS_JSON)
        return json_finish(p);
    if (p->len > 0 || p->overlong) {
        rc = end_line(p);
        if (rc)
            return rc;
    }
    if (p->kind == FORMATS_CSV && !p->csv_header)
        return doc_fail(p, "CSV header row missing");
    return p->rc;
}

const char *formats_warm_error(const struct formats_warm *p)
{
    if (!p)
        return "no parser";
    return p->err;
}

void formats_warm_free(struct formats_warm *p)
{
    if (!p)
        return;
    /* The buffers may hold plain-text credentials from the input. */
    if (p->buf)
        OPENSSL_cleanse(p->buf, LINE_CAP + 1);
    if (p->ebuf)
        OPENSSL_cleanse(p->ebuf, FORMATS_LINE_MAX);
    free(p->buf);
    free(p->ebuf);
    free(p->fields);
    free(p);
}

/* ---------------------------------------------------------------------- */

enum formats_kind formats_kind_from_content_type(const char *ct)
{
    static const struct {
        const char *type;
        enum formats_kind kind;
    } map[] = {
        {"application/json", FORMATS_JSON},
        {"application/x-ndjson", FORMATS_JSONL},
        {"application/ndjson", FORMATS_JSONL},
        {"application/jsonl", FORMATS_JSONL},
        {"application/x-jsonl", FORMATS_JSONL},
        {"application/x-jsonlines", FORMATS_JSONL},
        {"application/jsonlines", FORMATS_JSONL},
        {"text/csv", FORMATS_CSV},
        {"text/plain", FORMATS_AUTO},
    };
    size_t n = 0, k;

    if (!ct)
        return FORMATS_AUTO;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    while (ct[n] && ct[n] != ';' && ct[n] != ' ' && ct[n] != '\t')
        n++;
    for (k = 0; k < SVC_ARRAY_LEN(map); k++) {
        if (span_eq_ci(ct, n, map[k].type))
            return map[k].kind;
    }
    return FORMATS_AUTO;
}
