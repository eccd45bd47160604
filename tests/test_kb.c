/*
 * test_kb.c - unit tests for core/kb.c: Markdown chunking and markup stripping, bad files,
 * BM25 against a hand-computed score, excerpts, the content hash, tenant isolation, and
 * retrieval quality on the demo KB with the labelled questions in
 * tests/data/kb_questions.tsv (top-3 hit rate and the kb_answerable decision rule).
 * Data files are found through KOKO_SRCDIR (default ".").
 */
#include "kokoconf.h"

#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kb.h"

static const char *srcdir(void)
{
    const char *s = getenv("KOKO_SRCDIR");
    return s && *s ? s : ".";
}

static char tmpdir[256];

static void write_file(const char *name, const char *data)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    fputs(data, f);
    fclose(f);
}

static void make_tmpdir(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_kb.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void remove_tree(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    ck_assert_int_eq(system(cmd), 0);
}

typedef struct warnings {
    int n;
    char text[2048];
} warnings;

static void on_warn(void *ctx, const char *path, const char *why)
{
    warnings *w = ctx;
    size_t used = strlen(w->text);
    w->n++;
    snprintf(w->text + used, sizeof w->text - used, "%s: %s\n", path, why);
}

static const kb_chunk *find_chunk(const kb *k, const char *heading)
{
    for (size_t i = 0; i < kb_chunk_count(k); i++)
        if (!strcmp(kb_chunk_at(k, i)->heading, heading))
            return kb_chunk_at(k, i);
    return NULL;
}

START_TEST(test_chunking)
{
    make_tmpdir();
    write_file("b.md", "Intro text before any heading.\n"
                       "# Árak\n\n"
                       "## Csomagok\n"
                       "- **Alap** csomag: [részletek](https://x.hu/a) és `kód`\n"
                       "1. első *pont*\n"
                       "> idézet szöveg\n\n"
                       "| Név | Ár |\n|---|:--:|\n| Alap | 9 900 Ft |\n\n"
                       "### Mélyebb ###\n"
                       "snake_case marad, __vastag__ nem. ![kép alt](k.png) <br> <https://kokoszerviz.hu>\n"
                       "```\n# nem heading\nkód sor\n```\n"
                       "## Üres\n"
                       "# Második\n"
                       "Szöveg.\n");
    write_file("a.md", "# Első fájl\nValami.\n");
    write_file("notes.txt", "# not markdown\n");
    const char *dirs[] = {tmpdir};
    warnings w = {0};
    kb *k = kb_build(NULL, dirs, 1, NULL, 0, on_warn, &w);
    ck_assert_ptr_nonnull(k);
    ck_assert_int_eq(w.n, 0);
    ck_assert_uint_eq(kb_file_count(k), 2);
    /* files in name order: a.md first */
    const kb_chunk *c = kb_chunk_at(k, 0);
    ck_assert_str_eq(c->heading, "Első fájl");
    ck_assert_ptr_nonnull(strstr(c->file, "/a.md"));
    ck_assert_ptr_nonnull(find_chunk(k, "")); /* text before the first heading */
    ck_assert_str_eq(find_chunk(k, "")->text, "Intro text before any heading.");

    c = find_chunk(k, "Árak › Csomagok");
    ck_assert_ptr_nonnull(c);
    ck_assert_str_eq(c->text, "Alap csomag: részletek és kód\n"
                              "első pont\n"
                              "idézet szöveg\n\n"
                              "Név – Ár\n"
                              "Alap – 9 900 Ft");
    ck_assert_uint_eq(c->text_len, strlen(c->text));
    c = find_chunk(k, "Árak › Csomagok › Mélyebb");
    ck_assert_ptr_nonnull(c);
    ck_assert_str_eq(c->text, "snake_case marad, vastag nem. kép alt   https://kokoszerviz.hu\n"
                              "# nem heading\nkód sor");
    ck_assert_ptr_null(find_chunk(k, "Árak"));        /* no text of its own */
    ck_assert_ptr_null(find_chunk(k, "Árak › Üres")); /* empty section */
    ck_assert_ptr_nonnull(find_chunk(k, "Második"));  /* deeper levels reset */
    ck_assert_uint_eq(kb_chunk_count(k), 5);
    ck_assert_ptr_null(kb_chunk_at(k, 5));
    kb_free(k);
    remove_tree(tmpdir);
}
END_TEST

START_TEST(test_long_section_split)
{
    make_tmpdir();
    char *big = malloc(20000);
    size_t o = (size_t)sprintf(big, "# Hosszú\n");
    for (int i = 0; i < 120; i++) {
        o += (size_t)sprintf(big + o, "Ez a(z) %d. bekezdés a hosszú szakaszban.\n", i);
        if (i % 10 == 9)
            o += (size_t)sprintf(big + o, "\n");
    }
    write_file("long.md", big);
    free(big);
    const char *dirs[] = {tmpdir};
    kb *k = kb_build(NULL, dirs, 1, NULL, 0, NULL, NULL);
    ck_assert_uint_gt(kb_chunk_count(k), 1);
    for (size_t i = 0; i < kb_chunk_count(k); i++) {
        ck_assert_uint_le(kb_chunk_at(k, i)->text_len, KB_CHUNK_MAX);
        ck_assert_str_eq(kb_chunk_at(k, i)->heading, "Hosszú");
    }
    kb_free(k);
    remove_tree(tmpdir);
}
END_TEST

START_TEST(test_bad_files)
{
    char bad[512];
    snprintf(bad, sizeof bad, "%s/tests/data/kb_bad", srcdir());
    make_tmpdir();
    char sub[600];
    snprintf(sub, sizeof sub, "%s/folder.md", tmpdir); /* a folder named like a file */
    ck_assert_int_eq(mkdir(sub, 0755), 0);
    const char *dirs[] = {bad, tmpdir, "no/such/folder"};
    warnings w = {0};
    kb *k = kb_build(NULL, dirs, 3, NULL, 0, on_warn, &w);
    ck_assert_ptr_nonnull(k);
    /* blank.md, empty.md, latin2.md, folder.md, the missing folder */
    ck_assert_msg(w.n == 5, "warnings:\n%s", w.text);
    ck_assert_ptr_nonnull(strstr(w.text, "kb_bad/latin2.md: skipped: invalid UTF-8 at byte 6"));
    ck_assert_ptr_nonnull(strstr(w.text, "kb_bad/empty.md: skipped: the file is empty"));
    ck_assert_ptr_nonnull(strstr(w.text, "kb_bad/blank.md: skipped: the file is empty"));
    ck_assert_ptr_nonnull(strstr(w.text, "folder.md: skipped:"));
    ck_assert_ptr_nonnull(strstr(w.text, "no/such/folder: skipped: cannot open the folder"));
    ck_assert_uint_eq(kb_file_count(k), 1);
    ck_assert_uint_eq(kb_chunk_count(k), 1);
    ck_assert_str_eq(kb_chunk_at(k, 0)->heading, "Jó");
    kb_free(k);
    remove_tree(tmpdir);
}
END_TEST

START_TEST(test_bm25_hand_computed)
{
    /* No stemmer ("xx"), no headings, words of at most KB_PREFIX_LEN letters: plain BM25. */
    make_tmpdir();
    write_file("a.md", "apple pie\n");
    write_file("b.md", "apple tart tart\n");
    write_file("c.md", "plum jam\n");
    const char *dirs[] = {tmpdir};
    const char *langs[] = {"xx"};
    warnings w = {0};
    kb *k = kb_build(NULL, dirs, 1, langs, 1, on_warn, &w);
    ck_assert_int_eq(w.n, 1); /* no stemmer for xx */
    ck_assert_ptr_nonnull(strstr(w.text, "'xx'"));
    kb_hit h[3];
    ck_assert_uint_eq(kb_search(k, "tart", h, 3), 1);
    /* N = 3, df = 1: idf = ln(1 + 2.5/1.5) = 0.980829; tf = 2, dl = 3, avgdl = 7/3:
     * 0.980829 * 2 * 2.2 / (2 + 1.2 * (0.25 + 0.75 * 9/7)) = 1.248328 */
    ck_assert_double_eq_tol(h[0].score, 1.248328, 1e-5);
    ck_assert_double_eq_tol(h[0].coverage, 1.0, 1e-9);
    ck_assert_ptr_nonnull(strstr(h[0].chunk->file, "b.md"));
    /* "apple": df = 2, idf = ln(1 + 1.5/2.5) = 0.470004; a.md is shorter than b.md */
    ck_assert_uint_eq(kb_search(k, "APPLE", h, 3), 2);
    ck_assert_ptr_nonnull(strstr(h[0].chunk->file, "a.md"));
    /* a: 0.470004 * 2.2 / (1 + 1.2 * (0.25 + 0.75 * 6/7)) = 0.499176 */
    ck_assert_double_eq_tol(h[0].score, 0.499176, 1e-5);
    ck_assert_double_eq_tol(h[1].score, 0.470004 * 2.2 / (1 + 1.2 * (0.25 + 0.75 * 9.0 / 7)), 1e-5);
    /* half the query is unknown to the KB: coverage drops below 1 */
    ck_assert_uint_eq(kb_search(k, "tart zebra", h, 1), 1);
    ck_assert_double_lt(h[0].coverage, 0.5);
    ck_assert_uint_eq(kb_search(k, "zebra", h, 3), 0);
    ck_assert_uint_eq(kb_search(k, "", h, 3), 0);
    ck_assert_int_eq(kb_answerable(NULL, 0, 0), 0);
    kb_free(k);
    remove_tree(tmpdir);
}
END_TEST

START_TEST(test_hash_and_isolation)
{
    make_tmpdir();
    char d1[600], d2[600];
    snprintf(d1, sizeof d1, "%s/one", tmpdir);
    snprintf(d2, sizeof d2, "%s/two", tmpdir);
    ck_assert_int_eq(mkdir(d1, 0755), 0);
    ck_assert_int_eq(mkdir(d2, 0755), 0);
    write_file("one/x.md", "# Mosógép\nA mosógép javítása 12 000 Ft.\n");
    write_file("two/x.md", "# Hűtő\nA hűtő javítása 13 500 Ft.\n");
    const char *dirs1[] = {"one"}, *dirs2[] = {"two"};
    kb *k1 = kb_build(tmpdir, dirs1, 1, NULL, 0, NULL, NULL);
    kb *k2 = kb_build(tmpdir, dirs2, 1, NULL, 0, NULL, NULL);
    kb *k1b = kb_build(tmpdir, dirs1, 1, NULL, 0, NULL, NULL);
    ck_assert_str_eq(kb_chunk_at(k1, 0)->file, "one/x.md");
    ck_assert_uint_eq(strlen(kb_hash(k1)), 16);
    ck_assert_str_eq(kb_hash(k1), kb_hash(k1b));
    ck_assert_str_ne(kb_hash(k1), kb_hash(k2));
    ck_assert_uint_eq(kb_bytes(k1), strlen("# Mosógép\nA mosógép javítása 12 000 Ft.\n"));

    kb_hit h[4];
    ck_assert_uint_eq(kb_search(k1, "hűtő javítás", h, 4), 1);
    ck_assert_ptr_eq(h[0].chunk, kb_chunk_at(k1, 0)); /* only its own chunk */
    ck_assert_uint_eq(kb_search(k1, "hűtő", h, 4), 0);
    ck_assert_uint_eq(kb_search(k2, "hűtő", h, 4), 1);
    ck_assert_ptr_eq(h[0].chunk, kb_chunk_at(k2, 0));
    ck_assert_ptr_ne(kb_chunk_at(k1, 0), kb_chunk_at(k1b, 0)); /* no sharing */

    /* changing a file changes the hash */
    write_file("one/x.md", "# Mosógép\nA mosógép javítása 12 500 Ft.\n");
    kb *k1c = kb_build(tmpdir, dirs1, 1, NULL, 0, NULL, NULL);
    ck_assert_str_ne(kb_hash(k1), kb_hash(k1c));
    kb_free(k1);
    kb_free(k2);
    kb_free(k1b);
    kb_free(k1c);
    kb_free(NULL);
    remove_tree(tmpdir);
}
END_TEST

START_TEST(test_excerpt)
{
    make_tmpdir();
    write_file("x.md", "# Garancia\n"
                       "Minden javításra 12 hónap garanciát adunk. A Kokó Szerviz Kft. 2009 óta "
                       "működik. A beszerelésre 24 hónap garancia jár. Kávét nem főzünk.\n");
    const char *dirs[] = {tmpdir};
    kb *k = kb_build(NULL, dirs, 1, NULL, 0, NULL, NULL);
    const kb_chunk *c = kb_chunk_at(k, 0);
    char *e = kb_excerpt(k, c, "mennyi garancia van a beszerelesre?", 200);
    /* both garancia sentences, in their order; "Kft." does not end a sentence */
    ck_assert_str_eq(e, "Minden javításra 12 hónap garanciát adunk. A beszerelésre 24 hónap "
                        "garancia jár.");
    free(e);
    e = kb_excerpt(k, c, "beszerelés garancia", 50);
    ck_assert_str_eq(e, "A beszerelésre 24 hónap garancia jár.");
    free(e);
    e = kb_excerpt(k, c, "beszerelés", 10); /* one sentence longer than the limit: cut */
    ck_assert_uint_le(strlen(e), 10);
    ck_assert_str_eq(e, "A beszerel");
    free(e);
    e = kb_excerpt(k, c, "pizza", 60); /* nothing matches: the opening sentences */
    ck_assert_str_eq(e, "Minden javításra 12 hónap garanciát adunk.");
    free(e);
    /* the chunk's sentences and the last query are cached: the same question again,
     * after others, gives the same excerpt, and a chunk of another KB (split and
     * stemmed on the spot) is excerpted too */
    e = kb_excerpt(k, c, "beszerelés garancia", 50);
    ck_assert_str_eq(e, "A beszerelésre 24 hónap garancia jár.");
    free(e);
    kb_chunk other = *c;
    e = kb_excerpt(k, &other, "kávé", 50);
    ck_assert_str_eq(e, "Kávét nem főzünk.");
    free(e);
    kb_free(k);
    remove_tree(tmpdir);
}
END_TEST

/* ---- labelled questions on the demo KB ---------------------------------------------- */

static int match_one(const kb_chunk *c, const char *exp, size_t len)
{
    const char *h = memchr(exp, '#', len);
    if (!h)
        return 0;
    size_t fl = (size_t)(h - exp), hl = len - fl - 1;
    if (strlen(c->file) != fl || strncmp(c->file, exp, fl))
        return 0;
    h++;
    return !strncmp(c->heading, h, hl) && (c->heading[hl] == '\0' || !strncmp(c->heading + hl, " \xE2\x80\xBA ", 5));
}

/* expected: "file#heading" alternatives separated by '|'; a hit at or below the heading counts */
static int match(const kb_chunk *c, const char *expected)
{
    while (*expected) {
        size_t len = strcspn(expected, "|");
        if (match_one(c, expected, len))
            return 1;
        expected += len;
        if (*expected == '|')
            expected++;
    }
    return 0;
}

START_TEST(test_demo_questions)
{
    char base[512], path[600], line[1024];
    snprintf(base, sizeof base, "%s", srcdir());
    snprintf(path, sizeof path, "%s/tests/data/kb_questions.tsv", base);
    const char *dirs[] = {"kb/_global", "kb/demo"};
    const char *langs[] = {"hu", "en"};
    warnings w = {0};
    kb *k = kb_build(base, dirs, 2, langs, 2, on_warn, &w);
    ck_assert_msg(w.n == 0, "demo KB warnings:\n%s", w.text);
    ck_assert_uint_ge(kb_file_count(k), 20);
    ck_assert_uint_ge(kb_bytes(k), 40 * 1024);
    FILE *f = fopen(path, "r");
    ck_assert_msg(f != NULL, "cannot open %s (set KOKO_SRCDIR to the source tree)", path);
    int pos = 0, top1 = 0, top3 = 0, kept = 0, neg = 0, rejected = 0;
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#' || line[0] == '\n')
            continue;
        line[strcspn(line, "\r\n")] = '\0';
        char *q = strchr(line, '\t');
        ck_assert_ptr_nonnull(q);
        q++;
        char *exp = strchr(q, '\t');
        ck_assert_ptr_nonnull(exp);
        *exp++ = '\0';
        kb_hit h[3];
        size_t n = kb_search(k, q, h, 3);
        int ans = n > 0 && kb_answerable(&h[0], KB_DEFAULT_MIN_SCORE, KB_DEFAULT_MIN_COVERAGE);
        if (!strcmp(exp, "-")) {
            neg++;
            if (!ans)
                rejected++;
            else
                printf("unanswerable judged answerable: \"%s\" -> %s#%s (score %.2f, coverage %.2f)\n", q,
                       h[0].chunk->file, h[0].chunk->heading, h[0].score, h[0].coverage);
            continue;
        }
        pos++;
        int rank = -1;
        for (size_t i = 0; i < n && rank < 0; i++)
            if (match(h[i].chunk, exp))
                rank = (int)i;
        if (rank == 0)
            top1++;
        if (rank >= 0)
            top3++;
        else
            printf("top-3 miss: \"%s\" expected %s, got %s#%s\n", q, exp, n ? h[0].chunk->file : "(nothing)",
                   n ? h[0].chunk->heading : "");
        if (ans)
            kept++;
        else
            printf("answerable judged unanswerable: \"%s\" (score %.2f, coverage %.2f)\n", q, n ? h[0].score : 0,
                   n ? h[0].coverage : 0);
    }
    fclose(f);
    printf("kb questions: %d answerable: top-1 %d, top-3 %d (%.1f%%), kept answerable %d "
           "(%.1f%%); %d unanswerable: rejected %d\n",
           pos, top1, top3, 100.0 * top3 / pos, kept, 100.0 * kept / pos, neg, rejected);
    ck_assert_int_ge(pos, 60);
    ck_assert_int_ge(neg, 15);
    ck_assert_msg(top3 * 100 >= 90 * pos, "top-3 hit rate %d/%d below 90%%", top3, pos);
    ck_assert_msg(rejected == neg, "%d of %d unanswerable questions judged answerable", neg - rejected, neg);
    ck_assert_msg(kept * 100 >= 85 * pos, "only %d/%d answerable questions kept", kept, pos);

    /* an excerpt of the best hit answers the question */
    kb_hit h[1];
    ck_assert_uint_eq(kb_search(k, "mennyibe kerul a kiszallas budapesten", h, 1), 1);
    char *e = kb_excerpt(k, h[0].chunk, "mennyibe kerul a kiszallas budapesten", 300);
    ck_assert_msg(strstr(e, "9 900 Ft") != NULL, "excerpt: %s", e);
    free(e);
    kb_free(k);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("kb");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 20);
    tcase_add_test(tc, test_chunking);
    tcase_add_test(tc, test_long_section_split);
    tcase_add_test(tc, test_bad_files);
    tcase_add_test(tc, test_bm25_hand_computed);
    tcase_add_test(tc, test_hash_and_isolation);
    tcase_add_test(tc, test_excerpt);
    tcase_add_test(tc, test_demo_questions);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
