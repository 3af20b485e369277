/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of service/config: defaults, every flag, strict validation
 * with the exact one-line messages, flags over environment, repeatable
 * options, the loopback rule, secrets from the environment only (never
 * echoed), the key ring, --help and --version.
 *
 * The environment is a fake (fake_getenv over a small table) so tests do
 * not depend on the real one; a checked fixture empties it before each
 * test, so the tests also pass under CK_FORK=no.
 */
#include "config.h"

#include <check.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "service/config.h"
#include "storage/crypto.h"
#include "tests/unit/testutil.h"

/* A valid Fernet key (URL-safe base64 of 32 bytes). */
#define KEY1 "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4="
#define KEY2 "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="

/* ---- fake environment ---- */

#define ENV_MAX 16
static struct {
    const char *name;
    const char *value;
} fake_env[ENV_MAX];
static size_t n_fake_env;

static void env_set(const char *name, const char *value)
{
    for (size_t i = 0; i < n_fake_env; i++) {
        if (strcmp(fake_env[i].name, name) == 0) {
            fake_env[i].value = value;
            return;
        }
    }
    ck_assert_uint_lt(n_fake_env, ENV_MAX);
    fake_env[n_fake_env].name = name;
    fake_env[n_fake_env].value = value;
    n_fake_env++;
}

/* Checked fixture: every test starts with an empty environment (also
 * under CK_FORK=no, where the tests share one process). */
static void env_reset(void)
{
    memset(fake_env, 0, sizeof fake_env);
    n_fake_env = 0;
}

static char *fake_getenv(const char *name)
{
    for (size_t i = 0; i < n_fake_env; i++) {
        if (strcmp(fake_env[i].name, name) == 0)
            return (char *)fake_env[i].value;
    }
    return NULL;
}

/* ---- helpers ---- */

static char errbuf[512];

/* load(&c, "--flag", "value", ..., NULL): argv[0] is added. */
static int load(struct config *c, ...)
{
    char *argv[64];
    int argc = 0;
    va_list ap;
    const char *a;

    argv[argc++] = (char *)"proxycached";
    va_start(ap, c);
    while ((a = va_arg(ap, const char *)) != NULL && argc < 63)
        argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;
    memset(c, 0x5a, sizeof *c); /* garbage: load must not rely on it */
    errbuf[0] = '\0';
    return config_load(argc, argv, fake_getenv, c, errbuf, sizeof errbuf);
}

/* Expect an invalid configuration with exactly this message. */
#define ck_invalid(msg, ...)                                                   \
    do {                                                                       \
        struct config c_;                                                      \
        int rc_ = load(&c_, __VA_ARGS__, NULL);                                \
        ck_assert_int_eq(rc_, -EINVAL);                                        \
        ck_assert_str_eq(errbuf, (msg));                                       \
    } while (0)

/* Expect an invalid configuration whose message starts with prefix. */
#define ck_invalid_prefix(prefix, ...)                                         \
    do {                                                                       \
        struct config c_;                                                      \
        int rc_ = load(&c_, __VA_ARGS__, NULL);                                \
        ck_assert_int_eq(rc_, -EINVAL);                                        \
        ck_assert_msg(strncmp(errbuf, (prefix), strlen(prefix)) == 0,          \
                      "message '%s' does not start with '%s'", errbuf,         \
                      (prefix));                                               \
        ck_assert_ptr_null(strchr(errbuf, '\n'));                              \
    } while (0)

/* ---- defaults ---- */

START_TEST(test_defaults)
{
    struct config c;

    ck_assert_int_eq(load(&c, NULL), 0);
    ck_assert_str_eq(c.listen_addr, "127.0.0.1");
    ck_assert_int_eq(c.listen_family, AF_INET);
    ck_assert_uint_eq(c.listen_port, 8080);
    ck_assert(c.listen_loopback);
    ck_assert_str_eq(c.data_dir, "./data");
    ck_assert_uint_eq(c.l1_capacity, 1000);
    ck_assert_uint_eq(c.l2_capacity, 5000);
    ck_assert_uint_eq(c.l3_capacity, 0);
    ck_assert_int_eq(c.default_ttl, 3600);
    ck_assert_uint_eq(c.n_source_ttls, 0);
    ck_assert_int_eq(c.sweep_interval, 10);
    ck_assert_uint_eq(c.failure_threshold, 3);
    ck_assert_uint_eq(c.n_warm_files, 0);
    ck_assert_int_eq(c.log_level, LOG_LEVEL_INFO);
    ck_assert_int_eq(c.log_format, LOG_FORMAT_TEXT);
    ck_assert_uint_eq(c.max_body_bytes, 16777216);
    ck_assert_uint_eq(c.max_connections, 1024);
    ck_assert_uint_eq(c.max_import_bytes, 1073741824);
    ck_assert_uint_eq(c.idle_timeout, 30);
    ck_assert_uint_eq(c.max_connections_per_ip, 512);
    ck_assert_int_eq(c.threading, CONFIG_THREADING_POOL);
    ck_assert(!c.ephemeral_key);
    ck_assert(!c.insecure_listen_any);
    ck_assert_ptr_null(c.api_token);
    ck_assert_int_eq(c.key_source, CONFIG_KEY_NONE);
    ck_assert_ptr_null(c.ring);
    config_fini(&c);
    config_fini(&c); /* idempotent */
    config_fini(NULL);
}
END_TEST

/* ---- every flag, valid values ---- */

START_TEST(test_all_flags)
{
    struct config c;
    char *dir = testutil_mkdtemp();
    char warm[600];
    FILE *f;

    snprintf(warm, sizeof warm, "%s/list.txt", dir);
    f = fopen(warm, "w");
    ck_assert_ptr_nonnull(f);
    fputs("1.2.3.4:80\n", f);
    fclose(f);

    ck_assert_int_eq(
        load(&c, "--listen", "127.0.0.2:0", "--data-dir", "/tmp/x",
             "--l1-capacity", "10", "--l2-capacity", "20", "--l3-capacity",
             "30", "--default-ttl", "60", "--source-ttl", "free=120",
             "--sweep-interval", "5", "--failure-threshold", "7", "--warm",
             warm, "--log-level", "debug", "--log-format", "json",
             "--max-body-bytes", "1024", "--max-connections", "8",
             "--max-import-bytes", "2048", "--idle-timeout", "9",
             "--max-connections-per-ip", "0", "--threading", "per-connection",
             "--ephemeral-key", "--insecure-listen-any", NULL),
        0);
    ck_assert_str_eq(c.listen_addr, "127.0.0.2");
    ck_assert_uint_eq(c.listen_port, 0);
    ck_assert(c.listen_loopback);
    ck_assert_str_eq(c.data_dir, "/tmp/x");
    ck_assert_uint_eq(c.l1_capacity, 10);
    ck_assert_uint_eq(c.l2_capacity, 20);
    ck_assert_uint_eq(c.l3_capacity, 30);
    ck_assert_int_eq(c.default_ttl, 60);
    ck_assert_uint_eq(c.n_source_ttls, 1);
    ck_assert_str_eq(c.source_ttls[0].name, "free");
    ck_assert_int_eq(c.source_ttls[0].ttl_seconds, 120);
    ck_assert_int_eq(c.sweep_interval, 5);
    ck_assert_uint_eq(c.failure_threshold, 7);
    ck_assert_uint_eq(c.n_warm_files, 1);
    ck_assert_str_eq(c.warm_files[0], warm);
    ck_assert_int_eq(c.log_level, LOG_LEVEL_DEBUG);
    ck_assert_int_eq(c.log_format, LOG_FORMAT_JSON);
    ck_assert_uint_eq(c.max_body_bytes, 1024);
    ck_assert_uint_eq(c.max_connections, 8);
    ck_assert_uint_eq(c.max_import_bytes, 2048);
    ck_assert_uint_eq(c.idle_timeout, 9);
    ck_assert_uint_eq(c.max_connections_per_ip, 0);
    ck_assert_int_eq(c.threading, CONFIG_THREADING_PER_CONNECTION);
    ck_assert(c.ephemeral_key);
    ck_assert(c.insecure_listen_any);
    /* --ephemeral-key without a key: a random ring. */
    ck_assert_int_eq(c.key_source, CONFIG_KEY_EPHEMERAL);
    ck_assert_ptr_nonnull(c.ring);
    ck_assert_uint_eq(crypto_keyring_count(c.ring), 1);
    config_fini(&c);
    testutil_rmrf(dir);
}
END_TEST

START_TEST(test_equals_syntax_and_log_levels)
{
    struct config c;

    ck_assert_int_eq(load(&c, "--l1-capacity=42", "--log-level=WARN",
                          "--threading=pool", NULL),
                     0);
    ck_assert_uint_eq(c.l1_capacity, 42);
    ck_assert_int_eq(c.log_level, LOG_LEVEL_WARN);
    ck_assert_int_eq(c.threading, CONFIG_THREADING_POOL);
    config_fini(&c);
    ck_assert_int_eq(load(&c, "--log-level", "error", NULL), 0);
    ck_assert_int_eq(c.log_level, LOG_LEVEL_ERROR);
    config_fini(&c);
    /* The last of a repeated single-valued flag wins. */
    ck_assert_int_eq(load(&c, "--l2-capacity", "1", "--l2-capacity", "2", NULL),
                     0);
    ck_assert_uint_eq(c.l2_capacity, 2);
    config_fini(&c);
}
END_TEST

/* ---- invalid values: exact messages ---- */

START_TEST(test_invalid_numbers)
{
    ck_invalid("proxycached: invalid --l1-capacity 'abc': not a number",
               "--l1-capacity", "abc");
    ck_invalid("proxycached: invalid --l1-capacity '12x': not a number",
               "--l1-capacity", "12x");
    ck_invalid("proxycached: invalid --l1-capacity '': not a number",
               "--l1-capacity", "");
    ck_invalid("proxycached: invalid --l1-capacity ' 5': not a number",
               "--l1-capacity", " 5");
    ck_invalid("proxycached: invalid --l1-capacity '0x10': not a number",
               "--l1-capacity", "0x10");
    ck_invalid("proxycached: invalid --l1-capacity '0': must be between 1 "
               "and 100000000",
               "--l1-capacity", "0");
    ck_invalid("proxycached: invalid --l1-capacity '-1': must be between 1 "
               "and 100000000",
               "--l1-capacity", "-1");
    ck_invalid("proxycached: invalid --l2-capacity "
               "'99999999999999999999999': must be between 1 and 1000000000",
               "--l2-capacity", "99999999999999999999999");
    ck_invalid("proxycached: invalid --l3-capacity '-1': must be between 0 "
               "and 1000000000000",
               "--l3-capacity", "-1");
    ck_invalid("proxycached: invalid --default-ttl '0': must be between 1 "
               "and 3153600000",
               "--default-ttl", "0");
    ck_invalid("proxycached: invalid --sweep-interval '0': must be between "
               "1 and 86400",
               "--sweep-interval", "0");
    ck_invalid("proxycached: invalid --failure-threshold '0': must be "
               "between 1 and 1000000",
               "--failure-threshold", "0");
    ck_invalid("proxycached: invalid --max-body-bytes '1023': must be "
               "between 1024 and 4294967296",
               "--max-body-bytes", "1023");
    ck_invalid("proxycached: invalid --max-import-bytes '10': must be "
               "between 1024 and 1099511627776",
               "--max-import-bytes", "10");
    ck_invalid("proxycached: invalid --max-connections '0': must be between "
               "1 and 1000000",
               "--max-connections", "0");
    ck_invalid("proxycached: invalid --idle-timeout '0': must be between 1 "
               "and 86400",
               "--idle-timeout", "0");
    ck_invalid("proxycached: invalid --max-connections-per-ip '-3': must be "
               "between 0 and 1000000",
               "--max-connections-per-ip", "-3");
}
END_TEST

START_TEST(test_boundaries_accepted)
{
    struct config c;

    ck_assert_int_eq(load(&c, "--l3-capacity", "0", "--max-body-bytes", "1024",
                          "--default-ttl", "1", "--l1-capacity", "100000000",
                          NULL),
                     0);
    ck_assert_uint_eq(c.l3_capacity, 0);
    ck_assert_uint_eq(c.max_body_bytes, 1024);
    ck_assert_int_eq(c.default_ttl, 1);
    ck_assert_uint_eq(c.l1_capacity, 100000000);
    config_fini(&c);
}
END_TEST

START_TEST(test_invalid_enums)
{
    ck_invalid("proxycached: invalid --log-level 'loud': expected debug, "
               "info, warn or error",
               "--log-level", "loud");
    ck_invalid("proxycached: invalid --log-format 'xml': expected text or "
               "json",
               "--log-format", "xml");
    ck_invalid("proxycached: invalid --threading 'epoll': expected pool or "
               "per-connection",
               "--threading", "epoll");
    ck_invalid("proxycached: invalid --data-dir '': must not be empty",
               "--data-dir", "");
}
END_TEST

START_TEST(test_message_is_one_printable_line)
{
    /* Control characters in a value never reach the terminal raw. */
    ck_invalid("proxycached: invalid --l1-capacity '1?2': not a number",
               "--l1-capacity", "1\n2");
    ck_invalid_prefix("proxycached: invalid --log-level 'aaaaaaaaaa",
                      "--log-level",
                      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
                      "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
    ck_assert_ptr_nonnull(strstr(errbuf, "...'"));
}
END_TEST

/* ---- listen ---- */

START_TEST(test_listen_valid)
{
    struct config c;
    char buf[80];

    ck_assert_int_eq(load(&c, "--listen", "127.0.0.1:0", NULL), 0);
    ck_assert_uint_eq(c.listen_port, 0);
    ck_assert_str_eq(config_format_listen(&c, 4242, buf, sizeof buf),
                     "127.0.0.1:4242");
    config_fini(&c);

    ck_assert_int_eq(load(&c, "--listen", "[::1]:65535", NULL), 0);
    ck_assert_int_eq(c.listen_family, AF_INET6);
    ck_assert_str_eq(c.listen_addr, "::1");
    ck_assert_uint_eq(c.listen_port, 65535);
    ck_assert(c.listen_loopback);
    ck_assert_str_eq(config_format_listen(&c, 1, buf, sizeof buf), "[::1]:1");
    config_fini(&c);

    ck_assert_int_eq(load(&c, "--listen", "localhost:8081", NULL), 0);
    ck_assert_str_eq(c.listen_addr, "127.0.0.1");
    ck_assert(c.listen_loopback);
    config_fini(&c);

    /* A canonical form is stored. */
    ck_assert_int_eq(load(&c, "--listen", "[0:0:0:0:0:0:0:1]:80", NULL), 0);
    ck_assert_str_eq(c.listen_addr, "::1");
    config_fini(&c);
}
END_TEST

START_TEST(test_listen_invalid)
{
    ck_invalid_prefix("proxycached: invalid --listen '1.2.3.4': expected",
                      "--listen", "1.2.3.4");
    ck_invalid_prefix("proxycached: invalid --listen '::1:80': expected",
                      "--listen", "::1:80");
    ck_invalid_prefix("proxycached: invalid --listen '[::1]80': expected",
                      "--listen", "[::1]80");
    ck_invalid("proxycached: invalid --listen 'example.com:80': not a "
               "numeric IPv4 address",
               "--listen", "example.com:80");
    ck_invalid("proxycached: invalid --listen '[zz::1]:80': not a numeric "
               "IPv6 address",
               "--listen", "[zz::1]:80");
    ck_invalid("proxycached: invalid --listen '127.0.0.1:65536': port must "
               "be a number between 0 and 65535",
               "--listen", "127.0.0.1:65536");
    ck_invalid("proxycached: invalid --listen '127.0.0.1:-1': port must be "
               "a number between 0 and 65535",
               "--listen", "127.0.0.1:-1");
    ck_invalid("proxycached: invalid --listen '127.0.0.1:': port must be a "
               "number between 0 and 65535",
               "--listen", "127.0.0.1:");
    ck_invalid_prefix("proxycached: invalid --listen ':8080': expected",
                      "--listen", ":8080");
    ck_invalid("proxycached: invalid --listen '256.1.1.1:80': not a numeric "
               "IPv4 address",
               "--listen", "256.1.1.1:80");
}
END_TEST

START_TEST(test_listen_any_needs_token)
{
    struct config c;

    ck_invalid("proxycached: refusing to listen on 0.0.0.0:8080 (not "
               "loopback) without PROXYCACHE_API_TOKEN: set a token, or "
               "pass --insecure-listen-any",
               "--listen", "0.0.0.0:8080");
    ck_invalid_prefix("proxycached: refusing to listen on [::]:80 ", "--listen",
                      "[::]:80");
    ck_invalid_prefix("proxycached: refusing to listen on 10.0.0.1:80 ",
                      "--listen", "10.0.0.1:80");

    ck_assert_int_eq(
        load(&c, "--listen", "0.0.0.0:8080", "--insecure-listen-any", NULL), 0);
    ck_assert(!c.listen_loopback);
    config_fini(&c);

    env_set("PROXYCACHE_INSECURE_LISTEN_ANY", "true");
    ck_assert_int_eq(load(&c, "--listen", "0.0.0.0:8080", NULL), 0);
    config_fini(&c);
    env_set("PROXYCACHE_INSECURE_LISTEN_ANY", "0");
    ck_invalid_prefix("proxycached: refusing to listen on 0.0.0.0:8080",
                      "--listen", "0.0.0.0:8080");
    env_set("PROXYCACHE_INSECURE_LISTEN_ANY", "maybe");
    ck_invalid("proxycached: invalid PROXYCACHE_INSECURE_LISTEN_ANY 'maybe':"
               " expected 1/0, true/false, yes/no, on/off",
               "--listen", "0.0.0.0:8080");
    env_set("PROXYCACHE_INSECURE_LISTEN_ANY", NULL);

    env_set("PROXYCACHE_API_TOKEN", "s3cret-token-0123456789");
    ck_assert_int_eq(load(&c, "--listen", "0.0.0.0:8080", NULL), 0);
    ck_assert_str_eq(c.api_token, "s3cret-token-0123456789");
    config_fini(&c);
    ck_assert_ptr_null(c.api_token);
}
END_TEST

/* ---- environment and precedence ---- */

START_TEST(test_env_values)
{
    struct config c;

    env_set("PROXYCACHE_L1_CAPACITY", "5");
    env_set("PROXYCACHE_LISTEN", "[::1]:0");
    env_set("PROXYCACHE_DATA_DIR", "/var/lib/pc");
    env_set("PROXYCACHE_LOG_FORMAT", "json");
    env_set("PROXYCACHE_THREADING", "per-connection");
    env_set("PROXYCACHE_EPHEMERAL_KEY", "yes");
    env_set("PROXYCACHE_MAX_CONNECTIONS_PER_IP", "16");
    ck_assert_int_eq(load(&c, NULL), 0);
    ck_assert_uint_eq(c.l1_capacity, 5);
    ck_assert_int_eq(c.listen_family, AF_INET6);
    ck_assert_str_eq(c.data_dir, "/var/lib/pc");
    ck_assert_int_eq(c.log_format, LOG_FORMAT_JSON);
    ck_assert_int_eq(c.threading, CONFIG_THREADING_PER_CONNECTION);
    ck_assert(c.ephemeral_key);
    ck_assert_uint_eq(c.max_connections_per_ip, 16);
    config_fini(&c);
}
END_TEST

START_TEST(test_flag_wins_over_env)
{
    struct config c;

    env_set("PROXYCACHE_L1_CAPACITY", "5");
    ck_assert_int_eq(load(&c, "--l1-capacity", "7", NULL), 0);
    ck_assert_uint_eq(c.l1_capacity, 7);
    config_fini(&c);

    /* An invalid variable is not even looked at when the flag is given. */
    env_set("PROXYCACHE_DEFAULT_TTL", "zero");
    ck_assert_int_eq(load(&c, "--default-ttl", "9", NULL), 0);
    ck_assert_int_eq(c.default_ttl, 9);
    config_fini(&c);
    /* ...but it is reported, naming the variable, when it is used. */
    ck_invalid("proxycached: invalid PROXYCACHE_DEFAULT_TTL 'zero': not a "
               "number",
               "--l1-capacity", "3");
    env_set("PROXYCACHE_DEFAULT_TTL", "0");
    ck_invalid("proxycached: invalid PROXYCACHE_DEFAULT_TTL '0': must be "
               "between 1 and 3153600000",
               "--l1-capacity", "3");
}
END_TEST

START_TEST(test_empty_env_is_unset)
{
    struct config c;

    env_set("PROXYCACHE_L1_CAPACITY", "");
    env_set("PROXYCACHE_DATA_DIR", "");
    env_set("PROXYCACHE_API_TOKEN", "");
    env_set("PROXYCACHE_ENCRYPTION_KEY", "");
    ck_assert_int_eq(load(&c, NULL), 0);
    ck_assert_uint_eq(c.l1_capacity, 1000);
    ck_assert_str_eq(c.data_dir, "./data");
    ck_assert_ptr_null(c.api_token);
    ck_assert_ptr_null(c.ring);
    config_fini(&c);
}
END_TEST

/* ---- repeatable options ---- */

START_TEST(test_source_ttl)
{
    struct config c;

    ck_assert_int_eq(load(&c, "--source-ttl", "a=10", "--source-ttl", "b c=20",
                          "--source-ttl", "a=30", "--source-ttl", "x=y=40",
                          NULL),
                     0);
    ck_assert_uint_eq(c.n_source_ttls, 3);
    ck_assert_str_eq(c.source_ttls[0].name, "a");
    ck_assert_int_eq(c.source_ttls[0].ttl_seconds, 30); /* last one wins */
    ck_assert_str_eq(c.source_ttls[1].name, "b c");
    ck_assert_int_eq(c.source_ttls[1].ttl_seconds, 20);
    ck_assert_str_eq(c.source_ttls[2].name, "x=y"); /* split at the last = */
    ck_assert_int_eq(c.source_ttls[2].ttl_seconds, 40);
    config_fini(&c);

    ck_invalid("proxycached: invalid --source-ttl 'free': expected "
               "NAME=SECONDS",
               "--source-ttl", "free");
    ck_invalid("proxycached: invalid --source-ttl '=5': NAME must be 1..128 "
               "printable characters",
               "--source-ttl", "=5");
    ck_invalid("proxycached: invalid --source-ttl 'a=0': SECONDS must be "
               "between 1 and 3153600000",
               "--source-ttl", "a=0");
    ck_invalid("proxycached: invalid --source-ttl 'a=ten': SECONDS not a "
               "number",
               "--source-ttl", "a=ten");
}
END_TEST

START_TEST(test_source_ttl_env)
{
    struct config c;

    env_set("PROXYCACHE_SOURCE_TTL", " a=10 , b=20,,");
    ck_assert_int_eq(load(&c, NULL), 0);
    ck_assert_uint_eq(c.n_source_ttls, 2);
    ck_assert_str_eq(c.source_ttls[0].name, "a");
    ck_assert_int_eq(c.source_ttls[0].ttl_seconds, 10);
    ck_assert_str_eq(c.source_ttls[1].name, "b");
    ck_assert_int_eq(c.source_ttls[1].ttl_seconds, 20);
    config_fini(&c);

    /* Flags replace the variable's list as a whole. */
    ck_assert_int_eq(load(&c, "--source-ttl", "c=5", NULL), 0);
    ck_assert_uint_eq(c.n_source_ttls, 1);
    ck_assert_str_eq(c.source_ttls[0].name, "c");
    config_fini(&c);

    env_set("PROXYCACHE_SOURCE_TTL", "a=10,b");
    ck_invalid("proxycached: invalid PROXYCACHE_SOURCE_TTL 'b': expected "
               "NAME=SECONDS",
               "--l1-capacity", "1");
}
END_TEST

START_TEST(test_warm_files)
{
    struct config c;
    char *dir = testutil_mkdtemp();
    char a[600], b[600], missing[600], envlist[1300];
    FILE *f;

    snprintf(a, sizeof a, "%s/a.txt", dir);
    snprintf(b, sizeof b, "%s/b.json", dir);
    snprintf(missing, sizeof missing, "%s/missing.txt", dir);
    f = fopen(a, "w");
    ck_assert_ptr_nonnull(f);
    fclose(f);
    f = fopen(b, "w");
    ck_assert_ptr_nonnull(f);
    fclose(f);

    ck_assert_int_eq(load(&c, "--warm", a, "--warm", b, NULL), 0);
    ck_assert_uint_eq(c.n_warm_files, 2);
    ck_assert_str_eq(c.warm_files[0], a);
    ck_assert_str_eq(c.warm_files[1], b);
    config_fini(&c);

    snprintf(envlist, sizeof envlist, "%s,%s", b, a);
    env_set("PROXYCACHE_WARM", envlist);
    ck_assert_int_eq(load(&c, NULL), 0);
    ck_assert_uint_eq(c.n_warm_files, 2);
    ck_assert_str_eq(c.warm_files[0], b);
    config_fini(&c);
    env_set("PROXYCACHE_WARM", NULL);

    {
        struct config c2;
        char expect[800];
        snprintf(expect, sizeof expect,
                 "proxycached: invalid --warm '%s': No such file or "
                 "directory",
                 missing);
        ck_assert_int_eq(load(&c2, "--warm", a, "--warm", missing, NULL),
                         -EINVAL);
        /* the quoted value is capped, so compare the start and the end */
        ck_assert_msg(strstr(errbuf, "No such file or directory") != NULL, "%s",
                      errbuf);
        ck_assert_msg(strncmp(errbuf, "proxycached: invalid --warm '", 29) == 0,
                      "%s", errbuf);
    }
    testutil_rmrf(dir);
}
END_TEST

/* ---- command line errors ---- */

START_TEST(test_bad_command_lines)
{
    ck_invalid("proxycached: unknown or ambiguous option '--nope' (see "
               "--help)",
               "--nope");
    ck_invalid("proxycached: unknown or ambiguous option '--nope' (see "
               "--help)",
               "--nope=secret");
    ck_invalid("proxycached: unknown option '-x' (see --help)", "-x");
    ck_invalid("proxycached: option --listen requires an argument", "--listen");
    ck_invalid("proxycached: unexpected argument 'extra' (see --help)",
               "extra");
    ck_invalid("proxycached: invalid --l1-capacity '--l2-capacity': not a "
               "number",
               "--l1-capacity", "--l2-capacity");
}
END_TEST

START_TEST(test_secret_flags_refused)
{
    ck_invalid("proxycached: --api-token is not accepted (it would show in "
               "ps): set PROXYCACHE_API_TOKEN in the environment",
               "--api-token=hunter2");
    ck_assert_ptr_null(strstr(errbuf, "hunter2"));
    ck_invalid("proxycached: --encryption-key is not accepted (it would "
               "show in ps): set PROXYCACHE_ENCRYPTION_KEY in the "
               "environment",
               "--encryption-key", "hunter2");
}
END_TEST

START_TEST(test_help_and_version)
{
    struct config c;
    char *buf = NULL;
    size_t len = 0;
    FILE *f;
    static const char *const expected[] = {
        "--listen ADDR:PORT",
        "--data-dir DIR",
        "--l1-capacity N",
        "--l2-capacity N",
        "--l3-capacity N",
        "--default-ttl SECONDS",
        "--source-ttl NAME=SECONDS",
        "--sweep-interval SECONDS",
        "--failure-threshold N",
        "--warm FILE",
        "--log-level LEVEL",
        "--log-format FORMAT",
        "--max-body-bytes N",
        "--max-connections N",
        "--max-import-bytes N",
        "--idle-timeout SECONDS",
        "--max-connections-per-ip N",
        "--threading MODE",
        "--ephemeral-key",
        "--insecure-listen-any",
        "--help",
        "--version",
        "PROXYCACHE_LISTEN",
        "PROXYCACHE_MAX_CONNECTIONS_PER_IP",
        "PROXYCACHE_INSECURE_LISTEN_ANY",
        "PROXYCACHE_API_TOKEN",
        "PROXYCACHE_ENCRYPTION_KEY",
        "PROXYWHIRL_CACHE_ENCRYPTION_KEY",
        "default: 127.0.0.1:8080",
        "default: 16777216",
        "default: pool",
        "default: 1073741824",
        "default: 3600",
    };

    ck_assert_int_eq(load(&c, "--help", NULL), CONFIG_SHOW_HELP);
    ck_assert_int_eq(load(&c, "-h", NULL), CONFIG_SHOW_HELP);
    ck_assert_int_eq(load(&c, "--version", NULL), CONFIG_SHOW_VERSION);
    ck_assert_int_eq(load(&c, "-V", NULL), CONFIG_SHOW_VERSION);
    ck_assert_str_eq(config_version_line(), "proxycached 0.1.0");
    ck_assert_str_eq(config_version(), "0.1.0");

    f = open_memstream(&buf, &len);
    ck_assert_ptr_nonnull(f);
    config_usage(f);
    fclose(f);
    for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++)
        ck_assert_msg(strstr(buf, expected[i]) != NULL, "--help lacks '%s'",
                      expected[i]);
    free(buf);
}
END_TEST

/* ---- secrets ---- */

START_TEST(test_token_validation)
{
    env_set("PROXYCACHE_API_TOKEN", "has space");
    ck_invalid("proxycached: invalid PROXYCACHE_API_TOKEN: only visible "
               "ASCII characters are allowed (value not shown)",
               "--l1-capacity", "1");
    ck_assert_ptr_null(strstr(errbuf, "has space"));
    env_set("PROXYCACHE_API_TOKEN", "line\nbreak");
    ck_invalid_prefix(
        "proxycached: invalid PROXYCACHE_API_TOKEN:", "--l1-capacity", "1");
}
END_TEST

START_TEST(test_encryption_key)
{
    struct config c;

    env_set("PROXYCACHE_ENCRYPTION_KEY", KEY1);
    ck_assert_int_eq(load(&c, NULL), 0);
    ck_assert_int_eq(c.key_source, CONFIG_KEY_ENV);
    ck_assert_ptr_nonnull(c.ring);
    ck_assert_uint_eq(crypto_keyring_count(c.ring), 1);
    config_fini(&c);
    ck_assert_ptr_null(c.ring);

    /* Rotation: a list; the key wins over --ephemeral-key. */
    env_set("PROXYCACHE_ENCRYPTION_KEY", KEY1 "," KEY2);
    ck_assert_int_eq(load(&c, "--ephemeral-key", NULL), 0);
    ck_assert_int_eq(c.key_source, CONFIG_KEY_ENV);
    ck_assert_uint_eq(crypto_keyring_count(c.ring), 2);
    config_fini(&c);

    /* The legacy variable is the fallback. */
    env_set("PROXYCACHE_ENCRYPTION_KEY", NULL);
    env_set("PROXYWHIRL_CACHE_ENCRYPTION_KEY", KEY2);
    ck_assert_int_eq(load(&c, NULL), 0);
    ck_assert_int_eq(c.key_source, CONFIG_KEY_ENV_LEGACY);
    ck_assert_uint_eq(crypto_keyring_count(c.ring), 1);
    config_fini(&c);
}
END_TEST

START_TEST(test_encryption_key_invalid)
{
    env_set("PROXYCACHE_ENCRYPTION_KEY", "not-a-key-SECRETVALUE");
    ck_invalid("proxycached: invalid PROXYCACHE_ENCRYPTION_KEY: expected "
               "URL-safe base64 of 32 bytes, comma-separated for rotation "
               "(value not shown)",
               "--l1-capacity", "1");
    ck_assert_ptr_null(strstr(errbuf, "SECRETVALUE"));
    env_set("PROXYCACHE_ENCRYPTION_KEY", NULL);
    env_set("PROXYWHIRL_CACHE_ENCRYPTION_KEY", "c2hvcnQ=");
    ck_invalid_prefix("proxycached: invalid PROXYWHIRL_CACHE_ENCRYPTION_KEY:",
                      "--l1-capacity", "1");
}
END_TEST

static Suite *config_suite(void)
{
    Suite *s = suite_create("config");
    struct {
        const char *name;
        const TTest *test;
    } cases[] = {
        {"defaults", test_defaults},
        {"all_flags", test_all_flags},
        {"equals_syntax", test_equals_syntax_and_log_levels},
        {"invalid_numbers", test_invalid_numbers},
        {"boundaries", test_boundaries_accepted},
        {"invalid_enums", test_invalid_enums},
        {"one_line_messages", test_message_is_one_printable_line},
        {"listen_valid", test_listen_valid},
        {"listen_invalid", test_listen_invalid},
        {"listen_any_needs_token", test_listen_any_needs_token},
        {"env_values", test_env_values},
        {"flag_wins", test_flag_wins_over_env},
        {"empty_env", test_empty_env_is_unset},
        {"source_ttl", test_source_ttl},
        {"source_ttl_env", test_source_ttl_env},
        {"warm_files", test_warm_files},
        {"bad_command_lines", test_bad_command_lines},
        {"secret_flags_refused", test_secret_flags_refused},
        {"help_version", test_help_and_version},
        {"token", test_token_validation},
        {"encryption_key", test_encryption_key},
        {"encryption_key_invalid", test_encryption_key_invalid},
    };

    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        TCase *tc = tcase_create(cases[i].name);
        tcase_add_checked_fixture(tc, env_reset, NULL);
        tcase_add_test(tc, cases[i].test);
        suite_add_tcase(s, tc);
    }
    return s;
}

int main(void)
{
    return testutil_run(config_suite());
}
