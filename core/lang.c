/*
 * lang.c - language detection (see lang.h for the contract).
 *
 * libexttextcat's fingerprints (Cavnar-Trenkle n-gram ranks) are loaded for the candidate
 * languages only, through its fingerprint API (fp_Read/fp_Create/fp_Compare, public in
 * <libexttextcat/fingerprint.h>): that gives the distance to every candidate, not just the
 * few within 3 % that textcat_ClassifyFull reports, and needs no generated fpdb.conf.
 * Chat messages are short, so n-grams alone confuse close pairs (cs/sk, nl/en, accent-free
 * Hungarian vs Dutch). A hint settles those: each token that is one of a language's common
 * function words (matched accent-folded, so "kerul" = "kerül"), or holds a letter only that
 * language uses (ő, ű for Hungarian; ł, ś for Polish...), lowers that language's distance by
 * LANG_HINT_WEIGHT, i.e. the cost of a few unmatched n-grams.
 */
#include "lang.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <libexttextcat/fingerprint.h>

#define LANG_DEFAULT_DIR "/usr/share/libexttextcat"
/* Ranked n-grams per fingerprint, as libexttextcat's own classifier uses. */
#define LANG_FP_NGRAMS 400
/* One hint hit is worth this much n-gram distance (an unmatched n-gram costs 400). */
#ifndef LANG_HINT_WEIGHT
#define LANG_HINT_WEIGHT 1200
#endif
/* Best two adjusted distances closer than this (per mille of the best) = too close to call. */
#ifndef LANG_TIE_PERMILLE
#define LANG_TIE_PERMILLE 2
#endif
/* This many hint words of one candidate, and none of another, decide alone. */
#ifndef LANG_DECISIVE_HITS
#define LANG_DECISIVE_HITS 3
#endif
/* Longest folded word looked up in the hint table. */
#define LANG_WORD_MAX 15
#define LANG_HASH_SLOTS 2048
/* The letter-hint table covers U+00C0..U+024F (Latin-1 letters, Latin Extended-A and -B). */
#define LANG_LATIN_LO 0xC0
#define LANG_LATIN_HI 0x250

struct lang_slot {
    char word[LANG_WORD_MAX + 1];
    uint32_t mask; /* bit i: candidate i lists this word */
};

struct lang_detector {
    size_t n;
    int hu_idx; /* index of "hu" among the candidates, -1 if absent */
    void *fp[LANG_MAX_CANDIDATES];
    char code[LANG_MAX_CANDIDATES][3];
    uint32_t letter_mask[LANG_LATIN_HI - LANG_LATIN_LO];
    struct lang_slot words[LANG_HASH_SLOTS];
    char buf[LANG_SCAN_BYTES + 1];
};

/*
 * Hints per language: common chat function words, accent-folded lower-case ASCII, and
 * letters that few of these languages use (ő is only Hungarian, ä is German and Slovak).
 * A word or letter shared by two languages (hu/es "es", en/pl "i") lifts both and so only
 * separates them from the rest.
 */
static const struct {
    const char *code;
    const char *words;
    const char *letters;
} lang_hints[] = {
    {"hu",
     "az es hogy nem van meg mar csak egy vagy lesz kell mikor mennyi mennyibe mennyiert "
     "holnap szia koszi koszonom koszonjuk kerem kernem szeretnek szeretnem lehet lenne "
     "lehetne tudok tudom tudtok tudna vagyok vagyunk itt ott mert akkor mit miert hol "
     "hogyan igen jo napot ez ezt azt volt nincs sem kellene",
     "\xc5\x91\xc5\xb1"},
    {"en",
     "the and you your is are i im my me to for of it its this that what when where how can "
     "could would should please pls thanks thank thx hi hey dont do does did have has with "
     "not will want need there be was just get any u",
     ""},
    {"de",
     "der die das und ich nicht ist ein eine einen einem mit auf fur fuer sie wir ihr bitte "
     "danke hallo wie was wann wo kann konnt konnen mochte moechte gerne noch auch schon "
     "morgen heute habe bin seit mehr leider mir mich am",
     "\xc3\x9f\xc3\xa4"},
    {"nl",
     "het een en ik niet wat van voor met dat graag je jullie maar ook nog hoe kan wil sinds "
     "bedankt dank mijn kunnen hebben heb is",
     ""},
    {"fr",
     "le la les des du je est et pas pour que qui une un vous nous merci bonjour avec mon ma "
     "sur dans ce cest jai mais tres peux veux voudrais depuis en",
     "\xc5\x93\xc3\xb4"},
    {"es",
     "el la los las que y es en por para con no una un mi gracias hola quiero puedo esta "
     "donde cuanto como pero muy desde hace mas estoy tengo",
     "\xc3\xb1"},
    {"it",
     "il lo la di che e non per con un una sono ho grazie ciao vorrei posso come quanto mi "
     "della del anche ma solo da questo sei",
     ""},
    {"pt",
     "o os que e nao para com um uma obrigado obrigada ola voce esta muito por meu minha "
     "gostaria quanto desde tem estou",
     "\xc3\xa3\xc3\xb5\xc3\xb4"},
    {"ro",
     "si sa nu este o un la cu pentru care mai va multumesc buna ziua vreau pot am ce cat "
     "sunt foarte doar sau fac",
     "\xc4\x83\xc8\x99\xc5\x9f\xc8\x9b\xc5\xa3"},
    {"sk",
     "som sa nie ako alebo len mam chcem dakujem prosim kolko zajtra mozem budem ste si by "
     "na od do ale uz",
     "\xc4\xbe\xc4\xba\xc5\x95\xc3\xa4\xc3\xb4\xc5\x88"},
    {"cs",
     "jsem se jak nebo jen chci dekuji kolik zitra muzu budu jste si by na od ale uz ktery "
     "mate mam prosim",
     "\xc4\x9b\xc5\xaf\xc5\x99\xc5\x88"},
    {"pl",
     "sie jest nie czy ze to jak tylko mam chce dziekuje dzien dobry prosze ile jutro moge "
     "bardzo juz jestem mozna na od do i w z",
     "\xc5\x82\xc5\x84\xc5\x9b\xc5\xba\xc5\xbc\xc4\x85\xc4\x99"},
};

static const char *const lang_default_set[] = {"hu", "en", "de", "fr", "es", "it",
                                               "ro", "sk", "pl", "cs", "nl", "pt"};

/* ASCII base letter of U+00C0..U+024F, '_' where there is none (æ, þ, ...). */
static const char lang_fold_table[] =
    "aaaaaa_ceeeeiiii_nooooo_ouuuuy__aaaaaa_ceeeeiiii_nooooo_ouuuuy_y" /* U+00C0 */
    "aaaaaaccccccccddddeeeeeeeeeegggggggghh__iiiiiiiii___jjkk_llllll_" /* U+0100 */
    "_llnnnnnn___oooooo__rrrrrrsssssssstttt__uuuuuuuuuuuuwwyyyzzzzzz_" /* U+0140 */
    "________________________________oo_____________uu_______________" /* U+0180 */
    "_____________aaiioouuuuuuuuuu_aaaa____ggkkoooo__j___gg__nnaa____" /* U+01C0 */
    "aaaaeeeeiiiioooorrrruuuusstt__hh______aaeeooooooooyy____________" /* U+0200 */
    "________________";                                                /* U+0240 */

_Static_assert(sizeof lang_fold_table - 1 == LANG_LATIN_HI - LANG_LATIN_LO,
               "fold table covers U+00C0..U+024F");

__attribute__((format(printf, 3, 4))) static void lang_err(char *err, size_t errlen,
                                                             const char *fmt, ...)
{
    va_list ap;
    if (!err || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/*
 * Decodes one UTF-8 code point from p[0..end). Returns its length in bytes and stores it in
 * *cp, or returns 0 for an invalid, overlong, surrogate or truncated sequence.
 */
static size_t lang_utf8_decode(const unsigned char *p, const unsigned char *end, uint32_t *cp)
{
    size_t avail = (size_t)(end - p);
    unsigned char c = p[0];
    uint32_t v, min;
    size_t len;

    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2, v = c & 0x1F, min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3, v = c & 0x0F, min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4, v = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (avail < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        v = (v << 6) | (p[i] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF))
        return 0;
    *cp = v;
    return len;
}

/* Latin, Greek and Cyrillic letters count; digits, punctuation, symbols and emoji do not. */
static int lang_is_letter(uint32_t cp)
{
    if ((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z'))
        return 1;
    if (cp >= LANG_LATIN_LO && cp < LANG_LATIN_HI)
        return cp != 0xD7 && cp != 0xF7;
    return (cp >= 0x370 && cp <= 0x3FF) || (cp >= 0x400 && cp <= 0x52F);
}

/* Lower-cases the letters lang_is_letter accepts; never changes the UTF-8 length. */
static uint32_t lang_lower(uint32_t cp)
{
    if (cp >= 'A' && cp <= 'Z')
        return cp + 0x20;
    if (cp >= 0xC0 && cp <= 0xDE && cp != 0xD7)
        return cp + 0x20;
    if ((cp >= 0x100 && cp <= 0x137) || (cp >= 0x14A && cp <= 0x177) ||
        (cp >= 0x200 && cp <= 0x21F))
        return cp | 1;
    if ((cp >= 0x139 && cp <= 0x148) || (cp >= 0x179 && cp <= 0x17E))
        return (cp & 1) ? cp + 1 : cp;
    if (cp == 0x178)
        return 0xFF;
    if (cp >= 0x410 && cp <= 0x42F)
        return cp + 0x20;
    if (cp >= 0x400 && cp <= 0x40F)
        return cp + 0x50;
    return cp;
}

static size_t lang_utf8_encode(uint32_t cp, char *out)
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    /* lang_is_letter admits nothing above U+052F, so two bytes always suffice. */
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
}

static uint32_t lang_hash(const char *w)
{
    uint32_t h = 2166136261u;
    for (; *w; w++)
        h = (h ^ (unsigned char)*w) * 16777619u;
    return h;
}

static struct lang_slot *lang_word_slot(lang_detector *ld, const char *w, int insert)
{
    uint32_t i = lang_hash(w) & (LANG_HASH_SLOTS - 1);
    for (size_t probes = 0; probes < LANG_HASH_SLOTS; probes++) {
        struct lang_slot *s = &ld->words[i];
        if (s->word[0] == '\0')
            return insert ? s : NULL;
        if (strcmp(s->word, w) == 0)
            return s;
        i = (i + 1) & (LANG_HASH_SLOTS - 1);
    }
    return NULL;
}

/* Registers candidate idx's hint words and letters, if lang_hints has that language. */
static void lang_add_hints(lang_detector *ld, size_t idx)
{
    for (size_t h = 0; h < sizeof lang_hints / sizeof lang_hints[0]; h++) {
        if (strcmp(lang_hints[h].code, ld->code[idx]) != 0)
            continue;
        const char *p = lang_hints[h].words;
        while (*p) {
            char w[LANG_WORD_MAX + 1];
            size_t k = 0;
            while (*p == ' ')
                p++;
            while (*p && *p != ' ') {
                if (k < LANG_WORD_MAX)
                    w[k++] = *p;
                p++;
            }
            if (k == 0)
                continue;
            w[k] = '\0';
            struct lang_slot *s = lang_word_slot(ld, w, 1);
            if (s) {
                memcpy(s->word, w, k + 1);
                s->mask |= UINT32_C(1) << idx;
            }
        }
        const unsigned char *l = (const unsigned char *)lang_hints[h].letters;
        const unsigned char *lend = l + strlen(lang_hints[h].letters);
        while (l < lend) {
            uint32_t cp;
            size_t len = lang_utf8_decode(l, lend, &cp);
            if (len == 0)
                break;
            if (cp >= LANG_LATIN_LO && cp < LANG_LATIN_HI)
                ld->letter_mask[cp - LANG_LATIN_LO] |= UINT32_C(1) << idx;
            l += len;
        }
        return;
    }
}

/*
 * Accent-free Hungarian ("a kozelben", "dolgoztok") has few tell-tale n-grams, so a folded
 * word of 5+ letters with a Hungarian case or person suffix (-ban, -ben after a consonant,
 * -nak, -nek, -hoz, -hez, -tok, -tek, -unk) or the digraph gy before a vowel counts as a
 * Hungarian hint. -val/-vel/-rol are left out: English has "arrival", "level", "control".
 */
static int lang_hu_shape(const char *w, size_t len)
{
    static const char *const suffixes[] = {"ban", "nak", "nek", "hoz", "hez", "tok", "tek",
                                           "unk"};
    if (len >= 5) {
        const char *tail = w + len - 3;
        for (size_t i = 0; i < sizeof suffixes / sizeof suffixes[0]; i++) {
            if (memcmp(tail, suffixes[i], 3) == 0)
                return 1;
        }
        if (memcmp(tail, "ben", 3) == 0 && !strchr("aeiou", w[len - 4]))
            return 1;
    }
    for (size_t i = 0; i + 2 < len; i++) {
        if (w[i] == 'g' && w[i + 1] == 'y' && strchr("aeiou", w[i + 2]))
            return 1;
    }
    return 0;
}

/* Accepts "hu", "HU"; writes the lower-case code into out[3]. */
static int lang_code_ok(const char *c, char out[3])
{
    if (!c || !((c[0] | 0x20) >= 'a' && (c[0] | 0x20) <= 'z') ||
        !((c[1] | 0x20) >= 'a' && (c[1] | 0x20) <= 'z') || c[2] != '\0')
        return 0;
    out[0] = (char)(c[0] | 0x20);
    out[1] = (char)(c[1] | 0x20);
    out[2] = '\0';
    return 1;
}

lang_detector *lang_new(const char *fpdb_dir, const char *const *candidates, size_t n,
                        char *err, size_t errlen)
{
    const char *dir = fpdb_dir ? fpdb_dir : LANG_DEFAULT_DIR;
    struct stat st;

    if (!candidates || n == 0) {
        candidates = lang_default_set;
        n = sizeof lang_default_set / sizeof lang_default_set[0];
    }
    int rc = stat(dir, &st);
    if (rc != 0 || !S_ISDIR(st.st_mode)) {
        lang_err(err, errlen,
                 "lang: lang_new: fingerprint directory %s is missing (%s); install the "
                 "Debian package libexttextcat-data or point fpdb_dir at the .lm files",
                 dir, rc != 0 ? strerror(errno) : "not a directory");
        return NULL;
    }

    lang_detector *ld = calloc(1, sizeof *ld);
    if (!ld) {
        lang_err(err, errlen, "lang: lang_new: out of memory");
        return NULL;
    }
    ld->hu_idx = -1;
    for (size_t i = 0; i < n; i++) {
        char code[3], path[PATH_MAX];
        size_t j;

        if (!lang_code_ok(candidates[i], code)) {
            lang_err(err, errlen,
                     "lang: lang_new: candidate language \"%s\" is not an ISO 639-1 code "
                     "(use two letters, e.g. \"hu\")",
                     candidates[i] ? candidates[i] : "(null)");
            goto fail;
        }
        for (j = 0; j < ld->n && strcmp(ld->code[j], code) != 0; j++)
            ;
        if (j < ld->n)
            continue; /* duplicate */
        if (ld->n == LANG_MAX_CANDIDATES) {
            lang_err(err, errlen,
                     "lang: lang_new: more than %d candidate languages; list only the "
                     "languages the tenants serve", LANG_MAX_CANDIDATES);
            goto fail;
        }
        if ((size_t)snprintf(path, sizeof path, "%s/%s.lm", dir, code) >= sizeof path) {
            lang_err(err, errlen, "lang: lang_new: fingerprint path %s/%s.lm is too long", dir,
                     code);
            goto fail;
        }
        rc = stat(path, &st);
        if (rc != 0 || !S_ISREG(st.st_mode) || st.st_size == 0) {
            lang_err(err, errlen,
                     "lang: lang_new: fingerprint %s is missing or empty (%s); install the "
                     "Debian package libexttextcat-data or drop that language",
                     path, rc != 0 ? strerror(errno) : "not a non-empty file");
            goto fail;
        }
        void *fp = fp_Init(code);
        if (!fp) {
            lang_err(err, errlen, "lang: lang_new: out of memory loading %s", path);
            goto fail;
        }
        if (fp_Read(fp, path, LANG_FP_NGRAMS) == 0) {
            fp_Done(fp);
            lang_err(err, errlen, "lang: lang_new: cannot read fingerprint %s (%s)", path,
                     strerror(errno));
            goto fail;
        }
        ld->fp[ld->n] = fp;
        memcpy(ld->code[ld->n], code, sizeof code);
        lang_add_hints(ld, ld->n);
        if (strcmp(code, "hu") == 0)
            ld->hu_idx = (int)ld->n;
        ld->n++;
    }
    return ld;

fail:
    lang_free(ld);
    return NULL;
}

void lang_free(lang_detector *ld)
{
    if (!ld)
        return;
    for (size_t i = 0; i < ld->n; i++)
        fp_Done(ld->fp[i]);
    free(ld);
}

/* A token that is a link or an address says nothing about the writer's language. */
static int lang_is_link(const char *t, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (t[i] == '@')
            return 1;
        if (t[i] == ':' && i + 2 < len && t[i + 1] == '/' && t[i + 2] == '/')
            return 1;
    }
    return len > 4 && (t[0] | 0x20) == 'w' && (t[1] | 0x20) == 'w' && (t[2] | 0x20) == 'w' &&
           t[3] == '.';
}

static int lang_is_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

struct lang_norm {
    lang_detector *ld;
    size_t out;                 /* bytes written to ld->buf */
    size_t letters;             /* letters seen */
    char word[LANG_WORD_MAX + 1];
    size_t wlen;
    int wfoldable;              /* every letter of the word folds to ASCII */
    uint32_t wletters;          /* letter-hint bits of the word */
    unsigned hits[LANG_MAX_CANDIDATES];
};

static void lang_norm_sep(struct lang_norm *nm)
{
    if (nm->out > 0 && nm->ld->buf[nm->out - 1] != ' ' && nm->out < LANG_SCAN_BYTES)
        nm->ld->buf[nm->out++] = ' ';
}

/* Ends the current word: counts its hint hits and emits a separator. */
static void lang_norm_flush(struct lang_norm *nm)
{
    uint32_t mask = nm->wletters;

    if (nm->wlen > 0 && nm->wfoldable && nm->wlen <= LANG_WORD_MAX) {
        nm->word[nm->wlen] = '\0';
        const struct lang_slot *s = lang_word_slot(nm->ld, nm->word, 0);
        if (s)
            mask |= s->mask;
        if (nm->ld->hu_idx >= 0 && lang_hu_shape(nm->word, nm->wlen))
            mask |= UINT32_C(1) << nm->ld->hu_idx;
    }
    for (size_t i = 0; mask && i < nm->ld->n; i++, mask >>= 1)
        nm->hits[i] += mask & 1;
    nm->wlen = 0;
    nm->wfoldable = 1;
    nm->wletters = 0;
    lang_norm_sep(nm);
}

static void lang_norm_letter(struct lang_norm *nm, uint32_t cp)
{
    char enc[2];
    size_t elen;
    char fold = '_';

    cp = lang_lower(cp);
    elen = lang_utf8_encode(cp, enc);
    if (nm->out + elen > LANG_SCAN_BYTES)
        return;
    memcpy(nm->ld->buf + nm->out, enc, elen);
    nm->out += elen;
    nm->letters++;

    if (cp < 0x80) {
        fold = (char)cp;
    } else if (cp >= LANG_LATIN_LO && cp < LANG_LATIN_HI) {
        fold = lang_fold_table[cp - LANG_LATIN_LO];
        nm->wletters |= nm->ld->letter_mask[cp - LANG_LATIN_LO];
    }
    if (fold == '_')
        nm->wfoldable = 0;
    else if (nm->wlen < LANG_WORD_MAX)
        nm->word[nm->wlen] = fold;
    nm->wlen++;
}

/*
 * Copies text into ld->buf as lower-case letters separated by single spaces (apostrophes
 * inside words kept: the French and Italian fingerprints use them), and counts hint hits.
 */
static void lang_normalize(struct lang_norm *nm, const char *text, size_t len)
{
    const unsigned char *p = (const unsigned char *)text;
    const unsigned char *end = p + (len < LANG_SCAN_BYTES ? len : LANG_SCAN_BYTES);

    nm->wfoldable = 1;
    while (p < end) {
        const unsigned char *ts = p;
        while (ts < end && lang_is_space(*ts))
            ts++;
        const unsigned char *te = ts;
        while (te < end && !lang_is_space(*te))
            te++;
        if (ts == te)
            break;
        if (lang_is_link((const char *)ts, (size_t)(te - ts))) {
            p = te;
            continue;
        }
        for (p = ts; p < te;) {
            uint32_t cp;
            size_t clen = lang_utf8_decode(p, te, &cp);
            if (clen == 0) {
                lang_norm_flush(nm);
                p++;
                continue;
            }
            p += clen;
            if (lang_is_letter(cp)) {
                lang_norm_letter(nm, cp);
            } else if ((cp == '\'' || cp == 0x2019) && nm->wlen > 0 && p < te &&
                       nm->out < LANG_SCAN_BYTES) {
                nm->ld->buf[nm->out++] = '\'';
            } else {
                lang_norm_flush(nm);
            }
        }
        lang_norm_flush(nm);
    }
    lang_norm_flush(nm);
    while (nm->out > 0 && nm->ld->buf[nm->out - 1] == ' ')
        nm->out--;
    nm->ld->buf[nm->out] = '\0';
}

const char *lang_detect(lang_detector *ld, const char *text, size_t len)
{
    struct lang_norm nm;
    long best = LONG_MAX, second = LONG_MAX;
    size_t best_i = 0;

    if (!ld || !text || len == 0 || ld->n == 0)
        return NULL;
    memset(&nm, 0, sizeof nm);
    nm.ld = ld;
    lang_normalize(&nm, text, len);
    if (nm.letters < LANG_MIN_LETTERS)
        return NULL;
    /* hint words of one candidate only, and enough of them, decide without n-grams
     * (the n-gram pass would weigh them the same way; it costs more than the rest) */
    size_t only = 0, with_hits = 0;
    for (size_t i = 0; i < ld->n; i++)
        if (nm.hits[i]) {
            only = i;
            with_hits++;
        }
    if (with_hits == 1 && nm.hits[only] >= LANG_DECISIVE_HITS)
        return ld->code[only];

    void *unknown = fp_Init(NULL);
    if (!unknown)
        return NULL;
    fp_SetProperty(unknown, TCPROP_UTF8AWARE, TC_TRUE);
    if (fp_Create(unknown, ld->buf, (uint4)nm.out, LANG_FP_NGRAMS) == 0) {
        fp_Done(unknown);
        return NULL;
    }
    for (size_t i = 0; i < ld->n; i++) {
        long d = (long)fp_Compare(ld->fp[i], unknown, INT_MAX) -
                 (long)LANG_HINT_WEIGHT * (long)nm.hits[i];
        if (d < best) {
            second = best;
            best = d;
            best_i = i;
        } else if (d < second) {
            second = d;
        }
    }
    fp_Done(unknown);
    if (ld->n > 1 && (second - best) * 1000 < (best > 0 ? best : 1) * LANG_TIE_PERMILLE)
        return NULL;
    return ld->code[best_i];
}

/* "hu" matches "hu", "HU", "hu-HU", "hu_HU". */
static int lang_same(const char *code, const char *tenant)
{
    if (!code || !tenant || code[0] == '\0' || code[1] == '\0' || tenant[0] == '\0' ||
        tenant[1] == '\0')
        return 0;
    return (code[0] | 0x20) == (tenant[0] | 0x20) && (code[1] | 0x20) == (tenant[1] | 0x20) &&
           (tenant[2] == '\0' || tenant[2] == '-' || tenant[2] == '_') &&
           (code[2] == '\0' || code[2] == '-' || code[2] == '_');
}

const char *lang_choose(lang_detector *ld, const char *text, size_t len,
                        const char *last_known, const char *const *tenant_langs, size_t n)
{
    if (!tenant_langs || n == 0)
        return NULL;
    const char *detected = lang_detect(ld, text, len);
    const char *want = detected ? detected : last_known;
    for (size_t i = 0; want && i < n; i++) {
        if (lang_same(want, tenant_langs[i]))
            return tenant_langs[i];
    }
    return tenant_langs[0];
}
