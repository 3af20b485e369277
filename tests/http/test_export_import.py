# SPDX-License-Identifier: MIT
"""GET /v1/export and POST /v1/import: JSONL with credentials as Fernet
tokens interoperable with Python's cryptography.fernet, no plain text in an
export, a lossless round trip (clear + import, then reveal shows the same
credentials), tier selection, newest fetch_time wins, expired lines
skipped, undecryptable tokens are per-line errors, key rotation and the
PROXYWHIRL_ fallback variable."""

import datetime
import json

import pytest
from cryptography.fernet import Fernet, InvalidToken

from conftest import OTHER_KEY, TEST_KEY, TEST_TOKEN, THIRD_KEY
from helpers import iso, key_for, parse_iso, unique_url, utcnow


def _export(client, **params):
    r = client.get("/v1/export", params=params or None)
    assert r.status_code == 200, r.text[:300]
    assert r.headers["Content-Type"].split(";")[0].strip() == \
        "application/x-ndjson"
    return [json.loads(line) for line in r.text.splitlines() if line]


def _import(client, lines, ctype="application/x-ndjson"):
    if isinstance(lines, list):
        body = "".join((l if isinstance(l, str) else json.dumps(l)) + "\n"
                       for l in lines).encode()
    else:
        body = lines
    r = client.post("/v1/import", data=body, headers={"Content-Type": ctype})
    assert r.status_code == 200, r.text[:500]
    return r.json()


def _seed(client):
    """A few entries with and without credentials and rich fields."""
    fetch = (utcnow() - datetime.timedelta(minutes=5)).replace(
        microsecond=250000)
    entries = [
        {"proxy_url": "http://exuser1:expass1@10.80.0.1:8080",
         "source": "ex", "fetch_time": iso(fetch), "ttl_seconds": 7200,
         "health_status": "healthy", "country": "SE", "anonymity": "elite",
         "latency_ms": 33},
        {"proxy_url": "socks5://10.80.0.2:1080", "username": "exuser2",
         "password": "p@ss:w/rd \u00e9", "source": "ex2"},
        {"proxy_url": "https://10.80.0.3:443", "failure_count": 1,
         "health_status": "unhealthy"},
        {"proxy_url": "socks4://10.80.0.4:4145"},
    ]
    client.upsert_many(entries)
    # Some access statistics to carry over.
    for _ in range(2):
        client.get(f"/v1/proxies/{key_for('https://10.80.0.3:443')}")
    return entries


SECRETS = [b"exuser1", b"expass1", b"exuser2", "p@ss:w/rd \u00e9".encode()]


def test_export_has_tokens_not_plain_text(client):
    _seed(client)
    r = client.get("/v1/export")
    for secret in SECRETS:
        assert secret not in r.content
    lines = [json.loads(l) for l in r.text.splitlines()]
    assert len(lines) == 4
    by_url = {l["proxy_url"]: l for l in lines}
    f = Fernet(TEST_KEY.encode())
    l1 = by_url["http://10.80.0.1:8080"]
    assert f.decrypt(l1["username"].encode()) == b"exuser1"
    assert f.decrypt(l1["password"].encode()) == b"expass1"
    l2 = by_url["socks5://10.80.0.2:1080"]
    assert f.decrypt(l2["password"].encode()).decode() == "p@ss:w/rd \u00e9"
    assert "username" not in by_url["socks4://10.80.0.4:4145"]
    assert l1["key"] == key_for("http://10.80.0.1:8080")
    assert (l1["country"], l1["anonymity"], l1["latency_ms"]) == \
        ("SE", "elite", 33)
    assert by_url["https://10.80.0.3:443"]["access_count"] == 2


def test_export_is_not_an_access(client):
    _seed(client)
    before = client.stats()
    _export(client)
    after = client.stats()
    assert after["overall"]["lookups"] == before["overall"]["lookups"]
    for t in ("l1", "l2", "l3"):
        assert after["tiers"][t]["promotions"] == \
            before["tiers"][t]["promotions"]


def test_export_empty(client):
    assert _export(client) == []


def test_round_trip_loses_nothing(token_server):
    c = token_server.client()
    _seed(c)
    first = _export(c)
    assert len(first) == 4
    r = c.delete("/v1/proxies")
    assert r.json() == {"removed": 4}
    doc = _import(c, first)
    assert (doc["imported"], doc["updated"], doc["skipped"],
            doc["error_count"]) == (4, 0, 0, 0)
    second = _export(c)
    f = Fernet(TEST_KEY.encode())

    def plain(lines):
        out = {}
        for l in lines:
            l = dict(l)
            for m in ("username", "password"):
                if m in l:
                    l[m] = f.decrypt(l[m].encode())
            out[l["key"]] = l
        return out

    assert plain(second) == plain(first)
    # Reveal shows the same credentials as before the clear.
    e = c.get(f"/v1/proxies/{key_for('http://10.80.0.1:8080')}",
              params={"reveal": "true"}).json()
    assert (e["username"], e["password"]) == ("exuser1", "expass1")
    e = c.get(f"/v1/proxies/{key_for('socks5://10.80.0.2:1080')}",
              params={"reveal": "true"}).json()
    assert (e["username"], e["password"]) == ("exuser2", "p@ss:w/rd \u00e9")


def test_import_into_another_server_with_the_same_key(server_factory):
    a = server_factory(token=TEST_TOKEN)
    ca = a.client()
    _seed(ca)
    lines = _export(ca)
    b = server_factory(token=TEST_TOKEN)
    cb = b.client()
    assert _import(cb, lines)["imported"] == 4
    e = cb.get(f"/v1/proxies/{key_for('http://10.80.0.1:8080')}",
               params={"reveal": "true"}).json()
    assert e["password"] == "expass1"


@pytest.mark.parametrize("tier", ["l1", "l2", "l3"])
def test_export_by_tier(server_factory, tier):
    s = server_factory(args=["--l1-capacity", "2", "--l2-capacity", "4"])
    c = s.client()
    urls = [unique_url() for _ in range(6)]
    for u in urls:
        c.upsert({"proxy_url": u})
    lines = _export(c, tier=tier)
    keys = {l["key"] for l in lines}
    want = {"l1": 2, "l2": 4, "l3": 6}[tier]
    assert len(lines) == want
    assert keys <= {key_for(u) for u in urls}
    # The most recent writes are in every tier.
    assert key_for(urls[-1]) in keys
    st = c.stats()["tiers"][tier]
    assert st["size"] == want


def test_import_recomputes_expiry_and_skips_expired(client):
    now = utcnow()
    live = unique_url()
    dead = unique_url()
    lines = [
        {"key": key_for(live), "proxy_url": live, "source": "imp",
         "protocol": "http", "fetch_time": iso(now - datetime.timedelta(
             seconds=10)), "ttl_seconds": 600,
         "expires_at": iso(now - datetime.timedelta(days=1)),
         "health_status": "unknown", "failure_count": 0, "access_count": 0},
        {"key": key_for(dead), "proxy_url": dead, "source": "imp",
         "protocol": "http", "fetch_time": iso(now - datetime.timedelta(
             hours=2)), "ttl_seconds": 60,
         "expires_at": iso(now + datetime.timedelta(days=1)),
         "health_status": "unknown", "failure_count": 0, "access_count": 0},
    ]
    doc = _import(client, lines)
    assert (doc["imported"], doc["skipped"], doc["error_count"]) == (1, 1, 0)
    e = client.get(f"/v1/proxies/{key_for(live)}").json()
    assert parse_iso(e["expires_at"]) - parse_iso(e["fetch_time"]) == \
        datetime.timedelta(seconds=600)
    assert client.get(f"/v1/proxies/{key_for(dead)}").status_code == 404


def _line(url, fetch, source, ttl=3600):
    return {"key": key_for(url), "proxy_url": url, "source": source,
            "protocol": url.split("://")[0], "fetch_time": iso(fetch),
            "ttl_seconds": ttl, "expires_at": iso(
                fetch + datetime.timedelta(seconds=ttl)),
            "health_status": "unknown", "failure_count": 0,
            "access_count": 0}


def test_import_newest_fetch_time_wins(client):
    url = unique_url()
    t0 = (utcnow() - datetime.timedelta(minutes=30)).replace(microsecond=0)
    client.upsert({"proxy_url": url, "source": "stored",
                   "fetch_time": iso(t0)})
    # Older and equal: skipped, unchanged.
    doc = _import(client, [_line(url, t0 - datetime.timedelta(minutes=1),
                                 "older"), _line(url, t0, "same-time")])
    assert (doc["imported"], doc["updated"], doc["skipped"]) == (0, 0, 2)
    assert client.get(f"/v1/proxies/{key_for(url)}").json()["source"] == \
        "stored"
    # Strictly newer: wins.
    doc = _import(client, [_line(url, t0 + datetime.timedelta(seconds=1),
                                 "newer")])
    assert (doc["imported"], doc["updated"], doc["skipped"]) == (0, 1, 0)
    e = client.get(f"/v1/proxies/{key_for(url)}").json()
    assert e["source"] == "newer"
    assert parse_iso(e["fetch_time"]) == t0 + datetime.timedelta(seconds=1)


def test_import_token_of_unknown_key_is_a_line_error(client):
    good, bad = unique_url(), unique_url()
    foreign = Fernet(OTHER_KEY.encode())
    now = utcnow()
    bad_line = _line(bad, now, "foreign")
    bad_line["username"] = foreign.encrypt(b"u").decode()
    bad_line["password"] = foreign.encrypt(b"p").decode()
    doc = _import(client, [_line(good, now, "ok"), bad_line])
    assert (doc["imported"], doc["error_count"]) == (1, 1)
    assert doc["errors"][0]["line"] == 2
    assert client.get(f"/v1/proxies/{key_for(bad)}").status_code == 404


def test_import_bad_lines_are_reported_with_line_numbers(client):
    now = utcnow()
    a, b = unique_url(), unique_url()
    wrong_key = _line(unique_url(), now, "x")
    wrong_key["key"] = "f" * 64
    bad_health = _line(unique_url(), now, "x")
    bad_health["health_status"] = "great"
    lines = [_line(a, now, "x"), "{broken", wrong_key, bad_health,
             _line(b, now, "x"), "[]"]
    doc = _import(client, lines)
    assert doc["imported"] == 2
    assert doc["error_count"] == 4
    assert sorted(e["line"] for e in doc["errors"]) == [2, 3, 4, 6]


def test_import_plain_text_content_type(client):
    url = unique_url()
    doc = _import(client, [_line(url, utcnow(), "txt")], ctype="text/plain")
    assert doc["imported"] == 1
    assert client.get(f"/v1/proxies/{key_for(url)}").status_code == 200


# ---- keys ----------------------------------------------------------------------

def test_key_rotation(server_factory):
    """Encrypt with the first key, decrypt with any."""
    old = server_factory(token=TEST_TOKEN,
                         env={"PROXYCACHE_ENCRYPTION_KEY": OTHER_KEY})
    co = old.client()
    co.upsert({"proxy_url": "http://rotuser:rotpass@10.81.0.1:80"})
    lines = _export(co)
    assert Fernet(OTHER_KEY.encode()).decrypt(
        lines[0]["password"].encode()) == b"rotpass"

    new = server_factory(token=TEST_TOKEN, env={
        "PROXYCACHE_ENCRYPTION_KEY": f"{THIRD_KEY},{OTHER_KEY}"})
    cn = new.client()
    assert _import(cn, lines)["imported"] == 1
    e = cn.get(f"/v1/proxies/{key_for('http://10.81.0.1:80')}",
               params={"reveal": "true"}).json()
    assert e["password"] == "rotpass"
    cn.upsert({"proxy_url": "http://newuser:newpass@10.81.0.2:80"})
    fresh = [l for l in _export(cn)
             if l["proxy_url"] == "http://10.81.0.2:80"][0]
    assert Fernet(THIRD_KEY.encode()).decrypt(
        fresh["password"].encode()) == b"newpass"
    with pytest.raises(InvalidToken):
        Fernet(OTHER_KEY.encode()).decrypt(fresh["password"].encode())


def test_proxywhirl_key_fallback(server_factory):
    s = server_factory(env={"PROXYCACHE_ENCRYPTION_KEY": None,
                            "PROXYWHIRL_CACHE_ENCRYPTION_KEY": THIRD_KEY})
    c = s.client()
    c.upsert({"proxy_url": "http://pwuser:pwpass@10.82.0.1:80"})
    line = _export(c)[0]
    assert Fernet(THIRD_KEY.encode()).decrypt(
        line["password"].encode()) == b"pwpass"


def test_no_key_drops_credentials_and_warns_once(server_factory):
    s = server_factory(env={"PROXYCACHE_ENCRYPTION_KEY": None})
    c = s.client()
    r = c.upsert({"proxy_url": "http://nkuser:nkpass@10.83.0.1:80"})
    assert r.status_code == 201
    e = c.get(f"/v1/proxies/{key_for('http://10.83.0.1:80')}").json()
    assert "username" not in e and "password" not in e
    line = _export(c)[0]
    assert "username" not in line and "password" not in line

    def warnings():
        return [l for l in s.logs().splitlines()
                if "WARN" in l.upper() and "nkpass" not in l]

    n = len(warnings())
    assert n >= 1, s.logs()
    c.upsert({"proxy_url": "http://nkuser2:nkpass2@10.83.0.2:80"})
    c.upsert({"proxy_url": "http://nkuser3:nkpass3@10.83.0.3:80"})
    assert len(warnings()) == n, "the missing-key warning is said once"
    assert "nkpass" not in s.logs()


def test_ephemeral_key_persists_credentials_for_the_process(server_factory):
    s = server_factory(token=TEST_TOKEN, args=["--ephemeral-key"],
                       env={"PROXYCACHE_ENCRYPTION_KEY": None})
    c = s.client()
    c.upsert({"proxy_url": "http://ephuser:ephpass@10.84.0.1:80"})
    e = c.get(f"/v1/proxies/{key_for('http://10.84.0.1:80')}",
              params={"reveal": "true"}).json()
    assert e["password"] == "ephpass"
    line = _export(c)[0]
    assert line["password"].startswith("gAAAAA")
    with pytest.raises(InvalidToken):
        Fernet(TEST_KEY.encode()).decrypt(line["password"].encode())


def test_import_refuses_a_future_fetch_time(client):
    """A line dated years ahead would never expire: a per-line error."""
    url = unique_url()
    doc = _import(client, [_line(url, utcnow() + datetime.timedelta(days=365),
                                 "future")])
    assert (doc["imported"], doc["error_count"]) == (0, 1)
    assert doc["errors"][0]["line"] == 1
    assert "future" in doc["errors"][0]["reason"]
    assert client.get(f"/v1/proxies/{key_for(url)}").status_code == 404
