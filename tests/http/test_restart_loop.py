# SPDX-License-Identifier: MIT
"""The seed's restart test, at its full count: 100 start / verify / write /
SIGTERM cycles on one data directory. Each round starts the service on the
directory the previous round left, reads back every entry written by the
earlier rounds (GET, fields compared), writes 5 new ones (single and batch
writes, some with credentials), and stops it with SIGTERM, which must exit
0. A few rounds also start a second instance on the same directory while
the first runs: it must exit 1 with a clear message naming the directory
and leave the first unharmed (the lock is the data directory's, SPEC 3
"One owner"); after the first stops, the lock is free again (the next
round starts).

test_lifecycle.py covers one restart in depth (all fields, tiers, deletes,
kill -9); this file covers the many-restarts axis: nothing lost, nothing
duplicated, nothing corrupted across 100 generations of the same files.
"""

import subprocess
import time

import pytest

from conftest import TEST_TOKEN
from helpers import key_for, unique_url

ROUNDS = 100
PER_ROUND = 5
SECOND_INSTANCE_ROUNDS = {0, 37, 99}


def _entry(round_, i):
    e = {"proxy_url": unique_url(["http", "https", "socks4",
                                   "socks5"][i % 4]),
         "source": f"round{round_}", "ttl_seconds": 86400 + i,
         "health_status": ["healthy", "unknown"][i % 2]}
    if i == 0:
        e["username"], e["password"] = f"u{round_}", f"p{round_}"
    return e


def _verify(c, written, round_):
    bad = []
    for e in written:
        k = key_for(e["proxy_url"])
        r = c.get(f"/v1/proxies/{k}",
                  params={"reveal": "true"} if "username" in e else None)
        if r.status_code != 200:
            bad.append((k, r.status_code, r.text[:200]))
            continue
        got = r.json()
        for m in ("source", "ttl_seconds", "health_status"):
            if got[m] != e[m]:
                bad.append((k, m, got[m], e[m]))
        if "username" in e and (got.get("username"), got.get("password")) \
                != (e["username"], e["password"]):
            bad.append((k, "credentials"))
    assert not bad, (f"round {round_}: {len(bad)} of {len(written)} earlier "
                     f"entries wrong after the restart, e.g. {bad[:3]}")


def _second_instance(server_factory, first):
    b = server_factory(data_dir=first.data_dir, start=False)
    p = subprocess.run(b.command(), env=b.environment(), capture_output=True,
                       timeout=30, stdin=subprocess.DEVNULL)
    err = p.stderr.decode("utf-8", "replace")
    assert p.returncode == 1, (f"second instance on {first.data_dir}: exit "
                               f"{p.returncode}, stderr {err!r}")
    assert str(first.data_dir) in err, (
        f"the message should name the data directory: {err!r}")
    assert any(w in err.lower() for w in ("in use", "lock", "another")), (
        f"the message should say the directory is in use/locked: {err!r}")
    assert "listening on" not in err, "the second instance served"


@pytest.mark.slow
def test_100_restarts_lose_nothing(server_factory):
    t0 = time.monotonic()
    s = server_factory(token=TEST_TOKEN, start=False)
    written = []
    for round_ in range(ROUNDS):
        s.start()
        c = s.client()
        st = c.stats()["tiers"]
        assert st["l1"]["size"] == 0, f"round {round_}: L1 starts empty"
        assert st["l3"]["size"] == len(written), (
            f"round {round_}: L3 holds {st['l3']['size']} entries, "
            f"{len(written)} were written")
        _verify(c, written, round_)
        new = [_entry(round_, i) for i in range(PER_ROUND)]
        if round_ % 2:
            c.upsert_many(new)
        else:
            for e in new:
                r = c.upsert(e)
                assert r.status_code == 201, r.text
        written.extend(new)
        if round_ in SECOND_INSTANCE_ROUNDS:
            _second_instance(server_factory, s)
            assert c.get("/readyz").status_code == 200
        c.close()
        rc = s.stop()
        assert rc == 0, (f"round {round_}: exit status {rc} on SIGTERM; "
                         f"log tail:\n{s.logs()[-3000:]}")
        assert not s.sanitizer_report(), s.logs()[-3000:]
    # One last start: the listing agrees with what was written.
    s.start()
    c = s.client()
    listed = {e["key"] for e in c.list_all()}
    assert listed == {key_for(e["proxy_url"]) for e in written}
    assert len(listed) == ROUNDS * PER_ROUND
    elapsed = time.monotonic() - t0
    assert elapsed < 600, f"100 restarts took {elapsed:.0f} s"
