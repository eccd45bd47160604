/*
 * test_memory.c — unit tests for core/memory.c (identity.json and
 * decisions.json) and the JSON reading of core/yamltree.c it relies on.
 *
 * The shipped memory/demo files pass; each kind of error gives the exact
 * "FILE:LINE:COL: path: message" an operator reads (the temporary folder
 * is written "D" in the expectations); and doc/identity.schema.json and
 * doc/decisions.schema.json agree with the C tables key by key, type by
 * type, required by required.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "diag.h"
#include "memory.h"
#include "schema.h"
#include "testutil.h"
#include "util.h"
#include "yamltree.h"

static const char *const hu_en[] = {"hu", "en"};

/* Every message of D joined by '\n', with the folder DIR written as "D". */
static char *joined(const diag *d, const char *dir)
{
    char *all = diag_join(d, "\n");
    strbuf sb = {0};
    size_t dl = strlen(dir);
    for (const char *p = all; *p;) {
        const char *hit = strstr(p, dir);
        if (!hit) {
            sb_puts(&sb, p);
            break;
        }
        sb_append(&sb, p, (size_t)(hit - p));
        sb_puts(&sb, "D");
        p = hit + dl;
    }
    free(all);
    return sb_take(&sb);
}

typedef struct {
    char *errors, *warnings;
    json_t *persona, *decisions;
    int n;
} result;

/* Writes identity.json and decisions.json (NULL: no such file) into a fresh
 * folder and loads them for a tenant serving LANGS. */
static result load(const char *identity, const char *decisions, const char *const *langs, size_t nlangs)
{
    tu_tmp_remove(); /* the folder of an earlier load in the same test */
    const char *dir = tu_tmp_make("memory");
    char path[1024];
    if (identity) {
        snprintf(path, sizeof path, "%s/identity.json", dir);
        tu_write_text(path, "%s", identity);
    }
    if (decisions) {
        snprintf(path, sizeof path, "%s/decisions.json", dir);
        tu_write_text(path, "%s", decisions);
    }
    diag *d = diag_new(), *w = diag_new();
    result r = {0};
    r.n = memory_load(dir, langs, nlangs, &r.persona, &r.decisions, d, w);
    r.errors = joined(d, dir);
    r.warnings = joined(w, dir);
    ck_assert_int_eq(r.n, (int)diag_count(d));
    diag_free(d);
    diag_free(w);
    return r;
}

static void result_free(result *r)
{
    free(r->errors);
    free(r->warnings);
    json_decref(r->persona);
    json_decref(r->decisions);
}

/* A valid persona for hu and en, with EXTRA members spliced in before "never". */
#define PERSONA(extra)                                                                                         \
    "{\n"                                                                                                      \
    "  \"name\": \"Kokó\",\n"                                                                                  \
    "  \"holding\": {\"hu\": \"Hamarosan válaszolunk.\", \"en\": \"We will reply shortly.\"},\n"               \
    "  \"handoff\": {\"hu\": \"Átadom egy kollégámnak.\", \"en\": \"A colleague takes over.\"},\n" extra        \
    "  \"never\": [\"Never ask for passwords.\"]\n"                                                            \
    "}\n"

static void expect(const char *identity, const char *decisions, const char *errors, const char *warnings)
{
    result r = load(identity, decisions, hu_en, 2);
    ck_assert_str_eq(r.errors, errors);
    ck_assert_str_eq(r.warnings, warnings);
    result_free(&r);
}

/* ---- the shipped files ---- */

START_TEST(test_demo_files_pass)
{
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/memory/demo", tu_env_or("KOKO_SRCDIR", "."));
    diag *d = diag_new(), *w = diag_new();
    json_t *p = NULL, *dc = NULL;
    ck_assert_int_eq(memory_load(dir, hu_en, 2, &p, &dc, d, w), 0);
    ck_assert_uint_eq(diag_count(w), 0);
    ck_assert_str_eq(json_string_value(json_object_get(p, "name")), "Kokó");
    ck_assert_uint_eq(json_array_size(dc), 2);
    ck_assert_str_eq(memory_text(p, "handoff", "en", hu_en, 2, "?"),
                     "I am handing this conversation to a colleague, who will be with you shortly.");
    json_decref(p);
    json_decref(dc);
    diag_free(d);
    diag_free(w);
}
END_TEST

START_TEST(test_missing_files_mean_none)
{
    result r = load(NULL, NULL, hu_en, 2);
    ck_assert_str_eq(r.errors, "");
    ck_assert(json_is_object(r.persona) && json_object_size(r.persona) == 0);
    ck_assert(json_is_array(r.decisions) && json_array_size(r.decisions) == 0);
    result_free(&r);
}
END_TEST

START_TEST(test_valid_persona_and_decisions)
{
    result r = load(PERSONA("  \"company\": \"Kokó Szerviz Kft.\",\n"
                            "  \"tone\": {\"hu\": \"Magázó.\", \"en\": \"Polite.\"},\n"
                            "  \"greeting\": {\"hu\": \"Üdvözlöm!\", \"en\": \"Hello!\"},\n"
                            "  \"source_label\": {\"hu\": \"Forrás\", \"en\": \"Source\"},\n"),
                    "[{\"id\": \"a\", \"text\": \"No refunds after 14 days.\", \"date\": \"2024-02-29\", "
                    "\"author\": \"Éva\"},\n {\"text\": \"We do not ship abroad.\", \"date\": \"2026-03-02\", "
                    "\"author\": \"Péter\"}]\n",
                    hu_en, 2);
    ck_assert_str_eq(r.errors, "");
    ck_assert_str_eq(r.warnings, "");
    ck_assert_uint_eq(json_array_size(r.decisions), 2);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(r.persona, "greeting"), "hu")), "Üdvözlöm!");
    result_free(&r);
}
END_TEST

/* ---- identity.json errors ---- */

START_TEST(test_unknown_key_did_you_mean)
{
    expect(PERSONA("  \"greting\": {\"hu\": \"Szia\"},\n"), NULL,
           "D/identity.json:5:3: greting: unknown key \"greting\"; did you mean \"greeting\"? (known keys: name, "
           "company, tone, greeting, holding, handoff, source_label, never)",
           "");
}
END_TEST

START_TEST(test_wrong_type_at_value)
{
    expect("{\n  \"name\": \"Kokó\",\n  \"holding\": {\"hu\": \"a\", \"en\": \"b\"},\n"
           "  \"handoff\": {\"hu\": \"a\", \"en\": \"b\"},\n  \"greeting\": {\n    \"en\": \"Hello\",\n"
           "    \"hu\": 42\n  },\n  \"never\": \"be rude\"\n}\n",
           NULL,
           "D/identity.json:7:11: greeting.hu: expected a string, got a number (write \"42\" in quotes to make it "
           "text)\n"
           "D/identity.json:9:12: never: expected a list of strings, got a string",
           "");
}
END_TEST

START_TEST(test_missing_language_text)
{
    static const char *const three[] = {"hu", "en", "de"};
    result r = load(PERSONA(""), NULL, three, 3);
    ck_assert_str_eq(r.errors,
                     "D/identity.json:3:3: holding: no text for \"de\", one of the tenant's languages: add \"de\": "
                     "\"...\" (the assistant must be able to say this in every language it answers in)\n"
                     "D/identity.json:4:3: handoff: no text for \"de\", one of the tenant's languages: add \"de\": "
                     "\"...\" (the assistant must be able to say this in every language it answers in)");
    /* broken: nothing of it is used */
    ck_assert_uint_eq(json_object_size(r.persona), 0);
    result_free(&r);
}
END_TEST

START_TEST(test_missing_required_keys)
{
    expect("{\"tone\": {\"hu\": \"x\"}}", NULL,
           "D/identity.json:1:1: missing required key \"name\" (the assistant's name, as it introduces itself)\n"
           "D/identity.json:1:1: missing required key \"holding\" (language code → the reply when no answer can be "
           "given now)\n"
           "D/identity.json:1:1: missing required key \"handoff\" (language code → the reply when a human takes "
           "over)",
           "");
}
END_TEST

START_TEST(test_language_codes)
{
    expect(PERSONA("  \"tone\": {\"HU\": \"x\", \"de\": \"Höflich.\"},\n  \"greeting\": {\"fr\": \"Bonjour\"},\n"),
           NULL, "D/identity.json:5:12: tone.HU: \"HU\" is not a language code (two lower-case letters: hu, en, de)",
           "D/identity.json:5:23: tone.de: \"de\" is not one of the tenant's languages (hu, en): this text is never "
           "used\n"
           "D/identity.json:6:16: greeting.fr: \"fr\" is not one of the tenant's languages (hu, en): this text is "
           "never used");
}
END_TEST

START_TEST(test_blank_and_empty)
{
    expect(PERSONA("  \"name\": \"x\",\n"), NULL, "D/identity.json:5:8: invalid JSON: duplicate object key near '\"name\"'",
           "");
    expect("{\"name\": \"  \", \"holding\": {}, \"handoff\": {\"hu\": \"\", \"en\": \"x\"}, \"never\": [\"\\t\"]}",
           NULL,
           "D/identity.json:1:10: name: must not be blank\n"
           "D/identity.json:1:16: holding: must not be empty\n"
           "D/identity.json:1:49: handoff.hu: must not be empty\n"
           "D/identity.json:1:75: never[0]: must not be blank",
           "");
}
END_TEST

START_TEST(test_not_an_object)
{
    expect("[1, 2]\n", NULL, "D/identity.json:1:1: expected a mapping, got a list", "");
}
END_TEST

START_TEST(test_invalid_json)
{
    expect("{\n  \"name\": \"Kokó\"\n  \"tone\": {}\n}\n", NULL,
           "D/identity.json:3:8: invalid JSON: '}' expected near '\"tone\"'", "");
}
END_TEST

/* JSON that yamltree must read like jansson: escapes (also surrogate pairs),
 * numbers, true/false/null, empty {} and [], tabs, one line or many. */
START_TEST(test_json_edge_cases_keep_positions)
{
    expect("{\t\"name\": \"K\\u00f3k\\u00f3 \\ud83e\\udd9c \\\"\\/\\\\ \\n\",\n"
           "\t\"holding\": {\"hu\": \"a\", \"en\": \"b\"}, \"handoff\": {\"hu\": \"a\", \"en\": \"b\"},\n"
           "\t\"never\": [], \"tone\": {\"en\": \"x\", \"hu\": \"y\"},\n"
           "\t\"company\": [true, false, null, 1.5e3, -0, {}, []]}",
           NULL, "D/identity.json:4:2: company: expected a string, got a list", "");
    diag *d = diag_new();
    const char *text = "[{\"a\": \"\\ud83d\\ude00\"},\n {\"b\": [1, {\"c\": null}]}]";
    cfgdoc *doc = cfgdoc_parse_json("x.json", text, strlen(text), d);
    ck_assert_ptr_nonnull(doc);
    ck_assert(json_is_array(cfgdoc_root(doc)));
    int line, col;
    ck_assert_int_eq(cfgdoc_loc(doc, "[1].b[1].c", &line, &col), 0);
    ck_assert_int_eq(line, 2);
    ck_assert_int_eq(col, 18);
    ck_assert_int_eq(cfgdoc_key_loc(doc, "[0].a", &line, &col), 0);
    ck_assert_int_eq(line, 1);
    ck_assert_int_eq(col, 3);
    cfgdoc_free(doc);
    /* ${} is text in JSON, not an environment reference */
    unsetenv("KOKO_NO_SUCH_VAR");
    text = "{\"a\": \"${KOKO_NO_SUCH_VAR}\"}";
    doc = cfgdoc_parse_json("x.json", text, strlen(text), d);
    ck_assert_ptr_nonnull(doc);
    ck_assert_str_eq(json_string_value(json_object_get(cfgdoc_root(doc), "a")), "${KOKO_NO_SUCH_VAR}");
    cfgdoc_free(doc);
    /* the YAML entry point still refuses a list at the top level */
    ck_assert_ptr_null(cfgdoc_parse_string("x.yaml", "[1]", 3, d));
    ck_assert_uint_eq(diag_count(d), 1);
    diag_free(d);
}
END_TEST

/* A key libyaml cannot take (longer than 1024 characters) still gets every
 * check, with the file but without a position. */
START_TEST(test_without_positions)
{
    char key[1200];
    memset(key, 'k', sizeof key - 1);
    key[sizeof key - 1] = '\0';
    char *text = util_asprintf(PERSONA("  \"%s\": 1,\n"), key);
    result r = load(text, NULL, hu_en, 2);
    char *want = util_asprintf("D/identity.json: %s: unknown key \"%s\" (known keys: name, company, tone, greeting, "
                               "holding, handoff, source_label, never)",
                               key, key);
    ck_assert_str_eq(r.errors, want);
    free(want);
    free(text);
    result_free(&r);
}
END_TEST

/* ---- decisions.json errors ---- */

START_TEST(test_decision_errors)
{
    expect(NULL,
           "[\n"
           "  {\"id\": \"a\", \"text\": \"x\", \"date\": \"2026-3-2\", \"author\": \"Éva\"},\n"
           "  {\"text\": \"y\", \"date\": \"2025-02-29\", \"author\": \" \"},\n"
           "  {\"text\": \"z\", \"date\": \"2026-03-02\", \"autor\": \"Péter\"},\n"
           "  \"a plain string\"\n"
           "]\n",
           "D/decisions.json:2:36: [0].date: \"2026-3-2\" is not a date written as YYYY-MM-DD (e.g. \"2026-03-02\")\n"
           "D/decisions.json:3:25: [1].date: \"2025-02-29\" is not a day of the calendar (YYYY-MM-DD: month 01-12, a "
           "day the month has)\n"
           "D/decisions.json:3:49: [1].author: must not be blank\n"
           "D/decisions.json:4:39: [2].autor: unknown key \"autor\"; did you mean \"author\"? (known keys: id, text, "
           "date, author)\n"
           "D/decisions.json:4:3: [2]: missing required key \"author\" (who decided it)\n"
           "D/decisions.json:5:3: [3]: expected a mapping, got a string",
           "");
}
END_TEST

START_TEST(test_decision_ids_unique)
{
    expect(NULL,
           "[{\"id\": \"refund\", \"text\": \"x\", \"date\": \"2026-01-01\", \"author\": \"A\"},\n"
           " {\"id\": \"refund\", \"text\": \"y\", \"date\": \"2026-01-02\", \"author\": \"B\"}]",
           "D/decisions.json:2:9: [1].id: \"refund\" is already the id of decision [0]; ids must be unique", "");
    expect(NULL, "{\"text\": \"x\"}", "D/decisions.json:1:1: expected a list of mappings, got a mapping", "");
}
END_TEST

START_TEST(test_both_files_reported_at_once)
{
    result r = load("{\"nme\": \"x\"}", "[{}]", NULL, 0);
    ck_assert_int_eq(r.n, 7); /* nme, name, holding, handoff; text, date, author */
    ck_assert_ptr_nonnull(strstr(r.errors, "D/identity.json:1:2: nme: unknown key \"nme\"; did you mean \"name\"?"));
    ck_assert_ptr_nonnull(strstr(r.errors, "D/decisions.json:1:2: [0]: missing required key \"text\""));
    result_free(&r);
}
END_TEST

START_TEST(test_route_persona_file)
{
    const char *dir = tu_tmp_make("memory");
    char path[1024];
    snprintf(path, sizeof path, "%s/vip.json", dir);
    tu_write_text(path, "%s", PERSONA(""));
    diag *d = diag_new();
    json_t *p = memory_load_persona(path, hu_en, 2, d, NULL);
    ck_assert_ptr_nonnull(p);
    json_decref(p);
    snprintf(path, sizeof path, "%s/none.json", dir);
    ck_assert_ptr_null(memory_load_persona(path, hu_en, 2, d, NULL));
    ck_assert_uint_eq(diag_count(d), 1);
    ck_assert_ptr_nonnull(strstr(diag_get(d, 0), "none.json"));
    diag_free(d);
}
END_TEST

/* ---- the shipped JSON Schemas and the C tables agree ---- */

static json_t *load_schema(const char *name)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/doc/%s", tu_env_or("KOKO_SRCDIR", "."), name);
    json_error_t je;
    json_t *s = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    ck_assert_msg(s != NULL, "%s:%d: %s", path, je.line, je.text);
    return s;
}

/* NODE with its "$ref" ("#/$defs/NAME") followed. */
static const json_t *deref(const json_t *root, const json_t *node)
{
    const char *ref = json_string_value(json_object_get(node, "$ref"));
    if (!ref)
        return node;
    ck_assert_msg(strncmp(ref, "#/$defs/", 8) == 0, "unsupported $ref %s", ref);
    const json_t *t = json_object_get(json_object_get(root, "$defs"), ref + 8);
    ck_assert_msg(t != NULL, "dangling $ref %s", ref);
    return t;
}

static int schema_nonempty(const json_t *n)
{
    const json_t *v = json_object_get(n, "minLength");
    if (!v)
        v = json_object_get(n, "minItems");
    if (!v)
        v = json_object_get(n, "minProperties");
    return json_integer_value(v) >= 1;
}

/* Appends to OUT every way NODE (at PATH) and SPEC disagree. */
static void agree(strbuf *out, const json_t *root, const char *path, const json_t *node, const sc_field *spec)
{
    const json_t *n = deref(root, node);
    const char *type = json_string_value(json_object_get(n, "type"));
    const json_t *props = json_object_get(n, "properties");
    const json_t *addl = json_object_get(n, "additionalProperties");
    sc_type want = !type ? SC_ANY
                   : !strcmp(type, "string") ? SC_STRING
                   : !strcmp(type, "array")  ? SC_LIST
                   : !strcmp(type, "object") ? (props ? SC_OBJECT : SC_MAP)
                                             : SC_ANY;
    if (want != spec->type) {
        sb_printf(out, "%s: type %s in the schema, sc_type %d in C\n", path, type ? type : "?", (int)spec->type);
        return;
    }
    if (schema_nonempty(n) != !!(spec->flags & SC_NONEMPTY))
        sb_printf(out, "%s: non-empty differs\n", path);
    int has_pattern = json_object_get(n, "pattern") || json_object_get(json_object_get(n, "propertyNames"), "pattern");
    if (has_pattern && !spec->check)
        sb_printf(out, "%s: the schema has a pattern, the C table no check\n", path);
    if (spec->type == SC_LIST) {
        agree(out, root, path, json_object_get(n, "items"), spec->item);
    } else if (spec->type == SC_MAP) {
        if (!json_is_object(addl))
            sb_printf(out, "%s: a map needs an additionalProperties schema\n", path);
        else
            agree(out, root, path, addl, spec->item);
    } else if (spec->type == SC_OBJECT) {
        if (!json_is_false(addl))
            sb_printf(out, "%s: additionalProperties must be false\n", path);
        const json_t *req = json_object_get(n, "required");
        for (const sc_field *f = spec->fields; f->key; f++) {
            const json_t *p = json_object_get(props, f->key);
            char *cp = util_asprintf("%s.%s", path, f->key);
            int required = 0;
            size_t i;
            const json_t *x;
            json_array_foreach ((json_t *)req, i, x)
                required |= strcmp(json_string_value(x), f->key) == 0;
            if (!p)
                sb_printf(out, "%s: in the C table, not in the schema\n", cp);
            else if (required != !!(f->flags & SC_REQUIRED))
                sb_printf(out, "%s: required in one, optional in the other\n", cp);
            if (p && !json_is_string(json_object_get(p, "description")))
                sb_printf(out, "%s: no description in the schema\n", cp);
            if (p)
                agree(out, root, cp, p, f);
            free(cp);
        }
        const char *k;
        const json_t *v;
        json_object_foreach ((json_t *)props, k, v) {
            int known = 0;
            for (const sc_field *f = spec->fields; f->key; f++)
                known |= strcmp(f->key, k) == 0;
            if (!known)
                sb_printf(out, "%s.%s: in the schema, not in the C table\n", path, k);
        }
    }
}

static char *disagreements(const json_t *schema, const sc_field *spec)
{
    strbuf sb = {0};
    agree(&sb, schema, "$", schema, spec);
    return sb_take(&sb);
}

START_TEST(test_schemas_agree_with_c)
{
    json_t *id = load_schema("identity.schema.json"), *dc = load_schema("decisions.schema.json");
    ck_assert_str_eq(json_string_value(json_object_get(id, "$schema")), "https://json-schema.org/draft/2020-12/schema");
    char *s = disagreements(id, memory_identity_spec());
    ck_assert_str_eq(s, "");
    free(s);
    s = disagreements(dc, memory_decisions_spec());
    ck_assert_str_eq(s, "");
    free(s);
    /* and the comparison can fail: a property the C table lacks, one it has */
    json_object_set_new(json_object_get(id, "properties"), "signature", json_pack("{s:s}", "type", "string"));
    json_object_del(json_object_get(id, "properties"), "greeting");
    json_array_append_new(json_object_get(json_object_get(dc, "items"), "required"), json_string("id"));
    s = disagreements(id, memory_identity_spec());
    ck_assert_str_eq(s, "$.greeting: in the C table, not in the schema\n$.signature: in the schema, not in the C "
                        "table\n");
    free(s);
    s = disagreements(dc, memory_decisions_spec());
    ck_assert_str_eq(s, "$.id: required in one, optional in the other\n");
    free(s);
    json_decref(id);
    json_decref(dc);
}
END_TEST

static void teardown(void)
{
    tu_tmp_remove();
}

int main(void)
{
    Suite *s = suite_create("memory");
    TCase *tc = tcase_create("memory");
    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_add_test(tc, test_demo_files_pass);
    tcase_add_test(tc, test_missing_files_mean_none);
    tcase_add_test(tc, test_valid_persona_and_decisions);
    tcase_add_test(tc, test_unknown_key_did_you_mean);
    tcase_add_test(tc, test_wrong_type_at_value);
    tcase_add_test(tc, test_missing_language_text);
    tcase_add_test(tc, test_missing_required_keys);
    tcase_add_test(tc, test_language_codes);
    tcase_add_test(tc, test_blank_and_empty);
    tcase_add_test(tc, test_not_an_object);
    tcase_add_test(tc, test_invalid_json);
    tcase_add_test(tc, test_json_edge_cases_keep_positions);
    tcase_add_test(tc, test_without_positions);
    tcase_add_test(tc, test_decision_errors);
    tcase_add_test(tc, test_decision_ids_unique);
    tcase_add_test(tc, test_both_files_reported_at_once);
    tcase_add_test(tc, test_route_persona_file);
    tcase_add_test(tc, test_schemas_agree_with_c);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
