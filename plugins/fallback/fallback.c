/*
 * plugins/fallback/fallback.c — the `fallback` LLM backend, the chain's last resort.
 *
 * It calls no model and invents nothing. When the best retrieved knowledge-base
 * passage is strong enough it answers with that passage's excerpt and names its
 * source; otherwise (or when a human was asked for) it answers with the
 * persona's holding message and asks for a handoff. It always answers, with
 * status KOKO_OK, so the chain gemini → openai → fallback never leaves a
 * customer without a reply. The answer is computed at once but delivered from
 * a zero-delay host timer, so DONE always runs later, as the ABI requires.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "koko/host.h"
#include "koko/plugin.h"

/* The defaults are the knowledge base's own decision rule (core/kb.h
 * KB_DEFAULT_MIN_SCORE / KB_DEFAULT_MIN_COVERAGE), tuned on the labelled
 * questions in tests/data/kb_questions.tsv. */
#define DEFAULT_MIN_SCORE 1.0
#define DEFAULT_MIN_COVERAGE 0.45
#define DEFAULT_MAX_CHARS 600
#define MAX_CHARS_LO 80
#define MAX_CHARS_HI 4000
/* confidence = coverage * score / (score + CONFIDENCE_HALF_SCORE): the score
 * factor saturates towards 1 and is one half at this BM25 score. */
#define CONFIDENCE_HALF_SCORE 3.0
/* A text "looks Hungarian" when at least this share of its letters are
 * Hungarian-specific (áéíóöőúüű, either case). English text scores ~0,
 * Hungarian prose 0.08-0.12. */
#define HU_LETTER_RATIO 0.03

static const char *const top_keys[] = {"min_score", "min_coverage", "max_chars", "texts", NULL};
static const char *const text_keys[] = {"holding", "source_label", NULL};

typedef struct builtin_text {
    const char *lang, *text;
} builtin_text;

static const builtin_text builtin_holding[] = {
    {"hu", "Köszönöm a kérdését, kollégánk hamarosan válaszol."},
    {"en", "Thank you for your question, a colleague will reply shortly."},
    {NULL, NULL},
};

static const builtin_text builtin_source_label[] = {
    {"hu", "Forrás"},
    {"en", "Source"},
    {"de", "Quelle"},
    {NULL, NULL},
};

typedef struct fallback fallback;

/* One answer waiting for its timer. Owns its strings. */
typedef struct answer {
    fallback *fb;
    koko_timer *timer; /* NULL when deferred through post() instead */
    koko_llm_fn done;
    void *arg;
    char *text;
    char *reason; /* handoff reason, NULL without handoff */
    int handoff;
    double confidence;
    size_t cited;
    size_t n_cited;
    int refused; /* a task (ABI 1.3 instruction): this backend answers only from the knowledge base */
    struct answer *prev, *next;
} answer;

struct fallback {
    const koko_host *host;
    koko_instance *inst;
    double min_score, min_coverage;
    int max_chars;
    json_t *texts; /* own deep copy of config "texts", or NULL */
    answer *pending;
    size_t n_pending;
    int stopping;
    int drained_called;
    koko_drained_fn drained;
};

/* ---- configuration ---- */

static const char *json_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return json_string_length(v) ? "a string" : "an empty string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    default: return "null";
    }
}

static int key_known(const char *key, const char *const *known)
{
    for (; *known; known++)
        if (strcmp(key, *known) == 0)
            return 1;
    return 0;
}

static void report_unknown(koko_diag *d, const char *path, const char *key, const char *const *known)
{
    char list[256] = "";
    size_t off = 0;
    for (const char *const *k = known; *k; k++) {
        int n = snprintf(list + off, sizeof list - off, "%s%s", off ? ", " : "", *k);
        if (n < 0 || (size_t)n >= sizeof list - off)
            break;
        off += (size_t)n;
    }
    d->error(d, path, "unknown key \"%s\" (known: %s)", key, list);
}

static int lang_code_ok(const char *s)
{
    size_t n = strlen(s);
    if (n < 2 || n > 3)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] < 'a' || s[i] > 'z')
            return 0;
    return 1;
}

/* texts.holding / texts.source_label: an object language code → non-empty string. */
static int check_lang_map(const json_t *v, const char *path, koko_diag *d)
{
    if (!json_is_object(v)) {
        d->error(d, path, "expected an object mapping language codes to strings, got %s", json_kind(v));
        return 1;
    }
    int n = 0;
    const char *lang;
    const json_t *s;
    char sub[160];
    json_object_foreach ((json_t *)v, lang, s) {
        snprintf(sub, sizeof sub, "%s.%s", path, lang);
        if (!lang_code_ok(lang)) {
            d->error(d, sub, "expected a language code of 2-3 lowercase letters (e.g. \"hu\")");
            n++;
        } else if (!json_is_string(s) || json_string_length(s) == 0) {
            d->error(d, sub, "expected a non-empty string, got %s", json_kind(s));
            n++;
        }
    }
    return n;
}

static int check_texts(const json_t *v, koko_diag *d)
{
    if (!json_is_object(v)) {
        d->error(d, "texts", "expected an object with \"holding\" and/or \"source_label\", got %s",
                 json_kind(v));
        return 1;
    }
    int n = 0;
    const char *key;
    const json_t *sub;
    char path[64];
    json_object_foreach ((json_t *)v, key, sub) {
        snprintf(path, sizeof path, "texts.%s", key);
        if (!key_known(key, text_keys)) {
            report_unknown(d, path, key, text_keys);
            n++;
        } else {
            n += check_lang_map(sub, path, d);
        }
    }
    return n;
}

static int check_config(const json_t *cfg, koko_diag *d)
{
    if (!cfg)
        return 0;
    if (!json_is_object(cfg)) {
        d->error(d, "", "expected an object (the fallback backend's settings), got %s", json_kind(cfg));
        return 1;
    }
    int n = 0;
    const char *key;
    const json_t *v;
    json_object_foreach ((json_t *)cfg, key, v) {
        if (strcmp(key, "min_score") == 0) {
            if (!json_is_number(v)) {
                d->error(d, key, "expected a number >= 0, got %s", json_kind(v));
                n++;
            } else if (json_number_value(v) < 0) {
                d->error(d, key, "expected a number >= 0, got %g", json_number_value(v));
                n++;
            }
        } else if (strcmp(key, "min_coverage") == 0) {
            if (!json_is_number(v)) {
                d->error(d, key, "expected a number between 0 and 1, got %s", json_kind(v));
                n++;
            } else if (json_number_value(v) < 0 || json_number_value(v) > 1) {
                d->error(d, key, "expected a number between 0 and 1, got %g", json_number_value(v));
                n++;
            }
        } else if (strcmp(key, "max_chars") == 0) {
            if (!json_is_integer(v)) {
                d->error(d, key, "expected an integer between %d and %d, got %s", MAX_CHARS_LO,
                         MAX_CHARS_HI, json_kind(v));
                n++;
            } else if (json_integer_value(v) < MAX_CHARS_LO || json_integer_value(v) > MAX_CHARS_HI) {
                d->error(d, key, "expected an integer between %d and %d, got %lld", MAX_CHARS_LO,
                         MAX_CHARS_HI, (long long)json_integer_value(v));
                n++;
            }
        } else if (strcmp(key, "texts") == 0) {
            n += check_texts(v, d);
        } else {
            report_unknown(d, key, key, top_keys);
            n++;
        }
    }
    return n;
}

static int fallback_validate(const json_t *cfg, koko_diag *diag)
{
    return check_config(cfg, diag);
}

/* A koko_diag that keeps the first problem, so init() can say what is wrong. */
typedef struct first_error {
    koko_diag d;
    char *buf;
    size_t len;
    int count;
} first_error;

__attribute__((format(printf, 3, 4))) static void first_error_fn(koko_diag *d, const char *relpath,
                                                                  const char *fmt, ...)
{
    first_error *fe = d->priv;
    if (fe->count++ > 0 || !fe->buf || fe->len == 0)
        return;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(fe->buf, fe->len, "fallback: invalid configuration: %s%s%s", relpath ? relpath : "",
             relpath && *relpath ? ": " : "", msg);
}

/* ---- choosing and shaping the answer ---- */

/* The 2-byte UTF-8 code point at S, or 0 when S is not one. */
static unsigned utf8_two(const unsigned char *s)
{
    if ((s[0] & 0xE0) == 0xC0 && (s[1] & 0xC0) == 0x80)
        return ((unsigned)(s[0] & 0x1F) << 6) | (s[1] & 0x3F);
    return 0;
}

static int is_hu_letter(unsigned cp)
{
    static const unsigned hu[] = {0xE1, 0xE9, 0xED, 0xF3, 0xF6, 0x151, 0xFA, 0xFC, 0x171,
                                  0xC1, 0xC9, 0xCD, 0xD3, 0xD6, 0x150, 0xDA, 0xDC, 0x170};
    for (size_t i = 0; i < sizeof hu / sizeof hu[0]; i++)
        if (cp == hu[i])
            return 1;
    return 0;
}

/* Does TEXT look like it is written in LANG? Only Hungarian is told apart:
 * for "hu" the text must look Hungarian, for any other language it must not.
 * Letters are ASCII letters plus every non-ASCII code point. */
static int looks_like(const char *text, const char *lang)
{
    size_t letters = 0, hu = 0;
    for (const unsigned char *s = (const unsigned char *)text; *s;) {
        if (*s < 0x80) {
            if ((*s | 0x20) >= 'a' && (*s | 0x20) <= 'z')
                letters++;
            s++;
            continue;
        }
        letters++;
        unsigned cp = utf8_two(s);
        if (cp && is_hu_letter(cp))
            hu++;
        s++;
        while ((*s & 0xC0) == 0x80)
            s++;
    }
    int is_hu = letters > 0 && (double)hu >= HU_LETTER_RATIO * (double)letters;
    return strcmp(lang, "hu") == 0 ? is_hu : !is_hu;
}

static const char *chunk_body(const koko_chunk *c)
{
    if (c->excerpt && c->excerpt[strspn(c->excerpt, " \t\r\n")])
        return c->excerpt;
    if (c->text && c->text[strspn(c->text, " \t\r\n")])
        return c->text;
    return NULL;
}

static int chunk_strong(const fallback *fb, const koko_chunk *c)
{
    return c->score >= fb->min_score && c->coverage >= fb->min_coverage && chunk_body(c);
}

/*
 * The chunk to answer from, or -1. Among the chunks strong enough (kept in the
 * core's order, best first) take the first that looks like the requested
 * language; when none does, the first strong one.
 */
static long pick_chunk(const fallback *fb, const koko_llm_request *r, const char *lang)
{
    long first = -1;
    for (size_t i = 0; r->chunks && i < r->n_chunks; i++) {
        const koko_chunk *c = &r->chunks[i];
        if (!chunk_strong(fb, c))
            continue;
        if (first < 0)
            first = (long)i;
        if (looks_like(chunk_body(c), lang))
            return (long)i;
    }
    return first;
}

static size_t utf8_len(const char *s)
{
    size_t n = 1;
    while ((s[n] & 0xC0) == 0x80)
        n++;
    return n;
}

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Is the code point at S a sentence terminator (. ! ? …)? Returns its byte length, or 0. */
static size_t terminator(const char *s)
{
    if (*s == '.' || *s == '!' || *s == '?')
        return 1;
    if (strncmp(s, "\xE2\x80\xA6", 3) == 0) /* … */
        return 3;
    return 0;
}

/* Closing marks that may follow a terminator: ) " ' » ” ’. Byte length or 0. */
static size_t closer(const char *s)
{
    if (*s == ')' || *s == '"' || *s == '\'')
        return 1;
    if (strncmp(s, "\xC2\xBB", 2) == 0)
        return 2;
    if (strncmp(s, "\xE2\x80\x9D", 3) == 0 || strncmp(s, "\xE2\x80\x99", 3) == 0)
        return 3;
    return 0;
}

/*
 * SRC trimmed to at most MAX code points (caller frees). Whitespace at both
 * ends is dropped. A longer text is cut after the last sentence end (. ! ? …,
 * optionally followed by closing quotes or brackets, then whitespace) that
 * fits; with no sentence end, after the last whole word that leaves room for
 * an added "…"; with no word break either, after MAX-1 code points plus "…".
 */
static char *trim_excerpt(const char *src, int max)
{
    while (is_space(*src))
        src++;
    size_t len = strlen(src);
    while (len > 0 && is_space(src[len - 1]))
        len--;

    size_t chars = 0, pos = 0, sentence_end = 0, word_end = 0, hard_end = 0;
    while (pos < len && chars < (size_t)max) {
        if (chars == (size_t)max - 1)
            hard_end = pos;
        size_t t = terminator(src + pos);
        if (t) {
            size_t end = pos + t, cp = chars + 1;
            for (size_t c; end < len && (c = closer(src + end)) != 0; end += c)
                cp++;
            if (cp <= (size_t)max && (end >= len || is_space(src[end])))
                sentence_end = end;
        }
        if (is_space(src[pos]) && chars < (size_t)max - 1)
            word_end = pos;
        pos += utf8_len(src + pos);
        chars++;
    }
    if (pos >= len) /* fits whole */
        return strndup(src, len);

    size_t cut;
    const char *ellipsis = "";
    if (sentence_end) {
        cut = sentence_end;
    } else {
        cut = word_end ? word_end : hard_end;
        ellipsis = "\xE2\x80\xA6";
    }
    while (cut > 0 && is_space(src[cut - 1]))
        cut--;
    size_t elen = strlen(ellipsis);
    char *out = malloc(cut + elen + 1);
    if (!out)
        return NULL;
    memcpy(out, src, cut);
    memcpy(out + cut, ellipsis, elen + 1);
    return out;
}

/* OBJ[KEY][LANG] when it is a non-empty string. */
static const char *lang_lookup(const json_t *obj, const char *key, const char *lang)
{
    if (!obj || !lang)
        return NULL;
    const char *s = json_string_value(json_object_get(json_object_get(obj, key), lang));
    return s && *s ? s : NULL;
}

static const char *builtin_lookup(const builtin_text *t, const char *lang)
{
    for (; lang && t->lang; t++)
        if (strcmp(t->lang, lang) == 0)
            return t->text;
    return NULL;
}

/*
 * The text KEY ("holding", "source_label") for LANG, first match of:
 * persona[KEY][LANG], persona[KEY][FIRST] (the tenant's first language),
 * config texts[KEY][LANG], texts[KEY][FIRST], built-in[LANG], built-in[FIRST],
 * built-in["en"].
 */
static const char *text_for(const fallback *fb, const json_t *persona, const char *key,
                            const char *lang, const char *first, const builtin_text *builtin)
{
    const char *s;
    if ((s = lang_lookup(persona, key, lang)) || (s = lang_lookup(persona, key, first)) ||
        (s = lang_lookup(fb->texts, key, lang)) || (s = lang_lookup(fb->texts, key, first)) ||
        (s = builtin_lookup(builtin, lang)) || (s = builtin_lookup(builtin, first)))
        return s;
    return builtin_lookup(builtin, "en");
}

static char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xasprintf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return NULL;
    char *s = malloc((size_t)n + 1);
    if (!s)
        return NULL;
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

static double confidence_of(const koko_chunk *c)
{
    double cov = c->coverage < 0 ? 0 : c->coverage > 1 ? 1 : c->coverage;
    double score = c->score < 0 ? 0 : c->score;
    return cov * score / (score + CONFIDENCE_HALF_SCORE);
}

/* Why no passage was good enough, for the operator's handoff note. */
static char *weak_reason(const fallback *fb, const koko_llm_request *r)
{
    if (!r->chunks || r->n_chunks == 0)
        return xasprintf("no knowledge-base passage found");
    const koko_chunk *best = &r->chunks[0];
    if (best->score < fb->min_score)
        return xasprintf("no knowledge-base passage strong enough (best score %.1f < %.1f)",
                         best->score, fb->min_score);
    if (best->coverage < fb->min_coverage)
        return xasprintf("no knowledge-base passage strong enough (best coverage %.2f < %.2f)",
                         best->coverage, fb->min_coverage);
    return xasprintf("no knowledge-base passage strong enough (the best passage has no text)");
}

/* Fill A from request R. 0 = ok, -1 = out of memory. */
static int compose(const fallback *fb, const koko_llm_request *r, answer *a)
{
    const char *first = r->languages && r->n_languages > 0 && r->languages[0] && *r->languages[0]
                            ? r->languages[0]
                            : NULL;
    const char *lang = r->language && *r->language ? r->language : first ? first : "en";
    const json_t *persona = json_is_object(r->persona) ? r->persona : NULL;

    long pick = r->want_handoff ? -1 : pick_chunk(fb, r, lang);
    if (pick >= 0) {
        const koko_chunk *c = &r->chunks[pick];
        /* the passage's relevant sentences, made by the host on request (ABI 1.2) */
        const char *excerpt = NULL;
        if (fb->host->size >= offsetof(koko_host, chunk_excerpt) + sizeof(void *) && fb->host->chunk_excerpt &&
            KOKO_HAS_FIELD(r, koko_llm_request, job) && r->job)
            excerpt = fb->host->chunk_excerpt(fb->inst, r->job, (size_t)pick);
        char *body = trim_excerpt(excerpt && excerpt[strspn(excerpt, " \t\r\n")] ? excerpt : chunk_body(c),
                                  fb->max_chars);
        if (!body)
            return -1;
        const char *source = c->heading && *c->heading ? c->heading : c->file && *c->file ? c->file : NULL;
        if (source) {
            const char *label = text_for(fb, persona, "source_label", lang, first, builtin_source_label);
            a->text = xasprintf("%s\n\n(%s: %s)", body, label, source);
            free(body);
        } else {
            a->text = body;
        }
        a->cited = (size_t)pick;
        a->n_cited = 1;
        a->confidence = confidence_of(c);
        fb->host->log(fb->inst, KOKO_LOG_DEBUG,
                      "answered from chunk %ld (%s, \"%s\", score %.2f, coverage %.2f)", pick,
                      c->file ? c->file : "?", c->heading ? c->heading : "", c->score, c->coverage);
        return a->text ? 0 : -1;
    }
    a->text = strdup(text_for(fb, persona, "holding", lang, first, builtin_holding));
    a->handoff = 1;
    a->reason = r->want_handoff ? strdup("handoff requested") : weak_reason(fb, r);
    a->confidence = 0;
    if (a->reason)
        fb->host->log(fb->inst, KOKO_LOG_DEBUG, "holding message and handoff: %s", a->reason);
    return a->text && a->reason ? 0 : -1;
}

/* ---- delivery ---- */

static void answer_unlink(answer *a)
{
    fallback *fb = a->fb;
    if (a->prev)
        a->prev->next = a->next;
    else
        fb->pending = a->next;
    if (a->next)
        a->next->prev = a->prev;
    fb->n_pending--;
}

static void answer_free(answer *a)
{
    free(a->text);
    free(a->reason);
    free(a);
}

static void answer_fire(void *arg)
{
    answer *a = arg;
    fallback *fb = a->fb;
    answer_unlink(a);
    /* Decide about drained() now and touch FB no more after DONE: the host may
     * stop and destroy the instance from inside it. */
    koko_drained_fn drained = NULL;
    koko_instance *inst = fb->inst;
    if (fb->stopping && fb->n_pending == 0 && !fb->drained_called) {
        fb->drained_called = 1;
        drained = fb->drained;
    }
    koko_llm_result res = {
        .size = sizeof res,
        .status = a->refused ? KOKO_ERR_PERMANENT : KOKO_OK,
        .error = a->refused ? "answers customers from the knowledge base only; it cannot do tasks such "
                              "as extracting customer facts (configure an LLM backend for that)"
                            : NULL,
        .text = a->text,
        .handoff = a->handoff,
        .handoff_reason = a->reason,
        .confidence = a->confidence,
        .model = "fallback",
        .tokens_in = 0,
        .tokens_cached = 0,
        .tokens_out = 0,
        .cited = a->n_cited ? &a->cited : NULL,
        .n_cited = a->n_cited,
    };
    a->done(&res, a->arg);
    answer_free(a);
    if (drained)
        drained(inst);
}

static void answer_posted(void *arg)
{
    answer_fire(arg);
}

/*
 * Answer REQ. The answer is composed now (REQ is only borrowed) and delivered
 * from a zero-delay timer. If the host refuses the timer it goes through
 * post(); only if that fails too does DONE run from inside this call, as the
 * lesser evil compared to never answering.
 */
static void fallback_generate(void *state, const koko_llm_request *req, koko_llm_fn done, void *arg)
{
    fallback *fb = state;
    koko_llm_request r;
    memset(&r, 0, sizeof r);
    memcpy(&r, req, req->size < sizeof r ? req->size : sizeof r);
    r.size = sizeof r;

    answer *a = calloc(1, sizeof *a);
    if (a && KOKO_LLM_IS_TASK(&r))
        a->refused = 1;
    if (!a || (!a->refused && compose(fb, &r, a) != 0)) {
        if (a)
            answer_free(a);
        fb->host->log(fb->inst, KOKO_LOG_ERROR, "generate: out of memory composing an answer");
        koko_llm_result res = {.size = sizeof res, .status = KOKO_ERR_TEMPORARY,
                               .error = "fallback: out of memory", .confidence = -1,
                               .model = "fallback"};
        done(&res, arg);
        return;
    }
    a->fb = fb;
    a->done = done;
    a->arg = arg;
    a->next = fb->pending;
    if (fb->pending)
        fb->pending->prev = a;
    fb->pending = a;
    fb->n_pending++;

    a->timer = fb->host->timer_start(fb->inst, 0, answer_fire, a);
    if (a->timer)
        return;
    fb->host->log(fb->inst, KOKO_LOG_WARN, "generate: the host refused a timer; answering through post()");
    if (fb->host->post(fb->inst, answer_posted, a) == 0)
        return;
    fb->host->log(fb->inst, KOKO_LOG_ERROR,
                  "generate: the host refused both timer and post; answering synchronously");
    answer_fire(a);
}

/* ---- life cycle ---- */

static void *fallback_init(const koko_host *host, koko_instance *inst, const json_t *cfg, char *err,
                           size_t errlen)
{
    if (!host || host->size < offsetof(koko_host, post) + sizeof host->post) {
        snprintf(err, errlen, "fallback: the host's koko_host vtable is too old (need 1.0 with post)");
        return NULL;
    }
    first_error fe = {.d = {.size = sizeof(koko_diag), .error = first_error_fn}, .buf = err, .len = errlen};
    fe.d.priv = &fe;
    if (check_config(cfg, &fe.d) > 0)
        return NULL;

    fallback *fb = calloc(1, sizeof *fb);
    if (!fb) {
        snprintf(err, errlen, "fallback: out of memory");
        return NULL;
    }
    fb->host = host;
    fb->inst = inst;
    fb->min_score = DEFAULT_MIN_SCORE;
    fb->min_coverage = DEFAULT_MIN_COVERAGE;
    fb->max_chars = DEFAULT_MAX_CHARS;
    const json_t *v;
    if ((v = json_object_get(cfg, "min_score")))
        fb->min_score = json_number_value(v);
    if ((v = json_object_get(cfg, "min_coverage")))
        fb->min_coverage = json_number_value(v);
    if ((v = json_object_get(cfg, "max_chars")))
        fb->max_chars = (int)json_integer_value(v);
    if ((v = json_object_get(cfg, "texts")) && !(fb->texts = json_deep_copy(v))) {
        snprintf(err, errlen, "fallback: out of memory");
        free(fb);
        return NULL;
    }
    return fb;
}

/*
 * Stop: pending answers are NOT cancelled — they are already composed and
 * cost nothing, so they complete on their zero-delay timers (status KOKO_OK)
 * and drained() runs after the last one, or from inside stop() when none is
 * pending. Requests arriving after stop() are still answered.
 */
static void fallback_stop(void *state, koko_drained_fn drained)
{
    fallback *fb = state;
    fb->stopping = 1;
    fb->drained = drained;
    if (fb->n_pending == 0 && !fb->drained_called) {
        fb->drained_called = 1;
        if (drained)
            drained(fb->inst);
    }
}

/* Destroy: answers still pending (the host cancelled their timers at its drain
 * deadline) are freed without calling back, as no host call is allowed here. */
static void fallback_destroy(void *state)
{
    fallback *fb = state;
    if (!fb)
        return;
    while (fb->pending) {
        answer *a = fb->pending;
        answer_unlink(a);
        answer_free(a);
    }
    json_decref(fb->texts);
    free(fb);
}

static const koko_llm_ops fallback_ops = {
    .size = sizeof(koko_llm_ops),
    .generate = fallback_generate,
};

KOKO_EXPORT const koko_plugin koko_plugin_v1 = {
    .abi_major = KOKO_ABI_MAJOR,
    .abi_minor = KOKO_ABI_MINOR,
    .size = sizeof(koko_plugin),
    .signature = KOKO_ABI_SIGNATURE,
    .kind = KOKO_KIND_LLM,
    .name = "fallback",
    .version = "1.0",
    .description = "answers from the best knowledge-base passage, or a holding message and handoff",
    .validate = fallback_validate,
    .init = fallback_init,
    .start = NULL,
    .stop = fallback_stop,
    .destroy = fallback_destroy,
    .ops = &fallback_ops,
};
