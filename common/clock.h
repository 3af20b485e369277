/* SPDX-License-Identifier: MIT */
/*
 * Wall and monotonic clocks, injectable for tests (curl's CURL_TIME idea).
 *
 * Every TTL decision in the project reads clock_now_ms(); tests replace it
 * with clock_set_fake() so that expiry can be exercised without sleeping.
 * Thread-safety: the fake clock value is an _Atomic; installing or removing
 * the fake is meant for single-threaded test set-up.
 */
#ifndef COMMON_CLOCK_H
#define COMMON_CLOCK_H

#include <stddef.h>
#include <stdint.h>

/* Milliseconds since the Unix epoch (UTC), or the fake time if one is set. */
int64_t clock_now_ms(void);

/* Monotonic nanoseconds, for durations and latency histograms (never fake). */
uint64_t clock_mono_ns(void);

/* Install a fake wall clock at ms (tests). clock_advance_ms moves it. */
void clock_set_fake(int64_t ms);
void clock_advance_ms(int64_t delta);
void clock_clear_fake(void);

/*
 * Format ms as RFC 3339 UTC with milliseconds, "2026-11-25T10:00:00.000Z".
 * buf must hold at least CLOCK_RFC3339_LEN bytes. Returns buf.
 */
#define CLOCK_RFC3339_LEN 32
char *clock_format_rfc3339(int64_t ms, char *buf, size_t len);

/*
 * Parse an RFC 3339 / ISO-8601 timestamp: "YYYY-MM-DDTHH:MM:SS" with an
 * optional fraction and an optional "Z" or "+HH:MM"/"-HH:MM" offset (no
 * offset means UTC, as in the reference's proxies-rich.json). A space is
 * accepted in place of 'T'. Returns 0 and writes *ms, or -EINVAL.
 */
int clock_parse_rfc3339(const char *s, int64_t *ms);

#endif
