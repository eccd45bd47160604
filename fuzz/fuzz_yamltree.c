/*
 * fuzz_yamltree.c - libFuzzer harness for the configuration parser.
 *
 * Feeds arbitrary bytes to cfgdoc_parse_string and, when a document comes
 * out, exercises the location lookups on every node, so the parser, the
 * alias/merge copying and the path resolver all meet hostile input.
 * Build: clang -g -fsanitize=fuzzer,address,undefined -Icore fuzz/fuzz_yamltree.c
 *        core/yamltree.c core/diag.c $(pkg-config --cflags --libs jansson yaml-0.1)
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diag.h"
#include "yamltree.h"

/*
 * Looks up every node's path, depth-first. Paths whose keys hold '.' or '['
 * can be ambiguous ("a.b" the key, or b in a), so exactness is only required
 * of paths built from plain keys.
 */
static void walk(const cfgdoc *doc, const json_t *v, char *path, size_t len, size_t cap,
                 int plain)
{
    int line, col;
    int r = cfgdoc_loc(doc, path, &line, &col);
    if (r < 0 || line < 1 || col < 1 || (plain && r != 0))
        abort(); /* every node that exists must have a position */
    cfgdoc_key_loc(doc, path, &line, &col);
    cfgdoc_is_expanded(doc, path);
    cfgdoc_text(doc, path);
    if (json_is_object(v)) {
        const char *k;
        const json_t *c;
        json_object_foreach((json_t *)v, k, c) {
            int n = snprintf(path + len, cap - len, len ? ".%s" : "%s", k);
            if (n > 0 && (size_t)n < cap - len)
                walk(doc, c, path, len + (size_t)n, cap, plain && !strpbrk(k, ".["));
            path[len] = '\0';
        }
    } else if (json_is_array(v)) {
        for (size_t i = 0; i < json_array_size(v); i++) {
            int n = snprintf(path + len, cap - len, "[%zu]", i);
            if (n > 0 && (size_t)n < cap - len)
                walk(doc, json_array_get(v, i), path, len + (size_t)n, cap, plain);
            path[len] = '\0';
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    diag *d = diag_new();
    if (!d)
        return 0;
    cfgdoc *doc = cfgdoc_parse_string("fuzz.yaml", (const char *)data, size, d);
    if (doc) {
        if (diag_count(d) != 0)
            abort(); /* a document is returned only when there was no error */
        size_t cap = 1 << 16;
        char *path = calloc(1, cap);
        if (path) {
            walk(doc, cfgdoc_root(doc), path, 0, cap, 1);
            free(path);
        }
        cfgdoc_loc(doc, "no.such[7].path", &(int){0}, &(int){0});
        cfgdoc_free(doc);
    } else if (diag_count(d) == 0) {
        abort(); /* a refusal always says why */
    }
    char *all = diag_join(d, "\n");
    free(all);
    diag_free(d);
    return 0;
}
