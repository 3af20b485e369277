/* SPDX-License-Identifier: MIT */
/*
 * L2: append-only JSONL shards with an in-memory index (the Bitcask design).
 *
 * Why: L2 keeps the warm entries across restarts in a human-readable form
 * without the cost the reference paid (it rewrote a whole JSONL file per
 * write). Every change is one appended line; reads are one pread(2) of a
 * line whose position the index remembers.
 *
 * Layout: DIR/l2/shard-00.jsonl .. shard-15.jsonl (mode 0600, directories
 * 0700). The shard of a key is its first hex digit, so shard order is key
 * order (scan walks shards 0..15 and sorts within one). A line is either an
 * entry (formats_entry_to_line) or a tombstone (formats_tombstone_line).
 * The last valid line for a key wins; a tombstone removes the key.
 *
 * Index: per shard, a chained hash table key -> struct rec (offset and
 * length of the live line, expires_at for the sweeper) plus an LRU list
 * (newest at the head). Recency is a global tick (atomic counter) stamped
 * on a record whenever it moves to the head, under its shard lock, so each
 * shard's list is ordered by tick and the global LRU entry is the shard
 * tail with the smallest tick: eviction reads the 16 tail ticks (atomic
 * hints), locks the oldest shard and re-checks under that lock. Capacity is
 * counted by an atomic total; a put that adds a key beyond the capacity
 * evicts one entry (tombstone + index removal).
 *
 * Compaction invariant: compaction of a shard writes exactly the records in
 * that shard's index (oldest first) to shard-XX.jsonl.tmp, fsyncs it,
 * renames it over the shard and fsyncs the directory, then adopts the new
 * offsets. After it the file holds no dead line and no tombstone is needed,
 * because no older record for any key remains. It runs from maintain() when
 * dead bytes exceed 64 KiB and half the file, or when the shard was marked
 * (see failures below), and inline on the write path when dead bytes exceed
 * 1 MiB and half the file.
 *
 * Open: each shard is read sequentially line by line (lines are bounded by
 * FORMATS_LINE_MAX; longer ones are corrupt and skipped). Corrupt lines are
 * counted and logged at WARNING with their key when readable; a corrupt
 * line whose key is readable also drops any older record of that key (the
 * newest write of it is lost, so the older one is stale). A last line
 * without '\n' (crash mid-append) is truncated away. If more than capacity
 * records are live, the least recent ones are dropped from the index (not
 * tombstoned); recency at open is the file order within a shard, shards
 * being interleaved by max(fetch_time, last_accessed) of their entries.
 * Shards with corrupt or dropped lines are marked for compaction (until it
 * runs, a restart finds and counts the same corrupt lines again).
 *
 * Failures: an append is one write(2) on an O_APPEND descriptor (its offset
 * is read back with lseek, so the index follows the real end of file even
 * if the file was shortened behind our back); a short or
 * failed write is truncated back to the previous end (if that ftruncate
 * fails too, the shard refuses appends until it succeeds, see probe), so
 * the index never points at bytes that were not fully written. Errors map
 * to -ENOSPC (also EDQUOT, EFBIG), -EACCES, -EROFS, -EIO. A failed put of a
 * new key leaves the index unchanged. Where a failure would leave the index
 * serving data that the caller has replaced or removed (failed put of an
 * existing key, failed delete, failed tombstone of an eviction, sweep or
 * corrupt record) the key is forgotten anyway ("when in doubt, forget":
 * a cache must not serve stale or deleted data; L3 holds the truth) and
 * the shard is marked for compaction, which rewrites it without the
 * forgotten record. Until then, a delete of a key absent from the index of
 * a marked shard still appends a tombstone. Residual risk: a restart while
 * the disk stays full and before that compaction can bring a forgotten
 * record back.
 *
 * Durability: L2 does not fsync per write (L3 is the durable tier); data
 * survives a process crash (page cache) and maintain() fdatasyncs shards
 * with unsynced appends. clear() fsyncs its truncations.
 *
 * Thread-safety and lock order: one mutex per shard guards everything of
 * that shard (fd, end, live bytes, generation, flags, hash table, LRU list,
 * the records). No code path holds two shard locks, so there is no lock
 * order to respect; the only nesting is a shard lock then the log (which
 * has no lock). A shard lock is held across that shard's own small syscalls
 * (append, pread of one line, ftruncate) and across the compaction of that
 * shard (shards are small since L2 is bounded), never across JSON decoding,
 * a callback or another tier. Entries are encoded before the lock is taken
 * and decoded after it is released; a decode failure re-takes the lock and
 * removes the record only if it is still the same (generation + offset).
 * Totals (size, tick, corrupt count) are atomics.
 *
 * Ownership: entries passed in are borrowed and serialised; entries handed
 * out are new references decoded from disk.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define LOG_MODULE "l2"
#include "common/log.h"
#include "common/svc.h"
#include "storage/formats.h"
#include "storage/l2_jsonl.h"

#define DEAD_INLINE_MIN (1024 * 1024) /* write-path compaction trigger */
#define DEAD_MAINT_MIN  (64 * 1024)   /* maintain() compaction trigger */
#define BATCH_MAX       256           /* removals per lock hold */
#define WRITE_CHUNK     (1024 * 1024) /* put_batch bytes per append */
#define COPY_BUF        (256 * 1024)  /* compaction copy buffer */
#define LOAD_BUF        (2 * FORMATS_LINE_MAX + 2)
#define LOAD_LOG_MAX    100  /* corrupt lines logged per shard */
#define SAMPLE_ENUM_MAX 4096 /* sample by enumeration up to this */
#define PROBE_BYTES     4096
#define NAME_LEN        32

/* One live record. Guarded by its shard's lock. */
struct rec {
    struct rec *hnext;  /* hash chain */
    struct rec *newer;  /* LRU list towards the head */
    struct rec *older;  /* LRU list towards the tail */
    uint64_t tick;      /* recency stamp; decreasing from head to tail */
    int64_t expires_at; /* ms, copied from the entry for sweep */
    int64_t aux;        /* scratch: recency at open, new offset in compaction */
    off_t off;          /* line start in the shard file */
    uint32_t len;       /* line length including '\n' */
    char key[ENTRY_KEY_LEN + 1];
};

struct shard {
    pthread_mutex_t mu; /* guards every field below but n, oldest_tick */
    int idx;
    int fd;             /* O_RDWR | O_APPEND, -1 when not open */
    off_t end;          /* file size as far as the index knows */
    off_t live;         /* bytes of indexed lines */
    uint64_t gen;       /* bumped when offsets change (compact, clear) */
    bool torn;          /* a failed append left bytes past end */
    bool needs_compact; /* file holds records the index forgot */
    bool unsynced;      /* appends since the last fdatasync */
    struct rec **buckets;
    size_t mask;      /* buckets - 1, a power of two minus one */
    _Atomic size_t n; /* records; written under mu, read as a hint */
    struct rec *newest;
    struct rec *oldest;
    _Atomic uint64_t oldest_tick; /* tick of oldest, UINT64_MAX if empty */
};

struct l2 {
    struct tier base;
    size_t cap;
    int dirfd;
    char *dir;             /* DIR/l2, for logs */
    _Atomic size_t n;      /* records over all shards */
    _Atomic uint64_t tick; /* recency clock */
    _Atomic uint64_t corrupt;
    _Atomic unsigned sweep_from; /* first shard of the next sweep */
    int nmu;                     /* shard mutexes initialised (open/close) */
    struct shard shards[L2_SHARDS];
};

struct keyv {
    char key[ENTRY_KEY_LEN + 1];
};

/* ---------------------------------------------------------------------- */
/* Small helpers                                                          */

static int err_from_errno(int e)
{
    switch (e) {
    case ENOSPC:
    case EDQUOT:
    case EFBIG:
        return -ENOSPC;
    case EACCES:
    case EPERM:
        return -EACCES;
    case EROFS:
        return -EROFS;
    case ENOMEM:
        return -ENOMEM;
    default:
        return -EIO;
    }
}

static int shard_idx(const char *key)
{
    char c = key[0];

    return c <= '9' ? c - '0' : c - 'a' + 10;
}

static char shard_char(int idx)
{
    return "0123456789abcdef"[idx];
}

static void shard_names(int idx, char name[NAME_LEN], char tmp[NAME_LEN])
{
    snprintf(name, NAME_LEN, "shard-%02d.jsonl", idx);
    snprintf(tmp, NAME_LEN, "shard-%02d.jsonl.tmp", idx);
}

static uint64_t key_hash(const char *key)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */

    for (size_t i = 0; i < ENTRY_KEY_LEN; i++) {
        h ^= (unsigned char)key[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Best effort: the key of a line formats could not decode, for the log. */
static void guess_key(const char *line, size_t len, char out[ENTRY_KEY_LEN + 1])
{
    static const char pat[] = "\"key\":\"";
    size_t plen = sizeof pat - 1;
    size_t lim = len < 256 ? len : 256;
    const char *p = memmem(line, lim, pat, plen);

    out[0] = '\0';
    if (!p || (size_t)(p - line) + plen + ENTRY_KEY_LEN + 1 > len)
        return;
    memcpy(out, p + plen, ENTRY_KEY_LEN);
    out[ENTRY_KEY_LEN] = '\0';
    if (p[plen + ENTRY_KEY_LEN] != '"' || !entry_key_valid(out))
        out[0] = '\0';
}

static int cmp_keyv(const void *a, const void *b)
{
    return strcmp(((const struct keyv *)a)->key, ((const struct keyv *)b)->key);
}

/* ---------------------------------------------------------------------- */
/* Index of one shard (caller holds s->mu)                                 */

static struct rec *tab_find(struct shard *s, const char *key)
{
    struct rec *r = s->buckets[key_hash(key) & s->mask];

    while (r && memcmp(r->key, key, ENTRY_KEY_LEN) != 0)
        r = r->hnext;
    return r;
}

/* Doubles the table at load factor 1; on ENOMEM the chains just grow. */
static void tab_grow(struct shard *s)
{
    size_t nb = (s->mask + 1) * 2;
    struct rec **nbk;

    if (atomic_load_explicit(&s->n, memory_order_relaxed) <= s->mask + 1 ||
        nb > ((size_t)1 << 40))
        return;
    nbk = calloc(nb, sizeof *nbk);
    if (!nbk)
        return;
    for (size_t i = 0; i <= s->mask; i++) {
        struct rec *r = s->buckets[i];

        while (r) {
            struct rec *next = r->hnext;
            size_t b = key_hash(r->key) & (nb - 1);

            r->hnext = nbk[b];
            nbk[b] = r;
            r = next;
        }
    }
    free(s->buckets);
    s->buckets = nbk;
    s->mask = nb - 1;
}

static void tab_insert(struct shard *s, struct rec *r)
{
    size_t b = key_hash(r->key) & s->mask;

    r->hnext = s->buckets[b];
    s->buckets[b] = r;
}

static void tab_remove(struct shard *s, struct rec *r)
{
    struct rec **pp = &s->buckets[key_hash(r->key) & s->mask];

    while (*pp && *pp != r)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = r->hnext;
}

static void lru_sync(struct shard *s)
{
    atomic_store_explicit(&s->oldest_tick,
                          s->oldest ? s->oldest->tick : UINT64_MAX,
                          memory_order_relaxed);
}

static void lru_unlink(struct shard *s, struct rec *r)
{
    if (r->newer)
        r->newer->older = r->older;
    else
        s->newest = r->older;
    if (r->older)
        r->older->newer = r->newer;
    else
        s->oldest = r->newer;
    r->newer = r->older = NULL;
}

static void lru_push_newest(struct shard *s, struct rec *r)
{
    r->older = s->newest;
    r->newer = NULL;
    if (s->newest)
        s->newest->newer = r;
    else
        s->oldest = r;
    s->newest = r;
}

/* A fresh recency stamp. Taken under the shard lock, so that a shard's
 * list stays ordered by tick (put_batch reserves a range instead, which
 * keeps the batch order and can only make eviction slightly inexact). */
static uint64_t next_tick(struct l2 *t)
{
    return atomic_fetch_add(&t->tick, 1) + 1;
}

/* Move r (already linked) to the head with the given tick. */
static void lru_touch(struct shard *s, struct rec *r, uint64_t tick)
{
    lru_unlink(s, r);
    r->tick = tick;
    lru_push_newest(s, r);
    lru_sync(s);
}

/* Link a new record (key, off, len, expires_at set) as the newest. */
static void rec_add(struct l2 *t, struct shard *s, struct rec *r, uint64_t tick)
{
    atomic_fetch_add_explicit(&s->n, 1, memory_order_relaxed);
    atomic_fetch_add(&t->n, 1);
    tab_grow(s);
    tab_insert(s, r);
    r->tick = tick;
    lru_push_newest(s, r);
    lru_sync(s);
    s->live += r->len;
}

/* Unlink and free r; its line becomes dead bytes. */
static void rec_forget(struct l2 *t, struct shard *s, struct rec *r)
{
    tab_remove(s, r);
    lru_unlink(s, r);
    lru_sync(s);
    s->live -= r->len;
    atomic_fetch_sub_explicit(&s->n, 1, memory_order_relaxed);
    atomic_fetch_sub(&t->n, 1);
    free(r);
}

/* ---------------------------------------------------------------------- */
/* Shard file I/O (caller holds s->mu)                                     */

/* Append buf as one write(2); on success *off gets where it starts. */
static int shard_append(struct shard *s, const char *buf, size_t len,
                        off_t *off)
{
    size_t done = 0;
    off_t pos;
    int err = 0;

    if (s->torn) {
        if (ftruncate(s->fd, s->end) != 0)
            return err_from_errno(errno);
        s->torn = false;
    }
    while (done < len) {
        ssize_t w = write(s->fd, buf + done, len - done);

        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0) {
            err = err_from_errno(errno);
            break;
        }
        if (w == 0) {
            err = -EIO;
            break;
        }
        done += (size_t)w;
    }
    /* O_APPEND leaves the offset at the end of what was written: the
     * kernel's end of file, even if the file changed behind our back. */
    pos = lseek(s->fd, 0, SEEK_CUR);
    if (err) {
        if (done > 0) {
            if (pos >= (off_t)done)
                s->end = pos - (off_t)done;
            if (ftruncate(s->fd, s->end) != 0)
                s->torn = true;
        }
        return err;
    }
    s->end = pos >= (off_t)len ? pos : s->end + (off_t)len;
    *off = s->end - (off_t)len;
    s->unsynced = true;
    return 0;
}

/* Read exactly len bytes at off into buf: 0, -EBADMSG (short), -errno. */
static int pread_full(int fd, char *buf, size_t len, off_t off)
{
    size_t got = 0;

    while (got < len) {
        ssize_t r = pread(fd, buf + got, len - got, off + (off_t)got);

        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return err_from_errno(errno);
        if (r == 0)
            return -EBADMSG;
        got += (size_t)r;
    }
    return 0;
}

/* Structural check of a record's bytes: one line ending in '\n'. */
static bool line_shape_ok(const char *buf, size_t len)
{
    return len > 0 && buf[len - 1] == '\n' && !memchr(buf, '\n', len - 1);
}

/* Read r's line into a new NUL-terminated buffer. 0, -ENOMEM, -errno, or
 * -EBADMSG with *reason. */
static int rec_read(struct shard *s, const struct rec *r, char **out,
                    const char **reason)
{
    char *buf = malloc((size_t)r->len + 1);
    int err;

    if (!buf)
        return -ENOMEM;
    err = pread_full(s->fd, buf, r->len, r->off);
    if (err == -EBADMSG)
        *reason = "record truncated (short read)";
    if (!err && !line_shape_ok(buf, r->len)) {
        err = -EBADMSG;
        *reason = "record is not one line";
    }
    if (err) {
        free(buf);
        return err;
    }
    buf[r->len] = '\0';
    *out = buf;
    return 0;
}

/* Tombstones for n keys, concatenated into one new buffer. */
static int tombs_build(struct rec *const *rs, size_t n, char **out,
                       size_t *out_len)
{
    char *buf = NULL;
    size_t len = 0, cap = 0;

    for (size_t i = 0; i < n; i++) {
        char *line = NULL;
        size_t llen = 0;
        int err = formats_tombstone_line(rs[i]->key, &line, &llen);

        if (err == 0 && len + llen > cap) {
            size_t ncap = cap ? cap * 2 : 128 * n;
            char *nb;

            while (ncap < len + llen)
                ncap *= 2;
            nb = realloc(buf, ncap);
            if (!nb)
                err = -ENOMEM;
            else {
                buf = nb;
                cap = ncap;
            }
        }
        if (err) {
            free(line);
            free(buf);
            return err;
        }
        memcpy(buf + len, line, llen);
        len += llen;
        free(line);
    }
    *out = buf;
    *out_len = len;
    return 0;
}

/* Append tombstones for rs[0..n) and forget them. The removal happens even
 * if the append fails (then the shard is marked for compaction). */
static int remove_recs(struct l2 *t, struct shard *s, struct rec *const *rs,
                       size_t n)
{
    char *buf = NULL;
    size_t len = 0;
    off_t off;
    int err = tombs_build(rs, n, &buf, &len);

    if (!err)
        err = shard_append(s, buf, len, &off);
    free(buf);
    if (err)
        s->needs_compact = true;
    for (size_t i = 0; i < n; i++)
        rec_forget(t, s, rs[i]);
    return err;
}

/* ---------------------------------------------------------------------- */
/* Compaction (caller holds s->mu)                                         */

static int write_full(int fd, const char *buf, size_t len)
{
    size_t done = 0;

    while (done < len) {
        ssize_t w = write(fd, buf + done, len - done);

        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return w < 0 ? err_from_errno(errno) : -EIO;
        done += (size_t)w;
    }
    return 0;
}

/* Copy every indexed line (oldest first) into fd2; r->aux gets the new
 * offset, or -1 if the old bytes were not a whole line. */
static int compact_copy(struct shard *s, int fd2, off_t *size)
{
    char *buf = malloc(COPY_BUF);
    size_t used = 0;
    off_t pos = 0;
    int err = 0;

    if (!buf)
        return -ENOMEM;
    for (struct rec *r = s->oldest; r; r = r->newer) {
        if (r->len > COPY_BUF - used) {
            err = write_full(fd2, buf, used);
            if (err)
                goto out;
            pos += (off_t)used;
            used = 0;
        }
        err = pread_full(s->fd, buf + used, r->len, r->off);
        if (err == -EBADMSG || (!err && !line_shape_ok(buf + used, r->len))) {
            r->aux = -1;
            err = 0;
            continue;
        }
        if (err)
            goto out;
        r->aux = pos + (off_t)used;
        used += r->len;
    }
    err = write_full(fd2, buf, used);
    pos += (off_t)used;
out:
    free(buf);
    if (!err)
        *size = pos;
    return err;
}

static int compact_locked(struct l2 *t, struct shard *s)
{
    char name[NAME_LEN], tmp[NAME_LEN];
    off_t size = 0;
    size_t nbad = 0;
    int fd2, err;

    shard_names(s->idx, name, tmp);
    fd2 = openat(t->dirfd, tmp,
                 O_RDWR | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
    if (fd2 < 0)
        return err_from_errno(errno);
    err = compact_copy(s, fd2, &size);
    if (!err && fsync(fd2) != 0)
        err = err_from_errno(errno);
    if (!err && renameat(t->dirfd, tmp, t->dirfd, name) != 0)
        err = err_from_errno(errno);
    if (err) {
        close(fd2);
        unlinkat(t->dirfd, tmp, 0);
        return err;
    }
    if (fsync(t->dirfd) != 0)
        log_warn_errno(errno, "fsync of %s after compaction", t->dir);
    close(s->fd);
    s->fd = fd2;
    s->end = size;
    s->gen++;
    s->torn = false;
    s->unsynced = false;
    s->needs_compact = false;
    s->live = 0;
    for (struct rec *r = s->oldest, *next; r; r = next) {
        next = r->newer;
        if (r->aux < 0) {
            log_warn("corrupt record removed: key=%s reason=%s", r->key,
                     "record is not one line (compaction)");
            rec_forget(t, s, r);
            nbad++;
            continue;
        }
        r->off = r->aux;
        s->live += r->len;
    }
    atomic_fetch_add(&t->corrupt, nbad);
    log_debug("compacted %s/%s: %lld bytes", t->dir, name, (long long)size);
    return 0;
}

static bool dead_over(const struct shard *s, off_t min)
{
    off_t dead = s->end - s->live;

    return dead > min && dead * 2 > s->end;
}

/* Write-path trigger: failures are logged, the caller's write stands. */
static void maybe_compact_inline(struct l2 *t, struct shard *s)
{
    int err;

    if (!dead_over(s, DEAD_INLINE_MIN))
        return;
    err = compact_locked(t, s);
    if (err)
        log_warn_errno(-err, "compaction of shard %02d", s->idx);
}

/* ---------------------------------------------------------------------- */
/* Corruption found on a read                                              */

/* Remove key's record if it is still the one read at (gen, off). Returns
 * true if it was removed (and counted and logged). */
static bool evict_corrupt(struct l2 *t, struct shard *s, const char *key,
                          uint64_t gen, off_t off, const char *reason)
{
    bool removed = false;
    struct rec *r;

    pthread_mutex_lock(&s->mu);
    r = tab_find(s, key);
    if (r && s->gen == gen && r->off == off) {
        int err = remove_recs(t, s, &r, 1);

        if (err)
            log_warn_errno(-err, "tombstone for corrupt key=%s", key);
        s->needs_compact = true;
        removed = true;
    }
    pthread_mutex_unlock(&s->mu);
    if (removed) {
        atomic_fetch_add(&t->corrupt, 1);
        log_warn("corrupt record removed: key=%s reason=%s", key,
                 reason ? reason : "unparseable record");
    }
    return removed;
}

/* Decode a line read for want_key. 0, -ENOMEM or -EBADMSG with *reason. */
static int decode_line(const char *line, size_t len, const char *want_key,
                       struct entry **out, const char **reason)
{
    struct entry *e = NULL;
    int err = formats_entry_from_line(line, len, &e, NULL, reason);

    if (err == -ENOMEM)
        return err;
    if (err || !e) {
        if (!*reason)
            *reason = "unparseable record";
        entry_unref(e);
        return -EBADMSG;
    }
    if (strcmp(e->key, want_key) != 0) {
        *reason = "record key does not match the index";
        entry_unref(e);
        return -EBADMSG;
    }
    *out = e;
    return 0;
}

/*
 * Read and decode key's current record. touch moves it to the head.
 * Returns 0 and an entry, -ENOENT (absent, or expired before now_ms when
 * now_ms > INT64_MIN), -EBADMSG (it was corrupt and has been removed),
 * -ENOMEM or an I/O error.
 */
static int read_entry(struct l2 *t, const char *key, bool touch, int64_t now_ms,
                      struct entry **out)
{
    struct shard *s = &t->shards[shard_idx(key)];

    for (int attempt = 0; attempt < 3; attempt++) {
        const char *reason = NULL;
        struct entry *e = NULL;
        char *line = NULL;
        struct rec *r;
        uint64_t gen;
        off_t off;
        size_t len;
        int err;

        pthread_mutex_lock(&s->mu);
        r = tab_find(s, key);
        if (!r || r->expires_at <= now_ms) {
            pthread_mutex_unlock(&s->mu);
            return -ENOENT;
        }
        if (touch)
            lru_touch(s, r, next_tick(t));
        gen = s->gen;
        off = r->off;
        len = r->len;
        err = rec_read(s, r, &line, &reason);
        pthread_mutex_unlock(&s->mu);
        if (!err)
            err = decode_line(line, len, key, &e, &reason);
        free(line);
        if (!err) {
            *out = e;
            return 0;
        }
        if (err != -EBADMSG)
            return err;
        if (evict_corrupt(t, s, key, gen, off, reason))
            return -EBADMSG;
        /* The record changed under us: read the new one. */
    }
    return -ENOENT;
}

/* ---------------------------------------------------------------------- */
/* Eviction                                                                */

/* The shard whose oldest record is globally oldest (-1 if all empty) and
 * the second smallest oldest tick. Hints only: re-checked under the lock. */
static int pick_oldest_shard(struct l2 *t, uint64_t *second)
{
    uint64_t best = UINT64_MAX, next = UINT64_MAX;
    int bi = -1;

    for (int i = 0; i < L2_SHARDS; i++) {
        uint64_t tk = atomic_load_explicit(&t->shards[i].oldest_tick,
                                           memory_order_relaxed);

        if (tk == UINT64_MAX)
            continue;
        if (bi < 0 || tk < best) {
            next = best;
            best = tk;
            bi = i;
        } else if (tk < next) {
            next = tk;
        }
    }
    *second = next;
    return bi;
}

/*
 * Remove up to k least recently used records. If victim is non-NULL (then
 * k is 1) the removed record is read back and decoded into *victim (NULL if
 * it was corrupt). Tombstone failures mark the shard (see remove_recs) and
 * are logged; the records are removed regardless. Returns the count.
 */
static size_t evict_lru(struct l2 *t, size_t k, struct entry **victim)
{
    struct rec *batch[BATCH_MAX];
    size_t removed = 0;
    int misses = 0;

    while (removed < k && misses < 64) {
        char vkey[ENTRY_KEY_LEN + 1] = "";
        const char *reason = NULL;
        char *vline = NULL;
        size_t n = 0, vlen = 0;
        uint64_t second;
        struct shard *s;
        int si = pick_oldest_shard(t, &second);
        int err;

        if (si < 0)
            break;
        s = &t->shards[si];
        pthread_mutex_lock(&s->mu);
        for (struct rec *r = s->oldest; r; r = r->newer) {
            if (n == BATCH_MAX || removed + n == k ||
                (n > 0 && r->tick > second))
                break;
            batch[n++] = r;
        }
        if (n == 0) {
            pthread_mutex_unlock(&s->mu);
            misses++;
            continue;
        }
        if (victim) {
            memcpy(vkey, batch[0]->key, sizeof vkey);
            vlen = batch[0]->len;
            if (rec_read(s, batch[0], &vline, &reason) != 0)
                vline = NULL;
        }
        err = remove_recs(t, s, batch, n);
        pthread_mutex_unlock(&s->mu);
        if (err)
            log_warn_errno(
                -err, "tombstones for %zu evicted entries, shard %02d", n, si);
        removed += n;
        if (victim && vline) {
            reason = NULL;
            if (decode_line(vline, vlen, vkey, victim, &reason) == -EBADMSG) {
                atomic_fetch_add(&t->corrupt, 1);
                log_warn("corrupt record removed: key=%s reason=%s", vkey,
                         reason);
            }
        }
        free(vline);
    }
    return removed;
}

/* After adding `added` new keys: evict what is over capacity. */
static size_t enforce_capacity(struct l2 *t, size_t added,
                               struct entry **victim)
{
    size_t n = atomic_load(&t->n);
    size_t over;

    if (added == 0 || n <= t->cap)
        return 0;
    over = n - t->cap;
    if (over > added)
        over = added;
    if (victim)
        over = 1;
    return evict_lru(t, over, victim);
}

/* ---------------------------------------------------------------------- */
/* tier ops                                                                */

static int l2_get(struct tier *tt, const char *key, struct entry **out)
{
    struct l2 *t = (struct l2 *)tt;

    if (!key || !out || !entry_key_valid(key))
        return -ENOENT;
    return read_entry(t, key, true, INT64_MIN, out);
}

/* Encode e into a line fit for a shard. */
static int encode_entry(const struct entry *e, char **line, size_t *len)
{
    int err;

    if (!e || !entry_key_valid(e->key))
        return -EINVAL;
    err = formats_entry_to_line(e, line, len);
    if (err)
        return err;
    if (*len > FORMATS_LINE_MAX + 1 || !line_shape_ok(*line, *len)) {
        err = *len > FORMATS_LINE_MAX + 1 ? -E2BIG : -EINVAL;
        free(*line);
        *line = NULL;
        return err;
    }
    return 0;
}

/* A replace with TIER_PUT_NOTOUCH keeps its LRU position; a new key always
 * enters as the most recent (else it would be the next victim). With
 * TIER_PUT_IFABSENT a key already present (any version, expired or not) is
 * left alone: 0, nothing written (the manager's demotion must not
 * overwrite a newer copy written through meanwhile). */
static int l2_put(struct tier *tt, struct entry *e, unsigned flags,
                  struct entry **victim)
{
    struct l2 *t = (struct l2 *)tt;
    struct rec *spare = NULL, *r;
    struct entry *v = NULL;
    struct shard *s;
    char *line = NULL;
    size_t len = 0;
    bool added = false;
    off_t off;
    int err;

    err = encode_entry(e, &line, &len);
    if (err)
        goto out;
    spare = calloc(1, sizeof *spare);
    if (!spare) {
        err = -ENOMEM;
        goto out;
    }
    s = &t->shards[shard_idx(e->key)];
    pthread_mutex_lock(&s->mu);
    r = tab_find(s, e->key);
    if (r && (flags & TIER_PUT_IFABSENT)) {
        pthread_mutex_unlock(&s->mu);
        goto out;
    }
    err = shard_append(s, line, len, &off);
    if (err) {
        if (r) {
            rec_forget(t, s, r); /* do not serve the replaced version */
            s->needs_compact = true;
        }
        pthread_mutex_unlock(&s->mu);
        goto out;
    }
    if (r) {
        s->live += (off_t)len - (off_t)r->len;
        r->off = off;
        r->len = (uint32_t)len;
        r->expires_at = e->expires_at;
        if (!(flags & TIER_PUT_NOTOUCH))
            lru_touch(s, r, next_tick(t));
    } else {
        r = spare;
        spare = NULL;
        memcpy(r->key, e->key, sizeof r->key);
        r->off = off;
        r->len = (uint32_t)len;
        r->expires_at = e->expires_at;
        rec_add(t, s, r, next_tick(t));
        added = true;
    }
    maybe_compact_inline(t, s);
    pthread_mutex_unlock(&s->mu);
    enforce_capacity(t, added ? 1 : 0, victim ? &v : NULL);
out:
    free(spare);
    free(line);
    if (!err && victim)
        *victim = v;
    return err;
}

struct batch_item {
    char *line;
    size_t len;
    struct rec *spare;
    const struct entry *e;
    uint64_t tick; /* reserved in batch order */
};

/* Append items[0..n) (all of shard s) with one write and index them. */
static int batch_write_chunk(struct l2 *t, struct shard *s,
                             struct batch_item *const *items, size_t n,
                             size_t *added)
{
    char *buf;
    size_t len = 0, pos = 0;
    off_t off;
    int err;

    for (size_t i = 0; i < n; i++)
        len += items[i]->len;
    buf = malloc(len);
    if (!buf)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        memcpy(buf + pos, items[i]->line, items[i]->len);
        pos += items[i]->len;
    }
    pthread_mutex_lock(&s->mu);
    err = shard_append(s, buf, len, &off);
    for (size_t i = 0; i < n; i++) {
        struct batch_item *it = items[i];
        struct rec *r = tab_find(s, it->e->key);

        if (err) {
            if (r) {
                rec_forget(t, s, r);
                s->needs_compact = true;
            }
            continue;
        }
        if (r) {
            s->live += (off_t)it->len - (off_t)r->len;
            r->off = off;
            r->len = (uint32_t)it->len;
            r->expires_at = it->e->expires_at;
            lru_touch(s, r, it->tick);
        } else {
            r = it->spare;
            it->spare = NULL;
            memcpy(r->key, it->e->key, sizeof r->key);
            r->off = off;
            r->len = (uint32_t)it->len;
            r->expires_at = it->e->expires_at;
            rec_add(t, s, r, it->tick);
            (*added)++;
        }
        off += (off_t)it->len;
    }
    if (!err)
        maybe_compact_inline(t, s);
    pthread_mutex_unlock(&s->mu);
    free(buf);
    return err;
}

/* Write the items of shard si in chunks of about WRITE_CHUNK bytes. */
static int batch_write_shard(struct l2 *t, int si, struct batch_item *items,
                             size_t n, struct batch_item **sel, size_t *added)
{
    struct shard *s = &t->shards[si];
    size_t ns = 0, bytes = 0;
    int err = 0;

    for (size_t i = 0; i <= n && !err; i++) {
        bool flush = i == n ? ns > 0 : bytes >= WRITE_CHUNK;

        if (flush) {
            err = batch_write_chunk(t, s, sel, ns, added);
            ns = 0;
            bytes = 0;
        }
        if (i < n && shard_idx(items[i].e->key) == si) {
            sel[ns++] = &items[i];
            bytes += items[i].len;
        }
    }
    return err;
}

static int l2_put_batch(struct tier *tt, struct entry *const *es, size_t n,
                        size_t *n_victims)
{
    struct l2 *t = (struct l2 *)tt;
    struct batch_item *items = NULL, **sel = NULL;
    size_t added = 0, evicted = 0;
    int err = 0;

    if (n == 0)
        goto out;
    if (!es) {
        err = -EINVAL;
        goto out;
    }
    items = calloc(n, sizeof *items);
    sel = calloc(n, sizeof *sel);
    if (!items || !sel) {
        err = -ENOMEM;
        goto out;
    }
    for (size_t i = 0; i < n && !err; i++) {
        items[i].e = es[i];
        err = encode_entry(es[i], &items[i].line, &items[i].len);
        if (!err) {
            items[i].spare = calloc(1, sizeof *items[i].spare);
            if (!items[i].spare)
                err = -ENOMEM;
        }
    }
    if (!err) {
        uint64_t base = atomic_fetch_add(&t->tick, n) + 1;

        for (size_t i = 0; i < n; i++)
            items[i].tick = base + i;
    }
    for (int si = 0; si < L2_SHARDS && !err; si++)
        err = batch_write_shard(t, si, items, n, sel, &added);
    evicted = enforce_capacity(t, added, NULL);
out:
    for (size_t i = 0; items && i < n; i++) {
        free(items[i].line);
        free(items[i].spare);
    }
    free(items);
    free(sel);
    if (n_victims)
        *n_victims = evicted;
    return err;
}

/* The file of a shard marked for compaction may hold a record of key that
 * the index forgot: append a tombstone (best effort) so that it cannot come
 * back at the next open. Caller holds s->mu. */
static void shadow_forgotten(struct shard *s, const char *key)
{
    char *line = NULL;
    size_t len = 0;
    off_t off;

    if (formats_tombstone_line(key, &line, &len) == 0)
        (void)shard_append(s, line, len, &off);
    free(line);
}

static int l2_del(struct tier *tt, const char *key)
{
    struct l2 *t = (struct l2 *)tt;
    struct shard *s;
    struct rec *r;
    int err = 0;

    if (!key || !entry_key_valid(key))
        return -ENOENT;
    s = &t->shards[shard_idx(key)];
    pthread_mutex_lock(&s->mu);
    r = tab_find(s, key);
    if (r)
        err = remove_recs(t, s, &r, 1);
    else if (s->needs_compact)
        shadow_forgotten(s, key);
    pthread_mutex_unlock(&s->mu);
    return r ? err : -ENOENT;
}

/*
 * Visit key (in the given shard) for scan/sample: skips it if absent or
 * expired, removes it if corrupt, calls cb if it matches f (no lock held).
 * Returns 0, the callback's value, or an error.
 */
static int visit_key(struct l2 *t, const char *key, const struct tier_filter *f,
                     tier_entry_cb cb, void *arg, size_t *visited)
{
    struct entry *e = NULL;
    int64_t now = f ? f->now_ms : INT64_MIN;
    int err = read_entry(t, key, false, now, &e);

    if (err == -ENOENT || err == -EBADMSG)
        return 0;
    if (err)
        return err;
    if (!f || tier_filter_match(f, e)) {
        (*visited)++;
        err = cb(arg, e);
    }
    entry_unref(e);
    return err;
}

/* Copy the keys of shard s that are > after and unexpired at now. */
static int collect_keys(struct shard *s, const char *after, int64_t now,
                        struct keyv **out, size_t *n_out)
{
    struct keyv *keys = NULL;
    size_t n = 0, cap;
    int err = 0;

    pthread_mutex_lock(&s->mu);
    cap = atomic_load_explicit(&s->n, memory_order_relaxed);
    if (cap > 0) {
        keys = malloc(cap * sizeof *keys);
        if (!keys)
            err = -ENOMEM;
    }
    for (struct rec *r = s->newest; r && !err; r = r->older) {
        if (r->expires_at <= now || strcmp(r->key, after) <= 0)
            continue;
        memcpy(keys[n++].key, r->key, sizeof keys->key);
    }
    pthread_mutex_unlock(&s->mu);
    if (err)
        return err;
    *out = keys;
    *n_out = n;
    return 0;
}

static int l2_scan(struct tier *tt, const struct tier_filter *f,
                   const char *after, size_t max, tier_entry_cb cb, void *arg)
{
    struct l2 *t = (struct l2 *)tt;
    int64_t now = f ? f->now_ms : INT64_MIN;
    size_t visited = 0;
    int err = 0;

    if (!cb)
        return -EINVAL;
    if (!after)
        after = "";
    for (int si = 0; si < L2_SHARDS && visited < max && !err; si++) {
        struct keyv *keys = NULL;
        size_t n = 0;

        if (after[0] && (unsigned char)shard_char(si) < (unsigned char)after[0])
            continue;
        err = collect_keys(&t->shards[si], after, now, &keys, &n);
        if (err)
            break;
        if (n > 1)
            qsort(keys, n, sizeof *keys, cmp_keyv);
        for (size_t i = 0; i < n && visited < max && !err; i++)
            err = visit_key(t, keys[i].key, f, cb, arg, &visited);
        free(keys);
    }
    return err;
}

/* Sample a small tier: every unexpired key, shuffled. */
static int sample_enumerate(struct l2 *t, const struct tier_filter *f,
                            size_t max, uint64_t *rng, tier_entry_cb cb,
                            void *arg)
{
    int64_t now = f ? f->now_ms : INT64_MIN;
    struct keyv *all = NULL;
    size_t n = 0, visited = 0;
    int err = 0;

    for (int si = 0; si < L2_SHARDS && !err; si++) {
        struct keyv *keys = NULL, *grown;
        size_t k = 0;

        err = collect_keys(&t->shards[si], "", now, &keys, &k);
        if (err || k == 0) {
            free(keys);
            continue;
        }
        grown = realloc(all, (n + k) * sizeof *all);
        if (!grown) {
            free(keys);
            err = -ENOMEM;
            break;
        }
        all = grown;
        memcpy(all + n, keys, k * sizeof *keys);
        n += k;
        free(keys);
    }
    for (size_t i = n; i > 1 && !err; i--) {
        size_t j = splitmix64(rng) % i;
        struct keyv tmp = all[i - 1];

        all[i - 1] = all[j];
        all[j] = tmp;
    }
    for (size_t i = 0; i < n && visited < max && !err; i++)
        err = visit_key(t, all[i].key, f, cb, arg, &visited);
    free(all);
    return err;
}

/* A random key of a random shard (weighted by size) into key; false if the
 * tier looked empty. */
static bool random_key(struct l2 *t, uint64_t *rng, char key[ENTRY_KEY_LEN + 1])
{
    size_t total = atomic_load(&t->n), pick;
    struct shard *s = NULL;
    struct rec *r = NULL;

    if (total == 0)
        return false;
    pick = splitmix64(rng) % total;
    for (int si = 0; si < L2_SHARDS; si++) {
        size_t n = atomic_load_explicit(&t->shards[si].n, memory_order_relaxed);

        s = &t->shards[si];
        if (pick < n)
            break;
        pick -= n;
    }
    pthread_mutex_lock(&s->mu);
    if (atomic_load_explicit(&s->n, memory_order_relaxed) > 0) {
        size_t b = splitmix64(rng) & s->mask, len = 0;

        for (size_t i = 0; i <= s->mask && !s->buckets[b]; i++)
            b = (b + 1) & s->mask;
        for (r = s->buckets[b]; r; r = r->hnext)
            len++;
        r = s->buckets[b];
        for (size_t i = len ? splitmix64(rng) % len : 0; r && i > 0; i--)
            r = r->hnext;
        if (r)
            memcpy(key, r->key, ENTRY_KEY_LEN + 1);
    }
    pthread_mutex_unlock(&s->mu);
    return r != NULL;
}

/* Open-addressing set of chosen keys (sample without replacement). */
static bool chosen_add(struct keyv *set, size_t mask, const char *key)
{
    size_t i = key_hash(key) & mask;

    while (set[i].key[0]) {
        if (strcmp(set[i].key, key) == 0)
            return false;
        i = (i + 1) & mask;
    }
    memcpy(set[i].key, key, ENTRY_KEY_LEN + 1);
    return true;
}

/* Sample a large tier by bounded random probes of the index. */
static int sample_probe(struct l2 *t, const struct tier_filter *f, size_t max,
                        uint64_t *rng, tier_entry_cb cb, void *arg)
{
    size_t slots = 16, visited = 0, tries = max * 8 + 64;
    struct keyv *set;
    int err = 0;

    while (slots < tries * 2)
        slots *= 2;
    set = calloc(slots, sizeof *set);
    if (!set)
        return -ENOMEM;
    for (size_t i = 0; i < tries && visited < max && !err; i++) {
        char key[ENTRY_KEY_LEN + 1];

        if (!random_key(t, rng, key))
            break;
        if (chosen_add(set, slots - 1, key))
            err = visit_key(t, key, f, cb, arg, &visited);
    }
    free(set);
    return err;
}

static int l2_sample(struct tier *tt, const struct tier_filter *f, size_t max,
                     uint64_t seed, tier_entry_cb cb, void *arg)
{
    struct l2 *t = (struct l2 *)tt;
    size_t total = atomic_load(&t->n);
    uint64_t rng = seed;

    if (!cb)
        return -EINVAL;
    if (max == 0 || total == 0)
        return 0;
    if (total <= SAMPLE_ENUM_MAX || max >= total / 4)
        return sample_enumerate(t, f, max, &rng, cb, arg);
    return sample_probe(t, f, max, &rng, cb, arg);
}

/* Remove up to lim records of s expired at now; *got gets the count. */
static int sweep_batch(struct l2 *t, struct shard *s, int64_t now, size_t lim,
                       size_t *got)
{
    struct rec *batch[BATCH_MAX];
    size_t n = 0;
    int err = 0;

    if (lim > BATCH_MAX)
        lim = BATCH_MAX;
    pthread_mutex_lock(&s->mu);
    for (struct rec *r = s->oldest; r && n < lim; r = r->newer)
        if (r->expires_at <= now)
            batch[n++] = r;
    if (n > 0)
        err = remove_recs(t, s, batch, n);
    pthread_mutex_unlock(&s->mu);
    if (err)
        log_warn_errno(-err, "tombstones for %zu expired entries of shard %02d",
                       n, s->idx);
    *got = n;
    return err;
}

/* Expired records leave the index even when their tombstones cannot be
 * written (logged; the shard is marked for compaction): sweep returns 0,
 * and put/del report the disk failure to the manager. */
static int l2_sweep(struct tier *tt, int64_t now_ms, size_t max,
                    size_t *removed)
{
    struct l2 *t = (struct l2 *)tt;
    unsigned from = atomic_fetch_add(&t->sweep_from, 1);
    size_t total = 0;

    for (int i = 0; i < L2_SHARDS && total < max; i++) {
        struct shard *s = &t->shards[(from + (unsigned)i) % L2_SHARDS];
        size_t got;

        do {
            got = 0;
            (void)sweep_batch(t, s, now_ms, max - total, &got);
            total += got;
        } while (got == BATCH_MAX && total < max);
    }
    if (removed)
        *removed = total;
    return 0;
}

static void free_recs(struct shard *s)
{
    for (struct rec *r = s->newest, *next; r; r = next) {
        next = r->older;
        free(r);
    }
    s->newest = s->oldest = NULL;
    if (s->buckets)
        memset(s->buckets, 0, (s->mask + 1) * sizeof *s->buckets);
    atomic_store(&s->n, 0);
    s->live = 0;
    lru_sync(s);
}

static int l2_clear(struct tier *tt, size_t *removed)
{
    struct l2 *t = (struct l2 *)tt;
    size_t total = 0;
    int err = 0;

    for (int si = 0; si < L2_SHARDS; si++) {
        struct shard *s = &t->shards[si];
        size_t n;

        pthread_mutex_lock(&s->mu);
        n = atomic_load(&s->n);
        free_recs(s);
        atomic_fetch_sub(&t->n, n);
        total += n;
        if (ftruncate(s->fd, 0) == 0 && fsync(s->fd) == 0) {
            s->end = 0;
            s->gen++;
            s->torn = false;
            s->unsynced = false;
            s->needs_compact = false;
        } else {
            int e = errno;

            if (!err)
                err = err_from_errno(e);
            s->needs_compact = true; /* compaction writes an empty file */
            log_warn_errno(e, "truncating shard %02d", si);
        }
        pthread_mutex_unlock(&s->mu);
    }
    if (removed)
        *removed = total;
    return err;
}

static size_t l2_size(struct tier *tt)
{
    return atomic_load(&((struct l2 *)tt)->n);
}

static uint64_t l2_corrupt_count(struct tier *tt)
{
    return atomic_load(&((struct l2 *)tt)->corrupt);
}

static int l2_probe(struct tier *tt)
{
    struct l2 *t = (struct l2 *)tt;
    char block[PROBE_BYTES];
    int fd, err = 0;

    for (int si = 0; si < L2_SHARDS && !err; si++) {
        struct shard *s = &t->shards[si];
        struct stat st;

        pthread_mutex_lock(&s->mu);
        if (fstat(s->fd, &st) != 0)
            err = err_from_errno(errno);
        else if (s->torn && ftruncate(s->fd, s->end) != 0)
            err = err_from_errno(errno);
        else
            s->torn = false;
        pthread_mutex_unlock(&s->mu);
    }
    if (err)
        return err;
    fd = openat(t->dirfd, ".probe", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
                0600);
    if (fd < 0)
        return err_from_errno(errno);
    memset(block, 'p', sizeof block);
    err = write_full(fd, block, sizeof block);
    close(fd);
    unlinkat(t->dirfd, ".probe", 0);
    return err;
}

static int l2_maintain(struct tier *tt)
{
    struct l2 *t = (struct l2 *)tt;
    int first = 0;

    for (int si = 0; si < L2_SHARDS; si++) {
        struct shard *s = &t->shards[si];
        int err = 0, syncfd = -1;

        pthread_mutex_lock(&s->mu);
        if (s->needs_compact || dead_over(s, DEAD_MAINT_MIN)) {
            err = compact_locked(t, s);
        } else if (s->unsynced) {
            /* fdatasync a duplicate outside the lock: a concurrent
             * compaction may close s->fd, never the duplicate. */
            syncfd = fcntl(s->fd, F_DUPFD_CLOEXEC, 0);
            if (syncfd >= 0)
                s->unsynced = false;
        }
        pthread_mutex_unlock(&s->mu);
        if (syncfd >= 0) {
            if (fdatasync(syncfd) != 0)
                err = err_from_errno(errno);
            close(syncfd);
        }
        if (err) {
            log_warn_errno(-err, "maintenance of shard %02d", si);
            if (!first)
                first = err;
        }
    }
    return first;
}

static void l2_free(struct l2 *t)
{
    if (!t)
        return;
    for (int si = 0; si < L2_SHARDS; si++) {
        struct shard *s = &t->shards[si];

        if (s->fd >= 0) {
            if (s->unsynced && fdatasync(s->fd) != 0)
                log_warn_errno(errno, "fdatasync of shard %02d", si);
            close(s->fd);
        }
        free_recs(s);
        free(s->buckets);
        if (si < t->nmu)
            pthread_mutex_destroy(&s->mu);
    }
    if (t->dirfd >= 0)
        close(t->dirfd);
    free(t->dir);
    free(t);
}

static void l2_close(struct tier *tt)
{
    l2_free((struct l2 *)tt);
}

static const struct tier_ops l2_ops = {
    .name = "l2",
    .get = l2_get,
    .put = l2_put,
    .put_batch = l2_put_batch,
    .del = l2_del,
    .scan = l2_scan,
    .sample = l2_sample,
    .sweep = l2_sweep,
    .clear = l2_clear,
    .size = l2_size,
    .corrupt_count = l2_corrupt_count,
    .probe = l2_probe,
    .maintain = l2_maintain,
    .close = l2_close,
};

/* ---------------------------------------------------------------------- */
/* Open: rebuild the index                                                 */

struct loader {
    struct l2 *t;
    struct shard *s;
    size_t corrupt; /* lines of this shard found corrupt */
    char *buf;
};

static void load_corrupt(struct loader *ld, const char *key, const char *why,
                         off_t off)
{
    ld->corrupt++;
    atomic_fetch_add(&ld->t->corrupt, 1);
    ld->s->needs_compact = true;
    if (ld->corrupt <= LOAD_LOG_MAX)
        log_warn("corrupt record skipped: key=%s reason=%s shard=%02d "
                 "offset=%lld",
                 key[0] ? key : "?", why, ld->s->idx, (long long)off);
    else if (ld->corrupt == LOAD_LOG_MAX + 1)
        log_warn("shard %02d: more corrupt records, no longer logged",
                 ld->s->idx);
}

static bool blank_line(const char *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (p[i] != ' ' && p[i] != '\t' && p[i] != '\r' && p[i] != '\n')
            return false;
    return true;
}

/* Apply one complete line (len includes '\n') found at off. */
static int load_line(struct loader *ld, const char *line, size_t len, off_t off)
{
    struct shard *s = ld->s;
    char key[ENTRY_KEY_LEN + 1] = "";
    const char *reason = NULL;
    struct entry *e = NULL;
    struct rec *r;
    int err;

    if (len - 1 > FORMATS_LINE_MAX) {
        guess_key(line, len, key);
        load_corrupt(ld, key, "line too long", off);
        return 0;
    }
    if (blank_line(line, len))
        return 0;
    if (len < 256 && memmem(line, len, "\"deleted\"", 9) &&
        formats_line_is_tombstone(line, len, key) == 1) {
        if (!entry_key_valid(key) || shard_idx(key) != s->idx) {
            load_corrupt(ld, "", "invalid tombstone", off);
            return 0;
        }
        r = tab_find(s, key);
        if (r)
            rec_forget(ld->t, s, r);
        return 0;
    }
    key[0] = '\0';
    err = formats_entry_from_line(line, len, &e, key, &reason);
    if (err == -ENOMEM)
        return err;
    if (!err && e && shard_idx(e->key) != s->idx) {
        memcpy(key, e->key, sizeof key);
        reason = "record in the wrong shard";
        err = -EBADMSG;
    }
    if (err || !e) {
        entry_unref(e);
        if (!entry_key_valid(key))
            guess_key(line, len, key);
        load_corrupt(ld, key, reason ? reason : "unparseable record", off);
        /* The newest write of key is lost: an older record is stale. */
        if (entry_key_valid(key) && shard_idx(key) == s->idx) {
            r = tab_find(s, key);
            if (r)
                rec_forget(ld->t, s, r);
        }
        return 0;
    }
    r = tab_find(s, e->key);
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r) {
            entry_unref(e);
            return -ENOMEM;
        }
        memcpy(r->key, e->key, sizeof r->key);
        r->len = (uint32_t)len;
        rec_add(ld->t, s, r, 0);
    } else {
        s->live += (off_t)len - (off_t)r->len;
        r->len = (uint32_t)len;
        lru_touch(s, r, 0); /* file order; ticks come in load_finish */
    }
    r->off = off;
    r->expires_at = e->expires_at;
    r->aux = e->fetch_time;
    if (atomic_load(&e->last_accessed) > r->aux)
        r->aux = atomic_load(&e->last_accessed);
    entry_unref(e);
    return 0;
}

/* A last line without '\n' (or an overlong one) starts at torn_off. */
static void load_truncate_tail(struct loader *ld, off_t torn_off,
                               const char *key)
{
    struct shard *s = ld->s;

    ld->corrupt++;
    atomic_fetch_add(&ld->t->corrupt, 1);
    log_warn("torn last line truncated: key=%s shard=%02d offset=%lld",
             key[0] ? key : "?", s->idx, (long long)torn_off);
    if (ftruncate(s->fd, torn_off) != 0) {
        log_warn_errno(errno, "truncating shard %02d", s->idx);
        s->torn = true; /* appends retry the truncation first */
    }
}

/* Read shard s line by line into its index. */
static int load_shard(struct l2 *t, struct shard *s)
{
    struct loader ld = {.t = t, .s = s};
    char skip_key[ENTRY_KEY_LEN + 1] = "";
    bool skipping = false;
    off_t base = 0, skip_start = 0;
    size_t have = 0;
    int err = 0;

    ld.buf = malloc(LOAD_BUF);
    if (!ld.buf)
        return -ENOMEM;
    for (;;) {
        ssize_t got = read(s->fd, ld.buf + have, LOAD_BUF - have);
        size_t start = 0;

        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            err = err_from_errno(errno);
            goto out;
        }
        if (got == 0)
            break;
        have += (size_t)got;
        for (;;) {
            char *nl = memchr(ld.buf + start, '\n', have - start);
            size_t stop;

            if (!nl)
                break;
            stop = (size_t)(nl - ld.buf) + 1;
            if (skipping) {
                skipping = false;
                load_corrupt(&ld, skip_key, "line too long", skip_start);
            } else {
                err = load_line(&ld, ld.buf + start, stop - start,
                                base + (off_t)start);
                if (err)
                    goto out;
            }
            start = stop;
        }
        if (!skipping && have - start > FORMATS_LINE_MAX) {
            skipping = true;
            skip_start = base + (off_t)start;
            guess_key(ld.buf + start, have - start, skip_key);
        }
        if (skipping) {
            base += (off_t)have;
            have = 0;
        } else {
            memmove(ld.buf, ld.buf + start, have - start);
            base += (off_t)start;
            have -= start;
        }
    }
    s->end = base + (off_t)have;
    if (skipping || have > 0) {
        char key[ENTRY_KEY_LEN + 1];

        if (skipping)
            memcpy(key, skip_key, sizeof key);
        else
            guess_key(ld.buf, have, key);
        s->end = skipping ? skip_start : base;
        load_truncate_tail(&ld, s->end, key);
    }
out:
    free(ld.buf);
    return err;
}

/* Assign global recency ticks over all shards and drop what is over the
 * capacity: shards are merged oldest first by their records' aux stamp,
 * keeping each shard's own (file) order. Returns the number dropped. */
static size_t load_finish(struct l2 *t)
{
    struct rec *cur[L2_SHARDS];
    size_t total = atomic_load(&t->n);
    size_t drop = total > t->cap ? total - t->cap : 0, dropped = 0;

    atomic_store(&t->tick, 0);
    for (int si = 0; si < L2_SHARDS; si++)
        cur[si] = t->shards[si].oldest;
    for (;;) {
        int best = -1;
        struct rec *r;

        for (int si = 0; si < L2_SHARDS; si++)
            if (cur[si] && (best < 0 || cur[si]->aux < cur[best]->aux))
                best = si;
        if (best < 0)
            break;
        r = cur[best];
        cur[best] = r->newer;
        if (dropped < drop) {
            rec_forget(t, &t->shards[best], r);
            t->shards[best].needs_compact = true;
            dropped++;
            continue;
        }
        r->tick = atomic_fetch_add(&t->tick, 1) + 1;
    }
    for (int si = 0; si < L2_SHARDS; si++)
        lru_sync(&t->shards[si]);
    return dropped;
}

static int make_dir(const char *path)
{
    if (mkdir(path, 0700) == 0 || errno == EEXIST)
        return 0;
    return errno == ENOENT || errno == ENOTDIR ? -errno : err_from_errno(errno);
}

static int open_shards(struct l2 *t)
{
    for (int si = 0; si < L2_SHARDS; si++) {
        struct shard *s = &t->shards[si];
        char name[NAME_LEN], tmp[NAME_LEN];
        int err;

        shard_names(si, name, tmp);
        if (unlinkat(t->dirfd, tmp, 0) == 0)
            log_info("removed %s left by an interrupted compaction", tmp);
        s->fd = openat(t->dirfd, name, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC,
                       0600);
        if (s->fd < 0) {
            err = err_from_errno(errno);
            log_error_errno(errno, "opening %s/%s", t->dir, name);
            return err;
        }
        err = load_shard(t, s);
        if (err) {
            log_error_errno(-err, "reading %s/%s", t->dir, name);
            return err;
        }
    }
    return 0;
}

int l2_jsonl_open(const char *data_dir, size_t capacity, struct tier **out)
{
    struct l2 *t = NULL;
    char path[PATH_MAX];
    size_t dropped;
    int err, n;

    if (!data_dir || !data_dir[0] || !out || capacity < 1)
        return -EINVAL;
    n = snprintf(path, sizeof path, "%s/l2", data_dir);
    if (n < 0 || (size_t)n >= sizeof path)
        return -ENAMETOOLONG;
    t = calloc(1, sizeof *t);
    if (!t)
        return -ENOMEM;
    t->base.ops = &l2_ops;
    t->cap = capacity;
    t->dirfd = -1;
    for (int si = 0; si < L2_SHARDS; si++) {
        struct shard *s = &t->shards[si];

        s->idx = si;
        s->fd = -1;
        atomic_init(&s->oldest_tick, UINT64_MAX);
    }
    for (; t->nmu < L2_SHARDS; t->nmu++) {
        struct shard *s = &t->shards[t->nmu];

        s->buckets = calloc(16, sizeof *s->buckets);
        s->mask = 15;
        if (!s->buckets || pthread_mutex_init(&s->mu, NULL) != 0) {
            err = -ENOMEM;
            goto out;
        }
    }
    t->dir = strdup(path);
    if (!t->dir) {
        err = -ENOMEM;
        goto out;
    }
    err = make_dir(data_dir);
    if (!err)
        err = make_dir(path);
    if (err) {
        log_error_errno(-err, "creating %s", path);
        goto out;
    }
    t->dirfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (t->dirfd < 0) {
        err = err_from_errno(errno);
        log_error_errno(errno, "opening %s", path);
        goto out;
    }
    err = open_shards(t);
    if (err)
        goto out;
    dropped = load_finish(t);
    log_info("l2 ready: %zu entries in %s, %llu corrupt lines skipped, "
             "%zu dropped over capacity %zu",
             atomic_load(&t->n), path,
             (unsigned long long)atomic_load(&t->corrupt), dropped, capacity);
out:
    if (err) {
        l2_free(t);
        return err;
    }
    *out = &t->base;
    return 0;
}
