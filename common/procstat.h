/* SPDX-License-Identifier: MIT */
/*
 * Process statistics read from /proc, for the process_* metrics (api/ never
 * touches files, so it asks this helper).
 */
#ifndef COMMON_PROCSTAT_H
#define COMMON_PROCSTAT_H

#include <stdint.h>

struct procstat {
    uint64_t resident_bytes;    /* VmRSS */
    uint64_t virtual_bytes;     /* VmSize */
    uint64_t open_fds;          /* entries in /proc/self/fd */
    uint64_t max_fds;           /* RLIMIT_NOFILE soft limit */
    double cpu_seconds;         /* utime + stime */
    double start_time_seconds;  /* Unix time the process started */
};

/* Fill *out. Returns 0, or -errno if /proc could not be read. */
int procstat_read(struct procstat *out);

#endif
