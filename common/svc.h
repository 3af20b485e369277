/* SPDX-License-Identifier: MIT */
/*
 * Project-wide macros: assertions for programmer errors and invariants only
 * (never for untrusted bytes), and the one sanctioned way to abort.
 */
#ifndef SVC_H
#define SVC_H

#include <stdio.h>
#include <stdlib.h>

#define SVC_PANIC(msg)                                                         \
    do {                                                                       \
        fprintf(stderr, "PANIC %s:%d: %s\n", __FILE__, __LINE__, (msg));      \
        abort();                                                               \
    } while (0)

#ifdef NDEBUG
#define SVC_ASSERT(cond) ((void)sizeof(cond))
#else
#define SVC_ASSERT(cond)                                                       \
    do {                                                                       \
        if (!(cond))                                                           \
            SVC_PANIC("assertion failed: " #cond);                             \
    } while (0)
#endif

#define SVC_UNUSED(x) ((void)(x))
#define SVC_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif
