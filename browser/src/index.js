/*! pyfriction.js: friction signals from the browser, guidance back into the page.
 *
 * <script src="https://friction.example.com/v1/pyfriction.js" async
 *         data-write-key="wk_..." data-user-id="u42" data-user-token="..."></script>
 *
 * Built from browser/src with esbuild (Floating UI bundled); see browser/README.md.
 * API: window.pyfriction.identify(userId, token), .track(type, fields), .flush(), .complete(id).
 */
import { words, isRtl } from "./locale.js";
import * as ui from "./ui.js";

const VERSION = "0.2.0";

(function () {
  if (window.pyfriction && window.pyfriction.version) return;

  const script = document.currentScript || document.querySelector("script[data-write-key]");
  const data = (script && script.dataset) || {};
  const host = (data.host || (script && script.src ? new URL(script.src, location.href).origin : location.origin)).replace(/\/$/, "");
  const locale = data.locale || navigator.language || "en";
  // In-process mode (pyfriction.integrations: guidance_app mounted at this path, the user known
  // from the session cookie): events, acks and a poll go there instead of to a sidecar.
  const mount = data.mount ? data.mount.replace(/\/$/, "") : null;
  const cfg = {
    key: data.writeKey || "",
    user: data.userId || "",
    token: data.userToken || "",
    flushMs: +data.flushMs || 1000,
    deadMs: +data.deadClickMs || 1000,
    retryMs: +data.retryMs || 1000,
    maxQueue: 500,
    locale,
  };
  const IGNORE = "[data-pyfriction-ignore],[" + ui.UI + "]";
  let queue = [];
  let timer = null;
  let seq = 0;
  let lastScroll = 0;
  let downScroll = 0;
  let stream = null;
  let retryTimer = null;
  let attempt = 0;
  let chan = null;

  const now = () => Date.now() / 1000;
  const rid = () => Date.now().toString(36) + Math.random().toString(36).slice(2, 10) + (seq++).toString(36);
  function anonId() {
    try {
      let id = localStorage.getItem("pyfriction_anon");
      if (!id) {
        id = "anon-" + rid();
        localStorage.setItem("pyfriction_anon", id);
      }
      return id;
    } catch (e) {
      return "anon-" + rid();
    }
  }
  const userId = () => cfg.user || (cfg.user = anonId());
  const step = () => location.pathname || "/";
  const query = (params) => {
    const parts = [];
    for (const k in params) if (params[k]) parts.push(k + "=" + encodeURIComponent(params[k]));
    return parts.length ? "?" + parts.join("&") : "";
  };

  // -- stable targets (through open shadow roots: composedPath) ------------------------------------
  const ACTIONABLE =
    "a,button,input,select,textarea,label,summary,[role=button],[role=link],[role=tab],[role=menuitem],[data-pyfriction],[onclick]";
  function cssPath(el) {
    const parts = [];
    for (let depth = 0; el && el.nodeType === 1 && depth < 3; depth++, el = el.parentElement) {
      if (el.id) {
        parts.unshift("#" + el.id);
        break;
      }
      let name = el.tagName.toLowerCase();
      const cls = (el.getAttribute("class") || "").trim().split(/\s+/)[0];
      if (cls) name += "." + cls;
      const parent = el.parentElement;
      if (parent) {
        let same = 0;
        let index = 0;
        for (let c = parent.firstElementChild; c; c = c.nextElementSibling) {
          if (c.tagName === el.tagName) {
            same++;
            if (c === el) index = same;
          }
        }
        if (same > 1) name += ":nth-of-type(" + index + ")";
      }
      parts.unshift(name);
    }
    return parts.join(" > ");
  }
  function localTarget(el) {
    const hit = el.closest(ACTIONABLE) || el;
    const named = el.closest("[data-pyfriction]");
    if (named) return named.getAttribute("data-pyfriction");
    return hit.id ? "#" + hit.id : cssPath(hit);
  }
  /** The target of an event: the innermost element of its composed path; inside a shadow root,
   * "host >>> inner" (the same syntax anchors use). */
  function targetOf(path) {
    const el = path.find((n) => n && n.nodeType === 1);
    if (!el) return null;
    const parts = [];
    let cur = el;
    while (cur) {
      parts.unshift(localTarget(cur));
      const root = cur.getRootNode();
      if (root instanceof ShadowRoot && !cur.closest("[data-pyfriction]")) cur = root.host;
      else break;
    }
    return { el, target: parts.join(" >>> ") };
  }
  const ignored = (path) => path.some((n) => n && n.nodeType === 1 && n.matches(IGNORE));

  // -- sending --------------------------------------------------------------------------------------
  function push(type, fields) {
    const ev = { id: rid(), user_id: userId(), type, ts: now(), step: step() };
    for (const k in fields || {}) ev[k] = fields[k];
    queue.push(ev);
    if (queue.length > cfg.maxQueue) queue.splice(0, queue.length - cfg.maxQueue);
    if (!timer) timer = setTimeout(flush, cfg.flushMs);
  }
  const payload = (events) => JSON.stringify({ writeKey: cfg.key, sent_at: now(), lib: "pyfriction.js", events });
  function post(url, body) {
    // text/plain keeps it a "simple" request: no CORS preflight, and sendBeacon allows it.
    const credentials = mount ? "same-origin" : "omit";
    return origFetch(url, { method: "POST", body, headers: { "Content-Type": "text/plain" }, keepalive: true, credentials });
  }
  function flush(beacon) {
    clearTimeout(timer);
    timer = null;
    if (!queue.length) return;
    const events = queue.splice(0, 100);
    const url = mount ? mount + "/events" : host + "/v1/events";
    const body = mount ? JSON.stringify({ events }) : payload(events);
    if (beacon === true && navigator.sendBeacon) {
      if (navigator.sendBeacon(url, new Blob([body], { type: "text/plain" }))) return flush(true);
    }
    post(url, body)
      .then((r) => {
        if (r.status >= 500 || r.status === 429) requeue(events);
      })
      .catch(() => requeue(events));
    if (queue.length) timer = setTimeout(flush, 0);
  }
  function requeue(events) {
    queue = events.concat(queue).slice(-cfg.maxQueue); // same ids: the sidecar drops duplicates
    if (!timer) timer = setTimeout(flush, cfg.flushMs * 5);
  }
  const ownUrl = (url) => String(url).indexOf(host + "/v1/") === 0 || (!!mount && String(url).indexOf(mount + "/") >= 0);
  function endpoint(url) {
    try {
      const u = new URL(url, location.href);
      return (u.origin === location.origin ? "" : u.host) + u.pathname;
    } catch (e) {
      return String(url).split("?")[0].slice(0, 200);
    }
  }

  // -- capture --------------------------------------------------------------------------------------
  let lastPath = null;
  function pageView() {
    if (step() !== lastPath) {
      lastPath = step();
      // In-process, the middleware records page views itself (the same view twice, at two
      // moments, would look like navigation back and forth).
      if (!mount) push("page", {});
    }
    setTimeout(deliverWaiting, 0);
    checkComplete();
  }
  for (const name of ["pushState", "replaceState"]) {
    const orig = history[name];
    history[name] = function () {
      const r = orig.apply(this, arguments);
      pageView();
      return r;
    };
  }
  addEventListener("popstate", pageView);
  // Cheap listeners only: a timestamp. No page-wide MutationObserver runs while the app works.
  addEventListener("scroll", () => (lastScroll = Date.now()), { capture: true, passive: true });
  addEventListener("pointerdown", () => (downScroll = lastScroll), { capture: true, passive: true });

  /** Did the page react to a click within `ms`? A DOM change, navigation, scroll or request. A
   * MutationObserver watches only for that one window and stops at the first change. */
  function reacted(ms, done) {
    const start = Date.now();
    const path = location.href;
    const reqs = requests;
    let changed = false;
    const mo = new MutationObserver((records) => {
      for (const rec of records) {
        const t = rec.target.nodeType === 1 ? rec.target : rec.target.parentElement;
        if (!t || !t.closest(IGNORE)) {
          changed = true;
          mo.disconnect();
          return;
        }
      }
    });
    mo.observe(document.documentElement, { childList: true, subtree: true, attributes: true, characterData: true });
    setTimeout(() => {
      mo.disconnect();
      done(changed || location.href !== path || lastScroll >= start || requests !== reqs);
    }, ms);
  }
  let requests = 0;

  document.addEventListener(
    "click",
    (e) => {
      const path = e.composedPath ? e.composedPath() : [e.target];
      if (ignored(path)) return;
      const t = targetOf(path);
      if (!t) return;
      const fields = { target: t.target };
      // A click that selected text (drag, double or triple click) or ended a scroll is not rage.
      const sel = window.getSelection && window.getSelection();
      const selected = sel && !sel.isCollapsed && String(sel).trim() !== "";
      const during = lastScroll > downScroll; // scrolled between press and release (touch, wheel)
      const scrolled = during || Date.now() - lastScroll < 150;
      if (selected || scrolled) fields.properties = { selection: during || !selected ? "scroll" : "text" };
      push("click", fields);
      setTimeout(checkComplete, 300);
      if (selected || scrolled || t.el.closest("a[href],input,select,textarea,label,summary,[contenteditable]")) return;
      reacted(cfg.deadMs, (live) => {
        // The first click of a double or triple click that went on to select text: not dead.
        const now = window.getSelection && window.getSelection();
        const selecting = now && !now.isCollapsed && t.el.contains(now.anchorNode);
        if (!live && !selecting) push("dead_click", { target: t.target });
      });
    },
    true,
  );

  addEventListener("error", (e) => {
    if (e.target && e.target !== window) return; // resource load errors: not the user's
    const where = e.filename ? endpoint(e.filename) + ":" + e.lineno : "script";
    push("error", { target: (e.error && e.error.name) || "Error", properties: { message: String(e.message).slice(0, 200), where } });
  });
  addEventListener("unhandledrejection", (e) => {
    const r = e.reason;
    push("error", { target: (r && r.name) || "UnhandledRejection", properties: { message: String((r && r.message) || r).slice(0, 200) } });
  });

  const origFetch = window.fetch ? window.fetch.bind(window) : null;
  if (origFetch) {
    window.fetch = function (input, init) {
      const url = typeof input === "string" ? input : (input && input.url) || String(input);
      const method = ((init && init.method) || (input && input.method) || "GET").toUpperCase();
      const p = origFetch(input, init);
      if (ownUrl(url)) return p;
      requests++;
      return p.then(
        (r) => {
          if (r.status >= 400) push("api_error", { target: method + " " + endpoint(url), properties: { status: r.status } });
          else setTimeout(checkComplete, 50);
          return r;
        },
        (err) => {
          push("api_error", { target: method + " " + endpoint(url), properties: { status: 0 } });
          throw err;
        },
      );
    };
  }
  const XHR = window.XMLHttpRequest && window.XMLHttpRequest.prototype;
  if (XHR) {
    const open = XHR.open;
    const send = XHR.send;
    XHR.open = function (method, url) {
      this._pf = [String(method).toUpperCase(), url];
      return open.apply(this, arguments);
    };
    XHR.send = function () {
      const xhr = this;
      if (xhr._pf && !ownUrl(xhr._pf[1])) {
        requests++;
        xhr.addEventListener("loadend", () => {
          if (xhr.status >= 400 || xhr.status === 0)
            push("api_error", { target: xhr._pf[0] + " " + endpoint(xhr._pf[1]), properties: { status: xhr.status } });
        });
      }
      return send.apply(this, arguments);
    };
  }

  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "hidden") flush(true);
    else deliverWaiting();
  });
  addEventListener("pagehide", () => flush(true));
  addEventListener("focus", deliverWaiting);

  // -- feedback -------------------------------------------------------------------------------------
  const acked = {};
  function ack(id, outcome) {
    if (acked[id + " " + outcome]) return;
    acked[id + " " + outcome] = true;
    if (outcome === "shown") remember(id);
    const url = host + "/v1/guidance/" + encodeURIComponent(userId()) + "/ack" + query({ key: cfg.key, token: cfg.token });
    const doc = mount ? { id, outcome } : { guidance_id: id, outcome };
    post(mount ? mount + "/ack" : url, JSON.stringify(doc)).catch(() => {});
  }
  function complete(id) {
    if (!id) return;
    ui.closeId(id, null);
    ack(id, "completed");
  }
  /** The app marks success with data-pyfriction-complete="item-id ..." (empty: whatever this page
   * showed). Looked for after page views, clicks and requests: no observer. */
  function checkComplete() {
    const els = document.querySelectorAll("[data-pyfriction-complete]");
    for (let i = 0; i < els.length; i++) {
      const ids = (els[i].getAttribute("data-pyfriction-complete") || "").split(/\s+/).filter(Boolean);
      for (const id of ids.length ? ids : shownHere) if (shownHere.indexOf(id) >= 0) complete(id);
    }
  }
  const shownHere = [];
  function remember(id) {
    if (shownHere.indexOf(id) < 0) shownHere.push(id);
  }

  // -- delivery: the tab where the struggle happened -----------------------------------------------
  // An item carries the step (page) of its episode. Whichever tab reads it from the stream keeps it
  // in a mailbox shared by the user's tabs (localStorage) and tells the others (BroadcastChannel);
  // the visible tab on that page shows it and takes it out of the mailbox. It is "shown" only then.
  const boxKey = () => "pyfriction_box:" + userId();
  function mailbox() {
    try {
      const box = JSON.parse(localStorage.getItem(boxKey()) || "{}");
      for (const id in box) if (box[id].expires_at && box[id].expires_at < now()) delete box[id];
      return box;
    } catch (e) {
      return memoryBox;
    }
  }
  let memoryBox = {};
  function saveBox(box) {
    try {
      localStorage.setItem(boxKey(), JSON.stringify(box));
    } catch (e) {
      memoryBox = box;
    }
  }
  function receive(g) {
    if (!g || !g.id || ui.has(g.id)) return;
    const box = mailbox();
    box[g.id] = g;
    saveBox(box);
    if (chan) chan.postMessage({ t: "item", g });
    consider(g);
  }
  function consider(g) {
    if (ui.has(g.id)) return;
    if (g.step && g.step !== step()) return; // another page's struggle: for the tab on that page
    if (document.visibilityState !== "visible") return;
    const take = () => {
      // Claims travel on the channel: another tab's localStorage write may not be visible here
      // yet when its message arrives (Chrome syncs storage between processes asynchronously).
      if (taken[g.id] || ui.has(g.id)) return;
      taken[g.id] = true;
      const box = mailbox();
      delete box[g.id];
      saveBox(box);
      if (chan) chan.postMessage({ t: "taken", id: g.id });
      ui.offer(g);
    };
    // The focused tab takes it at once; a visible but unfocused one only if nobody else did.
    if (document.hasFocus()) take();
    else setTimeout(take, 400);
  }
  const taken = {};
  function deliverWaiting() {
    const box = mailbox();
    for (const id in box) consider(box[id]);
  }
  function openChannel() {
    if (chan) chan.close();
    chan = null;
    if (!window.BroadcastChannel) return;
    chan = new BroadcastChannel("pyfriction:" + userId());
    chan.onmessage = (e) => {
      const m = e.data || {};
      if (m.t === "item" && m.g) consider(m.g);
      else if (m.t === "taken" && !ui.has(m.id)) taken[m.id] = true;
    };
  }

  // -- the guidance stream: reconnects with backoff after any failure -------------------------------
  function subscribe() {
    clearTimeout(retryTimer);
    if (stream) stream.close();
    stream = null;
    const url = host + "/v1/guidance/" + encodeURIComponent(userId()) + "/stream" + query({ key: cfg.key, token: cfg.token });
    if (mount || !window.EventSource) {
      origFetch(mount ? mount + "/guidance" : url.replace("/stream", ""), { credentials: mount ? "same-origin" : "omit", cache: "no-store" })
        .then((r) => (r.ok ? r.json() : {}))
        .then((d) => (d.guidance || []).forEach(receive))
        .catch(() => {})
        .then(() => (retryTimer = setTimeout(subscribe, mount ? +data.pollMs || 1500 : 30000)));
      return;
    }
    const es = new EventSource(url);
    stream = es;
    let healthy = null;
    es.addEventListener("open", () => {
      healthy = setTimeout(() => (attempt = 0), 5000);
    });
    es.addEventListener("guidance", (e) => {
      attempt = 0;
      try {
        receive(JSON.parse(e.data));
      } catch (err) {}
    });
    // EventSource gives up for good on a 503 or any non-stream answer, and retries a dropped
    // stream at a fixed pace: close it either way and come back with jittered exponential backoff.
    es.addEventListener("error", () => {
      clearTimeout(healthy);
      es.close();
      if (stream !== es) return;
      stream = null;
      const delay = Math.min(60000, cfg.retryMs * Math.pow(2, attempt++)) * (0.5 + Math.random() / 2);
      retryTimer = setTimeout(subscribe, delay);
    });
  }

  ui.init({
    words: words(locale),
    locale,
    dir: document.documentElement.dir || (isRtl(locale) ? "rtl" : "ltr"),
    theme: data.theme,
    bannerContainer: data.bannerContainer || null,
    bannerOffset: data.bannerOffset != null && data.bannerOffset !== "" ? +data.bannerOffset : null,
    ack,
  });

  window.pyfriction = {
    version: VERSION,
    config: cfg,
    identify(id, token) {
      cfg.user = String(id);
      cfg.token = token || "";
      openChannel();
      subscribe();
    },
    track: (type, fields) => push(type, fields),
    flush,
    complete,
    render: (g) => ui.offer(g),
  };
  openChannel();
  pageView();
  subscribe();
  if (!data.locale && !mount) identifyLocale();

  /** The backend did not say the user's locale: tell the engine the browser's (once a session),
   * so guidance rules with a locale pick the right language. */
  function identifyLocale() {
    try {
      if (sessionStorage.getItem("pyfriction_locale") === userId() + " " + locale) return;
      sessionStorage.setItem("pyfriction_locale", userId() + " " + locale);
    } catch (e) {}
    post(host + "/v1/identify", JSON.stringify({ writeKey: cfg.key, userId: userId(), traits: {}, context: { locale } })).catch(() => {});
  }
})();
