# SPDX-License-Identifier: MIT
"""Tier degradation and recovery (SPEC section 3 "Degradation"): a tier that
fails is marked degraded after 3 consecutive failures, logged at ERROR,
shown in /readyz, /v1/stats and /metrics; writes are still accepted into
the tiers that work and the response's "tiers" says which; the service
probes the failed tier and re-enables it, and every write acknowledged
while it was degraded reaches L3 then (it survives a restart and is in
the L3 export).

Faults, each on a real file system, nothing mocked:
- disk full: the data directory on a 2 MiB tmpfs filled up by a filler
  file (needs root; skipped otherwise), then the filler is removed;
- database locked past its timeout: another process holds SQLite's write
  lock on cache.db (no root needed), then lets it go;
- the file system turning read-only under the service (ext4 on a loop
  device mounted errors=remount-ro, flipped with trigger_fs_error; needs
  root). `mount -o remount,ro` cannot do this: Linux refuses it with EBUSY
  while any file on the mount is open for writing, which the running
  service always has (cache.db, the L2 shards). An ext4 emergency
  read-only mount cannot be remounted read-write online either, so that
  scenario recovers offline: SIGTERM, umount, e2fsck, mount, start; it
  checks the writes acknowledged before the failure and the degraded-state
  reporting, not online re-enabling (the other two scenarios do that).

Every scenario stops its server before it unmounts anything (finally).
"""

import contextlib
import errno
import json
import os
import re
import shutil
import sqlite3
import subprocess
import threading
import time

import pytest

from helpers import unique_url, wait_until

pytestmark = pytest.mark.slow

TIERS = ("l1", "l2", "l3")
RECOVERY_TIMEOUT = 45      # s; sweep interval 1 s, probes each sweep


# ---- helpers ----------------------------------------------------------------

def _need_root():
    if os.geteuid() != 0:
        pytest.skip("needs root (mount)")


def _run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, timeout=60,
                          stdin=subprocess.DEVNULL, **kw)


@contextlib.contextmanager
def _tmpfs(mnt, size):
    """Mount a tmpfs of `size` on mnt; always unmounted on exit."""
    _need_root()
    mnt.mkdir(parents=True, exist_ok=True)
    p = _run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700",
              "tmpfs", str(mnt)])
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {p.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        _umount(mnt)


def _umount(mnt):
    if not os.path.ismount(mnt):
        return
    for _ in range(50):
        if _run(["umount", str(mnt)]).returncode == 0:
            return
        time.sleep(0.1)
    _run(["umount", "-l", str(mnt)])


def _fill(path):
    """Write a filler file until the file system is full (ENOSPC); returns
    its size. Smaller and smaller writes take the last partial pages."""
    size = 0
    with open(path, "wb", buffering=0) as f:
        for chunk in (1 << 16, 4096, 512, 1):
            block = b"\0" * chunk
            while True:
                try:
                    n = f.write(block)
                except OSError as e:
                    if e.errno in (errno.ENOSPC, errno.EDQUOT):
                        break
                    raise
                size += n
    return size


def _entries(n, tag):
    return [{"proxy_url": unique_url(), "source": tag,
             "username": "degraded-user", "password": "degraded-pass"}
            for _ in range(n)]


def _write(c, entries, acked):
    """POST a batch; it must be accepted. Records the acknowledged keys;
    returns the response document."""
    r = c.post("/v1/proxies", json={"proxies": entries})
    assert r.status_code in (200, 201), (
        f"POST /v1/proxies while a tier is failing must still succeed "
        f"(SPEC 3: the write is accepted into the tiers that work); got "
        f"{r.status_code} {r.text[:500]}")
    doc = r.json()
    assert doc["failed"] == 0, doc["items"][:3]
    assert "l1" in doc["tiers"], f"L1 never degrades; tiers {doc['tiers']}"
    assert set(doc["tiers"]) <= set(TIERS), doc["tiers"]
    for it in doc["items"]:
        assert it["outcome"] in ("created", "updated"), it
        acked[it["key"]] = doc["tiers"]
    return doc


def _degraded(c):
    st = c.stats()["tiers"]
    return {t for t in TIERS if st[t]["degraded"]}


def _log_lines(server, level):
    """Lines of the captured log at `level` (text or JSON format)."""
    out = []
    for line in server.logs().splitlines():
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


def _metric(c, name, tier):
    r = c.get("/metrics")
    assert r.status_code == 200, r.text
    m = re.search(r'^%s\{[^}]*tier="%s"[^}]*\}\s+(\S+)\s*$'
                  % (re.escape(name), tier), r.text, re.M)
    assert m, f"no {name}{{tier=\"{tier}\"}} in /metrics"
    return float(m.group(1))


def _drive_failing(server, c, acked, tier, tag, batch=10, min_seconds=5.0,
                   min_writes=30, max_seconds=60.0):
    """Write batches while a tier's storage fails, until `tier` is degraded
    and 3 more writes were made, or (not degraded) for at least min_seconds
    and min_writes (the sweeper probes once a second: time for an
    implementation that counts probe failures too). Hard checks on the way:
    every write accepted with "l1", and a write made while a tier was
    degraded (before and after it) does not claim that tier. Returns a
    summary: writes, seconds, writes without `tier`, whether it degraded."""
    t0 = time.monotonic()
    n = lacking = after_degraded = 0
    while True:
        before = _degraded(c)
        doc = _write(c, _entries(batch, f"{tag}{n}"), acked)
        after = _degraded(c)
        n += 1
        both = before & after
        assert not (set(doc["tiers"]) & both), (
            f"write made while {sorted(both)} was degraded claims "
            f"tiers {doc['tiers']}")
        assert server.proc.poll() is None, (
            f"the service exited ({server.proc.returncode}) while a tier "
            f"was failing; log:\n{server.logs()[-3000:]}")
        if tier not in doc["tiers"]:
            lacking += 1
        if tier in both:
            after_degraded += 1
        elapsed = time.monotonic() - t0
        if after_degraded >= 3:
            break
        if tier not in after and elapsed >= min_seconds and n >= min_writes:
            break
        if elapsed >= max_seconds:
            break
        time.sleep(0.02)
    return {"writes": n, "seconds": round(time.monotonic() - t0, 1),
            "lacking": lacking, "degraded": tier in _degraded(c)}


def _degradation_problems(server, c, tier, summary):
    """SPEC 3: degraded after 3 consecutive failures, logged at ERROR, shown
    in /readyz (200 with the tier "degraded", per DESIGN), /v1/stats and
    /metrics. Returns what is wrong (collected, so that the recovery and
    durability checks after it still run)."""
    where = (f"{tier} after {summary['writes']} writes over "
             f"{summary['seconds']} s, {summary['lacking']} of them "
             f"acknowledged without {tier}")
    out = []
    st = c.stats()["tiers"][tier]
    if st["degraded"] is not True:
        out.append(f"/v1/stats: {where}: degraded is {st['degraded']}, want "
                   f"true (consecutive_failures "
                   f"{st['consecutive_failures']}, failures_total "
                   f"{st['failures_total']})")
    elif st["failures_total"] < 3:
        out.append(f"/v1/stats: {tier} degraded after fewer than 3 "
                   f"failures: {st}")
    r = c.get("/readyz")
    if r.status_code != 200:
        out.append(f"/readyz with a degraded tier: want 200 (the service "
                   f"goes on), got {r.status_code} {r.text}")
    elif r.json()["tiers"].get(tier) != "degraded" or \
            r.json()["tiers"].get("l1") != "ok":
        out.append(f"/readyz: {where}: want tiers.{tier} \"degraded\", "
                   f"got {r.json()}")
    v = _metric(c, "proxycache_tier_degraded", tier)
    if v != 1:
        out.append(f"/metrics: {where}: proxycache_tier_degraded"
                   f"{{tier=\"{tier}\"}} is {v:g}, want 1")
    # The message (module tag "[x]" left out) names the tier and says it
    # is degraded.
    errors = [l for l in _log_lines(server, "error")
              if re.search(r"\b%s\b" % tier, re.sub(r"\[[^]]*\]", "", l),
                           re.I) and "degrad" in l.lower()]
    if not errors:
        out.append(f"log: {where}: no ERROR line saying tier {tier} is "
                   f"degraded; ERROR "
                   f"lines: {_log_lines(server, 'error')[:5]}; WARNING "
                   f"lines: {_log_lines(server, 'warn')[:5]}")
    return out


def _wait_recovered(server, c, tiers):
    """Bounded poll: no tier in `tiers` degraded and no pending L3 write;
    then /readyz and /metrics agree."""
    def ok():
        st = c.stats()
        return (not any(st["tiers"][t]["degraded"] for t in tiers)
                and st["pending_l3"] == 0)
    try:
        wait_until(ok, RECOVERY_TIMEOUT, interval=0.2,
                   what=f"{tiers} re-enabled and pending L3 writes replayed")
    except AssertionError as e:
        raise AssertionError(f"{e}; stats {c.stats()}; log tail:\n"
                             f"{server.logs()[-2000:]}") from None
    r = c.get("/readyz")
    assert r.status_code == 200
    assert r.json()["tiers"] == {"l1": "ok", "l2": "ok", "l3": "ok"}, r.json()
    for t in tiers:
        assert _metric(c, "proxycache_tier_degraded", t) == 0


def _l3_keys(c):
    r = c.get("/v1/export", params={"tier": "l3"})
    assert r.status_code == 200, r.text
    return {json.loads(l)["key"] for l in r.text.splitlines() if l.strip()}


def _check_all_readable(c, acked, when):
    missing = []
    for k in acked:
        r = c.get(f"/v1/proxies/{k}")
        if r.status_code != 200:
            missing.append((k, r.status_code))
    assert not missing, (f"{when}: {len(missing)} of {len(acked)} "
                         f"acknowledged writes not readable, e.g. "
                         f"{missing[:3]}")


def _check_durable(server, acked):
    """SIGTERM, start again on the same data directory: every acknowledged
    write is readable and in L3 (it reached L3 on recovery)."""
    server.restart()
    c = server.client()
    in_l3 = _l3_keys(c)
    lost = [k for k in acked if k not in in_l3]
    degraded_writes = sum(1 for t in acked.values() if "l3" not in t)
    assert not lost, (f"{len(lost)} of {len(acked)} acknowledged writes "
                      f"({degraded_writes} accepted while L3 was degraded) "
                      f"are not in L3 after recovery and a restart, e.g. "
                      f"{lost[:3]}")
    _check_all_readable(c, acked, "after the restart")
    assert c.stats()["tiers"]["l3"]["size"] >= len(acked)


# ---- disk full --------------------------------------------------------------

def test_disk_full_degrades_and_recovers(server_factory, tmp_path):
    mnt = tmp_path / "mnt"
    with _tmpfs(mnt, "2m"):
        s = server_factory(data_dir=mnt / "data", start=False)
        try:
            s.start()
            c = s.client()
            acked = {}
            doc = _write(c, _entries(20, "before"), acked)
            assert sorted(doc["tiers"]) == ["l1", "l2", "l3"], doc["tiers"]
            assert _degraded(c) == set()

            filler = mnt / "filler"
            assert _fill(filler) > 0
            summary = _drive_failing(s, c, acked, "l3", "full")
            assert summary["lacking"] > 0, (
                f"no write acknowledged without l3 on a full disk: "
                f"{summary}; stats {c.stats()['tiers']['l3']}")
            problems = _degradation_problems(s, c, "l3", summary)
            if "l2" in _degraded(c):
                problems += _degradation_problems(s, c, "l2", summary)
            # Reads go on while the disk is full.
            _check_all_readable(c, acked, "while the disk is full")

            filler.unlink()
            _wait_recovered(s, c, TIERS[1:])
            _check_all_readable(c, acked, "after recovery")
            in_l3 = _l3_keys(c)
            lost = [k for k in acked if k not in in_l3]
            assert not lost, (f"{len(lost)} acknowledged writes not in L3 "
                              f"after recovery, e.g. {lost[:3]}")
            _check_durable(s, acked)
            assert s.stop() == 0
        finally:
            s.stop()
    assert not problems, "\n".join(problems)


# ---- database locked past its timeout ---------------------------------------

def test_locked_database_degrades_l3_and_recovers(server_factory):
    s = server_factory()
    c = s.client()
    acked = {}
    _write(c, _entries(10, "before"), acked)
    db = s.data_dir / "cache.db"
    assert db.exists(), os.listdir(s.data_dir)

    holder = sqlite3.connect(str(db), timeout=10, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        # Concurrent writes share one group commit that times out on the
        # lock: each is one L3 failure. At most 2 rounds of 4 (8 failures).
        seen = []  # (seconds, tiers) of each write
        t_start = time.monotonic()
        for round_ in range(2):
            docs, errs = [], []

            def one(i):
                try:
                    cl = s.client()
                    t0 = time.monotonic()
                    d = _write(cl, _entries(2, f"lk{round_}-{i}"), acked)
                    docs.append(d)
                    seen.append((round(time.monotonic() - t0, 1),
                                 d["tiers"]))
                except AssertionError as e:
                    errs.append(str(e))
            threads = [threading.Thread(target=one, args=(i,))
                       for i in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            assert not errs, errs[0]
            for d in docs:
                assert "l2" in d["tiers"], (
                    f"L2 works: it must hold the write; tiers {d['tiers']}")
            if "l3" in _degraded(c):
                break
        lacking = sum(1 for _, t in seen if "l3" not in t)
        assert lacking > 0, (f"writes while cache.db is locked claim l3: "
                             f"{seen}")
        summary = {"writes": len(seen), "lacking": lacking,
                   "seconds": round(time.monotonic() - t_start, 1)}
        problems = _degradation_problems(s, c, "l3", summary)
        if not problems:
            t0 = time.monotonic()
            doc = _write(c, _entries(5, "while"), acked)
            assert sorted(doc["tiers"]) == ["l1", "l2"], (
                f"write while L3 is degraded: want tiers [l1, l2], got "
                f"{doc['tiers']}")
            assert time.monotonic() - t0 < 3, (
                "a write while L3 is degraded should not wait for L3's "
                "lock timeout")
        else:
            problems.append(f"(seconds, tiers) of the writes while "
                            f"cache.db was locked: {seen}")
        assert c.stats()["tiers"]["l2"]["degraded"] is False
        _check_all_readable(c, acked, "while L3 is locked")
    finally:
        if holder.in_transaction:
            holder.rollback()
        holder.close()

    _wait_recovered(s, c, ("l3",))
    _check_all_readable(c, acked, "after recovery")
    _check_durable(s, acked)
    assert not problems, "\n".join(problems)


# ---- the file system turns read-only ----------------------------------------

@contextlib.contextmanager
def _ext4(tmp_path, mnt):
    """ext4 on a loop device, errors=remount-ro; yields the device name."""
    _need_root()
    for tool in ("mkfs.ext4", "e2fsck", "mount", "umount"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} not installed")
    img = tmp_path / "fs.img"
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    p = _run(["mkfs.ext4", "-q", "-F", str(img)])
    if p.returncode != 0:
        pytest.skip(f"mkfs.ext4: {p.stderr.decode().strip()}")
    mnt.mkdir(parents=True, exist_ok=True)
    p = _run(["mount", "-o", "loop,errors=remount-ro", str(img), str(mnt)])
    if p.returncode != 0:
        pytest.skip(f"cannot mount ext4 on a loop device: "
                    f"{p.stderr.decode().strip()}")
    try:
        yield img
    finally:
        _umount(mnt)


def _loop_name(mnt):
    p = _run(["findmnt", "-n", "-o", "SOURCE", str(mnt)])
    return os.path.basename(p.stdout.decode().strip())


def test_filesystem_turning_read_only(server_factory, tmp_path):
    mnt = tmp_path / "mnt"
    with _ext4(tmp_path, mnt) as img:
        dev = _loop_name(mnt)
        trigger = f"/sys/fs/ext4/{dev}/trigger_fs_error"
        if not os.path.exists(trigger):
            pytest.skip(f"{trigger} absent (kernel without it)")
        s = server_factory(data_dir=mnt / "data", start=False)
        try:
            s.start()
            c = s.client()
            before = {}
            _write(c, _entries(30, "before"), before)
            os.sync()  # what was acknowledged is on the device
            with open(trigger, "w") as f:
                f.write("proxycache test: read-only file system")
            with pytest.raises(OSError):
                (mnt / "probe").write_bytes(b"x")

            during = {}
            summary = _drive_failing(s, c, during, "l3", "ro", batch=5)
            assert summary["lacking"] > 0, (
                f"no write acknowledged without l3 on a read-only file "
                f"system: {summary}; stats {c.stats()['tiers']['l3']}")
            # Nothing can be written to a read-only file system: a write
            # that claims l2 or l3 claims what did not happen.
            claims = sorted({t for tiers in during.values() for t in tiers})
            assert claims == ["l1"], (
                f"writes on a read-only file system claim tiers {claims}")
            problems = _degradation_problems(s, c, "l3", summary)
            if "l2" in _degraded(c):
                problems += _degradation_problems(s, c, "l2", summary)
            _check_all_readable(c, {**before, **during}, "while read-only")
            # Shutting down with an unwritable L3 is still a clean exit.
            assert s.stop() == 0, s.logs()[-3000:]
        finally:
            s.stop()
        _umount(mnt)
        p = _run(["e2fsck", "-fy", str(img)])
        assert p.returncode in (0, 1, 2), p.stdout.decode()[-2000:]
        p = _run(["mount", "-o", "loop", str(img), str(mnt)])
        assert p.returncode == 0, p.stderr.decode()
        s.start()
        try:
            c = s.client()
            _check_all_readable(c, before, "after the file system came back")
            in_l3 = _l3_keys(c)
            lost = [k for k in before if k not in in_l3]
            assert not lost, f"{len(lost)} writes acknowledged before the " \
                             f"failure are not in L3, e.g. {lost[:3]}"
            doc = _write(c, _entries(3, "fresh"), {})
            assert sorted(doc["tiers"]) == ["l1", "l2", "l3"], doc["tiers"]
            assert s.stop() == 0
        finally:
            s.stop()
    assert not problems, "\n".join(problems)
