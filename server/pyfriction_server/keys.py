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

Write keys are public, so one client could drain its key's bucket for everyone: each client
address (an IPv6 client by its /64) also has a bucket, smaller than the key's and spent
first, and it is checked before the body is read. A client past its own rate gets 429
without spending the key's tokens.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import math
import time
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection

from .errors import HTTPError

__all__ = ["ADMIN", "WRITE", "KeyRing", "client_address", "header_key"]

#: Client buckets kept at most; past it, the full ones (idle clients) are forgotten.
MAX_CLIENTS = 65_536

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


def client_address(conn: HTTPConnection) -> str | None:
    """The rate-limit identity of the client: its IP address, an IPv6 client's /64 (one host
    holds a whole /64), None when the server does not know it."""
    client = conn.scope.get("client")
    if not client:
        return None
    host = str(client[0])
    if ":" in host:
        try:
            return str(ipaddress.IPv6Network(host + "/64", strict=False).network_address) + "/64"
        except ValueError:
            return host
    return host


class _Bucket:
    __slots__ = ("tokens", "stamp")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp


class KeyRing:
    """Checks keys and applies the per-key rate limits."""

    def __init__(self, write_keys: list[str], admin_keys: list[str], rate: float, burst: int,
                 clock: Callable[[], float] = time.monotonic, *, client_rate: float | None = None,
                 client_burst: int | None = None) -> None:  # fmt: skip
        self.write_keys = [k.encode() for k in write_keys]
        self.admin_keys = [k.encode() for k in admin_keys]
        self.open = not write_keys
        self.rate = rate
        self.burst = float(burst)
        #: Per client address (None: a tenth of the key's rate and burst).
        self.client_rate = rate / 10 if client_rate is None else client_rate
        self.client_burst = max(1.0, float(burst // 10 if client_burst is None else client_burst))
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._clients: dict[str, _Bucket] = {}

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

    def check_client(self, client: str | None) -> None:
        """Spend one request of ``client``'s own bucket (see :func:`client_address`); 429 past it."""
        if client is None:
            return
        clients = self._clients
        if len(clients) >= MAX_CLIENTS and client not in clients:
            self._forget_idle_clients()
        self._take(clients, client, self.client_rate, self.client_burst, "this client's")

    def _forget_idle_clients(self) -> None:
        now = self.clock()
        clients = self._clients
        for name in [
            n for n, b in clients.items() if b.tokens + (now - b.stamp) * self.client_rate >= self.client_burst
        ]:
            del clients[name]  # refilled: the same as a new bucket
        while len(clients) >= MAX_CLIENTS:  # all busy (many addresses): the oldest go first
            del clients[next(iter(clients))]

    def check_write(self, key: str | None, client: str | None = None) -> str:
        """Authorize ingest/guidance: the client's bucket (when given), the key, the key's
        bucket; returns the key's bucket name; raises 401/429."""
        self.check_client(client)
        kind = self.kind(key)
        if kind is None:
            if not self.open:
                raise HTTPError(401, "unauthorized", "missing or unknown write key")
            bucket = ""  # open mode: one shared bucket, so unknown keys cannot grow memory
        else:
            bucket = key  # type: ignore[assignment]
        self.take(bucket)
        return bucket

    def check_admin(self, key: str | None, client: str | None = None) -> str:
        """Authorize the support endpoints (admin keys only); raises 401/429."""
        self.check_client(client)
        if not self.admin_keys:
            raise HTTPError(401, "unauthorized", "no admin key is configured: the support endpoints are closed")
        if self.kind(key) != ADMIN:
            raise HTTPError(401, "unauthorized", "an admin key is required (a write key is not enough)")
        self.take(key)  # type: ignore[arg-type]
        return key  # type: ignore[return-value]

    def take(self, bucket: str) -> None:
        """Spend one request from the key's ``bucket``; 429 with ``Retry-After`` when it is empty."""
        self._take(self._buckets, bucket, self.rate, self.burst, "the key's")

    def _take(self, buckets: dict[str, _Bucket], name: str, rate: float, burst: float, whose: str) -> None:
        now = self.clock()
        b = buckets.get(name)
        if b is None:
            b = buckets[name] = _Bucket(burst, now)
        else:
            b.tokens = min(burst, b.tokens + (now - b.stamp) * rate)
            b.stamp = now
        if b.tokens < 1.0:
            wait = max(1, math.ceil((1.0 - b.tokens) / rate)) if rate > 0 else 60
            raise HTTPError(
                429, "rate_limited", f"{whose} rate limit of {rate:g} requests/s exceeded", retry_after=wait
            )
        b.tokens -= 1.0
