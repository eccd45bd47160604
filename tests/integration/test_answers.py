"""
test_answers.py — the demo tenant through /api/chat, end to end: the labelled
questions of tests/data/kb_questions.tsv (answerable ones answered from the
right place in the right language, unanswerable ones handed off — never an
unrelated passage), language detection through the pipeline on
tests/data/lang_samples.tsv, and `kokoctl chat`.
"""
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Kokod, KokoTestCase, main  # noqa: E402

SRC = os.environ.get("KOKO_SRCDIR", ".")


def load_tsv(name):
    rows = []
    with open(os.path.join(SRC, "tests", "data", name), encoding="utf-8") as f:
        for line in f:
            if not line.strip() or line.startswith("#"):
                continue
            rows.append(line.rstrip("\n").split("\t"))
    return rows


def hit(source, expected):
    """A source counts when it is the expected file and at or below the expected heading."""
    for alt in expected.split("|"):
        file, _, heading = alt.partition("#")
        if source["file"] == file and (source["heading"] == heading or
                                       source["heading"].startswith(heading + " › ")):
            return True
    return False


class Answers(KokoTestCase):
    @classmethod
    def setUpClass(cls):
        # the demo tenant exactly as etc/koko.yaml has it (no complaints route here:
        # it would send "refund" questions to a human before the KB is asked)
        cls.k = Kokod(shared=True, tenants={"demo": {
            "languages": ["hu", "en"], "kb": ["kb/_global", "kb/demo"], "memory": "memory/demo",
            "llm": ["fallback"], "backends": {"fallback": {"min_score": 1.0, "min_coverage": 0.45}},
            "handoff": {"min_confidence": 0.2}}})
        cls.k.start()

    @classmethod
    def tearDownClass(cls):
        try:
            cls.k.stop(expect=0)
        finally:
            cls.k.close()

    def test_labelled_questions(self):
        rows = load_tsv("kb_questions.tsv")
        answerable = [r for r in rows if r[2] != "-"]
        unanswerable = [r for r in rows if r[2] == "-"]
        self.assertGreaterEqual(len(answerable), 60)
        self.assertGreaterEqual(len(unanswerable), 15)
        right, wrong_place, wrong_lang, handed = 0, [], [], []
        for lang, q, expected in answerable:
            a = self.k.chat("demo", q)
            # shorter questions follow the short-message rule (tenant's first language)
            if a["language"] != lang and len(q) >= 20:
                wrong_lang.append((q, a["language"]))
            if a["handoff"]:
                handed.append(q)
                continue
            self.assertEqual(a["backend"], "fallback")
            self.assertTrue(a["sources"], "an answer without a source: %r" % q)
            if hit(a["sources"][0], expected):
                right += 1
            else:
                wrong_place.append((q, a["sources"][0]["file"] + "#" + a["sources"][0]["heading"], expected))
        for q, got, exp in wrong_place:
            print("answered from another place: %r: %s (expected %s)" % (q, got, exp))
        for q in handed:
            print("handed off although answerable: %r" % q)
        for q, got in wrong_lang:
            print("language: %r came back as %s" % (q, got))
        print("answerable: %d of %d answered from the expected place, %d handed off, %d elsewhere"
              % (right, len(answerable), len(handed), len(wrong_place)))
        # test_kb measures retrieval (top-3 >= 90 %); end to end the single passage quoted
        # comes from the expected section for at least 3 in 4 questions (the rest are mostly
        # a neighbouring section of the same topic, e.g. opening hours of the workshop
        # instead of the phone line) — measured: 64 of 81
        self.assertGreaterEqual(right / len(answerable), 0.75)
        self.assertLessEqual(len(wrong_place), len(answerable) * 15 // 100)
        self.assertLessEqual(len(wrong_lang), len(answerable) // 20)

        leaked = []
        for lang, q, _ in unanswerable:
            a = self.k.chat("demo", q)
            if not a["handoff"]:
                leaked.append((q, a["reply"][:80]))
            else:
                self.assertEqual(a["sources"], [], q)
                self.assertIn(a["reply"], ("Köszönöm a kérdését, kollégánk hamarosan válaszol.",
                                           "Thank you for your question, a colleague will reply shortly."))
        for q, r in leaked:
            print("unanswerable question answered: %r → %r" % (q, r))
        self.assertEqual(leaked, [])

    def test_language_detection_through_the_pipeline(self):
        # a tenant listing eight of the sample languages (the most one tenant may list): the
        # others must come back as the tenant's first language
        rows = load_tsv("lang_samples.tsv")
        self.assertGreaterEqual(len(rows), 100)
        langs = ["hu", "en", "de", "fr", "es", "it", "ro", "pl"]
        k = Kokod(tenants={"multi": {"languages": langs, "llm": ["fallback"]}})
        try:
            k.start()
            ok, misses = 0, []
            for code, text in rows:
                a = k.chat("multi", text)
                if a["language"] == (code if code in langs else "hu"):
                    ok += 1
                else:
                    misses.append((code, a["language"], text))
            for m in misses:
                print("language miss: expected %s, got %s: %r" % m)
            print("language detection: %d of %d" % (ok, len(rows)))
            self.assertGreaterEqual(ok / len(rows), 0.95)
            # too short to tell: the conversation's language, then the tenant's first
            self.assertEqual(k.chat("multi", "ok")["language"], "hu")
            k.chat("multi", "Guten Tag, wann haben Sie morgen geöffnet?", conversation_id="c-de")
            self.assertEqual(k.chat("multi", "Danke!", conversation_id="c-de")["language"], "de")
        finally:
            k.stop(expect=0)
            k.close()

    def test_unlisted_language_gets_the_first(self):
        a = self.k.chat("demo", "Guten Tag, wie viel kostet eine Reparatur der Waschmaschine bei Ihnen?")
        self.assertEqual(a["language"], "hu")

    def test_kokoctl_chat(self):
        rc, out, err = self.k.kokoctl("chat", "demo", "Mennyibe kerül a kiszállás Budapesten?")
        self.assertEqual(rc, 0, err)
        self.assertIn("Kiszállási díj", out)
        self.assertRegex(out, r"language\s+hu")
        self.assertRegex(out, r"backend\s+fallback")
        self.assertRegex(out, r"route\s+default")
        self.assertRegex(out, r"sources\s+kb/demo/pricing.hu.md › Árak › Kiszállási díj")


if __name__ == "__main__":
    main()
