// Conventions of every console page (filterproxy/admin/console/__init__.py says how pages use them):
// the json-enc extension (htmx forms → JSON bodies for /api/v1), the #flash region for answers,
// data-reload / data-redirect / data-done after a successful change, /login after a 401.
(function () {
  "use strict";

  function field(elt, key) {
    var form = elt.closest("form") || elt;
    return form.querySelector('[name="' + (window.CSS && CSS.escape ? CSS.escape(key) : key) + '"]');
  }

  htmx.defineExtension("json-enc", {
    onEvent: function (name, evt) {
      if (name === "htmx:configRequest") {
        evt.detail.headers["Content-Type"] = "application/json";
      }
    },
    encodeParameters: function (xhr, parameters, elt) {
      xhr.overrideMimeType("text/json");
      var out = {};
      parameters.forEach(function (value, key) {
        var input = field(elt, key);
        var type = input ? (input.getAttribute("type") || "").toLowerCase() : "";
        if (type === "checkbox") { out[key] = true; return; }
        if (value === "") { return; }  // an empty optional field is left out
        // type=number inputs, and radios or selects marked data-number (a choice of durations), as numbers
        out[key] = type === "number" || (input && input.hasAttribute("data-number")) ? Number(value) : value;
      });
      // unchecked checkboxes are not in the form data: send them as false
      var form = elt.closest("form");
      if (form) {
        form.querySelectorAll('input[type="checkbox"][name]').forEach(function (box) {
          if (!box.checked && !(box.name in out)) { out[box.name] = false; }
        });
      }
      return JSON.stringify(out);
    }
  });

  function flash(text, kind) {
    var box = document.getElementById("flash");
    if (!box) { return; }
    box.textContent = text;
    box.className = kind === "error" ? "flash error" : "flash ok";
    box.setAttribute("role", kind === "error" ? "alert" : "status");
    box.hidden = false;
  }

  function errorText(xhr) {
    try {
      var data = JSON.parse(xhr.responseText);
      if (data && data.detail) { return data.detail; }
    } catch (e) { /* not JSON: the status below */ }
    return xhr.status ? String(xhr.status) + " " + (xhr.statusText || "") : "network error";
  }

  document.body.addEventListener("htmx:afterRequest", function (evt) {
    var elt = evt.detail.elt, xhr = evt.detail.xhr;
    if (!xhr) { return; }
    if (evt.detail.successful) {
      if (elt.hasAttribute("data-redirect")) { window.location.assign(elt.getAttribute("data-redirect")); return; }
      if (elt.hasAttribute("data-reload")) { window.location.reload(); return; }
      if (elt.hasAttribute("data-done")) { flash(elt.getAttribute("data-done"), "ok"); }
      return;
    }
    if (xhr.status === 401) {
      window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname));
      return;
    }
    var prefix = document.body.getAttribute("data-error-prefix") || "";
    flash((prefix ? prefix + " " : "") + errorText(xhr), "error");
  });
})();
