/*
 * text.c - UTF-8, case and accent folding, stop words and stemming (see text.h).
 *
 * Folding is table-driven for the scripts our tenants write (Latin-1, Latin Extended-A,
 * basic Greek and Cyrillic). Stop lists are small and embedded; they are searched by
 * binary search over their accent-folded forms, built once per analyzer. Stemming goes
 * through libstemmer, one sb_stemmer per language per analyzer.
 */
#include "kokoconf.h"

#include <libstemmer.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "text.h"

uint32_t text_utf8_decode(const char *s, size_t len, size_t *adv)
{
    const unsigned char *p = (const unsigned char *)s;
    uint32_t cp;
    size_t need, i;

    *adv = 1;
    if (p[0] < 0x80)
        return p[0];
    if (p[0] < 0xC2)
        return TEXT_BAD_CP;
    if (p[0] < 0xE0) {
        need = 1;
        cp = p[0] & 0x1F;
    } else if (p[0] < 0xF0) {
        need = 2;
        cp = p[0] & 0x0F;
    } else if (p[0] < 0xF5) {
        need = 3;
        cp = p[0] & 0x07;
    } else {
        return TEXT_BAD_CP;
    }
    if (len < need + 1)
        return TEXT_BAD_CP;
    for (i = 1; i <= need; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return TEXT_BAD_CP;
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    if ((need == 2 && cp < 0x800) || (need == 3 && cp < 0x10000) || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return TEXT_BAD_CP;
    *adv = need + 1;
    return cp;
}

size_t text_utf8_encode(uint32_t cp, char *out)
{
    unsigned char *o = (unsigned char *)out;
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if ((cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
        return 0;
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

int text_utf8_valid(const char *s, size_t len)
{
    size_t i = 0, adv;
    while (i < len) {
        if ((unsigned char)s[i] < 0x80) {
            i++;
            continue;
        }
        if (text_utf8_decode(s + i, len - i, &adv) == TEXT_BAD_CP)
            return 0;
        i += adv;
    }
    return 1;
}

uint32_t text_fold_cp(uint32_t cp)
{
    if (cp < 0x80)
        return (cp >= 'A' && cp <= 'Z') ? cp + 32 : cp;
    if (cp >= 0xC0 && cp <= 0xDE && cp != 0xD7)
        return cp + 32;
    if (cp >= 0x100 && cp <= 0x17F) {
        if (cp <= 0x12F || (cp >= 0x132 && cp <= 0x137) || (cp >= 0x14A && cp <= 0x177))
            return (cp & 1) ? cp : cp + 1;
        if ((cp >= 0x139 && cp <= 0x148) || (cp >= 0x179 && cp <= 0x17E))
            return (cp & 1) ? cp + 1 : cp;
        if (cp == 0x130)
            return 'i';
        if (cp == 0x178)
            return 0xFF;
        if (cp == 0x17F)
            return 's';
        return cp;
    }
    if (cp >= 0x391 && cp <= 0x3AB && cp != 0x3A2)
        return cp + 32;
    if (cp >= 0x410 && cp <= 0x42F)
        return cp + 32;
    if (cp >= 0x400 && cp <= 0x40F)
        return cp + 80;
    return cp;
}

/* Base letters of U+00C0..U+00FF and U+0100..U+017F; '.' keeps the code point. */
static const char latin1_base[] = "AAAAAAACEEEEIIII"
                                  "DNOOOOO.OUUUUY.s"
                                  "aaaaaaaceeeeiiii"
                                  "dnooooo.ouuuuy.y";
static const char latin_ext_a_base[] = "AaAaAaCcCcCcCcDd"
                                       "DdEeEeEeEeEeGgGg"
                                       "GgGgHhHhIiIiIiIi"
                                       "IiIiJjKkkLlLlLlL"
                                       "lLlNnNnNnnNnOoOo"
                                       "OoOoRrRrRrSsSsSs"
                                       "SsTtTtTtUuUuUuUu"
                                       "UuUuWwYyYZzZzZzs";

uint32_t text_unaccent_cp(uint32_t cp)
{
    char c;
    if (cp >= 0xC0 && cp <= 0xFF) {
        c = latin1_base[cp - 0xC0];
        return c == '.' ? cp : (uint32_t)c;
    }
    if (cp >= 0x100 && cp <= 0x17F)
        return (uint32_t)latin_ext_a_base[cp - 0x100];
    return cp;
}

int text_is_word_cp(uint32_t cp)
{
    if (cp < 0x80)
        return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z');
    if (cp < 0xC0 || cp == 0xD7 || cp == 0xF7 || cp == TEXT_BAD_CP)
        return 0;
    if (cp >= 0x2000 && cp <= 0x2BFF) /* punctuation, currency, arrows, symbols */
        return 0;
    if ((cp >= 0x3000 && cp <= 0x303F) || (cp >= 0xE000 && cp <= 0xF8FF) || (cp >= 0xFE00 && cp <= 0xFE0F) ||
        (cp >= 0xFF00 && cp <= 0xFF0F) || cp >= 0x1F000)
        return 0;
    return 1;
}

size_t text_normalize(const char *in, size_t len, int unaccent, char *out, size_t cap)
{
    size_t i = 0, o = 0, adv, n;
    char enc[4];
    uint32_t cp;

    if (cap == 0)
        return 0;
    while (i < len) {
        cp = text_utf8_decode(in + i, len - i, &adv);
        i += adv;
        if (cp == TEXT_BAD_CP)
            continue;
        cp = text_fold_cp(cp);
        if (unaccent) {
            if (cp >= 0x300 && cp <= 0x36F) /* combining accents */
                continue;
            if (cp == 0xDF) {
                if (o + 2 >= cap)
                    break;
                out[o++] = 's';
                out[o++] = 's';
                continue;
            }
            cp = text_unaccent_cp(cp);
        }
        n = text_utf8_encode(cp, enc);
        if (o + n >= cap)
            break;
        memcpy(out + o, enc, n);
        o += n;
    }
    out[o] = '\0';
    return o;
}

size_t text_next_word(const char *s, size_t len, size_t *pos, size_t *start, size_t *wlen, char *out, size_t cap)
{
    size_t i = *pos, adv, b, o = 0, n;
    uint32_t cp;
    char enc[4];

    while (i < len) {
        cp = text_utf8_decode(s + i, len - i, &adv);
        if (text_is_word_cp(cp))
            break;
        i += adv;
    }
    if (i >= len) {
        *pos = len;
        return 0;
    }
    b = i;
    while (i < len) {
        cp = text_utf8_decode(s + i, len - i, &adv);
        if (!text_is_word_cp(cp))
            break;
        cp = text_fold_cp(cp);
        n = text_utf8_encode(cp, enc);
        if (o + n < cap && o + n <= TEXT_WORD_MAX) {
            memcpy(out + o, enc, n);
            o += n;
        }
        i += adv;
    }
    if (cap > 0)
        out[o < cap ? o : cap - 1] = '\0';
    *start = b;
    *wlen = i - b;
    *pos = i;
    return o;
}

/* ---- stop words ---------------------------------------------------------------------- */

static const char *const stop_hu[] = {
    "a",          "abban",     "adj",       "adjatok",    "akár",   "akkor",     "aki",    "akik",       "ahol",
    "ahogy",      "amely",     "amelyik",   "ami",        "amikor", "amit",      "amíg",   "az",         "azt",
    "azok",       "azon",      "azért",     "azzal",      "be",     "bár",       "csak",   "de",         "e",
    "egy",        "egyik",     "el",        "előre",      "ebben",  "én",        "engem",  "ennek",      "erre",
    "és",         "ez",        "ezek",      "ezt",        "ezzel",  "fel",       "hali",   "halló",      "hello",
    "helló",      "hogy",      "hogyan",    "hol",        "honnan", "hova",      "hová",   "hány",       "hányan",
    "hánykor",    "igen",      "illetve",   "is",         "itt",    "jó",        "jól",    "kell",       "kellene",
    "kérdés",     "kérdezni",  "kérdeznék", "kérem",      "kérek",  "kérlek",    "kérni",  "kérnék",     "akarok",
    "akarnék",    "csinálni",  "csináljak", "esetleg",    "ha",     "hogyha",    "ide",    "jutok",      "légyszi",
    "mire",       "oda",       "tenni",     "ki",         "kik",    "kéne",      "köszi",  "köszönöm",   "lehet",
    "lehetne",    "lenne",     "lesz",      "le",         "meg",    "mely",      "melyik", "mennyi",     "mennyibe",
    "mennyiért",  "mert",      "még",       "mi",         "miért",  "mik",       "mikor",  "milyen",     "mint",
    "mit",        "mibe",      "mivel",     "most",       "már",    "nagyon",    "neked",  "nekem",      "nektek",
    "nem",        "nincs",     "nálatok",   "nálunk",     "ok",     "oké",       "ott",    "pedig",      "rá",
    "sem",        "szeretnék", "szeretném", "szeretnénk", "szia",   "sziasztok", "te",     "ti",         "tudna",
    "tudnak",     "tudnátok",  "tudnék",    "tudok",      "tudom",  "tudtok",    "után",   "vagy",       "vagyok",
    "vagytok",    "van",       "vannak",    "vajon",      "valami", "volna",     "volt",   "érdeklődni", "érdeklődnék",
    "érdeklődöm", "ön",        "önök",      "önöknél",    "ő",      "ők",
};

static const char *const stop_en[] = {
    "a",      "about", "all",   "also",   "am",    "an",    "and",   "any",   "anything", "are",   "as",   "at",
    "be",     "been",  "but",   "by",     "can",   "could", "dear",  "cant",  "did",      "didnt", "do",   "does",
    "doesnt", "don",   "dont",  "doesn",  "guys",  "for",   "from",  "get",   "got",      "had",   "has",  "have",
    "he",     "hello", "her",   "here",   "hey",   "hi",    "how",   "i",     "if",       "im",    "in",   "is",
    "isn",    "isnt",  "ive",   "it",     "its",   "just",  "know",  "like",  "many",     "may",   "me",   "might",
    "much",   "must",  "my",    "need",   "no",    "not",   "of",    "ok",    "okay",     "on",    "or",   "our",
    "please", "pls",   "she",   "should", "so",    "some",  "tell",  "thank", "thanks",   "that",  "the",  "their",
    "them",   "there", "these", "they",   "this",  "those", "to",    "too",   "us",       "very",  "want", "was",
    "we",     "were",  "what",  "whats",  "when",  "where", "which", "who",   "whom",     "why",   "will", "with",
    "wont",   "would", "yes",   "you",    "youre", "your",
};

static const char *const stop_de[] = {
    "aber",  "am",      "an",     "auch",    "auf",   "aus",    "bei",    "bin",   "bist", "bitte",  "da",
    "danke", "das",     "dem",    "den",     "der",   "des",    "die",    "dir",   "dort", "du",     "durch",
    "ein",   "eine",    "einem",  "einen",   "einer", "eines",  "er",     "es",    "euch", "für",    "gibt",
    "guten", "hallo",   "hat",    "haben",   "habe",  "hier",   "ich",    "ihr",   "ihre", "im",     "in",
    "ist",   "ja",      "kann",   "kein",    "keine", "können", "könnte", "man",   "mein", "meine",  "mich",
    "mir",   "mit",     "möchte", "möchten", "muss",  "nach",   "nein",   "nicht", "noch", "nur",    "oder",
    "schon", "sehr",    "sich",   "sie",     "sind",  "so",     "soll",   "tag",   "über", "um",     "und",
    "uns",   "unter",   "viel",   "von",     "vor",   "wann",   "war",    "warum", "was",  "welche", "wer",
    "wie",   "wieviel", "will",   "wir",     "wo",    "würde",  "zu",     "zum",   "zur",
};

static int stop_list(const char *lang, const char *const **list, size_t *n)
{
    if (!lang)
        return 0;
    if (!strcmp(lang, "hu")) {
        *list = stop_hu;
        *n = sizeof stop_hu / sizeof *stop_hu;
    } else if (!strcmp(lang, "en")) {
        *list = stop_en;
        *n = sizeof stop_en / sizeof *stop_en;
    } else if (!strcmp(lang, "de")) {
        *list = stop_de;
        *n = sizeof stop_de / sizeof *stop_de;
    } else {
        return 0;
    }
    return 1;
}

int text_is_stopword(const char *lang, const char *word, size_t len)
{
    const char *const *list;
    size_t n, i;
    if (!stop_list(lang, &list, &n))
        return 0;
    for (i = 0; i < n; i++)
        if (strlen(list[i]) == len && !memcmp(list[i], word, len))
            return 1;
    return 0;
}

/* ---- analyzer ------------------------------------------------------------------------ */

typedef struct stop_entry {
    char *word;    /* accent-folded */
    unsigned mask; /* bit i: a stop word of the analyzer's language i */
} stop_entry;

struct text_analyzer {
    size_t nlang;
    char code[TEXT_MAX_LANGS][4];
    struct sb_stemmer *stem[TEXT_MAX_LANGS]; /* NULL: no stemmer for that language */
    size_t nstop;
    stop_entry *stop; /* sorted by word, unique */
};

static const struct {
    const char *code, *snowball;
} snowball_names[] = {
    {"hu", "hungarian"}, {"en", "english"},   {"de", "german"},     {"fr", "french"},   {"es", "spanish"},
    {"it", "italian"},   {"nl", "dutch"},     {"pt", "portuguese"}, {"ro", "romanian"}, {"sv", "swedish"},
    {"da", "danish"},    {"no", "norwegian"}, {"nb", "norwegian"},  {"fi", "finnish"},  {"ru", "russian"},
    {"tr", "turkish"},   {"el", "greek"},     {"lt", "lithuanian"}, {"sr", "serbian"},  {"ca", "catalan"},
    {"eu", "basque"},    {"ga", "irish"},     {"id", "indonesian"},
};

static const char *snowball_name(const char *code)
{
    size_t i;
    for (i = 0; i < sizeof snowball_names / sizeof *snowball_names; i++)
        if (!strcmp(code, snowball_names[i].code))
            return snowball_names[i].snowball;
    return NULL;
}

static int cmp_stop(const void *a, const void *b)
{
    return strcmp(((const stop_entry *)a)->word, ((const stop_entry *)b)->word);
}

/* Appends a, b and c to the NUL-terminated err (cut to fit). */
static void err_append(char *err, size_t errlen, const char *a, const char *b, const char *c)
{
    size_t used;
    if (!err || errlen == 0)
        return;
    used = strlen(err);
    if (used + 1 >= errlen)
        return;
    snprintf(err + used, errlen - used, "%s%s%s", a, b, c);
}

text_analyzer *text_analyzer_new(const char *const *langs, size_t n, char *err, size_t errlen)
{
    static const char *const defaults[] = {"hu", "en"};
    text_analyzer *a;
    const char *const *list;
    size_t nl, i, j, k, total = 0;
    char code[8], buf[TEXT_WORD_MAX + 1];
    const char *sn;

    if (err && errlen)
        err[0] = '\0';
    if (!langs || n == 0) {
        langs = defaults;
        n = 2;
    }
    a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    for (i = 0; i < n; i++)
        if (langs[i] && stop_list(langs[i], &list, &nl))
            total += nl;
    a->stop = calloc(total ? total : 1, sizeof *a->stop);
    if (!a->stop) {
        free(a);
        return NULL;
    }
    for (i = 0; i < n; i++) {
        if (!langs[i])
            continue;
        text_normalize(langs[i], strlen(langs[i]), 0, code, sizeof code);
        if (code[2] == '-' || code[2] == '_')
            code[2] = '\0';
        code[3] = '\0';
        for (j = 0; j < a->nlang; j++)
            if (!strcmp(a->code[j], code))
                break;
        if (j < a->nlang)
            continue; /* duplicate */
        if (a->nlang == TEXT_MAX_LANGS) {
            err_append(err, errlen, "text: more than 8 languages; '", code, "' is ignored. ");
            continue;
        }
        memcpy(a->code[a->nlang], code, 4);
        sn = snowball_name(code);
        if (sn) {
            a->stem[a->nlang] = sb_stemmer_new(sn, "UTF_8");
            if (!a->stem[a->nlang]) {
                text_analyzer_free(a);
                return NULL;
            }
        } else {
            err_append(err, errlen, "text: no stemmer for language '", code,
                       "'; its words are only case- and accent-folded. ");
        }
        if (stop_list(code, &list, &nl)) {
            for (k = 0; k < nl; k++) {
                text_normalize(list[k], strlen(list[k]), 1, buf, sizeof buf);
                a->stop[a->nstop].word = strdup(buf);
                a->stop[a->nstop].mask = 1u << a->nlang;
                if (!a->stop[a->nstop].word) {
                    text_analyzer_free(a);
                    return NULL;
                }
                a->nstop++;
            }
        }
        a->nlang++;
    }
    qsort(a->stop, a->nstop, sizeof *a->stop, cmp_stop);
    for (i = 0, j = 0; i < a->nstop; i++) {
        if (j > 0 && !strcmp(a->stop[j - 1].word, a->stop[i].word)) {
            a->stop[j - 1].mask |= a->stop[i].mask;
            free(a->stop[i].word);
            continue;
        }
        a->stop[j++] = a->stop[i];
    }
    a->nstop = j;
    return a;
}

void text_analyzer_free(text_analyzer *a)
{
    size_t i;
    if (!a)
        return;
    for (i = 0; i < a->nlang; i++)
        if (a->stem[i])
            sb_stemmer_delete(a->stem[i]);
    for (i = 0; i < a->nstop; i++)
        free(a->stop[i].word);
    free(a->stop);
    free(a);
}

size_t text_analyzer_langs(const text_analyzer *a)
{
    return a->nlang;
}

const char *text_analyzer_lang(const text_analyzer *a, size_t i)
{
    return i < a->nlang ? a->code[i] : NULL;
}

/* The stop-word languages of a lower-cased word, as a bit mask over the analyzer's languages. */
static unsigned stop_mask(const text_analyzer *a, const char *word, size_t len)
{
    char buf[TEXT_WORD_MAX + 1];
    stop_entry key, *hit;
    text_normalize(word, len, 1, buf, sizeof buf);
    key.word = buf;
    hit = bsearch(&key, a->stop, a->nstop, sizeof *a->stop, cmp_stop);
    return hit ? hit->mask : 0;
}

int text_analyzer_is_stop(const text_analyzer *a, const char *word, size_t len)
{
    return stop_mask(a, word, len) != 0;
}

int text_analyzer_guess(const text_analyzer *a, const char *s, size_t len)
{
    char word[TEXT_WORD_MAX + 1];
    size_t pos = 0, st, wl, n, i, count[TEXT_MAX_LANGS] = {0}, best = 0;
    int besti = -1, tie = 0;
    unsigned m;

    while ((n = text_next_word(s, len, &pos, &st, &wl, word, sizeof word)) > 0) {
        m = stop_mask(a, word, n);
        for (i = 0; m && i < a->nlang; i++)
            if (m & (1u << i))
                count[i]++;
    }
    for (i = 0; i < a->nlang; i++) {
        if (count[i] > best) {
            best = count[i];
            besti = (int)i;
            tie = 0;
        } else if (count[i] == best && best > 0) {
            tie = 1;
        }
    }
    return tie ? -1 : besti;
}

/* Appends term t[0..n) to the output unless it is already there. */
static void add_term(const char *t, size_t n, char *buf, size_t cap, size_t *used, const char **terms, size_t max_terms,
                     size_t *count)
{
    size_t i;
    if (n == 0 || *count >= max_terms || *used + n + 1 > cap)
        return;
    for (i = 0; i < *count; i++)
        if (strlen(terms[i]) == n && !memcmp(terms[i], t, n))
            return;
    memcpy(buf + *used, t, n);
    buf[*used + n] = '\0';
    terms[(*count)++] = buf + *used;
    *used += n + 1;
}

size_t text_terms(text_analyzer *a, int lang, const char *word, size_t len, char *buf, size_t cap, const char **terms,
                  size_t max_terms)
{
    char plain[TEXT_WORD_MAX * 2 + 1], folded[TEXT_WORD_MAX * 2 + 1];
    size_t plen, i, v, used = 0, count = 0, fl, cps = 0, adv;
    const char *src;
    size_t slen;
    const sb_symbol *st;
    int digits = 1;

    for (i = 0; i < len; i += adv) {
        uint32_t cp = text_utf8_decode(word + i, len - i, &adv);
        if (cp > '9' || cp < '0')
            digits = 0;
        cps++;
    }
    if (cps < 2 && !digits)
        return 0;
    if (text_analyzer_is_stop(a, word, len))
        return 0;
    plen = text_normalize(word, len, 1, plain, sizeof plain);
    for (i = 0; i < a->nlang && !digits; i++) {
        if ((lang >= 0 && (size_t)lang != i) || !a->stem[i])
            continue;
        for (v = 0; v < 2; v++) {
            src = v == 0 ? word : plain;
            slen = v == 0 ? len : plen;
            if (v == 1 && plen == len && !memcmp(word, plain, len))
                break; /* the word has no accents: one spelling only */
            st = sb_stemmer_stem(a->stem[i], (const sb_symbol *)src, (int)slen);
            if (st)
                fl = text_normalize((const char *)st, (size_t)sb_stemmer_length(a->stem[i]), 1, folded, sizeof folded);
            else /* out of memory inside libstemmer: fall back to the folded word */
                fl = text_normalize(plain, plen, 1, folded, sizeof folded);
            add_term(folded, fl, buf, cap, &used, terms, max_terms, &count);
        }
    }
    if (count == 0) /* a number, or no stemmer for the language(s) */
        add_term(plain, plen, buf, cap, &used, terms, max_terms, &count);
    return count;
}
