// Guidance on the screen: tooltips placed with Floating UI next to their anchor, banners in a
// region clear of the app's fixed header, modals as native <dialog>s. One item at a time per
// region (tooltip, banner, modal); the others wait in a queue ordered by priority.
//
// Accessibility follows the WAI-ARIA Authoring Practices: a tooltip is a non-modal dialog placed
// right after its anchor in the DOM (so it is next in Tab order), it extends the anchor's
// aria-describedby (restored exactly when it closes) and never takes focus by itself; Escape
// closes it only when focus is in it or on its anchor; focus returns to the anchor. The modal
// traps focus, has a backdrop, makes the page behind inert (showModal) and gives focus back.
//
// Size: the script must stay under 10 KB gzipped, so Floating UI's platform-agnostic core does the
// placing (computePosition with shift and arrow) on a small platform: a tooltip is `position:
// fixed` in the top layer (popover), its containing block and clipping area are the viewport; the
// gap to the anchor is the anchor's rect grown by GAP across the side being tried (what the offset
// middleware would do). `follow` stands in for autoUpdate (@floating-ui/dom alone is 6 KB gzipped).
// Properties starting with "_" are internal: the build renames them (esbuild mangleProps).
import { arrow, computePosition, shift } from "@floating-ui/core";
import { adopt } from "./style.js";

export const UI = "data-pyfriction-ui";
const FOCUSABLE =
  ":is(a[href],button,input:not([type=hidden]),select,textarea,summary,[tabindex],[contenteditable]):not(:disabled,[tabindex='-1'],[contenteditable=false])";
const KIND_RANK = { modal: 3, tooltip: 2, banner: 1 };
const GAP = 12; // px between a tooltip and its anchor (the arrow sits in it)
const doc = document;
const html = doc.documentElement;
let seq = 0;
let opts;
const regions = { modal: { _q: [] }, tooltip: { _q: [] }, banner: { _q: [] } };
const known = {}; // guidance id -> true once offered to the UI (never shown twice by one page)
let bannerHost = null;

const make = (tag, cls, parent, text) => {
  const el = doc.createElement(tag);
  if (cls) el.className = cls;
  if (text != null) el.textContent = text;
  if (parent) parent.appendChild(el);
  return el;
};
const attr = (el, name, value) => el.setAttribute(name, value);
const classes = (el) => el.classList;
const popoverOpen = (el) => el.matches(":popover-open");
const visible = (el) => {
  const r = el.getBoundingClientRect();
  return r.width > 0 || r.height > 0;
};
/** Area of the intersection of two client rects. */
const overlap = (a, b) => {
  const w = Math.min(a.right, b.right) - Math.max(a.left, b.left);
  const h = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
  return w > 0 && h > 0 ? w * h : 0;
};
const add = (list, el) => el && list.indexOf(el) < 0 && list.push(el);

/** Deep active element (through open shadow roots). */
function activeElement() {
  let a = doc.activeElement;
  while (a && a.shadowRoot && a.shadowRoot.activeElement) a = a.shadowRoot.activeElement;
  return a;
}

/** Find an element by selector in the document or any open shadow root; `a >>> b` pierces a host. */
export function findAnchor(selector) {
  let found;
  try {
    for (const part of String(selector).split(">>>")) {
      const root = found ? found.shadowRoot : doc;
      found = root && (root.querySelector(part) || deepQuery(root, part));
      if (!found) return null;
    }
  } catch (e) {
    return null; // an invalid selector is an absent anchor
  }
  return visible(found) ? found : null;
}

// Only run when an anchor is looked up (not on the hot path): open shadow roots below `root`.
function deepQuery(root, sel) {
  for (const el of root.querySelectorAll("*")) {
    const hit = el.shadowRoot && (el.shadowRoot.querySelector(sel) || deepQuery(el.shadowRoot, sel));
    if (hit) return hit;
  }
  return null;
}

/** Set up the UI. `o`: {_words: [dismiss, more, help], _dir, _theme, _container, _offset, _ack(id, outcome)}. */
export function init(o) {
  opts = o;
  adopt(doc);
  // Capture phase: the guidance decides first whether an Escape is meant for it, and only then
  // stops it, so the app's own dialogs keep their Escape.
  doc.addEventListener(
    "keydown",
    (e) => {
      if (e.key !== "Escape" || e.defaultPrevented) return;
      const a = activeElement();
      for (const it of [regions.tooltip._cur, regions.banner._cur]) {
        if (it && it._box.contains(a)) {
          e.preventDefault();
          e.stopPropagation();
          return close(it, "dismissed");
        }
        // hidden, not dismissed: the user may have meant the field's own Escape
        if (it && a === it._anchor) return close(it);
      }
    },
    true,
  );
}

/** Offer an item to the UI: resolved, queued in its region, shown when the region is free. */
export function offer(g, tries = 0) {
  if (!g || !g.id || known[g.id]) return;
  const tip = g.kind === "tooltip" && g.anchor;
  // A page that renders late: look again a few times before giving up on the anchor.
  if (tip && !findAnchor(g.anchor) && tries < 3) return setTimeout(() => offer(g, tries + 1), 150 << tries);
  known[g.id] = 1;
  const q = regions[g.kind === "modal" ? "modal" : tip && findAnchor(g.anchor) ? "tooltip" : "banner"]._q;
  q.push(g);
  q.sort(
    (a, b) =>
      (b.priority || 0) - (a.priority || 0) ||
      (KIND_RANK[b.kind] || 0) - (KIND_RANK[a.kind] || 0) ||
      (a.created_at || 0) - (b.created_at || 0),
  );
  pump();
}

/** Has this page seen the item? */
export const has = (id) => !!known[id];

function pump() {
  for (const name in regions) {
    const r = regions[name];
    // While a modal is open the page behind is inert: nothing else appears until it closes.
    while (r._q.length && !r._cur && !regions.modal._cur) {
      const g = r._q.shift();
      if (g.expires_at && g.expires_at * 1000 < Date.now()) continue;
      const anchor = name === "tooltip" && findAnchor(g.anchor);
      if (name === "modal") showModal(g);
      else if (anchor) showTooltip(g, anchor);
      else showBanner(g, g.kind === "tooltip");
    }
  }
}

// -- building -------------------------------------------------------------------------------------
function safeUrl(url) {
  try {
    const u = new URL(url, location.href);
    return /^https?:$/.test(u.protocol) ? u.href : null;
  } catch (e) {
    return null;
  }
}

function build(g, kind, region, tag) {
  const [dismiss, more, help] = opts._words;
  let theme = opts._theme;
  if (theme !== "dark" && theme !== "light") theme = matchMedia("(prefers-color-scheme:dark)").matches ? "dark" : "light";
  const box = make(tag || "div", `pf-guidance pf-${kind} pf-${theme}`);
  const id = "pf-" + ++seq;
  const ids = [];
  const link = (text, parent) => {
    const a = make("a", "pf-link", parent, text);
    a.href = href;
    return a;
  };
  attr(box, UI, kind === "link-item" ? "link" : kind);
  attr(box, "data-guidance-id", g.id);
  attr(box, "data-pyfriction-guidance", g.id);
  attr(box, "dir", opts._dir);
  if (g.locale) attr(box, "lang", g.locale);
  const href = g.url && safeUrl(g.url);
  if (g.kind === "link" && href) {
    attr(box, "aria-label", help);
    link(g.title, box).id = id;
  } else {
    make("strong", "pf-title", box, g.title || help).id = id;
    attr(box, "aria-labelledby", id);
    if (g.body) {
      const b = make("div", "pf-body", box);
      b.id = id + "b";
      ids.push(b.id);
      // body_html: the sidecar renders the body's safe Markdown subset (everything escaped first)
      if (g.body_html) b.innerHTML = g.body_html;
      else b.textContent = g.body;
    }
    if (href) link(more, make("div", "pf-actions", box));
  }
  ids.unshift(id);
  const x = make("button", "pf-close", box, "\u00d7");
  x.type = "button";
  attr(x, "aria-label", dismiss);
  const it = { _g: g, _box: box, _ids: ids, _region: region };
  box.addEventListener("click", (e) => {
    if (e.target === x) close(it, "dismissed");
    else if (e.target.closest("a[href]")) opts._ack(g.id, "clicked");
  });
  return it;
}

// The top layer: above the app's stacking contexts and out of its overflow clipping, while
// staying where it is in the DOM (and so in Tab order).
function popover(el) {
  try {
    attr(el, "popover", "manual");
    el.showPopover();
  } catch (e) {
    el.removeAttribute("popover");
  }
}

function shown(it, region) {
  regions[region]._cur = it;
  opts._ack(it._g.id, "shown");
}

// -- tooltip --------------------------------------------------------------------------------------
/** What a tooltip must not cover: the anchor, its hint and error (aria-describedby and
 * aria-errormessage targets, the element right after it) and the next focusable control; its
 * label last (covered only when every side covers something: it then costs the least). */
function protectedElements(anchor) {
  const root = anchor.getRootNode();
  const out = [anchor];
  const own = (el) => {
    let n = el.nextElementSibling;
    while (n && n.hasAttribute(UI)) n = n.nextElementSibling;
    return n;
  };
  for (const id of ((anchor.getAttribute("aria-describedby") || "") + " " + (anchor.getAttribute("aria-errormessage") || "")).split(/\s+/))
    add(out, id && root.getElementById(id));
  let el = anchor;
  while (!own(el) && el.parentElement && el.parentElement !== doc.body) el = el.parentElement;
  add(out, own(el));
  for (const f of root.querySelectorAll(FOCUSABLE))
    if (!anchor.contains(f) && !f.closest(`[${UI}]`) && anchor.compareDocumentPosition(f) & 4 && visible(f)) {
      add(out, f);
      break;
    }
  for (const l of anchor.labels || []) add(out, l);
  return out;
}

function showTooltip(g, anchor) {
  const root = anchor.getRootNode();
  if (root !== doc) adopt(root);
  const it = build(g, "tooltip", "tooltip");
  const box = it._box;
  attr(box, "role", "dialog");
  it._anchor = anchor;
  it._protect = protectedElements(anchor);
  it._arrow = make("div", "pf-arrow");
  attr(it._arrow, "aria-hidden", "true");
  box.prepend(it._arrow);
  // Right after the anchor in the DOM: next in Tab order. Not inside a label, link or button
  // (a click in the tooltip would activate them).
  ((anchor.parentElement && anchor.parentElement.closest("label,a,button,summary")) || anchor).after(box);
  popover(box);
  // aria-describedby extended, and restored exactly when it closes
  const orig = anchor.getAttribute("aria-describedby");
  const set = (orig ? orig + " " : "") + it._ids.join(" ");
  attr(anchor, "aria-describedby", set);
  it._restore = () => {
    const cur = anchor.getAttribute("aria-describedby");
    // The app changed it meanwhile: take out only our ids.
    const left = cur === set ? orig : cur && cur.split(/\s+/).filter((t) => t && it._ids.indexOf(t) < 0).join(" ");
    if (left) attr(anchor, "aria-describedby", left);
    else anchor.removeAttribute("aria-describedby");
  };
  it._stop = follow(anchor, box, () => place(it));
  shown(it, "tooltip");
}

/** Call `update` when the anchor or the tooltip may have moved: scrolling anywhere, a resize of
 * the window, of the tooltip, of the anchor or of any of its ancestors (content inserted above
 * it grows them). Only while a tooltip is on screen. */
function follow(anchor, box, update) {
  const ro = new ResizeObserver(update);
  const cap = { capture: true, passive: true };
  const roots = new Set([doc, anchor.getRootNode()]);
  for (let e = anchor; e; e = e.parentElement || e.getRootNode().host) ro.observe(e);
  ro.observe(box);
  for (const t of roots) t.addEventListener("scroll", update, cap);
  addEventListener("resize", update);
  return () => {
    ro.disconnect();
    for (const t of roots) t.removeEventListener("scroll", update, cap);
    removeEventListener("resize", update);
  };
}

// What an element shows: for a block of text (a hint, an error line, a wrapper around the next
// control) the extent of its contents, not the full width of the block.
function contentRect(el) {
  if (!el.matches(FOCUSABLE) && el.firstChild) {
    const range = doc.createRange();
    range.selectNodeContents(el);
    const r = range.getBoundingClientRect();
    if (r.width || r.height) return r;
  }
  return el.getBoundingClientRect();
}

// Floating UI's platform for a `position: fixed` element in the top layer. The reference is the
// anchor grown by GAP across the side being tried (`across`: left/right 1, top/bottom 0).
let across;
const reference = (el) => {
  const r = el.getBoundingClientRect();
  return { x: r.left - GAP * across, y: r.top - GAP * !across, width: r.width + 2 * GAP * across, height: r.height + 2 * GAP * !across };
};
const size = (el) => ({ width: el.offsetWidth, height: el.offsetHeight });
const platform = {
  getElementRects: (e) => ({ reference: reference(e.reference), floating: { x: 0, y: 0, ...size(e.floating) } }),
  getDimensions: size,
  getClippingRect: () => ({ x: 0, y: 0, width: html.clientWidth, height: html.clientHeight }),
  isRTL: (el) => getComputedStyle(el).direction === "rtl", // "-start" is the right edge
};

/** Place a tooltip: the first side (right, left, below, above; mirrored in RTL) on which it is
 * inside the viewport and covers none of the protected elements; when every side collides, the
 * one that covers least, and when none fits the viewport, the one that sticks out least (shift
 * keeps it inside along the side). Calls while one runs coalesce into one more run. */
async function place(it) {
  if (it._busy) return (it._again = 1);
  it._busy = 1;
  try {
    do {
      it._again = 0;
      if (regions.tooltip._cur === it) await placeOnce(it);
    } while (it._again);
  } finally {
    it._busy = 0;
  }
}

async function placeOnce(it) {
  const { _anchor: anchor, _box: box } = it;
  if (!anchor.isConnected) return close(it);
  const labels = [...(anchor.labels || [])];
  const shownEls = it._protect.filter((e) => e.isConnected && visible(e));
  const rects = shownEls.map(contentRect);
  // Nor the banner on screen (the regions share the viewport); but the app's own hint, error and
  // controls come first: when only the banner is in the way, the banner moves to the bottom.
  const banner = regions.banner._cur;
  const bannerRect = banner && banner._box.isConnected && banner._box.getBoundingClientRect();
  const view = { left: 0, top: 0, right: html.clientWidth, bottom: html.clientHeight };
  const { width: w, height: h } = size(box);
  const rtl = platform.isRTL(anchor);
  const order = [rtl ? "left" : "right", rtl ? "right" : "left", "bottom", "top"];
  const middleware = [shift({ padding: 8 }), arrow({ element: it._arrow, padding: 10 })];
  let best, clear; // clear: the first side clear of the app's elements (maybe not of the banner)
  for (const side of order) {
    across = side === "left" || side === "right";
    const r = await computePosition(anchor, box, { placement: side + "-start", strategy: "fixed", middleware, platform });
    const b = { left: r.x, top: r.y, right: r.x + w, bottom: r.y + h };
    let cost = (w * h - overlap(b, view)) * 1e4; // sticking out of the viewport: worst
    let label = 0;
    rects.forEach((rc, i) => (labels.indexOf(shownEls[i]) >= 0 ? (label += overlap(b, rc)) : (cost += overlap(b, rc))));
    if (!cost) clear = clear || r;
    cost += (bannerRect ? overlap(b, bannerRect) : 0) + label / 4;
    if (!best || cost < best._cost) best = { _r: r, _cost: cost };
    if (!cost) break;
  }
  if (best._cost && clear && bannerHost && !classes(bannerHost).contains("pf-region-inline")) {
    classes(bannerHost).add("pf-region-bottom");
    best._r = clear;
  }
  if (regions.tooltip._cur !== it) return;
  const { x, y, placement, middlewareData } = best._r;
  const s = placement.split("-")[0];
  const a = middlewareData.arrow || {};
  const move = (dx, dy) => {
    box.style.left = x + dx + "px";
    box.style.top = y + dy + "px";
  };
  move(0, 0);
  // Without the top layer (no popover support) a transformed ancestor is the containing block:
  // correct by where the box landed.
  const at = box.getBoundingClientRect();
  move(x - at.left, y - at.top);
  classes(box).remove("pf-side-" + it._side);
  classes(box).add("pf-side-" + s);
  it._side = s;
  it._arrow.style.left = a.x != null ? a.x + "px" : "";
  it._arrow.style.top = a.y != null ? a.y + "px" : "";
}

function replaceTooltip() {
  const t = regions.tooltip._cur;
  if (t) place(t);
}

// -- banner ---------------------------------------------------------------------------------------
// The bottom edge of the app's fixed or sticky header at the top of the viewport (measured when a
// banner shows, not continuously): the banner region starts below it.
function headerBottom() {
  let bottom = 0;
  for (const x of [8, html.clientWidth / 2, html.clientWidth - 8])
    for (let el of doc.elementsFromPoint(x, 1))
      for (; el && el !== doc.body && el !== html && !el.closest(`[${UI}]`); el = el.parentElement)
        if (/fixed|sticky/.test(getComputedStyle(el).position)) {
          const r = el.getBoundingClientRect();
          if (r.top <= 1 && r.bottom > bottom && r.height < innerHeight / 2) bottom = r.bottom;
        }
  return bottom;
}

function showBanner(g, anchorMissing) {
  const it = build(g, g.kind === "link" ? "link-item" : "banner", "banner");
  const box = it._box;
  attr(box, "role", "region");
  attr(box, "aria-live", "polite");
  const container = opts._container && doc.querySelector(opts._container);
  let host = bannerHost;
  if (!host || !host.isConnected || (container && !container.contains(host))) {
    host = bannerHost = make("div", "pf-region");
    attr(host, UI, "region");
    if (container) {
      classes(host).add("pf-region-inline");
      container.prepend(host);
    } else doc.body.appendChild(host);
  }
  const fixed = !classes(host).contains("pf-region-inline");
  classes(host).remove("pf-region-bottom");
  if (fixed) host.style.setProperty("--pf-top", (opts._offset != null ? opts._offset : headerBottom() + 8) + "px");
  host.appendChild(box);
  if (fixed && !popoverOpen(host)) popover(host);
  box.addEventListener("focusin", (e) => {
    if (!box.contains(e.relatedTarget)) it._back = e.relatedTarget;
  });
  if (anchorMissing) opts._ack(g.id, "anchor_missing");
  shown(it, "banner");
  replaceTooltip();
}

// -- modal ----------------------------------------------------------------------------------------
function showModal(g) {
  const it = build(g, "modal", "modal", "dialog");
  const box = it._box;
  it._back = activeElement();
  attr(box, "aria-modal", "true");
  doc.body.appendChild(box);
  box.addEventListener("cancel", (e) => {
    e.preventDefault();
    close(it, "dismissed");
  });
  // The focus trap: Tab from the last control goes to the first, Shift+Tab from the first to the last.
  box.addEventListener("keydown", (e) => {
    if (e.key !== "Tab") return;
    const list = [...box.querySelectorAll(FOCUSABLE)].filter(visible);
    const a = activeElement();
    const to = e.shiftKey ? (a === list[0] || !box.contains(a)) && list.pop() : a === list[list.length - 1] && list[0];
    if (to) {
      e.preventDefault();
      to.focus();
    }
  });
  box.showModal();
  box.querySelector(".pf-close").focus();
  shown(it, "modal");
}

// -- closing --------------------------------------------------------------------------------------
/** Close an item on screen; `outcome` ("dismissed", "completed", ...) is reported when given. */
export function close(it, outcome) {
  const name = it._region;
  const box = it._box;
  if (regions[name]._cur !== it) return;
  regions[name]._cur = null;
  const hadFocus = box.contains(activeElement()) || name === "modal";
  if (it._stop) it._stop();
  if (it._restore) it._restore();
  if (box.open) box.close();
  box.remove();
  if (bannerHost && !bannerHost.children.length) {
    bannerHost.remove();
    bannerHost = null;
  }
  if (outcome) opts._ack(it._g.id, outcome);
  if (name === "banner") replaceTooltip();
  const back = [it._anchor, it._back].find((el) => el && el.isConnected && el !== doc.body && el.focus);
  if (hadFocus && back) back.focus();
  pump();
}

/** Close the item with this id if it is on screen, or drop it from the queues. */
export function closeId(id, outcome) {
  for (const name in regions) {
    const r = regions[name];
    if (r._cur && r._cur._g.id === id) close(r._cur, outcome);
    r._q = r._q.filter((g) => g.id !== id);
  }
}
