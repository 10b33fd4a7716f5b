// The test SaaS app's own behaviour (an external script: the pages run under CSP too).
(function () {
  function $(sel) { return document.querySelector(sel); }
  var save = $("#save");
  if (save) save.addEventListener("click", function () {
    fetch("/api/imports", { method: "POST", body: $("#date-format").value }).catch(function () {});
  });
  var ok = $("#save-ok");
  if (ok) ok.addEventListener("click", function () {
    fetch("/api/imports?ok=1", { method: "POST", body: "2024-03-15" }).then(function (r) { return r.json(); })
      .then(function () {
        var p = document.createElement("p");
        p.className = "ok";
        p.setAttribute("data-pyfriction-complete", "");
        p.textContent = "Imported 12 transactions.";
        $("#result").appendChild(p);
      });
  });
  var open = $("#open-settings");
  if (open) open.addEventListener("click", function () { $("#settings").showModal(); });
  var close = $("#settings-close");
  if (close) close.addEventListener("click", function () { $("#settings").close(); });
  var shift = $("#shift");
  if (shift) shift.addEventListener("click", function () {
    var n = document.createElement("p");
    n.textContent = "A notice the app inserted above the form.";
    n.className = "notice";
    $("#notices").appendChild(n);
  });
  if (window.customElements && !customElements.get("acme-stepper")) {
    customElements.define("acme-stepper", class extends HTMLElement {
      constructor() {
        super();
        var root = this.attachShadow({ mode: "open" });
        root.innerHTML = '<label for="qty">Seats</label><input id="qty" value="3" aria-describedby="qty-hint">' +
          '<p id="qty-hint">Seats on your plan.</p><button id="inc" type="button">Add a seat</button>';
      }
    });
  }
})();
