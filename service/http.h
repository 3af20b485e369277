/* SPDX-License-Identifier: MIT */
/*
 * The HTTP front end: a libmicrohttpd daemon that turns each request into a
 * struct api_request, runs the handler the router found, and sends the
 * struct api_response back.
 *
 * Design: see http.c (the two-call access handler, body caps before any
 * allocation, streamed bodies, early errors answered after the body).
 * Thread modes (--threading): "pool" = an internal thread pool of one
 * thread per core with poll() (epoll in 0.9.75 stalls at 128 ready
 * connections per thread, FIELD-NOTES), or one thread per connection.
 *
 * Thread-safety: http_start() and http_stop() are called by main() only.
 * Requests run concurrently on MHD's threads; per-request state lives in
 * MHD's per-request pointer; the shared state is const (config, route
 * table) or atomic (request ids, in-flight count, metrics).
 * Ownership: cfg and ctx are borrowed and must outlive the daemon (until
 * http_stop() returns).
 */
#ifndef SERVICE_HTTP_H
#define SERVICE_HTTP_H

#include "api/api.h"
#include "service/config.h"

struct http;

/*
 * Bind cfg's listen address and start serving. Logs "listening on
 * ADDR:PORT" (the bound port when cfg asked for 0) at INFO. Returns 0 and
 * *out, or -errno (-EADDRINUSE if the port is taken; the reason is
 * logged).
 */
int http_start(const struct config *cfg, struct api_ctx *ctx,
               struct http **out);

/* The bound port (useful with port 0). */
unsigned http_port(const struct http *h);

/*
 * Stop accepting connections, let in-flight requests finish (bounded wait;
 * responses sent meanwhile close their connection), then stop the daemon
 * and join its threads. No handler runs after this returns. NULL-safe.
 */
void http_stop(struct http *h);

#endif
