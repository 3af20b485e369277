# SPDX-License-Identifier: MIT
"""16 threads doing mixed put/get/delete/health (and batches, lists,
picks) for a bounded time against small tiers, each thread checking every
answer about the keys it owns against a per-key model; afterwards every
key that was last written and not deleted (nor evicted by health) is
present with its last value, every other key is absent, and the
statistics are consistent (hits + misses == lookups, L3 size == live
keys)."""

import random
import threading
import time

import pytest
import requests

from helpers import key_for, unique_url

THREADS = 16
KEYS_PER_THREAD = 25
DURATION = 5.0
THRESHOLD = 3


class Model:
    def __init__(self):
        self.present = False
        self.source = None
        self.failures = 0


def _worker(server, tid, urls, models, foreign, deadline, errors, counters):
    rnd = random.Random(tid)
    c = server.client()
    n = 0

    def fail(msg):
        errors.append(f"thread {tid}: {msg}")

    while time.monotonic() < deadline and len(errors) < 20:
        n += 1
        i = rnd.randrange(len(urls))
        url, m = urls[i], models[i]
        key = key_for(url)
        op = rnd.random()
        try:
            if op < 0.30:
                src = f"t{tid}-{n}"
                r = c.post("/v1/proxies", json={"proxy_url": url,
                                                "source": src})
                want = 200 if m.present else 201
                if r.status_code != want:
                    fail(f"put {key[:8]}: {r.status_code} want {want}")
                    continue
                want_outcome = "updated" if m.present else "created"
                if r.json()["outcome"] != want_outcome:
                    fail(f"put {key[:8]}: outcome {r.json()['outcome']}")
                if not m.present:
                    m.failures = 0
                m.present, m.source = True, src
            elif op < 0.38:
                picks = rnd.sample(range(len(urls)), 3)
                src = f"t{tid}-{n}b"
                r = c.post("/v1/proxies", json={"proxies": [
                    {"proxy_url": urls[j], "source": src} for j in picks]})
                if r.status_code not in (200, 201):
                    fail(f"batch: {r.status_code}")
                    continue
                items = sorted(r.json()["items"], key=lambda x: x["index"])
                for j, it in zip(picks, items):
                    mj = models[j]
                    want = "updated" if mj.present else "created"
                    if it["outcome"] != want:
                        fail(f"batch {key_for(urls[j])[:8]}: "
                             f"{it['outcome']} want {want}")
                    if not mj.present:
                        mj.failures = 0
                    mj.present, mj.source = True, src
                any_created = any(it["outcome"] == "created" for it in items)
                if r.status_code != (201 if any_created else 200):
                    fail(f"batch status {r.status_code}, created="
                         f"{any_created}")
            elif op < 0.62:
                r = c.get(f"/v1/proxies/{key}")
                counters["gets"] += 1
                if m.present:
                    if r.status_code != 200:
                        fail(f"get {key[:8]}: {r.status_code} want 200")
                    elif r.json()["source"] != m.source:
                        fail(f"get {key[:8]}: source {r.json()['source']} "
                             f"want {m.source}")
                    elif r.json()["failure_count"] != m.failures:
                        fail(f"get {key[:8]}: failure_count "
                             f"{r.json()['failure_count']} want {m.failures}")
                elif r.status_code != 404:
                    fail(f"get {key[:8]}: {r.status_code} want 404")
            elif op < 0.70:
                r = c.get(f"/v1/proxies/{rnd.choice(foreign)}")
                counters["gets"] += 1
                if r.status_code not in (200, 404):
                    fail(f"foreign get: {r.status_code}")
            elif op < 0.82:
                r = c.delete(f"/v1/proxies/{key}")
                want = 204 if m.present else 404
                if r.status_code != want:
                    fail(f"delete {key[:8]}: {r.status_code} want {want}")
                m.present = False
            elif op < 0.96:
                status = rnd.choice(["failure", "failure", "success"])
                r = c.post(f"/v1/proxies/{key}/health",
                           json={"status": status})
                if not m.present:
                    if r.status_code != 404:
                        fail(f"health {key[:8]} absent: {r.status_code}")
                    continue
                if r.status_code != 200:
                    fail(f"health {key[:8]}: {r.status_code}")
                    continue
                doc = r.json()
                if status == "success":
                    m.failures = 0
                else:
                    m.failures += 1
                if m.failures >= THRESHOLD:
                    if doc.get("evicted") is not True:
                        fail(f"health {key[:8]}: not evicted at "
                             f"{m.failures}")
                    m.present, m.failures = False, 0
                elif doc.get("evicted") is not False or \
                        doc["failure_count"] != m.failures:
                    fail(f"health {key[:8]}: {doc.get('evicted')} "
                         f"{doc.get('failure_count')} want {m.failures}")
            elif op < 0.98:
                r = c.get("/v1/proxies", params={"limit": 50})
                if r.status_code != 200:
                    fail(f"list: {r.status_code}")
            else:
                r = c.get("/v1/pick", params={"count": 5})
                if r.status_code not in (200, 503):
                    fail(f"pick: {r.status_code}")
        except (requests.RequestException, AssertionError) as e:
            fail(f"{type(e).__name__}: {str(e)[:500]}")
    c.close()


@pytest.mark.slow
def test_mixed_concurrent_operations(server_factory):
    s = server_factory(args=["--l1-capacity", "50", "--l2-capacity", "100"])
    urls = [[unique_url() for _ in range(KEYS_PER_THREAD)]
            for _ in range(THREADS)]
    models = [[Model() for _ in range(KEYS_PER_THREAD)]
              for _ in range(THREADS)]
    all_keys = [key_for(u) for us in urls for u in us]
    errors = []
    counters = [{"gets": 0} for _ in range(THREADS)]
    before = s.client().stats()
    deadline = time.monotonic() + DURATION
    threads = [threading.Thread(
        target=_worker,
        args=(s, t, urls[t], models[t], all_keys, deadline, errors,
              counters[t]), daemon=True) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DURATION + 60)
        assert not t.is_alive(), "a worker hung"
    assert not errors, "\n".join(errors[:20])

    c = s.client()
    live = 0
    for t in range(THREADS):
        for url, m in zip(urls[t], models[t]):
            r = c.get(f"/v1/proxies/{key_for(url)}")
            if m.present:
                live += 1
                assert r.status_code == 200, (url, r.text)
                assert r.json()["source"] == m.source
                assert r.json()["failure_count"] == m.failures
            else:
                assert r.status_code == 404, (url, r.text)
    st = c.stats()
    o = st["overall"]
    assert o["hits"] + o["misses"] == o["lookups"]
    gets = sum(x["gets"] for x in counters) + len(all_keys)
    assert o["lookups"] - before["overall"]["lookups"] >= gets
    assert st["tiers"]["l3"]["size"] == live
    assert st["tiers"]["l1"]["size"] <= 50
    assert st["tiers"]["l2"]["size"] <= 100
    assert len(c.list_all()) == live
    for t in ("l1", "l2", "l3"):
        assert st["tiers"][t]["degraded"] is False
