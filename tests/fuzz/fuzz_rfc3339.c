/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer harness of the RFC 3339 parser and formatter (common/clock.c).
 *
 * Why: timestamps arrive from warm files (proxies-rich.json), import lines
 * and L2 shards, all untrusted. The parser must reject garbage without
 * reading past the string, and what it accepts must survive the trip
 * through our own formatter, which is how the value is written back to L2
 * and to JSON.
 *
 * Invariants (trap on violation):
 *  - the return is 0 or -EINVAL, and *ms is only written on success;
 *  - whatever is accepted can be written back: format(t) parses again to
 *    exactly t. This holds whatever the input precision, because the
 *    parser truncates to milliseconds and the formatter writes all three
 *    digits; comparing strings instead would wrongly flag "...:00.1234Z",
 *    "...+02:00", "t"/"z" or a leap second ":60". It also means an offset
 *    must not carry an accepted time out of the years 0000..9999 that the
 *    format can write ("9999-12-31T23:59:59-01:00" is year 10000): such a
 *    value, once stored in an L2 line, could never be read back;
 *  - an input already in the canonical form "YYYY-MM-DDTHH:MM:SS.mmmZ"
 *    (not a leap second) is reproduced byte for byte by the formatter;
 *  - formatting any int64 (the first 8 input bytes) does not crash and
 *    yields a NUL-terminated string (L2 may hold any number there).
 */
#include "config.h"

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Report the broken invariant, then trap (libFuzzer saves the input). */
#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__,         \
                    __LINE__, #cond);                                          \
            __builtin_trap();                                                  \
        }                                                                      \
    } while (0)

/* 0000-01-01T00:00:00.000Z and 9999-12-31T23:59:59.999Z in ms. */
#define MS_MIN INT64_C(-62167219200000)
#define MS_MAX INT64_C(253402300799999)

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* "YYYY-MM-DDTHH:MM:SS.mmmZ" with a seconds field below 60. */
static int canonical(const char *s)
{
    static const char shape[] = "dddd-dd-ddTdd:dd:dd.dddZ";
    size_t i;

    if (strlen(s) != sizeof shape - 1)
        return 0;
    for (i = 0; shape[i] != '\0'; i++) {
        if (shape[i] == 'd' ? !is_digit(s[i]) : s[i] != shape[i])
            return 0;
    }
    return s[17] < '6';
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    char buf[CLOCK_RFC3339_LEN];
    int64_t ms = INT64_C(0x5a5a5a5a5a5a5a5a), back = 0;
    int err;

    if (!s)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';

    if (size >= sizeof ms) {
        memcpy(&ms, data, sizeof ms);
        memset(buf, 0x5a, sizeof buf);
        clock_format_rfc3339(ms, buf, sizeof buf);
        CHECK(memchr(buf, '\0', sizeof buf) != NULL);
        ms = INT64_C(0x5a5a5a5a5a5a5a5a);
    }

    err = clock_parse_rfc3339(s, &ms);
    CHECK(err == 0 || err == -EINVAL);
    if (err < 0) {
        CHECK(ms == INT64_C(0x5a5a5a5a5a5a5a5a));
        goto out;
    }
    memset(buf, 0, sizeof buf);
    clock_format_rfc3339(ms, buf, sizeof buf);
    CHECK(memchr(buf, '\0', sizeof buf) != NULL);
    CHECK(ms >= MS_MIN && ms <= MS_MAX); /* else it cannot round-trip */
    err = clock_parse_rfc3339(buf, &back);
    CHECK(err == 0);
    CHECK(back == ms);
    if (canonical(s))
        CHECK(strcmp(buf, s) == 0);
out:
    free(s);
    return 0;
}
