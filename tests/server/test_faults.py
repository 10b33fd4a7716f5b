"""Acceptance 4 (part): faults from clients. Oversize bodies, gzip bombs, malformed JSON,
wrong keys, wrong user tokens, slow clients, rate limits: each gets its 4xx, never a 500,
and the sidecar keeps serving everyone else meanwhile."""

from __future__ import annotations

import base64
import gzip
import json
import random
import socket
import threading
import time
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from pyfriction_server import user_token

from .sidecar_util import ADMIN_KEY, HOST, SECRET, WRITE_KEY, ThreadServer

AUTH = {"X-Write-Key": WRITE_KEY}


@pytest.fixture(scope="module")
def strict() -> Iterator[ThreadServer]:
    """A sidecar with identity verification and a 1 s body timeout."""
    with ThreadServer(write_keys=[WRITE_KEY], admin_keys=[ADMIN_KEY], identity_secret=SECRET, body_timeout=1.0) as s:
        yield s


def _batch(user: str, n: int = 3, **props: Any) -> dict[str, Any]:
    return {"batch": [{"type": "track", "event": "click", "userId": user, "properties": {"target": "#x", **props}}
                      for _ in range(n)]}  # fmt: skip


def test_wrong_key_401(sidecar: Any) -> None:
    url = sidecar.url + "/v1/batch"
    for headers in ({}, {"X-Write-Key": "nope"}, {"Authorization": "Basic " + base64.b64encode(b"nope:").decode()},
                    {"Authorization": "Basic !!!notbase64"}, {"Authorization": "Bearer nope"}):  # fmt: skip
        r = httpx.post(url, json=_batch("u-key"), headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["code"] == "unauthorized"
    assert httpx.post(url, json={**_batch("u-key"), "writeKey": "nope"}).status_code == 401
    assert httpx.post(url, json={**_batch("u-key"), "writeKey": WRITE_KEY}).status_code == 200
    assert httpx.post(sidecar.url + "/batch/", json={"api_key": "nope", "batch": []}).status_code == 401


def test_write_key_cannot_read_support_endpoints(sidecar: Any) -> None:
    for path in ("/v1/users/u-key", "/v1/hotspots"):
        assert httpx.get(sidecar.url + path, headers={"Authorization": f"Bearer {WRITE_KEY}"}).status_code == 401
        assert httpx.get(sidecar.url + path).status_code == 401
    assert httpx.get(sidecar.url + "/v1/hotspots", headers={"X-Admin-Key": ADMIN_KEY}).status_code == 200


def test_malformed_json_400(sidecar: Any) -> None:
    for body in (b"{", b"[1,2", b"\xff\xfe", b"null", b'{"batch": 5}', b'{"batch": [1]}',
                 b'{"batch": [{"timestamp": "yesterday"}]}', b'{"batch": [{"userId": {"a": 1}}]}'):  # fmt: skip
        r = httpx.post(sidecar.url + "/v1/batch", content=body, headers=AUTH)
        assert r.status_code == 400, body
        assert r.json()["code"] == "bad_request"
    r = httpx.post(sidecar.url + "/v1/events", content=b"\xc1", headers={**AUTH, "Content-Type": "application/msgpack"})
    assert r.status_code == 400
    r = httpx.post(sidecar.url + "/v1/batch", content=b"not gzip", headers={**AUTH, "Content-Encoding": "gzip"})
    assert r.status_code == 400 and r.json()["code"] == "bad_encoding"
    r = httpx.post(sidecar.url + "/v1/batch", content=b"{}", headers={**AUTH, "Content-Encoding": "br"})
    assert r.status_code == 415


def test_oversize_413(sidecar: Any) -> None:
    limit = sidecar.settings.max_body_bytes
    big = json.dumps(_batch("u-big", 1, pad="x" * (limit + 10))).encode()
    r = httpx.post(sidecar.url + "/v1/batch", content=big, headers=AUTH)
    assert r.status_code == 413
    # declared far beyond the limit: refused before reading
    r = httpx.post(sidecar.url + "/v1/batch", content=b"x" * (limit * 8), headers=AUTH)
    assert r.status_code == 413
    # chunked (no Content-Length), oversize while streaming
    r = httpx.post(sidecar.url + "/v1/batch", content=iter([b"x" * 65536] * 10), headers=AUTH)
    assert r.status_code == 413
    # one event over Segment's 32 KB, in an otherwise small batch
    body = {"batch": [{"type": "track", "event": "click", "userId": "u", "properties": {"pad": "y" * 40_000}}]}
    r = httpx.post(sidecar.url + "/v1/batch", json=body, headers=AUTH)
    assert r.status_code == 413 and "event 0" in r.json()["message"]
    r = httpx.post(sidecar.url + "/v1/track", json=body["batch"][0], headers=AUTH)
    assert r.status_code == 413
    # too many events
    r = httpx.post(sidecar.url + "/v1/events", json=[{"user_id": "u", "type": "click"}] * 10_001, headers=AUTH)
    assert r.status_code == 413
    # and the server is fine
    assert httpx.post(sidecar.url + "/v1/batch", json=_batch("u-after-big"), headers=AUTH).status_code == 200


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
def test_gzip_bomb_413(sidecar: Any, encoding: str) -> None:
    inflated = b'{"batch": [' + b" " * (50 * 1024 * 1024) + b"]}"  # 50 MB of blanks
    body = gzip.compress(inflated, 9) if encoding == "gzip" else zlib.compress(inflated, 9)
    assert len(body) < 100_000
    r = httpx.post(sidecar.url + "/v1/batch", content=body, headers={**AUTH, "Content-Encoding": encoding})
    assert r.status_code == 413
    assert "decompressed" in r.json()["message"]
    # a legitimate gzip body still works
    ok = gzip.compress(json.dumps(_batch("u-gz")).encode())
    assert (
        httpx.post(sidecar.url + "/v1/batch", content=ok, headers={**AUTH, "Content-Encoding": "gzip"}).status_code
        == 200
    )


def test_garbage_never_500(sidecar: Any) -> None:
    rng = random.Random(6)
    paths = ["/v1/batch", "/v1/track", "/v1/identify", "/v1/events", "/batch/", "/e/", "/i/v1/analytics/events",
             "/v1/guidance/u1/ack"]  # fmt: skip
    samples = [b"", b"{}", b"[]", b'{"batch": null}', b'{"batch": [{}]}', b'{"batch": [null]}', b'"x"', b"1e999",
               b'{"batch": [{"type": "track", "userId": 1e400}]}', b'{"events": [{"user_id": "u", "type": "click", "ts": -5}]}',
               b'[{"user_id": "u", "type": "click", "ts": 1e308}]', b'{"batch": [{"event": "$rageclick", "distinct_id": "u"}]}',
               b'{"batch": [{"type": "page", "userId": "u", "context": "nope"}]}', b'{"guidance_id": "", "outcome": "shown"}']  # fmt: skip
    samples += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))) for _ in range(40)]
    with httpx.Client(base_url=sidecar.url, headers=AUTH) as client:
        for path in paths:
            for body in samples:
                for ctype in ("application/json", "application/msgpack"):
                    r = client.post(path, content=body, headers={"Content-Type": ctype})
                    assert r.status_code < 500, (path, body, r.text)
                    assert r.headers["content-type"].startswith("application/json")


def test_hmac_identity_verification(strict: Any) -> None:
    base = strict.url + "/v1/guidance/alice"
    h = {"X-Write-Key": WRITE_KEY}
    assert httpx.get(base, headers=h).status_code == 401  # no token
    assert httpx.get(base, headers={**h, "X-Pyfriction-User-Token": "0" * 64}).status_code == 401
    bob = user_token(SECRET, "bob")
    r = httpx.get(base, headers={**h, "X-Pyfriction-User-Token": bob})  # another user's token
    assert r.status_code == 401 and r.json()["code"] == "invalid_user_token"
    wrong_secret = user_token("not-the-secret", "alice")
    assert httpx.get(base, headers={**h, "X-Pyfriction-User-Token": wrong_secret}).status_code == 401
    good = user_token(SECRET, "alice")
    assert httpx.get(base, headers={**h, "X-Pyfriction-User-Token": good}).json() == {"guidance": []}
    assert httpx.get(base, params={"token": good, "key": WRITE_KEY}).status_code == 200
    expiring = user_token(SECRET, "alice", int(time.time()) + 60)
    assert httpx.get(base, params={"token": expiring}, headers=h).status_code == 200
    expired = user_token(SECRET, "alice", int(time.time()) - 1)
    r = httpx.get(base, params={"token": expired}, headers=h)
    assert r.status_code == 401 and r.json()["code"] == "user_token_expired"
    tampered = str(int(time.time()) + 3600) + "." + expiring.split(".")[1]  # extended expiry, old MAC
    assert httpx.get(base, params={"token": tampered}, headers=h).status_code == 401
    assert httpx.get(base + "/stream", params={"token": bob, "key": WRITE_KEY}).status_code == 401
    r = httpx.post(
        base + "/ack", json={"guidance_id": "g", "outcome": "shown"}, headers={**h, "X-Pyfriction-User-Token": bob}
    )
    assert r.status_code == 401


def test_rate_limit_429_with_retry_after() -> None:
    with ThreadServer(write_keys=[WRITE_KEY, "wk_other"], rate_limit=2.0, rate_burst=5) as s:
        url = s.url + "/v1/batch"
        codes = [httpx.post(url, json=_batch("u-rate", 1), headers=AUTH) for _ in range(12)]
        limited = [r for r in codes if r.status_code == 429]
        assert len(limited) >= 5, [r.status_code for r in codes]
        assert int(limited[0].headers["Retry-After"]) >= 1
        assert limited[0].json()["code"] == "rate_limited"
        # another key has its own bucket
        assert httpx.post(url, json=_batch("u-rate", 1), headers={"X-Write-Key": "wk_other"}).status_code == 200


def test_slow_client_408_and_others_unaffected(strict: Any) -> None:
    port = strict.settings.port
    result: dict[str, Any] = {}

    def slowloris() -> None:
        with socket.create_connection((HOST, port), timeout=10) as s:
            s.sendall(f"POST /v1/batch HTTP/1.1\r\nHost: {HOST}\r\nX-Write-Key: {WRITE_KEY}\r\n"
                      "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n".encode())  # fmt: skip
            try:
                for _ in range(20):
                    s.sendall(b" ")
                    time.sleep(0.25)
            except OSError:
                pass
            data = s.recv(4096)
            result["status"] = data.split(b" ", 2)[1] if data else b""

    t = threading.Thread(target=slowloris)
    t.start()
    time.sleep(0.2)
    fast = [httpx.post(strict.url + "/v1/events", json=[{"user_id": "u-fast", "type": "click"}],
                       headers={"X-Write-Key": WRITE_KEY}, timeout=2) for _ in range(3)]  # fmt: skip
    assert all(r.status_code == 200 for r in fast)
    t.join(15)
    # 408 (not a socket timeout with no answer): the sidecar gave up on the body itself, while
    # the client still had 1,000 bytes to send.
    assert result["status"] == b"408"


def test_cors_allowlist() -> None:
    with ThreadServer(cors_origins=["https://app.example.com"]) as s:
        ok = httpx.options(s.url + "/v1/events", headers={"Origin": "https://app.example.com",
                                                           "Access-Control-Request-Method": "POST"})  # fmt: skip
        assert ok.status_code == 204
        assert ok.headers["access-control-allow-origin"] == "https://app.example.com"
        r = httpx.post(s.url + "/v1/events", json=[], headers={"Origin": "https://app.example.com"})
        assert r.headers["access-control-allow-origin"] == "https://app.example.com"
        r = httpx.post(s.url + "/v1/events", json=[], headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


def test_unknown_routes_and_methods_are_json(sidecar: Any) -> None:
    r = httpx.get(sidecar.url + "/nope")
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    r = httpx.get(sidecar.url + "/v1/batch")
    assert r.status_code == 405 and "POST" in r.headers["allow"]
