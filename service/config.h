/* SPDX-License-Identifier: MIT */
/*
 * The daemon's configuration: every flag of SPEC §6, each also read from the
 * environment as PROXYCACHE_<FLAG> (upper case, '_' for '-'); a flag wins
 * over its variable. Secrets come from the environment only, never from a
 * flag (a flag would show in ps): PROXYCACHE_API_TOKEN and
 * PROXYCACHE_ENCRYPTION_KEY (fallback PROXYWHIRL_CACHE_ENCRYPTION_KEY).
 *
 * Design: config_load() parses, validates strictly (full-string numbers,
 * ranges, address syntax, the loopback rule of SPEC §4) and builds the
 * encryption key ring, so that every way a configuration can be wrong is
 * reported by this one function as one line, and main() only has to exit 2.
 * The environment is read through a getter so that tests can inject one.
 *
 * Note on the include: this header shares its base name with autoconf's
 * config.h. A quoted #include "config.h" inside service/ finds THIS file
 * first, so the .c files of service/ include autoconf's header as
 * <config.h> (found through -I. / -I$(top_builddir)). Everyone else
 * includes this header as "service/config.h".
 *
 * Thread-safety: a struct config is written only by config_load() and is
 * immutable afterwards; any thread may read it. Ownership: the struct owns
 * every string and the key ring; config_fini() wipes the secrets and frees
 * them.
 */
#ifndef SERVICE_CONFIG_H
#define SERVICE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "common/log.h"
#include "storage/cache.h"
#include "storage/crypto.h"

enum config_threading {
    CONFIG_THREADING_POOL = 0,           /* MHD internal thread pool, poll */
    CONFIG_THREADING_PER_CONNECTION = 1, /* one thread per connection */
};

/* Where the credential encryption key ring came from. */
enum config_key_source {
    CONFIG_KEY_NONE = 0,       /* no key: credentials are not persisted */
    CONFIG_KEY_ENV = 1,        /* PROXYCACHE_ENCRYPTION_KEY */
    CONFIG_KEY_ENV_LEGACY = 2, /* PROXYWHIRL_CACHE_ENCRYPTION_KEY */
    CONFIG_KEY_EPHEMERAL = 3,  /* --ephemeral-key: random, lost on restart */
};

/* Results of config_load() besides 0 and -errno. */
#define CONFIG_SHOW_HELP    1
#define CONFIG_SHOW_VERSION 2

/* Longest accepted --data-dir (room is left for file names under it). */
#define CONFIG_PATH_MAX 3072

struct config {
    /* --listen: numeric address without brackets, its family (AF_INET or
     * AF_INET6), the port (0 = pick one) and whether it is loopback. */
    char listen_addr[48];
    int listen_family;
    uint16_t listen_port;
    bool listen_loopback;

    char *data_dir;                       /* --data-dir */
    size_t l1_capacity;                   /* >= 1 */
    size_t l2_capacity;                   /* >= 1 */
    size_t l3_capacity;                   /* 0 = unlimited */
    int64_t default_ttl;                  /* seconds, >= 1 */
    struct cache_source_ttl *source_ttls; /* --source-ttl, deduplicated */
    size_t n_source_ttls;
    int64_t sweep_interval;     /* seconds, >= 1 */
    uint32_t failure_threshold; /* >= 1 */
    char **warm_files;          /* --warm, in order */
    size_t n_warm_files;

    enum log_level log_level;
    enum log_format log_format;

    size_t max_body_bytes;           /* >= 1024 */
    size_t max_import_bytes;         /* >= 1024 */
    unsigned max_connections;        /* >= 1 */
    unsigned max_connections_per_ip; /* 0 = unlimited */
    unsigned idle_timeout;           /* seconds, >= 1 */
    enum config_threading threading;

    bool ephemeral_key;       /* --ephemeral-key */
    bool insecure_listen_any; /* --insecure-listen-any */

    /* Secrets (environment only). api_token is NULL when not configured;
     * it is never logged. */
    char *api_token;
    enum config_key_source key_source;
    struct crypto_keyring *ring; /* NULL when key_source is NONE */
};

/*
 * The environment getter: returns the value of a variable or NULL. main()
 * passes getenv; tests pass a fake.
 */
typedef char *(*config_getenv_fn)(const char *name);

/*
 * Parse argv (getopt_long; argv may be permuted) and the environment into
 * *out, which the caller provides and must release with config_fini() after
 * a 0 return. Returns:
 *   0                    configuration loaded and valid;
 *   CONFIG_SHOW_HELP     --help was given (print config_usage(), exit 0);
 *   CONFIG_SHOW_VERSION  --version was given (print config_version_line());
 *   -EINVAL              invalid configuration; err holds one line starting
 *                        with "proxycached: " and naming the flag or
 *                        variable, never quoting a secret;
 *   -ENOMEM / -EIO       out of memory / no randomness for --ephemeral-key.
 * On any non-zero return *out holds nothing to free. Not thread-safe (uses
 * getopt's globals): call it from main() before any thread starts.
 */
int config_load(int argc, char **argv, config_getenv_fn env, struct config *out,
                char *err, size_t errlen);

/* Wipe the secrets and free everything *c owns. NULL-safe; idempotent. */
void config_fini(struct config *c);

/* Write the --help text (every flag, default and variable) to f. */
void config_usage(FILE *f);

/* "proxycached 0.1.0" (static string). */
const char *config_version_line(void);

/* "0.1.0" (static string). */
const char *config_version(void);

/* The names of the enum values, for the start-up log line. */
const char *config_threading_name(enum config_threading t);

/* Format the listen address as "127.0.0.1:PORT" or "[::1]:PORT" with the
 * given port into buf. Returns buf. */
char *config_format_listen(const struct config *c, unsigned port, char *buf,
                           size_t len);

#endif
