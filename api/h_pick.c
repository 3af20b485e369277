/* SPDX-License-Identifier: MIT */
/*
 * GET /v1/pick: up to count usable proxies chosen at random, weighted
 * toward low failure_count and low latency (the weighting is the cache's).
 *
 * Semantics (SPEC §5): never an unhealthy or expired entry; [] when the
 * filters match nothing; 503 + Retry-After only while the cache is warming
 * or holds nothing usable at all. The second, unfiltered pick that tells
 * those two cases apart runs only when a filtered pick found nothing.
 *
 * Thread-safety: stack state only; the cache is thread-safe.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "api/api_int.h"
#include "api/json_io.h"
#include "api/problem.h"
#include "common/clock.h"
#include "storage/cache.h"
#include "storage/entry.h"

#define PICK_MAX 100
#define RETRY_AFTER_S 5
/* Bound of max_latency_ms (one day in ms; any larger value means "any"). */
#define LATENCY_FILTER_MAX INT64_C(86400000)

static void respond_unavailable(struct api_response *resp, const char *why)
{
    problem_respond(resp, 503, NULL, "%s", why);
    api_response_header(resp, "Retry-After", "%d", RETRY_AFTER_S);
}

/* Parse the filters into f; 1 if any was given. -EINVAL: resp filled. */
static int parse_filters(const struct api_request *req, struct tier_filter *f,
                         char country[3], struct api_response *resp)
{
    const char *s;
    int any = 0;
    int64_t lat;

    s = api_query(req, "protocol");
    if (s) {
        enum entry_scheme sc;
        if (entry_scheme_parse(s, &sc)) {
            problem_respond(resp, 400, "protocol",
                            "must be one of http, https, socks4, socks5");
            return -EINVAL;
        }
        f->scheme = (int)sc;
        any = 1;
    }
    s = api_query(req, "source");
    if (s) {
        if (!entry_source_valid(s)) {
            problem_respond(resp, 400, "source",
                            "must be 1 to %d printable ASCII characters",
                            ENTRY_SOURCE_MAX);
            return -EINVAL;
        }
        f->source = s;
        any = 1;
    }
    s = api_query(req, "country");
    if (s) {
        if (!entry_country_parse(s, country)) {
            problem_respond(resp, 400, "country",
                            "must be an ISO 3166-1 alpha-2 code (2 letters)");
            return -EINVAL;
        }
        f->country = country;
        any = 1;
    }
    s = api_query(req, "anonymity");
    if (s) {
        enum entry_anonymity a;
        if (entry_anonymity_parse(s, &a) || a == ENTRY_ANON_NONE) {
            problem_respond(resp, 400, "anonymity",
                            "must be one of transparent, anonymous, elite");
            return -EINVAL;
        }
        f->anonymity = (int)a;
        any = 1;
    }
    if (api_query(req, "max_latency_ms")) {
        if (api_query_int(req, "max_latency_ms", 0, LATENCY_FILTER_MAX, -1,
                          &lat, resp))
            return -EINVAL;
        f->max_latency_ms = lat;
        any = 1;
    }
    return any;
}

void h_pick(struct api_ctx *ctx, const struct api_request *req,
            struct api_response *resp)
{
    struct entry *found[PICK_MAX];
    struct entry *probe = NULL;
    struct tier_filter f, all;
    char country[3] = "";
    size_t n = 0, i, np = 0;
    int64_t count;
    struct jbuf b;
    int filtered, err;

    if (api_query_int(req, "count", 1, PICK_MAX, 1, &count, resp))
        return;
    tier_filter_init(&f, clock_now_ms());
    f.exclude_unhealthy = 1;
    filtered = parse_filters(req, &f, country, resp);
    if (filtered < 0)
        return;
    if (cache_is_warming(ctx->cache)) {
        respond_unavailable(resp, "the cache is warming up");
        return;
    }
    err = cache_pick(ctx->cache, &f, (size_t)count, 0, found, &n);
    if (err) {
        problem_respond_errno(resp, err, "pick failed");
        return;
    }
    if (n == 0) {
        if (!filtered) {
            respond_unavailable(resp, "no usable proxy in the cache");
            return;
        }
        /* Filters matched nothing: [] if anything usable exists at all. */
        tier_filter_init(&all, f.now_ms);
        all.exclude_unhealthy = 1;
        err = cache_pick(ctx->cache, &all, 1, 0, &probe, &np);
        if (err) {
            problem_respond_errno(resp, err, "pick failed");
            return;
        }
        if (np)
            entry_unref(probe);
        else {
            respond_unavailable(resp, "no usable proxy in the cache");
            return;
        }
    }
    jbuf_init(&b, API_MAX_RESPONSE, false);
    jbuf_put(&b, "{\"proxies\":[", 12);
    for (i = 0; i < n; i++) {
        if (i)
            jbuf_putc(&b, ',');
        json_io_entry_append(&b, ctx, found[i], 0, NULL);
        entry_unref(found[i]);
    }
    jbuf_put(&b, "],\"count\":", 10);
    jbuf_put_u64(&b, n);
    jbuf_putc(&b, '}');
    api_respond_jbuf(resp, 200, &b);
}
