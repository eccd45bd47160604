/*
 * memory.h — operator memory: a tenant's persona (identity.json) and
 * standing decisions (decisions.json), operator-edited files loaded at
 * start and on reload (doc/memory.md).
 *
 * jansson reads the values; the same bytes are read again by yamltree
 * (JSON is YAML flow syntax) for the line and column of every node, and
 * the tree is checked against the tables in memory.c, which mirror the
 * shipped doc/identity.schema.json and doc/decisions.schema.json (a unit
 * test holds the two to each other). Every problem of both files is
 * reported at once as "FILE:LINE:COL: path: message"; any error refuses
 * the configuration (a reload keeps the old generation). A missing file
 * means "none" ({} / []).
 */
#ifndef CORE_MEMORY_H
#define CORE_MEMORY_H

#include <jansson.h>
#include <stddef.h>

#include "diag.h"
#include "schema.h"

/* The most bytes either file may have. */
#define MEMORY_MAX_BYTES (1024u * 1024u)

/*
 * Load DIR/identity.json and DIR/decisions.json and check them. LANGS (NLANGS
 * entries, borrowed) are the tenant's languages: the persona must have a
 * holding and a handoff text for each of them (an error), and a text for a
 * language not among them is reported into WARNINGS (it is never used).
 * NLANGS 0 skips both language checks. WARNINGS may be NULL (dropped).
 * Always sets *PERSONA and *DECISIONS (new references the caller owns; {} and
 * [] when absent or broken). Returns the number of errors added to D.
 */
int memory_load(const char *dir, const char *const *langs, size_t nlangs, json_t **persona, json_t **decisions, diag *d,
                diag *warnings);

/*
 * Load and check one identity.json-shaped file at PATH (a route's persona),
 * as memory_load does. Returns a new reference, or NULL after reporting into
 * D (a missing file is an error here).
 */
json_t *memory_load_persona(const char *path, const char *const *langs, size_t nlangs, diag *d, diag *warnings);

/*
 * The tables the two files are checked against (static, never NULL): an
 * SC_OBJECT entry for identity.json, an SC_LIST entry for decisions.json.
 * For tests and tools that compare them with the shipped JSON Schemas.
 */
const sc_field *memory_identity_spec(void);
const sc_field *memory_decisions_spec(void);

/* persona[key][lang], falling back to the first of LANGS that has one, then
 * to any string under key, then to DFLT. Borrowed. */
const char *memory_text(const json_t *persona, const char *key, const char *lang, const char *const *langs,
                        size_t nlangs, const char *dflt);

#endif
