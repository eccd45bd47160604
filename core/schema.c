/*
 * schema.c - the table-driven validator behind schema.h.
 *
 * One recursive walk: check the type (converting ${ENV} text to the declared
 * type where it fits), then flags, ranges and enumerations, then children,
 * then the custom check. Every message goes through sc_error so it carries
 * the position yamltree recorded; values from the environment are described,
 * never printed.
 */
#include "schema.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- reporting ---- */

static void sc_verror(sc_ctx *ctx, int key, const char *path, const char *fmt, va_list ap)
{
    int line = 0, col = 0;
    if (ctx->doc) {
        if (key)
            cfgdoc_key_loc(ctx->doc, path, &line, &col);
        else
            cfgdoc_loc(ctx->doc, path, &line, &col);
    }
    diag_vadd(ctx->d, ctx->doc ? cfgdoc_file(ctx->doc) : NULL, line, col, path, fmt, ap);
    ctx->errors++;
}

void sc_error(sc_ctx *ctx, const char *path, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    sc_verror(ctx, 0, path, fmt, ap);
    va_end(ap);
}

void sc_key_error(sc_ctx *ctx, const char *path, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    sc_verror(ctx, 1, path, fmt, ap);
    va_end(ap);
}

/* ---- suggestions ---- */

/* Optimal-string-alignment distance, case-insensitive; capped at 3. */
static size_t sc_distance(const char *a, const char *b)
{
    size_t n = strlen(a), m = strlen(b);
    if (n > m + 2 || m > n + 2)
        return 3;
    size_t *rows = malloc(3 * (m + 1) * sizeof *rows);
    if (!rows)
        return 3;
    size_t *pp = rows, *prev = rows + (m + 1), *cur = rows + 2 * (m + 1);
    for (size_t j = 0; j <= m; j++)
        prev[j] = j;
    for (size_t i = 1; i <= n; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= m; j++) {
            int ca = tolower((unsigned char)a[i - 1]), cb = tolower((unsigned char)b[j - 1]);
            size_t cost = ca != cb;
            size_t v = prev[j] + 1;
            if (cur[j - 1] + 1 < v)
                v = cur[j - 1] + 1;
            if (prev[j - 1] + cost < v)
                v = prev[j - 1] + cost;
            if (i > 1 && j > 1 && ca == tolower((unsigned char)b[j - 2]) &&
                tolower((unsigned char)a[i - 2]) == cb && pp[j - 2] + 1 < v)
                v = pp[j - 2] + 1;
            cur[j] = v;
        }
        size_t *t = pp;
        pp = prev;
        prev = cur;
        cur = t;
    }
    size_t d = prev[m];
    free(rows);
    return d > 3 ? 3 : d;
}

const char *sc_suggest(const char *word, const char *const *candidates)
{
    const char *best = NULL;
    size_t bestd = 3, wlen = strlen(word);
    for (; candidates && *candidates; candidates++) {
        size_t dist = sc_distance(word, *candidates);
        if (dist < bestd && dist < wlen) {
            best = *candidates;
            bestd = dist;
        }
    }
    return best;
}

/* ---- names ---- */

static const char *sc_plural(sc_type t)
{
    switch (t) {
    case SC_STRING: return "strings";
    case SC_INT: return "integers";
    case SC_NUMBER: return "numbers";
    case SC_BOOL: return "booleans (true or false)";
    case SC_OBJECT:
    case SC_MAP: return "mappings";
    case SC_LIST: return "lists";
    case SC_ANY: break;
    }
    return "values";
}

const char *sc_describe(const sc_field *spec, char *buf, size_t n)
{
    const char *s = "any value";
    switch (spec->type) {
    case SC_STRING: s = "a string"; break;
    case SC_INT: s = "an integer"; break;
    case SC_NUMBER: s = "a number"; break;
    case SC_BOOL: s = "true or false"; break;
    case SC_OBJECT:
    case SC_MAP: s = "a mapping"; break;
    case SC_LIST:
        if (spec->item && spec->item->type != SC_ANY) {
            snprintf(buf, n, "a list of %s", sc_plural(spec->item->type));
            return buf;
        }
        s = "a list";
        break;
    case SC_ANY: break;
    }
    snprintf(buf, n, "%s", s);
    return buf;
}

/* ", "-joined list of strings, malloc'd (NULL when out of memory). */
static char *sc_join(const char *const *items, size_t n)
{
    size_t len = 1;
    for (size_t i = 0; i < n; i++)
        len += strlen(items[i]) + 2;
    char *out = malloc(len), *p = out;
    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(items[i]);
        if (i) {
            memcpy(p, ", ", 2);
            p += 2;
        }
        memcpy(p, items[i], l);
        p += l;
    }
    *p = '\0';
    return out;
}

/* ---- the walk ---- */

/* Where a value sits, so a converted value can be put back. */
typedef struct {
    json_t *parent;  /* object or array holding v, or NULL at the root */
    const char *key; /* when parent is an object */
    size_t index;    /* when parent is an array */
} sc_slot;

static int sc_replace(const sc_slot *slot, json_t *nv)
{
    if (!nv || !slot->parent) {
        json_decref(nv);
        return -1;
    }
    if (json_is_object(slot->parent))
        return json_object_set_new(slot->parent, slot->key, nv);
    return json_array_set_new(slot->parent, slot->index, nv);
}

static char *sc_child_path(const char *base, const char *key)
{
    size_t bl = strlen(base), kl = strlen(key);
    char *p = malloc(bl + kl + 2);
    if (!p)
        return NULL;
    if (bl)
        snprintf(p, bl + kl + 2, "%s.%s", base, key);
    else
        memcpy(p, key, kl + 1);
    return p;
}

static char *sc_index_path(const char *base, size_t i)
{
    size_t len = strlen(base) + 24;
    char *p = malloc(len);
    if (p)
        snprintf(p, len, "%s[%zu]", base, i);
    return p;
}

static json_t *sc_check(sc_ctx *ctx, const char *path, const sc_slot *slot, json_t *v,
                        const sc_field *spec);

/* Converts an expanded string to spec's scalar type; the new value or NULL. */
static json_t *sc_from_text(const char *s, sc_type type)
{
    char *end;
    if (!*s || isspace((unsigned char)*s))
        return NULL;
    if (type == SC_INT) {
        errno = 0;
        long long i = strtoll(s, &end, 10);
        return errno || *end ? NULL : json_integer(i);
    }
    if (type == SC_NUMBER) {
        errno = 0;
        long long i = strtoll(s, &end, 10);
        if (!errno && !*end)
            return json_integer(i);
        errno = 0;
        double d = strtod(s, &end);
        return errno || *end || !isfinite(d) ? NULL : json_real(d);
    }
    if (type == SC_BOOL) {
        if (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "TRUE"))
            return json_true();
        if (!strcmp(s, "false") || !strcmp(s, "False") || !strcmp(s, "FALSE"))
            return json_false();
    }
    return NULL;
}

static int sc_type_ok(const json_t *v, sc_type t)
{
    switch (t) {
    case SC_STRING: return json_is_string(v);
    case SC_INT: return json_is_integer(v);
    case SC_NUMBER: return json_is_number(v);
    case SC_BOOL: return json_is_boolean(v);
    case SC_OBJECT:
    case SC_MAP: return json_is_object(v);
    case SC_LIST: return json_is_array(v);
    case SC_ANY: return 1;
    }
    return 0;
}

/*
 * Type check, with conversion of ${ENV} values. Returns the value to go on
 * with (possibly a replacement, borrowed from the parent) or NULL after
 * reporting a type error.
 */
static json_t *sc_check_type(sc_ctx *ctx, const char *path, const sc_slot *slot, json_t *v,
                             const sc_field *spec)
{
    if (sc_type_ok(v, spec->type))
        return v;
    int expanded = ctx->doc && cfgdoc_is_expanded(ctx->doc, path);
    char want[64];
    sc_describe(spec, want, sizeof want);
    if (expanded) {
        json_t *nv = NULL;
        if (json_is_string(v) && spec->type != SC_STRING) {
            nv = sc_from_text(json_string_value(v), spec->type);
        } else if (spec->type == SC_STRING && !json_is_object(v) && !json_is_array(v)) {
            const char *text = cfgdoc_text(ctx->doc, path);
            nv = text ? json_string(text) : NULL;
        }
        if (nv && slot->parent) {
            if (sc_replace(slot, nv) < 0) {
                sc_error(ctx, path, "out of memory while checking the configuration");
                return NULL;
            }
            return json_is_object(slot->parent) ? json_object_get(slot->parent, slot->key)
                                                : json_array_get(slot->parent, slot->index);
        }
        json_decref(nv);
        sc_error(ctx, path, "expected %s, got %s (from the environment)", want, cfgdoc_kind(v));
        return NULL;
    }
    const char *text = ctx->doc ? cfgdoc_text(ctx->doc, path) : NULL;
    if (spec->type == SC_STRING && text && *text)
        sc_error(ctx, path, "expected %s, got %s (write \"%s\" in quotes to make it text)", want,
                 cfgdoc_kind(v), text);
    else if (spec->type == SC_INT && json_is_real(v))
        sc_error(ctx, path, "expected %s, got a number with a fraction", want);
    else
        sc_error(ctx, path, "expected %s, got %s", want, cfgdoc_kind(v));
    return NULL;
}

static void sc_range_error(sc_ctx *ctx, const char *path, const sc_field *spec, const char *what,
                           const char *unit)
{
    if (spec->min != LLONG_MIN && spec->max != LLONG_MAX)
        sc_error(ctx, path, "%s is out of range (%lld to %lld%s)", what, spec->min, spec->max,
                 unit);
    else if (spec->min != LLONG_MIN)
        sc_error(ctx, path, "%s is out of range (at least %lld%s)", what, spec->min, unit);
    else
        sc_error(ctx, path, "%s is out of range (at most %lld%s)", what, spec->max, unit);
}

static void sc_check_scalar(sc_ctx *ctx, const char *path, const json_t *v, const sc_field *spec)
{
    int expanded = ctx->doc && cfgdoc_is_expanded(ctx->doc, path);
    char what[96];
    if (json_is_string(v)) {
        const char *s = json_string_value(v);
        size_t len = json_string_length(v);
        if ((spec->flags & SC_NONEMPTY) && len == 0) {
            sc_error(ctx, path, "must not be empty");
            return;
        }
        if ((spec->flags & SC_RANGE) &&
            ((long long)len < spec->min || (long long)len > spec->max)) {
            snprintf(what, sizeof what, "length %zu", len);
            sc_range_error(ctx, path, spec, what, " characters");
            return;
        }
        if (spec->one_of) {
            size_t n = 0;
            for (const char *const *o = spec->one_of; *o; o++, n++)
                if (strcmp(*o, s) == 0)
                    return;
            char *allowed = sc_join(spec->one_of, n);
            const char *sug = expanded ? NULL : sc_suggest(s, spec->one_of);
            if (expanded)
                sc_error(ctx, path, "the value from the environment is not one of: %s",
                         allowed ? allowed : "");
            else if (sug)
                sc_error(ctx, path, "\"%s\" is not one of: %s; did you mean \"%s\"?", s,
                         allowed ? allowed : "", sug);
            else
                sc_error(ctx, path, "\"%s\" is not one of: %s", s, allowed ? allowed : "");
            free(allowed);
        }
        return;
    }
    if (!(spec->flags & SC_RANGE) || !json_is_number(v))
        return;
    double x = json_number_value(v);
    int out = json_is_integer(v)
                  ? (json_integer_value(v) < spec->min || json_integer_value(v) > spec->max)
                  : (x < (double)spec->min || x > (double)spec->max);
    if (!out)
        return;
    if (expanded)
        snprintf(what, sizeof what, "the value from the environment");
    else if (json_is_integer(v))
        snprintf(what, sizeof what, "%lld", (long long)json_integer_value(v));
    else
        snprintf(what, sizeof what, "%g", x);
    sc_range_error(ctx, path, spec, what, "");
}

static void sc_check_object(sc_ctx *ctx, const char *path, json_t *v, const sc_field *spec)
{
    const sc_field *fields = spec->fields;
    size_t nf = 0;
    while (fields && fields[nf].key)
        nf++;
    const char *key;
    json_t *child;
    void *tmp;
    json_object_foreach_safe(v, tmp, key, child) {
        const sc_field *f = NULL;
        for (size_t i = 0; i < nf && !f; i++)
            if (strcmp(fields[i].key, key) == 0)
                f = &fields[i];
        char *cp = sc_child_path(path, key);
        if (!cp) {
            sc_error(ctx, path, "out of memory while checking the configuration");
            return;
        }
        if (f) {
            sc_slot slot = {v, key, 0};
            sc_check(ctx, cp, &slot, child, f);
        } else if (!(spec->flags & SC_OPEN)) {
            const char **names = malloc((nf + 1) * sizeof *names);
            if (names) {
                for (size_t i = 0; i < nf; i++)
                    names[i] = fields[i].key;
                names[nf] = NULL;
            }
            char *known = names ? sc_join(names, nf) : NULL;
            const char *sug = names ? sc_suggest(key, names) : NULL;
            if (nf == 0)
                sc_key_error(ctx, cp, "unknown key \"%s\" (this mapping takes no keys)", key);
            else if (sug)
                sc_key_error(ctx, cp, "unknown key \"%s\"; did you mean \"%s\"? (known keys: %s)",
                             key, sug, known ? known : "");
            else
                sc_key_error(ctx, cp, "unknown key \"%s\" (known keys: %s)", key,
                             known ? known : "");
            free(known);
            free(names);
        }
        free(cp);
    }
    for (size_t i = 0; i < nf; i++) {
        if (!(fields[i].flags & SC_REQUIRED) || json_object_get(v, fields[i].key))
            continue;
        if (fields[i].doc)
            sc_error(ctx, path, "missing required key \"%s\" (%s)", fields[i].key, fields[i].doc);
        else
            sc_error(ctx, path, "missing required key \"%s\"", fields[i].key);
    }
}

static json_t *sc_check(sc_ctx *ctx, const char *path, const sc_slot *slot, json_t *v,
                        const sc_field *spec)
{
    if (json_is_null(v) && (spec->flags & SC_NULLABLE))
        return v;
    int errors0 = ctx->errors;
    v = sc_check_type(ctx, path, slot, v, spec);
    if (!v)
        return NULL;
    switch (spec->type) {
    case SC_STRING:
    case SC_INT:
    case SC_NUMBER: sc_check_scalar(ctx, path, v, spec); break;
    case SC_OBJECT:
    case SC_MAP:
    case SC_LIST: {
        size_t n = json_is_array(v) ? json_array_size(v) : json_object_size(v);
        if ((spec->flags & SC_NONEMPTY) && n == 0) {
            sc_error(ctx, path, "must not be empty");
        } else if ((spec->flags & SC_RANGE) &&
                   ((long long)n < spec->min || (long long)n > spec->max)) {
            char what[64];
            snprintf(what, sizeof what, "%zu %s", n, n == 1 ? "entry" : "entries");
            sc_range_error(ctx, path, spec, what, " entries");
        }
        if (spec->type == SC_OBJECT) {
            sc_check_object(ctx, path, v, spec);
        } else if (spec->type == SC_MAP && spec->item) {
            const char *key;
            json_t *child;
            void *tmp;
            json_object_foreach_safe(v, tmp, key, child) {
                char *cp = sc_child_path(path, key);
                if (!cp) {
                    sc_error(ctx, path, "out of memory while checking the configuration");
                    break;
                }
                sc_slot s = {v, key, 0};
                sc_check(ctx, cp, &s, child, spec->item);
                free(cp);
            }
        } else if (spec->type == SC_LIST && spec->item) {
            for (size_t i = 0; i < n; i++) {
                char *cp = sc_index_path(path, i);
                if (!cp) {
                    sc_error(ctx, path, "out of memory while checking the configuration");
                    break;
                }
                sc_slot s = {v, NULL, i};
                sc_check(ctx, cp, &s, json_array_get(v, i), spec->item);
                free(cp);
            }
        }
        break;
    }
    case SC_BOOL:
    case SC_ANY: break;
    }
    if (spec->check && ctx->errors == errors0)
        spec->check(ctx, path, v);
    return v;
}

int sc_validate(const cfgdoc *doc, diag *d, const char *base_path, json_t *v,
                const sc_field *spec, void *user)
{
    sc_ctx ctx = {doc, d, user, 0};
    sc_slot root = {NULL, NULL, 0};
    if (!v) {
        sc_error(&ctx, base_path ? base_path : "", "missing value");
        return ctx.errors;
    }
    sc_check(&ctx, base_path ? base_path : "", &root, v, spec);
    return ctx.errors;
}
