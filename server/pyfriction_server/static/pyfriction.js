/*! pyfriction.js: friction signals from the browser, guidance back into the page.
 *
 * <script src="https://friction.example.com/v1/pyfriction.js" async
 *         data-write-key="wk_..." data-user-id="u42" data-user-token="..."></script>
 *
 * Captures page views (including history-API navigation), clicks with a stable target
 * (element id, data-pyfriction name, or a short CSS path), dead clicks (no DOM change,
 * navigation, scroll or request shortly after), JS errors and failed fetch/XHR responses.
 * Sends them batched to the sidecar's /v1/events (sendBeacon when the page is hidden).
 * Subscribes to the user's guidance stream and renders a tooltip (next to the guidance's
 * anchor), a banner or a link; accessible (focusable, Escape closes, ARIA roles); reports
 * shown / clicked / dismissed. Elements inside [data-pyfriction-ignore] are not tracked.
 * No dependencies. API: window.pyfriction.identify(userId, token), .track(type, fields), .flush().
 */
(function () {
  "use strict";
  if (window.pyfriction && window.pyfriction.version) return;

  var script = document.currentScript || document.querySelector("script[data-write-key]");
  var data = (script && script.dataset) || {};
  var host = (data.host || (script && script.src ? new URL(script.src, location.href).origin : location.origin)).replace(/\/$/, "");
  var cfg = {
    key: data.writeKey || "",
    user: data.userId || "",
    token: data.userToken || "",
    flushMs: +data.flushMs || 1000,
    deadMs: +data.deadClickMs || 1000,
    maxQueue: 500
  };
  var UI = "data-pyfriction-ui";
  var queue = [];
  var timer = null;
  var seq = 0;
  var lastActivity = 0; // last DOM change, scroll, navigation or request (for dead clicks)
  var stream = null;
  var shown = {}; // guidance id -> element

  function now() { return Date.now() / 1000; }
  function rid() { return (Date.now().toString(36) + Math.random().toString(36).slice(2, 10) + (seq++).toString(36)); }
  function anonId() {
    try {
      var id = localStorage.getItem("pyfriction_anon");
      if (!id) { id = "anon-" + rid(); localStorage.setItem("pyfriction_anon", id); }
      return id;
    } catch (e) { return "anon-" + rid(); }
  }
  function userId() { return cfg.user || (cfg.user = anonId()); }
  function step() { return location.pathname || "/"; }
  function ignored(el) { return !!(el && el.closest && el.closest("[data-pyfriction-ignore],[" + UI + "]")); }
  function query(params) {
    var parts = [];
    for (var k in params) if (params[k]) parts.push(k + "=" + encodeURIComponent(params[k]));
    return parts.length ? "?" + parts.join("&") : "";
  }

  // -- stable targets ------------------------------------------------------------------------
  var ACTIONABLE = "a,button,input,select,textarea,label,summary,[role=button],[role=link],[role=tab],[role=menuitem],[data-pyfriction],[onclick]";
  function cssPath(el) {
    var parts = [];
    for (var depth = 0; el && el.nodeType === 1 && depth < 3; depth++, el = el.parentElement) {
      if (el.id) { parts.unshift("#" + el.id); break; }
      var name = el.tagName.toLowerCase();
      var cls = (el.getAttribute("class") || "").trim().split(/\s+/)[0];
      if (cls) name += "." + cls;
      var parent = el.parentElement;
      if (parent) {
        var same = 0, index = 0;
        for (var c = parent.firstElementChild; c; c = c.nextElementSibling) {
          if (c.tagName === el.tagName) { same++; if (c === el) index = same; }
        }
        if (same > 1) name += ":nth-of-type(" + index + ")";
      }
      parts.unshift(name);
    }
    return parts.join(" > ");
  }
  function targetOf(el) {
    var hit = (el.closest && el.closest(ACTIONABLE)) || el;
    var named = el.closest && el.closest("[data-pyfriction]");
    if (named) return named.getAttribute("data-pyfriction");
    if (hit.id) return "#" + hit.id;
    return cssPath(hit);
  }

  // -- sending -------------------------------------------------------------------------------
  function push(type, fields) {
    var ev = { id: rid(), user_id: userId(), type: type, ts: now(), step: step() };
    for (var k in fields || {}) ev[k] = fields[k];
    queue.push(ev);
    if (queue.length > cfg.maxQueue) queue.splice(0, queue.length - cfg.maxQueue);
    if (!timer) timer = setTimeout(flush, cfg.flushMs);
  }
  function payload(events) {
    return JSON.stringify({ writeKey: cfg.key, sent_at: now(), lib: "pyfriction.js", events: events });
  }
  function flush(beacon) {
    clearTimeout(timer); timer = null;
    if (!queue.length) return;
    var events = queue.splice(0, 100);
    var url = host + "/v1/events";
    // text/plain keeps it a "simple" request: no CORS preflight, and sendBeacon allows it.
    if (beacon === true && navigator.sendBeacon) {
      if (navigator.sendBeacon(url, new Blob([payload(events)], { type: "text/plain" }))) return flush(true);
    }
    origFetch(url, { method: "POST", body: payload(events), headers: { "Content-Type": "text/plain" }, keepalive: true, credentials: "omit" })
      .then(function (r) { if (r.status >= 500 || r.status === 429) requeue(events); })
      .catch(function () { requeue(events); });
    if (queue.length) timer = setTimeout(flush, 0);
  }
  function requeue(events) {
    queue = events.concat(queue).slice(-cfg.maxQueue); // same ids: the sidecar drops duplicates
    if (!timer) timer = setTimeout(flush, cfg.flushMs * 5);
  }
  function ownUrl(url) { return String(url).indexOf(host + "/v1/") === 0; }
  function endpoint(url) {
    try { var u = new URL(url, location.href); return (u.origin === location.origin ? "" : u.host) + u.pathname; }
    catch (e) { return String(url).split("?")[0].slice(0, 200); }
  }

  // -- capture -------------------------------------------------------------------------------
  var lastPath = null;
  function pageView() {
    lastActivity = Date.now();
    if (step() === lastPath) return;
    lastPath = step();
    push("page", {});
  }
  ["pushState", "replaceState"].forEach(function (name) {
    var orig = history[name];
    history[name] = function () { var r = orig.apply(this, arguments); pageView(); return r; };
  });
  addEventListener("popstate", pageView);
  addEventListener("hashchange", function () { lastActivity = Date.now(); });
  addEventListener("scroll", function () { lastActivity = Date.now(); }, true);

  new MutationObserver(function (records) {
    for (var i = 0; i < records.length; i++) {
      var t = records[i].target;
      var el = t.nodeType === 1 ? t : t.parentElement;
      if (!ignored(el)) { lastActivity = Date.now(); return; }
    }
  }).observe(document.documentElement, { childList: true, subtree: true, attributes: true, characterData: true });

  document.addEventListener("click", function (e) {
    var el = e.target;
    if (!el || el.nodeType !== 1 || ignored(el)) return;
    var target = targetOf(el);
    var at = Date.now();
    push("click", { target: target });
    var live = el.closest("a[href],input,select,textarea,label,summary,[contenteditable]");
    if (live) return; // these always do something
    setTimeout(function () {
      if (lastActivity < at) push("dead_click", { target: target });
    }, cfg.deadMs);
  }, true);

  addEventListener("error", function (e) {
    if (e.target && e.target !== window) return; // resource load errors: not the user's
    var where = e.filename ? endpoint(e.filename) + ":" + e.lineno : "script";
    push("error", { target: (e.error && e.error.name) || "Error", properties: { message: String(e.message).slice(0, 200), where: where } });
  });
  addEventListener("unhandledrejection", function (e) {
    var r = e.reason;
    push("error", { target: (r && r.name) || "UnhandledRejection", properties: { message: String((r && r.message) || r).slice(0, 200) } });
  });

  var origFetch = window.fetch ? window.fetch.bind(window) : null;
  if (origFetch) {
    window.fetch = function (input, init) {
      var url = typeof input === "string" ? input : (input && input.url) || String(input);
      var method = ((init && init.method) || (input && input.method) || "GET").toUpperCase();
      lastActivity = Date.now();
      var p = origFetch(input, init);
      if (ownUrl(url)) return p;
      return p.then(function (r) {
        if (r.status >= 400) push("api_error", { target: method + " " + endpoint(url), properties: { status: r.status } });
        return r;
      }, function (err) {
        push("api_error", { target: method + " " + endpoint(url), properties: { status: 0 } });
        throw err;
      });
    };
  }
  var XHR = window.XMLHttpRequest && window.XMLHttpRequest.prototype;
  if (XHR) {
    var open = XHR.open, send = XHR.send;
    XHR.open = function (method, url) { this._pf = [String(method).toUpperCase(), url]; return open.apply(this, arguments); };
    XHR.send = function () {
      var xhr = this;
      lastActivity = Date.now();
      if (xhr._pf && !ownUrl(xhr._pf[1])) {
        xhr.addEventListener("loadend", function () {
          if (xhr.status >= 400 || xhr.status === 0) push("api_error", { target: xhr._pf[0] + " " + endpoint(xhr._pf[1]), properties: { status: xhr.status } });
        });
      }
      return send.apply(this, arguments);
    };
  }

  document.addEventListener("visibilitychange", function () { if (document.visibilityState === "hidden") flush(true); });
  addEventListener("pagehide", function () { flush(true); });

  // -- guidance ------------------------------------------------------------------------------
  function ack(id, outcome) {
    var url = host + "/v1/guidance/" + encodeURIComponent(userId()) + "/ack" + query({ key: cfg.key, token: cfg.token });
    origFetch(url, { method: "POST", body: JSON.stringify({ guidance_id: id, outcome: outcome }), headers: { "Content-Type": "text/plain" }, keepalive: true, credentials: "omit" })
      .catch(function () {});
  }
  function safeUrl(url) {
    try { var u = new URL(url, location.href); return /^https?:$/.test(u.protocol) ? u.href : null; } catch (e) { return null; }
  }
  var STYLE = "position:absolute;z-index:2147483647;max-width:320px;padding:12px 36px 12px 14px;border-radius:8px;" +
    "background:#1f2937;color:#fff;font:14px/1.4 system-ui,sans-serif;box-shadow:0 6px 24px rgba(0,0,0,.25)";
  function close(id, outcome) {
    var el = shown[id];
    if (!el) return;
    delete shown[id];
    if (el.parentNode) el.parentNode.removeChild(el);
    if (outcome) ack(id, outcome);
  }
  function render(g) {
    if (!g || !g.id || shown[g.id]) return;
    var anchor = null;
    if (g.anchor) { try { anchor = document.querySelector(g.anchor); } catch (e) { anchor = null; } }
    var kind = g.kind === "tooltip" && !anchor ? "banner" : g.kind || "banner";
    var box = document.createElement("div");
    box.setAttribute(UI, kind);
    box.setAttribute("data-guidance-id", g.id);
    box.tabIndex = 0;
    var titleId = "pyfriction-title-" + g.id;
    box.setAttribute("role", kind === "tooltip" ? "dialog" : kind === "modal" ? "dialog" : "status");
    if (kind === "modal") box.setAttribute("aria-modal", "true");
    box.setAttribute("aria-live", "polite");
    if (g.title) {
      var h = document.createElement("strong");
      h.id = titleId; h.textContent = g.title; h.style.display = "block";
      box.appendChild(h);
      box.setAttribute("aria-labelledby", titleId);
    } else {
      box.setAttribute("aria-label", "Help");
    }
    if (g.body) {
      var p = document.createElement("div");
      // body_html: the sidecar renders the body's small Markdown subset with everything escaped first
      if (g.body_html) p.innerHTML = g.body_html; else p.textContent = g.body;
      box.appendChild(p);
    }
    var href = g.url && safeUrl(g.url);
    if (href) {
      var a = document.createElement("a");
      a.href = href; a.textContent = kind === "link" ? (g.title || "Help") : "Learn more";
      a.style.color = "#93c5fd";
      a.addEventListener("click", function () { close(g.id, "clicked"); });
      box.appendChild(a);
    }
    var x = document.createElement("button");
    x.type = "button"; x.textContent = "\u00d7"; x.setAttribute("aria-label", "Dismiss");
    x.style.cssText = "position:absolute;top:6px;right:8px;border:0;background:none;color:inherit;font-size:18px;cursor:pointer";
    x.addEventListener("click", function () { close(g.id, "dismissed"); });
    box.appendChild(x);
    box.style.cssText = STYLE;
    if (kind === "tooltip") {
      var r = anchor.getBoundingClientRect();
      box.style.top = (r.bottom + window.scrollY + 8) + "px";
      box.style.left = Math.max(8, r.left + window.scrollX) + "px";
      if (!anchor.id) anchor.id = "pyfriction-anchor-" + g.id;
      anchor.setAttribute("aria-describedby", titleId);
    } else {
      box.style.position = "fixed"; box.style.left = "50%"; box.style.transform = "translateX(-50%)";
      box.style.top = kind === "modal" ? "30%" : "16px";
    }
    document.body.appendChild(box);
    shown[g.id] = box;
    ack(g.id, "shown");
  }
  document.addEventListener("keydown", function (e) {
    if (e.key !== "Escape") return;
    for (var id in shown) close(id, "dismissed");
  });
  function subscribe() {
    if (stream) { stream.close(); stream = null; }
    var url = host + "/v1/guidance/" + encodeURIComponent(userId()) + "/stream" + query({ key: cfg.key, token: cfg.token });
    if (window.EventSource) {
      stream = new EventSource(url);
      stream.addEventListener("guidance", function (e) { try { render(JSON.parse(e.data)); } catch (err) {} });
    } else {
      setInterval(function () {
        origFetch(url.replace("/stream", ""), { credentials: "omit" }).then(function (r) { return r.json(); })
          .then(function (d) { (d.guidance || []).forEach(render); }).catch(function () {});
      }, 30000);
    }
  }

  window.pyfriction = {
    version: "0.1.0",
    config: cfg,
    identify: function (id, token) { cfg.user = String(id); cfg.token = token || ""; subscribe(); },
    track: function (type, fields) { push(type, fields); },
    flush: flush,
    render: render
  };
  pageView();
  subscribe();
})();
