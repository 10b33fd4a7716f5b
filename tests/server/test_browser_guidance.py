"""Guidance on the screen that helps and never gets in the way (issue 19), in Debian's Chromium.

Pages of a small SaaS app of our own (tests/server/pages/: an import form with a date field, its
hint and error line, a Currency select, Save and Cancel, a fixed header, the app's own settings
<dialog>; a billing page with a Shadow DOM component) talk to a real sidecar running the bundled
browser config (pyfriction/data/browser.toml). Screenshots of the tooltip, the banner and the
modal at 1280 and 390 px wide go to .artifacts/screenshots/.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyfriction_server.script import _accepts

from .browser_util import (
    BROWSER_DIR,
    PageServer,
    axe_violations,
    bundled_config,
    iter_browser,
    missing,
    overlaps,
    rect,
    require_browser,
    screenshot,
)
from .sidecar_util import ADMIN_KEY, WRITE_KEY, ThreadServer

TOOLTIP = '[data-pyfriction-ui="tooltip"]'
BANNER = '[data-pyfriction-ui="banner"]'
MODAL = '[data-pyfriction-ui="modal"]'
#: A tooltip item as the sidecar sends it (body_html: the engine's safe Markdown rendering).
DATE_TIP = {"id": "import-date-format", "kind": "tooltip", "anchor": "#date-format", "step": "/import",
            "title": "Dates look like 2024-03-31", "body": "The importer reads dates as **YYYY-MM-DD**.",
            "body_html": "<p>The importer reads dates as <strong>YYYY-MM-DD</strong>.</p>", "url": "/help#dates"}  # fmt: skip
EXTRA = {
    "items": [{"id": "ghost-tip", "kind": "tooltip", "anchor": "#not-on-this-page", "title": "This anchor is gone"}],
    "rules": [{"step": "/import", "target": "#ghost", "detectors": ["rage_click", "dead_click"],
               "guidance": "ghost-tip"}],
}  # fmt: skip


@pytest.fixture(scope="module")
def site() -> Iterator[tuple[ThreadServer, PageServer]]:
    with ThreadServer(write_keys=[WRITE_KEY], admin_keys=[ADMIN_KEY], engine_config=bundled_config(**EXTRA),
                      cors_origins=["*"]) as sidecar, PageServer(sidecar.url) as pages:  # fmt: skip
        yield sidecar, pages


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from iter_browser(require_browser())


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        yield ctx
    finally:
        ctx.close()


def _open(ctx: Any, url: str, acks: list[tuple[str, str]] | None = None) -> Any:
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.errors = errors
    if acks is not None:

        def on_ack(route: Any) -> None:
            doc = json.loads(route.request.post_data or "{}")
            acks.append((doc.get("guidance_id"), doc.get("outcome")))
            route.continue_()

        page.route("**/v1/guidance/*/ack*", on_ack)
    page.goto(url)
    page.wait_for_function("window.pyfriction && window.pyfriction.version")
    return page


def _until(page: Any, predicate: Any, timeout: float = 10.0) -> None:
    """Wait for ``predicate()`` while Playwright runs: the pages' route handlers (which record
    acks and events) only run inside Playwright calls of the sync API."""
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        page.wait_for_timeout(50)
    raise AssertionError(f"condition not met within {timeout} s")


def _render(page: Any, item: dict[str, Any]) -> None:
    page.evaluate("g => window.pyfriction.render(g)", item)


def _metrics(sidecar: ThreadServer) -> str:
    return httpx.get(sidecar.url + "/metrics").text


def _item_metric(text: str, item: str, outcome: str) -> float:
    key = f'pyfriction_guidance_item_feedback_total{{item="{item}",outcome="{outcome}"}} '
    for line in text.splitlines():
        if line.startswith(key):
            return float(line.split()[-1])
    return 0.0


def _fail_saves(page: Any, n: int = 3) -> None:
    """Save is refused n times (422): an error burst on "POST /api/imports". Paced: three clicks
    within a second would be rage clicks on #save, another rule."""
    for _ in range(n):
        page.click("#save")
        page.wait_for_timeout(550)
    page.evaluate("window.pyfriction.flush()")


# -- 1. the build and how it is served ---------------------------------------------------------------


def test_committed_script_is_the_build_of_the_sources() -> None:
    node = shutil.which("node")
    if node is None or not os.path.isdir(os.path.join(BROWSER_DIR, "node_modules", "esbuild")):
        missing("node or browser/node_modules missing (bash .ci/browser.sh)")
    r = subprocess.run([node, "build.mjs", "--check"], cwd=BROWSER_DIR, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    with open(os.path.join(BROWSER_DIR, "package.json"), encoding="utf-8") as f:
        pkg = json.load(f)
    # exact versions only: a rebuild anywhere gives the same bytes
    for deps in (pkg["dependencies"], pkg["devDependencies"]):
        assert all(v[0].isdigit() for v in deps.values()), deps


def test_script_is_served_compressed_cached_and_versioned(site: tuple[ThreadServer, PageServer]) -> None:
    sidecar, _ = site
    plain = httpx.get(sidecar.url + "/v1/pyfriction.js", headers={"Accept-Encoding": "identity"})
    assert plain.status_code == 200 and "content-encoding" not in plain.headers
    assert plain.headers["cache-control"] == "public, max-age=300" and plain.headers["vary"] == "Accept-Encoding"
    body = plain.content
    gz = httpx.get(sidecar.url + "/v1/pyfriction.js", headers={"Accept-Encoding": "gzip"})
    assert gz.headers["content-encoding"] == "gzip" and gz.content == body  # httpx decodes it
    assert int(gz.headers["content-length"]) < len(body) / 2
    raw = httpx.Client().send(httpx.Request("GET", sidecar.url + "/v1/pyfriction.js",
                                            headers={"Accept-Encoding": "br"}), stream=True)  # fmt: skip
    assert raw.headers["content-encoding"] == "br" and int(raw.headers["content-length"]) < len(gzip.compress(body))
    raw.close()
    etag = plain.headers["etag"]
    assert httpx.get(sidecar.url + "/v1/pyfriction.js", headers={"If-None-Match": etag}).status_code == 304
    versioned = plain.headers["x-pyfriction-script"]
    v = httpx.get(sidecar.url + versioned)
    assert v.status_code == 200 and v.content == body
    assert v.headers["cache-control"] == "public, max-age=31536000, immutable"
    old = httpx.get(sidecar.url + "/v1/pyfriction.000000000000.js")
    assert old.status_code == 302 and old.headers["location"] == versioned


@given(st.lists(st.tuples(st.sampled_from(["gzip", "br", "deflate", "identity", "*", "GZIP"]),
                          st.one_of(st.none(), st.sampled_from(["0", "0.0", "0.5", "1", "x"])))))  # fmt: skip
def test_accept_encoding_parsing(parts: list[tuple[str, str | None]]) -> None:
    header = ", ".join(name if q is None else f"{name};q={q}" for name, q in parts)
    for coding in ("gzip", "br"):
        listed = [q for name, q in parts if name.lower() == coding]
        expected = bool(listed) and (listed[0] is None or (listed[0] != "x" and float(listed[0]) > 0))
        assert _accepts(header, coding) is expected, header


# -- 2. placement ---------------------------------------------------------------------------------------

PROTECTED = ["#date-format", "#date-hint", "#date-error", "#currency"]


def _check_tooltip_clear(page: Any, also: tuple[str, ...] = ()) -> dict[str, float]:
    box = rect(page, TOOLTIP)
    vw, vh = page.evaluate("[document.documentElement.clientWidth, document.documentElement.clientHeight]")
    assert box["left"] >= 0 and box["top"] >= 0 and box["right"] <= vw and box["bottom"] <= vh, box
    for sel in (*PROTECTED, *also):
        assert not overlaps(box, rect(page, sel)), (sel, box, rect(page, sel))
    return box


def test_tooltip_takes_the_free_side_and_follows_its_anchor(
    context: Any, site: tuple[ThreadServer, PageServer]
) -> None:
    _, pages = site
    page = _open(context, pages.origin + "/import?user=placement")
    _render(page, DATE_TIP)
    page.wait_for_selector(TOOLTIP, state="visible")
    page.wait_for_function(f"document.querySelector('{TOOLTIP}').classList.contains('pf-side-right')")
    box = _check_tooltip_clear(page, ("#save", "#cancel"))
    anchor = rect(page, "#date-format")
    assert box["left"] >= anchor["right"]  # the empty space to the right
    arrow = rect(page, TOOLTIP + " .pf-arrow")
    assert arrow["right"] > box["left"] - 1 and arrow["left"] < box["left"]  # on the side facing the anchor
    assert anchor["top"] - 10 <= (arrow["top"] + arrow["bottom"]) / 2 <= anchor["bottom"] + 10
    screenshot(page, "tooltip-1280.png")

    # a layout change by the app moves the field: the tooltip follows
    page.click("#shift")
    moved = rect(page, "#date-format")
    assert moved["top"] > anchor["top"]
    page.wait_for_function(
        f"""Math.abs(document.querySelector('{TOOLTIP}').getBoundingClientRect().top
                     - document.querySelector('#date-format').getBoundingClientRect().top) < 40"""
    )
    # scrolling: still next to the field
    page.mouse.wheel(0, 60)
    page.wait_for_function("window.scrollY > 0")
    page.wait_for_function(
        f"""Math.abs(document.querySelector('{TOOLTIP}').getBoundingClientRect().top
                     - document.querySelector('#date-format').getBoundingClientRect().top) < 40"""
    )
    page.evaluate("window.scrollTo(0, 0)")

    # 390 px: no room at the sides; it must cover neither the field, its hint and error, nor
    # the next control, nor Save and Cancel
    page.set_viewport_size({"width": 390, "height": 800})
    page.wait_for_function(f"!document.querySelector('{TOOLTIP}').classList.contains('pf-side-right')")
    page.wait_for_timeout(100)
    _check_tooltip_clear(page, ("#save", "#cancel"))
    screenshot(page, "tooltip-390.png")
    # a tap on Save lands on Save
    save = rect(page, "#save")
    hit = page.evaluate("([x, y]) => document.elementFromPoint(x, y).id", [(save["left"] + save["right"]) / 2,
                                                                            (save["top"] + save["bottom"]) / 2])  # fmt: skip
    assert hit == "save"
    assert page.errors == []


def test_tooltip_without_the_top_layer_inside_a_transformed_ancestor(
    context: Any, site: tuple[ThreadServer, PageServer]
) -> None:
    """A browser without popover (no top layer): the tooltip stays position: fixed after its
    anchor, and a transformed ancestor (a drawer's slide-in) is then its containing block."""
    _, pages = site
    page = context.new_page()
    page.add_init_script("delete HTMLElement.prototype.showPopover")
    page.goto(pages.origin + "/import?user=no-top-layer")
    page.wait_for_function("window.pyfriction && window.pyfriction.version")
    page.evaluate("document.querySelector('#import-form').style.transform = 'translate(40px, 30px)'")
    _render(page, DATE_TIP)
    page.wait_for_selector(TOOLTIP, state="visible")
    page.wait_for_function(f"document.querySelector('{TOOLTIP}').classList.contains('pf-side-right')")
    assert page.evaluate(f"document.querySelector('{TOOLTIP}').hasAttribute('popover')") is False
    box, anchor = rect(page, TOOLTIP), rect(page, "#date-format")
    assert anchor["right"] <= box["left"] <= anchor["right"] + 20, (box, anchor)
    assert anchor["top"] - 1 <= box["top"] <= anchor["top"] + 1, (box, anchor)
    _check_tooltip_clear(page, ("#save", "#cancel"))


def test_absent_anchor_becomes_a_banner_reported_as_anchor_missing(
    context: Any, site: tuple[ThreadServer, PageServer]
) -> None:
    sidecar, pages = site
    acks: list[tuple[str, str]] = []
    page = _open(context, pages.origin + "/import?user=ghost-user", acks)
    for _ in range(4):  # rage on plain text: the rule offers a tooltip whose anchor is not on this page
        page.click("#ghost", delay=10)
    page.evaluate("window.pyfriction.flush()")
    banner = page.wait_for_selector(BANNER + '[data-guidance-id="ghost-tip"]', state="visible", timeout=15_000)
    assert banner is not None and page.query_selector(TOOLTIP) is None
    _until(page, lambda: _item_metric(_metrics(sidecar), "ghost-tip", "anchor_missing") == 1)
    assert _item_metric(_metrics(sidecar), "ghost-tip", "shown") == 1
    assert ("ghost-tip", "anchor_missing") in acks
    stats = {i.id: i for i in sidecar.tracker.insights().items}
    assert stats["ghost-tip"].anchor_missing == 1 and stats["ghost-tip"].shown == 1


# -- 3. regions, queue, banners clear of the header ---------------------------------------------------


def _banner(i: str, priority: int = 0, **kw: Any) -> dict[str, Any]:
    return {"id": i, "kind": "banner", "title": f"Banner {i}", "body": "Something useful to know.", "priority": priority,
            **kw}  # fmt: skip


def test_one_banner_at_a_time_by_priority_below_the_fixed_header(
    context: Any, site: tuple[ThreadServer, PageServer]
) -> None:
    _, pages = site
    acks: list[tuple[str, str]] = []
    page = _open(context, pages.origin + "/import?user=queue", acks)
    _render(page, DATE_TIP)
    _render(page, _banner("first"))
    _render(page, _banner("low", 1))
    _render(page, _banner("high", 5))
    page.wait_for_selector(BANNER + '[data-guidance-id="first"]', state="visible")
    assert page.locator(BANNER).count() == 1  # the others wait; the tooltip has its own region
    assert page.locator(TOOLTIP).count() == 1
    header = rect(page, ".topbar")
    b = rect(page, BANNER)
    assert b["top"] >= header["bottom"], (b, header)
    assert violations(page) == []
    screenshot(page, "banner-1280.png")
    order = []
    for _ in range(3):
        el = page.wait_for_selector(BANNER, state="visible")
        order.append(el.get_attribute("data-guidance-id"))
        el.query_selector(".pf-close").click()
    assert order == ["first", "high", "low"]
    page.wait_for_selector(BANNER, state="detached")

    page.set_viewport_size({"width": 390, "height": 800})
    _render(page, _banner("narrow", url="/help"))
    page.wait_for_selector(BANNER, state="visible")
    b = rect(page, BANNER)
    assert b["top"] >= rect(page, ".topbar")["bottom"] and b["right"] <= 390 and b["left"] >= 0
    page.wait_for_timeout(100)
    # the regions share the screen: the tooltip keeps clear of the app's field, hint, error and
    # next control; the banner gives way (to the bottom) rather than overlap it
    b = rect(page, BANNER)
    assert not overlaps(b, rect(page, TOOLTIP))
    _check_tooltip_clear(page, ("#save", "#cancel"))
    screenshot(page, "banner-390.png")
    # feedback: its link is "clicked"; window.pyfriction.complete(id) closes it as "completed"
    page.eval_on_selector(BANNER + " .pf-link", "a => a.addEventListener('click', e => e.preventDefault())")
    page.click(BANNER + " .pf-link")
    page.evaluate("window.pyfriction.complete('narrow')")
    page.wait_for_selector(BANNER, state="detached")
    _until(page, lambda: ("narrow", "completed") in acks)
    assert [o for i, o in acks if i == "narrow"] == ["shown", "clicked", "completed"]
    assert [o for i, o in acks if i in ("first", "high", "low")].count("dismissed") == 3


def test_banner_region_container_and_offset_are_configurable(
    context: Any, site: tuple[ThreadServer, PageServer]
) -> None:
    _, pages = site
    page = _open(context, pages.origin + "/import?user=offset&banner-offset=200")
    _render(page, _banner("at-200"))
    page.wait_for_selector(BANNER, state="visible")
    assert abs(rect(page, BANNER)["top"] - 200) <= 1
    page = _open(context, pages.origin + "/import?user=container&banner-container=%23notices")
    _render(page, _banner("inline"))
    page.wait_for_selector("#notices " + BANNER, state="visible")


# -- 4. accessibility (WAI-ARIA APG) ---------------------------------------------------------------------


def _contrast(c1: str, c2: str) -> float:
    def lum(c: str) -> float:
        parts = [float(x) for x in c[c.index("(") + 1 : c.index(")")].split(",")[:3]]
        lin = [(v / 255) / 12.92 if v / 255 <= 0.03928 else (((v / 255) + 0.055) / 1.055) ** 2.4 for v in parts]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    a, b = sorted((lum(c1), lum(c2)), reverse=True)
    return (a + 0.05) / (b + 0.05)


def test_tooltip_keyboard_focus_escape_and_describedby(context: Any, site: tuple[ThreadServer, PageServer]) -> None:
    _, pages = site
    acks: list[tuple[str, str]] = []
    page = _open(context, pages.origin + "/import?user=a11y", acks)
    _render(page, DATE_TIP)
    tip = page.wait_for_selector(TOOLTIP, state="visible")
    assert tip is not None
    assert tip.get_attribute("role") == "dialog" and tip.get_attribute("aria-modal") is None
    assert page.evaluate("document.activeElement === document.body")  # it does not take focus
    described = page.get_attribute("#date-format", "aria-describedby") or ""
    ids = described.split()
    assert ids[0] == "date-hint" and len(ids) == 3  # extended, the app's hint first
    assert page.text_content("#" + ids[1]) == DATE_TIP["title"]
    assert violations(page) == []

    # Tab order: the field, then the tooltip's controls, then the next control of the form
    page.focus("#date-format")
    page.keyboard.press("Tab")
    assert page.evaluate(f"document.querySelector('{TOOLTIP}').contains(document.activeElement)")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "currency"

    # the focus ring of its controls: 3:1 against the tooltip
    page.keyboard.press("Shift+Tab")
    ring = page.evaluate(
        f"""() => {{ const a = document.activeElement, s = getComputedStyle(a);
            return [s.outlineStyle, parseFloat(s.outlineWidth), s.outlineColor,
                    getComputedStyle(document.querySelector('{TOOLTIP}')).backgroundColor,
                    a.classList.contains('pf-close')]; }}"""
    )
    assert ring[0] == "solid" and ring[1] >= 2 and ring[4], ring
    assert _contrast(ring[2], ring[3]) >= 3.0, ring
    screenshot(page, "tooltip-focus-1280.png")

    # Escape for the app's own dialog is the app's: the tooltip stays, nothing is dismissed
    page.click("#open-settings")
    page.wait_for_selector("#settings[open]")
    page.keyboard.press("Escape")
    page.wait_for_selector("#settings", state="hidden")
    assert page.locator(TOOLTIP).count() == 1
    # Escape inside the tooltip closes it; focus goes back to its anchor; describedby restored
    page.focus(TOOLTIP + " .pf-close")
    page.keyboard.press("Escape")
    page.wait_for_selector(TOOLTIP, state="detached")
    assert page.evaluate("document.activeElement.id") == "date-format"
    assert page.get_attribute("#date-format", "aria-describedby") == "date-hint"
    assert not page.query_selector(f"#{ids[1]}")
    _until(page, lambda: ("import-date-format", "dismissed") in acks)
    assert acks.count(("import-date-format", "dismissed")) == 1

    # Escape on the anchor hides it without a dismissal; no describedby at first: none after
    page.evaluate("document.querySelector('#currency').removeAttribute('aria-describedby')")
    _render(page, {**DATE_TIP, "id": "currency-tip", "anchor": "#currency"})
    page.wait_for_selector(TOOLTIP, state="visible")
    page.focus("#currency")
    page.keyboard.press("Escape")
    page.wait_for_selector(TOOLTIP, state="detached")
    assert page.evaluate("document.querySelector('#currency').hasAttribute('aria-describedby')") is False
    assert page.evaluate("document.activeElement.id") == "currency"
    page.wait_for_timeout(200)
    assert ("currency-tip", "dismissed") not in acks
    assert page.errors == []


def violations(page: Any) -> list[dict[str, Any]]:
    return axe_violations(page)


def test_modal_traps_focus_behind_a_backdrop_and_gives_it_back(
    context: Any, site: tuple[ThreadServer, PageServer]
) -> None:
    _, pages = site
    acks: list[tuple[str, str]] = []
    page = _open(context, pages.origin + "/import?user=modal", acks)
    page.focus("#currency")
    _render(page, {"id": "welcome", "kind": "modal", "title": "Importing made easy",
                   "body": "Three steps: pick the file, check the columns, import.", "url": "/help"})  # fmt: skip
    page.wait_for_selector(MODAL, state="visible")
    assert page.evaluate(f"document.querySelector('{MODAL}').matches(':modal')")
    assert page.evaluate(f"document.querySelector('{MODAL}').contains(document.activeElement)")
    backdrop = page.evaluate(f"getComputedStyle(document.querySelector('{MODAL}'), '::backdrop').backgroundColor")
    assert backdrop not in ("rgba(0, 0, 0, 0)", "transparent"), backdrop
    # the page behind is inert: no focus, no clicks
    page.evaluate("document.querySelector('#save').focus()")
    assert page.evaluate(f"document.querySelector('{MODAL}').contains(document.activeElement)")
    save = rect(page, "#save")
    assert page.evaluate(
        "([x, y]) => document.elementFromPoint(x, y).id !== 'save'", [save["left"] + 5, save["top"] + 5]
    )
    for _ in range(5):  # the focus trap
        page.keyboard.press("Tab")
        assert page.evaluate(f"document.querySelector('{MODAL}').contains(document.activeElement)")
    for _ in range(3):
        page.keyboard.press("Shift+Tab")
        assert page.evaluate(f"document.querySelector('{MODAL}').contains(document.activeElement)")
    assert violations(page) == []
    screenshot(page, "modal-1280.png")
    page.set_viewport_size({"width": 390, "height": 800})
    page.wait_for_timeout(100)
    m = rect(page, MODAL)
    assert m["left"] >= 0 and m["right"] <= 390
    screenshot(page, "modal-390.png")
    # other items wait while the modal is open
    _render(page, _banner("after-modal"))
    page.wait_for_timeout(200)
    assert page.locator(BANNER).count() == 0
    page.keyboard.press("Escape")
    page.wait_for_selector(MODAL, state="detached")
    assert page.evaluate("document.activeElement.id") == "currency"
    page.wait_for_selector(BANNER, state="visible")
    _until(page, lambda: ("welcome", "dismissed") in acks)


def test_reduced_motion_and_themes(browser: Any, site: tuple[ThreadServer, PageServer]) -> None:
    _, pages = site
    for motion, scheme, expected_anim, expected_bg in (
        ("reduce", "light", "none", "rgb(255, 255, 255)"),
        ("no-preference", "dark", "pf-in", "rgb(31, 41, 55)"),
    ):
        ctx = browser.new_context(reduced_motion=motion, color_scheme=scheme)
        try:
            page = _open(ctx, pages.origin + "/import?user=motion")
            _render(page, DATE_TIP)
            page.wait_for_selector(TOOLTIP, state="visible")
            style = page.evaluate(
                f"(s => [s.animationName, s.backgroundColor])(getComputedStyle(document.querySelector('{TOOLTIP}')))"
            )
            assert style == [expected_anim, expected_bg]
            if scheme == "dark":
                assert violations(page) == []
                screenshot(page, "tooltip-dark-1280.png")
        finally:
            ctx.close()


def test_theming_under_csp_rtl_and_locale(browser: Any, site: tuple[ThreadServer, PageServer]) -> None:
    sidecar, pages = site
    ctx = browser.new_context(locale="de-DE", viewport={"width": 1280, "height": 800})
    try:
        page = ctx.new_page()
        page.add_init_script(
            "window.__csp = []; document.addEventListener('securitypolicyviolation', e => "
            "window.__csp.push(e.violatedDirective + ' ' + e.blockedURI))"
        )
        page.goto(pages.origin + "/import?user=csp-de&csp=1&bodyclass=brand")
        page.wait_for_function("window.pyfriction && window.pyfriction.version")
        _render(page, DATE_TIP)
        page.wait_for_selector(TOOLTIP, state="visible")
        page.wait_for_function(f"document.querySelector('{TOOLTIP}').classList.contains('pf-side-right')")
        _check_tooltip_clear(page)
        colours = page.evaluate(
            f"(s => [s.backgroundColor, s.color])(getComputedStyle(document.querySelector('{TOOLTIP}')))"
        )
        assert colours == ["rgb(1, 2, 3)", "rgb(250, 250, 250)"]  # the app's custom properties
        assert page.evaluate("window.__csp") == []
        assert page.evaluate(f"document.querySelector('{TOOLTIP}').hasAttribute('style')")  # CSSOM position only
        assert page.evaluate("document.querySelectorAll('style').length") == 0
        assert page.get_attribute(TOOLTIP + " .pf-close", "aria-label") == "Schließen"
        # the browser's locale reaches the engine (the backend did not give one)
        _until(page, lambda: sidecar.tracker.traits("csp-de").get("locale") == "de-DE")
    finally:
        ctx.close()
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = _open(ctx, pages.origin + "/import?user=rtl&dir=rtl")
        _render(page, DATE_TIP)
        page.wait_for_selector(TOOLTIP, state="visible")
        page.wait_for_function(f"document.querySelector('{TOOLTIP}').classList.contains('pf-side-left')")
        _check_tooltip_clear(page)
        assert page.get_attribute(TOOLTIP, "dir") == "rtl"
        assert rect(page, TOOLTIP)["right"] <= rect(page, "#date-format")["left"]
        screenshot(page, "tooltip-rtl-1280.png")
    finally:
        ctx.close()


# -- 5. delivery ---------------------------------------------------------------------------------------------


def test_guidance_shows_in_the_tab_of_the_struggle_over_broadcast(
    context: Any, site: tuple[ThreadServer, PageServer]
) -> None:
    sidecar, pages = site
    user = "two-tabs"
    billing = _open(context, pages.origin + f"/billing?user={user}")
    acks: list[str] = []

    def on_ack(route: Any) -> None:
        acks.append(json.loads(route.request.post_data or "{}")["outcome"])
        route.continue_()

    # The import tab cannot read the stream at all: only the billing tab gets the item.
    importer = context.new_page()
    importer.route("**/stream*", lambda route: route.abort())
    importer.route("**/v1/guidance/*/ack*", on_ack)
    importer.goto(pages.origin + f"/import?user={user}")
    importer.wait_for_function("window.pyfriction && window.pyfriction.version")
    importer.bring_to_front()
    _fail_saves(importer)
    importer.wait_for_selector(TOOLTIP + '[data-guidance-id="import-date-format"]', state="visible", timeout=15_000)
    assert billing.locator("[data-pyfriction-ui]").count() == 0
    _until(importer, lambda: "shown" in acks)
    assert _item_metric(_metrics(sidecar), "import-date-format", "shown") >= 1
    # shown once: the mailbox no longer holds it, a new tab on /import does not show it again
    again = _open(context, pages.origin + f"/import?user={user}")
    again.wait_for_timeout(500)
    assert again.locator(TOOLTIP).count() == 0

    # completion: the app marks its success element; the engine hears "completed" for the item
    importer.bring_to_front()
    importer.click("#save-ok")
    _until(importer, lambda: _item_metric(_metrics(sidecar), "import-date-format", "completed") == 1)
    importer.wait_for_selector(TOOLTIP, state="detached")
    assert "completed" in acks


def test_an_item_read_by_a_tab_that_closed_is_shown_by_the_next_one(
    browser: Any, site: tuple[ThreadServer, PageServer]
) -> None:
    """Delivered when shown, not when read: a tab's stream reads the item (for another page),
    the tab closes before showing it; the user's next tab (here a fresh context: no storage or
    channel shared with the first) gets it from its own stream and shows it. Once shown, it is
    gone for every later stream."""
    sidecar, pages = site
    user = "closed-tab"
    item = "import-date-format"

    def delivered() -> int:
        return next(i.delivered for i in sidecar.tracker.insights().items if i.id == item)

    before = delivered()
    first = browser.new_context(viewport={"width": 1280, "height": 800})
    billing = _open(first, pages.origin + f"/billing?user={user}")
    # the struggle on /import (as the import page reports it): Save refused three times
    t0 = time.time() - 3
    events = [
        {"id": f"{user}-{kind}-{i}", "user_id": user, "type": kind, "ts": t0 + i * 0.55, "step": "/import",
         **({"target": "#save"} if kind == "click" else {"target": "POST /api/imports", "properties": {"status": 422}})}
        for i in range(3) for kind in ("click", "api_error")
    ]  # fmt: skip
    r = httpx.post(sidecar.url + "/v1/events", json={"writeKey": WRITE_KEY, "sent_at": time.time(), "events": events})
    assert r.status_code == 200
    _until(billing, lambda: delivered() == before + 1)  # the billing tab's stream read it ...
    billing.wait_for_timeout(300)
    assert billing.locator("[data-pyfriction-ui]").count() == 0  # ... and, not on /import, did not show it
    first.close()

    second = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        acks: list[tuple[str, str]] = []
        page = _open(second, pages.origin + f"/import?user={user}", acks)
        page.wait_for_selector(TOOLTIP + f'[data-guidance-id="{item}"]', state="visible", timeout=15_000)
        _until(page, lambda: (item, "shown") in acks)
        _until(page, lambda: _item_metric(_metrics(sidecar), item, "shown") >= 1)
        # shown: a later tab, even one that shares nothing with this one, does not get it again
        third = _open(browser.new_context(), pages.origin + f"/import?user={user}")
        third.wait_for_timeout(1000)
        assert third.locator(TOOLTIP).count() == 0
        third.context.close()
    finally:
        second.close()


def test_stream_reconnects_after_503_and_network_errors(context: Any, site: tuple[ThreadServer, PageServer]) -> None:
    sidecar, pages = site
    attempts: list[str] = []

    def flaky(route: Any) -> None:
        attempts.append(route.request.url)
        if len(attempts) == 1:
            route.abort("connectionreset")
        elif len(attempts) <= 3:
            route.fulfill(status=503, body='{"error": "busy"}', headers={"Retry-After": "1"})
        else:
            route.fallback()

    page = context.new_page()
    page.route("**/stream*", flaky)
    page.goto(pages.origin + "/import?user=flaky&retry=100")
    page.wait_for_function("window.pyfriction && window.pyfriction.version")
    _until(page, lambda: len(attempts) >= 4, timeout=15)
    _fail_saves(page)
    page.wait_for_selector(TOOLTIP, state="visible", timeout=15_000)
    assert _item_metric(_metrics(sidecar), "import-date-format", "shown") >= 1


def test_shadow_dom_targets_anchors_and_selection(context: Any, site: tuple[ThreadServer, PageServer]) -> None:
    sidecar, pages = site
    sent: list[dict[str, Any]] = []

    def capture(route: Any) -> None:
        sent.extend(json.loads(route.request.post_data or "{}").get("events", []))
        route.continue_()

    page = context.new_page()
    page.route("**/v1/events", capture)
    page.goto(pages.origin + "/billing?user=shadow-user&dead-click-ms=300")
    page.wait_for_function("window.pyfriction && window.pyfriction.version")
    page.click("#stepper >> #inc")  # Playwright pierces the open shadow root
    page.wait_for_timeout(400)
    # selecting text with a triple click, then clicking again: not rage
    for _ in range(2):
        page.click("#text", click_count=3)
    # a press, a scroll (touch-style), a release: the click that ends a scroll is marked too
    box = rect(page, "#text")
    page.mouse.move(box["left"] + 20, box["top"] + 5)
    page.mouse.down()
    page.evaluate("window.scrollBy(0, 40)")
    page.wait_for_function("window.scrollY >= 40")
    page.wait_for_timeout(50)
    page.mouse.up()
    page.wait_for_timeout(50)
    page.evaluate("window.pyfriction.flush()")
    _until(page, lambda: any(e["type"] == "dead_click" for e in sent))
    _until(page, lambda: any(e.get("properties", {}).get("selection") == "scroll" for e in sent))
    clicks = [e for e in sent if e["type"] == "click"]
    assert clicks[0]["target"] == "#stepper >>> #inc"
    assert any(e["type"] == "dead_click" and e["target"] == "#stepper >>> #inc" for e in sent)
    selection = [e for e in clicks if e["target"] == "#text"]
    # two triple clicks (6 clicks): all but the first one selected text; the 7th ended a scroll
    assert len(selection) == 7 and selection[6]["properties"]["selection"] == "scroll"
    assert all(e.get("properties", {}).get("selection") == "text" for e in selection[1:6])
    assert not any(e["type"] == "dead_click" and e["target"] == "#text" for e in sent)
    _until(page, lambda: sidecar.tracker.stats().events > 0)
    state = httpx.get(f"{sidecar.url}/v1/users/shadow-user", headers={"Authorization": f"Bearer {ADMIN_KEY}"}).json()
    assert state["episodes"] == 0

    # an anchor inside the open shadow root: the tooltip sits next to it, styled, described
    _render(page, {**DATE_TIP, "id": "seats-tip", "anchor": "#stepper >>> #qty", "step": "/billing"})
    page.wait_for_selector("#stepper >> " + TOOLTIP, state="visible")
    box = rect(page, "#stepper >>> " + TOOLTIP)
    for sel in ("#stepper >>> #qty", "#stepper >>> #inc"):
        assert not overlaps(box, rect(page, sel)), sel
    assert not overlaps(box, rect(page, "#stepper >>> #qty-hint", text=True))
    assert page.evaluate(
        "document.querySelector('#stepper').shadowRoot.querySelector('#qty').getAttribute('aria-describedby')"
    ).startswith("qty-hint ")
    bg = page.evaluate(
        f"getComputedStyle(document.querySelector('#stepper').shadowRoot.querySelector('{TOOLTIP}')).backgroundColor"
    )
    assert bg == "rgb(255, 255, 255)"


# -- 6. cost ------------------------------------------------------------------------------------------------


def test_no_page_wide_observer_while_the_app_works(context: Any, site: tuple[ThreadServer, PageServer]) -> None:
    _, pages = site
    page = context.new_page()
    page.add_init_script(
        # counts the observers pyfriction.js starts (not Playwright's own injected script's)
        r"""window.__observing = 0;
           const observe = MutationObserver.prototype.observe, disconnect = MutationObserver.prototype.disconnect;
           const ours = () => /pyfriction\.js/.test(new Error().stack);
           MutationObserver.prototype.observe = function () {
             if (ours()) { this.__pf = true; window.__observing++; }
             return observe.apply(this, arguments); };
           MutationObserver.prototype.disconnect = function () {
             if (this.__pf) { this.__pf = false; window.__observing--; }
             return disconnect.apply(this, arguments); };"""
    )
    page.goto(pages.origin + "/billing?user=cost")
    page.wait_for_function("window.pyfriction && window.pyfriction.version")
    page.evaluate("for (let i = 0; i < 200; i++) document.body.appendChild(document.createElement('div'))")
    assert page.evaluate("window.__observing") == 0
    page.click("#text")  # a click on something inert: observed for the dead-click window only
    assert page.evaluate("window.__observing") == 1
    page.evaluate("document.body.appendChild(document.createElement('div'))")
    page.wait_for_function("window.__observing === 0", timeout=3000)
    size = len(gzip.compress(httpx.get(site[0].url + "/v1/pyfriction.js").content, 9))
    assert size <= 10 * 1024, size  # see also test_script_size.py
