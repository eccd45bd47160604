/*
 * memory.h — operator memory: a tenant's persona (identity.json) and
 * standing decisions (decisions.json), operator-edited files loaded at
 * start and on reload. A broken file is a configuration error with its
 * file, line and column; a missing file means "none" ({} / []).
 */
#ifndef CORE_MEMORY_H
#define CORE_MEMORY_H

#include <jansson.h>
#include "diag.h"

/* Load DIR/identity.json and DIR/decisions.json. Always sets *PERSONA and
 * *DECISIONS (new references; {} and [] when absent or broken). Returns the
 * number of problems reported into D. */
int memory_load(const char *dir, json_t **persona, json_t **decisions, diag *d);

/* persona[key][lang], falling back to the first of LANGS that has one, then
 * to any string under key, then to DFLT. Borrowed. */
const char *memory_text(const json_t *persona, const char *key, const char *lang, const char *const *langs,
                        size_t nlangs, const char *dflt);

#endif
