/*
 * text.h - the text normaliser shared by KB retrieval, language detection and memory:
 * UTF-8 decoding, case folding (Latin-1, Latin Extended-A, basic Greek and Cyrillic),
 * accent folding (á->a, ő->o, ß->ss), per-language stop words (hu, en, de) and
 * Snowball stemming through libstemmer. Words are turned into "terms": the
 * accent-folded stem(s) of a lower-cased word, so "Árak", "arak" and "árakat" meet.
 * Everything here works on caller-provided buffers; nothing allocates per token.
 */
#ifndef KOKO_CORE_TEXT_H
#define KOKO_CORE_TEXT_H

#include <stddef.h>
#include <stdint.h>

/* Returned by text_utf8_decode for a malformed sequence (it then advances by one byte). */
#define TEXT_BAD_CP 0xFFFFFFFFu

/* Longest word, in bytes, that the tokenizer keeps whole; longer runs are cut here. */
#define TEXT_WORD_MAX 64

/* Most languages one analyzer stems for. */
#define TEXT_MAX_LANGS 8

/* Most terms text_terms produces for one word (stems per language x 2 spellings, deduplicated). */
#define TEXT_MAX_TERMS (2 * TEXT_MAX_LANGS)

/*
 * Decodes one code point from s[0..len) (len > 0). Stores the number of bytes consumed in
 * *adv (always >= 1). Overlong forms, surrogates and values above U+10FFFF are malformed.
 */
uint32_t text_utf8_decode(const char *s, size_t len, size_t *adv);

/* Encodes cp into out (room for 4 bytes); returns the byte count (0 for an invalid cp). */
size_t text_utf8_encode(uint32_t cp, char *out);

/* 1 when s[0..len) is entirely well-formed UTF-8, else 0. */
int text_utf8_valid(const char *s, size_t len);

/* Lower-case of one code point (Latin-1, Latin Extended-A, Greek, Cyrillic; others unchanged). */
uint32_t text_fold_cp(uint32_t cp);

/* ASCII base letter of a lower- or upper-case accented Latin letter (ő->o, Ű->U), else cp.
 * ß maps to 's' here; text_normalize writes it as "ss". */
uint32_t text_unaccent_cp(uint32_t cp);

/* 1 when cp counts as part of a word: ASCII letters and digits, and letters above U+00BF
 * (punctuation, symbols, currency signs and emoji are separators). */
int text_is_word_cp(uint32_t cp);

/*
 * Writes the lower-cased (and, when unaccent is non-zero, accent-folded) form of
 * in[0..len) into out (cap bytes, always NUL-terminated when cap > 0). Malformed bytes are
 * dropped. Returns the length written (truncated at a code point boundary to fit).
 */
size_t text_normalize(const char *in, size_t len, int unaccent, char *out, size_t cap);

/*
 * Word iterator. Starting at *pos in s[0..len), finds the next word (a run of word code
 * points), stores its original byte span in *start and *wlen, writes its lower-cased form
 * (accents kept) into out (cap >= TEXT_WORD_MAX + 1 bytes) and advances *pos past it.
 * Returns the folded length, or 0 when there are no more words. Single-letter words are
 * returned too; callers decide what to keep.
 */
size_t text_next_word(const char *s, size_t len, size_t *pos, size_t *start, size_t *wlen, char *out, size_t cap);

/*
 * Stop words: 1 when word (lower-cased, accents kept or not) is a stop word of lang
 * ("hu", "en", "de"; other codes have none). The lists include the filler customers write
 * around a question ("szia", "kérem", "please", "bitte").
 */
int text_is_stopword(const char *lang, const char *word, size_t len);

/* Analyzer: one stemmer per language. Not thread-safe (libstemmer keeps state): one
 * analyzer per thread or per object that owns it. */
typedef struct text_analyzer text_analyzer;

/*
 * Creates an analyzer for the ISO 639-1 codes langs[0..n) (borrowed for the call).
 * A code without a Snowball stemmer or stop list still works (its words are only
 * folded); such codes are reported in err (one line) while the analyzer is still returned.
 * n == 0 means {"hu", "en"}. More than TEXT_MAX_LANGS codes: the rest are ignored and noted
 * in err. Returns NULL only when out of memory. Free with text_analyzer_free.
 */
text_analyzer *text_analyzer_new(const char *const *langs, size_t n, char *err, size_t errlen);
void text_analyzer_free(text_analyzer *a);

/* 1 when the lower-cased word is a stop word in any of the analyzer's languages, either
 * as written or with its accents folded ("kerem" == "kérem"). */
int text_analyzer_is_stop(const text_analyzer *a, const char *word, size_t len);

/* The analyzer's languages: count, and the i-th ISO 639-1 code (NULL when out of range). */
size_t text_analyzer_langs(const text_analyzer *a);
const char *text_analyzer_lang(const text_analyzer *a, size_t i);

/*
 * Guesses which of the analyzer's languages s[0..len) is written in, by counting stop
 * words. Returns the language index, or -1 when there are none or two languages tie.
 * Good enough to pick a stemmer for a KB paragraph; lang.h is the real detector.
 */
int text_analyzer_guess(const text_analyzer *a, const char *s, size_t len);

/*
 * The terms of one lower-cased word (from text_next_word): for language lang (an index
 * from text_analyzer_guess) or for every language (lang < 0), the accent-folded stem of
 * the word as written and of its accent-folded spelling, deduplicated. Numbers, and words
 * of a language without a stemmer, are only folded. Terms are written NUL-separated into buf
 * (cap bytes); terms[i] points into buf. Returns the term count (0 for a stop word or a
 * one-letter word). Uses the analyzer's stemmers: not thread-safe per analyzer.
 */
size_t text_terms(text_analyzer *a, int lang, const char *word, size_t len, char *buf, size_t cap, const char **terms,
                  size_t max_terms);

#endif /* KOKO_CORE_TEXT_H */
