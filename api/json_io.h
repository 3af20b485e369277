/* SPDX-License-Identifier: MIT */
/*
 * Entries to and from their JSON API representation (docs/DESIGN.md).
 *
 * Output: GET of an L1 entry is the hottest path of the service, and
 * building a json_t tree then dumping it costs ~3.6 µs per entry (FIELD-NOTES).
 * So entries are written straight into a growable byte buffer (struct jbuf)
 * with a small JSON string escaper; lists and pick responses append many
 * entries to one buffer. Every other (small, cold) document is built with
 * jansson and dumped by api_response_json().
 *
 * Input: json_io_entry_from_json() validates one entry object strictly
 * (types, ranges, unknown members) and fills a struct problem naming the
 * member and the reason on error. Plain-text credentials are sealed into
 * Fernet tokens here and wiped at once; without a key ring they are dropped
 * with one WARNING per process lifetime of the ctx.
 *
 * Thread-safety: no shared state except ctx->warned_no_key (atomic).
 * Ownership: see each function.
 */
#ifndef API_JSON_IO_H
#define API_JSON_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "api/api.h"
#include "api/problem.h"
#include "storage/entry.h"

/*
 * A growable byte buffer with a hard cap (curl's dynbuf). After any failed
 * append (out of memory or over the cap) the buffer is marked failed and
 * further appends are ignored; check jbuf_failed() once at the end.
 * wipe: the buffer may hold secrets, so every reallocation and the final
 * free wipe the old bytes first (OPENSSL_cleanse).
 */
struct jbuf {
    char *p;
    size_t len;
    size_t cap;
    size_t max;
    bool wipe;
    int err;    /* 0, -ENOMEM or -E2BIG */
};

void jbuf_init(struct jbuf *b, size_t max, bool wipe);
void jbuf_fini(struct jbuf *b);                     /* frees (wipes) */
void jbuf_put(struct jbuf *b, const char *s, size_t len);
void jbuf_puts(struct jbuf *b, const char *s);
void jbuf_putc(struct jbuf *b, char c);
void jbuf_put_u64(struct jbuf *b, uint64_t v);
void jbuf_put_i64(struct jbuf *b, int64_t v);
/* s as a JSON string literal with quotes; invalid UTF-8 bytes become
 * U+FFFD, control characters are escaped. */
void jbuf_put_jstr(struct jbuf *b, const char *s, size_t len);
/* "field":"<name>" with the name cut at 128 bytes on a UTF-8 boundary (an
 * unknown member name from a request is echoed, so it is bounded). */
void jbuf_put_field(struct jbuf *b, const char *field);
/* RFC 3339 time as a JSON string. */
void jbuf_put_time(struct jbuf *b, int64_t ms);
static inline int jbuf_failed(const struct jbuf *b)
{
    return b->err;
}
/* Give the bytes away (NUL-terminated, malloc'd; caller frees) and reset b.
 * Returns NULL if the buffer failed (b is then freed). */
char *jbuf_steal(struct jbuf *b, size_t *len);

/* Output flags for json_io_entry_append. */
#define JSON_IO_REVEAL 0x1        /* decrypt credentials (caller checked auth) */
#define JSON_IO_EVICTED_FALSE 0x2 /* append "evicted":false (health reply) */

/*
 * Append the API object of e to b. tier: "l1"/"l2"/"l3" appends
 * "tier":..., NULL omits it. Credentials are "***" unless JSON_IO_REVEAL, in
 * which case the tokens are opened with ctx->ring and the plain text is
 * wiped right after it is escaped into b (b should have wipe set).
 * Returns 0, -EBADMSG if a token does not open, or b's error.
 */
int json_io_entry_append(struct jbuf *b, struct api_ctx *ctx,
                         const struct entry *e, unsigned flags,
                         const char *tier);

/*
 * Validate one entry object and build a complete entry (key, normalised
 * URL, sealed credentials, expiry). On success returns 0, a new reference in
 * *out and the CACHE_F_* mask of what the client supplied in *fields. On
 * error returns -EINVAL (or -ENOMEM) with p filled (status 400, field and
 * reason; p->field may point into obj, so use p while obj is alive).
 * Plain-text credential strings inside obj are wiped once sealed.
 */
int json_io_entry_from_json(struct api_ctx *ctx, json_t *obj,
                            struct entry **out, unsigned *fields,
                            struct problem *p);

/* A JSON string for s that never fails on bad UTF-8 (invalid bytes become
 * '?'); NULL only on ENOMEM. New reference. */
json_t *json_io_string(const char *s);

/* Install the wiping, budgeted jansson allocator; call once in main before
 * any thread starts and before any jansson use. */
void json_io_install_allocator(void);

#endif
