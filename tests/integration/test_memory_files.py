"""
test_memory_files.py — operator memory (memory/<tenant>/identity.json and
decisions.json) through the real kokod: kokod -t reports every problem of
both files as FILE:LINE:COL; a reload with a broken identity.json is refused
with the same lines while the old generation keeps answering; once fixed, the
new holding and handoff texts are what the customer gets from the fallback
chain; and an edited decisions.json reaches the gemini context cache (a new
cache, the old one deleted) and the openai system prompt. The shipped
doc/*.schema.json accept the shipped memory/demo files (checked with
python3-jsonschema, which setup.sh installs).
"""
import json
import os
import re
import shutil
import sys
import tempfile
import unittest

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import SRCDIR, KokoTestCase, demo_tenant, kokod_check, main  # noqa: E402
import test_llm  # noqa: E402  (its fakes and backend settings)
from test_llm import PLUGIN_DIRS, Fake  # noqa: E402

NO_MATCH = "Milyen színű a kedvenc esernyőjük?"  # nothing in kb/demo: holding text
MATCH = "Mikor van nyitva a műhely?"  # kb/demo answers it


def line_col(text, needle):
    """1-based line and column of the first NEEDLE in TEXT."""
    i = text.index(needle)
    return text.count("\n", 0, i) + 1, i - (text.rfind("\n", 0, i) + 1) + 1


def persona(**over):
    """The shipped demo persona with OVER applied."""
    with open(os.path.join(SRCDIR, "memory", "demo", "identity.json"), encoding="utf-8") as f:
        p = json.load(f)
    p.update(over)
    return p


def setUpModule():
    test_llm.gemini = Fake("fake_gemini.py", "--key", test_llm.KEY)
    test_llm.openai = Fake("fake_openai.py")


def tearDownModule():
    for f in (test_llm.gemini, test_llm.openai):
        if f:
            f.close()


class MemoryCase(KokoTestCase):
    def setUp(self):
        self.base = tempfile.mkdtemp(prefix="koko-memory-")
        self.addCleanup(shutil.rmtree, self.base, True)
        for d in ("kb", "memory"):
            shutil.copytree(os.path.join(SRCDIR, d), os.path.join(self.base, d))
        self.identity = os.path.join(self.base, "memory", "demo", "identity.json")
        self.decisions = os.path.join(self.base, "memory", "demo", "decisions.json")

    def write(self, path, text):
        tmp = path + ".new"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text if isinstance(text, str) else json.dumps(text, ensure_ascii=False, indent=2))
        os.replace(tmp, path)

    def start(self, tenant=None, plugin_dirs=None):
        k = self.started(tenants={"demo": tenant or demo_tenant(handoff={"min_confidence": 0.99})},
                         extra={"base_dir": self.base}, **({"plugin_dirs": plugin_dirs} if plugin_dirs else {}))
        self.addCleanup(self.stop_clean, k)
        return k

    def stop_clean(self, k):
        if k.alive():
            k.stop()
        self.assertNotIn("runtime error:", k.log())


BROKEN = """{
  "name": "Kokó",
  "greting": {"hu": "Szia"},
  "holding": {"hu": "Egy pillanat.", "en": "One moment."},
  "handoff": {"hu": "Átadom."},
  "greeting": {
    "hu": 42
  }
}
"""


class Files(MemoryCase):
    def test_kokod_t_reports_every_problem(self):
        k = self.kokod(tenants={"demo": demo_tenant()}, extra={"base_dir": self.base})
        self.write(self.identity, BROKEN)
        self.write(self.decisions, '[{"text": "No refunds.", "date": "2026-02-30", "author": "Éva"}]\n')
        rc, out, err = kokod_check(k.config_path)
        self.assertEqual(rc, 1, out + err)
        lines = [x for x in err.splitlines() if x.startswith(self.base)]
        self.assertEqual(lines, [
            '%s:3:3: greting: unknown key "greting"; did you mean "greeting"? (known keys: name, company, tone, '
            'greeting, holding, handoff, source_label, never)' % self.identity,
            '%s:5:3: handoff: no text for "en", one of the tenant\'s languages: add "en": "..." (the assistant must '
            'be able to say this in every language it answers in)' % self.identity,
            '%s:7:11: greeting.hu: expected a string, got a number (write "42" in quotes to make it text)'
            % self.identity,
            '%s:1:34: [0].date: "2026-02-30" is not a day of the calendar (YYYY-MM-DD: month 01-12, a day the month '
            'has)' % self.decisions,
        ], err)
        self.assertIn("configuration has 4 error(s)", err)

        # a text for a language the tenant does not serve: a warning, not an error
        self.write(self.identity, persona(greeting={"hu": "Üdv!", "en": "Hi!", "de": "Hallo!"}))
        self.write(self.decisions, "[]\n")
        rc, out, err = kokod_check(k.config_path)
        self.assertEqual(rc, 0, out + err)
        text = open(self.identity, encoding="utf-8").read()
        line, col = line_col(text, '"de"')
        self.assertIn('%s:%d:%d: greeting.de: "de" is not one of the tenant\'s languages (hu, en): this text is '
                      'never used' % (self.identity, line, col), err)

    def test_broken_identity_refused_then_fixed(self):
        k = self.start()
        old_holding = persona()["holding"]["hu"]
        self.assertEqual(k.chat("demo", NO_MATCH, language="hu")["reply"], old_holding)
        gen = k.health()["generation"]

        self.write(self.identity, BROKEN)
        rc, out, err = k.kokoctl("reload")
        self.assertEqual(rc, 1, out + err)
        self.assertIn("kokoctl: reload refused (3 problem(s)); generation %d keeps serving" % gen, err)
        self.assertRegex(err, r"(?m)^%s:7:11: greeting\.hu: expected a string, got a number"
                         % re.escape(self.identity))
        self.assertRegex(err, r'(?m)^%s:3:3: greting: unknown key "greting"; did you mean "greeting"\?'
                         % re.escape(self.identity))
        # the old generation keeps serving, with the old texts
        self.assertEqual(k.health()["generation"], gen)
        a = k.chat("demo", NO_MATCH, language="hu")
        self.assertEqual(a["reply"], old_holding)
        self.assertTrue(a["handoff"])

        # fixed, with new texts: the reload succeeds and the fallback chain uses them
        holding = {"hu": "Egy pillanat, kollégánk mindjárt válaszol.", "en": "One moment, a colleague replies soon."}
        handoff = {"hu": "Ezt egy emberi kolléga intézi tovább.", "en": "A human colleague takes it from here."}
        self.write(self.identity, persona(holding=holding, handoff=handoff))
        rc, doc, err = k.reload()
        self.assertEqual(rc, 0, err)
        self.assertEqual(doc["generation"], gen + 1)
        self.assertEqual(doc["tenants"]["changed"], ["demo"], doc)
        a = k.chat("demo", NO_MATCH, language="hu")
        self.assertEqual(a["reply"], holding["hu"], a)
        self.assertEqual(k.chat("demo", NO_MATCH, language="en")["reply"], holding["en"])
        # a KB answer below min_confidence 0.99: the core hands over with the persona's handoff text
        a = k.chat("demo", MATCH, language="hu")
        self.assertTrue(a["handoff"], a)
        self.assertEqual(a["reply"], handoff["hu"], a)
        self.assertIn("nyitva", a.get("draft") or "", a)

    def test_broken_decisions_refused(self):
        k = self.start()
        gen = k.health()["generation"]
        text = '[\n  {"text": "No refunds.", "date": "2026-03-02", "autor": "Éva"}\n]\n'
        self.write(self.decisions, text)
        rc, doc, err = k.reload()
        self.assertEqual(rc, 1, doc)
        line, col = line_col(text, '"autor"')
        self.assertEqual(doc["errors"], [
            '%s:%d:%d: [0].autor: unknown key "autor"; did you mean "author"? (known keys: id, text, date, author)'
            % (self.decisions, line, col),
            '%s:2:3: [0]: missing required key "author" (who decided it)' % self.decisions])
        self.assertEqual(k.health()["generation"], gen)
        self.assertEqual(k.chat("demo", MATCH, language="hu")["language"], "hu")


class Prompt(MemoryCase):
    def setUp(self):
        super().setUp()
        test_llm.gemini.call("POST", "/_reset")
        test_llm.openai.call("POST", "/_reset")

    def test_decisions_reach_the_context_cache(self):
        k = self.start(tenant=test_llm.tenant(), plugin_dirs=PLUGIN_DIRS)
        self.assertEqual(k.chat("demo", "first question", language="en")["backend"], "gemini")
        st, _, doc = k.http("GET", "/cache/demo")
        old = doc["caches"][0]["name"]
        creates = test_llm.gemini.requests("POST", r"^/v1beta/cachedContents$")
        self.assertEqual(len(creates), 1)
        first = json.dumps(creates[0]["body"], ensure_ascii=False)
        self.assertIn("We do not send technicians outside Pest county.", first)
        self.assertIn("Friendly, concise and polite", first)

        decisions = json.load(open(self.decisions, encoding="utf-8"))
        decisions.append({"id": "no-weekend", "text": "We never schedule visits on Sundays.", "date": "2026-06-01",
                          "author": "Szabó Anna"})
        self.write(self.decisions, decisions)
        rc, doc, err = k.reload()
        self.assertEqual(rc, 0, err)
        self.assertEqual(doc["tenants"]["changed"], ["demo"], doc)
        self.assertEqual(k.chat("demo", "second question", language="en")["backend"], "gemini")
        creates = test_llm.gemini.requests("POST", r"^/v1beta/cachedContents$")
        self.assertEqual(len(creates), 2, "a changed decisions.json must change the context hash")
        self.assertIn("We never schedule visits on Sundays. (decided 2026-06-01 by Szabó Anna)",
                      json.dumps(creates[1]["body"], ensure_ascii=False))
        st, _, doc = k.http("GET", "/cache/demo")
        self.assertNotEqual(doc["caches"][0]["name"], old)

    def test_persona_and_decisions_reach_openai(self):
        k = self.start(tenant=test_llm.tenant(chain=("openai", "fallback")), plugin_dirs=PLUGIN_DIRS)
        self.write(self.identity, persona(tone={"hu": "Tegező és vidám.", "en": "Cheerful and informal."}))
        rc, doc, err = k.reload()
        self.assertEqual(rc, 0, err)
        self.assertEqual(k.chat("demo", "a question", language="en")["backend"], "openai")
        body = test_llm.openai.requests("POST", "/chat/completions$")[-1]["body"]
        system = body["messages"][0]["content"]
        self.assertIn("You are Kokó, the customer-service assistant of Kokó Szerviz Kft.", system)
        self.assertIn("Cheerful and informal.", system)
        self.assertIn("Never ask for card numbers or passwords.", system)
        self.assertIn("No refunds on labour after 14 days", system)


class Schemas(unittest.TestCase):
    def test_demo_files_match_the_shipped_schemas(self):
        try:
            import jsonschema
        except ImportError:
            self.fail("python3-jsonschema is not installed: bash setup.sh deps installs it")
        for name in ("identity", "decisions"):
            with open(os.path.join(SRCDIR, "doc", name + ".schema.json"), encoding="utf-8") as f:
                schema = json.load(f)
            jsonschema.Draft202012Validator.check_schema(schema)
            v = jsonschema.Draft202012Validator(schema, format_checker=jsonschema.FormatChecker())
            with open(os.path.join(SRCDIR, "memory", "demo", name + ".json"), encoding="utf-8") as f:
                self.assertEqual([e.message for e in v.iter_errors(json.load(f))], [])
        # and a typo is what the schema refuses too
        with open(os.path.join(SRCDIR, "doc", "identity.schema.json"), encoding="utf-8") as f:
            v = jsonschema.Draft202012Validator(json.load(f))
        errs = [e.message for e in v.iter_errors(persona(greting={"hu": "x"}))]
        self.assertEqual(len(errs), 1, errs)
        self.assertIn("greting", errs[0])


if __name__ == "__main__":
    main()
