/*
 * koko/message.h — the channel-neutral shapes that flow through the pipeline.
 *
 * A channel turns its event into a koko_msg and submits it; the core routes,
 * enriches and asks the LLM chain with a koko_llm_request; the answer comes
 * back to the channel as a koko_reply. Every struct here starts with its own
 * size so it can grow by appending fields (read a field only when
 * KOKO_HAS_FIELD says the producer knew about it).
 *
 * Ownership: these structs are always BORROWED by whoever receives them, for
 * the duration of the call or until the stated callback runs. Copy to keep.
 */
#ifndef KOKO_MESSAGE_H
#define KOKO_MESSAGE_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KOKO_HAS_FIELD(p, type, field) \
    ((p)->size >= offsetof(type, field) + sizeof(((type *)0)->field))

/* What kind of event a channel message is (ABI 1.1). */
typedef enum koko_msg_kind {
    KOKO_MSG_INCOMING = 0, /* from the customer */
    KOKO_MSG_OUTGOING = 1, /* sent to the customer (by an agent, a bot, or us) */
    KOKO_MSG_ACTIVITY = 2, /* system notices: "conversation was resolved by ..." */
    KOKO_MSG_OTHER = 3,    /* templates and anything else never answered */
} koko_msg_kind;

/* Who wrote it (ABI 1.1). */
typedef enum koko_sender {
    KOKO_SENDER_CONTACT = 0, /* the customer */
    KOKO_SENDER_AGENT = 1,   /* a human agent */
    KOKO_SENDER_BOT = 2,     /* a bot: us, another agent bot, an assistant */
} koko_sender;

/* A file that came with a message (ABI 1.1). */
typedef struct koko_attachment {
    const char *kind;         /* "audio", "image", "video", "file", ... */
    const char *url;          /* where to fetch it, may be NULL */
    const char *content_type; /* MIME type, may be NULL */
    uint64_t size;            /* bytes, 0 = unknown */
} koko_attachment;

/* One inbound customer message. */
typedef struct koko_msg {
    uint32_t size;               /* sizeof(koko_msg) as built by the producer */
    const char *tenant;          /* set by the host on submit; channels leave NULL */
    const char *channel;         /* set by the host: the channel plugin's name */
    const char *msg_id;          /* channel-unique id: de-duplication key (required) */
    const char *conversation_id; /* the channel's conversation id (required) */
    const char *contact_id;      /* stable customer key within the channel, may be NULL */
    const char *inbox;           /* channel sub-source (Chatwoot inbox id), may be NULL */
    const char *text;            /* the customer's words, UTF-8 (may be empty with attachments) */
    const char *language;        /* ISO 639-1 hint from the channel, may be NULL */
    int64_t created_at;          /* unix seconds, 0 = unknown */
    const json_t *meta;          /* channel-private data needed again at deliver time, may be NULL */

    /* ---- ABI 1.1: what the guard, coalesce and ownership stages read.
     * Zero means "an ordinary customer message"; fill what the channel knows. */
    koko_msg_kind kind;
    koko_sender sender;
    int is_private;              /* an internal note: never answered */
    int auto_reply;              /* the channel itself flags an automatic reply or bounce */
    const char *subject;         /* e-mail subject, may be NULL */
    const char *from;            /* sender address (e-mail), may be NULL */
    const json_t *headers;       /* e-mail headers {"Name": "value"}, may be NULL */
    const char *content_type;    /* MIME type of an e-mail, e.g. "multipart/report; report-type=delivery-status" */
    const char *skip;            /* the channel's own reason not to answer (inbox not served, status), or NULL */
    const char *handoff;         /* the channel asks for a human for this message (reason), or NULL */
    uint32_t quiet_ms;           /* coalescing window for the conversation; 0 = answer each message */
    const koko_attachment *attachments;
    size_t n_attachments;
} koko_msg;

/* One retrieved knowledge-base passage. */
typedef struct koko_chunk {
    const char *file;    /* e.g. "kb/demo/pricing.md" */
    const char *heading; /* heading path, e.g. "Árak › Kiszállás" */
    const char *text;    /* the whole chunk, Markdown stripped */
    const char *excerpt; /* its sentences most relevant to the question; NULL until a backend asked for it
                          * with koko_host.chunk_excerpt (ABI 1.2) */
    double score;        /* BM25 */
    double coverage;     /* 0..1: IDF-weighted share of the question's terms it contains */
} koko_chunk;

/* One earlier turn of the conversation, oldest first. */
typedef struct koko_turn {
    const char *role; /* "user" or "assistant" */
    const char *text;
} koko_turn;

/* What an LLM backend is asked to answer. */
typedef struct koko_llm_request {
    uint32_t size;
    const char *tenant;
    const char *conversation_id; /* may be NULL */
    const char *language;        /* ISO 639-1: answer in this language */
    const char *const *languages; /* the tenant's languages, first = default */
    size_t n_languages;
    const char *text;             /* the customer's message (coalesced messages joined) */
    const koko_turn *history;     /* earlier turns, oldest first */
    size_t n_history;
    const koko_chunk *chunks;     /* retrieved passages, best first */
    size_t n_chunks;
    const json_t *persona;        /* memory/<tenant>/identity.json, never NULL (may be {}) */
    const json_t *decisions;      /* memory/<tenant>/decisions.json, never NULL (may be []) */
    const json_t *tools;          /* function declarations offered, JSON array, never NULL */
    const char *route;            /* name of the route that matched ("default" when none) */
    int want_handoff;             /* the route or the customer asked for a human */

    /* ---- ABI 1.2 ---- */
    const char *knowledge;        /* the whole knowledge base as text, one "[file › heading]" block per
                                   * chunk; NULL when the core has none. A backend sends it whole when
                                   * it fits its context budget, else it uses chunks. */
    size_t knowledge_bytes;
    const char *context_hash;     /* hex hash of persona + decisions + knowledge (+ the tenant's tool
                                   * declarations): a context-cache key; changes when any of them changes */
    const json_t *customer_facts; /* facts remembered about this customer (array), may be NULL */
    void *job;                    /* opaque: pass to koko_host.tool_call while answering this request */

    /* ---- ABI 1.3 ---- */
    const char *instruction;      /* non-NULL: not a customer's message but a task for the model (the core's
                                   * customer-memory extraction). Use INSTRUCTION as the whole system
                                   * instruction and TEXT as the input; send no persona, knowledge, history,
                                   * tools or context cache. A backend that cannot do such tasks answers
                                   * KOKO_ERR_PERMANENT. The core sends tasks only to plugins built against
                                   * ABI 1.3 or later. */
    const json_t *response_schema; /* with instruction, may be NULL: answer with JSON of this schema (the subset
                                   * Gemini and OpenAI share: type, properties, required, items, enum,
                                   * description; every object lists all its properties as required) */
} koko_llm_request;

/* 1 when REQ is a task (ABI 1.3 instruction) rather than a customer's message. */
#define KOKO_LLM_IS_TASK(req)                                                                                    \
    ((req)->size >= offsetof(koko_llm_request, response_schema) + sizeof(const json_t *) && (req)->instruction)

/* What the core asks a channel to deliver. */
typedef struct koko_reply {
    uint32_t size;
    const koko_msg *msg;         /* the (last) message this answers */
    const char *text;            /* reply text, may be empty when handoff */
    const char *language;
    int handoff;                 /* hand the conversation to humans */
    const char *handoff_reason;  /* short operator-facing reason */
    const char *draft;           /* for handoff: the draft answer, for the private note */
    const json_t *sources;       /* [{"file","heading","score"}] */
    double confidence;
    const char *backend;         /* which LLM backend answered */
    const char *idempotency_key; /* stable across retries of this delivery */
    /* ---- ABI 1.1 ---- */
    const char *question;        /* the customer's words answered (coalesced messages joined) */
    /* ---- ABI 1.2 ---- */
    int redelivery;              /* an earlier attempt at this reply may have reached the customer (its
                                  * queue entry is processed again after a crash or a failed delivery):
                                  * a channel that can look, checks before posting (idempotency_key) */
} koko_reply;

#ifdef __cplusplus
}
#endif
#endif
