/* SPDX-License-Identifier: MIT */
/*
 * Clocks. The wall clock can be replaced by a fake one in tests so that TTL
 * logic runs without sleeping. The fake is an _Atomic pair (enabled flag and
 * value), so reading it from many threads is race-free; tests install it
 * before starting threads.
 */
#include "config.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "common/clock.h"

static _Atomic bool fake_enabled;
static _Atomic int64_t fake_ms;

int64_t clock_now_ms(void)
{
    struct timespec ts;

    if (atomic_load_explicit(&fake_enabled, memory_order_relaxed))
        return atomic_load_explicit(&fake_ms, memory_order_relaxed);
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t clock_mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void clock_set_fake(int64_t ms)
{
    atomic_store(&fake_ms, ms);
    atomic_store(&fake_enabled, true);
}

void clock_advance_ms(int64_t delta)
{
    atomic_fetch_add(&fake_ms, delta);
}

void clock_clear_fake(void)
{
    atomic_store(&fake_enabled, false);
}

char *clock_format_rfc3339(int64_t ms, char *buf, size_t len)
{
    struct tm tm;
    time_t secs;
    int64_t frac;

    frac = ms % 1000;
    secs = (time_t)(ms / 1000);
    if (frac < 0) {
        frac += 1000;
        secs -= 1;
    }
    if (!gmtime_r(&secs, &tm)) {
        snprintf(buf, len, "1970-01-01T00:00:00.000Z");
        return buf;
    }
    snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
             tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
             tm.tm_min, tm.tm_sec, (int)frac);
    return buf;
}

/* Read exactly n decimal digits from *p into *out; advance *p. */
static int digits(const char **p, int n, int *out)
{
    int v = 0;

    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9')
            return -EINVAL;
        v = v * 10 + (c - '0');
    }
    *p += n;
    *out = v;
    return 0;
}

static int days_in_month(int year, int mon)
{
    static const int dm[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;

    return mon == 2 && leap ? 29 : dm[mon - 1];
}

/* Days from 1970-01-01 to y-m-d (proleptic Gregorian; Howard Hinnant). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    int64_t era, yoe, doy, doe;

    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

int clock_parse_rfc3339(const char *s, int64_t *ms)
{
    int year, mon, day, hh, mm, ss, frac_ms = 0, off_min = 0;
    const char *p = s;
    int64_t t;

    if (!s)
        return -EINVAL;
    if (digits(&p, 4, &year) || *p++ != '-' || digits(&p, 2, &mon) ||
        *p++ != '-' || digits(&p, 2, &day))
        return -EINVAL;
    if (*p != 'T' && *p != 't' && *p != ' ')
        return -EINVAL;
    p++;
    if (digits(&p, 2, &hh) || *p++ != ':' || digits(&p, 2, &mm) ||
        *p++ != ':' || digits(&p, 2, &ss))
        return -EINVAL;
    if (*p == '.') {
        int n = 0;
        p++;
        if (*p < '0' || *p > '9')
            return -EINVAL;
        while (*p >= '0' && *p <= '9') {
            if (n < 3)
                frac_ms = frac_ms * 10 + (*p - '0');
            n++;
            p++;
        }
        for (; n < 3; n++)
            frac_ms *= 10;
    }
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p == '-' ? -1 : 1, oh, om;
        p++;
        if (digits(&p, 2, &oh) || *p++ != ':' || digits(&p, 2, &om) ||
            oh > 23 || om > 59)
            return -EINVAL;
        off_min = sign * (oh * 60 + om);
    }
    if (*p != '\0')
        return -EINVAL;
    if (mon < 1 || mon > 12 || day < 1 || day > days_in_month(year, mon) ||
        hh > 23 || mm > 59 || ss > 60)
        return -EINVAL;
    if (ss == 60)
        ss = 59; /* leap second: clamp */
    t = days_from_civil(year, mon, day) * 86400 + hh * 3600 + mm * 60 + ss;
    t -= (int64_t)off_min * 60;
    t = t * 1000 + frac_ms;
    /* An offset can move the instant outside years 0000..9999, which could
     * then not be written back as RFC 3339: refuse it here. */
    if (t < INT64_C(-62167219200000) || t > INT64_C(253402300799999))
        return -EINVAL;
    *ms = t;
    return 0;
}
