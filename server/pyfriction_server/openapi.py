"""The OpenAPI 3.0 document served at ``/openapi.json``.

Written by hand, next to the code it describes, and checked against the running server by
schemathesis in the test suite (no server error, no response outside this document).
"""

from __future__ import annotations

import functools
from typing import Any

import msgspec

__all__ = ["document", "document_bytes"]

VERSION = "0.1.0"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str, retry: bool = False) -> dict[str, Any]:
    doc: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}
    if retry:
        doc["headers"] = {"Retry-After": {"description": "Seconds to wait before retrying.",
                                          "schema": {"type": "string", "pattern": "^[0-9]+$"}}}  # fmt: skip
    return doc


def _ok(schema: str, description: str = "Accepted: persisted and scored.") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


INGEST_ERRORS = {
    "400": _error("Malformed body (bad JSON, nested deeper than max_json_depth, wrong field types, bad encoding)."),
    "401": _error("Missing or unknown write key."),
    "408": _error("The body did not arrive in time."),
    "413": _error("Body, decompressed body, event or batch too large (gzip bombs included)."),
    "415": _error("Unsupported Content-Encoding."),
    "429": _error("Rate limit of the client or of the key exceeded.", retry=True),
    "503": _error("Ingest queue full or journal unavailable (disk full).", retry=True),
}
AUTH_ERRORS = {
    "401": _error("Missing/unknown key, or missing/invalid/expired user token."),
    "429": _error("Rate limit of the client or of the key exceeded.", retry=True),
}
READ_ERRORS = {
    **AUTH_ERRORS,
    "403": _error("A browser origin outside cors_origins (guidance is not marked delivered)."),
}

USER_ID = {
    "name": "user_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "pattern": "^[^/]+$"},
}
TOKEN_PARAMS = [
    {"name": "token", "in": "query", "required": False, "schema": {"type": "string"},
     "description": "The user token (identity verification), when not sent as X-Pyfriction-User-Token."},
    {"name": "key", "in": "query", "required": False, "schema": {"type": "string"},
     "description": "The write key, for EventSource, which cannot send headers."},
]  # fmt: skip

NULLABLE_STR = {"type": "string", "nullable": True}
ID = {"oneOf": [{"type": "string"}, {"type": "integer"}], "nullable": True}
OBJECT = {"type": "object", "additionalProperties": True, "nullable": True}
DATETIME = {"type": "string", "format": "date-time", "nullable": True}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["success", "code", "message"],
        "properties": {
            "success": {"type": "boolean", "enum": [False]},
            "code": {"type": "string"},
            "message": {"type": "string"},
            "detail": {"type": "string"},
        },
    },
    "SegmentOK": {"type": "object", "required": ["success"], "properties": {"success": {"type": "boolean", "enum": [True]}}},
    "PostHogOK": {"type": "object", "required": ["status"], "properties": {"status": {"type": "integer", "enum": [1]}}},
    "PostHogV1OK": {"type": "object", "required": ["results"],
                    "properties": {"results": {"type": "object", "additionalProperties": True}}},
    "NativeOK": {
        "type": "object",
        "required": ["success", "received", "accepted", "duplicates", "invalid"],
        "properties": {
            "success": {"type": "boolean"},
            "received": {"type": "integer", "minimum": 0},
            "accepted": {"type": "integer", "minimum": 0},
            "duplicates": {"type": "integer", "minimum": 0},
            "invalid": {"type": "integer", "minimum": 0},
        },
    },
    "SegmentMessage": {
        "type": "object",
        "description": "A Segment message; `track` events map by name, `page`/`screen` become page views.",
        "properties": {
            "type": {"type": "string", "nullable": True,
                     "description": "track, identify, page, screen, group or alias; others are dropped and counted."},
            "event": NULLABLE_STR, "name": NULLABLE_STR, "userId": ID, "anonymousId": ID, "messageId": ID,
            "timestamp": DATETIME, "sentAt": DATETIME, "properties": OBJECT, "traits": OBJECT, "groupId": ID,
            "writeKey": NULLABLE_STR, "context": {"description": "Any value; read for the [segment] mapping paths."},
            "originalTimestamp": DATETIME,
        },
    },
    "SegmentBatch": {
        "type": "object",
        "properties": {
            "batch": {"type": "array", "items": _ref("SegmentMessage")},
            "sentAt": DATETIME,
            "writeKey": NULLABLE_STR,
        },
    },
    "PostHogEvent": {
        "type": "object",
        "properties": {
            "event": NULLABLE_STR, "distinct_id": ID, "properties": OBJECT, "timestamp": DATETIME,
            "uuid": NULLABLE_STR, "offset": {"type": "integer", "nullable": True},
        },
    },
    "PostHogBatch": {
        "oneOf": [
            {"type": "array", "items": _ref("PostHogEvent")},
            {"type": "object", "description": "A batch (`batch`), or a single event with `api_key`.", "properties": {
                "batch": {"type": "array", "items": _ref("PostHogEvent"), "nullable": True},
                "api_key": NULLABLE_STR,
                "sent_at": DATETIME,
                "event": NULLABLE_STR, "distinct_id": ID, "properties": OBJECT, "timestamp": DATETIME,
                "uuid": NULLABLE_STR, "offset": {"type": "integer", "nullable": True},
            }},
        ],
    },
    "PostHogV1Batch": {
        "type": "object",
        "properties": {
            "created_at": DATETIME,
            "batch": {
                "type": "array",
                "items": {
                    "allOf": [_ref("PostHogEvent")],
                    "properties": {"options": {"type": "object", "nullable": True, "properties": {
                        "disable_skew_correction": {"type": "boolean", "nullable": True}}}},
                },
            },
        },
    },
    "NativeEvent": {
        "type": "object",
        "description": "A canonical pyfriction event plus an optional delivery id.",
        "properties": {
            "user_id": ID, "type": NULLABLE_STR, "ts": {"type": "number", "nullable": True},
            "step": NULLABLE_STR, "target": NULLABLE_STR, "account_id": NULLABLE_STR,
            "properties": OBJECT, "id": ID,
        },
    },
    "NativeBatch": {
        "oneOf": [
            {"type": "array", "items": _ref("NativeEvent")},
            {"type": "object", "properties": {
                "events": {"type": "array", "items": _ref("NativeEvent")},
                "writeKey": NULLABLE_STR, "sent_at": {"type": "number", "nullable": True}, "lib": NULLABLE_STR}},
        ],
    },
    "Guidance": {"type": "object", "additionalProperties": True,
                 "description": "A pyfriction.Guidance item (id, kind, title, body, url, anchor, ...)."},
    "GuidanceList": {"type": "object", "required": ["guidance"],
                     "properties": {"guidance": {"type": "array", "items": _ref("Guidance")}}},
    "Ack": {
        "type": "object",
        "required": ["guidance_id", "outcome"],
        "properties": {
            "guidance_id": {"type": "string", "minLength": 1, "maxLength": 256},
            "outcome": {"type": "string", "enum": ["shown", "clicked", "dismissed", "completed", "anchor_missing"]},
        },
    },
    "AckOK": {"type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}}},
    "UserState": {"type": "object", "additionalProperties": True,
                  "required": ["user_id", "score", "detectors", "events", "in_episode"],
                  "properties": {"user_id": {"type": "string"}, "score": {"type": "number"},
                                 "detectors": {"type": "object", "additionalProperties": {"type": "number"}},
                                 "events": {"type": "integer"}, "in_episode": {"type": "boolean"}}},
    "Hotspots": {"type": "object", "required": ["hotspots"],
                 "properties": {"hotspots": {"type": "array", "items": {"type": "object", "additionalProperties": True}}}},
    "Status": {"type": "object", "required": ["status"], "properties": {
        "status": {"type": "string"},
        "reason": {"type": "string"},
        "journal_error": {"type": "string", "description": "The journal's last write error."},
        "journal_damage": {"type": "object", "description": "Damaged records skipped at replay (lost)."},
        "journal_torn_tails": {"type": "integer", "description": "Torn tails dropped at replay (never answered)."},
    }},
}  # fmt: skip


def _json_body(schema: str, *, required: bool = True, extra_types: tuple[str, ...] = ()) -> dict[str, Any]:
    content = {"application/json": {"schema": _ref(schema)}}
    for media in extra_types:
        content[media] = {"schema": _ref(schema)}
    return {"required": required, "content": content}


def _ingest(summary: str, body: str, ok: str, tag: str, extra_types: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "post": {
            "summary": summary,
            "description": "The body may be compressed (`Content-Encoding: gzip` or `deflate`); limits apply on "
            "the wire and after decompression. The write key may also travel in the body (`writeKey`, `api_key`).",
            "tags": [tag],
            "security": [{"basic": []}, {"writeKey": []}, {"bearer": []}, {}],
            "requestBody": _json_body(body, extra_types=extra_types),
            "responses": {"200": _ok(ok), **INGEST_ERRORS},
        }
    }


def _get(summary: str, ok: dict[str, Any], tag: str, **extra: Any) -> dict[str, Any]:
    return {"get": {"summary": summary, "tags": [tag], "responses": {"200": ok}, **extra}}


@functools.lru_cache(maxsize=1)
def document() -> dict[str, Any]:
    """The OpenAPI document (a fresh deep copy is not needed: treat it as read-only)."""
    paths: dict[str, Any] = {
        "/v1/batch": _ingest("Segment/RudderStack batch", "SegmentBatch", "SegmentOK", "segment"),
        "/v1/import": _ingest("Segment import (same as batch)", "SegmentBatch", "SegmentOK", "segment"),
    }
    for kind in ("track", "identify", "page", "screen", "group", "alias"):
        paths[f"/v1/{kind}"] = _ingest(f"Segment {kind} call", "SegmentMessage", "SegmentOK", "segment")
    paths["/v1/events"] = _ingest("Native canonical events (JSON or MessagePack)", "NativeBatch", "NativeOK", "native",
                                  extra_types=("text/plain", "application/msgpack"))  # fmt: skip
    for path in ("/batch/", "/capture/", "/e/"):
        paths[path] = _ingest("PostHog capture (legacy)", "PostHogBatch", "PostHogOK", "posthog")
        paths[path]["post"]["parameters"] = [{
            "name": "compression", "in": "query", "required": False, "schema": {"type": "string"},
            "description": "`gzip-js`: posthog-js sends a gzip body without Content-Encoding.",
        }]  # fmt: skip
    paths["/i/v1/analytics/events"] = _ingest("PostHog capture v1", "PostHogV1Batch", "PostHogV1OK", "posthog")
    guidance_params = [USER_ID, *TOKEN_PARAMS]
    keep = {
        "name": "keep", "in": "query", "required": False, "schema": {"type": "string"},
        "description": "`1` (any other value: off): items stay until the page reports them shown (acked `shown`, or a `guidance_shown` "
                       "event) or they expire, as on the stream; without it a poll hands each item out once.",
    }  # fmt: skip
    paths["/v1/guidance/{user_id}"] = _get(
        "Pending guidance for a user (poll)",
        _ok("GuidanceList", "The pending guidance (without `keep=1`: now handed out, not returned again)."),
        "guidance",
        parameters=[*guidance_params, keep],
        security=[{"writeKey": []}, {"bearer": []}, {}],
    )
    paths["/v1/guidance/{user_id}"]["get"]["responses"].update(READ_ERRORS)
    paths["/v1/guidance/{user_id}/stream"] = _get(
        "Guidance as Server-Sent Events",
        {"description": "An event stream: `event: guidance` with a Guidance as data (each item once per stream; "
                        "another stream gets it again until a page reports it shown); comments as keep-alive; "
                        "`event: expired` ends it when the user token expires.",
         "content": {"text/event-stream": {"schema": {"type": "string"}}}},
        "guidance", parameters=guidance_params, security=[{"writeKey": []}, {"bearer": []}, {}],
    )  # fmt: skip
    paths["/v1/guidance/{user_id}/stream"]["get"]["responses"].update(
        {**READ_ERRORS, "503": _error("Shutting down or too many streams.", retry=True)}
    )
    paths["/v1/guidance/{user_id}/ack"] = {
        "post": {
            "summary": "Feedback on a guidance item",
            "tags": ["guidance"],
            "parameters": guidance_params,
            "security": [{"writeKey": []}, {"bearer": []}, {}],
            "requestBody": _json_body("Ack"),
            "responses": {
                "200": _ok("AckOK", "Recorded."),
                "400": _error("Malformed body or unknown outcome."),
                "404": _error("No such guidance for this user."),
                "408": _error("The body did not arrive in time."),
                "413": _error("Body too large."),
                "415": _error("Unsupported Content-Encoding."),
                "503": _error("Ingest queue full.", retry=True),
                **AUTH_ERRORS,
            },
        }
    }
    admin_errors = {"401": _error("An admin key is required."), "429": AUTH_ERRORS["429"]}
    paths["/v1/users/{user_id}"] = _get(
        "A user's friction state (support)",
        _ok("UserState", "The state as of the user's last event."),
        "admin",
        parameters=[USER_ID],
        security=[{"adminKey": []}, {"bearer": []}],
    )
    paths["/v1/users/{user_id}"]["get"]["responses"].update({**admin_errors, "404": _error("User not tracked.")})
    paths["/v1/hotspots"] = _get("Friction hotspots (support)", _ok("Hotspots", "Hotspots."), "admin",
                                 security=[{"adminKey": []}, {"bearer": []}])  # fmt: skip
    paths["/v1/hotspots"]["get"]["responses"].update({**admin_errors, "503": _error("Insights not available.")})
    paths["/v1/pyfriction.js"] = _get(
        "The browser script",
        {"description": "JavaScript.", "content": {"application/javascript": {"schema": {"type": "string"}}}},
        "ops",
    )
    paths["/v1/pyfriction.js"]["get"]["responses"]["304"] = {"description": "Not modified (If-None-Match)."}
    paths["/v1/pyfriction.{version}.js"] = _get(
        "The browser script under its versioned URL (cached for a year)",
        {"description": "JavaScript.", "content": {"application/javascript": {"schema": {"type": "string"}}}},
        "ops",
        parameters=[{"name": "version", "in": "path", "required": True,
                     "schema": {"type": "string", "pattern": "^[0-9a-f]{12}$"},
                     "description": "The first 12 hex digits of the script's SHA-256 (header X-Pyfriction-Script)."}],
    )  # fmt: skip
    paths["/v1/pyfriction.{version}.js"]["get"]["responses"].update({
        "302": {"description": "Another version: redirects to the current one."},
        "404": _error("Not a script version."),
        "304": {"description": "Not modified (If-None-Match)."},
    })  # fmt: skip
    paths["/livez"] = _get("Liveness", _ok("Status", "Alive."), "ops")
    paths["/readyz"] = _get("Readiness", _ok("Status", "Ready."), "ops")
    paths["/readyz"]["get"]["responses"]["503"] = _ok(
        "Status", "Not ready: starting, stopping, or the journal cannot be written (disk full)."
    )
    paths["/metrics"] = _get(
        "Prometheus metrics",
        {"description": "Text exposition format 0.0.4.", "content": {"text/plain": {"schema": {"type": "string"}}}},
        "ops",
    )
    paths["/openapi.json"] = _get(
        "This document",
        {"description": "OpenAPI 3.0.", "content": {"application/json": {"schema": {"type": "object"}}}},
        "ops",
    )
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "pyfriction-server",
            "version": VERSION,
            "description": "The pyfriction sidecar: Segment, RudderStack, PostHog and native ingest; "
            "friction scoring; guidance delivery to the browser.",
        },
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "basic": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "Write key as the user name, empty password.",
                },
                "writeKey": {"type": "apiKey", "in": "header", "name": "X-Write-Key"},
                "bearer": {"type": "http", "scheme": "bearer", "description": "Write key (PostHog v1) or admin key."},
                "adminKey": {"type": "apiKey", "in": "header", "name": "X-Admin-Key"},
            },
        },
    }


@functools.lru_cache(maxsize=1)
def document_bytes() -> bytes:
    """:func:`document` as JSON."""
    return msgspec.json.encode(document())
