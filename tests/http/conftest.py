# SPDX-License-Identifier: MIT
"""Fixtures for the black-box tests of proxycached.

Design:
- Every test gets its own server process (fixture `server`, or
  `server_factory` for extra flags/env) with `--listen 127.0.0.1:0`, a fresh
  temporary `--data-dir` and `--sweep-interval 1`. The bound port is read
  from the log line "listening on ADDR:PORT"; readiness is a bounded poll of
  /readyz. At teardown the process gets SIGTERM and must exit 0 without a
  sanitizer report. No fixed ports, no sleeps but short poll loops, no
  order dependence.
- Every response is validated against openapi.yaml: requests' HTTPAdapter
  .send is wrapped at import time, so any request made through requests
  (any Session, any thread) is checked; a violation fails the test.
- External mode (Redis's --host idea): PROXYCACHE_TEST_URL points the suite
  at a running server (e.g. the Docker container); PROXYCACHE_TEST_TOKEN is
  its API token if it has one. The cache is cleared before each test; tests
  that need process control or special flags are skipped.

Environment: PROXYCACHE_BIN (default <repo>/proxycached),
PROXYCACHE_PROXYLISTS_DIR (default <repo>/../shared/data/proxylists).
"""

import gzip
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import requests.adapters

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree

from openapi_validator import OpenApiValidator  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
SPEC_PATH = REPO / "openapi.yaml"
VALIDATOR = OpenApiValidator(SPEC_PATH)

# Fixed Fernet keys (cryptography.fernet.Fernet.generate_key()).
TEST_KEY = "BWLPMgosa2nOPtnXb1fr01QHLMGySIaVL0XRggrSnGU="
OTHER_KEY = "_Y4FopDGg-HcRBNI90zJNkqJNL8W2EmJlFrsq_j5zqA="
THIRD_KEY = "uQmrP4i_vtsMFB2pFdz4a5elE1y5e7EJaq7ZrGoXAyU="
TEST_TOKEN = "test-token-7c1d0e5a9b3f"

LISTEN_RE = re.compile(r"listening on ([0-9.]+|\[[0-9a-f:]+\]):(\d+)")
SANITIZER_RE = re.compile(
    r"ERROR: AddressSanitizer|ERROR: LeakSanitizer|WARNING: ThreadSanitizer|"
    r"runtime error:|PANIC ")

EXTERNAL_URL = os.environ.get("PROXYCACHE_TEST_URL", "").rstrip("/")
EXTERNAL_TOKEN = os.environ.get("PROXYCACHE_TEST_TOKEN") or None
BINARY = Path(os.environ.get("PROXYCACHE_BIN", str(REPO / "proxycached")))
START_TIMEOUT = float(os.environ.get("PROXYCACHE_TEST_START_TIMEOUT", "30"))


# ---- validation of every response -----------------------------------------

_orig_send = requests.adapters.HTTPAdapter.send


def _validating_send(self, request, **kwargs):
    resp = _orig_send(self, request, **kwargs)
    body = resp.content  # reads a streamed body too
    VALIDATOR.validate(request.method, request.url, resp.status_code,
                       resp.headers, body)
    return resp


requests.adapters.HTTPAdapter.send = _validating_send


# ---- client ------------------------------------------------------------------

class Client(requests.Session):
    """A Session bound to one server: relative URLs, default timeout, the
    bearer token if any. Pass headers={"Authorization": None} to send no
    token. Not thread-safe: make one per thread (server.client())."""

    def __init__(self, base_url, token=None, timeout=60):
        super().__init__()
        self.base_url = base_url
        self.timeout = timeout
        self.token = token
        if token:
            self.headers["Authorization"] = f"Bearer {token}"

    def request(self, method, url, *args, **kwargs):
        if url.startswith("/"):
            url = self.base_url + url
        kwargs.setdefault("timeout", self.timeout)
        return super().request(method, url, *args, **kwargs)

    # Shortcuts used by many tests.
    def upsert(self, entry, expect=(200, 201)):
        r = self.post("/v1/proxies", json=entry)
        if expect is not None:
            assert r.status_code in expect, (
                f"POST /v1/proxies {entry!r}: {r.status_code} {r.text}")
        return r

    def upsert_many(self, entries, expect=(200, 201)):
        r = self.post("/v1/proxies", json={"proxies": entries})
        if expect is not None:
            assert r.status_code in expect, (
                f"POST /v1/proxies batch of {len(entries)}: "
                f"{r.status_code} {r.text[:500]}")
        return r

    def stats(self):
        r = self.get("/v1/stats")
        assert r.status_code == 200, r.text
        return r.json()

    def list_all(self, limit=1000, **params):
        """Every entry, following next_cursor (bounded)."""
        items, cursor = [], None
        for _ in range(10000):
            q = dict(params, limit=limit)
            if cursor:
                q["cursor"] = cursor
            r = self.get("/v1/proxies", params=q)
            assert r.status_code == 200, r.text
            doc = r.json()
            items.extend(doc["items"])
            cursor = doc["next_cursor"]
            if cursor is None:
                return items
        raise AssertionError("paging did not end")


# ---- servers ---------------------------------------------------------------

class Server:
    """One proxycached process."""

    external = False

    def __init__(self, tmp_path, name, args=(), env=None, token=None,
                 data_dir=None, listen="127.0.0.1:0", sweep_interval=1):
        self.tmp_path = tmp_path
        self.name = name
        self.args = list(args)
        self.env_extra = dict(env or {})
        self.token = token
        self.data_dir = Path(data_dir) if data_dir else tmp_path / f"data-{name}"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = tmp_path / f"log-{name}.txt"
        self.listen = listen
        self.sweep_interval = sweep_interval
        self.proc = None
        self.port = None
        self.host = None
        self.reaped = True
        self.rc = None
        self._lines = []
        self._lines_lock = threading.Lock()
        self._port_event = threading.Event()
        self._threads = []
        self.starts = 0

    # The command and environment ------------------------------------------
    def command(self):
        cmd = [str(BINARY), "--listen", self.listen,
               "--data-dir", str(self.data_dir)]
        if self.sweep_interval is not None:
            cmd += ["--sweep-interval", str(self.sweep_interval)]
        return cmd + self.args

    def environment(self):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PROXYCACHE_", "PROXYWHIRL_"))}
        env["PROXYCACHE_ENCRYPTION_KEY"] = TEST_KEY
        if self.token:
            env["PROXYCACHE_API_TOKEN"] = self.token
        for k, v in self.env_extra.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        return env

    # Life cycle --------------------------------------------------------------
    def start(self, wait_ready=True, timeout=START_TIMEOUT):
        if not BINARY.exists():
            pytest.fail(f"proxycached not found at {BINARY}: build it "
                        f"(cd {REPO} && make) or set PROXYCACHE_BIN")
        assert self.proc is None or self.reaped, "already running"
        self.port = None
        self._port_event.clear()
        self.starts += 1
        self.proc = subprocess.Popen(
            self.command(), env=self.environment(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.reaped = False
        self.rc = None
        self._threads = [
            threading.Thread(target=self._reader, args=(self.proc.stderr,
                                                        "stderr"),
                             daemon=True),
            threading.Thread(target=self._reader, args=(self.proc.stdout,
                                                        "stdout"),
                             daemon=True),
        ]
        for t in self._threads:
            t.start()
        if not self._port_event.wait(timeout) or self.port is None:
            self._abort()
            pytest.fail(f"{self.name}: no 'listening on' line within "
                        f"{timeout}s (exit status {self.rc}); log:\n"
                        f"{self.logs()[-4000:]}")
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def _reader(self, stream, which):
        with open(self.log_path, "ab") as log:
            for raw in iter(stream.readline, b""):
                log.write(raw)
                log.flush()
                line = raw.decode("utf-8", "replace")
                with self._lines_lock:
                    self._lines.append((which, line))
                if self.port is None and which == "stderr":
                    m = LISTEN_RE.search(line)
                    if m:
                        self.host = m.group(1)
                        self.port = int(m.group(2))
                        self._port_event.set()
        if which == "stderr":
            self._port_event.set()

    def _abort(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
        if self.proc:
            self.rc = self.proc.wait(10)
        self._join()
        self.reaped = True

    def _join(self):
        for t in self._threads:
            t.join(10)

    def wait_ready(self, timeout=START_TIMEOUT):
        c = self.client()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self._abort()
                pytest.fail(f"{self.name} exited with {self.rc} before ready;"
                            f" log:\n{self.logs()[-4000:]}")
            try:
                r = c.get("/readyz")
                if r.status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            if time.monotonic() >= deadline:
                pytest.fail(f"{self.name}: /readyz not 200 within {timeout}s")
            time.sleep(0.05)

    def stop(self, sig=signal.SIGTERM, timeout=30):
        """Signal the process and wait; returns the exit status."""
        if self.reaped:
            return self.rc
        self.proc.send_signal(sig)
        try:
            self.rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.rc = self.proc.wait(10)
            self._join()
            self.reaped = True
            pytest.fail(f"{self.name} did not exit within {timeout}s of "
                        f"signal {sig}; log tail:\n{self.logs()[-3000:]}")
        self._join()
        self.reaped = True
        return self.rc

    def kill9(self):
        return self.stop(signal.SIGKILL)

    def wait_exit(self, timeout=30):
        """Wait for a process expected to exit by itself; its status."""
        try:
            self.rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._abort()
            pytest.fail(f"{self.name} still running after {timeout}s")
        self._join()
        self.reaped = True
        return self.rc

    def restart(self, **kwargs):
        rc = self.stop()
        assert rc == 0, f"exit status {rc} on SIGTERM; log:\n{self.logs()[-3000:]}"
        return self.start(**kwargs)

    # Access -------------------------------------------------------------------
    @property
    def url(self):
        host = self.host or "127.0.0.1"
        if host in ("0.0.0.0",):
            host = "127.0.0.1"
        elif host in ("[::]",):
            host = "[::1]"
        return f"http://{host}:{self.port}"

    def client(self, token=None, auth=True):
        """A new validating client; token defaults to the server's."""
        return Client(self.url, token=(token or self.token) if auth else None)

    def logs(self, which=None):
        with self._lines_lock:
            return "".join(l for w, l in self._lines
                           if which is None or w == which)

    def sanitizer_report(self):
        m = SANITIZER_RE.search(self.logs())
        return m is not None


class ExternalServer:
    """A server we do not control (PROXYCACHE_TEST_URL)."""

    external = True

    def __init__(self, url, token):
        self.base = url
        self.token = token

    @property
    def url(self):
        return self.base

    def client(self, token=None, auth=True):
        return Client(self.base, token=(token or self.token) if auth else None)


@pytest.fixture
def server_factory(tmp_path, request):
    """Start servers with extra args/env: server_factory(args=[...],
    env={...}, token=..., data_dir=..., start=True). Skips the test in
    external mode. Every process still running at teardown gets SIGTERM and
    must exit 0 with no sanitizer report."""
    if EXTERNAL_URL:
        pytest.skip("needs to control the server process "
                    "(PROXYCACHE_TEST_URL is set)")
    servers = []
    request.node._proxycache_servers = servers

    def make(args=(), env=None, token=None, data_dir=None, start=True,
             listen="127.0.0.1:0", sweep_interval=1, wait_ready=True):
        s = Server(tmp_path, f"s{len(servers)}", args=args, env=env,
                   token=token, data_dir=data_dir, listen=listen,
                   sweep_interval=sweep_interval)
        servers.append(s)
        if start:
            s.start(wait_ready=wait_ready)
        return s

    yield make

    problems = []
    for s in servers:
        if s.proc is None:
            continue
        if not s.reaped:
            if s.proc.poll() is not None:
                s.rc = s.proc.returncode
                s._join()
                s.reaped = True
                problems.append(f"{s.name} exited by itself with status "
                                f"{s.rc} during the test")
            else:
                rc = s.stop()
                if rc != 0:
                    problems.append(f"{s.name}: exit status {rc} after "
                                    f"SIGTERM (want 0)")
        if s.sanitizer_report():
            problems.append(f"{s.name}: sanitizer report in the log")
        if problems:
            problems.append(f"--- {s.name} log tail ---\n"
                            f"{s.logs()[-3000:]}")
    if problems:
        pytest.fail("server teardown:\n" + "\n".join(problems))


@pytest.fixture
def server(request):
    """A fresh server with default flags (the external one, cleared, in
    external mode)."""
    if EXTERNAL_URL:
        s = ExternalServer(EXTERNAL_URL, EXTERNAL_TOKEN)
        r = s.client().delete("/v1/proxies")
        assert r.status_code == 200, r.text
        yield s
        return
    factory = request.getfixturevalue("server_factory")
    yield factory()


@pytest.fixture
def client(server):
    c = server.client()
    yield c
    c.close()


@pytest.fixture
def token_server(server_factory):
    """A server with PROXYCACHE_API_TOKEN set (TEST_TOKEN)."""
    return server_factory(token=TEST_TOKEN)


# ---- data ---------------------------------------------------------------------

def _proxylists_dir():
    env = os.environ.get("PROXYCACHE_PROXYLISTS_DIR")
    if env:
        return Path(env)
    return REPO.parent / "shared" / "data" / "proxylists"


@pytest.fixture(scope="session")
def proxylists():
    """A function name -> uncompressed bytes of shared/data/proxylists/<name>
    (e.g. "all.txt"); skips when the directory or file is absent."""
    d = _proxylists_dir()
    cache = {}

    def load(name):
        if name not in cache:
            p = d / (name + ".gz")
            if not p.exists():
                pytest.skip(f"{p} absent (set PROXYCACHE_PROXYLISTS_DIR)")
            with gzip.open(p, "rb") as f:
                cache[name] = f.read()
        return cache[name]

    return load


# ---- reporting ------------------------------------------------------------------

@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test shows the tail of each of its servers' logs."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        for s in getattr(item, "_proxycache_servers", []):
            lines = [l for l in s.logs().splitlines(True)
                     if " request method=" not in l]
            rep.sections.append((f"log of server {s.name} (tail, "
                                 f"request lines left out)",
                                 "".join(lines)[-6000:]))


def pytest_terminal_summary(terminalreporter, config):
    if VALIDATOR.count == 0:
        return
    tr = terminalreporter
    seen = {(t, m, s) for t, m, s in VALIDATOR.seen}
    documented = VALIDATOR.documented()
    missing = sorted(documented - seen)
    tr.write_sep("-", "openapi.yaml response coverage")
    tr.write_line(f"{VALIDATOR.count} responses validated against "
                  f"{SPEC_PATH.name}; {len(documented) - len(missing)} of "
                  f"{len(documented)} documented responses observed"
                  + ("" if config.option.verbose > 0 or not missing
                     else " (-v lists the others)"))
    if missing and config.option.verbose > 0:
        for t, m, s in missing:
            tr.write_line(f"  never observed: {m} {t} {s}")
