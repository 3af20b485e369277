/* SPDX-License-Identifier: MIT */
/*
 * One interface, three implementations (l1_mem, l2_jsonl, l3_sqlite), like
 * curl's vtls backends. The cache manager only talks to tiers through this
 * ops table, so tests can also plug in a fault-injecting fake tier.
 *
 * Contract for every implementation:
 *  - A tier stores entries by key and never sees plaintext credentials.
 *  - Entries passed in are borrowed: the tier takes its own reference (L1)
 *    or serialises the entry (L2, L3). Entries handed out are new
 *    references the caller unrefs; never pointers into tier internals.
 *  - Every op is thread-safe; each tier locks internally and documents its
 *    locks. No op calls back into the manager while holding a tier lock,
 *    except the scan/sample callbacks, which are documented per tier as
 *    called without a lock held.
 *  - Returns: 0; -ENOENT (miss / absent); -EBADMSG (the stored record was
 *    corrupt: the tier has already removed it, logged a WARNING naming the
 *    key and the reason, and counted it in its corrupt counter); -ENOMEM;
 *    -ENOSPC, -EACCES, -EIO, -EBUSY, -EROFS (tier failures that count
 *    towards degradation in the manager).
 *  - f and cb must be non-NULL for scan and sample (-EINVAL otherwise).
 *  - A tier does not judge expiry on get (the manager does, lazily); sweep
 *    removes what is expired at the given time.
 */
#ifndef STORAGE_TIER_H
#define STORAGE_TIER_H

#include <stddef.h>
#include <stdint.h>

#include "storage/entry.h"

/* Filter for scan and sample. Fields at their "any" value match all. */
struct tier_filter {
    int64_t now_ms;        /* entries with expires_at <= now_ms never match */
    int health;            /* -1 any, else an enum entry_health value */
    int exclude_unhealthy; /* 1: health must not be unhealthy (pick) */
    const char *source;    /* NULL: any */
    int scheme;            /* -1: any, else enum entry_scheme */
    const char *country;   /* NULL: any; uppercase two letters */
    int anonymity;         /* -1: any, else enum entry_anonymity */
    int64_t max_latency_ms;/* -1: any; else only entries with a known latency
                              <= this match */
};

/* Initialise f to match every unexpired entry at now_ms. */
void tier_filter_init(struct tier_filter *f, int64_t now_ms);
/* 1 if e matches f. */
int tier_filter_match(const struct tier_filter *f, const struct entry *e);

/* Called per entry; e is borrowed for the call. Return 0 to go on, non-zero
 * to stop (that value is returned by the op). */
typedef int (*tier_entry_cb)(void *arg, struct entry *e);

/* Flags for put. */
#define TIER_PUT_NOWAIT 0x1 /* L3: enqueue and return before the commit */
#define TIER_PUT_NOTOUCH 0x2 /* do not move the entry to the MRU position */
/* put only: if the key is already present (any version) do nothing and
 * return 0. Honoured by L2 (used to demote L1 victims without overwriting
 * a newer write-through); L1 and L3 ignore it (plain insert or replace). */
#define TIER_PUT_IFABSENT 0x4

struct tier;

struct tier_ops {
    const char *name; /* "l1", "l2", "l3" */

    /* Look up key. Moves the entry to the most recently used position.
     * 0 and a new reference in *out, or -ENOENT, -EBADMSG, failure. */
    int (*get)(struct tier *t, const char *key, struct entry **out);

    /* Insert or replace e (the tier keeps its own copy/reference). A bounded
     * tier that is over capacity removes its least recently used entry and,
     * if victim is non-NULL, returns it in *victim (new reference) so the
     * manager can demote it; else the victim is dropped. L3 waits for the
     * commit unless TIER_PUT_NOWAIT. */
    int (*put)(struct tier *t, struct entry *e, unsigned flags,
               struct entry **victim);

    /* Insert or replace n entries; L3 commits them in one transaction and
     * returns after the commit. Victims of bounded tiers are dropped and
     * counted in *n_victims (may be NULL). */
    int (*put_batch)(struct tier *t, struct entry *const *es, size_t n,
                     size_t *n_victims);

    /* Remove key: 0, or -ENOENT if absent, or failure. */
    int (*del)(struct tier *t, const char *key);

    /* Visit up to max entries matching f with key > after (after may be ""),
     * in ascending key order, without touching LRU order. Returns 0, the
     * callback's non-zero value, or failure. */
    int (*scan)(struct tier *t, const struct tier_filter *f, const char *after,
                size_t max, tier_entry_cb cb, void *arg);

    /* Visit up to max entries matching f chosen at random (without
     * replacement, any order); must not scan the whole tier for large tiers.
     * seed makes the choice reproducible in tests. Same returns as scan. */
    int (*sample)(struct tier *t, const struct tier_filter *f, size_t max,
                  uint64_t seed, tier_entry_cb cb, void *arg);

    /* Remove at most max entries expired at now_ms; *removed gets the count.
     * Must hold no lock across disk I/O for long: bounded batches. */
    int (*sweep)(struct tier *t, int64_t now_ms, size_t max, size_t *removed);

    /* Remove everything; *removed (may be NULL) gets the count. */
    int (*clear)(struct tier *t, size_t *removed);

    /* Number of entries currently stored (expired ones included until swept). */
    size_t (*size)(struct tier *t);

    /* Number of records found corrupt and removed since open. */
    uint64_t (*corrupt_count)(struct tier *t);

    /* Cheap health check used to re-enable a degraded tier: 0 if usable. */
    int (*probe)(struct tier *t);

    /* Housekeeping hook called by the sweeper thread (L2: compaction;
     * L3: WAL checkpoint). May be NULL. */
    int (*maintain)(struct tier *t);

    /* Flush and free. NULL-safe through tier_close(). */
    void (*close)(struct tier *t);
};

/* Every implementation embeds this as its first member. */
struct tier {
    const struct tier_ops *ops;
};

static inline void tier_close(struct tier *t)
{
    if (t)
        t->ops->close(t);
}

#endif
