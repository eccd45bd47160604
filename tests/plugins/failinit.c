/*
 * tests/plugins/failinit.c — an `llm` test plugin whose init always fails
 * with a message, so tests can check the host reports it with the location.
 */
#include <stdio.h>
#include "koko/host.h"
#include "koko/plugin.h"

static void *failinit_init(const koko_host *host, koko_instance *inst, const json_t *cfg, char *err, size_t errlen)
{
    (void)host;
    (void)inst;
    (void)cfg;
    snprintf(err, errlen, "cannot reach the model server (test)");
    return NULL;
}

static void failinit_generate(void *state, const koko_llm_request *req, koko_llm_fn done, void *arg)
{
    (void)state;
    (void)req;
    (void)done;
    (void)arg;
}

static void failinit_destroy(void *state) { (void)state; }

static const koko_llm_ops ops = {.size = sizeof ops, .generate = failinit_generate};

KOKO_EXPORT const koko_plugin koko_plugin_v1 = {
    .abi_major = KOKO_ABI_MAJOR, .abi_minor = KOKO_ABI_MINOR, .size = sizeof(koko_plugin),
    .signature = KOKO_ABI_SIGNATURE, .kind = KOKO_KIND_LLM, .name = "failinit", .version = "1",
    .description = "test: init fails", .init = failinit_init, .destroy = failinit_destroy, .ops = &ops,
};
