/* SPDX-License-Identifier: MIT */
/*
 * The sweeper thread: every interval it removes expired entries from every
 * tier in bounded batches (cache_sweep) and runs cache_maintain (probes of
 * degraded tiers, L3 replay, L2 compaction). It sleeps on a condition
 * variable so sweeper_stop() wakes it at once.
 */
#ifndef STORAGE_SWEEPER_H
#define STORAGE_SWEEPER_H

#include <stdint.h>

struct cache;
struct sweeper;

/* Start the thread. interval_ms >= 1. 0 and *out, or -errno. */
int sweeper_start(struct cache *c, int64_t interval_ms, struct sweeper **out);
/* Wake the thread now (tests). */
void sweeper_kick(struct sweeper *s);
/* Stop and join. NULL-safe. */
void sweeper_stop(struct sweeper *s);

#endif
