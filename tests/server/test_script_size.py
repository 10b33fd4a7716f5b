"""Cost (issue 19): the served browser script is at most 10 KB gzipped. No browser or Node
needed: this measures the committed file, exactly as the sidecar serves it."""

from __future__ import annotations

import gzip
import os

from pyfriction_server.script import Script

#: The budget of issue 19: pyfriction.js, Floating UI included, gzipped.
BUDGET = 10 * 1024
STATIC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      "server", "pyfriction_server", "static", "pyfriction.js")  # fmt: skip


def test_the_served_script_is_at_most_10_kb_gzipped() -> None:
    script = Script.load()
    with open(STATIC, "rb") as f:
        assert script.body == f.read()  # what is served is the committed file
    assert gzip.decompress(script.gzip) == script.body
    assert len(script.gzip) <= BUDGET, f"pyfriction.js is {len(script.gzip)} bytes gzipped (budget {BUDGET})"
    # whatever gzip's settings: the best compression and the default one
    assert len(gzip.compress(script.body, 9, mtime=0)) <= BUDGET
    assert len(gzip.compress(script.body, mtime=0)) <= BUDGET
    # brotli (what browsers take when they can) is smaller still
    assert script.brotli is not None and len(script.brotli) < len(script.gzip)
