"""Prometheus metrics in the text exposition format (version 0.0.4), written by hand.

No ``prometheus_client`` dependency: the sidecar needs a handful of counters, gauges and
histograms with a fixed, small label set, which is fifty lines; the library would add a
process-global registry and locks to the ingest hot path. Conventions followed: the
``pyfriction_`` prefix, base units (seconds, bytes), ``_total`` counters, and no user ids in
labels (labels are routes, sources, reasons and outcomes: bounded sets).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable
from typing import TypeVar

__all__ = ["CONTENT_TYPE", "Counter", "Gauge", "Histogram", "Metrics", "Registry"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
Labels = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Labels, values: Labels, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, labels: Labels = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = labels

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    """A monotonically increasing count per label set."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, labels: Labels = (), initial: Iterable[Labels] = ()) -> None:
        super().__init__(name, help_text, labels)
        self.values: dict[Labels, float] = {lv: 0.0 for lv in (initial or ([()] if not labels else []))}

    def inc(self, labels: Labels = (), amount: float = 1.0) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def get(self, labels: Labels = ()) -> float:
        return self.values.get(labels, 0.0)

    def render(self) -> list[str]:
        lines = self.header()
        for lv, v in sorted(self.values.items()):
            lines.append(f"{self.name}{_labels(self.label_names, lv)} {_num(v)}")
        return lines


class Gauge(_Metric):
    """A value read when scraped, from ``read()``."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        super().__init__(name, help_text)
        self.read = read

    def render(self) -> list[str]:
        return self.header() + [f"{self.name} {_num(self.read())}"]


#: Request latency buckets (seconds).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class Histogram(_Metric):
    """Cumulative buckets, ``_sum`` and ``_count`` per label set."""

    kind = "histogram"

    def __init__(
        self, name: str, help_text: str, labels: Labels = (), buckets: tuple[float, ...] = LATENCY_BUCKETS
    ) -> None:
        super().__init__(name, help_text, labels)
        self.buckets = buckets
        self.series: dict[Labels, list[float]] = {}  # per-bucket counts (+Inf last), sum at the end

    def observe(self, value: float, labels: Labels = ()) -> None:
        s = self.series.get(labels)
        if s is None:
            s = self.series[labels] = [0.0] * (len(self.buckets) + 2)
        s[bisect.bisect_left(self.buckets, value)] += 1
        s[-1] += value

    def render(self) -> list[str]:
        lines = self.header()
        for lv, s in sorted(self.series.items()):
            running = 0.0
            for bound, count in zip((*self.buckets, math.inf), s):
                running += count
                le = 'le="' + _num(bound) + '"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, lv, le)} {_num(running)}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, lv)} {_num(s[-1])}")
            lines.append(f"{self.name}_count{_labels(self.label_names, lv)} {_num(running)}")
        return lines


_M = TypeVar("_M", bound=_Metric)


class Registry:
    """The metrics in exposition order."""

    def __init__(self) -> None:
        self.metrics: list[_Metric] = []

    def add(self, metric: _M) -> _M:
        self.metrics.append(metric)
        return metric

    def render(self) -> str:
        lines: list[str] = []
        for m in self.metrics:
            lines.extend(m.render())  # type: ignore[attr-defined]
        return "\n".join(lines) + "\n"


SOURCES = ("segment", "posthog", "native", "browser")
#: What a Redis store (``--store``) did in this process since it started (``Tracker.store_stats``);
#: 0 without one.
STORE_STATS = {
    "conflicts": "Redis store: users whose commit met another host's newer record and were scored again.",
    "duplicates": "Redis store: events dropped as replays of events the user's record remembers.",
    "capped": "Redis store: events dropped by the per-user rate cap.",
    "fallbacks": "Redis store: users sent one by one because their node's batched call failed (slot moves, failovers).",
    "unreplicated": "Redis store: writes fewer replicas acknowledged in time than `replicas` asks.",
}
#: Why a received message was not accepted (see ``pyfriction_server.ingest.REJECT_REASONS``).
REJECT_REASONS = ("missing_user", "missing_event", "unknown_type", "unknown_call", "invalid", "duplicate",
                  "invalid_traits")  # fmt: skip
#: What an accepted message was: an event scored, a screen view (scored as a page), identify
#: traits, or a call accepted without scoring (group, alias, other: PostHog's other $ events).
ACCEPTED_KINDS = ("event", "screen", "identify", "group", "alias", "other")


class Metrics:
    """Every metric the sidecar exports. Gauges read live values through ``gauges``."""

    def __init__(self, gauges: dict[str, Callable[[], float]] | None = None) -> None:
        g = gauges or {}
        r = self.registry = Registry()
        self.events_received = r.add(Counter(
            "pyfriction_events_received_total", "Events received in accepted requests, by source.",
            ("source",), [(s,) for s in SOURCES]))  # fmt: skip
        self.events_accepted = r.add(Counter(
            "pyfriction_events_accepted_total",
            "Events (and identify, group, alias calls) persisted and applied, by source: with the rejected "
            "ones, every event received.", ("source",), [(s,) for s in SOURCES]))  # fmt: skip
        self.events_accepted_kinds = r.add(Counter(
            "pyfriction_events_accepted_kinds_total",
            "Accepted events by kind (event, screen, identify, group, alias, other).",
            ("kind",), [(k,) for k in ACCEPTED_KINDS]))  # fmt: skip
        self.events_rejected = r.add(Counter(
            "pyfriction_events_rejected_total",
            "Events received but not accepted, by reason (missing_user, missing_event, unknown_type, "
            "unknown_call, invalid, duplicate, invalid_traits).", ("reason",), [(x,) for x in REJECT_REASONS]))  # fmt: skip
        self.requests_rejected = r.add(Counter(
            "pyfriction_requests_rejected_total",
            "Requests refused, by reason (unauthorized, rate_limited, payload_too_large, bad_json...).",
            ("reason",)))  # fmt: skip
        self.episodes = r.add(Counter("pyfriction_episodes_total", "Friction episodes fired."))
        self.guidance_delivered = r.add(Counter(
            "pyfriction_guidance_delivered_total", "Guidance items sent to a browser, by channel (poll: once per item; stream: once per stream and item).",
            ("channel",), [("poll",), ("stream",)]))  # fmt: skip
        self.guidance_feedback = r.add(Counter(
            "pyfriction_guidance_feedback_total", "Guidance feedback from browsers (shown, clicked, dismissed, completed).",
            ("outcome",), [(o,) for o in ("shown", "clicked", "dismissed", "completed", "anchor_missing")]))  # fmt: skip
        # Per catalog item: only acks of items offered to that user count, so the label set is
        # bounded by the catalog.
        self.guidance_item_feedback = r.add(Counter(
            "pyfriction_guidance_item_feedback_total",
            "Guidance feedback from browsers per catalog item (shown, clicked, dismissed, completed, anchor_missing).",
            ("item", "outcome")))  # fmt: skip
        self.request_seconds = r.add(Histogram(
            "pyfriction_request_duration_seconds", "Request latency, by route template and method.",
            ("route", "method")))  # fmt: skip
        self.journal_bytes = r.add(
            Counter("pyfriction_journal_written_bytes_total", "Bytes appended to the ingest journal.")
        )
        self.journal_syncs = r.add(Counter("pyfriction_journal_fsyncs_total", "Journal fsyncs (group commits)."))
        self.journal_write_errors = r.add(Counter(
            "pyfriction_journal_write_errors_total",
            "Journal writes or syncs that failed (disk full, I/O error): their requests were answered 503."))  # fmt: skip
        self.journal_damaged = r.add(Counter(
            "pyfriction_journal_damaged_records_total",
            "Damaged journal records skipped at replay, valid records after them (what they held is lost)."))  # fmt: skip
        self.journal_torn = r.add(Counter(
            "pyfriction_journal_torn_tails_total",
            "Torn journal tails dropped at replay (a write cut by a crash, never answered)."))  # fmt: skip
        self.journal_skipped_bytes = r.add(Counter(
            "pyfriction_journal_skipped_bytes_total", "Journal bytes skipped at replay (damaged records and torn tails)."))  # fmt: skip
        self.log_suppressed = r.add(Counter(
            "pyfriction_log_lines_suppressed_total",
            "Log lines not written by the log limiter (a message repeated too often), by level.",
            ("level",), [("warning",), ("error",), ("info",)]))  # fmt: skip
        self.snapshots = r.add(Counter("pyfriction_snapshots_total", "Snapshots written."))
        self.snapshot_seconds = r.add(Histogram(
            "pyfriction_snapshot_duration_seconds", "Time to write a snapshot.",
            buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)))  # fmt: skip
        for name, help_text in (
            ("pyfriction_users_tracked", "Users the engine tracks now."),
            ("pyfriction_ingest_queue_depth", "Ingest records waiting for the journal or the engine."),
            ("pyfriction_dispatcher_queue_depth", "Episodes waiting for the engine's callback dispatcher."),
            ("pyfriction_guidance_streams", "Open guidance streams (Server-Sent Events)."),
            ("pyfriction_dedupe_ids", "Delivery ids remembered for deduplication."),
            ("pyfriction_ready", "1 once the state is restored and the engine is ready."),
            *((f"pyfriction_store_{name}", help_text) for name, help_text in STORE_STATS.items()),
        ):
            r.add(Gauge(name, help_text, g.get(name, lambda: 0.0)))

    def render(self) -> str:
        return self.registry.render()
