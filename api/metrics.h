/* SPDX-License-Identifier: MIT */
/*
 * Request metrics and the Prometheus text exposition (format 0.0.4).
 *
 * The registry is sized once for the route table (route names are the
 * templates, e.g. "/v1/proxies/{key}", so cardinality is bounded), and every
 * counter is an _Atomic updated without a lock on the request path.
 */
#ifndef API_METRICS_H
#define API_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "api/api.h"

struct metrics;

/* route_names: n_routes borrowed static strings. The registry also has an
 * implicit extra route "unmatched" (index n_routes) for 404/405 and auth
 * failures. 0 and *out, or -ENOMEM. */
int metrics_new(size_t n_routes, const char *const *route_names,
                struct metrics **out);
void metrics_free(struct metrics *m);

/* Record one finished request. route_idx may be n_routes ("unmatched"). */
void metrics_observe(struct metrics *m, size_t route_idx,
                     enum api_method method, unsigned status,
                     uint64_t duration_ns);

/* Render the whole exposition (cache, tiers, requests, process) as a new
 * buffer the caller frees. 0 or -ENOMEM. */
int metrics_render(struct metrics *m, struct api_ctx *ctx, char **out,
                   size_t *len);

#endif
