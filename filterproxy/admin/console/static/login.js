// The sign-in form: POST /api/v1/login as JSON, then go to the page asked for (a same-site path only).
(function () {
  "use strict";
  var form = document.getElementById("login");
  if (!form) { return; }
  var box = document.getElementById("login-error");

  function show(text) {
    box.textContent = text;
    box.hidden = false;
  }

  function target() {
    var next = form.getAttribute("data-next") || "/";
    // only a path on this site: "/x", never "//host" or "/\host"
    return /^\/(?![\/\\])/.test(next) ? next : "/";
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    box.hidden = true;
    var body = JSON.stringify({ user: form.elements.user.value, password: form.elements.password.value });
    fetch("/api/v1/login", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      credentials: "same-origin",
      body: body
    }).then(function (resp) {
      if (resp.ok) {
        window.location.assign(target());
        return;
      }
      if (resp.status === 401) {
        show(form.getAttribute("data-msg-wrong"));
        form.elements.password.value = "";
        form.elements.password.focus();
        return;
      }
      if (resp.status === 429) {
        var seconds = parseInt(resp.headers.get("Retry-After") || "60", 10);
        var minutes = Math.max(1, Math.ceil(seconds / 60));
        show(form.getAttribute("data-msg-locked").replace("{minutes}", String(minutes)));
        return;
      }
      return resp.json().then(function (data) {
        show(form.getAttribute("data-msg-failed") + " " + (data.detail || resp.status));
      }, function () {
        show(form.getAttribute("data-msg-failed") + " " + resp.status);
      });
    }, function (err) {
      show(form.getAttribute("data-msg-failed") + " " + err);
    });
  });
})();
