/* SPDX-License-Identifier: MIT */
/*
 * libFuzzer harness of the JSONL entry codec (storage/formats.c).
 *
 * Why: the line codec reads bytes back from L2 shard files and from import
 * bodies; a damaged or hostile line must come back as -EBADMSG (the entry
 * is evicted and counted), never as a crash or as an entry that breaks an
 * invariant later. And what we accept we must be able to write back: an
 * entry that decodes but whose encoding does not decode again would be
 * lost at the next compaction of its shard.
 *
 * Invariants (trap on violation):
 *  - formats_entry_from_line() returns 0, -EBADMSG with a non-empty reason,
 *    or -ENOMEM; key_out is "" or a valid key, and on success the entry's;
 *  - on success the entry passes entry_validate(), and
 *    line1 = to_line(entry) decodes again (entry2) with
 *    to_line(entry2) == line1 byte for byte (a fixed point after one
 *    round: the input itself may be spelt differently);
 *  - line1 is one line: ends in '\n', no other '\n', no NUL;
 *  - formats_line_is_tombstone(): when it says yes, the key is valid and
 *    the canonical tombstone line of that key is recognised as well, with
 *    the same key; a line cannot be both a tombstone and an entry.
 *
 * The input is passed with its exact length and no terminating NUL (the
 * buffer is an exact-size copy, so ASan sees any read past the end).
 */
#include "config.h"

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "storage/entry.h"
#include "storage/formats.h"

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

/* Decode line[0..len) and check the outcome; returns the error code. */
static int decode_checked(const char *line, size_t len, struct entry **out)
{
    char key[ENTRY_KEY_LEN + 1];
    const char *reason = NULL;
    int err;

    memset(key, 'Z', sizeof key);
    *out = NULL;
    err = formats_entry_from_line(line, len, out, key, &reason);
    CHECK(memchr(key, '\0', sizeof key) != NULL);
    CHECK(key[0] == '\0' || entry_key_valid(key));
    if (err < 0) {
        CHECK(err == -EBADMSG || err == -ENOMEM);
        CHECK(reason != NULL && reason[0] != '\0');
        CHECK(*out == NULL);
        return err;
    }
    CHECK(err == 0 && *out != NULL);
    CHECK(strcmp(key, (*out)->key) == 0);
    CHECK(entry_validate(*out, &reason) == 0);
    return 0;
}

static void check_one_line(const char *line, size_t len)
{
    CHECK(len > 0 && line[len - 1] == '\n');
    CHECK(memchr(line, '\n', len - 1) == NULL);
    CHECK(memchr(line, '\0', len) == NULL);
}

static void check_round_trip(const struct entry *e)
{
    struct entry *e2 = NULL;
    char *line1 = NULL, *line2 = NULL, *copy;
    size_t len1 = 0, len2 = 0;
    int err;

    if (formats_entry_to_line(e, &line1, &len1) < 0)
        return; /* -ENOMEM */
    check_one_line(line1, len1);

    /* exact-size copy: the decoder must not rely on the NUL */
    copy = malloc(len1);
    if (!copy)
        goto out;
    memcpy(copy, line1, len1);
    err = decode_checked(copy, len1, &e2);
    free(copy);
    if (err == -ENOMEM)
        goto out;
    CHECK(err == 0); /* we wrote a line we cannot read back */
    CHECK(strcmp(e2->key, e->key) == 0);
    if (formats_entry_to_line(e2, &line2, &len2) < 0)
        goto out;
    CHECK(len2 == len1 && memcmp(line1, line2, len1) == 0);
out:
    entry_unref(e2);
    free(line1);
    free(line2);
}

static void check_tombstone(const char *line, size_t len, int was_entry)
{
    char key[ENTRY_KEY_LEN + 1], key2[ENTRY_KEY_LEN + 1];
    char *tomb = NULL;
    size_t tlen = 0;

    if (!formats_line_is_tombstone(line, len, key))
        return;
    CHECK(!was_entry);
    CHECK(entry_key_valid(key));
    if (formats_tombstone_line(key, &tomb, &tlen) < 0)
        return;
    check_one_line(tomb, tlen);
    CHECK(formats_line_is_tombstone(tomb, tlen, key2) == 1);
    CHECK(strcmp(key, key2) == 0);
    free(tomb);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct entry *e = NULL;
    char *line = malloc(size ? size : 1);
    int err;

    if (!line)
        return 0;
    memcpy(line, data, size);

    err = decode_checked(line, size, &e);
    if (err == 0)
        check_round_trip(e);
    check_tombstone(line, size, err == 0);

    entry_unref(e);
    free(line);
    return 0;
}
