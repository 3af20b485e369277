/* SPDX-License-Identifier: MIT */
/*
 * Byte formats at rest and in transit:
 *  - the JSONL line of one entry, shared by the L2 shards and by export and
 *    import (credentials are the entry's Fernet tokens, never plain text);
 *  - the warm inputs: plain text, JSON array, JSONL, CSV with a header, and
 *    the reference project's proxies.json / proxies-rich.json.
 *
 * The warm parser is push-driven and incremental so that bodies are never
 * buffered whole: the HTTP layer feeds it chunks as they arrive. Text, CSV
 * and JSONL are parsed line by line; a top-level JSON array is split into
 * elements by a depth- and string-aware scanner and each element is parsed
 * by jansson; a JSON object document (proxies.json, proxies-rich.json) is
 * split the same way on its "proxies" member.
 *
 * Thread-safety: a parser belongs to one request thread. No globals.
 */
#ifndef STORAGE_FORMATS_H
#define STORAGE_FORMATS_H

#include <stddef.h>
#include <stdint.h>

#include "storage/entry.h"

/* Longest accepted line (text, CSV, JSONL) or JSON array element. */
#define FORMATS_LINE_MAX (64 * 1024)

/*
 * Encode e as one JSONL line ending in '\n'. The object has the members
 * key, proxy_url, username, password (tokens, omitted when absent), source,
 * protocol, fetch_time, ttl_seconds, expires_at, health_status,
 * failure_count, country, anonymity, latency_ms (omitted when unknown),
 * last_accessed (omitted when never), access_count.
 * Returns 0 and a new buffer (*line, *len) the caller frees, or -ENOMEM.
 */
int formats_entry_to_line(const struct entry *e, char **line, size_t *len);

/*
 * Decode one line (without or with its trailing '\n') produced by
 * formats_entry_to_line(), validating every field (entry_validate).
 * Returns 0 and a new entry reference, or -EBADMSG with *reason set (static
 * string), or -ENOMEM. *key_out (if non-NULL, 65 bytes) receives the key
 * when it could be read even if the line is otherwise bad, else "".
 */
int formats_entry_from_line(const char *line, size_t len, struct entry **out,
                            char *key_out, const char **reason);

/* The L2 tombstone line for key: {"key":"...","deleted":true}\n */
int formats_tombstone_line(const char *key, char **line, size_t *len);
/* 1 if the (valid JSON) line is a tombstone; writes the key. */
int formats_line_is_tombstone(const char *line, size_t len,
                              char key_out[ENTRY_KEY_LEN + 1]);

enum formats_kind {
    FORMATS_AUTO = 0,  /* detect from the first non-blank byte/line */
    FORMATS_TEXT,      /* one URL or host:port per line, # comments */
    FORMATS_JSON,      /* array of strings/objects, or a reference document */
    FORMATS_JSONL,     /* one JSON string or object per line */
    FORMATS_CSV,       /* header row then records */
};

/* From a Content-Type value ("text/plain; charset=utf-8" etc.). */
enum formats_kind formats_kind_from_content_type(const char *ct);

/*
 * One record of a warm input, borrowed for the duration of the callback.
 * proxy_url is the URL as given (it may carry credentials, or be a bare
 * "host:port" with scheme already resolved into default_scheme).
 * Optional fields are NULL / -1 when absent.
 */
struct formats_record {
    size_t line;            /* 1-based line (or element) number */
    const char *proxy_url;
    int default_scheme;     /* enum entry_scheme for a bare host:port, or -1 */
    const char *username;   /* plain text, or NULL */
    const char *password;   /* plain text, or NULL */
    const char *source;     /* or NULL */
    int64_t fetch_time;     /* ms, or -1 */
    int64_t ttl_seconds;    /* or -1 */
    const char *country;    /* or NULL */
    const char *anonymity;  /* or NULL */
    int64_t latency_ms;     /* or -1 */
    const char *health;     /* or NULL */
    /* For import of export lines: the already-sealed tokens, or NULL. */
    const char *username_tok;
    const char *password_tok;
};

/*
 * Callbacks: on_record for each record, on_error for each bad line (reason
 * is a static or short-lived string, never containing credentials). Return
 * 0 to go on, non-zero to stop parsing (that value is returned by feed).
 */
struct formats_warm_cb {
    int (*on_record)(void *arg, const struct formats_record *rec);
    int (*on_error)(void *arg, size_t line, const char *reason);
    void *arg;
};

struct formats_warm;

/* Returns 0 and a new parser, or -ENOMEM. */
int formats_warm_new(enum formats_kind kind, const struct formats_warm_cb *cb,
                     struct formats_warm **out);
/* Feed the next chunk. Returns 0, a callback's non-zero value, or -EINVAL
 * when the document as a whole is unusable (e.g. JSON that is neither an
 * array nor an object; the reason is then available from
 * formats_warm_error()). */
int formats_warm_feed(struct formats_warm *p, const char *data, size_t len);
/* End of input: flushes the last line. Same returns as feed. */
int formats_warm_finish(struct formats_warm *p);
const char *formats_warm_error(const struct formats_warm *p);
void formats_warm_free(struct formats_warm *p);

#endif
