/* SPDX-License-Identifier: MIT */
/*
 * The static route table and its matcher.
 *
 * Design: routes[] is the single place that says which paths exist, which
 * methods each accepts, which handler serves them and what they demand of
 * a request. Matching splits the path into at most ROUTE_MAX_SEGS segments
 * and compares them with every pattern; among the patterns that match, the
 * one with the most literal segments wins ("/v1/proxies/health" beats
 * "/v1/proxies/{key}"), so the table's order carries no meaning. The table
 * is small (13 routes), so a linear scan costs less than hashing would.
 *
 * Thread-safety: everything here is const or on the caller's stack.
 */
#include <config.h> /* autoconf's (see service/config.h on the name) */

#include <stdio.h>
#include <string.h>

#include "service/router.h"
#include "storage/entry.h"

#define ROUTE_MAX_SEGS     4
#define ROUTE_MAX_BINDINGS 3
#define SEG_KEY            "{key}"

struct route {
    const char *pattern; /* also the route's name in metrics and logs */
    struct router_binding bindings[ROUTE_MAX_BINDINGS];
};

/* The patterns, spelled once: used by the table and the names array. */
#define P_PROXIES      "/v1/proxies"
#define P_PROXY        "/v1/proxies/{key}"
#define P_PROXY_HEALTH "/v1/proxies/{key}/health"
#define P_HEALTH_BULK  "/v1/proxies/health"
#define P_PICK         "/v1/pick"
#define P_WARM         "/v1/warm"
#define P_EXPORT       "/v1/export"
#define P_IMPORT       "/v1/import"
#define P_STATS        "/v1/stats"
#define P_METRICS      "/metrics"
#define P_HEALTHZ      "/healthz"
#define P_READYZ       "/readyz"
#define P_OPENAPI      "/openapi.yaml"

/* The API of SPEC §5. A binding list ends at the first empty binding. */
static const struct route routes[] = {
    {P_PROXIES,
     {{API_POST, h_proxies_post, NULL, ROUTER_BODY_JSON},
      {API_GET, h_proxies_list, NULL, 0},
      {API_DELETE, h_proxies_clear, NULL, 0}}},
    {P_PROXY,
     {{API_GET, h_proxy_get, NULL, 0}, {API_DELETE, h_proxy_delete, NULL, 0}}},
    {P_PROXY_HEALTH, {{API_POST, h_proxy_health, NULL, ROUTER_BODY_JSON}}},
    {P_HEALTH_BULK,
     {{API_POST, h_proxies_health_bulk, NULL, ROUTER_BODY_JSON}}},
    {P_PICK, {{API_GET, h_pick, NULL, 0}}},
    {P_WARM, {{API_POST, NULL, h_warm_begin, ROUTER_BODY_LIST}}},
    {P_EXPORT, {{API_GET, h_export, NULL, 0}}},
    {P_IMPORT, {{API_POST, NULL, h_import_begin, ROUTER_BODY_LIST}}},
    {P_STATS, {{API_GET, h_stats, NULL, 0}}},
    {P_METRICS, {{API_GET, h_metrics, NULL, ROUTER_PUBLIC}}},
    {P_HEALTHZ, {{API_GET, h_healthz, NULL, ROUTER_PUBLIC}}},
    {P_READYZ, {{API_GET, h_readyz, NULL, ROUTER_PUBLIC}}},
    {P_OPENAPI, {{API_GET, h_openapi, NULL, 0}}},
};

#define N_ROUTES (sizeof routes / sizeof routes[0])

/* Same order as routes[] (metrics_new() wants a plain array of names). */
static const char *const route_names[] = {
    P_PROXIES, P_PROXY,  P_PROXY_HEALTH, P_HEALTH_BULK, P_PICK,
    P_WARM,    P_EXPORT, P_IMPORT,       P_STATS,       P_METRICS,
    P_HEALTHZ, P_READYZ, P_OPENAPI,
};

_Static_assert(sizeof route_names / sizeof route_names[0] == N_ROUTES,
               "route_names must list every route");

static const char *const method_names[] = {
    [API_GET] = "GET",         [API_POST] = "POST",   [API_PUT] = "PUT",
    [API_DELETE] = "DELETE",   [API_PATCH] = "PATCH", [API_HEAD] = "HEAD",
    [API_OPTIONS] = "OPTIONS", [API_OTHER] = "OTHER",
};

struct seg {
    const char *p;
    size_t len;
};

enum api_method router_method_parse(const char *method)
{
    for (size_t i = 0; method && i < API_OTHER; i++) {
        if (strcmp(method, method_names[i]) == 0)
            return (enum api_method)i;
    }
    return API_OTHER;
}

const char *router_method_name(enum api_method m)
{
    if ((unsigned)m > API_OTHER)
        return "OTHER";
    return method_names[m];
}

/* Split "/a/b/c" into segments. Returns the count, or -1 when the path is
 * not absolute, has an empty segment ("//", a trailing '/') or too many. */
static int split(const char *path, struct seg *segs, int max)
{
    int n = 0;
    const char *p = path;

    if (!p || p[0] != '/')
        return -1;
    while (*p == '/') {
        const char *start = ++p;
        while (*p != '\0' && *p != '/')
            p++;
        if (p == start || n == max)
            return -1;
        segs[n].p = start;
        segs[n].len = (size_t)(p - start);
        n++;
    }
    return n;
}

static int seg_is(const struct seg *s, const char *lit)
{
    size_t len = strlen(lit);
    return s->len == len && memcmp(s->p, lit, len) == 0;
}

/* Does route r match the path segments? Returns the number of literal
 * segments (>= 0) and copies the key, or -1. */
static int match_route(const struct route *r, const struct seg *segs, int n,
                       char key[ENTRY_KEY_LEN + 1])
{
    struct seg pat[ROUTE_MAX_SEGS];
    int np = split(r->pattern, pat, ROUTE_MAX_SEGS);
    int literals = 0;

    if (np != n)
        return -1;
    for (int i = 0; i < n; i++) {
        if (seg_is(&pat[i], SEG_KEY)) {
            char tmp[ENTRY_KEY_LEN + 1];
            if (segs[i].len != ENTRY_KEY_LEN)
                return -1;
            memcpy(tmp, segs[i].p, ENTRY_KEY_LEN);
            tmp[ENTRY_KEY_LEN] = '\0';
            if (!entry_key_valid(tmp))
                return -1;
            memcpy(key, tmp, sizeof tmp);
            continue;
        }
        if (pat[i].len != segs[i].len ||
            memcmp(pat[i].p, segs[i].p, segs[i].len) != 0)
            return -1;
        literals++;
    }
    return literals;
}

static void allow_list(const struct route *r, char *buf, size_t len)
{
    size_t pos = 0;

    buf[0] = '\0';
    for (size_t i = 0; i < ROUTE_MAX_BINDINGS; i++) {
        const struct router_binding *b = &r->bindings[i];
        int w;
        if (!b->handler && !b->stream_begin)
            break;
        w = snprintf(buf + pos, len - pos, "%s%s", pos ? ", " : "",
                     router_method_name(b->method));
        if (w < 0 || (size_t)w >= len - pos)
            break;
        pos += (size_t)w;
    }
}

void router_match(enum api_method method, const char *path,
                  struct router_match *out)
{
    struct seg segs[ROUTE_MAX_SEGS];
    char key[ENTRY_KEY_LEN + 1];
    int n = split(path, segs, ROUTE_MAX_SEGS);
    int best_literals = -1;
    const struct route *best = NULL;

    memset(out, 0, sizeof *out);
    out->status = ROUTER_NOT_FOUND;
    out->route = N_ROUTES;
    if (n < 0)
        return;
    for (size_t i = 0; i < N_ROUTES; i++) {
        int lit;
        key[0] = '\0';
        lit = match_route(&routes[i], segs, n, key);
        if (lit > best_literals) {
            best_literals = lit;
            best = &routes[i];
            out->route = i;
            memcpy(out->key, key, sizeof key);
        }
    }
    if (!best) {
        out->key[0] = '\0';
        return;
    }
    out->path_public = true;
    for (size_t i = 0; i < ROUTE_MAX_BINDINGS; i++) {
        const struct router_binding *b = &best->bindings[i];
        if (!b->handler && !b->stream_begin)
            break;
        if (!(b->flags & ROUTER_PUBLIC))
            out->path_public = false;
        if (b->method == method && !out->binding)
            out->binding = b;
    }
    if (out->binding) {
        out->status = ROUTER_OK;
        return;
    }
    out->status = ROUTER_NOT_ALLOWED;
    allow_list(best, out->allow, sizeof out->allow);
}

size_t router_count(void)
{
    return N_ROUTES;
}

const char *const *router_names(void)
{
    return route_names;
}

const char *router_name(size_t i)
{
    return i < N_ROUTES ? route_names[i] : "unmatched";
}

int router_self_check(void)
{
    for (size_t i = 0; i < N_ROUTES; i++) {
        unsigned seen = 0;
        if (strcmp(routes[i].pattern, route_names[i]) != 0)
            return 0;
        for (size_t k = 0; k < ROUTE_MAX_BINDINGS; k++) {
            const struct router_binding *b = &routes[i].bindings[k];
            if (!b->handler && !b->stream_begin)
                break;
            if ((b->handler && b->stream_begin) || (seen & (1u << b->method)))
                return 0;
            seen |= 1u << b->method;
        }
        if (seen == 0)
            return 0;
    }
    return 1;
}
