"""Body limits: on the wire, after decompression, and in time.

* A declared ``Content-Length`` above ``max_body_bytes`` is refused with 413 before reading;
  a body that turns out longer while streaming is refused the same way.
* ``Content-Encoding: gzip`` / ``deflate`` bodies are inflated at most to ``max_batch_bytes``
  (plus one byte, to notice): a gzip bomb costs that much memory, never more, and gets 413.
  A gzip body holds at most :data:`MAX_GZIP_MEMBERS` members (each costs a decompressor, so
  thousands of empty ones would cost CPU, not memory): more get 400.
* JSON nested deeper than ``max_json_depth`` is refused with 400 before it is decoded
  (:func:`check_depth`), so no decoder ever recurses that deep.
* The whole body must arrive within ``body_timeout`` seconds, else 408 (slow clients cannot
  hold a worker; the connection is closed).
"""

from __future__ import annotations

import asyncio
import re
import zlib

import numpy as np
from starlette.requests import ClientDisconnect, Request

from .errors import HTTPError

__all__ = ["MAX_GZIP_MEMBERS", "check_depth", "inflate", "json_depth", "read_body"]

#: Members of a gzip body at most (clients send one; concatenated files a few).
MAX_GZIP_MEMBERS = 16
#: Nesting deeper than this is refused when no depth is given.
DEFAULT_MAX_DEPTH = 64
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
#: A string: from a quote to the next unescaped quote, or to the end of the text.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.S)


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text (a malformed text may give
    any number: the decoder refuses it anyway)."""
    brackets = body.translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    a = np.frombuffer(brackets, dtype=np.uint8)
    return int(np.cumsum(np.where((a == 0x5B) | (a == 0x7B), 1, -1), dtype=np.int64).max())


def _reference_too_deep(body: bytes, limit: int) -> bool:
    """Whether ``body`` nests deeper than ``limit``, brackets inside strings not counted: the
    specification of the compiled ``pyfriction._core.json_too_deep`` (used where the core is
    not built). Brackets are counted only once the strings are gone: a closer inside a string
    would otherwise hide as many levels after it."""
    return json_depth(_STRING.sub(b'""', body) if b'"' in body else body) > limit


def _counted_too_deep(body: bytes, limit: int) -> bool:
    """:func:`_reference_too_deep` behind a cheap bound: a body with no more brackets than
    ``limit`` cannot nest deeper (C-speed counts spare most small bodies the regex)."""
    return body.count(b"[") + body.count(b"{") > limit and _reference_too_deep(body, limit)


try:
    # One pass in the core: 15 us for 100 Segment events, where counting the brackets alone
    # (the pure twin's bound) took 18 us, for nothing on a batch, which always has more.
    from pyfriction._core import json_too_deep as _too_deep
except ImportError:  # the pure-Python engine
    _too_deep = _counted_too_deep


def check_depth(body: bytes, limit: int = DEFAULT_MAX_DEPTH) -> None:
    """Raise 400 when ``body`` (JSON) nests deeper than ``limit``: decoders recurse per level,
    and a body 1,000 deep would otherwise end in a RecursionError."""
    if _too_deep(body, limit):
        raise HTTPError(400, "too_deep", f"JSON nested deeper than {limit} levels")


#: A body declared this many times over the limit is not drained before answering 413.
DRAIN_FACTOR = 4


def _too_large(what: str, limit: int, close: bool = False) -> HTTPError:
    return HTTPError(413, "payload_too_large", f"{what} exceeds {limit} bytes", close=close)


async def read_body(request: Request, max_wire: int, max_inflated: int, timeout: float) -> bytes:
    """The request body, decompressed, within the limits (raises :class:`HTTPError`)."""
    declared: int | None = None
    raw_length = request.headers.get("content-length")
    if raw_length is not None:
        try:
            declared = int(raw_length)
        except ValueError:
            raise HTTPError(400, "bad_request", "invalid Content-Length", close=True) from None
        if declared > max_wire * DRAIN_FACTOR:
            raise _too_large("request body", max_wire, close=True)
    chunks: list[bytes] = []
    size = 0
    over = False
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_wire:
                    # Drain a moderately oversized body so the client reads our 413 rather
                    # than a reset connection; give up on anything far bigger.
                    if size > max_wire * DRAIN_FACTOR:
                        raise _too_large("request body", max_wire, close=True)
                    over = True
                    chunks.clear()
                elif not over:
                    chunks.append(chunk)
    except TimeoutError:
        raise HTTPError(408, "request_timeout", f"the body did not arrive within {timeout:g} s", close=True) from None
    except ClientDisconnect:
        raise HTTPError(400, "client_disconnected", "the client went away mid-body", close=True) from None
    if over:
        raise _too_large("request body", max_wire)
    body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    return inflate(body, request.headers.get("content-encoding"), max_inflated)


def inflate(body: bytes, encoding: str | None, limit: int) -> bytes:
    """Decode ``body`` per ``Content-Encoding`` (identity, gzip, deflate) up to ``limit`` bytes."""
    enc = (encoding or "identity").strip().lower()
    if enc in ("", "identity"):
        if len(body) > limit:
            raise _too_large("request body", limit)
        return body
    if enc in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif enc == "deflate":
        # RFC 9110's deflate is zlib-wrapped; some clients send raw deflate: accept both.
        wbits = zlib.MAX_WBITS if body[:1] == b"\x78" else -zlib.MAX_WBITS
    else:
        raise HTTPError(415, "unsupported_encoding", f"Content-Encoding {enc!r} is not supported (gzip, deflate)")
    out: list[bytes] = []
    total = 0
    data = body
    members = 0
    try:
        while True:
            members += 1
            if members > MAX_GZIP_MEMBERS:
                raise HTTPError(400, "bad_encoding", f"more than {MAX_GZIP_MEMBERS} gzip members in one body")
            d = zlib.decompressobj(wbits)
            piece = d.decompress(data, limit + 1 - total)
            total += len(piece)
            out.append(piece)
            if total > limit or d.unconsumed_tail:
                raise _too_large("decompressed body", limit)
            if not d.eof:
                raise HTTPError(400, "bad_encoding", f"truncated {enc} body")
            data = d.unused_data
            if not data or wbits != 16 + zlib.MAX_WBITS:
                break  # gzip may hold several members; deflate is one stream
    except zlib.error as exc:
        raise HTTPError(400, "bad_encoding", f"invalid {enc} body: {exc}") from None
    return out[0] if len(out) == 1 else b"".join(out)
