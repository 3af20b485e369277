# SPDX-License-Identifier: MIT
"""POST/GET/DELETE /v1/proxies and /v1/proxies/{key}: upsert (single and
batch, created vs updated), masking, normalisation and key derivation,
access statistics, list filters and cursor paging, delete and clear."""

import datetime

import pytest

from helpers import iso, key_for, parse_iso, unique_url, utcnow


def _get(client, key, **params):
    r = client.get(f"/v1/proxies/{key}", params=params or None)
    return r


# ---- upsert: single ---------------------------------------------------------

def test_upsert_single_created_then_updated(client):
    url = unique_url()
    key = key_for(url)
    r = client.post("/v1/proxies", json={"proxy_url": url})
    assert r.status_code == 201, r.text
    doc = r.json()
    assert doc["key"] == key and doc["outcome"] == "created"
    assert (doc["created"], doc["updated"], doc["failed"]) == (1, 0, 0)
    assert doc["items"] == [{"index": 0, "key": key, "outcome": "created"}]
    assert set(doc["tiers"]) == {"l1", "l2", "l3"}

    r = client.post("/v1/proxies", json={"proxy_url": url, "source": "again"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["key"] == key and doc["outcome"] == "updated"
    assert (doc["created"], doc["updated"], doc["failed"]) == (0, 1, 0)
    assert doc["items"] == [{"index": 0, "key": key, "outcome": "updated"}]
    assert _get(client, key).json()["source"] == "again"


def test_defaults(client):
    url = unique_url()
    before = utcnow() - datetime.timedelta(seconds=2)
    client.upsert({"proxy_url": url})
    after = utcnow() + datetime.timedelta(seconds=2)
    r = _get(client, key_for(url))
    assert r.status_code == 200
    e = r.json()
    assert e["proxy_url"] == url
    assert e["protocol"] == "http"
    assert e["source"] == "unknown"
    assert e["ttl_seconds"] == 3600
    assert e["health_status"] == "unknown"
    assert e["failure_count"] == 0
    assert e["country"] is None and e["anonymity"] is None
    assert e["latency_ms"] is None
    assert "username" not in e and "password" not in e
    ft = parse_iso(e["fetch_time"])
    assert before <= ft <= after
    assert parse_iso(e["expires_at"]) - ft == datetime.timedelta(seconds=3600)


def test_all_fields_round_trip(client):
    fetch = (utcnow() - datetime.timedelta(seconds=30)).replace(
        microsecond=123000)
    entry = {
        "proxy_url": "socks5://Example.COM:1080/",
        "username": "alice", "password": "s3cret",
        "source": "list-a", "fetch_time": iso(fetch), "ttl_seconds": 7200,
        "health_status": "healthy", "failure_count": 0, "country": "de",
        "anonymity": "elite", "latency_ms": 250,
    }
    r = client.upsert(entry)
    key = key_for("socks5://example.com:1080")
    assert r.json()["key"] == key
    r = _get(client, key)
    assert r.status_code == 200
    e = r.json()
    assert e["key"] == key
    assert e["proxy_url"] == "socks5://example.com:1080"
    assert e["protocol"] == "socks5"
    assert e["username"] == "***" and e["password"] == "***"
    assert e["source"] == "list-a"
    assert parse_iso(e["fetch_time"]) == fetch
    assert e["ttl_seconds"] == 7200
    assert parse_iso(e["expires_at"]) == fetch + datetime.timedelta(
        seconds=7200)
    assert e["health_status"] == "healthy"
    assert e["failure_count"] == 0
    assert e["country"] == "DE"
    assert e["anonymity"] == "elite"
    assert e["latency_ms"] == 250
    assert e["access_count"] == 1
    assert e["last_accessed"] is not None
    assert abs((parse_iso(e["last_accessed"]) - utcnow()).total_seconds()) < 10
    assert e["tier"] == "l1"
    assert r.headers["X-Cache-Tier"] == e["tier"]


@pytest.mark.parametrize("given,normalised", [
    ("HTTP://Example.COM:8080/", "http://example.com:8080"),
    ("https://1.2.3.4:443", "https://1.2.3.4:443"),
    ("SOCKS4://10.0.0.1:1080", "socks4://10.0.0.1:1080"),
    ("socks5://[2001:DB8::1]:1080", "socks5://[2001:db8::1]:1080"),
    ("http://user:pw@Host.Example:3128", "http://host.example:3128"),
    ("http://1.2.3.4:1", "http://1.2.3.4:1"),
    ("http://1.2.3.4:65535/", "http://1.2.3.4:65535"),
])
def test_normalisation_and_key(client, given, normalised):
    r = client.upsert({"proxy_url": given})
    key = r.json()["key"]
    assert key == key_for(normalised)
    e = _get(client, key).json()
    assert e["proxy_url"] == normalised
    assert e["protocol"] == normalised.split("://")[0]


def test_same_proxy_differently_written_is_one_entry(client):
    r1 = client.upsert({"proxy_url": "http://Proxy.Example:8080/"})
    r2 = client.upsert({"proxy_url": "HTTP://proxy.example:8080"})
    r3 = client.upsert({"proxy_url": "http://u:p@proxy.example:8080"})
    assert r1.status_code == 201
    assert r2.status_code == 200 and r2.json()["outcome"] == "updated"
    assert r3.status_code == 200 and r3.json()["outcome"] == "updated"
    assert r1.json()["key"] == r2.json()["key"] == r3.json()["key"]
    assert len(client.list_all()) == 1


def test_credentials_in_url_are_moved_and_masked(client):
    url = "http://bob:hunter2@10.9.8.7:3128"
    key = client.upsert({"proxy_url": url}).json()["key"]
    e = _get(client, key).json()
    assert e["proxy_url"] == "http://10.9.8.7:3128"
    assert e["username"] == "***" and e["password"] == "***"
    assert "hunter2" not in _get(client, key).text


def test_upsert_keeps_access_statistics_and_health(client):
    url = unique_url()
    key = client.upsert({"proxy_url": url, "source": "one"}).json()["key"]
    for _ in range(2):
        assert _get(client, key).status_code == 200
    r = client.post(f"/v1/proxies/{key}/health", json={"status": "failure"})
    assert r.status_code == 200 and r.json()["failure_count"] == 1
    r = client.upsert({"proxy_url": url, "source": "two"})
    assert r.status_code == 200 and r.json()["outcome"] == "updated"
    e = _get(client, key).json()
    assert e["source"] == "two"
    assert e["access_count"] == 3
    assert e["failure_count"] == 1
    assert e["health_status"] == "unhealthy"


def test_upsert_replaces_only_the_members_sent(client):
    url = unique_url()
    client.upsert({"proxy_url": url, "source": "keep-me", "country": "FR",
                   "anonymity": "anonymous", "latency_ms": 40,
                   "ttl_seconds": 5000})
    client.upsert({"proxy_url": url, "latency_ms": 80})
    e = _get(client, key_for(url)).json()
    assert e["latency_ms"] == 80
    assert e["source"] == "keep-me"
    assert e["country"] == "FR"
    assert e["anonymity"] == "anonymous"
    assert e["ttl_seconds"] == 5000


def test_read_only_members_are_accepted_and_ignored(client):
    url = unique_url()
    key = key_for(url)
    r = client.post("/v1/proxies", json={
        "proxy_url": url, "key": key, "protocol": "http",
        "expires_at": "2000-01-01T00:00:00Z", "access_count": 999,
        "last_accessed": "2000-01-01T00:00:00Z", "tier": "l3"})
    assert r.status_code == 201, r.text
    e = _get(client, key).json()
    assert e["access_count"] == 1
    assert parse_iso(e["expires_at"]) > utcnow()
    assert parse_iso(e["last_accessed"]).year > 2000


def test_charset_parameter_is_accepted(client):
    url = unique_url()
    r = client.post("/v1/proxies", data=f'{{"proxy_url":"{url}"}}',
                    headers={"Content-Type":
                             "application/json; charset=utf-8"})
    assert r.status_code == 201, r.text


# ---- upsert: batch ---------------------------------------------------------------

def test_batch_per_item_outcomes(client):
    existing = unique_url()
    client.upsert({"proxy_url": existing})
    new1, new2 = unique_url(), unique_url()
    r = client.post("/v1/proxies", json={"proxies": [
        {"proxy_url": new1},
        {"source": "no url"},
        {"proxy_url": existing, "source": "b"},
        {"proxy_url": "http://1.2.3.4:0"},
        {"proxy_url": new2, "ttl_seconds": 60},
    ]})
    assert r.status_code == 201, r.text
    doc = r.json()
    assert "key" not in doc and "outcome" not in doc
    assert (doc["created"], doc["updated"], doc["failed"]) == (2, 1, 2)
    items = sorted(doc["items"], key=lambda i: i["index"])
    assert [i["index"] for i in items] == [0, 1, 2, 3, 4]
    assert items[0] == {"index": 0, "key": key_for(new1), "outcome": "created"}
    assert items[1]["outcome"] == "error"
    assert items[1]["error"]["field"] == "proxy_url"
    assert items[2] == {"index": 2, "key": key_for(existing),
                        "outcome": "updated"}
    assert items[3]["outcome"] == "error"
    assert items[3]["error"]["field"] == "proxy_url"
    assert items[4] == {"index": 4, "key": key_for(new2), "outcome": "created"}
    assert _get(client, key_for(new1)).status_code == 200
    assert _get(client, key_for(new2)).json()["ttl_seconds"] == 60
    assert len(client.list_all()) == 3


def test_batch_all_updates_is_200(client):
    urls = [unique_url() for _ in range(3)]
    r = client.upsert_many([{"proxy_url": u} for u in urls])
    assert r.status_code == 201
    r = client.upsert_many([{"proxy_url": u, "source": "x"} for u in urls])
    assert r.status_code == 200, r.text
    doc = r.json()
    assert (doc["created"], doc["updated"], doc["failed"]) == (0, 3, 0)


def test_batch_all_invalid_is_200_with_failures(client):
    r = client.post("/v1/proxies", json={"proxies": [
        {"proxy_url": "ftp://1.2.3.4:21"}, {"proxy_url": 5}]})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert (doc["created"], doc["updated"], doc["failed"]) == (0, 0, 2)
    assert all(i["outcome"] == "error" for i in doc["items"])
    assert client.list_all() == []


def test_batch_same_proxy_twice_is_created_then_updated(client):
    url = unique_url()
    r = client.upsert_many([{"proxy_url": url, "source": "first"},
                            {"proxy_url": url.upper(), "source": "second"}])
    assert r.status_code == 201
    items = sorted(r.json()["items"], key=lambda i: i["index"])
    assert [i["outcome"] for i in items] == ["created", "updated"]
    assert _get(client, key_for(url)).json()["source"] == "second"


@pytest.mark.slow
def test_batch_of_10000_is_accepted(client):
    urls = [f"http://10.77.{i // 250}.{i % 250}:{8000 + i % 7}"
            for i in range(10000)]
    r = client.upsert_many([{"proxy_url": u} for u in urls])
    assert r.status_code == 201, r.text[:300]
    doc = r.json()
    assert (doc["created"], doc["updated"], doc["failed"]) == (10000, 0, 0)
    assert len(doc["items"]) == 10000
    assert client.stats()["tiers"]["l3"]["size"] == 10000
    assert _get(client, key_for(urls[-1])).status_code == 200


@pytest.mark.slow
def test_batch_of_10001_is_413_and_nothing_stored(client):
    writes = client.stats()["overall"]["writes"]
    r = client.post("/v1/proxies", json={"proxies": [
        {"proxy_url": f"http://10.78.{i // 250}.{i % 250}:8080"}
        for i in range(10001)]})
    assert r.status_code == 413, r.text[:300]
    assert client.list_all() == []
    assert client.stats()["overall"]["writes"] == writes


# ---- GET ---------------------------------------------------------------------------

def test_get_absent_is_404(client):
    r = _get(client, key_for(unique_url()))
    assert r.status_code == 404


def test_get_counts_accesses(client):
    url = unique_url()
    key = client.upsert({"proxy_url": url}).json()["key"]
    seen = []
    for n in range(1, 4):
        e = _get(client, key).json()
        assert e["access_count"] == n
        seen.append(parse_iso(e["last_accessed"]))
    assert seen == sorted(seen)


def test_get_reveal_false_is_masked(client):
    url = "http://carol:pw1@10.1.1.1:3128"
    key = client.upsert({"proxy_url": url}).json()["key"]
    e = _get(client, key, reveal="false").json()
    assert e["username"] == "***" and e["password"] == "***"


def test_explicit_credentials_win_over_url(server_factory):
    from conftest import TEST_TOKEN
    s = server_factory(token=TEST_TOKEN)
    c = s.client()
    key = c.upsert({"proxy_url": "http://urluser:urlpass@10.2.2.2:80",
                    "username": "member-user",
                    "password": "member-pass"}).json()["key"]
    e = _get(c, key, reveal="true").json()
    assert (e["username"], e["password"]) == ("member-user", "member-pass")


# ---- DELETE -----------------------------------------------------------------------

def test_delete(client):
    url = unique_url()
    key = client.upsert({"proxy_url": url}).json()["key"]
    r = client.delete(f"/v1/proxies/{key}")
    assert r.status_code == 204 and r.content == b""
    assert _get(client, key).status_code == 404
    assert client.delete(f"/v1/proxies/{key}").status_code == 404
    st = client.stats()
    assert all(st["tiers"][t]["size"] == 0 for t in ("l1", "l2", "l3"))
    # It can be written again and is new.
    assert client.upsert({"proxy_url": url}).status_code == 201


def test_delete_absent_is_404(client):
    assert client.delete(f"/v1/proxies/{key_for(unique_url())}"
                         ).status_code == 404


def test_clear(client):
    urls = [unique_url() for _ in range(7)]
    client.upsert_many([{"proxy_url": u} for u in urls])
    ev_before = client.stats()["tiers"]
    r = client.delete("/v1/proxies")
    assert r.status_code == 200
    assert r.json() == {"removed": 7}
    assert client.list_all() == []
    for u in urls:
        assert _get(client, key_for(u)).status_code == 404
    st = client.stats()
    for t in ("l1", "l2", "l3"):
        assert st["tiers"][t]["size"] == 0
        assert st["tiers"][t]["evictions"] == ev_before[t]["evictions"], \
            "clear counts no evictions"
    assert client.delete("/v1/proxies").json() == {"removed": 0}


# ---- list -----------------------------------------------------------------------------

@pytest.fixture
def populated(client):
    """25 entries: sources a/b/c, health healthy/unhealthy/unknown, 3 with
    credentials."""
    entries = []
    healths = ["healthy", "unhealthy", "unknown"]
    for i in range(25):
        e = {"proxy_url": unique_url(), "source": "abc"[i % 3],
             "health_status": healths[(i // 3) % 3]}
        if i < 3:
            e["username"], e["password"] = f"user{i}", f"pass{i}"
        entries.append(e)
    r = client.upsert_many(entries)
    assert r.json()["created"] == 25
    return entries


def test_list_everything(client, populated):
    r = client.get("/v1/proxies")
    assert r.status_code == 200
    doc = r.json()
    assert doc["count"] == len(doc["items"]) == 25
    assert doc["next_cursor"] is None
    assert {e["key"] for e in doc["items"]} == \
        {key_for(e["proxy_url"]) for e in populated}
    for e in doc["items"]:
        assert "tier" not in e
        if "username" in e:
            assert e["username"] == "***" and e["password"] == "***"
    assert sum(1 for e in doc["items"] if "username" in e) == 3
    assert "pass0" not in r.text


@pytest.mark.parametrize("params,pred", [
    ({"source": "a"}, lambda e: e["source"] == "a"),
    ({"source": "c"}, lambda e: e["source"] == "c"),
    ({"source": "zzz"}, lambda e: False),
    ({"health": "healthy"}, lambda e: e["health_status"] == "healthy"),
    ({"health": "unhealthy"}, lambda e: e["health_status"] == "unhealthy"),
    ({"health": "unknown"}, lambda e: e["health_status"] == "unknown"),
    ({"health": "healthy", "source": "b"},
     lambda e: e["health_status"] == "healthy" and e["source"] == "b"),
])
def test_list_filters(client, populated, params, pred):
    want = {key_for(e["proxy_url"]) for e in populated if pred(e)}
    got = client.list_all(limit=4, **params)
    keys = [e["key"] for e in got]
    assert len(keys) == len(set(keys))
    assert set(keys) == want
    for e in got:
        if "source" in params:
            assert e["source"] == params["source"]
        if "health" in params:
            assert e["health_status"] == params["health"]


@pytest.mark.parametrize("limit", [1, 7, 25, 1000])
def test_list_paging_complete(client, populated, limit):
    pages = 0
    seen = []
    cursor = None
    while True:
        params = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        doc = client.get("/v1/proxies", params=params).json()
        pages += 1
        assert doc["count"] == len(doc["items"]) <= limit
        seen.extend(e["key"] for e in doc["items"])
        cursor = doc["next_cursor"]
        if cursor is None:
            break
        assert pages <= 30
    assert len(seen) == len(set(seen)) == 25
    assert pages >= -(-25 // limit)


def test_list_default_limit_is_100(client):
    client.upsert_many([{"proxy_url": unique_url()} for _ in range(130)])
    doc = client.get("/v1/proxies").json()
    assert doc["count"] == 100 and doc["next_cursor"] is not None
    rest = client.get("/v1/proxies",
                      params={"cursor": doc["next_cursor"]}).json()
    assert rest["count"] == 30 and rest["next_cursor"] is None


def test_list_paging_is_stable_under_writes(client, populated):
    """Entries present for the whole walk appear exactly once, whatever is
    added and removed between pages."""
    original = {key_for(e["proxy_url"]) for e in populated}
    removed = set()
    seen = []
    cursor = None
    for page in range(100):
        params = {"limit": 5}
        if cursor:
            params["cursor"] = cursor
        doc = client.get("/v1/proxies", params=params).json()
        seen.extend(e["key"] for e in doc["items"])
        # Churn between pages: add two, delete one not yet seen.
        client.upsert_many([{"proxy_url": unique_url()} for _ in range(2)])
        victims = sorted(original - set(seen) - removed)
        if victims:
            v = victims[-1]
            assert client.delete(f"/v1/proxies/{v}").status_code == 204
            removed.add(v)
        cursor = doc["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)), "an entry was listed twice"
    assert original - removed <= set(seen), "an entry was skipped"


def test_list_is_not_an_access(client, populated):
    before = client.stats()
    client.list_all(limit=3)
    after = client.stats()
    assert after["overall"]["lookups"] == before["overall"]["lookups"]
    for t in ("l1", "l2", "l3"):
        assert after["tiers"][t]["promotions"] == \
            before["tiers"][t]["promotions"]
    e = _get(client, key_for(populated[5]["proxy_url"])).json()
    assert e["access_count"] == 1


def test_list_excludes_expired(client):
    live = unique_url()
    client.upsert_many([{"proxy_url": live},
                        {"proxy_url": unique_url(), "ttl_seconds": 0}])
    assert [e["key"] for e in client.list_all()] == [key_for(live)]
