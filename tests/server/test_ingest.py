"""The wire formats, decoded without a server: mapping, clock-skew correction, dedupe,
decompression limits, the journal's torn-tail handling (damage in the middle: test_fault_injection), the
metrics text format."""

from __future__ import annotations

import gzip
import os
import zlib
from typing import Any

import msgspec
import pytest

from pyfriction.config import SegmentMapping
from pyfriction_server import EventRule, user_token, verify_token
from pyfriction_server.errors import HTTPError
from pyfriction_server.ingest import Mapper, native, posthog, segment
from pyfriction_server.journal import read_segment
from pyfriction_server.limits import inflate
from pyfriction_server.metrics import Metrics

RECEIVED = 1_700_000_100.0
MAPPER = Mapper({})
LIMITS = {"max_event": 32 * 1024, "max_events": 10_000}


def _seg(doc: Any, single: Any = None, mapper: Mapper = MAPPER) -> Any:
    batch, key = segment.decode(msgspec.json.encode(doc), single, RECEIVED, mapper, skew=True, **LIMITS)
    return batch, key


def test_segment_skew_correction() -> None:
    # The client's clock is 1 hour fast: its timestamp and sentAt are both off by 3600 s.
    doc = {"sentAt": "2023-11-14T23:15:00Z", "writeKey": "k", "batch": [
        {"type": "track", "event": "click", "userId": "u", "timestamp": "2023-11-14T23:14:50Z", "messageId": "m1"},
        {"type": "track", "event": "click", "userId": "u", "timestamp": "2023-11-14T23:14:55Z",
         "sentAt": "2023-11-14T23:14:58Z"},  # a message-level sentAt wins
        {"type": "track", "event": "click", "userId": "u"},  # no timestamp: the receive time
    ]}  # fmt: skip
    batch, key = _seg(doc)
    assert key == "k"
    assert batch.ts == [RECEIVED - 10.0, RECEIVED - 3.0, RECEIVED]
    assert batch.ids == ["m1", None, None]
    unskewed, _ = segment.decode(msgspec.json.encode(doc), None, RECEIVED, MAPPER, skew=False, **LIMITS)
    assert unskewed.ts[0] == 1_700_003_690.0


def test_segment_mapping_follows_the_engine_segment_paths() -> None:
    doc = {"batch": [
        {"type": "track", "event": "form_error", "anonymousId": "anon-1",
         "properties": {"target": "#date", "step": "import.mapping"}, "context": {"groupId": "acme"}},
        {"type": "page", "userId": 42, "name": "Billing", "properties": {"path": "/billing"}},
        {"type": "screen", "userId": "u", "context": {"page": {"path": "/from-context"}}},
        {"type": "track", "event": "click", "userId": "u", "context": {"page": {"path": "/ctx"}}},
        {"type": "identify", "userId": "u", "traits": {"plan": "pro"}, "context": {"locale": "de"}},
        {"type": "group", "userId": "u", "groupId": "g"},
        {"type": "track", "userId": "u"},  # no event name
        {"type": "track", "event": "click"},  # no user
        {"type": "bogus", "userId": "u"},
    ]}  # fmt: skip
    batch, _ = _seg(doc)
    assert batch.user_id == ["anon-1", "42", "u", "u"]
    assert batch.type == ["form_error", "page", "page", "click"]
    assert batch.step == ["import.mapping", "Billing", "/from-context", "/ctx"]
    assert batch.target[0] == "#date" and batch.account_id[0] == "acme"
    assert batch.identities == [("u", {"plan": "pro", "locale": "de"})]
    assert batch.invalid == 3 and batch.received == 9
    custom = Mapper({}, SegmentMapping(step=["properties.path", "name"], target=["properties.el"], account_id=[]))
    batch, _ = _seg({"batch": [{"type": "track", "event": "click", "userId": "u",
                                "properties": {"path": "/p", "el": "#e"}, "context": {"groupId": "acme"}}]}, mapper=custom)  # fmt: skip
    assert (batch.step, batch.target, batch.account_id) == (["/p"], ["#e"], [None])


def test_event_rules_map_team_event_names() -> None:
    mapper = Mapper({"Payment Failed": EventRule(type="api_error", step="checkout", target_from="properties.provider",
                                                 status_from="properties.code")})  # fmt: skip
    batch, _ = _seg({"type": "track", "event": "Payment Failed", "userId": "u",
                     "properties": {"provider": "stripe", "code": 402}}, single="track", mapper=mapper)  # fmt: skip
    assert (batch.type, batch.step, batch.target, batch.status) == (["api_error"], ["checkout"], ["stripe"], [402])
    with pytest.raises(ValueError, match="unknown type"):
        EventRule(type="kaboom")


def test_posthog_mapping() -> None:
    doc = {"api_key": "phc", "sent_at": "2023-11-14T22:15:00Z", "batch": [
        {"event": "$pageview", "distinct_id": "u", "properties": {"$current_url": "https://x.io/a/b?q=1"},
         "timestamp": "2023-11-14T22:15:00Z", "uuid": "p1"},
        {"event": "$rageclick", "distinct_id": "u", "uuid": "r1",
         "properties": {"$elements": [{"tag_name": "button", "attr__id": "pay"}]}},
        {"event": "$dead_click", "distinct_id": "u", "properties": {"$elements_chain": "span.label:text=\"Total\""}},
        {"event": "$exception", "distinct_id": "u", "properties": {"$exception_type": "TypeError", "$pathname": "/a"}},
        {"event": "$autocapture", "distinct_id": "u", "properties": {"$event_type": "click",
                                                                      "$elements_chain": 'a:attr__href="/x"text="Docs"'}},
        {"event": "$identify", "distinct_id": "u", "properties": {"$set": {"plan": "free"}}},
        {"event": "$pageleave", "distinct_id": "u"},
        {"event": "search", "properties": {"distinct_id": "u2", "results": 0}, "offset": 2000},
    ]}  # fmt: skip
    batch, key = posthog.decode_v0(msgspec.json.encode(doc), RECEIVED, MAPPER, skew=True, rage_clicks=3, **LIMITS)
    assert key == "phc"
    assert batch.type == ["page", "click", "click", "click", "dead_click", "error", "click", "search"]
    assert batch.step[0] == "/a/b" and batch.ts[0] == RECEIVED
    assert batch.target[1:4] == ["#pay"] * 3 and batch.ids[1:4] == ["r1", "r1#1", "r1#2"]
    assert batch.target[4] == "span.label" and batch.target[5] == "TypeError" and batch.target[6] == 'a "Docs"'
    assert batch.identities == [("u", {"plan": "free"})]
    assert batch.user_id[-1] == "u2" and batch.ts[-1] == RECEIVED - 2.0 and batch.results[-1] == 0
    single, _ = posthog.decode_v0(b'[{"event": "$pageview", "distinct_id": "u"}]', RECEIVED, MAPPER, skew=True,
                                  rage_clicks=3, **LIMITS)  # fmt: skip
    assert single.type == ["page"]


def test_posthog_v1_skew_from_request_timestamp() -> None:
    doc = {"created_at": "2023-11-14T22:00:00Z", "batch": [
        {"event": "click", "distinct_id": "u", "uuid": "a", "timestamp": "2023-11-14T22:14:59Z", "properties": {}},
        {"event": "click", "distinct_id": "u", "uuid": "b", "timestamp": "2023-11-14T22:14:59Z",
         "options": {"disable_skew_correction": True}},
    ]}  # fmt: skip
    batch = posthog.decode_v1(msgspec.json.encode(doc), RECEIVED, "2023-11-14T22:16:00Z", MAPPER, skew=True,
                              rage_clicks=3, **LIMITS)  # fmt: skip
    assert batch.ts == [RECEIVED - 61.0, 1_700_000_099.0]
    with pytest.raises(HTTPError):
        posthog.decode_v1(b"{}", RECEIVED, "not a time", MAPPER, skew=True, rage_clicks=3, **LIMITS)


def test_native_json_and_msgpack() -> None:
    events = [{"id": "n1", "user_id": "u", "type": "api_error", "ts": 100.0, "target": "/api", "properties": {"status": 503}},
              {"user_id": 7, "type": "click"}, {"type": "click"}]  # fmt: skip
    for body, ctype in ((msgspec.json.encode({"events": events, "sent_at": 110.0, "lib": "pyfriction.js"}), "text/plain"),
                        (msgspec.msgpack.encode({"events": events, "sent_at": 110.0}), "application/msgpack")):  # fmt: skip
        batch, _ = native.decode(body, ctype, RECEIVED, MAPPER, skew=True, **LIMITS)
        assert batch.user_id == ["u", "7"] and batch.invalid == 1
        assert batch.ts == [RECEIVED - 10.0, RECEIVED] and batch.status == [503, -1]
    assert native.decode(msgspec.json.encode(events), "application/json", RECEIVED, MAPPER, skew=True,
                         **LIMITS)[0].source == "native"  # fmt: skip


def test_inflate_limits() -> None:
    data = b"x" * 10_000
    assert inflate(gzip.compress(data), "gzip", 10_000) == data
    assert inflate(gzip.compress(data[:5000]) + gzip.compress(data[5000:]), "gzip", 10_000) == data  # two members
    assert inflate(zlib.compress(data), "deflate", 10_000) == data
    raw = zlib.compressobj(wbits=-15)
    assert inflate(raw.compress(data) + raw.flush(), "deflate", 10_000) == data
    for enc, body in (("gzip", gzip.compress(data)), ("deflate", zlib.compress(data)), (None, data)):
        with pytest.raises(HTTPError) as err:
            inflate(body, enc, 9_999)
        assert err.value.status == 413
    with pytest.raises(HTTPError) as err:
        inflate(gzip.compress(data)[:-8], "gzip", 10_000)
    assert err.value.status == 400


def test_user_tokens() -> None:
    token = user_token("s", "alice")
    assert len(token) == 64
    verify_token("s", "alice", token)
    verify_token("s", "alice", user_token("s", "alice", 2_000_000_000), now=1_900_000_000)
    for bad in ("", token[:-1] + "0", user_token("s", "bob"), "x.y", "99999999999999." + "0" * 64):
        with pytest.raises(HTTPError):
            verify_token("s", "alice", bad)
    with pytest.raises(HTTPError, match="expired"):
        verify_token("s", "alice", user_token("s", "alice", 1_000), now=2_000)


def test_journal_drops_a_torn_or_damaged_tail(tmp_path: Any) -> None:
    import struct

    path = str(tmp_path / "journal-000000000000.log")
    records = [msgspec.msgpack.encode({"k": "t", "now": float(i)}) for i in range(3)]
    blob = b"".join(struct.pack("<II", len(r), zlib.crc32(r)) + r for r in records)
    with open(path, "wb") as fh:
        fh.write(blob + blob[:5])  # a torn fourth record
    assert list(read_segment(path)) == records
    with open(path, "wb") as fh:
        fh.write(blob[:-1] + bytes([blob[-1] ^ 1]))  # the last record damaged
    assert list(read_segment(path)) == records[:2]
    os.unlink(path)


def test_metrics_text_format() -> None:
    m = Metrics({"pyfriction_users_tracked": lambda: 3})
    m.events_accepted.inc(("segment",), 100)
    m.request_seconds.observe(0.004, ("/v1/batch", "POST"))
    text = m.render()
    assert 'pyfriction_events_accepted_total{source="segment"} 100' in text
    assert "pyfriction_users_tracked 3" in text
    assert 'pyfriction_request_duration_seconds_bucket{route="/v1/batch",method="POST",le="0.005"} 1' in text
    assert 'pyfriction_request_duration_seconds_bucket{route="/v1/batch",method="POST",le="+Inf"} 1' in text
    assert 'pyfriction_request_duration_seconds_count{route="/v1/batch",method="POST"} 1' in text
    for line in text.splitlines():
        assert line.startswith("# ") or line.startswith("pyfriction_")
    names = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    counters = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE") and line.endswith("counter")]
    assert all(n.endswith("_total") for n in counters) and len(names) == len(set(names))


def test_fast_segment_path_equals_the_general_mapping() -> None:
    messages = [
        {"type": "track", "event": "click", "userId": "u", "properties": {"target": "#a", "step": "s", "status": "404"}},
        {"type": "track", "event": "click", "userId": 5, "anonymousId": "x", "properties": {"target": 12, "account_id": "acc"},
         "context": {"groupId": "grp", "page": {"path": "/p"}}},
        {"type": "track", "event": "search", "anonymousId": "x", "name": "N", "properties": {"results": 0.0}},
        {"type": "page", "userId": "u", "context": {"page": {"path": "/ctx"}}},
        {"type": "screen", "userId": "u", "name": "Home", "properties": {"step": ""}, "context": [1, 2]},
        {"type": "identify", "userId": "u", "traits": {"a": 1}, "context": {"locale": "fr", "groupId": "g"}},
        {"type": "track", "userId": "u"}, {"type": "alias", "userId": "u"}, {"type": "x", "userId": "u"},
        {"type": "track", "event": "click", "userId": "u", "properties": {"status": 2**40, "results": -3}},
    ]  # fmt: skip
    fast, _ = _seg({"batch": messages})
    general_mapper = Mapper({})
    general_mapper.default = False
    general, _ = _seg({"batch": messages}, mapper=general_mapper)
    assert fast.rows == general.rows
    assert (fast.identities, fast.invalid) == (general.identities, general.invalid)
