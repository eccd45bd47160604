/*
 * plugins/chatwoot/chatwoot.h — what the Chatwoot channel's three files share.
 *
 * chatwoot.c holds the descriptor, the configuration (validate + parse) and the
 * instance's life cycle; webhook.c turns signed Chatwoot webhooks into
 * koko_msg submissions and ownership events; rest.c talks to Chatwoot's REST
 * API (replies, private notes, handoff, typing) with retries that never
 * double-post. Nothing here is exported from the .so: the build hides every
 * symbol but koko_plugin_v1.
 */
#ifndef KOKO_PLUGIN_CHATWOOT_H
#define KOKO_PLUGIN_CHATWOOT_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "koko/host.h"
#include "koko/plugin.h"

#define CW_DEFAULT_QUIET_MS 1500
#define CW_DEFAULT_TIMEOUT_MS 10000
#define CW_DEFAULT_MAX_ATTEMPTS 4
#define CW_DEFAULT_WINDOW_S 300
#define CW_DEFAULT_RETRY_BASE_MS 500
#define CW_RETRY_CAP_MS 30000       /* longest backoff between two attempts */
#define CW_RETRY_AFTER_CAP_MS 60000 /* longest Retry-After we wait for */
#define CW_SEEN_DELIVERIES 4096     /* X-Chatwoot-Delivery ids remembered */

/* The instance's settings, parsed from its validated config subtree. */
typedef struct cw_config {
    char *base_url; /* without a trailing slash */
    char *host;     /* base_url's host[:port], for the data_url check */
    long long account_id;
    char *api_token;
    char *webhook_secret; /* NULL: webhooks are not signed */
    long long *inboxes;   /* NULL: every inbox */
    size_t n_inboxes;
    char **reply_in; /* conversation statuses the bot answers in */
    size_t n_reply_in;
    long long team_id, assignee_id; /* 0: not configured */
    char **labels;                  /* added on handoff */
    size_t n_labels;
    char *note; /* private note template */
    uint32_t quiet_ms;
    uint32_t timeout_ms;
    int max_attempts;
    uint32_t retry_base_ms;
    int window_s;
    int attachments_handoff; /* 1: a non-audio file hands the conversation off */
} cw_config;

typedef struct cw_call cw_call;
typedef struct cw_delivery cw_delivery;
typedef struct typing_slot typing_slot;

/* One instance: one tenant's Chatwoot account. */
typedef struct cw {
    const koko_host *host;
    koko_instance *inst;
    cw_config cfg;

    /* recently seen X-Chatwoot-Delivery ids: a set plus a ring for eviction */
    json_t *seen;
    char *seen_ring[CW_SEEN_DELIVERIES];
    size_t seen_next;

    cw_call *calls;          /* REST calls in flight or waiting to retry */
    cw_delivery *deliveries; /* deliver() sequences not finished */
    typing_slot *typing;     /* conversations with a typing call in flight */
    size_t busy;             /* calls + deliveries + webhooks awaiting submit() */
    int stopping;
    koko_drained_fn drained;
    unsigned rand_state;
} cw;

/* ---- chatwoot.c ---- */

/* Something finished: call drained() when stopping and nothing is left. */
void cw_idle_check(cw *c);
/* A JSON body {"error": MSG} for respond(); caller frees. */
char *cw_error_json(const char *msg);

/* ---- webhook.c ---- */

/* The route function for POST /webhook/<tenant>/chatwoot (ARG is the cw). */
void cw_webhook(koko_request *req, void *arg);
/* Forget every remembered delivery id (destroy). */
void cw_seen_free(cw *c);
/* HMAC-SHA256(secret, "<ts>.<body>") as lowercase hex into OUT (65 bytes). */
void cw_sign(const char *secret, const char *ts, const char *body, size_t len, char out[65]);

/* ---- rest.c ---- */

void cw_deliver(void *state, const koko_reply *reply, koko_deliver_fn done, void *arg);
void cw_typing(void *state, const koko_msg *msg, int on);
/* Free what is left at destroy (the host has cancelled transfers and timers):
 * unfinished deliveries are told KOKO_ERR_CANCELLED. */
void cw_rest_free(cw *c);
/* The built-in private-note template (Hungarian and English). */
extern const char cw_default_note[];

#endif
