/* SPDX-License-Identifier: MIT */
/*
 * The proxy entry: URL parsing and normalisation, key derivation, the
 * refcounted model and the validation of entries read back from disk.
 *
 * Design: the key of a proxy is the SHA-256 of its normalised URL
 * "scheme://host:port" (scheme and host lowercased, credentials and one
 * trailing slash dropped), so the same proxy written twice is one entry.
 * The URL parser is deliberately strict: anything that is not exactly
 * scheme, optional userinfo, host and port is rejected, because a proxy URL
 * with a path or query is almost certainly a mistake, and because the
 * normalised form must be unambiguous. Userinfo is split at the LAST '@'
 * of the authority (people do write "user:p@ss@host"); the authority ends
 * at the first '/', '?' or '#' after that, as in RFC 3986 and Python's
 * urlsplit(), so "host:1/x@evil:2" can never smuggle a different host.
 *
 * entry_validate() is the gate for bytes that come back from L2 files and
 * L3 rows: it re-derives everything that can be re-derived (URL, key,
 * scheme, expiry) and range-checks the rest. Reasons are short static
 * strings and never quote the input (it may hold credentials).
 *
 * Thread-safety: the functions here keep no state. A published entry is
 * immutable except for refs, last_accessed and access_count, which are
 * _Atomic. Ownership: entry_new()/entry_dup() return a new reference; the
 * last entry_unref() wipes the token strings and frees every field.
 */
#include "config.h"

#include "storage/entry.h"

#include "common/svc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>

/* Longest Fernet token accepted in an entry: credentials come from a URL of
 * at most ENTRY_URL_MAX bytes, whose token is well under this. */
#define TOKEN_MAX 8192

#define DNS_NAME_MAX  253
#define DNS_LABEL_MAX 63

static const char *const scheme_names[] = {
    [ENTRY_SCHEME_HTTP] = "http",
    [ENTRY_SCHEME_HTTPS] = "https",
    [ENTRY_SCHEME_SOCKS4] = "socks4",
    [ENTRY_SCHEME_SOCKS5] = "socks5",
};
#define N_SCHEMES (sizeof scheme_names / sizeof scheme_names[0])

static const char *const health_names[] = {
    [ENTRY_HEALTH_UNKNOWN] = "unknown",
    [ENTRY_HEALTH_HEALTHY] = "healthy",
    [ENTRY_HEALTH_UNHEALTHY] = "unhealthy",
};
#define N_HEALTH (sizeof health_names / sizeof health_names[0])

static const char *const anonymity_names[] = {
    [ENTRY_ANON_NONE] = NULL,
    [ENTRY_ANON_TRANSPARENT] = "transparent",
    [ENTRY_ANON_ANONYMOUS] = "anonymous",
    [ENTRY_ANON_ELITE] = "elite",
};
#define N_ANON (sizeof anonymity_names / sizeof anonymity_names[0])

/* Locale-independent ASCII helpers (ctype.h depends on the locale and is
 * undefined for negative chars). */
static bool is_alpha(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static char to_lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Case-insensitive comparison of s[0..len) with the NUL-terminated name. */
static bool span_equal_ci(const char *s, size_t len, const char *name)
{
    size_t i;

    for (i = 0; i < len; i++) {
        if (name[i] == '\0' || to_lower(s[i]) != name[i])
            return false;
    }
    return name[len] == '\0';
}

static int scheme_from_span(const char *s, size_t len, enum entry_scheme *out)
{
    size_t i;

    for (i = 0; i < N_SCHEMES; i++) {
        if (span_equal_ci(s, len, scheme_names[i])) {
            *out = (enum entry_scheme)i;
            return 0;
        }
    }
    return -EINVAL;
}

/* Free a plain-text credential after wiping it. */
static void free_secret(char *p)
{
    if (!p)
        return;
    OPENSSL_cleanse(p, strlen(p));
    free(p);
}

/*
 * Percent-decode s[0..len) into a new string. Returns 0 and *out, -EINVAL
 * for a malformed escape or a decoded NUL/control byte, -ENOMEM.
 */
static int percent_decode(const char *s, size_t len, char **out)
{
    char *buf = malloc(len + 1);
    size_t i, n = 0;

    if (!buf)
        return -ENOMEM;
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];

        if (c == '%') {
            int hi, lo;

            if (i + 2 >= len)
                goto bad;
            hi = hex_value(s[i + 1]);
            lo = hex_value(s[i + 2]);
            if (hi < 0 || lo < 0)
                goto bad;
            c = (unsigned char)(hi * 16 + lo);
            i += 2;
        }
        if (c < 0x20 || c == 0x7f)
            goto bad;
        buf[n++] = (char)c;
    }
    buf[n] = '\0';
    *out = buf;
    return 0;
bad:
    OPENSSL_cleanse(buf, len + 1);
    free(buf);
    return -EINVAL;
}

/* Dotted quad, each part 1..3 digits, 0..255, no leading zeros. */
static bool ipv4_valid(const char *s, size_t len)
{
    size_t i = 0;
    int part;

    for (part = 0; part < 4; part++) {
        unsigned v = 0;
        size_t start = i;

        if (part > 0) {
            if (i >= len || s[i] != '.')
                return false;
            start = ++i;
        }
        while (i < len && is_digit(s[i]) && i - start < 3)
            v = v * 10 + (unsigned)(s[i++] - '0');
        if (i == start || v > 255)
            return false;
        if (i - start > 1 && s[start] == '0')
            return false;
    }
    return i == len;
}

/* RFC 1123 host name: labels of letters, digits and '-', 1..63 long, not
 * starting or ending with '-'; at most 253 characters in all. */
static bool dns_name_valid(const char *s, size_t len)
{
    size_t i, label = 0;

    if (len == 0 || len > DNS_NAME_MAX)
        return false;
    for (i = 0; i < len; i++) {
        char c = s[i];

        if (c == '.') {
            if (label == 0 || s[i - 1] == '-')
                return false;
            label = 0;
            continue;
        }
        if (!is_alpha(c) && !is_digit(c) && c != '-')
            return false;
        if (c == '-' && label == 0)
            return false;
        if (++label > DNS_LABEL_MAX)
            return false;
    }
    return label > 0 && s[len - 1] != '-';
}

static bool all_digits_and_dots(const char *s, size_t len)
{
    size_t i;

    for (i = 0; i < len; i++) {
        if (!is_digit(s[i]) && s[i] != '.')
            return false;
    }
    return true;
}

/*
 * Validate host s[0..len) and write it lowercased into host (cap bytes).
 * Returns NULL or the reason it is invalid.
 */
static const char *parse_host(const char *s, size_t len, char *host, size_t cap)
{
    size_t i;

    if (len == 0)
        return "empty host";
    if (s[0] == '[') {
        char addr[INET6_ADDRSTRLEN + 1];
        unsigned char bin[16];

        if (len < 3 || s[len - 1] != ']')
            return "invalid IPv6 address";
        if (len - 2 >= sizeof addr)
            return "invalid IPv6 address";
        memcpy(addr, s + 1, len - 2);
        addr[len - 2] = '\0';
        if (inet_pton(AF_INET6, addr, bin) != 1)
            return "invalid IPv6 address";
        /* Canonical text (RFC 5952, lowercase, "::" compression), so that
         * [0:0::1] and [::1] are one proxy with one key. */
        if (!inet_ntop(AF_INET6, bin, addr, sizeof addr))
            return "invalid IPv6 address";
        snprintf(host, cap, "[%s]", addr);
        return NULL;
    } else if (all_digits_and_dots(s, len)) {
        if (!ipv4_valid(s, len))
            return "invalid IPv4 address";
    } else if (!dns_name_valid(s, len)) {
        return "invalid host";
    }
    SVC_ASSERT(len < cap); /* names are <= 253, addresses shorter */
    SVC_UNUSED(cap);
    for (i = 0; i < len; i++)
        host[i] = to_lower(s[i]);
    host[len] = '\0';
    return NULL;
}

/* Decimal port 1..65535. Returns NULL or the reason. */
static const char *parse_port(const char *s, size_t len, unsigned *port)
{
    unsigned long v = 0;
    size_t i;

    if (len == 0)
        return "missing port";
    for (i = 0; i < len; i++) {
        if (!is_digit(s[i]))
            return "invalid port";
        if (v <= 65535)
            v = v * 10 + (unsigned long)(s[i] - '0');
    }
    if (v < 1 || v > 65535)
        return "port out of range";
    *port = (unsigned)v;
    return NULL;
}

/*
 * Split userinfo s[0..len) at its first ':' into decoded username and
 * password (an empty password is absent). Returns NULL or the reason; on
 * success *user and *pass are set (caller frees).
 */
static const char *parse_userinfo(const char *s, size_t len, char **user,
                                  char **pass, int *err)
{
    const char *colon = memchr(s, ':', len);
    size_t ulen = colon ? (size_t)(colon - s) : len;
    char *u = NULL, *p = NULL;

    *err = 0;
    if (ulen == 0)
        return "empty username";
    /* a non-empty span decodes to a non-empty string (NUL is refused) */
    *err = percent_decode(s, ulen, &u);
    if (*err < 0)
        goto fail;
    if (colon && len - ulen - 1 > 0) {
        *err = percent_decode(colon + 1, len - ulen - 1, &p);
        if (*err < 0)
            goto fail;
    }
    *user = u;
    *pass = p;
    return NULL;
fail:
    free_secret(u);
    return *err == -ENOMEM ? "out of memory" : "invalid credentials";
}

/*
 * Length of a leading "scheme://" candidate: letters, digits, '+', '-',
 * '.' starting with a letter, followed by "://". 0 if there is none.
 */
static size_t scheme_prefix_len(const char *s)
{
    size_t i = 0;

    if (!is_alpha(s[0]))
        return 0;
    while (is_alpha(s[i]) || is_digit(s[i]) || s[i] == '+' || s[i] == '-' ||
           s[i] == '.')
        i++;
    if (strncmp(s + i, "://", 3) != 0)
        return 0;
    return i;
}

static int url_fail(const char **reason, const char *why)
{
    if (reason)
        *reason = why;
    return -EINVAL;
}

/*
 * The scheme of url (or the default) and where the rest starts. Returns
 * NULL or the reason.
 */
static const char *pick_scheme(const char *url, int default_scheme,
                               enum entry_scheme *scheme, const char **rest)
{
    size_t slen = scheme_prefix_len(url);

    if (slen > 0) {
        if (scheme_from_span(url, slen, scheme) < 0)
            return "unsupported scheme";
        *rest = url + slen + 3;
        return NULL;
    }
    if (strncmp(url, "://", 3) == 0)
        return "missing scheme";
    if (strstr(url, "://"))
        return "unsupported scheme";
    if (default_scheme < 0 || (size_t)default_scheme >= N_SCHEMES)
        return "missing scheme";
    *scheme = (enum entry_scheme)default_scheme;
    *rest = url;
    return NULL;
}

/*
 * Find the ':' before the port in hostport[0..end): the last ':' of a
 * name or IPv4 address, the one right after ']' of an IPv6 address.
 * Returns NULL or the reason.
 */
static const char *find_port_sep(const char *hostport, const char *end,
                                 const char **sep)
{
    const char *p, *found = NULL;

    if (hostport[0] == '[') {
        const char *close = memchr(hostport, ']', (size_t)(end - hostport));

        if (!close)
            return "invalid IPv6 address";
        if (close + 1 == end)
            return "missing port";
        if (close[1] != ':')
            return "invalid host";
        *sep = close + 1;
        return NULL;
    }
    for (p = hostport; p < end; p++) {
        if (*p == ':')
            found = p;
    }
    if (!found)
        return hostport == end ? "empty host" : "missing port";
    *sep = found;
    return NULL;
}

int entry_url_parse(const char *url, int default_scheme, struct entry_url *out,
                    const char **reason)
{
    struct entry_url u;
    const char *why = NULL;
    const char *rest = NULL, *auth_end, *at = NULL, *hostport, *p;
    const char *port_sep = NULL;
    size_t len, i;
    int err = 0, n;

    memset(&u, 0, sizeof u);
    if (!url || !out)
        return url_fail(reason, "missing URL");
    len = strnlen(url, ENTRY_URL_MAX);
    if (len == 0)
        return url_fail(reason, "missing URL");
    if (len >= ENTRY_URL_MAX)
        return url_fail(reason, "URL too long");
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)url[i];

        if (c <= 0x20 || c == 0x7f)
            return url_fail(reason, "invalid character in URL");
    }
    why = pick_scheme(url, default_scheme, &u.scheme, &rest);
    if (why)
        return url_fail(reason, why);

    /* The authority ends at the first '/', '?' or '#'; within it the
     * userinfo ends at the last '@'. Only one trailing '/' may follow. */
    auth_end = rest + strcspn(rest, "/?#");
    for (p = rest; p < auth_end; p++) {
        if (*p == '@')
            at = p;
    }
    hostport = at ? at + 1 : rest;
    if (*auth_end != '\0' && strcmp(auth_end, "/") != 0)
        return url_fail(reason, "unexpected path, query or fragment");
    why = find_port_sep(hostport, auth_end, &port_sep);
    if (why)
        return url_fail(reason, why);
    why = parse_host(hostport, (size_t)(port_sep - hostport), u.host,
                     sizeof u.host);
    if (why)
        return url_fail(reason, why);
    why = parse_port(port_sep + 1, (size_t)(auth_end - port_sep - 1), &u.port);
    if (why)
        return url_fail(reason, why);

    if (at) {
        why = parse_userinfo(rest, (size_t)(at - rest), &u.username,
                             &u.password, &err);
        if (why) {
            if (reason)
                *reason = why;
            return err == -ENOMEM ? -ENOMEM : -EINVAL;
        }
    }

    n = snprintf(u.normalised, sizeof u.normalised, "%s://%s:%u",
                 scheme_names[u.scheme], u.host, u.port);
    SVC_ASSERT(n > 0 && (size_t)n < sizeof u.normalised); /* host <= 253 */
    SVC_UNUSED(n);
    *out = u;
    return 0;
}

void entry_url_fini(struct entry_url *u)
{
    if (!u)
        return;
    free_secret(u->username);
    free_secret(u->password);
    u->username = NULL;
    u->password = NULL;
}

void entry_key_from_normalised(const char *normalised,
                               char out[ENTRY_KEY_LEN + 1])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char md[SHA256_DIGEST_LENGTH];
    size_t i;

    if (!normalised ||
        !SHA256((const unsigned char *)normalised, strlen(normalised), md)) {
        out[0] = '\0'; /* an invalid key: entry_key_valid() rejects it */
        return;
    }
    for (i = 0; i < SHA256_DIGEST_LENGTH; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 0x0f];
    }
    out[ENTRY_KEY_LEN] = '\0';
}

int entry_key_valid(const char *s)
{
    size_t i;

    if (!s)
        return 0;
    for (i = 0; i < ENTRY_KEY_LEN; i++) {
        if (!is_digit(s[i]) && !(s[i] >= 'a' && s[i] <= 'f'))
            return 0;
    }
    return s[ENTRY_KEY_LEN] == '\0';
}

struct entry *entry_new(void)
{
    struct entry *e = calloc(1, sizeof *e);

    if (!e)
        return NULL;
    atomic_init(&e->refs, 1);
    atomic_init(&e->last_accessed, 0);
    atomic_init(&e->access_count, 0);
    e->latency_ms = -1;
    return e;
}

static int dup_str(char **dst, const char *src)
{
    *dst = NULL;
    if (!src)
        return 0;
    *dst = strdup(src);
    return *dst ? 0 : -ENOMEM;
}

struct entry *entry_dup(const struct entry *e)
{
    struct entry *d;

    if (!e)
        return NULL;
    d = entry_new();
    if (!d)
        return NULL;
    memcpy(d->key, e->key, sizeof d->key);
    d->scheme = e->scheme;
    d->fetch_time = e->fetch_time;
    d->ttl_seconds = e->ttl_seconds;
    d->expires_at = e->expires_at;
    d->health = e->health;
    d->failure_count = e->failure_count;
    memcpy(d->country, e->country, sizeof d->country);
    d->anonymity = e->anonymity;
    d->latency_ms = e->latency_ms;
    atomic_store(&d->last_accessed, atomic_load(&e->last_accessed));
    atomic_store(&d->access_count, atomic_load(&e->access_count));
    if (dup_str(&d->proxy_url, e->proxy_url) < 0 ||
        dup_str(&d->username_tok, e->username_tok) < 0 ||
        dup_str(&d->password_tok, e->password_tok) < 0 ||
        dup_str(&d->source, e->source) < 0) {
        entry_unref(d);
        return NULL;
    }
    return d;
}

struct entry *entry_ref(struct entry *e)
{
    if (e)
        atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
    return e;
}

void entry_unref(struct entry *e)
{
    if (!e)
        return;
    /* acq_rel: every write made through other references happens before
     * the free below. */
    if (atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) != 1)
        return;
    free_secret(e->username_tok);
    free_secret(e->password_tok);
    free(e->proxy_url);
    free(e->source);
    free(e);
}

int entry_set_str(char **field, const char *s)
{
    char *copy = NULL;

    if (s) {
        copy = strdup(s);
        if (!copy)
            return -ENOMEM;
    }
    free_secret(*field); /* may have been a token: wipe, it is cheap */
    *field = copy;
    return 0;
}

/* fetch_time + ttl_s * 1000, saturating at the int64 limits. */
static int64_t expiry_of(int64_t fetch_time, int64_t ttl_s)
{
    int64_t ms, sum;

    if (__builtin_mul_overflow(ttl_s, (int64_t)1000, &ms))
        ms = ttl_s < 0 ? INT64_MIN : INT64_MAX;
    if (__builtin_add_overflow(fetch_time, ms, &sum))
        sum = ms < 0 ? INT64_MIN : INT64_MAX;
    return sum;
}

void entry_compute_expiry(struct entry *e)
{
    e->expires_at = expiry_of(e->fetch_time, e->ttl_seconds);
}

int entry_expired(const struct entry *e, int64_t now_ms)
{
    return e->expires_at <= now_ms;
}

const char *entry_health_name(enum entry_health h)
{
    if ((unsigned)h >= N_HEALTH)
        return NULL;
    return health_names[h];
}

int entry_health_parse(const char *s, enum entry_health *out)
{
    size_t i;

    if (!s)
        return -EINVAL;
    for (i = 0; i < N_HEALTH; i++) {
        if (strcmp(s, health_names[i]) == 0) {
            *out = (enum entry_health)i;
            return 0;
        }
    }
    return -EINVAL;
}

const char *entry_anonymity_name(enum entry_anonymity a)
{
    if ((unsigned)a >= N_ANON)
        return NULL;
    return anonymity_names[a];
}

int entry_anonymity_parse(const char *s, enum entry_anonymity *out)
{
    size_t i;

    if (!s)
        return -EINVAL;
    for (i = 1; i < N_ANON; i++) {
        if (strcmp(s, anonymity_names[i]) == 0) {
            *out = (enum entry_anonymity)i;
            return 0;
        }
    }
    return -EINVAL;
}

const char *entry_scheme_name(enum entry_scheme s)
{
    if ((unsigned)s >= N_SCHEMES)
        return NULL;
    return scheme_names[s];
}

int entry_scheme_parse(const char *s, enum entry_scheme *out)
{
    if (!s)
        return -EINVAL;
    return scheme_from_span(s, strlen(s), out);
}

int entry_source_valid(const char *s)
{
    size_t i;

    if (!s || s[0] == '\0')
        return 0;
    for (i = 0; s[i] != '\0'; i++) {
        if (i >= ENTRY_SOURCE_MAX)
            return 0;
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
            return 0;
    }
    return 1;
}

int entry_country_parse(const char *s, char out[3])
{
    if (!s || !is_alpha(s[0]) || !is_alpha(s[1]) || s[2] != '\0')
        return 0;
    out[0] = (char)(to_lower(s[0]) - 'a' + 'A');
    out[1] = (char)(to_lower(s[1]) - 'a' + 'A');
    out[2] = '\0';
    return 1;
}

/* A Fernet token as stored: URL-safe base64 with '=' padding. */
static bool token_valid(const char *t)
{
    size_t i;

    if (t[0] == '\0')
        return false;
    for (i = 0; t[i] != '\0'; i++) {
        char c = t[i];

        if (i >= TOKEN_MAX)
            return false;
        if (!is_alpha(c) && !is_digit(c) && c != '-' && c != '_' && c != '=')
            return false;
    }
    return true;
}

static bool country_valid(const char *c)
{
    if (c[0] == '\0')
        return true;
    return c[0] >= 'A' && c[0] <= 'Z' && c[1] >= 'A' && c[1] <= 'Z' &&
           c[2] == '\0';
}

static int bad(const char **reason, const char *why)
{
    if (reason)
        *reason = why;
    return -EBADMSG;
}

int entry_validate(const struct entry *e, const char **reason)
{
    struct entry_url u;
    const char *why = NULL;
    char key[ENTRY_KEY_LEN + 1];
    bool same;

    if (!e)
        return bad(reason, "missing entry");
    if (!entry_key_valid(e->key))
        return bad(reason, "invalid key");
    if (!e->proxy_url)
        return bad(reason, "missing proxy_url");
    if (entry_url_parse(e->proxy_url, -1, &u, &why) < 0)
        return bad(reason, "invalid proxy_url");
    same = u.username == NULL && u.password == NULL &&
           strcmp(u.normalised, e->proxy_url) == 0 && u.scheme == e->scheme;
    entry_url_fini(&u);
    if (!same)
        return bad(reason, "proxy_url not normalised or scheme mismatch");
    entry_key_from_normalised(e->proxy_url, key);
    if (strcmp(key, e->key) != 0)
        return bad(reason, "key does not match proxy_url");
    if (!entry_source_valid(e->source))
        return bad(reason, "invalid source");
    if (e->ttl_seconds < 0)
        return bad(reason, "negative ttl_seconds");
    if (e->fetch_time < 0)
        return bad(reason, "negative fetch_time");
    if (expiry_of(e->fetch_time, e->ttl_seconds) != e->expires_at)
        return bad(reason, "expires_at does not match fetch_time + ttl");
    if ((unsigned)e->health >= N_HEALTH)
        return bad(reason, "invalid health_status");
    if ((unsigned)e->anonymity >= N_ANON)
        return bad(reason, "invalid anonymity");
    if (!country_valid(e->country))
        return bad(reason, "invalid country");
    if (e->latency_ms < -1)
        return bad(reason, "invalid latency_ms");
    if (atomic_load(&e->last_accessed) < 0)
        return bad(reason, "invalid last_accessed");
    if (e->username_tok && !token_valid(e->username_tok))
        return bad(reason, "invalid username token");
    if (e->password_tok && !token_valid(e->password_tok))
        return bad(reason, "invalid password token");
    return 0;
}
