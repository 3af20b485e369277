# SPDX-License-Identifier: MIT
"""TTL: ttl_seconds 0 is accepted and never served (a `ttl` eviction);
an entry with ttl_seconds 1 is served before expiry, never after, and the
sweeper (--sweep-interval 1) removes an unread expired entry from every
tier within the interval; entries that expire while the service is down
are never served after a restart and are swept."""

import time

import pytest

from helpers import key_for, parse_iso, unique_url, utcnow, wait_until

TIERS = ("l1", "l2", "l3")
# Tolerance for the clock difference between this process and the server
# (same machine) and for the request's own duration.
SKEW = 0.25


def _sizes(client):
    st = client.stats()
    return {t: st["tiers"][t]["size"] for t in TIERS}


def _ttl_evictions(client):
    st = client.stats()
    return sum(st["tiers"][t]["evictions"]["ttl"] for t in TIERS)


def test_ttl_zero_is_accepted_and_never_served(client):
    url = unique_url()
    r = client.upsert({"proxy_url": url, "ttl_seconds": 0})
    assert r.status_code == 201
    key = r.json()["key"]
    assert client.get(f"/v1/proxies/{key}").status_code == 404
    assert client.list_all() == []
    assert client.get("/v1/pick").status_code == 503
    assert key not in client.get("/v1/export").text
    r = client.post(f"/v1/proxies/{key}/health", json={"status": "failure"})
    assert r.status_code == 404
    r = client.post("/v1/proxies/health", json=[{"key": key,
                                                  "status": "success"}])
    assert r.json()["results"][0]["outcome"] == "not_found"
    assert client.delete(f"/v1/proxies/{key}").status_code == 404
    wait_until(lambda: _ttl_evictions(client) >= 1, 5,
               what="a ttl eviction to be counted")
    wait_until(lambda: _sizes(client) == {"l1": 0, "l2": 0, "l3": 0}, 5,
               what="tier sizes 0")


def test_ttl_zero_then_rewrite_is_created(client):
    url = unique_url()
    client.upsert({"proxy_url": url, "ttl_seconds": 0})
    r = client.upsert({"proxy_url": url, "ttl_seconds": 60})
    assert r.json()["outcome"] == "created"
    assert client.get(f"/v1/proxies/{key_for(url)}").status_code == 200


@pytest.mark.slow
def test_expiry_on_read_and_by_sweeper(server_factory):
    s = server_factory(args=["--sweep-interval", "1"])
    c = s.client()
    read_url, unread_url = unique_url(), unique_url()
    c.upsert_many([{"proxy_url": read_url, "ttl_seconds": 1},
                   {"proxy_url": unread_url, "ttl_seconds": 1}])
    r = c.get(f"/v1/proxies/{key_for(read_url)}")
    assert r.status_code == 200, "served before expiry"
    expires = parse_iso(r.json()["expires_at"]).timestamp()
    ev0 = _ttl_evictions(c)

    # Never served after expiry; gone at once (bounded poll).
    deadline = expires + 5
    gone_at = None
    while time.time() < deadline:
        t0 = time.time()
        r = c.get(f"/v1/proxies/{key_for(read_url)}")
        if r.status_code == 200:
            assert t0 < expires + SKEW, \
                f"served {t0 - expires:.3f}s after expires_at"
        else:
            assert r.status_code == 404
            gone_at = time.time()
            break
        time.sleep(0.05)
    assert gone_at is not None, "still served 5 s after expiry"
    assert gone_at <= expires + 1 + SKEW

    # The unread one is removed from every tier by the sweeper within the
    # sweep interval (1 s), plus slack for the request round trips.
    wait_until(lambda: _sizes(c) == {"l1": 0, "l2": 0, "l3": 0},
               timeout=max(0.5, expires + 1 + 2 - time.time()),
               what="the sweeper to empty every tier")
    # Both count as ttl evictions (lazily removed or swept).
    assert _ttl_evictions(c) >= ev0 + 2
    assert c.get(f"/v1/proxies/{key_for(unread_url)}").status_code == 404
    assert c.list_all() == []


@pytest.mark.slow
def test_sweeper_counts_ttl_evictions_without_reads(server_factory):
    s = server_factory(args=["--sweep-interval", "1"])
    c = s.client()
    c.upsert_many([{"proxy_url": unique_url(), "ttl_seconds": 1}
                   for _ in range(5)])
    ev0 = _ttl_evictions(c)
    wait_until(lambda: _sizes(c) == {"l1": 0, "l2": 0, "l3": 0}, 4,
               what="sweep of 5 expired entries")
    assert _ttl_evictions(c) - ev0 >= 5


@pytest.mark.slow
def test_expired_while_down_is_never_served(server_factory):
    s = server_factory(args=["--sweep-interval", "1"])
    c = s.client()
    short, long_ = unique_url(), unique_url()
    c.upsert_many([{"proxy_url": short, "ttl_seconds": 1},
                   {"proxy_url": long_, "ttl_seconds": 3600}])
    expires = parse_iso(c.get(f"/v1/proxies/{key_for(short)}"
                              ).json()["expires_at"]).timestamp()
    assert s.stop() == 0
    wait_until(lambda: time.time() > expires + SKEW, 5, what="expiry")
    s.start()
    c = s.client()
    assert c.get(f"/v1/proxies/{key_for(short)}").status_code == 404
    assert [e["key"] for e in c.list_all()] == [key_for(long_)]
    wait_until(lambda: _sizes(c)["l3"] == 1 and _sizes(c)["l2"] <= 1, 4,
               what="the expired entry to be swept after restart")
    assert c.get(f"/v1/proxies/{key_for(long_)}").status_code == 200


def test_expires_at_is_fetch_time_plus_ttl(client):
    url = unique_url()
    client.upsert({"proxy_url": url, "ttl_seconds": 12345})
    e = client.get(f"/v1/proxies/{key_for(url)}").json()
    delta = parse_iso(e["expires_at"]) - parse_iso(e["fetch_time"])
    assert delta.total_seconds() == 12345
    assert parse_iso(e["expires_at"]) > utcnow()
