# SPDX-License-Identifier: MIT
"""Damage at rest (SPEC section 3 "Corruption" and "One owner"): stop the
service, damage its files, start it again. In every case the service
starts, serves the good entries, counts each bad line/row as a
`corruption` eviction of its tier in /v1/stats, and logs a WARNING naming
the key and the reason.

(a) L2: a garbage line, a line that is JSON but not a valid entry, and a
    torn (truncated, no newline) last line appended to a shard;
(b) L3: one character of a password token changed in one row of cache.db
    (sqlite3 module; the table and columns are found from the schema);
(c) cache.db replaced by random bytes: moved aside as
    cache.db.corrupt-<timestamp>, logged at ERROR, a fresh database made;
(d) a restart with a different PROXYCACHE_ENCRYPTION_KEY: every entry with
    credentials fails token verification, is evicted and counted, and the
    WARNING about it appears once, not once per entry.

test_lifecycle.py has the coarse versions (some corruption counted in any
tier, a text file in place of the database); these pin the tier, the
counts, the log lines and the at-rest effects. Plain text at rest is
test_security.py's.
"""

import json
import os
import re
import sqlite3

import pytest

from conftest import OTHER_KEY, TEST_TOKEN
from helpers import key_for, unique_url, wait_until

pytestmark = pytest.mark.slow

TIERS = ("l1", "l2", "l3")
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


# ---- helpers ----------------------------------------------------------------

def _log_lines(text, level):
    """Lines of a captured log at `level` (text or JSON log format)."""
    out = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("{"):
            try:
                lv = str(json.loads(s).get("level", ""))
            except ValueError:
                lv = ""
        else:
            parts = s.split(None, 2)
            lv = parts[1] if len(parts) > 1 else ""
        lv = lv.lower()
        if lv == level or (level == "warn" and lv == "warning"):
            out.append(s)
    return out


def _warns(server, since=0):
    """WARNING lines logged after the first `since` characters."""
    return _log_lines(server.logs()[since:], "warn")


def _corruption(c):
    st = c.stats()["tiers"]
    return {t: st[t]["evictions"]["corruption"] for t in TIERS}


def _entries(n, tag, creds_every=1):
    out = []
    for i in range(n):
        e = {"proxy_url": unique_url(), "source": tag}
        if creds_every and i % creds_every == 0:
            e["username"], e["password"] = f"cu{tag}{i}", f"cp{tag}{i}"
        out.append(e)
    return out


def _check_served(c, entries, what):
    bad = []
    for e in entries:
        k = key_for(e["proxy_url"])
        r = c.get(f"/v1/proxies/{k}",
                  params={"reveal": "true"} if "username" in e else None)
        if r.status_code != 200:
            bad.append((k, r.status_code, r.text[:200]))
            continue
        got = r.json()
        if got["source"] != e["source"] or (
                "username" in e and (got["username"], got["password"])
                != (e["username"], e["password"])):
            bad.append((k, "fields differ"))
    assert not bad, (f"{what}: {len(bad)} good entries not served, e.g. "
                     f"{bad[:3]}")


def _shards(data_dir):
    d = data_dir / "l2"
    assert d.is_dir(), f"no L2 directory: {os.listdir(data_dir)}"
    out = sorted(p for p in d.iterdir()
                 if re.fullmatch(r"shard-[0-9a-f]{2}\.jsonl", p.name))
    assert out, f"no shard-XX.jsonl in {d}: {os.listdir(d)}"
    return out


def _line_of(shards, key):
    """(shard path, raw line) of the last line of key in the L2 shards."""
    found = None
    for p in shards:
        for raw in p.read_bytes().splitlines(keepends=True):
            try:
                doc = json.loads(raw)
            except ValueError:
                continue
            if isinstance(doc, dict) and doc.get("key") == key:
                found = (p, raw)
    assert found, f"key {key} not in any L2 shard"
    return found


def _credential_table(db):
    """(table, key column, password column) found from the schema."""
    con = sqlite3.connect(str(db))
    try:
        tables = [r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type='table'")]
        for t in tables:
            cols = [r[1] for r in con.execute(f'PRAGMA table_info("{t}")')]
            pw = [c for c in cols if "pass" in c.lower()]
            if pw and "key" in cols:
                return t, "key", pw[0]
        schema = [r[0] for r in con.execute("SELECT sql FROM sqlite_master")]
    finally:
        con.close()
    raise AssertionError(f"no table with key and password columns: {schema}")


def _as_hex(v):
    return v.hex() if isinstance(v, (bytes, bytearray)) else str(v).lower()


def _tamper_password(db, key):
    """Change one character in the middle of key's password token (another
    URL-safe base64 character: the token still parses, its HMAC fails).
    Returns (table, key column, original key value)."""
    table, kcol, pcol = _credential_table(db)
    con = sqlite3.connect(str(db), isolation_level=None)
    try:
        rows = con.execute(f'SELECT "{kcol}", "{pcol}" FROM "{table}"')
        hit = [(kv, tok) for kv, tok in rows if _as_hex(kv) == key]
        assert hit, f"key {key} not in {table}"
        kv, tok = hit[0]
        assert tok, f"row {key} has no password token"
        if isinstance(tok, (bytes, bytearray)):
            b = bytearray(tok)
            b[len(b) // 2] ^= 0x01
            new = bytes(b)
        else:
            i = len(tok) // 2
            new = tok[:i] + B64URL[(B64URL.index(tok[i]) + 1) % 64] \
                + tok[i + 1:]
        assert new != tok
        n = con.execute(f'UPDATE "{table}" SET "{pcol}" = ? '
                        f'WHERE "{kcol}" = ?', (new, kv)).rowcount
        assert n == 1
    finally:
        con.close()
    return table, kcol, kv


def _warnings_naming(server, key, since=0):
    return [l for l in _warns(server, since) if key in l]


# ---- (a) L2 -----------------------------------------------------------------

def test_damaged_l2_shard(server_factory):
    s = server_factory(token=TEST_TOKEN)
    c = s.client()
    entries = _entries(24, "l2", creds_every=3)
    c.upsert_many(entries)
    assert s.stop() == 0

    shards = _shards(s.data_dir)
    torn_e, invalid_e = entries[0], entries[1]
    torn_key = key_for(torn_e["proxy_url"])
    invalid_key = key_for(invalid_e["proxy_url"])
    shard, line = _line_of(shards, torn_key)
    # A torn copy of torn_key's line: cut after the key, no newline.
    cut = max(line.index(torn_key.encode()) + len(torn_key) + 2,
              len(line) // 2)
    assert cut < len(line) - 1
    invalid_shard, _ = _line_of(shards, invalid_key)
    with open(invalid_shard, "ab") as f:
        f.write(json.dumps({"key": invalid_key, "proxy_url": "nonsense",
                            "source": 5}).encode() + b"\n")
    with open(shard, "ab") as f:
        f.write(b"\x00\xff{garbage that is not json at all\n")
        f.write(line[:cut])

    s.start()
    c = s.client()
    assert c.get("/readyz").status_code == 200
    # Every entry is still served (from L2, or L3 where L2's copy is gone).
    _check_served(c, entries, "after damaging an L2 shard")

    want = 3  # garbage line, invalid entry, torn line
    try:
        wait_until(lambda: _corruption(c)["l2"] >= want, 5,
                   what="L2 corruption evictions")
    except AssertionError:
        pass
    counted = _corruption(c)  # asserted last, so the checks below still run
    for k, why in ((torn_key, "torn last line"),
                   (invalid_key, "invalid entry")):
        assert _warnings_naming(s, k), (
            f"no WARNING naming key {k} ({why}); WARNING lines: "
            f"{_warns(s)}")
    warns = _warns(s)
    assert len([l for l in warns if re.search(
        r"corrupt|torn|truncat|invalid|parse|garbage", l, re.I)]) >= 3, warns
    # The torn tail must not swallow the next append: update the torn
    # entry (same key, same shard), then every line of that shard is a
    # complete record or one of the bad lines we wrote.
    injected = {b"\x00\xff{garbage that is not json at all"}
    updated = dict(torn_e, source="updated")
    c.upsert(updated)
    assert s.stop() == 0
    glued = []
    for raw in shard.read_bytes().split(b"\n"):
        if not raw or raw in injected:
            continue
        try:
            json.loads(raw)
        except ValueError:
            glued.append(raw[:120])
    assert not glued, (f"{shard.name} holds lines that are neither a record "
                       f"nor the injected garbage (torn tail glued to an "
                       f"append?): {glued}")
    s.start()
    c = s.client()
    _check_served(c, [updated] + entries[1:], "after a second restart")

    assert counted["l2"] >= want, (
        f"3 bad L2 lines (garbage, invalid entry, torn last line): want "
        f"evictions.corruption of l2 >= {want} in /v1/stats, got {counted} "
        f"(the WARNING lines were logged)")
    assert counted["l3"] == 0, counted


# ---- (b) L3 row -------------------------------------------------------------

def test_damaged_l3_password_token(server_factory):
    # L2 holds the 3 newest entries only, so reads of the older ones go to L3.
    s = server_factory(token=TEST_TOKEN, args=["--l2-capacity", "3"])
    c = s.client()
    entries = _entries(12, "l3")
    for e in entries:
        c.upsert(e)
    r = c.get("/v1/export", params={"tier": "l2"})
    assert r.status_code == 200
    in_l2 = {json.loads(l)["key"] for l in r.text.splitlines() if l.strip()}
    victim = next(e for e in entries if key_for(e["proxy_url"]) not in in_l2)
    vkey = key_for(victim["proxy_url"])
    good = [e for e in entries if e is not victim]
    assert s.stop() == 0

    db = s.data_dir / "cache.db"
    assert db.exists(), os.listdir(s.data_dir)
    table, kcol, kv = _tamper_password(db, vkey)

    mark = len(s.logs())
    s.start()
    c = s.client()
    r = c.get(f"/v1/proxies/{vkey}", params={"reveal": "true"})
    assert r.status_code == 404, (
        f"GET of the entry whose password token was damaged in L3: want "
        f"404 (evicted as corrupt), got {r.status_code} {r.text[:300]}")
    assert victim["password"] not in r.text
    corr = _corruption(c)
    assert corr["l3"] == 1, f"want one l3 corruption eviction, got {corr}"
    assert corr["l2"] == 0 and corr["l1"] == 0, corr
    warns = _warnings_naming(s, vkey, since=mark)
    assert warns, (f"no WARNING naming key {vkey}; WARNING lines: "
                   f"{_warns(s)}")
    assert re.search(r"reason|token|verify|decrypt|hmac|corrupt", warns[0],
                     re.I), warns[0]
    assert victim["password"] not in s.logs(), "plain text in the log"
    # Evicted: gone for good, from the listing too.
    assert c.get(f"/v1/proxies/{vkey}").status_code == 404
    assert vkey not in {e["key"] for e in c.list_all()}
    _check_served(c, good, "after damaging one L3 row")
    assert _corruption(c)["l3"] == 1, "the evicted row was counted again"
    assert s.stop() == 0
    con = sqlite3.connect(str(db))
    try:
        n = con.execute(f'SELECT count(*) FROM "{table}" WHERE "{kcol}" = ?',
                        (kv,)).fetchone()[0]
    finally:
        con.close()
    assert n == 0, "the corrupt row is still in cache.db after its eviction"


# ---- (c) the database file is not a database --------------------------------

def test_random_bytes_database_is_moved_aside(server_factory):
    s = server_factory(token=TEST_TOKEN)
    c = s.client()
    entries = _entries(10, "db", creds_every=2)
    c.upsert_many(entries)
    assert s.stop() == 0

    db = s.data_dir / "cache.db"
    assert db.exists(), os.listdir(s.data_dir)
    junk = os.urandom(64 * 1024)
    if junk.startswith(b"SQLite format 3"):
        junk = b"\x00" + junk[1:]
    db.write_bytes(junk)
    for suffix in ("-wal", "-shm"):
        p = s.data_dir / ("cache.db" + suffix)
        if p.exists():
            p.unlink()

    s.start()
    c = s.client()
    assert c.get("/readyz").status_code == 200
    aside = [p for p in s.data_dir.iterdir()
             if re.fullmatch(r"cache\.db\.corrupt-\d+(\.\d+)?", p.name)]
    assert len(aside) == 1, sorted(os.listdir(s.data_dir))
    assert aside[0].read_bytes() == junk, "the moved file is not the original"
    with open(db, "rb") as f:
        assert f.read(16) == b"SQLite format 3\x00", "no fresh database"
    errors = [l for l in _log_lines(s.logs(), "error") if "cache.db" in l]
    assert errors, (f"no ERROR line naming cache.db; ERROR lines: "
                    f"{_log_lines(s.logs(), 'error')}")
    assert aside[0].name in errors[0] or any(aside[0].name in l
                                             for l in errors), errors
    assert c.stats()["tiers"]["l3"]["size"] == 0
    # L2 survived: what it holds is still served (SPEC 3, Restart).
    _check_served(c, entries, "from L2 after L3 was lost")
    # The fresh database works and persists.
    more = _entries(5, "fresh")
    doc = c.upsert_many(more).json()
    assert sorted(doc["tiers"]) == ["l1", "l2", "l3"], doc["tiers"]
    assert s.stop() == 0
    s.start()
    c = s.client()
    _check_served(c, more, "written into the fresh database")
    assert len([p for p in s.data_dir.iterdir()
                if ".corrupt-" in p.name]) == 1, \
        "a healthy database was moved aside on the next start"


# ---- (d) the wrong encryption key -------------------------------------------

def test_restart_with_a_different_key(server_factory):
    s = server_factory(token=TEST_TOKEN)
    c = s.client()
    with_creds = _entries(10, "key")
    plain = _entries(5, "nokey", creds_every=0)
    c.upsert_many(with_creds + plain)
    assert s.stop() == 0

    s.env_extra["PROXYCACHE_ENCRYPTION_KEY"] = OTHER_KEY
    mark = len(s.logs())
    s.start()
    c = s.client()
    assert c.get("/readyz").status_code == 200
    _check_served(c, plain, "entries without credentials, other key")
    evicted = []
    for e in with_creds:
        k = key_for(e["proxy_url"])
        r = c.get(f"/v1/proxies/{k}", params={"reveal": "true"})
        if r.status_code == 200:
            got = r.json()
            assert (got.get("username"), got.get("password")) != \
                (e["username"], e["password"]), "decrypted with the wrong key?"
            raise AssertionError(
                f"entry {k} whose tokens no configured key verifies was "
                f"served: {r.text[:300]}")
        assert r.status_code == 404, r.text
        evicted.append(k)
    corr = _corruption(c)
    n = len(with_creds)
    # Each entry had a copy in L2 (default capacity) and a row in L3.
    assert corr["l3"] == n, (f"want {n} l3 corruption evictions (one per "
                             f"row that does not verify), got {corr}")
    assert corr["l2"] == n, (f"want {n} l2 corruption evictions (one per "
                             f"line that does not verify), got {corr}")
    warns = _warns(s, since=mark)
    about = [l for l in warns if any(k in l for k in evicted)
             or re.search(r"verif|decrypt|encryption key|wrong key", l, re.I)]
    assert len(about) == 1, (
        f"the WARNING about tokens that no key verifies should appear once, "
        f"not per entry; got {len(about)}: {about[:5]}")
    assert re.search(r"key", about[0], re.I), about[0]
    # The evicted entries are gone from the listing; the others remain.
    listed = {e["key"] for e in c.list_all()}
    assert listed == {key_for(e["proxy_url"]) for e in plain}, listed
