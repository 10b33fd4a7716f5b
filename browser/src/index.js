/*! pyfriction.js | MIT | built from browser/src */
// <script src="https://friction.example.com/v1/pyfriction.js" async
//         data-write-key="wk_..." data-user-id="u42" data-user-token="..."></script>
// API: window.pyfriction.identify(userId, token), .track(type, fields), .flush(), .complete(id).
// Properties starting with "_" are internal: the build renames them (esbuild mangleProps).
import { words, isRtl } from "./locale.js";
import * as ui from "./ui.js";

(function () {
  const w = window;
  if (w.pyfriction && w.pyfriction.version) return;
  const doc = document;
  const script = doc.currentScript || doc.querySelector("script[data-write-key]");
  const data = (script && script.dataset) || {};
  const here = location;
  const host = (data.host || (script && script.src ? new URL(script.src, here.href).origin : here.origin)).replace(/\/$/, "");
  const locale = data.locale || navigator.language || "en";
  // In-process mode (pyfriction.integrations: guidance_app mounted at this path, the user known
  // from the session cookie): events, acks and a poll go there instead of to a sidecar.
  const mount = data.mount && data.mount.replace(/\/$/, "");
  const cfg = {
    key: data.writeKey || "",
    user: data.userId || "",
    token: data.userToken || "",
    flushMs: +data.flushMs || 1000,
    deadMs: +data.deadClickMs || 1000,
    retryMs: +data.retryMs || 1000,
    locale,
  };
  const IGNORE = `[data-pyfriction-ignore],[${ui.UI}]`;
  const listen = (target, type, fn, opts) => target.addEventListener(type, fn, opts);
  const passive = { capture: true, passive: true };
  let queue = [];
  let timer;
  let seq = 0;
  let lastScroll = 0;
  let downScroll = 0;
  let stream;
  let retryTimer;
  let attempt = 0;
  let chan;
  let requests = 0;
  let lastPath;

  const now = () => Date.now() / 1000;
  const rid = () => Date.now().toString(36) + Math.random().toString(36).slice(2, 10) + (seq++).toString(36);
  function userId() {
    if (!cfg.user) {
      try {
        cfg.user = localStorage.pyfriction_anon || (localStorage.pyfriction_anon = "anon-" + rid());
      } catch (e) {
        cfg.user = "anon-" + rid();
      }
    }
    return cfg.user;
  }
  const step = () => here.pathname || "/";
  const guidanceUrl = (path) =>
    host + "/v1/guidance/" + encodeURIComponent(userId()) + path + "?key=" + encodeURIComponent(cfg.key) + "&token=" + encodeURIComponent(cfg.token);

  // -- stable targets (through open shadow roots: composedPath) ------------------------------------
  function cssPath(el) {
    const parts = [];
    for (let depth = 0; el && depth < 3; depth++, el = el.parentElement) {
      if (el.id) {
        parts.unshift("#" + el.id);
        break;
      }
      const tag = el.tagName;
      const cls = (el.getAttribute("class") || "").trim().split(/\s+/)[0];
      const same = el.parentElement ? [...el.parentElement.children].filter((c) => c.tagName === tag) : [];
      parts.unshift(tag.toLowerCase() + (cls ? "." + cls : "") + (same.length > 1 ? `:nth-of-type(${same.indexOf(el) + 1})` : ""));
    }
    return parts.join(" > ");
  }
  /** The target of an event: the innermost element of its composed path; inside a shadow root,
   * "host >>> inner" (the same syntax anchors use). */
  function targetOf(path) {
    const el = path.find((n) => n.nodeType === 1);
    const parts = [];
    for (let cur = el; cur; ) {
      const named = cur.closest("[data-pyfriction]");
      const hit =
        cur.closest("a,button,input,select,textarea,label,summary,[role=button],[role=link],[role=tab],[role=menuitem],[onclick]") || cur;
      parts.unshift(named ? named.getAttribute("data-pyfriction") : hit.id ? "#" + hit.id : cssPath(hit));
      cur = !named && cur.getRootNode().host;
    }
    return el && { _el: el, _target: parts.join(" >>> ") };
  }

  // -- sending --------------------------------------------------------------------------------------
  function push(type, fields) {
    if (queue.push({ id: rid(), user_id: userId(), type, ts: now(), step: step(), ...fields }) > 500) queue.shift();
    if (!timer) timer = setTimeout(flush, cfg.flushMs);
  }
  function post(url, body) {
    // text/plain keeps it a "simple" request: no CORS preflight, and sendBeacon allows it.
    return origFetch(url, {
      method: "POST",
      body,
      headers: { "Content-Type": "text/plain" },
      keepalive: true,
      credentials: mount ? "same-origin" : "omit",
    });
  }
  function flush(beacon) {
    clearTimeout(timer);
    timer = 0;
    if (!queue.length) return;
    const events = queue.splice(0, 100);
    const url = mount ? mount + "/events" : host + "/v1/events";
    const body = JSON.stringify(mount ? { events } : { writeKey: cfg.key, sent_at: now(), lib: "pyfriction.js", events });
    if (beacon === true && navigator.sendBeacon && navigator.sendBeacon(url, new Blob([body], { type: "text/plain" })))
      return flush(true);
    const requeue = () => {
      queue = events.concat(queue).slice(-500); // same ids: the sidecar drops duplicates
      if (!timer) timer = setTimeout(flush, cfg.flushMs * 5);
    };
    post(url, body)
      .then((r) => (r.status > 499 || r.status === 429) && requeue())
      .catch(requeue);
    if (queue.length) timer = setTimeout(flush, 0);
  }
  const ownUrl = (url) => String(url).indexOf(host + "/v1/") === 0 || (mount && String(url).indexOf(mount + "/") >= 0);
  function endpoint(url) {
    try {
      const u = new URL(url, here.href);
      return (u.origin === here.origin ? "" : u.host) + u.pathname;
    } catch (e) {
      return String(url).split("?")[0].slice(0, 200);
    }
  }
  const apiError = (method, url, status) => push("api_error", { target: method + " " + endpoint(url), properties: { status } });

  // -- capture --------------------------------------------------------------------------------------
  function pageView() {
    // In-process, the middleware records page views itself (the same view twice, at two
    // moments, would look like navigation back and forth).
    if (step() !== lastPath && !mount) push("page");
    lastPath = step();
    setTimeout(deliverWaiting);
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
  listen(w, "popstate", pageView);
  // Cheap listeners only: a timestamp. No page-wide MutationObserver runs while the app works.
  listen(w, "scroll", () => (lastScroll = Date.now()), passive);
  listen(w, "pointerdown", () => (downScroll = lastScroll), passive);

  /** Did the page react to a click within `ms`? A DOM change, navigation, scroll or request. A
   * MutationObserver watches only for that one window and stops at the first change. */
  function reacted(ms, done) {
    const start = Date.now();
    const path = here.href;
    const reqs = requests;
    let changed;
    const mo = new MutationObserver((records) => {
      for (const rec of records) {
        const t = rec.target.nodeType === 1 ? rec.target : rec.target.parentElement;
        if (!t || !t.closest(IGNORE)) {
          changed = 1;
          return mo.disconnect();
        }
      }
    });
    mo.observe(doc.documentElement, { childList: true, subtree: true, attributes: true, characterData: true });
    setTimeout(() => {
      mo.disconnect();
      done(changed || here.href !== path || lastScroll >= start || requests !== reqs);
    }, ms);
  }

  listen(
    doc,
    "click",
    (e) => {
      const path = e.composedPath();
      if (path.some((n) => n.nodeType === 1 && n.matches(IGNORE))) return;
      const t = targetOf(path);
      if (!t) return;
      const fields = { target: t._target };
      // A click that selected text (drag, double or triple click) or ended a scroll is not rage.
      const sel = String(getSelection()).trim() !== "";
      const during = lastScroll > downScroll; // scrolled between press and release (touch, wheel)
      const scrolled = during || Date.now() - lastScroll < 150;
      if (sel || scrolled) fields.properties = { selection: during || !sel ? "scroll" : "text" };
      push("click", fields);
      setTimeout(checkComplete, 300);
      if (sel || scrolled || t._el.closest("a[href],input,select,textarea,label,summary,[contenteditable]")) return;
      reacted(cfg.deadMs, (live) => {
        // The first click of a double or triple click that went on to select text: not dead.
        const s = getSelection();
        if (!live && !(!s.isCollapsed && t._el.contains(s.anchorNode))) push("dead_click", { target: t._target });
      });
    },
    true,
  );

  const error = (r, name, message, where) =>
    push("error", { target: (r && r.name) || name, properties: { message: String(message).slice(0, 200), where } });
  // resource load errors (their target is the element) are not the user's
  listen(w, "error", (e) => e.target === w && error(e.error, "Error", e.message, e.filename ? endpoint(e.filename) + ":" + e.lineno : "script"));
  listen(w, "unhandledrejection", (e) => error(e.reason, "UnhandledRejection", (e.reason && e.reason.message) || e.reason));

  const origFetch = w.fetch.bind(w);
  w.fetch = function (input, init) {
    const url = typeof input === "string" ? input : (input && input.url) || String(input);
    const method = ((init && init.method) || (input && input.method) || "GET").toUpperCase();
    const p = origFetch(input, init);
    if (ownUrl(url)) return p;
    requests++;
    return p.then(
      (r) => {
        if (r.status > 399) apiError(method, url, r.status);
        else setTimeout(checkComplete, 50);
        return r;
      },
      (err) => {
        apiError(method, url, 0);
        throw err;
      },
    );
  };
  const XHR = XMLHttpRequest.prototype;
  const open = XHR.open;
  const send = XHR.send;
  XHR.open = function (method, url) {
    this._pf = [String(method).toUpperCase(), url];
    return open.apply(this, arguments);
  };
  XHR.send = function () {
    const xhr = this;
    const pf = xhr._pf;
    if (pf && !ownUrl(pf[1])) {
      requests++;
      listen(xhr, "loadend", () => (xhr.status > 399 || !xhr.status) && apiError(pf[0], pf[1], xhr.status));
    }
    return send.apply(this, arguments);
  };

  listen(doc, "visibilitychange", () => (doc.hidden ? flush(true) : deliverWaiting()));
  listen(w, "pagehide", () => flush(true));
  listen(w, "focus", deliverWaiting);

  // -- feedback -------------------------------------------------------------------------------------
  const acked = {};
  const shownHere = [];
  function ack(id, outcome) {
    if (acked[id + outcome]) return;
    acked[id + outcome] = 1;
    if (outcome === "shown") {
      shownHere.push(id);
      // Shown: the other tabs drop it (the sidecar re-sends an item to new streams until then).
      drop(id);
      if (chan) chan.postMessage({ taken: id });
    }
    post(mount ? mount + "/ack" : guidanceUrl("/ack"), JSON.stringify({ id, guidance_id: id, outcome })).catch(() => {});
  }
  function complete(id) {
    if (id) {
      ui.closeId(id);
      ack(id, "completed");
    }
  }
  /** The app marks success with data-pyfriction-complete="item-id ..." (empty: whatever this page
   * showed). Looked for after page views, clicks and requests: no observer. */
  function checkComplete() {
    for (const el of doc.querySelectorAll("[data-pyfriction-complete]")) {
      const ids = el.getAttribute("data-pyfriction-complete").split(/\s+/).filter(Boolean);
      for (const id of ids.length ? ids : shownHere) if (shownHere.indexOf(id) >= 0) complete(id);
    }
  }

  // -- delivery: the tab where the struggle happened -----------------------------------------------
  // An item carries the step (page) of its episode. Every open tab of the user gets it (its own
  // stream, or the tab that read it tells the others over a BroadcastChannel) and keeps it until
  // it is shown somewhere; the visible tab on that page takes it (and tells the others), shows it
  // and reports "shown": only then does the sidecar stop sending it to new streams.
  const box = {}; // id -> item waiting in this tab for its page
  const taken = {}; // id -> claimed by a tab (this one or another)
  // In-process mode (data-mount) the integration's poll hands an item out once: the items that
  // wait for their page are kept in localStorage too, for the user's next page loads (the sidecar
  // re-sends them to every new stream instead). `change` edits them; returns them.
  function stored(change) {
    try {
      const key = "pyfriction_box:" + userId();
      const all = JSON.parse(localStorage[key] || "{}");
      for (const id in all) if (all[id].expires_at < now()) delete all[id];
      change(all);
      localStorage[key] = JSON.stringify(all);
      return all;
    } catch (e) {
      return {};
    }
  }
  function drop(id) {
    delete box[id];
    if (mount) stored((all) => delete all[id]);
  }
  function receive(g, relayed) {
    if (!g || !g.id || ui.has(g.id) || taken[g.id]) return;
    box[g.id] = g;
    if (mount) stored((all) => (all[g.id] = g));
    if (chan && !relayed) chan.postMessage({ item: g });
    consider(g);
  }
  function consider(g) {
    if ((g.step && g.step !== step()) || doc.hidden) return; // another page's struggle: for the tab on that page
    const take = () => {
      // Claims travel on the channel: the first tab to take an item shows it.
      if (taken[g.id] || ui.has(g.id)) return;
      taken[g.id] = 1;
      drop(g.id);
      if (chan) chan.postMessage({ taken: g.id });
      ui.offer(g);
    };
    // The focused tab takes it at once; a visible but unfocused one only if nobody else did.
    if (doc.hasFocus()) take();
    else setTimeout(take, 400);
  }
  function deliverWaiting() {
    const all = mount ? { ...stored(() => 0), ...box } : box;
    for (const id in all) consider(all[id]);
  }
  function openChannel() {
    if (chan) chan.close();
    chan = w.BroadcastChannel && new BroadcastChannel("pyfriction:" + userId());
    if (chan)
      chan.onmessage = (e) => {
        const m = e.data || {};
        if (m.item) receive(m.item, 1);
        else if (m.taken && !ui.has(m.taken)) {
          taken[m.taken] = 1;
          drop(m.taken);
        }
      };
  }

  // -- the guidance stream: reconnects with backoff after any failure -------------------------------
  function subscribe() {
    clearTimeout(retryTimer);
    if (stream) stream.close();
    stream = 0;
    if (mount || !w.EventSource) {
      // A poll; the sidecar's keeps what it answers until it is shown (keep=1).
      origFetch(mount ? mount + "/guidance" : guidanceUrl("") + "&keep=1", { credentials: mount ? "same-origin" : "omit", cache: "no-store" })
        .then((r) => r.json())
        .then((d) => d.guidance.forEach((g) => receive(g)))
        .catch(() => {})
        .then(() => (retryTimer = setTimeout(subscribe, mount ? +data.pollMs || 1500 : 30000)));
      return;
    }
    // The sidecar sends each item that is not shown yet once per stream: a reconnect (or another
    // tab) gets again what this one read but nobody showed.
    const es = (stream = new EventSource(guidanceUrl("/stream")));
    let healthy;
    listen(es, "open", () => (healthy = setTimeout(() => (attempt = 0), 5000)));
    listen(es, "guidance", (e) => {
      attempt = 0;
      try {
        receive(JSON.parse(e.data));
      } catch (err) {}
    });
    // EventSource gives up for good on a 503 or any non-stream answer, and retries a dropped
    // stream at a fixed pace: close it either way and come back with jittered exponential backoff.
    listen(es, "error", () => {
      clearTimeout(healthy);
      es.close();
      if (stream === es)
        retryTimer = setTimeout(subscribe, Math.min(60000, cfg.retryMs * 2 ** attempt++) * (0.5 + Math.random() / 2));
    });
  }

  const offset = data.bannerOffset;
  ui.init({
    _words: words(locale),
    _dir: doc.documentElement.dir || (isRtl(locale) ? "rtl" : "ltr"),
    _theme: data.theme,
    _container: data.bannerContainer,
    _offset: offset != null && offset !== "" ? +offset : null,
    _ack: ack,
  });

  w.pyfriction = {
    version: "0.2.0",
    config: cfg,
    identify(id, token) {
      cfg.user = String(id);
      cfg.token = token || "";
      openChannel();
      subscribe();
    },
    track: push,
    flush,
    complete,
    render: ui.offer,
  };
  openChannel();
  pageView();
  subscribe();
  // The backend did not say the user's locale: tell the engine the browser's (once a session),
  // so guidance rules with a locale pick the right language.
  if (!data.locale && !mount) {
    const once = userId() + " " + locale;
    try {
      if (sessionStorage.pyfriction_locale === once) return;
      sessionStorage.pyfriction_locale = once;
    } catch (e) {}
    post(host + "/v1/identify", JSON.stringify({ writeKey: cfg.key, userId: userId(), traits: {}, context: { locale } })).catch(() => {});
  }
})();
