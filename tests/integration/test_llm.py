"""
test_llm.py — the gemini and openai backends through the real kokod, against
tests/fakes/fake_gemini.py and tests/fakes/fake_openai.py (started once for
the module on free loopback ports, reset before every test): one context
cache created and reused across 100 questions, TTL extension by PATCH,
recreation after expiry and after a KB edit + reload (the old cache
DELETEd), `kokoctl cache refresh`, failover gemini → openai → fallback, a
function-call round trip with the testtool plugin, a 429 retryDelay that is
honoured, cost arithmetic checked by hand against the price table, the
monthly budget cut-off, and the /stats fields.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import BUILDDIR, FALLBACK_DIR, SRCDIR, TEST_PLUGINS, KokoTestCase, demo_tenant, main  # noqa: E402

KEY = "it-gemini-key"
os.environ["GEMINI_API_KEY"] = KEY  # kokod inherits it: api_key "${GEMINI_API_KEY}"
MODEL = "gemini-2.5-flash"
PRICE = {"input": 0.30, "cached_input": 0.03, "output": 2.50, "cache_storage_per_hour": 1.00}
PLUGIN_DIRS = [FALLBACK_DIR, TEST_PLUGINS, os.path.join(BUILDDIR, "plugins", "gemini", ".libs"),
               os.path.join(BUILDDIR, "plugins", "openai", ".libs")]
FAKES = os.path.join(SRCDIR, "tests", "fakes")


class Fake:
    """One fake API server process (fake_gemini.py or fake_openai.py)."""

    def __init__(self, script, *args):
        self.proc = subprocess.Popen([sys.executable, "-B", os.path.join(FAKES, script), "--port", "0"] + list(args),
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        m = re.search(r"listening on (http://\S+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError("%s did not start: %r" % (script, line))
        self.url = m.group(1)

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def requests(self, method=None, pattern=""):
        return [r for r in self.call("GET", "/_requests")
                if (method is None or r["method"] == method) and re.search(pattern, r["path"])]

    def close(self):
        self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()


gemini = openai = None


def setUpModule():
    global gemini, openai
    gemini = Fake("fake_gemini.py", "--key", KEY)
    openai = Fake("fake_openai.py")


def tearDownModule():
    for f in (gemini, openai):
        if f:
            f.close()


def gemini_cfg(**over):
    c = {"api_key": "${GEMINI_API_KEY}", "base_url": gemini.url, "model": MODEL, "backoff_ms": 10,
         "max_attempts": 2, "timeout_ms": 5000, "prices": {MODEL: PRICE}}
    c.update(over)
    return c


def tenant(chain=("gemini", "fallback"), gem=None, **over):
    """The demo tenant (its KB and persona) answered by gemini first."""
    t = demo_tenant(llm=list(chain))
    t["backends"] = dict(t["backends"], gemini=gem or gemini_cfg(),
                         openai={"base_url": openai.url, "model": "local-model", "backoff_ms": 10, "max_attempts": 2})
    t["handoff"] = {"min_confidence": 0.0}
    t.update(over)
    return t


def usd(tokens, price):
    return tokens * price / 1e6


class LlmCase(KokoTestCase):
    def setUp(self):
        gemini.call("POST", "/_reset")
        openai.call("POST", "/_reset")

    def start(self, t=None, extra=None):
        k = self.started(tenants={"demo": t or tenant()}, plugin_dirs=PLUGIN_DIRS, extra=extra)
        self.addCleanup(self.stop_clean, k)  # runs before the harness's close()
        return k

    def stop_clean(self, k):
        """A graceful stop with exit 0 (sanitizer builds exit non-zero on leaks) and no UBSan report."""
        k.stop()
        self.assertNotIn("runtime error:", k.log())

    def caches(self, k):
        st, _, doc = k.http("GET", "/cache/demo")
        self.assertEqual(st, 200, doc)
        return doc["caches"]


class Caching(LlmCase):
    def test_one_cache_for_100_questions(self):
        k = self.start()
        for i in range(100):
            a = k.chat("demo", "What is question number %d about the delivery?" % i, language="en")
            self.assertEqual(a["backend"], "gemini", a)
            self.assertTrue(a["reply"].startswith("[en] echo: "), a["reply"])
        self.assertEqual(len(gemini.requests("POST", r"^/v1beta/cachedContents$")), 1)
        gens = gemini.requests("POST", ":generateContent$")
        self.assertEqual(len(gens), 100)
        name = gemini.call("GET", "/_caches")[0]["name"]
        tokens = gemini.call("GET", "/_caches")[0]["usageMetadata"]["totalTokenCount"]
        for r in gens:  # every request names the cache and repeats neither persona nor tools
            self.assertEqual(r["body"]["cachedContent"], name)
            self.assertFalse({"systemInstruction", "tools", "toolConfig"} & set(r["body"]))
            self.assertEqual(r["key"], KEY)
        c = self.caches(k)
        self.assertEqual(len(c), 1)
        self.assertEqual((c[0]["name"], c[0]["model"], c[0]["tokens"], c[0]["hits"]), (name, MODEL, tokens, 100))
        self.assertEqual(c[0]["tokens_saved"], 100 * tokens)
        self.assertAlmostEqual(c[0]["usd_saved"], 100 * usd(tokens, PRICE["input"] - PRICE["cached_input"]) -
                               usd(tokens, PRICE["cache_storage_per_hour"]), places=9)
        rc, out, err = k.kokoctl("cache", "demo")
        self.assertEqual(rc, 0, err)
        self.assertEqual(len(re.findall(r"cachedContents/", out)), 1, out)
        self.assertRegex(out, r"%s\s+%s\s+%d\s+100\s+%d" % (re.escape(name), MODEL, tokens, 100 * tokens))
        st, _, s = k.http("GET", "/stats")
        for f in ("total_queries", "total_tokens", "estimated_cost_usd", "cache_hit_rate", "avg_response_time_ms"):
            self.assertIn(f, s)
            self.assertIn(f, s["tenants"]["demo"])
        self.assertEqual(s["total_queries"], 100)
        self.assertEqual(s["tenants"]["demo"]["counters"]["cache_hits"], 100)
        self.assertEqual(s["tenants"]["demo"]["counters"]["tokens_cached"], 100 * tokens)
        self.assertGreater(s["cache_hit_rate"], 0.9)  # cached tokens / input tokens
        self.assertGreater(s["avg_response_time_ms"], 0)
        self.assertGreater(s["total_tokens"], 100 * tokens)

    def test_ttl_extended_by_patch(self):
        k = self.start(tenant(gem=gemini_cfg(cache={"ttl_s": 3})))
        k.chat("demo", "first question", language="en")
        c0 = self.caches(k)[0]
        time.sleep(2.6)  # under 20 % of the TTL left, not yet past the 0.15 s safety margin
        a = k.chat("demo", "second question", language="en")
        self.assertEqual(a["backend"], "gemini")
        # the PATCH goes out beside the generateContent: it may land just after the answer
        deadline = time.monotonic() + 3
        while not gemini.requests("PATCH", r"^/v1beta/cachedContents/") and time.monotonic() < deadline:
            time.sleep(0.05)
        patches = gemini.requests("PATCH", r"^/v1beta/cachedContents/")
        self.assertEqual(len(patches), 1, gemini.requests())
        self.assertEqual(patches[0]["path"], "/v1beta/" + c0["name"])
        self.assertEqual(patches[0]["query"], "updateMask=ttl")
        self.assertEqual(patches[0]["body"], {"ttl": "3s"})
        deadline = time.monotonic() + 3
        while self.caches(k)[0]["expires"] == c0["expires"] and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertGreater(self.caches(k)[0]["expires"], c0["expires"])
        self.assertEqual(len(gemini.requests("POST", r"^/v1beta/cachedContents$")), 1)

    def test_recreated_after_expiry(self):
        k = self.start()
        k.chat("demo", "first question", language="en")
        old = self.caches(k)[0]["name"]
        gemini.call("POST", "/_expire", {"name": old})
        a = k.chat("demo", "second question", language="en")
        self.assertEqual(a["backend"], "gemini", a)
        self.assertEqual(a["reply"], "[en] echo: second question")
        self.assertEqual(len(gemini.requests("POST", r"^/v1beta/cachedContents$")), 2)
        new = self.caches(k)[0]["name"]
        self.assertNotEqual(new, old)
        self.assertEqual(gemini.requests("POST", ":generateContent$")[-1]["body"]["cachedContent"], new)
        self.assertIn("is gone (404); recreating the context cache", k.log())

    def test_kb_edit_and_reload_replace_the_cache(self):
        base = tempfile.mkdtemp(prefix="koko-llm-kb-")
        self.addCleanup(shutil.rmtree, base, True)
        for d in ("kb", "memory"):
            shutil.copytree(os.path.join(SRCDIR, d), os.path.join(base, d))
        k = self.start(extra={"base_dir": base})
        k.chat("demo", "first question", language="en")
        old = self.caches(k)[0]["name"]
        with open(os.path.join(base, "kb", "demo", "zz-new-policy.md"), "w", encoding="utf-8") as f:
            f.write("# Gift cards\n\nGift cards are valid for two years from the day of purchase.\n")
        rc, out, err = k.kokoctl("reload")
        self.assertEqual(rc, 0, out + err)
        a = k.chat("demo", "second question", language="en")
        self.assertEqual(a["backend"], "gemini", a)
        creates = gemini.requests("POST", r"^/v1beta/cachedContents$")
        self.assertEqual(len(creates), 2)
        self.assertIn("Gift cards are valid for two years", json.dumps(creates[1]["body"]))
        c = self.caches(k)
        self.assertEqual(len(c), 1)
        self.assertNotEqual(c[0]["name"], old)
        deadline = time.monotonic() + 5
        while not gemini.requests("DELETE", "^/v1beta/" + old + "$") and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(len(gemini.requests("DELETE", "^/v1beta/" + old + "$")), 1)
        self.assertEqual([x["name"] for x in gemini.call("GET", "/_caches")], [c[0]["name"]])

    def test_kokoctl_cache_refresh(self):
        k = self.start()
        k.chat("demo", "first question", language="en")
        old = self.caches(k)[0]["name"]
        rc, out, err = k.kokoctl("cache", "refresh", "demo")
        self.assertEqual(rc, 0, out + err)
        self.assertRegex(out, r"gemini\s+rebuilt")
        new = self.caches(k)[0]["name"]
        self.assertNotEqual(new, old)
        self.assertEqual(len(gemini.requests("POST", r"^/v1beta/cachedContents$")), 2)
        deadline = time.monotonic() + 5
        while not gemini.requests("DELETE", "^/v1beta/" + old + "$") and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(len(gemini.requests("DELETE", "^/v1beta/" + old + "$")), 1)
        k.chat("demo", "second question", language="en")
        self.assertEqual(gemini.requests("POST", ":generateContent$")[-1]["body"]["cachedContent"], new)
        st, _, doc = k.http("POST", "/cache/demo/refresh")
        self.assertEqual(st, 200, doc)
        self.assertEqual(len(gemini.requests("POST", r"^/v1beta/cachedContents$")), 3)


class Failover(LlmCase):
    def test_gemini_then_openai_then_fallback(self):
        k = self.start(tenant(chain=("gemini", "openai", "fallback")))
        gemini.call("POST", "/_faults", {"path_regex": ":generateContent$", "status": 503, "count": 1000})
        a = k.chat("demo", "When do you open?", language="en")
        self.assertEqual(a["backend"], "openai", a)
        self.assertEqual(a["reply"], "[en] echo: When do you open?")
        self.assertEqual(len(a["attempts"]), 1)
        self.assertEqual(a["attempts"][0]["backend"], "gemini")
        self.assertIn("503", a["attempts"][0]["error"])
        self.assertIn("2 attempts", a["attempts"][0]["error"])  # max_attempts: 2, both at the fake
        self.assertEqual(len(gemini.requests("POST", ":generateContent$")), 2)
        openai.call("POST", "/_faults", {"path_regex": "chat/completions", "status": 500, "count": 1000})
        a = k.chat("demo", "Mikor vannak nyitva?", language="hu")
        self.assertEqual(a["backend"], "fallback", a)
        self.assertEqual([x["backend"] for x in a["attempts"]], ["gemini", "openai"])
        self.assertIn("500", a["attempts"][1]["error"])
        self.assertEqual(len(openai.requests("POST", "chat/completions")), 3)
        c = k.kokoctl_json("stats")["demo"]
        self.assertEqual((c["backend.openai"], c["backend.fallback"]), (1, 1))


class FunctionCalling(LlmCase):
    def test_round_trip_with_testtool(self):
        k = self.start(tenant(tools={"testtool": {}}))
        a = k.chat("demo", "please use the test tool", language="en")
        self.assertEqual(a["backend"], "gemini", a)
        # the fake calls add({"q": ...}); the tool's error is fed back, not fatal
        self.assertEqual(a["reply"], '[en] tool said: {"error": "add needs numbers a and b"}')
        st, _, doc = k.http("POST", "/webhook/demo/testtool", {})
        self.assertEqual((st, doc["calls"]), (200, 1))
        gens = gemini.requests("POST", ":generateContent$")
        self.assertEqual(len(gens), 2)
        create = gemini.requests("POST", r"^/v1beta/cachedContents$")[0]["body"]
        names = [d["name"] for d in create["tools"][0]["functionDeclarations"]]
        self.assertEqual(names, ["handoff_to_human", "add", "broken"])
        turns = gens[1]["body"]["contents"]
        self.assertEqual(turns[-2]["parts"][0]["functionCall"]["name"], "add")
        self.assertEqual(turns[-1]["parts"][0]["functionResponse"]["name"], "add")
        self.assertEqual(k.kokoctl_json("stats")["demo"]["tool_calls"], 1)


class Retry(LlmCase):
    def test_retry_delay_is_honoured(self):
        k = self.start()
        k.chat("demo", "warm up", language="en")  # the cache exists: one call to time
        gemini.call("POST", "/_faults", {"path_regex": ":generateContent$", "status": 429, "retry_delay": "1.2s"})
        t0 = time.monotonic()
        a = k.chat("demo", "are you there?", language="en")
        elapsed = time.monotonic() - t0
        self.assertEqual(a["backend"], "gemini", a)
        self.assertNotIn("attempts", a)
        self.assertGreaterEqual(elapsed, 1.2)
        self.assertLess(elapsed, 5)
        gens = gemini.requests("POST", ":generateContent$")
        self.assertEqual(len(gens), 3)
        self.assertGreaterEqual(gens[2]["time"] - gens[1]["time"], 1.2)


class Cost(LlmCase):
    def test_cost_arithmetic_by_hand(self):
        k = self.start()
        usage = [(12000, 0, 300), (15000, 0, 120), (9000, 0, 77)]
        gemini.call("POST", "/_script", {"answers": [
            {"candidates": [{"content": {"role": "model", "parts": [{"text": "answer %d" % i}]},
                             "finishReason": "STOP"}],
             "usageMetadata": {"promptTokenCount": p, "candidatesTokenCount": o, "totalTokenCount": p + o}}
            for i, (p, _, o) in enumerate(usage)]})
        for i in range(3):
            self.assertEqual(k.chat("demo", "question %d" % i, language="en")["reply"], "answer %d" % i)
        cache_tokens = self.caches(k)[0]["tokens"]
        # the scripted usage has no cachedContentTokenCount: nothing was billed at the cached price
        expect = sum(usd(p - c, PRICE["input"]) + usd(c, PRICE["cached_input"]) + usd(o, PRICE["output"])
                     for p, c, o in usage)
        expect += usd(cache_tokens, PRICE["cache_storage_per_hour"]) * 3600 / 3600  # ttl 3600 s, bought at creation
        # and the fake's own usage for the next two (cachedContentTokenCount = the cache's tokens)
        for q in ("fourth", "fifth"):
            k.chat("demo", q, language="en")
        for r in gemini.requests("POST", ":generateContent$")[3:]:
            chars = sum(len(p.get("text", "")) for c in r["body"]["contents"] for p in c["parts"])
            prompt = chars // 4 + cache_tokens
            q = r["body"]["contents"][-1]["parts"][-1]["text"]
            out = max(1, len(json.dumps([{"text": "[en] echo: " + q}])) // 4)
            expect += usd(prompt - cache_tokens, PRICE["input"]) + usd(cache_tokens, PRICE["cached_input"]) + \
                usd(out, PRICE["output"])
        st, _, s = k.http("GET", "/stats")
        self.assertAlmostEqual(s["tenants"]["demo"]["estimated_cost_usd"], expect, places=9)
        self.assertAlmostEqual(s["estimated_cost_usd"], expect, places=9)
        self.assertEqual(s["total_queries"], 5)

    def test_budget_cut_off(self):
        k = self.start(tenant(budget={"monthly_usd": 0.0001}))
        a = k.chat("demo", "first question", language="en")
        self.assertEqual(a["backend"], "gemini")  # the cache storage alone (~0.02 USD/h) spends it
        a = k.chat("demo", "Mikor vannak nyitva?", language="hu")
        self.assertEqual(a["backend"], "fallback", a)
        self.assertTrue(a["handoff"])
        self.assertEqual(a["attempts"], [{"backend": "gemini", "error": "skipped: the tenant's monthly budget is spent"}])
        self.assertEqual(len(gemini.requests("POST", ":generateContent$")), 1)
        self.assertIn("demo: monthly budget of 0.0001 USD spent", k.log())
        self.assertEqual(k.kokoctl_json("stats")["demo"]["budget_skips"], 1)


if __name__ == "__main__":
    main()
