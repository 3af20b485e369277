/* SPDX-License-Identifier: MIT */
/*
 * Process statistics from /proc for the process_* metrics, as the
 * Prometheus client libraries compute them: VmRSS and VmSize from
 * /proc/self/status, the open descriptors in /proc/self/fd, the
 * RLIMIT_NOFILE soft limit, utime + stime from /proc/self/stat, and the
 * start time as btime (/proc/stat) + starttime / CLK_TCK.
 *
 * Design: /proc/self/status and /proc/self/stat are read whole into a
 * bounded stack buffer with read(2) (a few KiB), /proc/stat line by line,
 * and all are parsed without scanf; /proc/self/stat's
 * second field (comm) may hold spaces and parentheses, so fields are
 * counted from the LAST ')'. Thread-safety: no shared state; safe to call
 * from any thread. Ownership: nothing is allocated.
 */
#include "config.h"

#include "common/procstat.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define PROC_BUF 8192

/* Read path into buf (NUL-terminated, truncated at cap - 1 bytes). */
static int read_file(const char *path, char *buf, size_t cap)
{
    size_t len = 0;
    int fd, err = 0;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    while (len < cap - 1) {
        ssize_t n = read(fd, buf + len, cap - 1 - len);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            err = -errno;
            break;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    close(fd);
    buf[len] = '\0';
    return err;
}

/* Unsigned decimal at *p (leading blanks skipped): 0 and *out, or -EIO. */
static int parse_u64(const char *p, char **end, uint64_t *out)
{
    unsigned long long v;

    while (*p == ' ' || *p == '\t')
        p++;
    if (*p < '0' || *p > '9')
        return -EIO;
    errno = 0;
    v = strtoull(p, end, 10);
    if (errno != 0)
        return -EIO;
    *out = v;
    return 0;
}

/* The value of "name:" in /proc/self/status, given in kB, as bytes. */
static int status_kb(const char *status, const char *name, uint64_t *bytes)
{
    size_t nlen = strlen(name);
    const char *line = status;
    uint64_t kb;

    while (line && *line) {
        if (strncmp(line, name, nlen) == 0 && line[nlen] == ':') {
            if (parse_u64(line + nlen + 1, NULL, &kb) < 0)
                return -EIO;
            *bytes = kb * 1024;
            return 0;
        }
        line = strchr(line, '\n');
        if (line)
            line++;
    }
    return -EIO;
}

static int count_fds(uint64_t *out)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *de;
    uint64_t n = 0;

    if (!d)
        return -errno;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] != '.')
            n++;
    }
    closedir(d);
    /* The directory stream's own descriptor was counted too. */
    *out = n > 0 ? n - 1 : 0;
    return 0;
}

/* utime, stime and starttime (clock ticks) from /proc/self/stat. */
static int self_stat(uint64_t *utime, uint64_t *stime, uint64_t *start)
{
    char buf[PROC_BUF];
    char *p;
    int field, err;

    err = read_file("/proc/self/stat", buf, sizeof buf);
    if (err < 0)
        return err;
    p = strrchr(buf, ')');
    if (!p)
        return -EIO;
    p++;
    /* After ')' comes field 3 (state); utime is 14, stime 15, start 22. */
    for (field = 3; field <= 22; field++) {
        uint64_t v = 0;

        while (*p == ' ')
            p++;
        if (*p == '\0')
            return -EIO;
        if (field == 3) {
            p++;
            continue;
        }
        if (field < 14 || (field > 15 && field < 22)) {
            /* fields 4..13 and 16..21 may be negative: skip the token */
            p += strcspn(p, " ");
            continue;
        }
        if (parse_u64(p, &p, &v) < 0)
            return -EIO;
        if (field == 14)
            *utime = v;
        else if (field == 15)
            *stime = v;
        else
            *start = v;
    }
    return 0;
}

/* btime from /proc/stat. Streamed line by line: the "intr" line before it
 * can be far longer than any sensible buffer on a many-CPU machine. */
static int boot_time(uint64_t *btime)
{
    FILE *f = fopen("/proc/stat", "re");
    char line[256];
    bool at_start = true;
    int err = -EIO;

    if (!f)
        return -errno;
    while (fgets(line, sizeof line, f)) {
        bool starts = at_start;

        at_start = strchr(line, '\n') != NULL;
        if (starts && strncmp(line, "btime ", 6) == 0) {
            err = parse_u64(line + 6, NULL, btime);
            break;
        }
    }
    fclose(f);
    return err;
}

int procstat_read(struct procstat *out)
{
    struct procstat ps = {0};
    char status[PROC_BUF];
    uint64_t utime = 0, stime = 0, start = 0, btime = 0;
    struct rlimit rl;
    long tck = sysconf(_SC_CLK_TCK);
    int err;

    if (!out)
        return -EINVAL;
    if (tck <= 0)
        return -EIO;
    err = read_file("/proc/self/status", status, sizeof status);
    if (err == 0)
        err = status_kb(status, "VmRSS", &ps.resident_bytes);
    if (err == 0)
        err = status_kb(status, "VmSize", &ps.virtual_bytes);
    if (err == 0)
        err = count_fds(&ps.open_fds);
    if (err == 0)
        err = getrlimit(RLIMIT_NOFILE, &rl) == 0 ? 0 : -errno;
    if (err == 0)
        err = self_stat(&utime, &stime, &start);
    if (err == 0)
        err = boot_time(&btime);
    if (err < 0)
        return err;
    ps.max_fds =
        rl.rlim_cur == RLIM_INFINITY ? UINT64_MAX : (uint64_t)rl.rlim_cur;
    ps.cpu_seconds = (double)(utime + stime) / (double)tck;
    ps.start_time_seconds = (double)btime + (double)start / (double)tck;
    *out = ps;
    return 0;
}
