/*
 * config.h — the validated configuration of one generation.
 *
 * config_load() parses etc/koko.yaml (yamltree), validates every section
 * against the tables in config.c (schema), loads every plugin the file
 * names (loader) and runs each plugin's validate() on its subtree. All
 * problems are reported into one diag as "FILE:LINE:COL: path: message";
 * any problem means no configuration. Nothing here starts anything: kokod -t
 * and reload's dry run are exactly config_load().
 */
#ifndef CORE_CONFIG_H
#define CORE_CONFIG_H

#include <stddef.h>
#include <jansson.h>

#include "diag.h"
#include "loader.h"
#include "yamltree.h"

#define CONFIG_DEFAULT_LISTEN "127.0.0.1:5001"
#define CONFIG_DEFAULT_CONTROL "var/kokod.sock"
#define CONFIG_DEFAULT_STATE_DIR "var"
#define CONFIG_DEFAULT_MAX_BODY (1024 * 1024)
#define CONFIG_DEFAULT_DRAIN_MS 10000
#define CONFIG_DEFAULT_BACKEND_TIMEOUT_MS 60000
#define CONFIG_DEFAULT_LEASE_MS 60000
#define CONFIG_DEFAULT_MAX_ATTEMPTS 5

typedef struct tenant_cfg {
    char *name;
    char *path; /* "tenants.NAME", for error locations */
    char **languages;
    size_t n_languages;
    char **kb;
    size_t n_kb;
    char *memory;           /* folder with identity.json and decisions.json, may be NULL */
    char **llm;             /* the chain, in order */
    size_t n_llm;
    const json_t *channels; /* map name → config (borrowed from the document) */
    const json_t *backends; /* map name → config */
    const json_t *tools;    /* map name → config */
    const json_t *routes;   /* list, may be NULL */
    const json_t *node;     /* the tenant's whole subtree */
} tenant_cfg;

typedef struct core_config {
    cfgdoc *doc;
    char *file;
    char *base_dir;      /* relative paths resolve against it */
    char *listen_host;
    int listen_port;
    char *control_path;  /* resolved against base_dir */
    char *api_token;     /* NULL: no bearer token required (loopback only) */
    size_t max_body;
    unsigned drain_ms;
    unsigned backend_timeout_ms; /* server.backend_timeout_ms: one backend's share of a message */
    char *state_dir;     /* resolved against base_dir */
    char *state_redis;   /* state.redis URL, NULL: the embedded store in state_dir */
    char *state_password_env;
    char *state_prefix;
    char *state_group;
    int state_lease_ms;     /* queue lease (state.lease_ms) */
    int state_max_attempts; /* deliveries before a dead letter (state.max_attempts) */
    int state_synchronous;  /* embedded store: STORE_SYNC_* (state.synchronous) */
    char **plugin_path;  /* search path: -P/KOKO_PLUGIN_PATH first, then plugins:, then PLUGINDIR */
    size_t n_plugin_path;
    char *log_level;     /* NULL = leave as is */
    int log_syslog;      /* log.syslog: log to syslog (takes effect at start) */
    tenant_cfg *tenants;
    size_t n_tenants;
    plugin_lib **libs;   /* every plugin the file names, one reference each */
    size_t n_libs;
} core_config;

/*
 * Load and validate FILE. EXTRA (NEXTRA directories) come first in the
 * plugin search path. Libraries are loaded through LD. Returns NULL when
 * anything is wrong, with every problem in D.
 */
core_config *config_load(const char *file, const char *const *extra, size_t nextra, loader *ld, diag *d);
void config_free(core_config *c, loader *ld);

/* The library of plugin NAME (loaded by config_load), or NULL. */
plugin_lib *config_lib(const core_config *c, const char *name);
const tenant_cfg *config_tenant(const core_config *c, const char *name);
/* The config subtree of plugin NAME of KIND in T (an empty object when absent). Borrowed. */
const json_t *config_plugin_cfg(const tenant_cfg *t, koko_kind kind, const char *name);
/* The config path of that subtree, e.g. "tenants.demo.backends.gemini". Caller frees. */
char *config_plugin_path(const tenant_cfg *t, koko_kind kind, const char *name);

#endif
