# SPDX-License-Identifier: MIT
"""Invalid proxy URLs never echo credentials (review finding).

A URL that fails to parse cannot say which part is a credential: "@" before
any scheme, "://" inside a password, or the "host:port:user:pass" form with
no "@" at all. The problem document, the batch item error, the warm error
list and the --warm log line must not quote any of them.
"""
import json

SECRETS = ["s3cretAA", "pa://ssBB", "secretpwCC"]
BAD_URLS = [
    "user:s3cretAA@x://1.2.3.4:80",
    "user:pa://ssBB@1.2.3.4:80",
    "http://1.2.3.4:8080:user:secretpwCC",
]


def _assert_clean(text):
    for s in SECRETS:
        assert s not in text, s


def test_invalid_urls_are_not_quoted(server_factory, tmp_path):
    warm_file = tmp_path / "warm.json"
    warm_file.write_text(json.dumps([{"proxy_url": u} for u in BAD_URLS]))
    s = server_factory(args=["--warm", str(warm_file)])
    c = s.client()
    for u in BAD_URLS:
        r = c.post("/v1/proxies", json={"proxy_url": u})
        assert r.status_code == 400
        assert r.json()["field"] == "proxy_url"
        _assert_clean(r.text)
    r = c.post("/v1/proxies", json={"proxies": [{"proxy_url": u} for u in BAD_URLS]})
    assert r.status_code == 200
    assert all(it["outcome"] == "error" for it in r.json()["items"])
    _assert_clean(r.text)
    r = c.post("/v1/warm", data="\n".join(BAD_URLS).encode(),
               headers={"Content-Type": "text/plain"})
    assert r.status_code == 200 and r.json()["error_count"] == 3
    _assert_clean(r.text)
    _assert_clean(s.logs())
