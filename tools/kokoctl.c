/*
 * kokoctl — the operator's command line for a running kokod.
 *
 * Finds the control socket (-s, or server.control of the configuration
 * given with -c), sends one JSON command line, prints the answer as aligned
 * text (or the raw JSON with --json). Exit status: 0 success, 1 the daemon
 * refused (e.g. a reload with errors), 2 usage, 3 kokod unreachable.
 */
#include "kokoconf.h"

#include <errno.h>
#include <getopt.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>
#include <jansson.h>

#include "diag.h"
#include "util.h"
#include "yamltree.h"

#ifndef SYSCONFDIR
#define SYSCONFDIR "/usr/local/etc"
#endif

static int json_out;

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: kokoctl [-c CONFIG | -s SOCKET] [--json] COMMAND [ARGS]\n\n"
            "Commands:\n"
            "  status                         daemon state, generation, uptime\n"
            "  reload                         build a new generation from the configuration\n"
            "  plugins                        loaded plugins and the tenants using them\n"
            "  tenants                        tenants, their languages, chains and knowledge bases\n"
            "  routes TENANT                  the tenant's routing table\n"
            "  route TENANT [--channel C] [--inbox I] [--language L] --text TEXT\n"
            "                                 which route a message would take, and why\n"
            "  chat TENANT MESSAGE [--conversation ID] [--language L]\n"
            "                                 ask the tenant from the terminal\n"
            "  stats                          counters per tenant\n"
            "  stats [TENANT] [--days N]      and each day's counts (UTC, last N days, default 7)\n"
            "  cache TENANT                   the tenant's LLM context caches\n"
            "  cache refresh TENANT           rebuild them now\n"
            "  queue                          inbound queue: pending entries, dead letters\n"
            "  queue retry ID                 put dead letter ID back into the queue\n"
            "  memory show TENANT [CONTACT]   the tenant's memory, or what is remembered about CONTACT\n"
            "                                 (contacts are CHANNEL:ID, e.g. chatwoot:17, email:anna@example.hu)\n"
            "  memory export TENANT CONTACT   everything stored about CONTACT, as JSON (GDPR access)\n"
            "  memory forget TENANT CONTACT [--yes]\n"
            "                                 delete every trace of CONTACT; prints the deletion receipt\n\n"
            "Options:\n"
            "  -c, --config FILE   find the control socket in FILE's server.control\n"
            "                      (default: $KOKO_CONFIG, ./etc/koko.yaml, " SYSCONFDIR "/koko/koko.yaml)\n"
            "  -s, --socket PATH   the control socket itself\n"
            "      --json          print the daemon's JSON answer\n");
}

static char *socket_from_config(const char *file)
{
    diag *d = diag_new();
    cfgdoc *doc = cfgdoc_parse_file(file, d);
    if (!doc) {
        fprintf(stderr, "kokoctl: cannot read %s: %s\n", file, diag_count(d) ? diag_get(d, 0) : "unknown error");
        diag_free(d);
        return NULL;
    }
    json_t *root = cfgdoc_root(doc);
    const char *base = json_string_value(json_object_get(root, "base_dir"));
    const char *ctl = json_string_value(json_object_get(json_object_get(root, "server"), "control"));
    char *path = util_path_join(base ? base : ".", ctl ? ctl : "var/kokod.sock");
    cfgdoc_free(doc);
    diag_free(d);
    return path;
}

/* Send CMD, read one line back. NULL (message printed) when unreachable. */
static json_t *call(const char *sock, json_t *cmd)
{
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    if (strlen(sock) >= sizeof sun.sun_path) {
        fprintf(stderr, "kokoctl: socket path too long: %s\n", sock);
        return NULL;
    }
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", sock);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof sun) != 0) {
        int e = errno;
        if (e == EACCES || e == EPERM)
            fprintf(stderr, "kokoctl: permission denied on %s (run as the user kokod runs as)\n", sock);
        else if (e == ENOENT || e == ECONNREFUSED)
            fprintf(stderr, "kokoctl: kokod is not running (no socket at %s)\n", sock);
        else
            fprintf(stderr, "kokoctl: cannot connect to %s: %s\n", sock, strerror(e));
        if (fd >= 0)
            close(fd);
        return NULL;
    }
    char *line = json_dumps(cmd, JSON_COMPACT);
    size_t len = strlen(line);
    line = realloc(line, len + 2);
    line[len++] = '\n';
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, line + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            fprintf(stderr, "kokoctl: lost the connection to kokod while sending\n");
            free(line);
            close(fd);
            return NULL;
        }
        off += (size_t)w;
    }
    free(line);
    strbuf sb = {0};
    char buf[65536];
    struct pollfd pfd = {.fd = fd, .events = POLLIN};
    for (;;) {
        int pr = poll(&pfd, 1, 300000);
        if (pr == 0) {
            fprintf(stderr, "kokoctl: kokod did not answer within 300 s\n");
            break;
        }
        if (pr < 0 && errno == EINTR)
            continue;
        ssize_t r = read(fd, buf, sizeof buf);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        sb_append(&sb, buf, (size_t)r);
        if (memchr(buf, '\n', (size_t)r))
            break;
    }
    close(fd);
    json_error_t je;
    json_t *ans = sb.len ? json_loadb(sb.buf, sb.len, JSON_DISABLE_EOF_CHECK, &je) : NULL;
    if (!ans)
        fprintf(stderr, "kokoctl: kokod closed the connection without an answer\n");
    sb_free(&sb);
    return ans;
}

static const char *s_or(const json_t *o, const char *k, const char *d)
{
    const char *s = json_string_value(json_object_get(o, k));
    return s ? s : d;
}

static void join_names(const json_t *arr, char *out, size_t n)
{
    out[0] = '\0';
    size_t i;
    json_t *v;
    size_t used = 0;
    json_array_foreach(arr, i, v)
    {
        int w = snprintf(out + used, n - used, "%s%s", i ? ", " : "", json_string_value(v) ? json_string_value(v) : "?");
        if (w < 0 || (size_t)w >= n - used)
            break;
        used += (size_t)w;
    }
    if (!used)
        snprintf(out, n, "-");
}

static void print_status(const json_t *d)
{
    printf("%-12s %s\n", "status", s_or(d, "status", "?"));
    printf("%-12s %s\n", "version", s_or(d, "version", "?"));
    printf("%-12s %lld\n", "pid", (long long)json_integer_value(json_object_get(d, "pid")));
    printf("%-12s %lld\n", "generation", (long long)json_integer_value(json_object_get(d, "generation")));
    printf("%-12s %lld s\n", "uptime", (long long)json_integer_value(json_object_get(d, "uptime_s")));
    printf("%-12s %s\n", "listen", s_or(d, "listen", "?"));
    printf("%-12s %s\n", "config", s_or(d, "config", "?"));
    printf("%-12s %lld\n", "tenants", (long long)json_integer_value(json_object_get(d, "tenants")));
    char names[1024];
    join_names(json_object_get(d, "plugins"), names, sizeof names);
    printf("%-12s %s\n", "plugins", names);
    printf("%-12s %lld\n", "in flight", (long long)json_integer_value(json_object_get(d, "inflight")));
    const json_t *r = json_object_get(d, "reloads");
    printf("%-12s %lld ok, %lld refused\n", "reloads", (long long)json_integer_value(json_object_get(r, "ok")),
           (long long)json_integer_value(json_object_get(r, "failed")));
    const json_t *st = json_object_get(d, "store");
    if (st)
        printf("%-12s %s, %s: %s\n", "store", s_or(st, "backend", "?"),
               json_is_true(json_object_get(st, "healthy")) ? "healthy" : "DEGRADED", s_or(st, "reason", "?"));
    const json_t *qd = json_object_get(st, "queue");
    if (qd) {
        long long pending = (long long)json_integer_value(json_object_get(qd, "pending"));
        long long age = (long long)json_integer_value(json_object_get(qd, "age_ms"));
        if (pending < 0)
            printf("%-12s not read from the store yet\n", "queue");
        else
            printf("%-12s %lld pending, %lld dead letter(s) (read %lld ms ago)\n", "queue", pending,
                   (long long)json_integer_value(json_object_get(qd, "dead")), age);
        printf("%-12s %lld message(s) waiting for Redis\n", "spool",
               (long long)json_integer_value(json_object_get(qd, "spool")));
    }
}

static void print_plugins(const json_t *d)
{
    printf("%-12s %-8s %-9s %-5s %-16s %s\n", "NAME", "KIND", "VERSION", "ABI", "TENANTS", "FILE");
    size_t i;
    json_t *p;
    json_array_foreach(d, i, p)
    {
        char t[256];
        join_names(json_object_get(p, "tenants"), t, sizeof t);
        printf("%-12s %-8s %-9s %-5s %-16s %s\n", s_or(p, "name", "?"), s_or(p, "kind", "?"), s_or(p, "version", "-"),
               s_or(p, "abi", "?"), t, s_or(p, "file", "?"));
    }
}

static void print_tenants(const json_t *d)
{
    printf("%-12s %-9s %-22s %-14s %-10s %7s %7s\n", "TENANT", "LANGS", "LLM CHAIN", "CHANNELS", "TOOLS", "FILES", "CHUNKS");
    size_t i;
    json_t *t;
    json_array_foreach(d, i, t)
    {
        char langs[64], llm[128], ch[128], tools[128];
        join_names(json_object_get(t, "languages"), langs, sizeof langs);
        join_names(json_object_get(t, "llm"), llm, sizeof llm);
        join_names(json_object_get(t, "channels"), ch, sizeof ch);
        join_names(json_object_get(t, "tools"), tools, sizeof tools);
        const json_t *kb = json_object_get(t, "kb");
        printf("%-12s %-9s %-22s %-14s %-10s %7lld %7lld\n", s_or(t, "name", "?"), langs, llm, ch, tools,
               (long long)json_integer_value(json_object_get(kb, "files")),
               (long long)json_integer_value(json_object_get(kb, "chunks")));
    }
}

static void print_obj_inline(const json_t *o, char *out, size_t n)
{
    size_t used = 0;
    out[0] = '\0';
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)o, k, v)
    {
        char *s = json_is_string(v) ? xstrdup(json_string_value(v)) : json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        int w = snprintf(out + used, n - used, "%s%s=%s", used ? " " : "", k, s ? s : "");
        free(s);
        if (w < 0 || (size_t)w >= n - used)
            break;
        used += (size_t)w;
    }
    if (!used)
        snprintf(out, n, "-");
}

static void print_routes(const json_t *d)
{
    const json_t *routes = json_object_get(d, "routes");
    printf("%-3s %-14s %-44s %s\n", "#", "NAME", "MATCH", "OVERRIDES");
    size_t i;
    json_t *r;
    json_array_foreach(routes, i, r)
    {
        char m[512], o[512];
        print_obj_inline(json_object_get(r, "match"), m, sizeof m);
        print_obj_inline(json_object_get(r, "overrides"), o, sizeof o);
        printf("%-3lld %-14s %-44s %s\n", (long long)json_integer_value(json_object_get(r, "index")), s_or(r, "name", "?"),
               m, o);
    }
    char llm[256];
    join_names(json_object_get(json_object_get(d, "default"), "llm"), llm, sizeof llm);
    printf("%-3s %-14s %-44s llm=%s\n", "-", "default", "(when no route matches)", llm);
}

static void print_route(const json_t *d)
{
    printf("route: %s   (language %s)\n", s_or(d, "route", "?"), s_or(d, "language", "?"));
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(d, "evaluation"), i, e)
    {
        char why[1024];
        join_names(json_object_get(e, "reasons"), why, sizeof why);
        printf("  %-3s %-14s %s\n", json_is_true(json_object_get(e, "chosen")) ? "->" : json_is_true(json_object_get(e, "matched")) ? "ok" : "no",
               s_or(e, "route", "?"), why);
    }
}

static void print_chat(const json_t *d)
{
    printf("%s\n\n", s_or(d, "reply", ""));
    printf("%-10s %s\n", "language", s_or(d, "language", "?"));
    printf("%-10s %s\n", "route", s_or(d, "route", "?"));
    printf("%-10s %s\n", "backend", s_or(d, "backend", "?"));
    printf("%-10s %.2f\n", "confidence", json_number_value(json_object_get(d, "confidence")));
    printf("%-10s %s%s%s\n", "handoff", json_is_true(json_object_get(d, "handoff")) ? "yes" : "no",
           json_object_get(d, "handoff_reason") ? " — " : "", s_or(d, "handoff_reason", ""));
    size_t i;
    json_t *s;
    json_array_foreach(json_object_get(d, "sources"), i, s)
        printf("%-10s %s › %s (%.2f)\n", i ? "" : "sources", s_or(s, "file", "?"), s_or(s, "heading", ""),
               json_number_value(json_object_get(s, "score")));
    json_array_foreach(json_object_get(d, "attempts"), i, s)
        printf("%-10s %s: %s\n", i ? "" : "failed", s_or(s, "backend", "?"), s_or(s, "error", "?"));
}

static void print_stats(const json_t *d)
{
    printf("%-12s %8s %8s %8s %8s %10s %10s\n", "TENANT", "QUERIES", "ANSWERED", "HANDOFF", "FAILED", "TOKENS", "AVG MS");
    const char *k;
    json_t *t;
    json_object_foreach((json_t *)d, k, t)
    {
        double q = json_number_value(json_object_get(t, "queries"));
        printf("%-12s %8.0f %8.0f %8.0f %8.0f %10.0f %10.1f\n", k, q, json_number_value(json_object_get(t, "answered")),
               json_number_value(json_object_get(t, "handed_off")), json_number_value(json_object_get(t, "failed")),
               json_number_value(json_object_get(t, "tokens_in")) + json_number_value(json_object_get(t, "tokens_out")),
               q > 0 ? json_number_value(json_object_get(t, "latency_ms_sum")) / q : 0.0);
    }
}

static void print_daily_row(const char *label, const json_t *x)
{
    static const char *const keys[] = {"accepted", "queries", "answered", "handed_off", "failed", "tokens_in",
                                       "tokens_out"};
    double v[7];
    for (int k = 0; k < 7; k++)
        v[k] = json_number_value(json_object_get(x, keys[k]));
    printf("%-12s %8.0f %8.0f %8.0f %8.0f %8.0f %10.0f %10.4f\n", label, v[0], v[1], v[2], v[3], v[4], v[5] + v[6],
           json_number_value(json_object_get(x, "cost_usd")));
}

/* stats TENANT / --days N: each tenant's days, oldest first, then its totals since counting began. */
static void print_daily(const json_t *d)
{
    const char *name;
    json_t *t;
    json_object_foreach(json_object_get(d, "tenants"), name, t)
    {
        printf("%s: the last %lld day(s), UTC\n", name, (long long)json_integer_value(json_object_get(d, "days")));
        printf("%-12s %8s %8s %8s %8s %8s %10s %10s\n", "DATE", "ACCEPTED", "QUERIES", "ANSWERED", "HANDOFF", "FAILED",
               "TOKENS", "COST USD");
        size_t i;
        json_t *day;
        json_array_foreach(json_object_get(t, "daily"), i, day) print_daily_row(s_or(day, "date", "?"), day);
        print_daily_row("total", json_object_get(t, "counters"));
        printf("\n");
    }
    if (json_object_get(d, "error"))
        fprintf(stderr, "kokoctl: warning: %s\n", s_or(d, "error", ""));
}

static void print_cache(const json_t *d)
{
    const json_t *caches = json_object_get(d, "caches");
    if (json_array_size(caches) == 0) {
        printf("%s: no context caches (no backend of this tenant keeps one yet)\n", s_or(d, "tenant", "?"));
        return;
    }
    printf("%-10s %-36s %-18s %9s %6s %12s %9s  %s\n", "BACKEND", "NAME", "MODEL", "TOKENS", "HITS", "TOKENS SAVED",
           "USD SAVED", "EXPIRES");
    size_t i;
    json_t *c;
    json_array_foreach(caches, i, c)
        printf("%-10s %-36s %-18s %9lld %6lld %12lld %9.4f  %s\n", s_or(c, "backend", "?"), s_or(c, "name", "?"),
               s_or(c, "model", "?"), (long long)json_integer_value(json_object_get(c, "tokens")),
               (long long)json_integer_value(json_object_get(c, "hits")),
               (long long)json_integer_value(json_object_get(c, "tokens_saved")),
               json_number_value(json_object_get(c, "usd_saved")), s_or(c, "expires", "?"));
}

static void print_refresh(const json_t *d)
{
    size_t i;
    json_t *b;
    if (json_array_size(json_object_get(d, "backends")) == 0)
        printf("no backend of this tenant keeps a context cache\n");
    json_array_foreach(json_object_get(d, "backends"), i, b)
        printf("%-10s %s\n", s_or(b, "backend", "?"), json_is_true(json_object_get(b, "ok")) ? "rebuilt" : s_or(b, "error", "failed"));
}

static void print_memory(const json_t *d)
{
    printf("contact    %s", s_or(d, "contact", "?"));
    if (strcmp(s_or(d, "contact", ""), s_or(d, "canonical", "")) != 0)
        printf(" (linked to %s)", s_or(d, "canonical", "?"));
    printf("\n");
    size_t i;
    const json_t *v;
    json_array_foreach(json_object_get(d, "aliases"), i, v) printf("linked     %s\n", json_string_value(v));
    const json_t *facts = json_object_get(d, "facts");
    if (!json_array_size(facts)) {
        printf("nothing remembered\n");
        return;
    }
    printf("%-16s %-10s %-10s %s\n", "ID", "KIND", "UPDATED", "TEXT");
    json_array_foreach(facts, i, v)
    {
        char day[16] = "?";
        time_t t = (time_t)json_integer_value(json_object_get(v, "updated"));
        struct tm tm;
        if (t > 0 && gmtime_r(&t, &tm))
            strftime(day, sizeof day, "%Y-%m-%d", &tm);
        printf("%-16s %-10s %-10s %s\n", s_or(v, "id", "?"), s_or(v, "kind", "?"), day, s_or(v, "text", ""));
    }
}

static void print_memory_summary(const json_t *d)
{
    const json_t *c = json_object_get(d, "counts");
    printf("tenant               %s\n", s_or(d, "tenant", "?"));
    printf("assistant            %s\n", s_or(json_object_get(d, "identity"), "name", "(no identity.json)"));
    printf("standing decisions   %zu\n", json_array_size(json_object_get(d, "decisions")));
    printf("customers            %lld\n", (long long)json_integer_value(json_object_get(c, "customers")));
    printf("facts                %lld\n", (long long)json_integer_value(json_object_get(c, "facts")));
    printf("pending extractions  %lld\n", (long long)json_integer_value(json_object_get(c, "pending_extractions")));
}

static void print_receipt(const json_t *d)
{
    printf("receipt    %s\n", s_or(d, "receipt_id", "?"));
    printf("at         %s\n", s_or(d, "at", "?"));
    printf("contact    %s (tenant %s)\n", s_or(d, "contact", "?"), s_or(d, "tenant", "?"));
    if (json_is_true(json_object_get(d, "nothing_left"))) {
        printf("nothing was stored about this contact\n");
        return;
    }
    const char *k;
    const json_t *v;
    json_object_foreach((json_t *)json_object_get(d, "deleted"), k, v)
        printf("deleted    %-16s %lld\n", k, (long long)json_integer_value(v));
}

static void print_queue(const json_t *d)
{
    printf("store      %s (%s)\n", s_or(d, "backend", "?"),
           json_is_true(json_object_get(d, "healthy")) ? "healthy" : "degraded");
    printf("pending    %lld\n", (long long)json_integer_value(json_object_get(d, "pending")));
    long long total = (long long)json_integer_value(json_object_get(d, "dead_total"));
    printf("dead       %lld\n", total);
    if (total == 0)
        return;
    printf("\n%-22s %8s %-10s %-12s %-14s %s\n", "ID", "ATTEMPTS", "TENANT", "CHANNEL", "CONVERSATION", "REASON");
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(d, "dead"), i, e)
        printf("%-22s %8lld %-10s %-12s %-14s %s\n", s_or(e, "id", "?"),
               (long long)json_integer_value(json_object_get(e, "attempts")), s_or(e, "tenant", "-"),
               s_or(e, "channel", "-"), s_or(e, "conversation_id", "-"), s_or(e, "reason", ""));
    if ((long long)json_array_size(json_object_get(d, "dead")) < total)
        printf("(%lld more not shown; see --json)\n", total - (long long)json_array_size(json_object_get(d, "dead")));
}

static void print_reload(const json_t *d)
{
    printf("reloaded: generation %lld serving (%.1f ms)\n", (long long)json_integer_value(json_object_get(d, "generation")),
           json_number_value(json_object_get(d, "build_ms")));
    const json_t *t = json_object_get(d, "tenants"), *p = json_object_get(d, "plugins"), *in = json_object_get(d, "instances");
    char a[512];
    join_names(json_object_get(t, "added"), a, sizeof a);
    printf("  tenants added:     %s\n", a);
    join_names(json_object_get(t, "removed"), a, sizeof a);
    printf("  tenants removed:   %s\n", a);
    join_names(json_object_get(t, "changed"), a, sizeof a);
    printf("  tenants changed:   %s\n", a);
    json_t *names = json_array();
    size_t i;
    json_t *v;
    json_array_foreach(json_object_get(p, "loaded"), i, v) json_array_append(names, json_object_get(v, "name"));
    join_names(names, a, sizeof a);
    printf("  plugins loaded:    %s\n", a);
    json_array_clear(names);
    json_array_foreach(json_object_get(p, "unloaded"), i, v) json_array_append(names, json_object_get(v, "name"));
    join_names(names, a, sizeof a);
    json_decref(names);
    printf("  plugins unloaded:  %s\n", a);
    printf("  instances:         %lld kept, %lld new\n", (long long)json_integer_value(json_object_get(in, "kept")),
           (long long)json_integer_value(json_object_get(in, "new")));
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"socket", required_argument, NULL, 's'},
        {"json", no_argument, NULL, 'j'},         {"help", no_argument, NULL, 'h'},
        {"channel", required_argument, NULL, 1},  {"inbox", required_argument, NULL, 2},
        {"language", required_argument, NULL, 3}, {"text", required_argument, NULL, 4},
        {"conversation", required_argument, NULL, 5}, {"version", no_argument, NULL, 'V'},
        {"days", required_argument, NULL, 6},     {"yes", no_argument, NULL, 7},
        {0},
    };
    const char *config = NULL, *sock = NULL, *channel = NULL, *inbox = NULL, *language = NULL, *text = NULL,
               *conversation = NULL, *days = NULL;
    int c, yes = 0;
    /* GNU getopt permutes argv, so options may follow the command */
    while ((c = getopt_long(argc, argv, "c:s:jhV", opts, NULL)) != -1) {
        switch (c) {
        case 'c': config = optarg; break;
        case 's': sock = optarg; break;
        case 'j': json_out = 1; break;
        case 'h': usage(stdout); return 0;
        case 'V': printf("kokoctl %s\n", PACKAGE_VERSION); return 0;
        case 1: channel = optarg; break;
        case 2: inbox = optarg; break;
        case 3: language = optarg; break;
        case 4: text = optarg; break;
        case 5: conversation = optarg; break;
        case 6: days = optarg; break;
        case 7: yes = 1; break;
        default: usage(stderr); return 2;
        }
    }
    const char *pos[64];
    int npos = 0;
    for (; optind < argc && npos < 64; optind++)
        pos[npos++] = argv[optind];
    if (npos == 0) {
        usage(stderr);
        return 2;
    }
    const char *cmd = pos[0];
    json_t *args = json_object();
    static const char *const simple[] = {"status", "reload", "plugins", "tenants"};
    int known = 0;
    for (size_t i = 0; i < sizeof simple / sizeof *simple; i++)
        known |= strcmp(cmd, simple[i]) == 0;
    if (known && npos != 1) {
        fprintf(stderr, "kokoctl: %s takes no arguments\n", cmd);
        json_decref(args);
        return 2;
    }
    if (strcmp(cmd, "stats") == 0) {
        known = 1;
        if (npos > 2) {
            fprintf(stderr, "kokoctl: usage: stats [TENANT] [--days N]\n");
            json_decref(args);
            return 2;
        }
        if (npos == 2)
            json_object_set_new(args, "tenant", json_string(pos[1]));
        if (days) {
            char *end = NULL;
            long n = strtol(days, &end, 10);
            if (!*days || *end || n < 1 || n > 90) {
                fprintf(stderr, "kokoctl: --days %s: give a whole number of days from 1 to 90\n", days);
                json_decref(args);
                return 2;
            }
            json_object_set_new(args, "days", json_integer(n));
        }
    }
    if (strcmp(cmd, "cache") == 0) {
        known = 1;
        int refresh = npos >= 2 && strcmp(pos[1], "refresh") == 0;
        if (npos != (refresh ? 3 : 2)) {
            fprintf(stderr, "kokoctl: usage: cache TENANT | cache refresh TENANT\n");
            json_decref(args);
            return 2;
        }
        json_object_set_new(args, "tenant", json_string(pos[refresh ? 2 : 1]));
        if (refresh)
            cmd = "cache_refresh";
    }
    if (strcmp(cmd, "queue") == 0) {
        known = 1;
        int retry = npos >= 2 && strcmp(pos[1], "retry") == 0;
        if (npos != (retry ? 3 : 1)) {
            fprintf(stderr, "kokoctl: usage: queue | queue retry ID\n");
            json_decref(args);
            return 2;
        }
        if (retry) {
            json_object_set_new(args, "id", json_string(pos[2]));
            cmd = "queue_retry";
        }
    }
    if (strcmp(cmd, "memory") == 0) {
        known = 1;
        const char *sub = npos >= 2 ? pos[1] : "";
        int show = strcmp(sub, "show") == 0, exp = strcmp(sub, "export") == 0, fgt = strcmp(sub, "forget") == 0;
        if (!(show && (npos == 3 || npos == 4)) && !((exp || fgt) && npos == 4)) {
            fprintf(stderr, "kokoctl: usage: memory show TENANT [CONTACT] | memory export TENANT CONTACT | "
                            "memory forget TENANT CONTACT [--yes]\n");
            json_decref(args);
            return 2;
        }
        json_object_set_new(args, "tenant", json_string(pos[2]));
        if (npos == 4)
            json_object_set_new(args, "contact", json_string(pos[3]));
        cmd = show ? (npos == 4 ? "memory_show" : "memory_summary") : exp ? "memory_export" : "memory_forget";
        if (fgt && !yes) {
            if (!isatty(STDIN_FILENO)) {
                fprintf(stderr, "kokoctl: memory forget deletes every trace of %s for good; confirm with --yes\n",
                        pos[3]);
                json_decref(args);
                return 2;
            }
            fprintf(stderr, "Forget everything tenant %s stores about %s (facts, conversations, queued messages)? "
                            "This cannot be undone. Type yes to go on: ", pos[2], pos[3]);
            char line[16] = "";
            if (!fgets(line, sizeof line, stdin) || strncmp(line, "yes", 3) != 0 || (line[3] && line[3] != '\n')) {
                fprintf(stderr, "kokoctl: nothing forgotten\n");
                json_decref(args);
                return 1;
            }
        }
    }
    if (strcmp(cmd, "routes") == 0 || strcmp(cmd, "route") == 0 || strcmp(cmd, "chat") == 0) {
        known = 1;
        if (npos < 2) {
            fprintf(stderr, "kokoctl: %s needs a TENANT\n", cmd);
            json_decref(args);
            return 2;
        }
        json_object_set_new(args, "tenant", json_string(pos[1]));
        if (strcmp(cmd, "route") == 0) {
            if (!text && npos >= 3)
                text = pos[2];
            if (!text) {
                fprintf(stderr, "kokoctl: route needs --text \"...\"\n");
                json_decref(args);
                return 2;
            }
            json_object_set_new(args, "text", json_string(text));
            if (channel)
                json_object_set_new(args, "channel", json_string(channel));
            if (inbox)
                json_object_set_new(args, "inbox", json_string(inbox));
            if (language)
                json_object_set_new(args, "language", json_string(language));
        }
        if (strcmp(cmd, "chat") == 0) {
            /* the message may come as one quoted argument or as several words */
            strbuf words = {0};
            for (int w = 2; w < npos; w++)
                sb_printf(&words, "%s%s", w > 2 ? " " : "", pos[w]);
            if (!words.len && text)
                sb_puts(&words, text);
            if (!words.len) {
                fprintf(stderr, "kokoctl: chat needs a MESSAGE\n");
                json_decref(args);
                sb_free(&words);
                return 2;
            }
            json_object_set_new(args, "message", json_string(words.buf));
            sb_free(&words);
            if (conversation)
                json_object_set_new(args, "conversation_id", json_string(conversation));
            if (language)
                json_object_set_new(args, "language", json_string(language));
        }
    }
    if (!known) {
        fprintf(stderr, "kokoctl: unknown command \"%s\" (see kokoctl --help)\n", cmd);
        json_decref(args);
        return 2;
    }

    char *sockpath = NULL;
    if (sock) {
        sockpath = xstrdup(sock);
    } else {
        if (!config)
            config = getenv("KOKO_CONFIG") && *getenv("KOKO_CONFIG") ? getenv("KOKO_CONFIG")
                     : access("etc/koko.yaml", R_OK) == 0 ? "etc/koko.yaml"
                                                          : SYSCONFDIR "/koko/koko.yaml";
        sockpath = socket_from_config(config);
        if (!sockpath) {
            json_decref(args);
            return 3;
        }
    }
    int daily = strcmp(cmd, "stats") == 0 && json_object_size(args) > 0;
    json_t *req = json_pack("{s:s,s:o}", "cmd", cmd, "args", args);
    json_t *ans = call(sockpath, req);
    json_decref(req);
    free(sockpath);
    if (!ans)
        return 3;
    int ok = json_is_true(json_object_get(ans, "ok"));
    if (json_out) {
        char *s = json_dumps(ok ? json_object_get(ans, "data") : ans, JSON_INDENT(2) | JSON_ENCODE_ANY);
        printf("%s\n", s ? s : "null");
        free(s);
    } else if (!ok) {
        fprintf(stderr, "kokoctl: %s\n", s_or(ans, "error", "failed"));
        size_t i;
        json_t *e;
        json_array_foreach(json_object_get(ans, "errors"), i, e) fprintf(stderr, "%s\n", json_string_value(e));
    } else {
        const json_t *d = json_object_get(ans, "data");
        if (!strcmp(cmd, "status"))
            print_status(d);
        else if (!strcmp(cmd, "reload"))
            print_reload(d);
        else if (!strcmp(cmd, "plugins"))
            print_plugins(d);
        else if (!strcmp(cmd, "tenants"))
            print_tenants(d);
        else if (!strcmp(cmd, "routes"))
            print_routes(d);
        else if (!strcmp(cmd, "route"))
            print_route(d);
        else if (!strcmp(cmd, "chat"))
            print_chat(d);
        else if (!strcmp(cmd, "stats") && daily)
            print_daily(d);
        else if (!strcmp(cmd, "stats"))
            print_stats(d);
        else if (!strcmp(cmd, "cache"))
            print_cache(d);
        else if (!strcmp(cmd, "cache_refresh"))
            print_refresh(d);
        else if (!strcmp(cmd, "queue"))
            print_queue(d);
        else if (!strcmp(cmd, "queue_retry"))
            printf("queued again as entry %s\n", s_or(d, "queued", "?"));
        else if (!strcmp(cmd, "memory_show"))
            print_memory(d);
        else if (!strcmp(cmd, "memory_summary"))
            print_memory_summary(d);
        else if (!strcmp(cmd, "memory_forget"))
            print_receipt(d);
        else if (!strcmp(cmd, "memory_export")) {
            char *js = json_dumps(d, JSON_INDENT(2));
            printf("%s\n", js ? js : "{}");
            free(js);
        }
    }
    if (!ok && json_out) {
        const char *e = s_or(ans, "error", "failed");
        fprintf(stderr, "kokoctl: %s\n", e);
    }
    json_decref(ans);
    return ok ? 0 : 1;
}
