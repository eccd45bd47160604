/*
 * gen.c — building, sharing and retiring generations (gen.h).
 *
 * Build order: tenants' memory files and knowledge bases, then plugin
 * instances (carried over from the old generation when tenant, plugin, .so
 * hash and config are identical), then routes; start only what is new. Any
 * failure unwinds exactly what this build created.
 */
#include "kokoconf.h"

#include <stdlib.h>
#include <string.h>

#include "gen.h"
#include "kokod.h"
#include "log.h"
#include "memory.h"
#include "util.h"

static size_t n_alive;

size_t gen_alive(void) { return n_alive; }

void gen_ref(generation *g) { g->refs++; }

tenant *gen_tenant(const generation *g, const char *name)
{
    for (size_t i = 0; g && name && i < g->n_tenants; i++)
        if (strcmp(g->tenants[i].name, name) == 0)
            return &g->tenants[i];
    return NULL;
}

koko_instance *tenant_backend(const tenant *t, const char *name)
{
    for (size_t i = 0; i < t->n_backends; i++)
        if (strcmp(t->backends[i]->desc->name, name) == 0)
            return t->backends[i];
    return NULL;
}

const char *tenant_chunk_lang(const tenant *t, const kb *k, const kb_chunk *c)
{
    const kb_chunk *base = kb_chunk_at(k, 0);
    if (!base || c < base || (size_t)(c - base) >= kb_chunk_count(k))
        return NULL;
    size_t i = (size_t)(c - base);
    if (k == t->kb)
        return t->chunk_lang ? t->chunk_lang[i] : NULL;
    for (size_t r = 0; t->router && r < t->router->n && r < 32; r++)
        if (t->router->routes[r].kb == k)
            return t->route_chunk_lang[r] ? t->route_chunk_lang[r][i] : NULL;
    return NULL;
}

/* Language of every chunk, as a pointer to the tenant's own language code
 * (stable for the generation's life), or NULL for other languages. */
static const char **detect_chunk_langs(kokod *kd, const tenant *t, const kb *k)
{
    size_t n = kb_chunk_count(k);
    if (!kd->lang || n == 0)
        return NULL;
    const char **v = xcalloc(n, sizeof *v);
    for (size_t i = 0; i < n; i++) {
        const kb_chunk *c = kb_chunk_at(k, i);
        const char *code = lang_detect(kd->lang, c->text, c->text_len);
        for (size_t l = 0; code && l < t->n_languages; l++)
            if (strcmp(code, t->languages[l]) == 0)
                v[i] = t->languages[l];
    }
    return v;
}

static koko_instance *find_old(const generation *old, const char *key)
{
    for (size_t i = 0; old && i < old->n_tenants; i++) {
        const tenant *t = &old->tenants[i];
        koko_instance **lists[] = {t->channels, t->backends, t->tools};
        size_t counts[] = {t->n_channels, t->n_backends, t->n_tools};
        for (size_t l = 0; l < 3; l++)
            for (size_t j = 0; j < counts[l]; j++)
                if (strcmp(lists[l][j]->key, key) == 0)
                    return lists[l][j];
    }
    return NULL;
}

/* Get (carry over or create) the instance of plugin NAME of KIND for T. */
static koko_instance *make_instance(kokod *kd, generation *g, const generation *old, tenant *t, koko_kind kind,
                                    const char *name, diag *d)
{
    const core_config *c = g->cfg;
    plugin_lib *lib = config_lib(c, name);
    const json_t *pcfg = config_plugin_cfg(t->cfg, kind, name);
    json_t *empty = pcfg ? NULL : json_object();
    const json_t *use = pcfg ? pcfg : empty;
    char *key = instance_key(t->name, lib, use);
    koko_instance *inst = find_old(old, key);
    free(key);
    if (inst) {
        instance_ref(inst);
    } else {
        char err[1024];
        inst = instance_create(kd, t->name, lib, use, err, sizeof err);
        if (!inst) {
            char *path = config_plugin_path(t->cfg, kind, name);
            cfgdoc_error(c->doc, d, path, "%s", err);
            free(path);
        }
    }
    json_decref(empty);
    return inst;
}

static void add_inst(koko_instance ***v, size_t *n, koko_instance *inst)
{
    *v = realloc(*v, (*n + 1) * sizeof **v);
    (*v)[(*n)++] = inst;
}

static void kb_warn(void *ctx, const char *path, const char *why)
{
    log_warn((const char *)ctx, "knowledge base: %s: %s (skipped)", path, why);
}

static void tenant_fingerprint(tenant *t)
{
    char *dump = json_dumps(t->cfg->node, JSON_SORT_KEYS | JSON_COMPACT);
    char *p = json_dumps(t->persona, JSON_SORT_KEYS | JSON_COMPACT);
    char *dc = json_dumps(t->decisions, JSON_SORT_KEYS | JSON_COMPACT);
    char *all = util_asprintf("%s\n%s\n%s\n%s", dump ? dump : "", p ? p : "", dc ? dc : "", t->kb ? kb_hash(t->kb) : "");
    snprintf(t->fingerprint, sizeof t->fingerprint, "%016llx", (unsigned long long)util_fnv1a64(all, strlen(all)));
    free(dump);
    free(p);
    free(dc);
    free(all);
}

static json_t *tool_declarations(const tenant *t, const route *r)
{
    json_t *out = json_array();
    json_array_append_new(out, json_pack("{s:s,s:s,s:{s:s,s:{s:{s:s,s:s}},s:[s]}}", "name", "handoff_to_human",
                                         "description",
                                         "Hand the conversation to a human colleague. Call it when you cannot "
                                         "answer from the knowledge given, or the customer asks for a person.",
                                         "parameters", "type", "object", "properties", "reason", "type", "string",
                                         "description", "why a human should take over", "required", "reason"));
    koko_instance *const *tools = r && r->has_tools ? r->tools : t->tools;
    size_t n = r && r->has_tools ? r->n_tools : t->n_tools;
    for (size_t i = 0; i < n; i++) {
        const koko_tool_ops *ops = tools[i]->desc->ops;
        const json_t *decl = ops->declarations(tools[i]->state);
        if (json_is_array(decl))
            json_array_extend(out, (json_t *)decl);
    }
    return out;
}

/* The declarations and context hash of route R (NULL: the tenant's defaults),
 * once per generation rather than per message. */
static void prompt_ctx_build(const tenant *t, const route *r, prompt_ctx *pc)
{
    const json_t *persona = r && r->persona ? r->persona : t->persona;
    const kb *k = r && r->kb ? r->kb : t->kb;
    pc->tools = tool_declarations(t, r);
    char *decl = json_dumps(pc->tools, JSON_COMPACT | JSON_SORT_KEYS);
    char *pers = json_dumps(persona, JSON_COMPACT | JSON_SORT_KEYS);
    char *all = util_asprintf("%s\n%s\n%s\n%s", t->fingerprint, pers ? pers : "", k ? kb_hash(k) : "",
                              decl ? decl : "");
    snprintf(pc->hash, sizeof pc->hash, "%016llx", (unsigned long long)util_fnv1a64(all, strlen(all)));
    free(decl);
    free(pers);
    free(all);
}

static int build_tenant(kokod *kd, generation *g, const generation *old, tenant *t, const tenant_cfg *tc, diag *d)
{
    const core_config *c = g->cfg;
    size_t before = diag_count(d);
    t->cfg = tc;
    t->name = tc->name;
    t->languages = (const char *const *)tc->languages;
    t->n_languages = tc->n_languages;
    const json_t *h = json_object_get(tc->node, "handoff");
    const json_t *mc = json_object_get(h, "min_confidence");
    t->min_confidence = mc ? json_number_value(mc) : 0.35;
    t->handoff_phrases = json_object_get(h, "phrases");
    const json_t *ht = json_object_get(tc->node, "history_turns");
    t->history_turns = ht ? (unsigned)json_integer_value(ht) : 10;
    t->monthly_usd = json_number_value(json_object_get(json_object_get(tc->node, "budget"), "monthly_usd"));
    const json_t *cm = json_object_get(tc->node, "customer_memory");
    const json_t *cmb = json_object_get(cm, "budget_tokens");
    t->memory_budget_tokens = cmb ? (unsigned)json_integer_value(cmb) : 300;
    t->memory_extract = !json_is_false(json_object_get(cm, "extract"));

    if (tc->memory) {
        char *dir = util_path_join(c->base_dir, tc->memory);
        /* config_load checked the files and logged their warnings */
        memory_load(dir, t->languages, t->n_languages, &t->persona, &t->decisions, d, NULL);
        free(dir);
    } else {
        t->persona = json_object();
        t->decisions = json_array();
    }
    t->kb = kb_build(c->base_dir, (const char *const *)tc->kb, tc->n_kb, t->languages, t->n_languages, kb_warn,
                     (void *)t->name);
    t->chunk_lang = t->kb ? detect_chunk_langs(kd, t, t->kb) : NULL;
    if (t->kb && kb_chunk_count(t->kb)) {
        strbuf sb = {0};
        for (size_t i = 0; i < kb_chunk_count(t->kb); i++) {
            const kb_chunk *ch = kb_chunk_at(t->kb, i);
            sb_printf(&sb, "[%s%s%s]\n%s\n\n", ch->file, ch->heading[0] ? " › " : "", ch->heading, ch->text);
        }
        t->knowledge = sb_take(&sb);
    }

    /* every llm the chain or a route names, once (a failed init is reported once) */
    const json_t *be;
    const char *bname;
    json_t *tried = json_object();
#define TRY_ONCE(nm) (json_object_get(tried, (nm)) ? 0 : (json_object_set_new(tried, (nm), json_true()), 1))
    for (size_t i = 0; i < tc->n_llm; i++)
        if (!tenant_backend(t, tc->llm[i]) && TRY_ONCE(tc->llm[i])) {
            koko_instance *inst = make_instance(kd, g, old, t, KOKO_KIND_LLM, tc->llm[i], d);
            if (inst)
                add_inst(&t->backends, &t->n_backends, inst);
        }
    json_object_foreach((json_t *)tc->backends, bname, be)
        if (!tenant_backend(t, bname) && TRY_ONCE(bname)) {
            koko_instance *inst = make_instance(kd, g, old, t, KOKO_KIND_LLM, bname, d);
            if (inst)
                add_inst(&t->backends, &t->n_backends, inst);
        }
    size_t ri;
    json_t *r;
    json_array_foreach(tc->routes, ri, r)
    {
        size_t j;
        json_t *nm;
        json_array_foreach(json_object_get(r, "llm"), j, nm)
            if (!tenant_backend(t, json_string_value(nm)) && TRY_ONCE(json_string_value(nm))) {
                koko_instance *inst = make_instance(kd, g, old, t, KOKO_KIND_LLM, json_string_value(nm), d);
                if (inst)
                    add_inst(&t->backends, &t->n_backends, inst);
            }
    }
#undef TRY_ONCE
    json_decref(tried);
    t->chain = xcalloc(tc->n_llm, sizeof *t->chain);
    for (size_t i = 0; i < tc->n_llm; i++) {
        koko_instance *inst = tenant_backend(t, tc->llm[i]);
        if (inst)
            t->chain[t->n_chain++] = inst;
    }
    json_object_foreach((json_t *)tc->channels, bname, be)
    {
        koko_instance *inst = make_instance(kd, g, old, t, KOKO_KIND_CHANNEL, bname, d);
        if (inst)
            add_inst(&t->channels, &t->n_channels, inst);
    }
    json_object_foreach((json_t *)tc->tools, bname, be)
    {
        koko_instance *inst = make_instance(kd, g, old, t, KOKO_KIND_TOOL, bname, d);
        if (inst)
            add_inst(&t->tools, &t->n_tools, inst);
    }
    if (diag_count(d) > before)
        return -1;
    t->router = router_build(c->base_dir, t, tc->routes, d);
    for (size_t i = 0; i < t->router->n && i < 32; i++)
        if (t->router->routes[i].kb)
            t->route_chunk_lang[i] = detect_chunk_langs(kd, t, t->router->routes[i].kb);
    tenant_fingerprint(t);
    if (diag_count(d) > before)
        return -1;
    prompt_ctx_build(t, NULL, &t->ctx);
    t->route_ctx = xcalloc(t->router->n + 1, sizeof *t->route_ctx);
    for (size_t i = 0; i < t->router->n; i++)
        prompt_ctx_build(t, &t->router->routes[i], &t->route_ctx[i]);
    return 0;
}

static void tenant_destroy(tenant *t)
{
    for (size_t i = 0; i < t->n_channels; i++)
        instance_release(t->channels[i]);
    for (size_t i = 0; i < t->n_backends; i++)
        instance_release(t->backends[i]);
    for (size_t i = 0; i < t->n_tools; i++)
        instance_release(t->tools[i]);
    free(t->channels);
    free(t->backends);
    free(t->tools);
    free(t->chain);
    for (size_t i = 0; i < 32; i++)
        free(t->route_chunk_lang[i]);
    json_decref(t->ctx.tools);
    for (size_t i = 0; t->route_ctx && i < t->router->n; i++)
        json_decref(t->route_ctx[i].tools);
    free(t->route_ctx);
    router_free(t->router);
    free(t->chunk_lang);
    free(t->knowledge);
    kb_free(t->kb);
    json_decref(t->persona);
    json_decref(t->decisions);
}

static void gen_destroy(generation *g)
{
    log_info("core", "generation %llu retired", (unsigned long long)g->id);
    if (g->drain_ev)
        event_free(g->drain_ev);
    for (size_t i = 0; i < g->n_tenants; i++)
        tenant_destroy(&g->tenants[i]);
    free(g->tenants);
    free(g->plugins_json);
    config_free(g->cfg, g->kd->loader);
    free(g);
    n_alive--;
}

static void drain_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    generation *g = arg;
    size_t cancelled = 0;
    for (size_t i = 0; i < g->n_tenants; i++) {
        const tenant *t = &g->tenants[i];
        koko_instance **lists[] = {t->channels, t->backends, t->tools};
        size_t counts[] = {t->n_channels, t->n_backends, t->n_tools};
        for (size_t l = 0; l < 3; l++)
            for (size_t j = 0; j < counts[l]; j++)
                if (lists[l][j]->refs == 1) /* not carried over: only this generation uses it */
                    cancelled += httpc_cancel_owner(g->kd->http, lists[l][j]);
    }
    log_warn("core", "generation %llu still has %d user(s) at its drain deadline: %zu transfer(s) cancelled",
             (unsigned long long)g->id, g->refs, cancelled);
}

void gen_retire(generation *g, unsigned drain_ms)
{
    /* the current-generation reference goes now; if users remain, the
     * deadline event lives on G and gen_destroy frees it if they finish first */
    if (g->refs == 1) {
        gen_release(g);
        return;
    }
    g->drain_ev = evtimer_new(g->kd->base, drain_deadline, g);
    struct timeval tv = {drain_ms / 1000, (drain_ms % 1000) * 1000};
    evtimer_add(g->drain_ev, &tv);
    gen_release(g);
}

void gen_release(generation *g)
{
    if (g && --g->refs == 0)
        gen_destroy(g);
}

generation *gen_build(kokod *kd, uint64_t id, core_config *cfg, const generation *old, diag *d)
{
    double t0 = util_now_ms_f();
    generation *g = xcalloc(1, sizeof *g);
    g->id = id;
    g->refs = 1;
    g->kd = kd;
    g->cfg = cfg;
    g->built_at = util_unix_time();
    g->n_tenants = cfg->n_tenants;
    g->tenants = xcalloc(cfg->n_tenants ? cfg->n_tenants : 1, sizeof *g->tenants);
    n_alive++;
    int failed = 0;
    for (size_t i = 0; i < cfg->n_tenants; i++)
        failed |= build_tenant(kd, g, old, &g->tenants[i], &cfg->tenants[i], d) != 0;
    for (size_t i = 0; !failed && i < g->n_tenants; i++) {
        tenant *t = &g->tenants[i];
        koko_instance **lists[] = {t->channels, t->backends, t->tools};
        size_t counts[] = {t->n_channels, t->n_backends, t->n_tools};
        for (size_t l = 0; l < 3 && !failed; l++)
            for (size_t j = 0; j < counts[l] && !failed; j++) {
                char err[1024];
                if (instance_start(lists[l][j], err, sizeof err) != 0) {
                    char *path = config_plugin_path(t->cfg, lists[l][j]->desc->kind, lists[l][j]->desc->name);
                    cfgdoc_error(cfg->doc, d, path, "%s", err);
                    free(path);
                    failed = 1;
                }
            }
    }
    if (failed) {
        gen_destroy(g);
        return NULL;
    }
    json_t *names = json_array();
    for (size_t i = 0; i < cfg->n_libs; i++)
        json_array_append_new(names, json_string(cfg->libs[i]->name));
    g->plugins_json = json_dumps(names, JSON_COMPACT);
    json_decref(names);
    g->build_ms = util_now_ms_f() - t0;
    return g;
}


json_t *gen_diff(const generation *old, const generation *neu)
{
    json_t *added = json_array(), *removed = json_array(), *changed = json_array();
    for (size_t i = 0; i < neu->n_tenants; i++) {
        const tenant *t = &neu->tenants[i];
        const tenant *o = gen_tenant(old, t->name);
        if (!o)
            json_array_append_new(added, json_string(t->name));
        else if (strcmp(o->fingerprint, t->fingerprint) != 0)
            json_array_append_new(changed, json_string(t->name));
    }
    for (size_t i = 0; old && i < old->n_tenants; i++)
        if (!gen_tenant(neu, old->tenants[i].name))
            json_array_append_new(removed, json_string(old->tenants[i].name));

    json_t *loaded = json_array(), *unloaded = json_array();
    for (size_t i = 0; i < neu->cfg->n_libs; i++) {
        const plugin_lib *l = neu->cfg->libs[i];
        const plugin_lib *ol = old ? config_lib(old->cfg, l->name) : NULL;
        if (!ol || ol != l)
            json_array_append_new(loaded, json_pack("{s:s,s:s,s:s}", "name", l->name, "hash", l->hash, "file", l->path));
    }
    for (size_t i = 0; old && i < old->cfg->n_libs; i++) {
        const plugin_lib *ol = old->cfg->libs[i];
        const plugin_lib *l = config_lib(neu->cfg, ol->name);
        if (!l || l != ol)
            json_array_append_new(unloaded, json_pack("{s:s,s:s}", "name", ol->name, "hash", ol->hash));
    }
    size_t kept = 0, fresh = 0;
    for (size_t i = 0; i < neu->n_tenants; i++) {
        const tenant *t = &neu->tenants[i];
        koko_instance **lists[] = {t->channels, t->backends, t->tools};
        size_t counts[] = {t->n_channels, t->n_backends, t->n_tools};
        for (size_t l = 0; l < 3; l++)
            for (size_t j = 0; j < counts[l]; j++)
                lists[l][j]->refs > 1 ? kept++ : fresh++;
    }
    return json_pack("{s:{s:o,s:o,s:o},s:{s:o,s:o},s:{s:I,s:I}}", "tenants", "added", added, "removed", removed,
                     "changed", changed, "plugins", "loaded", loaded, "unloaded", unloaded, "instances", "kept",
                     (json_int_t)kept, "new", (json_int_t)fresh);
}
