"""
test_reload.py — generations under change: SIGHUP, a knowledge-base edit,
a plugin .so added, replaced and removed, unchanged instances carried over,
and the reload storm (50 reloads, good and bad, while clients keep asking).
"""
import os
import shutil
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import KokoTestCase, demo_tenant, echo_tenant  # noqa: E402

ECHO_V1 = os.path.join(harness.TEST_PLUGINS, "echo.so")
ECHO_V2 = os.path.join(harness.V2_PLUGINS, "echo.so")

NEW_KB_TEXT = ("Parrots are welcome in the workshop on Tuesdays; the parrot must stay in its cage "
               "while the technicians test the appliance.")


def copy_so(src, dst):
    """Replace DST with SRC's bytes the way an installer would (new file, then rename)."""
    tmp = dst + ".new"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def wait_alive(k, want, timeout=10.0):
    """Poll /health until generations_alive == WANT; returns the last /health."""
    deadline = time.monotonic() + timeout
    while True:
        h = k.health()
        if h["generations_alive"] == want or time.monotonic() >= deadline:
            return h
        time.sleep(0.05)


class Reload(KokoTestCase):
    def test_sighup(self):
        k = self.started()
        self.assertEqual(k.health()["generation"], 1)
        h = k.sighup(expect_generation=2)
        self.assertEqual(h["reloads"]["ok"], 1)
        k.wait_log(r"SIGHUP: reloading ")
        k.wait_log(r"reloaded: generation 2 serving .*\"kept\":1")
        self.assertEqual(wait_alive(k, 1)["generations_alive"], 1)
        self.assertEqual(k.chat("demo", "Mikor van nyitva a műhely?")["language"], "hu")
        k.sighup(expect_generation=3)
        k.stop()

    def test_state_change_needs_a_restart(self):
        """The store is opened at start: a reload naming another one is applied otherwise and says so."""
        k = self.started()
        old_db = os.path.join(k.state_dir, "koko.db")
        k.write_config(extra={"state": {"dir": k.path("state2"), "synchronous": "full"}})
        code, out, err = k.kokoctl("reload")
        self.assertEqual(code, 0, err)
        k.wait_log(r"state: changed: the store stays sqlite .*koko\.db until kokod restarts")
        self.assertTrue(os.path.exists(old_db))
        self.assertFalse(os.path.exists(k.path("state2", "koko.db")))
        self.assertEqual(k.chat("demo", "Mikor van nyitva a műhely?")["language"], "hu")
        k.stop()
        k.start()  # after the restart the new store is used
        self.assertTrue(os.path.exists(k.path("state2", "koko.db")))
        k.stop()

    def test_kb_edit_picked_up(self):
        k = self.kokod()
        kb = k.path("kb")
        shutil.copytree(os.path.join(harness.SRCDIR, "kb", "demo"), kb)
        k.write_config(tenants={"demo": demo_tenant(kb=[kb])})
        k.start()
        question = "Are parrots welcome in the workshop on Tuesdays?"
        before = k.chat("demo", question)
        self.assertNotIn("Parrots are welcome", before["reply"])
        with open(os.path.join(kb, "hours.en.md"), "a", encoding="utf-8") as f:
            f.write("\n## Parrots\n\n" + NEW_KB_TEXT + "\n")
        # without a reload, the old index answers
        self.assertNotIn("Parrots are welcome", k.chat("demo", question)["reply"])
        rc, doc, err = k.reload()
        self.assertEqual(rc, 0, err)
        self.assertEqual(doc["tenants"]["changed"], ["demo"], doc)
        after = k.chat("demo", question)
        self.assertIn("Parrots are welcome in the workshop on Tuesdays", after["reply"], after)
        self.assertEqual(after["language"], "en")
        self.assertTrue(after["sources"][0]["file"].endswith("hours.en.md"), after["sources"])
        self.assertIn("Parrots", after["sources"][0]["heading"])
        k.stop()

    def test_plugin_added_replaced_removed(self):
        k = self.kokod(plugin_dirs=[])
        plugdir = k.path("plugins")
        os.mkdir(plugdir)
        k.plugin_dirs = [plugdir, harness.FALLBACK_DIR]
        k.start()
        self.assertEqual(k.health()["plugins"], ["fallback"])

        # a tenant using echo before echo.so exists: refused
        k.write_config(tenants={"demo": demo_tenant(), "shop": echo_tenant()})
        rc, doc, err = k.reload()
        self.assertEqual(rc, 1, doc)
        self.assertIn('unknown plugin "echo"', "\n".join(doc["errors"]))
        self.assertEqual(k.health()["generation"], 1)

        # added
        copy_so(ECHO_V1, os.path.join(plugdir, "echo.so"))
        rc, doc, err = k.reload()
        self.assertEqual(rc, 0, err)
        self.assertEqual(doc["generation"], 2)
        self.assertEqual(doc["tenants"]["added"], ["shop"])
        self.assertEqual([p["name"] for p in doc["plugins"]["loaded"]], ["echo"])
        self.assertEqual(doc["instances"], {"kept": 1, "new": 1})
        self.assertEqual(k.chat("shop", "hello there")["reply"], "echo[v1]: hello there")
        self.assertEqual(k.chat("demo", "Mikor van nyitva a műhely?")["backend"], "fallback")
        v1_hash = doc["plugins"]["loaded"][0]["hash"]

        # an unchanged reload keeps both instances
        rc, doc, err = k.reload()
        self.assertEqual(rc, 0, err)
        self.assertEqual(doc["instances"], {"kept": 2, "new": 0})
        self.assertEqual(doc["plugins"], {"loaded": [], "unloaded": []})
        self.assertEqual(doc["tenants"], {"added": [], "removed": [], "changed": []})

        # replaced: same name, different bytes
        copy_so(ECHO_V2, os.path.join(plugdir, "echo.so"))
        rc, doc, err = k.reload()
        self.assertEqual(rc, 0, err)
        self.assertEqual([p["name"] for p in doc["plugins"]["loaded"]], ["echo"])
        self.assertEqual([p["name"] for p in doc["plugins"]["unloaded"]], ["echo"])
        self.assertNotEqual(doc["plugins"]["loaded"][0]["hash"], v1_hash)
        self.assertEqual(doc["instances"], {"kept": 1, "new": 1})
        self.assertEqual(k.chat("shop", "hello there")["reply"], "echo[v2]: hello there")
        plugins = {p["name"]: p for p in k.kokoctl_json("plugins")}
        self.assertEqual(plugins["echo"]["version"], "v2")

        # the text form names the kept instance
        rc, out, err = k.kokoctl("reload")
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"(?m)^  instances:\s+2 kept, 0 new$")

        # removed: no tenant uses it, the file goes away
        k.write_config(tenants={"demo": demo_tenant()})
        os.unlink(os.path.join(plugdir, "echo.so"))
        rc, doc, err = k.reload()
        self.assertEqual(rc, 0, err)
        self.assertEqual(doc["tenants"]["removed"], ["shop"])
        self.assertEqual([p["name"] for p in doc["plugins"]["unloaded"]], ["echo"])
        self.assertEqual(doc["instances"], {"kept": 1, "new": 0})
        self.assertEqual(k.health()["plugins"], ["fallback"])
        st, _, body = k.http("POST", "/api/chat", {"tenant": "shop", "message": "hello"})
        self.assertEqual(st, 404, body)
        self.assertEqual(wait_alive(k, 1)["generations_alive"], 1)
        k.stop()

    def test_reload_storm(self):
        """50 reloads (good, bad, .so added/replaced/removed) under 2 busy clients: no request fails."""
        k = self.kokod(plugin_dirs=[])
        plugdir = k.path("plugins")
        os.mkdir(plugdir)
        k.plugin_dirs = [plugdir, harness.FALLBACK_DIR]
        copy_so(ECHO_V1, os.path.join(plugdir, "echo.so"))
        good_a = {"demo": demo_tenant(), "shop": echo_tenant()}
        k.write_config(tenants=good_a)
        k.start()

        stop = threading.Event()
        failures = []
        counts = {"chat": 0, "health": 0}
        lock = threading.Lock()

        def client(tenant, message, check):
            while not stop.is_set():
                try:
                    st, _, doc = k.http("POST", "/api/chat", {"tenant": tenant, "message": message}, timeout=20)
                    ok = st == 200 and isinstance(doc, dict) and isinstance(doc.get("reply"), str) and check(doc)
                    if not ok:
                        failures.append(("chat", tenant, st, doc))
                    st, _, doc = k.http("GET", "/health", timeout=20)
                    if st != 200 or doc.get("status") != "ok":
                        failures.append(("health", st, doc))
                    with lock:
                        counts["chat"] += 1
                        counts["health"] += 1
                except Exception as e:  # a refused or reset connection is a failure too
                    failures.append(("exception", tenant, repr(e)))

        threads = [
            threading.Thread(target=client, args=("demo", "Mikor van nyitva a műhely?",
                                                  lambda d: d["reply"].strip() != "" and d["language"] == "hu")),
            # shop exists in every good config; its backend alternates between echo v1/v2 and fallback
            threading.Thread(target=client, args=("shop", "hello storm",
                                                  lambda d: d["reply"].startswith("echo[v1]: hello storm")
                                                  or d["reply"].startswith("echo[v2]: hello storm")
                                                  or d["backend"] == "fallback")),
        ]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        refused = accepted = 0
        bad_accepted = []
        gen = 1
        try:
            for i in range(50):
                step = i % 5
                if step == 0:     # good: echo v1 (file replaced back to v1)
                    copy_so(ECHO_V1, os.path.join(plugdir, "echo.so"))
                    k.write_config(tenants=good_a)
                    expect_ok = True
                elif step == 1:   # bad: unknown plugin
                    k.write_config(tenants={"demo": demo_tenant(), "shop": echo_tenant(),
                                            "x": {"languages": ["en"], "llm": ["nosuchplugin"]}})
                    expect_ok = False
                elif step == 2:   # good: .so replaced by v2, echo gets a delay
                    copy_so(ECHO_V2, os.path.join(plugdir, "echo.so"))
                    k.write_config(tenants={"demo": demo_tenant(), "shop": echo_tenant(delay_ms=5)})
                    expect_ok = True
                elif step == 3:   # bad: syntax/schema error
                    k.write_config(text="tenants:\n  demo:\n    languages: [hu\n")
                    expect_ok = False
                else:             # good: echo removed (file deleted), shop served by fallback
                    k.write_config(tenants={"demo": demo_tenant(),
                                            "shop": demo_tenant(languages=["en", "hu"], routes=[])})
                    os.unlink(os.path.join(plugdir, "echo.so"))
                    expect_ok = True
                if i % 2 == 0:
                    rc, doc, err = k.reload()
                    ok = rc == 0
                    if rc not in (0, 1):
                        failures.append(("kokoctl reload rc", rc, err))
                else:
                    before = k.health()["reloads"]
                    k.proc.send_signal(harness.signal.SIGHUP)
                    deadline = time.monotonic() + 10
                    while True:
                        after = k.health()["reloads"]
                        if after["ok"] + after["failed"] > before["ok"] + before["failed"]:
                            break
                        if time.monotonic() > deadline:
                            raise AssertionError("SIGHUP %d was not processed within 10 s" % i)
                        time.sleep(0.005)
                    ok = after["ok"] > before["ok"]
                if ok:
                    accepted += 1
                    gen += 1
                else:
                    refused += 1
                if ok != expect_ok:
                    bad_accepted.append((i, step, ok))
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
        elapsed = time.monotonic() - t0
        self.assertEqual(failures[:5], [], "%d failed requests" % len(failures))
        self.assertEqual(bad_accepted, [], "reloads with the wrong outcome (index, step, accepted)")
        self.assertEqual(refused, 20)
        self.assertEqual(accepted, 30)
        self.assertGreater(counts["chat"], 20, counts)
        print("storm: %d reloads in %.1f s, %d chat + %d health requests"
              % (accepted + refused, elapsed, counts["chat"], counts["health"]))
        h = k.health()
        self.assertEqual(h["generation"], gen)
        self.assertEqual(h["reloads"], {"ok": 30, "failed": 20})
        h = wait_alive(k, 1)
        self.assertEqual(h["generations_alive"], 1, h)
        self.assertLess(elapsed, 60)
        # the last step (index 49) removed echo: shop is served by fallback now
        self.assertEqual(k.chat("shop", "How much is the call-out fee in Budapest?")["backend"], "fallback")
        k.stop()


if __name__ == "__main__":
    harness.main()
