/*
 * memory.c — loading and checking identity.json and decisions.json.
 */
#include "kokoconf.h"

#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "memory.h"
#include "util.h"

static json_t *load_json(const char *path, diag *d, int *problems)
{
    if (access(path, F_OK) != 0)
        return NULL;
    json_error_t je;
    json_t *v = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
    if (!v) {
        diag_add(d, path, je.line > 0 ? je.line : 0, je.column > 0 ? je.column : 0, NULL, "invalid JSON: %s",
                 je.text);
        (*problems)++;
    }
    return v;
}

static int check_lang_map(const char *path, const json_t *persona, const char *key, diag *d)
{
    const json_t *v = json_object_get(persona, key);
    if (!v)
        return 0;
    if (!json_is_object(v)) {
        diag_add(d, path, 0, 0, key, "expected an object of language code → text, e.g. {\"hu\": \"…\", \"en\": \"…\"}");
        return 1;
    }
    int n = 0;
    const char *lang;
    const json_t *s;
    json_object_foreach((json_t *)v, lang, s)
    {
        if (!json_is_string(s) || strlen(lang) != 2) {
            diag_add(d, path, 0, 0, key, "entry \"%s\" must be a two-letter language code with a text", lang);
            n++;
        }
    }
    return n;
}

int memory_load(const char *dir, json_t **persona, json_t **decisions, diag *d)
{
    int problems = 0;
    char *ip = util_path_join(dir, "identity.json");
    char *dp = util_path_join(dir, "decisions.json");
    json_t *p = load_json(ip, d, &problems);
    json_t *dc = load_json(dp, d, &problems);
    if (p && !json_is_object(p)) {
        diag_add(d, ip, 1, 1, NULL, "the persona must be a JSON object (name, tone, greeting, holding, handoff, never)");
        problems++;
        json_decref(p);
        p = NULL;
    }
    if (p) {
        static const char *const lang_keys[] = {"tone", "greeting", "holding", "handoff", "source_label"};
        for (size_t i = 0; i < sizeof lang_keys / sizeof *lang_keys; i++)
            problems += check_lang_map(ip, p, lang_keys[i], d);
    }
    if (dc && !json_is_array(dc)) {
        diag_add(d, dp, 1, 1, NULL, "decisions must be a JSON array of {\"text\", \"date\", \"author\"}");
        problems++;
        json_decref(dc);
        dc = NULL;
    }
    if (dc) {
        size_t i;
        json_t *e;
        json_array_foreach(dc, i, e)
        {
            if (!json_is_object(e) || !json_is_string(json_object_get(e, "text"))) {
                char path[32];
                snprintf(path, sizeof path, "[%zu]", i);
                diag_add(d, dp, 0, 0, path, "each decision needs a \"text\" string");
                problems++;
            }
        }
    }
    *persona = p ? p : json_object();
    *decisions = dc ? dc : json_array();
    free(ip);
    free(dp);
    return problems;
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
