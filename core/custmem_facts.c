/*
 * core/custmem_facts.c — the pure half of customer memory (custmem.h): contact
 * keys, checking and merging facts, choosing them for a prompt, and the
 * extraction task's instruction, schema and answer parsing. No store, no
 * loop: unit-tested in tests/test_custmem.c and fuzzed in fuzz/fuzz_custmem.c.
 */
#include "kokoconf.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "custmem.h"
#include "text.h"
#include "util.h"

static const char *const kinds[] = {"preference", "fact", "issue", "decision"};
#define N_KINDS (sizeof kinds / sizeof *kinds)

int custmem_contact_ok(const char *key, char *err, size_t errlen)
{
    if (!key || !*key) {
        snprintf(err, errlen, "the contact is empty; contacts look like \"chatwoot:17\" or \"email:anna@example.hu\"");
        return 0;
    }
    size_t n = strlen(key);
    if (n > CUSTMEM_CONTACT_MAX) {
        snprintf(err, errlen, "the contact is %zu bytes, more than %d", n, CUSTMEM_CONTACT_MAX);
        return 0;
    }
    const char *colon = strchr(key, ':');
    if (!colon || colon == key || !colon[1]) {
        snprintf(err, errlen,
                 "contact \"%.60s\" must be CHANNEL:ID, e.g. \"chatwoot:17\", \"email:anna@example.hu\", "
                 "\"discord:81234\"",
                 key);
        return 0;
    }
    for (const char *p = key; p < colon; p++)
        if (!(islower((unsigned char)*p) || isdigit((unsigned char)*p) || *p == '_' || *p == '-')) {
            snprintf(err, errlen, "contact \"%.60s\": the channel part may hold only a-z, 0-9, _ and -", key);
            return 0;
        }
    for (const char *p = key; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            snprintf(err, errlen, "contact \"%.60s\" contains a control character", key);
            return 0;
        }
    if (!text_utf8_valid(key, n)) {
        snprintf(err, errlen, "the contact is not valid UTF-8");
        return 0;
    }
    return 1;
}

/* Folded words of TEXT ("Csak délután!" -> "csak delutan"), unaccented so
 * that a model dropping an accent still matches. Caller frees. */
static char *fold_words(const char *text)
{
    strbuf sb = {0};
    size_t len = strlen(text), pos = 0, start, wlen;
    char w[TEXT_WORD_MAX + 1], u[4 * TEXT_WORD_MAX + 1];
    while (text_next_word(text, len, &pos, &start, &wlen, w, sizeof w) > 0) {
        size_t ul = text_normalize(w, strlen(w), 1, u, sizeof u);
        if (sb.len)
            sb_puts(&sb, " ");
        sb_append(&sb, u, ul);
    }
    return sb_take(&sb);
}

void custmem_fact_id(const char *text, char out[17])
{
    char *f = fold_words(text ? text : "");
    snprintf(out, 17, "%016" PRIx64, util_fnv1a64(f, strlen(f)));
    free(f);
}

static int kind_ok(const char *k)
{
    for (size_t i = 0; i < N_KINDS; i++)
        if (strcmp(k, kinds[i]) == 0)
            return 1;
    return 0;
}

/* "YYYY-MM-DD" -> the last second of that day, UTC; -1 when malformed. */
static int64_t parse_day_end(const char *s)
{
    int y, m, d;
    char tail;
    if (sscanf(s, "%4d-%2d-%2d%c", &y, &m, &d, &tail) != 3 || strlen(s) != 10 || m < 1 || m > 12 || d < 1 || d > 31)
        return -1;
    struct tm tm = {.tm_year = y - 1900, .tm_mon = m - 1, .tm_mday = d, .tm_hour = 23, .tm_min = 59, .tm_sec = 59};
    time_t t = timegm(&tm);
    struct tm back;
    gmtime_r(&t, &back);
    if (back.tm_mday != d) /* 2026-02-31 */
        return -1;
    return (int64_t)t;
}

json_t *custmem_fact_check(const json_t *in, char *err, size_t errlen)
{
    if (!json_is_object(in)) {
        snprintf(err, errlen, "a fact must be an object {\"text\", \"kind\", \"expires\"?}");
        return NULL;
    }
    const char *key;
    const json_t *v;
    json_object_foreach((json_t *)in, key, v)
    {
        if (strcmp(key, "text") && strcmp(key, "kind") && strcmp(key, "expires") && strcmp(key, "replaces") &&
            strcmp(key, "id") && strcmp(key, "source") && strcmp(key, "created") && strcmp(key, "updated")) {
            snprintf(err, errlen, "unknown key \"%.40s\" in a fact (known: text, kind, expires, replaces)", key);
            return NULL;
        }
    }
    const json_t *jt = json_object_get(in, "text");
    if (!json_is_string(jt)) {
        snprintf(err, errlen, "a fact needs \"text\", a string");
        return NULL;
    }
    const char *t = json_string_value(jt);
    while (*t && isspace((unsigned char)*t))
        t++;
    size_t n = strlen(t);
    while (n && isspace((unsigned char)t[n - 1]))
        n--;
    if (n == 0) {
        snprintf(err, errlen, "a fact's \"text\" is empty");
        return NULL;
    }
    if (n > CUSTMEM_TEXT_MAX) {
        snprintf(err, errlen, "a fact's \"text\" is %zu bytes, more than %d", n, CUSTMEM_TEXT_MAX);
        return NULL;
    }
    if (!text_utf8_valid(t, n)) {
        snprintf(err, errlen, "a fact's \"text\" is not valid UTF-8");
        return NULL;
    }
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)t[i] < 0x20 && t[i] != '\n' && t[i] != '\t') {
            snprintf(err, errlen, "a fact's \"text\" contains a control character");
            return NULL;
        }
    const json_t *jk = json_object_get(in, "kind");
    const char *kind = "fact";
    if (jk && !json_is_null(jk)) {
        if (!json_is_string(jk) || !kind_ok(json_string_value(jk))) {
            snprintf(err, errlen, "a fact's \"kind\" must be one of preference, fact, issue, decision");
            return NULL;
        }
        kind = json_string_value(jk);
    }
    json_t *out = json_pack("{s:s%,s:s}", "text", t, n, "kind", kind);
    const json_t *je = json_object_get(in, "expires");
    if (json_is_integer(je) && json_integer_value(je) > 0) {
        json_object_set_new(out, "expires", json_integer(json_integer_value(je)));
    } else if (json_is_string(je) && parse_day_end(json_string_value(je)) > 0) {
        json_object_set_new(out, "expires", json_integer(parse_day_end(json_string_value(je))));
    } else if (je && !json_is_null(je) && !(json_is_string(je) && !*json_string_value(je))) {
        json_decref(out);
        snprintf(err, errlen, "a fact's \"expires\" must be unix seconds or a date \"YYYY-MM-DD\"");
        return NULL;
    }
    const json_t *jr = json_object_get(in, "replaces");
    if (json_is_string(jr) && *json_string_value(jr))
        json_object_set_new(out, "replaces", json_string(json_string_value(jr)));
    else if (jr && !json_is_null(jr) && !json_is_string(jr)) {
        json_decref(out);
        snprintf(err, errlen, "a fact's \"replaces\" must be the id of a fact (a string)");
        return NULL;
    }
    return out;
}

/* Words of A shared with B, against the word count of the longer. */
static int nearly_same(const char *fa, const char *fb)
{
    size_t na = 0, nb = 0, shared = 0;
    char *a = xstrdup(fa), *save = NULL;
    for (char *w = strtok_r(a, " ", &save); w; w = strtok_r(NULL, " ", &save)) {
        na++;
        size_t wl = strlen(w);
        for (const char *p = fb; *p;) {
            const char *e = strchr(p, ' ');
            size_t l = e ? (size_t)(e - p) : strlen(p);
            if (l == wl && memcmp(p, w, l) == 0) {
                shared++;
                break;
            }
            p += l;
            while (*p == ' ')
                p++;
        }
    }
    free(a);
    for (const char *p = fb; *p; p++)
        if (*p != ' ' && (p == fb || p[-1] == ' '))
            nb++;
    size_t longer = na > nb ? na : nb;
    return longer > 0 && shared * 4 >= longer * 3;
}

static int64_t fact_int(const json_t *f, const char *k) { return (int64_t)json_integer_value(json_object_get(f, k)); }
static const char *fact_str(const json_t *f, const char *k) { return json_string_value(json_object_get(f, k)); }

json_t *custmem_merge(json_t *existing, const json_t *incoming, const char *source, int64_t now)
{
    json_t *set = json_object(), *removed = json_array();
    size_t i;
    const json_t *in;
    json_array_foreach((json_t *)incoming, i, in)
    {
        const char *text = fact_str(in, "text");
        if (!text)
            continue;
        char id[17];
        custmem_fact_id(text, id);
        char *fin = fold_words(text);
        const char *replaces = fact_str(in, "replaces");
        json_t *old = NULL;
        const char *old_id = NULL;
        if (replaces && json_object_get(existing, replaces)) {
            old_id = replaces;
            old = json_object_get(existing, replaces);
        } else if ((old = json_object_get(existing, id))) {
            old_id = id;
        } else {
            const char *k;
            json_t *f;
            json_object_foreach(existing, k, f)
            {
                if (!json_equal(json_object_get(f, "kind"), json_object_get(in, "kind")))
                    continue;
                char *fo = fold_words(fact_str(f, "text") ? fact_str(f, "text") : "");
                int same = nearly_same(fin, fo);
                free(fo);
                if (same) {
                    old = f;
                    old_id = k;
                    break;
                }
            }
        }
        json_t *nf = json_pack("{s:s,s:s,s:O,s:s,s:I,s:I}", "id", id, "text", text, "kind", json_object_get(in, "kind"),
                               "source", source ? source : "api", "created", (json_int_t)now, "updated",
                               (json_int_t)now);
        if (json_object_get(in, "expires"))
            json_object_set(nf, "expires", json_object_get(in, "expires"));
        if (old) {
            json_object_set_new(nf, "created", json_integer(fact_int(old, "created") ? fact_int(old, "created") : now));
            if (!source && fact_str(old, "source"))
                json_object_set_new(nf, "source", json_string(fact_str(old, "source")));
            if (strcmp(old_id, id) != 0) {
                char *gone = xstrdup(old_id);
                json_array_append_new(removed, json_string(gone));
                json_object_del(set, gone);
                json_object_del(existing, gone);
                free(gone);
            }
        }
        json_object_set(existing, id, nf);
        json_object_set_new(set, id, nf);
        free(fin);
    }
    /* bounded: the least recently updated go first */
    while (json_object_size(existing) > CUSTMEM_FACTS_MAX) {
        const char *k, *oldest = NULL;
        json_t *f;
        int64_t best = INT64_MAX;
        json_object_foreach(existing, k, f)
        {
            if (fact_int(f, "updated") < best) {
                best = fact_int(f, "updated");
                oldest = k;
            }
        }
        char *gone = xstrdup(oldest);
        json_array_append_new(removed, json_string(gone));
        json_object_del(set, gone);
        json_object_del(existing, gone);
        free(gone);
    }
    json_t *list = json_array();
    const char *k;
    json_t *f;
    json_object_foreach(set, k, f) json_array_append(list, f);
    json_decref(set);
    return json_pack("{s:o,s:o}", "set", list, "removed", removed);
}

typedef struct scored {
    const json_t *f;
    double score;
    int64_t updated;
} scored;

static int by_score(const void *a, const void *b)
{
    const scored *x = a, *y = b;
    if (x->score != y->score)
        return x->score < y->score ? 1 : -1;
    if (x->updated != y->updated)
        return x->updated < y->updated ? 1 : -1;
    return strcmp(fact_str(x->f, "id") ? fact_str(x->f, "id") : "", fact_str(y->f, "id") ? fact_str(y->f, "id") : "");
}

json_t *custmem_select(const json_t *facts, const char *text, size_t budget_tokens, int64_t now)
{
    json_t *out = json_array();
    size_t n = json_object_size(facts);
    if (!n || budget_tokens == 0)
        return out;
    scored *s = xcalloc(n, sizeof *s);
    size_t m = 0;
    char *q = fold_words(text ? text : "");
    const char *k;
    json_t *f;
    json_object_foreach((json_t *)facts, k, f)
    {
        if (k[0] == '@' || !fact_str(f, "text"))
            continue;
        int64_t exp = fact_int(f, "expires");
        if (exp > 0 && exp <= now)
            continue;
        /* relevance: the question's words (3+ letters) found among the fact's */
        char *fw = fold_words(fact_str(f, "text"));
        double rel = 0;
        char *qq = xstrdup(q), *save = NULL;
        for (char *w = strtok_r(qq, " ", &save); w; w = strtok_r(NULL, " ", &save)) {
            size_t wl = strlen(w);
            if (wl < 3)
                continue;
            for (const char *p = fw; (p = strstr(p, w)); p += wl)
                if ((p == fw || p[-1] == ' ') && (p[wl] == ' ' || p[wl] == '\0')) {
                    rel += 1;
                    break;
                }
        }
        free(qq);
        free(fw);
        s[m++] = (scored){.f = f, .score = rel, .updated = fact_int(f, "updated")};
    }
    free(q);
    qsort(s, m, sizeof *s, by_score);
    size_t used = 0;
    for (size_t i = 0; i < m; i++) {
        const char *t = fact_str(s[i].f, "text");
        size_t cost = strlen(t) / 4 + 4;
        if (used + cost > budget_tokens)
            continue; /* a shorter one further down may still fit */
        used += cost;
        char day[16] = "";
        time_t up = (time_t)s[i].updated;
        struct tm tm;
        if (up > 0 && gmtime_r(&up, &tm))
            strftime(day, sizeof day, "%Y-%m-%d", &tm);
        json_array_append_new(out, json_sprintf("%s: %s%s%s%s", fact_str(s[i].f, "kind") ? fact_str(s[i].f, "kind")
                                                                                         : "fact",
                                                t, day[0] ? " (" : "", day, day[0] ? ")" : ""));
    }
    free(s);
    return out;
}

const char *custmem_extract_instruction(void)
{
    return "You keep the memory of a customer-support team. From the conversation below, extract durable facts "
           "about the ONE customer who wrote it: things that will still matter in a later conversation.\n"
           "- preference: how and when they want to be served (\"can only come in the afternoon\", \"prefers "
           "e-mail\").\n"
           "- fact: stable facts about them or their situation (their device, their plan, where the service is "
           "needed).\n"
           "- issue: a problem they reported that may come up again.\n"
           "- decision: something they decided or agreed to.\n"
           "Write each fact as one short sentence in the language the customer wrote in. Take only what the "
           "customer said or confirmed, never the assistant's own statements. Leave out greetings, small talk, "
           "anything about other people, passwords, card or bank numbers, health data, and anything the customer "
           "asked to keep private. When a fact corrects or updates one of the known facts listed before the "
           "conversation, set \"replaces\" to that fact's id; otherwise set it to \"\". When nothing is worth "
           "remembering, answer {\"facts\": []}. Answer only with JSON of the given schema.";
}

const json_t *custmem_extract_schema(void)
{
    static json_t *schema;
    if (!schema)
        schema = json_pack("{s:s,s:{s:{s:s,s:{s:s,s:{s:{s:s,s:s},s:{s:s,s:[s,s,s,s]},s:{s:s,s:s}},s:[s,s,s]}}},"
                           "s:[s]}",
                           "type", "object", "properties", "facts", "type", "array", "items", "type", "object",
                           "properties", "text", "type", "string", "description", "the fact, one short sentence",
                           "kind", "type", "string", "enum", "preference", "fact", "issue", "decision", "replaces",
                           "type", "string", "description", "id of the known fact this one corrects, or \"\"",
                           "required", "text", "kind", "replaces", "required", "facts");
    return schema;
}

json_t *custmem_parse_extraction(const char *answer, size_t *skipped, char *err, size_t errlen)
{
    *skipped = 0;
    if (!answer) {
        snprintf(err, errlen, "the model gave no answer");
        return NULL;
    }
    /* tolerate a Markdown fence around the JSON */
    const char *b = strchr(answer, '{'), *e = strrchr(answer, '}');
    if (!b || !e || e < b) {
        snprintf(err, errlen, "the model's answer is not JSON: \"%.80s\"", answer);
        return NULL;
    }
    json_error_t je;
    json_t *doc = json_loadb(b, (size_t)(e - b + 1), 0, &je);
    if (!doc) {
        snprintf(err, errlen, "the model's answer is not valid JSON (%s at column %d)", je.text, je.column);
        return NULL;
    }
    const json_t *facts = json_object_get(doc, "facts");
    if (!json_is_array(facts)) {
        json_decref(doc);
        snprintf(err, errlen, "the model's answer has no \"facts\" array");
        return NULL;
    }
    json_t *out = json_array();
    size_t i;
    const json_t *f;
    json_array_foreach((json_t *)facts, i, f)
    {
        char why[256];
        json_t *c = custmem_fact_check(f, why, sizeof why);
        if (c)
            json_array_append_new(out, c);
        else
            (*skipped)++;
    }
    json_decref(doc);
    return out;
}
