/* SPDX-License-Identifier: MIT */
/*
 * L3: the complete, queryable store — SQLite in WAL mode, DIR/cache.db.
 *
 * Design
 *  - One row per entry in a WITHOUT ROWID table keyed by the SHA-256 as a
 *    32-byte BLOB (half the size of the hex text and cheaper to compare;
 *    memcmp order of the blobs equals the order of their lowercase hex, so
 *    "ORDER BY key" is the API's key order). Every field has its own column:
 *    times are INTEGER milliseconds, enums are their JSON names as TEXT so
 *    an operator can query the file with the sqlite3 shell
 *    (SELECT lower(hex(key)), proxy_url FROM entries WHERE health='healthy').
 *    One internal column, touched (a logical clock bumped by puts and, when
 *    a capacity is set, by gets), orders capacity eviction.
 *  - Indexes cost write throughput: each commit writes every page it
 *    touched to the WAL, and a row lands on a random leaf of each index
 *    whose order is not the time order. So there is one secondary index,
 *    expires_at (for the sweep; new rows append near its end), plus
 *    touched only when a capacity is configured (created/dropped on open).
 *    Filters (health, source, ...) are evaluated on the key-ordered walk.
 *    Sampling needs no index either: keys are SHA-256 digests, so walking
 *    the key order from a random position is a random sample.
 *  - Schema version lives in PRAGMA user_version (1); created/migrated on
 *    open. A file SQLite cannot open as a database (SQLITE_NOTADB/CORRUPT
 *    from the set-up statements) is renamed to cache.db.corrupt-<unix-s>
 *    (with its -wal/-shm), logged at ERROR, and a fresh file is created.
 *    Start-up reads no rows: the size comes from one count(*) (a walk of
 *    the small expires_at index) and, with a capacity, the clock floor
 *    from max(touched) (one index probe).
 *  - Writes go through one writer thread with group commit: put, put_batch,
 *    del, clear, sweep, probe and maintain enqueue an operation; the writer
 *    takes everything queued (up to BATCH_ROWS rows), runs one
 *    BEGIN IMMEDIATE ... COMMIT, then marks each operation done and wakes
 *    the waiters (commit ticket). One commit costs about as much as one
 *    row, so 64 concurrent writers cost ~1 commit per 64 rows. A failing
 *    transaction is rolled back and every operation in it gets the error;
 *    an operation-local error (a constraint) fails only that operation.
 *    Sweep runs in chunks of SWEEP_CHUNK rows per transaction so a large
 *    sweep never holds up the waiting puts for long.
 *  - Checkpoints run on their own thread and connection (ckpt_main), woken
 *    by a WAL hook past CKPT_START frames; SQLite's auto-checkpoint inside
 *    the writer's COMMIT halved throughput. The writer forces a RESTART
 *    checkpoint only if the WAL outgrows CKPT_HARD (bound_wal).
 *  - Durability: synchronous=NORMAL. In WAL mode a COMMIT has written the
 *    transaction into the -wal file (in the OS page cache) before it
 *    returns, so an acknowledged write survives the process being killed
 *    (kill -9), which is what SPEC §7 asks; only a power loss or kernel
 *    crash can lose the last commits (the WAL is fsynced at checkpoints).
 *    FULL would fsync per commit; see the measurements in the report.
 *  - Reads use a small pool of read connections, each guarded by its own
 *    mutex; a thread takes the first free one (try-lock, starting at the
 *    one it used last), so readers never wait for the writer (WAL) and
 *    rarely for each other.
 *  - Rows read back are untrusted: every column is type- and size-checked,
 *    then entry_validate(). A bad row is corruption: the writer re-reads it
 *    inside its transaction and deletes it only if it is still bad (so a
 *    concurrent good rewrite is never lost), it is counted, and a WARNING
 *    names the key and the reason; get returns -EBADMSG, scan and sample
 *    skip it.
 *
 * Thread-safety and ownership of every sqlite3 handle
 *  - l3->wdb and every l3->w_* statement belong to the writer thread alone
 *    (between open and the writer's start they are used by the opening
 *    thread, before the writer exists; after the join by close()).
 *  - l3->readers[i].db and its statements belong to readers[i].lock.
 *  - l3->cdb belongs to the checkpointer thread (ckpt_main).
 *  - Connections are opened with SQLITE_OPEN_NOMUTEX: each has one owner.
 *
 * Locks (no function holds two; none is held across a callback, and a
 * reader lock is never held while waiting for the writer):
 *  - l3->qlock guards the queue (qhead/qtail/qrows), stopping, and each
 *    queued op's done flag; qcond wakes the writer, each waiter sleeps on
 *    its own condition (op->cv, signalled once when its op is done), and
 *    roomcond wakes the NOWAIT producers held back by backpressure.
 *  - readers[i].lock guards readers[i] (see above).
 *  - ckpt_lock guards ckpt_kicked/ckpt_stop (ckpt_cond wakes the
 *    checkpointer); the writer takes it inside its WAL hook, holding no
 *    other lock.
 *  - size, corrupt and the writer's published counters are _Atomic.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#define LOG_MODULE "l3"
#include "common/clock.h"
#include "common/log.h"
#include "common/svc.h"
#include "storage/l3_sqlite.h"

#define SCHEMA_VERSION 1
#define KEY_BYTES      32
#define N_READERS      4
#define PATH_CAP       4096
#define TEXT_MAX       16384 /* cap on any text column read back */
/* Writer: rows per group-commit transaction (soft), expired rows deleted
 * per transaction, queued rows above which NOWAIT puts wait and above
 * which gets stop queueing recency touches. */
#define BATCH_ROWS  20000
#define SWEEP_CHUNK 2000
#define QUEUE_HIGH  65536
#define TOUCH_HIGH  16384
/* Readers: rows fetched per reader-lock hold; sample windows. */
#define SCAN_CHUNK         256
#define SAMPLE_CHUNK       256
#define SAMPLE_WINDOW_ROWS 4096 /* expected rows per key-space window */
#define SAMPLE_MAX_WINDOWS 16   /* windows per sample call: the bound */
/* Checkpoints: WAL frames (4 KiB) that wake the checkpointer (16 MiB), at
 * which the writer forces a RESTART checkpoint itself (128 MiB), and the
 * size the WAL file is truncated back to. */
#define CKPT_START     4096
#define CKPT_HARD      32768
#define WAL_KEEP_BYTES (64 * 1024 * 1024)
/* Sample positions are 63-bit key prefixes. */
#define POS_RANGE (UINT64_C(1) << 63)
#define POS_MASK  (POS_RANGE - 1)

/* Filter shapes: one lazily prepared statement per combination. */
#define F_HEALTH       0x01
#define F_NOTUNHEALTHY 0x02
#define F_SOURCE       0x04
#define F_SCHEME       0x08
#define F_COUNTRY      0x10
#define F_ANON         0x20
#define F_LATENCY      0x40
#define N_SHAPES       0x80

/* Selected columns, in the order decode_row() reads them. */
#define COLS                                                                   \
    "key, proxy_url, username_tok, password_tok, source, protocol, "           \
    "fetch_time, ttl_seconds, expires_at, health, failure_count, country, "    \
    "anonymity, latency_ms, last_accessed, access_count"

enum col {
    C_KEY,
    C_URL,
    C_USER,
    C_PASS,
    C_SOURCE,
    C_PROTOCOL,
    C_FETCH,
    C_TTL,
    C_EXPIRES,
    C_HEALTH,
    C_FAILURES,
    C_COUNTRY,
    C_ANON,
    C_LATENCY,
    C_LAST_ACCESSED,
    C_ACCESS_COUNT,
    N_COLS
};

static const char *const col_names[N_COLS] = {
    "key",        "proxy_url",  "username_tok",  "password_tok",
    "source",     "protocol",   "fetch_time",    "ttl_seconds",
    "expires_at", "health",     "failure_count", "country",
    "anonymity",  "latency_ms", "last_accessed", "access_count",
};

static const char schema_v1[] =
    "CREATE TABLE IF NOT EXISTS entries ("
    " key BLOB NOT NULL PRIMARY KEY," /* SHA-256 of the normalised URL */
    " proxy_url TEXT NOT NULL,"
    " username_tok TEXT," /* Fernet token or NULL */
    " password_tok TEXT,"
    " source TEXT NOT NULL,"
    " protocol TEXT NOT NULL,"
    " fetch_time INTEGER NOT NULL," /* ms since the epoch, UTC */
    " ttl_seconds INTEGER NOT NULL,"
    " expires_at INTEGER NOT NULL," /* ms */
    " health TEXT NOT NULL,"
    " failure_count INTEGER NOT NULL,"
    " country TEXT,"          /* NULL: unknown */
    " anonymity TEXT,"        /* NULL: unknown */
    " latency_ms INTEGER,"    /* NULL: unknown */
    " last_accessed INTEGER," /* ms; NULL: never */
    " access_count INTEGER NOT NULL,"
    " touched INTEGER NOT NULL" /* logical clock, for capacity eviction */
    ") WITHOUT ROWID;"
    "CREATE INDEX IF NOT EXISTS entries_expires_at ON entries(expires_at);"
    "CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v) WITHOUT ROWID;";

enum op_kind {
    OP_PUT,     /* es[0..n) */
    OP_DEL,     /* key */
    OP_DEL_BAD, /* kval: delete the row if it is (still) corrupt */
    OP_TOUCH,   /* key: bump touched (recency for capacity) */
    OP_CLEAR,
    OP_SWEEP, /* now_ms, max */
    OP_PROBE, /* a trivial write to meta */
};

struct op {
    struct op *next;
    enum op_kind kind;
    bool nowait;        /* heap op, freed by the writer; nobody waits for it */
    bool done;          /* guarded by qlock */
    pthread_cond_t *cv; /* the waiter's own condition (waited ops) */
    bool carry;         /* writer only: run again in the next transaction */
    /* Inputs. */
    struct entry *const *es; /* OP_PUT; borrowed (waited) or &own (nowait) */
    size_t n;
    struct entry *own; /* nowait OP_PUT: the reference we hold */
    unsigned flags;    /* TIER_PUT_* */
    uint8_t key[KEY_BYTES];
    sqlite3_value *kval; /* OP_DEL_BAD: the exact key value (owned) */
    int64_t now_ms;
    size_t max; /* OP_SWEEP: budget left */
    /* Results, written by the writer before done is set. */
    int err;
    size_t count;                /* rows removed (del, sweep, clear, del_bad) */
    size_t victims;              /* rows evicted for capacity (put) */
    size_t tx_count, tx_victims; /* provisional, this transaction */
};

struct reader {
    pthread_mutex_t lock; /* guards db and every statement below */
    sqlite3 *db;
    sqlite3_stmt *get;
    sqlite3_stmt *sel[N_SHAPES]; /* scan/sample, prepared on first use */
};

struct l3 {
    struct tier base; /* first member */
    char path[PATH_CAP];
    size_t capacity; /* 0 = unlimited */

    /* Writer thread state (see the ownership notes above). */
    sqlite3 *wdb;
    sqlite3_stmt *w_begin, *w_commit, *w_rollback;
    sqlite3_stmt *w_insert, *w_update_touch, *w_update_keep;
    sqlite3_stmt *w_del, *w_touch, *w_clear, *w_sweep, *w_evict;
    sqlite3_stmt *w_probe, *w_select_key;
    int64_t nrows;  /* committed row count */
    int64_t wclock; /* last touched value handed out (see next_touch) */
    pthread_t writer;
    bool writer_started;

    /* Queue, guarded by qlock. */
    pthread_mutex_t qlock;
    pthread_cond_t qcond, roomcond;
    struct op *qhead, *qtail;
    size_t qrows;
    bool stopping;

    struct reader readers[N_READERS];

    /* Checkpointer thread and its connection (cdb belongs to it). */
    sqlite3 *cdb;
    pthread_t ckpt;
    bool ckpt_started;
    pthread_mutex_t ckpt_lock; /* guards ckpt_kicked, ckpt_stop */
    pthread_cond_t ckpt_cond;
    bool ckpt_kicked, ckpt_stop;
    _Atomic int ckpt_err;   /* -errno of the last checkpoint, or 0 */
    _Atomic int wal_frames; /* WAL length after the last commit */

    _Atomic size_t size;
    _Atomic uint64_t corrupt;
};

static _Thread_local unsigned reader_hint;

/* ------------------------------------------------------------------ */
/* Small helpers                                                        */

static struct l3 *l3_of(struct tier *t)
{
    return (struct l3 *)t;
}

/* SQLite result code -> negative errno (SPEC: the tier failures). */
static int sqlite_errno(int rc)
{
    if (rc == SQLITE_IOERR_NOMEM)
        return -ENOMEM;
    switch (rc & 0xff) {
    case SQLITE_OK:
    case SQLITE_ROW:
    case SQLITE_DONE:
        return 0;
    case SQLITE_NOMEM:
        return -ENOMEM;
    case SQLITE_FULL:
        return -ENOSPC;
    case SQLITE_READONLY:
        return -EROFS;
    case SQLITE_PERM:
    case SQLITE_AUTH:
    case SQLITE_CANTOPEN:
        return -EACCES;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return -EBUSY;
    case SQLITE_CONSTRAINT:
    case SQLITE_MISMATCH:
    case SQLITE_TOOBIG:
    case SQLITE_RANGE:
        return -EINVAL;
    default: /* IOERR, CORRUPT, NOTADB, PROTOCOL, ... */
        return -EIO;
    }
}

/* An error that fails one statement only (the transaction goes on). */
static bool op_local_error(int rc)
{
    switch (rc & 0xff) {
    case SQLITE_CONSTRAINT:
    case SQLITE_MISMATCH:
    case SQLITE_TOOBIG:
    case SQLITE_RANGE:
        return true;
    default:
        return false;
    }
}

static bool is_notadb(int rc)
{
    return (rc & 0xff) == SQLITE_NOTADB || (rc & 0xff) == SQLITE_CORRUPT;
}

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += UINT64_C(0x9E3779B97F4A7C15));

    z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
    return z ^ (z >> 31);
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* 64 lowercase hex chars -> 32 bytes, validating in the same pass (this
 * is on every put's path). 0, or -EINVAL. */
static int key_to_blob(const char *key, uint8_t out[KEY_BYTES])
{
    size_t i;

    if (!key)
        return -EINVAL;
    for (i = 0; i < KEY_BYTES; i++) {
        int hi = hexval(key[2 * i]), lo;

        if (hi < 0)
            return -EINVAL;
        lo = hexval(key[2 * i + 1]);
        if (lo < 0)
            return -EINVAL;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return key[ENTRY_KEY_LEN] == '\0' ? 0 : -EINVAL;
}

static void blob_to_hex(const uint8_t *b, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    size_t i;

    for (i = 0; i < n; i++) {
        out[2 * i] = digits[b[i] >> 4];
        out[2 * i + 1] = digits[b[i] & 15];
    }
    out[2 * n] = '\0';
}

/* Increment a big-endian blob; false on overflow (it was all 0xff). */
static bool blob_increment(uint8_t b[KEY_BYTES])
{
    int i;

    for (i = KEY_BYTES - 1; i >= 0; i--) {
        if (++b[i] != 0)
            return true;
    }
    return false;
}

/*
 * The smallest key K (as a blob) with hex(K) > after in strcmp order, so
 * that "key >= K" selects exactly the keys an in-memory tier comparing the
 * hex strings would. after may be any string (an opaque cursor decoded by
 * the API). false: no key can be greater.
 */
static bool after_to_bound(const char *after, uint8_t out[KEY_BYTES])
{
    char hex[ENTRY_KEY_LEN + 1];
    size_t i = 0, j;
    bool bump = false;

    while (i < ENTRY_KEY_LEN && after[i] != '\0' && hexval(after[i]) >= 0)
        i++;
    memcpy(hex, after, i);
    if (i == ENTRY_KEY_LEN) {
        /* after starts with a whole key q: K must be > q. */
        bump = true;
    } else if (after[i] != '\0') {
        /* After the hex prefix comes a non-hex char c: K[i] must be the
         * smallest hex digit above c, or the prefix itself must grow. */
        unsigned char c = (unsigned char)after[i];

        if (c < '0') {
            hex[i++] = '0';
        } else if (c < 'a') {
            hex[i++] = 'a'; /* c is between '9' and 'a' (c is not hex) */
        } else {
            bump = true; /* c > 'f': no digit at i is larger */
        }
    }
    for (j = i; j < ENTRY_KEY_LEN; j++)
        hex[j] = bump ? 'f' : '0';
    hex[ENTRY_KEY_LEN] = '\0';
    for (j = 0; j < KEY_BYTES; j++)
        out[j] = (uint8_t)(hexval(hex[2 * j]) << 4 | hexval(hex[2 * j + 1]));
    if (bump)
        return blob_increment(out); /* prefix+fff.. + 1 = next prefix */
    return true;
}

/*
 * The smallest 32-byte key strictly greater than the blob k of length len
 * (k holds its first min(len, 33) bytes). A well-formed key is simply
 * incremented; a malformed shorter blob is padded with zeros (a longer
 * key with k as a prefix is greater); a longer one is truncated and
 * incremented. false: no 32-byte key is greater.
 */
static bool next_bound(const uint8_t *k, int len, uint8_t out[KEY_BYTES])
{
    memset(out, 0, KEY_BYTES);
    if (len < KEY_BYTES) {
        memcpy(out, k, (size_t)(len > 0 ? len : 0));
        return true;
    }
    memcpy(out, k, KEY_BYTES);
    return blob_increment(out);
}

/* Printable key for log lines: the hex key, or a marker for a bad one. */
static void key_for_log(sqlite3_value *v, char out[ENTRY_KEY_LEN + 1])
{
    if (v && sqlite3_value_type(v) == SQLITE_BLOB &&
        sqlite3_value_bytes(v) == KEY_BYTES) {
        blob_to_hex(sqlite3_value_blob(v), KEY_BYTES, out);
        return;
    }
    snprintf(out, ENTRY_KEY_LEN + 1, "(invalid key)");
}

/* ------------------------------------------------------------------ */
/* Row encoding and decoding                                            */

/* Bind ?1..?16 of the insert/update statements from e. */
static int bind_entry(sqlite3_stmt *st, const struct entry *e,
                      const uint8_t key[KEY_BYTES])
{
    const char *anon = entry_anonymity_name(e->anonymity);
    int64_t last = atomic_load(&e->last_accessed);
    uint64_t count = atomic_load(&e->access_count);
    int rc;

    rc = sqlite3_bind_blob(st, 1, key, KEY_BYTES, SQLITE_TRANSIENT);
    rc = rc ? rc : sqlite3_bind_text(st, 2, e->proxy_url, -1, SQLITE_STATIC);
    rc = rc ? rc : sqlite3_bind_text(st, 3, e->username_tok, -1, SQLITE_STATIC);
    rc = rc ? rc : sqlite3_bind_text(st, 4, e->password_tok, -1, SQLITE_STATIC);
    rc = rc ? rc : sqlite3_bind_text(st, 5, e->source, -1, SQLITE_STATIC);
    rc = rc ? rc
            : sqlite3_bind_text(st, 6, entry_scheme_name(e->scheme), -1,
                                SQLITE_STATIC);
    rc = rc ? rc : sqlite3_bind_int64(st, 7, e->fetch_time);
    rc = rc ? rc : sqlite3_bind_int64(st, 8, e->ttl_seconds);
    rc = rc ? rc : sqlite3_bind_int64(st, 9, e->expires_at);
    rc = rc ? rc
            : sqlite3_bind_text(st, 10, entry_health_name(e->health), -1,
                                SQLITE_STATIC);
    rc = rc ? rc : sqlite3_bind_int64(st, 11, (int64_t)e->failure_count);
    rc = rc ? rc
            : (e->country[0]
                   ? sqlite3_bind_text(st, 12, e->country, -1, SQLITE_STATIC)
                   : sqlite3_bind_null(st, 12));
    rc = rc ? rc
            : (e->anonymity != ENTRY_ANON_NONE && anon
                   ? sqlite3_bind_text(st, 13, anon, -1, SQLITE_STATIC)
                   : sqlite3_bind_null(st, 13));
    rc = rc ? rc
            : (e->latency_ms >= 0 ? sqlite3_bind_int64(st, 14, e->latency_ms)
                                  : sqlite3_bind_null(st, 14));
    rc = rc ? rc
            : (last > 0 ? sqlite3_bind_int64(st, 15, last)
                        : sqlite3_bind_null(st, 15));
    rc = rc ? rc
            : sqlite3_bind_int64(st, 16,
                                 count > (uint64_t)INT64_MAX ? INT64_MAX
                                                             : (int64_t)count);
    return rc;
}

struct decode_err {
    const char *reason;
    char buf[96];
};

static int decode_fail(struct decode_err *de, enum col c, const char *why)
{
    snprintf(de->buf, sizeof de->buf, "column %s: %s", col_names[c], why);
    de->reason = de->buf;
    return -EBADMSG;
}

/* A text column: NULL -> *out NULL if nullable; else type, NUL and cap. */
static int col_text(sqlite3_stmt *st, enum col c, bool nullable,
                    const char **out, struct decode_err *de)
{
    int type = sqlite3_column_type(st, (int)c);
    const unsigned char *s;
    int len;

    if (type == SQLITE_NULL) {
        *out = NULL;
        return nullable ? 0 : decode_fail(de, c, "missing");
    }
    if (type != SQLITE_TEXT)
        return decode_fail(de, c, "not text");
    s = sqlite3_column_text(st, (int)c);
    len = sqlite3_column_bytes(st, (int)c);
    if (!s)
        return -ENOMEM;
    if (len > TEXT_MAX || strlen((const char *)s) != (size_t)len)
        return decode_fail(de, c, "too long or contains NUL");
    *out = (const char *)s;
    return 0;
}

/* An integer column; nullable ones give dflt for NULL. */
static int col_int(sqlite3_stmt *st, enum col c, bool nullable, int64_t dflt,
                   int64_t *out, struct decode_err *de)
{
    int type = sqlite3_column_type(st, (int)c);

    if (type == SQLITE_NULL) {
        if (!nullable)
            return decode_fail(de, c, "missing");
        *out = dflt;
        return 0;
    }
    if (type != SQLITE_INTEGER)
        return decode_fail(de, c, "not an integer");
    *out = sqlite3_column_int64(st, (int)c);
    return 0;
}

static int decode_strings(sqlite3_stmt *st, struct entry *e,
                          struct decode_err *de)
{
    const struct {
        enum col c;
        bool nullable;
        char **field;
    } cols[] = {
        {C_URL, false, &e->proxy_url},
        {C_USER, true, &e->username_tok},
        {C_PASS, true, &e->password_tok},
        {C_SOURCE, false, &e->source},
    };
    const char *s;
    size_t i;
    int err;

    for (i = 0; i < SVC_ARRAY_LEN(cols); i++) {
        err = col_text(st, cols[i].c, cols[i].nullable, &s, de);
        if (err)
            return err;
        err = entry_set_str(cols[i].field, s);
        if (err)
            return err;
    }
    return 0;
}

static int decode_enums(sqlite3_stmt *st, struct entry *e,
                        struct decode_err *de)
{
    const char *proto, *health, *country, *anon;
    int err;

    err = col_text(st, C_PROTOCOL, false, &proto, de);
    err = err ? err : col_text(st, C_HEALTH, false, &health, de);
    err = err ? err : col_text(st, C_COUNTRY, true, &country, de);
    err = err ? err : col_text(st, C_ANON, true, &anon, de);
    if (err)
        return err;
    if (entry_scheme_parse(proto, &e->scheme) < 0 ||
        strcmp(entry_scheme_name(e->scheme), proto) != 0)
        return decode_fail(de, C_PROTOCOL, "unknown protocol");
    if (entry_health_parse(health, &e->health) < 0)
        return decode_fail(de, C_HEALTH, "unknown health");
    if (country) {
        if (strlen(country) != 2 || !entry_country_parse(country, e->country) ||
            strcmp(country, e->country) != 0)
            return decode_fail(de, C_COUNTRY, "not two uppercase letters");
    }
    e->anonymity = ENTRY_ANON_NONE;
    if (anon && entry_anonymity_parse(anon, &e->anonymity) < 0)
        return decode_fail(de, C_ANON, "unknown anonymity");
    return 0;
}

static int decode_ints(sqlite3_stmt *st, struct entry *e, struct decode_err *de)
{
    int64_t failures = 0, last = 0, count = 0;
    const struct {
        enum col c;
        bool nullable;
        int64_t dflt;
        int64_t *out;
    } cols[] = {
        {C_FETCH, false, 0, &e->fetch_time},
        {C_TTL, false, 0, &e->ttl_seconds},
        {C_EXPIRES, false, 0, &e->expires_at},
        {C_FAILURES, false, 0, &failures},
        {C_LATENCY, true, -1, &e->latency_ms},
        {C_LAST_ACCESSED, true, 0, &last},
        {C_ACCESS_COUNT, false, 0, &count},
    };
    size_t i;
    int err;

    for (i = 0; i < SVC_ARRAY_LEN(cols); i++) {
        err = col_int(st, cols[i].c, cols[i].nullable, cols[i].dflt,
                      cols[i].out, de);
        if (err)
            return err;
    }
    if (failures < 0 || failures > (int64_t)UINT32_MAX)
        return decode_fail(de, C_FAILURES, "out of range");
    if (e->latency_ms < 0 && sqlite3_column_type(st, C_LATENCY) != SQLITE_NULL)
        return decode_fail(de, C_LATENCY, "negative");
    if (last < 0)
        return decode_fail(de, C_LAST_ACCESSED, "negative");
    if (count < 0)
        return decode_fail(de, C_ACCESS_COUNT, "negative");
    e->failure_count = (uint32_t)failures;
    atomic_store(&e->last_accessed, last);
    atomic_store(&e->access_count, (uint64_t)count);
    return 0;
}

/*
 * Build a new entry from the current row of st (columns as in COLS).
 * 0 and *out; -EBADMSG with de->reason for a corrupt row; -ENOMEM.
 */
static int decode_row(sqlite3_stmt *st, struct entry **out,
                      struct decode_err *de)
{
    struct entry *e;
    const char *why = NULL;
    int err;

    de->reason = NULL;
    if (sqlite3_column_type(st, C_KEY) != SQLITE_BLOB ||
        sqlite3_column_bytes(st, C_KEY) != KEY_BYTES)
        return decode_fail(de, C_KEY, "not a 32-byte blob");
    e = entry_new();
    if (!e)
        return -ENOMEM;
    blob_to_hex(sqlite3_column_blob(st, C_KEY), KEY_BYTES, e->key);
    err = decode_strings(st, e, de);
    err = err ? err : decode_enums(st, e, de);
    err = err ? err : decode_ints(st, e, de);
    if (err)
        goto out;
    if (entry_validate(e, &why) < 0) {
        de->reason = why ? why : "invalid entry";
        err = -EBADMSG;
        goto out;
    }
    *out = e;
    e = NULL;
out:
    entry_unref(e);
    return err;
}

/* ------------------------------------------------------------------ */
/* The writer                                                           */

static int wstep(struct l3 *l, sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);

    if (rc != SQLITE_DONE && rc != SQLITE_ROW)
        log_debug("%s: %s", sqlite3_sql(st), sqlite3_errmsg(l->wdb));
    return rc;
}

/* Run a statement that returns no rows; reset it. SQLite rc. */
static int wexec(struct l3 *l, sqlite3_stmt *st)
{
    int rc = wstep(l, st);

    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc == SQLITE_ROW ? SQLITE_DONE : rc;
}

/*
 * The next touched value: wall-clock microseconds, forced to increase, so
 * the order holds within a run (many writes per µs just run ahead a
 * little) and, roughly, across runs.
 */
static int64_t next_touch(struct l3 *l)
{
    struct timespec ts;
    int64_t now;

    clock_gettime(CLOCK_REALTIME, &ts);
    now = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
    l->wclock = now > l->wclock ? now : l->wclock + 1;
    return l->wclock;
}

/* Evict least recently touched rows while over capacity. SQLite rc. */
static int enforce_capacity(struct l3 *l, int64_t *n, size_t *victims)
{
    int rc;

    if (l->capacity == 0 || *n <= (int64_t)l->capacity)
        return SQLITE_DONE;
    sqlite3_bind_int64(l->w_evict, 1, *n - (int64_t)l->capacity);
    rc = wexec(l, l->w_evict);
    if (rc == SQLITE_DONE) {
        int ch = sqlite3_changes(l->wdb);

        *n -= ch;
        *victims += (size_t)ch;
    }
    return rc;
}

static int run_put(struct l3 *l, struct op *op, int64_t *n)
{
    size_t i;
    int rc = SQLITE_DONE;

    for (i = 0; i < op->n; i++) {
        const struct entry *e = op->es[i];
        uint8_t key[KEY_BYTES];
        sqlite3_stmt *up;

        if (key_to_blob(e->key, key) < 0)
            return SQLITE_MISMATCH; /* validated on enqueue; not reached */
        rc = bind_entry(l->w_insert, e, key);
        if (rc != SQLITE_OK) {
            sqlite3_clear_bindings(l->w_insert);
            return rc;
        }
        sqlite3_bind_int64(l->w_insert, 17, next_touch(l));
        rc = wexec(l, l->w_insert);
        if (rc != SQLITE_DONE)
            return rc;
        if (sqlite3_changes(l->wdb) == 1) {
            (*n)++;
            continue;
        }
        /* The key exists: update it in place. */
        up = (op->flags & TIER_PUT_NOTOUCH) ? l->w_update_keep
                                            : l->w_update_touch;
        rc = bind_entry(up, e, key);
        if (rc != SQLITE_OK) {
            sqlite3_clear_bindings(up);
            return rc;
        }
        if (up == l->w_update_touch)
            sqlite3_bind_int64(up, 17, next_touch(l));
        rc = wexec(l, up);
        if (rc != SQLITE_DONE)
            return rc;
    }
    return enforce_capacity(l, n, &op->tx_victims);
}

/*
 * OP_DEL_BAD: re-read the row by its exact key value; delete it only if
 * it still fails to decode (a concurrent good rewrite must not be lost).
 */
static int run_del_bad(struct l3 *l, struct op *op, int64_t *n)
{
    struct decode_err de;
    struct entry *e = NULL;
    bool bad = false;
    int rc, err;

    sqlite3_bind_value(l->w_select_key, 1, op->kval);
    rc = wstep(l, l->w_select_key);
    if (rc == SQLITE_ROW) {
        err = decode_row(l->w_select_key, &e, &de);
        bad = err == -EBADMSG;
        entry_unref(e);
        rc = err == -ENOMEM ? SQLITE_NOMEM : SQLITE_DONE;
    }
    sqlite3_reset(l->w_select_key);
    sqlite3_clear_bindings(l->w_select_key);
    if (rc != SQLITE_DONE || !bad)
        return rc;
    sqlite3_bind_value(l->w_del, 1, op->kval);
    rc = wexec(l, l->w_del);
    if (rc == SQLITE_DONE && sqlite3_changes(l->wdb) > 0) {
        (*n)--;
        op->tx_count = 1;
    }
    return rc;
}

static int run_op(struct l3 *l, struct op *op, int64_t *n)
{
    int rc = SQLITE_DONE;
    int ch;

    op->tx_count = 0;
    op->tx_victims = 0;
    switch (op->kind) {
    case OP_PUT:
        return run_put(l, op, n);
    case OP_DEL:
        sqlite3_bind_blob(l->w_del, 1, op->key, KEY_BYTES, SQLITE_STATIC);
        rc = wexec(l, l->w_del);
        if (rc == SQLITE_DONE) {
            op->tx_count = (size_t)sqlite3_changes(l->wdb);
            *n -= (int64_t)op->tx_count;
        }
        return rc;
    case OP_DEL_BAD:
        return run_del_bad(l, op, n);
    case OP_TOUCH:
        sqlite3_bind_blob(l->w_touch, 1, op->key, KEY_BYTES, SQLITE_STATIC);
        sqlite3_bind_int64(l->w_touch, 2, next_touch(l));
        return wexec(l, l->w_touch);
    case OP_CLEAR:
        rc = wexec(l, l->w_clear);
        if (rc == SQLITE_DONE) {
            op->tx_count = (size_t)sqlite3_changes(l->wdb);
            *n = 0;
        }
        return rc;
    case OP_SWEEP: {
        size_t lim = op->max < SWEEP_CHUNK ? op->max : SWEEP_CHUNK;

        sqlite3_bind_int64(l->w_sweep, 1, op->now_ms);
        sqlite3_bind_int64(l->w_sweep, 2, (int64_t)lim);
        rc = wexec(l, l->w_sweep);
        if (rc == SQLITE_DONE) {
            ch = sqlite3_changes(l->wdb);
            op->tx_count = (size_t)ch;
            *n -= ch;
        }
        return rc;
    }
    case OP_PROBE:
        sqlite3_bind_int64(l->w_probe, 1, clock_now_ms());
        return wexec(l, l->w_probe);
    }
    return SQLITE_MISUSE;
}

/* Fail every op of a batch with err (the transaction did not commit). */
static void fail_batch(struct op *batch, int err)
{
    struct op *op;
    size_t lost = 0;

    for (op = batch; op; op = op->next) {
        op->err = err;
        op->carry = false;
        if (op->nowait && op->kind == OP_PUT)
            lost += op->n;
    }
    if (lost)
        log_warn("%zu queued write(s) not stored: transaction failed (%d)",
                 lost, err);
}

/*
 * One transaction over the ops of batch without an error. SQLite rc;
 * *culprit is the op whose statement failed (NULL if BEGIN/COMMIT did).
 * On success *n is the new row count.
 */
static int try_batch(struct l3 *l, struct op *batch, int64_t *n,
                     struct op **culprit)
{
    struct op *op;
    int rc;

    *culprit = NULL;
    *n = l->nrows;
    rc = wexec(l, l->w_begin);
    if (rc != SQLITE_DONE)
        return rc;
    for (op = batch; op; op = op->next) {
        if (op->err)
            continue;
        rc = run_op(l, op, n);
        if (rc != SQLITE_DONE) {
            *culprit = op;
            break;
        }
    }
    if (rc == SQLITE_DONE)
        rc = wexec(l, l->w_commit);
    if (rc != SQLITE_DONE && !sqlite3_get_autocommit(l->wdb))
        wexec(l, l->w_rollback);
    return rc;
}

/*
 * One group-commit transaction over batch. An error that belongs to one
 * op (a constraint) rolls back, fails that op alone and retries without
 * it, so no op is ever half applied; any other error fails the batch.
 */
static void run_batch(struct l3 *l, struct op *batch)
{
    struct op *op, *culprit;
    int64_t n = l->nrows;
    int rc;

    for (op = batch; op; op = op->next) {
        op->err = 0;
        op->carry = false;
    }
    for (;;) {
        rc = try_batch(l, batch, &n, &culprit);
        if (rc == SQLITE_DONE)
            break;
        if (culprit && op_local_error(rc)) {
            culprit->err = sqlite_errno(rc);
            continue; /* each retry drops one op: this terminates */
        }
        fail_batch(batch, sqlite_errno(rc));
        return;
    }
    l->nrows = n < 0 ? 0 : n;
    atomic_store(&l->size, (size_t)l->nrows);
    for (op = batch; op; op = op->next) {
        if (op->err)
            continue;
        op->count += op->tx_count;
        op->victims += op->tx_victims;
        if (op->kind == OP_SWEEP) {
            op->max -= op->tx_count;
            op->carry = op->max > 0 && op->tx_count == SWEEP_CHUNK;
        }
    }
}

static size_t op_rows(const struct op *op)
{
    if (op->kind == OP_PUT)
        return op->n;
    if (op->kind == OP_SWEEP)
        return SWEEP_CHUNK;
    return 1;
}

/* Detach up to BATCH_ROWS rows of queued ops (at least one op). qlock. */
static struct op *take_batch(struct l3 *l)
{
    struct op *head = l->qhead, *last = NULL, *op;
    size_t rows = 0;

    for (op = l->qhead; op; op = op->next) {
        if (last && rows + op_rows(op) > BATCH_ROWS)
            break;
        rows += op_rows(op);
        last = op;
    }
    l->qhead = last->next;
    if (!l->qhead)
        l->qtail = NULL;
    last->next = NULL;
    for (op = head; op; op = op->next) {
        if (op->kind == OP_PUT)
            l->qrows -= op->n;
        else
            l->qrows--;
    }
    return head;
}

static void free_op(struct op *op)
{
    if (!op)
        return;
    entry_unref(op->own);
    sqlite3_value_free(op->kval);
    free(op);
}

/* Complete a processed batch: carry ops go back to the queue head. qlock. */
static struct op *finish_batch(struct l3 *l, struct op *batch)
{
    struct op *op, *next, *carry_head = NULL, *carry_tail = NULL;
    struct op *to_free = NULL;

    for (op = batch; op; op = next) {
        next = op->next;
        op->next = NULL;
        if (op->carry) {
            if (carry_tail)
                carry_tail->next = op;
            else
                carry_head = op;
            carry_tail = op;
            l->qrows++;
        } else if (op->nowait) {
            op->next = to_free;
            to_free = op;
        } else {
            /* Wake exactly this waiter: a broadcast to every waiter cost
             * ~10% of the CPU per put at 64 writers. */
            op->done = true;
            pthread_cond_signal(op->cv);
        }
    }
    if (carry_head) {
        carry_tail->next = l->qhead;
        l->qhead = carry_head;
        if (!l->qtail)
            l->qtail = carry_tail;
    }
    pthread_cond_broadcast(&l->roomcond);
    return to_free;
}

/* ------------------------------------------------------------------ */
/* Checkpoints                                                          */

static void ckpt_kick(struct l3 *l)
{
    pthread_mutex_lock(&l->ckpt_lock);
    l->ckpt_kicked = true;
    pthread_cond_signal(&l->ckpt_cond);
    pthread_mutex_unlock(&l->ckpt_lock);
}

/*
 * WAL hook on the writer's connection, run after each commit (in place of
 * SQLite's auto-checkpoint, which would copy pages back and fsync twice
 * inside the writer's COMMIT: measured, that halved group-commit
 * throughput). It only records the WAL length and wakes the checkpointer.
 */
static int wal_hook(void *arg, sqlite3 *db, const char *name, int frames)
{
    struct l3 *l = arg;
    int before = atomic_exchange(&l->wal_frames, frames);

    (void)db;
    (void)name;
    if (frames >= CKPT_START && before < frames)
        ckpt_kick(l);
    return SQLITE_OK;
}

/*
 * The checkpointer: PASSIVE checkpoints on its own connection, so they run
 * beside the writer's commits (WAL allows one checkpointer and one writer
 * at once). It repeats while it makes progress; the writer restarts the
 * WAL from its start once a checkpoint has caught up with it.
 */
static void *ckpt_main(void *arg)
{
    struct l3 *l = arg;

    pthread_mutex_lock(&l->ckpt_lock);
    for (;;) {
        int rc, nlog = 0, nckpt = 0, prev = -1;

        while (!l->ckpt_kicked && !l->ckpt_stop)
            pthread_cond_wait(&l->ckpt_cond, &l->ckpt_lock);
        if (l->ckpt_stop)
            break;
        l->ckpt_kicked = false;
        pthread_mutex_unlock(&l->ckpt_lock);
        do {
            prev = nckpt;
            rc = sqlite3_wal_checkpoint_v2(
                l->cdb, NULL, SQLITE_CHECKPOINT_PASSIVE, &nlog, &nckpt);
        } while (rc == SQLITE_OK && nckpt < nlog && nckpt > prev);
        if ((rc & 0xff) == SQLITE_BUSY)
            rc = SQLITE_OK; /* another checkpoint is running: fine */
        if (rc != SQLITE_OK)
            log_debug("wal_checkpoint: %s", sqlite3_errmsg(l->cdb));
        atomic_store(&l->ckpt_err, sqlite_errno(rc));
        pthread_mutex_lock(&l->ckpt_lock);
    }
    pthread_mutex_unlock(&l->ckpt_lock);
    return NULL;
}

/*
 * Under a sustained stream of commits the background checkpoint may never
 * catch up exactly, and the WAL only restarts when it has. Past CKPT_HARD
 * frames the writer runs a RESTART checkpoint itself (a short stall every
 * ~128 MiB of writes), which bounds the WAL. Writer thread only.
 */
static void bound_wal(struct l3 *l)
{
    int rc;

    if (atomic_load(&l->wal_frames) < CKPT_HARD)
        return;
    rc = sqlite3_wal_checkpoint_v2(l->wdb, NULL, SQLITE_CHECKPOINT_RESTART,
                                   NULL, NULL);
    if (rc == SQLITE_OK)
        atomic_store(&l->wal_frames, 0);
    else if ((rc & 0xff) != SQLITE_BUSY)
        log_debug("wal_checkpoint(RESTART): %s", sqlite3_errmsg(l->wdb));
}

static void *writer_main(void *arg)
{
    struct l3 *l = arg;

    pthread_mutex_lock(&l->qlock);
    for (;;) {
        struct op *batch, *to_free;

        while (!l->qhead && !l->stopping)
            pthread_cond_wait(&l->qcond, &l->qlock);
        if (!l->qhead)
            break; /* stopping and drained */
        batch = take_batch(l);
        pthread_mutex_unlock(&l->qlock);

        run_batch(l, batch);

        pthread_mutex_lock(&l->qlock);
        to_free = finish_batch(l, batch);
        pthread_mutex_unlock(&l->qlock);
        while (to_free) {
            struct op *next = to_free->next;

            free_op(to_free);
            to_free = next;
        }
        bound_wal(l); /* after the waiters were released */
        pthread_mutex_lock(&l->qlock);
    }
    pthread_mutex_unlock(&l->qlock);
    return NULL;
}

/* Append op to the queue. qlock held. */
static void enqueue_locked(struct l3 *l, struct op *op)
{
    op->next = NULL;
    op->done = false;
    if (l->qtail)
        l->qtail->next = op;
    else
        l->qhead = op;
    l->qtail = op;
    l->qrows += op->kind == OP_PUT ? op->n : 1;
    pthread_cond_signal(&l->qcond);
}

/* Enqueue a stack op and wait for its commit ticket. Returns op->err. */
static int submit_wait(struct l3 *l, struct op *op)
{
    pthread_cond_t cv;
    int err;

    if (pthread_cond_init(&cv, NULL) != 0)
        return -ENOMEM;
    op->cv = &cv;
    pthread_mutex_lock(&l->qlock);
    if (l->stopping) {
        err = -EIO;
    } else {
        enqueue_locked(l, op);
        while (!op->done)
            pthread_cond_wait(&cv, &l->qlock);
        err = op->err;
    }
    pthread_mutex_unlock(&l->qlock);
    pthread_cond_destroy(&cv);
    return err;
}

/*
 * Enqueue a heap op without waiting (the writer frees it). Puts wait for
 * room above QUEUE_HIGH queued rows (backpressure); touches are dropped
 * above TOUCH_HIGH (they are only a recency hint).
 */
static int submit_nowait(struct l3 *l, struct op *op)
{
    op->nowait = true;
    pthread_mutex_lock(&l->qlock);
    if (op->kind == OP_TOUCH && l->qrows > TOUCH_HIGH) {
        pthread_mutex_unlock(&l->qlock);
        free_op(op);
        return 0;
    }
    while (!l->stopping && l->qrows > QUEUE_HIGH)
        pthread_cond_wait(&l->roomcond, &l->qlock);
    if (l->stopping) {
        pthread_mutex_unlock(&l->qlock);
        free_op(op);
        return -EIO;
    }
    enqueue_locked(l, op);
    pthread_mutex_unlock(&l->qlock);
    return 0;
}

/* ------------------------------------------------------------------ */
/* Corruption handling                                                  */

/*
 * A row failed to decode: have the writer delete it if it is still bad,
 * count it and log a WARNING naming the key and the reason. Called with
 * no lock held; kval is the row's key value (borrowed). Returns 1 if the
 * row was removed (and counted), 0 if it was gone or rewritten meanwhile
 * (another thread handled it), or -errno if the delete failed.
 */
static int report_corrupt(struct l3 *l, sqlite3_value *kval, const char *reason)
{
    char key[ENTRY_KEY_LEN + 1];
    struct op op;
    int err;

    key_for_log(kval, key);
    memset(&op, 0, sizeof op);
    op.kind = OP_DEL_BAD;
    op.kval = kval;
    err = submit_wait(l, &op);
    if (err) {
        log_warn("corrupt row key=%s: %s (could not remove it: %d)", key,
                 reason, err);
        return err;
    }
    if (op.count == 0)
        return 0;
    atomic_fetch_add(&l->corrupt, 1);
    log_warn("corrupt row key=%s: %s; removed", key, reason);
    return 1;
}

/* ------------------------------------------------------------------ */
/* Readers                                                              */

static struct reader *reader_acquire(struct l3 *l)
{
    unsigned h = reader_hint % N_READERS, i;
    struct reader *r;

    for (i = 0; i < N_READERS; i++) {
        r = &l->readers[(h + i) % N_READERS];
        if (pthread_mutex_trylock(&r->lock) == 0) {
            reader_hint = (h + i) % N_READERS;
            return r;
        }
    }
    r = &l->readers[h];
    pthread_mutex_lock(&r->lock);
    return r;
}

static void reader_release(struct reader *r)
{
    pthread_mutex_unlock(&r->lock);
}

static unsigned filter_shape(const struct tier_filter *f)
{
    unsigned s = 0;

    if (f->health >= 0)
        s |= F_HEALTH;
    if (f->exclude_unhealthy)
        s |= F_NOTUNHEALTHY;
    if (f->source)
        s |= F_SOURCE;
    if (f->scheme >= 0)
        s |= F_SCHEME;
    if (f->country)
        s |= F_COUNTRY;
    if (f->anonymity >= 0)
        s |= F_ANON;
    if (f->max_latency_ms >= 0)
        s |= F_LATENCY;
    return s;
}

/*
 * SQL for a filter shape: the rows with lo <= key < hi in key order. The
 * only secondary index is on expires_at, and "+expires_at" keeps the
 * planner off it (a range on it would sort the whole table by key), so
 * every shape walks the primary key and stops at LIMIT.
 */
static void build_sql(char *buf, size_t cap, unsigned shape)
{
    int len;

    len = snprintf(buf, cap,
                   "SELECT " COLS " FROM entries"
                   " WHERE key >= ?1 AND key < ?11 AND +expires_at > ?2"
                   "%s%s%s%s%s%s%s ORDER BY key LIMIT ?10",
                   (shape & F_HEALTH) ? " AND health = ?3" : "",
                   (shape & F_NOTUNHEALTHY) ? " AND health <> 'unhealthy'" : "",
                   (shape & F_SOURCE) ? " AND source = ?4" : "",
                   (shape & F_SCHEME) ? " AND protocol = ?5" : "",
                   (shape & F_COUNTRY) ? " AND country IS upper(?6)" : "",
                   (shape & F_ANON) ? " AND anonymity IS ?7" : "",
                   (shape & F_LATENCY)
                       ? " AND latency_ms <= ?8"
                       : "");
    SVC_ASSERT(len > 0 && (size_t)len < cap);
}

/* The statement for a shape, prepared on first use. r->lock held. */
static int reader_stmt(struct reader *r, unsigned shape, sqlite3_stmt **out)
{
    sqlite3_stmt **slot = &r->sel[shape];
    char sql[1024];
    int rc;

    if (!*slot) {
        build_sql(sql, sizeof sql, shape);
        rc = sqlite3_prepare_v3(r->db, sql, -1, SQLITE_PREPARE_PERSISTENT, slot,
                                NULL);
        if (rc != SQLITE_OK) {
            log_debug("prepare %s: %s", sql, sqlite3_errmsg(r->db));
            *slot = NULL;
            return sqlite_errno(rc);
        }
    }
    *out = *slot;
    return 0;
}

/* Bind ?2..?8 from f (?3..?8 only matter when the shape uses them). */
static int bind_filter(sqlite3_stmt *st, const struct tier_filter *f)
{
    int rc;

    rc = sqlite3_bind_int64(st, 2, f->now_ms);
    rc = rc ? rc
            : sqlite3_bind_text(
                  st, 3,
                  f->health >= 0
                      ? entry_health_name((enum entry_health)f->health)
                      : NULL,
                  -1, SQLITE_STATIC);
    rc = rc ? rc : sqlite3_bind_text(st, 4, f->source, -1, SQLITE_STATIC);
    rc = rc ? rc
            : sqlite3_bind_text(
                  st, 5,
                  f->scheme >= 0
                      ? entry_scheme_name((enum entry_scheme)f->scheme)
                      : NULL,
                  -1, SQLITE_STATIC);
    rc = rc ? rc
            : (f->country && f->country[0]
                   ? sqlite3_bind_text(st, 6, f->country, -1, SQLITE_STATIC)
                   : sqlite3_bind_null(st, 6));
    rc = rc ? rc
            : sqlite3_bind_text(
                  st, 7,
                  f->anonymity > 0
                      ? entry_anonymity_name((enum entry_anonymity)f->anonymity)
                      : NULL,
                  -1, SQLITE_STATIC);
    rc = rc ? rc : sqlite3_bind_int64(st, 8, f->max_latency_ms);
    return rc;
}

/*
 * Rows collected under a reader lock, handed to callbacks after it is
 * released. bad[] holds the key values of corrupt rows.
 */
#define BATCH_CAP (SCAN_CHUNK > SAMPLE_CHUNK ? SCAN_CHUNK : SAMPLE_CHUNK)
struct batch {
    struct entry *es[BATCH_CAP];
    size_t n;
    sqlite3_value *bad[BATCH_CAP];
    char bad_reason[BATCH_CAP][96];
    size_t nbad;
    size_t fetched;                  /* rows SQLite returned (good or bad) */
    uint8_t last_key[KEY_BYTES + 1]; /* first bytes of the last blob key */
    int last_key_len;                /* its real length (may differ from 32) */
};

static void batch_release(struct batch *b)
{
    size_t i;

    for (i = 0; i < b->n; i++)
        entry_unref(b->es[i]);
    for (i = 0; i < b->nbad; i++)
        sqlite3_value_free(b->bad[i]);
    b->n = 0;
    b->nbad = 0;
}

/*
 * Step st to the end (at most limit rows were asked for), decoding rows
 * into b. Rows that do not match f (SQL and C must agree; C has the last
 * word) are skipped. Returns 0 or -errno. Caller holds the reader lock.
 */
static int collect(struct reader *r, sqlite3_stmt *st,
                   const struct tier_filter *f, struct batch *b)
{
    int rc, err = 0;

    b->fetched = 0;
    for (;;) {
        struct decode_err de;
        struct entry *e = NULL;

        rc = sqlite3_step(st);
        if (rc != SQLITE_ROW)
            break;
        b->fetched++;
        if (sqlite3_column_type(st, C_KEY) == SQLITE_BLOB) {
            const void *kb = sqlite3_column_blob(st, C_KEY);
            int klen = sqlite3_column_bytes(st, C_KEY);

            memset(b->last_key, 0, sizeof b->last_key);
            if (kb && klen > 0)
                memcpy(b->last_key, kb,
                       (size_t)(klen < KEY_BYTES + 1 ? klen : KEY_BYTES + 1));
            b->last_key_len = klen;
        }
        err = decode_row(st, &e, &de);
        if (err == -EBADMSG) {
            err = 0;
            b->bad[b->nbad] =
                sqlite3_value_dup(sqlite3_column_value(st, C_KEY));
            if (!b->bad[b->nbad]) {
                err = -ENOMEM;
                break;
            }
            snprintf(b->bad_reason[b->nbad], sizeof b->bad_reason[0], "%s",
                     de.reason);
            b->nbad++;
            continue;
        }
        if (err)
            break;
        if (!tier_filter_match(f, e)) {
            entry_unref(e);
            continue;
        }
        b->es[b->n++] = e;
    }
    if (!err && rc != SQLITE_ROW && rc != SQLITE_DONE) {
        log_debug("%s: %s", sqlite3_sql(st), sqlite3_errmsg(r->db));
        err = sqlite_errno(rc);
    }
    sqlite3_reset(st);
    return err;
}

/* A blob greater than every 32-byte key: 32 x 0xff then one more byte. */
static const uint8_t key_infinity[KEY_BYTES + 1] = {
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00,
};

/*
 * Fetch up to want rows matching f with lo <= key < hi (hi_len bytes) into
 * b, under a reader lock taken and released here. 0 or -errno.
 */
static int fetch_range(struct l3 *l, const struct tier_filter *f,
                       const uint8_t lo[KEY_BYTES], const uint8_t *hi,
                       int hi_len, size_t want, struct batch *b)
{
    struct reader *r = reader_acquire(l);
    sqlite3_stmt *st = NULL;
    int err, rc;

    err = reader_stmt(r, filter_shape(f), &st);
    if (!err) {
        rc = sqlite3_bind_blob(st, 1, lo, KEY_BYTES, SQLITE_TRANSIENT);
        rc = rc ? rc : sqlite3_bind_blob(st, 11, hi, hi_len, SQLITE_TRANSIENT);
        rc = rc ? rc : bind_filter(st, f);
        rc = rc ? rc : sqlite3_bind_int64(st, 10, (int64_t)want);
        err = rc ? sqlite_errno(rc) : collect(r, st, f, b);
        sqlite3_clear_bindings(st);
    }
    reader_release(r);
    return err;
}

/* Report the corrupt rows of b (no lock held). */
static void batch_report_bad(struct l3 *l, struct batch *b)
{
    size_t i;

    for (i = 0; i < b->nbad; i++) {
        (void)report_corrupt(l, b->bad[i], b->bad_reason[i]);
        sqlite3_value_free(b->bad[i]);
        b->bad[i] = NULL;
    }
    b->nbad = 0;
}

/* ------------------------------------------------------------------ */
/* Tier operations                                                      */

static int l3_get(struct tier *t, const char *key, struct entry **out)
{
    struct l3 *l = l3_of(t);
    struct decode_err de;
    struct reader *r;
    struct entry *e = NULL;
    sqlite3_value *bad = NULL;
    uint8_t kb[KEY_BYTES];
    int rc, err;

    if (key_to_blob(key, kb) < 0)
        return -ENOENT;
    r = reader_acquire(l);
    sqlite3_bind_blob(r->get, 1, kb, KEY_BYTES, SQLITE_STATIC);
    rc = sqlite3_step(r->get);
    if (rc == SQLITE_ROW) {
        err = decode_row(r->get, &e, &de);
        if (err == -EBADMSG) {
            bad = sqlite3_value_dup(sqlite3_column_value(r->get, C_KEY));
            if (!bad)
                err = -ENOMEM;
        }
    } else if (rc == SQLITE_DONE) {
        err = -ENOENT;
    } else {
        log_debug("get: %s", sqlite3_errmsg(r->db));
        err = sqlite_errno(rc);
    }
    sqlite3_reset(r->get);
    sqlite3_clear_bindings(r->get);
    reader_release(r);

    if (bad) {
        err = report_corrupt(l, bad, de.reason);
        sqlite3_value_free(bad);
        if (err < 0)
            return err;
        return err == 1 ? -EBADMSG : -ENOENT;
    }
    if (err)
        return err;
    if (l->capacity > 0) {
        /* Recency only matters for capacity eviction. */
        struct op *op = calloc(1, sizeof *op);

        if (op) {
            op->kind = OP_TOUCH;
            memcpy(op->key, kb, KEY_BYTES);
            submit_nowait(l, op);
        }
    }
    *out = e;
    return 0;
}

/*
 * What storing an entry needs: a valid key, the NOT NULL columns, enums
 * that have a name. Entries come from in-process code that built and
 * validated them (entry_validate costs ~1.6 us, 16 ms of a 10,000-entry
 * warm batch, serially); what is untrusted is what comes back from disk,
 * and every row read is fully validated. -EINVAL for a caller bug.
 */
static int check_entry(const struct entry *e)
{
    uint8_t key[KEY_BYTES];

    if (!e || key_to_blob(e->key, key) < 0 || !e->proxy_url || !e->source ||
        !entry_scheme_name(e->scheme) || !entry_health_name(e->health) ||
        (unsigned)e->anonymity > ENTRY_ANON_ELITE) {
        log_debug("put refused: incomplete entry");
        return -EINVAL;
    }
    return 0;
}

static int l3_put(struct tier *t, struct entry *e, unsigned flags,
                  struct entry **victim)
{
    struct l3 *l = l3_of(t);
    struct op op, *hop;
    int err;

    err = check_entry(e);
    if (err)
        return err;
    if (flags & TIER_PUT_NOWAIT) {
        hop = calloc(1, sizeof *hop);
        if (!hop)
            return -ENOMEM;
        hop->kind = OP_PUT;
        hop->own = entry_ref(e);
        hop->es = &hop->own;
        hop->n = 1;
        hop->flags = flags;
        err = submit_nowait(l, hop);
    } else {
        struct entry *one[1] = {e};

        memset(&op, 0, sizeof op);
        op.kind = OP_PUT;
        op.es = one;
        op.n = 1;
        op.flags = flags;
        err = submit_wait(l, &op);
    }
    if (!err && victim)
        *victim = NULL; /* L3 victims are dropped, never demoted */
    return err;
}

static int l3_put_batch(struct tier *t, struct entry *const *es, size_t n,
                        size_t *n_victims)
{
    struct l3 *l = l3_of(t);
    struct op op;
    size_t i;
    int err;

    if (n == 0) {
        if (n_victims)
            *n_victims = 0;
        return 0;
    }
    for (i = 0; i < n; i++) {
        err = check_entry(es[i]);
        if (err)
            return err;
    }
    memset(&op, 0, sizeof op);
    op.kind = OP_PUT;
    op.es = es;
    op.n = n;
    err = submit_wait(l, &op);
    if (!err && n_victims)
        *n_victims = op.victims;
    return err;
}

static int l3_del(struct tier *t, const char *key)
{
    struct l3 *l = l3_of(t);
    struct op op;
    int err;

    memset(&op, 0, sizeof op);
    if (key_to_blob(key, op.key) < 0)
        return -ENOENT;
    op.kind = OP_DEL;
    err = submit_wait(l, &op);
    if (err)
        return err;
    return op.count ? 0 : -ENOENT;
}

/* Hand b's entries to cb; returns cb's first non-zero value or 0. */
static int batch_deliver(struct batch *b, size_t *delivered, size_t max,
                         tier_entry_cb cb, void *arg)
{
    size_t i;
    int ret = 0;

    for (i = 0; i < b->n && *delivered < max && ret == 0; i++) {
        ret = cb(arg, b->es[i]);
        (*delivered)++;
    }
    return ret;
}

static int l3_scan(struct tier *t, const struct tier_filter *f,
                   const char *after, size_t max, tier_entry_cb cb, void *arg)
{
    struct l3 *l = l3_of(t);
    uint8_t bound[KEY_BYTES];
    size_t delivered = 0;
    struct batch *b;
    int err = 0, ret = 0;

    if (!f || !cb)
        return -EINVAL;
    if (max == 0 || !after_to_bound(after ? after : "", bound))
        return 0;
    b = calloc(1, sizeof *b);
    if (!b)
        return -ENOMEM;
    while (delivered < max && ret == 0) {
        size_t want =
            max - delivered < SCAN_CHUNK ? max - delivered : SCAN_CHUNK;

        err = fetch_range(l, f, bound, key_infinity, sizeof key_infinity, want,
                          b);
        batch_report_bad(l, b);
        if (err)
            break;
        ret = batch_deliver(b, &delivered, max, cb, arg);
        batch_release(b);
        if (b->fetched < want)
            break; /* no more rows */
        if (!next_bound(b->last_key, b->last_key_len, bound))
            break;
    }
    batch_release(b);
    free(b);
    return err ? err : ret;
}

/* The 32-byte key at sample position pos (a 63-bit key prefix). */
static void pos_to_key(uint64_t pos, uint8_t out[KEY_BYTES])
{
    uint64_t v = pos << 1;
    int i;

    memset(out, 0, KEY_BYTES);
    for (i = 0; i < 8; i++)
        out[i] = (uint8_t)(v >> (56 - 8 * i));
}

/*
 * Walk the keys in [lo, hi) (positions; hi may be POS_RANGE, the end)
 * delivering matches until max. 0, a callback's value, or -errno.
 */
static int sample_segment(struct l3 *l, const struct tier_filter *f,
                          uint64_t lo, uint64_t hi, size_t max,
                          size_t *delivered, struct batch *b, tier_entry_cb cb,
                          void *arg)
{
    uint8_t cur[KEY_BYTES], end[KEY_BYTES];
    const uint8_t *hib = key_infinity;
    int hilen = (int)sizeof key_infinity, err, ret = 0;

    pos_to_key(lo, cur);
    if (hi < POS_RANGE) {
        pos_to_key(hi, end);
        hib = end;
        hilen = KEY_BYTES;
    }
    while (*delivered < max && ret == 0) {
        size_t want =
            max - *delivered < SAMPLE_CHUNK ? max - *delivered : SAMPLE_CHUNK;

        err = fetch_range(l, f, cur, hib, hilen, want, b);
        batch_report_bad(l, b);
        if (err)
            return err;
        ret = batch_deliver(b, delivered, max, cb, arg);
        batch_release(b);
        if (b->fetched < want || !next_bound(b->last_key, b->last_key_len, cur))
            break;
    }
    return ret;
}

/*
 * Sample: keys are SHA-256 digests, uniformly spread, so the key order is
 * already a random order. Walk it from a random position in windows of key
 * space expected to hold SAMPLE_WINDOW_ROWS rows each, wrapping around, at
 * most SAMPLE_MAX_WINDOWS windows: the work is bounded (~64k rows looked
 * at) however large the table and however selective the filter. A table
 * smaller than one window is covered completely, so small tiers return
 * every match up to max. Windows are disjoint, so entries are distinct.
 */
static int l3_sample(struct tier *t, const struct tier_filter *f, size_t max,
                     uint64_t seed, tier_entry_cb cb, void *arg)
{
    struct l3 *l = l3_of(t);
    uint64_t state = seed, start, width, covered = 0;
    size_t nrows = atomic_load(&l->size), delivered = 0, windows = 0;
    struct batch *b;
    int ret = 0;

    if (!f || !cb)
        return -EINVAL;
    if (max == 0)
        return 0;
    b = calloc(1, sizeof *b);
    if (!b)
        return -ENOMEM;
    start = splitmix64(&state) & POS_MASK;
    if (nrows <= SAMPLE_WINDOW_ROWS)
        width = POS_RANGE;
    else
        width = POS_RANGE / (nrows / SAMPLE_WINDOW_ROWS + 1);
    while (covered < POS_RANGE && windows < SAMPLE_MAX_WINDOWS &&
           delivered < max && ret == 0) {
        uint64_t len =
            POS_RANGE - covered < width ? POS_RANGE - covered : width;
        uint64_t lo = (start + covered) & POS_MASK;

        windows++;
        covered += len;
        if (lo + len <= POS_RANGE) {
            ret =
                sample_segment(l, f, lo, lo + len, max, &delivered, b, cb, arg);
        } else { /* wraps: [lo, end) then [0, rest) */
            ret = sample_segment(l, f, lo, POS_RANGE, max, &delivered, b, cb,
                                 arg);
            if (ret == 0)
                ret = sample_segment(l, f, 0, lo + len - POS_RANGE, max,
                                     &delivered, b, cb, arg);
        }
    }
    batch_release(b);
    free(b);
    return ret;
}

static int l3_sweep(struct tier *t, int64_t now_ms, size_t max, size_t *removed)
{
    struct l3 *l = l3_of(t);
    struct op op;
    int err;

    memset(&op, 0, sizeof op);
    op.kind = OP_SWEEP;
    op.now_ms = now_ms;
    op.max = max;
    if (max == 0) {
        if (removed)
            *removed = 0;
        return 0;
    }
    err = submit_wait(l, &op);
    if (!err && removed)
        *removed = op.count;
    return err;
}

static int l3_clear(struct tier *t, size_t *removed)
{
    struct l3 *l = l3_of(t);
    struct op op;
    int err;

    memset(&op, 0, sizeof op);
    op.kind = OP_CLEAR;
    err = submit_wait(l, &op);
    if (!err && removed)
        *removed = op.count;
    return err;
}

static size_t l3_size(struct tier *t)
{
    return atomic_load(&l3_of(t)->size);
}

static uint64_t l3_corrupt_count(struct tier *t)
{
    return atomic_load(&l3_of(t)->corrupt);
}

static int l3_probe(struct tier *t)
{
    struct op op;

    memset(&op, 0, sizeof op);
    op.kind = OP_PROBE;
    return submit_wait(l3_of(t), &op);
}

/* Kick the checkpointer; report how the last checkpoint went. */
static int l3_maintain(struct tier *t)
{
    struct l3 *l = l3_of(t);

    ckpt_kick(l);
    return atomic_load(&l->ckpt_err);
}

/* ------------------------------------------------------------------ */
/* Open and close                                                       */

static void finalize(sqlite3_stmt **st)
{
    sqlite3_finalize(*st);
    *st = NULL;
}

static void reader_fini(struct reader *r)
{
    size_t i;

    finalize(&r->get);
    for (i = 0; i < N_SHAPES; i++)
        finalize(&r->sel[i]);
    if (r->db && sqlite3_close(r->db) != SQLITE_OK)
        log_error("closing a read connection: %s", sqlite3_errmsg(r->db));
    r->db = NULL;
}

static void writer_fini(struct l3 *l)
{
    sqlite3_stmt **all[] = {
        &l->w_begin,        &l->w_commit,      &l->w_rollback, &l->w_insert,
        &l->w_update_touch, &l->w_update_keep, &l->w_del,      &l->w_touch,
        &l->w_clear,        &l->w_sweep,       &l->w_evict,    &l->w_probe,
        &l->w_select_key,
    };
    size_t i;

    for (i = 0; i < SVC_ARRAY_LEN(all); i++)
        finalize(all[i]);
    if (l->wdb && sqlite3_close(l->wdb) != SQLITE_OK)
        log_error("closing the write connection: %s", sqlite3_errmsg(l->wdb));
    l->wdb = NULL;
}

static void l3_close(struct tier *t)
{
    struct l3 *l = l3_of(t);
    size_t i;

    if (l->ckpt_started) {
        pthread_mutex_lock(&l->ckpt_lock);
        l->ckpt_stop = true;
        pthread_cond_signal(&l->ckpt_cond);
        pthread_mutex_unlock(&l->ckpt_lock);
        pthread_join(l->ckpt, NULL);
    }
    if (l->cdb && sqlite3_close(l->cdb) != SQLITE_OK)
        log_error("closing the checkpoint connection: %s",
                  sqlite3_errmsg(l->cdb));
    if (l->writer_started) {
        pthread_mutex_lock(&l->qlock);
        l->stopping = true; /* the writer drains the queue, then exits */
        pthread_cond_signal(&l->qcond);
        pthread_cond_broadcast(&l->roomcond);
        pthread_mutex_unlock(&l->qlock);
        pthread_join(l->writer, NULL);
    }
    for (i = 0; i < N_READERS; i++) {
        reader_fini(&l->readers[i]);
        pthread_mutex_destroy(&l->readers[i].lock);
    }
    if (l->wdb) {
        /* The last connection to close checkpoints and removes the WAL. */
        writer_fini(l);
    }
    pthread_cond_destroy(&l->ckpt_cond);
    pthread_mutex_destroy(&l->ckpt_lock);
    pthread_cond_destroy(&l->roomcond);
    pthread_cond_destroy(&l->qcond);
    pthread_mutex_destroy(&l->qlock);
    free(l);
}

static const struct tier_ops l3_ops = {
    .name = "l3",
    .get = l3_get,
    .put = l3_put,
    .put_batch = l3_put_batch,
    .del = l3_del,
    .scan = l3_scan,
    .sample = l3_sample,
    .sweep = l3_sweep,
    .clear = l3_clear,
    .size = l3_size,
    .corrupt_count = l3_corrupt_count,
    .probe = l3_probe,
    .maintain = l3_maintain,
    .close = l3_close,
};

/* Run one statement on db that may return a row; *val gets column 0 as
 * int64 when out is non-NULL. SQLite rc (SQLITE_OK on success). */
static int exec_int(sqlite3 *db, const char *sql, int64_t *val)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);

    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW && val)
            *val = sqlite3_column_int64(st, 0);
        rc = (rc == SQLITE_ROW || rc == SQLITE_DONE) ? SQLITE_OK : rc;
    }
    if (rc != SQLITE_OK)
        log_debug("%s: %s", sql, sqlite3_errmsg(db));
    sqlite3_finalize(st);
    return rc;
}

static int exec_sql(sqlite3 *db, const char *sql)
{
    int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);

    if (rc != SQLITE_OK)
        log_debug("%.60s...: %s", sql, sqlite3_errmsg(db));
    return rc;
}

/* Connection settings shared by the writer and the readers. */
static int configure_conn(sqlite3 *db, int cache_kib)
{
    char sql[128];
    int rc;

    sqlite3_extended_result_codes(db, 1);
    rc = sqlite3_busy_timeout(db, 5000);
    if (rc != SQLITE_OK)
        return rc;
    snprintf(sql, sizeof sql,
             "PRAGMA cache_size=-%d; PRAGMA temp_store=MEMORY;"
             " PRAGMA foreign_keys=OFF;",
             cache_kib);
    return exec_sql(db, sql);
}

static int open_conn(const char *path, sqlite3 **out)
{
    sqlite3 *db = NULL;
    int rc = sqlite3_open_v2(
        path, &db,
        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);

    if (rc != SQLITE_OK) {
        log_debug("open %s: %s", path,
                  db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close(db);
        return rc;
    }
    *out = db;
    return SQLITE_OK;
}

/*
 * Journal mode, schema creation/migration. The first statements read the
 * file header and the schema: NOTADB/CORRUPT here means "not a database".
 */
static int setup_schema(struct l3 *l)
{
    sqlite3_stmt *st = NULL;
    int64_t version = 0;
    char sql[160];
    int rc;

    rc = configure_conn(l->wdb, 65536);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_prepare_v2(l->wdb, "PRAGMA journal_mode=WAL", -1, &st, NULL);
    if (rc == SQLITE_OK) {
        rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            const char *mode = (const char *)sqlite3_column_text(st, 0);

            rc = mode && strcmp(mode, "wal") == 0 ? SQLITE_OK : SQLITE_ERROR;
            if (rc != SQLITE_OK)
                log_error("%s: cannot switch to WAL mode (mode %s)", l->path,
                          mode ? mode : "?");
        }
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_OK)
        return rc;
    /* See the durability note at the top of the file. */
    snprintf(sql, sizeof sql,
             "PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=0;"
             " PRAGMA journal_size_limit=%d",
             WAL_KEEP_BYTES);
    rc = exec_sql(l->wdb, sql);
    if (rc == SQLITE_OK)
        rc = exec_int(l->wdb, "PRAGMA user_version", &version);
    if (rc != SQLITE_OK)
        return rc;
    if (version > SCHEMA_VERSION) {
        log_error("%s: schema version %" PRId64 " is newer than this "
                  "program's (%d); refusing to touch it",
                  l->path, version, SCHEMA_VERSION);
        return SQLITE_MISMATCH;
    }
    if (version < SCHEMA_VERSION) {
        /* v0 -> v1: create everything (no earlier version existed). */
        rc = exec_sql(l->wdb, "BEGIN IMMEDIATE");
        if (rc == SQLITE_OK)
            rc = exec_sql(l->wdb, schema_v1);
        if (rc == SQLITE_OK)
            rc = exec_sql(l->wdb, "PRAGMA user_version=1; COMMIT");
        if (rc != SQLITE_OK) {
            exec_sql(l->wdb, "ROLLBACK");
            return rc;
        }
        if (version == 0)
            log_info("%s: created schema v%d", l->path, SCHEMA_VERSION);
    }
    return SQLITE_OK;
}

static int prepare_writer(struct l3 *l)
{
    static const char ins[] =
        "INSERT INTO entries (key, proxy_url, username_tok, password_tok,"
        " source, protocol, fetch_time, ttl_seconds, expires_at, health,"
        " failure_count, country, anonymity, latency_ms, last_accessed,"
        " access_count, touched) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7,"
        " ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
        " ON CONFLICT(key) DO NOTHING";
#define UPD_SET                                                                \
    "UPDATE entries SET proxy_url=?2, username_tok=?3, password_tok=?4,"       \
    " source=?5, protocol=?6, fetch_time=?7, ttl_seconds=?8, expires_at=?9,"   \
    " health=?10, failure_count=?11, country=?12, anonymity=?13,"              \
    " latency_ms=?14, last_accessed=?15, access_count=?16"
    const struct {
        sqlite3_stmt **st;
        const char *sql;
    } stmts[] = {
        {&l->w_begin, "BEGIN IMMEDIATE"},
        {&l->w_commit, "COMMIT"},
        {&l->w_rollback, "ROLLBACK"},
        {&l->w_insert, ins},
        {&l->w_update_touch, UPD_SET ", touched=?17 WHERE key=?1"},
        {&l->w_update_keep, UPD_SET " WHERE key=?1"},
        {&l->w_del, "DELETE FROM entries WHERE key=?1"},
        {&l->w_touch, "UPDATE entries SET touched=?2 WHERE key=?1"},
        {&l->w_clear, "DELETE FROM entries"},
        {&l->w_sweep, "DELETE FROM entries WHERE key IN (SELECT key FROM"
                      " entries WHERE expires_at <= ?1 LIMIT ?2)"},
        {&l->w_evict, "DELETE FROM entries WHERE key IN (SELECT key FROM"
                      " entries ORDER BY touched LIMIT ?1)"},
        {&l->w_probe, "INSERT INTO meta (k, v) VALUES ('probe', ?1)"
                      " ON CONFLICT(k) DO UPDATE SET v=excluded.v"},
        {&l->w_select_key, "SELECT " COLS " FROM entries WHERE key=?1"},
    };
#undef UPD_SET
    size_t i;
    int rc;

    for (i = 0; i < SVC_ARRAY_LEN(stmts); i++) {
        rc = sqlite3_prepare_v3(l->wdb, stmts[i].sql, -1,
                                SQLITE_PREPARE_PERSISTENT, stmts[i].st, NULL);
        if (rc != SQLITE_OK) {
            log_debug("prepare %s: %s", stmts[i].sql, sqlite3_errmsg(l->wdb));
            return rc;
        }
    }
    return SQLITE_OK;
}

static int open_reader(struct l3 *l, struct reader *r)
{
    int rc = open_conn(l->path, &r->db);

    if (rc != SQLITE_OK)
        return rc;
    /* Readers fetch few pages per lookup; the writer keeps the big cache.
     * query_only makes an accidental write through a reader an error. */
    rc = configure_conn(r->db, 16384);
    if (rc == SQLITE_OK)
        rc = exec_sql(r->db, "PRAGMA query_only=1");
    if (rc == SQLITE_OK) {
        rc = sqlite3_prepare_v3(r->db,
                                "SELECT " COLS " FROM entries WHERE key=?1", -1,
                                SQLITE_PREPARE_PERSISTENT, &r->get, NULL);
        if (rc != SQLITE_OK)
            log_debug("prepare get: %s", sqlite3_errmsg(r->db));
    }
    return rc;
}

/* An unused "path.corrupt-<unix-seconds>[.k]" in base. 0 or -EEXIST. */
static int aside_name(const char *path, char *base, size_t cap)
{
    struct timespec ts;
    struct stat st;
    int k;

    clock_gettime(CLOCK_REALTIME, &ts);
    for (k = 0; k < 100; k++) {
        if (k == 0)
            snprintf(base, cap, "%s.corrupt-%lld", path, (long long)ts.tv_sec);
        else
            snprintf(base, cap, "%s.corrupt-%lld.%d", path,
                     (long long)ts.tv_sec, k);
        if (lstat(base, &st) != 0 && errno == ENOENT)
            return 0;
    }
    return -EEXIST;
}

/*
 * Keep the -wal of an unusable database: SQLite unlinks it when the last
 * connection closes, so hard-link it to its new name first (the link
 * keeps the bytes). Best effort: it is kept for forensics only.
 */
static void keep_wal(const char *path, const char *base)
{
    char src[PATH_CAP + 8], dst[PATH_CAP + 64];

    struct stat st;

    snprintf(src, sizeof src, "%s-wal", path);
    snprintf(dst, sizeof dst, "%s-wal", base);
    if (lstat(src, &st) != 0 || st.st_size == 0)
        return; /* none, or the empty one SQLite just created */
    if (link(src, dst) != 0)
        log_warn_errno(errno, "cannot keep %s", src);
}

/* Move path and its -wal/-shm aside to base (see aside_name). 0/-errno. */
static int move_aside(const char *path, const char *base)
{
    static const char *const suffix[] = {"", "-wal", "-shm"};
    char dst[PATH_CAP + 64], src[PATH_CAP + 8];
    struct stat st;
    size_t i;

    for (i = 0; i < SVC_ARRAY_LEN(suffix); i++) {
        snprintf(src, sizeof src, "%s%s", path, suffix[i]);
        snprintf(dst, sizeof dst, "%s%s", base, suffix[i]);
        if (lstat(dst, &st) == 0) {
            /* Already kept by keep_wal(): drop the old name. */
            if (unlink(src) != 0 && errno != ENOENT)
                goto fail;
            continue;
        }
        if (rename(src, dst) != 0 && errno != ENOENT)
            goto fail;
    }
    log_error("%s is not a usable SQLite database: moved aside to %s; "
              "starting with an empty L3",
              path, base);
    return 0;
fail:
    i = (size_t)errno;
    log_error_errno((int)i, "cannot move %s aside to %s", src, dst);
    return -(int)i;
}

/*
 * The touched index serves capacity eviction only; without a capacity it
 * would just slow every write. Created or dropped when the configuration
 * changes (a one-off cost on that start, logged).
 */
static int setup_touched_index(struct l3 *l)
{
    int64_t have = 0;
    int rc = exec_int(l->wdb,
                      "SELECT count(*) FROM sqlite_schema WHERE type='index'"
                      " AND name='entries_touched'",
                      &have);

    if (rc != SQLITE_OK || (have != 0) == (l->capacity > 0))
        return rc;
    if (l->capacity > 0) {
        log_info("%s: building the recency index for --l3-capacity", l->path);
        return exec_sql(l->wdb, "CREATE INDEX IF NOT EXISTS entries_touched"
                                " ON entries(touched)");
    }
    log_info("%s: dropping the recency index (L3 is unbounded)", l->path);
    return exec_sql(l->wdb, "DROP INDEX IF EXISTS entries_touched");
}

/* Writer connection, schema, statements, counters. SQLite rc. */
static int open_writer(struct l3 *l)
{
    int64_t count = 0, clk = 0;
    int rc;

    rc = open_conn(l->path, &l->wdb);
    if (rc == SQLITE_OK)
        rc = setup_schema(l);
    if (rc == SQLITE_OK)
        rc = setup_touched_index(l);
    if (rc == SQLITE_OK)
        rc = prepare_writer(l);
    /* count(*) walks the smallest index (the expires_at one); the clock
     * floor is one probe of the touched index, which exists only with a
     * capacity (without one next_touch's wall clock is the floor). No row
     * is read. */
    if (rc == SQLITE_OK) {
        rc = exec_int(l->wdb, "SELECT count(*) FROM entries", &count);
        if (is_notadb(rc)) {
            /* A damaged index can be rebuilt from the table; only if the
             * table itself is unreadable is the file moved aside. */
            log_error("%s: index damaged (%s); rebuilding it", l->path,
                      sqlite3_errstr(rc));
            rc = exec_sql(l->wdb, "REINDEX entries");
            if (rc == SQLITE_OK)
                rc = exec_int(l->wdb, "SELECT count(*) FROM entries", &count);
        }
    }
    if (rc == SQLITE_OK && l->capacity > 0)
        rc = exec_int(l->wdb, "SELECT coalesce(max(touched), 0) FROM entries",
                      &clk);
    l->nrows = count;
    l->wclock = clk;
    atomic_store(&l->size, (size_t)count);
    if (rc == SQLITE_OK) /* checkpoints are the checkpointer's job */
        sqlite3_wal_hook(l->wdb, wal_hook, l);
    return rc;
}

static int init_sync(struct l3 *l)
{
    size_t i;

    if (pthread_mutex_init(&l->qlock, NULL) ||
        pthread_cond_init(&l->qcond, NULL) ||
        pthread_cond_init(&l->roomcond, NULL) ||
        pthread_mutex_init(&l->ckpt_lock, NULL) ||
        pthread_cond_init(&l->ckpt_cond, NULL))
        return -ENOMEM;
    for (i = 0; i < N_READERS; i++) {
        if (pthread_mutex_init(&l->readers[i].lock, NULL))
            return -ENOMEM;
    }
    return 0;
}

int l3_sqlite_open(const char *data_dir, size_t capacity, struct tier **out)
{
    struct l3 *l;
    size_t i;
    int rc, err, len;

    if (!data_dir || !out)
        return -EINVAL;
    if (!sqlite3_threadsafe()) {
        log_error("SQLite was built without thread support");
        return -EINVAL;
    }
    l = calloc(1, sizeof *l);
    if (!l)
        return -ENOMEM;
    l->base.ops = &l3_ops;
    l->capacity = capacity;
    len = snprintf(l->path, sizeof l->path, "%s/cache.db", data_dir);
    if (len < 0 || (size_t)len >= sizeof l->path) {
        free(l);
        return -ENAMETOOLONG;
    }
    err = init_sync(l);
    if (err) {
        free(l);
        return err;
    }
    rc = open_writer(l);
    if (rc != SQLITE_OK && is_notadb(rc)) {
        char base[PATH_CAP + 48];

        err = aside_name(l->path, base, sizeof base);
        if (err)
            goto fail;
        keep_wal(l->path, base);
        writer_fini(l);
        err = move_aside(l->path, base);
        if (err)
            goto fail;
        rc = open_writer(l);
    }
    if (rc != SQLITE_OK) {
        err = sqlite_errno(rc);
        /* SQLITE_MISMATCH: a newer schema, already explained. */
        if (rc != SQLITE_MISMATCH)
            log_error("%s: cannot open the database (%s)", l->path,
                      sqlite3_errstr(rc));
        goto fail;
    }
    for (i = 0; i < N_READERS; i++) {
        rc = open_reader(l, &l->readers[i]);
        if (rc != SQLITE_OK) {
            err = sqlite_errno(rc);
            log_error("%s: cannot open a read connection (%s)", l->path,
                      sqlite3_errstr(rc));
            goto fail;
        }
    }
    rc = open_conn(l->path, &l->cdb);
    if (rc == SQLITE_OK)
        rc = configure_conn(l->cdb, 2048);
    if (rc != SQLITE_OK) {
        err = sqlite_errno(rc);
        log_error("%s: cannot open the checkpoint connection (%s)", l->path,
                  sqlite3_errstr(rc));
        goto fail;
    }
    err = -pthread_create(&l->ckpt, NULL, ckpt_main, l);
    if (err) {
        log_error_errno(-err, "cannot start the L3 checkpoint thread");
        goto fail;
    }
    l->ckpt_started = true;
    err = -pthread_create(&l->writer, NULL, writer_main, l);
    if (err) {
        log_error_errno(-err, "cannot start the L3 writer thread");
        goto fail;
    }
    l->writer_started = true;
    log_info("%s: open, %zu entries%s", l->path, atomic_load(&l->size),
             capacity ? "" : ", unbounded");
    *out = &l->base;
    return 0;
fail:
    l3_close(&l->base);
    return err;
}
