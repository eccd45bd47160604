/*
 * schema.h - configuration declared as tables, checked in one place.
 *
 * In the nginx spirit, each section of koko.yaml (and each plugin's block) is
 * a static table of sc_field entries: key, type, flags, nested fields, ranges,
 * enumerations and an optional custom check. sc_validate walks a jansson tree
 * (normally from yamltree.h) against such a table and reports every problem
 * into a diag as "FILE:LINE:COL: path: message": unknown keys (with a "did you
 * mean" suggestion and the known keys), wrong types, missing required keys,
 * values out of range or not in the enumeration. Values that came from ${ENV}
 * are never echoed in messages.
 */
#ifndef KOKO_CORE_SCHEMA_H
#define KOKO_CORE_SCHEMA_H

#include <jansson.h>

#include "diag.h"
#include "yamltree.h"

typedef enum {
    SC_STRING = 1,
    SC_INT,    /* a whole number (json integer) */
    SC_NUMBER, /* integer or real */
    SC_BOOL,
    SC_OBJECT, /* a mapping with the keys listed in fields */
    SC_MAP,    /* a mapping with free keys (tenant names...), each value checked by item */
    SC_LIST,   /* a list, each element checked by item */
    SC_ANY     /* anything; check may look closer */
} sc_type;

enum {
    SC_REQUIRED = 1u << 0, /* the key must be present */
    SC_NONEMPTY = 1u << 1, /* strings not "", lists and mappings with at least one entry */
    SC_RANGE = 1u << 2,    /* min..max: the value (INT, NUMBER), the length (STRING) or the
                              number of entries (LIST, MAP, OBJECT) */
    SC_OPEN = 1u << 3,     /* OBJECT: keys not in fields are allowed (someone else checks them) */
    SC_NULLABLE = 1u << 4  /* an empty value (null) is accepted and not checked further */
};

typedef struct sc_ctx sc_ctx;
typedef struct sc_field sc_field;

/*
 * A custom check, run on a value after its type, range, enumeration and
 * children passed. It reports through sc_error (so the error is counted and
 * located) and returns 0, or -1 when it found a problem. v is borrowed.
 */
typedef int (*sc_check_fn)(sc_ctx *ctx, const char *path, json_t *v);

struct sc_field {
    const char *key;           /* NULL ends a fields table; ignored for item specs */
    sc_type type;
    unsigned flags;            /* SC_REQUIRED | SC_NONEMPTY | ... */
    const sc_field *fields;    /* SC_OBJECT: its fields, ended by an entry with key NULL */
    const sc_field *item;      /* SC_LIST: element spec; SC_MAP: value spec (one entry) */
    long long min, max;        /* with SC_RANGE; LLONG_MIN / LLONG_MAX leave a side open */
    const char *const *one_of; /* SC_STRING: the allowed values, NULL-terminated */
    sc_check_fn check;         /* extra check, may be NULL */
    const char *doc;           /* one line for documentation and "missing key" messages */
};

/* What a check sees; fields are read-only for checks. */
struct sc_ctx {
    const cfgdoc *doc; /* where positions come from; may be NULL (no positions) */
    diag *d;           /* where errors go */
    void *user;        /* the caller's pointer from sc_validate */
    int errors;        /* errors reported so far in this sc_validate call */
};

/*
 * Checks v, found at path base_path ("" for the root), against spec, which
 * describes v itself (for a whole document: a SC_OBJECT entry whose fields
 * are the top-level keys). doc may be NULL when v does not come from a file.
 * Reports every error into d and returns how many were added (0 = valid).
 *
 * v may be normalised in place: a scalar that came from ${ENV} is converted
 * to the declared type when its text allows ("5001" for SC_INT becomes 5001,
 * an expanded 12345 for SC_STRING becomes "12345"), so consumers of the tree
 * see the declared types. v itself is borrowed; only members are replaced.
 */
int sc_validate(const cfgdoc *doc, diag *d, const char *base_path, json_t *v,
                const sc_field *spec, void *user);

/* Reports an error at the location of path, counted in ctx->errors. */
void sc_error(sc_ctx *ctx, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Like sc_error, positioned at the key of path (for messages about the key). */
void sc_key_error(sc_ctx *ctx, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * The candidate closest to word (case-insensitive edit distance with
 * transpositions, at most 2 and less than word's length), or NULL. candidates
 * is NULL-terminated; the result is borrowed from it. For "did you mean"
 * messages anywhere (plugin names, channel kinds...).
 */
const char *sc_suggest(const char *word, const char *const *candidates);

/* How messages name what spec expects ("a list of strings"), written into
 * buf of size n; returns buf. */
const char *sc_describe(const sc_field *spec, char *buf, size_t n);

#endif
