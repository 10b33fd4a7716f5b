// Guidance on the screen: tooltips placed with Floating UI next to their anchor, banners in a
// region clear of the app's fixed header, modals as native <dialog>s. One item at a time per
// region (tooltip, banner, modal); the others wait in a queue ordered by priority.
//
// Accessibility follows the WAI-ARIA Authoring Practices: a tooltip is a non-modal dialog placed
// right after its anchor in the DOM (so it is next in Tab order), it extends the anchor's
// aria-describedby (restored exactly when it closes) and never takes focus by itself; Escape
// closes it only when focus is in it or on its anchor; focus returns to the anchor. The modal
// traps focus, has a backdrop, makes the page behind inert (showModal) and gives focus back.
import { arrow, autoUpdate, computePosition, flip, offset, shift } from "@floating-ui/dom";
import { adopt } from "./style.js";

export const UI = "data-pyfriction-ui";
const FOCUSABLE =
  'a[href],button:not([disabled]),input:not([disabled]):not([type="hidden"]),select:not([disabled]),' +
  'textarea:not([disabled]),summary,[tabindex]:not([tabindex="-1"]),[contenteditable=""],[contenteditable="true"]';
const KIND_RANK = { modal: 3, tooltip: 2, banner: 1, link: 0 };
const GAP = 12; // px between a tooltip and its anchor (the arrow sits in it)
let seq = 0;
let opts = null;
const regions = { tooltip: region(), banner: region(), modal: region() };
const known = {}; // guidance id -> true once offered to the UI (never shown twice by one page)
let bannerHost = null;

function region() {
  return { cur: null, queue: [] };
}

/** Deep active element (through open shadow roots). */
export function activeElement() {
  let a = document.activeElement;
  while (a && a.shadowRoot && a.shadowRoot.activeElement) a = a.shadowRoot.activeElement;
  return a;
}

function safeUrl(url) {
  try {
    const u = new URL(url, location.href);
    return /^https?:$/.test(u.protocol) ? u.href : null;
  } catch (e) {
    return null;
  }
}

function expired(g) {
  return g.expires_at && g.expires_at * 1000 < Date.now();
}

/** Find an element by selector in the document or any open shadow root; `a >>> b` pierces a host. */
export function findAnchor(selector) {
  const parts = String(selector).split(">>>").map((s) => s.trim());
  let roots = [document];
  let found = null;
  for (let i = 0; i < parts.length; i++) {
    found = null;
    for (const root of roots) {
      try {
        found = root.querySelector(parts[i]) || deepQuery(root, parts[i]);
      } catch (e) {
        return null; // an invalid selector is an absent anchor
      }
      if (found) break;
    }
    if (!found) return null;
    if (i < parts.length - 1) {
      if (!found.shadowRoot) return null;
      roots = [found.shadowRoot];
    }
  }
  return found && visible(found) ? found : null;
}

// Only run when an anchor is looked up (not on the hot path): open shadow roots below `root`.
function deepQuery(root, sel) {
  const all = root.querySelectorAll("*");
  for (let i = 0; i < all.length; i++) {
    const sr = all[i].shadowRoot;
    if (sr) {
      const hit = sr.querySelector(sel) || deepQuery(sr, sel);
      if (hit) return hit;
    }
  }
  return null;
}

function visible(el) {
  const r = el.getBoundingClientRect();
  return r.width > 0 || r.height > 0;
}

/** Set up the UI. `o`: {words, locale, dir, theme, bannerContainer, bannerOffset, ack(id, outcome)}. */
export function init(o) {
  opts = o;
  adopt(document);
  // Capture phase: the guidance decides first whether an Escape is meant for it, and only then
  // stops it, so the app's own dialogs keep their Escape.
  document.addEventListener("keydown", onKey, true);
}

function onKey(e) {
  if (e.key !== "Escape" || e.defaultPrevented) return;
  const a = activeElement();
  for (const name of ["tooltip", "banner"]) {
    const it = regions[name].cur;
    if (!it) continue;
    if (it.box.contains(a)) {
      e.preventDefault();
      e.stopPropagation();
      close(it, "dismissed");
      return;
    }
    if (it.anchor && a === it.anchor) {
      close(it, null); // hidden, not dismissed: the user may have meant the field's own Escape
      return;
    }
  }
}

/** Offer an item to the UI: resolved, queued in its region, shown when the region is free. */
export function offer(g, tries) {
  if (!g || !g.id || known[g.id]) return;
  if (g.kind === "tooltip" && g.anchor && !findAnchor(g.anchor)) {
    // A page that renders late: look again a few times before giving up on the anchor.
    const n = tries || 0;
    if (n < 3) {
      setTimeout(() => offer(g, n + 1), [150, 400, 800][n]);
      return;
    }
  }
  known[g.id] = true;
  const name = g.kind === "modal" ? "modal" : g.kind === "tooltip" && g.anchor && findAnchor(g.anchor) ? "tooltip" : "banner";
  const r = regions[name];
  r.queue.push(g);
  r.queue.sort(
    (a, b) =>
      (b.priority || 0) - (a.priority || 0) ||
      (KIND_RANK[b.kind] || 0) - (KIND_RANK[a.kind] || 0) ||
      (a.created_at || 0) - (b.created_at || 0),
  );
  pump();
}

/** Has this page seen the item? */
export function has(id) {
  return !!known[id];
}

/** Items on screen now. */
export function current() {
  return Object.keys(regions)
    .map((k) => regions[k].cur)
    .filter(Boolean);
}

function pump() {
  for (const name of ["modal", "tooltip", "banner"]) {
    const r = regions[name];
    // While a modal is open the page behind is inert: nothing else appears until it closes.
    if (r.cur || (name !== "modal" && regions.modal.cur)) continue;
    while (r.queue.length && !r.cur) {
      const g = r.queue.shift();
      if (expired(g)) continue;
      if (name === "modal") showModal(g);
      else if (name === "tooltip") {
        const anchor = findAnchor(g.anchor);
        if (anchor) showTooltip(g, anchor);
        else showBanner(g, true);
      } else showBanner(g, g.kind === "tooltip");
    }
  }
}

// -- building -------------------------------------------------------------------------------------
function theme() {
  const t = opts.theme;
  return t === "dark" || t === "light" ? t : "auto";
}

function build(g, kind, tag) {
  const w = opts.words;
  const box = document.createElement(tag || "div");
  const id = "pf-" + ++seq;
  box.className = `pf-guidance pf-${kind === "link" ? "link-item" : kind} pf-theme-${theme()}`;
  box.setAttribute(UI, kind);
  box.setAttribute("data-guidance-id", g.id);
  box.setAttribute("data-pyfriction-guidance", g.id);
  box.setAttribute("dir", opts.dir);
  if (g.locale) box.setAttribute("lang", g.locale);
  const ids = [];
  const href = g.url && safeUrl(g.url);
  if (g.kind === "link" && href) {
    box.setAttribute("aria-label", w.help);
    const a = link(g, href, g.title);
    a.id = id + "-t";
    ids.push(a.id);
    box.appendChild(a);
  } else {
    const t = document.createElement("strong");
    t.className = "pf-title";
    t.id = id + "-t";
    t.textContent = g.title || w.help;
    box.appendChild(t);
    box.setAttribute("aria-labelledby", t.id);
    ids.push(t.id);
    if (g.body) {
      const b = document.createElement("div");
      b.className = "pf-body";
      b.id = id + "-b";
      // body_html: the sidecar renders the body's safe Markdown subset (everything escaped first)
      if (g.body_html) b.innerHTML = g.body_html;
      else b.textContent = g.body;
      box.appendChild(b);
      ids.push(b.id);
    }
    if (href) {
      const p = document.createElement("div");
      p.className = "pf-actions";
      p.appendChild(link(g, href, w.more));
      box.appendChild(p);
    }
  }
  const x = document.createElement("button");
  x.type = "button";
  x.className = "pf-close";
  x.setAttribute("aria-label", w.dismiss);
  x.textContent = "\u00d7";
  box.appendChild(x);
  const it = { g, box, ids, kind, closeButton: x };
  x.addEventListener("click", () => close(it, "dismissed"));
  box.addEventListener("click", (e) => {
    const a = e.target && e.target.closest ? e.target.closest("a[href]") : null;
    if (a && a !== x) opts.ack(g.id, "clicked");
  });
  return it;
}

function link(g, href, text) {
  const a = document.createElement("a");
  a.className = "pf-link";
  a.href = href;
  a.textContent = text;
  return a;
}

function popover(el) {
  // The top layer: above the app's stacking contexts and out of its overflow clipping, while
  // staying where it is in the DOM (and so in Tab order).
  if (typeof el.showPopover !== "function") return;
  try {
    el.setAttribute("popover", "manual");
    el.showPopover();
  } catch (e) {
    el.removeAttribute("popover");
  }
}

// -- tooltip --------------------------------------------------------------------------------------
/** What a tooltip must not cover: the anchor, its hint and error (aria-describedby and
 * aria-errormessage targets, the element right after it) and the next focusable control. */
export function protectedElements(anchor) {
  const root = anchor.getRootNode();
  const out = [anchor];
  for (const attr of ["aria-describedby", "aria-errormessage"]) {
    for (const id of (anchor.getAttribute(attr) || "").split(/\s+/)) {
      const el = id && root.getElementById ? root.getElementById(id) : null;
      if (el && out.indexOf(el) < 0) out.push(el);
    }
  }
  let el = anchor;
  while (el && !nextOwn(el) && el.parentElement && el.parentElement !== document.body) el = el.parentElement;
  const after = el && nextOwn(el);
  if (after && out.indexOf(after) < 0) out.push(after);
  // Its label last: covered only when every side covers something (it then costs the least).
  for (const l of anchor.labels || []) if (out.indexOf(l) < 0) out.push(l);
  const focusables = (root.querySelectorAll ? root : document).querySelectorAll(FOCUSABLE);
  for (let i = 0; i < focusables.length; i++) {
    const f = focusables[i];
    if (f === anchor || anchor.contains(f) || f.closest("[" + UI + "]")) continue;
    if (anchor.compareDocumentPosition(f) & Node.DOCUMENT_POSITION_FOLLOWING && visible(f)) {
      if (out.indexOf(f) < 0) out.push(f);
      break;
    }
  }
  return out;
}

function nextOwn(el) {
  let n = el.nextElementSibling;
  while (n && n.hasAttribute(UI)) n = n.nextElementSibling;
  return n;
}

function describe(anchor, ids) {
  const orig = anchor.getAttribute("aria-describedby");
  const mine = ids.join(" ");
  const set = orig ? orig + " " + mine : mine;
  anchor.setAttribute("aria-describedby", set);
  return () => {
    const cur = anchor.getAttribute("aria-describedby");
    if (cur === set) {
      if (orig === null) anchor.removeAttribute("aria-describedby");
      else anchor.setAttribute("aria-describedby", orig);
    } else if (cur !== null) {
      // The app changed it meanwhile: take out only our ids.
      const left = cur.split(/\s+/).filter((t) => t && ids.indexOf(t) < 0);
      if (left.length) anchor.setAttribute("aria-describedby", left.join(" "));
      else anchor.removeAttribute("aria-describedby");
    }
  };
}

function showTooltip(g, anchor) {
  const root = anchor.getRootNode();
  if (root !== document) adopt(root);
  const it = build(g, "tooltip");
  it.region = "tooltip";
  it.anchor = anchor;
  it.box.setAttribute("role", "dialog");
  it.protect = protectedElements(anchor);
  const arrowEl = document.createElement("div");
  arrowEl.className = "pf-arrow";
  arrowEl.setAttribute("aria-hidden", "true");
  it.box.insertBefore(arrowEl, it.box.firstChild);
  it.arrow = arrowEl;
  // Right after the anchor in the DOM: next in Tab order. Not inside a label, link or button
  // (a click in the tooltip would activate them).
  const host = (anchor.parentElement && anchor.parentElement.closest("label,a,button,summary")) || anchor;
  host.insertAdjacentElement("afterend", it.box);
  popover(it.box);
  it.restore = describe(anchor, it.ids);
  regions.tooltip.cur = it;
  it.cleanup = autoUpdate(anchor, it.box, () => place(it));
  opts.ack(g.id, "shown");
}

// What an element shows: for a block of text (a hint, an error line, a wrapper around the next
// control) the extent of its contents, not the full width of the block.
function contentRect(el) {
  if (el.matches(FOCUSABLE) || !el.firstChild) return el.getBoundingClientRect();
  const range = document.createRange();
  range.selectNodeContents(el);
  const r = range.getBoundingClientRect();
  return r.width || r.height ? r : el.getBoundingClientRect();
}

function overlap(a, b) {
  const w = Math.min(a.right, b.right) - Math.max(a.left, b.left);
  const h = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
  return w > 0 && h > 0 ? w * h : 0;
}

function applyPosition(it, r) {
  const s = r.placement.split("-")[0];
  it.box.style.left = r.x + "px";
  it.box.style.top = r.y + "px";
  it.box.classList.remove("pf-side-top", "pf-side-bottom", "pf-side-left", "pf-side-right");
  it.box.classList.add("pf-side-" + s);
  it.side = s;
  const a = r.middlewareData.arrow || {};
  it.arrow.style.left = a.x != null ? a.x + "px" : "";
  it.arrow.style.top = a.y != null ? a.y + "px" : "";
}

/** Place a tooltip: the first side (right, left, below, above; mirrored in RTL) on which it is
 * inside the viewport and covers none of the protected elements; when every side collides, the
 * one covering least; when none fits the viewport, Floating UI's flip and shift decide. */
async function place(it) {
  if (it.placing) {
    it.again = true;
    return;
  }
  it.placing = true;
  try {
    do {
      it.again = false;
      await placeOnce(it);
    } while (it.again && regions.tooltip.cur === it);
  } finally {
    it.placing = false;
  }
}

async function placeOnce(it) {
  const { anchor, box } = it;
  if (regions.tooltip.cur !== it) return;
  if (!anchor.isConnected) {
    close(it, null);
    return;
  }
  const labels = anchor.labels ? Array.from(anchor.labels) : [];
  const shown = it.protect.filter((e) => e.isConnected && visible(e));
  const rects = shown.map(contentRect);
  const soft = shown.map((e) => labels.indexOf(e) >= 0); // its label: better covered than the rest
  // Nor the banner on screen (the regions share the viewport); but the app's own hint, error and
  // controls come first: when only the banner is in the way, the banner moves to the bottom.
  const banner = regions.banner.cur;
  const movable = banner && bannerHost && !bannerHost.classList.contains("pf-region-inline");
  const vw = document.documentElement.clientWidth;
  const vh = document.documentElement.clientHeight;
  const rtl = getComputedStyle(anchor).direction === "rtl";
  const order = rtl
    ? ["left-start", "right-start", "bottom-start", "top-start"]
    : ["right-start", "left-start", "bottom-start", "top-start"];
  const middleware = [offset(GAP), shift({ padding: 8 }), arrow({ element: it.arrow, padding: 10 })];
  let best = null;
  let clear = null; // the first side clear of the app's elements (maybe not of the banner)
  for (const placement of order) {
    const r = await computePosition(anchor, box, { placement, strategy: "fixed", middleware });
    applyPosition(it, r);
    const b = box.getBoundingClientRect();
    const outside = b.left < 0 || b.top < 0 || b.right > vw || b.bottom > vh;
    let cost = outside ? 1e9 : 0;
    let label = 0;
    rects.forEach((rc, i) => (soft[i] ? (label += overlap(b, rc)) : (cost += overlap(b, rc))));
    const covered = banner && banner.box.isConnected ? overlap(b, banner.box.getBoundingClientRect()) : 0;
    if (cost === 0 && !clear) clear = r;
    cost += covered + label / 4;
    if (!best || cost < best.cost) best = { r, cost };
    if (cost === 0) break;
  }
  if (best.cost > 0 && clear && movable) {
    bannerHost.classList.add("pf-region-bottom");
    best = { r: clear, cost: 0 };
  }
  if (best.cost >= 1e9) {
    const r = await computePosition(anchor, box, {
      placement: order[2],
      strategy: "fixed",
      middleware: [offset(GAP), flip({ fallbackPlacements: order }), shift({ padding: 8 }), arrow({ element: it.arrow, padding: 10 })],
    });
    best = { r };
  }
  applyPosition(it, best.r);
}

function replaceTooltip() {
  const t = regions.tooltip.cur;
  if (t) place(t);
}

// -- banner ---------------------------------------------------------------------------------------
function headerBottom() {
  // The bottom edge of the app's fixed or sticky header at the top of the viewport (measured when a
  // banner shows, not continuously): the banner region starts below it.
  let bottom = 0;
  for (const x of [8, document.documentElement.clientWidth / 2, document.documentElement.clientWidth - 8]) {
    for (let el of document.elementsFromPoint(x, 1)) {
      for (; el && el !== document.body && el !== document.documentElement; el = el.parentElement) {
        if (el.closest("[" + UI + "]") || el.classList.contains("pf-region")) break;
        const pos = getComputedStyle(el).position;
        if (pos === "fixed" || pos === "sticky") {
          const r = el.getBoundingClientRect();
          if (r.top <= 1 && r.bottom > bottom && r.height < innerHeight / 2) bottom = r.bottom;
        }
      }
    }
  }
  return bottom;
}

function bannerRegion() {
  const container = opts.bannerContainer ? document.querySelector(opts.bannerContainer) : null;
  if (bannerHost && bannerHost.isConnected && (!container || container.contains(bannerHost))) return bannerHost;
  bannerHost = document.createElement("div");
  bannerHost.className = "pf-region";
  bannerHost.setAttribute(UI, "region");
  if (container) {
    bannerHost.classList.add("pf-region-inline");
    container.insertBefore(bannerHost, container.firstChild);
  } else {
    document.body.appendChild(bannerHost);
  }
  return bannerHost;
}

function showBanner(g, anchorMissing) {
  const kind = g.kind === "link" ? "link" : "banner";
  const it = build(g, kind);
  it.region = "banner";
  it.box.setAttribute("role", "region");
  it.box.setAttribute("aria-live", "polite");
  const host = bannerRegion();
  host.classList.remove("pf-region-bottom");
  if (!host.classList.contains("pf-region-inline")) {
    const top = opts.bannerOffset != null ? opts.bannerOffset : headerBottom() + 8;
    host.style.setProperty("--pf-region-top", top + "px");
  }
  host.appendChild(it.box);
  if (!host.classList.contains("pf-region-inline") && !host.matches(":popover-open")) popover(host);
  it.box.addEventListener("focusin", (e) => {
    if (!it.box.contains(e.relatedTarget)) it.returnTo = e.relatedTarget;
  });
  regions.banner.cur = it;
  replaceTooltip();
  if (anchorMissing) opts.ack(g.id, "anchor_missing");
  opts.ack(g.id, "shown");
}

// -- modal ----------------------------------------------------------------------------------------
function focusables(box) {
  return Array.prototype.filter.call(box.querySelectorAll(FOCUSABLE), (el) => visible(el));
}

function showModal(g) {
  const it = build(g, "modal", "dialog");
  it.region = "modal";
  it.returnTo = activeElement();
  const box = it.box;
  box.setAttribute("aria-modal", "true");
  document.body.appendChild(box);
  box.addEventListener("cancel", (e) => {
    e.preventDefault();
    close(it, "dismissed");
  });
  box.addEventListener("keydown", (e) => {
    if (e.key !== "Tab") return;
    const list = focusables(box);
    if (!list.length) return;
    const first = list[0];
    const last = list[list.length - 1];
    const a = activeElement();
    if (e.shiftKey && (a === first || !box.contains(a))) {
      e.preventDefault();
      last.focus();
    } else if (!e.shiftKey && a === last) {
      e.preventDefault();
      first.focus();
    }
  });
  regions.modal.cur = it;
  box.showModal();
  (it.closeButton || box).focus();
  opts.ack(g.id, "shown");
}

// -- closing --------------------------------------------------------------------------------------
/** Close an item on screen; `outcome` ("dismissed", "completed", ...) is reported when given. */
export function close(it, outcome) {
  const r = regions[it.region];
  if (!r || r.cur !== it) return;
  r.cur = null;
  const a = activeElement();
  const hadFocus = it.box.contains(a) || it.region === "modal";
  if (it.cleanup) it.cleanup();
  if (it.restore) it.restore();
  if (it.region === "modal" && it.box.open) it.box.close();
  if (it.box.matches && it.box.matches(":popover-open")) it.box.hidePopover();
  it.box.remove();
  if (it.region === "banner" && bannerHost && !bannerHost.children.length) {
    if (bannerHost.matches(":popover-open")) bannerHost.hidePopover();
    bannerHost.remove();
    bannerHost = null;
  }
  if (outcome) opts.ack(it.g.id, outcome);
  if (it.region === "banner") replaceTooltip();
  if (hadFocus) {
    const back = [it.anchor, it.returnTo].find((el) => el && el.isConnected && el !== document.body);
    if (back && back.focus) back.focus();
  }
  pump();
}

/** Close the item with this id if it is on screen, or drop it from the queues. */
export function closeId(id, outcome) {
  for (const name of Object.keys(regions)) {
    const r = regions[name];
    if (r.cur && r.cur.g.id === id) {
      close(r.cur, outcome);
      return true;
    }
    const i = r.queue.findIndex((g) => g.id === id);
    if (i >= 0) r.queue.splice(i, 1);
  }
  return false;
}
