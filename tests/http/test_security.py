# SPDX-License-Identifier: MIT
"""Plain-text credentials never reach the disk, the logs, or any response
but a revealed GET: write credentials every way there is (URL userinfo,
members, batch, warm, import, bad requests quoting them), read everything
back every way there is, then grep every file in the data directory and
the captured logs (debug level) for the plain text."""

import datetime
import json
import os

from cryptography.fernet import Fernet

from conftest import TEST_KEY, TEST_TOKEN
from helpers import iso, key_for, utcnow

USER = "PlainUserQ7x9"
PASS = "PlainPassZ3k8"
TOKEN_SECRET = TEST_TOKEN


def _all_files(d):
    for root, _, files in os.walk(d):
        for f in files:
            yield os.path.join(root, f)


def test_plaintext_credentials_are_nowhere(server_factory):
    s = server_factory(token=TEST_TOKEN,
                       args=["--log-level", "debug", "--l1-capacity", "2",
                             "--l2-capacity", "3"])
    c = s.client()
    responses = []

    def keep(r):
        responses.append(r)
        return r

    urls = []
    # 1. userinfo in the URL
    u = f"http://{USER}1:{PASS}1@10.90.0.1:8080"
    urls.append(("http://10.90.0.1:8080", USER + "1", PASS + "1"))
    keep(c.upsert({"proxy_url": u}))
    # 2. members
    keep(c.upsert({"proxy_url": "socks5://10.90.0.2:1080",
                   "username": USER + "2", "password": PASS + "2"}))
    urls.append(("socks5://10.90.0.2:1080", USER + "2", PASS + "2"))
    # 3. batch, with a bad item quoting credentials
    keep(c.upsert_many([
        {"proxy_url": f"https://{USER}3:{PASS}3@10.90.0.3:443"},
        {"proxy_url": f"http://{USER}9:{PASS}9@10.90.0.9:0"}]))
    urls.append(("https://10.90.0.3:443", USER + "3", PASS + "3"))
    # 4. warm, including a bad line with credentials
    keep(c.post("/v1/warm", data=(
        f"http://{USER}4:{PASS}4@10.90.0.4:3128\n"
        f"http://{USER}8:{PASS}8@10.90.0.8:99999\n").encode(),
        headers={"Content-Type": "text/plain"}))
    urls.append(("http://10.90.0.4:3128", USER + "4", PASS + "4"))
    # 5. import of a line sealed by the client
    f = Fernet(TEST_KEY.encode())
    fetch = utcnow() - datetime.timedelta(minutes=1)
    line = {"key": key_for("socks4://10.90.0.5:4145"),
            "proxy_url": "socks4://10.90.0.5:4145",
            "username": f.encrypt((USER + "5").encode()).decode(),
            "password": f.encrypt((PASS + "5").encode()).decode(),
            "source": "imp", "protocol": "socks4",
            "fetch_time": iso(fetch), "ttl_seconds": 86400,
            "expires_at": iso(fetch + datetime.timedelta(days=1)),
            "health_status": "unknown", "failure_count": 0,
            "access_count": 0}
    keep(c.post("/v1/import", data=(json.dumps(line) + "\n").encode(),
                headers={"Content-Type": "application/x-ndjson"}))
    urls.append(("socks4://10.90.0.5:4145", USER + "5", PASS + "5"))
    # 6. bad single writes quoting credentials
    keep(c.post("/v1/proxies", json={
        "proxy_url": f"http://{USER}7:{PASS}7@10.90.0.7:0"}))
    keep(c.post("/v1/proxies", json={
        "proxy_url": "http://10.90.0.6:80", "username": USER + "6",
        "password": PASS + "6", "bogus": 1}))
    keep(c.post("/v1/proxies/health", json=[
        {"proxy_url": f"http://{USER}7:{PASS}7@10.90.0.7:80",
         "status": "failure"}]))

    # Read back every way (masked), and health-report to rewrite entries.
    for url, _, _ in urls:
        key = key_for(url)
        keep(c.get(f"/v1/proxies/{key}"))
        keep(c.post(f"/v1/proxies/{key}/health", json={"status": "success"}))
    keep(c.get("/v1/proxies"))
    keep(c.get("/v1/pick", params={"count": 100}))
    keep(c.get("/v1/export"))
    for t in ("l1", "l2", "l3"):
        keep(c.get("/v1/export", params={"tier": t}))
    keep(c.get("/v1/stats"))
    keep(c.get("/metrics"))

    for r in responses:
        assert USER not in r.text and PASS not in r.text, \
            f"{r.request.method} {r.request.url}: {r.text[:300]}"

    # Reveal works (so the credentials were really stored).
    for url, user, pw in urls:
        e = c.get(f"/v1/proxies/{key_for(url)}",
                  params={"reveal": "true"}).json()
        assert (e["username"], e["password"]) == (user, pw), url

    # Survive a restart, then look at every byte on disk and in the logs.
    s.restart()
    c = s.client()
    for url, user, pw in urls:
        e = c.get(f"/v1/proxies/{key_for(url)}",
                  params={"reveal": "true"}).json()
        assert (e["username"], e["password"]) == (user, pw), url
    assert s.stop() == 0

    needles = [USER.encode(), PASS.encode(), TOKEN_SECRET.encode()]
    for path in _all_files(s.data_dir):
        with open(path, "rb") as fh:
            data = fh.read()
        for n in needles:
            assert n not in data, f"{n!r} in {path}"
    logs = s.log_path.read_bytes()
    assert logs, "no log captured"
    for n in needles:
        assert n not in logs, f"{n!r} in the logs"
