/* SPDX-License-Identifier: MIT */
/*
 * The REST resources, independent of the HTTP library.
 *
 * service/http.c turns each libmicrohttpd request into a struct api_request,
 * calls the handler that service/router.c found for it, and turns the filled
 * struct api_response into an MHD response. api/ never includes
 * microhttpd.h, never touches files or SQL: it maps JSON to cache calls.
 *
 * Two kinds of handler:
 *  - api_handler_fn: called once with the whole body (capped by
 *    --max-body-bytes before any allocation; the service answers 413).
 *  - api_stream_begin_fn: for warm and import, whose bodies are streamed.
 *    begin() is called once the headers are known; it either fills resp
 *    with an error (return 1) or sets up *st (return 0). The service then
 *    calls st->feed() for every chunk as it arrives and st->finish() at the
 *    end, which fills resp. st->free() is always called last.
 * A response may also be streamed (export): set resp->reader.
 *
 * Thread-safety: handlers run on MHD worker threads, concurrently; api/ has
 * no mutable globals: shared state is the cache (thread-safe) and the
 * metrics registry (atomic counters) reached through struct api_ctx.
 */
#ifndef API_API_H
#define API_API_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct cache;
struct crypto_keyring;
struct metrics;

/* Everything a handler may use; built by main.c, immutable after start
 * except the _Atomic flag. */
struct api_ctx {
    struct cache *cache;
    const struct crypto_keyring *ring; /* NULL: credentials not persisted */
    bool token_configured;             /* PROXYCACHE_API_TOKEN set */
    struct metrics *metrics;
    size_t max_body_bytes;
    size_t max_import_bytes;
    const char *openapi_yaml;          /* the contract, loaded at start */
    size_t openapi_len;
    const char *version;
    int64_t start_time_ms;
    _Atomic bool ready;                /* false while starting or warming */
    /* Set once when a credential was dropped for lack of a key, so the
     * WARNING is said once. */
    _Atomic bool warned_no_key;
};

enum api_method {
    API_GET = 0,
    API_POST,
    API_PUT,
    API_DELETE,
    API_PATCH,
    API_HEAD,
    API_OPTIONS,
    API_OTHER,
};

struct api_request {
    enum api_method method;
    const char *path;         /* raw path, no query */
    const char *key;          /* the {key} segment, or NULL */
    const char *content_type; /* media type only, lowercase, or NULL */
    const char *body;         /* whole body (api_handler_fn only) */
    size_t body_len;
    bool authenticated;       /* a valid bearer token was presented */
    const char *request_id;
    /* Query parameter lookup: the value (percent-decoded) or NULL. A name
     * given with no value ("?reveal") yields "". */
    const char *(*query)(const struct api_request *r, const char *name);
    void *conn;               /* for query(); opaque to api/ */
};

#define API_MAX_HEADERS 4

struct api_header {
    const char *name;         /* static string */
    char value[96];
};

/* Streaming response body: same contract as MHD's content reader: return
 * bytes written (> 0), 0 is not allowed; API_READER_END at the end,
 * API_READER_ERROR to abort the connection. */
#define API_READER_END ((ssize_t)-1)
#define API_READER_ERROR ((ssize_t)-2)
typedef ssize_t (*api_reader_fn)(void *cls, uint64_t pos, char *buf,
                                 size_t max);

struct api_response {
    unsigned status;
    const char *content_type;  /* static string */
    char *body;                /* malloc'd; the service frees it */
    size_t body_len;
    api_reader_fn reader;      /* or NULL */
    void *reader_cls;
    void (*reader_free)(void *cls);
    struct api_header headers[API_MAX_HEADERS];
    size_t n_headers;
    /* The body holds plain-text credentials (?reveal=true): the service
     * wipes it (OPENSSL_cleanse) before freeing it. */
    bool sensitive;
};

typedef void (*api_handler_fn)(struct api_ctx *ctx,
                               const struct api_request *req,
                               struct api_response *resp);

struct api_stream {
    void *st;
    /* 0 to go on; non-zero: stop reading, resp is filled (error). */
    int (*feed)(void *st, const char *data, size_t len,
                struct api_response *resp);
    void (*finish)(void *st, struct api_response *resp);
    void (*free)(void *st);
};

typedef int (*api_stream_begin_fn)(struct api_ctx *ctx,
                                   const struct api_request *req,
                                   struct api_stream *out,
                                   struct api_response *resp);

/* Add a header to resp (at most API_MAX_HEADERS; extra ones are dropped). */
void api_response_header(struct api_response *resp, const char *name,
                         const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Set a JSON body: steals root (json_t *, declared void * here so that this
 * header does not need jansson). */
void api_response_json(struct api_response *resp, unsigned status,
                       void *root);

/* ---- The resources (one file each). ---- */

/* h_proxies.c */
void h_proxies_post(struct api_ctx *, const struct api_request *,
                    struct api_response *);
void h_proxies_list(struct api_ctx *, const struct api_request *,
                    struct api_response *);
void h_proxies_clear(struct api_ctx *, const struct api_request *,
                     struct api_response *);
void h_proxy_get(struct api_ctx *, const struct api_request *,
                 struct api_response *);
void h_proxy_delete(struct api_ctx *, const struct api_request *,
                    struct api_response *);
/* h_health.c */
void h_proxy_health(struct api_ctx *, const struct api_request *,
                    struct api_response *);
void h_proxies_health_bulk(struct api_ctx *, const struct api_request *,
                           struct api_response *);
/* h_pick.c */
void h_pick(struct api_ctx *, const struct api_request *,
            struct api_response *);
/* h_warm.c (streamed bodies) */
int h_warm_begin(struct api_ctx *, const struct api_request *,
                 struct api_stream *, struct api_response *);
int h_import_begin(struct api_ctx *, const struct api_request *,
                   struct api_stream *, struct api_response *);
/* Warm from a file at start-up (--warm): feeds the same parser. Returns 0 and
 * fills the counts, or -errno (the message is logged). */
struct api_warm_counts {
    uint64_t imported, updated, skipped, errors;
};
int api_warm_file(struct api_ctx *, const char *path,
                  struct api_warm_counts *out);
/* h_export.c */
void h_export(struct api_ctx *, const struct api_request *,
              struct api_response *);
/* h_stats.c */
void h_stats(struct api_ctx *, const struct api_request *,
             struct api_response *);
void h_metrics(struct api_ctx *, const struct api_request *,
               struct api_response *);
void h_healthz(struct api_ctx *, const struct api_request *,
               struct api_response *);
void h_readyz(struct api_ctx *, const struct api_request *,
              struct api_response *);
void h_openapi(struct api_ctx *, const struct api_request *,
               struct api_response *);

#endif
