/* SPDX-License-Identifier: MIT */
/*
 * L1: the in-memory tier: a sharded LRU cache (leveldb's ShardedLRUCache
 * idea). The key space is split into NSHARDS independent shards; each has
 * a chained hash table, an intrusive doubly-linked LRU list (head = most
 * recently used), its own share of the capacity and its own mutex.
 *
 * Design:
 *  - Hash: keys are lowercase hex SHA-256, already uniform, so the first
 *    16 hex digits decoded as a uint64 are the hash. The top bits pick the
 *    shard, the low bits the bucket. A shard's bucket array starts small
 *    and doubles (under its lock) while count > buckets, up to
 *    next_pow2(shard capacity), so a huge configured capacity costs memory
 *    only when it is used.
 *  - Shards: the largest power of two <= min(16, capacity / 64), so
 *    capacities below 128 have a single shard and are exact LRU (the tests
 *    rely on that); the default 1,000 has 8 shards of 125. Capacity is split
 *    exactly (the sum is the capacity). LRU order is exact within a shard;
 *    since keys fall into shards uniformly at random, the victim is the
 *    least recently used of a random 1/NSHARDS of the entries, which is near
 *    the global LRU tail (the usual sharded-LRU approximation).
 *  - Why shards and a plain mutex rather than one rwlock: measured here, an
 *    uncontended rwlock read lock/unlock costs ~74 ns and any LRU move on a
 *    get needs the write lock anyway, so two request threads on one
 *    rwlock spent most of a get sleeping on the futex. A per-shard
 *    adaptive mutex (spins briefly before sleeping) is ~25 ns uncontended,
 *    two threads rarely meet on the same shard, and every get can move its
 *    entry to the front: exact per-shard LRU at no extra cost.
 *  - Each node owns one reference to an immutable struct entry. get returns
 *    a new reference to the same object, so the manager bumps the entry's
 *    _Atomic access statistics without any L1 lock.
 *  - Eviction: a put that makes a shard exceed its capacity unlinks the
 *    shard's LRU tail and hands its reference to the caller (*victim).
 *  - scan collects, shard by shard, the `max` smallest matching keys of
 *    each shard (as references, taken under that shard's lock), then merges
 *    them without any lock. sample walks shards and buckets in a
 *    pseudo-random order with a visit budget. sweep walks each shard's
 *    buckets in chunks of SWEEP_CHUNK, dropping the lock between chunks.
 *
 * Thread-safety: one mutex per shard guards that shard's buckets, LRU list
 * and node fields. count is also kept as an _Atomic per shard so size()
 * takes no lock. Lock order: a shard lock is a leaf; no two shard locks are
 * ever held together, and nothing else is locked or called under one
 * (entry_ref and the entry_unref of a non-last reference are plain
 * atomics). References that may be the last (replaced, victim, swept or
 * cleared entries) are released after unlocking; scan/sample callbacks run
 * with no lock held, on references taken under the lock.
 *
 * Ownership: put borrows its entry and takes its own reference; get, the
 * victim and the scan/sample callbacks hand out or lend references, never
 * node pointers.
 */
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "storage/l1_mem.h"

#define LOG_MODULE "l1"
#include "common/log.h"

#define MAX_SHARDS      16u
#define MIN_PER_SHARD   64u
#define INITIAL_BUCKETS 256u
#define MAX_BUCKETS     ((size_t)1 << 30)
#define SWEEP_CHUNK     256u
/* A bounded sample visits at most max(SAMPLE_MIN_VISIT, SAMPLE_FACTOR *
 * max) nodes. */
#define SAMPLE_MIN_VISIT 4096u
#define SAMPLE_FACTOR    16u

struct node {
    struct node *hnext;       /* hash chain */
    struct node *prev, *next; /* LRU list; shard.head is the sentinel */
    struct entry *e;          /* one reference owned by the node */
    uint64_t hash;            /* key_hash(e->key) */
};

struct shard {
    /* Guards every field below except count, and the nodes of this
     * shard. Leaf lock. */
    _Alignas(64) pthread_mutex_t mu;
    struct node **buckets;
    size_t nbuckets;      /* power of two */
    size_t max_buckets;   /* power of two, >= nbuckets */
    struct node head;     /* head.next = MRU, head.prev = LRU */
    size_t cap;           /* immutable */
    size_t sweep_cursor;  /* next bucket the sweeper looks at */
    _Atomic size_t count; /* written under mu, read anywhere */
};

struct l1 {
    struct tier base; /* must be first */
    unsigned nshards; /* power of two, immutable */
    unsigned shift;   /* hash >> shift picks the shard */
    struct shard shards[MAX_SHARDS];
};

static inline struct l1 *to_l1(struct tier *t)
{
    return (struct l1 *)t;
}

/* The value of a lowercase hex digit, or 0xff. Written without branches
 * (conditional moves): the digits of a SHA-256 are random, so
 * per-character branches would mispredict half the time on the get path. */
static inline unsigned hexv(unsigned char c)
{
    unsigned d = (unsigned)c - '0', a = (unsigned)c - 'a';
    unsigned v = a < 6 ? a + 10 : 0xff;
    return d < 10 ? d : v;
}

static int hexval(unsigned char c)
{
    unsigned v = hexv(c);
    return v > 15 ? -1 : (int)v;
}

/* The first 16 hex digits as a uint64. False if key does not start with 16
 * lowercase hex digits (stops at the first bad byte, so a short string is
 * never read past its NUL). */
static bool key_hash(const char *key, uint64_t *out)
{
    uint64_t h = 0;
    for (int i = 0; i < 16; i++) {
        unsigned v = hexv((unsigned char)key[i]);
        if (v > 15)
            return false;
        h = (h << 4) | v;
    }
    *out = h;
    return true;
}

static bool key_valid(const char *key)
{
    for (int i = 0; i < ENTRY_KEY_LEN; i++)
        if (hexval((unsigned char)key[i]) < 0)
            return false;
    return key[ENTRY_KEY_LEN] == '\0';
}

static size_t next_pow2(size_t n)
{
    size_t p = 1;
    while (p < n && p < MAX_BUCKETS)
        p <<= 1;
    return p;
}

static struct shard *shard_of(struct l1 *l, uint64_t h)
{
    return &l->shards[l->nshards == 1 ? 0 : (unsigned)(h >> l->shift)];
}

static void lock(struct shard *sh)
{
    pthread_mutex_lock(&sh->mu);
}

static void unlock(struct shard *sh)
{
    pthread_mutex_unlock(&sh->mu);
}

/* Caller holds sh->mu. */
static struct node *find(const struct shard *sh, uint64_t h, const char *key)
{
    struct node *n = sh->buckets[h & (sh->nbuckets - 1)];
    for (; n; n = n->hnext)
        if (n->hash == h && strcmp(n->e->key, key) == 0)
            return n;
    return NULL;
}

/* Caller holds sh->mu. */
static void hash_insert(struct shard *sh, struct node *n)
{
    struct node **b = &sh->buckets[n->hash & (sh->nbuckets - 1)];
    n->hnext = *b;
    *b = n;
}

/* Caller holds sh->mu; n is in the table. */
static void hash_unlink(struct shard *sh, struct node *n)
{
    struct node **pp = &sh->buckets[n->hash & (sh->nbuckets - 1)];
    while (*pp != n)
        pp = &(*pp)->hnext;
    *pp = n->hnext;
    n->hnext = NULL;
}

/* Caller holds sh->mu. */
static void lru_unlink(struct node *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = NULL;
}

/* Caller holds sh->mu; n is not in the list. */
static void lru_push_front(struct shard *sh, struct node *n)
{
    n->prev = &sh->head;
    n->next = sh->head.next;
    sh->head.next->prev = n;
    sh->head.next = n;
}

/* Caller holds sh->mu. */
static void lru_move_front(struct shard *sh, struct node *n)
{
    if (sh->head.next == n)
        return;
    lru_unlink(n);
    lru_push_front(sh, n);
}

static size_t count_of(const struct shard *sh)
{
    return atomic_load_explicit(&sh->count, memory_order_relaxed);
}

/* Caller holds sh->mu. */
static void count_add(struct shard *sh, long d)
{
    atomic_store_explicit(&sh->count, (size_t)((long)count_of(sh) + d),
                          memory_order_relaxed);
}

/* Double the bucket array if the load factor exceeds 1. On allocation
 * failure the shard keeps working with longer chains. sh->mu held. */
static void maybe_grow(struct shard *sh)
{
    size_t nb = sh->nbuckets * 2;
    struct node **nbk;

    if (count_of(sh) <= sh->nbuckets || sh->nbuckets >= sh->max_buckets)
        return;
    nbk = calloc(nb, sizeof(*nbk));
    if (!nbk)
        return;
    for (size_t i = 0; i < sh->nbuckets; i++) {
        struct node *n = sh->buckets[i];
        while (n) {
            struct node *next = n->hnext;
            struct node **b = &nbk[n->hash & (nb - 1)];
            n->hnext = *b;
            *b = n;
            n = next;
        }
    }
    free(sh->buckets);
    sh->buckets = nbk;
    sh->nbuckets = nb;
}

static void node_free(struct node *n)
{
    if (!n)
        return;
    entry_unref(n->e);
    free(n);
}

/* Free a list of nodes linked through hnext. */
static void free_list(struct node *list)
{
    while (list) {
        struct node *next = list->hnext;
        node_free(list);
        list = next;
    }
}

static int l1_get(struct tier *t, const char *key, struct entry **out)
{
    struct l1 *l = to_l1(t);
    struct shard *sh;
    struct node *n;
    uint64_t h;

    if (!key || !out || !key_hash(key, &h))
        return -ENOENT;
    sh = shard_of(l, h);
    lock(sh);
    n = find(sh, h, key);
    if (n) {
        lru_move_front(sh, n);
        *out = entry_ref(n->e);
    }
    unlock(sh);
    return n ? 0 : -ENOENT;
}

static int l1_put(struct tier *t, struct entry *e, unsigned flags,
                  struct entry **victim)
{
    struct l1 *l = to_l1(t);
    struct shard *sh;
    struct node *fresh, *n, *vic = NULL;
    struct entry *old = NULL;
    uint64_t h;

    if (!e || !key_valid(e->key) || !key_hash(e->key, &h))
        return -EINVAL;
    fresh = calloc(1, sizeof(*fresh));
    if (!fresh)
        return -ENOMEM;
    fresh->hash = h;
    fresh->e = entry_ref(e);
    sh = shard_of(l, h);

    lock(sh);
    n = find(sh, h, e->key);
    if (n) {
        /* Replace in place: swap the entry, keep the node. */
        old = n->e;
        n->e = fresh->e;
        fresh->e = NULL;
        if (!(flags & TIER_PUT_NOTOUCH))
            lru_move_front(sh, n);
    } else {
        hash_insert(sh, fresh);
        lru_push_front(sh, fresh);
        count_add(sh, 1);
        fresh = NULL;
        if (count_of(sh) > sh->cap) {
            vic = sh->head.prev;
            hash_unlink(sh, vic);
            lru_unlink(vic);
            count_add(sh, -1);
        }
        maybe_grow(sh);
    }
    unlock(sh);

    /* Possibly last references: released without the lock. */
    entry_unref(old);
    free(fresh); /* if still ours, its entry reference moved into n */
    if (vic) {
        if (victim) {
            *victim = vic->e; /* the node's reference moves to the caller */
            vic->e = NULL;
        }
        node_free(vic);
    }
    return 0;
}

static int l1_put_batch(struct tier *t, struct entry *const *es, size_t n,
                        size_t *n_victims)
{
    size_t nv = 0;
    int first_err = 0;

    if (!es && n)
        return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        struct entry *v = NULL;
        int err = l1_put(t, es[i], 0, &v);
        if (err && !first_err)
            first_err = err;
        if (v) {
            nv++;
            entry_unref(v);
        }
    }
    if (n_victims)
        *n_victims = nv;
    return first_err;
}

static int l1_del(struct tier *t, const char *key)
{
    struct l1 *l = to_l1(t);
    struct shard *sh;
    struct node *n;
    uint64_t h;

    if (!key || !key_hash(key, &h))
        return -ENOENT;
    sh = shard_of(l, h);
    lock(sh);
    n = find(sh, h, key);
    if (n) {
        hash_unlink(sh, n);
        lru_unlink(n);
        count_add(sh, -1);
    }
    unlock(sh);
    if (!n)
        return -ENOENT;
    node_free(n);
    return 0;
}

/* --- scan: the `max` smallest matching keys > after --- */

static int key_cmp(const struct entry *a, const struct entry *b)
{
    return strcmp(a->key, b->key);
}

static void heap_sift_down(struct entry **h, size_t n, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && key_cmp(h[l], h[m]) > 0)
            m = l;
        if (r < n && key_cmp(h[r], h[m]) > 0)
            m = r;
        if (m == i)
            return;
        struct entry *tmp = h[i];
        h[i] = h[m];
        h[m] = tmp;
        i = m;
    }
}

static void heap_sift_up(struct entry **h, size_t i)
{
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (key_cmp(h[i], h[p]) <= 0)
            return;
        struct entry *tmp = h[i];
        h[i] = h[p];
        h[p] = tmp;
        i = p;
    }
}

static int qsort_key_cmp(const void *a, const void *b)
{
    return key_cmp(*(struct entry *const *)a, *(struct entry *const *)b);
}

/* Call cb for each of es[0..n) in order (until it returns non-zero), then
 * unref them all. */
static int deliver(struct entry **es, size_t n, tier_entry_cb cb, void *arg)
{
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        if (rc == 0)
            rc = cb(arg, es[i]);
        entry_unref(es[i]);
    }
    return rc;
}

/*
 * Append to out[*n..] (room for cap more) references to the `cap`
 * smallest keys > after of shard sh matching f. The heap holds borrowed
 * pointers while the lock is held; the survivors are referenced before
 * unlocking (the nodes still hold theirs: never the last).
 */
static void scan_shard(struct shard *sh, const struct tier_filter *f,
                       const char *after, size_t cap, struct entry **out,
                       size_t *n)
{
    struct entry **heap = out + *n;
    size_t k = 0;

    lock(sh);
    for (struct node *nd = sh->head.next; nd != &sh->head; nd = nd->next) {
        struct entry *e = nd->e;
        if (strcmp(e->key, after) <= 0 || !tier_filter_match(f, e))
            continue;
        if (k < cap) {
            heap[k] = e;
            heap_sift_up(heap, k);
            k++;
        } else if (key_cmp(e, heap[0]) < 0) {
            heap[0] = e;
            heap_sift_down(heap, k, 0);
        }
    }
    for (size_t i = 0; i < k; i++)
        entry_ref(heap[i]);
    unlock(sh);
    *n += k;
}

static int l1_scan(struct tier *t, const struct tier_filter *f,
                   const char *after, size_t max, tier_entry_cb cb, void *arg)
{
    struct l1 *l = to_l1(t);
    struct entry **got;
    size_t n = 0, room = 0, caps[MAX_SHARDS];
    int rc;

    if (!f || !cb)
        return -EINVAL;
    if (!after)
        after = "";
    if (max == 0)
        return 0;
    /* Room per shard: min(max, its size now, plus slack for concurrent
     * inserts which are then simply not seen). */
    for (unsigned s = 0; s < l->nshards; s++) {
        size_t c = count_of(&l->shards[s]) + 16;
        caps[s] = c < max ? c : max;
        room += caps[s];
    }
    got = malloc(room * sizeof(*got));
    if (!got)
        return -ENOMEM;
    for (unsigned s = 0; s < l->nshards; s++)
        scan_shard(&l->shards[s], f, after, caps[s], got, &n);

    qsort(got, n, sizeof(*got), qsort_key_cmp);
    while (n > max)
        entry_unref(got[--n]);
    rc = deliver(got, n, cb, arg);
    free(got);
    return rc;
}

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/*
 * Visit shards from a random one on, and in each shard its buckets in a
 * pseudo-random permutation (random start, random odd stride: a full cycle
 * for a power-of-two table), collecting matches until max are found or the
 * visit budget is spent. Shard and bucket are functions of the key's
 * SHA-256, independent of everything a filter looks at, so this is a
 * uniform random sample of the matches when the budget covers the table,
 * and a random subset of them otherwise.
 */
static int l1_sample(struct tier *t, const struct tier_filter *f, size_t max,
                     uint64_t seed, tier_entry_cb cb, void *arg)
{
    struct l1 *l = to_l1(t);
    struct entry **got = NULL;
    size_t n = 0, cap = 0, budget, visited = 0;
    uint64_t s = seed;
    unsigned first;
    int rc;

    if (!f || !cb)
        return -EINVAL;
    if (max == 0)
        return 0;
    budget = max > SIZE_MAX / SAMPLE_FACTOR ? SIZE_MAX : max * SAMPLE_FACTOR;
    if (budget < SAMPLE_MIN_VISIT)
        budget = SAMPLE_MIN_VISIT;
    for (unsigned i = 0; i < l->nshards; i++)
        cap += count_of(&l->shards[i]);
    if (cap > max)
        cap = max;
    if (cap == 0)
        return 0;
    got = malloc(cap * sizeof(*got));
    if (!got)
        return -ENOMEM;
    first = (unsigned)(splitmix64(&s) & (l->nshards - 1));
    for (unsigned k = 0; k < l->nshards && n < cap && visited < budget; k++) {
        struct shard *sh = &l->shards[(first + k) & (l->nshards - 1)];
        uint64_t start = splitmix64(&s), stride = splitmix64(&s) | 1u;
        lock(sh);
        for (size_t i = 0; i < sh->nbuckets && n < cap && visited < budget;
             i++) {
            size_t b =
                (size_t)((start + (uint64_t)i * stride) & (sh->nbuckets - 1));
            for (struct node *nd = sh->buckets[b]; nd && n < cap;
                 nd = nd->hnext) {
                visited++;
                if (tier_filter_match(f, nd->e))
                    got[n++] = entry_ref(nd->e);
            }
        }
        unlock(sh);
    }
    rc = deliver(got, n, cb, arg);
    free(got);
    return rc;
}

/* Remove up to `room` expired nodes of buckets [b0, b0 + nb) of sh onto
 * *dead (linked through hnext). sh->mu held. Returns how many. */
static size_t sweep_chunk(struct shard *sh, size_t b0, size_t nb,
                          int64_t now_ms, size_t room, struct node **dead)
{
    size_t removed = 0;
    for (size_t i = 0; i < nb && removed < room; i++) {
        struct node **pp = &sh->buckets[(b0 + i) & (sh->nbuckets - 1)];
        while (*pp && removed < room) {
            struct node *n = *pp;
            if (entry_expired(n->e, now_ms)) {
                *pp = n->hnext;
                lru_unlink(n);
                count_add(sh, -1);
                n->hnext = *dead;
                *dead = n;
                removed++;
            } else {
                pp = &n->hnext;
            }
        }
    }
    return removed;
}

/* Sweep one shard: one pass over its buckets at most, from its cursor, in
 * chunks, dropping the lock between chunks. */
static size_t sweep_shard(struct shard *sh, int64_t now_ms, size_t room)
{
    size_t total = 0, seen = 0, table;

    lock(sh);
    table = sh->nbuckets;
    unlock(sh);
    while (seen < table && total < room) {
        struct node *dead = NULL;
        size_t nb = table - seen < SWEEP_CHUNK ? table - seen : SWEEP_CHUNK;
        lock(sh);
        total +=
            sweep_chunk(sh, sh->sweep_cursor, nb, now_ms, room - total, &dead);
        sh->sweep_cursor += nb;
        unlock(sh);
        free_list(dead);
        seen += nb;
    }
    return total;
}

static int l1_sweep(struct tier *t, int64_t now_ms, size_t max, size_t *removed)
{
    struct l1 *l = to_l1(t);
    size_t total = 0;

    for (unsigned s = 0; s < l->nshards && total < max; s++)
        total += sweep_shard(&l->shards[s], now_ms, max - total);
    if (removed)
        *removed = total;
    return 0;
}

/* Detach every node of sh onto *list (through hnext); returns how many.
 * sh->mu held (or the tier is being closed). */
static size_t detach_all(struct shard *sh, struct node **list)
{
    size_t n = 0;
    struct node *nd = sh->head.next;
    while (nd != &sh->head) {
        struct node *next = nd->next;
        nd->hnext = *list;
        *list = nd;
        n++;
        nd = next;
    }
    sh->head.next = sh->head.prev = &sh->head;
    memset(sh->buckets, 0, sh->nbuckets * sizeof(*sh->buckets));
    atomic_store_explicit(&sh->count, 0, memory_order_relaxed);
    return n;
}

static int l1_clear(struct tier *t, size_t *removed)
{
    struct l1 *l = to_l1(t);
    size_t n = 0;

    for (unsigned s = 0; s < l->nshards; s++) {
        struct node *list = NULL;
        lock(&l->shards[s]);
        n += detach_all(&l->shards[s], &list);
        unlock(&l->shards[s]);
        free_list(list);
    }
    if (removed)
        *removed = n;
    return 0;
}

static size_t l1_size(struct tier *t)
{
    struct l1 *l = to_l1(t);
    size_t n = 0;
    for (unsigned s = 0; s < l->nshards; s++)
        n += count_of(&l->shards[s]);
    return n;
}

static uint64_t l1_corrupt_count(struct tier *t)
{
    (void)t;
    return 0; /* memory holds only entries that were valid when put */
}

static int l1_probe(struct tier *t)
{
    (void)t;
    return 0;
}

static void shard_fini(struct shard *sh)
{
    struct node *list = NULL;
    if (!sh->buckets)
        return;
    detach_all(sh, &list);
    free_list(list);
    pthread_mutex_destroy(&sh->mu);
    free(sh->buckets);
    sh->buckets = NULL;
}

static void l1_close(struct tier *t)
{
    struct l1 *l = to_l1(t);

    if (!l)
        return;
    for (unsigned s = 0; s < l->nshards; s++)
        shard_fini(&l->shards[s]);
    free(l);
}

static const struct tier_ops l1_ops = {
    .name = "l1",
    .get = l1_get,
    .put = l1_put,
    .put_batch = l1_put_batch,
    .del = l1_del,
    .scan = l1_scan,
    .sample = l1_sample,
    .sweep = l1_sweep,
    .clear = l1_clear,
    .size = l1_size,
    .corrupt_count = l1_corrupt_count,
    .probe = l1_probe,
    .maintain = NULL,
    .close = l1_close,
};

static int shard_init(struct shard *sh, size_t cap)
{
    pthread_mutexattr_t attr;
    int err;

    sh->cap = cap;
    sh->max_buckets = next_pow2(cap);
    sh->nbuckets =
        sh->max_buckets < INITIAL_BUCKETS ? sh->max_buckets : INITIAL_BUCKETS;
    sh->head.next = sh->head.prev = &sh->head;
    sh->buckets = calloc(sh->nbuckets, sizeof(*sh->buckets));
    if (!sh->buckets)
        return -ENOMEM;
    err = pthread_mutexattr_init(&attr);
    if (!err) {
#if defined(__GLIBC__)
        /* Critical sections are a few dozen ns: spin a little before
         * sleeping on the futex. */
        pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_ADAPTIVE_NP);
#endif
        err = pthread_mutex_init(&sh->mu, &attr);
        pthread_mutexattr_destroy(&attr);
    }
    if (err) {
        free(sh->buckets);
        sh->buckets = NULL;
        return -err;
    }
    return 0;
}

int l1_mem_open(size_t capacity, struct tier **out)
{
    struct l1 *l;
    unsigned n = 1, bits = 0;
    int err = 0;

    if (capacity < 1 || !out)
        return -EINVAL;
    while (n * 2 <= MAX_SHARDS && capacity / (n * 2) >= MIN_PER_SHARD) {
        n *= 2;
        bits++;
    }
    /* Over-aligned shards: aligned_alloc needs a multiple of 64. */
    l = aligned_alloc(64, (sizeof(*l) + 63) & ~(size_t)63);
    if (!l)
        return -ENOMEM;
    memset(l, 0, sizeof(*l));
    l->base.ops = &l1_ops;
    l->nshards = n;
    l->shift = 64 - bits;
    for (unsigned s = 0; s < n && !err; s++)
        err = shard_init(&l->shards[s], capacity / n + (s < capacity % n));
    if (err) {
        l1_close(&l->base);
        return err;
    }
    *out = &l->base;
    return 0;
}
