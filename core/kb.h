/*
 * kb.h - a tenant's knowledge base: Markdown files chunked by heading, indexed for BM25.
 *
 * kb_build reads the tenant's kb: folders once per generation (start and every reload),
 * strips the Markdown markup, cuts each file into chunks at its headings and builds an
 * inverted index over normalised terms (core/text.h: case- and accent-folded Snowball
 * stems for the tenant's languages, plus a short accent-free word prefix that catches
 * typos and unknown inflections). Heading words count KB_HEADING_WEIGHT times.
 * Chunks are stemmed in the language their stop words show; a query is stemmed in its own
 * language when its stop words tell, else in all the tenant's languages. A few question cue
 * words ("mennyibe", "how much", "when") add a light weight to the words that answer them.
 * The request path only calls kb_search / kb_excerpt; kb_search does not allocate.
 */
#ifndef KOKO_CORE_KB_H
#define KOKO_CORE_KB_H

#include <stddef.h>

/* BM25 parameters. */
#define KB_BM25_K1 1.2
#define KB_BM25_B 0.75
/* A heading word counts as this many body words (in the chunk's own heading path). */
#define KB_HEADING_WEIGHT 3
/* Query weight of a prefix match relative to a stem match; also its coverage credit. */
#define KB_PREFIX_WEIGHT 0.35
/* Coverage credit of a query word matched only through its prefix. */
#define KB_PREFIX_COVERAGE 0.6
/* Coverage weight of a query word the KB has never seen, as a multiple of the highest IDF:
 * "pizza" or "iphone" in a question is strong evidence the KB cannot answer it. */
#define KB_UNSEEN_FACTOR 1.5
/* Score weight of the answer words a question cue implies ("mennyibe" -> ár, díj). */
#define KB_CUE_WEIGHT 0.5
/* Accent-free prefix length (code points) indexed for words longer than it. */
#define KB_PREFIX_LEN 5
/* Sections longer than this (bytes of stripped text) are split at paragraph breaks. */
#define KB_CHUNK_MAX 3000
/* Files larger than this are skipped with a warning. */
#define KB_FILE_MAX (8u * 1024 * 1024)
/* Only the first this-many distinct query words are used. */
#define KB_QUERY_MAX_WORDS 32

/* kb_answerable defaults, tuned on tests/data/kb_questions.tsv (see tests/test_kb.c). */
#define KB_DEFAULT_MIN_SCORE 1.0
#define KB_DEFAULT_MIN_COVERAGE 0.45

/* Called during kb_build only (synchronously, on the building thread) for every file or
 * folder that is skipped. path and why are borrowed for the call. */
typedef void (*kb_warn_fn)(void *ctx, const char *path, const char *why);

typedef struct kb kb;

typedef struct kb_chunk {
    const char *file;    /* the path as configured, e.g. "kb/demo/pricing.md" */
    const char *heading; /* heading path joined by " › " ("Árak › Csomagok"); "" before the first heading */
    const char *text;    /* markup-free text, NUL-terminated */
    size_t text_len;
} kb_chunk;

typedef struct kb_hit {
    const kb_chunk *chunk; /* borrowed from the kb; valid until kb_free */
    double score;          /* BM25 */
    double coverage;       /* IDF-weighted share of the query's content words found, [0,1] */
} kb_hit;

/*
 * Builds a KB from every regular file named *.md directly inside each of dirs[0..ndirs)
 * (non-recursive; files taken in byte-wise name order, folders in the given order).
 * dirs are relative to base_dir (NULL = the working directory) unless absolute; chunk
 * file names are dir + "/" + name exactly as given ("kb/demo/pricing.md").
 * langs/nlangs: the tenant's ISO 639-1 languages (NULL/0 = hu, en).
 * Missing folders, unreadable, oversized, empty or invalid-UTF-8 files and languages
 * without a stemmer are reported through warn (may be NULL) and skipped; they never fail
 * the build. All arguments are borrowed for the call.
 * Returns NULL only when out of memory; the caller frees the result with kb_free.
 */
kb *kb_build(const char *base_dir, const char *const *dirs, size_t ndirs, const char *const *langs, size_t nlangs,
             kb_warn_fn warn, void *ctx);

/*
 * Top max_hits chunks for query, best first, written to out; returns how many (0 when
 * nothing matches). Thread-compatible: no global state, but one kb's searches (and
 * kb_excerpt) must not run concurrently, because the kb owns its stemmers and scratch
 * space. Does not allocate.
 */
size_t kb_search(const kb *k, const char *query, kb_hit *out, size_t max_hits);

/*
 * Decision rule for "the KB can answer this": best != NULL, best->score >= min_score and
 * best->coverage >= min_coverage. Pass KB_DEFAULT_MIN_SCORE / KB_DEFAULT_MIN_COVERAGE
 * unless a tenant overrides them.
 */
int kb_answerable(const kb_hit *best, double min_score, double min_coverage);

/*
 * The sentences of chunk c most relevant to query, in their original order, joined by a
 * space, at most max_chars bytes; a sentence is never cut unless a single one is longer
 * than max_chars (then it is cut at a UTF-8 boundary). With no matching sentence the
 * chunk's first sentences are used. Returns a malloc'd string the caller frees (NULL only
 * when out of memory). Same threading rule as kb_search.
 */
char *kb_excerpt(const kb *k, const kb_chunk *c, const char *query, size_t max_chars);

size_t kb_chunk_count(const kb *k);
size_t kb_file_count(const kb *k);                  /* files indexed (skipped ones not counted) */
size_t kb_bytes(const kb *k);                       /* total size of the indexed files' contents */
const kb_chunk *kb_chunk_at(const kb *k, size_t i); /* NULL when i is out of range */

/* FNV-1a 64 over every indexed file's path and contents, as 16 hex digits; owned by k. */
const char *kb_hash(const kb *k);

void kb_free(kb *k); /* NULL is allowed */

#endif /* KOKO_CORE_KB_H */
