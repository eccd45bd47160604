/*
 * test_custmem.c — customer memory's pure parts: contact keys, fact checks,
 * de-duplication on merge, relevance selection within a token budget, and
 * parsing a model's extraction answer.
 */
#include "kokoconf.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "custmem.h"

static json_t *fact(const char *text, const char *kind)
{
    char err[256];
    json_t *in = json_pack("{s:s,s:s}", "text", text, "kind", kind);
    json_t *f = custmem_fact_check(in, err, sizeof err);
    ck_assert_msg(f != NULL, "%s", err);
    json_decref(in);
    return f;
}

START_TEST(test_contact_keys)
{
    char err[256];
    ck_assert(custmem_contact_ok("chatwoot:17", err, sizeof err));
    ck_assert(custmem_contact_ok("email:anna@example.hu", err, sizeof err));
    ck_assert(custmem_contact_ok("discord:81234", err, sizeof err));
    ck_assert(!custmem_contact_ok("17", err, sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "CHANNEL:ID"));
    ck_assert(!custmem_contact_ok(":17", err, sizeof err));
    ck_assert(!custmem_contact_ok("chatwoot:", err, sizeof err));
    ck_assert(!custmem_contact_ok("Chat Woot:1", err, sizeof err));
    ck_assert(!custmem_contact_ok("chatwoot:1\n2", err, sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "control character"));
    char big[300];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    big[3] = ':';
    ck_assert(!custmem_contact_ok(big, err, sizeof err));
}
END_TEST

START_TEST(test_fact_check)
{
    char err[256];
    json_t *in = json_pack("{s:s}", "text", "  Csak délután ér rá.  ");
    json_t *f = custmem_fact_check(in, err, sizeof err);
    ck_assert_ptr_nonnull(f);
    ck_assert_str_eq(json_string_value(json_object_get(f, "text")), "Csak délután ér rá.");
    ck_assert_str_eq(json_string_value(json_object_get(f, "kind")), "fact");
    json_decref(f);
    json_decref(in);

    in = json_pack("{s:s,s:s,s:s}", "text", "x", "kind", "preference", "expires", "2027-01-31");
    f = custmem_fact_check(in, err, sizeof err);
    ck_assert_ptr_nonnull(f);
    ck_assert_int_eq(json_integer_value(json_object_get(f, "expires")), 1801439999); /* 2027-01-31T23:59:59Z */
    json_decref(f);
    json_decref(in);

    static const char *const bad[] = {
        "{\"text\": \"\"}",           "{\"kind\": \"fact\"}",
        "{\"text\": \"x\", \"kind\": \"gossip\"}", "{\"text\": \"x\", \"expires\": \"2027-02-31\"}",
        "{\"text\": \"x\", \"colour\": \"red\"}", "{\"text\": 5}",
        "[1]",
    };
    static const char *const why[] = {"empty", "needs \"text\"", "one of preference", "expires", "unknown key",
                                      "needs \"text\"", "must be an object"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        in = json_loads(bad[i], JSON_DECODE_ANY, NULL);
        ck_assert_ptr_nonnull(in);
        f = custmem_fact_check(in, err, sizeof err);
        ck_assert_msg(f == NULL, "%s accepted", bad[i]);
        ck_assert_msg(strstr(err, why[i]) != NULL, "%s: \"%s\" lacks \"%s\"", bad[i], err, why[i]);
        json_decref(in);
    }
    char longtext[CUSTMEM_TEXT_MAX + 10];
    memset(longtext, 'a', sizeof longtext - 1);
    longtext[sizeof longtext - 1] = '\0';
    in = json_pack("{s:s}", "text", longtext);
    ck_assert_ptr_null(custmem_fact_check(in, err, sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "more than"));
    json_decref(in);
}
END_TEST

START_TEST(test_fact_id_folds)
{
    char a[17], b[17], c[17];
    custmem_fact_id("Csak délután ér rá!", a);
    custmem_fact_id("csak   DELUTAN er ra", b);
    custmem_fact_id("Csak délelőtt ér rá", c);
    ck_assert_str_eq(a, b);
    ck_assert_str_ne(a, c);
    ck_assert_uint_eq(strlen(a), 16);
}
END_TEST

START_TEST(test_merge_dedup)
{
    json_t *existing = json_object();
    json_t *in = json_array();
    json_array_append_new(in, fact("Csak délután ér rá.", "preference"));
    json_array_append_new(in, fact("A kazánja Vaillant ecoTEC.", "fact"));
    json_t *ch = custmem_merge(existing, in, "chatwoot:42", 1000);
    ck_assert_uint_eq(json_array_size(json_object_get(ch, "set")), 2);
    ck_assert_uint_eq(json_object_size(existing), 2);
    json_decref(ch);
    json_decref(in);

    /* the same words again: refreshed, not added; created kept */
    in = json_array();
    json_array_append_new(in, fact("csak delutan er ra", "preference"));
    ch = custmem_merge(existing, in, "chatwoot:43", 2000);
    ck_assert_uint_eq(json_object_size(existing), 2);
    json_t *f = json_array_get(json_object_get(ch, "set"), 0);
    ck_assert_int_eq(json_integer_value(json_object_get(f, "created")), 1000);
    ck_assert_int_eq(json_integer_value(json_object_get(f, "updated")), 2000);
    ck_assert_str_eq(json_string_value(json_object_get(f, "source")), "chatwoot:43");
    json_decref(ch);
    json_decref(in);

    /* nearly the same (3 of 4 words): updates that fact, the old id goes */
    in = json_array();
    json_array_append_new(in, fact("A kazánja Vaillant ecoTEC plus.", "fact"));
    ch = custmem_merge(existing, in, NULL, 3000);
    ck_assert_uint_eq(json_object_size(existing), 2);
    ck_assert_uint_eq(json_array_size(json_object_get(ch, "removed")), 1);
    json_decref(ch);
    json_decref(in);

    /* the same words with another kind: one fact, re-classified */
    in = json_array();
    json_array_append_new(in, fact("Csak délután ér rá", "issue"));
    ch = custmem_merge(existing, in, NULL, 3000);
    ck_assert_uint_eq(json_object_size(existing), 2);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(json_object_get(ch, "set"), 0), "kind")),
                     "issue");
    json_decref(ch);
    json_decref(in);
    /* different words, one shared: a separate fact */
    in = json_array();
    json_array_append_new(in, fact("Hétvégén is ráér", "preference"));
    ch = custmem_merge(existing, in, NULL, 3000);
    ck_assert_uint_eq(json_object_size(existing), 3);
    json_decref(ch);
    json_decref(in);

    /* replaces: the named fact is corrected */
    char id[17];
    custmem_fact_id("Csak délután ér rá.", id);
    in = json_array();
    json_t *corr = fact("Csak délelőtt ér rá.", "preference");
    json_object_set_new(corr, "replaces", json_string(id));
    json_array_append_new(in, corr);
    ch = custmem_merge(existing, in, NULL, 4000);
    ck_assert_ptr_null(json_object_get(existing, id));
    ck_assert_uint_eq(json_object_size(existing), 3);
    ck_assert_str_eq(json_string_value(json_array_get(json_object_get(ch, "removed"), 0)), id);
    json_decref(ch);
    json_decref(in);
    json_decref(existing);
}
END_TEST

START_TEST(test_merge_bounded)
{
    json_t *existing = json_object();
    for (int i = 0; i < CUSTMEM_FACTS_MAX + 5; i++) {
        char t[64];
        snprintf(t, sizeof t, "fact number %d about zebra%d", i, i);
        json_t *in = json_array();
        json_array_append_new(in, fact(t, "fact"));
        json_decref(custmem_merge(existing, in, NULL, 1000 + i));
        json_decref(in);
    }
    ck_assert_uint_eq(json_object_size(existing), CUSTMEM_FACTS_MAX);
    char id[17];
    custmem_fact_id("fact number 0 about zebra0", id);
    ck_assert_ptr_null(json_object_get(existing, id)); /* the oldest went */
    custmem_fact_id("fact number 204 about zebra204", id);
    ck_assert_ptr_nonnull(json_object_get(existing, id));
    json_decref(existing);
}
END_TEST

static json_t *stored(const char *text, const char *kind, long updated, long expires)
{
    char id[17];
    custmem_fact_id(text, id);
    json_t *f = json_pack("{s:s,s:s,s:s,s:i,s:i}", "id", id, "text", text, "kind", kind, "created", 1, "updated",
                          (int)updated);
    if (expires)
        json_object_set_new(f, "expires", json_integer(expires));
    return f;
}

START_TEST(test_select_relevance_budget_expiry)
{
    json_t *facts = json_object();
    json_t *a = stored("Csak délután ér rá.", "preference", 100, 0);
    json_t *b = stored("A kazánja Vaillant ecoTEC, 2015-ös.", "fact", 300, 0);
    json_t *c = stored("Tavaly panaszt tett a számlázás miatt.", "issue", 200, 0);
    json_t *d = stored("Ideiglenesen Debrecenben lakik.", "fact", 400, 500);
    json_object_set_new(facts, json_string_value(json_object_get(a, "id")), a);
    json_object_set_new(facts, json_string_value(json_object_get(b, "id")), b);
    json_object_set_new(facts, json_string_value(json_object_get(c, "id")), c);
    json_object_set_new(facts, json_string_value(json_object_get(d, "id")), d);

    /* relevant first (kazán), then most recent; the expired one never */
    json_t *sel = custmem_select(facts, "Mikor tudják megnézni a kazánját?", 1000, 1000);
    ck_assert_uint_eq(json_array_size(sel), 3);
    ck_assert_ptr_nonnull(strstr(json_string_value(json_array_get(sel, 0)), "Vaillant"));
    ck_assert_ptr_nonnull(strstr(json_string_value(json_array_get(sel, 1)), "panaszt"));
    ck_assert_ptr_nonnull(strstr(json_string_value(json_array_get(sel, 2)), "délután"));
    ck_assert_str_eq(json_string_value(json_array_get(sel, 2)), "preference: Csak délután ér rá. (1970-01-01)");
    json_decref(sel);

    /* before it expires the Debrecen fact is in, and first by recency */
    sel = custmem_select(facts, "szia", 1000, 450);
    ck_assert_uint_eq(json_array_size(sel), 4);
    ck_assert_ptr_nonnull(strstr(json_string_value(json_array_get(sel, 0)), "Debrecen"));
    json_decref(sel);

    /* the budget: each fact costs bytes/4 + 4 tokens */
    sel = custmem_select(facts, "kazán", 15, 1000);
    ck_assert_uint_eq(json_array_size(sel), 1);
    json_decref(sel);
    sel = custmem_select(facts, "kazán", 0, 1000);
    ck_assert_uint_eq(json_array_size(sel), 0);
    json_decref(sel);
    json_decref(facts);
}
END_TEST

START_TEST(test_parse_extraction)
{
    char err[256];
    size_t skipped;
    json_t *f = custmem_parse_extraction(
        "```json\n{\"facts\": [{\"text\": \"Csak délután ér rá\", \"kind\": \"preference\", \"replaces\": \"\"},"
        " {\"text\": \"\", \"kind\": \"fact\", \"replaces\": \"\"},"
        " {\"text\": \"x\", \"kind\": \"rumour\", \"replaces\": \"\"}]}\n```",
        &skipped, err, sizeof err);
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(json_array_size(f), 1);
    ck_assert_uint_eq(skipped, 2);
    ck_assert_ptr_null(json_object_get(json_array_get(f, 0), "replaces")); /* "" = none */
    json_decref(f);

    ck_assert_ptr_null(custmem_parse_extraction("Sorry, I cannot.", &skipped, err, sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "not JSON"));
    ck_assert_ptr_null(custmem_parse_extraction("{\"facts\": 3}", &skipped, err, sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "no \"facts\" array"));
    ck_assert_ptr_null(custmem_parse_extraction("{\"facts\": [}", &skipped, err, sizeof err));
    ck_assert_ptr_nonnull(strstr(err, "not valid JSON"));
    f = custmem_parse_extraction("{\"facts\": []}", &skipped, err, sizeof err);
    ck_assert_uint_eq(json_array_size(f), 0);
    json_decref(f);
}
END_TEST

START_TEST(test_schema_shape)
{
    const json_t *s = custmem_extract_schema();
    const json_t *item = json_object_get(json_object_get(json_object_get(s, "properties"), "facts"), "items");
    ck_assert_uint_eq(json_array_size(json_object_get(item, "required")), 3);
    ck_assert_uint_eq(json_array_size(json_object_get(json_object_get(json_object_get(item, "properties"), "kind"),
                                                      "enum")),
                      4);
    ck_assert_ptr_null(json_object_get(item, "additionalProperties")); /* Gemini refuses the keyword */
    ck_assert_ptr_nonnull(strstr(custmem_extract_instruction(), "replaces"));
}
END_TEST

int main(void)
{
    Suite *s = suite_create("custmem");
    TCase *tc = tcase_create("pure");
    tcase_add_test(tc, test_contact_keys);
    tcase_add_test(tc, test_fact_check);
    tcase_add_test(tc, test_fact_id_folds);
    tcase_add_test(tc, test_merge_dedup);
    tcase_add_test(tc, test_merge_bounded);
    tcase_add_test(tc, test_select_relevance_budget_expiry);
    tcase_add_test(tc, test_parse_extraction);
    tcase_add_test(tc, test_schema_shape);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
