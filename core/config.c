/*
 * config.c — koko.yaml's sections declared as schema tables, plus the checks
 * a table cannot express: plugin names and kinds, each plugin's validate(),
 * routes, folders and the rule that a non-loopback listener needs a token.
 */
#include "kokoconf.h"

#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "config.h"
#include "log.h"
#include "memory.h"
#include "router.h"
#include "schema.h"
#include "util.h"

#ifndef PLUGINDIR
#define PLUGINDIR "/usr/local/lib/koko/plugins"
#endif

/* ---- checks used by the tables ---- */

static int check_listen(sc_ctx *ctx, const char *path, json_t *v)
{
    const char *s = json_string_value(v);
    const char *colon = strrchr(s, ':');
    char *end = NULL;
    long port = colon ? strtol(colon + 1, &end, 10) : -1;
    if (!colon || colon == s || !end || *end || colon[1] == '\0' || port < 0 || port > 65535) {
        sc_error(ctx, path, "expected HOST:PORT (e.g. 127.0.0.1:5001 or [::1]:5001), got \"%s\"", s);
        return -1;
    }
    return 0;
}

static int check_lang(sc_ctx *ctx, const char *path, json_t *v)
{
    const char *s = json_string_value(v);
    if (strlen(s) != 2 || s[0] < 'a' || s[0] > 'z' || s[1] < 'a' || s[1] > 'z') {
        sc_error(ctx, path, "\"%s\" is not an ISO 639-1 language code (two lower-case letters: hu, en, de)", s);
        return -1;
    }
    return 0;
}

static int check_name(sc_ctx *ctx, const char *path, json_t *v)
{
    const char *s = json_string_value(v);
    for (const char *p = s; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_' || *p == '-')) {
            sc_error(ctx, path, "\"%s\": use only a-z, 0-9, _ and -", s);
            return -1;
        }
    return 0;
}

static const sc_field f_server[] = {
    {.key = "listen", .type = SC_STRING, .check = check_listen, .doc = "HOST:PORT of the HTTP server"},
    {.key = "control", .type = SC_STRING, .flags = SC_NONEMPTY, .doc = "path of the control socket"},
    {.key = "api_token", .type = SC_STRING, .flags = SC_NULLABLE, .doc = "bearer token for the API"},
    {.key = "max_body", .type = SC_INT, .flags = SC_RANGE, .min = 1024, .max = 64LL << 20,
     .doc = "largest request body in bytes"},
    {.key = "drain_timeout_ms", .type = SC_INT, .flags = SC_RANGE, .min = 0, .max = 600000,
     .doc = "how long a stop or reload waits for in-flight work"},
    {.key = "backend_timeout_ms", .type = SC_INT, .flags = SC_RANGE, .min = 100, .max = 600000,
     .doc = "how long one backend of a tenant's llm chain may take before the next one answers"},
    {0},
};

/* in STORE_SYNC_* order (core/store.h) */
static const char *const sync_modes[] = {"tiered", "full", "normal", NULL};
static const sc_field f_state[] = {
    {.key = "dir", .type = SC_STRING, .flags = SC_NONEMPTY, .doc = "state directory (embedded store, plugin cache)"},
    {.key = "redis", .type = SC_STRING, .flags = SC_NONEMPTY | SC_NULLABLE,
     .doc = "redis://[:password@]host[:port][/db] or unix:/path[?db=N]: keep runtime state in Redis"},
    {.key = "password_env", .type = SC_STRING, .flags = SC_NONEMPTY,
     .doc = "environment variable holding the Redis password (default REDIS_PASSWORD)"},
    {.key = "prefix", .type = SC_STRING, .flags = SC_NONEMPTY, .doc = "prefix of every Redis key (default koko:)"},
    {.key = "group", .type = SC_STRING, .flags = SC_NONEMPTY,
     .doc = "consumer group of the Redis queue stream (default kokod)"},
    {.key = "lease_ms", .type = SC_INT, .flags = SC_RANGE, .min = 500, .max = 3600000,
     .doc = "how long a claimed queue entry is ours before another consumer may take it"},
    {.key = "max_attempts", .type = SC_INT, .flags = SC_RANGE, .min = 1, .max = 100,
     .doc = "deliveries of a queue entry before it becomes a dead letter"},
    {.key = "synchronous", .type = SC_STRING, .one_of = sync_modes,
     .doc = "embedded store: which commits are fsync'ed (tiered: accepting ones; full: all; normal: none)"},
    {0},
};

static const char *const log_levels[] = {"error", "warn", "info", "debug", NULL};
static const sc_field f_log[] = {
    {.key = "level", .type = SC_STRING, .one_of = log_levels, .doc = "least severe level logged"},
    {.key = "syslog", .type = SC_BOOL, .doc = "log to syslog instead of stderr"},
    {0},
};

static const sc_field f_string_item = {.type = SC_STRING, .flags = SC_NONEMPTY};
static const sc_field f_lang_item = {.type = SC_STRING, .check = check_lang};
static const sc_field f_any_item = {.type = SC_ANY};
static const sc_field f_plugin_cfg_item = {.type = SC_OBJECT, .flags = SC_OPEN | SC_NULLABLE};
static const sc_field f_phrases_item = {.type = SC_LIST, .item = &f_string_item};

static const sc_field f_handoff[] = {
    {.key = "min_confidence", .type = SC_NUMBER, .flags = SC_RANGE, .min = 0, .max = 1,
     .doc = "answers below this confidence go to a human"},
    {.key = "phrases", .type = SC_MAP, .item = &f_phrases_item,
     .doc = "per language: phrases with which a customer asks for a human"},
    {0},
};

static const sc_field f_budget[] = {
    {.key = "monthly_usd", .type = SC_NUMBER, .flags = SC_RANGE, .min = 0, .max = LLONG_MAX,
     .doc = "past this many USD in a calendar month, paid backends are skipped"},
    {0},
};

static const sc_field f_customer_memory[] = {
    {.key = "budget_tokens", .type = SC_INT, .flags = SC_RANGE, .min = 0, .max = 100000,
     .doc = "tokens of remembered customer facts put into a prompt (0: none); default 300"},
    {.key = "extract", .type = SC_BOOL,
     .doc = "extract facts from resolved conversations with the first capable backend; default true"},
    {0},
};

static const sc_field f_tenant[] = {
    {.key = "languages", .type = SC_LIST, .flags = SC_REQUIRED | SC_NONEMPTY | SC_RANGE, .min = 1, .max = 8,
     .item = &f_lang_item, .doc = "languages answered in, the first is the default"},
    {.key = "kb", .type = SC_LIST, .item = &f_string_item, .doc = "knowledge-base folders"},
    {.key = "memory", .type = SC_STRING, .flags = SC_NONEMPTY, .doc = "folder with identity.json and decisions.json"},
    {.key = "llm", .type = SC_LIST, .flags = SC_NONEMPTY, .item = &f_string_item, .doc = "the LLM chain, in order"},
    {.key = "backends", .type = SC_MAP, .item = &f_plugin_cfg_item, .doc = "LLM plugin name → its config"},
    {.key = "channels", .type = SC_MAP, .item = &f_plugin_cfg_item, .doc = "channel plugin name → its config"},
    {.key = "tools", .type = SC_MAP, .item = &f_plugin_cfg_item, .doc = "tool plugin name → its config"},
    {.key = "routes", .type = SC_LIST, .item = &f_any_item, .doc = "ordered routing table"},
    {.key = "handoff", .type = SC_OBJECT, .fields = f_handoff, .doc = "when to hand over to a human"},
    {.key = "budget", .type = SC_OBJECT, .fields = f_budget, .doc = "spending limits"},
    {.key = "history_turns", .type = SC_INT, .flags = SC_RANGE, .min = 0, .max = 100,
     .doc = "earlier turns kept per conversation"},
    {.key = "customer_memory", .type = SC_OBJECT, .fields = f_customer_memory,
     .doc = "what is remembered about each customer"},
    {0},
};

static const sc_field f_tenant_item = {.type = SC_OBJECT, .fields = f_tenant};

static const sc_field f_top[] = {
    {.key = "base_dir", .type = SC_STRING, .flags = SC_NONEMPTY, .doc = "relative paths resolve against it"},
    {.key = "server", .type = SC_OBJECT, .fields = f_server, .doc = "HTTP server and control socket"},
    {.key = "state", .type = SC_OBJECT, .fields = f_state, .doc = "runtime state"},
    {.key = "plugins", .type = SC_LIST, .item = &f_string_item, .doc = "plugin search path"},
    {.key = "log", .type = SC_OBJECT, .fields = f_log, .doc = "logging"},
    {.key = "tenants", .type = SC_MAP, .flags = SC_REQUIRED | SC_NONEMPTY, .item = &f_tenant_item,
     .doc = "tenants by name"},
    {0},
};

static const sc_field f_root = {.type = SC_OBJECT, .fields = f_top};

/* ---- plugin validate() through koko_diag ---- */

struct plugin_diag {
    koko_diag kd;
    const cfgdoc *doc;
    diag *d;
    const char *base;
    int n;
};

static void plugin_diag_error(koko_diag *kd, const char *relpath, const char *fmt, ...)
{
    struct plugin_diag *pd = (struct plugin_diag *)kd;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char *path = relpath && *relpath ? util_asprintf("%s%s%s", pd->base, relpath[0] == '[' ? "" : ".", relpath)
                                     : xstrdup(pd->base);
    cfgdoc_error(pd->doc, pd->d, path, "%s", msg);
    free(path);
    pd->n++;
}

static int run_validate(const cfgdoc *doc, diag *d, const char *path, const plugin_lib *lib, const json_t *cfg)
{
    if (!lib->desc->validate)
        return 0;
    struct plugin_diag pd = {.kd = {.size = sizeof(koko_diag), .error = plugin_diag_error},
                             .doc = doc, .d = d, .base = path};
    json_t *empty = cfg ? NULL : json_object();
    int rc = lib->desc->validate(cfg ? cfg : empty, &pd.kd);
    json_decref(empty);
    if (rc > 0 && pd.n == 0) {
        cfgdoc_error(doc, d, path, "plugin \"%s\" rejected its configuration (it gave no reason)", lib->name);
        pd.n = 1;
    }
    return pd.n;
}

/* ---- helpers ---- */

static char **strv_from_json(const json_t *arr, size_t *n)
{
    *n = json_is_array(arr) ? json_array_size(arr) : 0;
    char **v = xcalloc(*n + 1, sizeof *v);
    for (size_t i = 0; i < *n; i++)
        v[i] = xstrdup(json_string_value(json_array_get(arr, i)));
    return v;
}

static void strv_free(char **v, size_t n)
{
    if (!v)
        return;
    for (size_t i = 0; i < n; i++)
        free(v[i]);
    free(v);
}

static const char *str_or(const json_t *obj, const char *key, const char *dflt)
{
    const char *s = json_string_value(json_object_get(obj, key));
    return s ? s : dflt;
}

plugin_lib *config_lib(const core_config *c, const char *name)
{
    for (size_t i = 0; i < c->n_libs; i++)
        if (strcmp(c->libs[i]->name, name) == 0)
            return c->libs[i];
    return NULL;
}

const tenant_cfg *config_tenant(const core_config *c, const char *name)
{
    for (size_t i = 0; i < c->n_tenants; i++)
        if (strcmp(c->tenants[i].name, name) == 0)
            return &c->tenants[i];
    return NULL;
}

static const char *section_of(koko_kind k)
{
    return k == KOKO_KIND_CHANNEL ? "channels" : k == KOKO_KIND_LLM ? "backends" : "tools";
}

const json_t *config_plugin_cfg(const tenant_cfg *t, koko_kind kind, const char *name)
{
    const json_t *sec = kind == KOKO_KIND_CHANNEL ? t->channels : kind == KOKO_KIND_LLM ? t->backends : t->tools;
    const json_t *v = sec ? json_object_get(sec, name) : NULL;
    return v && json_is_object(v) ? v : NULL;
}

char *config_plugin_path(const tenant_cfg *t, koko_kind kind, const char *name)
{
    return util_asprintf("%s.%s.%s", t->path, section_of(kind), name);
}

/* Load NAME (once per config) and check it is of KIND; report at PATH. */
static plugin_lib *need_plugin(core_config *c, loader *ld, diag *d, const char *path, const char *name,
                               koko_kind kind)
{
    plugin_lib *lib = config_lib(c, name);
    if (!lib) {
        char err[1024];
        lib = loader_get(ld, (const char *const *)c->plugin_path, c->n_plugin_path, name, err, sizeof err);
        if (!lib) {
            cfgdoc_error(c->doc, d, path, "%s", err);
            return NULL;
        }
        c->libs = realloc(c->libs, (c->n_libs + 1) * sizeof *c->libs);
        c->libs[c->n_libs++] = lib;
    }
    if (lib->desc->kind != kind) {
        cfgdoc_error(c->doc, d, path, "plugin \"%s\" is a%s %s plugin, not a%s %s plugin", name,
                     lib->desc->kind == KOKO_KIND_LLM ? "n" : "", loader_kind_name(lib->desc->kind),
                     kind == KOKO_KIND_LLM ? "n" : "", loader_kind_name(kind));
        return NULL;
    }
    return lib;
}

static int check_dir(core_config *c, diag *d, const char *path, const char *dir)
{
    char *full = util_path_join(c->base_dir, dir);
    struct stat st;
    int rc = 0;
    if (stat(full, &st) != 0) {
        cfgdoc_error(c->doc, d, path, "folder %s does not exist (%s; relative paths resolve against base_dir \"%s\")",
                     full, strerror(errno), c->base_dir);
        rc = -1;
    } else if (!S_ISDIR(st.st_mode)) {
        cfgdoc_error(c->doc, d, path, "%s is not a folder", full);
        rc = -1;
    }
    free(full);
    return rc;
}

static void check_plugins_of(core_config *c, loader *ld, diag *d, tenant_cfg *t, const json_t *sec,
                             koko_kind kind)
{
    const char *name;
    const json_t *v;
    json_object_foreach((json_t *)sec, name, v)
    {
        char *path = config_plugin_path(t, kind, name);
        plugin_lib *lib = need_plugin(c, ld, d, path, name, kind);
        if (lib)
            run_validate(c->doc, d, path, lib, json_is_object(v) ? v : NULL);
        free(path);
    }
}

static void load_tenant(core_config *c, loader *ld, diag *d, tenant_cfg *t, const char *name, const json_t *node)
{
    t->name = xstrdup(name);
    t->path = util_asprintf("tenants.%s", name);
    t->node = node;
    t->languages = strv_from_json(json_object_get(node, "languages"), &t->n_languages);
    t->kb = strv_from_json(json_object_get(node, "kb"), &t->n_kb);
    const char *mem = json_string_value(json_object_get(node, "memory"));
    t->memory = mem ? xstrdup(mem) : NULL;
    t->channels = json_object_get(node, "channels");
    t->backends = json_object_get(node, "backends");
    t->tools = json_object_get(node, "tools");
    t->routes = json_object_get(node, "routes");
    const json_t *llm = json_object_get(node, "llm");
    if (llm) {
        t->llm = strv_from_json(llm, &t->n_llm);
    } else {
        t->llm = xcalloc(2, sizeof *t->llm);
        t->llm[0] = xstrdup("fallback");
        t->n_llm = 1;
    }

    json_t *tmp = json_string(name);
    char *np = util_asprintf("tenants.%s", name);
    static const sc_field f_name = {.type = SC_STRING, .check = check_name};
    sc_validate(c->doc, d, np, tmp, &f_name, NULL);
    json_decref(tmp);
    free(np);

    for (size_t i = 0; i < t->n_kb; i++) {
        char *p = util_asprintf("%s.kb[%zu]", t->path, i);
        check_dir(c, d, p, t->kb[i]);
        free(p);
    }
    if (t->memory) {
        char *p = util_asprintf("%s.memory", t->path);
        if (check_dir(c, d, p, t->memory) == 0) {
            char *full = util_path_join(c->base_dir, t->memory);
            json_t *persona = NULL, *decisions = NULL;
            diag *warn = diag_new();
            memory_load(full, (const char *const *)t->languages, t->n_languages, &persona, &decisions, d, warn);
            for (size_t i = 0; i < diag_count(warn); i++)
                log_warn("config", "%s", diag_get(warn, i));
            diag_free(warn);
            json_decref(persona);
            json_decref(decisions);
            free(full);
        }
        free(p);
    }
    for (size_t i = 0; i < t->n_llm; i++) {
        char *p = util_asprintf("%s.llm[%zu]", t->path, i);
        for (size_t j = 0; j < i; j++)
            if (strcmp(t->llm[i], t->llm[j]) == 0)
                cfgdoc_error(c->doc, d, p, "backend \"%s\" appears twice in the chain", t->llm[i]);
        plugin_lib *lib = need_plugin(c, ld, d, p, t->llm[i], KOKO_KIND_LLM);
        /* a backend named in the chain without a backends entry is validated with {} */
        if (lib && !config_plugin_cfg(t, KOKO_KIND_LLM, t->llm[i]) &&
            !(t->backends && json_object_get(t->backends, t->llm[i])))
            run_validate(c->doc, d, p, lib, NULL);
        free(p);
    }
    if (t->backends)
        check_plugins_of(c, ld, d, t, t->backends, KOKO_KIND_LLM);
    if (t->channels)
        check_plugins_of(c, ld, d, t, t->channels, KOKO_KIND_CHANNEL);
    if (t->tools)
        check_plugins_of(c, ld, d, t, t->tools, KOKO_KIND_TOOL);
    if (t->routes) {
        char *p = util_asprintf("%s.routes", t->path);
        router_validate(c->doc, d, p, t->routes, node);
        /* plugins named only by routes must load too */
        size_t i;
        json_t *r;
        json_array_foreach(t->routes, i, r)
        {
            json_t *rl = json_object_get(r, "llm");
            size_t j;
            json_t *nm;
            json_array_foreach(rl, j, nm)
            {
                if (!json_is_string(nm))
                    continue;
                char *pp = util_asprintf("%s[%zu].llm[%zu]", p, i, j);
                plugin_lib *lib = need_plugin(c, ld, d, pp, json_string_value(nm), KOKO_KIND_LLM);
                if (lib && !config_plugin_cfg(t, KOKO_KIND_LLM, lib->name))
                    run_validate(c->doc, d, pp, lib, NULL);
                free(pp);
            }
        }
        free(p);
    }
}

static void parse_listen(const char *s, char **host, int *port)
{
    const char *colon = strrchr(s, ':');
    *host = strndup(s, (size_t)(colon - s));
    *port = atoi(colon + 1);
}

core_config *config_load(const char *file, const char *const *extra, size_t nextra, loader *ld, diag *d)
{
    size_t before = diag_count(d);
    cfgdoc *doc = cfgdoc_parse_file(file, d);
    if (!doc)
        return NULL;
    json_t *root = cfgdoc_root(doc);
    sc_validate(doc, d, "", root, &f_root, NULL);
    if (diag_count(d) > before) {
        cfgdoc_free(doc);
        return NULL;
    }

    core_config *c = xcalloc(1, sizeof *c);
    c->doc = doc;
    c->file = xstrdup(file);
    c->base_dir = xstrdup(str_or(root, "base_dir", "."));
    const json_t *server = json_object_get(root, "server");
    parse_listen(str_or(server, "listen", CONFIG_DEFAULT_LISTEN), &c->listen_host, &c->listen_port);
    c->control_path = util_path_join(c->base_dir, str_or(server, "control", CONFIG_DEFAULT_CONTROL));
    const char *tok = str_or(server, "api_token", NULL);
    c->api_token = tok && *tok ? xstrdup(tok) : NULL;
    const json_t *mb = json_object_get(server, "max_body");
    c->max_body = mb ? (size_t)json_integer_value(mb) : CONFIG_DEFAULT_MAX_BODY;
    const json_t *dm = json_object_get(server, "drain_timeout_ms");
    c->drain_ms = dm ? (unsigned)json_integer_value(dm) : CONFIG_DEFAULT_DRAIN_MS;
    const json_t *bt = json_object_get(server, "backend_timeout_ms");
    c->backend_timeout_ms = bt ? (unsigned)json_integer_value(bt) : CONFIG_DEFAULT_BACKEND_TIMEOUT_MS;
    c->state_dir = util_path_join(c->base_dir, str_or(json_object_get(root, "state"), "dir", CONFIG_DEFAULT_STATE_DIR));
    const json_t *state = json_object_get(root, "state");
    const char *redis = str_or(state, "redis", NULL);
    c->state_redis = redis && *redis ? xstrdup(redis) : NULL;
    c->state_password_env = xstrdup(str_or(state, "password_env", "REDIS_PASSWORD"));
    c->state_prefix = xstrdup(str_or(state, "prefix", "koko:"));
    c->state_group = xstrdup(str_or(state, "group", "kokod"));
    const json_t *lm = json_object_get(state, "lease_ms");
    c->state_lease_ms = lm ? (int)json_integer_value(lm) : CONFIG_DEFAULT_LEASE_MS;
    const json_t *ma = json_object_get(state, "max_attempts");
    c->state_max_attempts = ma ? (int)json_integer_value(ma) : CONFIG_DEFAULT_MAX_ATTEMPTS;
    const char *sync = str_or(state, "synchronous", sync_modes[0]);
    c->state_synchronous = 0;
    for (int i = 0; sync_modes[i]; i++)
        if (strcmp(sync, sync_modes[i]) == 0)
            c->state_synchronous = i;
    char *cache = util_path_join(c->state_dir, "plugins");
    loader_set_cache_dir(ld, cache);
    free(cache);
    const char *lvl = str_or(json_object_get(root, "log"), "level", NULL);
    c->log_level = lvl ? xstrdup(lvl) : NULL;
    c->log_syslog = json_is_true(json_object_get(json_object_get(root, "log"), "syslog"));

    if (!c->api_token && !util_is_loopback(c->listen_host))
        cfgdoc_error(doc, d, "server.listen",
                     "refusing to listen on %s without server.api_token: set a token (e.g. api_token: "
                     "\"${KOKO_API_TOKEN}\") or listen on 127.0.0.1",
                     c->listen_host);

    /* search path: -P / KOKO_PLUGIN_PATH, then plugins:, then the installed folder */
    const json_t *pl = json_object_get(root, "plugins");
    size_t npl = json_array_size(pl);
    c->plugin_path = xcalloc(nextra + npl + 2, sizeof *c->plugin_path);
    for (size_t i = 0; i < nextra; i++)
        c->plugin_path[c->n_plugin_path++] = xstrdup(extra[i]);
    for (size_t i = 0; i < npl; i++)
        c->plugin_path[c->n_plugin_path++] = util_path_join(c->base_dir, json_string_value(json_array_get(pl, i)));
    c->plugin_path[c->n_plugin_path++] = xstrdup(PLUGINDIR);

    const json_t *tenants = json_object_get(root, "tenants");
    c->n_tenants = json_object_size(tenants);
    c->tenants = xcalloc(c->n_tenants, sizeof *c->tenants);
    size_t i = 0;
    const char *name;
    const json_t *node;
    json_object_foreach((json_t *)tenants, name, node)
    {
        if (strcmp(name, "queue") == 0) {
            char *path = util_asprintf("tenants.%s", name);
            cfgdoc_error(doc, d, path, "the tenant name \"queue\" is reserved (the store's queue keys use it): "
                                       "choose another name");
            free(path);
        }
        load_tenant(c, ld, d, &c->tenants[i++], name, node);
    }

    if (diag_count(d) > before) {
        config_free(c, ld);
        return NULL;
    }
    return c;
}

void config_free(core_config *c, loader *ld)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n_tenants; i++) {
        tenant_cfg *t = &c->tenants[i];
        free(t->name);
        free(t->path);
        strv_free(t->languages, t->n_languages);
        strv_free(t->kb, t->n_kb);
        strv_free(t->llm, t->n_llm);
        free(t->memory);
    }
    free(c->tenants);
    for (size_t i = 0; i < c->n_libs; i++)
        loader_release(ld, c->libs[i]);
    free(c->libs);
    strv_free(c->plugin_path, c->n_plugin_path);
    free(c->file);
    free(c->base_dir);
    free(c->listen_host);
    free(c->control_path);
    free(c->api_token);
    free(c->state_dir);
    free(c->state_redis);
    free(c->state_password_env);
    free(c->state_prefix);
    free(c->state_group);
    free(c->log_level);
    cfgdoc_free(c->doc);
    free(c);
}
