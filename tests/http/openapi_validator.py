# SPDX-License-Identifier: MIT
"""Validate HTTP responses against openapi.yaml.

Why: SPEC section 8 requires every response of the black-box tests to be
validated against the contract. conftest.py installs this validator under
requests' transport adapter, so no response can escape it: a response whose
path, method, status, headers, Content-Type or body the contract does not
describe raises ContractViolation (an AssertionError) in the test that made
the request.

Routing mirrors the service: literal path segments win over parameters, a
path parameter must satisfy its schema (a {key} that is not 64 lowercase hex
characters is no match at all). A request that matches no path may only be
answered 404 (or 401, since authentication is checked before routing); a
known path with a method it does not define may only be answered 405 with
Allow (or 401). These generic answers are components.responses.NotFound,
MethodNotAllowed and Unauthorized.

Schemas are OpenAPI 3.1 = JSON Schema 2020-12. Each schema is validated as
the root of a document that also carries the spec's "components", so
"#/components/schemas/X" references resolve with any jsonschema version
(Debian's 4.10 RefResolver as well as newer "referencing").

Thread-safety: validate() may be called from many threads; compiled
validators are cached under a lock.
"""

import datetime
import json
import re
import threading
import urllib.parse

import jsonschema
import yaml


class ContractViolation(AssertionError):
    """A response the contract does not allow."""


_DATE_TIME = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?"
    r"([Zz]|[+-]\d{2}:\d{2})$")


def _is_date_time(value):
    """RFC 3339 date-time (jsonschema only checks it when the optional
    rfc3339-validator package is installed, which Debian lacks)."""
    if not isinstance(value, str):
        return True
    m = _DATE_TIME.match(value)
    if not m:
        return False
    try:
        year, month, day, hour, minute, second = (int(m.group(i))
                                                  for i in range(1, 7))
        if second == 60:  # leap second
            second = 59
        datetime.datetime(year, month, day, hour, minute, second)
    except ValueError:
        return False
    return True


def _format_checker():
    checker = jsonschema.FormatChecker()
    checker.checks("date-time")(_is_date_time)
    return checker


def media_type(value):
    """'Application/JSON; charset=utf-8' -> ('application/json',
    {'charset': 'utf-8'})"""
    if value is None:
        return None, {}
    parts = [p.strip() for p in value.split(";")]
    params = {}
    for p in parts[1:]:
        if "=" in p:
            k, v = p.split("=", 1)
            params[k.strip().lower()] = v.strip().strip('"').lower()
    return parts[0].lower(), params


class OpenApiValidator:
    def __init__(self, spec_path):
        with open(spec_path, "rb") as f:
            self.spec = yaml.safe_load(f)
        self.components = self.spec.get("components", {})
        self._lock = threading.Lock()
        self._validators = {}
        self._checker = _format_checker()
        self.seen = set()  # (template, method, status) observed
        self.count = 0
        self._templates = []
        for template, item in self.spec["paths"].items():
            segs = template.strip("/").split("/")
            self._templates.append((segs, template, item))
        # Most literal segments first: literal segments win over {key}.
        self._templates.sort(key=lambda t: -sum(
            1 for s in t[0] if not s.startswith("{")))

    # ---- references -----------------------------------------------------
    def resolve(self, obj):
        seen = 0
        while isinstance(obj, dict) and "$ref" in obj:
            ref = obj["$ref"]
            if not ref.startswith("#/"):
                raise ContractViolation("external $ref not supported: " + ref)
            node = self.spec
            for part in ref[2:].split("/"):
                part = part.replace("~1", "/").replace("~0", "~")
                node = node[part]
            obj = node
            seen += 1
            if seen > 32:
                raise ContractViolation("$ref loop at " + ref)
        return obj

    def schema_validator(self, schema):
        """A Draft 2020-12 validator for schema (a dict from the spec)."""
        ident = id(schema)
        with self._lock:
            v = self._validators.get(ident)
            if v is None:
                root = dict(schema)
                root["$schema"] = "https://json-schema.org/draft/2020-12/schema"
                root["components"] = self.components
                jsonschema.Draft202012Validator.check_schema(root)
                v = jsonschema.Draft202012Validator(
                    root, format_checker=self._checker)
                self._validators[ident] = (v, schema)
            else:
                v = v[0]
        return v

    def check(self, schema, instance, what):
        v = self.schema_validator(schema)
        errors = sorted(v.iter_errors(instance), key=lambda e: list(e.path))
        if errors:
            msgs = []
            for e in errors[:5]:
                loc = "/".join(str(p) for p in e.absolute_path) or "<root>"
                msg = e.message
                if len(msg) > 400:
                    msg = msg[:400] + "..."
                msgs.append(f"  at {loc}: {msg}")
                for sub in (e.context or [])[:4]:
                    sl = "/".join(str(p) for p in sub.absolute_path) or "<root>"
                    sm = sub.message
                    if len(sm) > 200:
                        sm = sm[:200] + "..."
                    msgs.append(f"      (branch) at {sl}: {sm}")
            raise ContractViolation(f"{what}: body does not match schema:\n"
                                    + "\n".join(msgs))

    # ---- routing ----------------------------------------------------------
    def param_schema(self, item, operation, name):
        for plist in (operation or {}).get("parameters", []), \
                item.get("parameters", []):
            for p in plist:
                p = self.resolve(p)
                if p.get("in") == "path" and p.get("name") == name:
                    return p.get("schema", {})
        return {}

    def match(self, path):
        """(template, path item) for a raw request path, or (None, None)."""
        segs = path.strip("/").split("/") if path != "/" else [""]
        if path.endswith("/") and path != "/":
            segs.append("")  # a trailing slash is a different path
        for tsegs, template, item in self._templates:
            if len(tsegs) != len(segs):
                continue
            ok = True
            for t, s in zip(tsegs, segs):
                if t.startswith("{"):
                    name = t[1:-1]
                    value = urllib.parse.unquote(s)
                    schema = self.param_schema(item, None, name)
                    if not value:
                        ok = False
                        break
                    if schema:
                        try:
                            self.schema_validator(schema).validate(value)
                        except jsonschema.ValidationError:
                            ok = False
                            break
                elif t != s:
                    ok = False
                    break
            if ok:
                return template, item
        return None, None

    def methods(self, item):
        return sorted(m.upper() for m in item
                      if m in ("get", "put", "post", "delete", "patch",
                               "head", "options", "trace"))

    # ---- validation -------------------------------------------------------
    def validate(self, method, url, status, headers, body):
        """Raise ContractViolation unless the response is one the contract
        describes. headers: case-insensitive mapping; body: bytes."""
        method = method.upper()
        path = urllib.parse.urlsplit(url).path or "/"
        template, item = self.match(path)
        where = f"{method} {path} -> {status}"
        if template is None:
            if status not in (401, 404):
                raise ContractViolation(
                    f"{where}: no path of the contract matches {path!r}; only "
                    f"404 (or 401) is allowed, got {status}: {_snippet(body)}")
            response = self.components["responses"][
                "NotFound" if status == 404 else "Unauthorized"]
            key = ("<unknown route>", method, status)
        elif method.lower() not in item:
            if method == "HEAD" and "get" in item:
                raise ContractViolation(f"{where}: HEAD is not exercised")
            if status not in (401, 405):
                raise ContractViolation(
                    f"{where}: {template} has no {method}; only 405 (or 401) "
                    f"is allowed, got {status}: {_snippet(body)}")
            response = self.components["responses"][
                "MethodNotAllowed" if status == 405 else "Unauthorized"]
            key = (template, method + " (undefined)", status)
            if status == 405:
                self._check_allow(where, headers, item)
        else:
            op = item[method.lower()]
            responses = op.get("responses", {})
            response = responses.get(str(status))
            if response is None:
                raise ContractViolation(
                    f"{where}: status {status} is not documented for "
                    f"{method} {template} (documented: "
                    f"{', '.join(sorted(responses))}): {_snippet(body)}")
            key = (template, method, status)
        response = self.resolve(response)
        self._check_headers(where, response, headers)
        self._check_body(where, method, response, headers, body, status)
        with self._lock:
            self.seen.add(key)
            self.count += 1

    def _check_allow(self, where, headers, item):
        allow = headers.get("Allow")
        if allow is None:
            raise ContractViolation(f"{where}: 405 without Allow header")
        got = {m.strip().upper() for m in allow.split(",") if m.strip()}
        want = set(self.methods(item))
        extra = got - want - {"HEAD", "OPTIONS"}
        if not want <= got or extra:
            raise ContractViolation(
                f"{where}: Allow is {allow!r}, the contract defines "
                f"{', '.join(sorted(want))}")

    def _check_headers(self, where, response, headers):
        for name, hdef in (response.get("headers") or {}).items():
            hdef = self.resolve(hdef)
            value = headers.get(name)
            if value is None:
                if hdef.get("required"):
                    raise ContractViolation(
                        f"{where}: required header {name} missing")
                continue
            schema = hdef.get("schema") or {}
            instance = value
            stype = self.resolve(schema).get("type")
            if stype == "integer":
                if not re.fullmatch(r"-?\d+", value.strip()):
                    raise ContractViolation(
                        f"{where}: header {name}={value!r} is not an integer")
                instance = int(value)
            try:
                self.schema_validator(schema).validate(instance)
            except jsonschema.ValidationError as e:
                raise ContractViolation(
                    f"{where}: header {name}={value!r}: {e.message}") from None

    def _check_body(self, where, method, response, headers, body, status):
        content = response.get("content")
        if not content:
            if body:
                raise ContractViolation(
                    f"{where}: the contract documents no body, got "
                    f"{len(body)} bytes: {_snippet(body)}")
            return
        if method == "HEAD":
            return
        ctype, params = media_type(headers.get("Content-Type"))
        if ctype is None:
            raise ContractViolation(f"{where}: no Content-Type")
        chosen = None
        for key, mt in content.items():
            kt, kparams = media_type(key)
            if kt == ctype and all(params.get(k) == v
                                   for k, v in kparams.items()):
                chosen = mt
                break
        if chosen is None:
            raise ContractViolation(
                f"{where}: Content-Type {headers.get('Content-Type')!r} is not "
                f"one of {sorted(content)}")
        schema = chosen.get("schema") or {}
        if ctype == "application/json" or ctype.endswith("+json"):
            try:
                doc = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as e:
                raise ContractViolation(
                    f"{where}: body is not JSON ({e}): {_snippet(body)}") \
                    from None
            self.check(schema, doc, where)
            if ctype == "application/problem+json" and isinstance(doc, dict) \
                    and doc.get("status") != status:
                raise ContractViolation(
                    f"{where}: problem status {doc.get('status')} differs "
                    f"from the HTTP status")
        elif ctype == "application/x-ndjson":
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ContractViolation(f"{where}: not UTF-8: {e}") from None
            if text and not text.endswith("\n"):
                raise ContractViolation(
                    f"{where}: JSON lines body does not end with a newline")
            for n, line in enumerate(text.split("\n")[:-1], 1):
                try:
                    doc = json.loads(line)
                except ValueError as e:
                    raise ContractViolation(
                        f"{where}: line {n} is not JSON ({e}): "
                        f"{line[:200]!r}") from None
                self.check(schema, doc, f"{where} line {n}")
        else:
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ContractViolation(f"{where}: not UTF-8: {e}") from None
            if self.resolve(schema).get("type") == "string":
                self.check(schema, text, where)

    def documented(self):
        """Every (template, METHOD, status) the contract documents."""
        out = set()
        for template, item in self.spec["paths"].items():
            for m in self.methods(item):
                for status in item[m.lower()].get("responses", {}):
                    out.add((template, m, int(status)))
        return out


def _snippet(body, n=300):
    if body is None:
        return "<no body>"
    try:
        text = body.decode("utf-8", "replace")
    except AttributeError:
        text = str(body)
    return repr(text[:n]) + ("..." if len(text) > n else "")
