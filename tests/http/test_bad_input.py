# SPDX-License-Identifier: MIT
"""Bad input of every kind gets the documented 4xx problem naming the
field and the reason, and nothing is half-applied: malformed JSON, wrong
types, invalid values and URLs, unknown members, bad query parameters,
unknown routes, wrong methods, wrong content types, oversized bodies.
Data-driven: each table row is one case."""

import contextlib

import pytest

from conftest import VALIDATOR
from helpers import key_for, unique_url

KEY = "0" * 64
GOOD = "http://10.20.30.40:8080"

# (id, entry, expected field) for POST /v1/proxies with one object; the
# same entries are replayed as items of a batch.
BAD_ENTRIES = [
    ("missing-url", {"source": "x"}, "proxy_url"),
    ("url-null", {"proxy_url": None}, "proxy_url"),
    ("url-number", {"proxy_url": 8080}, "proxy_url"),
    ("url-empty", {"proxy_url": ""}, "proxy_url"),
    ("url-ftp", {"proxy_url": "ftp://1.2.3.4:21"}, "proxy_url"),
    ("url-no-scheme", {"proxy_url": "1.2.3.4:8080"}, "proxy_url"),
    ("url-no-port", {"proxy_url": "http://1.2.3.4"}, "proxy_url"),
    ("url-port-0", {"proxy_url": "http://1.2.3.4:0"}, "proxy_url"),
    ("url-port-65536", {"proxy_url": "http://1.2.3.4:65536"}, "proxy_url"),
    ("url-port-negative", {"proxy_url": "http://1.2.3.4:-1"}, "proxy_url"),
    ("url-port-text", {"proxy_url": "http://1.2.3.4:http"}, "proxy_url"),
    ("url-empty-host", {"proxy_url": "http://:8080"}, "proxy_url"),
    ("url-space", {"proxy_url": "http://exa mple.com:80"}, "proxy_url"),
    ("url-path", {"proxy_url": "http://1.2.3.4:80/path"}, "proxy_url"),
    ("url-ipv6-unclosed", {"proxy_url": "http://[::1:8080"}, "proxy_url"),
    ("url-too-long", {"proxy_url": "http://" + "a" * 3000 + ".com:80"},
     "proxy_url"),
    ("unknown-member", {"proxy_url": GOOD, "colour": "red"}, "colour"),
    ("source-empty", {"proxy_url": GOOD, "source": ""}, "source"),
    ("source-129", {"proxy_url": GOOD, "source": "s" * 129}, "source"),
    ("source-control", {"proxy_url": GOOD, "source": "a\u0001b"}, "source"),
    ("source-number", {"proxy_url": GOOD, "source": 5}, "source"),
    ("ttl-string", {"proxy_url": GOOD, "ttl_seconds": "60"}, "ttl_seconds"),
    ("ttl-negative", {"proxy_url": GOOD, "ttl_seconds": -1}, "ttl_seconds"),
    ("ttl-fraction", {"proxy_url": GOOD, "ttl_seconds": 1.5}, "ttl_seconds"),
    ("ttl-bool", {"proxy_url": GOOD, "ttl_seconds": True}, "ttl_seconds"),
    ("health-unknown-value", {"proxy_url": GOOD, "health_status": "great"},
     "health_status"),
    ("health-number", {"proxy_url": GOOD, "health_status": 1},
     "health_status"),
    ("failures-negative", {"proxy_url": GOOD, "failure_count": -1},
     "failure_count"),
    ("failures-string", {"proxy_url": GOOD, "failure_count": "2"},
     "failure_count"),
    ("fetch-time-text", {"proxy_url": GOOD, "fetch_time": "yesterday"},
     "fetch_time"),
    ("fetch-time-number", {"proxy_url": GOOD, "fetch_time": 1700000000},
     "fetch_time"),
    ("fetch-time-bad-date", {"proxy_url": GOOD,
                             "fetch_time": "2026-02-30T00:00:00Z"},
     "fetch_time"),
    ("country-3", {"proxy_url": GOOD, "country": "USA"}, "country"),
    ("country-digits", {"proxy_url": GOOD, "country": "12"}, "country"),
    ("country-number", {"proxy_url": GOOD, "country": 12}, "country"),
    ("anonymity-value", {"proxy_url": GOOD, "anonymity": "super"},
     "anonymity"),
    ("latency-negative", {"proxy_url": GOOD, "latency_ms": -5},
     "latency_ms"),
    ("latency-string", {"proxy_url": GOOD, "latency_ms": "fast"},
     "latency_ms"),
    ("username-number", {"proxy_url": GOOD, "username": 5}, "username"),
    ("password-array", {"proxy_url": GOOD, "password": []}, "password"),
    ("key-mismatch", {"proxy_url": GOOD, "key": "f" * 64}, "key"),
    ("protocol-mismatch", {"proxy_url": GOOD, "protocol": "socks5"},
     "protocol"),
]


@contextlib.contextmanager
def nothing_stored(client):
    """The block stores nothing: no entry appears, no write is counted.
    (The cache is empty at the start of every test, also in external
    mode, where the write counter is compared before and after.)"""
    writes = client.stats()["overall"]["writes"]
    yield
    assert client.list_all() == []
    assert client.stats()["overall"]["writes"] == writes


@pytest.mark.parametrize("entry,field", [(e, f) for _, e, f in BAD_ENTRIES],
                         ids=[i for i, _, _ in BAD_ENTRIES])
def test_bad_single_entry(client, entry, field):
    with nothing_stored(client):
        r = client.post("/v1/proxies", json=entry)
    assert r.status_code == 400, r.text
    p = r.json()
    assert p["field"] == field, p
    assert p["reason"]
    if field == "colour":
        assert "unknown member" in p["reason"]


@pytest.mark.parametrize("entry,field", [(e, f) for _, e, f in BAD_ENTRIES],
                         ids=[i for i, _, _ in BAD_ENTRIES])
def test_bad_entry_in_batch(client, entry, field):
    good = unique_url()
    r = client.post("/v1/proxies", json={"proxies": [
        {"proxy_url": good}, entry]})
    assert r.status_code == 201, r.text
    doc = r.json()
    assert (doc["created"], doc["failed"]) == (1, 1)
    items = sorted(doc["items"], key=lambda i: i["index"])
    assert items[0]["outcome"] == "created"
    assert items[1]["outcome"] == "error"
    assert items[1]["error"]["field"] == field
    assert [e["key"] for e in client.list_all()] == [key_for(good)]


@pytest.mark.parametrize("body", [
    b"{", b'{"proxy_url": "http://1.2.3.4:80",}', b"", b"nul", b"\xff\xfe",
    b'{"proxy_url": "http://1.2.3.4:80"} trailing', b"null", b"42",
    b'"http://1.2.3.4:80"', b"[]", b'{"proxies": 5}', b'{"proxies": [5]}',
    b'{"proxies": {"proxy_url": "http://1.2.3.4:80"}}',
], ids=["truncated", "trailing-comma", "empty", "bad-literal", "not-utf8",
        "trailing-garbage", "null", "number", "string", "array",
        "proxies-number", "proxies-of-number", "proxies-object"])
def test_malformed_or_wrong_type_body(client, body):
    with nothing_stored(client):
        r = client.post("/v1/proxies", data=body,
                        headers={"Content-Type": "application/json"})
    if body == b'{"proxies": [5]}':
        # A batch whose item is not an object: per-item error.
        assert r.status_code in (200, 400), r.text
        if r.status_code == 200:
            assert r.json()["failed"] == 1
    else:
        assert r.status_code == 400, r.text
    if body.startswith(b'{"proxies"') and r.status_code == 400:
        assert r.json().get("field") == "proxies"


def test_problem_strips_userinfo(client):
    r = client.post("/v1/proxies", json={
        "proxy_url": "http://secretuser:secretpass@1.2.3.4:0"})
    assert r.status_code == 400
    assert "secretpass" not in r.text and "secretuser" not in r.text
    r = client.post("/v1/proxies", json={"proxies": [
        {"proxy_url": "socks5://secretuser:secretpass@[::1:80"}]})
    assert "secretpass" not in r.text and "secretuser" not in r.text


# ---- query parameters ------------------------------------------------------

BAD_QUERIES = [
    ("/v1/proxies", {"limit": "0"}, "limit"),
    ("/v1/proxies", {"limit": "1001"}, "limit"),
    ("/v1/proxies", {"limit": "abc"}, "limit"),
    ("/v1/proxies", {"limit": "-1"}, "limit"),
    ("/v1/proxies", {"limit": "1.5"}, "limit"),
    ("/v1/proxies", {"limit": ""}, "limit"),
    ("/v1/proxies", {"limit": "99999999999999999999999"}, "limit"),
    ("/v1/proxies", {"health": "bogus"}, "health"),
    ("/v1/proxies", {"cursor": "!!!not-a-cursor!!!"}, "cursor"),
    ("/v1/pick", {"count": "0"}, "count"),
    ("/v1/pick", {"count": "101"}, "count"),
    ("/v1/pick", {"count": "abc"}, "count"),
    ("/v1/pick", {"count": "-3"}, "count"),
    ("/v1/pick", {"protocol": "ftp"}, "protocol"),
    ("/v1/pick", {"anonymity": "super"}, "anonymity"),
    ("/v1/pick", {"country": "USA"}, "country"),
    ("/v1/pick", {"max_latency_ms": "-1"}, "max_latency_ms"),
    ("/v1/pick", {"max_latency_ms": "fast"}, "max_latency_ms"),
    ("/v1/export", {"tier": "l4"}, "tier"),
]


@pytest.mark.parametrize("path,params,field", BAD_QUERIES,
                         ids=[f"{p}-{'-'.join(f'{k}={v}' for k, v in q.items())}"
                              for p, q, _ in BAD_QUERIES])
def test_bad_query(client, path, params, field):
    # An entry exists so that pick's 503 (empty cache) cannot hide the 400.
    client.upsert({"proxy_url": unique_url()})
    r = client.get(path, params=params)
    assert r.status_code == 400, r.text
    p = r.json()
    assert p["field"] == field and p["reason"], p


@pytest.mark.parametrize("params,field", [
    ({"ttl_seconds": "abc"}, "ttl_seconds"),
    ({"ttl_seconds": "-1"}, "ttl_seconds"),
    ({"source": "s" * 129}, "source"),
])
def test_bad_warm_query(client, params, field):
    with nothing_stored(client):
        r = client.post("/v1/warm", params=params, data=b"1.2.3.4:80\n",
                        headers={"Content-Type": "text/plain"})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field


@pytest.mark.parametrize("body,field", [
    ({"status": "maybe"}, "status"),
    ({"status": 1}, "status"),
    ({}, "status"),
    ({"status": "FAILURE"}, "status"),
])
def test_bad_health_report(client, body, field):
    key = client.upsert({"proxy_url": unique_url()}).json()["key"]
    r = client.post(f"/v1/proxies/{key}/health", json=body)
    assert r.status_code == 400, r.text
    assert r.json()["field"] == field
    e = client.get(f"/v1/proxies/{key}").json()
    assert e["failure_count"] == 0 and e["health_status"] == "unknown"


def test_bad_health_report_malformed_json(client):
    key = client.upsert({"proxy_url": unique_url()}).json()["key"]
    r = client.post(f"/v1/proxies/{key}/health", data=b'{"status":',
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 400


@pytest.mark.parametrize("body", [b"{", b"5", b'{"results": 5}', b'"x"'])
def test_bad_bulk_health_body(client, body):
    r = client.post("/v1/proxies/health", data=body,
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text


# ---- routes and methods -------------------------------------------------------

UNKNOWN_ROUTES = [
    "/", "/v1", "/v2/proxies", "/v1/nope", "/v1/proxies/",
    "/v1/proxies/" + "a" * 63, "/v1/proxies/" + "a" * 65,
    "/v1/proxies/" + "A" * 64, "/v1/proxies/" + "g" * 64,
    "/v1/proxies/not-a-key", "/v1/proxies/%30" + "0" * 63 + "x",
    "/v1/proxies/" + KEY + "/extra", "/v1/proxies/" + KEY + "/health/x",
    "/v1/proxies/" + "A" * 64 + "/health", "/metrics/x", "/healthz/",
    "/V1/PROXIES", "/v1/stats/", "/openapi.json",
]


@pytest.mark.parametrize("path", UNKNOWN_ROUTES)
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_unknown_route_is_404(client, method, path):
    r = client.request(method, path, json={} if method == "POST" else None)
    assert r.status_code == 404, r.text


_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE"]
WRONG_METHODS = []
for _template, _item in VALIDATOR.spec["paths"].items():
    _path = _template.replace("{key}", KEY)
    for _m in _METHODS:
        if _m.lower() not in _item:
            WRONG_METHODS.append((_m, _path, _template))


@pytest.mark.parametrize("method,path,template", WRONG_METHODS,
                         ids=[f"{m}-{t}" for m, _, t in WRONG_METHODS])
def test_wrong_method_is_405_with_allow(client, method, path, template):
    r = client.request(method, path, data=b"{}",
                       headers={"Content-Type": "application/json"})
    assert r.status_code == 405, r.text
    allow = {m.strip() for m in r.headers["Allow"].split(",")}
    want = set(VALIDATOR.methods(VALIDATOR.spec["paths"][template]))
    assert want <= allow <= want | {"HEAD", "OPTIONS"}


# ---- content types ----------------------------------------------------------------

JSON_ROUTES = ["/v1/proxies", "/v1/proxies/{key}/health",
               "/v1/proxies/health"]


@pytest.mark.parametrize("route", JSON_ROUTES)
@pytest.mark.parametrize("ctype", [None, "text/plain", "application/xml",
                                   "application/x-www-form-urlencoded",
                                   "application/x-ndjson", "text/csv"])
def test_json_routes_need_json_content_type(client, route, ctype):
    key = client.upsert({"proxy_url": unique_url()}).json()["key"]
    body = (b'{"status":"failure"}' if "health" in route and "{key}" in route
            else b'[{"key":"%s","status":"failure"}]' % key.encode()
            if route.endswith("/health") else
            b'{"proxy_url":"http://10.66.0.1:80"}')
    headers = {"Content-Type": ctype} if ctype else {}
    r = client.post(route.replace("{key}", key), data=body, headers=headers)
    assert r.status_code == 415, r.text
    e = client.get(f"/v1/proxies/{key}").json()
    assert e["failure_count"] == 0
    assert len(client.list_all()) == 1


@pytest.mark.parametrize("route", ["/v1/warm", "/v1/import"])
@pytest.mark.parametrize("ctype", ["application/octet-stream", "image/png",
                                   "application/xml", None])
def test_bulk_routes_content_types(client, route, ctype):
    headers = {"Content-Type": ctype} if ctype else {}
    with nothing_stored(client):
        r = client.post(route, data=b"1.2.3.4:80\n", headers=headers)
    assert r.status_code == 415, r.text


# ---- sizes ---------------------------------------------------------------------------

def _batch_body(n_bytes):
    """A valid batch of distinct entries of about n_bytes."""
    items = []
    i = 0
    while True:
        items.append('{"proxy_url":"http://10.55.%d.%d:8080"}'
                     % (i // 250, i % 250))
        body = ('{"proxies":[' + ",".join(items) + "]}").encode()
        if len(body) >= n_bytes:
            return body, len(items)
        i += 1


@pytest.fixture
def small_body_server(server_factory):
    return server_factory(args=["--max-body-bytes", "2048"])


def test_body_over_max_body_bytes_is_413(small_body_server):
    c = small_body_server.client()
    body, _ = _batch_body(3000)
    with nothing_stored(c):
        r = c.post("/v1/proxies", data=body,
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text


def test_chunked_body_over_max_body_bytes_is_413(small_body_server):
    c = small_body_server.client()
    body, _ = _batch_body(5000)

    def gen():
        for i in range(0, len(body), 500):
            yield body[i:i + 500]

    with nothing_stored(c):
        r = c.post("/v1/proxies", data=gen(),
                   headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text


def test_body_under_max_body_bytes_is_accepted(small_body_server):
    c = small_body_server.client()
    body, n = _batch_body(1900)
    assert len(body) <= 2048
    r = c.post("/v1/proxies", data=body,
               headers={"Content-Type": "application/json"})
    assert r.status_code == 201, r.text
    assert r.json()["created"] == n


def test_warm_is_not_limited_by_max_body_bytes(small_body_server):
    c = small_body_server.client()
    lines = "".join(f"10.56.{i // 250}.{i % 250}:3128\n" for i in range(400))
    assert len(lines) > 2048
    r = c.post("/v1/warm", data=lines.encode(),
               headers={"Content-Type": "text/plain"})
    assert r.status_code == 200, r.text
    assert r.json()["imported"] == 400


def test_warm_over_max_import_bytes_is_413(server_factory):
    s = server_factory(args=["--max-import-bytes", "4096"])
    c = s.client()
    lines = "".join(f"10.57.{i // 250}.{i % 250}:3128\n" for i in range(600))
    assert len(lines) > 4096
    r = c.post("/v1/warm", data=lines.encode(),
               headers={"Content-Type": "text/plain"})
    assert r.status_code == 413, r.text


def test_import_over_max_import_bytes_is_413(server_factory):
    s = server_factory(args=["--max-import-bytes", "4096"])
    c = s.client()
    line = ('{"key":"%s","proxy_url":"http://10.58.0.1:80","source":"x",'
            '"protocol":"http","fetch_time":"2026-01-01T00:00:00.000Z",'
            '"ttl_seconds":1,"expires_at":"2026-01-01T00:00:01.000Z",'
            '"health_status":"unknown","failure_count":0,"access_count":0}\n'
            % key_for("http://10.58.0.1:80"))
    body = (line * (8192 // len(line) + 1)).encode()
    r = c.post("/v1/import", data=body,
               headers={"Content-Type": "application/x-ndjson"})
    assert r.status_code == 413, r.text


@pytest.mark.parametrize("route", ["/v1/proxies/{key}/health",
                                   "/v1/proxies/health"])
def test_health_body_over_max_body_bytes_is_413(small_body_server, route):
    c = small_body_server.client()
    key = c.upsert({"proxy_url": unique_url()}).json()["key"]
    if route == "/v1/proxies/health":
        body = [{"key": key, "status": "failure"}] * 60
    else:
        body = {"status": "failure", "padding": "x" * 3000}
    r = c.post(route.replace("{key}", key), json=body)
    assert r.status_code == 413, r.text
    assert c.get(f"/v1/proxies/{key}").json()["failure_count"] == 0


@pytest.mark.parametrize("value", ["abc", "TRUE", "yes", "2"])
def test_bad_reveal_value_is_400(client, value):
    key = client.upsert({"proxy_url": "http://ru:zq9pwd7@10.59.0.1:80"}
                        ).json()["key"]
    r = client.get(f"/v1/proxies/{key}", params={"reveal": value})
    assert r.status_code == 400, r.text
    assert r.json()["field"] == "reveal"
    assert "zq9pwd7" not in r.text


@pytest.mark.parametrize("body", [b"5", b'"text"', b"null", b"true"])
def test_warm_json_neither_array_nor_object_is_400(client, body):
    r = client.post("/v1/warm", data=body,
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert client.list_all() == []
