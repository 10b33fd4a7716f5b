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
    # a slow refill (one request per 10 s) so that a loaded machine sees the same answers
    with ThreadServer(write_keys=[WRITE_KEY, "wk_other"], rate_limit=0.1, rate_burst=5, client_rate_limit=1e6) as s:
        url = s.url + "/v1/batch"
        with httpx.Client(headers=AUTH) as c:
            codes = [c.post(url, json=_batch("u-rate", 1)) for _ in range(12)]
        limited = [r for r in codes if r.status_code == 429]
        assert len(limited) >= 5, [r.status_code for r in codes]
        assert int(limited[0].headers["Retry-After"]) >= 1
        assert limited[0].json()["code"] == "rate_limited"
        # another key has its own bucket
        assert httpx.post(url, json=_batch("u-rate", 1), headers={"X-Write-Key": "wk_other"}).status_code == 200


def test_one_client_cannot_exhaust_a_shared_write_key() -> None:
    # Write keys are public: a client hammering one must meet its own limit (per address)
    # before the key's, so other clients of that key go on. 127.0.0.2 is a second loopback
    # address (Linux routes all of 127/8 to lo).
    with ThreadServer(write_keys=[WRITE_KEY], rate_limit=5.0, rate_burst=100, client_rate_limit=1.0,
                      client_rate_burst=10) as s:  # fmt: skip
        with httpx.Client(base_url=s.url, headers=AUTH) as greedy:
            codes = [greedy.post("/v1/batch", json=_batch("u-greedy", 1)).status_code for _ in range(100)]
        assert codes.count(200) <= 11 and codes.count(429) >= 89, codes
        other = httpx.Client(base_url=s.url, headers=AUTH, transport=httpx.HTTPTransport(local_address="127.0.0.2"))
        with other:
            assert other.post("/v1/batch", json=_batch("u-other", 1)).status_code == 200
            assert other.get("/v1/guidance/u-other").status_code == 200
        # a keyless request from the greedy client is refused before its body is read
        r = httpx.post(s.url + "/v1/batch", content=b"x" * 100)
        assert r.status_code == 429 and "client" in r.json()["message"]


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


# -- issue 17: abuse that used to get a 500, leak a user id, or cost too much -------------------
JSON_ROUTES = ["/v1/batch", "/v1/import", "/v1/track", "/v1/identify", "/v1/events", "/batch/", "/capture/", "/e/",
               "/i/v1/analytics/events", "/v1/guidance/u1/ack"]  # fmt: skip


@pytest.mark.parametrize("keyed", [True, False], ids=["with-key", "without-key"])
def test_deeply_nested_json_is_400_never_500(sidecar: Any, keyed: bool, caplog: pytest.LogCaptureFixture) -> None:
    deep = b'{"batch": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    deep_list = b"[" * 1000 + b"]" * 1000
    headers = AUTH if keyed else {}
    with caplog.at_level("WARNING"), httpx.Client(base_url=sidecar.url, headers=headers) as c:
        for path in JSON_ROUTES:
            for body in (deep, deep_list):
                r = c.post(path, content=body, headers={"Content-Type": "application/json"})
                if not keyed and "/guidance/" in path:  # its key is never in the body: checked first
                    assert r.status_code == 401
                    continue
                assert r.status_code == 400, (path, r.status_code, r.text)
                assert r.json()["code"] == "too_deep"
        r = c.post("/v1/events", content=b"\x91" * 1000 + b"\xc0", headers={"Content-Type": "application/msgpack"})
        assert r.status_code == 400
        gz = gzip.compress(deep)  # nested inside a compressed body, as posthog-js sends it
        assert c.post("/batch/?compression=gzip-js", content=gz).status_code == 400
        assert c.post("/v1/batch", content=gz, headers={"Content-Encoding": "gzip"}).status_code == 400
    assert not [rec for rec in caplog.records if rec.levelname == "ERROR"], "an error was logged"
    # shallow nesting still goes through
    ok = {"batch": [{"type": "track", "event": "click", "userId": "u-nest", "properties": {"a": [[[[{"b": 1}]]]]}}]}
    assert httpx.post(sidecar.url + "/v1/batch", json=ok, headers=AUTH).status_code == 200


def test_refused_requests_log_the_route_never_the_user_id(caplog: pytest.LogCaptureFixture) -> None:
    victim = "victim-alice@example.com"
    with ThreadServer(write_keys=[WRITE_KEY], admin_keys=[ADMIN_KEY], identity_secret=SECRET) as s:
        with caplog.at_level("INFO"):
            assert httpx.get(f"{s.url}/v1/users/{victim}", headers=AUTH).status_code == 401
            assert httpx.get(f"{s.url}/v1/guidance/{victim}", headers=AUTH).status_code == 401
            assert httpx.post(f"{s.url}/v1/guidance/{victim}/ack", headers=AUTH, json={}).status_code == 401
            time.sleep(1.1)  # the refusal log is once a second per code
            assert httpx.get(f"{s.url}/v1/guidance/{victim}/stream", headers={}).status_code == 401
    refused = [rec for rec in caplog.records if rec.getMessage() == "request refused"]
    assert refused and {getattr(rec, "route", None) for rec in refused} <= {
        "/v1/users/{user_id}",
        "/v1/guidance/{user_id}",
        "/v1/guidance/{user_id}/ack",
        "/v1/guidance/{user_id}/stream",
    }
    for rec in caplog.records:
        if not rec.name.startswith(("pyfriction", "uvicorn")):
            continue  # the test's own client (httpx) logs its URLs
        assert "victim" not in rec.getMessage() and "victim" not in repr(vars(rec)), vars(rec)


def test_repeated_warnings_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    # One batch of 6,000 identify calls with an empty trait name (the engine refuses each),
    # sent 30 times: a bounded number of lines, and the rest counted in /metrics.
    batch = {"batch": [{"type": "identify", "userId": f"u{i}", "traits": {"": 1}} for i in range(6000)]}
    with ThreadServer(write_keys=[WRITE_KEY]) as s, caplog.at_level("WARNING"):
        with httpx.Client(base_url=s.url, headers=AUTH, timeout=30) as c:
            for _ in range(30):
                assert c.post("/v1/batch", json=batch).status_code == 200
        text = httpx.get(s.url + "/metrics").text
    lines = [rec for rec in caplog.records if rec.getMessage() == "identify calls refused by the engine"]
    assert 1 <= len(lines) <= 10, len(lines)  # one line per batch at most, 10 a minute at most
    assert f'pyfriction_log_lines_suppressed_total{{level="warning"}} {30 - len(lines)}' in text
    assert 'pyfriction_events_rejected_total{reason="invalid_traits"} 180000' in text


def test_many_gzip_members_without_a_key_are_refused_cheaply(sidecar: Any) -> None:
    body = gzip.compress(b"") * 24_000  # 468 KB: each empty member would cost a decompressor
    assert len(body) < sidecar.settings.max_body_bytes
    r = httpx.post(sidecar.url + "/v1/batch", content=body, headers={"Content-Encoding": "gzip"})
    assert r.status_code == 400 and "members" in r.json()["message"]
    few = b"".join(gzip.compress(part) for part in (b'{"batch": [', b"]}"))  # a few members are fine
    assert (
        httpx.post(sidecar.url + "/v1/batch", content=few, headers={**AUTH, "Content-Encoding": "gzip"}).status_code
        == 200
    )


def test_connections_that_never_finish_their_headers_are_closed() -> None:
    with ThreadServer(header_timeout=0.5) as s:
        port = s.settings.port
        with socket.create_connection((HOST, port), timeout=30) as silent, \
                socket.create_connection((HOST, port), timeout=30) as partial:  # fmt: skip
            partial.sendall(b"POST /v1/batch HTTP/1.1\r\nHost: x\r\nContent-Ty")
            assert partial.recv(4096).startswith(b"HTTP/1.1 408")
            assert silent.recv(4096).startswith(b"HTTP/1.1 408")
        # kept-alive: the second request's headers have the same deadline
        with socket.create_connection((HOST, port), timeout=30) as conn:
            conn.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
            assert conn.recv(4096).startswith(b"HTTP/1.1 200")
            conn.sendall(b"GET /livez HTTP/1.1\r\n")
            data = b""
            while not data.endswith(b"}") or b"408" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            assert data.startswith(b"HTTP/1.1 408")
        assert httpx.get(s.url + "/livez").status_code == 200


def test_an_open_stream_ends_when_its_token_expires(strict: Any) -> None:
    expiring = user_token(SECRET, "carol", int(time.time()) + 2)
    url = strict.url + "/v1/guidance/carol/stream"
    lines = []
    with httpx.stream("GET", url, params={"token": expiring, "key": WRITE_KEY}, timeout=30) as r:
        assert r.status_code == 200
        for line in r.iter_lines():  # ends: the server closes the stream at expiry
            lines.append(line)
    assert "event: expired" in lines


def _rage(user: str) -> list[dict[str, Any]]:
    now = time.time()
    return [{"user_id": user, "type": "click", "target": "#pay", "ts": now + i * 0.1} for i in range(4)]


def test_a_guidance_read_from_a_disallowed_origin_does_not_mark_it_delivered() -> None:
    from .sidecar_util import GUIDANCE_CONFIG

    with ThreadServer(cors_origins=["https://app.example.com"], engine_config=GUIDANCE_CONFIG) as s:
        assert httpx.post(s.url + "/v1/events", json=_rage("dora")).status_code == 200
        evil = httpx.get(s.url + "/v1/guidance/dora", headers={"Origin": "https://evil.example"})
        assert evil.status_code == 403 and evil.json()["code"] == "origin_not_allowed"
        assert "access-control-allow-origin" not in evil.headers
        good = httpx.get(s.url + "/v1/guidance/dora", headers={"Origin": "https://app.example.com"})
        assert [g["id"] for g in good.json()["guidance"]] == ["pay-help"]
        r = httpx.get(s.url + "/v1/guidance/dora/stream", headers={"Origin": "https://evil.example"})
        assert r.status_code == 403


def test_user_ids_with_a_slash(admin: dict[str, str]) -> None:
    from .sidecar_util import GUIDANCE_CONFIG

    with ThreadServer(admin_keys=[ADMIN_KEY], engine_config=GUIDANCE_CONFIG) as s:
        assert httpx.post(s.url + "/v1/events", json=_rage("team/erin")).status_code == 200
        for path in ("team/erin", "team%2Ferin"):
            r = httpx.get(f"{s.url}/v1/users/{path}", headers=admin)
            assert r.status_code == 200 and r.json()["user_id"] == "team/erin"
        r = httpx.get(s.url + "/v1/guidance/team%2Ferin")
        assert [g["id"] for g in r.json()["guidance"]] == ["pay-help"]
        r = httpx.post(s.url + "/v1/guidance/team/erin/ack", json={"guidance_id": "pay-help", "outcome": "shown"})
        assert r.status_code == 200, r.text
        with httpx.stream("GET", s.url + "/v1/guidance/team/erin/stream", timeout=10) as stream:
            assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")


def _counter(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + "{"))


def test_metrics_add_up_over_a_mixed_batch() -> None:
    """Every received event is accepted or rejected with a reason (issue 13, point 8)."""
    from .sidecar_util import GUIDANCE_CONFIG

    segment = {"batch": [
        {"type": "track", "event": "click", "userId": "m1", "messageId": "s1"},
        {"type": "track", "event": "Payment Failed", "userId": "m1"},  # event_map: known
        {"type": "track", "event": "Some Custom Thing", "userId": "m1"},  # unknown_type
        {"type": "page", "userId": "m1", "name": "Home"},
        {"type": "screen", "userId": "m1", "name": "Settings"},
        {"type": "identify", "userId": "m1", "traits": {"plan": "pro"}},
        {"type": "identify", "userId": "m1", "traits": {"": "refused"}},  # invalid_traits
        {"type": "group", "userId": "m1", "groupId": "g"},
        {"type": "alias", "userId": "m1", "previousId": "x"},
        {"type": "bogus", "userId": "m1"},  # unknown_call
        {"type": "track", "event": "click"},  # missing_user
        {"type": "track", "userId": "m1"},  # missing_event
    ]}  # fmt: skip
    posthog = {"api_key": "k", "batch": [
        {"event": "$pageview", "distinct_id": "m2", "properties": {"$current_url": "https://a/b"}},
        {"event": "$rageclick", "distinct_id": "m2", "uuid": "r1", "properties": {"target": "#t"}},
        {"event": "$identify", "distinct_id": "m2", "properties": {"$set": {"plan": "x"}}},
        {"event": "$pageleave", "distinct_id": "m2"},
        {"event": "custom thing", "distinct_id": "m2"},  # unknown_type
        {"event": "click"},  # missing_user
    ]}  # fmt: skip
    native = [{"user_id": "m3", "type": "bogus"}, {"user_id": "m3", "type": "click", "id": "n1"}, {"type": "click"}]
    with ThreadServer(engine_config=GUIDANCE_CONFIG) as s:
        with httpx.Client(base_url=s.url) as c:
            for _ in range(2):  # the second time, the events with ids are duplicates
                assert c.post("/v1/batch", json=segment).status_code == 200
                assert c.post("/batch/", json=posthog).status_code == 200
                r = c.post("/v1/events", json=native)
                assert r.status_code == 200
        text = httpx.get(s.url + "/metrics").text
    received = _counter(text, "pyfriction_events_received_total")
    accepted = _counter(text, "pyfriction_events_accepted_total")
    rejected = _counter(text, "pyfriction_events_rejected_total")
    assert received == 2 * (len(segment["batch"]) + len(posthog["batch"]) + len(native))
    assert received == accepted + rejected, text
    assert accepted == _counter(text, "pyfriction_events_accepted_kinds_total")
    for kind, n in (("identify", 4), ("group", 2), ("alias", 2), ("screen", 2), ("other", 2)):
        assert f'pyfriction_events_accepted_kinds_total{{kind="{kind}"}} {n}' in text, kind
    for reason, n in (("unknown_type", 6), ("unknown_call", 2), ("missing_user", 6), ("missing_event", 2),
                      ("invalid_traits", 2), ("duplicate", 3)):  # fmt: skip
        assert f'pyfriction_events_rejected_total{{reason="{reason}"}} {n}' in text, reason
