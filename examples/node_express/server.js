// A Node.js (Express) host using the pyfriction sidecar over HTTP, for the non-Python story.
//
//   pyfriction-server --config examples/node_express/sidecar.toml      # the sidecar, port 8700
//   cd examples/node_express && npm install && npm start               # this app, port 3000
//
// Events go to the sidecar with Segment's own Node SDK (@segment/analytics-node), pointed at
// the sidecar instead of Segment: a rejected sign-up is a `form_error` at step "/signup". The
// app reads the user's pending guidance from the sidecar's GET /v1/guidance/{user_id} and
// renders it; the page also loads the sidecar's browser script, which reports clicks and
// shows guidance live. Open http://127.0.0.1:3000/signup?user=u1 and submit a bad address.
"use strict";

const crypto = require("node:crypto");
const express = require("express");
const { Analytics } = require("@segment/analytics-node");

const SIDECAR = (process.env.SIDECAR_URL || "http://127.0.0.1:8700").replace(/\/$/, "");
const WRITE_KEY = process.env.WRITE_KEY || "wk_example";
const IDENTITY_SECRET = process.env.IDENTITY_SECRET || "example-identity-secret";
const PORT = Number(process.env.PORT || 3000);

const analytics = new Analytics({ writeKey: WRITE_KEY, host: SIDECAR, path: "/v1/batch", flushAt: 1, flushInterval: 200 });

// The token a page (or this backend) shows the sidecar to read one user's guidance: the
// HMAC-SHA256 of the user id with the sidecar's identity secret, like its user_token().
function userToken(userId) {
  return crypto.createHmac("sha256", IDENTITY_SECRET).update(userId).digest("hex");
}

async function pendingGuidance(userId) {
  const url = `${SIDECAR}/v1/guidance/${encodeURIComponent(userId)}?key=${encodeURIComponent(WRITE_KEY)}&token=${userToken(userId)}`;
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(500) });
    if (!res.ok) return [];
    return (await res.json()).guidance || [];
  } catch (err) {
    return []; // the sidecar being down must never break a page
  }
}

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
const EMAIL = /^[^@\s]+@[^@\s]+\.[a-z]{2,}$/i;

const app = express();
app.use(express.urlencoded({ extended: false }));

function currentUser(req) {
  return String(req.query.user || req.get("x-user") || "");
}

async function page(req, res, status, message) {
  const user = currentUser(req);
  const help = user ? await pendingGuidance(user) : [];
  const items = help.map((g) => `<div class="guidance" data-guidance="${escape(g.id)}"><b>${escape(g.title)}</b> ${escape(g.body || "")}</div>`).join("");
  const script = user
    ? `<script src="${SIDECAR}/v1/pyfriction.js" async data-write-key="${escape(WRITE_KEY)}" data-user-id="${escape(user)}" data-user-token="${userToken(user)}"></script>`
    : "";
  res.status(status).type("html").send(`<!doctype html><title>Sign up</title>${items}<h1>Sign up</h1>
${message ? `<p class="error">${escape(message)}</p>` : ""}
<form method="post" action="/signup?user=${encodeURIComponent(user)}"><input name="email" placeholder="Email"><button>Sign up</button></form>${script}`);
}

app.get("/signup", (req, res) => page(req, res, 200, ""));

app.post("/signup", (req, res) => {
  const user = currentUser(req);
  const email = String(req.body.email || "");
  if (!EMAIL.test(email)) {
    if (user) {
      analytics.track({ userId: user, event: "form_error", properties: { step: "/signup", target: "#email" } });
    }
    return page(req, res, 422, "That email address is not valid.");
  }
  if (user) analytics.track({ userId: user, event: "success", properties: { step: "/signup", target: "signup" } });
  res.type("html").send(`<p>Welcome, ${escape(email)}!</p>`);
});

const server = app.listen(PORT, "127.0.0.1", () => console.log(`node_express example on http://127.0.0.1:${PORT}/signup?user=u1`));

function shutdown() {
  server.close();
  analytics.closeAndFlush({ timeout: 2000 }).finally(() => process.exit(0));
}
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);
