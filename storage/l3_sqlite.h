/* SPDX-License-Identifier: MIT */
/* L3: SQLite (WAL) with a group-commit writer thread. See l3_sqlite.c. */
#ifndef STORAGE_L3_SQLITE_H
#define STORAGE_L3_SQLITE_H

#include "storage/tier.h"

/* Opens (creating) DIR/cache.db; a file SQLite cannot open as a database is
 * renamed to cache.db.corrupt-<unix-seconds> (logged at ERROR) and a new one
 * created. capacity 0 = unlimited. Starts the writer thread. Does not read
 * all rows. Returns 0 and a new tier, or -errno. */
int l3_sqlite_open(const char *data_dir, size_t capacity, struct tier **out);

#endif
