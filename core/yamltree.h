/*
 * yamltree.h - etc/koko.yaml (or any YAML text) to a jansson tree that
 * remembers where every node was written.
 *
 * The parser reads one YAML document with libyaml, expands ${ENV} references
 * in scalar values, types plain scalars by the YAML 1.2 core schema and keeps
 * the line and column of every node, so validators (schema.h, plugins'
 * validate) can report "FILE:LINE:COL: path: message". All problems of a file
 * are reported into the caller's diag at once; a document with any error is
 * refused as a whole.
 *
 * Paths name nodes as in messages: "tenants.demo.llm[1].model"; "" is the root.
 *
 * Rules, in short:
 *  - plain scalars: true/false (and True, TRUE...), null/~/empty, decimal,
 *    0x hex and 0o octal integers, floats; everything else (yes, no, on, off)
 *    stays a string. Quoted and block scalars are always strings. The tag !!str
 *    forces a string; other tags are refused.
 *  - ${NAME}, ${NAME:-default} (default when unset or empty) are expanded in
 *    every scalar VALUE, quoted or not, never in keys; $${ is a literal ${.
 *    Expansion comes before typing, so "port: ${PORT:-5001}" is the int 5001.
 *    Expanded text is never written into an error message.
 *  - anchors and aliases copy the anchored subtree; merge keys "<<: *base"
 *    (or a list of aliases) add the keys the mapping does not set itself.
 *  - duplicate keys, non-scalar keys, more than one document, a top level that
 *    is not a mapping and an empty file are errors.
 *  - limits: CFGDOC_MAX_BYTES of input, CFGDOC_MAX_DEPTH levels of nesting,
 *    CFGDOC_MAX_NODES nodes after alias expansion, CFGDOC_MAX_KEY bytes a key.
 */
#ifndef KOKO_CORE_YAMLTREE_H
#define KOKO_CORE_YAMLTREE_H

#include <jansson.h>
#include <stddef.h>

#include "diag.h"

#define CFGDOC_MAX_BYTES (4u * 1024u * 1024u)
#define CFGDOC_MAX_DEPTH 64
#define CFGDOC_MAX_NODES 500000u
#define CFGDOC_MAX_KEY 1024u

typedef struct cfgdoc cfgdoc;

/*
 * Reads and parses the file at path. Returns NULL on any error, every error
 * reported into d (which must not be NULL), each prefixed by path as given.
 * The caller frees the result with cfgdoc_free.
 */
cfgdoc *cfgdoc_parse_file(const char *path, diag *d);

/*
 * Parses len bytes of text (need not be NUL-terminated; embedded NULs are a
 * syntax error). name is what messages print as the file (NULL: "<string>").
 * Same result and ownership as cfgdoc_parse_file.
 */
cfgdoc *cfgdoc_parse_string(const char *name, const char *text, size_t len, diag *d);

/*
 * Parses JSON text, which is YAML 1.2 flow syntax, for the positions of its
 * nodes, so a JSON file's validator can report "FILE:LINE:COL: path: ...".
 * Meant for text a JSON parser (jansson) has already accepted, from which the
 * caller takes the values: the top level may be a mapping or a list, ${} is
 * not expanded, and a \u escape of a UTF-16 surrogate half (which libyaml
 * refuses) reads as U+FFFD. Same result and ownership as cfgdoc_parse_string.
 */
cfgdoc *cfgdoc_parse_json(const char *name, const char *text, size_t len, diag *d);

/* The root, borrowed: it lives as long as doc. Always a JSON object, except
 * from cfgdoc_parse_json, where it may be an array. */
json_t *cfgdoc_root(const cfgdoc *doc);

/* The file name messages use, borrowed. */
const char *cfgdoc_file(const cfgdoc *doc);

/*
 * Location (1-based line and column) of the node at path. For a mapping or
 * list written as the value of a key, that is the key's position; for a
 * scalar, the value's. When path does not exist, the nearest existing
 * ancestor's location is given. Returns 0 for an exact match, 1 for an
 * ancestor's location, -1 when doc is NULL (line and col then set to 0).
 */
int cfgdoc_loc(const cfgdoc *doc, const char *path, int *line, int *col);

/* Like cfgdoc_loc, but for a mapping member gives the position of its key
 * (what an "unknown key" message should point at). */
int cfgdoc_key_loc(const cfgdoc *doc, const char *path, int *line, int *col);

/* diag_add with doc's file and the location of path (cfgdoc_loc). doc may be
 * NULL: then the message has no file or position. */
void cfgdoc_error(const cfgdoc *doc, diag *d, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Like cfgdoc_error, positioned at the key of path (cfgdoc_key_loc). */
void cfgdoc_key_error(const cfgdoc *doc, diag *d, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Nonzero when the scalar at path (exactly) holds a ${} reference that was
 * replaced (by the environment or the :- default): validators must not echo
 * its value, it may be a secret, and may convert its text to the declared type. */
int cfgdoc_is_expanded(const cfgdoc *doc, const char *path);

/*
 * The text of the plain scalar at path after ${} expansion, for a scalar that
 * was typed as a number, boolean or null ("0123", "1e3", "~"); NULL for
 * strings, collections and absent paths. Borrowed from doc. Lets a validator
 * turn a value back into the string the operator wrote.
 */
const char *cfgdoc_text(const cfgdoc *doc, const char *path);

/* "a mapping", "a list", "a string", "a number", "a boolean" or
 * "an empty value (null)": how messages name the kind of v. Static string. */
const char *cfgdoc_kind(const json_t *v);

/* Frees doc and its tree (json_t pointers taken from it become invalid
 * unless the caller took a reference with json_incref). NULL is allowed. */
void cfgdoc_free(cfgdoc *doc);

#endif
