/*
 * diag.h - an ordered list of error messages, the one error type of the core.
 *
 * Configuration loading, validation and plugin checks all report into a diag
 * instead of stopping at the first problem, so an operator sees every error
 * of a reload at once. Each entry is one finished line in the format
 *   FILE:LINE:COL: PATH: MESSAGE
 * with absent parts dropped (e.g. "FILE: MESSAGE", "PATH: MESSAGE").
 */
#ifndef KOKO_CORE_DIAG_H
#define KOKO_CORE_DIAG_H

#include <stdarg.h>
#include <stddef.h>

typedef struct diag diag;

/* A new, empty list; NULL when out of memory. Free with diag_free. */
diag *diag_new(void);

/* Frees the list and every message in it. NULL is allowed. */
void diag_free(diag *d);

/*
 * Appends one message. file may be NULL (then no position is printed at all);
 * line and col are 1-based, 0 means unknown (line 0 prints "FILE:", col 0
 * prints "FILE:LINE:"). path may be NULL or "" (then no path part). The
 * strings are copied. Out of memory drops the message silently but the list
 * stays usable; diag_count then reports fewer entries.
 */
void diag_add(diag *d, const char *file, int line, int col, const char *path,
              const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* Same as diag_add with a va_list. */
void diag_vadd(diag *d, const char *file, int line, int col, const char *path,
               const char *fmt, va_list ap) __attribute__((format(printf, 6, 0)));

/* Number of messages; 0 for NULL. */
size_t diag_count(const diag *d);

/* Message i (0-based, in the order added), borrowed from d; NULL if out of range. */
const char *diag_get(const diag *d, size_t i);

/* All messages joined with sep (NULL = "\n"); malloc'd, the caller frees.
 * An empty list gives "". NULL only when out of memory. */
char *diag_join(const diag *d, const char *sep);

/* Removes every message, keeping the list itself. */
void diag_clear(diag *d);

#endif
