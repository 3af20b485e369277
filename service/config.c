/* SPDX-License-Identifier: MIT */
/*
 * Configuration: flags and environment, validated, then immutable.
 *
 * Design: one table (opts[]) describes every flag: its name, the kind of
 * value, the range, the default and the help text. The table drives
 * getopt_long, the environment variable names (PROXYCACHE_ + the name in
 * upper case, '_' for '-'), the --help text and the validation, so a flag
 * cannot be added to one and forgotten in another. Loading runs in two
 * steps: getopt collects the raw flag values (the last one wins; the
 * repeatable ones accumulate), then every option takes its flag value, or
 * else its variable, or else keeps its default, and is parsed and checked.
 * A repeatable option given as flags ignores its variable entirely (flags
 * win as a whole, never merged).
 *
 * Errors are one line, "proxycached: invalid ORIGIN 'VALUE': REASON", where
 * ORIGIN is the flag or the variable that carried the value; quoted values
 * are capped and made printable. Secrets are never quoted.
 *
 * Thread-safety: config_load() uses getopt's globals and must run before
 * any thread starts. Ownership: see config.h.
 */
#include <config.h> /* autoconf's (see service/config.h on the name) */

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "service/config.h"
#include "storage/entry.h"

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "0.1.0"
#endif

#define ENV_PREFIX     "PROXYCACHE_"
#define ENV_TOKEN      "PROXYCACHE_API_TOKEN"
#define ENV_KEY        "PROXYCACHE_ENCRYPTION_KEY"
#define ENV_KEY_LEGACY "PROXYWHIRL_CACHE_ENCRYPTION_KEY"

#define TOKEN_MAX  4096         /* longest accepted API token */
#define MAX_REPEAT 1024         /* most --source-ttl or --warm values */
#define TTL_MAX    3153600000LL /* 100 years, in seconds */
#define QUOTE_MAX  80           /* longest value quoted in an error */

enum opt_id {
    O_LISTEN = 0,
    O_DATA_DIR,
    O_L1_CAPACITY,
    O_L2_CAPACITY,
    O_L3_CAPACITY,
    O_DEFAULT_TTL,
    O_SOURCE_TTL,
    O_SWEEP_INTERVAL,
    O_FAILURE_THRESHOLD,
    O_WARM,
    O_LOG_LEVEL,
    O_LOG_FORMAT,
    O_MAX_BODY_BYTES,
    O_MAX_CONNECTIONS,
    O_MAX_IMPORT_BYTES,
    O_IDLE_TIMEOUT,
    O_MAX_CONNECTIONS_PER_IP,
    O_THREADING,
    O_EPHEMERAL_KEY,
    O_INSECURE_LISTEN_ANY,
    N_OPTS,
    /* getopt values of the options that are not in the table */
    O_HELP = 'h',
    O_VERSION = 'V',
    O_REFUSED_TOKEN = 1000,
    O_REFUSED_KEY = 1001,
};

enum opt_kind {
    K_INT,    /* integer in [min, max] */
    K_STRING, /* non-empty string (a path) */
    K_BOOL,   /* flag without argument; env 1/0, true/false, yes/no, on/off */
    K_LISTEN,
    K_LOG_LEVEL,
    K_LOG_FORMAT,
    K_THREADING,
    K_SOURCE_TTL, /* repeatable NAME=SECONDS */
    K_WARM,       /* repeatable readable file */
};

struct opt {
    const char *name; /* the flag without "--" */
    enum opt_kind kind;
    const char *metavar;
    const char *def; /* default, as shown by --help */
    long long min, max;
    const char *help;
};

/* Indexed by enum opt_id. */
static const struct opt opts[N_OPTS] = {
    [O_LISTEN] = {"listen", K_LISTEN, "ADDR:PORT", "127.0.0.1:8080", 0, 0,
                  "address to listen on: IPV4:PORT or [IPV6]:PORT; port 0 "
                  "picks a free port (logged). Non-loopback needs "
                  "PROXYCACHE_API_TOKEN or --insecure-listen-any"},
    [O_DATA_DIR] = {"data-dir", K_STRING, "DIR", "./data", 0, 0,
                    "L2 shards and the L3 database (created 0700, locked)"},
    [O_L1_CAPACITY] = {"l1-capacity", K_INT, "N", "1000", 1, 100000000,
                       "entries in L1 (memory LRU)"},
    [O_L2_CAPACITY] = {"l2-capacity", K_INT, "N", "5000", 1, 1000000000,
                       "entries in L2 (JSONL shards)"},
    [O_L3_CAPACITY] = {"l3-capacity", K_INT, "N", "0", 0, 1000000000000LL,
                       "entries in L3 (SQLite); 0 = unlimited"},
    [O_DEFAULT_TTL] = {"default-ttl", K_INT, "SECONDS", "3600", 1, TTL_MAX,
                       "TTL when neither the request nor the source sets one"},
    [O_SOURCE_TTL] = {"source-ttl", K_SOURCE_TTL, "NAME=SECONDS", "none", 1,
                      TTL_MAX,
                      "per-source TTL; repeatable (env: comma-separated)"},
    [O_SWEEP_INTERVAL] = {"sweep-interval", K_INT, "SECONDS", "10", 1, 86400,
                          "period of the background expiry sweep"},
    [O_FAILURE_THRESHOLD] = {"failure-threshold", K_INT, "N", "3", 1, 1000000,
                             "consecutive health failures before removal"},
    [O_WARM] = {"warm", K_WARM, "FILE", "none", 0, 0,
                "proxy list loaded before ready; repeatable (env: "
                "comma-separated)"},
    [O_LOG_LEVEL] = {"log-level", K_LOG_LEVEL, "LEVEL", "info", 0, 0,
                     "debug, info, warn or error"},
    [O_LOG_FORMAT] = {"log-format", K_LOG_FORMAT, "FORMAT", "text", 0, 0,
                      "text or json"},
    [O_MAX_BODY_BYTES] = {"max-body-bytes", K_INT, "N", "16777216", 1024,
                          4294967296LL, "largest request body (413 above it)"},
    [O_MAX_CONNECTIONS] = {"max-connections", K_INT, "N", "1024", 1, 1000000,
                           "concurrent connections"},
    [O_MAX_IMPORT_BYTES] = {"max-import-bytes", K_INT, "N", "1073741824", 1024,
                            1099511627776LL,
                            "largest streamed body of /v1/warm and "
                            "/v1/import"},
    [O_IDLE_TIMEOUT] = {"idle-timeout", K_INT, "SECONDS", "30", 1, 86400,
                        "close a connection idle this long"},
    [O_MAX_CONNECTIONS_PER_IP] = {"max-connections-per-ip", K_INT, "N", "512",
                                  0, 1000000,
                                  "concurrent connections per client "
                                  "address; 0 = unlimited"},
    [O_THREADING] = {"threading", K_THREADING, "MODE", "pool", 0, 0,
                     "pool (thread pool, one per core) or per-connection"},
    [O_EPHEMERAL_KEY] = {"ephemeral-key", K_BOOL, NULL, "off", 0, 0,
                         "without PROXYCACHE_ENCRYPTION_KEY, seal "
                         "credentials with a random key (lost on restart)"},
    [O_INSECURE_LISTEN_ANY] = {"insecure-listen-any", K_BOOL, NULL, "off", 0, 0,
                               "allow a non-loopback --listen without "
                               "PROXYCACHE_API_TOKEN"},
};

/* The raw values collected from argv (borrowed pointers into argv). */
struct raw {
    const char *value[N_OPTS];
    bool given[N_OPTS];
    const char **list[N_OPTS]; /* repeatable kinds */
    size_t n_list[N_OPTS];
};

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;

    if (!err || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* A printable, capped copy of an untrusted value for an error message. */
static const char *quote(const char *s, char *buf, size_t len)
{
    size_t i;

    for (i = 0; s[i] != '\0' && i + 4 < len && i < QUOTE_MAX; i++) {
        unsigned char ch = (unsigned char)s[i];
        buf[i] = (ch >= 0x20 && ch < 0x7f) ? (char)ch : '?';
    }
    if (s[i] != '\0' && i + 4 <= len) {
        memcpy(buf + i, "...", 3);
        i += 3;
    }
    buf[i] = '\0';
    return buf;
}

/* "--l1-capacity" or "PROXYCACHE_L1_CAPACITY" for opts[id]. */
static void origin_name(enum opt_id id, bool from_env, char *buf, size_t len)
{
    size_t i, n;

    if (!from_env) {
        snprintf(buf, len, "--%s", opts[id].name);
        return;
    }
    n = (size_t)snprintf(buf, len, "%s", ENV_PREFIX);
    for (i = 0; opts[id].name[i] != '\0' && n + 1 < len; i++, n++) {
        char ch = opts[id].name[i];
        buf[n] = ch == '-'
                     ? '_'
                     : (char)(ch >= 'a' && ch <= 'z' ? ch - 'a' + 'A' : ch);
    }
    buf[n < len ? n : len - 1] = '\0';
}

static void invalid(char *err, size_t errlen, const char *origin,
                    const char *value, const char *reason)
{
    char q[QUOTE_MAX + 8];

    set_err(err, errlen, "proxycached: invalid %s '%s': %s", origin,
            quote(value, q, sizeof q), reason);
}

/* Strict decimal: optional '-', digits only, no spaces, in range. */
static int parse_int(const char *s, long long min, long long max,
                     long long *out, char *why, size_t whylen)
{
    char *end = NULL;
    long long v;

    if (s[0] == '\0' || !(s[0] == '-' || (s[0] >= '0' && s[0] <= '9'))) {
        snprintf(why, whylen, "not a number");
        return -EINVAL;
    }
    errno = 0;
    v = strtoll(s, &end, 10);
    if (end == s || *end != '\0') {
        snprintf(why, whylen, "not a number");
        return -EINVAL;
    }
    if (errno == ERANGE || v < min || v > max) {
        snprintf(why, whylen, "must be between %lld and %lld", min, max);
        return -EINVAL;
    }
    *out = v;
    return 0;
}

/* Parse "ADDR:PORT" / "[ADDR6]:PORT" / "localhost:PORT" into c. */
static int parse_listen(const char *s, struct config *c, char *why,
                        size_t whylen)
{
    char host[64];
    const char *colon, *port_s;
    size_t hlen;
    long long port;
    unsigned char bin[sizeof(struct in6_addr)];
    int family;

    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':') {
            snprintf(why, whylen, "expected [IPV6]:PORT");
            return -EINVAL;
        }
        hlen = (size_t)(close - s - 1);
        colon = close + 1;
        family = AF_INET6;
        if (hlen == 0 || hlen >= sizeof host) {
            snprintf(why, whylen, "expected [IPV6]:PORT");
            return -EINVAL;
        }
        memcpy(host, s + 1, hlen);
    } else {
        colon = strchr(s, ':');
        if (!colon || strchr(colon + 1, ':')) {
            snprintf(why, whylen,
                     "expected IPV4:PORT or [IPV6]:PORT (IPv6 needs "
                     "brackets)");
            return -EINVAL;
        }
        hlen = (size_t)(colon - s);
        family = AF_INET;
        if (hlen == 0 || hlen >= sizeof host) {
            snprintf(why, whylen, "expected IPV4:PORT or [IPV6]:PORT");
            return -EINVAL;
        }
        memcpy(host, s, hlen);
    }
    host[hlen] = '\0';
    if (family == AF_INET && strcmp(host, "localhost") == 0)
        snprintf(host, sizeof host, "127.0.0.1");

    port_s = colon + 1;
    if (port_s[0] < '0' || port_s[0] > '9' || strlen(port_s) > 5 ||
        parse_int(port_s, 0, 65535, &port, why, whylen) != 0) {
        snprintf(why, whylen, "port must be a number between 0 and 65535");
        return -EINVAL;
    }
    if (inet_pton(family, host, bin) != 1) {
        snprintf(why, whylen,
                 family == AF_INET ? "not a numeric IPv4 address"
                                   : "not a numeric IPv6 address");
        return -EINVAL;
    }
    if (!inet_ntop(family, bin, c->listen_addr, sizeof c->listen_addr)) {
        snprintf(why, whylen, "cannot format the address");
        return -EINVAL;
    }
    c->listen_family = family;
    c->listen_port = (uint16_t)port;
    if (family == AF_INET) {
        c->listen_loopback = bin[0] == 127;
    } else {
        struct in6_addr a6;
        memcpy(&a6, bin, sizeof a6);
        c->listen_loopback =
            IN6_IS_ADDR_LOOPBACK(&a6) ||
            (IN6_IS_ADDR_V4MAPPED(&a6) && a6.s6_addr[12] == 127);
    }
    return 0;
}

static int parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = {"1", "true", "yes", "on"};
    static const char *const no[] = {"0", "false", "no", "off"};

    for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -EINVAL;
}

/* strerror_r in either flavour, into buf. */
static const char *errno_text(int e, char *buf, size_t len)
{
#if defined(__GLIBC__) && defined(_GNU_SOURCE)
    return strerror_r(e, buf, len);
#else
    if (strerror_r(e, buf, len) != 0)
        snprintf(buf, len, "error %d", e);
    return buf;
#endif
}

/* Add "NAME=SECONDS" to c->source_ttls; a repeated NAME replaces the
 * earlier value. */
static int add_source_ttl(struct config *c, const char *item, char *why,
                          size_t whylen)
{
    const char *eq = strrchr(item, '=');
    char name[ENTRY_SOURCE_MAX + 1];
    size_t nlen;
    long long secs;
    struct cache_source_ttl *grown;

    if (!eq) {
        snprintf(why, whylen, "expected NAME=SECONDS");
        return -EINVAL;
    }
    nlen = (size_t)(eq - item);
    if (nlen == 0 || nlen > ENTRY_SOURCE_MAX) {
        snprintf(why, whylen, "NAME must be 1..%d printable characters",
                 ENTRY_SOURCE_MAX);
        return -EINVAL;
    }
    memcpy(name, item, nlen);
    name[nlen] = '\0';
    if (!entry_source_valid(name)) {
        snprintf(why, whylen, "NAME must be 1..%d printable characters",
                 ENTRY_SOURCE_MAX);
        return -EINVAL;
    }
    if (parse_int(eq + 1, opts[O_SOURCE_TTL].min, opts[O_SOURCE_TTL].max, &secs,
                  why, whylen) != 0) {
        char inner[96];
        snprintf(inner, sizeof inner, "SECONDS %s", why);
        snprintf(why, whylen, "%s", inner);
        return -EINVAL;
    }
    for (size_t i = 0; i < c->n_source_ttls; i++) {
        if (strcmp(c->source_ttls[i].name, name) == 0) {
            c->source_ttls[i].ttl_seconds = secs;
            return 0;
        }
    }
    if (c->n_source_ttls >= MAX_REPEAT) {
        snprintf(why, whylen, "more than %d sources", MAX_REPEAT);
        return -EINVAL;
    }
    grown = realloc(c->source_ttls,
                    (c->n_source_ttls + 1) * sizeof *c->source_ttls);
    if (!grown)
        return -ENOMEM;
    c->source_ttls = grown;
    memset(&grown[c->n_source_ttls], 0, sizeof *grown);
    memcpy(grown[c->n_source_ttls].name, name, nlen + 1);
    grown[c->n_source_ttls].ttl_seconds = secs;
    c->n_source_ttls++;
    return 0;
}

static int add_warm(struct config *c, const char *path, char *why,
                    size_t whylen)
{
    char **grown;
    char *copy;

    if (path[0] == '\0') {
        snprintf(why, whylen, "empty file name");
        return -EINVAL;
    }
    if (strlen(path) > CONFIG_PATH_MAX) {
        snprintf(why, whylen, "path longer than %d bytes", CONFIG_PATH_MAX);
        return -EINVAL;
    }
    if (access(path, R_OK) != 0) {
        char eb[128];
        snprintf(why, whylen, "%s", errno_text(errno, eb, sizeof eb));
        return -EINVAL;
    }
    if (c->n_warm_files >= MAX_REPEAT) {
        snprintf(why, whylen, "more than %d files", MAX_REPEAT);
        return -EINVAL;
    }
    copy = strdup(path);
    if (!copy)
        return -ENOMEM;
    grown = realloc(c->warm_files, (c->n_warm_files + 1) * sizeof *grown);
    if (!grown) {
        free(copy);
        return -ENOMEM;
    }
    c->warm_files = grown;
    grown[c->n_warm_files++] = copy;
    return 0;
}

/* Apply one item of a repeatable option (the value of one flag, or one
 * comma-separated element of the variable). */
static int apply_item(enum opt_id id, const char *item, struct config *c,
                      char *why, size_t whylen)
{
    if (opts[id].kind == K_SOURCE_TTL)
        return add_source_ttl(c, item, why, whylen);
    return add_warm(c, item, why, whylen);
}

/* Parse and store the value of a single-valued option. */
static int apply_one(enum opt_id id, const char *value, struct config *c,
                     char *why, size_t whylen)
{
    const struct opt *o = &opts[id];
    long long v = 0;
    int err;

    switch (o->kind) {
    case K_INT:
        err = parse_int(value, o->min, o->max, &v, why, whylen);
        if (err)
            return err;
        break;
    case K_STRING:
        if (value[0] == '\0') {
            snprintf(why, whylen, "must not be empty");
            return -EINVAL;
        }
        if (strlen(value) > CONFIG_PATH_MAX) {
            snprintf(why, whylen, "longer than %d bytes", CONFIG_PATH_MAX);
            return -EINVAL;
        }
        break;
    default:
        break;
    }

    switch (id) {
    case O_LISTEN:
        return parse_listen(value, c, why, whylen);
    case O_DATA_DIR: {
        char *copy = strdup(value);
        if (!copy)
            return -ENOMEM;
        free(c->data_dir);
        c->data_dir = copy;
        return 0;
    }
    case O_L1_CAPACITY:
        c->l1_capacity = (size_t)v;
        return 0;
    case O_L2_CAPACITY:
        c->l2_capacity = (size_t)v;
        return 0;
    case O_L3_CAPACITY:
        c->l3_capacity = (size_t)v;
        return 0;
    case O_DEFAULT_TTL:
        c->default_ttl = v;
        return 0;
    case O_SWEEP_INTERVAL:
        c->sweep_interval = v;
        return 0;
    case O_FAILURE_THRESHOLD:
        c->failure_threshold = (uint32_t)v;
        return 0;
    case O_LOG_LEVEL:
        if (log_level_parse(value, &c->log_level) != 0) {
            snprintf(why, whylen, "expected debug, info, warn or error");
            return -EINVAL;
        }
        return 0;
    case O_LOG_FORMAT:
        if (strcmp(value, "text") == 0) {
            c->log_format = LOG_FORMAT_TEXT;
        } else if (strcmp(value, "json") == 0) {
            c->log_format = LOG_FORMAT_JSON;
        } else {
            snprintf(why, whylen, "expected text or json");
            return -EINVAL;
        }
        return 0;
    case O_MAX_BODY_BYTES:
        c->max_body_bytes = (size_t)v;
        return 0;
    case O_MAX_CONNECTIONS:
        c->max_connections = (unsigned)v;
        return 0;
    case O_MAX_IMPORT_BYTES:
        c->max_import_bytes = (size_t)v;
        return 0;
    case O_IDLE_TIMEOUT:
        c->idle_timeout = (unsigned)v;
        return 0;
    case O_MAX_CONNECTIONS_PER_IP:
        c->max_connections_per_ip = (unsigned)v;
        return 0;
    case O_THREADING:
        if (strcmp(value, "pool") == 0) {
            c->threading = CONFIG_THREADING_POOL;
        } else if (strcmp(value, "per-connection") == 0) {
            c->threading = CONFIG_THREADING_PER_CONNECTION;
        } else {
            snprintf(why, whylen, "expected pool or per-connection");
            return -EINVAL;
        }
        return 0;
    case O_EPHEMERAL_KEY:
    case O_INSECURE_LISTEN_ANY: {
        bool b;
        if (parse_bool(value, &b) != 0) {
            snprintf(why, whylen, "expected 1/0, true/false, yes/no, on/off");
            return -EINVAL;
        }
        if (id == O_EPHEMERAL_KEY)
            c->ephemeral_key = b;
        else
            c->insecure_listen_any = b;
        return 0;
    }
    default:
        snprintf(why, whylen, "internal error: unhandled option");
        return -EINVAL;
    }
}

/* Apply a comma-separated environment list, one item at a time. */
static int apply_env_list(enum opt_id id, const char *value, struct config *c,
                          const char *origin, char *err, size_t errlen)
{
    char *copy = strdup(value);
    char *item, *next;
    char why[256];
    int rc = 0;

    if (!copy)
        return -ENOMEM;
    for (item = copy; item; item = next) {
        char *end;
        next = strchr(item, ',');
        if (next)
            *next++ = '\0';
        while (*item == ' ' || *item == '\t')
            item++;
        end = item + strlen(item);
        while (end > item && (end[-1] == ' ' || end[-1] == '\t'))
            *--end = '\0';
        if (*item == '\0')
            continue; /* "a=1,,b=2" or a trailing comma */
        rc = apply_item(id, item, c, why, sizeof why);
        if (rc != 0) {
            if (rc == -EINVAL)
                invalid(err, errlen, origin, item, why);
            break;
        }
    }
    free(copy);
    return rc;
}

static void set_defaults(struct config *c)
{
    memset(c, 0, sizeof *c);
    snprintf(c->listen_addr, sizeof c->listen_addr, "127.0.0.1");
    c->listen_family = AF_INET;
    c->listen_port = 8080;
    c->listen_loopback = true;
    c->l1_capacity = 1000;
    c->l2_capacity = 5000;
    c->l3_capacity = 0;
    c->default_ttl = 3600;
    c->sweep_interval = 10;
    c->failure_threshold = 3;
    c->log_level = LOG_LEVEL_INFO;
    c->log_format = LOG_FORMAT_TEXT;
    c->max_body_bytes = 16777216;
    c->max_connections = 1024;
    c->max_import_bytes = 1073741824;
    c->idle_timeout = 30;
    c->max_connections_per_ip = 512;
    c->threading = CONFIG_THREADING_POOL;
}

static int push_raw(struct raw *raw, enum opt_id id, const char *v)
{
    const char **grown;

    if (raw->n_list[id] >= MAX_REPEAT)
        return -E2BIG;
    grown = realloc(raw->list[id], (raw->n_list[id] + 1) * sizeof *grown);
    if (!grown)
        return -ENOMEM;
    raw->list[id] = grown;
    grown[raw->n_list[id]++] = v;
    return 0;
}

static void raw_fini(struct raw *raw)
{
    for (size_t i = 0; i < N_OPTS; i++)
        free(raw->list[i]);
}

/* The option text at argv[optind - 1] without any "=value" part. */
static const char *bad_option(int argc, char **argv, char *buf, size_t len)
{
    const char *arg =
        (optind >= 1 && optind - 1 < argc) ? argv[optind - 1] : "?";
    size_t n = strcspn(arg, "=");
    char tmp[QUOTE_MAX + 8];

    if (n >= sizeof tmp)
        n = sizeof tmp - 1;
    memcpy(tmp, arg, n);
    tmp[n] = '\0';
    return quote(tmp, buf, len);
}

/* Step 1: getopt over argv into raw. */
static int collect_flags(int argc, char **argv, struct raw *raw, char *err,
                         size_t errlen)
{
    struct option longopts[N_OPTS + 5];
    size_t n = 0;
    int ch, rc;
    char q[QUOTE_MAX + 8];

    for (size_t i = 0; i < N_OPTS; i++) {
        longopts[n].name = opts[i].name;
        longopts[n].has_arg =
            opts[i].kind == K_BOOL ? no_argument : required_argument;
        longopts[n].flag = NULL;
        longopts[n].val = (int)i + 2000;
        n++;
    }
    longopts[n++] = (struct option){"help", no_argument, NULL, O_HELP};
    longopts[n++] = (struct option){"version", no_argument, NULL, O_VERSION};
    longopts[n++] =
        (struct option){"api-token", optional_argument, NULL, O_REFUSED_TOKEN};
    longopts[n++] = (struct option){"encryption-key", optional_argument, NULL,
                                    O_REFUSED_KEY};
    longopts[n] = (struct option){NULL, 0, NULL, 0};

    optind = 0; /* glibc: full re-initialisation (tests call us often) */
    opterr = 0;
    for (;;) {
        ch = getopt_long(argc, argv, ":hV", longopts, NULL);
        if (ch == -1)
            break;
        switch (ch) {
        case O_HELP:
            return CONFIG_SHOW_HELP;
        case O_VERSION:
            return CONFIG_SHOW_VERSION;
        case O_REFUSED_TOKEN:
            set_err(err, errlen,
                    "proxycached: --api-token is not accepted (it would show "
                    "in ps): set " ENV_TOKEN " in the environment");
            return -EINVAL;
        case O_REFUSED_KEY:
            set_err(err, errlen,
                    "proxycached: --encryption-key is not accepted (it would "
                    "show in ps): set " ENV_KEY " in the environment");
            return -EINVAL;
        case ':':
            set_err(err, errlen, "proxycached: option %s requires an argument",
                    bad_option(argc, argv, q, sizeof q));
            return -EINVAL;
        case '?':
            if (optopt > 0 && optopt < 256 && optopt != '?')
                set_err(err, errlen,
                        "proxycached: unknown option '-%c' (see --help)",
                        optopt >= 0x20 && optopt < 0x7f ? optopt : '?');
            else
                set_err(err, errlen,
                        "proxycached: unknown or ambiguous option '%s' (see "
                        "--help)",
                        bad_option(argc, argv, q, sizeof q));
            return -EINVAL;
        default: {
            int id = ch - 2000;
            if (id < 0 || id >= N_OPTS) {
                set_err(err, errlen,
                        "proxycached: unknown option (see --help)");
                return -EINVAL;
            }
            raw->given[id] = true;
            if (opts[id].kind == K_BOOL) {
                raw->value[id] = "1";
            } else if (opts[id].kind == K_SOURCE_TTL ||
                       opts[id].kind == K_WARM) {
                rc = push_raw(raw, (enum opt_id)id, optarg);
                if (rc == -E2BIG) {
                    set_err(err, errlen,
                            "proxycached: --%s given more than %d times",
                            opts[id].name, MAX_REPEAT);
                    return -EINVAL;
                }
                if (rc)
                    return rc;
            } else {
                raw->value[id] = optarg;
            }
            break;
        }
        }
    }
    if (optind < argc) {
        set_err(err, errlen,
                "proxycached: unexpected argument '%s' (see --help)",
                quote(argv[optind], q, sizeof q));
        return -EINVAL;
    }
    return 0;
}

/* Step 2: every option from its flag, else its variable, else default. */
static int apply_all(const struct raw *raw, config_getenv_fn env,
                     struct config *c, char *err, size_t errlen)
{
    char origin[64], why[256];
    int rc;

    for (size_t i = 0; i < N_OPTS; i++) {
        enum opt_id id = (enum opt_id)i;
        bool repeat = opts[i].kind == K_SOURCE_TTL || opts[i].kind == K_WARM;
        const char *value;

        if (raw->given[i]) {
            origin_name(id, false, origin, sizeof origin);
            if (repeat) {
                for (size_t k = 0; k < raw->n_list[i]; k++) {
                    rc = apply_item(id, raw->list[i][k], c, why, sizeof why);
                    if (rc == -EINVAL)
                        invalid(err, errlen, origin, raw->list[i][k], why);
                    if (rc)
                        return rc;
                }
                continue;
            }
            value = raw->value[i];
        } else {
            origin_name(id, true, origin, sizeof origin);
            value = env ? env(origin) : NULL;
            if (!value || value[0] == '\0')
                continue; /* unset or empty: keep the default */
            if (repeat) {
                rc = apply_env_list(id, value, c, origin, err, errlen);
                if (rc)
                    return rc;
                continue;
            }
        }
        rc = apply_one(id, value, c, why, sizeof why);
        if (rc == -EINVAL)
            invalid(err, errlen, origin, value, why);
        if (rc)
            return rc;
    }
    if (!c->data_dir) {
        c->data_dir = strdup("./data");
        if (!c->data_dir)
            return -ENOMEM;
    }
    return 0;
}

/* The token: visible ASCII only (it travels in a header), never quoted. */
static int load_token(config_getenv_fn env, struct config *c, char *err,
                      size_t errlen)
{
    const char *t = env ? env(ENV_TOKEN) : NULL;
    size_t len;

    if (!t || t[0] == '\0')
        return 0;
    len = strlen(t);
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)t[i];
        if (ch <= 0x20 || ch >= 0x7f) {
            set_err(err, errlen,
                    "proxycached: invalid " ENV_TOKEN ": only "
                    "visible ASCII characters are allowed (value not "
                    "shown)");
            return -EINVAL;
        }
    }
    if (len > TOKEN_MAX) {
        set_err(err, errlen,
                "proxycached: invalid " ENV_TOKEN
                ": longer than %d characters (value not shown)",
                TOKEN_MAX);
        return -EINVAL;
    }
    c->api_token = strdup(t);
    return c->api_token ? 0 : -ENOMEM;
}

/* The key ring: the variable, else the legacy one, else --ephemeral-key. */
static int load_keyring(config_getenv_fn env, struct config *c, char *err,
                        size_t errlen)
{
    const char *name = ENV_KEY;
    const char *k = env ? env(ENV_KEY) : NULL;
    enum config_key_source src = CONFIG_KEY_ENV;
    int rc;

    if (!k || k[0] == '\0') {
        name = ENV_KEY_LEGACY;
        k = env ? env(ENV_KEY_LEGACY) : NULL;
        src = CONFIG_KEY_ENV_LEGACY;
    }
    if (k && k[0] != '\0') {
        rc = crypto_keyring_new(k, &c->ring);
        if (rc == -EINVAL) {
            set_err(err, errlen,
                    "proxycached: invalid %s: expected URL-safe "
                    "base64 of 32 bytes, comma-separated for rotation "
                    "(value not shown)",
                    name);
            return -EINVAL;
        }
        if (rc)
            return rc;
        c->key_source = src;
        return 0;
    }
    if (c->ephemeral_key) {
        rc = crypto_keyring_new_random(&c->ring);
        if (rc) {
            set_err(err, errlen,
                    "proxycached: --ephemeral-key: cannot "
                    "create a random key");
            return rc;
        }
        c->key_source = CONFIG_KEY_EPHEMERAL;
        return 0;
    }
    c->key_source = CONFIG_KEY_NONE;
    return 0;
}

int config_load(int argc, char **argv, config_getenv_fn env, struct config *out,
                char *err, size_t errlen)
{
    struct raw raw;
    struct config c;
    char where[96];
    int rc;

    if (err && errlen)
        err[0] = '\0';
    memset(&raw, 0, sizeof raw);
    set_defaults(&c);

    rc = collect_flags(argc, argv, &raw, err, errlen);
    if (rc != 0)
        goto out;
    rc = apply_all(&raw, env, &c, err, errlen);
    if (rc != 0)
        goto out;
    rc = load_token(env, &c, err, errlen);
    if (rc != 0)
        goto out;
    if (!c.listen_loopback && !c.api_token && !c.insecure_listen_any) {
        config_format_listen(&c, c.listen_port, where, sizeof where);
        set_err(err, errlen,
                "proxycached: refusing to listen on %s (not "
                "loopback) without " ENV_TOKEN ": set a token, or pass "
                "--insecure-listen-any",
                where);
        rc = -EINVAL;
        goto out;
    }
    rc = load_keyring(env, &c, err, errlen);
    if (rc != 0)
        goto out;
    *out = c;
    memset(&c, 0, sizeof c); /* ownership moved to *out */
out:
    if (rc == -ENOMEM && err && errlen && err[0] == '\0')
        set_err(err, errlen, "proxycached: out of memory");
    if (rc != 0 && rc != CONFIG_SHOW_HELP && rc != CONFIG_SHOW_VERSION && err &&
        errlen && err[0] == '\0')
        set_err(err, errlen, "proxycached: invalid configuration");
    config_fini(&c);
    raw_fini(&raw);
    return rc;
}

void config_fini(struct config *c)
{
    if (!c)
        return;
    free(c->data_dir);
    c->data_dir = NULL;
    free(c->source_ttls);
    c->source_ttls = NULL;
    c->n_source_ttls = 0;
    for (size_t i = 0; i < c->n_warm_files; i++)
        free(c->warm_files[i]);
    free(c->warm_files);
    c->warm_files = NULL;
    c->n_warm_files = 0;
    if (c->api_token) {
        explicit_bzero(c->api_token, strlen(c->api_token));
        free(c->api_token);
        c->api_token = NULL;
    }
    crypto_keyring_free(c->ring);
    c->ring = NULL;
    c->key_source = CONFIG_KEY_NONE;
}

/* Print text word-wrapped at 79 columns, each line indented by indent. */
static void wrap(FILE *f, const char *text, int indent)
{
    const int width = 79 - indent;
    const char *p = text;

    while (*p) {
        int len = (int)strlen(p), cut = len;
        if (len > width) {
            cut = width;
            while (cut > 0 && p[cut] != ' ')
                cut--;
            if (cut == 0)
                cut = width;
        }
        fprintf(f, "%*s%.*s\n", indent, "", cut, p);
        p += cut;
        while (*p == ' ')
            p++;
    }
}

void config_usage(FILE *f)
{
    char env[64], line[256];

    fprintf(f,
            "Usage: proxycached [OPTION]...\n"
            "Serve the three-tier proxy cache over HTTP (REST API v1).\n"
            "\n"
            "Every option can also be set in the environment as PROXYCACHE_"
            "<NAME>\n(upper case, '_' for '-'); a flag wins over its variable."
            "\n\n");
    for (size_t i = 0; i < N_OPTS; i++) {
        origin_name((enum opt_id)i, true, env, sizeof env);
        fprintf(f, "  --%s%s%s\n", opts[i].name, opts[i].metavar ? " " : "",
                opts[i].metavar ? opts[i].metavar : "");
        wrap(f, opts[i].help, 8);
        snprintf(line, sizeof line, "(default: %s; env %s)", opts[i].def, env);
        wrap(f, line, 8);
    }
    fprintf(f, "  -h, --help\n        show this help\n"
               "  -V, --version\n        show the version\n\n");
    fprintf(f, "Secrets, from the environment only (never flags: flags show "
               "in ps):\n"
               "  " ENV_TOKEN "\n"
               "        bearer token required on every route but /healthz, "
               "/readyz and\n"
               "        /metrics\n"
               "  " ENV_KEY "\n"
               "        Fernet key(s) sealing stored credentials: URL-safe "
               "base64 of 32\n"
               "        bytes; comma-separated for rotation (seal with the "
               "first, open\n"
               "        with any); fallback " ENV_KEY_LEGACY "\n"
               "Other variables:\n"
               "  PROXYCACHE_OPENAPI\n"
               "        path of the openapi.yaml served at /openapi.yaml\n"
               "\n"
               "Exit status: 0 after SIGTERM/SIGINT, 1 on a runtime failure "
               "(e.g. the data\ndirectory is locked by another instance), 2 on "
               "invalid configuration.\n");
}

const char *config_version_line(void)
{
    return "proxycached " PACKAGE_VERSION;
}

const char *config_version(void)
{
    return PACKAGE_VERSION;
}

const char *config_threading_name(enum config_threading t)
{
    return t == CONFIG_THREADING_PER_CONNECTION ? "per-connection" : "pool";
}

char *config_format_listen(const struct config *c, unsigned port, char *buf,
                           size_t len)
{
    if (c->listen_family == AF_INET6)
        snprintf(buf, len, "[%s]:%u", c->listen_addr, port);
    else
        snprintf(buf, len, "%s:%u", c->listen_addr, port);
    return buf;
}
