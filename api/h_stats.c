/* SPDX-License-Identifier: MIT */
/*
 * Operational routes: /v1/stats, /metrics, /healthz, /readyz and
 * /openapi.yaml.
 *
 * Design: everything is read from one cache_stats_snapshot() (atomic
 * counter reads, no lock), so these routes are cheap enough to be scraped
 * often. These are cold paths, so the documents are built with jansson.
 *
 * Thread-safety: no state of its own.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "api/api.h"
#include "api/api_int.h"
#include "api/metrics.h"
#include "api/problem.h"
#include "common/clock.h"
#include "storage/cache.h"

static double hit_rate(uint64_t hits, uint64_t misses)
{
    uint64_t total = hits + misses;

    return total ? (double)hits / (double)total : 0.0;
}

/*
 * DESIGN.md shows each tier's capacity (0 = unlimited), which struct
 * cache_tier_stats does not carry yet. Until storage/cache.h adds a
 * "capacity" member and defines CACHE_STATS_HAS_CAPACITY, 0 is reported.
 */
static json_int_t tier_capacity(const struct cache_tier_stats *t)
{
    return (json_int_t)t->capacity;
}

static json_t *tier_json(const struct cache_tier_stats *t)
{
    json_t *ev = json_object(), *o = json_object();
    int r;

    if (!ev || !o) {
        json_decref(ev);
        json_decref(o);
        return NULL;
    }
    for (r = 0; r < CACHE_NREASONS; r++)
        json_object_set_new(ev, cache_reason_name((enum cache_evict_reason)r),
                            json_integer((json_int_t)t->evictions[r]));
    json_object_set_new(o, "hits", json_integer((json_int_t)t->hits));
    json_object_set_new(o, "misses", json_integer((json_int_t)t->misses));
    json_object_set_new(o, "hit_rate",
                        json_real(hit_rate(t->hits, t->misses)));
    json_object_set_new(o, "size", json_integer((json_int_t)t->size));
    json_object_set_new(o, "capacity", json_integer(tier_capacity(t)));
    json_object_set_new(o, "evictions", ev);
    json_object_set_new(o, "promotions",
                        json_integer((json_int_t)t->promotions));
    json_object_set_new(o, "demotions",
                        json_integer((json_int_t)t->demotions));
    json_object_set_new(o, "degraded", json_boolean(t->degraded));
    json_object_set_new(o, "consecutive_failures",
                        json_integer((json_int_t)t->consecutive_failures));
    json_object_set_new(o, "failures_total",
                        json_integer((json_int_t)t->failures_total));
    return o;
}

void h_stats(struct api_ctx *ctx, const struct api_request *req,
             struct api_response *resp)
{
    struct cache_stats st;
    json_t *root, *overall, *tiers;
    int64_t up;
    int t;

    (void)req;
    cache_stats_snapshot(ctx->cache, &st);
    up = (clock_now_ms() - ctx->start_time_ms) / 1000;
    root = json_object();
    overall = json_object();
    tiers = json_object();
    if (!root || !overall || !tiers) {
        json_decref(root);
        json_decref(overall);
        json_decref(tiers);
        problem_respond(resp, 503, NULL, "out of memory");
        return;
    }
    json_object_set_new(overall, "lookups", json_integer((json_int_t)st.lookups));
    json_object_set_new(overall, "hits", json_integer((json_int_t)st.hits));
    json_object_set_new(overall, "misses", json_integer((json_int_t)st.misses));
    json_object_set_new(overall, "hit_rate",
                        json_real(hit_rate(st.hits, st.misses)));
    json_object_set_new(overall, "writes", json_integer((json_int_t)st.writes));
    for (t = 0; t < CACHE_NTIERS; t++)
        json_object_set_new(tiers, cache_tier_name((enum cache_tier)t),
                            tier_json(&st.tier[t]));
    json_object_set_new(root, "version",
                        json_string(ctx->version ? ctx->version : "unknown"));
    json_object_set_new(root, "uptime_seconds",
                        json_integer(up > 0 ? up : 0));
    json_object_set_new(root, "warming", json_boolean(st.warming));
    json_object_set_new(root, "pending_l3",
                        json_integer((json_int_t)st.pending_l3));
    json_object_set_new(root, "overall", overall);
    json_object_set_new(root, "tiers", tiers);
    api_response_json(resp, 200, root);
}

void h_metrics(struct api_ctx *ctx, const struct api_request *req,
               struct api_response *resp)
{
    char *text = NULL;
    size_t len = 0;

    (void)req;
    if (metrics_render(ctx->metrics, ctx, &text, &len)) {
        problem_respond(resp, 503, NULL, "out of memory");
        return;
    }
    free(resp->body);
    resp->status = 200;
    resp->content_type = "text/plain; version=0.0.4; charset=utf-8";
    resp->body = text;
    resp->body_len = len;
}

void h_healthz(struct api_ctx *ctx, const struct api_request *req,
               struct api_response *resp)
{
    static const char body[] = "{\"status\":\"ok\"}";
    char *copy = strdup(body);

    (void)ctx;
    (void)req;
    /* Probed often (Docker HEALTHCHECK, orchestrators): a constant. */
    if (!copy) {
        problem_respond(resp, 503, NULL, "out of memory");
        return;
    }
    free(resp->body);
    resp->status = 200;
    resp->content_type = API_CT_JSON;
    resp->body = copy;
    resp->body_len = sizeof body - 1;
}

void h_readyz(struct api_ctx *ctx, const struct api_request *req,
              struct api_response *resp)
{
    struct cache_stats st;
    const char *status;
    unsigned code = 503;
    json_t *tiers;
    int t;

    (void)req;
    cache_stats_snapshot(ctx->cache, &st);
    if (st.warming || cache_is_warming(ctx->cache))
        status = "warming";
    else if (!atomic_load(&ctx->ready))
        status = "starting";
    else {
        status = "ready";
        code = 200;
    }
    tiers = json_object();
    for (t = 0; tiers && t < CACHE_NTIERS; t++) {
        const char *state;
        /* L1 never degrades; an absent lower tier is not "ok". */
        if (t != CACHE_L1 && (!st.tier[t].present || st.tier[t].degraded))
            state = "degraded";
        else
            state = "ok";
        json_object_set_new(tiers, cache_tier_name((enum cache_tier)t),
                            json_string(state));
    }
    api_response_json(resp, code,
                      json_pack("{s:s,s:o*}", "status", status, "tiers",
                                tiers));
    if (code == 503)
        api_response_header(resp, "Retry-After", "1");
}

void h_openapi(struct api_ctx *ctx, const struct api_request *req,
               struct api_response *resp)
{
    char *copy;

    (void)req;
    if (!ctx->openapi_yaml) {
        problem_respond(resp, 404, NULL,
                        "the OpenAPI document was not found at start-up");
        return;
    }
    copy = malloc(ctx->openapi_len + 1);
    if (!copy) {
        problem_respond(resp, 503, NULL, "out of memory");
        return;
    }
    memcpy(copy, ctx->openapi_yaml, ctx->openapi_len);
    copy[ctx->openapi_len] = '\0';
    free(resp->body);
    resp->status = 200;
    resp->content_type = "application/yaml";
    resp->body = copy;
    resp->body_len = ctx->openapi_len;
}
