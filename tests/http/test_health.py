# SPDX-License-Identifier: MIT
"""Health reports: POST /v1/proxies/{key}/health and the bulk
POST /v1/proxies/health; failure counting, success reset, eviction at the
threshold (default 3, configurable), counted as a `health` eviction."""

import pytest

from helpers import key_for, unique_url


def _report(client, key, status):
    return client.post(f"/v1/proxies/{key}/health", json={"status": status})


def _evictions(client, reason):
    st = client.stats()
    return sum(st["tiers"][t]["evictions"][reason] for t in ("l1", "l2", "l3"))


def test_failure_then_success(client):
    key = client.upsert({"proxy_url": unique_url()}).json()["key"]
    r = _report(client, key, "failure")
    assert r.status_code == 200, r.text
    e = r.json()
    assert e["evicted"] is False
    assert e["key"] == key
    assert e["failure_count"] == 1
    assert e["health_status"] == "unhealthy"
    r = _report(client, key, "failure")
    assert r.json()["failure_count"] == 2
    r = _report(client, key, "success")
    e = r.json()
    assert e["evicted"] is False
    assert e["failure_count"] == 0 and e["health_status"] == "healthy"
    got = client.get(f"/v1/proxies/{key}").json()
    assert got["failure_count"] == 0 and got["health_status"] == "healthy"


def test_default_threshold_is_three(client):
    key = client.upsert({"proxy_url": unique_url()}).json()["key"]
    before = _evictions(client, "health")
    assert _report(client, key, "failure").json()["evicted"] is False
    assert _report(client, key, "failure").json()["evicted"] is False
    r = _report(client, key, "failure")
    assert r.status_code == 200
    assert r.json() == {"key": key, "evicted": True, "failure_count": 3}
    assert client.get(f"/v1/proxies/{key}").status_code == 404
    assert _report(client, key, "failure").status_code == 404
    assert _report(client, key, "success").status_code == 404
    st = client.stats()
    assert all(st["tiers"][t]["size"] == 0 for t in ("l1", "l2", "l3"))
    assert _evictions(client, "health") > before


def test_success_resets_the_count_toward_the_threshold(client):
    key = client.upsert({"proxy_url": unique_url()}).json()["key"]
    for status in ["failure", "failure", "success", "failure", "failure"]:
        r = _report(client, key, status)
        assert r.json()["evicted"] is False, (status, r.json())
    assert client.get(f"/v1/proxies/{key}").json()["failure_count"] == 2


@pytest.mark.parametrize("threshold", [1, 5])
def test_configured_threshold(server_factory, threshold):
    s = server_factory(args=["--failure-threshold", str(threshold)])
    c = s.client()
    key = c.upsert({"proxy_url": unique_url()}).json()["key"]
    for n in range(1, threshold):
        assert _report(c, key, "failure").json()["failure_count"] == n
    r = _report(c, key, "failure")
    assert r.json() == {"key": key, "evicted": True,
                        "failure_count": threshold}
    assert c.get(f"/v1/proxies/{key}").status_code == 404


def test_health_counts_survive_an_upsert_and_are_persisted(server_factory):
    s = server_factory()
    c = s.client()
    url = unique_url()
    key = c.upsert({"proxy_url": url}).json()["key"]
    _report(c, key, "failure")
    _report(c, key, "failure")
    c.upsert({"proxy_url": url, "source": "rewritten"})
    s.restart()
    c = s.client()
    e = c.get(f"/v1/proxies/{key}").json()
    assert e["failure_count"] == 2 and e["health_status"] == "unhealthy"
    assert _report(c, key, "failure").json()["evicted"] is True


def test_health_of_absent_key_is_404(client):
    assert _report(client, key_for(unique_url()), "failure").status_code == 404


def test_health_of_malformed_key_is_404(client):
    r = client.post("/v1/proxies/ABC/health", json={"status": "failure"})
    assert r.status_code == 404


# ---- bulk -------------------------------------------------------------------

@pytest.mark.parametrize("wrap", [False, True], ids=["array", "results"])
def test_bulk(client, wrap):
    a, b, c_, d = (unique_url() for _ in range(4))
    client.upsert_many([{"proxy_url": u} for u in (a, b, c_, d)])
    # d is one failure away from eviction.
    _report(client, key_for(d), "failure")
    _report(client, key_for(d), "failure")
    absent = unique_url()
    items = [
        {"key": key_for(a), "status": "failure"},
        {"proxy_url": b.upper(), "status": "success"},
        {"key": key_for(absent), "status": "failure"},
        {"proxy_url": d, "status": "failure"},
        {"key": key_for(c_), "status": "sideways"},
        {"status": "failure"},
        {"proxy_url": "http://1.2.3.4:0", "status": "failure"},
    ]
    body = {"results": items} if wrap else items
    r = client.post("/v1/proxies/health", json=body)
    assert r.status_code == 200, r.text
    doc = r.json()
    res = sorted(doc["results"], key=lambda x: x["index"])
    assert [x["index"] for x in res] == list(range(len(items)))
    assert [x["outcome"] for x in res] == [
        "updated", "updated", "not_found", "evicted", "error", "error",
        "error"]
    assert res[0]["key"] == key_for(a)
    assert res[1]["key"] == key_for(b)
    assert res[2]["key"] == key_for(absent)
    assert res[3]["key"] == key_for(d)
    assert res[4]["error"]["field"] == "status"
    assert res[6]["error"]["field"] == "proxy_url"
    assert (doc["updated"], doc["evicted"], doc["not_found"],
            doc["failed"]) == (2, 1, 1, 3)
    ea = client.get(f"/v1/proxies/{key_for(a)}").json()
    assert ea["failure_count"] == 1 and ea["health_status"] == "unhealthy"
    eb = client.get(f"/v1/proxies/{key_for(b)}").json()
    assert eb["health_status"] == "healthy"
    assert client.get(f"/v1/proxies/{key_for(d)}").status_code == 404
    ec = client.get(f"/v1/proxies/{key_for(c_)}").json()
    assert ec["failure_count"] == 0 and ec["health_status"] == "unknown"


def test_bulk_empty(client):
    r = client.post("/v1/proxies/health", json=[])
    assert r.status_code == 200, r.text
    assert r.json() == {"updated": 0, "evicted": 0, "not_found": 0,
                        "failed": 0, "results": []}


def test_bulk_repeated_key_reaches_threshold(client):
    key = client.upsert({"proxy_url": unique_url()}).json()["key"]
    r = client.post("/v1/proxies/health",
                    json=[{"key": key, "status": "failure"}] * 4)
    assert r.status_code == 200
    res = sorted(r.json()["results"], key=lambda x: x["index"])
    assert [x["outcome"] for x in res] == ["updated", "updated", "evicted",
                                           "not_found"]
