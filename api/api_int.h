/* SPDX-License-Identifier: MIT */
/*
 * Helpers shared by the api/ handler files (module-private; not for
 * service/). They are defined in json_io.c (request parsing) and problem.c
 * (responses).
 *
 * Every helper that validates a request fills resp with a 4xx problem
 * document when it fails, so a handler can simply return.
 */
#ifndef API_API_INT_H
#define API_API_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "api/api.h"
#include "api/json_io.h"
#include "api/problem.h"

/* Most items a batch (POST /v1/proxies, bulk health) may hold. */
#define API_MAX_BATCH 10000

/* Cap on a JSON response assembled in a jbuf (a list page of 1,000 entries
 * with long URLs stays far below). */
#define API_MAX_RESPONSE (64u * 1024 * 1024)

#define API_CT_JSON "application/json"
#define API_CT_PROBLEM "application/problem+json"

/* Query parameter value or NULL (NULL-safe on req->query). */
const char *api_query(const struct api_request *req, const char *name);

/*
 * Parse the optional integer query parameter name in [min, max]. Absent:
 * *out = def, returns 0. Present but not a plain decimal integer in range:
 * fills resp (400, field name) and returns -EINVAL.
 */
int api_query_int(const struct api_request *req, const char *name,
                  int64_t min, int64_t max, int64_t def, int64_t *out,
                  struct api_response *resp);

/* Optional boolean query parameter: absent -> def; "", "true", "1" -> true;
 * "false", "0" -> false; else 400 field name and -EINVAL. */
int api_query_bool(const struct api_request *req, const char *name, bool def,
                   bool *out, struct api_response *resp);

/* 0 if the request's Content-Type is application/json, else fills resp with
 * 415 and returns -EINVAL. */
int api_require_json(const struct api_request *req,
                     struct api_response *resp);

/* Parse the whole body as JSON (duplicates rejected). Returns a new
 * reference, or NULL with resp filled (400 field "body"). */
json_t *api_parse_body(const struct api_request *req,
                       struct api_response *resp);

/* ["l1","l2","l3"] for a CACHE_TIER_MASK set (new reference or NULL). */
json_t *api_tiers_json(unsigned mask);

/* The tiers a write would reach now: present and not degraded. */
struct cache;
unsigned api_tiers_available(struct cache *c);

/* Set resp's body from b (status, application/json). On a failed buffer
 * answers 503 (out of memory) or 500. b is consumed. */
void api_respond_jbuf(struct api_response *resp, unsigned status,
                      struct jbuf *b);

/* Append "tiers":[...] members etc. to a jbuf: ["l1","l2"] for mask. */
void api_put_tiers(struct jbuf *b, unsigned mask);

/* base64url (no padding) of a key for list cursors; out >= 96 bytes. */
void api_cursor_encode(const char *key, char *out, size_t len);
/* Decode a cursor back to a 64-hex key: 0, or -EINVAL. */
int api_cursor_decode(const char *cursor, char key[ENTRY_KEY_LEN + 1]);

/*
 * Seal plain-text credentials (either may be NULL) into e's tokens with
 * ctx->ring and set CACHE_F_CREDENTIALS in *fields. Without a ring the
 * credentials are dropped (one WARNING per ctx) and 0 is returned. The
 * caller wipes its plain text. 0, -ENOMEM or -EIO.
 */
struct entry;
int api_seal_credentials(struct api_ctx *ctx, const char *user,
                         size_t user_len, const char *pass, size_t pass_len,
                         struct entry *e, unsigned *fields);

/* A short reason for a cache errno (never NULL, static). */
const char *api_errno_reason(int err);

/* How far in the future a client's fetch_time may be (clock skew), for
 * POST and import alike. */
#define FUTURE_SKEW_MS INT64_C(300000)

#endif
