/* SPDX-License-Identifier: MIT */
/*
 * Unit tests of storage/crypto: the public Fernet spec vectors (read with
 * jansson from shared/data/fernet), round trips, key-ring rotation,
 * malformed keys and tokens, the time window, interoperability with
 * Python's cryptography.fernet in both directions, constant-time string
 * comparison, and an allocation/OpenSSL failure loop through the
 * crypto_int.h fault hook. The aim is every line of crypto.c.
 *
 * Fixture location: $PROXYCACHE_FERNET_DIR, else the copy of the public
 * spec's vectors in <srcdir>/tests/unit/data/fernet.
 */
#include "config.h"

#include "storage/crypto.h"
#include "storage/crypto_int.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "tests/unit/testutil.h"

/* bytes 0..31 and 100..131, URL-safe base64 (the second holds a '-') */
#define KEY1 "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
#define KEY2 "ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1-f4CBgoM="
#define KEY1_SIGN                                                              \
    "\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f"
#define KEY1_ENC                                                               \
    "\x10\x11\x12\x13\x14\x15\x16\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f"

static const uint8_t fixed_iv[16] = {0, 1, 2,  3,  4,  5,  6,  7,
                                     8, 9, 10, 11, 12, 13, 14, 15};

static struct crypto_keyring *ring_of(const char *keys)
{
    struct crypto_keyring *r = NULL;

    ck_assert_int_eq(crypto_keyring_new(keys, &r), 0);
    ck_assert_ptr_nonnull(r);
    return r;
}

/* Seal str with ring at t; returns the token (caller frees). */
static char *seal_str(const struct crypto_keyring *r, const char *str,
                      int64_t t, const uint8_t *iv)
{
    char *tok = NULL;

    ck_assert_int_eq(crypto_fernet_seal(r, str, strlen(str), t, iv, &tok), 0);
    ck_assert_ptr_nonnull(tok);
    return tok;
}

/* Open tok and compare with want; returns the open() result. */
static int open_cmp(const struct crypto_keyring *r, const char *tok,
                    int64_t ttl, int64_t now, const char *want)
{
    char *plain = NULL;
    size_t len = 0;
    int err = crypto_fernet_open(r, tok, ttl, now, &plain, &len);

    if (err == 0) {
        ck_assert_ptr_nonnull(plain);
        if (want) {
            ck_assert_uint_eq(len, strlen(want));
            ck_assert_str_eq(plain, want);
        }
        crypto_free_secret(plain);
    } else {
        ck_assert_ptr_null(plain);
    }
    return err;
}

/* --- spec vectors --------------------------------------------------------- */

static json_t *load_vectors(const char *name)
{
    const char *dir = getenv("PROXYCACHE_FERNET_DIR");
    char path[4096];
    json_error_t jerr;
    json_t *j;

    if (dir)
        snprintf(path, sizeof path, "%s/%s", dir, name);
    else
        snprintf(path, sizeof path, "%s/tests/unit/data/fernet/%s",
                 testutil_srcdir(), name);
    j = json_load_file(path, 0, &jerr);
    ck_assert_msg(j != NULL, "cannot load %s: %s", path, jerr.text);
    ck_assert(json_is_array(j));
    ck_assert_uint_gt(json_array_size(j), 0);
    return j;
}

/* "1985-10-26T01:20:01-07:00" to Unix seconds. */
static int64_t parse_time(const char *s)
{
    struct tm tm;
    int y, mo, d, h, mi, se, oh, om, n = 0;
    char sign;
    time_t t;

    memset(&tm, 0, sizeof tm);
    ck_assert_int_eq(sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%c%2d:%2d%n", &y, &mo,
                            &d, &h, &mi, &se, &sign, &oh, &om, &n),
                     9);
    ck_assert_uint_eq((size_t)n, strlen(s));
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = se;
    t = timegm(&tm);
    return (int64_t)t - (sign == '-' ? -1 : 1) * (oh * 3600 + om * 60);
}

static const char *jstr(json_t *o, const char *k)
{
    const char *s = json_string_value(json_object_get(o, k));

    ck_assert_msg(s != NULL, "vector member %s missing", k);
    return s;
}

START_TEST(test_time_parse)
{
    /* 1985-10-26T01:20:00-07:00 is 08:20:00Z = 499162800 */
    ck_assert_int_eq(parse_time("1985-10-26T01:20:00-07:00"), 499162800);
    ck_assert_int_eq(parse_time("1985-10-26T08:20:00+00:00"), 499162800);
}
END_TEST

START_TEST(test_spec_generate)
{
    json_t *v = load_vectors("generate.json");
    size_t i;
    json_t *c;

    json_array_foreach(v, i, c)
    {
        struct crypto_keyring *r = ring_of(jstr(c, "secret"));
        json_t *ivj = json_object_get(c, "iv");
        uint8_t iv[16];
        size_t k;
        json_t *b;
        char *tok;

        ck_assert_uint_eq(json_array_size(ivj), 16);
        json_array_foreach(ivj, k, b) iv[k] = (uint8_t)json_integer_value(b);
        tok = seal_str(r, jstr(c, "src"), parse_time(jstr(c, "now")), iv);
        ck_assert_str_eq(tok, jstr(c, "token"));
        free(tok);
        crypto_keyring_free(r);
    }
    json_decref(v);
}
END_TEST

START_TEST(test_spec_verify)
{
    json_t *v = load_vectors("verify.json");
    size_t i;
    json_t *c;

    json_array_foreach(v, i, c)
    {
        struct crypto_keyring *r = ring_of(jstr(c, "secret"));
        int64_t now = parse_time(jstr(c, "now"));
        int64_t ttl = json_integer_value(json_object_get(c, "ttl_sec"));

        ck_assert_int_eq(
            open_cmp(r, jstr(c, "token"), ttl, now, jstr(c, "src")), 0);
        /* and with no TTL check */
        ck_assert_int_eq(open_cmp(r, jstr(c, "token"), 0, now, jstr(c, "src")),
                         0);
        crypto_keyring_free(r);
    }
    json_decref(v);
}
END_TEST

START_TEST(test_spec_invalid)
{
    json_t *v = load_vectors("invalid.json");
    size_t i;
    json_t *c;
    int n_time = 0;

    json_array_foreach(v, i, c)
    {
        struct crypto_keyring *r = ring_of(jstr(c, "secret"));
        int64_t now = parse_time(jstr(c, "now"));
        int64_t ttl = json_integer_value(json_object_get(c, "ttl_sec"));
        const char *desc = jstr(c, "desc");

        ck_assert_msg(open_cmp(r, jstr(c, "token"), ttl, now, NULL) == -EBADMSG,
                      "vector \"%s\" accepted", desc);
        /* The time-window cases are only invalid because of the TTL: they
         * carry a valid MAC and open without one (ttl 0), as in Python. */
        if (strstr(desc, "TTL") || strstr(desc, "far-future")) {
            ck_assert_int_eq(open_cmp(r, jstr(c, "token"), 0, now, NULL), 0);
            n_time++;
        } else {
            ck_assert_int_eq(open_cmp(r, jstr(c, "token"), 0, now, NULL),
                             -EBADMSG);
        }
        crypto_keyring_free(r);
    }
    ck_assert_int_eq(n_time, 2);
    json_decref(v);
}
END_TEST

/* --- round trips ---------------------------------------------------------- */

START_TEST(test_round_trip)
{
    struct crypto_keyring *r = ring_of(KEY1);
    uint8_t data[100];
    size_t n;

    for (n = 0; n < sizeof data; n++)
        data[n] = (uint8_t)(n * 37 + 1);
    data[5] = 0; /* binary data with an embedded NUL */
    for (n = 0; n <= sizeof data; n++) {
        char *tok = NULL, *plain = NULL;
        size_t len = 0;

        ck_assert_int_eq(crypto_fernet_seal(r, data, n, 1700000000, NULL, &tok),
                         0);
        /* 57 bytes of overhead and the padded ciphertext, base64 */
        ck_assert_uint_eq(strlen(tok), ((57 + (n / 16 + 1) * 16) + 2) / 3 * 4);
        ck_assert_int_eq(
            crypto_fernet_open(r, tok, 60, 1700000010, &plain, &len), 0);
        ck_assert_uint_eq(len, n);
        ck_assert_int_eq(memcmp(plain, data, n), 0);
        ck_assert_int_eq(plain[n], '\0');
        crypto_free_secret(plain);
        free(tok);
    }
    crypto_keyring_free(r);
}
END_TEST

START_TEST(test_random_iv_and_empty)
{
    struct crypto_keyring *r = ring_of(KEY1);
    char *a = seal_str(r, "secret", 1, NULL);
    char *b = seal_str(r, "secret", 1, NULL);
    char *tok = NULL;

    ck_assert_str_ne(a, b); /* random IVs */
    ck_assert_int_eq(open_cmp(r, a, 0, 1, "secret"), 0);
    ck_assert_int_eq(open_cmp(r, b, 0, 1, "secret"), 0);
    free(a);
    free(b);
    /* NULL plaintext of length 0 is the empty string */
    ck_assert_int_eq(crypto_fernet_seal(r, NULL, 0, 1, fixed_iv, &tok), 0);
    ck_assert_int_eq(open_cmp(r, tok, 0, 1, ""), 0);
    free(tok);
    crypto_keyring_free(r);
}
END_TEST

START_TEST(test_seal_args)
{
    struct crypto_keyring *r = ring_of(KEY1);
    char *tok = NULL;
    char *big;

    ck_assert_int_eq(crypto_fernet_seal(NULL, "x", 1, 1, NULL, &tok), -EINVAL);
    ck_assert_int_eq(crypto_fernet_seal(r, "x", 1, 1, NULL, NULL), -EINVAL);
    ck_assert_int_eq(crypto_fernet_seal(r, NULL, 1, 1, NULL, &tok), -EINVAL);
    big = calloc(1, (512u << 10) + 1);
    ck_assert_ptr_nonnull(big);
    ck_assert_int_eq(crypto_fernet_seal(r, big, 512u << 10, 1, NULL, &tok), 0);
    ck_assert_int_eq(open_cmp(r, tok, 0, 1, NULL), 0);
    free(tok);
    tok = NULL;
    ck_assert_int_eq(
        crypto_fernet_seal(r, big, (512u << 10) + 1, 1, NULL, &tok), -E2BIG);
    ck_assert_ptr_null(tok);
    free(big);
    crypto_keyring_free(r);
}
END_TEST

/* --- key ring ------------------------------------------------------------- */

START_TEST(test_ring_rotation)
{
    struct crypto_keyring *r1 = ring_of(KEY1);
    struct crypto_keyring *r2 = ring_of(KEY2);
    struct crypto_keyring *r21 = ring_of(KEY2 "," KEY1);
    struct crypto_keyring *sp = ring_of("  " KEY2 " ,\t" KEY1 "  ");
    char *t1 = seal_str(r1, "old secret", 100, NULL);
    char *t2 = seal_str(r21, "new secret", 100, NULL);

    ck_assert_uint_eq(crypto_keyring_count(r1), 1);
    ck_assert_uint_eq(crypto_keyring_count(r21), 2);
    ck_assert_uint_eq(crypto_keyring_count(sp), 2);
    ck_assert_uint_eq(crypto_keyring_count(NULL), 0);
    /* old tokens open with the new ring; new ones are sealed with key 2 */
    ck_assert_int_eq(open_cmp(r21, t1, 0, 100, "old secret"), 0);
    ck_assert_int_eq(open_cmp(sp, t1, 0, 100, "old secret"), 0);
    ck_assert_int_eq(open_cmp(r21, t2, 0, 100, "new secret"), 0);
    ck_assert_int_eq(open_cmp(r2, t2, 0, 100, "new secret"), 0);
    ck_assert_int_eq(open_cmp(r1, t2, 0, 100, NULL), -EBADMSG);
    ck_assert_int_eq(open_cmp(r2, t1, 0, 100, NULL), -EBADMSG);
    free(t1);
    free(t2);
    crypto_keyring_free(r1);
    crypto_keyring_free(r2);
    crypto_keyring_free(r21);
    crypto_keyring_free(sp);
    crypto_keyring_free(NULL);
}
END_TEST

START_TEST(test_ring_random)
{
    struct crypto_keyring *a = NULL, *b = NULL;
    char *t;

    ck_assert_int_eq(crypto_keyring_new_random(&a), 0);
    ck_assert_int_eq(crypto_keyring_new_random(&b), 0);
    ck_assert_uint_eq(crypto_keyring_count(a), 1);
    t = seal_str(a, "x", 5, NULL);
    ck_assert_int_eq(open_cmp(a, t, 0, 5, "x"), 0);
    ck_assert_int_eq(open_cmp(b, t, 0, 5, NULL), -EBADMSG);
    free(t);
    crypto_keyring_free(a);
    crypto_keyring_free(b);
    ck_assert_int_eq(crypto_keyring_new_random(NULL), -EINVAL);
}
END_TEST

static const char *const bad_keys[] = {
    "",
    " ",
    ",",
    KEY1 ",",
    "," KEY1,
    KEY1 ",," KEY2,
    /* 31 and 33 bytes */
    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==",
    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8g",
    /* standard (not URL-safe) alphabet */
    "ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoM=",
    /* stray characters, misplaced or excess padding */
    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd*h8=",
    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8==",
    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8===",
    "AAECAwQFBgcICQoLDA0O=DxAREhMUFRYXGBkaGxwdHh8",
    "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd Hh8=",
    "=",
    "====",
};

START_TEST(test_ring_bad_keys)
{
    struct crypto_keyring *r = (struct crypto_keyring *)&r;

    ck_assert_msg(crypto_keyring_new(bad_keys[_i], &r) == -EINVAL,
                  "bad key %d accepted", _i);
    ck_assert_ptr_eq(r, (struct crypto_keyring *)&r); /* untouched */
}
END_TEST

START_TEST(test_ring_limits)
{
    struct crypto_keyring *r = NULL;
    char *keys;
    size_t i, klen = strlen(KEY1);

    ck_assert_int_eq(crypto_keyring_new(NULL, &r), -EINVAL);
    ck_assert_int_eq(crypto_keyring_new(KEY1, NULL), -EINVAL);
    /* unpadded keys are accepted */
    ck_assert_int_eq(
        crypto_keyring_new("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8", &r),
        0);
    crypto_keyring_free(r);
    /* 64 keys fit, 65 do not */
    keys = malloc(65 * (klen + 1));
    ck_assert_ptr_nonnull(keys);
    for (i = 0; i < 65; i++) {
        memcpy(keys + i * (klen + 1), KEY1, klen);
        keys[i * (klen + 1) + klen] = ',';
    }
    keys[64 * (klen + 1) - 1] = '\0';
    ck_assert_int_eq(crypto_keyring_new(keys, &r), 0);
    ck_assert_uint_eq(crypto_keyring_count(r), 64);
    crypto_keyring_free(r);
    keys[64 * (klen + 1) - 1] = ',';
    keys[65 * (klen + 1) - 1] = '\0';
    ck_assert_int_eq(crypto_keyring_new(keys, &r), -EINVAL);
    free(keys);
}
END_TEST

/* --- malformed tokens ----------------------------------------------------- */

static char *b64url(const uint8_t *in, size_t len)
{
    char *out = malloc((len + 2) / 3 * 4 + 1);
    size_t i;

    ck_assert_ptr_nonnull(out);
    EVP_EncodeBlock((unsigned char *)out, in, (int)len);
    for (i = 0; out[i]; i++) {
        if (out[i] == '+')
            out[i] = '-';
        else if (out[i] == '/')
            out[i] = '_';
    }
    return out;
}

/*
 * A token built by hand under KEY1: version, ts, fixed IV, the given
 * ciphertext bytes (not encrypted: tests of structure and padding), and a
 * valid MAC over all of it.
 */
static char *forge(uint8_t version, uint64_t ts, const uint8_t *ct,
                   size_t ctlen)
{
    uint8_t raw[512];
    unsigned int maclen = 0;
    size_t n = 0;
    int i;

    ck_assert_uint_le(25 + ctlen + 32, sizeof raw);
    raw[n++] = version;
    for (i = 7; i >= 0; i--)
        raw[n++] = (uint8_t)(ts >> (8 * i));
    memcpy(raw + n, fixed_iv, 16);
    n += 16;
    memcpy(raw + n, ct, ctlen);
    n += ctlen;
    ck_assert_ptr_nonnull(
        HMAC(EVP_sha256(), KEY1_SIGN, 16, raw, n, raw + n, &maclen));
    return b64url(raw, n + maclen);
}

/* AES-128-CBC of in under KEY1 without padding (in: whole blocks). */
static void encrypt_raw(const uint8_t *in, size_t len, uint8_t *out)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int n = 0;

    ck_assert_ptr_nonnull(ctx);
    ck_assert_int_eq(EVP_EncryptInit_ex(ctx, EVP_aes_128_cbc(), NULL,
                                        (const unsigned char *)KEY1_ENC,
                                        fixed_iv),
                     1);
    EVP_CIPHER_CTX_set_padding(ctx, 0);
    ck_assert_int_eq(EVP_EncryptUpdate(ctx, out, &n, in, (int)len), 1);
    ck_assert_int_eq((size_t)n, len);
    EVP_CIPHER_CTX_free(ctx);
}

START_TEST(test_token_structure)
{
    struct crypto_keyring *r = ring_of(KEY1);
    uint8_t block[32], ct[32];
    char *tok;

    /* a correct forged token opens: the forging is right */
    memset(block, 16, 16);
    encrypt_raw(block, 16, ct);
    tok = forge(0x80, 10, ct, 16);
    ck_assert_int_eq(open_cmp(r, tok, 0, 10, ""), 0);
    free(tok);

    /* wrong version byte, even with a valid MAC */
    tok = forge(0x81, 10, ct, 16);
    ck_assert_int_eq(open_cmp(r, tok, 0, 10, NULL), -EBADMSG);
    free(tok);
    tok = forge(0x00, 10, ct, 16);
    ck_assert_int_eq(open_cmp(r, tok, 0, 10, NULL), -EBADMSG);
    free(tok);

    /* no ciphertext at all; half a block */
    tok = forge(0x80, 10, ct, 0);
    ck_assert_int_eq(open_cmp(r, tok, 0, 10, NULL), -EBADMSG);
    free(tok);
    tok = forge(0x80, 10, ct, 8);
    ck_assert_int_eq(open_cmp(r, tok, 0, 10, NULL), -EBADMSG);
    free(tok);

    /* bad PKCS#7 padding behind a valid MAC: 0, 17, inconsistent bytes */
    memset(block, 0, 16);
    encrypt_raw(block, 16, ct);
    tok = forge(0x80, 10, ct, 16);
    ck_assert_int_eq(open_cmp(r, tok, 0, 10, NULL), -EBADMSG);
    free(tok);
    memset(block, 17, 16);
    encrypt_raw(block, 16, ct);
    tok = forge(0x80, 10, ct, 16);
    ck_assert_int_eq(open_cmp(r, tok, 0, 10, NULL), -EBADMSG);
    free(tok);
    memset(block, 3, 16);
    block[14] = 2;
    encrypt_raw(block, 16, ct);
    tok = forge(0x80, 10, ct, 16);
    ck_assert_int_eq(open_cmp(r, tok, 0, 10, NULL), -EBADMSG);
    free(tok);
    /* valid padding of 3 opens to 13 bytes */
    memset(block, 'a', 13);
    memset(block + 13, 3, 3);
    encrypt_raw(block, 16, ct);
    tok = forge(0x80, 10, ct, 16);
    ck_assert_int_eq(open_cmp(r, tok, 0, 10, "aaaaaaaaaaaaa"), 0);
    free(tok);
    crypto_keyring_free(r);
}
END_TEST

START_TEST(test_token_text)
{
    struct crypto_keyring *r = ring_of(KEY1);
    char *tok = seal_str(r, "hello world", 50, fixed_iv);
    size_t len = strlen(tok);
    char *t = malloc(len + 8);
    char *huge;

    ck_assert_ptr_nonnull(t);
    ck_assert_int_eq(len % 4, 0);
    ck_assert_int_eq(open_cmp(r, tok, 0, 50, "hello world"), 0);

    /* without its '=' padding: still accepted (lenient, like keys) */
    ck_assert_int_eq(tok[len - 1], '=');
    memcpy(t, tok, len + 1);
    while (t[strlen(t) - 1] == '=')
        t[strlen(t) - 1] = '\0';
    ck_assert_int_eq(open_cmp(r, t, 0, 50, "hello world"), 0);
    /* wrong amount of padding */
    snprintf(t, len + 8, "%s=", tok);
    ck_assert_int_eq(open_cmp(r, t, 0, 50, NULL), -EBADMSG);
    memcpy(t, tok, len + 1);
    t[len - 1] = '\0';
    if (t[len - 2] == '=')
        ck_assert_int_eq(open_cmp(r, t, 0, 50, NULL), -EBADMSG);
    /* a standard-alphabet character, whitespace, a '=' in the middle */
    memcpy(t, tok, len + 1);
    t[10] = '+';
    ck_assert_int_eq(open_cmp(r, t, 0, 50, NULL), -EBADMSG);
    t[10] = ' ';
    ck_assert_int_eq(open_cmp(r, t, 0, 50, NULL), -EBADMSG);
    t[10] = '=';
    ck_assert_int_eq(open_cmp(r, t, 0, 50, NULL), -EBADMSG);
    snprintf(t, len + 8, "%s\n", tok);
    ck_assert_int_eq(open_cmp(r, t, 0, 50, NULL), -EBADMSG);
    snprintf(t, len + 8, " %s", tok);
    ck_assert_int_eq(open_cmp(r, t, 0, 50, NULL), -EBADMSG);
    /* a length no base64 text can have (4n + 1) */
    memcpy(t, tok, len + 1);
    t[len - 2] = 'A';
    t[len - 1] = 'A';
    t[len] = 'A';
    t[len + 1] = '\0';
    ck_assert_int_eq(open_cmp(r, t, 0, 50, NULL), -EBADMSG);
    /* a flipped character: bad MAC */
    memcpy(t, tok, len + 1);
    t[20] = t[20] == 'A' ? 'B' : 'A';
    ck_assert_int_eq(open_cmp(r, t, 0, 50, NULL), -EBADMSG);
    /* truncated by a block */
    memcpy(t, tok, len + 1);
    t[len - 24] = '\0';
    ck_assert_int_eq(open_cmp(r, t, 0, 50, NULL), -EBADMSG);
    /* empty, too short to hold anything */
    ck_assert_int_eq(open_cmp(r, "", 0, 50, NULL), -EBADMSG);
    ck_assert_int_eq(open_cmp(r, "gA==", 0, 50, NULL), -EBADMSG);
    ck_assert_int_eq(open_cmp(r, "====", 0, 50, NULL), -EBADMSG);
    /* more than the 1 MiB cap: refused before decoding */
    huge = malloc((1u << 20) + 2);
    ck_assert_ptr_nonnull(huge);
    memset(huge, 'A', (1u << 20) + 1);
    huge[(1u << 20) + 1] = '\0';
    ck_assert_int_eq(open_cmp(r, huge, 0, 50, NULL), -EBADMSG);
    free(huge);
    free(t);
    free(tok);
    crypto_keyring_free(r);
}
END_TEST

START_TEST(test_open_args)
{
    struct crypto_keyring *r = ring_of(KEY1);
    char *tok = seal_str(r, "x", 1, NULL);
    char *plain = NULL;
    size_t len = 0;

    ck_assert_int_eq(crypto_fernet_open(NULL, tok, 0, 1, &plain, &len),
                     -EINVAL);
    ck_assert_int_eq(crypto_fernet_open(r, NULL, 0, 1, &plain, &len), -EINVAL);
    ck_assert_int_eq(crypto_fernet_open(r, tok, 0, 1, NULL, &len), -EINVAL);
    ck_assert_int_eq(crypto_fernet_open(r, tok, 0, 1, &plain, NULL), -EINVAL);
    ck_assert_ptr_null(plain);
    free(tok);
    crypto_keyring_free(r);
}
END_TEST

/* --- time window ---------------------------------------------------------- */

START_TEST(test_time_window)
{
    struct crypto_keyring *r = ring_of(KEY1);
    char *tok = seal_str(r, "t", 1000, NULL);
    char *neg, *late;

    /* age: ts + ttl >= now passes */
    ck_assert_int_eq(open_cmp(r, tok, 60, 1060, "t"), 0);
    ck_assert_int_eq(open_cmp(r, tok, 60, 1061, NULL), -EBADMSG);
    ck_assert_int_eq(open_cmp(r, tok, 0, 999999, "t"), 0);
    ck_assert_int_eq(open_cmp(r, tok, -5, 999999, "t"), 0);
    /* skew: up to 60 s in the future passes */
    ck_assert_int_eq(open_cmp(r, tok, 60, 940, "t"), 0);
    ck_assert_int_eq(open_cmp(r, tok, 60, 939, NULL), -EBADMSG);
    ck_assert_int_eq(open_cmp(r, tok, 0, 0, "t"), 0);

    /* a timestamp past INT64_MAX (now_s = -1 is sealed as 2^64 - 1) is
     * from the far future */
    neg = seal_str(r, "n", -1, NULL);
    ck_assert_int_eq(open_cmp(r, neg, 60, INT64_MAX, NULL), -EBADMSG);
    ck_assert_int_eq(open_cmp(r, neg, 0, 1, "n"), 0);
    /* ts + ttl overflowing is "never expires" */
    late = seal_str(r, "l", INT64_MAX - 10, NULL);
    ck_assert_int_eq(open_cmp(r, late, INT64_MAX, INT64_MAX, "l"), 0);
    ck_assert_int_eq(open_cmp(r, late, 5, INT64_MAX, NULL), -EBADMSG);
    free(neg);
    free(late);
    free(tok);
    crypto_keyring_free(r);
}
END_TEST

/* --- helpers -------------------------------------------------------------- */

START_TEST(test_str_equal)
{
    ck_assert_int_eq(crypto_str_equal("token", "token"), 1);
    ck_assert_int_eq(crypto_str_equal("", ""), 1);
    ck_assert_int_eq(crypto_str_equal("token", "tokeN"), 0);
    ck_assert_int_eq(crypto_str_equal("token", "token2"), 0);
    ck_assert_int_eq(crypto_str_equal("token2", "token"), 0);
    ck_assert_int_eq(crypto_str_equal("", "x"), 0);
    ck_assert_int_eq(crypto_str_equal(NULL, "x"), 0);
    ck_assert_int_eq(crypto_str_equal("x", NULL), 0);
    ck_assert_int_eq(crypto_str_equal(NULL, NULL), 0);
}
END_TEST

START_TEST(test_random_and_free)
{
    uint8_t a[64], b[64];

    memset(a, 0, sizeof a);
    memset(b, 0, sizeof b);
    ck_assert_int_eq(crypto_random(a, sizeof a), 0);
    ck_assert_int_eq(crypto_random(b, sizeof b), 0);
    ck_assert_int_ne(memcmp(a, b, sizeof a), 0);
    ck_assert_int_eq(crypto_random(a, 0), 0);
    crypto_free_secret(NULL);
    crypto_free_secret(strdup("wipe me"));
}
END_TEST

/* --- fault injection ------------------------------------------------------ */

/*
 * One pass over every fault point: build rings, seal, open. Returns 0 if
 * everything worked; any failure must be a clean -ENOMEM or -EIO.
 */
static int one_pass(void)
{
    struct crypto_keyring *r = NULL, *rr = NULL;
    char *tok = NULL, *plain = NULL;
    size_t len = 0;
    int err;

    err = crypto_keyring_new(KEY2 "," KEY1, &r);
    if (err == 0)
        err = crypto_keyring_new_random(&rr);
    if (err == 0)
        err = crypto_fernet_seal(r, "fault", 5, 7, NULL, &tok);
    if (err == 0)
        err = crypto_fernet_open(r, tok, 10, 7, &plain, &len);
    if (err == 0)
        ck_assert_str_eq(plain, "fault");
    if (err != 0)
        ck_assert_msg(err == -ENOMEM || err == -EIO, "unclean error %d", err);
    crypto_free_secret(plain);
    free(tok);
    crypto_keyring_free(rr);
    crypto_keyring_free(r);
    return err;
}

START_TEST(test_fault_injection)
{
    int n, failures = 0;

    ck_assert_int_eq(one_pass(), 0);
    for (n = 1; n < 1000; n++) {
        crypto_fault_inject(n);
        if (one_pass() == 0)
            break; /* n is past the last fault point */
        failures++;
    }
    crypto_fault_inject(0);
    ck_assert_int_lt(n, 1000);
    /* every fault point failed the pass: allocs, RAND, HMAC, AES */
    ck_assert_int_ge(failures, 10);
    ck_assert_int_eq(one_pass(), 0);

    /* a failing HMAC on open of the second key is -EIO, not corruption */
    {
        struct crypto_keyring *r = ring_of(KEY2 "," KEY1);
        struct crypto_keyring *r1 = ring_of(KEY1);
        char *tok = seal_str(r1, "k1", 1, NULL);
        char *plain = NULL;
        size_t len;
        int err;

        /* fault points of open: 2 allocations to decode, then the HMAC
         * with the first key (KEY2) */
        crypto_fault_inject(3);
        err = crypto_fernet_open(r, tok, 0, 1, &plain, &len);
        crypto_fault_inject(0);
        ck_assert_int_eq(err, -EIO);
        ck_assert_ptr_null(plain);
        crypto_free_secret(plain);
        free(tok);
        crypto_keyring_free(r);
        crypto_keyring_free(r1);
    }
}
END_TEST

/* --- Python interoperability ---------------------------------------------- */

static int python_has_fernet(void)
{
    int rc = system("python3 -c 'import cryptography.fernet' >/dev/null 2>&1");

    return rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0;
}

/* Run a shell command and capture its stdout (trailing newline removed). */
static char *run_capture(const char *cmd)
{
    FILE *p = popen(cmd, "r");
    char buf[4096];
    size_t n;
    int rc;

    ck_assert_ptr_nonnull(p);
    n = fread(buf, 1, sizeof buf - 1, p);
    buf[n] = '\0';
    rc = pclose(p);
    ck_assert_msg(rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0,
                  "command failed: %s", cmd);
    while (n > 0 && buf[n - 1] == '\n')
        buf[--n] = '\0';
    return strdup(buf);
}

START_TEST(test_python_interop)
{
    struct crypto_keyring *r;
    char cmd[8192];
    char *tok, *out;
    int64_t now = (int64_t)time(NULL);

    if (!python_has_fernet()) {
        fprintf(stderr, "note: python3 cannot import cryptography.fernet; "
                        "skipping the interop test\n");
        return;
    }
    r = ring_of(KEY2 "," KEY1);

    /* C seals -> Python decrypts (with a TTL, as a strict reader would) */
    tok = seal_str(r, "p@ss w\xc3\xb6rd", now, NULL);
    snprintf(cmd, sizeof cmd,
             "python3 -c 'import sys; from cryptography.fernet import Fernet;"
             " sys.stdout.write(Fernet(sys.argv[1]).decrypt(sys.argv[2]"
             ".encode(), ttl=3600).hex())' '%s' '%s'",
             KEY2, tok);
    out = run_capture(cmd);
    ck_assert_str_eq(out, "704073732077c3b67264"); /* hex of the plaintext */
    free(out);
    free(tok);

    /* Python encrypts -> C opens, under either key of the ring */
    snprintf(cmd, sizeof cmd,
             "python3 -c 'import sys; from cryptography.fernet import Fernet;"
             " sys.stdout.write(Fernet(sys.argv[1]).encrypt("
             "b\"from python \\xe2\\x9c\\x93\").decode())' '%s'",
             KEY1);
    out = run_capture(cmd);
    ck_assert_int_eq(open_cmp(r, out, 60, now, "from python \xe2\x9c\x93"), 0);
    free(out);
    snprintf(cmd, sizeof cmd,
             "python3 -c 'import sys; from cryptography.fernet import Fernet;"
             " sys.stdout.write(Fernet(sys.argv[1]).encrypt_at_time("
             "b\"\", 499162800).decode())' '%s'",
             KEY2);
    out = run_capture(cmd);
    ck_assert_int_eq(open_cmp(r, out, 0, now, ""), 0);
    ck_assert_int_eq(open_cmp(r, out, 60, now, NULL), -EBADMSG);
    free(out);
    crypto_keyring_free(r);
}
END_TEST

static Suite *crypto_suite(void)
{
    Suite *s = suite_create("crypto");
    TCase *tc;

    tc = tcase_create("spec_vectors");
    tcase_add_test(tc, test_time_parse);
    tcase_add_test(tc, test_spec_generate);
    tcase_add_test(tc, test_spec_verify);
    tcase_add_test(tc, test_spec_invalid);
    suite_add_tcase(s, tc);

    tc = tcase_create("round_trip");
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_random_iv_and_empty);
    tcase_add_test(tc, test_seal_args);
    suite_add_tcase(s, tc);

    tc = tcase_create("keyring");
    tcase_add_test(tc, test_ring_rotation);
    tcase_add_test(tc, test_ring_random);
    tcase_add_loop_test(tc, test_ring_bad_keys, 0,
                        (int)(sizeof bad_keys / sizeof bad_keys[0]));
    tcase_add_test(tc, test_ring_limits);
    suite_add_tcase(s, tc);

    tc = tcase_create("malformed_tokens");
    tcase_add_test(tc, test_token_structure);
    tcase_add_test(tc, test_token_text);
    tcase_add_test(tc, test_open_args);
    suite_add_tcase(s, tc);

    tc = tcase_create("time_window");
    tcase_add_test(tc, test_time_window);
    suite_add_tcase(s, tc);

    tc = tcase_create("helpers");
    tcase_add_test(tc, test_str_equal);
    tcase_add_test(tc, test_random_and_free);
    suite_add_tcase(s, tc);

    tc = tcase_create("fault_injection");
    tcase_add_test(tc, test_fault_injection);
    suite_add_tcase(s, tc);

    tc = tcase_create("python_interop");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_python_interop);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    return testutil_run(crypto_suite());
}
