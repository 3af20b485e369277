/* SPDX-License-Identifier: MIT */
/*
 * The cache manager: policy over three tiers (SPEC §3).
 *
 * Reads go L1 -> L2 -> L3; a hit below L1 promotes the entry into every tier
 * above it. Writes go to L1, are committed durably in L3 before returning,
 * then written through to L2. Overflow of L1/L2 demotes the least recently
 * used entry one tier down. Expired entries are misses and are removed from
 * every tier (lazy expiry, reason ttl); the sweeper calls cache_sweep().
 * Health failures at the threshold remove the entry everywhere (reason
 * health). A tier failing 3 times in a row is marked degraded (ERROR log),
 * skipped, and probed by cache_maintain() until it works again; writes
 * accepted while L3 is degraded are queued and replayed into L3 when it
 * recovers. L1 never degrades.
 *
 * Tokens read back from L2/L3 must open with a key of the ring (the
 * plaintext is wiped at once); a token no key opens is corruption: evicted,
 * counted, WARNING once.
 *
 * Thread-safety: every function may be called from any thread; counters
 * are _Atomic and tiers lock internally. Readers (get, list, pick), sweep
 * and maintain hold no manager lock while calling a tier. Writes (upsert,
 * health report, delete, clear) hold a per-stripe writer mutex (keys hash
 * to NFENCE stripes) around their whole read-merge-write, tier calls
 * included: writes to one key must reach L1, L2 and L3 in one order, and a
 * read-modify-write (failure_count++) must not lose updates. Lock order:
 * the writer gate (a rwlock: shared by ordinary writes; exclusive for clear
 * and for batches spanning more than 32 stripes, which then take no stripe)
 * -> writer stripes in ascending index order -> the pending-L3 queue mutex
 * (a leaf among the manager's locks) -> the tiers' internal locks.
 * Ownership: entries returned are new references (caller unrefs); entries
 * passed in are borrowed.
 */
#ifndef STORAGE_CACHE_H
#define STORAGE_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "storage/crypto.h"
#include "storage/entry.h"
#include "storage/tier.h"

enum cache_tier { CACHE_L1 = 0, CACHE_L2 = 1, CACHE_L3 = 2, CACHE_NTIERS = 3 };

#define CACHE_TIER_MASK(t) (1u << (t))
#define CACHE_ALL_TIERS 0x7u

enum cache_evict_reason {
    CACHE_EVICT_LRU = 0,
    CACHE_EVICT_TTL = 1,
    CACHE_EVICT_HEALTH = 2,
    CACHE_EVICT_CORRUPTION = 3,
    CACHE_NREASONS = 4,
};

struct cache_source_ttl {
    char name[ENTRY_SOURCE_MAX + 1];
    int64_t ttl_seconds;
};

struct cache_config {
    const char *data_dir;
    size_t l1_capacity;          /* >= 1 */
    size_t l2_capacity;          /* >= 1 */
    size_t l3_capacity;          /* 0 = unlimited */
    uint32_t failure_threshold;  /* >= 1 */
    int64_t default_ttl;         /* seconds, >= 1 */
    const struct cache_source_ttl *source_ttls; /* borrowed, may be NULL */
    size_t n_source_ttls;
    /* Borrowed; may be NULL (no key: credentials are never persisted). */
    const struct crypto_keyring *ring;
};

struct cache;

/* Open the three real tiers under cfg->data_dir (which must exist and be
 * locked by the caller). Returns 0 and a new cache, or -errno (the tier that
 * failed is logged). */
int cache_open(const struct cache_config *cfg, struct cache **out);

/* Build a cache over given tiers (tests: fake tiers). Takes ownership of the
 * tiers (closed by cache_close, or at once if this fails). cfg->l2_capacity
 * must equal the L2 tier's capacity. l2 and l3 may be NULL (tier absent). */
int cache_new_with_tiers(const struct cache_config *cfg, struct tier *l1,
                         struct tier *l2, struct tier *l3, struct cache **out);

/* Drain queued writes, close the tiers, free. NULL-safe. */
void cache_close(struct cache *c);

/* TTL for source (per-source table, else the default). */
int64_t cache_ttl_for_source(const struct cache *c, const char *source);

/*
 * Look key up, counting an access (access_count++, last_accessed = now) and
 * promoting on a lower-tier hit. 0 and a new reference in *out, with the
 * tier that served it in *served (may be NULL); -ENOENT on miss or expiry.
 */
int cache_get(struct cache *c, const char *key, struct entry **out,
              enum cache_tier *served);

/* Fields an upsert carries; the others are kept from the existing entry. */
#define CACHE_F_CREDENTIALS 0x001
#define CACHE_F_SOURCE 0x002
#define CACHE_F_FETCH_TIME 0x004
#define CACHE_F_TTL 0x008
#define CACHE_F_HEALTH 0x010     /* health_status and failure_count */
#define CACHE_F_COUNTRY 0x020
#define CACHE_F_ANONYMITY 0x040
#define CACHE_F_LATENCY 0x080
#define CACHE_F_ACCESS 0x100     /* access stats (import) */
#define CACHE_F_ALL 0x1ff

/* Upsert flags. */
#define CACHE_UPSERT_NEWER_ONLY 0x1 /* import: only a strictly newer
                                       fetch_time replaces an existing entry */

enum cache_outcome {
    CACHE_CREATED = 0,
    CACHE_UPDATED = 1,
    CACHE_UNCHANGED = 2, /* NEWER_ONLY and not newer */
};

struct cache_item {
    struct entry *entry;  /* borrowed; complete (key, url, expiry computed) */
    unsigned fields;      /* CACHE_F_* the writer supplied */
    /* Results: */
    int err;              /* 0 or -errno for this item */
    enum cache_outcome outcome;
};

/*
 * Upsert items (n >= 1). For each item an existing entry (in any tier,
 * expired ones count as absent) is merged: the fields in item->fields come
 * from the item, access statistics and (unless CACHE_F_HEALTH) health are
 * kept. All items are put in L1 and committed to L3 in one transaction
 * (group commit), then written through to L2. Returns 0 when the batch was
 * processed (per-item results in items[i].err/outcome) and *tiers_mask
 * (may be NULL) says which tiers hold the writes (L3 absent when degraded).
 * An entry with ttl 0 is accepted, never stored, and counted as a ttl
 * eviction. Duplicate keys inside one batch: the last one wins.
 */
int cache_upsert(struct cache *c, struct cache_item *items, size_t n,
                 unsigned flags, unsigned *tiers_mask);

/* Remove key from every tier: 0 or -ENOENT. Counts no eviction. */
int cache_delete(struct cache *c, const char *key);

/*
 * Health report. success: failure_count = 0, healthy. failure:
 * failure_count++, unhealthy; at the threshold the entry is removed from
 * every tier (reason health) and *evicted = true. 0 and (unless evicted) the
 * updated entry as a new reference in *out; -ENOENT if absent or expired.
 * Does not count as an access.
 */
int cache_report_health(struct cache *c, const char *key, bool success,
                        struct entry **out, bool *evicted);

/* Remove everything from every tier; *removed = distinct entries removed.
 * Counts no eviction. */
int cache_clear(struct cache *c, size_t *removed);

/*
 * List unexpired entries matching f with key > after, ascending by key,
 * merged over tiers (tier_mask: CACHE_TIER_MASK bits, CACHE_ALL_TIERS for
 * all) without counting accesses or promoting. Calls cb for at most limit
 * entries. *more = true if entries remain after the last one visited.
 */
int cache_list(struct cache *c, const struct tier_filter *f, unsigned tier_mask,
               const char *after, size_t limit, tier_entry_cb cb, void *arg,
               bool *more);

/*
 * Pick up to count distinct unexpired, not-unhealthy entries matching f, at
 * random weighted toward low failure_count and low latency (weight =
 * 1 / ((1 + failure_count) * (1 + latency_ms / 1000)), unknown latency
 * counts as 1000 ms). rng_seed 0 = random. out must hold count pointers;
 * *n gets how many were found (new references). Does not count accesses.
 */
int cache_pick(struct cache *c, const struct tier_filter *f, size_t count,
               uint64_t rng_seed, struct entry **out, size_t *n);

/* Sweep: remove up to max expired entries per tier (reason ttl). Returns the
 * total removed. */
size_t cache_sweep(struct cache *c, int64_t now_ms, size_t max);

/* Probe degraded tiers, replay queued L3 writes, run tier maintenance.
 * Called periodically by the sweeper thread. */
void cache_maintain(struct cache *c);

/* Warming flag: while set, /readyz is 503 and pick answers 503. */
void cache_set_warming(struct cache *c, bool warming);
bool cache_is_warming(const struct cache *c);

/* Record a tier operation's outcome (used internally; exposed for the fake
 * tier tests): err 0 resets the consecutive-failure count. */
void cache_note_tier_result(struct cache *c, enum cache_tier t, int err);

struct cache_tier_stats {
    bool present;
    uint64_t hits, misses;
    uint64_t size;
    uint64_t capacity;     /* configured; 0 = unlimited */
    uint64_t evictions[CACHE_NREASONS];
    uint64_t promotions;   /* entries promoted INTO this tier */
    uint64_t demotions;    /* entries demoted OUT of this tier */
    bool degraded;
    uint32_t consecutive_failures;
    uint64_t failures_total;
};

struct cache_stats {
    struct cache_tier_stats tier[CACHE_NTIERS];
    uint64_t lookups;        /* cache_get calls = hits overall + misses */
    uint64_t hits, misses;   /* overall: served by any tier / by none */
    uint64_t writes;         /* items upserted */
    uint64_t pending_l3;     /* writes waiting for L3 to recover */
    bool warming;
};

/* Snapshot of the counters (atomic reads; cheap). */
void cache_stats_snapshot(struct cache *c, struct cache_stats *out);

const char *cache_tier_name(enum cache_tier t);
const char *cache_reason_name(enum cache_evict_reason r);

#endif
