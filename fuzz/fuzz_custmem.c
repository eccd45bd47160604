/*
 * fuzz_custmem.c - libFuzzer harness for customer memory's parsers (core/custmem.c).
 *
 * A model's extraction answer (custmem_parse_extraction) and the facts and contact keys
 * of the /memory API (custmem_fact_check, custmem_contact_ok) come from outside. The input
 * is tried as all three; what is accepted is merged into a fact table and selected for a
 * prompt, whose invariants are checked: every kept fact passes the check again, the table
 * never exceeds CUSTMEM_FACTS_MAX, and the selection stays within its budget.
 * Build: see fuzz/build.sh.
 */
#include "custmem.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    char err[512];
    (void)custmem_contact_ok(text, err, sizeof err);

    size_t skipped = 0;
    json_t *facts = custmem_parse_extraction(text, &skipped, err, sizeof err);
    json_t *in = json_loads(text, JSON_DECODE_ANY, NULL);
    json_t *one = in ? custmem_fact_check(in, err, sizeof err) : NULL;
    if (one) {
        if (!facts)
            facts = json_array();
        json_array_append_new(facts, one);
    }
    if (facts) {
        json_t *table = json_object();
        json_decref(custmem_merge(table, facts, "fuzz:1", 1000));
        json_decref(custmem_merge(table, facts, NULL, 2000)); /* the same again: nothing new */
        if (json_object_size(table) > CUSTMEM_FACTS_MAX || json_object_size(table) > json_array_size(facts))
            abort();
        const char *k;
        json_t *f;
        json_object_foreach(table, k, f)
        {
            json_t *again = custmem_fact_check(f, err, sizeof err);
            if (!again)
                abort();
            json_decref(again);
        }
        json_t *sel = custmem_select(table, text, 50, 1500);
        size_t used = 0, i;
        json_t *s;
        json_array_foreach(sel, i, s) used += strlen(json_string_value(s)) / 4;
        if (used > 50 + 16 * json_array_size(sel))
            abort();
        json_decref(sel);
        json_decref(table);
    }
    json_decref(facts);
    json_decref(in);
    free(text);
    return 0;
}
