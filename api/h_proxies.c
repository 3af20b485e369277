/* SPDX-License-Identifier: MIT */
/*
 * /v1/proxies and /v1/proxies/{key}: upsert (one or a batch), list, get,
 * delete one, clear.
 *
 * Design: a batch is validated item by item first (json_io), and the valid
 * items go to the cache in ONE cache_upsert() call, which puts them in L1
 * and commits them to L3 in one transaction (group commit). A single object
 * that fails validation is answered with a 400 problem before anything is
 * stored. Responses that carry entries are assembled in a jbuf (json_io.h)
 * rather than through a json_t tree: GET of one entry is the hottest route.
 *
 * Thread-safety: handlers keep all state on the stack; the cache is
 * thread-safe.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "api/api.h"
#include "api/api_int.h"
#include "api/json_io.h"
#include "api/problem.h"
#include "common/clock.h"
#include "storage/cache.h"
#include "storage/entry.h"

#define LIST_LIMIT_MAX 1000
#define LIST_LIMIT_DEFAULT 100

/* "error":{"field":...,"reason":...}; field is always present (a storage
 * failure of a valid item names "storage"). */
static void put_error(struct jbuf *b, const char *field, const char *reason)
{
    jbuf_put(b, "\"error\":{", 9);
    jbuf_put_field(b, field && *field ? field : "storage");
    jbuf_putc(b, ',');
    jbuf_put(b, "\"reason\":", 9);
    jbuf_put_jstr(b, reason, strlen(reason));
    jbuf_putc(b, '}');
}

static const char *outcome_name(enum cache_outcome o)
{
    return o == CACHE_CREATED ? "created" : "updated";
}

/* One slot per input element of a batch. */
struct slot {
    struct problem prob;  /* validation error, if item < 0 */
    long item;            /* index into the cache_item array, or -1 */
};

static void respond_batch(struct api_response *resp, const struct slot *slots,
                          size_t n, const struct cache_item *items,
                          unsigned mask)
{
    size_t created = 0, updated = 0, failed = 0, i;
    struct jbuf b;

    for (i = 0; i < n; i++) {
        const struct slot *s = &slots[i];
        if (s->item < 0 || items[s->item].err)
            failed++;
        else if (items[s->item].outcome == CACHE_CREATED)
            created++;
        else
            updated++;
    }
    jbuf_init(&b, API_MAX_RESPONSE, false);
    jbuf_put(&b, "{\"created\":", 11);
    jbuf_put_u64(&b, created);
    jbuf_put(&b, ",\"updated\":", 11);
    jbuf_put_u64(&b, updated);
    jbuf_put(&b, ",\"failed\":", 10);
    jbuf_put_u64(&b, failed);
    jbuf_put(&b, ",\"tiers\":", 9);
    api_put_tiers(&b, mask);
    jbuf_put(&b, ",\"items\":[", 10);
    for (i = 0; i < n; i++) {
        const struct slot *s = &slots[i];
        if (i)
            jbuf_putc(&b, ',');
        jbuf_put(&b, "{\"index\":", 9);
        jbuf_put_u64(&b, i);
        if (s->item < 0) {
            jbuf_put(&b, ",\"outcome\":\"error\",", 19);
            put_error(&b, s->prob.field, s->prob.reason);
        } else {
            const struct cache_item *it = &items[s->item];
            if (it->err) {
                /* An error item carries no key (UpsertItem schema). */
                jbuf_put(&b, ",\"outcome\":\"error\",", 19);
                put_error(&b, "storage", api_errno_reason(it->err));
            } else {
                jbuf_put(&b, ",\"key\":\"", 8);
                jbuf_put(&b, it->entry->key, ENTRY_KEY_LEN);
                jbuf_put(&b, "\",\"outcome\":\"", 13);
                jbuf_puts(&b, outcome_name(it->outcome));
                jbuf_putc(&b, '"');
            }
        }
        jbuf_putc(&b, '}');
    }
    jbuf_put(&b, "]}", 2);
    api_respond_jbuf(resp, created ? 201 : 200, &b);
}

static void post_batch(struct api_ctx *ctx, json_t *arr,
                       struct api_response *resp)
{
    size_t n = json_array_size(arr), k = 0, i;
    struct cache_item *items = NULL;
    struct slot *slots = NULL;
    unsigned mask = 0;
    int err;

    if (n > API_MAX_BATCH) {
        problem_respond(resp, 413, "proxies",
                        "too many items: %zu (at most %d)", n, API_MAX_BATCH);
        return;
    }
    slots = calloc(n ? n : 1, sizeof *slots);
    items = calloc(n ? n : 1, sizeof *items);
    if (!slots || !items) {
        problem_respond(resp, 503, NULL, "out of memory");
        goto out;
    }
    for (i = 0; i < n; i++) {
        struct entry *e = NULL;
        unsigned fields = 0;
        json_t *el = json_array_get(arr, i);

        slots[i].item = -1;
        if (!json_is_object(el)) {
            slots[i].prob.field = "proxies";
            snprintf(slots[i].prob.reason, sizeof slots[i].prob.reason,
                     "item %zu must be a JSON object", i);
            continue;
        }
        err = json_io_entry_from_json(ctx, el, &e, &fields, &slots[i].prob);
        if (err == -ENOMEM) {
            problem_respond(resp, 503, NULL, "out of memory");
            goto out;
        }
        if (err)
            continue;
        items[k].entry = e;
        items[k].fields = fields;
        slots[i].item = (long)k;
        k++;
    }
    if (k > 0) {
        err = cache_upsert(ctx->cache, items, k, 0, &mask);
        if (err) {
            problem_respond_errno(resp, err, "the batch was not stored");
            goto out;
        }
    } else {
        mask = api_tiers_available(ctx->cache);
    }
    respond_batch(resp, slots, n, items, mask);
out:
    if (items) {
        for (i = 0; i < k; i++)
            entry_unref(items[i].entry);
    }
    free(items);
    free(slots);
}

static void post_single(struct api_ctx *ctx, json_t *obj,
                        struct api_response *resp)
{
    struct cache_item item;
    struct problem prob;
    struct entry *e = NULL;
    unsigned fields = 0, mask = 0;
    const char *outcome;
    struct jbuf b;
    int err;

    memset(&item, 0, sizeof item);
    err = json_io_entry_from_json(ctx, obj, &e, &fields, &prob);
    if (err) {
        problem_respond_p(resp, &prob);
        return;
    }
    item.entry = e;
    item.fields = fields;
    err = cache_upsert(ctx->cache, &item, 1, 0, &mask);
    if (!err)
        err = item.err;
    if (err) {
        problem_respond_errno(resp, err, "the entry was not stored");
        goto out;
    }
    outcome = outcome_name(item.outcome);
    jbuf_init(&b, API_MAX_RESPONSE, false);
    jbuf_put(&b, "{\"key\":\"", 8);
    jbuf_put(&b, e->key, ENTRY_KEY_LEN);
    jbuf_put(&b, "\",\"outcome\":\"", 13);
    jbuf_puts(&b, outcome);
    jbuf_put(&b, "\",\"created\":", 12);
    jbuf_putc(&b, item.outcome == CACHE_CREATED ? '1' : '0');
    jbuf_put(&b, ",\"updated\":", 11);
    jbuf_putc(&b, item.outcome == CACHE_CREATED ? '0' : '1');
    jbuf_put(&b, ",\"failed\":0,\"tiers\":", 20);
    api_put_tiers(&b, mask);
    jbuf_put(&b, ",\"items\":[{\"index\":0,\"key\":\"", 28);
    jbuf_put(&b, e->key, ENTRY_KEY_LEN);
    jbuf_put(&b, "\",\"outcome\":\"", 13);
    jbuf_puts(&b, outcome);
    jbuf_put(&b, "\"}]}", 4);
    api_respond_jbuf(resp, item.outcome == CACHE_CREATED ? 201 : 200, &b);
out:
    entry_unref(e);
}

void h_proxies_post(struct api_ctx *ctx, const struct api_request *req,
                    struct api_response *resp)
{
    json_t *root, *arr;

    if (api_require_json(req, resp))
        return;
    root = api_parse_body(req, resp);
    if (!root)
        return;
    if (json_is_object(root) && json_object_get(root, "proxies")) {
        const char *name;
        json_t *v;
        arr = json_object_get(root, "proxies");
        json_object_foreach(root, name, v)
        {
            if (strcmp(name, "proxies") != 0) {
                problem_respond(resp, 400, name, "unknown member");
                goto out;
            }
        }
        if (!json_is_array(arr)) {
            problem_respond(resp, 400, "proxies", "must be an array");
            goto out;
        }
        post_batch(ctx, arr, resp);
    } else {
        post_single(ctx, root, resp);
    }
out:
    json_decref(root);
}

/* ---- GET /v1/proxies ---- */

struct list_state {
    struct api_ctx *ctx;
    struct jbuf *b;
    size_t n;
    char last[ENTRY_KEY_LEN + 1];
    int err;
};

static int list_cb(void *arg, struct entry *e)
{
    struct list_state *st = arg;

    if (st->n)
        jbuf_putc(st->b, ',');
    st->err = json_io_entry_append(st->b, st->ctx, e, 0, NULL);
    if (st->err)
        return 1;
    memcpy(st->last, e->key, ENTRY_KEY_LEN + 1);
    st->n++;
    return 0;
}

void h_proxies_list(struct api_ctx *ctx, const struct api_request *req,
                    struct api_response *resp)
{
    char after[ENTRY_KEY_LEN + 1] = "";
    char cursor[128];
    struct list_state st;
    struct tier_filter f;
    const char *health, *source, *cur;
    enum entry_health h;
    int64_t limit;
    bool more = false;
    struct jbuf b;
    int err;

    tier_filter_init(&f, clock_now_ms());
    health = api_query(req, "health");
    if (health) {
        if (entry_health_parse(health, &h)) {
            problem_respond(resp, 400, "health",
                            "must be one of healthy, unhealthy, unknown");
            return;
        }
        f.health = (int)h;
    }
    source = api_query(req, "source");
    if (source) {
        if (!entry_source_valid(source)) {
            problem_respond(resp, 400, "source",
                            "must be 1 to %d printable ASCII characters",
                            ENTRY_SOURCE_MAX);
            return;
        }
        f.source = source;
    }
    if (api_query_int(req, "limit", 1, LIST_LIMIT_MAX, LIST_LIMIT_DEFAULT,
                      &limit, resp))
        return;
    cur = api_query(req, "cursor");
    if (cur && *cur && api_cursor_decode(cur, after)) {
        problem_respond(resp, 400, "cursor",
                        "is not a cursor returned by this service");
        return;
    }

    jbuf_init(&b, API_MAX_RESPONSE, false);
    memset(&st, 0, sizeof st);
    st.ctx = ctx;
    st.b = &b;
    jbuf_put(&b, "{\"items\":[", 10);
    err = cache_list(ctx->cache, &f, CACHE_ALL_TIERS, after, (size_t)limit,
                     list_cb, &st, &more);
    if (st.err) {
        jbuf_fini(&b);
        problem_respond(resp, st.err == -E2BIG ? 500 : 503, NULL,
                        "the list could not be encoded");
        return;
    }
    if (err < 0) {
        jbuf_fini(&b);
        problem_respond_errno(resp, err, "listing failed");
        return;
    }
    jbuf_put(&b, "],\"count\":", 10);
    jbuf_put_u64(&b, st.n);
    jbuf_put(&b, ",\"next_cursor\":", 15);
    if (more && st.n) {
        api_cursor_encode(st.last, cursor, sizeof cursor);
        jbuf_putc(&b, '"');
        jbuf_puts(&b, cursor);
        jbuf_putc(&b, '"');
    } else {
        jbuf_put(&b, "null", 4);
    }
    jbuf_putc(&b, '}');
    api_respond_jbuf(resp, 200, &b);
}

void h_proxies_clear(struct api_ctx *ctx, const struct api_request *req,
                     struct api_response *resp)
{
    size_t removed = 0;
    json_t *o;
    int err;

    (void)req;
    err = cache_clear(ctx->cache, &removed);
    if (err) {
        problem_respond_errno(resp, err, "clearing the cache failed");
        return;
    }
    o = json_pack("{s:I}", "removed", (json_int_t)removed);
    api_response_json(resp, 200, o);
}

/* ---- /v1/proxies/{key} ---- */

static int key_or_404(const struct api_request *req,
                      struct api_response *resp)
{
    if (req->key && entry_key_valid(req->key))
        return 0;
    problem_respond(resp, 404, NULL, "no such resource");
    return -ENOENT;
}

void h_proxy_get(struct api_ctx *ctx, const struct api_request *req,
                 struct api_response *resp)
{
    enum cache_tier served = CACHE_L1;
    struct entry *e = NULL;
    const char *tier;
    bool reveal = false;
    struct jbuf b;
    int err;

    if (key_or_404(req, resp))
        return;
    if (api_query_bool(req, "reveal", false, &reveal, resp))
        return;
    if (reveal && !ctx->token_configured) {
        problem_respond(resp, 403, NULL,
                        "reveal=true needs an API token to be configured "
                        "(PROXYCACHE_API_TOKEN)");
        return;
    }
    if (reveal && !req->authenticated) {
        problem_respond(resp, 401, NULL, "reveal=true needs a valid token");
        api_response_header(resp, "WWW-Authenticate", "Bearer");
        return;
    }
    err = cache_get(ctx->cache, req->key, &e, &served);
    if (err == -ENOENT) {
        problem_respond(resp, 404, NULL, "no entry with key %s", req->key);
        return;
    }
    if (err) {
        problem_respond_errno(resp, err, "lookup failed");
        return;
    }
    tier = cache_tier_name(served);
    /* A revealed body holds plain text: wipe every intermediate copy. */
    jbuf_init(&b, API_MAX_RESPONSE, reveal);
    err = json_io_entry_append(&b, ctx, e, reveal ? JSON_IO_REVEAL : 0, tier);
    entry_unref(e);
    if (err == -EBADMSG) {
        jbuf_fini(&b);
        problem_respond(resp, 500, NULL,
                        "the credentials of this entry cannot be decrypted "
                        "with the configured keys");
        return;
    }
    api_respond_jbuf(resp, 200, &b);
    if (resp->status == 200) {
        api_response_header(resp, "X-Cache-Tier", "%s", tier);
        if (reveal)
            api_response_header(resp, "Cache-Control", "no-store");
    }
    resp->sensitive = reveal;
}

void h_proxy_delete(struct api_ctx *ctx, const struct api_request *req,
                    struct api_response *resp)
{
    int err;

    if (key_or_404(req, resp))
        return;
    err = cache_delete(ctx->cache, req->key);
    if (err == -ENOENT) {
        problem_respond(resp, 404, NULL, "no entry with key %s", req->key);
        return;
    }
    if (err) {
        problem_respond_errno(resp, err, "delete failed");
        return;
    }
    free(resp->body);
    resp->body = NULL;
    resp->body_len = 0;
    resp->content_type = NULL;
    resp->status = 204;
}
