/* SPDX-License-Identifier: MIT */
/*
 * RFC 9457 problem documents and the response helpers of api.h.
 *
 * Design: two X-macro tables are the single source of truth: one maps HTTP
 * status codes to their title and type slug, the other maps the cache's
 * negative errno values to a status and a short reason (libuv's error
 * table idea). Every string placed in a problem goes through
 * json_io_string(), so an arbitrary member name or URL can never produce
 * invalid JSON, and URLs are quoted only after problem_strip_userinfo().
 * When memory runs out, a fixed fallback body is used, so a handler always
 * leaves a well-formed response behind.
 *
 * Thread-safety: no state; tables are const.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "api/api_int.h"
#include "api/json_io.h"
#include "api/problem.h"

/* status, title (RFC 9110), slug of urn:proxycache:problem:<slug> */
#define PROBLEM_STATUS_TABLE(X)                                                \
    X(400, "Bad Request", "bad-request")                                       \
    X(401, "Unauthorized", "unauthorized")                                     \
    X(403, "Forbidden", "forbidden")                                           \
    X(404, "Not Found", "not-found")                                           \
    X(405, "Method Not Allowed", "method-not-allowed")                         \
    X(406, "Not Acceptable", "not-acceptable")                                 \
    X(408, "Request Timeout", "request-timeout")                               \
    X(409, "Conflict", "conflict")                                             \
    X(411, "Length Required", "length-required")                               \
    X(413, "Content Too Large", "content-too-large")                           \
    X(414, "URI Too Long", "uri-too-long")                                     \
    X(415, "Unsupported Media Type", "unsupported-media-type")                 \
    X(422, "Unprocessable Content", "unprocessable-content")                   \
    X(429, "Too Many Requests", "too-many-requests")                           \
    X(431, "Request Header Fields Too Large", "header-fields-too-large")       \
    X(500, "Internal Server Error", "internal-error")                          \
    X(501, "Not Implemented", "not-implemented")                               \
    X(503, "Service Unavailable", "service-unavailable")

/* errno (positive), HTTP status, reason */
#define PROBLEM_ERRNO_TABLE(X)                                                 \
    X(ENOENT, 404, "not found")                                                \
    X(EINVAL, 400, "invalid input")                                            \
    X(E2BIG, 413, "too large")                                                 \
    X(ENOMEM, 503, "out of memory")                                            \
    X(ENOSPC, 503, "storage is full")                                          \
    X(EACCES, 503, "storage permission denied")                                \
    X(EIO, 503, "storage I/O error")                                           \
    X(EBUSY, 503, "storage is busy")                                           \
    X(EROFS, 503, "storage is read-only")                                      \
    X(EAGAIN, 503, "temporarily unavailable")                                  \
    X(EBADMSG, 500, "stored data is corrupt")

struct status_row {
    unsigned status;
    const char *title;
    const char *slug;
};

static const struct status_row status_rows[] = {
#define X(code, title, slug) {code, title, slug},
    PROBLEM_STATUS_TABLE(X)
#undef X
};

struct errno_row {
    int err;
    unsigned status;
    const char *reason;
};

static const struct errno_row errno_rows[] = {
#define X(e, status, reason) {e, status, reason},
    PROBLEM_ERRNO_TABLE(X)
#undef X
};

/* Longest member name echoed back in "field". */
#define FIELD_ECHO_MAX 128

static const struct status_row *status_row(unsigned status)
{
    size_t i;

    for (i = 0; i < sizeof status_rows / sizeof status_rows[0]; i++) {
        if (status_rows[i].status == status)
            return &status_rows[i];
    }
    return NULL;
}

const char *problem_title(unsigned status)
{
    const struct status_row *r = status_row(status);

    if (r)
        return r->title;
    if (status >= 500)
        return "Server Error";
    if (status >= 400)
        return "Client Error";
    return "Error";
}

static const struct errno_row *errno_row(int err)
{
    size_t i;

    if (err < 0)
        err = -err;
    for (i = 0; i < sizeof errno_rows / sizeof errno_rows[0]; i++) {
        if (errno_rows[i].err == err)
            return &errno_rows[i];
    }
    return NULL;
}

const char *api_errno_reason(int err)
{
    const struct errno_row *r = errno_row(err);

    return r ? r->reason : "internal error";
}

void api_response_header(struct api_response *resp, const char *name,
                         const char *fmt, ...)
{
    struct api_header *h;
    va_list ap;
    char *c;

    if (resp->n_headers >= API_MAX_HEADERS)
        return;
    h = &resp->headers[resp->n_headers];
    va_start(ap, fmt);
    vsnprintf(h->value, sizeof h->value, fmt, ap);
    va_end(ap);
    /* A header value never carries a line break (response splitting). */
    for (c = h->value; *c; c++) {
        if (*c == '\r' || *c == '\n')
            *c = ' ';
    }
    h->name = name;
    resp->n_headers++;
}

/* The last-resort body when even building a problem fails. */
static void respond_fallback(struct api_response *resp)
{
    static const char body[] =
        "{\"type\":\"urn:proxycache:problem:service-unavailable\","
        "\"title\":\"Service Unavailable\",\"status\":503,"
        "\"detail\":\"out of memory\"}";

    free(resp->body);
    resp->status = 503;
    resp->content_type = API_CT_PROBLEM;
    resp->body = strdup(body);
    resp->body_len = resp->body ? sizeof body - 1 : 0;
}

/* Dump root (stolen) as the body with the given type. */
static void set_json_body(struct api_response *resp, unsigned status,
                          json_t *root, const char *content_type)
{
    char *s = NULL;

    if (root)
        s = json_dumps(root, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(root);
    if (!s) {
        respond_fallback(resp);
        return;
    }
    free(resp->body);
    resp->status = status;
    resp->content_type = content_type;
    resp->body = s;
    resp->body_len = strlen(s);
}

void api_response_json(struct api_response *resp, unsigned status, void *root)
{
    set_json_body(resp, status, root, API_CT_JSON);
}

/* Copy a member name for echoing: bounded, cut on a character boundary. */
static json_t *field_string(const char *field)
{
    char buf[FIELD_ECHO_MAX + 4];
    size_t n = strnlen(field, FIELD_ECHO_MAX + 1);

    if (n <= FIELD_ECHO_MAX)
        return json_io_string(field);
    n = FIELD_ECHO_MAX;
    while (n > 0 && ((unsigned char)field[n] & 0xc0) == 0x80)
        n--;
    memcpy(buf, field, n);
    memcpy(buf + n, "...", 4);
    return json_io_string(buf);
}

static void respond_doc(struct api_response *resp, unsigned status,
                        const char *field, const char *reason,
                        const char *detail)
{
    const struct status_row *row = status_row(status);
    char type[96];
    json_t *o = json_object();
    int bad = 0;

    if (!o) {
        respond_fallback(resp);
        return;
    }
    if (row)
        snprintf(type, sizeof type, "urn:proxycache:problem:%s", row->slug);
    else
        snprintf(type, sizeof type, "about:blank");
    bad |= json_object_set_new(o, "type", json_string(type));
    bad |= json_object_set_new(o, "title",
                               json_string(problem_title(status)));
    bad |= json_object_set_new(o, "status", json_integer(status));
    bad |= json_object_set_new(o, "detail", json_io_string(detail));
    if (field) {
        bad |= json_object_set_new(o, "field", field_string(field));
        bad |= json_object_set_new(o, "reason", json_io_string(reason));
    }
    if (bad) {
        json_decref(o);
        respond_fallback(resp);
        return;
    }
    set_json_body(resp, status, o, API_CT_PROBLEM);
}

void problem_respond(struct api_response *resp, unsigned status,
                     const char *field, const char *fmt, ...)
{
    char detail[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    respond_doc(resp, status, field, detail, detail);
}

void problem_respond_p(struct api_response *resp, const struct problem *p)
{
    char detail[512];
    unsigned status = p->status ? p->status : 400;

    if (p->field) {
        char f[FIELD_ECHO_MAX + 4];
        size_t n = strnlen(p->field, FIELD_ECHO_MAX + 1);
        if (n > FIELD_ECHO_MAX) {
            n = FIELD_ECHO_MAX;
            while (n > 0 && ((unsigned char)p->field[n] & 0xc0) == 0x80)
                n--;
            memcpy(f, p->field, n);
            memcpy(f + n, "...", 4);
        } else {
            memcpy(f, p->field, n + 1);
        }
        snprintf(detail, sizeof detail, "%s: %s", f, p->reason);
    } else {
        snprintf(detail, sizeof detail, "%s", p->reason);
    }
    respond_doc(resp, status, p->field, p->reason, detail);
}

void problem_respond_errno(struct api_response *resp, int err,
                           const char *what)
{
    const struct errno_row *r = errno_row(err);
    unsigned status = r ? r->status : 500;
    const char *reason = r ? r->reason : "internal error";

    if (what)
        problem_respond(resp, status, NULL, "%s: %s", what, reason);
    else
        problem_respond(resp, status, NULL, "%s", reason);
    if (status == 503)
        api_response_header(resp, "Retry-After", "1");
}

void problem_strip_userinfo(const char *url, char *out, size_t len)
{
    const char *at = NULL, *sep, *c;
    size_t pre = 0;

    if (!out || len == 0)
        return;
    if (!url) {
        out[0] = '\0';
        return;
    }
    /* The last '@' anywhere: a password may hold '/', '?', '#' or even
     * "://" unencoded, and an input may have no scheme at all, so nothing
     * before that '@' can be trusted to be anything but userinfo. */
    for (c = url; *c; c++)
        if (*c == '@')
            at = c;
    if (!at) {
        snprintf(out, len, "%s", url);
        return;
    }
    /* Keep a prefix only if it is a real scheme ending before that '@'. */
    sep = strstr(url, "://");
    if (sep && sep < at && sep > url && isalpha((unsigned char)url[0])) {
        for (c = url; c < sep && (isalnum((unsigned char)*c) || *c == '+' ||
                                  *c == '-' || *c == '.');
             c++)
            ;
        if (c == sep)
            pre = (size_t)(sep + 3 - url);
    }
    snprintf(out, len, "%.*s%s", (int)(pre < 64 ? pre : 0), url, at + 1);
}
