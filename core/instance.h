/*
 * instance.h — one plugin serving one tenant (the koko_instance of the ABI).
 *
 * An instance is created by a generation and shared by later generations
 * whose config and .so for it are unchanged (that is how a live gateway
 * session survives a reload). Every resource a plugin holds through the host
 * — transfers, timers, routes — is tagged with its instance, so when the
 * last generation using it goes away the host stops it, waits for it to
 * drain (or for the drain deadline), cancels what is left, and only then
 * calls destroy. No plugin code runs after destroy.
 */
#ifndef CORE_INSTANCE_H
#define CORE_INSTANCE_H

#include <event2/event.h>
#include <jansson.h>

#include "koko/host.h"
#include "loader.h"

#define INSTANCE_MAGIC 0x4b4f4b49u /* "KOKI" */

typedef enum inst_state { INST_NEW, INST_RUNNING, INST_STOPPING, INST_DEAD } inst_state;

struct kokod;

typedef struct inst_route {
    char *name;
    koko_route_fn fn;
    void *arg;
    struct inst_route *next;
} inst_route;

struct koko_timer {
    struct event *ev;
    koko_instance *inst;
    koko_timer_fn fn;
    void *arg;
    struct koko_timer *prev, *next;
};

struct koko_instance {
    uint32_t magic;
    int refs;            /* generations using it */
    struct kokod *kd;
    char *tenant;
    char *prefix;        /* "demo/fallback", for logs */
    char *key;           /* carry-over identity: tenant, plugin, .so hash, canonical config */
    plugin_lib *lib;     /* one reference */
    const koko_plugin *desc;
    json_t *cfg;         /* own copy, handed to init */
    void *state;
    inst_state st;
    inst_route *routes;
    struct koko_timer *timers;
    struct koko_kv *kvs;     /* kv_* calls whose callback is still owed (host.c) */
    size_t kv_cancelled;     /* cancelled kv_* calls whose CANCELLED callback has not run yet */
    struct event *drain_ev;  /* deadline, then polls for cancelled transfers */
    uint64_t drain_deadline;
};

/* Create and init an instance; NULL with ERR on failure (init's own message). */
koko_instance *instance_create(struct kokod *kd, const char *tenant_name, plugin_lib *lib, const json_t *cfg,
                               char *err, size_t errlen);
/* Key used to decide carry-over (caller frees). */
char *instance_key(const char *tenant_name, const plugin_lib *lib, const json_t *cfg);
int instance_start(koko_instance *inst, char *err, size_t errlen);
void instance_ref(koko_instance *inst);
/* Drop a reference; the last one stops, drains and destroys (asynchronously). */
void instance_release(koko_instance *inst);
/* Route registered by INST under NAME, or NULL. */
const inst_route *instance_route(const koko_instance *inst, const char *name);
/* Instances being drained right now (for status and tests). */
size_t instance_draining(void);

/* The koko_host vtable handed to every plugin (host.c). */
extern const koko_host core_host;

/*
 * The kv_* calls INST still owes a callback for (host.c). host_kv_cancel:
 * each gets KOKO_KV_E_CANCELLED later, from the loop (DELIVER = 1), or is
 * dropped without a callback (DELIVER = 0: an init that failed); the store's
 * own answer, when it comes, is discarded. Returns how many were cancelled.
 * host_kv_pending: calls and CANCELLED callbacks not run yet — destroy()
 * waits until it is 0.
 */
size_t host_kv_cancel(koko_instance *inst, int deliver);
size_t host_kv_pending(const koko_instance *inst);

#endif
