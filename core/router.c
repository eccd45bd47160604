/*
 * router.c — validation, building and matching of a tenant's routes (router.h).
 */
#include "kokoconf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen.h"
#include "log.h"
#include "memory.h"
#include "router.h"
#include "schema.h"
#include "text.h"
#include "util.h"

static int check_regex(sc_ctx *ctx, const char *path, json_t *v)
{
    regex_t re;
    int rc = regcomp(&re, json_string_value(v), REG_EXTENDED | REG_ICASE | REG_NOSUB);
    if (rc != 0) {
        char why[256];
        regerror(rc, &re, why, sizeof why);
        sc_error(ctx, path, "invalid regular expression: %s (POSIX extended syntax)", why);
        return -1;
    }
    regfree(&re);
    return 0;
}

static const sc_field f_str = {.type = SC_STRING, .flags = SC_NONEMPTY};
static const sc_field f_match[] = {
    {.key = "channel", .type = SC_STRING, .flags = SC_NONEMPTY, .doc = "channel plugin name, or \"api\""},
    {.key = "inbox", .type = SC_STRING, .flags = SC_NONEMPTY, .doc = "channel inbox id"},
    {.key = "language", .type = SC_STRING, .flags = SC_NONEMPTY, .doc = "ISO 639-1 code"},
    {.key = "keywords", .type = SC_LIST, .flags = SC_NONEMPTY, .item = &f_str, .doc = "any of these words"},
    {.key = "regex", .type = SC_STRING, .flags = SC_NONEMPTY, .check = check_regex, .doc = "POSIX ERE on the text"},
    {0},
};
static const sc_field f_route[] = {
    {.key = "name", .type = SC_STRING, .flags = SC_NONEMPTY, .doc = "shown by kokoctl routes"},
    {.key = "match", .type = SC_OBJECT, .flags = SC_REQUIRED, .fields = f_match, .doc = "conditions, all must hold"},
    {.key = "llm", .type = SC_LIST, .flags = SC_NONEMPTY, .item = &f_str, .doc = "LLM chain override"},
    {.key = "tools", .type = SC_LIST, .item = &f_str, .doc = "tools override"},
    {.key = "kb", .type = SC_LIST, .flags = SC_NONEMPTY, .item = &f_str, .doc = "subset of the tenant's kb"},
    {.key = "persona", .type = SC_STRING, .flags = SC_NONEMPTY, .doc = "identity.json-shaped file"},
    {.key = "handoff", .type = SC_BOOL, .doc = "send straight to a human"},
    {0},
};
static const sc_field f_route_item = {.type = SC_OBJECT, .fields = f_route};
static const sc_field f_routes = {.type = SC_LIST, .item = &f_route_item};

static int in_str_array(const json_t *arr, const char *s)
{
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v) if (json_is_string(v) && strcmp(json_string_value(v), s) == 0) return 1;
    return 0;
}

int router_validate(const cfgdoc *doc, diag *d, const char *path, const json_t *routes, const json_t *tenant_node)
{
    int n = sc_validate(doc, d, path, (json_t *)routes, &f_routes, NULL);
    if (n)
        return n;
    const json_t *kb_dirs = json_object_get(tenant_node, "kb");
    const json_t *tools = json_object_get(tenant_node, "tools");
    const json_t *langs = json_object_get(tenant_node, "languages");
    size_t i;
    json_t *r;
    json_array_foreach(routes, i, r)
    {
        const json_t *m = json_object_get(r, "match");
        if (json_object_size(m) == 0) {
            char *p = util_asprintf("%s[%zu].match", path, i);
            cfgdoc_error(doc, d, p, "a route needs at least one condition (channel, inbox, language, keywords, regex)");
            free(p);
            n++;
        }
        const char *lang = json_string_value(json_object_get(m, "language"));
        if (lang && !in_str_array(langs, lang)) {
            char *p = util_asprintf("%s[%zu].match.language", path, i);
            cfgdoc_error(doc, d, p, "the tenant does not list language \"%s\" in languages", lang);
            free(p);
            n++;
        }
        size_t j;
        json_t *v;
        json_array_foreach(json_object_get(r, "kb"), j, v)
        {
            if (!in_str_array(kb_dirs, json_string_value(v))) {
                char *p = util_asprintf("%s[%zu].kb[%zu]", path, i, j);
                cfgdoc_error(doc, d, p, "\"%s\" is not one of the tenant's kb folders", json_string_value(v));
                free(p);
                n++;
            }
        }
        json_array_foreach(json_object_get(r, "tools"), j, v)
        {
            if (!json_object_get(tools, json_string_value(v))) {
                char *p = util_asprintf("%s[%zu].tools[%zu]", path, i, j);
                cfgdoc_error(doc, d, p, "tool \"%s\" is not configured for this tenant (add it under tools:)",
                             json_string_value(v));
                free(p);
                n++;
            }
        }
    }
    return n;
}

static char **strv(const json_t *arr, size_t *n, int normalise)
{
    *n = json_array_size(arr);
    char **v = xcalloc(*n + 1, sizeof *v);
    for (size_t i = 0; i < *n; i++) {
        const char *s = json_string_value(json_array_get(arr, i));
        if (normalise) {
            char buf[512];
            text_normalize(s, strlen(s), 1, buf, sizeof buf);
            v[i] = xstrdup(buf);
        } else {
            v[i] = xstrdup(s);
        }
    }
    return v;
}

static void kb_warn(void *ctx, const char *path, const char *why)
{
    log_warn((const char *)ctx, "knowledge base: %s: %s (skipped)", path, why);
}

router *router_build(const char *base_dir, tenant *t, const json_t *routes, diag *d)
{
    router *rt = xcalloc(1, sizeof *rt);
    rt->n = json_array_size(routes);
    rt->routes = xcalloc(rt->n ? rt->n : 1, sizeof *rt->routes);
    for (size_t i = 0; i < rt->n; i++) {
        const json_t *r = json_array_get(routes, i);
        const json_t *m = json_object_get(r, "match");
        route *ro = &rt->routes[i];
        const char *name = json_string_value(json_object_get(r, "name"));
        ro->name = name ? xstrdup(name) : util_asprintf("#%zu", i + 1);
        const char *s;
        if ((s = json_string_value(json_object_get(m, "channel"))))
            ro->channel = xstrdup(s);
        if ((s = json_string_value(json_object_get(m, "inbox"))))
            ro->inbox = xstrdup(s);
        if ((s = json_string_value(json_object_get(m, "language"))))
            ro->language = xstrdup(s);
        ro->keywords = strv(json_object_get(m, "keywords"), &ro->n_keywords, 1);
        if ((s = json_string_value(json_object_get(m, "regex")))) {
            ro->regex_src = xstrdup(s);
            ro->has_re = regcomp(&ro->re, s, REG_EXTENDED | REG_ICASE | REG_NOSUB) == 0;
        }
        const json_t *llm = json_object_get(r, "llm");
        if (llm) {
            ro->n_chain = json_array_size(llm);
            ro->chain = xcalloc(ro->n_chain, sizeof *ro->chain);
            for (size_t j = 0; j < ro->n_chain; j++)
                ro->chain[j] = tenant_backend(t, json_string_value(json_array_get(llm, j)));
        }
        const json_t *tools = json_object_get(r, "tools");
        if (tools) {
            ro->has_tools = 1;
            ro->n_tools = 0;
            ro->tools = xcalloc(json_array_size(tools) + 1, sizeof *ro->tools);
            for (size_t j = 0; j < json_array_size(tools); j++) {
                const char *tn = json_string_value(json_array_get(tools, j));
                for (size_t k = 0; k < t->n_tools; k++)
                    if (strcmp(t->tools[k]->desc->name, tn) == 0)
                        ro->tools[ro->n_tools++] = t->tools[k];
            }
        }
        const json_t *kbs = json_object_get(r, "kb");
        if (kbs) {
            ro->kb_dirs = strv(kbs, &ro->n_kb_dirs, 0);
            ro->kb = kb_build(base_dir, (const char *const *)ro->kb_dirs, ro->n_kb_dirs,
                              t->languages, t->n_languages, kb_warn, (void *)t->name);
        }
        if ((s = json_string_value(json_object_get(r, "persona")))) {
            ro->persona_path = xstrdup(s);
            char *full = util_path_join(base_dir, s);
            /* checked like the tenant's identity.json (keys, types, a holding and a
             * handoff text per language), with FILE:LINE:COL positions */
            size_t before = diag_count(d);
            ro->persona =
                memory_load_persona(full, (const char *const *)t->languages, t->n_languages, d, NULL);
            if (!ro->persona && diag_count(d) == before)
                diag_add(d, full, 0, 0, NULL, "route \"%s\": cannot use this persona file", ro->name);
            free(full);
        }
        ro->handoff = json_is_true(json_object_get(r, "handoff"));
    }
    return rt;
}

void router_free(router *rt)
{
    if (!rt)
        return;
    for (size_t i = 0; i < rt->n; i++) {
        route *ro = &rt->routes[i];
        free(ro->name);
        free(ro->channel);
        free(ro->inbox);
        free(ro->language);
        for (size_t j = 0; j < ro->n_keywords; j++)
            free(ro->keywords[j]);
        free(ro->keywords);
        if (ro->has_re)
            regfree(&ro->re);
        free(ro->regex_src);
        free(ro->chain);
        free(ro->tools);
        for (size_t j = 0; j < ro->n_kb_dirs; j++)
            free(ro->kb_dirs[j]);
        free(ro->kb_dirs);
        kb_free(ro->kb);
        free(ro->persona_path);
        json_decref(ro->persona);
    }
    free(rt->routes);
    free(rt);
}

/* KW (normalised) starts a word of NORM (normalised text). */
int router_phrase_in(const char *norm, const char *kw)
{
    size_t kl = strlen(kw);
    if (kl == 0)
        return 0;
    for (const char *p = strstr(norm, kw); p; p = strstr(p + 1, kw)) {
        if (p == norm)
            return 1;
        size_t adv;
        /* the byte before must end a non-word code point */
        const char *q = p - 1;
        while (q > norm && ((unsigned char)*q & 0xC0) == 0x80)
            q--;
        uint32_t cp = text_utf8_decode(q, (size_t)(p - q), &adv);
        if (!text_is_word_cp(cp))
            return 1;
    }
    return 0;
}

/* Evaluate route RO; append reasons to WHY (may be NULL). 1 when it matches. */
static int route_eval(const route *ro, const route_input *in, const char *norm, json_t *why)
{
    int ok = 1;
#define REASON(...)                                                   \
    do {                                                              \
        if (why) {                                                    \
            char *s_ = util_asprintf(__VA_ARGS__);                    \
            json_array_append_new(why, json_string(s_));              \
            free(s_);                                                 \
        }                                                             \
    } while (0)
    if (ro->channel) {
        int m = in->channel && strcmp(ro->channel, in->channel) == 0;
        REASON("channel %s %s %s", in->channel ? in->channel : "(none)", m ? "=" : "≠", ro->channel);
        ok &= m;
    }
    if (ro->inbox) {
        int m = in->inbox && strcmp(ro->inbox, in->inbox) == 0;
        REASON("inbox %s %s %s", in->inbox ? in->inbox : "(none)", m ? "=" : "≠", ro->inbox);
        ok &= m;
    }
    if (ro->language) {
        int m = in->language && strcmp(ro->language, in->language) == 0;
        REASON("language %s %s %s", in->language ? in->language : "(none)", m ? "=" : "≠", ro->language);
        ok &= m;
    }
    if (ro->n_keywords) {
        const char *hit = NULL;
        for (size_t i = 0; i < ro->n_keywords && !hit; i++)
            if (router_phrase_in(norm, ro->keywords[i]))
                hit = ro->keywords[i];
        if (hit)
            REASON("keyword \"%s\" found", hit);
        else
            REASON("none of the %zu keywords found", ro->n_keywords);
        ok &= hit != NULL;
    }
    if (ro->has_re) {
        int m = in->text && regexec(&ro->re, in->text, 0, NULL, 0) == 0;
        REASON("regex /%s/ %s", ro->regex_src, m ? "matches" : "does not match");
        ok &= m;
    }
#undef REASON
    return ok;
}

char *router_normalise(const char *text)
{
    size_t len = text ? strlen(text) : 0;
    char *out = xmalloc(len * 2 + 8);
    text_normalize(text ? text : "", len, 1, out, len * 2 + 8);
    return out;
}

const route *router_match(const router *rt, const route_input *in, size_t *index)
{
    if (!rt || rt->n == 0)
        return NULL;
    char *norm = NULL;
    for (size_t i = 0; i < rt->n; i++) {
        const route *ro = &rt->routes[i];
        if (ro->n_keywords && !norm)
            norm = router_normalise(in->text);
        if (route_eval(ro, in, norm, NULL)) {
            if (index)
                *index = i;
            free(norm);
            return ro;
        }
    }
    free(norm);
    return NULL;
}

json_t *router_explain(const router *rt, const route_input *in)
{
    json_t *out = json_array();
    char *norm = router_normalise(in->text);
    int matched = 0;
    for (size_t i = 0; rt && i < rt->n; i++) {
        const route *ro = &rt->routes[i];
        json_t *why = json_array();
        int m = route_eval(ro, in, norm, why);
        json_array_append_new(out, json_pack("{s:s,s:b,s:b,s:o}", "route", ro->name, "matched", m, "chosen",
                                             m && !matched, "reasons", why));
        matched |= m;
    }
    free(norm);
    return out;
}

static json_t *names_of(koko_instance *const *v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++)
        if (v[i])
            json_array_append_new(a, json_string(v[i]->desc->name));
    return a;
}

json_t *router_describe(const router *rt)
{
    json_t *out = json_array();
    for (size_t i = 0; rt && i < rt->n; i++) {
        const route *ro = &rt->routes[i];
        json_t *match = json_object(), *over = json_object();
        if (ro->channel)
            json_object_set_new(match, "channel", json_string(ro->channel));
        if (ro->inbox)
            json_object_set_new(match, "inbox", json_string(ro->inbox));
        if (ro->language)
            json_object_set_new(match, "language", json_string(ro->language));
        if (ro->n_keywords) {
            json_t *k = json_array();
            for (size_t j = 0; j < ro->n_keywords; j++)
                json_array_append_new(k, json_string(ro->keywords[j]));
            json_object_set_new(match, "keywords", k);
        }
        if (ro->regex_src)
            json_object_set_new(match, "regex", json_string(ro->regex_src));
        if (ro->chain)
            json_object_set_new(over, "llm", names_of(ro->chain, ro->n_chain));
        if (ro->has_tools)
            json_object_set_new(over, "tools", names_of(ro->tools, ro->n_tools));
        if (ro->kb_dirs) {
            json_t *k = json_array();
            for (size_t j = 0; j < ro->n_kb_dirs; j++)
                json_array_append_new(k, json_string(ro->kb_dirs[j]));
            json_object_set_new(over, "kb", k);
        }
        if (ro->persona_path)
            json_object_set_new(over, "persona", json_string(ro->persona_path));
        if (ro->handoff)
            json_object_set_new(over, "handoff", json_true());
        json_array_append_new(out, json_pack("{s:i,s:s,s:o,s:o}", "index", (json_int_t)(i + 1), "name", ro->name,
                                             "match", match, "overrides", over));
    }
    return out;
}
