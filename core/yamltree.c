/*
 * yamltree.c - YAML to jansson with locations, behind yamltree.h.
 *
 * A recursive descent over libyaml's event stream (not its document loader),
 * so that nesting depth, alias expansion and size are bounded while parsing
 * and every node's position is recorded as it is made. Positions live in a
 * side table (cfgloc) that mirrors the tree: a mapping's entry maps each key
 * to its child's entry, a list's entry lists its children's. An alias copies
 * the anchored JSON subtree but shares the anchored location entries, so the
 * nodes inside an alias report where they were really written.
 */
#include "yamltree.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

/* Scalar and key text allowed after alias copies and ${} expansion. */
#define CFGDOC_MAX_TEXT (32u * 1024u * 1024u)

#define TAG_STR "tag:yaml.org,2002:str"
#define TAG_MAP "tag:yaml.org,2002:map"
#define TAG_SEQ "tag:yaml.org,2002:seq"

enum { LOC_EXPANDED = 1 };

typedef struct {
    int line, col;   /* the node: for a collection under a key, the key's position */
    int kline, kcol; /* the key of a mapping member, else the same as line/col */
    unsigned flags;
    json_t *kids;    /* mapping: object key -> index; list: array of index; else NULL */
    json_t *text;    /* plain scalar typed non-string: its text; else NULL */
} cfgloc;

struct cfgdoc {
    char *file;
    json_t *root;
    cfgloc *locs;
    size_t nlocs, cap;
};

typedef struct {
    char *s;
    size_t len, cap;
    int oom;
} strbuf;

typedef struct {
    char *name;
    json_t *val;
    size_t loc;
    size_t nodes, bytes;
    int height;
} anchor;

typedef struct {
    yaml_parser_t parser;
    cfgdoc *doc;
    diag *d;
    const char *text;
    size_t len;
    strbuf path;
    anchor *anchors;
    size_t nanchors, capanchors;
    json_t *anchor_index; /* name -> index of its latest definition in anchors */
    size_t nodes, bytes;
    size_t aliases; /* aliases expanded so far */
    int json;       /* cfgdoc_parse_json: no ${} expansion, a list may be the top level */
} yparse;

/* ---- small string buffer ---- */

static void sb_putn(strbuf *b, const char *s, size_t n)
{
    if (b->oom)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *p = realloc(b->s, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->s = p;
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void sb_puts(strbuf *b, const char *s)
{
    sb_putn(b, s, strlen(s));
}

static void sb_truncate(strbuf *b, size_t len)
{
    if (b->s && len <= b->len) {
        b->len = len;
        b->s[len] = '\0';
    }
}

static const char *sb_str(const strbuf *b)
{
    return b->s ? b->s : "";
}

/* ---- names for messages ---- */

const char *cfgdoc_kind(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "a mapping";
    case JSON_ARRAY: return "a list";
    case JSON_STRING: return "a string";
    case JSON_INTEGER:
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "an empty value (null)";
    }
    return "a value";
}

/* ---- reporting while parsing ---- */

static void yp_error(yparse *y, int line, int col, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void yp_error(yparse *y, int line, int col, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    diag_vadd(y->d, y->doc->file, line, col, sb_str(&y->path), fmt, ap);
    va_end(ap);
}

/* Byte offset of 0-based (line, column-in-characters) in the input, or len. */
static size_t yp_offset(const yparse *y, size_t line, size_t col)
{
    size_t i = 0;
    while (line > 0 && i < y->len) {
        if (y->text[i++] == '\n')
            line--;
    }
    while (col > 0 && i < y->len) {
        i++;
        while (i < y->len && ((unsigned char)y->text[i] & 0xC0) == 0x80)
            i++;
        col--;
    }
    return i;
}

/* Whether 0-based line (or the one before, where a flow item may start) holds needle. */
static int yp_line_has(const yparse *y, size_t line, const char *needle)
{
    size_t start = yp_offset(y, line > 0 ? line - 1 : 0, 0), end = yp_offset(y, line + 1, 0);
    size_t nl = strlen(needle);
    for (size_t i = start; i + nl <= end; i++)
        if (memcmp(y->text + i, needle, nl) == 0)
            return 1;
    return 0;
}

static void yp_syntax_error(yparse *y)
{
    yaml_parser_t *p = &y->parser;
    const char *problem = p->problem ? p->problem : "unknown problem";
    if (p->error == YAML_MEMORY_ERROR) {
        diag_add(y->d, y->doc->file, 0, 0, NULL, "out of memory while parsing");
        return;
    }
    if (p->error == YAML_READER_ERROR) {
        /* Reader errors carry a byte offset, not a mark. */
        int line = 1, col = 1;
        for (size_t i = 0; i < p->problem_offset && i < y->len; i++) {
            if (y->text[i] == '\n') {
                line++;
                col = 1;
            } else if (((unsigned char)y->text[i] & 0xC0) != 0x80) {
                col++;
            }
        }
        if (p->problem_value >= 0)
            diag_add(y->d, y->doc->file, line, col, NULL, "syntax error: %s (byte 0x%02X)",
                     problem, (unsigned)p->problem_value);
        else
            diag_add(y->d, y->doc->file, line, col, NULL, "syntax error: %s", problem);
        return;
    }
    int line = (int)p->problem_mark.line + 1, col = (int)p->problem_mark.column + 1;
    size_t off = yp_offset(y, p->problem_mark.line, p->problem_mark.column);
    const char *hint = "";
    if (off < y->len && y->text[off] == '\t' && !strstr(problem, "tab"))
        hint = "; tabs cannot be used for indentation, use spaces";
    else if (p->context && strstr(p->context, "flow") && yp_line_has(y, p->problem_mark.line, "${"))
        hint = "; inside [ ] or { } write a ${NAME} reference in quotes: \"${NAME}\"";
    if (p->context && p->context_mark.line != p->problem_mark.line)
        diag_add(y->d, y->doc->file, line, col, NULL, "syntax error: %s (%s at line %d)%s",
                 problem, p->context, (int)p->context_mark.line + 1, hint);
    else if (p->context)
        diag_add(y->d, y->doc->file, line, col, NULL, "syntax error: %s (%s)%s", problem,
                 p->context, hint);
    else
        diag_add(y->d, y->doc->file, line, col, NULL, "syntax error: %s%s", problem, hint);
}

/* Next event into ev; -1 (reported) on a syntax error. */
static int yp_next(yparse *y, yaml_event_t *ev)
{
    if (!yaml_parser_parse(&y->parser, ev)) {
        yp_syntax_error(y);
        return -1;
    }
    return 0;
}

static int yp_oom(yparse *y)
{
    diag_add(y->d, y->doc->file, 0, 0, NULL, "out of memory while reading the configuration");
    return -1;
}

/* ---- location table ---- */

static long yp_newloc(yparse *y, int line, int col, int kline, int kcol)
{
    cfgdoc *doc = y->doc;
    if (doc->nlocs == doc->cap) {
        size_t cap = doc->cap ? doc->cap * 2 : 64;
        cfgloc *l = realloc(doc->locs, cap * sizeof *l);
        if (!l)
            return -1;
        doc->locs = l;
        doc->cap = cap;
    }
    cfgloc *l = &doc->locs[doc->nlocs];
    memset(l, 0, sizeof *l);
    l->line = line;
    l->col = col;
    l->kline = kline ? kline : line;
    l->kcol = kline ? kcol : col;
    return (long)doc->nlocs++;
}

/* ---- budgets ---- */

static int yp_charge(yparse *y, int line, int col, size_t nodes, size_t bytes)
{
    y->nodes += nodes;
    y->bytes += bytes;
    if (y->nodes > CFGDOC_MAX_NODES) {
        if (y->aliases)
            yp_error(y, line, col,
                     "too many nodes (more than %u, counting the copies aliases make); "
                     "is an alias expanded inside itself many times?",
                     CFGDOC_MAX_NODES);
        else
            yp_error(y, line, col, "too many nodes (more than %u)", CFGDOC_MAX_NODES);
        return -1;
    }
    if (y->bytes > CFGDOC_MAX_TEXT) {
        yp_error(y, line, col,
                 "too much text (more than %u bytes, counting the copies aliases make)",
                 CFGDOC_MAX_TEXT);
        return -1;
    }
    return 0;
}

/* ---- ${ENV} expansion ---- */

static int is_name_start(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_';
}

static int is_name_char(char c)
{
    return is_name_start(c) || (c >= '0' && c <= '9');
}

/*
 * Expands s[0..n) into out. Reports every unset variable and a malformed
 * reference (then stops); returns the number of errors. *expanded is set when
 * any ${} reference was replaced (by the environment or by its default).
 */
static int yp_expand(yparse *y, const char *s, size_t n, int line, int col, strbuf *out,
                     int *expanded)
{
    int errors = 0;
    size_t i = 0;
    while (i < n) {
        if (s[i] != '$') {
            size_t j = i;
            while (j < n && s[j] != '$')
                j++;
            sb_putn(out, s + i, j - i);
            i = j;
            continue;
        }
        if (i + 2 < n && s[i + 1] == '$' && s[i + 2] == '{') {
            sb_putn(out, "${", 2);
            i += 3;
            continue;
        }
        if (i + 1 >= n || s[i + 1] != '{') {
            sb_putn(out, "$", 1);
            i++;
            continue;
        }
        size_t name = i + 2, j = name;
        if (j < n && is_name_start(s[j]))
            while (j < n && is_name_char(s[j]))
                j++;
        size_t name_len = j - name;
        const char *def = NULL;
        size_t def_len = 0;
        if (name_len > 0 && j + 1 < n && s[j] == ':' && s[j + 1] == '-') {
            def = s + j + 2;
            const char *close = memchr(def, '}', n - (j + 2));
            if (close) {
                def_len = (size_t)(close - def);
                j = (size_t)(close - s);
            } else {
                j = n;
            }
        }
        if (name_len == 0 || j >= n || s[j] != '}') {
            yp_error(y, line, col,
                     "malformed ${...} reference: write ${NAME} or ${NAME:-default} "
                     "(NAME of letters, digits and _), or $${ for a literal ${");
            return errors + 1;
        }
        char namebuf[256];
        if (name_len >= sizeof namebuf) {
            yp_error(y, line, col, "environment variable name is too long (more than %zu characters)",
                     sizeof namebuf - 1);
            return errors + 1;
        }
        memcpy(namebuf, s + name, name_len);
        namebuf[name_len] = '\0';
        const char *val = getenv(namebuf);
        if (val && (*val || !def)) {
            sb_puts(out, val);
            *expanded = 1;
        } else if (def) {
            sb_putn(out, def, def_len);
            *expanded = 1; /* typed the same whether the variable is set or not */
        } else {
            yp_error(y, line, col,
                     "environment variable %s is not set (set it, or write ${%s:-default})",
                     namebuf, namebuf);
            errors++;
        }
        i = j + 1;
    }
    return errors;
}

/* ---- typing of plain scalars (YAML 1.2 core schema) ---- */

enum { TY_OK, TY_STRING, TY_OVERFLOW, TY_NONFINITE };

static int all_in(const char *s, const char *set)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!strchr(set, *s))
            return 0;
    return 1;
}

static int is_one_of(const char *s, const char *const *words)
{
    for (; *words; words++)
        if (strcmp(s, *words) == 0)
            return 1;
    return 0;
}

/* [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)? */
static int is_float(const char *s)
{
    if (*s == '-' || *s == '+')
        s++;
    size_t digits = 0;
    while (*s >= '0' && *s <= '9')
        s++, digits++;
    if (*s == '.') {
        s++;
        size_t frac = 0;
        while (*s >= '0' && *s <= '9')
            s++, frac++;
        if (digits == 0 && frac == 0)
            return 0;
    } else if (digits == 0) {
        return 0;
    }
    if (*s == 'e' || *s == 'E') {
        s++;
        if (*s == '-' || *s == '+')
            s++;
        if (!(*s >= '0' && *s <= '9'))
            return 0;
        while (*s >= '0' && *s <= '9')
            s++;
    }
    return *s == '\0';
}

static const char *const nulls[] = {"", "~", "null", "Null", "NULL", NULL};

/* Types NUL-terminated s; TY_OK sets *out to a new reference. */
static int yp_type_plain(const char *s, json_t **out)
{
    static const char *const trues[] = {"true", "True", "TRUE", NULL};
    static const char *const falses[] = {"false", "False", "FALSE", NULL};
    static const char *const infs[] = {".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF",
                                       "-.inf", "-.Inf", "-.INF", ".nan", ".NaN", ".NAN", NULL};
    *out = NULL;
    if (is_one_of(s, nulls))
        *out = json_null();
    else if (is_one_of(s, trues))
        *out = json_true();
    else if (is_one_of(s, falses))
        *out = json_false();
    else if (is_one_of(s, infs))
        return TY_NONFINITE;
    else {
        const char *digits = s + (*s == '-' || *s == '+');
        int base = 0;
        const char *num = NULL;
        if (all_in(digits, "0123456789")) {
            base = 10;
            num = s;
        } else if (s[0] == '0' && s[1] == 'o' && all_in(s + 2, "01234567")) {
            base = 8;
            num = s + 2;
        } else if (s[0] == '0' && s[1] == 'x' && all_in(s + 2, "0123456789abcdefABCDEF")) {
            base = 16;
            num = s + 2;
        }
        if (base) {
            errno = 0;
            long long v = strtoll(num, NULL, base);
            if (errno == ERANGE)
                return TY_OVERFLOW;
            *out = json_integer(v);
        } else if (is_float(s)) {
            errno = 0;
            double v = strtod(s, NULL);
            if (errno == ERANGE && (v == HUGE_VAL || v == -HUGE_VAL))
                return TY_OVERFLOW;
            *out = json_real(v);
        } else {
            return TY_STRING;
        }
    }
    return TY_OK;
}

/* ---- the event walk ---- */

static int yp_node(yparse *y, yaml_event_t *ev, int depth, int kline, int kcol, json_t **out,
                   size_t *outloc, int *height);

static const anchor *yp_find_anchor(const yparse *y, const char *name)
{
    const json_t *i = json_object_get(y->anchor_index, name);
    return i ? &y->anchors[json_integer_value(i)] : NULL;
}

static int yp_add_anchor(yparse *y, const char *name, json_t *val, size_t loc, size_t nodes,
                         size_t bytes, int height)
{
    if (y->nanchors == y->capanchors) {
        size_t cap = y->capanchors ? y->capanchors * 2 : 8;
        anchor *a = realloc(y->anchors, cap * sizeof *a);
        if (!a)
            return -1;
        y->anchors = a;
        y->capanchors = cap;
    }
    char *copy = strdup(name);
    if (!copy || json_object_set_new(y->anchor_index, name,
                                     json_integer((json_int_t)y->nanchors)) < 0) {
        free(copy);
        return -1;
    }
    anchor *a = &y->anchors[y->nanchors++];
    a->name = copy;
    a->val = json_incref(val);
    a->loc = loc;
    a->nodes = nodes;
    a->bytes = bytes;
    a->height = height;
    return 0;
}

static int yp_check_depth(yparse *y, int depth, int line, int col)
{
    if (depth > CFGDOC_MAX_DEPTH) {
        yp_error(y, line, col, "nesting is too deep (more than %d levels)", CFGDOC_MAX_DEPTH);
        return -1;
    }
    return 0;
}

static int yp_scalar(yparse *y, yaml_event_t *ev, int kline, int kcol, json_t **out, size_t *outloc)
{
    int line = (int)ev->start_mark.line + 1, col = (int)ev->start_mark.column + 1;
    const char *raw = (const char *)ev->data.scalar.value;
    size_t rawlen = ev->data.scalar.length;
    const char *tag = (const char *)ev->data.scalar.tag;
    long li = yp_newloc(y, line, col, kline, kcol);
    if (li < 0)
        return yp_oom(y);
    *outloc = (size_t)li;
    *out = NULL;
    if (yp_charge(y, line, col, 1, rawlen) < 0)
        return -1;
    if (memchr(raw, '\0', rawlen)) {
        yp_error(y, line, col, "text contains a NUL character");
        *out = json_null();
        return 0;
    }
    int force_string = ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE;
    if (tag && (strcmp(tag, TAG_STR) == 0 || strcmp(tag, "!") == 0)) {
        force_string = 1;
    } else if (tag) {
        yp_error(y, line, col, "unsupported tag \"%s\" (only !!str is understood here)", tag);
        *out = json_null();
        return 0;
    }
    strbuf text = {0};
    int expanded = 0;
    if (y->json)
        sb_putn(&text, raw, rawlen); /* JSON strings are taken as written */
    else if (yp_expand(y, raw, rawlen, line, col, &text, &expanded) > 0) {
        free(text.s);
        *out = json_null();
        return 0;
    }
    if (text.oom)
        return free(text.s), yp_oom(y);
    if (expanded && yp_charge(y, line, col, 0, text.len) < 0)
        return free(text.s), -1;
    const char *s = sb_str(&text);
    int ty = TY_STRING;
    if (!force_string) {
        ty = yp_type_plain(s, out);
        if (ty == TY_OK && !*out)
            return free(text.s), yp_oom(y);
        if (ty == TY_OVERFLOW || ty == TY_NONFINITE) {
            if (!expanded) {
                if (ty == TY_OVERFLOW)
                    yp_error(y, line, col,
                             "number %s is too large (put it in quotes to keep it as text)", s);
                else
                    yp_error(y, line, col,
                             "%s is not a finite number, which JSON cannot hold "
                             "(put it in quotes to keep it as text)",
                             s);
                free(text.s);
                *out = json_null();
                return 0;
            }
            ty = TY_STRING; /* a value from the environment that does not fit stays text */
        }
    }
    if (ty == TY_STRING) {
        *out = json_stringn(s, text.len);
        if (!*out) {
            /* libyaml guarantees UTF-8, so only the environment can bring bad bytes. */
            yp_error(y, line, col, "the value from the environment is not valid UTF-8");
            free(text.s);
            *out = json_null();
            return 0;
        }
    } else {
        json_t *t = json_stringn(s, text.len);
        if (!t)
            return free(text.s), yp_oom(y);
        y->doc->locs[li].text = t;
    }
    if (expanded)
        y->doc->locs[li].flags |= LOC_EXPANDED;
    free(text.s);
    return 0;
}

static int yp_alias(yparse *y, yaml_event_t *ev, int depth, int kline, int kcol, json_t **out,
                    size_t *outloc, int *height)
{
    int line = (int)ev->start_mark.line + 1, col = (int)ev->start_mark.column + 1;
    const char *name = (const char *)ev->data.alias.anchor;
    const anchor *a = yp_find_anchor(y, name);
    *out = NULL;
    if (!a) {
        long li = yp_newloc(y, line, col, kline, kcol);
        if (li < 0)
            return yp_oom(y);
        *outloc = (size_t)li;
        yp_error(y, line, col, "unknown alias *%s (define the anchor first, with &%s)", name, name);
        *out = json_null();
        return 0;
    }
    int is_coll = json_is_object(a->val) || json_is_array(a->val);
    if (kline && is_coll) {
        line = kline;
        col = kcol;
    }
    if (a->height > 0 && yp_check_depth(y, depth + a->height - 1, line, col) < 0)
        return -1;
    y->aliases++;
    if (yp_charge(y, line, col, a->nodes, a->bytes) < 0)
        return -1;
    /* a->loc may move with realloc: copy what we need before adding. */
    cfgloc src = y->doc->locs[a->loc];
    long li = yp_newloc(y, line, col, kline, kcol);
    if (li < 0)
        return yp_oom(y);
    *outloc = (size_t)li;
    cfgloc *l = &y->doc->locs[li];
    l->flags = src.flags;
    l->kids = src.kids ? json_incref(src.kids) : NULL;
    l->text = src.text ? json_incref(src.text) : NULL;
    *out = json_deep_copy(a->val);
    if (!*out)
        return yp_oom(y);
    *height = a->height;
    return 0;
}

/* Adds to obj (and its location table kids) every key of src it lacks. */
static int yp_merge(yparse *y, json_t *obj, json_t *kids, const json_t *src, size_t srcloc)
{
    const json_t *srckids = y->doc->locs[srcloc].kids;
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)src, k, v) {
        if (json_object_get(obj, k))
            continue;
        json_t *idx = json_object_get(srckids, k);
        if (json_object_set(obj, k, v) < 0 || !idx || json_object_set(kids, k, idx) < 0)
            return -1;
    }
    return 0;
}

static int yp_mapping(yparse *y, yaml_event_t *ev, int depth, int kline, int kcol, json_t **out,
                      size_t *outloc, int *height)
{
    int line = (int)ev->start_mark.line + 1, col = (int)ev->start_mark.column + 1;
    const char *tag = (const char *)ev->data.mapping_start.tag;
    if (kline) {
        line = kline;
        col = kcol;
    }
    *out = NULL;
    if (yp_check_depth(y, depth, line, col) < 0)
        return -1;
    if (yp_charge(y, line, col, 1, 0) < 0)
        return -1;
    long li = yp_newloc(y, line, col, kline, kcol);
    json_t *obj = json_object(), *kids = json_object();
    json_t *merges = json_array(); /* [value, loc index] pairs, in order */
    if (li < 0 || !obj || !kids || !merges) {
        json_decref(obj);
        json_decref(kids);
        json_decref(merges);
        return yp_oom(y);
    }
    *outloc = (size_t)li;
    y->doc->locs[li].kids = kids;
    *out = obj;
    if (tag && strcmp(tag, TAG_MAP) != 0)
        yp_error(y, line, col, "unsupported tag \"%s\" on a mapping", tag);
    int maxh = 0, rc = 0;
    size_t base = y->path.len;
    for (;;) {
        yaml_event_t ke, ve;
        if (yp_next(y, &ke) < 0) {
            rc = -1;
            break;
        }
        if (ke.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&ke);
            break;
        }
        int kl = (int)ke.start_mark.line + 1, kc = (int)ke.start_mark.column + 1;
        char *key = NULL;
        int merge = 0;
        if (ke.type == YAML_SCALAR_EVENT) {
            const char *k = (const char *)ke.data.scalar.value;
            size_t klen = ke.data.scalar.length;
            int plain = ke.data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
            if (memchr(k, '\0', klen))
                yp_error(y, kl, kc, "key contains a NUL character");
            else if (klen == 0 || (plain && is_one_of(k, nulls)))
                yp_error(y, kl, kc, "empty key (every value needs a name before the ':')");
            else if (klen > CFGDOC_MAX_KEY)
                yp_error(y, kl, kc, "key is too long (%zu bytes; the limit is %u)", klen,
                         CFGDOC_MAX_KEY);
            else if (plain && strcmp(k, "<<") == 0)
                merge = 1;
            else if (!(key = strdup(k))) {
                yaml_event_delete(&ke);
                rc = yp_oom(y);
                break;
            }
            yaml_event_delete(&ke);
            if (yp_charge(y, kl, kc, 0, klen) < 0) {
                free(key);
                rc = -1;
                break;
            }
        } else if (ke.type == YAML_ALIAS_EVENT) {
            yp_error(y, kl, kc, "an alias cannot be used as a key");
            yaml_event_delete(&ke);
        } else {
            /* A list or mapping as a key: report, then read and drop it. */
            yp_error(y, kl, kc, "a key must be a plain name, not %s",
                     ke.type == YAML_SEQUENCE_START_EVENT ? "a list" : "a mapping");
            json_t *junk = NULL;
            size_t jl;
            int jh = 0;
            int r = yp_node(y, &ke, depth + 1, 0, 0, &junk, &jl, &jh);
            json_decref(junk);
            if (r < 0) {
                rc = -1;
                break;
            }
        }
        if (key || merge) {
            if (base > 0)
                sb_putn(&y->path, ".", 1);
            sb_puts(&y->path, key ? key : "<<");
        }
        json_t *val = NULL;
        size_t vloc = 0;
        int h = 0;
        if (y->path.oom || yp_next(y, &ve) < 0) {
            free(key);
            rc = y->path.oom ? yp_oom(y) : -1;
            break;
        }
        if (yp_node(y, &ve, depth + 1, kl, kc, &val, &vloc, &h) < 0) {
            json_decref(val);
            free(key);
            rc = -1;
            break;
        }
        if (h > maxh)
            maxh = h;
        if (merge) {
            int ok = 1;
            if (json_is_object(val)) {
                json_t *pair = json_pack("[O,I]", val, (json_int_t)vloc);
                ok = pair && json_array_append_new(merges, pair) == 0;
            } else if (json_is_array(val) && json_array_size(val) > 0) {
                json_t *vk = y->doc->locs[vloc].kids;
                size_t i;
                json_t *m;
                json_array_foreach(val, i, m) {
                    if (!json_is_object(m)) {
                        ok = -1;
                        break;
                    }
                    json_t *pair = json_pack("[O,O]", m, json_array_get(vk, i));
                    if (!pair || json_array_append_new(merges, pair) < 0) {
                        ok = 0;
                        break;
                    }
                }
            } else {
                ok = -1;
            }
            if (ok < 0)
                yp_error(y, kl, kc,
                         "the merge key << takes a mapping or a list of mappings "
                         "(usually aliases: <<: *base or <<: [*a, *b]), not %s",
                         json_is_array(val) ? "a list of other things" : cfgdoc_kind(val));
            json_decref(val);
            if (!ok) {
                rc = yp_oom(y);
                break;
            }
        } else if (key) {
            json_t *first = json_object_get(kids, key);
            if (first) {
                yp_error(y, kl, kc, "duplicate key \"%s\" (first defined at line %d)", key,
                         y->doc->locs[json_integer_value(first)].kline);
                json_decref(val);
            } else if (json_object_set_new(obj, key, val) < 0 ||
                       json_object_set_new(kids, key, json_integer((json_int_t)vloc)) < 0) {
                free(key);
                rc = yp_oom(y);
                break;
            }
        } else {
            json_decref(val);
        }
        free(key);
        sb_truncate(&y->path, base);
    }
    sb_truncate(&y->path, base);
    if (rc == 0) {
        size_t i;
        json_t *pair;
        json_array_foreach(merges, i, pair) {
            if (yp_merge(y, obj, kids, json_array_get(pair, 0),
                         (size_t)json_integer_value(json_array_get(pair, 1))) < 0) {
                rc = yp_oom(y);
                break;
            }
        }
    }
    json_decref(merges);
    *height = maxh + 1;
    return rc;
}

static int yp_sequence(yparse *y, yaml_event_t *ev, int depth, int kline, int kcol, json_t **out,
                       size_t *outloc, int *height)
{
    int line = (int)ev->start_mark.line + 1, col = (int)ev->start_mark.column + 1;
    const char *tag = (const char *)ev->data.sequence_start.tag;
    if (kline) {
        line = kline;
        col = kcol;
    }
    *out = NULL;
    if (yp_check_depth(y, depth, line, col) < 0)
        return -1;
    if (yp_charge(y, line, col, 1, 0) < 0)
        return -1;
    long li = yp_newloc(y, line, col, kline, kcol);
    json_t *arr = json_array(), *kids = json_array();
    if (li < 0 || !arr || !kids) {
        json_decref(arr);
        json_decref(kids);
        return yp_oom(y);
    }
    *outloc = (size_t)li;
    y->doc->locs[li].kids = kids;
    *out = arr;
    if (tag && strcmp(tag, TAG_SEQ) != 0)
        yp_error(y, line, col, "unsupported tag \"%s\" on a list", tag);
    int maxh = 0, rc = 0;
    size_t base = y->path.len;
    for (size_t i = 0;; i++) {
        yaml_event_t ie;
        if (yp_next(y, &ie) < 0) {
            rc = -1;
            break;
        }
        if (ie.type == YAML_SEQUENCE_END_EVENT) {
            yaml_event_delete(&ie);
            break;
        }
        char idx[32];
        snprintf(idx, sizeof idx, "[%zu]", i);
        sb_puts(&y->path, idx);
        json_t *val = NULL;
        size_t vloc = 0;
        int h = 0;
        if (y->path.oom) {
            yaml_event_delete(&ie);
            rc = yp_oom(y);
            break;
        }
        if (yp_node(y, &ie, depth + 1, 0, 0, &val, &vloc, &h) < 0) {
            json_decref(val);
            rc = -1;
            break;
        }
        if (h > maxh)
            maxh = h;
        if (json_array_append_new(arr, val) < 0 ||
            json_array_append_new(kids, json_integer((json_int_t)vloc)) < 0) {
            rc = yp_oom(y);
            break;
        }
        sb_truncate(&y->path, base);
    }
    sb_truncate(&y->path, base);
    *height = maxh + 1;
    return rc;
}

/*
 * Reads the node whose first event is *ev (taken over and deleted here).
 * On return *out holds a new reference when not NULL, even on failure (the
 * caller drops it). Non-fatal problems are reported and give null; the
 * return is -1 only when parsing must stop (syntax, limits, memory).
 */
static int yp_node(yparse *y, yaml_event_t *ev, int depth, int kline, int kcol, json_t **out,
                   size_t *outloc, int *height)
{
    const char *anchor_name = NULL;
    switch (ev->type) {
    case YAML_SCALAR_EVENT: anchor_name = (const char *)ev->data.scalar.anchor; break;
    case YAML_SEQUENCE_START_EVENT: anchor_name = (const char *)ev->data.sequence_start.anchor; break;
    case YAML_MAPPING_START_EVENT: anchor_name = (const char *)ev->data.mapping_start.anchor; break;
    default: break;
    }
    char *name = anchor_name ? strdup(anchor_name) : NULL;
    if (anchor_name && !name) {
        yaml_event_delete(ev);
        return yp_oom(y);
    }
    size_t nodes0 = y->nodes, bytes0 = y->bytes;
    int rc, h = 0;
    *out = NULL;
    *height = 0;
    switch (ev->type) {
    case YAML_SCALAR_EVENT: rc = yp_scalar(y, ev, kline, kcol, out, outloc); break;
    case YAML_ALIAS_EVENT: rc = yp_alias(y, ev, depth, kline, kcol, out, outloc, &h); break;
    case YAML_MAPPING_START_EVENT: rc = yp_mapping(y, ev, depth, kline, kcol, out, outloc, &h); break;
    case YAML_SEQUENCE_START_EVENT: rc = yp_sequence(y, ev, depth, kline, kcol, out, outloc, &h); break;
    default:
        /* libyaml only hands out node events here; anything else is a bug in it. */
        diag_add(y->d, y->doc->file, (int)ev->start_mark.line + 1, (int)ev->start_mark.column + 1,
                 sb_str(&y->path), "unexpected YAML event %d", (int)ev->type);
        rc = -1;
        break;
    }
    yaml_event_delete(ev);
    *height = h;
    if (rc == 0 && name &&
        yp_add_anchor(y, name, *out, *outloc, y->nodes - nodes0, y->bytes - bytes0, h) < 0)
        rc = yp_oom(y);
    free(name);
    return rc;
}

/* Reads the whole stream into y->doc->root; all problems go to y->d. */
static void yp_stream(yparse *y)
{
    yaml_event_t ev;
    if (yp_next(y, &ev) < 0)
        return;
    yaml_event_delete(&ev); /* STREAM-START */
    if (yp_next(y, &ev) < 0)
        return;
    if (ev.type == YAML_STREAM_END_EVENT) {
        yaml_event_delete(&ev);
        diag_add(y->d, y->doc->file, 0, 0, NULL, "empty configuration");
        return;
    }
    yaml_event_delete(&ev); /* DOCUMENT-START */
    if (yp_next(y, &ev) < 0)
        return;
    int empty = ev.type == YAML_SCALAR_EVENT && ev.data.scalar.length == 0 &&
                ev.data.scalar.style == YAML_PLAIN_SCALAR_STYLE && !ev.data.scalar.tag;
    json_t *root = NULL;
    size_t rootloc;
    int h;
    int rc = yp_node(y, &ev, 1, 0, 0, &root, &rootloc, &h);
    if (rc < 0) {
        json_decref(root);
        return;
    }
    y->doc->root = root;
    if (empty) {
        diag_add(y->d, y->doc->file, 0, 0, NULL, "empty configuration");
        return;
    }
    if (!json_is_object(root) && !(y->json && json_is_array(root))) {
        cfgloc *l = &y->doc->locs[0];
        diag_add(y->d, y->doc->file, l->line, l->col, NULL,
                 "the configuration must be a mapping of keys to values at the top level, not %s",
                 cfgdoc_kind(root));
        return;
    }
    if (yp_next(y, &ev) < 0)
        return;
    yaml_event_delete(&ev); /* DOCUMENT-END */
    if (yp_next(y, &ev) < 0)
        return;
    if (ev.type == YAML_DOCUMENT_START_EVENT)
        diag_add(y->d, y->doc->file, (int)ev.start_mark.line + 1, (int)ev.start_mark.column + 1,
                 NULL, "more than one YAML document (a configuration is one document; remove this '---' and what follows, or merge them)");
    yaml_event_delete(&ev);
}

static cfgdoc *yp_parse(const char *name, const char *text, size_t len, int json, diag *d)
{
    if (!name)
        name = "<string>";
    if (len > CFGDOC_MAX_BYTES) {
        diag_add(d, name, 0, 0, NULL, "configuration is too large (%zu bytes; the limit is %u)",
                 len, CFGDOC_MAX_BYTES);
        return NULL;
    }
    size_t errors0 = diag_count(d);
    yparse y;
    memset(&y, 0, sizeof y);
    y.d = d;
    y.text = text;
    y.len = len;
    y.json = json;
    y.doc = calloc(1, sizeof *y.doc);
    if (!y.doc || !(y.doc->file = strdup(name))) {
        free(y.doc);
        diag_add(d, name, 0, 0, NULL, "out of memory while reading the configuration");
        return NULL;
    }
    if (!(y.anchor_index = json_object()) || !yaml_parser_initialize(&y.parser)) {
        json_decref(y.anchor_index);
        cfgdoc_free(y.doc);
        diag_add(d, name, 0, 0, NULL, "out of memory while reading the configuration");
        return NULL;
    }
    yaml_parser_set_input_string(&y.parser, (const unsigned char *)(text ? text : ""), len);
    yp_stream(&y);
    yaml_parser_delete(&y.parser);
    for (size_t i = 0; i < y.nanchors; i++) {
        free(y.anchors[i].name);
        json_decref(y.anchors[i].val);
    }
    free(y.anchors);
    json_decref(y.anchor_index);
    free(y.path.s);
    int root_ok = json_is_object(y.doc->root) || (json && json_is_array(y.doc->root));
    if (diag_count(d) != errors0 || !root_ok) {
        if (diag_count(d) == errors0)
            diag_add(d, name, 0, 0, NULL, "out of memory while reading the configuration");
        cfgdoc_free(y.doc);
        return NULL;
    }
    return y.doc;
}

cfgdoc *cfgdoc_parse_string(const char *name, const char *text, size_t len, diag *d)
{
    return yp_parse(name, text, len, 0, d);
}

/*
 * JSON text libyaml would refuse: a \u escape of a UTF-16 surrogate half
 * (YAML wants the code point itself) and tabs between tokens (YAML takes a
 * tab at the start of a line for indentation; valid JSON has no raw tab
 * inside a string). Both become text of the same width, so every position
 * stays where the JSON parser saw it. A malloc'd copy, or NULL when out of
 * memory.
 */
static char *yp_json_compat(const char *text, size_t len)
{
    char *s = malloc(len + 1);
    if (!s)
        return NULL;
    memcpy(s, text, len);
    s[len] = '\0';
    int in_string = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '\t') {
            s[i] = ' ';
        } else if (s[i] == '"') {
            in_string = !in_string;
        } else if (in_string && s[i] == '\\' && i + 1 < len) {
            /* \uD800-\uDFFF: U+FFFD, the replacement character, instead */
            if (s[i + 1] == 'u' && i + 5 < len && (s[i + 2] == 'd' || s[i + 2] == 'D') && s[i + 3] &&
                strchr("89abcdefABCDEF", s[i + 3]))
                memcpy(s + i + 2, "fffd", 4);
            i++;
        }
    }
    return s;
}

cfgdoc *cfgdoc_parse_json(const char *name, const char *text, size_t len, diag *d)
{
    char *compat = yp_json_compat(text ? text : "", text ? len : 0);
    if (!compat) {
        diag_add(d, name ? name : "<string>", 0, 0, NULL, "out of memory while reading the configuration");
        return NULL;
    }
    cfgdoc *doc = yp_parse(name, compat, text ? len : 0, 1, d);
    free(compat);
    return doc;
}

cfgdoc *cfgdoc_parse_file(const char *path, diag *d)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        diag_add(d, path, 0, 0, NULL, "cannot open: %s", strerror(errno));
        return NULL;
    }
    size_t cap = 64 * 1024, len = 0;
    char *buf = malloc(cap);
    int err = 0;
    while (buf) {
        if (len == cap) {
            if (cap > CFGDOC_MAX_BYTES)
                break;
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t n = fread(buf + len, 1, cap - len, f);
        len += n;
        if (n == 0) {
            if (ferror(f))
                err = errno ? errno : EIO;
            break;
        }
    }
    fclose(f);
    if (!buf) {
        diag_add(d, path, 0, 0, NULL, "out of memory while reading the configuration");
        return NULL;
    }
    if (err) {
        free(buf);
        diag_add(d, path, 0, 0, NULL, "cannot read: %s", strerror(err));
        return NULL;
    }
    if (len > CFGDOC_MAX_BYTES) {
        free(buf);
        diag_add(d, path, 0, 0, NULL, "configuration is too large (more than %u bytes)",
                 CFGDOC_MAX_BYTES);
        return NULL;
    }
    cfgdoc *doc = cfgdoc_parse_string(path, buf, len, d);
    free(buf);
    return doc;
}

json_t *cfgdoc_root(const cfgdoc *doc)
{
    return doc ? doc->root : NULL;
}

const char *cfgdoc_file(const cfgdoc *doc)
{
    return doc ? doc->file : NULL;
}

/* ---- path lookup ---- */

/* Index of the node at path, or of its nearest existing ancestor (*exact 0). */
static long loc_find(const cfgdoc *doc, const char *path, int *exact)
{
    *exact = 0;
    if (!doc || doc->nlocs == 0)
        return -1;
    if (!path)
        path = "";
    size_t plen = strlen(path);
    char *buf = malloc(plen + 1);
    if (!buf)
        return 0;
    size_t cur = 0;
    const char *p = path;
    while (*p) {
        const json_t *kids = doc->locs[cur].kids;
        if (json_is_array(kids)) {
            if (*p != '[' || !(p[1] >= '0' && p[1] <= '9'))
                break;
            char *end;
            errno = 0;
            unsigned long long i = strtoull(p + 1, &end, 10);
            if (errno || *end != ']')
                break;
            const json_t *e = json_array_get(kids, (size_t)i);
            if (!e)
                break;
            cur = (size_t)json_integer_value(e);
            p = end + 1;
        } else if (json_is_object(kids)) {
            const char *k = p;
            if (p != path) {
                if (*p != '.')
                    break;
                k++;
            }
            /* Keys may hold '.' or '[': try the longest candidate first. */
            size_t klen = strlen(k);
            const json_t *hit = NULL;
            for (size_t e = klen; e > 0; e--) {
                if (e != klen && k[e] != '.' && k[e] != '[')
                    continue;
                memcpy(buf, k, e);
                buf[e] = '\0';
                if ((hit = json_object_get(kids, buf))) {
                    p = k + e;
                    break;
                }
            }
            if (!hit)
                break;
            cur = (size_t)json_integer_value(hit);
        } else {
            break;
        }
    }
    free(buf);
    *exact = *p == '\0';
    return (long)cur;
}

static int loc_get(const cfgdoc *doc, const char *path, int key, int *line, int *col)
{
    int exact;
    long i = loc_find(doc, path, &exact);
    if (i < 0) {
        *line = *col = 0;
        return -1;
    }
    const cfgloc *l = &doc->locs[i];
    *line = key ? l->kline : l->line;
    *col = key ? l->kcol : l->col;
    return exact ? 0 : 1;
}

int cfgdoc_loc(const cfgdoc *doc, const char *path, int *line, int *col)
{
    return loc_get(doc, path, 0, line, col);
}

int cfgdoc_key_loc(const cfgdoc *doc, const char *path, int *line, int *col)
{
    return loc_get(doc, path, 1, line, col);
}

static void cfgdoc_verror(const cfgdoc *doc, diag *d, int key, const char *path, const char *fmt,
                          va_list ap)
{
    int line = 0, col = 0;
    if (doc)
        loc_get(doc, path, key, &line, &col);
    diag_vadd(d, doc ? doc->file : NULL, line, col, path, fmt, ap);
}

void cfgdoc_error(const cfgdoc *doc, diag *d, const char *path, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cfgdoc_verror(doc, d, 0, path, fmt, ap);
    va_end(ap);
}

void cfgdoc_key_error(const cfgdoc *doc, diag *d, const char *path, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cfgdoc_verror(doc, d, 1, path, fmt, ap);
    va_end(ap);
}

int cfgdoc_is_expanded(const cfgdoc *doc, const char *path)
{
    int exact;
    long i = loc_find(doc, path, &exact);
    return i >= 0 && exact && (doc->locs[i].flags & LOC_EXPANDED);
}

const char *cfgdoc_text(const cfgdoc *doc, const char *path)
{
    int exact;
    long i = loc_find(doc, path, &exact);
    if (i < 0 || !exact || !doc->locs[i].text)
        return NULL;
    return json_string_value(doc->locs[i].text);
}

void cfgdoc_free(cfgdoc *doc)
{
    if (!doc)
        return;
    for (size_t i = 0; i < doc->nlocs; i++) {
        json_decref(doc->locs[i].kids);
        json_decref(doc->locs[i].text);
    }
    free(doc->locs);
    json_decref(doc->root);
    free(doc->file);
    free(doc);
}
