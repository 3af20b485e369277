# SPDX-License-Identifier: MIT
"""Small helpers shared by the black-box tests: key derivation (the same
rule as the service, so tests can predict keys), time formatting, unique
proxy URLs and a bounded poll loop. No state except a process-wide counter
for unique URLs (guarded by a lock; tests run threads)."""

import datetime
import hashlib
import itertools
import os
import threading
import time
import urllib.parse

_counter = itertools.count(1)
_counter_lock = threading.Lock()
# Different runs and different processes get different address ranges.
_salt = os.getpid() % 200


def normalise(url):
    """scheme://host:port with lowercase scheme/host, no userinfo, no
    trailing slash (SPEC section 2)."""
    scheme, rest = url.split("://", 1)
    rest = rest.rstrip("/")
    if "@" in rest:
        rest = rest.rsplit("@", 1)[1]
    return f"{scheme.lower()}://{rest.lower()}"


def key_for(url):
    return hashlib.sha256(normalise(url).encode()).hexdigest()


def unique_url(scheme="http", port=None):
    """A proxy URL no other call in this process returns."""
    with _counter_lock:
        n = next(_counter)
    a, b, c = (n >> 16) & 0xFF, (n >> 8) & 0xFF, n & 0xFF
    host = f"10.{(_salt + a) % 256}.{b}.{c}"
    return f"{scheme}://{host}:{port or (1024 + n % 60000)}"


def utcnow():
    return datetime.datetime.now(datetime.timezone.utc)


def iso(dt):
    """RFC 3339 UTC with milliseconds, as the service writes it."""
    dt = dt.astimezone(datetime.timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_iso(s):
    s = s.replace("Z", "+00:00").replace("z", "+00:00")
    return datetime.datetime.fromisoformat(s)


def wait_until(predicate, timeout, interval=0.05, what="condition"):
    """Poll predicate() until it returns a truthy value (returned) or
    timeout seconds pass (AssertionError)."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for "
                                 f"{what} (last value: {last!r})")
        time.sleep(interval)


def query(**params):
    return "?" + urllib.parse.urlencode(params) if params else ""


def problem_field(resp):
    """The problem document's field (None if absent)."""
    return resp.json().get("field")
