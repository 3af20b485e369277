# SPDX-License-Identifier: MIT
"""API token (PROXYCACHE_API_TOKEN) and the reveal rules (SPEC section 4):
401 + WWW-Authenticate on every protected route without or with a wrong
token, checked before routing; /healthz, /readyz, /metrics open; reveal is
403 without a configured token and shows plain text with a valid one."""

import pytest

from conftest import TEST_TOKEN, VALIDATOR
from helpers import key_for, unique_url

KEY = "1" * 64

PROTECTED = []
for _template, _item in VALIDATOR.spec["paths"].items():
    for _m in VALIDATOR.methods(_item):
        if _item[_m.lower()].get("security") != []:
            PROTECTED.append((_m, _template))
OPEN = [("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")]


def _body_for(method, template):
    if method != "POST":
        return {}
    if template == "/v1/proxies":
        return {"json": {"proxy_url": "http://10.99.0.1:80"}}
    if template.endswith("{key}/health"):
        return {"json": {"status": "failure"}}
    if template == "/v1/proxies/health":
        return {"json": [{"key": KEY, "status": "failure"}]}
    return {"data": b"10.99.0.2:80\n", "headers": {"Content-Type":
                                                    "text/plain"}}


BAD_AUTH = {
    "missing": None,
    "wrong-token": f"Bearer {TEST_TOKEN}x",
    "prefix-of-token": f"Bearer {TEST_TOKEN[:-1]}",
    "empty-bearer": "Bearer ",
    "basic-scheme": "Basic dXNlcjpwYXNz",
    "token-without-scheme": TEST_TOKEN,
}


@pytest.mark.parametrize("method,template", PROTECTED,
                         ids=[f"{m}-{t}" for m, t in PROTECTED])
def test_protected_routes_need_the_token(token_server, method, template):
    c = token_server.client(auth=False)
    for auth, value in BAD_AUTH.items():
        kw = _body_for(method, template)
        headers = dict(kw.pop("headers", {}))
        headers["Authorization"] = value
        r = c.request(method, template.replace("{key}", KEY),
                      headers=headers, **kw)
        assert r.status_code == 401, f"{auth}: {r.status_code} {r.text}"
        assert r.headers["WWW-Authenticate"].startswith("Bearer"), auth
    # Nothing happened.
    ok = token_server.client()
    assert ok.list_all() == []
    assert ok.stats()["overall"]["writes"] == 0


@pytest.mark.parametrize("method,template", PROTECTED,
                         ids=[f"{m}-{t}" for m, t in PROTECTED])
def test_protected_routes_work_with_the_token(token_server, method,
                                              template):
    c = token_server.client()
    c.upsert({"proxy_url": unique_url()})
    kw = _body_for(method, template)
    r = c.request(method, template.replace("{key}", KEY), **kw)
    assert r.status_code not in (401, 403), r.text


@pytest.mark.parametrize("method,path", OPEN)
def test_open_routes_need_no_token(token_server, method, path):
    c = token_server.client(auth=False)
    assert c.request(method, path).status_code == 200
    r = c.request(method, path,
                  headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 200


@pytest.mark.parametrize("path", ["/nope", "/v1/proxies/xyz", "/v2/x"])
def test_auth_is_checked_before_routing(token_server, path):
    c = token_server.client(auth=False)
    r = c.get(path)
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert token_server.client().get(path).status_code == 404


def test_auth_is_checked_before_method(token_server):
    c = token_server.client(auth=False)
    r = c.put("/v1/proxies", data=b"{}")
    assert r.status_code == 401
    assert token_server.client().put("/v1/proxies",
                                     data=b"{}").status_code == 405


def test_token_case_and_scheme_case(token_server):
    c = token_server.client(auth=False)
    r = c.get("/v1/stats", headers={"Authorization": f"bearer {TEST_TOKEN}"})
    # RFC 9110: the auth scheme is case-insensitive.
    assert r.status_code == 200
    r = c.get("/v1/stats",
              headers={"Authorization": f"Bearer {TEST_TOKEN.upper()}"})
    assert r.status_code == 401


# ---- reveal ---------------------------------------------------------------------

def test_reveal_without_configured_token_is_403(server, client):
    if server.external and server.token:
        pytest.skip("the external server has a token configured")
    url = "http://dave:pw-dave@10.3.3.3:8080"
    key = client.upsert({"proxy_url": url}).json()["key"]
    r = client.get(f"/v1/proxies/{key}", params={"reveal": "true"})
    assert r.status_code == 403, r.text
    assert "pw-dave" not in r.text
    # Even with some Authorization header: no token is configured.
    r = client.get(f"/v1/proxies/{key}", params={"reveal": "true"},
                   headers={"Authorization": "Bearer anything"})
    assert r.status_code == 403
    # The masked read still works.
    assert client.get(f"/v1/proxies/{key}").json()["password"] == "***"


def test_reveal_with_token_shows_plain_text(token_server):
    c = token_server.client()
    url = "http://erin:pw%40erin@10.4.4.4:8080"
    key = c.upsert({"proxy_url": url}).json()["key"]
    e = c.get(f"/v1/proxies/{key}", params={"reveal": "true"}).json()
    assert e["username"] == "erin"
    assert e["password"] == "pw@erin"  # percent-decoded
    masked = c.get(f"/v1/proxies/{key}").json()
    assert masked["username"] == "***" and masked["password"] == "***"
    # Not in lists, picks or exports.
    assert "pw@erin" not in c.get("/v1/proxies").text
    assert "pw@erin" not in c.get("/v1/pick").text
    assert "pw@erin" not in c.get("/v1/export").text


def test_reveal_with_wrong_token_is_401(token_server):
    c = token_server.client()
    key = c.upsert({"proxy_url": "http://f:g@10.5.5.5:80"}).json()["key"]
    r = token_server.client(token="nope").get(f"/v1/proxies/{key}",
                                              params={"reveal": "true"})
    assert r.status_code == 401
    assert "WWW-Authenticate" in r.headers


def test_reveal_entry_without_credentials(token_server):
    c = token_server.client()
    url = unique_url()
    c.upsert({"proxy_url": url})
    e = c.get(f"/v1/proxies/{key_for(url)}", params={"reveal": "true"})
    assert e.status_code == 200
    assert "username" not in e.json()


def test_reveal_absent_is_404(token_server):
    c = token_server.client()
    r = c.get(f"/v1/proxies/{key_for(unique_url())}",
              params={"reveal": "true"})
    assert r.status_code == 404
