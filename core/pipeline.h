/*
 * pipeline.h — the message pipeline (DESIGN §4): route → enrich → generate
 * → decide, then answer the caller (/api/chat, kokoctl chat) or deliver
 * through the channel that submitted the message.
 *
 * Every job holds a reference to the generation it started in and finishes
 * there. Conversation history and language are kept per (tenant, channel,
 * conversation) — in process memory, bounded (least recently used
 * conversations are forgotten first).
 */
#ifndef CORE_PIPELINE_H
#define CORE_PIPELINE_H

#include <jansson.h>

#include "gen.h"
#include "koko/host.h"

struct kokod;
typedef struct pipeline pipeline;

typedef struct chat_input {
    const char *tenant;
    const char *text;
    const char *conversation_id; /* may be NULL: no history */
    const char *language;        /* hint, may be NULL */
    const char *channel;         /* "api" for /api/chat and kokoctl chat */
    const char *inbox;           /* may be NULL */
    const char *contact;         /* the customer's contact key ("chatwoot:17"), may be NULL: no memory */
} chat_input;

/* The answer, borrowed for the callback's duration. */
typedef struct chat_answer {
    const char *reply;          /* what the customer is told */
    const char *draft;          /* on a handoff by the core: the backend's answer, for the agents; else NULL */
    const char *language;
    json_t *sources;        /* [{"file","heading","score"}] */
    double confidence;
    int handoff;
    const char *handoff_reason; /* NULL unless handoff */
    const char *backend;    /* which backend answered */
    const char *route;      /* "default" or the route's name */
    json_t *attempts;       /* [{"backend","error"}] for backends that did not answer; NULL: none */
    double latency_ms;
} chat_answer;

typedef void (*chat_fn)(const chat_answer *a, void *arg);

pipeline *pipeline_new(struct kokod *kd);
void pipeline_free(pipeline *p);

/* Answer IN in generation G (tenant must exist in G). DONE runs later, exactly once. */
void pipeline_chat(pipeline *p, generation *g, const chat_input *in, chat_fn done, void *arg);

/* koko_host.submit: take a channel's message (copied), de-duplicate, answer
 * it and deliver the reply through the channel. */
void pipeline_submit(pipeline *p, koko_instance *channel, const koko_msg *msg, koko_submit_fn done, void *arg);

/* koko_host.conversation: ownership events from a channel. */
void pipeline_conversation(pipeline *p, koko_instance *channel, const char *conversation_id, koko_conv_event ev,
                           const char *detail);
/* "bot", "human" or "resolved" (tests, kokoctl). */
/* A dead letter (PAYLOAD, LEN bytes, borrowed) was put back into the queue as
 * entry QID: make that entry the one that answers its message (the dedup key
 * names the entry that owns a message; Redis gives a retried entry a new id). */
void pipeline_requeued(pipeline *p, const char *payload, size_t len, const char *qid);

/* Drop what kokod holds in memory of a conversation (turns, language): the
 * GDPR forget has deleted it from the store. */
void pipeline_forget_conv(pipeline *p, const char *tenant_name, const char *channel, const char *conversation_id);
const char *pipeline_owner(pipeline *p, const char *tenant_name, const char *channel, const char *conversation_id);

/* koko_host.tool_call. */
void pipeline_tool_call(koko_instance *inst, void *job, const char *name, const json_t *args, koko_tool_fn done,
                        void *arg);

/* Start consuming the durable inbound queue (kokod_listen, once the store is
 * open): unfinished entries of an earlier run come first. */
void pipeline_start(pipeline *p);
/* Stop claiming; from now on store callbacks only free what they hold
 * (kokod_free calls it before store_close). */
void pipeline_stop(pipeline *p);

/* koko_host.chunk_excerpt. */
const char *pipeline_chunk_excerpt(koko_instance *inst, void *job, size_t i);

/* Jobs in flight (status, graceful stop). */
size_t pipeline_inflight(const pipeline *p);

#endif
