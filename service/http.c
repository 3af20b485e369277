/* SPDX-License-Identifier: MIT */
/*
 * The libmicrohttpd front end.
 *
 * Design: the access handler follows MHD's two-call pattern. The FIRST call
 * for a request only builds per-request state (struct req): it matches the
 * route, checks the bearer token (before routing, so unknown paths answer
 * 401 too), the Content-Type and the declared Content-Length against the
 * body cap (413 before any allocation), and for warm/import opens the
 * api stream. It never queues a response: queuing on the first call makes
 * MHD 0.9.75 close the connection (FIELD-NOTES, keep-alive pitfall). The
 * next calls deliver the body: accumulated into a buffer that grows
 * geometrically up to --max-body-bytes, or fed chunk by chunk to the api
 * stream up to --max-import-bytes. The call with *upload_data_size == 0
 * after the first runs the handler and queues the response. An early error
 * (401, 404, 405, 413, 415) is remembered and answered on that last call;
 * the body that still arrives is read and dropped, so the client sees the
 * answer and the connection stays usable. Only a body announced larger
 * than DISCARD_MAX is refused at once (MHD then closes the connection
 * instead of reading it), and a chunked one that grows past DISCARD_MAX
 * aborts the connection.
 *
 * The completion callback (MHD_OPTION_NOTIFY_COMPLETED) records the
 * request's metrics, writes the access log line (route template, never the
 * raw path, since it may hold a key; never Authorization or bodies) and
 * releases the state.
 *
 * Thread-safety: MHD runs one request at a time per connection, so struct
 * req needs no lock; it is referenced by the connection and, while a
 * streamed response body is alive, by that response (atomic refcount).
 * struct http is immutable after start except the atomics (request id
 * counter, in-flight count, started/stopping flags).
 */
#include <config.h> /* autoconf's (see service/config.h on the name) */

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>
#include <openssl/crypto.h>

#define LOG_MODULE "http"
#include "api/api.h"
#include "api/metrics.h"
#include "api/problem.h"
#include "common/clock.h"
#include "common/log.h"
#include "service/http.h"
#include "service/router.h"
#include "storage/crypto.h"

/* Block size of streamed response bodies (export). */
#define READER_BLOCK (64u * 1024)
/* First allocation of a request body buffer. */
#define BODY_INITIAL (16u * 1024)
/* Most bytes of an unwanted body read and dropped after an early error. */
#define DISCARD_MAX (64ull * 1024 * 1024)
/* How long http_stop() lets in-flight requests finish. */
#define DRAIN_MS 5000
/* Longest client-supplied X-Request-Id that is echoed. */
#define REQUEST_ID_MAX 64

struct http {
    struct MHD_Daemon *daemon;
    const struct config *cfg; /* borrowed */
    struct api_ctx *ctx;      /* borrowed */
    unsigned port;
    uint32_t id_prefix; /* random per process: ids differ across runs */
    _Atomic uint64_t next_id;
    _Atomic long inflight; /* requests between first call and completion */
    _Atomic bool started;  /* MHD log lines after start go to debug */
    _Atomic bool stopping; /* responses close their connection */
};

/* Per-request state, *con_cls of MHD. */
struct req {
    _Atomic int refs; /* connection + streamed response body */
    struct http *h;
    uint64_t start_ns;
    enum api_method method;
    struct router_match m;
    struct api_request ar;
    char content_type[64];
    char request_id[REQUEST_ID_MAX + 1];

    /* An error decided before the body was read, answered at the end. */
    unsigned error;
    char error_detail[160];
    uint64_t discarded;

    /* Whole body (api_handler_fn routes). */
    char *body;
    size_t len, cap;

    /* Streamed body (warm/import). */
    struct api_stream stream;
    bool stream_open;
    uint64_t streamed;

    struct api_response resp;
    bool resp_ready; /* resp filled early (stream error) */

    /* What was sent, for the log and metrics. */
    unsigned status;
    _Atomic uint64_t bytes_out;
};

/* A streamed response body: the api reader plus the request it counts
 * bytes for (owned by the MHD response). */
struct body_reader {
    api_reader_fn fn;
    void *cls;
    void (*free_fn)(void *cls);
    struct req *req; /* a reference */
};

/* ---- per-request state ---- */

/* Request bodies may carry plain-text credentials: wipe before freeing. */
static void body_wipe_free(char *p, size_t cap)
{
    if (!p)
        return;
    OPENSSL_cleanse(p, cap);
    free(p);
}

/* A sensitive response body, handed to MHD with its length. */
struct wiped_body {
    char *p;
    size_t len;
};

static void wiped_body_free(void *cls)
{
    struct wiped_body *w = cls;

    body_wipe_free(w->p, w->len);
    free(w);
}

static void req_unref(struct req *r)
{
    if (!r || atomic_fetch_sub(&r->refs, 1) != 1)
        return;
    body_wipe_free(r->body, r->cap);
    if (r->resp.sensitive)
        body_wipe_free(r->resp.body, r->resp.body_len);
    else
        free(r->resp.body);
    if (r->resp.reader_free)
        r->resp.reader_free(r->resp.reader_cls);
    free(r);
}

static const char *query_fn(const struct api_request *ar, const char *name)
{
    const char *value = NULL;

    if (!ar || !ar->conn || !name)
        return NULL;
    if (MHD_lookup_connection_value_n(ar->conn, MHD_GET_ARGUMENT_KIND, name,
                                      strlen(name), &value, NULL) != MHD_YES)
        return NULL;
    return value ? value : ""; /* "?reveal" without a value */
}

/* Accept a client's X-Request-Id only if short and made of safe
 * characters (it is echoed and logged); else make one. */
static void assign_request_id(struct http *h, struct MHD_Connection *conn,
                              struct req *r)
{
    const char *given =
        MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "X-Request-Id");
    uint64_t n;

    if (given) {
        size_t len = strlen(given);
        bool ok = len > 0 && len <= REQUEST_ID_MAX;
        for (size_t i = 0; ok && i < len; i++) {
            char c = given[i];
            ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
                 (c >= 'A' && c <= 'Z') || c == '-' || c == '_' || c == '.';
        }
        if (ok) {
            memcpy(r->request_id, given, len + 1);
            return;
        }
    }
    n = atomic_fetch_add_explicit(&h->next_id, 1, memory_order_relaxed);
    snprintf(r->request_id, sizeof r->request_id, "%08" PRIx32 "-%" PRIx64,
             h->id_prefix, n);
}

/* "Bearer <token>" (scheme case-insensitive) compared in constant time. */
static bool bearer_ok(struct MHD_Connection *conn, const char *token)
{
    const char *v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                MHD_HTTP_HEADER_AUTHORIZATION);
    char given[4097];
    size_t len;

    if (!v || strncasecmp(v, "Bearer", 6) != 0 || (v[6] != ' ' && v[6] != '\t'))
        return false;
    v += 6;
    while (*v == ' ' || *v == '\t')
        v++;
    len = strlen(v);
    while (len > 0 && (v[len - 1] == ' ' || v[len - 1] == '\t'))
        len--;
    if (len == 0 || len >= sizeof given)
        return false;
    memcpy(given, v, len);
    given[len] = '\0';
    bool ok = crypto_str_equal(given, token) == 1;
    explicit_bzero(given, len);
    return ok;
}

/* The media type of a Content-Type value, lowercase, without parameters:
 * 0, or -EINVAL when absent or malformed. */
static int media_type(const char *ct, char *out, size_t len)
{
    size_t n = 0;
    int slashes = 0;

    if (!ct)
        return -EINVAL;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    for (; *ct && *ct != ';' && *ct != ' ' && *ct != '\t'; ct++) {
        char c = *ct;
        if (n + 1 >= len)
            return -EINVAL;
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        if (c == '/')
            slashes++;
        else if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                   strchr("!#$&^_.+-", c)))
            return -EINVAL;
        out[n++] = c;
    }
    out[n] = '\0';
    return (slashes == 1 && n >= 3 && out[0] != '/' && out[n - 1] != '/')
               ? 0
               : -EINVAL;
}

static bool media_in(const char *mt, const char *const *list)
{
    for (; *list; list++) {
        if (strcmp(mt, *list) == 0)
            return true;
    }
    return false;
}

static const char *const json_types[] = {"application/json", NULL};
static const char *const list_types[] = {
    "application/json",     "text/plain",        "text/csv",
    "application/x-ndjson", "application/jsonl", NULL};

static void set_error(struct req *r, unsigned status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_error(struct req *r, unsigned status, const char *fmt, ...)
{
    va_list ap;

    r->error = status;
    va_start(ap, fmt);
    vsnprintf(r->error_detail, sizeof r->error_detail, fmt, ap);
    va_end(ap);
}

/* Declared body length (Content-Length), or -1 when absent/unparsable
 * (chunked; MHD itself rejects a malformed Content-Length). */
static long long declared_length(struct MHD_Connection *conn)
{
    const char *v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
                                                MHD_HTTP_HEADER_CONTENT_LENGTH);
    char *end = NULL;
    unsigned long long n;

    if (!v || *v < '0' || *v > '9')
        return -1;
    errno = 0;
    n = strtoull(v, &end, 10);
    if (errno == ERANGE || n > (unsigned long long)INT64_MAX)
        return INT64_MAX;
    if (end == v || (*end != '\0' && *end != ' ' && *end != '\t'))
        return -1;
    return (long long)n;
}

/* First call: everything decidable from the request line and headers. */
static void first_call(struct http *h, struct MHD_Connection *conn,
                       const char *url, const char *method, struct req *r)
{
    const struct config *cfg = h->cfg;
    const struct router_binding *b;
    size_t limit;
    long long declared;

    r->method = router_method_parse(method);
    router_match(r->method, url, &r->m);

    r->ar.method = r->method;
    r->ar.path = url;
    r->ar.request_id = r->request_id;
    r->ar.query = query_fn;
    r->ar.conn = conn;
    r->ar.key = r->m.key[0] ? r->m.key : NULL;

    /* Authentication comes before routing: unknown paths answer 401. */
    if (cfg->api_token) {
        bool ok = bearer_ok(conn, cfg->api_token);
        r->ar.authenticated = ok;
        if (!ok && !r->m.path_public) {
            set_error(r, MHD_HTTP_UNAUTHORIZED,
                      "a valid bearer token is required");
            return;
        }
    }
    if (r->m.status == ROUTER_NOT_FOUND) {
        set_error(r, MHD_HTTP_NOT_FOUND, "no route matches this path");
        return;
    }
    if (r->m.status == ROUTER_NOT_ALLOWED) {
        set_error(r, MHD_HTTP_METHOD_NOT_ALLOWED,
                  "method not allowed; allowed: %s", r->m.allow);
        return;
    }
    b = r->m.binding;

    if (b->flags & (ROUTER_BODY_JSON | ROUTER_BODY_LIST)) {
        const char *ct = MHD_lookup_connection_value(
            conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
        const char *const *ok_types =
            (b->flags & ROUTER_BODY_JSON) ? json_types : list_types;
        if (media_type(ct, r->content_type, sizeof r->content_type) != 0 ||
            !media_in(r->content_type, ok_types)) {
            set_error(r, MHD_HTTP_UNSUPPORTED_MEDIA_TYPE,
                      (b->flags & ROUTER_BODY_JSON)
                          ? "Content-Type must be application/json"
                          : "Content-Type must be application/json, "
                            "text/plain, text/csv or application/x-ndjson");
            r->content_type[0] = '\0';
            return;
        }
        r->ar.content_type = r->content_type;
    } else {
        const char *ct = MHD_lookup_connection_value(
            conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_TYPE);
        if (media_type(ct, r->content_type, sizeof r->content_type) == 0)
            r->ar.content_type = r->content_type;
        else
            r->content_type[0] = '\0';
    }

    limit = b->stream_begin ? cfg->max_import_bytes : cfg->max_body_bytes;
    declared = declared_length(conn);
    if (declared >= 0 && (unsigned long long)declared > limit) {
        set_error(r, MHD_HTTP_CONTENT_TOO_LARGE,
                  "request body exceeds the limit of %zu bytes", limit);
        return;
    }

    if (b->stream_begin) {
        int rc = b->stream_begin(h->ctx, &r->ar, &r->stream, &r->resp);
        if (rc != 0) {
            r->resp_ready = true; /* begin() answered (an error) */
            memset(&r->stream, 0, sizeof r->stream);
        } else {
            r->stream_open = true;
        }
    }
}

/* A later call with body bytes. MHD_NO aborts the connection. */
static enum MHD_Result take_body(struct http *h, struct req *r,
                                 const char *data, size_t n)
{
    const struct config *cfg = h->cfg;

    if (r->error || r->resp_ready) {
        r->discarded += n;
        return r->discarded > DISCARD_MAX ? MHD_NO : MHD_YES;
    }
    if (r->stream_open) {
        r->streamed += n;
        if (r->streamed > cfg->max_import_bytes) {
            set_error(r, MHD_HTTP_CONTENT_TOO_LARGE,
                      "request body exceeds the limit of %zu bytes",
                      cfg->max_import_bytes);
            return MHD_YES;
        }
        if (r->stream.feed(r->stream.st, data, n, &r->resp) != 0)
            r->resp_ready = true;
        return MHD_YES;
    }
    if (n > cfg->max_body_bytes - r->len) {
        body_wipe_free(r->body, r->cap);
        r->body = NULL;
        r->len = r->cap = 0;
        set_error(r, MHD_HTTP_CONTENT_TOO_LARGE,
                  "request body exceeds the limit of %zu bytes",
                  cfg->max_body_bytes);
        r->discarded = n;
        return MHD_YES;
    }
    if (r->len + n + 1 > r->cap) {
        /* Grow geometrically; the cap (+1 for a NUL) bounds it. */
        size_t cap = r->cap ? r->cap : BODY_INITIAL;
        char *grown;
        while (cap < r->len + n + 1)
            cap = cap > (cfg->max_body_bytes + 1) / 2 ? cfg->max_body_bytes + 1
                                                      : cap * 2;
        /* Not realloc: the old block is wiped, not left behind. */
        grown = malloc(cap);
        if (!grown)
            return MHD_NO;
        if (r->len)
            memcpy(grown, r->body, r->len);
        body_wipe_free(r->body, r->cap);
        r->body = grown;
        r->cap = cap;
    }
    memcpy(r->body + r->len, data, n);
    r->len += n;
    r->body[r->len] = '\0';
    return MHD_YES;
}

/* ---- responses ---- */

static ssize_t reader_cb(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct body_reader *br = cls;
    ssize_t n = br->fn(br->cls, pos, buf, max);

    if (n == API_READER_END)
        return MHD_CONTENT_READER_END_OF_STREAM;
    if (n <= 0 || (size_t)n > max) {
        if (n != API_READER_ERROR)
            log_warn("response reader returned %zd: aborting the body", n);
        return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    atomic_fetch_add_explicit(&br->req->bytes_out, (uint64_t)n,
                              memory_order_relaxed);
    return n;
}

static void reader_free_cb(void *cls)
{
    struct body_reader *br = cls;

    if (br->free_fn)
        br->free_fn(br->cls);
    req_unref(br->req);
    free(br);
}

/* Fill r->resp for a remembered early error. */
static void error_response(struct req *r)
{
    struct api_response *resp = &r->resp;

    free(resp->body);
    if (resp->reader_free)
        resp->reader_free(resp->reader_cls);
    memset(resp, 0, sizeof *resp);
    switch (r->error) {
    case MHD_HTTP_CONTENT_TOO_LARGE:
        problem_respond(resp, r->error, "body", "%s", r->error_detail);
        break;
    case MHD_HTTP_UNSUPPORTED_MEDIA_TYPE:
        problem_respond(resp, r->error, "Content-Type", "%s", r->error_detail);
        break;
    default:
        problem_respond(resp, r->error, NULL, "%s", r->error_detail);
        break;
    }
    if (r->error == MHD_HTTP_UNAUTHORIZED)
        api_response_header(resp, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
    if (r->error == MHD_HTTP_METHOD_NOT_ALLOWED)
        api_response_header(resp, MHD_HTTP_HEADER_ALLOW, "%s", r->m.allow);
}

/* Build the MHD response from r->resp (taking its body) and queue it. */
static enum MHD_Result queue(struct http *h, struct MHD_Connection *conn,
                             struct req *r)
{
    struct api_response *resp = &r->resp;
    struct MHD_Response *mr = NULL;
    enum MHD_Result ret;

    if (resp->status < 100 || resp->status > 599) {
        log_error("handler for %s left status %u: answering 500",
                  router_name(r->m.route), resp->status);
        free(resp->body);
        if (resp->reader_free)
            resp->reader_free(resp->reader_cls);
        memset(resp, 0, sizeof *resp);
        problem_respond(resp, MHD_HTTP_INTERNAL_SERVER_ERROR, NULL,
                        "the handler produced no response");
    }

    if (resp->reader) {
        struct body_reader *br = calloc(1, sizeof *br);
        if (br) {
            br->fn = resp->reader;
            br->cls = resp->reader_cls;
            br->free_fn = resp->reader_free;
            br->req = r;
            atomic_fetch_add(&r->refs, 1);
            mr = MHD_create_response_from_callback(
                MHD_SIZE_UNKNOWN, READER_BLOCK, reader_cb, br, reader_free_cb);
            if (!mr) {
                atomic_fetch_sub(&r->refs, 1);
                free(br);
            } else {
                resp->reader_free = NULL; /* now owned by the response */
                resp->reader_cls = NULL;
            }
        }
    } else if (resp->body && resp->sensitive) {
        struct wiped_body *w = malloc(sizeof *w);
        mr = NULL;
        if (w) {
            w->p = resp->body;
            w->len = resp->body_len;
            mr = MHD_create_response_from_buffer_with_free_callback_cls(
                resp->body_len, resp->body, &wiped_body_free, w);
            if (!mr)
                free(w);
        }
        if (mr) {
            atomic_store_explicit(&r->bytes_out, resp->body_len,
                                  memory_order_relaxed);
            resp->body = NULL; /* now owned by the response */
        }
    } else if (resp->body) {
        mr = MHD_create_response_from_buffer_with_free_callback(
            resp->body_len, resp->body, &free);
        if (mr) {
            atomic_store_explicit(&r->bytes_out, resp->body_len,
                                  memory_order_relaxed);
            resp->body = NULL; /* now owned by the response */
        }
    } else {
        mr = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    }
    if (!mr) {
        log_error("cannot create a response (out of memory)");
        return MHD_NO;
    }

    if (resp->content_type)
        MHD_add_response_header(mr, MHD_HTTP_HEADER_CONTENT_TYPE,
                                resp->content_type);
    for (size_t i = 0; i < resp->n_headers && i < API_MAX_HEADERS; i++) {
        if (resp->headers[i].name)
            MHD_add_response_header(mr, resp->headers[i].name,
                                    resp->headers[i].value);
    }
    MHD_add_response_header(mr, "X-Request-Id", r->request_id);
    if (atomic_load_explicit(&h->stopping, memory_order_relaxed))
        MHD_add_response_header(mr, MHD_HTTP_HEADER_CONNECTION, "close");

    r->status = resp->status;
    ret = MHD_queue_response(conn, resp->status, mr);
    MHD_destroy_response(mr);
    return ret;
}

/* The last call: run the handler (or finish the stream) and answer. */
static enum MHD_Result last_call(struct http *h, struct MHD_Connection *conn,
                                 struct req *r)
{
    if (r->error) {
        error_response(r);
    } else if (r->resp_ready) {
        /* stream begin() or feed() already answered */
    } else if (r->stream_open) {
        r->stream.finish(r->stream.st, &r->resp);
    } else {
        r->ar.body = r->body ? r->body : "";
        r->ar.body_len = r->len;
        r->m.binding->handler(h->ctx, &r->ar, &r->resp);
    }
    return queue(h, conn, r);
}

static enum MHD_Result access_cb(void *cls, struct MHD_Connection *conn,
                                 const char *url, const char *method,
                                 const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls)
{
    struct http *h = cls;
    struct req *r = *con_cls;

    (void)version;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r)
            return MHD_NO;
        atomic_init(&r->refs, 1);
        r->h = h;
        r->start_ns = clock_mono_ns();
        r->m.route = router_count();
        atomic_fetch_add(&h->inflight, 1);
        *con_cls = r;
        assign_request_id(h, conn, r);
        first_call(h, conn, url, method, r);
        /* A huge announced body after an early error is not worth
         * reading: answer now (MHD closes the connection afterwards). */
        if (r->error && declared_length(conn) > (long long)DISCARD_MAX) {
            error_response(r);
            return queue(h, conn, r);
        }
        return MHD_YES;
    }
    if (*upload_data_size != 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        return take_body(h, r, upload_data, n);
    }
    return last_call(h, conn, r);
}

/* ---- completion: metrics, access log, release ---- */

static const char *toe_name(enum MHD_RequestTerminationCode toe)
{
    switch (toe) {
    case MHD_REQUEST_TERMINATED_COMPLETED_OK:
        return "ok";
    case MHD_REQUEST_TERMINATED_WITH_ERROR:
        return "error";
    case MHD_REQUEST_TERMINATED_TIMEOUT_REACHED:
        return "timeout";
    case MHD_REQUEST_TERMINATED_DAEMON_SHUTDOWN:
        return "shutdown";
    case MHD_REQUEST_TERMINATED_READ_ERROR:
        return "read-error";
    case MHD_REQUEST_TERMINATED_CLIENT_ABORT:
        return "client-abort";
    default:
        return "unknown";
    }
}

static void access_log(const struct req *r, unsigned status, size_t route,
                       uint64_t dur_ns, enum MHD_RequestTerminationCode toe)
{
    char st[16], dur[32], bytes[24];
    const char *kv[16];
    size_t n = 0;

    snprintf(st, sizeof st, "%u", status);
    snprintf(dur, sizeof dur, "%.3f", (double)dur_ns / 1e6);
    snprintf(bytes, sizeof bytes, "%" PRIu64,
             atomic_load_explicit(&r->bytes_out, memory_order_relaxed));
    kv[n++] = "method";
    kv[n++] = router_method_name(r->method);
    kv[n++] = "route";
    kv[n++] = router_name(route);
    kv[n++] = "status";
    kv[n++] = st;
    kv[n++] = "duration_ms";
    kv[n++] = dur;
    kv[n++] = "bytes";
    kv[n++] = bytes;
    kv[n++] = "request_id";
    kv[n++] = r->request_id;
    if (toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) {
        kv[n++] = "termination";
        kv[n++] = toe_name(toe);
    }
    kv[n] = NULL;
    log_kv(LOG_LEVEL_INFO, kv, "request");
}

static void completed_cb(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct http *h = cls;
    struct req *r = *con_cls;
    uint64_t dur;
    unsigned status;
    size_t route;

    (void)conn;
    if (!r)
        return;
    *con_cls = NULL;
    dur = clock_mono_ns() - r->start_ns;
    /* No response queued: the client went away first (nginx's 499). */
    status = r->status ? r->status : 499;
    /* Auth failures, 404 and 405 count as "unmatched" (bounded labels). */
    route = (r->m.status == ROUTER_OK && r->error != MHD_HTTP_UNAUTHORIZED)
                ? r->m.route
                : router_count();
    if (h->ctx->metrics)
        metrics_observe(h->ctx->metrics, route, r->method, status, dur);
    /* The log names the matched template even for 401/405 (the metrics
     * keep those under "unmatched" to bound label cardinality). */
    if (LOG_LEVEL_INFO >= log_threshold)
        access_log(r, status, r->m.route, dur, toe);
    if (r->stream_open && r->stream.free)
        r->stream.free(r->stream.st);
    r->stream_open = false;
    atomic_fetch_sub(&h->inflight, 1);
    req_unref(r);
}

/* ---- daemon ---- */

static void mhd_log(void *cls, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

/* MHD's own messages: WARN while starting (bind errors and the like), then
 * DEBUG except resource limits (WARN), which an operator must see. */
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    struct http *h = cls;
    char msg[512];
    size_t len;
    enum log_level lvl = LOG_LEVEL_DEBUG;

    vsnprintf(msg, sizeof msg, fmt, ap);
    len = strlen(msg);
    while (len > 0 && (msg[len - 1] == '\n' || msg[len - 1] == '\r'))
        msg[--len] = '\0';
    if (!atomic_load(&h->started) || strstr(msg, "limit") ||
        strstr(msg, "memory") || strstr(msg, "thread"))
        lvl = LOG_LEVEL_WARN;
    log_at(lvl, 0, "libmicrohttpd: %s", msg);
}

static unsigned cpu_count(void)
{
    cpu_set_t set;
    long n;

    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return (unsigned)CPU_COUNT(&set);
    n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (unsigned)n : 1;
}

int http_start(const struct config *cfg, struct api_ctx *ctx, struct http **out)
{
    struct http *h;
    struct sockaddr_in sin;
    struct sockaddr_in6 sin6;
    const struct sockaddr *sa;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL |
                     MHD_USE_ERROR_LOG | MHD_USE_ITC;
    struct MHD_OptionItem extra[2] = {{MHD_OPTION_END, 0, NULL},
                                      {MHD_OPTION_END, 0, NULL}};
    unsigned threads = 0;
    const union MHD_DaemonInfo *info;
    char where[80];
    int err = 0;

    h = calloc(1, sizeof *h);
    if (!h)
        return -ENOMEM;
    h->cfg = cfg;
    h->ctx = ctx;
    if (crypto_random(&h->id_prefix, sizeof h->id_prefix) != 0)
        h->id_prefix = (uint32_t)getpid();
    atomic_init(&h->next_id, 1);

    if (cfg->listen_family == AF_INET6) {
        memset(&sin6, 0, sizeof sin6);
        sin6.sin6_family = AF_INET6;
        sin6.sin6_port = htons(cfg->listen_port);
        if (inet_pton(AF_INET6, cfg->listen_addr, &sin6.sin6_addr) != 1) {
            err = -EINVAL;
            goto out;
        }
        sa = (const struct sockaddr *)&sin6;
        flags |= MHD_USE_IPv6;
    } else {
        memset(&sin, 0, sizeof sin);
        sin.sin_family = AF_INET;
        sin.sin_port = htons(cfg->listen_port);
        if (inet_pton(AF_INET, cfg->listen_addr, &sin.sin_addr) != 1) {
            err = -EINVAL;
            goto out;
        }
        sa = (const struct sockaddr *)&sin;
    }

    if (cfg->threading == CONFIG_THREADING_PER_CONNECTION) {
        flags |= MHD_USE_THREAD_PER_CONNECTION;
    } else {
        threads = cpu_count();
        if (threads > 64)
            threads = 64;
        if (threads > 1) {
            extra[0].option = MHD_OPTION_THREAD_POOL_SIZE;
            extra[0].value = (intptr_t)threads;
        }
    }

    errno = 0;
    h->daemon = MHD_start_daemon(
        flags, cfg->listen_port, NULL, NULL, access_cb, h,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_log, h, /* first: MHD wants it so */
        MHD_OPTION_NOTIFY_COMPLETED, completed_cb, h, MHD_OPTION_SOCK_ADDR, sa,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->max_connections,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT,
        (unsigned)cfg->max_connections_per_ip, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)cfg->idle_timeout, MHD_OPTION_ARRAY, extra, MHD_OPTION_END);
    if (!h->daemon) {
        err = errno ? -errno : -EIO;
        config_format_listen(cfg, cfg->listen_port, where, sizeof where);
        log_error_errno(-err, "cannot listen on %s", where);
        goto out;
    }
    atomic_store(&h->started, true);

    info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
    h->port = (info && info->port) ? info->port : cfg->listen_port;
    /* Written whatever --log-level says: tests and operators read the
     * bound port from it (port 0), also under --log-level warn. */
    log_write(LOG_LEVEL_INFO, LOG_MODULE, 0, NULL, "listening on %s",
              config_format_listen(cfg, h->port, where, sizeof where));
    log_debug("threading %s, %u worker thread(s), max %u connections "
              "(%u per IP), idle timeout %u s",
              config_threading_name(cfg->threading), threads ? threads : 1,
              cfg->max_connections, cfg->max_connections_per_ip,
              cfg->idle_timeout);
    *out = h;
    h = NULL;
out:
    free(h);
    return err;
}

unsigned http_port(const struct http *h)
{
    return h ? h->port : 0;
}

void http_stop(struct http *h)
{
    MHD_socket lsock;
    int64_t waited = 0;

    if (!h)
        return;
    atomic_store(&h->stopping, true);
    lsock = MHD_quiesce_daemon(h->daemon);
    /* In-flight requests finish; their responses close the connection. */
    while (atomic_load(&h->inflight) > 0 && waited < DRAIN_MS) {
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
        waited += 10;
    }
    if (atomic_load(&h->inflight) > 0)
        log_warn("stopping with %ld request(s) still in flight",
                 (long)atomic_load(&h->inflight));
    MHD_stop_daemon(h->daemon);
    if (lsock != MHD_INVALID_SOCKET)
        close(lsock);
    free(h);
}
