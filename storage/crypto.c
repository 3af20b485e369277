/* SPDX-License-Identifier: MIT */
/*
 * Fernet tokens and the key ring, with OpenSSL libcrypto.
 *
 * Design: a token is base64url(0x80 | ts(8, big-endian) | iv(16) |
 * AES-128-CBC/PKCS#7 ciphertext | HMAC-SHA256(signing key, all before)),
 * exactly as in the public Fernet spec and Python's cryptography.fernet.
 * Opening checks, in this order: the token text (length cap, URL-safe
 * base64 alphabet, padding), the structure (version byte, a whole number of
 * cipher blocks), the MAC with each key of the ring (CRYPTO_memcmp), the
 * time window (only when a TTL is given, as Python does), and last the
 * padding of the decrypted plaintext. The MAC is checked before anything
 * read from the token is trusted. Every invalid token is -EBADMSG; only
 * allocation failure (-ENOMEM) and libcrypto failure (-EIO) differ, so that
 * a caller never evicts an entry as corrupt because OpenSSL was short of
 * memory.
 *
 * Base64 goes through EVP_EncodeBlock/EVP_DecodeBlock with '-_' <-> '+/'
 * translated; the text is validated strictly first (alphabet, at most two
 * '=' and only at the end, a length that base64 can produce), because
 * EVP_DecodeBlock alone skips whitespace and counts padding as data.
 * Tokens with or without '=' padding are accepted (Python writes them
 * padded); keys likewise.
 *
 * Thread-safety: a key ring is immutable after creation and shared by all
 * threads; the functions keep no state except the test-only fault counter
 * (crypto_int.h). Ownership: the ring wipes its keys in
 * crypto_keyring_free(); every temporary buffer that held key material or
 * plaintext is wiped with OPENSSL_cleanse before it is freed.
 */
#include "config.h"

#include "storage/crypto.h"
#include "storage/crypto_int.h"

#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#define FERNET_VERSION 0x80
#define TS_LEN         8
#define IV_LEN         16
#define BLOCK_LEN      16
#define MAC_LEN        32
#define HALF_KEY_LEN   16
#define KEY_LEN        32
#define HDR_LEN        (1 + TS_LEN + IV_LEN)
/* Clock skew tolerated for a token from the future (Python: 60 s). */
#define MAX_CLOCK_SKEW 60
/* Caps: credentials are tiny; these only bound what untrusted input can
 * make us allocate. A sealed PLAIN_MAX plaintext fits in TOKEN_MAX. */
#define TOKEN_MAX (1u << 20)
#define PLAIN_MAX (512u << 10)
#define RING_MAX  64

struct fernet_key {
    uint8_t sign[HALF_KEY_LEN];
    uint8_t enc[HALF_KEY_LEN];
};

struct crypto_keyring {
    size_t n;
    struct fernet_key keys[]; /* n keys; keys[0] seals */
};

/* Test-only fault injection (crypto_int.h): > 0 counts down to a failure. */
static _Atomic int fault_countdown;

void crypto_fault_inject(int n)
{
    atomic_store(&fault_countdown, n > 0 ? n : 0);
}

/* A fault point: true if the test hook says this call must fail. */
static bool fault(void)
{
    if (atomic_load_explicit(&fault_countdown, memory_order_relaxed) <= 0)
        return false;
    return atomic_fetch_sub(&fault_countdown, 1) == 1;
}

static void *alloc(size_t len)
{
    return fault() ? NULL : malloc(len);
}

static void free_wiped(void *p, size_t len)
{
    if (!p)
        return;
    OPENSSL_cleanse(p, len);
    free(p);
}

void crypto_free_secret(char *p)
{
    if (p)
        free_wiped(p, strlen(p));
}

int crypto_random(void *buf, size_t len)
{
    unsigned char *p = buf;

    while (len > 0) {
        int n = len > INT_MAX ? INT_MAX : (int)len;

        if (fault() || RAND_bytes(p, n) != 1)
            return -EIO;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* --- base64url ---------------------------------------------------------- */

static bool b64url_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
           (c >= '0' && c <= '9') || c == '-' || c == '_';
}

/* Padded URL-safe base64 of in[0..len) as a new string; NULL on ENOMEM. */
static char *b64url_encode(const uint8_t *in, size_t len)
{
    size_t cap = (len + 2) / 3 * 4 + 1;
    char *out = alloc(cap);
    size_t i;

    if (!out)
        return NULL;
    EVP_EncodeBlock((unsigned char *)out, in, (int)len);
    for (i = 0; out[i] != '\0'; i++) {
        if (out[i] == '+')
            out[i] = '-';
        else if (out[i] == '/')
            out[i] = '_';
    }
    return out;
}

/*
 * Decode s[0..len) strictly. Returns 0 with a new buffer in *out (wipe and
 * free; *outlen bytes of data, allocated size in *cap), -EBADMSG for text
 * that is not base64url, -ENOMEM.
 */
static int b64url_decode(const char *s, size_t len, uint8_t **out,
                         size_t *outlen, size_t *cap)
{
    size_t data = len, pad, i, tlen;
    char *text = NULL;
    uint8_t *buf = NULL;
    int n = 0, err;

    while (data > 0 && s[data - 1] == '=' && len - data < 2)
        data--;
    for (i = 0; i < data; i++) {
        if (!b64url_char(s[i]))
            return -EBADMSG;
    }
    /* Padding, if present, must complete a quantum; data length % 4 == 1
     * cannot come from any byte string. */
    if (data == 0 || data % 4 == 1 || (data < len && len % 4 != 0))
        return -EBADMSG;
    pad = (4 - data % 4) % 4;
    tlen = data + pad;
    text = alloc(tlen + 1);
    buf = alloc(tlen / 4 * 3 + 1);
    err = text && buf ? 0 : -ENOMEM;
    if (err == 0) {
        for (i = 0; i < data; i++)
            text[i] = s[i] == '-' ? '+' : s[i] == '_' ? '/' : s[i];
        memset(text + data, '=', pad);
        text[tlen] = '\0';
        /* EVP_DecodeBlock counts '=' as zero bytes of data: take them
         * off. It cannot fail on validated text; checked all the same. */
        n = EVP_DecodeBlock(buf, (const unsigned char *)text, (int)tlen);
        err = n >= (int)pad ? 0 : -EBADMSG;
    }
    if (err == 0) {
        *out = buf;
        *outlen = (size_t)n - pad;
        *cap = tlen / 4 * 3 + 1;
        buf = NULL;
    }
    free_wiped(text, tlen + 1);
    free_wiped(buf, tlen / 4 * 3 + 1);
    return err;
}

/* --- primitives ---------------------------------------------------------- */

/* HMAC-SHA256 with a 16-byte key. 0 or -EIO. */
static int hmac_sha256(const uint8_t key[HALF_KEY_LEN], const uint8_t *data,
                       size_t len, uint8_t mac[MAC_LEN])
{
    unsigned int maclen = 0;
    bool ok = !fault() && HMAC(EVP_sha256(), key, HALF_KEY_LEN, data, len, mac,
                               &maclen) != NULL;

    return ok && maclen == MAC_LEN ? 0 : -EIO;
}

/*
 * AES-128-CBC with PKCS#7 padding; enc = 1 encrypts, 0 decrypts. out must
 * hold len + BLOCK_LEN bytes. Returns 0 and *outlen, -ENOMEM, -EIO when
 * libcrypto fails, or -EBADMSG when the final block does not check out
 * (for decryption: bad padding, the only way a MAC-verified token fails).
 */
static int aes_cbc(int enc, const uint8_t key[HALF_KEY_LEN],
                   const uint8_t iv[IV_LEN], const uint8_t *in, size_t len,
                   uint8_t *out, size_t *outlen)
{
    EVP_CIPHER_CTX *ctx = fault() ? NULL : EVP_CIPHER_CTX_new();
    int n1 = 0, n2 = 0;
    bool started, done;

    if (!ctx)
        return -ENOMEM;
    started =
        !fault() && len <= INT_MAX &&
        EVP_CipherInit_ex(ctx, EVP_aes_128_cbc(), NULL, key, iv, enc) == 1 &&
        EVP_CipherUpdate(ctx, out, &n1, in, (int)len) == 1;
    done = started && EVP_CipherFinal_ex(ctx, out + n1, &n2) == 1;
    EVP_CIPHER_CTX_free(ctx);
    *outlen = done ? (size_t)n1 + (size_t)n2 : 0;
    return !started ? -EIO : !done ? -EBADMSG : 0;
}

static void put_be64(uint8_t *p, uint64_t v)
{
    int i;

    for (i = 7; i >= 0; i--) {
        p[i] = (uint8_t)(v & 0xff);
        v >>= 8;
    }
}

static uint64_t get_be64(const uint8_t *p)
{
    uint64_t v = 0;
    int i;

    for (i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

/* --- key ring ------------------------------------------------------------ */

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

/* Decode one key s[0..len) (already trimmed) into *key: 0 or -EINVAL /
 * -ENOMEM. */
static int parse_key(const char *s, size_t len, struct fernet_key *key)
{
    uint8_t *raw = NULL;
    size_t rawlen = 0, cap = 0;
    int err = b64url_decode(s, len, &raw, &rawlen, &cap);

    if (err == -EBADMSG || (err == 0 && rawlen != KEY_LEN))
        err = -EINVAL;
    if (err == 0) {
        memcpy(key->sign, raw, HALF_KEY_LEN);
        memcpy(key->enc, raw + HALF_KEY_LEN, HALF_KEY_LEN);
    }
    free_wiped(raw, cap);
    return err;
}

static size_t ring_size(size_t n)
{
    return sizeof(struct crypto_keyring) + n * sizeof(struct fernet_key);
}

int crypto_keyring_new(const char *keys, struct crypto_keyring **out)
{
    struct crypto_keyring *ring = NULL;
    const char *p;
    size_t n = 1;
    int err = 0;

    if (!keys || !out)
        return -EINVAL;
    for (p = keys; *p != '\0'; p++)
        n += *p == ',';
    if (n > RING_MAX)
        return -EINVAL;
    ring = alloc(ring_size(n));
    if (!ring)
        return -ENOMEM;
    ring->n = 0;
    for (p = keys; err == 0 && ring->n < n; ring->n++) {
        size_t len = strcspn(p, ",");
        const char *next = p + len + (p[len] == ',');

        while (len > 0 && is_space(*p)) {
            p++;
            len--;
        }
        while (len > 0 && is_space(p[len - 1]))
            len--;
        err = parse_key(p, len, &ring->keys[ring->n]);
        p = next;
    }
    if (err < 0) {
        free_wiped(ring, ring_size(n));
        return err;
    }
    *out = ring;
    return 0;
}

int crypto_keyring_new_random(struct crypto_keyring **out)
{
    struct crypto_keyring *ring;
    int err;

    if (!out)
        return -EINVAL;
    ring = alloc(ring_size(1));
    if (!ring)
        return -ENOMEM;
    ring->n = 1;
    err = crypto_random(&ring->keys[0], sizeof ring->keys[0]);
    if (err < 0) {
        free_wiped(ring, ring_size(1));
        return err;
    }
    *out = ring;
    return 0;
}

void crypto_keyring_free(struct crypto_keyring *ring)
{
    if (ring)
        free_wiped(ring, ring_size(ring->n));
}

size_t crypto_keyring_count(const struct crypto_keyring *ring)
{
    return ring ? ring->n : 0;
}

/* --- Fernet -------------------------------------------------------------- */

int crypto_fernet_seal(const struct crypto_keyring *ring, const void *plain,
                       size_t len, int64_t now_s, const uint8_t *iv,
                       char **token)
{
    const struct fernet_key *key;
    size_t ctlen, rawlen, n = 0;
    uint8_t *raw = NULL;
    char *tok = NULL;
    int err;

    if (!ring || ring->n == 0 || !token || (!plain && len > 0))
        return -EINVAL;
    if (len > PLAIN_MAX)
        return -E2BIG;
    key = &ring->keys[0];
    ctlen = (len / BLOCK_LEN + 1) * BLOCK_LEN;
    /* The cipher writes at most ctlen bytes at raw + HDR_LEN; the MAC
     * follows the ciphertext. */
    rawlen = HDR_LEN + ctlen + MAC_LEN;
    raw = alloc(rawlen);
    if (!raw)
        return -ENOMEM;
    raw[0] = FERNET_VERSION;
    put_be64(raw + 1, (uint64_t)now_s);
    if (iv)
        memcpy(raw + 1 + TS_LEN, iv, IV_LEN);
    err = iv ? 0 : crypto_random(raw + 1 + TS_LEN, IV_LEN);
    if (err < 0)
        goto out;
    err = aes_cbc(1, key->enc, raw + 1 + TS_LEN, plain ? plain : "", len,
                  raw + HDR_LEN, &n);
    if (err < 0 || n != ctlen) {
        err = err == -ENOMEM ? -ENOMEM : -EIO; /* no padding error here */
        goto out;
    }
    err = hmac_sha256(key->sign, raw, HDR_LEN + ctlen, raw + HDR_LEN + ctlen);
    if (err < 0)
        goto out;
    tok = b64url_encode(raw, rawlen);
    if (!tok) {
        err = -ENOMEM;
        goto out;
    }
    *token = tok;
out:
    free_wiped(raw, rawlen);
    return err;
}

/*
 * The key of the ring whose MAC matches raw[0..len) (MAC at the end):
 * 0 and *which, -EBADMSG if none matches, -EIO.
 */
static int find_key(const struct crypto_keyring *ring, const uint8_t *raw,
                    size_t len, const struct fernet_key **which)
{
    uint8_t mac[MAC_LEN];
    size_t i;
    int err = -EBADMSG;

    for (i = 0; i < ring->n && err == -EBADMSG; i++) {
        err = hmac_sha256(ring->keys[i].sign, raw, len - MAC_LEN, mac);
        if (err == 0 && CRYPTO_memcmp(mac, raw + len - MAC_LEN, MAC_LEN) != 0)
            err = -EBADMSG;
        if (err == 0)
            *which = &ring->keys[i];
    }
    OPENSSL_cleanse(mac, sizeof mac);
    return err;
}

/* The Fernet time rule (only with a TTL): not older than ttl_s, not more
 * than MAX_CLOCK_SKEW seconds in the future. */
static bool time_ok(uint64_t ts, int64_t ttl_s, int64_t now_s)
{
    int64_t t, limit;

    if (ttl_s <= 0)
        return true;
    if (ts > (uint64_t)INT64_MAX)
        return false;
    t = (int64_t)ts;
    if (t - MAX_CLOCK_SKEW > now_s)
        return false;
    /* t + ttl_s overflowing means "expires after the end of time". */
    return __builtin_add_overflow(t, ttl_s, &limit) || limit >= now_s;
}

int crypto_fernet_open(const struct crypto_keyring *ring, const char *token,
                       int64_t ttl_s, int64_t now_s, char **plain, size_t *len)
{
    const struct fernet_key *key = NULL;
    uint8_t *raw = NULL, *pt = NULL;
    size_t tlen, rawlen = 0, cap = 0, ctlen = 0, ptcap = 0, n = 0;
    int err;

    if (!ring || !token || !plain || !len)
        return -EINVAL;
    tlen = strnlen(token, TOKEN_MAX + 1);
    if (tlen > TOKEN_MAX)
        return -EBADMSG;
    err = b64url_decode(token, tlen, &raw, &rawlen, &cap);
    if (err < 0)
        return err;
    if (rawlen < HDR_LEN + BLOCK_LEN + MAC_LEN || raw[0] != FERNET_VERSION ||
        (rawlen - HDR_LEN - MAC_LEN) % BLOCK_LEN != 0) {
        err = -EBADMSG;
        goto out;
    }
    err = find_key(ring, raw, rawlen, &key);
    if (err < 0)
        goto out;
    if (!time_ok(get_be64(raw + 1), ttl_s, now_s)) {
        err = -EBADMSG;
        goto out;
    }
    ctlen = rawlen - HDR_LEN - MAC_LEN;
    ptcap = ctlen + BLOCK_LEN + 1;
    pt = alloc(ptcap);
    if (!pt) {
        err = -ENOMEM;
        goto out;
    }
    err = aes_cbc(0, key->enc, raw + 1 + TS_LEN, raw + HDR_LEN, ctlen, pt, &n);
    if (err < 0)
        goto out;
    pt[n] = '\0';
    *plain = (char *)pt;
    *len = n;
    pt = NULL;
out:
    free_wiped(pt, ptcap);
    free_wiped(raw, cap);
    return err;
}

/* --- constant-time comparison -------------------------------------------- */

int crypto_str_equal(const char *a, const char *b)
{
    uint8_t da[SHA256_DIGEST_LENGTH] = {0}, db[SHA256_DIGEST_LENGTH] = {0};
    size_t la, lb;
    bool ok;

    if (!a || !b)
        return 0;
    /* Comparing digests makes the time independent of where the strings
     * differ, and of b's content when the lengths differ. */
    la = strlen(a);
    lb = strlen(b);
    ok = SHA256((const unsigned char *)a, la, da) != NULL &&
         SHA256((const unsigned char *)b, lb, db) != NULL;
    ok = (CRYPTO_memcmp(da, db, sizeof da) == 0) & ok & (la == lb);
    OPENSSL_cleanse(da, sizeof da);
    OPENSSL_cleanse(db, sizeof db);
    return ok ? 1 : 0;
}
