/*
 * kb.c - knowledge base loading, Markdown chunking and BM25 retrieval (see kb.h).
 *
 * Build: each folder's *.md files are read, validated (UTF-8, not empty), stripped of
 * markup line by line and cut into chunks at ATX headings (`#`..`######`; setext
 * headings are not recognised). Every word yields its stem terms (text.h) and a prefix
 * term ("\1" + first KB_PREFIX_LEN accent-free letters); postings are stored as one
 * compressed-row array per term. Search: one pass over the query's postings into a
 * per-kb accumulator, a bounded top-k, then coverage for the winners only.
 */
#include "kokoconf.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kb.h"
#include "text.h"
#include "util.h"

#define NO_TERM UINT32_MAX
#define PREFIX_MARK '\1'
#define HEADING_SEP " \xE2\x80\xBA " /* " › " */

typedef struct post_tmp {
    uint32_t term, chunk;
    float tf;
} post_tmp;

typedef struct term_w {
    uint32_t term;
    float w;
} term_w;

struct kb {
    text_analyzer *an;
    kb_chunk *chunks;
    size_t nchunks, capchunks;
    char **files; /* owned file names; chunks point into them */
    size_t nfiles, capfiles;
    size_t bytes;
    char hash[17];

    /* vocabulary: open addressing over term ids, strings in one pool */
    char *pool;
    size_t pool_len, pool_cap;
    uint32_t *term_off;
    size_t nterms, capterms;
    uint32_t *slots; /* term id + 1, 0 = empty */
    size_t nslots;

    /* index */
    float *dl;
    signed char *clang; /* per chunk: analyzer language index, -1 = all */
    double avgdl;
    uint32_t *post_off; /* nterms + 1 */
    uint32_t *post_chunk;
    float *post_tf;

    /* search scratch, sized at build (see kb_search's threading rule) */
    float *acc;
    uint32_t *stem_mask, *pref_mask, *touched;

    /* kb_excerpt's cache (the same threading rule): the query it parsed last and,
     * per chunk, its sentences with their term ids, made when first excerpted */
    struct xcache *xc;
};

static struct xcache *xcache_new(size_t nchunks);
static void xcache_free(struct xcache *xc, size_t nchunks);

/* ---- vocabulary ---------------------------------------------------------------------- */

static uint64_t hash_str(const char *s, size_t n)
{
    return util_fnv1a64(s, n);
}

static const char *term_str(const kb *k, uint32_t id)
{
    return k->pool + k->term_off[id];
}

static uint32_t term_find(const kb *k, const char *s, size_t n)
{
    size_t mask = k->nslots - 1, i;
    uint32_t id;
    if (!k->nslots)
        return NO_TERM;
    for (i = hash_str(s, n) & mask;; i = (i + 1) & mask) {
        id = k->slots[i];
        if (!id)
            return NO_TERM;
        id--;
        if (!strncmp(term_str(k, id), s, n) && term_str(k, id)[n] == '\0')
            return id;
    }
}

static void slots_grow(kb *k)
{
    size_t ns = k->nslots ? k->nslots * 2 : 1024, i, j;
    uint32_t *s = xcalloc(ns, sizeof *s);
    for (i = 0; i < k->nterms; i++) {
        const char *t = term_str(k, (uint32_t)i);
        for (j = hash_str(t, strlen(t)) & (ns - 1); s[j]; j = (j + 1) & (ns - 1))
            ;
        s[j] = (uint32_t)i + 1;
    }
    free(k->slots);
    k->slots = s;
    k->nslots = ns;
}

static uint32_t term_intern(kb *k, const char *s, size_t n)
{
    uint32_t id = term_find(k, s, n);
    size_t j;
    if (id != NO_TERM)
        return id;
    if ((k->nterms + 1) * 2 > k->nslots)
        slots_grow(k);
    if (k->nterms == k->capterms) {
        k->capterms = k->capterms ? k->capterms * 2 : 1024;
        k->term_off = realloc(k->term_off, k->capterms * sizeof *k->term_off);
        if (!k->term_off)
            abort();
    }
    while (k->pool_len + n + 1 > k->pool_cap) {
        k->pool_cap = k->pool_cap ? k->pool_cap * 2 : 16384;
        k->pool = realloc(k->pool, k->pool_cap);
        if (!k->pool)
            abort();
    }
    memcpy(k->pool + k->pool_len, s, n);
    k->pool[k->pool_len + n] = '\0';
    id = (uint32_t)k->nterms++;
    k->term_off[id] = (uint32_t)k->pool_len;
    k->pool_len += n + 1;
    for (j = hash_str(s, n) & (k->nslots - 1); k->slots[j]; j = (j + 1) & (k->nslots - 1))
        ;
    k->slots[j] = id + 1;
    return id;
}

/* ---- word features ------------------------------------------------------------------- */

/* The prefix term of a lower-cased word into out ("\1" + letters), or 0 when the word is
 * too short to have one. */
static size_t prefix_term(const char *word, size_t len, char *out, size_t cap)
{
    char plain[TEXT_WORD_MAX * 2 + 1];
    size_t plen = text_normalize(word, len, 1, plain, sizeof plain), i = 0, cps = 0, adv;
    while (i < plen && cps < KB_PREFIX_LEN) {
        text_utf8_decode(plain + i, plen - i, &adv);
        i += adv;
        cps++;
    }
    if (i >= plen || i + 2 > cap) /* not longer than the prefix */
        return 0;
    out[0] = PREFIX_MARK;
    memcpy(out + 1, plain, i);
    out[i + 1] = '\0';
    return i + 1;
}

static int is_digits(const char *w, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (w[i] < '0' || w[i] > '9')
            return 0;
    return 1;
}

/* Word iterator over text: the words of text_next_word, plus, after "e-mail" style pairs
 * (two words joined by one '-'), the joined word ("email") as an extra word. */
typedef struct word_it {
    const char *s;
    size_t len, pos;
    char prev[TEXT_WORD_MAX + 1];
    size_t prevlen, prevend;
    int joined_next;
    char word[TEXT_WORD_MAX + 1];
} word_it;

static void word_it_init(word_it *it, const char *s, size_t len)
{
    it->s = s;
    it->len = len;
    it->pos = 0;
    it->prevlen = 0;
    it->prevend = 0;
    it->joined_next = 0;
}

/* Next word (lower-cased) into it->word; returns its length, 0 at the end. *joined is set
 * for a synthesised joined word. */
static size_t word_it_next(word_it *it, int *joined)
{
    size_t st, wl, n;
    if (it->joined_next) {
        size_t cur = strlen(it->word);
        char tmp[TEXT_WORD_MAX + 1];
        it->joined_next = 0;
        if (it->prevlen + cur <= TEXT_WORD_MAX) {
            memcpy(tmp, it->word, cur + 1);
            memcpy(it->word, it->prev, it->prevlen);
            memcpy(it->word + it->prevlen, tmp, cur + 1);
            memcpy(it->prev, tmp, cur + 1);
            it->prevlen = cur;
            *joined = 1;
            return strlen(it->word);
        }
        memcpy(it->prev, it->word, cur + 1);
        it->prevlen = cur;
    }
    *joined = 0;
    n = text_next_word(it->s, it->len, &it->pos, &st, &wl, it->word, sizeof it->word);
    if (n == 0)
        return 0;
    if (it->prevlen && st == it->prevend + 1 && it->s[it->prevend] == '-')
        it->joined_next = 1;
    else {
        memcpy(it->prev, it->word, n + 1);
        it->prevlen = n;
    }
    it->prevend = st + wl;
    return n;
}

/* ---- build: postings ----------------------------------------------------------------- */

typedef struct build {
    kb *k;
    post_tmp *posts;
    size_t nposts, capposts;
    term_w *local; /* one chunk's term occurrences */
    size_t nlocal, caplocal;
    double total_dl;
    float *dl;
    size_t capdl, caplang;
    kb_warn_fn warn;
    void *ctx;
    uint64_t hash;
} build;

static void local_add(build *b, uint32_t term, float w)
{
    if (b->nlocal == b->caplocal) {
        b->caplocal = b->caplocal ? b->caplocal * 2 : 256;
        b->local = realloc(b->local, b->caplocal * sizeof *b->local);
        if (!b->local)
            abort();
    }
    b->local[b->nlocal].term = term;
    b->local[b->nlocal].w = w;
    b->nlocal++;
}

/* Adds the terms of text[0..len) (language lang, -1 = all) to the chunk being built, each
 * occurrence weighing w; returns the number of content words. */
static double index_text(build *b, const char *text, size_t len, float w, int lang)
{
    char tbuf[256], pre[TEXT_WORD_MAX + 2];
    const char *terms[TEXT_MAX_TERMS];
    size_t n, nt, i, pl;
    double words = 0;
    word_it it;
    int joined;
    const char *word = it.word;

    word_it_init(&it, text, len);
    while ((n = word_it_next(&it, &joined)) > 0) {
        nt = text_terms(b->k->an, lang, word, n, tbuf, sizeof tbuf, terms, TEXT_MAX_TERMS);
        if (!nt)
            continue;
        if (!joined)
            words += w;
        for (i = 0; i < nt; i++)
            local_add(b, term_intern(b->k, terms[i], strlen(terms[i])), w);
        if (!is_digits(word, n) && (pl = prefix_term(word, n, pre, sizeof pre)) > 0)
            local_add(b, term_intern(b->k, pre, pl), w);
    }
    return words;
}

static int cmp_term_w(const void *a, const void *b)
{
    const term_w *x = a, *y = b;
    return x->term < y->term ? -1 : x->term > y->term;
}

/* Turns the chunk's occurrences into postings (term, chunk, tf). */
static void local_flush(build *b, uint32_t chunk, double dl)
{
    size_t i, j;
    qsort(b->local, b->nlocal, sizeof *b->local, cmp_term_w);
    for (i = 0; i < b->nlocal; i = j) {
        float tf = 0;
        for (j = i; j < b->nlocal && b->local[j].term == b->local[i].term; j++)
            tf += b->local[j].w;
        if (b->nposts == b->capposts) {
            b->capposts = b->capposts ? b->capposts * 2 : 4096;
            b->posts = realloc(b->posts, b->capposts * sizeof *b->posts);
            if (!b->posts)
                abort();
        }
        b->posts[b->nposts].term = b->local[i].term;
        b->posts[b->nposts].chunk = chunk;
        b->posts[b->nposts].tf = tf;
        b->nposts++;
    }
    b->nlocal = 0;
    if (chunk >= b->capdl) {
        b->capdl = b->capdl ? b->capdl * 2 : 256;
        b->dl = realloc(b->dl, b->capdl * sizeof *b->dl);
        if (!b->dl)
            abort();
    }
    b->dl[chunk] = (float)dl;
    b->total_dl += dl;
}

/* The language a chunk is stemmed in: the stop-word guess over its heading and text, else
 * the tenant's first language, else all (-1). Stemming a chunk in one language keeps
 * cross-language stem collisions ("card" -> hu "car") out of the index. */
static signed char chunk_lang(const kb *k, const char *h, const char *t, size_t len)
{
    int g = text_analyzer_guess(k->an, t, len);
    if (g < 0)
        g = text_analyzer_guess(k->an, h, strlen(h));
    if (g < 0)
        g = text_analyzer_langs(k->an) > 0 ? 0 : -1;
    return (signed char)g;
}

static void add_chunk(build *b, const char *file, const char *heading, const char *text, size_t len)
{
    kb *k = b->k;
    kb_chunk *c;
    char *t, *h;
    double dl;

    if (k->nchunks == k->capchunks) {
        k->capchunks = k->capchunks ? k->capchunks * 2 : 64;
        k->chunks = realloc(k->chunks, k->capchunks * sizeof *k->chunks);
        if (!k->chunks)
            abort();
    }
    t = xmalloc(len + 1);
    memcpy(t, text, len);
    t[len] = '\0';
    h = xstrdup(heading);
    c = &k->chunks[k->nchunks];
    c->file = file;
    c->heading = h;
    c->text = t;
    c->text_len = len;
    if (k->nchunks >= b->caplang) {
        b->caplang = b->caplang ? b->caplang * 2 : 256;
        k->clang = realloc(k->clang, b->caplang * sizeof *k->clang);
        if (!k->clang)
            abort();
    }
    k->clang[k->nchunks] = chunk_lang(k, h, t, len);
    dl = index_text(b, h, strlen(h), KB_HEADING_WEIGHT, k->clang[k->nchunks]);
    dl += index_text(b, t, len, 1, k->clang[k->nchunks]);
    local_flush(b, (uint32_t)k->nchunks, dl);
    k->nchunks++;
}

/* ---- build: Markdown ----------------------------------------------------------------- */

static int is_blank(const char *s, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
            return 0;
    return 1;
}

static int is_alnum_byte(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (unsigned char)c >= 0x80;
}

/* Finds the byte that closes `open` at s[i] (same line), honouring nesting; or n. */
static size_t match_close(const char *s, size_t n, size_t i, char open, char close)
{
    int depth = 0;
    for (; i < n; i++) {
        if (s[i] == '\\') {
            i++;
            continue;
        }
        if (s[i] == open)
            depth++;
        else if (s[i] == close && --depth == 0)
            return i;
    }
    return n;
}

/* Appends s[0..n) to out with inline markup removed: emphasis, code spans, links and
 * images (their text), autolinks (their address), HTML tags, backslash escapes. */
static void strip_inline(strbuf *out, const char *s, size_t n)
{
    size_t i = 0, j, e;
    while (i < n) {
        char c = s[i];
        if (c == '\\' && i + 1 < n && strchr("\\`*_{}[]()#+-.!|~<>", s[i + 1])) {
            sb_append(out, s + i + 1, 1);
            i += 2;
        } else if (c == '`') {
            for (j = i; j < n && s[j] == '`'; j++)
                ;
            i = j;
        } else if (c == '*' || c == '~') {
            i++;
        } else if (c == '_') {
            for (j = i; j < n && s[j] == '_'; j++)
                ;
            if (i > 0 && j < n && is_alnum_byte(s[i - 1]) && is_alnum_byte(s[j]))
                sb_append(out, s + i, j - i); /* snake_case stays */
            i = j;
        } else if ((c == '[' || (c == '!' && i + 1 < n && s[i + 1] == '['))) {
            size_t o = c == '!' ? i + 1 : i;
            e = match_close(s, n, o, '[', ']');
            if (e < n && e + 1 < n && (s[e + 1] == '(' || s[e + 1] == '[')) {
                size_t te = match_close(s, n, e + 1, s[e + 1], s[e + 1] == '(' ? ')' : ']');
                if (te < n) {
                    strip_inline(out, s + o + 1, e - o - 1);
                    i = te + 1;
                    continue;
                }
            }
            sb_append(out, s + i, 1);
            i++;
        } else if (c == '<') {
            for (e = i + 1; e < n && s[e] != '>' && s[e] != '<'; e++)
                ;
            if (e < n && s[e] == '>' && e > i + 1 && (memchr(s + i, ':', e - i) || memchr(s + i, '@', e - i)) &&
                !memchr(s + i, ' ', e - i)) {
                sb_append(out, s + i + 1, e - i - 1); /* autolink */
                i = e + 1;
            } else if (e < n && s[e] == '>' && e > i + 1 &&
                       (s[i + 1] == '/' || s[i + 1] == '!' || (s[i + 1] >= 'a' && s[i + 1] <= 'z') ||
                        (s[i + 1] >= 'A' && s[i + 1] <= 'Z'))) {
                sb_append(out, " ", 1); /* HTML tag */
                i = e + 1;
            } else {
                sb_append(out, s + i, 1);
                i++;
            }
        } else {
            sb_append(out, s + i, 1);
            i++;
        }
    }
}

/* Length of a list or quote marker at the start of s (after indentation), else 0. */
static size_t block_marker(const char *s, size_t n)
{
    size_t i = 0, d;
    while (i < n && s[i] == '>') {
        i++;
        if (i < n && s[i] == ' ')
            i++;
    }
    if (i + 1 < n && strchr("-*+", s[i]) && s[i + 1] == ' ')
        i += 2;
    else {
        for (d = i; d < n && d - i < 9 && s[d] >= '0' && s[d] <= '9'; d++)
            ;
        if (d > i && d + 1 < n && (s[d] == '.' || s[d] == ')') && s[d + 1] == ' ')
            i = d + 2;
    }
    if (i + 3 < n && s[i] == '[' && strchr(" xX", s[i + 1]) && s[i + 2] == ']' && s[i + 3] == ' ')
        i += 4; /* task list box */
    return i;
}

static int is_rule(const char *s, size_t n)
{
    size_t i, cnt = 0;
    char m = 0;
    for (i = 0; i < n; i++) {
        if (s[i] == ' ' || s[i] == '\t' || s[i] == '\r')
            continue;
        if (!m && strchr("-*_", s[i]))
            m = s[i];
        if (s[i] != m)
            return 0;
        cnt++;
    }
    return cnt >= 3;
}

static int is_table_separator(const char *s, size_t n)
{
    size_t i;
    int dash = 0;
    for (i = 0; i < n; i++) {
        if (s[i] == '-')
            dash = 1;
        else if (!strchr("|: \t\r", s[i]))
            return 0;
    }
    return dash;
}

/* Trims trailing blanks and collapses the body's trailing newlines to at most two. */
static void body_trim(strbuf *b)
{
    while (b->len > 0 && strchr(" \t\r\n", b->buf[b->len - 1]))
        b->len--;
    if (b->buf)
        b->buf[b->len] = '\0';
}

/* Emits the section in body as one or more chunks of at most KB_CHUNK_MAX bytes, cut at
 * paragraph breaks, else line breaks, else spaces. */
static void section_flush(build *b, const char *file, const char *heading, strbuf *body)
{
    size_t start = 0, end, cut, i;
    body_trim(body);
    while (start < body->len && strchr(" \n", body->buf[start]))
        start++;
    while (start < body->len) {
        end = body->len;
        if (end - start > KB_CHUNK_MAX) {
            cut = 0;
            for (i = start + KB_CHUNK_MAX; i > start + KB_CHUNK_MAX / 4 && !cut; i--)
                if (body->buf[i] == '\n' && body->buf[i - 1] == '\n')
                    cut = i;
            for (i = start + KB_CHUNK_MAX; i > start + KB_CHUNK_MAX / 4 && !cut; i--)
                if (body->buf[i] == '\n' || body->buf[i] == ' ')
                    cut = i;
            if (!cut) {
                cut = start + KB_CHUNK_MAX;
                while (cut > start && ((unsigned char)body->buf[cut] & 0xC0) == 0x80)
                    cut--;
            }
            end = cut;
        }
        i = end;
        while (i > start && strchr(" \n", body->buf[i - 1]))
            i--;
        if (i > start)
            add_chunk(b, file, heading, body->buf + start, i - start);
        start = end;
        while (start < body->len && strchr(" \n", body->buf[start]))
            start++;
    }
    body->len = 0;
    if (body->buf)
        body->buf[0] = '\0';
}

static void heading_path(strbuf *out, char *const *stack)
{
    int i, first = 1;
    out->len = 0;
    sb_append(out, "", 0);
    for (i = 0; i < 6; i++) {
        if (!stack[i] || !stack[i][0])
            continue;
        if (!first)
            sb_puts(out, HEADING_SEP);
        sb_puts(out, stack[i]);
        first = 0;
    }
}

static void chunk_file(build *b, const char *file, const char *s, size_t n)
{
    char *stack[6] = {0};
    strbuf body = {0}, head = {0}, tmp = {0};
    size_t ls = 0, le, i, lvl, m;
    int fence = 0, blank_pending = 0;
    int joinable = 0; /* the last line was prose: a hard-wrapped next line continues it */
    char fence_ch = 0;

    if (n >= 3 && !memcmp(s, "\xEF\xBB\xBF", 3)) /* byte-order mark */
        ls = 3;
    heading_path(&head, stack);
    for (; ls < n; ls = le + 1) {
        const char *l = s + ls;
        size_t ll;
        for (le = ls; le < n && s[le] != '\n'; le++)
            ;
        ll = le - ls;
        if (ll > 0 && l[ll - 1] == '\r')
            ll--;
        for (i = 0; i < ll && i < 3 && l[i] == ' '; i++)
            ;
        /* code fences: content kept as text, no heading detection inside */
        if (i + 3 <= ll && (l[i] == '`' || l[i] == '~') && l[i + 1] == l[i] && l[i + 2] == l[i] &&
            (!fence || l[i] == fence_ch)) {
            fence = !fence;
            fence_ch = l[i];
            continue;
        }
        if (fence) {
            sb_append(&body, l, ll);
            sb_append(&body, "\n", 1);
            continue;
        }
        if (is_blank(l, ll)) {
            blank_pending = body.len > 0;
            joinable = 0;
            continue;
        }
        /* ATX heading */
        for (lvl = 0; i + lvl < ll && l[i + lvl] == '#'; lvl++)
            ;
        if (lvl >= 1 && lvl <= 6 && (i + lvl == ll || l[i + lvl] == ' ' || l[i + lvl] == '\t')) {
            size_t hs = i + lvl, he = ll;
            while (he > hs && (l[he - 1] == ' ' || l[he - 1] == '\t' || l[he - 1] == '#'))
                he--;
            while (hs < he && (l[hs] == ' ' || l[hs] == '\t'))
                hs++;
            section_flush(b, file, head.buf, &body);
            tmp.len = 0;
            sb_append(&tmp, "", 0);
            strip_inline(&tmp, l + hs, he - hs);
            body_trim(&tmp);
            free(stack[lvl - 1]);
            stack[lvl - 1] = xstrdup(tmp.buf);
            for (m = lvl; m < 6; m++) {
                free(stack[m]);
                stack[m] = NULL;
            }
            heading_path(&head, stack);
            blank_pending = 0;
            joinable = 0;
            continue;
        }
        if (is_rule(l, ll))
            continue;
        if (blank_pending) {
            sb_append(&body, "\n", 1);
            blank_pending = 0;
        }
        if (l[i] == '|') {
            if (is_table_separator(l, ll))
                continue;
            tmp.len = 0;
            sb_append(&tmp, "", 0);
            strip_inline(&tmp, l + i, ll - i);
            /* one line per row, cells joined by " – ", so a quoted row reads well */
            {
                size_t r = 0, cells = 0;
                while (r < tmp.len) {
                    size_t a, z;
                    while (r < tmp.len && tmp.buf[r] == '|')
                        r++;
                    a = r;
                    while (r < tmp.len && tmp.buf[r] != '|')
                        r++;
                    z = r;
                    while (a < z && (tmp.buf[a] == ' ' || tmp.buf[a] == '\t'))
                        a++;
                    while (z > a && (tmp.buf[z - 1] == ' ' || tmp.buf[z - 1] == '\t'))
                        z--;
                    if (z > a) {
                        if (cells++)
                            sb_append(&body, " – ", strlen(" – "));
                        sb_append(&body, tmp.buf + a, z - a);
                    }
                }
            }
            sb_append(&body, "\n", 1);
            joinable = 0;
            continue;
        }
        while (i < ll && (l[i] == ' ' || l[i] == '\t'))
            i++;
        m = block_marker(l + i, ll - i);
        /* Markdown paragraphs may be hard-wrapped: a line without a list or
         * quote marker right after prose continues the same sentence */
        if (m == 0 && joinable && !blank_pending && body.len && body.buf[body.len - 1] == '\n')
            body.buf[body.len - 1] = ' ';
        joinable = 1;
        strip_inline(&body, l + i + m, ll - i - m);
        body_trim(&body);
        sb_append(&body, "\n", 1);
    }
    section_flush(b, file, head.buf, &body);
    for (i = 0; i < 6; i++)
        free(stack[i]);
    sb_free(&body);
    sb_free(&head);
    sb_free(&tmp);
}

/* ---- build: files -------------------------------------------------------------------- */

static int cmp_cstr(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void hash_bytes(uint64_t *h, const void *data, size_t n)
{
    const unsigned char *p = data;
    size_t i;
    for (i = 0; i < n; i++) {
        *h ^= p[i];
        *h *= 0x100000001b3ULL;
    }
}

static void warn(build *b, const char *path, const char *why)
{
    if (b->warn)
        b->warn(b->ctx, path, why);
}

static void load_file(build *b, const char *full, const char *shown)
{
    char err[512], why[600];
    size_t len = 0, i;
    char *data = util_read_file(full, KB_FILE_MAX, &len, err, sizeof err);
    kb *k = b->k;

    if (!data) {
        snprintf(why, sizeof why, "skipped: %s", err);
        warn(b, shown, why);
        return;
    }
    if (!text_utf8_valid(data, len)) {
        size_t adv;
        for (i = 0; i < len; i += adv)
            if (text_utf8_decode(data + i, len - i, &adv) == TEXT_BAD_CP)
                break;
        snprintf(why, sizeof why, "skipped: invalid UTF-8 at byte %zu; save the file as UTF-8", i);
        warn(b, shown, why);
        free(data);
        return;
    }
    if (strspn(data, " \t\r\n") == len) {
        warn(b, shown, "skipped: the file is empty");
        free(data);
        return;
    }
    if (k->nfiles == k->capfiles) {
        k->capfiles = k->capfiles ? k->capfiles * 2 : 16;
        k->files = realloc(k->files, k->capfiles * sizeof *k->files);
        if (!k->files)
            abort();
    }
    k->files[k->nfiles] = xstrdup(shown);
    hash_bytes(&b->hash, shown, strlen(shown) + 1);
    hash_bytes(&b->hash, data, len);
    hash_bytes(&b->hash, "", 1);
    k->bytes += len;
    chunk_file(b, k->files[k->nfiles], data, len);
    k->nfiles++;
    free(data);
}

static void load_dir(build *b, const char *base, const char *dir)
{
    char *full = base ? util_path_join(base, dir) : xstrdup(dir);
    DIR *d = opendir(full);
    struct dirent *de;
    char **names = NULL, why[512];
    size_t n = 0, cap = 0, i, dl = strlen(dir);

    if (!d) {
        snprintf(why, sizeof why, "skipped: cannot open the folder %s (%s); check the tenant's kb: list", full,
                 strerror(errno));
        warn(b, dir, why);
        free(full);
        return;
    }
    while ((de = readdir(d)) != NULL) {
        size_t nl = strlen(de->d_name);
        if (de->d_name[0] == '.' || nl < 4 || strcmp(de->d_name + nl - 3, ".md"))
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 32;
            names = realloc(names, cap * sizeof *names);
            if (!names)
                abort();
        }
        names[n++] = xstrdup(de->d_name);
    }
    closedir(d);
    qsort(names, n, sizeof *names, cmp_cstr);
    for (i = 0; i < n; i++) {
        char *fp = util_path_join(full, names[i]);
        char *shown = util_asprintf("%.*s/%s", (int)(dl > 0 && dir[dl - 1] == '/' ? dl - 1 : dl), dir, names[i]);
        load_file(b, fp, shown);
        free(fp);
        free(shown);
        free(names[i]);
    }
    free(names);
    free(full);
}

/* Forwards the analyzer's language notes to the warning callback. */
static void warn_langs(build *b, const char *err)
{
    if (err[0])
        warn(b, "languages", err);
}

kb *kb_build(const char *base_dir, const char *const *dirs, size_t ndirs, const char *const *langs, size_t nlangs,
             kb_warn_fn warnfn, void *ctx)
{
    kb *k = calloc(1, sizeof *k);
    build b;
    char err[512];
    size_t i, t;

    if (!k)
        return NULL;
    memset(&b, 0, sizeof b);
    b.k = k;
    b.warn = warnfn;
    b.ctx = ctx;
    b.hash = 0xcbf29ce484222325ULL;
    k->an = text_analyzer_new(langs, nlangs, err, sizeof err);
    if (!k->an) {
        free(k);
        return NULL;
    }
    warn_langs(&b, err);
    slots_grow(k);
    for (i = 0; i < ndirs; i++)
        if (dirs[i])
            load_dir(&b, base_dir, dirs[i]);
    snprintf(k->hash, sizeof k->hash, "%016llx", (unsigned long long)b.hash);

    /* postings into compressed rows, chunk-ordered within each term */
    k->post_off = xcalloc(k->nterms + 1, sizeof *k->post_off);
    k->post_chunk = xmalloc((b.nposts ? b.nposts : 1) * sizeof *k->post_chunk);
    k->post_tf = xmalloc((b.nposts ? b.nposts : 1) * sizeof *k->post_tf);
    for (i = 0; i < b.nposts; i++)
        k->post_off[b.posts[i].term + 1]++;
    for (t = 0; t < k->nterms; t++)
        k->post_off[t + 1] += k->post_off[t];
    {
        uint32_t *fill = xmalloc((k->nterms ? k->nterms : 1) * sizeof *fill);
        memcpy(fill, k->post_off, k->nterms * sizeof *fill);
        for (i = 0; i < b.nposts; i++) {
            uint32_t at = fill[b.posts[i].term]++;
            k->post_chunk[at] = b.posts[i].chunk;
            k->post_tf[at] = b.posts[i].tf;
        }
        free(fill);
    }
    k->dl = b.dl ? b.dl : xmalloc(sizeof *k->dl);
    k->avgdl = k->nchunks ? b.total_dl / (double)k->nchunks : 1.0;
    if (k->avgdl <= 0)
        k->avgdl = 1.0;
    k->acc = xcalloc(k->nchunks ? k->nchunks : 1, sizeof *k->acc);
    k->stem_mask = xcalloc(k->nchunks ? k->nchunks : 1, sizeof *k->stem_mask);
    k->pref_mask = xcalloc(k->nchunks ? k->nchunks : 1, sizeof *k->pref_mask);
    k->touched = xcalloc(k->nchunks ? k->nchunks : 1, sizeof *k->touched);
    k->xc = xcache_new(k->nchunks);
    free(b.posts);
    free(b.local);
    return k;
}

/* ---- search -------------------------------------------------------------------------- */

typedef struct qword {
    double weight;    /* IDF used for coverage */
    int last_of_pair; /* followed by a joined form ("mail" of "e-mail") */
    char plain[TEXT_WORD_MAX * 2 + 1];
} qword;

#define KB_MAX_QTERMS (KB_QUERY_MAX_WORDS * (TEXT_MAX_TERMS + 3))

typedef struct qterm {
    uint32_t term;
    uint32_t mask; /* which query words it belongs to */
    float w;       /* 1 for stems, KB_PREFIX_WEIGHT for prefixes */
    int prefix;
} qterm;

typedef struct query {
    qword words[KB_QUERY_MAX_WORDS];
    size_t nwords;
    qterm terms[KB_MAX_QTERMS];
    size_t nterms;
} query;

static double idf_df(const kb *k, double df)
{
    double n = (double)k->nchunks;
    return log(1.0 + (n - df + 0.5) / (df + 0.5));
}

/* Adds a query term (or merges it): stem_mask/pref_mask say which words it covers. */
static void query_add_term(query *q, uint32_t term, uint32_t stem_mask, uint32_t pref_mask, float w, int prefix)
{
    size_t i;
    uint32_t mask = stem_mask | pref_mask;
    for (i = 0; i < q->nterms; i++)
        if (q->terms[i].term == term) {
            q->terms[i].mask |= mask;
            if (w > q->terms[i].w) {
                q->terms[i].w = w;
                q->terms[i].prefix = prefix;
            }
            return;
        }
    if (q->nterms == KB_MAX_QTERMS)
        return;
    q->terms[q->nterms].term = term;
    q->terms[q->nterms].mask = mask;
    q->terms[q->nterms].w = w;
    q->terms[q->nterms].prefix = prefix;
    q->nterms++;
}

/* Question cues: words customers ask with (mostly stop words) mapped to the words a KB
 * answers with. Their terms add KB_CUE_WEIGHT to the score but never count as coverage. */
static const struct {
    const char *cue, *expand;
} cues[] = {
    {"mennyibe", "ár díj"},      {"mennyiert", "ár díj"},    {"mibe", "ár díj"},
    {"kerul", "ár díj"},         {"koltseg", "ár díj"},      {"cost", "price fee"},
    {"costs", "price fee"},      {"much", "price fee"},      {"charge", "price fee"},
    {"kostet", "preis"},         {"kosten", "preis"},        {"mikor", "nyitvatartás"},
    {"hanykor", "nyitvatartás"}, {"nyitva", "nyitvatartás"}, {"when", "opening hours"},
    {"open", "opening hours"},   {"wann", "öffnungszeiten"}, {"hol", "cím"},
    {"where", "address"},        {"wo", "adresse"},
};

static void query_cues(const kb *k, query *q, const char *word, size_t n)
{
    char plain[TEXT_WORD_MAX * 2 + 1], tbuf[256];
    const char *terms[TEXT_MAX_TERMS];
    size_t i, j, nt;
    text_normalize(word, n, 1, plain, sizeof plain);
    for (i = 0; i < sizeof cues / sizeof *cues; i++) {
        const char *e;
        size_t pos = 0, st, wl, wn;
        char w[TEXT_WORD_MAX + 1];
        if (strcmp(plain, cues[i].cue))
            continue;
        e = cues[i].expand;
        while ((wn = text_next_word(e, strlen(e), &pos, &st, &wl, w, sizeof w)) > 0) {
            nt = text_terms(k->an, -1, w, wn, tbuf, sizeof tbuf, terms, TEXT_MAX_TERMS);
            for (j = 0; j < nt; j++) {
                uint32_t id = term_find(k, terms[j], strlen(terms[j]));
                if (id != NO_TERM && q->nterms < KB_MAX_QTERMS)
                    query_add_term(q, id, 0, 0, (float)KB_CUE_WEIGHT, 0);
            }
        }
    }
}

/* Analyses the query: distinct content words, their term ids and coverage weights. */
static void query_parse(const kb *k, const char *s, query *q)
{
    char tbuf[256], pre[TEXT_WORD_MAX + 2], plain[TEXT_WORD_MAX * 2 + 1];
    const char *terms[TEXT_MAX_TERMS];
    size_t n, nt, i, pl, len = strlen(s), slot;
    double unseen = idf_df(k, 0) * KB_UNSEEN_FACTOR;
    word_it it;
    int joined, newword, lang;
    const char *word = it.word;

    q->nwords = q->nterms = 0;
    /* a question that tells its language by its stop words is stemmed in that language
     * only, so "rent" does not meet Hungarian "ren-" words; otherwise in all of them */
    lang = text_analyzer_guess(k->an, s, len);
    word_it_init(&it, s, len);
    while ((n = word_it_next(&it, &joined)) > 0) {
        double best;
        if (!joined)
            query_cues(k, q, word, n);
        nt = text_terms(k->an, lang, word, n, tbuf, sizeof tbuf, terms, TEXT_MAX_TERMS);
        if (!nt)
            continue;
        text_normalize(word, n, 1, plain, sizeof plain);
        for (i = 0; i < q->nwords; i++)
            if (!strcmp(q->words[i].plain, plain))
                break;
        if (i < q->nwords)
            continue;
        /* a joined "e-mail" shares the slot of its last part when that part is a word */
        newword = !(joined && q->nwords > 0 && q->words[q->nwords - 1].last_of_pair);
        if (newword && q->nwords == KB_QUERY_MAX_WORDS)
            break;
        slot = newword ? q->nwords : q->nwords - 1;
        /* the word weighs as its most common spelling in the KB; unseen words weigh most */
        best = newword ? unseen : q->words[slot].weight;
        for (i = 0; i < nt; i++) {
            uint32_t id = term_find(k, terms[i], strlen(terms[i]));
            if (id != NO_TERM) {
                double idf = idf_df(k, k->post_off[id + 1] - k->post_off[id]);
                query_add_term(q, id, 1u << slot, 0, 1.0f, 0);
                if (idf < best)
                    best = idf;
            }
        }
        if (!is_digits(word, n) && (pl = prefix_term(word, n, pre, sizeof pre)) > 0) {
            uint32_t id = term_find(k, pre, pl);
            if (id != NO_TERM)
                query_add_term(q, id, 1u << slot, 0, (float)KB_PREFIX_WEIGHT, 1);
        }
        q->words[slot].weight = best;
        if (newword) {
            memcpy(q->words[slot].plain, plain, sizeof plain);
            q->words[slot].last_of_pair = it.joined_next;
            q->nwords++;
        }
    }
}

static double coverage_of(const kb *k, const query *q, uint32_t c)
{
    double num = 0, den = 0;
    size_t i;
    for (i = 0; i < q->nwords; i++) {
        uint32_t bit = 1u << i;
        den += q->words[i].weight;
        if (k->stem_mask[c] & bit)
            num += q->words[i].weight;
        else if (k->pref_mask[c] & bit)
            num += q->words[i].weight * KB_PREFIX_COVERAGE;
    }
    return den > 0 ? num / den : 0.0;
}

size_t kb_search(const kb *k, const char *text, kb_hit *out, size_t max_hits)
{
    query q;
    size_t i, ntouched = 0, nout = 0, j;
    uint32_t p, c;

    if (!k || !text || !out || max_hits == 0 || k->nchunks == 0)
        return 0;
    query_parse(k, text, &q);
    for (i = 0; i < q.nterms; i++) {
        const qterm *t = &q.terms[i];
        double idf = idf_df(k, k->post_off[t->term + 1] - k->post_off[t->term]) * t->w;
        for (p = k->post_off[t->term]; p < k->post_off[t->term + 1]; p++) {
            double tf = k->post_tf[p];
            c = k->post_chunk[p];
            if (!k->stem_mask[c] && !k->pref_mask[c] && k->acc[c] == 0.0f)
                k->touched[ntouched++] = c;
            k->acc[c] += (float)(idf * tf * (KB_BM25_K1 + 1) /
                                 (tf + KB_BM25_K1 * (1 - KB_BM25_B + KB_BM25_B * k->dl[c] / k->avgdl)));
            if (t->prefix)
                k->pref_mask[c] |= t->mask;
            else
                k->stem_mask[c] |= t->mask;
        }
    }
    for (i = 0; i < ntouched; i++) {
        double s;
        c = k->touched[i];
        s = k->acc[c];
        if (s <= 0)
            continue;
        if (nout == max_hits && s <= out[nout - 1].score)
            continue;
        j = nout < max_hits ? nout++ : nout - 1;
        while (j > 0 && out[j - 1].score < s) {
            out[j] = out[j - 1];
            j--;
        }
        out[j].chunk = &k->chunks[c];
        out[j].score = s;
        out[j].coverage = coverage_of(k, &q, c);
    }
    for (i = 0; i < ntouched; i++) {
        c = k->touched[i];
        k->acc[c] = 0;
        k->stem_mask[c] = k->pref_mask[c] = 0;
    }
    return nout;
}

int kb_answerable(const kb_hit *best, double min_score, double min_coverage)
{
    return best && best->chunk && best->score >= min_score && best->coverage >= min_coverage;
}

/* ---- excerpt ------------------------------------------------------------------------- */

#define EXCERPT_MAX_SENTENCES 256

typedef struct span {
    size_t s, e;
    double score;
} span;

static int is_abbrev(const char *t, size_t end)
{
    static const char *const abbr[] = {"kft", "bt",  "zrt", "nyrt", "pl",  "kb", "stb", "ill", "dr",
                                       "mr",  "mrs", "ms",  "st",   "nr",  "ca", "vs",  "eg",  "ie",
                                       "tel", "max", "min", "u",    "krt", "sz", "db"};
    size_t b = end, i;
    char w[8];
    while (b > 0 && ((t[b - 1] >= 'a' && t[b - 1] <= 'z') || (t[b - 1] >= 'A' && t[b - 1] <= 'Z')))
        b--;
    if (end - b == 0 || end - b >= sizeof w)
        return 0;
    for (i = b; i < end; i++)
        w[i - b] = (char)((t[i] >= 'A' && t[i] <= 'Z') ? t[i] + 32 : t[i]);
    w[end - b] = '\0';
    for (i = 0; i < sizeof abbr / sizeof *abbr; i++)
        if (!strcmp(w, abbr[i]))
            return 1;
    return 0;
}

/* A lower-case letter comes next on the same line: "Röppentyű utca 12. is open",
 * "I–XXIII. kerület", "3. emelet" — a period inside a sentence, not its end. */
static int lower_follows(const char *t, size_t n, size_t i)
{
    while (i < n && t[i] == ' ')
        i++;
    if (i >= n || t[i] == '\n')
        return 0;
    size_t adv;
    uint32_t cp = text_utf8_decode(t + i, n - i, &adv);
    /* a letter that folding leaves alone is already lower-case */
    return cp != TEXT_BAD_CP && text_is_word_cp(cp) && !(cp >= '0' && cp <= '9') && text_fold_cp(cp) == cp;
}

/* Splits text into sentences at line breaks and at . ! ? followed by a blank. */
static size_t split_sentences(const char *t, size_t n, span *sp, size_t max)
{
    size_t i = 0, s = 0, cnt = 0;
    while (i < n && cnt < max) {
        int cut = 0;
        size_t e = i + 1;
        if (t[i] == '\n') {
            cut = 1;
            e = i;
        } else if (strchr(".!?", t[i]) && (i + 1 == n || t[i + 1] == ' ' || t[i + 1] == '\n') &&
                   !(t[i] == '.' && (is_abbrev(t, i) || lower_follows(t, n, i + 1)))) {
            cut = 1;
        }
        if (cut || i + 1 == n) {
            size_t a = s, z = cut ? e : n;
            while (a < z && (t[a] == ' ' || t[a] == '\n'))
                a++;
            while (z > a && (t[z - 1] == ' ' || t[z - 1] == '\n'))
                z--;
            if (z > a) {
                sp[cnt].s = a;
                sp[cnt].e = z;
                sp[cnt].score = 0;
                cnt++;
            }
            s = i + 1;
        }
        i++;
    }
    if (cnt == max && s < n) { /* the rest as one last sentence */
        sp[max - 1].e = n;
    }
    return cnt;
}

/* The score of a sentence holding the query words in STEM (by a stem) and PREF (by a prefix only). */
static double mask_score(const query *q, uint32_t stem, uint32_t pref)
{
    double score = 0;
    for (size_t i = 0; i < q->nwords; i++) {
        if (stem & (1u << i))
            score += q->words[i].weight;
        else if (pref & (1u << i))
            score += q->words[i].weight * KB_PREFIX_COVERAGE;
    }
    return score;
}

/* One chunk's sentences and the KB terms in each: sentence I holds
 * ids[first[I] .. first[I + 1]), a stem's id, or a prefix's with XPREFIX set. */
#define XPREFIX 0x80000000u
typedef struct xsent {
    span *sp;
    uint32_t *first, *ids;
    size_t n;
} xsent;

struct xcache {
    query q;
    char *qtext; /* what q was parsed from; NULL before the first excerpt */
    xsent *chunks;
};

static struct xcache *xcache_new(size_t nchunks)
{
    struct xcache *xc = xcalloc(1, sizeof *xc);
    xc->chunks = xcalloc(nchunks ? nchunks : 1, sizeof *xc->chunks);
    return xc;
}

static void xcache_free(struct xcache *xc, size_t nchunks)
{
    if (!xc)
        return;
    for (size_t i = 0; i < nchunks; i++) {
        free(xc->chunks[i].sp);
        free(xc->chunks[i].first);
        free(xc->chunks[i].ids);
    }
    free(xc->chunks);
    free(xc->qtext);
    free(xc);
}

/* The parsed QTEXT: a request excerpts several chunks for the same question. */
static const query *excerpt_query(const kb *k, const char *qtext)
{
    struct xcache *xc = k->xc;
    if (!xc->qtext || strcmp(xc->qtext, qtext) != 0) {
        query_parse(k, qtext, &xc->q);
        free(xc->qtext);
        xc->qtext = xstrdup(qtext);
    }
    return &xc->q;
}

static void ids_push(uint32_t **ids, size_t *n, size_t *cap, uint32_t id)
{
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 64;
        *ids = xrealloc(*ids, *cap * sizeof **ids);
    }
    (*ids)[(*n)++] = id;
}

/* Split TEXT (of language LANG, -1: any) into sentences and find the KB terms
 * of each, into X (whose arrays the caller frees). */
static void sentences_build(const kb *k, int lang, const char *text, size_t len, xsent *x)
{
    span tmp[EXCERPT_MAX_SENTENCES];
    size_t n = split_sentences(text, len, tmp, EXCERPT_MAX_SENTENCES), nids = 0, cap = 0;
    uint32_t *first = xmalloc((n + 1) * sizeof *first), *ids = NULL;
    char tbuf[256], pre[TEXT_WORD_MAX + 2];
    const char *terms[TEXT_MAX_TERMS];
    for (size_t i = 0; i < n; i++) {
        size_t wn, pl;
        word_it it;
        int joined;
        const char *word = it.word;
        first[i] = (uint32_t)nids;
        word_it_init(&it, text + tmp[i].s, tmp[i].e - tmp[i].s);
        while ((wn = word_it_next(&it, &joined)) > 0) {
            size_t nt = text_terms(k->an, lang, word, wn, tbuf, sizeof tbuf, terms, TEXT_MAX_TERMS);
            for (size_t j = 0; j < nt; j++) {
                uint32_t id = term_find(k, terms[j], strlen(terms[j]));
                if (id != NO_TERM)
                    ids_push(&ids, &nids, &cap, id);
            }
            if (nt && (pl = prefix_term(word, wn, pre, sizeof pre)) > 0) {
                uint32_t id = term_find(k, pre, pl);
                if (id != NO_TERM)
                    ids_push(&ids, &nids, &cap, id | XPREFIX);
            }
        }
    }
    first[n] = (uint32_t)nids;
    x->sp = xmalloc((n ? n : 1) * sizeof *x->sp);
    memcpy(x->sp, tmp, n * sizeof *tmp);
    x->first = first;
    x->ids = ids;
    x->n = n;
}

/* Chunk CI's sentences, made the first time and kept for the life of the KB. */
static const xsent *chunk_sentences(const kb *k, size_t ci)
{
    xsent *x = &k->xc->chunks[ci];
    if (!x->sp)
        sentences_build(k, k->clang[ci], k->chunks[ci].text, k->chunks[ci].text_len, x);
    return x;
}

/* sentence_score() of sentence I of X, from its term ids. */
static double cached_score(const query *q, const xsent *x, size_t i)
{
    uint32_t stem = 0, pref = 0;
    for (uint32_t a = x->first[i]; a < x->first[i + 1]; a++) {
        uint32_t id = x->ids[a] & ~XPREFIX;
        int is_pref = (x->ids[a] & XPREFIX) != 0;
        for (size_t j = 0; j < q->nterms; j++)
            if (q->terms[j].term == id && q->terms[j].prefix == is_pref) {
                if (is_pref)
                    pref |= q->terms[j].mask;
                else
                    stem |= q->terms[j].mask;
            }
    }
    return mask_score(q, stem, pref);
}

/* A span that is a whole line of the text (a table row, a list item). */
static int is_line(const char *t, size_t n, span sp)
{
    size_t a = sp.s, z = sp.e;
    while (a > 0 && t[a - 1] == ' ')
        a--;
    while (z < n && t[z] == ' ')
        z++;
    return (a == 0 || t[a - 1] == '\n') && (z == n || t[z] == '\n');
}

/* Between A and B there is exactly one line break and nothing else but blanks. */
static int one_newline(const char *t, size_t a, size_t b)
{
    int nl = 0;
    for (size_t i = a; i < b; i++) {
        if (t[i] == '\n')
            nl++;
        else if (t[i] != ' ')
            return 0;
    }
    return nl == 1;
}

static int cmp_span_score(const void *a, const void *b)
{
    const span *x = a, *y = b;
    if (x->score != y->score)
        return x->score > y->score ? -1 : 1;
    return x->s < y->s ? -1 : x->s > y->s;
}

static int cmp_span_pos(const void *a, const void *b)
{
    const span *x = a, *y = b;
    return x->s < y->s ? -1 : x->s > y->s;
}

char *kb_excerpt(const kb *k, const kb_chunk *c, const char *qtext, size_t max_chars)
{
    span sp[EXCERPT_MAX_SENTENCES], pick[EXCERPT_MAX_SENTENCES]; /* 12 KiB: on the stack, not malloc'ed per call */
    size_t n, i, npick = 0, used = 0;
    strbuf out = {0};
    int matched = 0;

    if (!k || !c)
        return xstrdup("");
    const query *q = excerpt_query(k, qtext ? qtext : "");
    int own = c >= k->chunks && c < k->chunks + k->nchunks;
    xsent foreign = {0}; /* a chunk of another KB: split and stemmed here, in any language */
    if (!own)
        sentences_build(k, -1, c->text, c->text_len, &foreign);
    const xsent *x = own ? chunk_sentences(k, (size_t)(c - k->chunks)) : &foreign;
    n = x->n;
    memcpy(sp, x->sp, n * sizeof *sp);
    for (i = 0; i < n; i++)
        sp[i].score = cached_score(q, x, i);
    free(foreign.sp);
    free(foreign.first);
    free(foreign.ids);
    for (i = 0; i < n; i++)
        if (sp[i].score > 0)
            matched = 1;
    if (matched)
        qsort(sp, n, sizeof *sp, cmp_span_score);
    for (i = 0; i < n; i++) {
        size_t len = sp[i].e - sp[i].s, need = len + (npick ? 1 : 0);
        if (matched && sp[i].score <= 0)
            break;
        if (used + need > max_chars) {
            if (!matched)
                break;
            continue;
        }
        pick[npick++] = sp[i];
        used += need;
    }
    if (matched && npick > 0) {
        /* a matched table row or list line brings the rest of its block (the
         * other rows of the price table), as far as max_chars allows */
        qsort(sp, n, sizeof *sp, cmp_span_pos);
        int grew = 1;
        while (grew) {
            grew = 0;
            for (i = 0; i < n; i++) {
                size_t len = sp[i].e - sp[i].s, j;
                int picked = 0, near = 0;
                for (j = 0; j < npick; j++)
                    picked |= pick[j].s == sp[i].s;
                if (picked || !is_line(c->text, c->text_len, sp[i]) || used + len + 1 > max_chars)
                    continue;
                for (j = 0; j < npick && !near; j++)
                    near = is_line(c->text, c->text_len, pick[j]) &&
                           ((i > 0 && pick[j].s == sp[i - 1].s && one_newline(c->text, sp[i - 1].e, sp[i].s)) ||
                            (i + 1 < n && pick[j].s == sp[i + 1].s && one_newline(c->text, sp[i].e, sp[i + 1].s)));
                if (near) {
                    pick[npick++] = sp[i];
                    used += len + 1;
                    grew = 1;
                }
            }
        }
    }
    if (npick == 0 && n > 0 && max_chars > 0) { /* one sentence longer than max_chars */
        size_t cut = sp[0].s + max_chars;
        while (cut > sp[0].s && ((unsigned char)c->text[cut] & 0xC0) == 0x80)
            cut--;
        sb_append(&out, c->text + sp[0].s, cut - sp[0].s);
    } else {
        qsort(pick, npick, sizeof *pick, cmp_span_pos);
        for (i = 0; i < npick; i++) {
            if (i) { /* keep line structure (table rows, list items) where the text had it */
                int nl = memchr(c->text + pick[i - 1].e, '\n', pick[i].s - pick[i - 1].e) != NULL;
                sb_append(&out, nl ? "\n" : " ", 1);
            }
            sb_append(&out, c->text + pick[i].s, pick[i].e - pick[i].s);
        }
    }
    return sb_take(&out);
}

/* ---- accessors ----------------------------------------------------------------------- */

size_t kb_chunk_count(const kb *k)
{
    return k ? k->nchunks : 0;
}

size_t kb_file_count(const kb *k)
{
    return k ? k->nfiles : 0;
}

size_t kb_bytes(const kb *k)
{
    return k ? k->bytes : 0;
}

const kb_chunk *kb_chunk_at(const kb *k, size_t i)
{
    return k && i < k->nchunks ? &k->chunks[i] : NULL;
}

const char *kb_hash(const kb *k)
{
    return k ? k->hash : "";
}

void kb_free(kb *k)
{
    size_t i;
    if (!k)
        return;
    for (i = 0; i < k->nchunks; i++) {
        free((char *)k->chunks[i].heading);
        free((char *)k->chunks[i].text);
    }
    free(k->chunks);
    for (i = 0; i < k->nfiles; i++)
        free(k->files[i]);
    free(k->files);
    text_analyzer_free(k->an);
    free(k->pool);
    free(k->term_off);
    free(k->slots);
    free(k->dl);
    free(k->clang);
    free(k->post_off);
    free(k->post_chunk);
    free(k->post_tf);
    free(k->acc);
    free(k->stem_mask);
    free(k->pref_mask);
    free(k->touched);
    xcache_free(k->xc, k->nchunks);
    free(k);
}
