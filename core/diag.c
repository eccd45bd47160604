/*
 * diag.c - the error list behind diag.h.
 *
 * Messages are formatted once, when added, into owned strings kept in a
 * growable array; nothing here knows about YAML or the schema, so every
 * part of the core can report through the same type.
 */
#include "diag.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct diag {
    char **msgs;
    size_t n, cap;
};

diag *diag_new(void)
{
    return calloc(1, sizeof(diag));
}

void diag_clear(diag *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->n; i++)
        free(d->msgs[i]);
    d->n = 0;
}

void diag_free(diag *d)
{
    if (!d)
        return;
    diag_clear(d);
    free(d->msgs);
    free(d);
}

/* The "FILE:LINE:COL: PATH: " prefix, malloc'd. */
static char *diag_prefix(const char *file, int line, int col, const char *path)
{
    char pos[64] = "";
    if (file && line > 0 && col > 0)
        snprintf(pos, sizeof pos, ":%d:%d", line, col);
    else if (file && line > 0)
        snprintf(pos, sizeof pos, ":%d", line);
    int has_path = path && *path;
    size_t len = (file ? strlen(file) + strlen(pos) + 2 : 0) + (has_path ? strlen(path) + 2 : 0) + 1;
    char *p = malloc(len);
    if (!p)
        return NULL;
    snprintf(p, len, "%s%s%s%s%s", file ? file : "", pos, file ? ": " : "",
             has_path ? path : "", has_path ? ": " : "");
    return p;
}

void diag_vadd(diag *d, const char *file, int line, int col, const char *path,
               const char *fmt, va_list ap)
{
    if (!d)
        return;
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 8;
        char **m = realloc(d->msgs, cap * sizeof *m);
        if (!m)
            return;
        d->msgs = m;
        d->cap = cap;
    }
    char *prefix = diag_prefix(file, line, col, path);
    if (!prefix)
        return;
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0) {
        free(prefix);
        return;
    }
    size_t plen = strlen(prefix);
    char *msg = malloc(plen + (size_t)n + 1);
    if (!msg) {
        free(prefix);
        return;
    }
    memcpy(msg, prefix, plen);
    vsnprintf(msg + plen, (size_t)n + 1, fmt, ap);
    free(prefix);
    d->msgs[d->n++] = msg;
}

void diag_add(diag *d, const char *file, int line, int col, const char *path,
              const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    diag_vadd(d, file, line, col, path, fmt, ap);
    va_end(ap);
}

size_t diag_count(const diag *d)
{
    return d ? d->n : 0;
}

const char *diag_get(const diag *d, size_t i)
{
    return d && i < d->n ? d->msgs[i] : NULL;
}

char *diag_join(const diag *d, const char *sep)
{
    if (!sep)
        sep = "\n";
    size_t seplen = strlen(sep), len = 1;
    size_t n = diag_count(d);
    for (size_t i = 0; i < n; i++)
        len += strlen(d->msgs[i]) + (i ? seplen : 0);
    char *out = malloc(len), *p = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (i) {
            memcpy(p, sep, seplen);
            p += seplen;
        }
        size_t l = strlen(d->msgs[i]);
        memcpy(p, d->msgs[i], l);
        p += l;
    }
    *p = '\0';
    return out;
}
