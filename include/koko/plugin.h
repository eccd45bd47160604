/*
 * koko/plugin.h — the plugin ABI of kokod, and the plugin author's manual.
 *
 * A plugin is a shared object exporting ONE const data symbol, `koko_plugin_v1`,
 * of type `koko_plugin`. kokod checks the descriptor's version fields before it
 * calls any plugin code (they protect the rest, as in Varnish's vrt.h), then
 * calls the lifecycle functions below, always on the event-loop thread.
 *
 * ABI changelog (append-only; the major changes only when a field moves):
 *   1.0  first version: kinds channel, llm, tool; host vtable koko_host 1.0.
 *   1.1  koko_msg: kind, sender, is_private, auto_reply, subject, from, headers,
 *        content_type, skip, handoff, quiet_ms, attachments; koko_reply.question;
 *        koko_host.conversation.
 *   1.2  koko_llm_request: knowledge, knowledge_bytes, context_hash,
 *        customer_facts, job; koko_llm_result: cost_usd, cache_hit;
 *        koko_llm_ops: cache_info, cache_refresh; koko_host.tool_call.
 *   1.3  koko_llm_request: instruction, response_schema (tasks such as
 *        customer-memory extraction; KOKO_LLM_IS_TASK); koko_host: kv_get,
 *        kv_set, kv_set_nx, kv_del, kv_incr (plugin state in the store).
 *
 * Threading: every function here is called on the loop thread and must not
 * block it (no sleeping, no synchronous network or disk I/O beyond reading a
 * small file at init). Outbound HTTP goes through koko_host.http_submit.
 * A plugin that runs threads of its own talks back only through koko_host.post.
 */
#ifndef KOKO_PLUGIN_H
#define KOKO_PLUGIN_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#include "koko/message.h"

#ifdef __cplusplus
extern "C" {
#endif

#define KOKO_ABI_MAJOR 1
#define KOKO_ABI_MINOR 3
/* Build signature: changes when the compilation model changes in a way the
 * numbers do not capture (pointer size, struct packing). Compared as a string. */
#define KOKO_ABI_SIGNATURE "koko-abi-1/lp64"
#define KOKO_PLUGIN_SYMBOL "koko_plugin_v1"

#if defined(__GNUC__)
#define KOKO_EXPORT __attribute__((visibility("default")))
#else
#define KOKO_EXPORT
#endif

typedef enum koko_kind {
    KOKO_KIND_CHANNEL = 1, /* receives customer messages, delivers replies */
    KOKO_KIND_LLM = 2,     /* turns a request into a reply */
    KOKO_KIND_TOOL = 3,    /* functions the model may call */
} koko_kind;

typedef struct koko_host koko_host;         /* host services, see koko/host.h */
typedef struct koko_instance koko_instance; /* opaque: one plugin in one tenant */

/*
 * Diagnostics for validate(): report each problem with the path RELATIVE to
 * the plugin's config subtree ("api_key", "handoff.team_id", "inboxes[2]");
 * the host turns it into "FILE:LINE:COL: tenants.demo.channels.chatwoot.api_key: ...".
 * Report every problem, not just the first.
 */
typedef struct koko_diag koko_diag;
struct koko_diag {
    uint32_t size; /* sizeof(koko_diag) as built by the host */
    void (*error)(koko_diag *d, const char *relpath, const char *fmt, ...)
        __attribute__((format(printf, 3, 4)));
    void *priv; /* host-owned */
};

/* Called by the plugin when its instance has finished all outstanding work
 * after stop(). May be called from inside stop() if nothing was pending. */
typedef void (*koko_drained_fn)(koko_instance *inst);

/* ---- channel ---------------------------------------------------------- */

/* Outcome of a delivery, reported by the channel through koko_deliver_fn. */
typedef enum koko_status {
    KOKO_OK = 0,
    KOKO_ERR_TEMPORARY = 1, /* worth retrying later (5xx, 429, timeout) */
    KOKO_ERR_PERMANENT = 2, /* retrying will not help (4xx, bad config) */
    KOKO_ERR_CANCELLED = 3, /* the host cancelled the work (shutdown, drain deadline) */
} koko_status;

typedef void (*koko_deliver_fn)(koko_status st, const char *error, void *arg);

typedef struct koko_channel_ops {
    uint32_t size; /* sizeof(koko_channel_ops) as built by the plugin */
    /*
     * Deliver REPLY for a message this channel submitted. REPLY and everything
     * it points to is borrowed until DONE runs; copy what you keep. DONE must
     * run exactly once, later (never inside deliver). On reply->handoff the
     * channel hands the conversation to humans in its own way (Chatwoot: open
     * the conversation, private note) and also posts reply->text if non-empty.
     */
    void (*deliver)(void *state, const koko_reply *reply, koko_deliver_fn done, void *arg);
    /* Optional: show or clear a typing indicator for MSG's conversation.
     * Fire-and-forget; failures are the plugin's to log. */
    void (*typing)(void *state, const koko_msg *msg, int on);
} koko_channel_ops;

/* ---- llm -------------------------------------------------------------- */

/* Result of one generate() call; borrowed for the callback's duration. */
typedef struct koko_llm_result {
    uint32_t size;
    koko_status status;     /* KOKO_OK: text is the answer */
    const char *error;      /* why, when status != KOKO_OK */
    const char *text;       /* the reply to send (may be empty with handoff) */
    int handoff;            /* the backend asks for a human */
    const char *handoff_reason;
    double confidence;      /* 0..1, or < 0 when the backend has no opinion */
    const char *model;      /* e.g. "gemini-2.5-flash", "fallback" */
    uint64_t tokens_in;     /* prompt tokens, cached ones included */
    uint64_t tokens_cached; /* of tokens_in, served from a context cache */
    uint64_t tokens_out;
    const size_t *cited;    /* indexes into request->chunks the answer rests on */
    size_t n_cited;
    /* ---- 1.2 ---- */
    double cost_usd;        /* what this answer cost, from the backend's price table (cache storage included) */
    int cache_hit;          /* a context cache served part of the prompt */
} koko_llm_result;

typedef void (*koko_llm_fn)(const koko_llm_result *res, void *arg);

typedef struct koko_llm_ops {
    uint32_t size;
    /*
     * Answer REQ. REQ is borrowed until DONE runs. DONE runs exactly once,
     * later on the loop thread, also on failure, timeout and cancellation
     * (status KOKO_ERR_CANCELLED when the host stops the instance).
     */
    void (*generate)(void *state, const koko_llm_request *req, koko_llm_fn done, void *arg);
    /* ---- 1.2, optional ---- */
    /* The context caches this instance manages, as a JSON array of
     * {"name","model","tokens","created","expires","hits","tokens_saved","usd_saved"}; caller decrefs. */
    json_t *(*cache_info)(void *state);
    /* Rebuild the caches now (kokoctl cache refresh). DONE runs exactly once, later. */
    void (*cache_refresh)(void *state, koko_deliver_fn done, void *arg);
} koko_llm_ops;

/* ---- tool ------------------------------------------------------------- */

typedef void (*koko_tool_fn)(koko_status st, json_t *result, void *arg); /* RESULT: callee keeps ownership */

typedef struct koko_tool_ops {
    uint32_t size;
    /* Function declarations this tool offers: a JSON array of
     * {"name","description","parameters"(JSON Schema)}; borrowed, lives as long as the instance
     * and does not change: the host reads it once per generation. */
    const json_t *(*declarations)(void *state);
    /* Run function NAME with ARGS (borrowed). DONE runs exactly once, later. */
    void (*call)(void *state, const char *name, const json_t *args, koko_tool_fn done, void *arg);
} koko_tool_ops;

/* ---- the descriptor --------------------------------------------------- */

typedef struct koko_plugin {
    /* version fields first: they protect the rest */
    uint16_t abi_major;    /* KOKO_ABI_MAJOR the plugin was built against */
    uint16_t abi_minor;    /* KOKO_ABI_MINOR the plugin was built against */
    uint32_t size;         /* sizeof(koko_plugin) as built by the plugin */
    const char *signature; /* KOKO_ABI_SIGNATURE */

    koko_kind kind;
    const char *name;        /* unique: the name used in koko.yaml ([a-z0-9_-]+) */
    const char *version;     /* the plugin's own version, free form */
    const char *description; /* one line, shown by `kokoctl plugins` */

    /*
     * Check CFG (the plugin's config subtree, or an empty object when the
     * tenant names the plugin without config). No side effects: reload runs it
     * as a dry run. Report through DIAG; return the number of problems (0 = ok).
     * Optional (NULL = every config accepted).
     */
    int (*validate)(const json_t *cfg, koko_diag *diag);

    /*
     * Create the instance for one tenant. HOST lives until destroy(); INST
     * identifies this instance in every host call. CFG is borrowed: copy what
     * you keep. On failure write a reason into ERR and return NULL.
     */
    void *(*init)(const koko_host *host, koko_instance *inst, const json_t *cfg, char *err,
                  size_t errlen);

    /* Begin work (open connections, register nothing new). Optional. 0 = ok. */
    int (*start)(void *state, char *err, size_t errlen);

    /*
     * Stop taking new work and finish what is in flight; call DRAINED(inst)
     * when nothing is left (from inside stop if nothing was pending). The host
     * cancels leftover transfers and timers at its drain deadline. Optional.
     */
    void (*stop)(void *state, koko_drained_fn drained);

    /* Free everything. No host call is allowed from here on. */
    void (*destroy)(void *state);

    /* Kind-specific ops: const koko_channel_ops / koko_llm_ops / koko_tool_ops *.
     * Each begins with its own size, so it can grow by appending. */
    const void *ops;
} koko_plugin;

/* True when an ops table built by the plugin is large enough to hold FIELD. */
#define KOKO_OPS_HAS(ops, type, field) \
    ((ops) != NULL && (ops)->size >= offsetof(type, field) + sizeof(((type *)0)->field))

#ifdef __cplusplus
}
#endif
#endif
