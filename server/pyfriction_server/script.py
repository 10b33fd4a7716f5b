"""Serving ``pyfriction.js``, the browser script: compressed, with validators, and under a
versioned URL that can be cached for a year.

* ``GET /v1/pyfriction.js``: the current script, ``Cache-Control: public, max-age=300`` and a
  strong ``ETag`` (``If-None-Match`` answers 304), so a page that always loads this URL picks up
  a new version within five minutes. The ``X-Pyfriction-Script`` header names the versioned URL.
* ``GET /v1/pyfriction.{version}.js``: the same bytes, ``Cache-Control: public,
  max-age=31536000, immutable``; the version is the first 12 hex digits of the script's
  SHA-256 (:attr:`Script.version`, also :func:`script_url`). A version that is not the current
  one redirects (302) to the current URL: an old page keeps working after an upgrade and nothing
  stale is cached for a year under a new name; anything else is a 404.

Both answer ``Accept-Encoding`` with brotli (``static/pyfriction.js.br``, compressed at build
time by ``browser/build.mjs``: no brotli module is needed at run time) or gzip (compressed once
at start-up), with ``Vary: Accept-Encoding``.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from importlib import resources

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from .errors import HTTPError

__all__ = ["Script", "script_url"]

MEDIA_TYPE = "application/javascript; charset=utf-8"
SHORT = "public, max-age=300"
IMMUTABLE = "public, max-age=31536000, immutable"
_VERSION = re.compile(r"[0-9a-f]{12}")


def _accepts(header: str, coding: str) -> bool:
    """True when an ``Accept-Encoding`` header accepts ``coding`` (q=0 refuses it)."""
    for part in header.lower().split(","):
        name, _, params = part.strip().partition(";")
        if name.strip() != coding:
            continue
        q = params.strip()
        if q.startswith("q="):
            try:
                return float(q[2:]) > 0.0
            except ValueError:
                return False
        return True
    return False


class Script:
    """The script's bytes and their compressed forms, validators and versioned URL."""

    def __init__(self, body: bytes, brotli: bytes | None = None) -> None:
        self.body = body
        digest = hashlib.sha256(body).hexdigest()
        #: The first 12 hex digits of the script's SHA-256: the versioned URL's ``{version}``.
        self.version = digest[:12]
        self.etag = f'"{digest[:16]}"'
        # mtime=0: the same bytes on every start and every replica (a stable representation).
        self.gzip = gzip.compress(body, 9, mtime=0)
        self.brotli = brotli

    @classmethod
    def load(cls) -> Script:
        """The packaged ``static/pyfriction.js`` (and its brotli file when packaged with it)."""
        static = resources.files("pyfriction_server").joinpath("static")
        body = static.joinpath("pyfriction.js").read_bytes()
        br_file = static.joinpath("pyfriction.js.br")
        brotli = br_file.read_bytes() if br_file.is_file() else None
        return cls(body, brotli)

    @property
    def url(self) -> str:
        """The versioned path, e.g. ``/v1/pyfriction.0123456789ab.js``."""
        return f"/v1/pyfriction.{self.version}.js"

    def response(self, request: Request, cache_control: str) -> Response:
        """The script for this request: 304 when the ETag matches, else the best encoding."""
        headers = {
            "ETag": self.etag,
            "Cache-Control": cache_control,
            "Vary": "Accept-Encoding",
            "X-Pyfriction-Script": self.url,
        }
        match = request.headers.get("if-none-match", "")
        if match and (match.strip() == "*" or self.etag in [t.strip().removeprefix("W/") for t in match.split(",")]):
            return Response(status_code=304, headers=headers)
        accept = request.headers.get("accept-encoding", "")
        body = self.body
        if self.brotli is not None and _accepts(accept, "br"):
            body, headers["Content-Encoding"] = self.brotli, "br"
        elif _accepts(accept, "gzip"):
            body, headers["Content-Encoding"] = self.gzip, "gzip"
        if request.method == "HEAD":
            headers["Content-Length"] = str(len(body))
            return Response(status_code=200, headers=headers, media_type=MEDIA_TYPE)
        return Response(body, media_type=MEDIA_TYPE, headers=headers)

    async def current(self, request: Request) -> Response:
        """``GET /v1/pyfriction.js``."""
        return self.response(request, SHORT)

    async def versioned(self, request: Request) -> Response:
        """``GET /v1/pyfriction.{version}.js``."""
        version = request.path_params.get("version", "")
        if version != self.version:
            if not _VERSION.fullmatch(version):
                raise HTTPError(404, "not_found", "no such script version")
            return RedirectResponse(self.url, status_code=302, headers={"Cache-Control": "no-cache"})
        return self.response(request, IMMUTABLE)


def script_url(base: str = "") -> str:
    """The versioned URL of the packaged script under ``base`` (the sidecar's origin), for a
    host page's ``<script src>``: cached by browsers for a year, changes with every release."""
    return base.rstrip("/") + Script.load().url
