/* SPDX-License-Identifier: MIT */
/*
 * The proxy entry: model, validation, URL normalisation and key derivation.
 *
 * Design: a struct entry is refcounted and, once published to a tier,
 * immutable except for the access statistics (access_count, last_accessed),
 * which are _Atomic so a read can bump them without a lock. Any other change
 * (health report, upsert) builds a new entry with entry_dup() and replaces
 * the old one; readers holding the old reference keep a consistent snapshot.
 *
 * Credentials: username_tok/password_tok are Fernet tokens sealed by
 * storage/crypto before the entry reaches any tier. Tiers never see plain
 * text. An entry without credentials has both NULL.
 *
 * Ownership: entry_new() returns a new reference; entry_ref/entry_unref
 * adjust the atomic count; the last unref frees every field (token strings
 * are wiped with OPENSSL_cleanse first).
 *
 * Times are int64 milliseconds since the Unix epoch (UTC); ttl is seconds.
 */
#ifndef STORAGE_ENTRY_H
#define STORAGE_ENTRY_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#define ENTRY_KEY_LEN 64        /* lowercase hex SHA-256 */
#define ENTRY_SOURCE_MAX 128
#define ENTRY_URL_MAX 2048

enum entry_health {
    ENTRY_HEALTH_UNKNOWN = 0,
    ENTRY_HEALTH_HEALTHY = 1,
    ENTRY_HEALTH_UNHEALTHY = 2,
};

enum entry_anonymity {
    ENTRY_ANON_NONE = 0, /* not known */
    ENTRY_ANON_TRANSPARENT = 1,
    ENTRY_ANON_ANONYMOUS = 2,
    ENTRY_ANON_ELITE = 3,
};

enum entry_scheme {
    ENTRY_SCHEME_HTTP = 0,
    ENTRY_SCHEME_HTTPS = 1,
    ENTRY_SCHEME_SOCKS4 = 2,
    ENTRY_SCHEME_SOCKS5 = 3,
};

struct entry {
    _Atomic int refs;
    char key[ENTRY_KEY_LEN + 1];
    char *proxy_url;      /* normalised "scheme://host:port", no userinfo */
    char *username_tok;   /* Fernet token or NULL */
    char *password_tok;   /* Fernet token or NULL */
    char *source;         /* 1..128 printable chars */
    enum entry_scheme scheme; /* the URL's scheme; "protocol" in JSON */
    int64_t fetch_time;   /* ms */
    int64_t ttl_seconds;  /* >= 0 */
    int64_t expires_at;   /* ms = fetch_time + ttl_seconds * 1000 */
    enum entry_health health;
    uint32_t failure_count;
    char country[3];      /* ISO 3166-1 alpha-2, uppercase, or "" */
    enum entry_anonymity anonymity;
    int64_t latency_ms;   /* -1 when unknown */
    _Atomic int64_t last_accessed;  /* ms, 0 = never */
    _Atomic uint64_t access_count;
};

/*
 * Result of parsing a proxy URL. host is lowercase; IPv6 hosts keep their
 * brackets. username/password are percent-decoded plain text (caller wipes
 * and frees them with entry_url_fini()).
 */
struct entry_url {
    enum entry_scheme scheme;
    char host[256];
    unsigned port;
    char *username;  /* NULL if absent */
    char *password;  /* NULL if absent */
    char normalised[ENTRY_URL_MAX]; /* "scheme://host:port" */
};

/*
 * Parse and normalise a proxy URL: "scheme://[user[:pass]@]host:port[/]".
 * scheme is http, https, socks4 or socks5 (case-insensitive); host is a
 * DNS name, an IPv4 dotted quad or a bracketed IPv6 address; port 1..65535.
 * If default_scheme is >= 0 a bare "host:port" is accepted with that scheme.
 * Returns -ENOMEM when out of memory. On error returns -EINVAL and, when reason is non-NULL, points *reason at a
 * static string saying why (never quoting the credentials).
 */
int entry_url_parse(const char *url, int default_scheme, struct entry_url *out,
                    const char **reason);
void entry_url_fini(struct entry_url *u);

/* Key of a normalised URL: lowercase hex SHA-256, 64 chars + NUL in out. */
void entry_key_from_normalised(const char *normalised,
                               char out[ENTRY_KEY_LEN + 1]);

/* 1 if s is exactly 64 lowercase hex characters, else 0. */
int entry_key_valid(const char *s);

/* A new, zeroed entry with refs = 1 and latency_ms = -1; NULL on ENOMEM. */
struct entry *entry_new(void);
/* A deep copy (refs = 1, access stats copied); NULL on ENOMEM. */
struct entry *entry_dup(const struct entry *e);
struct entry *entry_ref(struct entry *e);
void entry_unref(struct entry *e); /* NULL-safe */

/* Set a string field, copying s (NULL clears). 0 or -ENOMEM. */
int entry_set_str(char **field, const char *s);

/* expires_at = fetch_time + ttl_seconds * 1000 (saturating). */
void entry_compute_expiry(struct entry *e);

/* 1 if the entry is expired at now_ms (expires_at <= now_ms). */
int entry_expired(const struct entry *e, int64_t now_ms);

/* Names used in JSON and SQL; parse functions return 0 or -EINVAL. */
const char *entry_health_name(enum entry_health h);
int entry_health_parse(const char *s, enum entry_health *out);
const char *entry_anonymity_name(enum entry_anonymity a); /* NULL for NONE */
int entry_anonymity_parse(const char *s, enum entry_anonymity *out);
const char *entry_scheme_name(enum entry_scheme s);
int entry_scheme_parse(const char *s, enum entry_scheme *out);

/* 1 if s is a valid source: 1..128 printable ASCII characters. */
int entry_source_valid(const char *s);
/* 1 if s is two ASCII letters (country code); normalises to uppercase in out. */
int entry_country_parse(const char *s, char out[3]);

/*
 * Check every invariant of a fully built entry (key matches URL, lengths,
 * enums, expiry arithmetic). Used on data read back from L2/L3, which is
 * untrusted. Returns 0 or -EBADMSG with *reason set.
 */
int entry_validate(const struct entry *e, const char **reason);

#endif
