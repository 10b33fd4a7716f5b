"""``pyfriction report`` on logs made by the sample generator: the text tables, ``--json``,
Segment-style logs, the progress bar, bad lines, and the ``--html`` page rendered in headless
Chromium (charts drawn, not just a file written). Also ``pyfriction sample``.

The Chromium test drives Debian's /usr/bin/chromium through Playwright. It is skipped when
either is missing, except under ``CI`` where it fails: CI must install them (``chromium`` is
in .ci/debian-packages.txt, ``playwright`` in the test extras). A screenshot of the page goes
to ``.artifacts/report.png`` (git-ignored).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

import pyfriction
from pyfriction import _sample
from pyfriction.cli import main
from pyfriction.report import ReportResult, default_config_path, format_text, replay_log

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / ".artifacts"
CHROMIUM = "/usr/bin/chromium"
USERS = 2000
#: The guidance that was live when the sample's guided stream was "recorded".
CONFIG = default_config_path()


@pytest.fixture(scope="module")
def guided_events() -> list[dict[str, Any]]:
    return _sample.generate(USERS, seed=7, guided=True)


@pytest.fixture(scope="module")
def guided_log(tmp_path_factory: pytest.TempPathFactory, guided_events: list[dict[str, Any]]) -> Path:
    path = tmp_path_factory.mktemp("logs") / "guided.jsonl"
    _sample.write_events(path, guided_events)
    return path


@pytest.fixture(scope="module")
def report_doc(guided_log: Path) -> dict[str, Any]:
    return msgspec.to_builtins(replay_log(str(guided_log), CONFIG))  # type: ignore[no-any-return]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- the text report ----------------------------------------------------------------------------


def test_text_report_on_a_sample_log(capsys: pytest.CaptureFixture[str], guided_log: Path,
                                     report_doc: dict[str, Any]) -> None:  # fmt: skip
    code, out, err = run_cli(capsys, "report", str(guided_log), "--config", CONFIG, "--no-progress")
    assert code == 0 and err == ""
    ins = report_doc["insights"]
    assert f"{ins['episodes']:,} friction episodes" in out and f"{ins['tickets']:,} tickets" in out
    sections = ["FRICTION HOTSPOTS", "LEAD TIME", "DEFLECTION", "GUIDANCE ITEMS", "ACCOUNTS"]
    positions = [out.index(s) for s in sections]
    assert positions == sorted(positions)
    hotspots = out[positions[0] : positions[1]]
    top = ins["hotspots"][0]
    first_row = hotspots.splitlines()[2].split()
    assert first_row[:5] == ["1", top["step"], top["target"], str(top["users"]), str(top["episodes"])]
    assert top["step"] in ("import.mapping", "billing.card")  # the sample's worst struggles
    lead = ins["lead_time"]
    assert f"{lead['preceded']:,} preceded by an episode ({lead['share'] * 100:.1f}%)" in out
    assert re.search(r"15-30 min\s+#+\s+\d+", out)
    d = ins["deflection"]
    assert re.search(rf"offered guidance\s+{d['guided']['users']}\s+{d['guided']['tickets']}\s", out)
    assert re.search(rf"holdout \(none\)\s+{d['holdout']['users']}\s+{d['holdout']['tickets']}\s", out)
    line = next(x for x in out.splitlines() if "pts fewer tickets with guidance" in x)
    assert f"(95% CI {d['low'] * 100:.1f} to {d['high'] * 100:.1f} pts" in line
    # the simulated effect of guidance is measured back: fewer tickets, significantly
    assert d["guided"]["rate"] < d["holdout"]["rate"] and d["significant"] and d["low"] > 0
    assert re.search(r"acct-acme\s+\d+\s+\d+\s+\d+\s+\d+", out)
    assert "date-format-tip" in out and "payment-processing" in out
    assert out.isascii()


def test_json_matches_an_in_process_replay(report_doc: dict[str, Any], guided_events: list[dict[str, Any]]) -> None:
    clock = [0.0]
    t = pyfriction.Tracker(default_config_path(), clock=lambda: clock[0])
    try:
        for e in guided_events:
            clock[0] = e["ts"]
            if e["type"] == "identify":
                t.identify(e["user_id"], e["traits"])
            else:
                t.observe(e)
        direct = msgspec.to_builtins(t.insights(limit=None))
    finally:
        t.close()
    assert report_doc["insights"] == direct
    assert report_doc["events"] == len(guided_events) - USERS and report_doc["identified"] == USERS
    assert report_doc["skipped"] == 0


def test_json_output(capsys: pytest.CaptureFixture[str], guided_log: Path, report_doc: dict[str, Any]) -> None:
    code, out, _ = run_cli(capsys, "report", str(guided_log), "--config", CONFIG, "--json", "--no-progress")
    doc = json.loads(out)
    assert code == 0 and doc["insights"] == report_doc["insights"]
    assert set(doc["insights"]) >= {"hotspots", "lead_time", "deflection", "items", "accounts"}


def test_segment_log_gives_the_same_figures(tmp_path: Path, guided_events: list[dict[str, Any]],
                                            report_doc: dict[str, Any]) -> None:  # fmt: skip
    path = tmp_path / "segment.jsonl"
    _sample.write_events(path, guided_events, segment=True)
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[1])
    assert first["type"] in ("track", "page", "identify") and "userId" in first and "user_id" not in first
    doc = msgspec.to_builtins(replay_log(str(path), CONFIG))
    assert doc["insights"] == report_doc["insights"]
    assert doc["identified"] == USERS and doc["skipped"] == 0


def test_bundled_sample_and_progress_bar(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "sample.jsonl"
    assert _sample.write_sample(path) == 4198
    code, out, err = run_cli(capsys, "report", str(path), "--config", CONFIG, "--progress")
    assert code == 0
    assert "\r" in err and "100.0%" in err and "4,198 events" in err and err.endswith("\n")
    assert "FRICTION HOTSPOTS" in out and "LEAD TIME" in out and "ACCOUNTS" in out
    # no identify records: no traits, but the sample's rules still match (and a 10% holdout)
    assert re.search(r"offered guidance\s+\d+", out)


def test_bad_lines_are_skipped_and_counted(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    good = [json.dumps({"user_id": "u1", "type": "click", "ts": 1_700_000_000.0 + i * 0.1, "step": "billing.card",
                        "target": "#pay-now"}) for i in range(3)]  # fmt: skip
    path.write_text("\n".join(["{oops", *good, "[1, 2]", json.dumps({"type": "click"}), "", '{"type": "track"}'])
                    + "\n", encoding="utf-8")  # fmt: skip
    code, out, _ = run_cli(capsys, "report", str(path), "--no-progress")
    assert code == 0
    assert "4 lines skipped" in out
    assert re.search(r"1\s+billing\.card\s+#pay-now\s+1\s+1", out)


def test_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["report", str(tmp_path / "missing.jsonl")])
    assert info.value.code == 2 and "cannot read" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text('[guidance]\nrules = [{guidance = "ghost"}]\n', encoding="utf-8")
    log = tmp_path / "e.jsonl"
    log.write_text("", encoding="utf-8")
    with pytest.raises(SystemExit) as info:
        main(["report", str(log), "--config", str(bad)])
    assert info.value.code == 2 and "rules[0].guidance" in capsys.readouterr().err


def test_empty_log(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    log = tmp_path / "e.jsonl"
    log.write_text("", encoding="utf-8")
    code, out, _ = run_cli(capsys, "report", str(log), "--config", CONFIG, "--no-progress")
    assert code == 0 and "no episodes" in out and "not enough data" in out


# --- without --config: no catalog (issue 13 point 5) ---------------------------------------------

SAMPLE_ITEMS = [item.id for item in pyfriction.load_config(CONFIG).guidance.items]


def test_without_config_a_guided_log_gets_no_borrowed_catalog(capsys: pytest.CaptureFixture[str],
                                                              guided_log: Path, report_doc: dict[str, Any]) -> None:  # fmt: skip
    code, out, _ = run_cli(capsys, "report", str(guided_log), "--no-progress")
    assert code == 0
    ins = report_doc["insights"]
    assert f"-> {ins['episodes']:,} friction episodes, {ins['tickets']:,} tickets" in out  # no guided/holdout split
    assert "; no config" in out and "config guidance.toml" not in out
    # the sample's items are nowhere (a hotspot target such as article:payment-methods is a page)
    assert not [item for item in SAMPLE_ITEMS if re.search(rf"(?<![\w:-]){re.escape(item)}(?![\w-])", out)]
    assert "GUIDANCE ITEMS" not in out and "offered guidance" not in out and "guided users" not in out
    # guidance events in the log: a DEFLECTION section that says what it needs
    shown = sum(1 for line in guided_log.read_text(encoding="utf-8").splitlines() if '"guidance_' in line)
    section = out[out.index("DEFLECTION") : out.index("ACCOUNTS")]
    assert f"The log has {shown:,} guidance events, but deflection needs --config FILE" in section
    for heading in ("FRICTION HOTSPOTS", "LEAD TIME", "ACCOUNTS"):
        assert heading in out
    # the same hotspots, lead time and accounts as with the catalog
    hot = ins["hotspots"][0]
    assert re.search(rf"1\s+{re.escape(hot['step'])}\s+{re.escape(hot['target'])}\s+{hot['users']}\s", out)
    lead = ins["lead_time"]
    assert f"{lead['preceded']:,} preceded by an episode" in out


def test_without_config_or_guidance_events_no_deflection_section(capsys: pytest.CaptureFixture[str],
                                                                 tmp_path: Path) -> None:  # fmt: skip
    log = tmp_path / "plain.jsonl"
    _sample.write_events(log, _sample.generate(400, seed=3))
    code, out, _ = run_cli(capsys, "report", str(log), "--no-progress")
    assert code == 0 and "DEFLECTION" not in out and "GUIDANCE ITEMS" not in out and "offered guidance" not in out
    assert out.rstrip().splitlines()[-1] == (
        "No guidance catalog: deflection needs --config FILE with the guidance (catalog, rules, holdout) "
        "that was live when the log was recorded."
    )
    # a catalog, even with no guidance event in the log, brings the section
    code, out, _ = run_cli(capsys, "report", str(log), "--config", CONFIG, "--no-progress")
    assert "DEFLECTION (ticket within" in out and "GUIDANCE ITEMS" in out and "No guidance catalog" not in out


def test_without_config_json_and_html(capsys: pytest.CaptureFixture[str], guided_log: Path, tmp_path: Path) -> None:
    page = tmp_path / "r.html"
    code, out, _ = run_cli(capsys, "report", str(guided_log), "--json", "--html", str(page), "--no-progress")
    doc = json.loads(out)
    assert code == 0 and doc["config"] is None and doc["catalog"] is False and doc["guidance_events"] > 0
    assert doc["insights"]["items"] == [] and doc["insights"]["guided_episodes"] == 0
    html = page.read_text(encoding="utf-8")
    assert "deflection-bar" not in html and 'id="items"' not in html and "Guided users" not in html
    assert 'id="deflection-note"' in html and "needs --config FILE" in html and "no config" in html
    assert html.count("<svg") == 2


def test_report_command_in_a_subprocess(guided_log: Path, tmp_path: Path, report_doc: dict[str, Any]) -> None:
    out = subprocess.run([sys.executable, "-m", "pyfriction", "report", str(guided_log), "--config", CONFIG, "--json"], cwd=ROOT,
                         capture_output=True, check=True, timeout=120)  # fmt: skip
    assert json.loads(out.stdout)["insights"]["deflection"] == report_doc["insights"]["deflection"]
    assert out.stderr == b""  # not a terminal: no progress bar


# --- pyfriction sample ------------------------------------------------------------------------------


def test_sample_command(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    code, _, err = run_cli(capsys, "sample", "--users", "50", "--guided", "-o", str(path))
    assert code == 0 and "wrote" in err
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert records == json.loads(json.dumps(_sample.generate(50, guided=True)))
    assert sum(r["type"] == "identify" for r in records) == 50
    # --write-config: the guidance the simulation used, for `report --config`
    cfg = tmp_path / "guidance.toml"
    code, _, err = run_cli(capsys, "sample", "--users", "5", "-o", str(path), "--write-config", str(cfg))
    assert code == 0 and f"wrote the guidance config to {cfg}" in err
    assert cfg.read_bytes() == Path(CONFIG).read_bytes()


def test_default_sample_is_unchanged() -> None:
    bundled = (ROOT / "pyfriction" / "data" / "sample_events.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.dumps(e, separators=(",", ":")) for e in _sample.generate()] == bundled


def test_guided_simulation_is_honest(guided_events: list[dict[str, Any]]) -> None:
    """Holdout users, and users never offered guidance, keep exactly the tickets of the
    unguided stream; only guided users may lose some (the simulated effect)."""
    plain = _sample.generate(USERS, seed=7)
    tickets = {e["user_id"] for e in plain if e["type"] == "ticket"}
    guided_tickets = {e["user_id"] for e in guided_events if e["type"] == "ticket"}
    assert guided_tickets <= tickets and len(guided_tickets) < len(tickets)
    cfg = pyfriction.load_config(default_config_path()).guidance.holdout
    from pyfriction.guidance import in_holdout

    shown = {e["user_id"] for e in guided_events if e["type"] == "guidance_shown"}
    lost = tickets - guided_tickets
    assert not any(in_holdout(user, cfg.share, cfg.salt) for user in lost)
    # only guidance that reached the screen may cost a ticket (an offer never shown keeps it)
    assert _sample.TICKETS_KEPT["offered"] == 1.0 and lost <= shown
    holdout_users = {e["user_id"] for e in plain if in_holdout(e["user_id"], cfg.share, cfg.salt)}
    assert {u for u in tickets if u in holdout_users} == {u for u in guided_tickets if u in holdout_users}
    assert not shown & holdout_users
    assert guided_events == _sample.generate(USERS, seed=7, guided=True)  # deterministic


# --- the HTML page ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def html_page(tmp_path_factory: pytest.TempPathFactory, guided_log: Path) -> Path:
    out = tmp_path_factory.mktemp("html") / "report.html"
    assert main(["report", str(guided_log), "--config", CONFIG, "--html", str(out), "--no-progress", "--json"]) == 0
    return out


def test_html_is_self_contained(html_page: Path, report_doc: dict[str, Any]) -> None:
    page = html_page.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    for banned in ("<script", "<link", "<img", "<iframe", "@import", "url(", "src="):
        assert banned not in page.lower(), banned
    assert page.count("<svg") == 3
    assert len(re.findall(r'class="bar hotspot-bar"', page)) == min(12, len(report_doc["insights"]["hotspots"]))
    assert len(re.findall(r'class="bar lead-bar"', page)) == 8
    assert len(re.findall(r'class="bar deflection-bar', page)) == 2


def require_chromium() -> Any:
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        problem = "playwright is not installed (pip install playwright)"
        sync_playwright = None
    if problem is None and not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        problem = f"{CHROMIUM} not found (apt-get install chromium)"
    if problem:
        if os.environ.get("CI"):
            pytest.fail(f"the HTML report check needs Chromium: {problem}", pytrace=False)
        pytest.skip(problem)
    return sync_playwright


def test_html_charts_render_in_chromium(html_page: Path, report_doc: dict[str, Any]) -> None:
    sync_playwright = require_chromium()
    ins = report_doc["insights"]
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM if os.path.exists(CHROMIUM) else shutil.which("chromium"),
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],  # fmt: skip
        )
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            requests: list[str] = []
            page.on("request", lambda r: requests.append(r.url))
            page.goto(html_page.as_uri())
            page.wait_for_load_state("load")
            assert requests == [html_page.as_uri()]  # self-contained: nothing else fetched
            assert page.title().startswith("Friction report")
            bars = page.eval_on_selector_all(
                "svg rect.bar",
                """els => els.map(e => { const b = e.getBoundingClientRect();
                    return {cls: e.getAttribute('class'), value: parseFloat(e.dataset.value),
                            x: b.x, y: b.y, w: b.width, h: b.height}; })""",
            )
            spots = [b for b in bars if "hotspot-bar" in b["cls"]]
            lead = [b for b in bars if "lead-bar" in b["cls"]]
            defl = [b for b in bars if "deflection-bar" in b["cls"]]
            assert len(spots) == min(12, len(ins["hotspots"])) and len(lead) == 8 and len(defl) == 2
            for b in bars:  # every bar with a value is drawn, on the page
                if b["value"] > 0:
                    assert b["w"] > 0 and b["h"] > 0, b
                    assert b["x"] >= 0 and b["y"] >= 0, b
            # drawn to scale: hotspot bar lengths follow the users affected
            assert [b["value"] for b in spots] == [h["users"] for h in ins["hotspots"][:12]]
            widths = [b["w"] for b in spots]
            assert widths == sorted(widths, reverse=True)
            assert spots[0]["w"] / spots[1]["w"] == pytest.approx(spots[0]["value"] / spots[1]["value"], rel=0.02)
            counts = [b["value"] for b in lead]
            assert counts == [b["count"] for b in ins["lead_time"]["buckets"]]
            tallest = max(lead, key=lambda b: b["h"])
            assert tallest["value"] == max(counts)
            holdout, guided = defl
            d = ins["deflection"]
            assert holdout["value"] == pytest.approx(d["holdout"]["rate"], abs=1e-4)
            assert holdout["w"] / guided["w"] == pytest.approx(d["holdout"]["rate"] / d["guided"]["rate"], rel=0.02)
            interval = page.eval_on_selector("rect.deflection-interval", "e => e.getBoundingClientRect().width")
            assert interval > 10
            svgs = page.eval_on_selector_all("svg", "els => els.map(e => e.getBoundingClientRect().height)")
            assert len(svgs) == 3 and all(h > 50 for h in svgs)
            text = page.inner_text("body")
            assert "Where users struggle" in text and "Does guidance prevent tickets?" in text
            assert "95% CI" in text and "acct-acme" in text
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        finally:
            browser.close()
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000


def test_format_text_top(report_doc: dict[str, Any]) -> None:
    text = format_text(msgspec.convert(report_doc, ReportResult), top=3)
    hot = text[text.index("FRICTION HOTSPOTS") : text.index("LEAD TIME")]
    assert "... and" in hot and len([x for x in hot.splitlines() if re.match(r"\s+\d+\s", x)]) == 3


# --- Segment payloads ---------------------------------------------------------------------------------


def test_segment_mapping() -> None:
    from pyfriction import segment

    track = {"type": "track", "event": "Payment Failed", "anonymousId": "anon-1", "timestamp": "2023-11-14T23:13:20.5+01:00",
             "properties": {"status": 502, "step": "billing.card", "endpoint": "POST /pay"},
             "context": {"groupId": "acct-1", "page": {"path": "/billing/card"}}}  # fmt: skip
    assert segment.is_segment(track)
    assert segment.to_event(track) == {
        "user_id": "anon-1", "type": "Payment Failed", "ts": 1_700_000_000.5, "step": "billing.card",
        "account_id": "acct-1", "properties": track["properties"],
    }  # fmt: skip
    mapping = pyfriction.load_config({"segment": {"step": ["context.page.path"], "target": ["properties.endpoint"],
                                                  "account_id": []}}).segment  # fmt: skip
    mapped = segment.to_event(track, mapping)
    assert mapped is not None
    assert (mapped["step"], mapped["target"], "account_id" in mapped) == ("/billing/card", "POST /pay", False)
    page = {"type": "page", "name": "reports", "userId": 42, "timestamp": 1_700_000_000}
    assert segment.to_event(page) == {"user_id": "42", "type": "page", "ts": 1_700_000_000.0, "step": "reports"}
    assert segment.to_event({"type": "track", "userId": "u"}) is None  # no event name
    assert segment.to_event({"type": "group", "userId": "u", "groupId": "g"}) is None
    ident = {
        "type": "identify",
        "userId": "u1",
        "traits": {"plan": "pro"},
        "context": {"locale": "de-DE", "groupId": "a"},
    }
    assert segment.to_identify(ident) == ("u1", {"plan": "pro", "locale": "de-DE", "account_id": "a"})
    assert not segment.is_segment({"user_id": "u1", "type": "page"})
    canonical = {"user_id": "u1", "type": "form_error", "ts": 1_700_000_000.25, "step": "import.mapping",
                 "target": "#date-format", "account_id": "acct-1", "properties": {"status": 422}}  # fmt: skip
    back = segment.to_event(segment.from_event(canonical))
    assert back is not None
    assert {k: back[k] for k in ("user_id", "type", "ts", "step", "target", "account_id")} == {
        k: canonical[k] for k in ("user_id", "type", "ts", "step", "target", "account_id")}  # fmt: skip
    assert back["properties"]["status"] == 422


def test_segment_events_through_the_event_map(engine: str) -> None:
    """Your own track names reach the detectors through the config's event_map."""
    from pyfriction import segment

    t = pyfriction.Tracker({"event_map": {"Payment Failed": "api_error"}}, engine=engine)
    seen: list[pyfriction.Episode] = []
    t.on_friction(seen.append, sync=True)
    try:
        records = [{"type": "track", "event": "Payment Failed", "userId": "u1", "timestamp": 1_700_000_000 + i,
                    "properties": {"status": 500, "step": "billing.card", "target": "POST /pay"}} for i in range(3)]  # fmt: skip
        counts = segment.replay(records, t.observe, t.identify)
        assert (counts.events, counts.skipped) == (3, 0)
        assert len(seen) == 1 and seen[0].reasons[0].detector == "repeat_failure" and seen[0].step == "billing.card"
    finally:
        t.close()
