/* SPDX-License-Identifier: MIT */
/*
 * The sweeper thread (see sweeper.h). One round: cache_sweep() in batches
 * of SWEEP_BATCH until a call removes less than a batch (every tier is then
 * clean) or ROUND_MAX entries were removed, then cache_maintain()
 * (probes of degraded tiers, replay of pending L3 writes, tier
 * housekeeping). A round that stopped at ROUND_MAX is followed at once by
 * the next one (no wait for the interval), so a mass expiry is removed
 * within seconds (SPEC: within 60 s) while the cap still gives
 * maintenance and stop requests a turn between rounds. The first round runs
 * at once on start, so entries that expired while the service was down are
 * removed soon after start.
 *
 * Waiting uses a condition variable on CLOCK_MONOTONIC, so wall-clock jumps
 * (and the tests' fake wall clock) do not change the period, and
 * sweeper_kick()/sweeper_stop() wake it at once.
 *
 * Thread-safety: mu guards stop and kicked (and nothing else; it is never
 * held while the cache is called). Ownership: the sweeper borrows the
 * cache, which must outlive sweeper_stop().
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

#include "common/clock.h"
#include "storage/cache.h"
#include "storage/sweeper.h"

#define LOG_MODULE "sweeper"
#include "common/log.h"

#define SWEEP_BATCH 1000u
#define ROUND_MAX   100000u

struct sweeper {
    struct cache *c;
    int64_t interval_ms;
    pthread_t thread;
    pthread_mutex_t mu; /* guards stop, kicked; leaf lock */
    pthread_cond_t cv;  /* CLOCK_MONOTONIC */
    bool stop;
    bool kicked;
};

/* One round; true if it stopped at ROUND_MAX (more may be expired). */
static bool round_once(struct cache *c)
{
    size_t total = 0, n;

    do {
        n = cache_sweep(c, clock_now_ms(), SWEEP_BATCH);
        total += n;
    } while (n >= SWEEP_BATCH && total < ROUND_MAX);
    if (total)
        log_debug("swept %zu expired entries", total);
    cache_maintain(c);
    return n >= SWEEP_BATCH;
}

static void deadline_after(struct timespec *ts, int64_t ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += (time_t)(ms / 1000);
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static void *run(void *arg)
{
    struct sweeper *s = arg;

    for (;;) {
        struct timespec deadline;
        bool capped = round_once(s->c);

        deadline_after(&deadline, s->interval_ms);
        pthread_mutex_lock(&s->mu);
        /* A capped round: go on at once, unless asked to stop. */
        while (!capped && !s->stop && !s->kicked) {
            int err = pthread_cond_timedwait(&s->cv, &s->mu, &deadline);
            if (err == ETIMEDOUT)
                break;
        }
        s->kicked = false;
        if (s->stop) {
            pthread_mutex_unlock(&s->mu);
            break;
        }
        pthread_mutex_unlock(&s->mu);
    }
    return NULL;
}

int sweeper_start(struct cache *c, int64_t interval_ms, struct sweeper **out)
{
    struct sweeper *s;
    pthread_condattr_t ca;
    int err;

    if (!c || interval_ms < 1 || !out)
        return -EINVAL;
    s = calloc(1, sizeof(*s));
    if (!s)
        return -ENOMEM;
    s->c = c;
    s->interval_ms = interval_ms;
    err = pthread_mutex_init(&s->mu, NULL);
    if (err)
        goto fail_free;
    err = pthread_condattr_init(&ca);
    if (err)
        goto fail_mutex;
    err = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    if (!err)
        err = pthread_cond_init(&s->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (err)
        goto fail_mutex;
    err = pthread_create(&s->thread, NULL, run, s);
    if (err)
        goto fail_cond;
    *out = s;
    return 0;
fail_cond:
    pthread_cond_destroy(&s->cv);
fail_mutex:
    pthread_mutex_destroy(&s->mu);
fail_free:
    free(s);
    log_error_errno(err, "cannot start the sweeper thread");
    return -err;
}

void sweeper_kick(struct sweeper *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    s->kicked = true;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

void sweeper_stop(struct sweeper *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
}
