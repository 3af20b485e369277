/* SPDX-License-Identifier: MIT */
/*
 * proxycached: the composition root.
 *
 * Start-up: parse the configuration (exit 2 when invalid), set up logging,
 * seed jansson and check that SQLite is thread-safe (before any thread
 * starts), block SIGTERM/SIGINT so that every thread inherits the mask and
 * only main's sigwait() sees them, create and lock the data directory (a
 * second instance exits 1), load openapi.yaml, open the cache, build the
 * api context and the metrics registry, start HTTP (not ready yet: /readyz
 * answers 503), load the --warm files with the cache's warming flag set,
 * start the sweeper, and only then declare the service ready.
 *
 * Shutdown order (on SIGTERM or SIGINT), each step relying on the previous:
 *   1. ready = false: /readyz turns 503 while we drain.
 *   2. http_stop(): stop accepting, let in-flight requests finish (bounded),
 *      stop MHD and join its threads. No handler runs after this.
 *   3. sweeper_stop(): wake and join the sweeper. No cache call after this.
 *   4. cache_close(): drain the L3 group-commit writer (acknowledged writes
 *      are already durable; queued replays are flushed), close the tiers.
 *   5. metrics, openapi text, then config_fini(): the key ring is freed
 *      only now because the cache borrowed it; the token is wiped.
 *   6. close the lock file (releases the flock), log "stopped", exit 0.
 *
 * Thread-safety: main() is the only thread until http_start(); afterwards
 * it only waits for signals and shuts down.
 */
#include <config.h> /* autoconf's (see service/config.h on the name) */

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>

#include <openssl/crypto.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <jansson.h>
#include <sqlite3.h>

#define LOG_MODULE "main"
#include "api/api.h"
#include "api/json_io.h"
#include "api/metrics.h"
#include "common/clock.h"
#include "common/log.h"
#include "common/svc.h"
#include "service/config.h"
#include "service/http.h"
#include "service/router.h"
#include "storage/cache.h"
#include "storage/crypto.h"
#include "storage/sweeper.h"

#define EXIT_CONFIG  2
#define EXIT_RUNTIME 1
#define OPENAPI_MAX  (4u * 1024 * 1024)
#define LOCK_NAME    "LOCK"

/* mkdir -p path with mode for the directories it creates. 0 or -errno. */
static int mkdir_p(const char *path, mode_t mode)
{
    char buf[CONFIG_PATH_MAX + 1];
    size_t len = strlen(path);
    struct stat st;

    if (len == 0 || len > CONFIG_PATH_MAX)
        return -ENAMETOOLONG;
    memcpy(buf, path, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        if (buf[i - 1] == '/')
            continue;
        char saved = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, mode) != 0 && errno != EEXIST)
            return -errno;
        buf[i] = saved;
    }
    if (stat(path, &st) != 0)
        return -errno;
    return S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
}

/* Lock DIR/LOCK (exclusive, non-blocking). Returns the fd, -EWOULDBLOCK
 * when another instance holds it, or -errno. */
static int lock_data_dir(const char *dir)
{
    char path[CONFIG_PATH_MAX + 16];
    char pid[32];
    int fd, n;

    snprintf(path, sizeof path, "%s/%s", dir, LOCK_NAME);
    fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0)
        return -errno;
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        close(fd);
        return e == EWOULDBLOCK ? -EWOULDBLOCK : -e;
    }
    /* The pid is informative only; the flock is the lock. */
    n = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) == 0 && write(fd, pid, (size_t)n) != n)
        log_debug("could not write the pid into %s", path);
    return fd;
}

/* Read a whole file of at most cap bytes into a new NUL-terminated buffer. */
static int read_file(const char *path, size_t cap, char **out, size_t *len)
{
    FILE *f = fopen(path, "rbe");
    char *buf = NULL;
    size_t n = 0, got;
    int err = 0;

    if (!f)
        return -errno;
    buf = malloc(cap + 1);
    if (!buf) {
        err = -ENOMEM;
        goto out;
    }
    while ((got = fread(buf + n, 1, cap + 1 - n, f)) > 0) {
        n += got;
        if (n > cap) {
            err = -EFBIG;
            goto out;
        }
    }
    if (ferror(f)) {
        err = -EIO;
        goto out;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    buf = NULL;
out:
    free(buf);
    fclose(f);
    return err;
}

/*
 * The contract served at /openapi.yaml: PROXYCACHE_OPENAPI if set (it must
 * be readable), else the installed copy, else the source tree's. Missing:
 * a WARNING and the route answers without it. Returns 0, or -errno for an
 * unreadable PROXYCACHE_OPENAPI.
 */
static int load_openapi(char **text, size_t *len)
{
    const char *env = getenv("PROXYCACHE_OPENAPI");
    const char *candidates[] = {
#ifdef PROXYCACHE_DOCDIR
        PROXYCACHE_DOCDIR "/openapi.yaml",
#endif
#ifdef PROXYCACHE_SRCDIR
        PROXYCACHE_SRCDIR "/openapi.yaml",
#endif
        NULL,
    };
    int err;

    *text = NULL;
    *len = 0;
    if (env && env[0] != '\0') {
        err = read_file(env, OPENAPI_MAX, text, len);
        if (err) {
            char eb[128];
            fprintf(stderr,
                    "proxycached: invalid PROXYCACHE_OPENAPI: cannot "
                    "read it: %s\n",
                    err == -EFBIG ? "larger than 4 MiB"
                                  : strerror_r(-err, eb, sizeof eb));
            return err;
        }
        log_debug("serving the OpenAPI contract from %s", env);
        return 0;
    }
    for (size_t i = 0; candidates[i]; i++) {
        if (read_file(candidates[i], OPENAPI_MAX, text, len) == 0) {
            log_debug("serving the OpenAPI contract from %s", candidates[i]);
            return 0;
        }
    }
    log_warn("openapi.yaml not found (set PROXYCACHE_OPENAPI): GET "
             "/openapi.yaml will not serve the contract");
    return 0;
}

static void log_security_posture(const struct config *cfg)
{
    switch (cfg->key_source) {
    case CONFIG_KEY_NONE:
        log_warn("no PROXYCACHE_ENCRYPTION_KEY: credentials will not be "
                 "persisted (entries are stored without them; "
                 "--ephemeral-key seals them with a throwaway key)");
        break;
    case CONFIG_KEY_EPHEMERAL:
        log_warn("--ephemeral-key: credentials are sealed with a random key "
                 "and will not survive a restart");
        break;
    case CONFIG_KEY_ENV_LEGACY:
        log_info("encryption key from PROXYWHIRL_CACHE_ENCRYPTION_KEY "
                 "(fallback; prefer PROXYCACHE_ENCRYPTION_KEY)");
        break;
    case CONFIG_KEY_ENV:
        break;
    }
    if (cfg->ephemeral_key && cfg->key_source != CONFIG_KEY_EPHEMERAL)
        log_info("--ephemeral-key ignored: an encryption key is configured");
    if (cfg->key_source != CONFIG_KEY_NONE)
        log_info("credential key ring: %zu key(s)",
                 crypto_keyring_count(cfg->ring));
    if (!cfg->api_token && !cfg->listen_loopback)
        log_warn("listening on a non-loopback address without "
                 "PROXYCACHE_API_TOKEN (--insecure-listen-any): anyone who "
                 "can reach it can read and change the cache");
    if (cfg->api_token && strlen(cfg->api_token) < 16)
        log_warn("PROXYCACHE_API_TOKEN is shorter than 16 characters");
}

static void check_fd_limit(const struct config *cfg)
{
    struct rlimit rl;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
        return;
    if ((rlim_t)cfg->max_connections + 64 > rl.rlim_cur)
        log_warn("--max-connections %u is close to or above the open-file "
                 "limit %llu: raise ulimit -n",
                 cfg->max_connections, (unsigned long long)rl.rlim_cur);
}

/* Is a shutdown signal pending (checked between warm files)? */
static bool stop_pending(const sigset_t *stopset)
{
    static const int sigs[] = {SIGTERM, SIGINT};
    sigset_t pending;

    if (sigpending(&pending) != 0)
        return false;
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) {
        if (sigismember(stopset, sigs[i]) == 1 &&
            sigismember(&pending, sigs[i]) == 1)
            return true;
    }
    return false;
}

static void warm_files(const struct config *cfg, struct api_ctx *ctx,
                       const sigset_t *stopset)
{
    if (cfg->n_warm_files == 0)
        return;
    cache_set_warming(ctx->cache, true);
    for (size_t i = 0; i < cfg->n_warm_files; i++) {
        struct api_warm_counts counts = {0};
        uint64_t t0 = clock_mono_ns();
        if (stop_pending(stopset)) {
            log_warn("shutdown requested: skipping the remaining --warm "
                     "files");
            break;
        }
        if (api_warm_file(ctx, cfg->warm_files[i], &counts) != 0)
            continue; /* api_warm_file logged why */
        log_info("warmed %s: %llu imported, %llu updated, %llu skipped, "
                 "%llu errors in %.1f ms",
                 cfg->warm_files[i], (unsigned long long)counts.imported,
                 (unsigned long long)counts.updated,
                 (unsigned long long)counts.skipped,
                 (unsigned long long)counts.errors,
                 (double)(clock_mono_ns() - t0) / 1e6);
    }
    cache_set_warming(ctx->cache, false);
}

/*
 * The configuration holds its own copies of the API token and the
 * encryption keys: wipe the environment's, so that they are not readable in
 * /proc/<pid>/environ nor inherited by anything this process starts.
 */
static void scrub_secret_env(void)
{
    static const char *const names[] = {
        "PROXYCACHE_API_TOKEN",
        "PROXYCACHE_ENCRYPTION_KEY",
        "PROXYWHIRL_CACHE_ENCRYPTION_KEY",
    };

    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char *v = getenv(names[i]);
        if (v) {
            OPENSSL_cleanse(v, strlen(v));
            unsetenv(names[i]);
        }
    }
}

int main(int argc, char **argv)
{
    struct config cfg;
    bool have_cfg = false;
    char errbuf[512];
    sigset_t stopset;
    struct sigaction ign;
    int lock_fd = -1;
    char *openapi = NULL;
    size_t openapi_len = 0;
    struct cache *cache = NULL;
    struct metrics *metrics = NULL;
    struct http *http = NULL;
    struct sweeper *sweeper = NULL;
    struct api_ctx ctx;
    struct cache_config cc;
    int status = EXIT_RUNTIME;
    int err, sig = 0;

    memset(&ctx, 0, sizeof ctx);
    err = config_load(argc, argv, getenv, &cfg, errbuf, sizeof errbuf);
    if (err == CONFIG_SHOW_HELP) {
        config_usage(stdout);
        return 0;
    }
    if (err == CONFIG_SHOW_VERSION) {
        printf("%s\n", config_version_line());
        return 0;
    }
    if (err != 0) {
        fprintf(stderr, "%s\n", errbuf);
        return EXIT_CONFIG;
    }
    have_cfg = true;
    scrub_secret_env();
    log_set_level(cfg.log_level);
    log_set_format(cfg.log_format);

    /* Before any thread exists. */
    json_io_install_allocator();
    json_object_seed(0);
    if (!sqlite3_threadsafe()) {
        log_error("SQLite was built without thread safety "
                  "(SQLITE_THREADSAFE=0): cannot run");
        goto out;
    }
    SVC_ASSERT(router_self_check());
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigaction(SIGPIPE, &ign, NULL);
    sigemptyset(&stopset);
    sigaddset(&stopset, SIGTERM);
    sigaddset(&stopset, SIGINT);
    err = pthread_sigmask(SIG_BLOCK, &stopset, NULL);
    if (err) {
        log_error_errno(err, "cannot block SIGTERM/SIGINT");
        goto out;
    }

    log_info("proxycached %s starting: data dir %s, threading %s, "
             "L1 %zu, L2 %zu, L3 %zu (0 = unlimited), default ttl %lld s",
             config_version(), cfg.data_dir,
             config_threading_name(cfg.threading), cfg.l1_capacity,
             cfg.l2_capacity, cfg.l3_capacity, (long long)cfg.default_ttl);
    log_security_posture(&cfg);
    check_fd_limit(&cfg);

    err = mkdir_p(cfg.data_dir, 0700);
    if (err) {
        log_error_errno(-err, "cannot create the data directory %s",
                        cfg.data_dir);
        goto out;
    }
    lock_fd = lock_data_dir(cfg.data_dir);
    if (lock_fd == -EWOULDBLOCK) {
        fprintf(stderr,
                "proxycached: data directory %s is in use by "
                "another instance\n",
                cfg.data_dir);
        lock_fd = -1;
        goto out;
    }
    if (lock_fd < 0) {
        log_error_errno(-lock_fd, "cannot lock %s/%s", cfg.data_dir, LOCK_NAME);
        lock_fd = -1;
        goto out;
    }

    if (load_openapi(&openapi, &openapi_len) != 0) {
        status = EXIT_CONFIG;
        goto out;
    }

    memset(&cc, 0, sizeof cc);
    cc.data_dir = cfg.data_dir;
    cc.l1_capacity = cfg.l1_capacity;
    cc.l2_capacity = cfg.l2_capacity;
    cc.l3_capacity = cfg.l3_capacity;
    cc.failure_threshold = cfg.failure_threshold;
    cc.default_ttl = cfg.default_ttl;
    cc.source_ttls = cfg.source_ttls;
    cc.n_source_ttls = cfg.n_source_ttls;
    cc.ring = cfg.ring;
    err = cache_open(&cc, &cache);
    if (err) {
        log_error_errno(-err, "cannot open the cache in %s", cfg.data_dir);
        goto out;
    }

    err = metrics_new(router_count(), router_names(), &metrics);
    if (err) {
        log_error_errno(-err, "cannot create the metrics registry");
        goto out;
    }
    ctx.cache = cache;
    ctx.ring = cfg.ring;
    ctx.token_configured = cfg.api_token != NULL;
    ctx.metrics = metrics;
    ctx.max_body_bytes = cfg.max_body_bytes;
    ctx.max_import_bytes = cfg.max_import_bytes;
    ctx.openapi_yaml = openapi;
    ctx.openapi_len = openapi_len;
    ctx.version = config_version();
    ctx.start_time_ms = clock_now_ms();
    atomic_init(&ctx.ready, false);
    atomic_init(&ctx.warned_no_key, false);

    err = http_start(&cfg, &ctx, &http);
    if (err)
        goto out; /* http_start logged why */

    warm_files(&cfg, &ctx, &stopset);

    err = sweeper_start(cache, cfg.sweep_interval * 1000, &sweeper);
    if (err) {
        log_error_errno(-err, "cannot start the sweeper");
        goto out;
    }
    atomic_store(&ctx.ready, true);
    log_info("ready");

    for (;;) {
        err = sigwait(&stopset, &sig);
        if (err == 0)
            break;
        if (err != EINTR) {
            log_error_errno(err, "sigwait failed: shutting down");
            break;
        }
    }
    log_info("received %s: shutting down", sig == SIGTERM  ? "SIGTERM"
                                           : sig == SIGINT ? "SIGINT"
                                                           : "a signal");
    status = 0;

out:
    /* The shutdown order of the header comment. */
    atomic_store(&ctx.ready, false);
    http_stop(http);
    sweeper_stop(sweeper);
    cache_close(cache);
    metrics_free(metrics);
    free(openapi);
    if (have_cfg)
        config_fini(&cfg);
    if (lock_fd >= 0)
        close(lock_fd);
    if (status == 0)
        log_info("stopped");
    return status;
}
