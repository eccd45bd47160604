/*
 * pipeline.c — route, enrich, generate, decide; answer or deliver.
 *
 * A job walks the LLM chain one backend at a time. Each backend gets a
 * deadline from the core as well as its own timeouts; a backend that misses
 * it is recorded as failed and the next one is asked, and its late answer is
 * ignored when it comes (the job lives until every call it made has called
 * back). If the whole chain fails, the core itself answers with the
 * persona's holding message and hands off — a customer is never left with
 * nothing.
 */
#include "kokoconf.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <event2/event.h>

#include "kokod.h"
#include "log.h"
#include "memory.h"
#include "custmem.h"
#include "pipeline.h"
#include "guard.h"
#include "router.h"
#include "store.h"
#include "text.h"
#include "util.h"

#define MAX_HITS 5
#define EXCERPT_CHARS 600
/* Typing shows only for answers slower than this: a quick answer needs no
 * indicator, and two REST calls fewer per message. */
#define TYPING_DELAY_MS 300
#define CONV_CAP 100000
#define DEDUP_TTL_MS (24LL * 3600 * 1000)
#define REPLY_TTL_MS (7LL * 24 * 3600 * 1000)
#define HOLD_CAP 512      /* queue entries held in process at most */
#define CLAIM_BATCH 128
#define POLL_MS 100       /* claim this often when the queue looked empty */
#define FRESH_RING 1024   /* just-accepted entries remembered for their first claim */

/* ---- conversations: small chained hash + LRU list ---- */

typedef enum owner { OWNER_BOT = 0, OWNER_HUMAN, OWNER_RESOLVED } owner;
static const char *const owner_names[] = {"bot", "human", "resolved"};

/* A channel message accepted and not answered yet: a deep copy, with the
 * durable queue entries it stands for (usually one; more when a message was
 * queued twice, e.g. accepted again after a crash before its dedup key). */
typedef struct msgcopy {
    koko_msg m;
    char *strs[13];
    json_t *meta, *headers;
    koko_attachment *att;
    char **qids;     /* queue entry ids to ack once this message is answered */
    size_t n_qids;
    int attempts;    /* deliveries of the entry, this one included (1 = first) */
    struct msgcopy *next;
} msgcopy;

struct job;
struct pipeline;

typedef struct conv {
    char *key;
    char *skey;       /* store key prefix "T:conv:{channel}:{conv}" (parts escaped) */
    char lang[8];
    koko_turn *turns; /* oldest first; role static, text owned */
    size_t n_turns;
    owner owner;
    unsigned version; /* bumped by every local change: a load that raced one is not applied */
    int loading;      /* loads in flight: not evicted meanwhile */
    int handoff_pending; /* a handoff is being delivered: owner human here, not yet in the store */
    /* coalescing: messages waiting for one answer, the quiet timer, the job answering them */
    struct pipeline *p;
    msgcopy *queue, *queue_tail;
    size_t n_queue;
    struct event *quiet_ev;
    struct job *running;
    int typing_on;  /* a typing "on" went out and no "off" yet */
    json_t *facts;  /* the customer's facts (id -> fact), read with the state; NULL: none or not read */
    int facts_read; /* facts is what the store said at the last load */
    struct conv *hnext;         /* hash chain */
    struct conv *lru_prev, *lru_next;
} conv;

/* Queue entry ids this process holds (claimed, not acked or failed yet). */
typedef struct held {
    char *id;
    struct held *hnext;
    struct held *all_prev, *all_next; /* every held entry, for lease renewal */
} held;

/* The conversation table starts small and doubles past one conversation per
 * bucket (a fixed 65,536 cost 512 KiB of touched memory at 5,000 of them). */
#define CONV_BUCKETS_MIN 1024
/* Held entries are at most HOLD_CAP (plus a few in the spool's moves). */
#define HELD_BUCKETS 1024

struct pipeline {
    kokod *kd;
    conv **buckets;  /* nbuckets chains, a power of two */
    size_t nbuckets;
    conv *lru_head, *lru_tail; /* head = most recent */
    size_t n_convs;
    held *hbuckets[HELD_BUCKETS];
    held *all_held;
    size_t n_held;
    struct event *renew_ev; /* extends the leases of held entries every lease/3 */
    struct event *spool_ev; /* moves the local spool into the store when it is reachable */
    int spool_moving;       /* moves in flight (+1 while a batch is issued) */
    int spool_full;         /* the last claim was a full batch: claim again at once */
    size_t spool_moved;
    size_t inflight;
    json_t *budget_alerts;  /* tenant name -> unix time of its last "budget spent" alert */
    /* the queue consumer */
    struct event *pump_ev;
    char consumer[160];
    int claiming;   /* a claim is in flight */
    int kick_again; /* a message was accepted while it was: claim again when it returns */
    /* entries this process accepted and wrote the dedup key for, not claimed yet:
     * their claim needs no dedup read (a ring; one pushed out is read as usual) */
    char *fresh[FRESH_RING];
    size_t fresh_next;
    int closing;  /* pipeline_stop() ran: store callbacks only free */
    /* jobs waiting on a backend, oldest deadline first, and the timer for the head */
    struct job *dl_head, *dl_tail;
    struct event *dl_ev;
};

static size_t conv_bucket(const pipeline *p, const char *key)
{
    return (size_t)(util_fnv1a64(key, strlen(key)) & (p->nbuckets - 1));
}

static size_t held_bucket(const char *key)
{
    return (size_t)(util_fnv1a64(key, strlen(key)) & (HELD_BUCKETS - 1));
}

/* Double the conversation table (rehashing every chain). */
static void conv_table_grow(pipeline *p)
{
    size_t n = p->nbuckets * 2;
    conv **nb = xcalloc(n, sizeof *nb);
    for (size_t b = 0; b < p->nbuckets; b++)
        for (conv *c = p->buckets[b], *next; c; c = next) {
            next = c->hnext;
            size_t i = (size_t)(util_fnv1a64(c->key, strlen(c->key)) & (n - 1));
            c->hnext = nb[i];
            nb[i] = c;
        }
    free(p->buckets);
    p->buckets = nb;
    p->nbuckets = n;
}

static void lru_unlink(pipeline *p, conv *c)
{
    if (c->lru_prev)
        c->lru_prev->lru_next = c->lru_next;
    else
        p->lru_head = c->lru_next;
    if (c->lru_next)
        c->lru_next->lru_prev = c->lru_prev;
    else
        p->lru_tail = c->lru_prev;
    c->lru_prev = c->lru_next = NULL;
}

static void lru_push(pipeline *p, conv *c)
{
    c->lru_next = p->lru_head;
    if (p->lru_head)
        p->lru_head->lru_prev = c;
    p->lru_head = c;
    if (!p->lru_tail)
        p->lru_tail = c;
}

static void msgcopy_free(msgcopy *mc)
{
    for (size_t i = 0; i < sizeof mc->strs / sizeof *mc->strs; i++)
        free(mc->strs[i]);
    json_decref(mc->meta);
    json_decref(mc->headers);
    if (mc->att)
        for (size_t i = 0; i < mc->m.n_attachments; i++) {
            free((char *)mc->att[i].kind);
            free((char *)mc->att[i].url);
            free((char *)mc->att[i].content_type);
        }
    free(mc->att);
    for (size_t i = 0; i < mc->n_qids; i++)
        free(mc->qids[i]);
    free(mc->qids);
    free(mc);
}

static void conv_free(conv *c)
{
    json_decref(c->facts);
    while (c->queue) {
        msgcopy *n = c->queue->next;
        msgcopy_free(c->queue);
        c->queue = n;
    }
    if (c->quiet_ev)
        event_free(c->quiet_ev);
    for (size_t i = 0; i < c->n_turns; i++)
        free((char *)c->turns[i].text);
    free(c->turns);
    free(c->key);
    free(c->skey);
    free(c);
}

static void conv_remove(pipeline *p, conv *c)
{
    conv **pp = &p->buckets[conv_bucket(p, c->key)];
    while (*pp != c)
        pp = &(*pp)->hnext;
    *pp = c->hnext;
    lru_unlink(p, c);
    p->n_convs--;
    conv_free(c);
}

/* "T:conv:{channel}:{conv}" for the conversation key "T\x1fchannel\x1fconv" (caller frees). */
static char *conv_store_prefix(const char *key)
{
    const char *a = strchr(key, '\x1f');
    const char *b = a ? strchr(a + 1, '\x1f') : NULL;
    if (!b)
        return xstrdup(key);
    char *tn = util_asprintf("%.*s", (int)(a - key), key), *chn = util_asprintf("%.*s", (int)(b - a - 1), a + 1);
    char *ch = store_key_part(chn), *id = store_key_part(b + 1);
    char *k = util_asprintf("%s:conv:%s:%s", tn, ch, id);
    free(tn);
    free(chn);
    free(ch);
    free(id);
    return k;
}

static conv *conv_get(pipeline *p, const char *key, int create)
{
    size_t b = conv_bucket(p, key);
    for (conv *c = p->buckets[b]; c; c = c->hnext)
        if (strcmp(c->key, key) == 0) {
            lru_unlink(p, c);
            lru_push(p, c);
            return c;
        }
    if (!create)
        return NULL;
    if (p->n_convs >= CONV_CAP) {
        conv *victim = p->lru_tail;
        while (victim && (victim->queue || victim->running || victim->loading || victim->owner != OWNER_BOT))
            victim = victim->lru_prev;
        if (victim)
            conv_remove(p, victim);
    }
    if (p->n_convs >= p->nbuckets) {
        conv_table_grow(p);
        b = conv_bucket(p, key);
    }
    conv *c = xcalloc(1, sizeof *c);
    c->p = p;
    c->key = xstrdup(key);
    c->skey = conv_store_prefix(key);
    c->hnext = p->buckets[b];
    p->buckets[b] = c;
    lru_push(p, c);
    p->n_convs++;
    return c;
}

static void conv_add_turn(conv *c, const char *role, const char *text, unsigned keep)
{
    if (keep == 0)
        return;
    if (c->n_turns >= keep * 2) {
        free((char *)c->turns[0].text);
        memmove(c->turns, c->turns + 1, (c->n_turns - 1) * sizeof *c->turns);
        c->n_turns--;
    }
    c->turns = realloc(c->turns, (c->n_turns + 1) * sizeof *c->turns);
    c->turns[c->n_turns].role = role;
    c->turns[c->n_turns].text = xstrdup(text);
    c->n_turns++;
}

/* ---- conversation state in the store: the truth; the table above is its cache ----
 * {T}:conv:{channel}:{conv}:state   hash: owner, lang, contact
 * {T}:conv:{channel}:{conv}:history list: the last history_turns*2 turns, {"role","text"}
 * {T}:contact:{C}:convs             hash: {channel}:{conv} -> first seen (unix time)
 * Writes go out after each change; loads run before a message is taken and
 * before an API chat, so a restarted kokod or another replica continues the
 * conversation where it was. */

static void on_state_written(const store_result *r, void *arg)
{
    char *what = arg;
    if (r->status != STORE_OK && r->status != STORE_E_CLOSED)
        log_warn("pipeline", "%s not recorded: %s", what, r->error ? r->error : "store error");
    free(what);
}

static void conv_state_put(conv *c, const char *field, const char *value)
{
    store *st = c->p->kd->store;
    if (!st)
        return;
    char *k = util_asprintf("%s:state", c->skey);
    store_hash_set(st, k, field, value, strlen(value), on_state_written, util_asprintf("%s %s=%s", k, field, value));
    free(k);
}

static void conv_history_put(conv *c, const char *role, const char *text, unsigned keep)
{
    store *st = c->p->kd->store;
    if (!st || keep == 0)
        return;
    json_t *o = json_pack("{s:s,s:s}", "role", role, "text", text);
    char *v = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!v)
        return;
    char *k = util_asprintf("%s:history", c->skey);
    store_list_push(st, k, v, strlen(v), (int64_t)keep * 2, on_state_written, util_asprintf("a turn of %s", k));
    free(k);
    free(v);
}

static const char *role_static(const char *role)
{
    return role && strcmp(role, "assistant") == 0 ? "assistant" : "user";
}

typedef void (*conv_loaded_fn)(conv *c, void *arg);

typedef struct conv_load {
    pipeline *p;
    char *key;
    char *contact; /* the message's contact id: index the conversation on first sight */
    char *tenant;
    unsigned version;
    int have_contact; /* the state hash names a contact already */
    json_t *state;    /* owner, lang from the store (NULL: none) */
    int waiting;      /* of the state and history reads, sent at once */
    int hist_ok;      /* the history was read: it replaces the cache's turns */
    int want_facts;   /* the customer's facts are read too */
    json_t *facts;    /* what that read gave (NULL: none) */
    koko_turn *hist;
    size_t n_hist;
    conv_loaded_fn done;
    void *arg;
} conv_load;

static void conv_load_finish(conv_load *cl)
{
    pipeline *p = cl->p;
    conv *c = conv_get(p, cl->key, 1);
    c->loading--;
    if (!p->closing && c->version == cl->version) {
        const char *o = json_string_value(json_object_get(cl->state, "owner"));
        for (int i = 0; o && !c->handoff_pending && i < 3; i++)
            if (strcmp(o, owner_names[i]) == 0)
                c->owner = (owner)i;
        const char *l = json_string_value(json_object_get(cl->state, "lang"));
        if (l)
            snprintf(c->lang, sizeof c->lang, "%s", l);
        if (cl->hist_ok) {
            for (size_t i = 0; i < c->n_turns; i++)
                free((char *)c->turns[i].text);
            free(c->turns);
            c->turns = cl->hist;
            c->n_turns = cl->n_hist;
            cl->hist = NULL;
            cl->n_hist = 0;
        }
        if (cl->want_facts) {
            json_decref(c->facts);
            c->facts = cl->facts;
            cl->facts = NULL;
            c->facts_read = 1;
        }
    }
    json_decref(cl->facts);
    for (size_t i = 0; i < cl->n_hist; i++)
        free((char *)cl->hist[i].text);
    free(cl->hist);
    if (!p->closing && !cl->have_contact && cl->contact && *cl->contact && p->kd->store) {
        /* first sight of this conversation for its contact: the index GDPR export / forget walks */
        conv_state_put(c, "contact", cl->contact);
        char *cp = store_key_part(cl->contact);
        char *k = util_asprintf("%s:contact:%s:convs", cl->tenant, cp);
        const char *field = strstr(c->skey, ":conv:");
        char *now = util_asprintf("%lld", (long long)util_unix_time());
        if (field)
            store_hash_set(p->kd->store, k, field + 6, now, strlen(now), on_state_written,
                           util_asprintf("contact index %s", k));
        free(now);
        free(k);
        free(cp);
    }
    cl->done(c, cl->arg);
    json_decref(cl->state);
    free(cl->key);
    free(cl->contact);
    free(cl->tenant);
    free(cl);
}

static void on_history_loaded(const store_result *r, void *arg)
{
    conv_load *cl = arg;
    if (r->status != STORE_OK && r->status != STORE_E_CLOSED)
        log_warn("pipeline", "history of conversation %s not loaded: %s (answering from the cache)",
                 strrchr(cl->key, '\x1f') + 1, r->error ? r->error : "store error");
    if (r->status == STORE_OK) {
        cl->hist_ok = 1;
        if (r->n_items)
            cl->hist = xcalloc(r->n_items, sizeof *cl->hist);
        for (size_t i = 0; i < r->n_items; i++) {
            json_t *t = json_loadb(r->items[i].value, r->items[i].value_len, 0, NULL);
            const char *text = json_string_value(json_object_get(t, "text"));
            if (text) {
                cl->hist[cl->n_hist].role = role_static(json_string_value(json_object_get(t, "role")));
                cl->hist[cl->n_hist].text = xstrdup(text);
                cl->n_hist++;
            }
            json_decref(t);
        }
    }
    if (--cl->waiting == 0)
        conv_load_finish(cl);
}

static void on_facts_loaded(json_t *facts, void *arg)
{
    conv_load *cl = arg;
    cl->facts = facts;
    if (--cl->waiting == 0)
        conv_load_finish(cl);
}

static void on_state_loaded(const store_result *r, void *arg)
{
    conv_load *cl = arg;
    if (r->status == STORE_OK) {
        cl->state = json_object();
        for (size_t i = 0; i < r->n_items; i++) {
            if (strcmp(r->items[i].name, "contact") == 0)
                cl->have_contact = 1;
            json_object_set_new(cl->state, r->items[i].name, json_stringn(r->items[i].value, r->items[i].value_len));
        }
    } else {
        cl->have_contact = 1; /* unknown: do not index on a guess */
        if (r->status != STORE_E_CLOSED)
            log_warn("pipeline", "state of conversation %s not loaded: %s (using the cache)",
                     strrchr(cl->key, '\x1f') + 1, r->error ? r->error : "store error");
    }
    if (--cl->waiting == 0)
        conv_load_finish(cl);
}

/* Load the state and history of conversation KEY from the store into the
 * cache, then DONE(c, ARG) — always, later, on the loop (also when the store
 * fails: the cache is used then). CONTACT (borrowed, may be NULL) is indexed
 * the first time the conversation is seen. Both reads go out at once (one
 * round trip); a history read that failed leaves the cached turns. */
static void conv_load_start(pipeline *p, const char *key, const char *contact, conv_loaded_fn done, void *arg)
{
    conv *c = conv_get(p, key, 1);
    conv_load *cl = xcalloc(1, sizeof *cl);
    cl->p = p;
    cl->key = xstrdup(key);
    cl->contact = contact ? xstrdup(contact) : NULL;
    cl->tenant = util_asprintf("%.*s", (int)(strchr(key, '\x1f') ? strchr(key, '\x1f') - key : 0), key);
    cl->version = c->version;
    cl->done = done;
    cl->arg = arg;
    c->loading++;
    char *k = util_asprintf("%s:state", c->skey);
    int rc = p->kd->store ? store_hash_getall(p->kd->store, k, on_state_loaded, cl) : -1;
    free(k);
    if (rc != 0) {
        cl->have_contact = 1;
        conv_load_finish(cl);
        return;
    }
    cl->waiting = 2;
    k = util_asprintf("%s:history", c->skey);
    if (store_list_range(p->kd->store, k, 0, -1, on_history_loaded, cl) != 0)
        cl->waiting--; /* the store is closing: the state read's callback finishes */
    free(k);
    generation *g = p->kd->current;
    const tenant *t = g ? gen_tenant(g, cl->tenant) : NULL;
    if (contact && t && t->memory_budget_tokens > 0) {
        /* the customer's facts, in the same round trip */
        cl->want_facts = 1;
        cl->waiting++;
        custmem_load(p->kd, cl->tenant, contact, on_facts_loaded, cl);
    }
}

/* ---- queue entries held by this process ---- */

/* 1 when ID is held already; otherwise records it and returns 0. */
static int held_add(pipeline *p, const char *id)
{
    size_t b = held_bucket(id);
    for (held *h = p->hbuckets[b]; h; h = h->hnext)
        if (strcmp(h->id, id) == 0)
            return 1;
    held *h = xcalloc(1, sizeof *h);
    h->id = xstrdup(id);
    h->hnext = p->hbuckets[b];
    p->hbuckets[b] = h;
    h->all_next = p->all_held;
    if (p->all_held)
        p->all_held->all_prev = h;
    p->all_held = h;
    p->n_held++;
    return 0;
}

static void held_del(pipeline *p, const char *id)
{
    for (held **pp = &p->hbuckets[held_bucket(id)]; *pp; pp = &(*pp)->hnext)
        if (strcmp((*pp)->id, id) == 0) {
            held *h = *pp;
            *pp = h->hnext;
            if (h->all_prev)
                h->all_prev->all_next = h->all_next;
            else
                p->all_held = h->all_next;
            if (h->all_next)
                h->all_next->all_prev = h->all_prev;
            free(h->id);
            free(h);
            p->n_held--;
            return;
        }
}

/* ---- jobs ---- */

#define JOB_MAGIC 0x4b4f4a42u /* "KOJB" */

typedef struct job {
    uint32_t magic;
    pipeline *p;
    generation *g;
    tenant *t;
    /* in the job's own allocation (job_new), never freed on their own */
    char *text, *conv_id, *channel, *inbox, *hint, *conv_key;
    char *contact;        /* the customer's contact key ("chatwoot:17"), NULL when unknown */
    json_t *facts;        /* what is remembered about the customer, for the prompt; NULL: nothing */
    const char *language;
    const route *route;
    const kb *kb;
    const json_t *persona;
    const kb_chunk *hit[MAX_HITS]; /* the retrieved chunks, best first; chunks[] says their scores */
    size_t n_hits;
    koko_chunk chunks[MAX_HITS];
    char *excerpts[MAX_HITS];
    koko_turn *history; /* copy of the conversation's turns */
    size_t n_history;
    const prompt_ctx *ctx; /* declarations and context hash of the route (the generation's) */
    koko_instance **chain;
    size_t n_chain, step;
    int want_handoff;
    const char *human_reason;
    char *model_handoff;  /* the model called handoff_to_human(reason) */
    int budget_cut;       /* a paid backend was skipped for the budget: hand off */
    json_t *attempts;   /* [{"backend","error"}]; NULL until a backend fails */
    int calls;          /* generate calls not yet called back */
    int finished;
    /* the step's deadline (server.backend_timeout_ms): the jobs waiting on a
     * backend are one list in deadline order under a single timer (pipeline.dl_*),
     * not an event each (thousands may wait on a slow model at once) */
    double dl_at;                 /* util_now_ms_f() at which it expires */
    int dl_armed;                 /* in the pipeline's deadline list */
    struct job *dl_prev, *dl_next;
    double started;
    chat_fn done;
    void *arg;
    /* a channel message being answered: the conversation and how many of
     * its queued messages this answer covers */
    koko_instance *channel_inst;
    conv *conv;
    size_t batch;
    int superseded;
    const koko_msg *msg; /* the last message of the batch (owned by conv's queue) */
    const char *channel_handoff; /* the channel asked for a human */
    int handed_off;              /* the answer being delivered hands the conversation to a human */
    struct event *typing_ev;     /* shows typing only if the answer takes a while */
} job;

/* One generate() call; its answer counts only while the job is still at
 * that step (a deadline may have moved it on). */
typedef struct step_call {
    job *j;
    size_t step;
    koko_llm_request req; /* borrowed by the backend until it calls back (what it points to lives in J) */
} step_call;

/* ---- step deadlines: one FIFO and one timer ---- */

static void deadline_disarm(job *j)
{
    if (!j->dl_armed)
        return;
    pipeline *p = j->p;
    if (j->dl_prev)
        j->dl_prev->dl_next = j->dl_next;
    else
        p->dl_head = j->dl_next;
    if (j->dl_next)
        j->dl_next->dl_prev = j->dl_prev;
    else
        p->dl_tail = j->dl_prev;
    j->dl_prev = j->dl_next = NULL;
    j->dl_armed = 0;
    /* the timer may now fire for a later head: it re-arms itself then */
}

static void deadline_schedule(pipeline *p)
{
    if (!p->dl_head || !p->dl_ev)
        return;
    double ms = p->dl_head->dl_at - util_now_ms_f();
    if (ms < 0)
        ms = 0;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((long)ms % 1000) * 1000};
    evtimer_add(p->dl_ev, &tv);
}

static void on_deadline(job *j);

static void on_deadlines(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pipeline *p = arg;
    double now = util_now_ms_f();
    /* a job re-armed by its own expiry goes to the tail with a later deadline */
    while (p->dl_head && p->dl_head->dl_at <= now) {
        job *j = p->dl_head;
        deadline_disarm(j);
        on_deadline(j);
    }
    deadline_schedule(p);
}

/* J's step has server.backend_timeout_ms from now. Every job of a generation
 * waits as long, so its place is the tail; only after a reload that changed
 * the timeout does it walk back past jobs of the old one. */
static void deadline_arm(job *j)
{
    pipeline *p = j->p;
    deadline_disarm(j);
    j->dl_at = util_now_ms_f() + j->g->cfg->backend_timeout_ms;
    job *after = p->dl_tail;
    while (after && after->dl_at > j->dl_at)
        after = after->dl_prev;
    j->dl_prev = after;
    j->dl_next = after ? after->dl_next : p->dl_head;
    if (j->dl_next)
        j->dl_next->dl_prev = j;
    else
        p->dl_tail = j;
    if (after)
        after->dl_next = j;
    else
        p->dl_head = j;
    j->dl_armed = 1;
    if (p->dl_head == j)
        deadline_schedule(p);
}

static void job_free(job *j)
{
    j->magic = 0;
    if (j->typing_ev)
        event_free(j->typing_ev);
    free(j->model_handoff);
    json_decref(j->facts);
    for (size_t i = 0; i < MAX_HITS; i++)
        free(j->excerpts[i]);
    for (size_t i = 0; i < j->n_history; i++)
        free((char *)j->history[i].text);
    free(j->history);
    json_decref(j->attempts);
    deadline_disarm(j);
    j->p->inflight--;
    gen_release(j->g);
    free(j);
}

static void job_maybe_free(job *j)
{
    if (j->finished && j->calls == 0)
        job_free(j);
}

static const char *const hu_phrases[] = {"emberrel", "egy ember", "élő ember", "ügyintéző", "ügyintézővel",
                                         "kollégával", "kollegaval", "munkatárssal", "operátor",
                                         "valakivel beszél", "személyesen beszél", NULL};
static const char *const en_phrases[] = {"human", "real person", "talk to someone", "speak to someone",
                                         "an agent", "live agent", "operator", "representative",
                                         "talk to a person", "speak to a person", NULL};
static const char *const de_phrases[] = {"mensch", "mitarbeiter", "echte person", "berater", NULL};

static const char *const *builtin_phrases(const char *lang)
{
    if (strcmp(lang, "hu") == 0)
        return hu_phrases;
    if (strcmp(lang, "en") == 0)
        return en_phrases;
    if (strcmp(lang, "de") == 0)
        return de_phrases;
    return NULL;
}

/* Does the customer ask for a human, in any of the tenant's languages? */
static int asks_for_human(const tenant *t, const char *text)
{
    char *norm = router_normalise(text);
    int hit = 0;
    for (size_t l = 0; l < t->n_languages && !hit; l++) {
        const json_t *conf = json_object_get(t->handoff_phrases, t->languages[l]);
        if (conf) {
            size_t i;
            json_t *v;
            json_array_foreach(conf, i, v)
            {
                char *ph = router_normalise(json_string_value(v));
                hit |= router_phrase_in(norm, ph);
                free(ph);
            }
            continue;
        }
        const char *const *b = builtin_phrases(t->languages[l]);
        for (size_t i = 0; b && b[i] && !hit; i++) {
            char *ph = router_normalise(b[i]);
            hit |= router_phrase_in(norm, ph);
            free(ph);
        }
    }
    free(norm);
    return hit;
}

static size_t search_into(job *j, const char *query, kb_hit *out)
{
    return j->kb ? kb_search(j->kb, query, out, MAX_HITS) : 0;
}

/* Retrieval, with the previous question as context for short follow-ups and
 * passages in the customer's language preferred among close scores. */
static void retrieve(job *j)
{
    kb_hit hits[MAX_HITS];
    size_t n_hits = search_into(j, j->text, hits);
    double best_cov = n_hits ? hits[0].coverage : 0;
    if (best_cov < KB_DEFAULT_MIN_COVERAGE) {
        const char *prev = NULL;
        for (size_t i = j->n_history; i-- > 0;)
            if (strcmp(j->history[i].role, "user") == 0) {
                prev = j->history[i].text;
                break;
            }
        if (prev) {
            char *q = util_asprintf("%s %s", prev, j->text);
            kb_hit alt[MAX_HITS];
            size_t n = search_into(j, q, alt);
            if (n && alt[0].coverage > best_cov && alt[0].score >= (n_hits ? hits[0].score : 0)) {
                memcpy(hits, alt, n * sizeof *alt);
                n_hits = n;
            }
            free(q);
        }
    }
    /* stable: same-language passages within 60 % of the best score go first */
    if (n_hits > 1) {
        kb_hit first[MAX_HITS], rest[MAX_HITS];
        size_t nf = 0, nr = 0;
        double top = hits[0].score;
        for (size_t i = 0; i < n_hits; i++) {
            const char *cl = tenant_chunk_lang(j->t, j->kb, hits[i].chunk);
            int same = !cl || strcmp(cl, j->language) == 0;
            if (same && hits[i].score >= 0.6 * top)
                first[nf++] = hits[i];
            else
                rest[nr++] = hits[i];
        }
        if (nf) {
            memcpy(hits, first, nf * sizeof *first);
            memcpy(hits + nf, rest, nr * sizeof *rest);
        }
    }
    /* excerpts cost more than the whole retrieval: made only when a backend
     * that quotes passages asks (koko_host.chunk_excerpt) */
    j->n_hits = n_hits;
    for (size_t i = 0; i < n_hits; i++) {
        const kb_chunk *c = j->hit[i] = hits[i].chunk;
        j->chunks[i] = (koko_chunk){.file = c->file, .heading = c->heading, .text = c->text,
                                    .excerpt = NULL, .score = hits[i].score, .coverage = hits[i].coverage};
    }
}

static void record_turns(job *j, const char *reply)
{
    if (!j->conv_key)
        return;
    conv *c = conv_get(j->p, j->conv_key, 1);
    c->version++;
    if (strcmp(c->lang, j->language) != 0)
        conv_state_put(c, "lang", j->language);
    snprintf(c->lang, sizeof c->lang, "%s", j->language);
    conv_add_turn(c, "user", j->text, j->t->history_turns);
    conv_history_put(c, "user", j->text, j->t->history_turns);
    if (reply && *reply) {
        conv_add_turn(c, "assistant", reply, j->t->history_turns);
        conv_history_put(c, "assistant", reply, j->t->history_turns);
    }
}

/* This month's spend of T, and whether backend B has cost anything this month. */
static double month_spend(kokod *kd, const char *tenant_name, const char *backend)
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    char key[96];
    if (backend)
        snprintf(key, sizeof key, "cost_usd.%04d-%02d.%s", tm.tm_year + 1900, tm.tm_mon + 1, backend);
    else
        snprintf(key, sizeof key, "cost_usd.%04d-%02d", tm.tm_year + 1900, tm.tm_mon + 1);
    return json_number_value(json_object_get(json_object_get(kd->stats, tenant_name), key));
}

static void count_spend(kokod *kd, const char *tenant_name, const char *backend, double usd)
{
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    char key[96];
    snprintf(key, sizeof key, "cost_usd.%04d-%02d", tm.tm_year + 1900, tm.tm_mon + 1);
    kokod_count(kd, tenant_name, key, usd);
    snprintf(key, sizeof key, "cost_usd.%04d-%02d.%s", tm.tm_year + 1900, tm.tm_mon + 1, backend);
    kokod_count(kd, tenant_name, key, usd);
}

static void deliver_result(job *j, const chat_answer *a);

static void finish(job *j, const koko_llm_result *res, const char *backend)
{
    kokod *kd = j->p->kd;
    j->finished = 1;
    deadline_disarm(j);
    const char *holding_dflt = strcmp(j->language, "hu") == 0
                                   ? "Köszönöm a kérdését, kollégánk hamarosan válaszol."
                                   : "Thank you for your question, a colleague will reply shortly.";
    chat_answer a = {0};
    a.language = j->language;
    a.route = j->route ? j->route->name : "default";
    a.attempts = j->attempts;
    a.sources = json_array();
    if (res) {
        a.reply = res->text ? res->text : "";
        a.backend = backend;
        a.handoff = res->handoff;
        a.handoff_reason = res->handoff ? (res->handoff_reason ? res->handoff_reason : "the backend asked for a human")
                                         : NULL;
        double retrieval = j->n_hits ? j->chunks[0].coverage : 0.0;
        a.confidence = res->confidence >= 0 ? res->confidence : retrieval;
        for (size_t i = 0; i < res->n_cited; i++) {
            size_t k = res->cited[i];
            if (k < j->n_hits)
                json_array_append_new(a.sources, json_pack("{s:s,s:s,s:f}", "file", j->chunks[k].file, "heading",
                                                           j->chunks[k].heading, "score",
                                                           (double)((long long)(j->chunks[k].score * 100 + 0.5)) / 100));
        }
        if (!a.handoff && j->budget_cut) {
            a.handoff = 1;
            a.handoff_reason = "the tenant's monthly budget is spent; answered without the paid backends";
        }
        if (!a.handoff && j->model_handoff) {
            a.handoff = 1;
            a.handoff_reason = j->model_handoff;
        }
        if (!a.handoff && j->want_handoff) {
            a.handoff = 1;
            a.handoff_reason = j->human_reason;
        }
        if (!a.handoff && a.confidence < j->t->min_confidence) {
            a.handoff = 1;
            a.handoff_reason = "confidence below the tenant's handoff.min_confidence";
        }
        /* handed over by the core (not by the backend's own holding answer): the
         * customer gets the persona's handoff message, the agents the draft */
        if (a.handoff && !res->handoff) {
            a.draft = a.reply;
            const char *dflt = strcmp(j->language, "hu") == 0
                                   ? "Átadom a beszélgetést egy kollégámnak, hamarosan jelentkezik."
                                   : "I am handing this conversation to a colleague, who will be with you shortly.";
            a.reply = memory_text(j->persona, "handoff", j->language, j->t->languages, j->t->n_languages, dflt);
        }
    } else {
        a.reply = memory_text(j->persona, "holding", j->language, j->t->languages, j->t->n_languages, holding_dflt);
        a.backend = "none";
        a.handoff = 1;
        a.handoff_reason = "every backend in the chain failed";
        a.confidence = 0;
    }
    a.latency_ms = util_now_ms_f() - j->started;
    record_turns(j, a.reply);

    kokod_count(kd, j->t->name, "queries", 1);
    kokod_count(kd, j->t->name, a.handoff ? "handed_off" : "answered", 1);
    if (!res)
        kokod_count(kd, j->t->name, "failed", 1);
    kokod_count(kd, j->t->name, "latency_ms_sum", a.latency_ms);
    if (res) {
        kokod_count(kd, j->t->name, "tokens_in", (double)res->tokens_in);
        kokod_count(kd, j->t->name, "tokens_cached", (double)res->tokens_cached);
        kokod_count(kd, j->t->name, "tokens_out", (double)res->tokens_out);
        if (res->model && *res->model) {
            static const char *const fields[] = {"queries", "tokens_in", "tokens_cached", "tokens_out"};
            double vals[] = {1, (double)res->tokens_in, (double)res->tokens_cached, (double)res->tokens_out};
            for (size_t f = 0; f < 4; f++) {
                char *k = util_asprintf("model.%s.%s", res->model, fields[f]);
                kokod_count(kd, j->t->name, k, vals[f]);
                free(k);
            }
        }
        if (KOKO_HAS_FIELD(res, koko_llm_result, cache_hit)) {
            kokod_count(kd, j->t->name, "cost_usd", res->cost_usd);
            if (res->cost_usd > 0)
                count_spend(kd, j->t->name, backend, res->cost_usd);
            if (res->cache_hit)
                kokod_count(kd, j->t->name, "cache_hits", 1);
        }
    }
    char *bk = util_asprintf("backend.%s", a.backend);
    kokod_count(kd, j->t->name, bk, 1);
    free(bk);

    if (j->done)
        j->done(&a, j->arg);
    else
        deliver_result(j, &a);
    json_decref(a.sources);
    job_maybe_free(j);
}

static void run_step(job *j);

/* Note that INST did not answer J, for the answer's "attempts". */
static void job_attempt_failed(job *j, const koko_instance *inst, const char *why)
{
    if (!j->attempts)
        j->attempts = json_array();
    json_array_append_new(j->attempts, json_pack("{s:s,s:s}", "backend", inst->desc->name, "error", why));
}

static void on_generated(const koko_llm_result *res, void *arg)
{
    step_call *sc = arg;
    job *j = sc->j;
    j->calls--;
    int abandoned = j->finished || sc->step != j->step;
    size_t step = sc->step;
    free(sc);
    if (abandoned) {
        job_maybe_free(j);
        return;
    }
    deadline_disarm(j);
    koko_instance *inst = j->chain[step];
    if (res->status == KOKO_OK) {
        finish(j, res, inst->desc->name);
        return;
    }
    log_warn(inst->prefix, "did not answer (%s); trying the next backend",
             res->error ? res->error : "no reason given");
    job_attempt_failed(j, inst, res->error ? res->error : "failed");
    j->step = step + 1;
    run_step(j);
}

static void on_deadline(job *j)
{
    koko_instance *inst = j->chain[j->step];
    log_warn(inst->prefix, "no answer within %u ms (server.backend_timeout_ms); trying the next backend",
             j->g->cfg->backend_timeout_ms);
    job_attempt_failed(j, inst, "no answer within the core's deadline");
    j->step++;
    run_step(j);
}

/* Over budget, a backend that has cost money this month is skipped. */
static int over_budget(job *j, koko_instance *inst)
{
    kokod *kd = j->p->kd;
    if (j->t->monthly_usd <= 0)
        return 0;
    if (month_spend(kd, j->t->name, NULL) < j->t->monthly_usd || month_spend(kd, j->t->name, inst->desc->name) <= 0)
        return 0;
    /* one alert per tenant every 5 minutes: each tenant's operator hears of its own budget */
    if (!j->p->budget_alerts)
        j->p->budget_alerts = json_object();
    json_t *last_alert = json_object_get(j->p->budget_alerts, j->t->name);
    if (!last_alert || util_unix_time() - json_integer_value(last_alert) > 300) {
        json_object_set_new(j->p->budget_alerts, j->t->name, json_integer(util_unix_time()));
        log_error("budget", "%s: monthly budget of %g USD spent (%.4f USD): paid backends are skipped until the "
                  "month ends or budget.monthly_usd is raised", j->t->name, j->t->monthly_usd,
                  month_spend(kd, j->t->name, NULL));
    }
    job_attempt_failed(j, inst, "skipped: the tenant's monthly budget is spent");
    kokod_count(kd, j->t->name, "budget_skips", 1);
    j->budget_cut = 1;
    return 1;
}

static void run_step(job *j)
{
    /* skip instances that are being torn down, and paid ones past the budget */
    while (j->step < j->n_chain &&
           (!j->chain[j->step] || j->chain[j->step]->st == INST_DEAD || over_budget(j, j->chain[j->step])))
        j->step++;
    if (j->step >= j->n_chain) {
        finish(j, NULL, NULL);
        return;
    }
    koko_instance *inst = j->chain[j->step];
    const koko_llm_ops *ops = inst->desc->ops;
    step_call *sc = xcalloc(1, sizeof *sc);
    sc->req = (koko_llm_request){
        .size = sizeof(koko_llm_request),
        .tenant = j->t->name,
        .conversation_id = j->conv_id,
        .language = j->language,
        .languages = j->t->languages,
        .n_languages = j->t->n_languages,
        .text = j->text,
        .history = j->history,
        .n_history = j->n_history,
        .chunks = j->chunks,
        .n_chunks = j->n_hits,
        .persona = j->persona,
        .decisions = j->t->decisions,
        .tools = j->ctx->tools,
        .route = j->route ? j->route->name : "default",
        .want_handoff = j->want_handoff,
        /* a route with a knowledge base of its own answers from it alone: its passages, not the tenant's KB */
        .knowledge = j->kb == j->t->kb ? j->t->knowledge : NULL,
        .knowledge_bytes = j->kb == j->t->kb && j->t->knowledge ? strlen(j->t->knowledge) : 0,
        .context_hash = j->ctx->hash,
        .customer_facts = j->facts,
        .job = j,
    };
    sc->j = j;
    sc->step = j->step;
    j->calls++;
    deadline_arm(j);
    ops->generate(inst->state, &sc->req, on_generated, sc);
}

static void on_facts_ready(job *j)
{
    if (j->facts)
        log_debug("pipeline", "%s: %zu remembered fact(s) about the customer in the prompt", j->t->name,
                  json_array_size(j->facts));
    run_step(j);
}

static void on_facts(json_t *facts, void *arg)
{
    job *j = arg;
    j->facts = facts;
    on_facts_ready(j);
}

static void start_job(job *j)
{
    tenant *t = j->t;
    kokod *kd = j->p->kd;
    conv *c = j->conv_key ? conv_get(j->p, j->conv_key, 0) : NULL;
    if (c) {
        j->history = xcalloc(c->n_turns + 1, sizeof *j->history);
        for (size_t i = 0; i < c->n_turns; i++)
            j->history[i] = (koko_turn){.role = c->turns[i].role, .text = xstrdup(c->turns[i].text)};
        j->n_history = c->n_turns;
    }
    /* language: an explicit hint the tenant lists, else detection with the fallback rule */
    j->language = NULL;
    for (size_t i = 0; j->hint && i < t->n_languages; i++)
        if (strcmp(t->languages[i], j->hint) == 0)
            j->language = t->languages[i];
    if (!j->language)
        j->language = lang_choose(kd->lang, j->text, strlen(j->text), c && c->lang[0] ? c->lang : NULL,
                                  t->languages, t->n_languages);
    if (!j->language)
        j->language = t->languages[0];
    if (j->conv_key)
        log_debug("pipeline", "%s: conversation %s: language %s, %zu turn(s) of history", t->name, j->conv_id,
                  j->language, j->n_history);

    route_input ri = {.channel = j->channel, .inbox = j->inbox, .language = j->language, .text = j->text};
    size_t route_index = 0;
    j->route = router_match(t->router, &ri, &route_index);
    j->kb = j->route && j->route->kb ? j->route->kb : t->kb;
    j->persona = j->route && j->route->persona ? j->route->persona : t->persona;
    j->chain = j->route && j->route->chain ? j->route->chain : t->chain;
    j->n_chain = j->route && j->route->chain ? j->route->n_chain : t->n_chain;
    j->ctx = j->route ? &t->route_ctx[route_index] : &t->ctx;
    if (j->channel_handoff) {
        j->want_handoff = 1;
        j->human_reason = j->channel_handoff;
    } else if (j->route && j->route->handoff) {
        j->want_handoff = 1;
        j->human_reason = "the route sends these messages to a human";
    } else if (asks_for_human(t, j->text)) {
        j->want_handoff = 1;
        j->human_reason = "the customer asked for a human";
    }
    retrieve(j);
    if (c && c->facts_read && j->contact && t->memory_budget_tokens > 0) {
        /* read with the conversation: choose the relevant ones for this message */
        if (c->facts) {
            j->facts = custmem_select(c->facts, j->text, t->memory_budget_tokens, util_unix_time());
            if (json_array_size(j->facts) == 0) {
                json_decref(j->facts);
                j->facts = NULL;
            }
        }
        on_facts_ready(j);
        return;
    }
    if (j->contact && t->memory_budget_tokens > 0 && kd->store) {
        /* enrich: what is remembered about this customer, then generate */
        custmem_prompt_facts(kd, t->name, j->contact, j->text, t->memory_budget_tokens, on_facts, j);
        return;
    }
    run_step(j);
}

/* Bytes S takes in a packed block (none for NULL). */
static size_t str_room(const char *s) { return s ? strlen(s) + 1 : 0; }

/* Copy S to *AT and move *AT past it; NULL stays NULL. */
static char *str_keep(char **at, const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    char *d = memcpy(*at, s, n);
    *at += n;
    return d;
}

static job *job_new(pipeline *p, generation *g, tenant *t, const chat_input *in)
{
    /* the job and its strings in one allocation: thousands of jobs may wait on a
     * model at once, and seven more allocations each cost 0.5 MiB across 5,000 */
    const char *channel = in->channel ? in->channel : "api", *text = in->text ? in->text : "";
    size_t key_len = in->conversation_id ? strlen(t->name) + strlen(channel) + strlen(in->conversation_id) + 3 : 0;
    size_t room = str_room(text) + str_room(in->conversation_id) + str_room(channel) + str_room(in->inbox) +
                  str_room(in->language) + str_room(in->contact) + key_len;
    job *j = xcalloc(1, sizeof *j + room);
    char *at = (char *)(j + 1);
    j->p = p;
    j->g = g;
    gen_ref(g);
    j->t = t;
    j->text = str_keep(&at, text);
    j->conv_id = str_keep(&at, in->conversation_id);
    j->channel = str_keep(&at, channel);
    j->inbox = str_keep(&at, in->inbox);
    j->hint = str_keep(&at, in->language);
    j->contact = str_keep(&at, in->contact);
    if (in->conversation_id) {
        j->conv_key = at;
        snprintf(at, key_len, "%s\x1f%s\x1f%s", t->name, channel, in->conversation_id);
    }
    j->magic = JOB_MAGIC;
    j->started = util_now_ms_f();
    p->inflight++;
    return j;
}

static void on_chat_conv_ready(conv *c, void *arg)
{
    (void)c;
    start_job(arg);
}

void pipeline_chat(pipeline *p, generation *g, const chat_input *in, chat_fn done, void *arg)
{
    tenant *t = gen_tenant(g, in->tenant);
    job *j = job_new(p, g, t, in);
    j->done = done;
    j->arg = arg;
    if (j->conv_key)
        conv_load_start(p, j->conv_key, in->contact, on_chat_conv_ready, j);
    else
        start_job(j);
}

/* ---- channel messages: guard, ownership, coalescing, delivery ---- */

static char *dup_or_null(const char *s) { return s ? xstrdup(s) : NULL; }

static msgcopy *msgcopy_new(const koko_msg *m, const char *tenant_name, const char *channel)
{
    msgcopy *mc = xcalloc(1, sizeof *mc);
    int v11 = KOKO_HAS_FIELD(m, koko_msg, n_attachments);
    mc->m.size = sizeof(koko_msg);
    mc->m.tenant = mc->strs[0] = xstrdup(tenant_name);
    mc->m.channel = mc->strs[1] = xstrdup(channel);
    mc->m.msg_id = mc->strs[2] = dup_or_null(m->msg_id);
    mc->m.conversation_id = mc->strs[3] = dup_or_null(m->conversation_id);
    mc->m.contact_id = mc->strs[4] = dup_or_null(m->contact_id);
    mc->m.inbox = mc->strs[5] = dup_or_null(m->inbox);
    mc->m.text = mc->strs[6] = xstrdup(m->text ? m->text : "");
    mc->m.language = mc->strs[7] = dup_or_null(m->language);
    mc->m.created_at = m->created_at;
    mc->meta = m->meta ? json_deep_copy(m->meta) : NULL;
    mc->m.meta = mc->meta;
    if (v11) {
        mc->m.kind = m->kind;
        mc->m.sender = m->sender;
        mc->m.is_private = m->is_private;
        mc->m.auto_reply = m->auto_reply;
        mc->m.quiet_ms = m->quiet_ms;
        mc->m.handoff = mc->strs[8] = dup_or_null(m->handoff);
        mc->m.subject = mc->strs[9] = dup_or_null(m->subject);
        mc->m.from = mc->strs[10] = dup_or_null(m->from);
        mc->m.content_type = mc->strs[11] = dup_or_null(m->content_type);
        mc->m.skip = mc->strs[12] = dup_or_null(m->skip);
        mc->headers = m->headers ? json_deep_copy(m->headers) : NULL;
        mc->m.headers = mc->headers;
        mc->m.n_attachments = m->attachments ? m->n_attachments : 0;
        if (mc->m.n_attachments) {
            mc->att = xcalloc(mc->m.n_attachments, sizeof *mc->att);
            for (size_t i = 0; i < mc->m.n_attachments; i++)
                mc->att[i] = (koko_attachment){.kind = dup_or_null(m->attachments[i].kind),
                                               .url = dup_or_null(m->attachments[i].url),
                                               .content_type = dup_or_null(m->attachments[i].content_type),
                                               .size = m->attachments[i].size};
            mc->m.attachments = mc->att;
        }
    }
    return mc;
}

static void jset_str(json_t *o, const char *k, const char *v)
{
    if (v)
        json_object_set_new(o, k, json_string(v));
}

/* The queue payload of M: every field the later stages read, as JSON. */
static char *msg_serialise(const koko_msg *m, const char *tenant_name, const char *channel)
{
    json_t *o = json_object();
    jset_str(o, "tenant", tenant_name);
    jset_str(o, "channel", channel);
    jset_str(o, "msg_id", m->msg_id);
    jset_str(o, "conversation_id", m->conversation_id);
    jset_str(o, "contact_id", m->contact_id);
    jset_str(o, "inbox", m->inbox);
    jset_str(o, "text", m->text);
    jset_str(o, "language", m->language);
    json_object_set_new(o, "created_at", json_integer(m->created_at));
    json_object_set_new(o, "accepted_ms", json_integer((json_int_t)util_unix_time() * 1000));
    if (m->meta)
        json_object_set_new(o, "meta", json_deep_copy(m->meta));
    if (KOKO_HAS_FIELD(m, koko_msg, n_attachments)) {
        json_object_set_new(o, "kind", json_integer(m->kind));
        json_object_set_new(o, "sender", json_integer(m->sender));
        json_object_set_new(o, "is_private", json_boolean(m->is_private));
        json_object_set_new(o, "auto_reply", json_boolean(m->auto_reply));
        jset_str(o, "subject", m->subject);
        jset_str(o, "from", m->from);
        if (m->headers)
            json_object_set_new(o, "headers", json_deep_copy(m->headers));
        jset_str(o, "content_type", m->content_type);
        jset_str(o, "skip", m->skip);
        jset_str(o, "handoff", m->handoff);
        json_object_set_new(o, "quiet_ms", json_integer(m->quiet_ms));
        json_t *att = json_array();
        for (size_t i = 0; m->attachments && i < m->n_attachments; i++) {
            json_t *a = json_object();
            jset_str(a, "kind", m->attachments[i].kind);
            jset_str(a, "url", m->attachments[i].url);
            jset_str(a, "content_type", m->attachments[i].content_type);
            json_object_set_new(a, "size", json_integer((json_int_t)m->attachments[i].size));
            json_array_append_new(att, a);
        }
        json_object_set_new(o, "attachments", att);
    }
    char *out = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return out;
}

static const char *jstr(const json_t *o, const char *k) { return json_string_value(json_object_get(o, k)); }

/* A queue payload back into a message copy; NULL when it is not one of ours. */
static msgcopy *msg_parse(const char *payload, size_t len)
{
    json_t *o = json_loadb(payload, len, 0, NULL);
    if (!json_is_object(o) || !jstr(o, "tenant") || !jstr(o, "channel") || !jstr(o, "msg_id") ||
        !jstr(o, "conversation_id")) {
        json_decref(o);
        return NULL;
    }
    const json_t *att = json_object_get(o, "attachments");
    size_t n_att = json_array_size(att);
    koko_attachment *av = n_att ? xcalloc(n_att, sizeof *av) : NULL;
    for (size_t i = 0; i < n_att; i++) {
        const json_t *a = json_array_get(att, i);
        av[i] = (koko_attachment){.kind = jstr(a, "kind"), .url = jstr(a, "url"),
                                  .content_type = jstr(a, "content_type"),
                                  .size = (uint64_t)json_integer_value(json_object_get(a, "size"))};
    }
    koko_msg m = {
        .size = sizeof m,
        .msg_id = jstr(o, "msg_id"),
        .conversation_id = jstr(o, "conversation_id"),
        .contact_id = jstr(o, "contact_id"),
        .inbox = jstr(o, "inbox"),
        .text = jstr(o, "text"),
        .language = jstr(o, "language"),
        .created_at = (int64_t)json_integer_value(json_object_get(o, "created_at")),
        .meta = json_object_get(o, "meta"),
        .kind = (koko_msg_kind)json_integer_value(json_object_get(o, "kind")),
        .sender = (koko_sender)json_integer_value(json_object_get(o, "sender")),
        .is_private = json_is_true(json_object_get(o, "is_private")),
        .auto_reply = json_is_true(json_object_get(o, "auto_reply")),
        .subject = jstr(o, "subject"),
        .from = jstr(o, "from"),
        .headers = json_object_get(o, "headers"),
        .content_type = jstr(o, "content_type"),
        .skip = jstr(o, "skip"),
        .handoff = jstr(o, "handoff"),
        .quiet_ms = (uint32_t)json_integer_value(json_object_get(o, "quiet_ms")),
        .attachments = av,
        .n_attachments = n_att,
    };
    msgcopy *mc = msgcopy_new(&m, jstr(o, "tenant"), jstr(o, "channel"));
    free(av);
    json_decref(o);
    return mc;
}

/* "{T}:{what}:{channel}:{msg_id}" with the outside parts escaped. */
static char *msg_key(const char *tenant_name, const char *what, const char *channel, const char *msg_id)
{
    char *ch = store_key_part(channel), *id = store_key_part(msg_id);
    char *k = util_asprintf("%s:%s:%s:%s", tenant_name, what, ch, id);
    free(ch);
    free(id);
    return k;
}

/* ---- queue entries: finished (ack) or failed ---- */

static void pump_kick(pipeline *p);
static void fresh_add(pipeline *p, const char *id);

static void on_entry_done(const store_result *r, void *arg)
{
    char *what = arg;
    if (r->status != STORE_OK && r->status != STORE_E_CLOSED && r->status != STORE_E_NOTFOUND)
        log_warn("queue", "%s: %s (the entry is processed again after its lease; its reply marker prevents a "
                 "second answer)", what, r->error ? r->error : "store error");
    free(what);
}

/* MC is answered, handed off or filtered: record the delivery (ANSWERED) and ack its entries. */
static void entry_ack(pipeline *p, msgcopy *mc, int answered)
{
    store *st = p->kd->store;
    if (answered && st) {
        char *k = msg_key(mc->m.tenant, "reply", mc->m.channel, mc->m.msg_id);
        store_set(st, k, "1", 1, REPLY_TTL_MS, on_entry_done, util_asprintf("reply marker %s not recorded", k));
        free(k);
    }
    for (size_t i = 0; i < mc->n_qids; i++) {
        if (st)
            store_queue_ack(st, mc->qids[i], on_entry_done, util_asprintf("ack of queue entry %s", mc->qids[i]));
        held_del(p, mc->qids[i]);
        free(mc->qids[i]);
    }
    mc->n_qids = 0;
    pump_kick(p);
}

/* Processing MC failed: its entries are retried, dead letters after state.max_attempts deliveries. */
static void entry_fail(pipeline *p, msgcopy *mc, const char *reason)
{
    store *st = p->kd->store;
    for (size_t i = 0; i < mc->n_qids; i++) {
        if (st)
            store_queue_fail(st, mc->qids[i], reason, on_entry_done,
                             util_asprintf("fail of queue entry %s", mc->qids[i]));
        held_del(p, mc->qids[i]);
        free(mc->qids[i]);
    }
    mc->n_qids = 0;
    pump_kick(p);
}

static char *conv_key_of(const char *tenant_name, const char *channel, const char *conv_id)
{
    return util_asprintf("%s\x1f%s\x1f%s", tenant_name, channel, conv_id);
}

static koko_instance *tenant_channel(const tenant *t, const char *name)
{
    for (size_t i = 0; i < t->n_channels; i++)
        if (strcmp(t->channels[i]->desc->name, name) == 0)
            return t->channels[i];
    return NULL;
}

/* Set the owner of C; PERSIST: write it to the store too (a handoff is
 * written only once its reply is delivered: a kokod that dies before that
 * must not leave the retried message to find the conversation with a human). */
static void set_owner_ex(conv *c, owner o, const char *why, int persist)
{
    c->version++;
    /* written even when the cache agrees: the cache may not have seen another replica's change */
    if (persist)
        conv_state_put(c, "owner", owner_names[o]);
    if (c->owner == o)
        return;
    log_info("pipeline", "conversation %s: owner %s → %s (%s)", strrchr(c->key, '\x1f') + 1, owner_names[c->owner],
             owner_names[o], why);
    c->owner = o;
}

static void set_owner(conv *c, owner o, const char *why) { set_owner_ex(c, o, why, 1); }

/* Forget the messages waiting in C (a human took over): nothing is posted for them. */
static void conv_drop_pending(conv *c)
{
    if (c->running) {
        c->running->superseded = 1;
        c->running = NULL;
    }
    if (c->quiet_ev)
        event_del(c->quiet_ev);
    while (c->queue) {
        msgcopy *n = c->queue->next;
        entry_ack(c->p, c->queue, 0);
        msgcopy_free(c->queue);
        c->queue = n;
    }
    c->queue_tail = NULL;
    c->n_queue = 0;
}

static void on_delivered(koko_status st, const char *error, void *arg)
{
    job *j = arg;
    conv *c = j->conv;
    if (st != KOKO_OK)
        log_error(j->channel_inst->prefix, "reply to conversation %s not delivered: %s", j->conv_id,
                  error ? error : "no reason given");
    kokod_count(j->p->kd, j->t->name, st == KOKO_OK ? "delivered" : "delivery_failed", 1);
    /* a handoff nobody was told about is no handoff: the retried entry must
     * not find the conversation owned by a human and be dropped unanswered */
    if (st != KOKO_OK && j->handed_off && c && c->owner == OWNER_HUMAN)
        set_owner_ex(c, OWNER_BOT, "the handoff was not delivered; it is retried", 0);
    if (st == KOKO_OK && j->handed_off && c && c->owner == OWNER_HUMAN)
        conv_state_put(c, "owner", owner_names[OWNER_HUMAN]);
    if (j->handed_off && c) {
        c->handoff_pending = 0;
        c->version++; /* a load that read the store before this was recorded must not apply */
    }
    /* the batch is answered (or given up on): take it off the queue */
    if (c && c->running == j) {
        for (size_t i = 0; i < j->batch && c->queue; i++) {
            msgcopy *n = c->queue->next;
            if (st == KOKO_OK)
                entry_ack(j->p, c->queue, 1);
            else
                entry_fail(j->p, c->queue, error ? error : "the channel did not deliver the reply");
            msgcopy_free(c->queue);
            c->queue = n;
            c->n_queue--;
        }
        if (!c->queue)
            c->queue_tail = NULL;
        c->running = NULL;
        j->msg = NULL;
    }
    j->calls--;
    job_maybe_free(j);
}

static void deliver_result(job *j, const chat_answer *a)
{
    conv *c = j->conv;
    if (j->superseded || !c || c->running != j) {
        log_info("pipeline", "%s: answer for conversation %s superseded by a newer message; not posted", j->t->name,
                 j->conv_id);
        kokod_count(j->p->kd, j->t->name, "superseded", 1);
        return;
    }
    koko_instance *ch = tenant_channel(j->t, j->channel);
    if (!ch || ch->st == INST_DEAD) {
        log_error("pipeline", "%s: channel %s is gone; reply to conversation %s not delivered (queued again)",
                  j->t->name, j->channel, j->conv_id);
        for (size_t i = 0; i < j->batch && c->queue; i++) {
            msgcopy *n = c->queue->next;
            entry_fail(j->p, c->queue, "the channel is no longer configured");
            msgcopy_free(c->queue);
            c->queue = n;
            c->n_queue--;
        }
        if (!c->queue)
            c->queue_tail = NULL;
        c->running = NULL;
        j->msg = NULL;
        return;
    }
    j->channel_inst = ch;
    const koko_channel_ops *ops = ch->desc->ops;
    char *idem = util_asprintf("%s:%s", j->channel, j->msg->msg_id);
    koko_reply rep = {
        .size = sizeof rep,
        .msg = j->msg,
        .text = a->reply ? a->reply : "",
        .language = a->language,
        .handoff = a->handoff,
        .handoff_reason = a->handoff_reason,
        .draft = a->draft ? a->draft : a->reply,
        .sources = a->sources,
        .confidence = a->confidence,
        .backend = a->backend,
        .idempotency_key = idem,
        .question = j->text,
    };
    for (const msgcopy *mc = c->queue; mc; mc = mc->next) {
        rep.redelivery |= mc->attempts > 1 || mc->n_qids > 1;
        if (&mc->m == j->msg)
            break;
    }
    if (a->handoff) {
        j->handed_off = 1;
        set_owner_ex(c, OWNER_HUMAN, a->handoff_reason ? a->handoff_reason : "handoff", 0);
        c->handoff_pending = 1;
    }
    if (j->typing_ev)
        event_del(j->typing_ev);
    if (c->typing_on && KOKO_OPS_HAS(ops, koko_channel_ops, typing) && ops->typing) {
        ops->typing(ch->state, j->msg, 0);
        c->typing_on = 0;
    }
    j->calls++;
    ops->deliver(ch->state, &rep, on_delivered, j);
    free(idem);
}

/* The answer is taking a while: show the customer that one is coming. */
static void on_typing_due(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    job *j = arg;
    conv *c = j->conv;
    if (j->finished || j->superseded || !c || c->running != j)
        return;
    koko_instance *ch = tenant_channel(j->t, j->channel);
    if (!ch || ch->st == INST_DEAD)
        return;
    const koko_channel_ops *ops = ch->desc->ops;
    if (KOKO_OPS_HAS(ops, koko_channel_ops, typing) && ops->typing) {
        ops->typing(ch->state, j->msg, 1);
        c->typing_on = 1;
    }
}

/* The quiet window of C ended: one job answers everything queued. */
/* The customer's contact key: "{channel}:{contact id}" (custmem.h), or NULL. */
static char *contact_of(const koko_msg *m)
{
    if (!m->contact_id || !*m->contact_id || !m->channel)
        return NULL;
    return util_asprintf("%s:%s", m->channel, m->contact_id);
}

static void on_quiet(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    conv *c = arg;
    pipeline *p = c->p;
    if (!c->queue || c->running)
        return;
    generation *g = p->kd->current;
    tenant *t = g ? gen_tenant(g, c->queue->m.tenant) : NULL;
    if (!t || p->kd->stopping) {
        log_warn("pipeline", "conversation %s: tenant gone or stopping; %zu message(s) not answered", c->key, c->n_queue);
        return;
    }
    strbuf sb = {0};
    const msgcopy *last = NULL;
    const char *handoff = NULL;
    for (const msgcopy *mc = c->queue; mc; mc = mc->next) {
        if (mc->m.text && *mc->m.text)
            sb_printf(&sb, "%s%s", sb.len ? "\n" : "", mc->m.text);
        if (mc->m.handoff)
            handoff = mc->m.handoff;
        last = mc;
    }
    char *contact = contact_of(&last->m);
    chat_input in = {.tenant = t->name, .text = sb.buf ? sb.buf : "", .conversation_id = last->m.conversation_id,
                     .language = last->m.language, .channel = last->m.channel, .inbox = last->m.inbox,
                     .contact = contact};
    job *j = job_new(p, g, t, &in);
    free(contact);
    sb_free(&sb);
    j->conv = c;
    j->batch = c->n_queue;
    j->msg = &last->m;
    j->channel_handoff = handoff;
    c->running = j;
    j->typing_ev = evtimer_new(p->kd->base, on_typing_due, j);
    struct timeval tv = {0, TYPING_DELAY_MS * 1000};
    evtimer_add(j->typing_ev, &tv);
    start_job(j);
}

static void count_drop(kokod *kd, const char *tenant_name, const char *code)
{
    char *k = util_asprintf("filtered.%s", code);
    kokod_count(kd, tenant_name, k, 1);
    kokod_count(kd, tenant_name, "filtered", 1);
    free(k);
}

/* The claimed message MC (taken) of channel CH: guard, ownership, then into the conversation's queue. */
static void take_message(pipeline *p, tenant *t, koko_instance *ch, msgcopy *mc)
{
    kokod *kd = p->kd;
    const koko_msg *m = &mc->m;
    char *key = conv_key_of(t->name, ch->desc->name, m->conversation_id);
    guard_verdict v;
    if (guard_check(m, &v)) {
        if (strcmp(v.code, "agent_reply") == 0) {
            conv *c = conv_get(p, key, 1);
            conv_drop_pending(c);
            set_owner(c, OWNER_HUMAN, "an agent replied");
        }
        log_info("guard", "%s/%s: message %s in conversation %s dropped: %s", t->name, ch->desc->name, m->msg_id,
                 m->conversation_id, v.detail);
        count_drop(kd, t->name, v.code);
        free(key);
        entry_ack(p, mc, 0);
        msgcopy_free(mc);
        return;
    }
    conv *c = conv_get(p, key, 1);
    free(key);
    if (c->owner == OWNER_HUMAN) {
        log_info("guard", "%s/%s: message %s dropped: conversation %s is owned by a human", t->name, ch->desc->name,
                 m->msg_id, m->conversation_id);
        count_drop(kd, t->name, "owned_by_human");
        entry_ack(p, mc, 0);
        msgcopy_free(mc);
        return;
    }
    /* the same message queued twice (accepted again after a crash): one answer acks both */
    for (msgcopy *q = c->queue; q; q = q->next)
        if (strcmp(q->m.msg_id, m->msg_id) == 0) {
            q->qids = realloc(q->qids, (q->n_qids + mc->n_qids) * sizeof *q->qids);
            memcpy(q->qids + q->n_qids, mc->qids, mc->n_qids * sizeof *mc->qids);
            q->n_qids += mc->n_qids;
            mc->n_qids = 0;
            msgcopy_free(mc);
            return;
        }
    if (c->owner == OWNER_RESOLVED)
        set_owner(c, OWNER_BOT, "the customer wrote again");
    if (c->queue_tail)
        c->queue_tail->next = mc;
    else
        c->queue = mc;
    c->queue_tail = mc;
    c->n_queue++;
    if (c->running) { /* a newer message supersedes the answer being made */
        c->running->superseded = 1;
        c->running = NULL;
    }
    if (!c->quiet_ev)
        c->quiet_ev = evtimer_new(kd->base, on_quiet, c);
    uint32_t q = KOKO_HAS_FIELD(m, koko_msg, quiet_ms) ? m->quiet_ms : 0;
    struct timeval tv = {q / 1000, (q % 1000) * 1000};
    evtimer_add(c->quiet_ev, &tv);
}

/* ---- accept: persist, de-duplicate, then acknowledge the channel ---- */

typedef struct acceptance {
    pipeline *p;
    koko_submit_fn done;
    void *arg;
    char *tenant;
    char *dedup_key;
    char *qid;
    char *payload; /* kept for the spool when the store is unreachable */
    int spooled;   /* the message went to the local spool */
    koko_submit_status st;
    char error[256];
} acceptance;

static void accept_free(acceptance *a)
{
    free(a->tenant);
    free(a->dedup_key);
    free(a->qid);
    free(a->payload);
    free(a);
}

static void accept_answer(acceptance *a)
{
    if (!a->p->closing) {
        kokod_count(a->p->kd, a->tenant, a->st == KOKO_SUBMIT_ACCEPTED    ? "accepted"
                                         : a->st == KOKO_SUBMIT_DUPLICATE ? "duplicates"
                                                                          : "rejected",
                    1);
        a->done(a->st, a->st == KOKO_SUBMIT_REJECTED ? a->error : NULL, a->arg);
        if (a->st == KOKO_SUBMIT_ACCEPTED)
            pump_kick(a->p);
    }
    accept_free(a);
}

static void answer_later(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    accept_answer(arg);
}

static void on_duplicate_removed(const store_result *r, void *arg)
{
    acceptance *a = arg;
    if (r->status != STORE_OK && r->status != STORE_E_CLOSED)
        log_warn("queue", "duplicate entry %s not removed (%s): its reply marker stops a second answer", a->qid,
                 r->error ? r->error : "store error");
    accept_answer(a);
}

static void on_dedup_owner(const store_result *r, void *arg)
{
    acceptance *a = arg;
    /* the consumer may have claimed the entry and taken the key for it first */
    int mine = r->status == STORE_OK && r->found && r->value_len == strlen(a->qid) &&
               memcmp(r->value, a->qid, r->value_len) == 0;
    if (r->status == STORE_OK && !mine && !a->p->closing) {
        /* seen before: the entry just added is a redelivered webhook's */
        a->st = KOKO_SUBMIT_DUPLICATE;
        if (store_queue_ack(a->p->kd->store, a->qid, on_duplicate_removed, a) == 0)
            return;
    }
    accept_answer(a);
}

static void on_dedup(const store_result *r, void *arg)
{
    acceptance *a = arg;
    if (r->status == STORE_OK && r->integer == 1 && !a->p->closing)
        fresh_add(a->p, a->qid);
    if (r->status == STORE_OK && r->integer == 0 && !a->p->closing) {
        /* taken: by an earlier copy of this message, or by our own entry's consumer */
        if (store_get(a->p->kd->store, a->dedup_key, on_dedup_owner, a) == 0)
            return;
    }
    /* a dedup key that could not be written is no reason to refuse a message
     * already persisted: a duplicate is caught by the reply marker */
    accept_answer(a);
}

static void on_queued(const store_result *r, void *arg)
{
    acceptance *a = arg;
    kokod *kd = a->p->kd;
    if (r->status == STORE_E_UNAVAILABLE && !a->spooled && kd->spool && !a->p->closing) {
        a->spooled = 1; /* the store went away under this call: the local spool takes it */
        if (store_queue_add(kd->spool, a->payload, strlen(a->payload), on_queued, a) == 0)
            return;
    }
    if (r->status == STORE_OK && a->spooled && !a->p->closing) {
        static int64_t last;
        if (util_unix_time() - last >= 10) {
            last = util_unix_time();
            log_warn("queue", "the state store is unreachable: messages are accepted into the local spool and moved "
                     "into the store when it is back");
        }
        a->qid = xstrdup(r->value);
        a->st = KOKO_SUBMIT_ACCEPTED; /* de-duplicated when claimed from the store (its dedup key is set then) */
        accept_answer(a);
        return;
    }
    if (r->status != STORE_OK || a->p->closing) {
        a->st = KOKO_SUBMIT_REJECTED;
        snprintf(a->error, sizeof a->error, "the state store did not persist the message: %s",
                 r->error ? r->error : "closed");
        accept_answer(a);
        return;
    }
    a->qid = xstrdup(r->value);
    a->st = KOKO_SUBMIT_ACCEPTED;
    if (store_set_nx(a->p->kd->store, a->dedup_key, a->qid, strlen(a->qid), DEDUP_TTL_MS, on_dedup, a) != 0) {
        accept_answer(a);
        return;
    }
    /* claim it now: the claim goes out after the dedup key (same batch or the next), so
     * on_dedup has run by the time the claim returns; the channel's 200 does not wait */
    pump_kick(a->p);
}

void pipeline_submit(pipeline *p, koko_instance *channel, const koko_msg *msg, koko_submit_fn done, void *arg)
{
    kokod *kd = p->kd;
    acceptance *a = xcalloc(1, sizeof *a);
    a->p = p;
    a->done = done;
    a->arg = arg;
    a->tenant = xstrdup(channel->tenant);
    a->st = KOKO_SUBMIT_REJECTED;
    generation *g = kd->current;
    tenant *t = g ? gen_tenant(g, channel->tenant) : NULL;
    if (kd->stopping || !t || !kd->store) {
        snprintf(a->error, sizeof a->error, "%s", kd->stopping ? "kokod is stopping" : !t ? "tenant no longer configured"
                                                                                          : "no state store");
    } else if (!msg || !msg->msg_id || !*msg->msg_id || !msg->conversation_id || !*msg->conversation_id) {
        snprintf(a->error, sizeof a->error, "message without msg_id or conversation_id");
    } else {
        a->dedup_key = msg_key(t->name, "dedup", channel->desc->name, msg->msg_id);
        a->payload = msg_serialise(msg, t->name, channel->desc->name);
        /* the store known to be down: straight into the spool, no timeout to wait for */
        a->spooled = kd->spool && !store_healthy(kd->store, NULL, 0);
        int rc = store_queue_add(a->spooled ? kd->spool : kd->store, a->payload, strlen(a->payload), on_queued, a);
        if (rc == 0)
            return;
        snprintf(a->error, sizeof a->error, "the state store refused the message (closing)");
    }
    event_base_once(kd->base, -1, EV_TIMEOUT, answer_later, a, &(struct timeval){0, 0});
}

/* ---- the queue consumer: claim, check the reply marker, take ---- */

typedef struct claimed {
    pipeline *p;
    msgcopy *mc;
    int step; /* 0: read the dedup key; 1: it was missing, take it; 2: taken meanwhile, read it again */
    int waiting;       /* the reply marker read and the conversation load */
    int marker_status; /* store_status of the marker read */
    int marker_found;
    char *marker_error;
} claimed;

static void check_marker(claimed *cl);
static void on_marker(const store_result *r, void *arg);
static void on_owner(const store_result *r, void *arg);
static void on_conv_ready(conv *c, void *arg);

/* Which queue entry answers a message: the one whose id is in its dedup key.
 * A message can be queued twice (a replica died between persisting it and
 * writing its dedup key; the channel's retry was queued by another replica):
 * the copy that does not own the key is acked unanswered, so two replicas
 * never answer the same message at the same time. */
static void check_owner(claimed *cl)
{
    msgcopy *mc = cl->mc;
    char *k = msg_key(mc->m.tenant, "dedup", mc->m.channel, mc->m.msg_id);
    int rc = cl->step == 1 ? store_set_nx(cl->p->kd->store, k, mc->qids[0], strlen(mc->qids[0]), DEDUP_TTL_MS,
                                          on_owner, cl)
                           : store_get(cl->p->kd->store, k, on_owner, cl);
    free(k);
    if (rc != 0) {
        held_del(cl->p, mc->qids[0]);
        msgcopy_free(mc);
        free(cl);
    }
}

static void on_owner(const store_result *r, void *arg)
{
    claimed *cl = arg;
    pipeline *p = cl->p;
    msgcopy *mc = cl->mc;
    if (p->closing) {
        msgcopy_free(mc);
        free(cl);
        return;
    }
    if (r->status != STORE_OK) {
        entry_fail(p, mc, r->error ? r->error : "dedup key unreadable");
        msgcopy_free(mc);
        free(cl);
        return;
    }
    int own;
    if (cl->step == 1) {
        if (r->integer == 0) { /* someone took it between our read and our write: whose is it? */
            cl->step = 2;
            check_owner(cl);
            return;
        }
        own = 1;
    } else if (!r->found) {
        if (cl->step == 2) {
            own = 1; /* gone again (expired): nobody else answers it */
        } else {
            cl->step = 1;
            check_owner(cl);
            return;
        }
    } else {
        /* "1": written by a kokod before entry ids were recorded there */
        own = (r->value_len == 1 && r->value[0] == '1') ||
              (r->value_len == strlen(mc->qids[0]) && memcmp(r->value, mc->qids[0], r->value_len) == 0);
    }
    if (!own) {
        log_info("queue", "%s/%s: message %s is queued twice; entry %s is the second copy: acked, answered once by "
                 "the other", mc->m.tenant, mc->m.channel, mc->m.msg_id, mc->qids[0]);
        entry_ack(p, mc, 0);
        msgcopy_free(mc);
        free(cl);
        return;
    }
    check_marker(cl);
}

/* The entry is ours to answer: read its reply marker and load its
 * conversation at once (one round trip), then take the message unless the
 * marker says it was answered already. */
static void check_marker(claimed *cl)
{
    pipeline *p = cl->p;
    msgcopy *mc = cl->mc;
    generation *g = p->kd->current;
    tenant *t = g ? gen_tenant(g, mc->m.tenant) : NULL;
    koko_instance *ch = t ? tenant_channel(t, mc->m.channel) : NULL;
    if (!ch || ch->st == INST_DEAD) {
        log_warn("queue", "entry %s: tenant %s or its channel %s is not configured", mc->qids[0], mc->m.tenant,
                 mc->m.channel);
        entry_fail(p, mc, "tenant or channel not configured");
        msgcopy_free(mc);
        free(cl);
        return;
    }
    char *k = msg_key(mc->m.tenant, "reply", mc->m.channel, mc->m.msg_id);
    int rc = store_get(p->kd->store, k, on_marker, cl);
    free(k);
    if (rc != 0) {
        held_del(p, mc->qids[0]);
        msgcopy_free(mc);
        free(cl);
        return;
    }
    cl->waiting = 2;
    char *key = conv_key_of(t->name, ch->desc->name, mc->m.conversation_id);
    char *contact = contact_of(&mc->m);
    conv_load_start(p, key, contact, on_conv_ready, cl);
    free(contact);
    free(key);
}

/* Both the marker and the conversation are in: answer, ack or fail. */
static void marker_and_conv(claimed *cl)
{
    pipeline *p = cl->p;
    msgcopy *mc = cl->mc;
    int status = cl->marker_status, found = cl->marker_found;
    char *err = cl->marker_error;
    free(cl);
    if (p->closing) {
        free(err);
        msgcopy_free(mc);
        return;
    }
    if (status == STORE_OK && found) {
        log_info("queue", "%s/%s: message %s was answered already (entry %s, delivery %d): acked, not answered again",
                 mc->m.tenant, mc->m.channel, mc->m.msg_id, mc->qids[0], mc->attempts);
        entry_ack(p, mc, 0);
        msgcopy_free(mc);
    } else if (status != STORE_OK) {
        entry_fail(p, mc, err ? err : "reply marker unreadable");
        msgcopy_free(mc);
    } else {
        generation *g = p->kd->current;
        tenant *t = g ? gen_tenant(g, mc->m.tenant) : NULL;
        koko_instance *ch = t ? tenant_channel(t, mc->m.channel) : NULL;
        if (!ch || ch->st == INST_DEAD) {
            entry_fail(p, mc, "tenant or channel not configured");
            msgcopy_free(mc);
        } else {
            take_message(p, t, ch, mc);
        }
    }
    free(err);
}

static void on_marker(const store_result *r, void *arg)
{
    claimed *cl = arg;
    cl->marker_status = r->status;
    cl->marker_found = r->found;
    if (r->status != STORE_OK)
        cl->marker_error = xstrdup(r->error ? r->error : "reply marker unreadable");
    if (--cl->waiting == 0)
        marker_and_conv(cl);
}

/* The conversation of the claimed message is loaded from the store. */
static void on_conv_ready(conv *c, void *arg)
{
    (void)c;
    claimed *cl = arg;
    if (--cl->waiting == 0)
        marker_and_conv(cl);
}

static void pump_at(pipeline *p, int ms)
{
    if (!p->pump_ev || p->closing)
        return;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(p->pump_ev, &tv);
}

static void pump_kick(pipeline *p)
{
    if (!p->claiming)
        pump_at(p, 0);
    else
        p->kick_again = 1; /* the claim in flight may have been sent before the entry was added */
}

/* Remember entry ID: accepted here, its dedup key names it. */
static void fresh_add(pipeline *p, const char *id)
{
    free(p->fresh[p->fresh_next]);
    p->fresh[p->fresh_next] = xstrdup(id);
    p->fresh_next = (p->fresh_next + 1) % FRESH_RING;
}

/* 1 when ID was accepted here (and forget it): it owns its dedup key. */
static int fresh_take(pipeline *p, const char *id)
{
    for (size_t n = 0, i = p->fresh_next; n < FRESH_RING; n++) {
        i = (i + FRESH_RING - 1) % FRESH_RING; /* newest first */
        if (p->fresh[i] && strcmp(p->fresh[i], id) == 0) {
            free(p->fresh[i]);
            p->fresh[i] = NULL;
            return 1;
        }
    }
    return 0;
}

static void on_claimed(const store_result *r, void *arg)
{
    pipeline *p = arg;
    p->claiming = 0;
    if (p->closing)
        return;
    if (r->status != STORE_OK) {
        static int64_t last;
        if (util_unix_time() - last >= 10) {
            last = util_unix_time();
            log_warn("queue", "claim failed: %s (retrying)", r->error ? r->error : "store error");
        }
        pump_at(p, 250);
        return;
    }
    for (size_t i = 0; i < r->n_items; i++) {
        const store_item *it = &r->items[i];
        if (held_add(p, it->name))
            continue; /* ours already: its lease ran out while we work on it */
        msgcopy *mc = msg_parse(it->value, it->value_len);
        if (!mc) {
            log_error("queue", "entry %s is not a message kokod wrote; failing it (dead letter after %d tries)",
                      it->name, p->kd->current ? p->kd->current->cfg->state_max_attempts : 0);
            held_del(p, it->name);
            store_queue_fail(p->kd->store, it->name, "payload is not a kokod message", on_entry_done,
                             util_asprintf("fail of queue entry %s", it->name));
            continue;
        }
        mc->qids = xcalloc(1, sizeof *mc->qids);
        mc->qids[0] = xstrdup(it->name);
        mc->n_qids = 1;
        mc->attempts = it->attempts;
        claimed *cl = xcalloc(1, sizeof *cl);
        cl->p = p;
        cl->mc = mc;
        if (it->attempts == 1 && fresh_take(p, it->name))
            check_marker(cl); /* accepted here a moment ago: its dedup key names it */
        else
            check_owner(cl);
    }
    pump_at(p, r->n_items > 0 || p->kick_again ? 0 : POLL_MS);
    p->kick_again = 0;
}

static void on_pump(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pipeline *p = arg;
    kokod *kd = p->kd;
    if (p->closing || p->claiming || kd->stopping || !kd->store || !kd->current)
        return;
    if (p->n_held >= HOLD_CAP) {
        pump_at(p, POLL_MS);
        return;
    }
    size_t room = HOLD_CAP - p->n_held;
    int max = room < CLAIM_BATCH ? (int)room : CLAIM_BATCH;
    p->claiming = 1;
    p->kick_again = 0;
    if (store_queue_claim(kd->store, p->consumer, kd->current->cfg->state_lease_ms, max, on_claimed, p) != 0) {
        p->claiming = 0;
        pump_at(p, 250);
    }
}

void pipeline_requeued(pipeline *p, const char *payload, size_t len, const char *qid)
{
    msgcopy *mc = p->kd->store ? msg_parse(payload, len) : NULL;
    if (!mc)
        return;
    char *k = msg_key(mc->m.tenant, "dedup", mc->m.channel, mc->m.msg_id);
    store_set(p->kd->store, k, qid, strlen(qid), DEDUP_TTL_MS, on_entry_done,
              util_asprintf("dedup key %s of retried entry %s not recorded", k, qid));
    free(k);
    msgcopy_free(mc);
}

/* ---- the local spool: messages accepted while the store was unreachable ---- */

#define SPOOL_POLL_MS 500
#define SPOOL_LEASE_MS 10000
#define SPOOL_BATCH 64

typedef struct spool_move {
    pipeline *p;
    char *id;
} spool_move;

static void spool_at(pipeline *p, int ms)
{
    if (!p->spool_ev || p->closing)
        return;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(p->spool_ev, &tv);
}

static void on_spool_moved(const store_result *r, void *arg)
{
    spool_move *mv = arg;
    pipeline *p = mv->p;
    kokod *kd = p->kd;
    if (r->status == STORE_OK) {
        /* in the store now: off the spool (a crash before this ack moves it again; its dedup key answers it once) */
        store_queue_ack(kd->spool, mv->id, on_entry_done, util_asprintf("spool entry %s moved; its removal", mv->id));
        p->spool_moved++;
        pump_kick(p);
    } else if (r->status != STORE_E_CLOSED) {
        log_warn("queue", "spool entry %s not moved into the store: %s (tried again in %d s)", mv->id,
                 r->error ? r->error : "store error", SPOOL_LEASE_MS / 1000);
    }
    free(mv->id);
    free(mv);
    if (--p->spool_moving == 0) {
        if (p->spool_moved && !p->closing)
            log_info("queue", "%zu message(s) moved from the local spool into the store", p->spool_moved);
        p->spool_moved = 0;
        spool_at(p, p->spool_full ? 0 : SPOOL_POLL_MS);
    }
}

static void on_spool_claimed(const store_result *r, void *arg)
{
    pipeline *p = arg;
    kokod *kd = p->kd;
    if (p->closing || r->status != STORE_OK || r->n_items == 0) {
        spool_at(p, SPOOL_POLL_MS);
        return;
    }
    p->spool_full = r->n_items >= SPOOL_BATCH;
    p->spool_moving = 1; /* ours until every move is issued */
    for (size_t i = 0; i < r->n_items; i++) {
        spool_move *mv = xcalloc(1, sizeof *mv);
        mv->p = p;
        mv->id = xstrdup(r->items[i].name);
        p->spool_moving++;
        if (store_queue_add(kd->store, r->items[i].value, r->items[i].value_len, on_spool_moved, mv) != 0) {
            p->spool_moving--;
            free(mv->id);
            free(mv);
        }
    }
    if (--p->spool_moving == 0)
        spool_at(p, SPOOL_POLL_MS);
}

static void on_spool_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pipeline *p = arg;
    kokod *kd = p->kd;
    if (p->closing || !kd->spool || p->spool_moving)
        return;
    if (!store_healthy(kd->store, NULL, 0) ||
        store_queue_claim(kd->spool, p->consumer, SPOOL_LEASE_MS, SPOOL_BATCH, on_spool_claimed, p) != 0)
        spool_at(p, SPOOL_POLL_MS);
}

/* ---- lease renewal: a slow answer must not hand its message to a second consumer ---- */

static void on_extended(const store_result *r, void *arg)
{
    char *id = arg;
    if (r->status == STORE_OK && r->integer == 0)
        log_warn("queue", "entry %s: its lease ran out before it was renewed and another consumer took it (the "
                 "reply marker and the channel's redelivery check keep it from being answered twice)", id);
    free(id);
}

static void renew_at(pipeline *p)
{
    kokod *kd = p->kd;
    if (!p->renew_ev || p->closing || !kd->current)
        return;
    int ms = kd->current->cfg->state_lease_ms / 3;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(p->renew_ev, &tv);
}

static void on_renew(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pipeline *p = arg;
    kokod *kd = p->kd;
    if (p->closing || !kd->store || !kd->current)
        return;
    int64_t lease = kd->current->cfg->state_lease_ms;
    for (held *h = p->all_held; h; h = h->all_next) {
        char *id = xstrdup(h->id);
        if (store_queue_extend(kd->store, h->id, p->consumer, lease, on_extended, id) != 0)
            free(id);
    }
    renew_at(p);
}

void pipeline_conversation(pipeline *p, koko_instance *channel, const char *conversation_id, koko_conv_event ev,
                           const char *detail)
{
    if (!conversation_id || !*conversation_id)
        return;
    char *key = conv_key_of(channel->tenant, channel->desc->name, conversation_id);
    conv *c = conv_get(p, key, 1);
    free(key);
    const char *why = detail ? detail : "reported by the channel";
    switch (ev) {
    case KOKO_CONV_HUMAN:
        conv_drop_pending(c);
        set_owner(c, OWNER_HUMAN, why);
        break;
    case KOKO_CONV_RESOLVED:
        conv_drop_pending(c);
        set_owner(c, OWNER_RESOLVED, why);
        custmem_resolved(p->kd, channel->tenant, channel->desc->name, conversation_id);
        break;
    case KOKO_CONV_BOT:
        set_owner(c, OWNER_BOT, why);
        break;
    }
}

void pipeline_forget_conv(pipeline *p, const char *tenant_name, const char *channel, const char *conversation_id)
{
    if (!p || !channel || !conversation_id)
        return;
    char *key = conv_key_of(tenant_name, channel, conversation_id);
    conv *c = conv_get(p, key, 0);
    free(key);
    if (!c)
        return;
    for (size_t i = 0; i < c->n_turns; i++)
        free((char *)c->turns[i].text);
    free(c->turns);
    c->turns = NULL;
    c->n_turns = 0;
    c->lang[0] = '\0';
    json_decref(c->facts);
    c->facts = NULL;
    c->facts_read = 0;
    c->version++; /* a load in flight must not bring them back */
    if (!c->queue && !c->running && !c->loading)
        conv_remove(p, c);
}

const char *pipeline_owner(pipeline *p, const char *tenant_name, const char *channel, const char *conversation_id)
{
    char *key = conv_key_of(tenant_name, channel, conversation_id);
    conv *c = conv_get(p, key, 0);
    free(key);
    return owner_names[c ? c->owner : OWNER_BOT];
}

/* ---- koko_host.chunk_excerpt ---- */

const char *pipeline_chunk_excerpt(koko_instance *inst, void *jobp, size_t i)
{
    job *j = jobp;
    if (!j || j->magic != JOB_MAGIC) {
        log_error(inst ? inst->prefix : "host", "chunk_excerpt: invalid job handle (plugin bug)");
        return NULL;
    }
    if (i >= j->n_hits)
        return NULL;
    if (!j->excerpts[i]) {
        j->excerpts[i] = kb_excerpt(j->kb, j->hit[i], j->text, EXCERPT_CHARS);
        j->chunks[i].excerpt = j->excerpts[i];
    }
    return j->excerpts[i];
}

/* ---- function calling (koko_host.tool_call) ---- */

typedef struct tool_call {
    job *j;
    koko_tool_fn done;
    void *arg;
    json_t *result;
    koko_status st;
    koko_instance *tool;
} tool_call;

static void tool_answer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    tool_call *tc = arg;
    tc->done(tc->st, tc->result, tc->arg);
    json_decref(tc->result);
    tc->j->calls--;
    job_maybe_free(tc->j);
    free(tc);
}

static void tool_done(koko_status st, json_t *result, void *arg)
{
    tool_call *tc = arg;
    tc->st = st;
    tc->result = result ? json_incref(result) : json_pack("{s:s}", "error", "the tool returned nothing");
    /* the tool's callback may run inside its call: hand the answer over from the loop */
    event_base_once(tc->j->p->kd->base, -1, EV_TIMEOUT, tool_answer, tc, &(struct timeval){0, 0});
}

void pipeline_tool_call(koko_instance *inst, void *jobp, const char *name, const json_t *args, koko_tool_fn done,
                        void *arg)
{
    job *j = jobp;
    if (!j || j->magic != JOB_MAGIC || !done) {
        log_error(inst ? inst->prefix : "host", "tool_call: invalid job handle (plugin bug)");
        return;
    }
    tool_call *tc = xcalloc(1, sizeof *tc);
    tc->j = j;
    tc->done = done;
    tc->arg = arg;
    j->calls++;
    kokod_count(j->p->kd, j->t->name, "tool_calls", 1);
    if (name && strcmp(name, "handoff_to_human") == 0) {
        const char *why = json_string_value(json_object_get(args, "reason"));
        free(j->model_handoff);
        j->model_handoff = util_asprintf("the model asked for a human: %s", why && *why ? why : "no reason given");
        tc->st = KOKO_OK;
        tc->result = json_pack("{s:b,s:s}", "ok", 1, "note", "a human colleague will take over after your answer");
        event_base_once(j->p->kd->base, -1, EV_TIMEOUT, tool_answer, tc, &(struct timeval){0, 0});
        return;
    }
    /* only a function declared for this request, by the tool that declared it */
    koko_instance *const *tools = j->route && j->route->has_tools ? j->route->tools : j->t->tools;
    size_t n = j->route && j->route->has_tools ? j->route->n_tools : j->t->n_tools;
    for (size_t i = 0; name && i < n && !tc->tool; i++) {
        const koko_tool_ops *ops = tools[i]->desc->ops;
        size_t k;
        json_t *d;
        json_array_foreach((json_t *)ops->declarations(tools[i]->state), k, d)
            if (strcmp(json_string_value(json_object_get(d, "name")) ?: "", name) == 0)
                tc->tool = tools[i];
    }
    if (!tc->tool || tc->tool->st == INST_DEAD) {
        tc->st = KOKO_ERR_PERMANENT;
        tc->result = json_pack("{s:s}", "error", "no such function is available here");
        log_warn(inst->prefix, "model called unknown or unavailable function \"%s\"", name ? name : "(null)");
        event_base_once(j->p->kd->base, -1, EV_TIMEOUT, tool_answer, tc, &(struct timeval){0, 0});
        return;
    }
    const koko_tool_ops *ops = tc->tool->desc->ops;
    ops->call(tc->tool->state, name, args, tool_done, tc);
}

pipeline *pipeline_new(kokod *kd)
{
    pipeline *p = xcalloc(1, sizeof *p);
    p->kd = kd;
    p->nbuckets = CONV_BUCKETS_MIN;
    p->buckets = xcalloc(p->nbuckets, sizeof *p->buckets);
    char host[64] = "kokod";
    gethostname(host, sizeof host - 1);
    snprintf(p->consumer, sizeof p->consumer, "%s:%ld:%llu", host, (long)getpid(), (unsigned long long)util_now_ms());
    p->pump_ev = evtimer_new(kd->base, on_pump, p);
    p->renew_ev = evtimer_new(kd->base, on_renew, p);
    p->spool_ev = evtimer_new(kd->base, on_spool_tick, p);
    p->dl_ev = evtimer_new(kd->base, on_deadlines, p);
    return p;
}

void pipeline_start(pipeline *p)
{
    log_info("queue", "consumer %s: processing the inbound queue (unfinished entries first)", p->consumer);
    pump_at(p, 0);
    renew_at(p);
    if (p->kd->spool)
        spool_at(p, 0);
}

void pipeline_stop(pipeline *p)
{
    if (!p)
        return;
    p->closing = 1;
    if (p->pump_ev) {
        event_free(p->pump_ev);
        p->pump_ev = NULL;
    }
    if (p->renew_ev) {
        event_free(p->renew_ev);
        p->renew_ev = NULL;
    }
    if (p->spool_ev) {
        event_free(p->spool_ev);
        p->spool_ev = NULL;
    }
}

size_t pipeline_inflight(const pipeline *p) { return p->inflight; }

void pipeline_free(pipeline *p)
{
    if (!p)
        return;
    pipeline_stop(p);
    json_decref(p->budget_alerts);
    while (p->lru_head)
        conv_remove(p, p->lru_head);
    for (size_t b = 0; b < HELD_BUCKETS; b++)
        while (p->hbuckets[b])
            held_del(p, p->hbuckets[b]->id);
    for (size_t i = 0; i < FRESH_RING; i++)
        free(p->fresh[i]);
    if (p->dl_ev)
        event_free(p->dl_ev);
    free(p->buckets);
    free(p);
}
