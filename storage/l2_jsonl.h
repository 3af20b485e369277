/* SPDX-License-Identifier: MIT */
/* L2: append-only JSONL shards (Bitcask). See l2_jsonl.c. */
#ifndef STORAGE_L2_JSONL_H
#define STORAGE_L2_JSONL_H

#include "storage/tier.h"

#define L2_SHARDS 16

/* Opens (creating) DIR/l2/shard-XX.jsonl, rebuilds the in-memory index from
 * the shards (skipping and counting corrupt lines, truncating a torn last
 * line), bounded to capacity entries (>= 1). Returns 0 and a new tier,
 * or -errno. */
int l2_jsonl_open(const char *data_dir, size_t capacity, struct tier **out);

#endif
