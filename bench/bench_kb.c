/*
 * bench_kb.c - knowledge-base build and retrieval figures (not a test).
 *
 * Builds the demo KB (kb/_global + kb/demo under KOKO_SRCDIR, default ".") and a
 * synthetic 10 MiB KB (Markdown generated into a temp dir from a word list with
 * Hungarian-style suffixes), prints build time, RSS growth (/proc/self/status VmRSS) and
 * kb_search latency p50/p99 over 10,000 queries on each, and the ratio between the two.
 */
#include "kokoconf.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kb.h"

#define NQUERIES 10000
#define SYNTH_BYTES (10u * 1024 * 1024)
#define SYNTH_FILES 200

static const char *const words[] = {
    "mosógép",    "hűtő",         "sütő",        "bojler",     "szerelő",   "javítás",   "kiszállás",    "garancia",
    "alkatrész",  "szivattyú",    "csapágy",     "ajtó",       "tömítés",   "víz",       "áram",         "biztosíték",
    "időpont",    "foglalás",     "lemondás",    "számla",     "fizetés",   "kártya",    "készpénz",     "ár",
    "díj",        "nyitvatartás", "műhely",      "cím",        "telefon",   "hétfő",     "szombat",      "ünnep",
    "nap",        "hét",          "hónap",       "év",         "budapest",  "kerület",   "agglomeráció", "szűrő",
    "vízkő",      "program",      "hibakód",     "kijelző",    "motor",     "szénkefe",  "termosztát",   "kompresszor",
    "fagyasztó",  "washing",      "machine",     "fridge",     "oven",      "boiler",    "technician",   "repair",
    "visit",      "warranty",     "part",        "pump",       "bearing",   "door",      "seal",         "water",
    "power",      "fuse",         "appointment", "booking",    "cancel",    "invoice",   "payment",      "card",
    "cash",       "price",        "fee",         "opening",    "hours",     "workshop",  "address",      "phone",
    "monday",     "saturday",     "holiday",     "filter",     "limescale", "error",     "code",         "display",
    "thermostat", "compressor",   "freezer",     "dishwasher", "hob",       "induction", "hood",         "install",
    "connect",    "drain",        "spin",        "leak",
};
static const char *const suffixes[] = {"",    "",   "",  "ot",  "ban", "ra", "nak", "val",
                                       "ért", "ok", "s", "ing", "ed",  "ek", "hoz"};
#define NWORDS (sizeof words / sizeof *words)
#define NSUF (sizeof suffixes / sizeof *suffixes)

static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

static double now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static long rss_kib(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long v = -1;
    if (!f)
        return -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6))
            v = strtol(line + 6, NULL, 10);
    fclose(f);
    return v;
}

/* A synthetic word: a base word, sometimes a made-up compound/variant, plus a suffix. */
static int synth_word(char *out, size_t cap)
{
    const char *w = words[rnd() % NWORDS], *s = suffixes[rnd() % NSUF];
    if (rnd() % 4 == 0) /* rarer vocabulary: numbered variants */
        return snprintf(out, cap, "%s%u%s", w, rnd() % 500, s);
    return snprintf(out, cap, "%s%s", w, s);
}

static int generate(const char *dir)
{
    char path[512], w[96];
    size_t per_file = SYNTH_BYTES / SYNTH_FILES, total = 0;
    for (int f = 0; f < SYNTH_FILES; f++) {
        snprintf(path, sizeof path, "%s/doc%03d.md", dir, f);
        FILE *fp = fopen(path, "w");
        size_t written = 0;
        int section = 0;
        if (!fp) {
            perror(path);
            return -1;
        }
        written += (size_t)fprintf(fp, "# Dokumentum %d\n\n", f);
        while (written < per_file) {
            synth_word(w, sizeof w);
            written += (size_t)fprintf(fp, "## %s %d\n\n", w, section++);
            int paras = 1 + (int)(rnd() % 3);
            for (int p = 0; p < paras; p++) {
                int n = 40 + (int)(rnd() % 80);
                for (int i = 0; i < n; i++) {
                    synth_word(w, sizeof w);
                    written += (size_t)fprintf(fp, "%s%s", w, i + 1 == n ? ".\n\n" : (rnd() % 12 ? " " : ". "));
                }
            }
        }
        total += written;
        fclose(fp);
    }
    return total >= SYNTH_BYTES ? 0 : -1;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void run_queries(const kb *k, const char *name, double *p50, double *p99)
{
    static double lat[NQUERIES];
    char q[512], w[96];
    kb_hit hits[5];
    size_t total_hits = 0;
    for (int i = 0; i < NQUERIES; i++) {
        size_t o = 0;
        int n = 2 + (int)(rnd() % 5);
        for (int j = 0; j < n; j++) {
            synth_word(w, sizeof w);
            o += (size_t)snprintf(q + o, sizeof q - o, "%s%s", j ? " " : "", w);
        }
        double t0 = now_us();
        total_hits += kb_search(k, q, hits, 5);
        lat[i] = now_us() - t0;
    }
    qsort(lat, NQUERIES, sizeof *lat, cmp_double);
    *p50 = lat[NQUERIES / 2];
    *p99 = lat[NQUERIES * 99 / 100];
    printf("%-10s %d queries: p50 %.1f us, p99 %.1f us, max %.1f us (%.2f hits/query)\n", name, NQUERIES, *p50, *p99,
           lat[NQUERIES - 1], (double)total_hits / NQUERIES);
}

int main(void)
{
    const char *src = getenv("KOKO_SRCDIR");
    const char *demo_dirs[] = {"kb/_global", "kb/demo"};
    const char *langs[] = {"hu", "en"};
    char tmp[] = "/tmp/bench_kb.XXXXXX", cmd[600];
    double t0, demo_p50, demo_p99, big_p50, big_p99;
    long r0;

    if (!src || !*src)
        src = ".";
    r0 = rss_kib();
    t0 = now_us();
    kb *demo = kb_build(src, demo_dirs, 2, langs, 2, NULL, NULL);
    if (!demo || kb_chunk_count(demo) == 0) {
        fprintf(stderr, "bench_kb: no demo KB under %s/kb (set KOKO_SRCDIR)\n", src);
        kb_free(demo);
        return 1;
    }
    printf("demo KB    %zu files, %zu bytes, %zu chunks: build %.1f ms, RSS +%ld KiB\n", kb_file_count(demo),
           kb_bytes(demo), kb_chunk_count(demo), (now_us() - t0) / 1e3, rss_kib() - r0);

    if (!mkdtemp(tmp)) {
        perror("mkdtemp");
        kb_free(demo);
        return 1;
    }
    t0 = now_us();
    if (generate(tmp) != 0) {
        kb_free(demo);
        return 1;
    }
    printf("synthetic  generated %u files in %.0f ms\n", SYNTH_FILES, (now_us() - t0) / 1e3);
    const char *big_dirs[] = {tmp};
    r0 = rss_kib();
    t0 = now_us();
    kb *big = kb_build(NULL, big_dirs, 1, langs, 2, NULL, NULL);
    double build_ms = (now_us() - t0) / 1e3;
    long rss = rss_kib() - r0;
    printf("10 MiB KB  %zu files, %zu bytes, %zu chunks: build %.0f ms (%.1f MiB/s), RSS +%ld KiB "
           "(%.2fx the text)\n",
           kb_file_count(big), kb_bytes(big), kb_chunk_count(big), build_ms,
           (double)kb_bytes(big) / 1048576.0 / (build_ms / 1e3), rss, (double)rss * 1024 / (double)kb_bytes(big));

    run_queries(demo, "demo", &demo_p50, &demo_p99);
    run_queries(big, "10 MiB", &big_p50, &big_p99);
    printf("ratio 10 MiB / demo: p50 %.1fx, p99 %.1fx\n", big_p50 / demo_p50, big_p99 / demo_p99);

    kb_free(demo);
    kb_free(big);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
    if (system(cmd) != 0)
        fprintf(stderr, "bench_kb: could not remove %s\n", tmp);
    return 0;
}
