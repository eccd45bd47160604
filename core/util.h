/*
 * util.h — the small helpers every core file needs, written once:
 * a growable string buffer, whole-file I/O, paths, hashing and clocks.
 */
#ifndef CORE_UTIL_H
#define CORE_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Growable NUL-terminated buffer. Zero-initialise; sb_take hands the string over. */
typedef struct strbuf {
    char *buf;
    size_t len, cap;
} strbuf;

void sb_append(strbuf *sb, const char *s, size_t n);
void sb_puts(strbuf *sb, const char *s);
void sb_printf(strbuf *sb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
char *sb_take(strbuf *sb); /* never NULL: "" when empty; caller frees */
void sb_free(strbuf *sb);

/* malloc'd formatted string; aborts on out-of-memory (allocation failures of
 * a few bytes are not recoverable in a daemon and are not worth a code path). */
char *util_asprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t m);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);

/* Read a whole file (at most MAX bytes) into a NUL-terminated buffer. */
char *util_read_file(const char *path, size_t max, size_t *len, char *err, size_t errlen);
/* Write DATA to PATH (created with MODE, truncated). */
int util_write_file(const char *path, const void *data, size_t len, mode_t mode, char *err, size_t errlen);
int util_mkdir_p(const char *path, mode_t mode);
/* BASE/REL unless REL is absolute (then a copy of REL). */
char *util_path_join(const char *base, const char *rel);

uint64_t util_fnv1a64(const void *data, size_t len);
uint64_t util_now_ms(void);      /* CLOCK_MONOTONIC */
double util_now_ms_f(void);      /* CLOCK_MONOTONIC, fractional */
int64_t util_unix_time(void);

/* 1 when S is a loopback host name or address (127.0.0.0/8, ::1, localhost). */
int util_is_loopback(const char *host);
/* Constant-time comparison of two NUL-terminated secrets. */
int util_secret_eq(const char *a, const char *b);

#endif
