/* NER11 Gold Model frontend: shows the API health (GET /api/v1/health). */
(function () {
  "use strict";
  var root = document.getElementById("root");

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function render(status, body) {
    root.textContent = "";
    root.appendChild(el("h1", {}, "NER11 Gold Model"));
    root.appendChild(el("p", { "class": status }, "API status: " + status));
    root.appendChild(el("pre", {}, typeof body === "string" ? body : JSON.stringify(body, null, 2)));
  }

  function refresh() {
    fetch("/api/v1/health", { headers: { Accept: "application/json" } })
      .then(function (r) {
        return r.json().then(function (b) { render(b.status || (r.ok ? "healthy" : "down"), b); });
      })
      .catch(function (e) { render("down", String(e)); });
  }

  refresh();
  setInterval(refresh, 10000);
})();
