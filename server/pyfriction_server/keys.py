"""Keys and per-key rate limits.

Two kinds of key:

* **write keys** are publishable: they may ingest events and read a user's guidance (with
  that user's token when identity verification is on), nothing else. Safe in a browser.
* **admin keys** are secret: everything, including the support endpoints
  (``/v1/users/{id}``, ``/v1/hotspots``). Never ship one to a browser.

A key is found, in this order, in ``X-Write-Key``, ``Authorization: Basic`` (the user name,
Segment's way), ``Authorization: Bearer`` (PostHog's v1 way), or the body (``writeKey``,
``api_key``) or, for the guidance endpoints only (``EventSource`` cannot send headers), the
``key`` query parameter.

With no write key configured, ingest and guidance are open (development); with no admin key
configured, the support endpoints are closed. Each key has a token bucket of ``rate``
requests per second (``burst`` deep); past it the answer is 429 with ``Retry-After``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import math
import time
from collections.abc import Callable

from starlette.datastructures import Headers

from .errors import HTTPError

__all__ = ["ADMIN", "WRITE", "KeyRing", "header_key"]

WRITE = "write"
ADMIN = "admin"


def header_key(headers: Headers) -> str | None:
    """The key carried by the request headers, if any."""
    key = headers.get("x-write-key")
    if key:
        return key
    auth = headers.get("authorization")
    if not auth:
        return None
    scheme, _, value = auth.partition(" ")
    scheme = scheme.lower()
    value = value.strip()
    if scheme == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise HTTPError(401, "unauthorized", "malformed Basic credentials") from None
        return decoded.partition(":")[0] or None
    if scheme == "bearer":
        return value or None
    return None


class _Bucket:
    __slots__ = ("tokens", "stamp")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class KeyRing:
    """Checks keys and applies the per-key rate limits."""

    def __init__(self, write_keys: list[str], admin_keys: list[str], rate: float, burst: int,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.write_keys = [k.encode() for k in write_keys]
        self.admin_keys = [k.encode() for k in admin_keys]
        self.open = not write_keys
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}

    @staticmethod
    def _match(key: str | None, keys: list[bytes]) -> bool:
        if not key:
            return False
        raw = key.encode("utf-8", "surrogateescape")
        found = False
        for k in keys:  # constant time in the key's content, whichever key matches
            found |= hmac.compare_digest(raw, k)
        return found

    def kind(self, key: str | None) -> str | None:
        """``"admin"``, ``"write"`` or None for an unknown (or missing) key."""
        if self._match(key, self.admin_keys):
            return ADMIN
        if self._match(key, self.write_keys):
            return WRITE
        return None

    def check_write(self, key: str | None) -> str:
        """Authorize ingest/guidance: returns the rate-limit bucket name; raises 401/429."""
        kind = self.kind(key)
        if kind is None:
            if not self.open:
                raise HTTPError(401, "unauthorized", "missing or unknown write key")
            bucket = ""  # open mode: one shared bucket, so unknown keys cannot grow memory
        else:
            bucket = key  # type: ignore[assignment]
        self.take(bucket)
        return bucket

    def check_admin(self, key: str | None) -> str:
        """Authorize the support endpoints (admin keys only); raises 401/429."""
        if not self.admin_keys:
            raise HTTPError(401, "unauthorized", "no admin key is configured: the support endpoints are closed")
        if self.kind(key) != ADMIN:
            raise HTTPError(401, "unauthorized", "an admin key is required (a write key is not enough)")
        self.take(key)  # type: ignore[arg-type]
        return key  # type: ignore[return-value]

    def take(self, bucket: str) -> None:
        """Spend one request from ``bucket``; 429 with ``Retry-After`` when it is empty."""
        now = self.clock()
        b = self._buckets.get(bucket)
        if b is None:
            b = self._buckets[bucket] = _Bucket(self.burst, now)
        else:
            b.tokens = min(self.burst, b.tokens + (now - b.stamp) * self.rate)
            b.stamp = now
        if b.tokens < 1.0:
            wait = max(1, math.ceil((1.0 - b.tokens) / self.rate))
            raise HTTPError(429, "rate_limited", f"rate limit of {self.rate:g} requests/s exceeded", retry_after=wait)
        b.tokens -= 1.0
