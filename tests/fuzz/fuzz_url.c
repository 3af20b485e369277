/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer harness of the proxy URL parser (storage/entry.c).
 *
 * Why: every proxy URL the service sees (POST bodies, warm files, import
 * lines, rows read back from L2/L3) goes through entry_url_parse(), and the
 * key of an entry is the SHA-256 of its normalised form. A parser bug is
 * therefore either a crash on untrusted bytes or two keys for one proxy.
 *
 * Besides "no crash, no leak, no UB" (the sanitizers), the harness traps on
 * any broken invariant:
 *  - the return is 0, -EINVAL (with a non-empty static reason) or -ENOMEM;
 *    a failed parse leaves nothing to free (LeakSanitizer checks that);
 *  - normalisation is idempotent: parsing the normalised form (with no
 *    default scheme) succeeds and gives the same scheme, host, port and
 *    normalised string, without credentials, and hence the same key;
 *  - the key is 64 lowercase hex characters (entry_key_valid);
 *  - a URL accepted without a default scheme is accepted identically with
 *    one (the default only applies to a bare host:port);
 *  - credentials, when present, are non-empty and free of control bytes;
 *  - an entry built from the normalised URL passes entry_validate(), the
 *    gate for data read back from disk.
 *
 * The input is used up to its first NUL, as a C string always is.
 */
#include "config.h"

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "storage/entry.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Report the broken invariant, then trap (libFuzzer saves the input). */
#define CHECK(cond)                                                            \
    do {                                                                       \
        if (!(cond)) {                                                         \
            fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__,         \
                    __LINE__, #cond);                                          \
            __builtin_trap();                                                  \
        }                                                                      \
    } while (0)

static void check_secret(const char *s)
{
    size_t i;

    if (!s)
        return;
    CHECK(s[0] != '\0');
    for (i = 0; s[i] != '\0'; i++)
        CHECK((unsigned char)s[i] >= 0x20 && (unsigned char)s[i] != 0x7f);
}

/* Parse url with default_scheme; check the result and its invariants.
 * Returns the parse result; *out holds the parsed URL when it is 0. */
static int parse_checked(const char *url, int default_scheme,
                         struct entry_url *out)
{
    struct entry_url again;
    const char *reason = NULL;
    char key[ENTRY_KEY_LEN + 1], key2[ENTRY_KEY_LEN + 1];
    const char *name;
    size_t nlen;
    int err;

    memset(out, 0xa5, sizeof *out);
    err = entry_url_parse(url, default_scheme, out, &reason);
    if (err < 0) {
        CHECK(err == -EINVAL || err == -ENOMEM);
        if (err == -EINVAL)
            CHECK(reason != NULL && reason[0] != '\0');
        return err;
    }
    CHECK(err == 0);

    /* The normalised form: "scheme://host:port", bounded, host lowercase. */
    name = entry_scheme_name(out->scheme);
    CHECK(name != NULL);
    nlen = strnlen(out->normalised, sizeof out->normalised);
    CHECK(nlen < sizeof out->normalised);
    CHECK(strncmp(out->normalised, name, strlen(name)) == 0);
    CHECK(strncmp(out->normalised + strlen(name), "://", 3) == 0);
    CHECK(out->port >= 1 && out->port <= 65535);
    CHECK(strnlen(out->host, sizeof out->host) < sizeof out->host);
    CHECK(out->host[0] != '\0');
    for (const char *h = out->host; *h; h++)
        CHECK(!(*h >= 'A' && *h <= 'Z'));
    check_secret(out->username);
    check_secret(out->password);
    CHECK(!(out->password && !out->username));

    /* Idempotence: the normalised form parses to itself. */
    memset(&again, 0, sizeof again);
    err = entry_url_parse(out->normalised, -1, &again, &reason);
    if (err == -ENOMEM)
        return 0;
    CHECK(err == 0);
    CHECK(again.scheme == out->scheme);
    CHECK(again.port == out->port);
    CHECK(strcmp(again.host, out->host) == 0);
    CHECK(strcmp(again.normalised, out->normalised) == 0);
    CHECK(again.username == NULL && again.password == NULL);
    entry_url_fini(&again);

    /* Same key both ways, and a well-formed one. */
    entry_key_from_normalised(out->normalised, key);
    entry_key_from_normalised(again.normalised, key2);
    CHECK(entry_key_valid(key));
    CHECK(strcmp(key, key2) == 0);
    return 0;
}

/* An entry made from a parsed URL must pass the read-back gate. */
static void check_entry(const struct entry_url *u)
{
    struct entry *e = entry_new();
    const char *reason = NULL;
    int err;

    if (!e)
        return;
    if (entry_set_str(&e->proxy_url, u->normalised) < 0 ||
        entry_set_str(&e->source, "fuzz") < 0) {
        entry_unref(e);
        return;
    }
    entry_key_from_normalised(u->normalised, e->key);
    e->scheme = u->scheme;
    e->fetch_time = 1764064800000;
    e->ttl_seconds = 3600;
    entry_compute_expiry(e);
    err = entry_validate(e, &reason);
    CHECK(err == 0);
    entry_unref(e);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct entry_url plain, dflt, other;
    char *url = malloc(size + 1);
    int err_plain, err_dflt, err_other;

    if (!url)
        return 0;
    memcpy(url, data, size);
    url[size] = '\0';

    err_plain = parse_checked(url, -1, &plain);
    err_dflt = parse_checked(url, ENTRY_SCHEME_HTTP, &dflt);
    err_other = parse_checked(url, ENTRY_SCHEME_SOCKS5, &other);

    if (err_plain == 0) {
        /* An explicit scheme wins over any default. */
        CHECK(err_dflt == 0 && err_other == 0);
        CHECK(strcmp(plain.normalised, dflt.normalised) == 0);
        CHECK(strcmp(plain.normalised, other.normalised) == 0);
        check_entry(&plain);
    }
    if (err_dflt == 0 && err_plain != 0) {
        /* Accepted only thanks to the default: then it was bare host:port
         * and the other default gives the same host and port. */
        CHECK(err_plain == -EINVAL);
        CHECK(err_other == 0);
        CHECK(dflt.scheme == ENTRY_SCHEME_HTTP);
        CHECK(other.scheme == ENTRY_SCHEME_SOCKS5);
        CHECK(strcmp(dflt.host, other.host) == 0 && dflt.port == other.port);
        check_entry(&dflt);
    }
    CHECK((err_dflt == 0) == (err_other == 0));

    if (err_plain == 0)
        entry_url_fini(&plain);
    if (err_dflt == 0)
        entry_url_fini(&dflt);
    if (err_other == 0)
        entry_url_fini(&other);
    free(url);
    return 0;
}
