"""
harness.py — start the real kokod for integration tests and talk to it.

A Kokod object owns a temporary folder holding the configuration, the state
directory and the control socket; it starts $KOKOD with -P for the fallback
plugin folder and $KOKO_TEST_PLUGINS, waits for the "listening on
http://HOST:PORT" line, and offers http(), kokoctl(), reload() and stop().
kokod's stderr goes to a file in the temporary folder and is shown when a
test fails. main() runs a test module and prints "N passed, N failed".
Python 3 standard library only.
"""
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

SRCDIR = os.path.abspath(os.environ.get("KOKO_SRCDIR", "."))
BUILDDIR = os.path.abspath(os.environ.get("KOKO_BUILDDIR", "."))
KOKOD = os.environ.get("KOKOD", os.path.join(BUILDDIR, "kokod"))
KOKOCTL = os.environ.get("KOKOCTL", os.path.join(BUILDDIR, "kokoctl"))
TEST_PLUGINS = os.environ.get("KOKO_TEST_PLUGINS", os.path.join(BUILDDIR, "tests/plugins/.libs"))
FALLBACK_SO = os.environ.get("KOKO_FALLBACK_SO", os.path.join(BUILDDIR, "plugins/fallback/.libs/fallback.so"))
FALLBACK_DIR = os.path.dirname(FALLBACK_SO)
# tests/plugins/v2/.libs/echo.so: the echo plugin built with tag v2
V2_PLUGINS = os.path.join(os.path.dirname(TEST_PLUGINS), "v2", ".libs")
DATA_PLUGINS = os.path.join(SRCDIR, "tests", "data", "plugins")

START_TIMEOUT = 10.0
STOP_TIMEOUT = 15.0
LISTEN_RE = re.compile(r"listening on http://(\S+):(\d+) ")

# harnesses made during the running test (and shared by a test class), so a
# failure can show their logs
_live = []
_shared = []


def to_yaml(obj, indent=0):
    """Render dicts, lists and scalars as block YAML (strings JSON-quoted)."""
    pad = "  " * indent

    def scalar(v):
        if v is None:
            return "null"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return json.dumps(v)
        return json.dumps(str(v), ensure_ascii=False)

    def key(k):
        return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k, ensure_ascii=False)

    if isinstance(obj, dict):
        if not obj:
            return "{}"
        lines = []
        for k, v in obj.items():
            if isinstance(v, dict) and v:
                lines.append("%s%s:\n%s" % (pad, key(k), to_yaml(v, indent + 1)))
            elif isinstance(v, list) and v and any(isinstance(x, (dict, list)) for x in v):
                lines.append("%s%s:\n%s" % (pad, key(k), to_yaml(v, indent + 1)))
            else:
                lines.append("%s%s: %s" % (pad, key(k), to_yaml(v, indent + 1)))
        return "\n".join(lines)
    if isinstance(obj, list):
        if not any(isinstance(x, (dict, list)) for x in obj):
            return "[" + ", ".join(scalar(x) for x in obj) + "]"
        lines = []
        for x in obj:
            body = to_yaml(x, indent + 1)
            if isinstance(x, dict) and x:
                body = body.lstrip()
            lines.append("%s- %s" % (pad, body))
        return "\n".join(lines)
    return scalar(obj)


def demo_tenant(**over):
    """The demo tenant of etc/koko.yaml (fallback backend, complaints route)."""
    t = {
        "languages": ["hu", "en"],
        "kb": ["kb/_global", "kb/demo"],
        "memory": "memory/demo",
        "llm": ["fallback"],
        "backends": {"fallback": {"min_score": 1.0, "min_coverage": 0.45}},
        "handoff": {"min_confidence": 0.2},
        "routes": [{"name": "complaints",
                    "match": {"keywords": ["panasz", "reklamáció", "complaint", "refund", "visszatérítés"]},
                    "handoff": True}],
    }
    t.update(over)
    return t


def echo_tenant(**echo_cfg):
    """A tenant answered by the echo test plugin (confident unless told otherwise: no KB to score)."""
    cfg = {"confidence": 0.9}
    cfg.update(echo_cfg)
    return {"languages": ["en", "hu"], "llm": ["echo"], "backends": {"echo": cfg}}


class KokodError(AssertionError):
    pass


class Kokod:
    """One kokod process with its own temporary folder."""

    def __init__(self, tenants=None, server=None, plugin_dirs=None, extra=None, shared=False):
        self.dir = tempfile.mkdtemp(prefix="koko-it-")
        self.config_path = os.path.join(self.dir, "koko.yaml")
        self.socket = os.path.join(self.dir, "kokod.sock")
        self.state_dir = os.path.join(self.dir, "state")
        self.log_path = os.path.join(self.dir, "kokod.log")
        self.plugin_dirs = list(plugin_dirs) if plugin_dirs is not None else [FALLBACK_DIR, TEST_PLUGINS]
        self.proc = None
        self.host = None
        self.port = None
        self.log_text = ""
        self.exit_code = None
        self._logf = None
        (_shared if shared else _live).append(self)
        self.write_config(tenants=tenants, server=server, extra=extra)

    # ---- configuration ----

    def config(self, tenants=None, server=None, extra=None):
        """The configuration as a dict: base_dir = KOKO_SRCDIR, state and socket in the temp folder."""
        srv = {"listen": "127.0.0.1:0", "control": self.socket, "drain_timeout_ms": 5000}
        srv.update(server or {})
        cfg = {
            "base_dir": SRCDIR,
            "server": srv,
            "state": {"dir": self.state_dir},
            "log": {"level": "info"},
            "tenants": tenants if tenants is not None else {"demo": demo_tenant()},
        }
        cfg.update(extra or {})
        return cfg

    def write_config(self, tenants=None, server=None, extra=None, text=None):
        """Write the configuration (a dict built by config(), or raw YAML TEXT)."""
        if text is None:
            text = to_yaml(self.config(tenants=tenants, server=server, extra=extra)) + "\n"
        tmp = self.config_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, self.config_path)
        return self.config_path

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    # ---- process ----

    def command(self, *extra_args):
        cmd = [KOKOD, "-c", self.config_path]
        for d in self.plugin_dirs:
            cmd += ["-P", d]
        return cmd + list(extra_args)

    def spawn(self, *extra_args):
        """Start kokod without waiting for it to listen."""
        self._logf = open(self.log_path, "ab")
        env = dict(os.environ)
        env.pop("KOKO_PLUGIN_PATH", None)
        self.proc = subprocess.Popen(self.command(*extra_args), stdin=subprocess.DEVNULL, stdout=self._logf,
                                     stderr=subprocess.STDOUT, env=env, cwd=self.dir)
        return self.proc

    def start(self, *extra_args, timeout=START_TIMEOUT):
        """Start kokod and wait for its listening line; returns self."""
        # a restart appends to the same log: only this start's lines count
        begin = len(self.log())
        self.spawn(*extra_args)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = LISTEN_RE.search(self.log()[begin:])
            if m:
                self.host, self.port = m.group(1), int(m.group(2))
                return self
            if self.proc.poll() is not None:
                raise KokodError("kokod exited with %d before listening:\n%s" % (self.proc.returncode, self.log()))
            time.sleep(0.02)
        raise KokodError("kokod did not log 'listening on' within %.0f s:\n%s" % (timeout, self.log()))

    def wait_exit(self, timeout=STOP_TIMEOUT):
        """Wait for the process to end; returns its exit code (raises on timeout)."""
        try:
            self.exit_code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise KokodError("kokod did not exit within %.0f s:\n%s" % (timeout, self.log()))
        return self.exit_code

    def stop(self, expect=0, timeout=STOP_TIMEOUT):
        """SIGTERM; kokod must exit with EXPECT (0; ASan builds exit non-zero on leaks)."""
        if self.proc is None or self.proc.poll() is not None:
            rc = self.proc.returncode if self.proc else None
            raise KokodError("kokod is not running (exit code %s):\n%s" % (rc, self.log()))
        self.proc.send_signal(signal.SIGTERM)
        rc = self.wait_exit(timeout)
        if expect is not None and rc != expect:
            raise KokodError("kokod exited with %d, expected %d:\n%s" % (rc, expect, self.log()))
        return rc

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log(self):
        """Everything kokod wrote to stderr so far."""
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return self.log_text

    def wait_log(self, pattern, timeout=10.0, start=0):
        """Poll the log (from offset START) until regex PATTERN appears; returns the match."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.log()[start:])
            if m:
                return m
            if time.monotonic() >= deadline:
                raise KokodError("no log line matching %r within %.0f s:\n%s" % (pattern, timeout, self.log()))
            time.sleep(0.02)

    def close(self):
        """Kill a leftover process, keep the log text, remove the temporary folder."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.log_text = self.log()
        if self in _shared:
            _shared.remove(self)
        if self._logf:
            self._logf.close()
            self._logf = None
        shutil.rmtree(self.dir, ignore_errors=True)

    # ---- HTTP ----

    def http(self, method, path, body=None, headers=None, timeout=30.0):
        """One request on a fresh connection → (status, headers dict (lower-case names), JSON or text)."""
        hdrs = dict(headers or {})
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            hdrs.setdefault("Content-Type", "application/json")
        if isinstance(body, str):
            body = body.encode("utf-8")
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            data = resp.read()
            rh = {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()
        text = data.decode("utf-8", "replace")
        if rh.get("content-type", "").startswith("application/json"):
            try:
                return resp.status, rh, json.loads(text)
            except ValueError:
                pass
        return resp.status, rh, text

    def chat(self, tenant, message, **extra):
        """POST /api/chat; asserts 200 and returns the answer."""
        headers = extra.pop("headers", None)
        body = {"tenant": tenant, "message": message}
        body.update(extra)
        st, _, doc = self.http("POST", "/api/chat", body, headers=headers)
        if st != 200:
            raise KokodError("/api/chat → %d %r\n%s" % (st, doc, self.log()))
        return doc

    def health(self):
        st, _, doc = self.http("GET", "/health")
        if st != 200:
            raise KokodError("/health → %d %r" % (st, doc))
        return doc

    # ---- kokoctl ----

    def kokoctl(self, *args, socket=None, timeout=60.0):
        """Run kokoctl -s SOCKET ARGS... → (rc, stdout, stderr)."""
        cmd = [KOKOCTL, "-s", socket or self.socket] + list(args)
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
        return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")

    def kokoctl_json(self, *args):
        rc, out, err = self.kokoctl("--json", *args)
        if rc != 0:
            raise KokodError("kokoctl --json %s → %d: %s" % (" ".join(args), rc, err))
        return json.loads(out)

    def reload(self):
        """kokoctl --json reload → (rc, JSON answer, stderr)."""
        rc, out, err = self.kokoctl("--json", "reload")
        try:
            doc = json.loads(out)
        except ValueError:
            doc = out
        return rc, doc, err

    def sighup(self, expect_generation=None, timeout=10.0):
        """Reload by SIGHUP; with EXPECT_GENERATION, poll /health until it serves."""
        self.proc.send_signal(signal.SIGHUP)
        if expect_generation is None:
            return None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            h = self.health()
            if h["generation"] == expect_generation:
                return h
            time.sleep(0.02)
        raise KokodError("generation %d not serving %.0f s after SIGHUP:\n%s" % (expect_generation, timeout,
                                                                                self.log()))


def kokod_check(config_path, plugin_dirs=None):
    """kokod -t -c CONFIG → (rc, stdout, stderr)."""
    cmd = [KOKOD, "-t", "-c", config_path]
    for d in (plugin_dirs if plugin_dirs is not None else [FALLBACK_DIR, TEST_PLUGINS]):
        cmd += ["-P", d]
    env = dict(os.environ)
    env.pop("KOKO_PLUGIN_PATH", None)
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=60, env=env)
    return p.returncode, p.stdout.decode("utf-8", "replace"), p.stderr.decode("utf-8", "replace")


class KokoTestCase(unittest.TestCase):
    """Closes every Kokod a test made, even when the test fails."""

    def kokod(self, **kw):
        k = Kokod(**kw)
        self.addCleanup(k.close)
        return k

    def started(self, *args, **kw):
        return self.kokod(**kw).start(*args)


class _Result(unittest.TextTestResult):
    def startTest(self, test):
        del _live[:]
        super().startTest(test)

    def _dump(self, test):
        for k in _live + _shared:
            text = k.log() if os.path.exists(k.log_path) else k.log_text
            if k in _shared:
                text = text[-4000:]
            self.stream.write("\n---- kokod log (%s) for %s ----\n%s---- end ----\n" % (k.dir, test.id(), text))

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._dump(test)

    def addError(self, test, err):
        super().addError(test, err)
        self._dump(test)


def main():
    """Run the calling module's tests; print 'N passed, N failed'; exit non-zero on failure."""
    for name, path in (("KOKOD", KOKOD), ("KOKOCTL", KOKOCTL)):
        if not os.access(path, os.X_OK):
            print("%s=%s is not an executable (run through make check)" % (name, path))
            print("0 passed, 1 failed")
            sys.exit(1)
    suite = unittest.defaultTestLoader.loadTestsFromModule(sys.modules["__main__"])
    runner = unittest.TextTestRunner(stream=sys.stdout, verbosity=2, resultclass=_Result)
    res = runner.run(suite)
    failed = len(res.failures) + len(res.errors) + len(res.unexpectedSuccesses)
    passed = res.testsRun - failed - len(res.skipped)
    print("%d passed, %d failed" % (passed, failed))
    sys.stdout.flush()
    sys.exit(0 if failed == 0 else 1)
