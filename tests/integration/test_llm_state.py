"""
test_llm_state.py — LLM plugin state in the store (host kv_*, ABI 1.3), with
the real kokod against tests/fakes/fake_gemini.py:
  - a restarted kokod reuses the Gemini context cache it created (its handle
    is in the SQLite store), no second cachedContents.create;
  - two kokod replicas on one redis-server create one cache between them;
  - the gemini rate limit (120 requests/min counted in 3 s windows = 6 per
    window) is one budget for two replicas: of 10 questions sent at once, 6
    reach the API in the first window, the other 4 wait for the next one —
    none fails.
The Redis cases need redis-server (setup.sh installs it); without it they fail.
"""
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import main  # noqa: E402
from test_llm import Fake, KEY, LlmCase, gemini_cfg, tenant  # noqa: E402
import test_llm  # noqa: E402

REDIS = shutil.which("redis-server") or "redis-server"  # not found: the Redis cases fail (setup.sh installs it)


def setUpModule():
    test_llm.setUpModule()


def tearDownModule():
    test_llm.tearDownModule()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Redis:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="koko-redis-")
        self.port = free_port()
        self.proc = subprocess.Popen([REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                                      "--save", "", "--appendonly", "no"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start on port %d" % self.port)

    def close(self):
        self.proc.kill()
        self.proc.wait(timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def url(self):
        return "redis://127.0.0.1:%d/0" % self.port


def creates():
    return len(test_llm.gemini.requests("POST", r"^/v1beta/cachedContents$"))


class StateCase(LlmCase):
    def replicas(self, n, t):
        r = Redis()
        self.addCleanup(r.close)
        ks = []
        for _ in range(n):
            d = tempfile.mkdtemp(prefix="koko-replica-")
            self.addCleanup(shutil.rmtree, d, True)
            ks.append(self.start(t, extra={"state": {"dir": d, "redis": r.url}}))
        return ks

    def ask_all(self, ks, n):
        answers, errors = [], []

        def one(k, i):
            try:
                answers.append(k.chat("demo", "Question %d about the delivery?" % i, language="en"))
            except Exception as e:  # noqa: BLE001 — reported below
                errors.append(e)

        th = [threading.Thread(target=one, args=(ks[i % len(ks)], i)) for i in range(n)]
        for t in th:
            t.start()
        for t in th:
            t.join(60)
        self.assertEqual(errors, [])
        return answers


class CacheInStore(StateCase):
    def test_restart_reuses_the_cache(self):
        k = self.start()
        a = k.chat("demo", "When do you deliver?", language="en")
        self.assertEqual(a["backend"], "gemini", a)
        self.assertEqual(creates(), 1)
        name = self.caches(k)[0]["name"]
        k.stop()
        k.start()
        a = k.chat("demo", "When do you deliver again?", language="en")
        self.assertEqual(a["backend"], "gemini", a)
        self.assertEqual(creates(), 1, "a restarted kokod created the cache again")
        gens = test_llm.gemini.requests("POST", ":generateContent$")
        self.assertEqual(gens[-1]["body"]["cachedContent"], name)
        self.assertIn("reusing context cache %s from the store" % name, k.log())
        c = self.caches(k)
        self.assertEqual(c[0]["name"], name)
        self.assertEqual(c[0]["hits"], 2)  # both runs: the totals are in the store
        self.assertEqual(c[0]["hits_here"], 1)

    def test_two_replicas_one_create(self):
        ks = self.replicas(2, tenant())
        answers = self.ask_all(ks, 12)
        self.assertEqual(len(answers), 12)
        self.assertTrue(all(a["backend"] == "gemini" for a in answers), answers)
        self.assertEqual(creates(), 1, "two replicas created %d caches" % creates())
        time.sleep(2.2)  # the replica that lost the lock looks in the store again
        for k in ks:
            k.chat("demo", "And on Sunday?", language="en")
        self.assertEqual(creates(), 1)
        names = {self.caches(k)[0]["name"] for k in ks}
        self.assertEqual(len(names), 1, names)


class RateInStore(StateCase):
    def test_two_replicas_share_one_budget(self):
        window = 3.0
        t = tenant(gem=gemini_cfg(rate={"requests_per_min": 120, "window_ms": int(window * 1000)},
                                  cache={"enabled": False}))
        ks = self.replicas(2, t)
        while (time.time() % window) > 0.2:  # start just after a window boundary (kokod aligns on the clock)
            time.sleep(0.01)
        t0 = time.time()
        answers = self.ask_all(ks, 10)
        self.assertEqual(len(answers), 10)  # queued, never refused
        self.assertTrue(all(a["backend"] == "gemini" for a in answers), answers)
        times = sorted(r["time"] for r in test_llm.gemini.requests("POST", ":generateContent$"))
        self.assertEqual(len(times), 10)
        first = [x for x in times if x - t0 < window - 0.5]
        self.assertEqual(len(first), 6, "requests in the first window: %r" % [round(x - t0, 2) for x in times])
        self.assertTrue(all(x - t0 >= window - 0.5 for x in times[6:]))


if __name__ == "__main__":
    main()
