/* SPDX-License-Identifier: MIT */
/*
 * RFC 9457 problem documents (application/problem+json).
 *
 * Members: type ("about:blank" or a urn:proxycache:problem:<slug>), title,
 * status, detail, and for validation errors "field" (the JSON member or
 * query parameter at fault) and "reason". A problem quoting a URL strips
 * its userinfo first (problem_strip_userinfo).
 */
#ifndef API_PROBLEM_H
#define API_PROBLEM_H

#include <stddef.h>

#include "api/api.h"

struct problem {
    unsigned status;
    const char *field;  /* or NULL */
    char reason[256];
};

/* Fill resp with a problem document. field may be NULL. detail is printf. */
void problem_respond(struct api_response *resp, unsigned status,
                     const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* From a struct problem. */
void problem_respond_p(struct api_response *resp, const struct problem *p);

/* Map a negative errno from the cache to a status and respond:
 * -ENOENT 404, -EINVAL 400, -E2BIG 413, -ENOMEM 503, tier failures 503. */
void problem_respond_errno(struct api_response *resp, int err,
                           const char *what);

/* Copy url into out (size len) with any "user[:pass]@" removed. */
void problem_strip_userinfo(const char *url, char *out, size_t len);

/* Title for an HTTP status ("Not Found"). */
const char *problem_title(unsigned status);

#endif
