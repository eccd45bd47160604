/*
 * plugins/common/llmcommon.h — what the gemini and openai backends share.
 *
 * Compiled into each LLM plugin (never into the core, never exported):
 *   - the configuration keys both backends take (timeouts, retries, rate,
 *     tool steps, temperature, the price table) — validation with exact
 *     messages, and loading;
 *   - cost arithmetic from the price table;
 *   - an HTTP client for JSON APIs on top of koko_host.http_submit with the
 *     rate limiter, retries (429/500/502/503/504, timeouts, network errors)
 *     with exponential backoff and full jitter, server-given retry delays
 *     (Google RetryInfo.retryDelay, the Retry-After header) and precise
 *     error messages that never contain request headers (the API key);
 *   - the system prompt (persona, rules, standing decisions, customer facts)
 *     and the model-signal confidence function.
 * Every function is for the loop thread.
 */
#ifndef KOKO_PLUGINS_LLMCOMMON_H
#define KOKO_PLUGINS_LLMCOMMON_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "koko/host.h"
#include "koko/plugin.h"
#include "ratelimit.h"

/* ---- configuration ---- */

#define LLM_DEFAULT_TIMEOUT_MS 30000
#define LLM_DEFAULT_MAX_ATTEMPTS 3
#define LLM_DEFAULT_BACKOFF_MS 500
#define LLM_DEFAULT_MAX_RETRY_DELAY_MS 30000
#define LLM_DEFAULT_MAX_TOOL_STEPS 5
#define LLM_BACKOFF_CAP_MS 20000 /* no single jittered backoff exceeds this */

typedef struct llm_price {
    double input;                  /* USD per 1M input tokens not served from a cache */
    double cached_input;           /* USD per 1M input tokens served from a cache */
    double output;                 /* USD per 1M output tokens (thinking included) */
    double cache_storage_per_hour; /* USD per 1M cached tokens per hour held */
    int known;                     /* 0: the model is not in the table (every price 0) */
} llm_price;

typedef struct llm_common_cfg {
    long timeout_ms;
    unsigned max_attempts;
    long backoff_ms;
    long max_retry_delay_ms;
    double rpm, tpm; /* 0 = unlimited */
    long rate_window_ms; /* rate.window_ms: the shared limiter's window (default one minute) */
    unsigned max_tool_steps;
    double temperature;
    int has_temperature;
    json_t *prices; /* own reference to the "prices" object, or NULL */
    char *ca_file;  /* ca_file: CA certificates to trust instead of the system's, or NULL */
} llm_common_cfg;

/*
 * Validate KEY = V if it is one of the shared keys: timeout_ms, max_attempts,
 * backoff_ms, max_retry_delay_ms, rate, max_tool_steps, temperature, prices, ca_file.
 * Returns -1 when KEY is not shared (the caller checks it), else the number
 * of problems reported through D (0 = fine).
 */
int llm_cfg_check_common(const char *key, const json_t *v, koko_diag *d);

/* The shared keys, for "unknown key" messages: "timeout_ms, max_attempts, ...". */
extern const char *const llm_common_keys[];

/* Report KEY as unknown under PATH, listing OWN keys then the shared ones. */
void llm_cfg_unknown(koko_diag *d, const char *path, const char *key, const char *const *own);

/* A short description of V's JSON type for messages ("a string", "an integer", ...). */
const char *llm_json_kind(const json_t *v);

/* Load the shared keys of a VALIDATED config into C (defaults for what is absent).
 * Free with llm_cfg_free. */
void llm_cfg_load(const json_t *cfg, llm_common_cfg *c);
void llm_cfg_free(llm_common_cfg *c);

/* The price of MODEL from C's table (all zero, known = 0, when absent). */
llm_price llm_price_of(const llm_common_cfg *c, const char *model);

/*
 * USD for one answer: (IN - CACHED) × input + CACHED × cached_input + OUT ×
 * output, all per 1M tokens. Cache storage is added by the caller (see the
 * gemini plugin: charged when a cache is created or extended).
 */
double llm_cost(const llm_price *p, uint64_t in, uint64_t cached, uint64_t out);

/* USD to hold TOKENS in a cache for SECONDS: tokens × storage/1M × seconds/3600. */
double llm_storage_cost(const llm_price *p, uint64_t tokens, double seconds);

/* ---- the HTTP client ---- */

typedef struct llm_client llm_client;
typedef struct llm_call llm_call;

typedef struct llm_response {
    koko_status st;         /* KOKO_OK: a 2xx answer with a JSON body */
    long status;            /* the last HTTP status, 0 when none arrived */
    const json_t *json;     /* the parsed body (also of an error answer), may be NULL */
    const char *api_status; /* error.status (Google) or error.type / error.code (OpenAI), may be NULL */
    const char *error;      /* st != KOKO_OK: "POST URL: HTTP 400 INVALID_ARGUMENT: message (1 attempt)" */
    unsigned attempts;
} llm_response;

/* R and everything in it is borrowed for the callback's duration. */
typedef void (*llm_call_fn)(const llm_response *r, void *arg);

/* A client for INST. WHO names the backend in log lines ("gemini").
 * IDLE(IDLE_ARG) runs each time the last outstanding call finishes (drain). */
llm_client *llm_client_new(const koko_host *host, koko_instance *inst, const llm_common_cfg *cfg, const char *who,
                           void (*idle)(void *), void *idle_arg);
/* Free the client. Outstanding calls are dropped without calling back
 * (destroy(): the host has cancelled transfers and timers already). */
void llm_client_free(llm_client *cl);

/*
 * Send METHOD URL with the header lines HEADERS (NULL-terminated, copied;
 * never logged) and BODY (a JSON document, borrowed: serialised now; NULL =
 * no body). TOKENS is the estimate the rate limiter takes per attempt; 0 =
 * do not use the limiter (cache bookkeeping). WHAT names the call in
 * messages ("generateContent"). DONE runs exactly once, later. Retries
 * follow the client's config.
 */
llm_call *llm_call_start(llm_client *cl, const char *method, const char *url, const char *const *headers,
                         const json_t *body, uint64_t tokens, const char *what, llm_call_fn done, void *arg);
/* The same with BODY already serialised (owned: freed with the call; NULL =
 * no body), for callers that size their TOKENS estimate from it. */
llm_call *llm_call_start_text(llm_client *cl, const char *method, const char *url, const char *const *headers,
                              char *body, uint64_t tokens, const char *what, llm_call_fn done, void *arg);

/*
 * Stop: no new retries. Calls waiting for the limiter or a backoff are
 * finished (later) with KOKO_ERR_CANCELLED; transfers in flight complete.
 */
void llm_client_stop(llm_client *cl);
int llm_client_stopping(const llm_client *cl);
size_t llm_client_outstanding(const llm_client *cl);
size_t llm_client_queued(const llm_client *cl); /* waiting for the rate limiter */

/* Parse a Google duration ("48s", "0.5s", "1.25s") into ms; -1 when malformed. */
long llm_parse_duration_ms(const char *s);

/*
 * The delay before retry ATTEMPT (1 = the first retry): full jitter,
 * uniform in [0, min(cap, base × 2^(attempt-1))], then at least HINT_MS
 * (the server's retryDelay / Retry-After; -1 = none).
 */
long llm_backoff_ms(long base_ms, unsigned attempt, long hint_ms);

/* ---- prompts ---- */

/* "Hungarian" for "hu", the code itself when unknown. */
const char *llm_language_name(const char *code);

/*
 * The system instruction for REQ (caller frees): who the assistant is
 * (persona name, company, tone in the answer language, the never[] list),
 * the rules (answer in the customer's language, only from the knowledge,
 * say so and call handoff_to_human when the knowledge does not answer,
 * cite nothing invented) and the standing decisions. With PER_REQUEST the
 * request's own facts follow (llm_request_note); without it (a context
 * cache shared by every request) the rules point to that note instead,
 * which the caller sends with the message.
 */
char *llm_system_text(const koko_llm_request *req, int per_request);

/* What varies per request (caller frees): "Reply language: hu (Hungarian)",
 * the customer facts, a customer's explicit wish for a human. */
char *llm_request_note(const koko_llm_request *req);

/* The retrieved passages as numbered text blocks for the message (caller frees). */
char *llm_chunks_text(const koko_llm_request *req);

/*
 * Confidence from the model's own signals (the core combines it with
 * retrieval strength):
 *   no text, a refusal, or a blocked answer (SAFETY, RECITATION, BLOCKLIST,
 *   PROHIBITED_CONTENT, SPII, LANGUAGE, OTHER, MALFORMED_FUNCTION_CALL,
 *   content_filter)                                           → 0.0, handoff
 *   the model called handoff_to_human                          → 0.2
 *   cut short (MAX_TOKENS / length)                            → 0.4
 *   a normal stop (STOP / stop / tool_calls answered)          → 0.9
 *   anything else (finish reason missing or unknown)           → -1 (no opinion)
 * *HANDOFF is set to 1 where the table says "handoff".
 */
double llm_confidence(const char *finish, int refused, int empty, int called_handoff, int *handoff);

/* What one generate() produced; everything borrowed for the llm_answer call. */
typedef struct llm_outcome {
    koko_status st;
    const char *error;          /* why, when st != KOKO_OK */
    const char *text;           /* the model's answer */
    const char *finish;         /* finishReason / finish_reason, may be NULL */
    int refused;                /* the model refused (OpenAI's refusal) */
    int called_handoff;         /* the model called handoff_to_human */
    const char *handoff_reason; /* the reason it gave, may be NULL */
    const char *model;
    uint64_t in, cached, out;   /* tokens */
    double cost_usd;
    int whole_kb;               /* the knowledge went whole: no chunk is cited */
} llm_outcome;

/* Answer the core with O for REQ: confidence and handoff from the model's
 * signals (llm_confidence), the cited chunks (all of them, unless the whole
 * knowledge base was sent), and DONE(result, ARG), now. */
void llm_answer(const koko_llm_request *req, const llm_outcome *o, koko_llm_fn done, void *arg);

/* ---- small helpers ---- */

char *llm_strdup(const char *s);
/* printf into a new string (caller frees); aborts on out of memory. */
char *llm_asprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
double llm_now_ms(void); /* monotonic */
/* "2026-01-02T03:04:05.123456Z" → unix seconds (fraction kept); -1 when malformed. */
double llm_parse_rfc3339(const char *s);
uint64_t llm_fnv1a64(const char *s, size_t n);

#endif
