/*
 * instance.c — plugin instance lifecycle: init, start, shared use by
 * generations, stop with drain, cancellation of leftovers, destroy.
 */
#include "kokoconf.h"

#include <stdlib.h>
#include <string.h>

#include "instance.h"
#include "kokod.h"
#include "log.h"
#include "util.h"

#define DRAIN_POLL_MS 20

static size_t n_draining;

size_t instance_draining(void) { return n_draining; }

char *instance_key(const char *tenant_name, const plugin_lib *lib, const json_t *cfg)
{
    char *dump = json_dumps(cfg, JSON_SORT_KEYS | JSON_COMPACT | JSON_ENCODE_ANY);
    char *key = util_asprintf("%s\n%s\n%s\n%s", tenant_name, lib->name, lib->hash, dump ? dump : "");
    free(dump);
    return key;
}

koko_instance *instance_create(kokod *kd, const char *tenant_name, plugin_lib *lib, const json_t *cfg,
                               char *err, size_t errlen)
{
    koko_instance *inst = xcalloc(1, sizeof *inst);
    inst->magic = INSTANCE_MAGIC;
    inst->refs = 1;
    inst->kd = kd;
    inst->tenant = xstrdup(tenant_name);
    inst->prefix = util_asprintf("%s/%s", tenant_name, lib->name);
    inst->key = instance_key(tenant_name, lib, cfg);
    inst->lib = lib;
    lib->refs++;
    inst->desc = lib->desc;
    inst->cfg = json_deep_copy(cfg);
    inst->st = INST_NEW;
    char perr[512] = "";
    inst->state = inst->desc->init(&core_host, inst, inst->cfg, perr, sizeof perr);
    if (!inst->state) {
        snprintf(err, errlen, "plugin \"%s\" failed to initialise: %s", lib->name,
                 perr[0] ? perr : "(the plugin gave no reason)");
        /* init failed: the plugin owns nothing we must free, but may have
         * registered routes or timers before failing */
        inst->st = INST_DEAD;
        while (inst->timers)
            core_host.timer_cancel(inst->timers);
        inst_route *r, *rn;
        for (r = inst->routes; r; r = rn) {
            rn = r->next;
            free(r->name);
            free(r);
        }
        httpc_cancel_owner(kd->http, inst);
        host_kv_cancel(inst, 0);
        /* cancelled transfers would call back into a plugin that never
         * became an instance; a plugin must not submit work from a failing init */
        loader_release(kd->loader, lib);
        json_decref(inst->cfg);
        free(inst->tenant);
        free(inst->prefix);
        free(inst->key);
        inst->magic = 0;
        free(inst);
        return NULL;
    }
    return inst;
}

int instance_start(koko_instance *inst, char *err, size_t errlen)
{
    if (inst->st != INST_NEW)
        return 0;
    char perr[512] = "";
    if (inst->desc->start && inst->desc->start(inst->state, perr, sizeof perr) != 0) {
        snprintf(err, errlen, "plugin \"%s\" failed to start: %s", inst->desc->name,
                 perr[0] ? perr : "(the plugin gave no reason)");
        return -1;
    }
    inst->st = INST_RUNNING;
    return 0;
}

void instance_ref(koko_instance *inst) { inst->refs++; }

const inst_route *instance_route(const koko_instance *inst, const char *name)
{
    if (inst->st == INST_DEAD)
        return NULL;
    for (const inst_route *r = inst->routes; r; r = r->next)
        if (strcmp(r->name, name) == 0)
            return r;
    return NULL;
}

static void instance_destroy(koko_instance *inst)
{
    kokod *kd = inst->kd;
    log_debug(inst->prefix, "instance destroyed");
    inst->st = INST_DEAD;
    inst->desc->destroy(inst->state);
    inst_route *r, *rn;
    for (r = inst->routes; r; r = rn) {
        rn = r->next;
        free(r->name);
        free(r);
    }
    if (inst->drain_ev)
        event_free(inst->drain_ev);
    loader_release(kd->loader, inst->lib);
    json_decref(inst->cfg);
    free(inst->tenant);
    free(inst->prefix);
    free(inst->key);
    inst->magic = 0;
    free(inst);
    n_draining--;
}

/* Polls until the plugin has drained (or the deadline passed), then cancels
 * leftovers and waits for their callbacks before destroy. */
static void drain_poll(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    koko_instance *inst = arg;
    kokod *kd = inst->kd;
    int late = util_now_ms() >= inst->drain_deadline;
    if (inst->st == INST_STOPPING && !late) {
        struct timeval tv = {0, DRAIN_POLL_MS * 1000};
        event_add(inst->drain_ev, &tv);
        return;
    }
    if (late && inst->st == INST_STOPPING)
        log_warn(inst->prefix, "did not drain within the deadline: cancelling what is left");
    inst->st = INST_DEAD; /* from here on: no new work for the plugin */
    while (inst->timers)
        core_host.timer_cancel(inst->timers);
    size_t n = httpc_cancel_owner(kd->http, inst);
    (void)n;
    host_kv_cancel(inst, 1);
    if (httpc_pending(kd->http, inst) > 0 || host_kv_pending(inst) > 0) {
        /* cancelled: wait for their callbacks to run */
        struct timeval tv = {0, DRAIN_POLL_MS * 1000};
        event_add(inst->drain_ev, &tv);
        return;
    }
    instance_destroy(inst);
}

static void on_drained(koko_instance *inst)
{
    if (inst->magic != INSTANCE_MAGIC || inst->st != INST_STOPPING)
        return;
    inst->st = INST_DEAD;
    /* destroy from the loop, never from inside the plugin's own call */
    struct timeval tv = {0, 0};
    event_add(inst->drain_ev, &tv);
}

void instance_release(koko_instance *inst)
{
    if (!inst || --inst->refs > 0)
        return;
    kokod *kd = inst->kd;
    n_draining++;
    unsigned drain_ms = kd->current ? kd->current->cfg->drain_ms : CONFIG_DEFAULT_DRAIN_MS;
    inst->drain_deadline = util_now_ms() + drain_ms;
    inst->drain_ev = event_new(kd->base, -1, 0, drain_poll, inst);
    if (inst->st == INST_NEW || !inst->desc->stop) {
        inst->st = INST_DEAD;
        struct timeval tv = {0, 0};
        event_add(inst->drain_ev, &tv);
        return;
    }
    inst->st = INST_STOPPING;
    struct timeval tv = {0, DRAIN_POLL_MS * 1000};
    event_add(inst->drain_ev, &tv);
    inst->desc->stop(inst->state, on_drained);
}
