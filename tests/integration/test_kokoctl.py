"""
test_kokoctl.py — the operator's tools against a real kokod: every kokoctl
command in text and --json form, reloads (good and refused), exit codes,
the control socket's mode, and `kokod -t` with the exact message for each
kind of configuration or plugin error.
"""
import json
import os
import re
import stat
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import Kokod, KokoTestCase, demo_tenant, kokod_check  # noqa: E402


def kokod_abi():
    """(major, minor, signature) from kokod -V: 'kokod X (plugin ABI 1.0, koko-abi-1/lp64)'."""
    out = subprocess.run([harness.KOKOD, "-V"], capture_output=True, timeout=30).stdout.decode()
    m = re.search(r"plugin ABI (\d+)\.(\d+), (\S+)\)", out)
    if not m:
        raise AssertionError("kokod -V printed %r" % out)
    return m.group(1), m.group(2), m.group(3)


def line_col(text, needle, occurrence=0):
    """1-based line and column of NEEDLE in TEXT."""
    pos = -1
    for _ in range(occurrence + 1):
        pos = text.index(needle, pos + 1)
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return line, col


class Kokoctl(KokoTestCase):
    """One kokod shared by the read-only command tests."""

    @classmethod
    def setUpClass(cls):
        cls.k = Kokod(shared=True)
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

    def ctl(self, *args):
        rc, out, err = self.k.kokoctl(*args)
        self.assertEqual(rc, 0, "kokoctl %s → %d\n%s%s" % (" ".join(args), rc, out, err))
        return out

    def test_socket_mode_0600(self):
        st = os.stat(self.k.socket)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600, oct(st.st_mode))

    def test_status(self):
        out = self.ctl("status")
        self.assertRegex(out, r"(?m)^status\s+ok$")
        self.assertRegex(out, r"(?m)^pid\s+%d$" % self.k.proc.pid)
        self.assertRegex(out, r"(?m)^listen\s+127\.0\.0\.1:%d$" % self.k.port)
        self.assertRegex(out, r"(?m)^tenants\s+1$")
        self.assertRegex(out, r"(?m)^plugins\s+fallback$")
        self.assertRegex(out, r"(?m)^generation\s+\d+$")
        doc = self.k.kokoctl_json("status")
        self.assertEqual(doc["status"], "ok")
        self.assertEqual(doc["pid"], self.k.proc.pid)
        self.assertEqual(doc["listen"], "127.0.0.1:%d" % self.k.port)
        self.assertEqual(doc["config"], self.k.config_path)
        self.assertEqual(doc["generation"], self.k.health()["generation"])

    def test_status_via_config(self):
        p = subprocess.run([harness.KOKOCTL, "-c", self.k.config_path, "--json", "status"], capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(json.loads(p.stdout)["pid"], self.k.proc.pid)

    def test_plugins(self):
        out = self.ctl("plugins")
        lines = out.splitlines()
        self.assertRegex(lines[0], r"^NAME\s+KIND\s+VERSION\s+ABI\s+TENANTS\s+FILE$")
        self.assertRegex(out, r"(?m)^fallback\s+llm\s+\S+\s+\d+\.\d+\s+demo\s+%s$" % re.escape(harness.FALLBACK_SO))
        doc = self.k.kokoctl_json("plugins")
        self.assertEqual([p["name"] for p in doc], ["fallback"])
        p = doc[0]
        self.assertEqual(p["kind"], "llm")
        self.assertEqual(p["tenants"], ["demo"])
        self.assertEqual(p["file"], harness.FALLBACK_SO)
        self.assertRegex(p["hash"], r"^[0-9a-f]{16}$")
        # the .so kokod runs is a content-addressed copy in the state folder
        copies = os.listdir(os.path.join(self.k.state_dir, "plugins"))
        self.assertIn("fallback-%s.so" % p["hash"], copies)

    def test_tenants(self):
        out = self.ctl("tenants")
        self.assertRegex(out, r"(?m)^TENANT\s+LANGS\s+LLM CHAIN")
        m = re.search(r"(?m)^demo\s+hu, en\s+fallback\s+-\s+-\s+(\d+)\s+(\d+)$", out)
        self.assertTrue(m, out)
        doc = self.k.kokoctl_json("tenants")
        self.assertEqual(doc[0]["name"], "demo")
        self.assertEqual(int(m.group(1)), doc[0]["kb"]["files"])
        self.assertEqual(int(m.group(2)), doc[0]["kb"]["chunks"])
        self.assertGreater(doc[0]["kb"]["chunks"], 20)
        self.assertEqual(doc[0]["llm"], ["fallback"])

    def test_routes(self):
        out = self.ctl("routes", "demo")
        self.assertRegex(out, r'(?m)^1\s+complaints\s+keywords=\["panasz",.*"complaint".*\s+handoff=true$')
        self.assertRegex(out, r"(?m)^-\s+default\s+\(when no route matches\)\s+llm=fallback$")
        doc = self.k.kokoctl_json("routes", "demo")
        self.assertEqual(doc["tenant"], "demo")
        self.assertEqual([r["name"] for r in doc["routes"]], ["complaints"])
        self.assertEqual(doc["default"]["llm"], ["fallback"])
        rc, out, err = self.k.kokoctl("routes", "nosuch")
        self.assertEqual(rc, 1)
        self.assertIn('unknown tenant "nosuch"', err)

    def test_route_explains(self):
        out = self.ctl("route", "demo", "--text", "I have a complaint about the repair")
        self.assertRegex(out, r"(?m)^route: complaints\s+\(language en\)$")
        self.assertRegex(out, r'(?m)^\s+->\s+complaints\s+.*keyword "complaint"')
        doc = self.k.kokoctl_json("route", "demo", "--text", "Panaszt szeretnék tenni a szerelő miatt")
        self.assertEqual(doc["route"], "complaints")
        self.assertEqual(doc["language"], "hu")
        chosen = [e for e in doc["evaluation"] if e.get("chosen")]
        self.assertEqual(len(chosen), 1, doc)
        self.assertEqual(chosen[0]["route"], "complaints")
        self.assertTrue(any("panasz" in r for r in chosen[0]["reasons"]), chosen)
        doc = self.k.kokoctl_json("route", "demo", "--text", "When are you open?")
        self.assertEqual(doc["route"], "default")
        self.assertFalse(any(e.get("chosen") for e in doc["evaluation"]), doc)

    def test_chat(self):
        out = self.ctl("chat", "demo", "Mikor van nyitva a műhely?")
        self.assertIn("9:00", out)
        self.assertRegex(out, r"(?m)^language\s+hu$")
        self.assertRegex(out, r"(?m)^backend\s+fallback$")
        self.assertRegex(out, r"(?m)^handoff\s+no$")
        self.assertRegex(out, r"(?m)^sources\s+kb/demo/hours\.hu\.md › ")
        doc = self.k.kokoctl_json("chat", "demo", "How much is the call-out fee in Budapest?", "--conversation", "ct1")
        self.assertEqual(doc["language"], "en")
        self.assertEqual(doc["sources"][0]["file"], "kb/demo/pricing.en.md")
        doc = self.k.kokoctl_json("chat", "demo", "Szia!", "--conversation", "ct1")
        self.assertEqual(doc["language"], "en")
        rc, out, err = self.k.kokoctl("chat", "demo")
        self.assertEqual(rc, 2, err)

    def test_stats(self):
        before = self.k.kokoctl_json("stats").get("demo", {}).get("queries", 0)
        self.ctl("chat", "demo", "nyitvatartás")
        self.k.chat("demo", "nyitvatartás")
        doc = self.k.kokoctl_json("stats")
        self.assertEqual(doc["demo"]["queries"] - before, 2)
        out = self.ctl("stats")
        self.assertRegex(out, r"(?m)^TENANT\s+QUERIES\s+ANSWERED\s+HANDOFF\s+FAILED\s+TOKENS\s+AVG MS$")
        self.assertRegex(out, r"(?m)^demo\s+%d\s" % doc["demo"]["queries"])

    # usage errors exit 2 (also under LeakSanitizer: nothing may leak on those paths)
    def test_usage_errors(self):
        for args in (["frobnicate"], ["status", "extra"], ["routes"], ["route", "demo"], []):
            rc, out, err = self.k.kokoctl(*args)
            self.assertEqual(rc, 2, (args, out, err))


class KokoctlReload(KokoTestCase):
    def test_reload_and_refused_reload(self):
        k = self.started()
        gen = k.health()["generation"]
        rc, out, err = k.kokoctl("reload")
        self.assertEqual(rc, 0, err)
        self.assertRegex(out, r"(?m)^reloaded: generation %d serving \(" % (gen + 1))
        self.assertRegex(out, r"(?m)^  instances:\s+1 kept, 0 new$")
        self.assertEqual(k.health()["generation"], gen + 1)
        gen += 1

        # a configuration with two errors: both are printed as FILE:LINE:COL
        good = open(k.config_path, encoding="utf-8").read()
        bad = good.replace('    llm: ["fallback"]\n', '    llm: ["fallbak", "chankind"]\n')
        self.assertNotEqual(bad, good)
        k.write_config(text=bad)
        l1, c1 = line_col(bad, '"fallbak"')
        l2, c2 = line_col(bad, '"chankind"')
        rc, out, err = k.kokoctl("reload")
        self.assertEqual(rc, 1, out + err)
        self.assertIn("kokoctl: reload refused (2 problem(s)); generation %d keeps serving" % gen, err)
        self.assertRegex(err, r'(?m)^%s:%d:%d: tenants\.demo\.llm\[0\]: unknown plugin "fallbak" \(available: '
                         % (re.escape(k.config_path), l1, c1))
        self.assertRegex(err, r'(?m)^%s:%d:%d: tenants\.demo\.llm\[1\]: plugin "chankind" is a channel plugin, '
                         r'not an llm plugin$' % (re.escape(k.config_path), l2, c2))
        # JSON form carries the same errors
        rc, doc, err = k.reload()
        self.assertEqual(rc, 1)
        self.assertFalse(doc["ok"])
        self.assertEqual(len(doc["errors"]), 2, doc)
        # the old generation keeps serving
        h = k.health()
        self.assertEqual(h["generation"], gen)
        self.assertEqual(h["reloads"]["failed"], 2)
        self.assertEqual(k.chat("demo", "Mikor van nyitva a műhely?")["language"], "hu")

        # SIGHUP with the bad file is refused too, and logged
        mark = len(k.log())
        k.sighup()
        k.wait_log(r"reload refused \(2 problem\(s\)\); generation %d keeps serving" % gen, start=mark)
        self.assertEqual(k.health()["generation"], gen)

        k.write_config(text=good)
        rc, out, err = k.kokoctl("reload")
        self.assertEqual(rc, 0, err)
        self.assertIn("reloaded: generation %d serving" % (gen + 1), out)
        k.stop()

    def test_missing_socket_exit_3(self):
        d = tempfile.mkdtemp(prefix="koko-it-nosock-")
        try:
            sock = os.path.join(d, "kokod.sock")
            p = subprocess.run([harness.KOKOCTL, "-s", sock, "status"], capture_output=True, text=True, timeout=30)
            self.assertEqual(p.returncode, 3, p.stderr)
            self.assertIn("kokod is not running (no socket at %s)" % sock, p.stderr)
            # same through -c: the socket comes from server.control
            k = self.kokod()
            p = subprocess.run([harness.KOKOCTL, "-c", k.config_path, "status"], capture_output=True, text=True,
                               timeout=30)
            self.assertEqual(p.returncode, 3, p.stderr)
            self.assertIn("kokod is not running (no socket at %s)" % k.socket, p.stderr)
        finally:
            os.rmdir(d)

    def test_stale_socket_after_stop(self):
        k = self.started()
        k.stop()
        self.assertFalse(os.path.exists(k.socket), "control socket left behind after stop")
        rc, out, err = k.kokoctl("status")
        self.assertEqual(rc, 3)
        self.assertIn("kokod is not running", err)


class ConfigCheck(KokoTestCase):
    """kokod -t: 'configuration ok' or every error as FILE:LINE:COL: path: message."""

    def setUp(self):
        self.k = self.kokod()
        self.abi = kokod_abi()

    def check_llm(self, plugin, plugin_dirs=None):
        """kokod -t with PLUGIN as the demo tenant's only backend → (stderr, line, col, rc)."""
        text = harness.to_yaml(self.k.config(tenants={"demo": demo_tenant(llm=[plugin], backends={})})) + "\n"
        self.k.write_config(text=text)
        line, col = line_col(text, '"%s"' % plugin)
        rc, out, err = kokod_check(self.k.config_path, plugin_dirs)
        return rc, out, err, "%s:%d:%d: tenants.demo.llm[0]: " % (self.k.config_path, line, col)

    def assertOneError(self, rc, err, prefix, message):
        self.assertEqual(rc, 1, err)
        self.assertIn(prefix + message + "\n", err)
        self.assertIn("%s: configuration has 1 error(s)" % self.k.config_path, err)

    def test_good_config(self):
        rc, out, err = kokod_check(self.k.config_path)
        self.assertEqual(rc, 0, err)
        self.assertEqual(out.strip(), "%s: configuration ok (1 tenant(s), 1 plugin(s))" % self.k.config_path)

    def test_shipped_config(self):
        env = dict(os.environ, KOKO_BASE_DIR=harness.SRCDIR, KOKO_STATE_DIR=self.k.state_dir)
        cfg = os.path.join(harness.SRCDIR, "etc", "koko.yaml")
        p = subprocess.run([harness.KOKOD, "-t", "-c", cfg, "-P", harness.FALLBACK_DIR], capture_output=True,
                           text=True, env=env, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn("configuration ok", p.stdout)

    def test_unknown_plugin(self):
        rc, out, err, pre = self.check_llm("fallbak")
        self.assertEqual(rc, 1, err)
        m = re.search(re.escape(pre) + r'unknown plugin "fallbak" \(available: ([^)]*)\)\n', err)
        self.assertTrue(m, err)
        listed = m.group(1).split(", ")
        want = {f[:-3] for d in (harness.FALLBACK_DIR, harness.TEST_PLUGINS) for f in os.listdir(d)
                if f.endswith(".so")}
        self.assertTrue(want <= set(listed), (want, listed))
        self.assertIn("fallback", listed)
        self.assertIn("echo", listed)

    def test_unknown_key_did_you_mean(self):
        cfg = self.k.config()
        cfg["tenants"]["demo"]["langauge"] = ["hu"]
        text = harness.to_yaml(cfg) + "\n"
        self.k.write_config(text=text)
        line, col = line_col(text, "langauge")
        rc, out, err = kokod_check(self.k.config_path)
        self.assertEqual(rc, 1, err)
        m = re.search(r"(?m)^%s:%d:%d: tenants\.demo\.langauge: unknown key \"langauge\"; did you mean "
                      r"\"languages\"\? \(known keys: ([a-z_, ]+)\)$" % (re.escape(self.k.config_path), line, col), err)
        self.assertTrue(m, err)
        known = m.group(1).split(", ")
        for key in ("languages", "kb", "memory", "llm", "backends", "channels", "routes", "handoff"):
            self.assertIn(key, known)
        self.assertIn("%s: configuration has 1 error(s)" % self.k.config_path, err)

    def test_wrong_type(self):
        cfg = self.k.config()
        cfg["tenants"]["demo"]["history_turns"] = "lots"
        text = harness.to_yaml(cfg) + "\n"
        self.k.write_config(text=text)
        line, col = line_col(text, '"lots"')
        rc, out, err = kokod_check(self.k.config_path)
        self.assertOneError(rc, err, "%s:%d:%d: tenants.demo.history_turns: " % (self.k.config_path, line, col),
                            "expected an integer, got a string")

    def test_badmajor(self):
        mj, mn, sig = self.abi
        rc, out, err, pre = self.check_llm("badmajor")
        f = os.path.join(harness.TEST_PLUGINS, "badmajor.so")
        self.assertOneError(rc, err, pre, "%s: plugin ABI 99.%s is not compatible with kokod's ABI %s.%s (major "
                            "versions differ): rebuild the plugin against this kokod's headers" % (f, mn, mj, mn))

    def test_badminor(self):
        mj, mn, sig = self.abi
        rc, out, err, pre = self.check_llm("badminor")
        f = os.path.join(harness.TEST_PLUGINS, "badminor.so")
        self.assertOneError(rc, err, pre, "%s: plugin needs ABI %s.99 but kokod provides %s.%s: upgrade kokod or "
                            "rebuild the plugin against these headers" % (f, mj, mj, mn))

    def test_badsig(self):
        mj, mn, sig = self.abi
        rc, out, err, pre = self.check_llm("badsig")
        f = os.path.join(harness.TEST_PLUGINS, "badsig.so")
        self.assertOneError(rc, err, pre, '%s: plugin build signature "koko-abi-1/ilp32" differs from kokod\'s '
                            '"%s": rebuild the plugin' % (f, sig))

    def test_nosym(self):
        rc, out, err, pre = self.check_llm("nosym")
        f = os.path.join(harness.TEST_PLUGINS, "nosym.so")
        self.assertOneError(rc, err, pre, "%s: no koko_plugin_v1 symbol: not a kokod plugin (export the descriptor "
                            "with KOKO_EXPORT)" % f)

    def test_noops(self):
        rc, out, err, pre = self.check_llm("noops")
        f = os.path.join(harness.TEST_PLUGINS, "noops.so")
        self.assertOneError(rc, err, pre, '%s: plugin "noops" has no llm ops table' % f)

    def test_notso(self):
        dirs = [harness.FALLBACK_DIR, harness.TEST_PLUGINS, harness.DATA_PLUGINS]
        rc, out, err, pre = self.check_llm("notso", plugin_dirs=dirs)
        f = os.path.join(harness.DATA_PLUGINS, "notso.so")
        self.assertEqual(rc, 1, err)
        self.assertIn(pre + "%s: cannot load plugin: " % f, err)
        self.assertRegex(err, r"cannot load plugin: .*(file too short|invalid ELF header)")

    def test_chankind_as_llm(self):
        rc, out, err, pre = self.check_llm("chankind")
        self.assertOneError(rc, err, pre, 'plugin "chankind" is a channel plugin, not an llm plugin')

    def test_misname(self):
        rc, out, err, pre = self.check_llm("misname")
        f = os.path.join(harness.TEST_PLUGINS, "misname.so")
        self.assertOneError(rc, err, pre, '%s: the file declares plugin "othername", not "misname": rename the '
                            'file to othername.so' % f)

    def test_failinit_only_at_start(self):
        rc, out, err, pre = self.check_llm("failinit")
        self.assertEqual(rc, 0, err)
        self.assertIn("configuration ok", out)
        self.k.spawn()
        rc = self.k.wait_exit(timeout=15)
        log = self.k.log()
        self.assertEqual(rc, 1, log)
        self.assertIn('plugin "failinit" failed to initialise: cannot reach the model server (test)', log)
        self.assertRegex(log, r"%s:\d+:\d+: tenants\.demo\." % re.escape(self.k.config_path))
        self.assertIn("not started: 1 configuration error(s)", log)
        self.assertNotIn("listening on", log)
        self.assertFalse(os.path.exists(self.k.socket))

    def test_unset_env_var(self):
        text = harness.to_yaml(self.k.config(server={"api_token": "XX"})) + "\n"
        text = text.replace('api_token: "XX"', "api_token: ${KOKO_IT_SURELY_UNSET_TOKEN}")
        self.k.write_config(text=text)
        line, col = line_col(text, "${KOKO_IT_SURELY_UNSET_TOKEN}")
        env = dict(os.environ)
        env.pop("KOKO_IT_SURELY_UNSET_TOKEN", None)
        p = subprocess.run([harness.KOKOD, "-t", "-c", self.k.config_path, "-P", harness.FALLBACK_DIR],
                           capture_output=True, text=True, env=env, timeout=60)
        self.assertEqual(p.returncode, 1, p.stderr)
        self.assertIn("%s:%d:%d: server.api_token: environment variable KOKO_IT_SURELY_UNSET_TOKEN is not set (set "
                      "it, or write ${KOKO_IT_SURELY_UNSET_TOKEN:-default})\n" % (self.k.config_path, line, col),
                      p.stderr)
        env["KOKO_IT_SURELY_UNSET_TOKEN"] = "tok"
        p = subprocess.run([harness.KOKOD, "-t", "-c", self.k.config_path, "-P", harness.FALLBACK_DIR],
                           capture_output=True, text=True, env=env, timeout=60)
        self.assertEqual(p.returncode, 0, p.stderr)

    def test_every_error_reported(self):
        cfg = self.k.config(tenants={"demo": demo_tenant(llm=["badmajor", "chankind", "fallbak"], backends={})})
        cfg["tenants"]["demo"]["history_turns"] = 3
        text = harness.to_yaml(cfg) + "\n"
        self.k.write_config(text=text)
        rc, out, err = kokod_check(self.k.config_path)
        self.assertEqual(rc, 1)
        self.assertIn("configuration has 3 error(s)", err)
        for i, name in enumerate(("badmajor", "chankind", "fallbak")):
            self.assertRegex(err, r"(?m)^%s:\d+:\d+: tenants\.demo\.llm\[%d\]: " % (re.escape(self.k.config_path), i))


if __name__ == "__main__":
    harness.main()
