# SPDX-License-Identifier: MIT
"""GET /v1/pick: count, filters, never unhealthy or expired, distinct,
[] when the filters match nothing, 503 + Retry-After while nothing usable
exists, weighting toward low latency."""

import collections

import pytest

from helpers import key_for, unique_url


def _pick(client, **params):
    r = client.get("/v1/pick", params=params or None)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["count"] == len(doc["proxies"])
    keys = [p["key"] for p in doc["proxies"]]
    assert len(keys) == len(set(keys)), "pick returned duplicates"
    return doc["proxies"]


def test_empty_cache_is_503_with_retry_after(client):
    r = client.get("/v1/pick")
    assert r.status_code == 503, r.text
    assert int(r.headers["Retry-After"]) >= 1


def test_only_unusable_entries_is_503(client):
    client.upsert_many([
        {"proxy_url": unique_url(), "health_status": "unhealthy"},
        {"proxy_url": unique_url(), "ttl_seconds": 0},
    ])
    r = client.get("/v1/pick")
    assert r.status_code == 503, r.text
    assert int(r.headers["Retry-After"]) >= 1


def test_default_count_is_one(client):
    client.upsert_many([{"proxy_url": unique_url()} for _ in range(5)])
    assert len(_pick(client)) == 1


@pytest.mark.parametrize("count,have,want", [
    (1, 3, 1), (3, 3, 3), (5, 3, 3), (100, 120, 100), (50, 10, 10)])
def test_count(client, count, have, want):
    client.upsert_many([{"proxy_url": unique_url()} for _ in range(have)])
    got = _pick(client, count=count)
    assert len(got) == want


def test_never_unhealthy_nor_expired(client):
    good = [unique_url() for _ in range(3)]
    entries = [{"proxy_url": u, "health_status": h}
               for u, h in zip(good, ["healthy", "unknown", "healthy"])]
    bad = [unique_url() for _ in range(6)]
    entries += [{"proxy_url": u, "health_status": "unhealthy"}
                for u in bad[:4]]
    entries += [{"proxy_url": u, "ttl_seconds": 0} for u in bad[4:]]
    client.upsert_many(entries)
    good_keys = {key_for(u) for u in good}
    for _ in range(20):
        got = _pick(client, count=10)
        assert {p["key"] for p in got} == good_keys
        for p in got:
            assert p["health_status"] in ("healthy", "unknown")
            assert "tier" not in p


def test_entry_becomes_unpickable_after_failure_report(client):
    url = unique_url()
    key = client.upsert({"proxy_url": url}).json()["key"]
    other = unique_url()
    client.upsert({"proxy_url": other})
    r = client.post(f"/v1/proxies/{key}/health", json={"status": "failure"})
    assert r.status_code == 200
    for _ in range(10):
        assert [p["key"] for p in _pick(client, count=5)] == [key_for(other)]


FILTER_SET = [
    {"proxy_url": "http://10.40.0.1:80", "country": "US",
     "anonymity": "elite", "latency_ms": 50, "source": "s1"},
    {"proxy_url": "https://10.40.0.2:443", "country": "DE",
     "anonymity": "anonymous", "latency_ms": 150, "source": "s1"},
    {"proxy_url": "socks4://10.40.0.3:1080", "country": "US",
     "anonymity": "transparent", "latency_ms": 900, "source": "s2"},
    {"proxy_url": "socks5://10.40.0.4:1080", "country": "FR",
     "anonymity": "elite", "latency_ms": 20, "source": "s2"},
    {"proxy_url": "socks5://10.40.0.5:1080", "country": "DE",
     "anonymity": "elite", "latency_ms": 400, "source": "s3"},
]


def _proto(e):
    return e["proxy_url"].split("://")[0]


@pytest.mark.parametrize("params,pred", [
    ({"protocol": "socks5"}, lambda e: _proto(e) == "socks5"),
    ({"protocol": "https"}, lambda e: _proto(e) == "https"),
    ({"source": "s2"}, lambda e: e["source"] == "s2"),
    ({"country": "DE"}, lambda e: e["country"] == "DE"),
    ({"anonymity": "elite"}, lambda e: e["anonymity"] == "elite"),
    ({"max_latency_ms": "150"}, lambda e: e["latency_ms"] <= 150),
    ({"max_latency_ms": "0"}, lambda e: e["latency_ms"] <= 0),
    ({"protocol": "socks5", "country": "DE"},
     lambda e: _proto(e) == "socks5" and e["country"] == "DE"),
    ({"anonymity": "elite", "max_latency_ms": "100"},
     lambda e: e["anonymity"] == "elite" and e["latency_ms"] <= 100),
    ({"protocol": "socks4", "anonymity": "elite"}, lambda e: False),
    ({"country": "JP"}, lambda e: False),
    ({"source": "nobody"}, lambda e: False),
], ids=lambda v: repr(v) if isinstance(v, dict) else None)
def test_filters(client, params, pred):
    client.upsert_many(FILTER_SET)
    want = {key_for(e["proxy_url"]) for e in FILTER_SET if pred(e)}
    got = _pick(client, count=100, **params)
    assert {p["key"] for p in got} == want
    for p in got:
        if "protocol" in params:
            assert p["protocol"] == params["protocol"]
        if "max_latency_ms" in params:
            assert p["latency_ms"] is not None
            assert p["latency_ms"] <= int(params["max_latency_ms"])


def test_filters_matching_nothing_is_empty_not_503(client):
    client.upsert({"proxy_url": "http://10.41.0.1:80"})
    r = client.get("/v1/pick", params={"protocol": "socks5"})
    assert r.status_code == 200
    assert r.json() == {"proxies": [], "count": 0}


def test_credentials_are_masked(client):
    client.upsert({"proxy_url": "http://pickuser:pickpass@10.42.0.1:80"})
    r = client.get("/v1/pick")
    assert r.status_code == 200
    p = r.json()["proxies"][0]
    assert p["username"] == "***" and p["password"] == "***"
    assert "pickpass" not in r.text


def test_random_and_weighted_toward_low_latency(client):
    fast, slow = "http://10.43.0.1:80", "http://10.43.0.2:80"
    client.upsert_many([{"proxy_url": fast, "latency_ms": 10},
                        {"proxy_url": slow, "latency_ms": 20000}])
    counts = collections.Counter(
        _pick(client)[0]["key"] for _ in range(300))
    assert counts[key_for(fast)] > counts[key_for(slow)], counts


def test_random_choice_covers_every_candidate(client):
    urls = [unique_url() for _ in range(4)]
    client.upsert_many([{"proxy_url": u} for u in urls])
    seen = set()
    for _ in range(200):
        seen.add(_pick(client)[0]["key"])
        if len(seen) == 4:
            break
    assert seen == {key_for(u) for u in urls}


def test_weighted_toward_low_failure_count(client):
    good, flaky = "http://10.44.0.1:80", "http://10.44.0.2:80"
    client.upsert_many([
        {"proxy_url": good, "health_status": "healthy", "failure_count": 0},
        {"proxy_url": flaky, "health_status": "unknown", "failure_count": 2}])
    counts = collections.Counter(
        _pick(client)[0]["key"] for _ in range(300))
    assert counts[key_for(good)] > counts[key_for(flaky)], counts


def test_pick_does_not_return_expired_entries_later(client):
    """An entry expiring after the write is never picked after expiry."""
    live = unique_url()
    client.upsert_many([{"proxy_url": live},
                        {"proxy_url": unique_url(), "ttl_seconds": 0}])
    for _ in range(10):
        assert [p["key"] for p in _pick(client, count=10)] == [key_for(live)]
