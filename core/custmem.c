/*
 * core/custmem.c — customer memory (see custmem.h), the daemon's half:
 * facts about each customer in the store, loaded for a prompt, extracted
 * from resolved conversations through the tenant's LLM chain, and the GDPR
 * export and forget that walk every key a customer left behind. The pure
 * half (checks, merging, selection) is custmem_facts.c.
 *
 * The asynchronous parts are built from one pattern: an operation (cm_op)
 * issues a batch of store calls, each answered into the operation by a
 * small "take" function; when the batch's last answer arrives, the
 * operation's next stage runs. The final answer always goes out from a
 * zero-delay timer, so it never runs inside the call that asked.
 */
#include "kokoconf.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "custmem.h"
#include "gen.h"
#include "instance.h"
#include "kokod.h"
#include "log.h"
#include "pipeline.h"
#include "store.h"
#include "text.h"
#include "util.h"

#define EXTRACT_TICK_MS 5000       /* the runner looks for due jobs this often */
#define EXTRACT_LEASE_MS 120000    /* one replica runs a job at a time */
#define EXTRACT_DEADLINE_MS 60000  /* a backend that has not answered by then is skipped */
#define EXTRACT_GIVE_UP_S (30 * 86400) /* a job no backend could do for this long is dropped */
#define EXTRACT_RUNNING_MAX 4      /* jobs in flight per process */
#define SCAN_MAX 1000              /* queue entries / dead letters looked at by export and forget */
#define TRANSCRIPT_MAX 24000       /* bytes of conversation sent for extraction */

static int64_t fact_int(const json_t *f, const char *k) { return (int64_t)json_integer_value(json_object_get(f, k)); }
static const char *fact_str(const json_t *f, const char *k) { return json_string_value(json_object_get(f, k)); }

/* ---- store keys ---- */

static char *contact_key(const char *tname, const char *contact, const char *what)
{
    char *c = store_key_part(contact);
    char *k = util_asprintf("%s:contact:%s:%s", tname, c, what);
    free(c);
    return k;
}

/* "chatwoot:42" (escaped parts) for channel CH and conversation CONV. */
static char *conv_field(const char *ch, const char *conv)
{
    char *a = store_key_part(ch), *b = store_key_part(conv);
    char *f = util_asprintf("%s:%s", a, b);
    free(a);
    free(b);
    return f;
}

/* ---- operations ---- */

typedef struct cm_op cm_op;
typedef void (*cm_stage_fn)(cm_op *op);
typedef void (*cm_take_fn)(cm_op *op, const store_result *r, const char *ud);

struct cm_op {
    kokod *kd;
    store *st;
    generation *g;      /* held (gen_ref) by extraction */
    char *tenant, *contact, *canon;
    custmem_fn done;
    void *arg;
    custmem_facts_fn facts_done;
    int pending;        /* store calls in flight */
    int status;         /* 200, or the first failure's HTTP status */
    char *error;
    cm_stage_fn next;
    cm_stage_fn after_resolve; /* resolve(): what runs once the person is known */
    cm_stage_fn after_walk;    /* walk(): what runs once everything is loaded */
    struct cm_op *live_prev, *live_next; /* every operation not freed yet */
    /* what the walk found */
    json_t *facts;      /* canonical's facts: id -> fact */
    json_t *aliases;    /* keys linked to the canonical */
    char *link;         /* the asked contact's @link */
    json_t *body;       /* put: the request; extract: the request */
    json_t *linked;     /* put: each contact to link -> its own hash {"facts", "@link", "@aliases"} */
    json_t *keys;       /* export: the store keys found under the person's contact prefixes; summary: facts hashes */
    json_t *convs;      /* export/forget: "ch:conv" -> {"channel","conversation_id","first_seen","state","history"} */
    json_t *jobs;       /* pending extraction jobs of the person: field -> job */
    json_t *queue, *dead; /* queue entries / dead letters carrying the person's messages */
    json_t *deleted;    /* forget: counts */
    json_t *extracted;  /* extract: the facts the model gave */
    char *text;         /* prompt: the customer's message; extract: transcript */
    size_t budget;
    char *source;       /* extract: "chatwoot:42" */
    char *job_field;    /* job: the {T}:extract field */
    json_t *job;        /* job: its record */
    const char *backend;
};

static cm_op *live_ops;   /* operations not freed yet */
static int cm_closing;    /* custmem_stop() ran: answer synchronously, start nothing */

static void on_bg(const store_result *r, void *arg)
{
    char *what = arg;
    if (r->status != STORE_OK && r->status != STORE_E_CLOSED)
        log_warn("memory", "%s not recorded: %s", what, r->error ? r->error : "store error");
    free(what);
}

/* Writes nobody waits for: a failure is logged with WHAT. */
static void bg_hash_del(store *st, const char *key, const char *field, const char *what)
{
    char *w = xstrdup(what);
    if (store_hash_del(st, key, field, on_bg, w) != 0)
        free(w);
}

static void bg_hash_set(store *st, const char *key, const char *field, const char *val, const char *what)
{
    char *w = xstrdup(what);
    if (store_hash_set(st, key, field, val, strlen(val), on_bg, w) != 0)
        free(w);
}

static void bg_del(store *st, const char *key, const char *what)
{
    char *w = xstrdup(what);
    if (store_del(st, key, on_bg, w) != 0)
        free(w);
}

static void op_free(cm_op *op)
{
    if (op->live_prev)
        op->live_prev->live_next = op->live_next;
    else
        live_ops = op->live_next;
    if (op->live_next)
        op->live_next->live_prev = op->live_prev;
    if (op->g)
        gen_release(op->g);
    free(op->tenant);
    free(op->contact);
    free(op->canon);
    free(op->error);
    free(op->link);
    free(op->text);
    free(op->source);
    free(op->job_field);
    json_decref(op->job);
    json_decref(op->facts);
    json_decref(op->aliases);
    json_decref(op->body);
    json_decref(op->linked);
    json_decref(op->keys);
    json_decref(op->convs);
    json_decref(op->jobs);
    json_decref(op->queue);
    json_decref(op->dead);
    json_decref(op->deleted);
    json_decref(op->extracted);
    free(op);
}

static cm_op *op_new(kokod *kd, const char *tname, const char *contact)
{
    cm_op *op = xcalloc(1, sizeof *op);
    op->kd = kd;
    op->st = kd->store;
    op->tenant = xstrdup(tname);
    op->contact = contact ? xstrdup(contact) : NULL;
    op->status = 200;
    op->facts = json_object();
    op->aliases = json_array();
    op->linked = json_object();
    op->keys = json_array();
    op->live_next = live_ops;
    if (live_ops)
        live_ops->live_prev = op;
    live_ops = op;
    return op;
}

static void op_error(cm_op *op, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void op_error(cm_op *op, int status, const char *fmt, ...)
{
    if (op->error)
        return;
    va_list ap;
    va_start(ap, fmt);
    char buf[1024];
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    op->error = xstrdup(buf);
    op->status = status;
}

/* The answer, from a zero-delay timer. */
typedef struct cm_answer {
    cm_op *op;
    json_t *doc;
    struct event *ev;
    int start; /* op_start(): run the first stage (op->next) rather than answer */
    struct cm_answer *prev, *next;
} cm_answer;

static cm_answer *answers; /* scheduled, not delivered yet */

/* Take A off the scheduled list and free its timer (A itself stays). */
static void answer_unlink(cm_answer *a)
{
    if (a->prev)
        a->prev->next = a->next;
    else if (answers == a)
        answers = a->next;
    if (a->next)
        a->next->prev = a->prev;
    if (a->ev)
        event_free(a->ev);
}

/* Run FN(A) from a zero-delay timer; A is on the scheduled list until then. */
static void answer_schedule(cm_answer *a, event_callback_fn fn)
{
    a->ev = evtimer_new(a->op->kd->base, fn, a);
    a->next = answers;
    if (answers)
        answers->prev = a;
    answers = a;
    struct timeval tv = {0, 0};
    evtimer_add(a->ev, &tv);
}

static void answer_now(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    cm_answer *a = arg;
    cm_op *op = a->op;
    answer_unlink(a);
    if (op->facts_done)
        op->facts_done(a->doc, op->arg);
    else if (op->done)
        op->done(op->error ? op->status : 200, op->error ? NULL : a->doc, op->error, op->arg);
    if (op->error && a->doc)
        json_decref(a->doc);
    op_free(op);
    free(a);
}

static void op_finish(cm_op *op, json_t *doc)
{
    cm_answer *a = xcalloc(1, sizeof *a);
    a->op = op;
    a->doc = doc;
    if (cm_closing) {
        /* kokod is shutting down (inside store_close): no loop will run again */
        answer_now(-1, 0, a);
        return;
    }
    answer_schedule(a, answer_now);
}

typedef struct cm_call {
    cm_op *op;
    cm_take_fn take;
    char *ud;
} cm_call;

/* A stage's opening: when an earlier one failed, answer the error and stop. */
static int failed(cm_op *op)
{
    if (!op->error)
        return 0;
    op_finish(op, NULL);
    return 1;
}

static void stage_done(cm_op *op)
{
    cm_stage_fn next = op->next;
    op->next = NULL;
    next(op);
}

static void on_store(const store_result *r, void *arg)
{
    cm_call *c = arg;
    cm_op *op = c->op;
    if (r->status == STORE_OK) {
        if (c->take)
            c->take(op, r, c->ud);
    } else {
        op_error(op, 503, "the state store failed: %s", r->error ? r->error : "unknown error");
    }
    free(c->ud);
    free(c);
    if (--op->pending == 0)
        stage_done(op);
}

static cm_call *call(cm_op *op, cm_take_fn take, const char *ud)
{
    cm_call *c = xcalloc(1, sizeof *c);
    c->op = op;
    c->take = take;
    c->ud = ud ? xstrdup(ud) : NULL;
    op->pending++;
    return c;
}

/* The store refused a call outright (closing): the call never answers. */
static void refused(cm_call *c, int rc)
{
    if (rc == 0)
        return;
    op_error(c->op, 503, "the state store is closing");
    c->op->pending--;
    free(c->ud);
    free(c);
}

/* Every call of a stage is issued: when none is in flight, go on now. The
 * first stage always starts from a timer (see op_start), so this is never
 * inside a public call. */
static void issued(cm_op *op)
{
    if (op->pending == 0)
        stage_done(op);
}

/* Start an operation's first stage (op->next) later, from the loop. */
static void start_now(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    cm_answer *a = arg;
    cm_op *op = a->op;
    answer_unlink(a);
    free(a);
    cm_stage_fn first = op->next;
    op->next = NULL;
    if (cm_closing)
        op_error(op, 503, "kokod is stopping");
    if (failed(op))
        return;
    if (!op->st) {
        op_error(op, 503, "kokod runs without a state store");
        op_finish(op, NULL);
        return;
    }
    first(op);
}

static void op_start(cm_op *op, cm_stage_fn first)
{
    if (cm_closing) {
        op_error(op, 503, "kokod is stopping");
        op_finish(op, NULL);
        return;
    }
    op->next = first; /* run by the zero-delay answer path's twin: a started stage */
    cm_answer *a = xcalloc(1, sizeof *a);
    a->op = op;
    a->doc = NULL;
    a->start = 1;
    answer_schedule(a, start_now);
}

/* ---- resolving a contact to its person: canonical key, facts, aliases ---- */

/* A contact's facts hash: fact fields into FACTS (id -> fact), "@link" into
 * *LINK (new string), "@alias:K" keys into ALIASES. */
static void parse_facts_hash(const store_result *r, json_t *facts, char **link, json_t *aliases)
{
    for (size_t i = 0; i < r->n_items; i++) {
        const store_item *it = &r->items[i];
        if (strcmp(it->name, "@link") == 0) {
            if (link) {
                free(*link);
                *link = util_asprintf("%.*s", (int)it->value_len, it->value);
            }
        } else if (strncmp(it->name, "@alias:", 7) == 0) {
            json_array_append_new(aliases, json_string(it->name + 7));
        } else {
            json_t *f = json_loadb(it->value, it->value_len, 0, NULL);
            if (json_is_object(f))
                json_object_set_new(facts, it->name, f);
            else
                json_decref(f);
        }
    }
}

/* The asked contact's (UD NULL) or the canonical's (UD "canon") facts hash into OP. */
static void take_facts(cm_op *op, const store_result *r, const char *ud)
{
    int canon = ud && strcmp(ud, "canon") == 0;
    parse_facts_hash(r, op->facts, canon ? NULL : &op->link, op->aliases);
}

static void resolve_done(cm_op *op)
{
    if (!op->canon)
        op->canon = xstrdup(op->contact);
    cm_stage_fn then = op->after_resolve;
    op->after_resolve = NULL;
    then(op);
}

static void resolve_canon_loaded(cm_op *op)
{
    if (op->error || !op->link || strcmp(op->link, op->contact) == 0) {
        resolve_done(op);
        return;
    }
    /* the asked key is linked: the person's facts are the canonical's */
    json_object_clear(op->facts);
    json_array_clear(op->aliases);
    free(op->canon);
    op->canon = xstrdup(op->link);
    char *k = contact_key(op->tenant, op->canon, "facts");
    op->next = resolve_done;
    cm_call *c = call(op, take_facts, "canon");
    refused(c, store_hash_getall(op->st, k, on_store, c));
    free(k);
    issued(op);
}

/* Load the asked contact's facts hash (following a link to the canonical
 * key), then THEN. */
static void resolve(cm_op *op, cm_stage_fn then)
{
    op->after_resolve = then;
    json_object_clear(op->facts);
    json_array_clear(op->aliases);
    free(op->canon);
    op->canon = NULL;
    free(op->link);
    op->link = NULL;
    char *k = contact_key(op->tenant, op->contact, "facts");
    op->next = resolve_canon_loaded;
    cm_call *c = call(op, take_facts, NULL);
    refused(c, store_hash_getall(op->st, k, on_store, c));
    free(k);
    issued(op);
}

static int by_updated_desc(const void *a, const void *b)
{
    const json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
    int64_t ux = fact_int(x, "updated"), uy = fact_int(y, "updated");
    if (ux != uy)
        return ux < uy ? 1 : -1;
    return strcmp(fact_str(x, "id") ? fact_str(x, "id") : "", fact_str(y, "id") ? fact_str(y, "id") : "");
}

/* The facts of OP as a list, newest first. */
static json_t *facts_list(const json_t *facts)
{
    size_t n = json_object_size(facts), m = 0;
    json_t **v = xcalloc(n + 1, sizeof *v);
    const char *k;
    json_t *f;
    json_object_foreach((json_t *)facts, k, f) v[m++] = f;
    qsort(v, m, sizeof *v, by_updated_desc);
    json_t *out = json_array();
    for (size_t i = 0; i < m; i++)
        json_array_append(out, v[i]);
    free(v);
    return out;
}

static json_t *person_doc(cm_op *op)
{
    return json_pack("{s:s,s:s,s:s,s:O,s:o}", "tenant", op->tenant, "contact", op->contact, "canonical", op->canon,
                     "aliases", op->aliases, "facts", facts_list(op->facts));
}

/* ---- get ---- */

static void get_done(cm_op *op) { op_finish(op, op->error ? NULL : person_doc(op)); }
static void get_first(cm_op *op) { resolve(op, get_done); }

static int check_contact(cm_op *op)
{
    char why[256];
    if (!custmem_contact_ok(op->contact, why, sizeof why)) {
        op_error(op, 400, "%s", why);
        return 0;
    }
    return 1;
}

/* An operation on one contact answering DONE: checked, then FIRST from the loop. */
static void contact_op(kokod *kd, const char *tname, const char *contact, custmem_fn done, void *arg,
                       cm_stage_fn first)
{
    cm_op *op = op_new(kd, tname, contact);
    op->done = done;
    op->arg = arg;
    check_contact(op);
    op_start(op, first);
}

void custmem_get(kokod *kd, const char *tname, const char *contact, custmem_fn done, void *arg)
{
    contact_op(kd, tname, contact, done, arg, get_first);
}

/* ---- prompt facts ---- */

static void prompt_done(cm_op *op)
{
    json_t *sel = NULL;
    if (!op->error) {
        sel = custmem_select(op->facts, op->text, op->budget, util_unix_time());
        if (json_array_size(sel) == 0) {
            json_decref(sel);
            sel = NULL;
        }
    } else {
        log_warn("memory", "%s: customer facts not loaded: %s (answering without them)", op->tenant, op->error);
        free(op->error);
        op->error = NULL;
    }
    op_finish(op, sel);
}

static void prompt_first(cm_op *op) { resolve(op, prompt_done); }

static void load_done(cm_op *op)
{
    json_t *facts = NULL;
    if (op->error) {
        log_warn("memory", "%s: customer facts not loaded: %s (answering without them)", op->tenant, op->error);
        free(op->error);
        op->error = NULL;
    } else if (json_object_size(op->facts)) {
        facts = json_incref(op->facts);
    }
    op_finish(op, facts);
}

void custmem_load(kokod *kd, const char *tname, const char *contact, custmem_facts_fn done, void *arg)
{
    cm_op *op = op_new(kd, tname, contact);
    op->facts_done = done;
    op->arg = arg;
    char why[256];
    if (cm_closing || !op->st || !custmem_contact_ok(contact, why, sizeof why)) {
        op_finish(op, NULL);
        return;
    }
    resolve(op, load_done); /* now: the read joins the caller's batch; store callbacks always run later */
}

void custmem_prompt_facts(kokod *kd, const char *tname, const char *contact, const char *text, size_t budget_tokens,
                          custmem_facts_fn done, void *arg)
{
    cm_op *op = op_new(kd, tname, contact);
    op->facts_done = done;
    op->arg = arg;
    op->text = xstrdup(text ? text : "");
    op->budget = budget_tokens;
    char why[256];
    if (budget_tokens == 0 || !custmem_contact_ok(contact, why, sizeof why)) {
        op->next = NULL;
        op_finish(op, NULL);
        return;
    }
    op_start(op, prompt_first);
}

/* ---- writing facts ---- */

static void write_merge(cm_op *op, const json_t *incoming, const char *source)
{
    json_t *ch = custmem_merge(op->facts, incoming, source, util_unix_time());
    char *k = contact_key(op->tenant, op->canon, "facts");
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(ch, "removed"), i, v)
    {
        cm_call *c = call(op, NULL, NULL);
        refused(c, store_hash_del(op->st, k, json_string_value(v), on_store, c));
    }
    json_array_foreach(json_object_get(ch, "set"), i, v)
    {
        char *val = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS);
        cm_call *c = call(op, NULL, NULL);
        refused(c, store_hash_set(op->st, k, fact_str(v, "id"), val, strlen(val), on_store, c));
        free(val);
    }
    free(k);
    json_decref(ch);
}

/* ---- put (by hand, and links) ---- */

static void put_done(cm_op *op) { op_finish(op, op->error ? NULL : person_doc(op)); }

/* The linked keys' own facts are loaded into op->linked; move them over. */
static void put_links_loaded(cm_op *op)
{
    if (failed(op))
        return;
    op->next = put_done;
    const json_t *links = json_object_get(op->body, "link");
    char *canon_facts = contact_key(op->tenant, op->canon, "facts");
    size_t i;
    const json_t *l;
    json_array_foreach(links, i, l)
    {
        const char *lk = json_string_value(l);
        const json_t *pf = json_object_get(op->linked, lk);
        const char *other = json_string_value(json_object_get(pf, "@link"));
        if (other && strcmp(other, op->canon) != 0) {
            op_error(op, 409, "contact \"%s\" is linked to \"%s\" already; forget or unlink that first", lk, other);
            break;
        }
        if (json_array_size(json_object_get(pf, "@aliases"))) {
            op_error(op, 409, "contact \"%s\" has linked contacts of its own; link to it instead", lk);
            break;
        }
    }
    if (op->error) {
        free(canon_facts);
        op_finish(op, NULL);
        return;
    }
    char now[24];
    snprintf(now, sizeof now, "%lld", (long long)util_unix_time());
    json_array_foreach(links, i, l)
    {
        const char *lk = json_string_value(l);
        json_t *moved = json_array();
        const char *id;
        json_t *f;
        json_object_foreach(json_object_get(json_object_get(op->linked, lk), "facts"), id, f)
            json_array_append(moved, f);
        write_merge(op, moved, NULL);
        json_decref(moved);
        char *lkey = contact_key(op->tenant, lk, "facts");
        cm_call *c = call(op, NULL, NULL);
        refused(c, store_del(op->st, lkey, on_store, c));
        c = call(op, NULL, NULL);
        refused(c, store_hash_set(op->st, lkey, "@link", op->canon, strlen(op->canon), on_store, c));
        char *af = util_asprintf("@alias:%s", lk);
        c = call(op, NULL, NULL);
        refused(c, store_hash_set(op->st, canon_facts, af, now, strlen(now), on_store, c));
        json_array_append_new(op->aliases, json_string(lk));
        free(af);
        free(lkey);
    }
    free(canon_facts);
    issued(op);
}

static void take_link_facts(cm_op *op, const store_result *r, const char *ud)
{
    json_t *p = json_pack("{s:{},s:[]}", "facts", "@aliases");
    char *link = NULL;
    parse_facts_hash(r, json_object_get(p, "facts"), &link, json_object_get(p, "@aliases"));
    if (link)
        json_object_set_new(p, "@link", json_string(link));
    free(link);
    json_object_set_new(op->linked, ud, p);
}

static void put_resolved(cm_op *op)
{
    if (failed(op))
        return;
    op->next = put_links_loaded;
    const json_t *del = json_object_get(op->body, "delete");
    char *k = contact_key(op->tenant, op->canon, "facts");
    size_t i;
    const json_t *v;
    json_array_foreach(del, i, v)
    {
        const char *id = json_string_value(v);
        if (!json_object_get(op->facts, id))
            continue;
        json_object_del(op->facts, id);
        cm_call *c = call(op, NULL, NULL);
        refused(c, store_hash_del(op->st, k, id, on_store, c));
    }
    free(k);
    const json_t *facts = json_object_get(op->body, "checked");
    if (json_array_size(facts))
        write_merge(op, facts, "api");
    json_array_foreach(json_object_get(op->body, "link"), i, v)
    {
        const char *lk = json_string_value(v);
        if (strcmp(lk, op->canon) == 0 || strcmp(lk, op->contact) == 0)
            continue;
        char *lkey = contact_key(op->tenant, lk, "facts");
        cm_call *c = call(op, take_link_facts, lk);
        refused(c, store_hash_getall(op->st, lkey, on_store, c));
        free(lkey);
    }
    issued(op);
}

static void put_first(cm_op *op) { resolve(op, put_resolved); }

void custmem_put(kokod *kd, const char *tname, const char *contact, const json_t *body, custmem_fn done, void *arg)
{
    cm_op *op = op_new(kd, tname, contact);
    op->done = done;
    op->arg = arg;
    op->body = json_object();
    if (check_contact(op)) {
        const char *key;
        const json_t *v;
        json_object_foreach((json_t *)body, key, v)
        {
            if (strcmp(key, "facts") && strcmp(key, "link") && strcmp(key, "delete")) {
                op_error(op, 400, "unknown key \"%.40s\" (known: facts, link, delete)", key);
                break;
            }
        }
        const json_t *facts = json_object_get(body, "facts");
        const json_t *link = json_object_get(body, "link");
        const json_t *del = json_object_get(body, "delete");
        if (!op->error && !facts && !link && !del)
            op_error(op, 400, "nothing to do: give \"facts\" [{\"text\",\"kind\"}], \"link\" [contact] or \"delete\" [id]");
        if (!op->error && facts && !json_is_array(facts))
            op_error(op, 400, "\"facts\" must be an array of {\"text\", \"kind\", \"expires\"?}");
        if (!op->error && json_array_size(facts) > CUSTMEM_FACTS_MAX)
            op_error(op, 400, "at most %d facts at once", CUSTMEM_FACTS_MAX);
        json_t *checked = json_array();
        size_t i;
        const json_t *f;
        json_array_foreach(op->error ? NULL : (json_t *)facts, i, f)
        {
            char why[256];
            json_t *c = custmem_fact_check(f, why, sizeof why);
            if (!c) {
                op_error(op, 400, "facts[%zu]: %s", i, why);
                break;
            }
            json_array_append_new(checked, c);
        }
        json_object_set_new(op->body, "checked", checked);
        if (!op->error && link) {
            if (!json_is_array(link))
                op_error(op, 400, "\"link\" must be an array of contacts such as \"email:anna@example.hu\"");
            json_array_foreach(op->error ? NULL : (json_t *)link, i, f)
            {
                char why[256];
                if (!json_is_string(f) || !custmem_contact_ok(json_string_value(f), why, sizeof why)) {
                    op_error(op, 400, "link[%zu]: %s", i, json_is_string(f) ? why : "must be a contact string");
                    break;
                }
            }
            json_object_set(op->body, "link", (json_t *)link);
        }
        if (!op->error && del) {
            if (!json_is_array(del))
                op_error(op, 400, "\"delete\" must be an array of fact ids");
            json_array_foreach(op->error ? NULL : (json_t *)del, i, f) if (!json_is_string(f))
            {
                op_error(op, 400, "delete[%zu]: must be a fact id (a string)", i);
                break;
            }
            json_object_set(op->body, "delete", (json_t *)del);
        }
    }
    op_start(op, put_first);
}

/* ---- the person walk: export and forget ---- */

static int person_has(cm_op *op, const char *key)
{
    if (strcmp(key, op->canon) == 0)
        return 1;
    size_t i;
    json_t *v;
    json_array_foreach(op->aliases, i, v) if (strcmp(json_string_value(v), key) == 0) return 1;
    return 0;
}

/* Every key of OP's person: the canonical and the keys linked to it (new array). */
static json_t *person_keys(const cm_op *op)
{
    json_t *keys = json_array();
    json_array_append_new(keys, json_string(op->canon));
    json_array_extend(keys, op->aliases);
    return keys;
}

static void take_convs(cm_op *op, const store_result *r, const char *ud)
{
    (void)ud;
    for (size_t i = 0; i < r->n_items; i++) {
        const char *f = r->items[i].name;
        const char *colon = strchr(f, ':');
        if (!colon || json_object_get(op->convs, f))
            continue;
        json_object_set_new(op->convs, f,
                            json_pack("{s:s%,s:s,s:I,s:{},s:[]}", "channel", f, (int)(colon - f), "conversation_id",
                                      colon + 1, "first_seen", (json_int_t)strtoll(r->items[i].value, NULL, 10),
                                      "state", "history"));
    }
}

static void take_keys(cm_op *op, const store_result *r, const char *ud)
{
    (void)ud;
    json_t *keys = op->keys;
    for (size_t i = 0; i < r->n_items; i++)
        json_array_append_new(keys, json_string(r->items[i].name));
}

static void take_jobs(cm_op *op, const store_result *r, const char *ud)
{
    (void)ud;
    for (size_t i = 0; i < r->n_items; i++) {
        json_t *j = json_loadb(r->items[i].value, r->items[i].value_len, 0, NULL);
        json_object_set_new(op->jobs, r->items[i].name, j ? j : json_object());
    }
}

/* Queue entries / dead letters whose payload is one of the person's messages. */
static void take_queue(cm_op *op, const store_result *r, const char *ud)
{
    json_t *into = strcmp(ud, "dead") == 0 ? op->dead : op->queue;
    for (size_t i = 0; i < r->n_items; i++) {
        json_t *p = json_loadb(r->items[i].value, r->items[i].value_len, 0, NULL);
        const char *t = json_string_value(json_object_get(p, "tenant"));
        const char *ch = json_string_value(json_object_get(p, "channel"));
        const char *ct = json_string_value(json_object_get(p, "contact_id"));
        if (t && ch && ct && strcmp(t, op->tenant) == 0) {
            char *key = util_asprintf("%s:%s", ch, ct);
            if (person_has(op, key)) {
                json_object_set_new(p, "queue_id", json_string(r->items[i].name));
                if (r->items[i].reason)
                    json_object_set_new(p, "reason", json_string(r->items[i].reason));
                json_array_append(into, p);
            }
            free(key);
        }
        json_decref(p);
    }
}

static void take_state(cm_op *op, const store_result *r, const char *ud)
{
    json_t *st = json_object_get(json_object_get(op->convs, ud), "state");
    for (size_t i = 0; i < r->n_items; i++)
        json_object_set_new(st, r->items[i].name, json_stringn(r->items[i].value, r->items[i].value_len));
}

static void take_history(cm_op *op, const store_result *r, const char *ud)
{
    json_t *h = json_object_get(json_object_get(op->convs, ud), "history");
    for (size_t i = 0; i < r->n_items; i++) {
        json_t *t = json_loadb(r->items[i].value, r->items[i].value_len, 0, NULL);
        json_array_append_new(h, t ? t : json_stringn(r->items[i].value, r->items[i].value_len));
    }
}

static void walk_convs_loaded(cm_op *op);

/* Stage 2: the conversations, the jobs, the queue. */
static void walk_done(cm_op *op)
{
    cm_stage_fn then = op->after_walk;
    op->after_walk = NULL;
    then(op);
}

static void walk_resolved(cm_op *op)
{
    if (op->error) {
        walk_done(op);
        return;
    }
    op->convs = json_object();
    op->jobs = json_object();
    op->queue = json_array();
    op->dead = json_array();
    op->next = walk_convs_loaded;
    json_t *everyone = person_keys(op);
    size_t i;
    json_t *v;
    json_array_foreach(everyone, i, v)
    {
        const char *key = json_string_value(v);
        char *k = contact_key(op->tenant, key, "convs");
        cm_call *c = call(op, take_convs, NULL);
        refused(c, store_hash_getall(op->st, k, on_store, c));
        free(k);
        char *cp = store_key_part(key);
        char *pfx = util_asprintf("%s:contact:%s:", op->tenant, cp);
        c = call(op, take_keys, NULL);
        refused(c, store_scan_prefix(op->st, pfx, on_store, c));
        free(pfx);
        free(cp);
    }
    json_decref(everyone);
    char *jk = util_asprintf("%s:extract", op->tenant);
    cm_call *c = call(op, take_jobs, NULL);
    refused(c, store_hash_getall(op->st, jk, on_store, c));
    free(jk);
    c = call(op, take_queue, "queue");
    refused(c, store_queue_list(op->st, SCAN_MAX, on_store, c));
    c = call(op, take_queue, "dead");
    refused(c, store_queue_dead(op->st, SCAN_MAX, on_store, c));
    issued(op);
}

/* Stage 3: each conversation's state and history; the jobs narrowed to the person. */
static void walk_convs_loaded(cm_op *op)
{
    if (op->error) {
        walk_done(op);
        return;
    }
    /* jobs of the person: those naming one of its conversations or keys */
    json_t *mine = json_object();
    const char *f;
    json_t *j;
    json_object_foreach(op->jobs, f, j)
    {
        const char *ct = json_string_value(json_object_get(j, "contact"));
        if (json_object_get(op->convs, f) || (ct && person_has(op, ct)))
            json_object_set(mine, f, j);
    }
    json_decref(op->jobs);
    op->jobs = mine;
    op->next = walk_done;
    json_object_foreach(op->convs, f, j)
    {
        char *pfx = util_asprintf("%s:conv:%s", op->tenant, f);
        char *k = util_asprintf("%s:state", pfx);
        cm_call *c = call(op, take_state, f);
        refused(c, store_hash_getall(op->st, k, on_store, c));
        free(k);
        k = util_asprintf("%s:history", pfx);
        c = call(op, take_history, f);
        refused(c, store_list_range(op->st, k, 0, -1, on_store, c));
        free(k);
        free(pfx);
    }
    issued(op);
}

/* Walk everything of OP's person, then THEN. */
static void walk(cm_op *op, cm_stage_fn then)
{
    op->after_walk = then;
    resolve(op, walk_resolved);
}

/* Now as "2026-11-24T13:59:28Z" into AT; returns the unix time. */
static time_t iso_now(char at[32])
{
    time_t now = (time_t)util_unix_time();
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(at, 32, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return now;
}

static json_t *export_doc(cm_op *op)
{
    json_t *convs = json_array();
    const char *f;
    json_t *c;
    json_object_foreach(op->convs, f, c) json_array_append(convs, c);
    json_t *jobs = json_array();
    json_object_foreach(op->jobs, f, c) json_array_append(jobs, c);
    char at[32];
    iso_now(at);
    return json_pack("{s:s,s:s,s:s,s:O,s:s,s:o,s:o,s:o,s:O,s:O,s:O}", "tenant", op->tenant, "contact", op->contact,
                     "canonical", op->canon, "aliases", op->aliases, "exported_at", at, "facts", facts_list(op->facts),
                     "conversations", convs, "pending_extractions", jobs, "queue_entries", op->queue, "dead_letters",
                     op->dead, "store_keys", op->keys);
}

static void export_walked(cm_op *op) { op_finish(op, op->error ? NULL : export_doc(op)); }

static void export_first(cm_op *op) { walk(op, export_walked); }

void custmem_export(kokod *kd, const char *tname, const char *contact, custmem_fn done, void *arg)
{
    contact_op(kd, tname, contact, done, arg, export_first);
}

/* ---- forget ---- */

static void take_count(cm_op *op, const store_result *r, const char *ud)
{
    json_t *d = op->deleted;
    json_object_set_new(d, ud, json_integer(json_integer_value(json_object_get(d, ud)) + r->integer));
}

static void forget_deleted(cm_op *op)
{
    if (failed(op))
        return;
    json_t *d = op->deleted;
    json_int_t total = 0;
    const char *k;
    json_t *v;
    json_object_foreach(d, k, v) total += json_integer_value(v);
    char rid[40], at[32];
    time_t now = iso_now(at);
    uint64_t h = util_fnv1a64(op->contact, strlen(op->contact)) ^ util_now_ms() ^ ((uint64_t)rand() << 32);
    snprintf(rid, sizeof rid, "fgt-%lld-%08" PRIx64, (long long)now, h & 0xffffffffu);
    json_t *receipt = json_pack(
        "{s:s,s:s,s:s,s:s,s:O,s:b,s:[s,s]}", "receipt_id", rid, "tenant", op->tenant, "contact", op->contact, "at", at,
        "deleted", d, "nothing_left", total == 0, "notes",
        "LLM context caches hold the persona, decisions and knowledge base only; customer facts go into each request "
        "and are never cached, so no cache needed rebuilding",
        "de-duplication and reply markers hold message ids only, no personal data; they expire within 7 days");
    json_object_set_new(receipt, "llm_caches_rebuilt", json_integer(0));
    char *counts = json_dumps(d, JSON_COMPACT | JSON_SORT_KEYS);
    log_info("memory", "%s: forget receipt %s: deleted %s", op->tenant, rid, counts ? counts : "{}");
    free(counts);
    op_finish(op, receipt);
}

static void forget_walked(cm_op *op)
{
    if (failed(op))
        return;
    op->deleted = json_pack("{s:I,s:I,s:I,s:i,s:i,s:i,s:i,s:i}", "facts", (json_int_t)json_object_size(op->facts),
                            "linked_contacts", (json_int_t)json_array_size(op->aliases), "conversations",
                            (json_int_t)json_object_size(op->convs), "history_turns", 0, "extraction_jobs", 0,
                            "queue_entries", 0, "dead_letters", 0, "store_keys", 0);
    size_t turns = 0;
    const char *f;
    json_t *c;
    json_object_foreach(op->convs, f, c) turns += json_array_size(json_object_get(c, "history"));
    json_object_set_new(op->deleted, "history_turns", json_integer((json_int_t)turns));
    op->next = forget_deleted;
    /* the daemon's own memory first: no cached turn may come back */
    json_object_foreach(op->convs, f, c)
        pipeline_forget_conv(op->kd->pipe, op->tenant, json_string_value(json_object_get(c, "channel")),
                             json_string_value(json_object_get(c, "conversation_id")));
    json_object_foreach(op->convs, f, c)
    {
        char *pfx = util_asprintf("%s:conv:%s:", op->tenant, f);
        cm_call *cl = call(op, take_count, "store_keys");
        refused(cl, store_del_prefix(op->st, pfx, on_store, cl));
        free(pfx);
    }
    char *jk = util_asprintf("%s:extract", op->tenant);
    json_object_foreach(op->jobs, f, c)
    {
        cm_call *cl = call(op, take_count, "extraction_jobs");
        refused(cl, store_hash_del(op->st, jk, f, on_store, cl));
    }
    free(jk);
    json_t *everyone = person_keys(op);
    if (strcmp(op->contact, op->canon) != 0)
        json_array_append_new(everyone, json_string(op->contact));
    size_t i;
    json_t *v;
    json_array_foreach(everyone, i, v)
    {
        char *cp = store_key_part(json_string_value(v));
        char *pfx = util_asprintf("%s:contact:%s:", op->tenant, cp);
        cm_call *cl = call(op, take_count, "store_keys");
        refused(cl, store_del_prefix(op->st, pfx, on_store, cl));
        free(pfx);
        free(cp);
    }
    json_decref(everyone);
    json_array_foreach(op->queue, i, v)
    {
        cm_call *cl = call(op, take_count, "queue_entries");
        refused(cl, store_queue_ack(op->st, json_string_value(json_object_get(v, "queue_id")), on_store, cl));
    }
    json_array_foreach(op->dead, i, v)
    {
        cm_call *cl = call(op, take_count, "dead_letters");
        refused(cl, store_queue_drop_dead(op->st, json_string_value(json_object_get(v, "queue_id")), on_store, cl));
    }
    issued(op);
}

static void forget_first(cm_op *op) { walk(op, forget_walked); }

void custmem_forget(kokod *kd, const char *tname, const char *contact, custmem_fn done, void *arg)
{
    contact_op(kd, tname, contact, done, arg, forget_first);
}

/* ---- summary ---- */

static void take_fact_count(cm_op *op, const store_result *r, const char *ud)
{
    (void)ud;
    json_int_t n = 0;
    for (size_t i = 0; i < r->n_items; i++)
        if (r->items[i].name[0] != '@')
            n++;
    json_t *d = op->deleted;
    json_object_set_new(d, "facts", json_integer(json_integer_value(json_object_get(d, "facts")) + n));
    if (n)
        json_object_set_new(d, "customers", json_integer(json_integer_value(json_object_get(d, "customers")) + 1));
}

static void summary_done(cm_op *op)
{
    if (failed(op))
        return;
    tenant *t = op->g ? gen_tenant(op->g, op->tenant) : NULL;
    json_t *doc = json_pack("{s:s,s:O,s:O,s:O}", "tenant", op->tenant, "identity",
                            t && t->persona ? t->persona : json_object(), "decisions",
                            t && t->decisions ? t->decisions : json_array(), "counts", op->deleted);
    op_finish(op, doc);
}

static void take_fact_keys(cm_op *op, const store_result *r, const char *ud)
{
    (void)ud;
    json_t *keys = op->keys;
    for (size_t i = 0; i < r->n_items && i < 10000; i++) {
        size_t l = strlen(r->items[i].name);
        if (l > 6 && strcmp(r->items[i].name + l - 6, ":facts") == 0)
            json_array_append_new(keys, json_string(r->items[i].name));
    }
}

static void summary_keys(cm_op *op)
{
    if (failed(op))
        return;
    op->next = summary_done;
    size_t i;
    json_t *v;
    json_array_foreach(op->keys, i, v)
    {
        cm_call *c = call(op, take_fact_count, NULL);
        refused(c, store_hash_getall(op->st, json_string_value(v), on_store, c));
    }
    issued(op);
}

static void take_job_count(cm_op *op, const store_result *r, const char *ud)
{
    (void)ud;
    json_object_set_new(op->deleted, "pending_extractions", json_integer((json_int_t)r->n_items));
}

static void summary_first(cm_op *op)
{
    op->deleted = json_pack("{s:i,s:i,s:i}", "customers", 0, "facts", 0, "pending_extractions", 0);
    op->jobs = json_object();
    op->next = summary_keys;
    char *pfx = util_asprintf("%s:contact:", op->tenant);
    cm_call *c = call(op, take_fact_keys, NULL);
    refused(c, store_scan_prefix(op->st, pfx, on_store, c));
    free(pfx);
    char *jk = util_asprintf("%s:extract", op->tenant);
    c = call(op, take_job_count, NULL);
    refused(c, store_hash_getall(op->st, jk, on_store, c));
    free(jk);
    issued(op);
}

void custmem_summary(kokod *kd, generation *g, const char *tname, custmem_fn done, void *arg)
{
    cm_op *op = op_new(kd, tname, NULL);
    op->done = done;
    op->arg = arg;
    op->g = g;
    gen_ref(g);
    op_start(op, summary_first);
}

/* ---- the model call of an extraction ---- */

typedef void (*ask_fn)(cm_op *op, const char *answer, const char *backend, const char *error);

typedef struct ask {
    cm_op *op;
    tenant *t;
    size_t step;
    koko_llm_request req;
    json_t *tools, *persona;
    char *text;
    struct event *deadline;
    int called_back, abandoned;
    struct ask_call *cur; /* the generate() call of the current step */
    ask_fn then;
    strbuf errors;
} ask;

static void ask_step(ask *a);

static void ask_free(ask *a)
{
    if (a->deadline)
        event_free(a->deadline);
    json_decref(a->tools);
    json_decref(a->persona);
    free(a->text);
    sb_free(&a->errors);
    free(a);
}

static void ask_end(ask *a, const char *answer, const char *backend)
{
    cm_op *op = a->op;
    ask_fn then = a->then;
    char *errs = NULL;
    if (!answer)
        errs = sb_take(&a->errors);
    then(op, answer, backend, errs ? errs : NULL);
    free(errs);
}

typedef struct ask_call {
    struct ask *a;
    size_t step;
    int late; /* the deadline moved on: only free */
} ask_call;

static void ask_generated(const koko_llm_result *res, void *arg)
{
    ask_call *ac = arg;
    ask *a = ac->a;
    if (ac->late) {
        free(ac);
        if (--a->called_back == 0 && a->abandoned)
            ask_free(a);
        return;
    }
    a->called_back--;
    a->cur = NULL;
    free(ac);
    event_del(a->deadline);
    koko_instance *inst = a->t->chain[a->step];
    if (res->status == KOKO_OK && res->text) {
        a->abandoned = 1;
        ask_end(a, res->text, inst->desc->name);
        if (a->called_back == 0)
            ask_free(a);
        return;
    }
    sb_printf(&a->errors, "%s%s: %s", a->errors.len ? "; " : "", inst->desc->name,
              res->error ? res->error : "no answer");
    a->step++;
    ask_step(a);
}

static void ask_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    ask *a = arg;
    sb_printf(&a->errors, "%s%s: no answer within %d s", a->errors.len ? "; " : "", a->t->chain[a->step]->desc->name,
              EXTRACT_DEADLINE_MS / 1000);
    if (a->cur)
        a->cur->late = 1;
    a->cur = NULL;
    a->step++;
    ask_step(a);
}

static void ask_step(ask *a)
{
    tenant *t = a->t;
    while (a->step < t->n_chain) {
        koko_instance *inst = t->chain[a->step];
        if (inst && inst->st != INST_DEAD && inst->desc->abi_minor >= 3)
            break;
        if (inst)
            sb_printf(&a->errors, "%s%s: built against ABI %u.%u, before tasks (1.3)", a->errors.len ? "; " : "",
                      inst->desc->name, inst->desc->abi_major, inst->desc->abi_minor);
        a->step++;
    }
    if (a->step >= t->n_chain) {
        a->abandoned = 1;
        ask_end(a, NULL, NULL);
        if (a->called_back == 0)
            ask_free(a);
        return;
    }
    koko_instance *inst = t->chain[a->step];
    ask_call *ac = xcalloc(1, sizeof *ac);
    ac->a = a;
    ac->step = a->step;
    a->called_back++;
    struct timeval tv = {EXTRACT_DEADLINE_MS / 1000, 0};
    evtimer_add(a->deadline, &tv);
    a->cur = ac;
    const koko_llm_ops *ops = inst->desc->ops;
    ops->generate(inst->state, &a->req, ask_generated, ac);
}

/* Ask the tenant's chain, in order, to extract facts from OP->text. */
static void ask_model(cm_op *op, ask_fn then)
{
    tenant *t = gen_tenant(op->g, op->tenant);
    ask *a = xcalloc(1, sizeof *a);
    a->op = op;
    a->t = t;
    a->then = then;
    a->tools = json_array();
    a->persona = json_object();
    a->text = xstrdup(op->text);
    a->deadline = evtimer_new(op->kd->base, ask_deadline, a);
    a->req = (koko_llm_request){
        .size = sizeof(koko_llm_request),
        .tenant = op->tenant,
        .conversation_id = op->source,
        .language = t->languages[0],
        .languages = t->languages,
        .n_languages = t->n_languages,
        .text = a->text,
        .persona = a->persona,
        .decisions = t->decisions,
        .tools = a->tools,
        .route = "memory",
        .instruction = custmem_extract_instruction(),
        .response_schema = custmem_extract_schema(),
    };
    ask_step(a);
}

/* The model's input: the known facts (so it can say what it corrects), then the conversation. */
static char *transcript_of(const json_t *facts, const json_t *turns)
{
    strbuf sb = {0};
    if (json_object_size(facts)) {
        sb_puts(&sb, "Known facts (id: kind: text):\n");
        const char *k;
        json_t *f;
        json_object_foreach((json_t *)facts, k, f)
            sb_printf(&sb, "- %s: %s: %s\n", k, fact_str(f, "kind") ? fact_str(f, "kind") : "fact",
                      fact_str(f, "text") ? fact_str(f, "text") : "");
        sb_puts(&sb, "\n");
    }
    sb_puts(&sb, "Conversation:\n");
    size_t i;
    json_t *t;
    json_array_foreach((json_t *)turns, i, t)
    {
        const char *role = json_string_value(json_object_get(t, "role"));
        const char *text = json_string_value(json_object_get(t, "text"));
        if (!text)
            continue;
        sb_printf(&sb, "%s: %s\n", role && strcmp(role, "assistant") == 0 ? "assistant" : "customer", text);
        if (sb.len > TRANSCRIPT_MAX)
            break;
    }
    return sb_take(&sb);
}

/* ---- extract (HTTP / kokoctl) ---- */

static void extract_stored(cm_op *op)
{
    if (failed(op))
        return;
    json_t *doc = json_pack("{s:s,s:O,s:I,s:s}", "tenant", op->tenant, "facts", op->extracted, "stored",
                            (json_int_t)(op->canon ? json_array_size(op->extracted) : 0), "backend",
                            op->backend ? op->backend : "");
    if (op->canon)
        json_object_set_new(doc, "contact", json_string(op->canon));
    op_finish(op, doc);
}

static void extract_resolved(cm_op *op)
{
    if (failed(op))
        return;
    op->next = extract_stored;
    write_merge(op, op->extracted, op->source);
    issued(op);
}

static void extract_answered(cm_op *op, const char *answer, const char *backend, const char *error)
{
    if (!answer) {
        op_error(op, 502, "no backend of tenant %s could extract facts: %s", op->tenant, error ? error : "none tried");
        op_finish(op, NULL);
        return;
    }
    op->backend = backend; /* static in the plugin descriptor, which the held generation keeps loaded */
    size_t skipped = 0;
    char why[512];
    op->extracted = custmem_parse_extraction(answer, &skipped, why, sizeof why);
    if (!op->extracted) {
        op_error(op, 502, "%s: %s", backend, why);
        op_finish(op, NULL);
        return;
    }
    if (skipped)
        log_warn("memory", "%s: %zu extracted fact(s) failed the checks and were left out", op->tenant, skipped);
    if (!op->contact) {
        extract_stored(op);
        return;
    }
    json_object_clear(op->facts);
    resolve(op, extract_resolved);
}

static void extract_have_input(cm_op *op)
{
    if (failed(op))
        return;
    const json_t *turns = json_object_get(op->body, "turns");
    if (json_array_size(turns) == 0) {
        op_error(op, 404, "conversation %s of tenant %s has no stored turns to extract from", op->source, op->tenant);
        op_finish(op, NULL);
        return;
    }
    free(op->text);
    op->text = transcript_of(op->facts, turns);
    ask_model(op, extract_answered);
}

/* The contact's current facts, for the "replaces" ids. */
static void extract_load_facts(cm_op *op)
{
    if (op->error || !op->contact) {
        extract_have_input(op);
        return;
    }
    resolve(op, extract_have_input);
}

static void take_conv_state(cm_op *op, const store_result *r, const char *ud)
{
    (void)ud;
    for (size_t i = 0; i < r->n_items; i++)
        if (strcmp(r->items[i].name, "contact") == 0 && !op->contact)
            op->contact = util_asprintf("%.*s", (int)r->items[i].value_len, r->items[i].value);
}

static void take_turns(cm_op *op, const store_result *r, const char *ud)
{
    (void)ud;
    json_t *turns = json_object_get(op->body, "turns");
    for (size_t i = 0; i < r->n_items; i++) {
        json_t *t = json_loadb(r->items[i].value, r->items[i].value_len, 0, NULL);
        if (t)
            json_array_append_new(turns, t);
    }
}

static void extract_first(cm_op *op)
{
    if (!json_object_get(op->body, "conv")) {
        extract_load_facts(op); /* a transcript was given */
        return;
    }
    const char *ch = json_string_value(json_object_get(op->body, "channel"));
    const char *conv = json_string_value(json_object_get(op->body, "conv"));
    char *f = conv_field(ch, conv);
    char *k = util_asprintf("%s:conv:%s:state", op->tenant, f);
    op->next = extract_load_facts;
    cm_call *c = call(op, take_conv_state, NULL);
    refused(c, store_hash_getall(op->st, k, on_store, c));
    free(k);
    k = util_asprintf("%s:conv:%s:history", op->tenant, f);
    c = call(op, take_turns, NULL);
    refused(c, store_list_range(op->st, k, 0, -1, on_store, c));
    free(k);
    free(f);
    issued(op);
}

void custmem_extract(kokod *kd, generation *g, const char *tname, const json_t *req, custmem_fn done, void *arg)
{
    cm_op *op = op_new(kd, tname, NULL);
    op->done = done;
    op->arg = arg;
    op->g = g;
    gen_ref(g);
    op->body = json_pack("{s:[]}", "turns");
    tenant *t = gen_tenant(g, tname);
    const json_t *jc = json_object_get(req, "conversation_id");
    const json_t *jt = json_object_get(req, "transcript");
    const json_t *jct = json_object_get(req, "contact");
    const json_t *jch = json_object_get(req, "channel");
    char convbuf[32];
    const char *conv = json_string_value(jc);
    if (json_is_integer(jc)) {
        snprintf(convbuf, sizeof convbuf, "%lld", (long long)json_integer_value(jc));
        conv = convbuf;
    }
    char why[256];
    if (!t) {
        op_error(op, 404, "unknown tenant \"%s\"", tname);
    } else if (!conv == !jt) {
        op_error(op, 400, "give either \"conversation_id\" (a stored conversation, with \"channel\") or "
                          "\"transcript\" ([{\"role\",\"text\"}] or a text)");
    } else if (jch && !json_is_string(jch)) {
        op_error(op, 400, "\"channel\" must be a string such as \"chatwoot\"");
    } else if (jct && (!json_is_string(jct) || !custmem_contact_ok(json_string_value(jct), why, sizeof why))) {
        op_error(op, 400, "contact: %s", json_is_string(jct) ? why : "must be a string such as \"chatwoot:17\"");
    } else if (conv) {
        const char *ch = jch ? json_string_value(jch) : t->n_channels ? t->channels[0]->desc->name : "api";
        json_object_set_new(op->body, "channel", json_string(ch));
        json_object_set_new(op->body, "conv", json_string(conv));
        op->source = util_asprintf("%s:%s", ch, conv);
        if (jct)
            op->contact = xstrdup(json_string_value(jct));
    } else {
        json_t *turns = json_object_get(op->body, "turns");
        if (json_is_string(jt)) {
            json_array_append_new(turns, json_pack("{s:s,s:O}", "role", "user", "text", jt));
        } else if (json_is_array(jt)) {
            size_t i;
            json_t *v;
            json_array_foreach(jt, i, v)
            {
                if (!json_is_string(json_object_get(v, "text"))) {
                    op_error(op, 400, "transcript[%zu] must be {\"role\": \"user\"|\"assistant\", \"text\"}", i);
                    break;
                }
                json_array_append(turns, v);
            }
        } else {
            op_error(op, 400, "\"transcript\" must be a text or [{\"role\",\"text\"}]");
        }
        if (jct)
            op->contact = xstrdup(json_string_value(jct));
        op->source = xstrdup("api");
    }
    op_start(op, extract_first);
}

/* ---- the durable extraction jobs ---- */

typedef struct runner {
    kokod *kd;
    struct event *tick;
    int stopped;
    int running;       /* jobs in flight */
    json_t *busy;      /* "tenant\x1ffield" -> true: jobs this process runs now */
} runner;

static runner *the_runner; /* one daemon per process */

static void runner_tick_at(runner *r, int ms)
{
    if (!r || r->stopped)
        return;
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(r->tick, &tv);
}

static void job_finish(cm_op *op, int keep, const char *error)
{
    runner *r = the_runner;
    char *jk = util_asprintf("%s:extract", op->tenant);
    if (keep) {
        int attempts = (int)json_integer_value(json_object_get(op->job, "attempts")) + 1;
        int64_t now = util_unix_time();
        int64_t since = json_integer_value(json_object_get(op->job, "since"));
        if (since > 0 && now - since > EXTRACT_GIVE_UP_S) {
            log_error("memory", "%s: extraction of %s dropped after %d attempts over 30 days: %s", op->tenant,
                      op->job_field, attempts, error ? error : "failed");
            bg_hash_del(op->st, jk, op->job_field, "dropping an extraction job");
            keep = 0;
        } else {
            int64_t delay = 30LL << (attempts < 7 ? attempts : 7); /* 1 min .. ~1 h */
            if (delay > 3600)
                delay = 3600;
            json_object_set_new(op->job, "attempts", json_integer(attempts));
            json_object_set_new(op->job, "next_at", json_integer(now + delay));
            json_object_set_new(op->job, "error", json_string(error ? error : "failed"));
            char *v = json_dumps(op->job, JSON_COMPACT | JSON_SORT_KEYS);
            log_warn("memory", "%s: extraction of %s failed (attempt %d): %s; retrying in %lld s", op->tenant,
                     op->job_field, attempts, error ? error : "failed", (long long)delay);
            if (v)
                bg_hash_set(op->st, jk, op->job_field, v, "an extraction retry");
            free(v);
        }
    }
    char *lease = util_asprintf("%s:extract-lease:%s", op->tenant, op->job_field);
    bg_del(op->st, lease, "releasing an extraction lease");
    free(lease);
    free(jk);
    if (r) {
        char *bk = util_asprintf("%s\x1f%s", op->tenant, op->job_field);
        json_object_del(r->busy, bk);
        free(bk);
        r->running--;
    }
    op_finish(op, NULL);
}

static void job_stored(cm_op *op)
{
    if (op->error) {
        char *e = xstrdup(op->error);
        free(op->error);
        op->error = NULL;
        job_finish(op, 1, e);
        free(e);
        return;
    }
    char *jk = util_asprintf("%s:extract", op->tenant);
    bg_hash_del(op->st, jk, op->job_field, "removing a finished extraction job");
    free(jk);
    log_info("memory", "%s: %zu fact(s) extracted from %s", op->tenant, json_array_size(op->extracted), op->source);
    kokod_count(op->kd, op->tenant, "memory_facts_extracted", (double)json_array_size(op->extracted));
    job_finish(op, 0, NULL);
}

static void job_resolved(cm_op *op)
{
    if (op->error) {
        job_stored(op);
        return;
    }
    op->next = job_stored;
    write_merge(op, op->extracted, op->source);
    issued(op);
}

static void job_answered(cm_op *op, const char *answer, const char *backend, const char *error)
{
    if (!answer) {
        job_finish(op, 1, error ? error : "no backend could extract");
        return;
    }
    size_t skipped = 0;
    char why[512];
    op->extracted = custmem_parse_extraction(answer, &skipped, why, sizeof why);
    if (!op->extracted) {
        char *e = util_asprintf("%s: %s", backend, why);
        job_finish(op, 1, e);
        free(e);
        return;
    }
    json_object_clear(op->facts);
    json_array_clear(op->aliases);
    free(op->canon);
    op->canon = NULL;
    free(op->link);
    op->link = NULL;
    resolve(op, job_resolved);
}

static void job_have_facts(cm_op *op)
{
    if (op->error) {
        job_stored(op);
        return;
    }
    free(op->text);
    op->text = transcript_of(op->facts, json_object_get(op->body, "turns"));
    ask_model(op, job_answered);
}

static void job_loaded(cm_op *op)
{
    if (op->error) {
        job_stored(op);
        return;
    }
    if (!op->contact || json_array_size(json_object_get(op->body, "turns")) == 0) {
        /* nobody to remember it for, or nothing said: done */
        log_debug("memory", "%s: %s has %s; nothing to extract", op->tenant, op->job_field,
                  op->contact ? "no stored turns" : "no known contact");
        char *jk = util_asprintf("%s:extract", op->tenant);
        bg_hash_del(op->st, jk, op->job_field, "removing a finished extraction job");
        free(jk);
        job_finish(op, 0, NULL);
        return;
    }
    resolve(op, job_have_facts);
}

static void take_lease(cm_op *op, const store_result *r, const char *ud)
{
    (void)ud;
    if (r->integer != 1)
        op_error(op, 409, "another replica runs it");
}

static void job_leased(cm_op *op)
{
    if (op->error) {
        /* leased elsewhere or the store failed: leave the job for later */
        runner *r = the_runner;
        if (r) {
            char *bk = util_asprintf("%s\x1f%s", op->tenant, op->job_field);
            json_object_del(r->busy, bk);
            free(bk);
            r->running--;
        }
        free(op->error);
        op->error = NULL;
        op_finish(op, NULL);
        return;
    }
    char *k = util_asprintf("%s:conv:%s:state", op->tenant, op->job_field);
    op->next = job_loaded;
    cm_call *c = call(op, take_conv_state, NULL);
    refused(c, store_hash_getall(op->st, k, on_store, c));
    free(k);
    k = util_asprintf("%s:conv:%s:history", op->tenant, op->job_field);
    c = call(op, take_turns, NULL);
    refused(c, store_list_range(op->st, k, 0, -1, on_store, c));
    free(k);
    issued(op);
}

static void job_first(cm_op *op)
{
    char *lease = util_asprintf("%s:extract-lease:%s", op->tenant, op->job_field);
    char me[64];
    snprintf(me, sizeof me, "%d", (int)getpid());
    op->next = job_leased;
    cm_call *c = call(op, take_lease, NULL);
    refused(c, store_set_nx(op->st, lease, me, strlen(me), EXTRACT_LEASE_MS, on_store, c));
    free(lease);
    issued(op);
}

static void job_start(runner *r, generation *g, const char *tenant_name, const char *field, const json_t *job)
{
    cm_op *op = op_new(r->kd, tenant_name, NULL);
    op->g = g;
    gen_ref(g);
    op->job_field = xstrdup(field);
    op->job = json_deep_copy(job);
    op->body = json_pack("{s:[]}", "turns");
    op->source = xstrdup(field);
    r->running++;
    char *bk = util_asprintf("%s\x1f%s", tenant_name, field);
    json_object_set_new(r->busy, bk, json_true());
    free(bk);
    op_start(op, job_first);
}

typedef struct scan_ctx {
    runner *r;
    generation *g;
    char *tenant;
} scan_ctx;

static void on_jobs(const store_result *res, void *arg)
{
    scan_ctx *sc = arg;
    runner *r = sc->r;
    if (res->status == STORE_OK && !r->stopped) {
        int64_t now = util_unix_time();
        for (size_t i = 0; i < res->n_items && r->running < EXTRACT_RUNNING_MAX; i++) {
            json_t *j = json_loadb(res->items[i].value, res->items[i].value_len, 0, NULL);
            char *bk = util_asprintf("%s\x1f%s", sc->tenant, res->items[i].name);
            int busy = json_object_get(r->busy, bk) != NULL;
            free(bk);
            if (j && !busy && json_integer_value(json_object_get(j, "next_at")) <= now)
                job_start(r, sc->g, sc->tenant, res->items[i].name, j);
            json_decref(j);
        }
    }
    gen_release(sc->g);
    free(sc->tenant);
    free(sc);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    runner *r = arg;
    kokod *kd = r->kd;
    if (r->stopped || !kd->store || !kd->current || kd->stopping)
        return;
    generation *g = kd->current;
    for (size_t i = 0; i < g->n_tenants; i++) {
        tenant *t = &g->tenants[i];
        if (!t->memory_extract)
            continue;
        scan_ctx *sc = xcalloc(1, sizeof *sc);
        sc->r = r;
        sc->g = g;
        gen_ref(g);
        sc->tenant = xstrdup(t->name);
        char *jk = util_asprintf("%s:extract", t->name);
        if (store_hash_getall(kd->store, jk, on_jobs, sc) != 0) {
            gen_release(g);
            free(sc->tenant);
            free(sc);
        }
        free(jk);
    }
    runner_tick_at(r, EXTRACT_TICK_MS);
}

void custmem_start(kokod *kd)
{
    if (the_runner)
        return;
    runner *r = xcalloc(1, sizeof *r);
    r->kd = kd;
    r->busy = json_object();
    r->tick = evtimer_new(kd->base, on_tick, r);
    the_runner = r;
    runner_tick_at(r, 1000);
}

void custmem_stop(kokod *kd)
{
    (void)kd;
    cm_closing = 1;
    /* what was scheduled runs now: the loop will not run again */
    while (answers) {
        cm_answer *a = answers;
        if (a->start)
            start_now(-1, 0, a); /* answers "kokod is stopping" */
        else
            answer_now(-1, 0, a);
    }
    runner *r = the_runner;
    if (!r)
        return;
    the_runner = NULL;
    r->stopped = 1;
    event_free(r->tick);
    json_decref(r->busy);
    free(r);
}

void custmem_resolved(kokod *kd, const char *tenant_name, const char *channel, const char *conv)
{
    if (!kd->store || !kd->current)
        return;
    tenant *t = gen_tenant(kd->current, tenant_name);
    if (!t || !t->memory_extract)
        return;
    char *f = conv_field(channel, conv);
    int64_t now = util_unix_time();
    json_t *job = json_pack("{s:s,s:s,s:i,s:I,s:I}", "channel", channel, "conversation_id", conv, "attempts", 0,
                            "next_at", (json_int_t)now, "since", (json_int_t)now);
    char *v = json_dumps(job, JSON_COMPACT | JSON_SORT_KEYS);
    char *jk = util_asprintf("%s:extract", tenant_name);
    if (v) {
        bg_hash_set(kd->store, jk, f, v, "an extraction job");
        log_debug("memory", "%s: extraction of %s queued", tenant_name, f);
    }
    free(jk);
    free(v);
    free(f);
    json_decref(job);
    runner_tick_at(the_runner, 1000);
}
