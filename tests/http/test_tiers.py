# SPDX-License-Identifier: MIT
"""Tier movement with --l1-capacity 2 --l2-capacity 4, seen through the
X-Cache-Tier header, the `tier` member and /v1/stats: writes land in L1,
L1 and L2 demote their least recently used entry, a lower-tier hit
promotes into every tier above, export/list promote nothing."""

import pytest

from helpers import key_for, unique_url


@pytest.fixture
def small(server_factory):
    return server_factory(args=["--l1-capacity", "2", "--l2-capacity", "4"])


def _tier(client, url):
    r = client.get(f"/v1/proxies/{key_for(url)}")
    assert r.status_code == 200, r.text
    assert r.headers["X-Cache-Tier"] == r.json()["tier"]
    return r.json()["tier"]


def _sizes(client):
    st = client.stats()["tiers"]
    return [st[t]["size"] for t in ("l1", "l2", "l3")]


def test_tier_movement(small):
    c = small.client()
    a, b, cc, d, e, f = (unique_url() for _ in range(6))
    for u in (a, b, cc, d, e, f):
        c.upsert({"proxy_url": u})
    assert _sizes(c) == [2, 4, 6]
    st = c.stats()["tiers"]
    assert st["l1"]["demotions"] >= 4, "4 entries left L1"
    assert _tier(c, f) == "l1"      # the newest write is in L1
    assert _tier(c, d) == "l2"      # 4th newest: in L2, not in L1
    assert _tier(c, d) == "l1"      # promoted by the previous read
    assert _tier(c, a) == "l3"      # oldest: only in L3
    assert _tier(c, a) == "l1"      # promoted into every tier above
    assert _sizes(c) == [2, 4, 6]
    st = c.stats()["tiers"]
    assert st["l2"]["hits"] >= 1 and st["l3"]["hits"] >= 1
    assert st["l1"]["promotions"] + st["l2"]["promotions"] + \
        st["l3"]["promotions"] >= 2
    # a was promoted into L2 as well: after it leaves L1 it is an L2 hit.
    c.get(f"/v1/proxies/{key_for(f)}")
    c.get(f"/v1/proxies/{key_for(e)}")
    assert _tier(c, a) == "l2"
    st = c.stats()["tiers"]
    assert (st["l1"]["capacity"], st["l2"]["capacity"],
            st["l3"]["capacity"]) == (2, 4, 0)


def test_lru_order_in_l1(small):
    c = small.client()
    a, b, x = unique_url(), unique_url(), unique_url()
    c.upsert({"proxy_url": a})
    c.upsert({"proxy_url": b})
    assert _tier(c, a) == "l1"      # a is now the most recently used
    c.upsert({"proxy_url": x})      # evicts the LRU of L1: b
    assert _tier(c, a) == "l1"
    assert _tier(c, b) == "l2"


def test_export_and_list_promote_nothing(small):
    c = small.client()
    urls = [unique_url() for _ in range(6)]
    for u in urls:
        c.upsert({"proxy_url": u})
    before = c.stats()["tiers"]
    assert len(c.list_all()) == 6
    assert c.get("/v1/export").status_code == 200
    after = c.stats()["tiers"]
    for t in ("l1", "l2", "l3"):
        assert after[t]["promotions"] == before[t]["promotions"], t
    assert _tier(c, urls[0]) == "l3"


def test_update_of_a_cold_entry_brings_it_to_l1(small):
    c = small.client()
    urls = [unique_url() for _ in range(6)]
    for u in urls:
        c.upsert({"proxy_url": u})
    c.upsert({"proxy_url": urls[0], "source": "hot-again"})
    e = c.get(f"/v1/proxies/{key_for(urls[0])}")
    assert e.json()["tier"] == "l1"
    assert e.json()["source"] == "hot-again"
    assert _sizes(c) == [2, 4, 6]


def test_delete_removes_from_every_tier(small):
    c = small.client()
    urls = [unique_url() for _ in range(6)]
    for u in urls:
        c.upsert({"proxy_url": u})
    for u in (urls[0], urls[3], urls[5]):  # one per tier
        assert c.delete(f"/v1/proxies/{key_for(u)}").status_code == 204
    l1, l2, l3 = _sizes(c)
    assert l3 == 3 and l2 <= 4 and l1 <= 2
    for u in (urls[0], urls[3], urls[5]):
        assert c.get(f"/v1/proxies/{key_for(u)}").status_code == 404
