/* SPDX-License-Identifier: MIT */
/*
 * Logging to stderr, one line per event, text or JSON.
 *
 * Design: each line is formatted into a stack buffer and written with a
 * single write(2), which the kernel keeps whole for a pipe or file (lines
 * are capped at LOG_LINE_MAX, well under PIPE_BUF-free limits for regular
 * files), so no lock is needed and threads never interleave. The level and
 * format are set once at start-up, before threads start; the threshold is
 * read by the macros in log.h without synchronisation beyond that.
 * Callers never pass secrets: this module cannot tell.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "common/clock.h"
#include "common/log.h"

#define LOG_LINE_MAX 4096

int log_threshold = LOG_LEVEL_INFO;
static enum log_format log_fmt = LOG_FORMAT_TEXT;
static int log_fd = 2;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_set_level(enum log_level level)
{
    log_threshold = (int)level;
}

void log_set_format(enum log_format fmt)
{
    log_fmt = fmt;
}

void log_set_fd(int fd)
{
    log_fd = fd;
}

int log_level_parse(const char *s, enum log_level *out)
{
    static const struct {
        const char *name;
        enum log_level level;
    } names[] = {
        {"debug", LOG_LEVEL_DEBUG}, {"info", LOG_LEVEL_INFO},
        {"warn", LOG_LEVEL_WARN},   {"warning", LOG_LEVEL_WARN},
        {"error", LOG_LEVEL_ERROR},
    };

    for (size_t i = 0; s && i < sizeof names / sizeof names[0]; i++) {
        if (strcasecmp(s, names[i].name) == 0) {
            *out = names[i].level;
            return 0;
        }
    }
    return -EINVAL;
}

/* Append s to buf at *pos as JSON string content (escaped), bounded. */
static void put_json_escaped(char *buf, size_t cap, size_t *pos, const char *s)
{
    for (; *s && *pos + 7 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            buf[(*pos)++] = '\\';
            buf[(*pos)++] = (char)c;
        } else if (c < 0x20) {
            *pos += (size_t)snprintf(buf + *pos, cap - *pos, "\\u%04x", c);
        } else {
            buf[(*pos)++] = (char)c;
        }
    }
}

static void put_raw(char *buf, size_t cap, size_t *pos, const char *s)
{
    size_t n = strlen(s);

    if (*pos + 1 >= cap)
        return;
    if (n > cap - *pos - 1)
        n = cap - *pos - 1;
    memcpy(buf + *pos, s, n);
    *pos += n;
}

/* Text values with spaces or quotes are quoted (logfmt style). */
static void put_text_value(char *buf, size_t cap, size_t *pos, const char *s)
{
    if (s[0] != '\0' && strpbrk(s, " \"=\t\n") == NULL) {
        put_raw(buf, cap, pos, s);
        return;
    }
    put_raw(buf, cap, pos, "\"");
    put_json_escaped(buf, cap, pos, s);
    put_raw(buf, cap, pos, "\"");
}

void log_vwrite(enum log_level level, const char *module, int errnum,
                const char *const *kv, const char *fmt, va_list ap)
{
    char line[LOG_LINE_MAX], msg[LOG_LINE_MAX / 2], ts[CLOCK_RFC3339_LEN];
    size_t pos = 0, cap = sizeof line - 1;
    int lv = (int)level;

    if (lv < 0 || lv > 3)
        lv = 3;
    vsnprintf(msg, sizeof msg, fmt, ap);
    if (errnum != 0) {
        char eb[128];
        size_t ml = strlen(msg);
        /* GNU strerror_r returns a pointer that may not be eb. */
        const char *es = strerror_r(errnum < 0 ? -errnum : errnum, eb,
                                    sizeof eb);
        snprintf(msg + ml, sizeof msg - ml, ": %s", es);
    }
    clock_format_rfc3339(clock_now_ms(), ts, sizeof ts);

    if (log_fmt == LOG_FORMAT_JSON) {
        put_raw(line, cap, &pos, "{\"ts\":\"");
        put_raw(line, cap, &pos, ts);
        put_raw(line, cap, &pos, "\",\"level\":\"");
        put_raw(line, cap, &pos, level_names[lv]);
        put_raw(line, cap, &pos, "\",\"module\":\"");
        put_json_escaped(line, cap, &pos, module);
        put_raw(line, cap, &pos, "\",\"msg\":\"");
        put_json_escaped(line, cap, &pos, msg);
        put_raw(line, cap, &pos, "\"");
        for (size_t i = 0; kv && kv[i] && kv[i + 1]; i += 2) {
            put_raw(line, cap, &pos, ",\"");
            put_json_escaped(line, cap, &pos, kv[i]);
            put_raw(line, cap, &pos, "\":\"");
            put_json_escaped(line, cap, &pos, kv[i + 1]);
            put_raw(line, cap, &pos, "\"");
        }
        put_raw(line, cap, &pos, "}");
    } else {
        put_raw(line, cap, &pos, ts);
        put_raw(line, cap, &pos, " ");
        put_raw(line, cap, &pos, level_names[lv]);
        put_raw(line, cap, &pos, " [");
        put_raw(line, cap, &pos, module);
        put_raw(line, cap, &pos, "] ");
        put_raw(line, cap, &pos, msg);
        for (size_t i = 0; kv && kv[i] && kv[i + 1]; i += 2) {
            put_raw(line, cap, &pos, " ");
            put_raw(line, cap, &pos, kv[i]);
            put_raw(line, cap, &pos, "=");
            put_text_value(line, cap, &pos, kv[i + 1]);
        }
    }
    line[pos++] = '\n';
    /* One write per line; a short write to stderr is not worth retrying. */
    if (write(log_fd, line, pos) < 0)
        return;
}

void log_write(enum log_level level, const char *module, int errnum,
               const char *const *kv, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    log_vwrite(level, module, errnum, kv, fmt, ap);
    va_end(ap);
}
