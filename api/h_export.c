/* SPDX-License-Identifier: MIT */
/*
 * GET /v1/export: every unexpired entry as JSONL (formats_entry_to_line,
 * credentials as their Fernet tokens), streamed.
 *
 * Design: the response is a reader. Its state holds a key cursor (the last
 * key sent) and a buffer of one page; when the buffer is drained, the next
 * page of EXPORT_PAGE entries with key > cursor is fetched with
 * cache_list(), which neither counts accesses nor promotes. Memory stays at
 * one page whatever the cache size, and entries written or removed during
 * the export are seen or not according to their key position (no entry is
 * sent twice). A storage error mid-stream can only abort the connection:
 * the status line is already sent.
 *
 * Thread-safety: the reader state belongs to one response; MHD calls the
 * reader from one thread at a time.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#define LOG_MODULE "export"
#include "api/api.h"
#include "api/api_int.h"
#include "api/problem.h"
#include "common/clock.h"
#include "common/log.h"
#include "storage/cache.h"
#include "storage/entry.h"
#include "storage/formats.h"

#define EXPORT_PAGE 512
/* A page of EXPORT_PAGE lines stays far below this. */
#define EXPORT_BUF_MAX (64u * 1024 * 1024)

struct export {
    struct api_ctx *ctx;
    unsigned tier_mask;
    char after[ENTRY_KEY_LEN + 1];
    char *buf;
    size_t len, off, cap;
    size_t page_n;
    bool done;
    int err;
};

static int page_cb(void *arg, struct entry *e)
{
    struct export *x = arg;
    char *line = NULL;
    size_t len = 0;
    int err;

    err = formats_entry_to_line(e, &line, &len);
    if (err) {
        x->err = err;
        return 1;
    }
    if (x->len + len > x->cap) {
        size_t ncap = x->cap ? x->cap : 64 * 1024;
        char *nb;
        while (ncap < x->len + len)
            ncap *= 2;
        if (ncap > EXPORT_BUF_MAX) {
            free(line);
            x->err = -E2BIG;
            return 1;
        }
        nb = realloc(x->buf, ncap);
        if (!nb) {
            free(line);
            x->err = -ENOMEM;
            return 1;
        }
        x->buf = nb;
        x->cap = ncap;
    }
    memcpy(x->buf + x->len, line, len);
    x->len += len;
    free(line);
    memcpy(x->after, e->key, ENTRY_KEY_LEN + 1);
    x->page_n++;
    return 0;
}

/* Fill the buffer with the next page: 0, or -errno. */
static int next_page(struct export *x)
{
    struct tier_filter f;
    bool more = false;
    int err;

    x->len = x->off = 0;
    x->page_n = 0;
    tier_filter_init(&f, clock_now_ms());
    err = cache_list(x->ctx->cache, &f, x->tier_mask, x->after, EXPORT_PAGE,
                     page_cb, x, &more);
    if (x->err)
        return x->err;
    if (err < 0)
        return err;
    /* An empty page ends the stream even if "more" says otherwise, so a
     * confused tier can never make the reader spin. */
    if (!more || x->page_n == 0)
        x->done = true;
    return 0;
}

static ssize_t export_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct export *x = cls;
    size_t n;
    int err;

    (void)pos;
    while (x->off >= x->len) {
        if (x->done)
            return API_READER_END;
        err = next_page(x);
        if (err) {
            log_error("export aborted after key %s: %s",
                      x->after[0] ? x->after : "(start)",
                      api_errno_reason(err));
            return API_READER_ERROR;
        }
    }
    n = x->len - x->off;
    if (n > max)
        n = max;
    memcpy(buf, x->buf + x->off, n);
    x->off += n;
    return (ssize_t)n;
}

static void export_free(void *cls)
{
    struct export *x = cls;

    if (!x)
        return;
    free(x->buf);
    free(x);
}

void h_export(struct api_ctx *ctx, const struct api_request *req,
              struct api_response *resp)
{
    const char *tier = api_query(req, "tier");
    unsigned mask = CACHE_ALL_TIERS;
    struct export *x;

    if (tier) {
        if (strcmp(tier, "l1") == 0)
            mask = CACHE_TIER_MASK(CACHE_L1);
        else if (strcmp(tier, "l2") == 0)
            mask = CACHE_TIER_MASK(CACHE_L2);
        else if (strcmp(tier, "l3") == 0)
            mask = CACHE_TIER_MASK(CACHE_L3);
        else {
            problem_respond(resp, 400, "tier", "must be one of l1, l2, l3");
            return;
        }
    }
    x = calloc(1, sizeof *x);
    if (!x) {
        problem_respond(resp, 503, NULL, "out of memory");
        return;
    }
    x->ctx = ctx;
    x->tier_mask = mask;
    resp->status = 200;
    resp->content_type = "application/x-ndjson";
    resp->reader = export_read;
    resp->reader_cls = x;
    resp->reader_free = export_free;
}
