/* SPDX-License-Identifier: MIT */
/*
 * Fernet tokens (the public Fernet spec: version 0x80, 64-bit big-endian
 * timestamp, 128-bit IV, AES-128-CBC with PKCS#7 padding, HMAC-SHA256 over
 * all of that, the whole token URL-safe base64 with padding), with OpenSSL
 * libcrypto. Interoperable with Python's cryptography.fernet.
 *
 * A key ring holds one or more 32-byte keys (signing key = first 16 bytes,
 * encryption key = last 16): seal with the first, open with any (rotation).
 *
 * Thread-safety: a key ring is immutable after crypto_keyring_new() and may
 * be shared by every thread. Ownership: keys are wiped (OPENSSL_cleanse) in
 * crypto_keyring_free(); plaintext buffers returned by crypto_fernet_open()
 * are the caller's to wipe and free with crypto_free_secret().
 */
#ifndef STORAGE_CRYPTO_H
#define STORAGE_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

struct crypto_keyring;

/*
 * Build a ring from a comma-separated list of URL-safe base64 keys (each
 * decoding to exactly 32 bytes; surrounding spaces ignored). Returns 0 and
 * *out (caller frees with crypto_keyring_free), -EINVAL for a malformed key
 * (the message never quotes the key), -ENOMEM.
 */
int crypto_keyring_new(const char *keys, struct crypto_keyring **out);
/* A ring with one random key (--ephemeral-key). */
int crypto_keyring_new_random(struct crypto_keyring **out);
void crypto_keyring_free(struct crypto_keyring *ring);
size_t crypto_keyring_count(const struct crypto_keyring *ring);

/*
 * Seal plaintext (len bytes) at time now_s (seconds) with the ring's first
 * key; iv is 16 bytes or NULL for a random IV (tests pass a fixed one).
 * Returns 0 and a new NUL-terminated token in *token (caller frees), or
 * -ENOMEM / -EIO (OpenSSL failure), -E2BIG (plaintext over 512 KiB),
 * -EINVAL (NULL arguments).
 */
int crypto_fernet_seal(const struct crypto_keyring *ring, const void *plain,
                       size_t len, int64_t now_s, const uint8_t *iv,
                       char **token);

/*
 * Open token with any key of the ring. ttl_s <= 0 means no TTL check;
 * otherwise a token older than ttl_s or more than 60 s in the future of
 * now_s is rejected. Returns 0 and a new NUL-terminated plaintext in *plain
 * (length in *len; caller frees with crypto_free_secret), or -EBADMSG for
 * any invalid token (bad base64, version, length, MAC, padding, time);
 * -EIO when libcrypto itself fails (never reported as corruption),
 * -ENOMEM, -EINVAL (NULL arguments).
 */
int crypto_fernet_open(const struct crypto_keyring *ring, const char *token,
                       int64_t ttl_s, int64_t now_s, char **plain,
                       size_t *len);

/* Wipe (OPENSSL_cleanse) and free a secret buffer. NULL-safe. */
void crypto_free_secret(char *p);

/* Constant-time comparison of two strings (API tokens): 1 if equal. */
int crypto_str_equal(const char *a, const char *b);

/* Fill buf with len cryptographically random bytes: 0 or -EIO. */
int crypto_random(void *buf, size_t len);

#endif
