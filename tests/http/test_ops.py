# SPDX-License-Identifier: MIT
"""/v1/stats (numbers add up), /metrics (Prometheus text 0.0.4, the
metric names of DESIGN.md, consistent with /v1/stats, promtool-clean),
/healthz and /readyz, and configuration seen through /v1/stats (flags win
over the environment)."""

import re
import shutil
import subprocess

import pytest

from helpers import key_for, unique_url

TIERS = ("l1", "l2", "l3")


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_readyz(client):
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready",
                        "tiers": {"l1": "ok", "l2": "ok", "l3": "ok"}}


def test_stats_shape_on_a_fresh_server(server_factory):
    s = server_factory(args=["--l1-capacity", "11", "--l2-capacity", "22",
                             "--l3-capacity", "0"])
    st = s.client().stats()
    assert st["version"] == "0.1.0"
    assert st["warming"] is False
    assert st["pending_l3"] == 0
    assert st["overall"] == {"lookups": 0, "hits": 0, "misses": 0,
                             "hit_rate": 0, "writes": 0}
    for t in TIERS:
        ts = st["tiers"][t]
        assert (ts["hits"], ts["misses"], ts["size"]) == (0, 0, 0)
        assert ts["hit_rate"] == 0
        assert ts["degraded"] is False
        assert ts["consecutive_failures"] == 0
        assert ts["evictions"] == {"lru": 0, "ttl": 0, "health": 0,
                                   "corruption": 0}
    assert {t: st["tiers"][t]["capacity"] for t in TIERS} == \
        {"l1": 11, "l2": 22, "l3": 0}


def test_default_capacities(client, server):
    if server.external:
        pytest.skip("the external server may be configured differently")
    st = client.stats()
    assert [st["tiers"][t]["capacity"] for t in TIERS] == [1000, 5000, 0]


def test_stats_add_up(client):
    urls = [unique_url() for _ in range(3)]
    before = client.stats()
    for u in urls:
        client.upsert({"proxy_url": u})
    for u in urls:
        assert client.get(f"/v1/proxies/{key_for(u)}").status_code == 200
    for _ in range(2):
        assert client.get(f"/v1/proxies/{key_for(unique_url())}"
                          ).status_code == 404
    st = client.stats()
    o, b = st["overall"], before["overall"]
    assert o["writes"] - b["writes"] == 3
    assert o["lookups"] - b["lookups"] == 5
    assert o["hits"] - b["hits"] == 3
    assert o["misses"] - b["misses"] == 2
    assert o["lookups"] == o["hits"] + o["misses"]
    assert o["hit_rate"] == pytest.approx(o["hits"] / o["lookups"])
    assert sum(st["tiers"][t]["hits"] for t in TIERS) == o["hits"]
    for t in TIERS:
        ts = st["tiers"][t]
        n = ts["hits"] + ts["misses"]
        assert ts["hit_rate"] == pytest.approx(ts["hits"] / n if n else 0)
        assert ts["size"] == 3
    assert st["uptime_seconds"] >= 0


def test_stats_l2_hits_are_not_double_counted(server_factory):
    """A lookup served by L2 is one lookup and one hit overall."""
    s = server_factory(args=["--l1-capacity", "1", "--l2-capacity", "10"])
    c = s.client()
    a, b = unique_url(), unique_url()
    c.upsert({"proxy_url": a})
    c.upsert({"proxy_url": b})  # pushes a out of L1
    before = c.stats()
    r = c.get(f"/v1/proxies/{key_for(a)}")
    assert r.headers["X-Cache-Tier"] == "l2"
    st = c.stats()
    d = {k: st["overall"][k] - before["overall"][k]
         for k in ("lookups", "hits", "misses")}
    assert d == {"lookups": 1, "hits": 1, "misses": 0}
    assert st["tiers"]["l2"]["hits"] - before["tiers"]["l2"]["hits"] == 1
    assert st["tiers"]["l1"]["promotions"] + st["tiers"]["l2"]["promotions"] \
        > before["tiers"]["l1"]["promotions"] + \
        before["tiers"]["l2"]["promotions"]


# ---- /metrics ---------------------------------------------------------------------

SAMPLE_RE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*"'
    r'(?:,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*")*,?)?\})? '
    r'(-?[0-9.eE+-]+|NaN|\+Inf|-Inf)( -?\d+)?$')

METRICS = {
    "proxycache_cache_requests_total": "counter",
    "proxycache_cache_lookups_total": "counter",
    "proxycache_evictions_total": "counter",
    "proxycache_promotions_total": "counter",
    "proxycache_demotions_total": "counter",
    "proxycache_entries": "gauge",
    "proxycache_tier_degraded": "gauge",
    "proxycache_tier_failures_total": "counter",
    "proxycache_writes_total": "counter",
    "proxycache_pending_l3_writes": "gauge",
    "proxycache_warming": "gauge",
    "proxycache_http_requests_total": "counter",
    "proxycache_http_request_duration_seconds": "histogram",
    "proxycache_build_info": "gauge",
    "proxycache_uptime_seconds": "gauge",
    "process_resident_memory_bytes": "gauge",
    "process_virtual_memory_bytes": "gauge",
    "process_open_fds": "gauge",
    "process_max_fds": "gauge",
    "process_cpu_seconds_total": "counter",
    "process_start_time_seconds": "gauge",
}
BUCKETS = ["0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01",
           "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "+Inf"]


def _parse_metrics(text):
    types, samples = {}, []
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
            continue
        if line.startswith("#"):
            assert line.startswith("# HELP "), line
            continue
        m = SAMPLE_RE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"',
                                 m.group(2) or ""))
        samples.append((m.group(1), labels, float(m.group(3))))
    return types, samples


def _value(samples, name, **labels):
    vals = [v for n, l, v in samples
            if n == name and all(l.get(k) == str(x) for k, x in labels.items())]
    assert len(vals) == 1, (name, labels, vals)
    return vals[0]


def test_metrics(client):
    urls = [unique_url() for _ in range(4)]
    client.upsert_many([{"proxy_url": u} for u in urls])
    client.get(f"/v1/proxies/{key_for(urls[0])}")
    client.get(f"/v1/proxies/{key_for(unique_url())}")
    r = client.get("/metrics")
    assert r.status_code == 200
    ctype = r.headers["Content-Type"].replace(" ", "").lower()
    assert ctype.startswith("text/plain")
    assert "version=0.0.4" in ctype
    types, samples = _parse_metrics(r.text)
    for name, kind in METRICS.items():
        assert types.get(name) == kind, f"{name}: TYPE {types.get(name)}"
    st = client.stats()
    for t in TIERS:
        assert _value(samples, "proxycache_entries", tier=t) == \
            st["tiers"][t]["size"]
        assert _value(samples, "proxycache_tier_degraded", tier=t) == 0
        for reason in ("lru", "ttl", "health", "corruption"):
            assert _value(samples, "proxycache_evictions_total", tier=t,
                          reason=reason) == st["tiers"][t]["evictions"][reason]
        for result, field in (("hit", "hits"), ("miss", "misses")):
            assert _value(samples, "proxycache_cache_requests_total", tier=t,
                          result=result) == st["tiers"][t][field]
    assert _value(samples, "proxycache_cache_lookups_total") == \
        st["overall"]["lookups"]
    assert _value(samples, "proxycache_writes_total") == \
        st["overall"]["writes"]
    assert _value(samples, "proxycache_build_info", version="0.1.0") == 1
    assert _value(samples, "proxycache_warming") == 0
    assert _value(samples, "process_resident_memory_bytes") > 0
    assert _value(samples, "process_open_fds") > 0
    # Request counts and a histogram with the documented buckets.
    posts = [v for n, l, v in samples if n == "proxycache_http_requests_total"
             and l.get("method") == "POST" and l.get("code") == "201"]
    assert sum(posts) >= 1
    les = {}
    for n, l, v in samples:
        if n == "proxycache_http_request_duration_seconds_bucket":
            les.setdefault(l["route"], []).append((l["le"], v))
    assert les, "no histogram buckets"
    for route, buckets in les.items():
        got = [le for le, _ in buckets]
        assert [float(x) for x in got] == [float(x) for x in BUCKETS], route
        counts = [v for _, v in buckets]
        assert counts == sorted(counts), f"{route}: buckets not cumulative"
        assert _value(samples,
                      "proxycache_http_request_duration_seconds_count",
                      route=route) == counts[-1]


def test_metrics_route_labels_are_templates(client):
    """Route labels are bounded (templates), not raw paths with keys."""
    for _ in range(3):
        client.get(f"/v1/proxies/{key_for(unique_url())}")
    text = client.get("/metrics").text
    assert not re.search(r'route="[^"]*[0-9a-f]{64}', text)


def test_metrics_pass_promtool(client, tmp_path):
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool not installed")
    client.upsert({"proxy_url": unique_url()})
    text = client.get("/metrics").content
    p = subprocess.run([promtool, "check", "metrics"], input=text,
                       capture_output=True, timeout=30)
    assert p.returncode == 0, (p.stdout + p.stderr).decode()


# ---- configuration through the environment --------------------------------------

def test_environment_configures(server_factory):
    s = server_factory(env={"PROXYCACHE_DEFAULT_TTL": "42"})
    c = s.client()
    url = unique_url()
    c.upsert({"proxy_url": url})
    assert c.get(f"/v1/proxies/{key_for(url)}").json()["ttl_seconds"] == 42


def test_flags_win_over_environment(server_factory):
    s = server_factory(args=["--default-ttl", "77"],
                       env={"PROXYCACHE_DEFAULT_TTL": "42"})
    c = s.client()
    url = unique_url()
    c.upsert({"proxy_url": url})
    assert c.get(f"/v1/proxies/{key_for(url)}").json()["ttl_seconds"] == 77


def test_environment_capacity(server_factory):
    """PROXYCACHE_L1_CAPACITY=2: the third write pushes the first out of
    L1 (seen through X-Cache-Tier)."""
    s = server_factory(env={"PROXYCACHE_L1_CAPACITY": "2"})
    c = s.client()
    urls = [unique_url() for _ in range(3)]
    for u in urls:
        c.upsert({"proxy_url": u})
    r = c.get(f"/v1/proxies/{key_for(urls[0])}")
    assert r.headers["X-Cache-Tier"] == "l2"


def test_default_ttl_flag(server_factory):
    s = server_factory(args=["--default-ttl", "42"])
    c = s.client()
    url = unique_url()
    c.upsert({"proxy_url": url})
    assert c.get(f"/v1/proxies/{key_for(url)}").json()["ttl_seconds"] == 42


def test_source_ttl_flag(server_factory):
    s = server_factory(args=["--source-ttl", "fast=60",
                             "--source-ttl", "slow=86400",
                             "--default-ttl", "100"])
    c = s.client()
    cases = {"fast": 60, "slow": 86400, "other": 100}
    for source, ttl in cases.items():
        url = unique_url()
        c.upsert({"proxy_url": url, "source": source})
        e = c.get(f"/v1/proxies/{key_for(url)}").json()
        assert e["ttl_seconds"] == ttl, source
    url = unique_url()
    c.upsert({"proxy_url": url, "source": "fast", "ttl_seconds": 5})
    assert c.get(f"/v1/proxies/{key_for(url)}").json()["ttl_seconds"] == 5


# ---- request ids ------------------------------------------------------------------

def test_request_id_is_echoed_or_made(client):
    r = client.get("/healthz", headers={"X-Request-Id": "abc-123_X.9"})
    assert r.headers["X-Request-Id"] == "abc-123_X.9"
    ids = {client.get("/healthz").headers["X-Request-Id"] for _ in range(5)}
    assert len(ids) == 5, "made-up request ids are distinct"
    r = client.get("/healthz", headers={"X-Request-Id": "bad id\u00e9"})
    assert r.headers["X-Request-Id"] != "bad id\u00e9"
    r = client.get(f"/v1/proxies/{key_for(unique_url())}",
                   headers={"X-Request-Id": "x" * 65})
    assert r.status_code == 404 and r.headers["X-Request-Id"] != "x" * 65
