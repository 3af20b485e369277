/* SPDX-License-Identifier: MIT */
/* L1: in-memory hash table + LRU list, bounded capacity. See l1_mem.c. */
#ifndef STORAGE_L1_MEM_H
#define STORAGE_L1_MEM_H

#include "storage/tier.h"

/* capacity >= 1. Returns 0 and a new tier (free with tier_close), -EINVAL,
 * -ENOMEM. */
int l1_mem_open(size_t capacity, struct tier **out);

#endif
