/*
 * fuzz_kb.c - libFuzzer harness for the knowledge base's request path (core/kb.c):
 * kb_search and kb_excerpt with a customer's question.
 *
 * Every customer message becomes a query unfiltered, so arbitrary bytes (invalid
 * UTF-8, long words, thousands of words) must never crash or read out of bounds. The
 * demo KB is built once; each input is searched, and every hit excerpted twice with
 * different limits, which also drives the excerpt cache (the question parsed once, a
 * chunk's sentences stemmed once) through changing and repeated questions.
 * Build: fuzz/build.sh (KOKO_SRCDIR must point at the source tree for kb/demo).
 */
#include "kb.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static kb *fuzz_kb;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    const char *src = getenv("KOKO_SRCDIR");
    char g[4096], d[4096];
    snprintf(g, sizeof g, "%s/kb/_global", src && *src ? src : ".");
    snprintf(d, sizeof d, "%s/kb/demo", src && *src ? src : ".");
    const char *dirs[] = {g, d};
    const char *langs[] = {"hu", "en"};
    fuzz_kb = kb_build(NULL, dirs, 2, langs, 2, NULL, NULL);
    if (!fuzz_kb || kb_chunk_count(fuzz_kb) == 0) {
        fprintf(stderr, "fuzz_kb: no demo KB under %s (set KOKO_SRCDIR)\n", d);
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *q = malloc(size + 1);
    if (!q)
        return 0;
    memcpy(q, data, size);
    q[size] = '\0'; /* questions reach kb_search as C strings */
    kb_hit hits[8];
    size_t n = kb_search(fuzz_kb, q, hits, 8);
    for (size_t i = 0; i < n; i++) {
        char *e = kb_excerpt(fuzz_kb, hits[i].chunk, q, 300);
        if (strlen(e) > 300)
            abort();
        free(e);
        e = kb_excerpt(fuzz_kb, hits[i].chunk, q, 40);
        free(e);
    }
    /* a chunk excerpted for a question that did not find it */
    char *e = kb_excerpt(fuzz_kb, kb_chunk_at(fuzz_kb, size % kb_chunk_count(fuzz_kb)), q, 120);
    free(e);
    free(q);
    return 0;
}
