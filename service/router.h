/* SPDX-License-Identifier: MIT */
/*
 * The route table: (method, path pattern) -> api handler.
 *
 * Design: one static table lists every route as a pattern ("/v1/proxies",
 * "/v1/proxies/{key}", ...) with the methods it accepts and, per method,
 * the handler (whole body) or stream handler (warm/import), plus what the
 * route demands of a request (authentication, content type). 404 and 405
 * (with the Allow list) fall out of the table; there is no if/else chain.
 * A literal segment wins over {key}; a {key} segment must be 64 lowercase
 * hex characters (entry_key_valid), otherwise the pattern does not match.
 * The pattern is also the route's name in metrics and logs, so a raw key
 * never appears there.
 *
 * Thread-safety: the table is const; router_match() only writes to the
 * caller's struct. No allocation.
 */
#ifndef SERVICE_ROUTER_H
#define SERVICE_ROUTER_H

#include <stdbool.h>
#include <stddef.h>

#include "api/api.h"
#include "storage/entry.h"

/* What a binding demands of a request. */
#define ROUTER_PUBLIC    0x1 /* no bearer token needed */
#define ROUTER_BODY_JSON 0x2 /* Content-Type must be application/json */
#define ROUTER_BODY_LIST 0x4 /* Content-Type: a proxy-list media type */

/* One method of a route. Exactly one of handler / stream_begin is set. */
struct router_binding {
    enum api_method method;
    api_handler_fn handler;
    api_stream_begin_fn stream_begin;
    unsigned flags;
};

enum router_status {
    ROUTER_OK = 0,          /* route and method found */
    ROUTER_NOT_FOUND = 1,   /* no pattern matches the path: 404 */
    ROUTER_NOT_ALLOWED = 2, /* the path matches, the method does not: 405 */
};

struct router_match {
    enum router_status status;
    /* Index of the matched route (0..router_count()-1) for OK and
     * NOT_ALLOWED; router_count() ("unmatched") for NOT_FOUND. */
    size_t route;
    /* OK only: borrowed from the static table. */
    const struct router_binding *binding;
    /* The {key} segment ("" if the route has none). */
    char key[ENTRY_KEY_LEN + 1];
    /* NOT_ALLOWED: the methods of the route, "GET, DELETE". */
    char allow[64];
    /* Flags common to every binding of the route (ROUTER_PUBLIC is a
     * property of the path, known even when the method is wrong). */
    bool path_public;
};

/* Map a request method ("GET") to the enum (API_OTHER if unknown). */
enum api_method router_method_parse(const char *method);
/* "GET" for API_GET; "OTHER" for API_OTHER. */
const char *router_method_name(enum api_method m);

/* Match method + path (no query string). Always fills *out. */
void router_match(enum api_method method, const char *path,
                  struct router_match *out);

/* Number of routes, and their names (the patterns) for metrics_new():
 * a static array of router_count() borrowed strings. */
size_t router_count(void);
const char *const *router_names(void);
/* The name of route i, or "unmatched" for i == router_count(). */
const char *router_name(size_t i);

/* 1 if the table is consistent (names in the order of the routes, every
 * binding has exactly one handler, no method bound twice); for asserts. */
int router_self_check(void);

#endif
