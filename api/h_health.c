/* SPDX-License-Identifier: MIT */
/*
 * Health reports: POST /v1/proxies/{key}/health (one) and
 * POST /v1/proxies/health (bulk).
 *
 * Design: a report maps to cache_report_health(), which increments or
 * resets failure_count and removes the entry from every tier at the
 * threshold. A bulk report is processed item by item; a bad item is an
 * item error, never a failed request. Items may name the entry by key or by
 * proxy URL (normalised to its key exactly as on insert).
 *
 * Thread-safety: state lives on the stack; the cache is thread-safe.
 */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/crypto.h>

#include "api/api.h"
#include "api/api_int.h"
#include "api/json_io.h"
#include "api/problem.h"
#include "common/clock.h"
#include "storage/cache.h"
#include "storage/entry.h"

#define STATUS_REASON "must be \"success\" or \"failure\""

/* "success" -> 1, "failure" -> 0, else -1. */
static int parse_status(json_t *v)
{
    const char *s;

    if (!json_is_string(v))
        return -1;
    s = json_string_value(v);
    if (strcmp(s, "success") == 0)
        return 1;
    if (strcmp(s, "failure") == 0)
        return 0;
    return -1;
}

/*
 * The entry's failure count before a report, without counting an access
 * (cache_list starting just below key). Used only to answer the count of
 * an entry the report evicts; -1 if absent.
 */
static int peek_cb(void *arg, struct entry *e)
{
    struct entry **out = arg;

    *out = entry_ref(e);
    return 1;
}

static int64_t peek_failure_count(struct cache *c, const char *key)
{
    char below[ENTRY_KEY_LEN + 1];
    struct tier_filter f;
    struct entry *e = NULL;
    int64_t n = -1;
    bool more = false;

    /* The greatest string below key among 64-hex keys: decrement the last
     * character, or drop it when it is '0'. */
    memcpy(below, key, ENTRY_KEY_LEN + 1);
    if (below[ENTRY_KEY_LEN - 1] == '0')
        below[ENTRY_KEY_LEN - 1] = '\0';
    else if (below[ENTRY_KEY_LEN - 1] == 'a')
        below[ENTRY_KEY_LEN - 1] = '9';
    else
        below[ENTRY_KEY_LEN - 1]--;
    tier_filter_init(&f, clock_now_ms());
    cache_list(c, &f, CACHE_ALL_TIERS, below, 1, peek_cb, &e, &more);
    if (e && strcmp(e->key, key) == 0)
        n = e->failure_count;
    entry_unref(e);
    return n;
}

/*
 * Report and, when the entry was evicted, its final failure count in
 * *count. 0, -ENOENT, or a cache error.
 */
static int report(struct cache *c, const char *key, bool success,
                  struct entry **out, bool *evicted, uint64_t *count)
{
    int64_t before = success ? -1 : peek_failure_count(c, key);
    int err;

    *out = NULL;
    *evicted = false;
    err = cache_report_health(c, key, success, out, evicted);
    if (err)
        return err;
    if (*evicted) {
        if (*out)
            *count = (*out)->failure_count;
        else
            *count = before >= 0 ? (uint64_t)before + 1 : 1;
    }
    return 0;
}

void h_proxy_health(struct api_ctx *ctx, const struct api_request *req,
                    struct api_response *resp)
{
    struct entry *e = NULL;
    bool evicted = false;
    uint64_t count = 0;
    const char *name;
    json_t *root, *v;
    struct jbuf b;
    int st, err;

    if (!req->key || !entry_key_valid(req->key)) {
        problem_respond(resp, 404, NULL, "no such resource");
        return;
    }
    if (api_require_json(req, resp))
        return;
    root = api_parse_body(req, resp);
    if (!root)
        return;
    if (!json_is_object(root)) {
        problem_respond(resp, 400, "body", "must be a JSON object");
        goto out;
    }
    json_object_foreach(root, name, v)
    {
        if (strcmp(name, "status") != 0) {
            problem_respond(resp, 400, name, "unknown member");
            goto out;
        }
    }
    v = json_object_get(root, "status");
    if (!v) {
        problem_respond(resp, 400, "status", "is required");
        goto out;
    }
    st = parse_status(v);
    if (st < 0) {
        problem_respond(resp, 400, "status", STATUS_REASON);
        goto out;
    }
    err = report(ctx->cache, req->key, st == 1, &e, &evicted, &count);
    if (err == -ENOENT) {
        problem_respond(resp, 404, NULL, "no entry with key %s", req->key);
        goto out;
    }
    if (err) {
        problem_respond_errno(resp, err, "the report was not recorded");
        goto out;
    }
    jbuf_init(&b, API_MAX_RESPONSE, false);
    if (evicted) {
        jbuf_put(&b, "{\"key\":\"", 8);
        jbuf_put(&b, req->key, ENTRY_KEY_LEN);
        jbuf_put(&b, "\",\"evicted\":true,\"failure_count\":", 33);
        jbuf_put_u64(&b, count);
        jbuf_putc(&b, '}');
    } else if (e) {
        json_io_entry_append(&b, ctx, e, JSON_IO_EVICTED_FALSE, NULL);
    } else {
        jbuf_fini(&b);
        problem_respond(resp, 500, NULL, "the report returned no entry");
        goto out;
    }
    api_respond_jbuf(resp, 200, &b);
out:
    entry_unref(e);
    json_decref(root);
}

/* ---- bulk ---- */

struct bulk_counts {
    uint64_t updated, evicted, not_found, failed;
};

static void put_item_error(struct jbuf *b, size_t index, const char *key,
                           const char *field, const char *reason)
{
    jbuf_put(b, "{\"index\":", 9);
    jbuf_put_u64(b, index);
    if (key) {
        jbuf_put(b, ",\"key\":\"", 8);
        jbuf_put(b, key, ENTRY_KEY_LEN);
        jbuf_putc(b, '"');
    }
    jbuf_put(b, ",\"outcome\":\"error\",\"error\":{", 28);
    /* field is always present; a storage failure names "storage". */
    if (!field || !*field)
        field = "storage";
    jbuf_put_field(b, field);
    jbuf_putc(b, ',');
    jbuf_put(b, "\"reason\":", 9);
    jbuf_put_jstr(b, reason, strlen(reason));
    jbuf_put(b, "}}", 2);
}

/* Resolve an item's key; 0, or fills field/reason and returns -EINVAL. */
static int item_key(json_t *item, char key[ENTRY_KEY_LEN + 1],
                    const char **field, const char **reason)
{
    json_t *jk = json_object_get(item, "key");
    json_t *ju = json_object_get(item, "proxy_url");
    char derived[ENTRY_KEY_LEN + 1];
    struct entry_url u;
    const char *why = NULL;
    int err = 0;

    key[0] = '\0';
    if (jk) {
        if (!json_is_string(jk) || !entry_key_valid(json_string_value(jk))) {
            *field = "key";
            *reason = "must be 64 lowercase hexadecimal characters";
            return -EINVAL;
        }
        memcpy(key, json_string_value(jk), ENTRY_KEY_LEN + 1);
    }
    if (ju) {
        if (!json_is_string(ju) || json_string_length(ju) >= ENTRY_URL_MAX) {
            *field = "proxy_url";
            *reason = "must be a string";
            return -EINVAL;
        }
        memset(&u, 0, sizeof u);
        if (entry_url_parse(json_string_value(ju), -1, &u, &why)) {
            *field = "proxy_url";
            *reason = why ? why : "invalid proxy URL";
            err = -EINVAL;
        } else {
            entry_key_from_normalised(u.normalised, derived);
            if (key[0] && strcmp(key, derived) != 0) {
                *field = "key";
                *reason = "does not match the key of proxy_url";
                err = -EINVAL;
            }
            memcpy(key, derived, ENTRY_KEY_LEN + 1);
        }
        if (u.username || u.password)
            OPENSSL_cleanse((char *)json_string_value(ju),
                            json_string_length(ju));
        entry_url_fini(&u);
        if (err)
            return err;
    }
    if (!key[0]) {
        *field = "key";
        *reason = "key or proxy_url is required";
        return -EINVAL;
    }
    return 0;
}

static void bulk_item(struct api_ctx *ctx, json_t *item, size_t index,
                      struct jbuf *b, struct bulk_counts *cnt)
{
    char key[ENTRY_KEY_LEN + 1];
    const char *field = NULL, *reason = NULL, *name;
    struct entry *e = NULL;
    bool evicted = false;
    uint64_t count = 0;
    json_t *v;
    int st, err;

    if (!json_is_object(item)) {
        put_item_error(b, index, NULL, "results", "must be a JSON object");
        cnt->failed++;
        return;
    }
    json_object_foreach(item, name, v)
    {
        if (strcmp(name, "key") && strcmp(name, "proxy_url") &&
            strcmp(name, "status")) {
            put_item_error(b, index, NULL, name, "unknown member");
            cnt->failed++;
            return;
        }
    }
    if (item_key(item, key, &field, &reason)) {
        put_item_error(b, index, NULL, field, reason);
        cnt->failed++;
        return;
    }
    v = json_object_get(item, "status");
    st = v ? parse_status(v) : -1;
    if (st < 0) {
        put_item_error(b, index, key, "status",
                       v ? STATUS_REASON : "is required");
        cnt->failed++;
        return;
    }
    err = report(ctx->cache, key, st == 1, &e, &evicted, &count);
    entry_unref(e);
    if (err && err != -ENOENT) {
        put_item_error(b, index, key, NULL, api_errno_reason(err));
        cnt->failed++;
        return;
    }
    jbuf_put(b, "{\"index\":", 9);
    jbuf_put_u64(b, index);
    jbuf_put(b, ",\"key\":\"", 8);
    jbuf_put(b, key, ENTRY_KEY_LEN);
    jbuf_put(b, "\",\"outcome\":\"", 13);
    if (err == -ENOENT) {
        jbuf_puts(b, "not_found");
        cnt->not_found++;
    } else if (evicted) {
        jbuf_puts(b, "evicted");
        cnt->evicted++;
    } else {
        jbuf_puts(b, "updated");
        cnt->updated++;
    }
    jbuf_put(b, "\"}", 2);
}

void h_proxies_health_bulk(struct api_ctx *ctx, const struct api_request *req,
                           struct api_response *resp)
{
    struct bulk_counts cnt = {0, 0, 0, 0};
    struct jbuf items, b;
    json_t *root, *arr, *v;
    const char *name;
    size_t i, n;

    if (api_require_json(req, resp))
        return;
    root = api_parse_body(req, resp);
    if (!root)
        return;
    arr = root;
    if (json_is_object(root)) {
        json_object_foreach(root, name, v)
        {
            if (strcmp(name, "results") != 0) {
                problem_respond(resp, 400, name, "unknown member");
                goto out;
            }
        }
        arr = json_object_get(root, "results");
        if (!arr) {
            problem_respond(resp, 400, "results", "is required");
            goto out;
        }
    }
    if (!json_is_array(arr)) {
        problem_respond(resp, 400, arr == root ? "body" : "results",
                        "must be an array of health results");
        goto out;
    }
    n = json_array_size(arr);
    if (n > API_MAX_BATCH) {
        problem_respond(resp, 413, "results",
                        "too many items: %zu (at most %d)", n, API_MAX_BATCH);
        goto out;
    }
    jbuf_init(&items, API_MAX_RESPONSE, false);
    for (i = 0; i < n; i++) {
        if (i)
            jbuf_putc(&items, ',');
        bulk_item(ctx, json_array_get(arr, i), i, &items, &cnt);
    }
    jbuf_init(&b, API_MAX_RESPONSE, false);
    jbuf_put(&b, "{\"updated\":", 11);
    jbuf_put_u64(&b, cnt.updated);
    jbuf_put(&b, ",\"evicted\":", 11);
    jbuf_put_u64(&b, cnt.evicted);
    jbuf_put(&b, ",\"not_found\":", 13);
    jbuf_put_u64(&b, cnt.not_found);
    jbuf_put(&b, ",\"failed\":", 10);
    jbuf_put_u64(&b, cnt.failed);
    jbuf_put(&b, ",\"results\":[", 12);
    if (jbuf_failed(&items))
        b.err = jbuf_failed(&items);
    else
        jbuf_put(&b, items.p ? items.p : "", items.len);
    jbuf_put(&b, "]}", 2);
    jbuf_fini(&items);
    api_respond_jbuf(resp, 200, &b);
out:
    json_decref(root);
}
