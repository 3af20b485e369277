/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer harness of Fernet opening and key-ring parsing
 * (storage/crypto.c).
 *
 * Why: tokens are read back from L2 files, L3 rows and import lines, all of
 * which an attacker with disk or API access controls; the key list comes
 * from the environment. Opening must reject every forged or damaged token
 * as -EBADMSG, and must never tell a forgery from corruption by crashing.
 *
 * Each input is used twice, up to its first NUL:
 *
 * 1. As a token, opened with a fixed two-key ring (no TTL, then a 60 s TTL
 *    at a fixed "now"). Nobody without the keys can make a valid token, so
 *    a success is only legitimate for the seed tokens below (made with
 *    Python's cryptography.fernet, which doubles as an interop check). On
 *    success the harness decodes the text with its own base64url reference
 *    decoder and traps unless the bytes are exactly those of a seed and the
 *    plaintext is that seed's; with the TTL it also checks the time window.
 *    Then the same open runs with one injected fault (crypto_int.h): the
 *    result must be the fault-free result or -ENOMEM/-EIO, never a
 *    different plaintext and never -EBADMSG for a valid token (a caller
 *    would evict a good entry as corrupt).
 *
 * 2. As a comma-separated key list for crypto_keyring_new(). The result is
 *    compared with a reference model (every trimmed item decodes to exactly
 *    32 bytes, at most 64 items); an accepted ring must seal and open a
 *    probe, and an injected allocation failure must give -ENOMEM.
 */
#include "config.h"

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "storage/crypto.h"
#include "storage/crypto_int.h"

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

/* bytes 0..31 and 100..131 (as in tests/unit/check_crypto.c) */
#define KEY1 "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
#define KEY2 "ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1-f4CBgoM="
/* 2025-11-25T10:00:00Z, the "now" of the TTL check */
#define NOW_S INT64_C(1764064800)
#define TTL_S 60
#define SKEW_S 60
#define RAW_MAX 4096

struct seed {
    const char *token;
    const char *plain;
    uint8_t raw[RAW_MAX];
    size_t rawlen;
};

/* Python: Fernet(key)._encrypt_from_parts(plain, time, iv); the same
 * strings are in corpus/fuzz_fernet/. */
static struct seed seeds[] = {
    {"gAAAAABpJX4gAAECAwQFBgcICQoLDA0OD_k_SxMHsmDcKcANV9yCGzOYMd7gAosG9c_"
     "6q6a-y_HdwWtoJVz7twaXM6hR3qELCA==",
     "alice", {0}, 0},
    {"gAAAAABpJX4CEBESExQVFhcYGRobHB0eH5tmLXcNZZrNIviwx9w5e-"
     "s2WA90h-dD23j8WwkEYDdHJnbrkpbIZLWgSxc1iQy6XQ==",
     "p@ss:w0rd%20", {0}, 0},
    {"gAAAAABpJX4gEBESExQVFhcYGRobHB0eH5xU1XFwLPoPA_"
     "NiFWdrq3jp18PisQig1OoGkelQFk3gGteAy1L58O_YWHoGtWJkdQ==",
     "", {0}, 0},
    {"gAAAAABpJX4-AAECAwQFBgcICQoLDA0OD2nMbL-OTp9EsEZMWD48RBLtdrTFsPOS79kI62b0"
     "Yg46JS_fOx2EOLMwcDi_Qy9vr9Ks5tMrfKJkC6q7f_jhdZ5ng1i41yBV77nXY7pHvEBe",
     "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx", {0}, 0},
    {"gAAAAABpJCygAAECAwQFBgcICQoLDA0OD6-"
     "f85DHG9S9c2t_aQXCmuKGohMWE6cOewFgPSm90PWkPclt9Cbkd31jjui-sMs3Zw==",
     "old", {0}, 0},
};
#define N_SEEDS (sizeof seeds / sizeof seeds[0])

static struct crypto_keyring *ring;

/* --- reference base64url decoder (independent of crypto.c) ---------------- */

static int b64_value(char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '-')
        return 62;
    if (c == '_')
        return 63;
    return -1;
}

/*
 * Decode s[0..len): URL-safe alphabet, optionally padded with at most two
 * '=' that complete the last quantum; unused low bits of the last
 * character are ignored (as Python does). Returns 0 or -1 (not base64url,
 * or more than cap bytes).
 */
static int ref_decode(const char *s, size_t len, uint8_t *out, size_t cap,
                      size_t *outlen)
{
    size_t data = len, i, n = 0;
    uint32_t acc = 0;
    int bits = 0;

    while (data > 0 && s[data - 1] == '=' && len - data < 2)
        data--;
    if (data == 0 || data % 4 == 1 || (data < len && len % 4 != 0))
        return -1;
    for (i = 0; i < data; i++) {
        int v = b64_value(s[i]);

        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (n >= cap)
                return -1;
            out[n++] = (uint8_t)(acc >> bits);
        }
    }
    *outlen = n;
    return 0;
}

static uint64_t be64(const uint8_t *p)
{
    uint64_t v = 0;
    int i;

    for (i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

static void init(void)
{
    size_t i;
    int err;

    err = crypto_keyring_new(KEY1 "," KEY2, &ring);
    CHECK(err == 0 && crypto_keyring_count(ring) == 2);
    for (i = 0; i < N_SEEDS; i++) {
        char *plain = NULL;
        size_t len = 0;

        CHECK(ref_decode(seeds[i].token, strlen(seeds[i].token), seeds[i].raw,
                         sizeof seeds[i].raw, &seeds[i].rawlen) == 0);
        /* interop: every seed opens to its plaintext */
        err = crypto_fernet_open(ring, seeds[i].token, 0, NOW_S, &plain, &len);
        CHECK(err == 0 && len == strlen(seeds[i].plain) &&
              memcmp(plain, seeds[i].plain, len) == 0);
        crypto_free_secret(plain);
    }
}

/* The seed whose bytes the token text decodes to, or NULL. */
static const struct seed *seed_of(const char *token)
{
    static uint8_t raw[RAW_MAX];
    size_t rawlen = 0, i;

    if (ref_decode(token, strlen(token), raw, sizeof raw, &rawlen) < 0)
        return NULL;
    for (i = 0; i < N_SEEDS; i++) {
        if (seeds[i].rawlen == rawlen && memcmp(seeds[i].raw, raw, rawlen) == 0)
            return &seeds[i];
    }
    return NULL;
}

/* Open token with ttl; check the outcome; return the error code. */
static int open_checked(const char *token, int64_t ttl_s)
{
    const struct seed *sd;
    char *plain = NULL;
    size_t len = (size_t)-1;
    int err;

    err = crypto_fernet_open(ring, token, ttl_s, NOW_S, &plain, &len);
    if (err < 0) {
        /* no libcrypto failure or OOM is expected without injection */
        CHECK(err == -EBADMSG);
        CHECK(plain == NULL);
        return err;
    }
    CHECK(err == 0);
    sd = seed_of(token);
    CHECK(sd != NULL); /* a token nobody sealed opened: forgery */
    CHECK(plain != NULL && len == strlen(sd->plain));
    CHECK(memcmp(plain, sd->plain, len) == 0 && plain[len] == '\0');
    if (ttl_s > 0) {
        int64_t ts = (int64_t)be64(sd->raw + 1);

        CHECK(ts - SKEW_S <= NOW_S && ts + ttl_s >= NOW_S);
    }
    crypto_free_secret(plain);
    return 0;
}

/* The same open with the n-th fault point failing. */
static void open_with_fault(const char *token, int64_t ttl_s, int expect, int n)
{
    char *plain = NULL;
    size_t len = 0;
    int err;

    crypto_fault_inject(n);
    err = crypto_fernet_open(ring, token, ttl_s, NOW_S, &plain, &len);
    crypto_fault_inject(0);
    CHECK(err == expect || err == -ENOMEM || err == -EIO);
    if (err == 0) {
        const struct seed *sd = seed_of(token);

        CHECK(sd != NULL && len == strlen(sd->plain) &&
              memcmp(plain, sd->plain, len) == 0);
        crypto_free_secret(plain);
    } else {
        CHECK(plain == NULL);
    }
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Reference model of crypto_keyring_new(): the number of keys, or -1. */
static long ref_ring(const char *keys)
{
    const char *p = keys;
    long n = 0;

    for (;;) {
        size_t len = strcspn(p, ",");
        const char *item = p;
        uint8_t raw[64];
        size_t rawlen = 0;

        while (len > 0 && is_space(*item)) {
            item++;
            len--;
        }
        while (len > 0 && is_space(item[len - 1]))
            len--;
        if (ref_decode(item, len, raw, sizeof raw, &rawlen) < 0 ||
            rawlen != 32)
            return -1;
        n++;
        if (p[strcspn(p, ",")] == '\0')
            break;
        p += strcspn(p, ",") + 1;
    }
    return n > 64 ? -1 : n;
}

static void check_keyring(const char *keys, unsigned fault_at)
{
    static const uint8_t iv[16] = {9, 8, 7, 6, 5, 4, 3, 2,
                                   1, 0, 1, 2, 3, 4, 5, 6};
    struct crypto_keyring *r = NULL;
    char *token = NULL, *plain = NULL;
    long expect = ref_ring(keys);
    size_t len = 0;
    int err;

    err = crypto_keyring_new(keys, &r);
    if (expect < 0) {
        CHECK(err == -EINVAL);
        return;
    }
    CHECK(err == 0 && crypto_keyring_count(r) == (size_t)expect);
    err = crypto_fernet_seal(r, "probe", 5, NOW_S, iv, &token);
    CHECK(err == 0);
    err = crypto_fernet_open(r, token, TTL_S, NOW_S, &plain, &len);
    CHECK(err == 0 && len == 5 && memcmp(plain, "probe", 5) == 0);
    crypto_free_secret(plain);
    free(token);
    crypto_keyring_free(r);

    /* allocation failure while building the ring */
    r = NULL;
    crypto_fault_inject((int)fault_at);
    err = crypto_keyring_new(keys, &r);
    crypto_fault_inject(0);
    CHECK(err == 0 || err == -ENOMEM);
    CHECK((err == 0) == (r != NULL));
    crypto_keyring_free(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready;
    unsigned fault_at = 1 + (unsigned)(size % 5);
    char *s;
    int e0, e1;

    if (!ready) {
        init();
        ready = true;
    }
    s = malloc(size + 1);
    if (!s)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';

    e0 = open_checked(s, 0);
    e1 = open_checked(s, TTL_S);
    if (e0 < 0)
        CHECK(e1 < 0); /* a TTL can only reject more */
    open_with_fault(s, 0, e0, (int)fault_at);
    open_with_fault(s, TTL_S, e1, (int)fault_at + 1);

    check_keyring(s, fault_at);
    free(s);
    return 0;
}
