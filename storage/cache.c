/* SPDX-License-Identifier: MIT */
/*
 * The cache manager: policy over the three tiers (SPEC §3). See cache.h for
 * the contract; this comment explains how it is kept.
 *
 * Reads: L1, L2, the pending-L3 queue, L3. The first unexpired, valid copy
 * is served. A copy that is expired is removed from its tier (counted as a
 * ttl eviction of that tier) and the walk goes on, so a stale copy above a
 * fresh one never hides it; normally every copy expires at the same time
 * and the walk removes them all. A copy read back from L2/L3 whose token no
 * configured key verifies is corruption: removed, counted, and the walk
 * goes on. A hit below L1 promotes into every tier above it.
 *
 * Counters (documented for /v1/stats and /metrics):
 *  - tier hits: lookups that tier served; tier misses: lookups that
 *    consulted the tier and did not get a usable copy from it (absent,
 *    expired, corrupt, failed). So L2 hits + L2 misses = L1 misses while L2
 *    is up, and an L2 hit is one overall hit, never an overall miss.
 *    Overall hits = sum of tier hits; lookups = hits + misses, always.
 *  - evictions{lru}: entries pushed out of a bounded tier by its capacity.
 *    demotions: entries moved down out of a tier: an L1 victim written into
 *    L2, or an L2 victim that stays available in L3 (it was written through
 *    to L3). promotions: entries copied up INTO a tier by a lower-tier hit.
 *    An L1 victim of a batch write whose key is in that batch is counted as
 *    an lru eviction of L1 but not demoted (the write-through puts it in L2
 *    anyway); so is every L1 victim of a batch at least as large as L2
 *    (which would push it straight out of L2 again).
 *  - evictions{ttl}: counted by the tier that removed the expired copy
 *    (lazy expiry or sweep). A write with ttl 0 (or already expired) counts
 *    one ttl eviction in L1 plus one in each lower tier that dropped an old
 *    copy of the key.
 *  - evictions{health}: one per tier that held the entry at the threshold.
 *    evictions{corruption}: one per corrupt copy removed (-EBADMSG from a
 *    tier, or a token no key verifies).
 *
 * Cross-tier ordering between readers and writers ("fences"). Readers hold
 * no lock while calling a tier (writers serialise among themselves on the
 * wmu stripes, see Thread-safety), so a reader promoting an old copy from L3
 * could overwrite, in L1, the new version a concurrent writer just put
 * there. Each key hashes to one of NFENCE fence words, each holding
 * (completed writes << 32) | active writers. Every mutation (upsert,
 * health, delete, clear) brackets its tier calls with fence_begin/fence_end.
 * A reader snapshots the word before it looks below L1; it promotes only
 * if no writer was active then, and if the word changed by the time its
 * puts are done it removes what it promoted (a cache copy; the writer's
 * version is in L3). Lazy expiry must not delete from L3 a fresh version a
 * writer just committed: the reader announces the delete (dels++) and
 * re-reads the fence word, the writer bumps the fence word and then reads
 * dels (both seq_cst: Dekker), so either the reader sees the writer and
 * skips its delete (the sweeper removes the expired row later) or the
 * writer sees the delete in flight, waits for it after its commit and
 * writes its entries again.
 *
 * Pending L3 writes. A write whose L3 part fails (or while L3 is degraded)
 * is accepted in L1/L2 and its L3 operation (put, delete or clear) goes to
 * the pending map: last operation per key wins, a clear drops what was
 * queued before it. Reads and lists consult the map between L2 and L3 (it
 * is the newest state L3 should have). Writers do not write L3 directly
 * while the map is not empty: the first one that gets the replay flag
 * drains the map into L3 (the queued clear first, then each key's last
 * operation, puts in batches); the others wait for that replay to end
 * (bounded: REPLAY_WAIT_MS, then they queue behind it) and write L3
 * directly once the map is empty, so a replayed old value can never
 * overwrite a newer direct write and a healthy L3 is not bypassed.
 * cache_maintain drains it too.
 *
 * Writes (upsert): each distinct key of the batch is looked up (no access
 * counted) and merged as if the items were written one after the other;
 * the final versions go to L1 (victims demoted to L2 unless they are in
 * the batch), then to L3 in one put_batch (durable), then through to L2.
 * A batch larger than L2 writes only its last l2_capacity entries to L2
 * (the rest would be evicted at once) and deletes older L2 copies of the
 * others. A version that is already expired (ttl 0) is not stored: every
 * old copy is removed. Health reports update the tiers that hold the entry
 * and L3 durably, but do not pull it into L1 (a report is not an access);
 * at the threshold the entry is removed everywhere. Delete and health
 * treat an expired entry as absent (-ENOENT).
 *
 * Lists merge the key-ordered scans of the requested tiers (plus the
 * pending map), keeping the upper tier's copy of a key. Pick samples L1
 * (hot) and L3 (everything; L2 while L3 is down), dedupes, and draws
 * without replacement with probability proportional to the weight.
 *
 * L2 consistency. L2 is a cache of L3. When an L2 write fails the key is
 * deleted from L2 (best effort) so a stale copy is not served; a degraded L2
 * is re-enabled only after a successful probe and a clear (when L3 holds
 * everything, i.e. L3 is up with no pending writes).
 *
 * Access statistics live on the (immutable otherwise) entry as atomics and
 * travel with it: into L2 on demotion (only when L2 has no copy of the key;
 * a copy there is kept with its own statistics, since it may be a newer
 * version), into L3 on writes and health reports,
 * and at cache_close L1's statistics are written back to L3/L2 for entries
 * whose stored version is unchanged. A crash loses the statistics gathered
 * since the last write of an entry.
 *
 * Thread-safety: every function may be called from any thread. Counters
 * are _Atomic (hits/misses striped per thread to keep the L1 hit path free
 * of a shared read-modify-write). Locks, in the order they are taken:
 *  0. wgate, a rwlock: every write takes it shared before its stripes;
 *     clear, and a batch spanning more than WSET_MAX_STRIPES stripes, take
 *     it exclusively instead of any stripe (so no thread ever holds more
 *     than WSET_MAX_STRIPES + 1 locks).
 *  1. wmu[NFENCE], the writer mutexes, striped like the fences (same key
 *     hash). wmu[i] serialises the writes (upsert, health report, delete,
 *     clear) to the keys of stripe i: each one holds it around its whole
 *     read-merge-write, so two writes to one key never interleave (no lost
 *     read-modify-write such as a failure_count increment, and the tiers
 *     receive one key's versions in the same order: L1, L2 and L3 end with
 *     the same version). An upsert locks the distinct stripes of its batch
 *     in ascending index order (or takes wgate exclusively, see 0); clear
 *     takes wgate exclusively; health and delete lock one. This is the one place where the manager holds a
 *     lock while calling tiers: per-key ordering of writes across tiers
 *     needs it, and the fences alone only tell readers about writers.
 *     Readers (get, list, pick), sweep, maintain, the pending-queue replay
 *     and the L3 writer thread never take wmu, so a slow write only delays
 *     writes to the same stripes.
 *  2. pmu (the pending map), a leaf among the manager's locks: no tier is
 *     called and no other manager lock is taken while it is held.
 *  3. the tiers' internal locks (taken inside tier ops).
 * Entries that may hold their last reference are released after
 * unlocking. Callbacks run with no manager lock held.
 *
 * Ownership: entries returned are new references; entries passed in are
 * borrowed (upsert copies them with entry_dup before anything is stored).
 * The tiers given to cache_new_with_tiers belong to the cache from the call
 * on, also when it fails.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

#include "common/clock.h"
#include "common/svc.h"
#include "storage/cache.h"
#include "storage/l1_mem.h"
#include "storage/l2_jsonl.h"
#include "storage/l3_sqlite.h"

#define LOG_MODULE "cache"
#include "common/log.h"

#define DEGRADE_AFTER   3u            /* consecutive failures (SPEC §3) */
#define PENDING_MAX     1000000u      /* queued L3 operations */
#define REPLAY_BATCH    1024u         /* entries per replayed L3 transaction */
#define NFENCE          1024u         /* fence words (power of two) */
#define FENCE_ACTIVE    0xffffffffULL /* low half: active writers */
#define FENCE_END       ((1ULL << 32) - 1) /* completed + 1, active - 1 */
#define DEL_WAIT_SPINS  50000              /* ~5 s of 100 µs naps */
#define REPLAY_WAIT_MS  1000               /* a writer waits for a replay */
#define PC_STRIPES      8u
#define PICK_SAMPLE_MIN 64u
#define PICK_SAMPLE_MAX 1024u
#define WRITEBACK_BATCH 1024u

/* Pseudo tier index for the pending queue in the read walk. */
#define FROM_PENDING 3

/* ------------------------------------------------------------------ */
/* Striped counters: one cache line per stripe, a thread always uses the
 * same stripe. Relaxed: they are statistics. */

struct pcounter {
    struct {
        _Alignas(64) _Atomic uint64_t v;
    } s[PC_STRIPES];
};

static _Atomic unsigned pc_next_slot;
static _Thread_local unsigned pc_slot; /* stripe + 1; 0 = not yet chosen */

static unsigned thread_slot(void)
{
    if (pc_slot == 0)
        pc_slot =
            atomic_fetch_add_explicit(&pc_next_slot, 1, memory_order_relaxed) %
                PC_STRIPES +
            1;
    return pc_slot - 1;
}

static void pc_inc(struct pcounter *p)
{
    atomic_fetch_add_explicit(&p->s[thread_slot()].v, 1, memory_order_relaxed);
}

static uint64_t pc_sum(struct pcounter *p)
{
    uint64_t sum = 0;
    for (unsigned i = 0; i < PC_STRIPES; i++)
        sum += atomic_load_explicit(&p->s[i].v, memory_order_relaxed);
    return sum;
}

static void ctr_add(_Atomic uint64_t *c, uint64_t n)
{
    if (n)
        atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

/* ------------------------------------------------------------------ */

struct tstate {
    struct tier *t; /* NULL: tier absent */
    struct pcounter hits, misses;
    _Atomic uint64_t evictions[CACHE_NREASONS];
    _Atomic uint64_t promotions, demotions;
    _Atomic uint64_t failures_total;
    _Atomic uint32_t consecutive;
    _Atomic bool degraded;
};

struct fence {
    _Atomic uint64_t word; /* (completed writes << 32) | active writers */
    _Atomic uint32_t dels; /* lazy L3 expiry deletes in flight */
};

struct fence_ticket {
    struct fence *f;
    bool dels_in_flight; /* a lazy L3 delete was in flight at begin */
};

/* Pending L3 operation: the newest for its key. e NULL = delete. */
struct pop {
    struct pop *next;
    struct entry *e;
    char key[ENTRY_KEY_LEN + 1];
};

struct pmap {
    struct pop **b;
    size_t nb; /* 0 or a power of two */
    size_t n;
    bool clear; /* an L3 clear precedes these operations */
};

struct cache {
    struct tstate ts[CACHE_NTIERS];
    struct pcounter misses; /* overall */
    _Atomic uint64_t writes;
    _Atomic bool warming;
    _Atomic bool warned_token;

    uint32_t failure_threshold;
    int64_t default_ttl;
    size_t l2_cap; /* cfg->l2_capacity; 0 = unknown (no shortcut) */
    size_t caps[CACHE_NTIERS]; /* configured capacities, for stats */
    struct cache_source_ttl *source_ttls; /* own copy */
    size_t n_source_ttls;
    const struct crypto_keyring *ring; /* borrowed */

    struct fence fences[NFENCE];

    /* wmu[i] serialises writes to the keys of stripe i (see the file
     * comment for the order: wmu ascending -> pmu -> tier locks). */
    pthread_mutex_t wmu[NFENCE];
    /* wgate: shared by every write that locks stripes, exclusive for clear
     * and for batches spanning more than WSET_MAX_STRIPES stripes. Taken
     * before any wmu. */
    pthread_rwlock_t wgate;

    /* pmu guards cur and inflight (leaf lock). inflight is the map being
     * replayed: only the replayer (holder of `replaying`) changes it, with
     * pmu held; readers look at it with pmu held. */
    pthread_mutex_t pmu;
    struct pmap cur, inflight;
    _Atomic size_t pending_n; /* operations in cur + inflight (+ clears) */
    _Atomic bool replaying;
    _Atomic uint64_t pending_dropped;
    _Atomic bool warned_pending_full;
};

/* ------------------------------------------------------------------ */
/* Filters */

void tier_filter_init(struct tier_filter *f, int64_t now_ms)
{
    if (!f)
        return;
    f->now_ms = now_ms;
    f->health = -1;
    f->exclude_unhealthy = 0;
    f->source = NULL;
    f->scheme = -1;
    f->country = NULL;
    f->anonymity = -1;
    f->max_latency_ms = -1;
}

int tier_filter_match(const struct tier_filter *f, const struct entry *e)
{
    if (!f || !e)
        return 0;
    if (e->expires_at <= f->now_ms)
        return 0;
    if (f->health >= 0 && (int)e->health != f->health)
        return 0;
    if (f->exclude_unhealthy && e->health == ENTRY_HEALTH_UNHEALTHY)
        return 0;
    if (f->source && (!e->source || strcmp(e->source, f->source) != 0))
        return 0;
    if (f->scheme >= 0 && (int)e->scheme != f->scheme)
        return 0;
    if (f->country && strcasecmp(e->country, f->country) != 0)
        return 0;
    if (f->anonymity >= 0 && (int)e->anonymity != f->anonymity)
        return 0;
    if (f->max_latency_ms >= 0 &&
        (e->latency_ms < 0 || e->latency_ms > f->max_latency_ms))
        return 0;
    return 1;
}

/* ------------------------------------------------------------------ */
/* Names, tier state */

const char *cache_tier_name(enum cache_tier t)
{
    switch (t) {
    case CACHE_L1:
        return "l1";
    case CACHE_L2:
        return "l2";
    case CACHE_L3:
        return "l3";
    default:
        return "unknown";
    }
}

const char *cache_reason_name(enum cache_evict_reason r)
{
    switch (r) {
    case CACHE_EVICT_LRU:
        return "lru";
    case CACHE_EVICT_TTL:
        return "ttl";
    case CACHE_EVICT_HEALTH:
        return "health";
    case CACHE_EVICT_CORRUPTION:
        return "corruption";
    default:
        return "unknown";
    }
}

static bool usable(struct cache *c, enum cache_tier t)
{
    return c->ts[t].t &&
           !atomic_load_explicit(&c->ts[t].degraded, memory_order_acquire);
}

static void count_evict(struct cache *c, enum cache_tier t,
                        enum cache_evict_reason r, uint64_t n)
{
    ctr_add(&c->ts[t].evictions[r], n);
}

/* Errors that say the tier itself is failing (count towards degradation). */
static bool is_failure(int err)
{
    return err < 0 && err != -ENOENT && err != -EBADMSG && err != -ENOMEM &&
           err != -EINVAL && err != -E2BIG;
}

void cache_note_tier_result(struct cache *c, enum cache_tier t, int err)
{
    struct tstate *ts;
    uint32_t n;

    if (!c || (int)t < 0 || t >= CACHE_NTIERS)
        return;
    ts = &c->ts[t];
    if (!is_failure(err)) {
        /* The tier answered: reset the run (only write when needed, to
         * keep the line shared on the hot path). */
        if (err != -ENOMEM && err != -EINVAL && err != -E2BIG &&
            atomic_load_explicit(&ts->consecutive, memory_order_relaxed))
            atomic_store_explicit(&ts->consecutive, 0, memory_order_relaxed);
        return;
    }
    atomic_fetch_add_explicit(&ts->failures_total, 1, memory_order_relaxed);
    n = atomic_fetch_add_explicit(&ts->consecutive, 1, memory_order_relaxed) +
        1;
    if (t == CACHE_L1 || n < DEGRADE_AFTER)
        return;
    if (!atomic_exchange_explicit(&ts->degraded, true, memory_order_acq_rel))
        log_error_errno(-err,
                        "tier %s degraded after %u consecutive failures; "
                        "serving from the other tiers and probing it",
                        cache_tier_name(t), (unsigned)n);
}

/*
 * A read's outcome: a failure counts like any other, but a successful read
 * does not end a run of failures. A tier whose writes fail (disk full,
 * read-only, locked) usually still answers reads, and those answers must not
 * keep it from being marked degraded; only a successful write or probe does.
 */
static void note_read_result(struct cache *c, enum cache_tier t, int err)
{
    if (t != CACHE_L1 && is_failure(err))
        cache_note_tier_result(c, t, err);
}

/* ------------------------------------------------------------------ */
/* Keys, fences */

static int hexval(unsigned char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    return -1;
}

/* First 16 hex digits; 0 for anything else (used for striping only). */
static uint64_t key_hash(const char *key)
{
    uint64_t h = 0;
    for (int i = 0; i < 16; i++) {
        int v = hexval((unsigned char)key[i]);
        if (v < 0)
            return 0;
        h = (h << 4) | (uint64_t)v;
    }
    return h;
}

static bool key_ok(const char *key)
{
    if (!key)
        return false;
    for (int i = 0; i < ENTRY_KEY_LEN; i++)
        if (hexval((unsigned char)key[i]) < 0)
            return false;
    return key[ENTRY_KEY_LEN] == '\0';
}

static size_t stripe_of(const char *key)
{
    return (size_t)(key_hash(key) & (NFENCE - 1));
}

static struct fence *fence_of(struct cache *c, const char *key)
{
    return &c->fences[stripe_of(key)];
}

/* A set of writer stripes, locked and unlocked in ascending order. */
struct wset {
    uint64_t bits[NFENCE / 64];
};

static void wset_add(struct wset *w, const char *key)
{
    size_t i = stripe_of(key);
    w->bits[i / 64] |= 1ULL << (i % 64);
}

/* Number of stripes in w. */
static size_t wset_count(const struct wset *w)
{
    size_t n = 0;

    for (size_t i = 0; i < NFENCE / 64; i++)
        n += (size_t)__builtin_popcountll(w->bits[i]);
    return n;
}

/* A batch spanning more stripes than this takes the writer gate exclusively
 * instead of its stripes: it then holds one lock, not hundreds (thread
 * sanitizers cap the locks a thread may hold, and so should we). */
#define WSET_MAX_STRIPES 32

static void wset_lock(struct cache *c, const struct wset *w)
{
    if (wset_count(w) > WSET_MAX_STRIPES) {
        pthread_rwlock_wrlock(&c->wgate);
        return;
    }
    pthread_rwlock_rdlock(&c->wgate);
    for (size_t i = 0; i < NFENCE; i++)
        if (w->bits[i / 64] & (1ULL << (i % 64)))
            pthread_mutex_lock(&c->wmu[i]);
}

static void wset_unlock(struct cache *c, const struct wset *w)
{
    if (wset_count(w) <= WSET_MAX_STRIPES)
        for (size_t i = NFENCE; i-- > 0;)
            if (w->bits[i / 64] & (1ULL << (i % 64)))
                pthread_mutex_unlock(&c->wmu[i]);
    pthread_rwlock_unlock(&c->wgate);
}

static void wmu_lock_key(struct cache *c, const char *key)
{
    pthread_rwlock_rdlock(&c->wgate);
    pthread_mutex_lock(&c->wmu[stripe_of(key)]);
}

static void wmu_unlock_key(struct cache *c, const char *key)
{
    pthread_mutex_unlock(&c->wmu[stripe_of(key)]);
    pthread_rwlock_unlock(&c->wgate);
}

static uint64_t fence_load(struct cache *c, const char *key)
{
    return atomic_load(&fence_of(c, key)->word);
}

static void fence_begin(struct cache *c, const char *key,
                        struct fence_ticket *tk)
{
    tk->f = fence_of(c, key);
    atomic_fetch_add(&tk->f->word, 1);
    tk->dels_in_flight = atomic_load(&tk->f->dels) != 0;
}

static void fence_end(struct fence_ticket *tk)
{
    if (tk->f)
        atomic_fetch_add(&tk->f->word, FENCE_END);
    tk->f = NULL;
}

/* Wait (bounded) until no lazy L3 delete is in flight on f. */
static void fence_wait_dels(struct fence *f)
{
    for (int i = 0; atomic_load(&f->dels) != 0 && i < DEL_WAIT_SPINS; i++) {
        if (i < 64) {
            sched_yield();
        } else {
            struct timespec ts = {0, 100000};
            nanosleep(&ts, NULL);
        }
    }
}

/* ------------------------------------------------------------------ */
/* Tokens */

/* 0 if every token of e opens with a key of the ring (or there is no ring
 * to check against), else -EBADMSG. The plaintext is wiped at once. */
static int verify_tokens(struct cache *c, const struct entry *e)
{
    const char *toks[2] = {e->username_tok, e->password_tok};

    if (!c->ring)
        return 0;
    for (int i = 0; i < 2; i++) {
        char *plain = NULL;
        size_t len = 0;
        if (!toks[i])
            continue;
        if (crypto_fernet_open(c->ring, toks[i], 0, 0, &plain, &len) != 0)
            return -EBADMSG;
        crypto_free_secret(plain);
    }
    return 0;
}

/* A copy in tier t failed token verification: remove and count it. */
static void drop_bad_token(struct cache *c, enum cache_tier t, const char *key)
{
    struct tier *tr = c->ts[t].t;
    int err = tr->ops->del(tr, key);

    cache_note_tier_result(c, t, err);
    count_evict(c, t, CACHE_EVICT_CORRUPTION, 1);
    if (!atomic_exchange(&c->warned_token, true))
        log_warn("corrupt entry key=%s tier=%s reason=token does not verify "
                 "with any configured key (evicted; further ones are logged "
                 "at debug level)",
                 key, cache_tier_name(t));
    else
        log_debug("corrupt entry key=%s tier=%s reason=token does not "
                  "verify with any configured key",
                  key, cache_tier_name(t));
}

/* ------------------------------------------------------------------ */
/* Pending map (pmu held for every pmap_* call) */

static struct pop **pmap_slot(struct pmap *m, const char *key)
{
    struct pop **pp;
    if (!m->nb)
        return NULL;
    pp = &m->b[key_hash(key) & (m->nb - 1)];
    while (*pp && strcmp((*pp)->key, key) != 0)
        pp = &(*pp)->next;
    return pp;
}

static struct pop *pmap_find(struct pmap *m, const char *key)
{
    struct pop **pp = pmap_slot(m, key);
    return pp ? *pp : NULL;
}

static int pmap_grow(struct pmap *m)
{
    size_t nb = m->nb ? m->nb * 2 : 64;
    struct pop **b = calloc(nb, sizeof(*b));
    if (!b)
        return -ENOMEM;
    for (size_t i = 0; i < m->nb; i++) {
        struct pop *p = m->b[i];
        while (p) {
            struct pop *next = p->next;
            struct pop **s = &b[key_hash(p->key) & (nb - 1)];
            p->next = *s;
            *s = p;
            p = next;
        }
    }
    free(m->b);
    m->b = b;
    m->nb = nb;
    return 0;
}

/* Insert the node p (its key and entry set). */
static int pmap_insert(struct pmap *m, struct pop *p)
{
    struct pop **s;
    if (m->n >= m->nb && pmap_grow(m) != 0 && !m->nb)
        return -ENOMEM;
    s = &m->b[key_hash(p->key) & (m->nb - 1)];
    p->next = *s;
    *s = p;
    m->n++;
    return 0;
}

/* Move every node of m onto *list (through next) and empty m (its bucket
 * array is kept). */
static void pmap_detach(struct pmap *m, struct pop **list)
{
    for (size_t i = 0; i < m->nb; i++) {
        struct pop *p = m->b[i];
        while (p) {
            struct pop *next = p->next;
            p->next = *list;
            *list = p;
            p = next;
        }
        m->b[i] = NULL;
    }
    m->n = 0;
    m->clear = false;
}

static void pop_free_list(struct pop *list)
{
    while (list) {
        struct pop *next = list->next;
        entry_unref(list->e);
        free(list);
        list = next;
    }
}

static size_t pmap_ops(const struct pmap *m)
{
    return m->n + (m->clear ? 1 : 0);
}

/* pmu held. */
static void pending_recount(struct cache *c)
{
    atomic_store(&c->pending_n, pmap_ops(&c->cur) + pmap_ops(&c->inflight));
}

static void pending_full(struct cache *c, const char *key)
{
    atomic_fetch_add_explicit(&c->pending_dropped, 1, memory_order_relaxed);
    if (!atomic_exchange(&c->warned_pending_full, true))
        log_error("pending L3 queue full (%u operations): dropping the L3 "
                  "part of writes (first key=%s); they stay in L1/L2 only",
                  PENDING_MAX, key);
}

/* Queue the L3 operation for key: put e (borrowed, referenced), or delete
 * when e is NULL. */
static void pending_add(struct cache *c, const char *key, struct entry *e)
{
    struct pop *fresh = calloc(1, sizeof(*fresh));
    struct entry *ref = e ? entry_ref(e) : NULL;
    struct pop *p;
    bool dropped = false;

    pthread_mutex_lock(&c->pmu);
    p = pmap_find(&c->cur, key);
    if (p) {
        struct entry *old = p->e; /* swap: the old one is released below */
        p->e = ref;
        ref = old;
    } else if (fresh && c->cur.n + c->inflight.n < PENDING_MAX) {
        memcpy(fresh->key, key, ENTRY_KEY_LEN);
        fresh->key[ENTRY_KEY_LEN] = '\0';
        fresh->e = ref;
        if (pmap_insert(&c->cur, fresh) == 0) {
            fresh = NULL;
            ref = NULL;
        } else {
            fresh->e = NULL;
            dropped = true;
        }
    } else {
        dropped = true;
    }
    pending_recount(c);
    pthread_mutex_unlock(&c->pmu);

    entry_unref(ref);
    free(fresh);
    if (dropped)
        pending_full(c, key);
}

static void pending_add_clear(struct cache *c)
{
    struct pop *list = NULL;

    pthread_mutex_lock(&c->pmu);
    pmap_detach(&c->cur, &list);
    c->cur.clear = true;
    pending_recount(c);
    pthread_mutex_unlock(&c->pmu);
    pop_free_list(list);
}

enum pstate { PEND_NONE = 0, PEND_PUT = 1, PEND_DEL = 2 };

/* pmu held. The pending state of key; for PEND_PUT, *e is borrowed. */
static enum pstate pending_state_locked(struct cache *c, const char *key,
                                        struct entry **e)
{
    struct pmap *maps[2] = {&c->cur, &c->inflight};
    for (int i = 0; i < 2; i++) {
        struct pop *p = pmap_find(maps[i], key);
        if (p) {
            if (e)
                *e = p->e;
            return p->e ? PEND_PUT : PEND_DEL;
        }
        if (maps[i]->clear)
            return PEND_DEL;
    }
    return PEND_NONE;
}

/* As above; for PEND_PUT *e is a new reference. */
static enum pstate pending_lookup(struct cache *c, const char *key,
                                  struct entry **e)
{
    struct entry *b = NULL;
    enum pstate st;

    if (atomic_load(&c->pending_n) == 0)
        return PEND_NONE;
    pthread_mutex_lock(&c->pmu);
    st = pending_state_locked(c, key, &b);
    if (st == PEND_PUT)
        *e = entry_ref(b);
    pthread_mutex_unlock(&c->pmu);
    return st;
}

/* L3 put_batch; on -EINVAL retries one by one and drops (logs) what L3
 * rejects, so one bad entry never wedges the queue. */
static int l3_put_entries(struct cache *c, struct entry *const *es, size_t n)
{
    struct tier *t = c->ts[CACHE_L3].t;
    size_t nv = 0;
    int err = t->ops->put_batch(t, es, n, &nv);

    cache_note_tier_result(c, CACHE_L3, err);
    if (err == -EINVAL) {
        err = 0;
        for (size_t i = 0; i < n && !err; i++) {
            size_t v1 = 0;
            int e1 = t->ops->put_batch(t, &es[i], 1, &v1);
            cache_note_tier_result(c, CACHE_L3, e1);
            nv += v1;
            if (e1 == -EINVAL)
                log_error("L3 rejected entry key=%s as invalid; it is kept "
                          "in L1/L2 only",
                          es[i]->key);
            else
                err = e1;
        }
    }
    count_evict(c, CACHE_L3, CACHE_EVICT_LRU, nv);
    return err;
}

/* Apply one detached pending map to L3. The replayer owns m->b; pmu is
 * taken only to publish progress. */
static int replay(struct cache *c, struct pmap *m)
{
    struct tier *t = c->ts[CACHE_L3].t;
    struct entry *batch[REPLAY_BATCH];
    size_t nb = 0;
    int err = 0;

    if (m->clear) {
        err = t->ops->clear(t, NULL);
        cache_note_tier_result(c, CACHE_L3, err);
        if (err)
            return err;
        pthread_mutex_lock(&c->pmu);
        m->clear = false;
        pending_recount(c);
        pthread_mutex_unlock(&c->pmu);
    }
    for (size_t i = 0; i < m->nb && !err; i++) {
        for (struct pop *p = m->b[i]; p && !err; p = p->next) {
            if (p->e) {
                batch[nb++] = p->e;
                if (nb == REPLAY_BATCH) {
                    err = l3_put_entries(c, batch, nb);
                    nb = 0;
                }
            } else {
                err = t->ops->del(t, p->key);
                cache_note_tier_result(c, CACHE_L3, err);
                if (err == -ENOENT)
                    err = 0;
            }
        }
    }
    if (!err && nb)
        err = l3_put_entries(c, batch, nb);
    return err;
}

/* pmu held: put the failed inflight map back under cur (cur is newer). */
static void merge_back_locked(struct cache *c, struct pop **garbage)
{
    struct pmap *in = &c->inflight;

    if (c->cur.clear) {
        /* A clear queued after these operations supersedes them. */
        pmap_detach(in, garbage);
        return;
    }
    c->cur.clear = in->clear;
    for (size_t i = 0; i < in->nb; i++) {
        struct pop *p = in->b[i];
        while (p) {
            struct pop *next = p->next;
            if (pmap_find(&c->cur, p->key) || pmap_insert(&c->cur, p) != 0) {
                p->next = *garbage;
                *garbage = p;
            }
            p = next;
        }
        in->b[i] = NULL;
    }
    in->n = 0;
    in->clear = false;
}

/*
 * Another thread holds the replay flag: wait for its replay to end, at most
 * REPLAY_WAIT_MS (short naps; a replay is a few L3 transactions). True if
 * the flag was released in time.
 */
static bool wait_replay(struct cache *c)
{
    uint64_t deadline = clock_mono_ns() + (uint64_t)REPLAY_WAIT_MS * 1000000u;

    for (int i = 0; atomic_load(&c->replaying); i++) {
        if (i < 64) {
            sched_yield();
        } else {
            struct timespec ts = {0, 200000};
            if (clock_mono_ns() >= deadline)
                return false;
            nanosleep(&ts, NULL);
        }
    }
    return true;
}

/*
 * Drain the pending map into L3. 0 when it is empty afterwards (or was),
 * -EBUSY if another thread is still replaying after REPLAY_WAIT_MS, or the
 * L3 error. A writer that finds a replay in progress (e.g. the sweeper's
 * cache_maintain) waits for it rather than queueing behind it, so a write
 * reaches L3 before its response whenever L3 is healthy.
 */
static int pending_drain(struct cache *c)
{
    int err = 0;

    for (;;) {
        bool expected = false;

        if (atomic_load(&c->pending_n) == 0)
            return 0;
        if (!c->ts[CACHE_L3].t || !usable(c, CACHE_L3))
            return -EAGAIN;
        if (atomic_compare_exchange_strong(&c->replaying, &expected, true))
            break;
        if (!wait_replay(c))
            return -EBUSY;
        /* The replay ended (it may have failed: look again). */
    }
    for (;;) {
        struct pop *garbage = NULL;
        struct pmap tmp;

        pthread_mutex_lock(&c->pmu);
        if (c->cur.n == 0 && !c->cur.clear) {
            pthread_mutex_unlock(&c->pmu);
            break;
        }
        tmp = c->inflight; /* empty, maybe with a bucket array */
        c->inflight = c->cur;
        c->cur = tmp;
        pthread_mutex_unlock(&c->pmu);

        err = replay(c, &c->inflight);

        pthread_mutex_lock(&c->pmu);
        if (err)
            merge_back_locked(c, &garbage);
        else
            pmap_detach(&c->inflight, &garbage);
        pending_recount(c);
        pthread_mutex_unlock(&c->pmu);
        pop_free_list(garbage);
        if (err)
            break;
        log_debug("replayed pending L3 writes");
    }
    atomic_store(&c->replaying, false);
    return err;
}

/*
 * L3 part of a write: put es[0..n) durably, or queue them. Returns true if
 * committed now.
 */
static bool l3_put_path(struct cache *c, struct entry *const *es, size_t n)
{
    if (!c->ts[CACHE_L3].t)
        return false;
    if (n == 0)
        return usable(c, CACHE_L3) && atomic_load(&c->pending_n) == 0;
    if (usable(c, CACHE_L3) && pending_drain(c) == 0 &&
        l3_put_entries(c, es, n) == 0)
        return true;
    for (size_t i = 0; i < n; i++)
        pending_add(c, es[i]->key, es[i]);
    return false;
}

/*
 * L3 part of a delete. Returns 1 if L3 had the key (removed), 0 if it did
 * not, -EAGAIN if the delete was queued (L3 failing or degraded).
 */
static int l3_del_path(struct cache *c, const char *key)
{
    struct tier *t = c->ts[CACHE_L3].t;
    int err;

    if (!t)
        return 0;
    if (usable(c, CACHE_L3) && pending_drain(c) == 0) {
        err = t->ops->del(t, key);
        cache_note_tier_result(c, CACHE_L3, err);
        if (err == 0)
            return 1;
        if (err == -ENOENT)
            return 0;
    }
    pending_add(c, key, NULL);
    return -EAGAIN;
}

/* ------------------------------------------------------------------ */
/* Tier helpers */

/* Put into L2 (or drop on failure, deleting any stale copy). Victims of
 * L2 are counted. Returns the put result. */
static int l2_put(struct cache *c, struct entry *e, unsigned flags)
{
    struct tier *t = c->ts[CACHE_L2].t;
    struct entry *v = NULL;
    int err;

    if (!usable(c, CACHE_L2))
        return -EAGAIN;
    err = t->ops->put(t, e, flags, &v);
    cache_note_tier_result(c, CACHE_L2, err);
    if (v) {
        count_evict(c, CACHE_L2, CACHE_EVICT_LRU, 1);
        if (c->ts[CACHE_L3].t)
            ctr_add(&c->ts[CACHE_L2].demotions, 1);
        entry_unref(v);
    }
    if (err && is_failure(err))
        (void)t->ops->del(t, e->key); /* best effort: no stale copy */
    return err;
}

/* An L1 victim moves down into L2 (unless a writer is busy with its key:
 * the writer's write-through puts the newer version there). A writer may
 * also have finished between the L1 eviction and now, so the victim only
 * goes in if L2 has no copy of the key (TIER_PUT_IFABSENT): L2's copy is
 * then the same version or a newer one. Consumes v. */
static void demote(struct cache *c, struct entry *v)
{
    count_evict(c, CACHE_L1, CACHE_EVICT_LRU, 1);
    if (usable(c, CACHE_L2) && !(fence_load(c, v->key) & FENCE_ACTIVE) &&
        l2_put(c, v, TIER_PUT_IFABSENT) == 0)
        ctr_add(&c->ts[CACHE_L1].demotions, 1);
    entry_unref(v);
}

/* Put into L1; the victim, if any, is returned in *victim (or demoted at
 * once when victim is NULL). */
static int l1_put(struct cache *c, struct entry *e, unsigned flags,
                  struct entry **victim)
{
    struct tier *t = c->ts[CACHE_L1].t;
    struct entry *v = NULL;
    int err = t->ops->put(t, e, flags, &v);

    cache_note_tier_result(c, CACHE_L1, err);
    if (v) {
        if (victim)
            *victim = v;
        else
            demote(c, v);
    }
    return err;
}

static void bump_access(struct entry *e, int64_t now)
{
    int64_t prev;

    atomic_fetch_add_explicit(&e->access_count, 1, memory_order_relaxed);
    prev = atomic_load_explicit(&e->last_accessed, memory_order_relaxed);
    while (prev < now && !atomic_compare_exchange_weak_explicit(
                             &e->last_accessed, &prev, now,
                             memory_order_relaxed, memory_order_relaxed))
        ;
}

/*
 * Remove the expired copy of key from tier t (lazy expiry) and count it.
 * L1/L2 copies are only cache copies; the L3 delete is guarded by the
 * fence (see the file comment): v0 is the fence word read before the walk.
 */
static void expire_copy(struct cache *c, enum cache_tier t, const char *key,
                        uint64_t v0)
{
    struct tier *tr = c->ts[t].t;
    struct fence *f;
    int err;

    if (t != CACHE_L3) {
        err = tr->ops->del(tr, key);
        cache_note_tier_result(c, t, err);
        if (err == 0)
            count_evict(c, t, CACHE_EVICT_TTL, 1);
        return;
    }
    f = fence_of(c, key);
    atomic_fetch_add(&f->dels, 1);
    if (atomic_load(&f->word) != v0 || (v0 & FENCE_ACTIVE)) {
        /* A writer is (or was) at work on this stripe; the sweeper will
         * remove the row if it is still expired. */
        atomic_fetch_sub(&f->dels, 1);
        return;
    }
    err = tr->ops->del(tr, key);
    atomic_fetch_sub(&f->dels, 1);
    cache_note_tier_result(c, t, err);
    if (err == 0)
        count_evict(c, t, CACHE_EVICT_TTL, 1);
}

/*
 * The read walk: L1, L2, pending, L3. On success *out is a new reference
 * to the first valid unexpired copy and *from its tier (FROM_PENDING for
 * the queue). Expired and corrupt copies met on the way are removed and
 * counted. count: update hit/miss counters. *v0 gets the fence word read
 * after the L1 lookup (before anything below it).
 */
static int walk(struct cache *c, const char *key, int64_t now, bool count,
                struct entry **out, int *from, uint64_t *v0)
{
    static const enum cache_tier order[] = {CACHE_L1, CACHE_L2, CACHE_L3};

    *v0 = 0;
    for (size_t i = 0; i < SVC_ARRAY_LEN(order); i++) {
        enum cache_tier t = order[i];
        struct tier *tr = c->ts[t].t;
        struct entry *e = NULL;
        int err;

        if (t == CACHE_L2) {
            /* Off the L1 hit path: never hand a malformed key below. */
            if (!key_ok(key))
                return -ENOENT;
            *v0 = fence_load(c, key);
        }
        if (t == CACHE_L3) {
            enum pstate st = pending_lookup(c, key, &e);
            if (st != PEND_NONE) {
                /* The queue holds the newest state L3 should have. */
                if (st == PEND_PUT && !entry_expired(e, now)) {
                    if (count)
                        pc_inc(&c->ts[CACHE_L3].hits);
                    *out = e;
                    *from = FROM_PENDING;
                    return 0;
                }
                entry_unref(e);
                if (count && c->ts[CACHE_L3].t)
                    pc_inc(&c->ts[CACHE_L3].misses);
                return -ENOENT;
            }
        }
        if (!usable(c, t))
            continue;
        err = tr->ops->get(tr, key, &e);
        note_read_result(c, t, err);
        if (err == 0 && t != CACHE_L1 && verify_tokens(c, e) != 0) {
            drop_bad_token(c, t, key);
            entry_unref(e);
            e = NULL;
            err = -EBADMSG;
        } else if (err == 0 && entry_expired(e, now)) {
            entry_unref(e);
            e = NULL;
            expire_copy(c, t, key, *v0);
            err = -ENOENT;
        }
        /* -EBADMSG: the tier removed the record and counted it in its
         * corrupt_count, which cache_stats_snapshot() adds in. */
        if (err == 0) {
            if (count)
                pc_inc(&c->ts[t].hits);
            *out = e;
            *from = (int)t;
            return 0;
        }
        if (count)
            pc_inc(&c->ts[t].misses);
    }
    return -ENOENT;
}

/* Copy e (served from `from`) into every tier above it; undo if a writer
 * touched the key meanwhile. */
static void promote(struct cache *c, struct entry *e, int from, uint64_t v0)
{
    bool in_l1 = false, in_l2 = false;

    if (v0 & FENCE_ACTIVE)
        return; /* a writer is mid-way: serve, do not copy */
    if (from >= CACHE_L3 && usable(c, CACHE_L2)) {
        /* L2 first, so the L1 victim demoted below becomes L2's most
         * recent entry: it now lives only in L2/L3, while e is in L1. */
        if (l2_put(c, e, 0) == 0) {
            in_l2 = true;
            ctr_add(&c->ts[CACHE_L2].promotions, 1);
        }
    }
    if (l1_put(c, e, 0, NULL) == 0) {
        in_l1 = true;
        ctr_add(&c->ts[CACHE_L1].promotions, 1);
    }
    if (fence_load(c, e->key) != v0) {
        /* Lost a race with a writer: drop the copies we made; the writer's
         * version is (or will be) in L3. */
        if (in_l1)
            (void)c->ts[CACHE_L1].t->ops->del(c->ts[CACHE_L1].t, e->key);
        if (in_l2)
            (void)c->ts[CACHE_L2].t->ops->del(c->ts[CACHE_L2].t, e->key);
    }
}

/* ------------------------------------------------------------------ */
/* Get */

int cache_get(struct cache *c, const char *key, struct entry **out,
              enum cache_tier *served)
{
    struct entry *e = NULL;
    int64_t now;
    uint64_t v0 = 0;
    int from = 0, err;

    if (!c || !key || !out)
        return -EINVAL;
    now = clock_now_ms();
    err = walk(c, key, now, true, &e, &from, &v0);
    if (err) {
        pc_inc(&c->misses);
        return -ENOENT;
    }
    bump_access(e, now);
    if (from != CACHE_L1)
        promote(c, e, from, v0);
    if (served)
        *served = from == FROM_PENDING ? CACHE_L3 : (enum cache_tier)from;
    *out = e;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Upsert */

/* New entry: base's fields with those of `in` named by fields. */
static struct entry *merge(const struct entry *base, const struct entry *in,
                           unsigned fields)
{
    struct entry *m;
    bool ok = true;

    if (!base) {
        m = entry_dup(in);
        if (!m)
            return NULL;
        if (!(fields & CACHE_F_ACCESS)) {
            atomic_store(&m->access_count, 0);
            atomic_store(&m->last_accessed, 0);
        }
        entry_compute_expiry(m);
        return m;
    }
    m = entry_dup(base);
    if (!m)
        return NULL;
    ok = entry_set_str(&m->proxy_url, in->proxy_url) == 0;
    m->scheme = in->scheme;
    if (fields & CACHE_F_CREDENTIALS)
        ok = ok && entry_set_str(&m->username_tok, in->username_tok) == 0 &&
             entry_set_str(&m->password_tok, in->password_tok) == 0;
    if (fields & CACHE_F_SOURCE)
        ok = ok && entry_set_str(&m->source, in->source) == 0;
    if (fields & CACHE_F_FETCH_TIME)
        m->fetch_time = in->fetch_time;
    if (fields & CACHE_F_TTL)
        m->ttl_seconds = in->ttl_seconds;
    if (fields & CACHE_F_HEALTH) {
        m->health = in->health;
        m->failure_count = in->failure_count;
    }
    if (fields & CACHE_F_COUNTRY)
        memcpy(m->country, in->country, sizeof(m->country));
    if (fields & CACHE_F_ANONYMITY)
        m->anonymity = in->anonymity;
    if (fields & CACHE_F_LATENCY)
        m->latency_ms = in->latency_ms;
    if (fields & CACHE_F_ACCESS) {
        atomic_store(&m->access_count, atomic_load(&in->access_count));
        atomic_store(&m->last_accessed, atomic_load(&in->last_accessed));
    }
    if (!ok) {
        entry_unref(m);
        return NULL;
    }
    entry_compute_expiry(m);
    return m;
}

/* One distinct key of a batch. */
struct uslot {
    const char *key;        /* borrowed from the first item with this key */
    struct entry *existing; /* what the cache held (new ref) or NULL */
    struct entry *merged;   /* version to write (new ref) or NULL */
    int found;              /* tier the existing copy came from, or -1 */
    bool dirty;             /* merged must be written */
    int err;                /* 0 or -errno for every item of this key */
    struct fence_ticket tk;
};

struct umap {
    size_t *idx; /* slot index + 1; 0 = empty */
    size_t mask;
};

static int umap_init(struct umap *m, size_t n)
{
    size_t cap = 16;
    while (cap < 2 * n && cap < SIZE_MAX / 4)
        cap <<= 1;
    m->idx = calloc(cap, sizeof(*m->idx));
    m->mask = cap - 1;
    return m->idx ? 0 : -ENOMEM;
}

/* Slot index of key, or insert new_idx and return it. */
static size_t umap_get_or_add(struct umap *m, const struct uslot *slots,
                              const char *key, size_t new_idx, bool *added)
{
    size_t i = (size_t)key_hash(key) & m->mask;
    for (;; i = (i + 1) & m->mask) {
        if (!m->idx[i]) {
            m->idx[i] = new_idx + 1;
            *added = true;
            return new_idx;
        }
        if (strcmp(slots[m->idx[i] - 1].key, key) == 0) {
            *added = false;
            return m->idx[i] - 1;
        }
    }
}

static bool umap_has(const struct umap *m, const struct uslot *slots,
                     const char *key)
{
    size_t i = (size_t)key_hash(key) & m->mask;
    for (; m->idx[i]; i = (i + 1) & m->mask)
        if (strcmp(slots[m->idx[i] - 1].key, key) == 0)
            return true;
    return false;
}

/* Merge one item into its slot. */
static void upsert_item(struct cache *c, struct uslot *s, struct cache_item *it,
                        unsigned flags, int64_t now, bool first)
{
    const struct entry *base;
    struct entry *m;

    if (first) {
        struct entry *ex = NULL;
        uint64_t v0;
        int from = -1;
        fence_begin(c, s->key, &s->tk);
        s->found = -1;
        if (walk(c, s->key, now, false, &ex, &from, &v0) == 0) {
            s->existing = ex;
            s->found = from;
        }
    }
    /* As if the batch's items were written one after the other: an
     * earlier item of this key that is already expired left it absent. */
    if (s->merged)
        base = entry_expired(s->merged, now) ? NULL : s->merged;
    else
        base = s->existing;
    if (base && (flags & CACHE_UPSERT_NEWER_ONLY) &&
        !(it->entry->fetch_time > base->fetch_time)) {
        it->outcome = CACHE_UNCHANGED;
        return;
    }
    m = merge(base, it->entry, it->fields);
    if (!m) {
        it->err = -ENOMEM;
        return;
    }
    entry_unref(s->merged);
    s->merged = m;
    s->dirty = true;
    it->outcome = base ? CACHE_UPDATED : CACHE_CREATED;
}

/* Write the expired/ttl-0 versions: remove every old copy (ttl counted). */
static bool upsert_dead(struct cache *c, struct uslot *s)
{
    struct tier *l1 = c->ts[CACHE_L1].t;
    bool l3_ok = true;
    int err;

    (void)l1->ops->del(l1, s->key);
    count_evict(c, CACHE_L1, CACHE_EVICT_TTL, 1);
    if (usable(c, CACHE_L2)) {
        struct tier *l2 = c->ts[CACHE_L2].t;
        err = l2->ops->del(l2, s->key);
        cache_note_tier_result(c, CACHE_L2, err);
        if (err == 0)
            count_evict(c, CACHE_L2, CACHE_EVICT_TTL, 1);
    }
    err = l3_del_path(c, s->key);
    if (err == 1)
        count_evict(c, CACHE_L3, CACHE_EVICT_TTL, 1);
    else if (err < 0)
        l3_ok = false;
    return l3_ok;
}

/*
 * Crash safety of the write-through: an L2 copy of a key is removed before
 * the new version is committed to L3 and written through after. A kill
 * between the two then leaves L2 without the key (the next read falls
 * through to L3's new version) instead of an old copy that would hide it
 * after a restart (L1 empty -> L2 hit). Only keys whose existing copy came
 * from L1 or L2 can have one (the walk stops at the first tier holding the
 * key; promotions are held off by the fence).
 */
static void l2_drop_key(struct cache *c, const char *key)
{
    struct tier *l2 = c->ts[CACHE_L2].t;
    int err;

    if (!usable(c, CACHE_L2))
        return;
    err = l2->ops->del(l2, key);
    cache_note_tier_result(c, CACHE_L2, err);
}

static void l2_drop_before_commit(struct cache *c, const struct uslot *slots,
                                  struct entry *const *live, size_t n_live,
                                  const size_t *slot_of_live)
{
    for (size_t i = 0; i < n_live; i++) {
        int found = slots[slot_of_live[i]].found;
        if (found == CACHE_L1 || found == CACHE_L2)
            l2_drop_key(c, live[i]->key);
    }
}

/* Write the live merged versions: L1, then L3 (one transaction), then L2.
 * Returns the tiers that hold them. */
static unsigned upsert_live(struct cache *c, struct uslot *slots,
                            struct entry **live, size_t n_live,
                            size_t *slot_of_live, const struct umap *um)
{
    struct entry **vics = NULL;
    size_t n_vics = 0;
    unsigned mask = CACHE_TIER_MASK(CACHE_L1);

    if (n_live == 0)
        return mask;
    vics = calloc(n_live, sizeof(*vics));

    for (size_t i = 0; i < n_live; i++) {
        struct entry *v = NULL;
        int err = l1_put(c, live[i], 0, &v);
        if (err)
            slots[slot_of_live[i]].err = err;
        if (!v)
            continue;
        if (umap_has(um, slots, v->key)) {
            /* Part of this batch: the write-through below covers it. */
            count_evict(c, CACHE_L1, CACHE_EVICT_LRU, 1);
            entry_unref(v);
        } else if (vics) {
            vics[n_vics++] = v;
        } else {
            demote(c, v);
        }
    }

    l2_drop_before_commit(c, slots, live, n_live, slot_of_live);
    if (l3_put_path(c, live, n_live)) {
        mask |= CACHE_TIER_MASK(CACHE_L3);
        /* A lazy expiry delete that was in flight when we began may have
         * landed after our commit: wait for it and write again. */
        for (size_t i = 0; i < n_live; i++) {
            struct uslot *s = &slots[slot_of_live[i]];
            if (s->tk.dels_in_flight) {
                fence_wait_dels(s->tk.f);
                (void)l3_put_path(c, &live[i], 1);
            }
        }
    }

    /*
     * Write-through to L2. A batch larger than L2 leaves only its last
     * l2_cap entries there, so only those are written (and L1's victims,
     * which the batch would push straight out, are not demoted); an older
     * L2 copy of a skipped key is deleted instead. Only keys found in L1
     * or L2 can have one: the walk stops at the first tier holding the key,
     * and promotions of it are held off by our fence.
     */
    if (c->l2_cap && n_live >= c->l2_cap) {
        for (size_t i = 0; i < n_vics; i++) {
            count_evict(c, CACHE_L1, CACHE_EVICT_LRU, 1);
            entry_unref(vics[i]);
        }
        n_vics = 0;
    }
    for (size_t i = 0; i < n_vics; i++)
        demote(c, vics[i]);
    free(vics);

    if (usable(c, CACHE_L2)) {
        struct tier *l2 = c->ts[CACHE_L2].t;
        size_t first = 0, nv = 0;
        int err;
        if (c->l2_cap && n_live > c->l2_cap) {
            first = n_live - c->l2_cap;
            for (size_t i = 0; i < first; i++) {
                int found = slots[slot_of_live[i]].found;
                if (found == CACHE_L1 || found == CACHE_L2) {
                    err = l2->ops->del(l2, live[i]->key);
                    cache_note_tier_result(c, CACHE_L2, err);
                }
            }
        }
        err = l2->ops->put_batch(l2, live + first, n_live - first, &nv);
        cache_note_tier_result(c, CACHE_L2, err);
        count_evict(c, CACHE_L2, CACHE_EVICT_LRU, nv);
        if (c->ts[CACHE_L3].t)
            ctr_add(&c->ts[CACHE_L2].demotions, nv);
        if (err == 0) {
            mask |= CACHE_TIER_MASK(CACHE_L2);
        } else {
            for (size_t i = 0; i < n_live; i++)
                (void)l2->ops->del(l2, live[i]->key);
        }
    }
    return mask;
}

int cache_upsert(struct cache *c, struct cache_item *items, size_t n,
                 unsigned flags, unsigned *tiers_mask)
{
    struct uslot *slots = NULL;
    size_t *slot_of = NULL, *slot_of_live = NULL;
    struct entry **live = NULL;
    struct umap um = {NULL, 0};
    struct wset ws;
    size_t n_slots = 0, n_live = 0;
    unsigned mask;
    bool l3_ok = true, locked = false;
    int64_t now;
    int err = 0;

    if (!c || !items || n == 0)
        return -EINVAL;
    now = clock_now_ms();
    slots = calloc(n, sizeof(*slots));
    slot_of = calloc(n, sizeof(*slot_of));
    live = calloc(n, sizeof(*live));
    slot_of_live = calloc(n, sizeof(*slot_of_live));
    if (!slots || !slot_of || !live || !slot_of_live ||
        umap_init(&um, n) != 0) {
        err = -ENOMEM;
        goto out;
    }

    /* Validate, and lock the writer stripes of the batch (ascending) for
     * the whole read-merge-write. */
    memset(&ws, 0, sizeof(ws));
    for (size_t i = 0; i < n; i++) {
        struct cache_item *it = &items[i];

        it->err = 0;
        it->outcome = CACHE_CREATED;
        slot_of[i] = SIZE_MAX;
        if (!it->entry || !key_ok(it->entry->key) || !it->entry->proxy_url ||
            it->entry->ttl_seconds < 0) {
            it->err = -EINVAL;
            continue;
        }
        wset_add(&ws, it->entry->key);
    }
    wset_lock(c, &ws);
    locked = true;

    /* Merge, in order, so duplicates behave as sequential writes. */
    for (size_t i = 0; i < n; i++) {
        struct cache_item *it = &items[i];
        size_t si;
        bool added;

        if (it->err)
            continue;
        si = umap_get_or_add(&um, slots, it->entry->key, n_slots, &added);
        if (added)
            slots[n_slots++].key = it->entry->key;
        slot_of[i] = si;
        upsert_item(c, &slots[si], it, flags, now, added);
    }

    /* Write each distinct key's final version once. */
    for (size_t si = 0; si < n_slots; si++) {
        struct uslot *s = &slots[si];
        if (!s->dirty)
            continue;
        if (entry_expired(s->merged, now)) {
            if (!upsert_dead(c, s))
                l3_ok = false;
        } else {
            slot_of_live[n_live] = si;
            live[n_live++] = s->merged;
        }
    }
    mask = upsert_live(c, slots, live, n_live, slot_of_live, &um);
    if (n_live == 0) {
        if (usable(c, CACHE_L2))
            mask |= CACHE_TIER_MASK(CACHE_L2);
        if (c->ts[CACHE_L3].t && usable(c, CACHE_L3) &&
            atomic_load(&c->pending_n) == 0)
            mask |= CACHE_TIER_MASK(CACHE_L3);
    }
    if (!l3_ok)
        mask &= ~CACHE_TIER_MASK(CACHE_L3);

    for (size_t i = 0; i < n; i++) {
        if (slot_of[i] == SIZE_MAX)
            continue;
        if (!items[i].err && slots[slot_of[i]].err)
            items[i].err = slots[slot_of[i]].err;
        if (!items[i].err && items[i].outcome != CACHE_UNCHANGED)
            atomic_fetch_add_explicit(&c->writes, 1, memory_order_relaxed);
    }
    if (tiers_mask)
        *tiers_mask = mask;
out:
    for (size_t si = 0; slots && si < n_slots; si++)
        fence_end(&slots[si].tk);
    if (locked)
        wset_unlock(c, &ws);
    for (size_t si = 0; slots && si < n_slots; si++) {
        entry_unref(slots[si].existing);
        entry_unref(slots[si].merged);
    }
    free(um.idx);
    free(slot_of_live);
    free(live);
    free(slot_of);
    free(slots);
    return err;
}

/* ------------------------------------------------------------------ */
/* Delete, health, clear */

int cache_delete(struct cache *c, const char *key)
{
    struct fence_ticket tk;
    struct entry *e = NULL;
    uint64_t v0;
    int from, err;
    bool visible;

    if (!c || !key)
        return -EINVAL;
    if (!key_ok(key))
        return -ENOENT;
    wmu_lock_key(c, key);
    fence_begin(c, key, &tk);
    visible = walk(c, key, clock_now_ms(), false, &e, &from, &v0) == 0;
    err = c->ts[CACHE_L1].t->ops->del(c->ts[CACHE_L1].t, key);
    (void)err;
    if (usable(c, CACHE_L2)) {
        err = c->ts[CACHE_L2].t->ops->del(c->ts[CACHE_L2].t, key);
        cache_note_tier_result(c, CACHE_L2, err);
    }
    (void)l3_del_path(c, key);
    fence_end(&tk);
    wmu_unlock_key(c, key);
    entry_unref(e);
    return visible ? 0 : -ENOENT;
}

/* Remove key everywhere at the health threshold, counting per tier. */
static void evict_health(struct cache *c, const char *key)
{
    struct tier *l1 = c->ts[CACHE_L1].t;
    int err;

    if (l1->ops->del(l1, key) == 0)
        count_evict(c, CACHE_L1, CACHE_EVICT_HEALTH, 1);
    if (usable(c, CACHE_L2)) {
        err = c->ts[CACHE_L2].t->ops->del(c->ts[CACHE_L2].t, key);
        cache_note_tier_result(c, CACHE_L2, err);
        if (err == 0)
            count_evict(c, CACHE_L2, CACHE_EVICT_HEALTH, 1);
    }
    if (l3_del_path(c, key) == 1)
        count_evict(c, CACHE_L3, CACHE_EVICT_HEALTH, 1);
}

int cache_report_health(struct cache *c, const char *key, bool success,
                        struct entry **out, bool *evicted)
{
    struct fence_ticket tk = {NULL, false};
    struct entry *cur = NULL, *m = NULL;
    uint64_t v0;
    int from = 0, err;

    if (!c || !key)
        return -EINVAL;
    if (!key_ok(key))
        return -ENOENT;
    wmu_lock_key(c, key);
    fence_begin(c, key, &tk);
    err = walk(c, key, clock_now_ms(), false, &cur, &from, &v0);
    if (err)
        goto out;
    m = entry_dup(cur);
    if (!m) {
        err = -ENOMEM;
        goto out;
    }
    if (success) {
        m->failure_count = 0;
        m->health = ENTRY_HEALTH_HEALTHY;
    } else {
        if (m->failure_count < UINT32_MAX)
            m->failure_count++;
        m->health = ENTRY_HEALTH_UNHEALTHY;
    }
    if (!success && m->failure_count >= c->failure_threshold) {
        evict_health(c, key);
        if (evicted)
            *evicted = true;
        if (out)
            *out = NULL;
        goto out;
    }
    /* Not an access: update the tiers that hold it, L3 durably, without
     * pulling it into L1. */
    if (from == CACHE_L1)
        (void)l1_put(c, m, TIER_PUT_NOTOUCH, NULL);
    if (from <= CACHE_L2)
        l2_drop_key(c, key); /* crash safety: see l2_drop_key */
    if (l3_put_path(c, &m, 1) && tk.dels_in_flight) {
        fence_wait_dels(tk.f);
        (void)l3_put_path(c, &m, 1);
    }
    if (from <= CACHE_L2)
        (void)l2_put(c, m, TIER_PUT_NOTOUCH);
    if (evicted)
        *evicted = false;
    if (out)
        *out = entry_ref(m);
out:
    fence_end(&tk);
    wmu_unlock_key(c, key);
    entry_unref(m);
    entry_unref(cur);
    return err;
}

/* A growable array of entry references. */
struct evec {
    struct entry **v;
    size_t n, cap;
    int err;
};

static int evec_push(struct evec *a, struct entry *e)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        struct entry **v = realloc(a->v, cap * sizeof(*v));
        if (!v) {
            a->err = -ENOMEM;
            return -ENOMEM;
        }
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = entry_ref(e);
    return 0;
}

static void evec_free(struct evec *a)
{
    for (size_t i = 0; i < a->n; i++)
        entry_unref(a->v[i]);
    free(a->v);
    a->v = NULL;
    a->n = a->cap = 0;
}

static int collect_cb(void *arg, struct entry *e)
{
    return evec_push(arg, e) ? 1 : 0;
}

static int entry_key_cmp(const void *a, const void *b)
{
    return strcmp((*(struct entry *const *)a)->key,
                  (*(struct entry *const *)b)->key);
}

/* Sort and drop duplicate keys (keeps the first of each run). */
static void evec_sort_unique(struct evec *a)
{
    size_t w = 0;
    if (a->n < 2)
        return;
    qsort(a->v, a->n, sizeof(*a->v), entry_key_cmp);
    for (size_t r = 0; r < a->n; r++) {
        if (w && strcmp(a->v[w - 1]->key, a->v[r]->key) == 0)
            entry_unref(a->v[r]);
        else
            a->v[w++] = a->v[r];
    }
    a->n = w;
}

int cache_clear(struct cache *c, size_t *removed)
{
    struct tier_filter all;
    struct evec keys = {0};
    struct fence_ticket *tks;
    size_t total = 0, n3 = 0;
    struct tier *l3 = c ? c->ts[CACHE_L3].t : NULL;
    int err = 0;

    if (!c)
        return -EINVAL;
    tks = calloc(NFENCE, sizeof(*tks));
    if (!tks)
        return -ENOMEM;
    /* The gate, exclusively: no other write runs during a clear. */
    pthread_rwlock_wrlock(&c->wgate);
    for (size_t i = 0; i < NFENCE; i++) {
        tks[i].f = &c->fences[i];
        atomic_fetch_add(&tks[i].f->word, 1);
    }

    /* Distinct keys = L3's rows + keys held above L3 that L3 lacks. */
    tier_filter_init(&all, INT64_MIN);
    for (int t = CACHE_L1; t <= CACHE_L2; t++)
        if (usable(c, t))
            (void)c->ts[t].t->ops->scan(c->ts[t].t, &all, "", SIZE_MAX,
                                        collect_cb, &keys);
    evec_sort_unique(&keys);
    if (l3 && usable(c, CACHE_L3) && pending_drain(c) == 0) {
        for (size_t i = 0; i < keys.n; i++) {
            struct entry *e = NULL;
            int r = l3->ops->get(l3, keys.v[i]->key, &e);
            if (r == -ENOENT || r == -EBADMSG)
                total++;
            entry_unref(e);
        }
        err = l3->ops->clear(l3, &n3);
        cache_note_tier_result(c, CACHE_L3, err);
        if (err) {
            pending_add_clear(c);
            err = 0;
        }
        total += n3;
    } else if (l3) {
        size_t sz = l3->ops->size(l3);
        pending_add_clear(c);
        total = sz > keys.n ? sz : keys.n;
    } else {
        total = keys.n;
    }
    (void)c->ts[CACHE_L1].t->ops->clear(c->ts[CACHE_L1].t, NULL);
    if (usable(c, CACHE_L2)) {
        int r = c->ts[CACHE_L2].t->ops->clear(c->ts[CACHE_L2].t, NULL);
        cache_note_tier_result(c, CACHE_L2, r);
    }
    evec_free(&keys);
    for (size_t i = 0; i < NFENCE; i++)
        fence_end(&tks[i]);
    pthread_rwlock_unlock(&c->wgate);
    free(tks);
    if (removed)
        *removed = total;
    return err;
}

/* ------------------------------------------------------------------ */
/* List */

/* Pending puts matching f with key > after, sorted, at most max. */
static int pending_collect(struct cache *c, const struct tier_filter *f,
                           const char *after, size_t max, struct evec *out)
{
    struct pmap *maps[2];

    pthread_mutex_lock(&c->pmu);
    maps[0] = &c->cur;
    maps[1] = &c->inflight;
    for (int m = 0; m < 2 && !out->err; m++) {
        for (size_t i = 0; i < maps[m]->nb && !out->err; i++) {
            for (struct pop *p = maps[m]->b[i]; p; p = p->next) {
                if (!p->e || strcmp(p->key, after) <= 0 ||
                    !tier_filter_match(f, p->e))
                    continue;
                /* inflight ops hidden by a newer cur op are skipped */
                if (m == 1 && (pmap_find(&c->cur, p->key) || c->cur.clear))
                    continue;
                if (evec_push(out, p->e))
                    break;
            }
        }
    }
    pthread_mutex_unlock(&c->pmu);
    if (out->err)
        return out->err;
    evec_sort_unique(out);
    while (out->n > max)
        entry_unref(out->v[--out->n]);
    return 0;
}

/* Drop from an L3 result the keys the pending map overrides. Returns true
 * if any was dropped. */
static bool pending_filter_l3(struct cache *c, struct evec *l3)
{
    size_t w = 0;
    bool dropped = false;
    struct entry **garbage = NULL;
    size_t ng = 0;

    if (atomic_load(&c->pending_n) == 0 || l3->n == 0)
        return false;
    garbage = malloc(l3->n * sizeof(*garbage));
    if (!garbage)
        return false;
    pthread_mutex_lock(&c->pmu);
    for (size_t r = 0; r < l3->n; r++) {
        if (pending_state_locked(c, l3->v[r]->key, NULL) != PEND_NONE) {
            garbage[ng++] = l3->v[r];
            dropped = true;
        } else {
            l3->v[w++] = l3->v[r];
        }
    }
    l3->n = w;
    pthread_mutex_unlock(&c->pmu);
    for (size_t i = 0; i < ng; i++)
        entry_unref(garbage[i]);
    free(garbage);
    return dropped;
}

int cache_list(struct cache *c, const struct tier_filter *f, unsigned tier_mask,
               const char *after, size_t limit, tier_entry_cb cb, void *arg,
               bool *more)
{
    /* Sources in preference order: L1, L2, pending, L3. */
    struct evec src[4] = {{0}, {0}, {0}, {0}};
    size_t pos[4] = {0, 0, 0, 0};
    size_t fetch, distinct = 0, emitted = 0;
    bool l3_short = false;
    int rc = 0;

    if (more)
        *more = false;
    if (!c || !f || !cb)
        return -EINVAL;
    if (!after)
        after = "";
    if (limit == 0)
        return 0;
    fetch = limit == SIZE_MAX ? SIZE_MAX : limit + 1;

    for (int t = CACHE_L1; t <= CACHE_L3; t++) {
        int si = t == CACHE_L3 ? 3 : t;
        struct tier *tr = c->ts[t].t;
        int err;
        if (!(tier_mask & CACHE_TIER_MASK(t)) || !usable(c, t))
            continue;
        err = tr->ops->scan(tr, f, after, fetch, collect_cb, &src[si]);
        if (src[si].err)
            err = src[si].err;
        note_read_result(c, t, err);
        if (err) {
            rc = err;
            goto out;
        }
    }
    if ((tier_mask & CACHE_TIER_MASK(CACHE_L3)) &&
        (tier_mask & (CACHE_TIER_MASK(CACHE_L1) | CACHE_TIER_MASK(CACHE_L2))) &&
        c->ts[CACHE_L3].t && atomic_load(&c->pending_n) != 0) {
        bool full = src[3].n >= fetch;
        rc = pending_collect(c, f, after, fetch, &src[2]);
        if (rc)
            goto out;
        l3_short = pending_filter_l3(c, &src[3]) && full;
    }

    for (;;) {
        int best = -1;
        for (int s = 0; s < 4; s++) {
            if (pos[s] >= src[s].n)
                continue;
            if (best < 0 ||
                strcmp(src[s].v[pos[s]]->key, src[best].v[pos[best]]->key) < 0)
                best = s;
        }
        if (best < 0)
            break;
        {
            struct entry *e = src[best].v[pos[best]];
            for (int s = 0; s < 4; s++)
                while (pos[s] < src[s].n &&
                       strcmp(src[s].v[pos[s]]->key, e->key) == 0)
                    pos[s]++;
            distinct++;
            if (emitted >= limit)
                break;
            emitted++;
            rc = cb(arg, e);
            if (rc)
                break;
        }
    }
    if (more)
        *more = distinct > emitted || l3_short;
out:
    for (int s = 0; s < 4; s++)
        evec_free(&src[s]);
    return rc;
}

/* ------------------------------------------------------------------ */
/* Pick */

struct rng {
    uint64_t s[4];
};

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void rng_seed(struct rng *r, uint64_t seed)
{
    if (seed == 0) {
        if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) != sizeof(seed))
            seed = clock_mono_ns() ^ (uint64_t)(uintptr_t)r;
        if (seed == 0)
            seed = 0x5eed;
    }
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

/* xoshiro256** */
static uint64_t rng_next(struct rng *r)
{
    uint64_t *s = r->s;
    uint64_t res = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return res;
}

/* Uniform in (0, 1]. */
static double rng_unit(struct rng *r)
{
    return ((double)(rng_next(r) >> 11) + 1.0) * 0x1.0p-53;
}

static double pick_weight(const struct entry *e)
{
    double lat = e->latency_ms >= 0 ? (double)e->latency_ms : 1000.0;
    return 1.0 / ((1.0 + (double)e->failure_count) * (1.0 + lat / 1000.0));
}

struct cand {
    struct entry *e;
    int from;      /* tier the copy came from */
    double weight; /* pick_weight(e) */
};

static int cand_by_key(const void *a, const void *b)
{
    const struct cand *x = a, *y = b;
    int r = strcmp(x->e->key, y->e->key);
    return r ? r : x->from - y->from;
}

/* Draw one candidate of cands[0..n) with probability weight / sum of the
 * weights and swap it to position n - 1 (successive sampling = weighted
 * sampling without replacement). The sum is recomputed each time so no
 * rounding drift accumulates (n is at most a few thousand). */
static void draw_last(struct cand *cands, size_t n, struct rng *rng)
{
    double total = 0.0, r, acc = 0.0;
    size_t i = 0;
    struct cand tmp;

    for (size_t j = 0; j < n; j++)
        total += cands[j].weight;
    r = rng_unit(rng) * total;

    for (; i + 1 < n; i++) {
        acc += cands[i].weight;
        if (r <= acc)
            break;
    }
    tmp = cands[i];
    cands[i] = cands[n - 1];
    cands[n - 1] = tmp;
}

int cache_pick(struct cache *c, const struct tier_filter *f, size_t count,
               uint64_t rng_seed_in, struct entry **out, size_t *n)
{
    struct tier_filter pf;
    struct evec got[CACHE_NTIERS] = {{0}, {0}, {0}};
    struct cand *cands = NULL;
    size_t nc = 0, total = 0, k = 0, per;
    struct rng rng;
    int err = 0;

    if (!c || !f || !out || !n)
        return -EINVAL;
    *n = 0;
    if (count == 0)
        return 0;
    pf = *f;
    pf.exclude_unhealthy = 1;
    rng_seed(&rng, rng_seed_in);
    per = count > PICK_SAMPLE_MAX / 4 ? PICK_SAMPLE_MAX : count * 4;
    if (per < PICK_SAMPLE_MIN)
        per = PICK_SAMPLE_MIN;

    /* L1 (hot) plus the complete store: L3, or L2 while L3 is down. */
    for (int t = CACHE_L1; t <= CACHE_L3; t++) {
        struct tier *tr = c->ts[t].t;
        if (!usable(c, t))
            continue;
        if (t == CACHE_L2 && usable(c, CACHE_L3))
            continue;
        err =
            tr->ops->sample(tr, &pf, per, rng_next(&rng), collect_cb, &got[t]);
        if (got[t].err)
            err = got[t].err;
        note_read_result(c, t, err);
        err = 0; /* a failing tier only narrows the choice */
    }
    for (int t = 0; t < CACHE_NTIERS; t++)
        total += got[t].n;
    if (total == 0)
        goto out;
    cands = calloc(total, sizeof(*cands));
    if (!cands) {
        err = -ENOMEM;
        goto out;
    }
    for (int t = 0; t < CACHE_NTIERS; t++) {
        if (t == CACHE_L3)
            (void)pending_filter_l3(c, &got[t]);
        for (size_t i = 0; i < got[t].n; i++) {
            cands[nc].e = got[t].v[i];
            cands[nc].from = t;
            nc++;
        }
    }
    /* Dedupe by key, keeping the upper tier's copy. */
    qsort(cands, nc, sizeof(*cands), cand_by_key);
    {
        size_t w = 0;
        for (size_t r = 0; r < nc; r++)
            if (!w || strcmp(cands[w - 1].e->key, cands[r].e->key) != 0)
                cands[w++] = cands[r];
        nc = w;
    }
    for (size_t i = 0; i < nc; i++)
        cands[i].weight = pick_weight(cands[i].e);
    {
        for (size_t left = nc; left > 0 && k < count; left--) {
            struct cand *cd;
            draw_last(cands, left, &rng);
            cd = &cands[left - 1];
            if (cd->from != CACHE_L1 && verify_tokens(c, cd->e) != 0) {
                drop_bad_token(c, (enum cache_tier)cd->from, cd->e->key);
                continue;
            }
            out[k++] = entry_ref(cd->e);
        }
    }
    *n = k;
out:
    free(cands);
    for (int t = 0; t < CACHE_NTIERS; t++)
        evec_free(&got[t]);
    return err;
}

/* ------------------------------------------------------------------ */
/* Sweep, maintain */

size_t cache_sweep(struct cache *c, int64_t now_ms, size_t max)
{
    size_t total = 0;

    if (!c || max == 0)
        return 0;
    for (int t = 0; t < CACHE_NTIERS; t++) {
        struct tier *tr = c->ts[t].t;
        size_t removed = 0;
        int err;
        if (!usable(c, t))
            continue;
        err = tr->ops->sweep(tr, now_ms, max, &removed);
        if (t != CACHE_L1)
            cache_note_tier_result(c, t, err);
        count_evict(c, t, CACHE_EVICT_TTL, removed);
        total += removed;
    }
    return total;
}

static void reenable(struct cache *c, enum cache_tier t)
{
    atomic_store(&c->ts[t].consecutive, 0);
    atomic_store_explicit(&c->ts[t].degraded, false, memory_order_release);
    log_info("tier %s recovered: probe succeeded, tier re-enabled",
             cache_tier_name(t));
}

static void try_recover(struct cache *c, enum cache_tier t)
{
    struct tier *tr = c->ts[t].t;
    int err = tr->ops->probe(tr);

    if (err) {
        log_debug("tier %s still failing its probe (%d)", cache_tier_name(t),
                  err);
        return;
    }
    if (t == CACHE_L2 && c->ts[CACHE_L3].t) {
        /* L2 missed writes while degraded: start it afresh, but only once
         * L3 holds everything. */
        if (!usable(c, CACHE_L3) || atomic_load(&c->pending_n) != 0)
            return;
        err = tr->ops->clear(tr, NULL);
        if (err) {
            log_debug("tier l2 probe passed but clear failed (%d)", err);
            return;
        }
    }
    reenable(c, t);
}

void cache_maintain(struct cache *c)
{
    int err;

    if (!c)
        return;
    if (c->ts[CACHE_L3].t && atomic_load(&c->ts[CACHE_L3].degraded))
        try_recover(c, CACHE_L3);
    err = pending_drain(c);
    if (err && err != -EBUSY && err != -EAGAIN)
        log_debug("pending L3 writes not replayed yet (%d)", err);
    if (c->ts[CACHE_L2].t && atomic_load(&c->ts[CACHE_L2].degraded))
        try_recover(c, CACHE_L2);
    for (int t = 0; t < CACHE_NTIERS; t++) {
        struct tier *tr = c->ts[t].t;
        if (!usable(c, t) || !tr->ops->maintain)
            continue;
        err = tr->ops->maintain(tr);
        if (t != CACHE_L1)
            cache_note_tier_result(c, t, err);
    }
}

/* ------------------------------------------------------------------ */
/* Stats, config */

void cache_stats_snapshot(struct cache *c, struct cache_stats *out)
{
    uint64_t hits = 0;

    if (!out)
        return;
    memset(out, 0, sizeof(*out));
    if (!c)
        return;
    for (int t = 0; t < CACHE_NTIERS; t++) {
        struct tstate *ts = &c->ts[t];
        struct cache_tier_stats *o = &out->tier[t];
        o->present = ts->t != NULL;
        o->hits = pc_sum(&ts->hits);
        o->misses = pc_sum(&ts->misses);
        o->size = ts->t ? ts->t->ops->size(ts->t) : 0;
        o->capacity = c->caps[t];
        for (int r = 0; r < CACHE_NREASONS; r++)
            o->evictions[r] =
                atomic_load_explicit(&ts->evictions[r], memory_order_relaxed);
        /* Records a tier found corrupt (at open or on a read) and removed. */
        if (ts->t && ts->t->ops->corrupt_count)
            o->evictions[CACHE_EVICT_CORRUPTION] +=
                ts->t->ops->corrupt_count(ts->t);
        o->promotions =
            atomic_load_explicit(&ts->promotions, memory_order_relaxed);
        o->demotions =
            atomic_load_explicit(&ts->demotions, memory_order_relaxed);
        o->degraded = atomic_load(&ts->degraded);
        o->consecutive_failures = atomic_load(&ts->consecutive);
        o->failures_total =
            atomic_load_explicit(&ts->failures_total, memory_order_relaxed);
        hits += o->hits;
    }
    out->hits = hits;
    out->misses = pc_sum(&c->misses);
    out->lookups = out->hits + out->misses;
    out->writes = atomic_load_explicit(&c->writes, memory_order_relaxed);
    out->pending_l3 = atomic_load(&c->pending_n);
    out->warming = atomic_load(&c->warming);
}

void cache_set_warming(struct cache *c, bool warming)
{
    if (c)
        atomic_store(&c->warming, warming);
}

bool cache_is_warming(const struct cache *c)
{
    return c ? atomic_load(&((struct cache *)c)->warming) : false;
}

int64_t cache_ttl_for_source(const struct cache *c, const char *source)
{
    if (!c)
        return 0;
    if (source)
        for (size_t i = 0; i < c->n_source_ttls; i++)
            if (strcmp(c->source_ttls[i].name, source) == 0)
                return c->source_ttls[i].ttl_seconds;
    return c->default_ttl;
}

/* ------------------------------------------------------------------ */
/* Lifecycle */

int cache_new_with_tiers(const struct cache_config *cfg, struct tier *l1,
                         struct tier *l2, struct tier *l3, struct cache **out)
{
    struct cache *c = NULL;
    size_t size = sizeof(*c);
    int err = -EINVAL;

    if (!cfg || !l1 || !out || cfg->failure_threshold < 1 ||
        cfg->default_ttl < 1 || (cfg->n_source_ttls && !cfg->source_ttls))
        goto fail;
    for (size_t i = 0; i < cfg->n_source_ttls; i++)
        if (cfg->source_ttls[i].ttl_seconds < 0)
            goto fail;
    err = -ENOMEM;
    /* Over-aligned (striped counters): aligned_alloc needs a multiple. */
    size = (size + 63) & ~(size_t)63;
    c = aligned_alloc(64, size);
    if (!c)
        goto fail;
    memset(c, 0, size);
    if (cfg->n_source_ttls) {
        c->source_ttls = calloc(cfg->n_source_ttls, sizeof(*c->source_ttls));
        if (!c->source_ttls)
            goto fail;
        memcpy(c->source_ttls, cfg->source_ttls,
               cfg->n_source_ttls * sizeof(*c->source_ttls));
        for (size_t i = 0; i < cfg->n_source_ttls; i++)
            c->source_ttls[i].name[ENTRY_SOURCE_MAX] = '\0';
        c->n_source_ttls = cfg->n_source_ttls;
    }
    err = pthread_mutex_init(&c->pmu, NULL);
    if (err) {
        err = -err;
        goto fail;
    }
    err = pthread_rwlock_init(&c->wgate, NULL);
    if (err) {
        pthread_mutex_destroy(&c->pmu);
        err = -err;
        goto fail;
    }
    for (size_t i = 0; i < NFENCE; i++) {
        err = pthread_mutex_init(&c->wmu[i], NULL);
        if (err) {
            while (i-- > 0)
                pthread_mutex_destroy(&c->wmu[i]);
            pthread_rwlock_destroy(&c->wgate);
            pthread_mutex_destroy(&c->pmu);
            err = -err;
            goto fail;
        }
    }
    c->ts[CACHE_L1].t = l1;
    c->ts[CACHE_L2].t = l2;
    c->ts[CACHE_L3].t = l3;
    c->failure_threshold = cfg->failure_threshold;
    c->l2_cap = l2 ? cfg->l2_capacity : 0;
    c->caps[CACHE_L1] = cfg->l1_capacity;
    c->caps[CACHE_L2] = cfg->l2_capacity;
    c->caps[CACHE_L3] = cfg->l3_capacity;
    c->default_ttl = cfg->default_ttl;
    c->ring = cfg->ring;
    *out = c;
    return 0;
fail:
    if (c) {
        free(c->source_ttls);
        free(c);
    }
    tier_close(l1);
    tier_close(l2);
    tier_close(l3);
    return err;
}

int cache_open(const struct cache_config *cfg, struct cache **out)
{
    struct tier *l1 = NULL, *l2 = NULL, *l3 = NULL;
    int err;

    if (!cfg || !out || !cfg->data_dir || cfg->l1_capacity < 1 ||
        cfg->l2_capacity < 1)
        return -EINVAL;
    err = l1_mem_open(cfg->l1_capacity, &l1);
    if (err) {
        log_error_errno(-err, "cannot open tier l1");
        return err;
    }
    err = l2_jsonl_open(cfg->data_dir, cfg->l2_capacity, &l2);
    if (err) {
        log_error_errno(-err, "cannot open tier l2 in %s", cfg->data_dir);
        tier_close(l1);
        return err;
    }
    err = l3_sqlite_open(cfg->data_dir, cfg->l3_capacity, &l3);
    if (err) {
        log_error_errno(-err, "cannot open tier l3 in %s", cfg->data_dir);
        tier_close(l2);
        tier_close(l1);
        return err;
    }
    return cache_new_with_tiers(cfg, l1, l2, l3, out);
}

/* Same stored version (everything but the access statistics). */
static bool same_version(const struct entry *a, const struct entry *b)
{
#define STREQ(x, y) ((!(x) && !(y)) || ((x) && (y) && strcmp((x), (y)) == 0))
    return STREQ(a->proxy_url, b->proxy_url) &&
           STREQ(a->username_tok, b->username_tok) &&
           STREQ(a->password_tok, b->password_tok) &&
           STREQ(a->source, b->source) && a->scheme == b->scheme &&
           a->fetch_time == b->fetch_time && a->ttl_seconds == b->ttl_seconds &&
           a->expires_at == b->expires_at && a->health == b->health &&
           a->failure_count == b->failure_count &&
           strcmp(a->country, b->country) == 0 &&
           a->anonymity == b->anonymity && a->latency_ms == b->latency_ms;
#undef STREQ
}

/* At close: write L1's access statistics back where the stored version is
 * the same one (never overwrite a different version). */
static void writeback_l1(struct cache *c)
{
    struct tier *l1 = c->ts[CACHE_L1].t, *l3 = c->ts[CACHE_L3].t;
    struct tier_filter all;
    struct evec hot = {0};
    struct entry *batch[WRITEBACK_BATCH];
    size_t nb = 0, written = 0;

    if (!l3 || !usable(c, CACHE_L3) || atomic_load(&c->pending_n) != 0)
        return;
    tier_filter_init(&all, clock_now_ms());
    if (l1->ops->scan(l1, &all, "", SIZE_MAX, collect_cb, &hot) != 0 ||
        hot.err) {
        evec_free(&hot);
        return;
    }
    for (size_t i = 0; i <= hot.n; i++) {
        if (i < hot.n) {
            struct entry *e = hot.v[i], *s = NULL;
            if (l3->ops->get(l3, e->key, &s) == 0 && same_version(e, s) &&
                atomic_load(&e->access_count) > atomic_load(&s->access_count))
                batch[nb++] = e;
            entry_unref(s);
        }
        if (nb && (nb == WRITEBACK_BATCH || i == hot.n)) {
            size_t nv = 0;
            if (l3->ops->put_batch(l3, batch, nb, &nv) == 0) {
                written += nb;
                if (usable(c, CACHE_L2))
                    (void)c->ts[CACHE_L2].t->ops->put_batch(c->ts[CACHE_L2].t,
                                                            batch, nb, NULL);
            }
            nb = 0;
        }
    }
    if (written)
        log_debug("wrote access statistics of %zu entries back to L3", written);
    evec_free(&hot);
}

void cache_close(struct cache *c)
{
    struct pop *garbage = NULL;
    size_t left;

    if (!c)
        return;
    (void)pending_drain(c);
    left = atomic_load(&c->pending_n);
    if (left)
        log_error("%zu pending L3 operations could not be written and are "
                  "lost (the entries stay in L2 where it holds them)",
                  left);
    else
        writeback_l1(c);
    tier_close(c->ts[CACHE_L1].t);
    tier_close(c->ts[CACHE_L2].t);
    tier_close(c->ts[CACHE_L3].t);
    pmap_detach(&c->cur, &garbage);
    pmap_detach(&c->inflight, &garbage);
    pop_free_list(garbage);
    free(c->cur.b);
    free(c->inflight.b);
    pthread_mutex_destroy(&c->pmu);
    pthread_rwlock_destroy(&c->wgate);
    for (size_t i = 0; i < NFENCE; i++)
        pthread_mutex_destroy(&c->wmu[i]);
    free(c->source_ttls);
    free(c);
}
