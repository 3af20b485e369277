"""Operations: /metrics passes promtool, and a real Prometheus scrapes it.

Starts the real binary on a free loopback port, then a Prometheus server
(Debian package `prometheus`) with a temporary configuration and storage
scraping it every second; queries Prometheus's HTTP API until it reports
`up == 1` and a cache counter equal to the one in /v1/stats. Bounded in time.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request

import pytest

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("PROXYCACHE_BIN", os.path.join(TOP, "proxycached"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, ctype="application/json"):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", ctype)
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status, r.headers, r.read()


@pytest.fixture
def service(tmp_path):
    log = open(tmp_path / "service.log", "w+")
    proc = subprocess.Popen(
        [BIN, "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data")],
        stderr=log, env=dict(os.environ, PROXYCACHE_ENCRYPTION_KEY=
                             "cw_0x689RpI-jtRR7oE8h_eQsKImvJapLeSbXpwF4e4="))
    port = None
    deadline = time.monotonic() + 20
    while port is None and time.monotonic() < deadline:
        log.seek(0)
        m = re.search(r"listening on ([0-9.]+|\[[0-9a-f:]+\]):(\d+)", log.read())
        if m:
            port = int(m.group(2))
        elif proc.poll() is not None:
            pytest.fail("service exited early")
        else:
            time.sleep(0.05)
    assert port, "no 'listening on' line"
    base = f"http://127.0.0.1:{port}"
    while time.monotonic() < deadline:
        try:
            if http("GET", base + "/readyz")[0] == 200:
                break
        except Exception:
            time.sleep(0.05)
    yield base, tmp_path / "service.log"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    log.close()


def test_promtool_check_metrics(service):
    base, _ = service
    http("POST", base + "/v1/proxies", {"proxy_url": "http://192.0.2.1:3128"})
    status, headers, body = http("GET", base + "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    for name in ("proxycache_cache_requests_total", "proxycache_evictions_total",
                 "proxycache_entries", "proxycache_tier_degraded",
                 "proxycache_http_requests_total",
                 "proxycache_http_request_duration_seconds_bucket",
                 "process_resident_memory_bytes", "process_open_fds",
                 "process_start_time_seconds"):
        assert name in text, name
    # Route templates, never raw keys: cardinality stays bounded.
    assert not re.search(r'route="[^"]*[0-9a-f]{64}', text)
    res = subprocess.run(["promtool", "check", "metrics"], input=body,
                         capture_output=True, timeout=30)
    assert res.returncode == 0, res.stdout.decode() + res.stderr.decode()
    # promtool prints lint problems even with exit 0 in some versions.
    assert res.stdout.strip() == b"" and res.stderr.strip() == b"", res


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="no prometheus")
def test_real_prometheus_scrapes(service, tmp_path):
    base, _ = service
    for i in range(7):
        http("POST", base + "/v1/proxies", {"proxy_url": f"http://192.0.2.{i + 1}:3128"})
    target = urllib.parse.urlparse(base).netloc
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: proxycache\n"
        f"    static_configs:\n      - targets: ['{target}']\n")
    pport = free_port()
    plog = open(tmp_path / "prometheus.log", "w")
    prom = subprocess.Popen(
        ["prometheus", f"--config.file={cfg}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{pport}"],
        stdout=plog, stderr=plog)
    try:
        stats = json.loads(http("GET", base + "/v1/stats")[2])
        writes = stats["overall"]["writes"]
        q = f"http://127.0.0.1:{pport}/api/v1/query?query="
        up = got = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                r = json.loads(http("GET", q + "up")[2])["data"]["result"]
                up = r[0]["value"][1] if r else None
                r = json.loads(http("GET", q + "proxycache_writes_total")[2])["data"]["result"]
                got = r[0]["value"][1] if r else None
                if up == "1" and got is not None and int(float(got)) == writes:
                    break
            except Exception:
                pass
            time.sleep(0.5)
        assert up == "1", "Prometheus never saw the target up"
        assert got is not None and int(float(got)) == writes, (got, writes)
    finally:
        prom.terminate()
        try:
            prom.wait(timeout=20)
        except subprocess.TimeoutExpired:
            prom.kill()
        plog.close()


def test_request_log_lines_and_no_secrets(service):
    base, logpath = service
    secret_user, secret_pass = "opsuser-7f3a", "opspass-91bc"
    st, _, body = http("POST", base + "/v1/proxies",
                       {"proxy_url": f"http://{secret_user}:{secret_pass}@192.0.2.50:8080"})
    key = json.loads(body)["key"]
    http("GET", base + f"/v1/proxies/{key}")
    req = urllib.request.Request(base + "/v1/stats",
                                 headers={"Authorization": "Bearer not-a-real-token-123"})
    urllib.request.urlopen(req, timeout=5).read()
    time.sleep(0.2)
    text = logpath.read_text()
    assert secret_user not in text and secret_pass not in text
    assert "not-a-real-token-123" not in text
    assert key not in text, "raw keys must not appear in request logs"
    assert re.search(r"route=/v1/proxies/\{key\}", text), text[-2000:]
