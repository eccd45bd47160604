/*
 * lang.h - language detection for customer messages.
 *
 * The enrich stage asks which language a message is in, so the reply, the KB retrieval
 * (stemmer) and the holding messages use it. Detection is libexttextcat's n-gram
 * fingerprint distance over the candidate languages only, plus a cheap function-word and
 * letter hint that settles near ties (accent-free Hungarian, cs/sk, nl/en). lang_choose
 * layers the tenant's rule on top: only languages the tenant serves are ever answered.
 */
#ifndef KOKO_CORE_LANG_H
#define KOKO_CORE_LANG_H

#include <stddef.h>

/* Opaque detector: the loaded fingerprints plus a scratch buffer. */
typedef struct lang_detector lang_detector;

/* Most candidate languages one detector accepts. */
#define LANG_MAX_CANDIDATES 32

/* Fewer letters than this and lang_detect answers NULL ("Szia!", "ok", "köszi"). */
#define LANG_MIN_LETTERS 10

/* Only the first this-many bytes of a message are looked at; a few hundred bytes tell. */
#define LANG_SCAN_BYTES 512

/*
 * Loads the fingerprints of the candidate languages.
 * fpdb_dir: directory holding <code>.lm files; NULL means /usr/share/libexttextcat
 *   (Debian package libexttextcat-data). Borrowed for the call only.
 * candidates/n: ISO 639-1 codes ("hu", "EN" is accepted and lower-cased); duplicates are
 *   ignored. NULL or n == 0 means the default set: hu en de fr es it ro sk pl cs nl pt.
 *   Borrowed for the call only.
 * On failure returns NULL and writes a one-line reason into err (if err && errlen > 0):
 *   an invalid code, more than LANG_MAX_CANDIDATES codes, a missing directory or .lm file
 *   (naming the package to install), or out of memory.
 * The caller owns the result and frees it with lang_free.
 */
lang_detector *lang_new(const char *fpdb_dir, const char *const *candidates, size_t n,
                        char *err, size_t errlen);

/*
 * Detects the language of text[0..len). text need not be NUL-terminated nor valid UTF-8
 * (invalid bytes are treated as separators); only the first LANG_SCAN_BYTES bytes are used.
 * URLs, e-mail addresses, digits, punctuation and emoji are ignored.
 * Returns an ISO 639-1 code string owned by the detector (valid until lang_free), or
 * NULL when ld or text is NULL, the text has fewer than LANG_MIN_LETTERS letters, or the
 * best two languages are too close to call.
 * Not thread-safe per detector (it uses the detector's scratch buffer); use one detector
 * per thread. Does not block.
 */
const char *lang_detect(lang_detector *ld, const char *text, size_t len);

/*
 * The tenant rule. tenant_langs/n: the languages the tenant serves, in preference order
 * (codes like "hu", "en"; "hu-HU" matches "hu").
 *   - the text tells and the tenant lists that language -> that entry;
 *   - the text tells but the tenant does not list it -> tenant_langs[0];
 *   - the text cannot tell (short, ambiguous, ld NULL) -> the entry matching last_known
 *     (the conversation's previous language, may be NULL), else tenant_langs[0].
 * Returns a pointer into tenant_langs (borrowed from the caller), or NULL only when
 * tenant_langs is NULL or n == 0. Same threading rule as lang_detect.
 */
const char *lang_choose(lang_detector *ld, const char *text, size_t len,
                        const char *last_known, const char *const *tenant_langs, size_t n);

/* Frees the detector and everything it loaded. NULL is allowed. */
void lang_free(lang_detector *ld);

#endif /* KOKO_CORE_LANG_H */
