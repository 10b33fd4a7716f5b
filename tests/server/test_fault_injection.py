"""Fault injection on the journal: a full disk, a flipped byte, a kill -9 mid-write, truncated
files. For each fault: nothing accepted (answered 200) is lost, or exactly what is lost is
reported (the log, ``/metrics``, ``/readyz``).

The disk-full test mounts a real 8 MB tmpfs, which needs root (CI runs as root); elsewhere it
skips and says why. The rest runs anywhere.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import struct
import subprocess
import sys
import zlib
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyfriction_server.journal import MAGIC, Damage, Journal, read_segment, segments

from .sidecar_util import ADMIN_KEY, WRITE_KEY, ProcessServer, free_port
from helpers import fill_disk, tmpfs

AUTH = {"X-Write-Key": WRITE_KEY}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
#: Snapshots only when asked: the faults are injected into the journal, which a snapshot empties.
QUIET = "[server]\nsnapshot_interval = 3600.0\ntick_interval = 3600.0\n"


def _metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def _send_users(url: str, users: list[str], per_request: int = 100) -> None:
    """One click per user, ``per_request`` users a request; every request must be accepted."""
    with httpx.Client(base_url=url, headers=AUTH, timeout=30) as c:
        for i in range(0, len(users), per_request):
            events = [{"id": f"e-{u}", "user_id": u, "type": "click", "target": "#x", "ts": 1_700_000_000.0}
                      for u in users[i : i + per_request]]  # fmt: skip
            r = c.post("/v1/events", json=events)
            assert r.status_code == 200 and r.json()["accepted"] == len(events), r.text


def _events_of(url: str, users: list[str]) -> dict[str, int]:
    """Events scored for each of ``users`` (0: not tracked), over one connection."""
    out = {}
    with httpx.Client(base_url=url, headers=ADMIN, timeout=30) as c:
        for u in users:
            r = c.get(f"/v1/users/{u}")
            out[u] = r.json()["events"] if r.status_code == 200 else 0
    return out


def _tracked(url: str) -> int:
    return int(_metric(url, "pyfriction_users_tracked"))


def _config(tmp_path: Any, text: str = QUIET) -> str:
    path = tmp_path / "sidecar.toml"
    path.write_text(text)
    return str(path)


# -- a full disk ------------------------------------------------------------------------------
def test_disk_full_then_recovery_loses_nothing_accepted(tmp_path: Any) -> None:
    with tmpfs(tmp_path / "disk") as disk:
        state = os.path.join(disk, "state")
        port = free_port()
        server = ProcessServer(state, port=port, config=_config(tmp_path)).start()
        try:
            _send_users(server.url, [f"before-{i}" for i in range(50)])
            filler = os.path.join(disk, "filler")
            fill_disk(filler)
            # Leave a few kB: the next write of a large request fails part-way.
            with open(filler, "r+b") as fh:
                fh.truncate(os.path.getsize(filler) - 8192)
            big = [{"user_id": f"refused-{i}", "type": "click", "target": "#" + "x" * 200} for i in range(300)]
            statuses = [httpx.post(server.url + "/v1/events", json=big, headers=AUTH, timeout=30).status_code
                        for _ in range(5)]  # fmt: skip
            assert 503 in statuses and 200 not in statuses[statuses.index(503) :], statuses
            # While every ingest gets 503, the sidecar is not ready (load balancers move on).
            ready = httpx.get(server.url + "/readyz", timeout=10)
            assert ready.status_code == 503 and ready.json()["reason"] in ("disk_full", "journal_unavailable"), (
                ready.text
            )
            assert _metric(server.url, "pyfriction_journal_write_errors_total") >= 1
            os.unlink(filler)  # space again
            assert httpx.get(server.url + "/readyz", timeout=10).status_code == 200
            users = [f"after-{i}" for i in range(100)]
            _send_users(server.url, users, per_request=10)
        finally:
            server.kill()  # kill -9: only the journal holds the users since the start
        server = ProcessServer(state, port=port, config=_config(tmp_path)).start()
        try:
            got = _events_of(server.url, users + [f"before-{i}" for i in range(50)] + ["refused-0"])
            missing = [u for u, n in got.items() if n != 1 and u != "refused-0"]
            assert not missing, f"accepted events lost after a disk-full episode: {len(missing)} users"
            assert got["refused-0"] == 0  # answered 503: not applied
            ready = httpx.get(server.url + "/readyz", timeout=10).json()
            assert "journal_damage" not in ready, ready  # the failed write was cut off, not left behind
        finally:
            server.stop()


@pytest.mark.parametrize("live_dir", ["/dev/shm", ""])
def test_workers_on_a_disk_too_small_for_the_shared_store_refuse_to_start(tmp_path: Any, live_dir: str) -> None:
    # The store and its facts file take every block when created (pyfriction.diskspace): on a
    # disk without room for them the sidecar stops at start, saying so, rather than a worker
    # dying of SIGBUS once the disk is full and a page of the store is written for the first time.
    # With the live files in memory (live_dir), their copies on the disk take their blocks at
    # start too, rather than every checkpoint failing while the journal grows.
    pytest.importorskip("pyfriction._core")
    if live_dir and not os.path.isdir(live_dir):
        pytest.skip(f"no {live_dir}")
    with tmpfs(tmp_path / "disk", "24m") as disk:
        run = subprocess.run([sys.executable, "-m", "pyfriction_server", "--port", str(free_port()), "--workers", "2",
                              "--state-dir", os.path.join(disk, "state"), "--write-key", WRITE_KEY,
                              "--live-dir", live_dir], capture_output=True, text=True, timeout=120)  # fmt: skip
        assert run.returncode == 1, run.stderr[-2000:]
        assert "cannot start: cannot open the shared store" in run.stderr
        assert re.search(r"friction.state needs [0-9,]+ bytes: the disk is full", run.stderr), run.stderr[-2000:]
        assert os.path.getsize(os.path.join(disk, "state", "friction.state")) == 0


# -- a flipped byte ---------------------------------------------------------------------------
def _records(path: str) -> list[tuple[int, int, bytes]]:
    """``(offset, end, payload)`` of each record of an intact segment."""
    with open(path, "rb") as fh:
        data = fh.read()
    assert data[:4] == MAGIC
    pos, out = 12, []
    while pos < len(data):
        length, _ = struct.unpack_from("<II", data, pos)
        out.append((pos, pos + 8 + length, data[pos + 8 : pos + 8 + length]))
        pos += 8 + length
    return out


def test_bit_flip_loses_only_the_damaged_record(tmp_path: Any) -> None:
    state = str(tmp_path / "state")
    port = free_port()
    users = [f"user-{i:05d}" for i in range(10_000)]
    server = ProcessServer(state, port=port, config=_config(tmp_path)).start()
    try:
        _send_users(server.url, users)
    finally:
        server.kill()
    (seq, path), *_ = [s for s in segments(state) if os.path.getsize(s[1]) > 12]
    records = _records(path)
    flip = int(os.path.getsize(path) * 0.3)
    hit = next(payload for start, end, payload in records if start <= flip < end)
    lost = set(msgspec.msgpack.decode(hit)["cols"]["user_id"])
    assert 0 < len(lost) < 200
    with open(path, "r+b") as fh:
        fh.seek(flip)
        byte = fh.read(1)
        fh.seek(flip)
        fh.write(bytes([byte[0] ^ 0x5A]))

    server = ProcessServer(state, port=port, config=_config(tmp_path)).start()
    try:
        # the damaged record's users are missing; as many users as the others are tracked
        # (so every other one is), each with its event (a sample of them asked)
        assert _tracked(server.url) == len(users) - len(lost)
        assert set(_events_of(server.url, sorted(lost)).values()) == {0}
        assert set(_events_of(server.url, [u for u in users if u not in lost][::50]).values()) == {1}
        # ...and the loss is reported: /readyz, /metrics, the log, the segment kept aside
        ready = httpx.get(server.url + "/readyz", timeout=10)
        assert ready.status_code == 200
        damage = ready.json()["journal_damage"]
        assert damage["damaged_records"] == 1 and damage["segments"] == [os.path.basename(path)]
        assert _metric(server.url, "pyfriction_journal_damaged_records_total") == 1
        assert os.path.exists(os.path.join(state, "damaged", os.path.basename(path)))
    finally:
        server.stop()
    assert "damaged records skipped at replay" in server.read_log()


# -- kill -9 mid-write, truncated files -------------------------------------------------------
def test_torn_tail_after_kill9_loses_nothing_answered(tmp_path: Any) -> None:
    state = str(tmp_path / "state")
    port = free_port()
    server = ProcessServer(state, port=port, config=_config(tmp_path)).start()
    try:
        _send_users(server.url, [f"u{i}" for i in range(300)])
    finally:
        server.kill()
    (_, path), *_ = [s for s in segments(state) if os.path.getsize(s[1]) > 12]
    start, end, payload = _records(path)[-1]
    with open(path, "ab") as fh:  # what a kill -9 in the middle of a write leaves: half a record
        fh.write(struct.pack("<II", len(payload), zlib.crc32(payload)) + payload[: len(payload) // 2])
    server = ProcessServer(state, port=port, config=_config(tmp_path)).start()
    try:
        assert _tracked(server.url) == 300
        ready = httpx.get(server.url + "/readyz", timeout=10).json()
        assert ready["status"] == "ready" and "journal_damage" not in ready and ready["journal_torn_tails"] == 1
        assert _metric(server.url, "pyfriction_journal_torn_tails_total") == 1
    finally:
        server.stop()


def _segment(tmp_path: Any, payloads: list[bytes], salt: int = 0x1234ABCD) -> str:
    path = str(tmp_path / "journal-000000000000.log")
    with open(path, "wb") as fh:
        fh.write(MAGIC + struct.pack("<II", salt, salt))
        for p in payloads:
            fh.write(struct.pack("<II", len(p), zlib.crc32(p, salt)) + p)
    return path


RECORDS = st.lists(
    st.builds(lambda n, pad: msgspec.msgpack.encode({"k": "t", "now": float(n), "pad": "x" * pad}),
              st.integers(0, 2**31), st.integers(0, 300)),
    min_size=1, max_size=12,
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payloads=RECORDS, where=st.floats(0, 1, exclude_max=True), xor=st.integers(1, 255))
def test_any_flipped_byte_loses_at_most_its_own_record(tmp_path: Any, payloads: list[bytes], where: float,
                                                       xor: int) -> None:  # fmt: skip
    path = _segment(tmp_path, payloads)
    data = bytearray(open(path, "rb").read())
    at = int(len(data) * where)
    data[at] ^= xor
    open(path, "wb").write(bytes(data))
    found: list[Damage] = []
    got = list(read_segment(path, found))
    bounds, pos = [], 12
    for p in payloads:
        bounds.append((pos, pos + 8 + len(p)))
        pos += 8 + len(p)
    hit = [i for i, (s, e) in enumerate(bounds) if s <= at < e]
    expected = [p for i, p in enumerate(payloads) if i not in hit]
    assert got == expected
    assert len(found) == len(hit)  # reported: exactly the damaged record, nothing when in the preamble
    if hit:
        assert found[0].offset == bounds[hit[0]][0]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payloads=RECORDS, where=st.floats(0, 1))
def test_a_truncated_segment_keeps_every_whole_record(tmp_path: Any, payloads: list[bytes], where: float) -> None:
    path = _segment(tmp_path, payloads)
    size = os.path.getsize(path)
    cut = int(size * where)
    os.truncate(path, cut)
    found: list[Damage] = []
    got = list(read_segment(path, found))
    whole, pos = [], 12
    for p in payloads:
        pos += 8 + len(p)
        if pos <= cut:
            whole.append(p)
    assert got == whole
    boundary = cut <= 12 or cut in {12 + sum(8 + len(p) for p in payloads[:i]) for i in range(len(payloads) + 1)}
    assert (found == []) == boundary and all(d.torn for d in found)


# -- a failed write is cut off ------------------------------------------------------------------
def test_a_write_failing_part_way_is_cut_off(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC after part of a write (what a full disk does): the journal truncates back to its
    last whole record and syncs before the requests are answered, so what is written once the
    disk has room again is read back whole. (No root needed: os.write fails on cue.)"""
    import pyfriction_server.journal as journal_module

    real_write = os.write
    fail = {"after": -1, "full": False}

    def write(fd: int, data: Any) -> int:
        if fail["after"] >= 0:  # room for this many bytes, then none
            n = real_write(fd, bytes(data[: fail["after"]]))
            fail["after"], fail["full"] = -1, True
            return n
        if fail["full"]:
            fail["full"] = False  # (space is freed right after)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    async def run() -> list[Any]:
        loop = asyncio.get_running_loop()
        outcomes: list[Any] = []

        def on_commit(done: list[tuple[Any, Any]], error: BaseException | None) -> None:
            outcomes.extend((record, error) for record, _ in done)

        j = Journal(str(tmp_path), 0, fsync=False, loop=loop, on_commit=on_commit, on_rotate=lambda seq: None)
        enc = msgspec.msgpack.encode
        for i in range(3):
            j.submit(enc({"k": "t", "now": float(i)}), i, loop.create_future())
        j.commit()
        monkeypatch.setattr(journal_module.os, "write", write)
        fail["after"] = 30  # the next write gets 30 bytes out, then the disk is full
        j.submit(enc({"k": "t", "now": 99.0, "pad": "p" * 200}), "lost", loop.create_future())
        j.commit()
        assert j.failure is not None
        for i in range(3, 6):
            j.submit(enc({"k": "t", "now": float(i)}), i, loop.create_future())
        j.commit()
        assert j.failure is None
        await j.close()
        return outcomes

    outcomes = asyncio.run(run())
    assert [(r, e is None) for r, e in outcomes] == [(0, True), (1, True), (2, True), ("lost", False),
                                                     (3, True), (4, True), (5, True)]  # fmt: skip
    found: list[Damage] = []
    replayed = [
        msgspec.msgpack.decode(p)["now"] for p in read_segment(str(tmp_path / "journal-000000000000.log"), found)
    ]
    assert replayed == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0] and found == []


def test_readyz_is_not_ready_while_every_write_fails(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An I/O error on every journal write (a dying disk): every ingest gets 503, and so does
    /readyz, until a write goes through again. (No root needed: the journal's os.write fails.)"""
    import types

    import pyfriction_server.journal as journal_module

    from .sidecar_util import ThreadServer

    failing = {"on": False}

    def write(fd: int, data: Any) -> int:
        if failing["on"]:
            raise OSError(errno.EIO, "Input/output error")
        return os.write(fd, data)

    fake_os = types.SimpleNamespace(**{name: getattr(os, name) for name in dir(os) if not name.startswith("__")})
    fake_os.write = write
    monkeypatch.setattr(journal_module, "os", fake_os)
    with ThreadServer(write_keys=[WRITE_KEY], admin_keys=[ADMIN_KEY], state_dir=str(tmp_path / "state")) as s:
        events = [{"user_id": "io", "type": "click", "target": "#x"}]
        assert httpx.post(s.url + "/v1/events", json=events, headers=AUTH).status_code == 200
        assert httpx.get(s.url + "/readyz").status_code == 200
        failing["on"] = True
        r = httpx.post(s.url + "/v1/events", json=events, headers=AUTH)
        assert r.status_code == 503 and r.json()["code"] == "journal_unavailable" and r.headers["Retry-After"] == "5"
        ready = httpx.get(s.url + "/readyz")
        assert ready.status_code == 503 and ready.json()["reason"] == "journal_unavailable"
        assert "Input/output error" in ready.json()["journal_error"]
        failing["on"] = False
        assert httpx.get(s.url + "/readyz").status_code == 200  # the probe record went through
        assert httpx.post(s.url + "/v1/events", json=events, headers=AUTH).status_code == 200
        assert _metric(s.url, "pyfriction_journal_write_errors_total") >= 2  # the request and a probe
