// Cairn UI: progressive enhancement only. Without it every page and
// action still works (forms post, the server redirects back).
"use strict";
(function () {
  // Buttons that open a confirmation dialog; buttons that close one.
  document.addEventListener("click", function (ev) {
    var open = ev.target.closest("[data-open]");
    if (open) {
      var d = document.getElementById(open.getAttribute("data-open"));
      var snap = open.getAttribute("data-snapshot");
      if (d && snap) {
        var field = d.querySelector("input[name=snapshot]");
        if (field) { field.value = snap; }
      }
      if (d && d.showModal) { d.showModal(); }
      return;
    }
    var close = ev.target.closest("[data-close]");
    if (close) {
      var dlg = close.closest("dialog");
      if (dlg) { dlg.close(); }
    }
  });

  function flash(text, isError) {
    var f = document.getElementById("flash");
    if (!f) { return; }
    var p = document.createElement("p");
    p.className = isError ? "error" : "notice";
    p.textContent = text;
    f.replaceChildren(p);
  }

  // Actions are posted in the background; the result is shown at the
  // top and the live parts of the page refresh.
  document.addEventListener("submit", function (ev) {
    var form = ev.target;
    if (form.method.toLowerCase() !== "post" || form.hasAttribute("data-plain")) { return; }
    var ask = form.getAttribute("data-confirm");
    if (ask && !window.confirm(ask)) { ev.preventDefault(); return; }
    ev.preventDefault();
    var dlg = form.closest("dialog");
    var f = document.getElementById("flash");
    if (f) { f.replaceChildren(); }
    fetch(form.action, {
      method: "POST",
      headers: { "X-Cairn-Fetch": "1" },
      body: new URLSearchParams(new FormData(form)),
      credentials: "same-origin"
    }).then(function (r) {
      return r.json().then(function (body) { return { ok: r.ok, body: body }; });
    }).then(function (res) {
      if (dlg) { dlg.close(); }
      if (res.ok) {
        flash(res.body.message, false);
        if (/\/delete$/.test(form.action) && !form.closest("[data-refresh]")) { window.location = "/volumes"; return; }
        refresh();
      } else {
        flash(res.body.error || "refused", true);
      }
    }).catch(function (err) {
      if (dlg) { dlg.close(); }
      flash(String(err), true);
    });
  });

  // Parts with data-refresh reload themselves every two seconds; the
  // volume's facts (state and progress, size, used) come with the
  // snapshot table, each in a hidden data-fresh="<id of the fact>".
  function refresh() {
    document.querySelectorAll("[data-refresh]").forEach(function (el) {
      // Not while the user is typing or choosing in it (a new copy would
      // reset the field).
      if (el.contains(document.activeElement) && document.activeElement.matches("input, select, textarea")) { return; }
      fetch(el.getAttribute("data-refresh"), { credentials: "same-origin", redirect: "error" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (html === null) { return; }
          if (el.innerHTML !== html) { el.innerHTML = html; }
          el.querySelectorAll("[data-fresh]").forEach(function (src) {
            var dst = document.getElementById(src.getAttribute("data-fresh"));
            if (dst && dst.innerHTML !== src.innerHTML) { dst.innerHTML = src.innerHTML; }
          });
        })
        .catch(function () {});
    });
  }
  if (document.querySelector("[data-refresh]")) { setInterval(refresh, 2000); }
})();
