/*
 * core/custmem.h — customer memory: what the assistant remembers about each
 * customer of a tenant. Facts live in the store, are put into the prompt at
 * the enrich stage, are extracted from a conversation when it is resolved
 * (by the tenant's first LLM backend that can), and are exported or
 * forgotten completely on request (GDPR). doc/memory.md is the user's guide,
 * doc/state.md the key schema.
 *
 * Contacts. A contact key is "{channel}:{id}": "chatwoot:17",
 * "email:anna@example.hu", "discord:81234". The channel qualifies the
 * channel's own customer id, so ids of two channels never collide. Keys of
 * one person can be linked (custmem_put with "link"): the linked key's facts
 * move to the canonical key, and later lookups of the linked key follow the
 * link. A forget of any key of a person forgets all of them.
 *
 * Store keys ({T} tenant, {C} contact key escaped with store_key_part):
 *   {T}:contact:{C}:facts  hash: fact id -> fact JSON; "@link" -> canonical
 *                          key (on a linked key); "@alias:{key}" -> linked
 *                          at (on the canonical key)
 *   {T}:contact:{C}:convs  hash: {channel}:{conv} -> first seen (pipeline.c)
 *   {T}:extract            hash: {channel}:{conv} -> extraction job JSON
 *                          {"contact","attempts","next_at","since","error"}
 *   {T}:extract-lease:{channel}:{conv}  string with TTL: the replica running it
 *
 * A fact: {"id","text","kind","source","created","updated","expires"?}, kind
 * one of preference, fact, issue, decision; times are unix seconds; id is a
 * hash of the normalised text (the same words give the same id).
 *
 * Every asynchronous call below answers through a custmem_fn exactly once,
 * always later on the loop thread (never from inside the call), with an HTTP
 * status: 200 and a JSON document, or 400/404/409/503 and an error message.
 */
#ifndef CORE_CUSTMEM_H
#define CORE_CUSTMEM_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

struct kokod;
struct generation;

#define CUSTMEM_TEXT_MAX 500     /* bytes of one fact's text */
#define CUSTMEM_FACTS_MAX 200    /* facts kept per contact; the oldest-updated go first */
#define CUSTMEM_CONTACT_MAX 200  /* bytes of a contact key */

/* ---- pure functions (no store; unit-tested in tests/test_custmem.c) ---- */

/* 1 when KEY is a contact key: "{channel}:{id}", channel [a-z0-9_-]+, id
 * non-empty, at most CUSTMEM_CONTACT_MAX bytes, no control characters.
 * Otherwise 0 and a message in ERR. */
int custmem_contact_ok(const char *key, char *err, size_t errlen);

/* Check one fact given from outside (the API or a model's extraction) and
 * return a new normalised fact object {"text","kind","expires"?,"replaces"?}
 * (caller decrefs), or NULL with the reason in ERR. Accepted: text (1 ..
 * CUSTMEM_TEXT_MAX bytes of UTF-8, trimmed), kind (default "fact"), expires
 * (unix seconds, or "YYYY-MM-DD" = the end of that day UTC, or null),
 * replaces (the id of a fact it corrects). Other keys are refused. */
json_t *custmem_fact_check(const json_t *in, char *err, size_t errlen);

/* The id of a fact text: 16 hex digits of a hash of its folded words. Writes
 * 17 bytes into OUT. */
void custmem_fact_id(const char *text, char out[17]);

/*
 * Merge checked facts INCOMING (array from custmem_fact_check) into
 * EXISTING (object id -> fact, modified in place), at time NOW, from SOURCE
 * (a conversation "chatwoot:42", "api", may be NULL). A fact with
 * "replaces" updates that fact (its text, kind and id change: the old id is
 * removed); one whose words equal an existing fact's, or nearly (3/4 of the
 * words of the longer shared, same kind), refreshes that fact instead of
 * adding a second; anything else is added. When more than
 * CUSTMEM_FACTS_MAX remain, the least recently updated are dropped.
 * Returns {"set": [fact...], "removed": [id...]} — what to write (caller
 * decrefs).
 */
json_t *custmem_merge(json_t *existing, const json_t *incoming, const char *source, int64_t now);

/*
 * The facts to put into a prompt: those of FACTS (object id -> fact) not
 * expired at NOW, most relevant to TEXT first (shared words), then most
 * recently updated, while their estimated tokens (bytes / 4 + 4 each) fit
 * BUDGET_TOKENS. Returns an array of strings "kind: text (YYYY-MM-DD)"
 * (caller decrefs; empty when none).
 */
json_t *custmem_select(const json_t *facts, const char *text, size_t budget_tokens, int64_t now);

/* The fixed instruction and the JSON response schema of an extraction. Borrowed. */
const char *custmem_extract_instruction(void);
const json_t *custmem_extract_schema(void);

/* Parse a model's extraction answer ({"facts":[...]} as text, possibly in a
 * ```json fence): the checked facts (array, caller decrefs), or NULL with the
 * reason in ERR. Facts that fail the check are skipped and counted in
 * *SKIPPED. */
json_t *custmem_parse_extraction(const char *answer, size_t *skipped, char *err, size_t errlen);

/* ---- the daemon's side ---- */

typedef void (*custmem_fn)(int status, json_t *doc /* stolen, NULL on error */, const char *error, void *arg);
typedef void (*custmem_facts_fn)(json_t *facts /* stolen, may be NULL */, void *arg);

/* Start the extraction runner (a timer on KD's loop) / stop it: after
 * custmem_stop no new work starts, and work in flight ends quietly. */
void custmem_start(struct kokod *kd);
void custmem_stop(struct kokod *kd);

/* Tenant T's memory: operator memory (identity, decisions) and counts
 * {"customers","facts","pending_extractions"}. */
void custmem_summary(struct kokod *kd, struct generation *g, const char *tenant, custmem_fn done, void *arg);

/* Contact C's facts: {"tenant","contact","canonical","aliases":[],"facts":[...]}
 * (facts sorted by update time, newest first). */
void custmem_get(struct kokod *kd, const char *tenant, const char *contact, custmem_fn done, void *arg);

/* Add or update facts by hand. BODY: {"facts":[fact...], "link":["key",...]?,
 * "delete":["id",...]?} (borrowed). Answers as custmem_get, after writing. */
void custmem_put(struct kokod *kd, const char *tenant, const char *contact, const json_t *body, custmem_fn done,
                 void *arg);

/* Everything stored about contact C (and the keys linked to it):
 * facts, conversations with state and history, pending extraction jobs,
 * queue entries and dead letters that carry the contact's messages. */
void custmem_export(struct kokod *kd, const char *tenant, const char *contact, custmem_fn done, void *arg);

/* Delete every trace of contact C (and the keys linked to it) from the
 * store and from kokod's memory; answers the deletion receipt
 * {"receipt_id","tenant","contact","at","deleted":{kind: count},"nothing_left"}
 * and logs the receipt id with the counts (never the contact). */
void custmem_forget(struct kokod *kd, const char *tenant, const char *contact, custmem_fn done, void *arg);

/*
 * Extract facts now. REQ (borrowed): {"conversation_id": "...", "channel"?:
 * "chatwoot"} — a stored conversation — or {"transcript": [{"role","text"}]
 * | "text", "contact"?: key}. Facts are stored when the contact is known;
 * answers {"facts":[...extracted], "stored": n, "backend"}.
 */
void custmem_extract(struct kokod *kd, struct generation *g, const char *tenant, const json_t *req,
                     custmem_fn done, void *arg);

/* Conversation CONV of CHANNEL (tenant T) was resolved: queue its
 * extraction durably (the runner does it soon, retrying with backoff). */
void custmem_resolved(struct kokod *kd, const char *tenant, const char *channel, const char *conv);

/* Contact C's facts (object id -> fact, following a link): DONE(facts or NULL
 * when none or the store failed, ARG), later, on the loop. The read goes out
 * from inside this call, so it joins the store batch of reads issued beside
 * it (the pipeline loads it with the conversation's state and history). */
void custmem_load(struct kokod *kd, const char *tenant, const char *contact, custmem_facts_fn done, void *arg);

/* The facts for a prompt (custmem_select over C's facts, following a link):
 * DONE(facts array or NULL when none/failed, ARG), later, on the loop. */
void custmem_prompt_facts(struct kokod *kd, const char *tenant, const char *contact, const char *text,
                          size_t budget_tokens, custmem_facts_fn done, void *arg);

#endif
