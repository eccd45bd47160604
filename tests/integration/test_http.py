"""
test_http.py — kokod's HTTP API end to end: /health, errors (404, 405, 401,
413, 400), /api/chat answered by the fallback backend in Hungarian and
English, keep-alive and close as the client asked (HTTP/1.0 and 1.1), /query's legacy shape, /projects, /stats, /metrics, conversation
language carry-over, and the refusal to listen on 0.0.0.0 without a token.
"""
import json
import os
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Kokod, KokoTestCase, demo_tenant  # noqa: E402

HU_QUESTION = "Mikor van nyitva a műhely?"
EN_QUESTION = "How much is the call-out fee in Budapest?"


class HttpApi(KokoTestCase):
    """One kokod (demo tenant, max_body 2048) shared by the tests of this class."""

    @classmethod
    def setUpClass(cls):
        cls.k = Kokod(server={"max_body": 2048}, shared=True)
        try:
            cls.k.start()
        except Exception:
            cls.k.close()
            raise

    @classmethod
    def tearDownClass(cls):
        try:
            cls.k.stop(expect=0)
        finally:
            cls.k.close()

    def post_chat(self, body, content_type="application/json"):
        headers = {"Content-Type": content_type} if content_type else {}
        if not isinstance(body, (str, bytes)):
            body = json.dumps(body)
        return self.k.http("POST", "/api/chat", body, headers=headers)

    def assertJsonError(self, status, doc, want_status, pattern=None):
        self.assertEqual(status, want_status, doc)
        self.assertIsInstance(doc, dict, "error body is not JSON: %r" % (doc,))
        self.assertIsInstance(doc.get("error"), str, doc)
        self.assertTrue(doc["error"], doc)
        if pattern:
            self.assertRegex(doc["error"], pattern)

    def test_health_shape(self):
        st, h, doc = self.k.http("GET", "/health")
        self.assertEqual(st, 200)
        self.assertTrue(h["content-type"].startswith("application/json"))
        self.assertEqual(doc["status"], "ok")
        self.assertIsInstance(doc["version"], str)
        self.assertRegex(doc["version"], r"^\d+\.\d+")
        self.assertIsInstance(doc["generation"], int)
        self.assertGreaterEqual(doc["generation"], 1)
        self.assertIsInstance(doc["uptime_s"], int)
        self.assertGreaterEqual(doc["uptime_s"], 0)
        self.assertEqual(doc["plugins"], ["fallback"])

    def test_health_escapes_the_store_reason(self):
        """/health is formatted without a JSON library: a state folder whose name holds a
        quote, a backslash and a non-ASCII letter still gives valid JSON, and the same
        store section as `kokoctl status` (built with one)."""
        k = Kokod()
        k.state_dir = os.path.join(k.dir, 'st"a\\te-é')
        k.write_config()
        k.start()
        try:
            st, _, doc = k.http("GET", "/health")
            self.assertEqual(st, 200)
            self.assertIn(k.state_dir, doc["store"]["reason"])
            self.assertIs(doc["store"]["healthy"], True)
            self.assertEqual(sorted(doc["store"]["queue"]), ["age_ms", "dead", "pending", "spool"])
            rc, out, err = k.kokoctl("--json", "status")
            self.assertEqual(rc, 0, err)
            status = json.loads(out)
            self.assertEqual(sorted(status["store"]), sorted(doc["store"]))
            self.assertEqual(status["store"]["backend"], doc["store"]["backend"])
        finally:
            k.stop(expect=0)
            k.close()

    def test_head_health(self):
        st, h, body = self.k.http("HEAD", "/health")
        self.assertEqual(st, 200)
        self.assertEqual(body, "")

    def test_unknown_path_404(self):
        st, h, doc = self.k.http("GET", "/no/such/thing")
        self.assertJsonError(st, doc, 404, r"no such path: /no/such/thing")
        self.assertTrue(h["content-type"].startswith("application/json"))

    def test_405_with_allow(self):
        st, h, doc = self.k.http("POST", "/health", "{}", {"Content-Type": "application/json"})
        self.assertJsonError(st, doc, 405, r"POST not allowed")
        self.assertEqual(h.get("allow"), "GET, HEAD")
        st, h, doc = self.k.http("GET", "/api/chat")
        self.assertJsonError(st, doc, 405)
        self.assertEqual(h.get("allow"), "POST")
        st, h, doc = self.k.http("DELETE", "/projects")
        self.assertJsonError(st, doc, 405)
        self.assertEqual(h.get("allow"), "GET, HEAD")

    def test_413_body_over_max_body(self):
        big = '{"tenant":"demo","message":"' + "a" * 3000 + '"}'
        st, h, doc = self.post_chat(big)
        self.assertJsonError(st, doc, 413, r"max_body \(2048\)")
        # just under the limit is accepted (and answered)
        ok = '{"tenant":"demo","message":"' + "szia " * 300 + '"}'
        self.assertLess(len(ok), 2048)
        st, h, doc = self.post_chat(ok)
        self.assertEqual(st, 200, doc)
        self.assertIn("reply", doc)

    def test_chat_invalid_json(self):
        st, _, doc = self.post_chat('{"tenant": "demo", "message": ')
        self.assertJsonError(st, doc, 400, r"invalid JSON")
        st, _, doc = self.post_chat('["demo", "hello"]')
        self.assertJsonError(st, doc, 400, r"JSON object")

    def test_chat_wrong_content_type(self):
        st, _, doc = self.post_chat({"tenant": "demo", "message": "hello"}, content_type="text/plain")
        self.assertJsonError(st, doc, 400, r"application/json")
        st, _, doc = self.post_chat({"tenant": "demo", "message": "hello"}, content_type=None)
        self.assertJsonError(st, doc, 400, r"application/json")
        st, _, doc = self.post_chat({"tenant": "demo", "message": HU_QUESTION},
                                    content_type="application/json; charset=utf-8")
        self.assertEqual(st, 200, doc)

    def test_chat_missing_and_unknown_tenant(self):
        st, _, doc = self.post_chat({"message": "hello"})
        self.assertJsonError(st, doc, 400, r'"tenant" is required')
        st, _, doc = self.post_chat({"tenant": 7, "message": "hello"})
        self.assertJsonError(st, doc, 400, r'"tenant"')
        st, _, doc = self.post_chat({"tenant": "nosuch", "message": "hello"})
        self.assertJsonError(st, doc, 404, r'unknown tenant "nosuch"')

    def test_chat_bad_message(self):
        for body, pat in (({"tenant": "demo"}, r'"message" is required'),
                          ({"tenant": "demo", "message": ""}, r'"message" is empty'),
                          ({"tenant": "demo", "message": "  \n\t "}, r'"message" is empty'),
                          ({"tenant": "demo", "message": 42}, r'"message"'),
                          ({"tenant": "demo", "message": ["hi"]}, r'"message"'),
                          ({"tenant": "demo", "message": None}, r'"message"')):
            st, _, doc = self.post_chat(body)
            self.assertJsonError(st, doc, 400, pat)

    def check_answer(self, doc, lang, kb_file_lang):
        self.assertEqual(doc["language"], lang, doc)
        self.assertEqual(doc["backend"], "fallback", doc)
        self.assertEqual(doc["route"], "default", doc)
        self.assertFalse(doc["handoff"], doc)
        self.assertIsInstance(doc["reply"], str)
        self.assertTrue(doc["reply"].strip())
        self.assertGreater(doc["confidence"], 0.2)
        self.assertTrue(doc["sources"], doc)
        src = doc["sources"][0]
        self.assertRegex(src["file"], r"^kb/demo/.*\.%s\.md$" % kb_file_lang)
        self.assertIsInstance(src["heading"], str)
        self.assertGreater(src["score"], 0)
        self.assertIsInstance(doc["latency_ms"], (int, float))

    def test_chat_hungarian(self):
        doc = self.k.chat("demo", HU_QUESTION)
        self.check_answer(doc, "hu", "hu")
        self.assertEqual(doc["sources"][0]["file"], "kb/demo/hours.hu.md")
        self.assertIn("9:00", doc["reply"])
        self.assertIn("Forrás", doc["reply"])

    def test_chat_english(self):
        doc = self.k.chat("demo", EN_QUESTION)
        self.check_answer(doc, "en", "en")
        self.assertEqual(doc["sources"][0]["file"], "kb/demo/pricing.en.md")
        self.assertIn("9,900", doc["reply"])
        self.assertIn("Source", doc["reply"])

    def raw_chat(self, sock, version, connection):
        """One POST /api/chat on SOCK with HTTP/VERSION and a Connection header
        (None: none); returns (status line, headers dict, body) or None when
        the server had closed the connection."""
        body = json.dumps({"tenant": "demo", "message": EN_QUESTION}).encode()
        head = "POST /api/chat HTTP/%s\r\nHost: x\r\nContent-Type: application/json\r\n" % version
        head += "Content-Length: %d\r\nX-Extra: %s\r\n" % (len(body), "x" * 200)
        if connection:
            head += "Connection: %s\r\n" % connection
        try:
            sock.sendall(head.encode() + b"\r\n" + body)
        except OSError:
            return None
        f = sock.makefile("rb")
        status = f.readline().decode()
        if not status:
            return None
        headers = {}
        while True:
            line = f.readline().decode().strip()
            if not line:
                break
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
        # HTTP/1.0 without keep-alive: the body ends where the connection does
        data = f.read(int(headers["content-length"])) if "content-length" in headers else f.read()
        try:
            return status, headers, json.loads(data)
        except ValueError:
            self.fail("not a JSON answer: %r %r %r" % (status, headers, data))

    def test_chat_keep_alive_after_the_request_is_shed(self):
        # /api/chat drops its request headers while the model answers (all but
        # Connection): keep-alive and close must still work as the client asked
        import socket
        for version, connection, stays_open in (("1.1", None, True), ("1.0", "keep-alive", True),
                                                ("1.1", "close", False), ("1.0", None, False)):
            with socket.create_connection((self.k.host, self.k.port), timeout=10) as sock:
                first = self.raw_chat(sock, version, connection)
                self.assertIsNotNone(first, (version, connection))
                self.assertIn(" 200 ", first[0], (version, connection, first))
                self.check_answer(first[2], "en", "en")
                if connection == "keep-alive":
                    self.assertEqual(first[1].get("connection", "").lower(), "keep-alive", first[1])
                second = self.raw_chat(sock, version, connection)
                if stays_open:
                    self.assertIsNotNone(second, "kokod closed a %s connection (%s)" % (version, connection))
                    self.assertIn(" 200 ", second[0], second)
                else:
                    self.assertIsNone(second, "kokod kept a %s connection open (%s)" % (version, connection))

    def test_chat_complaint_route_hands_off(self):
        doc = self.k.chat("demo", "I want a refund for the broken washing machine")
        self.assertEqual(doc["route"], "complaints", doc)
        self.assertTrue(doc["handoff"], doc)
        self.assertIn("handoff_reason", doc)

    def test_query_legacy_shape(self):
        st, _, doc = self.k.http("POST", "/query", {"project_id": "demo", "query": HU_QUESTION})
        self.assertEqual(st, 200, doc)
        self.assertEqual(doc["project_id"], "demo")
        self.assertEqual(doc["response"], doc["reply"])
        self.assertEqual(doc["language"], "hu")
        self.assertTrue(doc["sources"])
        st, _, doc = self.k.http("POST", "/query", {"project_id": "nosuch", "query": "x"})
        self.assertJsonError(st, doc, 404, r'unknown tenant "nosuch"')
        st, _, doc = self.k.http("POST", "/query", {"project_id": "demo"})
        self.assertJsonError(st, doc, 400, r'"query"')

    def test_projects(self):
        st, _, doc = self.k.http("GET", "/projects")
        self.assertEqual(st, 200, doc)
        projects = {p["name"]: p for p in doc["projects"]}
        self.assertEqual(list(projects), ["demo"])
        demo = projects["demo"]
        self.assertEqual(demo["languages"], ["hu", "en"])
        self.assertEqual(demo["llm"], ["fallback"])
        self.assertGreater(demo["kb"]["chunks"], 20)
        kb_files = len([f for d in ("kb/_global", "kb/demo")
                        for f in os.listdir(os.path.join(harness.SRCDIR, d)) if f.endswith(".md")])
        self.assertEqual(demo["kb"]["files"], kb_files)
        self.assertEqual(demo["routes"], 1)

    def test_stats_counts_queries(self):
        st, _, before = self.k.http("GET", "/stats")
        self.assertEqual(st, 200, before)
        for key in ("total_queries", "total_tokens", "estimated_cost_usd", "cache_hit_rate", "avg_response_time_ms"):
            self.assertIn(key, before)
            self.assertIsInstance(before[key], (int, float), key)
        self.k.chat("demo", HU_QUESTION)
        self.k.chat("demo", EN_QUESTION)
        self.k.http("POST", "/query", {"project_id": "demo", "query": "nyitvatartás"})
        st, _, after = self.k.http("GET", "/stats")
        self.assertEqual(after["total_queries"] - before["total_queries"], 3, (before, after))
        self.assertEqual(after["tenants"]["demo"]["total_queries"], after["total_queries"])
        self.assertGreater(after["avg_response_time_ms"], 0)
        self.assertEqual(after["total_tokens"], 0)  # the fallback uses no model
        # rejected requests are not queries
        self.post_chat({"tenant": "demo", "message": ""})
        st, _, again = self.k.http("GET", "/stats")
        self.assertEqual(again["total_queries"], after["total_queries"])

    def test_metrics_prometheus(self):
        self.k.chat("demo", HU_QUESTION)
        st, h, text = self.k.http("GET", "/metrics")
        self.assertEqual(st, 200)
        self.assertTrue(h["content-type"].startswith("text/plain"), h)
        self.assertIsInstance(text, str)
        self.assertIn("# TYPE koko_up gauge", text)
        self.assertRegex(text, r"(?m)^koko_up 1$")
        self.assertRegex(text, r"(?m)^koko_generation \d+$")
        self.assertRegex(text, r'(?m)^koko_events_total\{tenant="demo",event="queries"\} [1-9]')
        # every non-comment line is "name{labels} value"
        for line in text.splitlines():
            if line and not line.startswith("#"):
                self.assertRegex(line, r'^[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? -?[0-9.e+-]+$')

    def test_conversation_keeps_language(self):
        doc = self.k.chat("demo", HU_QUESTION, conversation_id="conv-hu")
        self.assertEqual(doc["language"], "hu")
        doc = self.k.chat("demo", "Szia!", conversation_id="conv-hu")
        self.assertEqual(doc["language"], "hu", doc)
        doc = self.k.chat("demo", EN_QUESTION, conversation_id="conv-en")
        self.assertEqual(doc["language"], "en")
        doc = self.k.chat("demo", "Szia!", conversation_id="conv-en")
        self.assertEqual(doc["language"], "en", doc)
        # numeric ids are accepted as well
        doc = self.k.chat("demo", EN_QUESTION, conversation_id=4711)
        doc = self.k.chat("demo", "Szia!", conversation_id=4711)
        self.assertEqual(doc["language"], "en", doc)
        st, _, doc = self.post_chat({"tenant": "demo", "message": "x", "conversation_id": {"a": 1}})
        self.assertJsonError(st, doc, 400, r"conversation_id")


    def test_many_conversations(self):
        # past 1,024 conversations the in-memory table doubles (rehashing every
        # chain): the early ones still carry their language (run under ASan too)
        for i in range(1100):
            self.k.chat("demo", HU_QUESTION if i % 2 else EN_QUESTION, conversation_id="many-%d" % i)
        for i in range(0, 40, 3):
            doc = self.k.chat("demo", "Szia!", conversation_id="many-%d" % i)
            self.assertEqual(doc["language"], "hu" if i % 2 else "en", (i, doc))

class BearerToken(KokoTestCase):
    TOKEN = "s3cret-token-for-tests"

    def test_token_required(self):
        k = self.started(server={"api_token": self.TOKEN})
        good = {"Authorization": "Bearer " + self.TOKEN}
        bad = {"Authorization": "Bearer wrong-token"}
        chat = {"tenant": "demo", "message": HU_QUESTION}
        for method, path, body in (("POST", "/api/chat", chat), ("GET", "/projects", None),
                                   ("GET", "/stats", None), ("GET", "/metrics", None)):
            for hdrs in ({}, bad, {"Authorization": self.TOKEN}, {"Authorization": "Basic " + self.TOKEN}):
                st, h, doc = k.http(method, path, body, headers=hdrs)
                self.assertEqual(st, 401, (path, hdrs, doc))
                self.assertIn("bearer token", doc["error"])
                self.assertIn("bearer", h.get("www-authenticate", "").lower())
            st, h, doc = k.http(method, path, body, headers=good)
            self.assertEqual(st, 200, (path, doc))
        st, _, doc = k.http("POST", "/api/chat", chat, headers=good)
        self.assertEqual(doc["language"], "hu")
        # no token needed for /health and webhooks
        st, _, doc = k.http("GET", "/health")
        self.assertEqual(st, 200, doc)
        st, _, doc = k.http("POST", "/webhook/demo/testchan", {"id": "1", "conversation": "c", "text": "hi"})
        self.assertNotEqual(st, 401, doc)
        self.assertEqual(st, 404, doc)  # demo has no channel: the webhook itself answers, not the auth
        self.assertIn("no webhook", doc["error"])
        k.stop()


class ListenSafety(KokoTestCase):
    def test_refuses_public_listen_without_token(self):
        k = self.kokod(server={"listen": "0.0.0.0:0"})
        k.spawn()
        rc = k.wait_exit(timeout=15)
        self.assertEqual(rc, 1, k.log())
        log = k.log()
        self.assertIn("server.listen", log)
        self.assertIn("api_token", log)
        self.assertIn("refusing to listen on 0.0.0.0", log)
        self.assertNotIn("listening on", log)
        self.assertFalse(os.path.exists(k.socket))

    def test_public_listen_with_token_starts(self):
        k = self.started(server={"listen": "0.0.0.0:0", "api_token": "tok"})
        self.assertEqual(k.host, "0.0.0.0")
        k.host = "127.0.0.1"
        self.assertEqual(k.health()["status"], "ok")
        k.stop()


if __name__ == "__main__":
    harness.main()
