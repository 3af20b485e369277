/* SPDX-License-Identifier: MIT */
/*
 * Logging: one line per event on stderr, as text or JSON lines.
 *
 * The level is tested in the macro before the arguments are evaluated
 * (Redis's serverLog idea), so a debug line costs one load when disabled.
 * Each line carries a timestamp, the level, the module and the message,
 * then optional key=value pairs. Never pass credentials, tokens or bodies.
 * Thread-safety: log_write() formats into a local buffer and emits it with
 * one write(2), so lines from different threads never interleave; no lock.
 */
#ifndef COMMON_LOG_H
#define COMMON_LOG_H

#include <stdarg.h>

enum log_level {
    LOG_LEVEL_DEBUG = 0,
    LOG_LEVEL_INFO = 1,
    LOG_LEVEL_WARN = 2,
    LOG_LEVEL_ERROR = 3,
};

enum log_format {
    LOG_FORMAT_TEXT = 0,
    LOG_FORMAT_JSON = 1,
};

/* Current threshold; read by the macros below. */
extern int log_threshold;

void log_set_level(enum log_level level);
void log_set_format(enum log_format fmt);
/* Redirect output to fd (default 2); for tests. */
void log_set_fd(int fd);

/* "debug", "info", "warn"/"warning", "error" -> 0 and *out; else -EINVAL. */
int log_level_parse(const char *s, enum log_level *out);

/*
 * Write one line. kv is NULL or a NULL-terminated list of key, value string
 * pairs appended after the message. errnum != 0 appends ": <strerror_r>".
 */
void log_write(enum log_level level, const char *module, int errnum,
               const char *const *kv, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
void log_vwrite(enum log_level level, const char *module, int errnum,
                const char *const *kv, const char *fmt, va_list ap)
    __attribute__((format(printf, 5, 0)));

#ifndef LOG_MODULE
#define LOG_MODULE "main"
#endif

#define log_at(lvl, errnum, ...)                                               \
    do {                                                                       \
        if ((int)(lvl) >= log_threshold)                                       \
            log_write((lvl), LOG_MODULE, (errnum), NULL, __VA_ARGS__);         \
    } while (0)

#define log_debug(...) log_at(LOG_LEVEL_DEBUG, 0, __VA_ARGS__)
#define log_info(...) log_at(LOG_LEVEL_INFO, 0, __VA_ARGS__)
#define log_warn(...) log_at(LOG_LEVEL_WARN, 0, __VA_ARGS__)
#define log_error(...) log_at(LOG_LEVEL_ERROR, 0, __VA_ARGS__)
/* The _errno variants append strerror_r(errnum) (OpenBSD warn vs warnx). */
#define log_warn_errno(e, ...) log_at(LOG_LEVEL_WARN, (e), __VA_ARGS__)
#define log_error_errno(e, ...) log_at(LOG_LEVEL_ERROR, (e), __VA_ARGS__)

/* With key=value pairs: log_kv(LOG_LEVEL_INFO, kv, "request") */
#define log_kv(lvl, kv, ...)                                                   \
    do {                                                                       \
        if ((int)(lvl) >= log_threshold)                                       \
            log_write((lvl), LOG_MODULE, 0, (kv), __VA_ARGS__);                \
    } while (0)

#endif
