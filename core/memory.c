/*
 * memory.c — loading and checking identity.json and decisions.json.
 *
 * The tables below are the C side of doc/identity.schema.json and
 * doc/decisions.schema.json: same keys, types, required keys and non-empty
 * rules (tests/test_memory.c compares them). What JSON Schema says with a
 * pattern or format (language codes, calendar dates, blank text) and what it
 * cannot say (a text for each of the tenant's languages, unique ids) are the
 * custom checks.
 */
#include "kokoconf.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "memory.h"
#include "util.h"
#include "yamltree.h"

/* What the custom checks need beyond the tree (sc_ctx.user). */
typedef struct {
    const char *file;
    const cfgdoc *doc; /* NULL when the positions could not be read */
    const char *const *langs;
    size_t nlangs;
    diag *warnings;
} mem_check;

/* ---- custom checks ---- */

static int is_lang_code(const char *s)
{
    return strlen(s) == 2 && s[0] >= 'a' && s[0] <= 'z' && s[1] >= 'a' && s[1] <= 'z';
}

static int has_lang(const mem_check *mc, const char *code)
{
    for (size_t i = 0; i < mc->nlangs; i++)
        if (strcmp(mc->langs[i], code) == 0)
            return 1;
    return 0;
}

static char *lang_list(const mem_check *mc)
{
    strbuf sb = {0};
    for (size_t i = 0; i < mc->nlangs; i++)
        sb_printf(&sb, "%s%s", i ? ", " : "", mc->langs[i]);
    return sb_take(&sb);
}

/* Text an operator wrote must say something: "" and "   " are refused. */
static int check_text(sc_ctx *ctx, const char *path, json_t *v)
{
    const char *s = json_string_value(v);
    if (s[strspn(s, " \t\r\n")] == '\0') {
        sc_error(ctx, path, "must not be blank");
        return -1;
    }
    return 0;
}

static int is_leap(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* YYYY-MM-DD, a real calendar day. */
static int check_date(sc_ctx *ctx, const char *path, json_t *v)
{
    static const int mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    const char *s = json_string_value(v);
    int ok = strlen(s) == 10 && s[4] == '-' && s[7] == '-';
    for (int i = 0; ok && i < 10; i++)
        if (i != 4 && i != 7 && (s[i] < '0' || s[i] > '9'))
            ok = 0;
    if (!ok) {
        sc_error(ctx, path, "\"%s\" is not a date written as YYYY-MM-DD (e.g. \"2026-03-02\")", s);
        return -1;
    }
    int y = (s[0] - '0') * 1000 + (s[1] - '0') * 100 + (s[2] - '0') * 10 + (s[3] - '0');
    int m = (s[5] - '0') * 10 + (s[6] - '0');
    int d = (s[8] - '0') * 10 + (s[9] - '0');
    if (m < 1 || m > 12 || d < 1 || d > mdays[m - 1] + (m == 2 && is_leap(y))) {
        sc_error(ctx, path, "\"%s\" is not a day of the calendar (YYYY-MM-DD: month 01-12, a day the month has)", s);
        return -1;
    }
    return 0;
}

/* Keys are language codes; a language the tenant does not serve is a warning. */
static int check_lang_keys(sc_ctx *ctx, const char *path, json_t *v)
{
    mem_check *mc = ctx->user;
    int rc = 0;
    const char *code;
    json_t *text;
    json_object_foreach (v, code, text) {
        char *cp = util_asprintf("%s.%s", path, code);
        if (!is_lang_code(code)) {
            sc_key_error(ctx, cp, "\"%s\" is not a language code (two lower-case letters: hu, en, de)", code);
            rc = -1;
        } else if (mc->nlangs && mc->warnings && !has_lang(mc, code)) {
            int line = 0, col = 0;
            cfgdoc_key_loc(mc->doc, cp, &line, &col);
            char *list = lang_list(mc);
            diag_add(mc->warnings, mc->file, line, col, cp,
                     "\"%s\" is not one of the tenant's languages (%s): this text is never used", code, list);
            free(list);
        }
        free(cp);
    }
    return rc;
}

/* Like check_lang_keys, and every language the tenant serves has a text. */
static int check_lang_all(sc_ctx *ctx, const char *path, json_t *v)
{
    mem_check *mc = ctx->user;
    int rc = check_lang_keys(ctx, path, v);
    for (size_t i = 0; i < mc->nlangs; i++) {
        if (json_object_get(v, mc->langs[i]))
            continue;
        sc_error(ctx, path,
                 "no text for \"%s\", one of the tenant's languages: add \"%s\": \"...\" (the assistant must be "
                 "able to say this in every language it answers in)",
                 mc->langs[i], mc->langs[i]);
        rc = -1;
    }
    return rc;
}

/* A decision's id, when given, names one decision only. */
static int check_unique_ids(sc_ctx *ctx, const char *path, json_t *v)
{
    int rc = 0;
    for (size_t i = 0; i < json_array_size(v); i++) {
        const char *id = json_string_value(json_object_get(json_array_get(v, i), "id"));
        for (size_t j = 0; id && j < i; j++) {
            const char *other = json_string_value(json_object_get(json_array_get(v, j), "id"));
            if (other && strcmp(id, other) == 0) {
                char *cp = util_asprintf("%s[%zu].id", path, i);
                sc_error(ctx, cp, "\"%s\" is already the id of decision %s[%zu]; ids must be unique", id, path, j);
                free(cp);
                rc = -1;
                break;
            }
        }
    }
    return rc;
}

/* ---- the tables (doc/identity.schema.json, doc/decisions.schema.json) ---- */

static const sc_field f_text = {.type = SC_STRING, .flags = SC_NONEMPTY, .check = check_text};

static const sc_field f_identity_fields[] = {
    {.key = "name", .type = SC_STRING, .flags = SC_REQUIRED | SC_NONEMPTY, .check = check_text,
     .doc = "the assistant's name, as it introduces itself"},
    {.key = "company", .type = SC_STRING, .flags = SC_NONEMPTY, .check = check_text,
     .doc = "the business the assistant speaks for"},
    {.key = "tone", .type = SC_MAP, .flags = SC_NONEMPTY, .item = &f_text, .check = check_lang_keys,
     .doc = "language code → how the assistant writes"},
    {.key = "greeting", .type = SC_MAP, .flags = SC_NONEMPTY, .item = &f_text, .check = check_lang_keys,
     .doc = "language code → the first message of a conversation"},
    {.key = "holding", .type = SC_MAP, .flags = SC_REQUIRED | SC_NONEMPTY, .item = &f_text,
     .check = check_lang_all, .doc = "language code → the reply when no answer can be given now"},
    {.key = "handoff", .type = SC_MAP, .flags = SC_REQUIRED | SC_NONEMPTY, .item = &f_text,
     .check = check_lang_all, .doc = "language code → the reply when a human takes over"},
    {.key = "source_label", .type = SC_MAP, .flags = SC_NONEMPTY, .item = &f_text, .check = check_lang_keys,
     .doc = "language code → the word before a cited source"},
    {.key = "never", .type = SC_LIST, .item = &f_text, .doc = "what the assistant must never do, one rule a line"},
    {.key = NULL}};

static const sc_field f_identity = {.type = SC_OBJECT, .fields = f_identity_fields};

static const sc_field f_decision_fields[] = {
    {.key = "id", .type = SC_STRING, .flags = SC_NONEMPTY, .check = check_text,
     .doc = "a short name for the decision, unique in the file"},
    {.key = "text", .type = SC_STRING, .flags = SC_REQUIRED | SC_NONEMPTY, .check = check_text,
     .doc = "the decision, as the assistant should follow it"},
    {.key = "date", .type = SC_STRING, .flags = SC_REQUIRED | SC_NONEMPTY, .check = check_date,
     .doc = "when it was decided, YYYY-MM-DD"},
    {.key = "author", .type = SC_STRING, .flags = SC_REQUIRED | SC_NONEMPTY, .check = check_text,
     .doc = "who decided it"},
    {.key = NULL}};

static const sc_field f_decision = {.type = SC_OBJECT, .fields = f_decision_fields};
static const sc_field f_decisions = {.type = SC_LIST, .item = &f_decision, .check = check_unique_ids};

const sc_field *memory_identity_spec(void)
{
    return &f_identity;
}

const sc_field *memory_decisions_spec(void)
{
    return &f_decisions;
}

/* ---- loading ---- */

/*
 * Reads PATH with jansson, locates its nodes with yamltree and checks it
 * against SPEC. The value (a new reference) or NULL after reporting into D.
 */
static json_t *load_checked(const char *path, const sc_field *spec, mem_check *mc, diag *d)
{
    char err[512];
    size_t len = 0;
    char *text = util_read_file(path, MEMORY_MAX_BYTES, &len, err, sizeof err);
    if (!text) {
        diag_add(d, NULL, 0, 0, NULL, "%s", err);
        return NULL;
    }
    json_error_t je;
    json_t *v = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (!v) {
        diag_add(d, path, je.line > 0 ? je.line : 0, je.column > 0 ? je.column : 0, NULL, "invalid JSON: %s",
                 je.text);
        free(text);
        return NULL;
    }
    diag *scratch = diag_new();
    cfgdoc *doc = cfgdoc_parse_json(path, text, len, scratch);
    free(text);
    mc->file = path;
    mc->doc = doc;
    int errors;
    if (doc || !scratch) {
        errors = sc_validate(doc, d, "", v, spec, mc);
    } else {
        /* yamltree could not read what jansson did: the same checks, without positions */
        diag_clear(scratch);
        errors = sc_validate(NULL, scratch, "", v, spec, mc);
        for (size_t i = 0; i < diag_count(scratch); i++)
            diag_add(d, path, 0, 0, NULL, "%s", diag_get(scratch, i));
    }
    mc->doc = NULL;
    cfgdoc_free(doc);
    diag_free(scratch);
    if (errors) {
        json_decref(v);
        return NULL;
    }
    return v;
}

json_t *memory_load_persona(const char *path, const char *const *langs, size_t nlangs, diag *d, diag *warnings)
{
    mem_check mc = {.langs = langs, .nlangs = nlangs, .warnings = warnings};
    return load_checked(path, &f_identity, &mc, d);
}

int memory_load(const char *dir, const char *const *langs, size_t nlangs, json_t **persona, json_t **decisions,
                diag *d, diag *warnings)
{
    size_t before = diag_count(d);
    char *ip = util_path_join(dir, "identity.json");
    char *dp = util_path_join(dir, "decisions.json");
    mem_check mc = {.langs = langs, .nlangs = nlangs, .warnings = warnings};
    json_t *p = access(ip, F_OK) == 0 ? load_checked(ip, &f_identity, &mc, d) : NULL;
    json_t *dc = access(dp, F_OK) == 0 ? load_checked(dp, &f_decisions, &mc, d) : NULL;
    *persona = p ? p : json_object();
    *decisions = dc ? dc : json_array();
    free(ip);
    free(dp);
    return (int)(diag_count(d) - before);
}

const char *memory_text(const json_t *persona, const char *key, const char *lang, const char *const *langs,
                        size_t nlangs, const char *dflt)
{
    const json_t *m = json_object_get(persona, key);
    if (json_is_string(m))
        return json_string_value(m);
    if (!json_is_object(m))
        return dflt;
    const char *s = lang ? json_string_value(json_object_get(m, lang)) : NULL;
    for (size_t i = 0; !s && i < nlangs; i++)
        s = json_string_value(json_object_get(m, langs[i]));
    if (!s) {
        const char *k;
        json_t *v;
        json_object_foreach((json_t *)m, k, v) if (json_is_string(v)) return json_string_value(v);
    }
    return s ? s : dflt;
}
