# SPDX-License-Identifier: MIT
"""The process: --help/--version, invalid configuration exits 2 with one
line on stderr, the data-directory lock (a second instance exits 1),
restart persistence, kill -9 durability of every acknowledged write,
corrupt files at start-up, listen-address rules."""

import os
import signal
import subprocess
import threading

import pytest
import requests

from conftest import BINARY, TEST_KEY, TEST_TOKEN
from helpers import key_for, unique_url, wait_until

FLAGS = ["--listen", "--data-dir", "--l1-capacity", "--l2-capacity",
         "--l3-capacity", "--default-ttl", "--source-ttl", "--sweep-interval",
         "--failure-threshold", "--warm", "--log-level", "--log-format",
         "--max-body-bytes", "--max-connections", "--max-import-bytes",
         "--idle-timeout", "--max-connections-per-ip", "--threading",
         "--ephemeral-key", "--insecure-listen-any", "--help", "--version"]


def _run(args, env=None, timeout=15, data_dir=None):
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("PROXYCACHE_", "PROXYWHIRL_"))}
    full_env["PROXYCACHE_ENCRYPTION_KEY"] = TEST_KEY
    for k, v in (env or {}).items():
        if v is None:
            full_env.pop(k, None)
        else:
            full_env[k] = v
    if not BINARY.exists():
        pytest.fail(f"proxycached not found at {BINARY}")
    return subprocess.run([str(BINARY)] + args, env=full_env,
                          capture_output=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@pytest.fixture
def no_external(server_factory):
    """Skips in external mode (server_factory does)."""
    return server_factory


def test_help_documents_every_flag(no_external):
    p = _run(["--help"])
    assert p.returncode == 0, p.stderr
    out = p.stdout.decode()
    missing = [f for f in FLAGS if f not in out]
    assert not missing, f"--help does not mention {missing}"


def test_version(no_external):
    p = _run(["--version"])
    assert p.returncode == 0, p.stderr
    assert "0.1.0" in p.stdout.decode()


INVALID = [
    (["--default-ttl", "0"], None),
    (["--default-ttl", "-5"], None),
    (["--default-ttl", "abc"], None),
    (["--l1-capacity", "abc"], None),
    (["--l1-capacity", "-1"], None),
    (["--l1-capacity", "0"], None),
    (["--l2-capacity", "0"], None),
    (["--l2-capacity", "12x"], None),
    (["--l3-capacity", "-1"], None),
    (["--listen", "0.0.0.0:0"], None),
    (["--listen", "[::]:0"], None),
    (["--listen", "127.0.0.1:65536"], None),
    (["--listen", "nonsense"], None),
    (["--failure-threshold", "0"], None),
    (["--sweep-interval", "0"], None),
    (["--log-level", "loud"], None),
    (["--log-format", "xml"], None),
    (["--threading", "forked"], None),
    (["--max-body-bytes", "0"], None),
    (["--max-body-bytes", "abc"], None),
    (["--max-connections", "0"], None),
    (["--idle-timeout", "-1"], None),
    (["--source-ttl", "nonsense"], None),
    (["--source-ttl", "fast=-1"], None),
    (["--source-ttl", "=60"], None),
    (["--bogus-flag"], None),
    (["--l1-capacity"], None),
    ([], {"PROXYCACHE_DEFAULT_TTL": "0"}),
    ([], {"PROXYCACHE_L1_CAPACITY": "abc"}),
    ([], {"PROXYCACHE_ENCRYPTION_KEY": "not-a-fernet-key"}),
    ([], {"PROXYCACHE_ENCRYPTION_KEY": TEST_KEY + ",garbage"}),
    ([], {"PROXYCACHE_ENCRYPTION_KEY": "", "PROXYCACHE_LISTEN": "0.0.0.0:0"}),
]


@pytest.mark.parametrize("args,env", INVALID,
                         ids=[" ".join(a) or ",".join(e) for a, e in INVALID])
def test_invalid_config_exits_2_with_one_line(no_external, tmp_path, args,
                                              env):
    base = ["--data-dir", str(tmp_path / "d")]
    if "--listen" not in args and "PROXYCACHE_LISTEN" not in (env or {}):
        base += ["--listen", "127.0.0.1:0"]
    p = _run(base + args, env=env)
    err = p.stderr.decode("utf-8", "replace")
    assert p.returncode == 2, f"exit {p.returncode}; stderr: {err!r}"
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1, f"want one line on stderr, got {lines!r}"
    assert len(lines[0]) > 10


def test_listen_any_with_token_is_allowed(server_factory):
    s = server_factory(listen="0.0.0.0:0", token=TEST_TOKEN)
    assert s.client().get("/healthz").status_code == 200


def test_listen_any_with_insecure_flag_is_allowed(server_factory):
    s = server_factory(listen="0.0.0.0:0", args=["--insecure-listen-any"])
    assert s.client().get("/healthz").status_code == 200


def test_sigint_also_exits_0(server_factory):
    s = server_factory()
    s.client().upsert({"proxy_url": unique_url()})
    assert s.stop(signal.SIGINT) == 0


# ---- the data directory lock ----------------------------------------------

def test_second_instance_on_the_same_data_dir_exits_1(server_factory):
    a = server_factory()
    a.client().upsert({"proxy_url": unique_url()})
    b = server_factory(data_dir=a.data_dir, start=False)
    p = subprocess.run(b.command(), env=b.environment(), capture_output=True,
                       timeout=20, stdin=subprocess.DEVNULL)
    assert p.returncode == 1, p.stderr
    assert p.stderr.strip()
    # The first one is unharmed.
    assert a.client().get("/readyz").status_code == 200
    assert len(a.client().list_all()) == 1


# ---- persistence -------------------------------------------------------------

def _seed(client, n):
    entries = []
    for i in range(n):
        e = {"proxy_url": unique_url(["http", "https", "socks4",
                                       "socks5"][i % 4]),
             "source": f"src{i % 5}", "ttl_seconds": 3600 + i,
             "health_status": ["healthy", "unknown", "unhealthy"][i % 3]}
        if i % 7 == 0:
            e["username"], e["password"] = f"ru{i}", f"rp{i}"
        if i % 2:
            e["country"], e["latency_ms"] = "NL", i
        entries.append(e)
    half = n // 2
    client.upsert_many(entries[:half])
    for e in entries[half:]:
        client.upsert(e)
    return entries


def _check(client, entries, reveal):
    for e in entries:
        r = client.get(f"/v1/proxies/{key_for(e['proxy_url'])}",
                       params={"reveal": "true"} if reveal else None)
        assert r.status_code == 200, (e, r.text)
        got = r.json()
        assert got["source"] == e["source"]
        assert got["ttl_seconds"] == e["ttl_seconds"]
        assert got["health_status"] == e["health_status"]
        assert got.get("country") == e.get("country")
        assert got.get("latency_ms") == e.get("latency_ms")
        if reveal and "username" in e:
            assert (got["username"], got["password"]) == \
                (e["username"], e["password"])


@pytest.mark.slow
def test_restart_persistence(server_factory):
    s = server_factory(token=TEST_TOKEN)
    c = s.client()
    entries = _seed(c, 300)
    first = c.get(f"/v1/proxies/{key_for(entries[0]['proxy_url'])}").json()
    s.restart()
    c = s.client()
    st = c.stats()
    assert st["tiers"]["l1"]["size"] == 0, "L1 starts empty after a restart"
    assert st["tiers"]["l3"]["size"] == 300
    r = c.get(f"/v1/proxies/{key_for(entries[1]['proxy_url'])}")
    assert r.headers["X-Cache-Tier"] in ("l2", "l3")
    r = c.get(f"/v1/proxies/{key_for(entries[1]['proxy_url'])}")
    assert r.headers["X-Cache-Tier"] == "l1", "a lower-tier hit promotes"
    again = c.get(f"/v1/proxies/{key_for(entries[0]['proxy_url'])}").json()
    for m in ("fetch_time", "expires_at", "proxy_url", "protocol"):
        assert again[m] == first[m], m
    _check(c, entries, reveal=True)


@pytest.mark.slow
def test_restart_keeps_deletes(server_factory):
    s = server_factory()
    c = s.client()
    urls = [unique_url() for _ in range(10)]
    c.upsert_many([{"proxy_url": u} for u in urls])
    for u in urls[:4]:
        assert c.delete(f"/v1/proxies/{key_for(u)}").status_code == 204
    s.restart()
    c = s.client()
    assert {e["key"] for e in c.list_all()} == {key_for(u) for u in urls[4:]}
    for u in urls[:4]:
        assert c.get(f"/v1/proxies/{key_for(u)}").status_code == 404
    c.delete("/v1/proxies")
    s.restart()
    assert s.client().list_all() == []


def _writers(server, n_threads, stop, acked, errors):
    def run(tid):
        c = server.client()
        i = 0
        while not stop.is_set():
            i += 1
            try:
                if i % 10 == 0:
                    batch = [{"proxy_url": unique_url(), "source": f"w{tid}"}
                             for _ in range(20)]
                    r = c.post("/v1/proxies", json={"proxies": batch})
                    if r.status_code in (200, 201):
                        with lock:
                            acked.update(
                                it["key"] for it in r.json()["items"]
                                if it["outcome"] in ("created", "updated"))
                else:
                    url = unique_url()
                    r = c.post("/v1/proxies", json={"proxy_url": url,
                                                    "source": f"w{tid}"})
                    if r.status_code in (200, 201):
                        with lock:
                            acked.add(r.json()["key"])
                    elif r.status_code >= 500:
                        errors.append(r.status_code)
            except (requests.ConnectionError, requests.Timeout):
                return
            except AssertionError as e:  # contract violation
                errors.append(str(e))
                return
    lock = threading.Lock()
    threads = [threading.Thread(target=run, args=(t,), daemon=True)
               for t in range(n_threads)]
    for t in threads:
        t.start()
    return threads


@pytest.mark.slow
def test_kill_9_loses_no_acknowledged_write(server_factory):
    s = server_factory()
    all_acked = set()
    for round_ in range(2):
        stop = threading.Event()
        acked, errors = set(), []
        threads = _writers(s, 8, stop, acked, errors)
        wait_until(lambda: len(acked) >= 300, 20, interval=0.02,
                   what="300 acknowledged writes")
        s.kill9()  # while the writers are still writing
        stop.set()
        for t in threads:
            t.join(30)
        assert not errors, errors[:5]
        all_acked |= acked
        s.start()
        c = s.client()
        missing = [k for k in sorted(all_acked)
                   if c.get(f"/v1/proxies/{k}").status_code != 200]
        assert not missing, (f"round {round_}: {len(missing)} of "
                             f"{len(all_acked)} acknowledged writes lost, "
                             f"e.g. {missing[:3]}")
        assert c.stats()["tiers"]["l3"]["size"] >= len(all_acked)


# ---- corrupt files at start-up ------------------------------------------------

def _sqlite_files(data_dir):
    out = []
    for root, _, files in os.walk(data_dir):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                if fh.read(16) == b"SQLite format 3\x00":
                    out.append(p)
    return out


def _jsonl_files(data_dir):
    out = []
    for root, _, files in os.walk(data_dir):
        for f in files:
            p = os.path.join(root, f)
            with open(p, "rb") as fh:
                head = fh.read(4096)
            if head.startswith(b"{") and b'"proxy_url"' in head:
                out.append(p)
    return out


@pytest.mark.slow
def test_corrupt_database_is_moved_aside(server_factory):
    s = server_factory()
    s.client().upsert({"proxy_url": unique_url()})
    assert s.stop() == 0
    dbs = _sqlite_files(s.data_dir)
    assert dbs, f"no SQLite database in {list(os.walk(s.data_dir))}"
    for db in dbs:
        with open(db, "wb") as f:
            f.write(b"this is not a database\n" * 100)
        for suffix in ("-wal", "-shm"):
            if os.path.exists(db + suffix):
                os.unlink(db + suffix)
    s.start()
    c = s.client()
    assert c.get("/readyz").status_code == 200
    aside = [f for f in os.listdir(os.path.dirname(dbs[0]))
             if ".corrupt-" in f]
    assert aside, os.listdir(os.path.dirname(dbs[0]))
    assert "ERROR" in s.logs().upper()
    url = unique_url()
    assert c.upsert({"proxy_url": url}).status_code == 201


@pytest.mark.slow
def test_corrupt_l2_lines_are_evicted_and_counted(server_factory):
    s = server_factory()
    c = s.client()
    urls = [unique_url() for _ in range(20)]
    c.upsert_many([{"proxy_url": u} for u in urls])
    assert s.stop() == 0
    shards = _jsonl_files(s.data_dir)
    assert shards, f"no L2 shard found in {s.data_dir}"
    bad_key = "e" * 64
    for shard in shards:
        with open(shard, "ab") as f:
            f.write(b"{this is not json\n")
            f.write(b'{"key":"' + bad_key.encode() +
                    b'","proxy_url":"http://1.2.3.4:0"}\n')
            f.write(b"\x00\xff\xfe garbage without newline")
    s.start()
    c = s.client()
    for u in urls:
        assert c.get(f"/v1/proxies/{key_for(u)}").status_code == 200

    def corruption():
        st = c.stats()
        return sum(st["tiers"][t]["evictions"]["corruption"]
                   for t in ("l1", "l2", "l3"))

    wait_until(lambda: corruption() >= 1, 5, what="corruption evictions")
    assert "WARN" in s.logs().upper()
    assert c.get(f"/v1/proxies/{bad_key}").status_code == 404


# ---- shutdown while busy ----------------------------------------------------------

@pytest.mark.slow
def test_sigterm_while_busy_exits_0_and_keeps_acknowledged(server_factory):
    s = server_factory()
    stop = threading.Event()
    acked, errors = set(), []
    threads = _writers(s, 4, stop, acked, errors)
    wait_until(lambda: len(acked) >= 100, 20, interval=0.02,
               what="100 acknowledged writes")
    rc = s.stop()
    stop.set()
    for t in threads:
        t.join(30)
    assert rc == 0
    assert not errors, errors[:5]
    s.start()
    c = s.client()
    missing = [k for k in acked if c.get(f"/v1/proxies/{k}").status_code != 200]
    assert not missing, f"{len(missing)} acknowledged writes lost"


def test_listen_ipv6_loopback(server_factory):
    import socket
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    s = server_factory(listen="[::1]:0")
    assert s.host == "[::1]"
    c = s.client()
    assert c.get("/healthz").status_code == 200
    assert c.upsert({"proxy_url": unique_url()}).status_code == 201
