# SPDX-License-Identifier: MIT
"""openapi.yaml itself: it describes every route of SPEC section 5, its
schemas are valid JSON Schema 2020-12, the served copy is the file, and the
response validator used by every other test rejects what it must."""

import jsonschema
import pytest
import yaml
from requests.structures import CaseInsensitiveDict

from conftest import SPEC_PATH, VALIDATOR
from openapi_validator import ContractViolation

SPEC = VALIDATOR.spec

# SPEC section 5, method and path.
ROUTES = [
    ("POST", "/v1/proxies"),
    ("GET", "/v1/proxies/{key}"),
    ("DELETE", "/v1/proxies/{key}"),
    ("GET", "/v1/proxies"),
    ("GET", "/v1/pick"),
    ("POST", "/v1/proxies/{key}/health"),
    ("POST", "/v1/proxies/health"),
    ("DELETE", "/v1/proxies"),
    ("POST", "/v1/warm"),
    ("GET", "/v1/export"),
    ("POST", "/v1/import"),
    ("GET", "/v1/stats"),
    ("GET", "/metrics"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/openapi.yaml"),
]
OPEN_ROUTES = {"/healthz", "/readyz", "/metrics"}
SCHEMAS = ["Entry", "StoredEntry", "EntryInput", "UpsertResult", "ListResult",
           "PickResult", "HealthEntry", "EvictedResult", "BulkHealthResult",
           "WarmResult", "ExportLine", "Stats", "Ready", "NotReady",
           "HealthResult", "ClearResult", "Problem"]


def test_openapi_version_and_info():
    assert str(SPEC["openapi"]).startswith("3.1.")
    assert SPEC["info"]["version"] == "0.1.0"
    assert SPEC["components"]["securitySchemes"]["bearerAuth"] == {
        **SPEC["components"]["securitySchemes"]["bearerAuth"],
        "type": "http", "scheme": "bearer"}
    assert SPEC["security"] == [{"bearerAuth": []}]


def test_every_route_is_described():
    described = {(m, p) for p, item in SPEC["paths"].items()
                 for m in VALIDATOR.methods(item)}
    assert set(ROUTES) == described


@pytest.mark.parametrize("method,path", ROUTES)
def test_security_per_route(method, path):
    op = SPEC["paths"][path][method.lower()]
    if path in OPEN_ROUTES:
        assert op.get("security") == []
    else:
        assert "security" not in op  # inherits bearerAuth
        assert "401" in op["responses"]


@pytest.mark.parametrize("name", SCHEMAS)
def test_component_schemas_are_valid_2020_12(name):
    schema = SPEC["components"]["schemas"][name]
    VALIDATOR.schema_validator(schema)  # check_schema inside


def test_all_component_schemas_compile():
    for name, schema in SPEC["components"]["schemas"].items():
        VALIDATOR.schema_validator(schema)
    root = {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "components": SPEC["components"]}
    jsonschema.Draft202012Validator.check_schema(root)


def test_served_contract_is_the_file(client):
    r = client.get("/openapi.yaml")
    assert r.status_code == 200
    assert r.headers["Content-Type"].split(";")[0].strip() == \
        "application/yaml"
    assert yaml.safe_load(r.content) == yaml.safe_load(SPEC_PATH.read_bytes())


# ---- the validator rejects what it must (no server needed) ----------------

def _headers(**kw):
    h = CaseInsensitiveDict()
    for k, v in kw.items():
        h[k.replace("_", "-")] = v
    return h


PROBLEM = (b'{"type":"urn:proxycache:problem:not-found","title":"Not Found",'
           b'"status":404,"detail":"no such entry"}')
KEY = "a" * 64


def test_validator_accepts_a_good_problem():
    VALIDATOR.validate("GET", f"http://x/v1/proxies/{KEY}", 404,
                       _headers(Content_Type="application/problem+json",
                                X_Request_Id="r-1"), PROBLEM)


@pytest.mark.parametrize("method,path,status,headers,body,why", [
    ("GET", f"/v1/proxies/{KEY}", 418,
     {"Content-Type": "application/problem+json"}, PROBLEM,
     "status 418 is not documented"),
    ("GET", f"/v1/proxies/{KEY}", 404, {"Content-Type": "application/json"},
     PROBLEM, "Content-Type"),
    ("GET", f"/v1/proxies/{KEY}", 404,
     {"Content-Type": "application/problem+json"},
     PROBLEM.replace(b'"status":404', b'"status":400'), "problem status"),
    ("GET", f"/v1/proxies/{KEY}", 404,
     {"Content-Type": "application/problem+json"},
     PROBLEM[:-1] + b',"extra":1}', "Additional properties"),
    ("GET", "/v1/nope", 200, {"Content-Type": "application/json"}, b"{}",
     "no path"),
    ("GET", "/v1/proxies/ABC", 200, {"Content-Type": "application/json"},
     b"{}", "no path"),
    ("PUT", "/v1/proxies", 405, {"Content-Type": "application/problem+json"},
     PROBLEM.replace(b"404", b"405"), "without Allow"),
    ("PUT", "/v1/proxies", 405, {"Content-Type": "application/problem+json",
                                 "Allow": "GET"},
     PROBLEM.replace(b"404", b"405"), "Allow is"),
    ("DELETE", f"/v1/proxies/{KEY}", 204, {}, b"x", "no body"),
    ("GET", "/v1/pick", 503, {"Content-Type": "application/problem+json"},
     PROBLEM.replace(b"404", b"503"), "Retry-After"),
    ("GET", "/v1/stats", 401, {"Content-Type": "application/problem+json"},
     PROBLEM.replace(b"404", b"401"), "WWW-Authenticate"),
    ("GET", "/healthz", 200, {"Content-Type": "application/json"},
     b'{"status":"fine"}', "does not match"),
    ("GET", "/v1/export", 200, {"Content-Type": "application/x-ndjson"},
     b'{"key":"x"}\n', "does not match"),
    ("GET", "/metrics", 200, {"Content-Type": "text/plain"}, b"x 1\n",
     "Content-Type"),
])
def test_validator_rejects(method, path, status, headers, body, why):
    headers = CaseInsensitiveDict(headers)
    headers.setdefault("X-Request-Id", "r-1")
    with pytest.raises(ContractViolation, match=why):
        VALIDATOR.validate(method, "http://x" + path, status, headers, body)


def test_validator_requires_request_id():
    with pytest.raises(ContractViolation, match="X-Request-Id"):
        VALIDATOR.validate("GET", f"http://x/v1/proxies/{KEY}", 404,
                           _headers(Content_Type="application/problem+json"),
                           PROBLEM)


def test_validator_routes_literal_before_key():
    assert VALIDATOR.match("/v1/proxies/health")[0] == "/v1/proxies/health"
    assert VALIDATOR.match(f"/v1/proxies/{KEY}")[0] == "/v1/proxies/{key}"
    assert VALIDATOR.match(f"/v1/proxies/{KEY}/health")[0] == \
        "/v1/proxies/{key}/health"
    assert VALIDATOR.match("/v1/proxies/" + "A" * 64)[0] is None
    assert VALIDATOR.match("/v1/proxies/" + "a" * 63)[0] is None
    assert VALIDATOR.match("/v1/proxies/")[0] is None


def test_validator_checks_date_time_format():
    body = (b'{"status":"ok"}')
    VALIDATOR.validate("GET", "http://x/healthz", 200,
                       CaseInsensitiveDict({"Content-Type":
                                            "application/json",
                                            "X-Request-Id": "r-1"}), body)
    line = ('{"key":"%s","proxy_url":"http://1.2.3.4:80","source":"s",'
            '"protocol":"http","fetch_time":"2026-13-01T00:00:00Z",'
            '"ttl_seconds":1,"expires_at":"2026-01-01T00:00:01Z",'
            '"health_status":"unknown","failure_count":0,"access_count":0}\n'
            % KEY).encode()
    with pytest.raises(ContractViolation, match="date-time"):
        VALIDATOR.validate("GET", "http://x/v1/export", 200,
                           CaseInsensitiveDict({"Content-Type":
                                                "application/x-ndjson",
                                                "X-Request-Id": "r-1"}),
                           line)
