/* SPDX-License-Identifier: MIT */
/*
 * Request metrics and the Prometheus text exposition (format 0.0.4).
 *
 * Design: storage is fixed at metrics_new(): per route (plus "unmatched"),
 * a [method][status slot] matrix of counters and one latency histogram.
 * Status codes map to a slot through a 600-byte table built once: the codes
 * this service answers get an exact slot, anything else falls into its
 * class ("2xx".."5xx") or "other", so label cardinality is bounded no matter
 * what a handler returns. Histogram buckets are stored non-cumulative and
 * summed at render time; _count is the sum of the buckets read in the same
 * pass, so it always equals the +Inf bucket.
 *
 * Thread-safety: metrics_observe() only does relaxed atomic increments (no
 * lock on the request path); metrics_render() reads the counters with
 * relaxed loads, so a scrape may see a request in one family and not yet in
 * another, which Prometheus tolerates. The registry is immutable otherwise.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api/api_int.h"
#include "api/json_io.h"
#include "api/metrics.h"
#include "common/clock.h"
#include "common/procstat.h"
#include "storage/cache.h"

#define N_METHODS (API_OTHER + 1)

/* Exact codes; then "1xx".."5xx" and "other". */
static const unsigned exact_codes[] = {
    200, 201, 204, 206, 304, 400, 401, 403, 404, 405, 406, 408, 409,
    411, 413, 414, 415, 422, 429, 431, 500, 501, 503,
};
#define N_EXACT (sizeof exact_codes / sizeof exact_codes[0])
#define SLOT_CLASS(c) (N_EXACT + (c) - 1) /* c in 1..5 */
#define SLOT_OTHER (N_EXACT + 5)
#define N_SLOTS (N_EXACT + 6)

static const char *const class_names[] = {"1xx", "2xx", "3xx", "4xx", "5xx"};

/* Bucket upper bounds in ns and as printed (DESIGN.md). */
static const uint64_t bucket_ns[] = {
    100000,    250000,    500000,     1000000,    2500000,
    5000000,   10000000,  25000000,   50000000,   100000000,
    250000000, 500000000, 1000000000, 2500000000, 5000000000,
};
static const char *const bucket_le[] = {
    "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025",
    "0.05",   "0.1",     "0.25",   "0.5",   "1",      "2.5",   "5",
};
#define N_BUCKETS (sizeof bucket_ns / sizeof bucket_ns[0])

static const char *const method_names[N_METHODS] = {
    [API_GET] = "GET",         [API_POST] = "POST",   [API_PUT] = "PUT",
    [API_DELETE] = "DELETE",   [API_PATCH] = "PATCH", [API_HEAD] = "HEAD",
    [API_OPTIONS] = "OPTIONS", [API_OTHER] = "OTHER",
};

struct route_metrics {
    _Atomic uint64_t requests[N_METHODS][N_SLOTS];
    _Atomic uint64_t buckets[N_BUCKETS + 1]; /* last: above every bound */
    _Atomic uint64_t sum_ns;
};

struct metrics {
    size_t n_routes;                  /* excluding "unmatched" */
    const char *const *route_names;   /* borrowed */
    struct route_metrics *routes;     /* n_routes + 1 */
    unsigned char slot_of[600];       /* status -> slot */
};

/* Cap of a rendered exposition. */
#define RENDER_MAX (16u * 1024 * 1024)

int metrics_new(size_t n_routes, const char *const *route_names,
                struct metrics **out)
{
    struct metrics *m;
    unsigned s;
    size_t i;

    if (n_routes > 4096 || (n_routes && !route_names))
        return -EINVAL;
    m = calloc(1, sizeof *m);
    if (!m)
        return -ENOMEM;
    m->routes = calloc(n_routes + 1, sizeof *m->routes);
    if (!m->routes) {
        free(m);
        return -ENOMEM;
    }
    m->n_routes = n_routes;
    m->route_names = route_names;
    for (s = 0; s < sizeof m->slot_of; s++) {
        if (s >= 100)
            m->slot_of[s] = (unsigned char)SLOT_CLASS(s / 100);
        else
            m->slot_of[s] = (unsigned char)SLOT_OTHER;
    }
    for (i = 0; i < N_EXACT; i++)
        m->slot_of[exact_codes[i]] = (unsigned char)i;
    *out = m;
    return 0;
}

void metrics_free(struct metrics *m)
{
    if (!m)
        return;
    free(m->routes);
    free(m);
}

void metrics_observe(struct metrics *m, size_t route_idx,
                     enum api_method method, unsigned status,
                     uint64_t duration_ns)
{
    struct route_metrics *r;
    size_t slot, b;

    if (!m)
        return;
    if (route_idx > m->n_routes)
        route_idx = m->n_routes;
    if ((unsigned)method >= N_METHODS)
        method = API_OTHER;
    slot = status < sizeof m->slot_of ? m->slot_of[status] : SLOT_OTHER;
    r = &m->routes[route_idx];
    atomic_fetch_add_explicit(&r->requests[method][slot], 1,
                              memory_order_relaxed);
    for (b = 0; b < N_BUCKETS && duration_ns > bucket_ns[b]; b++)
        ;
    atomic_fetch_add_explicit(&r->buckets[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&r->sum_ns, duration_ns, memory_order_relaxed);
}

/* ---- rendering ---- */

static void put_fmt(struct jbuf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void put_fmt(struct jbuf *b, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    jbuf_put(b, tmp, (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1);
}

/* A label value, escaped per the text format (\\, \", \n). */
static void put_label(struct jbuf *b, const char *s)
{
    jbuf_putc(b, '"');
    for (; s && *s; s++) {
        if (*s == '\\')
            jbuf_put(b, "\\\\", 2);
        else if (*s == '"')
            jbuf_put(b, "\\\"", 2);
        else if (*s == '\n')
            jbuf_put(b, "\\n", 2);
        else
            jbuf_putc(b, *s);
    }
    jbuf_putc(b, '"');
}

static void family(struct jbuf *b, const char *name, const char *type,
                   const char *help)
{
    put_fmt(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* name{tier="lN"} value */
static void tier_sample(struct jbuf *b, const char *name, int t, uint64_t v)
{
    put_fmt(b, "%s{tier=\"%s\"} %" PRIu64 "\n", name,
            cache_tier_name((enum cache_tier)t), v);
}

static void render_cache(struct jbuf *b, const struct cache_stats *st)
{
    int t, r;

    family(b, "proxycache_cache_requests_total", "counter",
           "Cache lookups answered by each tier, by result.");
    for (t = 0; t < CACHE_NTIERS; t++) {
        if (!st->tier[t].present)
            continue;
        put_fmt(b,
                "proxycache_cache_requests_total{tier=\"%s\",result=\"hit\"} "
                "%" PRIu64 "\n"
                "proxycache_cache_requests_total{tier=\"%s\",result=\"miss\"} "
                "%" PRIu64 "\n",
                cache_tier_name((enum cache_tier)t), st->tier[t].hits,
                cache_tier_name((enum cache_tier)t), st->tier[t].misses);
    }
    family(b, "proxycache_cache_lookups_total", "counter",
           "Lookups of one entry by key.");
    put_fmt(b, "proxycache_cache_lookups_total %" PRIu64 "\n", st->lookups);

    family(b, "proxycache_evictions_total", "counter",
           "Entries evicted from each tier, by reason.");
    for (t = 0; t < CACHE_NTIERS; t++) {
        if (!st->tier[t].present)
            continue;
        for (r = 0; r < CACHE_NREASONS; r++)
            put_fmt(b,
                    "proxycache_evictions_total{tier=\"%s\",reason=\"%s\"} "
                    "%" PRIu64 "\n",
                    cache_tier_name((enum cache_tier)t),
                    cache_reason_name((enum cache_evict_reason)r),
                    st->tier[t].evictions[r]);
    }
    family(b, "proxycache_promotions_total", "counter",
           "Entries promoted into each tier.");
    for (t = 0; t < CACHE_NTIERS; t++)
        if (st->tier[t].present)
            tier_sample(b, "proxycache_promotions_total", t,
                        st->tier[t].promotions);
    family(b, "proxycache_demotions_total", "counter",
           "Entries demoted out of each tier.");
    for (t = 0; t < CACHE_NTIERS; t++)
        if (st->tier[t].present)
            tier_sample(b, "proxycache_demotions_total", t,
                        st->tier[t].demotions);
    family(b, "proxycache_entries", "gauge", "Entries stored in each tier.");
    for (t = 0; t < CACHE_NTIERS; t++)
        if (st->tier[t].present)
            tier_sample(b, "proxycache_entries", t, st->tier[t].size);
    family(b, "proxycache_tier_degraded", "gauge",
           "1 while the tier is degraded (skipped and probed), else 0.");
    for (t = 0; t < CACHE_NTIERS; t++)
        if (st->tier[t].present)
            tier_sample(b, "proxycache_tier_degraded", t,
                        st->tier[t].degraded ? 1 : 0);
    family(b, "proxycache_tier_failures_total", "counter",
           "Failed operations of each tier.");
    for (t = 0; t < CACHE_NTIERS; t++)
        if (st->tier[t].present)
            tier_sample(b, "proxycache_tier_failures_total", t,
                        st->tier[t].failures_total);
    family(b, "proxycache_writes_total", "counter", "Entries upserted.");
    put_fmt(b, "proxycache_writes_total %" PRIu64 "\n", st->writes);
    family(b, "proxycache_pending_l3_writes", "gauge",
           "Writes queued until L3 recovers.");
    put_fmt(b, "proxycache_pending_l3_writes %" PRIu64 "\n", st->pending_l3);
    family(b, "proxycache_warming", "gauge",
           "1 while start-up warming runs, else 0.");
    put_fmt(b, "proxycache_warming %d\n", st->warming ? 1 : 0);
}

static const char *route_name(const struct metrics *m, size_t i)
{
    if (i < m->n_routes && m->route_names[i])
        return m->route_names[i];
    return "unmatched";
}

static const char *slot_label(size_t slot, char *buf, size_t len)
{
    if (slot < N_EXACT) {
        snprintf(buf, len, "%u", exact_codes[slot]);
        return buf;
    }
    if (slot < SLOT_OTHER)
        return class_names[slot - N_EXACT];
    return "other";
}

static void render_requests(struct jbuf *b, const struct metrics *m)
{
    char code[16];
    size_t i, meth, s, k;

    family(b, "proxycache_http_requests_total", "counter",
           "HTTP requests by route template, method and status code.");
    for (i = 0; i <= m->n_routes; i++) {
        const struct route_metrics *r = &m->routes[i];
        for (meth = 0; meth < N_METHODS; meth++) {
            for (s = 0; s < N_SLOTS; s++) {
                uint64_t v = atomic_load_explicit(&r->requests[meth][s],
                                                  memory_order_relaxed);
                if (!v)
                    continue;
                jbuf_puts(b, "proxycache_http_requests_total{route=");
                put_label(b, route_name(m, i));
                put_fmt(b, ",method=\"%s\",code=\"%s\"} %" PRIu64 "\n",
                        method_names[meth],
                        slot_label(s, code, sizeof code), v);
            }
        }
    }

    family(b, "proxycache_http_request_duration_seconds", "histogram",
           "HTTP request latency by route template.");
    for (i = 0; i <= m->n_routes; i++) {
        const struct route_metrics *r = &m->routes[i];
        uint64_t cum = 0, sum;
        for (k = 0; k <= N_BUCKETS; k++) {
            cum += atomic_load_explicit(&r->buckets[k], memory_order_relaxed);
            jbuf_puts(b, "proxycache_http_request_duration_seconds_bucket"
                         "{route=");
            put_label(b, route_name(m, i));
            put_fmt(b, ",le=\"%s\"} %" PRIu64 "\n",
                    k < N_BUCKETS ? bucket_le[k] : "+Inf", cum);
        }
        sum = atomic_load_explicit(&r->sum_ns, memory_order_relaxed);
        jbuf_puts(b, "proxycache_http_request_duration_seconds_sum{route=");
        put_label(b, route_name(m, i));
        put_fmt(b, "} %" PRIu64 ".%09" PRIu64 "\n", sum / 1000000000u,
                sum % 1000000000u);
        jbuf_puts(b, "proxycache_http_request_duration_seconds_count{route=");
        put_label(b, route_name(m, i));
        put_fmt(b, "} %" PRIu64 "\n", cum);
    }
}

static void render_process(struct jbuf *b, struct api_ctx *ctx)
{
    struct procstat ps;
    int64_t up_ms;

    family(b, "proxycache_build_info", "gauge",
           "Build information; the value is always 1.");
    jbuf_puts(b, "proxycache_build_info{version=");
    put_label(b, ctx && ctx->version ? ctx->version : "unknown");
    jbuf_puts(b, "} 1\n");

    up_ms = ctx ? clock_now_ms() - ctx->start_time_ms : 0;
    if (up_ms < 0)
        up_ms = 0;
    family(b, "proxycache_uptime_seconds", "gauge",
           "Seconds since the service started.");
    put_fmt(b, "proxycache_uptime_seconds %" PRId64 ".%03" PRId64 "\n",
            up_ms / 1000, up_ms % 1000);

    if (procstat_read(&ps) != 0)
        return;
    family(b, "process_resident_memory_bytes", "gauge",
           "Resident memory size in bytes.");
    put_fmt(b, "process_resident_memory_bytes %" PRIu64 "\n",
            ps.resident_bytes);
    family(b, "process_virtual_memory_bytes", "gauge",
           "Virtual memory size in bytes.");
    put_fmt(b, "process_virtual_memory_bytes %" PRIu64 "\n", ps.virtual_bytes);
    family(b, "process_open_fds", "gauge", "Number of open file descriptors.");
    put_fmt(b, "process_open_fds %" PRIu64 "\n", ps.open_fds);
    family(b, "process_max_fds", "gauge",
           "Maximum number of open file descriptors.");
    put_fmt(b, "process_max_fds %" PRIu64 "\n", ps.max_fds);
    family(b, "process_cpu_seconds_total", "counter",
           "Total user and system CPU time spent in seconds.");
    put_fmt(b, "process_cpu_seconds_total %.3f\n", ps.cpu_seconds);
    family(b, "process_start_time_seconds", "gauge",
           "Start time of the process since the Unix epoch in seconds.");
    put_fmt(b, "process_start_time_seconds %.3f\n", ps.start_time_seconds);
}

int metrics_render(struct metrics *m, struct api_ctx *ctx, char **out,
                   size_t *len)
{
    struct cache_stats st;
    struct jbuf b;
    char *p;

    jbuf_init(&b, RENDER_MAX, false);
    if (ctx && ctx->cache) {
        cache_stats_snapshot(ctx->cache, &st);
        render_cache(&b, &st);
    }
    if (m)
        render_requests(&b, m);
    render_process(&b, ctx);
    p = jbuf_steal(&b, len);
    if (!p)
        return -ENOMEM;
    *out = p;
    return 0;
}
