/*
 * tests/sdk/hello.c — an out-of-tree sample plugin, built by tests/sdk/run.sh
 * against the INSTALLED SDK only (pkg-config koko-plugin), the way a third
 * party would build one: an `llm` backend that answers "hello".
 *
 * It shows the minimum a plugin needs: one exported descriptor, a
 * validate() that reports unknown keys, init/destroy, and a generate() that
 * answers later (on a zero-delay host timer), never inside the call.
 */
#include <stdlib.h>
#include <string.h>

#include <koko/host.h>
#include <koko/plugin.h>

typedef struct hello {
    const koko_host *host;
    koko_instance *inst;
} hello;

typedef struct pending {
    koko_llm_fn done;
    void *arg;
} pending;

static int hello_validate(const json_t *cfg, koko_diag *d)
{
    int n = 0;
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)cfg, key, v)
    {
        d->error(d, key, "unknown key \"%s\" (hello takes no settings)", key);
        n++;
    }
    return n;
}

static void *hello_init(const koko_host *host, koko_instance *inst, const json_t *cfg, char *err, size_t errlen)
{
    (void)cfg;
    (void)err;
    (void)errlen;
    hello *h = calloc(1, sizeof *h);
    if (!h)
        return NULL;
    h->host = host;
    h->inst = inst;
    return h;
}

static void answer(void *arg)
{
    pending *p = arg;
    koko_llm_result res = {
        .size = sizeof res,
        .status = KOKO_OK,
        .text = "hello",
        .confidence = 1.0,
        .model = "hello",
    };
    p->done(&res, p->arg);
    free(p);
}

static void hello_generate(void *state, const koko_llm_request *req, koko_llm_fn done, void *arg)
{
    hello *h = state;
    (void)req;
    pending *p = malloc(sizeof *p);
    if (!p) {
        /* DONE must not run inside generate(): the core's step deadline moves on */
        h->host->log(h->inst, KOKO_LOG_ERROR, "out of memory");
        return;
    }
    p->done = done;
    p->arg = arg;
    h->host->timer_start(h->inst, 0, answer, p);
}

static void hello_destroy(void *state) { free(state); }

static const koko_llm_ops hello_ops = {.size = sizeof hello_ops, .generate = hello_generate};

KOKO_EXPORT const koko_plugin koko_plugin_v1 = {
    .abi_major = KOKO_ABI_MAJOR,
    .abi_minor = KOKO_ABI_MINOR,
    .size = sizeof(koko_plugin),
    .signature = KOKO_ABI_SIGNATURE,
    .kind = KOKO_KIND_LLM,
    .name = "hello",
    .version = "1.0",
    .description = "out-of-tree sample: answers hello",
    .validate = hello_validate,
    .init = hello_init,
    .destroy = hello_destroy,
    .ops = &hello_ops,
};
