"""
test_memory.py — customer memory end to end, on the embedded store and on a
real redis-server.

kokod with the chatwoot channel (tests/fakes/fake_chatwoot.py) and the gemini
backend (tests/fakes/fake_gemini.py, whose structured-output answers are the
canned extraction set through POST /_extraction):
  - a customer says "csak délután érek rá" → the conversation is resolved →
    the extraction job asks gemini (instruction + responseSchema) → the fact
    is stored → the next conversation's prompt, as the fake saw it, carries
    it; the export returns it with both conversations;
  - forget returns a receipt, removes every trace (checked by reading the
    SQLite file / every Redis key directly), the next prompt no longer has
    it, and a second forget says nothing was left;
  - tenant isolation: tenant A's paths never read or delete tenant B's memory;
  - facts by hand, links between contact keys, /memory/T/extract with a
    transcript through the openai backend (strict json_schema), bad input;
  - a failing extraction stays queued (visible in the summary and the export)
    instead of being lost;
  - kokoctl memory show / export / forget (which wants --yes without a terminal).
"""
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "fakes"))
from harness import BUILDDIR, FALLBACK_DIR, TEST_PLUGINS, KokoTestCase, main  # noqa: E402
import chatwoot_payloads as P  # noqa: E402
from fake_chatwoot import FakeChatwoot, send_webhook  # noqa: E402
from test_durability import Redis  # noqa: E402
from test_llm import KEY, MODEL, Fake  # noqa: E402

CHATWOOT_DIR = os.path.dirname(os.environ.get("KOKO_CHATWOOT_SO",
                                              os.path.join(BUILDDIR, "plugins/chatwoot/.libs/chatwoot.so")))
PLUGIN_DIRS = [FALLBACK_DIR, TEST_PLUGINS, CHATWOOT_DIR, os.path.join(BUILDDIR, "plugins", "gemini", ".libs"),
               os.path.join(BUILDDIR, "plugins", "openai", ".libs")]
SECRET = "memory-secret"
FACT = "Csak délután ér rá."
CUSTOMER = "Szeretnék egy szerelőt kérni a kazánhoz, de csak délután érek rá."

gemini = openai = None


def setUpModule():
    global gemini, openai
    gemini = Fake("fake_gemini.py", "--key", KEY)
    openai = Fake("fake_openai.py")


def tearDownModule():
    for f in (gemini, openai):
        if f:
            f.close()


def tenant(fake, chain=("gemini", "fallback")):
    return {"languages": ["hu", "en"], "kb": ["kb/_global", "kb/demo"], "memory": "memory/demo",
            "llm": list(chain), "history_turns": 5, "handoff": {"min_confidence": 0.0},
            "backends": {"gemini": {"api_key": "${GEMINI_API_KEY}", "base_url": gemini.url, "model": MODEL,
                                    "backoff_ms": 10, "max_attempts": 2, "timeout_ms": 5000,
                                    "cache": {"enabled": False}},
                         "openai": {"base_url": openai.url, "model": "local-model", "backoff_ms": 10,
                                    "max_attempts": 2},
                         "fallback": {}},
            "channels": {"chatwoot": {"base_url": fake.url, "account_id": 1, "api_token": "test-token",
                                      "webhook_secret": SECRET, "quiet_ms": 50, "retry_base_ms": 50,
                                      "timeout_ms": 3000}}}


def resp(sock_file, *args):
    """One command to a redis-server on a RESP connection → the decoded reply."""
    out = b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in
                                             (x.encode() if isinstance(x, str) else x for x in args))
    sock_file.write(out)
    sock_file.flush()
    return read_resp(sock_file)


def read_resp(f):
    line = f.readline().rstrip(b"\r\n")
    t, rest = line[:1], line[1:]
    if t in (b"+", b"-"):
        return rest.decode()
    if t == b":":
        return int(rest)
    if t == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        return data.decode("utf-8", "replace")
    if t == b"*":
        n = int(rest)
        return None if n < 0 else [read_resp(f) for _ in range(n)]
    raise AssertionError("unexpected RESP reply %r" % line)


class Memory(KokoTestCase):
    def setUp(self):
        gemini.call("POST", "/_reset")
        openai.call("POST", "/_reset")
        gemini.call("POST", "/_extraction", {"facts": [{"text": FACT, "kind": "preference", "replaces": ""}]})
        self.fake = FakeChatwoot(auto=True).start()
        self.addCleanup(self.fake.stop)

    def start(self, redis=None, tenants=None):
        k = self.kokod(plugin_dirs=PLUGIN_DIRS)
        state = {"dir": k.state_dir}
        if redis:
            state["redis"] = redis.url
        k.write_config(tenants=tenants or {"shop": tenant(self.fake)},
                       extra={"state": state, "log": {"level": "debug"}})
        k.start()
        self.addCleanup(self.stop_clean, k)
        return k

    def stop_clean(self, k):
        if k.alive():
            k.stop(expect=0)
        self.assertNotIn("runtime error:", k.log())

    def send(self, k, payload):
        url = "http://%s:%d/webhook/shop/chatwoot" % (k.host, k.port)
        status, body, _ = send_webhook(url, payload, secret=SECRET)
        self.assertEqual(status, 200, body)

    def wait_reply(self, conv_id, n=1, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = [c for c in self.fake.calls("messages") if c["method"] == "POST"
                   and "/conversations/%d/" % conv_id in c["path"] and not c["body"].get("private")]
            if len(got) >= n:
                return got
            time.sleep(0.05)
        self.fail("conversation %d: no reply" % conv_id)

    def facts(self, k, tenant_name, contact):
        st, _, doc = k.http("GET", "/memory/%s/customers/%s" % (tenant_name, contact))
        self.assertEqual(st, 200, doc)
        return doc["facts"]

    def wait_facts(self, k, contact, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            f = self.facts(k, "shop", contact)
            if f:
                return f
            time.sleep(0.2)
        self.fail("no fact extracted for %s; log:\n%s" % (contact, k.log()[-3000:]))

    @staticmethod
    def answer_prompts():
        """Bodies of gemini's generateContent calls that answered a customer (not extractions)."""
        return [r["body"] for r in gemini.requests("POST", ":generateContent$")
                if "responseSchema" not in (r["body"].get("generationConfig") or {})]

    @staticmethod
    def extraction_calls():
        return [r["body"] for r in gemini.requests("POST", ":generateContent$")
                if "responseSchema" in (r["body"].get("generationConfig") or {})]

    # ---- store scans ----

    def sqlite_dump(self, k):
        """Every cell of every table of kokod's SQLite store, as text."""
        db = sqlite3.connect("file:%s?mode=ro" % os.path.join(k.state_dir, "koko.db"), uri=True)
        try:
            cells = []
            for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                for row in db.execute("SELECT * FROM \"%s\"" % table).fetchall():
                    for v in row:
                        if isinstance(v, bytes):
                            v = v.decode("utf-8", "replace")
                        cells.append(str(v))
            return "\n".join(cells)
        finally:
            db.close()

    def redis_dump(self, redis):
        """Every key of the redis-server with its whole value, as text."""
        s = socket.create_connection(("127.0.0.1", redis.port), timeout=5)
        f = s.makefile("rwb")
        try:
            out = []
            for key in resp(f, "KEYS", "*"):
                kind = resp(f, "TYPE", key)
                if kind == "string":
                    val = resp(f, "GET", key)
                elif kind == "hash":
                    val = resp(f, "HGETALL", key)
                elif kind == "list":
                    val = resp(f, "LRANGE", key, "0", "-1")
                elif kind == "stream":
                    val = resp(f, "XRANGE", key, "-", "+")
                else:
                    val = kind
                out.append("%s = %s" % (key, json.dumps(val, ensure_ascii=False)))
            return "\n".join(out)
        finally:
            f.close()
            s.close()

    # ---- the whole story ----

    def story(self, redis=None):
        k = self.start(redis=redis)
        self.send(k, P.contact_message(CUSTOMER, conv_id=1, contact_id=7))
        self.wait_reply(1)
        self.send(k, P.status_changed(1, "resolved"))
        facts = self.wait_facts(k, "chatwoot:7")
        self.assertEqual([(f["text"], f["kind"], f["source"]) for f in facts], [(FACT, "preference", "chatwoot:1")])
        ex = self.extraction_calls()
        self.assertEqual(len(ex), 1)
        self.assertIn("memory of a customer-support team", json.dumps(ex[0]["systemInstruction"], ensure_ascii=False))
        self.assertIn(CUSTOMER, json.dumps(ex[0]["contents"], ensure_ascii=False))
        self.assertEqual(ex[0]["generationConfig"]["responseMimeType"], "application/json")
        self.assertNotIn("tools", ex[0])

        # a later conversation: the prompt carries the fact
        before = len(self.answer_prompts())
        self.send(k, P.contact_message("Mikor tud jönni a szerelő?", conv_id=2, contact_id=7))
        self.wait_reply(2)
        prompts = self.answer_prompts()[before:]
        self.assertEqual(len(prompts), 1)
        self.assertIn(FACT, json.dumps(prompts[0], ensure_ascii=False))
        self.assertIn("Facts remembered about this customer", json.dumps(prompts[0], ensure_ascii=False))
        # ... and another customer's prompt does not
        self.send(k, P.contact_message("Mikor tud jönni a szerelő?", conv_id=3, contact_id=8))
        self.wait_reply(3)
        self.assertNotIn(FACT, json.dumps(self.answer_prompts()[-1], ensure_ascii=False))

        # export: the fact and both conversations with their turns
        st, _, doc = k.http("GET", "/memory/shop/customers/chatwoot:7/export")
        self.assertEqual(st, 200, doc)
        self.assertEqual([f["text"] for f in doc["facts"]], [FACT])
        convs = {c["conversation_id"]: c for c in doc["conversations"]}
        self.assertEqual(sorted(convs), ["1", "2"])
        self.assertIn(CUSTOMER, [t["text"] for t in convs["1"]["history"]])
        self.assertEqual(convs["1"]["state"]["owner"], "resolved")

        # forget: a receipt, logged by id without the contact
        st, _, receipt = k.http("DELETE", "/memory/shop/forget", {"contact": "chatwoot:7"})
        self.assertEqual(st, 200, receipt)
        self.assertFalse(receipt["nothing_left"])
        self.assertEqual(receipt["deleted"]["facts"], 1)
        self.assertEqual(receipt["deleted"]["conversations"], 2)
        self.assertGreaterEqual(receipt["deleted"]["history_turns"], 4)
        self.assertRegex(receipt["receipt_id"], r"^fgt-\d+-[0-9a-f]{8}$")
        line = [l for l in k.log().splitlines() if receipt["receipt_id"] in l]
        self.assertEqual(len(line), 1, k.log()[-2000:])
        self.assertNotIn("chatwoot:7", line[0])

        # nothing left in the store itself
        dump = self.redis_dump(redis) if redis else self.sqlite_dump(k)
        for needle in ("délután", "chatwoot%3A7", CUSTOMER, "Mikor tud jönni"):
            if needle == "Mikor tud jönni":
                # conversation 3 (contact 8) asked the same: only its own copy may remain
                self.assertLessEqual(dump.count(needle), 2, dump)
                continue
            self.assertNotIn(needle, dump)
        self.assertIn("chatwoot%3A8", dump)  # the other customer is untouched

        # the next prompt for the forgotten customer has no fact
        self.send(k, P.contact_message("Mikor tud jönni a szerelő?", conv_id=4, contact_id=7))
        self.wait_reply(4)
        last = json.dumps(self.answer_prompts()[-1], ensure_ascii=False)
        self.assertNotIn(FACT, last)
        self.assertNotIn(CUSTOMER, last)  # nor the old conversation

        st, _, again = k.http("DELETE", "/memory/shop/forget", {"contact": "chatwoot:7"})
        self.assertEqual(st, 200, again)
        # conversation 4 is new: it is all there is now
        self.assertEqual(again["deleted"]["facts"], 0)
        self.assertEqual(again["deleted"]["conversations"], 1)
        st, _, third = k.http("DELETE", "/memory/shop/forget", {"contact": "chatwoot:7"})
        self.assertTrue(third["nothing_left"], third)
        self.assertTrue(all(v == 0 for v in third["deleted"].values()), third)

    def test_story_embedded(self):
        self.story()

    def test_story_redis(self):
        r = Redis().start()
        self.addCleanup(r.close)
        self.story(redis=r)

    # ---- isolation, by hand, links, extract ----

    def test_tenant_isolation(self):
        k = self.start(tenants={"shop": tenant(self.fake), "other": tenant(self.fake)})
        for t, text in (("shop", "A boltban vásárolt."), ("other", "A másik cégnél ügyfél.")):
            st, _, doc = k.http("POST", "/memory/%s/customers/chatwoot:7" % t, {"facts": [{"text": text}]})
            self.assertEqual(st, 200, doc)
        self.assertEqual([f["text"] for f in self.facts(k, "other", "chatwoot:7")], ["A másik cégnél ügyfél."])
        # glob and separator characters in a contact never widen the key
        for c in ("chatwoot:*", "chatwoot:7%3Afacts", "chatwoot:%2A"):
            self.assertEqual(self.facts(k, "shop", c), [], c)
        st, _, doc = k.http("GET", "/memory/shop/customers/chatwoot:7/export")
        self.assertNotIn("másik", json.dumps(doc, ensure_ascii=False))
        st, _, receipt = k.http("DELETE", "/memory/shop/forget", {"contact": "chatwoot:7"})
        self.assertEqual(receipt["deleted"]["facts"], 1)
        self.assertEqual(self.facts(k, "shop", "chatwoot:7"), [])
        self.assertEqual([f["text"] for f in self.facts(k, "other", "chatwoot:7")], ["A másik cégnél ügyfél."])
        st, _, doc = k.http("GET", "/memory/nosuch/customers/chatwoot:7")
        self.assertEqual(st, 404)
        self.assertIn("unknown tenant", doc["error"])

    def test_by_hand_links_and_bad_input(self):
        k = self.start()
        st, _, doc = k.http("POST", "/memory/shop/customers/chatwoot:7",
                            {"facts": [{"text": FACT, "kind": "preference"},
                                       {"text": "Budapesten lakik.", "expires": "2099-12-31"}]})
        self.assertEqual((st, len(doc["facts"])), (200, 2), doc)
        # the same words again refresh the fact instead of adding one
        st, _, doc = k.http("POST", "/memory/shop/customers/chatwoot:7",
                            {"facts": [{"text": "csak DELUTAN er ra", "kind": "preference"}]})
        self.assertEqual(len(doc["facts"]), 2)
        # link the e-mail address: its facts move over, lookups of it follow the link
        k.http("POST", "/memory/shop/customers/email:anna@example.hu", {"facts": [{"text": "E-mailt kér."}]})
        st, _, doc = k.http("POST", "/memory/shop/customers/chatwoot:7", {"link": ["email:anna@example.hu"]})
        self.assertEqual(st, 200, doc)
        self.assertEqual(doc["aliases"], ["email:anna@example.hu"])
        st, _, via = k.http("GET", "/memory/shop/customers/email:anna@example.hu")
        self.assertEqual(via["canonical"], "chatwoot:7")
        self.assertEqual(len(via["facts"]), 3)
        # delete one fact by id
        fid = [f["id"] for f in via["facts"] if f["text"] == "Budapesten lakik."][0]
        st, _, doc = k.http("POST", "/memory/shop/customers/email:anna@example.hu", {"delete": [fid]})
        self.assertEqual(len(doc["facts"]), 2)
        # a forget of the linked key forgets the person
        st, _, r = k.http("DELETE", "/memory/shop/forget", {"contact": "email:anna@example.hu"})
        self.assertEqual((r["deleted"]["facts"], r["deleted"]["linked_contacts"]), (2, 1), r)
        self.assertEqual(self.facts(k, "shop", "chatwoot:7"), [])
        # bad input: precise 400s
        cases = [
            ("POST", "/memory/shop/customers/17", {"facts": [{"text": "x"}]}, "CHANNEL:ID"),
            ("POST", "/memory/shop/customers/chatwoot:7", {"facts": [{"text": ""}]}, "facts[0]: a fact's \"text\" is empty"),
            ("POST", "/memory/shop/customers/chatwoot:7", {"facts": [{"text": "x", "kind": "rumour"}]}, "one of preference"),
            ("POST", "/memory/shop/customers/chatwoot:7", {"fact": []}, "unknown key \"fact\""),
            ("POST", "/memory/shop/customers/chatwoot:7", {"link": ["nope"]}, "link[0]"),
            ("DELETE", "/memory/shop/forget", {}, "\"contact\" is required"),
            ("POST", "/memory/shop/extract", {}, "either \"conversation_id\""),
        ]
        for method, path, body, want in cases:
            st, _, doc = k.http(method, path, body)
            self.assertEqual(st, 400, (path, body, doc))
            self.assertIn(want, doc["error"], (path, body))
        st, _, doc = k.http("GET", "/memory/shop/forget")
        self.assertEqual(st, 405)
        st, _, doc = k.http("POST", "/memory/shop/customers/chatwoot:7", "{not json",
                            headers={"Content-Type": "application/json"})
        self.assertEqual(st, 400)
        self.assertIn("invalid JSON", doc["error"])

    def test_extract_transcript_with_openai(self):
        openai.call("POST", "/_extraction", {"facts": [{"text": "Vaillant kazánja van.", "kind": "fact",
                                                        "replaces": ""}]})
        k = self.start(tenants={"shop": tenant(self.fake, chain=("openai", "fallback"))})
        st, _, doc = k.http("POST", "/memory/shop/extract",
                            {"transcript": [{"role": "user", "text": "Vaillant kazánom van, nem fűt."}],
                             "contact": "email:bela@example.hu"})
        self.assertEqual(st, 200, doc)
        self.assertEqual((doc["stored"], doc["backend"]), (1, "openai"))
        self.assertEqual([f["text"] for f in self.facts(k, "shop", "email:bela@example.hu")], ["Vaillant kazánja van."])
        call = [r["body"] for r in openai.requests("POST", "chat/completions")][-1]
        schema = call["response_format"]["json_schema"]["schema"]
        self.assertIs(schema["additionalProperties"], False)  # strict mode: every object closed
        self.assertIs(schema["properties"]["facts"]["items"]["additionalProperties"], False)
        self.assertNotIn("tools", call)

    def test_failed_extraction_stays_queued(self):
        gemini.call("POST", "/_faults", {"path_regex": "generateContent", "count": 100, "status": 503})
        k = self.start(tenants={"shop": tenant(self.fake, chain=("gemini",))})
        st, _, _ = k.http("POST", "/memory/shop/customers/chatwoot:9", {"facts": [{"text": "Régi ügyfél."}]})
        self.send(k, P.contact_message(CUSTOMER, conv_id=5, contact_id=9))
        time.sleep(0.5)
        self.send(k, P.status_changed(5, "resolved"))
        k.wait_log(r"extraction of chatwoot:5 failed \(attempt 1\)", timeout=15)
        st, _, summary = k.http("GET", "/memory/shop")
        self.assertEqual(summary["counts"]["pending_extractions"], 1, summary)
        st, _, doc = k.http("GET", "/memory/shop/customers/chatwoot:9/export")
        jobs = doc["pending_extractions"]
        self.assertEqual(len(jobs), 1, doc)
        self.assertEqual(jobs[0]["attempts"], 1)
        self.assertIn("503", jobs[0]["error"])
        # it survives a restart and can be run by hand once gemini is back
        k.stop(expect=0)
        gemini.call("POST", "/_reset")
        gemini.call("POST", "/_extraction", {"facts": [{"text": FACT, "kind": "preference", "replaces": ""}]})
        k.start()
        st, _, doc = k.http("POST", "/memory/shop/extract", {"conversation_id": 5, "channel": "chatwoot"})
        self.assertEqual(st, 200, doc)
        self.assertEqual((doc["contact"], doc["stored"]), ("chatwoot:9", 1))
        self.assertEqual(sorted(f["text"] for f in self.facts(k, "shop", "chatwoot:9")), sorted([FACT, "Régi ügyfél."]))

    def test_kokoctl_memory(self):
        k = self.start()
        k.http("POST", "/memory/shop/customers/chatwoot:7", {"facts": [{"text": FACT, "kind": "preference"}]})
        rc, out, err = k.kokoctl("memory", "show", "shop", "chatwoot:7")
        self.assertEqual(rc, 0, err)
        self.assertIn(FACT, out)
        self.assertIn("preference", out)
        rc, out, err = k.kokoctl("memory", "show", "shop")
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"customers\s+1")
        rc, out, err = k.kokoctl("memory", "export", "shop", "chatwoot:7")
        self.assertEqual(rc, 0, err)
        self.assertEqual(json.loads(out)["facts"][0]["text"], FACT)
        rc, out, err = k.kokoctl("memory", "forget", "shop", "chatwoot:7")
        self.assertEqual(rc, 2)
        self.assertIn("--yes", err)
        self.assertEqual(len(self.facts(k, "shop", "chatwoot:7")), 1)
        rc, out, err = k.kokoctl("memory", "forget", "shop", "chatwoot:7", "--yes")
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"receipt\s+fgt-")
        self.assertRegex(out, r"deleted\s+facts\s+1")
        rc, out, err = k.kokoctl("memory", "forget", "shop", "chatwoot:7", "--yes")
        self.assertIn("nothing was stored", out)
        rc, out, err = k.kokoctl("memory", "show", "nosuch", "chatwoot:7")
        self.assertEqual(rc, 1)
        self.assertIn("unknown tenant", err)
        rc, out, err = k.kokoctl("memory", "show", "shop", "seventeen")
        self.assertEqual(rc, 1)
        self.assertIn("CHANNEL:ID", err)


if __name__ == "__main__":
    main()
