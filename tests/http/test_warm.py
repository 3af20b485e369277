# SPDX-License-Identifier: MIT
"""POST /v1/warm with every input format (text with `# <PROTO>` headers,
JSON array, JSONL, CSV, the reference proxies.json / proxies-rich.json),
the source/ttl_seconds query overrides, per-line errors with line numbers,
and the real snapshots in shared/data/proxylists (counts from its README);
plus start-up warming with --warm."""

import datetime
import json
import subprocess
import time

import pytest

from conftest import TEST_TOKEN
from helpers import iso, key_for, parse_iso, utcnow


def _warm(client, body, ctype, **params):
    if isinstance(body, str):
        body = body.encode()
    r = client.post("/v1/warm", params=params or None, data=body,
                    headers={"Content-Type": ctype})
    assert r.status_code == 200, r.text[:500]
    doc = r.json()
    assert doc["error_count"] >= len(doc["errors"])
    assert len(doc["errors"]) == min(doc["error_count"], 100)
    return doc


def _entry(client, url):
    r = client.get(f"/v1/proxies/{key_for(url)}")
    assert r.status_code == 200, f"{url}: {r.status_code} {r.text}"
    return r.json()


TEXT = """\
10.60.0.1:8080
# a comment that is not a header
http://10.60.0.2:3128

# SOCKS5 Proxies (2)
10.60.0.3:1080
10.60.0.4:1081
# HTTPS Proxies (1)
10.60.0.5:443
socks4://10.60.0.6:4145
not a proxy at all
10.60.0.7:99999
"""


def test_text(client):
    doc = _warm(client, TEXT, "text/plain")
    assert doc["imported"] == 6
    assert (doc["updated"], doc["skipped"]) == (0, 0)
    assert doc["error_count"] == 2
    assert sorted(e["line"] for e in doc["errors"]) == [11, 12]
    assert all(e["reason"] for e in doc["errors"])
    assert set(doc["tiers"]) == {"l1", "l2", "l3"}
    for url in ["http://10.60.0.1:8080", "http://10.60.0.2:3128",
                "socks5://10.60.0.3:1080", "socks5://10.60.0.4:1081",
                "https://10.60.0.5:443", "socks4://10.60.0.6:4145"]:
        e = _entry(client, url)
        assert e["protocol"] == url.split("://")[0]
        assert e["source"] == "unknown"
        assert e["ttl_seconds"] == 3600
        assert abs((parse_iso(e["fetch_time"]) - utcnow()).total_seconds()) \
            < 30
    assert len(client.list_all()) == 6


def test_text_crlf_and_no_final_newline(client):
    doc = _warm(client, "10.61.0.1:80\r\n# SOCKS4 x\r\n10.61.0.2:1080",
                "text/plain; charset=utf-8")
    assert doc["imported"] == 2 and doc["error_count"] == 0
    _entry(client, "http://10.61.0.1:80")
    _entry(client, "socks4://10.61.0.2:1080")


def test_query_overrides_source_and_ttl(client):
    body = json.dumps([{"proxy_url": "http://10.62.0.1:80", "source": "own",
                        "ttl_seconds": 99}])
    doc = _warm(client, body, "application/json", source="warmed",
                ttl_seconds="120")
    assert doc["imported"] == 1
    e = _entry(client, "http://10.62.0.1:80")
    assert e["source"] == "warmed" and e["ttl_seconds"] == 120


def test_json_array_of_strings_and_objects(client):
    body = json.dumps([
        "http://10.63.0.1:80",
        {"proxy_url": "socks5://10.63.0.2:1080", "source": "j",
         "country": "NL", "anonymity": "elite", "latency_ms": 70},
        {"proxy_url": "ftp://10.63.0.3:21"},
        {"proxy_url": "http://10.63.0.4:80", "ttl_seconds": 30},
    ])
    doc = _warm(client, body, "application/json")
    assert doc["imported"] == 3
    assert doc["error_count"] == 1 and doc["errors"][0]["line"] == 3
    e = _entry(client, "socks5://10.63.0.2:1080")
    assert (e["source"], e["country"], e["anonymity"], e["latency_ms"]) == \
        ("j", "NL", "elite", 70)
    assert _entry(client, "http://10.63.0.4:80")["ttl_seconds"] == 30


def test_jsonl(client):
    body = "\n".join([
        json.dumps({"proxy_url": "http://10.64.0.1:80", "source": "l"}),
        json.dumps("https://10.64.0.2:443"),
        "{not json",
        json.dumps({"proxy_url": "socks4://10.64.0.3:1080"}),
        "",
    ])
    doc = _warm(client, body, "application/x-ndjson")
    assert doc["imported"] == 3
    assert doc["error_count"] == 1 and doc["errors"][0]["line"] == 3
    assert _entry(client, "http://10.64.0.1:80")["source"] == "l"
    _entry(client, "https://10.64.0.2:443")
    _entry(client, "socks4://10.64.0.3:1080")


def test_csv(client):
    body = ("proxy_url,source,country,anonymity,latency_ms\n"
            "http://10.65.0.1:80,csv-src,GB,anonymous,15\n"
            "socks5://10.65.0.2:1080,csv-src,,,\n"
            "gopher://10.65.0.3:70,csv-src,,,\n"
            "\"http://10.65.0.4:8080\",\"quoted, source\",US,elite,5\n")
    doc = _warm(client, body, "text/csv")
    assert doc["imported"] == 3
    assert doc["error_count"] == 1 and doc["errors"][0]["line"] == 4
    e = _entry(client, "http://10.65.0.1:80")
    assert (e["source"], e["country"], e["anonymity"], e["latency_ms"]) == \
        ("csv-src", "GB", "anonymous", 15)
    assert _entry(client, "http://10.65.0.4:8080")["source"] == \
        "quoted, source"
    assert _entry(client, "socks5://10.65.0.2:1080")["country"] is None


def test_duplicates_and_rewarm(client):
    body = "10.66.0.1:80\n10.66.0.2:80\n10.66.0.1:80\nhttp://10.66.0.2:80/\n"
    doc = _warm(client, body, "text/plain")
    assert (doc["imported"], doc["skipped"], doc["error_count"]) == (2, 2, 0)
    doc = _warm(client, body, "text/plain")
    assert doc["imported"] == 0
    assert doc["updated"] + doc["skipped"] == 4
    assert len(client.list_all()) == 2


def test_warm_keeps_access_statistics(client):
    client.upsert({"proxy_url": "http://10.67.0.1:80"})
    client.get(f"/v1/proxies/{key_for('http://10.67.0.1:80')}")
    _warm(client, "10.67.0.1:80\n", "text/plain", source="again")
    e = _entry(client, "http://10.67.0.1:80")
    assert e["source"] == "again" and e["access_count"] == 2


def test_warm_ttl_zero_is_accepted_never_served(client):
    doc = _warm(client, "10.68.0.1:80\n", "text/plain", ttl_seconds="0")
    assert doc["error_count"] == 0
    assert client.get(f"/v1/proxies/{key_for('http://10.68.0.1:80')}"
                      ).status_code == 404


def test_warm_with_credentials(token_server):
    c = token_server.client()
    doc = _warm(c, "http://wuser:wpass@10.69.0.1:8080\n", "text/plain")
    assert doc["imported"] == 1
    e = c.get(f"/v1/proxies/{key_for('http://10.69.0.1:8080')}",
              params={"reveal": "true"}).json()
    assert (e["username"], e["password"]) == ("wuser", "wpass")


def test_errors_list_is_capped_at_100(client):
    body = "".join(f"bad line {i}\n" for i in range(150)) + "10.70.0.1:80\n"
    doc = _warm(client, body, "text/plain")
    assert doc["error_count"] == 150 and len(doc["errors"]) == 100
    assert [e["line"] for e in doc["errors"]] == list(range(1, 101))
    assert doc["imported"] == 1


def test_unusable_document_is_400(client):
    r = client.post("/v1/warm", data=b'{"no": "proxies here"',
                    headers={"Content-Type": "application/json"})
    assert r.status_code in (200, 400), r.text
    if r.status_code == 200:
        assert r.json()["imported"] == 0 and r.json()["error_count"] >= 1
    assert client.list_all() == []


# ---- the real snapshots (shared/data/proxylists) ------------------------------

def _all_txt_urls(raw):
    proto, urls = "http", []
    for line in raw.decode().splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            proto = line[1:].split()[0].lower()
            continue
        urls.append(f"{proto}://{line}")
    return urls


@pytest.mark.slow
def test_all_txt(client, proxylists):
    raw = proxylists("all.txt")
    urls = _all_txt_urls(raw)
    # README: 6,754 address lines, no duplicate scheme://host:port.
    assert len(urls) == 6754 and len(set(urls)) == 6754
    doc = _warm(client, raw, "text/plain", source="all-txt")
    assert (doc["imported"], doc["updated"], doc["skipped"],
            doc["error_count"]) == (6754, 0, 0, 0)
    st = client.stats()
    assert st["tiers"]["l3"]["size"] == 6754
    listed = client.list_all()
    assert len(listed) == 6754
    assert {e["key"] for e in listed} == {key_for(u) for u in urls}
    protos = {}
    for e in listed:
        protos[e["protocol"]] = protos.get(e["protocol"], 0) + 1
    assert protos == {"http": 6642, "https": 56, "socks4": 28, "socks5": 28}
    assert all(e["source"] == "all-txt" for e in listed)


@pytest.mark.slow
def test_proxies_json(client, proxylists):
    raw = proxylists("proxies.json")
    doc = _warm(client, raw, "application/json")
    assert (doc["imported"], doc["error_count"]) == (6754, 0)
    assert client.stats()["tiers"]["l3"]["size"] == 6754
    data = json.loads(raw)
    for proto, addrs in data["proxies"].items():
        e = _entry(client, f"{proto}://{addrs[0]}")
        assert e["protocol"] == proto


@pytest.mark.slow
def test_proxies_rich_json(client, proxylists):
    raw = proxylists("proxies-rich.json")
    data = json.loads(raw)
    assert data["total"] == len(data["proxies"]) == 6699
    doc = _warm(client, raw, "application/json")
    assert (doc["imported"], doc["error_count"]) == (6699, 0)
    assert client.stats()["tiers"]["l3"]["size"] == 6699
    for rec in data["proxies"][:20] + data["proxies"][-5:]:
        e = _entry(client, f"{rec['protocol']}://{rec['ip']}:{rec['port']}")
        assert e["protocol"] == rec["protocol"]
        assert e["source"] == rec["source"]
        assert e["country"] == rec["country_code"]
        assert e["latency_ms"] is not None
        assert abs(e["latency_ms"] - rec["response_time"]) <= 1
        assert parse_iso(e["expires_at"]) > utcnow()


@pytest.mark.slow
def test_snapshots_together(client, proxylists):
    """all.txt then proxies.json (same content) then proxies-rich.json (a
    subset keyed by one protocol per address): nothing new after the first."""
    _warm(client, proxylists("all.txt"), "text/plain")
    doc = _warm(client, proxylists("proxies.json"), "application/json")
    assert doc["imported"] == 0
    assert doc["updated"] + doc["skipped"] == 6754
    doc = _warm(client, proxylists("proxies-rich.json"), "application/json")
    assert doc["imported"] == 0
    assert doc["updated"] + doc["skipped"] == 6699
    assert client.stats()["tiers"]["l3"]["size"] == 6754


@pytest.mark.slow
def test_startup_warm_file(server_factory, proxylists, tmp_path):
    raw = proxylists("all.txt")
    path = tmp_path / "all.txt"
    path.write_bytes(raw)
    s = server_factory(args=["--warm", str(path)])
    c = s.client()
    st = c.stats()
    assert st["warming"] is False
    assert st["tiers"]["l3"]["size"] == 6754
    assert c.get("/v1/pick", params={"count": 5}).status_code == 200
    assert c.get("/readyz").json()["status"] == "ready"


def test_startup_warm_missing_file_fails(server_factory, tmp_path):
    """A --warm file that cannot be read stops the start with a message."""
    s = server_factory(args=["--warm", str(tmp_path / "absent.txt")],
                       start=False)
    p = subprocess.run(s.command(), env=s.environment(), capture_output=True,
                       timeout=30)
    assert p.returncode != 0, p.stderr
    assert p.stderr.strip()


def test_warm_with_token_server_needs_token(token_server):
    r = token_server.client(auth=False).post(
        "/v1/warm", data=b"10.71.0.1:80\n",
        headers={"Content-Type": "text/plain"})
    assert r.status_code == 401
    assert token_server.client().post(
        "/v1/warm", data=b"10.71.0.1:80\n",
        headers={"Content-Type": "text/plain"}).status_code == 200
    assert TEST_TOKEN  # the server's token is TEST_TOKEN


def test_warm_keeps_a_recent_fetch_time_only(client):
    recent = (utcnow() - datetime.timedelta(seconds=60)).replace(
        microsecond=500000)
    body = json.dumps([
        {"proxy_url": "http://10.72.0.1:80", "fetch_time": iso(recent)},
        {"proxy_url": "http://10.72.0.2:80",
         "fetch_time": "2020-01-01T00:00:00Z"},
    ])
    doc = _warm(client, body, "application/json")
    assert doc["imported"] == 2, doc
    e = _entry(client, "http://10.72.0.1:80")
    assert parse_iso(e["fetch_time"]) == recent
    e = _entry(client, "http://10.72.0.2:80")
    assert abs((parse_iso(e["fetch_time"]) - utcnow()).total_seconds()) < 30
    assert parse_iso(e["expires_at"]) > utcnow()


@pytest.mark.slow
def test_not_ready_while_warming(server_factory, tmp_path):
    """While a large --warm file loads, /readyz is 503 (starting/warming)
    and pick is 503 with Retry-After; once ready, everything is there.
    (If warming finishes before the first probe, only the end state is
    checked.)"""
    path = tmp_path / "big.txt"
    with open(path, "w") as f:
        for i in range(100000):
            f.write(f"10.{100 + i // 65536}.{(i // 256) % 256}.{i % 256}:"
                    f"{1024 + i % 50000}\n")
    s = server_factory(args=["--warm", str(path)], wait_ready=False)
    c = s.client()
    seen_not_ready = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        r = c.get("/readyz")
        if r.status_code == 200:
            break
        assert r.status_code == 503
        assert r.json()["status"] in ("starting", "warming")
        seen_not_ready += 1
        p = c.get("/v1/pick")
        if p.status_code == 503:
            assert int(p.headers["Retry-After"]) >= 1
        elif c.get("/readyz").status_code == 503:
            raise AssertionError(f"pick answered {p.status_code} while "
                                 f"warming")
        st = c.stats()
        if c.get("/readyz").status_code == 503:
            assert st["warming"] is True or st["tiers"]["l3"]["size"] == 0
        time.sleep(0.02)
    else:
        raise AssertionError("not ready within 120 s")
    st = c.stats()
    assert st["warming"] is False
    assert st["tiers"]["l3"]["size"] == 100000
    print(f"observed {seen_not_ready} not-ready probes while warming")
